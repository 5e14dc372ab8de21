//! Running one scenario with one seed in the simulator, and turning the run into a report.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postsock::traversal::punch::PunchConfig;
use postsock::traversal::rendezvous::RendezvousServer;
use postsock::traversal::stun::StunServer;
use postsock::traversal::turn::{TurnConfig, TurnServer, TurnServerConfig};
use postsock::{Configuration, Protocol, Remote, Security, TestCa};
use reports::{Expectation, Report, SCHEMA_VERSION};
use sim::World;

use crate::scenario::{Scenario, WorkloadKind};
use crate::workload::{self, SharedTrace};

/// A finished run: the deterministic report and the wall-clock time it took.
#[derive(Debug)]
pub struct RunOutcome {
    /// The report.
    pub report: Report,
    /// Wall-clock duration of the run (a benchmark figure, never part of the report).
    pub wall: Duration,
}

/// What a run writes besides its report.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Capture every access link's packets into `<dir>/<link>.pcapng` and the TLS secrets
    /// of the client's and server's carriers into `<dir>/keys.log` (SSLKEYLOGFILE format), so
    /// Wireshark decodes the run's QUIC and TLS.
    pub pcap: Option<std::path::PathBuf>,
}

/// TLS secrets in the NSS key log format, kept in memory until the run ends.
#[derive(Debug, Default)]
struct KeyLogBuffer(std::sync::Mutex<String>);

impl rustls::KeyLog for KeyLogBuffer {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        use std::fmt::Write;
        let hex = |b: &[u8]| {
            b.iter().fold(String::new(), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            })
        };
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{label} {} {}", hex(client_random), hex(secret));
    }
}

struct Setup {
    client: Configuration,
    server: Configuration,
}

fn setup(scenario: &Scenario, key_log: Option<Arc<dyn rustls::KeyLog>>) -> Result<Setup, String> {
    let protocols = scenario.workload.protocol.protocols();
    let ca = TestCa::new("postsock testbed CA").map_err(|e| e.to_string())?;
    let identity = ca
        .issue(&[scenario.workload.server.get_ref().as_str()])
        .map_err(|e| e.to_string())?;
    let mut server = Configuration::default();
    server.protocols(&protocols).security(Security {
        identity: Some(identity),
        key_log: key_log.clone(),
        ..Security::default()
    });
    let mut client = Configuration::default();
    client.protocols(&protocols).security(Security {
        trusted_roots: vec![ca.root()],
        key_log,
        ..Security::default()
    });
    if let Some(ms) = scenario.workload.attempt_delay_ms {
        client.attempt_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = scenario.workload.connect_timeout_ms {
        client.connect_timeout(Duration::from_millis(ms));
    }
    if scenario.workload.association {
        client.associations = Some(postsock::Associations::new(Duration::from_secs(600)));
    }
    client.adaptive_attempt_delay = scenario.workload.adaptive_attempt_delay;
    for (name, pref) in &scenario.workload.interfaces {
        client.paths.interface(name.clone(), pref.preference());
    }
    client.paths.link_quality = scenario.workload.link_quality;
    client.policies = scenario.policies.clone();
    client.application = scenario.workload.application.clone();
    if let Some(ms) = scenario.workload.return_after_ms {
        client.paths.return_after = Duration::from_millis(ms);
    }
    if let Some(ms) = scenario.workload.keepalive_ms {
        let keepalive = (ms > 0).then(|| Duration::from_millis(ms));
        client.keepalive = keepalive;
        server.keepalive = keepalive;
    }
    if let Some(s) = scenario.workload.dormant_timeout_s {
        client.dormant_timeout = Duration::from_secs(s);
        server.dormant_timeout = Duration::from_secs(s);
    }
    Ok(Setup { client, server })
}

/// The TURN relay's credentials in rendezvous scenarios.
const TURN_USER: &str = "scenario";
const TURN_PASSWORD: &str = "relay-for-the-testbed";

/// Starts a rendezvous workload: the rendezvous, STUN and TURN servers on their hosts, and
/// the two peers.
fn start_rendezvous(
    world: &mut World<'_>,
    w: &crate::scenario::Workload,
    seed: u64,
    trace: &SharedTrace,
    config: Configuration,
    deadline: Duration,
) -> Result<(), String> {
    use postsock::net::Net;
    let err = |e: sim::SimError| e.to_string();
    let name = |h: &Option<toml::Spanned<String>>| h.as_ref().map(|h| h.get_ref().clone());
    let (Some(rdv), Some(stun)) = (name(&w.rendezvous), name(&w.stun)) else {
        return Err("a rendezvous workload needs rendezvous and stun hosts".into());
    };
    let turn = name(&w.turn);
    let ca = TestCa::new("rendezvous CA").map_err(|e| e.to_string())?;
    let identity = ca.issue(&[rdv.as_str()]).map_err(|e| e.to_string())?;
    let mut rdv_config = Configuration::default();
    rdv_config.protocols(&[Protocol::Quic]).security(Security {
        identity: Some(identity),
        ..Security::default()
    });
    let ip = |h: &str| world.ip(h).ok_or_else(|| format!("no address for `{h}`"));
    let stun_ip = ip(&stun)?;
    let turn_ip = match &turn {
        Some(t) => Some(ip(t)?),
        None => None,
    };
    // The infrastructure roles, by host: roles that share a host run in one host program
    // (turmoil runs one per host). A TURN server answers Binding requests too, so a host
    // that is both STUN and TURN runs the TURN server only.
    let mut roles: std::collections::BTreeMap<String, Vec<Role>> = Default::default();
    roles.entry(rdv.clone()).or_default().push(Role::Rendezvous);
    if turn.as_deref() != Some(stun.as_str()) {
        roles.entry(stun.clone()).or_default().push(Role::Stun);
    }
    if let (Some(turn), Some(turn_ip)) = (&turn, turn_ip) {
        roles
            .entry(turn.clone())
            .or_default()
            .push(Role::Turn(turn_ip));
    }
    for (host, roles) in roles {
        let net: Arc<dyn Net> = world.net(&host).map_err(err)?;
        let rdv_config = rdv_config.clone();
        world
            .host(&host, move || {
                let (net, roles, rdv_config) = (net.clone(), roles.clone(), rdv_config.clone());
                async move {
                    let mut running = tokio::task::JoinSet::new();
                    for role in roles {
                        let (net, rdv_config) = (net.clone(), rdv_config.clone());
                        running.spawn(async move { role.serve(net, rdv_config).await });
                    }
                    // A role that fails fails the host (and the run).
                    while let Some(done) = running.join_next().await {
                        done.map_err(|e| e.to_string())??;
                    }
                    Ok(())
                }
            })
            .map_err(err)?;
    }
    let mut trust = Configuration::default();
    trust.protocols(&[Protocol::Quic]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    let mut punch = PunchConfig::new(
        Remote::new(rdv.clone(), RENDEZVOUS_PORT),
        trust,
        (stun_ip, 3478).into(),
    );
    if let Some(turn_ip) = turn_ip {
        punch.turn = Some(TurnConfig {
            server: (turn_ip, 3478).into(),
            username: TURN_USER.into(),
            password: TURN_PASSWORD.into(),
        });
    }
    let meeting = workload::Meeting {
        punch,
        secret: format!("testbed pairing secret, seed {seed}").into_bytes(),
    };
    for (host, client) in [(w.client.get_ref(), true), (w.server.get_ref(), false)] {
        let net: Arc<dyn Net> = world.net(host).map_err(err)?;
        let program = workload::rendezvous_peer(
            net,
            config.clone(),
            w.clone(),
            seed,
            deadline,
            trace.clone(),
            meeting.clone(),
            client,
        );
        world.client(host, program).map_err(err)?;
    }
    Ok(())
}

/// A server a rendezvous workload runs on an infrastructure host.
#[derive(Debug, Clone)]
enum Role {
    /// The rendezvous server (QUIC, port 7000).
    Rendezvous,
    /// A STUN server (port 3478).
    Stun,
    /// The TURN relay (port 3478), relaying on this address.
    Turn(std::net::IpAddr),
}

impl Role {
    async fn serve(
        self,
        net: Arc<dyn postsock::net::Net>,
        rdv_config: Configuration,
    ) -> Result<(), String> {
        let stun_local = ([0, 0, 0, 0], 3478).into();
        let failed = |e: postsock::Error| e.to_string();
        match self {
            Role::Rendezvous => {
                let local = ([0, 0, 0, 0], RENDEZVOUS_PORT).into();
                let wait = Duration::from_secs(30);
                let _server = RendezvousServer::bind(net, local, rdv_config, wait)
                    .await
                    .map_err(failed)?;
                std::future::pending::<()>().await;
            }
            Role::Stun => {
                StunServer::bind(net.as_ref(), stun_local)
                    .await
                    .map_err(failed)?
                    .run()
                    .await
            }
            Role::Turn(relay_ip) => {
                let mut config = TurnServerConfig::new(TURN_USER, TURN_PASSWORD);
                config.relay_ip = Some(relay_ip);
                TurnServer::bind(net, stun_local, config)
                    .await
                    .map_err(failed)?
                    .run()
                    .await;
            }
        }
        Ok(())
    }
}

/// Where the rendezvous server of a rendezvous workload listens.
const RENDEZVOUS_PORT: u16 = 7000;

/// Runs `scenario` with `seed`. Never panics: a failing host or a panic becomes the
/// report's `error`.
pub fn run(scenario: &Scenario, seed: u64) -> RunOutcome {
    run_with(scenario, seed, &RunOptions::default())
}

/// [`run`], writing what `options` asks for besides the report (a capture failure becomes
/// the report's `error`).
pub fn run_with(scenario: &Scenario, seed: u64, options: &RunOptions) -> RunOutcome {
    let started = Instant::now();
    let trace = SharedTrace::default();
    let mut faults_applied = Vec::new();
    let mut links = Default::default();
    let mut sim_ms = 0.0;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        simulate(
            scenario,
            seed,
            options,
            &trace,
            &mut faults_applied,
            &mut links,
            &mut sim_ms,
        )
    }));
    let run_error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    let report = build_report(
        scenario,
        seed,
        &trace,
        run_error,
        faults_applied,
        links,
        sim_ms,
    );
    RunOutcome {
        report,
        wall: started.elapsed(),
    }
}

fn simulate(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    trace: &SharedTrace,
    faults_applied: &mut Vec<String>,
    links: &mut std::collections::BTreeMap<String, serde_json::Value>,
    sim_ms: &mut f64,
) -> Result<(), String> {
    let keys = options
        .pcap
        .as_ref()
        .map(|_| Arc::new(KeyLogBuffer::default()));
    let Setup { client, server } =
        setup(scenario, keys.clone().map(|k| k as Arc<dyn rustls::KeyLog>))?;
    let deadline = Duration::from_secs(scenario.duration_s);
    // The world may run a little past the workload's deadline so the client can close.
    let mut world = World::new(&scenario.world, seed, deadline + Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    if options.pcap.is_some() {
        world.capture_packets();
    }
    let w = &scenario.workload;
    let (client_host, server_host) = (w.client.get_ref().as_str(), w.server.get_ref().as_str());
    trace.lock().path_one_way = world.path_latency(client_host, server_host);
    let server_net: Arc<dyn postsock::net::Net> =
        world.net(server_host).map_err(|e| e.to_string())?;
    let client_deadline = deadline.saturating_sub(Duration::from_millis(w.start_ms));
    let kind = w.kind;
    if kind == WorkloadKind::RendezvousEcho {
        start_rendezvous(&mut world, w, seed, trace, client, client_deadline)?;
    } else {
        let (workload, trace_s) = (w.clone(), trace.clone());
        world
            .host(server_host, move || {
                let (net, config, workload, trace) = (
                    server_net.clone(),
                    server.clone(),
                    workload.clone(),
                    trace_s.clone(),
                );
                async move {
                    if kind == WorkloadKind::Stream {
                        workload::stream_server(net, config, workload, seed, trace).await
                    } else {
                        workload::echo_server(net, config, workload, seed, trace).await
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        // Every client host (one, or each member of a client group) runs the client with
        // its own carrier. The deadline counts from the workload's start.
        for (index, host) in scenario.clients.iter().enumerate() {
            // The client's program owns its network: when the program ends, its host's TCP
            // finishes closing its connections and the host leaves (`World::client`).
            let net: Arc<dyn postsock::net::Net> = world.net(host).map_err(|e| e.to_string())?;
            let (workload, trace_c, config) = (w.clone(), trace.clone(), client.clone());
            let member = workload::Member {
                index: index as u64,
            };
            // The deadline counts from the member's own start.
            let start = member.start(w);
            let deadline = deadline.saturating_sub(start);
            world
                .client_at(host, start, async move {
                    if kind == WorkloadKind::Stream {
                        workload::stream_client(
                            net, config, workload, seed, deadline, trace_c, member,
                        )
                        .await
                    } else {
                        workload::echo_client(
                            net, config, workload, seed, deadline, trace_c, member,
                        )
                        .await
                    }
                })
                .map_err(|e| e.to_string())?;
        }
    }
    let mut pending = scenario.faults.iter().peekable();
    let result = loop {
        let elapsed = world.elapsed();
        while let Some(f) = pending.next_if(|f| Duration::from_millis(f.at_ms) <= elapsed) {
            world.apply(&f.fault).map_err(|e| e.to_string())?;
            faults_applied.push(format!("{} ms: {:?}", elapsed.as_millis(), f.fault));
        }
        match world.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    *sim_ms = world.elapsed().as_secs_f64() * 1000.0;
    for (host, counters) in world.counters() {
        links.insert(host, serde_json::to_value(counters).unwrap_or_default());
    }
    if let (Some(dir), Some(keys)) = (&options.pcap, keys) {
        let capture = |e: std::io::Error| format!("writing the capture to {}: {e}", dir.display());
        world.write_pcap(dir).map_err(capture)?;
        let text = keys.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        std::fs::write(dir.join("keys.log"), text).map_err(capture)?;
    }
    result
}

/// The earliest the client's race can start, ms: the world's DNS delays for the queries the
/// client asks (the families it has) and the server answers (the families it has), by
/// Happy Eyeballs' rules.
fn resolution_floor(scenario: &Scenario) -> f64 {
    use postsock::net::Family;
    let host = |name: &str| scenario.world.hosts.iter().find(|h| h.name == name);
    let client = scenario.clients.first().and_then(|c| host(c));
    let server = host(scenario.workload.server.get_ref());
    let (Some(client), Some(server)) = (client, server) else {
        return 0.0;
    };
    let dns = scenario.world.dns;
    let families = |h: &sim::HostSpec| {
        let mut f = Vec::new();
        if h.ip.v6() {
            f.push(Family::V6);
        }
        if h.ip.v4() {
            f.push(Family::V4);
        }
        f
    };
    let served = families(server);
    let answers: Vec<_> = [(Family::V6, dns.aaaa_ms), (Family::V4, dns.a_ms)]
        .into_iter()
        // A lost AAAA query never answers.
        .filter(|(f, _)| !(dns.aaaa_lost && *f == Family::V6))
        .map(|(f, ms)| (f, std::time::Duration::from_millis(ms), served.contains(&f)))
        .collect();
    postsock::race_start(&families(client), &answers).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// When faults struck the client's path: link-down, black hole and broken IPv6 on the
/// client, a reboot of a NAT the client is behind.
fn client_path_faults(scenario: &Scenario) -> Vec<f64> {
    let client = scenario.workload.client.get_ref();
    scenario
        .faults
        .iter()
        .filter(|f| match &f.fault {
            sim::Fault::LinkDown { host, .. }
            | sim::Fault::Blackhole { host, .. }
            | sim::Fault::Ipv6 {
                host,
                working: false,
            } => host == client,
            sim::Fault::NatReboot { host } => scenario
                .world
                .hosts
                .iter()
                .filter(|h| &h.name == client)
                .any(|h| {
                    h.gateway.as_ref() == Some(host)
                        || h.interfaces.iter().any(|i| &i.gateway == host)
                }),
            _ => false,
        })
        .map(|f| f.at_ms as f64)
        .collect()
}

fn build_report(
    scenario: &Scenario,
    seed: u64,
    trace: &SharedTrace,
    run_error: Option<String>,
    faults: Vec<String>,
    links: std::collections::BTreeMap<String, serde_json::Value>,
    sim_ms: f64,
) -> Report {
    let trace = trace.lock();
    let messages: Vec<_> = trace.messages.values().cloned().collect();
    let path_faults_ms = client_path_faults(scenario);
    let zero_rtt =
        scenario.workload.association && scenario.workload.first_idempotent == Some(true);
    let facts = reports::RunFacts {
        messages: &messages,
        initiated_ms: trace.initiated_ms,
        initiations: &trace.initiations,
        sim_duration_ms: sim_ms,
        resumed: trace.resumed.last().copied().flatten(),
        path_one_way_ms: trace.path_one_way.map(|d| d.as_secs_f64() * 1000.0),
        resolution_ms: resolution_floor(scenario),
        protocol: trace.protocol.as_deref(),
        zero_rtt,
        path_faults_ms: &path_faults_ms,
        path_events: &trace.path_events,
        carriers_accepted: trace.carriers_accepted,
        relayed: trace.relayed,
        rendezvous_ms: trace.rendezvous_ms,
        server_rendezvous_ms: trace.server_rendezvous_ms,
        establishment: trace.establishment.as_ref(),
    };
    let (metrics, gaps) = reports::derive(&facts);
    let expectations: Vec<Expectation> = scenario
        .expect
        .iter()
        .map(|e| {
            let measured = metrics.get(&e.metric).flatten();
            Expectation {
                name: e.name(),
                passed: measured.is_some_and(|v| e.holds(v)),
                measured,
            }
        })
        .collect();
    // A failed establishment is the run's error, unless the scenario expects it (an
    // expectation on `established`).
    let expects_failure = scenario.expect.iter().any(|e| e.metric == "established");
    let establish_error = trace
        .establishment
        .as_ref()
        .and_then(|e| e.error.clone())
        .filter(|_| !expects_failure)
        .map(|e| format!("initiate: {e}"));
    let error = run_error
        .or_else(|| trace.error.clone())
        .or(establish_error);
    Report {
        schema_version: SCHEMA_VERSION,
        scenario: scenario.name.clone(),
        seed,
        passed: error.is_none() && expectations.iter().all(|e| e.passed),
        expectations,
        metrics,
        protocol: trace
            .protocol
            .clone()
            .unwrap_or_else(|| scenario.workload.protocol.name().to_owned()),
        error,
        links,
        faults,
        establishment: trace.establishment.clone(),
        path_events: trace.path_events.clone(),
        path_faults_ms,
        oracles: scenario
            .workload
            .link_quality
            .then(|| "link-quality".to_string())
            .into_iter()
            .collect(),
        gaps,
        messages,
    }
}
