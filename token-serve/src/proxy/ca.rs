//! The forward proxy's local CA: loaded from `[serve.proxy]`'s two files,
//! or created there on first start, and the leaf certificates it signs for
//! the hosts that `CONNECT` tunnels are opened to.
//!
//! - Both files absent: a new CA (ECDSA P-256, valid [`CA_VALIDITY_DAYS`])
//!   is written, the key with mode `0600` (created so, never widened), the
//!   certificate `0644`. One of them absent, a file that is not PEM, or a
//!   key that is not the certificate's: a configuration error naming it.
//! - A leaf for a host is made on its first `CONNECT` (ECDSA P-256, the
//!   host as its only subject alternative name, valid
//!   [`LEAF_VALIDITY_DAYS`]) and reused from memory until a day before it
//!   expires; at most [`MAX_LEAVES`] are kept (hosts are routed hosts only,
//!   so the bound is never reached by a sane configuration).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::config::{ConfigError, ProxyConfig};

/// Midnight UTC `offset` days from today, as rcgen takes it.
macro_rules! day {
    ($offset:expr) => {{
        let (y, m, d) = civil_day($offset);
        rcgen::date_time_ymd(y, m, d)
    }};
}

/// How long a CA the sidecar creates is valid: ten years (replace it by
/// deleting both files).
pub(crate) const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a leaf certificate is valid. Short, since leaves live in
/// memory only and are made again on demand.
pub(crate) const LEAF_VALIDITY_DAYS: i64 = 7;
/// The most leaf certificates kept in memory.
pub(crate) const MAX_LEAVES: usize = 1024;
/// A leaf this close to its expiry is made again.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// The subject of a CA the sidecar creates.
const CA_NAME: &str = "tokencache forward proxy CA";

/// The local CA and its leaves.
pub(crate) struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, Leaf>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("key", &"***")
            .finish_non_exhaustive()
    }
}

struct Leaf {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl LocalCa {
    /// The CA of `config`: read, or created when both files are absent.
    pub(crate) fn open(config: &ProxyConfig) -> Result<Self, ConfigError> {
        let (cert, key) = (&config.ca_cert_file, &config.ca_key_file);
        if !present(config)? {
            create(cert, key)?;
        }
        Self::load(cert, key)
    }

    /// Checks `config`'s CA files without creating them: both absent (to
    /// be created), or both there, readable and matching.
    pub(crate) fn check(config: &ProxyConfig) -> Result<(), ConfigError> {
        if present(config)? {
            Self::load(&config.ca_cert_file, &config.ca_key_file)?;
        }
        Ok(())
    }

    fn load(cert_file: &Path, key_file: &Path) -> Result<Self, ConfigError> {
        let key_pem = std::fs::read_to_string(key_file)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| {
                ConfigError::new(format!(
                    "cannot read [serve.proxy] ca_key_file {}: {e}",
                    key_file.display()
                ))
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| {
            ConfigError::new(format!(
                "[serve.proxy] ca_key_file {} is not a PEM private key (PKCS#8, \"BEGIN PRIVATE KEY\")",
                key_file.display()
            ))
        })?;
        if let Some(warning) = token_profile::readable_by_others(key_file, "forward proxy CA key") {
            tracing::warn!("{warning}");
        }
        let cert_pem = std::fs::read(cert_file).map_err(|e| {
            ConfigError::new(format!(
                "cannot read [serve.proxy] ca_cert_file {}: {e}",
                cert_file.display()
            ))
        })?;
        let ca_der = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "[serve.proxy] ca_cert_file {} holds no PEM certificate",
                    cert_file.display()
                ))
            })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::sign::CertifiedKey::from_der(vec![ca_der.clone()], key_der, &provider()).map_err(
            |_| {
                ConfigError::new(format!(
                    "[serve.proxy] ca_key_file {} is not the key of ca_cert_file {} (they do not match)",
                    key_file.display(),
                    cert_file.display()
                ))
            },
        )?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| {
            ConfigError::new(format!(
                "[serve.proxy] ca_cert_file {} cannot sign certificates: {e}",
                cert_file.display()
            ))
        })?;
        Ok(Self {
            issuer,
            ca_der,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS server configuration for `host` (a route's host name or IP,
    /// normalised): its leaf, made now or reused, and ALPN `h2` and
    /// `http/1.1`.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let now = SystemTime::now();
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(leaf) = leaves.get(host) {
            if now < leaf.renew_at {
                return Ok(Arc::clone(&leaf.config));
            }
        }
        let (config, expires) = self.make_leaf(host)?;
        if leaves.len() >= MAX_LEAVES {
            leaves.retain(|_, l| now < l.renew_at);
            if leaves.len() >= MAX_LEAVES {
                leaves.clear();
            }
        }
        leaves.insert(
            host.to_owned(),
            Leaf {
                config: Arc::clone(&config),
                renew_at: expires - LEAF_RENEW_BEFORE,
            },
        );
        metrics::counter!("tokencache_proxy_leaf_certificates_issued_total").increment(1);
        Ok(config)
    }

    fn make_leaf(&self, host: &str) -> Result<(Arc<ServerConfig>, SystemTime), String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let san = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                bare.to_owned()
                    .try_into()
                    .map_err(|e| format!("{host} cannot be a certificate name: {e}"))?,
            ),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, bare);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = day!(-1);
        params.not_after = day!(LEAF_VALIDITY_DAYS);
        let expires = SystemTime::now() + Duration::from_secs(LEAF_VALIDITY_DAYS as u64 * 86_400);
        let key = KeyPair::generate().map_err(|e| format!("generating a key failed: {e}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("signing the certificate for {host} failed: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| format!("the certificate for {host} is unusable: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((Arc::new(config), expires))
    }
}

/// Whether both CA files are there (`false`: both absent); one without
/// the other is an error.
fn present(config: &ProxyConfig) -> Result<bool, ConfigError> {
    let (cert, key) = (&config.ca_cert_file, &config.ca_key_file);
    match (cert.exists(), key.exists()) {
        (false, false) => Ok(false),
        (true, false) => Err(ConfigError::new(format!(
            "[serve.proxy] ca_cert_file {} exists but ca_key_file {} does not: give both, \
                     or remove the certificate too to have the sidecar create a new CA",
            cert.display(),
            key.display()
        ))),
        (false, true) => Err(ConfigError::new(format!(
            "[serve.proxy] ca_key_file {} exists but ca_cert_file {} does not: give both, \
                     or remove the key too to have the sidecar create a new CA",
            key.display(),
            cert.display()
        ))),
        (true, true) => Ok(true),
    }
}

/// Writes a new CA to `cert_file` and `key_file` (neither exists).
fn create(cert_file: &Path, key_file: &Path) -> Result<(), ConfigError> {
    let key = KeyPair::generate()
        .map_err(|e| ConfigError::new(format!("[serve.proxy] generating a CA key failed: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = day!(-1);
    params.not_after = day!(CA_VALIDITY_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| ConfigError::new(format!("[serve.proxy] creating the CA failed: {e}")))?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_new(key_file, key_pem.as_bytes(), 0o600, "ca_key_file")?;
    if let Err(e) = write_new(cert_file, cert.pem().as_bytes(), 0o644, "ca_cert_file") {
        // Leave no half CA behind: the next start would refuse it.
        let _ = std::fs::remove_file(key_file);
        return Err(e);
    }
    tracing::info!(
        ca_cert_file = %cert_file.display(),
        ca_key_file = %key_file.display(),
        "created the forward proxy's CA; programs that use the proxy for https:// must trust ca_cert_file"
    );
    Ok(())
}

/// Creates `path` (it must not exist) with `mode` and `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32, key: &str) -> Result<(), ConfigError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    written.map_err(|e| {
        ConfigError::new(format!(
            "[serve.proxy] cannot create {key} {}: {e}",
            path.display()
        ))
    })
}

/// The civil date (proleptic Gregorian, UTC) `offset` days from today.
fn civil_day(offset: i64) -> (i32, u8, u8) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let days = i64::try_from(today).unwrap_or(0) + offset;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        i32::try_from(y).unwrap_or(9999),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}
