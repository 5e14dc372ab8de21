//! RFC 7983 demultiplexing: one UDP socket shared by QUIC, STUN connectivity checks and a
//! TURN relay. The [`Demux`] is the socket quinn gets; it owns the relay routes.

use std::collections::BTreeMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;

use crate::net::AsyncUdpSocket;

use super::codec::stun::is_stun;
use super::codec::turn::{channel_data, from_server, send_indication, FromServer};
use crate::net::send_to;

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
    relay: Mutex<RelayRoutes>,
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

    fn routes(&self) -> std::sync::MutexGuard<'_, RelayRoutes> {
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
    fn put_route(&self, mut r: std::sync::MutexGuard<'_, RelayRoutes>, peer: SocketAddr, via: Via) {
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
            match from_server(data, &self.routes().incoming) {
                FromServer::Peer(peer, inner) => (peer, Via::Relay, Some(inner)),
                FromServer::Control => {
                    if let Some(tx) = &*crate::util::lock(&self.turn_tx) {
                        let _ = tx.send(Bytes::copy_from_slice(data));
                    }
                    return Sorted::Taken;
                }
                FromServer::Drop => {
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

/// Routing decisions of a [`Demux`] with a relay attached.
#[derive(Debug, Default)]
pub(crate) struct RelayRoutes {
    pub(crate) server: Option<SocketAddr>,
    /// Bound channels usable for sending: peer → number.
    pub(crate) channels: BTreeMap<SocketAddr, u16>,
    /// Channel numbers the server may use towards us: number → peer.
    pub(crate) incoming: BTreeMap<u16, SocketAddr>,
    /// How QUIC reaches a peer: the way its last QUIC packet came, or as set.
    pub(crate) routes: BTreeMap<SocketAddr, Via>,
    /// Peers QUIC knows by an address they no longer have (a restart found them
    /// elsewhere): QUIC's address → the real one.
    pub(crate) aliases: BTreeMap<SocketAddr, SocketAddr>,
}

impl RelayRoutes {
    /// `data` for `peer` as it goes to the server: ChannelData on a bound channel, else a
    /// Send indication.
    pub(crate) fn wrap(
        &self,
        txid: [u8; 12],
        peer: SocketAddr,
        data: &[u8],
    ) -> io::Result<(SocketAddr, Vec<u8>)> {
        let server = self
            .server
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no TURN relay"))?;
        let out = match self.channels.get(&peer) {
            Some(ch) => channel_data(*ch, data),
            None => send_indication(txid, peer, data).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "too large for a Send indication",
                )
            })?,
        };
        Ok((server, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::recv_from;
    use crate::traversal::codec::stun::binding_request;
    use std::time::Duration;

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
            .flat_map(|k| channel_data(0x4000, &quic(k)))
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
}
