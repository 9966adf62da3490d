//! Keep-alive HTTP/1.1 connections to one route's upstream, on hyper's
//! connection API.
//!
//! Each route has its own [`Pool`]. A request takes the most recently used
//! idle connection (or opens one: DNS, TCP with `TCP_NODELAY`, TLS with SNI
//! and ALPN `http/1.1` for `https` upstreams, all within
//! [`CONNECT_TIMEOUT`]); the connection goes back to the pool when the
//! response body has been read to its end ([`UpstreamBody`]). A response
//! body dropped before its end, or a connection the upstream closed, is
//! never reused. A request that a pooled connection refused before sending
//! it (the upstream had just closed it) is sent on another one, as
//! hyper-util's pooled client does; a request that was sent is never sent
//! twice here.
//!
//! Idle connections older than [`POOL_IDLE`] are dropped when the pool is
//! next used; at most [`MAX_IDLE`] are kept per route. A response head that
//! does not come within the route's timeout abandons the request (its
//! connection is dropped with it, so it is never reused).
//!
//! Why not hyper-util's pooled client: it hashes the origin and clones its
//! connector on every request and hands each response's connection back
//! through a spawned task; for a gateway with one origin per route those
//! costs were a fifth of the CPU per forwarded request (docs/BENCHMARKS.md).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::ConfigError;

/// How long opening a connection to an upstream may take: DNS, TCP and TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection is kept for reuse.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// The most idle connections kept per route.
pub const MAX_IDLE: usize = 512;

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
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: Mutex<VecDeque<Idle>>,
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
    /// route's business). `tls` must already offer ALPN `http/1.1`.
    pub(crate) fn new(
        upstream: &Uri,
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
        let scheme = if https { "https" } else { "http" };
        Ok(Self {
            origin: format!("{scheme}://{authority}"),
            host,
            port,
            host_header,
            tls,
            idle: Mutex::new(VecDeque::new()),
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

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection, or
    /// on a new one when none is idle.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        while let Some(mut sender) = self.checkout() {
            // Resolves at once for an idle connection; fails for one that
            // closed since.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under us. Try the
                    // next one.
                    Some(unsent) => req = unsent,
                    None => return Err(self.http_error(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender)),
            Err(e) => Err(self.http_error(e.into_error())),
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
        sender: SendRequest<RequestBody>,
    ) -> Response<UpstreamBody> {
        resp.map(|body| UpstreamBody {
            body,
            home: Some((Arc::clone(self), sender)),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The queue is consistent after every operation; a panic elsewhere
        // while it was held leaves nothing half-done.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
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

    async fn connect(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout {
                origin: self.origin.clone(),
            }),
        }
    }

    async fn open(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
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
            None => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(http)?;
                self.spawn(conn);
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|error| UpstreamError::Tls {
                        origin: origin(),
                        error,
                    })?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
                self.spawn(conn);
                Ok(sender)
            }
        }
    }

    fn spawn<T>(&self, conn: http1::Connection<T, RequestBody>)
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let origin = self.origin.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%origin, %error, "upstream connection ended with an error");
            }
        });
    }
}

/// An upstream response's body, streamed to the caller. When it has been
/// read to its end, its connection goes back to the route's pool.
pub struct UpstreamBody {
    body: Incoming,
    home: Option<(Arc<Pool>, SendRequest<RequestBody>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
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
