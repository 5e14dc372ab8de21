//! The Post Sockets API's behaviour in the simulator, where time is exact: ordering,
//! antecedents, partial messages, back-pressure, per-message outcomes, selection, fork.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use postsock::net::Net;
use postsock::{
    Carrier, CarrierStats, Configuration, Error, Event, Listener, Message, MessageProperties,
    Preference, Protocol, Remote, Security, SendStatus, TestCa, TransportProperties,
};
use sim::{HostSpec, LinkParams, World, WorldSpec};

type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, s: impl Into<String>) {
    l.lock().expect("log").push(s.into());
}

fn entries(l: &Log) -> Vec<String> {
    l.lock().expect("log").clone()
}

fn configs(protocols: &[Protocol]) -> (Configuration, Configuration) {
    let ca = TestCa::new("api CA").expect("ca");
    let mut server = Configuration::default();
    server.protocols(protocols).security(Security {
        identity: Some(ca.issue(&["server", "localhost"]).expect("identity")),
        ..Security::default()
    });
    let mut client = Configuration::default();
    client.protocols(protocols).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    (server, client)
}

/// Where a test runs: in the simulator with the client's uplink, or on real loopback sockets.
#[derive(Debug, Clone)]
enum On {
    Sim(Box<LinkParams>),
    Real,
}

/// Runs `server` on every accepted carrier and `client` on an initiated one, in the
/// simulator or over real loopback sockets; returns when the client is done.
fn run_on<S, SF, C, CF>(on: On, configs: (Configuration, Configuration), server: S, client: C)
where
    S: Fn(Carrier) -> SF + Clone + Send + 'static,
    SF: Future<Output = ()> + Send + 'static,
    C: FnOnce(Carrier) -> CF + 'static,
    CF: Future<Output = ()> + 'static,
{
    match on {
        On::Sim(uplink) => simulate(*uplink, configs, server, client),
        On::Real => loopback(configs, server, client),
    }
}

/// The runtime of the real-socket tests: two workers, as the bench's default.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn loopback<S, SF, C, CF>(
    (server_config, client_config): (Configuration, Configuration),
    server: S,
    client: C,
) where
    S: Fn(Carrier) -> SF + Clone + Send + 'static,
    SF: Future<Output = ()> + Send + 'static,
    C: FnOnce(Carrier) -> CF + 'static,
    CF: Future<Output = ()> + 'static,
{
    runtime().block_on(async move {
        let net: Arc<dyn Net> = postsock::net::TokioNet::shared();
        let mut listener = Listener::bind(
            net.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            server_config,
        )
        .await
        .expect("bind");
        let port = listener.local_addr().port();
        let acceptor = tokio::spawn(async move {
            while let Ok(carrier) = listener.accept().await {
                tokio::spawn(server.clone()(carrier));
            }
        });
        let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
            .await
            .expect("initiate");
        client(carrier).await;
        acceptor.abort();
    });
}

/// Milliseconds since the start: simulated time in the simulator, real time otherwise.
fn now_ms() -> u128 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    turmoil::sim_elapsed().map_or_else(|| start.elapsed().as_millis(), |d| d.as_millis())
}

/// Runs `server` on every carrier the server accepts and `client` on a carrier initiated
/// from a host whose uplink is `uplink`; returns when the client is done.
fn simulate<S, SF, C, CF>(
    uplink: LinkParams,
    (server_config, client_config): (Configuration, Configuration),
    server: S,
    client: C,
) where
    S: Fn(Carrier) -> SF + Clone + 'static,
    SF: Future<Output = ()> + Send + 'static,
    C: FnOnce(Carrier) -> CF + 'static,
    CF: Future<Output = ()> + 'static,
{
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![
            HostSpec {
                name: "client".into(),
                gateway: None,
                link: uplink,
                aliases: Vec::new(),
                interfaces: Vec::new(),
                count: None,
                ip: Default::default(),
                ipv6_blackhole: false,
            },
            HostSpec {
                name: "server".into(),
                gateway: None,
                link: LinkParams {
                    latency_ms: 10,
                    ..LinkParams::default()
                },
                aliases: Vec::new(),
                interfaces: Vec::new(),
                count: None,
                ip: Default::default(),
                ipv6_blackhole: false,
            },
        ],
        gateways: vec![],
    };
    let mut world = World::new(&spec, 7, Duration::from_secs(120)).expect("world");
    let server_net: Arc<dyn Net> = world.net("server").expect("net");
    world
        .host("server", move || {
            let (net, config, server) = (server_net.clone(), server_config.clone(), server.clone());
            async move {
                let mut listener = Listener::bind(net, ([0, 0, 0, 0], 4433).into(), config).await?;
                loop {
                    let carrier = listener.accept().await?;
                    tokio::spawn(server.clone()(carrier));
                }
            }
        })
        .expect("host");
    let client_net: Arc<dyn Net> = world.net("client").expect("net");
    world
        .client("client", async move {
            let carrier =
                Carrier::initiate(client_net, Remote::new("server", 4433), client_config).await?;
            client(carrier).await;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
}

fn link(latency_ms: u64, bandwidth_kbps: Option<u64>) -> LinkParams {
    LinkParams {
        latency_ms,
        bandwidth_kbps,
        ..LinkParams::default()
    }
}

/// A server that reads and drops everything.
async fn drain(carrier: Carrier) {
    while let Ok(Some(_)) = carrier.receive().await {}
}

/// A server that logs every message's first byte (the tag) in arrival order.
fn tag_logger(
    l: Log,
) -> impl Fn(Carrier) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone {
    move |carrier: Carrier| {
        let l = l.clone();
        Box::pin(async move {
            while let Ok(Some(m)) = carrier.receive().await {
                log(&l, format!("{}", m.data[0] as char));
            }
        })
    }
}

/// Big message `A` (niceness 9), then small `B` (niceness 0), with the given properties.
fn arrival_order(a: MessageProperties, b_after_a: bool, b: MessageProperties) -> Vec<String> {
    let l: Log = Log::default();
    simulate(
        link(10, Some(1000)),
        configs(&[Protocol::Quic]),
        tag_logger(l.clone()),
        move |carrier| async move {
            let mut big = vec![b'A'; 64 * 1024];
            big[1] = 0;
            let a = carrier
                .send(Message {
                    data: big.into(),
                    properties: MessageProperties { niceness: 9, ..a },
                })
                .await
                .expect("send A");
            let mut b = MessageProperties { niceness: 0, ..b };
            if b_after_a {
                b.antecedents.push(a.id());
            }
            let b = carrier
                .send(Message {
                    data: Bytes::from_static(b"B"),
                    properties: b,
                })
                .await
                .expect("send B");
            assert_eq!(a.outcome().await, SendStatus::Acked);
            assert_eq!(b.outcome().await, SendStatus::Acked);
            carrier.close().await.expect("close");
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    );
    entries(&l)
}

#[test]
fn unordered_messages_overtake_and_antecedents_hold_them_back_across_quic_streams() {
    let unordered = MessageProperties {
        ordered: false,
        ..Default::default()
    };
    // Two unordered messages on two streams: the small urgent one arrives first...
    assert_eq!(
        arrival_order(unordered.clone(), false, unordered.clone()),
        ["B", "A"]
    );
    // ...unless it names the big one as its antecedent.
    assert_eq!(
        arrival_order(unordered.clone(), true, unordered.clone()),
        ["A", "B"]
    );
    // Ordered messages keep send order whatever their niceness once both are in flight.
    assert_eq!(
        arrival_order(Default::default(), false, Default::default()),
        ["A", "B"]
    );
}

/// What the server saw of a 3-part message (parts 200 ms apart) and a whole one.
#[derive(Debug, Default)]
struct PartialRun {
    /// (offset, length, end, simulated ms) of each part.
    parts: Vec<(u64, usize, bool, u128)>,
    /// Everything else, in order.
    events: Vec<String>,
    /// When the client handed over its second part.
    second_part_sent_ms: u128,
    outcomes: Vec<String>,
}

fn partial_exchange(on: On, protocol: Protocol, abandon: bool) -> PartialRun {
    let run = Arc::new(Mutex::new(PartialRun::default()));
    let (mut server, client) = configs(&[protocol]);
    server.partial_delivery(Some(1000), Some(4096));
    let (rs, rc) = (run.clone(), run.clone());
    run_on(
        on,
        (server, client),
        move |carrier: Carrier| {
            let run = rs.clone();
            async move {
                while let Some(event) = carrier.next_event().await {
                    let mut r = run.lock().expect("run");
                    match event {
                        Event::Ready => r.events.push("ready".into()),
                        Event::Received(m) => r.events.push(format!("whole {}", m.data.len())),
                        Event::ReceivedPartial(p) => {
                            if r.events.last().map(String::as_str) != Some("parts") {
                                r.events.push("parts".into());
                            }
                            r.parts.push((p.offset, p.data.len(), p.end, now_ms()));
                        }
                        Event::ReceiveError { .. } => r.events.push("receive-error".into()),
                        Event::Closed => r.events.push("closed".into()),
                        other => r.events.push(format!("{other:?}")),
                    }
                }
            }
        },
        move |carrier| async move {
            let handle = {
                let mut part = carrier
                    .start_message(MessageProperties::default())
                    .expect("start");
                part.send(vec![1u8; 3000], false).await.expect("part 1");
                tokio::time::sleep(Duration::from_millis(200)).await;
                rc.lock().expect("run").second_part_sent_ms = now_ms();
                part.send(vec![2u8; 5000], false).await.expect("part 2");
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !abandon {
                    part.send(vec![3u8; 10], true).await.expect("part 3");
                }
                part.handle().clone()
            };
            let whole = carrier.send(vec![4u8; 100]).await.expect("whole");
            let outcomes = vec![
                handle.outcome().await.name().to_string(),
                whole.outcome().await.name().to_string(),
            ];
            rc.lock().expect("run").outcomes = outcomes;
            carrier.close().await.expect("close");
            tokio::time::sleep(Duration::from_millis(200)).await;
        },
    );
    let mut r = run.lock().expect("run");
    std::mem::take(&mut *r)
}

/// Parts are contiguous from 0, never longer than the maximum, and all but the last reach
/// the minimum unless a maximum-length cut made them.
fn check_parts(protocol: String, r: &PartialRun) -> u64 {
    let mut next = 0;
    for (i, &(offset, len, end, _)) in r.parts.iter().enumerate() {
        assert_eq!(
            offset, next,
            "{protocol}: parts must be contiguous: {:?}",
            r.parts
        );
        assert!(
            len <= 4096,
            "{protocol}: part longer than max_length: {:?}",
            r.parts
        );
        assert_eq!(
            end,
            i + 1 == r.parts.len() && end,
            "{protocol}: {:?}",
            r.parts
        );
        next += len as u64;
    }
    // Partial delivery really is early: the first part was delivered before the sender
    // even had its second part.
    assert!(
        r.parts[0].3 < r.second_part_sent_ms,
        "{protocol}: first part at {} ms, second part sent at {} ms",
        r.parts[0].3,
        r.second_part_sent_ms
    );
    next
}

/// The simulator (10 Mbit/s uplink, 10 ms) and real loopback sockets.
fn everywhere() -> [On; 2] {
    [On::Sim(Box::new(link(10, Some(10_000)))), On::Real]
}

#[test]
fn partial_messages_are_sent_and_delivered_in_parts() {
    for (on, protocol) in everywhere()
        .into_iter()
        .flat_map(|on| [(on.clone(), Protocol::Quic), (on, Protocol::TlsTcp)])
    {
        let protocol_on = format!("{protocol} {on:?}");
        let r = partial_exchange(on.clone(), protocol, false);
        let protocol = protocol_on;
        assert_eq!(check_parts(protocol.clone(), &r), 8010, "{protocol}");
        assert!(
            r.parts.last().is_some_and(|p| p.2),
            "{protocol}: last part ends it"
        );
        // The small message is delivered whole (it fits max_length, min_incomplete is moot).
        assert_eq!(
            r.events,
            ["ready", "parts", "whole 100", "closed"],
            "{protocol}"
        );
        assert_eq!(r.outcomes, ["acked", "acked"], "{protocol}");
    }
}

#[test]
fn an_abandoned_partial_message_is_discarded_by_the_receiver() {
    for (on, protocol) in everywhere()
        .into_iter()
        .flat_map(|on| [(on.clone(), Protocol::Quic), (on, Protocol::TlsTcp)])
    {
        let protocol_on = format!("{protocol} {on:?}");
        let r = partial_exchange(on.clone(), protocol, true);
        let protocol = protocol_on;
        assert!(check_parts(protocol.clone(), &r) < 8000, "{protocol}");
        assert!(
            r.parts.iter().all(|p| !p.2),
            "{protocol}: no part may claim the end"
        );
        assert_eq!(
            r.events,
            ["ready", "parts", "receive-error", "whole 100", "closed"],
            "{protocol}"
        );
        assert_eq!(r.outcomes, ["failed", "acked"], "{protocol}");
    }
}

#[test]
fn back_pressure_bounds_what_a_sender_buffers_for_a_receiver_that_stopped_reading() {
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let l: Log = Log::default();
        let (mut server, mut client) = configs(&[protocol]);
        server.receive_queue = 8;
        client.send_buffer(256 * 1024);
        let ls = l.clone();
        simulate(
            link(10, Some(100_000)),
            (server, client),
            move |carrier: Carrier| {
                let l = ls.clone();
                async move {
                    // Stop reading for 5 s, then read everything.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let mut n = 0;
                    while let Ok(Some(_)) = carrier.receive().await {
                        n += 1;
                    }
                    log(&l, format!("received {n}"));
                }
            },
            {
                let l = l.clone();
                move |carrier| async move {
                    let mut accepted = 0usize;
                    let mut blocked = false;
                    let mut max_buffered = 0;
                    while accepted < 2000 {
                        match carrier.try_send(vec![7u8; 64 * 1024]) {
                            Ok(_) => accepted += 1,
                            Err(Error::WouldBlock { buffered, limit }) => {
                                assert_eq!(limit, 256 * 1024);
                                assert!(buffered <= limit);
                                blocked = true;
                                break;
                            }
                            Err(e) => panic!("{e}"),
                        }
                        max_buffered = max_buffered.max(carrier.buffered());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    assert!(blocked, "{protocol}: try_send never reported a full buffer");
                    assert!(max_buffered <= 256 * 1024);
                    log(&l, format!("accepted {accepted}"));
                    carrier.close().await.expect("close");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            },
        );
        let got = entries(&l);
        let accepted: usize = got[0]
            .strip_prefix("accepted ")
            .and_then(|n| n.parse().ok())
            .expect("accepted count");
        // What left the sender is bounded by the receiver's windows and queue (QUIC: 8 MiB
        // connection window; TLS/TCP: 8 queued events + the ACK window), not by the 2000 tries.
        assert!(
            accepted * 64 * 1024 <= 10 << 20,
            "{protocol}: {accepted} messages accepted"
        );
        // Nothing was lost: once the receiver reads, it gets every accepted message.
        assert_eq!(got[1], format!("received {accepted}"), "{protocol}");
    }
}

#[test]
fn every_message_gets_exactly_one_terminal_outcome() {
    let l: Log = Log::default();
    let lc = l.clone();
    simulate(
        link(10, Some(256)),
        configs(&[Protocol::Quic]),
        drain,
        move |carrier| async move {
            // A backlog of 20 KiB on a 256 kbit/s link (~640 ms), then a message that must
            // arrive within 50 ms, and one that depends on it.
            let backlog = carrier.send(vec![0u8; 20 * 1024]).await.expect("backlog");
            let urgent_but_late = carrier
                .send(
                    Message::new(vec![1u8; 100])
                        .lifetime(Duration::from_millis(50))
                        .niceness(5),
                )
                .await
                .expect("send");
            let dependent = carrier
                .send(Message::new(vec![2u8; 10]).after(urgent_but_late.id()))
                .await
                .expect("send");
            let datagram = carrier
                .send(Message::new(vec![3u8; 100]).unreliable())
                .await
                .expect("send");
            for (name, h) in [
                ("backlog", &backlog),
                ("expiring", &urgent_but_late),
                ("dependent", &dependent),
                ("datagram", &datagram),
            ] {
                let outcome = h.outcome().await;
                let text = match &outcome {
                    SendStatus::Failed(why) => format!("{name}: failed ({why})"),
                    other => format!("{name}: {}", other.name()),
                };
                log(&lc, text);
                // Terminal means final: the status does not change afterwards.
                assert_eq!(h.status(), outcome);
            }
            carrier.close().await.expect("close");
        },
    );
    assert_eq!(
        entries(&l),
        [
            "backlog: acked",
            "expiring: expired",
            "dependent: failed (antecedent 1 expired)",
            "datagram: sent"
        ]
    );
}

#[test]
fn stream_protocols_refuse_unreliable_messages_and_oversized_ones() {
    let l: Log = Log::default();
    let lc = l.clone();
    let (server, mut client) = configs(&[Protocol::TlsTcp]);
    client.max_message_size(1000);
    simulate(
        link(10, None),
        (server, client),
        drain,
        move |carrier| async move {
            let err = carrier
                .send(Message::new(vec![0u8; 10]).unreliable())
                .await
                .expect_err("TLS/TCP cannot be unreliable");
            log(&lc, err.to_string());
            let err = carrier.send(vec![0u8; 1001]).await.expect_err("too large");
            log(&lc, err.to_string());
            let err = carrier
                .send(Message::new(vec![0u8; 1]).after(5))
                .await
                .expect_err("unknown antecedent");
            log(&lc, err.to_string());
            carrier.close().await.expect("close");
        },
    );
    let got = entries(&l);
    assert!(
        got[0].contains("cannot send unreliable messages"),
        "{got:?}"
    );
    assert!(
        got[1].contains("exceeds the maximum message size of 1000"),
        "{got:?}"
    );
    assert!(got[2].contains("antecedent 5"), "{got:?}");
}

/// The protocol a carrier initiated with `configs` runs on.
fn chosen_protocol(configs: (Configuration, Configuration)) -> String {
    let seen: Log = Log::default();
    let s2 = seen.clone();
    simulate(
        link(10, None),
        configs,
        |_carrier: Carrier| async move {},
        move |carrier| async move {
            log(&s2, carrier.protocol().name());
        },
    );
    let got = entries(&seen);
    got.first().cloned().unwrap_or_default()
}

#[test]
fn selection_picks_from_properties_and_plain_tcp_needs_security_lowered() {
    // Defaults: QUIC first.
    let (server, client) = configs(&[Protocol::Quic, Protocol::TlsTcp, Protocol::Tcp]);
    assert_eq!(chosen_protocol((server, client)), "quic");

    // Avoiding multistreaming picks TLS/TCP over QUIC.
    let (mut server, mut client) = configs(&[Protocol::Quic, Protocol::TlsTcp]);
    let props = TransportProperties {
        multistreaming: Preference::Avoid,
        ..Default::default()
    };
    client.properties(props);
    server.properties(props);
    assert_eq!(chosen_protocol((server, client)), "tls-tcp");

    // Plain TCP only when security is explicitly prohibited; then it works end to end.
    let props = TransportProperties {
        security: Preference::Prohibit,
        ..Default::default()
    };
    let mut server = Configuration::default();
    server.properties(props);
    let mut client = Configuration::default();
    client.properties(props);
    let seen: Log = Log::default();
    let (s1, s2) = (seen.clone(), seen.clone());
    simulate(
        link(10, None),
        (server, client),
        move |carrier: Carrier| {
            let s1 = s1.clone();
            async move {
                while let Ok(Some(m)) = carrier.receive().await {
                    log(
                        &s1,
                        format!("server got {:?}", String::from_utf8_lossy(&m.data)),
                    );
                }
            }
        },
        move |carrier| async move {
            log(&s2, carrier.protocol().name());
            let h = carrier.send(&b"in clear"[..]).await.expect("send");
            assert_eq!(h.outcome().await, SendStatus::Acked);
            carrier.close().await.expect("close");
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    );
    assert_eq!(entries(&seen), ["tcp", "server got \"in clear\""]);

    // Required security never falls back to plain TCP.
    let mut only_tcp = Configuration::default();
    only_tcp.protocols(&[Protocol::Tcp]);
    let err = only_tcp.candidates().expect_err("no secure stack");
    assert!(err.to_string().contains("requires security"), "{err}");
}

#[test]
fn fork_opens_another_carrier_to_the_same_remote() {
    for (on, protocol) in everywhere()
        .into_iter()
        .flat_map(|on| [(on.clone(), Protocol::Quic), (on, Protocol::TlsTcp)])
    {
        let l: Log = Log::default();
        let ls = l.clone();
        let carriers = Arc::new(Mutex::new(0));
        run_on(
            on.clone(),
            configs(&[protocol]),
            move |carrier: Carrier| {
                let (l, carriers) = (ls.clone(), carriers.clone());
                async move {
                    let n = {
                        let mut c = carriers.lock().expect("count");
                        *c += 1;
                        *c
                    };
                    while let Ok(Some(m)) = carrier.receive().await {
                        log(
                            &l,
                            format!("carrier {n}: {}", String::from_utf8_lossy(&m.data)),
                        );
                    }
                }
            },
            move |carrier| async move {
                let fork = carrier.fork().await.expect("fork");
                assert_eq!(fork.protocol(), protocol);
                assert_eq!(fork.peer_addr(), carrier.peer_addr());
                let h = carrier.send(&b"original"[..]).await.expect("send");
                assert_eq!(h.outcome().await, SendStatus::Acked);
                let h = fork.send(&b"fork"[..]).await.expect("send");
                assert_eq!(h.outcome().await, SendStatus::Acked);
                fork.close().await.expect("close fork");
                carrier.close().await.expect("close");
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        );
        // Each message arrived, on a carrier of its own (accept order may vary on real
        // sockets, so only the pairing is checked).
        let mut got = entries(&l);
        got.sort_by_key(|e| e.ends_with("fork"));
        assert_eq!(got.len(), 2, "{protocol} {on:?}: {got:?}");
        assert!(
            got[0].ends_with(": original") && got[1].ends_with(": fork"),
            "{got:?}"
        );
        assert_ne!(
            got[0][..9],
            got[1][..9],
            "{protocol} {on:?}: one carrier got both: {got:?}"
        );
    }
}

#[test]
fn abort_fails_what_is_pending_and_the_peer_sees_a_connection_error() {
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let l: Log = Log::default();
        let (ls, lc) = (l.clone(), l.clone());
        simulate(
            link(10, Some(256)),
            configs(&[protocol]),
            move |carrier: Carrier| {
                let l = ls.clone();
                async move {
                    while let Some(event) = carrier.next_event().await {
                        match event {
                            Event::ConnectionError(_) => log(&l, "server: connection error"),
                            Event::Closed => log(&l, "server: closed"),
                            _ => {}
                        }
                    }
                }
            },
            move |carrier| async move {
                // 64 KiB on a 256 kbit/s link: 2 s of sending, aborted after 100 ms.
                let h = carrier.send(vec![0u8; 64 * 1024]).await.expect("send");
                tokio::time::sleep(Duration::from_millis(100)).await;
                carrier.abort();
                match h.outcome().await {
                    SendStatus::Failed(why) => log(&lc, format!("client: {why}")),
                    other => log(&lc, format!("client: {other:?}")),
                }
                assert!(
                    carrier.send(&b"late"[..]).await.is_err(),
                    "aborted carriers refuse sends"
                );
                // The close travels behind what the 64 KiB link queue already holds.
                tokio::time::sleep(Duration::from_secs(5)).await;
            },
        );
        assert_eq!(
            entries(&l),
            ["client: carrier aborted", "server: connection error"],
            "{protocol}"
        );
    }
}

/// On real sockets: a dual-stack listener on `[::]` and a client to `localhost` race as Happy
/// Eyeballs says. Which versions the host has is the machine's (an IPv6 loopback or not):
/// the client asks AAAA only when an interface has an IPv6 address, the race starts with
/// IPv6 when AAAA answered with an address, and the carrier works either way.
#[test]
fn a_dual_stack_listener_on_real_sockets_is_reached_by_happy_eyeballs() {
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (server_config, client_config) = configs(&[protocol]);
        runtime().block_on(async move {
            let net: Arc<dyn Net> = postsock::net::TokioNet::shared();
            let has_v6 = net
                .interfaces()
                .iter()
                .any(|i| i.up && i.addrs.iter().any(|a| a.is_ipv6()));
            let any6 = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
            let any4 = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            // `[::]` takes IPv4 too on Linux; a host without IPv6 listens on 0.0.0.0.
            let bind = if has_v6 { any6 } else { any4 };
            let mut listener = Listener::bind(net.clone(), bind, server_config)
                .await
                .expect("bind");
            let port = listener.local_addr().port();
            tokio::spawn(async move {
                while let Ok(carrier) = listener.accept().await {
                    tokio::spawn(async move {
                        while let Ok(Some(m)) = carrier.receive().await {
                            let _ = carrier.send(m.data).await;
                        }
                    });
                }
            });
            let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
                .await
                .expect("initiate");
            carrier.send(&b"hello"[..]).await.expect("send");
            let echo = tokio::time::timeout(Duration::from_secs(10), carrier.receive())
                .await
                .expect("an echo in time")
                .expect("receive")
                .expect("a message");
            assert_eq!(&echo.data[..], b"hello");
            let report = carrier.establishment().expect("a race").clone();
            let resolution = report.resolution.clone().expect("a resolution");
            let asked: Vec<_> = resolution
                .queries
                .iter()
                .map(|q| q.family)
                .chain(resolution.unanswered.iter().copied())
                .collect();
            assert_eq!(
                asked.contains(&postsock::net::Family::V6),
                has_v6,
                "AAAA asked exactly when the host has IPv6: {resolution:?}"
            );
            let aaaa = resolution
                .queries
                .iter()
                .find(|q| q.family == postsock::net::Family::V6)
                .is_some_and(|q| !q.addresses.is_empty());
            let winner = report.winner().expect("a winner");
            assert_eq!(
                winner.remote.is_ipv6(),
                aaaa,
                "{protocol:?}: the race starts with IPv6 when AAAA has an address: {report:?}"
            );
        });
    }
}

/// Simulated time from sending the last of `count` 1 KiB messages on a new TLS/TCP carrier to
/// its acknowledgement (link RTT 40 ms, 100 Mbit/s).
fn last_ack_after(count: usize) -> Duration {
    let took: Arc<Mutex<Option<Duration>>> = Arc::default();
    let out = took.clone();
    simulate(
        link(10, Some(100_000)),
        configs(&[Protocol::TlsTcp]),
        drain,
        move |carrier| async move {
            let mut last = None;
            for _ in 0..count {
                last = Some((
                    tokio::time::Instant::now(),
                    carrier.send(vec![7u8; 1024]).await.expect("send"),
                ));
            }
            let (at, handle) = last.expect("sent");
            assert_eq!(handle.outcome().await, SendStatus::Acked);
            *out.lock().expect("lock") = Some(at.elapsed());
        },
    );
    let took = *took.lock().expect("lock");
    took.expect("acknowledged")
}

#[test]
fn a_frame_that_fills_the_senders_window_is_acknowledged_without_the_receivers_delay() {
    // A new carrier's window is 16 KiB of ACK units (1025 per 1 KiB message): the 16th
    // message fills it, and nothing more could go until an ACK. Its frame asks for the ACK at
    // once (FLAG_ACK_NOW); the 15th's waits for the receiver's ACK delay (1 ms).
    let fifteen = last_ack_after(15);
    let sixteen = last_ack_after(16);
    assert!(
        sixteen + Duration::from_micros(500) < fifteen,
        "16 messages: last acked after {sixteen:?}; 15: {fifteen:?}"
    );
    assert!(
        sixteen >= Duration::from_millis(40),
        "at least the RTT: {sixteen:?}"
    );
}

#[test]
fn tls_reads_the_simulations_calendar_so_tickets_age_in_simulated_time() {
    // A session ticket's expiry is the simulation's calendar (2026-01-01 00:00 UTC at the
    // start, then simulated time) plus the lifetime the server gave it (24 h), whatever the
    // wall clock says; and a file saved after 90 simulated seconds still holds it.
    const EPOCH_S: u64 = 1_767_225_600;
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (server, mut client) = configs(&[protocol]);
        let store = postsock::Associations::new(Duration::from_secs(600));
        client.associations = Some(store.clone());
        let dir = common::TempDir::new(&format!("calendar-{protocol}"));
        let file = dir.join("associations.json");
        let saved = file.clone();
        let echo = |carrier: Carrier| async move {
            while let Ok(Some(m)) = carrier.receive().await {
                if carrier.send_bytes(m.data).await.is_err() {
                    break;
                }
            }
        };
        run_on(
            On::Sim(Box::new(link(10, None))),
            (server, client),
            echo,
            move |carrier| async move {
                carrier.send_bytes(vec![1u8; 10]).await.expect("send");
                carrier.receive().await.expect("receive").expect("echo");
                carrier.close().await.expect("close");
                tokio::time::sleep(Duration::from_secs(90)).await;
                store.save(&saved).expect("save");
            },
        );
        let text = std::fs::read_to_string(&file).expect("saved");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let sessions = &json["associations"][0]["sessions"];
        let tickets = sessions[if protocol == Protocol::Quic {
            "quic"
        } else {
            "tls_tcp"
        }]
        .as_array()
        .expect("tickets");
        assert!(!tickets.is_empty(), "{text}");
        for t in tickets {
            // Received within the first simulated second.
            assert_eq!(
                t["valid_until"],
                EPOCH_S + 24 * 60 * 60,
                "{protocol}: {text}"
            );
        }
    }
}

/// Byte `j` of test message `i`: a different sequence per message, so a buffer handed to the
/// wrong message shows.
fn pattern(i: usize, j: usize) -> u8 {
    ((i * 31 + j * 7) % 251) as u8
}

/// Long messages (many frames) are reassembled in buffers a carrier reuses once the
/// application drops a message: messages the application still holds stay intact while
/// later ones arrive into the buffers of those it dropped.
#[test]
fn long_messages_held_by_the_application_stay_intact_while_more_arrive() {
    const COUNT: usize = 8;
    let size = |i: usize| 100 * 1024 + i * 60 * 1024 + i;
    for on in everywhere() {
        let report: Arc<Mutex<Option<Vec<String>>>> = Arc::default();
        let r = report.clone();
        run_on(
            on.clone(),
            configs(&[Protocol::TlsTcp]),
            move |carrier: Carrier| {
                let r = r.clone();
                async move {
                    let (mut held, mut problems) = (Vec::new(), Vec::new());
                    for i in 0..COUNT {
                        let Ok(Some(m)) = carrier.receive().await else {
                            problems.push(format!("message {i} missing"));
                            break;
                        };
                        if m.data.len() != size(i) {
                            problems.push(format!("message {i}: {} bytes", m.data.len()));
                        }
                        // Every other message is kept; the rest go at once.
                        if i % 2 == 1 {
                            held.push((i, m.data));
                        }
                    }
                    for (i, data) in &held {
                        if let Some(j) = (0..data.len()).find(|&j| data[j] != pattern(*i, j)) {
                            problems.push(format!("held message {i} changed at byte {j}"));
                        }
                    }
                    *r.lock().expect("report") = Some(problems);
                    drain(carrier).await;
                }
            },
            move |carrier| async move {
                let mut handles = Vec::new();
                for i in 0..COUNT {
                    let data: Vec<u8> = (0..size(i)).map(|j| pattern(i, j)).collect();
                    handles.push(carrier.send(data).await.expect("send"));
                }
                for h in handles {
                    assert_eq!(h.outcome().await.name(), "acked");
                }
                for _ in 0..100 {
                    if report.lock().expect("report").is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let problems = report.lock().expect("report").take();
                assert_eq!(problems, Some(Vec::new()), "{on:?}");
                carrier.close().await.expect("close");
            },
        );
    }
}

/// The client's stats right after it initiated, and once `count` messages of 1 KiB sent in
/// one go are all acknowledged; the server reads and drops them.
fn stats_around_a_bulk_send(
    uplink: LinkParams,
    protocol: Protocol,
    count: usize,
) -> (CarrierStats, CarrierStats) {
    let got: Arc<Mutex<Vec<CarrierStats>>> = Arc::default();
    let out = got.clone();
    simulate(
        uplink,
        configs(&[protocol]),
        drain,
        move |carrier| async move {
            out.lock().expect("stats").push(carrier.stats());
            let mut last = None;
            for _ in 0..count {
                last = Some(carrier.send(vec![1u8; 1024]).await.expect("send"));
            }
            let outcome = last.expect("a message").outcome().await;
            assert_eq!(outcome, SendStatus::Acked, "{protocol}");
            out.lock().expect("stats").push(carrier.stats());
            carrier.close().await.expect("close");
        },
    );
    let got = got.lock().expect("stats").clone();
    assert_eq!(got.len(), 2, "{protocol}: the client did not finish");
    (got[0].clone(), got[1].clone())
}

#[test]
fn stats_report_the_path_and_the_quic_send_loops_measured_limit() {
    // 10 ms from the client to the core and 10 from the core to the server: a 40 ms RTT.
    let path_rtt = Duration::from_millis(40);

    // QUIC on a path of unlimited rate: each message's stream completes one RTT after it
    // opened, so completions a second × the least RTT is the limit itself, and twice that
    // is more than the 512 it starts from: it never comes down.
    let (fresh, fast) = stats_around_a_bulk_send(link(10, None), Protocol::Quic, 3000);
    assert_eq!(fresh.protocol, Protocol::Quic);
    assert_eq!(fresh.message_limit, Some(512), "{fresh:?}");
    assert_eq!(fresh.rtt, Some(path_rtt), "{fresh:?}");
    assert_eq!(fast.message_limit, Some(512), "{fast:?}");
    assert_eq!(fast.lost_packets, Some(0), "{fast:?}");
    assert!(fast.send_window > fresh.send_window, "{fresh:?} {fast:?}");

    // The same over a 10 Mbit/s uplink with a queue deep enough for the congestion window
    // to outgrow 512 messages without a loss: about 1,100 messages of 1 KiB complete a
    // second, × the 40 ms least RTT × 2 is about 90 messages in flight needed, under the
    // least limit; the streams, not the window, hold the sender back (the queue makes the
    // smoothed RTT grow well past 40 ms), so the limit halves to 256 and then to 128.
    let slow_link = LinkParams {
        queue_bytes: 4 << 20,
        ..link(10, Some(10_000))
    };
    let (_, slow) = stats_around_a_bulk_send(slow_link, Protocol::Quic, 3000);
    assert_eq!(slow.message_limit, Some(128), "{slow:?}");
    assert_eq!(slow.lost_packets, Some(0), "{slow:?}");
    assert!(slow.rtt.is_some_and(|r| r > 2 * path_rtt), "{slow:?}");

    // TLS/TCP: no RTT until the first ACK frame, then one from postsock's own ACKs (at
    // least the path's); its ACK window grows from 16 KiB with the measured delivery rate.
    let (fresh, after) = stats_around_a_bulk_send(link(10, None), Protocol::TlsTcp, 3000);
    assert_eq!(fresh.protocol, Protocol::TlsTcp);
    assert_eq!(
        (fresh.rtt, fresh.send_window),
        (None, 16 * 1024),
        "{fresh:?}"
    );
    assert!(after.rtt.is_some_and(|r| r >= path_rtt), "{after:?}");
    assert!(after.send_window > 16 * 1024, "{after:?}");
    assert_eq!((after.message_limit, after.lost_packets), (None, None));
}
