//! `cargo xtask bench [ARGS...]`: the criterion benchmarks, with ARGS passed
//! to criterion, then the hit-path, key-map and gateway ratios against their floors, computed
//! from this run's results. Never under CI: a shared CI machine gives
//! numbers nobody should compare, and the time is better spent on tests.

use std::path::Path;

use crate::util::{self, Result};

/// A ratio the project holds itself to: `numerator / denominator` of two
/// criterion medians from the same run.
struct Target {
    what: &'static str,
    numerator: &'static str,
    denominator: &'static str,
    /// `Some((true, x))`: at most x; `Some((false, x))`: at least x.
    bound: Option<(bool, f64)>,
}

const TARGETS: &[Target] = &[
    Target {
        what: "handle hit / arc_swap floor (1 thread)",
        numerator: "hit/handle_token_1t",
        denominator: "hit/floor_arc_swap_1t",
        bound: Some((true, 1.2)),
    },
    Target {
        what: "get_token hit / keyed RwLock map floor (1 thread)",
        numerator: "hit/get_token_1t",
        denominator: "hit/floor_keyed_rwlock_map_1t",
        bound: Some((true, 1.2)),
    },
    Target {
        what: "get_token hit / moka get (1 thread)",
        numerator: "hit/get_token_1t",
        denominator: "hit/floor_moka_get_1t",
        bound: None,
    },
    Target {
        what: "handle hit scaling, 2 threads vs 1",
        numerator: "hit/handle_token_1t",
        denominator: "hit/handle_token_2t",
        bound: Some((false, 1.8)),
    },
    Target {
        what: "get_token hit scaling, 2 threads vs 1",
        numerator: "hit/get_token_1t",
        denominator: "hit/get_token_2t",
        bound: Some((false, 1.8)),
    },
    Target {
        what: "key map cold fill per key, 1M keys vs 1k",
        numerator: "keys/get_token_fill/1000000",
        denominator: "keys/get_token_fill/1000",
        bound: Some((true, 2.0)),
    },
    Target {
        what: "key map cold fill per key vs moka insert, 1M keys",
        numerator: "keys/get_token_fill/1000000",
        denominator: "keys/moka_insert/1000000",
        bound: Some((true, 5.0)),
    },
    Target {
        what: "gateway p50 latency / plain hyper proxy's",
        numerator: "gateway/latency/gateway",
        denominator: "gateway/latency/plain_proxy",
        bound: Some((true, 1.2)),
    },
    Target {
        what: "gateway time per 64 requests / plain proxy's",
        numerator: "gateway/throughput/gateway",
        denominator: "gateway/throughput/plain_proxy",
        bound: None,
    },
];

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
    util::run(&mut cmd)?;
    report(&util::project_root().join("target").join("criterion"));
    Ok(())
}

/// Prints the ratios for the benchmarks that ran.
fn report(dir: &Path) {
    let rows: Vec<String> = TARGETS
        .iter()
        .filter_map(|t| {
            let ratio = median_ns(dir, t.numerator)? / median_ns(dir, t.denominator)?;
            let verdict = match t.bound {
                Some((true, max)) if ratio <= max => format!("ok (target <= {max})"),
                Some((true, max)) => format!("MISSED (target <= {max})"),
                Some((false, min)) if ratio >= min => format!("ok (target >= {min})"),
                Some((false, min)) => format!("MISSED (target >= {min})"),
                None => "(for reference)".to_owned(),
            };
            Some(format!("  {:<52} {ratio:>6.2}x  {verdict}", t.what))
        })
        .collect();
    if !rows.is_empty() {
        println!("\nratios against their targets (criterion medians from this run):");
        for row in rows {
            println!("{row}");
        }
    }
}

/// The median estimate, in nanoseconds, criterion wrote for `id`
/// (`group/function`, where criterion has turned any `/` inside the
/// function's name into `_`).
fn median_ns(dir: &Path, id: &str) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
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
    use super::point_estimate;

    #[test]
    fn reads_the_section_asked_for() {
        let json = r#"{"mean":{"confidence_interval":{"lower_bound":1.0},"point_estimate":35.5,"standard_error":0.1},"median":{"confidence_interval":{"lower_bound":2.0},"point_estimate":34.25,"standard_error":0.2}}"#;
        assert_eq!(point_estimate(json, "mean"), Some(35.5));
        assert_eq!(point_estimate(json, "median"), Some(34.25));
        assert_eq!(point_estimate(json, "slope"), None);
    }
}
