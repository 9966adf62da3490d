//! The encryption envelope for tokens kept outside the process: AES-256-GCM
//! with a random 96-bit nonce per write, bound to its [`CacheKey`].
//!
//! Stores that keep bytes on disk (sled, always) or in a shared server
//! (Redis, optionally) seal the output of [`encode_token`](crate::backend::encode_token)
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
//!
//! # Files
//!
//! `key.rs`: [`KeyId`], [`EncryptionKey`], [`KeyError`]. `keyring.rs`:
//! [`Keyring`], which seals and opens. This file: the format's constants,
//! [`EnvelopeError`], [`envelope_key_id`] and the associated data.

mod key;
mod keyring;
#[cfg(test)]
mod tests;

use crate::request::CacheKey;

pub use key::{EncryptionKey, KeyError, KeyId};
pub use keyring::Keyring;

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
    Ok(KeyId::from_bytes(id))
}

fn header(id: KeyId) -> [u8; HEADER_LEN] {
    let mut h = [ENVELOPE_VERSION; HEADER_LEN];
    h[1..].copy_from_slice(&id.to_bytes());
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
