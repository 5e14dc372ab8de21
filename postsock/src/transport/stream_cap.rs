//! How many messages a QUIC sending loop keeps in flight at once (each its own stream).
//!
//! Every message in flight holds quinn's per-stream state and postsock's write future (since
//! `awaited.rs`, for most messages only its stream and item) until its acknowledgement; with
//! hundreds in flight that state no longer stays in the cache, and each acknowledgement
//! finds it cold. (Measured with a future each; not measured again since.) On loopback
//! (BENCHMARKS.md, "A measured stream limit") 128 streams in flight sent 1 KiB messages at
//! 0.91-0.92 of raw quinn on one thread against 0.85-0.86 at 512 (the peer's limit), 64 at
//! 0.89 (median 0.90) and 32 at 0.84. A fixed 128 would cap small messages on long paths (128 a round trip: 1.3 MB/s of 1 KiB
//! messages on 100 ms), so the limit follows what the path needs: the messages completed
//! per second times the least RTT seen (what is in flight on a path without queues),
//! doubled for headroom, between [`LEAST`] and [`MOST`].
//!
//! It starts at [`MOST`] (a burst on a fresh carrier goes as before) and is decided once a
//! window (at least [`MIN_WINDOW`], and at least the least RTT) of completions: raised at
//! once when the need grows; lowered at most by half a window, and only from a window in
//! which the limit held the sender back and nothing else did. A window in which the sender
//! ran out of messages (application-limited, as RFC 7661 has it for congestion windows), or
//! waited for the congestion window (slow start after a failover), says nothing of what the
//! path needs. The peer's stream credit holding it back counts as the limit (it is one:
//! on loopback the peer's 512 binds before this end's).
//!
//! The least RTT is the least smoothed RTT the sending loop read, over the last
//! [`RTT_MEMORY`] to twice that (BBR keeps its minimum RTT for 10 s the same way), starting
//! from the handshake's: a path that changed to a longer one is judged by its own RTT once the
//! old one's is forgotten, and a loaded sender whose RTT is mostly its own queue (loopback)
//! keeps the handshake's until then. Until a path change is forgotten the old path's shorter
//! RTT understates the need, which matters only to a sender held back by the limit alone
//! within that time.

use std::time::Duration;

use tokio::time::Instant;

/// The limit's floor: below it, loopback loses again (64: 0.89 of raw, 32: 0.84).
pub(crate) const LEAST: usize = 128;
/// The limit's ceiling: the peer's stream limit (`MAX_CONCURRENT_STREAMS`).
pub(crate) const MOST: usize = 512;
/// The shortest window a decision is taken over.
pub(crate) const MIN_WINDOW: Duration = Duration::from_millis(1);
/// How long a least RTT is remembered at least (at most twice that).
pub(crate) const RTT_MEMORY: Duration = Duration::from_secs(5);
/// Completions between looks at the clock.
const LOOK_EVERY: u64 = 16;

/// The limit a window's completions call for: `done` messages completed in `elapsed`, the
/// path's least RTT `min_rtt`, the current limit `cap`, whether the limit held the sender
/// back in that window, and whether anything else did.
pub(crate) fn next_cap(
    cap: usize,
    done: u64,
    elapsed: Duration,
    min_rtt: Duration,
    (held, limited_elsewhere): (bool, bool),
) -> usize {
    if elapsed.is_zero() {
        return cap;
    }
    // In flight on a path without queues: rate × least RTT; twice that, for headroom.
    let needed = done as f64 * min_rtt.as_secs_f64() / elapsed.as_secs_f64();
    let want = ((2.0 * needed).ceil() as usize).clamp(LEAST, MOST);
    if want >= cap {
        want
    } else if !held || limited_elsewhere {
        cap
    } else {
        want.max(cap / 2)
    }
}

/// The current limit, the window being measured and the least RTT.
#[derive(Debug)]
pub(crate) struct StreamCap {
    limit: usize,
    start: Option<Instant>,
    done: u64,
    held: bool,
    limited_elsewhere: bool,
    /// The smoothed RTT the sending loop read last.
    srtt: Duration,
    /// The least RTT of the current period of [`RTT_MEMORY`] and of the one before.
    least: [Duration; 2],
    period: Option<Instant>,
}

impl StreamCap {
    /// A fresh carrier's, with the RTT its handshake measured.
    pub(crate) fn new(handshake_rtt: Duration) -> Self {
        StreamCap {
            limit: MOST,
            start: None,
            done: 0,
            held: false,
            limited_elsewhere: false,
            srtt: handshake_rtt,
            least: [handshake_rtt; 2],
            period: None,
        }
    }

    /// Messages that may be in flight now.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The least RTT remembered.
    pub(crate) fn min_rtt(&self) -> Duration {
        self.least[0].min(self.least[1])
    }

    /// The sender had a message to send and a stream limit (this one, or the peer's credit)
    /// held it back.
    pub(crate) fn held(&mut self) {
        self.held = true;
    }

    /// The sender waited for something other than the limit (messages to send, the
    /// congestion window) in this window.
    pub(crate) fn limited_elsewhere(&mut self) {
        self.limited_elsewhere = true;
    }

    /// The smoothed RTT the sending loop read now.
    pub(crate) fn rtt(&mut self, srtt: Duration) {
        self.srtt = srtt;
    }

    /// A message's stream completed (acknowledged, or ended otherwise).
    pub(crate) fn completed(&mut self) {
        self.done += 1;
        if !self.done.is_multiple_of(LOOK_EVERY) {
            return;
        }
        let now = Instant::now();
        self.note_rtt(now, self.srtt);
        let Some(start) = self.start else {
            self.begin(now);
            return;
        };
        let elapsed = now - start;
        let min_rtt = self.min_rtt();
        if elapsed < MIN_WINDOW.max(min_rtt) {
            return;
        }
        self.limit = next_cap(
            self.limit,
            self.done,
            elapsed,
            min_rtt,
            (self.held, self.limited_elsewhere),
        );
        self.begin(now);
    }

    fn note_rtt(&mut self, now: Instant, srtt: Duration) {
        match self.period {
            Some(p) if now - p < RTT_MEMORY => self.least[0] = self.least[0].min(srtt),
            // The last period ended: it becomes the one before.
            Some(p) if now - p < 2 * RTT_MEMORY => {
                self.least = [srtt, self.least[0]];
                self.period = Some(now);
            }
            // Nothing measured for a whole period (a path down for seconds): both forgotten.
            Some(_) => {
                self.least = [srtt; 2];
                self.period = Some(now);
            }
            None => {
                self.least[0] = self.least[0].min(srtt);
                self.period = Some(now);
            }
        }
    }

    fn begin(&mut self, now: Instant) {
        self.start = Some(now);
        self.done = 0;
        self.held = false;
        self.limited_elsewhere = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_fast_short_path_settles_at_the_floor_by_halves() {
        // Loopback: 350 k messages a second, 50 µs least RTT: 17.5 needed.
        let rtt = Duration::from_micros(50);
        assert_eq!(next_cap(512, 350, MS, rtt, (true, false)), 256);
        assert_eq!(next_cap(256, 350, MS, rtt, (true, false)), LEAST);
        assert_eq!(next_cap(LEAST, 350, MS, rtt, (true, false)), LEAST);
    }

    #[test]
    fn a_long_path_raises_the_limit_at_once_up_to_the_peer_s() {
        // 100 ms: 128 a round trip completed, 256 needed at twice that.
        let rtt = 100 * MS;
        assert_eq!(next_cap(LEAST, 128, rtt, rtt, (true, false)), 256);
        assert_eq!(next_cap(256, 256, rtt, rtt, (true, false)), MOST);
        assert_eq!(next_cap(MOST, 512, rtt, rtt, (true, false)), MOST);
        // Queues (the RTT now twice the least) mean more in flight would not go faster.
        assert_eq!(next_cap(LEAST, 128, 2 * rtt, rtt, (true, false)), LEAST);
    }

    #[test]
    fn a_window_held_back_elsewhere_never_lowers_it() {
        let rtt = 10 * MS;
        assert_eq!(next_cap(MOST, 3, 10 * rtt, rtt, (true, true)), MOST);
        assert_eq!(next_cap(MOST, 3, 10 * rtt, rtt, (true, false)), 256);
        // Nor one in which the limit did not hold it back.
        assert_eq!(next_cap(MOST, 3, 10 * rtt, rtt, (false, false)), MOST);
        // But it may raise it.
        assert_eq!(next_cap(LEAST, 20_000, rtt, rtt, (true, true)), MOST);
        assert_eq!(next_cap(300, 1, Duration::ZERO, rtt, (true, false)), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_are_measured_in_the_runtime_s_time() {
        let rtt = Duration::from_micros(50);
        // A backlog completing 16 messages every 50 µs: a 1 ms window at 320 k a second,
        // its smoothed RTT (its own queue) ten times the handshake's.
        let mut cap = StreamCap::new(rtt);
        for _ in 0..200 {
            cap.held();
            for _ in 0..LOOK_EVERY {
                cap.rtt(10 * rtt);
                cap.completed();
            }
            tokio::time::advance(rtt).await;
        }
        assert_eq!(cap.limit(), LEAST);
        // The same, held back elsewhere in every window: it stays where it is.
        let mut held = StreamCap::new(rtt);
        for _ in 0..200 {
            held.held();
            held.limited_elsewhere();
            for _ in 0..LOOK_EVERY {
                held.rtt(10 * rtt);
                held.completed();
            }
            tokio::time::advance(rtt).await;
        }
        assert_eq!(held.limit(), MOST);
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_rtt_of_an_old_path_is_forgotten() {
        let short = 40 * MS;
        let long = 110 * MS;
        let mut cap = StreamCap::new(short);
        // On the longer path, one window a round trip, for three times the memory (two
        // periods after the one the short RTT was seen in).
        let rounds = (3 * RTT_MEMORY.as_millis() / long.as_millis()) as usize;
        for _ in 0..rounds {
            for _ in 0..LOOK_EVERY {
                cap.rtt(long);
                cap.completed();
            }
            tokio::time::advance(long).await;
        }
        assert_eq!(cap.min_rtt(), long);
        // Still the short one within the memory.
        let mut fresh = StreamCap::new(short);
        for _ in 0..LOOK_EVERY {
            fresh.rtt(long);
            fresh.completed();
        }
        tokio::time::advance(long).await;
        for _ in 0..LOOK_EVERY {
            fresh.rtt(long);
            fresh.completed();
        }
        assert_eq!(fresh.min_rtt(), short);
        // Nothing completed for two periods (the path was down): both forgotten at once.
        let mut down = StreamCap::new(short);
        for _ in 0..LOOK_EVERY {
            down.rtt(short);
            down.completed();
        }
        tokio::time::advance(2 * RTT_MEMORY + long).await;
        for _ in 0..LOOK_EVERY {
            down.rtt(long);
            down.completed();
        }
        assert_eq!(down.min_rtt(), long);
    }
}
