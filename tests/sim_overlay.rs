//! The simulator's overlay on turmoil: TCP costs a full RTT, gateways translate addresses,
//! hosts behind gateways are unreachable from outside.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::Net;
use postsock::{Carrier, Configuration, Listener, Protocol, Remote, Security, TestCa};
use sim::{GatewaySpec, World, WorldSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::sim_host as host;

/// The gateway `nat`, `latency_ms` from the core, translating as `nat` says.
fn gateway(latency_ms: u64, nat: sim::NatSpec) -> GatewaySpec {
    GatewaySpec {
        name: "nat".into(),
        latency_ms,
        middlebox: Default::default(),
        nat,
        behind: None,
        link: None,
    }
}

fn spec() -> WorldSpec {
    WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("inside", Some("nat"), 5),
            host("direct", None, 0),
            host("server", None, 20),
        ],
        gateways: vec![gateway(10, Default::default())],
    }
}

/// Milliseconds of simulated time a TCP connect + 1-byte echo takes from `client`.
fn tcp_connect_time(client: &str) -> (u128, u128) {
    let mut world = World::new(&spec(), 1, Duration::from_secs(10)).expect("world");
    let server = world.net("server").expect("net");
    world
        .host("server", move || {
            let server = server.clone();
            async move {
                let listener = server.listen_tcp(([0, 0, 0, 0], 80).into()).await?;
                loop {
                    let (mut s, _) = listener.accept().await?;
                    tokio::spawn(async move {
                        let mut b = [0u8; 1];
                        if s.read_exact(&mut b).await.is_ok() {
                            let _ = s.write_all(&b).await;
                        }
                    });
                }
            }
        })
        .expect("host");
    let net = world.net(client).expect("net");
    let result = Arc::new(Mutex::new((0, 0)));
    let out = result.clone();
    world
        .client(client, async move {
            let addr = net.resolve("server", 80).await?[0];
            let start = tokio::time::Instant::now();
            let mut s = net.connect_tcp(addr).await?;
            let connected = start.elapsed().as_millis();
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            *out.lock().expect("lock") = (connected, start.elapsed().as_millis());
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let r = *result.lock().expect("lock");
    r
}

#[test]
fn tcp_connect_costs_one_full_round_trip() {
    // direct (0 ms) ↔ server (20 ms): RTT 40 ms; connect, then one more RTT for the echo.
    assert_eq!(tcp_connect_time("direct"), (40, 80));
    // inside → nat 5 ms, nat → server 10 + 20 ms: RTT 70 ms, also through the splice.
    assert_eq!(tcp_connect_time("inside"), (70, 140));
}

/// Runs a carrier from `client` to the server; returns the address the server saw and the
/// addresses of the client and the gateway.
fn peer_seen_by_server(client: &str, protocol: Protocol) -> (SocketAddr, IpAddr, IpAddr) {
    let mut world = World::new(&spec(), 3, Duration::from_secs(10)).expect("world");
    let ca = TestCa::new("ca").expect("ca");
    let mut server_config = Configuration::default();
    server_config.protocols(&[protocol]).security(Security {
        identity: Some(ca.issue(&["server"]).expect("identity")),
        ..Security::default()
    });
    let mut client_config = Configuration::default();
    client_config.protocols(&[protocol]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let server_net: Arc<dyn Net> = world.net("server").expect("net");
    let seen_s = seen.clone();
    world
        .host("server", move || {
            let (net, config, seen) = (server_net.clone(), server_config.clone(), seen_s.clone());
            async move {
                let mut listener = Listener::bind(net, ([0, 0, 0, 0], 4433).into(), config).await?;
                let carrier = listener.accept().await?;
                let msg = carrier.receive().await?.expect("a message");
                *seen.lock().expect("lock") = Some(carrier.peer_addr());
                carrier.send_bytes(msg.data).await?;
                carrier.close().await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("host");
    let client_net: Arc<dyn Net> = world.net(client).expect("net");
    world
        .client(client, async move {
            let carrier =
                Carrier::initiate(client_net, Remote::new("server", 4433), client_config).await?;
            carrier.send_bytes(&b"who am I"[..]).await?;
            let echo = carrier.receive().await?.expect("echo");
            assert_eq!(&echo.data[..], b"who am I");
            carrier.close().await?;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let peer = seen.lock().expect("lock").expect("server saw a carrier");
    (
        peer,
        world.ip(client).expect("ip"),
        world.ip("nat").expect("ip"),
    )
}

#[test]
fn gateway_translates_addresses_for_quic_and_tls() {
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (peer, inside_ip, nat_ip) = peer_seen_by_server("inside", protocol);
        assert_eq!(
            peer.ip(),
            nat_ip,
            "{protocol}: server should see the gateway"
        );
        assert_ne!(peer.ip(), inside_ip);
        let (peer, direct_ip, _) = peer_seen_by_server("direct", protocol);
        assert_eq!(
            peer.ip(),
            direct_ip,
            "{protocol}: a public host is seen as itself"
        );
    }
    // QUIC through an endpoint-independent, port-preserving NAT keeps the client's port.
    let (peer, _, _) = peer_seen_by_server("inside", Protocol::Quic);
    assert!(peer.port() >= 1024);
}

/// A public host sends to the inside address of a host behind a gateway, and to a public
/// host, through the stack's own sockets: the public one hears every datagram, the inside one
/// none (the sender's network drops what is addressed to an unroutable address; the world
/// has no turmoil partition per pair of hosts any more, so a raw turmoil socket would get
/// through, and the stack never uses one).
#[test]
fn public_hosts_get_links_for_the_pairs_that_talk_with_their_paths_latency() {
    use postsock::net::datagram;
    // 60 public clients 5 ms from the core, one server 20 ms from it: each client's round
    // trip to the server is 2 × 25 ms. Any two public hosts could talk, but only the 60
    // client-server pairs do: 60 links, not the 1,830 of a link per pair.
    let clients: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
    let mut hosts = vec![host("server", None, 20)];
    hosts.extend(clients.iter().map(|c| host(c, None, 5)));
    let spec = WorldSpec {
        dns: Default::default(),
        hosts,
        gateways: vec![],
    };
    let mut world = World::new(&spec, 1, Duration::from_secs(5)).expect("world");
    let server_ip = world.ip("server").expect("server");
    udp_echo_server(&mut world, "server");
    let rtts: Arc<Mutex<Vec<u128>>> = Arc::default();
    for (i, name) in clients.iter().enumerate() {
        let (net, rtts) = (world.net(name).expect("net"), rtts.clone());
        world
            .client(name.as_str(), async move {
                // Staggered, so that links are made while the simulation runs.
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
                let start = tokio::time::Instant::now();
                datagram::send_to(socket.as_ref(), (server_ip, 9000).into(), b"ping").await?;
                datagram::recv_from(socket.as_ref()).await?;
                rtts.lock().expect("rtts").push(start.elapsed().as_millis());
                Ok(())
            })
            .expect("client");
    }
    while !world.step().expect("step") {}
    assert_eq!(
        *rtts.lock().expect("rtts"),
        vec![50; 60],
        "round trips in ms"
    );
    assert_eq!(world.links_made(), 60);
}

#[test]
fn what_a_finished_client_left_running_goes_with_it_and_sends_nothing() {
    use postsock::net::{datagram, AsyncUdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    /// Sends a datagram when dropped (as a protocol stack saying goodbye in a destructor),
    /// and says it was.
    struct SendsOnDrop {
        socket: Arc<dyn AsyncUdpSocket>,
        to: SocketAddr,
        dropped: Arc<AtomicBool>,
    }
    impl Drop for SendsOnDrop {
        fn drop(&mut self) {
            self.dropped.store(true, SeqCst);
            let _ = self.socket.try_send(&quinn::udp::Transmit {
                destination: self.to,
                ecn: None,
                contents: b"bye",
                segment_size: None,
                src_ip: None,
            });
        }
    }

    let mut world = World::new(&spec(), 1, Duration::from_secs(5)).expect("world");
    let server_ip = world.ip("server").expect("server");
    let heard: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (server, got) = (world.net("server").expect("net"), heard.clone());
    world
        .host("server", move || {
            let (server, got) = (server.clone(), got.clone());
            async move {
                let socket = server.bind_udp(([0, 0, 0, 0], 9000).into()).await?;
                loop {
                    let (_, data) = datagram::recv_from(socket.as_ref()).await?;
                    got.lock().expect("heard").push(data.to_vec());
                }
            }
        })
        .expect("host");
    let dropped = Arc::new(AtomicBool::new(false));
    let (direct, flag) = (world.net("direct").expect("net"), dropped.clone());
    world
        .client("direct", async move {
            let socket = direct.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            let to = SocketAddr::new(server_ip, 9000);
            datagram::send_to(socket.as_ref(), to, b"hello").await?;
            // A task that outlives the program, as a carrier's do.
            let guard = SendsOnDrop {
                socket,
                to,
                dropped: flag,
            };
            tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
            Ok(())
        })
        .expect("client");
    // A second client keeps the world running after the first is done.
    world
        .client("inside", async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        })
        .expect("client");
    let mut steps = 0;
    while !world.step().expect("step") {
        steps += 1;
        if steps == 100 {
            assert!(
                dropped.load(SeqCst),
                "the finished client's task is dropped, not kept until the world goes"
            );
        }
    }
    assert_eq!(*heard.lock().expect("heard"), vec![b"hello".to_vec()]);
    let up = world.counters()["direct"].up;
    assert_eq!(
        (up.offered, up.delivered),
        (1, 1),
        "what it offered while exiting neither left nor counted"
    );
}

#[test]
fn a_host_behind_a_gateway_is_unreachable_from_outside() {
    use postsock::net::datagram;
    let mut world = World::new(&spec(), 1, Duration::from_secs(5)).expect("world");
    let inside_ip = world.net("inside").expect("net").ip();
    let server_ip = world.ip("server").expect("server");
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    for name in ["inside", "server"] {
        let (net, got) = (world.net(name).expect("net"), got.clone());
        world
            .host(name, move || {
                let (net, got) = (net.clone(), got.clone());
                async move {
                    let socket = net.bind_udp(([0, 0, 0, 0], 9000).into()).await?;
                    loop {
                        datagram::recv_from(socket.as_ref()).await?;
                        got.lock().expect("lock").push(name.to_owned());
                    }
                }
            })
            .expect("host");
    }
    let direct = world.net("direct").expect("net");
    world
        .client("direct", async move {
            let socket = direct.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            for _ in 0..10 {
                datagram::send_to(socket.as_ref(), (inside_ip, 9000).into(), b"knock").await?;
                datagram::send_to(socket.as_ref(), (server_ip, 9000).into(), b"knock").await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let got = got.lock().expect("lock").clone();
    assert_eq!(got, vec!["server".to_string(); 10], "who heard the knocks");
}

#[test]
fn a_nat_reboot_rebinds_the_client_and_quic_reports_the_path_change() {
    let mut world = World::new(&spec(), 5, Duration::from_secs(20)).expect("world");
    let ca = TestCa::new("ca").expect("ca");
    let mut server_config = Configuration::default();
    server_config
        .protocols(&[Protocol::Quic])
        .security(Security {
            identity: Some(ca.issue(&["server"]).expect("identity")),
            ..Security::default()
        });
    let mut client_config = Configuration::default();
    client_config
        .protocols(&[Protocol::Quic])
        .security(Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        });
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let server_net: Arc<dyn Net> = world.net("server").expect("net");
    let server_log = log.clone();
    world
        .host("server", move || {
            let (net, config, log) = (
                server_net.clone(),
                server_config.clone(),
                server_log.clone(),
            );
            async move {
                let mut listener = Listener::bind(net, ([0, 0, 0, 0], 4433).into(), config).await?;
                let carrier = listener.accept().await?;
                log.lock()
                    .expect("log")
                    .push(format!("peer {}", carrier.peer_addr()));
                while let Some(event) = carrier.next_event().await {
                    let line = match event {
                        postsock::Event::PathChange { remote } => format!("path {remote}"),
                        postsock::Event::Received(_) => "message".to_string(),
                        _ => continue,
                    };
                    log.lock().expect("log").push(line);
                }
                Ok(())
            }
        })
        .expect("host");
    let client_net: Arc<dyn Net> = world.net("inside").expect("net");
    world
        .client("inside", async move {
            let carrier =
                Carrier::initiate(client_net, Remote::new("server", 4433), client_config).await?;
            for i in 0..40u8 {
                let h = carrier.send(vec![i; 100]).await?;
                if i == 39 {
                    assert_eq!(h.outcome().await, postsock::SendStatus::Acked);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            carrier.close().await?;
            Ok(())
        })
        .expect("client");
    let mut rebooted = false;
    loop {
        if !rebooted && world.elapsed() >= Duration::from_millis(1000) {
            world
                .apply(&sim::Fault::NatReboot { host: "nat".into() })
                .expect("reboot");
            rebooted = true;
        }
        if world.step().expect("step") {
            break;
        }
    }
    let log = log.lock().expect("log").clone();
    let messages = log.iter().filter(|l| *l == "message").count();
    assert_eq!(messages, 40, "nothing lost across the rebinding: {log:?}");
    let paths: Vec<_> = log.iter().filter(|l| l.starts_with("path ")).collect();
    assert_eq!(paths.len(), 1, "one path change: {log:?}");
    let before: SocketAddr = log[0].trim_start_matches("peer ").parse().expect("addr");
    let after: SocketAddr = paths[0].trim_start_matches("path ").parse().expect("addr");
    assert_eq!(before.ip(), after.ip(), "same NAT address");
    assert_ne!(
        before.port(),
        after.port(),
        "a new public port after the reboot"
    );
}

/// A world with `inside` behind a NAT of the given behaviour, two servers and an outsider.
fn nat_world(nat: sim::NatSpec) -> WorldSpec {
    WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("inside", Some("nat"), 5),
            host("server-a", None, 10),
            host("server-b", None, 10),
            host("outsider", None, 10),
        ],
        gateways: vec![gateway(5, nat)],
    }
}

/// What the inside host saw of a NAT: the public addresses servers A and B observed for its
/// one socket, and which senders' datagrams got through to it.
#[derive(Debug, Default, Clone)]
struct NatView {
    seen_by: Vec<(String, SocketAddr)>,
    received_from: Vec<String>,
}

fn observe_nat(nat: sim::NatSpec, second_send_after: Duration) -> NatView {
    let mut world = World::new(&nat_world(nat), 9, Duration::from_secs(30)).expect("world");
    let view = Arc::new(Mutex::new(NatView::default()));
    let public_of_inside: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // Each server reports the source address it sees back to it, from port 7000 and 7001;
    // server A also tells the outsider, which then writes to that address unsolicited.
    for name in ["server-a", "server-b"] {
        let (v, p) = (view.clone(), public_of_inside.clone());
        let tag = name.to_string();
        world
            .host(name, move || {
                let (v, p, tag) = (v.clone(), p.clone(), tag.clone());
                async move {
                    let main = turmoil::net::UdpSocket::bind(("0.0.0.0", 7000)).await?;
                    let other = turmoil::net::UdpSocket::bind(("0.0.0.0", 7001)).await?;
                    let mut buf = [0u8; 64];
                    loop {
                        let (_, from) = main.recv_from(&mut buf).await?;
                        v.lock().expect("view").seen_by.push((tag.clone(), from));
                        *p.lock().expect("public") = Some(from);
                        main.send_to(b"from-7000", from).await?;
                        other.send_to(b"from-7001", from).await?;
                    }
                }
            })
            .expect("server");
    }
    let p = public_of_inside.clone();
    world
        .host("outsider", move || {
            let p = p.clone();
            async move {
                let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", 7002)).await?;
                loop {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let target = *p.lock().expect("public");
                    if let Some(t) = target {
                        socket.send_to(b"outsider", t).await?;
                    }
                }
            }
        })
        .expect("outsider");
    let gateway = world.ip("nat").expect("nat ip");
    let a = world.ip("server-a").expect("ip");
    let b = world.ip("server-b").expect("ip");
    let v = view.clone();
    world
        .client("inside", async move {
            let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", 5000)).await?;
            let via = (gateway, sim::overlay::OVERLAY_PORT);
            socket
                .send_to(&sim::overlay::encode((a, 7000).into(), b"hi"), via)
                .await?;
            let mut buf = [0u8; 128];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok((n, _))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            {
                if let Some((_, payload)) = sim::overlay::decode(&buf[..n]) {
                    let what = String::from_utf8_lossy(payload).to_string();
                    let mut v = v.lock().expect("view");
                    if !v.received_from.contains(&what) {
                        v.received_from.push(what);
                    }
                }
            }
            tokio::time::sleep(second_send_after).await;
            socket
                .send_to(&sim::overlay::encode((a, 7000).into(), b"again"), via)
                .await?;
            socket
                .send_to(&sim::overlay::encode((b, 7000).into(), b"hi"), via)
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let v = view.lock().expect("view").clone();
    v
}

fn nat(preset: sim::NatPreset) -> sim::NatSpec {
    sim::NatSpec {
        preset: Some(preset),
        ..Default::default()
    }
}

#[test]
fn nat_mapping_behaviour_decides_the_public_port_per_remote() {
    // Endpoint-independent mapping: both servers see the same public address.
    let cone = observe_nat(nat(sim::NatPreset::FullCone), Duration::ZERO);
    let ports: BTreeSet<_> = cone.seen_by.iter().map(|(_, a)| *a).collect();
    assert_eq!(ports.len(), 1, "{cone:?}");
    assert_eq!(cone.seen_by[0].1.port(), 5000, "port-preserving");
    // Symmetric: a new (random) port per remote endpoint.
    let sym = observe_nat(nat(sim::NatPreset::Symmetric), Duration::ZERO);
    let a: BTreeSet<_> = sym
        .seen_by
        .iter()
        .filter(|(s, _)| s == "server-a")
        .map(|(_, a)| *a)
        .collect();
    let b: BTreeSet<_> = sym
        .seen_by
        .iter()
        .filter(|(s, _)| s == "server-b")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(a.len(), 1, "same remote, same mapping: {sym:?}");
    assert_ne!(a, b, "another remote, another port: {sym:?}");
}

#[test]
fn nat_filtering_behaviour_decides_who_gets_in() {
    let got = |p| {
        let mut v = observe_nat(nat(p), Duration::ZERO).received_from;
        v.sort();
        v
    };
    // Full cone: anyone who learns the mapping gets in.
    assert_eq!(
        got(sim::NatPreset::FullCone),
        ["from-7000", "from-7001", "outsider"]
    );
    // Restricted cone: only addresses the inside host has sent to.
    assert_eq!(
        got(sim::NatPreset::RestrictedCone),
        ["from-7000", "from-7001"]
    );
    // Port-restricted cone: only the exact address and port.
    assert_eq!(got(sim::NatPreset::PortRestrictedCone), ["from-7000"]);
}

#[test]
fn an_idle_mapping_times_out() {
    let short = sim::NatSpec {
        mapping_timeout_s: Some(1),
        ..Default::default()
    };
    let v = observe_nat(short, Duration::from_secs(2));
    let a: Vec<_> = v
        .seen_by
        .iter()
        .filter(|(s, _)| s == "server-a")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(a.len(), 2);
    assert_ne!(
        a[0], a[1],
        "after 2 s idle the 1 s mapping was gone: a new port"
    );
    let v = observe_nat(sim::NatSpec::default(), Duration::from_secs(2));
    let a: Vec<_> = v
        .seen_by
        .iter()
        .filter(|(s, _)| s == "server-a")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(a[0], a[1], "the default 120 s mapping survives 2 s");
}

/// Two hosts behind one NAT: B sends to A's public address. Returns the source A saw.
fn hairpin(hairpin: bool) -> Option<SocketAddr> {
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("a", Some("nat"), 5),
            host("b", Some("nat"), 5),
            host("server-a", None, 10),
        ],
        gateways: vec![gateway(
            5,
            sim::NatSpec {
                hairpin: Some(hairpin),
                ..Default::default()
            },
        )],
    };
    let mut world = World::new(&spec, 3, Duration::from_secs(10)).expect("world");
    let gateway = world.ip("nat").expect("ip");
    let server = world.ip("server-a").expect("ip");
    let a_public: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let a_saw: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    world
        .host("server-a", || async {
            let s = turmoil::net::UdpSocket::bind(("0.0.0.0", 7000)).await?;
            let mut buf = [0u8; 64];
            loop {
                let (_, from) = s.recv_from(&mut buf).await?;
                // Tell the sender its public address.
                s.send_to(from.to_string().as_bytes(), from).await?;
            }
        })
        .expect("server");
    let (pa, sa) = (a_public.clone(), a_saw.clone());
    world
        .host("a", move || {
            let (pa, sa) = (pa.clone(), sa.clone());
            async move {
                let s = turmoil::net::UdpSocket::bind(("0.0.0.0", 5000)).await?;
                let via = (gateway, sim::overlay::OVERLAY_PORT);
                s.send_to(&sim::overlay::encode((server, 7000).into(), b"who"), via)
                    .await?;
                let mut buf = [0u8; 128];
                loop {
                    let (n, _) = s.recv_from(&mut buf).await?;
                    let Some((src, payload)) = sim::overlay::decode(&buf[..n]) else {
                        continue;
                    };
                    if src.ip() == server {
                        let me: SocketAddr =
                            String::from_utf8_lossy(payload).parse().expect("addr");
                        *pa.lock().expect("a") = Some(me);
                    } else {
                        *sa.lock().expect("saw") = Some(src);
                    }
                }
            }
        })
        .expect("a");
    let pa = a_public.clone();
    world
        .client("b", async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let target = pa.lock().expect("a").expect("A's public address");
            let s = turmoil::net::UdpSocket::bind(("0.0.0.0", 6000)).await?;
            let via = (gateway, sim::overlay::OVERLAY_PORT);
            s.send_to(&sim::overlay::encode(target, b"hello neighbour"), via)
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        })
        .expect("b");
    while !world.step().expect("step") {}
    let saw = *a_saw.lock().expect("saw");
    saw
}

#[test]
fn hairpinning_turns_traffic_to_the_nat_back_inside() {
    let saw = hairpin(true).expect("A got B's datagram through the hairpin");
    assert_eq!(saw.port(), 6000, "from B's public (port-preserved) address");
    assert_eq!(hairpin(false), None, "without hairpinning it goes nowhere");
}

#[test]
fn a_link_that_goes_down_loses_what_is_queued_on_it() {
    // 100 kbit/s: a 1000-byte datagram takes 80 ms to leave. Ten sent at once leave at 80,
    // 160, ... ms; the link goes down at 250 ms: the seven still queued are lost with it,
    // counted, and never arrive — not even after it comes back.
    let mut sender = host("sender", None, 10);
    sender.link.bandwidth_kbps = Some(100);
    sender.link.queue_bytes = 64 * 1024;
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![sender, host("receiver", None, 10)],
        gateways: vec![],
    };
    let mut world = World::new(&spec, 3, Duration::from_secs(10)).expect("world");
    let got = Arc::new(Mutex::new(0u32));
    let g = got.clone();
    let receiver_net: Arc<dyn Net> = world.net("receiver").expect("net");
    world
        .host("receiver", move || {
            let (net, g) = (receiver_net.clone(), g.clone());
            async move {
                let socket = net.bind_udp(([0, 0, 0, 0], 9000).into()).await?;
                while postsock::net::recv_from(socket.as_ref()).await.is_ok() {
                    *g.lock().expect("count") += 1;
                }
                Ok(())
            }
        })
        .expect("receiver");
    let sender_net: Arc<dyn Net> = world.net("sender").expect("net");
    let to: SocketAddr = (world.ip("receiver").expect("ip"), 9000).into();
    world
        .client("sender", async move {
            let socket = sender_net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            for _ in 0..10 {
                postsock::net::send_to(socket.as_ref(), to, &[7u8; 1000]).await?;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        })
        .expect("sender");
    let down = sim::Fault::LinkDown {
        host: "sender".into(),
        interface: None,
    };
    let up = sim::Fault::LinkUp {
        host: "sender".into(),
        interface: None,
    };
    let (mut downed, mut upped) = (false, false);
    loop {
        let t = world.elapsed();
        if !downed && t >= Duration::from_millis(250) {
            world.apply(&down).expect("down");
            downed = true;
        }
        if !upped && t >= Duration::from_millis(1500) {
            world.apply(&up).expect("up");
            upped = true;
        }
        if world.step().expect("step") {
            break;
        }
    }
    let counters = world.counters();
    let sent = counters
        .iter()
        .find(|(name, _)| name.starts_with("sender"))
        .map(|(_, c)| c.up)
        .expect("the sender's link");
    assert_eq!(sent.lost_on_link, 7, "{sent:?}");
    assert_eq!(*got.lock().expect("count"), 3);
}

/// A client closes its side of a TCP connection and its program ends before the server's
/// answer and FIN come back; the server reads to the end, answers and closes. Returns what
/// the server's stack holds 3 s later. With `cut_at`, the client's interface becomes a black
/// hole then (after its FIN left, before the server's answer arrives).
fn server_sockets_after_client_left(cut_at: Option<Duration>) -> Vec<sim::TcpSocketStatus> {
    let mut world = World::new(&spec(), 1, Duration::from_secs(10)).expect("world");
    let server_ip = world.ip("server").expect("server");
    let seen: Arc<Mutex<Vec<sim::TcpSocketStatus>>> = Arc::default();
    let (server, out) = (world.net("server").expect("net"), seen.clone());
    world
        .client("server", async move {
            let listener = server.listen_tcp(([0, 0, 0, 0], 80).into()).await?;
            let (mut s, _) = listener.accept().await?;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await?;
            assert_eq!(got, b"hello");
            s.write_all(b"bye").await?;
            drop(s);
            // Long enough for a FIN to go unanswered several times.
            tokio::time::sleep(Duration::from_secs(3)).await;
            *out.lock().expect("seen") = server.tcp_sockets().await;
            Ok(())
        })
        .expect("server");
    let direct = world.net("direct").expect("net");
    world
        .client("direct", async move {
            let mut s = direct.connect_tcp((server_ip, 80).into()).await?;
            s.write_all(b"hello").await?;
            s.shutdown().await?;
            // Long enough for the FIN to leave, shorter than the server's answer takes.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
        .expect("client");
    let mut cut = cut_at;
    loop {
        if cut.is_some_and(|at| world.elapsed() >= at) {
            cut = None;
            let hole = sim::Fault::Blackhole {
                host: "direct".into(),
                interface: None,
            };
            world.apply(&hole).expect("black hole");
        }
        if world.step().expect("step") {
            break;
        }
    }
    let seen = seen.lock().expect("seen").clone();
    seen
}

/// A host's TCP outlives its program, as a kernel outlives a process: the client that ended
/// first still acknowledges the server's answer and FIN, so the server's side of the
/// connection closes instead of waiting in LAST-ACK for ever.
#[test]
fn a_client_that_ended_still_acknowledges_the_servers_fin() {
    assert_eq!(server_sockets_after_client_left(None), vec![]);
}

/// A program that ends while one of its tasks is still connecting (its SYN unanswered):
/// the host's TCP closes that connection with the others and drops its socket, and the
/// connecting stream, dropped later with the program's runtime, must leave it be. (It
/// closed it again and panicked, "handle does not refer to a valid socket": 36 times in a
/// chaos sweep of 20 runs per scenario, where racing attempts are left connecting.)
#[test]
fn a_program_that_ends_while_connecting_leaves_quietly() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STALE: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .to_string()
            .contains("does not refer to a valid socket")
        {
            STALE.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let mut world = World::new(&spec(), 1, Duration::from_secs(10)).expect("world");
    let direct = world.net("direct").expect("net");
    world
        .client("direct", async move {
            // Nobody has this address: the SYN goes unanswered.
            let nowhere: SocketAddr = ([203, 0, 113, 9], 80).into();
            tokio::spawn(async move {
                let _ = direct.connect_tcp(nowhere).await;
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    assert_eq!(
        STALE.load(Ordering::SeqCst),
        0,
        "a stale socket handle was used"
    );
}

/// When the client's path dies before the server's answer and FIN reach it, the server's
/// side waits in LAST-ACK, retransmitting into the void; that socket keeps only the bytes it
/// may send again, not its two 256 KiB buffers.
#[test]
fn a_server_socket_left_in_last_ack_gives_its_buffers_back() {
    let seen = server_sockets_after_client_left(Some(Duration::from_millis(50)));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].state, "LAST-ACK");
    assert_eq!(
        seen[0].buffer_bytes, 3,
        "closed at both ends: it keeps the unacknowledged \"bye\", not 512 KiB of buffers"
    );
}

/// A fault that changes the server's latency before a later client has joined the
/// simulation (`World::client_at`) applies to that client's path once it talks, and the
/// client that talked before sees it too.
#[test]
fn a_latency_fault_reaches_the_paths_of_clients_that_join_later() {
    use postsock::net::datagram;
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("server", None, 20),
            host("early", None, 5),
            host("late", None, 5),
        ],
        gateways: vec![],
    };
    let mut world = World::new(&spec, 1, Duration::from_secs(5)).expect("world");
    let server_ip = world.ip("server").expect("server");
    udp_echo_server(&mut world, "server");
    let rtts: Arc<Mutex<Vec<(&str, u128)>>> = Arc::default();
    for (name, at) in [("early", 0), ("late", 300)] {
        let (net, rtts) = (world.net(name).expect("net"), rtts.clone());
        world
            .client_at(name, Duration::from_millis(at), async move {
                let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
                for _ in 0..2 {
                    let start = tokio::time::Instant::now();
                    datagram::send_to(socket.as_ref(), (server_ip, 9000).into(), b"ping").await?;
                    datagram::recv_from(socket.as_ref()).await?;
                    rtts.lock()
                        .expect("rtts")
                        .push((name, start.elapsed().as_millis()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(())
            })
            .expect("client");
    }
    let fault = sim::Fault::SetLink {
        host: "server".into(),
        interface: None,
        loss: None,
        bandwidth_kbps: None,
        queue_bytes: None,
        latency_ms: Some(45),
    };
    let mut applied = false;
    loop {
        if !applied && world.elapsed() >= Duration::from_millis(100) {
            applied = true;
            world.apply(&fault).expect("set-link");
        }
        if world.step().expect("step") {
            break;
        }
    }
    assert_eq!(
        *rtts.lock().expect("rtts"),
        vec![("early", 50), ("early", 100), ("late", 100), ("late", 100)],
        "round trips in ms: 2 × (5 + 20), then 2 × (5 + 45)"
    );
}

/// Runs on `host` a server that sends every UDP datagram to its port 9000 back.
fn udp_echo_server(world: &mut World<'_>, host: &str) {
    use postsock::net::datagram;
    let net = world.net(host).expect("net");
    world
        .host(host, move || {
            let net = net.clone();
            async move {
                let socket = net.bind_udp(([0, 0, 0, 0], 9000).into()).await?;
                loop {
                    let (from, data) = datagram::recv_from(socket.as_ref()).await?;
                    datagram::send_to(socket.as_ref(), from, &data).await?;
                }
            }
        })
        .expect("host");
}
