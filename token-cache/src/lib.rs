//! Fetches OAuth 2.0 access tokens and caches them, so that a fleet of
//! services asks the identity provider (IdP) once per token lifetime instead
//! of once per request, keeps working through IdP outages, and never hands
//! out an expired token.
//!
//! This is the crate to depend on. It re-exports the engine and contracts of
//! [`token-core`](token_core) at its root, and each cache backend behind a
//! feature.
//!
//! # Example
//!
//! A [`Credential`] obtains tokens (here a stand-in for an IdP); the
//! [`TokenCache`] hands them out, keeping each in the [`MemoryStore`] until
//! it is due for refresh.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use token_cache::{
//!     async_trait, AccessToken, Credential, CredentialError, MemoryStore, TokenCache, TokenRequest,
//! };
//!
//! #[derive(Debug)]
//! struct StaticIdp;
//!
//! #[async_trait]
//! impl Credential for StaticIdp {
//!     fn id(&self) -> &str {
//!         "static-idp"
//!     }
//!
//!     async fn fetch(
//!         &self,
//!         _request: &TokenRequest,
//!         _previous: Option<&AccessToken>,
//!     ) -> Result<AccessToken, CredentialError> {
//!         Ok(AccessToken::new("not-a-real-token", SystemTime::now())
//!             .with_expires_in(Duration::from_secs(3600)))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), token_cache::Error> {
//! let cache = TokenCache::builder(StaticIdp)
//!     .store(MemoryStore::default())
//!     .build();
//! let request = TokenRequest::builder().scope("orders.read").build();
//!
//! let token = cache.get_token(&request).await?;
//! assert!(token.is_live_at(SystemTime::now()));
//!
//! // The second call is answered from the cache: still one IdP call.
//! let again = cache.get_token(&request).await?;
//! assert!(again.same_secret(&token));
//! assert_eq!(cache.stats().idp_calls, 1);
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run -p token-cli -- demo` (the `tokencache demo` command) puts 200
//! concurrent callers on one cache for ten seconds against a local IdP and
//! prints how many IdP calls they caused.
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `memory` | yes | `MemoryStore` and the `memory` module: an in-process, bounded store |
//! | `redis` | no | `RedisStore`, `RedisConfig` and the `redis` module: one token per key for a whole fleet, on a standalone Redis or a Redis Cluster |
//! | `redis-tls` | no | `redis`, plus `rediss://` URLs (rustls): `RedisConfig::with_tls_root_certificates` for a private CA, `RedisConfig::with_tls_client_certificate` for mutual TLS |
//! | `sled` | no | `SledStore` and the `sled` module: tokens encrypted at rest (AES-256-GCM) that survive restarts |
//! | `http` | no | the `http` module (token-http): OAuth 2.0 credentials over HTTP (`OAuthCredential`) and the reqwest/tower middleware that attaches tokens; re-exports `reqwest` and `reqwest_middleware`, so no other dependency is needed for `TokenMiddleware` |
//! | `metrics` | no | the engine's counters through the `metrics` facade (`token_cache::metrics::export`), for any `metrics` exporter (Prometheus: `tokencache_*` names) |
//! | `full` | no | all of the above (for CI and docs) |
//!
//! # More
//!
//! The repository's `README.md` (compiled here as doctests) walks through
//! the first hour: client credentials and `private_key_jwt`, a Redis store
//! encrypted with a `Keyring`, the `Authorization` header
//! ([`AccessToken::authorization_header`], then `.expose()`), the reqwest
//! middleware and the tower layer, a token per user, a custom credential and
//! a custom store proved by `token-conformance`. `token-cache/examples/` has
//! runnable programs: `client_credentials_redis`, `on_behalf_of` and
//! `hyper_service` (`cargo run -p token-cache --features http,redis
//! --example NAME`, settings from the environment).
//!
//! A `RedisStore` (feature `redis`) that cannot reach Redis at
//! start-up connects in the background while the cache serves from memory
//! and the IdP; `RedisConfig::with_connect_at_start(true)` fails instead.
//!
//! # Writing a store or a credential
//!
//! Implement [`CacheStore`] or [`Credential`] against `token-core` alone, and
//! prove a store with the `token-conformance` suite.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use token_core::*;

/// Implements a [`Credential`] or [`CacheStore`] (their methods are async),
/// re-exported so that implementing one needs no extra dependency.
#[doc(no_inline)]
pub use async_trait::async_trait;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use token_memory::{self as memory, MemoryStore};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use token_redis::{self as redis, RedisConfig, RedisStore};

#[cfg(feature = "sled")]
#[cfg_attr(docsrs, doc(cfg(feature = "sled")))]
pub use token_sled::{self as sled, SledStore};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use token_http::{self as http, AddTokenLayer, OAuthCredential, TokenMiddleware};

/// The HTTP client of [`OAuthCredential`] and [`TokenMiddleware`],
/// re-exported: with the `http` feature, depending on `token-cache` alone
/// is enough to build a client with the middleware.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[doc(no_inline)]
pub use token_http::{reqwest, reqwest_middleware};

// The README's examples are compiled (and run where they need no network)
// as doctests, with the features they use.
#[cfg(all(doctest, feature = "memory", feature = "redis", feature = "http"))]
#[doc = include_str!("../../README.md")]
mod readme {}
