//! Stream transients: TLS 1.3 over TCP (tokio-rustls) and, when security is explicitly
//! disabled, plain TCP; messages are framed as in [`super::framing`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assemble::{Assembly, ReceiveLimits};
use super::framing::{
    FrameHeader, FLAG_REFUSED, FLAG_RESUME, HEADER_LEN, HELLO_LEN, TOKEN_LEN, TYPE_CLOSE,
    TYPE_HELLO, TYPE_MESSAGE,
};
use super::{tls, EventTx};
use crate::message::{MessageProperties, SendStatus};
use crate::net::{ByteStream, Net};
use crate::outbox::{Item, Outbox};
use crate::{Configuration, Error, Event, MessageId, Protocol, Result};

/// Connects TCP through `net`, then runs the TLS 1.3 client handshake.
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
    host: &str,
    config: &Configuration,
    client: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn ByteStream>>> {
    let name = tls::server_name(&config.security, host)?;
    let establish = |reason: String| Error::Establish {
        protocol: Protocol::TlsTcp,
        remote,
        reason,
    };
    let tcp = tcp_connect(net, remote, local)
        .await
        .map_err(|e| establish(format!("TCP connect: {e}")))?;
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| establish(format!("TLS handshake: {e}")))
}

/// Connects plain TCP through `net` (only when the configuration allows an insecure stack).
pub(crate) async fn connect_plain(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> Result<Box<dyn ByteStream>> {
    tcp_connect(net, remote, local)
        .await
        .map_err(|e| Error::Establish {
            protocol: Protocol::Tcp,
            remote,
            reason: format!("TCP connect: {e}"),
        })
}

/// A TCP connection to `remote`, out of interface address `local` when given.
async fn tcp_connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<Box<dyn ByteStream>> {
    match local {
        Some(ip) => net.connect_tcp_from(ip, remote).await,
        None => net.connect_tcp(remote).await,
    }
}

/// Largest frame the writer emits: big messages are cut into frames of this size so that a
/// more urgent message can go between them.
pub(crate) const MAX_FRAME: usize = 16 * 1024;

/// Messages on one ordered byte stream are delivered in the order they are written, so an
/// antecedent handed to the writer is always delivered first.
pub(crate) fn order_rule(_: &MessageProperties, _: &MessageProperties) -> bool {
    true
}

/// Bounds on the writer's window of unacknowledged bytes.
const MIN_WINDOW: u64 = 16 * 1024;
const INITIAL_WINDOW: u64 = MIN_WINDOW;
const MAX_WINDOW: u64 = 16 << 20;
const RTT_FLOOR: Duration = Duration::from_millis(5);

/// The unit ACK frames count: a message frame's payload length plus one (so an empty frame
/// counts too).
fn ack_units(len: usize) -> u64 {
    len as u64 + 1
}

/// Carrier-level acknowledgement state of a stream carrier, shared by writer and reader and
/// kept across transients (ACK units count over the whole carrier).
///
/// The writer keeps at most a window of unacknowledged bytes in flight: twice the measured
/// delivery rate times the minimum RTT (at least 16 KiB). That keeps a backlog in the
/// carrier's queue, where niceness and lifetimes still apply, rather than in TLS and socket
/// buffers, without holding back a fast path. A resumable carrier also keeps the bytes of
/// every unacknowledged frame, to write them again on the next transient.
#[derive(Debug, Default)]
struct Acks {
    inner: std::sync::Mutex<AckInner>,
    changed: Notify,
}

/// A written, unacknowledged frame.
#[derive(Debug)]
struct SentFrame {
    /// Where it ends, in ACK units.
    end: u64,
    /// When it was written.
    at: Instant,
    /// The message it completes, if it carried FIN.
    fin: Option<MessageId>,
    /// Its bytes (header and payload), kept by resumable carriers.
    bytes: Option<(Bytes, Bytes)>,
}

#[derive(Debug, Default)]
struct AckInner {
    frames: VecDeque<SentFrame>,
    written: u64,
    acked: u64,
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// Delivery rate in bytes per second, and the last point it was measured from.
    rate: Option<f64>,
    rate_mark: Option<(Instant, u64)>,
    /// The peer's direction ended: no more ACKs will come.
    peer_done: bool,
}

impl AckInner {
    fn window(&self) -> u64 {
        match (self.rate, self.min_rtt) {
            (Some(rate), Some(min_rtt)) => {
                // Below a few ms the RTT is the scheduler's, not the path's: count at least
                // RTT_FLOOR so a fast path is not throttled by task wake-ups.
                let rtt = min_rtt.max(RTT_FLOOR).as_secs_f64();
                ((2.0 * rate * rtt) as u64).clamp(MIN_WINDOW, MAX_WINDOW)
            }
            _ => INITIAL_WINDOW,
        }
    }

    /// Settles every frame up to `acked` units; returns an RTT sample.
    fn settle(&mut self, acked: u64, outbox: &Outbox) -> Option<Duration> {
        let now = Instant::now();
        let mut sample = None;
        while let Some(f) = self.frames.front() {
            if f.end > acked {
                break;
            }
            sample = Some(now - f.at);
            if let Some(id) = f.fin {
                outbox.update(id, SendStatus::Acked, true);
            }
            self.frames.pop_front();
        }
        self.acked = acked;
        sample
    }

    fn check(&self, acked: u64) -> Result<()> {
        if acked < self.acked || acked > self.written {
            return Err(Error::Protocol(format!(
                "ACK of {acked} units, outside the {}..={} sent",
                self.acked, self.written
            )));
        }
        Ok(())
    }
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while the window is full.
    async fn window_open(&self) {
        crate::wait::until(&self.changed, || self.has_room().then_some(())).await
    }

    /// How many bytes of frames to gather into one write: about 2 ms at the measured
    /// delivery rate, so a slow path gets small TLS records (a record is only readable once
    /// whole) and a fast one few system calls.
    fn batch_limit(&self) -> usize {
        self.lock().rate.map_or(0, |rate| {
            ((rate * BATCH_TIME.as_secs_f64()) as usize).min(BATCH)
        })
    }

    /// Whether more may be written now.
    fn has_room(&self) -> bool {
        let st = self.lock();
        st.peer_done || st.written - st.acked < st.window()
    }

    /// Waits until every written message is acknowledged or the peer can no longer ack.
    async fn all_acked(&self) {
        crate::wait::until(&self.changed, || {
            let st = self.lock();
            (st.frames.is_empty() || st.peer_done).then_some(())
        })
        .await
    }

    fn written(&self, item: &Item, header: &[u8; HEADER_LEN], keep: bool) {
        let mut st = self.lock();
        st.written += ack_units(item.data.len());
        let frame = SentFrame {
            end: st.written,
            at: Instant::now(),
            fin: (item.fin && !item.abort).then_some(item.id),
            bytes: keep.then(|| (Bytes::copy_from_slice(header), item.data.clone())),
        };
        st.frames.push_back(frame);
    }

    /// Applies the peer's ACK of `acked` units.
    fn acknowledge(&self, acked: u64, outbox: &Outbox) -> Result<()> {
        let mut st = self.lock();
        st.check(acked)?;
        let now = Instant::now();
        if let Some(rtt) = st.settle(acked, outbox) {
            let srtt = st.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8);
            let min_rtt = st.min_rtt.map_or(rtt, |m| m.min(rtt));
            st.srtt = Some(srtt);
            st.min_rtt = Some(min_rtt);
            outbox.set_rtt(srtt, min_rtt);
            // One delivery-rate sample per minimum RTT at most, smoothed.
            match st.rate_mark {
                Some((t0, a0)) if now - t0 >= min_rtt && now > t0 => {
                    let sample = (acked - a0) as f64 / (now - t0).as_secs_f64();
                    st.rate = Some(st.rate.map_or(sample, |r| 0.75 * r + 0.25 * sample));
                    st.rate_mark = Some((now, acked));
                }
                Some(_) => {}
                None => st.rate_mark = Some((now, acked)),
            }
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The carrier failed: what was written and not acknowledged may never have arrived.
    fn fail_unacked(&self, outbox: &Outbox, reason: &str) {
        let mut st = self.lock();
        st.peer_done = true;
        for f in st.frames.drain(..) {
            if let Some(id) = f.fin {
                outbox.update(id, SendStatus::Failed(reason.to_string()), true);
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// The peer will send no more ACKs: what was written is as sent as it will get.
    fn peer_done(&self, outbox: &Outbox) {
        let mut st = self.lock();
        st.peer_done = true;
        for f in st.frames.drain(..) {
            if let Some(id) = f.fin {
                outbox.update(id, SendStatus::Sent, true);
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// A new transient continues the carrier: forgets the old path's estimates and returns
    /// the position up to which the peer acknowledged, and the bytes of every frame after it,
    /// to be written again first, in order (the peer skips what it already has).
    fn restart(&self) -> (u64, Vec<Bytes>) {
        let mut st = self.lock();
        st.srtt = None;
        st.min_rtt = None;
        st.rate = None;
        st.rate_mark = None;
        st.peer_done = false;
        let now = Instant::now();
        let mut out = Vec::new();
        for f in st.frames.iter_mut() {
            f.at = now;
            if let Some((header, data)) = &f.bytes {
                out.push(header.clone());
                out.push(data.clone());
            }
        }
        let acked = st.acked;
        drop(st);
        self.changed.notify_waiters();
        (acked, out)
    }
}

/// How a transient joins its carrier.
pub(crate) enum Attach {
    /// The carrier's first transient.
    New {
        /// Frames to write first.
        preamble: Vec<Bytes>,
    },
    /// A continuation.
    Continue {
        /// The peer's HELLO, if already read.
        peer: Option<Hello>,
        /// What we received (from [`StreamCore::detach`]).
        received: u64,
    },
}

/// What a transient's reader starts with.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// The first frame must be the peer's HELLO.
    expect_hello: bool,
    /// The position (ACK units) of the first data frame the peer writes: frames before what
    /// we already received are skipped.
    skip_from: Option<u64>,
}

/// A resumable carrier's token: 16 random bytes the client sends inside TLS.
pub(crate) type Token = [u8; TOKEN_LEN];

/// What the reader of a stream carrier keeps across transients.
#[derive(Debug, Default)]
struct RecvState {
    open: BTreeMap<MessageId, Assembly>,
    discarding: BTreeSet<MessageId>,
    /// ACK units received and processed on this carrier.
    received: u64,
}

/// How a transient's reader ended.
enum ReadEnd {
    /// The peer closed cleanly (CLOSE and end of stream, or end of stream on a carrier that
    /// cannot resume).
    Clean,
    /// Stopped at a frame boundary because another transient takes over.
    Stopped,
    /// The application went away.
    Gone,
    /// The transient broke (read error, end of stream without CLOSE).
    Broken(Error),
    /// The peer violated the wire format.
    Fatal(Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CoreState {
    /// A transient runs.
    Active,
    /// No transient: the carrier waits for one (dormant) or is switching.
    Detached,
    /// The carrier ended.
    Ended,
}

/// The tasks of the running transient.
struct Running {
    /// KILL_STOP or KILL_ABORT ends the writer.
    kill: watch::Sender<u8>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

struct CoreInner {
    epoch: u64,
    state: CoreState,
    current: Option<Running>,
    peer: SocketAddr,
}

/// A stream carrier: the state that outlives its transients (TLS or TCP connections). A
/// carrier with a token can continue on a new transient when one breaks (docs/WIRE.md,
/// Continuation): each side tells the other how many ACK units it received, and writes again
/// exactly the frames the other has not — no message lost, none delivered twice.
pub(crate) struct StreamCore {
    outbox: Arc<Outbox>,
    events: std::sync::Mutex<Option<EventTx>>,
    limits: ReceiveLimits,
    acks: Arc<Acks>,
    recv: Arc<tokio::sync::Mutex<RecvState>>,
    token: Option<Token>,
    /// The client side: its path manager reports dormancy; a listener's side reports it itself.
    client: bool,
    dormant_timeout: Duration,
    /// A resumable carrier writes at least this often (an ACK when idle).
    keepalive: Option<Duration>,
    inner: std::sync::Mutex<CoreInner>,
    /// Our direction's fate once the outbox is closed: Ok when everything was acknowledged.
    sent_all: watch::Sender<Option<std::result::Result<(), String>>>,
    /// Frames written and read (for the path manager's silence detection).
    tx: std::sync::atomic::AtomicU64,
    rx: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for StreamCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCore")
            .field("resumable", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of a new stream carrier.
pub(crate) struct CoreSettings {
    pub(crate) limits: ReceiveLimits,
    pub(crate) token: Option<Token>,
    pub(crate) client: bool,
    pub(crate) dormant_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
}

impl StreamCore {
    pub(crate) fn new(outbox: Arc<Outbox>, events: EventTx, settings: CoreSettings) -> Arc<Self> {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        Arc::new(StreamCore {
            outbox,
            events: std::sync::Mutex::new(Some(events)),
            limits: settings.limits,
            acks: Arc::new(Acks::default()),
            recv: Default::default(),
            token: settings.token,
            client: settings.client,
            dormant_timeout: settings.dormant_timeout,
            keepalive: settings.keepalive,
            inner: std::sync::Mutex::new(CoreInner {
                epoch: 0,
                state: CoreState::Detached,
                current: None,
                peer,
            }),
            sent_all: watch::channel(None).0,
            tx: Default::default(),
            rx: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoreInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn events(&self) -> Option<EventTx> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The token, if the carrier can continue on a new transient.
    pub(crate) fn token(&self) -> Option<Token> {
        self.token
    }

    /// The peer's address on the current (or last) transient.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.lock().peer
    }

    /// Frames written and read so far, and whether the carrier waits for a transient or ended.
    pub(crate) fn traffic(&self) -> (u64, u64, bool, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.lock().state;
        (
            self.tx.load(Relaxed),
            self.rx.load(Relaxed),
            st == CoreState::Detached,
            st == CoreState::Ended,
        )
    }

    /// Queues an event for the application (while the carrier lives).
    pub(crate) async fn announce(&self, event: Event) {
        if let Some(events) = self.events() {
            let _ = events.send(event).await;
        }
    }

    /// The smoothed RTT the ACKs measure.
    pub(crate) fn srtt(&self) -> Duration {
        self.acks.lock().srtt.unwrap_or(Duration::from_millis(100))
    }

    /// Runs the carrier on `stream`: a new carrier (with `preamble` written first: the
    /// client's HELLO), or a continuation. A continuation writes HELLO (what we received, and
    /// from where we write again) and then every unacknowledged frame; its reader skips the
    /// frames it already has. `peer`: the peer's HELLO when already read (at a listener);
    /// otherwise the reader expects it as the first frame.
    pub(crate) fn attach<S>(
        self: &Arc<Self>,
        stream: S,
        peer_addr: SocketAddr,
        mode: Attach,
    ) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (preamble, entry) = match mode {
            Attach::New { preamble } => (preamble, Entry::default()),
            Attach::Continue { peer, received } => {
                let token = self.token.ok_or(Error::Closed)?;
                let (acked, frames) = self.acks.restart();
                let mut preamble: Vec<Bytes> =
                    vec![hello_frame(&token, received, acked, FLAG_RESUME).into()];
                preamble.extend(frames);
                let entry = match peer {
                    Some(h) => {
                        self.acks.acknowledge(h.received, &self.outbox)?;
                        Entry {
                            expect_hello: false,
                            skip_from: Some(h.resend_from),
                        }
                    }
                    None => Entry {
                        expect_hello: true,
                        skip_from: None,
                    },
                };
                (preamble, entry)
            }
        };
        let mut st = self.lock();
        if st.state == CoreState::Ended {
            return Err(Error::Closed);
        }
        st.epoch += 1;
        st.state = CoreState::Active;
        st.peer = peer_addr;
        let epoch = st.epoch;
        let (read_half, write_half) = tokio::io::split(stream);
        let (kill, killed) = watch::channel(0u8);
        let (stop, stopped) = watch::channel(false);
        let (ack_tx, ack_rx) = watch::channel(0u64);
        let core = self.clone();
        let writer = tokio::spawn(async move {
            let result = write_loop(write_half, &core, preamble, ack_rx, killed).await;
            core.writer_ended(epoch, result);
        });
        // Frames are read in small pieces (a 16-byte header, then the payload): a buffer keeps
        // that from costing a TLS read (and a system call) each.
        let read_half = tokio::io::BufReader::with_capacity(64 * 1024, read_half);
        let core = self.clone();
        let reader = tokio::spawn(async move {
            let end = read_messages(read_half, &core, ack_tx, stopped, entry).await;
            core.reader_ended(epoch, end).await;
        });
        let old = st.current.replace(Running {
            kill,
            stop,
            reader,
            writer,
        });
        drop(st);
        if let Some(old) = old {
            let _ = old.kill.send(KILL_STOP);
        }
        Ok(())
    }

    /// Stops the running transient at a frame boundary (so that what it read is exactly
    /// accounted for) and returns the ACK units received so far. The carrier then waits for
    /// [`attach`](Self::attach), for at most the dormant timeout.
    pub(crate) async fn detach(self: &Arc<Self>) -> u64 {
        let running = {
            let mut st = self.lock();
            if st.state == CoreState::Ended {
                None
            } else {
                st.epoch += 1;
                st.state = CoreState::Detached;
                st.current.take()
            }
        };
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.kill.send(KILL_STOP);
            let _ = r.reader.await;
            r.writer.abort();
        }
        self.watch_dormancy();
        self.recv.lock().await.received
    }

    /// Ends the carrier after the dormant timeout unless a transient attaches first.
    fn watch_dormancy(self: &Arc<Self>) {
        let epoch = self.lock().epoch;
        let core = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(core.dormant_timeout).await;
            let still = {
                let st = core.lock();
                st.epoch == epoch && st.state == CoreState::Detached
            };
            if still {
                let after_ms = core.dormant_timeout.as_millis() as u64;
                core.end(Some(Error::DormantTimeout { after_ms })).await;
            }
        });
    }

    /// Ends the carrier: `None` after a clean close by the peer, else with an error (what is
    /// still queued fails).
    async fn end(self: &Arc<Self>, error: Option<Error>) {
        let running = {
            let mut st = self.lock();
            if st.state == CoreState::Ended {
                return;
            }
            st.state = CoreState::Ended;
            // After the peer's clean close our writer goes on until the application closes
            // (a half-close); a failure stops it.
            if error.is_some() {
                st.current.take()
            } else {
                None
            }
        };
        if let Some(r) = running {
            let _ = r.kill.send(KILL_STOP);
        }
        let event = match error {
            Some(e) => {
                // Unacknowledged messages of a resumable carrier may never have arrived;
                // without continuation, written means sent as far as TCP goes.
                if self.token.is_some() {
                    self.acks.fail_unacked(&self.outbox, &e.to_string());
                } else {
                    self.acks.peer_done(&self.outbox);
                }
                self.outbox.fail_all(&e.to_string());
                self.direction_failed(&e);
                Event::ConnectionError(e)
            }
            None => {
                self.acks.peer_done(&self.outbox);
                Event::Closed
            }
        };
        if let Some(events) = self.take_events() {
            let _ = events.send(event).await;
        }
    }

    /// Our sender of the application's events, taken for the last one (the queue then closes
    /// once the transient's tasks are gone).
    fn take_events(&self) -> Option<EventTx> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The application dropped the carrier: after the peer's clean close our writer finishes
    /// what it has (the outbox is failed and closed) and closes cleanly; otherwise abort.
    pub(crate) fn dropped(self: &Arc<Self>) {
        if self.lock().state == CoreState::Ended {
            return;
        }
        self.abort();
    }

    /// Ends the carrier at once (the application aborted it).
    pub(crate) fn abort(self: &Arc<Self>) {
        self.outbox.fail_all("carrier aborted");
        let running = {
            let mut st = self.lock();
            if st.state == CoreState::Ended && st.current.is_none() {
                return;
            }
            st.state = CoreState::Ended;
            st.current.take()
        };
        // The writer tells the peer (CLOSE with ABORT) and stops; the reader stops with it.
        if let Some(r) = running {
            let _ = r.kill.send(KILL_ABORT);
            let _ = r.stop.send(true);
        }
        self.acks.peer_done(&self.outbox);
        let e = Error::Connection("carrier aborted".into());
        self.direction_failed(&e);
        if let Some(events) = self.take_events() {
            events.try_send(Event::ConnectionError(e));
        }
    }

    /// Resolves once our direction is done: Ok when everything sent was acknowledged and the
    /// stream shut down after the outbox closed; Err if the carrier failed first.
    pub(crate) async fn finished(self: Arc<Self>) -> Result<()> {
        let mut rx = self.sent_all.subscribe();
        let done = rx.wait_for(Option::is_some).await;
        match done.as_deref() {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(Error::Connection(e.clone())),
            _ => Err(Error::Closed),
        }
    }

    /// Our direction ended with `e` (unless it had already finished).
    fn direction_failed(&self, e: &Error) {
        self.sent_all.send_if_modified(|s| {
            let unset = s.is_none();
            if unset {
                *s = Some(Err(e.to_string()));
            }
            unset
        });
    }

    fn current_epoch(&self, epoch: u64) -> bool {
        let st = self.lock();
        st.epoch == epoch && st.state == CoreState::Active
    }

    /// The transient broke: a resumable carrier waits for another (dormant); any other ends.
    async fn broken(self: &Arc<Self>, epoch: u64, error: Error) {
        if self.token.is_none() {
            return self.end(Some(error)).await;
        }
        let running = {
            let mut st = self.lock();
            if st.epoch != epoch || st.state != CoreState::Active {
                return;
            }
            st.epoch += 1;
            st.state = CoreState::Detached;
            st.current.take()
        };
        if let Some(r) = running {
            let _ = r.kill.send(KILL_STOP);
        }
        tracing::debug!("stream transient broke ({error}); carrier dormant");
        self.watch_dormancy();
        if !self.client {
            if let Some(events) = self.events() {
                let _ = events.send(Event::Dormant).await;
            }
        }
    }

    fn writer_ended(self: &Arc<Self>, epoch: u64, result: Result<()>) {
        let state = {
            let st = self.lock();
            if st.epoch != epoch {
                return;
            }
            st.state
        };
        match result {
            Ok(()) => {
                self.sent_all.send_replace(Some(Ok(())));
            }
            Err(e) if state == CoreState::Active => {
                let core = self.clone();
                tokio::spawn(async move { core.broken(epoch, e).await });
            }
            Err(e) => {
                self.direction_failed(&e);
            }
        }
    }

    async fn reader_ended(self: &Arc<Self>, epoch: u64, end: ReadEnd) {
        if !self.current_epoch(epoch) {
            return;
        }
        match end {
            ReadEnd::Stopped | ReadEnd::Gone => {}
            ReadEnd::Clean => self.end(None).await,
            ReadEnd::Fatal(e) => self.end(Some(e)).await,
            ReadEnd::Broken(e) => self.broken(epoch, e).await,
        }
    }
}

/// A stream carrier's path user: moving is opening a new transient out of the new interface
/// (TLS resumes the session from the association's cache) and continuing the carrier on it.
pub(crate) struct StreamPath {
    pub(crate) core: Arc<StreamCore>,
    pub(crate) net: Arc<dyn Net>,
    pub(crate) host: String,
    pub(crate) config: Configuration,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) remote: SocketAddr,
}

impl crate::path::PathUser for StreamPath {
    fn move_to<'a>(
        &'a mut self,
        choice: &'a crate::path::PathChoice,
    ) -> crate::net::BoxFuture<'a, bool> {
        Box::pin(async move {
            let (Some(_), Some(tls)) = (self.core.token(), self.tls.clone()) else {
                return false;
            };
            let local = Some(choice.local);
            let connect = connect(
                self.net.as_ref(),
                self.remote,
                local,
                &self.host,
                &self.config,
                tls,
            );
            let Ok(Ok(stream)) = tokio::time::timeout(self.config.connect_timeout, connect).await
            else {
                return false;
            };
            let received = self.core.detach().await;
            let mode = Attach::Continue {
                peer: None,
                received,
            };
            self.core.attach(stream, self.remote, mode).is_ok()
        })
    }

    fn health(&self) -> crate::path::Health {
        let (tx, rx, broken, ended) = self.core.traffic();
        crate::path::Health {
            tx,
            rx,
            sent_packets: 0,
            lost_packets: 0,
            srtt: self.core.srtt(),
            ended,
            broken,
        }
    }
}

/// A HELLO frame: header, token, resend position.
pub(crate) fn hello_frame(token: &Token, received: u64, resend_from: u64, flags: u8) -> Vec<u8> {
    let mut out = FrameHeader::hello(received, flags).encode().to_vec();
    out.extend_from_slice(token);
    out.extend_from_slice(&resend_from.to_be_bytes());
    out
}

/// Parses a HELLO frame's payload.
fn parse_hello(header: &FrameHeader, payload: &[u8]) -> Result<Hello> {
    if payload.len() != HELLO_LEN {
        return Err(Error::Protocol("truncated HELLO".into()));
    }
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&payload[..TOKEN_LEN]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&payload[TOKEN_LEN..]);
    Ok(Hello {
        token,
        flags: header.flags,
        received: header.id,
        resend_from: u64::from_be_bytes(at),
    })
}

/// A HELLO as read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hello {
    pub(crate) token: Token,
    pub(crate) flags: u8,
    /// ACK units the sender has received.
    pub(crate) received: u64,
    /// Where the frames the sender writes again on this transient start.
    pub(crate) resend_from: u64,
}

/// Reads the first frame of a stream if it is a HELLO (consumed whole). Anything else stays in
/// `read` (the bytes taken so far) for the carrier's reader to see again; so does a partial
/// header if the caller gives up waiting.
pub(crate) async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
) -> Result<Option<Hello>> {
    while read.len() < HEADER_LEN {
        let mut byte = [0u8; HEADER_LEN];
        let want = HEADER_LEN - read.len();
        let n = stream
            .read(&mut byte[..want])
            .await
            .map_err(|e| Error::Connection(format!("TCP read: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        read.extend_from_slice(&byte[..n]);
        if read[0] != TYPE_HELLO {
            return Ok(None);
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&read[..HEADER_LEN]);
    if header[0] != TYPE_HELLO {
        return Ok(None);
    }
    let h = FrameHeader::decode(&header, HELLO_LEN)?;
    let mut payload = [0u8; HELLO_LEN];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| Error::Protocol(format!("truncated HELLO: {e}")))?;
    read.clear();
    parse_hello(&h, &payload).map(Some)
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long an aborting writer may take to finish its frame and say goodbye.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The writer stops (the transient is being replaced, or broke).
const KILL_STOP: u8 = 1;
/// The writer tells the peer the carrier is aborted, then stops.
const KILL_ABORT: u8 = 2;

async fn killed(kill: &mut watch::Receiver<u8>) -> u8 {
    match kill.wait_for(|k| *k != 0).await {
        Ok(k) => *k,
        Err(_) => KILL_STOP,
    }
}

enum Step {
    KeepAlive,
    Killed(u8),
    Ack,
    AckDue,
    Item(Option<Item>),
    Done,
    Flush,
}

/// How long the writer lets written data sit unflushed when nothing more comes (the queue
/// can empty under it when queued messages expire).
const FLUSH_DELAY: Duration = Duration::from_millis(1);

/// Most bytes of frames gathered into one write (one system call).
const BATCH: usize = 64 * 1024;
/// How much sending time one write may gather (see [`Acks::batch_limit`]).
const BATCH_TIME: Duration = Duration::from_millis(2);
/// An ACK waits at most this long for data to ride on, or for more to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// ...unless this many units are unacknowledged.
const ACK_EVERY: u64 = 32 * 1024;

fn frame_header(item: &Item) -> [u8; HEADER_LEN] {
    if item.abort {
        FrameHeader::abort(item.id).encode()
    } else {
        // `next` cut the item to at most MAX_FRAME bytes.
        FrameHeader::part(item.id, item.data.len() as u32, item.fin).encode()
    }
}

/// Tells the peer (best effort, bounded) that the carrier is aborted, not merely broken.
async fn say_aborted<W: AsyncWrite + Unpin>(out: &mut W) -> Result<()> {
    let bye = FrameHeader::close(true).encode();
    let _ = tokio::time::timeout(ABORT_GRACE, async {
        out.write_all(&bye).await?;
        out.shutdown().await
    })
    .await;
    Err(Error::Connection("carrier aborted".into()))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    core: &StreamCore,
    preamble: Vec<Bytes>,
    mut ack_rx: watch::Receiver<u64>,
    mut kill: watch::Receiver<u8>,
) -> Result<()> {
    let (outbox, acks) = (&core.outbox, &core.acks);
    let keep = core.token.is_some();
    let io = |e: std::io::Error| Error::Connection(format!("TCP write: {e}"));
    let mut draining = true;
    let mut dirty = false;
    // The ACK count last sent, and when a pending one is due.
    let mut ack_sent: u64 = 0;
    let mut ack_due: Option<Instant> = None;
    let mut batch = BytesMut::with_capacity(BATCH + MAX_FRAME + HEADER_LEN);
    for piece in preamble {
        batch.extend_from_slice(&piece);
    }
    let mut flush = !batch.is_empty();
    let mut carries_data = false;
    loop {
        let mut sent_fins = Vec::new();
        if batch.is_empty() && !flush {
            let step = tokio::select! {
                biased;
                how = killed(&mut kill) => Step::Killed(how),
                Ok(()) = ack_rx.changed() => Step::Ack,
                _ = crate::wait::until_opt(ack_due) => Step::AckDue,
                item = async { acks.window_open().await; outbox.next(MAX_FRAME).await }, if draining => Step::Item(item),
                _ = acks.all_acked(), if !draining => Step::Done,
                _ = tokio::time::sleep(FLUSH_DELAY), if dirty => Step::Flush,
                _ = crate::wait::until_opt(core.keepalive.map(|k| Instant::now() + k)), if keep => Step::KeepAlive,
            };
            match step {
                Step::Killed(KILL_ABORT) => return say_aborted(&mut out).await,
                // Closing with everything acknowledged: the peer going away now costs nothing.
                Step::Killed(_) if !draining && acks.lock().frames.is_empty() => return Ok(()),
                Step::Killed(_) => return Err(Error::Connection("transient ended".into())),
                Step::Ack => {
                    let count = *ack_rx.borrow_and_update();
                    if count - ack_sent < ACK_EVERY {
                        ack_due.get_or_insert_with(|| Instant::now() + ACK_DELAY);
                        continue;
                    }
                    flush = true;
                }
                Step::AckDue => flush = true,
                Step::Item(None) => {
                    // Everything is written; wait for the acknowledgements (acking the peer
                    // meanwhile), then end our direction.
                    out.flush().await.map_err(io)?;
                    draining = false;
                    continue;
                }
                Step::Done => break,
                Step::Flush => flush = true,
                Step::KeepAlive => {
                    // Idle for a keepalive interval: an ACK (new or not) tells the peer the
                    // path still works.
                    batch.extend_from_slice(
                        &FrameHeader::ack(ack_sent.max(*ack_rx.borrow())).encode(),
                    );
                    flush = true;
                }
                Step::Item(Some(first)) => {
                    // Gather what is ready into one write, within the window.
                    carries_data = true;
                    let mut item = first;
                    loop {
                        let header = frame_header(&item);
                        // Recorded before writing: the peer's ACK can come back before
                        // the write returns.
                        acks.written(&item, &header, keep);
                        batch.extend_from_slice(&header);
                        batch.extend_from_slice(&item.data);
                        flush |= item.props.immediate;
                        if item.fin && !item.abort {
                            sent_fins.push(item.id);
                        }
                        if batch.len() >= acks.batch_limit() || !acks.has_room() {
                            break;
                        }
                        match outbox.try_next(MAX_FRAME) {
                            Some(next) => item = next,
                            None => break,
                        }
                    }
                    flush |= outbox.idle();
                }
            }
        }
        // A pending ACK rides along with whatever is written now.
        let count = *ack_rx.borrow_and_update();
        if count > ack_sent {
            batch.extend_from_slice(&FrameHeader::ack(count).encode());
            ack_sent = count;
        }
        ack_due = None;
        let mut aborted = false;
        {
            let write = async {
                if !batch.is_empty() {
                    out.write_all(&batch).await?;
                }
                if flush {
                    out.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::pin!(write);
            let how = tokio::select! {
                biased;
                how = killed(&mut kill) => Some(how),
                done = &mut write => {
                    done.map_err(io)?;
                    None
                }
            };
            match how {
                // An abort lets the frame being written finish, so the CLOSE that follows
                // is read as one.
                Some(KILL_ABORT) => {
                    aborted = tokio::time::timeout(ABORT_GRACE, &mut write)
                        .await
                        .is_ok_and(|r| r.is_ok());
                }
                Some(_) => return Err(Error::Connection("transient ended".into())),
                None => {}
            }
        }
        if aborted {
            return say_aborted(&mut out).await;
        }
        // Only writes the peer must acknowledge count as sent for the path's health: a lone
        // ACK or keepalive gets no answer of its own, so silence after it means nothing.
        if std::mem::take(&mut carries_data) {
            core.tx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        dirty = !flush;
        flush = false;
        batch.clear();
        for id in sent_fins {
            outbox.update(id, SendStatus::Sent, false);
        }
    }
    if keep {
        // A resumable carrier says it is done, so the peer can tell a close from a break.
        out.write_all(&FrameHeader::close(false).encode())
            .await
            .map_err(io)?;
    }
    out.shutdown().await.map_err(io)?;
    Ok(())
}

/// Messages being reassembled at once; more is a protocol violation.
const MAX_OPEN_MESSAGES: usize = 1024;

async fn read_messages<R: AsyncRead + Unpin>(
    mut input: R,
    core: &StreamCore,
    ack_tx: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
    entry: Entry,
) -> ReadEnd {
    let mut expect_hello = entry.expect_hello;
    // Position of the peer's next data frame while it writes again what we may have.
    let mut skip = entry.skip_from;
    let limits = &core.limits;
    let Some(events) = core.events() else {
        return ReadEnd::Gone;
    };
    let resumable = core.token.is_some();
    let mut st = core.recv.lock().await;
    let mut closing = false;
    loop {
        // A resumable peer writes at least every keepalive interval: three silent intervals
        // mean the path is gone (the carrier goes dormant until the client comes back).
        let silent_for = core.keepalive.filter(|_| resumable).map(|k| k * 3);
        let silence = async {
            match silent_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return ReadEnd::Stopped,
            frame = read_frame(&mut input, limits.max_message_size) => frame,
            _ = silence => {
                return ReadEnd::Broken(Error::Connection(format!(
                    "nothing heard from the peer for {} ms",
                    silent_for.unwrap_or_default().as_millis()
                )))
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e @ Error::Protocol(_)) => return ReadEnd::Fatal(e),
            Err(e) if resumable => return ReadEnd::Broken(e),
            Err(e) => return ReadEnd::Fatal(e),
        };
        core.rx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((header, data)) = frame else {
            if resumable && !closing {
                return ReadEnd::Broken(Error::Connection("the stream ended without CLOSE".into()));
            }
            if let Some(id) = st.open.keys().next() {
                return ReadEnd::Fatal(Error::Protocol(format!(
                    "stream ended in the middle of message {id}"
                )));
            }
            return ReadEnd::Clean;
        };
        if expect_hello {
            // A continuation: the peer's HELLO says what it has and where it starts again.
            expect_hello = false;
            if header.kind != TYPE_HELLO {
                return ReadEnd::Fatal(Error::Protocol(
                    "a continued transient must start with HELLO".into(),
                ));
            }
            let h = match parse_hello(&header, &data) {
                Ok(h) => h,
                Err(e) => return ReadEnd::Fatal(e),
            };
            if h.flags & FLAG_REFUSED != 0 || Some(h.token) != core.token {
                return ReadEnd::Fatal(Error::Connection(
                    "the peer no longer knows this carrier".into(),
                ));
            }
            if let Err(e) = core.acks.acknowledge(h.received, &core.outbox) {
                return ReadEnd::Fatal(e);
            }
            skip = Some(h.resend_from);
            continue;
        }
        if header.is_ack() {
            if let Err(e) = core.acks.acknowledge(header.id, &core.outbox) {
                return ReadEnd::Fatal(e);
            }
            continue;
        }
        if header.kind == TYPE_MESSAGE {
            if let Some(at) = skip {
                let end = at + ack_units(data.len());
                if end <= st.received {
                    // Written again by the peer; we have it.
                    skip = Some(end);
                    continue;
                }
                if at != st.received {
                    return ReadEnd::Fatal(Error::Protocol(format!(
                        "a frame written again at {at} units does not line up with the {} \
                         received",
                        st.received
                    )));
                }
                skip = None;
            }
        }
        match header.kind {
            TYPE_CLOSE if header.aborts() => {
                return ReadEnd::Fatal(Error::Connection("the peer aborted the carrier".into()))
            }
            TYPE_CLOSE => {
                closing = true;
                continue;
            }
            TYPE_HELLO => {
                return ReadEnd::Fatal(Error::Protocol(
                    "HELLO is only allowed as the first frame of a transient".into(),
                ))
            }
            _ => {}
        }
        let id = header.id;
        let mut out = Vec::new();
        st.received += ack_units(data.len());
        let RecvState {
            open, discarding, ..
        } = &mut *st;
        if header.aborts() {
            discarding.remove(&id);
            if let Some(a) = open.remove(&id) {
                if a.partly_delivered() {
                    out.push(Event::ReceiveError {
                        id,
                        error: Error::Connection(format!(
                            "the sender abandoned message {id} after part of it was delivered"
                        )),
                    });
                }
            }
        } else if discarding.contains(&id) {
            if header.fin() {
                discarding.remove(&id);
            }
        } else {
            if !open.contains_key(&id) && open.len() >= MAX_OPEN_MESSAGES {
                return ReadEnd::Fatal(Error::Protocol(format!(
                    "more than {MAX_OPEN_MESSAGES} messages interleaved at once"
                )));
            }
            let a = open.entry(id).or_insert_with(|| Assembly::new(id, true));
            match a.push(data, header.fin(), limits) {
                Ok(evs) => out = evs,
                Err(error) => {
                    open.remove(&id);
                    if !header.fin() {
                        discarding.insert(id);
                    }
                    out.push(Event::ReceiveError { id, error });
                }
            }
            if header.fin() {
                open.remove(&id);
            }
        }
        // Acknowledge as the frame is handed to the application's queue (or the reassembly),
        // so the ACK can ride on an answer the application sends at once.
        let _ = ack_tx.send(st.received);
        for event in out {
            if events.send(event).await.is_err() {
                return ReadEnd::Gone;
            }
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    max: usize,
) -> Result<Option<(FrameHeader, Bytes)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = input
            .read(&mut header[filled..])
            .await
            .map_err(|e| Error::Connection(format!("TCP read: {e}")))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::Protocol(format!(
                "truncated frame header: stream ended after {filled} of {HEADER_LEN} bytes"
            )));
        }
        filled += n;
    }
    let header = FrameHeader::decode(&header, max)?;
    let len = header.len as usize;
    let mut data = BytesMut::with_capacity(len);
    while data.len() < len {
        let want = (len - data.len()) as u64;
        let n = (&mut *input)
            .take(want)
            .read_buf(&mut data)
            .await
            .map_err(|e| Error::Connection(format!("TCP read: {e}")))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "truncated frame: message {} announced {} bytes",
                header.id, header.len
            )));
        }
    }
    Ok(Some((header, data.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_rejects_truncation() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&FrameHeader::message(7, 3).encode());
        wire.extend_from_slice(b"abc");
        let mut input = &wire[..];
        let got = read_frame(&mut input, 100).await.ok().flatten();
        assert_eq!(
            got.map(|(h, d)| (h.id, d.to_vec())),
            Some((7, b"abc".to_vec()))
        );
        assert!(matches!(read_frame(&mut input, 100).await, Ok(None)));

        let mut short = &wire[..HEADER_LEN + 1];
        let err = read_frame(&mut short, 100).await.expect_err("truncated");
        assert!(err.to_string().contains("truncated frame"), "{err}");
        let mut half = &wire[..5];
        let err = read_frame(&mut half, 100)
            .await
            .expect_err("truncated header");
        assert!(err.to_string().contains("truncated frame header"), "{err}");
    }
}
