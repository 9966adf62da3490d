//! TLS settings beyond the `rediss://` URL (cargo feature `tls`): the CA
//! certificates to trust and a client certificate for mutual TLS.
//!
//! The `redis` crate takes them as PEM bytes ([`redis::TlsCertificates`])
//! and parses them itself; this module checks them first, so that a bad PEM
//! is a clear configuration error that never quotes the bytes of a key.

use std::fmt;

use rustls::pki_types::pem::{PemObject, SectionKind};
use zeroize::Zeroizing;

use crate::config::redact_url;
use crate::error::RedisStoreError;

/// The CA certificates and client identity a [`RedisConfig`](crate::RedisConfig) carries.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// PEM CA certificates that replace the system's roots.
    pub(crate) root_certificates: Option<Vec<u8>>,
    /// A client certificate and key, for mutual TLS.
    pub(crate) client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    certificate_chain: Vec<u8>,
    private_key: Zeroizing<Vec<u8>>,
}

impl ClientIdentity {
    pub(crate) fn new(certificate_chain: Vec<u8>, private_key: Vec<u8>) -> Self {
        Self {
            certificate_chain,
            private_key: Zeroizing::new(private_key),
        }
    }
}

/// PEM sections of `pem`, each body zeroized when dropped; `None` when the
/// PEM is malformed. The parser's error is dropped on purpose: it can quote
/// a line of the input, and the input may be a private key.
fn sections(pem: &[u8]) -> Option<Vec<(SectionKind, Zeroizing<Vec<u8>>)>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .map(|item| item.ok().map(|(kind, der)| (kind, Zeroizing::new(der))))
        .collect()
}

/// Checks that `pem` holds one or more certificates and nothing else of use.
fn check_certificates(pem: &[u8], what: &str) -> Result<usize, RedisStoreError> {
    let found = sections(pem)
        .ok_or_else(|| RedisStoreError::InvalidConfig(format!("{what} is not well-formed PEM")))?;
    let count = found
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .count();
    if count == 0 {
        return Err(RedisStoreError::InvalidConfig(format!(
            "{what} holds no PEM CERTIFICATE block"
        )));
    }
    Ok(count)
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.root_certificates.is_some() || self.client.is_some()
    }

    /// Checks the PEMs, and that every URL is `rediss://` when any TLS
    /// setting is made (the `redis` crate would otherwise connect in clear,
    /// or not at all, depending on the topology).
    pub(crate) fn validate(&self, urls: &[&String]) -> Result<(), RedisStoreError> {
        if !self.is_set() {
            return Ok(());
        }
        if let Some(url) = urls.iter().find(|u| !u.starts_with("rediss://")) {
            return Err(RedisStoreError::InvalidConfig(format!(
                "TLS certificates are configured, but {} is not a rediss:// URL",
                redact_url(url)
            )));
        }
        if let Some(pem) = &self.root_certificates {
            check_certificates(pem, "tls_root_certificates")?;
        }
        if let Some(client) = &self.client {
            check_certificates(&client.certificate_chain, "the client certificate chain")?;
            let keys = sections(&client.private_key)
                .ok_or_else(|| {
                    RedisStoreError::InvalidConfig(
                        "the client private key is not well-formed PEM".into(),
                    )
                })?
                .iter()
                .filter(|(kind, _)| {
                    matches!(
                        kind,
                        SectionKind::PrivateKey
                            | SectionKind::RsaPrivateKey
                            | SectionKind::EcPrivateKey
                    )
                })
                .count();
            if keys != 1 {
                return Err(RedisStoreError::InvalidConfig(format!(
                    "the client private key must be one PEM PRIVATE KEY, RSA PRIVATE KEY or \
                     EC PRIVATE KEY block; found {keys}"
                )));
            }
        }
        Ok(())
    }

    /// What the `redis` crate takes, or `None` to use its defaults (the
    /// system's roots, no client certificate).
    ///
    /// The key is copied into a plain `Vec`: the `redis` crate's API takes
    /// one by value and drops it without zeroizing.
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if !self.is_set() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|c| redis::ClientTlsConfig {
                client_cert: c.certificate_chain.clone(),
                client_key: c.private_key.to_vec(),
            }),
            root_cert: self.root_certificates.clone(),
        })
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field(
                "root_certificates",
                &match &self.root_certificates {
                    Some(pem) => format!("custom ({} bytes of PEM)", pem.len()),
                    None => "system".to_owned(),
                },
            )
            .field(
                "client_certificate",
                &self.client.as_ref().map(|_| "set (private key ***)"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn check(settings: &TlsSettings, list: &[&str]) -> Result<(), RedisStoreError> {
        let owned = urls(list);
        let refs: Vec<&String> = owned.iter().collect();
        settings.validate(&refs)
    }

    #[test]
    fn certificates_need_rediss_urls() {
        let s = TlsSettings {
            root_certificates: Some(CERT.into()),
            client: None,
        };
        assert!(check(&s, &["rediss://h:1"]).is_ok());
        let err = check(&s, &["rediss://a:1", "redis://u:pw@b:2"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not a rediss://"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        assert!(check(&TlsSettings::default(), &["redis://h"]).is_ok());
    }

    #[test]
    fn bad_pems_are_config_errors_that_quote_nothing() {
        let no_cert = TlsSettings {
            root_certificates: Some(b"just text".to_vec()),
            client: None,
        };
        assert!(check(&no_cert, &["rediss://h"])
            .unwrap_err()
            .to_string()
            .contains("no PEM CERTIFICATE"));
        let secret_line = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n";
        let bad_key = TlsSettings {
            root_certificates: None,
            client: Some(ClientIdentity::new(CERT.into(), secret_line.into())),
        };
        let text = check(&bad_key, &["rediss://h"]).unwrap_err().to_string();
        assert!(text.contains("private key"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        let no_key = TlsSettings {
            root_certificates: None,
            client: Some(ClientIdentity::new(CERT.into(), CERT.into())),
        };
        assert!(check(&no_key, &["rediss://h"])
            .unwrap_err()
            .to_string()
            .contains("found 0"));
    }

    #[test]
    fn debug_shows_no_key() {
        let s = TlsSettings {
            root_certificates: Some(CERT.into()),
            client: Some(ClientIdentity::new(CERT.into(), KEY.into())),
        };
        assert!(check(&s, &["rediss://h"]).is_ok());
        let text = format!("{s:?}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("MAA="),
            "{text}"
        );
        assert!(text.contains("private key ***"), "{text}");
        assert!(s.certificates().is_some());
        assert!(TlsSettings::default().certificates().is_none());
    }
}
