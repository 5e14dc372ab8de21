//! Hole punching in the simulator: two peers behind NATs meet at a rendezvous, gather their
//! reflexive addresses from a STUN server, check candidate pairs from the socket QUIC will use,
//! and end up with a direct, certificate-verified QUIC carrier — where RFC 4787 behaviour
//! allows one; where it does not, a clear error instead of a hang. The whole preset matrix
//! matches its prediction.

use postsock::punch::PathKind;
use sim::NatPreset;
use testbed::natmatrix::{self, punch_pair, PeerResult};

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
fn the_matrix_matches_rfc_4787_predictions_in_every_seed() {
    let m = natmatrix::run(&[1, 2], 2);
    assert_eq!(m.cells.len(), 25);
    for c in &m.cells {
        assert!(c.as_predicted, "{c:?}");
    }
    // Three pairs need a relay: symmetric against port-restricted (both ways) or symmetric.
    let relay = m.cells.iter().filter(|c| c.predicted == "relay").count();
    assert_eq!(relay, 3, "{:?}", m.cells);
}

#[test]
fn punching_is_deterministic() {
    let show = |o: &PeerResult| format!("{o:?}");
    let a = punch_pair(NatPreset::RestrictedCone, NatPreset::Symmetric, 5);
    let b = punch_pair(NatPreset::RestrictedCone, NatPreset::Symmetric, 5);
    assert_eq!((show(&a.0), show(&a.1)), (show(&b.0), show(&b.1)));
}
