//! Connections to one route's upstream, on hyper's connection API:
//! keep-alive HTTP/1.1 connections, or one multiplexed HTTP/2 connection.
//!
//! Each route has its own [`Pool`]. Which protocol: an `https` upstream is
//! offered ALPN `h2` and `http/1.1` and the TLS handshake decides; an
//! `http` upstream speaks HTTP/1.1, or HTTP/2 with prior knowledge when the
//! route says `protocol = "h2c"`.
//!
//! **HTTP/2.** One connection per upstream carries every request at once
//! (as many streams as the upstream allows; beyond that requests wait for
//! a stream). While the upstream is known to speak h2, opening a connection
//! is serialised, so a burst of first requests opens one connection, not
//! one each. A connection that went away (GOAWAY, closed) is replaced on
//! the next request; a request it refused before sending is sent on the
//! new one. Unused for [`POOL_IDLE`], it is let go. HTTP/2 PINGs every
//! [`H2_KEEPALIVE`] find a dead upstream.
//!
//! **HTTP/1.1.** A request takes the most recently used
//! idle connection (or opens one: DNS, TCP with `TCP_NODELAY`, TLS with SNI
//! and ALPN for `https` upstreams, all within
//! [`CONNECT_TIMEOUT`]); the connection goes back to the pool when the
//! response body has been read to its end ([`UpstreamBody`]). A response
//! body dropped before its end, or a connection the upstream closed, is
//! never reused. A request that a pooled connection refused before sending
//! it (the upstream had just closed it) is sent on another one, as
//! hyper-util's pooled client does; a request that was sent is never sent
//! twice here.
//!
//! Idle connections older than [`POOL_IDLE`] are dropped when the pool is
//! next used; at most [`MAX_IDLE`] are kept per route and connection
//! worker: each worker (`[serve] workers`) reuses the connections it
//! opened, so a request and its upstream connection are on one thread. A
//! response head that does not come within the route's timeout abandons
//! the request (its connection is dropped with it, so it is never reused).
//!
//! Why not hyper-util's pooled client: it hashes the origin and clones its
//! connector on every request and hands each response's connection back
//! through a spawned task; for a gateway with one origin per route those
//! costs were a fifth of the CPU per forwarded request (docs/BENCHMARKS.md).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{header, HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, Protocol};

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
pub(crate) type RequestBody = Either<Full<Bytes>, Incoming>;

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
    /// Idle HTTP/1.1 connections, one queue per connection worker
    /// (`crate::workers`): a worker reuses the connections it opened,
    /// whose tasks run on its own thread.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    /// The HTTP/2 connection all requests share, once there is one.
    h2: Mutex<Option<Shared>>,
    /// The upstream spoke HTTP/2 last time (or is h2c): connections are
    /// opened one at a time, under `opening`.
    speaks_h2: AtomicBool,
    opening: tokio::sync::Mutex<()>,
}

/// The shared HTTP/2 connection and when it was last used.
struct Shared {
    sender: http2::SendRequest<RequestBody>,
    used: Instant,
}

/// A new connection.
enum Opened {
    H1(SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
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
            idle: (0..crate::workers::SLOTS)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(h2c),
            opening: tokio::sync::Mutex::new(()),
        })
    }

    /// The `Host` header for requests to this upstream.
    pub(crate) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// [`send`](Self::send), waiting at most `timeout` for the response
    /// head (connecting included). On expiry the request is abandoned and
    /// its connection closed, never reused.
    pub(crate) async fn send_within(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match tokio::time::timeout(timeout, self.send(req)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                origin: self.origin.clone(),
                after: timeout,
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on the shared HTTP/2
    /// connection, a pooled HTTP/1.1 one, or a new one when none is there.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if self.speaks_h2.load(Ordering::Relaxed) {
            // Twice at most: a connection that went away before taking the
            // request is replaced once.
            for _ in 0..2 {
                let sender = match self.shared() {
                    Some(s) => s,
                    None => {
                        // One connection at a time: the first to open it
                        // shares it (the lock is let go before the request
                        // is sent).
                        let opening = self.opening.lock().await;
                        match self.shared() {
                            Some(s) => s,
                            None => match Box::pin(self.connect()).await? {
                                Opened::H2(s) => {
                                    self.share(&s);
                                    s
                                }
                                Opened::H1(sender) => {
                                    drop(opening);
                                    return self.send_h1(sender, req).await;
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
            return Err(self.http_error_msg(
                "the HTTP/2 connection went away twice before the request was sent",
            ));
        }
        while let Some(mut sender) = self.checkout() {
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
        // Opening a connection (TCP, TLS, a handshake) is a large future:
        // boxed, so that a pooled request's future stays small (futures are
        // moved by copying their whole size).
        Box::pin(self.send_new(req)).await
    }

    /// Sends `req` on a new connection.
    async fn send_new(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match Box::pin(self.connect()).await? {
            Opened::H1(sender) => self.send_h1(sender, req).await,
            Opened::H2(sender) => {
                self.share(&sender);
                match self.send_h2(sender, req).await? {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(self.http_error_msg("the new HTTP/2 connection closed at once")),
                }
            }
        }
    }

    /// Sends `req` on a new HTTP/1.1 connection.
    async fn send_h1(
        self: &Arc<Self>,
        mut sender: SendRequest<RequestBody>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let req = self.as_h1(req);
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, Some(sender))),
            Err(e) => Err(self.http_error(e.into_error())),
        }
    }

    /// Makes `sender`'s connection the one every request shares.
    fn share(&self, sender: &http2::SendRequest<RequestBody>) {
        *self.h2_slot() = Some(Shared {
            sender: sender.clone(),
            used: Instant::now(),
        });
    }

    /// Sends `req` on an HTTP/2 connection. `Ok(Err(req))`: the connection
    /// had closed and the request was not sent.
    async fn send_h2(
        self: &Arc<Self>,
        mut sender: http2::SendRequest<RequestBody>,
        req: Request<RequestBody>,
    ) -> Result<Result<Response<UpstreamBody>, Request<RequestBody>>, UpstreamError> {
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
    fn as_h2(&self, mut req: Request<RequestBody>) -> Request<RequestBody> {
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

    /// `req` as HTTP/1.1 sends it: origin-form, with `Host`.
    fn as_h1(&self, mut req: Request<RequestBody>) -> Request<RequestBody> {
        if req.version() == Version::HTTP_2 {
            if let Some(pq) = req.uri().path_and_query().cloned() {
                *req.uri_mut() = Uri::from(pq);
            }
            req.headers_mut()
                .insert(header::HOST, self.host_header.clone());
            *req.version_mut() = Version::HTTP_11;
        }
        req
    }

    fn h2_slot(&self) -> std::sync::MutexGuard<'_, Option<Shared>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared HTTP/2 connection, if it is open and was used within
    /// [`POOL_IDLE`].
    fn shared(&self) -> Option<http2::SendRequest<RequestBody>> {
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

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: Option<SendRequest<RequestBody>>,
    ) -> Response<UpstreamBody> {
        resp.map(|body| UpstreamBody {
            body,
            home: sender.map(|s| (Arc::clone(self), s)),
            on_trailers: None,
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The queue is consistent after every operation; a panic elsewhere
        // while it was held leaves nothing half-done.
        self.idle[crate::workers::current() % crate::workers::SLOTS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle();
        while let Some(c) = idle.pop_back() {
            if c.since.elapsed() > POOL_IDLE {
                // The newest is too old, so all are.
                idle.clear();
                return None;
            }
            if !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Puts a connection whose response was read to its end back.
    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) > POOL_IDLE || c.sender.is_closed())
        {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
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
            None => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(http)?;
                self.spawn(conn);
                Ok(Opened::H1(sender))
            }
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
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
                self.spawn(conn);
                Ok(Opened::H1(sender))
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
    body: Incoming,
    home: Option<(Arc<Pool>, SendRequest<RequestBody>)>,
    on_trailers: Option<TrailersHook>,
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

    fn release(&mut self) {
        if let Some((pool, sender)) = self.home.take() {
            pool.checkin(sender);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(hook) = self.on_trailers.take() {
                    hook(trailers);
                }
            }
        }
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // An error: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was not read to its end leaves its connection
        // unusable: hyper closes it.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
