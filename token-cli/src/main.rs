//! `tokencache`: cached, refreshed, encrypted-at-rest OAuth 2.0 access
//! tokens for shell scripts and programs in any language, and `demo`, the
//! run that shows what the cache saves. See `README.md` and `--help`.
//!
//! One thin module per command (`get.rs`, `inspect.rs`, `serve.rs`,
//! `demo/`): each parses its flags, calls a library and prints. Profiles,
//! stores, keys and the warm path live in token-profile; the sidecar in
//! token-serve. `log.rs` sets up `-v`/`RUST_LOG`, `error.rs` holds the exit
//! codes.

mod cli;
mod demo;
mod error;
mod get;
mod inspect;
mod log;
mod serve;
mod telemetry;
mod time;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = cli.command.state_dir() {
        token_profile::set_state_dir(dir.to_owned());
    }
    let style = match &cli.command {
        Command::Serve(args) if args.log_format == cli::LogFormat::Json => log::Style::ServerJson,
        Command::Serve(_) => log::Style::Server,
        _ => log::Style::Quiet,
    };
    if let Err(e) = log::init(cli.verbose, style) {
        log::error(&e);
        return e.exit_code();
    }
    if matches!(style, log::Style::Quiet) {
        // The one-shot commands say what the profile library worked around
        // as `warning:` / `note:` lines; serve logs them.
        token_profile::set_notices(token_profile::Notices::new(|n| match n.level {
            token_profile::NoticeLevel::Note => log::note(&n.message),
            _ => log::warning(&n.message),
        }));
    }
    // A fresh token on a sled store is printed from its warm file
    // (`hot.rs`) before any runtime starts: starting one costs more than the
    // rest of a warm `get`.
    let mut get_settings = None;
    if let Command::Get(args) = &cli.command {
        let warm = get::settings(args).and_then(|s| get::warm(&s, args).map(|w| (w, s)));
        match warm {
            Ok((true, _)) => return ExitCode::SUCCESS,
            Ok((false, s)) => get_settings = Some(s),
            Err(e) => {
                log::error(&e);
                return e.exit_code();
            }
        }
    }
    // Multi-thread: token-sled runs its blocking calls in place on one
    // (`block_in_place`), where a current-thread runtime hands each to a
    // blocking-pool thread, which measured slower (docs/BENCHMARKS.md).
    // A `get` on Redis or memory does only async I/O: a current-thread
    // runtime starts no worker threads, so the engine's concurrent map
    // (papaya, through seize) registers its memory barrier while the
    // process has one thread: 7 us, against about 10 ms with worker threads
    // running (the kernel waits for them), two thirds of a warm Redis get
    // (docs/BENCHMARKS.md).
    let one_thread = get_settings
        .as_ref()
        .is_some_and(|s| !matches!(s.store(), token_profile::StoreSpec::Sled(_)));
    let runtime = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let e = CliError::internal(format!("cannot start the async runtime: {e}"));
            log::error(&e);
            return e.exit_code();
        }
    };
    let result = runtime.block_on(run(cli.command, get_settings));
    // Spans still batched are sent before the process ends.
    telemetry::shutdown();
    // Background refreshes are not waited for: `get` already waited for the
    // ones it needed.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error(&e);
            e.exit_code()
        }
    }
}

async fn run(
    command: Command,
    get_settings: Option<token_profile::Resolved>,
) -> Result<(), CliError> {
    match command {
        Command::Get(args) => match get_settings {
            Some(s) => get::run(s, &args).await,
            None => Err(CliError::internal("get's settings were read before")),
        },
        Command::Inspect(args) => inspect::inspect(args).await,
        Command::Purge(args) => inspect::purge(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::DemoWorker(args) => demo::worker(args).await,
    }
}
