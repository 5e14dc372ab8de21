//! The reader task of a stream transient: frames in, messages and ACKs out.

use super::*;

/// Messages being reassembled at once; more is a protocol violation.
const MAX_OPEN_MESSAGES: usize = 1024;

pub(super) async fn read_messages<R: AsyncRead + Unpin>(
    input: R,
    core: &StreamCore,
    ack_tx: AckTx,
    stop: watch::Receiver<bool>,
    entry: Entry,
) -> ReadEnd {
    let mut stop = KeptWait::flag(&stop);
    let mut expect_hello = entry.expect_hello;
    // Position of the peer's next data frame while it writes again what we may have.
    let mut skip = entry.skip_from;
    let limits = &core.limits;
    let Some(events) = core.events() else {
        return ReadEnd::Gone;
    };
    let resumable = core.token.is_some();
    let mut input = FrameReader::new(input);
    let mut st = core.recv.lock().await;
    // A frame an earlier transient was reading into its message when it ended comes again
    // whole (the peer writes again every frame not acknowledged).
    for a in st.open.values_mut() {
        a.abandon_direct();
    }
    let mut closing = false;
    // What the frames read since the last delivery give (most give one event), and their
    // payload bytes.
    let mut out = Vec::new();
    let mut gathered = 0usize;
    let ack_timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(ack_timer);
    let mut ack = AckDelay {
        tx: ack_tx,
        timer: ack_timer,
        armed: false,
        unpublished: None,
        frames: 0,
        rx: &core.rx,
        activity: core.outbox.activity(),
    };
    let end = 'read: loop {
        // A resumable peer writes at least every keepalive interval: three silent intervals
        // mean the path is gone (the carrier goes dormant until the client comes back).
        let silent_for = core.keepalive.filter(|_| resumable).map(|k| k * 3);
        let silence = async {
            match silent_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        if stop.is_set() {
            break 'read ReadEnd::Stopped;
        }
        // Frames that came in one read are taken without a wait each (the wait below would
        // register and drop a waiter on `stop` and a timer per frame).
        // Continuation frames of a long message go straight into its buffer, except while
        // the peer writes again what we may have (those frames may be skipped).
        let direct = skip.is_none() && !expect_hello;
        let frame = input.buffered(limits.max_message_size);
        // The messages of the frames one read brought go to the application's queue
        // together, under one lock: before the reader waits for more (and when it ends,
        // below), or once they are many.
        if matches!(frame, Ok(None)) || out.len() >= DELIVER_EVENTS || gathered >= READ_CHUNK {
            if !deliver(&events, &mut out, &mut ack).await {
                break 'read ReadEnd::Gone;
            }
            gathered = 0;
        }
        let frame = match frame {
            Ok(None) => tokio::select! {
                biased;
                _ = stop.ready() => break 'read ReadEnd::Stopped,
                // Before the input, so that a steady trickle of frames cannot hold it off.
                _ = ack.timer.as_mut(), if ack.waiting() => {
                    ack.now();
                    continue;
                }
                frame = input.next_into(limits.max_message_size, &mut st.open, limits, direct) => frame,
                _ = silence => {
                    break 'read ReadEnd::Broken(
                        ConnectionError::Silent {
                            ms: silent_for.unwrap_or_default().as_millis(),
                        }
                        .into(),
                    )
                }
            },
            got => got.map(|f| f.map(|(header, data)| Frame::Whole(header, data))),
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e @ Error::Protocol(_)) => break 'read ReadEnd::Fatal(e),
            Err(e) if resumable => break 'read ReadEnd::Broken(e),
            Err(e) => break 'read ReadEnd::Fatal(e),
        };
        ack.frames += 1;
        let Some(frame) = frame else {
            if resumable && !closing {
                break 'read ReadEnd::Broken(ConnectionError::EndedWithoutClose.into());
            }
            if let Some(id) = st.open.keys().next() {
                break 'read ReadEnd::Fatal(Violation::EndedInMessage { id: *id }.into());
            }
            break 'read ReadEnd::Clean;
        };
        // `appended`: the payload is already in its message's buffer (`data` is empty).
        let (header, data, appended) = match frame {
            Frame::Whole(header, data) => (header, data, false),
            Frame::Appended(header) => (header, Bytes::new(), true),
        };
        if expect_hello {
            // A continuation: the peer's HELLO says what it has and where it starts again.
            expect_hello = false;
            if header.kind != TYPE_HELLO {
                break 'read ReadEnd::Fatal(Violation::HelloExpected.into());
            }
            let h = match parse_hello(&header, &data) {
                Ok(h) => h,
                Err(e) => break 'read ReadEnd::Fatal(e),
            };
            if h.flags & FLAG_REFUSED != 0 || Some(h.token) != core.token {
                break 'read ReadEnd::Fatal(ConnectionError::UnknownCarrier.into());
            }
            if let Err(e) = core.acks.acknowledge(h.received, &core.outbox) {
                break 'read ReadEnd::Fatal(e);
            }
            skip = Some(h.resend_from);
            continue;
        }
        if header.is_ack() {
            if let Err(e) = core.acks.acknowledge(header.id, &core.outbox) {
                break 'read ReadEnd::Fatal(e);
            }
            continue;
        }
        if header.kind == TYPE_MESSAGE {
            if let Some(at) = skip {
                let end = at + ack_units(header.len as usize);
                if end <= st.received {
                    // Written again by the peer; we have it.
                    skip = Some(end);
                    continue;
                }
                if at != st.received {
                    break 'read ReadEnd::Fatal(
                        Violation::ResendMisaligned {
                            at,
                            received: st.received,
                        }
                        .into(),
                    );
                }
                skip = None;
            }
        }
        match header.kind {
            TYPE_CLOSE if header.aborts() => {
                break 'read ReadEnd::Fatal(ConnectionError::PeerAborted.into())
            }
            TYPE_CLOSE => {
                closing = true;
                continue;
            }
            TYPE_HELLO => break 'read ReadEnd::Fatal(Violation::HelloMisplaced.into()),
            TYPE_MOVED => break 'read ReadEnd::Fatal(Violation::MovedMisplaced.into()),
            _ => {}
        }
        let id = header.id;
        gathered += header.len as usize;
        st.received += ack_units(header.len as usize);
        let RecvState {
            open,
            discarding,
            buffers,
            ..
        } = &mut *st;
        if header.aborts() {
            discarding.remove(&id);
            if let Some(a) = open.remove(&id) {
                if a.partly_delivered() {
                    out.push(Event::ReceiveError {
                        id,
                        error: ConnectionError::Abandoned { id }.into(),
                    });
                }
            }
        } else if discarding.contains(&id) {
            if header.fin() {
                discarding.remove(&id);
            }
        } else if appended {
            if let Some(a) = open.get_mut(&id) {
                a.direct_done(header.len as usize, header.fin(), &mut out);
            }
            if header.fin() {
                open.remove(&id);
            }
        } else {
            if !open.contains_key(&id) && open.len() >= MAX_OPEN_MESSAGES {
                break 'read ReadEnd::Fatal(
                    Violation::TooManyOpen {
                        max: MAX_OPEN_MESSAGES,
                    }
                    .into(),
                );
            }
            // A message in one frame (the usual case) needs no entry among the open ones.
            let pushed = if header.fin() && !open.contains_key(&id) {
                Assembly::push_alone(id, data, limits, &mut out)
            } else {
                open.entry(id)
                    .or_insert_with(|| Assembly::new(id, true).with_buffers(buffers))
                    .push_into(data, header.fin(), limits, &mut out)
            };
            match pushed {
                Ok(()) => {}
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
        // The peer's window full asks for the ACK now, not after the delay.
        ack.received(st.received, header.ack_now());
    };
    // What was read before the end is the application's: delivered as it would have been.
    if !matches!(end, ReadEnd::Gone) && !deliver(&events, &mut out, &mut ack).await {
        return ReadEnd::Gone;
    }
    ack.publish();
    end
}

/// Events the reader gathers at most before it hands them to the application's queue.
const DELIVER_EVENTS: usize = 32;

/// Hands `out` to the application's queue; a full queue holds the reader here, while the
/// ACK delay still runs out on time. False once the application is gone.
async fn deliver(events: &EventTx, out: &mut Vec<Event>, ack: &mut AckDelay<'_>) -> bool {
    // The reader may wait below (or, with nothing to hand over, in its loop right after):
    // what it counted goes out first.
    ack.publish();
    while !out.is_empty() {
        tokio::select! {
            biased;
            sent = events.send_all(out) => return sent.is_ok(),
            _ = ack.timer.as_mut(), if ack.waiting() => ack.now(),
        }
    }
    true
}

/// The ACK delay of the first unit not yet acknowledged (see `AckTx::received`), kept by the
/// reader so the writer is not woken to start it. One timer, reset when a new delay starts
/// (a new one per wait cost a timer registration per read).
///
/// The count of units received, and of frames read, are published once per run of frames
/// one read brought ([`publish`](Self::publish), before the reader can wait), not per frame:
/// publishing took a lock on the writer's watch and two atomic updates per frame. No other
/// task can look between two frames of a run without the reader waiting, except on another
/// worker, for which the count is as early as the run it came in.
struct AckDelay<'a> {
    tx: AckTx,
    timer: std::pin::Pin<&'a mut tokio::time::Sleep>,
    armed: bool,
    /// Units received, counted but not yet published.
    unpublished: Option<u64>,
    /// Frames read, not yet added to `rx`.
    frames: u64,
    rx: &'a std::sync::atomic::AtomicU64,
    /// Touched with `rx` (a path manager asleep looks again).
    activity: &'a crate::path::Activity,
}

impl AckDelay<'_> {
    /// Everything up to unit `received` is in; the peer asks for its ACK `now` (which
    /// publishes at once).
    fn received(&mut self, received: u64, now: bool) {
        // A run's first frame asking for its ACK now starts no delay (it would be
        // acknowledged at once); a later one does not undo the delay the run started
        // (the timer stays set, as it was when each frame was published alone).
        let lead_now = now && self.unpublished.is_none();
        self.unpublished = Some(received);
        if now {
            self.publish_count(!lead_now, true);
        }
    }

    /// Publishes what was counted since the last time.
    fn publish(&mut self) {
        self.publish_count(true, false);
        if self.frames > 0 {
            self.rx.fetch_add(
                std::mem::take(&mut self.frames),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.activity.touch();
        }
    }

    /// Publishes the count of units received: starts the delay (if `may_start`) when the
    /// run brought the first unit not yet acknowledged, and acknowledges `now`.
    fn publish_count(&mut self, may_start: bool, now: bool) {
        let Some(received) = self.unpublished.take() else {
            return;
        };
        let first = self.tx.received(received);
        if first && may_start {
            self.timer.as_mut().reset(AckTx::ack_due_at());
            self.armed = true;
        }
        if now {
            self.now();
        }
    }

    /// Whether the timer runs for an ACK still owed.
    fn waiting(&self) -> bool {
        self.armed && self.tx.pending()
    }

    /// The writer acknowledges now (the delay ran out, or the peer's window is full); the
    /// timer is disarmed until the next unacknowledged unit.
    fn now(&mut self) {
        self.tx.due_now();
        self.armed = false;
    }
}

/// How much a [`FrameReader`] asks of the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How much room one read offers the stream: a whole TLS record's plaintext, and a frame
/// header.
const READ_OFFER: usize = 16 * 1024 + HEADER_LEN;
/// Frames shorter than this are copied out of the read buffer; longer ones share it. A
/// shared frame keeps the whole buffer it came from alive while the application holds it:
/// worth it to save the copy of a long frame, not to pin 64 KiB behind a few bytes.
const SHARE_FROM: usize = 512;

/// Continuation frames at least this long are read straight into their message's buffer
/// by [`FrameReader::next_into`].
const DIRECT_FROM: usize = 4096;

/// Reads frames from a byte stream through one buffer of [`READ_CHUNK`]: each read takes
/// what the stream has (up to [`READ_OFFER`]), frames are cut from it, and a frame's payload is a slice of
/// the buffer rather than a copy of its own (see [`SHARE_FROM`]).
///
/// The frames after the first of a long message ([`next_into`](Self::next_into)) skip that
/// buffer: their headers are read alone and their payloads straight into the message being
/// reassembled, so each byte is copied once out of TLS instead of twice.
pub(crate) struct FrameReader<R> {
    input: R,
    buf: BytesMut,
    /// A MESSAGE frame whose payload is being read into its message's buffer: its header
    /// and the bytes still to come (kept here, so a read cancelled half-way goes on).
    direct: Option<(FrameHeader, usize)>,
}

/// A frame read by [`FrameReader::next_into`].
#[derive(Debug)]
pub(crate) enum Frame {
    /// A frame and its payload.
    Whole(FrameHeader, Bytes),
    /// A MESSAGE frame whose payload went into its message's buffer
    /// ([`Assembly::direct_buf`]); [`Assembly::direct_done`] completes it.
    Appended(FrameHeader),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(input: R) -> Self {
        FrameReader {
            input,
            buf: BytesMut::new(),
            direct: None,
        }
    }

    /// The next frame, as [`next`](Self::next) reads it, except that with `direct` the
    /// payload of a MESSAGE frame of at least [`DIRECT_FROM`] bytes whose message is being
    /// reassembled in `open` is read into that message's buffer (when
    /// [`Assembly::direct_buf`] takes it). Cancel-safe as long as `open` keeps that
    /// message until the next call: a payload read in part goes on there.
    pub(crate) async fn next_into(
        &mut self,
        max: usize,
        open: &mut BTreeMap<MessageId, Assembly>,
        limits: &ReceiveLimits,
        direct: bool,
    ) -> Result<Option<Frame>> {
        loop {
            if let Some((header, mut rest)) = self.direct {
                let Some(a) = open.get_mut(&header.id) else {
                    return Err(tcp(
                        "read",
                        std::io::Error::other("a message left reassembly in the middle of a frame"),
                    ));
                };
                let dst = a.direct_resume();
                let held = rest.min(self.buf.len());
                if held > 0 {
                    dst.extend_from_slice(&self.buf[..held]);
                    bytes::Buf::advance(&mut self.buf, held);
                    rest -= held;
                    self.direct = Some((header, rest));
                }
                while rest > 0 {
                    let n = self
                        .input
                        .read_buf(&mut bytes::BufMut::limit(&mut *dst, rest))
                        .await
                        .map_err(|e| tcp("read", e))?;
                    if n == 0 {
                        return Err(Violation::TruncatedFrame {
                            id: header.id,
                            len: header.len,
                        }
                        .into());
                    }
                    rest -= n;
                    self.direct = Some((header, rest));
                }
                self.direct = None;
                return Ok(Some(Frame::Appended(header)));
            }
            if let Some((header, data)) = self.buffered(max)? {
                return Ok(Some(Frame::Whole(header, data)));
            }
            let header = self.header(max)?;
            if let Some(h) = header.filter(|h| {
                direct && h.kind == TYPE_MESSAGE && !h.aborts() && h.len as usize >= DIRECT_FROM
            }) {
                let len = h.len as usize;
                if let Some(a) = open.get_mut(&h.id) {
                    if a.direct_buf(len, limits).is_some() {
                        bytes::Buf::advance(&mut self.buf, HEADER_LEN);
                        self.direct = Some((h, len));
                        continue;
                    }
                }
            }
            // While a long message is being reassembled its next frame most likely
            // continues it: read that frame's header alone, so its payload is not taken
            // into this buffer before it is known where it goes.
            let header_alone =
                header.is_none() && direct && !open.is_empty() && limits.whole_only();
            let want = header.map_or(HEADER_LEN, |h| HEADER_LEN + h.len as usize);
            if self.fill(want, header_alone).await? {
                continue;
            }
            return self.ended(header).map(|()| None);
        }
    }

    /// Reads more into the buffer, with room for at least `want` bytes in all (and, with
    /// `exact`, no more than that offered); false at the end of the stream.
    async fn fill(&mut self, want: usize, exact: bool) -> Result<bool> {
        let spare = self.buf.capacity() - self.buf.len();
        let need = want.saturating_sub(self.buf.len()).max(1);
        if spare < need || spare < READ_CHUNK / 8 {
            // Reclaims the buffer in place once no frame shares it any more.
            self.buf.reserve(need.max(READ_CHUNK));
        }
        // A TLS stream zeroes all the room it is offered before copying into it: offering
        // 64 KiB to take a 1 KiB record cost more than the copy. One record's worth (or what
        // the frame still needs) is enough; the rest stays buffered in TLS for the next read.
        let offer = if exact { need } else { need.max(READ_OFFER) };
        let n = self
            .input
            .read_buf(&mut bytes::BufMut::limit(&mut self.buf, offer))
            .await
            .map_err(|e| tcp("read", e))?;
        Ok(n > 0)
    }

    /// The header of the next frame, if the buffer holds it.
    fn header(&self, max: usize) -> Result<Option<FrameHeader>> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[..HEADER_LEN]);
        FrameHeader::decode(&raw, max).map(Some)
    }

    /// The next frame if the buffer already holds all of it (nothing is read): the reader
    /// takes frames that came in one read without a wait each.
    pub(crate) fn buffered(&mut self, max: usize) -> Result<Option<(FrameHeader, Bytes)>> {
        if self.direct.is_some() {
            // In the middle of a payload read into its message: `next_into` goes on with it.
            return Ok(None);
        }
        let Some(header) = self.header(max)? else {
            return Ok(None);
        };
        let len = header.len as usize;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        bytes::Buf::advance(&mut self.buf, HEADER_LEN);
        let data = if len < SHARE_FROM {
            let data = Bytes::copy_from_slice(&self.buf[..len]);
            bytes::Buf::advance(&mut self.buf, len);
            data
        } else {
            self.buf.split_to(len).freeze()
        };
        Ok(Some((header, data)))
    }

    /// The next frame. `Ok(None)` is a clean end of stream at a frame boundary. (The reader
    /// task uses [`next_into`](Self::next_into); this is it without direct reads.)
    #[cfg(test)]
    pub(crate) async fn next(&mut self, max: usize) -> Result<Option<(FrameHeader, Bytes)>> {
        let limits = ReceiveLimits::whole(max);
        match self
            .next_into(max, &mut BTreeMap::new(), &limits, false)
            .await?
        {
            Some(Frame::Whole(header, data)) => Ok(Some((header, data))),
            Some(Frame::Appended(_)) => unreachable!("no direct reads asked for"),
            None => Ok(None),
        }
    }

    /// The stream ended with `header` (if any) the frame in the buffer: clean at a frame
    /// boundary, else a truncated header or frame.
    fn ended(&self, header: Option<FrameHeader>) -> Result<()> {
        match header {
            None if self.buf.is_empty() => Ok(()),
            None => Err(Violation::TruncatedHeader {
                filled: self.buf.len(),
                len: HEADER_LEN,
            }
            .into()),
            Some(h) => Err(Violation::TruncatedFrame {
                id: h.id,
                len: h.len,
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_rejects_truncation() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&FrameHeader::message(7, 3).encode());
        wire.extend_from_slice(b"abc");
        let mut input = FrameReader::new(&wire[..]);
        let got = input.next(100).await.ok().flatten();
        assert_eq!(
            got.map(|(h, d)| (h.id, d.to_vec())),
            Some((7, b"abc".to_vec()))
        );
        assert!(matches!(input.next(100).await, Ok(None)));

        let mut short = FrameReader::new(&wire[..HEADER_LEN + 1]);
        let err = short.next(100).await.expect_err("truncated");
        assert!(err.to_string().contains("truncated frame"), "{err}");
        let mut half = FrameReader::new(&wire[..5]);
        let err = half.next(100).await.expect_err("truncated header");
        assert!(err.to_string().contains("truncated frame header"), "{err}");
    }

    /// Hands out at most `step` bytes per read, as a TLS stream does record by record.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            let (now, rest) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = rest;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn frames(lens: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut wire = Vec::new();
        let mut payloads = Vec::new();
        for (id, &len) in lens.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + id) as u8).collect();
            wire.extend_from_slice(&FrameHeader::message(id as u64, len as u32).encode());
            wire.extend_from_slice(&data);
            payloads.push(data);
        }
        (wire, payloads)
    }

    #[tokio::test]
    async fn frames_cut_across_reads_come_out_whole_and_in_order() {
        // Short and long frames (copied and shared), one longer than a read chunk.
        let lens = [0, 1, 511, 512, 1024, 16 * 1024, READ_CHUNK + 3, 9];
        let (wire, payloads) = frames(&lens);
        for step in [1, 7, 1000, usize::MAX] {
            let mut input = FrameReader::new(Trickle { data: &wire, step });
            for (id, want) in payloads.iter().enumerate() {
                let (h, data) = input
                    .next(1 << 20)
                    .await
                    .expect("frame")
                    .expect("not the end");
                assert_eq!((h.id, &data[..]), (id as u64, &want[..]), "step {step}");
            }
            assert!(matches!(input.next(1 << 20).await, Ok(None)), "step {step}");
        }
    }

    #[tokio::test]
    async fn long_frames_share_the_read_buffer_and_short_ones_are_copied() {
        let (wire, _) = frames(&[SHARE_FROM, SHARE_FROM, 10]);
        let mut input = FrameReader::new(&wire[..]);
        let (_, a) = input.next(1 << 20).await.expect("a").expect("a");
        let (_, b) = input.next(1 << 20).await.expect("b").expect("b");
        let (_, c) = input.next(1 << 20).await.expect("c").expect("c");
        // Shared: consecutive slices of one allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len() + HEADER_LEN), b.as_ptr());
        // Copied: not inside the buffer the others came from.
        let after_b = b.as_ptr().wrapping_add(b.len() + HEADER_LEN);
        assert_ne!(c.as_ptr(), after_b);
        assert!(a.len() == SHARE_FROM && c.len() == 10);
    }

    #[tokio::test]
    async fn the_read_buffer_is_reused_once_no_frame_holds_it() {
        // One frame fills the whole first read.
        let (wire, _) = frames(&[READ_CHUNK - HEADER_LEN, 1000]);
        let mut input = FrameReader::new(Trickle {
            data: &wire,
            step: READ_CHUNK,
        });
        let (_, a) = input.next(1 << 20).await.expect("a").expect("a");
        let start = a.as_ptr();
        drop(a);
        let (_, b) = input.next(1 << 20).await.expect("b").expect("b");
        assert_eq!(b.as_ptr(), start, "the same allocation, from its start");

        // Held by the application: the next frames go to a new buffer, the old one intact.
        let (wire, payloads) = frames(&[READ_CHUNK - HEADER_LEN, 1000]);
        let mut input = FrameReader::new(Trickle {
            data: &wire,
            step: READ_CHUNK,
        });
        let (_, a) = input.next(1 << 20).await.expect("a").expect("a");
        let (_, b) = input.next(1 << 20).await.expect("b").expect("b");
        assert_ne!(b.as_ptr(), a.as_ptr());
        assert_eq!((&a[..], &b[..]), (&payloads[0][..], &payloads[1][..]));
    }

    /// A [`Trickle`] that returns `Pending` (waking itself) before every other read: a
    /// reader's future polled once per step can be dropped half-way through a frame.
    struct Stutter<'a> {
        inner: Trickle<'a>,
        ready: bool,
    }

    impl<'a> Stutter<'a> {
        fn new(data: &'a [u8], step: usize) -> Self {
            Stutter {
                inner: Trickle { data, step },
                ready: false,
            }
        }
    }

    impl AsyncRead for Stutter<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// One message in `parts` frames (the last with FIN) followed by a one-frame message.
    fn message_in_parts(parts: &[usize]) -> (Vec<u8>, Vec<u8>) {
        let mut wire = Vec::new();
        let mut whole = Vec::new();
        for (i, &len) in parts.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 13 + i) as u8).collect();
            let fin = i + 1 == parts.len();
            wire.extend_from_slice(&FrameHeader::part(1, len as u32, fin).encode());
            wire.extend_from_slice(&data);
            whole.extend_from_slice(&data);
        }
        wire.extend_from_slice(&FrameHeader::message(2, 3).encode());
        wire.extend_from_slice(b"end");
        (wire, whole)
    }

    /// Reads every frame as the reader task does (`next_into`, then `push_into` or
    /// `direct_done`), each call polled once and dropped while pending (so every frame's
    /// read is cancelled and resumed many times): what each message delivers, and how many
    /// frames came appended.
    fn read_all<R: AsyncRead + Unpin>(input: R, direct: bool) -> (Vec<(u64, Vec<u8>)>, usize) {
        use futures_util::FutureExt;
        let limits = ReceiveLimits::whole(1 << 20);
        let mut input = FrameReader::new(input);
        let mut open = BTreeMap::new();
        let (mut got, mut appended) = (Vec::new(), 0);
        loop {
            let Some(frame) = input
                .next_into(1 << 20, &mut open, &limits, direct)
                .now_or_never()
            else {
                continue;
            };
            let mut out = Vec::new();
            match frame.expect("frame") {
                None => break,
                Some(Frame::Whole(h, data)) => {
                    let a = open
                        .entry(h.id)
                        .or_insert_with(|| Assembly::new(h.id, true));
                    a.push_into(data, h.fin(), &limits, &mut out).expect("fits");
                    if h.fin() {
                        open.remove(&h.id);
                    }
                }
                Some(Frame::Appended(h)) => {
                    appended += 1;
                    let a = open.get_mut(&h.id).expect("open");
                    a.direct_done(h.len as usize, h.fin(), &mut out);
                    if h.fin() {
                        open.remove(&h.id);
                    }
                }
            }
            for e in out {
                if let Event::Received(r) = e {
                    got.push((r.id, r.data.to_vec()));
                }
            }
        }
        (got, appended)
    }

    #[test]
    fn continuation_frames_go_straight_into_their_message_and_survive_cancelled_reads() {
        // A first frame (into reassembly as usual), long continuations (read directly),
        // a short one (below DIRECT_FROM: as usual), and the last.
        let parts = [16 * 1024, 16 * 1024, DIRECT_FROM, DIRECT_FROM - 1, 10_000];
        let (wire, whole) = message_in_parts(&parts);
        let want = vec![(1, whole), (2, b"end".to_vec())];
        for step in [1, 5, 16, 1000, 4096, 20_000, usize::MAX] {
            let (got, appended) = read_all(Stutter::new(&wire, step), true);
            assert_eq!(got, want, "step {step}");
            assert!(appended >= 2, "step {step}: {appended} frames appended");
            let (plain, none) = read_all(Stutter::new(&wire, step), false);
            assert_eq!(
                (plain, none),
                (want.clone(), 0),
                "step {step}, no direct reads"
            );
        }
    }

    #[test]
    fn a_frame_left_half_read_is_taken_out_of_its_message_again() {
        use futures_util::FutureExt;
        let (wire, whole) = message_in_parts(&[8192, 8192]);
        let limits = ReceiveLimits::whole(1 << 20);
        // The stream ends in the middle of the second frame's payload.
        let cut = 2 * HEADER_LEN + 8192 + 5000;
        let mut input = FrameReader::new(&wire[..cut]);
        let mut open = BTreeMap::new();
        let mut out = Vec::new();
        let first = input
            .next_into(1 << 20, &mut open, &limits, true)
            .now_or_never();
        let Some(Ok(Some(Frame::Whole(h, data)))) = first else {
            panic!("the first frame whole: {first:?}");
        };
        let a = open
            .entry(h.id)
            .or_insert_with(|| Assembly::new(h.id, true));
        a.push_into(data, false, &limits, &mut out).expect("fits");
        let second = input
            .next_into(1 << 20, &mut open, &limits, true)
            .now_or_never();
        assert!(
            matches!(second, Some(Err(Error::Protocol(_)))),
            "truncated: {second:?}"
        );
        // The next transient: the half-read payload goes, and the peer's resent frame
        // completes the message as if nothing had been read of it.
        let a = open.get_mut(&1).expect("open");
        a.abandon_direct();
        a.push_into(
            Bytes::copy_from_slice(&whole[8192..]),
            true,
            &limits,
            &mut out,
        )
        .expect("fits");
        let Some(Event::Received(r)) = out.pop() else {
            panic!("delivered");
        };
        assert_eq!(r.data.to_vec(), whole);
    }
}
