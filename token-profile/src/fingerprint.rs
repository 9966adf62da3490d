//! Cache entries bound to the client's secret or private key.
//!
//! A cache key is built from the credential's [`id`](Credential::id), which
//! names the token URL, the client id and the authentication method, never
//! the secret. Without more, anyone who can run `tokencache` on a store
//! would get a cached token for a client by naming its id with any secret at
//! all. [`Bound`] appends a keyed, non-reversible fingerprint of the secret
//! (or private key) to the id, so a wrong or rotated secret gives another
//! key: it misses the cache and goes to the IdP, which refuses a wrong one.
//!
//! The fingerprint is `HMAC-SHA256(k, kind || 0 || secret)` truncated to 128
//! bits, where `k = HMAC-SHA256(store key, LABEL)`: keyed by the store's
//! encryption key, so the fingerprints in an index or a Redis key name say
//! nothing to someone without that key (a plain hash of a low-entropy secret
//! could be brute-forced offline), and the same in every process sharing
//! the store (they share its key).

use std::fmt;
use std::fmt::Write as _;

use async_trait::async_trait;
use ring::hmac;
use token_core::{AccessToken, Credential, CredentialError, EncryptionKey, TokenRequest};

/// Domain separation for the derived fingerprint key.
const LABEL: &[u8] = b"tokencache/credential-fingerprint/v1";

/// The key fingerprints are made with; never printed.
#[derive(Clone)]
pub struct FingerprintKey(hmac::Key);

impl FingerprintKey {
    /// Derived from the store's encryption key.
    pub(crate) fn derive(store_key: &EncryptionKey) -> Self {
        // `to_base64` is a one-to-one encoding of the key bytes, so HMAC
        // keyed with it is as strong as keyed with the bytes themselves.
        let encoded = store_key.to_base64();
        let outer = hmac::Key::new(hmac::HMAC_SHA256, encoded.as_bytes());
        let derived = hmac::sign(&outer, LABEL);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// A random key, for a store that keeps nothing between invocations
    /// (memory): its entries never outlive the process anyway.
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&token_core::backend::random_u128().to_le_bytes());
        bytes[16..].copy_from_slice(&token_core::backend::random_u128().to_le_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Self(key)
    }

    /// The fingerprint of `secret` of `kind` (`cs` client secret, `pk`
    /// private key), as 32 hex digits.
    pub(crate) fn fingerprint(&self, kind: &str, secret: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(secret);
        let tag = ctx.sign();
        let mut out = String::with_capacity(32);
        for b in &tag.as_ref()[..16] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(***)")
    }
}

/// What a credential's cache entries are bound to, beyond its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Nothing more: the id already says enough (a certificate thumbprint,
    /// an assertion file's path) or there is no secret (a managed identity,
    /// a public client's refresh token, which is never fingerprinted).
    None,
    /// A fingerprint (from [`FingerprintKey::fingerprint`]) of the secret
    /// of `kind` (`cs` client secret, `pk` private key).
    Fingerprint {
        kind: &'static str,
        fingerprint: String,
    },
}

impl Binding {
    /// The binding to `secret` of `kind`, fingerprinted with `key`.
    pub(crate) fn fingerprint(kind: &'static str, key: &FingerprintKey, secret: &[u8]) -> Self {
        Self::Fingerprint {
            kind,
            fingerprint: key.fingerprint(kind, secret),
        }
    }
}

/// A credential whose id ends with the fingerprint of what it authenticates
/// with, `<inner id>|fp=<kind>:<fingerprint>`, or is the inner id for
/// [`Binding::None`].
#[derive(Debug)]
pub(crate) struct Bound<C> {
    inner: C,
    id: String,
}

impl<C: Credential> Bound<C> {
    /// Binds `inner` as `binding` says.
    pub(crate) fn new(inner: C, binding: Binding) -> Self {
        let id = match binding {
            Binding::None => inner.id().to_owned(),
            Binding::Fingerprint { kind, fingerprint } => {
                format!("{}|fp={kind}:{fingerprint}", inner.id())
            }
        };
        Self { inner, id }
    }
}

#[async_trait]
impl<C: Credential> Credential for Bound<C> {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        self.inner.fetch(request, previous).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> FingerprintKey {
        FingerprintKey::derive(&EncryptionKey::from_bytes([byte; 32]))
    }

    #[test]
    fn fingerprints_differ_by_secret_kind_and_store_key() {
        let k = key(1);
        let a = k.fingerprint("cs", b"secret-a");
        assert_eq!(a, k.fingerprint("cs", b"secret-a"), "stable");
        assert_eq!(a.len(), 32);
        assert_ne!(a, k.fingerprint("cs", b"secret-b"));
        assert_ne!(a, k.fingerprint("pk", b"secret-a"));
        assert_ne!(a, key(2).fingerprint("cs", b"secret-a"));
        assert!(!a.contains("secret"));
    }

    #[test]
    fn the_key_never_prints() {
        assert_eq!(format!("{:?}", key(7)), "FingerprintKey(***)");
    }
}
