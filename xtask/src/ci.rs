//! `cargo xtask ci`: the checks a change must pass, in order, stopping at
//! the first failure.

use crate::test::WORKSPACE_FEATURES;
use crate::util::{self, Result};

type Step = (&'static str, fn() -> Result);

const STEPS: [Step; 5] = [
    ("tidy", crate::tidy::run),
    ("format", format),
    ("clippy", clippy),
    ("test", crate::test::run),
    ("docs", docs),
];

pub(crate) fn run() -> Result {
    for (i, (name, check)) in STEPS.iter().enumerate() {
        let title = format!("ci step {}/{}: {name}", i + 1, STEPS.len());
        util::step(&title, check).map_err(|e| format!("ci step `{name}` failed: {e}"))?;
    }
    println!("\nci: all {} steps passed", STEPS.len());
    Ok(())
}

fn format() -> Result {
    util::run(util::cargo().args(["fmt", "--all", "--check"]))
}

/// Lints every target of every member: this also compile-checks the
/// benchmarks, the examples and xtask itself.
fn clippy() -> Result {
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        WORKSPACE_FEATURES,
        "--",
        "-D",
        "warnings",
    ]))
}

fn docs() -> Result {
    util::run(
        util::cargo()
            .args([
                "doc",
                "--workspace",
                "--no-deps",
                "--features",
                WORKSPACE_FEATURES,
            ])
            .env("RUSTDOCFLAGS", rustdocflags()),
    )
}

/// `-D warnings`, after whatever the caller already set.
fn rustdocflags() -> String {
    match std::env::var("RUSTDOCFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} -D warnings"),
        _ => "-D warnings".to_owned(),
    }
}
