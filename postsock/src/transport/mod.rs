//! Transients: one protocol-stack instance on one path.
//!
//! A transient is a set of tasks: a sending loop that takes items from the carrier's
//! send queue (the outbox) and a reader that turns what arrives into [`crate::Event`]s on the
//! carrier's event channel. The reader's last event says how the transient ended.

pub(crate) mod assemble;
mod awaited;
mod cc;
pub(crate) mod framing;
pub(crate) mod inline;
pub(crate) mod moving;
pub(crate) mod outbox;
#[doc(hidden)]
pub mod queue_bench;
pub(crate) mod quic;
mod seqmap;
pub(crate) mod stream;
mod stream_cap;
pub mod tls;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use smallvec::SmallVec;

use crate::Event;

/// The transient's side of a carrier's event queue. The queue is bounded twice: in events
/// (`Configuration::receive_queue`) and in payload bytes (`Configuration::receive_buffer`), so
/// an application that stops reading holds a bounded amount of memory; past the bound the
/// readers stop and the transport's flow control slows the peer.
///
/// One mutex guards the queue and both bounds: an event costs one uncontended lock to queue
/// and one to take, where a bounded `mpsc` channel plus a byte semaphore cost two semaphore
/// operations and a channel slot each way (and the carrier's receive lock a third). Waiting
/// tasks leave their wakers in the queue; both ends take part in tokio's cooperative
/// budget, as the channel did.
#[derive(Debug)]
pub(crate) struct EventTx {
    q: Arc<EventQueue>,
}

#[derive(Debug)]
struct EventQueue {
    state: Mutex<QueueState>,
    /// At most this many events queued.
    events: usize,
    /// At most this many payload bytes queued.
    bytes: usize,
}

#[derive(Debug)]
struct QueueState {
    /// Events with the payload bytes each is charged.
    queue: VecDeque<(Event, usize)>,
    held: usize,
    /// Live `EventTx` handles: with none left and nothing queued, `recv` ends.
    senders: usize,
    /// The `EventRx` is alive.
    receiver: bool,
    /// Tasks waiting for an event, and for room.
    rx_waiting: SmallVec<[Waker; 1]>,
    tx_waiting: SmallVec<[Waker; 1]>,
}

impl EventQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        crate::util::lock(&self.state)
    }

    /// Queues `event`, charged `size` bytes (the caller checked the bounds under `st`), and
    /// wakes the tasks waiting for an event.
    fn push(mut st: std::sync::MutexGuard<'_, QueueState>, event: Event, size: usize) {
        st.enqueue(event, size);
        wake_taken(st, |st| &mut st.rx_waiting);
    }

    /// Whether an event charged `size` bytes fits behind `queued` events holding `held`.
    fn fits(&self, queued: usize, held: usize, size: usize) -> bool {
        queued < self.events && held + size <= self.bytes
    }

    /// How many of `events`, from the first, fit the queue in `st` now.
    fn room_for(&self, st: &QueueState, events: &[Event]) -> usize {
        let (mut queued, mut held) = (st.queue.len(), st.held);
        events
            .iter()
            .take_while(|e| {
                let size = self.charge(e);
                let fits = self.fits(queued, held, size);
                queued += 1;
                held += size;
                fits
            })
            .count()
    }

    /// The payload bytes `event` is charged (at most the whole bound, so it fits an empty
    /// queue).
    fn charge(&self, event: &Event) -> usize {
        match event {
            Event::Received(m) => m.data.len(),
            Event::ReceivedPartial(p) => p.data.len(),
            _ => 0,
        }
        .min(self.bytes)
    }
}

impl QueueState {
    /// Queues `event`, charged `size` bytes (the caller checked the bounds).
    fn enqueue(&mut self, event: Event, size: usize) {
        self.queue.push_back((event, size));
        self.held += size;
    }
}

/// Leaves `waker` in `list` unless it is there already.
fn park(list: &mut SmallVec<[Waker; 1]>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

fn wake_all(list: impl IntoIterator<Item = Waker>) {
    for w in list {
        w.wake();
    }
}

/// Lets go of the queue's lock and wakes the tasks in the list `which` picks; nothing (no
/// move of the list, no iterator) when it is empty, as it is for nearly every event queued
/// and taken.
fn wake_taken(
    mut st: std::sync::MutexGuard<'_, QueueState>,
    which: impl FnOnce(&mut QueueState) -> &mut SmallVec<[Waker; 1]>,
) {
    let list = which(&mut st);
    if list.is_empty() {
        return;
    }
    let waiting = std::mem::take(list);
    drop(st);
    wake_all(waiting);
}

impl Clone for EventTx {
    fn clone(&self) -> Self {
        self.q.lock().senders += 1;
        EventTx { q: self.q.clone() }
    }
}

impl Drop for EventTx {
    fn drop(&mut self) {
        let mut st = self.q.lock();
        st.senders -= 1;
        if st.senders == 0 {
            let waiting = std::mem::take(&mut st.rx_waiting);
            drop(st);
            wake_all(waiting);
        }
    }
}

impl EventTx {
    /// Queues an event, waiting for room. Fails once the carrier is gone.
    pub(crate) async fn send(&self, event: Event) -> Result<(), ()> {
        let size = self.q.charge(&event);
        let mut event = Some(event);
        poll_fn(|cx| self.poll_send(cx, &mut event, size)).await
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        event: &mut Option<Event>,
        size: usize,
    ) -> Poll<Result<(), ()>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut st = self.q.lock();
        if !st.receiver {
            return Poll::Ready(Err(()));
        }
        if !self.q.fits(st.queue.len(), st.held, size) {
            park(&mut st.tx_waiting, cx.waker());
            return Poll::Pending;
        }
        if let Some(event) = event.take() {
            EventQueue::push(st, event, size);
            coop.made_progress();
        }
        Poll::Ready(Ok(()))
    }

    /// Queues every event of `events` in order, as many at a time as there is room for,
    /// each run under one lock, and leaves `events` empty. Fails once the carrier is gone
    /// (what was not queued is dropped). Cancel-safe: what is still in `events` was not
    /// queued.
    pub(crate) async fn send_all(&self, events: &mut Vec<Event>) -> Result<(), ()> {
        poll_fn(|cx| self.poll_send_all(cx, events)).await
    }

    fn poll_send_all(&self, cx: &mut Context<'_>, events: &mut Vec<Event>) -> Poll<Result<(), ()>> {
        if events.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut st = self.q.lock();
        if !st.receiver {
            events.clear();
            return Poll::Ready(Err(()));
        }
        let fit = self.q.room_for(&st, events);
        if fit > 0 {
            coop.made_progress();
            for event in events.drain(..fit) {
                let size = self.q.charge(&event);
                st.enqueue(event, size);
            }
        }
        if events.is_empty() {
            wake_taken(st, |st| &mut st.rx_waiting);
            return Poll::Ready(Ok(()));
        }
        park(&mut st.tx_waiting, cx.waker());
        if fit > 0 {
            wake_taken(st, |st| &mut st.rx_waiting);
        }
        Poll::Pending
    }

    /// Whether the carrier is gone (nobody will read events again).
    pub(crate) fn is_closed(&self) -> bool {
        !self.q.lock().receiver
    }

    /// Queues an event if there is room now (in events: its bytes are not charged).
    pub(crate) fn try_send(&self, event: Event) -> bool {
        let st = self.q.lock();
        if !st.receiver || st.queue.len() >= self.q.events {
            return false;
        }
        EventQueue::push(st, event, 0);
        true
    }
}

/// The carrier's side of its event queue.
#[derive(Debug)]
pub(crate) struct EventRx {
    q: Arc<EventQueue>,
}

impl EventRx {
    /// The next event; its bytes leave the queue's budget as it is handed over. `None` once
    /// every sender is gone and nothing is queued. Several tasks may wait at once; each event
    /// goes to one of them.
    pub(crate) async fn recv(&self) -> Option<Event> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let mut st = self.q.lock();
        match st.queue.pop_front() {
            Some((event, size)) => {
                st.held -= size;
                wake_taken(st, |st| &mut st.tx_waiting);
                coop.made_progress();
                Poll::Ready(Some(event))
            }
            None if st.senders == 0 => Poll::Ready(None),
            None => {
                park(&mut st.rx_waiting, cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for EventRx {
    fn drop(&mut self) {
        let mut st = self.q.lock();
        st.receiver = false;
        st.held = 0;
        let queued = std::mem::take(&mut st.queue);
        let waiting = std::mem::take(&mut st.tx_waiting);
        drop(st);
        drop(queued);
        wake_all(waiting);
    }
}

/// An event queue of at most `events` events and `bytes` payload bytes.
pub(crate) fn event_channel(events: usize, bytes: usize) -> (EventTx, EventRx) {
    let q = Arc::new(EventQueue {
        state: Mutex::new(QueueState {
            queue: VecDeque::new(),
            held: 0,
            senders: 1,
            receiver: true,
            rx_waiting: SmallVec::new(),
            tx_waiting: SmallVec::new(),
        }),
        events: events.max(2),
        bytes: bytes.max(1),
    });
    (EventTx { q: q.clone() }, EventRx { q })
}

impl crate::path::Announce for EventTx {
    fn announce(&self, event: Event) -> crate::net::BoxFuture<'_, bool> {
        Box::pin(async move { self.send(event).await.is_ok() })
    }

    fn gone(&self) -> bool {
        self.is_closed()
    }
}

/// A wait for a `watch` value to meet a condition (or its sender to go) that stays
/// registered between polls, for a loop that selects on it at every step. A wait made afresh
/// in each `select!` (`wait_for`) registers a waiter and removes it again at every step
/// (about 600 instructions; ten times per QUIC echo round trip, BENCHMARKS.md). This one
/// registers once, and a poll from the same task while the value has not changed only
/// compares the waker and the value's version.
pub(crate) struct KeptWait<T> {
    value: tokio::sync::watch::Receiver<T>,
    /// `None` once the condition has been seen met.
    wait: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
    /// The waker `wait` last registered.
    waker: Option<Waker>,
    /// A flag's value when the wait was made ([`KeptWait::is_set`]).
    initial: bool,
}

impl<T: Send + Sync + 'static> KeptWait<T> {
    pub(crate) fn new(
        value: &tokio::sync::watch::Receiver<T>,
        until: impl FnMut(&T) -> bool + Send + Sync + 'static,
    ) -> Self {
        let mut rx = value.clone();
        KeptWait {
            value: value.clone(),
            initial: false,
            wait: Some(Box::pin(async move {
                let _ = rx.wait_for(until).await;
            })),
            waker: None,
        }
    }

    /// The value now.
    pub(crate) fn value(&self) -> tokio::sync::watch::Ref<'_, T> {
        self.value.borrow()
    }

    /// Ready once the condition is met (or the sender has gone), and at every poll after.
    pub(crate) fn ready(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            let Some(wait) = self.wait.as_mut() else {
                return Poll::Ready(());
            };
            // `value` never marks a version seen: once the value changes (or its sender
            // goes) every poll goes on to `wait`, which then looks at it.
            let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if registered && matches!(self.value.has_changed(), Ok(false)) {
                return Poll::Pending;
            }
            if wait.as_mut().poll(cx).is_ready() {
                self.wait = None;
                self.waker = None;
                return Poll::Ready(());
            }
            if !registered {
                self.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// A watched flag that reads with one load while its version is the one it was made with
/// (then it is the value it had); the watch's read lock otherwise. Its clones share that.
#[derive(Clone, Debug)]
pub(crate) struct Flag {
    rx: tokio::sync::watch::Receiver<bool>,
    initial: bool,
}

impl Flag {
    pub(crate) fn new(rx: &tokio::sync::watch::Receiver<bool>) -> Flag {
        let rx = rx.clone();
        // Read after the clone: while the version is the clone's, this is the value.
        let initial = *rx.borrow();
        Flag { rx, initial }
    }

    /// The flag now; `None` once its sender has gone.
    pub(crate) fn get(&self) -> Option<bool> {
        flag_now(&self.rx, self.initial)
    }
}

/// Flag `rx` now, given its value `initial` at the version `rx` has seen; `None` once its
/// sender has gone.
fn flag_now(rx: &tokio::sync::watch::Receiver<bool>, initial: bool) -> Option<bool> {
    match rx.has_changed() {
        Ok(false) => Some(initial),
        Ok(true) => Some(*rx.borrow()),
        Err(_) => None,
    }
}

impl KeptWait<bool> {
    /// A wait for the flag to be set.
    pub(crate) fn flag(flag: &tokio::sync::watch::Receiver<bool>) -> Self {
        let mut wait = Self::new(flag, |set| *set);
        // Read after `value` was cloned: while the version is the one it was cloned with,
        // this is the flag's value.
        let initial = *wait.value();
        wait.initial = initial;
        wait
    }

    /// Whether the flag is set now. While its version is the one `value` was made with (a
    /// load, no lock: the reader asks once per frame), it is the value it had then.
    pub(crate) fn is_set(&self) -> bool {
        flag_now(&self.value, self.initial).unwrap_or_else(|| *self.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Received;
    use bytes::Bytes;
    use std::time::Duration;

    /// Wakes count how often they were woken.
    pub(crate) struct Count(pub(crate) std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for Count {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A waker that counts its wake-ups, and the count.
    pub(crate) fn counting() -> (Arc<Count>, std::task::Waker) {
        let count = Arc::new(Count(Default::default()));
        (count.clone(), futures_util::task::waker(count))
    }

    fn poll_set(wait: &mut KeptWait<bool>, waker: &std::task::Waker) -> std::task::Poll<()> {
        let mut cx = std::task::Context::from_waker(waker);
        let set = std::pin::pin!(wait.ready());
        std::future::Future::poll(set, &mut cx)
    }

    #[test]
    fn a_kept_wait_on_a_flag_wakes_whoever_polled_it_last_and_stays_ready() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut wait = KeptWait::flag(&rx);
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        assert!(poll_set(&mut wait, &first_waker).is_pending());
        // Polled again by the same waker: the look without the waiter.
        assert!(poll_set(&mut wait, &first_waker).is_pending());
        assert!(!wait.is_set());
        // Another waker takes the waiter over: it is the one woken.
        assert!(poll_set(&mut wait, &second_waker).is_pending());
        tx.send_replace(true);
        assert_eq!(second.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(first.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(wait.is_set());
        assert!(poll_set(&mut wait, &second_waker).is_ready());
        assert!(poll_set(&mut wait, &first_waker).is_ready());
        // Made after the flag was set: ready at once.
        assert!(poll_set(&mut KeptWait::flag(&rx), &first_waker).is_ready());
    }

    #[test]
    fn a_flag_and_a_kept_flag_read_their_value_with_or_without_a_change_since() {
        // Both read the flag with one load while it is unchanged (`flag_now`).
        let both = |rx: &tokio::sync::watch::Receiver<bool>| (Flag::new(rx), KeptWait::flag(rx));
        let read = |(flag, wait): &(Flag, KeptWait<bool>)| (flag.get(), wait.is_set());
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        tx.send_replace(true);
        // Made from a receiver that saw the newest version: set without a change since.
        rx.borrow_and_update();
        let made = both(&rx);
        assert!(matches!(made.1.value.has_changed(), Ok(false)));
        assert_eq!(read(&made), (Some(true), true));
        let copy = made.0.clone();
        tx.send_replace(false);
        assert_eq!(read(&made), (Some(false), false));
        assert_eq!(copy.get(), Some(false));
        // Made from one behind the newest version: the change is read.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let made = both(&rx);
        assert_eq!(read(&made), (Some(false), false));
        tx.send_replace(true);
        assert_eq!(read(&both(&rx)), (Some(true), true));
        assert_eq!(read(&made), (Some(true), true));
        // Its sender gone: no value for a flag, the last one for a kept wait.
        drop(tx);
        assert_eq!(read(&made), (None, true));
    }

    #[test]
    fn a_kept_wait_on_a_flag_ends_when_the_flag_goes() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut wait = KeptWait::flag(&rx);
        let (count, waker) = counting();
        assert!(poll_set(&mut wait, &waker).is_pending());
        assert!(poll_set(&mut wait, &waker).is_pending());
        drop(tx);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(poll_set(&mut wait, &waker).is_ready());
        assert!(!wait.is_set());
    }

    fn message(id: u64, len: usize) -> Event {
        Event::Received(Received {
            id,
            data: Bytes::from(vec![0u8; len]),
            reliable: true,
        })
    }

    fn id(event: Option<Event>) -> u64 {
        match event {
            Some(Event::Received(m)) => m.id,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Whether `f` completes within a (paused-clock) second.
    async fn done<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(1), f).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_event_queue_holds_senders_at_either_bound_and_lets_them_on_as_events_go() {
        // Bound in events: two.
        let (tx, rx) = event_channel(2, 1 << 20);
        assert!(done(tx.send(message(1, 10))).await.is_some());
        assert!(done(tx.send(Event::Ready)).await.is_some());
        assert!(
            done(tx.send(message(2, 10))).await.is_none(),
            "two events queued"
        );
        assert!(
            !tx.try_send(Event::Dormant),
            "try_send respects the bound too"
        );
        assert_eq!(id(rx.recv().await), 1);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(message(3, 10)).await }
        });
        tokio::task::yield_now().await;
        assert!(matches!(rx.recv().await, Some(Event::Ready)));
        assert_eq!(
            done(waiting).await.expect("let on").expect("joined"),
            Ok(())
        );
        assert_eq!(id(rx.recv().await), 3);

        // Bound in bytes: 100; an event longer than the bound is charged the bound, so it
        // fits an empty queue.
        let (tx, rx) = event_channel(16, 100);
        assert!(done(tx.send(message(1, 60))).await.is_some());
        assert!(
            done(tx.send(message(2, 60))).await.is_none(),
            "120 of 100 bytes"
        );
        assert!(
            done(tx.send(Event::Ready)).await.is_some(),
            "no payload: no bytes"
        );
        assert_eq!(id(rx.recv().await), 1);
        assert!(matches!(rx.recv().await, Some(Event::Ready)));
        assert!(
            done(tx.send(message(3, 500))).await.is_some(),
            "alone it fits"
        );
        assert!(
            done(tx.send(message(4, 1))).await.is_none(),
            "the bound is full"
        );
        assert_eq!(id(rx.recv().await), 3);
        assert!(done(tx.send(message(4, 1))).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_events_is_queued_as_far_as_either_bound_allows_and_the_rest_in_order_later() {
        // Bound: three events, 100 bytes.
        let (tx, rx) = event_channel(3, 100);
        let (woken, waker) = counting();
        let mut run: Vec<Event> = (1..=5).map(|i| message(i, 10)).collect();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_send_all(&mut cx, &mut run).is_pending());
        assert_eq!(run.len(), 2, "three events fit, two wait");
        assert_eq!(id(rx.recv().await), 1);
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(tx.poll_send_all(&mut cx, &mut run).is_pending());
        assert_eq!(run.len(), 1, "one more fits");
        // The rest, then a run the byte bound holds back as well: 5 and 6 queued are 60
        // bytes, and 7 would make them 110.
        let mut long = vec![message(6, 50), message(7, 50), Event::Ready];
        let sent = tokio::spawn({
            let tx = tx.clone();
            async move {
                tx.send_all(&mut run).await?;
                tx.send_all(&mut long).await.map(|()| long.len())
            }
        });
        let mut got = Vec::new();
        while got.len() < 7 {
            match rx.recv().await {
                Some(Event::Ready) => break,
                e => got.push(id(e)),
            }
        }
        assert_eq!(got, [2, 3, 4, 5, 6, 7], "in order, nothing lost");
        assert_eq!(done(sent).await.expect("let on").expect("joined"), Ok(0));
        // A run longer than the byte bound starts in an empty queue.
        let (tx, rx) = event_channel(8, 100);
        let mut run = vec![message(1, 500), message(2, 1)];
        assert!(
            done(tx.send_all(&mut run)).await.is_none(),
            "the bound is full"
        );
        assert_eq!(run.len(), 1);
        assert_eq!(id(rx.recv().await), 1);
        assert!(done(tx.send_all(&mut run)).await.is_some());
        assert!(run.is_empty());
        assert_eq!(id(rx.recv().await), 2);
        // Nobody reads any more: the run fails and is dropped.
        drop(rx);
        let mut run = vec![message(3, 1)];
        assert_eq!(tx.send_all(&mut run).await, Err(()));
        assert!(run.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_event_queue_ends_when_either_side_is_gone() {
        let (tx, rx) = event_channel(4, 1000);
        let other = tx.clone();
        assert!(tx.send(message(1, 1)).await.is_ok());
        drop(tx);
        assert_eq!(id(rx.recv().await), 1);
        assert!(done(rx.recv()).await.is_none(), "a sender is left: wait");
        let ended = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        drop(other);
        assert!(
            done(ended).await.expect("woken").expect("joined"),
            "every sender gone"
        );

        let (tx, rx) = event_channel(2, 1);
        assert!(tx.send(message(1, 1)).await.is_ok());
        assert!(!tx.is_closed());
        let held = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(message(2, 1)).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(done(held).await.expect("woken").expect("joined"), Err(()));
        assert!(tx.send(message(3, 1)).await.is_err());
        assert!(!tx.try_send(Event::Ready));
    }

    #[tokio::test(start_paused = true)]
    async fn each_event_goes_to_one_of_several_waiting_receivers() {
        let (tx, rx) = event_channel(8, 1000);
        let rx = Arc::new(rx);
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let rx = rx.clone();
            waiting.push(tokio::spawn(async move { id(rx.recv().await) }));
        }
        tokio::task::yield_now().await;
        for i in 1..=3 {
            tx.send(message(i, 1)).await.expect("open");
        }
        let mut got = Vec::new();
        for w in waiting {
            got.push(done(w).await.expect("each woken").expect("joined"));
        }
        got.sort();
        assert_eq!(got, [1, 2, 3]);
    }
}
