//! Carrier-level acknowledgements of a stream carrier: the sans-IO [`AckWindow`] (what is
//! written and not acknowledged, RTT and delivery-rate estimates, the writer's window) and
//! [`Acks`], the shared handle the writer and reader use, which applies the window's
//! outcomes to the outbox and wakes waiters.
//!
//! The writer keeps at most a window of unacknowledged bytes in flight: twice the measured
//! delivery rate times the minimum RTT (at least 16 KiB). That keeps a backlog in the
//! carrier's queue, where niceness and lifetimes still apply, rather than in TLS and socket
//! buffers, without holding back a fast path. A resumable carrier also keeps the bytes of
//! every unacknowledged frame, to write them again on the next transient. ACK units count
//! over the whole carrier, across transients.

use super::*;

/// Bounds on the writer's window of unacknowledged bytes.
const MIN_WINDOW: u64 = 16 * 1024;
const INITIAL_WINDOW: u64 = MIN_WINDOW;
const MAX_WINDOW: u64 = 16 << 20;
const RTT_FLOOR: Duration = Duration::from_millis(5);

/// The unit ACK frames count: a message frame's payload length plus one (so an empty frame
/// counts too).
pub(super) fn ack_units(len: usize) -> u64 {
    len as u64 + 1
}

/// A written, unacknowledged frame.
#[derive(Debug)]
struct SentFrame {
    /// Where it ends, in ACK units.
    end: u64,
    /// When it was written.
    at: Instant,
    /// The message it completes, if it carried FIN, and whether that message is plain (its
    /// status is the outbox's marks).
    fin: Option<(MessageId, bool)>,
    /// Its bytes (header and payload), kept by resumable carriers.
    bytes: Option<([u8; HEADER_LEN], Bytes)>,
}

/// What the peer's ACK settled.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Settled {
    /// Messages now wholly acknowledged, in the order they were written.
    pub(super) acked: Fins,
    /// The new (smoothed, minimum) RTT, when the ACK gave a sample.
    pub(super) rtt: Option<(Duration, Duration)>,
}

/// The acknowledgement state of a stream carrier, without I/O: every input takes `now`.
#[derive(Debug, Default)]
pub(super) struct AckWindow {
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

impl AckWindow {
    /// How many unacknowledged units the writer may have in flight.
    pub(super) fn window(&self) -> u64 {
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

    /// Whether more may be written now.
    pub(super) fn has_room(&self) -> bool {
        self.free() > 0
    }

    /// How many more units may be written now (no bound once the peer is done).
    pub(super) fn free(&self) -> u64 {
        if self.peer_done {
            return u64::MAX;
        }
        self.window().saturating_sub(self.written - self.acked)
    }

    /// Whether a frame of `len` payload bytes written now leaves no room (its sender then
    /// asks for an ACK at once: `FLAG_ACK_NOW`).
    pub(super) fn fills_window(&self, len: usize) -> bool {
        !self.peer_done && self.written + ack_units(len) - self.acked >= self.window()
    }

    /// How many bytes of frames to gather into one write: about 2 ms at the measured
    /// delivery rate, so a slow path gets small TLS records (a record is only readable once
    /// whole) and a fast one few system calls.
    pub(super) fn batch_limit(&self) -> usize {
        self.rate.map_or(0, |rate| {
            ((rate * BATCH_TIME.as_secs_f64()) as usize).min(BATCH)
        })
    }

    /// Records that `item`'s frame, with `header`, was written at `now` (before the write
    /// returns: the peer's ACK can come first); `keep` keeps its bytes for a continuation.
    pub(super) fn written_item(
        &mut self,
        now: Instant,
        item: Item,
        header: &[u8; HEADER_LEN],
        keep: bool,
    ) {
        let fin = (item.fin && !item.abort).then_some((item.id, item.plain));
        let len = item.data.len();
        let bytes = keep.then_some((*header, item.data));
        self.push_frame(now, len, fin, bytes);
    }

    /// Whether nothing written waits for an acknowledgement any more.
    pub(super) fn settled(&self) -> bool {
        self.frames.is_empty() || self.peer_done
    }

    /// Whether every written frame is acknowledged.
    pub(super) fn nothing_unacked(&self) -> bool {
        self.frames.is_empty()
    }

    /// The measured delivery rate in bytes per second, once there is one.
    #[cfg(test)]
    pub(super) fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The smoothed RTT, once there is one.
    pub(super) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// A frame of `len` payload bytes was written at `now`; `fin` is the message it completes;
    /// `bytes` its header and payload when they must be kept for a continuation.
    #[cfg(test)]
    pub(super) fn written(
        &mut self,
        now: Instant,
        len: usize,
        fin: Option<MessageId>,
        bytes: Option<([u8; HEADER_LEN], Bytes)>,
    ) {
        self.push_frame(now, len, fin.map(|id| (id, false)), bytes);
    }

    /// [`written`](Self::written), with whether the message it completes is plain.
    fn push_frame(
        &mut self,
        now: Instant,
        len: usize,
        fin: Option<(MessageId, bool)>,
        bytes: Option<([u8; HEADER_LEN], Bytes)>,
    ) {
        // The first delivery-rate sample counts from the first write, so it comes with the
        // first ACK rather than a round trip later.
        self.rate_mark.get_or_insert((now, self.acked));
        self.written += ack_units(len);
        self.frames.push_back(SentFrame {
            end: self.written,
            at: now,
            fin,
            bytes,
        });
    }

    /// The peer acknowledged `acked` units at `now`. An ACK outside what is unacknowledged
    /// is a protocol violation.
    pub(super) fn acknowledge(&mut self, now: Instant, acked: u64) -> Result<Settled> {
        if acked < self.acked || acked > self.written {
            return Err(Violation::AckOutOfRange {
                acked,
                from: self.acked,
                to: self.written,
            }
            .into());
        }
        let mut out = Settled::default();
        // The RTT sample is the newest frame acknowledged: its time alone is read (a
        // subtraction per frame was 2 % of the ACK's cost at 128 frames an ACK).
        let mut newest = None;
        while let Some(f) = self.frames.front() {
            if f.end > acked {
                break;
            }
            newest = Some(f.at);
            out.acked.extend(f.fin);
            self.frames.pop_front();
        }
        self.acked = acked;
        if let Some(rtt) = newest.map(|at| now - at) {
            let srtt = self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8);
            let min_rtt = self.min_rtt.map_or(rtt, |m| m.min(rtt));
            self.srtt = Some(srtt);
            self.min_rtt = Some(min_rtt);
            out.rtt = Some((srtt, min_rtt));
            // One delivery-rate sample per minimum RTT at most, smoothed.
            match self.rate_mark {
                Some((t0, a0)) if now - t0 >= min_rtt && now > t0 => {
                    let sample = (acked - a0) as f64 / (now - t0).as_secs_f64();
                    self.rate = Some(self.rate.map_or(sample, |r| 0.75 * r + 0.25 * sample));
                    self.rate_mark = Some((now, acked));
                }
                Some(_) => {}
                // After a restart (frames written on the old transient acknowledged before
                // any new write): the first sample counts from here.
                None => self.rate_mark = Some((now, acked)),
            }
        }
        Ok(out)
    }

    /// The peer will send no more ACKs: returns the messages written and not acknowledged.
    pub(super) fn peer_done(&mut self) -> Fins {
        self.peer_done = true;
        let mut out = Fins::default();
        out.extend(self.frames.drain(..).filter_map(|f| f.fin));
        out
    }

    /// A new transient continues the carrier at `now`: forgets the old path's estimates and
    /// returns the position up to which the peer acknowledged, and the bytes of every frame
    /// after it, to be written again first, in order (the peer skips what it already has).
    pub(super) fn restart(&mut self, now: Instant) -> (u64, Vec<Bytes>) {
        self.srtt = None;
        self.min_rtt = None;
        self.rate = None;
        self.rate_mark = None;
        self.peer_done = false;
        let mut out = Vec::new();
        for f in self.frames.iter_mut() {
            f.at = now;
            if let Some((header, data)) = &f.bytes {
                out.push(Bytes::copy_from_slice(header));
                out.push(data.clone());
            }
        }
        (self.acked, out)
    }
}

/// The [`AckWindow`] shared by a carrier's writer and reader (and kept across transients).
#[derive(Debug, Default)]
pub(super) struct Acks {
    inner: std::sync::Mutex<AckWindow>,
    changed: Notify,
}

impl Acks {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, AckWindow> {
        crate::util::lock(&self.inner)
    }

    /// Waits while the window is full.
    pub(super) async fn window_open(&self) {
        crate::util::until(&self.changed, || self.has_room().then_some(())).await
    }

    /// Whether more may be written now.
    pub(super) fn has_room(&self) -> bool {
        self.lock().has_room()
    }

    /// Waits until every written message is acknowledged or the peer can no longer ack.
    pub(super) async fn all_acked(&self) {
        crate::util::until(&self.changed, || self.lock().settled().then_some(())).await
    }

    /// Applies the peer's ACK of `acked` units.
    pub(super) fn acknowledge(&self, acked: u64, outbox: &Outbox) -> Result<()> {
        let mut st = self.lock();
        let settled = st.acknowledge(Instant::now(), acked)?;
        outbox.settle(settled.acked, || SendStatus::Acked, true);
        if let Some((srtt, min_rtt)) = settled.rtt {
            outbox.set_rtt(srtt, min_rtt);
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The carrier failed: what was written and not acknowledged may never have arrived.
    pub(super) fn fail_unacked(&self, outbox: &Outbox, reason: &str) {
        self.end(outbox, || SendStatus::Failed(reason.to_string()));
    }

    /// The peer will send no more ACKs: what was written is as sent as it will get.
    pub(super) fn peer_done(&self, outbox: &Outbox) {
        self.end(outbox, || SendStatus::Sent);
    }

    fn end(&self, outbox: &Outbox, status: impl Fn() -> SendStatus) {
        let mut st = self.lock();
        outbox.settle(st.peer_done(), status, true);
        drop(st);
        self.changed.notify_waiters();
    }

    /// A new transient continues the carrier (see [`AckWindow::restart`]).
    pub(super) fn restart(&self) -> (u64, Vec<Bytes>) {
        let out = self.lock().restart(Instant::now());
        self.changed.notify_waiters();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn acks_settle_whole_messages_in_order_and_sample_rtt() {
        let t0 = Instant::now();
        let mut w = AckWindow::default();
        w.written(t0, 99, None, None); // units 0..100, message 1 continues
        w.written(t0, 99, Some(1), None); // ..200, message 1 ends
        w.written(ms(t0, 10), 49, Some(2), None); // ..250
                                                  // Half of message 1: nothing settles, but an RTT sample comes.
        let s = w.acknowledge(ms(t0, 40), 100).expect("in range");
        assert_eq!(s.acked.ids, Vec::<MessageId>::new());
        assert_eq!(
            s.rtt,
            Some((Duration::from_millis(40), Duration::from_millis(40)))
        );
        let s = w.acknowledge(ms(t0, 60), 250).expect("in range");
        assert_eq!(s.acked.ids, vec![1, 2]);
        // srtt = (7 × 40 + 50) / 8; min RTT stays 40.
        let srtt = (Duration::from_millis(40) * 7 + Duration::from_millis(50)) / 8;
        assert_eq!(s.rtt, Some((srtt, Duration::from_millis(40))));
        assert!(w.settled());
    }

    /// The first ACK gives a delivery-rate sample, counted from the first write (it used to
    /// only mark the start of one, and the window stayed at its first 16 KiB for another
    /// round trip).
    #[test]
    fn the_first_ack_samples_the_delivery_rate_from_the_first_write() {
        let t0 = Instant::now();
        let mut w = AckWindow::default();
        w.written(t0, 8191, None, None);
        w.written(ms(t0, 10), 8191, Some(1), None);
        assert_eq!(w.rate(), None);
        assert_eq!(w.window(), MIN_WINDOW);
        // 16 KiB acknowledged 50 ms after the first write.
        w.acknowledge(ms(t0, 50), 16_384).expect("in range");
        assert_eq!(w.rate().map(|r| r.round()), Some(16_384.0 / 0.05));
        // 2 × rate × min RTT (40 ms, the newest frame's).
        assert_eq!(w.window(), (2.0 * 16_384.0 / 0.05 * 0.04) as u64);
    }

    #[test]
    fn acks_outside_what_was_sent_are_violations() {
        let t0 = Instant::now();
        let mut w = AckWindow::default();
        w.written(t0, 9, Some(1), None);
        assert!(w.acknowledge(t0, 11).is_err(), "beyond what was written");
        w.acknowledge(t0, 10).expect("exact");
        let err = w.acknowledge(t0, 5).expect_err("backwards");
        assert!(
            err.to_string().contains("outside the 10..=10 sent"),
            "{err}"
        );
    }

    #[test]
    fn the_window_grows_with_the_delivery_rate_between_its_bounds() {
        let t0 = Instant::now();
        let mut w = AckWindow::default();
        assert_eq!(w.window(), MIN_WINDOW);
        // 1 MB acknowledged every 20 ms: 50 MB/s × 20 ms × 2 = 2 MB window.
        let mut t = 0;
        let mut total = 0;
        for _ in 0..10 {
            w.written(ms(t0, t), 999_999, None, None);
            total += 1_000_000;
            t += 20;
            w.acknowledge(ms(t0, t), total).expect("in range");
        }
        assert_eq!(w.rate().map(|r| r.round()), Some(50e6));
        assert_eq!(w.window(), 2_000_000);
        assert!(w.has_room());
        // A full window holds the writer back until an ACK comes.
        w.written(ms(t0, t), 2_000_000, None, None);
        assert!(!w.has_room());
        // The peer gone: nothing more will be acknowledged, so the writer is not held.
        w.peer_done();
        assert!(w.has_room());
    }

    #[test]
    fn restart_hands_back_unacknowledged_frames_and_forgets_the_path() {
        let t0 = Instant::now();
        let mut w = AckWindow::default();
        let frame = |s: &'static str| Some(([7u8; HEADER_LEN], Bytes::from_static(s.as_bytes())));
        w.written(t0, 1, Some(1), frame("a"));
        w.written(t0, 1, Some(2), frame("b"));
        w.acknowledge(ms(t0, 30), 2).expect("in range");
        assert!(w.srtt().is_some());
        let (acked, again) = w.restart(ms(t0, 100));
        assert_eq!(acked, 2);
        assert_eq!(
            again,
            vec![
                Bytes::copy_from_slice(&[7u8; HEADER_LEN]),
                Bytes::from_static(b"b")
            ]
        );
        assert_eq!(w.srtt(), None);
        // The resent frame's RTT counts from the restart.
        let s = w.acknowledge(ms(t0, 150), 4).expect("in range");
        assert_eq!(s.acked.ids, vec![2]);
        assert_eq!(s.rtt.map(|r| r.0), Some(Duration::from_millis(50)));
        assert_eq!(w.peer_done(), Fins::default());
    }
}
