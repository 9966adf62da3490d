//! The egress gateway: forwards a request under a route's prefix to its
//! upstream with `Authorization: Bearer <token>`.
//!
//! - The prefix is stripped (the upstream's own base path is put in front),
//!   the query kept. Paths with dot segments (`..`, `%2e%2e`) are refused,
//!   so a request cannot climb out of the route.
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`, plus `Proxy-Authorization` and
//!   `Proxy-Authenticate`) are dropped in both directions; `Via` is added
//!   (§7.6.3). The caller's own `Authorization` is replaced.
//! - Bodies stream both ways. A request body of known size up to
//!   `retry_body_limit` is buffered, so that an upstream `401` whose
//!   `WWW-Authenticate` says `invalid_token` can be retried once with a new
//!   token; the rejected token is invalidated either way (exactly that
//!   token: a burst of such 401s causes one refresh).
//! - No valid token: `503` with a JSON body naming the cause, and nothing is
//!   forwarded. An expired token is never sent.
//! - Connections to upstreams are pooled per route (HTTP/1.1 keep-alive,
//!   see [`crate::pool`]); TLS uses the system roots plus the configured CA
//!   file.
//!
//! The per-request work is kept to what forwarding needs: the route, its
//! profile, pool and metric handles are resolved at start-up
//! ([`GatewayRoute`]), and the `Authorization` value is built once per
//! token ([`BearerCache`]), not per request.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use token_cache::AccessToken;
use zeroize::Zeroize as _;

use crate::config::Route;
use crate::pool::{Pool, RequestBody};
use crate::response::{self, Body};
use crate::sidecar::{Inner, Profile, Unavailable};

/// A route as the gateway uses it: resolved once at start-up.
pub(crate) struct GatewayRoute {
    pub(crate) route: Route,
    /// The metric label (the prefix).
    label: Arc<str>,
    /// The upstream's base path without its trailing `/`.
    base: String,
    pub(crate) profile: Profile,
    pub(crate) pool: Arc<Pool>,
    /// `tokencache_gateway_requests_total{route, status}` handles, by
    /// status code (100..=599), registered on first use.
    counters: Box<[OnceLock<metrics::Counter>]>,
}

impl GatewayRoute {
    /// The route, forwarding through `pool` when given (a reload keeps the
    /// connections of an upstream it already had), else a new pool.
    pub(crate) fn new(
        route: Route,
        profile: Profile,
        tls: &Arc<rustls::ClientConfig>,
        pool: Option<Arc<Pool>>,
    ) -> Result<Self, crate::ConfigError> {
        let pool = match pool {
            Some(pool) => pool,
            None => Arc::new(Pool::new(&route.upstream, tls)?),
        };
        Ok(Self {
            label: Arc::from(route.prefix.as_str()),
            base: route.upstream.path().trim_end_matches('/').to_owned(),
            route,
            profile,
            pool,
            counters: (100..600).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Counts one request answered with `status`.
    pub(crate) fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        let Some(slot) = self.counters.get(usize::from(code).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!(
                "tokencache_gateway_requests_total",
                "route" => Arc::clone(&self.label),
                "status" => code.to_string()
            )
        })
        .increment(1);
    }
}

/// A token and the `Authorization` value that sends it.
pub(crate) struct Bearer {
    token: AccessToken,
    header: HeaderValue,
}

/// The [`Bearer`] of a profile's current token: one per token, so a request
/// copies no secret. Its bytes are zeroed when the last request using it is
/// done with it.
#[derive(Default)]
pub(crate) struct BearerCache {
    current: ArcSwapOption<Bearer>,
}

impl BearerCache {
    /// The bearer for `token`, built when the token is new. `None` when the
    /// token cannot be sent in an HTTP header.
    fn for_token(&self, token: &AccessToken) -> Option<Arc<Bearer>> {
        if let Some(b) = &*self.current.load() {
            if b.token.token_type() == token.token_type()
                && b.token.secret().expose() == token.secret().expose()
            {
                return Some(Arc::clone(b));
            }
        }
        let bearer = Arc::new(Bearer {
            header: authorization(token)?,
            token: token.clone(),
        });
        self.current.store(Some(Arc::clone(&bearer)));
        Some(bearer)
    }
}

/// Bytes that are zeroed when dropped: the owner of a cached header value.
struct ZeroOnDrop(Vec<u8>);

impl AsRef<[u8]> for ZeroOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ZeroOnDrop {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A usable token of `route`'s profile as a [`Bearer`], or the response
/// saying why there is none.
async fn bearer(inner: &Inner, route: &GatewayRoute) -> Result<Arc<Bearer>, Response<Body>> {
    let profile = &route.profile;
    let name = &route.route.profile;
    match inner.token(profile).await {
        Ok(t) => profile.bearer.for_token(&t).ok_or_else(unusable),
        Err(u) => {
            tracing::warn!(route = %route.route.prefix, profile = %name, cause = %u.cause, "no valid token; answering 503, nothing forwarded");
            Err(u.response(name))
        }
    }
}

fn unusable() -> Response<Body> {
    response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "token_unusable",
        "the token cannot be sent in an HTTP header",
    )
}

/// Forwards `req` along `route`.
pub(crate) async fn forward(
    inner: &Inner,
    route: &GatewayRoute,
    req: Request<Incoming>,
) -> Response<Body> {
    let pq = match upstream_path(&route.route.prefix, &route.base, req.uri()) {
        Ok(p) => p,
        Err(why) => return response::error(StatusCode::BAD_REQUEST, "bad_path", why),
    };
    let mut bearer = match bearer(inner, route).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };

    let (mut parts, body) = req.into_parts();
    let size = body_size(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, route.pool.host_header().clone());
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static("1.1 tokencache"));
    parts.uri = Uri::from(pq);
    parts.version = Version::HTTP_11;

    // A body of known, small size is buffered so the request can be sent
    // twice; anything else streams and gets no retry.
    let small = match size {
        Some(n) => n <= inner.retry_body_limit as u64,
        None => false,
    };
    let (buffered, mut streamed): (Option<Bytes>, Option<Incoming>) = if size == Some(0) {
        (Some(Bytes::new()), None)
    } else if small {
        // A body trickled in slowly is bounded by the route's timeout too.
        let read = Limited::new(body, inner.retry_body_limit).collect();
        match tokio::time::timeout(route.route.timeout, read).await {
            Err(_) => {
                return response::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_body_timeout",
                    &format!(
                        "the request body did not arrive within {}s (the route's timeout_seconds)",
                        route.route.timeout.as_secs()
                    ),
                )
            }
            Ok(Ok(c)) => (Some(c.to_bytes()), None),
            Ok(Err(e)) => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request_body",
                    &format!("reading the request body failed: {e}"),
                )
            }
        }
    } else {
        (None, Some(body))
    };

    let mut retried = false;
    loop {
        let body: RequestBody = match (&buffered, streamed.take()) {
            (Some(b), _) => Either::Left(Full::new(b.clone())),
            (None, Some(s)) => Either::Right(s),
            (None, None) => Either::Left(Full::new(Bytes::new())),
        };
        // The head is kept only while a retry can still happen.
        let head = if buffered.is_some() && !retried {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        let mut out = Request::from_parts(head, body);
        out.headers_mut()
            .insert(header::AUTHORIZATION, bearer.header.clone());
        let resp = match route.pool.send_within(out, route.route.timeout).await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                tracing::warn!(route = %route.route.prefix, error = %e, "upstream timed out");
                return response::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!("the upstream for {}: {e}", route.route.prefix),
                );
            }
            Err(e) => {
                tracing::warn!(route = %route.route.prefix, error = %e, "upstream request failed");
                return response::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    &format!(
                        "the upstream for {} could not be reached: {e}",
                        route.route.prefix
                    ),
                );
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED && says_invalid_token(resp.headers()) {
            let profile = &route.profile;
            let dropped = profile.handle.invalidate(&bearer.token).await;
            tracing::info!(route = %route.route.prefix, dropped, "upstream rejected the token (invalid_token)");
            if !retried && buffered.is_some() {
                retried = true;
                match bearer_after_rejection(inner, route, &bearer).await {
                    Ok(Some(next)) => {
                        bearer = next;
                        continue;
                    }
                    // No other token: the upstream's 401 is the answer.
                    Ok(None) => {}
                    Err(resp) => return resp,
                }
            }
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        return Response::from_parts(rparts, Either::Right(rbody));
    }
}

/// A token other than `rejected`, after the upstream refused it: the
/// cache's current one, or a new fetch when the cache still holds the
/// rejected one (a store that had not dropped it yet). `None` when no other
/// token can be had.
async fn bearer_after_rejection(
    inner: &Inner,
    route: &GatewayRoute,
    rejected: &Bearer,
) -> Result<Option<Arc<Bearer>>, Response<Body>> {
    let next = bearer(inner, route).await?;
    if !next.token.same_secret(&rejected.token) {
        return Ok(Some(next));
    }
    let profile = &route.profile;
    let fresh = match profile.cache.refresh(profile.handle.request()).await {
        Ok(t) => t,
        Err(e) => return Err(Unavailable::from_engine(&e).response(&route.route.profile)),
    };
    let next = profile.bearer.for_token(&fresh).ok_or_else(unusable)?;
    Ok((!next.token.same_secret(&rejected.token)).then_some(next))
}

/// The `Authorization` value for `token`, its bytes owned by a buffer that
/// is zeroed when the value's last copy is dropped.
fn authorization(token: &AccessToken) -> Option<HeaderValue> {
    let header = token.authorization_header();
    let owned = ZeroOnDrop(header.expose().as_bytes().to_vec());
    let mut v = HeaderValue::from_maybe_shared(Bytes::from_owner(owned)).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The request body's size when it is known: `Content-Length`, or zero
/// when neither it nor `Transfer-Encoding` is present (RFC 9112 §6.3: such
/// a request has no body). Must run before hop-by-hop headers are dropped.
fn body_size(headers: &HeaderMap) -> Option<u64> {
    if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        return v.to_str().ok()?.trim().parse().ok();
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    Some(0)
}

fn says_invalid_token(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("invalid_token"))
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Drops hop-by-hop headers: the fixed list, `Upgrade`, and every header
/// named in `Connection`. Most messages have none, which one pass over the
/// names tells.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove(header::UPGRADE);
}

/// The path and query sent upstream for `incoming`: the upstream's base
/// path (`base`, without its trailing `/`), then the path after `prefix`,
/// then the query. Dot segments are refused.
pub(crate) fn upstream_path(
    prefix: &str,
    base: &str,
    incoming: &Uri,
) -> Result<PathAndQuery, &'static str> {
    let path = incoming.path();
    let rest = path.strip_prefix(prefix).unwrap_or("");
    // Only a path with `.` or `%` can hold a dot segment.
    if rest.bytes().any(|b| b == b'.' || b == b'%')
        && rest.split('/').any(|seg| {
            seg == ".."
                || seg == "."
                || seg.eq_ignore_ascii_case("%2e%2e")
                || seg.eq_ignore_ascii_case("%2e")
                || seg.eq_ignore_ascii_case(".%2e")
                || seg.eq_ignore_ascii_case("%2e.")
        })
    {
        return Err("the path has dot segments (`.` or `..`), which the gateway refuses");
    }
    let query = incoming.query();
    let mut pq = String::with_capacity(base.len() + rest.len() + 2 + query.map_or(0, str::len));
    pq.push_str(base);
    pq.push('/');
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq).map_err(|_| "the path cannot be forwarded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str, incoming: &str) -> Result<String, &'static str> {
        upstream_path("/orders/", base, &incoming.parse().expect("uri")).map(|p| p.to_string())
    }

    #[test]
    fn strips_the_prefix_keeps_the_query_and_adds_the_base_path() {
        assert_eq!(
            path("", "/orders/v1/x?a=1&b=2").expect("ok"),
            "/v1/x?a=1&b=2"
        );
        assert_eq!(path("/api", "/orders/v1").expect("ok"), "/api/v1");
        assert_eq!(path("/api", "/orders").expect("ok"), "/api/");
        assert_eq!(path("", "/orders/a.b/c%20d").expect("ok"), "/a.b/c%20d");
    }

    #[test]
    fn refuses_dot_segments() {
        for p in [
            "/orders/../admin",
            "/orders/a/%2E%2E/b",
            "/orders/./x",
            "/orders/.%2e/x",
            "/orders/x/..",
        ] {
            assert!(path("", p).is_err(), "{p}");
        }
    }

    #[test]
    fn a_token_s_header_is_built_once_and_zeroed_with_its_last_copy() {
        let cache = BearerCache::default();
        let now = std::time::SystemTime::now();
        let first = AccessToken::new("tok-one", now);
        let a = cache.for_token(&first).expect("header");
        let b = cache.for_token(&first.clone()).expect("header");
        assert!(Arc::ptr_eq(&a, &b), "the same token reuses its header");
        assert_eq!(a.header.as_bytes(), b"Bearer tok-one");
        assert!(a.header.is_sensitive());
        let c = cache
            .for_token(&AccessToken::new("tok-two", now))
            .expect("header");
        assert!(!Arc::ptr_eq(&a, &c), "a new token gets its own header");
        assert_eq!(c.header.as_bytes(), b"Bearer tok-two");
        assert!(format!("{:?}", c.header).contains("Sensitive"));
        // A token with a byte a header cannot carry is refused, not sent.
        assert!(cache
            .for_token(&AccessToken::new("bad\ntoken", now))
            .is_none());
    }

    #[test]
    fn drops_hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        for name in [
            "upgrade",
            "trailer",
            "transfer-encoding",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }

    #[test]
    fn recognises_invalid_token_challenges() {
        let mut h = HeaderMap::new();
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"x\", error=\"invalid_token\""),
        );
        assert!(says_invalid_token(&h));
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
        );
        assert!(!says_invalid_token(&h));
    }
}
