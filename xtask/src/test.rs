//! `cargo xtask test`: every test in the workspace in one `cargo test` run,
//! with the servers the backends' conformance tests need, then a compile of
//! the benchmarks. This is what `.ci/run` runs.
//!
//! The conformance targets are ordinary integration tests of the backend
//! crates, so the workspace run already runs each of them, against the
//! servers started here. Running them a second time through `cargo xtask
//! conformance` would repeat the work, and `cargo test -p <backend>` resolves
//! features for fewer packages than `--workspace`, which rebuilds shared
//! dependencies.

use std::time::Instant;

use crate::conformance::{self, Backend, Outcome, Selection, Services};
use crate::util::{self, Result};

/// Features enabled in every workspace-wide build, so the facade's gated
/// re-exports are compiled, tested and documented too.
pub(crate) const WORKSPACE_FEATURES: &str = "token-cache/full";

pub(crate) fn run() -> Result {
    let backends = conformance::select(&Selection::All)?;
    println!("{}", conformance::describe_availability());
    let services = Services::start(&backends, conformance::may_skip(&Selection::All))?;
    prepare()?;

    let started = Instant::now();
    let mut stderr = String::new();
    let tests = util::step(
        "workspace tests (unit, integration, doc tests, every backend's conformance suite)",
        || {
            let mut cmd = util::cargo();
            // --no-fail-fast: one CI run shows every failing target, and
            // cargo's closing list of them says which backends failed.
            cmd.args([
                "test",
                "--workspace",
                "--no-fail-fast",
                "--features",
                WORKSPACE_FEATURES,
            ]);
            cmd.envs(services.env());
            let result;
            (result, stderr) = util::run_keeping_stderr(&mut cmd);
            result
        },
    );
    let took = util::format_duration(started.elapsed());

    let rows: Vec<_> = backends
        .iter()
        .map(|&backend| {
            let outcome = match (services.skip_reason(backend), &tests) {
                (Some(why), _) => Outcome::Skipped(why.to_owned()),
                (None, Ok(())) => Outcome::Passed,
                (None, Err(_)) => outcome_in_failed_run(backend, &stderr),
            };
            let how = format!("{} --test {}", backend.package, backend.test);
            (backend, outcome, how)
        })
        .collect();
    drop(services);

    let benches = tests.is_ok().then(|| {
        // Compiled, not run: benchmarks never run in CI, but must not rot.
        util::step("compile the benchmarks (not run)", || {
            util::run(util::cargo().args([
                "test",
                "--workspace",
                "--features",
                WORKSPACE_FEATURES,
                "--benches",
                "--no-run",
            ]))
        })
    });

    println!("\ntest summary");
    let verdict = |r: &Result| if r.is_ok() { "passed" } else { "FAILED" };
    println!("  workspace tests     {}  ({took})", verdict(&tests));
    match &benches {
        Some(r) => println!("  benchmarks compile  {}", verdict(r)),
        None => println!("  benchmarks compile  not reached"),
    }
    println!("\nconformance summary (each suite ran inside the workspace tests)");
    conformance::print_summary(&rows);
    if rows.iter().any(|(_, o, _)| matches!(o, Outcome::Unknown)) {
        println!(
            "  (unknown: the workspace run failed before that suite's result was known; see above)"
        );
    }
    tests?;
    benches.unwrap_or(Ok(()))
}

/// Installs, where missing, the programs the tests run besides the
/// workspace's own (`cargo xtask prepare` runs only this).
pub(crate) fn prepare() -> Result {
    util::step(
        "install the test IdP for token-http (npm ci, if needed)",
        crate::idp::prepare,
    )?;
    util::step(
        "install the vendor client libraries for token-cli's serve tests (Python venv, if needed)",
        crate::venv::prepare,
    )?;
    util::step(
        "install the Node.js vendor client library for token-cli's serve tests (npm ci, if needed)",
        crate::vendor_node::prepare,
    )?;
    util::step(
        "install the deploy/ checkers: kubernetes-validate (Python venv), prometheus and promtool (Debian package, unpacked), if needed",
        crate::deploy::prepare,
    )
}

/// A backend's outcome when the workspace run failed: cargo ran every test
/// target (`--no-fail-fast`) and closed with the list of the ones that
/// failed, as ``error: 2 targets failed:`` followed by lines like
/// `` `-p token-memory --test conformance` ``. Without that list (a compile
/// error, or cargo said something else) the outcome is unknown.
fn outcome_in_failed_run(backend: &Backend, stderr: &str) -> Outcome {
    let listed = stderr.lines().any(|l| {
        l.starts_with("error: ")
            && (l.ends_with(" target failed:") || l.ends_with(" targets failed:"))
    });
    if !listed {
        return Outcome::Unknown;
    }
    let target = format!("`-p {} --test {}`", backend.package, backend.test);
    if stderr.lines().any(|l| l.trim() == target) {
        Outcome::Failed
    } else {
        Outcome::Passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::BACKENDS;

    fn memory() -> &'static Backend {
        BACKENDS.iter().find(|b| b.name == "memory").unwrap()
    }

    #[test]
    fn a_backend_named_in_cargos_failure_list_failed() {
        let stderr = "     Running tests/conformance.rs (target/debug/deps/conformance-1)\n\
                      error: 2 targets failed:\n    `-p token-core --lib`\n    `-p token-memory --test conformance`\n";
        assert!(matches!(
            outcome_in_failed_run(memory(), stderr),
            Outcome::Failed
        ));
    }

    #[test]
    fn a_backend_missing_from_cargos_failure_list_passed() {
        let stderr = "error: 1 target failed:\n    `-p token-conformance --test suite`\n";
        assert!(matches!(
            outcome_in_failed_run(memory(), stderr),
            Outcome::Passed
        ));
    }

    #[test]
    fn without_cargos_failure_list_the_outcome_is_unknown() {
        let stderr = "error: could not compile `token-core` (lib) due to 2 previous errors\n";
        assert!(matches!(
            outcome_in_failed_run(memory(), stderr),
            Outcome::Unknown
        ));
    }
}
