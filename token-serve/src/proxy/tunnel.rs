//! One `CONNECT` tunnel: the TLS handshake (within the configured
//! timeout), then HTTP/2 or HTTP/1.1 as ALPN chose, each request answered
//! by [`tunnelled`](super::tunnelled), under the connection settings of the
//! listener the `CONNECT` came through:
//!
//! - HTTP/1.1: keep-alive, a head within `header_read_timeout` (after up to
//!   `idle_timeout` of idleness), heads up to `max_header_bytes`.
//! - HTTP/2: header lists up to `max_header_bytes`, at most
//!   [`MAX_STREAMS`] concurrent streams.
//! - Either: a tunnel with no request in flight and no byte either way for
//!   `idle_timeout` is closed; on shutdown it finishes what is in flight
//!   (HTTP/2 `GOAWAY`) until the drain ends.
//!
//! Each tunnel holds its `CONNECT` connection's permit, so tunnels count
//! against `max_connections`; open ones are in
//! `tokencache_proxy_tunnels_open`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{Target, TunnelScope};
use crate::config::ConnectionSettings;
use crate::response::Body;
use crate::server::Phase;
use crate::Sidecar;

/// The most concurrent HTTP/2 streams in one tunnel.
pub(crate) const MAX_STREAMS: u32 = 256;

/// Serves the tunnel on `io` until it ends, times out or is drained.
pub(crate) async fn run(
    sidecar: Sidecar,
    io: Upgraded,
    target: Target,
    config: Arc<rustls::ServerConfig>,
    scope: Option<TunnelScope>,
    handshake_timeout: Duration,
) {
    let settings = scope.as_ref().map(|s| s.settings).unwrap_or_default();
    let mut phase = scope.as_ref().map(|s| s.phase.clone());
    let _open = Open::new();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(TokioIo::new(io));
    let tls = match tokio::time::timeout(handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.name, error = %e, "TLS handshake in a CONNECT tunnel failed");
            metrics::counter!("tokencache_proxy_tls_handshakes_failed_total", "reason" => "error")
                .increment(1);
            return;
        }
        Err(_) => {
            tracing::debug!(host = %target.name, "TLS handshake in a CONNECT tunnel timed out");
            metrics::counter!("tokencache_proxy_tls_handshakes_failed_total", "reason" => "timeout")
                .increment(1);
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: tls,
        activity: Arc::clone(&activity),
    });
    let on_request = Arc::clone(&activity);
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let sidecar = sidecar.clone();
        let target = target.clone();
        // In flight from now until the response body is done with (or the
        // request is abandoned).
        let busy = Busy::new(Arc::clone(&on_request));
        async move {
            let response = super::tunnelled(&sidecar, req, &target).await;
            Ok::<_, Infallible>(response.map(|body| Counted { body, _busy: busy }))
        }
    });
    if h2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_STREAMS)
            .serve_connection(io, service);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            &settings,
            phase.as_mut(),
        )
        .await;
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.idle_timeout + settings.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .serve_connection(io, service);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            &settings,
            phase.as_mut(),
        )
        .await;
    }
    drop(scope);
}

/// Runs `conn` until it ends, is idle too long, or the drain says so.
async fn drive<C: Future>(
    conn: C,
    shut_down: impl Fn(Pin<&mut C>),
    activity: &Activity,
    settings: &ConnectionSettings,
    mut phase: Option<&mut tokio::sync::watch::Receiver<Phase>>,
) {
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        let idle_until = activity.last() + settings.idle_timeout;
        let phase_changed = async {
            match phase.as_mut() {
                Some(p) => p.changed().await.map(|()| *p.borrow_and_update()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until(idle_until) => {
                if activity.busy.load(Ordering::SeqCst) == 0
                    && activity.last() + settings.idle_timeout <= Instant::now()
                {
                    tracing::debug!("closing an idle CONNECT tunnel");
                    metrics::counter!("tokencache_connections_timed_out_total", "reason" => "idle")
                        .increment(1);
                    return;
                }
                activity.touch();
            }
            changed = phase_changed => match changed {
                Ok(Phase::Cut) | Err(_) => return,
                Ok(Phase::Draining) if !draining => {
                    draining = true;
                    shut_down(conn.as_mut());
                }
                Ok(_) => {}
            },
        }
    }
}

/// When the tunnel last moved a byte, and how many requests are in flight.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read or write.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The tunnel's TLS stream, telling its [`Activity`] of every byte.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that counts its request as in flight until it is done
/// with.
struct Counted {
    body: Body,
    _busy: Busy,
}

/// One request in flight in a tunnel.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl HttpBody for Counted {
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

/// Counts a tunnel in `tokencache_proxy_tunnels_open` while it lives.
struct Open(metrics::Gauge);

impl Open {
    fn new() -> Self {
        let gauge = metrics::gauge!("tokencache_proxy_tunnels_open");
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
