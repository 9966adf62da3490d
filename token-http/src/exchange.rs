//! [`ExchangeCache`]: a token per caller, exchanged from the caller's own
//! token (RFC 8693 token exchange, or the JWT bearer on-behalf-of flow that
//! Microsoft Entra uses) and cached per caller, for one process or a fleet.
//!
//! - **Key:** an HMAC-SHA256 of the subject token under a [`SubjectKey`]
//!   (random per process, or given so a fleet sharing a store shares
//!   exchanged tokens), plus the whole request. The subject token itself is
//!   never in a key, a store, a log, an error or `Debug`; it stays in
//!   process memory (zeroized on drop) for the refreshes of its key.
//! - **Never past the subject:** when the subject token is a JWT, its `exp`
//!   bounds the exchanged token's expiry (the claims are read without
//!   checking the signature: the IdP validates the token; reading them only
//!   ever shortens a lifetime or refuses). An expired or malformed subject
//!   token is refused before any IdP call.
//! - **Bounded:** the per-caller keys live in their own
//!   [`TokenCache`] (`max_subjects`, idle eviction); subjects the IdP
//!   rejected are refused locally for [`DEFAULT_NEGATIVE_TTL`] (a bounded
//!   negative cache); exchanges that may call the IdP pass a token bucket
//!   ([`ExchangeCacheBuilder::rate_per_second`]), so a storm of garbage
//!   tokens costs bounded IdP calls.
//! - **Fleet:** with a shared store and a shared [`SubjectKey`], every
//!   instance computes the same key, so the store's lease makes one
//!   exchange per subject per refresh for the whole fleet; an encrypted
//!   store keeps the exchanged tokens encrypted at rest.
//! - **Audit:** one `tracing` event (target `token_http::exchange`) per
//!   exchange that was not a plain hit: the subject's short digest, its
//!   `sub`/`azp` claims when it is a JWT, audience, scopes, expiry and
//!   outcome, never token material. Counters in [`ExchangeStats`].
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use async_trait::async_trait;
//! use token_core::{AccessToken, Actor, Credential, CredentialError, TokenCache, TokenRequest};
//! use token_http::{ExchangeCache, SubjectKey};
//!
//! # #[derive(Debug)] struct Idp;
//! # #[async_trait] impl Credential for Idp {
//! #     fn id(&self) -> &str { "idp" }
//! #     async fn fetch(&self, r: &TokenRequest, _: Option<&AccessToken>) -> Result<AccessToken, CredentialError> {
//! #         assert!(matches!(r.actor(), Some(Actor::Exchange(_))));
//! #         Ok(AccessToken::new("downstream", SystemTime::now()).with_expires_in(Duration::from_secs(3600)))
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exchange = ExchangeCache::builder(TokenCache::builder(Idp))
//!     .max_subjects(100_000)
//!     .build_with_key(SubjectKey::random()?);
//! let downstream = TokenRequest::builder().audience("https://orders.internal").build();
//!
//! // The caller's incoming bearer token (opaque here; a JWT's `exp` would bound the result).
//! let token = exchange.exchange("incoming-user-token", &downstream).await?;
//! assert_eq!(token.secret().expose(), "downstream");
//! assert!(exchange.exchange("", &downstream).await.is_err()); // refused, no IdP call
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::grant::ACCESS_TOKEN_TYPE;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use token_core::{
    AccessToken, Actor, Error, ExchangeGrant, ExchangeSubject, ParamValue, Secret, Token,
    TokenCache, TokenCacheBuilder, TokenRequest,
};

/// How many callers' keys an [`ExchangeCache`] holds at most by default:
/// 100,000 keys are ~40 MB of engine memory plus tokens, a busy gateway's
/// signed-in users within the idle window.
pub const DEFAULT_MAX_SUBJECTS: usize = 100_000;
/// How long a caller's key stays after its last request once its token is
/// no longer usable: a signed-in user comes back within minutes.
pub const DEFAULT_SUBJECT_IDLE: Duration = Duration::from_secs(600);
/// How long a subject token the IdP rejected is refused without asking
/// again: long enough to absorb a client retrying in a loop, short enough
/// that a fixed clock skew or a freshly provisioned user recovers soon.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How many rejected subjects are remembered at most (then the oldest
/// expired ones, else arbitrary ones, make room): ~100 bytes each.
pub const DEFAULT_MAX_NEGATIVE: usize = 10_000;
/// Exchanges per second that may call the IdP, by default (the bucket's
/// burst is the same number): far above a login rate, far below what a
/// garbage-token storm would cost the IdP.
pub const DEFAULT_EXCHANGE_RATE: u32 = 50;
/// The longest subject token accepted (larger is refused as malformed).
pub const MAX_SUBJECT_BYTES: usize = 16 * 1024;

/// The key of the keyed digest ([HMAC-SHA256]) that stands for a subject
/// token in cache keys. Processes that share a store must share it to share
/// exchanged tokens; nobody without it can tell from a key whose token it is.
///
/// [HMAC-SHA256]: https://www.rfc-editor.org/rfc/rfc2104
#[derive(Clone)]
pub struct SubjectKey(hmac::Key);

impl SubjectKey {
    /// A random key for this process only (exchanged tokens are then not
    /// shared with other processes). Fails only without an operating-system
    /// random source (a sandbox without `getrandom` or `/dev/urandom`).
    pub fn random() -> Result<Self, crate::ConfigError> {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map(Self)
            .map_err(|_| {
                crate::ConfigError::Invalid(
                    "no operating-system random source to make a subject key; \
                     give one with ExchangeCacheBuilder::subject_key"
                        .to_owned(),
                )
            })
    }

    /// A key from shared key material (at least 32 bytes, for example a
    /// fleet-wide secret file), so that every process computes the same
    /// digests.
    pub fn from_bytes(material: &[u8]) -> Result<Self, crate::ConfigError> {
        if material.len() < 32 {
            return Err(crate::ConfigError::Invalid(format!(
                "the subject key must be at least 32 bytes of key material; got {}",
                material.len()
            )));
        }
        // Domain-separated, so the same material used elsewhere (a store's
        // encryption key) gives an unrelated key here.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, material),
            b"token-cache exchange subject digest v1",
        );
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())))
    }

    /// The hex digest of `subject`.
    pub fn digest(&self, subject: &str) -> String {
        let tag = hmac::sign(&self.0, subject.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in tag.as_ref() {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(***)")
    }
}

/// Why a subject token was refused before any IdP call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectProblem {
    /// No token (empty).
    Missing,
    /// Not a token: too long, characters a token cannot have, or a JWT whose
    /// parts or claims do not decode (or not a JWT where one is needed).
    Malformed,
    /// A JWT whose `exp` has passed.
    Expired,
}

impl fmt::Display for SubjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no subject token",
            Self::Malformed => "the subject token is malformed",
            Self::Expired => "the subject token has expired",
        })
    }
}

/// The claims of a JWT subject token that the audit log and the expiry bound
/// use (read without signature check). No token material.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectClaims {
    /// `sub`.
    pub sub: Option<String>,
    /// `azp` (or `client_id`, as some IdPs name it).
    pub azp: Option<String>,
    /// `exp`.
    pub exp: Option<SystemTime>,
}

/// Reads `subject`: `Ok(None)` for an opaque token, `Ok(Some(claims))` for a
/// JWT, or why it is refused. `now` decides expiry.
pub fn inspect_subject(
    subject: &str,
    now: SystemTime,
) -> Result<Option<SubjectClaims>, SubjectProblem> {
    if subject.is_empty() {
        return Err(SubjectProblem::Missing);
    }
    // RFC 6750 b64token characters, plus what opaque tokens use in practice.
    if subject.len() > MAX_SUBJECT_BYTES
        || !subject.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(SubjectProblem::Malformed);
    }
    let mut parts = subject.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let json = |part: &str| -> Result<serde_json::Map<String, serde_json::Value>, SubjectProblem> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| SubjectProblem::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(SubjectProblem::Malformed),
        }
    };
    json(header)?;
    let claims = json(payload)?;
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let exp = match claims.get("exp") {
        None => None,
        Some(v) => {
            let secs = v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or(SubjectProblem::Malformed)?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            if at <= now {
                return Err(SubjectProblem::Expired);
            }
            Some(at)
        }
    };
    Ok(Some(SubjectClaims {
        sub: text("sub"),
        azp: text("azp").or_else(|| text("client_id")),
        exp,
    }))
}

/// Caps a fetched token's expiry at the request's subject's `not_after`
/// (called by [`OAuthCredential`](crate::OAuthCredential) for every token).
pub(crate) fn cap_expiry(request: &TokenRequest, token: AccessToken) -> AccessToken {
    match request.actor() {
        Some(Actor::Exchange(x)) => match x.not_after() {
            Some(bound) if token.expires_at().is_none_or(|e| e > bound) => {
                token.with_expires_at(bound)
            }
            _ => token,
        },
        _ => token,
    }
}

/// Why [`ExchangeCache::exchange`] gave no token. No variant holds token
/// material.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The subject token was refused before any IdP call (a gateway answers
    /// `401` with `WWW-Authenticate: Bearer error="invalid_token"`).
    #[error("{0}; no exchange was attempted")]
    InvalidSubject(SubjectProblem),
    /// The IdP rejected the subject token (now or within the negative
    /// cache's time): `401 invalid_token` at a gateway.
    #[error("the identity provider rejected the subject token{}", if *.cached { " (remembered; not asked again)" } else { "" })]
    Rejected {
        /// Refused from the negative cache, without an IdP call.
        cached: bool,
        /// The IdP's error, when it was asked now.
        source: Option<Error>,
    },
    /// Too many exchanges that may call the IdP: try again after this long
    /// (`429` with `Retry-After` at a gateway).
    #[error("too many token exchanges; try again in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// The exchange failed for another reason (IdP down, configuration):
    /// the engine's error as it is.
    #[error(transparent)]
    Unavailable(Error),
}

/// Counters of an [`ExchangeCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeStats {
    /// Answered from this process's cache without waiting.
    pub hits: u64,
    /// Answered after a (possible) exchange: an IdP call, or a token another
    /// instance put in the shared store.
    pub exchanged: u64,
    /// Refused before any IdP call (missing, malformed, expired).
    pub invalid_subject: u64,
    /// The IdP rejected the subject now.
    pub rejected: u64,
    /// Refused from the negative cache.
    pub negative_hits: u64,
    /// Refused by the rate limit.
    pub rate_limited: u64,
    /// Other failures.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    exchanged: AtomicU64,
    invalid_subject: AtomicU64,
    rejected: AtomicU64,
    negative_hits: AtomicU64,
    rate_limited: AtomicU64,
    failed: AtomicU64,
}

/// Subjects the IdP rejected, by digest, until a deadline. Bounded.
struct Negative {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Instant>>,
}

impl Negative {
    fn contains(&self, digest: &str, now: Instant) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(digest) {
            Some(until) if *until > now => true,
            Some(_) => {
                map.remove(digest);
                false
            }
            None => false,
        }
    }

    fn insert(&self, digest: String, now: Instant) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            map.retain(|_, until| *until > now);
            while map.len() >= self.max {
                let Some(k) = map.keys().next().cloned() else {
                    break;
                };
                map.remove(&k);
            }
        }
        map.insert(digest, now + self.ttl);
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` held.
struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            state: Mutex::new((f64::from(rate), Instant::now())),
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

struct Inner {
    cache: TokenCache,
    key: SubjectKey,
    grant: ExchangeGrant,
    negative: Negative,
    bucket: Option<Bucket>,
    counters: Counters,
}

/// A token per caller, exchanged from the caller's token and cached per
/// caller: see the crate README, "Per-caller token exchange". Cheap to clone (one `Arc`).
///
/// # Concurrent calls
///
/// Calls for the same subject and request share one exchange (the engine's
/// single-flight, and with a shared store its lease across processes);
/// calls for different subjects never share a token or a fetch.
#[derive(Clone)]
pub struct ExchangeCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for ExchangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeCache")
            .field("cache", &self.inner.cache)
            .field("grant", &self.inner.grant)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ExchangeCache`].
#[derive(Debug)]
pub struct ExchangeCacheBuilder {
    cache: TokenCacheBuilder,
    key: Option<SubjectKey>,
    grant: ExchangeGrant,
    max_subjects: usize,
    idle: Duration,
    negative_ttl: Duration,
    max_negative: usize,
    rate: Option<u32>,
}

impl ExchangeCacheBuilder {
    /// The digest key. Defaults to [`SubjectKey::random`] (this process
    /// only).
    pub fn subject_key(mut self, key: SubjectKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The grant subject tokens go through. Defaults to RFC 8693 with
    /// `subject_token_type` access token.
    pub fn grant(mut self, grant: ExchangeGrant) -> Self {
        self.grant = grant;
        self
    }

    /// Callers' keys held at most. Defaults to [`DEFAULT_MAX_SUBJECTS`].
    pub fn max_subjects(mut self, n: usize) -> Self {
        self.max_subjects = n;
        self
    }

    /// How long an unused caller's key with an unusable token stays.
    /// Defaults to [`DEFAULT_SUBJECT_IDLE`].
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How long a rejected subject is refused locally (zero: never).
    /// Defaults to [`DEFAULT_NEGATIVE_TTL`].
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Rejected subjects remembered at most. Defaults to
    /// [`DEFAULT_MAX_NEGATIVE`].
    pub fn max_negative(mut self, n: usize) -> Self {
        self.max_negative = n;
        self
    }

    /// Exchanges per second (and burst) that may call the IdP; `0` turns
    /// the limit off. Defaults to [`DEFAULT_EXCHANGE_RATE`].
    pub fn rate_per_second(mut self, rate: u32) -> Self {
        self.rate = (rate > 0).then_some(rate);
        self
    }

    /// Builds the cache, with the key given to
    /// [`subject_key`](Self::subject_key) or else a [`SubjectKey::random`]
    /// one: fails only when none was given and none can be made.
    pub fn build(mut self) -> Result<ExchangeCache, crate::ConfigError> {
        let key = match self.key.take() {
            Some(key) => key,
            None => SubjectKey::random()?,
        };
        Ok(self.build_with_key(key))
    }

    /// Builds the cache with `key` (which replaces any given to
    /// [`subject_key`](Self::subject_key)); cannot fail.
    pub fn build_with_key(self, key: SubjectKey) -> ExchangeCache {
        ExchangeCache {
            inner: Arc::new(Inner {
                cache: self
                    .cache
                    .max_keys(self.max_subjects.max(1))
                    .idle_window(self.idle)
                    .build(),
                key,
                grant: self.grant,
                negative: Negative {
                    ttl: self.negative_ttl,
                    max: self.max_negative,
                    map: Mutex::new(HashMap::new()),
                },
                bucket: self.rate.map(Bucket::new),
                counters: Counters::default(),
            }),
        }
    }
}

/// The OAuth error codes that say the subject token itself was refused.
fn rejects_subject(e: &Error) -> bool {
    match e {
        Error::Credential(c) => {
            !c.is_transient()
                && matches!(
                    c.code(),
                    Some("invalid_grant" | "invalid_request" | "invalid_token" | "access_denied")
                )
        }
        _ => false,
    }
}

impl ExchangeCache {
    /// Starts building around a cache builder whose credential exchanges
    /// (token-http's [`OAuthCredential`](crate::OAuthCredential) with client
    /// authentication does; [`TokenCache::derive`] makes one from a
    /// profile's cache). `max_keys` and `idle_window` are set from
    /// [`max_subjects`](ExchangeCacheBuilder::max_subjects) and
    /// [`idle`](ExchangeCacheBuilder::idle).
    pub fn builder(cache: TokenCacheBuilder) -> ExchangeCacheBuilder {
        ExchangeCacheBuilder {
            cache,
            key: None,
            grant: ExchangeGrant::TokenExchange {
                subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            },
            max_subjects: DEFAULT_MAX_SUBJECTS,
            idle: DEFAULT_SUBJECT_IDLE,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_negative: DEFAULT_MAX_NEGATIVE,
            rate: Some(DEFAULT_EXCHANGE_RATE),
        }
    }

    /// The cache of exchanged tokens (stats, keys).
    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> ExchangeStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExchangeStats {
            hits: l(&c.hits),
            exchanged: l(&c.exchanged),
            invalid_subject: l(&c.invalid_subject),
            rejected: l(&c.rejected),
            negative_hits: l(&c.negative_hits),
            rate_limited: l(&c.rate_limited),
            failed: l(&c.failed),
        }
    }

    /// `request` (scopes, audience, resources, tenant, parameters; any actor
    /// is replaced) on behalf of `subject`, and the subject's claims.
    fn subject_request(
        &self,
        subject: &str,
        request: &TokenRequest,
    ) -> Result<(TokenRequest, Option<SubjectClaims>, String), SubjectProblem> {
        let claims = inspect_subject(subject, SystemTime::now())?;
        let jwt_needed = match &self.inner.grant {
            ExchangeGrant::JwtBearerOnBehalfOf => true,
            ExchangeGrant::TokenExchange { subject_token_type } => {
                subject_token_type == crate::grant::JWT_TOKEN_TYPE
            }
            _ => false,
        };
        if jwt_needed && claims.is_none() {
            return Err(SubjectProblem::Malformed);
        }
        let digest = self.inner.key.digest(subject);
        let mut x = ExchangeSubject::new(
            Secret::from(subject),
            digest.clone(),
            self.inner.grant.clone(),
        );
        if let Some(exp) = claims.as_ref().and_then(|c| c.exp) {
            x = x.with_not_after(exp);
        }
        let mut b = TokenRequest::builder()
            .scopes(request.scopes())
            .actor(Actor::Exchange(x));
        if let Some(t) = request.tenant() {
            b = b.tenant(t);
        }
        if let Some(a) = request.audience() {
            b = b.audience(a);
        }
        for r in request.resources() {
            b = b.resource(r);
        }
        if let Some(j) = request.dpop_thumbprint() {
            b = b.dpop_thumbprint(j);
        }
        for (name, value) in request.params() {
            b = match value {
                ParamValue::Secret(s) => b.secret_param(name, s.clone()),
                other => b.param(name, other.expose()),
            };
        }
        Ok((b.build(), claims, digest))
    }

    /// A token for `request` on behalf of the caller whose token is
    /// `subject`: from the cache, or exchanged once (per process, and per
    /// fleet with a shared store and key). See the crate README, "Per-caller token exchange".
    pub async fn exchange(
        &self,
        subject: &str,
        request: &TokenRequest,
    ) -> Result<Token, ExchangeError> {
        let inner = &*self.inner;
        let c = &inner.counters;
        let (req, claims, digest) = match self.subject_request(subject, request) {
            Ok(x) => x,
            Err(problem) => {
                c.invalid_subject.fetch_add(1, Ordering::Relaxed);
                audit(None, None, request, None, outcome_of_problem(problem));
                return Err(ExchangeError::InvalidSubject(problem));
            }
        };
        if let Some(token) = inner.cache.peek(&req) {
            c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        let now = Instant::now();
        let claims = claims.as_ref();
        if inner.negative.contains(&digest, now) {
            c.negative_hits.fetch_add(1, Ordering::Relaxed);
            audit(Some(&digest), claims, request, None, "negative_cached");
            return Err(ExchangeError::Rejected {
                cached: true,
                source: None,
            });
        }
        if let Some(bucket) = &inner.bucket {
            if let Err(wait) = bucket.take(now) {
                c.rate_limited.fetch_add(1, Ordering::Relaxed);
                audit(Some(&digest), claims, request, None, "rate_limited");
                return Err(ExchangeError::RateLimited(wait));
            }
        }
        match inner.cache.get_token(&req).await {
            Ok(token) => {
                c.exchanged.fetch_add(1, Ordering::Relaxed);
                audit(
                    Some(&digest),
                    claims,
                    request,
                    token.expires_at(),
                    "exchanged",
                );
                Ok(token)
            }
            Err(e) if rejects_subject(&e) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                inner.negative.insert(digest.clone(), Instant::now());
                audit(Some(&digest), claims, request, None, "rejected");
                Err(ExchangeError::Rejected {
                    cached: false,
                    source: Some(e),
                })
            }
            // The IdP's token would outlive the subject by nothing: the
            // subject expires within the engine's skew.
            Err(Error::InvalidToken(_)) if claims.is_some_and(|c| c.exp.is_some()) => {
                c.invalid_subject.fetch_add(1, Ordering::Relaxed);
                audit(Some(&digest), claims, request, None, "expired");
                Err(ExchangeError::InvalidSubject(SubjectProblem::Expired))
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                audit(Some(&digest), claims, request, None, "failed");
                Err(ExchangeError::Unavailable(e))
            }
        }
    }

    /// After a resource answered `401 invalid_token` to `rejected`, drops it
    /// for this subject and request, within the engine's invalidate floor
    /// (see [`TokenCache::invalidate`]). Says whether anything was dropped.
    pub async fn invalidate(
        &self,
        subject: &str,
        request: &TokenRequest,
        rejected: &AccessToken,
    ) -> bool {
        match self.subject_request(subject, request) {
            Ok((req, _, _)) => self.inner.cache.invalidate(&req, rejected).await,
            Err(_) => false,
        }
    }
}

fn outcome_of_problem(p: SubjectProblem) -> &'static str {
    match p {
        SubjectProblem::Missing => "missing",
        SubjectProblem::Malformed => "malformed",
        SubjectProblem::Expired => "expired",
    }
}

/// The audit event of one exchange. Never token material: the subject is
/// named by the first 12 hex digits of its keyed digest.
fn audit(
    digest: Option<&str>,
    claims: Option<&SubjectClaims>,
    request: &TokenRequest,
    expires_at: Option<SystemTime>,
    outcome: &'static str,
) {
    let subject = digest.map(|d| &d[..d.len().min(12)]).unwrap_or("-");
    let expires_in = expires_at
        .and_then(|e| e.duration_since(SystemTime::now()).ok())
        .map(|d| d.as_secs());
    tracing::info!(
        target: "token_http::exchange",
        subject,
        sub = claims.and_then(|c| c.sub.as_deref()),
        azp = claims.and_then(|c| c.azp.as_deref()),
        audience = request.audience(),
        resource = ?request.resources(),
        scopes = %request.scope_string(),
        expires_in,
        outcome,
        "token exchange"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.as_bytes())
        )
    }

    #[test]
    fn subjects_are_read_without_trusting_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(inspect_subject("", now), Err(SubjectProblem::Missing));
        assert_eq!(inspect_subject("a b", now), Err(SubjectProblem::Malformed));
        assert_eq!(inspect_subject("opaque-token", now), Ok(None));
        assert_eq!(
            inspect_subject("a.b.c", now),
            Err(SubjectProblem::Malformed)
        );
        assert_eq!(
            inspect_subject(&jwt(r#"{"sub":"u","exp":999}"#), now),
            Err(SubjectProblem::Expired)
        );
        assert_eq!(
            inspect_subject(&jwt(r#"{"exp":"soon"}"#), now),
            Err(SubjectProblem::Malformed)
        );
        let c = inspect_subject(&jwt(r#"{"sub":"u","azp":"app","exp":2000}"#), now)
            .unwrap()
            .unwrap();
        assert_eq!(c.sub.as_deref(), Some("u"));
        assert_eq!(c.azp.as_deref(), Some("app"));
        assert_eq!(
            c.exp,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2000))
        );
        let long = "x".repeat(MAX_SUBJECT_BYTES + 1);
        assert_eq!(inspect_subject(&long, now), Err(SubjectProblem::Malformed));
    }

    #[test]
    fn digests_are_keyed() {
        let a = SubjectKey::from_bytes(&[1; 32]).unwrap();
        let b = SubjectKey::from_bytes(&[2; 32]).unwrap();
        assert_eq!(a.digest("s"), a.digest("s"));
        assert_ne!(a.digest("s"), b.digest("s"));
        assert_ne!(a.digest("s"), a.digest("t"));
        assert_eq!(a.digest("s").len(), 64);
        assert!(SubjectKey::from_bytes(&[1; 31]).is_err());
        assert_eq!(format!("{a:?}"), "SubjectKey(***)");
    }

    #[test]
    fn the_bucket_bounds_a_burst() {
        let b = Bucket::new(5);
        let now = Instant::now();
        let ok = (0..100).filter(|_| b.take(now).is_ok()).count();
        assert_eq!(ok, 5);
        assert!(b.take(now).unwrap_err() > Duration::ZERO);
        assert!(b.take(now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_negative_cache_is_bounded() {
        let n = Negative {
            ttl: Duration::from_secs(30),
            max: 3,
            map: Mutex::new(HashMap::new()),
        };
        let now = Instant::now();
        for i in 0..10 {
            n.insert(format!("d{i}"), now);
        }
        assert!(n.map.lock().unwrap().len() <= 3);
        assert!(n.contains("d9", now));
        assert!(!n.contains("d9", now + Duration::from_secs(31)));
    }

    #[test]
    fn bearer_values_are_parsed() {
        use crate::exchange_layer::bearer_of;
        assert_eq!(bearer_of(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(bearer_of(b"bearer  abc").as_deref(), Some("abc"));
        assert_eq!(bearer_of(b"Basic abc"), None);
        assert_eq!(bearer_of(b"Bearer "), None);
    }
}
