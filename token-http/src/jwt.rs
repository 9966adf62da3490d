//! `private_key_jwt` client assertions (RFC 7523 §2.2, OIDC Core §9):
//! RS256 and ES256 keys read from PEM, signed with `ring`, optionally
//! naming their X.509 certificate in the header (`x5t#S256`, `x5t`, `x5c`).

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::certificate::Certificate;
use crate::error::ConfigError;
use crate::pem;

/// How long a client assertion is valid. Defaults to this: long enough for
/// a slow request, short enough that a leaked assertion is soon useless (it
/// also carries a fresh `jti`, which servers remember to refuse replays).
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The JWS algorithm of a client assertion key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl SigningAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DerKind {
    Pkcs8,
    Pkcs1Rsa,
}

/// A private key for `private_key_jwt`, read from PEM.
///
/// The DER bytes are kept in memory that is wiped on drop; the key is
/// parsed by `ring` for each signature (once per token fetch) and dropped
/// right after, so no long-lived parsed copy exists. `Debug` shows the
/// algorithm, key id and certificate thumbprint only.
///
/// # Certificates
///
/// Servers that register a client by its X.509 certificate rather than a
/// JWK (Microsoft Entra ID, ADFS, many enterprise IdPs) find the key by
/// the certificate's thumbprint in the assertion's header:
/// [`with_certificate`](Self::with_certificate) adds `x5t#S256`,
/// [`with_x5t`](Self::with_x5t) the SHA-1 `x5t` as well, and
/// [`with_x5c`](Self::with_x5c) the chain itself (for subject-name/issuer
/// registration).
#[derive(Clone)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
    kind: DerKind,
    alg: SigningAlgorithm,
    kid: Option<String>,
    certificate: Option<Certificate>,
    x5t: bool,
    x5c: bool,
}

impl PrivateKey {
    /// An RSA key for RS256, from a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) PEM. Keys under 2048 bits are refused.
    pub fn rs256_from_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::from_pem(pem, SigningAlgorithm::Rs256)
    }

    /// A P-256 key for ES256, from a PKCS#8 PEM (`BEGIN PRIVATE KEY`; turn
    /// a `BEGIN EC PRIVATE KEY` file into one with
    /// `openssl pkcs8 -topk8 -nocrypt`).
    pub fn es256_from_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::from_pem(pem, SigningAlgorithm::Es256)
    }

    /// A key for `alg` from PEM text. Checked at once, so a wrong key fails
    /// at start-up rather than at the first token fetch.
    pub fn from_pem(pem: &str, alg: SigningAlgorithm) -> Result<Self, ConfigError> {
        let (label, der) = decode_pem(pem)?;
        Self::from_der(&label, der, alg)
    }

    /// A key from PEM text whose algorithm is read from the key itself: RSA
    /// (PKCS#8 or PKCS#1) is RS256, P-256 (PKCS#8) is ES256. The first
    /// private key block is used, so a PEM that also holds certificates
    /// (as `AZURE_CLIENT_CERTIFICATE_PATH` files do) works.
    pub fn from_any_pem(pem: &str) -> Result<Self, ConfigError> {
        let (label, der) = decode_pem(pem)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => Self::from_der(&label, der, SigningAlgorithm::Rs256),
            "PRIVATE KEY" => {
                let rsa = RsaKeyPair::from_pkcs8(&der).is_ok();
                let alg = if rsa {
                    SigningAlgorithm::Rs256
                } else {
                    SigningAlgorithm::Es256
                };
                Self::from_der(&label, der, alg).map_err(|e| match alg {
                    SigningAlgorithm::Es256 => ConfigError::Key(
                        "the PKCS#8 key is neither a usable RSA (2048+ bits) nor a P-256 key"
                            .into(),
                    ),
                    SigningAlgorithm::Rs256 => e,
                })
            }
            _ => Self::from_der(&label, der, SigningAlgorithm::Es256),
        }
    }

    fn from_der(
        label: &str,
        der: Zeroizing<Vec<u8>>,
        alg: SigningAlgorithm,
    ) -> Result<Self, ConfigError> {
        let kind = match (label, alg) {
            ("PRIVATE KEY", _) => DerKind::Pkcs8,
            ("RSA PRIVATE KEY", SigningAlgorithm::Rs256) => DerKind::Pkcs1Rsa,
            ("EC PRIVATE KEY", _) => {
                return Err(ConfigError::Key(
                    "SEC1 `EC PRIVATE KEY` PEM is not supported; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".into(),
                ))
            }
            (other, _) => {
                return Err(ConfigError::Key(format!(
                    "a PEM labelled `{other}` is not a private key for {}",
                    alg.as_str()
                )))
            }
        };
        let key = Self {
            der,
            kind,
            alg,
            kid: None,
            certificate: None,
            x5t: false,
            x5c: false,
        };
        key.sign(b"check")?;
        Ok(key)
    }

    /// Names `certificate` in every assertion's header by its SHA-256
    /// thumbprint (`x5t#S256`). The certificate must hold this key's public
    /// key; a mismatch is refused here rather than by the server later.
    pub fn with_certificate(mut self, certificate: Certificate) -> Result<Self, ConfigError> {
        self.check_certificate(&certificate)?;
        self.certificate = Some(certificate);
        Ok(self)
    }

    /// Also sends the SHA-1 thumbprint (`x5t`), for servers that look the
    /// key up by it. Defaults to off. Needs a certificate.
    pub fn with_x5t(mut self, on: bool) -> Self {
        self.x5t = on;
        self
    }

    /// Also sends the certificate chain (`x5c`), for servers that register
    /// a client by subject name and issuer. Defaults to off. Needs a
    /// certificate.
    pub fn with_x5c(mut self, on: bool) -> Self {
        self.x5c = on;
        self
    }

    /// The certificate named in assertion headers, when set.
    pub fn certificate(&self) -> Option<&Certificate> {
        self.certificate.as_ref()
    }

    /// Refuses a certificate that does not hold this key's public key.
    pub(crate) fn check_certificate(&self, certificate: &Certificate) -> Result<(), ConfigError> {
        if certificate.holds_public_key(&self.public_key()?) {
            Ok(())
        } else {
            Err(ConfigError::Certificate(format!(
                "the certificate (x5t#S256 {}) does not hold this private key's public key",
                certificate.thumbprint_sha256()
            )))
        }
    }

    /// The public key bytes of the SubjectPublicKeyInfo bit string.
    fn public_key(&self) -> Result<Vec<u8>, ConfigError> {
        let unusable = |e: ring::error::KeyRejected| {
            ConfigError::Key(format!("not a usable private key: {e}"))
        };
        Ok(match (self.alg, self.kind) {
            (SigningAlgorithm::Rs256, DerKind::Pkcs8) => RsaKeyPair::from_pkcs8(&self.der)
                .map_err(unusable)?
                .public_key()
                .as_ref()
                .to_vec(),
            (SigningAlgorithm::Rs256, DerKind::Pkcs1Rsa) => RsaKeyPair::from_der(&self.der)
                .map_err(unusable)?
                .public_key()
                .as_ref()
                .to_vec(),
            (SigningAlgorithm::Es256, _) => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &self.der,
                &SystemRandom::new(),
            )
            .map_err(unusable)?
            .public_key()
            .as_ref()
            .to_vec(),
        })
    }

    /// The key as PEM again (for a TLS identity), in wiped memory.
    pub(crate) fn to_pkcs8_or_pkcs1_pem(&self) -> Zeroizing<String> {
        let label = match self.kind {
            DerKind::Pkcs8 => "PRIVATE KEY",
            DerKind::Pkcs1Rsa => "RSA PRIVATE KEY",
        };
        let b64 = Zeroizing::new(STANDARD.encode(&*self.der));
        let mut out = Zeroizing::new(format!("-----BEGIN {label}-----\n"));
        for line in b64.as_bytes().chunks(64) {
            for &c in line {
                out.push(char::from(c));
            }
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// Sets the key id (`kid` in the assertion's header), so the server can
    /// pick the right key from the client's JWK set.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    /// The key id, when set.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ConfigError> {
        let rng = SystemRandom::new();
        match self.alg {
            SigningAlgorithm::Rs256 => {
                let pair = match self.kind {
                    DerKind::Pkcs8 => RsaKeyPair::from_pkcs8(&self.der),
                    DerKind::Pkcs1Rsa => RsaKeyPair::from_der(&self.der),
                }
                .map_err(|e| ConfigError::Key(format!("not a usable RSA private key: {e}")))?;
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| ConfigError::Key("RSA signing failed".into()))?;
                Ok(signature)
            }
            SigningAlgorithm::Es256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.der, &rng)
                        .map_err(|e| {
                            ConfigError::Key(format!("not a usable P-256 private key: {e}"))
                        })?;
                let signature = pair
                    .sign(&rng, message)
                    .map_err(|_| ConfigError::Key("ECDSA signing failed".into()))?;
                Ok(signature.as_ref().to_vec())
            }
        }
    }

    /// A signed client assertion: `iss` = `sub` = `client_id`, `aud` =
    /// `audience` (the token endpoint), a fresh random `jti`, `iat` = `now`
    /// and `exp` = `now + lifetime`. The result is a secret.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Zeroizing<String>, ConfigError> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 18];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| ConfigError::Key("no randomness for the assertion's jti".into()))?;
        let mut header = json!({ "alg": self.alg.as_str(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        if let Some(cert) = &self.certificate {
            header["x5t#S256"] = json!(cert.thumbprint_sha256());
            if self.x5t {
                header["x5t"] = json!(cert.thumbprint_sha1());
            }
            if self.x5c {
                header["x5c"] = json!(cert.x5c());
            }
        }
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": iat,
            "exp": iat.saturating_add(lifetime.as_secs().max(1)),
        });
        let mut jws = Zeroizing::new(String::new());
        jws.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.sign(jws.as_bytes())?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field(
                "x5t#S256",
                &self
                    .certificate
                    .as_ref()
                    .map(Certificate::thumbprint_sha256),
            )
            .field("der", &"***")
            .finish()
    }
}

/// The first private key block of a PEM: its label and DER bytes (in wiped
/// memory). Certificate blocks before it are skipped.
fn decode_pem(text: &str) -> Result<(String, Zeroizing<Vec<u8>>), ConfigError> {
    let blocks = pem::blocks(text, "private key PEM").map_err(ConfigError::Key)?;
    let mut labels = Vec::new();
    for block in blocks {
        if block.label.ends_with("PRIVATE KEY") {
            return Ok((block.label, block.der));
        }
        labels.push(block.label);
    }
    if labels.is_empty() {
        Err(ConfigError::Key(
            "not a PEM private key (no BEGIN/END block)".into(),
        ))
    } else {
        Err(ConfigError::Key(format!(
            "the PEM holds no private key, only: {}",
            labels.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_a_clear_error() {
        for pem in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        ] {
            let e = PrivateKey::rs256_from_pem(pem).unwrap_err();
            assert!(matches!(e, ConfigError::Key(_)), "{e}");
        }
        let e = PrivateKey::es256_from_pem(
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("pkcs8"), "{e}");
    }
}
