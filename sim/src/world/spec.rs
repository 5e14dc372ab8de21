//! The world specification: hosts, interfaces, gateways, NAT behaviours, middleboxes, faults,
//! and their validation. Plain data (serde); nothing here runs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::LinkParams;
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
    /// A group of hosts alike: `count = N` stands for N hosts `<name>-1` … `<name>-N`, each
    /// with its own address and its own access link as described here (see
    /// [`WorldSpec::expand`]). Only for a single-interface host; at most [`MAX_GROUP`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The IP versions the host speaks: `ipv4` (the default), `dual` (dual-stack: an IPv4
    /// and an IPv6 address) or `ipv6` (IPv6-only). IPv6 is for public single-interface hosts;
    /// its addresses are `2001:db8::<n>`. Names resolve to AAAA records for IPv6 addresses.
    #[serde(default, skip_serializing_if = "IpVersions::is_ipv4")]
    pub ip: IpVersions,
    /// IPv6 is broken for this host: it has an address and a route, but its IPv6 packets
    /// vanish on the way (both ways), as behind a broken tunnel. Only with `ip = "dual"` or
    /// `"ipv6"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_blackhole: bool,
}

/// Which IP versions a host has addresses of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpVersions {
    /// IPv4 only.
    #[default]
    Ipv4,
    /// IPv4 and IPv6.
    Dual,
    /// IPv6 only.
    Ipv6,
}

impl IpVersions {
    fn is_ipv4(&self) -> bool {
        *self == IpVersions::Ipv4
    }

    /// Whether the host has an IPv4 address.
    pub fn v4(self) -> bool {
        self != IpVersions::Ipv6
    }

    /// Whether the host has an IPv6 address.
    pub fn v6(self) -> bool {
        self != IpVersions::Ipv4
    }
}

/// The world's DNS: how long each kind of query takes to answer (per query, from the host
/// that asks). Zero: answered at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// Time to answer an A (IPv4) query, ms (at most 60000).
    #[serde(default)]
    pub a_ms: u64,
    /// Time to answer an AAAA (IPv6) query, ms (at most 60000).
    #[serde(default)]
    pub aaaa_ms: u64,
    /// AAAA queries go unanswered (a resolver or middlebox that drops them): a client that
    /// asks both families gets its A answer, and a lookup of both gives up on AAAA after the
    /// resolver timeout (5 s).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aaaa_lost: bool,
}

/// The largest host group (`count`).
pub const MAX_GROUP: u32 = 10_000;

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
            count: None,
            ip: IpVersions::Ipv4,
            ipv6_blackhole: false,
        }
    }

    /// The names of the hosts this entry stands for: its own, or its group's members.
    pub fn members(&self) -> Vec<String> {
        match self.count {
            None => vec![self.name.clone()],
            Some(n) => (1..=n).map(|k| format!("{}-{k}", self.name)).collect(),
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
    /// One-way latency from the gateway to the network core, in milliseconds (at most
    /// 60000).
    #[serde(default, deserialize_with = "crate::link::de::latency_ms")]
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
    /// The gateway's own uplink (to the core, or to the gateway it is behind): rate, queue,
    /// loss and the other link knobs, shared by every host behind it (its latency is
    /// `latency_ms`, so `link.latency_ms` must be 0). Absent: latency only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkParams>,
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
            link: None,
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
    /// The DNS.
    #[serde(default)]
    pub dns: DnsSpec,
}

impl WorldSpec {
    /// The world with every host group (`count = N`) replaced by its N members, named
    /// `<name>-1` … `<name>-N`, in place and in that order; each member keeps the group's
    /// gateway, link and aliases, and also answers to the group's name. Fails if a member's
    /// name is taken.
    pub fn expand(&self) -> Result<WorldSpec, SimError> {
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for (i, h) in self.hosts.iter().enumerate() {
            if h.count.is_none() {
                hosts.push(h.clone());
                continue;
            }
            for member in h.members() {
                if self.hosts.iter().any(|o| o.name == member)
                    || self.gateways.iter().any(|g| g.name == member)
                {
                    return Err(SimError::Invalid {
                        key: vec!["host".into(), i.to_string(), "count".into()],
                        message: format!(
                            "host `{}`: member name `{member}` is already taken",
                            h.name
                        ),
                    });
                }
                let mut aliases = vec![h.name.clone()];
                aliases.extend(h.aliases.iter().cloned());
                hosts.push(HostSpec {
                    name: member,
                    aliases,
                    count: None,
                    ..h.clone()
                });
            }
        }
        Ok(WorldSpec {
            hosts,
            gateways: self.gateways.clone(),
            dns: self.dns,
        })
    }

    /// Checks names and references; errors name the offending host and carry the path of
    /// the offending key ([`SimError::Invalid`]).
    pub fn validate(&self) -> Result<(), SimError> {
        fn at(key: &[&str], message: String) -> SimError {
            SimError::Invalid {
                key: key.iter().map(|k| k.to_string()).collect(),
                message,
            }
        }
        let mut names = BTreeSet::new();
        let all = (self
            .hosts
            .iter()
            .map(|h| &h.name)
            .enumerate()
            .map(|(i, n)| ("host", i, n)))
        .chain(
            self.gateways
                .iter()
                .map(|g| &g.name)
                .enumerate()
                .map(|(i, n)| ("gateway", i, n)),
        );
        for (table, i, name) in all {
            let key = [table, &i.to_string(), "name"].map(str::to_string);
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(at(&key, format!("invalid host name `{name}`")));
            }
            if name.parse::<IpAddr>().is_ok() {
                return Err(at(
                    &key,
                    format!("host name `{name}` looks like an address"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(at(&key, format!("host name `{name}` is used twice")));
            }
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if let Some(n) = host.count {
                let key = ["host", &i.to_string(), "count"];
                if n == 0 || n > MAX_GROUP {
                    return Err(at(
                        &key,
                        format!(
                            "host `{}`: count must be between 1 and {MAX_GROUP}, got {n}",
                            host.name
                        ),
                    ));
                }
                if !host.interfaces.is_empty() {
                    return Err(at(
                        &key,
                        format!(
                            "host `{}`: a group (count) must be single-interface hosts",
                            host.name
                        ),
                    ));
                }
            }
            if host.ip.v6() && (host.gateway.is_some() || !host.interfaces.is_empty()) {
                return Err(at(
                    &["host", &i.to_string(), "ip"],
                    format!(
                        "host `{}`: IPv6 is simulated for public single-interface hosts only \
                         (no `gateway`, no `interfaces`)",
                        host.name
                    ),
                ));
            }
            if host.ipv6_blackhole && !host.ip.v6() {
                return Err(at(
                    &["host", &i.to_string(), "ipv6_blackhole"],
                    format!(
                        "host `{}`: ipv6_blackhole needs an IPv6 address (ip = \"dual\" or \"ipv6\")",
                        host.name
                    ),
                ));
            }
            for alias in &host.aliases {
                if alias == &host.name || alias.is_empty() || alias.parse::<IpAddr>().is_ok() {
                    return Err(at(
                        &["host", &i.to_string(), "aliases"],
                        format!("host `{}`: invalid alias `{alias}`", host.name),
                    ));
                }
            }
        }
        for (key, ms) in [("a_ms", self.dns.a_ms), ("aaaa_ms", self.dns.aaaa_ms)] {
            if ms > 60_000 {
                return Err(at(
                    &["dns", key],
                    format!("dns.{key} must be at most 60000 ms, got {ms}"),
                ));
            }
        }
        let gateways: BTreeSet<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
        let known_gateway = |key: &[&str], host: &str, gw: &str| {
            if gateways.contains(gw) {
                return Ok(());
            }
            Err(at(
                key,
                format!(
                    "host `{host}` names gateway `{gw}`, which is not defined (gateways: {})",
                    gateways.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ))
        };
        for (gi, g) in self.gateways.iter().enumerate() {
            let gi = gi.to_string();
            if let Some(link) = &g.link {
                if link.latency_ms != 0 {
                    return Err(at(
                        &["gateway", &gi, "link", "latency_ms"],
                        format!(
                            "gateway `{}`: its link's latency is the gateway's latency_ms; \
                             leave link.latency_ms out",
                            g.name
                        ),
                    ));
                }
                link.validate().map_err(|e| {
                    at(
                        &["gateway", &gi, "link"],
                        format!("gateway `{}` link: {e}", g.name),
                    )
                })?;
            }
            let mut seen = BTreeSet::from([g.name.as_str()]);
            let mut up = g.behind.as_deref();
            while let Some(u) = up {
                if !gateways.contains(u) {
                    return Err(at(
                        &["gateway", &gi, "behind"],
                        format!(
                            "gateway `{}` is behind gateway `{u}`, which is not defined \
                             (gateways: {})",
                            g.name,
                            gateways.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if !seen.insert(u) {
                    return Err(at(
                        &["gateway", &gi, "behind"],
                        format!(
                            "gateway `{}`: the gateways it is behind form a loop",
                            g.name
                        ),
                    ));
                }
                up = self
                    .gateways
                    .iter()
                    .find(|x| x.name == u)
                    .and_then(|x| x.behind.as_deref());
            }
        }
        for (hi, host) in self.hosts.iter().enumerate() {
            let hi = hi.to_string();
            if let Some(gw) = &host.gateway {
                known_gateway(&["host", &hi, "gateway"], &host.name, gw)?;
            }
            host.link
                .validate()
                .map_err(|e| at(&["host", &hi, "link"], format!("host `{}`: {e}", host.name)))?;
            if host.interfaces.is_empty() {
                continue;
            }
            if host.gateway.is_some() || host.link != LinkParams::default() {
                return Err(at(
                    &["host", &hi, "interfaces"],
                    format!(
                        "host `{}` has `interfaces`: give each interface its gateway and link \
                         instead of the host's `gateway` and `link`",
                        host.name
                    ),
                ));
            }
            let mut seen = BTreeSet::new();
            let mut via = BTreeSet::new();
            for (ii, i) in host.interfaces.iter().enumerate() {
                let ii = ii.to_string();
                let key = |k: &'static str| ["host", hi.as_str(), "interfaces", ii.as_str(), k];
                if i.name.is_empty() || i.name.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(at(
                        &key("name"),
                        format!("host `{}`: invalid interface name `{}`", host.name, i.name),
                    ));
                }
                if !seen.insert(i.name.as_str()) {
                    return Err(at(
                        &key("name"),
                        format!(
                            "host `{}`: interface `{}` is listed twice",
                            host.name, i.name
                        ),
                    ));
                }
                known_gateway(&key("gateway"), &host.name, &i.gateway)?;
                if !via.insert(i.gateway.as_str()) {
                    return Err(at(
                        &key("gateway"),
                        format!(
                            "host `{}`: two interfaces go through gateway `{}`; give each its own",
                            host.name, i.gateway
                        ),
                    ));
                }
                i.link.validate().map_err(|e| {
                    at(
                        &key("link"),
                        format!("host `{}` interface `{}`: {e}", host.name, i.name),
                    )
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
    /// The host's IPv6 breaks (`working = false`: its IPv6 packets vanish both ways, as
    /// `ipv6_blackhole`; the host is not told) or is repaired. IPv4 is untouched.
    Ipv6 {
        /// The host (it must have an IPv6 address).
        host: String,
        /// Whether IPv6 works from now on.
        working: bool,
    },
}

/// Which part of a fault a [`FaultError`] is about (so a scenario file can point at it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPart {
    /// The host (or gateway) it names.
    Host,
    /// The interface it names.
    Interface,
    /// The action and its parameters.
    Action,
}

/// A fault that does not fit the world it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FaultError {
    /// What is wrong with.
    pub part: FaultPart,
    /// For a bad parameter of the action: its key (`loss`, `latency_ms`...).
    pub key: Option<&'static str>,
    /// What is wrong.
    pub message: String,
}

impl WorldSpec {
    /// Whether `fault` fits this world: the one place faults are validated, by the scenario
    /// parser (which points at the offending key) and by [`World::apply`](super::World::apply).
    /// Middlebox and NAT faults need a gateway, link faults an endpoint host and, on a
    /// multi-homed host, one of its interfaces by name; new link parameters must be valid.
    pub fn check_fault(&self, fault: &Fault) -> Result<(), FaultError> {
        let err = |part, message: String| {
            Err(FaultError {
                part,
                key: None,
                message,
            })
        };
        let host = fault.host();
        if matches!(fault, Fault::SetMiddlebox { .. } | Fault::NatReboot { .. }) {
            if !self.gateways.iter().any(|g| g.name == host) {
                let gateways: Vec<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
                return err(
                    FaultPart::Host,
                    format!(
                        "this action needs a gateway, not `{host}` (gateways: {})",
                        gateways.join(", ")
                    ),
                );
            }
            return Ok(());
        }
        let Some(spec) = self.hosts.iter().find(|h| h.name == host) else {
            let hosts: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            return err(
                FaultPart::Host,
                format!("unknown host `{host}` (hosts: {})", hosts.join(", ")),
            );
        };
        let names: Vec<&str> = if spec.interfaces.is_empty() {
            vec![DEFAULT_INTERFACE]
        } else {
            spec.interfaces.iter().map(|i| i.name.as_str()).collect()
        };
        if matches!(fault, Fault::Ipv6 { .. }) && !spec.ip.v6() {
            return err(
                FaultPart::Host,
                format!("host `{host}` has no IPv6 address (ip = \"dual\" or \"ipv6\")"),
            );
        }
        let link_fault = !matches!(fault, Fault::Bounce { .. } | Fault::Ipv6 { .. });
        match fault.interface() {
            Some(name) if !names.contains(&name) => {
                return err(
                    FaultPart::Interface,
                    format!(
                        "host `{host}` has no interface `{name}` (interfaces: {})",
                        names.join(", ")
                    ),
                )
            }
            None if link_fault && names.len() > 1 => {
                return err(
                    FaultPart::Action,
                    format!(
                    "host `{host}` has several interfaces: name one with `interface = ...` ({})",
                    names.join(", ")
                ),
                )
            }
            _ => {}
        }
        if let Fault::SetLink {
            loss,
            bandwidth_kbps,
            queue_bytes,
            latency_ms,
            ..
        } = fault
        {
            if let Some(ms) = latency_ms.filter(|&ms| ms > 60_000) {
                return Err(FaultError {
                    part: FaultPart::Action,
                    key: Some("latency_ms"),
                    message: format!("latency_ms must be at most 60000 ms, got {ms}"),
                });
            }
            let check = LinkParams {
                loss: loss.unwrap_or(0.0),
                bandwidth_kbps: *bandwidth_kbps,
                queue_bytes: queue_bytes.unwrap_or(64 * 1024),
                ..LinkParams::default()
            };
            check.validate().map_err(|message| FaultError {
                part: FaultPart::Action,
                // LinkParams::validate starts its message with the key it rejects.
                key: ["loss", "bandwidth_kbps", "queue_bytes"]
                    .into_iter()
                    .find(|k| message.starts_with(k)),
                message,
            })?;
        }
        Ok(())
    }
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
            | Fault::Bounce { host }
            | Fault::Ipv6 { host, .. } => host,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> WorldSpec {
        let mut phone = HostSpec::new("phone", None, 5);
        phone.interfaces = vec![
            InterfaceSpec {
                name: "wifi".into(),
                gateway: "home".into(),
                link: LinkParams::default(),
            },
            InterfaceSpec {
                name: "cell".into(),
                gateway: "home".into(),
                link: LinkParams::default(),
            },
        ];
        WorldSpec {
            dns: Default::default(),
            hosts: vec![HostSpec::new("server", None, 10), phone],
            gateways: vec![GatewaySpec::nat("home", NatPreset::FullCone)],
        }
    }

    fn part(f: Fault) -> Option<(FaultPart, String)> {
        world().check_fault(&f).err().map(|e| (e.part, e.message))
    }

    #[test]
    fn faults_are_checked_against_the_world_once() {
        let down = |host: &str, interface: Option<&str>| Fault::LinkDown {
            host: host.into(),
            interface: interface.map(Into::into),
        };
        assert_eq!(part(down("server", None)), None);
        assert_eq!(part(down("server", Some("eth0"))), None);
        assert_eq!(part(down("phone", Some("cell"))), None);
        let (p, m) = part(down("phone", None)).expect("ambiguous");
        assert_eq!(p, FaultPart::Action);
        assert!(
            m.contains("several interfaces") && m.contains("wifi, cell"),
            "{m}"
        );
        let (p, m) = part(down("phone", Some("wlan0"))).expect("unknown interface");
        assert_eq!(
            (p, m.as_str()),
            (
                FaultPart::Interface,
                "host `phone` has no interface `wlan0` (interfaces: wifi, cell)"
            )
        );
        let (p, m) = part(down("home", None)).expect("a gateway has no link of its own");
        assert_eq!(p, FaultPart::Host);
        assert!(m.starts_with("unknown host `home`"), "{m}");
        let (p, m) = part(Fault::NatReboot {
            host: "server".into(),
        })
        .expect("not a gateway");
        assert_eq!(p, FaultPart::Host);
        assert!(m.contains("needs a gateway"), "{m}");
        assert_eq!(
            part(Fault::NatReboot {
                host: "home".into()
            }),
            None
        );
        let bad_loss = Fault::SetLink {
            host: "server".into(),
            interface: None,
            loss: Some(1.5),
            bandwidth_kbps: None,
            queue_bytes: None,
            latency_ms: None,
        };
        assert_eq!(part(bad_loss).map(|p| p.0), Some(FaultPart::Action));
    }
}
