//! What a caller asks for, and the key it is cached under.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// On whose behalf a token is requested (token exchange, RFC 8693).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Actor {
    /// A non-secret identifier of the subject (a user id, a service name).
    /// It appears as-is in the cache key.
    Subject(String),
    /// A subject token or assertion (a JWT): a secret. Only its SHA-256
    /// digest appears in the cache key.
    Assertion(Secret),
    /// A caller's token to exchange per caller (the gateway's `exchange`
    /// mode, `token_http::ExchangeCache`): the subject token, the grant it
    /// goes through, and a *keyed* digest of it made by the caller. Only
    /// the digest and the grant appear in the cache key. Any credential
    /// with client authentication may honour it (token-http's
    /// `OAuthCredential` sends [`ExchangeSubject::grant`] instead of its own
    /// grant), and caps the token's expiry at [`ExchangeSubject::not_after`].
    Exchange(ExchangeSubject),
}

impl Actor {
    /// The secret subject token or assertion, if this actor carries one.
    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Self::Subject(_) => None,
            Self::Assertion(s) => Some(s),
            Self::Exchange(x) => Some(&x.token),
        }
    }
}

/// How a subject token is exchanged ([`Actor::Exchange`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeGrant {
    /// RFC 8693 token exchange: `subject_token` with this
    /// `subject_token_type` (`urn:ietf:params:oauth:token-type:access_token`
    /// or `...:jwt`).
    TokenExchange {
        /// The `subject_token_type` sent.
        subject_token_type: String,
    },
    /// The JWT bearer on-behalf-of flow (Microsoft Entra):
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
    /// `assertion=<subject>`, `requested_token_use=on_behalf_of`.
    JwtBearerOnBehalfOf,
}

impl ExchangeGrant {
    /// The short, stable name used in cache keys and logs.
    pub fn name(&self) -> &str {
        match self {
            Self::TokenExchange { subject_token_type } => subject_token_type
                .rsplit(':')
                .next()
                .unwrap_or(subject_token_type),
            Self::JwtBearerOnBehalfOf => "obo",
        }
    }
}

/// A subject token to exchange, with the keyed digest that stands for it in
/// cache keys. Built by the caller, who owns the digest key (see
/// `token_http::ExchangeCache`); the subject token itself never reaches a
/// key, a store, `Debug` or a log.
#[derive(Clone)]
pub struct ExchangeSubject {
    token: Secret,
    digest: String,
    grant: ExchangeGrant,
    not_after: Option<std::time::SystemTime>,
}

impl ExchangeSubject {
    /// `token` exchanged through `grant`; `digest` is a keyed digest of it
    /// (for example HMAC-SHA256 under a fleet-wide key, hex): the same
    /// subject must give the same digest in every process sharing a store,
    /// and nobody without the key may compute it.
    pub fn new(token: Secret, digest: impl Into<String>, grant: ExchangeGrant) -> Self {
        Self {
            token,
            digest: digest.into(),
            grant,
            not_after: None,
        }
    }

    /// The exchanged token is never used past this time (the subject
    /// token's own `exp`, when it is a JWT).
    pub fn with_not_after(mut self, at: std::time::SystemTime) -> Self {
        self.not_after = Some(at);
        self
    }

    /// The subject token.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// The keyed digest that stands for the subject token.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The grant the subject token is exchanged through.
    pub fn grant(&self) -> &ExchangeGrant {
        &self.grant
    }

    /// The latest expiry of an exchanged token, if bounded.
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        self.not_after
    }
}

impl PartialEq for ExchangeSubject {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.grant == other.grant
    }
}

impl Eq for ExchangeSubject {}

impl fmt::Debug for ExchangeSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeSubject")
            .field("token", &"***")
            .field("digest", &self.digest)
            .field("grant", &self.grant)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subject(s) => f.debug_tuple("Subject").field(s).finish(),
            Self::Assertion(_) => f.write_str("Assertion(***)"),
            Self::Exchange(x) => f.debug_tuple("Exchange").field(x).finish(),
        }
    }
}

/// What is asked of the IdP: scopes and the optional parameters that change
/// which token it issues.
///
/// Scopes are a set: order and duplicates do not matter, so
/// `["b", "a", "a"]` and `["a", "b"]` are the same request. Every field the
/// IdP would see takes part in equality and in the [`CacheKey`], so two
/// requests that differ in anything never share a token or a fetch.
///
/// A request is immutable and cheap to clone (one reference count). Its
/// canonical form and hash are computed once, when it is built, which is what
/// lets the engine look a request up without allocating.
///
/// ```
/// use token_core::TokenRequest;
///
/// let a = TokenRequest::builder().scope("read").scope("write").build();
/// let b = TokenRequest::builder().scopes(["write", "read", "read"]).build();
/// assert_eq!(a, b);
/// ```
#[derive(Clone)]
pub struct TokenRequest {
    inner: Arc<RequestInner>,
}

struct RequestInner {
    scopes: Vec<String>,
    tenant: Option<String>,
    audience: Option<String>,
    resources: Vec<String>,
    actor: Option<Actor>,
    dpop_thumbprint: Option<String>,
    params: BTreeMap<String, ParamValue>,
    canonical: String,
    hash: u64,
}

/// An extra form parameter's value.
#[derive(Clone)]
#[non_exhaustive]
pub enum ParamValue {
    /// Shown as-is in the cache key.
    Plain(String),
    /// A secret: only its SHA-256 digest is in the cache key.
    Secret(Secret),
}

impl ParamValue {
    /// The value to send to the IdP.
    pub fn expose(&self) -> &str {
        match self {
            Self::Plain(s) => s,
            Self::Secret(s) => s.expose(),
        }
    }
}

impl fmt::Debug for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(s) => fmt::Debug::fmt(s, f),
            Self::Secret(_) => f.write_str("***"),
        }
    }
}

impl TokenRequest {
    /// A request with no scopes and no parameters (the IdP's default scope).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts building a request.
    pub fn builder() -> TokenRequestBuilder {
        TokenRequestBuilder::default()
    }

    /// Scopes, sorted and without duplicates.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// Scopes joined by spaces, the form RFC 6749 §3.3 sends.
    pub fn scope_string(&self) -> String {
        self.inner.scopes.join(" ")
    }

    /// The tenant, for multi-tenant IdPs.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The `audience` parameter.
    pub fn audience(&self) -> Option<&str> {
        self.inner.audience.as_deref()
    }

    /// The `resource` indicators (RFC 8707), sorted.
    pub fn resources(&self) -> &[String] {
        &self.inner.resources
    }

    /// The actor for on-behalf-of requests.
    pub fn actor(&self) -> Option<&Actor> {
        self.inner.actor.as_ref()
    }

    /// The DPoP proof-key thumbprint (RFC 9449 `jkt`) the token is bound to.
    pub fn dpop_thumbprint(&self) -> Option<&str> {
        self.inner.dpop_thumbprint.as_deref()
    }

    /// Extra form parameters, by name.
    pub fn params(&self) -> &BTreeMap<String, ParamValue> {
        &self.inner.params
    }

    /// The canonical, secret-free text of this request: identical in every
    /// process for equal requests. Part of the [`CacheKey`].
    pub fn canonical(&self) -> &str {
        &self.inner.canonical
    }

    /// A builder holding everything this request holds, to derive another
    /// request from it (another scope set or audience for the same client).
    ///
    /// ```
    /// use token_core::TokenRequest;
    ///
    /// let base = TokenRequest::builder().scope("read").tenant("t").build();
    /// let other = base.to_builder().clear_scopes().scope("write").build();
    /// assert_eq!(other.scopes(), ["write"]);
    /// assert_eq!(other.tenant(), Some("t"));
    /// ```
    pub fn to_builder(&self) -> TokenRequestBuilder {
        let i = &self.inner;
        TokenRequestBuilder {
            scopes: i.scopes.clone(),
            tenant: i.tenant.clone(),
            audience: i.audience.clone(),
            resources: i.resources.clone(),
            actor: i.actor.clone(),
            dpop_thumbprint: i.dpop_thumbprint.clone(),
            params: i.params.clone(),
        }
    }
}

impl Default for TokenRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for TokenRequest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.hash == other.inner.hash
                && self.inner.canonical == other.inner.canonical)
    }
}

impl Eq for TokenRequest {}

impl Hash for TokenRequest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.inner.hash);
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The canonical form is secret-free by construction.
        f.debug_tuple("TokenRequest")
            .field(&self.inner.canonical)
            .finish()
    }
}

/// Builds a [`TokenRequest`].
#[derive(Default, Clone)]
pub struct TokenRequestBuilder {
    scopes: Vec<String>,
    tenant: Option<String>,
    audience: Option<String>,
    resources: Vec<String>,
    actor: Option<Actor>,
    dpop_thumbprint: Option<String>,
    params: BTreeMap<String, ParamValue>,
}

impl fmt::Debug for TokenRequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequestBuilder")
            .field("scopes", &self.scopes)
            .field("actor", &self.actor)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl TokenRequestBuilder {
    /// Adds one scope. A value with spaces is split into several scopes.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        self.scopes
            .extend(scope.as_ref().split_ascii_whitespace().map(str::to_owned));
        self
    }

    /// Adds several scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for s in scopes {
            self = self.scope(s);
        }
        self
    }

    /// Removes every scope added so far.
    pub fn clear_scopes(mut self) -> Self {
        self.scopes.clear();
        self
    }

    /// Removes every `resource` indicator added so far.
    pub fn clear_resources(mut self) -> Self {
        self.resources.clear();
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the `audience` parameter.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Adds a `resource` indicator (RFC 8707).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Sets the actor for on-behalf-of requests.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Binds the token to a DPoP key by its JWK thumbprint.
    pub fn dpop_thumbprint(mut self, jkt: impl Into<String>) -> Self {
        self.dpop_thumbprint = Some(jkt.into());
        self
    }

    /// Adds an extra, non-secret form parameter (it appears in the cache key).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params
            .insert(name.into(), ParamValue::Plain(value.into()));
        self
    }

    /// Adds an extra secret form parameter (only its digest is in the key).
    pub fn secret_param(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.params
            .insert(name.into(), ParamValue::Secret(value.into()));
        self
    }

    /// Finishes the request: canonicalises scopes and resources and computes
    /// the canonical text and hash once.
    pub fn build(mut self) -> TokenRequest {
        self.scopes.sort_unstable();
        self.scopes.dedup();
        self.resources.sort_unstable();
        self.resources.dedup();

        let mut c = String::new();
        field(&mut c, "scope", self.scopes.iter().map(String::as_str));
        field(&mut c, "tenant", self.tenant.as_deref());
        field(&mut c, "aud", self.audience.as_deref());
        field(&mut c, "res", self.resources.iter().map(String::as_str));
        match &self.actor {
            Some(Actor::Subject(s)) => field(&mut c, "act", Some(s.as_str())),
            Some(Actor::Assertion(s)) => field(&mut c, "act#", Some(digest(s.expose()).as_str())),
            Some(Actor::Exchange(x)) => {
                field(&mut c, "actx", [x.grant.name(), x.digest.as_str()]);
            }
            None => {}
        }
        field(&mut c, "jkt", self.dpop_thumbprint.as_deref());
        for (name, value) in &self.params {
            match value {
                ParamValue::Plain(v) => {
                    c.push_str("p.");
                    escape_into(&mut c, name);
                    field(&mut c, "", Some(v.as_str()));
                }
                ParamValue::Secret(v) => {
                    c.push_str("p#");
                    escape_into(&mut c, name);
                    field(&mut c, "", Some(digest(v.expose()).as_str()));
                }
            }
        }
        let hash = stable_hash(c.as_bytes());
        TokenRequest {
            inner: Arc::new(RequestInner {
                scopes: self.scopes,
                tenant: self.tenant,
                audience: self.audience,
                resources: self.resources,
                actor: self.actor,
                dpop_thumbprint: self.dpop_thumbprint,
                params: self.params,
                canonical: c,
                hash,
            }),
        }
    }
}

/// Appends `name=v1 v2;` unless there are no values.
fn field<'a>(out: &mut String, name: &str, values: impl IntoIterator<Item = &'a str>) {
    let mut values = values.into_iter().peekable();
    if values.peek().is_none() {
        return;
    }
    out.push_str(name);
    out.push('=');
    let mut first = true;
    for v in values {
        if !first {
            out.push(' ');
        }
        first = false;
        escape_into(out, v);
    }
    out.push(';');
}

/// Percent-escapes the characters that delimit the canonical form, `%`
/// itself and control characters, so that no two different requests can
/// produce the same text.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '%' | ';' | '=' | ' ' | '|' | '#' => {
                let _ = write!(out, "%{:02X}", ch as u32);
            }
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

fn digest(value: &str) -> String {
    let sum = Sha256::digest(value.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in sum {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// FNV-1a then a final mix: stable across processes and builds, which the
/// in-process map does not need but tests and tools can rely on.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    crate::rng::mix64(h)
}

/// The text a token is stored under: derived from the credential's
/// identity and the whole canonical request, identical in every process, and
/// never containing a secret.
///
/// Stores treat it as an opaque string; they may prefix or hash it, but two
/// different keys must never address the same entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// Current version of the key layout. Bumping it moves every token to a
    /// new key instead of misreading old ones.
    pub const VERSION: &'static str = "tc1";

    /// The key for `request` made through the credential with identity
    /// `credential_id`.
    pub fn new(credential_id: &str, request: &TokenRequest) -> Self {
        let mut s = String::with_capacity(8 + credential_id.len() + request.canonical().len());
        s.push_str(Self::VERSION);
        s.push('|');
        escape_into(&mut s, credential_id);
        s.push('|');
        s.push_str(request.canonical());
        Self(s.into())
    }

    /// A key from raw text, for stores and tools that list keys, and for
    /// tests. The text must not contain secrets.
    pub fn from_raw(raw: impl Into<String>) -> Self {
        Self(raw.into().into())
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_order_and_duplicates_do_not_matter() {
        let a = TokenRequest::builder().scopes(["b", "a", "a"]).build();
        let b = TokenRequest::builder().scope("a b").build();
        assert_eq!(a, b);
        assert_eq!(CacheKey::new("c", &a), CacheKey::new("c", &b));
    }

    #[test]
    fn every_field_separates_keys() {
        let base = || TokenRequest::builder().scope("s");
        let variants = [
            base().build(),
            base().tenant("t").build(),
            base().audience("t").build(),
            base().resource("t").build(),
            base().actor(Actor::Subject("t".into())).build(),
            base().actor(Actor::Assertion("t".into())).build(),
            base()
                .actor(Actor::Exchange(ExchangeSubject::new(
                    "t".into(),
                    "d",
                    ExchangeGrant::JwtBearerOnBehalfOf,
                )))
                .build(),
            base()
                .actor(Actor::Exchange(ExchangeSubject::new(
                    "t".into(),
                    "d",
                    ExchangeGrant::TokenExchange {
                        subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                    },
                )))
                .build(),
            base().dpop_thumbprint("t").build(),
            base().param("t", "t").build(),
            base().secret_param("t", "t").build(),
            base().scope("t").build(),
            TokenRequest::builder().scope("s;tenant=t").build(),
            TokenRequest::builder()
                .scope("s")
                .scope("tenant=t;")
                .build(),
        ];
        let keys: std::collections::HashSet<_> =
            variants.iter().map(|r| CacheKey::new("cred", r)).collect();
        assert_eq!(keys.len(), variants.len(), "{keys:?}");
        assert_ne!(
            CacheKey::new("a|b", &variants[0]),
            CacheKey::new("a", &variants[0])
        );
    }

    #[test]
    fn an_exchange_subject_is_keyed_by_its_digest_only() {
        let x = |token: &str, digest: &str| {
            TokenRequest::builder()
                .actor(Actor::Exchange(ExchangeSubject::new(
                    token.into(),
                    digest,
                    ExchangeGrant::JwtBearerOnBehalfOf,
                )))
                .build()
        };
        let key = CacheKey::new("cred", &x("subject-secret-1", "abc"));
        assert!(!key.as_str().contains("subject-secret"), "{key}");
        assert!(key.as_str().contains("abc"), "{key}");
        assert_ne!(key, CacheKey::new("cred", &x("subject-secret-1", "abd")));
        let dbg = format!("{:?}", x("subject-secret-1", "abc").actor());
        assert!(!dbg.contains("subject-secret"), "{dbg}");
    }

    #[test]
    fn secrets_never_reach_the_key_or_debug() {
        let r = TokenRequest::builder()
            .actor(Actor::Assertion("eyJ-user-assertion".into()))
            .secret_param("client_assertion", "very-secret-value")
            .build();
        let key = CacheKey::new("cred", &r);
        for text in [
            key.to_string(),
            format!("{r:?}"),
            format!("{:?}", r.actor()),
        ] {
            assert!(!text.contains("eyJ-user-assertion"), "{text}");
            assert!(!text.contains("very-secret-value"), "{text}");
        }
    }
}
