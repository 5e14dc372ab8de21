//! [`SimNet`]: postsock's [`Net`] inside a world.
//!
//! A datagram socket here is two tasks around a turmoil socket. Sending: quinn's `try_send`
//! offers the datagram to the host's access link *at once* (so the drop-tail queue sees the
//! real backlog), and an egress task releases it to turmoil at its departure time — wrapped in
//! the overlay header towards the gateway if the host is behind one. Receiving: a pump task
//! takes datagrams from turmoil, unwraps the overlay header, offers them to the downstream
//! direction of the access link, and a delivery task hands them to quinn at their departure
//! time. Streams (TCP) go through turmoil directly, or spliced by the gateway; connecting costs
//! one full round trip (turmoil alone returns after half of one).

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use postsock::net::{
    AsyncUdpSocket, BoxFuture, ByteStream, Interface, LinkQuality, Net, StreamListener,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::UdpPoller;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::link::Verdict;
use crate::overlay::{self, OVERLAY_PORT};
use crate::rng;
use crate::world::state::WorldState;

/// Status byte a gateway sends when its spliced TCP connect succeeded.
pub(crate) const SPLICE_OK: u8 = 0;
/// Status byte a gateway sends when its spliced TCP connect was refused.
pub(crate) const SPLICE_REFUSED: u8 = 1;

/// The network as one simulated host sees it. Obtain it from [`World::net`](crate::World::net)
/// and use it only inside that host's program.
pub struct SimNet {
    state: Arc<WorldState>,
    host: String,
    ip: IpAddr,
    seeds: AtomicU64,
}

/// Where one interface of the host leads: its address, gateway and access link.
#[derive(Debug, Clone)]
struct Route {
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
        Ok(Route {
            ip: iface.ip,
            gateway: iface.gateway.as_ref().and_then(|g| self.state.resolve(g)),
            link: iface.link.clone(),
        })
    }

    /// The host's interfaces now, as the simulator knows them.
    pub fn interface_status(&self) -> Vec<crate::world::state::InterfaceStatus> {
        self.state.interfaces(&self.host)
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host's own address (behind a gateway: its inside address).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn check_host(&self, bound: SocketAddr) -> io::Result<()> {
        if bound.ip() != self.ip && !bound.ip().is_loopback() {
            return Err(io::Error::other(format!(
                "the SimNet of `{}` was used inside the program of another host ({})",
                self.host,
                bound.ip()
            )));
        }
        Ok(())
    }

    fn rtt_to(&self, remote: IpAddr) -> Duration {
        self.state
            .one_way(self.ip, remote)
            .map_or(Duration::ZERO, |d| d * 2)
    }
}

impl Net for SimNet {
    fn bind_udp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Arc<dyn AsyncUdpSocket>>> {
        Box::pin(async move {
            let route = self.route(local.ip())?;
            let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, local.port()).into();
            let socket = Arc::new(turmoil::net::UdpSocket::bind(bind).await?);
            let port = socket.local_addr()?.port();
            let local = SocketAddr::new(route.ip, port);
            let via = route.gateway.map(|g| SocketAddr::new(g, OVERLAY_PORT));
            Ok(
                SimUdpSocket::start(self.state.clone(), route.link, socket, local, via)
                    as Arc<dyn AsyncUdpSocket>,
            )
        })
    }

    fn connect_tcp(&self, remote: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        self.connect_tcp_from(self.ip, remote)
    }

    fn connect_tcp_from(
        &self,
        local: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        Box::pin(async move {
            let route = self.route(local)?;
            let start = Instant::now();
            let refused = || {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("connection to {remote} refused (reset)"),
                )
            };
            match route.gateway {
                Some(gateway) => {
                    // The destination travels with the SYN, as it would inside a real packet.
                    self.state.push_tcp_intent(self.ip, gateway, remote);
                    let mut stream =
                        match turmoil::net::TcpStream::connect((gateway, OVERLAY_PORT)).await {
                            Ok(s) => s,
                            Err(_) => return self.unreachable(&route, start, gateway).await,
                        };
                    self.check_host(stream.local_addr()?)?;
                    // The gateway answers once the far side's SYN-ACK would have reached it.
                    match stream.read_u8().await {
                        Ok(SPLICE_OK) => {
                            Ok(Box::new(self.stream(stream, &route)) as Box<dyn ByteStream>)
                        }
                        _ => Err(refused()),
                    }
                }
                None => match turmoil::net::TcpStream::connect(remote).await {
                    Ok(stream) => {
                        self.check_host(stream.local_addr()?)?;
                        // turmoil returns when the SYN arrives; the SYN-ACK needs as long again.
                        tokio::time::sleep_until(start + self.rtt_to(remote.ip())).await;
                        Ok(Box::new(self.stream(stream, &route)) as Box<dyn ByteStream>)
                    }
                    Err(_) => self.unreachable(&route, start, remote.ip()).await,
                },
            }
        })
    }

    fn listen_tcp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn StreamListener>>> {
        Box::pin(async move {
            let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, local.port()).into();
            let listener = turmoil::net::TcpListener::bind(bind).await?;
            let port = listener.local_addr()?.port();
            let route = self.route(local.ip())?;
            Ok(Box::new(SimListener {
                listener,
                local: SocketAddr::new(route.ip, port),
                state: self.state.clone(),
                link: route.link,
            }) as Box<dyn StreamListener>)
        })
    }

    fn resolve(&self, name: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let found = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.state.resolve_all(name),
        };
        let name = name.to_owned();
        Box::pin(async move {
            if found.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no simulated host is named `{name}`"),
                ));
            }
            Ok(found
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        })
    }

    fn interfaces(&self) -> Vec<Interface> {
        self.state
            .interfaces(&self.host)
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                addrs: vec![i.ip],
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

    fn rng_seed(&self) -> Option<[u8; 32]> {
        let n = self.seeds.fetch_add(1, Ordering::Relaxed);
        Some(rng::seed_bytes(
            self.state.seed,
            &format!("net/{}/{n}", self.host),
        ))
    }
}

impl SimNet {
    fn stream(&self, stream: turmoil::net::TcpStream, route: &Route) -> SimStream {
        SimStream::new(stream, self.state.clone(), route.link.clone())
    }

    /// A failed connect: a dead access link black-holes the SYN (the caller's timeout fires);
    /// otherwise the RST arrives after one round trip.
    async fn unreachable(
        &self,
        route: &Route,
        start: Instant,
        towards: IpAddr,
    ) -> io::Result<Box<dyn ByteStream>> {
        if self.state.link_is_down(&route.link) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep_until(start + self.rtt_to(towards)).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("connection to {towards} refused"),
        ))
    }
}

/// Segment size in which stream bytes are offered to the access link.
const STREAM_SEGMENT: usize = 1460;

/// A simulated TCP stream whose writes pass through the host's access link.
///
/// Written bytes are taken at once (as into a socket send buffer), offered to the upstream
/// link segment by segment, and handed to turmoil by a writer task at their departure times.
/// When the link's queue is full, `poll_write` waits, like a full send buffer.
pub(crate) struct SimStream {
    read: turmoil::net::tcp::OwnedReadHalf,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    state: Arc<WorldState>,
    /// The access link its bytes go over.
    link: String,
    segments: Option<mpsc::UnboundedSender<(Instant, Bytes)>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SimStream {
    pub(crate) fn new(
        stream: turmoil::net::TcpStream,
        state: Arc<WorldState>,
        link: String,
    ) -> Self {
        let (local, peer) = (stream.local_addr().ok(), stream.peer_addr().ok());
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(stream_writer(write, rx));
        SimStream {
            read,
            local,
            peer,
            state,
            link,
            segments: Some(tx),
            writer: Some(writer),
            wait: None,
        }
    }
}

async fn stream_writer(
    mut write: turmoil::net::tcp::OwnedWriteHalf,
    mut segments: mpsc::UnboundedReceiver<(Instant, Bytes)>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some((at, data)) = segments.recv().await {
        wait_until(at).await;
        if write.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

impl Drop for SimStream {
    fn drop(&mut self) {
        // Dropping the sender lets the writer drain what was written, then close.
        self.segments.take();
        self.writer.take();
    }
}

impl fmt::Debug for SimStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStream")
            .field("link", &self.link)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        let Some(segments) = self.segments.clone() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream shut down",
            )));
        };
        let mut taken = 0;
        for segment in buf.chunks(STREAM_SEGMENT) {
            match self.state.offer_stream(&self.link, segment.len()) {
                Ok(at) => {
                    if segments
                        .send((at, Bytes::copy_from_slice(segment)))
                        .is_err()
                    {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "stream writer stopped",
                        )));
                    }
                    taken += segment.len();
                }
                Err(wait) => {
                    if taken > 0 {
                        break;
                    }
                    let mut sleep = Box::pin(tokio::time::sleep(wait));
                    if sleep.as_mut().poll(cx).is_pending() {
                        self.wait = Some(sleep);
                        return Poll::Pending;
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes taken by `poll_write` are on their way, as in a kernel send buffer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer sends FIN once it has written everything queued before.
        self.segments.take();
        Poll::Ready(Ok(()))
    }
}

struct SimListener {
    listener: turmoil::net::TcpListener,
    local: SocketAddr,
    state: Arc<WorldState>,
    link: String,
}

impl fmt::Debug for SimListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimListener")
            .field("local", &self.local)
            .finish()
    }
}

impl StreamListener for SimListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn ByteStream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            let stream = SimStream::new(stream, self.state.clone(), self.link.clone());
            Ok((Box::new(stream) as Box<dyn ByteStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

type Timed = (Instant, SocketAddr, Bytes);

/// A datagram socket of a simulated host, as quinn sees it.
struct SimUdpSocket {
    local: SocketAddr,
    state: Arc<WorldState>,
    /// The access link of the interface it is bound to.
    link: String,
    egress: mpsc::UnboundedSender<Timed>,
    ingress: Mutex<mpsc::UnboundedReceiver<(SocketAddr, Bytes)>>,
    tasks: Vec<AbortHandle>,
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
    fn start(
        state: Arc<WorldState>,
        link: String,
        socket: Arc<turmoil::net::UdpSocket>,
        local: SocketAddr,
        via: Option<SocketAddr>,
    ) -> Arc<Self> {
        let (egress_tx, egress_rx) = mpsc::unbounded_channel();
        let (delay_tx, delay_rx) = mpsc::unbounded_channel();
        let (ingress_tx, ingress_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(egress(
                socket.clone(),
                egress_rx,
                via,
                state.clone(),
                link.clone(),
            ))
            .abort_handle(),
            tokio::spawn(pump(socket, state.clone(), link.clone(), delay_tx, via)).abort_handle(),
            tokio::spawn(deliver(delay_rx, ingress_tx, state.clone(), link.clone())).abort_handle(),
        ];
        Arc::new(SimUdpSocket {
            local,
            state,
            link,
            egress: egress_tx,
            ingress: Mutex::new(ingress_rx),
            tasks,
        })
    }

    fn offer(&self, dst: SocketAddr, datagram: &[u8]) {
        if let Verdict::Deliver(at) = self.state.offer(&self.link, true, datagram.len()) {
            let _ = self
                .egress
                .send((at, dst, Bytes::copy_from_slice(datagram)));
        }
    }
}

/// Waits until the simulation tick (1 ms) during which `at` falls.
///
/// tokio's timers resolve whole milliseconds and round up, so sleeping until `at` itself
/// would hold every datagram to the next tick: a millisecond per hop, and a link rate capped
/// at one datagram per tick. The link model computes exact departure times; here a datagram
/// is released in the tick its departure time falls in, which keeps rates exact over time.
async fn wait_until(at: Instant) {
    const TICK_LESS_EPSILON: Duration = Duration::from_micros(999);
    if let Some(target) = at.checked_sub(TICK_LESS_EPSILON) {
        if target > Instant::now() {
            tokio::time::sleep_until(target).await;
        }
    }
}

/// Releases datagrams to turmoil at their departure times.
async fn egress(
    socket: Arc<turmoil::net::UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<Timed>,
    via: Option<SocketAddr>,
    state: Arc<WorldState>,
    link: String,
) {
    while let Some((at, dst, data)) = queue.recv().await {
        wait_until(at).await;
        // Queued on a link that went down meanwhile: lost, as what a dead NIC held is.
        if !state.still_up(&link, true) {
            continue;
        }
        // UDP: a send that fails is a lost datagram, as on a real network.
        let _ = match via {
            Some(gateway) => socket.send_to(&overlay::encode(dst, &data), gateway).await,
            None => socket.send_to(&data, dst).await,
        };
    }
}

/// Takes datagrams from turmoil and offers them to the downstream direction of the link.
async fn pump(
    socket: Arc<turmoil::net::UdpSocket>,
    state: Arc<WorldState>,
    link: String,
    delay: mpsc::UnboundedSender<Timed>,
    via: Option<SocketAddr>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let (src, payload) = match via {
            Some(gateway) if from.ip() == gateway.ip() => match overlay::decode(&buf[..n]) {
                Some(pair) => pair,
                None => continue,
            },
            // Behind a gateway nothing else can reach us; drop what does.
            Some(_) => continue,
            None => (from, &buf[..n]),
        };
        if let Verdict::Deliver(at) = state.offer(&link, false, payload.len()) {
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
    link: String,
) {
    while let Some((at, src, data)) = delay.recv().await {
        wait_until(at).await;
        // Still crossing the access link when it went down: lost.
        if !state.still_up(&link, false) {
            continue;
        }
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
                    dst_ip: Some(self.local.ip()),
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
}
