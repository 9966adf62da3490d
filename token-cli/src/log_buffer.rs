//! `serve`'s access log through a buffer, as nginx's `access_log ...
//! buffer= flush=`. An access line (target `tokencache::access`, one per
//! gateway request) is appended to a buffer in memory; a flusher thread
//! writes the buffer out [`FLUSH_AFTER`] after its first line, or at once
//! when it passes [`FLUSH_AT`]. A request then pays no `write(2)` of its own
//! and wakes nobody but for the first line of each interval, where an
//! unbuffered line cost a system call per request (docs/BENCHMARKS.md).
//!
//! Every other line (start-up, warnings, errors, panics) is written at
//! once, after the access lines buffered before it: lines stay whole and
//! in order (the flusher and those writes hold one lock, each taking what
//! was buffered before it). What can be lost: up to [`FLUSH_AFTER`] of
//! access lines when the process is killed outright; nothing on an orderly
//! exit or a panic ([`flush`] is called on both).

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

/// The most that waits in memory: past it, a writer writes the buffer out
/// itself and waits for stderr (backpressure instead of unbounded growth).
pub(crate) const MAX_PENDING: usize = 16 * FLUSH_AT;

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
        emit(&batch, extra);
    }
}

/// Writes `batch` then `extra` to stderr (in this module's tests, to a
/// buffer they read, so that test output stays clean).
fn emit(batch: &[u8], extra: &[u8]) {
    #[cfg(not(test))]
    {
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failed write to stderr.
        let _ = stderr.write_all(batch);
        let _ = stderr.write_all(extra);
        let _ = stderr.flush();
    }
    #[cfg(test)]
    {
        let mut out = lock(&tests::EMITTED);
        out.extend_from_slice(batch);
        out.extend_from_slice(extra);
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

/// The target whose lines are buffered.
const BUFFERED_TARGET: &str = "tokencache::access";

/// The log layer's writers (tracing-subscriber writes one event in one
/// `write`): [`Line::Buffered`] for access lines, [`Line::Direct`] for the
/// rest; stderr itself when the buffer was not started.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Writer;

/// One event's writer, chosen by its target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Line {
    /// Appended to the buffer.
    Buffered,
    /// Written at once, after what was buffered.
    Direct,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(shared) = SHARED.get() else {
            return std::io::stderr().write(bytes);
        };
        if let Line::Direct = self {
            shared.write_out(bytes);
            return Ok(bytes.len());
        }
        let mut pending = lock(&shared.pending);
        let was_empty = pending.is_empty();
        pending.extend_from_slice(bytes);
        let len = pending.len();
        drop(pending);
        if len >= MAX_PENDING {
            // stderr is not keeping up (a reader that stopped reading): the
            // writer waits for it as an unbuffered line would, so memory
            // stays bounded.
            shared.write_out(&[]);
        } else if was_empty || len >= FLUSH_AT {
            shared.filled.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::Direct
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        line_for(meta.target())
    }
}

/// The writer for an event of `target`.
fn line_for(target: &str) -> Line {
    if target == BUFFERED_TARGET {
        Line::Buffered
    } else {
        Line::Direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`emit`] wrote.
    pub(super) static EMITTED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    #[test]
    fn access_lines_wait_at_most_the_interval_and_others_go_out_at_once_after_them() {
        start().unwrap();
        start().unwrap();
        let shared = SHARED.get().unwrap();
        let emitted = || String::from_utf8(lock(&EMITTED).clone()).unwrap();
        Line::Buffered.write_all(b"one\n").unwrap();
        Line::Buffered.write_all(b"two\n").unwrap();
        // The flusher writes them within the interval (polled with a
        // generous bound: the machine may be busy).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !lock(&shared.pending).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(FLUSH_AFTER);
        }
        assert_eq!(emitted(), "one\ntwo\n");
        // A direct line takes what waits with it, in order.
        Line::Buffered.write_all(b"three\n").unwrap();
        Line::Direct.write_all(b"four\n").unwrap();
        assert_eq!(emitted(), "one\ntwo\nthree\nfour\n");
        Line::Buffered.write_all(b"five\n").unwrap();
        line("six\n");
        Line::Buffered.write_all(b"seven\n").unwrap();
        flush();
        let seven = "one\ntwo\nthree\nfour\nfive\nsix\nseven\n";
        assert_eq!(emitted(), seven);
        assert!(lock(&shared.pending).is_empty());
        // Past MAX_PENDING the writer writes the buffer itself: what waits
        // never exceeds it, whatever the flusher does.
        let chunk = vec![b'.'; FLUSH_AT - 1];
        for _ in 0..(2 * MAX_PENDING / FLUSH_AT) {
            Line::Buffered.write_all(&chunk).unwrap();
            Line::Buffered.write_all(b"\n").unwrap();
            assert!(lock(&shared.pending).len() < MAX_PENDING + FLUSH_AT);
        }
        flush();
        // Nothing lost.
        assert_eq!(lock(&EMITTED).len(), seven.len() + 2 * MAX_PENDING);
    }

    #[test]
    fn only_access_lines_are_buffered() {
        use tracing_subscriber::fmt::MakeWriter;
        assert!(matches!(line_for("tokencache::access"), Line::Buffered));
        for other in [
            "tokencache",
            "tokencache::accessor",
            "token_serve::gateway",
            "token_core",
        ] {
            assert!(matches!(line_for(other), Line::Direct), "{other}");
        }
        assert!(matches!(Writer.make_writer(), Line::Direct));
    }
}
