//! The access-link model: a pure, seeded state machine per direction.
//!
//! A datagram offered to a link direction at time `now` is either dropped (the drop-tail queue
//! is full, or Bernoulli loss strikes) or leaves the link at a computed time: after the
//! datagrams queued before it and its own serialisation time at the link's rate. Propagation
//! latency is added afterwards by turmoil. Nothing here touches a socket or a clock, so it is
//! unit-testable and identical in every run with the same seed.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Parameters of one access link (the same in both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// One-way propagation latency from the host to the network core, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability that a datagram is lost, per datagram and direction (0.0 to 1.0).
    #[serde(default)]
    pub loss: f64,
    /// Link rate in kbit/s in each direction; absent means unlimited.
    #[serde(default)]
    pub bandwidth_kbps: Option<u64>,
    /// Drop-tail queue size in bytes (used only with a bandwidth limit).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
}

fn default_queue_bytes() -> usize {
    64 * 1024
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            latency_ms: 0,
            loss: 0.0,
            bandwidth_kbps: None,
            queue_bytes: default_queue_bytes(),
        }
    }
}

impl LinkParams {
    /// Checks the parameters; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) || self.loss.is_nan() {
            return Err(format!(
                "loss must be between 0.0 and 1.0, got {}",
                self.loss
            ));
        }
        if self.bandwidth_kbps == Some(0) {
            return Err("bandwidth_kbps must be positive (omit it for unlimited)".into());
        }
        if self.queue_bytes < 1500 && self.bandwidth_kbps.is_some() {
            return Err(format!(
                "queue_bytes must hold at least one 1500-byte datagram, got {}",
                self.queue_bytes
            ));
        }
        Ok(())
    }
}

/// What happens to a datagram offered to a link direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The datagram leaves the link at this time.
    Deliver(Instant),
    /// Dropped: the queue was full.
    QueueFull,
    /// Dropped: Bernoulli loss.
    Lost,
}

/// Counters of one link direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// Datagrams offered to the link.
    pub offered: u64,
    /// Datagrams that left the link.
    pub delivered: u64,
    /// Datagrams dropped because the queue was full.
    pub queue_drops: u64,
    /// Datagrams dropped by random loss.
    pub losses: u64,
    /// Bytes that left the link.
    pub bytes: u64,
    /// Datagrams that had passed the queue (and count above) but were still on the link
    /// when it went down: lost with it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_on_link: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One direction of an access link.
#[derive(Debug)]
pub struct LinkDirection {
    params: LinkParams,
    busy_until: Option<Instant>,
    rng: ChaCha8Rng,
    /// What happened so far.
    pub counters: DirectionCounters,
}

impl LinkDirection {
    /// A link direction with its own seeded random stream.
    pub fn new(params: LinkParams, rng: ChaCha8Rng) -> Self {
        LinkDirection {
            params,
            busy_until: None,
            rng,
            counters: DirectionCounters::default(),
        }
    }

    /// Changes loss, rate or queue from now on (a fault in the timeline).
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    /// The current parameters.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Offers a datagram of `len` bytes at `now`.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        self.counters.offered += 1;
        let departure = match self.params.bandwidth_kbps {
            None => now,
            Some(kbps) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let backlog = start.saturating_duration_since(now);
                let backlog_bytes = (backlog.as_nanos() * u128::from(kbps) / 8_000_000) as usize;
                if backlog_bytes + len > self.params.queue_bytes {
                    self.counters.queue_drops += 1;
                    return Verdict::QueueFull;
                }
                let serialisation =
                    Duration::from_nanos((len as u64 * 8 * 1_000_000) / kbps.max(1));
                let done = start + serialisation;
                self.busy_until = Some(done);
                done
            }
        };
        // The datagram used the link even if it is lost on the way.
        if self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss) {
            self.counters.losses += 1;
            return Verdict::Lost;
        }
        self.counters.delivered += 1;
        self.counters.bytes += len as u64;
        Verdict::Deliver(departure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn link(params: LinkParams, seed: u64) -> LinkDirection {
        LinkDirection::new(params, ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn unlimited_lossless_link_delivers_at_once() {
        let mut l = link(LinkParams::default(), 1);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.offer(now, 1500), Verdict::Deliver(now));
        }
        assert_eq!(l.counters.delivered, 100);
    }

    #[test]
    fn rate_serialises_and_queue_drops_tail() {
        // 1000 kbit/s: a 1250-byte datagram takes 10 ms; queue of 3750 bytes = 3 datagrams.
        let params = LinkParams {
            bandwidth_kbps: Some(1000),
            queue_bytes: 3750,
            ..LinkParams::default()
        };
        let mut l = link(params, 1);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(l.offer(t0, 1250), Verdict::Deliver(t0 + ms(10)));
        assert_eq!(l.offer(t0, 1250), Verdict::Deliver(t0 + ms(20)));
        assert_eq!(l.offer(t0, 1250), Verdict::Deliver(t0 + ms(30)));
        // Backlog is now 30 ms = 3750 bytes: the next one does not fit.
        assert_eq!(l.offer(t0, 1250), Verdict::QueueFull);
        // 10 ms later one datagram has left, so one more fits, behind the others.
        assert_eq!(l.offer(t0 + ms(10), 1250), Verdict::Deliver(t0 + ms(40)));
        // After the link drained, a datagram goes straight out.
        assert_eq!(l.offer(t0 + ms(100), 1250), Verdict::Deliver(t0 + ms(110)));
        assert_eq!(l.counters.queue_drops, 1);
    }

    #[test]
    fn loss_rate_and_seed() {
        let params = LinkParams {
            loss: 0.1,
            ..LinkParams::default()
        };
        let now = Instant::now();
        let run = |seed| {
            let mut l = link(params.clone(), seed);
            (0..10_000)
                .map(|_| l.offer(now, 100) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        let a = run(7);
        let lost = a.iter().filter(|x| **x).count();
        assert!((900..1100).contains(&lost), "lost {lost} of 10000 at 10 %");
        assert_eq!(a, run(7), "same seed, same losses");
        assert_ne!(a, run(8), "different seed, different losses");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = LinkParams {
            loss: 1.5,
            ..LinkParams::default()
        };
        assert!(bad.validate().expect_err("bad loss").contains("loss"));
        let bad = LinkParams {
            bandwidth_kbps: Some(0),
            ..LinkParams::default()
        };
        assert!(bad
            .validate()
            .expect_err("bad rate")
            .contains("bandwidth_kbps"));
    }
}
