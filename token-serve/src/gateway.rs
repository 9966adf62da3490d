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
//! - Connections to upstreams are pooled (HTTP/1.1 keep-alive); TLS uses the
//!   system roots plus the configured CA file.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_cache::AccessToken;

use crate::config::Route;
use crate::response::{self, Body};
use crate::sidecar::{Inner, Unavailable};

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The pooled HTTP(S) client to upstreams.
pub(crate) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl Upstream {
    pub(crate) fn new(tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Self { client }
    }
}

/// Forwards `req` along `route`.
pub(crate) async fn forward(
    inner: &Inner,
    route: &Route,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(profile) = inner.profiles.get(&route.profile) else {
        return response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "misconfigured",
            "the route's profile is not configured",
        );
    };
    let uri = match upstream_uri(route, req.uri()) {
        Ok(u) => u,
        Err(why) => return response::error(StatusCode::BAD_REQUEST, "bad_path", why),
    };
    let token = match inner.token(profile).await {
        Ok(t) => t.to_access_token(),
        Err(u) => {
            tracing::warn!(route = %route.prefix, profile = %route.profile, cause = %u.cause, "no valid token; answering 503, nothing forwarded");
            return u.response(&route.profile);
        }
    };

    let (mut parts, body) = req.into_parts();
    let size = body_size(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static("1.1 tokencache"));
    parts.uri = uri;

    // A body of known, small size is buffered so the request can be sent
    // twice; anything else streams and gets no retry.
    let small = match size {
        Some(n) => n <= inner.retry_body_limit as u64,
        None => false,
    };
    let (buffered, mut streamed): (Option<Bytes>, Option<Incoming>) = if size == Some(0) {
        (Some(Bytes::new()), None)
    } else if small {
        match Limited::new(body, inner.retry_body_limit).collect().await {
            Ok(c) => (Some(c.to_bytes()), None),
            Err(e) => {
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

    let mut token = token;
    let mut retried = false;
    loop {
        let body: Body = match (&buffered, streamed.take()) {
            (Some(b), _) => Either::Left(Full::new(b.clone())),
            (None, Some(s)) => Either::Right(s),
            (None, None) => Either::Left(Full::new(Bytes::new())),
        };
        let mut out = Request::from_parts(parts.clone(), body);
        match authorization(&token) {
            Some(v) => {
                out.headers_mut().insert(header::AUTHORIZATION, v);
            }
            None => {
                return response::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "token_unusable",
                    "the token cannot be sent in an HTTP header",
                )
            }
        }
        let resp = match inner.upstream.client.request(out).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(route = %route.prefix, error = %e, "upstream request failed");
                return response::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    &format!(
                        "the upstream for {} could not be reached: {e}",
                        route.prefix
                    ),
                );
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED && says_invalid_token(resp.headers()) {
            let dropped = profile.handle.invalidate(&token).await;
            tracing::info!(route = %route.prefix, dropped, "upstream rejected the token (invalid_token)");
            if !retried && buffered.is_some() {
                retried = true;
                let mut next = match inner.token(profile).await {
                    Ok(t) => t.to_access_token(),
                    Err(u) => return u.response(&route.profile),
                };
                if next.same_secret(&token) {
                    // The cache handed back the token just rejected (a
                    // store that had not dropped it yet): fetch anew.
                    next = match profile.cache.refresh(profile.handle.request()).await {
                        Ok(t) => t.to_access_token(),
                        Err(e) => return Unavailable::from_engine(&e).response(&route.profile),
                    };
                }
                if !next.same_secret(&token) {
                    token = next;
                    continue;
                }
            }
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        return Response::from_parts(rparts, Either::Right(rbody));
    }
}

fn authorization(token: &AccessToken) -> Option<HeaderValue> {
    let header = token.authorization_header();
    let mut v = HeaderValue::from_str(header.expose()).ok()?;
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

/// Drops hop-by-hop headers: the fixed list, `Upgrade`, and every header
/// named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// The upstream URI for `incoming`: the upstream's scheme, authority and
/// base path, then the path after the prefix, then the query.
pub(crate) fn upstream_uri(route: &Route, incoming: &Uri) -> Result<Uri, &'static str> {
    let path = incoming.path();
    let rest = path.strip_prefix(route.prefix.as_str()).unwrap_or("");
    if rest.split('/').any(|seg| {
        seg == ".."
            || seg == "."
            || seg.eq_ignore_ascii_case("%2e%2e")
            || seg.eq_ignore_ascii_case("%2e")
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
    }) {
        return Err("the path has dot segments (`.` or `..`), which the gateway refuses");
    }
    let base = route.upstream.path().trim_end_matches('/');
    let mut pq =
        String::with_capacity(base.len() + rest.len() + 2 + incoming.query().map_or(0, str::len));
    pq.push_str(base);
    pq.push('/');
    pq.push_str(rest);
    if let Some(q) = incoming.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|_| "the path cannot be forwarded")?;
    let mut parts = route.upstream.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| "the path cannot be forwarded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(upstream: &str) -> Route {
        Route {
            prefix: "/orders/".to_owned(),
            upstream: upstream.parse().expect("uri"),
            profile: "p".to_owned(),
        }
    }

    #[test]
    fn strips_the_prefix_keeps_the_query_and_adds_the_base_path() {
        let r = route("https://orders.internal");
        let u = upstream_uri(&r, &"/orders/v1/x?a=1&b=2".parse().expect("uri")).expect("ok");
        assert_eq!(u.to_string(), "https://orders.internal/v1/x?a=1&b=2");
        let r = route("http://127.0.0.1:9/api/");
        let u = upstream_uri(&r, &"/orders/v1".parse().expect("uri")).expect("ok");
        assert_eq!(u.to_string(), "http://127.0.0.1:9/api/v1");
        let u = upstream_uri(&r, &"/orders".parse().expect("uri")).expect("ok");
        assert_eq!(u.to_string(), "http://127.0.0.1:9/api/");
    }

    #[test]
    fn refuses_dot_segments() {
        let r = route("https://orders.internal");
        for p in [
            "/orders/../admin",
            "/orders/a/%2E%2E/b",
            "/orders/./x",
            "/orders/.%2e/x",
        ] {
            assert!(upstream_uri(&r, &p.parse().expect("uri")).is_err(), "{p}");
        }
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
