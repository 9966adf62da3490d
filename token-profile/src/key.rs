//! The encryption key of the token store: `TOKENCACHE_KEY`, else a key
//! file, created (0600) when neither exists and the store is new.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use token_core::{EncryptionKey, Keyring};

use crate::error::Error;
use crate::fingerprint::FingerprintKey;
use crate::paths;

/// The environment variable holding the key as base64 (32 bytes).
pub const KEY_ENV: &str = "TOKENCACHE_KEY";
/// The environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "TOKENCACHE_KEY_FILE";

/// Where the key came from, for messages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// `TOKENCACHE_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env => write!(f, "the {KEY_ENV} environment variable"),
            Self::File(p) => write!(f, "the key file {}", p.display()),
        }
    }
}

/// The key file to use: `--key-file`, else `TOKENCACHE_KEY_FILE`, else
/// `<config dir>/key`.
pub(crate) fn key_file_path(flag: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(KEY_FILE_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(paths::key_dir()?.join("key"))
}

/// The store's keyring, where its key came from, and the key cache
/// entries are bound to the client's secret with (derived from the store's
/// key).
pub(crate) struct Loaded {
    pub(crate) keyring: Keyring,
    pub(crate) source: KeySource,
    pub(crate) fingerprint: FingerprintKey,
}

impl Loaded {
    fn new(key: EncryptionKey, source: KeySource) -> Self {
        Self {
            fingerprint: FingerprintKey::derive(&key),
            keyring: Keyring::new(key),
            source,
        }
    }
}

/// Loads the keyring. `store_has_data` says whether the store already holds
/// data written with some key: then a missing key is an error instead of a
/// reason to create one (a new key could not read the old data).
pub(crate) fn load(flag: Option<&Path>, store_has_data: bool) -> Result<Loaded, Error> {
    if let Some(text) = std::env::var_os(KEY_ENV) {
        let text = text.into_string().map_err(|_| {
            Error::key(format!(
                "{KEY_ENV} is not valid Unicode; it must hold a base64 32-byte key"
            ))
        })?;
        let text = zeroize::Zeroizing::new(text);
        let key = EncryptionKey::from_base64(text.trim())
            .map_err(|e| Error::key(format!("{KEY_ENV} does not hold a usable key: {e}")))?;
        return Ok(Loaded::new(key, KeySource::Env));
    }
    let path = key_file_path(flag)?;
    if path.exists() {
        let key = EncryptionKey::from_file(&path).map_err(|e| {
            Error::key(format!(
                "the key file {} is not usable: {e}",
                path.display()
            ))
        })?;
        return Ok(Loaded::new(key, KeySource::File(path)));
    }
    if store_has_data {
        return Err(Error::key(format!(
            "no encryption key: {KEY_ENV} is not set and the key file {} does not exist, but the \
             token store was written with a key; restore that key, or purge the store with \
             `tokencache purge --all --force`",
            path.display()
        )));
    }
    let key = create(&path)?;
    crate::error::notices().note(format_args!(
        "created a new encryption key for the token store in {} (mode 0600); set {KEY_ENV} or \
         {KEY_FILE_ENV} to use another",
        path.display()
    ));
    Ok(Loaded::new(key, KeySource::File(path)))
}

fn create(path: &Path) -> Result<EncryptionKey, Error> {
    let failed = |e: std::io::Error| {
        Error::key(format!(
            "cannot create the key file {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
    }
    let key = EncryptionKey::generate()
        .map_err(|e| Error::key(format!("cannot generate an encryption key: {e}")))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    let text = key.to_base64();
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    Ok(key)
}
