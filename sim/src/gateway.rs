//! The gateway program: address translation for the hosts behind a gateway.
//!
//! UDP: an inside host sends `[destination][payload]` to the gateway's overlay port. The
//! gateway keeps one public socket per mapping — keyed by the inside (address, port) and, as
//! the NAT's mapping behaviour says (RFC 4787 §4.1), the remote address or address and port —
//! with its port preserved, sequential or random (seeded). It sends the payload from that
//! socket and wraps what arrives on it as `[source][payload]` back to the inside socket when
//! the filtering behaviour (§5) admits the source. A mapping without outbound traffic for the
//! mapping timeout is gone; a NAT reboot drops them all.
//!
//! TCP (RFC 5382): inside hosts send whole IPv4 packets to the overlay port addressed to
//! [`TCP_PORT`]. The gateway keeps a second table for TCP (same mapping and filtering
//! behaviour, idle timeout [`TCP_MAPPING_TIMEOUT`], or the transitory 4 min once a FIN has
//! passed each way or a RST either way), rewrites each segment's source to its
//! public address and the mapping's port, and sends it from its own `TCP_PORT`; what comes
//! back is rewritten to the inside endpoint. A segment for no mapping is answered with a
//! reset unless it is a SYN (REQ-4: unsolicited SYNs are dropped silently); filtered ones
//! are dropped. Middleboxes act on outbound SYNs: black-holed, or answered with a reset. A
//! NAT reboot forgets TCP mappings too: the connections' next segments are reset.
//!
//! Chained: a gateway behind another (a home NAT behind a carrier-grade NAT) is itself an
//! inside host of that one — its public sockets send through the upstream gateway's overlay —
//! so everything it sends is translated twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::time::Instant;

use crate::lock;
use crate::nat::{Inbound, MappingKey, NatTable, TcpMapping};
use crate::overlay::{self, OVERLAY_PORT};
use crate::segment::{self, TCP_PORT};
use crate::world::spec::{Middlebox, NatBehaviour};

use crate::world::state::WorldState;

/// The gateway's middlebox (its policy lives in the world state, where faults change it)
/// with its per-flow datagram counts.
#[derive(Debug)]
struct Filter {
    state: Arc<WorldState>,
    gateway: String,
    /// Datagrams seen per (inside, remote) flow.
    flows: Mutex<BTreeMap<(SocketAddr, SocketAddr), u32>>,
}

impl Filter {
    fn policy(&self) -> Middlebox {
        self.state.middlebox(&self.gateway)
    }

    /// Whether a datagram of the flow (inside, remote) may pass; counts it.
    fn pass_udp(&self, inside: SocketAddr, remote: SocketAddr) -> bool {
        let p = &self.policy();
        if p.block_udp || p.block_udp_ports.contains(&remote.port()) {
            return false;
        }
        if let Some(limit) = p.udp_blackhole_after {
            let mut flows = crate::lock(&self.flows);
            let seen = flows.entry((inside, remote)).or_insert(0);
            if *seen >= limit {
                return false;
            }
            *seen += 1;
        }
        true
    }
}

/// A mapping's public socket: on the core, or inside the upstream gateway (then every
/// datagram goes through that gateway's overlay, and is translated again there).
struct PublicSocket {
    socket: turmoil::net::UdpSocket,
    upstream: Option<SocketAddr>,
    /// The world, and the gateway's address, to drop what is unroutable.
    world: (Arc<WorldState>, IpAddr),
}

impl PublicSocket {
    async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> std::io::Result<()> {
        match self.upstream {
            // Addressed to a host behind another gateway: unroutable, dropped on the way.
            None if !self.world.0.routable(self.world.1, dst.ip()) => Ok(()),
            None => self.socket.send_to(payload, dst).await.map(drop),
            Some(up) => self
                .socket
                .send_to(&overlay::encode(dst, payload), up)
                .await
                .map(drop),
        }
    }

    /// The next datagram and its true source. A socket waiting for one holds no buffer:
    /// it is read into this thread's scratch buffer once it has come (a NAT keeps a socket
    /// and a task per mapping, and each held a 64 KiB buffer: 640 MiB for 10,000 mappings
    /// of finished clients).
    async fn recv_from(&self) -> std::io::Result<(Vec<u8>, SocketAddr)> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 65_600]);
        }
        loop {
            self.socket.readable().await?;
            let read = SCRATCH.with_borrow_mut(|buf| {
                let (n, from) = match self.socket.try_recv_from(buf) {
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                };
                let Some(up) = self.upstream else {
                    return Ok(Some((buf[..n].to_vec(), from)));
                };
                if from != up {
                    return Ok(None);
                }
                Ok(overlay::decode(&buf[..n]).map(|(src, payload)| (payload.to_vec(), src)))
            })?;
            if let Some(got) = read {
                return Ok(got);
            }
        }
    }
}

/// Where a datagram crossing the gateway's uplink goes once it leaves the link.
enum Hop {
    /// Out of a mapping's public socket to `dst`.
    Public(Arc<PublicSocket>, SocketAddr, Vec<u8>),
    /// Out of the TCP socket to `dst`.
    Tcp(Arc<TcpNat>, SocketAddr, Vec<u8>),
    /// In to an inside host (the bytes carry the overlay header).
    Inside(Arc<turmoil::net::UdpSocket>, SocketAddr, Vec<u8>),
}

impl Hop {
    async fn send(self) {
        let _ = match self {
            Hop::Public(socket, dst, bytes) => socket.send_to(&bytes, dst).await,
            Hop::Tcp(tcp, dst, bytes) => tcp.public.send_to(&bytes, dst).await,
            Hop::Inside(socket, to, bytes) => socket.send_to(&bytes, to).await.map(drop),
        };
    }

    fn len(&self) -> usize {
        match self {
            Hop::Public(_, _, b) | Hop::Tcp(_, _, b) => b.len(),
            // Without the overlay header, which is not on the wire of a real NAT.
            Hop::Inside(_, _, b) => overlay::decode(b).map_or(b.len(), |(_, p)| p.len()),
        }
    }

    /// Whether the bytes are an IPv4 packet (TCP) rather than a UDP payload.
    fn raw_ip(&self) -> bool {
        match self {
            Hop::Public(..) => false,
            Hop::Tcp(..) => true,
            Hop::Inside(_, to, _) => to.port() >= TCP_PORT && to.port() < TCP_PORT + 16,
        }
    }
}

/// The gateway's own uplink, when its spec gives it one: every datagram out of (`up`) or
/// into (`down`) the gateway passes its link model and leaves at its departure time, in
/// order; a gateway without one forwards at once.
struct Uplink {
    state: Arc<WorldState>,
    key: String,
    queues: Option<[tokio::sync::mpsc::UnboundedSender<(Instant, Hop)>; 2]>,
}

impl Uplink {
    fn start(state: Arc<WorldState>, name: &str) -> Self {
        let key = crate::world::gateway_link(name);
        let queues = state.has_link(&key).then(|| {
            [true, false].map(|upstream| {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Hop)>();
                let (state, key) = (state.clone(), key.clone());
                tokio::spawn(async move {
                    while let Some((at, hop)) = rx.recv().await {
                        crate::net::wait_until(at).await;
                        if state.still_up(&key, upstream) {
                            hop.send().await;
                        }
                    }
                });
                tx
            })
        });
        Uplink { state, key, queues }
    }

    /// Sends `hop` over the uplink, towards the core (`upstream`) or an inside host.
    async fn send(&self, upstream: bool, hop: Hop) {
        let Some(queues) = &self.queues else {
            return hop.send().await;
        };
        let len = hop.len();
        let ip_len = if hop.raw_ip() { len } else { len + 28 };
        let verdict = self.state.offer(&self.key, upstream, len, ip_len);
        let mut times = crate::net::departures(verdict).peekable();
        while let Some(at) = times.next() {
            let copy = match (&hop, times.peek()) {
                (_, None) => None,
                (Hop::Public(s, d, b), Some(_)) => Some(Hop::Public(s.clone(), *d, b.clone())),
                (Hop::Tcp(t, d, b), Some(_)) => Some(Hop::Tcp(t.clone(), *d, b.clone())),
                (Hop::Inside(s, d, b), Some(_)) => Some(Hop::Inside(s.clone(), *d, b.clone())),
            };
            let queue = &queues[usize::from(!upstream)];
            match copy {
                Some(c) => {
                    let _ = queue.send((at, c));
                }
                None => {
                    let _ = queue.send((at, hop));
                    return;
                }
            }
        }
    }
}

/// Runs the gateway `name` until the simulation ends; `upstream` is the overlay address of
/// the gateway it is behind, if any.
pub(crate) async fn run(
    state: Arc<WorldState>,
    name: String,
    nat: NatBehaviour,
    upstream: Option<SocketAddr>,
) -> turmoil::Result {
    let filter = Arc::new(Filter {
        state: state.clone(),
        gateway: name.clone(),
        flows: Mutex::new(BTreeMap::new()),
    });
    let ip = state
        .resolve(&name)
        .ok_or_else(|| format!("gateway `{name}` has no address"))?;
    let inside =
        Arc::new(turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, OVERLAY_PORT)).await?);
    let uplink = Arc::new(Uplink::start(state.clone(), &name));
    let tcp = Arc::new(TcpNat {
        table: Mutex::new(NatTable::new(
            NatBehaviour {
                mapping_timeout: TCP_MAPPING_TIMEOUT,
                ..nat
            },
            crate::rng::stream(state.seed, &format!("nat/{name}/tcp")),
        )),
        returns: Mutex::new(BTreeMap::new()),
        epoch: Mutex::new(state.nat_epoch(&name)),
        public: PublicSocket {
            socket: turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)).await?,
            upstream,
            world: (state.clone(), ip),
        },
        ip,
        inside: inside.clone(),
        filter: filter.clone(),
        uplink: uplink.clone(),
    });
    tokio::spawn(tcp.clone().inbound_loop());

    let table = Arc::new(Mutex::new(NatTable::new(
        nat,
        crate::rng::stream(state.seed, &format!("nat/{name}")),
    )));
    // Each mapping's public socket and the task carrying replies back through it.
    let mut sockets: BTreeMap<MappingKey, (Arc<PublicSocket>, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    let mut epoch = state.nat_epoch(&name);
    // Only the hosts (and gateways) behind this one reach its inside: nothing else routes
    // to it.
    let insiders: std::collections::BTreeSet<std::net::IpAddr> = state
        .nodes
        .values()
        .filter(|n| {
            n.behind.as_deref() == Some(name.as_str())
                || n.ifaces.iter().any(|i| i.gateway.as_deref() == Some(&name))
        })
        .map(|n| n.ip)
        .collect();
    let mut buf = vec![0u8; 65_600];
    loop {
        let (n, from) = inside.recv_from(&mut buf).await?;
        if !insiders.contains(&from.ip()) {
            continue;
        }
        let now = state.nat_epoch(&name);
        if now != epoch {
            // The NAT rebooted: forget every mapping; replies to old ports go nowhere.
            epoch = now;
            lock(&table).reboot();
            for (_, (_, task)) in std::mem::take(&mut sockets) {
                task.abort();
            }
        }
        let Some((dst, payload)) = overlay::decode(&buf[..n]) else {
            continue;
        };
        if dst.port() == TCP_PORT {
            tcp.outbound(from, payload).await;
            continue;
        }
        if !filter.pass_udp(from, dst) {
            continue;
        }
        let t = Instant::now();
        let out = lock(&table).outbound(t, from, dst);
        if out.expired {
            if let Some((_, task)) = sockets.remove(&out.key) {
                task.abort();
            }
        }
        let public = match sockets.get(&out.key) {
            Some((socket, _)) if !out.created => socket.clone(),
            _ => {
                let socket = Arc::new(PublicSocket {
                    socket: turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, out.port))
                        .await?,
                    upstream,
                    world: (state.clone(), ip),
                });
                let task = tokio::spawn(return_path(
                    socket.clone(),
                    inside.clone(),
                    table.clone(),
                    out.key,
                    filter.clone(),
                    epoch,
                    uplink.clone(),
                ));
                sockets.insert(out.key, (socket.clone(), task));
                socket
            }
        };
        if dst.ip() == ip {
            // Addressed to this NAT's own public side: hairpinning (RFC 4787 REQ-9) turns it
            // around to the inside endpoint owning that port, from the sender's public
            // address, as that endpoint's filtering allows.
            let src = SocketAddr::new(ip, out.port);
            let target = lock(&table).hairpin(t, src, dst.port());
            if let Some(to) = target {
                let _ = inside.send_to(&overlay::encode(src, payload), to).await;
            }
            continue;
        }
        uplink
            .send(true, Hop::Public(public, dst, payload.to_vec()))
            .await;
    }
}

/// Carries replies from the public socket of a mapping back to the inside host, as the
/// mapping's filtering and lifetime allow.
async fn return_path(
    public: Arc<PublicSocket>,
    inside: Arc<turmoil::net::UdpSocket>,
    table: Arc<Mutex<NatTable>>,
    key: MappingKey,
    filter: Arc<Filter>,
    epoch: u64,
    uplink: Arc<Uplink>,
) {
    while let Ok((datagram, src)) = public.recv_from().await {
        // A mapping from before a reboot is gone.
        if filter.state.nat_epoch(&filter.gateway) != epoch {
            return;
        }
        let to = match lock(&table).inbound(Instant::now(), &key, src) {
            Inbound::Gone => return,
            Inbound::Filtered => continue,
            Inbound::Deliver(to) => to,
        };
        if filter.pass_udp(to, src) {
            let bytes = overlay::encode(src, &datagram);
            uplink
                .send(false, Hop::Inside(inside.clone(), to, bytes))
                .await;
        }
    }
}

/// Idle time after which a TCP mapping goes (RFC 5382 REQ-5: at least 2 h 4 min).
pub(crate) const TCP_MAPPING_TIMEOUT: Duration = Duration::from_secs(2 * 3600 + 4 * 60);

/// The TCP half of a gateway (see the [module docs](self)).
struct TcpNat {
    table: Mutex<NatTable>,
    /// Where each inside interface's TCP stack receives (turmoil address), by the address
    /// in its packets.
    returns: Mutex<BTreeMap<IpAddr, SocketAddr>>,
    /// The NAT epoch the table belongs to.
    epoch: Mutex<u64>,
    public: PublicSocket,
    ip: IpAddr,
    inside: Arc<turmoil::net::UdpSocket>,
    filter: Arc<Filter>,
    uplink: Arc<Uplink>,
}

impl TcpNat {
    /// A reboot since the last packet forgets every TCP mapping.
    fn sync_epoch(&self) {
        let now = self.filter.state.nat_epoch(&self.filter.gateway);
        let mut epoch = lock(&self.epoch);
        if *epoch != now {
            *epoch = now;
            lock(&self.table).reboot();
        }
    }

    /// Sends `packet` to the inside stack owning its destination address.
    async fn to_inside(&self, packet: &[u8], from: SocketAddr) {
        let Some(seg) = segment::parse(packet) else {
            return;
        };
        let to = lock(&self.returns).get(&seg.dst.ip()).copied();
        let Some(to) = to else {
            return;
        };
        let bytes = overlay::encode(from, packet);
        if from.ip() == self.ip {
            // Made here (hairpin, reset): it never crossed the uplink.
            let _ = self.inside.send_to(&bytes, to).await;
        } else {
            self.uplink
                .send(false, Hop::Inside(self.inside.clone(), to, bytes))
                .await;
        }
    }

    /// A segment from an inside stack (its turmoil address `from`).
    async fn outbound(self: &Arc<Self>, from: SocketAddr, packet: &[u8]) {
        self.sync_epoch();
        let Some(seg) = segment::parse(packet) else {
            return;
        };
        lock(&self.returns).insert(seg.src.ip(), from);
        if seg.syn && !seg.ack {
            let policy = self.filter.policy();
            if policy.tcp_blackhole {
                return;
            }
            if policy.tcp_reset {
                if let Some(rst) = segment::reset_for(&seg) {
                    self.to_inside(&rst, SocketAddr::new(seg.dst.ip(), TCP_PORT))
                        .await;
                }
                return;
            }
        }
        let now = Instant::now();
        let out = {
            let mut table = lock(&self.table);
            let out = table.outbound(now, seg.src, seg.dst);
            table.note_tcp(TcpMapping::Out(out.key), seg.syn, seg.fin, seg.rst);
            out
        };
        let public = SocketAddr::new(self.ip, out.port);
        let mut packet = packet.to_vec();
        if seg.dst.ip() == self.ip {
            // Hairpinning: back in to the inside endpoint owning the port, from our public
            // address, as its mapping's filtering allows.
            let target = lock(&self.table).hairpin(now, public, seg.dst.port());
            if let Some(target) = target {
                if segment::rewrite(&mut packet, Some(public), Some(target)) {
                    self.to_inside(&packet, SocketAddr::new(self.ip, TCP_PORT))
                        .await;
                }
            }
            return;
        }
        if segment::rewrite(&mut packet, Some(public), None) {
            let dst = SocketAddr::new(seg.dst.ip(), TCP_PORT);
            self.uplink
                .send(true, Hop::Tcp(self.clone(), dst, packet))
                .await;
        }
    }

    /// Segments arriving on the public side, until the simulation ends.
    async fn inbound_loop(self: Arc<Self>) {
        while let Ok((mut packet, from)) = self.public.recv_from().await {
            self.sync_epoch();
            let Some(seg) = segment::parse(&packet) else {
                continue;
            };
            if seg.dst.ip() != self.ip {
                continue;
            }
            let verdict = {
                let mut table = lock(&self.table);
                let verdict = table.inbound_at(Instant::now(), seg.dst.port(), seg.src);
                if matches!(verdict, Inbound::Deliver(_)) {
                    table.note_tcp(TcpMapping::In(seg.dst.port()), seg.syn, seg.fin, seg.rst);
                }
                verdict
            };
            match verdict {
                Inbound::Deliver(to) => {
                    if segment::rewrite(&mut packet, None, Some(to)) {
                        self.to_inside(&packet, from).await;
                    }
                }
                Inbound::Filtered => {}
                // No such flow (any more): reset it, except an unsolicited SYN (REQ-4).
                Inbound::Gone if seg.syn && !seg.ack => {}
                Inbound::Gone => {
                    if let Some(rst) = segment::reset_for(&seg) {
                        let dst = SocketAddr::new(seg.src.ip(), TCP_PORT);
                        self.uplink
                            .send(true, Hop::Tcp(self.clone(), dst, rst))
                            .await;
                    }
                }
            }
        }
    }
}
