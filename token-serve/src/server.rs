//! [`serve`]: the accept loop, HTTP/1.1 connections, and the graceful drain
//! on shutdown.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Sidecar;

/// How a [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drained {
    /// Every request in flight completed within the drain time.
    Complete,
    /// The drain time ran out; this many connections were cut.
    TimedOut,
}

/// Serves `sidecar` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish (idle keep-alive connections
/// are closed at once) for up to `drain`, and returns.
pub async fn serve(
    sidecar: Sidecar,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Drained {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
                let _ = stream.set_nodelay(true);
                let sidecar = sidecar.clone();
                let service = service_fn(move |req| {
                    let sidecar = sidecar.clone();
                    async move { Ok::<_, std::convert::Infallible>(sidecar.handle(req).await) }
                });
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(?drain, "shutting down: draining requests in flight");
    tokio::select! {
        () = graceful.shutdown() => {
            tracing::info!("drained: every request in flight completed");
            Drained::Complete
        }
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain time ran out; cutting the remaining connections");
            Drained::TimedOut
        }
    }
}
