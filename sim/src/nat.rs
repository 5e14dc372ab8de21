//! The NAT table: the sans-IO core of a gateway's address translation (RFC 4787).
//!
//! [`NatTable`] decides, for every datagram, which mapping it leaves through (creating one
//! with a public port chosen as the NAT's port assignment says), whether a datagram arriving
//! on a mapping's public port may come in (filtering, idle timeout), where a hairpinned
//! datagram goes, and what a reboot forgets. It holds no sockets and reads no clock: the
//! gateway program (`gateway.rs`) owns one public socket per mapping and asks the table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use tokio::time::Instant;

use crate::overlay::OVERLAY_PORT;
use crate::segment::TCP_PORT;
use crate::world::spec::{Dependence, NatBehaviour, PortAssignment};

/// A mapping's key under the NAT's mapping behaviour: the inside endpoint, and the remote
/// address (or address and port) when the mapping depends on it (RFC 4787 §4.1).
pub(crate) type MappingKey = (SocketAddr, Option<SocketAddr>);

/// One mapping.
#[derive(Debug)]
struct Mapping {
    /// The inside endpoint it belongs to, and its public port.
    inside: SocketAddr,
    port: u16,
    /// The remotes the inside endpoint has sent to (for filtering).
    contacted: BTreeSet<SocketAddr>,
    /// When the inside endpoint last sent through it (for the idle timeout).
    last_out: Instant,
    /// TCP: the connection is closing (a FIN each way, or a RST): the mapping's timeout is
    /// the transitory one from then on (RFC 5382 REQ-5).
    closing: Closing,
}

/// How far a TCP connection through a mapping has got towards its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Closing {
    /// A FIN went out.
    pub(crate) fin_out: bool,
    /// A FIN came in.
    pub(crate) fin_in: bool,
    /// A RST went either way.
    pub(crate) reset: bool,
}

impl Closing {
    fn transitory(self) -> bool {
        self.reset || (self.fin_out && self.fin_in)
    }
}

/// RFC 5382 REQ-5: a TCP mapping whose connection is closing (FIN both ways, or RST) lives
/// at least this long after its last outbound packet (the established idle timeout is 2 h
/// 4 min).
pub(crate) const TCP_TRANSITORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

/// The mapping a TCP segment went through: by key going out, by public port coming in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpMapping {
    /// An outbound segment's mapping.
    Out(MappingKey),
    /// The mapping owning this public port (an inbound segment).
    In(u16),
}

/// Where an outbound datagram leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outbound {
    /// The mapping it leaves through.
    pub(crate) key: MappingKey,
    /// The mapping's public port.
    pub(crate) port: u16,
    /// The mapping is new: bind its public socket on `port`.
    pub(crate) created: bool,
    /// An idle mapping under the same key that expired and was replaced: close its socket.
    pub(crate) expired: bool,
}

/// What becomes of a datagram arriving on a mapping's public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// In to the inside endpoint.
    Deliver(SocketAddr),
    /// Dropped by the mapping's filtering.
    Filtered,
    /// The mapping is gone (idle too long, or replaced): nothing comes in through it again.
    Gone,
}

/// The translation state of one NAT (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct NatTable {
    behaviour: NatBehaviour,
    mappings: BTreeMap<MappingKey, Mapping>,
    ports: PortPicker,
}

impl NatTable {
    /// An empty table; random port choices come from `rng`.
    pub(crate) fn new(behaviour: NatBehaviour, rng: rand_chacha::ChaCha8Rng) -> Self {
        NatTable {
            ports: PortPicker::new(behaviour.ports, rng),
            behaviour,
            mappings: BTreeMap::new(),
        }
    }

    /// The key of the mapping a datagram from `inside` to `remote` uses.
    fn key(&self, inside: SocketAddr, remote: SocketAddr) -> MappingKey {
        match self.behaviour.mapping {
            Dependence::EndpointIndependent => (inside, None),
            Dependence::AddressDependent => (inside, Some(SocketAddr::new(remote.ip(), 0))),
            Dependence::AddressAndPortDependent => (inside, Some(remote)),
        }
    }

    fn expired(&self, m: &Mapping, now: Instant) -> bool {
        let timeout = if m.closing.transitory() {
            self.behaviour.mapping_timeout.min(TCP_TRANSITORY_TIMEOUT)
        } else {
            self.behaviour.mapping_timeout
        };
        now.saturating_duration_since(m.last_out) > timeout
    }

    /// TCP: what a segment through mapping `key` (out) or public port `port` (in) says of
    /// its connection's end. A SYN starts a connection afresh.
    pub(crate) fn note_tcp(&mut self, mapping: TcpMapping, syn: bool, fin: bool, rst: bool) {
        let m = match mapping {
            TcpMapping::Out(key) => self.mappings.get_mut(&key),
            TcpMapping::In(port) => self.mappings.values_mut().find(|m| m.port == port),
        };
        let Some(m) = m else { return };
        if syn {
            m.closing = Closing::default();
        }
        m.closing.reset |= rst;
        match mapping {
            TcpMapping::Out(_) => m.closing.fin_out |= fin,
            TcpMapping::In(_) => m.closing.fin_in |= fin,
        }
    }

    /// A datagram from `inside` to `remote` at `now`: the mapping it leaves through,
    /// refreshed (or created) and with `remote` recorded as contacted.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        inside: SocketAddr,
        remote: SocketAddr,
    ) -> Outbound {
        let key = self.key(inside, remote);
        let expired = self
            .mappings
            .get(&key)
            .is_some_and(|m| self.expired(m, now));
        if expired {
            self.mappings.remove(&key);
        }
        if let Some(m) = self.mappings.get_mut(&key) {
            m.last_out = now;
            m.contacted.insert(remote);
            return Outbound {
                key,
                port: m.port,
                created: false,
                expired,
            };
        }
        let port = self.ports.pick(inside.port());
        self.mappings.insert(
            key,
            Mapping {
                inside,
                port,
                contacted: BTreeSet::from([remote]),
                last_out: now,
                closing: Closing::default(),
            },
        );
        Outbound {
            key,
            port,
            created: true,
            expired,
        }
    }

    /// RFC 4787 §5: whether a datagram from `src` may come in through `m`.
    fn admits(&self, m: &Mapping, src: SocketAddr) -> bool {
        match self.behaviour.filtering {
            Dependence::EndpointIndependent => true,
            Dependence::AddressDependent => m.contacted.iter().any(|c| c.ip() == src.ip()),
            Dependence::AddressAndPortDependent => m.contacted.contains(&src),
        }
    }

    /// A datagram from `src` arriving at `now` on the public port of mapping `key`.
    pub(crate) fn inbound(&self, now: Instant, key: &MappingKey, src: SocketAddr) -> Inbound {
        match self.mappings.get(key) {
            None => Inbound::Gone,
            Some(m) if self.expired(m, now) => Inbound::Gone,
            Some(m) if self.admits(m, src) => Inbound::Deliver(m.inside),
            Some(_) => Inbound::Filtered,
        }
    }

    /// A datagram from `src` (an inside endpoint's public address) to this NAT's own public
    /// address at `port`: the inside endpoint it turns around to (RFC 4787 REQ-9), if
    /// hairpinning is on and that endpoint's mapping admits `src`.
    pub(crate) fn hairpin(&self, now: Instant, src: SocketAddr, port: u16) -> Option<SocketAddr> {
        if !self.behaviour.hairpin {
            return None;
        }
        self.mappings
            .values()
            .find(|m| m.port == port && !self.expired(m, now))
            .filter(|m| self.admits(m, src))
            .map(|m| m.inside)
    }

    /// A packet from `src` arriving at `now` on public port `port` (TCP, where one public
    /// socket carries every mapping): like [`inbound`](Self::inbound) for the mapping that
    /// owns the port.
    pub(crate) fn inbound_at(&self, now: Instant, port: u16, src: SocketAddr) -> Inbound {
        match self.mappings.values().find(|m| m.port == port) {
            None => Inbound::Gone,
            Some(m) if self.expired(m, now) => Inbound::Gone,
            Some(m) if self.admits(m, src) => Inbound::Deliver(m.inside),
            Some(_) => Inbound::Filtered,
        }
    }

    /// The NAT rebooted: every mapping is forgotten (their ports are not handed out again).
    pub(crate) fn reboot(&mut self) -> Vec<MappingKey> {
        std::mem::take(&mut self.mappings).into_keys().collect()
    }
}

/// Picks public ports: preserving, sequential or random (seeded), never one twice.
#[derive(Debug)]
struct PortPicker {
    how: PortAssignment,
    used: BTreeSet<u16>,
    next: u16,
    rng: rand_chacha::ChaCha8Rng,
}

impl PortPicker {
    fn new(how: PortAssignment, rng: rand_chacha::ChaCha8Rng) -> Self {
        PortPicker {
            how,
            used: BTreeSet::from([OVERLAY_PORT, TCP_PORT]),
            next: 20_000,
            rng,
        }
    }

    /// A fresh port for an inside endpoint on port `wanted`.
    fn pick(&mut self, wanted: u16) -> u16 {
        use rand::Rng;
        let mut port = match self.how {
            PortAssignment::Preserving => wanted.max(1024),
            PortAssignment::Sequential => self.next,
            PortAssignment::Random => self.rng.gen_range(1024..=u16::MAX),
        };
        while self.used.contains(&port) {
            port = match self.how {
                PortAssignment::Random => self.rng.gen_range(1024..=u16::MAX),
                _ => {
                    if port == u16::MAX {
                        1024
                    } else {
                        port + 1
                    }
                }
            };
        }
        self.used.insert(port);
        if self.how == PortAssignment::Sequential {
            self.next = port.checked_add(1).unwrap_or(1024);
        }
        port
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;

    use super::*;
    use crate::world::NatPreset;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn table_with(spec: crate::world::NatSpec) -> NatTable {
        NatTable::new(spec.behaviour(), rand_chacha::ChaCha8Rng::seed_from_u64(7))
    }

    fn table(preset: NatPreset) -> NatTable {
        table_with(crate::world::NatSpec {
            preset: Some(preset),
            ..Default::default()
        })
    }

    const IN: &str = "10.0.0.2:5000";
    const R1: &str = "192.0.2.1:3478";
    const R1_OTHER_PORT: &str = "192.0.2.1:9999";
    const R2: &str = "198.51.100.1:3478";

    /// RFC 5382 REQ-5: an established TCP mapping lives 2 h 4 min idle; once its connection
    /// closes (a FIN each way, or a RST) only the transitory 4 min. A new SYN through it
    /// makes it established again.
    #[test]
    fn a_closed_tcp_connection_s_mapping_times_out_after_four_minutes() {
        let mut t = table_with(crate::world::NatSpec {
            mapping_timeout_s: Some(2 * 3600 + 4 * 60),
            ..Default::default()
        });
        let t0 = Instant::now();
        let out = t.outbound(t0, a(IN), a(R1));
        let later = t0 + Duration::from_secs(600);
        assert_eq!(t.inbound(later, &out.key, a(R1)), Inbound::Deliver(a(IN)));
        // One FIN each way: transitory.
        t.note_tcp(TcpMapping::Out(out.key), false, true, false);
        assert_eq!(t.inbound(later, &out.key, a(R1)), Inbound::Deliver(a(IN)));
        t.note_tcp(TcpMapping::In(out.port), false, true, false);
        assert_eq!(t.inbound(later, &out.key, a(R1)), Inbound::Gone);
        assert_eq!(
            t.inbound(t0 + Duration::from_secs(239), &out.key, a(R1)),
            Inbound::Deliver(a(IN))
        );
        // A RST alone does it too; a SYN undoes it.
        let mut t2 = table(NatPreset::FullCone);
        let out = t2.outbound(t0, a(IN), a(R1));
        t2.note_tcp(TcpMapping::In(out.port), false, false, true);
        assert!(t2.mappings.values().all(|m| m.closing.transitory()));
        t2.note_tcp(TcpMapping::Out(out.key), true, false, false);
        assert!(t2.mappings.values().all(|m| !m.closing.transitory()));
    }

    #[test]
    fn endpoint_independent_mapping_reuses_one_port_for_every_remote() {
        let mut t = table(NatPreset::FullCone);
        let now = Instant::now();
        let first = t.outbound(now, a(IN), a(R1));
        assert!(first.created);
        assert_eq!(first.port, 5000, "port preserved");
        let second = t.outbound(now, a(IN), a(R2));
        assert_eq!((second.port, second.created), (5000, false));
        // Full cone: anyone may send in.
        assert_eq!(
            t.inbound(now, &first.key, a("203.0.113.9:1")),
            Inbound::Deliver(a(IN))
        );
    }

    #[test]
    fn symmetric_mapping_gets_a_port_per_remote_and_filters_by_address_and_port() {
        let mut t = table(NatPreset::Symmetric);
        let now = Instant::now();
        let one = t.outbound(now, a(IN), a(R1));
        let two = t.outbound(now, a(IN), a(R2));
        assert!(one.created && two.created);
        assert_ne!(one.port, two.port);
        assert_eq!(t.inbound(now, &one.key, a(R1)), Inbound::Deliver(a(IN)));
        assert_eq!(
            t.inbound(now, &one.key, a(R1_OTHER_PORT)),
            Inbound::Filtered
        );
        assert_eq!(t.inbound(now, &one.key, a(R2)), Inbound::Filtered);
    }

    #[test]
    fn restricted_cone_filters_by_address_port_restricted_by_address_and_port() {
        let now = Instant::now();
        let mut t = table(NatPreset::RestrictedCone);
        let m = t.outbound(now, a(IN), a(R1));
        assert_eq!(
            t.inbound(now, &m.key, a(R1_OTHER_PORT)),
            Inbound::Deliver(a(IN))
        );
        assert_eq!(t.inbound(now, &m.key, a(R2)), Inbound::Filtered);
        let mut t = table(NatPreset::PortRestrictedCone);
        let m = t.outbound(now, a(IN), a(R1));
        assert_eq!(t.inbound(now, &m.key, a(R1_OTHER_PORT)), Inbound::Filtered);
        // Sending to it opens the filter.
        t.outbound(now, a(IN), a(R1_OTHER_PORT));
        assert_eq!(
            t.inbound(now, &m.key, a(R1_OTHER_PORT)),
            Inbound::Deliver(a(IN))
        );
    }

    #[test]
    fn an_idle_mapping_expires_and_is_replaced_on_a_fresh_port() {
        let mut t = table(NatPreset::PortRestrictedCone);
        let t0 = Instant::now();
        let m = t.outbound(t0, a(IN), a(R1));
        let timeout = Duration::from_secs(120);
        assert_eq!(
            t.inbound(t0 + timeout, &m.key, a(R1)),
            Inbound::Deliver(a(IN))
        );
        let late = t0 + timeout + Duration::from_millis(1);
        assert_eq!(t.inbound(late, &m.key, a(R1)), Inbound::Gone);
        let again = t.outbound(late, a(IN), a(R1));
        assert!(again.created && again.expired);
        assert_ne!(again.port, m.port, "a port is never handed out twice");
        // Traffic out keeps a mapping alive.
        let t1 = late + Duration::from_secs(100);
        assert!(!t.outbound(t1, a(IN), a(R1)).created);
        assert_eq!(
            t.inbound(t1 + Duration::from_secs(100), &again.key, a(R1)),
            Inbound::Deliver(a(IN))
        );
    }

    #[test]
    fn ports_never_repeat_whatever_the_assignment() {
        for ports in [
            PortAssignment::Random,
            PortAssignment::Sequential,
            PortAssignment::Preserving,
        ] {
            let mut t = table_with(crate::world::NatSpec {
                preset: Some(NatPreset::Symmetric),
                ports: Some(ports),
                ..Default::default()
            });
            let mut seen = BTreeSet::new();
            let now = Instant::now();
            for i in 0..200u16 {
                let o = t.outbound(
                    now,
                    SocketAddr::new([10, 0, 0, 2].into(), 5000 + i % 3),
                    SocketAddr::new([192, 0, 2, 1].into(), i),
                );
                if o.created {
                    assert!(seen.insert(o.port), "{ports:?} reused {}", o.port);
                    assert_ne!(o.port, OVERLAY_PORT);
                }
            }
        }
    }

    #[test]
    fn hairpinning_turns_around_to_the_owner_as_its_filter_allows() {
        let now = Instant::now();
        let mut t = table(NatPreset::Open);
        let bob = t.outbound(now, a("10.0.0.3:6000"), a(R1));
        let alice_public = a("203.0.113.1:5000");
        assert_eq!(
            t.hairpin(now, alice_public, bob.port),
            Some(a("10.0.0.3:6000"))
        );
        assert_eq!(
            t.hairpin(now, alice_public, bob.port + 1),
            None,
            "no such mapping"
        );
        let mut t = table(NatPreset::PortRestrictedCone);
        let bob = t.outbound(now, a("10.0.0.3:6000"), a(R1));
        assert_eq!(
            t.hairpin(now, alice_public, bob.port),
            None,
            "hairpinning off"
        );
    }

    #[test]
    fn a_reboot_forgets_every_mapping() {
        let mut t = table(NatPreset::FullCone);
        let now = Instant::now();
        let m = t.outbound(now, a(IN), a(R1));
        assert_eq!(t.reboot(), vec![m.key]);
        assert_eq!(t.inbound(now, &m.key, a(R1)), Inbound::Gone);
        let again = t.outbound(now, a(IN), a(R1));
        assert!(again.created);
        assert_ne!(again.port, m.port);
    }
}
