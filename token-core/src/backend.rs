//! What only the authors of a [`CacheStore`](crate::CacheStore) need.
//!
//! An application that uses token-cache never imports from here: it picks a
//! store from token-memory, token-redis or token-sled and hands it to the
//! [`TokenCache`](crate::TokenCache). A store written against token-core
//! alone takes its building blocks from this module:
//!
//! - [`encode_token`] / [`decode_token`]: the one byte format every store
//!   that keeps bytes uses, versioned by [`FORMAT_VERSION`];
//! - the encryption envelope's framing ([`envelope_key_id`],
//!   [`EnvelopeError`], [`ENVELOPE_VERSION`], [`ENVELOPE_OVERHEAD`]), for
//!   stores that seal values with a [`Keyring`](crate::Keyring) (feature
//!   `encryption`);
//! - [`LocalLeases`]: the refresh lease within one process, for stores that
//!   cannot share leases between processes;
//! - [`storable_expiry`]: the expiry `put` compares on, or the error for a
//!   token without one;
//! - [`StoreEvent`] and [`TokenFingerprint`]: what a shared store tells the
//!   other instances through [`CacheStore::subscribe`](crate::CacheStore::subscribe);
//! - [`random_u128`]: unique values for lease owners and instance ids.
//!
//! Whether a stored token may be returned at `now` is decided by
//! [`AccessToken::is_live_at`](crate::AccessToken::is_live_at), the one rule
//! every store and the engine share.

pub use crate::codec::{decode_token, encode_token, DecodeError, FORMAT_VERSION};
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use crate::envelope::{envelope_key_id, EnvelopeError, ENVELOPE_OVERHEAD, ENVELOPE_VERSION};
pub use crate::lease::LocalLeases;
pub use crate::rng::random_u128;
pub use crate::store::{storable_expiry, StoreEvent, TokenFingerprint};
