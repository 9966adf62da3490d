//! The Python virtualenv with the vendors' own client libraries
//! (`azure-identity`, `google-auth`, `requests`) that token-cli's
//! `tests/vendor.rs` runs against `tokencache serve`: created in
//! `target/vendor-venv` from the pinned `token-cli/tests/vendor/requirements.txt`.
//!
//! Idempotent: `pip install` runs only when the requirements differ from
//! the ones last installed. Without python3 (and its venv module) the step
//! is skipped with a warning (the tests then skip loudly); under CI that is
//! a failure.

use std::fs;
use std::process::Command;

use crate::util::{self, Result};

const REQUIREMENTS: &str = "token-cli/tests/vendor/requirements.txt";
/// Where the venv goes, relative to the project root (the tests look there).
pub(crate) const VENV: &str = "target/vendor-venv";
/// Copy of the requirements last installed, inside the venv.
const STAMP: &str = ".xtask-installed-requirements.txt";

pub(crate) fn prepare() -> Result {
    let root = util::project_root();
    let venv = root.join(VENV);
    let Some(python) = util::find_program("python3") else {
        let why =
            "python3 not found: token-cli's vendor-client tests (azure-identity, google-auth) \
                   need Python 3.9+ with venv (e.g. `apt-get install python3 python3-venv`)";
        if util::is_ci() {
            return Err(why.into());
        }
        println!("warning: {why}; those tests will be skipped");
        return Ok(());
    };
    let wanted =
        fs::read(root.join(REQUIREMENTS)).map_err(|e| format!("reading {REQUIREMENTS}: {e}"))?;
    if fs::read(venv.join(STAMP)).is_ok_and(|installed| installed == wanted) {
        println!("vendor client libraries already installed in {VENV} (requirements unchanged)");
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        util::run(Command::new(python).args(["-m", "venv"]).arg(&venv)).map_err(|e| {
            format!("creating the Python venv {VENV} failed (is python3-venv installed?): {e}")
        })?;
    }
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root.join(REQUIREMENTS)),
    )
    .map_err(|e| format!("installing the vendor client libraries into {VENV} failed: {e}"))?;
    fs::write(venv.join(STAMP), wanted).map_err(|e| format!("writing {VENV}/{STAMP}: {e}"))?;
    Ok(())
}
