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

use crate::conformance::{self, Outcome, Selection, Services};
use crate::util::{self, Result};

pub(crate) fn run() -> Result {
    let backends = conformance::select(&Selection::All)?;
    println!("{}", conformance::describe_availability());
    let services = Services::start(&backends, conformance::may_skip(&Selection::All))?;

    let started = Instant::now();
    let tests = util::step(
        "workspace tests (unit, integration, doc tests, every backend's conformance suite)",
        || {
            let mut cmd = util::cargo();
            cmd.args(["test", "--workspace"]);
            cmd.envs(services.env());
            util::run(&mut cmd)
        },
    );
    let took = util::format_duration(started.elapsed());

    let rows: Vec<_> = backends
        .iter()
        .map(|&backend| {
            let outcome = match (services.skip_reason(backend), &tests) {
                (Some(why), _) => Outcome::Skipped(why.to_owned()),
                (None, Ok(())) => Outcome::Passed,
                (None, Err(_)) => Outcome::Unknown,
            };
            let how = format!("{} --test {}", backend.package, backend.test);
            (backend, outcome, how)
        })
        .collect();
    drop(services);

    let benches = tests.is_ok().then(|| {
        // Compiled, not run: benchmarks never run in CI, but must not rot.
        util::step("compile the benchmarks (not run)", || {
            util::run(util::cargo().args(["test", "--workspace", "--benches", "--no-run"]))
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
    if tests.is_err() {
        println!("  (\"unknown\": the workspace run failed before all were confirmed; the failing test is named above)");
    }
    tests?;
    benches.unwrap_or(Ok(()))
}
