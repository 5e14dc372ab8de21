//! Messages: what applications send and receive, their properties, and what happens to them.

use std::time::Duration;

use bytes::Bytes;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A carrier-scoped number the sender gives each message, in `send` order starting at 0.
///
/// It names the message in [`SendHandle`]s and in [`MessageProperties::antecedents`]. On
/// TLS/TCP it is also the id field of the frame header, so the receiver sees the same number
/// in [`Received::id`]; on QUIC the receiver sees the stream ID instead (docs/WIRE.md).
pub type MessageId = u64;

/// Per-message properties (Post Sockets §4.1, RFC 9622 §9.1.3). The defaults are those of a
/// plain reliable, ordered message with no deadline.
#[derive(Debug, Clone, Eq)]
pub struct MessageProperties {
    /// Time after which the message is useless. A message that cannot be handed to the network
    /// in time (so that it would arrive after the deadline, judged by the sender's estimate of
    /// the forward delay: smoothed RTT less half the minimum, plus half again for its lag
    /// behind a growing queue) is dropped and reported [`SendStatus::Expired`]. On QUIC a message still
    /// unacknowledged at its deadline less that one-way estimate is reset, so nothing of it is
    /// sent after then; what was already on the path still arrives, after the deadline only
    /// when the path's delay has grown past the estimate (a queue filling, a slower path).
    /// TLS/TCP cannot recall what TCP has taken.
    pub lifetime: Option<Duration>,
    /// 0 is the most urgent. Under a backlog, lower niceness is sent first; equal niceness
    /// keeps `send` order. An ordered message never overtakes an earlier ordered one (order
    /// wins), so niceness reorders unordered messages, and unordered against ordered ones. On QUIC an unordered message's stream also gets it as priority.
    pub niceness: u32,
    /// Messages (of this carrier) that the peer application must receive before this one.
    /// This message is held back until that is certain: on one ordered byte stream (TLS/TCP),
    /// or between ordered QUIC streams, once the antecedent is handed to the transport;
    /// otherwise once the antecedent is acknowledged. If an antecedent fails or expires this
    /// message fails too.
    pub antecedents: Vec<MessageId>,
    /// Safe to replay: the only kind of message allowed into 0-RTT data.
    pub idempotent: bool,
    /// Hand to the network at once without waiting to coalesce (TLS/TCP flushes its record).
    pub immediate: bool,
    /// Delivered in order with the other ordered messages of the carrier (the default).
    /// Unordered messages may overtake and be overtaken.
    pub ordered: bool,
    /// Retransmitted until acknowledged (the default). Unreliable messages travel as QUIC
    /// DATAGRAM frames and are never retransmitted; they must fit one datagram.
    pub reliable: bool,
}

/// Field by field, as derived, except that two empty antecedent lists compare equal without
/// a call to `memcmp`. `send` compares each message's properties with the last message's
/// (to share their copy), and there the derived comparison cost about 100 ns: the slice
/// comparison calls `memcmp` even for zero bytes, on the empty vectors' dangling pointers,
/// and glibc's AVX-512 `memcmp` does a masked load there whose suppressed fault on the
/// unmapped page is slow on this machine's (AMD) cores (a fifth of the CPU of `send`).
impl PartialEq for MessageProperties {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so that a new field cannot be left out.
        let MessageProperties {
            lifetime,
            niceness,
            antecedents,
            idempotent,
            immediate,
            ordered,
            reliable,
        } = self;
        *lifetime == other.lifetime
            && *niceness == other.niceness
            && *idempotent == other.idempotent
            && *immediate == other.immediate
            && *ordered == other.ordered
            && *reliable == other.reliable
            && antecedents.len() == other.antecedents.len()
            && (antecedents.is_empty() || *antecedents == other.antecedents)
    }
}

impl Default for MessageProperties {
    fn default() -> Self {
        DEFAULT_PROPERTIES
    }
}

const DEFAULT_PROPERTIES: MessageProperties = MessageProperties {
    lifetime: None,
    niceness: 0,
    antecedents: Vec::new(),
    idempotent: false,
    immediate: false,
    ordered: true,
    reliable: true,
};

/// The default properties, for [`Props::Default`] to point at.
static DEFAULT: MessageProperties = DEFAULT_PROPERTIES;

/// A queued message's properties, shared by its parts and its queue entries: the default
/// properties (most messages') as a static, others in an `Arc`. An `Arc` per message was
/// a reference count raised when the message was queued and dropped when it was written,
/// two atomic updates (about 7 ns each on one core) and, on a runtime with several workers,
/// a cache line passed from the application's core to the writer's and back per message.
#[derive(Clone, Debug)]
pub(crate) enum Props {
    Default,
    Shared(Arc<MessageProperties>),
}

impl Props {
    /// `props`, without an allocation if they are the default ones.
    pub(crate) fn new(props: MessageProperties) -> Props {
        if props == DEFAULT {
            Props::Default
        } else {
            Props::Shared(Arc::new(props))
        }
    }
}

impl std::ops::Deref for Props {
    type Target = MessageProperties;

    fn deref(&self) -> &MessageProperties {
        match self {
            Props::Default => &DEFAULT,
            Props::Shared(props) => props,
        }
    }
}

/// A message to send: bytes plus properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The payload.
    pub data: Bytes,
    /// How the stack should treat it.
    pub properties: MessageProperties,
}

impl Message {
    /// A message with default properties.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Message {
            data: data.into(),
            properties: MessageProperties::default(),
        }
    }
    /// Sets the lifetime.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.properties.lifetime = Some(lifetime);
        self
    }
    /// Sets the niceness (0 = most urgent).
    pub fn niceness(mut self, niceness: u32) -> Self {
        self.properties.niceness = niceness;
        self
    }
    /// Adds an antecedent.
    pub fn after(mut self, antecedent: MessageId) -> Self {
        self.properties.antecedents.push(antecedent);
        self
    }
    /// Marks the message idempotent.
    pub fn idempotent(mut self) -> Self {
        self.properties.idempotent = true;
        self
    }
    /// Marks the message immediate.
    pub fn immediate(mut self) -> Self {
        self.properties.immediate = true;
        self
    }
    /// Lets the message be delivered out of order.
    pub fn unordered(mut self) -> Self {
        self.properties.ordered = false;
        self
    }
    /// Sends the message unreliably (a QUIC DATAGRAM frame).
    pub fn unreliable(mut self) -> Self {
        self.properties.reliable = false;
        self
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::new(data)
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::new(data)
    }
}

impl From<&'static [u8]> for Message {
    fn from(data: &'static [u8]) -> Self {
        Message::new(Bytes::from_static(data))
    }
}

/// A whole message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The transport's name for the message: the sender's [`MessageId`] on TLS/TCP, the
    /// QUIC stream ID on QUIC, and a receive counter for unreliable datagrams.
    pub id: MessageId,
    /// The payload.
    pub data: Bytes,
    /// False when the message arrived unreliably (a datagram).
    pub reliable: bool,
}

/// A part of a message delivered before the whole of it (partial delivery, see
/// [`crate::Configuration::receive_min_incomplete`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPartial {
    /// As in [`Received::id`].
    pub id: MessageId,
    /// Where this part starts within the message.
    pub offset: u64,
    /// The bytes of this part.
    pub data: Bytes,
    /// This part ends the message.
    pub end: bool,
}

/// Where a sent message is. The terminal states are `Acked` (reliable messages on every
/// stack: QUIC acknowledgements, carrier-level ACK frames on TLS/TCP), `Expired`, `Failed`,
/// and `Sent` for unreliable datagrams (and for stream messages the peer can no longer
/// acknowledge because it closed its direction first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Waiting in the carrier's queue (for capacity, antecedents or its turn by niceness).
    Queued,
    /// Handed to the transport protocol.
    Sent,
    /// The peer's stack has every byte of it.
    Acked,
    /// Its lifetime ended before the peer acknowledged it: it was dropped from the queue, or
    /// (QUIC) its stream was reset. The peer never delivers it after the deadline; if its
    /// last byte was already on the wire it may have been delivered just before.
    Expired,
    /// Could not be sent; the reason says why.
    Failed(String),
}

impl SendStatus {
    /// A short lower-case name ("queued", "sent", ...).
    pub fn name(&self) -> &'static str {
        match self {
            SendStatus::Queued => "queued",
            SendStatus::Sent => "sent",
            SendStatus::Acked => "acked",
            SendStatus::Expired => "expired",
            SendStatus::Failed(_) => "failed",
        }
    }
}

/// A state tasks can wait on: behind a mutex, with a count of the tasks waiting, so that a
/// change with nobody waiting wakes nobody and costs no notification (most send handles are
/// never awaited).
#[derive(Debug, Default)]
struct Watched<T> {
    state: Mutex<(T, usize)>,
    changed: Notify,
}

/// Counts a task in [`Watched::wait_for`] while it waits (also when its future is dropped).
struct Waiting<'a, T>(&'a Watched<T>);

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        crate::util::lock(&self.0.state).1 -= 1;
    }
}

impl<T> Watched<T> {
    fn new(state: T) -> Self {
        Watched {
            state: Mutex::new((state, 0)),
            changed: Notify::new(),
        }
    }

    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&crate::util::lock(&self.state).0)
    }

    /// Changes the state (`change` says whether it did) and wakes the waiters, if any. A
    /// waiter counts itself under the lock before its first look at the state: if it is not
    /// counted yet, that look sees the change.
    fn update(&self, change: impl FnOnce(&mut T) -> bool) {
        let waiters = {
            let mut state = crate::util::lock(&self.state);
            if !change(&mut state.0) {
                return;
            }
            state.1
        };
        if waiters > 0 {
            self.changed.notify_waiters();
        }
    }

    async fn wait_for<R>(&self, check: impl Fn(&T) -> Option<R>) -> R {
        crate::util::lock(&self.state).1 += 1;
        let _waiting = Waiting(self);
        crate::util::until(&self.changed, || self.read(&check)).await
    }
}

/// The shared state behind a [`SendHandle`]: the status and whether it is terminal.
#[derive(Debug)]
pub(crate) struct StatusCell(Watched<(SendStatus, bool)>);

impl StatusCell {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StatusCell(Watched::new((SendStatus::Queued, false))))
    }

    fn get(&self) -> (SendStatus, bool) {
        self.0.read(Clone::clone)
    }

    /// Sets the status; a terminal status is final. With no handle left (the outbox holds
    /// the only reference; most applications drop the handle `send` returns) nobody can look
    /// at it again, and the cell is left alone.
    pub(crate) fn set(self: &Arc<Self>, status: SendStatus, terminal: bool) {
        if Arc::strong_count(self) == 1 {
            return;
        }
        self.0.update(|state| {
            if state.1 {
                return false;
            }
            *state = (status, terminal);
            true
        });
    }

    async fn wait_for(&self, done: impl Fn(&(SendStatus, bool)) -> bool) -> SendStatus {
        self.0
            .wait_for(|state| done(state).then(|| state.0.clone()))
            .await
    }
}

/// The statuses of a carrier's *plain* messages (docs/PERFORMANCE-PLAN.md, step 2): whole,
/// reliable, ordered messages with no antecedents, no lifetime and not idempotent, queued on a
/// stream carrier (TLS/TCP) while nothing else waits in its queue. Those are written, and
/// acknowledged, in id order, so instead of a cell each their statuses are marks: every plain
/// message below `sent` is written, and `settled` is a list of `(end, status)` segments, each
/// settling every plain message from the previous end (or 0) up to its own (exclusive) the
/// same way: acknowledged by one ACK after another, or ended by the carrier.
///
/// A mark only ever covers plain messages: a message with a cell of its own inside a
/// segment's range is never read through it.
#[derive(Debug, Default)]
pub(crate) struct PlainMarks(Watched<MarksState>);

#[derive(Debug, Default)]
struct MarksState {
    sent: MessageId,
    settled: Vec<(MessageId, SendStatus)>,
}

impl MarksState {
    /// Plain message `id`'s status and whether it is terminal.
    fn get(&self, id: MessageId) -> (SendStatus, bool) {
        let i = self.settled.partition_point(|(end, _)| *end <= id);
        if let Some((_, status)) = self.settled.get(i) {
            return (status.clone(), true);
        }
        if id < self.sent {
            (SendStatus::Sent, false)
        } else {
            (SendStatus::Queued, false)
        }
    }
}

impl PlainMarks {
    fn get(&self, id: MessageId) -> (SendStatus, bool) {
        self.0.read(|marks| marks.get(id))
    }

    /// Every plain message below `end` (and not settled before) is now `status` (terminal),
    /// or written (`Sent`, not terminal). Marks only move forward.
    pub(crate) fn advance(&self, end: MessageId, status: SendStatus, terminal: bool) {
        self.0.update(|marks| {
            if !terminal {
                let moved = end > marks.sent;
                marks.sent = marks.sent.max(end);
                return moved;
            }
            let settled_end = marks.settled.last().map_or(0, |(e, _)| *e);
            if end <= settled_end {
                return false;
            }
            match marks.settled.last_mut() {
                Some((e, s)) if *s == status => *e = end,
                _ => marks.settled.push((end, status)),
            }
            true
        });
    }

    async fn wait_for(
        &self,
        id: MessageId,
        done: impl Fn(&(SendStatus, bool)) -> bool,
    ) -> SendStatus {
        self.0
            .wait_for(|marks| {
                let state = marks.get(id);
                done(&state).then_some(state.0)
            })
            .await
    }
}

/// Where a [`SendHandle`] reads its message's status.
#[derive(Debug, Clone)]
pub(crate) enum Tracker {
    /// The message's own cell.
    Cell(Arc<StatusCell>),
    /// The carrier's marks of its plain messages.
    Plain(Arc<PlainMarks>),
}

impl Tracker {
    fn get(&self, id: MessageId) -> (SendStatus, bool) {
        match self {
            Tracker::Cell(cell) => cell.get(),
            Tracker::Plain(marks) => marks.get(id),
        }
    }

    async fn wait_for(
        &self,
        id: MessageId,
        done: impl Fn(&(SendStatus, bool)) -> bool,
    ) -> SendStatus {
        match self {
            Tracker::Cell(cell) => cell.wait_for(done).await,
            Tracker::Plain(marks) => marks.wait_for(id, done).await,
        }
    }
}

/// The sender's view of one message: its id and its per-message events. Dropping the handle
/// does not affect the message.
#[derive(Debug, Clone)]
pub struct SendHandle {
    pub(crate) id: MessageId,
    pub(crate) status: Tracker,
}

impl SendHandle {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The status now.
    pub fn status(&self) -> SendStatus {
        self.status.get(self.id).0
    }

    /// Waits for the terminal outcome: exactly one of `Acked` (reliable), `Sent`
    /// (unreliable), `Expired` or `Failed`. (A carrier that is dropped settles every message
    /// it holds as `Failed`.)
    pub async fn outcome(&self) -> SendStatus {
        self.status
            .wait_for(self.id, |(_, terminal)| *terminal)
            .await
    }

    /// Waits until the message has been handed to the transport (or settled otherwise);
    /// returns the status then.
    pub async fn sent(&self) -> SendStatus {
        self.status
            .wait_for(self.id, |(s, terminal)| {
                *terminal || *s != SendStatus::Queued
            })
            .await
    }
}

/// What a carrier tells its application, in order (Post Sockets §4.2, RFC 9622 §8.3, §9.3).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The carrier is established; always the first event.
    Ready,
    /// A whole message arrived.
    Received(Received),
    /// Part of a message arrived.
    ReceivedPartial(ReceivedPartial),
    /// One message could not be received (for example it exceeded the maximum message size,
    /// or was reset by the sender after part of it was delivered); the carrier goes on.
    ReceiveError {
        /// The transport's name for the message.
        id: MessageId,
        /// Why.
        error: crate::Error,
    },
    /// The carrier's path changed: the peer is now reached at (or seen from) `remote`, for
    /// example after the peer's NAT rebound its mapping (QUIC migrates the connection).
    PathChange {
        /// The peer's new address.
        remote: std::net::SocketAddr,
    },
    /// This end moved the carrier to another local interface (a QUIC migration, or a new
    /// TLS/TCP transient continuing the carrier).
    Handover {
        /// The interface now in use.
        interface: String,
        /// Why.
        reason: crate::HandoverReason,
    },
    /// The carrier moved to another protocol stack (a QUIC carrier raced with
    /// `protocol = "any"` whose QUIC stopped working on a path where TLS/TCP still works):
    /// messages the peer had not acknowledged go again over the new stack, none twice
    /// (docs/WIRE.md, "Moving from QUIC").
    ProtocolChange {
        /// The protocol stack now in use.
        protocol: crate::Protocol,
    },
    /// No path to the peer works: the carrier keeps what is sent and waits for a path (the
    /// next event is a `Handover` with reason `Recovered`, or the dormant timeout's
    /// `ConnectionError`).
    Dormant,
    /// The peer closed the carrier cleanly; always the last event.
    Closed,
    /// The carrier failed (the transient died or the peer violated the wire format); always
    /// the last event.
    ConnectionError(crate::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_equal_exactly_when_every_field_is() {
        let base = MessageProperties::default();
        assert_eq!(base, MessageProperties::default());
        let with = |f: fn(&mut MessageProperties)| {
            let mut p = MessageProperties::default();
            f(&mut p);
            p
        };
        let variants = [
            with(|p| p.lifetime = Some(Duration::from_millis(5))),
            with(|p| p.niceness = 1),
            with(|p| p.antecedents = vec![0]),
            with(|p| p.idempotent = true),
            with(|p| p.immediate = true),
            with(|p| p.ordered = false),
            with(|p| p.reliable = false),
        ];
        for (i, a) in variants.iter().enumerate() {
            assert_ne!(*a, base, "variant {i}");
            assert_ne!(base, *a, "variant {i}");
            assert_eq!(*a, a.clone(), "variant {i}");
            for (j, b) in variants.iter().enumerate() {
                assert_eq!(i == j, a == b, "variants {i} and {j}");
            }
        }
        let two = with(|p| p.antecedents = vec![0, 1]);
        let other = with(|p| p.antecedents = vec![0, 2]);
        assert_ne!(two, other);
        assert_eq!(two, two.clone());
    }
}
