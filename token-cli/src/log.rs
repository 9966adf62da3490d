//! What `tokencache` says on stderr: `-v` / `RUST_LOG` logging through
//! `tracing`, and the one prefix style of its own messages (`error:`,
//! `warning:`, `note:`, as clap and cargo print them).
//!
//! Nothing logged holds a secret: tokens and secrets are `Secret` values
//! whose `Debug` and `Display` print `***`, the cache keys in log fields
//! hold only a keyed fingerprint of the client secret, and the libraries
//! below (token-http, reqwest, hyper) log no header or body.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::error::CliError;

/// The crates of this workspace: what `-v` turns on.
const OURS: [&str; 7] = [
    "tokencache",
    "token_core",
    "token_http",
    "token_sled",
    "token_redis",
    "token_memory",
    "token_cli",
];

/// Sets up logging to stderr: `RUST_LOG` when set (`info`,
/// `token_core=debug,warn`, ...), else `-v` (info for this workspace),
/// `-vv` (debug), `-vvv` (trace, every crate). Without either, nothing is
/// logged.
pub(crate) fn init(verbose: u8) -> Result<(), CliError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => text.parse::<Targets>().map_err(|e| {
            CliError::usage(format!(
                "RUST_LOG={text:?} is not a log filter ({e}); use a level (`debug`) or \
                 target=level pairs (`token_core=debug,warn`)"
            ))
        })?,
        _ => {
            let level = match verbose {
                0 => return Ok(()),
                1 => LevelFilter::INFO,
                2 => LevelFilter::DEBUG,
                _ => LevelFilter::TRACE,
            };
            let base = if verbose >= 3 {
                LevelFilter::TRACE
            } else {
                LevelFilter::WARN
            };
            Targets::new()
                .with_default(base)
                .with_targets(OURS.iter().map(|t| (*t, level)))
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init()
        .map_err(|e| CliError::internal(format!("cannot start logging: {e}")))
}

/// Prints `error: <message>` on stderr.
pub(crate) fn error(e: &CliError) {
    eprintln!("error: {e}");
}

/// Prints `warning: <message>` on stderr.
pub(crate) fn warning(message: impl std::fmt::Display) {
    eprintln!("warning: {message}");
}

/// Prints `note: <message>` on stderr.
pub(crate) fn note(message: impl std::fmt::Display) {
    eprintln!("note: {message}");
}
