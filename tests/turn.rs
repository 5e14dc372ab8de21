//! TURN (RFC 8656): postsock's client and server in the simulator (relaying both ways,
//! channels, permissions honoured), bad input at the server, the `postsock turn-server`
//! command, and two postsock peers meeting through a real coturn allocation over QUIC.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::{Net, TokioNet};
use postsock::traversal::punch::{PathKind, PunchConfig, RelayPolicy};
use postsock::traversal::rendezvous::RendezvousServer;
use postsock::traversal::stun::{self, Demux, Via};
use postsock::traversal::turn::{self, TurnConfig, TurnServer, TurnServerConfig, TurnStats};
use postsock::{Carrier, Configuration, Protocol, Remote, Security, TestCa};
use sim::{NatPreset, World, WorldSpec};

use common::{free_udp_port, postsock_bin, sim_host, sim_nat, Child, Coturn};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

fn turn_config(server: SocketAddr) -> TurnConfig {
    TurnConfig {
        server,
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

type Log = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

#[test]
fn datagrams_are_relayed_both_ways_and_only_from_permitted_peers() {
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![
            sim_host("client", Some("nat"), 5),
            sim_host("turn", None, 10),
            sim_host("peer", None, 10),
            sim_host("stranger", None, 10),
        ],
        gateways: vec![sim_nat("nat", NatPreset::PortRestrictedCone)],
    };
    let mut world = World::new(&spec, 7, Duration::from_secs(30)).expect("world");
    let stats: Arc<Mutex<Option<Arc<TurnStats>>>> = Default::default();
    let turn_ip = world.ip("turn").expect("ip");
    let turn_net: Arc<dyn Net> = world.net("turn").expect("net");
    let s = stats.clone();
    world
        .host("turn", move || {
            let (net, s) = (turn_net.clone(), s.clone());
            async move {
                let mut config = TurnServerConfig::new(USER, PASSWORD);
                config.relay_ip = Some(turn_ip);
                let server = TurnServer::bind(net, ([0, 0, 0, 0], 3478).into(), config).await?;
                *s.lock().expect("lock") = Some(server.stats());
                server.run().await;
                Ok(())
            }
        })
        .expect("host");
    let relayed: Arc<Mutex<Option<SocketAddr>>> = Default::default();
    // The peer answers every datagram with "pong"; the stranger tries to get in.
    let peer_log: Log = Default::default();
    for who in ["peer", "stranger"] {
        let net: Arc<dyn Net> = world.net(who).expect("net");
        let (log, relayed) = (peer_log.clone(), relayed.clone());
        world
            .client(who, async move {
                let socket = net.bind_udp(([0, 0, 0, 0], 5000).into()).await?;
                if who == "stranger" {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let to = *relayed.lock().expect("lock");
                        if let Some(to) = to {
                            for _ in 0..3 {
                                stun::send_to(socket.as_ref(), to, b"intrude").await?;
                            }
                            // (A host's datagrams in flight go when its program ends.)
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return Ok(());
                        }
                    }
                }
                loop {
                    let (from, data) = stun::recv_from(socket.as_ref()).await?;
                    log.lock().expect("lock").push((from, data.to_vec()));
                    stun::send_to(socket.as_ref(), from, b"pong").await?;
                    if data.as_ref() == b"ping 2" {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return Ok(());
                    }
                }
            })
            .expect("client");
    }
    let client_log: Log = Default::default();
    let net: Arc<dyn Net> = world.net("client").expect("net");
    let peer: SocketAddr = (world.ip("peer").expect("ip"), 5000).into();
    let (log, r) = (client_log.clone(), relayed.clone());
    world
        .client("client", async move {
            let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            let demux = Demux::new(socket);
            // Somebody must read the socket for the TURN client's answers to arrive: here a
            // task that hands on what is not STUN (as quinn would read it).
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let reader = demux.clone();
            tokio::spawn(async move {
                while let Ok(got) = stun::recv_from(reader.as_ref()).await {
                    let _ = tx.send(got);
                }
            });
            let alloc =
                turn::allocate(net.clone(), &demux, &turn_config((turn_ip, 3478).into())).await?;
            assert_eq!(alloc.relayed().ip(), turn_ip);
            *r.lock().expect("lock") = Some(alloc.relayed());
            alloc.permit(&[peer.ip()]).await?;
            alloc.keep(&demux);
            demux.set_route(peer, Via::Relay);
            stun::send_to(demux.as_ref(), peer, b"ping 1").await?;
            let (from, data) = rx.recv().await.expect("pong 1");
            log.lock().expect("lock").push((from, data.to_vec()));
            // By now a channel is bound for the peer: the second round uses ChannelData.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stun::send_to(demux.as_ref(), peer, b"ping 2").await?;
            let (from, data) = rx.recv().await.expect("pong 2");
            log.lock().expect("lock").push((from, data.to_vec()));
            // Nothing else arrives: the stranger had no permission.
            let more = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
            assert!(more.is_err(), "unexpected {more:?}");
            // Everything our server sent was well-formed relayed data or a response.
            assert_eq!(demux.relay_dropped(), 0);
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let relayed = relayed.lock().expect("lock").expect("allocated");
    let peer_log = peer_log.lock().expect("lock").clone();
    assert_eq!(
        peer_log,
        vec![(relayed, b"ping 1".to_vec()), (relayed, b"ping 2".to_vec())],
        "the peer hears the client from the relayed address only"
    );
    let client_log = client_log.lock().expect("lock").clone();
    assert_eq!(
        client_log,
        vec![(peer, b"pong".to_vec()), (peer, b"pong".to_vec())]
    );
    let stats = stats.lock().expect("lock").clone().expect("stats");
    assert_eq!(stats.allocations(), 1);
    assert_eq!(stats.channels(), 1, "one channel bound for the peer");
    assert_eq!((stats.relayed_out(), stats.relayed_in()), (2, 2));
    assert_eq!(stats.unpermitted(), 3, "the stranger's three datagrams");
    // The client's first Allocate carried no credentials (the 401 exchange).
    assert_eq!(stats.unauthenticated(), 1);
}

/// A TURN server on loopback (real sockets) and its stats.
async fn real_server() -> (TurnServer, SocketAddr) {
    let server = TurnServer::bind(
        TokioNet::shared(),
        ([127, 0, 0, 1], 0).into(),
        TurnServerConfig::new(USER, PASSWORD),
    )
    .await
    .expect("bind");
    let addr = server.local_addr();
    (server, addr)
}

async fn allocate(net: &Arc<dyn Net>, config: &TurnConfig) -> postsock::Result<turn::Allocation> {
    let socket = net.bind_udp(([127, 0, 0, 1], 0).into()).await.expect("udp");
    let demux = Demux::new(socket);
    demux.pump();
    turn::allocate(net.clone(), &demux, config).await
}

#[tokio::test]
async fn bad_input_is_dropped_and_counted_and_never_relayed() {
    let (server, addr) = real_server().await;
    let stats = server.stats();
    let net = TokioNet::shared();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let victim_addr = victim.local_addr().expect("addr");

    // A good allocation for reference, made by postsock's client.
    let alloc = allocate(&net, &turn_config(addr)).await.expect("allocate");
    let relayed = alloc.relayed();

    let send_indication =
        turn::send_indication([7; 12], victim_addr, b"spoofed").expect("small enough");
    let binding = stun::binding_request([1; 12]);
    let mut oversized = binding.clone();
    oversized.extend(vec![0u8; 2000]);
    oversized[2..4].copy_from_slice(&(2000u16).to_be_bytes());
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", binding[..12].to_vec()),
        ("oversized", oversized),
        ("garbage", vec![0xff; 64]),
        (
            "ChannelData longer than the datagram",
            vec![0x40, 0x00, 0x01, 0x00, 1, 2, 3],
        ),
        ("ChannelData with only a header", vec![0x40, 0x00]),
        ("a response, not a request", {
            let mut r = binding.clone();
            r[0..2].copy_from_slice(&[0x01, 0x01]);
            r
        }),
    ];
    for (what, bytes) in &malformed {
        attacker
            .send_to(bytes, addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // No allocation: relaying is refused.
    attacker
        .send_to(&send_indication, addr)
        .await
        .expect("send");
    attacker
        .send_to(&turn::channel_data(0x4000, b"spoofed"), addr)
        .await
        .expect("send");
    // Allocate with a wrong password, and with the right user but a tampered message.
    let wrong = allocate(
        &net,
        &TurnConfig {
            password: "guess".into(),
            ..turn_config(addr)
        },
    )
    .await
    .expect_err("a wrong password is refused");
    assert!(wrong.to_string().contains("401 Unauthorized"), "{wrong}");
    let unknown = allocate(
        &net,
        &TurnConfig {
            username: "mallory".into(),
            ..turn_config(addr)
        },
    )
    .await
    .expect_err("an unknown user is refused");
    assert!(
        unknown.to_string().contains("401 Unauthorized"),
        "{unknown}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Nothing reached the victim, and the relayed address sent nothing anywhere.
    let mut buf = [0u8; 64];
    let heard = tokio::time::timeout(Duration::from_millis(300), victim.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "the victim heard {heard:?}");
    assert_eq!(stats.relayed_out(), 0);
    assert_eq!(stats.malformed(), malformed.len() as u64);
    assert_eq!(stats.unpermitted(), 2);
    // The good client's first try, then two tries of each of the two bad clients.
    assert_eq!(stats.unauthenticated(), 1 + 2 + 2);
    assert_eq!(stats.allocations(), 1);

    // The server still serves: a permitted peer's datagram reaches the good client.
    alloc.permit(&[victim_addr.ip()]).await.expect("permit");
    victim.send_to(b"hello", relayed).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats.relayed_in(), 1);
}

#[test]
fn the_turn_server_command_serves_allocations() {
    let (_server, listen) = turn_server_process();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let net = TokioNet::shared();
        let mut last = None;
        for _ in 0..20 {
            match allocate(&net, &turn_config(listen)).await {
                Ok(a) => {
                    assert_eq!(a.relayed().ip(), listen.ip());
                    assert!(a.mapped().is_some());
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no allocation from `postsock turn-server`: {last:?}");
    });
}

/// Two peers meet through the rendezvous server and talk over QUIC through a coturn relay.
/// On loopback the relayed checks sometimes all fail within `checks_for` (5 s): measured
/// 1 in 40 runs before this work (commit 6f4c6b6) and 2-5 in 40 after it, with errors from
/// both peers ("no candidate pair worked ... including through the TURN relay", "the peer
/// did not open the QUIC connection"); not understood yet (docs/ARCHITECTURE.md). The
/// meeting is tried up to three times, each with a fresh coturn; a relay path that does not
/// work fails all three.
#[test]
fn two_peers_exchange_quic_messages_through_a_coturn_allocation() {
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        match rt.block_on(coturn_meeting()) {
            Ok(()) => {
                if !failures.is_empty() {
                    eprintln!("met on attempt {attempt} after: {failures:?}");
                }
                return;
            }
            Err(e) => failures.push(e),
        }
    }
    panic!("no meeting through coturn in three attempts: {failures:#?}");
}

async fn coturn_meeting() -> Result<(), String> {
    let coturn = Coturn::start();
    let net = TokioNet::shared();
    // The rendezvous server, in process on loopback.
    let ca = TestCa::new("rendezvous CA").expect("ca");
    let mut rdv_config = Configuration::default();
    rdv_config.protocols(&[Protocol::Quic]).security(Security {
        identity: Some(ca.issue(&["localhost"]).expect("identity")),
        ..Security::default()
    });
    let rdv = RendezvousServer::bind(
        net.clone(),
        ([127, 0, 0, 1], 0).into(),
        rdv_config,
        Duration::from_secs(10),
    )
    .await
    .expect("rendezvous");
    let mut trust = Configuration::default();
    trust.protocols(&[Protocol::Quic]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    let mut cfg = PunchConfig::new(
        Remote::new("localhost", rdv.local_addr().port()),
        trust,
        coturn.addr(),
    );
    cfg.turn = Some(TurnConfig {
        server: coturn.addr(),
        username: Coturn::USER.into(),
        password: Coturn::PASSWORD.into(),
    });
    // On loopback a direct pair would always work: relay only, so the relay is what carries.
    cfg.relay = RelayPolicy::Only;
    let peer = |who: &'static str| {
        let (net, cfg) = (net.clone(), cfg.clone());
        async move {
            let secret = b"two peers who only trust the relay";
            let carrier = Carrier::rendezvous(net.clone(), secret, &cfg, Configuration::default())
                .await
                .map_err(|e| format!("{who}: {e}"))?;
            let report = carrier
                .rendezvous_report()
                .cloned()
                .expect("a rendezvous report");
            let mine = format!("hello from {who}");
            let failed = |what: &str, e: String| format!("{who}: {what}: {e}");
            carrier
                .send_bytes(mine.clone())
                .await
                .map_err(|e| failed("send", e.to_string()))?;
            let got = carrier
                .receive()
                .await
                .map_err(|e| failed("receive", e.to_string()))?
                .ok_or_else(|| failed("receive", "the carrier closed".into()))?;
            // Let the peer's acknowledgement come before the carrier goes.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, String>((report, got.data.to_vec()))
        }
    };
    let (alice, bob) = tokio::join!(peer("alice"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peer("bob").await
    });
    let ((ra, got_a), (rb, got_b)) = (alice?, bob?);
    assert_eq!(got_a, b"hello from bob");
    assert_eq!(got_b, b"hello from alice");
    for r in [&ra, &rb] {
        match r.path {
            PathKind::Relayed { relay } => {
                assert!(Coturn::RELAY_PORTS.contains(&relay.port()), "{r:?}");
            }
            other => panic!("not relayed: {other:?}"),
        }
    }
    Ok(())
}

/// Starts `postsock turn-server` on a free loopback port, relaying on loopback.
fn turn_server_process() -> (Child, SocketAddr) {
    let listen: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let child = Child(
        std::process::Command::new(postsock_bin())
            .args([
                "turn-server",
                "--listen",
                &listen.to_string(),
                "--user",
                &format!("{USER}:{PASSWORD}"),
                "--relay-ip",
                "127.0.0.1",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn turn-server"),
    );
    (child, listen)
}

/// Waits (up to 10 s) until `addr` answers a UDP datagram: a STUN Binding request for a
/// TURN server, anything for `turnutils_peer`, which echoes what it gets.
fn wait_until_answering(addr: SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let probe = stun::binding_request([1; 12]);
    let mut buf = [0u8; 1500];
    for _ in 0..100 {
        let _ = socket.send_to(&probe, addr);
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("nothing answers on {addr}");
}

/// Runs coturn's `turnutils_uclient` with `flags` against `server` and a `turnutils_peer`
/// echo peer, 10 messages of `len` bytes; returns its exit status and output. Bounded: a
/// client that hangs (as it did when the server ignored its ChannelBind) is killed.
fn uclient(server: SocketAddr, flags: &[&str], len: usize) -> (Option<i32>, String) {
    common::ensure_installed("turnutils_uclient", "coturn");
    let peer_port = free_udp_port();
    let _peer = Child(
        std::process::Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer"),
    );
    wait_until_answering(([127, 0, 0, 1], peer_port).into());
    wait_until_answering(server);
    let (len, peer_port, port) = (
        len.to_string(),
        peer_port.to_string(),
        server.port().to_string(),
    );
    let mut args = vec!["-c"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-p",
        &port,
        "-n",
        "10",
        "-l",
        &len,
        "127.0.0.1",
    ]);
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg("turnutils_uclient")
        .args(&args)
        .output()
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// coturn's client in channel mode: its ChannelBind uses RFC 5766's channel range (0x4000 to
/// 0x7FFF); RFC 8656 allows 0x4000-0x4FFF, so a number above is answered 400 (the client used
/// to wait for ever: the request did not decode and was dropped). Its Allocate carries
/// EVEN-PORT and REQUESTED-ADDRESS-FAMILY, which the server now understands (an unknown
/// comprehension-required attribute would get 420).
#[test]
fn coturns_client_in_channel_mode_gets_an_answer_to_every_request() {
    let (_server, listen) = turn_server_process();
    let (code, out) = uclient(listen, &["-v"], 100);
    assert_ne!(code, Some(124), "turnutils_uclient hung:\n{out}");
    // It allocated (EVEN-PORT, REQUESTED-ADDRESS-FAMILY understood) and refreshed...
    assert!(out.contains("Received relay addr: 127.0.0.1:"), "{out}");
    // (The error as coturn prints it: a bare "420" also matches relay ports like 42004.)
    assert!(!out.contains("error 420"), "{out}");
    // ...and either its random channel number was in range and it relayed, or it was not
    // and the server said so.
    let relayed = out.contains("tot_send_msgs=10, tot_recv_msgs=10");
    let refused = out.contains("channel bind: error 400 (Bad Request)");
    assert!(relayed || refused, "{out}");
}

/// coturn's client with Send indications (`-s`) of 2000 bytes, larger than a 1500-byte
/// Ethernet datagram: relayed to the peer and back as coturn relays them, none lost.
#[test]
fn coturns_client_relays_send_indications_larger_than_1500_bytes() {
    let (_server, listen) = turn_server_process();
    let (code, out) = uclient(listen, &["-s"], 2000);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("tot_send_msgs=10, tot_recv_msgs=10"), "{out}");
    assert!(
        out.contains("tot_send_bytes ~ 20000, tot_recv_bytes ~ 20000"),
        "{out}"
    );
    assert!(out.contains("Total lost packets 0"), "{out}");
}
