//! Hole punching in the simulator: two peers behind NATs meet at a rendezvous, gather their
//! reflexive addresses from a STUN server, check candidate pairs from the socket QUIC will use,
//! and end up with a direct, certificate-verified QUIC carrier — where RFC 4787 behaviour
//! allows one; where it does not, a clear error instead of a hang.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{sim_host as host, sim_nat as gateway};
use postsock::net::Net;
use postsock::punch::{self, PunchConfig, PunchReport};
use postsock::rendezvous::RendezvousServer;
use postsock::stun::StunServer;
use postsock::{Configuration, Protocol, Remote, Security, TestCa};
use sim::{NatPreset, World, WorldSpec};

type Outcome = Result<(PunchReport, Vec<u8>), String>;

/// Alice behind `a`, Bob behind `b`; both punch, Alice sends a message, Bob echoes it.
fn punch_pair(a: NatPreset, b: NatPreset, seed: u64) -> (Outcome, Outcome) {
    let spec = WorldSpec {
        hosts: vec![
            host("alice", Some("nat-a"), 5),
            host("bob", Some("nat-b"), 10),
            host("stun", None, 10),
            host("rdv", None, 10),
        ],
        gateways: vec![gateway("nat-a", a), gateway("nat-b", b)],
    };
    let mut world = World::new(&spec, seed, Duration::from_secs(60)).expect("world");
    let ca = TestCa::new("rendezvous CA").expect("ca");
    let mut rdv_config = Configuration::default();
    rdv_config.protocols(&[Protocol::Quic]).security(Security {
        identity: Some(ca.issue(&["rdv"]).expect("identity")),
        ..Security::default()
    });
    let rdv_net: Arc<dyn Net> = world.net("rdv").expect("net");
    world
        .host("rdv", move || {
            let (net, config) = (rdv_net.clone(), rdv_config.clone());
            async move {
                let wait = Duration::from_secs(10);
                let _server =
                    RendezvousServer::bind(net, ([0, 0, 0, 0], 7000).into(), config, wait).await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("rdv");
    let stun_net: Arc<dyn Net> = world.net("stun").expect("net");
    world
        .host("stun", move || {
            let net = stun_net.clone();
            async move {
                StunServer::bind(net.as_ref(), ([0, 0, 0, 0], 3478).into())
                    .await?
                    .run()
                    .await;
                Ok(())
            }
        })
        .expect("stun");
    let stun_addr = (world.ip("stun").expect("ip"), 3478).into();
    let outcomes: Arc<Mutex<Vec<(&str, Outcome)>>> = Default::default();
    for (name, start_ms) in [("alice", 0u64), ("bob", 150)] {
        let net: Arc<dyn Net> = world.net(name).expect("net");
        let mut rdv = Configuration::default();
        rdv.protocols(&[Protocol::Quic]).security(Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        });
        let cfg = PunchConfig::new(Remote::new("rdv", 7000), rdv, stun_addr);
        let out = outcomes.clone();
        world
            .client(name, async move {
                tokio::time::sleep(Duration::from_millis(start_ms)).await;
                let secret = b"alice and bob punch through with this secret";
                let result = async {
                    let (carrier, report) =
                        punch::punch(net, secret, &cfg, Configuration::default())
                            .await
                            .map_err(|e| e.to_string())?;
                    let got = if name == "alice" {
                        carrier
                            .send_bytes(&b"through the NATs"[..])
                            .await
                            .map_err(|e| e.to_string())?;
                        let echo = carrier.receive().await.map_err(|e| e.to_string())?;
                        echo.map(|m| m.data.to_vec()).unwrap_or_default()
                    } else {
                        let m = carrier.receive().await.map_err(|e| e.to_string())?;
                        let data = m.map(|m| m.data).unwrap_or_default();
                        carrier
                            .send_bytes(data.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        data.to_vec()
                    };
                    // Let the last message be acknowledged before the program ends.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<_, String>((report, got))
                }
                .await;
                out.lock().expect("lock").push((name, result));
                Ok(())
            })
            .expect("client");
    }
    while !world.step().expect("step") {}
    let mut got = outcomes.lock().expect("lock").clone();
    got.sort_by_key(|(n, _)| *n);
    let mut it = got.into_iter().map(|(_, o)| o);
    (it.next().expect("alice"), it.next().expect("bob"))
}

#[test]
fn cone_nats_and_a_symmetric_one_facing_a_permissive_one_punch_through() {
    use NatPreset::*;
    for (a, b) in [
        (FullCone, FullCone),
        (PortRestrictedCone, PortRestrictedCone),
        (RestrictedCone, PortRestrictedCone),
        (Symmetric, FullCone),
        (Symmetric, RestrictedCone),
    ] {
        let (alice, bob) = punch_pair(a, b, 1);
        let (ra, echo) = alice.unwrap_or_else(|e| panic!("{a:?}/{b:?} alice: {e}"));
        let (rb, got) = bob.unwrap_or_else(|e| panic!("{a:?}/{b:?} bob: {e}"));
        assert_eq!(echo, b"through the NATs", "{a:?}/{b:?}");
        assert_eq!(got, b"through the NATs", "{a:?}/{b:?}");
        assert_ne!(ra.controlling, rb.controlling, "one client, one server");
        assert_eq!(ra.path, punch::PathKind::Direct);
    }
}

#[test]
fn a_symmetric_nat_facing_a_port_restricted_or_symmetric_one_fails_clearly() {
    use NatPreset::*;
    for (a, b) in [(Symmetric, PortRestrictedCone), (Symmetric, Symmetric)] {
        let (alice, bob) = punch_pair(a, b, 1);
        for (who, o) in [("alice", alice), ("bob", bob)] {
            let e = o.expect_err("no direct path");
            assert!(
                e.contains("no candidate pair worked"),
                "{a:?}/{b:?} {who}: {e}"
            );
            assert!(e.contains("TURN is not implemented"), "{e}");
        }
    }
}

#[test]
fn punching_is_deterministic() {
    let a = punch_pair(NatPreset::PortRestrictedCone, NatPreset::Symmetric, 5);
    let b = punch_pair(NatPreset::PortRestrictedCone, NatPreset::Symmetric, 5);
    let show = |o: &Outcome| format!("{o:?}");
    assert_eq!((show(&a.0), show(&a.1)), (show(&b.0), show(&b.1)));
}
