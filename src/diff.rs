//! `postsock diff`: what moved between two suites' reports (say main's and a branch's).
//!
//! Per scenario, each metric's median over the seeds both sides ran; a change counts when it
//! is larger than both a relative threshold and an absolute one (so 2 ms → 3 ms is not "50 %
//! worse"). A change is a regression when the metric has a known good direction and moved the
//! wrong way, or when a run that passed in the base fails in the new one, or a run of the base
//! is missing from the new one. Everything is in (scenario, metric) order: the text is the
//! same for the same reports.

use std::collections::{BTreeMap, BTreeSet};

use reports::{Metrics, Report};

/// Which way a metric should go; `None` for those with no better direction (sizes, counts
/// of carriers, durations of the run).
pub fn better(metric: &str) -> Option<Better> {
    use Better::{Higher, Lower};
    Some(match metric {
        "ttfm_ms"
        | "ttfm_last_ms"
        | "median_latency_ms"
        | "failover_gap_ms"
        | "rendezvous_ms"
        | "server_rendezvous_ms"
        | "messages_lost"
        | "messages_duplicated"
        | "messages_corrupted"
        | "messages_failed"
        | "unreliable_lost"
        | "delivered_after_deadline"
        | "antecedent_violations"
        | "attempts" => Lower,
        "messages_delivered" | "bytes_delivered" | "goodput_kbps" | "established" => Higher,
        m if m.starts_with("median_latency_ms_niceness_") => Lower,
        _ => return None,
    })
}

/// The good direction of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Smaller is better (latencies, losses).
    Lower,
    /// Larger is better (deliveries, goodput).
    Higher,
}

/// One metric of one scenario that moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The scenario.
    pub scenario: String,
    /// The metric.
    pub metric: String,
    /// Median over the base's seeds.
    pub base: f64,
    /// Median over the new seeds.
    pub new: f64,
    /// `Some(true)` when it got worse, `Some(false)` better, `None` no direction.
    pub worse: Option<bool>,
}

/// The differences between two sets of reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Metrics that moved beyond the thresholds.
    pub changes: Vec<Change>,
    /// Runs (scenario, seed) that passed in the base and fail in the new reports.
    pub newly_failing: Vec<(String, u64)>,
    /// Runs that failed in the base and pass now.
    pub fixed: Vec<(String, u64)>,
    /// Runs of the base that the new reports lack.
    pub missing: Vec<(String, u64)>,
    /// Runs only the new reports have.
    pub added: Vec<(String, u64)>,
    /// Scenarios compared.
    pub scenarios: usize,
}

impl Diff {
    /// How many things got worse.
    pub fn regressions(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.worse == Some(true))
            .count()
            + self.newly_failing.len()
            + self.missing.len()
    }

    /// A plain-text account, one line per finding, regressions marked.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let runs = |v: &[(String, u64)]| {
            v.iter()
                .map(|(s, seed)| format!("{s} seed {seed}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.newly_failing.is_empty() {
            out.push_str(&format!(
                "REGRESSION now failing: {}\n",
                runs(&self.newly_failing)
            ));
        }
        if !self.missing.is_empty() {
            out.push_str(&format!("REGRESSION missing: {}\n", runs(&self.missing)));
        }
        if !self.fixed.is_empty() {
            out.push_str(&format!("fixed: {}\n", runs(&self.fixed)));
        }
        if !self.added.is_empty() {
            out.push_str(&format!("new runs: {}\n", runs(&self.added)));
        }
        for c in &self.changes {
            let mark = match c.worse {
                Some(true) => "REGRESSION",
                Some(false) => "better",
                None => "changed",
            };
            let rel = if c.base != 0.0 {
                format!(" ({:+.1} %)", (c.new - c.base) / c.base.abs() * 100.0)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{mark} {} {}: {} -> {}{rel}\n",
                c.scenario,
                c.metric,
                num(c.base),
                num(c.new)
            ));
        }
        out.push_str(&format!(
            "{} scenarios compared; {} metric(s) moved; {} regression(s)\n",
            self.scenarios,
            self.changes.len(),
            self.regressions()
        ));
        out
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Every metric name a set of reports carries (the niceness medians spelled out).
fn metric_names(reports: &[&Report]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Metrics::NAMES
        .iter()
        .filter(|n| !n.contains('<'))
        .map(|n| n.to_string())
        .collect();
    for r in reports {
        for n in r.metrics.median_latency_by_niceness_ms.keys() {
            names.insert(format!("median_latency_ms_niceness_{n}"));
        }
    }
    names
}

/// Compares `new` against `base`. Metrics are compared over the seeds both have.
pub fn compare(base: &[Report], new: &[Report], threshold: f64, min_abs: f64) -> Diff {
    let index = |rs: &[Report]| -> BTreeMap<(String, u64), Report> {
        rs.iter()
            .map(|r| ((r.scenario.clone(), r.seed), r.clone()))
            .collect()
    };
    let (a, b) = (index(base), index(new));
    let mut diff = Diff::default();
    for (key, ra) in &a {
        match b.get(key) {
            None => diff.missing.push(key.clone()),
            Some(rb) if ra.passed && !rb.passed => diff.newly_failing.push(key.clone()),
            Some(rb) if !ra.passed && rb.passed => diff.fixed.push(key.clone()),
            Some(_) => {}
        }
    }
    diff.added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let scenarios: BTreeSet<&String> = a
        .keys()
        .filter(|k| b.contains_key(*k))
        .map(|(s, _)| s)
        .collect();
    diff.scenarios = scenarios.len();
    for scenario in scenarios {
        let pairs: Vec<(&Report, &Report)> = a
            .iter()
            .filter(|((s, _), _)| s == scenario)
            .filter_map(|(k, ra)| Some((ra, b.get(k)?)))
            .collect();
        let all: Vec<&Report> = pairs.iter().flat_map(|(x, y)| [*x, *y]).collect();
        for metric in metric_names(&all) {
            let values = |new_side: bool| {
                pairs
                    .iter()
                    .map(|&(x, y)| if new_side { y } else { x })
                    .filter_map(|r| r.metrics.get(&metric).flatten())
                    .collect::<Vec<f64>>()
            };
            let (Some(va), Some(vb)) = (median(values(false)), median(values(true))) else {
                continue;
            };
            let delta = (vb - va).abs();
            if delta <= min_abs || delta <= threshold * va.abs() {
                continue;
            }
            let worse = better(&metric).map(|b| match b {
                Better::Lower => vb > va,
                Better::Higher => vb < va,
            });
            diff.changes.push(Change {
                scenario: scenario.clone(),
                metric,
                base: va,
                new: vb,
                worse,
            });
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report (echo/quic, seed 1) renamed and with the given figures.
    fn report(scenario: &str, seed: u64, passed: bool, ttfm: f64, delivered: u64) -> Report {
        static BASE: std::sync::OnceLock<Report> = std::sync::OnceLock::new();
        let mut r = BASE
            .get_or_init(|| {
                let dir = crate::suite::default_scenarios_dir();
                let s = crate::suite::load_one(dir, "echo/quic").expect("scenario");
                crate::run(&s, 1).report
            })
            .clone();
        r.scenario = scenario.into();
        r.seed = seed;
        r.passed = passed;
        r.metrics.ttfm_ms = Some(ttfm);
        r.metrics.messages_delivered = delivered;
        r
    }

    #[test]
    fn moved_metrics_and_failing_runs_are_regressions_and_small_moves_are_not() {
        let base = vec![
            report("a", 1, true, 100.0, 10),
            report("a", 2, true, 102.0, 10),
            report("b", 1, true, 50.0, 10),
            report("c", 1, false, 50.0, 10),
        ];
        let new = vec![
            report("a", 1, true, 150.0, 10),
            report("a", 2, true, 150.0, 10),
            // 50 -> 50.9: under both thresholds.
            report("b", 1, false, 50.9, 9),
            report("c", 1, true, 50.0, 10),
        ];
        let d = compare(&base, &new, 0.1, 1.0);
        assert_eq!(d.newly_failing, vec![("b".to_string(), 1)]);
        assert_eq!(d.fixed, vec![("c".to_string(), 1)]);
        let moved: Vec<(&str, &str, Option<bool>)> = d
            .changes
            .iter()
            .map(|c| (c.scenario.as_str(), c.metric.as_str(), c.worse))
            .collect();
        // a: TTFM 101 -> 150 is worse; b: 10 -> 9 delivered is 10 %, not beyond 10 %.
        assert_eq!(moved, vec![("a", "ttfm_ms", Some(true))]);
        assert_eq!(d.regressions(), 2);
        let text = d.text();
        assert!(
            text.contains("REGRESSION a ttfm_ms: 101 -> 150 (+48.5 %)"),
            "{text}"
        );
        assert!(text.contains("REGRESSION now failing: b seed 1"), "{text}");
    }

    #[test]
    fn identical_reports_differ_in_nothing_and_a_missing_run_counts() {
        let base = vec![
            report("a", 1, true, 100.0, 10),
            report("a", 2, true, 90.0, 10),
        ];
        assert_eq!(compare(&base, &base, 0.1, 1.0).regressions(), 0);
        assert!(compare(&base, &base, 0.1, 1.0).changes.is_empty());
        let d = compare(&base, &base[..1], 0.1, 1.0);
        assert_eq!(d.missing, vec![("a".to_string(), 2)]);
        assert_eq!(d.regressions(), 1);
        // Better goes the other way and is not a regression.
        let faster = vec![
            report("a", 1, true, 50.0, 10),
            report("a", 2, true, 45.0, 10),
        ];
        let d = compare(&base, &faster, 0.1, 1.0);
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].worse, Some(false));
        assert_eq!(d.regressions(), 0);
    }
}
