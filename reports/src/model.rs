//! The report schema. Top-level keys are stable: `schema_version`, `scenario`, `seed`,
//! `passed`, `expectations`, `metrics`; others may be added.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the JSON schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Which way a message travelled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the initiating side (client) to the listening side (server).
    ClientToServer,
    /// From the listening side back to the initiator.
    ServerToClient,
}

impl Direction {
    /// A short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client → server",
            Direction::ServerToClient => "server → client",
        }
    }
}

/// One application message: when it was sent and every time it was delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageRecord {
    /// Direction of travel.
    pub direction: Direction,
    /// The carrier's message id.
    pub id: u64,
    /// Payload size in bytes.
    pub bytes: u64,
    /// Simulated time of `send`, in ms since the start of the run.
    pub sent_ms: f64,
    /// Simulated times the peer application received it (more than one = duplicated).
    pub delivered_ms: Vec<f64>,
    /// Whether every delivery carried exactly the bytes that were sent.
    pub intact: bool,
    /// The message's niceness, when the workload set properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub niceness: Option<u32>,
    /// Absolute deadline (send time + lifetime), in simulated ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<f64>,
    /// Messages (ids in this direction) it depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub antecedents: Vec<u64>,
    /// False for an unreliable message.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub reliable: bool,
    /// The sender's terminal outcome ("acked", "sent", "expired", "failed"), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl MessageRecord {
    /// A reliable message with no properties recorded.
    pub fn new(direction: Direction, id: u64, bytes: u64, sent_ms: f64) -> Self {
        MessageRecord {
            direction,
            id,
            bytes,
            sent_ms,
            delivered_ms: Vec::new(),
            intact: true,
            niceness: None,
            deadline_ms: None,
            antecedents: Vec::new(),
            reliable: true,
            outcome: None,
        }
    }
}

/// One connection attempt of the client's race (see postsock's `EstablishmentReport`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptRecord {
    /// `quic`, `tls-tcp` or `tcp`.
    pub protocol: String,
    /// The address tried.
    pub remote: String,
    /// Start, in ms from the start of the race.
    pub started_ms: f64,
    /// How long it ran.
    pub duration_ms: f64,
    /// `won`, `lost race`, `failed` or `cancelled`.
    pub outcome: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How the client's carrier was established.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Establishment {
    /// Every attempt started, in start order.
    pub attempts: Vec<AttemptRecord>,
    /// From the start of the race until it was decided, ms.
    pub duration_ms: f64,
    /// The error `initiate` returned, when nothing could be established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the client's policies chose (first, as policy `learned`, what the stack knew of
    /// the remote), highest priority first; absent without policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<PolicyRecord>,
    /// How the server's name was resolved (Happy Eyeballs: AAAA and A asked together);
    /// absent when no name was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<ResolutionRecord>,
}

/// The name resolution before a race (see postsock's `ResolutionReport`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResolutionRecord {
    /// Each query's answer, in the order they came.
    pub queries: Vec<QueryRecord>,
    /// When the race started, from the start of resolution, ms (attempts' `started_ms`
    /// count from here).
    pub race_started_ms: f64,
    /// Queries (`AAAA`, `A`) still unanswered when the race was decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// The answer to one DNS query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryRecord {
    /// `AAAA` or `A`.
    pub query: String,
    /// When it came, from the start of resolution, ms.
    pub answered_ms: f64,
    /// The addresses in it.
    pub addresses: Vec<String>,
    /// The resolver's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether it came after the race had started (its addresses joined the race).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// One choice of a policy (see postsock's `PolicyChoice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyRecord {
    /// The policy's name; `learned` for the stack's learned characteristics.
    pub policy: String,
    /// What it set (or, for `learned`, what was known).
    pub setting: String,
}

/// One expectation of the scenario and how the run measured against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Expectation {
    /// Human-readable form, e.g. `messages_lost <= 0`.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The measured value (absent when the run did not produce it, e.g. no message arrived).
    pub measured: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The metrics of one run (DESIGN.md §5), all in simulated time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Metrics {
    /// Time from `initiate` until the first message reached the peer application.
    pub ttfm_ms: Option<f64>,
    /// Application messages sent, both directions.
    pub messages_sent: u64,
    /// Messages delivered at least once.
    pub messages_delivered: u64,
    /// Reliable messages never delivered that the sender did not give up on (expired or
    /// failed): for a reliable transport this must be 0.
    pub messages_lost: u64,
    /// Messages the sender dropped because their lifetime ended.
    pub messages_expired: u64,
    /// Messages whose send failed (for example an antecedent expired).
    pub messages_failed: u64,
    /// Unreliable messages never delivered.
    pub unreliable_lost: u64,
    /// Deliveries later than the message's deadline (must be 0 where the stack can enforce it).
    pub delivered_after_deadline: u64,
    /// Messages delivered before one of their antecedents (must be 0).
    pub antecedent_violations: u64,
    /// The physical limit of `ttfm_ms` on this path for the stack that carried it
    /// (DESIGN.md §5: 1.5 RTT fresh QUIC, 2.5 RTT fresh TLS 1.3 over TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfm_limit_ms: Option<f64>,
    /// The physical limit of `ttfm_last_ms` (0.5 RTT for a resumed QUIC carrier whose first
    /// message may use 0-RTT, 1.5 RTT for a resumed TLS/TCP one, in TLS early data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfm_last_limit_ms: Option<f64>,
    /// TTFM of the client's last carrier (differs from `ttfm_ms` when it runs several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfm_last_ms: Option<f64>,
    /// 1 if the client's last carrier resumed a TLS session, 0 if it did a full handshake
    /// (absent when the stack cannot tell, as on QUIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<u64>,
    /// 1 if the client's carrier was established, 0 if not.
    pub established: u64,
    /// Connection attempts the client's race started.
    pub attempts: u64,
    /// The longest interruption a path fault caused: for each fault that breaks the
    /// client's path (link down, black hole, NAT reboot), the time from the fault to the next
    /// client → server delivery; the largest. Absent without such faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_gap_ms: Option<f64>,
    /// Times the client's carrier moved to another interface.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handovers: u64,
    /// Carriers the server accepted (a carrier that continues on a new transient is still
    /// one).
    #[serde(default)]
    pub carriers_accepted: u64,
    /// Times the client's carrier went dormant (no working path).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dormant: u64,
    /// Times the client's carrier moved to another protocol stack (QUIC to TLS/TCP).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub protocol_changes: u64,
    /// Rendezvous workloads: 1 if the peers' carrier runs through the TURN relay, 0 if it
    /// is direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<u64>,
    /// Rendezvous workloads: the client's time from its start to a ready carrier (meeting,
    /// STUN, checks, QUIC handshake), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous_ms: Option<f64>,
    /// Rendezvous workloads: the server peer's time from its start to a ready carrier, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rendezvous_ms: Option<f64>,
    /// Times the server saw the client's carrier come from a new address (a NAT rebinding,
    /// a lost mapping, a migration) or come back after dormancy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub server_path_changes: u64,
    /// Median latency of the messages of each niceness (key: the niceness).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub median_latency_by_niceness_ms: BTreeMap<u32, f64>,
    /// Extra deliveries beyond the first.
    pub messages_duplicated: u64,
    /// Messages delivered with bytes that differ from those sent.
    pub messages_corrupted: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes delivered (first deliveries).
    pub bytes_delivered: u64,
    /// Median one-way message latency (send to first delivery).
    pub median_latency_ms: Option<f64>,
    /// Client-to-server goodput in kbit/s: payload bytes delivered over the time from the
    /// first send to the last first delivery (runs with at least two such messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput_kbps: Option<f64>,
    /// Simulated duration of the run.
    pub sim_duration_ms: f64,
}

impl Metrics {
    /// Computes the metrics from the message records; `initiated_ms` is when the carrier was
    /// initiated.
    pub fn compute(
        messages: &[MessageRecord],
        initiated_ms: Option<f64>,
        sim_duration_ms: f64,
    ) -> Self {
        let mut m = Metrics {
            sim_duration_ms,
            ..Metrics::default()
        };
        let mut latencies = Vec::new();
        let mut by_niceness: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        let mut first_delivery: Option<f64> = None;
        // Client-to-server: first send, last first delivery, bytes and messages delivered.
        let mut upstream = (f64::INFINITY, 0.0f64, 0u64, 0u64);
        let first_of: BTreeMap<(Direction, u64), f64> = messages
            .iter()
            .filter_map(|msg| Some(((msg.direction, msg.id), *msg.delivered_ms.first()?)))
            .collect();
        for msg in messages {
            if msg.direction == Direction::ClientToServer {
                upstream.0 = upstream.0.min(msg.sent_ms);
            }
            m.messages_sent += 1;
            m.bytes_sent += msg.bytes;
            match msg.outcome.as_deref() {
                Some("expired") => m.messages_expired += 1,
                Some("failed") => m.messages_failed += 1,
                _ => {}
            }
            if let Some(&first) = msg.delivered_ms.first() {
                m.messages_delivered += 1;
                m.bytes_delivered += msg.bytes;
                m.messages_duplicated += msg.delivered_ms.len() as u64 - 1;
                latencies.push(first - msg.sent_ms);
                if let Some(n) = msg.niceness {
                    by_niceness.entry(n).or_default().push(first - msg.sent_ms);
                }
                if msg.direction == Direction::ClientToServer {
                    first_delivery = Some(first_delivery.map_or(first, |f: f64| f.min(first)));
                    upstream.1 = upstream.1.max(first);
                    upstream.2 += msg.bytes;
                    upstream.3 += 1;
                }
                if let Some(deadline) = msg.deadline_ms {
                    m.delivered_after_deadline +=
                        msg.delivered_ms.iter().filter(|&&d| d > deadline).count() as u64;
                }
                let violated = msg.antecedents.iter().any(|a| {
                    first_of
                        .get(&(msg.direction, *a))
                        .is_none_or(|&before| before > first)
                });
                if violated {
                    m.antecedent_violations += 1;
                }
            } else if !msg.reliable {
                m.unreliable_lost += 1;
            } else if !matches!(msg.outcome.as_deref(), Some("expired" | "failed")) {
                m.messages_lost += 1;
            }
            if !msg.intact {
                m.messages_corrupted += 1;
            }
        }
        for (n, mut l) in by_niceness {
            l.sort_by(f64::total_cmp);
            if let Some(&median) = l.get(l.len() / 2) {
                m.median_latency_by_niceness_ms.insert(n, round_us(median));
            }
        }
        m.ttfm_ms = match (initiated_ms, first_delivery) {
            (Some(start), Some(first)) => Some(round_us(first - start)),
            _ => None,
        };
        let (start, end, bytes, count) = upstream;
        if count >= 2 && end > start {
            m.goodput_kbps = Some(round_us(bytes as f64 * 8.0 / (end - start)));
        }
        latencies.sort_by(f64::total_cmp);
        m.median_latency_ms = latencies.get(latencies.len() / 2).copied().map(round_us);
        m
    }

    /// The value of a metric by name, for expectations. `None` if unknown or not measured.
    pub fn get(&self, name: &str) -> Option<Option<f64>> {
        Some(match name {
            "ttfm_ms" => self.ttfm_ms,
            "messages_sent" => Some(self.messages_sent as f64),
            "messages_delivered" => Some(self.messages_delivered as f64),
            "messages_lost" => Some(self.messages_lost as f64),
            "messages_duplicated" => Some(self.messages_duplicated as f64),
            "messages_corrupted" => Some(self.messages_corrupted as f64),
            "bytes_sent" => Some(self.bytes_sent as f64),
            "bytes_delivered" => Some(self.bytes_delivered as f64),
            "median_latency_ms" => self.median_latency_ms,
            "goodput_kbps" => self.goodput_kbps,
            "sim_duration_ms" => Some(self.sim_duration_ms),
            "messages_expired" => Some(self.messages_expired as f64),
            "messages_failed" => Some(self.messages_failed as f64),
            "unreliable_lost" => Some(self.unreliable_lost as f64),
            "delivered_after_deadline" => Some(self.delivered_after_deadline as f64),
            "antecedent_violations" => Some(self.antecedent_violations as f64),
            "established" => Some(self.established as f64),
            "ttfm_last_ms" => self.ttfm_last_ms,
            "resumed" => self.resumed.map(|r| r as f64),
            "attempts" => Some(self.attempts as f64),
            "failover_gap_ms" => self.failover_gap_ms,
            "handovers" => Some(self.handovers as f64),
            "dormant" => Some(self.dormant as f64),
            "protocol_changes" => Some(self.protocol_changes as f64),
            "server_path_changes" => Some(self.server_path_changes as f64),
            "relayed" => self.relayed.map(|r| r as f64),
            "rendezvous_ms" => self.rendezvous_ms,
            "server_rendezvous_ms" => self.server_rendezvous_ms,
            "carriers_accepted" => Some(self.carriers_accepted as f64),
            other => {
                let n: u32 = other
                    .strip_prefix("median_latency_ms_niceness_")?
                    .parse()
                    .ok()?;
                self.median_latency_by_niceness_ms.get(&n).copied()
            }
        })
    }

    /// Whether [`Metrics::get`] knows `name`.
    pub fn known(name: &str) -> bool {
        Self::NAMES.contains(&name)
            || name
                .strip_prefix("median_latency_ms_niceness_")
                .is_some_and(|n| n.parse::<u32>().is_ok())
    }

    /// Every metric name [`Metrics::get`] knows (`<N>` stands for a niceness).
    pub const NAMES: &'static [&'static str] = &[
        "ttfm_ms",
        "messages_sent",
        "messages_delivered",
        "messages_lost",
        "messages_duplicated",
        "messages_corrupted",
        "bytes_sent",
        "bytes_delivered",
        "median_latency_ms",
        "goodput_kbps",
        "sim_duration_ms",
        "messages_expired",
        "messages_failed",
        "unreliable_lost",
        "delivered_after_deadline",
        "antecedent_violations",
        "established",
        "attempts",
        "ttfm_last_ms",
        "resumed",
        "failover_gap_ms",
        "handovers",
        "dormant",
        "protocol_changes",
        "server_path_changes",
        "relayed",
        "rendezvous_ms",
        "server_rendezvous_ms",
        "carriers_accepted",
        "median_latency_ms_niceness_<N>",
    ];
}

/// Rounds to whole microseconds so that reports print stable, short numbers.
pub fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The longest stretch without a delivery after a path fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Gap {
    /// When the fault struck, ms.
    pub fault_ms: f64,
    /// The delivery (or the fault) the stretch starts at, ms.
    pub from_ms: f64,
    /// The delivery that ends it, ms.
    pub to_ms: f64,
}

/// What happened to a carrier's path: the one vocabulary the workload records, the runner
/// counts and the plots draw (written kebab-case in reports: `start`, `server-path-change`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathEventKind {
    /// The client's carrier started on an interface.
    Start,
    /// The client's carrier moved to another interface.
    Handover,
    /// The client's carrier has no working path.
    Dormant,
    /// The server's carrier ended with an error.
    ServerEnded,
    /// The server's carrier heard nothing for its dormancy threshold.
    ServerDormant,
    /// The server's carrier came from a new address (or back after dormancy).
    ServerPathChange,
    /// The client's carrier moved to another protocol stack (the reason names it).
    ProtocolChange,
    /// The server's carrier moved to another protocol stack (the reason names it).
    ServerProtocolChange,
}

impl PathEventKind {
    /// Whether it changes the client's path (what the goodput plot shades).
    pub fn client_path(self) -> bool {
        matches!(self, Self::Start | Self::Handover | Self::Dormant)
    }
}

/// A change of a carrier's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PathEvent {
    /// Simulated time, ms.
    pub at_ms: f64,
    /// What happened.
    pub event: PathEventKind,
    /// The interface in use from now on (none while dormant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Why (for a handover): interface-down, silent, degraded, preferred, recovered; for a
    /// protocol change, the protocol now in use (`tls-tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The deterministic record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Scenario name, e.g. `echo/quic`.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// Whether every expectation held and the run completed.
    pub passed: bool,
    /// Expectations with their measured values.
    pub expectations: Vec<Expectation>,
    /// The metrics.
    pub metrics: Metrics,
    /// The protocol the carrier ran on.
    pub protocol: String,
    /// A run-level failure (a carrier that could not be established, a host that failed).
    pub error: Option<String>,
    /// Per-host access-link counters from the simulator.
    pub links: BTreeMap<String, serde_json::Value>,
    /// Faults applied, with their simulated times.
    pub faults: Vec<String>,
    /// The client's connection race.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub establishment: Option<Establishment>,
    /// The client carrier's path: the interface it started on, then each handover and
    /// dormant period, in simulated time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_events: Vec<PathEvent>,
    /// When path faults struck (ms), for marking failover gaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_faults_ms: Vec<f64>,
    /// Knowledge the run gave the stack that no real network would (e.g. `link-quality`:
    /// the configured loss of each access link). Empty for an honest run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oracles: Vec<String>,
    /// For each path fault: the longest stretch without a client → server delivery after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
    /// Every application message.
    pub messages: Vec<MessageRecord>,
}

impl Report {
    /// What failed in this run, one line each: the run's error (`error: ...`), then every
    /// expectation that did not hold (``expectation `name` failed, measured v``). Empty for
    /// a run that passed.
    pub fn failures(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.error.iter().map(|e| format!("error: {e}")).collect();
        lines.extend(self.expectations.iter().filter(|e| !e.passed).map(|e| {
            format!(
                "expectation `{}` failed, measured {}",
                e.name,
                e.measured.map_or("nothing".into(), |v| v.to_string())
            )
        }));
        lines
    }

    /// The JSON Schema (draft 2020-12) every report follows, as published in
    /// docs/report.schema.json.
    pub fn schema() -> serde_json::Value {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(Report)).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "$id".into(),
                "https://postsock.invalid/report.schema.json".into(),
            );
            obj.insert(
                "description".into(),
                format!(
                    "A postsock scenario run's report, schema_version {SCHEMA_VERSION}: the \
                     deterministic record of one (scenario, seed) run."
                )
                .into(),
            );
        }
        schema
    }

    /// The JSON text of the report (pretty, with a trailing newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// Wall-clock figures of one run (kept out of [`Report`] so reports stay byte-identical).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunWallClock {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Wall-clock time of the run in ms.
    pub wall_ms: f64,
    /// Simulated time of the run in ms.
    pub sim_ms: f64,
}

/// Wall-clock figures of a suite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WallClock {
    /// Per run.
    pub runs: Vec<RunWallClock>,
    /// Wall-clock time of the whole suite in ms (runs may overlap when parallel).
    pub total_wall_ms: f64,
}

impl WallClock {
    /// Simulated seconds per wall-clock second over the whole suite.
    pub fn sim_speed(&self) -> f64 {
        let sim: f64 = self.runs.iter().map(|r| r.sim_ms).sum();
        if self.total_wall_ms > 0.0 {
            sim / self.total_wall_ms
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(direction: Direction, id: u64, sent: f64, delivered: &[f64]) -> MessageRecord {
        MessageRecord {
            delivered_ms: delivered.to_vec(),
            ..MessageRecord::new(direction, id, 10, sent)
        }
    }

    #[test]
    fn property_metrics() {
        let c = Direction::ClientToServer;
        let msgs = vec![
            MessageRecord {
                niceness: Some(0),
                ..rec(c, 0, 0.0, &[30.0])
            },
            MessageRecord {
                niceness: Some(5),
                antecedents: vec![0],
                deadline_ms: Some(20.0),
                ..rec(c, 1, 0.0, &[25.0])
            },
            MessageRecord {
                niceness: Some(5),
                outcome: Some("expired".into()),
                ..rec(c, 2, 0.0, &[])
            },
            MessageRecord {
                reliable: false,
                ..rec(c, 3, 0.0, &[])
            },
            rec(c, 4, 0.0, &[]),
        ];
        let m = Metrics::compute(&msgs, Some(0.0), 100.0);
        assert_eq!(m.messages_expired, 1);
        assert_eq!(m.unreliable_lost, 1);
        assert_eq!(m.messages_lost, 1, "only the reliable, unexpired message 4");
        assert_eq!(m.delivered_after_deadline, 1);
        assert_eq!(
            m.antecedent_violations, 1,
            "1 arrived before its antecedent 0"
        );
        assert_eq!(m.get("median_latency_ms_niceness_5"), Some(Some(25.0)));
        assert_eq!(m.get("median_latency_ms_niceness_7"), Some(None));
    }

    #[test]
    fn metrics_count_loss_duplicates_and_ttfm() {
        let msgs = vec![
            rec(Direction::ClientToServer, 0, 60.0, &[80.0]),
            rec(Direction::ClientToServer, 1, 61.0, &[79.5, 90.0]),
            rec(Direction::ClientToServer, 2, 62.0, &[]),
            rec(Direction::ServerToClient, 0, 81.0, &[101.0]),
        ];
        let m = Metrics::compute(&msgs, Some(0.5), 200.0);
        assert_eq!(m.messages_sent, 4);
        assert_eq!(m.messages_delivered, 3);
        assert_eq!(m.messages_lost, 1);
        assert_eq!(m.messages_duplicated, 1);
        assert_eq!(m.ttfm_ms, Some(79.0));
        assert_eq!(m.bytes_delivered, 30);
        assert_eq!(m.median_latency_ms, Some(20.0));
        assert_eq!(m.get("messages_lost"), Some(Some(1.0)));
        assert_eq!(m.get("nonsense"), None);
    }
}
