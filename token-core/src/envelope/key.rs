//! One AES-256 key, its public id, and why key material can be refused.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{KEY_ID_LEN, KEY_LEN};

/// Domain separation for key ids, so an id is never the prefix of some
/// other hash of the same key.
const KEY_ID_DOMAIN: &[u8] = b"token-cache key id v1\0";

/// The short, public name of an [`EncryptionKey`]: the first 4 bytes of a
/// domain-separated SHA-256 of the key. Written in every envelope so that a
/// [`Keyring`](super::Keyring) knows which of its keys opens it. Shown as 8 hex digits.
///
/// It reveals nothing useful about the key (32 bits of a hash of 256 random
/// bits) and is safe to log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// The id as bytes, as written in an envelope.
    pub const fn to_bytes(self) -> [u8; 4] {
        self.0
    }

    /// An id from its bytes (for stores that keep per-key bookkeeping).
    pub const fn from_bytes(bytes: [u8; 4]) -> Self {
        Self(bytes)
    }

    fn of(key: &[u8; KEY_LEN]) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_ID_DOMAIN);
        h.update(key);
        let sum = h.finalize();
        Self([sum[0], sum[1], sum[2], sum[3]])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One AES-256 key: 32 bytes, zeroized on drop, never shown by `Debug`.
///
/// Make one from raw bytes, base64 text, an environment variable or a file,
/// or [`generate`](Self::generate) a new one. Every constructor's error
/// names the problem (wrong length, bad base64, missing variable,
/// unreadable file) without repeating any of the material it was given.
pub struct EncryptionKey {
    pub(super) id: KeyId,
    pub(super) bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        Self {
            id: KeyId::of(&bytes),
            bytes,
        }
    }

    /// A key from a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::WrongLength { found: bytes.len() });
        }
        raw.copy_from_slice(bytes);
        Ok(Self {
            id: KeyId::of(&raw),
            bytes: raw,
        })
    }

    /// A key from base64 text (standard or URL-safe alphabet, padding
    /// optional, surrounding whitespace ignored) that decodes to 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let decoded = decode_base64(text)?;
        Self::from_slice(&decoded)
    }

    /// A key from the base64 text in environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, KeyError> {
        let text = read_env(name)?;
        Self::from_base64(&text)
    }

    /// A key from a file holding either exactly 32 raw bytes or base64 text.
    ///
    /// Keep the file private to the user the process runs as.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let contents = read_file(path)?;
        if contents.len() == KEY_LEN {
            return Self::from_slice(&contents);
        }
        let text = std::str::from_utf8(&contents).map_err(|_| KeyError::NotText {
            path: path.to_owned(),
            len: contents.len(),
        })?;
        Self::from_base64(text)
    }

    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut *raw).map_err(|_| KeyError::RandomUnavailable)?;
        Ok(Self {
            id: KeyId::of(&raw),
            bytes: raw,
        })
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key as standard base64 text, for provisioning a generated key.
    /// The text is as secret as the key.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice()))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .field("bytes", &"***")
            .finish()
    }
}

fn decode_base64(text: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
    // The decoder's own error quotes the offending byte, which is key
    // material: keep only the category.
    STANDARD_PAD_INDIFFERENT
        .decode(text)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
        .map(Zeroizing::new)
        .map_err(|_| KeyError::InvalidBase64)
}

pub(super) fn read_env(name: &str) -> Result<Zeroizing<String>, KeyError> {
    match std::env::var(name) {
        Ok(v) => Ok(Zeroizing::new(v)),
        Err(std::env::VarError::NotPresent) => Err(KeyError::MissingVariable {
            name: name.to_owned(),
        }),
        Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::VariableNotUnicode {
            name: name.to_owned(),
        }),
    }
}

pub(super) fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| KeyError::UnreadableFile {
            path: path.to_owned(),
            source,
        })
}

/// Why key material could not be used. Never contains any of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The material is not 32 bytes long.
    #[error("an AES-256 key is 32 bytes; the key given is {found} bytes")]
    WrongLength {
        /// The length found, in bytes.
        found: usize,
    },
    /// The text is not base64.
    #[error("the key text is not valid base64 (standard or URL-safe alphabet)")]
    InvalidBase64,
    /// No key was given (empty text, an empty list).
    #[error("no key was given: the key text is empty")]
    Empty,
    /// The environment variable is not set.
    #[error("environment variable {name} is not set; it should hold a base64 AES-256 key")]
    MissingVariable {
        /// The variable.
        name: String,
    },
    /// The environment variable is not valid Unicode.
    #[error("environment variable {name} is not valid Unicode; it should hold base64 text")]
    VariableNotUnicode {
        /// The variable.
        name: String,
    },
    /// The key file could not be read.
    #[error("cannot read the key file {}", path.display())]
    UnreadableFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is neither 32 raw bytes nor UTF-8 text.
    #[error(
        "the key file {} is {len} bytes of binary data; it must hold exactly 32 raw bytes or base64 text",
        path.display()
    )]
    NotText {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Two keys of a keyring have the same id (the same key given twice).
    #[error("key {id} is in the keyring twice")]
    DuplicateKey {
        /// The repeated id.
        id: KeyId,
    },
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator is unavailable")]
    RandomUnavailable,
}
