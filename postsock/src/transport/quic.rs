//! QUIC transients via quinn (docs/WIRE.md): an ordered reliable message is one
//! unidirectional stream ended by FIN, read in stream order; an unordered one is a
//! bidirectional stream whose receive side goes unused; an unreliable one is a DATAGRAM frame.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::assemble::{Assembly, ReceiveLimits};
use super::awaited::{answer_now, Awaited, Stopped};
use super::cc::PathAwareFactory;
pub(crate) use super::cc::PathEpoch;
use super::stream_cap::StreamCap;
use super::{tls, EventTx, Flag, KeptWait};
use crate::message::{MessageProperties, SendStatus};
use crate::net::Net;
use crate::transport::moving::{Handback, QuicMove, Receipts};
use crate::transport::outbox::{Direct, DirectWrite, Item, Outbox};
use crate::ConnectionError;
use crate::{Configuration, Error, Event, MessageId, Received, Result};

/// Streams the peer may open at once (messages in flight towards us), per direction type.
/// 512 rather than 1,024: 10,000 × 1 KiB on one thread went at 0.85 of raw quinn with 1,024
/// and 0.89 with 512 (quinn's per-stream state is smaller and warmer), and as fast on two
/// workers. How many a sender keeps in flight below that is its own limit's
/// (`stream_cap.rs`: 128 on loopback, up to this on long paths).
const MAX_CONCURRENT_STREAMS: u32 = super::stream_cap::MOST as u32;
/// The send loop's limit on messages in flight on a fresh connection, before it measured.
pub(crate) const FRESH_MESSAGE_LIMIT: usize = super::stream_cap::MOST;
/// Flow-control window of one stream, bytes.
const STREAM_WINDOW: u32 = 2 << 20;
/// Flow-control window of the connection (and quinn's send buffer), bytes.
const CONNECTION_WINDOW: u32 = 8 << 20;

/// The application error code of the RESET_STREAM that says goodbye (docs/WIRE.md,
/// "Closing"): ASCII "bye".
const GOODBYE: u32 = 0x0062_7965;

/// The goodbye exchange of one QUIC connection (docs/WIRE.md, "Closing"). QUIC repeats a
/// CONNECTION_CLOSE only in reply to packets that arrive while it is closing (RFC 9000
/// §10.2.1): a close lost on the way to an idle peer leaves the peer to learn of it from a
/// stateless reset or its idle timeout, which it cannot tell from a crash. A closing end
/// therefore first resets a fresh bidirectional stream with the code `GOODBYE`, which QUIC
/// delivers reliably, and waits (bounded) for the peer to answer in kind before it closes.
/// An end that was told goodbye takes the connection's end, however it comes, as a close.
#[derive(Debug, Default)]
pub(crate) struct Goodbye {
    /// We said goodbye first.
    said: std::sync::atomic::AtomicBool,
    /// The peer said goodbye (first, or in answer to ours).
    heard: std::sync::atomic::AtomicBool,
    answered: Notify,
}

impl Goodbye {
    fn heard(&self) -> bool {
        self.heard.load(Ordering::Acquire)
    }

    /// Says goodbye and waits up to `wait` for the peer's answer (none if its goodbye has
    /// already arrived). A peer that only knows docs/WIRE.md's message mapping discards the
    /// reset stream and never answers: the wait runs out and the close goes ahead.
    pub(crate) async fn say(&self, conn: &quinn::Connection, wait: Duration) {
        let answered = self.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        self.said.store(true, Ordering::Release);
        if self.heard() {
            return;
        }
        let sent = tokio::time::timeout(wait, async {
            let mut send = conn.open_bi().await.ok()?.0;
            send.reset(GOODBYE.into()).ok()
        })
        .await;
        if matches!(sent, Ok(Some(()))) {
            let _ = tokio::time::timeout(wait, answered).await;
        }
    }

    /// The peer's goodbye arrived: answer it unless it answers ours.
    async fn hear(&self, conn: &quinn::Connection) {
        let first = !self.heard.swap(true, Ordering::AcqRel);
        self.answered.notify_waiters();
        if first && !self.said.load(Ordering::Acquire) {
            if let Ok((mut send, _)) = conn.open_bi().await {
                let _ = send.reset(GOODBYE.into());
            }
        }
    }
}

/// The transport parameters of every postsock QUIC connection. The idle timeout is the
/// configuration's dormant timeout: a connection whose paths are all dead survives that long,
/// so a dormant carrier can come back on another path (quinn migrates it).
fn transport_config(
    config: &Configuration,
    epoch: Option<&PathEpoch>,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if let Some(epoch) = epoch {
        t.congestion_controller_factory(PathAwareFactory::new(epoch.clone()));
    }
    let idle = quinn::IdleTimeout::try_from(config.dormant_timeout)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX));
    t.max_idle_timeout(Some(idle));
    t.max_concurrent_uni_streams(MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
        // Bounded windows: a receiver that stops reading holds at most this much.
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(CONNECTION_WINDOW as u64)
        .keep_alive_interval(config.keepalive);
    // Streams of the same priority go in the order they were written (each finished before
    // the next starts), not round-robin: ordered messages are read in stream order, so a
    // message interleaved with those after it only arrives later (and acknowledgements come
    // in write order: the sending loop finds each ended stream first in its queue,
    // `awaited.rs`).
    t.send_fairness(false);
    Arc::new(t)
}

/// The endpoint configuration. A server's stateless-reset key is derived from its identity's
/// private key (RFC 9000 §10.3.2: a static key), so a server that restarted and lost its
/// connections answers their packets with resets the clients can verify: they end at once
/// with "reset by peer" instead of waiting out their idle timeout on a path that works. The
/// key of its connection IDs' check hash comes from the same secret: quinn drops (rather
/// than resets) packets whose connection ID fails that check, so it too must survive a
/// restart. Without an identity (a client) both keys are quinn's random ones.
fn endpoint_config(net: &dyn Net, server: Option<&Configuration>) -> quinn::EndpointConfig {
    let identity = server.and_then(|c| c.security.identity.as_ref());
    let mut config = match identity {
        Some(identity) => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"postsock stateless reset key v1");
            ctx.update(identity.key.secret_der());
            let secret = ctx.finish();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&ring::hmac::sign(&key, b"connection id check").as_ref()[..8]);
            let cid_key = u64::from_be_bytes(cid_key);
            let mut config = quinn::EndpointConfig::new(Arc::new(key));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    config.rng_seed(net.rng_seed());
    config
}

/// Creates a QUIC endpoint on a socket bound through `net`.
pub(crate) async fn endpoint(
    net: &dyn Net,
    local: SocketAddr,
    server: Option<&Configuration>,
) -> Result<quinn::Endpoint> {
    let socket = net
        .bind_udp(local)
        .await
        .map_err(|e| Error::io(format!("binding UDP {local}"), e))?;
    endpoint_on(net, socket, server, None)
}

/// Creates a QUIC endpoint on `socket` (a server too when `server` is given; its
/// connections' congestion control starts afresh whenever `server_epoch` is bumped).
pub(crate) fn endpoint_on(
    net: &dyn Net,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    server: Option<&Configuration>,
    server_epoch: Option<&PathEpoch>,
) -> Result<quinn::Endpoint> {
    let server_config = match server {
        Some(config) => {
            let mut tls_config = tls::server_config(&config.security, net.tls_clock())?;
            // Accept 0-RTT from clients resuming a session (quinn needs the maximum).
            tls_config.max_early_data_size = u32::MAX;
            let crypto =
                QuicServerConfig::try_from(tls_config).map_err(|e| Error::Tls(e.to_string()))?;
            let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            sc.transport_config(transport_config(config, server_epoch));
            Some(sc)
        }
        None => None,
    };
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(net, server),
        server_config,
        socket,
        net.quic_runtime(),
    )
    .map_err(|e| Error::io("creating QUIC endpoint", e))
}

/// A fresh client endpoint for reaching `remote`, bound on `local` (an interface's address)
/// or on the unspecified address.
async fn client_endpoint(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> Result<quinn::Endpoint> {
    let local: SocketAddr = match local {
        Some(ip) => (ip, 0).into(),
        None if remote.is_ipv4() => ([0, 0, 0, 0], 0).into(),
        None => ([0u16; 8], 0).into(),
    };
    endpoint(net, local, None).await
}

/// Starts connecting to `remote` from `endpoint` (nothing is awaited yet).
fn start_connect(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    host: &str,
    config: &Configuration,
    tls: Arc<rustls::ClientConfig>,
    epoch: &PathEpoch,
) -> Result<quinn::Connecting> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config(config, Some(epoch)));
    let name = tls::server_name(&config.security, host)?
        .to_str()
        .into_owned();
    endpoint
        .connect_with(client, remote, &name)
        .map_err(|e| establish_error(remote, e))
}

fn establish_error(remote: SocketAddr, e: impl std::fmt::Display) -> Error {
    Error::Establish {
        protocol: crate::Protocol::Quic,
        remote,
        reason: e.to_string(),
    }
}

/// Connects to `remote` over a fresh client endpoint; returns the endpoint, the connection
/// and the epoch to bump when the endpoint moves to another interface.
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
    host: &str,
    config: &Configuration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(quinn::Endpoint, quinn::Connection, PathEpoch)> {
    let endpoint = client_endpoint(net, remote, local).await?;
    let epoch = PathEpoch::default();
    let connection = connect_on(&endpoint, remote, host, config, tls, &epoch).await?;
    Ok((endpoint, connection, epoch))
}

/// Starts a 0-RTT connection to `remote` on a fresh endpoint: `None` when rustls holds no
/// session ticket for it (then nothing was sent).
pub(crate) async fn connect_0rtt(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
    host: &str,
    config: &Configuration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Option<ZeroRttConnection>> {
    let endpoint = client_endpoint(net, remote, local).await?;
    let epoch = PathEpoch::default();
    let connecting = start_connect(&endpoint, remote, host, config, tls, &epoch)?;
    Ok(connecting
        .into_0rtt()
        .ok()
        .map(|(conn, accepted)| (endpoint, conn, accepted, epoch)))
}

/// A client connection in 0-RTT: endpoint, connection, acceptance, path epoch.
pub(crate) type ZeroRttConnection = (
    quinn::Endpoint,
    quinn::Connection,
    quinn::ZeroRttAccepted,
    PathEpoch,
);

/// Connects to `remote` from an existing endpoint.
pub(crate) async fn connect_on(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    host: &str,
    config: &Configuration,
    tls: Arc<rustls::ClientConfig>,
    epoch: &PathEpoch,
) -> Result<quinn::Connection> {
    start_connect(endpoint, remote, host, config, tls, epoch)?
        .await
        .map_err(|e| establish_error(remote, e))
}

/// Between ordered reliable messages (unidirectional streams, read in stream order) handing
/// the antecedent to quinn is enough; any other pairing waits for the acknowledgement.
pub(crate) fn order_rule(ante: &MessageProperties, dep: &MessageProperties) -> bool {
    ante.reliable && ante.ordered && dep.reliable && dep.ordered
}

/// Bytes handed to quinn and not yet settled, with a wake-up when they drop for the one
/// task that waits for that (the sending loop, in `room`): a `Signal`, whose notification
/// is two atomic operations where a `Notify`'s took its lock, at every settled message.
#[derive(Debug, Default)]
struct InFlight {
    bytes: AtomicUsize,
    drop: crate::util::Signal,
}

impl InFlight {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.drop.notify();
    }
    async fn below(&self, limit: usize) {
        self.drop
            .until(|| (self.bytes.load(Ordering::Relaxed) < limit).then_some(()))
            .await
    }
}

/// How often a sending loop blocked on the congestion window reads the window again.
const WINDOW_RECHECK: Duration = Duration::from_millis(5);

/// Least amount the sending loop keeps in flight, whatever the congestion window.
const MIN_IN_FLIGHT: usize = 8 * 1024;

/// The messages being written or awaiting their acknowledgement, each a future polled by the
/// sending loop itself ([`Writes::drive`]) rather than a task of its own: no task spawned,
/// scheduled and joined per message, and on a multi-thread runtime no message's stream
/// contended for by another worker. A written ordered message without a lifetime leaves
/// its future and awaits its acknowledgement with the others ([`Awaited`]).
///
/// A write checks the carrier's halt flag each time it is polled but does not wait on it
/// (a waiter registered and removed per message, under the flag's lock, cost about 4 % of
/// a small message's CPU): once the flag is set, `Writes` polls every write again
/// ([`Writes::wake_all`]), so each sees it and hands its message back.
struct Writes {
    /// The writes under way and the written messages awaiting acknowledgement.
    ends: Ends,
    /// What finished writes handed back (the carrier moved).
    handed: Vec<Handback>,
    /// The carrier's halt flag: true when it moves to TLS/TCP (transport::moving).
    halt: watch::Receiver<bool>,
    /// The wait on `halt` the loops below poll at each step.
    halted: KeptWait<bool>,
    /// Every write has been polled since the flag was set.
    woken: bool,
    /// How many writes may be pending at once (`stream_cap.rs`).
    cap: StreamCap,
}

type WriteFut = std::pin::Pin<Box<dyn std::future::Future<Output = WriteEnd> + Send>>;

/// What a written ordered message keeps while its acknowledgement is awaited
/// ([`Awaited`]).
struct AwaitedWrite {
    item: Item,
    /// Its place among the ordered messages' writes ([`AckOrder`]).
    order: u64,
    /// Its bytes in flight.
    counted: usize,
}

/// The writes the sending loop drives: messages being written (a future each), and
/// written ones awaiting their acknowledgement (no future each: `awaited.rs`).
struct Ends {
    writing: FuturesUnordered<WriteFut>,
    awaited: Awaited<AwaitedWrite>,
    /// Acknowledgements (or failures) `awaited` answered, to be settled.
    answered: Vec<(quinn::SendStream, AwaitedWrite, Stopped)>,
    /// The ordered messages' writes, for reporting their acknowledgements in order.
    order: AckOrder<(Item, quinn::StreamId)>,
    /// What the sending threads wrote themselves ([`DirectWriter`]), not yet taken here.
    direct: Arc<std::sync::Mutex<Vec<DirectWritten>>>,
    /// What every write reaches: the outbox, the bytes in flight, the halt flag.
    links: Links,
}

/// What every write of a sending loop reaches ([`Links::shared`]).
struct Links {
    outbox: Arc<Outbox>,
    in_flight: Arc<InFlight>,
    /// The carrier's halt flag as each write reads it ([`set_now`]).
    halt: Flag,
}

impl Links {
    /// What a write of an ordered message at `order` (any other: `None`) shares.
    fn shared(&self, early: Option<watch::Receiver<bool>>, order: Option<u64>) -> Shared {
        Shared {
            outbox: self.outbox.clone(),
            in_flight: self.in_flight.clone(),
            early,
            halt: self.halt.clone(),
            order,
        }
    }
}

/// What [`Ends::next`] found. (Moved once per poll: boxing the write's end would be an
/// allocation per message.)
#[allow(clippy::large_enum_variant)]
enum Progress {
    /// A write ended.
    Ended(WriteEnd),
    /// `Ends::answered` holds answers.
    Answered,
}

impl Ends {
    fn len(&self) -> usize {
        self.writing.len() + self.awaited.len()
    }

    fn is_empty(&self) -> bool {
        self.writing.is_empty() && self.awaited.is_empty()
    }

    /// The next write to end or answers to settle. The acknowledgements are looked for
    /// even with none awaited: that leaves this task's waker with the connection, for the
    /// messages a sending thread writes meanwhile ([`DirectWriter`]).
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Progress> {
        use std::task::Poll;
        if !self.writing.is_empty() {
            if let Poll::Ready(Some(end)) = self.writing.poll_next_unpin(cx) {
                return Poll::Ready(Progress::Ended(end));
            }
        }
        // Under the lock a sending thread writes under: a stream the connection reports
        // ended was finished before, so it is taken here first.
        let mut written = crate::util::lock(&self.direct);
        if !written.is_empty()
            && adopt(
                &mut written,
                &mut self.order,
                &mut self.awaited,
                &mut self.writing,
                &self.links,
            )
        {
            // A message begun there: its write is polled at once.
            cx.waker().wake_by_ref();
        }
        if self.awaited.poll_settled(cx, &mut self.answered).is_ready() {
            return Poll::Ready(Progress::Answered);
        }
        Poll::Pending
    }

    /// Takes what the sending threads wrote until now (before anything takes a place
    /// among the ordered messages after theirs).
    fn adopt_now(&mut self) {
        let mut written = crate::util::lock(&self.direct);
        if !written.is_empty() {
            adopt(
                &mut written,
                &mut self.order,
                &mut self.awaited,
                &mut self.writing,
                &self.links,
            );
        }
    }

    /// Waits for [`poll_next`](Self::poll_next); something must be under way.
    fn next(&mut self) -> impl std::future::Future<Output = Progress> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }
}

/// Takes into the sending loop's writes the messages the sending threads wrote (in the
/// order they were written: their streams', and their places among the ordered messages);
/// true if one was only begun (its write is now among `writing`).
fn adopt(
    written: &mut Vec<DirectWritten>,
    order: &mut AckOrder<(Item, quinn::StreamId)>,
    awaited: &mut Awaited<AwaitedWrite>,
    writing: &mut FuturesUnordered<WriteFut>,
    links: &Links,
) -> bool {
    let mut begun = false;
    for DirectWritten { stream, item, skip } in written.drain(..) {
        let n = order.start();
        match skip {
            None => {
                let counted = item.data.len();
                let w = AwaitedWrite {
                    item,
                    order: n,
                    counted,
                };
                awaited.push(stream, w);
            }
            Some(skip) => {
                let shared = links.shared(None, Some(n));
                writing.push(Box::pin(write_message(stream, item, skip, None, shared)));
                begun = true;
            }
        }
    }
    begun
}

impl Writes {
    fn new(
        conn: quinn::Connection,
        halt: watch::Receiver<bool>,
        outbox: Arc<Outbox>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        let handshake_rtt = conn.rtt();
        let cap = StreamCap::new(handshake_rtt);
        outbox.set_message_limit(cap.limit());
        Writes {
            ends: Ends {
                writing: FuturesUnordered::new(),
                awaited: Awaited::new(&conn),
                answered: Vec::new(),
                order: AckOrder::default(),
                direct: Arc::default(),
                links: Links {
                    outbox,
                    in_flight,
                    halt: Flag::new(&halt),
                },
            },
            handed: Vec::new(),
            halted: KeptWait::flag(&halt),
            halt,
            woken: false,
            cap,
        }
    }

    /// Whether another message may go within the stream limit.
    fn below_cap(&self) -> bool {
        self.ends.len() < self.cap.limit()
    }

    /// The carrier halted: every write is polled again (each sees the flag), and the
    /// messages awaiting acknowledgement and the acknowledged ones held for an earlier one
    /// go back (the peer's receipts decide).
    fn wake_all(&mut self) {
        self.woken = true;
        self.ends.adopt_now();
        for write in std::mem::take(&mut self.ends.writing) {
            self.ends.writing.push(write);
        }
        self.settle_answered();
        for (stream, w) in self.ends.awaited.take_all() {
            self.hand_back_written(stream, w);
        }
        for (item, stream) in self.ends.order.halt() {
            self.handed
                .extend(hand_back(item, stream, &self.ends.links.outbox));
        }
    }

    fn push(&mut self, write: impl std::future::Future<Output = WriteEnd> + Send + 'static) {
        self.ends.writing.push(Box::pin(write));
    }

    /// Takes what [`Ends::next`] found.
    fn progress(&mut self, p: Progress) {
        match p {
            Progress::Ended(end) => self.ended(end),
            Progress::Answered => self.settle_answered(),
        }
    }

    /// Settles the messages whose acknowledgement (or failure) `Awaited` answered.
    fn settle_answered(&mut self) {
        let mut answered = std::mem::take(&mut self.ends.answered);
        for (stream, w, answer) in answered.drain(..) {
            self.settle(stream, w, answer);
        }
        self.ends.answered = answered;
    }

    /// Settles a written message as `stopped()` answered, as a write that awaits its own
    /// acknowledgement ends (`write_message`).
    fn settle(&mut self, stream: quinn::SendStream, w: AwaitedWrite, answer: Stopped) {
        if matches!(answer, Ok(None)) && !self.halted.is_set() {
            // Acknowledged: what `conclude` and `ended` do with it, without the `WriteEnd`
            // handed between them.
            let AwaitedWrite {
                mut item,
                order,
                counted,
            } = w;
            item.release_permit();
            self.ends.links.in_flight.sub(counted);
            self.completed();
            self.acked(order, item, stream.id());
            return;
        }
        let (outbox, in_flight) = (&self.ends.links.outbox, &self.ends.links.in_flight);
        let status = Some(status_of(answer));
        let end = conclude(
            stream,
            w.item,
            w.counted,
            Some(w.order),
            status,
            outbox,
            in_flight,
        );
        self.ended(end);
    }

    /// Takes what a finished write left: a message handed back, or (an ordered message)
    /// its place in the order, which may let acknowledged ones after it be reported; or a
    /// written message, whose acknowledgement is awaited from now on.
    fn ended(&mut self, end: WriteEnd) {
        match end {
            WriteEnd::Written { stream, w } => self.written(stream, w),
            WriteEnd::Done { order, handback } => {
                self.completed();
                self.handed.extend(handback);
                if let Some(n) = order {
                    self.ends.order.ended(n);
                }
                self.release_acked();
            }
            WriteEnd::Acked {
                order,
                item,
                stream,
            } => {
                self.completed();
                if self.halted.is_set() {
                    // Halted before it could be reported: the peer's receipts decide.
                    self.handed
                        .extend(hand_back(item, stream, &self.ends.links.outbox));
                    self.ends.order.ended(order);
                    self.release_acked();
                } else {
                    self.acked(order, item, stream);
                }
            }
        }
    }

    /// A message written whole: its acknowledgement is awaited with the others' ([`Awaited`]);
    /// halted meanwhile, it goes back.
    fn written(&mut self, stream: quinn::SendStream, w: AwaitedWrite) {
        if self.halted.is_set() {
            self.hand_back_written(stream, w);
        } else {
            self.ends.awaited.push(stream, w);
        }
    }

    /// A written message not yet acknowledged when the carrier halted: the peer's receipts
    /// decide whether it goes again.
    fn hand_back_written(&mut self, stream: quinn::SendStream, w: AwaitedWrite) {
        self.ends.links.in_flight.sub(w.counted);
        self.handed
            .extend(hand_back(w.item, stream.id(), &self.ends.links.outbox));
        self.ends.order.ended(w.order);
    }

    /// A message's write ended: the stream limit counts it.
    fn completed(&mut self) {
        let before = self.cap.limit();
        self.cap.completed();
        if self.cap.limit() != before {
            self.ends.links.outbox.set_message_limit(self.cap.limit());
        }
    }

    /// An ordered message the peer acknowledged: reported at once when no earlier write
    /// holds it back (the usual case, one write in flight), else held until they end; and
    /// whatever it held back goes with it.
    fn acked(&mut self, order: u64, item: Item, stream: quinn::StreamId) {
        if self.ends.order.is_front(order) {
            self.ends.order.pass_front();
            let outbox = &self.ends.links.outbox;
            outbox.update(item.id, SendStatus::Acked, true);
        } else {
            self.ends.order.acked(order, (item, stream));
        }
        self.release_acked();
    }

    /// Reports the acknowledged ordered messages no earlier write holds back.
    fn release_acked(&mut self) {
        let outbox = &self.ends.links.outbox;
        self.ends
            .order
            .release(|(item, _)| outbox.update(item.id, SendStatus::Acked, true));
    }

    /// Runs `f` to its end, driving the writes meanwhile (`f` first: it is what the loop
    /// waits for).
    ///
    /// Once acknowledgements are settled it looks at `f` once more and waits: every other
    /// waker is already where it must be (the halt flag's was polled just before, the
    /// writes' too, and the connection's by the look for acknowledgements, which leaves it
    /// whatever it finds), and settling starts no write. A `select!` here looked at the
    /// flag and for acknowledgements once more after each (two locks of the connection's
    /// state and one of the sending threads' writes, per acknowledgement of an echo).
    async fn drive<F: std::future::Future>(&mut self, f: F) -> F::Output {
        use std::future::Future;
        use std::task::Poll;
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| loop {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if !self.woken && std::pin::pin!(self.halted.ready()).poll(cx).is_ready() {
                self.wake_all();
                continue;
            }
            match self.ends.poll_next(cx) {
                Poll::Ready(Progress::Answered) => {
                    self.settle_answered();
                    return f.as_mut().poll(cx);
                }
                Poll::Ready(p) => self.progress(p),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Drives the writes as far as they go without waiting (a new message's first write
    /// reaches quinn at once), and settles what has been acknowledged.
    ///
    /// Without the task's waker: `FuturesUnordered`, having polled every write it holds
    /// (with one in flight, the new one) and seen none end, wakes its caller to yield, and
    /// with the task's own waker that was one more poll of the whole sending loop per
    /// message (a third of its polls in an echo). Nothing is missed: a write woken meanwhile
    /// waits in the set's ready queue, an acknowledgement is answered to whoever polls
    /// next, and the loop polls both with its own waker ([`drive`](Self::drive),
    /// [`finish`](Self::finish)) before it waits for anything.
    fn poll_now(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while let std::task::Poll::Ready(p) = self.ends.poll_next(&mut cx) {
            self.progress(p);
        }
    }

    /// Waits for one write to end or acknowledgement to be answered, or for the carrier
    /// to halt (true; every write is then polled again). Some write must be under way.
    async fn next_end(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.halted.ready(), if !self.woken => {
                self.wake_all();
                true
            }
            p = self.ends.next() => {
                self.progress(p);
                false
            }
        }
    }

    /// Drives every write to its end, and settles every message (those the sending threads
    /// wrote too: nothing more is written past the loop, `Outbox::end_direct`).
    async fn finish(&mut self) {
        self.ends.adopt_now();
        while !self.ends.is_empty() {
            self.next_end().await;
        }
    }
}

/// Hands outbox items to quinn: one stream (or datagram) per message.
struct Dispatcher {
    conn: quinn::Connection,
    outbox: Arc<Outbox>,
    in_flight: Arc<InFlight>,
    writes: Writes,
    open: BTreeMap<MessageId, mpsc::UnboundedSender<Item>>,
    min_rtt: Duration,
    /// The RTT [`window_now`](Self::window_now) read with the window, for the message a
    /// burst dispatches right after (no wait between): one lock of the connection per
    /// message, not two.
    rtt_now: std::cell::Cell<Option<Duration>>,
    /// While in 0-RTT: becomes true if the server rejects the early data.
    early: Option<watch::Receiver<bool>>,
    /// Whole messages sent in 0-RTT, in order, to send again if it is rejected.
    early_sent: Vec<Item>,
    /// The writer of the messages a sending thread writes itself while the loop waits.
    direct: Arc<dyn Direct>,
}

impl Dispatcher {
    fn new(conn: quinn::Connection, outbox: Arc<Outbox>, halt: watch::Receiver<bool>) -> Self {
        let min_rtt = conn.rtt();
        let in_flight = Arc::new(InFlight::default());
        let writes = Writes::new(conn.clone(), halt, outbox.clone(), in_flight.clone());
        let direct = Arc::new(DirectWriter {
            conn: conn.clone(),
            in_flight: in_flight.clone(),
            halt: writes.ends.links.halt.clone(),
            written: writes.ends.direct.clone(),
        });
        Dispatcher {
            direct,
            conn,
            outbox,
            in_flight,
            writes,
            open: BTreeMap::new(),
            min_rtt,
            rtt_now: std::cell::Cell::new(None),
            early: None,
            early_sent: Vec::new(),
        }
    }

    /// Whether the carrier halted (read once or twice per message: one load while the flag
    /// is unchanged, where a look at the watch took its lock).
    fn halted(&self) -> bool {
        self.writes.halted.is_set()
    }

    /// The window the bytes in flight must stay below, read now; `None` while less than
    /// [`MIN_IN_FLIGHT`] is in flight (there is room whatever the window).
    fn window_now(&self) -> Option<usize> {
        if self.in_flight.bytes.load(Ordering::Relaxed) < MIN_IN_FLIGHT {
            return None;
        }
        let path = self.conn.stats().path;
        self.rtt_now.set(Some(path.rtt));
        Some((path.cwnd as usize).max(MIN_IN_FLIGHT))
    }

    /// Whether [`room`](Self::room) would return at once, and the carrier has not halted.
    fn room_now(&mut self) -> bool {
        self.rtt_now.set(None);
        // The stream limit first: at it, the connection's stats need not be read.
        if !self.writes.below_cap() {
            self.writes.cap.held();
            return false;
        }
        let room = self
            .window_now()
            .is_none_or(|w| self.in_flight.bytes.load(Ordering::Relaxed) < w);
        room && !self.halted()
    }

    /// Waits until the bytes in flight are below the congestion window. The window is read
    /// again every few ms while waiting: it can open without anything being settled (a
    /// handover restarts congestion control on the new path).
    async fn room(&mut self) {
        self.writes.poll_now();
        // Within the stream limit first: only a completion makes room there.
        while !self.writes.below_cap() {
            self.writes.cap.held();
            if self.writes.next_end().await {
                return;
            }
        }
        loop {
            let Some(window) = self.window_now() else {
                return;
            };
            if self.in_flight.bytes.load(Ordering::Relaxed) >= window {
                self.writes.cap.limited_elsewhere();
            }
            let in_flight = &self.in_flight;
            let below = self
                .writes
                .drive(async {
                    tokio::select! {
                        biased;
                        _ = in_flight.below(window) => true,
                        _ = tokio::time::sleep(WINDOW_RECHECK) => false,
                    }
                })
                .await;
            if below {
                return;
            }
        }
    }

    /// Hands `item` to quinn; `rtt_now`: the RTT read just before, with nothing run since.
    async fn dispatch(&mut self, item: Item, rtt_now: Option<Duration>) -> Result<()> {
        // The messages the sending threads wrote went before this one.
        self.writes.ends.adopt_now();
        let srtt = rtt_now.unwrap_or_else(|| self.conn.rtt());
        self.min_rtt = self.min_rtt.min(srtt);
        self.writes.cap.rtt(srtt);
        self.outbox.set_rtt(srtt, self.min_rtt);
        let len = item.data.len();
        if let Some(tx) = self.open.get(&item.id) {
            let (id, fin) = (item.id, item.fin);
            self.in_flight.add(len);
            if tx.send(item).is_err() {
                self.in_flight.sub(len);
            }
            if fin {
                self.open.remove(&id);
            }
            return Ok(());
        }
        if item.abort {
            return Ok(());
        }
        if !item.props.reliable {
            let status = match self.conn.send_datagram(item.data.clone()) {
                Ok(()) => SendStatus::Sent,
                Err(e) => SendStatus::Failed(format!("datagram: {e}")),
            };
            self.outbox.update(item.id, status, true);
            return Ok(());
        }
        let opened = {
            let mut open = std::pin::pin!(open_stream(&self.conn, &item.props));
            // Usually the peer's stream credit allows it at once: no wait set up, no select.
            match ready_now(open.as_mut()).await {
                Some(opened) => Some(opened),
                None => {
                    // The peer's stream credit holds it back: a stream limit too.
                    self.writes.cap.held();
                    let mut halt = self.writes.halt.clone();
                    self.writes
                        .drive(async {
                            tokio::select! {
                                biased;
                                opened = &mut open => Some(opened),
                                _ = until_set(&mut halt) => None,
                            }
                        })
                        .await
                }
            }
        };
        let Some(opened) = opened else {
            // Taken but never sent: it goes again after the move.
            self.writes.handed.push(Handback { stream: None, item });
            return Ok(());
        };
        let stream = opened.map_err(|e| ConnectionError::Quic(e.to_string()))?;
        let rest = if item.fin {
            None
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            self.open.insert(item.id, tx);
            Some(rx)
        };
        self.in_flight.add(len);
        if self.early.is_some() && item.fin && item.offset == 0 {
            self.early_sent.push(item.copy_for_resend());
        }
        let order = item.props.ordered.then(|| self.writes.ends.order.start());
        // A whole ordered message without a lifetime, not in 0-RTT, is usually written at
        // once: then no future of its own (`write_message` would end the same way).
        let mut stream = stream;
        let mut skip = 0;
        if let (Some(n), true) = (order, self.early.is_none() && rest.is_none()) {
            if item.deadline.is_none() && !self.halted() {
                match write_now(&mut stream, &item.data) {
                    Ok(()) => {
                        self.outbox.update(item.id, SendStatus::Sent, false);
                        let w = AwaitedWrite {
                            item,
                            order: n,
                            counted: len,
                        };
                        self.writes.written(stream, w);
                        self.writes.poll_now();
                        return Ok(());
                    }
                    // Not all of it (or an error to report): the rest as any other.
                    Err(done) => skip = done,
                }
            }
        }
        self.writes.push(write_message(
            stream,
            item,
            skip,
            rest,
            self.writes.ends.links.shared(self.early.clone(), order),
        ));
        self.writes.poll_now();
        Ok(())
    }
}

/// A message a sending thread wrote itself ([`DirectWriter`]): its stream, and how much of
/// it went (`None`: all, and the stream is finished).
struct DirectWritten {
    stream: quinn::SendStream,
    item: Item,
    skip: Option<usize>,
}

/// The sending loop's write of a lone message, made by the thread that sends it while the
/// loop waits with nothing to do (`outbox::Direct`): the message opens its stream and is
/// written and finished there, as `dispatch` would have, and the loop takes it into its
/// writes the next time it is polled (for an acknowledgement, usually). On an echo that is
/// one poll of the loop a message fewer.
///
/// It writes only what the loop would write at once: nothing while the carrier halts, and
/// only while less than [`MIN_IN_FLIGHT`] is in flight (where `room` looks at no window)
/// and the message is no longer than that; a burst goes through the loop, as before, once
/// that much is in flight. What the peer's stream credit does not allow now goes through
/// the loop too.
struct DirectWriter {
    conn: quinn::Connection,
    in_flight: Arc<InFlight>,
    halt: Flag,
    /// Written and not yet taken by the loop ([`Ends::direct`]); locked while a message is
    /// written, so that the loop, which takes them and then looks for acknowledgements
    /// under this lock, knows every stream the connection reports ended.
    written: Arc<std::sync::Mutex<Vec<DirectWritten>>>,
}

impl Direct for DirectWriter {
    fn write(&self, item: Item) -> DirectWrite {
        let len = item.data.len();
        if len > MIN_IN_FLIGHT || self.in_flight.bytes.load(Ordering::Relaxed) >= MIN_IN_FLIGHT {
            return DirectWrite::Refused(item);
        }
        let mut written = crate::util::lock(&self.written);
        // Under the lock: a halt after this finds the message with the loop (`wake_all`).
        if self.halt.get().unwrap_or(true) {
            return DirectWrite::Refused(item);
        }
        let mut stream = {
            let open = std::pin::pin!(self.conn.open_uni());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::future::Future::poll(open, &mut cx) {
                std::task::Poll::Ready(Ok(stream)) => stream,
                _ => return DirectWrite::Refused(item),
            }
        };
        self.in_flight.add(len);
        let skip = write_now(&mut stream, &item.data).err();
        written.push(DirectWritten { stream, item, skip });
        match skip {
            None => DirectWrite::Written,
            Some(_) => DirectWrite::Begun,
        }
    }
}

/// Opens the stream a message travels on: unidirectional if ordered, bidirectional if not
/// (with its niceness as priority: ordered streams are read in stream order, which is
/// already the order niceness chose, so a priority would only starve earlier streams).
async fn open_stream(
    conn: &quinn::Connection,
    props: &MessageProperties,
) -> Result<quinn::SendStream, quinn::ConnectionError> {
    if props.ordered {
        conn.open_uni().await
    } else {
        let (send, _recv) = conn.open_bi().await?;
        let priority = -(i32::try_from(props.niceness).unwrap_or(i32::MAX));
        let _ = send.set_priority(priority);
        Ok(send)
    }
}

/// The sending loop of a QUIC transient: takes items from the outbox while the bytes in flight
/// stay below the congestion window (so niceness keeps deciding the order of a backlog, and
/// lifetimes are judged close to the wire), opens one stream per message, sends unreliable
/// messages as DATAGRAM frames. On a 0-RTT connection, until the handshake completes, only
/// idempotent messages go (in 0-RTT data); `resumed` then learns whether the server took them.
///
/// When `halt` becomes true (the carrier moves to TLS/TCP) it stops taking items and returns
/// every whole message it took and did not see acknowledged.
pub(crate) async fn send_loop(
    conn: quinn::Connection,
    outbox: Arc<Outbox>,
    zero_rtt: Option<quinn::ZeroRttAccepted>,
    resumed: Arc<std::sync::OnceLock<bool>>,
    halt: watch::Receiver<bool>,
) -> (Result<()>, Vec<Handback>) {
    let mut d = Dispatcher::new(conn, outbox.clone(), halt.clone());
    let mut halted = KeptWait::flag(&halt);
    let result: Result<()> = async {
        if let Some(accepted) = zero_rtt {
            tokio::pin!(accepted);
            let (rejected_tx, rejected_rx) = watch::channel(false);
            d.early = Some(rejected_rx);
            loop {
                d.room().await;
                let next = d
                    .writes
                    .drive(async {
                        tokio::select! {
                            biased;
                            ok = &mut accepted => Err(ok),
                            item = outbox.next_where(usize::MAX, |p| p.idempotent) => Ok(item),
                        }
                    })
                    .await;
                let ok = match next {
                    Ok(Some(item)) => {
                        d.dispatch(item, None).await?;
                        continue;
                    }
                    Err(ok) => ok,
                    // Closed with nothing idempotent left: wait for the handshake before the
                    // rest (if any) may go.
                    Ok(None) => d.writes.drive(&mut accepted).await,
                };
                let _ = resumed.set(ok);
                let _ = rejected_tx.send(!ok);
                break;
            }
            d.early = None;
            let resend = std::mem::take(&mut d.early_sent);
            if resumed.get() == Some(&false) {
                // The server discarded the 0-RTT data: send those messages again, first and
                // in their order, now that the handshake is done.
                for item in resend {
                    d.dispatch(item, None).await?;
                }
            }
        }
        // The halt flag is read before each step and waited on (one waiter, kept from step
        // to step) only while the step waits.
        let direct = d.direct.clone();
        loop {
            if d.halted() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = d.room() => {}
                _ = halted.ready() => return Ok(()),
            }
            if d.halted() {
                return Ok(());
            }
            let item = d
                .writes
                .drive(async {
                    tokio::select! {
                        biased;
                        item = outbox.next_or_direct(usize::MAX, &direct) => item,
                        _ = halted.ready() => None,
                    }
                })
                .await;
            let Some(item) = item else {
                return Ok(());
            };
            d.dispatch(item, None).await?;
            // What else is ready goes at once while the window has room, by the rule `room`
            // applies: no wait on the outbox and no select per message of a burst.
            while d.room_now() {
                let Some(item) = outbox.try_next_where(usize::MAX, |_| true) else {
                    d.writes.cap.limited_elsewhere();
                    break;
                };
                let rtt = d.rtt_now.take();
                d.dispatch(item, rtt).await?;
            }
        }
    }
    .await;
    if let Err(e) = &result {
        if !d.halted() {
            outbox.fail_all(&e.to_string());
        }
    }
    outbox.end_direct();
    d.open.clear();
    d.writes.finish().await;
    (result, d.writes.handed)
}

/// The carrier moves: a whole message goes back to the send loop (the peer's receipts decide
/// whether it is sent again); a partial one fails, its parts cannot be taken back.
fn hand_back(item: Item, stream: quinn::StreamId, outbox: &Outbox) -> Option<Handback> {
    if item.fin && item.offset == 0 {
        return Some(Handback {
            stream: Some(stream),
            item,
        });
    }
    let why = "the carrier moved from QUIC in the middle of this partial message";
    outbox.update(item.id, SendStatus::Failed(why.into()), true);
    None
}

/// What every message's writing task shares.
struct Shared {
    outbox: Arc<Outbox>,
    in_flight: Arc<InFlight>,
    early: Option<watch::Receiver<bool>>,
    halt: Flag,
    /// An ordered message's place among the ordered messages' writes ([`AckOrder`]).
    order: Option<u64>,
}

/// How a message's write ended.
enum WriteEnd {
    /// Its status is set, or it was handed back; `order` is an ordered message's place.
    Done {
        order: Option<u64>,
        handback: Option<Handback>,
    },
    /// An ordered message the peer acknowledged: reported acked once every ordered message
    /// before it has ended ([`AckOrder`]).
    Acked {
        order: u64,
        item: Item,
        stream: quinn::StreamId,
    },
    /// An ordered message written whole (no lifetime, not in 0-RTT): the sending loop
    /// awaits its acknowledgement ([`Awaited`]) and settles it as the write would have.
    Written {
        stream: quinn::SendStream,
        w: AwaitedWrite,
    },
}

impl WriteEnd {
    fn done(order: Option<u64>, handback: Option<Handback>) -> Self {
        WriteEnd::Done { order, handback }
    }
}

/// The writes of ordered messages, numbered in the order they were dispatched. An ordered
/// message is reported acked only once the write of every ordered message before it has
/// ended: the peer delivers it only after those (so a dependent waiting for its
/// acknowledgement is not delivered first), and a move must find every message reported
/// acked delivered (transport::moving).
///
/// The sending loop keeps this, and a write that is acknowledged ahead of an earlier one
/// leaves its message here and ends. (Each write used to wait for the one before it to
/// end: quinn reports a burst's acknowledgements newest first, so nearly every write of a
/// burst of small messages was polled once more, after the one before it.)
struct AckOrder<T> {
    /// The number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot<T>>,
}

enum Slot<T> {
    Writing,
    Ended,
    Acked(T),
}

impl<T> Default for AckOrder<T> {
    fn default() -> Self {
        AckOrder {
            base: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> AckOrder<T> {
    /// A new write's number.
    fn start(&mut self) -> u64 {
        self.slots.push_back(Slot::Writing);
        self.base + self.slots.len() as u64 - 1
    }

    fn slot(&mut self, n: u64) -> Option<&mut Slot<T>> {
        let i = usize::try_from(n.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    /// Whether write `n` is the oldest not yet reported (nothing before it holds it back).
    fn is_front(&self, n: u64) -> bool {
        n == self.base && !self.slots.is_empty()
    }

    /// The oldest write is reported by its caller: it is forgotten.
    fn pass_front(&mut self) {
        if self.slots.pop_front().is_some() {
            self.base += 1;
        }
    }

    /// Write `n` ended (its message settled, or handed back).
    fn ended(&mut self, n: u64) {
        if let Some(slot) = self.slot(n) {
            *slot = Slot::Ended;
        }
    }

    /// Write `n`'s message was acknowledged: held until the writes before it have ended.
    fn acked(&mut self, n: u64, message: T) {
        if let Some(slot) = self.slot(n) {
            *slot = Slot::Acked(message);
        }
    }

    /// Gives `report` each acknowledged message every earlier write of which has ended, in
    /// order, and forgets them.
    fn release(&mut self, mut report: impl FnMut(T)) {
        while let Some(front) = self.slots.front() {
            if matches!(front, Slot::Writing) {
                break;
            }
            if let Some(Slot::Acked(message)) = self.slots.pop_front() {
                report(message);
            }
            self.base += 1;
        }
    }

    /// The carrier halted: the acknowledged messages still held, to be handed back (their
    /// writes count as ended).
    fn halt(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for slot in self.slots.iter_mut() {
            match std::mem::replace(slot, Slot::Ended) {
                Slot::Acked(message) => out.push(message),
                other => *slot = other,
            }
        }
        out
    }
}

/// Sleeps until `deadline`; for ever without one. The timer is boxed: it is over 100 bytes,
/// most messages have no lifetime, and an inline one
/// would size every message's write future (976 bytes with it, 872 without), which stays
/// alive until the peer acknowledges the message: thousands at once under a backlog.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
        None => std::future::pending().await,
    }
}

/// Writes all of `data` to `stream` and finishes it, if quinn takes it without waiting;
/// otherwise how many bytes of it were written.
fn write_now(stream: &mut quinn::SendStream, data: &Bytes) -> std::result::Result<(), usize> {
    let mut bufs = [data.clone()];
    let written = {
        let write = stream.write_all_chunks(&mut bufs);
        let write = std::pin::pin!(write);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::future::Future::poll(write, &mut cx)
    };
    let done = data.len() - bufs[0].len();
    match written {
        std::task::Poll::Ready(Ok(())) if stream.finish().is_ok() => Ok(()),
        _ => Err(done),
    }
}

/// Finishes `stream`: `Ok(false)` if the handshake rejected its 0-RTT data. quinn's `finish`
/// calls a rejected 0-RTT stream closed (its `write` and `stopped` say rejected); on a
/// runtime of several workers the connection's driver can take the handshake's answer on
/// another thread between a write and the finish after it, and the message must then go
/// again, not fail "closed stream".
fn finish_or_rejected(stream: &mut quinn::SendStream) -> std::result::Result<bool, String> {
    let Err(closed) = stream.finish() else {
        return Ok(true);
    };
    // `stopped` answers a rejected 0-RTT stream at once, without waiting.
    match answer_now(stream) {
        Some(Err(quinn::StoppedError::ZeroRttRejected)) => Ok(false),
        _ => Err(closed.to_string()),
    }
}

/// Writes one message to its stream (parts as they come; the first `skip` bytes of `first`
/// are already written), then waits for the peer's acknowledgement; resets the stream if
/// the message's lifetime ends first. If the carrier moves first, a whole message is
/// handed back (the peer's receipts decide whether it goes again) and a partial one fails.
async fn write_message(
    mut stream: quinn::SendStream,
    first: Item,
    skip: usize,
    mut rest: Option<mpsc::UnboundedReceiver<Item>>,
    shared: Shared,
) -> WriteEnd {
    let Shared {
        outbox,
        in_flight,
        early,
        halt,
        order,
    } = shared;
    let id = first.id;
    let deadline = first
        .deadline
        .map(|d| d.checked_sub(outbox.one_way()).unwrap_or(d));
    let mut counted = first.data.len();
    // An ordered message without a lifetime, not in 0-RTT: once written, the sending loop
    // awaits its acknowledgement with the others' (no `stopped()` future of its own).
    let awaited = deadline.is_none() && early.is_none() && order.is_some();
    let outcome = tokio::select! {
        biased;
        // First: once halted, the peer's receipts decide, even if the ack came just now.
        _ = set_now(&halt) => {
            in_flight.sub(counted);
            return WriteEnd::done(order, hand_back(first, stream.id(), &outbox));
        }
        done = async {
            // Rejected 0-RTT: the send loop sends the message again, in order.
            if skip == 0 || skip < first.data.len() {
                match stream.write_chunk(first.data.slice(skip..)).await {
                    Err(quinn::WriteError::ZeroRttRejected) => return Ok(None),
                    other => other.map_err(|e| e.to_string())?,
                }
            }
            let mut fin = first.fin;
            while !fin {
                let Some(rx) = rest.as_mut() else { break };
                let Some(next) = rx.recv().await else {
                    return Err("message abandoned before its end".to_string());
                };
                counted += next.data.len();
                if next.abort {
                    return Err("message abandoned".to_string());
                }
                match stream.write_chunk(next.data.clone()).await {
                    Err(quinn::WriteError::ZeroRttRejected) => return Ok(None),
                    other => other.map_err(|e| e.to_string())?,
                }
                fin = next.fin;
            }
            if !finish_or_rejected(&mut stream)? {
                return Ok(None);
            }
            outbox.update(id, SendStatus::Sent, false);
            if awaited {
                return Ok(Some(SendStatus::Sent));
            }
            // Sent in 0-RTT: learn of a rejection as soon as the handshake tells.
            let stopped = match early {
                Some(mut rejected) => {
                    let stopped = tokio::select! {
                        biased;
                        r = stream.stopped() => r,
                        Ok(_) = rejected.wait_for(|r| *r) => Err(quinn::StoppedError::ZeroRttRejected),
                    };
                    // The peer's acknowledgement of 0-RTT data can be seen before the send
                    // loop has taken the handshake's outcome: the message is reported acked
                    // only once `Carrier::resumed` and `early_data` know it (the send loop
                    // answers here right after setting them, and lets go of the sender soon
                    // after: either ends this wait).
                    if matches!(stopped, Ok(None)) {
                        let _ = rejected.changed().await;
                    }
                    stopped
                }
                None => stream.stopped().await,
            };
            match stopped {
                Err(quinn::StoppedError::ZeroRttRejected) => Ok(None),
                other => Ok(Some(status_of(other))),
            }
        } => done.unwrap_or_else(|e| Some(SendStatus::Failed(e))),
        _ = sleep_until(deadline) => Some(SendStatus::Expired),
    };
    if let Some(rx) = rest.as_mut() {
        rx.close();
        while let Ok(item) = rx.try_recv() {
            counted += item.data.len();
        }
    }
    conclude(stream, first, counted, order, outcome, &outbox, &in_flight)
}

/// A message's status from `stopped()`'s answer for its stream.
fn status_of(answer: Stopped) -> SendStatus {
    match answer {
        Ok(None) => SendStatus::Acked,
        Ok(Some(code)) => SendStatus::Failed(format!("the peer stopped reading it (code {code})")),
        Err(e) => SendStatus::Failed(e.to_string()),
    }
}

/// How a message's write ends with `outcome` (`None`: handed back after a rejected 0-RTT),
/// `counted` its bytes in flight and `order` an ordered message's place ([`AckOrder`]):
/// an ordered message written whole awaits its acknowledgement in the sending loop
/// ([`Awaited`]); one acknowledged is reported in order by the loop, its bytes and buffer
/// space free at once; any other has its status set here.
fn conclude(
    mut stream: quinn::SendStream,
    mut item: Item,
    counted: usize,
    order: Option<u64>,
    outcome: Option<SendStatus>,
    outbox: &Outbox,
    in_flight: &InFlight,
) -> WriteEnd {
    match (outcome, order) {
        (Some(SendStatus::Sent), Some(order)) => {
            let w = AwaitedWrite {
                item,
                order,
                counted,
            };
            WriteEnd::Written { stream, w }
        }
        (Some(SendStatus::Acked), Some(order)) => {
            item.release_permit();
            in_flight.sub(counted);
            WriteEnd::Acked {
                order,
                item,
                stream: stream.id(),
            }
        }
        (outcome, order) => {
            if outcome != Some(SendStatus::Acked) {
                let _ = stream.reset(0u32.into());
            }
            match outcome {
                Some(outcome) => outbox.update(item.id, outcome, true),
                // Handed back: the send loop re-sends it after the rejected 0-RTT.
                None if item.fin && item.offset == 0 => {}
                None => outbox.update(
                    item.id,
                    SendStatus::Failed("0-RTT rejected in the middle of a partial message".into()),
                    true,
                ),
            }
            drop(item);
            in_flight.sub(counted);
            WriteEnd::done(order, None)
        }
    }
}

/// What a QUIC transient's reader needs.
pub(crate) struct Reader {
    pub(crate) events: EventTx,
    pub(crate) limits: ReceiveLimits,
    /// The dormant timeout and the keepalive interval.
    pub(crate) timers: (Duration, Option<Duration>),
    pub(crate) goodbye: Arc<Goodbye>,
}

/// Starts the tasks of a QUIC transient: the sending loop and the reader.
/// The sending task ends with the sending loop, or, if the carrier moved to TLS/TCP, once
/// our direction ends there.
pub(crate) fn start(
    conn: quinn::Connection,
    zero_rtt: Option<quinn::ZeroRttAccepted>,
    resumed: Arc<std::sync::OnceLock<bool>>,
    reader: Reader,
    mv: Arc<QuicMove>,
) -> (JoinHandle<Result<()>>, JoinHandle<()>) {
    let outbox = mv.outbox();
    let halt = mv.halted();
    let mover = mv.clone();
    let sender = tokio::spawn(async move {
        let (result, handed) = send_loop(conn.clone(), outbox, zero_rtt, resumed, halt).await;
        if mover.sender_ended(handed) {
            return mover.after_move().await;
        }
        result
    });
    let reader = tokio::spawn(read_loop(mv.conn(), reader, mv));
    (sender, reader)
}

/// How reading one message ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// Delivered, or nothing to deliver (reset, refused): read the next one.
    Next,
    /// Draining for a move, the stream was not whole: the sender sends it again over TLS/TCP.
    NotWhole,
    /// The application has gone (the event channel closed).
    Gone,
}

/// Waits until the flag is set (or its sender is gone).
async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

/// Ready if the flag is set (or its sender gone) when polled, as [`until_set`] would be;
/// registers no waiter, so whoever polls it must poll again once the flag is set (for the
/// writes: [`Writes::wake_all`]). Polled at each poll of every write: one load while the
/// flag is unchanged (the watch's read lock was two atomic updates per poll).
fn set_now(flag: &Flag) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if flag.get().unwrap_or(true) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}

/// Polls `f` once: its output if it is ready now.
async fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Reads one message from a stream and delivers it (whole or in parts). When the carrier
/// starts to move (`drain`), it reads on only what QUIC already holds: a stream that is not
/// whole then is abandoned (what was delivered of it gets a receive error), its sender sends
/// it again over TLS/TCP.
async fn read_message(
    mut stream: quinn::RecvStream,
    events: &EventTx,
    limits: &ReceiveLimits,
    (receipts, drain): (&Receipts, &mut KeptWait<bool>),
    goodbye: Option<(&Goodbye, &quinn::Connection)>,
    out: &mut Vec<Event>,
) -> ReadEnd {
    let id = u64::from(stream.id());
    out.clear();
    let mut assembly = Assembly::new(id, true);
    // Several chunks a read, under one lock of the connection: the read that takes a
    // message's last bytes also learns that the stream ended, and the next answers so at
    // once, without the lock (one lock of the connection a message fewer than `read_chunk`,
    // which learns of the end only at the next read).
    let mut chunks: [Bytes; 4] = Default::default();
    // A first piece not yet given to `assembly` (see below).
    let mut alone: Option<Bytes> = None;
    let abandon = |partly: bool| async move {
        if !partly {
            return ReadEnd::NotWhole;
        }
        let error = Error::from(ConnectionError::Abandoned { id });
        match events.send(Event::ReceiveError { id, error }).await {
            Ok(()) => ReadEnd::NotWhole,
            Err(()) => ReadEnd::Gone,
        }
    };
    loop {
        let read = if drain.is_set() {
            match ready_now(stream.read_chunks(&mut chunks)).await {
                Some(read) => read,
                None => return abandon(assembly.partly_delivered()).await,
            }
        } else {
            tokio::select! {
                biased;
                read = stream.read_chunks(&mut chunks) => read,
                _ = drain.ready() => continue,
            }
        };
        let (n, end) = match read {
            Ok(Some(n)) => (n, false),
            Ok(None) => (0, true),
            Err(quinn::ReadError::Reset(code))
                if code == GOODBYE.into() && assembly.is_empty() && alone.is_none() =>
            {
                if let Some((goodbye, conn)) = goodbye {
                    goodbye.hear(conn).await;
                }
                return ReadEnd::Next;
            }
            Err(quinn::ReadError::Reset(_)) => {
                // The sender abandoned it (expired or aborted). Nothing was promised unless
                // part of it was already delivered.
                if assembly.partly_delivered() {
                    let error = Error::from(ConnectionError::Abandoned { id });
                    if events
                        .send(Event::ReceiveError { id, error })
                        .await
                        .is_err()
                    {
                        return ReadEnd::Gone;
                    }
                }
                return ReadEnd::Next;
            }
            // The connection ended; the reader loop reports why.
            Err(_) if receipts.frozen() || drain.is_set() => {
                return abandon(assembly.partly_delivered()).await
            }
            Err(_) => return ReadEnd::Next,
        };
        if !end && n == 1 && alone.is_none() && assembly.is_empty() && limits.whole_only() {
            // A first piece, held for one more read: if the stream ends with it, it is the
            // whole message (the usual small one), handed over as it is without passing
            // through the reassembly (`Assembly::push_alone`). Nothing of it is delivered
            // before its end either way (whole messages only), so a move that freezes the
            // receipts meanwhile abandons it as it would have the reassembly.
            alone = Some(std::mem::take(&mut chunks[0]));
            continue;
        }
        let pushed = match alone.take() {
            Some(data) if end => Assembly::push_alone(id, data, limits, out),
            held => push_pieces(&mut assembly, held, &mut chunks[..n], end, limits, out),
        };
        if let Err(error) = pushed {
            let _ = stream.stop(0u32.into());
            return match events.send(Event::ReceiveError { id, error }).await {
                Ok(()) => ReadEnd::Next,
                Err(()) => ReadEnd::Gone,
            };
        }
        // A whole message counts as delivered for a move's receipts; once they are frozen
        // nothing more is.
        if (end || receipts.frozen()) && !receipts.deliver(stream.id()) {
            return abandon(assembly.partly_delivered()).await;
        }
        if events.send_all(out).await.is_err() {
            return ReadEnd::Gone;
        }
        if end {
            return ReadEnd::Next;
        }
    }
}

/// Pushes into `assembly` a held first piece, then the pieces of a read, then (`end`) the
/// message's end; stops at the first error.
fn push_pieces(
    assembly: &mut Assembly,
    held: Option<Bytes>,
    pieces: &mut [Bytes],
    end: bool,
    limits: &ReceiveLimits,
    out: &mut Vec<Event>,
) -> std::result::Result<(), Error> {
    for data in held
        .into_iter()
        .chain(pieces.iter_mut().map(std::mem::take))
    {
        assembly.push_into(data, false, limits, out)?;
    }
    if end {
        assembly.push_into(Bytes::new(), true, limits, out)?;
    }
    Ok(())
}

/// Reads ordered messages: unidirectional streams, one after the other in stream order.
/// Draining for a move, it goes on only while the next stream is already whole.
async fn read_ordered(
    conn: quinn::Connection,
    events: EventTx,
    limits: ReceiveLimits,
    receipts: Arc<Receipts>,
) {
    let mut drain = KeptWait::flag(&receipts.draining());
    let mut out = Vec::new();
    loop {
        let stream = if drain.is_set() {
            match ready_now(conn.accept_uni()).await {
                Some(Ok(stream)) => stream,
                _ => return,
            }
        } else {
            tokio::select! {
                biased;
                stream = conn.accept_uni() => match stream {
                    Ok(stream) => stream,
                    Err(_) => return,
                },
                _ = drain.ready() => continue,
            }
        };
        let reading = (&*receipts, &mut drain);
        match read_message(stream, &events, &limits, reading, None, &mut out).await {
            ReadEnd::Next => {}
            ReadEnd::NotWhole | ReadEnd::Gone => return,
        }
    }
}

/// Delivers one received datagram as an unreliable message (one larger than the maximum
/// message size is dropped). Returns false when the application has gone.
async fn deliver_datagram(
    events: &EventTx,
    data: Bytes,
    counter: &mut u64,
    limits: &ReceiveLimits,
) -> bool {
    if data.len() > limits.max_message_size {
        return true;
    }
    let event = Event::Received(Received {
        id: *counter,
        data,
        reliable: false,
    });
    *counter += 1;
    events.send(event).await.is_ok()
}

/// How often a QUIC carrier looks for a change of its peer's address.
const PATH_CHECK: Duration = Duration::from_millis(20);

/// Reports `PathChange` when the peer's address changes (quinn migrates the connection when
/// packets arrive from a new address, after validating it, but tells no one). On a listener's
/// carrier, also `Dormant` once nothing has come from the client for three keepalive
/// intervals (its path died; the connection waits for it until the dormant timeout), and a
/// `PathChange` when it is heard from again.
///
/// Checks every [`PATH_CHECK`] while datagrams come; after two checks that found nothing new
/// it sleeps until `activity` is touched (the connection's driver did something: the
/// vendored quinn's activity hook, set in `read_loop`) or, on a listener, until the client
/// has been silent long enough to be dormant. An idle connection's watch woke its thread 50
/// times a second before (BENCHMARKS.md, "Idle connections").
async fn watch_path(
    conn: quinn::Connection,
    events: EventTx,
    keepalive: Option<Duration>,
    activity: crate::path::Activity,
) {
    let mut last = conn.remote_address();
    let server = conn.side() == quinn::Side::Server;
    let mut rx = conn.stats().udp_rx.datagrams;
    let mut heard = Instant::now();
    let mut dormant = false;
    // Checks in a row that found neither a datagram nor a new address.
    let mut quiet = 0u32;
    loop {
        if quiet >= 2 {
            let silent_until = keepalive
                .filter(|_| server && !dormant)
                .map(|k| heard + k * 3);
            let moved = || conn.stats().udp_rx.datagrams != rx || conn.remote_address() != last;
            activity.sleep_unless(moved, silent_until).await;
            quiet = 0;
        } else {
            tokio::time::sleep(PATH_CHECK).await;
        }
        let now = conn.remote_address();
        let got = conn.stats().udp_rx.datagrams;
        let t = Instant::now();
        let mut event = None;
        let mut moved = false;
        if got != rx {
            rx = got;
            heard = t;
            moved = true;
            if dormant {
                dormant = false;
                last = now;
                event = Some(Event::PathChange { remote: now });
            }
        } else if server && !dormant && keepalive.is_some_and(|k| t.duration_since(heard) > k * 3) {
            dormant = true;
            event = Some(Event::Dormant);
        }
        if now != last {
            last = now;
            moved = true;
            event = Some(Event::PathChange { remote: now });
        }
        quiet = if moved { 0 } else { quiet + 1 };
        if let Some(event) = event {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

async fn read_loop(conn: quinn::Connection, reader: Reader, mv: Arc<QuicMove>) {
    let receipts = mv.receipts.clone();
    let Reader {
        events,
        limits,
        timers: (dormant_timeout, keepalive),
        goodbye,
    } = reader;
    // However this ends, nothing more is delivered after it: a move need not wait for it.
    struct Drained<'a>(&'a Receipts);
    impl Drop for Drained<'_> {
        fn drop(&mut self) {
            self.0.set_drained();
        }
    }
    let _drained = Drained(&receipts);
    // The connection's driver touches the carrier's activity (for a client's path manager,
    // asleep while nothing moves) and the address watch's.
    let watch = crate::path::Activity::default();
    conn.set_activity_hook({
        let (carrier, watch) = (mv.activity().clone(), watch.clone());
        move || {
            carrier.touch();
            watch.touch();
        }
    });
    let path = tokio::spawn(watch_path(conn.clone(), events.clone(), keepalive, watch));
    let ordered = tokio::spawn(read_ordered(
        conn.clone(),
        events.clone(),
        limits,
        receipts.clone(),
    ));
    let mut unordered = JoinSet::new();
    let read_bi = |recv: quinn::RecvStream, unordered: &mut JoinSet<()>| {
        let (events, conn, goodbye) = (events.clone(), conn.clone(), goodbye.clone());
        let receipts = receipts.clone();
        unordered.spawn(async move {
            let goodbye = Some((&*goodbye, &conn));
            let reading = (&*receipts, &mut KeptWait::flag(&receipts.draining()));
            read_message(recv, &events, &limits, reading, goodbye, &mut Vec::new()).await;
        });
    };
    let mut datagrams: u64 = 0;
    let mut drain = KeptWait::flag(&receipts.draining());
    let end = loop {
        tokio::select! {
            biased;
            Some(_) = unordered.join_next(), if !unordered.is_empty() => {}
            _ = drain.ready() => {
                // A move: deliver what QUIC holds whole, then nothing more.
                while let Some(Ok((_send, recv))) = ready_now(conn.accept_bi()).await {
                    read_bi(recv, &mut unordered);
                }
                let _ = ordered.await;
                while unordered.join_next().await.is_some() {}
                path.abort();
                return; // `_drained` says so.
            }
            datagram = conn.read_datagram() => match datagram {
                Ok(data) => {
                    if !deliver_datagram(&events, data, &mut datagrams, &limits).await {
                        return;
                    }
                }
                Err(e) => {
                    // Streams that arrived before the close are still readable.
                    while let Ok((_send, recv)) = conn.accept_bi().await {
                        read_bi(recv, &mut unordered);
                    }
                    break e;
                }
            },
            bi = conn.accept_bi() => match bi {
                Ok((_send, recv)) => read_bi(recv, &mut unordered),
                Err(e) => {
                    // Datagrams that arrived before the close are still readable.
                    while let Ok(data) = conn.read_datagram().await {
                        if !deliver_datagram(&events, data, &mut datagrams, &limits).await {
                            return;
                        }
                    }
                    break e;
                }
            },
        }
    };
    let _ = ordered.await;
    while unordered.join_next().await.is_some() {}
    path.abort();
    if receipts.frozen() || drain.is_set() {
        // The carrier moved on: this connection's end is not the carrier's.
        return;
    }
    let last = match end {
        quinn::ConnectionError::ApplicationClosed(close) if close.error_code == 0u32.into() => {
            Event::Closed
        }
        // The peer said goodbye: its close was lost, and its endpoint (or its silence) says
        // the rest.
        quinn::ConnectionError::Reset | quinn::ConnectionError::TimedOut if goodbye.heard() => {
            Event::Closed
        }
        quinn::ConnectionError::LocallyClosed => Event::Closed,
        // The idle timeout is the dormant timeout: no path worked for that long.
        quinn::ConnectionError::TimedOut => Event::ConnectionError(Error::DormantTimeout {
            after_ms: dormant_timeout.as_millis() as u64,
        }),
        other => Event::ConnectionError(ConnectionError::Quic(other.to_string()).into()),
    };
    let _ = events.send(last).await;
    // The last event: the carrier's event queue closes once this reader and the move's hold
    // on it are gone.
    drop(events);
    mv.release_events();
}

/// Steers a client connection between interfaces: moving is rebinding the endpoint to a
/// socket on the new interface (quinn then migrates: new connection ID, a PING at once, and
/// the server validates the new path); streams and queued messages carry on.
pub(crate) struct QuicPath {
    pub(crate) net: Arc<dyn Net>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
    pub(crate) epoch: PathEpoch,
    /// The carrier's (its outbox's): touched when a message is queued, and by the
    /// connection's driver whenever it ran (the vendored quinn's activity hook).
    pub(crate) activity: crate::path::Activity,
}

impl crate::path::PathUser for QuicPath {
    fn move_to<'a>(
        &'a mut self,
        choice: &'a crate::path::PathChoice,
    ) -> crate::net::BoxFuture<'a, bool> {
        Box::pin(async move {
            // A QUIC client cannot move to another server address (RFC 9000 §9): a path of
            // the other IP version is for the move to TLS/TCP (`moving::watch`).
            if choice.local.is_ipv4() != self.conn.remote_address().is_ipv4() {
                return false;
            }
            let Ok(socket) = self.net.bind_udp(SocketAddr::new(choice.local, 0)).await else {
                return false;
            };
            // A new path: fresh congestion control, old packets not counted (RFC 9000 §9.4).
            self.epoch.bump();
            self.endpoint.rebind_abstract(socket).is_ok()
        })
    }

    fn health(&self) -> crate::path::Health {
        health(&self.conn)
    }

    fn activity(&self) -> crate::path::Activity {
        self.activity.clone()
    }
}

/// A QUIC connection's traffic counters, for the path manager and the move watch.
pub(crate) fn health(conn: &quinn::Connection) -> crate::path::Health {
    {
        let s = conn.stats();
        // Frames the peer must acknowledge: silence after an ACK-only packet means nothing.
        let f = &s.frame_tx;
        let eliciting = f.ping
            + f.stream
            + f.datagram
            + f.crypto
            + f.max_data
            + f.max_stream_data
            + f.reset_stream
            + f.stop_sending
            + f.path_challenge
            + f.path_response
            + f.new_connection_id
            + f.retire_connection_id
            + f.new_token;
        crate::path::Health {
            tx: eliciting,
            rx: s.udp_rx.datagrams,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            srtt: conn.rtt(),
            ended: conn.close_reason().is_some(),
            broken: false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A QUIC connection over loopback with postsock's transport configuration: (client
    /// endpoint, client connection, server endpoint, server connection).
    pub(crate) async fn connected() -> (
        quinn::Endpoint,
        quinn::Connection,
        quinn::Endpoint,
        quinn::Connection,
    ) {
        let (server, client) = test_configs();
        let net = crate::net::TokioNet::shared();
        let (server_ep, accept) = accepting(&server).await;
        let tls =
            Arc::new(tls::client_config(&client.security, net.tls_clock()).expect("client TLS"));
        let addr = server_ep.local_addr().expect("bound");
        let (client_ep, conn, _epoch) =
            connect(net.as_ref(), addr, None, "localhost", &client, tls)
                .await
                .expect("connect");
        let server_conn = accept.await.expect("accept task").expect("accepted");
        (client_ep, conn, server_ep, server_conn)
    }

    /// A server's and a client's configuration under one test CA, for `localhost`.
    fn test_configs() -> (Configuration, Configuration) {
        use crate::Security;
        let ca = crate::certs::TestCa::new("postsock test CA").expect("CA");
        let mut server = Configuration::default();
        server.security(Security {
            identity: Some(ca.issue(&["localhost"]).expect("identity")),
            ..Security::default()
        });
        let mut client = Configuration::default();
        client.security(Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        });
        (server, client)
    }

    /// A server endpoint on loopback with `server`, accepting one connection.
    async fn accepting(
        server: &Configuration,
    ) -> (
        quinn::Endpoint,
        tokio::task::JoinHandle<std::result::Result<quinn::Connection, quinn::ConnectionError>>,
    ) {
        let net = crate::net::TokioNet::shared();
        let local = "127.0.0.1:0".parse().expect("address");
        let server_ep = endpoint(net.as_ref(), local, Some(server))
            .await
            .expect("server endpoint");
        let accept = {
            let ep = server_ep.clone();
            tokio::spawn(async move { ep.accept().await.expect("incoming").await })
        };
        (server_ep, accept)
    }

    /// A 0-RTT stream whose early data the handshake rejected between its write and its
    /// finish (on several workers the connection's driver can take that answer on another
    /// thread in between): quinn's `finish` calls the stream closed, and the write must
    /// read that as a rejection (the message goes again), not fail it "closed stream" (a
    /// message of `two_processes.rs`'s restarted-server test failed so in CI).
    #[tokio::test]
    async fn a_finish_after_the_early_data_was_rejected_is_a_rejection_not_a_failure() {
        let (server, client) = test_configs();
        let net = crate::net::TokioNet::shared();
        // A carrier's QUIC client configuration: early data on, tickets kept.
        let tls = crate::establish::association::TlsClients::new(&client.security, net.tls_clock())
            .expect("client TLS")
            .quic;
        // A first server gives the client a session ticket (it comes before the echo).
        let (first_ep, accept) = accepting(&server).await;
        let addr = first_ep.local_addr().expect("bound");
        let (_ep, conn, _epoch) =
            connect(net.as_ref(), addr, None, "localhost", &client, tls.clone())
                .await
                .expect("connect");
        let server_conn = accept.await.expect("accept task").expect("accepted");
        let echo = tokio::spawn(async move {
            let (mut tx, mut rx) = server_conn.accept_bi().await.expect("accept");
            let got = rx.read_to_end(64).await.expect("read");
            tx.write_all(&got).await.expect("echo");
            tx.finish().expect("finish");
            server_conn
        });
        let (mut tx, mut rx) = conn.open_bi().await.expect("open");
        tx.write_all(b"ping").await.expect("write");
        assert_eq!(finish_or_rejected(&mut tx), Ok(true), "a plain finish");
        assert_eq!(rx.read_to_end(64).await.expect("echo"), b"ping");
        let _first_server = echo.await.expect("echo task");
        // A second server (a restart: new session state) rejects that ticket's early data.
        let (second_ep, accept) = accepting(&server).await;
        let addr = second_ep.local_addr().expect("bound");
        let client_ep = client_endpoint(net.as_ref(), addr, None)
            .await
            .expect("endpoint");
        let connecting = start_connect(
            &client_ep,
            addr,
            "localhost",
            &client,
            tls,
            &PathEpoch::default(),
        )
        .expect("connect");
        let (conn, accepted) = connecting
            .into_0rtt()
            .unwrap_or_else(|_| panic!("no ticket for 0-RTT"));
        let mut early = conn.open_uni().await.expect("open in 0-RTT");
        early
            .write_chunk(Bytes::from_static(b"early"))
            .await
            .expect("written in 0-RTT");
        assert!(!accepted.await, "the new server's session state rejects it");
        let _second_server = accept.await.expect("accept task").expect("accepted");
        assert!(
            early.finish().is_err(),
            "quinn: a rejected 0-RTT stream is closed"
        );
        assert_eq!(finish_or_rejected(&mut early), Ok(false));
        // A message's write that finds it so (its bytes all taken in 0-RTT, only the finish
        // left, as when the rejection came between the two) leaves it to be sent again.
        let outbox = Outbox::new(1 << 20, order_rule);
        let (_halt_tx, halt) = watch::channel(false);
        let d = Dispatcher::new(conn.clone(), outbox.clone(), halt);
        let data = Bytes::from_static(b"early");
        let permit = outbox.reserve(data.len()).await.expect("room");
        let props = MessageProperties {
            idempotent: true,
            ..Default::default()
        };
        let handle = outbox.send(props, data, permit, None).expect("send");
        let item = outbox.try_next_where(usize::MAX, |_| true).expect("queued");
        let (_rejected_tx, rejected) = watch::channel(true);
        let shared = d.writes.ends.links.shared(Some(rejected), None);
        let end = write_message(early, item, 5, None, shared).await;
        assert!(
            matches!(end, WriteEnd::Done { handback: None, .. }),
            "ended, not awaiting an acknowledgement"
        );
        assert_eq!(handle.status(), SendStatus::Queued, "to be sent again");
    }

    /// The vendored quinn's activity hook (what wakes a sleeping path manager and address
    /// watch) is called when the connection's driver handles what the peer sent.
    #[tokio::test]
    async fn the_activity_hook_is_called_when_the_peer_sends() {
        let (_cep, client, _sep, server) = connected().await;
        let activity = crate::path::Activity::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        client.set_activity_hook({
            let (activity, calls) = (activity.clone(), calls.clone());
            move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                activity.touch();
            }
        });
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        let woken = {
            let (activity, calls) = (activity.clone(), calls.clone());
            tokio::spawn(async move {
                let called = || calls.load(std::sync::atomic::Ordering::SeqCst) > before;
                activity.sleep_unless(called, None).await;
            })
        };
        let mut s = server.open_uni().await.expect("open");
        s.write_all(b"hello").await.expect("write");
        s.finish().expect("finish");
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the hook touched the activity when the data came")
            .expect("the sleeper");
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) > before);
    }

    /// Streams of one priority leave in write order (fairness off), but a stream of higher
    /// priority still goes before one that began: the vendored quinn-proto's second patch
    /// (vendor/README.md). Upstream's unfair mode finished the begun stream first.
    #[tokio::test]
    async fn a_stream_of_higher_priority_overtakes_a_begun_one() {
        let (_ep, conn, _server_ep, server) = connected().await;
        let (mut big, _) = conn.open_bi().await.expect("open");
        big.set_priority(-8).expect("priority");
        let writer = tokio::spawn(async move {
            big.write_all(&vec![8u8; 4 << 20]).await.expect("write");
            big.finish().expect("finish");
            big
        });
        // Once the big one is on its way, the small one of higher priority.
        let (_, mut first) = server.accept_bi().await.expect("accept");
        let mut head = [0u8; 1];
        first.read_exact(&mut head).await.expect("read");
        let (mut small, _) = conn.open_bi().await.expect("open");
        small.set_priority(0).expect("priority");
        small.write_all(&[0u8; 1024]).await.expect("write");
        small.finish().expect("finish");
        let big_read =
            tokio::spawn(async move { first.read_to_end(8 << 20).await.expect("big").len() });
        let (_, mut second) = server.accept_bi().await.expect("accept");
        let small_len = second.read_to_end(1 << 20).await.expect("small").len();
        assert_eq!(small_len, 1024);
        assert!(
            !big_read.is_finished(),
            "the small stream of higher priority arrived only after the big one"
        );
        assert_eq!(big_read.await.expect("big reader") + 1, 4 << 20);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn driving_a_new_write_at_once_does_not_wake_the_sending_loop_again() {
        let (_ep, conn, _server_ep, _server_conn) = connected().await;
        let (woken, waker) = crate::transport::tests::counting();
        let mut cx = std::task::Context::from_waker(&waker);
        let count = || woken.0.load(Ordering::SeqCst);
        // The cause: `FuturesUnordered`, having polled every future it holds and seen none
        // end, wakes whoever polled it (to yield). With one write in flight, as in an echo,
        // that is every new write.
        let mut set = FuturesUnordered::new();
        set.push(std::future::pending::<()>());
        assert!(set.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(count(), 1, "FuturesUnordered yields by waking its caller");
        // The sending loop's step after a dispatch, polled as its task: the new write reaches
        // quinn, and the loop is not woken for nothing.
        let (_halt_tx, halt) = watch::channel(false);
        let mut writes = Writes::new(
            conn,
            halt,
            Outbox::new(1 << 20, |_, _| true),
            Arc::new(InFlight::default()),
        );
        writes.push(std::future::pending::<WriteEnd>());
        {
            let mut step = std::pin::pin!(async {
                writes.poll_now();
                std::future::pending::<()>().await
            });
            assert!(std::future::Future::poll(step.as_mut(), &mut cx).is_pending());
            assert_eq!(count(), 1, "the loop was woken by its own step");
        }
        // The loop's poll of the set before it waits registers its waker, runs nothing.
        assert!(writes.ends.writing.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(count(), 1);
    }

    /// A message its sender began to write (`DirectWriter`) but QUIC's flow control held
    /// is finished by the sending loop, which takes it from the writer, and settled there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_its_sender_began_is_finished_and_settled_by_the_sending_loop() {
        let (_ep, conn, _server_ep, server_conn) = connected().await;
        // The peer reads nothing yet: four streams fill the connection's flow-control window.
        for _ in 0..4 {
            let mut filler = conn.open_uni().await.expect("open");
            let fill = vec![1u8; STREAM_WINDOW as usize];
            filler.write_all(&fill).await.expect("within the window");
            filler.finish().expect("finish");
        }
        let outbox = Outbox::new(1 << 20, order_rule);
        let (_halt_tx, halt) = watch::channel(false);
        let mut d = Dispatcher::new(conn.clone(), outbox.clone(), halt);
        // The loop waits for an item: the sending thread may write.
        {
            let next = std::pin::pin!(outbox.next_or_direct(usize::MAX, &d.direct));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(std::future::Future::poll(next, &mut cx).is_pending());
        }
        let data = Bytes::from(vec![7u8; 1000]);
        let permit = outbox.reserve(data.len()).await.expect("room");
        let props = MessageProperties::default();
        let handle = outbox
            .send(props, data.clone(), permit, None)
            .expect("send");
        assert_eq!(
            handle.status(),
            SendStatus::Queued,
            "begun, not written whole"
        );
        assert!(
            outbox.try_next_where(usize::MAX, |_| true).is_none(),
            "the loop has it, not the queue"
        );
        // Now the peer reads every stream.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                let mut s = server_conn.accept_uni().await.expect("accept");
                got.push(s.read_to_end(usize::MAX).await.expect("read"));
            }
            got
        });
        tokio::time::timeout(Duration::from_secs(30), d.writes.finish())
            .await
            .expect("finished and settled");
        assert_eq!(handle.status(), SendStatus::Acked);
        let got = reader.await.expect("reader");
        assert_eq!(got[4], data, "the message arrived whole");
    }

    #[tokio::test(start_paused = true)]
    async fn the_lifetime_timer_does_not_size_every_write() {
        let inline = std::mem::size_of_val(&tokio::time::sleep_until(Instant::now()));
        let ours = std::mem::size_of_val(&sleep_until(None));
        assert!(
            ours * 2 < inline,
            "{ours} bytes against a timer of {inline}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_lifetime_timer_fires_at_its_deadline_and_never_without_one() {
        let start = Instant::now();
        sleep_until(Some(start + Duration::from_millis(250))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        let never = tokio::time::timeout(Duration::from_secs(3600), sleep_until(None)).await;
        assert!(never.is_err());
    }

    #[test]
    fn acknowledgements_are_reported_in_dispatch_order_whatever_order_they_come_in() {
        let mut order = AckOrder::default();
        let n: Vec<u64> = (0..5).map(|_| order.start()).collect();
        assert_eq!(n, [0, 1, 2, 3, 4]);
        let mut reported = Vec::new();
        // Newest first, as quinn reports a burst's acknowledgements.
        order.acked(4, "e");
        order.acked(3, "d");
        order.acked(1, "b");
        order.release(|m| reported.push(m));
        assert!(
            reported.is_empty(),
            "reported before write 0 ended: {reported:?}"
        );
        order.ended(0); // settled otherwise (failed, expired) or handed back
        order.release(|m| reported.push(m));
        assert_eq!(reported, ["b"], "only up to write 2, still running");
        order.acked(2, "c");
        order.release(|m| reported.push(m));
        assert_eq!(reported, ["b", "c", "d", "e"]);
        assert!(order.slots.is_empty());
        // Numbers go on from where they were; a stale number is ignored.
        order.ended(1);
        assert_eq!(order.start(), 5);
        order.acked(5, "f");
        order.release(|m| reported.push(m));
        assert_eq!(reported.last(), Some(&"f"));
    }

    #[test]
    fn a_halt_hands_back_the_held_acknowledgements_and_reports_none_of_them() {
        let mut order = AckOrder::default();
        for _ in 0..4 {
            order.start();
        }
        order.acked(1, "b");
        order.acked(3, "d");
        let mut handed = order.halt();
        handed.sort_unstable();
        assert_eq!(handed, ["b", "d"]);
        assert!(order.halt().is_empty(), "handed back once");
        let mut reported = Vec::new();
        order.ended(0);
        order.ended(2);
        order.release(|m| reported.push(m));
        assert!(reported.is_empty(), "{reported:?}");
        assert!(order.slots.is_empty());
    }

    /// Acknowledgements answered out of order: the later message waits for the earlier
    /// one, which, reported at once (no earlier write holds it), lets it go in the same step.
    #[tokio::test]
    async fn an_acknowledgement_held_for_an_earlier_one_goes_with_it() {
        let (_ep, conn, _server_ep, _server_conn) = connected().await;
        let outbox = Outbox::new(1 << 20, order_rule);
        let (_halt_tx, halt) = watch::channel(false);
        let in_flight = Arc::new(InFlight::default());
        let mut writes = Writes::new(conn.clone(), halt, outbox.clone(), in_flight.clone());
        let mut handles = Vec::new();
        let mut awaited = Vec::new();
        for n in 0..3u8 {
            let data = Bytes::from(vec![n; 100]);
            let permit = outbox.reserve(data.len()).await.expect("room");
            let handle = outbox
                .send(MessageProperties::default(), data, permit, None)
                .expect("send");
            let item = outbox.try_next_where(usize::MAX, |_| true).expect("queued");
            let stream = conn.open_uni().await.expect("open");
            in_flight.add(item.data.len());
            let w = AwaitedWrite {
                counted: item.data.len(),
                order: writes.ends.order.start(),
                item,
            };
            handles.push(handle);
            awaited.push((stream, w));
        }
        let mut answers = awaited.into_iter().map(|(s, w)| (s, w, Ok(None)));
        let (first, second, third) = (
            answers.next().expect("0"),
            answers.next().expect("1"),
            answers.next().expect("2"),
        );
        // The second's acknowledgement first: held.
        writes.ends.answered.push(second);
        writes.settle_answered();
        let acked = |h: &[crate::SendHandle]| -> Vec<bool> {
            h.iter().map(|h| h.status() == SendStatus::Acked).collect()
        };
        assert_eq!(acked(&handles), [false, false, false]);
        // The first's: both reported, in order.
        writes.ends.answered.push(first);
        writes.settle_answered();
        assert_eq!(acked(&handles), [true, true, false]);
        writes.ends.answered.push(third);
        writes.settle_answered();
        assert_eq!(acked(&handles), [true, true, true]);
        assert!(writes.ends.order.slots.is_empty());
        assert_eq!(in_flight.bytes.load(Ordering::Relaxed), 0);
    }

    /// Reads one stream with `read_message` as the reader of ordered streams does; returns
    /// what it delivered, how it ended and whether it heard the peer's goodbye.
    async fn read_one(
        server: quinn::Connection,
        limits: ReceiveLimits,
    ) -> (Vec<Event>, ReadEnd, bool) {
        let goodbye = Goodbye::default();
        let (events, rx) = crate::transport::event_channel(64, 1 << 24);
        let receipts = Receipts::default();
        let mut drain = KeptWait::flag(&receipts.draining());
        let stream = server.accept_uni().await.expect("a stream");
        let mut out = Vec::new();
        let end = read_message(
            stream,
            &events,
            &limits,
            (&receipts, &mut drain),
            Some((&goodbye, &server)),
            &mut out,
        )
        .await;
        drop(events);
        let mut got = Vec::new();
        while let Some(event) = rx.recv().await {
            got.push(event);
        }
        (got, end, goodbye.heard())
    }

    /// [`read_one`] in a task of its own, for a stream the test goes on writing.
    fn reading(server: &quinn::Connection) -> tokio::task::JoinHandle<(Vec<Event>, ReadEnd, bool)> {
        tokio::spawn(read_one(server.clone(), ReceiveLimits::whole(8_000)))
    }

    /// A message's first piece waits for the next read (the stream's end: the whole message
    /// goes up as it came, `Assembly::push_alone`); whatever the next read brings instead,
    /// the message is the same, an oversized one is refused and a reset after the first
    /// piece is not taken for the peer's goodbye.
    #[tokio::test]
    async fn a_first_piece_held_for_the_next_read_delivers_every_message_as_sent() {
        let (_ep, conn, _server_ep, server) = connected().await;
        let received = |got: &[Event]| -> Vec<Vec<u8>> {
            got.iter()
                .map(|e| match e {
                    Event::Received(m) => m.data.to_vec(),
                    other => panic!("not a whole message: {other:?}"),
                })
                .collect()
        };
        // Whole in one piece.
        let mut s = conn.open_uni().await.expect("open");
        s.write_all(&[1u8; 1000]).await.expect("write");
        s.finish().expect("finish");
        let (got, end, _) = reading(&server).await.expect("reader");
        assert_eq!(end, ReadEnd::Next);
        assert_eq!(received(&got), vec![vec![1u8; 1000]]);
        // In two pieces, the second after the reader has read (and held) the first.
        let mut s = conn.open_uni().await.expect("open");
        s.write_all(&[2u8; 1000]).await.expect("write");
        let read = reading(&server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&[3u8; 500]).await.expect("write");
        s.finish().expect("finish");
        let (got, end, _) = read.await.expect("reader");
        assert_eq!(end, ReadEnd::Next);
        let mut want = vec![2u8; 1000];
        want.extend_from_slice(&[3u8; 500]);
        assert_eq!(received(&got), vec![want]);
        // Larger than the maximum in its first piece: refused, not delivered.
        let mut s = conn.open_uni().await.expect("open");
        s.write_all(&[4u8; 9000]).await.expect("write");
        s.finish().expect("finish");
        let (got, _, _) = reading(&server).await.expect("reader");
        assert!(
            matches!(got.as_slice(), [Event::ReceiveError { .. }]),
            "{got:?}"
        );
        // Reset with the goodbye code after a first piece: an abandoned message (nothing
        // delivered), not the peer's goodbye.
        let mut s = conn.open_uni().await.expect("open");
        s.write_all(&[5u8; 1000]).await.expect("write");
        let read = reading(&server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.reset(GOODBYE.into()).expect("reset");
        let (got, end, heard) = read.await.expect("reader");
        assert_eq!(end, ReadEnd::Next);
        assert!(got.is_empty(), "{got:?}");
        assert!(!heard, "a reset message was taken for a goodbye");
    }
}
