//! The warm path of `get` on a sled store: a fresh token read without
//! opening sled.
//!
//! Opening sled costs a warm `get` most of its time (it starts its IO
//! threads and recovers its log: about 13 ms of CPU, measured in
//! docs/BENCHMARKS.md). So after each `get` that leaves a fresh token in
//! sled, the very envelope sled stored for it (AES-256-GCM, sealed with the
//! store's key, the cache key as associated data) is also written to
//! `tokencache-hot/<sha256 of the cache key>` in the store directory. A
//! later `get` for the same key opens that file, decrypts it with the
//! store's key and, when the token is still before its `refresh_at`, prints
//! it. Anything else (no file, another key, damage, a token due for refresh)
//! goes the full way through sled, which stays the source of truth.
//!
//! `purge` removes the files of the entries it removes. A file copied to
//! another key's name fails to decrypt (the associated data differs), and
//! nothing here is sealed anew: the file holds sled's own envelope, so the
//! key's encryption count is unchanged. Redis stores have no warm file: a
//! local copy could outlive a purge made on another host.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use token_core::backend::decode_token;
use token_core::{AccessToken, CacheKey, Keyring};

/// The directory of warm files, inside the sled store directory.
pub const DIR: &str = "tokencache-hot";

/// The largest warm file read: a sealed token is well under this.
const MAX_LEN: u64 = 64 * 1024;

fn path(store_dir: &Path, key: &CacheKey) -> PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_str().as_bytes());
    let name: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    store_dir.join(DIR).join(name)
}

/// Whether `token` may be handed out without asking anyone at `now`:
/// before its refresh time and its expiry.
fn is_fresh(token: &AccessToken, now: SystemTime) -> bool {
    token.refresh_at().is_some_and(|at| now < at) && token.expires_at().is_some_and(|at| now < at)
}

/// The fresh token kept for `key`, if there is one that `keyring` opens.
pub(crate) fn read(store_dir: &Path, keyring: &Keyring, key: &CacheKey) -> Option<AccessToken> {
    let path = path(store_dir, key);
    let bytes = match std::fs::metadata(&path) {
        Ok(m) if m.len() <= MAX_LEN => std::fs::read(&path).ok()?,
        _ => return None,
    };
    let plain = match keyring.open(key, &bytes) {
        Ok(plain) => plain,
        Err(e) => {
            tracing::debug!(key = %key, error = %e, "warm file: cannot be opened; going through the store");
            return None;
        }
    };
    let token = decode_token(&plain).ok()?;
    if is_fresh(&token, SystemTime::now()) {
        Some(token)
    } else {
        tracing::debug!(key = %key, "warm file: the token is due for refresh; going through the store");
        None
    }
}

/// Keeps `envelope` (sled's sealed bytes for `key`) as the warm file of
/// `key`. Failing only costs the next `get` its speed, so it is logged, not
/// reported.
pub fn write(store_dir: &Path, key: &CacheKey, envelope: &[u8]) {
    let path = path(store_dir, key);
    let result = (|| {
        let dir = store_dir.join(DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let tmp = dir.join(format!(".{:032x}.tmp", token_core::backend::random_u128()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(envelope)?;
        // No fsync: a warm file lost in a crash only means the next get
        // opens sled, which has the token durably.
        drop(f);
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "warm file: cannot be written");
    }
}

/// Removes the warm files of `keys`.
pub(crate) fn remove(store_dir: &Path, keys: &[String]) -> Result<(), std::io::Error> {
    for key in keys {
        match std::fs::remove_file(path(store_dir, &CacheKey::from_raw(key.clone()))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes every warm file.
pub fn remove_all(store_dir: &Path) -> Result<(), std::io::Error> {
    match std::fs::remove_dir_all(store_dir.join(DIR)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use token_core::backend::encode_token;
    use token_core::EncryptionKey;

    use super::*;

    fn keyring(byte: u8) -> Keyring {
        Keyring::new(EncryptionKey::from_bytes([byte; 32]))
    }

    fn token(refresh_in: i64) -> AccessToken {
        let now = SystemTime::now();
        let refresh_at = if refresh_in >= 0 {
            now + Duration::from_secs(refresh_in as u64)
        } else {
            now - Duration::from_secs((-refresh_in) as u64)
        };
        AccessToken::new("warm-token-value", now)
            .with_expires_at(now + Duration::from_secs(3600))
            .with_refresh_at(refresh_at)
    }

    #[test]
    fn a_fresh_token_is_read_back_with_the_same_key_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = CacheKey::from_raw("tc1|a|b");
        let ring = keyring(1);
        let sealed = ring.seal(&key, &encode_token(&token(600))).expect("seal");
        write(dir.path(), &key, &sealed);
        let read_back = read(dir.path(), &ring, &key).expect("fresh token");
        assert_eq!(read_back.secret().expose(), "warm-token-value");
        assert!(read(dir.path(), &keyring(2), &key).is_none(), "another key");
        // Copied to another key's name: the associated data differs.
        let other = CacheKey::from_raw("tc1|a|c");
        std::fs::copy(path(dir.path(), &key), path(dir.path(), &other)).expect("copy");
        assert!(read(dir.path(), &ring, &other).is_none());
        remove(dir.path(), &[key.as_str().to_owned()]).expect("remove");
        assert!(read(dir.path(), &ring, &key).is_none());
    }

    #[test]
    fn a_token_due_for_refresh_is_not_served_warm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = CacheKey::from_raw("tc1|a|b");
        let ring = keyring(1);
        let sealed = ring.seal(&key, &encode_token(&token(-1))).expect("seal");
        write(dir.path(), &key, &sealed);
        assert!(read(dir.path(), &ring, &key).is_none());
    }

    #[test]
    fn damaged_files_read_as_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = CacheKey::from_raw("tc1|a|b");
        write(dir.path(), &key, b"garbage");
        assert!(read(dir.path(), &keyring(1), &key).is_none());
        remove_all(dir.path()).expect("remove all");
        assert!(!dir.path().join(DIR).exists());
    }
}
