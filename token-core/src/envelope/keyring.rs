//! The keyring: one key that seals, older keys that still open.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use zeroize::Zeroizing;

use super::key::{read_env, read_file};
use super::{
    envelope_key_id, header, malformed, with_associated_data, EncryptionKey, EnvelopeError,
    KeyError, KeyId, ENVELOPE_OVERHEAD, ENVELOPE_VERSION, HEADER_LEN, KEY_LEN, NONCE_LEN, TAG_LEN,
};
use crate::request::CacheKey;

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
        out.extend_from_slice(&self.current.id.to_bytes());
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
