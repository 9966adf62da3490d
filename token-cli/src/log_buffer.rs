//! `serve`'s log output: stderr through a buffer, as nginx's
//! `access_log ... buffer= flush=`. A log line (the gateway writes one per
//! request) is appended to a buffer in memory; a flusher thread writes the
//! buffer out [`FLUSH_AFTER`] after its first line, or at once when it
//! passes [`FLUSH_AT`]. A request then pays no `write(2)` of its own and
//! wakes nobody but the first line of each interval, instead of one system
//! call per line (about a fifth of the gateway's CPU per forwarded request
//! was its access line, docs/BENCHMARKS.md).
//!
//! What is lost: nothing on an orderly exit or a panic ([`flush`] is called
//! on both), up to [`FLUSH_AFTER`] of lines when the process is killed
//! outright. Lines are written whole and in order: the flusher and
//! [`line`] (errors, warnings, notes, panics printed directly) write under
//! one lock, each taking what was buffered before it.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// How long a buffered line may wait: short enough that someone tailing
/// the log sees a request at once, long enough to batch a busy gateway's
/// lines into a few writes a second.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// The buffer size that is written at once, without waiting for the
/// interval: a pipe takes 64 KiB without blocking a reader that keeps up.
pub(crate) const FLUSH_AT: usize = 64 * 1024;

struct Shared {
    /// Lines not yet written.
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` gets its first line, or passes `FLUSH_AT`.
    filled: Condvar,
    /// Held while writing to stderr: keeps writes whole and in order.
    out: Mutex<()>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while appending leaves a byte vector: still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes out what is pending, then `extra` (under the write lock).
    fn write_out(&self, extra: &[u8]) {
        let _out = lock(&self.out);
        let batch = std::mem::take(&mut *lock(&self.pending));
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failed write to stderr.
        let _ = stderr.write_all(&batch);
        let _ = stderr.write_all(extra);
        let _ = stderr.flush();
    }
}

/// Starts the buffer and its flusher thread (once); from then on
/// [`Writer`] appends to it.
pub(crate) fn start() -> std::io::Result<()> {
    if SHARED.get().is_some() {
        return Ok(());
    }
    let _ = SHARED.set(Shared {
        pending: Mutex::new(Vec::with_capacity(FLUSH_AT)),
        filled: Condvar::new(),
        out: Mutex::new(()),
    });
    std::thread::Builder::new()
        .name("tokencache-log".to_owned())
        .spawn(flusher)?;
    Ok(())
}

fn flusher() {
    let Some(shared) = SHARED.get() else { return };
    loop {
        {
            let mut pending = lock(&shared.pending);
            while pending.is_empty() {
                pending = shared
                    .filled
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.len() < FLUSH_AT {
                // The interval, unless the buffer fills first.
                let (guard, _) = shared
                    .filled
                    .wait_timeout_while(pending, FLUSH_AFTER, |p| p.len() < FLUSH_AT)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(guard);
            }
        }
        shared.write_out(&[]);
    }
}

/// Writes what is buffered now (before the process exits, or a panic's
/// message).
pub(crate) fn flush() {
    if let Some(shared) = SHARED.get() {
        shared.write_out(&[]);
    }
}

/// Writes `text` (a whole line, with its newline) to stderr after
/// everything buffered before it; straight to stderr when the buffer is
/// not in use.
pub(crate) fn line(text: &str) {
    match SHARED.get() {
        Some(shared) => shared.write_out(text.as_bytes()),
        None => {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// The log layer's writer: appends each formatted event (tracing-subscriber
/// writes one event in one `write`) to the buffer; stderr itself when the
/// buffer was not started.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Writer;

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(shared) = SHARED.get() else {
            return std::io::stderr().write(bytes);
        };
        let mut pending = lock(&shared.pending);
        let was_empty = pending.is_empty();
        pending.extend_from_slice(bytes);
        let full = pending.len() >= FLUSH_AT;
        drop(pending);
        if was_empty || full {
            shared.filled.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        Writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_in_order_after_at_most_the_interval() {
        // Not started: the writer goes straight to stderr (no panic, no
        // loss); started: appended, and `flush` empties the buffer.
        let mut w = Writer;
        assert_eq!(w.write(b"").unwrap(), 0);
        start().unwrap();
        start().unwrap();
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        let shared = SHARED.get().unwrap();
        // Either the flusher took them already or they wait, in order.
        let pending = lock(&shared.pending).clone();
        assert!(
            pending.is_empty() || pending == b"one\ntwo\n" || pending == b"two\n",
            "{pending:?}"
        );
        // The flusher writes them within the interval (polled with a
        // generous bound: the machine may be busy).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !lock(&shared.pending).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(FLUSH_AFTER);
        }
        w.write_all(b"three\n").unwrap();
        line("four\n");
        assert!(
            lock(&shared.pending).is_empty(),
            "a direct line writes what waits first"
        );
    }
}
