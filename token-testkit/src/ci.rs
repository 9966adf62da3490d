//! "Are we in CI", once, and what a test does when a server it needs cannot
//! run here: skip loudly, or fail under CI.

use std::fmt::Display;

/// True when `CI` is set to anything but empty, `0` or `false` (in any
/// case): the same rule as `cargo xtask`. Then no prerequisite may be
/// missing, and a test that cannot run fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| means_ci(&v))
}

fn means_ci(value: &str) -> bool {
    let v = value.trim();
    !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
}

/// A test that cannot run here because of `why`: under CI, panics with the
/// reason; otherwise prints `SKIPPED: <test> because <why>` to stderr and
/// returns `None`, for `let Some(x) = ... else { return };`.
///
/// The test is named from the current thread, which libtest names after
/// the test; on a main thread (a `harness = false` target), by the test
/// binary's name.
///
/// # Panics
///
/// Under CI ([`in_ci`]), always.
pub fn skip_or_fail<T>(why: impl Display) -> Option<T> {
    let test = current_test();
    if in_ci() {
        panic!("{test} cannot run, and CI is set, so this is a failure: {why}");
    }
    eprintln!("SKIPPED: {test} because {why}");
    None
}

/// The running test's name, or the test binary's (without cargo's hash).
fn current_test() -> String {
    if let Some(name) = std::thread::current().name().filter(|n| *n != "main") {
        return name.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let stem = exe.file_stem()?.to_string_lossy().into_owned();
            Some(match stem.rsplit_once('-') {
                Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    name.to_owned()
                }
                _ => stem,
            })
        })
        .unwrap_or_else(|| "this test".to_owned())
}

/// `Some(value)`, or [`skip_or_fail`] with the error.
///
/// # Panics
///
/// On an error under CI ([`in_ci`]).
pub fn require<T, E: Display>(result: Result<T, E>) -> Option<T> {
    result.map_or_else(skip_or_fail, Some)
}

#[cfg(test)]
mod tests {
    use super::means_ci;

    #[test]
    fn ci_is_any_value_but_empty_zero_or_false_in_any_case() {
        for yes in ["true", "1", "yes", "TRUE", "github"] {
            assert!(means_ci(yes), "{yes}");
        }
        for no in ["", " ", "0", "false", "FALSE", "False", "fAlSe"] {
            assert!(!means_ci(no), "{no:?}");
        }
    }
}
