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
const OURS: [&str; 9] = [
    "tokencache",
    "token_profile",
    "token_serve",
    "token_core",
    "token_http",
    "token_sled",
    "token_redis",
    "token_memory",
    "token_cli",
];

/// How a command logs when neither `-v` nor `RUST_LOG` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Nothing (the one-shot commands: their output is the token).
    Quiet,
    /// Info for this workspace, as text (a long-running `serve`).
    Server,
    /// Info for this workspace, one JSON object a line (`serve
    /// --log-format json`).
    ServerJson,
}

/// Sets up logging to stderr: `RUST_LOG` when set (`info`,
/// `token_core=debug,warn`, ...), else `-v` (info for this workspace),
/// `-vv` (debug), `-vvv` (trace, every crate). Without either, `style`
/// decides: nothing for the one-shot commands, info for `serve`.
pub(crate) fn init(verbose: u8, style: Style) -> Result<(), CliError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => text.parse::<Targets>().map_err(|e| {
            CliError::usage(format!(
                "RUST_LOG={text:?} is not a log filter ({e}); use a level (`debug`) or \
                 target=level pairs (`token_core=debug,warn`)"
            ))
        })?,
        _ => {
            let level = match verbose {
                0 if style == Style::Quiet => return Ok(()),
                0 => LevelFilter::INFO,
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
    let registry = tracing_subscriber::registry().with(filter);
    let result = if style == Style::ServerJson {
        registry.with(layer.json()).try_init()
    } else {
        registry.with(layer).try_init()
    };
    result.map_err(|e| CliError::internal(format!("cannot start logging: {e}")))
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
