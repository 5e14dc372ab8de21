//! The shipped scenarios in the simulator: outcomes, exact timings, determinism.

mod common;

use common::{scenario, TempDir};

use std::path::Path;

use reports::PathEventKind;
use testbed::{suite, Scenario};

fn assert_ttfm(name: &str, want_ms: f64) {
    let s = scenario(name);
    for seed in 1..=4 {
        let report = testbed::run(&s, seed).report;
        assert!(
            report.passed,
            "{name} seed {seed} failed: {:?} {:?}",
            report.error, report.expectations
        );
        let m = &report.metrics;
        assert_eq!(
            (m.messages_sent, m.messages_delivered),
            (100, 100),
            "{name} seed {seed}"
        );
        assert_eq!(
            m.messages_lost + m.messages_duplicated + m.messages_corrupted,
            0
        );
        let ttfm = m.ttfm_ms.expect("a first message arrived");
        assert!(
            (ttfm - want_ms).abs() <= 2.0,
            "{name} seed {seed}: TTFM {ttfm} ms, want {want_ms} ± 2 ms"
        );
    }
}

#[test]
fn fresh_quic_ttfm_is_one_and_a_half_rtt() {
    // 20 ms one-way: RTT 40 ms, fresh QUIC delivers the first message after 1.5 RTT.
    assert_ttfm("echo/quic", 60.0);
}

#[test]
fn fresh_tls_tcp_ttfm_is_two_and_a_half_rtt() {
    // TCP handshake (1 RTT) + TLS 1.3 (1 RTT) + the message's one-way trip.
    assert_ttfm("echo/tls-tcp", 100.0);
}

#[test]
fn echo_through_a_nat_gateway_costs_no_extra_time() {
    assert_ttfm("echo/quic-nat", 60.0);
    assert_ttfm("echo/tls-tcp-nat", 100.0);
}

#[test]
fn lossy_link_loses_datagrams_but_no_message() {
    let s = scenario("echo/quic-lossy");
    for seed in 1..=4 {
        let report = testbed::run(&s, seed).report;
        assert!(
            report.passed,
            "seed {seed}: {:?} {:?}",
            report.error, report.expectations
        );
        let losses: u64 = report
            .links
            .values()
            .map(|l| {
                l["up"]["losses"].as_u64().unwrap_or(0) + l["down"]["losses"].as_u64().unwrap_or(0)
            })
            .sum();
        assert!(
            losses > 0,
            "seed {seed}: a 2 % lossy link dropped no datagram"
        );
        assert_eq!(report.metrics.messages_lost, 0);
    }
}

#[test]
fn same_seed_gives_byte_identical_reports() {
    for name in ["echo/quic-lossy", "echo/tls-tcp-nat", "echo/quic-nat"] {
        let s = scenario(name);
        let a = testbed::run(&s, 7).report.to_json().expect("json");
        let b = testbed::run(&s, 7).report.to_json().expect("json");
        assert!(a == b, "{name}: two runs with seed 7 differ");
    }
}

#[test]
fn different_seed_on_a_lossy_link_gives_a_different_trace() {
    let s = scenario("echo/quic-lossy");
    let a = testbed::run(&s, 1).report;
    let b = testbed::run(&s, 2).report;
    assert_ne!(
        a.messages, b.messages,
        "message trace should depend on the seed"
    );
    assert_ne!(a.links, b.links, "loss pattern should depend on the seed");
}

#[test]
fn report_has_the_stable_top_level_keys() {
    let report = testbed::run(&scenario("echo/quic"), 1).report;
    let json: serde_json::Value =
        serde_json::from_str(&report.to_json().expect("json")).expect("parse");
    for key in [
        "schema_version",
        "scenario",
        "seed",
        "passed",
        "expectations",
        "metrics",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    for key in [
        "ttfm_ms",
        "messages_sent",
        "messages_delivered",
        "messages_lost",
        "messages_duplicated",
    ] {
        assert!(json["metrics"].get(key).is_some(), "missing metric {key}");
    }
    let e = &json["expectations"][0];
    assert!(e["name"].is_string() && e["passed"].is_boolean() && e["measured"].is_number());
    assert_eq!(json["scenario"], "echo/quic");
}

#[test]
fn a_failed_expectation_fails_the_run() {
    let mut s = scenario("echo/quic");
    s.expect.push(testbed::scenario::Expect {
        metric: "ttfm_ms".into(),
        min: None,
        max: Some(10.0),
    });
    let report = testbed::run(&s, 1).report;
    assert!(!report.passed);
    let failed: Vec<_> = report.expectations.iter().filter(|e| !e.passed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "ttfm_ms <= 10");
    assert_eq!(failed[0].measured, Some(60.0));
}

#[test]
fn link_down_fault_stalls_and_link_up_recovers() {
    // The client's link dies at 100 ms for 2 s: QUIC retransmits after it returns and every
    // message still arrives, later than without the fault.
    let mut s = scenario("echo/quic");
    s.workload.interval_ms = 10;
    s.faults = vec![
        testbed::scenario::TimedFault {
            at_ms: 100,
            fault: sim::Fault::LinkDown {
                host: "client".into(),
                interface: None,
            },
        },
        testbed::scenario::TimedFault {
            at_ms: 2100,
            fault: sim::Fault::LinkUp {
                host: "client".into(),
                interface: None,
            },
        },
    ];
    let report = testbed::run(&s, 1).report;
    assert!(
        report.passed,
        "{:?} {:?}",
        report.error, report.expectations
    );
    assert_eq!(report.faults.len(), 2);
    let stalled = report
        .messages
        .iter()
        .filter(|m| m.sent_ms >= 100.0 && m.sent_ms < 2100.0)
        .all(|m| m.delivered_ms[0] >= 2100.0);
    assert!(
        stalled,
        "messages sent while the link was down arrived before it came back"
    );
    assert!(report.metrics.sim_duration_ms > 2100.0);
}

#[test]
fn tcp_pays_for_the_link_rate_like_quic() {
    // At 1 Mbit/s on the client's link each direction's bytes must take their serialisation
    // time: TLS/TCP may not bypass the bandwidth model.
    for name in ["echo/tls-tcp", "echo/quic"] {
        let mut s = scenario(name);
        s.world.hosts[0].link.bandwidth_kbps = Some(1000);
        s.world.hosts[0].link.queue_bytes = 64 * 1024;
        // Serialising the handshake at 1 Mbit/s adds to TTFM; the other expectations stand.
        s.expect.retain(|e| e.metric != "ttfm_ms");
        let report = testbed::run(&s, 1).report;
        assert!(
            report.passed,
            "{name}: {:?} {:?}",
            report.error, report.expectations
        );
        let per_direction_bytes = report.metrics.bytes_sent as f64 / 2.0;
        let floor_ms = per_direction_bytes * 8.0 / 1000.0;
        assert!(
            report.metrics.sim_duration_ms >= floor_ms,
            "{name}: {} bytes each way took {} ms, less than the {floor_ms} ms a 1 Mbit/s link needs",
            per_direction_bytes,
            report.metrics.sim_duration_ms
        );
        assert_eq!(report.metrics.messages_lost, 0);
    }
}

fn api_runs(name: &str) -> Vec<reports::Report> {
    common::passing_runs(name, 1..=3)
}

#[test]
fn api_niceness_lets_urgent_messages_overtake_a_backlog() {
    for name in ["api/niceness-quic", "api/niceness-tls-tcp"] {
        for r in api_runs(name) {
            let by = &r.metrics.median_latency_by_niceness_ms;
            let (urgent, bulk) = (by[&0], by[&8]);
            // 300 KiB need 9.6 s at 256 kbit/s; the 75 urgent ones alone 2.4 s.
            assert!(
                urgent * 3.0 < bulk,
                "{name} seed {}: niceness 0 median {urgent} ms vs niceness 8 {bulk} ms",
                r.seed
            );
            assert!(urgent < 2000.0, "{name}: {urgent}");
            assert_eq!(r.metrics.messages_delivered, 300);
        }
    }
}

/// Found by a 200-seed sweep of `api/lifetime-quic`: when the client closed while its
/// congestion window was full of packets the uplink queue had dropped, quinn-proto 0.11.19
/// never sent the CONNECTION_CLOSE (a closing connection processes no ACK and runs no loss
/// timer, so the window never opened); the server's next keepalive drew a stateless reset and
/// its carrier ended "reset by peer". Fixed in the vendored quinn-proto (vendor/README.md).
#[test]
fn a_quic_close_on_a_full_congestion_window_reaches_the_peer() {
    let s = scenario("api/lifetime-quic");
    for seed in [13, 27, 56] {
        let report = testbed::run(&s, seed).report;
        assert_eq!(report.error, None, "seed {seed}");
        assert!(
            report
                .path_events
                .iter()
                .all(|e| !format!("{e:?}").contains("reset")),
            "seed {seed}: {:?}",
            report.path_events
        );
    }
}

/// Found by a 200-seed run: with a quarter of margin on the forward-delay estimate these
/// seeds delivered one message 1-26 ms after its deadline (handed over while a full uplink
/// queue held ~40 ms more than the estimate). The margin is now a half. (The floor of
/// deliveries is the scenario's: 72 since streams of one priority leave in write order,
/// with more of them acknowledged in time; see the scenario file.)
#[test]
fn quic_lifetimes_hold_on_the_seeds_that_broke_them() {
    let s = scenario("api/lifetime-quic");
    for seed in [25, 26, 72, 107, 122, 157, 170, 179] {
        let m = testbed::run(&s, seed).report.metrics;
        assert_eq!(m.delivered_after_deadline, 0, "seed {seed}");
        assert!(m.messages_delivered >= 72, "seed {seed}: {m:?}");
    }
}

/// `compare/quic-rtt100-loss5` seed 7: the link lost the client's only CONNECTION_CLOSE,
/// the server stayed idle through the client's closing period, and its next keepalive drew
/// a stateless reset: its carrier ended "reset by peer". With the goodbye (docs/WIRE.md,
/// "Closing") the server knows the client left, and the carrier ends closed.
#[test]
fn a_lost_quic_close_after_a_goodbye_ends_the_peer_cleanly() {
    let s = testbed::compare::scenario("quic", 100, 5.0).expect("scenario");
    let report = testbed::run(&s, 7).report;
    assert!(
        report.passed,
        "{:?} {:?}",
        report.error, report.expectations
    );
    assert_eq!(report.error, None);
}

#[test]
fn api_lifetimes_expire_what_cannot_arrive_in_time_and_nothing_arrives_late() {
    for name in ["api/lifetime-quic", "api/lifetime-tls-tcp"] {
        for r in api_runs(name) {
            let m = &r.metrics;
            if name.ends_with("quic") {
                // A stream reset at the deadline: nothing completes late.
                assert_eq!(m.delivered_after_deadline, 0, "{name} seed {}", r.seed);
            } else {
                // TCP cannot recall bytes it took: what it retransmits after a queue drop
                // may arrive late, by at most a few retransmission timeouts.
                assert!(m.delivered_after_deadline <= 15, "{name}: {m:?}");
                let late = r
                    .messages
                    .iter()
                    .filter_map(|msg| Some(msg.delivered_ms.first()? - msg.deadline_ms?))
                    .fold(0.0f64, f64::max);
                assert!(late <= 500.0, "{name} seed {}: {late} ms late", r.seed);
            }
            // 3 s at 256 kbit/s carry at most ~93 of the 300 messages (minus the handshake).
            assert!(
                m.messages_expired >= 200,
                "{name}: {} expired",
                m.messages_expired
            );
            // The sender gives a message up once less than 1.5x its forward-delay estimate
            // is left (~0.8 s with the queue full): 75-80 arrive over 200 seeds (QUIC:
            // 72-80, its streams leaving in write order).
            let least = if name.ends_with("quic") { 72 } else { 75 };
            assert!(
                (least..=95).contains(&m.messages_delivered),
                "{name}: {} delivered",
                m.messages_delivered
            );
            // Every message has exactly one terminal outcome.
            for msg in &r.messages {
                let outcome = msg.outcome.as_deref();
                assert!(
                    matches!(outcome, Some("acked" | "expired")),
                    "{name}: message {} ended {outcome:?}",
                    msg.id
                );
                if outcome == Some("acked") {
                    assert_eq!(msg.delivered_ms.len(), 1, "{name}: acked but not delivered");
                }
            }
        }
    }
}

#[test]
fn api_antecedents_hold_across_quic_streams_and_unreliable_messages_stay_lost() {
    for r in api_runs("api/antecedents-quic") {
        assert_eq!(r.metrics.antecedent_violations, 0);
        assert_eq!(r.metrics.messages_delivered, 80);
        assert!(r.messages.iter().any(|m| !m.antecedents.is_empty()));
    }
    for r in api_runs("api/unreliable-quic") {
        let m = &r.metrics;
        assert!(m.unreliable_lost >= 1 && m.unreliable_lost < 30, "{m:?}");
        assert_eq!(m.messages_duplicated, 0, "a datagram was retransmitted");
        assert_eq!(m.messages_delivered + m.unreliable_lost, 200);
        // Never retransmitted: every delivered datagram took exactly the one-way delay.
        assert_eq!(m.median_latency_ms, Some(20.0));
        // A graceful close lets the last datagram leave instead of discarding it.
        let last = r.messages.iter().max_by_key(|m| m.id).expect("messages");
        assert_eq!(last.delivered_ms.len(), 1, "seed {}: last datagram", r.seed);
    }
}

#[test]
fn api_runs_are_deterministic() {
    // Lifetimes, niceness and antecedents add timers and queues to the stack: the same
    // seed must still give the same bytes.
    for name in [
        "api/lifetime-quic",
        "api/lifetime-tls-tcp",
        "api/antecedents-quic",
    ] {
        let s = scenario(name);
        let a = testbed::run(&s, 5).report.to_json().expect("json");
        let b = testbed::run(&s, 5).report.to_json().expect("json");
        assert_eq!(a, b, "{name}: same seed, different report");
    }
}

fn blocking(name: &str) -> Vec<reports::Report> {
    common::passing_runs(name, 1..=4)
}

fn attempts(r: &reports::Report) -> Vec<(String, f64, String)> {
    r.establishment
        .as_ref()
        .expect("an establishment report")
        .attempts
        .iter()
        .map(|a| (a.protocol.clone(), a.started_ms, a.outcome.clone()))
        .collect()
}

#[test]
fn blocked_or_black_holed_quic_falls_back_to_tls_after_one_attempt_delay() {
    for name in ["blocking/udp-blocked", "blocking/quic-blackholed"] {
        for r in blocking(name) {
            // TLS/TCP starts at 250 ms and needs 2.5 RTT (100 ms) to the first message.
            let ttfm = r.metrics.ttfm_ms.expect("a message arrived");
            assert!(
                (ttfm - 350.0).abs() <= 2.0,
                "{name} seed {}: TTFM {ttfm}",
                r.seed
            );
            assert_eq!(r.protocol, "tls-tcp");
            assert_eq!(
                attempts(&r),
                [
                    ("quic".to_string(), 0.0, "cancelled".to_string()),
                    ("tls-tcp".to_string(), 250.0, "won".to_string())
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn black_holed_tcp_costs_quic_nothing() {
    for r in blocking("blocking/tcp-blackholed") {
        let ttfm = r.metrics.ttfm_ms.expect("a message arrived");
        assert!((ttfm - 60.0).abs() <= 2.0, "TTFM {ttfm}");
        assert_eq!(r.protocol, "quic");
        // QUIC was ready at 40 ms, before TLS/TCP's turn at 250 ms.
        assert_eq!(attempts(&r), [("quic".to_string(), 0.0, "won".to_string())]);
    }
}

#[test]
fn when_nothing_works_one_error_names_every_attempt_within_the_timeout() {
    for (name, tls_reason) in [
        (
            "blocking/all-blocked",
            "no answer within the 2000 ms connect timeout",
        ),
        ("blocking/tcp-reset", "refused"),
    ] {
        for r in blocking(name) {
            let est = r.establishment.as_ref().expect("establishment");
            let error = est.error.as_deref().expect("an error");
            assert!(
                error.contains("quic to ") && error.contains("tls-tcp to "),
                "{error}"
            );
            assert_eq!(
                est.duration_ms, 2000.0,
                "{name}: bounded by the connect timeout"
            );
            assert_eq!(r.metrics.established, 0);
            let tls = &est.attempts[1];
            assert_eq!((tls.protocol.as_str(), tls.started_ms), ("tls-tcp", 250.0));
            let reason = tls.reason.as_deref().unwrap_or_default();
            assert!(reason.contains(tls_reason), "{name}: {reason}");
            assert!(r.error.is_none(), "an expected failure is not a run error");
        }
    }
}

#[test]
fn the_attempt_delay_is_configurable_but_never_below_10_ms() {
    let dir = TempDir::new("delay");
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/blocking/udp-blocked.toml"),
    )
    .expect("scenario");
    for (delay, want_start) in [(100, 100.0), (10, 10.0), (1, f64::NAN)] {
        let path = dir.join(format!("delay-{delay}.toml"));
        let text = base
            .replace(
                "messages = 5",
                &format!("messages = 5\nattempt_delay_ms = {delay}"),
            )
            .replace("max = 352", "max = 10000");
        std::fs::write(&path, &text).expect("write");
        let loaded = suite::load_one(&dir, path.to_str().expect("utf8"));
        if want_start.is_nan() {
            // Below RFC 8305's 10 ms the scenario is an error at the key (the stack would
            // clamp it to 10 ms; a scenario says what it means).
            let e = loaded.expect_err("below 10 ms").to_string();
            let line = text
                .lines()
                .position(|l| l.starts_with("attempt_delay_ms"))
                .expect("key")
                + 1;
            assert!(e.contains(&format!(":{line}:1: ")), "{e}");
            assert!(e.contains("at least 10 ms"), "{e}");
            continue;
        }
        let s = loaded.expect("load");
        let r = testbed::run(&s, 1).report;
        assert!(r.passed, "{:?}", r.error);
        let tls = &attempts(&r)[1];
        assert_eq!(tls.1, want_start, "attempt delay {delay} ms");
        let ttfm = r.metrics.ttfm_ms.expect("ttfm");
        assert!((ttfm - (want_start + 100.0)).abs() <= 2.0, "TTFM {ttfm}");
    }
}

/// Runs a shipped scenario with `association = true` turned off.
fn without_association(name: &str, seed: u64) -> reports::Report {
    // Tests run at once: one directory per scenario and seed.
    let dir = TempDir::new(&format!("noassoc-{}-{seed}", name.replace('/', "-")));
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml")),
    )
    .expect("scenario")
    .replace("association = true", "association = false");
    let path = dir.join(format!("{}.toml", name.replace('/', "-")));
    std::fs::write(&path, text).expect("write");
    let s = suite::load_one(&dir, path.to_str().expect("utf8")).expect("load");
    testbed::run(&s, seed).report
}

#[test]
fn an_association_remembers_the_race_winner_for_the_next_carrier() {
    for r in blocking("blocking/udp-blocked-second-carrier") {
        assert_eq!(
            r.metrics.ttfm_ms,
            Some(350.0),
            "the first carrier pays the delay"
        );
        let last = r.metrics.ttfm_last_ms.expect("second carrier");
        assert!((last - 100.0).abs() <= 2.0, "second carrier TTFM {last}");
        // It raced TLS/TCP first: one attempt, won at once.
        assert_eq!(
            attempts(&r),
            [("tls-tcp".to_string(), 0.0, "won".to_string())]
        );
    }
    // Without the association the second carrier pays the delay again.
    let r = without_association("blocking/udp-blocked-second-carrier", 1);
    let last = r.metrics.ttfm_last_ms.expect("second carrier");
    assert!((last - 350.0).abs() <= 2.0, "second carrier TTFM {last}");
}

#[test]
fn a_second_tls_tcp_carrier_resumes_its_session() {
    for r in blocking("resumption/tls-tcp-second-carrier") {
        // rustls' handshake kind, not timing: the second handshake was a resumption.
        assert_eq!(r.metrics.resumed, Some(1), "seed {}", r.seed);
        assert_eq!(r.metrics.ttfm_last_ms, Some(100.0));
    }
    let r = without_association("resumption/tls-tcp-second-carrier", 1);
    assert_eq!(r.metrics.resumed, Some(0), "no association, no tickets");
}

/// The client messages of the second carrier of a 5-message echo (ids above 5) after its
/// first arrive `min_ms` or more after it was initiated (its first message's send).
fn assert_later_messages_not_before(r: &reports::Report, min_ms: f64) {
    let second: Vec<_> = r
        .messages
        .iter()
        .filter(|m| m.direction == reports::Direction::ClientToServer && m.id > 5)
        .collect();
    let start = second.iter().map(|m| m.sent_ms).fold(f64::MAX, f64::min);
    for m in second {
        let at = m.delivered_ms[0];
        assert!(
            at - start >= min_ms,
            "message {} arrived {} ms after initiate",
            m.id,
            at - start
        );
    }
}

#[test]
fn quic_0rtt_carries_only_idempotent_messages_at_the_physical_limit() {
    for r in blocking("resumption/quic-0rtt-idempotent") {
        let last = r.metrics.ttfm_last_ms.expect("second carrier");
        assert!(
            (last - 20.0).abs() <= 2.0,
            "0-RTT TTFM {last} ms, want 20 (0.5 RTT)"
        );
        assert_eq!(
            r.metrics.resumed,
            Some(1),
            "the server accepted the resumption"
        );
        // The second carrier's other messages are not idempotent: none may ride in 0-RTT,
        // so none arrives before the handshake allows (initiation + 60 ms).
        assert_later_messages_not_before(&r, 58.0);
    }
    for r in blocking("resumption/quic-0rtt-not-idempotent") {
        let last = r.metrics.ttfm_last_ms.expect("second carrier");
        assert!(
            (last - 60.0).abs() <= 2.0,
            "a non-idempotent first message waits: {last} ms"
        );
    }
}

/// Runs of a scenario whose server restarts between two carriers: the second one's early
/// data (QUIC 0-RTT or TLS) is rejected, sent again after a full handshake, delivered once.
fn rejected_early_data_runs(name: &str) -> Vec<reports::Report> {
    let runs = blocking(name);
    for r in &runs {
        assert_eq!(
            r.metrics.resumed,
            Some(0),
            "the restarted server cannot resume"
        );
        assert_eq!(
            r.metrics.messages_delivered, 20,
            "every message of both carriers"
        );
        assert_eq!(
            r.metrics.messages_duplicated, 0,
            "the rejected message is re-sent once"
        );
        assert!(r.faults.iter().any(|f| f.contains("Bounce")));
    }
    runs
}

#[test]
fn an_invalid_ticket_after_a_server_restart_falls_back_to_a_full_handshake() {
    rejected_early_data_runs("resumption/quic-0rtt-after-bounce");
}

#[test]
fn tls_tcp_early_data_carries_only_idempotent_messages_at_1_5_rtt() {
    for r in blocking("resumption/tls-tcp-early-data") {
        // TCP's handshake (1 RTT), then the ClientHello with the message in early data,
        // read by the server's application on arrival: 1.5 RTT of 40 ms.
        let last = r.metrics.ttfm_last_ms.expect("second carrier");
        assert!((last - 60.0).abs() <= 2.0, "early-data TTFM {last} ms");
        assert_eq!(r.metrics.ttfm_last_limit_ms, Some(60.0));
        assert_eq!(r.metrics.resumed, Some(1), "seed {}", r.seed);
        // The second carrier's other messages are not idempotent: they wait for the
        // handshake and arrive with the client's Finished, 2.5 RTT after initiate at best.
        assert_later_messages_not_before(&r, 98.0);
    }
    // Without an association there is no ticket, and no early data: 2.5 RTT.
    let r = without_association("resumption/tls-tcp-early-data", 1);
    assert_eq!(r.metrics.resumed, Some(0));
    assert_eq!(r.metrics.ttfm_last_ms, Some(100.0));
    // A first message that is not idempotent waits for the handshake on a resumed session.
    for r in blocking("resumption/tls-tcp-second-carrier") {
        assert_eq!(r.metrics.ttfm_last_ms, Some(100.0), "seed {}", r.seed);
    }
}

#[test]
fn rejected_tls_early_data_is_sent_again_after_a_full_handshake() {
    for r in rejected_early_data_runs("resumption/tls-tcp-early-data-after-bounce") {
        assert_eq!(
            r.metrics.ttfm_last_ms,
            Some(100.0),
            "2.5 RTT, as a fresh carrier"
        );
    }
}

#[test]
fn a_known_rtt_shortens_the_fallback_penalty() {
    // The first carrier learns QUIC works (RTT 40 ms); then UDP is blocked. The second
    // carrier tries QUIC first and falls back to TLS/TCP after the attempt delay.
    for (name, delay) in [
        ("blocking/udp-blocked-later", 250.0),
        ("blocking/udp-blocked-later-adaptive", 80.0),
    ] {
        for r in blocking(name) {
            assert_eq!(r.metrics.ttfm_ms, Some(60.0), "{name}: QUIC at first");
            let last = r.metrics.ttfm_last_ms.expect("second carrier");
            // Penalty = the delay; then 2.5 RTT of TLS/TCP.
            assert!((last - (delay + 100.0)).abs() <= 2.0, "{name}: TTFM {last}");
            assert_eq!(
                attempts(&r),
                [
                    ("quic".to_string(), 0.0, "cancelled".to_string()),
                    ("tls-tcp".to_string(), delay, "won".to_string())
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn a_name_with_several_addresses_races_each_of_them() {
    for r in blocking("blocking/two-addresses") {
        let a = &r.establishment.as_ref().expect("race").attempts;
        let got: Vec<_> = a
            .iter()
            .map(|a| (a.protocol.as_str(), a.started_ms, a.outcome.as_str()))
            .collect();
        // QUIC on the dead address; TLS/TCP on it after 250 ms, whose SYNs go unanswered too
        // (a host that runs nothing has no TCP to reset them); QUIC on the second address
        // after another 250 ms; it wins 1 RTT later, its first echo 1.5 RTT after the start.
        assert_eq!(
            got,
            [
                ("quic", 0.0, "cancelled"),
                ("tls-tcp", 250.0, "cancelled"),
                ("quic", 500.0, "won")
            ]
        );
        assert_ne!(a[0].remote, a[2].remote, "two different addresses");
        assert_eq!(r.metrics.ttfm_ms, Some(560.0));
    }
}

/// Each attempt's (protocol, remote address, start, outcome).
fn attempts_to(r: &reports::Report) -> Vec<(String, String, f64, String)> {
    r.establishment
        .as_ref()
        .expect("an establishment report")
        .attempts
        .iter()
        .map(|a| {
            let ip = a.remote.rsplit_once(':').map_or("", |(ip, _)| ip);
            (
                a.protocol.clone(),
                ip.to_string(),
                a.started_ms,
                a.outcome.clone(),
            )
        })
        .collect()
}

fn resolution(r: &reports::Report) -> &reports::ResolutionRecord {
    r.establishment
        .as_ref()
        .and_then(|e| e.resolution.as_ref())
        .expect("a resolution record")
}

fn owned(v: &[(&str, &str, f64, &str)]) -> Vec<(String, String, f64, String)> {
    v.iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, d.to_string()))
        .collect()
}

#[test]
fn broken_ipv6_falls_back_to_ipv4_after_the_ipv6_candidates() {
    for r in blocking("blocking/ipv6-broken") {
        // AAAA and A came together at 10 ms: the race starts with both, IPv6 first.
        let res = resolution(&r);
        let got: Vec<_> = res
            .queries
            .iter()
            .map(|q| (q.query.as_str(), q.answered_ms, q.late))
            .collect();
        assert_eq!(got, [("AAAA", 10.0, false), ("A", 10.0, false)]);
        assert_eq!(res.race_started_ms, 10.0);
        // QUIC and TLS/TCP over IPv6 go unanswered (black hole, no ICMP); QUIC over IPv4
        // two attempt delays later wins 1 RTT after it starts.
        assert_eq!(
            attempts_to(&r),
            owned(&[
                ("quic", "[2001:db8::2]", 0.0, "cancelled"),
                ("tls-tcp", "[2001:db8::2]", 250.0, "cancelled"),
                ("quic", "192.168.0.2", 500.0, "won"),
            ])
        );
        // 10 ms DNS + 500 ms + 1.5 RTT (60 ms); the limit has no attempt delays.
        assert_eq!(r.metrics.ttfm_ms, Some(570.0), "seed {}", r.seed);
        assert_eq!(r.metrics.ttfm_limit_ms, Some(70.0));
        assert_eq!(r.metrics.messages_lost, 0);
    }
}

#[test]
fn hosts_ask_only_for_the_addresses_they_can_use() {
    // IPv4-only client: no AAAA query at all; the A answer starts the race.
    for r in blocking("blocking/ipv4-only") {
        let res = resolution(&r);
        assert_eq!(res.queries.len(), 1);
        assert_eq!(res.queries[0].query, "A");
        assert!(res.unanswered.is_empty());
        assert_eq!(
            attempts_to(&r),
            owned(&[("quic", "192.168.0.2", 0.0, "won")])
        );
        assert_eq!(r.metrics.ttfm_ms, Some(75.0), "15 ms DNS + 1.5 RTT");
        assert_eq!(r.metrics.ttfm_limit_ms, Some(75.0));
    }
    // IPv6-only client: AAAA only, QUIC over IPv6.
    for r in blocking("blocking/ipv6-only") {
        let res = resolution(&r);
        assert_eq!(res.queries.len(), 1);
        assert_eq!(res.queries[0].query, "AAAA");
        assert_eq!(
            attempts_to(&r),
            owned(&[("quic", "[2001:db8::2]", 0.0, "won")])
        );
        assert_eq!(r.metrics.ttfm_ms, Some(70.0), "10 ms DNS + 1.5 RTT");
    }
}

#[test]
fn a_slow_aaaa_answer_costs_the_resolution_delay_and_no_more() {
    for r in blocking("blocking/aaaa-slow") {
        let res = resolution(&r);
        // A at 10 ms, then the 50 ms resolution delay: the race starts at 60 ms over IPv4;
        // the race is won before the AAAA answer (200 ms) comes.
        assert_eq!(res.queries.len(), 1);
        assert_eq!(
            (res.queries[0].query.as_str(), res.queries[0].answered_ms),
            ("A", 10.0)
        );
        assert_eq!(res.race_started_ms, 60.0);
        assert_eq!(res.unanswered, ["AAAA"]);
        assert_eq!(
            attempts_to(&r),
            owned(&[("quic", "192.168.0.2", 0.0, "won")])
        );
        assert_eq!(r.metrics.ttfm_ms, Some(120.0), "60 ms + 1.5 RTT");
        // At its limit: the resolution delay is part of it.
        assert_eq!(r.metrics.ttfm_limit_ms, Some(120.0));
    }
    // An AAAA query that is never answered costs the same, and no more.
    for r in blocking("blocking/aaaa-lost") {
        let res = resolution(&r);
        assert_eq!(res.queries.len(), 1);
        assert_eq!(res.race_started_ms, 60.0);
        assert_eq!(res.unanswered, ["AAAA"]);
        assert_eq!(
            attempts_to(&r),
            owned(&[("quic", "192.168.0.2", 0.0, "won")])
        );
        assert_eq!(
            (r.metrics.ttfm_ms, r.metrics.ttfm_limit_ms),
            (Some(120.0), Some(120.0))
        );
    }
}

#[test]
fn tls_over_tcp_runs_over_ipv6_between_dual_stack_hosts() {
    for r in blocking("echo/tls-tcp-ipv6") {
        assert_eq!(
            attempts_to(&r),
            owned(&[("tls-tcp", "[2001:db8::2]", 0.0, "won")])
        );
        // As over IPv4: 2.5 RTT.
        assert_eq!(r.metrics.ttfm_ms, Some(100.0), "seed {}", r.seed);
        assert_eq!(r.metrics.messages_delivered, r.metrics.messages_sent);
    }
}

#[test]
fn a_carrier_goes_on_over_ipv4_when_ipv6_breaks_under_it() {
    let events = |r: &reports::Report| -> Vec<String> {
        r.path_events
            .iter()
            .map(|e| format!("{:?}", e.event))
            .collect()
    };
    // TLS/TCP: the path manager hands over to the server's IPv4 address on the same
    // interface.
    for r in common::lossless_runs("failover/tls-tcp-ipv6-breaks") {
        assert_eq!(attempts_to(&r)[0].1, "[2001:db8::2]", "it started on IPv6");
        assert_eq!(r.metrics.handovers, 1);
        assert_eq!(r.metrics.carriers_accepted, 1);
        assert_eq!(r.metrics.failover_gap_ms, Some(360.0), "seed {}", r.seed);
        assert!(
            !events(&r).iter().any(|e| e == "Dormant"),
            "{:?}",
            events(&r)
        );
    }
    // QUIC cannot change its server address: dormant, then moved to TLS/TCP over IPv4.
    for r in common::lossless_runs("failover/quic-ipv6-breaks") {
        assert_eq!(
            attempts_to(&r),
            owned(&[("quic", "[2001:db8::2]", 0.0, "won")])
        );
        assert_eq!(r.metrics.protocol_changes, 1);
        assert_eq!(r.metrics.carriers_accepted, 1);
        // The silence that makes the carrier dormant (135-145 ms after the break, by where
        // the last writes fell), then the move: an attempt delay and a TLS handshake.
        let gap = r.metrics.failover_gap_ms.expect("a gap");
        assert!((670.0..=690.0).contains(&gap), "seed {}: {gap}", r.seed);
    }
}

#[test]
fn a_second_quic_carrier_resumes_without_a_certificate_exchange() {
    for r in blocking("resumption/quic-second-carrier") {
        assert_eq!(r.metrics.resumed, Some(1), "seed {}", r.seed);
        assert_eq!(r.metrics.ttfm_last_ms, Some(60.0), "no 0-RTT: 1.5 RTT");
    }
    let r = without_association("resumption/quic-second-carrier", 1);
    assert_eq!(
        r.metrics.resumed,
        Some(0),
        "no association, a full handshake"
    );
}

#[test]
fn unknown_nat_presets_and_knobs_are_clear_errors() {
    let path = Path::new("scenarios/x/nat.toml");
    let text = |nat: &str| {
        format!(
            "description = \"nat\"\n[[gateway]]\nname = \"nat\"\nnat = {nat}\n[[host]]\n\
             name = \"client\"\ngateway = \"nat\"\n[[host]]\nname = \"server\"\n[workload]\n\
             kind = \"echo\"\nclient = \"client\"\nserver = \"server\"\nprotocol = \"quic\"\n\
             messages = 1\n"
        )
    };
    let parse = |nat: &str| Scenario::parse("x/nat", path, &text(nat)).map(|_| ());
    assert!(parse("{ preset = \"symmetric\" }").is_ok());
    // `none` is the other usual name of `open`.
    let none = Scenario::parse("x/nat", path, &text("{ preset = \"none\" }")).expect("none");
    assert_eq!(
        none.world.gateways[0].nat.preset,
        Some(sim::NatPreset::Open)
    );
    for (nat, want) in [
        (
            "{ preset = \"cone-ish\" }",
            "unknown variant `cone-ish`, expected one of `none`, `open`, `full-cone`, `restricted-cone`, \
             `port-restricted-cone`, `symmetric`",
        ),
        (
            "{ filtering = \"sometimes\" }",
            "expected one of `endpoint-independent`, `address-dependent`, \
             `address-and-port-dependent`",
        ),
        (
            "{ hairpinning = true }",
            "unknown field `hairpinning`, expected one of `preset`",
        ),
        (
            "{ ports = \"lucky\" }",
            "expected one of `preserving`, `sequential`, `random`",
        ),
    ] {
        let e = parse(nat).expect_err(nat).to_string();
        assert!(e.contains(want), "{nat}: {e}");
        assert!(
            e.starts_with("scenarios/x/nat.toml:4:"),
            "file and line: {e}"
        );
    }
}

#[test]
fn a_quic_carrier_moves_to_tls_tcp_when_udp_is_blocked_under_it() {
    // QUIC won the race; at 2 s a firewall drops UDP. The client hears nothing for twice the
    // path manager's silence (2 × 3 × 40 ms), finds TLS/TCP to the listener working (2 RTT),
    // and moves the carrier (1.5 RTT of HELLO and receipts); what QUIC had not delivered goes
    // again over TLS/TCP. Both directions (echo), one carrier, nothing lost or twice.
    for name in [
        "blocking/udp-blocked-mid-carrier",
        "blocking/udp-blocked-mid-echo",
    ] {
        for r in blocking(name) {
            let m = &r.metrics;
            assert_eq!((m.protocol_changes, m.carriers_accepted), (1, 1), "{name}");
            assert_eq!(m.messages_delivered, m.messages_sent, "{name}");
            assert_eq!(
                m.messages_lost + m.messages_duplicated + m.messages_corrupted + m.messages_failed,
                0,
                "{name}"
            );
            let moved: Vec<_> = r
                .path_events
                .iter()
                .filter(|e| {
                    matches!(
                        e.event,
                        PathEventKind::ProtocolChange | PathEventKind::ServerProtocolChange
                    )
                })
                .map(|e| e.reason.as_deref())
                .collect();
            assert_eq!(moved, [Some("tls-tcp"), Some("tls-tcp")], "{name}");
            // The longest client → server latency: from the first message QUIC swallowed
            // to its delivery over TLS/TCP. The silence clock starts at the first send after
            // the last answer (up to 1 RTT, 40 ms, after the first message lost) and is read
            // every 20 ms (twice: start and end); silence 240 ms; TCP and TLS handshakes
            // (80 ms); HELLO rides with the TLS Finished, the listener's answer and our
            // receipts take 1.5 RTT, the resent message right behind them (60 ms): 460 ms,
            // measured 460 ms.
            let bound = 40.0 + 2.0 * 20.0 + 240.0 + 80.0 + 60.0;
            let worst = r
                .messages
                .iter()
                .filter(|m| m.direction == reports::Direction::ClientToServer)
                .filter_map(|m| m.delivered_ms.first().map(|d| d - m.sent_ms))
                .fold(0.0, f64::max);
            assert!(worst <= bound, "{name}: worst latency {worst} ms");
            assert!(
                worst >= 240.0,
                "{name}: the move cannot beat the silence: {worst} ms"
            );
        }
    }
}

/// A client group: 100 hosts behind one carrier-grade NAT (or public), each with its own
/// access link and its own carrier. Every member's 10 messages come back, the server accepts
/// 100 carriers, and every member's access link carried its own traffic. The first member's
/// race is the report's: 1.5 RTT (QUIC) or 2.5 RTT (TLS/TCP) to the first echo, RTT 40 ms
/// (2 × (5 + 10 + 5) through the NAT, 2 × (15 + 5) direct).
#[test]
fn every_member_of_a_client_group_runs_its_own_carrier() {
    for name in [
        "scale/cgnat-quic",
        "scale/cgnat-tls-tcp",
        "scale/public-quic",
    ] {
        let s = scenario(name);
        assert_eq!(s.clients.len(), 100);
        let r = testbed::run(&s, 1).report;
        assert!(r.passed, "{name}: {:?} {:?}", r.error, r.expectations);
        assert_eq!(r.metrics.carriers_accepted, 100, "{name}");
        for member in 0..100u64 {
            let echoed = r
                .messages
                .iter()
                .filter(|m| m.id / 10 == member && !m.delivered_ms.is_empty())
                .count();
            assert_eq!(echoed, 20, "{name}: member {member}'s messages, both ways");
        }
        for k in 1..=100 {
            let link = &r.links[&format!("client-{k}")];
            assert!(
                link["up"]["delivered"].as_u64().unwrap_or(0) > 0
                    && link["down"]["delivered"].as_u64().unwrap_or(0) > 0,
                "{name}: client-{k}'s access link carried nothing: {link}"
            );
        }
        let rtts = if name.ends_with("quic") { 1.5 } else { 2.5 };
        let ttfm = r.metrics.ttfm_ms.expect("ttfm");
        assert!((ttfm - rtts * 40.0).abs() <= 2.0, "{name}: TTFM {ttfm} ms");
    }
}

/// Policies: a policy for the application shortens the first carrier's fallback from 350 to
/// 150 ms (250 → 50 ms attempt delay); on the second carrier a policy that matches on what
/// the stack learned (TLS/TCP won the last race) takes QUIC out of the race; the report
/// names every choice, including the one a higher-priority policy overrode.
#[test]
fn policies_choose_from_the_request_and_from_what_the_stack_learned() {
    for seed in 1..=3 {
        let r = testbed::run(&scenario("blocking/udp-blocked-policy"), seed).report;
        assert!(r.passed, "seed {seed}: {:?} {:?}", r.error, r.expectations);
        assert_eq!(r.metrics.ttfm_ms, Some(150.0), "seed {seed}");
        let e = r.establishment.expect("the second carrier's race");
        let tried: Vec<&str> = e.attempts.iter().map(|a| a.protocol.as_str()).collect();
        assert_eq!(tried, ["tls-tcp"], "seed {seed}");
        let chosen: Vec<(&str, &str)> = e
            .policy
            .iter()
            .map(|p| (p.policy.as_str(), p.setting.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("learned", "rtt 40.0 ms, blocked [], last winner tls-tcp"),
                ("tls-where-quic-lost", "protocols = [tls-tcp]"),
                (
                    "sync-races-early",
                    "protocols = [quic, tls-tcp] (not applied: set by tls-where-quic-lost)"
                ),
                ("sync-races-early", "attempt_delay_ms = 50"),
            ],
            "seed {seed}"
        );
    }
}

/// A policy file that is missing or wrong is the scenario's error, at the `policy` key.
#[test]
fn a_bad_policy_file_is_an_error_at_the_policy_key() {
    let dir = TempDir::new("policy");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/blocking/udp-blocked-policy.toml"),
    )
    .expect("scenario");
    let file = dir.join("s.toml");
    for (json, want) in [
        (None, "cannot read"),
        (
            Some(r#"{ "policies": [ { "name": "x", "set": { "protocols": ["udp"] } } ] }"#),
            "policy `x`: unknown protocol `udp`",
        ),
    ] {
        let policy = dir.join("udp-blocked-policy.json");
        let _ = std::fs::remove_file(&policy);
        if let Some(json) = json {
            std::fs::write(&policy, json).expect("write");
        }
        std::fs::write(&file, &text).expect("write");
        let e = Scenario::load("s", &file).expect_err("a bad policy");
        let line = text
            .lines()
            .position(|l| l.starts_with("policy ="))
            .expect("key")
            + 1;
        assert_eq!((e.line, e.column), (line, 10), "{e}");
        assert!(e.message.contains(want), "want `{want}` in {e}");
    }
}

#[test]
fn the_race_plot_shows_how_long_dns_took() {
    // Drawn when resolution took time (or the race had several attempts), not otherwise.
    for (name, want) in [("blocking/aaaa-slow", true), ("echo/quic", false)] {
        let r = testbed::run(&scenario(name), 1).report;
        assert_eq!(reports::plot::has_race(&r), want, "{name}");
    }
    let dir = TempDir::new("race-plot");
    let r = testbed::run(&scenario("blocking/aaaa-slow"), 1).report;
    suite::write_run(&dir, &r, true).expect("write");
    let png = dir.join("blocking/aaaa-slow/seed-1-race.png");
    let bytes = std::fs::read(&png).expect("the race plot");
    assert!(bytes.len() > 10_000, "{} looks empty", png.display());
}

/// A client group's members start `stagger_ms` apart (each host joins the simulation at its
/// start rather than sleeping until it), and the run waits for the last of them.
#[test]
fn a_client_group_starts_its_members_stagger_ms_apart() {
    let shipped = scenario("scale/cgnat-tls-tcp");
    let text = shipped.source.replace("stagger_ms = 2", "stagger_ms = 250");
    let s = Scenario::parse(&shipped.name, &shipped.path, &text).expect("valid");
    let s = testbed::bench_scale::resized(&s, 4).expect("resized");
    let r = testbed::run(&s, 1).report;
    assert_eq!(r.error, None);
    assert_eq!(r.metrics.messages_delivered, 80);
    // Each member's first message (ids are numbered apart, 10 per member).
    let first_sent = |member: u64| {
        r.messages
            .iter()
            .find(|m| m.direction == reports::Direction::ClientToServer && m.id == member * 10)
            .expect("sent")
            .sent_ms
    };
    let starts: Vec<f64> = (0..4).map(|k| first_sent(k) - first_sent(0)).collect();
    assert_eq!(starts, [0.0, 250.0, 500.0, 750.0]);
}
