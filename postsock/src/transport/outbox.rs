//! The carrier's send queue: back-pressure, niceness, antecedents and lifetimes.
//!
//! Every message (or part of one) a carrier sends passes through its [`Outbox`]:
//!
//! * `send` first takes *permits* for the message's bytes from a semaphore sized by
//!   `Configuration::send_buffer`; they return when the message is settled. That bounds the
//!   memory of queued plus in-flight messages: a sender facing a slow path or a receiver that
//!   stopped reading waits in `send` instead of growing a queue.
//! * Items wait in a ready set ordered by (niceness, send order) or, while an antecedent is not
//!   yet safe, in a blocked set. The transient's sending loop takes the best ready item
//!   whenever it has room ([`Outbox::next`]).
//! * A reaper expires items whose lifetime runs out before they are handed to the transient.
//!
//! Everything is kept in ordered structures (the ring buffers of `seqmap.rs`, `BTreeMap`,
//! `BTreeSet`) so the order of events never depends on hashing, and time comes from `tokio::time` only: the outbox behaves identically in the
//! simulator for a given seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::inline::Driven;
use super::seqmap::{LaneSet, SeqMap};
use crate::message::{
    MessageProperties, PlainMarks, Props, SendHandle, SendStatus, StatusCell, Tracker,
};
use crate::ConfigError;
use crate::{Error, MessageId, Result};

/// Bytes charged per message on top of its payload, so empty messages are bounded too.
pub(crate) const PER_MESSAGE_OVERHEAD: usize = 64;
/// Failed message ids remembered for antecedent checks.
const FAILED_MEMORY: usize = 65_536;
/// The least room [`Outbox::take_while`] cuts an item to fit; a smaller room leaves it whole.
pub(crate) const CUT_FROM: usize = 4096;

type StatusTx = Arc<StatusCell>;

/// One unit handed to a transient: a whole message, or a part of one.
#[derive(Debug)]
pub(crate) struct Item {
    pub id: MessageId,
    /// Where `data` starts within the message.
    pub offset: u64,
    pub data: Bytes,
    /// This item ends the message.
    pub fin: bool,
    /// The sender abandoned the message: the transient must make the peer discard it.
    pub abort: bool,
    pub props: Props,
    pub deadline: Option<Instant>,
    seq: u64,
    /// A plain message's (its status is the carrier's [`PlainMarks`], not a cell).
    pub plain: bool,
    _permit: Option<OwnedSemaphorePermit>,
    /// A lane item's send-buffer space, held in [`State::lane_room`] (its `_permit` is
    /// `None`); given a permit of its own, or to the writer's batch, when it is taken.
    lane_room: usize,
}

impl Item {
    /// A copy to send again (0-RTT rejected); the original keeps the buffer permit.
    pub(crate) fn copy_for_resend(&self) -> Item {
        Item {
            id: self.id,
            offset: self.offset,
            data: self.data.clone(),
            fin: self.fin,
            abort: false,
            props: self.props.clone(),
            deadline: self.deadline,
            seq: self.seq,
            plain: self.plain,
            _permit: None,
            lane_room: 0,
        }
    }

    /// Gives its share of the send buffer back (the transport no longer needs the room).
    pub(crate) fn release_permit(&mut self) {
        self._permit = None;
    }

    /// Takes its share of the send buffer, to be given back with others
    /// ([`Outbox::take_while`]).
    pub(crate) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self._permit.take()
    }

    /// Splits off everything after the first `n` bytes as a new item that keeps this item's
    /// place in the queue (used by stream transports to interleave large messages).
    pub(crate) fn split_rest(&mut self, n: usize) -> Option<Item> {
        if self.data.len() <= n {
            return None;
        }
        let rest = self.data.split_off(n);
        let fin = std::mem::replace(&mut self.fin, false);
        Some(Item {
            id: self.id,
            offset: self.offset + n as u64,
            data: rest,
            fin,
            abort: false,
            props: self.props.clone(),
            deadline: self.deadline,
            seq: self.seq,
            plain: self.plain,
            _permit: self._permit.take(),
            lane_room: std::mem::take(&mut self.lane_room),
        })
    }
}

#[derive(Debug)]
struct Live {
    props: Props,
    status: StatusTx,
    /// Some part has been handed to the transient.
    started: bool,
    /// The final part has been handed to the transient.
    dispatched: bool,
    /// The seq of the final part once it waits in the ready set (so does every earlier
    /// part): whatever sorts after it in the ready order is handed over after it.
    fin_ready: Option<u64>,
    /// The seq of the first part queued.
    first_seq: Option<u64>,
    /// The seqs of its parts in the queue (usually one: no allocation of its own).
    parts: SmallVec<[u64; 1]>,
    /// The ordered reliable message sent before this one, if this one is ordered too: it
    /// must be handed to the transport first (RFC 9622 §9.1.3.3, whatever the niceness).
    prev_ordered: Option<MessageId>,
}

#[derive(Debug, Default)]
struct State {
    next_id: MessageId,
    next_seq: u64,
    /// The unsettled messages by id.
    live: SeqMap<Live>,
    failed: BTreeMap<MessageId, &'static str>,
    last_ordered: Option<MessageId>,
    /// The queued items by seq.
    items: SeqMap<Item>,
    /// The ready items as (niceness, seq), in the order they go.
    ready: LaneSet<(u32, u64)>,
    blocked: BTreeSet<u64>,
    /// Blocked items by the message they wait for (re-checked only when it changes).
    waiting: BTreeMap<MessageId, BTreeSet<u64>>,
    deadlines: LaneSet<(Instant, u64)>,
    closed: bool,
    /// The properties of the last message opened.
    last_props: Option<Arc<MessageProperties>>,
    /// Send-buffer space of items a stream writer has taken, not yet given back (see
    /// [`Outbox::take_while`]).
    freed: Option<OwnedSemaphorePermit>,
    /// Plain messages may be queued in `lane` (a stream carrier's outbox).
    lane_on: bool,
    /// Queued plain messages, in id order (docs/PERFORMANCE-PLAN.md, step 2): no `Live`
    /// entry, no ready entry, no cell. Only while `items` is empty does a plain message join
    /// it, so every item here is older than every item in `items`.
    lane: VecDeque<Item>,
    /// The send-buffer space of the lane's items (their `lane_room`), their permits merged
    /// as they are queued. A permit per item was dropped by the writer: the semaphore's
    /// reference count raised on the application's core and dropped on the writer's, per
    /// message; now the writer splits its batch's share off once per batch.
    lane_room: Option<OwnedSemaphorePermit>,
    /// The transient's sending loop waits for an item with nothing in its way: a message
    /// that could go now may be written by the sending thread itself ([`Direct`]). Set by
    /// [`Outbox::next_or_direct`] when it finds nothing ready, taken when an item is.
    direct: Option<Arc<dyn Direct>>,
}

impl State {
    /// Whether nothing is ready to go: neither the ready set nor the lane holds an item.
    fn nothing_ready(&self) -> bool {
        self.ready.is_empty() && self.lane.is_empty()
    }
}

/// A transient that takes a whole message from the sending thread while its sending loop
/// waits with nothing to do (a lone message, a request after its answer): the write the loop
/// would make next, without waking it (QUIC: `quic::DirectWriter`). Called under the
/// outbox's lock, so it is ordered with the loop's taking of items.
pub(crate) trait Direct: Send + Sync {
    /// Writes `item` (a whole ordered message of `Outbox::direct_now`) now if it can;
    /// gives it back otherwise, and it is queued as any other.
    fn write(&self, item: Item) -> DirectWrite;
}

impl std::fmt::Debug for dyn Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

/// What [`Direct::write`] did.
pub(crate) enum DirectWrite {
    /// Written whole: the message is sent.
    Written,
    /// Begun; the sending loop writes the rest (it has been given the message).
    Begun,
    /// Not written: queue it.
    Refused(Item),
}

/// Decides whether handing an antecedent to the transport already guarantees it is delivered
/// before a dependent (true on one ordered byte stream).
pub(crate) type OrderRule = fn(&MessageProperties, &MessageProperties) -> bool;

/// The send queue of one carrier.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the sending loop (the outbox's one reader) when an item may be ready.
    wake: crate::util::Signal,
    reap: Notify,
    permits: Arc<Semaphore>,
    limit: usize,
    /// The forward delay estimate ([`set_rtt`](Self::set_rtt)) in nanoseconds: a QUIC
    /// sending loop sets it at each message, and a lock there cost two atomic updates.
    one_way: std::sync::atomic::AtomicU64,
    /// The QUIC sending loop's limit on messages in flight (`stream_cap.rs`), published
    /// when it changes for [`Carrier::stats`](crate::Carrier::stats); 0 until one is set.
    message_limit: std::sync::atomic::AtomicUsize,
    order_rule: Mutex<OrderRule>,
    /// The sending loop, when a queueing thread may run it (see `inline.rs`).
    inline: Mutex<Option<Arc<Driven>>>,
    /// The statuses of the plain messages ([`State::lane`]).
    marks: Arc<PlainMarks>,
    /// Touched when a message (or part) is queued: a client carrier's path manager, asleep
    /// while nothing moves, looks again.
    activity: crate::path::Activity,
}

impl Outbox {
    pub(crate) fn new(limit: usize, order_rule: OrderRule) -> Arc<Self> {
        let limit = limit.clamp(PER_MESSAGE_OVERHEAD, Semaphore::MAX_PERMITS);
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            wake: crate::util::Signal::default(),
            reap: Notify::new(),
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            one_way: std::sync::atomic::AtomicU64::new(0),
            message_limit: std::sync::atomic::AtomicUsize::new(0),
            order_rule: Mutex::new(order_rule),
            inline: Mutex::new(None),
            marks: Arc::new(PlainMarks::default()),
            activity: crate::path::Activity::default(),
        })
    }

    /// What this carrier's transports touch when its traffic may have changed.
    pub(crate) fn activity(&self) -> &crate::path::Activity {
        &self.activity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    /// The permits a message of `len` bytes needs.
    fn cost(&self, len: usize) -> u32 {
        (len.saturating_add(PER_MESSAGE_OVERHEAD)).min(self.limit) as u32
    }

    /// Waits for buffer space for `len` bytes. Space free now is taken without a wait (the
    /// semaphore's `Acquire` future, built, polled and dropped per message, was about 140
    /// instructions of a 1 KiB message's `send`); that jumps no queue, since the semaphore
    /// hands returned space to its waiters first and has none free while one waits.
    pub(crate) async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit> {
        match self.try_reserve(len) {
            Err(Error::WouldBlock { .. }) => {}
            now => return now,
        }
        self.permits
            .clone()
            .acquire_many_owned(self.cost(len))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Takes buffer space for `len` bytes if it is free now.
    pub(crate) fn try_reserve(&self, len: usize) -> Result<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_many_owned(self.cost(len)) {
            Ok(p) => Ok(p),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Error::WouldBlock {
                buffered: self.limit - self.permits.available_permits(),
                limit: self.limit,
            }),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Error::Closed),
        }
    }

    /// Bytes of send buffer in use.
    pub(crate) fn buffered(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Updates the estimate of the forward (sender → peer) delay used to expire messages
    /// that could no longer arrive in time: the smoothed RTT less half the minimum RTT, so
    /// queueing on the way out (the usual case on a slow uplink) counts in full rather than
    /// halved; plus half again for the estimate's own lag behind a growing queue. (A quarter
    /// was not enough: on a 256 kbit/s uplink with a 16 KiB queue, 8 runs of 200 of
    /// `api/lifetime-quic` delivered a message 1-26 ms late, handed over when a full queue
    /// already held 40 ms more than the estimate; with a half, none of 200.)
    pub(crate) fn set_rtt(&self, srtt: Duration, min_rtt: Duration) {
        let forward = srtt.saturating_sub(min_rtt / 2).max(min_rtt / 2) * 3 / 2;
        let nanos = u64::try_from(forward.as_nanos()).unwrap_or(u64::MAX);
        self.one_way
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// The QUIC sending loop's limit on messages in flight changed to `n`.
    pub(crate) fn set_message_limit(&self, n: usize) {
        self.message_limit
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The QUIC sending loop's limit on messages in flight, once one runs.
    pub(crate) fn message_limit(&self) -> Option<usize> {
        Some(
            self.message_limit
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|&n| n > 0)
    }

    pub(crate) fn one_way(&self) -> Duration {
        Duration::from_nanos(self.one_way.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Registers a new message (its parts follow with [`push`](Self::push)) and returns its
    /// handle.
    pub(crate) fn open(&self, props: MessageProperties) -> Result<(SendHandle, Props)> {
        Self::open_locked(&mut self.lock(), props)
    }

    fn open_locked(st: &mut State, props: MessageProperties) -> Result<(SendHandle, Props)> {
        if st.closed {
            return Err(Error::Closed);
        }
        let id = st.next_id;
        for &a in &props.antecedents {
            if a >= id {
                return Err(ConfigError::UnknownAntecedent { antecedent: a, id }.into());
            }
        }
        st.next_id += 1;
        let cell = StatusCell::new();
        let prev_ordered = if props.ordered && props.reliable {
            st.last_ordered.replace(id)
        } else {
            None
        };
        let props = Self::share_props(st, props);
        st.live.insert(
            id,
            Live {
                props: props.clone(),
                status: cell.clone(),
                started: false,
                dispatched: false,
                fin_ready: None,
                first_seq: None,
                parts: SmallVec::new(),
                prev_ordered,
            },
        );
        Ok((
            SendHandle {
                id,
                status: Tracker::Cell(cell),
            },
            props,
        ))
    }

    /// Most messages have the default properties, or the same as the one before: they
    /// share their copy.
    fn share_props(st: &mut State, props: MessageProperties) -> Props {
        match &st.last_props {
            Some(last) if **last == props => Props::Shared(last.clone()),
            _ => {
                let props = Props::new(props);
                if let Props::Shared(shared) = &props {
                    st.last_props = Some(shared.clone());
                }
                props
            }
        }
    }

    /// Lets plain messages queue in the lane (a stream carrier's writer takes this outbox).
    pub(crate) fn set_lane(&self, on: bool) {
        self.lock().lane_on = on;
    }

    /// Whether a whole message with `props` queued now is plain ([`State::lane`]): among
    /// other things nothing may be queued, and the ordered message before it (which it may
    /// not overtake) must be plain too or handed over whole already. A message being sent in
    /// parts has no item queued between its parts, and is not handed over until its last.
    fn plain_now(st: &State, props: &MessageProperties, deadline: Option<Instant>) -> bool {
        st.lane_on && Self::nothing_to_decide(st, props, deadline) && !props.idempotent
    }

    /// Whether a whole message with `props` queued now would be handed over next with
    /// nothing for the queue to decide: nothing is queued, the ordered message before it
    /// was handed over, and it is ordered and reliable, without a lifetime or antecedents.
    fn nothing_to_decide(st: &State, props: &MessageProperties, deadline: Option<Instant>) -> bool {
        !st.closed
            && st.items.is_empty()
            && st
                .last_ordered
                .is_none_or(|p| st.live.get(p).is_none_or(|prev| prev.dispatched))
            && props.reliable
            && props.ordered
            && props.antecedents.is_empty()
            && props.lifetime.is_none()
            && deadline.is_none()
    }

    /// Queues a plain message in the lane; its handle reads the carrier's marks.
    fn send_plain(
        &self,
        mut st: MutexGuard<'_, State>,
        props: MessageProperties,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> SendHandle {
        let id = st.next_id;
        st.next_id += 1;
        st.last_ordered = Some(id);
        let props = Self::share_props(&mut st, props);
        let seq = st.next_seq;
        st.next_seq += 1;
        let was_idle = st.nothing_ready();
        let lane_room = permit.num_permits();
        match st.lane_room.as_mut() {
            Some(room) => room.merge(permit),
            None => st.lane_room = Some(permit),
        }
        st.lane.push_back(Item {
            id,
            offset: 0,
            data,
            fin: true,
            abort: false,
            props,
            deadline: None,
            seq,
            plain: true,
            _permit: None,
            lane_room,
        });
        drop(st);
        if was_idle {
            self.wake_sender();
        }
        SendHandle {
            id,
            status: Tracker::Plain(self.marks.clone()),
        }
    }

    /// [`open`](Self::open) and [`push`](Self::push) of a whole message, under one lock.
    pub(crate) fn send(
        &self,
        props: MessageProperties,
        data: Bytes,
        permit: OwnedSemaphorePermit,
        deadline: Option<Instant>,
    ) -> Result<SendHandle> {
        self.activity.touch();
        let mut st = self.lock();
        if Self::plain_now(&st, &props, deadline) {
            return Ok(self.send_plain(st, props, data, permit));
        }
        let direct = Self::direct_now(&st, &props, deadline);
        let (handle, props) = Self::open_locked(&mut st, props)?;
        let item = Self::new_item(
            &mut st,
            handle.id(),
            &props,
            (0, data, true),
            Some(permit),
            deadline,
        );
        let item = match direct {
            Some(to) => match to.write(item) {
                written @ (DirectWrite::Written | DirectWrite::Begun) => {
                    if let Some(live) = st.live.get_mut(handle.id()) {
                        live.started = true;
                        live.dispatched = true;
                        if matches!(written, DirectWrite::Written) {
                            live.status.set(SendStatus::Sent, false);
                        }
                    }
                    if matches!(written, DirectWrite::Begun) {
                        // The loop is woken to take it and write the rest.
                        st.direct = None;
                        drop(st);
                        self.wake.notify();
                    }
                    return Ok(handle);
                }
                DirectWrite::Refused(item) => {
                    // The loop decides what goes next.
                    st.direct = None;
                    item
                }
            },
            None => item,
        };
        self.queue_locked(st, item);
        Ok(handle)
    }

    /// Whether a whole message with `props` queued now may be written by the sending
    /// thread ([`Direct`]): the sending loop waits for an item and would take this one next
    /// with nothing to decide.
    fn direct_now(
        st: &State,
        props: &MessageProperties,
        deadline: Option<Instant>,
    ) -> Option<Arc<dyn Direct>> {
        let to = st.direct.as_ref()?;
        (st.lane.is_empty() && Self::nothing_to_decide(st, props, deadline)).then(|| to.clone())
    }

    /// Queues a part of message `id`: (offset in the message, bytes, whether it ends the
    /// message). `deadline` is absolute.
    pub(crate) fn push(
        &self,
        id: MessageId,
        props: &Props,
        (offset, data, fin): (u64, Bytes, bool),
        permit: Option<OwnedSemaphorePermit>,
        deadline: Option<Instant>,
    ) {
        self.activity.touch();
        self.push_locked(
            self.lock(),
            id,
            props,
            (offset, data, fin),
            permit,
            deadline,
        );
    }

    fn push_locked(
        &self,
        mut st: MutexGuard<'_, State>,
        id: MessageId,
        props: &Props,
        part: (u64, Bytes, bool),
        permit: Option<OwnedSemaphorePermit>,
        deadline: Option<Instant>,
    ) {
        if !st.live.contains_key(id) {
            // Already settled (expired or failed): later parts are dropped with their permits.
            return;
        }
        let item = Self::new_item(&mut st, id, props, part, permit, deadline);
        self.queue_locked(st, item);
    }

    /// The next item of message `id`.
    fn new_item(
        st: &mut State,
        id: MessageId,
        props: &Props,
        (offset, data, fin): (u64, Bytes, bool),
        permit: Option<OwnedSemaphorePermit>,
        deadline: Option<Instant>,
    ) -> Item {
        let seq = st.next_seq;
        st.next_seq += 1;
        Item {
            id,
            offset,
            data,
            fin,
            abort: false,
            props: props.clone(),
            deadline,
            seq,
            plain: false,
            _permit: permit,
            lane_room: 0,
        }
    }

    /// Queues `item` (of a message in `live`).
    fn queue_locked(&self, mut st: MutexGuard<'_, State>, item: Item) {
        let (id, seq, fin, deadline) = (item.id, item.seq, item.fin, item.deadline);
        if let Some(d) = deadline {
            st.deadlines.insert((d, seq));
        }
        let niceness = item.props.niceness;
        if let Some(live) = st.live.get_mut(id) {
            live.first_seq.get_or_insert(seq);
            live.parts.push(seq);
        }
        st.items.insert(seq, item);
        match self.eligibility(&st, id) {
            Eligible::Yes => {
                // Only the first ready item wakes the transient: while the set is not
                // empty, it has not gone to sleep (it takes everything ready before it does).
                let was_empty = st.nothing_ready();
                st.ready.insert((niceness, seq));
                if fin {
                    self.fin_now_ready(&mut st, id, seq);
                }
                drop(st);
                if was_empty {
                    self.wake_sender();
                }
            }
            Eligible::No(blocker) => {
                st.blocked.insert(seq);
                st.waiting.entry(blocker).or_default().insert(seq);
            }
            Eligible::Failed(a, why) => {
                st.blocked.insert(seq);
                let reason = format!("antecedent {a} {why}");
                self.fail_locked(&mut st, id, SendStatus::Failed(reason));
            }
        }
        if deadline.is_some() {
            self.reap.notify_one();
        }
    }

    /// Sets (or clears) the sending loop a queueing thread may run itself.
    pub(crate) fn set_inline(&self, driven: Option<Arc<Driven>>) {
        *crate::util::lock(&self.inline) = driven;
    }

    /// Wakes the sending loop for a newly ready item: on a carrier with nothing in flight
    /// it runs here, where it can (see `inline.rs`).
    fn wake_sender(&self) {
        let inline = crate::util::lock(&self.inline).clone();
        match inline {
            Some(d) if d.idle() => d.run_inline(|| self.wake.notify()),
            _ => self.wake.notify(),
        }
    }

    fn eligibility(&self, st: &State, id: MessageId) -> Eligible {
        let Some(me) = st.live.get(id) else {
            return Eligible::Yes;
        };
        // Send order among ordered messages (a failed predecessor does not hold it up). A
        // predecessor whose every part is ready already goes first if this message's parts
        // sort after its last one (ready order is niceness, then seq), and if every transient
        // that takes this message takes it too (0-RTT takes only idempotent messages).
        if let Some(p) = me.prev_ordered {
            if let Some(prev) = st.live.get(p) {
                let sorts_after = match (prev.fin_ready, me.first_seq) {
                    (Some(fin), Some(first)) => {
                        (prev.props.niceness, fin) < (me.props.niceness, first)
                    }
                    _ => false,
                };
                let goes_first = sorts_after && (prev.props.idempotent || !me.props.idempotent);
                if !prev.dispatched && !goes_first {
                    return Eligible::No(p);
                }
            } else if let Some(prev) = Self::in_lane(st, p) {
                // A plain predecessor not handed over yet: whole and ready at its seq, and
                // not idempotent.
                let sorts_after = me.first_seq.is_some_and(|first| {
                    (prev.props.niceness, prev.seq) < (me.props.niceness, first)
                });
                if !sorts_after || me.props.idempotent {
                    return Eligible::No(p);
                }
            }
        }
        for &a in &me.props.antecedents {
            if let Some(why) = st.failed.get(&a) {
                return Eligible::Failed(a, why);
            }
            if let Some(ante) = st.live.get(a) {
                let rule = *crate::util::lock(&self.order_rule);
                if !(ante.dispatched && rule(&ante.props, &me.props)) {
                    return Eligible::No(a);
                }
            } else if Self::in_lane(st, a).is_some() {
                return Eligible::No(a);
            }
        }
        Eligible::Yes
    }

    /// Plain message `id`, if it is still in the lane (not handed over yet). Absent from
    /// `live`, a message is settled or plain: the lane tells which of the two is waited for.
    fn in_lane(st: &State, id: MessageId) -> Option<&Item> {
        let i = st.lane.partition_point(|item| item.id < id);
        st.lane.get(i).filter(|item| item.id == id)
    }

    /// Which goes next of the lane's head and `ready` (a key of the ready set): the smaller
    /// `(niceness, seq)`.
    fn pick(st: &State, ready: Option<(u32, u64)>, lane_wanted: bool) -> Option<Pick> {
        let lane = st
            .lane
            .front()
            .filter(|_| lane_wanted)
            .map(|i| (i.props.niceness, i.seq));
        match (lane, ready) {
            (Some(l), Some(r)) if r < l => Some(Pick::Ready(r)),
            (Some(_), _) => Some(Pick::Lane),
            (None, r) => r.map(Pick::Ready),
        }
    }

    /// Takes `pick`, at most `max_len` bytes of it; a lane item's space becomes a permit
    /// of its own, or, with `batch`, is added there (the caller splits it off
    /// [`State::lane_room`] with [`Outbox::lane_room`]).
    fn take(
        &self,
        st: &mut State,
        pick: Pick,
        max_len: usize,
        batch: Option<&mut usize>,
    ) -> Option<Item> {
        // The sending loop has something to do: it writes what follows.
        st.direct = None;
        match pick {
            Pick::Lane => {
                let mut item = self.take_lane(st, max_len)?;
                let room = std::mem::take(&mut item.lane_room);
                match batch {
                    Some(batch) => *batch += room,
                    None => item._permit = Self::lane_room(st, room),
                }
                Some(item)
            }
            Pick::Ready(key) => self.take_ready(st, key, max_len),
        }
    }

    /// `room` of the lane's space as a permit (`None` for none).
    fn lane_room(st: &mut State, room: usize) -> Option<OwnedSemaphorePermit> {
        if room == 0 {
            return None;
        }
        let permit = st.lane_room.as_mut().and_then(|all| all.split(room));
        debug_assert!(permit.is_some(), "the lane holds its items' space");
        permit
    }

    /// The lane's head, at most `max_len` bytes of it (the rest keeps its place).
    fn take_lane(&self, st: &mut State, max_len: usize) -> Option<Item> {
        let head = st.lane.front_mut()?;
        let item = match head.split_rest(max_len.max(1)) {
            Some(rest) => std::mem::replace(head, rest),
            None => st.lane.pop_front()?,
        };
        if item.fin {
            self.wake_waiters(st, item.id);
        }
        Some(item)
    }

    /// The next item to hand to the transient, at most `max_len` bytes of it (the rest keeps
    /// its place in the queue); `None` once the outbox is closed and empty.
    pub(crate) async fn next(&self, max_len: usize) -> Option<Item> {
        self.next_where(max_len, |_| true).await
    }

    /// Takes what is ready now, in the order [`next`](Self::next) would, while `more` (given
    /// each item taken) leaves room for another: it answers how many bytes the next item may
    /// have, 0 to stop. An item longer than that room is cut to fit only when the room is at
    /// least [`CUT_FROM`] bytes (a long message goes in pieces anyway); a shorter room leaves
    /// it whole for the next call, rather than cutting a small message into two frames. Under
    /// one lock.
    ///
    /// For a transport done with an item once it has it (a stream writer): the items come
    /// without their share of the send buffer, and `freed` (the share of an item taken
    /// before, [`Item::take_permit`]) joins them. That space is given back in chunks of a
    /// third of the buffer, or all at once when the transport finds nothing ready
    /// ([`next`](Self::next)) or cannot write ([`give_back`](Self::give_back)), as a kernel
    /// wakes a writer blocked on a full TCP socket only once a third of its buffer is free: a
    /// sender waiting for room was otherwise woken once per batch the transport took (on a
    /// multi-thread runtime, a futex wake-up and a context switch per 64 KiB).
    pub(crate) fn take_while(
        &self,
        freed: Option<OwnedSemaphorePermit>,
        room: usize,
        mut more: impl FnMut(Item) -> usize,
    ) {
        let mut st = self.lock();
        if let Some(p) = freed {
            Self::hold_freed(&mut st, p);
        }
        self.expire_due(&mut st);
        let mut room = room;
        // The space of the lane items taken, split off the lane's once.
        let mut lane_room = 0;
        while room > 0 {
            let Some(pick) = Self::pick(&st, st.ready.first().copied(), true) else {
                break;
            };
            let len = match pick {
                Pick::Lane => st.lane.front().map(|i| i.data.len()),
                Pick::Ready((_, seq)) => st.items.get(seq).map(|i| i.data.len()),
            };
            let fits = len.is_none_or(|len| len <= room);
            if !fits && room < CUT_FROM {
                break;
            }
            let Some(mut item) = self.take(&mut st, pick, room, Some(&mut lane_room)) else {
                continue;
            };
            if let Some(p) = item._permit.take() {
                Self::hold_freed(&mut st, p);
            }
            room = more(item);
        }
        if let Some(p) = Self::lane_room(&mut st, lane_room) {
            Self::hold_freed(&mut st, p);
        }
        let chunk = st.freed.as_ref().map_or(0, |p| p.num_permits());
        if chunk >= self.limit / 3 {
            Self::let_go_with_freed(st);
        }
    }

    fn hold_freed(st: &mut State, p: OwnedSemaphorePermit) {
        match st.freed.as_mut() {
            Some(all) => all.merge(p),
            None => st.freed = Some(p),
        }
    }

    /// Gives back the send-buffer space [`take_while`](Self::take_while) holds (the
    /// transport is about to wait for something other than the queue).
    pub(crate) fn give_back(&self) {
        Self::let_go_with_freed(self.lock());
    }

    /// Lets go of the lock and then gives back what `take_while` held (returning permits
    /// locks the semaphore and may wake a sender: not under the outbox's lock).
    fn let_go_with_freed(mut st: MutexGuard<'_, State>) {
        let freed = st.freed.take();
        drop(st);
        drop(freed);
    }

    /// The next item that is ready now of a message whose properties satisfy `wanted` (see
    /// [`next_where`](Self::next_where)).
    pub(crate) fn try_next_where(
        &self,
        max_len: usize,
        wanted: impl Fn(&MessageProperties) -> bool,
    ) -> Option<Item> {
        let mut st = self.lock();
        self.expire_due(&mut st);
        let key = Self::first_wanted(&st, wanted)?;
        self.take(&mut st, key, max_len, None)
    }

    /// The first ready item of a message whose properties satisfy `wanted`.
    fn first_wanted(st: &State, wanted: impl Fn(&MessageProperties) -> bool) -> Option<Pick> {
        let ready = st
            .ready
            .iter()
            .find(|(_, seq)| st.items.get(*seq).is_some_and(|i| wanted(&i.props)))
            .copied();
        let lane_wanted = st.lane.front().is_some_and(|i| wanted(&i.props));
        Self::pick(st, ready, lane_wanted)
    }

    /// Like [`next`](Self::next), but only items of messages whose properties satisfy
    /// `wanted` (0-RTT takes only idempotent messages); the others keep their places.
    pub(crate) async fn next_where(
        &self,
        max_len: usize,
        wanted: impl Fn(&MessageProperties) -> bool,
    ) -> Option<Item> {
        self.next_opening(max_len, wanted, None).await
    }

    /// Like [`next`](Self::next), and while nothing is ready a message that could go at
    /// once is written by the thread that sends it, through `direct` ([`Direct`]), until an
    /// item is taken (by this call or [`try_next_where`](Self::try_next_where)).
    pub(crate) async fn next_or_direct(
        &self,
        max_len: usize,
        direct: &Arc<dyn Direct>,
    ) -> Option<Item> {
        self.next_opening(max_len, |_| true, Some(direct)).await
    }

    async fn next_opening(
        &self,
        max_len: usize,
        wanted: impl Fn(&MessageProperties) -> bool,
        direct: Option<&Arc<dyn Direct>>,
    ) -> Option<Item> {
        self.wake
            .until(|| {
                let mut st = self.lock();
                self.expire_due(&mut st);
                let out = match Self::first_wanted(&st, &wanted) {
                    Some(key) => return Some(self.take(&mut st, key, max_len, None)),
                    None if st.closed && st.items.is_empty() && st.lane.is_empty() => Some(None),
                    None => None,
                };
                if let (None, Some(d)) = (&st.direct, direct) {
                    if !st.closed {
                        st.direct = Some(d.clone());
                    }
                }
                // Nothing ready: what a stream writer took is all on its way (take_while).
                Self::let_go_with_freed(st);
                out
            })
            .await
    }

    fn take_ready(
        &self,
        st: &mut State,
        (niceness, seq): (u32, u64),
        max_len: usize,
    ) -> Option<Item> {
        let Some(queued) = st.items.get_mut(seq) else {
            st.ready.remove(&(niceness, seq));
            return None;
        };
        // Too long: the head goes, the rest keeps the item's place (and its ready entry).
        let (item, whole) = match queued.split_rest(max_len.max(1)) {
            Some(rest) => (std::mem::replace(queued, rest), false),
            None => (st.items.remove(seq)?, true),
        };
        if whole {
            st.ready.remove(&(niceness, seq));
            if let Some(d) = item.deadline {
                st.deadlines.remove(&(d, seq));
            }
        }
        if let Some(live) = st.live.get_mut(item.id) {
            if whole {
                live.parts.retain(|s| *s != seq);
            }
            live.started = true;
            if item.fin {
                live.dispatched = true;
            }
        }
        if item.fin {
            self.wake_waiters(st, item.id);
        }
        Some(item)
    }

    /// Whether nothing is ready to send right now (a stream transport flushes then).
    pub(crate) fn idle(&self) -> bool {
        self.lock().nothing_ready()
    }

    /// Records a message's progress. A terminal status settles it: its permits are already
    /// returned with its items, dependents are released or failed.
    pub(crate) fn update(&self, id: MessageId, status: SendStatus, terminal: bool) {
        let mut st = self.lock();
        self.update_locked(&mut st, id, status, terminal);
    }

    /// [`update`](Self::update) for what a stream transport wrote or had acknowledged, in
    /// order: the messages with cells under one lock (one acknowledgement settles many), and
    /// the plain messages' marks in one step.
    pub(crate) fn settle(&self, fins: Fins, status: impl Fn() -> SendStatus, terminal: bool) {
        if !fins.ids.is_empty() {
            let mut st = self.lock();
            for id in fins.ids {
                self.update_locked(&mut st, id, status(), terminal);
            }
        }
        if let Some(last) = fins.plain {
            self.marks.advance(last + 1, status(), terminal);
        }
    }

    fn update_locked(&self, st: &mut State, id: MessageId, status: SendStatus, terminal: bool) {
        if !terminal {
            if let Some(live) = st.live.get(id) {
                live.status.set(status, false);
            }
            return;
        }
        match status {
            SendStatus::Sent | SendStatus::Acked => {
                if let Some(live) = st.live.remove(id) {
                    live.status.set(status, true);
                }
                if st.waiting.contains_key(&id) {
                    self.wake_waiters(st, id);
                }
            }
            other => self.fail_locked(st, id, other),
        }
    }

    /// Fails a message: drops its queued parts and fails its dependents.
    fn fail_locked(&self, st: &mut State, id: MessageId, status: SendStatus) {
        if self.fail_only(st, id, status) {
            self.wake_waiters(st, id);
        }
    }

    /// Fails a message without looking at its dependents; false if it was already settled.
    fn fail_only(&self, st: &mut State, id: MessageId, status: SendStatus) -> bool {
        let Some(live) = st.live.remove(id) else {
            return false;
        };
        let why = match status {
            SendStatus::Expired => "expired",
            _ => "failed",
        };
        st.failed.insert(id, why);
        while st.failed.len() > FAILED_MEMORY {
            st.failed.pop_first();
        }
        for &seq in &live.parts {
            if let Some(item) = st.items.remove(seq) {
                st.ready.remove(&(item.props.niceness, seq));
                st.blocked.remove(&seq);
                if let Some(d) = item.deadline {
                    st.deadlines.remove(&(d, seq));
                }
            }
        }
        if live.started && !live.dispatched {
            // Part of it is on the wire: tell the peer to discard what it has.
            let seq = st.next_seq;
            st.next_seq += 1;
            st.items.insert(
                seq,
                Item {
                    id,
                    offset: 0,
                    data: Bytes::new(),
                    fin: true,
                    abort: true,
                    props: live.props.clone(),
                    deadline: None,
                    seq,
                    plain: false,
                    _permit: None,
                    lane_room: 0,
                },
            );
            st.ready.insert((0, seq));
            self.wake.notify();
        }
        live.status.set(status, true);
        true
    }

    /// Re-checks the items waiting for message `id` (it was dispatched, settled or failed):
    /// moves them to the ready set, or to the next message they wait for, or fails them if
    /// an antecedent failed, and so on down the chain of dependents.
    fn wake_waiters(&self, st: &mut State, id: MessageId) {
        if !st.waiting.contains_key(&id) {
            return;
        }
        let mut changed = vec![id];
        while let Some(x) = changed.pop() {
            for seq in st.waiting.remove(&x).unwrap_or_default() {
                if !st.blocked.contains(&seq) {
                    continue;
                }
                let Some((item_id, niceness, fin)) =
                    st.items.get(seq).map(|i| (i.id, i.props.niceness, i.fin))
                else {
                    st.blocked.remove(&seq);
                    continue;
                };
                match self.eligibility(st, item_id) {
                    Eligible::Yes => {
                        st.blocked.remove(&seq);
                        st.ready.insert((niceness, seq));
                        self.wake.notify();
                        if fin && Self::mark_fin_ready(st, item_id, seq) {
                            // Its ordered successor may now queue behind it.
                            changed.push(item_id);
                        }
                    }
                    Eligible::No(blocker) => {
                        st.waiting.entry(blocker).or_default().insert(seq);
                    }
                    Eligible::Failed(a, why) => {
                        let reason = format!("antecedent {a} {why}");
                        if self.fail_only(st, item_id, SendStatus::Failed(reason)) {
                            changed.push(item_id);
                        }
                    }
                }
            }
        }
    }

    /// Records that message `id`'s final part is ready; true if that is news.
    fn mark_fin_ready(st: &mut State, id: MessageId, seq: u64) -> bool {
        match st.live.get_mut(id) {
            Some(live) if live.fin_ready.is_none() => {
                live.fin_ready = Some(seq);
                true
            }
            _ => false,
        }
    }

    /// Message `id`'s final part became ready: releases what waits for that.
    fn fin_now_ready(&self, st: &mut State, id: MessageId, seq: u64) {
        if Self::mark_fin_ready(st, id, seq) && st.waiting.contains_key(&id) {
            self.wake_waiters(st, id);
        }
    }

    /// Expires queued items whose deadline (less the one-way delay) has passed.
    fn expire_due(&self, st: &mut State) {
        if st.deadlines.is_empty() {
            return;
        }
        let now = Instant::now();
        let one_way = self.one_way();
        while let Some(&(deadline, seq)) = st.deadlines.first() {
            if deadline.checked_sub(one_way).unwrap_or(deadline) > now {
                return;
            }
            st.deadlines.pop_first();
            if let Some(id) = st.items.get(seq).map(|i| i.id) {
                self.fail_locked(st, id, SendStatus::Expired);
            }
        }
    }

    /// Runs until the outbox is closed and empty: expires queued items on time even while the
    /// transient is busy.
    pub(crate) async fn reaper(self: Arc<Self>) {
        loop {
            let notified = self.reap.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut st = self.lock();
                self.expire_due(&mut st);
                if st.closed && st.items.is_empty() {
                    return;
                }
                st.deadlines.first().map(|(d, _)| *d)
            };
            match next {
                Some(deadline) => {
                    let at = deadline.checked_sub(self.one_way()).unwrap_or(deadline);
                    tokio::select! {
                        biased;
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The carrier moved to another protocol stack, whose order rule applies from now on.
    pub(crate) fn set_order_rule(&self, rule: OrderRule) {
        *crate::util::lock(&self.order_rule) = rule;
    }

    /// Queues again a whole message the transport had taken but cannot settle (the carrier
    /// moved to another protocol stack before the peer acknowledged it). Handed-back messages
    /// go before anything else, in the order they were first queued: their niceness becomes
    /// the most urgent, which keeps ordered messages in order whatever came after them. A
    /// message settled meanwhile is dropped.
    pub(crate) fn requeue(&self, mut item: Item) {
        let mut st = self.lock();
        if !st.live.contains_key(item.id) {
            return;
        }
        if item.props.niceness != 0 {
            let mut props = (*item.props).clone();
            props.niceness = 0;
            item.props = Props::new(props);
        }
        let seq = item.seq;
        if let Some(d) = item.deadline {
            st.deadlines.insert((d, seq));
        }
        if let Some(live) = st.live.get_mut(item.id) {
            live.parts.push(seq);
        }
        st.items.insert(seq, item);
        let was_empty = st.nothing_ready();
        st.ready.insert((0, seq));
        drop(st);
        if was_empty {
            self.wake.notify();
        }
        self.reap.notify_one();
    }

    /// The sending loop ended: nothing more is written past it.
    pub(crate) fn end_direct(&self) {
        let direct = self.lock().direct.take();
        drop(direct);
    }

    /// No more messages: the sending loop ends once everything queued has been handed over.
    pub(crate) fn close(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
            st.direct = None;
        }
        self.permits.close();
        self.wake.notify();
        self.reap.notify_one();
    }

    /// Fails every unsettled message with `reason` (the transient is gone).
    pub(crate) fn fail_all(&self, reason: &str) {
        let mut st = self.lock();
        st.closed = true;
        st.direct = None;
        let ids: Vec<MessageId> = st.live.keys().collect();
        for id in ids {
            if let Some(live) = st.live.get_mut(id) {
                live.started = false;
            }
            self.fail_locked(&mut st, id, SendStatus::Failed(reason.to_string()));
        }
        st.items.clear();
        st.ready.clear();
        st.blocked.clear();
        st.waiting.clear();
        st.deadlines.clear();
        // Every plain message not settled yet, queued or written.
        st.lane.clear();
        st.lane_room = None;
        self.marks
            .advance(st.next_id, SendStatus::Failed(reason.to_string()), true);
        drop(st);
        self.permits.close();
        self.wake.notify();
        self.reap.notify_one();
    }

    /// Whether message `id` has been settled.
    #[cfg(test)]
    fn settled(&self, id: MessageId) -> bool {
        !self.lock().live.contains_key(id)
    }
}

/// What goes next: the lane's head or an item of the ready set.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Lane,
    Ready((u32, u64)),
}

/// The messages a transport wrote whole (or the peer acknowledged), in order: those with a
/// cell of their own by id, and the last plain one (plain messages go in id order, so it
/// stands for every plain one before it).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Fins {
    pub(crate) ids: Vec<MessageId>,
    pub(crate) plain: Option<MessageId>,
}

impl Fins {
    pub(crate) fn push(&mut self, id: MessageId, plain: bool) {
        if plain {
            self.plain = Some(id);
        } else {
            self.ids.push(id);
        }
    }
}

/// `(id, plain)` of each message, in order.
impl Extend<(MessageId, bool)> for Fins {
    fn extend<I: IntoIterator<Item = (MessageId, bool)>>(&mut self, fins: I) {
        for (id, plain) in fins {
            self.push(id, plain);
        }
    }
}

enum Eligible {
    Yes,
    /// Waits for this message.
    No(MessageId),
    Failed(MessageId, &'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_order(_: &MessageProperties, _: &MessageProperties) -> bool {
        true
    }
    fn acked_only(_: &MessageProperties, _: &MessageProperties) -> bool {
        false
    }

    fn send(o: &Outbox, data: &'static [u8], props: MessageProperties) -> SendHandle {
        let (h, props) = o.open(props).expect("open");
        let deadline = props.lifetime.map(|l| Instant::now() + l);
        o.push(
            h.id(),
            &props,
            (0, Bytes::from_static(data), true),
            None,
            deadline,
        );
        h
    }

    fn nice(n: u32) -> MessageProperties {
        MessageProperties {
            niceness: n,
            ordered: false,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lower_niceness_first_then_send_order() {
        let o = Outbox::new(1 << 20, any_order);
        send(&o, b"a", nice(5));
        send(&o, b"b", nice(0));
        send(&o, b"c", nice(5));
        send(&o, b"d", nice(0));
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(item.data);
        }
        assert_eq!(got, vec!["b", "d", "a", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn take_while_takes_in_queue_order_until_told_and_gives_space_back_by_thirds() {
        let each = 1 + PER_MESSAGE_OVERHEAD;
        // A third of the buffer is four messages' space.
        let o = Outbox::new(12 * each, any_order);
        for (data, n) in [(b"a", 5), (b"b", 0), (b"c", 5), (b"d", 0), (b"e", 9)] {
            let permit = o.reserve(1).await.expect("room");
            o.send(nice(n), Bytes::from_static(data), permit, None)
                .expect("send");
        }
        assert_eq!(o.buffered(), 5 * each);
        let mut got = Vec::new();
        let mut take = |o: &Outbox, mut n: usize| {
            o.take_while(None, usize::MAX, |item| {
                got.push(item.data);
                n -= 1;
                if n > 0 {
                    usize::MAX
                } else {
                    0
                }
            })
        };
        take(&o, 3);
        assert_eq!(
            o.buffered(),
            5 * each,
            "three messages' space is less than a third: held"
        );
        take(&o, 1);
        assert_eq!(got, vec!["b", "d", "a", "c"]);
        assert_eq!(o.buffered(), each, "a third freed: given back");
        // The space of an item taken otherwise joins the next take.
        let mut e = o.next(usize::MAX).await.expect("e");
        assert_eq!(e.data, "e");
        o.take_while(e.take_permit(), 0, |_| unreachable!("room 0"));
        drop(e);
        assert_eq!(o.buffered(), each, "held with what take_while holds");
        o.give_back();
        assert_eq!(o.buffered(), 0);
    }

    /// What `take_while` holds goes back as soon as the transport finds nothing ready: a
    /// sender waiting for room is never kept waiting by an idle queue.
    #[tokio::test(start_paused = true)]
    async fn space_held_by_take_while_goes_back_when_nothing_is_ready() {
        let o = Outbox::new(1 << 20, any_order);
        for data in [b"x", b"y"] {
            let permit = o.reserve(1).await.expect("room");
            o.send(nice(0), Bytes::from_static(data), permit, None)
                .expect("send");
        }
        o.take_while(None, usize::MAX, |_| usize::MAX);
        assert_eq!(o.buffered(), 2 * (1 + PER_MESSAGE_OVERHEAD));
        let waited = tokio::time::timeout(Duration::from_millis(1), o.next(usize::MAX)).await;
        assert!(waited.is_err(), "nothing was ready");
        assert_eq!(o.buffered(), 0);
    }

    /// The room `take_while` is told bounds each item: a long one is cut to a room of at
    /// least `CUT_FROM`, a smaller room stops the taking and leaves the item whole.
    #[tokio::test(start_paused = true)]
    async fn take_while_cuts_to_a_large_room_and_stops_at_a_small_one() {
        let o = Outbox::new(1 << 20, any_order);
        for len in [3 * CUT_FROM + 5, 100, 100] {
            let permit = o.reserve(len).await.expect("room");
            o.send(nice(0), Bytes::from(vec![7u8; len]), permit, None)
                .expect("send");
        }
        // Rooms after each item: a large one (the long message is cut), then one just below
        // CUT_FROM (the rest of the long message waits whole).
        let rooms = [CUT_FROM, CUT_FROM - 1];
        let mut got = Vec::new();
        o.take_while(None, CUT_FROM + 1, |item| {
            got.push((item.id, item.data.len(), item.fin));
            rooms.get(got.len() - 1).copied().unwrap_or(0)
        });
        assert_eq!(got, vec![(0, CUT_FROM + 1, false), (0, CUT_FROM, false)]);
        // A short message fits a small room whole; the next call takes the rest in order.
        let mut got = Vec::new();
        o.take_while(None, CUT_FROM - 1, |item| {
            got.push((item.id, item.data.len(), item.fin));
            100
        });
        assert_eq!(
            got,
            Vec::<(u64, usize, bool)>::new(),
            "the long rest does not fit and is not cut"
        );
        o.take_while(None, usize::MAX, |item| {
            got.push((item.id, item.data.len(), item.fin));
            100
        });
        assert_eq!(
            got,
            vec![(0, CUT_FROM + 4, true), (1, 100, true), (2, 100, true)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_item_goes_in_pieces_that_keep_its_place_and_its_buffer_space() {
        let o = Outbox::new(1 << 20, any_order);
        let permit = o.reserve(10).await.expect("room");
        o.send(nice(0), Bytes::from_static(b"0123456789"), permit, None)
            .expect("send");
        let permit = o.reserve(1).await.expect("room");
        o.send(nice(0), Bytes::from_static(b"x"), permit, None)
            .expect("send");
        let both = 11 + 2 * PER_MESSAGE_OVERHEAD;
        let mut got = Vec::new();
        for _ in 0..3 {
            let item = o.next(4).await.expect("item");
            got.push((item.id, item.offset, item.data.clone(), item.fin));
            if !item.fin {
                assert_eq!(o.buffered(), both, "the rest still holds the space");
            }
        }
        let (a, x) = (got[0].0, got[0].0 + 1);
        assert_eq!(
            got,
            vec![
                (a, 0, Bytes::from_static(b"0123"), false),
                (a, 4, Bytes::from_static(b"4567"), false),
                (a, 8, Bytes::from_static(b"89"), true),
            ]
        );
        assert_eq!(o.buffered(), 1 + PER_MESSAGE_OVERHEAD);
        let last = o.next(4).await.expect("item");
        assert_eq!((last.id, last.data), (x, Bytes::from_static(b"x")));
    }

    #[tokio::test(start_paused = true)]
    async fn ordered_messages_keep_send_order_whatever_their_niceness() {
        let o = Outbox::new(1 << 20, any_order);
        let ordered = |n| MessageProperties {
            niceness: n,
            ..Default::default()
        };
        send(&o, b"a", ordered(9));
        send(&o, b"b", nice(5));
        send(&o, b"c", ordered(0));
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(item.data);
        }
        // The unordered b overtakes a; c (niceness 0) still waits for a.
        assert_eq!(got, vec!["b", "a", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn ordered_messages_behind_a_ready_predecessor_queue_straight_as_ready() {
        let o = Outbox::new(1 << 20, any_order);
        let ordered = |n| MessageProperties {
            niceness: n,
            ..Default::default()
        };
        send(&o, b"a", ordered(1));
        send(&o, b"b", ordered(1));
        send(&o, b"c", ordered(4));
        send(&o, b"d", nice(2));
        // b and c sort after a in the ready order already: nothing waits.
        assert!(o.lock().blocked.is_empty());
        assert!(o.lock().waiting.is_empty());
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(item.data);
        }
        assert_eq!(got, vec!["a", "b", "d", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_queued_before_its_predecessor_ends_waits_for_its_dispatch() {
        let o = Outbox::new(1 << 20, any_order);
        let (a, props_a) = o.open(MessageProperties::default()).expect("open a");
        o.push(
            a.id(),
            &props_a,
            (0, Bytes::from_static(b"a1"), false),
            None,
            None,
        );
        send(&o, b"b", MessageProperties::default());
        assert_eq!(o.lock().blocked.len(), 1, "b waits for a's last part");
        o.push(
            a.id(),
            &props_a,
            (2, Bytes::from_static(b"a2"), true),
            None,
            None,
        );
        // a2 was queued after b: b would sort before it, so it still waits.
        assert_eq!(o.lock().blocked.len(), 1, "b must not sort before a2");
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(item.data);
        }
        assert_eq!(got, vec!["a1", "a2", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chain_released_at_once_queues_behind_its_head() {
        let o = Outbox::new(1 << 20, acked_only);
        let head = send(&o, b"x", nice(0));
        // a waits for x's acknowledgement; b and c follow a in send order.
        send(
            &o,
            b"a",
            MessageProperties {
                antecedents: vec![head.id()],
                ..Default::default()
            },
        );
        send(&o, b"b", MessageProperties::default());
        send(&o, b"c", MessageProperties::default());
        assert_eq!(o.next(usize::MAX).await.expect("x").data, "x");
        assert_eq!(o.lock().blocked.len(), 3);
        o.update(head.id(), SendStatus::Acked, true);
        // a is ready, and with it b behind a, and c behind b.
        assert!(o.lock().blocked.is_empty());
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(item.data);
        }
        assert_eq!(got, vec!["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_message_never_overtakes_its_ordered_predecessor_in_early_data() {
        let o = Outbox::new(1 << 20, any_order);
        send(&o, b"a", MessageProperties::default());
        send(
            &o,
            b"b",
            MessageProperties {
                idempotent: true,
                ..Default::default()
            },
        );
        // 0-RTT takes only idempotent messages: b must not go before a.
        let early = tokio::time::timeout(
            Duration::from_millis(10),
            o.next_where(usize::MAX, |p| p.idempotent),
        )
        .await;
        assert!(early.is_err(), "b went out before its predecessor a");
        assert_eq!(o.next(usize::MAX).await.expect("a").data, "a");
        assert_eq!(o.next(usize::MAX).await.expect("b").data, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn antecedents_hold_back_until_safe() {
        let o = Outbox::new(1 << 20, acked_only);
        let a = send(&o, b"a", nice(9));
        let b = send(
            &o,
            b"b",
            MessageProperties {
                antecedents: vec![a.id()],
                ..Default::default()
            },
        );
        // b is more urgent but must wait for a to be acknowledged.
        let first = o.next(usize::MAX).await.expect("a");
        assert_eq!(first.data, "a");
        let pending = tokio::time::timeout(Duration::from_millis(10), o.next(usize::MAX)).await;
        assert!(pending.is_err(), "b must wait for a's acknowledgement");
        o.update(a.id(), SendStatus::Acked, true);
        assert_eq!(o.next(usize::MAX).await.expect("b").data, "b");
        assert_eq!(b.status(), SendStatus::Queued);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_and_failed_antecedent_cascade() {
        let o = Outbox::new(1 << 20, any_order);
        let reaper = tokio::spawn(o.clone().reaper());
        let a = send(
            &o,
            b"a",
            MessageProperties {
                lifetime: Some(Duration::from_millis(50)),
                ..Default::default()
            },
        );
        let b = send(
            &o,
            b"b",
            MessageProperties {
                antecedents: vec![a.id()],
                ..Default::default()
            },
        );
        // Nobody takes items: the reaper expires a at 50 ms, and b fails with it.
        let start = Instant::now();
        assert_eq!(a.outcome().await, SendStatus::Expired);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        match b.outcome().await {
            SendStatus::Failed(why) => assert!(why.contains("antecedent 0 expired"), "{why}"),
            other => panic!("b should fail, got {other:?}"),
        }
        assert!(o.settled(0) && o.settled(1));
        o.close();
        assert!(o.next(usize::MAX).await.is_none());
        reaper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_antecedent_is_rejected() {
        let o = Outbox::new(1 << 20, any_order);
        let err = o
            .open(MessageProperties {
                antecedents: vec![3],
                ..Default::default()
            })
            .expect_err("no message 3 yet");
        assert!(err.to_string().contains("antecedent 3"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn buffer_limit_applies_back_pressure() {
        let o = Outbox::new(1000, any_order);
        let p = o.reserve(900).await.expect("fits");
        assert!(matches!(o.try_reserve(100), Err(Error::WouldBlock { .. })));
        assert!(o.buffered() >= 900);
        drop(p);
        assert!(o.try_reserve(100).is_ok());
    }

    /// A whole message queued as `Carrier::send` queues it.
    fn send_whole(o: &Outbox, data: &'static [u8], props: MessageProperties) -> SendHandle {
        let permit = o.try_reserve(data.len()).expect("room");
        o.send(props, Bytes::from_static(data), permit, None)
            .expect("send")
    }

    fn is_plain(h: &SendHandle) -> bool {
        matches!(h.status, Tracker::Plain(_))
    }

    /// What a stream writer reports after writing `items` whole.
    fn fins(items: &[&Item]) -> Fins {
        let mut f = Fins::default();
        f.extend(items.iter().map(|i| (i.id, i.plain)));
        f
    }

    #[tokio::test(start_paused = true)]
    async fn plain_messages_read_their_status_from_marks_written_and_acknowledged_in_order() {
        let o = Outbox::new(1 << 20, any_order);
        // Off until a stream writer takes the outbox: every message has a cell.
        assert!(!is_plain(&send_whole(
            &o,
            b"x",
            MessageProperties::default()
        )));
        let x = o.next(usize::MAX).await.expect("x");
        o.update(x.id, SendStatus::Acked, true);
        o.set_lane(true);
        let a = send_whole(&o, b"a", MessageProperties::default());
        let b = send_whole(&o, b"b", MessageProperties::default());
        let c = send_whole(&o, b"c", MessageProperties::default());
        assert!(is_plain(&a) && is_plain(&b) && is_plain(&c));
        assert_eq!(a.status(), SendStatus::Queued);
        let ia = o.next(usize::MAX).await.expect("a");
        let ib = o.next(usize::MAX).await.expect("b");
        assert_eq!((ia.data.as_ref(), ib.data.as_ref()), (&b"a"[..], &b"b"[..]));
        o.settle(fins(&[&ia, &ib]), || SendStatus::Sent, false);
        assert_eq!(
            (a.status(), b.status()),
            (SendStatus::Sent, SendStatus::Sent)
        );
        assert_eq!(c.status(), SendStatus::Queued);
        assert_eq!(b.sent().await, SendStatus::Sent);
        // One ACK settles a; waiters on b are woken by the next.
        o.settle(fins(&[&ia]), || SendStatus::Acked, true);
        assert_eq!(a.outcome().await, SendStatus::Acked);
        assert_eq!(b.status(), SendStatus::Sent);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.outcome().await })
        };
        tokio::task::yield_now().await;
        o.settle(fins(&[&ib]), || SendStatus::Acked, true);
        assert_eq!(waiter.await.expect("waiter"), SendStatus::Acked);
        // An earlier or repeated settlement moves nothing back.
        o.settle(fins(&[&ia]), || SendStatus::Failed("late".into()), true);
        assert_eq!(a.status(), SendStatus::Acked);
        // The carrier ends: c, still queued, fails; a and b keep their outcomes.
        o.fail_all("gone");
        assert_eq!(c.outcome().await, SendStatus::Failed("gone".into()));
        assert_eq!(b.status(), SendStatus::Acked);
        assert!(o.next(usize::MAX).await.is_none(), "the lane was emptied");
    }

    #[tokio::test(start_paused = true)]
    async fn the_lane_keeps_niceness_order_and_what_waits_for_a_plain_message() {
        let o = Outbox::new(1 << 20, any_order);
        o.set_lane(true);
        let plain5 = MessageProperties {
            niceness: 5,
            ..Default::default()
        };
        let a = send_whole(&o, b"a", plain5.clone());
        let b = send_whole(&o, b"b", plain5.clone());
        assert!(is_plain(&a) && is_plain(&b));
        // Unordered and more urgent: overtakes the lane.
        let u = send_whole(&o, b"u", nice(0));
        // Ordered but idempotent: not plain, and never before its ordered predecessor b.
        let i = send_whole(
            &o,
            b"i",
            MessageProperties {
                idempotent: true,
                ..Default::default()
            },
        );
        // Waits for b to be handed over (one byte stream: handing over is enough).
        let d = send_whole(
            &o,
            b"d",
            MessageProperties {
                antecedents: vec![b.id()],
                ordered: false,
                ..Default::default()
            },
        );
        // The general queue is not empty: a message that would be plain gets a cell.
        let e = send_whole(&o, b"e", plain5);
        assert!(!is_plain(&u) && !is_plain(&i) && !is_plain(&d) && !is_plain(&e));
        o.close();
        let mut got = Vec::new();
        while let Some(item) = o.next(usize::MAX).await {
            got.push(String::from_utf8(item.data.to_vec()).expect("utf8"));
        }
        assert_eq!(got, ["u", "a", "b", "i", "d", "e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_s_batch_takes_from_the_lane_and_the_queue_in_order_and_cuts_a_long_head() {
        let o = Outbox::new(1 << 20, any_order);
        o.set_lane(true);
        let long: &'static [u8] = &[7u8; 10_000];
        let a = send_whole(
            &o,
            long,
            MessageProperties {
                niceness: 5,
                ..Default::default()
            },
        );
        send_whole(&o, b"u", nice(0));
        let mut got = Vec::new();
        o.take_while(None, 6_000, |item| {
            got.push((item.id, item.data.len(), item.fin, item.plain));
            if got.len() == 1 {
                6_000
            } else {
                0
            }
        });
        // The urgent unordered message, then the first 6,000 bytes of the plain one.
        assert_eq!(got, [(1, 1, true, false), (a.id(), 6_000, false, true)]);
        let rest = o.next(usize::MAX).await.expect("the rest");
        assert_eq!(
            (rest.id, rest.data.len(), rest.fin, rest.plain),
            (a.id(), 4_000, true, true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_lane_s_space_goes_with_its_items_whichever_way_they_leave() {
        let each = 1 + PER_MESSAGE_OVERHEAD;
        let o = Outbox::new(1 << 20, any_order);
        o.set_lane(true);
        for data in [b"a", b"b", b"c", b"d"] {
            assert!(is_plain(&send_whole(
                &o,
                data,
                MessageProperties::default()
            )));
        }
        assert_eq!(o.buffered(), 4 * each);
        // A writer's batch: its space is held until it is given back.
        let mut n = 0;
        o.take_while(None, usize::MAX, |_| {
            n += 1;
            if n < 2 {
                usize::MAX
            } else {
                0
            }
        });
        assert_eq!(n, 2);
        assert_eq!(o.buffered(), 4 * each, "held while the batch is written");
        o.give_back();
        assert_eq!(o.buffered(), 2 * each);
        // Taken alone: the item has a permit of its own, freed with it.
        let c = o.next(usize::MAX).await.expect("c");
        assert_eq!(c.data, "c");
        assert_eq!(o.buffered(), 2 * each);
        drop(c);
        assert_eq!(o.buffered(), each);
        // Failed in the lane: freed with the lane.
        o.fail_all("gone");
        assert_eq!(o.buffered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_sent_in_parts_keeps_a_later_whole_one_out_of_the_lane_until_its_end() {
        let o = Outbox::new(1 << 20, any_order);
        o.set_lane(true);
        let (p, props) = o.open(MessageProperties::default()).expect("open");
        // Nothing is queued, but p is not handed over: m may not overtake it.
        let m = send_whole(&o, b"m", MessageProperties::default());
        assert!(!is_plain(&m));
        o.push(
            p.id(),
            &props,
            (0, Bytes::from_static(b"p1"), false),
            None,
            None,
        );
        assert_eq!(o.next(usize::MAX).await.expect("p1").data, "p1");
        let waited = tokio::time::timeout(Duration::from_millis(10), o.next(usize::MAX)).await;
        assert!(waited.is_err(), "m waits for p's last part");
        o.push(
            p.id(),
            &props,
            (2, Bytes::from_static(b"p2"), true),
            None,
            None,
        );
        assert_eq!(o.next(usize::MAX).await.expect("p2").data, "p2");
        assert_eq!(o.next(usize::MAX).await.expect("m").data, "m");
        // p handed over whole: the next whole message is plain again.
        assert!(is_plain(&send_whole(
            &o,
            b"n",
            MessageProperties::default()
        )));
    }

    #[test]
    fn marks_are_segments_that_only_move_forward() {
        let m = PlainMarks::default();
        m.advance(3, SendStatus::Sent, false);
        m.advance(2, SendStatus::Acked, true);
        m.advance(4, SendStatus::Acked, true);
        m.advance(6, SendStatus::Sent, true);
        m.advance(5, SendStatus::Failed("x".into()), true);
        m.advance(9, SendStatus::Failed("y".into()), true);
        let marks = Arc::new(m);
        let status = |id| {
            SendHandle {
                id,
                status: Tracker::Plain(marks.clone()),
            }
            .status()
        };
        assert_eq!(status(0), SendStatus::Acked);
        assert_eq!(status(3), SendStatus::Acked);
        assert_eq!(status(4), SendStatus::Sent);
        assert_eq!(status(5), SendStatus::Sent);
        assert_eq!(status(6), SendStatus::Failed("y".into()));
        assert_eq!(status(8), SendStatus::Failed("y".into()));
        assert_eq!(status(9), SendStatus::Queued);
    }

    #[tokio::test(start_paused = true)]
    async fn room_free_now_does_not_let_a_later_sender_pass_one_that_waits() {
        // 1,000 bytes of buffer; costs are the length plus PER_MESSAGE_OVERHEAD.
        let o = Arc::new(Outbox::new(1000, any_order));
        let first = o.reserve(500).await.expect("fits");
        // Needs 864 of the 436 free: waits, holding what is free meanwhile.
        let big = tokio::spawn({
            let o = o.clone();
            async move { o.reserve(800).await }
        });
        tokio::task::yield_now().await;
        assert!(!big.is_finished());
        // 164 would fit the 436 that were free: it must queue behind the big one.
        let small = tokio::spawn({
            let o = o.clone();
            async move { o.reserve(100).await.map(|p| p.num_permits()) }
        });
        tokio::task::yield_now().await;
        assert!(
            !small.is_finished(),
            "a later sender went past a waiting one"
        );
        drop(first);
        let big = big.await.expect("joined").expect("room");
        assert_eq!(big.num_permits(), 864);
        tokio::task::yield_now().await;
        assert!(
            !small.is_finished(),
            "136 free after the big one: the small one waits on"
        );
        drop(big);
        assert_eq!(small.await.expect("joined").expect("room"), 164);
    }
}
