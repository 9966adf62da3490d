//! Connections to one route's upstream: keep-alive HTTP/1.1 connections,
//! or one multiplexed HTTP/2 connection.
//!
//! Each route has its own [`Pool`]. Which protocol: an `https` upstream is
//! offered ALPN `h2` and `http/1.1` and the TLS handshake decides; an
//! `http` upstream speaks HTTP/1.1, or HTTP/2 with prior knowledge when the
//! route says `protocol = "h2c"`.
//!
//! **HTTP/2** (hyper's client). One connection per upstream carries every
//! request at once (as many streams as the upstream allows; beyond that
//! requests wait for a stream). While the upstream is known to speak h2,
//! opening a connection is serialised, so a burst of first requests opens
//! one connection, not one each. A connection that went away (GOAWAY,
//! closed) is replaced on the next request; a request it refused before
//! sending is sent on the new one. Unused for [`POOL_IDLE`], it is let go.
//! HTTP/2 PINGs every [`H2_KEEPALIVE`] find a dead upstream.
//!
//! **HTTP/1.1.** A request takes the most recently used idle connection
//! (or opens one: DNS, TCP with `TCP_NODELAY`, TLS with SNI and ALPN for
//! `https` upstreams, all within [`CONNECT_TIMEOUT`]); the connection goes
//! back to the pool when the response body has been read to its end
//! ([`UpstreamBody`]). A response body dropped before its end, or a
//! connection the upstream closed, is never reused. Two kinds:
//! - a request whose body is in memory (none, or at most
//!   `retry_body_limit` bytes: nearly every request) goes on the
//!   **direct path** ([`h1`]): the request's own task writes it and reads
//!   the response from the socket, with no connection task and no channel
//!   in between. A pooled connection that fails before any byte of a
//!   response (the upstream closed it as the request went out) is followed
//!   by another for an idempotent request; a `POST` is never sent twice;
//! - a request whose body streams goes through hyper's HTTP/1.1 client,
//!   which sends the body while watching for an early response; a request
//!   that a pooled connection of hyper's refused before sending it is sent
//!   on another one, as hyper-util's pooled client does.
//!
//! Idle connections older than [`POOL_IDLE`] are dropped when the pool is
//! next used; at most [`MAX_IDLE`] are kept per route, kind and connection
//! worker: each worker (`[serve] workers`) reuses the connections it
//! opened, so a request and its upstream connection are on one thread. A
//! response head that does not come within the route's timeout abandons
//! the request (its connection is dropped with it, so it is never reused).
//!
//! Why not hyper-util's pooled client: it hashes the origin and clones its
//! connector on every request and hands each response's connection back
//! through a spawned task; for a gateway with one origin per route those
//! costs were a fifth of the CPU per forwarded request. Why not hyper's
//! HTTP/1.1 client for every request: without its connection task and
//! channels (and with the other changes made beside it) the gateway spends
//! a quarter less user CPU per request (docs/BENCHMARKS.md).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, Scheme, Uri};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, Protocol};

mod h1;

use h1::{Conn, H1Body, H1Error, Stream};

/// How long opening a connection to an upstream may take: DNS, TCP and TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection is kept for reuse.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// The most idle connections kept per route.
pub const MAX_IDLE: usize = 512;
/// How often an HTTP/2 upstream connection is PINGed; one that does not
/// answer within [`H2_KEEPALIVE_TIMEOUT`] is closed.
pub const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long an HTTP/2 upstream has to answer a PING.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A request body sent upstream: buffered (so it can be sent again) or the
/// caller's, streamed.
pub(crate) enum RequestBody {
    Buffered(Bytes),
    Streamed(Incoming),
}

/// A request body as hyper's client sends it.
type HyperBody = Either<Full<Bytes>, Incoming>;

impl From<RequestBody> for HyperBody {
    fn from(body: RequestBody) -> Self {
        match body {
            RequestBody::Buffered(b) => Either::Left(Full::new(b)),
            RequestBody::Streamed(s) => Either::Right(s),
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("resolving {origin} failed: {error}")]
    Resolve {
        origin: String,
        error: std::io::Error,
    },
    #[error("{origin} resolves to no address")]
    NoAddress { origin: String },
    #[error("connecting to {origin} failed: {error}")]
    Connect {
        origin: String,
        error: std::io::Error,
    },
    #[error("connecting to {origin} timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { origin: String },
    #[error("the TLS handshake with {origin} failed: {error}")]
    Tls {
        origin: String,
        error: std::io::Error,
    },
    #[error("the request to {origin} failed: {error}")]
    Http { origin: String, error: hyper::Error },
    #[error("the request to {origin} failed: {error}")]
    H1 { origin: String, error: H1Error },
    #[error("the request to {origin} failed: {what}")]
    Protocol { origin: String, what: &'static str },
    #[error("{origin} sent no response within {}s (the route's timeout_seconds)", after.as_secs())]
    Timeout { origin: String, after: Duration },
}

impl UpstreamError {
    /// Whether the upstream did not answer in time (`504`, not `502`).
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// The pooled connections to one upstream origin.
pub(crate) struct Pool {
    host: String,
    port: u16,
    /// `https://host:port`, for errors and logs.
    origin: String,
    /// The `Host` header every request carries.
    host_header: HeaderValue,
    /// `scheme://authority`, the front of an HTTP/2 request's URI.
    scheme: Scheme,
    authority: Authority,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Plaintext HTTP/2 with prior knowledge (`protocol = "h2c"`).
    h2c: bool,
    /// Idle HTTP/1.1 connections for requests whose body is in memory,
    /// driven by the request's own task ([`h1`]).
    idle: IdleQueues<Conn>,
    /// Idle HTTP/1.1 connections of hyper's client, for requests whose
    /// body streams.
    idle_hyper: IdleQueues<SendRequest<HyperBody>>,
    /// The HTTP/2 connection all requests share, once there is one.
    h2: Mutex<Option<Shared>>,
    /// The upstream spoke HTTP/2 last time (or is h2c): connections are
    /// opened one at a time, under `opening`.
    speaks_h2: AtomicBool,
    opening: tokio::sync::Mutex<()>,
}

/// The shared HTTP/2 connection and when it was last used.
struct Shared {
    sender: http2::SendRequest<HyperBody>,
    used: Instant,
}

/// A new connection.
enum Opened {
    H1(Conn),
    H2(http2::SendRequest<HyperBody>),
}

/// Idle connections of one kind, one queue per connection worker
/// (`crate::workers`): a worker reuses the connections it opened, whose
/// sockets are registered with its own reactor.
struct IdleQueues<C> {
    slots: Box<[Mutex<VecDeque<Idle<C>>>]>,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// An idle connection that can tell whether it is still open.
trait Reusable {
    fn is_open(&mut self) -> bool;
}

impl Reusable for Conn {
    fn is_open(&mut self) -> bool {
        self.is_idle_open()
    }
}

impl Reusable for SendRequest<HyperBody> {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

impl<C: Reusable> IdleQueues<C> {
    fn new() -> Self {
        Self {
            slots: (0..crate::workers::SLOTS)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<C>>> {
        // The queue is consistent after every operation; a panic elsewhere
        // while it was held leaves nothing half-done.
        self.slots[crate::workers::current() % crate::workers::SLOTS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<C> {
        let mut idle = self.slot();
        while let Some(mut c) = idle.pop_back() {
            if c.since.elapsed() > POOL_IDLE {
                // The newest is too old, so all are.
                idle.clear();
                return None;
            }
            if c.conn.is_open() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Puts a connection whose response was read to its end back; drops
    /// the oldest ones that expired or closed, and one beyond
    /// [`MAX_IDLE`].
    fn checkin(&self, mut conn: C) {
        if !conn.is_open() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.slot();
        while idle
            .front_mut()
            .is_some_and(|c| now.duration_since(c.since) > POOL_IDLE || !c.conn.is_open())
        {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `upstream` (scheme and authority are used; a path is the
    /// route's business), speaking `protocol` to an `http` upstream. `tls`
    /// must already offer ALPN `h2` and `http/1.1`.
    pub(crate) fn new(
        upstream: &Uri,
        protocol: Protocol,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::new(format!("upstream {upstream} {why}"));
        let authority: &Authority = upstream.authority().ok_or_else(|| bad("has no host"))?;
        let https = match upstream.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        // `[::1]` in a URI is `::1` to the resolver and to TLS.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("has a host that cannot be sent in a Host header"))?;
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| bad("has a host that is not a valid TLS server name"))?;
            Some((TlsConnector::from(Arc::clone(tls)), name))
        } else {
            None
        };
        let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
        let h2c = !https && protocol == Protocol::H2c;
        Ok(Self {
            origin: format!("{scheme}://{authority}"),
            host,
            port,
            host_header,
            scheme,
            authority: authority.clone(),
            tls,
            h2c,
            idle: IdleQueues::new(),
            idle_hyper: IdleQueues::new(),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(h2c),
            opening: tokio::sync::Mutex::new(()),
        })
    }

    /// The `Host` header for requests to this upstream.
    pub(crate) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// Sends `req` (origin-form URI, `Host` set) on the shared HTTP/2
    /// connection, a pooled HTTP/1.1 one, or a new one when none is there,
    /// waiting at most `timeout` for the response head (connecting
    /// included). On expiry the request is abandoned and its connection
    /// closed, never reused.
    pub(crate) async fn send_within(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (parts, body) = req.into_parts();
        match body {
            RequestBody::Buffered(body) if self.goes_direct(&parts.headers) => {
                self.send_direct(&parts, &[], &body, timeout).await
            }
            // The other paths are boxed: this future stays as small as the
            // direct path's (futures are moved by copying their whole size).
            body => {
                Box::pin(self.send_hyper_within(Request::from_parts(parts, body), timeout)).await
            }
        }
    }

    /// Whether a request whose body is in memory goes on the direct
    /// HTTP/1.1 path: the upstream speaks HTTP/1.1 and the request is
    /// framed by its length (a transfer coding the caller chose, such as
    /// `gzip`, goes through hyper's client, which keeps it).
    fn goes_direct(&self, headers: &HeaderMap) -> bool {
        !self.speaks_h2.load(Ordering::Relaxed) && !headers.contains_key(header::TRANSFER_ENCODING)
    }

    /// [`send_within`](Self::send_within) for a request whose body is in
    /// memory, its head borrowed so that the caller can send it again (after
    /// a `401`), with `extra` headers in place of the head's of the same
    /// names (`Authorization`, `DPoP`). Over HTTP/1.1 nothing of the head
    /// is copied but its bytes.
    pub(crate) async fn send_buffered(
        self: &Arc<Self>,
        head: &Parts,
        extra: &[(HeaderName, HeaderValue)],
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if self.goes_direct(&head.headers) {
            return self.send_direct(head, extra, body, timeout).await;
        }
        Box::pin(self.send_hyper_within(owned(head, extra, body), timeout)).await
    }

    /// Sends `req` with hyper's client within `timeout`.
    async fn send_hyper_within(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match tokio::time::timeout(timeout, self.send_hyper(req)).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout_error(timeout)),
        }
    }

    fn timeout_error(&self, after: Duration) -> UpstreamError {
        UpstreamError::Timeout {
            origin: self.origin.clone(),
            after,
        }
    }

    /// Sends `req` with hyper's client: on the shared HTTP/2 connection,
    /// or (a streamed body) on a pooled or new HTTP/1.1 connection of
    /// hyper's.
    async fn send_hyper(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if self.speaks_h2.load(Ordering::Relaxed) {
            return self.send_h2_shared(req).await;
        }
        let mut req = req.map(HyperBody::from);
        while let Some(mut sender) = self.idle_hyper.checkout() {
            // Resolves at once for an idle connection; fails for one that
            // closed since.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, Some(sender))),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under us. Try the
                    // next one.
                    Some(unsent) => req = unsent,
                    None => return Err(self.http_error(e.into_error())),
                },
            }
        }
        Box::pin(self.send_new(req)).await
    }

    /// Sends `req` on the shared HTTP/2 connection (opened if there is
    /// none).
    async fn send_h2_shared(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut req = req.map(HyperBody::from);
        // Twice at most: a connection that went away before taking the
        // request is replaced once.
        for _ in 0..2 {
            let sender = match self.shared() {
                Some(s) => s,
                None => {
                    // One connection at a time: the first to open it
                    // shares it (the lock is let go before the request is
                    // sent).
                    let opening = self.opening.lock().await;
                    match self.shared() {
                        Some(s) => s,
                        None => match Box::pin(self.connect()).await? {
                            Opened::H2(s) => {
                                self.share(&s);
                                s
                            }
                            Opened::H1(conn) => {
                                drop(opening);
                                return self.send_hyper_h1(conn, req).await;
                            }
                        },
                    }
                }
            };
            match self.send_h2(sender, req).await? {
                Ok(resp) => return Ok(resp),
                Err(unsent) => req = unsent,
            }
        }
        Err(self
            .http_error_msg("the HTTP/2 connection went away twice before the request was sent"))
    }

    /// Sends a request whose body is in memory on a pooled HTTP/1.1
    /// connection driven by this task ([`h1`]), or on a new connection,
    /// within `timeout`. A pooled connection that fails before any response
    /// comes (the upstream had just closed it) is followed by another one
    /// for an idempotent request; a request the upstream may have acted on
    /// is never sent twice.
    async fn send_direct(
        self: &Arc<Self>,
        head: &Parts,
        extra: &[(HeaderName, HeaderValue)],
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let deadline = Instant::now() + timeout;
        let encoded = h1::encode(head, extra, &self.host_header, body);
        let idempotent = head.method.is_idempotent();
        let failed = |error| match error {
            H1Error::Timeout => self.timeout_error(timeout),
            error => self.h1_error(error),
        };
        while let Some(conn) = self.idle.checkout() {
            match conn.exchange(&encoded, deadline).await {
                Ok(resp) => return Ok(self.wrap_direct(resp)),
                Err(e) if e.before_response() && idempotent => {
                    tracing::debug!(origin = %self.origin, error = %e, "a pooled connection failed before the response; sending on another");
                }
                Err(error) => return Err(failed(error)),
            }
        }
        // Opening a connection (TCP, TLS, a handshake) is a large future:
        // boxed, so that a pooled request's future stays small.
        Box::pin(self.send_direct_new(head, extra, body, &encoded, deadline, timeout)).await
    }

    /// [`send_direct`](Self::send_direct)'s request on a new connection.
    async fn send_direct_new(
        self: &Arc<Self>,
        head: &Parts,
        extra: &[(HeaderName, HeaderValue)],
        body: &Bytes,
        encoded: &h1::Encoded,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let opened = tokio::time::timeout_at(deadline.into(), self.connect())
            .await
            .map_err(|_| self.timeout_error(timeout))??;
        match opened {
            Opened::H1(conn) => match conn.exchange(encoded, deadline).await {
                Ok(resp) => Ok(self.wrap_direct(resp)),
                Err(H1Error::Timeout) => Err(self.timeout_error(timeout)),
                Err(error) => Err(self.h1_error(error)),
            },
            Opened::H2(sender) => {
                // A TLS upstream that now chose HTTP/2.
                self.share(&sender);
                let req = owned(head, extra, body).map(HyperBody::from);
                let sent = tokio::time::timeout_at(deadline.into(), self.send_h2(sender, req))
                    .await
                    .map_err(|_| self.timeout_error(timeout))??;
                match sent {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(self.http_error_msg("the new HTTP/2 connection closed at once")),
                }
            }
        }
    }

    /// Sends `req` on a new connection.
    async fn send_new(
        self: &Arc<Self>,
        req: Request<HyperBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match Box::pin(self.connect()).await? {
            Opened::H1(conn) => self.send_hyper_h1(conn, req).await,
            Opened::H2(sender) => {
                self.share(&sender);
                match self.send_h2(sender, req).await? {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(self.http_error_msg("the new HTTP/2 connection closed at once")),
                }
            }
        }
    }

    /// Sends `req` with hyper's HTTP/1.1 client on a new connection, which
    /// then stays with hyper's client.
    async fn send_hyper_h1(
        self: &Arc<Self>,
        conn: Conn,
        mut req: Request<HyperBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut sender, connection) = http1::handshake(TokioIo::new(conn.into_stream()))
            .await
            .map_err(|e| self.http_error(e))?;
        self.spawn(connection);
        if req.version() == Version::HTTP_2 {
            let (mut parts, body) = req.into_parts();
            self.as_h1(&mut parts);
            req = Request::from_parts(parts, body);
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, Some(sender))),
            Err(e) => Err(self.http_error(e.into_error())),
        }
    }

    /// Makes `sender`'s connection the one every request shares.
    fn share(&self, sender: &http2::SendRequest<HyperBody>) {
        *self.h2_slot() = Some(Shared {
            sender: sender.clone(),
            used: Instant::now(),
        });
    }

    /// Sends `req` on an HTTP/2 connection. `Ok(Err(req))`: the connection
    /// had closed and the request was not sent.
    async fn send_h2(
        self: &Arc<Self>,
        mut sender: http2::SendRequest<HyperBody>,
        req: Request<HyperBody>,
    ) -> Result<Result<Response<UpstreamBody>, Request<HyperBody>>, UpstreamError> {
        let req = self.as_h2(req);
        if sender.ready().await.is_err() {
            self.forget_closed();
            return Ok(Err(req));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(Ok(self.wrap(resp, None))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => {
                    self.forget_closed();
                    Ok(Err(unsent))
                }
                None => Err(self.http_error(e.into_error())),
            },
        }
    }

    /// `req` as HTTP/2 sends it: the URI absolute (`:scheme`,
    /// `:authority`), no `Host`.
    fn as_h2(&self, mut req: Request<HyperBody>) -> Request<HyperBody> {
        if req.version() != Version::HTTP_2 {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
        req
    }

    /// A request head as HTTP/1.1 sends it: origin-form, with `Host`.
    fn as_h1(&self, parts: &mut http::request::Parts) {
        if parts.version == Version::HTTP_2 {
            if let Some(pq) = parts.uri.path_and_query().cloned() {
                parts.uri = Uri::from(pq);
            }
            parts.headers.insert(header::HOST, self.host_header.clone());
            parts.version = Version::HTTP_11;
        }
    }

    fn h2_slot(&self) -> std::sync::MutexGuard<'_, Option<Shared>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared HTTP/2 connection, if it is open and was used within
    /// [`POOL_IDLE`].
    fn shared(&self) -> Option<http2::SendRequest<HyperBody>> {
        let mut slot = self.h2_slot();
        let now = Instant::now();
        match &mut *slot {
            Some(s) if !s.sender.is_closed() && now.duration_since(s.used) <= POOL_IDLE => {
                s.used = now;
                Some(s.sender.clone())
            }
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Drops the shared connection if it closed.
    fn forget_closed(&self) {
        let mut slot = self.h2_slot();
        if slot.as_ref().is_some_and(|s| s.sender.is_closed()) {
            *slot = None;
        }
    }

    fn http_error_msg(&self, what: &'static str) -> UpstreamError {
        UpstreamError::Protocol {
            origin: self.origin.clone(),
            what,
        }
    }

    fn http_error(&self, error: hyper::Error) -> UpstreamError {
        UpstreamError::Http {
            origin: self.origin.clone(),
            error,
        }
    }

    fn h1_error(&self, error: H1Error) -> UpstreamError {
        UpstreamError::H1 {
            origin: self.origin.clone(),
            error,
        }
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: Option<SendRequest<HyperBody>>,
    ) -> Response<UpstreamBody> {
        resp.map(|body| UpstreamBody {
            body: Inner::Hyper {
                body,
                home: sender.map(|s| (Arc::clone(self), s)),
            },
            on_trailers: None,
        })
    }

    fn wrap_direct(self: &Arc<Self>, resp: Response<H1Body>) -> Response<UpstreamBody> {
        resp.map(|body| UpstreamBody {
            body: Inner::Direct {
                body,
                pool: Arc::clone(self),
            },
            on_trailers: None,
        })
    }

    async fn connect(&self) -> Result<Opened, UpstreamError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout {
                origin: self.origin.clone(),
            }),
        }
    }

    async fn open(&self) -> Result<Opened, UpstreamError> {
        let origin = || self.origin.clone();
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|error| UpstreamError::Resolve {
                origin: origin(),
                error,
            })?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(error)) => {
                return Err(UpstreamError::Connect {
                    origin: origin(),
                    error,
                })
            }
            (None, None) => return Err(UpstreamError::NoAddress { origin: origin() }),
        };
        let _ = tcp.set_nodelay(true);
        let http = |error| UpstreamError::Http {
            origin: origin(),
            error,
        };
        match &self.tls {
            None if self.h2c => {
                let (sender, conn) = h2_builder()
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(http)?;
                self.spawn(conn);
                Ok(Opened::H2(sender))
            }
            None => Ok(Opened::H1(Conn::new(Stream::Tcp(tcp)))),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|error| UpstreamError::Tls {
                        origin: origin(),
                        error,
                    })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                self.speaks_h2.store(h2, Ordering::Relaxed);
                if h2 {
                    let (sender, conn) = h2_builder()
                        .handshake(TokioIo::new(tls))
                        .await
                        .map_err(http)?;
                    self.spawn(conn);
                    return Ok(Opened::H2(sender));
                }
                Ok(Opened::H1(Conn::new(Stream::Tls(Box::new(tls)))))
            }
        }
    }

    fn spawn<C>(&self, conn: C)
    where
        C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let origin = self.origin.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%origin, %error, "upstream connection ended with an error");
            }
        });
    }
}

/// The HTTP/2 client settings for upstream connections.
fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    b
}

/// What is told a response's trailers (gRPC's status is there).
pub(crate) type TrailersHook = Box<dyn FnOnce(&HeaderMap) + Send + Sync>;

/// An upstream response's body, streamed to the caller. When it has been
/// read to its end, its HTTP/1.1 connection goes back to the route's pool.
pub struct UpstreamBody {
    body: Inner,
    on_trailers: Option<TrailersHook>,
}

/// Where a body comes from.
enum Inner {
    /// hyper's client: HTTP/2, or HTTP/1.1 after a streamed request body.
    Hyper {
        body: Incoming,
        home: Option<(Arc<Pool>, SendRequest<HyperBody>)>,
    },
    /// The request's own HTTP/1.1 connection ([`h1`]).
    Direct { body: H1Body, pool: Arc<Pool> },
}

/// Why an upstream response's body could not be read to its end (the
/// upstream closed early, sent a malformed chunk, ...).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UpstreamBodyError(BodyErrorKind);

#[derive(Debug, thiserror::Error)]
enum BodyErrorKind {
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    H1(H1Error),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Calls `hook` with the response's trailers, if it has any.
    pub(crate) fn on_trailers(&mut self, hook: TrailersHook) {
        self.on_trailers = Some(hook);
    }

    /// Gives the connection back to its pool if the body has ended and the
    /// connection can be reused.
    fn release(&mut self) {
        match &mut self.body {
            Inner::Hyper { home, .. } => {
                if let Some((pool, sender)) = home.take() {
                    pool.idle_hyper.checkin(sender);
                }
            }
            Inner::Direct { body, pool } => {
                if let Some(conn) = body.take_reusable() {
                    pool.idle.checkin(conn);
                }
            }
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let polled = match &mut self.body {
            Inner::Hyper { body, home } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    // An error: the connection is not reused.
                    *home = None;
                }
                polled.map_err(|e| UpstreamBodyError(BodyErrorKind::Hyper(e)))
            }
            Inner::Direct { body, .. } => body
                .poll_frame(cx)
                .map_err(|e| UpstreamBodyError(BodyErrorKind::H1(e))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(hook) = self.on_trailers.take() {
                    hook(trailers);
                }
            }
        }
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Direct { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Direct { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was not read to its end leaves its connection
        // unusable: it is closed.
        if self.is_end_stream() {
            self.release();
        }
    }
}

/// A request of its own made of a borrowed head, `extra` headers in place
/// of the head's of the same names, and a body in memory.
fn owned(head: &Parts, extra: &[(HeaderName, HeaderValue)], body: &Bytes) -> Request<RequestBody> {
    let mut req = Request::from_parts(head.clone(), RequestBody::Buffered(body.clone()));
    for (name, value) in extra {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    req
}
