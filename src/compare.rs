//! The `compare/` family: the same workload over QUIC and over TLS/TCP at every combination
//! of loss (0, 0.5, 1, 2, 5 %) and RTT (20, 100, 300 ms), as generated scenarios the suite
//! runs like files; from their reports, per-RTT-and-loss latency CDFs of both protocols and a
//! head-of-line-blocking plot.
//!
//! The workload: 100 unordered 4 KiB messages, one every 20 ms (1.6 Mbit/s), from a client
//! on a 10 Mbit/s access link that loses the given share of packets in each direction. QUIC
//! carries each unordered message on its own stream, so a lost packet delays only the
//! messages in it; TLS/TCP has one byte stream, so it delays every later message too.

use std::path::Path;

use reports::plot::{CdfSeries, HolPoint};
use reports::{Direction, Report, ReportError};
use serde::Serialize;

use crate::scenario::{Scenario, ScenarioError};

/// The name prefix of the family.
pub const PREFIX: &str = "compare/";
/// Loss rates, percent.
pub const LOSSES_PERCENT: [f64; 5] = [0.0, 0.5, 1.0, 2.0, 5.0];
/// Round-trip times, ms.
pub const RTTS_MS: [u64; 3] = [20, 100, 300];
/// The protocols compared.
pub const PROTOCOLS: [&str; 2] = ["quic", "tls-tcp"];
const MESSAGES: usize = 100;

fn name(protocol: &str, rtt_ms: u64, loss_percent: f64) -> String {
    format!("{PREFIX}{protocol}-rtt{rtt_ms}-loss{loss_percent}")
}

/// The parameters of a family scenario's name.
pub fn parse_name(scenario: &str) -> Option<(String, u64, f64)> {
    let rest = scenario.strip_prefix(PREFIX)?;
    let (protocol, rest) = rest.split_once("-rtt")?;
    let (rtt, loss) = rest.split_once("-loss")?;
    Some((protocol.to_owned(), rtt.parse().ok()?, loss.parse().ok()?))
}

/// The scenario for one protocol, RTT and loss.
pub fn scenario(protocol: &str, rtt_ms: u64, loss_percent: f64) -> Result<Scenario, ScenarioError> {
    let scenario_name = name(protocol, rtt_ms, loss_percent);
    let text = format!(
        r#"description = "{protocol} at RTT {rtt_ms} ms and {loss_percent} % loss: {MESSAGES} unordered 4 KiB messages, one every 20 ms, on a 10 Mbit/s link"
duration_s = 120

[[host]]
name = "client"
link = {{ latency_ms = {quarter}, loss = {loss}, bandwidth_kbps = 10000, queue_bytes = 262144 }}

[[host]]
name = "server"
link = {{ latency_ms = {quarter} }}

[workload]
kind = "stream"
client = "client"
server = "server"
protocol = "{protocol}"
messages = {MESSAGES}
interval_ms = 20
min_size = 4096
max_size = 4096
ordered = false

[[expect]]
metric = "messages_lost"
max = 0

[[expect]]
metric = "messages_delivered"
min = {MESSAGES}
"#,
        quarter = rtt_ms / 4,
        loss = loss_percent / 100.0,
    );
    Scenario::parse(&scenario_name, Path::new(&scenario_name), &text)
}

/// Every scenario of the family: by RTT, then loss, then protocol.
pub fn scenarios() -> Result<Vec<Scenario>, ScenarioError> {
    let mut out = Vec::new();
    for rtt in RTTS_MS {
        for loss in LOSSES_PERCENT {
            for protocol in PROTOCOLS {
                out.push(scenario(protocol, rtt, loss)?);
            }
        }
    }
    Ok(out)
}

/// One scenario's latencies over all its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The scenario.
    pub scenario: String,
    /// Its protocol.
    pub protocol: String,
    /// The path's RTT, ms.
    pub rtt_ms: u64,
    /// Loss, percent.
    pub loss_percent: f64,
    /// Seeds run.
    pub runs: usize,
    /// Messages delivered (all seeds).
    pub delivered: usize,
    /// Latency percentiles over every delivered message of every seed, ms.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest.
    pub max_ms: f64,
    /// Median goodput over the seeds, kbit/s.
    pub goodput_kbps: Option<f64>,
    #[serde(skip)]
    latencies: Vec<f64>,
}

/// The family's results.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// One cell per scenario that ran, by RTT, loss, protocol.
    pub cells: Vec<Cell>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// The comparison from a suite's reports; `None` if none of the family ran.
pub fn from_reports<R: std::borrow::Borrow<Report>>(
    reports: impl IntoIterator<Item = R>,
) -> Option<Comparison> {
    let mut cells: Vec<Cell> = Vec::new();
    for r in reports {
        let r = r.borrow();
        let Some((protocol, rtt_ms, loss_percent)) = parse_name(&r.scenario) else {
            continue;
        };
        let latencies = r.messages.iter().filter_map(|m| {
            (m.direction == Direction::ClientToServer)
                .then(|| Some(m.delivered_ms.first()? - m.sent_ms))
                .flatten()
        });
        match cells.iter_mut().find(|c| c.scenario == r.scenario) {
            Some(c) => {
                c.runs += 1;
                c.latencies.extend(latencies);
                c.goodput_kbps = c.goodput_kbps.or(r.metrics.goodput_kbps);
            }
            None => cells.push(Cell {
                scenario: r.scenario.clone(),
                protocol,
                rtt_ms,
                loss_percent,
                runs: 1,
                delivered: 0,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                goodput_kbps: r.metrics.goodput_kbps,
                latencies: latencies.collect(),
            }),
        }
    }
    if cells.is_empty() {
        return None;
    }
    for c in &mut cells {
        c.latencies.sort_by(f64::total_cmp);
        c.delivered = c.latencies.len();
        c.p50_ms = percentile(&c.latencies, 0.5);
        c.p95_ms = percentile(&c.latencies, 0.95);
        c.p99_ms = percentile(&c.latencies, 0.99);
        c.max_ms = c.latencies.last().copied().unwrap_or(0.0);
    }
    cells.sort_by(|a, b| {
        (a.rtt_ms, a.loss_percent, &a.protocol)
            .partial_cmp(&(b.rtt_ms, b.loss_percent, &b.protocol))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Some(Comparison { cells })
}

/// The comparison as a Markdown table.
pub fn markdown(c: &Comparison) -> String {
    let mut out = String::from(
        "| RTT | loss | protocol | p50 ms | p95 ms | p99 ms | max ms | goodput kbit/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for cell in &c.cells {
        out.push_str(&format!(
            "| {} ms | {} % | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |\n",
            cell.rtt_ms,
            cell.loss_percent,
            cell.protocol,
            cell.p50_ms,
            cell.p95_ms,
            cell.p99_ms,
            cell.max_ms,
            cell.goodput_kbps.map_or("-".into(), |g| format!("{g:.0}"))
        ));
    }
    out
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |e| ReportError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Writes `compare.json`, `compare.md`, `compare-hol.png` and, per RTT and loss,
/// `compare/cdf-rtt<R>-loss<L>.png` (both protocols' latency CDFs) below `out`.
pub fn write(out: &Path, c: &Comparison) -> Result<(), ReportError> {
    let dir = out.join("compare");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = out.join("compare.json");
    let json = serde_json::to_string_pretty(c)? + "\n";
    std::fs::write(&path, json).map_err(io(&path))?;
    let path = out.join("compare.md");
    std::fs::write(&path, markdown(c)).map_err(io(&path))?;
    let points: Vec<HolPoint> = c
        .cells
        .iter()
        .map(|cell| HolPoint {
            protocol: cell.protocol.clone(),
            rtt_ms: cell.rtt_ms,
            loss: cell.loss_percent / 100.0,
            p95_ms: cell.p95_ms,
        })
        .collect();
    reports::plot::head_of_line(&points, &out.join("compare-hol.png"))?;
    let mut pairs: Vec<(u64, f64)> = c.cells.iter().map(|x| (x.rtt_ms, x.loss_percent)).collect();
    pairs.dedup();
    for (rtt, loss) in pairs {
        let series: Vec<CdfSeries> = c
            .cells
            .iter()
            .filter(|x| x.rtt_ms == rtt && x.loss_percent == loss)
            .map(|x| CdfSeries {
                label: format!("{} ({} runs)", x.protocol, x.runs),
                latencies_ms: x.latencies.clone(),
            })
            .collect();
        reports::plot::latency_cdf(
            &format!("message latency, RTT {rtt} ms, {loss} % loss"),
            &series,
            &dir.join(format!("cdf-rtt{rtt}-loss{loss}.png")),
        )?;
    }
    Ok(())
}
