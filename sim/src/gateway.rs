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
//! TCP: an inside host connects to the overlay port; the destination travels with the SYN
//! (see [`WorldState::push_tcp_intent`]). The gateway connects onwards, waits as long as the
//! far SYN-ACK would take to come back, answers one status byte, then splices the two streams.
//! A NAT reboot loses the splices' state: their connections break.
//!
//! Chained: a gateway behind another (a home NAT behind a carrier-grade NAT) is itself an
//! inside host of that one — its public sockets send through the upstream gateway's overlay
//! and its splices connect through it — so everything it sends is translated twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::lock;
use crate::nat::{Inbound, MappingKey, NatTable};
use crate::net::{SPLICE_OK, SPLICE_REFUSED};
use crate::overlay::{self, OVERLAY_PORT};
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
}

impl PublicSocket {
    async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> std::io::Result<()> {
        match self.upstream {
            None => self.socket.send_to(payload, dst).await.map(drop),
            Some(up) => self
                .socket
                .send_to(&overlay::encode(dst, payload), up)
                .await
                .map(drop),
        }
    }

    /// The next datagram: its length (at the front of `buf`) and its true source.
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            let Some(up) = self.upstream else {
                return Ok((n, from));
            };
            if from != up {
                continue;
            }
            let Some((src, payload)) = overlay::decode(&buf[..n]) else {
                continue;
            };
            let len = payload.len();
            buf.copy_within(n - len..n, 0);
            return Ok((len, src));
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
    let tcp = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, OVERLAY_PORT)).await?;
    tokio::spawn(splice_loop(
        state.clone(),
        ip,
        tcp,
        filter.clone(),
        upstream,
    ));

    let table = Arc::new(Mutex::new(NatTable::new(
        nat,
        crate::rng::stream(state.seed, &format!("nat/{name}")),
    )));
    // Each mapping's public socket and the task carrying replies back through it.
    let mut sockets: BTreeMap<MappingKey, (Arc<PublicSocket>, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    let mut epoch = state.nat_epoch(&name);
    let mut buf = vec![0u8; 65_600];
    loop {
        let (n, from) = inside.recv_from(&mut buf).await?;
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
                });
                let task = tokio::spawn(return_path(
                    socket.clone(),
                    inside.clone(),
                    table.clone(),
                    out.key,
                    filter.clone(),
                    epoch,
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
        let _ = public.send_to(payload, dst).await;
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
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, src)) = public.recv_from(&mut buf).await {
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
            let _ = inside.send_to(&overlay::encode(src, &buf[..n]), to).await;
        }
    }
}

async fn splice_loop(
    state: Arc<WorldState>,
    ip: IpAddr,
    listener: turmoil::net::TcpListener,
    filter: Arc<Filter>,
    upstream: Option<SocketAddr>,
) {
    while let Ok((inside, peer)) = listener.accept().await {
        let Some(dst) = state.pop_tcp_intent(peer.ip(), ip) else {
            continue;
        };
        let policy = filter.policy();
        if policy.tcp_blackhole {
            // The SYN vanished: never answer, keep the inside end waiting.
            tokio::spawn(async move {
                let _held = inside;
                std::future::pending::<()>().await;
            });
            continue;
        }
        if policy.tcp_reset {
            // A reset comes back as fast as a SYN-ACK would have from the gateway.
            tokio::spawn(async move {
                let mut inside = inside;
                let _ = inside.write_u8(SPLICE_REFUSED).await;
            });
            continue;
        }
        let epoch = filter.state.nat_epoch(&filter.gateway);
        let reboots = filter.state.nat_reboots.subscribe();
        let gateway = filter.gateway.clone();
        let (st, state) = (state.clone(), state.clone());
        tokio::spawn(async move {
            // A reboot loses the NAT's state for the connection: it breaks.
            let rebooted = async move {
                let mut reboots = reboots;
                while st.nat_epoch(&gateway) == epoch {
                    if reboots.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                biased;
                _ = rebooted => {}
                _ = splice(state, ip, inside, dst, upstream) => {}
            }
        });
    }
}

async fn splice(
    state: Arc<WorldState>,
    ip: IpAddr,
    mut inside: turmoil::net::TcpStream,
    dst: SocketAddr,
    upstream: Option<SocketAddr>,
) {
    if let Some(up) = upstream {
        // Behind another gateway: connect through it, which answers when the far end does.
        state.push_tcp_intent(ip, up.ip(), dst);
        let outside = match turmoil::net::TcpStream::connect(up).await {
            Ok(mut s) => match tokio::io::AsyncReadExt::read_u8(&mut s).await {
                Ok(SPLICE_OK) => Some(s),
                _ => None,
            },
            Err(_) => None,
        };
        let Some(mut outside) = outside else {
            let _ = inside.write_u8(SPLICE_REFUSED).await;
            return;
        };
        if inside.write_u8(SPLICE_OK).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
        return;
    }
    let start = Instant::now();
    let rtt = state
        .one_way(ip, dst.ip())
        .map_or(Default::default(), |d| d * 2);
    match turmoil::net::TcpStream::connect(dst).await {
        Ok(mut outside) => {
            tokio::time::sleep_until(start + rtt).await;
            if inside.write_u8(SPLICE_OK).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
        }
        Err(_) => {
            tokio::time::sleep_until(start + rtt).await;
            let _ = inside.write_u8(SPLICE_REFUSED).await;
        }
    }
}
