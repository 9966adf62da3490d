//! [`serve`]: the accept loop, HTTP/1.1 and HTTP/2 connections, their
//! limits, and the graceful drain on shutdown.
//!
//! One listener speaks both: a connection that opens with the HTTP/2
//! preface (`PRI * HTTP/2.0`, "prior knowledge", what gRPC clients send on
//! a plain channel and `curl --http2-prior-knowledge`) is served as h2c,
//! anything else as HTTP/1.1 (hyper-util's `auto` builder, with upgrades
//! kept working for HTTP/1.1).
//!
//! The connection layer comes before routing and knows nothing of it:
//!
//! - **A cap on connections.** At most `max_connections` client connections
//!   are open at once, lowered to fit the process's open-file limit
//!   ([`raise_fd_limit`] raises that limit to its hard maximum first).
//!   Beyond the cap, `health_connections` more are accepted for `/healthz`
//!   and `/readyz` only (anything else gets `503 overloaded`), one request
//!   each, so probes still answer while the gateway is saturated (a reserve
//!   connection must send its request within [`HEALTH_HEADER_READ_TIMEOUT`],
//!   so idle clients cannot hold the reserve for long). Beyond
//!   both, a connection is accepted and closed at once, and counted in
//!   `tokencache_connections_refused_total`. Open connections are in
//!   `tokencache_connections_open{kind="gateway"|"health"}`.
//! - **Timeouts.** A connection must deliver a complete request head
//!   within `header_read_timeout` of its opening, or of the head's first
//!   byte on a kept-alive connection; a kept-alive connection idle for
//!   `idle_timeout` between requests is closed, and so is one whose client
//!   reads nothing of a response for `idle_timeout` (a slow reader: each
//!   closing counted in `tokencache_connections_timed_out_total{reason=
//!   "header_read"|"idle"|"write_stalled"}`). hyper's own header-read
//!   timer (on a Tokio timer) backs both up. A head larger than
//!   `max_header_bytes` is refused (431).
//! - **HTTP/2.** The same cap, reserve and timeouts hold per connection: a
//!   new h2 connection must deliver its first request within
//!   `header_read_timeout`; one with no stream open for `idle_timeout` is
//!   closed (PINGs and other frames do not keep it open); a stalled write
//!   is cut as for HTTP/1.1. At most [`H2_MAX_CONCURRENT_STREAMS`] streams
//!   at once per connection, a header list of at most `max_header_bytes`,
//!   and keep-alive PINGs every `idle_timeout` (a peer that does not answer
//!   within [`H2_PING_TIMEOUT`] is cut). A reserve connection answers one
//!   request, then goes away (GOAWAY). hyper's defaults against reset
//!   floods (rapid reset) stay on.
//! - **Drain.** On shutdown the listener closes, connections that are idle
//!   or still sending a request head are closed at once (they hold no
//!   request to finish), and those with a request in flight finish it and
//!   close, for up to `drain`; then the rest are cut. An h2 connection
//!   with streams open gets a GOAWAY and finishes them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admin::{self, AdminListener};
use crate::config::ConnectionLimits;
use crate::response::{self, Body};
use crate::Sidecar;

/// File descriptors kept free of client connections: stores, the IdP's
/// connections, idle upstream connections, log files.
const FD_HEADROOM: u64 = 64;

/// The header-read timeout of a reserve (health-only) connection, when
/// shorter than `header_read_timeout`: a probe sends its request at once,
/// and a client that holds a reserve connection without one loses it fast.
pub const HEALTH_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The most streams one HTTP/2 client connection may have open at once
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`): what the connection cap means for
/// h2 clients, that carry many requests on one connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long an HTTP/2 client has to answer a keep-alive PING before its
/// connection is cut.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How a [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drained {
    /// Every request in flight completed within the drain time.
    Complete,
    /// The drain time ran out; the remaining connections were cut.
    TimedOut,
}

/// Raises this process's soft limit on open files to its hard limit, so
/// that the connection cap is not lowered needlessly. Returns the limit now
/// in force (`None`: unlimited). Call it once at start, before serving.
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// How many client connections fit the open-file limit: each may hold an
/// upstream connection too, and [`FD_HEADROOM`] stays free.
fn fd_capacity() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        None => usize::MAX,
        Some(n) => usize::try_from(n.saturating_sub(FD_HEADROOM) / 2).unwrap_or(usize::MAX),
    }
}

/// The caps in force: (gateway connections, health-only connections).
fn caps(limits: &ConnectionLimits) -> (usize, usize) {
    let s = &limits.settings;
    let fit = fd_capacity().max(2);
    let health = s.health_connections.min(fit / 2);
    let main = s.max_connections.min(fit - health).max(1);
    if main < s.max_connections {
        tracing::warn!(
            max_connections = s.max_connections,
            lowered_to = main,
            "[serve] max_connections does not fit the open-file limit; lowered"
        );
    }
    (main, health)
}

/// What the drain tells connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    Draining,
    Cut,
}

/// Serves `sidecar` on `listener` until `shutdown` completes, then stops
/// accepting, closes connections that hold no request, lets requests in
/// flight finish for up to the drain time, and returns. `limits` is a
/// [`ConnectionLimits`] ([`ServeConfig::limits`](crate::ServeConfig::limits)),
/// or only the drain time (a `Duration`) with the default limits.
pub async fn serve(
    sidecar: Sidecar,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    limits: impl Into<ConnectionLimits>,
) -> Drained {
    serve_starting(
        listener,
        std::future::ready(Some(sidecar)),
        shutdown,
        limits,
    )
    .await
}

/// [`serve`] for a sidecar still being built: `listener` serves at once.
/// Until `sidecar` resolves, `/healthz` answers 200, `/readyz` 503
/// (`"starting": true`) and everything else `503 starting` (with
/// `Retry-After: 1`); then the sidecar answers. A `sidecar` that resolves to
/// `None` (start-up failed) ends serving as `shutdown` would.
pub async fn serve_starting(
    listener: TcpListener,
    sidecar: impl Future<Output = Option<Sidecar>>,
    shutdown: impl Future<Output = ()>,
    limits: impl Into<ConnectionLimits>,
) -> Drained {
    serve_with_admin(listener, None, sidecar, shutdown, limits).await
}

/// [`serve_starting`] with an admin listener (`[serve] admin_listen`,
/// [`AdminListener`]): health, readiness, metrics and the admin API on
/// their own address, with their own connection cap
/// (`admin_max_connections`) and the same timeouts and drain (see
/// [`AdminListener`]).
pub async fn serve_with_admin(
    listener: TcpListener,
    admin: Option<AdminListener>,
    sidecar: impl Future<Output = Option<Sidecar>>,
    shutdown: impl Future<Output = ()>,
    limits: impl Into<ConnectionLimits>,
) -> Drained {
    let limits = limits.into();
    let admin_cap = Arc::new(Semaphore::new(
        admin.as_ref().map_or(0, |a| a.max_connections),
    ));
    let slot: Arc<OnceLock<Sidecar>> = Arc::new(OnceLock::new());
    let mut sidecar = std::pin::pin!(sidecar);
    let mut starting = true;
    let (main, health) = caps(&limits);
    let main = Arc::new(Semaphore::new(main));
    let health = Arc::new(Semaphore::new(health));
    let (phase, watching) = watch::channel(Phase::Serving);
    let mut shutdown = std::pin::pin!(shutdown);
    let workers = match limits.settings.workers {
        0 => None,
        n => match crate::workers::Workers::start(n) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, workers = n, "could not start the connection workers; serving connections on the main runtime");
                None
            }
        },
    };
    // Puts the built sidecar in place; `false` when start-up failed.
    let install = |built: Option<Sidecar>| match built {
        Some(s) => {
            let _ = slot.set(s);
            true
        }
        None => false,
    };
    loop {
        // A sidecar that is ready is installed before anything more is
        // accepted: a connection accepted in the same turn (and served at
        // once on a worker thread) must not find the slot empty.
        if starting {
            let ready = tokio::select! {
                biased;
                built = &mut sidecar => Some(built),
                () = std::future::ready(()) => None,
            };
            if let Some(built) = ready {
                starting = false;
                if !install(built) {
                    break;
                }
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a
                        // little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (permit, kind) = if let Ok(p) = Arc::clone(&main).try_acquire_owned() {
                    (p, Kind::Gateway)
                } else if let Ok(p) = Arc::clone(&health).try_acquire_owned() {
                    (p, Kind::HealthOnly)
                } else {
                    // Both caps reached: closed at once.
                    metrics::counter!("tokencache_connections_refused_total").increment(1);
                    tracing::debug!(%peer, "connection refused: max_connections and health_connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (slot, watching) = (Arc::clone(&slot), watching.clone());
                match &workers {
                    Some(w) => w.spawn(stream, move |stream| {
                        connection(stream, slot, limits, kind, permit, watching)
                    }),
                    None => {
                        tokio::spawn(connection(stream, slot, limits, kind, permit, watching));
                    }
                }
            }
            accepted = accept_admin(admin.as_ref()) => {
                let (stream, access) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&admin_cap).try_acquire_owned() else {
                    metrics::counter!("tokencache_connections_refused_total").increment(1);
                    tracing::debug!("admin connection refused: admin_max_connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    Arc::clone(&slot),
                    limits,
                    Kind::Admin(access),
                    permit,
                    watching.clone(),
                ));
            }
            built = &mut sidecar, if starting => {
                starting = false;
                if !install(built) {
                    break;
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(admin);
    drop(watching);
    tracing::info!(
        drain_seconds = limits.drain.as_secs_f64(),
        "shutting down: draining requests in flight"
    );
    let _ = phase.send(Phase::Draining);
    tokio::select! {
        // Every connection task holds a receiver until it ends.
        () = phase.closed() => {
            tracing::info!("drained: every request in flight completed");
            Drained::Complete
        }
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!(drain_seconds = limits.drain.as_secs_f64(), "drain time ran out; cutting the remaining connections");
            let _ = phase.send(Phase::Cut);
            Drained::TimedOut
        }
    }
}

/// Accepts on the admin listener, if there is one (never resolves
/// otherwise).
async fn accept_admin(
    admin: Option<&AdminListener>,
) -> std::io::Result<(TcpStream, Arc<admin::Access>)> {
    match admin {
        Some(a) => {
            let (stream, _) = a.listener.accept().await?;
            Ok((stream, Arc::clone(&a.access)))
        }
        None => std::future::pending().await,
    }
}

/// What a connection may do.
#[derive(Clone)]
enum Kind {
    /// Anything, with keep-alive.
    Gateway,
    /// One request, to `/healthz` or `/readyz`.
    HealthOnly,
    /// The admin listener's: health, readiness, metrics, the admin API.
    Admin(Arc<admin::Access>),
}

impl Kind {
    fn is(&self, other: &Kind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Where a connection stands, for its timeouts: waiting for (or reading) a
/// request head since a time, or busy with requests.
#[derive(Debug, Clone, Copy)]
enum State {
    /// No byte of the next head yet, since then (idle keep-alive). For
    /// HTTP/2: no stream open since then.
    Idle(Instant),
    /// Reading a head whose first byte came then (or the connection opened
    /// then).
    Head(Instant),
    /// This many requests are being answered (more than one on HTTP/2).
    Busy(usize),
}

/// A connection's [`State`], updated by its reads and its service, and a
/// wake-up for its watchdog when it changes.
struct Activity {
    state: Mutex<State>,
    /// The connection speaks HTTP/2: bytes between requests (PINGs, window
    /// updates) do not start a head.
    h2: std::sync::atomic::AtomicBool,
    /// Requests answered (or being answered) so far.
    requests: std::sync::atomic::AtomicUsize,
    /// Since when a write has been waiting for the client to read (its
    /// socket buffer full); `None` while writes go through.
    write_blocked: Mutex<Option<Instant>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::Head(Instant::now())),
            h2: std::sync::atomic::AtomicBool::new(false),
            requests: std::sync::atomic::AtomicUsize::new(0),
            write_blocked: Mutex::new(None),
        }
    }

    /// A write could not proceed (`blocked`) or went through.
    fn wrote(&self, blocked: bool) {
        let mut w = self
            .write_blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (blocked, w.is_some()) {
            (true, false) => *w = Some(Instant::now()),
            (false, true) => *w = None,
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: an idle HTTP/1.1 connection starts reading a head.
    fn read(&self) {
        if self.h2.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut s = self.lock();
        if let State::Idle(_) = *s {
            *s = State::Head(Instant::now());
        }
    }

    /// A request's head is complete: it is being answered until its
    /// [`InFlight`] is dropped.
    fn request(self: &Arc<Self>) -> InFlight {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.lock();
        *s = match *s {
            State::Busy(n) => State::Busy(n + 1),
            State::Idle(_) | State::Head(_) => State::Busy(1),
        };
        InFlight(Arc::clone(self))
    }

    fn response_done(&self) {
        let mut s = self.lock();
        *s = match *s {
            State::Busy(n) if n > 1 => State::Busy(n - 1),
            _ => State::Idle(Instant::now()),
        };
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the connection is due to be closed, and why; `None` while busy
    /// and writing freely. A client that reads nothing of a response for
    /// `idle_timeout` (a slow reader) is closed too.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        let s = &limits.settings;
        let by_state = match *self.lock() {
            State::Busy(_) => None,
            State::Idle(since) => Some((since + s.idle_timeout, "idle")),
            State::Head(since) => Some((since + s.header_read_timeout, "header_read")),
        };
        let blocked = *self
            .write_blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let by_write = blocked.map(|since| (since + s.idle_timeout, "write_stalled"));
        match (by_state, by_write) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn busy(&self) -> bool {
        matches!(*self.lock(), State::Busy(_))
    }
}

/// One request being answered: the connection is busy until it is dropped
/// (its response written to the end or dropped, or the request cancelled
/// before an answer, as an HTTP/2 client's `RST_STREAM` does).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// The HTTP/2 connection preface's first bytes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A client connection whose reads are reported to its [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// No byte read yet: the first read tells HTTP/2 (its preface) apart.
    first: bool,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if self.first {
                self.first = false;
                let got = &buf.filled()[before..];
                let n = got.len().min(H2_PREFACE.len());
                if got.len() >= 3 && got[..n] == H2_PREFACE[..n] {
                    self.activity
                        .h2
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A response body that tells its connection's [`Activity`] when it is
/// done with (written to the end, or dropped).
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves one connection under its limits until it ends, times out, or the
/// drain closes or cuts it. Holds its cap's permit until then.
async fn connection(
    stream: TcpStream,
    sidecar: Arc<OnceLock<Sidecar>>,
    limits: ConnectionLimits,
    kind: Kind,
    permit: OwnedSemaphorePermit,
    mut phase: watch::Receiver<Phase>,
) {
    // A CONNECT tunnel (the forward proxy) keeps the permit, the drain and
    // these limits after the connection is handed over to it.
    let tunnel = crate::proxy::TunnelScope {
        _permit: Arc::new(permit),
        phase: phase.clone(),
        settings: limits.settings,
    };
    let mut limits = limits;
    if kind.is(&Kind::HealthOnly) {
        let s = &mut limits.settings;
        s.header_read_timeout = s.header_read_timeout.min(HEALTH_HEADER_READ_TIMEOUT);
    }
    let peer = stream.peer_addr().ok();
    let _open = OpenGauge::new(&kind);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
        first: true,
    });
    let on_request = Arc::clone(&activity);
    let keep_alive = !kind.is(&Kind::HealthOnly);
    let connect_allowed = kind.is(&Kind::Gateway);
    let service_kind = kind.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        if connect_allowed && req.method() == http::Method::CONNECT {
            req.extensions_mut().insert(tunnel.clone());
        }
        let sidecar = sidecar.get().cloned();
        let in_flight = on_request.request();
        let kind = service_kind.clone();
        async move {
            let response = match (sidecar, kind) {
                (None, _) => starting(&req),
                (Some(s), Kind::Gateway) => s.handle(req).await,
                (Some(s), Kind::HealthOnly) => health_only(&s, req).await,
                (Some(s), Kind::Admin(access)) => admin::handle(&s, req, peer, &access).await,
            };
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let settings = &limits.settings;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's timer runs from the end of a response (or the opening)
        // to the end of the next head: the idle time plus the head's.
        .header_read_timeout(settings.idle_timeout + settings.header_read_timeout)
        .keep_alive(keep_alive)
        // Bounds a head (431 beyond) and what a connection buffers.
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(if kind.is(&Kind::Gateway) {
            H2_MAX_CONCURRENT_STREAMS
        } else {
            1
        })
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(settings.idle_timeout)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    // A reserve connection over HTTP/2 is told to go away after its one
    // request (HTTP/1.1 closes by itself: no keep-alive).
    let mut goaway_sent = false;
    // One timer for the connection's life. Nothing wakes it when the
    // connection's state changes (a wake-up from inside the connection's own
    // poll makes tokio unpark another worker: two more context switches per
    // request, measured as +40 us on the gateway's latency). Instead it is
    // armed at the deadline, or at the next check point `check` from now,
    // whichever is first: every deadline a state change can set lies at
    // least `check` after that change (a head's `header_read_timeout`, an
    // idle connection's or a stalled write's `idle_timeout`), so it is never
    // earlier than the armed time, and a firing re-reads the state.
    let check = settings.header_read_timeout.min(settings.idle_timeout);
    let timer = tokio::time::sleep_until(Instant::now() + check);
    let mut timer = std::pin::pin!(timer);
    loop {
        if *phase.borrow_and_update() == Phase::Cut {
            return;
        }
        let now = Instant::now();
        if let Some((at, why)) = activity.deadline(&limits) {
            if now >= at {
                tracing::debug!(?peer, why, "closing the connection: timeout");
                metrics::counter!("tokencache_connections_timed_out_total", "reason" => why)
                    .increment(1);
                return;
            }
        }
        if timer.is_elapsed() {
            let next = activity
                .deadline(&limits)
                .map_or(now + check, |(at, _)| at.min(now + check));
            timer.as_mut().reset(next);
        }
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(?peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = timer.as_mut() => {}
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Cut {
                    return;
                }
                if now == Phase::Draining {
                    if !activity.busy() {
                        // Idle, or a head not finished: nothing to finish.
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        if kind.is(&Kind::HealthOnly) && !goaway_sent && activity.requests() > 0 && !activity.busy()
        {
            goaway_sent = true;
            conn.as_mut().graceful_shutdown();
        }
        // A connection that answered its request while draining closes:
        // hyper does so after graceful_shutdown; one between requests is
        // closed here.
        if *phase.borrow() == Phase::Draining && !activity.busy() {
            // Let hyper flush what it wrote (it ends the connection itself
            // once idle after graceful_shutdown).
            match tokio::time::timeout(Duration::from_millis(50), conn.as_mut()).await {
                Ok(_) | Err(_) => return,
            }
        }
    }
}

/// Counts a connection in `tokencache_connections_open{kind}` while it
/// lives.
struct OpenGauge(metrics::Gauge);

impl OpenGauge {
    fn new(kind: &Kind) -> Self {
        let kind = match kind {
            Kind::Gateway => "gateway",
            Kind::HealthOnly => "health",
            Kind::Admin(_) => "admin",
        };
        let gauge = metrics::gauge!("tokencache_connections_open", "kind" => kind);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The answer while the sidecar is being built.
fn starting(req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => response::text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"ready":false,"starting":true,"cause":"starting: the profiles are being built"}"#,
        ),
        _ => {
            crate::metrics::starting();
            let mut r = response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the sidecar is starting: its profiles are being built",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

/// A reserve connection: only `/healthz` and `/readyz` are answered.
async fn health_only(sidecar: &Sidecar, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" | "/readyz" => sidecar.handle(req).await,
        _ => response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the sidecar is at [serve] max_connections; only /healthz and /readyz are answered",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectionSettings;

    fn limits() -> ConnectionLimits {
        let settings = ConnectionSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionSettings::default()
        };
        ConnectionLimits::new(settings, Duration::from_secs(1))
    }

    fn why(a: &Activity) -> Option<&'static str> {
        a.deadline(&limits()).map(|(_, why)| why)
    }

    #[test]
    fn a_connection_s_deadline_follows_what_it_is_doing() {
        let a = Arc::new(Activity::new());
        // Opened: the first head is due within the header-read timeout.
        assert_eq!(why(&a), Some("header_read"));
        a.read();
        assert_eq!(why(&a), Some("header_read"), "still the same head");
        let in_flight = a.request();
        assert_eq!(why(&a), None, "a request being answered has no deadline");
        a.wrote(true);
        assert_eq!(why(&a), Some("write_stalled"), "the client reads nothing");
        a.wrote(false);
        assert_eq!(why(&a), None);
        drop(in_flight);
        assert_eq!(why(&a), Some("idle"));
        let (idle_at, _) = a.deadline(&limits()).expect("deadline");
        a.read();
        let (head_at, why_now) = a.deadline(&limits()).expect("deadline");
        assert_eq!(why_now, "header_read");
        assert!(
            head_at < idle_at,
            "a started head is due sooner than idleness"
        );
    }

    #[test]
    fn an_h2_connection_is_busy_while_any_stream_is_and_frames_do_not_start_a_head() {
        let a = Arc::new(Activity::new());
        a.h2.store(true, std::sync::atomic::Ordering::Relaxed);
        let one = a.request();
        let two = a.request();
        drop(one);
        assert_eq!(why(&a), None, "a stream is still open");
        drop(two);
        assert_eq!(why(&a), Some("idle"));
        // A PING or WINDOW_UPDATE between streams is no request head.
        a.read();
        assert_eq!(why(&a), Some("idle"));
        assert_eq!(a.requests(), 2);
    }

    #[test]
    fn the_cap_keeps_its_health_reserve() {
        let settings = ConnectionSettings {
            max_connections: 5,
            health_connections: 2,
            ..ConnectionSettings::default()
        };
        let (main, health) = caps(&ConnectionLimits::new(settings, Duration::from_secs(1)));
        assert_eq!((main, health), (5, 2));
    }
}
