//! Multihoming and failover in the simulator: the `failover/` scenarios across seeds, the
//! issue's gap bounds computed from the topology, dormancy and its timeout, path preferences,
//! and determinism of the reports.

mod common;

use common::scenario;
use reports::PathEventKind;

use std::path::Path;

use testbed::scenario::{InterfacePreference, TimedFault};
use testbed::Scenario;

/// Round-trip times of the two paths of the failover topology, from its spec: client access
/// link + gateway to the core + the server's access link, both ways.
fn rtts(s: &Scenario) -> (f64, f64) {
    let server = s
        .world
        .hosts
        .iter()
        .find(|h| h.name == "server")
        .expect("server");
    let client = s
        .world
        .hosts
        .iter()
        .find(|h| h.name == "client")
        .expect("client");
    let rtt = |iface: &str| {
        let i = client
            .interfaces
            .iter()
            .find(|i| i.name == iface)
            .expect("interface");
        let gw = s
            .world
            .gateways
            .iter()
            .find(|g| g.name == i.gateway)
            .expect("gateway");
        2.0 * (i.link.latency_ms + gw.latency_ms + server.link.latency_ms) as f64
    };
    (rtt("wifi"), rtt("cell"))
}

/// Runs `name` with seeds 1..=4; every reliable message arrives exactly once, the server sees
/// one carrier, every expectation of the scenario holds. Returns the reports.
/// Seeds 1 to 4, each passing, lossless, with one server carrier.
fn run_all(name: &str) -> Vec<reports::Report> {
    let runs = common::lossless_runs(name);
    for r in &runs {
        assert_eq!(r.metrics.carriers_accepted, 1, "{name} seed {}", r.seed);
    }
    runs
}

fn reasons(report: &reports::Report) -> Vec<(PathEventKind, Option<String>, Option<String>)> {
    report
        .path_events
        .iter()
        .filter(|e| matches!(e.event, PathEventKind::Handover | PathEventKind::Dormant))
        .map(|e| (e.event, e.interface.clone(), e.reason.clone()))
        .collect()
}

#[test]
fn interface_down_quic_migrates_within_one_rtt_of_the_new_path() {
    let s = scenario("failover/quic-wifi-down-unordered");
    let (_, cell) = rtts(&s);
    for r in run_all("failover/quic-wifi-down-unordered") {
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        assert!(gap <= cell + 5.0, "seed {}: gap {gap} > {cell} + 5", r.seed);
        assert_eq!(
            reasons(&r),
            [(
                PathEventKind::Handover,
                Some("cell".into()),
                Some("interface-down".into())
            )]
        );
        // The handover is immediate: the interface event reaches the carrier at once.
        let at = r
            .path_events
            .iter()
            .find(|e| e.event == PathEventKind::Handover);
        assert_eq!(at.map(|e| e.at_ms), Some(2000.0));
    }
    // Ordered delivery additionally waits for what was lost on wifi to be sent again.
    for r in run_all("failover/quic-wifi-down") {
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        assert!(
            gap <= 2.0 * cell + 5.0,
            "seed {}: ordered gap {gap}",
            r.seed
        );
    }
}

#[test]
fn silent_black_hole_is_detected_within_the_rtt_bound() {
    let s = scenario("failover/quic-wifi-blackhole-unordered");
    let (wifi, cell) = rtts(&s);
    for r in run_all("failover/quic-wifi-blackhole-unordered") {
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        assert!(
            gap <= 4.0 * wifi + cell,
            "seed {}: gap {gap} > 4 x {wifi} + {cell}",
            r.seed
        );
        assert_eq!(
            reasons(&r),
            [(
                PathEventKind::Handover,
                Some("cell".into()),
                Some("silent".into())
            )]
        );
    }
    run_all("failover/quic-wifi-blackhole");
    // TLS/TCP: the same detection, then a new connection and a resumed TLS handshake.
    for r in run_all("failover/tls-tcp-wifi-blackhole") {
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        // A new connection costs 3.6 RTT of cell (smoltcp's 2-segment initial window).
        assert!(
            gap <= 9.0 * wifi + 3.6 * cell + 5.0,
            "seed {}: {gap}",
            r.seed
        );
    }
}

#[test]
fn tls_tcp_continues_the_carrier_on_the_new_path() {
    let s = scenario("failover/tls-tcp-wifi-down");
    let (_, cell) = rtts(&s);
    for r in run_all("failover/tls-tcp-wifi-down") {
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        // The interface event (210 ms), then TCP connect + resumed TLS handshake + half a
        // round trip for what is sent again + one more because TCP starts from 2 segments.
        assert!(gap <= 210.0 + 3.6 * cell + 5.0, "seed {}: {gap}", r.seed);
        assert!(gap >= 210.0 + 2.5 * cell, "seed {}: {gap}", r.seed);
        // The listener's application saw the same carrier continue from a new address.
        assert!(
            r.path_events
                .iter()
                .any(|e| e.event == PathEventKind::ServerPathChange),
            "{:?}",
            r.path_events
        );
    }
}

#[test]
fn flapping_wifi_is_left_once_and_returned_to_once_it_is_stable() {
    for name in ["failover/quic-wifi-flap", "failover/tls-tcp-wifi-flap"] {
        for r in run_all(name) {
            let moves = reasons(&r);
            assert_eq!(moves.len(), 2, "{name}: {moves:?}");
            assert_eq!(moves[0].1.as_deref(), Some("cell"));
            assert_eq!(moves[1].1.as_deref(), Some("wifi"));
            assert_eq!(moves[1].2.as_deref(), Some("preferred"));
            // Wifi is up for good from 5.5 s; the carrier returns 2 s later, not before.
            let back = r
                .path_events
                .iter()
                .filter(|e| e.event == PathEventKind::Handover)
                .nth(1)
                .map(|e| e.at_ms)
                .expect("a return");
            assert!((7500.0..7700.0).contains(&back), "{name}: back at {back}");
        }
    }
}

#[test]
fn a_lossy_wifi_is_left_for_cell() {
    // No oracle: QUIC's own loss statistics (or, in some seeds first, silence) move it
    // within a second of the loss starting at 2 s.
    for r in run_all("failover/quic-wifi-degrades") {
        assert!(r.oracles.is_empty(), "an honest run: {:?}", r.oracles);
        let moves = reasons(&r);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert!(
            matches!(moves[0].2.as_deref(), Some("degraded" | "silent")),
            "{moves:?}"
        );
        let at = r
            .path_events
            .iter()
            .find(|e| e.event == PathEventKind::Handover);
        let at = at.map_or(0.0, |e| e.at_ms);
        assert!(
            (2050.0..3000.0).contains(&at),
            "seed {}: moved at {at}",
            r.seed
        );
    }
    // TLS/TCP measures nothing in this simulator (its TCP is lossless): only the oracle,
    // named in the report, moves it, at once.
    // TLS/TCP, no oracle either: TCP hides the loss, but its repairs leave the carrier's
    // acknowledgements silent, and the silence moves it (345-400 ms after the loss starts).
    for r in run_all("failover/tls-tcp-wifi-degrades") {
        assert!(r.oracles.is_empty(), "{:?}", r.oracles);
        assert_eq!(
            reasons(&r),
            [(
                PathEventKind::Handover,
                Some("cell".into()),
                Some("silent".into())
            )]
        );
        let at = r
            .path_events
            .iter()
            .find(|e| e.event == PathEventKind::Handover)
            .map_or(0.0, |e| e.at_ms);
        assert!(
            (2300.0..2500.0).contains(&at),
            "seed {}: moved at {at}",
            r.seed
        );
    }
    // The same oracle on QUIC: it leaves as soon as the loss is reported.
    let mut s = scenario("failover/quic-wifi-degrades");
    s.workload.link_quality = true;
    for seed in 1..=4 {
        let r = testbed::run(&s, seed).report;
        assert!(r.passed, "{:?} {:?}", r.error, r.expectations);
        assert_eq!(r.oracles, ["link-quality"]);
        let moves = reasons(&r);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].2.as_deref(), Some("degraded"), "{moves:?}");
        let at = r
            .path_events
            .iter()
            .find(|e| e.event == PathEventKind::Handover);
        let at = at.map_or(0.0, |e| e.at_ms);
        assert!((2000.0..2050.0).contains(&at), "seed {seed}: moved at {at}");
    }
}

#[test]
fn both_paths_down_the_carrier_is_dormant_then_active_on_cell() {
    for name in ["failover/quic-both-down", "failover/tls-tcp-both-down"] {
        let s = scenario(name);
        let (_, cell) = rtts(&s);
        for r in run_all(name) {
            let moves = reasons(&r);
            assert_eq!(moves.len(), 2, "{name}: {moves:?}");
            assert_eq!(moves[0].0, PathEventKind::Dormant);
            assert_eq!(moves[1].2.as_deref(), Some("recovered"));
            // Cell returns at 12 s, noticed within 220 ms: everything sent meanwhile arrives
            // within a few RTTs (TLS/TCP: a new connection, 3.6 RTT).
            let gap = r.metrics.failover_gap_ms.expect("gap");
            assert!(gap <= 10_220.0 + 3.6 * cell + 5.0, "{name}: {gap}");
            // The server's carrier went dormant too, and came back.
            let server: Vec<PathEventKind> = r
                .path_events
                .iter()
                .map(|e| e.event)
                .filter(|e| {
                    matches!(
                        e,
                        PathEventKind::ServerDormant | PathEventKind::ServerPathChange
                    )
                })
                .collect();
            assert_eq!(
                server,
                [
                    PathEventKind::ServerDormant,
                    PathEventKind::ServerPathChange
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn a_nat_reboot_costs_quic_nothing_and_tls_a_reconnection() {
    for r in run_all("failover/quic-nat-rebind") {
        assert!(reasons(&r).is_empty());
        assert!(r.metrics.failover_gap_ms.expect("gap") <= 20.0);
    }
    // The reboot loses the TCP connection's NAT state: the server resets the first segment
    // that arrives from the new mapping (1 RTT after a send interval), and the carrier
    // continues on a new connection over wifi (2.5 RTT).
    let s = scenario("failover/tls-tcp-nat-rebind");
    let (wifi, _) = rtts(&s);
    for r in run_all("failover/tls-tcp-nat-rebind") {
        assert_eq!(
            reasons(&r),
            [(
                PathEventKind::Handover,
                Some("wifi".into()),
                Some("broken".into())
            )]
        );
        let gap = r.metrics.failover_gap_ms.expect("gap");
        assert!((2.5 * wifi..=6.0 * wifi).contains(&gap), "{gap} ms");
        assert_eq!(r.metrics.carriers_accepted, 1);
    }
}

#[test]
fn a_dormant_carrier_that_never_returns_ends_with_a_clear_error() {
    for protocol in ["quic", "tls-tcp"] {
        let mut s = scenario(&format!("failover/{protocol}-both-down"));
        // Cell never comes back; both ends give up after 3 s.
        s.faults
            .retain(|f| !matches!(f.fault, sim::Fault::LinkUp { .. }));
        s.workload.dormant_timeout_s = Some(3);
        let r = testbed::run(&s, 1).report;
        let error = r.error.clone().unwrap_or_default();
        assert!(
            error.contains("dormant timeout") && error.contains("3000 ms"),
            "{protocol}: {error}"
        );
        // The server's carrier went dormant and ended the same way.
        let ended = r
            .path_events
            .iter()
            .find(|e| e.event == PathEventKind::ServerEnded);
        let why = ended.and_then(|e| e.reason.clone()).unwrap_or_default();
        assert!(
            why.contains("dormant timeout"),
            "{protocol}: {:?}",
            r.path_events
        );
        // What could not be delivered failed; nothing is reported lost or duplicated.
        let m = &r.metrics;
        assert_eq!(m.messages_lost + m.messages_duplicated, 0, "{protocol}");
        assert!(m.messages_failed > 0, "{protocol}");
    }
}

#[test]
fn a_prohibited_interface_is_never_used() {
    let mut s = scenario("failover/quic-wifi-down");
    s.workload
        .interfaces
        .insert("cell".into(), InterfacePreference::Prohibit);
    // Wifi comes back after 2 s: the carrier waits for it (dormant) instead of using cell.
    s.expect.retain(|e| e.metric != "failover_gap_ms");
    s.faults.push(TimedFault {
        at_ms: 4000,
        fault: sim::Fault::LinkUp {
            host: "client".into(),
            interface: Some("wifi".into()),
        },
    });
    let r = testbed::run(&s, 1).report;
    assert!(r.passed, "{:?} {:?}", r.error, r.expectations);
    assert_eq!(
        reasons(&r),
        [
            (PathEventKind::Dormant, None, None),
            (
                PathEventKind::Handover,
                Some("wifi".into()),
                Some("recovered".into())
            )
        ]
    );
    let cell = r.links.get("client/cell").expect("cell counters");
    assert_eq!(cell["up"]["offered"], 0, "nothing was sent over cell");
}

#[test]
fn preferences_choose_the_first_interface() {
    // Preferring cell puts the carrier on cell from the start; wifi failing then changes
    // nothing.
    let mut s = scenario("failover/quic-wifi-down");
    s.workload
        .interfaces
        .insert("cell".into(), InterfacePreference::Prefer);
    s.workload
        .interfaces
        .insert("wifi".into(), InterfacePreference::Avoid);
    s.expect
        .retain(|e| e.metric != "handovers" && e.metric != "failover_gap_ms");
    let r = testbed::run(&s, 1).report;
    assert!(r.passed, "{:?} {:?}", r.error, r.expectations);
    let start = r.path_events.first().and_then(|e| e.interface.clone());
    assert_eq!(start.as_deref(), Some("cell"));
    assert!(reasons(&r).is_empty(), "{:?}", reasons(&r));
}

#[test]
fn failover_reports_are_deterministic() {
    for name in ["failover/quic-wifi-blackhole", "failover/tls-tcp-both-down"] {
        let s = scenario(name);
        let a = testbed::run(&s, 7).report.to_json().expect("json");
        let b = testbed::run(&s, 7).report.to_json().expect("json");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn scenario_files_name_interfaces_clearly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/failover/quic-wifi-down.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let parse = |text: &str| Scenario::parse("failover/x", &path, text).map(|_| ());
    assert!(parse(&text).is_ok());
    // An interface the host does not have: the error lists those it has.
    let bad = text.replace("interface = \"wifi\"", "interface = \"wlan0\"");
    let e = parse(&bad).expect_err("unknown interface").to_string();
    assert!(
        e.contains("no interface `wlan0` (interfaces: wifi, cell)"),
        "{e}"
    );
    assert!(e.contains(":"), "file and line: {e}");
    // A multi-homed host's link fault must name its interface.
    let bad = text.replace("interface = \"wifi\"\n", "");
    let e = parse(&bad).expect_err("no interface").to_string();
    assert!(e.contains("several interfaces"), "{e}");
    // A flap needs its period and count.
    let bad = text.replace("action = \"link-down\"", "action = \"flap\"");
    let e = parse(&bad).expect_err("flap").to_string();
    assert!(e.contains("period_ms"), "{e}");
    // Interfaces through an undefined gateway.
    let bad = text.replace("gateway = \"cell-gw\"", "gateway = \"lte-gw\"");
    let e = parse(&bad).expect_err("gateway").to_string();
    assert!(e.contains("`lte-gw`, which is not defined"), "{e}");
}

#[test]
fn a_latency_change_on_one_interface_shows_in_message_latency() {
    let mut s = scenario("failover/quic-wifi-down");
    // No outage: wifi's access link goes from 5 ms to 105 ms one way at 1 s.
    s.faults = vec![TimedFault {
        at_ms: 1000,
        fault: sim::Fault::SetLink {
            host: "client".into(),
            interface: Some("wifi".into()),
            loss: None,
            bandwidth_kbps: None,
            queue_bytes: None,
            latency_ms: Some(105),
        },
    }];
    s.expect
        .retain(|e| e.metric != "handovers" && e.metric != "failover_gap_ms");
    let r = testbed::run(&s, 1).report;
    assert!(r.passed, "{:?} {:?}", r.error, r.expectations);
    let latency = |from: f64, to: f64| {
        let l: Vec<f64> = r
            .messages
            .iter()
            .filter(|m| m.sent_ms >= from && m.sent_ms < to)
            .filter_map(|m| Some(m.delivered_ms.first()? - m.sent_ms))
            .collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    // One way: 5 + 5 + 10 = 20 ms before, 120 ms after.
    assert!((latency(200.0, 900.0) - 20.0).abs() < 2.0);
    assert!((latency(2000.0, 4000.0) - 120.0).abs() < 2.0);
}
