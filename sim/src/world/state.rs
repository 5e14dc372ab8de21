//! The shared state of a running world: nodes and their interfaces, access links and their
//! counters, middlebox policies and NAT epochs that faults change, resolution and routes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::{DirectionCounters, LinkDirection, Verdict};

use super::spec::*;
use crate::lock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Public,
    /// Behind gateways: each interface names its own.
    Private,
    Gateway,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) ip: IpAddr,
    pub(crate) role: Role,
    pub(crate) latency: Duration,
    /// Gateways: the gateway this one is behind.
    pub(crate) behind: Option<String>,
    /// Endpoint hosts: their interfaces (one for a single-homed host).
    pub(crate) ifaces: Vec<Iface>,
    /// The host's IPv6 address, if it has one (public single-interface hosts only).
    pub(crate) ipv6: Option<IpAddr>,
    /// Whether the host has an IPv4 address (its turmoil address; an IPv6-only host has one
    /// too, inside the simulation, but nothing of it shows).
    pub(crate) v4: bool,
    /// Its IPv6 packets vanish on the way (a fault may change it).
    pub(crate) ipv6_blackhole: std::sync::atomic::AtomicBool,
}

/// One interface of an endpoint host.
#[derive(Debug)]
pub(crate) struct Iface {
    pub(crate) name: String,
    /// The interface's own address (the host's turmoil address for a single-homed host; a
    /// private 10.200/16 address per interface for a multi-homed one).
    pub(crate) ip: IpAddr,
    pub(crate) gateway: Option<String>,
    /// One-way latency to the gateway or the core, in ms (a fault may change it).
    pub(crate) latency_ms: std::sync::atomic::AtomicU64,
    /// The key of its access link.
    pub(crate) link: String,
}

impl Iface {
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Node {
    /// The interface that reaches the network through gateway `gw`.
    pub(crate) fn iface_via(&self, gw: &str) -> Option<&Iface> {
        self.ifaces
            .iter()
            .find(|i| i.gateway.as_deref() == Some(gw))
    }

    /// The interface with address `ip`, or the first for the host's own or an unspecified
    /// address.
    pub(crate) fn iface_for(&self, ip: IpAddr) -> Option<&Iface> {
        if ip.is_unspecified() || ip == self.ip || ip.is_loopback() || Some(ip) == self.ipv6 {
            return self.ifaces.first();
        }
        self.ifaces.iter().find(|i| i.ip == ip)
    }

    /// A public node's latency to the core (a public host's may change by fault).
    pub(crate) fn own_latency(&self) -> Duration {
        self.ifaces.first().map_or(self.latency, Iface::latency)
    }

    pub(crate) fn iface_named(&self, name: &str) -> Option<&Iface> {
        self.ifaces.iter().find(|i| i.name == name)
    }
}

/// An interface as a host sees it: name, address, whether it is up.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfaceStatus {
    /// Interface name.
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
    /// Up (not taken down by a `link-down` fault; a black hole still looks up).
    pub up: bool,
    /// One-way latency of its access link in ms, as the host's link layer knows it.
    pub latency_ms: u64,
    /// Loss probability of its access link.
    pub loss: f64,
}

/// Both directions of a host's access link.
#[derive(Debug)]
pub(crate) struct AccessLink {
    pub(crate) up: LinkDirection,
    pub(crate) down: LinkDirection,
    /// Down with the host told (a `link-down` fault).
    pub(crate) is_down: bool,
    /// Silently dropping everything (a `blackhole` fault).
    pub(crate) blackholed: bool,
    /// Its host's program ended: nothing it still offers (from a destructor, as its tasks
    /// are dropped) leaves, nor is counted, as nothing leaves a process that exited.
    pub(crate) exited: bool,
}

impl AccessLink {
    /// An up link with `params` in both directions, each with its own random stream from
    /// the run's `seed` and the link's `key`.
    pub(crate) fn new(params: &crate::link::LinkParams, key: &str, seed: u64) -> Self {
        let direction = |upstream: bool, side: &str| {
            LinkDirection::new(
                params.clone(),
                upstream,
                crate::rng::stream(seed, &format!("link/{key}/{side}")),
            )
        };
        AccessLink {
            up: direction(true, "up"),
            down: direction(false, "down"),
            is_down: false,
            blackholed: false,
            exited: false,
        }
    }

    /// The direction a datagram takes: towards the network (`upstream`) or the host.
    fn direction(&mut self, upstream: bool) -> &mut LinkDirection {
        if upstream {
            &mut self.up
        } else {
            &mut self.down
        }
    }

    /// Whether it drops everything (down or black-holed).
    fn dead(&self) -> bool {
        self.is_down || self.blackholed
    }
}

/// Counters of one host's access link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// From the host towards the network.
    pub up: DirectionCounters,
    /// From the network towards the host.
    pub down: DirectionCounters,
}

/// State shared by every host program of one world (single-threaded under turmoil).
#[derive(Debug)]
pub(crate) struct WorldState {
    pub(crate) seed: u64,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(super) by_ip: BTreeMap<IpAddr, String>,
    pub(super) links: Mutex<BTreeMap<String, AccessLink>>,
    /// Every host name and alias with the addresses it resolves to, in spec order.
    pub(super) names: BTreeMap<String, Vec<IpAddr>>,
    /// Each gateway's current middlebox policy (faults may change it).
    pub(super) middleboxes: Mutex<BTreeMap<String, Middlebox>>,
    /// How many times each gateway's NAT was rebooted (its mappings dropped).
    pub(super) nat_epochs: Mutex<BTreeMap<String, u64>>,
    /// Bumped whenever an interface goes down or comes up (what hosts' path monitors wait on).
    pub(crate) iface_changes: tokio::sync::watch::Sender<u64>,
    /// Packets captured on the access links, when capturing.
    pub(crate) capture: Mutex<Option<crate::capture::Capture>>,
    /// How long DNS queries take.
    pub(crate) dns: DnsSpec,
    /// The IPv6 core's overlay address, when some host speaks IPv6.
    pub(crate) v6_core: Option<SocketAddr>,
    /// An instant that stands for the simulation's start on the links' clock (see
    /// [`WorldState::offer`]).
    pub(crate) origin: tokio::time::Instant,
    /// Each host's TCP stacks, as its kernel holds them: they outlive the program that
    /// started them until the host's program has ended and they have finished closing
    /// ([`crate::tcp::linger`]).
    pub(crate) tcp_stacks: Mutex<BTreeMap<String, Vec<Arc<crate::tcp::TcpStack>>>>,
}

impl WorldState {
    /// How many times gateway `name` lost its NAT mappings.
    pub(crate) fn nat_epoch(&self, name: &str) -> u64 {
        lock(&self.nat_epochs).get(name).copied().unwrap_or(0)
    }

    /// The current middlebox policy of gateway `name`.
    pub(crate) fn middlebox(&self, name: &str) -> Middlebox {
        lock(&self.middleboxes)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn name_of(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    pub(crate) fn resolve(&self, name: &str) -> Option<IpAddr> {
        self.nodes.get(name).map(|n| n.ip)
    }

    /// Every address `name` resolves to (host names and aliases), in spec order; a host's
    /// IPv6 address before its IPv4 one.
    pub(crate) fn resolve_all(&self, name: &str) -> Vec<IpAddr> {
        self.names.get(name).cloned().unwrap_or_default()
    }

    /// The node owning IPv6 address `ip`.
    pub(crate) fn v6_owner(&self, ip: IpAddr) -> Option<&Node> {
        let node = self.nodes.get(self.name_of(ip)?)?;
        (node.ipv6 == Some(ip)).then_some(node)
    }

    /// Whether a datagram from node `from` can reach node `to` at all: not if either sits
    /// behind a gateway the other is not (a private address is unroutable). Senders drop
    /// what cannot arrive before it reaches turmoil, as a router would, so the world needs no
    /// turmoil partition per pair of hosts.
    ///
    /// Asked per datagram by public hosts and by gateways that are not behind another (never
    /// by a host behind a gateway, which sends only to its gateway), so it looks at the
    /// receiving side only; for those senders it agrees with [`one_way`](Self::one_way).
    pub(crate) fn routable(&self, from: IpAddr, to: IpAddr) -> bool {
        let Some(node) = self.name_of(to).and_then(|n| self.nodes.get(n)) else {
            // Not in the world: turmoil has no host there either.
            return false;
        };
        let sender = self.name_of(from);
        match node.role {
            Role::Private => sender.is_some_and(|f| node.iface_via(f).is_some()),
            _ => node.behind.is_none() || node.behind.as_deref() == sender,
        }
    }

    /// The program of the host at `ip` ended and its TCP finished closing: its access links
    /// take nothing more from it, and its stacks go.
    pub(crate) fn exited(&self, ip: IpAddr) {
        let Some((name, node)) = self.name_of(ip).and_then(|n| self.nodes.get_key_value(n)) else {
            return;
        };
        lock(&self.tcp_stacks).remove(name);
        let mut links = lock(&self.links);
        for iface in &node.ifaces {
            if let Some(link) = links.get_mut(&iface.link) {
                link.exited = true;
            }
        }
    }

    /// Keeps a TCP stack the host `host` started (forgetting ones that died with an earlier
    /// run of its program).
    pub(crate) fn add_tcp_stack(&self, host: &str, stack: Arc<crate::tcp::TcpStack>) {
        let mut stacks = lock(&self.tcp_stacks);
        let held = stacks.entry(host.to_owned()).or_default();
        held.retain(|s| s.alive());
        held.push(stack);
    }

    /// The TCP stacks of host `host`.
    pub(crate) fn tcp_stacks_of(&self, host: &str) -> Vec<Arc<crate::tcp::TcpStack>> {
        lock(&self.tcp_stacks)
            .get(host)
            .cloned()
            .unwrap_or_default()
    }

    /// One-way latency between two nodes as configured in turmoil, if they can talk.
    pub(crate) fn one_way(&self, a: IpAddr, b: IpAddr) -> Option<Duration> {
        let na = self.nodes.get(self.name_of(a)?)?;
        let nb = self.nodes.get(self.name_of(b)?)?;
        let (an, bn) = (self.name_of(a)?, self.name_of(b)?);
        match (&na.role, &nb.role) {
            (Role::Private, _) => na.iface_via(bn).map(Iface::latency),
            (_, Role::Private) => nb.iface_via(an).map(Iface::latency),
            // A gateway behind another reaches only that one (and its own inside hosts).
            _ if na.behind.is_some() => (na.behind.as_deref() == Some(bn)).then_some(na.latency),
            _ if nb.behind.is_some() => (nb.behind.as_deref() == Some(an)).then_some(nb.latency),
            _ => Some(na.own_latency() + nb.own_latency()),
        }
    }

    /// Offers a datagram of `len` bytes (an IP packet of `ip_len`) to access link `link`
    /// (see [`Iface::link`]).
    pub(crate) fn offer(&self, link: &str, upstream: bool, len: usize, ip_len: usize) -> Verdict {
        // The links keep their state (when a queue drains, when the last datagram left) on
        // the simulation's clock, not the offering host's: each host has its own tokio
        // clock, and a host that restarts gets a new one whose instants bear no fixed
        // relation to the old one's (its base is the wall clock at the restart). Instants
        // from both would meet in the link's state, and what a restarted server's link did
        // would depend on how fast the machine ran the simulation.
        let local = tokio::time::Instant::now();
        let sim = turmoil::sim_elapsed().map(|e| self.origin + e);
        let now = sim.unwrap_or(local);
        let verdict = {
            let mut links = lock(&self.links);
            match links.get_mut(link) {
                // Offered while its exited host's tasks are dropped: it never leaves.
                Some(link) if link.exited => Verdict::Lost,
                Some(link) if link.dead() => {
                    let dir = link.direction(upstream);
                    dir.counters.offered += 1;
                    dir.counters.losses += 1;
                    Verdict::Lost
                }
                Some(link) => link.direction(upstream).offer(now, len, ip_len),
                None => Verdict::Deliver(now),
            }
        };
        // Back on the host's clock, which is what it waits on.
        let local_at = |at: tokio::time::Instant| local + at.saturating_duration_since(now);
        match verdict {
            Verdict::Deliver(at) => Verdict::Deliver(local_at(at)),
            Verdict::Duplicate(at) => Verdict::Duplicate(local_at(at)),
            other => other,
        }
    }

    /// Whether a link with key `link` exists.
    pub(crate) fn has_link(&self, link: &str) -> bool {
        lock(&self.links).contains_key(link)
    }

    /// The MTU of access link `link`, if it has one.
    pub(crate) fn mtu(&self, link: &str) -> Option<usize> {
        lock(&self.links).get(link).and_then(|l| l.up.params().mtu)
    }

    /// A datagram that was queued on access link `link` is leaving now: if the link went
    /// down (or black) meanwhile it is lost with what was on the link, and counted.
    pub(crate) fn still_up(&self, link: &str, upstream: bool) -> bool {
        let mut links = lock(&self.links);
        match links.get_mut(link) {
            Some(l) if l.dead() => {
                l.direction(upstream).counters.lost_on_link += 1;
                false
            }
            _ => true,
        }
    }

    /// Captures a datagram (or, with `raw_ip`, the IPv4 packet it carries) crossing access
    /// link `link` now, if capturing.
    pub(crate) fn capture(
        &self,
        link: &str,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        raw_ip: bool,
    ) {
        let mut capture = lock(&self.capture);
        let Some(c) = capture.as_mut() else {
            return;
        };
        let at = turmoil::sim_elapsed().unwrap_or_default();
        if raw_ip {
            c.packet(link, at, payload.to_vec());
        } else {
            c.datagram(link, at, src, dst, payload);
        }
    }

    /// The interfaces of endpoint host `host`, as it sees them.
    pub(crate) fn interfaces(&self, host: &str) -> Vec<InterfaceStatus> {
        let Some(node) = self.nodes.get(host) else {
            return Vec::new();
        };
        let links = lock(&self.links);
        node.ifaces
            .iter()
            .map(|i| {
                let link = links.get(&i.link);
                InterfaceStatus {
                    name: i.name.clone(),
                    ip: i.ip,
                    up: !link.is_some_and(|l| l.is_down),
                    latency_ms: i.latency().as_millis() as u64,
                    loss: link.map_or(0.0, |l| l.up.loss()),
                }
            })
            .collect()
    }
}
