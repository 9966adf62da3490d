//! Per-caller token exchange at the gateway: routes with `mode =
//! "exchange"` and `POST /v1/token/exchange`.
//!
//! An `exchange` route takes the caller's `Authorization: Bearer <subject>`,
//! exchanges it with the route's profile's client authentication for the
//! route's `audience`/`resource`/`scopes` (token-http's
//! [`ExchangeCache`](token_http::ExchangeCache): RFC 8693, or the JWT bearer
//! on-behalf-of grant), and forwards with the exchanged token; the upstream
//! never sees the subject token. Exchanged tokens are cached per caller
//! (keyed digest of the subject token), in the profile's store: sidecars
//! sharing Redis and `[serve.exchange] key_file` make one exchange per
//! subject per refresh.
//!
//! | answer | when |
//! |---|---|
//! | `401`, `WWW-Authenticate: Bearer error="invalid_token"` | no bearer token, a malformed or expired one (refused before any IdP call), or one the IdP rejected (then refused locally for `negative_seconds`) |
//! | `429`, `Retry-After` | more exchanges that may call the IdP than `rate_per_second` (a token bucket per route) |
//! | `503` | the IdP is unreachable or refused the client |
//!
//! An upstream `401 invalid_token` drops the caller's exchanged token and
//! retries once with a new exchange (within the engine's invalidate floor).
//!
//! ```toml
//! [serve.exchange]                  # POST /v1/token/exchange, and defaults of exchange routes
//! key_file = "/run/secrets/exchange-key"   # >= 32 bytes shared by the fleet; default: random per process
//! grant = "token-exchange"          # or "jwt-bearer" (Entra on-behalf-of); default token-exchange
//! subject_token_type = "access_token"      # or "jwt" (token-exchange only); default access_token
//! max_subjects = 100000             # callers' keys held per route; default 100000
//! idle_seconds = 600                # an unused caller's key with an unusable token goes after this
//! negative_seconds = 30             # a rejected subject is refused locally this long (0: off)
//! rate_per_second = 50              # exchanges that may call the IdP, per route (0: no limit)
//!
//! [[serve.routes]]
//! prefix = "/orders/"
//! upstream = "https://orders.internal"
//! profile = "gateway-client"        # whose client authentication exchanges
//! mode = "exchange"
//! audience = "https://orders.internal"
//! scopes = ["orders.read"]
//! exchange_grant = "jwt-bearer"     # each [serve.exchange] setting, per route: exchange_*
//! exchange_rate_per_second = 20
//! ```
//!
//! `POST /v1/token/exchange` takes a form or JSON body with
//! `subject_token`, `profile`, and optional `audience`, `resource`,
//! `scope` (space-separated) or `scopes` (JSON list); it is guarded exactly
//! like `/v1/token` (`Metadata: true`, the secret header when configured,
//! no forwarded requests, the Host guard) and answers the token JSON of
//! `/v1/token`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use token_cache::{ExchangeGrant, Token, TokenRequest, TokenRequestBuilder};
use token_http::{ExchangeCache, ExchangeError, SubjectKey, ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE};

use crate::config::ConfigError;
use crate::response::{self, rfc3339, Body};
use crate::sidecar::{Inner, Profile, Unavailable};

/// The largest `/v1/token/exchange` body (a subject token is at most
/// [`token_http::MAX_SUBJECT_BYTES`]).
pub const MAX_EXCHANGE_BODY: usize = 32 * 1024;
/// How long the `/v1/token/exchange` body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a route uses its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RouteMode {
    /// The profile's own token (the default).
    #[default]
    Inject,
    /// The caller's bearer token exchanged per caller.
    Exchange,
}

/// The settings of per-caller exchanges (`[serve.exchange]` and the routes' `exchange_*` keys; see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeSettings {
    /// The grant (`grant`/`exchange_grant` and `subject_token_type`).
    pub grant: ExchangeGrant,
    /// Callers' keys held at most ([`token_http::DEFAULT_MAX_SUBJECTS`]).
    pub max_subjects: usize,
    /// Idle window of a caller's key ([`token_http::DEFAULT_SUBJECT_IDLE`]).
    pub idle: Duration,
    /// How long a rejected subject is refused locally
    /// ([`token_http::DEFAULT_NEGATIVE_TTL`]).
    pub negative_ttl: Duration,
    /// Exchanges per second that may call the IdP, 0 for none
    /// ([`token_http::DEFAULT_EXCHANGE_RATE`]).
    pub rate_per_second: u32,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        Self {
            grant: ExchangeGrant::TokenExchange {
                subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            },
            max_subjects: token_http::DEFAULT_MAX_SUBJECTS,
            idle: token_http::DEFAULT_SUBJECT_IDLE,
            negative_ttl: token_http::DEFAULT_NEGATIVE_TTL,
            rate_per_second: token_http::DEFAULT_EXCHANGE_RATE,
        }
    }
}

/// `[serve.exchange]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExchange {
    key_file: Option<PathBuf>,
    grant: Option<String>,
    subject_token_type: Option<String>,
    max_subjects: Option<usize>,
    idle_seconds: Option<u64>,
    negative_seconds: Option<u64>,
    rate_per_second: Option<u32>,
}

/// A route's exchange keys as written.
pub(crate) struct RawRouteExchange {
    pub(crate) mode: Option<String>,
    pub(crate) exchange_grant: Option<String>,
    pub(crate) subject_token_type: Option<String>,
    pub(crate) exchange_max_subjects: Option<usize>,
    pub(crate) exchange_idle_seconds: Option<u64>,
    pub(crate) exchange_negative_seconds: Option<u64>,
    pub(crate) exchange_rate_per_second: Option<u32>,
}

/// Overlays written values on `base`; `at` names the table in errors.
#[allow(clippy::too_many_arguments)]
fn overlay(
    at: &str,
    base: &ExchangeSettings,
    grant: Option<String>,
    subject_token_type: Option<String>,
    max_subjects: Option<usize>,
    idle_seconds: Option<u64>,
    negative_seconds: Option<u64>,
    rate_per_second: Option<u32>,
) -> Result<ExchangeSettings, ConfigError> {
    let mut s = base.clone();
    let kind = match grant.as_deref() {
        None => match &base.grant {
            ExchangeGrant::JwtBearerOnBehalfOf => "jwt-bearer",
            _ => "token-exchange",
        },
        Some(g @ ("token-exchange" | "jwt-bearer")) => g,
        Some(other) => {
            return Err(ConfigError::new(format!(
                "{at}: grant \"{other}\" is not \"token-exchange\" or \"jwt-bearer\""
            )))
        }
    };
    s.grant = match (kind, subject_token_type.as_deref()) {
        ("jwt-bearer", None) => ExchangeGrant::JwtBearerOnBehalfOf,
        ("jwt-bearer", Some(_)) => {
            return Err(ConfigError::new(format!(
                "{at}: subject_token_type applies to the token-exchange grant only (jwt-bearer sends a JWT assertion)"
            )))
        }
        (_, None) => match &base.grant {
            ExchangeGrant::JwtBearerOnBehalfOf => ExchangeGrant::TokenExchange {
                subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            },
            g => g.clone(),
        },
        (_, Some("access_token")) => ExchangeGrant::TokenExchange {
            subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
        },
        (_, Some("jwt")) => ExchangeGrant::TokenExchange {
            subject_token_type: JWT_TOKEN_TYPE.to_owned(),
        },
        (_, Some(other)) => {
            return Err(ConfigError::new(format!(
                "{at}: subject_token_type \"{other}\" is not \"access_token\" or \"jwt\""
            )))
        }
    };
    if let Some(n) = max_subjects {
        if n == 0 {
            return Err(ConfigError::new(format!(
                "{at}: max_subjects must be at least 1"
            )));
        }
        s.max_subjects = n;
    }
    if let Some(secs) = idle_seconds {
        s.idle = Duration::from_secs(secs);
    }
    if let Some(secs) = negative_seconds {
        s.negative_ttl = Duration::from_secs(secs);
    }
    if let Some(rate) = rate_per_second {
        s.rate_per_second = rate;
    }
    Ok(s)
}

/// `[serve.exchange]`: the settings and the key file.
pub(crate) fn serve_settings(
    raw: Option<RawExchange>,
) -> Result<(ExchangeSettings, Option<PathBuf>), ConfigError> {
    let Some(r) = raw else {
        return Ok((ExchangeSettings::default(), None));
    };
    let s = overlay(
        "[serve.exchange]",
        &ExchangeSettings::default(),
        r.grant,
        r.subject_token_type,
        r.max_subjects,
        r.idle_seconds,
        r.negative_seconds,
        r.rate_per_second,
    )?;
    Ok((s, r.key_file))
}

/// A route's mode and exchange settings.
pub(crate) fn route_settings(
    what: &str,
    defaults: &ExchangeSettings,
    r: RawRouteExchange,
) -> Result<(RouteMode, ExchangeSettings), ConfigError> {
    let at = format!("[[serve.routes]] {what}");
    let mode = match r.mode.as_deref() {
        None | Some("inject") => RouteMode::Inject,
        Some("exchange") => RouteMode::Exchange,
        Some(other) => {
            return Err(ConfigError::new(format!(
                "{at}: mode \"{other}\" is not \"inject\" or \"exchange\""
            )))
        }
    };
    let exchange_keys = r.exchange_grant.is_some()
        || r.subject_token_type.is_some()
        || r.exchange_max_subjects.is_some()
        || r.exchange_idle_seconds.is_some()
        || r.exchange_negative_seconds.is_some()
        || r.exchange_rate_per_second.is_some();
    if mode == RouteMode::Inject && exchange_keys {
        return Err(ConfigError::new(format!(
            "{at}: exchange_* and subject_token_type settings need mode = \"exchange\""
        )));
    }
    let settings = overlay(
        &at,
        defaults,
        r.exchange_grant,
        r.subject_token_type,
        r.exchange_max_subjects,
        r.exchange_idle_seconds,
        r.exchange_negative_seconds,
        r.exchange_rate_per_second,
    )?;
    Ok((mode, settings))
}

/// The subject key of this process when no key file is configured: one per
/// process, so a reload keeps finding the exchanged tokens it cached.
fn process_key() -> Result<SubjectKey, ConfigError> {
    static KEY: OnceLock<SubjectKey> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key.clone());
    }
    let key =
        SubjectKey::random().map_err(|e| ConfigError::new(format!("[serve.exchange]: {e}")))?;
    Ok(KEY.get_or_init(|| key).clone())
}

/// The subject key: from `path` (at least 32 bytes), or this process's.
pub(crate) fn subject_key(path: Option<&Path>) -> Result<SubjectKey, ConfigError> {
    let Some(path) = path else {
        return process_key();
    };
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
        ConfigError::new(format!(
            "[serve.exchange] key_file {}: cannot be read: {e}",
            path.display()
        ))
    })?);
    SubjectKey::from_bytes(&bytes).map_err(|_| {
        ConfigError::new(format!(
            "[serve.exchange] key_file {}: needs at least 32 bytes of key material",
            path.display()
        ))
    })
}

/// One exchange cache on `profile`'s credential and store, named `name`
/// in the engine's metrics and spans (the `profile` label of the IdP call
/// histogram and counters): unnamed, every exchange cache's IdP calls
/// were reported as one `unnamed` profile.
fn cache_for(
    profile: &Profile,
    settings: &ExchangeSettings,
    key: &SubjectKey,
    name: String,
) -> ExchangeCache {
    ExchangeCache::builder(profile.cache.derive().metrics_name(name))
        .grant(settings.grant.clone())
        .max_subjects(settings.max_subjects)
        .idle(settings.idle)
        .negative_ttl(settings.negative_ttl)
        .rate_per_second(settings.rate_per_second)
        .build_with_key(key.clone())
}

/// DPoP (issue 21): a DPoP profile's exchanges are bound to its key, as its
/// own tokens are (its credential refuses a request without the
/// thumbprint, and signs a proof for the exchange grant too).
fn with_dpop(b: TokenRequestBuilder, profile: &Profile) -> TokenRequestBuilder {
    match profile.handle.request().dpop_thumbprint() {
        Some(jkt) => b.dpop_thumbprint(jkt),
        None => b,
    }
}

/// An `exchange` route's cache and request, resolved at start-up.
pub(crate) struct RouteExchange {
    pub(crate) cache: ExchangeCache,
    pub(crate) request: TokenRequest,
}

impl RouteExchange {
    pub(crate) fn new(route: &crate::config::Route, profile: &Profile, key: &SubjectKey) -> Self {
        let mut b = TokenRequest::builder().scopes(&route.scopes);
        if let Some(a) = &route.audience {
            b = b.audience(a);
        }
        if let Some(r) = &route.resource {
            b = b.resource(r);
        }
        Self {
            request: with_dpop(b, profile).build(),
            cache: cache_for(
                profile,
                &route.exchange,
                key,
                format!(
                    "{} exchange {}",
                    profile.cache.metrics_name(),
                    crate::gateway::route_label(route)
                ),
            ),
        }
    }
}

/// The endpoint's exchange caches: one per profile, made on first use.
pub(crate) struct EndpointExchanges {
    settings: ExchangeSettings,
    key: SubjectKey,
    caches: BTreeMap<String, OnceLock<ExchangeCache>>,
}

impl EndpointExchanges {
    pub(crate) fn new<'a>(
        settings: ExchangeSettings,
        key: SubjectKey,
        profiles: impl Iterator<Item = &'a String>,
    ) -> Self {
        Self {
            settings,
            key,
            caches: profiles.map(|p| (p.clone(), OnceLock::new())).collect(),
        }
    }

    fn get(&self, name: &str, profile: &Profile) -> Option<&ExchangeCache> {
        let cell = self.caches.get(name)?;
        Some(cell.get_or_init(|| {
            let name = format!("{} exchange", profile.cache.metrics_name());
            cache_for(profile, &self.settings, &self.key, name)
        }))
    }
}

/// Counts one exchange outcome (`tokencache_exchanges_total`).
fn count(route: &str, profile: &str, outcome: &'static str) {
    metrics::counter!(
        "tokencache_exchanges_total",
        "route" => route.to_owned(),
        "profile" => profile.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The outcome label of a result.
fn outcome(r: &Result<(Token, bool), ExchangeError>) -> &'static str {
    match r {
        Ok((_, true)) => "hit",
        Ok((_, false)) => "exchanged",
        Err(ExchangeError::InvalidSubject(_)) => "invalid_subject",
        Err(ExchangeError::Rejected { cached: true, .. }) => "negative_cached",
        Err(ExchangeError::Rejected { .. }) => "rejected",
        Err(ExchangeError::RateLimited(_)) => "rate_limited",
        Err(_) => "failed",
    }
}

/// Exchanges `subject` through `cache`, counting the outcome. The bool
/// says whether the answer was a hit.
pub(crate) async fn exchange(
    cache: &ExchangeCache,
    subject: &str,
    request: &TokenRequest,
    route: &str,
    profile: &str,
) -> Result<Token, ExchangeError> {
    let hits = cache.stats().hits;
    let r = cache
        .exchange(subject, request)
        .await
        .map(|t| (t, cache.stats().hits > hits));
    count(route, profile, outcome(&r));
    r.map(|(t, _)| t)
}

/// The response for a failed exchange.
pub(crate) fn refusal(e: &ExchangeError, profile: &str) -> Response<Body> {
    match e {
        ExchangeError::InvalidSubject(_) | ExchangeError::Rejected { .. } => {
            let mut r = response::error(StatusCode::UNAUTHORIZED, "invalid_token", &e.to_string());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
        ExchangeError::RateLimited(wait) => {
            let mut r = response::error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &e.to_string(),
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            r
        }
        ExchangeError::Unavailable(e) => Unavailable::from_engine(e).response(profile),
        _ => response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            &e.to_string(),
        ),
    }
}

/// The caller's bearer token (empty when there is none: refused as
/// missing).
pub(crate) fn subject_of(headers: &http::HeaderMap) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| token_http::bearer_of(v.as_bytes()))
            .unwrap_or_default(),
    )
}

/// The `/v1/token/exchange` body.
#[derive(Deserialize, Default)]
struct ExchangeBody {
    subject_token: Option<String>,
    profile: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

impl Drop for ExchangeBody {
    fn drop(&mut self) {
        if let Some(s) = &mut self.subject_token {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

fn parse_body(content_type: Option<&str>, bytes: &Bytes) -> Result<ExchangeBody, String> {
    let json = content_type.is_some_and(|c| c.trim_start().starts_with("application/json"));
    if json {
        return serde_json::from_slice(bytes)
            .map_err(|e| format!("the JSON body is not an exchange request: {e}"));
    }
    let mut b = ExchangeBody::default();
    for (k, v) in form_urlencoded::parse(bytes) {
        let v = v.into_owned();
        match &*k {
            "subject_token" => b.subject_token = Some(v),
            "profile" => b.profile = Some(v),
            "audience" => b.audience = Some(v),
            "resource" => b.resource = Some(v),
            "scope" => b.scope = Some(v),
            _ => {}
        }
    }
    Ok(b)
}

/// `POST /v1/token/exchange` (guarded by the caller like `/v1/token`).
pub(crate) async fn endpoint(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r = response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "/v1/token/exchange answers POST only",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let read = Limited::new(req.into_body(), MAX_EXCHANGE_BODY).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => {
            return response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request_body",
                &format!("the body could not be read or is larger than {MAX_EXCHANGE_BODY} bytes"),
            )
        }
        Err(_) => {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body did not arrive in time",
            )
        }
    };
    let body = match parse_body(content_type.as_deref(), &bytes) {
        Ok(b) => b,
        Err(why) => return response::error(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    drop(bytes);
    let Some(name) = body.profile.as_deref() else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "profile_required",
            "give the profile: profile=NAME",
        );
    };
    let Some(profile) = inner.profiles.get(name) else {
        return response::error(
            StatusCode::NOT_FOUND,
            "unknown_profile",
            &format!("the sidecar has no profile `{name}`"),
        );
    };
    let Some(cache) = inner.exchanges.get(name, profile) else {
        return response::error(
            StatusCode::NOT_FOUND,
            "unknown_profile",
            &format!("the sidecar has no profile `{name}`"),
        );
    };
    let mut b = TokenRequest::builder().scopes(&body.scopes);
    if let Some(s) = &body.scope {
        b = b.scope(s);
    }
    if let Some(a) = &body.audience {
        b = b.audience(a);
    }
    if let Some(r) = &body.resource {
        b = b.resource(r);
    }
    let request = with_dpop(b, profile).build();
    let asked_at = SystemTime::now();
    let subject = body.subject_token.as_deref().unwrap_or_default();
    match exchange(cache, subject, &request, "/v1/token/exchange", name).await {
        Ok(token) => {
            let json = serde_json::json!({
                "access_token": token.secret().expose(),
                "token_type": token.token_type().as_str(),
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "expires_at": token.expires_at().map(rfc3339),
                "expires_in": token
                    .expires_at()
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .map_or(0, |d| d.as_secs()),
                "from_cache": token.obtained_at() < asked_at,
            });
            response::json(StatusCode::OK, json.to_string())
        }
        Err(e) => refusal(&e, name),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ServeConfig;

    use super::*;

    const ROUTE: &str =
        "[[serve.routes]]\nprefix = \"/o/\"\nupstream = \"https://o.example\"\nprofile = \"p\"\n";

    #[test]
    fn exchange_routes_and_their_settings_are_read() {
        let c = ServeConfig::parse(&format!(
            "[serve.exchange]\ngrant = \"jwt-bearer\"\nrate_per_second = 7\n{ROUTE}mode = \"exchange\"\naudience = \"a\"\nscopes = [\"s\"]\nexchange_max_subjects = 10\n\
             [[serve.routes]]\nprefix = \"/j/\"\nupstream = \"https://j.example\"\nprofile = \"p\"\nmode = \"exchange\"\nexchange_grant = \"token-exchange\"\nsubject_token_type = \"jwt\"\n"
        ))
        .unwrap();
        assert_eq!(c.exchange.grant, ExchangeGrant::JwtBearerOnBehalfOf);
        let (o, j) = (&c.routes[0], &c.routes[1]);
        assert_eq!(o.mode, RouteMode::Exchange);
        assert_eq!(o.exchange.grant, ExchangeGrant::JwtBearerOnBehalfOf);
        assert_eq!(
            (o.exchange.max_subjects, o.exchange.rate_per_second),
            (10, 7)
        );
        assert_eq!(o.audience.as_deref(), Some("a"));
        assert_eq!(
            j.exchange.grant,
            ExchangeGrant::TokenExchange {
                subject_token_type: JWT_TOKEN_TYPE.into()
            }
        );
        // Token parameters on an inject route are that route's own token
        // (issue 19), not an exchange setting.
        let inject = ServeConfig::parse(&format!("[serve]\n{ROUTE}audience = \"a\"\n")).unwrap();
        assert_eq!(inject.routes[0].mode, RouteMode::Inject);
        assert_eq!(inject.routes[0].audience.as_deref(), Some("a"));
        let plain = ServeConfig::parse(&format!("[serve]\n{ROUTE}")).unwrap();
        assert_eq!(plain.routes[0].mode, RouteMode::Inject);
        assert_eq!(plain.routes[0].exchange, ExchangeSettings::default());
    }

    #[test]
    fn bad_exchange_settings_name_the_problem() {
        for (extra, says) in [
            ("mode = \"swap\"\n", "mode \"swap\""),
            ("exchange_rate_per_second = 3\n", "need mode = \"exchange\""),
            ("mode = \"exchange\"\nexchange_grant = \"saml\"\n", "grant \"saml\""),
            (
                "mode = \"exchange\"\nexchange_grant = \"jwt-bearer\"\nsubject_token_type = \"jwt\"\n",
                "token-exchange grant only",
            ),
            ("mode = \"exchange\"\nsubject_token_type = \"id\"\n", "subject_token_type \"id\""),
            ("mode = \"exchange\"\nexchange_max_subjects = 0\n", "at least 1"),
        ] {
            let e = ServeConfig::parse(&format!("[serve]\n{ROUTE}{extra}")).unwrap_err();
            assert!(e.to_string().contains(says), "{extra}: {e}");
        }
        let e = ServeConfig::parse("[serve.exchange]\nkey = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
        let e = subject_key(Some(Path::new("/nonexistent/key"))).unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
    }
}
