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
//!   `Bearer` challenge has `error="invalid_token"` (an auth-param, parsed
//!   by token-http's [`challenge`](token_http::challenge), never a
//!   substring) can be retried once with a new token; the rejected token is
//!   invalidated either way (exactly that token: a burst of such 401s
//!   causes one refresh). The retry's own 401 invalidates nothing, and the
//!   engine refuses to invalidate a key again within its floor
//!   ([`RefreshPolicy::invalidate_floor`](token_cache::RefreshPolicy::invalidate_floor),
//!   30 s): an upstream that rejects every token costs at most one IdP call
//!   per 30 s, not two per request.
//! - No valid token: `503` with a JSON body naming the cause, and nothing is
//!   forwarded. An expired token is never sent.
//! - Connections to upstreams are pooled per route (HTTP/1.1 keep-alive or
//!   one multiplexed HTTP/2 connection, see [`crate::pool`]); TLS uses the
//!   system roots plus the configured CA file.
//! - **gRPC** (`content-type: application/grpc*`), over HTTP/2 both ways:
//!   `TE: trailers` is forwarded (the only `TE` value that is), request and
//!   response trailers pass through, streams flow both ways as they come.
//!   `grpc-status: 16` (UNAUTHENTICATED) from the upstream, in the response
//!   head (a trailers-only response) or in its trailers, invalidates the
//!   token as a `401 invalid_token` does (same floor); the retry happens
//!   only where the request body was buffered (a head-only answer to a
//!   small request of known size). The sidecar's own refusals to a gRPC
//!   request are gRPC errors ([`grpc_error`]): HTTP 200 with `grpc-status`
//!   (14 UNAVAILABLE for no token, an unreachable or timed-out upstream)
//!   and `grpc-message` naming the cause, never an HTTP 503 body a gRPC
//!   client cannot read.
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
use crate::metrics::{Cause, RouteDurations};
use crate::pool::{Pool, RequestBody, UpstreamError};
use crate::response::{self, Body};
use crate::sidecar::{Inner, Profile};
use token_http::challenge::{rejects_dpop_token, rejects_token};

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
    /// A `mode = "exchange"` route's per-caller cache (issue 20).
    pub(crate) exchange: Option<crate::exchange::RouteExchange>,
    /// `tokencache_gateway_request_duration_seconds` handles.
    durations: RouteDurations,
    /// The upstream's host (and port), for the access log.
    upstream_host: Arc<str>,
    /// The short id of the profile's cache key (as `tokencache inspect`
    /// prints it), for the access log: it names the token without holding
    /// any of it.
    key_id: Arc<str>,
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
            None => Arc::new(Pool::new(&route.upstream, route.protocol, tls)?),
        };
        let label = route_label(&route);
        Ok(Self {
            durations: RouteDurations::new(Arc::clone(&label)),
            upstream_host: Arc::from(route.upstream.authority().map_or("", |a| a.as_str())),
            key_id: Arc::from(key_id(profile.handle.cache_key().as_str())),
            label,
            base: route.upstream.path().trim_end_matches('/').to_owned(),
            route,
            profile,
            pool,
            counters: (100..600).map(|_| OnceLock::new()).collect(),
            exchange: None,
        })
    }

    /// One request of `method`, started at `started`, answered with
    /// `resp`: its metrics (when the sidecar has them) and its access-log
    /// line (target `tokencache::access`, at info: route, method, status,
    /// duration, upstream host and the token's key id; never a query
    /// string, a header or a token).
    pub(crate) fn done(
        &self,
        inner: &Inner,
        method: &http::Method,
        resp: &Response<Body>,
        started: std::time::Instant,
    ) {
        let elapsed = started.elapsed();
        let status = resp.status();
        if inner.metrics.is_some() {
            self.count(status);
            self.durations.record(method, status, elapsed);
            crate::metrics::unavailable(Arc::clone(&self.label), resp);
        }
        tracing::info!(
            target: "tokencache::access",
            route = &*self.label,
            method = method.as_str(),
            status = status.as_u16(),
            duration_seconds = elapsed.as_secs_f64(),
            upstream = &*self.upstream_host,
            key_id = &*self.key_id,
            "request"
        );
    }

    /// The upstream's host and port.
    pub(crate) fn upstream_host(&self) -> &str {
        &self.upstream_host
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

/// A route's name in metrics and logs: its prefix, its host, or both.
pub(crate) fn route_label(route: &Route) -> Arc<str> {
    match (&route.host, route.prefix.as_str()) {
        (Some(host), "/") => Arc::from(host.as_str()),
        (Some(host), prefix) => Arc::from(format!("{host}{prefix}")),
        (None, prefix) => Arc::from(prefix),
    }
}

/// The short id of a cache key: the first 12 hex digits of its SHA-256,
/// as `tokencache inspect` prints it and `purge` accepts it.
pub(crate) fn key_id(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    pub(crate) fn for_token(&self, token: &AccessToken) -> Option<Arc<Bearer>> {
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

/// The caller's exchanged token as a [`Bearer`] (one per request: each
/// caller has their own), or the `401`/`429`/`503` saying why not.
async fn exchanged(
    route: &GatewayRoute,
    x: &crate::exchange::RouteExchange,
    subject: &str,
) -> Result<Arc<Bearer>, Response<Body>> {
    let name = &route.route.profile;
    match crate::exchange::exchange(&x.cache, subject, &x.request, &route.route.prefix, name).await
    {
        Ok(t) => {
            let token = t.to_access_token();
            let header = authorization(&token).ok_or_else(unusable)?;
            Ok(Arc::new(Bearer { token, header }))
        }
        Err(e) => Err(crate::exchange::refusal(&e, name)),
    }
}

fn unusable() -> Response<Body> {
    // The IdP's token is not one HTTP can carry: its answer is unusable.
    Cause::IDP_REFUSED.mark(response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "token_unusable",
        "the token cannot be sent in an HTTP header",
    ))
}

/// Forwards `req` along `route`.
pub(crate) async fn forward(
    inner: &Inner,
    route: &GatewayRoute,
    req: Request<Incoming>,
) -> Response<Body> {
    // A host route forwards the path as the program sent it.
    let strip = if route.route.host.is_some() {
        ""
    } else {
        &route.route.prefix
    };
    let pq = match upstream_path(
        strip,
        &route.base,
        req.uri(),
        route.route.allow_encoded_slashes,
    ) {
        Ok(p) => p,
        Err(why) => return response::error(StatusCode::BAD_REQUEST, "bad_path", why),
    };
    // An exchange route sends the caller's own token exchanged, never the
    // caller's token itself (the `Authorization` header is replaced below).
    let subject = route
        .exchange
        .as_ref()
        .map(|_| crate::exchange::subject_of(req.headers()));
    let first = match (&route.exchange, &subject) {
        // Boxed: an inject route's request future stays small.
        (Some(x), Some(subject)) => Box::pin(exchanged(route, x, subject)).await,
        _ => bearer(inner, route).await,
    };
    let mut bearer = match first {
        Ok(b) => b,
        Err(resp) => return resp,
    };

    let (mut parts, body) = req.into_parts();
    // HTTP/2 frames a body by END_STREAM: no Content-Length means unknown
    // (hyper's size hint has the Content-Length when there is one).
    let size = if parts.version == Version::HTTP_2 {
        hyper::body::Body::size_hint(&body).exact()
    } else {
        body_size(&parts.headers)
    };
    let grpc = is_grpc(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The sidecar's own guard headers are for the sidecar, not upstreams
    // (`X-Identity-Header` holds its secret).
    parts.headers.remove(crate::endpoints::SECRET_HEADER);
    parts.headers.remove("metadata");
    parts
        .headers
        .insert(header::HOST, route.pool.host_header().clone());
    parts.headers.append(header::VIA, crate::guard::via_value());
    // The request's span as the upstream's parent, when traces are exported.
    crate::trace::inject(&mut parts.headers);
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
    // --- DPoP (issue 21) ---
    // A DPoP profile signs a proof per attempt for the URL the upstream
    // sees, and sends a buffered request once more when the upstream asks
    // for its nonce (`use_dpop_nonce`).
    let dpop = route.profile.dpop.as_ref();
    let dpop_url = dpop.map(|_| upstream_url(&route.route.upstream, &parts.uri));
    let mut nonce_retried = false;
    // --- end DPoP ---
    loop {
        // The route's token (and its DPoP proof) in place of whatever the
        // caller sent under those names.
        let mut extra = [
            (header::AUTHORIZATION, bearer.header.clone()),
            (
                HeaderName::from_static("dpop"),
                HeaderValue::from_static(""),
            ),
        ];
        let mut extras = 1;
        // --- DPoP (issue 21) ---
        if let (Some(key), Some(url)) = (dpop, &dpop_url) {
            match key.resource_header(&bearer.token, parts.method.as_str(), url) {
                Ok(proof) => {
                    extra[1].1 = proof;
                    extras = 2;
                }
                Err(e) => {
                    tracing::warn!(route = %route.route.prefix, error = %e, "no DPoP proof; answering 503, nothing forwarded");
                    return response::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "dpop_proof_failed",
                        &e.to_string(),
                    );
                }
            }
        }
        // --- end DPoP ---
        let extra = &extra[..extras];
        let sent = match (&buffered, streamed.take()) {
            // The head is lent, not given: a retry sends it again.
            (Some(b), _) => {
                route
                    .pool
                    .send_buffered(&parts, extra, b, route.route.timeout)
                    .await
            }
            (None, streamed) => {
                let head = std::mem::replace(&mut parts, Request::new(()).into_parts().0);
                let body =
                    streamed.map_or(RequestBody::Buffered(Bytes::new()), RequestBody::Streamed);
                let mut out = Request::from_parts(head, body);
                for (name, value) in extra {
                    out.headers_mut().insert(name.clone(), value.clone());
                }
                route.pool.send_within(out, route.route.timeout).await
            }
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if caller_body_failed(&e) => {
                // The caller's own framing (a bad chunk, a body shorter than
                // its Content-Length): the caller's fault, not the
                // upstream's.
                tracing::info!(route = %route.route.prefix, "the caller's request body was malformed or cut short");
                return response::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request_body",
                    "the request body was malformed or ended early",
                );
            }
            Err(e) if e.is_timeout() => {
                tracing::warn!(route = %route.route.prefix, error = %e, "upstream timed out");
                return Cause::UPSTREAM_TIMEOUT.mark(response::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!("the upstream for {}: {e}", route.route.prefix),
                ));
            }
            Err(e) => {
                tracing::warn!(route = %route.route.prefix, error = %e, "upstream request failed");
                return Cause::UPSTREAM_UNREACHABLE.mark(response::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    &format!(
                        "the upstream for {} could not be reached: {e}",
                        route.route.prefix
                    ),
                ));
            }
        };
        // --- DPoP (issue 21) ---
        if let (Some(key), Some(url)) = (dpop, &dpop_url) {
            let can_retry = !nonce_retried && buffered.is_some();
            if key.resource_wants_retry(url, resp.status(), resp.headers(), can_retry) {
                nonce_retried = true;
                tracing::debug!(route = %route.route.prefix, "the upstream asked for a DPoP nonce; retrying once with it");
                continue;
            }
        }
        // --- end DPoP ---
        // Only the first answer may invalidate: the retry's own 401 is
        // passed on as it is (the new token was obtained moments ago, and
        // forcing it out would cost an IdP call per request).
        let rejected = if dpop.is_some() {
            rejects_dpop_token(resp.status(), resp.headers())
        } else {
            rejects_token(resp.status(), resp.headers())
        };
        if !retried && (rejected || (grpc && grpc_unauthenticated(resp.headers()))) {
            let profile = &route.profile;
            // Boxed: the 401 path is cold (see the pool's send).
            let dropped = match (&route.exchange, &subject) {
                (Some(x), Some(subject)) => {
                    Box::pin(x.cache.invalidate(subject, &x.request, &bearer.token)).await
                }
                _ => Box::pin(profile.handle.invalidate(&bearer.token)).await,
            };
            if dropped {
                tracing::info!(route = %route.route.prefix, "upstream rejected the token (invalid_token); invalidated");
            } else {
                // Already replaced, or kept by the engine's floor: one line
                // per request at info would flood the log under a 401 loop.
                tracing::debug!(route = %route.route.prefix, "upstream rejected the token (invalid_token); not invalidated again");
            }
            retried = true;
            if buffered.is_some() {
                match Box::pin(bearer_after_rejection(
                    inner,
                    route,
                    subject.as_ref().map(|s| s.as_str()),
                    &bearer,
                ))
                .await
                {
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
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The gateway never asks for an upgrade (it drops `Upgrade`), so
            // a 101 is unsolicited: relaying it would wedge the connection.
            tracing::warn!(route = %route.route.prefix, "the upstream answered 101 Switching Protocols unasked; answering 502");
            return response::error(
                StatusCode::BAD_GATEWAY,
                "upstream_protocol_error",
                &format!(
                    "the upstream for {} switched protocols without being asked",
                    route.route.prefix
                ),
            );
        }
        let (mut rparts, mut rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        if grpc && !retried {
            // UNAUTHENTICATED in the trailers, after the messages.
            let handle = route.profile.handle.clone();
            let token = bearer.token.clone();
            let prefix = route.route.prefix.clone();
            rbody.on_trailers(Box::new(move |trailers| {
                if grpc_unauthenticated(trailers) {
                    tokio::spawn(async move {
                        if handle.invalidate(&token).await {
                            tracing::info!(route = %prefix, "upstream rejected the token (grpc-status 16 in trailers); invalidated");
                        }
                    });
                }
            }));
        }
        return Response::from_parts(rparts, Either::Right(rbody));
    }
}

/// A token other than `rejected`, after the upstream refused it: the
/// cache's current one (a fetch when the invalidation dropped `rejected`).
/// `None` when the cache still holds `rejected`: the key was invalidated
/// moments ago (the engine's floor on forced refreshes), and sending the
/// same token again would get the same answer.
async fn bearer_after_rejection(
    inner: &Inner,
    route: &GatewayRoute,
    subject: Option<&str>,
    rejected: &Bearer,
) -> Result<Option<Arc<Bearer>>, Response<Body>> {
    let next = match (&route.exchange, subject) {
        (Some(x), Some(subject)) => exchanged(route, x, subject).await?,
        _ => bearer(inner, route).await?,
    };
    Ok((!next.token.same_secret(&rejected.token)).then_some(next))
}

/// Whether a request is gRPC's (`application/grpc`, `application/grpc+proto`,
/// ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// `grpc-status: 16` (UNAUTHENTICATED) in a response head or trailers.
fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"16")
}

/// The gRPC status for one of the sidecar's own HTTP error statuses (gRPC's
/// "HTTP to gRPC status code mapping").
fn grpc_status_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `text` percent-encoded as `grpc-message` wants: bytes outside printable
/// ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sidecar's own error answer (`resp`, a JSON error body of
/// [`response::error`]) to a gRPC request, as gRPC says it: a
/// trailers-only response, HTTP 200 with `content-type: application/grpc`,
/// `grpc-status` and `grpc-message` (the error's description, or its
/// code). Any other response is returned as it is.
pub(crate) async fn grpc_error(resp: Response<Body>) -> Response<Body> {
    if resp.status().is_success() || !matches!(resp.body(), Either::Left(_)) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body {
        Either::Left(full) => full
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default(),
        Either::Right(_) => Bytes::new(),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let code = v.get("error").and_then(|e| e.as_str()).map(str::to_owned);
            let text = v
                .get("error_description")
                .and_then(|e| e.as_str())
                .map(str::to_owned);
            match (code, text) {
                (Some(c), Some(t)) => Some(format!("{c}: {t}")),
                (c, t) => t.or(c),
            }
        })
        .unwrap_or_else(|| format!("the sidecar answered {}", parts.status));
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(grpc_status_for(parts.status))),
    );
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
        h.insert(HeaderName::from_static("grpc-message"), v);
    }
    if let Some(v) = parts.headers.get(header::RETRY_AFTER) {
        h.insert(header::RETRY_AFTER, v.clone());
    }
    r
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

/// DPoP (issue 21): the URL a forwarded request goes to, for the proof's
/// `htu` (token-http leaves the query out).
fn upstream_url(upstream: &Uri, path_and_query: &Uri) -> String {
    let scheme = upstream.scheme_str().unwrap_or("http");
    let authority = upstream.authority().map_or("", |a| a.as_str());
    let path = path_and_query.path();
    format!("{scheme}://{authority}{path}")
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

/// Whether forwarding failed because the caller's request body did (bad
/// chunked framing, a connection closed mid-body): hyper reports a failed
/// body as a user error whose source is the server side's own error.
fn caller_body_failed(e: &UpstreamError) -> bool {
    let UpstreamError::Http { error, .. } = e else {
        return false;
    };
    error.is_user()
        && std::error::Error::source(error)
            .is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some())
}

/// The transfer codings of `Transfer-Encoding` other than `chunked`
/// (`gzip` of `gzip, chunked`): a coding of the message itself, which the
/// next hop must still see (hyper frames the body as chunked again).
fn codings_besides_chunked(headers: &HeaderMap) -> Option<HeaderValue> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
        .collect();
    if codings.is_empty() {
        return None;
    }
    HeaderValue::from_str(&codings.join(", ")).ok()
}

/// Drops hop-by-hop headers: the fixed list, `Upgrade`, and every header
/// named in `Connection`. Most messages have none, which one pass over the
/// names tells. A transfer coding other than `chunked` is kept (the body
/// stays coded with it).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let codings = codings_besides_chunked(headers);
    // `TE: trailers` (the only TE that HTTP/2 allows) says the caller
    // takes trailers: gRPC needs it forwarded.
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
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
    if let Some(codings) = codings {
        headers.insert(header::TRANSFER_ENCODING, codings);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `path` is under `prefix`: it starts with it at a segment
/// boundary (`/pay` matches `/pay` and `/pay/x`, never `/payX`), or is the
/// prefix without its trailing `/` (`/orders` for `/orders/`).
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => prefix.ends_with('/') && path == &prefix[..prefix.len() - 1],
    }
}

/// The path and query sent upstream for `incoming`: the upstream's base
/// path (`base`, without its trailing `/`), then the path after `prefix`
/// (one `/` between them, never `//`), then the query.
///
/// Refused, since upstreams (Tomcat, Spring, IIS and others) may resolve
/// them out of the base path: any dot segment (`.` or `..`) after
/// percent-decoding (repeatedly, so `%252e` counts) and splitting on `/`,
/// `\` and `;` (`..;/`, `%2e%2e;/`, `..%2f`, `..%5c`, `..\`); and, unless
/// `encoded_slashes`, `%2f`, `%5c` and `\` themselves.
pub(crate) fn upstream_path(
    prefix: &str,
    base: &str,
    incoming: &Uri,
    encoded_slashes: bool,
) -> Result<PathAndQuery, &'static str> {
    let path = incoming.path();
    let rest = path.strip_prefix(prefix).unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    // Only a path with one of these bytes can hold what is refused.
    if rest
        .bytes()
        .any(|b| matches!(b, b'.' | b'%' | b'\\' | b';'))
    {
        check_segments(rest, encoded_slashes)?;
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

/// How many rounds of percent-decoding a path gets before its segments are
/// checked: enough for `%25252e`, bounded for hostile input.
const DECODE_ROUNDS: usize = 3;

fn check_segments(rest: &str, encoded_slashes: bool) -> Result<(), &'static str> {
    let mut text: Vec<u8> = rest.as_bytes().to_vec();
    for _ in 0..=DECODE_ROUNDS {
        if !encoded_slashes {
            if text.contains(&b'\\') {
                return Err("the path has a backslash (raw or %5c), which the gateway refuses");
            }
            if text.windows(3).any(|w| {
                w[0] == b'%'
                    && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
            }) {
                return Err("the path has an encoded slash or backslash (%2f, %5c), which the gateway refuses");
            }
        }
        if text
            .split(|b| matches!(b, b'/' | b'\\' | b';'))
            .any(|seg| seg == b"." || seg == b"..")
        {
            return Err("the path has dot segments (`.` or `..`, also encoded or before `;`), which the gateway refuses");
        }
        if !text.contains(&b'%') {
            break;
        }
        text = percent_decode(&text);
    }
    Ok(())
}

/// `%XX` decoded; anything else (a `%` without two hex digits) kept.
fn percent_decode(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' && i + 2 < text.len() {
            if let (Some(h), Some(l)) = (hex(text[i + 1]), hex(text[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str, incoming: &str) -> Result<String, &'static str> {
        upstream_path("/orders/", base, &incoming.parse().expect("uri"), false)
            .map(|p| p.to_string())
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
    fn refuses_route_escapes_that_upstreams_resolve_out_of_the_base_path() {
        for p in [
            "/orders/..;/admin",
            "/orders/%2e%2e;/admin",
            "/orders/..%2fadmin",
            "/orders/%2e%2e%2fadmin",
            "/orders/..%5cadmin",
            "/orders/..\\admin",
            "/orders/a;x/..;y/b",
            "/orders/%252e%252e/admin",
            "/orders/.;/x",
        ] {
            let uri: Uri = match p.parse() {
                Ok(u) => u,
                // A path the URI parser refuses never reaches the gateway.
                Err(_) => continue,
            };
            assert!(upstream_path("/orders/", "", &uri, false).is_err(), "{p}");
            assert!(upstream_path("/orders/", "", &uri, true).is_err(), "{p}");
        }
        // Encoded slashes alone: refused by default, forwarded on request.
        for p in ["/orders/a%2Fb", "/orders/a%5cb", "/orders/a%252fb"] {
            let uri: Uri = p.parse().expect("uri");
            assert!(upstream_path("/orders/", "", &uri, false).is_err(), "{p}");
            assert!(upstream_path("/orders/", "", &uri, true).is_ok(), "{p}");
        }
        // Dots that are not segments, and `;` parameters, are fine.
        for p in [
            "/orders/a..b/c",
            "/orders/.well-known/x",
            "/orders/a;v=1/b",
            "/orders/%41",
        ] {
            assert!(path("", p).is_ok(), "{p}");
        }
    }

    #[test]
    fn a_prefix_without_a_trailing_slash_matches_whole_segments_and_never_doubles_a_slash() {
        assert!(prefix_matches("/pay", "/pay"));
        assert!(prefix_matches("/pay", "/pay/x"));
        assert!(!prefix_matches("/pay", "/payX"));
        assert!(!prefix_matches("/pay", "/payments/x"));
        assert!(prefix_matches("/orders/", "/orders"));
        assert!(prefix_matches("/orders/", "/orders/x"));
        assert!(!prefix_matches("/orders/", "/ordersX"));
        let pq = |incoming: &str| {
            upstream_path("/pay", "/api", &incoming.parse().expect("uri"), false)
                .expect("ok")
                .to_string()
        };
        assert_eq!(pq("/pay/x?a=1"), "/api/x?a=1");
        assert_eq!(pq("/pay"), "/api/");
        assert_eq!(
            upstream_path("/pay", "", &"/pay/x".parse().expect("uri"), false)
                .expect("ok")
                .to_string(),
            "/x"
        );
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
    fn te_trailers_is_forwarded_and_nothing_else_of_te() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TE,
            HeaderValue::from_static("deflate, Trailers;q=1"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn grpc_requests_are_told_apart_and_messages_percent_encoded() {
        let grpc = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(grpc("application/grpc"));
        assert!(grpc("application/grpc+proto"));
        assert!(grpc("Application/GRPC;charset=x"));
        assert!(!grpc("application/grpc-web"));
        assert!(!grpc("application/json"));
        assert_eq!(
            grpc_percent_encode("no token: 100% dead \u{e9}\n"),
            "no token: 100%25 dead %C3%A9%0A"
        );
    }

    #[tokio::test]
    async fn a_sidecar_error_to_a_grpc_call_is_a_trailers_only_grpc_status() {
        let r = response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            "the IdP is down",
        );
        let g = grpc_error(r).await;
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(g.headers()["grpc-status"], "14");
        assert_eq!(
            g.headers()["grpc-message"],
            "token_unavailable: the IdP is down"
        );
        let bytes = g.into_body().collect().await.expect("body").to_bytes();
        assert!(bytes.is_empty());
    }

    #[test]
    fn a_transfer_coding_besides_chunked_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.get(header::TRANSFER_ENCODING).map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
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
        h.insert(header::TE, HeaderValue::from_static("deflate"));
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
            // `chunked`: other transfer codings are kept (see below).
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("chunked"),
            );
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }
}
