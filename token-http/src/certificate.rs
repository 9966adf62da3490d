//! X.509 client certificates: thumbprints for `private_key_jwt` headers
//! (`x5t#S256`, `x5t`, `x5c`) and identities for mutual TLS (RFC 8705).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use token_core::Secret;

use crate::error::ConfigError;
use crate::jwt::PrivateKey;
use crate::pem;

/// A certificate chain from PEM: the client's (leaf) certificate first,
/// then any intermediates, as servers expect them in `x5c` and in a TLS
/// handshake.
///
/// Certificates are public: the thumbprints appear in credential ids and
/// cache keys, and `Debug` shows the leaf's `x5t#S256`.
#[derive(Clone)]
pub struct Certificate {
    chain: Vec<Vec<u8>>,
    sha256: String,
}

impl Certificate {
    /// Every `CERTIFICATE` block of `pem`, leaf first. Other blocks (a
    /// private key in the same file) are skipped; a PEM without a
    /// certificate is an error.
    pub fn from_pem(pem: &str) -> Result<Self, ConfigError> {
        let chain: Vec<Vec<u8>> = pem::blocks(pem, "certificate PEM")
            .map_err(ConfigError::Certificate)?
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der.to_vec())
            .collect();
        let Some(leaf) = chain.first() else {
            return Err(ConfigError::Certificate(
                "no `BEGIN CERTIFICATE` block in the PEM".into(),
            ));
        };
        // A DER certificate is a SEQUENCE; anything else is not one.
        if leaf.first() != Some(&0x30) || leaf.len() < 64 {
            return Err(ConfigError::Certificate(
                "the first `CERTIFICATE` block is not a DER certificate".into(),
            ));
        }
        let sha256 = URL_SAFE_NO_PAD.encode(digest(&SHA256, leaf));
        Ok(Self { chain, sha256 })
    }

    /// The leaf certificate's SHA-256 thumbprint, base64url without
    /// padding: the JOSE `x5t#S256` and the RFC 8705 `cnf` value a
    /// certificate-bound token carries.
    pub fn thumbprint_sha256(&self) -> &str {
        &self.sha256
    }

    /// The leaf certificate's SHA-1 thumbprint, base64url (`x5t`), for
    /// servers that still ask for it (Microsoft Entra ID).
    pub fn thumbprint_sha1(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, self.leaf_der()))
    }

    /// The DER of the leaf certificate.
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The chain as `x5c` wants it: standard base64 DER, leaf first.
    pub fn x5c(&self) -> Vec<String> {
        self.chain.iter().map(|der| STANDARD.encode(der)).collect()
    }

    /// The chain as PEM text.
    pub(crate) fn to_pem(&self) -> String {
        let mut out = String::new();
        for der in &self.chain {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = STANDARD.encode(der);
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out
    }

    /// Whether the leaf certificate holds `public_key` (the bytes of its
    /// SubjectPublicKeyInfo bit string, as `ring` gives them: a DER
    /// `RSAPublicKey` or an uncompressed EC point). Those bytes appear
    /// verbatim in the certificate's DER; a 65+ byte public key matching by
    /// chance elsewhere in a certificate does not happen.
    pub(crate) fn holds_public_key(&self, public_key: &[u8]) -> bool {
        public_key.len() >= 65
            && self
                .leaf_der()
                .windows(public_key.len())
                .any(|w| w == public_key)
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.sha256)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

/// A certificate and its private key for mutual-TLS client
/// authentication (RFC 8705 §2: `tls_client_auth`,
/// `self_signed_tls_client_auth`).
///
/// The key PEM is a [`Secret`]; `Debug` shows the certificate's thumbprint
/// only. The key is checked against the certificate when this is built.
#[derive(Clone)]
pub struct ClientCertificate {
    certificate: Certificate,
    key_pem: Secret,
}

impl ClientCertificate {
    /// From one PEM holding the certificate chain (leaf first) and the
    /// private key (PKCS#8 RSA or P-256, or PKCS#1 RSA), in any order.
    pub fn from_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::from_pem_parts(pem, pem)
    }

    /// From a certificate chain PEM and a separate private key PEM.
    pub fn from_pem_parts(certificate_pem: &str, key_pem: &str) -> Result<Self, ConfigError> {
        let certificate = Certificate::from_pem(certificate_pem)?;
        let key = PrivateKey::from_any_pem(key_pem)?;
        key.check_certificate(&certificate)?;
        let key_pem = Secret::new(key.to_pkcs8_or_pkcs1_pem().as_str());
        Ok(Self {
            certificate,
            key_pem,
        })
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// A reqwest identity (key and chain) for the TLS handshake.
    pub(crate) fn identity(&self) -> Result<reqwest::Identity, ConfigError> {
        let mut pem = zeroize::Zeroizing::new(self.key_pem.expose().to_owned());
        pem.push_str(&self.certificate.to_pem());
        reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            ConfigError::Certificate(format!(
                "the TLS library refused the certificate and key: {}",
                e.without_url()
            ))
        })
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("certificate", &self.certificate)
            .field("key", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = include_str!("../tests/keys/rsa-test-only.crt");
    const RSA_KEY: &str = include_str!("../tests/keys/rsa-test-only.pem");
    const MTLS: &str = include_str!("../tests/keys/mtls-client-test-only.pem");

    #[test]
    fn the_chain_is_read_leaf_first_with_its_thumbprints() {
        let cert = Certificate::from_pem(CHAIN).unwrap();
        assert_eq!(cert.x5c().len(), 2);
        assert_eq!(cert.x5c()[0], STANDARD.encode(cert.leaf_der()));
        // base64url SHA-256 and SHA-1: 43 and 27 characters, no padding.
        assert_eq!(cert.thumbprint_sha256().len(), 43);
        assert_eq!(cert.thumbprint_sha1().len(), 27);
        assert_eq!(
            Certificate::from_pem(&cert.to_pem()).unwrap().x5c(),
            cert.x5c()
        );
    }

    #[test]
    fn a_pem_without_a_certificate_is_a_clear_error() {
        let e = Certificate::from_pem(RSA_KEY).unwrap_err();
        assert!(e.to_string().contains("no `BEGIN CERTIFICATE`"), "{e}");
        let e = Certificate::from_pem("").unwrap_err();
        assert!(matches!(e, ConfigError::Certificate(_)), "{e}");
    }

    #[test]
    fn debug_of_certificates_and_keys_shows_the_thumbprint_never_the_key() {
        let client = ClientCertificate::from_pem(MTLS).unwrap();
        let text = format!("{client:?}");
        assert!(
            text.contains(client.certificate().thumbprint_sha256()),
            "{text}"
        );
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("MIG"),
            "{text}"
        );
        let key = PrivateKey::rs256_from_pem(RSA_KEY)
            .unwrap()
            .with_certificate(Certificate::from_pem(CHAIN).unwrap())
            .unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("x5t#S256") && text.contains("***"), "{text}");
        assert!(!text.contains("MII"), "{text}");
    }

    #[test]
    fn a_tls_identity_is_built_from_the_certificate_and_key() {
        ClientCertificate::from_pem(MTLS)
            .unwrap()
            .identity()
            .unwrap();
    }
}
