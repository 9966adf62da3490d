//! The encryption envelope for tokens kept outside the process: AES-256-GCM
//! with a random 96-bit nonce per write, bound to its [`CacheKey`].
//!
//! Stores that keep bytes on disk (sled, always) or in a shared server
//! (Redis, optionally) seal the output of [`encode_token`](crate::encode_token)
//! with a [`Keyring`] before writing it, and open it after reading it. A value
//! that fails to open is a miss (counted in the store's stats), never a
//! token and never a panic.
//!
//! # Format (version 1)
//!
//! ```text
//! +---------+------------+-------------+---------------------------+
//! | version | key id     | nonce       | ciphertext + 16-byte tag  |
//! | 1 byte  | 4 bytes    | 12 bytes    | plaintext length + 16     |
//! +---------+------------+-------------+---------------------------+
//! ```
//!
//! - `version` is [`ENVELOPE_VERSION`]; an envelope of another version is
//!   refused with [`EnvelopeError::UnsupportedVersion`] instead of misread.
//! - `key id` names the key of the [`Keyring`] that sealed it
//!   ([`KeyId`]), so old keys keep opening old values after a rotation.
//! - The nonce is fresh from the operating system's CSPRNG for every seal.
//! - The associated data is the 5-byte header followed by the cache key's
//!   text: an envelope copied to another cache key, or whose header was
//!   altered, fails authentication.
//!
//! # Limits
//!
//! With random 96-bit nonces, NIST SP 800-38D bounds one key to 2^32
//! encryptions. The keyring does not count (a count must outlive the
//! process, which only a store can do); stores count encryptions per
//! [`KeyId`] and ask for a rotation well before that bound.
//!
//! # Example
//!
//! ```
//! use token_core::{CacheKey, EncryptionKey, Keyring};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keyring = Keyring::new(EncryptionKey::generate()?);
//! let key = CacheKey::from_raw("tc1|client|scope=read;");
//! let sealed = keyring.seal(&key, b"plaintext")?;
//! assert_eq!(&**keyring.open(&key, &sealed)?, b"plaintext");
//! // Bound to its cache key:
//! assert!(keyring.open(&CacheKey::from_raw("other"), &sealed).is_err());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::request::CacheKey;

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// The length of an AES-256 key, in bytes.
pub const KEY_LEN: usize = 32;

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;

/// Bytes an envelope adds to its plaintext: header, nonce and tag.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Domain separation for key ids, so an id is never the prefix of some
/// other hash of the same key.
const KEY_ID_DOMAIN: &[u8] = b"token-cache key id v1\0";

/// The short, public name of an [`EncryptionKey`]: the first 4 bytes of a
/// domain-separated SHA-256 of the key. Written in every envelope so that a
/// [`Keyring`] knows which of its keys opens it. Shown as 8 hex digits.
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
    id: KeyId,
    bytes: Zeroizing<[u8; KEY_LEN]>,
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

fn read_env(name: &str) -> Result<Zeroizing<String>, KeyError> {
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

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
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

/// Why an envelope could not be sealed or opened. Never contains any
/// plaintext, ciphertext or key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the smallest possible envelope, or otherwise not an
    /// envelope.
    #[error("the envelope is malformed: {len} bytes, fewer than the {min} of an empty one")]
    Malformed {
        /// Its length.
        len: usize,
        /// The smallest valid length.
        min: usize,
    },
    /// Written by a newer (or unknown) envelope format.
    #[error("the envelope has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Sealed with a key the keyring does not hold.
    #[error("the envelope was sealed with key {id}, which is not in the keyring")]
    UnknownKeyId {
        /// The envelope's key id.
        id: KeyId,
    },
    /// The tag does not match: the envelope was altered, copied from another
    /// cache key, or sealed by a different key that has the same id.
    #[error("the envelope failed authentication (altered, moved from another cache key, or a different key)")]
    AuthenticationFailed,
    /// The operating system's random generator failed, so no nonce could be
    /// drawn (sealing only).
    #[error("cannot seal: the operating system's random number generator is unavailable")]
    RandomUnavailable,
    /// The plaintext is longer than AES-GCM allows (sealing only).
    #[error("cannot seal: the plaintext is too long for AES-GCM")]
    TooLong,
}

struct Slot {
    id: KeyId,
    // With aes-gcm's `zeroize` feature the cipher wipes its key schedule on
    // drop; the raw key bytes are not kept at all.
    cipher: Aes256Gcm,
}

impl Slot {
    fn new(key: &EncryptionKey) -> Self {
        Self {
            id: key.id,
            cipher: Aes256Gcm::new(<&Key<Aes256Gcm>>::from(&*key.bytes)),
        }
    }
}

/// The keys a store encrypts with: one current key that seals every new
/// value, and older keys that still open values sealed before a rotation.
///
/// Rotation: make the new key current and keep the old one with
/// [`with_previous`](Self::with_previous) until every stored value has been
/// rewritten (a store's `rekey`) or has expired; then drop it.
///
/// Key material is zeroized when the keyring is dropped and never appears
/// in `Debug`, which shows key ids only.
pub struct Keyring {
    current: Slot,
    previous: Vec<Slot>,
}

impl Keyring {
    /// A keyring that seals with `current` and opens only what it sealed.
    pub fn new(current: EncryptionKey) -> Self {
        Self {
            current: Slot::new(&current),
            previous: Vec::new(),
        }
    }

    /// Adds an older key that still opens envelopes but never seals.
    ///
    /// Fails with [`KeyError::DuplicateKey`] if a key with the same id is
    /// already in the keyring.
    pub fn with_previous(mut self, key: EncryptionKey) -> Result<Self, KeyError> {
        if self.contains(key.id) {
            return Err(KeyError::DuplicateKey { id: key.id });
        }
        self.previous.push(Slot::new(&key));
        Ok(self)
    }

    /// A keyring from text holding base64 keys separated by commas or
    /// whitespace: the first is current, the others are older keys.
    pub fn from_base64_list(text: &str) -> Result<Self, KeyError> {
        let mut keys = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty());
        let first = keys.next().ok_or(KeyError::Empty)?;
        let mut ring = Self::new(EncryptionKey::from_base64(first)?);
        for k in keys {
            ring = ring.with_previous(EncryptionKey::from_base64(k)?)?;
        }
        Ok(ring)
    }

    /// A keyring from environment variable `name`, holding what
    /// [`from_base64_list`](Self::from_base64_list) reads.
    pub fn from_env(name: &str) -> Result<Self, KeyError> {
        let text = read_env(name)?;
        Self::from_base64_list(&text)
    }

    /// A keyring from a file holding exactly 32 raw bytes (one key), or
    /// text that [`from_base64_list`](Self::from_base64_list) reads.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let contents = read_file(path)?;
        if contents.len() == KEY_LEN {
            return Ok(Self::new(EncryptionKey::from_slice(&contents)?));
        }
        let text = std::str::from_utf8(&contents).map_err(|_| KeyError::NotText {
            path: path.to_owned(),
            len: contents.len(),
        })?;
        Self::from_base64_list(text)
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> KeyId {
        self.current.id
    }

    /// Every key id, the current one first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|s| s.id)
            .collect()
    }

    /// True when the keyring holds a key with this id.
    pub fn contains(&self, id: KeyId) -> bool {
        self.slot(id).is_some()
    }

    fn slot(&self, id: KeyId) -> Option<&Slot> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|s| s.id == id)
    }

    /// Encrypts `plaintext` for storage under `key` with the current key and
    /// a fresh random nonce.
    ///
    /// Fails only when the OS random generator fails or the plaintext is
    /// absurdly long (over 64 GiB).
    pub fn seal(&self, key: &CacheKey, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| EnvelopeError::RandomUnavailable)?;
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.current.id.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let header: [u8; HEADER_LEN] = header(self.current.id);
        let body_at = HEADER_LEN + NONCE_LEN;
        let tag = with_associated_data(&header, key, |aad| {
            self.current.cipher.encrypt_inout_detached(
                &Nonce::from(nonce),
                aad,
                (&mut out[body_at..]).into(),
            )
        })
        .map_err(|_| EnvelopeError::TooLong)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts an envelope sealed for `key` by any key of this keyring.
    ///
    /// The plaintext comes back in [`Zeroizing`], as it holds a secret.
    pub fn open(
        &self,
        key: &CacheKey,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let id = envelope_key_id(envelope)?;
        let slot = self.slot(id).ok_or(EnvelopeError::UnknownKeyId { id })?;
        let (header, rest) = envelope.split_at(HEADER_LEN);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| malformed(envelope))?;
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| malformed(envelope))?;
        let mut plain = Zeroizing::new(body.to_vec());
        with_associated_data(header, key, |aad| {
            slot.cipher.decrypt_inout_detached(
                &Nonce::from(nonce),
                aad,
                plain.as_mut_slice().into(),
                &Tag::from(tag),
            )
        })
        .map_err(|_| EnvelopeError::AuthenticationFailed)?;
        Ok(plain)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|s| s.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn malformed(envelope: &[u8]) -> EnvelopeError {
    EnvelopeError::Malformed {
        len: envelope.len(),
        min: ENVELOPE_OVERHEAD,
    }
}

/// The id of the key that sealed `envelope`, after checking its version and
/// length (not its authenticity). Stores use it to find values a rotation
/// has not rewritten yet.
pub fn envelope_key_id(envelope: &[u8]) -> Result<KeyId, EnvelopeError> {
    let Some(&version) = envelope.first() else {
        return Err(malformed(envelope));
    };
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_VERSION,
        });
    }
    if envelope.len() < ENVELOPE_OVERHEAD {
        return Err(malformed(envelope));
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&envelope[1..HEADER_LEN]);
    Ok(KeyId(id))
}

fn header(id: KeyId) -> [u8; HEADER_LEN] {
    let mut h = [ENVELOPE_VERSION; HEADER_LEN];
    h[1..].copy_from_slice(&id.0);
    h
}

/// Calls `f` with the associated data: the header, then the cache key. The
/// header has a fixed length, so the concatenation is unambiguous. Built on
/// the stack when it fits (cache keys are usually short), so an open
/// allocates only its plaintext.
fn with_associated_data<R>(header: &[u8], key: &CacheKey, f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 256;
    let key = key.as_str().as_bytes();
    let len = header.len() + key.len();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        buf[..header.len()].copy_from_slice(header);
        buf[header.len()..len].copy_from_slice(key);
        f(&buf[..len])
    } else {
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(header);
        buf.extend_from_slice(key);
        f(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_n(n: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([n; KEY_LEN])
    }

    fn ck(s: &str) -> CacheKey {
        CacheKey::from_raw(s)
    }

    const PLAIN: &[u8] = b"{\"s\":\"very-secret-token\"}";

    #[test]
    fn round_trip_and_fresh_nonce_per_seal() {
        let ring = Keyring::new(key_n(1));
        let a = ring.seal(&ck("k"), PLAIN).unwrap();
        let b = ring.seal(&ck("k"), PLAIN).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), PLAIN.len() + ENVELOPE_OVERHEAD);
        assert_eq!(a[0], ENVELOPE_VERSION);
        assert_eq!(&**ring.open(&ck("k"), &a).unwrap(), PLAIN);
        assert_eq!(&**ring.open(&ck("k"), &b).unwrap(), PLAIN);
        assert_eq!(envelope_key_id(&a).unwrap(), ring.current_key_id());
        let empty = ring.seal(&ck("k"), b"").unwrap();
        assert!(ring.open(&ck("k"), &empty).unwrap().is_empty());
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = Keyring::new(key_n(1));
        let sealed_old = old.seal(&ck("k"), PLAIN).unwrap();
        let ring = Keyring::new(key_n(2)).with_previous(key_n(1)).unwrap();
        assert_eq!(&**ring.open(&ck("k"), &sealed_old).unwrap(), PLAIN);
        let sealed_new = ring.seal(&ck("k"), PLAIN).unwrap();
        assert_eq!(envelope_key_id(&sealed_new).unwrap(), key_n(2).id());
        assert_eq!(ring.key_ids(), vec![key_n(2).id(), key_n(1).id()]);
        // The old keyring alone cannot read what the new key sealed.
        assert_eq!(
            old.open(&ck("k"), &sealed_new).unwrap_err(),
            EnvelopeError::UnknownKeyId { id: key_n(2).id() }
        );
        assert!(matches!(
            Keyring::new(key_n(2)).with_previous(key_n(2)),
            Err(KeyError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn a_different_key_under_the_same_id_fails_authentication() {
        let ring = Keyring::new(key_n(1));
        let mut sealed = ring.seal(&ck("k"), PLAIN).unwrap();
        let other = Keyring::new(key_n(3));
        sealed[1..HEADER_LEN].copy_from_slice(&other.current_key_id().to_bytes());
        assert_eq!(
            other.open(&ck("k"), &sealed).unwrap_err(),
            EnvelopeError::AuthenticationFailed
        );
    }

    #[test]
    fn long_cache_keys_round_trip_and_stay_bound() {
        let ring = Keyring::new(key_n(1));
        let long = "k".repeat(1000);
        let sealed = ring.seal(&ck(&long), PLAIN).unwrap();
        assert_eq!(&**ring.open(&ck(&long), &sealed).unwrap(), PLAIN);
        let other = format!("{long}x");
        assert_eq!(
            ring.open(&ck(&other), &sealed).unwrap_err(),
            EnvelopeError::AuthenticationFailed
        );
        let at_edge = "e".repeat(256 - HEADER_LEN);
        let sealed = ring.seal(&ck(&at_edge), PLAIN).unwrap();
        assert_eq!(&**ring.open(&ck(&at_edge), &sealed).unwrap(), PLAIN);
    }

    #[test]
    fn an_envelope_is_bound_to_its_cache_key() {
        let ring = Keyring::new(key_n(1));
        let a = ring.seal(&ck("a"), b"token for a").unwrap();
        let b = ring.seal(&ck("b"), b"token for b").unwrap();
        for (key, value) in [("a", &b), ("b", &a), ("a ", &a), ("", &a)] {
            assert_eq!(
                ring.open(&ck(key), value).unwrap_err(),
                EnvelopeError::AuthenticationFailed
            );
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_fails_cleanly() {
        let ring = Keyring::new(key_n(1));
        let sealed = ring.seal(&ck("k"), PLAIN).unwrap();
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                let err = ring.open(&ck("k"), &b).unwrap_err();
                let expected_kind = match i {
                    0 => matches!(err, EnvelopeError::UnsupportedVersion { .. }),
                    1..HEADER_LEN => matches!(err, EnvelopeError::UnknownKeyId { .. }),
                    _ => err == EnvelopeError::AuthenticationFailed,
                };
                assert!(expected_kind, "byte {i} bit {bit}: {err:?}");
            }
        }
        for len in 0..sealed.len() {
            let err = ring.open(&ck("k"), &sealed[..len]).unwrap_err();
            match len {
                0..ENVELOPE_OVERHEAD => assert!(
                    matches!(err, EnvelopeError::Malformed { len: l, .. } if l == len),
                    "{len}: {err:?}"
                ),
                _ => assert_eq!(err, EnvelopeError::AuthenticationFailed, "{len}"),
            }
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            ring.open(&ck("k"), &longer).unwrap_err(),
            EnvelopeError::AuthenticationFailed
        );
    }

    #[test]
    fn constructors_accept_raw_base64_env_and_file() {
        let key = key_n(7);
        let b64 = key.to_base64();
        assert_eq!(EncryptionKey::from_base64(&b64).unwrap().id(), key.id());
        let url_no_pad = b64
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        assert_eq!(
            EncryptionKey::from_base64(&format!("  {url_no_pad}\n"))
                .unwrap()
                .id(),
            key.id()
        );
        assert_eq!(EncryptionKey::from_slice(&[7; 32]).unwrap().id(), key.id());

        let var = "TOKEN_CORE_ENVELOPE_TEST_KEYS";
        std::env::set_var(var, format!("{}, {}", &*b64, &*key_n(8).to_base64()));
        let ring = Keyring::from_env(var).unwrap();
        assert_eq!(ring.key_ids(), vec![key.id(), key_n(8).id()]);
        std::env::set_var(var, &*b64);
        assert_eq!(EncryptionKey::from_env(var).unwrap().id(), key.id());
        std::env::remove_var(var);

        let dir = std::env::temp_dir().join(format!(
            "token-core-envelope-{:x}",
            crate::rng::random_u128()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw.key");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(EncryptionKey::from_file(&raw).unwrap().id(), key.id());
        assert_eq!(Keyring::from_file(&raw).unwrap().current_key_id(), key.id());
        let text = dir.join("text.key");
        std::fs::write(&text, format!("{}\n", &*b64)).unwrap();
        assert_eq!(EncryptionKey::from_file(&text).unwrap().id(), key.id());
        assert_eq!(
            Keyring::from_file(&text).unwrap().current_key_id(),
            key.id()
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let a = EncryptionKey::generate().unwrap();
        let b = EncryptionKey::generate().unwrap();
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn constructor_errors_name_the_problem_without_the_material() {
        let secretish = "c2VjcmV0LWtleS1tYXRlcmlhbA"; // 19 bytes
        let cases: Vec<(KeyError, &str)> = vec![
            (EncryptionKey::from_slice(&[1; 31]).unwrap_err(), "31 bytes"),
            (
                EncryptionKey::from_base64(secretish).unwrap_err(),
                "19 bytes",
            ),
            (
                EncryptionKey::from_base64("not*base64!secret-material").unwrap_err(),
                "not valid base64",
            ),
            (EncryptionKey::from_base64("  ").unwrap_err(), "empty"),
            (Keyring::from_base64_list(" , ").unwrap_err(), "empty"),
            (
                EncryptionKey::from_env("TOKEN_CORE_ENVELOPE_TEST_NO_SUCH_VAR").unwrap_err(),
                "TOKEN_CORE_ENVELOPE_TEST_NO_SUCH_VAR is not set",
            ),
            (
                Keyring::from_file("/nonexistent/token-cache/key").unwrap_err(),
                "cannot read the key file /nonexistent/token-cache/key",
            ),
        ];
        for (err, expected) in cases {
            let text = format!("{err} / {err:?}");
            assert!(text.contains(expected), "{text}");
            for material in [secretish, "secret-material", "c2VjcmV0"] {
                assert!(!text.contains(material), "{text}");
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "token-core-envelope-{:x}",
            crate::rng::random_u128()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin.key");
        std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let err = EncryptionKey::from_file(&bin).unwrap_err().to_string();
        assert!(err.contains("4 bytes of binary data"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = key_n(0xab);
        let b64 = key.to_base64();
        let ring = Keyring::new(key_n(0xab))
            .with_previous(key_n(0xcd))
            .unwrap();
        for text in [
            format!("{key:?}"),
            format!("{ring:?}"),
            format!("{:#?}", ring),
        ] {
            assert!(!text.contains(&*b64), "{text}");
            assert!(!text.to_lowercase().contains("abababab"), "{text}");
            assert!(!text.contains("171, 171"), "{text}");
            assert!(!text.contains("cdcdcdcd"), "{text}");
        }
        assert_eq!(
            format!("{ring:?}"),
            format!(
                "Keyring {{ current: KeyId({}), previous: [KeyId({})] }}",
                key.id(),
                key_n(0xcd).id()
            )
        );
        assert!(format!("{key:?}").contains("\"***\""));
    }
}
