//! The access-link model's knobs in scenario files: jitter (with and without reordering),
//! Gilbert-Elliott burst loss, duplication, MTU, asymmetric directions, CoDel. Bad values are
//! `file:line:col` errors at the value; the stack survives every knob without losing or
//! duplicating a message.

mod common;

use std::path::Path;

use testbed::Scenario;

/// An echo scenario whose client link is `{ latency_ms = 10, <knobs> }`.
fn scenario_text(protocol: &str, knobs: &str) -> String {
    format!(
        r#"description = "link knobs"
duration_s = 60
[[host]]
name = "client"
link = {{ latency_ms = 10, {knobs} }}
[[host]]
name = "server"
link = {{ latency_ms = 10 }}
[workload]
kind = "echo"
client = "client"
server = "server"
protocol = "{protocol}"
messages = 40
interval_ms = 20
min_size = 8
max_size = 8000

[[expect]]
metric = "messages_lost"
max = 0

[[expect]]
metric = "messages_duplicated"
max = 0
"#
    )
}

fn parse(text: &str) -> Result<Scenario, String> {
    Scenario::parse("x/link", Path::new("x/link.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn bad_link_knobs_are_errors_at_their_value() {
    for (knob, value, message) in [
        ("jitter_ms", "20000", "jitter_ms must be at most 10000 ms"),
        ("mtu", "100", "mtu must be between 576 and 65535"),
        (
            "duplicate",
            "1.5",
            "a probability must be between 0.0 and 1.0",
        ),
        ("aqm", "\"red\"", "unknown variant `red`"),
        (
            "burst_loss",
            "{ p_enter = 2.0, p_exit = 0.1 }",
            "a probability",
        ),
        ("up", "{ loss = -1.0 }", "a probability"),
        (
            "down",
            "{ bandwidth_kbps = 0 }",
            "bandwidth_kbps must be positive",
        ),
        (
            "down",
            "{ queue_bytes = 100 }",
            "queue_bytes must hold at least one",
        ),
        (
            "up",
            "{ delay_ms = 99999 }",
            "delay_ms must be at most 60000",
        ),
        ("up", "{ rate = 5 }", "unknown field `rate`"),
    ] {
        let text = scenario_text("quic", &format!("{knob} = {value}"));
        let err = parse(&text).expect_err(knob);
        // Line 5 holds the link; the error points into the knob's value.
        let line = text.lines().nth(4).expect("line 5");
        let value_col = line.find(value).expect("value") + 1;
        let prefix = "x/link.toml:5:";
        assert!(err.starts_with(prefix), "{knob} = {value}: {err}");
        let col: usize = err[prefix.len()..]
            .split(':')
            .next()
            .and_then(|c| c.parse().ok())
            .expect("a column");
        assert!(
            (value_col..value_col + value.len()).contains(&col),
            "{knob} = {value}: column {col}, value at {value_col}: {err}"
        );
        assert!(err.contains(message), "{knob} = {value}: {err}");
    }
}

fn run(protocol: &str, knobs: &str, seed: u64) -> reports::Report {
    let s = parse(&scenario_text(protocol, knobs)).expect("valid");
    let r = testbed::run(&s, seed).report;
    assert!(
        r.passed,
        "{protocol} {knobs} seed {seed}: {:?} {:?}",
        r.error, r.expectations
    );
    // 40 messages each way (the echo).
    assert_eq!(r.metrics.messages_delivered, 80);
    r
}

fn client_link(r: &reports::Report, dir: &str, counter: &str) -> u64 {
    r.links["client"][dir][counter].as_u64().unwrap_or(0)
}

#[test]
fn quic_finds_a_small_mtu_and_tcp_fits_its_segments_to_it() {
    for seed in 1..=2 {
        // quinn starts at 1200 bytes and probes upwards to 1452: the probes above 1280 die.
        let quic = run("quic", "mtu = 1280", seed);
        assert!(client_link(&quic, "up", "too_big") > 0, "{:?}", quic.links);
        // TCP takes its MSS from the interface MTU (1240) and announces it: nothing too big.
        let tcp = run("tls-tcp", "mtu = 1280", seed);
        assert_eq!(client_link(&tcp, "up", "too_big"), 0, "{:?}", tcp.links);
        assert_eq!(client_link(&tcp, "down", "too_big"), 0, "{:?}", tcp.links);
    }
}

#[test]
fn jitter_reordering_duplication_and_burst_loss_lose_and_duplicate_nothing() {
    // Bursts of 2 on average, ~2 % loss. Harsher bursts (p_enter = 0.02, p_exit = 0.3: ~6 %
    // in bursts of 3.3) break TLS/TCP today, a stack bug left for issue 13: on seed 2 the
    // client's carrier goes dormant on its only, working path at 348 ms, recovers only at
    // 11.5 s, and the server then ends its carrier with "HELLO is only allowed as the first
    // frame of a transient" although TCP delivered the bytes in order.
    let knobs = "jitter_ms = 15, reorder = true, duplicate = 0.05, \
                 burst_loss = { p_enter = 0.01, p_exit = 0.5 }";
    for protocol in ["quic", "tls-tcp"] {
        for seed in 1..=2 {
            let r = run(protocol, knobs, seed);
            let copies =
                client_link(&r, "up", "duplicated") + client_link(&r, "down", "duplicated");
            assert!(copies > 0, "{protocol}: {:?}", r.links);
            let lost = client_link(&r, "up", "losses") + client_link(&r, "down", "losses");
            assert!(lost > 0, "{protocol}: {:?}", r.links);
        }
    }
}

#[test]
fn an_asymmetric_link_and_codel_carry_everything() {
    // A 2 Mbit/s uplink with CoDel and a 20 Mbit/s downlink 15 ms longer than the uplink.
    let knobs = "bandwidth_kbps = 20000, aqm = \"codel\", queue_bytes = 1000000, \
                 up = { bandwidth_kbps = 2000 }, down = { delay_ms = 15 }";
    for protocol in ["quic", "tls-tcp"] {
        let r = run(protocol, knobs, 1);
        // Fresh QUIC needs 1.5 RTT; the downlink adds 15 ms to each RTT: 60 + 22.5 ms.
        if protocol == "quic" {
            let ttfm = r.metrics.ttfm_ms.expect("ttfm");
            assert!((82.0..=90.0).contains(&ttfm), "{ttfm}");
        }
    }
}

/// Seconds of simulated time two clients behind one gateway take to send 1 MiB each over
/// TCP at once, with the gateway's uplink limited to `uplink_kbps` (or not), and the
/// uplink's counters.
fn two_clients_through_one_gateway(uplink_kbps: Option<u64>) -> (f64, Option<sim::LinkCounters>) {
    use postsock::net::Net;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gw = common::sim_nat("nat", sim::NatPreset::FullCone);
    gw.link = uplink_kbps.map(|kbps| sim::LinkParams {
        bandwidth_kbps: Some(kbps),
        queue_bytes: 128 * 1024,
        ..sim::LinkParams::default()
    });
    let spec = sim::WorldSpec {
        dns: Default::default(),
        hosts: vec![
            common::sim_host("a", Some("nat"), 5),
            common::sim_host("b", Some("nat"), 5),
            common::sim_host("server", None, 10),
        ],
        gateways: vec![gw],
    };
    let mut world = sim::World::new(&spec, 1, std::time::Duration::from_secs(120)).expect("world");
    let server = world.net("server").expect("net");
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let finished = done.clone();
    world
        .host("server", move || {
            let (server, finished) = (server.clone(), finished.clone());
            async move {
                let listener = server.listen_tcp(([0, 0, 0, 0], 80).into()).await?;
                loop {
                    let (mut s, _) = listener.accept().await?;
                    let finished = finished.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut total = 0;
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            total += n;
                        }
                        let at = tokio::time::Instant::now();
                        finished.lock().expect("lock").push((at, total));
                    });
                }
            }
        })
        .expect("host");
    let start = std::sync::Arc::new(std::sync::Mutex::new(None));
    for name in ["a", "b"] {
        let net = world.net(name).expect("net");
        let (start, done) = (start.clone(), done.clone());
        world
            .client(name, async move {
                let addr = net.resolve("server", 80).await?[0];
                start
                    .lock()
                    .expect("lock")
                    .get_or_insert(tokio::time::Instant::now());
                let mut s = net.connect_tcp(addr).await?;
                s.write_all(&vec![1u8; 1 << 20]).await?;
                s.shutdown().await?;
                while done.lock().expect("lock").len() < 2 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Ok(())
            })
            .expect("client");
    }
    while !world.step().expect("step") {}
    let done = done.lock().expect("lock").clone();
    assert_eq!(
        done.iter().map(|d| d.1).collect::<Vec<_>>(),
        [1 << 20, 1 << 20]
    );
    let start = start.lock().expect("lock").expect("started");
    let end = done.iter().map(|d| d.0).max().expect("two");
    (
        (end - start).as_secs_f64(),
        world.counters().get("gateway/nat").copied(),
    )
}

#[test]
fn a_gateway_uplink_is_a_bottleneck_shared_by_the_hosts_behind_it() {
    // 2 MiB through a 4 Mbit/s uplink: at least 4.2 s, whoever sends it.
    let (shared, counters) = two_clients_through_one_gateway(Some(4000));
    assert!(shared >= 4.19, "{shared} s");
    let c = counters.expect("the uplink has counters");
    assert!(c.up.offered > 1400 && c.down.offered > 100, "{c:?}");
    // Without the uplink the same transfer is limited by TCP only.
    let (free, none) = two_clients_through_one_gateway(None);
    assert!(none.is_none());
    assert!(free < shared / 2.0, "{free} s vs {shared} s");
    // A gateway link takes its latency from the gateway.
    let text = r#"description = "x"
[[gateway]]
name = "nat"
link = { latency_ms = 5, bandwidth_kbps = 1000 }
[[host]]
name = "client"
gateway = "nat"
[[host]]
name = "server"
[workload]
kind = "echo"
client = "client"
server = "server"
protocol = "quic"
messages = 5
"#;
    let err = parse(text).expect_err("latency on a gateway link");
    assert!(err.contains("leave link.latency_ms out"), "{err}");
}

/// When a datagram the restarted server sends first reaches the client (simulated ms), with
/// the test pausing the wall clock `wall_pause` just before it bounces the server.
///
/// The server's 100 kbit/s uplink is still busy with a burst the first incarnation queued
/// when the server restarts; the second incarnation's datagram leaves after that burst.
fn first_datagram_after_a_restart(wall_pause: std::time::Duration) -> Vec<(u64, usize)> {
    use postsock::net::{datagram, Net};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut server_spec = common::sim_host("server", None, 10);
    server_spec.link = sim::LinkParams {
        latency_ms: 10,
        bandwidth_kbps: Some(100),
        queue_bytes: 64 * 1024,
        ..sim::LinkParams::default()
    };
    let spec = sim::WorldSpec {
        dns: Default::default(),
        hosts: vec![common::sim_host("client", None, 10), server_spec],
        gateways: vec![],
    };
    let mut world = sim::World::new(&spec, 7, std::time::Duration::from_secs(60)).expect("world");
    let (server, client) = (
        world.net("server").expect("net"),
        world.net("client").expect("net"),
    );
    let target = std::net::SocketAddr::new(world.ip("client").expect("ip"), 9);
    let incarnations = std::sync::Arc::new(AtomicUsize::new(0));
    let started = incarnations.clone();
    world
        .host("server", move || {
            let (server, started) = (server.clone(), started.clone());
            async move {
                let socket = server.bind_udp(([0, 0, 0, 0], 0).into()).await?;
                // The first incarnation queues 20 × 1000 bytes (1.6 s at 100 kbit/s); the
                // second one sends one byte.
                let size = if started.fetch_add(1, Ordering::SeqCst) == 0 {
                    1000
                } else {
                    1
                };
                for _ in 0..if size == 1 { 1 } else { 20 } {
                    datagram::send_to(&*socket, target, &vec![7u8; size]).await?;
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("host");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    world
        .client("client", async move {
            let socket = client.bind_udp(([0, 0, 0, 0], 9).into()).await?;
            loop {
                let (_, data) = datagram::recv_from(&*socket).await?;
                let at = turmoil::sim_elapsed()
                    .expect("in the simulation")
                    .as_millis() as u64;
                seen.lock().expect("lock").push((at, data.len()));
                if data.len() == 1 {
                    return Ok(());
                }
            }
        })
        .expect("client");
    while world.elapsed() < std::time::Duration::from_millis(200) {
        assert!(!world.step().expect("step"), "ended before the restart");
    }
    assert_eq!(incarnations.load(Ordering::SeqCst), 1);
    std::thread::sleep(wall_pause);
    world
        .apply(&sim::Fault::Bounce {
            host: "server".into(),
        })
        .expect("bounce");
    while !world.step().expect("step") {}
    assert_eq!(incarnations.load(Ordering::SeqCst), 2);
    let got = got.lock().expect("lock").clone();
    got
}

#[test]
fn a_restarted_hosts_link_keeps_the_simulations_clock() {
    // A restarted host's tokio runtime has a new clock whose instants start from the wall
    // clock at the restart; the link must judge its queue by simulated time, so how long the
    // machine took to get there changes nothing.
    let quick = first_datagram_after_a_restart(std::time::Duration::ZERO);
    let slow = first_datagram_after_a_restart(std::time::Duration::from_millis(700));
    assert_eq!(quick, slow);
    // Two of the burst arrived before the restart at 200 ms (80 ms each at 100 kbit/s, plus
    // 20 ms of latency); the rest, queued at the host, went with it. The marker waits for the
    // link to finish what it had started, 20 × 80 ms, and arrives 20 ms later.
    assert_eq!(quick, [(100, 1000), (180, 1000), (1620, 1)]);
}
