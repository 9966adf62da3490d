//! Core contracts and the caching engine of token-cache.
//!
//! - [`AccessToken`], [`TokenRequest`], [`CacheKey`]: what is cached, what
//!   is asked for, and the key it is cached under.
//! - [`Credential`]: where tokens come from. [`CacheStore`]: where they are
//!   kept. Both are small, `dyn`-safe traits with a `# Contract` section.
//! - [`TokenCache`]: the engine. Hot-slot hits without locks or allocation,
//!   refresh-ahead in the background, single-flight per key in the process
//!   and across processes through the store's lease, stale-if-error, backoff.
//! - [`RefreshPolicy`]: every timing knob, with documented defaults.
//! - [`Clock`]: injected time, so tests move a [`ManualClock`] instead of
//!   sleeping.
//!
//! **Architecture invariant:** this crate does no network I/O and depends on
//! no backend; the only file it reads is a key file, when asked to.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod codec;
mod credential;
mod engine;
#[cfg(feature = "encryption")]
mod envelope;
mod error;
mod flight;
mod lease;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod policy;
mod request;
mod rng;
mod secret;
mod slot;
mod stats;
mod store;
mod token;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use codec::{decode_token, encode_token, DecodeError, FORMAT_VERSION};
pub use credential::{Credential, CredentialError, FailureKind};
pub use engine::{KeepWarm, TokenCache, TokenCacheBuilder, TokenHandle};
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use envelope::{
    envelope_key_id, EncryptionKey, EnvelopeError, KeyError, KeyId, Keyring, ENVELOPE_OVERHEAD,
    ENVELOPE_VERSION, KEY_LEN,
};
pub use error::Error;
pub use lease::LocalLeases;
pub use policy::*;
pub use request::{Actor, CacheKey, ParamValue, TokenRequest, TokenRequestBuilder};
pub use rng::random_u128;
pub use secret::Secret;
pub use slot::Token;
pub use stats::CacheStats;
pub use store::{
    storable_expiry, BoxError, CacheStore, CacheStoreExt, Lease, PutOutcome, StoreCapabilities,
    StoreError, StoreEvent, StoreStats, TokenFingerprint,
};
pub use token::{AccessToken, TokenType};
