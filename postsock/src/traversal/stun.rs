//! STUN (RFC 8489) Binding: learning one's server-reflexive address, and serving it.
//!
//! The message codec is the `stun_codec` crate (RFC 5389/8489 and the TURN attributes, which
//! the relay client will need). On top of it:
//!
//! - [`binding`]: a client transaction on any datagram socket [`Net`] gives: a Binding request
//!   retransmitted with RFC 8489 §6.2.1 timing (RTO doubling from `rto`, `Rc` requests), whose
//!   success response's XOR-MAPPED-ADDRESS is the address the server saw — behind a NAT, the
//!   NAT's public mapping.
//! - [`StunServer`]: answers every well-formed Binding request with the source address it came
//!   from; drops and counts everything else (malformed, oversized, responses, other methods).
//!   `postsock stun-server` runs it on real sockets; the simulator runs the same code.
//! - [`Demux`]: RFC 7983 demultiplexing on one socket. STUN messages start with a byte of 0
//!   to 3, QUIC packets with one of 64 to 127 (or above 127 for long headers), so a QUIC
//!   endpoint and STUN connectivity checks can share the socket the peer sees. [`Demux`]
//!   hands quinn everything else and keeps STUN for itself.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use stun_codec::rfc5389::attributes::{Software, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use tokio::sync::mpsc;

use crate::net::{AsyncUdpSocket, Net};
use crate::{Error, Result};

/// Largest STUN message accepted (RFC 8489 §6.1: fits an unfragmented IPv4 datagram).
pub const MAX_MESSAGE: usize = 548 * 2;
/// The STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Whether `datagram` is a STUN message by RFC 7983's first-byte rule (and carries the magic
/// cookie): what [`Demux`] keeps away from QUIC.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] <= 3 && datagram[4..8] == MAGIC_COOKIE
}

/// A Binding request with transaction id `txid`.
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let message =
        Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    encode(message)
}

fn encode(message: Message<Attribute>) -> Vec<u8> {
    // Encoding a message built from valid attributes cannot fail.
    MessageEncoder::new()
        .encode_into_bytes(message)
        .unwrap_or_default()
}

fn decode(datagram: &[u8]) -> Option<Message<Attribute>> {
    if datagram.len() > MAX_MESSAGE || !is_stun(datagram) {
        return None;
    }
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()
}

/// The server's answer to `datagram` received from `source`: a Binding success response
/// carrying `source` as XOR-MAPPED-ADDRESS, or `None` if `datagram` is not a well-formed
/// Binding request.
pub fn answer(datagram: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let request = decode(datagram)?;
    if request.class() != MessageClass::Request || request.method() != BINDING {
        return None;
    }
    let mut response = Message::<Attribute>::new(
        MessageClass::SuccessResponse,
        BINDING,
        request.transaction_id(),
    );
    response.add_attribute(XorMappedAddress::new(source));
    if let Ok(software) = Software::new("postsock".to_string()) {
        response.add_attribute(software);
    }
    Some(encode(response))
}

/// The reflexive address in a Binding success response to transaction `txid`; `None` for
/// anything else (another transaction, an error response, a malformed message).
pub fn reflexive_address(datagram: &[u8], txid: [u8; 12]) -> Option<SocketAddr> {
    let response = decode(datagram)?;
    if response.class() != MessageClass::SuccessResponse
        || response.method() != BINDING
        || response.transaction_id().as_bytes() != &txid
    {
        return None;
    }
    response
        .get_attribute::<XorMappedAddress>()
        .map(XorMappedAddress::address)
}

/// Sends one datagram on a quinn-style socket, waiting while it is not writable.
pub async fn send_to(socket: &dyn AsyncUdpSocket, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
    let transmit = Transmit {
        destination: dst,
        ecn: None,
        contents: data,
        segment_size: None,
        src_ip: None,
    };
    loop {
        match socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            other => return other,
        }
    }
}

/// Receives one datagram from a quinn-style socket.
pub async fn recv_from(socket: &dyn AsyncUdpSocket) -> io::Result<(SocketAddr, Bytes)> {
    let mut buf = vec![0u8; 65_536];
    let mut meta = [RecvMeta::default()];
    std::future::poll_fn(|cx| {
        let mut bufs = [IoSliceMut::new(&mut buf)];
        socket.poll_recv(cx, &mut bufs, &mut meta)
    })
    .await?;
    // A coalesced receive (GRO) carries several datagrams of `stride` bytes: keep the first.
    let len = meta[0].len.min(meta[0].stride.max(1));
    buf.truncate(len);
    Ok((meta[0].addr, buf.into()))
}

/// Retransmission timing of a Binding transaction (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first retransmission timeout; it doubles after each request.
    pub rto: Duration,
    /// How many requests in all (`Rc`).
    pub requests: u32,
    /// After the last request, wait this many RTOs (`Rm`) for the answer.
    pub last_wait: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rto: Duration::from_millis(500),
            requests: 7,
            last_wait: 16,
        }
    }
}

/// Where the answers of a STUN transaction come from: a plain socket (every datagram is
/// read), a [`Demux`] (its STUN side), or what a demultiplexer hands a TURN client (every
/// message from its server).
#[derive(Debug)]
pub enum Answers<'a> {
    /// Read the socket directly.
    Socket(&'a dyn AsyncUdpSocket),
    /// Read what a demultiplexer set aside.
    Demux(&'a Demux),
    /// Messages from the TURN server at the address given.
    Relay(&'a mut mpsc::UnboundedReceiver<Bytes>, SocketAddr),
}

impl Answers<'_> {
    async fn next(&mut self) -> io::Result<(SocketAddr, Bytes)> {
        match self {
            Answers::Socket(s) => recv_from(*s).await,
            Answers::Demux(d) => d.recv_stun().await,
            Answers::Relay(rx, server) => match rx.recv().await {
                Some(data) => Ok((*server, data)),
                None => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TURN client's demultiplexer closed",
                )),
            },
        }
    }
}

/// One client transaction with `server` (RFC 8489 §6.2.1): sends `request` from `socket`
/// with `timing` until an answer from `server` that `accept` takes; `None` when none came.
pub(crate) async fn transaction<T>(
    socket: &dyn AsyncUdpSocket,
    answers: &mut Answers<'_>,
    server: SocketAddr,
    request: &[u8],
    timing: Timing,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Option<T>> {
    let mut rto = timing.rto;
    for sent in 1..=timing.requests.max(1) {
        send_to(socket, server, request)
            .await
            .map_err(|e| Error::io(format!("sending a STUN request to {server}"), e))?;
        let wait = if sent == timing.requests {
            timing.rto * timing.last_wait
        } else {
            rto
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(Error::io("reading a STUN answer", e)),
                Ok(Ok((from, data))) => {
                    if let Some(t) = (from == server).then(|| accept(&data)).flatten() {
                        return Ok(Some(t));
                    }
                }
            }
        }
        rto *= 2;
    }
    Ok(None)
}

/// One Binding transaction to `server` from `socket`: the server-reflexive address (the
/// address the server saw the request come from).
pub async fn binding(
    socket: &dyn AsyncUdpSocket,
    mut answers: Answers<'_>,
    server: SocketAddr,
    txid: [u8; 12],
    timing: Timing,
) -> Result<SocketAddr> {
    let request = binding_request(txid);
    let accept = |data: &[u8]| reflexive_address(data, txid);
    transaction(socket, &mut answers, server, &request, timing, accept)
        .await?
        .ok_or_else(|| {
            Error::Connection(format!(
                "no STUN answer from {server} after {} requests",
                timing.requests
            ))
        })
}

/// A transaction id from the network's seeded RNG (simulator) or the secure random source.
pub fn transaction_id(net: &dyn Net) -> [u8; 12] {
    // Without entropy the transaction is merely guessable, not broken.
    crate::util::random(net).unwrap_or_default()
}

/// What a [`StunServer`] did.
#[derive(Debug, Default)]
pub struct StunStats {
    answered: AtomicU64,
    dropped: AtomicU64,
}

impl StunStats {
    /// Binding requests answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
    /// Datagrams dropped: malformed, oversized, not a Binding request.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A server running in a task of its own: where it listens and what it has done (`S`, its
/// statistics). Dropping it stops it.
#[derive(Debug)]
pub struct Served<S> {
    local: SocketAddr,
    stats: Arc<S>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Served<S> {
    pub(crate) fn new(local: SocketAddr, stats: Arc<S>, task: tokio::task::JoinHandle<()>) -> Self {
        Served { local, stats, task }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it has done so far.
    pub fn stats(&self) -> Arc<S> {
        self.stats.clone()
    }

    /// Serves until the task ends (it does not, unless the socket fails).
    pub async fn run(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a server's UDP socket at `local`; returns it and the address it got.
pub(crate) async fn bind_server_socket(
    net: &dyn Net,
    local: SocketAddr,
) -> Result<(Arc<dyn AsyncUdpSocket>, SocketAddr)> {
    let socket = net
        .bind_udp(local)
        .await
        .map_err(|e| Error::io(format!("binding UDP {local}"), e))?;
    let bound = socket
        .local_addr()
        .map_err(|e| Error::io(format!("reading the address bound for {local}"), e))?;
    Ok((socket, bound))
}

/// A STUN server (Binding only, no authentication: RFC 8489 §12's basic server).
pub type StunServer = Served<StunStats>;

impl StunServer {
    /// Binds at `local` through `net` and starts answering.
    pub async fn bind(net: &dyn Net, local: SocketAddr) -> Result<Self> {
        let (socket, local) = bind_server_socket(net, local).await?;
        let stats = Arc::new(StunStats::default());
        let task = tokio::spawn(serve(socket, stats.clone()));
        Ok(Served::new(local, stats, task))
    }
}

async fn serve(socket: Arc<dyn AsyncUdpSocket>, stats: Arc<StunStats>) {
    loop {
        let Ok((from, data)) = recv_from(socket.as_ref()).await else {
            return;
        };
        match answer(&data, from) {
            Some(reply) => {
                if send_to(socket.as_ref(), from, &reply).await.is_ok() {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "dropped a {} B datagram from {from}: not a Binding request",
                    data.len()
                );
            }
        }
    }
}

/// RFC 7983 demultiplexing: a socket shared by QUIC and STUN. Give quinn the `Demux` as its
/// socket; STUN messages that arrive are set aside for [`Demux::recv_stun`], and
/// [`Demux::send_stun`] sends from the same address quinn uses.
///
/// With a TURN allocation attached ([`crate::traversal::turn::allocate`]), datagrams from the TURN
/// server are unwrapped (ChannelData, Data indications) and then sorted the same way, marked
/// [`Via::Relay`]; what goes to a peer that QUIC reaches through the relay is wrapped.
#[derive(Debug)]
pub struct Demux {
    inner: Arc<dyn AsyncUdpSocket>,
    stun_tx: mpsc::UnboundedSender<(SocketAddr, Bytes, Via)>,
    stun_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, Bytes, Via)>>,
    /// The TURN relay's routing, when one is attached.
    relay: Mutex<crate::traversal::turn::RelayRoutes>,
    /// Where the TURN server's own messages (responses) go: the TURN client.
    turn_tx: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// Woken when QUIC starts reaching a peer through the relay (a channel is wanted).
    relay_wanted: Arc<tokio::sync::Notify>,
    /// The allocation's maintenance task (aborted, releasing it, with the socket).
    relay_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Transaction ids of Send indications.
    indications: AtomicU64,
    /// Datagrams from the TURN server that were neither relayed data nor STUN (an unbound
    /// channel, malformed): dropped.
    relay_dropped: AtomicU64,
    /// STUN messages set aside so far.
    diverted: AtomicU64,
    /// While nobody is reading quinn's side, this task reads STUN (see [`Demux::pump`]).
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What the pump read that is not STUN (a peer's first QUIC packets can arrive before
    /// the endpoint exists): handed to quinn first.
    early: Mutex<std::collections::VecDeque<(RecvMeta, Vec<u8>)>>,
}

/// Most datagrams kept for quinn while the pump reads.
const EARLY_MAX: usize = 64;

impl Demux {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Self> {
        let (stun_tx, stun_rx) = mpsc::unbounded_channel();
        Arc::new(Demux {
            inner,
            stun_tx,
            stun_rx: tokio::sync::Mutex::new(stun_rx),
            diverted: AtomicU64::new(0),
            pump: Mutex::new(None),
            early: Mutex::new(Default::default()),
            relay: Mutex::new(Default::default()),
            turn_tx: Mutex::new(None),
            relay_wanted: Arc::new(tokio::sync::Notify::new()),
            relay_task: Mutex::new(None),
            indications: AtomicU64::new(0),
            relay_dropped: AtomicU64::new(0),
        })
    }

    /// Sends a STUN message from the shared socket.
    pub async fn send_stun(&self, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
        send_to(self.inner.as_ref(), dst, data).await
    }

    /// Sends a STUN message straight from the shared socket, or through the TURN relay.
    pub async fn send_stun_via(&self, dst: SocketAddr, data: &[u8], via: Via) -> io::Result<()> {
        match via {
            Via::Direct => send_to(self.inner.as_ref(), dst, data).await,
            Via::Relay => {
                let (server, wrapped) = self.wrap(dst, data)?;
                send_to(self.inner.as_ref(), server, &wrapped).await
            }
        }
    }

    /// The next STUN message that arrived on the shared socket (straight or relayed).
    pub async fn recv_stun(&self) -> io::Result<(SocketAddr, Bytes)> {
        self.recv_stun_via()
            .await
            .map(|(from, data, _)| (from, data))
    }

    /// The next STUN message, and whether it came straight or through the relay.
    pub async fn recv_stun_via(&self) -> io::Result<(SocketAddr, Bytes, Via)> {
        self.stun_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "demultiplexer closed"))
    }

    /// The socket underneath.
    pub fn inner(&self) -> Arc<dyn AsyncUdpSocket> {
        self.inner.clone()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, crate::traversal::turn::RelayRoutes> {
        crate::util::lock(&self.relay)
    }

    /// `data` for `peer` wrapped for the relay: where to send it and what.
    fn wrap(&self, peer: SocketAddr, data: &[u8]) -> io::Result<(SocketAddr, Vec<u8>)> {
        let n = self.indications.fetch_add(1, Ordering::Relaxed);
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(b"psnd");
        txid[4..].copy_from_slice(&n.to_be_bytes());
        self.routes().wrap(txid, peer, data)
    }

    /// Routes datagrams from `server` to the returned receiver when they are not relayed
    /// data (they are the TURN client's responses).
    pub(crate) fn attach_relay(&self, server: SocketAddr) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        *crate::util::lock(&self.turn_tx) = Some(tx);
        // A new allocation: the old one's channels and relayed routes mean nothing now.
        let mut r = self.routes();
        r.server = Some(server);
        r.channels.clear();
        r.incoming.clear();
        r.routes.clear();
        drop(r);
        rx
    }

    /// Stops the allocation's maintenance task and waits until it has released the
    /// allocation (a Refresh with LIFETIME 0, sent as the task ends).
    pub(crate) async fn release_relay(&self) {
        let task = crate::util::lock(&self.relay_task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    pub(crate) fn set_relay_task(&self, task: tokio::task::JoinHandle<()>) {
        if let Some(old) = crate::util::lock(&self.relay_task).replace(task) {
            old.abort();
        }
    }

    pub(crate) fn relay_wanted(&self) -> Arc<tokio::sync::Notify> {
        self.relay_wanted.clone()
    }

    /// Peers QUIC reaches through the relay that have no channel yet.
    pub(crate) fn relay_unbound(&self) -> Vec<SocketAddr> {
        let r = self.routes();
        r.routes
            .iter()
            .filter(|(p, via)| **via == Via::Relay && !r.channels.contains_key(p))
            .map(|(p, _)| *p)
            .collect()
    }

    pub(crate) fn relay_channel_incoming(&self, channel: u16, peer: SocketAddr) {
        self.routes().incoming.insert(channel, peer);
    }

    pub(crate) fn relay_channel_bound(&self, peer: SocketAddr, channel: u16) {
        self.routes().channels.insert(peer, channel);
    }

    /// Sends QUIC for `peer` straight or through the relay (until a packet from `peer`
    /// arrives the other way).
    pub fn set_route(&self, peer: SocketAddr, via: Via) {
        self.put_route(self.routes(), peer, via);
    }

    /// Records `via` as the way to `peer`; a peer newly reached through the relay wants a
    /// channel.
    fn put_route(
        &self,
        mut r: std::sync::MutexGuard<'_, crate::traversal::turn::RelayRoutes>,
        peer: SocketAddr,
        via: Via,
    ) {
        match via {
            Via::Direct => {
                r.routes.remove(&peer);
            }
            Via::Relay => {
                r.routes.insert(peer, via);
                drop(r);
                self.relay_wanted.notify_one();
            }
        }
    }

    /// Sends what QUIC addresses to `known` to `real` instead, and shows what comes from
    /// `real` to QUIC as coming from `known`: the peer moved (its NAT rebooted, a restart
    /// found it elsewhere), and QUIC — whose client cannot follow a server that moves —
    /// need not know.
    pub fn alias(&self, known: SocketAddr, real: SocketAddr) {
        let mut r = self.routes();
        if known == real {
            r.aliases.remove(&known);
        } else {
            r.aliases.insert(known, real);
        }
    }

    /// Where a peer QUIC knows as `addr` really is, and the way there (one lock: this is
    /// every QUIC send).
    fn destination(&self, addr: SocketAddr) -> (SocketAddr, Via) {
        let r = self.routes();
        let to = r.aliases.get(&addr).copied().unwrap_or(addr);
        (to, r.routes.get(&to).copied().unwrap_or(Via::Direct))
    }

    /// A QUIC packet came from `peer` by `via`: remembers the way, so that answers go the
    /// same way, and returns the address QUIC knows the peer by (one lock: this is every
    /// QUIC receive).
    fn quic_arrival(&self, peer: SocketAddr, via: Via) -> SocketAddr {
        let r = self.routes();
        let known = r
            .aliases
            .iter()
            .find(|(_, to)| **to == peer)
            .map(|(known, _)| *known)
            .unwrap_or(peer);
        let before = r.routes.get(&peer).copied().unwrap_or(Via::Direct);
        if r.server.is_some() && before != via {
            self.put_route(r, peer, via);
        }
        known
    }

    /// How QUIC reaches `peer`.
    pub fn route(&self, peer: SocketAddr) -> Via {
        self.routes()
            .routes
            .get(&peer)
            .copied()
            .unwrap_or(Via::Direct)
    }

    /// STUN messages set aside so far.
    pub fn diverted(&self) -> u64 {
        self.diverted.load(Ordering::Relaxed)
    }

    /// Datagrams from the TURN server dropped as malformed or for an unbound channel.
    pub fn relay_dropped(&self) -> u64 {
        self.relay_dropped.load(Ordering::Relaxed)
    }

    /// Reads the socket in a task of its own until quinn takes it over: before a QUIC
    /// endpoint exists (connectivity checks come first), somebody must read.
    pub fn pump(self: &Arc<Self>) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let mut meta = [RecvMeta::default()];
                let got = std::future::poll_fn(|cx| {
                    let mut bufs = [IoSliceMut::new(&mut buf)];
                    me.poll_recv_demuxed(cx, &mut bufs, &mut meta)
                })
                .await;
                if got.is_err() {
                    return;
                }
                // Not STUN: kept (bounded) for the QUIC endpoint about to be created.
                let mut early = crate::util::lock(&me.early);
                if early.len() < EARLY_MAX {
                    let len = meta[0].len;
                    early.push_back((meta[0], buf[..len].to_vec()));
                }
            }
        });
        if let Some(old) = crate::util::lock(&self.pump).replace(task) {
            old.abort();
        }
    }

    /// Stops the reading task (quinn reads from now on).
    pub fn stop_pump(&self) {
        if let Some(task) = crate::util::lock(&self.pump).take() {
            task.abort();
        }
    }
}

impl Drop for Demux {
    fn drop(&mut self) {
        self.stop_pump();
        if let Some(task) = crate::util::lock(&self.relay_task).take() {
            task.abort();
        }
    }
}

/// How a datagram came, or goes: straight between the sockets, or through our TURN relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// Straight.
    Direct,
    /// Through the TURN allocation on this socket.
    Relay,
}

/// What [`Demux::sort`] made of one datagram.
enum Sorted {
    /// Set aside (STUN, the TURN client's answers) or dropped.
    Taken,
    /// QUIC for quinn: from `addr` (as QUIC knows the peer), with `payload` when it is not
    /// the datagram as received (it came wrapped by the relay).
    Quic {
        addr: SocketAddr,
        payload: Option<Vec<u8>>,
    },
}

impl Demux {
    /// Sorts one datagram from `from`: unwraps what the TURN `server` relays, sets STUN and
    /// the TURN client's answers aside, learns how QUIC reaches the peer.
    fn sort(&self, server: Option<SocketAddr>, from: SocketAddr, data: &[u8]) -> Sorted {
        let (peer, via, relayed) = if Some(from) == server {
            match crate::traversal::turn::from_server(data, &self.routes().incoming) {
                crate::traversal::turn::FromServer::Peer(peer, inner) => {
                    (peer, Via::Relay, Some(inner))
                }
                crate::traversal::turn::FromServer::Control => {
                    if let Some(tx) = &*crate::util::lock(&self.turn_tx) {
                        let _ = tx.send(Bytes::copy_from_slice(data));
                    }
                    return Sorted::Taken;
                }
                crate::traversal::turn::FromServer::Drop => {
                    self.relay_dropped.fetch_add(1, Ordering::Relaxed);
                    return Sorted::Taken;
                }
            }
        } else {
            (from, Via::Direct, None)
        };
        let payload = relayed.as_deref().unwrap_or(data);
        if is_stun(payload) {
            self.diverted.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .stun_tx
                .send((peer, Bytes::copy_from_slice(payload), via));
            return Sorted::Taken;
        }
        // QUIC: answer the way it came; show QUIC the address it knows the peer by.
        Sorted::Quic {
            addr: self.quic_arrival(peer, via),
            payload: relayed,
        }
    }

    /// Reads the inner socket, setting STUN aside; returns what is left (at least one).
    fn poll_recv_demuxed(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Keep the QUIC entries, in order, at the front.
            let mut kept = 0;
            let server = self.routes().server;
            for i in 0..n {
                let from = meta[i].addr;
                let mut len = meta[i].len;
                let stride = meta[i].stride.max(1);
                // A coalesced receive (GRO: same-sized datagrams from one source) of relayed
                // or STUN datagrams: taken apart. The first stays here; the others are sorted
                // one by one, the QUIC ones waiting in `early` for quinn's next read.
                let mut first = None;
                if stride < len && (Some(from) == server || is_stun(&bufs[i][..stride])) {
                    first = Some(self.sort(server, from, &bufs[i][..stride]));
                    for segment in bufs[i][stride..len].chunks(stride) {
                        if let Sorted::Quic { addr, payload } = self.sort(server, from, segment) {
                            let data = payload.unwrap_or_else(|| segment.to_vec());
                            let m = RecvMeta {
                                addr,
                                len: data.len(),
                                stride: data.len(),
                                ..meta[i]
                            };
                            crate::util::lock(&self.early).push_back((m, data));
                        }
                    }
                    len = stride;
                    meta[i].len = len;
                    meta[i].stride = len;
                }
                if meta[i].stride >= len {
                    let sorted = match first {
                        Some(sorted) => sorted,
                        None => self.sort(server, from, &bufs[i][..len]),
                    };
                    match sorted {
                        Sorted::Taken => continue,
                        Sorted::Quic { addr, payload } => {
                            if let Some(data) = payload {
                                len = data.len().min(bufs[i].len());
                                bufs[i][..len].copy_from_slice(&data[..len]);
                                meta[i].len = len;
                                meta[i].stride = len;
                            }
                            meta[i].addr = addr;
                        }
                    }
                } else {
                    // QUIC segments from one peer, straight.
                    meta[i].addr = self.quic_arrival(from, Via::Direct);
                }
                if kept != i {
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was STUN: read on (the inner socket registers the waker when empty).
        }
    }
}

impl AsyncUdpSocket for Demux {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let (to, via) = self.destination(transmit.destination);
        if via == Via::Direct {
            if to == transmit.destination {
                return self.inner.try_send(transmit);
            }
            return self.inner.try_send(&Transmit {
                destination: to,
                ..*transmit
            });
        }
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            let (server, wrapped) = self.wrap(to, segment)?;
            self.inner.try_send(&Transmit {
                destination: server,
                ecn: transmit.ecn,
                contents: &wrapped,
                segment_size: None,
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let early = crate::util::lock(&self.early).pop_front();
        if let (Some((m, data)), Some(buf), Some(slot)) =
            (early, bufs.first_mut(), meta.first_mut())
        {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            *slot = RecvMeta {
                len: n,
                stride: n,
                ..m
            };
            return Poll::Ready(Ok(1));
        }
        self.poll_recv_demuxed(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that hands out prepared receives, each possibly a coalesced (GRO) batch.
    #[derive(Debug, Default)]
    struct Canned(Mutex<std::collections::VecDeque<(SocketAddr, Vec<u8>, usize)>>);

    #[derive(Debug)]
    struct Writable;

    impl quinn::UdpPoller for Writable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Canned {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
            Box::pin(Writable)
        }
        fn try_send(&self, _: &Transmit) -> io::Result<()> {
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            match self.0.lock().expect("lock").pop_front() {
                Some((addr, data, stride)) => {
                    bufs[0][..data.len()].copy_from_slice(&data);
                    meta[0] = RecvMeta {
                        addr,
                        len: data.len(),
                        stride,
                        ..RecvMeta::default()
                    };
                    Poll::Ready(Ok(1))
                }
                None => Poll::Pending,
            }
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(([127, 0, 0, 1], 1).into())
        }
    }

    #[tokio::test]
    async fn coalesced_relayed_and_stun_datagrams_are_taken_apart() {
        let server: SocketAddr = "192.0.2.1:3478".parse().expect("addr");
        let peer: SocketAddr = "198.51.100.2:5000".parse().expect("addr");
        // Three same-sized ChannelData datagrams from the relay, coalesced by GRO; then two
        // STUN requests from the peer, coalesced too.
        let quic = |k: u8| vec![0x40 | k, 1, 2, 3, 4, 5, 6, 7];
        let relayed: Vec<u8> = (0..3)
            .flat_map(|k| crate::traversal::turn::channel_data(0x4000, &quic(k)))
            .collect();
        let stun: Vec<u8> = [binding_request([1; 12]), binding_request([2; 12])].concat();
        let socket = Arc::new(Canned::default());
        {
            let mut q = socket.0.lock().expect("lock");
            q.push_back((server, relayed, 12));
            q.push_back((peer, stun, 20));
        }
        let demux = Demux::new(socket);
        let _control = demux.attach_relay(server);
        demux.relay_channel_incoming(0x4000, peer);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(recv_from(demux.as_ref()).await.expect("quic"));
        }
        for (k, (from, data)) in got.iter().enumerate() {
            assert_eq!(*from, peer, "unwrapped: from the peer");
            assert_eq!(data.as_ref(), &quic(k as u8)[..], "datagram {k}, in order");
        }
        assert_eq!(
            demux.route(peer),
            Via::Relay,
            "answers go back through the relay"
        );
        // Somebody reads on (as quinn would): the STUN batch is set aside.
        demux.pump();
        for txid in [[1u8; 12], [2; 12]] {
            let (from, data, via) =
                tokio::time::timeout(Duration::from_secs(1), demux.recv_stun_via())
                    .await
                    .expect("in time")
                    .expect("stun");
            assert_eq!((from, via), (peer, Via::Direct));
            assert_eq!(data.as_ref(), &binding_request(txid)[..]);
        }
    }

    #[test]
    fn request_answer_round_trip() {
        let txid = [9u8; 12];
        let request = binding_request(txid);
        assert!(is_stun(&request));
        let from: SocketAddr = "203.0.113.7:40001".parse().expect("addr");
        let reply = answer(&request, from).expect("an answer");
        assert_eq!(reflexive_address(&reply, txid), Some(from));
        // Another transaction's answer is not ours.
        assert_eq!(reflexive_address(&reply, [1u8; 12]), None);
        // A response is not a request.
        assert_eq!(answer(&reply, from), None);
        let v6: SocketAddr = "[2001:db8::5]:7".parse().expect("addr");
        let reply = answer(&request, v6).expect("an answer");
        assert_eq!(reflexive_address(&reply, txid), Some(v6));
    }

    #[test]
    fn malformed_messages_are_not_answered() {
        let from: SocketAddr = "198.51.100.1:9".parse().expect("addr");
        let good = binding_request([3u8; 12]);
        let mut bad_cookie = good.clone();
        bad_cookie[4] ^= 0xff;
        let mut bad_length = good.clone();
        bad_length[3] = 200;
        let mut truncated_attribute = good.clone();
        truncated_attribute[3] = 8;
        truncated_attribute.extend_from_slice(&[0x80, 0x22, 0x00, 0x20]);
        let oversized = [good.clone(), vec![0u8; 2000]].concat();
        for (what, bytes) in [
            ("empty", vec![]),
            ("short", good[..19].to_vec()),
            ("bad cookie", bad_cookie),
            ("bad length", bad_length),
            ("truncated attribute", truncated_attribute),
            ("oversized", oversized),
            ("QUIC long header", vec![0xc0; 40]),
        ] {
            assert_eq!(answer(&bytes, from), None, "{what}");
        }
    }
}
