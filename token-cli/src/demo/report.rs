//! The demo's summary table.

use std::fmt;
use std::time::Duration;

use super::load::Report;

/// `1234567` as `1,234,567`.
pub(crate) struct Thousands(pub(crate) u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        f.pad(&out)
    }
}

fn human(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        format!("{nanos} ns")
    } else if nanos < 1_000_000 {
        format!("{:.1} µs", nanos as f64 / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Prints the summary of a run on stdout.
pub(crate) fn print(report: &Report, idp_calls: u64, elapsed: Duration, processes: usize) {
    let served = report.served;
    let reduction = served as f64 / idp_calls.max(1) as f64;
    let lookups = report.hits + report.misses;
    let hit_ratio = if lookups == 0 {
        0.0
    } else {
        report.hits as f64 / lookups as f64
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "requests served",
            format!(
                "{}  ({}/s over {:.1} s)",
                Thousands(served),
                Thousands((served as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
                elapsed.as_secs_f64()
            ),
        ),
        (
            "IdP calls (counted by the IdP)",
            if processes > 1 {
                format!(
                    "{}  ({processes} processes sharing one store)",
                    Thousands(idp_calls)
                )
            } else {
                Thousands(idp_calls).to_string()
            },
        ),
        (
            "IdP calls without a cache",
            format!("{}  (one per request)", Thousands(served)),
        ),
        (
            "reduction",
            format!("{}x fewer IdP calls", Thousands(reduction as u64)),
        ),
        (
            "hit ratio",
            format!(
                "{:.4}%  ({} hits, {} misses)",
                hit_ratio * 100.0,
                Thousands(report.hits),
                Thousands(report.misses)
            ),
        ),
        (
            "get_token latency p50",
            human(report.latency.percentile(0.50)),
        ),
        (
            "get_token latency p99",
            human(report.latency.percentile(0.99)),
        ),
        (
            "stale tokens served",
            Thousands(report.stale_served).to_string(),
        ),
        ("errors", Thousands(report.errors).to_string()),
        (
            "expired tokens handed out",
            format!(
                "{}  (must be 0; each checked against the wall clock)",
                Thousands(report.expired)
            ),
        ),
    ];
    println!();
    for (name, value) in &rows {
        println!("  {name:<31} {value}");
    }
}
