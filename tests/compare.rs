//! The `compare/` family: the same workload over QUIC and TLS/TCP across loss and RTT, its
//! head-of-line-blocking finding, and its plots.

use std::path::Path;

use testbed::{compare, suite};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn the_family_is_thirty_generated_scenarios_run_only_when_named() {
    let all = suite::load(&dir(), Some("compare/")).expect("load");
    assert_eq!(all.len(), 2 * 5 * 3);
    assert!(all
        .iter()
        .any(|s| s.name == "compare/tls-tcp-rtt300-loss0.5"));
    let default = suite::load(&dir(), None).expect("load");
    assert!(default.iter().all(|s| !s.name.starts_with("compare/")));
    // Replayable by name like a file.
    let one = suite::load_one(&dir(), "compare/quic-rtt20-loss1").expect("by name");
    assert_eq!(one.workload.messages, 100);
}

/// Runs per protocol and loss.
const SEEDS: u64 = 10;

#[test]
fn tcp_blocks_later_messages_behind_a_loss_and_quic_does_not() {
    let mut reports = Vec::new();
    for loss in [0.0, 1.0] {
        for protocol in compare::PROTOCOLS {
            let s = compare::scenario(protocol, 20, loss).expect("scenario");
            // Ten seeds: at 1 % loss only a few of a run's 100 messages meet a loss, and the
            // p95 of two runs (200 messages) sits on that edge.
            for seed in 1..=SEEDS {
                let r = testbed::run(&s, seed).report;
                assert!(
                    r.passed,
                    "{} seed {seed}: {:?} {:?}",
                    s.name, r.error, r.expectations
                );
                reports.push(r);
            }
        }
    }
    let c = compare::from_reports(&reports).expect("a comparison");
    assert_eq!(c.cells.len(), 4);
    let cell = |protocol: &str, loss: f64| {
        c.cells
            .iter()
            .find(|x| x.protocol == protocol && x.loss_percent == loss)
            .expect("cell")
    };
    // Without loss both deliver every message in about the one-way delay (10 ms + 4 KiB at
    // 10 Mbit/s).
    for protocol in compare::PROTOCOLS {
        let x = cell(protocol, 0.0);
        assert_eq!(
            (x.runs, x.delivered),
            (SEEDS as usize, 100 * SEEDS as usize)
        );
        assert!(x.p50_ms <= 15.0, "{protocol}: {x:?}");
    }
    // At 1 % loss, QUIC's unordered messages wait only for their own packets; TCP holds
    // every later message behind a lost segment. Measured p95 over seeds 1-10: QUIC 34 ms,
    // TLS/TCP 159 ms (4.7x); over 11-20: 15 and 297 ms; over 21-30: 19 and 164 ms. QUIC's
    // p95 over ten seeds sits where one retransmission more or less moves it by an RTT (it
    // was 24 ms before QUIC's MAX_STREAMS credit came every 64 streams instead of every 128:
    // one more small packet moves where the seeded losses fall), so the margin asked for is
    // 4x, not more.
    let (quic, tcp) = (cell("quic", 1.0), cell("tls-tcp", 1.0));
    assert!(quic.p95_ms < 100.0, "{quic:?}");
    assert!(tcp.p95_ms > 4.0 * quic.p95_ms, "{tcp:?} vs {quic:?}");
    assert!(tcp.p99_ms > 4.0 * quic.p99_ms, "{tcp:?} vs {quic:?}");
    // The outputs: table, JSON, the head-of-line plot and a CDF per RTT and loss.
    let out = std::env::temp_dir().join(format!("postsock-compare-{}", std::process::id()));
    compare::write(&out, &c).expect("write");
    for file in [
        "compare.json",
        "compare.md",
        "compare-hol.png",
        "compare/cdf-rtt20-loss0.png",
        "compare/cdf-rtt20-loss1.png",
    ] {
        let len = std::fs::metadata(out.join(file)).map_or(0, |m| m.len());
        assert!(len > 1000 || file.ends_with(".md"), "{file}: {len} bytes");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).expect("md");
    assert!(md.contains("| 20 ms | 1 % | tls-tcp |"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}
