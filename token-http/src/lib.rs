//! OAuth 2.0 over HTTP for token-cache: credentials that obtain tokens from
//! an authorization server, and middleware that puts cached tokens on
//! outgoing requests.
//!
//! - [`OAuthCredential`]: a [`token_core::Credential`] for the client
//!   credentials, refresh token and token exchange (RFC 8693) grants, with
//!   `client_secret_basic`, `client_secret_post`, `private_key_jwt`
//!   (RS256/ES256, [`PrivateKey`], optionally naming its [`Certificate`]),
//!   a client assertion minted elsewhere ([`AssertionFile`], re-read at
//!   every fetch, or [`AssertionFn`]) or mutual TLS (RFC 8705,
//!   [`ClientCertificate`]) client authentication, built from a token URL
//!   or discovered from an issuer ([`ServerMetadata`]).
//! - Secrets that rotate on disk: the client secret, `private_key_jwt` key
//!   ([`PrivateKeyFile`]) and certificate, or mutual-TLS certificate and key
//!   read from files that are re-read when they change, with one retry when
//!   the server refuses the client and the files changed; see
//!   [`OAuthCredentialBuilder::client_secret_file`].
//! - Managed identities and metadata servers: [`AzureImdsCredential`]
//!   (Azure VMs, `Metadata: true`, IMDS's documented retries),
//!   [`AppServiceCredential`] (App Service, Functions, Container Apps:
//!   `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) and [`GcpMetadataCredential`]
//!   (`Metadata-Flavor: Google`); endpoints overridable, `refresh_in` hints
//!   honoured.
//! - [`StoredRefreshToken`]: a refresh-token credential whose newest rotated
//!   refresh token lives in the cache's store, redeemed under its lease.
//! - [`parse_token_response`]: the pure parser of token endpoint answers,
//!   usable on its own.
//! - DPoP (RFC 9449): [`DpopKey`] (ES256/Ed25519 from PEM, JWK or
//!   generated), bound to a credential with
//!   [`OAuthCredentialBuilder::dpop_key`] and to the middleware with
//!   [`TokenMiddleware::dpop`] / [`AddTokenLayer::dpop`]: a fresh proof per
//!   request, server nonces learned and retried once (the tower layer when
//!   its [`CloneBody`] policy has the body again); see the README.
//! - [`TokenMiddleware`] for `reqwest-middleware`, and [`AddTokenLayer`] /
//!   [`AddToken`] for tower (hyper, tonic): `Authorization: <type> <token>`
//!   from a [`TokenCache`](token_core::TokenCache), with a rejected token
//!   invalidated exactly once.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use token_core::{TokenCache, TokenRequest};
//! use token_http::{OAuthCredential, TokenMiddleware};
//!
//! let credential = OAuthCredential::client_credentials("https://idp.example/oauth/token", "orders-client")
//!     .client_secret("from-the-vault")
//!     .build()?;
//! let cache = TokenCache::builder(credential).build();
//! let request = TokenRequest::builder().scope("orders.read").build();
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(TokenMiddleware::new(&cache, &request))
//!     .build();
//! let orders = client.get("https://orders.example/v1/orders").send().await?;
//! # let _ = orders; Ok(()) }
//! ```
//!
//! # Secrets
//!
//! Client secrets, refresh tokens, subject tokens and key material are held
//! in wiped memory ([`token_core::Secret`], `Zeroizing`), print as `***`,
//! and never appear in errors or logs; `Authorization` headers are marked
//! sensitive. Two copies are outside our control: the request body handed
//! to reqwest (its buffer is not wiped) and `ring`'s parsed signing key,
//! which lives only for the duration of one signature.
//!
//! # Timeouts
//!
//! [`DEFAULT_CONNECT_TIMEOUT`] (5 s) and [`DEFAULT_REQUEST_TIMEOUT`] (8 s,
//! under the cache's own 10 s fetch timeout), both configurable on the
//! builder. Timeouts, connection failures, 5xx and 429 are transient
//! errors; the cache retries them with backoff, honouring `Retry-After`.

// The README's examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
mod assertion;
mod auth;
mod certificate;
mod chain;
pub mod challenge;
mod client_auth;
mod credential;
mod discovery;
mod dpop;
pub mod env;
mod error;
mod exchange;
mod exchange_layer;
mod file_auth;
mod grant;
mod header;
mod jwt;
mod managed;
mod middleware;
mod pem;
mod refresh_store;
mod response;
mod transport;
mod watched;

pub use assertion::{AssertionFile, AssertionFn, AssertionSource, MAX_ASSERTION_BYTES};
pub use auth::{
    AddToken, AddTokenLayer, BoxError, CloneBodies, CloneBody, EmptyBodies, NeverResend,
};
pub use certificate::{Certificate, ClientCertificate};
pub use chain::{ChainCredential, ChainCredentialBuilder, CREDENTIAL_SELECTOR_VAR};
pub use client_auth::{ClientAuth, JWT_BEARER_ASSERTION_TYPE};
pub use credential::{OAuthCredential, OAuthCredentialBuilder, DEFAULT_SKEW_WARNING};
pub use discovery::ServerMetadata;
pub use dpop::{
    ath, DpopAlgorithm, DpopKey, DpopRequestError, DpopRole, MAX_DPOP_KEY_FILE_BYTES,
    MAX_NONCE_ORIGINS,
};
pub use error::ConfigError;
pub use exchange::{
    inspect_subject, ExchangeCache, ExchangeCacheBuilder, ExchangeError, ExchangeStats,
    SubjectClaims, SubjectKey, SubjectProblem, DEFAULT_EXCHANGE_RATE, DEFAULT_MAX_NEGATIVE,
    DEFAULT_MAX_SUBJECTS, DEFAULT_NEGATIVE_TTL, DEFAULT_SUBJECT_IDLE, MAX_SUBJECT_BYTES,
};
pub use exchange_layer::{bearer_of, Exchange, ExchangeLayer};
pub use file_auth::PrivateKeyFile;
pub use grant::{Grant, ACCESS_TOKEN_TYPE, JWT_BEARER_GRANT, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
pub use jwt::{PrivateKey, SigningAlgorithm, DEFAULT_ASSERTION_LIFETIME};
pub use managed::{
    AppServiceCredential, AppServiceCredentialBuilder, AzureImdsCredential,
    AzureImdsCredentialBuilder, GcpMetadataCredential, GcpMetadataCredentialBuilder,
    ManagedIdentityId, RetryRules, APP_SERVICE_API_VERSION, DEFAULT_METADATA_CONNECT_TIMEOUT,
    DEFAULT_METADATA_REQUEST_TIMEOUT, GCP_METADATA_HOST, IMDS_API_VERSION, IMDS_ENDPOINT,
};
pub use middleware::TokenMiddleware;
pub use refresh_store::{
    StoredRefreshToken, DEFAULT_REFRESH_LEASE_TTL, DEFAULT_REFRESH_LEASE_WAIT,
    DEFAULT_REFRESH_TOKEN_RETENTION,
};
pub use response::{parse_token_response, ClockSkew, ExpiresIn, TokenResponse, MAX_BODY_BYTES};
pub use transport::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
pub use watched::MAX_SECRET_FILE_BYTES;

/// The HTTP client this crate speaks through (`OAuthCredentialBuilder::http_client`
/// takes a [`reqwest::Client`]), re-exported so that callers build clients
/// with the same version.
#[doc(no_inline)]
pub use reqwest;
/// The middleware stack [`TokenMiddleware`] plugs into
/// (`reqwest_middleware::ClientBuilder::with`), re-exported so that callers
/// name the same version.
#[doc(no_inline)]
pub use reqwest_middleware;
