//! What `tokencache` says on stderr: `-v` / `RUST_LOG` logging through
//! `tracing`, and the one prefix style of its own messages (`error:`,
//! `warning:`, `note:`, as clap and cargo print them).
//!
//! Nothing logged holds a secret: tokens and secrets are `Secret` values
//! whose `Debug` and `Display` print `***`, the cache keys in log fields
//! hold only a keyed fingerprint of the client secret, and the libraries
//! below (token-http, reqwest, hyper) log no header or body.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
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

/// Every line is JSON (`serve --log-format json`): set by [`init`].
static JSON: AtomicBool = AtomicBool::new(false);

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
    if style == Style::ServerJson {
        JSON.store(true, Ordering::Relaxed);
        json_panics();
    }
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
    // Traces (serve only, when OTEL_EXPORTER_OTLP_*ENDPOINT says where):
    // this workspace's spans at info, whatever the log filter says.
    let otel = if style != Style::Quiet && crate::telemetry::configured() {
        let spans = Targets::new()
            .with_default(LevelFilter::OFF)
            .with_targets(OURS.iter().map(|t| (*t, LevelFilter::INFO)));
        Some(crate::telemetry::layer()?.with_filter(spans))
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(otel);
    let result = if style == Style::ServerJson {
        registry.with(layer.json().with_filter(filter)).try_init()
    } else {
        registry.with(layer.with_filter(filter)).try_init()
    };
    result.map_err(|e| CliError::internal(format!("cannot start logging: {e}")))
}

/// Prints `error: <message>` on stderr (a JSON line under
/// `--log-format json`).
pub(crate) fn error(e: &CliError) {
    if JSON.load(Ordering::Relaxed) {
        eprintln!("{}", json_line("ERROR", &e.to_string(), None));
    } else {
        eprintln!("error: {e}");
    }
}

/// Prints `listening on http://ADDR` on stdout: the line scripts and tests
/// wait for. Under `--log-format json` it is a JSON line like the log's,
/// with the address in `fields.address`.
pub(crate) fn listening(addr: std::net::SocketAddr) {
    let url = format!("http://{addr}");
    if JSON.load(Ordering::Relaxed) {
        println!(
            "{}",
            json_line(
                "INFO",
                &format!("listening on {url}"),
                Some(("address", &url))
            )
        );
    } else {
        println!("listening on {url}");
    }
}

/// Prints `message` on stdout: as it is, or under `--log-format json` as
/// a JSON line like the log's (what `serve --check-config` answers).
pub(crate) fn result(message: &str) {
    if JSON.load(Ordering::Relaxed) {
        println!("{}", json_line("INFO", message, None));
    } else {
        println!("{message}");
    }
}

/// One line shaped as tracing-subscriber's JSON lines are
/// (`timestamp`, `level`, `fields.message`, `target`).
fn json_line(level: &str, message: &str, field: Option<(&str, &str)>) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("message".to_owned(), message.into());
    if let Some((k, v)) = field {
        fields.insert(k.to_owned(), v.into());
    }
    serde_json::json!({
        "timestamp": crate::time::rfc3339(std::time::SystemTime::now()),
        "level": level,
        "fields": fields,
        "target": "tokencache",
    })
    .to_string()
}

/// A panic is logged as one JSON line on stderr, not as Rust's text.
fn json_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "{}",
            json_line(
                "ERROR",
                &format!("panic: {payload}"),
                Some(("location", &at))
            )
        );
    }));
}

/// Prints `warning: <message>` on stderr.
pub(crate) fn warning(message: impl std::fmt::Display) {
    eprintln!("warning: {message}");
}

/// Prints `note: <message>` on stderr.
pub(crate) fn note(message: impl std::fmt::Display) {
    eprintln!("note: {message}");
}
