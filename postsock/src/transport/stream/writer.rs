//! The writer task of a stream transient: frames from the outbox, ACKs, keepalives, CLOSE.

use super::*;

/// How long an aborting writer may take to finish its frame and say goodbye.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The writer stops (the transient is being replaced, or broke).
pub(super) const KILL_STOP: u8 = 1;
/// The writer tells the peer the carrier is aborted, then stops.
pub(super) const KILL_ABORT: u8 = 2;

/// How the writer is told to end, once it is (a stop if the sender went without a word).
async fn killed(kill: &mut KeptWait<u8>) -> u8 {
    kill.ready().await;
    match *kill.value() {
        0 => KILL_STOP,
        how => how,
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

/// Most bytes of frames gathered into one write (one system call): what the TLS layer takes
/// in one write (rustls's default buffer limit). A batch a few bytes longer went out as two
/// writes, the second a TLS record and a system call of its own for those few bytes (at
/// 1 MiB messages, half the system calls and a tiny record to decrypt per 64 KiB).
pub(super) const BATCH: usize = 64 * 1024;
/// How much sending time one write may gather (see [`Acks::batch_limit`]).
pub(super) const BATCH_TIME: Duration = Duration::from_millis(2);
/// An ACK waits at most this long for data to ride on, or for more to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// ...unless this many units are unacknowledged. Two of the writer's largest batches: an ACK
/// is a write, a TLS record and a read at each end, and at 32 KiB a fast path spent about a
/// tenth of its CPU on them. The 1 ms delay bounds what it holds back on a slow path, where
/// that comes first; a window (twice the bytes of the delivery rate × the RTT, at least
/// 5 ms) is many times either on a fast one.
const ACK_EVERY: u64 = 128 * 1024;

/// The reader's side of the count of units received, which the writer acknowledges.
pub(super) struct AckTx {
    tx: watch::Sender<u64>,
    /// The count the writer last acknowledged.
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// Set (with a wake-up) when the reader's ACK delay ran out: acknowledge now.
    due: Arc<std::sync::atomic::AtomicBool>,
    /// The `sent` count at the last wake-up for `ACK_EVERY`: one per ACK the writer sends.
    /// (Waking at every frame past the threshold cost a notification of the writer's
    /// watchers per frame until it ran; what arrives while it writes it looks at after.)
    woke_at: std::sync::atomic::AtomicU64,
}

/// The writer's side of [`AckTx`].
pub(super) struct AckRx {
    rx: watch::Receiver<u64>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    due: Arc<std::sync::atomic::AtomicBool>,
}

/// The count of units received (starting at `start`), from the reader to the writer.
pub(super) fn ack_signal(start: u64) -> (AckTx, AckRx) {
    let (tx, rx) = watch::channel(start);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let due = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (
        AckTx {
            tx,
            sent: sent.clone(),
            due: due.clone(),
            woke_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        },
        AckRx { rx, sent, due },
    )
}

impl AckTx {
    /// `count` units are received. The writer is woken only once `ACK_EVERY` units wait
    /// (it acknowledges at once); true if this is the first unit not yet acknowledged, for
    /// which the reader starts the ACK delay itself (`ack_due_at`). Waking the writer to
    /// start that timer cost a task wake-up per received message, and, on a runtime with
    /// several workers, mostly a hand-over to another worker: the reader wakes the
    /// application with the same message, and of two tasks woken at once one moves. An
    /// answer the application sends within the delay carries the ACK, and the writer,
    /// after each write, looks again at what arrived meanwhile (`write_loop`).
    pub(super) fn received(&self, count: u64) -> bool {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let mut first = false;
        self.tx.send_if_modified(|v| {
            let before = *v;
            *v = count;
            let sent = self.sent.load(SeqCst);
            first = before <= sent && count > sent;
            let wake =
                count.saturating_sub(sent) >= ACK_EVERY && self.woke_at.load(Relaxed) != sent;
            if wake {
                self.woke_at.store(sent, Relaxed);
            }
            wake
        });
        first
    }

    /// When an ACK is due for the first unit not yet acknowledged, if it arrives now.
    pub(super) fn ack_due_at() -> Instant {
        Instant::now() + ACK_DELAY
    }

    /// Whether some received unit is not acknowledged yet.
    pub(super) fn pending(&self) -> bool {
        *self.tx.borrow() > self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The ACK delay ran out with units unacknowledged: the writer acknowledges now.
    pub(super) fn due_now(&self) {
        self.due.store(true, std::sync::atomic::Ordering::SeqCst);
        self.tx.send_modify(|_| {});
    }
}

pub(crate) fn frame_header(item: &Item) -> [u8; HEADER_LEN] {
    if item.abort {
        FrameHeader::abort(item.id).encode()
    } else {
        // `next` cut the item to at most MAX_FRAME bytes.
        FrameHeader::part(item.id, item.data.len() as u32, item.fin).encode()
    }
}

/// Payloads at least this long are written from the message's own buffer (a vectored write)
/// rather than copied into the batch first.
const VECTOR_FROM: usize = 4096;

/// What one write sends: small pieces (headers, ACKs, short payloads) copied together, and
/// long payloads referenced where they are, in order.
#[derive(Clone)]
pub(super) struct Batch {
    parts: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            parts: Vec::new(),
            small: BytesMut::with_capacity(16 * 1024),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.small.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push(&mut self, data: &Bytes) {
        if data.len() < VECTOR_FROM {
            return self.extend_from_slice(data);
        }
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
        self.parts.push(data.clone());
        self.len += data.len();
    }

    /// Writes everything, in order, with as few system calls as the stream allows.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> std::io::Result<()> {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
        let mut first = 0;
        while first < self.parts.len() {
            let slices: Vec<std::io::IoSlice<'_>> = self.parts[first..]
                .iter()
                .take(64)
                .map(|p| std::io::IoSlice::new(p))
                .collect();
            let mut n = out.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let part = &mut self.parts[first];
                let take = n.min(part.len());
                bytes::Buf::advance(part, take);
                n -= take;
                if part.is_empty() {
                    first += 1;
                }
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.parts.clear();
        self.small.clear();
        self.len = 0;
    }
}

/// Adds `item`'s frame to `batch` (recorded as written first: the peer's ACK can come back
/// before the write returns); true if the message asks to be sent immediately.
fn append(
    batch: &mut Batch,
    item: Item,
    (acks, keep, now): (&mut AckWindow, bool, Instant),
    sent_fins: &mut Fins,
) -> bool {
    let mut header = frame_header(&item);
    if acks.fills_window(item.data.len()) {
        // Nothing more goes out until an ACK comes: the peer should not hold it back for
        // its ACK delay (at the start of a carrier, with the first small window, that delay
        // was most of each round trip).
        header[1] |= FLAG_ACK_NOW;
    }
    batch.extend_from_slice(&header);
    batch.push(&item.data);
    if item.fin && !item.abort {
        sent_fins.push(item.id, item.plain);
    }
    let immediate = item.props.immediate;
    // The item's payload goes to the window as it is (kept for a continuation), not a copy
    // of its handle: one reference count less to raise and drop per message.
    acks.written_item(now, item, &header, keep);
    immediate
}

/// Appends an ACK of the units received since the last one sent (`sent`, also published
/// for the reader in `shared`), if any.
fn pending_ack(
    batch: &mut Batch,
    ack_rx: &mut watch::Receiver<u64>,
    (sent, shared): (&mut u64, &std::sync::atomic::AtomicU64),
) {
    let count = *ack_rx.borrow_and_update();
    if count > *sent {
        batch.extend_from_slice(&FrameHeader::ack(count).encode());
        *sent = count;
        shared.store(count, std::sync::atomic::Ordering::SeqCst);
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
    Err(ConnectionError::Aborted.into())
}

/// Gives back the send-buffer space held for a writer when it is dropped.
struct GiveBack<'a>(&'a Outbox);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    core: &StreamCore,
    (preamble, early): (Vec<Bytes>, Option<EarlyStart>),
    AckRx {
        rx: mut ack_rx,
        sent: ack_sent_shared,
        due: ack_due_now,
    }: AckRx,
    kill: watch::Receiver<u8>,
) -> Result<()> {
    let (outbox, acks) = (&core.outbox, &core.acks);
    // However the writer ends, the send-buffer space the outbox holds for it goes back: the
    // next transient may be QUIC, which never takes through `take_while`.
    let _give_back = GiveBack(outbox);
    let mut kill = KeptWait::new(&kill, |k| *k != 0);
    let keep = core.token.is_some();
    let io = |e: std::io::Error| tcp("write", e);
    let mut draining = true;
    let mut dirty = false;
    // The ACK count last sent (a continuation's HELLO has sent the count it starts from),
    // and when a pending one is due. The count the transient started from, not the count
    // now: a writer first polled after its reader took frames must still acknowledge them
    // (it took the current count, and a peer's first message then waited for a keepalive).
    let mut ack_sent: u64 = ack_sent_shared.load(std::sync::atomic::Ordering::SeqCst);
    let mut ack_due: Option<Instant> = None;
    let mut batch = Batch::new();
    for piece in preamble {
        batch.extend_from_slice(&piece);
    }
    let mut flush = !batch.is_empty();
    let mut carries_data = false;
    let mut sent_fins = Fins::default();
    // The items of the batch being gathered (kept for its allocation).
    let mut gathered: Vec<Item> = Vec::new();
    if let Some(start) = early {
        let _ = start.gate.await;
        // TLS early data, which anyone who recorded it could replay: only idempotent
        // messages (RFC 9622 §9.1.3.4), what is ready now and fits the ticket's allowance.
        {
            let (mut window, now) = (acks.lock(), Instant::now());
            loop {
                let room = (MAX_EARLY_DATA as usize).saturating_sub(batch.len() + HEADER_LEN);
                if room == 0 || !window.has_room() {
                    break;
                }
                let Some(item) = outbox.try_next_where(room, |p| p.idempotent) else {
                    break;
                };
                carries_data = true;
                append(&mut batch, item, (&mut window, keep, now), &mut sent_fins);
            }
        }
        // The flush completes the handshake; nothing else is written before it. A server
        // that took TCP but never answers TLS would otherwise hold the carrier forever.
        let handshake = async {
            batch.write_to(&mut out).await?;
            out.flush().await
        };
        let done = tokio::select! {
            biased;
            _ = killed(&mut kill) => return Err(ConnectionError::TransientEnded.into()),
            done = tokio::time::timeout(start.timeout, handshake) => done,
        };
        match done {
            Ok(r) => r.map_err(io)?,
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "TLS handshake after early data not done in {:?}",
                        start.timeout
                    ),
                );
                return Err(tcp("handshake", e));
            }
        }
        if std::mem::take(&mut carries_data) {
            core.wrote_data();
        }
        batch.clear();
        flush = false;
        outbox.settle(std::mem::take(&mut sent_fins), || SendStatus::Sent, false);
    }
    loop {
        if batch.is_empty() && !flush {
            let step = tokio::select! {
                biased;
                how = killed(&mut kill) => Step::Killed(how),
                Ok(()) = ack_rx.changed() => Step::Ack,
                _ = crate::util::until_opt(ack_due) => Step::AckDue,
                item = async {
                    if !acks.has_room() {
                        // Waiting for the peer, not the queue: what was taken is on its way.
                        outbox.give_back();
                        acks.window_open().await;
                    }
                    outbox.next(MAX_FRAME).await
                }, if draining => Step::Item(item),
                _ = acks.all_acked(), if !draining => Step::Done,
                // (select! builds every branch's future, so these read the clock and make a
                // timer only when they can fire; otherwise they never complete.)
                _ = crate::util::until_opt(dirty.then(|| Instant::now() + FLUSH_DELAY)) => Step::Flush,
                _ = crate::util::until_opt(core.keepalive.filter(|_| keep).map(|k| Instant::now() + k)) => Step::KeepAlive,
            };
            match step {
                Step::Killed(KILL_ABORT) => return say_aborted(&mut out).await,
                // Closing with everything acknowledged: the peer going away now costs nothing.
                Step::Killed(_) if !draining && acks.lock().nothing_unacked() => return Ok(()),
                Step::Killed(_) => return Err(ConnectionError::TransientEnded.into()),
                Step::Ack => {
                    let count = *ack_rx.borrow_and_update();
                    let due = ack_due_now.swap(false, std::sync::atomic::Ordering::SeqCst);
                    if count - ack_sent < ACK_EVERY && !due {
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
                Step::Item(Some(mut first)) => {
                    // Gather what is ready into one write, within the window.
                    carries_data = true;
                    // A pending ACK goes ahead of the data: the peer settles what it sent
                    // before it reads (and hands its application) what answers it, so an
                    // application that answers at once finds its carrier idle.
                    pending_ack(&mut batch, &mut ack_rx, (&mut ack_sent, &ack_sent_shared));
                    // The items are taken under the outbox's lock alone, against a look at
                    // the window taken before, and framed after it is let go, so neither
                    // the application's `send` (the outbox's lock) nor the reader's ACKs
                    // (the window's, then the outbox's) wait for a whole batch to be
                    // framed. Between the two looks at the window an ACK can only make room.
                    let (limit, mut free) = {
                        let window = acks.lock();
                        (window.batch_limit(), window.free())
                    };
                    // The room for the next frame's payload: the batch stays within the
                    // limit with that frame's header and an ACK that may ride along.
                    let room_after = |used: usize, free: u64| {
                        if free == 0 {
                            return 0;
                        }
                        limit.saturating_sub(used + 2 * HEADER_LEN).min(MAX_FRAME)
                    };
                    let mut used = batch.len();
                    let mut take = |item: Item| {
                        used += HEADER_LEN + item.data.len();
                        free = free.saturating_sub(ack_units(item.data.len()));
                        gathered.push(item);
                        room_after(used, free)
                    };
                    // The first item's share of the send buffer goes back with the others'.
                    let first_permit = first.take_permit();
                    let room = take(first);
                    outbox.take_while(first_permit, room, take);
                    let (mut window, now) = (acks.lock(), Instant::now());
                    for item in gathered.drain(..) {
                        flush |= append(&mut batch, item, (&mut window, keep, now), &mut sent_fins);
                    }
                    flush |= outbox.idle();
                }
            }
        }
        // A pending ACK rides along with whatever is written now.
        pending_ack(&mut batch, &mut ack_rx, (&mut ack_sent, &ack_sent_shared));
        ack_due = None;
        let mut aborted = false;
        {
            let write = async {
                if !batch.is_empty() {
                    batch.write_to(&mut out).await?;
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
                Some(_) => return Err(ConnectionError::TransientEnded.into()),
                None => {}
            }
        }
        if aborted {
            return say_aborted(&mut out).await;
        }
        // Only writes the peer must acknowledge count as sent (`wrote_data`).
        if std::mem::take(&mut carries_data) {
            core.wrote_data();
        }
        dirty = !flush;
        flush = false;
        batch.clear();
        // What arrived during the write and is not acknowledged yet: the reader woke us
        // only if it was the first unacknowledged unit (see `AckTx::received`), and that
        // one's timer was just dropped.
        if *ack_rx.borrow() > ack_sent {
            ack_rx.mark_changed();
        }
        outbox.settle(std::mem::take(&mut sent_fins), || SendStatus::Sent, false);
    }
    // The peer's last messages are acknowledged before we go, so that they end acked, not
    // merely sent, at the peer.
    let mut tail = Vec::new();
    let count = *ack_rx.borrow();
    if count > ack_sent {
        tail.extend_from_slice(&FrameHeader::ack(count).encode());
    }
    if keep {
        // A resumable carrier says it is done, so the peer can tell a close from a break.
        tail.extend_from_slice(&FrameHeader::close(false).encode());
    }
    if !tail.is_empty() {
        out.write_all(&tail).await.map_err(io)?;
    }
    out.shutdown().await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// Takes at most `step` bytes per write, and only from the first slice (as a stream
    /// without vectored writes does).
    struct Narrow {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Narrow {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_batch_writes_short_and_long_pieces_in_order_whatever_the_write_sizes() {
        let long_a = Bytes::from((0..VECTOR_FROM + 5).map(|i| i as u8).collect::<Vec<_>>());
        let long_b = Bytes::from(vec![0xab; 3 * VECTOR_FROM]);
        let short = Bytes::from_static(b"short payload");
        let mut want = Vec::new();
        let mut batch = Batch::new();
        for (head, data) in [
            (&b"h1"[..], &long_a),
            (b"h2", &short),
            (b"h3", &long_b),
            (b"h4", &long_a),
        ] {
            batch.extend_from_slice(head);
            batch.push(data);
            want.extend_from_slice(head);
            want.extend_from_slice(data);
        }
        batch.extend_from_slice(b"ack");
        want.extend_from_slice(b"ack");
        assert_eq!(batch.len(), want.len());
        // Long payloads are referenced, not copied.
        assert!(batch.parts.iter().any(|p| p.as_ptr() == long_b.as_ptr()));
        for step in [1, 7, 4096, usize::MAX] {
            let mut b = batch.clone();
            let mut out = Narrow {
                got: Vec::new(),
                step,
            };
            b.write_to(&mut out).await.expect("write");
            assert_eq!(out.got, want, "step {step}");
            b.clear();
            assert!(b.is_empty());
        }
    }

    /// A stream carrier's core on a fresh 1 MiB outbox, for a writer alone (no keepalive),
    /// with the receiving end of its event queue (to be kept alive).
    fn writer_core() -> (Arc<Outbox>, Arc<StreamCore>, crate::transport::EventRx) {
        let outbox = Outbox::new(1 << 20, super::super::order_rule);
        let (events, rx) = crate::transport::event_channel(16, 1 << 20);
        let core = StreamCore::new(
            outbox.clone(),
            events,
            CoreSettings {
                limits: ReceiveLimits::from_config(&crate::Configuration::default()),
                token: None,
                client: false,
                dormant_timeout: Duration::from_secs(10),
                keepalive: None,
            },
        );
        (outbox, core, rx)
    }

    /// A writer first polled after its reader took frames (its task scheduled late, or run
    /// first by a queueing thread: transport/inline.rs) still acknowledges them: with the
    /// next thing it writes. It used to start from the count at its first poll, as if that
    /// were acknowledged, and the peer's first message waited for a keepalive.
    #[tokio::test]
    async fn a_writer_started_late_acknowledges_what_was_received_before() {
        use tokio::io::AsyncReadExt;
        let (outbox, core, _events) = writer_core();
        let (tx, rx) = ack_signal(0);
        // The reader takes a 100-byte message before the writer first runs.
        assert!(tx.received(101), "the first unit not yet acknowledged");
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let (_kill, killed) = watch::channel(0u8);
        let writer = tokio::spawn({
            let core = core.clone();
            async move { write_loop(ours, &core, (Vec::new(), None), rx, killed).await }
        });
        let permit = outbox.reserve(3).await.expect("room");
        outbox
            .send(
                MessageProperties::default(),
                Bytes::from_static(b"abc"),
                permit,
                None,
            )
            .expect("queued");
        // The ACK riding along with the answer, ahead of the answer's frame (so the peer
        // settles its message before it reads the answer).
        let mut got = vec![0u8; 2 * HEADER_LEN + 3];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("written at once, not after a delay")
            .expect("read");
        let header = |at: usize| {
            let bytes: [u8; HEADER_LEN] = got[at..at + HEADER_LEN].try_into().expect("len");
            FrameHeader::decode(&bytes, 1 << 20).expect("a frame header")
        };
        assert_eq!(
            header(HEADER_LEN).kind,
            crate::transport::framing::TYPE_MESSAGE
        );
        assert_eq!(&got[2 * HEADER_LEN..], b"abc");
        let ack = header(0);
        assert_eq!(
            (ack.kind, ack.id),
            (crate::transport::framing::TYPE_ACK, 101),
            "the units received before the writer started are acknowledged"
        );
        writer.abort();
    }

    /// The send-buffer space of what a writer took is held back (less than a third of the
    /// buffer, more still ready) while it writes, and goes back when the writer ends, even
    /// ended in the middle of a write: the next transient may never take through
    /// `take_while`.
    #[tokio::test(start_paused = true)]
    async fn a_writer_ending_gives_back_the_space_held_for_it() {
        let (outbox, core, _events) = writer_core();
        let each = 1024 + crate::transport::outbox::PER_MESSAGE_OVERHEAD;
        for _ in 0..8 {
            let permit = outbox.reserve(1024).await.expect("room");
            outbox
                .send(
                    MessageProperties::default(),
                    Bytes::from(vec![7u8; 1024]),
                    permit,
                    None,
                )
                .expect("queued");
        }
        // Room on the wire for one frame and a little: the writer takes a second message
        // and blocks in the middle of writing it (no delivery rate yet: a frame a write).
        let (ours, _peer) = tokio::io::duplex(HEADER_LEN + 1024 + 10);
        let (_tx, rx) = ack_signal(0);
        let (_kill, killed) = watch::channel(0u8);
        let writer = tokio::spawn({
            let core = core.clone();
            async move { write_loop(ours, &core, (Vec::new(), None), rx, killed).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            outbox.buffered(),
            8 * each,
            "two messages taken, their space held back"
        );
        writer.abort();
        assert!(writer.await.expect_err("aborted").is_cancelled());
        assert_eq!(
            outbox.buffered(),
            6 * each,
            "given back when the writer went"
        );
    }

    #[test]
    fn the_writer_is_woken_past_ack_every_and_when_the_readers_delay_runs_out() {
        let (tx, AckRx { mut rx, sent, due }) = ack_signal(0);
        assert!(!tx.pending());
        assert!(
            tx.received(10),
            "the first unit: the reader starts the delay"
        );
        assert!(
            !rx.has_changed().expect("open"),
            "the writer is not woken for it"
        );
        assert!(tx.pending());
        assert!(!tx.received(20), "the delay already runs");
        assert!(!rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow(), 20, "the count is current all the same");
        assert!(!tx.received(ACK_EVERY + 1));
        assert!(
            rx.has_changed().expect("open"),
            "enough waits: acknowledge now"
        );
        rx.borrow_and_update();
        assert!(!tx.received(ACK_EVERY + 2));
        assert!(
            !rx.has_changed().expect("open"),
            "woken once per ACK, not at every frame until it goes"
        );
        assert_eq!(*rx.borrow(), ACK_EVERY + 2);
        sent.store(ACK_EVERY + 2, SeqCst);
        assert!(!tx.pending(), "all acknowledged");
        assert!(tx.received(ACK_EVERY + 5), "first unit after an ACK");
        assert!(!rx.has_changed().expect("open"));
        tx.due_now();
        assert!(rx.has_changed().expect("open"), "the delay ran out");
        assert!(
            due.load(SeqCst),
            "and the writer is told to acknowledge now"
        );
        rx.borrow_and_update();
        assert!(!tx.received(2 * ACK_EVERY + 2));
        assert!(
            rx.has_changed().expect("open"),
            "past ACK_EVERY again after the writer's ACK: woken again"
        );
    }
}
