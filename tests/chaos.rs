//! Chaos: a CI-sized sweep of random fault timelines that must hold every invariant, the
//! timelines that found bugs (each a regression test now), and the sweep's determinism.

mod common;

use std::path::Path;

use testbed::chaos::{self, Options, Shard, Timeline};
use testbed::invariants::{self, Kind};
use testbed::{suite, Scenario};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn load(name: &str) -> Scenario {
    suite::load_one(&dir(), name).expect("scenario")
}

/// A timeline written as `[[fault]]` entries.
fn timeline(toml_text: &str) -> Timeline {
    #[derive(serde::Deserialize)]
    struct Faults {
        fault: Vec<toml::Table>,
    }
    toml::from_str::<Faults>(toml_text).expect("timeline").fault
}

fn kinds(run: &chaos::Run) -> Vec<Kind> {
    run.breaches.iter().map(|b| b.kind).collect()
}

/// Fixed seeds over one scenario of each kind of carrier and fault family: every run holds
/// every invariant. (The full sweep, ≥ 10,000 timelines, and what it found are in
/// docs/RELIABILITY.md.)
#[test]
fn a_ci_sized_sweep_holds_every_invariant() {
    let bases: Vec<Scenario> = [
        "echo/quic",
        "echo/tls-tcp-nat",
        "failover/quic-wifi-down",
        "failover/tls-tcp-wifi-down",
        "failover/tls-tcp-idle",
        "api/antecedents-quic",
        "api/niceness-tls-tcp",
        "nat/quic-reboot",
        "resumption/tls-tcp-second-carrier",
        "blocking/udp-blocked-mid-echo",
    ]
    .into_iter()
    .map(load)
    .collect();
    let options = Options {
        runs: 3,
        seed: 7000,
        shard: Shard::default(),
        shrink_budget: 0,
        jobs: 2,
    };
    let sweep = chaos::sweep(&bases, &options, &|_| {}).expect("sweep");
    assert_eq!(sweep.runs.len(), 30);
    let failed: Vec<String> = sweep
        .runs
        .iter()
        .filter(|r| !r.breaches.is_empty())
        .map(|r| format!("{} seed {}: {:?}", r.scenario, r.seed, r.breaches))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The timelines did strike: most runs saw faults and some carriers moved or went dormant.
    let struck = sweep
        .runs
        .iter()
        .filter(|r| !r.report.faults.is_empty())
        .count();
    assert!(struck >= 20, "only {struck} runs saw a fault");
    let disturbed = sweep
        .runs
        .iter()
        .filter(|r| r.report.path_events.len() > 1 || r.report.error.is_some())
        .count();
    assert!(disturbed >= 5, "only {disturbed} runs were disturbed");
}

#[test]
fn timelines_come_from_the_seed_and_the_scenario() {
    let a = load("echo/quic");
    let b = load("echo/tls-tcp");
    assert_eq!(chaos::draw(&a, 5_000, 3), chaos::draw(&a, 5_000, 3));
    assert_ne!(chaos::draw(&a, 5_000, 3), chaos::draw(&a, 5_000, 4));
    assert_ne!(chaos::draw(&a, 5_000, 3), chaos::draw(&b, 5_000, 3));
    // A drawn timeline is a valid scenario, with room after its last fault to settle.
    for seed in 0..50 {
        let t = chaos::draw(&a, 5_000, seed);
        let (text, s) = chaos::with_timeline(&a, &t).expect("valid");
        assert!(s.expect.is_empty() && !s.faults.is_empty(), "{text}");
        let last = s.faults.iter().map(|f| f.at_ms).max().unwrap_or(0);
        assert!(s.duration_s * 1000 >= last + chaos::settle_s(&a) * 1000);
    }
}

/// The summary lists every run with its simulated duration (what two sweeps are compared
/// by, run by run), and they add up to its total.
#[test]
fn the_summary_lists_every_run_with_its_simulated_time() {
    let bases = vec![load("echo/quic")];
    let options = Options {
        runs: 3,
        seed: 7100,
        shard: Shard::default(),
        shrink_budget: 0,
        jobs: 2,
    };
    let sweep = chaos::sweep(&bases, &options, &|_| {}).expect("sweep");
    let out = common::TempDir::new("chaos-summary");
    let path = chaos::write(&out, &sweep).expect("write");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let per_run = summary["per_run"].as_array().expect("per_run");
    assert_eq!(per_run.len(), 3);
    let mut total = 0.0;
    for (entry, run) in per_run.iter().zip(&sweep.runs) {
        assert_eq!(entry["scenario"], "echo/quic");
        assert_eq!(entry["seed"], run.seed);
        assert_eq!(entry["sim_ms"], run.report.metrics.sim_duration_ms);
        assert_eq!(entry["faults"], run.timeline.len());
        let broke: std::collections::BTreeSet<&str> = kinds(run).iter().map(|k| k.name()).collect();
        assert_eq!(entry["breaches"], serde_json::json!(broke));
        total += entry["sim_ms"].as_f64().expect("ms");
    }
    assert_eq!(
        [7100, 7101, 7102],
        [0, 1, 2].map(|i| per_run[i]["seed"].as_u64().expect("seed"))
    );
    let sim_s = summary["sim_s"].as_f64().expect("sim_s");
    assert!(
        (total / 1000.0 - sim_s).abs() < 1e-9,
        "{total} ms vs {sim_s} s"
    );
}

/// A run's report is the same whatever ran before it in the process and however long the
/// machine took: a sweep's runs follow one another on a worker thread, and a replay runs
/// alone. (Sweeps of one seed once differed by a second: a restarted server's access link
/// read a clock that started from the wall clock at the restart, docs/RELIABILITY.md.)
#[test]
fn a_run_with_a_server_restart_repeats_alone_or_after_others() {
    let base = load("scale/public-quic");
    let window = chaos::active_window_ms(&base).expect("window");
    // Seed 11305 restarts the server 53 ms in, while 100 clients are connecting.
    let timeline = chaos::draw(&base, window, 11305);
    let report = |run: chaos::Run| serde_json::to_string(&run.report).expect("json");
    let alone = report(chaos::run_timeline(&base, timeline.clone(), 11305).expect("run"));
    assert!(
        alone.contains("Bounce"),
        "the timeline restarts the server: {timeline:?}"
    );
    let before = chaos::draw(&base, window, 11304);
    chaos::run_timeline(&base, before, 11304).expect("run");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = report(chaos::run_timeline(&base, timeline, 11305).expect("run"));
    assert!(
        alone == after,
        "the run changed after another one in the process"
    );
}

/// Found by chaos: after a continuation the TLS/TCP keepalive ACK counted from 0, below what
/// the peer knew was received, and the peer ended the carrier with a protocol violation.
#[test]
fn a_keepalive_after_a_continuation_counts_from_what_was_received() {
    let base = load("failover/tls-tcp-idle");
    let t = timeline(
        r#"[[fault]]
at_ms = 1216
action = "flap"
host = "server"
period_ms = 2370
count = 1"#,
    );
    let run = chaos::run_timeline(&base, t, 4).expect("run");
    assert!(run.breaches.is_empty(), "{:?}", run.breaches);
    assert_eq!(run.report.metrics.messages_delivered, 8);
}

/// Found by chaos: a QUIC server that restarts (bounce) under an idle carrier lost its
/// connections, and the client learnt it only from its idle timeout (5 min here). With the
/// server's stateless-reset key derived from its identity, the client's next packet draws a
/// verifiable reset.
#[test]
fn a_restarted_quic_server_resets_the_old_carrier_at_once() {
    let base = load("nat/quic-mapping-timeout-no-keepalive");
    let t = timeline(
        r#"[[fault]]
at_ms = 277
action = "bounce"
host = "server""#,
    );
    let run = chaos::run_timeline(&base, t, 1).expect("run");
    assert!(run.breaches.is_empty(), "{:?}", run.breaches);
    let error = run.report.error.clone().unwrap_or_default();
    assert!(error.contains("reset by peer"), "{error}");
    // The next message goes out at 60 s; the reset answers it within a round trip or two.
    assert!(
        run.report.metrics.sim_duration_ms < 61_000.0,
        "{}",
        run.report.metrics.sim_duration_ms
    );
}

/// Found by chaos: on a lossy path the client's HELLO reached the listener after its 1 s
/// wait; the listener had started a carrier that cannot continue, and the HELLO then broke it
/// with a protocol violation. Now the server surfaces the restart as a clear error instead.
#[test]
fn a_slow_hello_is_waited_for() {
    let base = load("echo/tls-tcp");
    let t = timeline(
        r#"[[fault]]
at_ms = 67
action = "bounce"
host = "server"

[[fault]]
at_ms = 76
action = "set-link"
host = "server"
latency_ms = 158
loss = 0.3

[[fault]]
at_ms = 13072
action = "set-link"
host = "server"
loss = 0.0"#,
    );
    let run = chaos::run_timeline(&base, t, 1).expect("run");
    assert!(
        !kinds(&run).contains(&Kind::ProtocolViolation),
        "{:?}",
        run.breaches
    );
    assert!(run.breaches.is_empty(), "{:?}", run.breaches);
}

/// The oracle reads reports: the same report checked twice gives the same breaches, and a
/// shipped scenario's clean run has none.
#[test]
fn the_oracle_passes_a_clean_run() {
    let s = load("api/antecedents-quic");
    let outcome = testbed::run(&s, 1);
    assert!(invariants::check(&outcome.report, &s).is_empty());
}

/// Found trying roles as a new user would: a rendezvous, STUN and TURN server on one host
/// panicked inside turmoil ("already registered host"). They now share the host's program;
/// a role on a peer's host is a scenario error at its key.
#[test]
fn infrastructure_roles_share_a_host_and_peers_keep_theirs() {
    let text = std::fs::read_to_string(dir().join("nat/rendezvous-relayed-reboot.toml"))
        .expect("scenario file");
    let shared = text
        .replace("stun = \"stun\"", "stun = \"rdv\"")
        .replace("turn = \"turn\"", "turn = \"rdv\"");
    let s = Scenario::parse("shared", Path::new("shared.toml"), &shared).expect("valid");
    let report = testbed::run(&s, 1).report;
    assert!(
        report.passed,
        "{:?} {:?}",
        report.error, report.expectations
    );
    assert_eq!(report.metrics.relayed, Some(1));

    let on_peer = text.replace("stun = \"stun\"", "stun = \"bob\"");
    let e = Scenario::parse("peer", Path::new("peer.toml"), &on_peer).expect_err("a peer's host");
    let line = on_peer
        .lines()
        .position(|l| l == "stun = \"bob\"")
        .expect("line")
        + 1;
    assert_eq!((e.line, e.column), (line, 8), "{e}");
    assert!(e.message.contains("hosts of their own"), "{e}");
}

/// From the issue: a server restart under a live carrier left QUIC messages without any
/// outcome until the 30 s dormant timeout, and TLS/TCP reconnected every 125 ms for ever.
/// Now both carriers end within two seconds with an error that says why, and every message
/// has its outcome.
#[test]
fn a_server_restart_under_a_live_carrier_ends_it_clearly_and_settles_every_message() {
    for (name, why) in [
        ("nat/quic-reboot", "reset by peer"),
        (
            "nat/tls-tcp-reboot",
            "the peer no longer knows this carrier",
        ),
    ] {
        let base = load(name);
        let t = timeline("[[fault]]\nat_ms = 2000\naction = \"bounce\"\nhost = \"server\"");
        let run = chaos::run_timeline(&base, t, 1).expect("run");
        assert!(run.breaches.is_empty(), "{name}: {:?}", run.breaches);
        let error = run.report.error.clone().unwrap_or_default();
        assert!(error.contains(why), "{name}: {error}");
        let end = run.report.metrics.sim_duration_ms;
        assert!(end < 4_500.0, "{name}: ended at {end} ms");
        assert!(run
            .report
            .messages
            .iter()
            .all(|m| { m.direction != reports::Direction::ClientToServer || m.outcome.is_some() }));
    }
}

/// Found by chaos in the first version of the move to TLS/TCP: a server link that flaps
/// under a QUIC carrier. Messages the server's QUIC had acknowledged, waiting behind an
/// earlier ordered stream, were reported acked and never delivered once the move froze the
/// reader. Now the reader drains what QUIC holds whole, and an ordered message is reported
/// acked only after the one before it.
#[test]
fn a_move_under_a_flapping_link_loses_nothing() {
    let base = load("blocking/udp-blocked-mid-carrier");
    let t = timeline(
        r#"[[fault]]
at_ms = 720
action = "flap"
host = "server"
period_ms = 1336
count = 4"#,
    );
    let run = chaos::run_timeline(&base, t, 50024).expect("run");
    assert!(run.breaches.is_empty(), "{:?}", run.breaches);
    let m = &run.report.metrics;
    assert_eq!((m.messages_delivered, m.messages_lost), (500, 0));
    assert_eq!(
        m.protocol_changes, 1,
        "QUIC stays silent after the flaps; TLS/TCP works"
    );
}

/// Found by chaos: a NAT reboot resets the new TLS/TCP connection in the middle of the move's
/// exchange. The carrier ends with an error naming the move and a TCP read (not a protocol
/// violation), and every message is settled.
#[test]
fn a_move_whose_connection_breaks_ends_the_carrier_clearly() {
    let base = load("blocking/udp-blocked-mid-carrier");
    let t = timeline(
        r#"[[fault]]
at_ms = 1124
action = "set-link"
host = "server"
latency_ms = 290
loss = 0.04

[[fault]]
at_ms = 1845
action = "nat-reboot"
host = "fw"

[[fault]]
at_ms = 3880
action = "nat-reboot"
host = "fw""#,
    );
    let run = chaos::run_timeline(&base, t, 50016).expect("run");
    assert!(run.breaches.is_empty(), "{:?}", run.breaches);
    let error = run.report.error.clone().unwrap_or_default();
    assert!(
        error.contains("moving the carrier from QUIC to TLS/TCP failed") && error.contains("TCP"),
        "{error}"
    );
}
