//! Core contracts and the caching engine of token-cache.
//!
//! - [`AccessToken`], [`TokenRequest`], [`CacheKey`]: what is cached, what
//!   is asked for, and the key it is cached under.
//! - [`Credential`]: where tokens come from. [`CacheStore`]: where they are
//!   kept. Both are small, `dyn`-safe traits with a `# Contract` section.
//! - [`TokenCache`]: the engine. Hot-slot hits without locks or allocation,
//!   refresh-ahead in the background, single-flight per key in the process
//!   and across processes through the store's lease, stale-if-error, backoff.
//!   One cache holds a token per user at any scale: keys are added in O(1),
//!   bounded by `max_keys` (CLOCK eviction) and dropped when idle with an
//!   expired token ([`TokenCacheBuilder::max_keys`], [`TokenCacheBuilder::idle_window`]).
//! - [`RefreshPolicy`]: every timing knob; its defaults are the constants
//!   of [`policy`], each saying why it has that value.
//! - [`Clock`]: injected time, so tests move a [`ManualClock`] instead of
//!   sleeping.
//!
//! - `test_util` (feature `test-util`): the fake IdP every crate's tests
//!   share.
//! - [`backend`]: what only the authors of a store need (the byte format,
//!   the envelope's framing, the in-process lease table, store events).
//!
//! **Naming:** a value that is both configured and read ([`RefreshPolicy`],
//! [`AccessToken`], [`StoreCapabilities`]) is set with `with_x(value)` and
//! read with `x()`; a `…Builder` that only builds names its setters `x(value)`.
//! Nothing has a `get_` prefix.
//!
//! **Architecture invariant:** this crate does no network I/O and depends on
//! no backend; the only file it reads is a key file, when asked to.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
mod clock;
mod codec;
mod credential;
mod engine;
#[cfg(feature = "encryption")]
mod envelope;
mod error;
mod events;
mod flight;
mod keys;
mod lease;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
pub mod policy;
mod request;
mod rng;
mod secret;
mod slot;
mod stats;
mod store;
mod store_gate;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
mod token;
mod warm;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use credential::{Credential, CredentialError, FailureCause, FailureKind, HttpStatusText};
pub use engine::{TokenCache, TokenCacheBuilder, TokenHandle};
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use envelope::{EncryptionKey, KeyError, KeyId, Keyring, KEY_LEN};
pub use error::{BoxError, Error};
pub use policy::RefreshPolicy;
pub use request::{
    Actor, CacheKey, ExchangeGrant, ExchangeSubject, ParamValue, TokenRequest, TokenRequestBuilder,
};
pub use secret::Secret;
pub use slot::Token;
pub use stats::CacheStats;
pub use store::{CacheStore, Lease, PutOutcome, StoreCapabilities, StoreError, StoreStats};
pub use token::{AccessToken, TokenType};
pub use warm::KeepWarm;
