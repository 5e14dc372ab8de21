//! The simulator's overlay on turmoil: TCP costs a full RTT, gateways translate addresses,
//! hosts behind gateways are unreachable from outside.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::Net;
use postsock::{Carrier, Configuration, Listener, Protocol, Remote, Security, TestCa};
use sim::{GatewaySpec, HostSpec, LinkParams, World, WorldSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn host(name: &str, gateway: Option<&str>, latency_ms: u64) -> HostSpec {
    HostSpec {
        name: name.into(),
        gateway: gateway.map(Into::into),
        link: LinkParams {
            latency_ms,
            ..LinkParams::default()
        },
        aliases: Vec::new(),
    }
}

fn spec() -> WorldSpec {
    WorldSpec {
        hosts: vec![
            host("inside", Some("nat"), 5),
            host("direct", None, 0),
            host("server", None, 20),
        ],
        gateways: vec![GatewaySpec {
            name: "nat".into(),
            latency_ms: 10,
            middlebox: Default::default(),
        }],
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

#[test]
fn a_host_behind_a_gateway_is_unreachable_from_outside() {
    let mut world = World::new(&spec(), 1, Duration::from_secs(5)).expect("world");
    let inside = world.net("inside").expect("net");
    let inside_ip = inside.ip();
    let got = Arc::new(Mutex::new(0usize));
    let got_h = got.clone();
    world
        .host("inside", move || {
            let got = got_h.clone();
            async move {
                let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", 9000)).await?;
                let mut buf = [0u8; 100];
                loop {
                    let _ = socket.recv_from(&mut buf).await?;
                    *got.lock().expect("lock") += 1;
                }
            }
        })
        .expect("host");
    world
        .client("direct", async move {
            let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
            for _ in 0..10 {
                socket.send_to(b"knock", (inside_ip, 9000)).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    assert_eq!(
        *got.lock().expect("lock"),
        0,
        "a datagram bypassed the gateway"
    );
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
