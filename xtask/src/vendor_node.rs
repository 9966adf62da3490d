//! Google's own Node.js client library (`google-auth-library`), which
//! token-cli's `google_sdks.rs` runs unmodified against `tokencache serve`:
//! installed with `npm ci` from the committed lockfile in
//! `token-cli/tests/vendor/node`.
//!
//! Idempotent: `npm ci` runs only when the lockfile differs from the one
//! last installed. Without node/npm the step is skipped with a warning (the
//! tests then skip loudly); under CI that is a failure.

use std::fs;
use std::process::Command;

use crate::util::{self, Result};

const DIR: &str = "token-cli/tests/vendor/node";
/// Copy of the lockfile that was last installed, inside `node_modules`.
const STAMP: &str = "node_modules/.xtask-installed-package-lock.json";

pub(crate) fn prepare() -> Result {
    let dir = util::project_root().join(DIR);
    let missing: Vec<&str> = ["node", "npm"]
        .into_iter()
        .filter(|p| util::find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} not found: token-cli's Node.js vendor-client tests (google-auth-library) need \
             Node.js 20+ and npm (e.g. `apt-get install nodejs npm`)",
            missing.join(" and ")
        );
        if util::is_ci() {
            return Err(why.into());
        }
        println!("warning: {why}; those tests will be skipped");
        return Ok(());
    }
    let lock = fs::read(dir.join("package-lock.json"))
        .map_err(|e| format!("reading {DIR}/package-lock.json: {e}"))?;
    if fs::read(dir.join(STAMP)).is_ok_and(|installed| installed == lock) {
        println!("google-auth-library already installed in {DIR} (lockfile unchanged)");
        return Ok(());
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )
    .map_err(|e| {
        format!("installing the Node.js vendor clients (google-auth-library) failed: {e}")
    })?;
    fs::write(dir.join(STAMP), lock).map_err(|e| format!("writing {DIR}/{STAMP}: {e}"))?;
    Ok(())
}
