//! Worlds: the topology of a simulated network, built on one `turmoil::Sim`.
//!
//! A [`WorldSpec`] names endpoint hosts and gateways. Public hosts and gateways sit on a star
//! around the network core: the one-way latency between two of them is the sum of their
//! access latencies. A host with a `gateway` reaches the network only through that gateway
//! (every other turmoil link of it is partitioned), so the rest of the world sees the gateway's
//! address, as behind a NAT. [`World`] builds the turmoil simulation, runs the gateways, hands
//! out a [`SimNet`] per host, and applies faults.

pub(crate) mod spec;
pub(crate) mod state;

pub use spec::*;
pub(crate) use state::*;
pub use state::{InterfaceStatus, LinkCounters};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::gateway;
use crate::link::LinkParams;
use crate::lock;
use crate::net::SimNet;
use crate::SimError;

/// The name of the IPv6 core node (a space keeps it apart from every valid host name).
pub(crate) const V6_CORE: &str = "ipv6 core";

/// A simulated network ready to run host programs.
pub struct World<'a> {
    sim: turmoil::Sim<'a>,
    state: Arc<WorldState>,
    registered: BTreeSet<String>,
    /// Hosts running restartable (server) programs.
    servers: BTreeSet<String>,
    /// What it was built from (faults are checked against it).
    spec: WorldSpec,
    /// Client programs that start later ([`World::client_at`]), by start time (in the order
    /// given for equal times).
    later: VecDeque<Later>,
    /// Client programs started and not yet ended (their hosts' stacks may still be closing
    /// connections: the world's run ends when the programs have).
    running: std::rc::Rc<std::cell::Cell<usize>>,
}

/// A client program waiting for its start.
struct Later {
    at: Duration,
    host: String,
    program: Program,
}

/// A client's program.
type Program = std::pin::Pin<Box<dyn std::future::Future<Output = turmoil::Result>>>;

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
            .epoch(std::time::UNIX_EPOCH + crate::net::EPOCH)
            .tick_duration(Duration::from_millis(1))
            .simulation_duration(max_duration)
            .min_message_latency(Duration::ZERO)
            .max_message_latency(Duration::ZERO)
            .udp_capacity(1 << 16)
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
                ipv6: None,
                v4: true,
                ipv6_blackhole: false.into(),
            };
            nodes.insert(g.name.clone(), node);
        }
        for g in &spec.gateways {
            if let Some(params) = &g.link {
                let key = gateway_link(&g.name);
                links.insert(key.clone(), AccessLink::new(params, &key, seed));
            }
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
                            // 10.200.0.0/16 upwards by the host's position (a group before
                            // it may push that past 255).
                            let at = index as u32;
                            let addr = IpAddr::from([
                                10,
                                200u8.wrapping_add((at >> 8) as u8),
                                at as u8,
                                k as u8 + 1,
                            ]);
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
                links.insert(key.clone(), AccessLink::new(params, key, seed));
            }
            let ipv6 = h.ip.v6().then(|| {
                let n = index as u32 + 1;
                IpAddr::from(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    (n >> 16) as u16,
                    n as u16,
                ))
            });
            if let Some(v6) = ipv6 {
                by_ip.insert(v6, h.name.clone());
            }
            let node = Node {
                ipv6,
                v4: h.ip.v4(),
                ipv6_blackhole: h.ipv6_blackhole.into(),
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
            let node = &nodes[&h.name];
            let addrs: Vec<IpAddr> = node
                .ipv6
                .into_iter()
                .chain(node.v4.then_some(node.ip))
                .collect();
            for name in std::iter::once(&h.name).chain(&h.aliases) {
                names.entry(name.clone()).or_default().extend(&addrs);
            }
        }
        // IPv6 packets cross the IPv6 core (a node of its own, as turmoil's addresses are all
        // IPv4): from a host to the core and on to the host owning the destination, each leg
        // with its host's latency, so the IPv6 path is as long as the IPv4 one.
        let v6_core = spec.hosts.iter().any(|h| h.ip.v6()).then(|| {
            let ip = sim.lookup(V6_CORE);
            by_ip.insert(ip, V6_CORE.to_owned());
            nodes.insert(
                V6_CORE.to_owned(),
                Node {
                    ip,
                    role: Role::Gateway,
                    latency: Duration::ZERO,
                    behind: None,
                    ifaces: Vec::new(),
                    ipv6: None,
                    v4: true,
                    ipv6_blackhole: false.into(),
                },
            );
            SocketAddr::new(ip, crate::overlay::OVERLAY_PORT)
        });
        let state = Arc::new(WorldState {
            names,
            seed,
            nodes,
            by_ip,
            links: Mutex::new(links),
            origin: tokio::time::Instant::now(),
            tcp_stacks: Mutex::new(BTreeMap::new()),
            nat_epochs: Mutex::new(BTreeMap::new()),
            iface_changes: tokio::sync::watch::channel(0).0,
            capture: Mutex::new(None),
            dns: spec.dns,
            v6_core,
            middleboxes: Mutex::new(
                spec.gateways
                    .iter()
                    .map(|g| (g.name.clone(), g.middlebox.clone()))
                    .collect(),
            ),
        });
        // Every link gets the latency of the path between its two ends when turmoil makes
        // it, on first use: pairs that cannot talk never get one, and a group of n public
        // hosts costs the links its traffic uses, not n²/2 (at 3,000 public clients that was
        // 4.5 million links, 2.3 GB and most of the wall time).
        {
            let state = state.clone();
            sim.set_link_latency_fn(move |a, b| state.one_way(a, b));
        }
        let mut world = World {
            sim,
            state,
            registered: BTreeSet::new(),
            servers: BTreeSet::new(),
            spec: spec.clone(),
            later: VecDeque::new(),
            running: Default::default(),
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
        if let Some(core) = v6_core {
            let state = world.state.clone();
            world.registered.insert(V6_CORE.to_owned());
            world
                .sim
                .host(core.ip(), move || crate::v6core::run(state.clone()));
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
        self.client_at(host, Duration::ZERO, program)
    }

    /// Starts a client's program now. Once it ends well, its host's TCP goes on until its
    /// connections have finished closing, as a kernel outlives a process
    /// ([`crate::tcp::linger`]); then the host leaves the simulation.
    fn start_client(&mut self, host: &str, program: Program) {
        let (state, name, running) = (self.state.clone(), host.to_owned(), self.running.clone());
        self.sim.client(host, async move {
            let result = program.await;
            running.set(running.get() - 1);
            if result.is_ok() {
                crate::tcp::linger(state.tcp_stacks_of(&name)).await;
            }
            result
        });
    }

    /// Runs a client program on `host` from `at` (simulated time since the world began): as
    /// [`World::client`] with the program sleeping until then, except that the host takes no
    /// part in the simulation before it starts. A group of thousands of clients starting
    /// one after another costs each step only its clients already running, not a tick of
    /// every sleeping one.
    pub fn client_at<Fut>(&mut self, host: &str, at: Duration, program: Fut) -> Result<(), SimError>
    where
        Fut: std::future::Future<Output = turmoil::Result> + 'static,
    {
        self.node(host)?;
        self.registered.insert(host.to_owned());
        self.running.set(self.running.get() + 1);
        if at.is_zero() {
            self.start_client(host, Box::pin(program));
        } else {
            let after = self.later.partition_point(|l| l.at <= at);
            let program = Box::pin(program);
            let host = host.to_owned();
            self.later.insert(after, Later { at, host, program });
        }
        Ok(())
    }

    /// Advances the simulation by one tick (1 ms). Returns `true` once every client finished.
    pub fn step(&mut self) -> Result<bool, SimError> {
        // A program due now starts in this step, at this instant of simulated time.
        let now = self.sim.elapsed();
        while let Some(Later { host, program, .. }) = self.later.pop_front_if(|l| l.at <= now) {
            self.start_client(&host, program);
        }
        self.sim.step().map_err(|e| SimError::Host(e.to_string()))?;
        let done = self.running.get() == 0 && self.later.is_empty();
        // A host whose program ended is never run again: what it left running (a carrier's
        // tasks, its TCP stack and their buffers) goes now, as a process's exit frees it,
        // rather than when the world is dropped.
        let state = &self.state;
        self.sim.reap_finished(|ip| state.exited(ip));
        Ok(done)
    }

    /// How many links between pairs of nodes the simulation has made so far: one per pair
    /// that exchanged a packet (or had a fault applied), never one per pair that merely could.
    pub fn links_made(&self) -> usize {
        self.sim.links_made()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Captures every packet crossing an access link from now on (see
    /// [`write_pcap`](Self::write_pcap)).
    pub fn capture_packets(&mut self) {
        *lock(&self.state.capture) = Some(Default::default());
    }

    /// Writes what was captured as `<dir>/<link>.pcapng`, one file per access link (raw
    /// IPv4, simulated timestamps); returns the files. Nothing without
    /// [`capture_packets`](Self::capture_packets).
    pub fn write_pcap(&self, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        match lock(&self.state.capture).as_ref() {
            Some(c) => c.write(dir),
            None => Ok(Vec::new()),
        }
    }

    /// Applies a fault now.
    pub fn apply(&mut self, fault: &Fault) -> Result<(), SimError> {
        self.spec
            .check_fault(fault)
            .map_err(|e| SimError::Spec(format!("fault on `{}`: {e}", fault.host())))?;
        let host = fault.host().to_owned();
        let node = self.node(&host)?;
        if let Fault::Ipv6 { working, .. } = fault {
            node.ipv6_blackhole
                .store(!working, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        if let Fault::NatReboot { .. } = fault {
            *lock(&self.state.nat_epochs).entry(host).or_insert(0) += 1;
            return Ok(());
        }
        if let Fault::SetMiddlebox { middlebox, .. } = fault {
            lock(&self.state.middleboxes).insert(host, middlebox.clone());
            return Ok(());
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
        // check_fault made sure the interface exists.
        .ok_or_else(|| SimError::Spec(format!("fault on `{host}`: no such interface")))?;
        let (key, gateway) = (iface.link.clone(), iface.gateway.clone());
        // Link-down and black hole hold nothing in turmoil: a dead link drops what is offered
        // to it or still queued on it in either direction (the access-link model, below), and
        // what turmoil still carries towards the host is dropped when it reaches the dead link.
        if let Fault::SetLink {
            latency_ms: Some(ms),
            ..
        } = fault
        {
            let peers = self.access_peers(&host, gateway.as_deref());
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
                // A link not made yet takes the new latency when it is made
                // (`WorldState::one_way` reads the interface's).
                self.sim.set_made_link_latency(a, peer.ip, lat);
            }
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
            Fault::Bounce { .. }
            | Fault::SetMiddlebox { .. }
            | Fault::NatReboot { .. }
            | Fault::Ipv6 { .. } => {}
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

/// The key of gateway `name`'s uplink among the links (`gateway/<name>`).
pub(crate) fn gateway_link(name: &str) -> String {
    format!("gateway/{name}")
}
