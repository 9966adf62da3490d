//! What [`run_all`](crate::run_all) returns: one outcome per check.

use std::fmt;
use std::time::Duration;

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The store behaved as the contract requires.
    Passed,
    /// The check does not apply to this store or fixture.
    Skipped {
        /// Why it does not apply.
        reason: String,
    },
    /// The store broke the contract, the fixture could not be built, the
    /// check panicked or timed out.
    Failed {
        /// What went wrong.
        message: String,
    },
}

impl Outcome {
    /// True for [`Outcome::Failed`].
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }

    /// True for [`Outcome::Skipped`].
    pub fn is_skipped(&self) -> bool {
        matches!(self, Self::Skipped { .. })
    }
}

/// The outcome of one check in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub(crate) theme: &'static str,
    pub(crate) name: &'static str,
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
}

impl CheckReport {
    /// The check's theme (`basic`, `expiry`, `lease`, ...).
    pub fn theme(&self) -> &'static str {
        self.theme
    }

    /// The check's name within its theme.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How it ended.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// How long it took, building the fixture included.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{}::{}", self.theme, self.name);
        match &self.outcome {
            Outcome::Passed => write!(f, "ok      {name} ({} ms)", self.elapsed.as_millis()),
            Outcome::Skipped { reason } => write!(f, "skipped {name}: {reason}"),
            Outcome::Failed { message } => write!(f, "FAILED  {name}: {message}"),
        }
    }
}

/// The outcomes of a whole run, in the order the checks ran.
///
/// `Display` prints one line per check and a summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub(crate) checks: Vec<CheckReport>,
}

impl Report {
    /// Every check's outcome.
    pub fn checks(&self) -> &[CheckReport] {
        &self.checks
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckReport> + '_ {
        self.checks.iter().filter(|c| c.outcome.is_failed())
    }

    /// How many checks passed.
    pub fn passed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Passed)
            .count()
    }

    /// How many checks were skipped.
    pub fn skipped(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.outcome.is_skipped())
            .count()
    }

    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.failures().count()
    }

    /// True when no check failed (skipped checks do not count as failures).
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        write!(
            f,
            "{} passed, {} skipped, {} failed",
            self.passed(),
            self.skipped(),
            self.failed()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &'static str, outcome: Outcome) -> CheckReport {
        CheckReport {
            theme: "basic",
            name,
            outcome,
            elapsed: Duration::from_millis(3),
        }
    }

    #[test]
    fn counts_and_prints_every_outcome() {
        let report = Report {
            checks: vec![
                entry("a", Outcome::Passed),
                entry(
                    "b",
                    Outcome::Skipped {
                        reason: "not serialized".into(),
                    },
                ),
                entry(
                    "c",
                    Outcome::Failed {
                        message: "boom".into(),
                    },
                ),
            ],
        };
        assert_eq!(
            (report.passed(), report.skipped(), report.failed()),
            (1, 1, 1)
        );
        assert!(!report.is_success());
        assert_eq!(
            report.to_string(),
            "ok      basic::a (3 ms)\nskipped basic::b: not serialized\nFAILED  basic::c: boom\n\
             1 passed, 1 skipped, 1 failed"
        );
    }
}
