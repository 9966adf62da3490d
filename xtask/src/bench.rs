//! `cargo xtask bench [ARGS...]`: the criterion benchmarks, with ARGS passed
//! to criterion. Never under CI: a shared CI machine gives numbers nobody
//! should compare, and the time is better spent on tests.

use crate::util::{self, Result};

pub(crate) fn run(args: &[String]) -> Result {
    if util::is_ci() {
        return Err(
            "benchmarks are not run under CI (CI is set); unset CI to run them on a quiet machine"
                .into(),
        );
    }
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "benches"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    util::run(&mut cmd)
}
