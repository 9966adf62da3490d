//! `SledError`: everything that can go wrong in this crate, and how it maps
//! onto the store-agnostic [`StoreError`].

use std::path::PathBuf;

use token_core::backend::EnvelopeError;
use token_core::{KeyId, StoreError};

/// Why a [`SledStore`](crate::SledStore) could not open or answer.
///
/// No variant holds a token, key material or stored bytes: paths, key ids
/// and counts only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SledError {
    /// Another process (or another `SledStore` in this process) has the
    /// database open.
    #[error(
        "the token database {} is already open in another process (or another SledStore of this \
         process); only one may use it at a time",
        path.display()
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database was written by a newer version of token-sled. Nothing
    /// was changed.
    #[error(
        "the token database {} has store format {found}, newer than the {supported} this build \
         understands; upgrade token-sled or use another path (the database was left untouched)",
        path.display()
    )]
    FutureFormat {
        /// The database directory.
        path: PathBuf,
        /// The format found.
        found: String,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The keyring cannot decrypt the database: it was written with a key the
    /// keyring does not hold.
    #[error(
        "the keyring cannot decrypt the token database {}: it was last written with key {sealed_with}, \
         and the keyring holds {}; give that key (as the current or a previous key), or delete the \
         directory to start empty",
        path.display(),
        display_ids(keyring)
    )]
    WrongKey {
        /// The database directory.
        path: PathBuf,
        /// The key id the database was last written with.
        sealed_with: KeyId,
        /// The keyring's key ids.
        keyring: Vec<KeyId>,
    },
    /// The current key has sealed as many values as it may; writes are
    /// refused until the key is rotated.
    #[error(
        "key {key} has sealed {count} values, the limit for one AES-GCM key with random nonces is \
         set to {limit}: rotate the key (make a new key current, keep {key} as a previous key, \
         then call rekey)"
    )]
    EncryptionLimit {
        /// The exhausted key.
        key: KeyId,
        /// Values it has sealed.
        count: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Sealing failed (the OS random generator is unavailable).
    #[error("cannot encrypt a token: {0}")]
    Seal(#[source] EnvelopeError),
    /// A sled operation failed.
    #[error("sled failed to {op} in {}: {source}", path.display())]
    Sled {
        /// What was being done.
        op: &'static str,
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking task that ran a sled operation panicked or was
    /// cancelled.
    #[error("the sled task for {op} did not complete (it panicked or the runtime shut down)")]
    Task {
        /// What was being done.
        op: &'static str,
    },
}

fn display_ids(ids: &[KeyId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(", ")
}

impl SledError {
    pub(crate) fn sled(op: &'static str, path: &std::path::Path, source: sled::Error) -> Self {
        Self::Sled {
            op,
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<SledError> for StoreError {
    fn from(e: SledError) -> Self {
        let message = e.to_string();
        match e {
            SledError::EncryptionLimit { .. } => StoreError::Rejected(message),
            SledError::Sled {
                source: source @ sled::Error::Io(_),
                ..
            } => StoreError::Io {
                message,
                source: Some(Box::new(source)),
            },
            SledError::Io { source, .. } => StoreError::Io {
                message,
                source: Some(Box::new(source)),
            },
            SledError::Sled { source, .. } => StoreError::Unavailable {
                message,
                source: Some(Box::new(source)),
            },
            SledError::Seal(source) => StoreError::Unavailable {
                message,
                source: Some(Box::new(source)),
            },
            _ => StoreError::Unavailable {
                message,
                source: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_onto_store_errors_by_what_the_caller_can_do() {
        let limit = SledError::EncryptionLimit {
            key: KeyId::from_bytes([1, 2, 3, 4]),
            count: 10,
            limit: 10,
        };
        let e = StoreError::from(limit);
        assert!(
            matches!(e, StoreError::Rejected(_)) && !e.is_transient(),
            "{e:?}"
        );
        assert!(e.to_string().contains("rotate the key"), "{e}");

        let io = SledError::sled(
            "flush to disk",
            std::path::Path::new("/data/tokens"),
            sled::Error::Io(std::io::Error::other("File too large")),
        );
        let e = StoreError::from(io);
        assert!(
            matches!(e, StoreError::Io { .. }) && e.is_transient(),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("/data/tokens") && text.contains("File too large"),
            "{text}"
        );

        let locked = StoreError::from(SledError::Locked {
            path: "/data/tokens".into(),
        });
        assert!(
            matches!(locked, StoreError::Unavailable { .. }),
            "{locked:?}"
        );
    }
}
