//! Shared helpers for the criterion benchmarks in `benches/`.

use std::future::Future;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use token_core::test_util::FakeIdp;

/// Polls a future once with a no-op waker; `None` if it was not ready.
/// A cache hit completes on the first poll, so this measures the hit path
/// without an executor's overhead.
#[inline]
pub fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Runs `op` `iters` times on each of `threads` threads started together,
/// and returns the wall time divided by `threads`: the time per operation of
/// the whole machine, so `1-thread time / 2-thread time` is the scaling.
pub fn on_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    op();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for w in workers {
        w.join().expect("benchmark thread panicked");
    }
    start.elapsed() / threads as u32
}

/// A credential that answers at once with an hour-long token: token-core's
/// shared fake IdP with a fixed secret.
pub fn instant_idp() -> FakeIdp {
    FakeIdp::new()
        .with_id("bench-idp")
        .with_secret("bench-token-value-0123456789abcdef")
}

/// Serves `handler` on a free loopback port (HTTP/1.1, `TCP_NODELAY`), on
/// the runtime this is called on, for as long as it runs: the upstreams,
/// token endpoints and proxies of the sidecar benches.
pub async fn listen<F, Fut, B>(handler: F) -> std::net::SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let f = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(f.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
