//! Project automation for token-cache: `cargo xtask <command>`.
//!
//! Run `cargo xtask help` for the commands. Each lives in its own file;
//! this one parses the command line and dispatches.

mod bench;
mod ci;
mod conformance;
mod deploy;
mod dockerfile;
mod idp;
mod redis;
mod test;
mod tidy;
mod util;
mod vendor_node;
mod venv;

use std::process::ExitCode;

use conformance::{Selection, BACKENDS};

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Test,
    Prepare,
    Conformance {
        selection: Selection,
        test_args: Vec<String>,
    },
    Ci,
    Tidy,
    Bench {
        args: Vec<String>,
    },
    RedisCheck,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{}", usage());
            Ok(())
        }
        Command::Test => test::run(),
        Command::Prepare => test::prepare(),
        Command::Conformance {
            selection,
            test_args,
        } => conformance::run(&selection, &test_args),
        Command::Ci => ci::run(),
        Command::Tidy => tidy::run(),
        Command::Bench { args } => bench::run(&args),
        Command::RedisCheck => redis::check(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let backends: Vec<&str> = BACKENDS.iter().map(|b| b.name).collect();
    format!(
        "\
cargo xtask: project automation for token-cache

USAGE:
    cargo xtask <COMMAND> [OPTIONS]

COMMANDS:
    test
        Every test: `cargo test --workspace` (unit, integration and doc tests, and each
        backend's conformance suite, with the Redis servers it needs started on free
        loopback ports), then compiles the benchmarks. This is what .ci/run runs.
        First installs what the tests run, when missing: oidc-provider (npm ci), the
        Python venvs, and prometheus/promtool unpacked from Debian's package.

    prepare
        Only that installation (idempotent), e.g. before `cargo test -p token-cli`.

    conformance [--backend <NAME>] [-- <TEST ARGS>]
        Runs the conformance suite against one backend, or all, and prints which
        passed. NAME: {backends}, all (the default).
        A backend whose crate is not in the workspace yet cannot run; `all` says
        which exist. TEST ARGS go to the test binary (e.g. a name filter).

    ci
        `tidy`, cargo fmt --check, clippy with -D warnings, `test`, docs with
        -D warnings; stops at the first failing step.

    tidy
        Checks no compiler makes, each failing with a sentence naming the problem:
        the README's Rust version is the workspace rust-version, every conformance
        check is in its theme's list, token-core depends on no backend, the docs use
        plain words, and deploy/Dockerfile builds and runs a binary the workspace has
        (package, bin name, path) with a Rust at least the workspace rust-version, as non-root.

    bench [ARGS...]
        `cargo bench -p benches -- ARGS`: ARGS go to criterion (a name filter,
        --save-baseline main, ...). Refuses to run under CI.

    redis --check
        Starts a standalone redis-server and a 3-master Redis Cluster on free loopback
        ports, checks that they answer, and stops them.

    help
        This text.

ENVIRONMENT:
    CI=true    A backend whose prerequisite (e.g. redis-server) is missing fails the run
               instead of being skipped with a warning.",
        backends = backends.join(", ")
    )
}

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((name, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let own_args = rest.iter().take_while(|a| *a != "--");
    if name != "bench" && own_args.clone().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match name.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "test" => no_arguments(name, rest).map(|()| Command::Test),
        "prepare" => no_arguments(name, rest).map(|()| Command::Prepare),
        "ci" => no_arguments(name, rest).map(|()| Command::Ci),
        "tidy" => no_arguments(name, rest).map(|()| Command::Tidy),
        "conformance" => parse_conformance(rest),
        "bench" => {
            let args = match rest.split_first() {
                Some((first, after)) if first == "--" => after,
                _ => rest,
            };
            Ok(Command::Bench {
                args: args.to_vec(),
            })
        }
        "redis" => match rest {
            [flag] if flag == "--check" => Ok(Command::RedisCheck),
            [] => Err("`redis` needs `--check`".to_owned()),
            [other, ..] => Err(unknown_argument(name, other)),
        },
        other => Err(format!("unknown command `{other}`")),
    }
}

fn parse_conformance(args: &[String]) -> Result<Command, String> {
    let mut selection = None;
    let mut test_args = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--" {
            test_args = iter.by_ref().cloned().collect();
            break;
        } else if arg == "--backend" {
            iter.next().ok_or("`--backend` needs a value")?.clone()
        } else if let Some(value) = arg.strip_prefix("--backend=") {
            value.to_owned()
        } else {
            return Err(unknown_argument("conformance", arg));
        };
        if selection.is_some() {
            return Err(
                "`--backend` given twice; use `--backend all` for every backend".to_owned(),
            );
        }
        selection = Some(match value.as_str() {
            "all" => Selection::All,
            "" => return Err("`--backend` needs a value".to_owned()),
            name => Selection::One(name.to_owned()),
        });
    }
    Ok(Command::Conformance {
        selection: selection.unwrap_or(Selection::All),
        test_args,
    })
}

fn no_arguments(command: &str, rest: &[String]) -> Result<(), String> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(unknown_argument(command, arg)),
    }
}

fn unknown_argument(command: &str, arg: &str) -> String {
    format!("unexpected argument `{arg}` for `{command}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse(&args)
    }

    fn conformance(selection: Selection, test_args: &[&str]) -> Command {
        Command::Conformance {
            selection,
            test_args: test_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn no_arguments_or_help_prints_usage() {
        for line in ["", "help", "-h", "--help", "test --help", "conformance -h"] {
            assert_eq!(parse_str(line), Ok(Command::Help), "{line:?}");
        }
    }

    #[test]
    fn simple_commands_take_no_arguments() {
        assert_eq!(parse_str("test"), Ok(Command::Test));
        assert_eq!(parse_str("ci"), Ok(Command::Ci));
        assert_eq!(parse_str("tidy"), Ok(Command::Tidy));
        assert_eq!(parse_str("prepare"), Ok(Command::Prepare));
        assert!(parse_str("prepare --force").is_err());
        assert!(parse_str("tidy --fix").is_err());
        let err = parse_str("test --all-features").unwrap_err();
        assert!(err.contains("`--all-features`"), "{err}");
        assert!(parse_str("ci extra").is_err());
    }

    #[test]
    fn conformance_backend_in_both_spellings() {
        let memory = Selection::One("memory".into());
        assert_eq!(
            parse_str("conformance --backend memory"),
            Ok(conformance(memory.clone(), &[]))
        );
        assert_eq!(
            parse_str("conformance --backend=memory"),
            Ok(conformance(memory, &[]))
        );
        assert_eq!(
            parse_str("conformance --backend all"),
            Ok(conformance(Selection::All, &[]))
        );
        assert_eq!(
            parse_str("conformance"),
            Ok(conformance(Selection::All, &[]))
        );
    }

    #[test]
    fn conformance_passes_what_follows_the_separator_to_the_test() {
        assert_eq!(
            parse_str("conformance --backend redis -- lease --nocapture"),
            Ok(conformance(
                Selection::One("redis".into()),
                &["lease", "--nocapture"]
            ))
        );
    }

    #[test]
    fn conformance_rejects_bad_flags() {
        assert!(parse_str("conformance --backend")
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_str("conformance --backend=")
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_str("conformance --backend a --backend b")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_str("conformance memory")
            .unwrap_err()
            .contains("`memory`"));
    }

    #[test]
    fn bench_passes_everything_through() {
        let args = |v: &[&str]| Command::Bench {
            args: v.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(parse_str("bench"), Ok(args(&[])));
        assert_eq!(
            parse_str("bench hit --save-baseline main"),
            Ok(args(&["hit", "--save-baseline", "main"]))
        );
        assert_eq!(parse_str("bench -- --help"), Ok(args(&["--help"])));
    }

    #[test]
    fn redis_needs_check() {
        assert_eq!(parse_str("redis --check"), Ok(Command::RedisCheck));
        assert!(parse_str("redis").unwrap_err().contains("--check"));
        assert!(parse_str("redis --start").is_err());
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(parse_str("deploy").unwrap_err(), "unknown command `deploy`");
    }

    #[test]
    fn usage_lists_every_backend() {
        let text = usage();
        for backend in BACKENDS {
            assert!(text.contains(backend.name), "{}", backend.name);
        }
    }
}
