//! Hole punching in the simulator: two peers behind NATs meet at a rendezvous, gather their
//! reflexive addresses from a STUN server, check candidate pairs from the socket QUIC will use,
//! and end up with a direct, certificate-verified QUIC carrier — where RFC 4787 behaviour
//! allows one; where it does not, through the simulator's TURN relay (or, without one, a
//! clear error instead of a hang). The whole preset matrix matches its prediction.

use postsock::traversal::punch::{PathKind, RelayPolicy};
use sim::NatPreset;
use testbed::natmatrix::{self, punch_pair, punch_pair_with, PairSetup, PeerResult};

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
        assert_eq!(ra.path, PathKind::Direct);
        // Issue bound: ready within the rendezvous exchange + 2 RTT of the direct path (checks)
        // + 1 RTT (QUIC handshake) + 5 ms. Direct path: Alice 5 + her NAT 5 + Bob's NAT 5 +
        // Bob 10 ms one way, so RTT 50 ms.
        for r in [&ra, &rb] {
            let after = r.ready.saturating_sub(r.rendezvous).as_millis();
            assert!(
                after <= 3 * 50 + 5,
                "{a:?}/{b:?}: {after} ms after the rendezvous"
            );
        }
    }
}

#[test]
fn without_a_relay_a_symmetric_nat_facing_a_port_restricted_or_symmetric_one_fails_clearly() {
    use NatPreset::*;
    let setup = PairSetup {
        turn: false,
        ..PairSetup::default()
    };
    for (a, b) in [(Symmetric, PortRestrictedCone), (Symmetric, Symmetric)] {
        let (alice, bob) = punch_pair_with(a, b, 1, setup);
        for (who, o) in [("alice", alice), ("bob", bob)] {
            let e = o.expect_err("no direct path");
            assert!(
                e.contains("no candidate pair worked"),
                "{a:?}/{b:?} {who}: {e}"
            );
            assert!(e.contains("no TURN server is configured"), "{e}");
        }
    }
}

#[test]
fn where_no_direct_pair_works_the_peers_meet_through_the_turn_relay() {
    use NatPreset::*;
    for (a, b) in [(Symmetric, PortRestrictedCone), (Symmetric, Symmetric)] {
        let (alice, bob) = punch_pair(a, b, 1);
        let (ra, echo) = alice.unwrap_or_else(|e| panic!("{a:?}/{b:?} alice: {e}"));
        let (rb, got) = bob.unwrap_or_else(|e| panic!("{a:?}/{b:?} bob: {e}"));
        assert_eq!(echo, b"through the NATs", "{a:?}/{b:?}");
        assert_eq!(got, b"through the NATs", "{a:?}/{b:?}");
        for r in [&ra, &rb] {
            assert!(
                matches!(r.path, PathKind::Relayed { .. }),
                "{a:?}/{b:?}: {r:?}"
            );
            // Direct pairs had their `direct_first` second before a relayed one was taken.
            let checking = r.checks_done.saturating_sub(r.rendezvous);
            assert!(checking.as_millis() >= 1000, "{a:?}/{b:?}: {r:?}");
        }
    }
}

#[test]
fn relay_only_peers_use_the_relay_even_where_a_direct_pair_would_work() {
    let setup = PairSetup {
        policy: RelayPolicy::Only,
        ..PairSetup::default()
    };
    let (alice, bob) = punch_pair_with(NatPreset::FullCone, NatPreset::FullCone, 3, setup);
    let (ra, echo) = alice.expect("alice");
    let (rb, got) = bob.expect("bob");
    assert_eq!(
        (echo.as_slice(), got.as_slice()),
        (&b"through the NATs"[..], &b"through the NATs"[..])
    );
    for r in [&ra, &rb] {
        assert!(matches!(r.path, PathKind::Relayed { .. }), "{r:?}");
        // No waiting for direct pairs: relayed checks succeed within a few round trips.
        let checking = r.checks_done.saturating_sub(r.rendezvous);
        assert!(checking.as_millis() < 500, "{r:?}");
    }
}

#[test]
fn the_matrix_matches_rfc_4787_predictions_in_every_seed() {
    let m = natmatrix::run(&[1, 2], 2).expect("the generated scenarios parse");
    assert_eq!(m.cells.len(), 25);
    for c in &m.cells {
        assert!(c.as_predicted, "{c:?}");
        // The requirement: every pair ends connected, direct or relayed.
        assert_eq!(c.failed, 0, "{c:?}");
    }
    // Three pairs need a relay: symmetric against port-restricted (both ways) or symmetric.
    let relay = m.cells.iter().filter(|c| c.predicted == "relayed").count();
    assert_eq!(relay, 3, "{:?}", m.cells);
}

#[test]
fn punching_is_deterministic() {
    let show = |o: &PeerResult| format!("{o:?}");
    let a = punch_pair(NatPreset::RestrictedCone, NatPreset::Symmetric, 5);
    let b = punch_pair(NatPreset::RestrictedCone, NatPreset::Symmetric, 5);
    assert_eq!((show(&a.0), show(&a.1)), (show(&b.0), show(&b.1)));
}
