//! `cargo xtask conformance --backend <name|all>`: runs the `token-conformance`
//! suite against cache backends, starting the servers each one needs.
//!
//! Every backend is one row of [`BACKENDS`]. A backend is runnable once its
//! crate exists (`<package>/Cargo.toml`); until then asking for it is
//! an error that names the missing crate, and `all` leaves it out and says so.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use crate::redis::{Deployment, Tools, Topology};
use crate::util::{self, Result};

/// A cache backend and how its conformance test is run.
#[derive(Debug)]
pub(crate) struct Backend {
    /// What `--backend` calls it.
    pub(crate) name: &'static str,
    /// The crate, in `<package>/` at the workspace root.
    pub(crate) package: &'static str,
    /// The integration test target (`cargo test -p <package> --test <test>`)
    /// that runs the suite against this backend.
    pub(crate) test: &'static str,
    /// What must be running for the test; xtask provides it.
    pub(crate) needs: Needs,
}

/// What a backend's conformance test needs besides itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Nothing: in-process or on-disk in a temp dir.
    Nothing,
    /// A private Redis deployment, passed to the test through an env var
    /// (`TOKEN_CACHE_REDIS_URL` or `TOKEN_CACHE_REDIS_CLUSTER_URLS`).
    Redis(Topology),
}

/// Every backend the suite knows. Adding one is one row; the row starts to
/// count as soon as its crate exists.
pub(crate) const BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        package: "token-memory",
        test: "conformance",
        needs: Needs::Nothing,
    },
    Backend {
        name: "sled",
        package: "token-sled",
        test: "conformance",
        needs: Needs::Nothing,
    },
    Backend {
        name: "redis",
        package: "token-redis",
        test: "conformance",
        needs: Needs::Redis(Topology::Standalone),
    },
    Backend {
        name: "redis-cluster",
        package: "token-redis",
        test: "conformance_cluster",
        needs: Needs::Redis(Topology::Cluster),
    },
];

/// What `--backend` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every backend whose crate exists.
    All,
    /// One backend by name.
    One(String),
}

impl Backend {
    fn dir(&self) -> PathBuf {
        util::project_root().join(self.package)
    }

    /// True when the backend's crate is in the workspace.
    pub(crate) fn exists(&self) -> bool {
        self.dir().join("Cargo.toml").is_file()
    }

    /// Fails unless the crate has the conformance test this row names, at
    /// one of the places cargo looks for it.
    fn check_test_exists(&self) -> Result {
        let tests = self.dir().join("tests");
        let candidates = [
            tests.join(format!("{}.rs", self.test)),
            tests.join(self.test).join("main.rs"),
        ];
        if candidates.iter().any(|p| p.is_file()) {
            return Ok(());
        }
        Err(format!(
            "backend `{}`: crate {} has no `{}` test (tests/{}.rs); every backend must run the \
             conformance suite. Add the test, or fix the backend's row in xtask/src/conformance.rs",
            self.name, self.package, self.test, self.test
        )
        .into())
    }

    fn command_line(&self) -> String {
        format!("cargo test -p {} --test {}", self.package, self.test)
    }
}

/// The backends `selection` names, checked: unknown names, backends whose
/// crate does not exist yet, and backend crates without their conformance
/// test are errors.
pub(crate) fn select(selection: &Selection) -> Result<Vec<&'static Backend>> {
    let backends = existing(selection)?;
    for backend in &backends {
        backend.check_test_exists()?;
    }
    Ok(backends)
}

/// The backends `selection` names whose crates exist; naming an unknown
/// backend or one whose crate does not exist yet is an error.
fn existing(selection: &Selection) -> Result<Vec<&'static Backend>> {
    let name = match selection {
        Selection::All => return Ok(BACKENDS.iter().filter(|b| b.exists()).collect()),
        Selection::One(name) => name,
    };
    let backend = BACKENDS.iter().find(|b| b.name == name).ok_or_else(|| {
        let known: Vec<_> = BACKENDS.iter().map(|b| b.name).collect();
        format!(
            "unknown backend `{name}`; known backends: {}, all",
            known.join(", ")
        )
    })?;
    if !backend.exists() {
        return Err(format!(
            "backend `{name}` cannot run yet: its crate `{}` ({}/) is not in the workspace",
            backend.package, backend.package
        )
        .into());
    }
    Ok(vec![backend])
}

/// Says which backends exist and which do not yet.
pub(crate) fn describe_availability() -> String {
    let (present, missing): (Vec<_>, Vec<_>) = BACKENDS.iter().partition(|b| b.exists());
    let names = |v: &[&Backend]| v.iter().map(|b| b.name).collect::<Vec<_>>().join(", ");
    let mut out = format!("backends in this workspace: {}", names(&present));
    if !missing.is_empty() {
        let _ = write!(out, " (not yet: {})", names(&missing));
    }
    out
}

/// The servers started for a set of backends, and the env vars that point
/// tests at them. Dropping it stops the servers.
#[derive(Debug, Default)]
pub(crate) struct Services {
    deployments: Vec<Deployment>,
    /// Backends whose prerequisites are missing, with the reason. Only ever
    /// filled when skipping is allowed.
    skipped: Vec<(&'static str, String)>,
}

impl Services {
    /// Starts, once per topology, what `backends` need. A prerequisite that
    /// cannot be provided fails, unless `may_skip`: then the backend is
    /// recorded as skipped, with a loud message.
    pub(crate) fn start(backends: &[&'static Backend], may_skip: bool) -> Result<Self> {
        let mut services = Self::default();
        for backend in backends {
            let Needs::Redis(topology) = backend.needs else {
                continue;
            };
            if services
                .deployments
                .iter()
                .any(|d| d.topology() == topology)
            {
                continue;
            }
            let started = Tools::ensure().and_then(|tools| topology.start(&tools));
            match started {
                Ok(deployment) => {
                    let (name, value) = deployment.env();
                    println!("{}: {name}={value}", topology.describe());
                    services.deployments.push(deployment);
                }
                Err(e) if !may_skip => {
                    return Err(format!(
                        "backend `{}` needs a {}, which could not be started:\n{e}",
                        backend.name,
                        topology.describe()
                    )
                    .into());
                }
                Err(e) => {
                    println!(
                        "\nWARNING: SKIPPING backend `{}`: it needs a {}, which could not be started:\n{e}\n",
                        backend.name,
                        topology.describe()
                    );
                    let why = format!("no {}: see the warning above", topology.describe());
                    services.skipped.push((backend.name, why));
                }
            }
        }
        Ok(services)
    }

    /// The env vars to hand every test command.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        self.deployments.iter().map(Deployment::env).collect()
    }

    /// Why `backend` is skipped, if it is.
    pub(crate) fn skip_reason(&self, backend: &Backend) -> Option<&str> {
        self.skipped
            .iter()
            .find(|(name, _)| *name == backend.name)
            .map(|(_, why)| why.as_str())
    }
}

/// How one backend's run ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Passed,
    Failed,
    /// Its tests ran in a larger run that failed somewhere.
    Unknown,
    Skipped(String),
}

/// Prints the per-backend table that ends `conformance` and `test`.
pub(crate) fn print_summary(rows: &[(&Backend, Outcome, String)]) {
    for (backend, outcome, how) in rows {
        let verdict = match outcome {
            Outcome::Passed => "passed".to_owned(),
            Outcome::Failed => "FAILED".to_owned(),
            Outcome::Unknown => "unknown".to_owned(),
            Outcome::Skipped(why) => format!("SKIPPED ({why})"),
        };
        println!("  {:<14} {verdict:<8} {how}", backend.name);
    }
    for backend in BACKENDS.iter().filter(|b| !b.exists()) {
        println!(
            "  {:<14} -        not in the workspace yet (crate {})",
            backend.name, backend.package
        );
    }
}

/// Whether a backend whose prerequisite is missing may be skipped (loudly)
/// instead of failing the run: never under CI, and never when it was asked
/// for by name.
pub(crate) fn may_skip(selection: &Selection) -> bool {
    *selection == Selection::All && !util::is_ci()
}

/// `cargo xtask conformance`: runs each selected backend's conformance test
/// (all of them, even after a failure), prints a summary, and fails if any
/// failed.
pub(crate) fn run(selection: &Selection, test_args: &[String]) -> Result {
    let backends = select(selection)?;
    println!("{}", describe_availability());
    let services = Services::start(&backends, may_skip(selection))?;
    let mut rows = Vec::new();
    for backend in backends {
        if let Some(why) = services.skip_reason(backend) {
            rows.push((backend, Outcome::Skipped(why.to_owned()), String::new()));
            continue;
        }
        let started = Instant::now();
        let mut cmd = util::cargo();
        cmd.args(["test", "-p", backend.package, "--test", backend.test]);
        if !test_args.is_empty() {
            cmd.arg("--").args(test_args);
        }
        cmd.envs(services.env());
        let result = util::step(&format!("conformance: {}", backend.name), || {
            util::run(&mut cmd)
        });
        let how = format!(
            "{} ({})",
            backend.command_line(),
            util::format_duration(started.elapsed())
        );
        let outcome = if result.is_ok() {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
        rows.push((backend, outcome, how));
    }
    drop(services);
    println!("\nconformance summary");
    print_summary(&rows);
    let failed: Vec<_> = rows
        .iter()
        .filter(|(_, o, _)| matches!(o, Outcome::Failed))
        .map(|(b, _, _)| b.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("conformance failed for: {}", failed.join(", ")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_are_unique_and_not_all() {
        for (i, b) in BACKENDS.iter().enumerate() {
            assert_ne!(b.name, "all");
            assert!(
                BACKENDS[i + 1..].iter().all(|o| o.name != b.name),
                "{}",
                b.name
            );
        }
    }

    #[test]
    fn selecting_an_unknown_backend_names_the_known_ones() {
        let err = existing(&Selection::One("mongo".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown backend `mongo`"), "{err}");
        assert!(err.contains("memory, sled, redis, redis-cluster"), "{err}");
    }

    #[test]
    fn selecting_a_backend_without_its_crate_names_the_crate() {
        for backend in BACKENDS.iter().filter(|b| !b.exists()) {
            let err = existing(&Selection::One(backend.name.into()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(backend.package), "{err}");
        }
    }

    #[test]
    fn all_selects_exactly_the_backends_that_exist() {
        let all = existing(&Selection::All).unwrap();
        let expected: Vec<_> = BACKENDS
            .iter()
            .filter(|b| b.exists())
            .map(|b| b.name)
            .collect();
        assert_eq!(all.iter().map(|b| b.name).collect::<Vec<_>>(), expected);
        assert!(expected.contains(&"memory"));
    }
}
