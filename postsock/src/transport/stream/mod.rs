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

use super::assemble::{Assembly, Buffers, ReceiveLimits};
use super::framing::{
    FrameHeader, FLAG_ACK_NOW, FLAG_REFUSED, FLAG_RESUME, HEADER_LEN, HELLO_LEN, TOKEN_LEN,
    TYPE_CLOSE, TYPE_HELLO, TYPE_MESSAGE, TYPE_MOVED,
};
use super::{tls, EventTx, KeptWait};
use crate::message::{MessageProperties, SendStatus};
use crate::net::{ByteStream, Net};
use crate::transport::outbox::{Fins, Item, Outbox};
use crate::{Configuration, Error, Event, MessageId, Protocol, Result};
use crate::{ConnectionError, Violation};

mod acks;
mod connect;
mod early;
mod hello;
mod reader;
mod split;
mod writer;
pub(crate) use writer::frame_header;

use acks::{ack_units, AckWindow, Acks};
pub(crate) use connect::{connect, connect_plain};
pub(crate) use early::{
    server_config as early_server_config, ClientEarly, ServerTls, MAX_EARLY_DATA,
};
use hello::parse_hello;
pub(crate) use hello::{hello_frame, read_hello, Hello, Prefixed};
use reader::read_messages;
#[cfg(test)]
pub(crate) use reader::FrameReader;
use writer::{ack_signal, write_loop, AckTx, BATCH, BATCH_TIME, KILL_ABORT, KILL_STOP};

/// A failed read or write of the TCP connection.
pub(crate) fn tcp(op: &'static str, e: std::io::Error) -> Error {
    ConnectionError::Tcp {
        op,
        reason: e.to_string(),
    }
    .into()
}

/// Largest frame the writer emits: big messages are cut into frames of this size so that a
/// more urgent message can go between them.
pub(crate) const MAX_FRAME: usize = 16 * 1024;

/// Messages on one ordered byte stream are delivered in the order they are written, so an
/// antecedent handed to the writer is always delivered first.
pub(crate) fn order_rule(_: &MessageProperties, _: &MessageProperties) -> bool {
    true
}

/// How a transient joins its carrier.
pub(crate) enum Attach {
    /// The carrier's first transient.
    New {
        /// Frames to write first.
        preamble: Vec<Bytes>,
        /// The stream is a client's still in TLS early data.
        early: Option<EarlyStart>,
    },
    /// A continuation.
    Continue {
        /// The peer's HELLO, if already read.
        peer: Option<Hello>,
        /// What we received (from [`StreamCore::detach`]).
        received: u64,
    },
}

/// How a client's writer starts a stream still in TLS early data: once `gate` opens (its
/// sender is dropped), it writes the preamble and the idempotent messages ready then, and
/// completes the handshake, within `timeout`, before anything else.
#[derive(Debug)]
pub(crate) struct EarlyStart {
    pub(crate) gate: tokio::sync::oneshot::Receiver<()>,
    pub(crate) timeout: Duration,
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
    /// Buffers of long messages, reused from one to the next.
    buffers: Arc<Buffers>,
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
        crate::util::lock(&self.inner)
    }

    /// Moves the core to `state` (what the path manager reads as the transient broken or
    /// ended: it is touched to look again).
    fn enter(&self, st: &mut CoreInner, state: CoreState) {
        st.state = state;
        self.outbox.activity().touch();
    }

    /// Counts a write the peer must acknowledge (the path's health: a lone ACK or keepalive
    /// gets no answer of its own, so silence after it means nothing).
    pub(super) fn wrote_data(&self) {
        self.tx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.outbox.activity().touch();
    }

    fn events(&self) -> Option<EventTx> {
        crate::util::lock(&self.events).clone()
    }

    /// The token, if the carrier can continue on a new transient.
    pub(crate) fn token(&self) -> Option<Token> {
        self.token
    }

    /// The smoothed RTT its ACK frames measured (none before the first, nor after a
    /// continuation started on a new path) and the window of unacknowledged bytes it allows.
    pub(crate) fn path_stats(&self) -> (Option<Duration>, u64) {
        let window = self.acks.lock();
        (window.srtt(), window.window())
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
        self.acks
            .lock()
            .srtt()
            .unwrap_or(Duration::from_millis(100))
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
        // `start_received`: what a continuation's HELLO tells the peer we have; its keepalive
        // ACKs never count from less (an ACK below what the peer knows we hold is a violation).
        let (preamble, entry, start_received, early) = match mode {
            Attach::New { preamble, early } => (preamble, Entry::default(), 0, early),
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
                (preamble, entry, received, None)
            }
        };
        let mut st = self.lock();
        if st.state == CoreState::Ended {
            return Err(Error::Closed);
        }
        st.epoch += 1;
        self.enter(&mut st, CoreState::Active);
        st.peer = peer_addr;
        let epoch = st.epoch;
        let (read_half, write_half) = split::split(stream);
        let (kill, killed) = watch::channel(0u8);
        let (stop, stopped) = watch::channel(false);
        let (ack_tx, ack_rx) = ack_signal(start_received);
        let core = self.clone();
        let idle = {
            let core = Arc::downgrade(self);
            Box::new(move || {
                core.upgrade()
                    .is_some_and(|c| c.acks.lock().nothing_unacked())
            })
        };
        let (writer, inline) = super::inline::Driven::spawn(
            async move {
                let result = write_loop(write_half, &core, (preamble, early), ack_rx, killed).await;
                core.writer_ended(epoch, result);
            },
            idle,
        );
        self.outbox.set_inline(inline);
        // One ordered byte stream: plain messages may queue in the outbox's lane.
        self.outbox.set_lane(true);
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
                self.enter(&mut st, CoreState::Detached);
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
            self.enter(&mut st, CoreState::Ended);
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
        crate::util::lock(&self.events).take()
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
            self.enter(&mut st, CoreState::Ended);
            st.current.take()
        };
        // The writer tells the peer (CLOSE with ABORT) and stops; the reader stops with it.
        if let Some(r) = running {
            let _ = r.kill.send(KILL_ABORT);
            let _ = r.stop.send(true);
        }
        self.acks.peer_done(&self.outbox);
        let e = Error::from(ConnectionError::Aborted);
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
            Ok(Some(Err(e))) => Err(ConnectionError::Failed(e.clone()).into()),
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
            self.enter(&mut st, CoreState::Detached);
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
    /// The remote's addresses of the other IP version: a move onto a path of that version
    /// connects to one of them.
    pub(crate) alternates: Vec<SocketAddr>,
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
            // A path of the other IP version leads to the remote's address of that version.
            let remote = if choice.local.is_ipv4() == self.remote.is_ipv4() {
                self.remote
            } else {
                match self
                    .alternates
                    .iter()
                    .find(|a| a.is_ipv4() == choice.local.is_ipv4())
                {
                    Some(a) => *a,
                    None => return false,
                }
            };
            let connect = connect(
                self.net.as_ref(),
                remote,
                local,
                (&self.host, false),
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
            if remote != self.remote {
                self.alternates.retain(|a| *a != remote);
                self.alternates
                    .push(std::mem::replace(&mut self.remote, remote));
            }
            self.core.attach(stream, self.remote, mode).is_ok()
        })
    }

    fn activity(&self) -> crate::path::Activity {
        self.core.outbox.activity().clone()
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
