//! Real TCP inside the simulation: one smoltcp interface per host interface.
//!
//! Each interface that opens or accepts a byte stream gets a [`TcpStack`]: a smoltcp
//! `Interface` with the interface's address, its TCP sockets, and a datagram socket (the same
//! [`SimUdpSocket`] QUIC uses, so the same access link, queue, loss and gateway) on which
//! whole IPv4 packets travel (see [`segment`](crate::segment)). A driver task polls smoltcp
//! on the host's simulated clock — when a packet arrives, when a stream reads or writes, and
//! when smoltcp's own timers (retransmission, delayed ACK, TIME-WAIT) are due — and hands
//! the packets it emits to the link. Handshakes, retransmission (RTO and fast retransmit),
//! CUBIC congestion control and flow control are smoltcp's; nothing here shortcuts them.
//! Its random seed (initial sequence numbers) comes from the run's seed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::lock;
use crate::net::SimUdpSocket;
use crate::segment::{self, TCP6_PORT, TCP_PORT};

/// Receive and send buffer of every simulated TCP socket (window scaling applies).
pub(crate) const SOCKET_BUFFER: usize = 256 * 1024;
/// Listening sockets kept open per listener, so SYNs arriving together are all answered.
const LISTEN_SPARE: usize = 4;
/// Bytes of IP packet the simulated interfaces carry (MSS 1460).
const MTU: usize = 1500;
/// First local port of outgoing connections.
const EPHEMERAL: u16 = 40_000;

/// The packets between smoltcp and the link.
#[derive(Debug)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    /// The interface's MTU: the link's, at most 1500 (as an Ethernet interface's).
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        self.0.push(packet);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// What the stack tracks of a stream socket beyond smoltcp's state.
#[derive(Debug)]
struct Tracked {
    /// Its state after the last poll (to tell a reset from an orderly close).
    last: State,
    /// Ended by a reset (or a timeout) rather than by FIN exchange.
    reset: bool,
    /// The application let go of it: remove once closed.
    released: bool,
    readers: Vec<Waker>,
    writers: Vec<Waker>,
}

impl Tracked {
    fn new(last: State) -> Self {
        Tracked {
            last,
            reset: false,
            released: false,
            readers: Vec::new(),
            writers: Vec::new(),
        }
    }
}

/// Registers the task to wake when the stream is ready in one direction. One task per
/// direction, the last to wait, as a real socket under tokio has (one waker slot for read
/// readiness, one for write): keeping every waiter, as this did, woke a task whose
/// registration a real socket would have lost to another's, so the simulator hid lost
/// wake-ups (the TLS/TCP server's reader writing with a no-op waker over its writer's, which
/// hung a loopback test once the kernel held less unsent).
fn park(wakers: &mut Vec<Waker>, cx: &Context<'_>) {
    if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
        wakers.clear();
        wakers.push(cx.waker().clone());
    }
}

/// A listener's sockets: listening or half-open, and established ones awaiting `accept`.
#[derive(Debug)]
struct Backlog {
    pending: Vec<SocketHandle>,
    ready: VecDeque<SocketHandle>,
    notify: Arc<Notify>,
}

struct Inner {
    iface: Interface,
    sockets: SocketSet<'static>,
    wire: Wire,
    streams: BTreeMap<SocketHandle, Tracked>,
    listeners: BTreeMap<u16, Backlog>,
    next_port: u16,
    epoch: tokio::time::Instant,
    /// The program ended and its connections were closed ([`TcpStack::close_all`]): a
    /// stream dropped after that (its task went with the program's runtime) has nothing
    /// left to close, and its socket may be gone already.
    closed_all: bool,
}

impl Drop for Inner {
    /// A stack that goes (its host's program ended) leaves its sockets' buffers for others.
    fn drop(&mut self) {
        let handles: Vec<SocketHandle> = self.sockets.iter().map(|(h, _)| h).collect();
        for h in handles {
            recycle(self.sockets.remove(h));
        }
    }
}

impl Inner {
    /// The error of a connection used after its program ended ([`TcpStack::close_all`]):
    /// a task that outlived the program touches no socket (its own may be gone).
    fn ended(&self) -> Option<io::Error> {
        self.closed_all
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "the host's program ended"))
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn in_use(&self, port: u16) -> bool {
        self.listeners.contains_key(&port)
            || self.sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => {
                    t.local_endpoint().is_some_and(|e| e.port == port)
                }
                #[allow(unreachable_patterns)]
                _ => false,
            })
    }

    /// A packet from the link.
    fn arrive(&mut self, packet: &[u8]) {
        if tracing_packets() {
            trace_packet(self.now(), "rx", packet);
        }
        self.wire.rx.push_back(packet.to_vec());
    }

    fn ephemeral(&mut self) -> io::Result<u16> {
        for _ in 0..=(u16::MAX - EPHEMERAL) {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL
            } else {
                port + 1
            };
            if !self.in_use(port) {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free local TCP port",
        ))
    }

    fn listening_socket(&mut self, port: u16) -> io::Result<SocketHandle> {
        let mut s = new_socket();
        s.listen(port)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("listen: {e}")))?;
        Ok(self.sockets.add(s))
    }

    /// After a poll: listeners hand over established connections and stay listening;
    /// streams learn whether they were reset and wake their readers and writers; released
    /// streams that finished closing go away.
    fn housekeep(&mut self) {
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for port in ports {
            let Some(mut backlog) = self.listeners.remove(&port) else {
                continue;
            };
            let mut pending = Vec::new();
            let mut listening = 0;
            for h in std::mem::take(&mut backlog.pending) {
                match self.socket(h).state() {
                    State::Listen => {
                        listening += 1;
                        pending.push(h);
                    }
                    State::SynReceived => pending.push(h),
                    State::Closed => {
                        recycle(self.sockets.remove(h));
                    }
                    state => {
                        self.streams.insert(h, Tracked::new(state));
                        backlog.ready.push_back(h);
                        backlog.notify.notify_one();
                    }
                }
            }
            for _ in listening..LISTEN_SPARE {
                if let Ok(h) = self.listening_socket(port) {
                    pending.push(h);
                }
            }
            backlog.pending = pending;
            self.listeners.insert(port, backlog);
        }
        let mut gone = Vec::new();
        for (&h, t) in self.streams.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let state = s.state();
            if state == State::Closed
                && !matches!(
                    t.last,
                    State::Closed | State::TimeWait | State::LastAck | State::Closing
                )
            {
                t.reset = true;
            }
            t.last = state;
            if s.can_recv() || !s.may_recv() || t.reset {
                t.readers.drain(..).for_each(Waker::wake);
            }
            if s.can_send() || !s.may_send() || t.reset {
                t.writers.drain(..).for_each(Waker::wake);
            }
            // TIME-WAIT is not kept (a released socket goes as soon as it has sent the ACK
            // of its peer's FIN, which the delayed-ACK timer may hold back a little).
            if t.released && (state == State::Closed || state == State::TimeWait && !s.ack_owed()) {
                gone.push(h);
            } else if t.released {
                // Closed at both ends, waiting for the last ACK (which a finished host never
                // sends): only what it may send again is worth keeping.
                if let Some((rx, tx)) = s.shrink_closed_buffers() {
                    keep_spare([rx, tx].into_iter().flatten());
                }
            }
        }
        for h in gone {
            self.streams.remove(&h);
            recycle(self.sockets.remove(h));
        }
    }
}

/// Whether `packet` is a SYN repeating one a connection already took (a retransmission, or
/// a copy a link duplicated). smoltcp hands a SYN to the first socket that accepts it, and a
/// spare listening socket would open a second connection with the same addresses. The
/// half-open socket repeats its SYN-ACK on its own timer instead.
fn repeated_syn(sockets: &SocketSet<'static>, packet: &[u8]) -> bool {
    let Some(seg) = segment::parse(packet) else {
        return false;
    };
    if !seg.syn || seg.ack {
        return false;
    }
    sockets.iter().any(|(_, s)| match s {
        smoltcp::socket::Socket::Tcp(t) => {
            t.state() != State::Listen
                && t.local_endpoint().is_some_and(|e| endpoint(e) == seg.dst)
                && t.remote_endpoint().is_some_and(|e| endpoint(e) == seg.src)
        }
        #[allow(unreachable_patterns)]
        _ => false,
    })
}

/// The buffers of TCP sockets that went away, for the next ones (process-wide, at most
/// [`SPARE_MOST`]). A socket's two buffers are 256 KiB each; glibc serves such blocks with
/// `mmap` until the first is freed, then raises its mmap threshold above them and serves
/// the next ones zeroed from its heap: every page resident, and the heap kept. A world of
/// 3,000 short-lived TLS/TCP clients peaked at 1.5 GB that way once the stacks of finished
/// hosts were freed (`World::step`); reusing the buffers keeps the peak near what the
/// connections alive at once use. A buffer's old bytes are never read: a ring buffer made
/// on it starts empty.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// At most this many spare buffers are kept (128 MiB).
const SPARE_MOST: usize = 512;

fn socket_buffer() -> tcp::SocketBuffer<'static> {
    let spare = lock(&SPARE).pop();
    tcp::SocketBuffer::new(spare.unwrap_or_else(|| vec![0u8; SOCKET_BUFFER]))
}

/// Keeps a removed socket's buffers for the next sockets.
fn recycle(socket: smoltcp::socket::Socket<'static>) {
    #[allow(irrefutable_let_patterns)]
    let smoltcp::socket::Socket::Tcp(socket) = socket
    else {
        return;
    };
    let (rx, tx) = socket.into_buffers();
    keep_spare([rx, tx].into_iter().filter_map(|b| b.into_vec()));
}

/// Keeps storage a socket no longer needs for the next sockets (what is not a whole
/// socket buffer is freed).
fn keep_spare(buffers: impl Iterator<Item = Vec<u8>>) {
    let mut spare = lock(&SPARE);
    for buffer in buffers {
        if spare.len() < SPARE_MOST && buffer.len() == SOCKET_BUFFER {
            spare.push(buffer);
        }
    }
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(socket_buffer(), socket_buffer());
    // As the real network's streams: TCP_NODELAY, CUBIC (Linux's default).
    s.set_nagle_enabled(false);
    s.set_congestion_control(CongestionControl::Cubic);
    s
}

fn endpoint(e: IpEndpoint) -> SocketAddr {
    let ip: IpAddr = match e.addr {
        IpAddress::Ipv4(a) => a.into(),
        IpAddress::Ipv6(a) => a.into(),
    };
    SocketAddr::new(ip, e.port)
}

/// One TCP connection of a host's stack, as [`crate::SimNet::tcp_sockets`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocketStatus {
    /// Its local address and port (none once closed).
    pub local: Option<SocketAddr>,
    /// Its peer's address and port (none once closed).
    pub remote: Option<SocketAddr>,
    /// The TCP state, as RFC 793 names it (`ESTABLISHED`, `LAST-ACK`, ...).
    pub state: String,
    /// Bytes its receive and send buffers hold allocated (their capacity).
    pub buffer_bytes: usize,
}

/// The TCP of one host interface. See the [module docs](self).
pub(crate) struct TcpStack {
    inner: Mutex<Inner>,
    /// Wakes the driver: a stream read, wrote or closed.
    wake: Notify,
    socket: Arc<SimUdpSocket>,
    ip: IpAddr,
    driver: Mutex<Option<AbortHandle>>,
}

impl fmt::Debug for TcpStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStack").field("ip", &self.ip).finish()
    }
}

impl Drop for TcpStack {
    fn drop(&mut self) {
        if let Some(d) = lock(&self.driver).take() {
            d.abort();
        }
    }
}

impl TcpStack {
    /// Starts the stack of the interface with address `ip`, sending and receiving through
    /// `socket`; `seed` seeds smoltcp (initial sequence numbers).
    pub(crate) fn start(
        ip: IpAddr,
        socket: Arc<SimUdpSocket>,
        seed: u64,
        mtu: Option<usize>,
    ) -> io::Result<Arc<Self>> {
        let epoch = tokio::time::Instant::now();
        let mut wire = Wire {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu: mtu.map_or(MTU, |m| m.min(MTU)),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        // Every destination is on-link: the access link and the gateway do the routing.
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::from(ip), 0));
        });
        let stack = Arc::new(TcpStack {
            inner: Mutex::new(Inner {
                iface,
                sockets: SocketSet::new(Vec::new()),
                wire,
                streams: BTreeMap::new(),
                listeners: BTreeMap::new(),
                next_port: EPHEMERAL,
                closed_all: false,
                epoch,
            }),
            wake: Notify::new(),
            socket,
            ip,
            driver: Mutex::new(None),
        });
        let driver = tokio::spawn(drive(Arc::downgrade(&stack))).abort_handle();
        *lock(&stack.driver) = Some(driver);
        Ok(stack)
    }

    /// Whether its driver still runs (it dies with the host's runtime when a host bounces).
    pub(crate) fn alive(&self) -> bool {
        lock(&self.driver)
            .as_ref()
            .is_some_and(|d| !d.is_finished())
    }

    /// Polls smoltcp until it has nothing more to send now, sends what it emitted; returns
    /// when it next wants to be polled.
    fn step(&self) -> Option<Duration> {
        let mut g = lock(&self.inner);
        let now = g.now();
        let mut next = Some(Duration::ZERO);
        {
            let Inner {
                iface,
                sockets,
                wire,
                ..
            } = &mut *g;
            // One packet at a time, each followed by what it makes smoltcp send: segments
            // that arrive in the same millisecond are still acknowledged as they would be
            // one after another (every second segment, RFC 5681), not once per batch.
            while let Some(packet) = wire.rx.front() {
                if repeated_syn(sockets, packet) {
                    wire.rx.pop_front();
                    continue;
                }
                iface.poll_ingress_single(now, wire, sockets);
                iface.poll_egress(now, wire, sockets);
                self.transmit(now, wire);
            }
            // smoltcp emits one segment per socket per poll: poll until it has nothing due
            // now (bounded, then yield to the host's other tasks).
            for _ in 0..1024 {
                iface.poll(now, wire, sockets);
                self.transmit(now, wire);
                next = iface
                    .poll_delay(now, sockets)
                    .map(|d| Duration::from_micros(d.total_micros()));
                if next != Some(Duration::ZERO) {
                    break;
                }
            }
        }
        g.housekeep();
        next
    }

    /// Hands what smoltcp emitted to the link.
    fn transmit(&self, now: smoltcp::time::Instant, wire: &mut Wire) {
        for packet in std::mem::take(&mut wire.tx) {
            if tracing_packets() {
                trace_packet(now, "tx", &packet);
            }
            if let Some(dst) = segment::destination(&packet) {
                let port = if dst.is_ipv6() { TCP6_PORT } else { TCP_PORT };
                self.socket.offer(SocketAddr::new(dst, port), &packet);
            }
        }
    }

    /// Its connections (not the listening sockets), in handle order.
    pub(crate) fn sockets(&self) -> Vec<TcpSocketStatus> {
        let mut g = lock(&self.inner);
        let handles: Vec<SocketHandle> = g.streams.keys().copied().collect();
        handles
            .into_iter()
            .map(|h| {
                let s = g.socket(h);
                TcpSocketStatus {
                    local: s.local_endpoint().map(endpoint),
                    remote: s.remote_endpoint().map(endpoint),
                    state: s.state().to_string(),
                    buffer_bytes: s.recv_capacity() + s.send_capacity(),
                }
            })
            .collect()
    }

    /// Closes every connection the program still had, as a process's exit closes its
    /// descriptors (what was written is still sent, then FIN), as dropping its stream does.
    fn close_all(&self) {
        let mut g = lock(&self.inner);
        g.closed_all = true;
        let handles: Vec<SocketHandle> = g.streams.keys().copied().collect();
        for h in handles {
            g.socket(h).close();
            if let Some(t) = g.streams.get_mut(&h) {
                t.released = true;
            }
        }
        drop(g);
        self.poke();
    }

    /// Whether a connection has not finished closing.
    fn has_streams(&self) -> bool {
        !lock(&self.inner).streams.is_empty()
    }

    fn poke(&self) {
        self.wake.notify_one();
    }

    /// Opens a connection to `remote` from a fresh local port; returns once established.
    pub(crate) async fn connect(self: &Arc<Self>, remote: SocketAddr) -> io::Result<SimTcpStream> {
        if remote.is_ipv4() != self.ip.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "connect to {remote} from {}: not the same IP version",
                    self.ip
                ),
            ));
        }
        let handle = {
            let mut g = lock(&self.inner);
            let port = g.ephemeral()?;
            let mut s = new_socket();
            let Inner { iface, .. } = &mut *g;
            s.connect(
                iface.context(),
                (IpAddress::from(remote.ip()), remote.port()),
                (IpAddress::from(self.ip), port),
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("connect: {e}")))?;
            let h = g.sockets.add(s);
            g.streams.insert(h, Tracked::new(State::SynSent));
            h
        };
        self.poke();
        let mut stream = SimTcpStream {
            stack: self.clone(),
            handle,
            local: SocketAddr::new(self.ip, 0),
            peer: remote,
        };
        std::future::poll_fn(|cx| {
            let mut g = lock(&self.inner);
            if let Some(e) = g.ended() {
                return Poll::Ready(Err(e));
            }
            let state = g.socket(handle).state();
            let t = g.streams.get_mut(&handle).expect("tracked");
            match state {
                State::SynSent | State::SynReceived => {
                    park(&mut t.writers, cx);
                    Poll::Pending
                }
                State::Closed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("connection to {remote} refused (reset)"),
                ))),
                _ => Poll::Ready(Ok(())),
            }
        })
        .await?;
        let mut g = lock(&self.inner);
        if let Some(e) = g.ended() {
            return Err(e);
        }
        if let Some(local) = g.socket(handle).local_endpoint() {
            stream.local = endpoint(local);
        }
        drop(g);
        Ok(stream)
    }

    /// Listens on `port` of this interface.
    pub(crate) fn listen(self: &Arc<Self>, port: u16) -> io::Result<SimTcpListener> {
        let mut g = lock(&self.inner);
        let port = if port == 0 { g.ephemeral()? } else { port };
        if g.listeners.contains_key(&port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("TCP port {port} is already listening"),
            ));
        }
        let mut pending = Vec::new();
        for _ in 0..LISTEN_SPARE {
            pending.push(g.listening_socket(port)?);
        }
        let notify = Arc::new(Notify::new());
        g.listeners.insert(
            port,
            Backlog {
                pending,
                ready: VecDeque::new(),
                notify: notify.clone(),
            },
        );
        Ok(SimTcpListener {
            stack: self.clone(),
            port,
            notify,
        })
    }
}

/// How long a finished host's stack waits at most for its connections to finish closing:
/// Linux's `tcp_fin_timeout`, how long an orphaned connection waits in FIN-WAIT-2.
const LINGER_MOST: Duration = Duration::from_secs(60);
/// How often it looks.
const LINGER_CHECK: Duration = Duration::from_millis(10);

/// What a host's kernel does with its TCP once the host's program has ended: it closes every
/// connection the program still had and goes on running until each has finished closing
/// (the peer's FIN acknowledged, ours acknowledged), for at most [`LINGER_MOST`]. Without
/// it, a finished host's stack went with its program, as if the machine were switched off:
/// the server's FIN to a client that closed first was never acknowledged and its side of
/// the connection waited in LAST-ACK, retransmitting, for the rest of the run.
pub(crate) async fn linger(stacks: Vec<Arc<TcpStack>>) {
    let stacks: Vec<Arc<TcpStack>> = stacks.into_iter().filter(|s| s.alive()).collect();
    for s in &stacks {
        s.close_all();
    }
    let give_up = tokio::time::Instant::now() + LINGER_MOST;
    while stacks.iter().any(|s| s.alive() && s.has_streams())
        && tokio::time::Instant::now() < give_up
    {
        tokio::time::sleep(LINGER_CHECK).await;
    }
    // What they sent last (the ACK of the peer's FIN) leaves the host before it goes.
    if let Some(last) = stacks
        .iter()
        .filter_map(|s| s.socket.last_departure())
        .max()
    {
        crate::net::wait_until(last).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The driver: polls the stack when a packet arrives, a stream pokes it, or smoltcp's
/// next timer is due. Ends with the host (or when the stack is dropped).
async fn drive(stack: std::sync::Weak<TcpStack>) {
    loop {
        let Some(s) = stack.upgrade() else { return };
        let next = s.step();
        let socket = s.socket.clone();
        let wait = async move {
            match next {
                Some(d) if d.is_zero() => tokio::task::yield_now().await,
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            packet = socket.recv() => {
                let Some(packet) = packet else { return };
                let mut g = lock(&s.inner);
                g.arrive(&packet);
                while let Some(more) = socket.try_recv() {
                    g.arrive(&more);
                }
            }
            _ = s.wake.notified() => {}
            _ = wait => {}
        }
    }
}

/// A simulated TCP connection, as postsock's `ByteStream`.
pub(crate) struct SimTcpStream {
    stack: Arc<TcpStack>,
    handle: SocketHandle,
    local: SocketAddr,
    peer: SocketAddr,
}

impl fmt::Debug for SimTcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer")
}

impl AsyncRead for SimTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = lock(&self.stack.inner);
        if let Some(e) = g.ended() {
            return Poll::Ready(Err(e));
        }
        let s = g.socket(self.handle);
        if s.can_recv() {
            // A window that was closing opens again: let smoltcp tell the peer.
            let was_full = s.recv_queue() * 2 >= s.recv_capacity();
            let n = s.recv_slice(buf.initialize_unfilled()).unwrap_or(0);
            buf.advance(n);
            drop(g);
            if was_full {
                self.stack.poke();
            }
            return Poll::Ready(Ok(()));
        }
        let may_recv = s.may_recv();
        let t = g.streams.get_mut(&self.handle).expect("tracked");
        if t.reset {
            return Poll::Ready(Err(reset()));
        }
        if !may_recv {
            return Poll::Ready(Ok(()));
        }
        park(&mut t.readers, cx);
        Poll::Pending
    }
}

impl AsyncWrite for SimTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = lock(&self.stack.inner);
        if let Some(e) = g.ended() {
            return Poll::Ready(Err(e));
        }
        let reset_ = g.streams.get(&self.handle).is_some_and(|t| t.reset);
        if reset_ {
            return Poll::Ready(Err(reset()));
        }
        let s = g.socket(self.handle);
        if !s.may_send() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream shut down",
            )));
        }
        if s.can_send() {
            let n = s.send_slice(buf).unwrap_or(0);
            drop(g);
            self.stack.poke();
            return Poll::Ready(Ok(n));
        }
        let t = g.streams.get_mut(&self.handle).expect("tracked");
        park(&mut t.writers, cx);
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes taken by `poll_write` are in the send buffer, as in a kernel's.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = lock(&self.stack.inner);
        if let Some(e) = g.ended() {
            return Poll::Ready(Err(e));
        }
        g.socket(self.handle).close();
        drop(g);
        self.stack.poke();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimTcpStream {
    fn drop(&mut self) {
        let mut g = lock(&self.stack.inner);
        if g.ended().is_some() {
            // Closed with the others when the program ended; the socket may be gone.
            return;
        }
        // As closing a real socket: what was written is still sent, then FIN.
        g.socket(self.handle).close();
        if let Some(t) = g.streams.get_mut(&self.handle) {
            t.released = true;
        }
        drop(g);
        self.stack.poke();
    }
}

/// A listening port of one interface's stack.
pub(crate) struct SimTcpListener {
    stack: Arc<TcpStack>,
    port: u16,
    notify: Arc<Notify>,
}

impl fmt::Debug for SimTcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTcpListener")
            .field("ip", &self.stack.ip)
            .field("port", &self.port)
            .finish()
    }
}

impl SimTcpListener {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.stack.ip, self.port)
    }

    /// The next established connection.
    pub(crate) async fn accept(&self) -> io::Result<(SimTcpStream, SocketAddr)> {
        loop {
            {
                let mut g = lock(&self.stack.inner);
                let next = g
                    .listeners
                    .get_mut(&self.port)
                    .and_then(|b| b.ready.pop_front());
                if let Some(h) = next {
                    let s = g.socket(h);
                    let local = s.local_endpoint().map_or(self.local_addr(), endpoint);
                    let peer = s
                        .remote_endpoint()
                        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), endpoint);
                    return Ok((
                        SimTcpStream {
                            stack: self.stack.clone(),
                            handle: h,
                            local,
                            peer,
                        },
                        peer,
                    ));
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for SimTcpListener {
    fn drop(&mut self) {
        let mut g = lock(&self.stack.inner);
        if let Some(b) = g.listeners.remove(&self.port) {
            for h in b.pending.into_iter().chain(b.ready) {
                g.socket(h).abort();
                g.streams.remove(&h);
                // Aborted sockets send their reset on the next poll, then go.
                let mut t = Tracked::new(State::Closed);
                t.released = true;
                g.streams.insert(h, t);
            }
        }
        drop(g);
        self.stack.poke();
    }
}

/// Whether `SIM_TCP_TRACE` is set: every segment a stack sends or receives is printed to
/// stderr (simulated time in µs, addresses, sequence and acknowledgement numbers, length,
/// window), to debug TCP behaviour in a scenario.
fn tracing_packets() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SIM_TCP_TRACE").is_some())
}

fn trace_packet(now: smoltcp::time::Instant, dir: &str, packet: &[u8]) {
    use smoltcp::wire::{Ipv4Packet, Ipv6Packet, TcpPacket};
    let (src, dst, payload): (IpAddr, IpAddr, &[u8]) = match packet.first().map(|b| b >> 4) {
        Some(4) => match Ipv4Packet::new_checked(packet) {
            Ok(ip) => (ip.src_addr().into(), ip.dst_addr().into(), ip.payload()),
            Err(_) => return,
        },
        Some(6) => match Ipv6Packet::new_checked(packet) {
            Ok(ip) => (ip.src_addr().into(), ip.dst_addr().into(), ip.payload()),
            Err(_) => return,
        },
        _ => return,
    };
    let Ok(t) = TcpPacket::new_checked(payload) else {
        return;
    };
    eprintln!(
        "{} {dir} {}:{} > {}:{} seq {} ack {} len {} win {} opts {:?}",
        now.total_micros(),
        src,
        t.src_port(),
        dst,
        t.dst_port(),
        t.seq_number().0 as u32,
        t.ack_number().0 as u32,
        t.payload().len(),
        t.window_len(),
        t.options().len()
    );
}
