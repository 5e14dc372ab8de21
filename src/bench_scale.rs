//! `postsock bench --scale`: how the simulator's cost grows with the number of simulated
//! hosts. A scenario with a client group (`[[host]] count = N`) is run at several N, each run
//! in a process of its own (so its peak RSS is its own), and the wall time, peak RSS and
//! simulated time are tabled and plotted.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// The target of issue 16: 1,000 clients × 10 messages in under 60 s of wall time.
pub const TARGET_WALL_S: f64 = 60.0;

/// One run of a scaled scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    /// The scenario it scaled.
    pub scenario: String,
    /// The workload's protocol.
    pub protocol: String,
    /// Clients in the group.
    pub clients: u32,
    /// Wall-clock seconds of the run (building the world included).
    pub wall_s: f64,
    /// Simulated seconds the run took.
    pub sim_s: f64,
    /// Peak resident set size of the process that ran it, MiB.
    pub peak_rss_mib: f64,
    /// Messages delivered (both directions).
    pub delivered: u64,
    /// Messages that should have been: clients × messages × 2 (echoes).
    pub expected: u64,
    /// The run's error, if any.
    pub error: Option<String>,
}

impl ScaleRow {
    /// Every message arrived and nothing failed.
    pub fn complete(&self) -> bool {
        self.error.is_none() && self.delivered == self.expected
    }
}

/// `scenario` with its client group resized to `clients` and its expectations dropped (they
/// are written for the shipped size).
pub fn resized(scenario: &Scenario, clients: u32) -> Result<Scenario, String> {
    let mut doc: toml::Table = toml::from_str(&scenario.source).map_err(|e| e.to_string())?;
    let first = scenario.clients.first().cloned().unwrap_or_default();
    let hosts = doc
        .get_mut("host")
        .and_then(|h| h.as_array_mut())
        .ok_or("no [[host]] tables")?;
    // The group the workload's client names: the [[host]] with a count whose first member
    // is the run's first client.
    let entry = hosts
        .iter_mut()
        .filter_map(|h| h.as_table_mut())
        .find(|h| {
            h.contains_key("count")
                && h.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| format!("{n}-1") == first)
        })
        .ok_or_else(|| {
            format!(
                "{}: the workload's client is not a host group",
                scenario.name
            )
        })?;
    entry.insert("count".into(), toml::Value::Integer(i64::from(clients)));
    doc.remove("expect");
    let text = toml::to_string(&doc).map_err(|e| e.to_string())?;
    Scenario::parse(&scenario.name, &scenario.path, &text).map_err(|e| e.to_string())
}

/// Runs `scenario` resized to `clients` with seed 1 in this process (`postsock
/// bench-scale-run`, a child of `bench --scale`).
pub fn measure(scenario: &Scenario, clients: u32) -> Result<ScaleRow, String> {
    let scaled = resized(scenario, clients)?;
    let started = Instant::now();
    let outcome = crate::run(&scaled, 1);
    let wall_s = started.elapsed().as_secs_f64();
    let r = &outcome.report;
    let w = &scaled.workload;
    Ok(ScaleRow {
        scenario: scenario.name.clone(),
        protocol: r.protocol.clone(),
        clients,
        wall_s,
        sim_s: r.metrics.sim_duration_ms / 1000.0,
        peak_rss_mib: crate::bench::peak_rss_mib(),
        delivered: r.metrics.messages_delivered,
        expected: u64::from(clients) * u64::from(w.messages) * u64::from(w.carriers) * 2,
        error: r.error.clone(),
    })
}

/// The table, with how wall time and memory grew from one size to the next.
pub fn markdown(rows: &[ScaleRow]) -> String {
    let mut out = String::from(
        "| scenario | protocol | clients | wall s | simulated s | peak RSS MiB | wall µs per client·simulated s | delivered | growth (wall, RSS) vs previous |\n|---|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    let mut previous: Option<&ScaleRow> = None;
    for r in rows {
        let growth = match previous.filter(|p| p.scenario == r.scenario) {
            Some(p) => format!(
                "×{:.0} clients: ×{:.1} wall, ×{:.1} RSS",
                f64::from(r.clients) / f64::from(p.clients),
                r.wall_s / p.wall_s,
                r.peak_rss_mib / p.peak_rss_mib
            ),
            None => "—".into(),
        };
        let per = r.wall_s * 1e6 / (f64::from(r.clients) * r.sim_s.max(1e-3));
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.0} | {:.0} | {}/{}{} | {} |\n",
            r.scenario,
            r.protocol,
            r.clients,
            r.wall_s,
            r.sim_s,
            r.peak_rss_mib,
            per,
            r.delivered,
            r.expected,
            r.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            growth
        ));
        previous = Some(r);
    }
    for r in rows.iter().filter(|r| r.clients >= 1000) {
        out.push_str(&format!(
            "\n{} with {} clients: {:.1} s wall (target < {TARGET_WALL_S:.0} s: {}), {}\n",
            r.scenario,
            r.clients,
            r.wall_s,
            if r.wall_s < TARGET_WALL_S && r.complete() {
                "met"
            } else {
                "not met"
            },
            if r.complete() {
                "every message delivered"
            } else {
                "NOT every message delivered"
            }
        ));
    }
    out
}

/// Plots wall time and peak RSS against clients, one line per scenario.
pub fn plot(rows: &[ScaleRow], path: &Path) -> Result<(), String> {
    let points: Vec<reports::plot::ScalePoint> = rows
        .iter()
        .map(|r| reports::plot::ScalePoint {
            series: r.scenario.clone(),
            clients: f64::from(r.clients),
            wall_s: r.wall_s,
            rss_mib: r.peak_rss_mib,
        })
        .collect();
    reports::plot::scale_curve(&points, path).map_err(|e| e.to_string())
}
