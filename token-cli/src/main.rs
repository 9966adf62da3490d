//! `tokencache`: cached, refreshed, encrypted-at-rest OAuth 2.0 access
//! tokens for shell scripts and programs in any language, and `demo`, the
//! run that shows what the cache saves. See `README.md` and `--help`.
//!
//! One module per command (`get.rs`, `inspect.rs`, `demo/`), plus the
//! settings they share: `store.rs` (`--store`, the entry index), `key.rs`
//! (the encryption key), `config.rs` (profiles), `error.rs` (messages and
//! exit codes).

mod cli;
mod client_auth;
mod config;
mod demo;
mod error;
mod get;
mod inspect;
mod key;
mod paths;
mod serve;
mod store;
mod time;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Background refreshes are not waited for: `get` already waited for the
    // ones it needed.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Get(args) => get::run(*args).await,
        Command::Inspect(args) => inspect::inspect(args).await,
        Command::Purge(args) => inspect::purge(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::DemoWorker(args) => demo::worker(args).await,
    }
}
