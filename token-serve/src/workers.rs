//! Connection workers (`[serve] workers`): client connections run on N
//! threads, each driving its own single-threaded Tokio runtime, instead of
//! on the multi-thread runtime that accepts them.
//!
//! Why: a forwarded request wakes several tasks (the client connection's,
//! the upstream connection's) and, on a multi-thread runtime, those wakes
//! cross threads: an idle worker is unparked with a futex, tasks are
//! stolen, and the sockets' data moves between CPUs. On one thread none of
//! that happens. Measured on the gateway (docs/BENCHMARKS.md, "connection
//! workers"): 14.4 µs of CPU per forwarded request with two workers,
//! against 20.9 µs on a 2-worker multi-thread runtime, in one run.
//!
//! The accept loop stays where it was; each accepted connection is handed
//! to the next worker in turn (its socket re-registered with that worker's
//! reactor) and lives there until it closes. Upstream connections opened
//! by a worker are pooled for that worker ([`current`] picks the pool's
//! slot), so a request and the upstream connection it uses are on one
//! thread. Draining works as before: every connection task holds the drain
//! receiver, whichever thread it runs on. The engine's background work
//! (refresh ahead, keep-warm) stays on the runtime the sidecar was built on.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Upstream pools keep this many slots of idle connections; a worker uses
/// slot `current() % SLOTS`.
pub(crate) const SLOTS: usize = 64;

/// The most workers `[serve] workers` may ask for.
pub const MAX_WORKERS: usize = 256;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker number: 1 to N on a connection worker, 0 on any
/// other thread.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The workers' runtimes. Dropping this ends the threads; connections
/// still open on them are cut (after the drain, none are).
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Dropped to stop the threads (each waits on its receiver).
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads, each with its runtime.
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 1..=n.max(1) {
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("tc-conn-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    INDEX.with(|c| c.set(i));
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Upstream connections still pooled end with the runtime.
                    runtime.shutdown_background();
                })?;
            let h = handle.recv().map_err(|_| {
                std::io::Error::other(format!("connection worker {i} ended while starting"))
            })??;
            handles.push(h);
            stops.push(stop);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// Runs `serve(stream)` on the next worker in turn, the stream
    /// re-registered with that worker's reactor.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a worker; closed");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(s) => serve(s).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a worker could not take a connection; closed");
                }
            }
        });
    }
}

/// The default number of workers: the CPUs this process may use (a
/// container's CPU quota included), at most [`MAX_WORKERS`].
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_run_on_the_workers_in_turn_and_see_their_number() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let workers = Workers::start(2).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for _ in 0..4 {
                let _client = TcpStream::connect(addr).await.unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                workers.spawn(stream, move |s| async move {
                    // The stream works on its new reactor.
                    s.writable().await.unwrap();
                    let _ = tx.send(current());
                });
            }
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(rx.recv().await.unwrap());
            }
            seen.sort_unstable();
            assert_eq!(seen, [1, 1, 2, 2]);
            assert_eq!(current(), 0, "not a worker thread");
        });
    }
}
