//! TLS to upstreams: the system's roots, plus a configured CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::ConfigError;

/// A client configuration trusting the system roots and every certificate
/// in `ca_file`, offering ALPN `h2` and `http/1.1` (the upstream picks;
/// see [`crate::pool`]). A CA file that cannot be read or holds no certificate is
/// an error; system roots that fail to load are logged (a private CA may be
/// all that is needed).
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "could not load some system root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "system root certificates loaded");
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new(format!(
                "cannot read [serve] ca_file {}: {e}",
                path.display()
            ))
        })?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                ConfigError::new(format!(
                    "[serve] ca_file {} is not PEM: {e}",
                    path.display()
                ))
            })?;
            roots.add(cert).map_err(|e| {
                ConfigError::new(format!(
                    "[serve] ca_file {} has a certificate rustls cannot use: {e}",
                    path.display()
                ))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(ConfigError::new(format!(
                "[serve] ca_file {} holds no certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map(|mut c| {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            c
        })
        .map_err(|e| ConfigError::new(format!("cannot set up TLS: {e}")))
}
