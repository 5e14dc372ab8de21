//! STUN Binding (RFC 8489): postsock's server and client in the simulator behind every NAT
//! preset, against bad input, on real sockets as the `postsock stun-server` process, and
//! against a real coturn; RFC 7983 demultiplexing of STUN beside QUIC on one socket.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::{Net, TokioNet};
use postsock::traversal::stun::{self, Answers, Demux, StunServer, Timing};
use sim::{GatewaySpec, NatPreset, World, WorldSpec};

use common::{free_udp_port, postsock_bin, sim_host as host, Child};

/// A client behind a NAT with `preset`, two public STUN servers, and a public server.
fn world(preset: NatPreset) -> WorldSpec {
    WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("client", Some("nat"), 5),
            host("stun1", None, 10),
            host("stun2", None, 15),
            host("server", None, 10),
        ],
        gateways: vec![GatewaySpec::nat("nat", preset)],
    }
}

fn run_stun_server(world: &mut World<'_>, name: &str) {
    let net = world.net(name).expect("net");
    world
        .host(name, move || {
            let net = net.clone();
            async move {
                let server = StunServer::bind(net.as_ref(), ([0, 0, 0, 0], 3478).into()).await?;
                server.run().await;
                Ok(())
            }
        })
        .expect("host");
}

/// The client's reflexive addresses as seen by stun1 and stun2 (from one socket), the NAT's
/// public address, and when the first answer came (simulated ms).
fn discover(preset: NatPreset, seed: u64) -> (SocketAddr, SocketAddr, IpAddr, u128) {
    let spec = world(preset);
    let mut world = World::new(&spec, seed, Duration::from_secs(30)).expect("world");
    run_stun_server(&mut world, "stun1");
    run_stun_server(&mut world, "stun2");
    let net = world.net("client").expect("net");
    let (s1, s2) = (
        world.ip("stun1").expect("ip"),
        world.ip("stun2").expect("ip"),
    );
    let nat = world.ip("nat").expect("ip");
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    world
        .client("client", async move {
            let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            let t0 = tokio::time::Instant::now();
            let mut got = Vec::new();
            for server in [s1, s2] {
                let txid = stun::transaction_id(net.as_ref());
                let answers = Answers::Socket(socket.as_ref());
                let server = SocketAddr::new(server, 3478);
                got.push(
                    stun::binding(socket.as_ref(), answers, server, txid, Timing::default())
                        .await?,
                );
            }
            let first = t0.elapsed().as_millis();
            *o.lock().expect("lock") = Some((got[0], got[1], first));
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let (a, b, first) = out.lock().expect("lock").take().expect("answers");
    (a, b, nat, first)
}

#[test]
fn stun_reveals_each_nat_presets_mapping_behaviour() {
    for seed in 1..=3 {
        for preset in [
            NatPreset::Open,
            NatPreset::FullCone,
            NatPreset::RestrictedCone,
            NatPreset::PortRestrictedCone,
        ] {
            let (a, b, nat, _) = discover(preset, seed);
            // The reflexive address is the NAT's public one, and endpoint-independent mapping
            // shows the same port to both servers.
            assert_eq!(a.ip(), nat, "{preset:?}");
            assert_eq!(a, b, "{preset:?}: endpoint-independent mapping");
        }
        let (a, b, nat, _) = discover(NatPreset::Symmetric, seed);
        assert_eq!((a.ip(), b.ip()), (nat, nat));
        assert_ne!(
            a.port(),
            b.port(),
            "symmetric: a new mapping per destination"
        );
    }
}

#[test]
fn a_binding_takes_one_round_trip() {
    // client → stun1: 5 (access) + 5 (NAT to core) + 10 = 20 ms one way; two transactions.
    let (_, _, _, both) = discover(NatPreset::FullCone, 1);
    // stun2 is 25 ms away: 40 + 50 ms.
    assert!((90..=92).contains(&both), "{both} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_counted_and_never_stop_the_server() {
    let net = TokioNet;
    let server = StunServer::bind(&net, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let stats = server.stats();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let good = stun::binding_request([5u8; 12]);
    let mut forged_response = stun::answer(&good, addr).expect("answer");
    forged_response[0] = 0x01; // a success response sent *to* the server
    let mut bad_cookie = good.clone();
    bad_cookie[5] ^= 0x55;
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        good[..10].to_vec(),
        bad_cookie,
        forged_response,
        [good.clone(), vec![7u8; 3000]].concat(),
        vec![0xff; 1200],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let n = cases.len() as u64;
    for bytes in &cases {
        raw.send_to(bytes, addr).await.expect("send");
    }
    // A good request after all that is still answered, with our address.
    raw.send_to(&good, addr).await.expect("send");
    let mut buf = [0u8; 1500];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut buf))
        .await
        .expect("an answer")
        .expect("recv");
    let mine = raw.local_addr().expect("addr");
    assert_eq!(stun::reflexive_address(&buf[..len], [5u8; 12]), Some(mine));
    // The server counts an answer once its send returned, which on another worker can be
    // just after the answer arrived here.
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        while stats.answered() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the answer was never counted");
    assert_eq!(stats.answered(), 1);
    // The empty datagram may not even reach the application on every OS: at least the rest.
    assert!(stats.dropped() >= n - 1, "dropped {}", stats.dropped());
}

/// The `postsock` binary built for the integration tests.
/// Runs `postsock stun-client server` until it prints an address.
fn stun_client(server: SocketAddr) -> SocketAddr {
    for _ in 0..50 {
        let out = std::process::Command::new(postsock_bin())
            .args(["stun-client", &server.to_string()])
            .output()
            .expect("run stun-client");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return text.trim().parse().expect("an address");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no STUN answer from {server}");
}

#[test]
fn the_stun_server_command_answers_the_stun_client_command() {
    let port = free_udp_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let _server = Child(
        std::process::Command::new(postsock_bin())
            .args(["stun-server", "--listen", &listen.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn stun-server"),
    );
    let reflexive = stun_client(listen);
    assert_eq!(reflexive.ip(), IpAddr::from([127, 0, 0, 1]));
}

#[test]
fn coturn_answers_postsocks_stun_client() {
    let coturn = common::Coturn::start();
    let reflexive = stun_client(coturn.addr());
    assert_eq!(reflexive.ip(), IpAddr::from([127, 0, 0, 1]));
}

#[test]
fn stun_and_quic_share_one_socket() {
    // A QUIC connection runs over a demultiplexed socket while STUN transactions on the same
    // socket get their answers: the server-reflexive address of the very socket QUIC uses.
    let spec = world(NatPreset::PortRestrictedCone);
    let mut world = World::new(&spec, 1, Duration::from_secs(30)).expect("world");
    run_stun_server(&mut world, "stun1");
    let ca = postsock::TestCa::new("demux CA").expect("ca");
    let (server_config, _) = common::postsock_configs(&ca, postsock::Protocol::Quic);
    let server_net: Arc<dyn Net> = world.net("server").expect("net");
    world
        .host("server", move || {
            let (net, config) = (server_net.clone(), server_config.clone());
            async move {
                let mut listener =
                    postsock::Listener::bind(net, ([0, 0, 0, 0], 443).into(), config).await?;
                loop {
                    let carrier = listener.accept().await?;
                    tokio::spawn(async move {
                        while let Ok(Some(m)) = carrier.receive().await {
                            let _ = carrier.send_bytes(m.data).await;
                        }
                    });
                }
            }
        })
        .expect("host");
    let net: Arc<dyn Net> = world.net("client").expect("net");
    let (stun1, server) = (
        world.ip("stun1").expect("ip"),
        world.ip("server").expect("ip"),
    );
    let nat = world.ip("nat").expect("ip");
    let result = Arc::new(Mutex::new(None));
    let r = result.clone();
    let client_tls = common::rustls_client(&ca);
    world
        .client("client", async move {
            let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
            let demux = Demux::new(socket);
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                None,
                demux.clone(),
                Arc::new(quinn::TokioRuntime),
            )?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?;
            let conn = endpoint
                .connect_with(
                    quinn::ClientConfig::new(Arc::new(crypto)),
                    SocketAddr::new(server, 443),
                    "localhost",
                )?
                .await?;
            // STUN on the QUIC socket, while the connection lives.
            let txid = stun::transaction_id(net.as_ref());
            let stun_server = SocketAddr::new(stun1, 3478);
            let request = stun::binding_request(txid);
            demux.send_stun(stun_server, &request).await?;
            let (from, answer) = demux.recv_stun().await?;
            let reflexive = (from == stun_server)
                .then(|| stun::reflexive_address(&answer, txid))
                .flatten();
            // And QUIC still works on it: a message and its echo.
            let mut uni = conn.open_uni().await?;
            uni.write_all(b"hello").await?;
            uni.finish()?;
            let mut echo = conn.accept_uni().await?;
            let got = echo.read_to_end(64).await?;
            *r.lock().expect("lock") = Some((reflexive, got, demux.diverted()));
            conn.close(0u32.into(), b"");
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let (reflexive, echo, diverted) = result.lock().expect("lock").take().expect("done");
    let reflexive = reflexive.expect("a reflexive address");
    assert_eq!(reflexive.ip(), nat);
    assert_eq!(echo, b"hello");
    assert_eq!(
        diverted, 1,
        "exactly the one STUN answer was kept from quinn"
    );
}
