//! [`SimNet`]: postsock's [`Net`] inside a world.
//!
//! A datagram socket here is two tasks around a turmoil socket. Sending: quinn's `try_send`
//! offers the datagram to the host's access link *at once* (so the drop-tail queue sees the
//! real backlog), and an egress task releases it to turmoil at its departure time — wrapped in
//! the overlay header towards the gateway if the host is behind one. Receiving: a pump task
//! takes datagrams from turmoil, unwraps the overlay header, offers them to the downstream
//! direction of the access link, and a delivery task hands them to quinn at their departure
//! time. Streams are real TCP (smoltcp, in the `tcp` module): each interface's stack sends
//! whole IPv4 packets as datagrams over the same sockets, links and gateways.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use postsock::net::{
    AsyncUdpSocket, BoxFuture, ByteStream, Family, Interface, LinkQuality, Net, StreamListener,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::UdpPoller;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::link::Verdict;
use crate::overlay::{self, OVERLAY_PORT};
use crate::rng;
use crate::segment::{TCP6_PORT, TCP_PORT};
use crate::tcp::{SimTcpListener, TcpStack};
use crate::world::state::WorldState;

/// The network as one simulated host sees it. Obtain it from [`World::net`](crate::World::net)
/// and use it only inside that host's program.
pub struct SimNet {
    state: Arc<WorldState>,
    host: String,
    ip: IpAddr,
    seeds: AtomicU64,
    /// The TCP stack of each interface that used TCP, by interface address.
    tcp: tokio::sync::Mutex<BTreeMap<IpAddr, Arc<TcpStack>>>,
}

/// Where one interface of the host leads: its address, gateway and access link.
#[derive(Debug, Clone)]
struct Route {
    /// The interface's position on the host.
    index: usize,
    ip: IpAddr,
    gateway: Option<IpAddr>,
    link: String,
}

impl fmt::Debug for SimNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNet")
            .field("host", &self.host)
            .field("ip", &self.ip)
            .finish()
    }
}

impl SimNet {
    pub(crate) fn new(state: Arc<WorldState>, host: String) -> Self {
        let ip = state.nodes[&host].ip;
        SimNet {
            state,
            host,
            ip,
            seeds: AtomicU64::new(0),
            tcp: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The interface owning local address `ip` (the first one for the host's own or an
    /// unspecified address).
    fn route(&self, ip: IpAddr) -> io::Result<Route> {
        let node = &self.state.nodes[&self.host];
        let iface = node.iface_for(ip).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("`{}` has no interface with address {ip}", self.host),
            )
        })?;
        let index = node
            .ifaces
            .iter()
            .position(|i| i.ip == iface.ip)
            .unwrap_or(0);
        Ok(Route {
            index,
            ip: iface.ip,
            gateway: iface.gateway.as_ref().and_then(|g| self.state.resolve(g)),
            link: iface.link.clone(),
        })
    }

    /// Which families a socket bound to `ip` speaks: IPv4 (bool) and IPv6 (its address). An
    /// IPv4 address: IPv4 only; the host's IPv6 address: IPv6 only; `::`: both that the host
    /// has (as Linux's dual-stack sockets). Addresses the host lacks are errors.
    fn families(&self, ip: IpAddr) -> io::Result<(bool, Option<IpAddr>)> {
        let node = &self.state.nodes[&self.host];
        let missing = |what: &str| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("`{}` has no {what} address", self.host),
            )
        };
        match ip {
            IpAddr::V4(_) if !node.v4 => Err(missing("IPv4")),
            IpAddr::V4(_) => Ok((true, None)),
            IpAddr::V6(v6) if v6.is_unspecified() => {
                if node.v4 || node.ipv6.is_some() {
                    Ok((node.v4, node.ipv6))
                } else {
                    Err(missing("IP"))
                }
            }
            IpAddr::V6(_) if node.ipv6 == Some(ip) => Ok((false, node.ipv6)),
            IpAddr::V6(_) => Err(missing(&format!("IPv6 {ip}"))),
        }
    }

    /// The host's interfaces now, as the simulator knows them.
    pub fn interface_status(&self) -> Vec<crate::world::state::InterfaceStatus> {
        self.state.interfaces(&self.host)
    }

    /// The TCP connections of the host's stacks (not its listening sockets), by interface
    /// address: a diagnostic, for tests and memory accounting.
    pub async fn tcp_sockets(&self) -> Vec<crate::TcpSocketStatus> {
        let stacks = self.tcp.lock().await;
        stacks.values().flat_map(|s| s.sockets()).collect()
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host's own address (behind a gateway: its inside address).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Net for SimNet {
    fn bind_udp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Arc<dyn AsyncUdpSocket>>> {
        Box::pin(async move {
            let route = self.route(local.ip())?;
            let (v4, v6) = self.families(local.ip())?;
            let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, local.port()).into();
            let socket = Arc::new(turmoil::net::UdpSocket::bind(bind).await?);
            let port = socket.local_addr()?.port();
            let ends = Ends {
                local: SocketAddr::new(route.ip, port),
                v4,
                v6: v6.map(|ip| SocketAddr::new(ip, port)),
                via: route.gateway.map(|g| SocketAddr::new(g, OVERLAY_PORT)),
                core: self.state.v6_core,
                // An IPv4 socket names its interface's address, even bound to 0.0.0.0 (what
                // candidates gathering reads); an IPv6 one what it was bound to.
                bound: if local.is_ipv4() {
                    route.ip
                } else {
                    local.ip()
                },
            };
            Ok(
                SimUdpSocket::start(self.state.clone(), route.link, socket, ends, false)
                    as Arc<dyn AsyncUdpSocket>,
            )
        })
    }

    fn connect_tcp(&self, remote: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        // From the host's address of the remote's IP version.
        let local = match remote {
            SocketAddr::V6(_) => self.state.nodes[&self.host]
                .ipv6
                .unwrap_or(Ipv6Addr::UNSPECIFIED.into()),
            SocketAddr::V4(_) => self.ip,
        };
        self.connect_tcp_from(local, remote)
    }

    fn connect_tcp_from(
        &self,
        local: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        Box::pin(async move {
            let stack = self.tcp_stack(local).await?;
            Ok(Box::new(stack.connect(remote).await?) as Box<dyn ByteStream>)
        })
    }

    fn listen_tcp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn StreamListener>>> {
        Box::pin(async move {
            // The stack of `local`'s version (IPv4 for `::` on a dual-stack host).
            let stack = self.tcp_stack(local.ip()).await?;
            let listener = stack.listen(local.port())?;
            let (v4, v6) = self.families(local.ip())?;
            let Some(ip) = v6.filter(|_| v4 && local.is_ipv6() && local.ip().is_unspecified())
            else {
                return Ok(Box::new(listener) as Box<dyn StreamListener>);
            };
            // `[::]` on a dual-stack host: both stacks, one port (as Linux's dual-stack
            // listening socket).
            let port = listener.local_addr().port();
            let other = self.tcp_stack(ip).await?.listen(port)?;
            Ok(Box::new(DualListener {
                v4: listener,
                v6: other,
            }) as Box<dyn StreamListener>)
        })
    }

    fn resolve(&self, name: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        // Both queries at once: the answer comes with the slower one.
        let both = (self.lookup(name, port, None), self.state.dns);
        Box::pin(async move {
            let (found, dns) = both;
            if dns.aaaa_lost {
                // The A answer, once the resolver gives up on AAAA.
                dns_wait(dns.a_ms.max(RESOLVER_TIMEOUT_MS)).await;
                return found.map(|all| all.into_iter().filter(|a| a.is_ipv4()).collect());
            }
            dns_wait(dns.a_ms.max(dns.aaaa_ms)).await;
            found
        })
    }

    fn resolve_family(
        &self,
        name: &str,
        port: u16,
        family: Family,
    ) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let found = self.lookup(name, port, Some(family));
        let delay = match family {
            Family::V4 => self.state.dns.a_ms,
            Family::V6 => self.state.dns.aaaa_ms,
        };
        let lost = family == Family::V6 && self.state.dns.aaaa_lost;
        Box::pin(async move {
            if lost {
                // The query is dropped; the asker gives up on it when it likes.
                std::future::pending::<()>().await;
            }
            dns_wait(delay).await;
            found
        })
    }

    fn interfaces(&self) -> Vec<Interface> {
        let node = &self.state.nodes[&self.host];
        self.state
            .interfaces(&self.host)
            .into_iter()
            .enumerate()
            .map(|(n, i)| Interface {
                name: i.name,
                // The host's IPv6 address is on its (only) interface.
                addrs: node
                    .v4
                    .then_some(i.ip)
                    .into_iter()
                    .chain(node.ipv6.filter(|_| n == 0))
                    .collect(),
                up: i.up,
                quality: Some(LinkQuality {
                    latency: Duration::from_millis(i.latency_ms),
                    loss: i.loss,
                }),
            })
            .collect()
    }

    fn interfaces_changed(&self) -> BoxFuture<'_, ()> {
        let mut changes = self.state.iface_changes.subscribe();
        changes.mark_unchanged();
        Box::pin(async move {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }

    fn tls_clock(&self) -> Arc<dyn rustls::time_provider::TimeProvider> {
        Arc::new(Calendar::default())
    }

    fn rng_seed(&self) -> Option<[u8; 32]> {
        let n = self.seeds.fetch_add(1, Ordering::Relaxed);
        Some(rng::seed_bytes(
            self.state.seed,
            &format!("net/{}/{n}", self.host),
        ))
    }
}

/// The simulation's calendar as TLS reads it: [`EPOCH`] plus the simulated time, so a
/// session ticket ages (and expires) in simulated time and every run reads the same dates.
/// Read outside the simulation (after it ended), it says the last time it told.
#[derive(Debug)]
struct Calendar {
    last: Mutex<Duration>,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            last: Mutex::new(EPOCH),
        }
    }
}

impl rustls::time_provider::TimeProvider for Calendar {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let mut last = crate::lock(&self.last);
        if let Some(now) = turmoil::since_epoch() {
            *last = now;
        }
        Some(rustls::pki_types::UnixTime::since_unix_epoch(*last))
    }
}

/// When every simulation starts on the calendar: 2026-01-01 00:00:00 UTC.
pub(crate) const EPOCH: Duration = Duration::from_secs(1_767_225_600);

impl SimNet {
    /// The addresses `name` resolves to (of `family`, if given): a literal address to itself;
    /// a name with no address (of the family) is an error (an empty answer).
    fn lookup(&self, name: &str, port: u16, family: Option<Family>) -> io::Result<Vec<SocketAddr>> {
        let all = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.state.resolve_all(name),
        };
        if all.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no simulated host is named `{name}`"),
            ));
        }
        Ok(all
            .into_iter()
            .filter(|ip| family.is_none_or(|f| Family::of(*ip) == f))
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The TCP stack of the interface owning `local`, started on first use (and again after
    /// the host restarted, which ends the old one with its runtime).
    async fn tcp_stack(&self, local: IpAddr) -> io::Result<Arc<TcpStack>> {
        let route = self.route(local)?;
        // One stack per interface and IP version: the host's IPv6 address has its own.
        let (v4, v6) = self.families(local)?;
        let ip = match v6 {
            Some(v6) if !v4 || local.is_ipv6() && !local.is_unspecified() => v6,
            _ => route.ip,
        };
        let mut stacks = self.tcp.lock().await;
        if let Some(stack) = stacks.get(&ip).filter(|s| s.alive()) {
            return Ok(stack.clone());
        }
        stacks.remove(&ip);
        let port = if ip.is_ipv6() {
            TCP6_PORT
        } else {
            TCP_PORT + route.index as u16
        };
        let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, port).into();
        let socket = Arc::new(turmoil::net::UdpSocket::bind(bind).await?);
        let mtu = self.state.mtu(&route.link);
        let ends = Ends {
            local: SocketAddr::new(route.ip, port),
            v4: ip.is_ipv4(),
            v6: ip.is_ipv6().then_some(SocketAddr::new(ip, port)),
            via: route.gateway.map(|g| SocketAddr::new(g, OVERLAY_PORT)),
            core: self.state.v6_core,
            bound: ip,
        };
        let udp = SimUdpSocket::start(self.state.clone(), route.link, socket, ends, true);
        let seed = rng::seed_bytes(self.state.seed, &format!("tcp/{}/{}", self.host, ip));
        let mut first = [0u8; 8];
        first.copy_from_slice(&seed[..8]);
        let stack = TcpStack::start(ip, udp, u64::from_le_bytes(first), mtu)?;
        self.state.add_tcp_stack(&self.host, stack.clone());
        stacks.insert(ip, stack.clone());
        Ok(stack)
    }
}

/// How long a lookup of both families waits for a lost answer (glibc's default).
const RESOLVER_TIMEOUT_MS: u64 = 5_000;

/// Waits out a DNS delay of `ms` (none at all for 0: the answer is there at once).
async fn dns_wait(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A dual-stack listener: the IPv4 and the IPv6 stack's listeners on one port.
#[derive(Debug)]
struct DualListener {
    v4: SimTcpListener,
    v6: SimTcpListener,
}

impl StreamListener for DualListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn ByteStream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = tokio::select! {
                biased;
                r = self.v6.accept() => r?,
                r = self.v4.accept() => r?,
            };
            Ok((Box::new(stream) as Box<dyn ByteStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::new(
            Ipv6Addr::UNSPECIFIED.into(),
            self.v4.local_addr().port(),
        ))
    }
}

impl StreamListener for SimTcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn ByteStream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = SimTcpListener::accept(self).await?;
            Ok((Box::new(stream) as Box<dyn ByteStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SimTcpListener::local_addr(self))
    }
}

type Timed = (Instant, SocketAddr, Bytes);

/// Where a socket sends from and through.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    /// Its IPv4 address and port (the interface's, even when it speaks only IPv6).
    pub(crate) local: SocketAddr,
    /// Whether it speaks IPv4.
    pub(crate) v4: bool,
    /// Its IPv6 address and port, when it speaks IPv6.
    pub(crate) v6: Option<SocketAddr>,
    /// The gateway's overlay address, behind a gateway.
    pub(crate) via: Option<SocketAddr>,
    /// The IPv6 core's overlay address.
    pub(crate) core: Option<SocketAddr>,
    /// The address it was bound to (what `local_addr` says).
    pub(crate) bound: IpAddr,
}

impl Ends {
    /// Its own address of `peer`'s family, if it speaks that family.
    fn own(&self, peer: SocketAddr) -> Option<SocketAddr> {
        match peer {
            SocketAddr::V4(_) => self.v4.then_some(self.local),
            SocketAddr::V6(_) => self.v6,
        }
    }
}

/// A datagram socket of a simulated host, as quinn sees it.
pub(crate) struct SimUdpSocket {
    /// What `local_addr` says.
    local: SocketAddr,
    ends: Ends,
    state: Arc<WorldState>,
    /// The access link of the interface it is bound to.
    link: String,
    egress: mpsc::UnboundedSender<Timed>,
    ingress: Mutex<mpsc::UnboundedReceiver<(SocketAddr, Bytes)>>,
    /// Its datagrams are IPv4 packets (a TCP stack's), not UDP payloads.
    raw_ip: bool,
    tasks: Vec<AbortHandle>,
    /// When the last datagram offered to its link leaves the host.
    last_departure: Mutex<Option<Instant>>,
}

impl fmt::Debug for SimUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdpSocket")
            .field("link", &self.link)
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for SimUdpSocket {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SimUdpSocket {
    pub(crate) fn start(
        state: Arc<WorldState>,
        link: String,
        socket: Arc<turmoil::net::UdpSocket>,
        ends: Ends,
        raw_ip: bool,
    ) -> Arc<Self> {
        let local = SocketAddr::new(ends.bound, ends.local.port());
        let seen = Seen {
            link: link.clone(),
            ends: ends.clone(),
            raw_ip,
        };
        let (egress_tx, egress_rx) = mpsc::unbounded_channel();
        let (delay_tx, delay_rx) = mpsc::unbounded_channel();
        let (ingress_tx, ingress_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(egress(
                socket.clone(),
                egress_rx,
                state.clone(),
                seen.clone(),
            ))
            .abort_handle(),
            tokio::spawn(pump(socket, state.clone(), seen.clone(), delay_tx)).abort_handle(),
            tokio::spawn(deliver(delay_rx, ingress_tx, state.clone(), seen)).abort_handle(),
        ];
        Arc::new(SimUdpSocket {
            local,
            ends,
            state,
            link,
            egress: egress_tx,
            ingress: Mutex::new(ingress_rx),
            raw_ip,
            tasks,
            last_departure: Mutex::new(None),
        })
    }

    pub(crate) fn offer(&self, dst: SocketAddr, datagram: &[u8]) {
        // A family the socket does not speak: no route (as the OS's EAFNOSUPPORT or
        // ENETUNREACH, which quinn takes as a lost datagram).
        if self.ends.own(dst).is_none() {
            return;
        }
        let len = datagram.len();
        let verdict = self.state.offer(
            &self.link,
            true,
            len,
            ip_len(len, self.raw_ip, dst.is_ipv6()),
        );
        for at in departures(verdict) {
            let mut last = crate::lock(&self.last_departure);
            *last = (*last).max(Some(at));
            drop(last);
            let _ = self
                .egress
                .send((at, dst, Bytes::copy_from_slice(datagram)));
        }
    }

    /// When the last datagram offered to its link leaves the host (none offered: `None`).
    pub(crate) fn last_departure(&self) -> Option<Instant> {
        *crate::lock(&self.last_departure)
    }

    /// The next received datagram's payload (`None` once the socket is torn down).
    pub(crate) async fn recv(&self) -> Option<Bytes> {
        std::future::poll_fn(|cx| crate::lock(&self.ingress).poll_recv(cx))
            .await
            .map(|(_, data)| data)
    }

    /// A received datagram's payload, if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<Bytes> {
        crate::lock(&self.ingress)
            .try_recv()
            .ok()
            .map(|(_, data)| data)
    }
}

/// Waits until the simulation tick (1 ms) during which `at` falls.
///
/// tokio's timers resolve whole milliseconds and round up, so sleeping until `at` itself
/// would hold every datagram to the next tick: a millisecond per hop, and a link rate capped
/// at one datagram per tick. The link model computes exact departure times; here a datagram
/// is released in the tick its departure time falls in, which keeps rates exact over time.
pub(crate) async fn wait_until(at: Instant) {
    const TICK_LESS_EPSILON: Duration = Duration::from_micros(999);
    if let Some(target) = at.checked_sub(TICK_LESS_EPSILON) {
        if target > Instant::now() {
            tokio::time::sleep_until(target).await;
        }
    }
}

/// What a socket's datagrams are captured as: its link, its addresses, and whether its
/// datagrams carry IP packets (a TCP stack's) rather than UDP payloads.
#[derive(Debug, Clone)]
struct Seen {
    link: String,
    ends: Ends,
    raw_ip: bool,
}

/// Releases datagrams to turmoil at their departure times.
async fn egress(
    socket: Arc<turmoil::net::UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<Timed>,
    state: Arc<WorldState>,
    seen: Seen,
) {
    let ends = &seen.ends;
    while let Some((at, dst, data)) = queue.recv().await {
        wait_until(at).await;
        // Queued on a link that went down meanwhile: lost, as what a dead NIC held is.
        if !state.still_up(&seen.link, true) {
            continue;
        }
        let Some(own) = ends.own(dst) else { continue };
        state.capture(&seen.link, own, dst, &data, seen.raw_ip);
        // UDP: a send that fails is a lost datagram, as on a real network.
        let _ = match (dst.is_ipv6(), ends.via, ends.core) {
            (true, _, Some(core)) => socket.send_to(&overlay::encode(dst, &data), core).await,
            (true, _, None) => continue,
            (false, Some(gateway), _) => {
                socket.send_to(&overlay::encode(dst, &data), gateway).await
            }
            // Addressed to a host behind a gateway: unroutable, dropped on the way.
            (false, None, _) if !state.routable(ends.local.ip(), dst.ip()) => continue,
            (false, None, _) => socket.send_to(&data, dst).await,
        };
    }
}

/// The size of the IP packet a datagram of `len` bytes travels in (IPv4 or IPv6 and UDP
/// headers, unless it is an IP packet itself).
fn ip_len(len: usize, raw_ip: bool, v6: bool) -> usize {
    match (raw_ip, v6) {
        (true, _) => len,
        (false, false) => len + 28,
        (false, true) => len + 48,
    }
}

/// When the copies of a datagram leave a link: none, one, or two.
pub(crate) fn departures(verdict: Verdict) -> impl Iterator<Item = Instant> {
    let (first, copy) = match verdict {
        Verdict::Deliver(at) => (Some(at), None),
        Verdict::Duplicate(at) => (Some(at), Some(at)),
        Verdict::QueueFull | Verdict::Lost | Verdict::TooBig => (None, None),
    };
    first.into_iter().chain(copy)
}

/// Takes datagrams from turmoil and offers them to the downstream direction of the link.
async fn pump(
    socket: Arc<turmoil::net::UdpSocket>,
    state: Arc<WorldState>,
    seen: Seen,
    delay: mpsc::UnboundedSender<Timed>,
) {
    let ends = &seen.ends;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let framed = match (ends.via, ends.core) {
            (Some(gateway), _) => from.ip() == gateway.ip(),
            (None, Some(core)) => from.ip() == core.ip(),
            (None, None) => false,
        };
        let (src, payload) = match (ends.via, framed) {
            (_, true) => match overlay::decode(&buf[..n]) {
                Some(pair) => pair,
                None => continue,
            },
            // Behind a gateway nothing else can reach us; drop what does.
            (Some(_), false) => continue,
            (None, false) => (from, &buf[..n]),
        };
        // A family this socket does not speak: nothing listens for it here.
        if ends.own(src).is_none() {
            continue;
        }
        let len = payload.len();
        let verdict = state.offer(
            &seen.link,
            false,
            len,
            ip_len(len, seen.raw_ip, src.is_ipv6()),
        );
        for at in departures(verdict) {
            if delay
                .send((at, src, Bytes::copy_from_slice(payload)))
                .is_err()
            {
                return;
            }
        }
    }
}

/// Hands received datagrams to the socket at their departure times.
async fn deliver(
    mut delay: mpsc::UnboundedReceiver<Timed>,
    ready: mpsc::UnboundedSender<(SocketAddr, Bytes)>,
    state: Arc<WorldState>,
    seen: Seen,
) {
    while let Some((at, src, data)) = delay.recv().await {
        wait_until(at).await;
        // Still crossing the access link when it went down: lost.
        if !state.still_up(&seen.link, false) {
            continue;
        }
        let own = seen.ends.own(src).unwrap_or(seen.ends.local);
        state.capture(&seen.link, src, own, &data, seen.raw_ip);
        if ready.send((src, data)).is_err() {
            return;
        }
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Sends never block: the link model queues or drops, as a real NIC queue would.
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match transmit.segment_size {
            Some(size) if size > 0 => {
                for segment in transmit.contents.chunks(size) {
                    self.offer(transmit.destination, segment);
                }
            }
            _ => self.offer(transmit.destination, transmit.contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut rx = crate::lock(&self.ingress);
        match rx.poll_recv(cx) {
            Poll::Ready(Some((src, data))) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                *m = RecvMeta {
                    addr: src,
                    len: n,
                    stride: n,
                    ecn: None,
                    dst_ip: self.ends.own(src).map(|a| a.ip()),
                };
                Poll::Ready(Ok(1))
            }
            // The pump only stops when the socket is being torn down.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        // As quinn-udp's sockets on Linux (don't-fragment set): a datagram larger than a
        // link's MTU is dropped, never fragmented, so quinn's path MTU discovery runs.
        false
    }
}
