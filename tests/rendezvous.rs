//! The rendezvous service in the simulator: peers behind different NATs that share a secret
//! get each other's candidates; strangers are never paired, cannot read what they intercept,
//! and malformed registrations are dropped and counted while the server goes on.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{sim_host as host, sim_nat as gateway, TempDir};
use postsock::net::Net;
use postsock::traversal::rendezvous::{
    self, Candidate, CandidateKind, Pairing, PeerInfo, RendezvousServer, RendezvousStats,
};
use postsock::{Carrier, Configuration, Protocol, Remote, Security, TestCa};
use sim::{NatPreset, World, WorldSpec};

fn spec() -> WorldSpec {
    WorldSpec {
        dns: Default::default(),
        hosts: vec![
            host("alice", Some("nat-a"), 5),
            host("bob", Some("nat-b"), 5),
            host("mallory", None, 5),
            host("rdv", None, 10),
        ],
        gateways: vec![
            gateway("nat-a", NatPreset::PortRestrictedCone),
            gateway("nat-b", NatPreset::Symmetric),
        ],
    }
}

const SECRET: &[u8] = b"alice and bob share this pairing secret";

fn info(port: u16) -> PeerInfo {
    PeerInfo {
        candidates: vec![
            Candidate {
                kind: CandidateKind::Host,
                addr: ([10, 0, 0, 2], port).into(),
            },
            Candidate {
                kind: CandidateKind::ServerReflexive,
                addr: ([198, 51, 100, 7], port).into(),
            },
        ],
        extra: port.to_be_bytes().to_vec(),
    }
}

/// Each client's name and what its exchange returned.
type Outcome = (String, Result<PeerInfo, String>);
type Outcomes = Arc<Mutex<Vec<Outcome>>>;

/// What each client program does, started at `at_ms`.
enum Act {
    /// Register with `secret`, offering `info`.
    Exchange(&'static [u8], PeerInfo),
    /// Send these raw bytes as a registration and report what comes back.
    Raw(Vec<u8>),
}

/// Runs the world: the server, then each `(host, at_ms, act)`. Returns the outcomes and the
/// server's stats.
fn run(acts: Vec<(&'static str, u64, Act)>) -> (Vec<Outcome>, Arc<RendezvousStats>) {
    let mut world = World::new(&spec(), 1, Duration::from_secs(60)).expect("world");
    let ca = TestCa::new("rendezvous CA").expect("ca");
    let mut server_config = Configuration::default();
    server_config
        .protocols(&[Protocol::Quic])
        .security(Security {
            identity: Some(ca.issue(&["rdv"]).expect("identity")),
            ..Security::default()
        });
    let stats: Arc<Mutex<Option<Arc<RendezvousStats>>>> = Default::default();
    let st = stats.clone();
    let net: Arc<dyn Net> = world.net("rdv").expect("net");
    world
        .host("rdv", move || {
            let (net, config, st) = (net.clone(), server_config.clone(), st.clone());
            async move {
                let server = RendezvousServer::bind(
                    net,
                    ([0, 0, 0, 0], 7000).into(),
                    config,
                    Duration::from_secs(5),
                )
                .await?;
                *st.lock().expect("lock") = Some(server.stats());
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("host");
    let outcomes: Outcomes = Default::default();
    for (name, at_ms, act) in acts {
        let net: Arc<dyn Net> = world.net(name).expect("net");
        let mut config = Configuration::default();
        config.protocols(&[Protocol::Quic]).security(Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        });
        let out = outcomes.clone();
        world
            .client(name, async move {
                tokio::time::sleep(Duration::from_millis(at_ms)).await;
                let server = Remote::new("rdv", 7000);
                let result = match act {
                    Act::Exchange(secret, mine) => {
                        let pairing = Pairing::new(secret).expect("pairing");
                        rendezvous::exchange(
                            net,
                            server,
                            config,
                            &pairing,
                            &mine,
                            Duration::from_secs(3),
                        )
                        .await
                        .map_err(|e| e.to_string())
                    }
                    Act::Raw(bytes) => {
                        let carrier = Carrier::initiate(net, server, config).await?;
                        carrier.send_bytes(bytes).await?;
                        match carrier.receive().await {
                            Ok(Some(m)) => {
                                Err(format!("answer: {}", String::from_utf8_lossy(&m.data)))
                            }
                            Ok(None) => Err("closed".into()),
                            Err(e) => Err(format!("error: {e}")),
                        }
                    }
                };
                out.lock().expect("lock").push((name.to_string(), result));
                Ok(())
            })
            .expect("client");
    }
    while !world.step().expect("step") {}
    let stats = stats.lock().expect("lock").clone().expect("server ran");
    let mut got = outcomes.lock().expect("lock").clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    (got, stats)
}

fn outcome<'a>(got: &'a [Outcome], who: &str) -> &'a Result<PeerInfo, String> {
    &got.iter().find(|(n, _)| n == who).expect("outcome").1
}

#[test]
fn peers_sharing_a_secret_get_each_others_candidates() {
    let (got, stats) = run(vec![
        ("alice", 0, Act::Exchange(SECRET, info(4001))),
        ("bob", 300, Act::Exchange(SECRET, info(4002))),
        // A stranger with another secret waits alone and learns nothing.
        (
            "mallory",
            100,
            Act::Exchange(b"mallory's own secret, not theirs", info(6666)),
        ),
    ]);
    assert_eq!(outcome(&got, "alice"), &Ok(info(4002)));
    assert_eq!(outcome(&got, "bob"), &Ok(info(4001)));
    let m = outcome(&got, "mallory")
        .as_ref()
        .expect_err("mallory alone");
    assert!(m.contains("no peer registered"), "{m}");
    assert_eq!(stats.paired(), 1);
}

#[test]
fn a_stranger_who_learned_the_pairing_id_is_never_paired() {
    // Mallory somehow knows the pairing id (not the secret) and registers first with a blob
    // she made up. Alice is matched with it, but it does not authenticate: she refuses it and
    // learns nothing; Mallory gets Alice's sealed blob, which she cannot open. Bob, coming
    // last, finds the id used and is refused.
    let id = Pairing::new(SECRET).expect("pairing").id();
    let forged = format!(r#"{{"pair":"{id}","blob":"{}"}}"#, "ab".repeat(80));
    let (got, stats) = run(vec![
        ("mallory", 0, Act::Raw(forged.into_bytes())),
        ("alice", 200, Act::Exchange(SECRET, info(4001))),
        ("bob", 600, Act::Exchange(SECRET, info(4002))),
    ]);
    let a = outcome(&got, "alice").as_ref().expect_err("alice refuses");
    assert!(a.contains("did not authenticate"), "{a}");
    let b = outcome(&got, "bob").as_ref().expect_err("bob refused");
    assert!(!b.is_empty());
    let m = outcome(&got, "mallory").as_ref().expect_err("raw");
    assert!(m.starts_with("answer:"), "{m}");
    assert_eq!((stats.paired(), stats.refused()), (1, 1));
}

#[test]
fn malformed_registrations_are_dropped_and_counted() {
    let (got, stats) = run(vec![
        ("mallory", 0, Act::Raw(b"not json at all".to_vec())),
        ("alice", 100, Act::Exchange(SECRET, info(4001))),
        ("bob", 200, Act::Exchange(SECRET, info(4002))),
    ]);
    assert!(outcome(&got, "mallory").is_err());
    assert_eq!(outcome(&got, "alice"), &Ok(info(4002)));
    assert_eq!(stats.malformed(), 1);
    assert_eq!(stats.paired(), 1);
}

/// Kills the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendezvous_server_command_pairs_two_real_peers() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.local_addr().expect("addr").port()
    };
    let dir = TempDir::new(&format!("rdv-ca-{port}"));
    let ca_out = dir.join("ca.der");
    let _server = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_postsock"))
            .args([
                "rendezvous-server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--ca-out",
                &ca_out.to_string_lossy(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let mut root = None;
    for _ in 0..100 {
        if let Ok(bytes) = std::fs::read(&ca_out) {
            if !bytes.is_empty() {
                root = Some(rustls::pki_types::CertificateDer::from(bytes));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = root.expect("the server wrote its CA");
    let exchange = |mine: PeerInfo| {
        let mut config = Configuration::default();
        config.security(Security {
            trusted_roots: vec![root.clone()],
            ..Security::default()
        });
        async move {
            let pairing = Pairing::new(SECRET).expect("pairing");
            let net = postsock::net::TokioNet::shared();
            let remote = Remote::new("localhost", port);
            rendezvous::exchange(
                net,
                remote,
                config,
                &pairing,
                &mine,
                Duration::from_secs(10),
            )
            .await
        }
    };
    // The server writes its CA once it listens.
    let (a, b) = tokio::join!(exchange(info(1)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange(info(2)).await
    });
    assert_eq!(a.expect("alice"), info(2));
    assert_eq!(b.expect("bob"), info(1));
}
