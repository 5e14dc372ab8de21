//! The `nat/` scenarios: mapping timeouts with and without keepalives, NAT reboots under a
//! carrier, and peers behind chained NATs (home NATs behind a carrier-grade NAT) meeting with
//! and without hairpinning — each across seeds, with its figures asserted. Also what the
//! chained topology looks like from inside (STUN) and its spec errors.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::traversal::stun::{self, Answers, StunServer, Timing};
use sim::{GatewaySpec, NatPreset, World, WorldSpec};

use common::{lossless_runs, scenario, sim_host, sim_nat};

#[test]
fn an_idle_carrier_loses_its_mapping_without_keepalives_and_keeps_it_with_them() {
    // A message a minute through a NAT whose mappings idle out after 30 s.
    for r in lossless_runs("nat/quic-mapping-timeout-no-keepalive") {
        // Messages 2, 3, 4 each found the mapping gone and came from a new port.
        assert_eq!(r.metrics.server_path_changes, 3);
    }
    for r in lossless_runs("nat/quic-mapping-timeout-keepalive") {
        assert_eq!(r.metrics.server_path_changes, 0);
        // Nor did the idle carrier look dead to its own path manager.
        assert_eq!((r.metrics.handovers, r.metrics.dormant), (0, 0));
    }
}

#[test]
fn keepalives_hold_a_punched_pair_open_and_without_them_it_dies() {
    for r in lossless_runs("nat/rendezvous-idle") {
        assert_eq!(r.metrics.server_path_changes, 0);
        assert_eq!(r.metrics.relayed, Some(0));
    }
    // Without keepalives both mappings idle out between messages; the peer's port-restricted
    // NAT filters the new port, and nothing tells either side to meet again.
    let mut s = scenario("nat/rendezvous-idle");
    s.workload.keepalive_ms = Some(0);
    let r = testbed::run(&s, 1).report;
    assert!(!r.passed);
    assert!(r.metrics.messages_lost > 0, "{:?}", r.metrics);
}

#[test]
fn a_carrier_survives_its_nat_rebooting() {
    for r in lossless_runs("nat/quic-reboot") {
        assert!(r.metrics.failover_gap_ms.expect("gap") <= 20.0);
        assert_eq!(r.metrics.carriers_accepted, 1);
        assert!(r.metrics.server_path_changes >= 1);
    }
    // TCP state is lost with the NAT: the first segment after the reboot is reset by the
    // server (1 RTT), then a new connection, the same carrier (2.5 RTT). RTT 40 ms.
    for r in lossless_runs("nat/tls-tcp-reboot") {
        let gap = r.metrics.failover_gap_ms.expect("gap");
        assert!((2.5 * 40.0..=6.0 * 40.0).contains(&gap), "{gap} ms");
        assert_eq!(r.metrics.carriers_accepted, 1);
        assert_eq!(r.metrics.handovers, 1);
    }
}

#[test]
fn a_punched_carrier_survives_a_nat_reboot_by_meeting_again() {
    // Port-restricted NATs both sides: after Alice's reboots, neither can reach the other
    // until they restart through the rendezvous; the same QUIC connection carries on.
    for r in lossless_runs("nat/rendezvous-reboot") {
        let gap = r.metrics.failover_gap_ms.expect("gap");
        // Three keepalive intervals of silence, then well under a second to meet again.
        assert!((3000.0..=3700.0).contains(&gap), "{gap} ms");
        assert_eq!(r.metrics.relayed, Some(0));
    }
}

#[test]
fn a_relayed_carrier_survives_a_nat_reboot_with_fresh_allocations() {
    // Symmetric NATs both sides: only the relay works. Alice's reboot loses her allocation.
    for r in lossless_runs("nat/rendezvous-relayed-reboot") {
        let gap = r.metrics.failover_gap_ms.expect("gap");
        // QUIC migrates at once where it can; otherwise 3 s to notice, new allocations and
        // a meeting, 1 s of direct_first, then up to 0.6 s of quinn's loss detection on the
        // relayed path for what was in flight on the dead one: the scenario's own bound
        // (150 seeds: the slow 66 from 4.5 to 5.1 s, median 4.8 s).
        assert!(gap <= 5450.0, "{gap} ms");
        assert_eq!(r.metrics.relayed, Some(1));
    }
}

#[test]
fn peers_behind_one_cgnat_meet_directly_when_it_hairpins_and_through_the_relay_otherwise() {
    let direct = lossless_runs("nat/cgnat-hairpin");
    for r in &direct {
        assert_eq!(r.metrics.relayed, Some(0));
    }
    let relayed = lossless_runs("nat/cgnat-no-hairpin");
    for r in &relayed {
        assert_eq!(r.metrics.relayed, Some(1));
    }
    // The relayed meeting waits out `direct_first` (1 s) first.
    let ready = |rs: &[reports::Report]| rs[0].metrics.rendezvous_ms.expect("rendezvous_ms");
    assert!(
        ready(&relayed) > ready(&direct) + 1000.0,
        "{} vs {}",
        ready(&relayed),
        ready(&direct)
    );
}

#[test]
fn the_nat_scenarios_are_deterministic() {
    for name in ["nat/cgnat-no-hairpin", "nat/tls-tcp-reboot"] {
        let s = scenario(name);
        let a = serde_json::to_string(&testbed::run(&s, 3).report).expect("json");
        let b = serde_json::to_string(&testbed::run(&s, 3).report).expect("json");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn behind_two_nats_stun_sees_the_outer_one() {
    let mut cgnat = sim_nat("cgnat", NatPreset::PortRestrictedCone);
    cgnat.latency_ms = 10;
    let mut home = sim_nat("home", NatPreset::Symmetric);
    home.latency_ms = 3;
    home.behind = Some("cgnat".into());
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![
            sim_host("client", Some("home"), 2),
            sim_host("stun", None, 10),
        ],
        gateways: vec![cgnat, home],
    };
    let mut world = World::new(&spec, 1, Duration::from_secs(10)).expect("world");
    let stun_net = world.net("stun").expect("net");
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
        .expect("host");
    let server = (world.ip("stun").expect("ip"), 3478).into();
    let got = Arc::new(Mutex::new(None));
    let (g, net) = (got.clone(), world.net("client").expect("net"));
    world
        .client("client", async move {
            let socket =
                postsock::net::Net::bind_udp(net.as_ref(), ([0, 0, 0, 0], 0).into()).await?;
            let t0 = tokio::time::Instant::now();
            let txid = stun::transaction_id(net.as_ref());
            let addr = stun::binding(
                socket.as_ref(),
                Answers::Socket(socket.as_ref()),
                server,
                txid,
                Timing::default(),
            )
            .await?;
            *g.lock().expect("lock") = Some((addr, t0.elapsed()));
            Ok(())
        })
        .expect("client");
    while !world.step().expect("step") {}
    let (addr, rtt) = got.lock().expect("lock").take().expect("an answer");
    assert_eq!(
        addr.ip(),
        world.ip("cgnat").expect("ip"),
        "translated twice"
    );
    // Client 2 + home NAT 3 (to the CGNAT) + CGNAT 10 + STUN 10, both ways.
    assert_eq!(rtt, Duration::from_millis(2 * (2 + 3 + 10 + 10)));
}

#[test]
fn chained_gateways_must_exist_and_not_loop() {
    let mut a = GatewaySpec::nat("a", NatPreset::FullCone);
    a.behind = Some("nowhere".into());
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![sim_host("h", Some("a"), 1)],
        gateways: vec![a.clone()],
    };
    let e = spec.validate().expect_err("unknown upstream").to_string();
    assert!(
        e.contains("behind gateway `nowhere`") && e.contains("gateways: a"),
        "{e}"
    );
    let mut b = GatewaySpec::nat("b", NatPreset::FullCone);
    b.behind = Some("a".into());
    a.behind = Some("b".into());
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![sim_host("h", Some("a"), 1)],
        gateways: vec![a, b],
    };
    let e = spec.validate().expect_err("a loop").to_string();
    assert!(e.contains("loop"), "{e}");
}
