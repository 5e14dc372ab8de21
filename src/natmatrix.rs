//! The NAT-pair matrix: for every pair of NAT presets, two peers punch through (rendezvous,
//! STUN, connectivity checks, QUIC; a TURN relay when no direct pair works) in the simulator,
//! seed after seed. Each cell shows the outcome RFC 4787 behaviour predicts beside the
//! measured outcomes (direct / relayed / failed) and the median time to ready.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::Net;
use postsock::traversal::punch::{self, PunchConfig};
use postsock::traversal::rendezvous::RendezvousServer;
use postsock::traversal::stun::StunServer;
use postsock::traversal::turn::{TurnConfig, TurnServer, TurnServerConfig};
use postsock::{Carrier, Configuration, Protocol, Remote, Security, TestCa};
use serde::{Deserialize, Serialize};
use sim::{Dependence, GatewaySpec, HostSpec, NatPreset, NatSpec, World, WorldSpec};

use crate::scenario::Scenario;

/// The presets, in matrix order.
pub const PRESETS: [NatPreset; 5] = [
    NatPreset::Open,
    NatPreset::FullCone,
    NatPreset::RestrictedCone,
    NatPreset::PortRestrictedCone,
    NatPreset::Symmetric,
];

/// A preset's name as scenario files write it.
pub fn name(p: NatPreset) -> &'static str {
    match p {
        NatPreset::Open => "open",
        NatPreset::FullCone => "full-cone",
        NatPreset::RestrictedCone => "restricted-cone",
        NatPreset::PortRestrictedCone => "port-restricted-cone",
        NatPreset::Symmetric => "symmetric",
    }
}

fn behaviour(p: NatPreset) -> sim::NatBehaviour {
    NatSpec {
        preset: Some(p),
        ..NatSpec::default()
    }
    .behaviour()
}

/// Whether RFC 4787 behaviour lets two peers behind `a` and `b` reach each other directly
/// with simultaneous checks from the sockets their STUN mappings belong to:
/// - both map endpoint-independently: each learns the other's mapping from STUN, and each
///   side's checks open its own filter for the other's;
/// - one maps per destination: its checks leave from a port the other never learned, so the
///   other's filter must admit any port of its address (endpoint-independent or
///   address-dependent filtering); the answers then go back through that new mapping;
/// - both map per destination: neither can learn the other's port.
pub fn predict_direct(a: NatPreset, b: NatPreset) -> bool {
    let (a, b) = (behaviour(a), behaviour(b));
    let eim = |n: &sim::NatBehaviour| n.mapping == Dependence::EndpointIndependent;
    let admits_any_port =
        |n: &sim::NatBehaviour| n.filtering != Dependence::AddressAndPortDependent;
    match (eim(&a), eim(&b)) {
        (true, true) => true,
        (false, true) => admits_any_port(&b),
        (true, false) => admits_any_port(&a),
        (false, false) => false,
    }
}

/// One punch between peers behind `a` and `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRun {
    /// Alice's NAT.
    pub a: String,
    /// Bob's NAT.
    pub b: String,
    /// The seed.
    pub seed: u64,
    /// `direct` or `relayed` (both ended with such a carrier and a message went through it
    /// and back), or `failed`.
    pub outcome: String,
    /// Bob's time from his start to a ready carrier (he arrives second), ms.
    pub ready_ms: Option<f64>,
    /// Why not, if not.
    pub error: Option<String>,
}

fn host(name: &str, gateway: Option<&str>, latency_ms: u64) -> HostSpec {
    HostSpec::new(name, gateway, latency_ms)
}

fn gateway(name: &str, preset: NatPreset) -> GatewaySpec {
    GatewaySpec::nat(name, preset)
}

/// What one peer's program ends with: how its punch went and the bytes that came back.
pub type PeerResult = Result<(punch::PunchReport, Vec<u8>), String>;

/// The TURN server's credentials in the simulated worlds.
const TURN_USER: &str = "matrix";
const TURN_PASSWORD: &str = "relay-me-please";

const PAYLOAD: &[u8] = b"through the NATs";

/// Alice behind `a` starts at 0, Bob behind `b` at 150 ms; both punch through (rendezvous,
/// STUN and TURN servers are public hosts), Alice sends a message, Bob echoes it. Returns
/// Alice's and Bob's results.
pub fn punch_pair(a: NatPreset, b: NatPreset, seed: u64) -> (PeerResult, PeerResult) {
    punch_pair_with(a, b, seed, PairSetup::default())
}

/// How [`punch_pair_with`] sets the peers up.
#[derive(Debug, Clone, Copy)]
pub struct PairSetup {
    /// Whether the peers have the TURN server to fall back on.
    pub turn: bool,
    /// The peers' relay policy.
    pub policy: punch::RelayPolicy,
}

impl Default for PairSetup {
    fn default() -> Self {
        PairSetup {
            turn: true,
            policy: punch::RelayPolicy::Fallback,
        }
    }
}

/// The world of one pair: Alice behind `a` (5 ms from her NAT), Bob behind `b` (10 ms), and
/// public STUN, rendezvous and TURN hosts.
fn pair_world(a: NatPreset, b: NatPreset) -> WorldSpec {
    WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("alice", Some("nat-a"), 5),
            host("bob", Some("nat-b"), 10),
            host("stun", None, 10),
            host("rdv", None, 10),
            host("turn", None, 15),
        ],
        gateways: vec![gateway("nat-a", a), gateway("nat-b", b)],
    }
}

/// [`punch_pair`], set up as `setup` says.
pub fn punch_pair_with(
    a: NatPreset,
    b: NatPreset,
    seed: u64,
    setup: PairSetup,
) -> (PeerResult, PeerResult) {
    let spec = pair_world(a, b);
    let failed = |e: String| (Err(e.clone()), Err(e));
    let mut world = match World::new(&spec, seed, Duration::from_secs(60)) {
        Ok(w) => w,
        Err(e) => return failed(e.to_string()),
    };
    let ca = match TestCa::new("rendezvous CA") {
        Ok(ca) => ca,
        Err(e) => return failed(e.to_string()),
    };
    let identity = match ca.issue(&["rdv"]) {
        Ok(i) => i,
        Err(e) => return failed(e.to_string()),
    };
    let mut rdv_config = Configuration::default();
    rdv_config.protocols(&[Protocol::Quic]).security(Security {
        identity: Some(identity),
        ..Security::default()
    });
    let servers = (|| -> Result<(), sim::SimError> {
        let rdv_net: Arc<dyn Net> = world.net("rdv")?;
        world.host("rdv", move || {
            let (net, config) = (rdv_net.clone(), rdv_config.clone());
            async move {
                let wait = Duration::from_secs(10);
                let addr = ([0, 0, 0, 0], 7000).into();
                let _server = RendezvousServer::bind(net, addr, config, wait).await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        })?;
        let stun_net: Arc<dyn Net> = world.net("stun")?;
        world.host("stun", move || {
            let net = stun_net.clone();
            async move {
                let addr = ([0, 0, 0, 0], 3478).into();
                StunServer::bind(net.as_ref(), addr).await?.run().await;
                Ok(())
            }
        })?;
        let turn_net: Arc<dyn Net> = world.net("turn")?;
        let turn_ip = world.ip("turn");
        world.host("turn", move || {
            let net = turn_net.clone();
            async move {
                let mut config = TurnServerConfig::new(TURN_USER, TURN_PASSWORD);
                config.relay_ip = turn_ip;
                let addr = ([0, 0, 0, 0], 3478).into();
                TurnServer::bind(net, addr, config).await?.run().await;
                Ok(())
            }
        })?;
        Ok(())
    })();
    if let Err(e) = servers {
        return failed(e.to_string());
    }
    let Some(stun_ip) = world.ip("stun") else {
        return failed("no STUN host".into());
    };
    let stun_addr = (stun_ip, 3478).into();
    let Some(turn_ip) = world.ip("turn") else {
        return failed("no TURN host".into());
    };
    let outcomes: Arc<Mutex<Vec<(&'static str, PeerResult)>>> = Default::default();
    for (who, start_ms) in [("alice", 0u64), ("bob", 150)] {
        let net: Arc<dyn Net> = match world.net(who) {
            Ok(n) => n,
            Err(e) => return failed(e.to_string()),
        };
        let mut rdv = Configuration::default();
        rdv.protocols(&[Protocol::Quic]).security(Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        });
        let mut cfg = PunchConfig::new(Remote::new("rdv", 7000), rdv, stun_addr);
        if setup.turn {
            cfg.turn = Some(TurnConfig {
                server: (turn_ip, 3478).into(),
                username: TURN_USER.into(),
                password: TURN_PASSWORD.into(),
            });
        }
        cfg.relay = setup.policy;
        let out = outcomes.clone();
        let program = async move {
            tokio::time::sleep(Duration::from_millis(start_ms)).await;
            let secret = b"alice and bob punch through with this secret";
            let result = async {
                let e = |e: postsock::Error| e.to_string();
                let carrier = Carrier::rendezvous(net, secret, &cfg, Configuration::default())
                    .await
                    .map_err(e)?;
                let report = carrier
                    .rendezvous_report()
                    .cloned()
                    .ok_or("a rendezvous carrier without its report")?;
                if !matches!(carrier.next_event().await, Some(postsock::Event::Ready)) {
                    return Err("the first event was not Ready".into());
                }
                let got = if who == "alice" {
                    carrier.send_bytes(PAYLOAD).await.map_err(e)?;
                    let echo = carrier.receive().await.map_err(e)?;
                    echo.map(|m| m.data.to_vec()).unwrap_or_default()
                } else {
                    let m = carrier.receive().await.map_err(e)?;
                    let data = m.map(|m| m.data).unwrap_or_default();
                    carrier.send_bytes(data.clone()).await.map_err(e)?;
                    data.to_vec()
                };
                // Let the last message be acknowledged before the program ends.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, String>((report, got))
            }
            .await;
            out.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((who, result));
            Ok(())
        };
        if let Err(e) = world.client(who, program) {
            return failed(e.to_string());
        }
    }
    loop {
        match world.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return failed(e.to_string()),
        }
    }
    let mut got = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    got.sort_by_key(|(n, _)| *n);
    let mut it = got.into_iter().map(|(_, o)| o);
    let missing = || Err("the program did not finish".to_string());
    (
        it.next().unwrap_or_else(missing),
        it.next().unwrap_or_else(missing),
    )
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Alice's NAT.
    pub a: String,
    /// Bob's NAT.
    pub b: String,
    /// What RFC 4787 behaviour predicts: `direct`, or `relayed` (a relay is needed).
    pub predicted: String,
    /// Runs (seeds).
    pub runs: u64,
    /// Runs that ended direct.
    pub direct: u64,
    /// Runs that ended connected through the relay.
    pub relayed: u64,
    /// Runs that ended without a carrier.
    pub failed: u64,
    /// Median time to ready of the connected runs, ms.
    pub median_ready_ms: Option<f64>,
    /// Whether the measured outcome matches the prediction in every run.
    pub as_predicted: bool,
}

/// The whole matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// The seeds each cell ran.
    pub seeds: Vec<u64>,
    /// Cells, row-major (Alice's NAT, then Bob's).
    pub cells: Vec<Cell>,
    /// Every run.
    pub runs: Vec<PairRun>,
}

/// The name prefix of the matrix's generated scenarios: `nat/matrix/<a>--<b>`.
pub const PREFIX: &str = "nat/matrix/";

/// The scenario of one cell: Alice behind `a` (the workload's client, from 0 ms) and Bob
/// behind `b` (its server, arriving 150 ms later) meet through the rendezvous, STUN and TURN
/// hosts and echo one message. Generated as scenario text and parsed like any scenario file,
/// so the runner runs it and every run has a report and a replay command.
pub fn scenario(a: NatPreset, b: NatPreset) -> Result<Scenario, crate::scenario::ScenarioError> {
    let world = pair_world(a, b);
    let predicted = if predict_direct(a, b) {
        "direct"
    } else {
        "through the relay"
    };
    let topology = toml::to_string(&world).map_err(|e| crate::scenario::ScenarioError {
        path: format!("{PREFIX}{}--{}", name(a), name(b)),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    let text = format!(
        r#"description = "NAT pair {a} / {b}: Alice and Bob meet by rendezvous and echo one message; RFC 4787 predicts {predicted}"
duration_s = 50

[workload]
kind = "rendezvous-echo"
client = "alice"
server = "bob"
protocol = "quic"
rendezvous = "rdv"
stun = "stun"
turn = "turn"
messages = 1
min_size = {len}
max_size = {len}
server_start_ms = 150

[[expect]]
metric = "messages_lost"
max = 0

[[expect]]
metric = "messages_delivered"
min = 2

{topology}"#,
        a = name(a),
        b = name(b),
        len = PAYLOAD.len(),
    );
    let scenario_name = format!("{PREFIX}{}--{}", name(a), name(b));
    Scenario::parse(&scenario_name, Path::new(&scenario_name), &text)
}

/// Every cell's scenario, row-major (Alice's NAT, then Bob's).
pub fn scenarios() -> Result<Vec<Scenario>, crate::scenario::ScenarioError> {
    PRESETS
        .iter()
        .flat_map(|&a| PRESETS.iter().map(move |&b| scenario(a, b)))
        .collect()
}

/// The presets of a matrix scenario's name.
fn pair_of(scenario: &str) -> Option<(NatPreset, NatPreset)> {
    let (a, b) = scenario.strip_prefix(PREFIX)?.split_once("--")?;
    let find = |n: &str| PRESETS.iter().copied().find(|p| name(*p) == n);
    Some((find(a)?, find(b)?))
}

/// One cell's run, read from its report: direct or relayed if the message went there and
/// back, else failed; Bob's time to ready.
fn pair_run(r: &reports::Report) -> Option<PairRun> {
    let (a, b) = pair_of(&r.scenario)?;
    let failed_expectations: Vec<&str> = r
        .expectations
        .iter()
        .filter(|e| !e.passed)
        .map(|e| e.name.as_str())
        .collect();
    let error = r.error.clone().or_else(|| {
        (!failed_expectations.is_empty()).then(|| {
            format!(
                "the message did not come back ({})",
                failed_expectations.join(", ")
            )
        })
    });
    let outcome = match (&error, r.metrics.relayed) {
        (Some(_), _) => "failed",
        (None, Some(1)) => "relayed",
        (None, _) => "direct",
    };
    Some(PairRun {
        a: name(a).into(),
        b: name(b).into(),
        seed: r.seed,
        outcome: outcome.into(),
        ready_ms: r.metrics.server_rendezvous_ms.filter(|_| error.is_none()),
        error,
    })
}

/// The matrix of the suite's reports of the matrix scenarios (others are ignored); `None`
/// when there are none.
pub fn from_reports<'a>(reports: impl IntoIterator<Item = &'a reports::Report>) -> Option<Matrix> {
    let mut runs: Vec<PairRun> = reports.into_iter().filter_map(pair_run).collect();
    if runs.is_empty() {
        return None;
    }
    let order = |r: &PairRun| {
        let at = |n: &str| PRESETS.iter().position(|p| name(*p) == n);
        (at(&r.a), at(&r.b), r.seed)
    };
    runs.sort_by_key(order);
    let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut cells = Vec::new();
    for a in PRESETS {
        for b in PRESETS {
            let these: Vec<&PairRun> = runs
                .iter()
                .filter(|r| r.a == name(a) && r.b == name(b))
                .collect();
            if these.is_empty() {
                continue;
            }
            let count = |o: &str| these.iter().filter(|r| r.outcome == o).count() as u64;
            let (direct, relayed) = (count("direct"), count("relayed"));
            let mut ready: Vec<f64> = these.iter().filter_map(|r| r.ready_ms).collect();
            ready.sort_by(f64::total_cmp);
            let predicted = predict_direct(a, b);
            let runs_n = these.len() as u64;
            cells.push(Cell {
                a: name(a).into(),
                b: name(b).into(),
                predicted: if predicted { "direct" } else { "relayed" }.into(),
                runs: runs_n,
                direct,
                relayed,
                failed: runs_n - direct - relayed,
                median_ready_ms: ready.get(ready.len() / 2).copied(),
                as_predicted: if predicted {
                    direct == runs_n
                } else {
                    relayed == runs_n
                },
            });
        }
    }
    Some(Matrix { seeds, cells, runs })
}

/// Runs every cell's scenario with every seed on `jobs` threads (as the suite does) and
/// builds the matrix from the reports.
pub fn run(seeds: &[u64], jobs: usize) -> Result<Matrix, crate::scenario::ScenarioError> {
    let scenarios = scenarios()?;
    let outcomes = crate::suite::run_all(&scenarios, seeds, jobs, &|_| {});
    Ok(
        from_reports(outcomes.iter().map(|o| &o.report)).unwrap_or(Matrix {
            seeds: seeds.to_vec(),
            cells: Vec::new(),
            runs: Vec::new(),
        }),
    )
}

/// Writes `nat-matrix.json`, `nat-matrix.md` and `nat-matrix.png` into `out`.
pub fn write(out: &Path, m: &Matrix) -> Result<(), reports::ReportError> {
    std::fs::create_dir_all(out).map_err(|e| reports::ReportError::Io {
        path: out.display().to_string(),
        source: e,
    })?;
    let json = serde_json::to_string_pretty(m).map_err(reports::ReportError::from)? + "\n";
    let path = out.join("nat-matrix.json");
    std::fs::write(&path, json).map_err(|e| reports::ReportError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let path = out.join("nat-matrix.md");
    std::fs::write(&path, markdown(m)).map_err(|e| reports::ReportError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let cells: Vec<reports::plot::MatrixCell> = m
        .cells
        .iter()
        .map(|c| reports::plot::MatrixCell {
            row: c.a.clone(),
            column: c.b.clone(),
            rate: c.direct as f64 / c.runs.max(1) as f64,
            relayed: c.relayed as f64 / c.runs.max(1) as f64,
            median_ms: c.median_ready_ms,
            predicted: c.predicted == "direct",
        })
        .collect();
    reports::plot::nat_matrix(&cells, m.seeds.len(), &out.join("nat-matrix.png"))
}

/// The matrix as a Markdown table: predicted / measured outcomes / median time to ready.
pub fn markdown(m: &Matrix) -> String {
    let mut s = format!(
        "# NAT-pair matrix ({} seeds per cell)\n\nRows: Alice's NAT; columns: Bob's. Each cell: \
         predicted outcome (RFC 4787) / direct, relayed and failed runs / median time to ready \
         (Bob, from his start).\n\n| |",
        m.seeds.len()
    );
    for b in PRESETS {
        s += &format!(" {} |", name(b));
    }
    s += "\n|---|";
    for _ in PRESETS {
        s += "---|";
    }
    s += "\n";
    for a in PRESETS {
        s += &format!("| **{}** |", name(a));
        for b in PRESETS {
            if let Some(c) = m.cells.iter().find(|c| c.a == name(a) && c.b == name(b)) {
                let ready = c
                    .median_ready_ms
                    .map(|t| format!(" / {t:.0} ms"))
                    .unwrap_or_default();
                let mark = if c.as_predicted { "" } else { " ⚠" };
                s += &format!(
                    " {} / {}d {}r {}f{ready}{mark} |",
                    c.predicted, c.direct, c.relayed, c.failed
                );
            }
        }
        s += "\n";
    }
    s
}
