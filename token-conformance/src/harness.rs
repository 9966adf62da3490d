//! The list of checks and the runners: libtest-mimic trials for a backend's
//! `tests/conformance.rs`, and [`run_all`] for everything else.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Conclusion, Failed, Trial};

use crate::failure::{error_chain, CheckFailure};
use crate::fixture::{Fixture, FixtureFactory};
use crate::report::{CheckReport, Outcome, Report};

/// The longest a single check may run, building its fixture included,
/// before it fails as hung. Generous: the slowest checks sleep about two
/// seconds, and a store must bound every operation in time anyway.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Worker threads of the runtime each trial runs on: enough for real
/// parallelism in the concurrency checks, few enough that trials can run
/// side by side.
pub const TRIAL_WORKER_THREADS: usize = 2;

/// The future a [`Check`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CheckFailure>> + Send + 'a>>;

/// One behaviour of the suite, by theme and name, runnable on a fixture.
#[derive(Clone, Copy)]
pub struct Check {
    theme: &'static str,
    name: &'static str,
    run: for<'a> fn(&'a Fixture) -> CheckFuture<'a>,
}

impl Check {
    pub(crate) const fn new(
        theme: &'static str,
        name: &'static str,
        run: for<'a> fn(&'a Fixture) -> CheckFuture<'a>,
    ) -> Self {
        Self { theme, name, run }
    }

    /// The theme (`basic`, `expiry`, `lease`, `concurrency`, `corruption`).
    pub fn theme(&self) -> &'static str {
        self.theme
    }

    /// The check's name, which is also the name of its `pub async fn`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the check on `fixture`; a check that does not apply returns a
    /// [skipped](CheckFailure::is_skipped) failure.
    pub fn run<'a>(&self, fixture: &'a Fixture) -> CheckFuture<'a> {
        (self.run)(fixture)
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Check({}::{})", self.theme, self.name)
    }
}

/// Declares a theme's checks: `CHECKS`, in the order they run. Each theme
/// file (`basic.rs`, `lease.rs`, ...) calls it once with every `pub async
/// fn` it defines, and [`THEMES`] lists the theme files; `cargo xtask tidy`
/// fails when a check is missing from its theme's list.
macro_rules! theme_checks {
    ($theme:ident: $($name:ident),* $(,)?) => {
        /// This theme's checks, in the order they run.
        pub(crate) static CHECKS: &[$crate::harness::Check] = &[$($crate::harness::Check::new(
            stringify!($theme),
            stringify!($name),
            {
                fn run(fixture: &$crate::fixture::Fixture) -> $crate::harness::CheckFuture<'_> {
                    Box::pin($name(fixture))
                }
                run
            },
        )),*];
    };
}
pub(crate) use theme_checks;

/// Every theme, in the order [`run_all`] runs them.
static THEMES: &[&[Check]] = &[
    crate::basic::CHECKS,
    crate::expiry::CHECKS,
    crate::lease::CHECKS,
    crate::concurrency::CHECKS,
    crate::corruption::CHECKS,
];

/// Every check of the suite, grouped by theme, in the order
/// [`run_all`] runs them.
pub fn checks() -> &'static [Check] {
    static ALL: OnceLock<Vec<Check>> = OnceLock::new();
    ALL.get_or_init(|| {
        THEMES
            .iter()
            .flat_map(|theme| theme.iter().copied())
            .collect()
    })
}

/// Builds a fresh fixture with `factory` and runs `check` on it, on the
/// current tokio runtime. Never panics: a panic in the store or the check,
/// a factory error and a timeout are all [`Outcome::Failed`].
pub async fn run_check(check: Check, factory: &dyn FixtureFactory) -> Outcome {
    let fixture = factory.make();
    let task = tokio::spawn(tokio::time::timeout(CHECK_TIMEOUT, async move {
        let fixture = fixture.await.map_err(|e| {
            CheckFailure::new(format!("the fixture factory failed: {}", error_chain(&*e)))
        })?;
        check.run(&fixture).await
    }));
    match task.await {
        Ok(Ok(Ok(()))) => Outcome::Passed,
        Ok(Ok(Err(f))) if f.is_skipped() => Outcome::Skipped {
            reason: f.message().to_owned(),
        },
        Ok(Ok(Err(f))) => Outcome::Failed {
            message: f.message().to_owned(),
        },
        Ok(Err(_elapsed)) => Outcome::Failed {
            message: format!("did not finish within {CHECK_TIMEOUT:?}"),
        },
        Err(e) if e.is_panic() => Outcome::Failed {
            message: format!("panicked: {}", panic_text(&*e.into_panic())),
        },
        Err(e) => Outcome::Failed {
            message: format!("the check's task was cancelled: {e}"),
        },
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a non-text panic payload"
    }
}

/// Runs every check, one after another, each on a fresh fixture from
/// `factory`, and reports each outcome. For callers without libtest-mimic:
///
/// ```no_run
/// # use std::sync::{Arc, OnceLock};
/// # fn my_store() -> Arc<dyn token_core::CacheStore> { unimplemented!() }
/// # async fn test() {
/// use token_conformance::{run_all, Fixture};
///
/// let report = run_all(|| async { Ok(Fixture::from_arc(my_store())) }).await;
/// assert!(report.is_success(), "{report}");
/// # }
/// ```
///
/// Run it on a multi-thread runtime: on a current-thread runtime the
/// concurrency checks still pass or fail correctly, but prove less.
pub async fn run_all(factory: impl FixtureFactory) -> Report {
    let mut report = Report::default();
    for &check in checks() {
        let started = Instant::now();
        let outcome = run_check(check, &factory).await;
        report.checks.push(CheckReport {
            theme: check.theme,
            name: check.name,
            outcome,
            elapsed: started.elapsed(),
        });
    }
    report
}

/// One libtest-mimic trial per check, named `<backend>::<theme>::<check>`.
///
/// Each trial builds its own tokio runtime (multi-thread,
/// [`TRIAL_WORKER_THREADS`] workers) and a fresh fixture, so trials run in
/// parallel. A check that does not apply is reported as ignored at run
/// time, with its reason.
pub fn trials(backend: &str, factory: impl FixtureFactory) -> Vec<Trial> {
    let factory: Arc<dyn FixtureFactory> = Arc::new(factory);
    checks()
        .iter()
        .map(|&check| {
            let factory = Arc::clone(&factory);
            let name = format!("{backend}::{}::{}", check.theme, check.name);
            Trial::ignorable_test(name, move || run_trial(check, &*factory))
        })
        .collect()
}

fn run_trial(check: Check, factory: &dyn FixtureFactory) -> Result<Completion, Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(TRIAL_WORKER_THREADS)
        .thread_name(format!("conformance-{}", check.name))
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("could not start a tokio runtime: {e}")))?;
    let outcome = runtime.block_on(run_check(check, factory));
    // Tasks a failed check left behind must not keep the trial alive.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Outcome::Passed => Ok(Completion::Completed),
        Outcome::Skipped { reason } => Ok(Completion::ignored_with(reason)),
        Outcome::Failed { message } => Err(Failed::from(message)),
    }
}

/// Runs every check as a libtest-mimic trial with the given command-line
/// `args` and returns the conclusion.
pub fn run(backend: &str, factory: impl FixtureFactory, args: &Arguments) -> Conclusion {
    libtest_mimic::run(args, trials(backend, factory))
}

/// The whole `main` of a backend's conformance test: parses the test
/// command line (filters, `--list`, `--test-threads`, ...), runs every
/// check as a trial and exits with the conventional status.
///
/// In `Cargo.toml`:
///
/// ```toml
/// [[test]]
/// name = "conformance"
/// harness = false
/// ```
///
/// and in `tests/conformance.rs`:
///
/// ```no_run
/// # use std::sync::{Arc, OnceLock};
/// # fn my_store() -> Arc<dyn token_core::CacheStore> { unimplemented!() }
/// use token_conformance::Fixture;
///
/// fn main() {
///     token_conformance::run_main("my-store", || async { Ok(Fixture::from_arc(my_store())) })
/// }
/// ```
pub fn run_main(backend: &str, factory: impl FixtureFactory) -> ! {
    run(backend, factory, &Arguments::from_args()).exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_are_unique_and_grouped_by_theme() {
        let mut seen = std::collections::HashSet::new();
        for c in checks() {
            assert!(seen.insert(c.name()), "duplicate check {}", c.name());
        }
        let themes: Vec<_> = checks().iter().map(Check::theme).collect();
        let mut order = themes.clone();
        order.dedup();
        assert_eq!(
            order,
            ["basic", "expiry", "lease", "concurrency", "corruption"]
        );
    }

    #[test]
    fn every_theme_list_names_its_own_theme() {
        for theme in THEMES {
            let first = theme.first().map(Check::theme);
            assert!(theme.iter().all(|c| Some(c.theme()) == first), "{theme:?}");
        }
        assert_eq!(
            checks().len(),
            THEMES.iter().map(|t| t.len()).sum::<usize>()
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        assert_eq!(panic_text(&"static"), "static");
        assert_eq!(panic_text(&String::from("owned")), "owned");
        assert_eq!(panic_text(&5u8), "a non-text panic payload");
    }
}
