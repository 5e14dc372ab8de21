//! The Markdown summary of a suite.

use std::fmt::Write;

use crate::{Report, WallClock};

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

/// Renders the suite summary: one row per run, the failures with their replay commands,
/// and the wall-clock speed.
pub fn markdown<R: std::borrow::Borrow<Report>>(
    reports: &[R],
    wall: &WallClock,
    replay: impl Fn(&Report) -> String,
) -> String {
    let reports: Vec<&Report> = reports.iter().map(|r| r.borrow()).collect();
    let mut out = String::new();
    let passed = reports.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "# Scenario suite\n");
    let _ = writeln!(out, "{passed} of {} runs passed.\n", reports.len());
    let _ = writeln!(
        out,
        "| scenario | seed | protocol | result | TTFM ms | limit ms | sent | delivered | lost | expired | dup | corrupt | median latency ms | sim ms |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &r in &reports {
        let m = &r.metrics;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            r.scenario,
            r.seed,
            r.protocol,
            if r.passed { "pass" } else { "**FAIL**" },
            opt(m.ttfm_ms),
            opt(m.ttfm_limit_ms),
            m.messages_sent,
            m.messages_delivered,
            m.messages_lost,
            m.messages_expired,
            m.messages_duplicated,
            m.messages_corrupted,
            opt(m.median_latency_ms),
            m.sim_duration_ms,
        );
    }
    let failures: Vec<&Report> = reports.iter().copied().filter(|r| !r.passed).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\n## Failures\n");
        for r in failures {
            let _ = writeln!(out, "- `{}` seed {}:", r.scenario, r.seed);
            if let Some(e) = &r.error {
                let _ = writeln!(out, "  - error: {e}");
            }
            for e in r.expectations.iter().filter(|e| !e.passed) {
                let _ = writeln!(out, "  - `{}` measured {}", e.name, opt(e.measured));
            }
            let _ = writeln!(out, "  - replay: `{}`", replay(r));
        }
    }
    let sim_s: f64 = wall.runs.iter().map(|r| r.sim_ms).sum::<f64>() / 1000.0;
    let _ = writeln!(
        out,
        "\n## Speed (wall clock; varies between machines and runs)\n"
    );
    let _ = writeln!(
        out,
        "{sim_s:.2} simulated seconds in {:.2} wall seconds: **{:.1} simulated s per wall s**.",
        wall.total_wall_ms / 1000.0,
        wall.sim_speed()
    );
    out
}
