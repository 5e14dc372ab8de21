//! Moving a live QUIC carrier to TLS/TCP (docs/WIRE.md, "Moving from QUIC").
//!
//! A client carrier that raced `protocol = "any"` and won on QUIC can find QUIC stop working
//! on a path that still works (a firewall starts dropping UDP). It then opens a TLS/TCP
//! connection to the same listener and moves the carrier onto it:
//!
//! 1. Both ends know the carrier by an identity neither ever sent over QUIC: a TLS exporter
//!    of the QUIC connection (RFC 8446 §7.5), so only the two ends of that connection know it,
//!    and the client gives it to the listener inside the new, authenticated TLS connection.
//! 2. Each end stops its QUIC sending loop (what it had handed to quinn and not seen
//!    acknowledged comes back, whole messages only) and freezes its QUIC reader: from then on
//!    nothing more that arrives over QUIC is delivered, so what it has delivered is final.
//! 3. The ends exchange receipts (MOVED frames): which of the streams the peer opened were
//!    delivered. A message the peer delivered is acknowledged; every other one is queued
//!    again, first, in its original order, and goes over TLS/TCP. Nothing is lost and nothing
//!    is delivered twice, whatever QUIC had or had not carried when it stopped.
//! 4. The QUIC connection is closed, and the carrier goes on as a TLS/TCP carrier (with a
//!    continuation token of its own) over the same outbox and event queue; the application
//!    sees [`Event::ProtocolChange`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::assemble::ReceiveLimits;
use super::framing::{
    FrameHeader, FLAG_MOVE, FLAG_REFUSED, HEADER_LEN, MOVED_MAX, TOKEN_LEN, TYPE_MOVED,
};
use super::outbox::{Item, Outbox};
use super::stream::{self as tls_tcp, Attach, CoreSettings, StreamCore, Token};
use super::EventTx;
use crate::message::SendStatus;
use crate::net::Net;
use crate::{ConnectionError, Error, Event, Protocol, Result, Violation};

/// The TLS exporter label of a QUIC carrier's identity.
const IDENTITY_LABEL: &[u8] = b"EXPORTER-postsock-carrier";

/// The application error code of the CONNECTION_CLOSE of a QUIC connection whose carrier
/// moved: ASCII "move".
pub(crate) const MOVED_CODE: u32 = 0x6d6f_7665;

/// Stream indices one end received of one direction type of the streams its peer opened:
/// every index below `floor`, and those in `above`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) floor: u64,
    pub(crate) above: BTreeSet<u64>,
}

impl Seen {
    fn insert(&mut self, index: u64) {
        if index < self.floor {
            return;
        }
        // In order (the usual case) the floor just moves: a B-tree node allocated and freed
        // per message was most of the reader's bookkeeping for it.
        if index == self.floor {
            self.floor += 1;
        } else {
            self.above.insert(index);
        }
        while self.above.first() == Some(&self.floor) {
            self.above.pop_first();
            self.floor += 1;
        }
    }

    pub(crate) fn contains(&self, index: u64) -> bool {
        index < self.floor || self.above.contains(&index)
    }
}

/// What one end delivered of the streams its peer opened (unidirectional: ordered
/// messages; bidirectional: unordered ones).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) uni: Seen,
    pub(crate) bi: Seen,
}

/// Indices a MOVED frame lists above the floor, per direction type, at most.
const MAX_ABOVE: usize = 4096;

impl Summary {
    fn seen(&self, dir: quinn::Dir) -> &Seen {
        match dir {
            quinn::Dir::Uni => &self.uni,
            quinn::Dir::Bi => &self.bi,
        }
    }

    /// Whether the peer delivered the message we sent on `stream`.
    pub(crate) fn contains(&self, stream: quinn::StreamId) -> bool {
        self.seen(stream.dir()).contains(stream.index())
    }

    /// The MOVED frame (header and payload) carrying `identity` and this summary.
    pub(crate) fn frame(&self, identity: &Token) -> Vec<u8> {
        let mut payload = identity.to_vec();
        for seen in [&self.uni, &self.bi] {
            payload.extend_from_slice(&seen.floor.to_be_bytes());
            payload.extend_from_slice(&(seen.above.len() as u32).to_be_bytes());
            for i in &seen.above {
                payload.extend_from_slice(&i.to_be_bytes());
            }
        }
        moved_frame(identity, &payload[TOKEN_LEN..])
    }

    /// Parses a MOVED frame's payload: the identity and the receipts (`None` in the
    /// client's first MOVED, which carries only the identity).
    pub(crate) fn parse(payload: &[u8]) -> Result<(Token, Option<Summary>)> {
        let bad = || Error::from(Violation::MalformedHello);
        let mut identity = [0u8; TOKEN_LEN];
        identity.copy_from_slice(payload.get(..TOKEN_LEN).ok_or_else(bad)?);
        let mut rest = &payload[TOKEN_LEN..];
        if rest.is_empty() {
            return Ok((identity, None));
        }
        let mut summary = Summary::default();
        for dir in [quinn::Dir::Uni, quinn::Dir::Bi] {
            let floor = take_u64(&mut rest)?;
            let n = u32::from_be_bytes(take(&mut rest, 4)?.try_into().map_err(|_| bad())?);
            if n as usize > MAX_ABOVE {
                return Err(bad());
            }
            let mut above = BTreeSet::new();
            let mut last = floor;
            for _ in 0..n {
                // Strictly increasing, each above the floor: one way to write each receipt.
                let i = take_u64(&mut rest)?;
                if i <= last {
                    return Err(bad());
                }
                last = i;
                above.insert(i);
            }
            let seen = Seen { floor, above };
            match dir {
                quinn::Dir::Uni => summary.uni = seen,
                quinn::Dir::Bi => summary.bi = seen,
            }
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok((identity, Some(summary)))
    }
}

/// The first `n` bytes of `rest`, which moves past them.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if rest.len() < n {
        return Err(Violation::MalformedHello.into());
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u64(rest: &mut &[u8]) -> Result<u64> {
    let mut b = [0u8; 8];
    b.copy_from_slice(take(rest, 8)?);
    Ok(u64::from_be_bytes(b))
}

/// A MOVED frame: the carrier's identity, then `receipts` (none in the client's first).
fn moved_frame(identity: &Token, receipts: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        kind: TYPE_MOVED,
        flags: 0,
        id: 0,
        len: (TOKEN_LEN + receipts.len()) as u32,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(identity);
    out.extend_from_slice(receipts);
    out
}

/// The client's first MOVED frame: the carrier's identity only.
fn identity_frame(identity: &Token) -> Vec<u8> {
    moved_frame(identity, &[])
}

/// Reads a MOVED frame.
pub(crate) async fn read_moved<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Token, Option<Summary>)> {
    // A connection that breaks here is a broken transient, not a malformed frame.
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| tls_tcp::tcp("read", e))?;
    let h = FrameHeader::decode(&header, MOVED_MAX)?;
    if h.kind != TYPE_MOVED {
        return Err(Violation::MovedMisplaced.into());
    }
    let mut payload = vec![0u8; h.len as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| tls_tcp::tcp("read", e))?;
    Summary::parse(&payload)
}

/// The delivery receipts of a QUIC carrier's reader.
///
/// A move freezes them in two steps. First the readers drain: they deliver every message
/// QUIC has wholly received (the streams whose data and FIN are all buffered; ordered ones
/// up to the first that is not whole), without waiting for more. A message the peer's QUIC
/// saw acknowledged is wholly received here, so it is delivered: the peer reported it acked
/// (for an ordered message only once every ordered message before it was acked too).
/// Then the receipts freeze: nothing more is delivered over QUIC.
#[derive(Debug)]
pub(crate) struct Receipts {
    inner: Mutex<(bool, Summary)>,
    drain: watch::Sender<bool>,
    drained: watch::Sender<bool>,
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts {
            inner: Mutex::default(),
            drain: watch::channel(false).0,
            drained: watch::channel(false).0,
        }
    }
}

impl Receipts {
    /// Records that the message on `stream` is being delivered; false once the receipts are
    /// frozen: then it must not be.
    pub(crate) fn deliver(&self, stream: quinn::StreamId) -> bool {
        let mut g = crate::util::lock(&self.inner);
        if g.0 {
            return false;
        }
        match stream.dir() {
            quinn::Dir::Uni => g.1.uni.insert(stream.index()),
            quinn::Dir::Bi => g.1.bi.insert(stream.index()),
        }
        true
    }

    /// Whether the readers must drain (a move has begun on this end).
    pub(crate) fn draining(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// The readers have drained, or ended: nothing more will be delivered over QUIC.
    pub(crate) fn set_drained(&self) {
        self.drained.send_replace(true);
    }

    /// Whether the carrier moved on (the QUIC connection's end is not the carrier's).
    pub(crate) fn frozen(&self) -> bool {
        crate::util::lock(&self.inner).0
    }

    /// Drains the readers, stops deliveries and returns what was delivered.
    async fn freeze(&self) -> Summary {
        self.drain.send_replace(true);
        let mut drained = self.drained.subscribe();
        let _ = drained.wait_for(|d| *d).await;
        let mut g = crate::util::lock(&self.inner);
        g.0 = true;
        g.1.clone()
    }

    #[cfg(test)]
    fn freeze_now(&self) -> Summary {
        let mut g = crate::util::lock(&self.inner);
        g.0 = true;
        g.1.clone()
    }
}

/// A message the QUIC sending loop had taken and could not settle: the stream it went on
/// (`None`: it never left), and the message.
#[derive(Debug)]
pub(crate) struct Handback {
    pub(crate) stream: Option<quinn::StreamId>,
    pub(crate) item: Item,
}

#[derive(Debug, Default)]
struct Phase {
    /// A move has begun.
    begun: bool,
    /// The sending loop ended before any move: the carrier cannot move any more.
    sender_done: bool,
    handback: Option<oneshot::Sender<Vec<Handback>>>,
}

/// What a QUIC carrier needs to move to TLS/TCP, shared by the carrier, its sending loop and
/// (on a listener) the listener that receives the client's move.
#[derive(Debug)]
pub(crate) struct QuicMove {
    conn: quinn::Connection,
    outbox: Arc<Outbox>,
    /// The carrier's event queue, until the QUIC connection's reader has sent its last event
    /// (then the queue must be able to close) or the carrier moved (the stream core has it).
    events: Mutex<Option<EventTx>>,
    limits: ReceiveLimits,
    dormant_timeout: Duration,
    keepalive: Option<Duration>,
    pub(crate) receipts: Arc<Receipts>,
    halt: watch::Sender<bool>,
    phase: Mutex<Phase>,
    handed_back: Mutex<Option<oneshot::Receiver<Vec<Handback>>>>,
    /// The move's outcome: `Ok` once the carrier runs over TLS/TCP.
    outcome: watch::Sender<Option<std::result::Result<(), String>>>,
    core: OnceLock<Arc<StreamCore>>,
}

/// What a QUIC carrier's move needs from its configuration.
pub(crate) struct MoveSettings {
    pub(crate) limits: ReceiveLimits,
    pub(crate) dormant_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
}

impl QuicMove {
    /// The carrier's [`Activity`](crate::path::Activity) (its outbox's).
    pub(crate) fn activity(&self) -> &crate::path::Activity {
        self.outbox.activity()
    }

    pub(crate) fn new(
        conn: quinn::Connection,
        outbox: Arc<Outbox>,
        events: EventTx,
        settings: MoveSettings,
    ) -> Arc<Self> {
        let (tx, rx) = oneshot::channel();
        Arc::new(QuicMove {
            conn,
            outbox,
            events: Mutex::new(Some(events)),
            limits: settings.limits,
            dormant_timeout: settings.dormant_timeout,
            keepalive: settings.keepalive,
            receipts: Default::default(),
            halt: watch::channel(false).0,
            phase: Mutex::new(Phase {
                handback: Some(tx),
                ..Phase::default()
            }),
            handed_back: Mutex::new(Some(rx)),
            outcome: watch::channel(None).0,
            core: OnceLock::new(),
        })
    }

    pub(crate) fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    pub(crate) fn conn(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// The QUIC connection ended without a move (its reader sent the carrier's last event):
    /// let go of the event queue, so that it closes.
    pub(crate) fn release_events(&self) {
        crate::util::lock(&self.events).take();
    }

    fn take_events(&self) -> Option<EventTx> {
        crate::util::lock(&self.events).take()
    }

    /// Whether the carrier's event queue is gone (the application dropped the carrier, or
    /// the carrier ended).
    fn events_gone(&self) -> bool {
        crate::util::lock(&self.events)
            .as_ref()
            .is_none_or(|e| e.is_closed())
    }

    /// What the sending loop watches: true once it must stop and hand back.
    pub(crate) fn halted(&self) -> watch::Receiver<bool> {
        self.halt.subscribe()
    }

    /// The carrier's identity (the QUIC connection's exporter); `None` before the handshake
    /// completed.
    pub(crate) fn identity(&self) -> Option<Token> {
        let mut out = [0u8; TOKEN_LEN];
        self.conn
            .export_keying_material(&mut out, IDENTITY_LABEL, b"")
            .ok()?;
        Some(out)
    }

    /// The stream core the carrier runs on once it moved.
    pub(crate) fn core(&self) -> Option<Arc<StreamCore>> {
        self.core.get().cloned()
    }

    /// Whether a move has begun (the QUIC connection's end then says nothing).
    pub(crate) fn moving(&self) -> bool {
        crate::util::lock(&self.phase).begun
    }

    /// The sending loop ended with what it handed back. Returns true if a move has begun:
    /// the carrier's sending task then waits for the move and the TLS/TCP carrier's end.
    pub(crate) fn sender_ended(&self, handed: Vec<Handback>) -> bool {
        let mut phase = crate::util::lock(&self.phase);
        if !phase.begun {
            phase.sender_done = true;
            return false;
        }
        if let Some(tx) = phase.handback.take() {
            let _ = tx.send(handed);
        }
        true
    }

    /// After the sending loop was halted: waits for the move, then for our direction's end
    /// over TLS/TCP.
    pub(crate) async fn after_move(&self) -> Result<()> {
        let mut rx = self.outcome.subscribe();
        let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone());
        match outcome {
            Ok(Some(Ok(()))) => match self.core() {
                Some(core) => core.finished().await,
                None => Err(Error::Closed),
            },
            Ok(Some(Err(e))) => Err(ConnectionError::Failed(e).into()),
            _ => Err(Error::Closed),
        }
    }

    /// Starts a move: halts the sending loop and returns what it handed back. `None` if the
    /// carrier can no longer move (its sending loop ended: closed and settled, or failed).
    async fn halt_sender(&self) -> Option<Vec<Handback>> {
        {
            let mut phase = crate::util::lock(&self.phase);
            if phase.begun || phase.sender_done {
                return None;
            }
            phase.begun = true;
        }
        self.halt.send_replace(true);
        let rx = crate::util::lock(&self.handed_back).take()?;
        Some(rx.await.unwrap_or_default())
    }

    /// Finishes a move over `stream`: closes QUIC, settles or requeues what was handed back
    /// by the peer's receipts, and runs the carrier as a TLS/TCP carrier named by `token`.
    async fn finish<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        (token, client): (Token, bool),
        theirs: &Summary,
        handed: Vec<Handback>,
    ) -> Result<Arc<StreamCore>>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.conn.close(MOVED_CODE.into(), b"moved to TLS/TCP");
        let Some(events) = self.take_events() else {
            // The QUIC connection had already ended the carrier (its last event is out).
            let why = "the carrier ended before it could move";
            self.outbox.fail_all(why);
            self.outcome.send_replace(Some(Err(why.into())));
            return Err(Error::Closed);
        };
        for h in handed {
            match h.stream {
                Some(s) if theirs.contains(s) => {
                    self.outbox.update(h.item.id, SendStatus::Acked, true);
                }
                _ => self.outbox.requeue(h.item),
            }
        }
        self.outbox.set_order_rule(tls_tcp::order_rule);
        let settings = CoreSettings {
            limits: self.limits,
            token: Some(token),
            client,
            dormant_timeout: self.dormant_timeout,
            keepalive: self.keepalive,
        };
        // The application hears of the move before anything arrives over TLS/TCP.
        let _ = events
            .send(Event::ProtocolChange {
                protocol: Protocol::TlsTcp,
            })
            .await;
        let core = StreamCore::new(self.outbox.clone(), events, settings);
        core.attach(
            stream,
            peer,
            Attach::New {
                preamble: Vec::new(),
                early: None,
            },
        )?;
        let _ = self.core.set(core.clone());
        self.outcome.send_replace(Some(Ok(())));
        Ok(core)
    }

    /// The move failed after it began: the carrier ends with `error` (what it held fails).
    async fn failed(&self, error: Error) -> Error {
        let why = match &error {
            Error::Connection(e) => e.to_string(),
            e => e.to_string(),
        };
        let why = format!("moving the carrier from QUIC to TLS/TCP failed: {why}");
        self.conn.close(MOVED_CODE.into(), b"move failed");
        self.outbox.fail_all(&why);
        self.outcome.send_replace(Some(Err(why.clone())));
        if let Some(events) = self.take_events() {
            let error = ConnectionError::Failed(why.clone());
            let _ = events.send(Event::ConnectionError(error.into())).await;
        }
        ConnectionError::Failed(why).into()
    }

    /// Runs the exchange of receipts for at most `wait`; if it fails or runs out of time
    /// (`late` says so) the move failed and the carrier ends.
    async fn within<T>(
        &self,
        wait: Duration,
        exchange: impl std::future::Future<Output = Result<T>>,
        late: &str,
    ) -> Result<T> {
        let error = match tokio::time::timeout(wait, exchange).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => e,
            Err(_) => ConnectionError::Failed(late.into()).into(),
        };
        Err(self.failed(error).await)
    }

    /// The client's side: moves the carrier onto `stream` (a TLS/TCP connection to the
    /// listener the QUIC connection reached). Three frames (docs/WIRE.md): HELLO with MOVE
    /// and the carrier's identity; the listener's answer with its receipts once its sending
    /// loop has stopped; our receipts, once our reader has drained what the listener sent.
    pub(crate) async fn move_client<S>(
        &self,
        net: &dyn Net,
        mut stream: S,
        peer: SocketAddr,
        wait: Duration,
    ) -> Result<Arc<StreamCore>>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let identity = self.identity().ok_or(Error::Closed)?;
        let token = crate::establish::attempt::new_token(net).ok_or(Error::Closed)?;
        let Some(handed) = self.halt_sender().await else {
            return Err(Error::Closed);
        };
        let exchange = async {
            let mut hello = tls_tcp::hello_frame(&token, 0, 0, FLAG_MOVE);
            hello.extend(identity_frame(&identity));
            write(&mut stream, &hello).await?;
            let mut first = Vec::new();
            let h = tls_tcp::read_hello(&mut stream, &mut first)
                .await?
                .ok_or(Error::from(Violation::HelloExpected))?;
            if h.flags & FLAG_REFUSED != 0 || h.flags & FLAG_MOVE == 0 || h.token != token {
                return Err(ConnectionError::UnknownCarrier.into());
            }
            let (theirs_identity, theirs) = read_moved(&mut stream).await?;
            let theirs = theirs.ok_or(Error::from(Violation::MalformedHello))?;
            if theirs_identity != identity {
                return Err(ConnectionError::UnknownCarrier.into());
            }
            // The listener's sending loop has stopped: what our reader holds whole now is
            // all it will ever deliver over QUIC.
            let mine = self.receipts.freeze().await;
            write(&mut stream, &mine.frame(&identity)).await?;
            Ok::<_, Error>(theirs)
        };
        let theirs = self.within(wait, exchange, "no answer in time").await?;
        self.finish(stream, peer, (token, true), &theirs, handed)
            .await
    }

    /// The listener's side: the client moves this carrier onto `stream`, naming it `token`
    /// from now on.
    pub(crate) async fn move_server<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        token: Token,
        wait: Duration,
    ) -> Result<Arc<StreamCore>>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let identity = self.identity().ok_or(Error::Closed)?;
        let Some(handed) = self.halt_sender().await else {
            return Err(Error::Closed);
        };
        let exchange = async {
            // The client's sending loop stopped before it wrote HELLO: what our reader holds
            // whole now is all it will ever deliver over QUIC.
            let mine = self.receipts.freeze().await;
            let mut reply = tls_tcp::hello_frame(&token, 0, 0, FLAG_MOVE);
            reply.extend(mine.frame(&identity));
            write(&mut stream, &reply).await?;
            let (theirs_identity, theirs) = read_moved(&mut stream).await?;
            match theirs {
                Some(theirs) if theirs_identity == identity => Ok::<_, Error>(theirs),
                _ => Err(Violation::MalformedHello.into()),
            }
        };
        let theirs = self
            .within(wait, exchange, "no receipts from the client in time")
            .await?;
        self.finish(stream, peer, (token, false), &theirs, handed)
            .await
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| tls_tcp::tcp("write", e))?;
    stream.flush().await.map_err(|e| tls_tcp::tcp("write", e))
}

/// How a client QUIC carrier decides to move: what it needs to reach the listener over
/// TLS/TCP.
pub(crate) struct MoveWatch {
    pub(crate) net: Arc<dyn Net>,
    pub(crate) host: String,
    pub(crate) config: crate::Configuration,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The client's current interface (`None` while dormant), when a path manager steers it.
    pub(crate) path: Option<crate::path::CurrentPath>,
    /// Every address the listener's name resolved to: when the QUIC peer's address does not
    /// answer over TLS/TCP either (its IP version broke), the others are tried.
    pub(crate) addrs: Vec<SocketAddr>,
}

/// How often the watch looks at the QUIC connection.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// The longest wait between two attempts to reach the listener over TLS/TCP.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Watches a client's QUIC carrier and moves it to TLS/TCP once QUIC stops working: QUIC has
/// gone unanswered for twice the path manager's silence and (where a path manager steers the
/// carrier) it found no other interface to go on with (the carrier is dormant). The move happens only if
/// a TLS/TCP connection to the listener succeeds, i.e. on a path that still works; failing
/// that it tries again (backing off) while QUIC stays silent.
pub(crate) async fn watch(mv: Arc<QuicMove>, w: MoveWatch) -> Option<Arc<StreamCore>> {
    let policy = w.config.paths.clone();
    let mut last = crate::transport::quic::health(&mv.conn);
    let mut unanswered: Option<Instant> = None;
    let mut backoff = Duration::from_millis(500);
    let mut next_try = Instant::now();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if mv.conn.close_reason().is_some() || mv.moving() || mv.events_gone() {
            return None;
        }
        let h = crate::transport::quic::health(&mv.conn);
        let now = Instant::now();
        if h.rx != last.rx {
            unanswered = None;
            backoff = Duration::from_millis(500);
        } else if h.tx != last.tx && unanswered.is_none() {
            unanswered = Some(now);
        }
        last = h;
        let silence = (h.srtt * policy.silence_rtts).max(policy.silence_floor) * 2;
        // Silent, and (where a path manager steers the carrier) no other interface helped.
        let stuck = unanswered.is_some_and(|t| now.duration_since(t) > silence)
            && w.path
                .as_ref()
                .is_none_or(|p| crate::util::lock(p).is_none());
        // Before its handshake completed (a 0-RTT carrier) a QUIC connection has no identity.
        if !stuck || now < next_try || mv.identity().is_none() {
            continue;
        }
        // The QUIC peer's address first, the other IP version's an attempt delay later;
        // the first TLS/TCP connection up wins.
        let quic_peer = mv.conn.remote_address();
        let mut targets = vec![quic_peer];
        targets.extend(crate::net::other_version(&w.addrs, quic_peer));
        let connect = first_stream(&w, &targets);
        match tokio::time::timeout(w.config.connect_timeout, connect).await {
            Ok(Ok((stream, peer))) => {
                let wait = w.config.connect_timeout;
                return match mv.move_client(w.net.as_ref(), stream, peer, wait).await {
                    Ok(core) => {
                        if let Some(path) = &w.path {
                            let list = w.net.interfaces();
                            let best = crate::path::rank(&policy, &list, peer.ip());
                            *crate::util::lock(path) = best.first().map(|c| c.interface.clone());
                        }
                        Some(core)
                    }
                    Err(e) => {
                        tracing::debug!("carrier move to TLS/TCP failed: {e}");
                        None
                    }
                };
            }
            Ok(Err(e)) => tracing::debug!("TLS/TCP to {quic_peer} for a move failed: {e}"),
            Err(_) => tracing::debug!("TLS/TCP to {quic_peer} for a move timed out"),
        }
        next_try = Instant::now() + backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects TLS/TCP to `targets`, each an attempt delay after the one before (at once when
/// one fails); the first up wins, with its address. The last error if none comes up.
async fn first_stream(
    w: &MoveWatch,
    targets: &[SocketAddr],
) -> crate::Result<(
    tokio_rustls::client::TlsStream<Box<dyn crate::net::ByteStream>>,
    SocketAddr,
)> {
    let mut running = tokio::task::JoinSet::new();
    let mut last = None;
    let mut next = 0;
    let delay = w.config.attempt_delay.max(crate::MIN_ATTEMPT_DELAY);
    loop {
        if next < targets.len() {
            let (net, host, config, tls) = (
                w.net.clone(),
                w.host.clone(),
                w.config.clone(),
                w.tls.clone(),
            );
            let to = targets[next];
            running.spawn(async move {
                let r =
                    tls_tcp::connect(net.as_ref(), to, None, (&host, false), &config, tls).await;
                (to, r)
            });
            next += 1;
        }
        let more = next < targets.len();
        let done = tokio::select! {
            biased;
            Some(done) = running.join_next(), if !running.is_empty() => Some(done),
            _ = tokio::time::sleep(delay), if more => None,
        };
        match done {
            Some(Ok((to, Ok(stream)))) => return Ok((stream, to)),
            Some(Ok((_, Err(e)))) => last = Some(e),
            Some(Err(_)) => {}
            None => continue,
        }
        if running.is_empty() && next >= targets.len() {
            return Err(last.unwrap_or_else(|| {
                crate::Error::io(
                    "moving to TLS/TCP",
                    std::io::Error::other("no address to connect to"),
                )
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(dir: quinn::Dir, index: u64) -> quinn::StreamId {
        quinn::StreamId::new(quinn::Side::Client, dir, index)
    }

    #[test]
    fn receipts_compact_to_a_floor_and_freeze() {
        let r = Receipts::default();
        for i in [0, 1, 3, 5] {
            assert!(r.deliver(sid(quinn::Dir::Uni, i)));
        }
        assert!(r.deliver(sid(quinn::Dir::Bi, 2)));
        let s = r.freeze_now();
        assert_eq!(s.uni.floor, 2);
        assert_eq!(s.uni.above, BTreeSet::from([3, 5]));
        assert_eq!(s.bi.floor, 0);
        assert!(s.contains(sid(quinn::Dir::Uni, 1)));
        assert!(!s.contains(sid(quinn::Dir::Uni, 2)));
        assert!(s.contains(sid(quinn::Dir::Bi, 2)));
        assert!(!s.contains(sid(quinn::Dir::Bi, 0)));
        // Frozen: nothing more is delivered, and nothing more counts.
        assert!(!r.deliver(sid(quinn::Dir::Uni, 2)));
        assert!(r.frozen());
        assert_eq!(r.freeze_now(), s);
    }

    #[test]
    fn the_floor_rises_through_gaps_as_they_fill() {
        let mut seen = Seen::default();
        for i in [0, 1, 3, 5, 3, 1] {
            seen.insert(i);
        }
        assert_eq!(
            (seen.floor, seen.above.clone()),
            (2, BTreeSet::from([3, 5]))
        );
        seen.insert(2);
        assert_eq!((seen.floor, seen.above.clone()), (4, BTreeSet::from([5])));
        seen.insert(4);
        assert_eq!((seen.floor, seen.above.clone()), (6, BTreeSet::new()));
        assert!((0..6).all(|i| seen.contains(i)) && !seen.contains(6));
    }

    #[test]
    fn moved_frames_round_trip_and_reject_garbage() {
        let mut s = Summary::default();
        s.uni.floor = 7;
        s.uni.above = BTreeSet::from([9, 12]);
        s.bi.floor = 1;
        let identity = [7u8; TOKEN_LEN];
        let frame = s.frame(&identity);
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&frame[..HEADER_LEN]);
        let h = FrameHeader::decode(&header, MOVED_MAX).expect("valid header");
        assert_eq!(h.kind, TYPE_MOVED);
        assert_eq!(h.len as usize, frame.len() - HEADER_LEN);
        let (id, back) = Summary::parse(&frame[HEADER_LEN..]).expect("parses");
        assert_eq!((id, back.as_ref()), (identity, Some(&s)));
        let only = identity_frame(&identity);
        assert_eq!(
            Summary::parse(&only[HEADER_LEN..]).ok(),
            Some((identity, None))
        );
        // Cut short, one byte too many, an index not above its floor, too many indices.
        let payload = &frame[HEADER_LEN..];
        assert!(Summary::parse(&payload[..payload.len() - 1]).is_err());
        let mut long = payload.to_vec();
        long.push(0);
        assert!(Summary::parse(&long).is_err());
        let mut low = Summary::default();
        low.uni.floor = 5;
        low.uni.above = BTreeSet::from([5]);
        assert!(Summary::parse(&low.frame(&identity)[HEADER_LEN..]).is_err());
        let mut many = identity.to_vec();
        many.extend_from_slice(&0u64.to_be_bytes());
        many.extend_from_slice(&(MAX_ABOVE as u32 + 1).to_be_bytes());
        assert!(Summary::parse(&many).is_err());
    }
}
