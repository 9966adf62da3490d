//! A Redis [`CacheStore`](token_core::CacheStore) for token-cache: one
//! token per key for a whole fleet, on a standalone server or a Redis
//! Cluster.
//!
//! ```no_run
//! # use token_core::*;
//! # #[derive(Debug)] struct MyIdp;
//! # #[async_trait::async_trait] impl Credential for MyIdp {
//! #   fn id(&self) -> &str { "my-idp" }
//! #   async fn fetch(&self, _: &TokenRequest, _: Option<&AccessToken>) -> Result<AccessToken, CredentialError> { unimplemented!() }
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use token_redis::{RedisConfig, RedisStore};
//!
//! // Tokens are sealed with AES-256-GCM: every instance needs the same key.
//! let keyring = token_core::Keyring::new(token_core::EncryptionKey::from_env("TOKEN_CACHE_KEY")?);
//! let store = RedisStore::connect(
//!     RedisConfig::new("redis://redis.internal:6379")
//!         .with_encryption(keyring)
//!         .with_key_prefix("orders-svc:tokens:"),
//! )
//! .await?;
//! let cache = TokenCache::builder(MyIdp).store(store).build();
//! # Ok(()) }
//! ```
//!
//! Every process that uses the same server and key prefix shares tokens:
//! the fleet asks the IdP once per refresh, whoever holds the key's lease
//! fetches and the others wait for its token (the engine polls the store with
//! backoff; see [`RedisStore`] for what the store guarantees and
//! `README.md` for the design).
//!
//! Features: `encryption` (seal values with token-core's AES-256-GCM
//! envelope), `tls` (`rediss://` URLs, via rustls; a private CA with
//! `RedisConfig::with_tls_root_certificates`, mutual TLS with
//! `RedisConfig::with_tls_client_certificate`).
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
mod background;
mod breaker;
mod config;
mod error;
mod events;
mod layout;
mod link;
mod scripts;
mod store;
#[cfg(feature = "tls")]
mod tls;

pub use config::{
    RedisConfig, DEFAULT_BREAKER_OPEN_FOR, DEFAULT_BREAKER_THRESHOLD, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_REPLACE_AFTER_TIMEOUTS,
};
pub use error::RedisStoreError;
pub use redis;
pub use store::{RedisConnection, RedisStore};
