//! `cargo xtask bench [ARGS...]`: the criterion benchmarks, with ARGS passed
//! to criterion, then the hit-path, key-map and gateway ratios against their floors, computed
//! from this run's results. Never under CI: a shared CI machine gives
//! numbers nobody should compare, and the time is better spent on tests.

use std::path::Path;

use crate::util::{self, Result};

/// What a target compares, from criterion's medians of one run. Ids are
/// criterion's directories under `target/criterion`: `group/function`, with
/// every `/` inside the group's or the function's name turned into `_`, and
/// `/parameter` after it for a `BenchmarkId`.
enum Measure {
    /// `numerator / denominator`.
    Ratio(&'static str, &'static str),
    /// `of - over`, in microseconds: the latency one hop adds.
    AddedMicros {
        of: &'static str,
        over: &'static str,
    },
    /// Elements per second for a bench of `per_iter` elements an iteration.
    PerSecond { id: &'static str, per_iter: f64 },
}

/// A target the project holds itself to.
struct Target {
    what: &'static str,
    measure: Measure,
    /// `Some((true, x))`: at most x; `Some((false, x))`: at least x.
    bound: Option<(bool, f64)>,
}

/// Requests a gateway throughput iteration keeps in flight
/// (`benches/benches/gateway.rs`).
const GATEWAY_IN_FLIGHT: f64 = 64.0;

const TARGETS: &[Target] = &[
    Target {
        what: "handle hit / arc_swap floor (1 thread)",
        measure: Measure::Ratio("hit/handle_token_1t", "hit/floor_arc_swap_1t"),
        bound: Some((true, 1.2)),
    },
    Target {
        what: "get_token hit / keyed RwLock map floor (1 thread)",
        measure: Measure::Ratio("hit/get_token_1t", "hit/floor_keyed_rwlock_map_1t"),
        bound: Some((true, 1.2)),
    },
    Target {
        what: "get_token hit / moka get (1 thread)",
        measure: Measure::Ratio("hit/get_token_1t", "hit/floor_moka_get_1t"),
        bound: None,
    },
    Target {
        what: "handle hit scaling, 2 threads vs 1",
        measure: Measure::Ratio("hit/handle_token_1t", "hit/handle_token_2t"),
        bound: Some((false, 1.8)),
    },
    Target {
        what: "get_token hit scaling, 2 threads vs 1",
        measure: Measure::Ratio("hit/get_token_1t", "hit/get_token_2t"),
        bound: Some((false, 1.8)),
    },
    Target {
        what: "key map cold fill per key, 1M keys vs 1k",
        measure: Measure::Ratio("keys/get_token_fill/1000000", "keys/get_token_fill/1000"),
        bound: Some((true, 2.0)),
    },
    Target {
        what: "key map cold fill per key vs moka insert, 1M keys",
        measure: Measure::Ratio("keys/get_token_fill/1000000", "keys/moka_insert/1000000"),
        bound: Some((true, 5.0)),
    },
    Target {
        what: "gateway p50 latency added over direct",
        measure: Measure::AddedMicros {
            of: "gateway_latency/gateway",
            over: "gateway_latency/direct",
        },
        bound: Some((true, 50.0)),
    },
    Target {
        what: "gateway p50 latency / plain hyper proxy's",
        measure: Measure::Ratio("gateway_latency/gateway", "gateway_latency/plain_proxy"),
        bound: Some((true, 1.2)),
    },
    Target {
        what: "gateway throughput / plain proxy's",
        measure: Measure::Ratio(
            "gateway_throughput/plain_proxy",
            "gateway_throughput/gateway",
        ),
        bound: None,
    },
    Target {
        what: "requests/s through the gateway (64 in flight)",
        measure: Measure::PerSecond {
            id: "gateway_throughput/gateway",
            per_iter: GATEWAY_IN_FLIGHT,
        },
        bound: Some((false, 20_000.0)),
    },
    Target {
        what: "requests/s from the token endpoint (64 in flight)",
        measure: Measure::PerSecond {
            id: "gateway_throughput/token_endpoint",
            per_iter: GATEWAY_IN_FLIGHT,
        },
        bound: Some((false, 30_000.0)),
    },
    // --- DPoP (issue 21): benches/benches/dpop.rs ---
    Target {
        what: "DPoP proof signing, ES256 / Ed25519",
        measure: Measure::Ratio("dpop_sign/es256", "dpop_sign/ed25519"),
        bound: None,
    },
    Target {
        what: "gateway time per request, DPoP / Bearer (64 in flight)",
        measure: Measure::Ratio(
            "dpop_gateway_throughput/dpop",
            "dpop_gateway_throughput/bearer",
        ),
        bound: Some((true, 1.5)),
    },
    // --- end DPoP ---
];

impl Measure {
    /// The value, and how to print it; `None` when a bench did not run.
    fn eval(&self, median_ns: impl Fn(&str) -> Option<f64>) -> Option<(f64, String)> {
        Some(match *self {
            Self::Ratio(num, den) => {
                let r = median_ns(num)? / median_ns(den)?;
                (r, format!("{r:.2}x"))
            }
            Self::AddedMicros { of, over } => {
                let us = (median_ns(of)? - median_ns(over)?) / 1e3;
                (us, format!("{us:+.1} us"))
            }
            Self::PerSecond { id, per_iter } => {
                let rate = per_iter / (median_ns(id)? / 1e9);
                (rate, format!("{rate:.0}/s"))
            }
        })
    }
}

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
    let started = std::time::SystemTime::now();
    util::run(&mut cmd)?;
    report(
        &util::project_root().join("target").join("criterion"),
        started,
    );
    Ok(())
}

/// Prints the targets whose benchmarks ran in this run (criterion keeps
/// earlier runs' results, which must not mix into a ratio).
fn report(dir: &Path, started: std::time::SystemTime) {
    let rows: Vec<String> = TARGETS
        .iter()
        .filter_map(|t| {
            let (value, shown) = t.measure.eval(|id| median_ns(dir, id, started))?;
            let verdict = match t.bound {
                Some((true, max)) if value <= max => format!("ok (target <= {max})"),
                Some((true, max)) => format!("MISSED (target <= {max})"),
                Some((false, min)) if value >= min => format!("ok (target >= {min})"),
                Some((false, min)) => format!("MISSED (target >= {min})"),
                None => "(for reference)".to_owned(),
            };
            Some(format!("  {:<52} {shown:>10}  {verdict}", t.what))
        })
        .collect();
    if !rows.is_empty() {
        println!("\ntargets (criterion medians from this run):");
        for row in rows {
            println!("{row}");
        }
    }
}

/// The median estimate, in nanoseconds, criterion wrote for `id` (see
/// [`Measure`] for the form) at `since` or later.
fn median_ns(dir: &Path, id: &str, since: std::time::SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    point_estimate(&text, "median")
}

/// Finds `"<section>":{... "point_estimate":<number>` in criterion's JSON,
/// which is all this needs (no JSON dependency for one number).
fn point_estimate(json: &str, section: &str) -> Option<f64> {
    let start = json.find(&format!("\"{section}\""))?;
    let rest = &json[start..];
    let at = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let number: String = rest[at..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id a target reads names a group and a function the benches
    /// define (turned into criterion's directory form), or the target would
    /// silently never print.
    #[test]
    fn every_target_reads_a_bench_that_exists() {
        let root = util::project_root().join("benches").join("benches");
        let mut sources = String::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            sources += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
        }
        let groups: Vec<String> = sources
            .split("benchmark_group(\"")
            .skip(1)
            .filter_map(|rest| Some(rest.split_once('"')?.0.replace('/', "_")))
            .collect();
        let ids = TARGETS.iter().flat_map(|t| match t.measure {
            Measure::Ratio(a, b) => vec![a, b],
            Measure::AddedMicros { of, over } => vec![of, over],
            Measure::PerSecond { id, .. } => vec![id],
        });
        for id in ids {
            let mut parts = id.split('/');
            let (group, function) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(groups.iter().any(|g| g == group), "no bench group for {id}");
            // `handle_token_1t` is `format!("handle_token/{threads}t")`.
            let named = sources.contains(&format!("\"{function}\""))
                || function
                    .match_indices('_')
                    .any(|(i, _)| sources.contains(&format!("\"{}/", &function[..i])));
            assert!(named, "no bench function for {id}");
        }
    }

    #[test]
    fn measures_compute_from_medians() {
        let medians = |id: &str| match id {
            "a" => Some(150_000.0),
            "b" => Some(100_000.0),
            _ => None,
        };
        assert_eq!(Measure::Ratio("a", "b").eval(medians).unwrap().0, 1.5);
        let added = Measure::AddedMicros { of: "a", over: "b" };
        assert_eq!(added.eval(medians).unwrap(), (50.0, "+50.0 us".to_owned()));
        let rate = Measure::PerSecond {
            id: "b",
            per_iter: 64.0,
        };
        assert_eq!(rate.eval(medians).unwrap().0, 640_000.0);
        assert!(Measure::Ratio("a", "missing").eval(medians).is_none());
    }

    /// A result criterion left from an earlier run is not read as this
    /// run's.
    #[test]
    fn results_older_than_the_run_are_ignored() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let estimates = dir.join("g").join("f").join("new");
        std::fs::create_dir_all(&estimates).unwrap();
        std::fs::write(
            estimates.join("estimates.json"),
            r#"{"median":{"point_estimate":7.5}}"#,
        )
        .unwrap();
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let after = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        assert_eq!(median_ns(&dir, "g/f", before), Some(7.5));
        assert_eq!(median_ns(&dir, "g/f", after), None);
        assert_eq!(median_ns(&dir, "g/missing", before), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_the_section_asked_for() {
        let json = r#"{"mean":{"confidence_interval":{"lower_bound":1.0},"point_estimate":35.5,"standard_error":0.1},"median":{"confidence_interval":{"lower_bound":2.0},"point_estimate":34.25,"standard_error":0.2}}"#;
        assert_eq!(point_estimate(json, "mean"), Some(35.5));
        assert_eq!(point_estimate(json, "median"), Some(34.25));
        assert_eq!(point_estimate(json, "slope"), None);
    }
}
