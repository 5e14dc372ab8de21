//! Worlds: the topology of a simulated network, built on one `turmoil::Sim`.
//!
//! A [`WorldSpec`] names endpoint hosts and gateways. Public hosts and gateways sit on a star
//! around the network core: the one-way latency between two of them is the sum of their
//! access latencies. A host with a `gateway` reaches the network only through that gateway
//! (every other turmoil link of it is partitioned), so the rest of the world sees the gateway's
//! address, as behind a NAT. [`World`] builds the turmoil simulation, runs the gateways, hands
//! out a [`SimNet`] per host, and applies faults.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gateway;
use crate::link::{DirectionCounters, LinkDirection, LinkParams, Verdict};
use crate::net::SimNet;
use crate::rng;
use crate::SimError;

/// An endpoint host (runs postsock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Unique name; other hosts resolve it.
    pub name: String,
    /// The gateway this host reaches the network through; absent for a public host.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The host's access link (to its gateway, or to the core for a public host).
    #[serde(default)]
    pub link: LinkParams,
    /// Further names this host answers to. Several hosts may share one (even another host's
    /// name): resolving it returns all their addresses, in the order the hosts are listed,
    /// as a DNS name with several address records would.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The host's network interfaces, each through its own gateway (a multi-homed host, say
    /// `wifi` and `cell`). Empty: one interface, `eth0`, with `gateway` and `link` above.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
}

impl HostSpec {
    /// A single-interface host `latency_ms` from its gateway (or from the core).
    pub fn new(name: &str, gateway: Option<&str>, latency_ms: u64) -> Self {
        HostSpec {
            name: name.into(),
            gateway: gateway.map(Into::into),
            link: LinkParams {
                latency_ms,
                ..LinkParams::default()
            },
            aliases: Vec::new(),
            interfaces: Vec::new(),
        }
    }
}

/// One interface of a multi-homed host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSpec {
    /// The interface's name (what postsock's path preferences refer to).
    pub name: String,
    /// The gateway this interface reaches the network through.
    pub gateway: String,
    /// The interface's access link to its gateway.
    #[serde(default)]
    pub link: LinkParams,
}

/// The name of a single-interface host's interface.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// A gateway host: translates addresses for the hosts behind it (endpoint-independent
/// mapping and filtering, port-preserving), and applies its middlebox policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Unique name.
    pub name: String,
    /// One-way latency from the gateway to the network core, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// What the gateway blocks (nothing by default).
    #[serde(default)]
    pub middlebox: Middlebox,
    /// How it translates (RFC 4787 behaviour); endpoint-independent and port-preserving by
    /// default.
    #[serde(default)]
    pub nat: NatSpec,
    /// The gateway this one sits behind (a home NAT behind a carrier-grade NAT): its own
    /// traffic is translated again there, and `latency_ms` is then the latency to that
    /// gateway. Absent: on the core.
    #[serde(default)]
    pub behind: Option<String>,
}

impl GatewaySpec {
    /// A NAT gateway `name`, 5 ms from the core, behaving as `preset`, blocking nothing.
    pub fn nat(name: &str, preset: NatPreset) -> Self {
        GatewaySpec {
            name: name.into(),
            latency_ms: 5,
            middlebox: Middlebox::default(),
            nat: NatSpec {
                preset: Some(preset),
                ..NatSpec::default()
            },
            behind: None,
        }
    }
}

/// How a NAT's mapping or filtering depends on the remote endpoint (RFC 4787 §4.1, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dependence {
    /// The same for every remote.
    #[default]
    EndpointIndependent,
    /// Per remote address.
    AddressDependent,
    /// Per remote address and port.
    AddressAndPortDependent,
}

/// How a NAT picks the public port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAssignment {
    /// The inside port when it is free.
    #[default]
    Preserving,
    /// The next free port from 20000 up.
    Sequential,
    /// A free port drawn from the run's seed.
    Random,
}

/// NAT presets by their usual names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatPreset {
    /// As open as a translating gateway gets: endpoint-independent mapping and filtering,
    /// port-preserving (a host is reachable on its own port once it has sent a datagram).
    /// Also spelled `none`.
    #[serde(alias = "none")]
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering, random ports.
    Symmetric,
}

/// A gateway's NAT: a preset and/or explicit knobs (knobs override the preset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSpec {
    /// A preset by name.
    #[serde(default)]
    pub preset: Option<NatPreset>,
    /// Mapping behaviour.
    #[serde(default)]
    pub mapping: Option<Dependence>,
    /// Filtering behaviour.
    #[serde(default)]
    pub filtering: Option<Dependence>,
    /// Port assignment.
    #[serde(default)]
    pub ports: Option<PortAssignment>,
    /// A mapping without outbound traffic for this long is dropped (RFC 4787 REQ-5: at least
    /// 120 s, the default).
    #[serde(default)]
    pub mapping_timeout_s: Option<u64>,
    /// Whether a datagram from inside to the NAT's own public address is turned around to
    /// the inside endpoint that owns the port (RFC 4787 REQ-9; on for `open`, off otherwise).
    #[serde(default)]
    pub hairpin: Option<bool>,
}

/// The NAT behaviour a [`NatSpec`] resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatBehaviour {
    /// Mapping behaviour.
    pub mapping: Dependence,
    /// Filtering behaviour.
    pub filtering: Dependence,
    /// Port assignment.
    pub ports: PortAssignment,
    /// Idle time after which a mapping is dropped.
    pub mapping_timeout: Duration,
    /// Hairpinning on.
    pub hairpin: bool,
}

impl NatSpec {
    /// The behaviour: the preset's (endpoint-independent, port-preserving without one),
    /// overridden by the explicit knobs.
    pub fn behaviour(&self) -> NatBehaviour {
        use Dependence::*;
        let (mapping, filtering, ports) = match self.preset {
            None | Some(NatPreset::Open) | Some(NatPreset::FullCone) => (
                EndpointIndependent,
                EndpointIndependent,
                PortAssignment::Preserving,
            ),
            Some(NatPreset::RestrictedCone) => (
                EndpointIndependent,
                AddressDependent,
                PortAssignment::Preserving,
            ),
            Some(NatPreset::PortRestrictedCone) => (
                EndpointIndependent,
                AddressAndPortDependent,
                PortAssignment::Preserving,
            ),
            Some(NatPreset::Symmetric) => (
                AddressAndPortDependent,
                AddressAndPortDependent,
                PortAssignment::Random,
            ),
        };
        NatBehaviour {
            mapping: self.mapping.unwrap_or(mapping),
            filtering: self.filtering.unwrap_or(filtering),
            ports: self.ports.unwrap_or(ports),
            mapping_timeout: Duration::from_secs(self.mapping_timeout_s.unwrap_or(120)),
            hairpin: self.hairpin.unwrap_or(self.preset == Some(NatPreset::Open)),
        }
    }
}

/// A gateway's filtering policy: the middleboxes that make protocol racing necessary.
/// Every rule applies to the traffic of the hosts behind the gateway, both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Middlebox {
    /// Drop every UDP datagram.
    #[serde(default)]
    pub block_udp: bool,
    /// Drop UDP datagrams to or from these remote ports.
    #[serde(default)]
    pub block_udp_ports: Vec<u16>,
    /// Let each UDP flow (inside address and port, remote address and port) carry this many
    /// datagrams, counting both directions, then drop everything of it: a QUIC handshake
    /// that starts and never finishes.
    #[serde(default)]
    pub udp_blackhole_after: Option<u32>,
    /// Swallow TCP connection attempts: the SYN vanishes, so a connect hangs until the
    /// caller gives up, as on a real network.
    #[serde(default)]
    pub tcp_blackhole: bool,
    /// Answer TCP connection attempts with a reset (connection refused).
    #[serde(default)]
    pub tcp_reset: bool,
}

impl Middlebox {
    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        *self != Middlebox::default()
    }
}

/// The whole topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    /// Endpoint hosts.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// Gateways.
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<GatewaySpec>,
}

impl WorldSpec {
    /// Checks names and references; errors name the offending host.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut names = BTreeSet::new();
        let all = self
            .hosts
            .iter()
            .map(|h| &h.name)
            .chain(self.gateways.iter().map(|g| &g.name));
        for name in all {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(SimError::Spec(format!("invalid host name `{name}`")));
            }
            if name.parse::<IpAddr>().is_ok() {
                return Err(SimError::Spec(format!(
                    "host name `{name}` looks like an address"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(SimError::Spec(format!("host name `{name}` is used twice")));
            }
        }
        for host in &self.hosts {
            for alias in &host.aliases {
                if alias == &host.name || alias.is_empty() || alias.parse::<IpAddr>().is_ok() {
                    return Err(SimError::Spec(format!(
                        "host `{}`: invalid alias `{alias}`",
                        host.name
                    )));
                }
            }
        }
        let gateways: BTreeSet<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
        let known_gateway = |host: &str, gw: &str| {
            if gateways.contains(gw) {
                return Ok(());
            }
            Err(SimError::Spec(format!(
                "host `{host}` names gateway `{gw}`, which is not defined (gateways: {})",
                gateways.iter().copied().collect::<Vec<_>>().join(", ")
            )))
        };
        for g in &self.gateways {
            let mut seen = BTreeSet::from([g.name.as_str()]);
            let mut up = g.behind.as_deref();
            while let Some(u) = up {
                if !gateways.contains(u) {
                    return Err(SimError::Spec(format!(
                        "gateway `{}` is behind gateway `{u}`, which is not defined \
                         (gateways: {})",
                        g.name,
                        gateways.iter().copied().collect::<Vec<_>>().join(", ")
                    )));
                }
                if !seen.insert(u) {
                    return Err(SimError::Spec(format!(
                        "gateway `{}`: the gateways it is behind form a loop",
                        g.name
                    )));
                }
                up = self
                    .gateways
                    .iter()
                    .find(|x| x.name == u)
                    .and_then(|x| x.behind.as_deref());
            }
        }
        for host in &self.hosts {
            if let Some(gw) = &host.gateway {
                known_gateway(&host.name, gw)?;
            }
            host.link
                .validate()
                .map_err(|e| SimError::Spec(format!("host `{}`: {e}", host.name)))?;
            if host.interfaces.is_empty() {
                continue;
            }
            if host.gateway.is_some() || host.link != LinkParams::default() {
                return Err(SimError::Spec(format!(
                    "host `{}` has `interfaces`: give each interface its gateway and link \
                     instead of the host's `gateway` and `link`",
                    host.name
                )));
            }
            let mut seen = BTreeSet::new();
            let mut via = BTreeSet::new();
            for i in &host.interfaces {
                if i.name.is_empty() || i.name.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(SimError::Spec(format!(
                        "host `{}`: invalid interface name `{}`",
                        host.name, i.name
                    )));
                }
                if !seen.insert(i.name.as_str()) {
                    return Err(SimError::Spec(format!(
                        "host `{}`: interface `{}` is listed twice",
                        host.name, i.name
                    )));
                }
                known_gateway(&host.name, &i.gateway)?;
                if !via.insert(i.gateway.as_str()) {
                    return Err(SimError::Spec(format!(
                        "host `{}`: two interfaces go through gateway `{}`; give each its own",
                        host.name, i.gateway
                    )));
                }
                i.link.validate().map_err(|e| {
                    SimError::Spec(format!("host `{}` interface `{}`: {e}", host.name, i.name))
                })?;
            }
        }
        Ok(())
    }
}

/// A change to the world at a point of the timeline.
///
/// `interface` names one interface of a multi-homed host; `None` means the host's only
/// interface (an error for a host with several).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The interface goes down and the host is told (its interface list shows it down, as
    /// when Wi-Fi disassociates): everything sent over it is dropped.
    LinkDown {
        /// The host.
        host: String,
        /// The interface.
        interface: Option<String>,
    },
    /// The interface comes back (this also ends a black hole).
    LinkUp {
        /// The host.
        host: String,
        /// The interface.
        interface: Option<String>,
    },
    /// Everything sent over the interface silently vanishes; the host is not told (the
    /// interface still looks up), as when the access point's uplink dies.
    Blackhole {
        /// The host.
        host: String,
        /// The interface.
        interface: Option<String>,
    },
    /// The interface's access link changes its loss, rate, queue or latency.
    SetLink {
        /// The host.
        host: String,
        /// The interface.
        interface: Option<String>,
        /// New loss probability.
        loss: Option<f64>,
        /// New rate in kbit/s.
        bandwidth_kbps: Option<u64>,
        /// New queue size in bytes.
        queue_bytes: Option<usize>,
        /// New one-way latency to the gateway (or core) in ms.
        latency_ms: Option<u64>,
    },
    /// A gateway's middlebox policy changes (for example UDP becomes blocked).
    SetMiddlebox {
        /// The gateway.
        host: String,
        /// The new policy.
        middlebox: Middlebox,
    },
    /// A gateway's NAT reboots: every UDP mapping is dropped, so the hosts behind it reappear
    /// from new public ports (a NAT rebinding).
    NatReboot {
        /// The gateway.
        host: String,
    },
    /// The host's software restarts (turmoil's bounce): its programs start afresh and every
    /// socket and in-memory state (sessions, tickets) is lost.
    Bounce {
        /// The host.
        host: String,
    },
}

impl Fault {
    /// The host the fault applies to.
    pub fn host(&self) -> &str {
        match self {
            Fault::LinkDown { host, .. }
            | Fault::LinkUp { host, .. }
            | Fault::Blackhole { host, .. }
            | Fault::SetLink { host, .. }
            | Fault::SetMiddlebox { host, .. }
            | Fault::NatReboot { host }
            | Fault::Bounce { host } => host,
        }
    }

    /// The interface the fault names, if any.
    pub fn interface(&self) -> Option<&str> {
        match self {
            Fault::LinkDown { interface, .. }
            | Fault::LinkUp { interface, .. }
            | Fault::Blackhole { interface, .. }
            | Fault::SetLink { interface, .. } => interface.as_deref(),
            _ => None,
        }
    }
}

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
        if ip.is_unspecified() || ip == self.ip || ip.is_loopback() {
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
    by_ip: BTreeMap<IpAddr, String>,
    links: Mutex<BTreeMap<String, AccessLink>>,
    tcp_intents: Mutex<BTreeMap<(IpAddr, IpAddr), VecDeque<SocketAddr>>>,
    /// Every host name and alias with the addresses it resolves to, in spec order.
    names: BTreeMap<String, Vec<IpAddr>>,
    /// Each gateway's current middlebox policy (faults may change it).
    middleboxes: Mutex<BTreeMap<String, Middlebox>>,
    /// How many times each gateway's NAT was rebooted (its mappings dropped).
    nat_epochs: Mutex<BTreeMap<String, u64>>,
    /// Bumped on every NAT reboot (what a gateway's TCP splices wait on).
    pub(crate) nat_reboots: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever an interface goes down or comes up (what hosts' path monitors wait on).
    pub(crate) iface_changes: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a host program panicked; the simulation is already failing.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Every address `name` resolves to (host names and aliases), in spec order.
    pub(crate) fn resolve_all(&self, name: &str) -> Vec<IpAddr> {
        self.names.get(name).cloned().unwrap_or_default()
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

    /// Offers a datagram to access link `link` (see [`Iface::link`]).
    pub(crate) fn offer(&self, link: &str, upstream: bool, len: usize) -> Verdict {
        let now = tokio::time::Instant::now();
        let mut links = lock(&self.links);
        match links.get_mut(link) {
            Some(link) if link.is_down || link.blackholed => {
                let dir = if upstream {
                    &mut link.up
                } else {
                    &mut link.down
                };
                dir.counters.offered += 1;
                dir.counters.losses += 1;
                Verdict::Lost
            }
            Some(link) => {
                let dir = if upstream {
                    &mut link.up
                } else {
                    &mut link.down
                };
                dir.offer(now, len)
            }
            None => Verdict::Deliver(now),
        }
    }

    /// Offers stream bytes to the upstream of access link `link`; see
    /// [`LinkDirection::offer_stream`].
    pub(crate) fn offer_stream(
        &self,
        link: &str,
        len: usize,
    ) -> Result<tokio::time::Instant, Duration> {
        let now = tokio::time::Instant::now();
        match lock(&self.links).get_mut(link) {
            Some(link) => link.up.offer_stream(now, len),
            None => Ok(now),
        }
    }

    pub(crate) fn push_tcp_intent(&self, from: IpAddr, gateway: IpAddr, dst: SocketAddr) {
        lock(&self.tcp_intents)
            .entry((from, gateway))
            .or_default()
            .push_back(dst);
    }

    pub(crate) fn pop_tcp_intent(&self, from: IpAddr, gateway: IpAddr) -> Option<SocketAddr> {
        lock(&self.tcp_intents)
            .get_mut(&(from, gateway))
            .and_then(VecDeque::pop_front)
    }

    /// Whether access link `link` drops everything (down or black-holed).
    pub(crate) fn link_is_down(&self, link: &str) -> bool {
        lock(&self.links)
            .get(link)
            .is_some_and(|l| l.is_down || l.blackholed)
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
                    loss: link.map_or(0.0, |l| l.up.params().loss),
                }
            })
            .collect()
    }
}

/// A simulated network ready to run host programs.
pub struct World<'a> {
    sim: turmoil::Sim<'a>,
    state: Arc<WorldState>,
    registered: BTreeSet<String>,
    /// Hosts running restartable (server) programs.
    servers: BTreeSet<String>,
    wired: BTreeSet<(String, String)>,
}

impl std::fmt::Debug for World<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.state.seed)
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl<'a> World<'a> {
    /// Builds the world for `spec`; every random choice derives from `seed`.
    /// `max_duration` bounds the simulated time of a run.
    pub fn new(spec: &WorldSpec, seed: u64, max_duration: Duration) -> Result<Self, SimError> {
        spec.validate()?;
        let sim = turmoil::Builder::new()
            .rng_seed(seed)
            .tick_duration(Duration::from_millis(1))
            .simulation_duration(max_duration)
            .min_message_latency(Duration::ZERO)
            .max_message_latency(Duration::ZERO)
            .udp_capacity(1 << 16)
            .tcp_capacity(1 << 16)
            .build();
        let mut nodes = BTreeMap::new();
        let mut by_ip = BTreeMap::new();
        let mut links = BTreeMap::new();
        // Look names up in spec order so addresses are assigned deterministically.
        for g in &spec.gateways {
            let ip = sim.lookup(g.name.as_str());
            by_ip.insert(ip, g.name.clone());
            let node = Node {
                ip,
                role: Role::Gateway,
                latency: Duration::from_millis(g.latency_ms),
                behind: g.behind.clone(),
                ifaces: Vec::new(),
            };
            nodes.insert(g.name.clone(), node);
        }
        for (index, h) in spec.hosts.iter().enumerate() {
            let ip = sim.lookup(h.name.as_str());
            by_ip.insert(ip, h.name.clone());
            // (name, address, gateway, link parameters, link key)
            let ifaces: Vec<(String, IpAddr, Option<String>, LinkParams, String)> =
                if h.interfaces.is_empty() {
                    vec![(
                        DEFAULT_INTERFACE.to_string(),
                        ip,
                        h.gateway.clone(),
                        h.link.clone(),
                        h.name.clone(),
                    )]
                } else {
                    h.interfaces
                        .iter()
                        .enumerate()
                        .map(|(k, i)| {
                            let addr = IpAddr::from([10, 200, index as u8, k as u8 + 1]);
                            let key = format!("{}/{}", h.name, i.name);
                            (
                                i.name.clone(),
                                addr,
                                Some(i.gateway.clone()),
                                i.link.clone(),
                                key,
                            )
                        })
                        .collect()
                };
            let role = if ifaces.iter().any(|i| i.2.is_some()) {
                Role::Private
            } else {
                Role::Public
            };
            for (_, _, _, params, key) in &ifaces {
                let access = AccessLink {
                    up: LinkDirection::new(
                        params.clone(),
                        rng::stream(seed, &format!("link/{key}/up")),
                    ),
                    down: LinkDirection::new(
                        params.clone(),
                        rng::stream(seed, &format!("link/{key}/down")),
                    ),
                    is_down: false,
                    blackholed: false,
                };
                links.insert(key.clone(), access);
            }
            let node = Node {
                ip,
                role,
                latency: Duration::from_millis(h.link.latency_ms),
                behind: None,
                ifaces: ifaces
                    .into_iter()
                    .map(|(name, ip, gateway, params, link)| Iface {
                        name,
                        ip,
                        gateway,
                        latency_ms: params.latency_ms.into(),
                        link,
                    })
                    .collect(),
            };
            nodes.insert(h.name.clone(), node);
        }
        let mut names: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for g in &spec.gateways {
            names
                .entry(g.name.clone())
                .or_default()
                .push(nodes[&g.name].ip);
        }
        for h in &spec.hosts {
            let ip = nodes[&h.name].ip;
            for name in std::iter::once(&h.name).chain(&h.aliases) {
                names.entry(name.clone()).or_default().push(ip);
            }
        }
        let state = Arc::new(WorldState {
            names,
            seed,
            nodes,
            by_ip,
            links: Mutex::new(links),
            tcp_intents: Mutex::new(BTreeMap::new()),
            nat_epochs: Mutex::new(BTreeMap::new()),
            nat_reboots: tokio::sync::watch::channel(0).0,
            iface_changes: tokio::sync::watch::channel(0).0,
            middleboxes: Mutex::new(
                spec.gateways
                    .iter()
                    .map(|g| (g.name.clone(), g.middlebox.clone()))
                    .collect(),
            ),
        });
        let mut world = World {
            sim,
            state,
            registered: BTreeSet::new(),
            servers: BTreeSet::new(),
            wired: BTreeSet::new(),
        };
        for g in &spec.gateways {
            let state = world.state.clone();
            let name = g.name.clone();
            world.registered.insert(name.clone());
            let ip = world.state.nodes[&name].ip;
            let nat = g.nat.behaviour();
            let upstream = g
                .behind
                .as_ref()
                .map(|u| SocketAddr::new(world.state.nodes[u].ip, crate::overlay::OVERLAY_PORT));
            world.sim.host(ip, move || {
                gateway::run(state.clone(), name.clone(), nat, upstream)
            });
        }
        Ok(world)
    }

    /// The seed of this world.
    pub fn seed(&self) -> u64 {
        self.state.seed
    }

    /// The one-way latency between hosts `a` and `b` along the simulated path (access links,
    /// gateways, core; a multi-homed host's first interface), if both exist.
    pub fn path_latency(&self, a: &str, b: &str) -> Option<Duration> {
        let edge = |name: &str| -> Option<(Duration, String)> {
            let node = self.state.nodes.get(name)?;
            let first = node.ifaces.first();
            Some(
                match first.and_then(|i| i.gateway.as_ref().map(|g| (i, g))) {
                    Some((iface, gateway)) => (iface.latency(), gateway.clone()),
                    None => (Duration::ZERO, name.to_string()),
                },
            )
        };
        let (la, ea) = edge(a)?;
        let (lb, eb) = edge(b)?;
        let core = self
            .state
            .one_way(self.state.nodes.get(&ea)?.ip, self.state.nodes.get(&eb)?.ip)?;
        Some(la + lb + core)
    }

    /// The address of host or gateway `name` (for a host behind a gateway: its inside address).
    pub fn ip(&self, name: &str) -> Option<IpAddr> {
        self.state.resolve(name)
    }

    /// The network as seen from `host`. Use it only inside that host's program.
    pub fn net(&self, host: &str) -> Result<Arc<SimNet>, SimError> {
        let node = self.node(host)?;
        if node.role == Role::Gateway {
            return Err(SimError::Spec(format!(
                "`{host}` is a gateway, not an endpoint host"
            )));
        }
        Ok(Arc::new(SimNet::new(self.state.clone(), host.to_owned())))
    }

    fn node(&self, host: &str) -> Result<&Node, SimError> {
        self.state.nodes.get(host).ok_or_else(|| {
            SimError::Spec(format!(
                "unknown host `{host}` (known: {})",
                self.state
                    .nodes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Runs a long-lived program on `host` (restarted if the host bounces).
    pub fn host<F, Fut>(&mut self, host: &str, program: F) -> Result<(), SimError>
    where
        F: Fn() -> Fut + 'a,
        Fut: std::future::Future<Output = turmoil::Result> + 'static,
    {
        self.node(host)?;
        self.registered.insert(host.to_owned());
        self.servers.insert(host.to_owned());
        self.sim.host(host, program);
        Ok(())
    }

    /// Runs a client program on `host`; the world runs until every client has finished.
    pub fn client<Fut>(&mut self, host: &str, program: Fut) -> Result<(), SimError>
    where
        Fut: std::future::Future<Output = turmoil::Result> + 'static,
    {
        self.node(host)?;
        self.registered.insert(host.to_owned());
        self.sim.client(host, program);
        Ok(())
    }

    /// Sets latencies and partitions between every pair of registered nodes not yet wired.
    fn wire(&mut self) {
        let names: Vec<String> = self.registered.iter().cloned().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if !self.wired.insert((a.clone(), b.clone())) {
                    continue;
                }
                let (ia, ib) = (self.state.nodes[a].ip, self.state.nodes[b].ip);
                match self.state.one_way(ia, ib) {
                    Some(lat) => self.sim.set_link_latency(ia, ib, lat),
                    None => self.sim.partition(ia, ib),
                }
            }
        }
    }

    /// Advances the simulation by one tick (1 ms). Returns `true` once every client finished.
    pub fn step(&mut self) -> Result<bool, SimError> {
        self.wire();
        self.sim.step().map_err(|e| SimError::Host(e.to_string()))
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Applies a fault now.
    pub fn apply(&mut self, fault: &Fault) -> Result<(), SimError> {
        let host = fault.host().to_owned();
        let node = self.node(&host)?;
        if let Fault::NatReboot { .. } = fault {
            if node.role != Role::Gateway {
                return Err(SimError::Spec(format!(
                    "nat-reboot `{host}`: only gateways translate addresses"
                )));
            }
            *lock(&self.state.nat_epochs).entry(host).or_insert(0) += 1;
            self.state.nat_reboots.send_modify(|n| *n += 1);
            return Ok(());
        }
        if let Fault::SetMiddlebox { middlebox, .. } = fault {
            if node.role != Role::Gateway {
                return Err(SimError::Spec(format!(
                    "set-middlebox `{host}`: only gateways carry a middlebox"
                )));
            }
            lock(&self.state.middleboxes).insert(host, middlebox.clone());
            return Ok(());
        }
        if node.role == Role::Gateway {
            return Err(SimError::Spec(format!(
                "fault on `{host}`: gateways have no access link of their own in this version"
            )));
        }
        if let Fault::Bounce { .. } = fault {
            if !self.servers.contains(&host) {
                return Err(SimError::Spec(format!(
                    "bounce `{host}`: only a host that runs a server program can be restarted"
                )));
            }
            self.sim.bounce(host.as_str());
            return Ok(());
        }
        let iface = match fault.interface() {
            Some(name) => node.iface_named(name),
            None if node.ifaces.len() == 1 => node.ifaces.first(),
            None => None,
        }
        .ok_or_else(|| {
            let names: Vec<&str> = node.ifaces.iter().map(|i| i.name.as_str()).collect();
            SimError::Spec(format!(
                "fault on `{host}`: name one of its interfaces ({}){}",
                names.join(", "),
                fault
                    .interface()
                    .map(|n| format!(", not `{n}`"))
                    .unwrap_or_default()
            ))
        })?;
        let (key, gateway) = (iface.link.clone(), iface.gateway.clone());
        let peers = self.access_peers(&host, gateway.as_deref());
        match fault {
            // TCP has no loss model here: hold its segments while the link drops everything,
            // as retransmission would deliver them after it returns. UDP is dropped below.
            Fault::LinkDown { .. } | Fault::Blackhole { .. } => {
                for p in &peers {
                    self.sim.hold(host.as_str(), p.as_str());
                }
            }
            Fault::LinkUp { .. } => {
                for p in &peers {
                    self.sim.release(host.as_str(), p.as_str());
                }
            }
            Fault::SetLink {
                latency_ms: Some(ms),
                ..
            } => {
                iface
                    .latency_ms
                    .store(*ms, std::sync::atomic::Ordering::Relaxed);
                let (a, own) = (node.ip, Duration::from_millis(*ms));
                for p in &peers {
                    let peer = &self.state.nodes[p.as_str()];
                    let lat = match &gateway {
                        Some(_) => own,
                        None => own + peer.own_latency(),
                    };
                    self.sim.set_link_latency(a, peer.ip, lat);
                }
            }
            _ => {}
        }
        let mut links = lock(&self.state.links);
        let link = links
            .get_mut(&key)
            .ok_or_else(|| SimError::Spec(format!("`{host}` has no access link")))?;
        let was_down = link.is_down;
        match fault {
            Fault::LinkDown { .. } => link.is_down = true,
            Fault::Blackhole { .. } => link.blackholed = true,
            Fault::LinkUp { .. } => {
                link.is_down = false;
                link.blackholed = false;
            }
            Fault::SetLink {
                loss,
                bandwidth_kbps,
                queue_bytes,
                latency_ms,
                ..
            } => {
                let mut params = link.up.params().clone();
                if let Some(loss) = loss {
                    params.loss = *loss;
                }
                if let Some(kbps) = bandwidth_kbps {
                    params.bandwidth_kbps = Some(*kbps);
                }
                if let Some(q) = queue_bytes {
                    params.queue_bytes = *q;
                }
                if let Some(ms) = latency_ms {
                    params.latency_ms = *ms;
                }
                params
                    .validate()
                    .map_err(|e| SimError::Spec(format!("fault on `{host}`: {e}")))?;
                link.up.set_params(params.clone());
                link.down.set_params(params);
            }
            Fault::Bounce { .. } | Fault::SetMiddlebox { .. } | Fault::NatReboot { .. } => {}
        }
        // The host's monitors hear of an interface going down or up, and of a change of its
        // link's quality (as a radio reports its signal); a black hole stays unannounced.
        let changed = link.is_down != was_down || matches!(fault, Fault::SetLink { .. });
        drop(links);
        if changed {
            self.state.iface_changes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// The registered nodes `host` talks to over the access link through `gateway` (or, for
    /// a public host, directly).
    fn access_peers(&self, host: &str, gateway: Option<&str>) -> Vec<String> {
        match gateway {
            Some(gateway) => vec![gateway.to_string()],
            None => self
                .registered
                .iter()
                .filter(|n| *n != host && self.state.nodes[n.as_str()].role != Role::Private)
                .cloned()
                .collect(),
        }
    }

    /// Per-host access-link counters so far.
    pub fn counters(&self) -> BTreeMap<String, LinkCounters> {
        lock(&self.state.links)
            .iter()
            .map(|(name, l)| {
                let c = LinkCounters {
                    up: l.up.counters,
                    down: l.down.counters,
                };
                (name.clone(), c)
            })
            .collect()
    }
}
