//! The access-link model: a pure, seeded state machine per direction.
//!
//! A datagram offered to a link direction at time `now` is either dropped (larger than the
//! MTU, the drop-tail queue is full, CoDel drops it, or random or burst loss strikes) or
//! leaves the link at a computed time: after the datagrams queued before it, its own
//! serialisation time at the direction's rate, the direction's extra delay and a random
//! jitter (which may reorder datagrams only if the link says so); it may be duplicated.
//! Propagation latency is added afterwards by turmoil. Nothing here touches a socket or a
//! clock, so it is unit-testable and identical in every run with the same seed.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Parameters of one access link (both directions, unless `up` or `down` override them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// One-way propagation latency from the host to the network core, in milliseconds (at
    /// most 60000).
    #[serde(default, deserialize_with = "de::latency_ms")]
    pub latency_ms: u64,
    /// Probability that a datagram is lost, per datagram and direction (0.0 to 1.0).
    #[serde(default)]
    pub loss: f64,
    /// Link rate in kbit/s in each direction; absent means unlimited.
    #[serde(default)]
    pub bandwidth_kbps: Option<u64>,
    /// Queue size in bytes (used only with a bandwidth limit).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
    /// Random extra delay per datagram, uniform in 0..=`jitter_ms` milliseconds.
    #[serde(default, deserialize_with = "de::jitter_ms")]
    pub jitter_ms: u64,
    /// Whether jitter may reorder datagrams (default: each leaves no earlier than the one
    /// before it, as on a link with one queue).
    #[serde(default)]
    pub reorder: bool,
    /// Probability that a datagram is delivered twice (0.0 to 1.0).
    #[serde(default, deserialize_with = "de::probability")]
    pub duplicate: f64,
    /// Largest IP packet the link carries, in bytes (576 to 65535); larger ones are
    /// dropped. Absent: no limit.
    #[serde(default, deserialize_with = "de::mtu")]
    pub mtu: Option<usize>,
    /// Gilbert-Elliott burst loss; replaces `loss` when set.
    #[serde(default)]
    pub burst_loss: Option<BurstLoss>,
    /// The queue's discipline: drop-tail (default) or CoDel.
    #[serde(default)]
    pub aqm: Aqm,
    /// Overrides for the direction from the host towards the network.
    #[serde(default)]
    pub up: Option<DirectionParams>,
    /// Overrides for the direction from the network towards the host.
    #[serde(default)]
    pub down: Option<DirectionParams>,
}

/// What one direction of a link does differently (an asymmetric link).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionParams {
    /// Rate in kbit/s.
    #[serde(default, deserialize_with = "de::rate")]
    pub bandwidth_kbps: Option<u64>,
    /// Queue size in bytes (at least 1500).
    #[serde(default, deserialize_with = "de::queue")]
    pub queue_bytes: Option<usize>,
    /// Loss probability (0.0 to 1.0).
    #[serde(default, deserialize_with = "de::some_probability")]
    pub loss: Option<f64>,
    /// Extra one-way delay of this direction in milliseconds, on top of `latency_ms`.
    #[serde(default, deserialize_with = "de::delay_ms")]
    pub delay_ms: u64,
}

/// Gilbert-Elliott loss: a good and a bad state, each with its own loss probability; after
/// every datagram the state changes with the given probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstLoss {
    /// Probability of going from good to bad after a datagram.
    #[serde(deserialize_with = "de::probability")]
    pub p_enter: f64,
    /// Probability of going from bad back to good after a datagram.
    #[serde(deserialize_with = "de::probability")]
    pub p_exit: f64,
    /// Loss probability in the bad state (default 1.0).
    #[serde(default = "one", deserialize_with = "de::probability")]
    pub loss_bad: f64,
    /// Loss probability in the good state (default 0.0).
    #[serde(default, deserialize_with = "de::probability")]
    pub loss_good: f64,
}

fn one() -> f64 {
    1.0
}

/// A queue's discipline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aqm {
    /// Drop arrivals that do not fit.
    #[default]
    DropTail,
    /// CoDel (RFC 8289): drop when the queueing delay stays above 5 ms for 100 ms, more
    /// often the longer it does; decided when a datagram enters (its queueing delay is
    /// known then in this model).
    Codel,
}

/// Deserializers that check their value, so a bad one is reported at its place in the file.
pub(crate) mod de {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    pub(super) fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let p = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(D::Error::custom(format!(
                "a probability must be between 0.0 and 1.0, got {p}"
            )));
        }
        Ok(p)
    }

    pub(super) fn some_probability<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<f64>, D::Error> {
        probability(d).map(Some)
    }

    /// A duration in ms named `key`, at most `max`.
    fn ms_at_most<'de, D: Deserializer<'de>>(d: D, key: &str, max: u64) -> Result<u64, D::Error> {
        let ms = u64::deserialize(d)?;
        if ms > max {
            return Err(D::Error::custom(format!(
                "{key} must be at most {max} ms, got {ms}"
            )));
        }
        Ok(ms)
    }

    pub(super) fn jitter_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        ms_at_most(d, "jitter_ms", 10_000)
    }

    /// A one-way latency: at most a minute (a larger one is a typo, and would overflow the
    /// simulated clock's arithmetic for the largest values).
    pub(crate) fn latency_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        ms_at_most(d, "latency_ms", 60_000)
    }

    pub(super) fn delay_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        ms_at_most(d, "delay_ms", 60_000)
    }

    pub(super) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let kbps = u64::deserialize(d)?;
        if kbps == 0 {
            return Err(D::Error::custom(
                "bandwidth_kbps must be positive (omit it for unlimited)",
            ));
        }
        Ok(Some(kbps))
    }

    pub(super) fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let bytes = usize::deserialize(d)?;
        if bytes < 1500 {
            return Err(D::Error::custom(format!(
                "queue_bytes must hold at least one 1500-byte datagram, got {bytes}"
            )));
        }
        Ok(Some(bytes))
    }

    pub(super) fn mtu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let mtu = usize::deserialize(d)?;
        if !(576..=65_535).contains(&mtu) {
            return Err(D::Error::custom(format!(
                "mtu must be between 576 and 65535 bytes, got {mtu}"
            )));
        }
        Ok(Some(mtu))
    }
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
            jitter_ms: 0,
            reorder: false,
            duplicate: 0.0,
            mtu: None,
            burst_loss: None,
            aqm: Aqm::DropTail,
            up: None,
            down: None,
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
        let dirs = [
            ("", None),
            ("up.", self.up.as_ref()),
            ("down.", self.down.as_ref()),
        ];
        for (name, d) in dirs {
            let rate = d.and_then(|d| d.bandwidth_kbps).or(self.bandwidth_kbps);
            let queue = d.and_then(|d| d.queue_bytes).unwrap_or(self.queue_bytes);
            if d.and_then(|d| d.bandwidth_kbps) == Some(0) || (name.is_empty() && rate == Some(0)) {
                return Err(format!(
                    "{name}bandwidth_kbps must be positive (omit it for unlimited)"
                ));
            }
            if queue < 1500 && rate.is_some() {
                return Err(format!(
                    "{name}queue_bytes must hold at least one 1500-byte datagram, got {queue}"
                ));
            }
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
    /// Dropped: random or burst loss.
    Lost,
    /// Dropped: larger than the link's MTU.
    TooBig,
    /// The datagram leaves the link at this time, and a copy of it too.
    Duplicate(Instant),
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
    /// Datagrams dropped because they were larger than the MTU.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub too_big: u64,
    /// Datagrams CoDel dropped (also counted in `queue_drops`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aqm_drops: u64,
    /// Datagrams delivered twice (the copies; counted once in `delivered`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// CoDel's state (RFC 8289 §5.3).
#[derive(Debug, Default)]
struct Codel {
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Option<Instant>,
    count: u32,
}

const CODEL_TARGET: Duration = Duration::from_millis(5);
const CODEL_INTERVAL: Duration = Duration::from_millis(100);

impl Codel {
    fn control(count: u32) -> Duration {
        CODEL_INTERVAL.div_f64(f64::from(count.max(1)).sqrt())
    }

    /// Whether a datagram that will wait `sojourn` in the queue is dropped at `now`.
    fn drop(&mut self, now: Instant, sojourn: Duration) -> bool {
        if sojourn < CODEL_TARGET {
            self.first_above = None;
            self.dropping = false;
            return false;
        }
        let Some(first) = self.first_above else {
            self.first_above = Some(now + CODEL_INTERVAL);
            return false;
        };
        if !self.dropping {
            if now < first {
                return false;
            }
            self.dropping = true;
            // Re-entering soon after the last episode: start from where it left off.
            let recent = self
                .drop_next
                .is_some_and(|n| now.saturating_duration_since(n) < 16 * CODEL_INTERVAL);
            self.count = if recent && self.count > 2 {
                self.count - 2
            } else {
                1
            };
            self.drop_next = Some(now + Self::control(self.count));
            return true;
        }
        match self.drop_next {
            Some(next) if now >= next => {
                self.count += 1;
                self.drop_next = Some(next + Self::control(self.count));
                true
            }
            _ => false,
        }
    }
}

/// One direction of an access link.
#[derive(Debug)]
pub struct LinkDirection {
    params: LinkParams,
    upstream: bool,
    busy_until: Option<Instant>,
    rng: ChaCha8Rng,
    /// Gilbert-Elliott: in the bad state.
    bad: bool,
    /// The latest departure so far (jitter without reordering keeps to it).
    last_departure: Option<Instant>,
    codel: Codel,
    /// What happened so far.
    pub counters: DirectionCounters,
}

impl LinkDirection {
    /// A link direction (`upstream`: from the host) with its own seeded random stream.
    pub fn new(params: LinkParams, upstream: bool, rng: ChaCha8Rng) -> Self {
        LinkDirection {
            params,
            upstream,
            busy_until: None,
            rng,
            bad: false,
            last_departure: None,
            codel: Codel::default(),
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

    fn overrides(&self) -> Option<&DirectionParams> {
        if self.upstream {
            self.params.up.as_ref()
        } else {
            self.params.down.as_ref()
        }
    }

    /// This direction's rate in kbit/s, if limited.
    pub fn rate_kbps(&self) -> Option<u64> {
        self.overrides()
            .and_then(|d| d.bandwidth_kbps)
            .or(self.params.bandwidth_kbps)
    }

    fn queue_bytes(&self) -> usize {
        self.overrides()
            .and_then(|d| d.queue_bytes)
            .unwrap_or(self.params.queue_bytes)
    }

    /// This direction's random loss probability.
    pub fn loss(&self) -> f64 {
        self.overrides()
            .and_then(|d| d.loss)
            .unwrap_or(self.params.loss)
    }

    /// Whether the next datagram is lost (burst loss, or random loss).
    fn lost(&mut self) -> bool {
        if let Some(ge) = &self.params.burst_loss {
            let p = if self.bad { ge.loss_bad } else { ge.loss_good };
            let lost = p > 0.0 && self.rng.gen_bool(p);
            let flip = if self.bad { ge.p_exit } else { ge.p_enter };
            if flip > 0.0 && self.rng.gen_bool(flip) {
                self.bad = !self.bad;
            }
            return lost;
        }
        let loss = self.loss();
        loss > 0.0 && self.rng.gen_bool(loss)
    }

    /// Offers a datagram of `len` bytes (an IP packet of `ip_len`) at `now`.
    pub fn offer(&mut self, now: Instant, len: usize, ip_len: usize) -> Verdict {
        self.counters.offered += 1;
        if self.params.mtu.is_some_and(|mtu| ip_len > mtu) {
            self.counters.too_big += 1;
            return Verdict::TooBig;
        }
        let departure = match self.rate_kbps() {
            None => now,
            Some(kbps) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let backlog = start.saturating_duration_since(now);
                let backlog_bytes = (backlog.as_nanos() * u128::from(kbps) / 8_000_000) as usize;
                if backlog_bytes + len > self.queue_bytes() {
                    self.counters.queue_drops += 1;
                    return Verdict::QueueFull;
                }
                if self.params.aqm == Aqm::Codel && self.codel.drop(now, backlog) {
                    self.counters.queue_drops += 1;
                    self.counters.aqm_drops += 1;
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
        if self.lost() {
            self.counters.losses += 1;
            return Verdict::Lost;
        }
        let mut at = departure + Duration::from_millis(self.overrides().map_or(0, |d| d.delay_ms));
        if self.params.jitter_ms > 0 {
            at += Duration::from_micros(self.rng.gen_range(0..=self.params.jitter_ms * 1000));
            if !self.params.reorder {
                at = at.max(self.last_departure.unwrap_or(at));
            }
        }
        self.last_departure = Some(self.last_departure.map_or(at, |l| l.max(at)));
        self.counters.delivered += 1;
        self.counters.bytes += len as u64;
        if self.params.duplicate > 0.0 && self.rng.gen_bool(self.params.duplicate) {
            self.counters.duplicated += 1;
            return Verdict::Duplicate(at);
        }
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn link(params: LinkParams, seed: u64) -> LinkDirection {
        LinkDirection::new(params, true, ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn unlimited_lossless_link_delivers_at_once() {
        let mut l = link(LinkParams::default(), 1);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.offer(now, 1500, 1528), Verdict::Deliver(now));
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
        assert_eq!(l.offer(t0, 1250, 1278), Verdict::Deliver(t0 + ms(10)));
        assert_eq!(l.offer(t0, 1250, 1278), Verdict::Deliver(t0 + ms(20)));
        assert_eq!(l.offer(t0, 1250, 1278), Verdict::Deliver(t0 + ms(30)));
        // Backlog is now 30 ms = 3750 bytes: the next one does not fit.
        assert_eq!(l.offer(t0, 1250, 1278), Verdict::QueueFull);
        // 10 ms later one datagram has left, so one more fits, behind the others.
        assert_eq!(
            l.offer(t0 + ms(10), 1250, 1278),
            Verdict::Deliver(t0 + ms(40))
        );
        // After the link drained, a datagram goes straight out.
        assert_eq!(
            l.offer(t0 + ms(100), 1250, 1278),
            Verdict::Deliver(t0 + ms(110))
        );
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
                .map(|_| l.offer(now, 100, 128) == Verdict::Lost)
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn jitter_delays_within_its_bound_and_reorders_only_when_allowed() {
        for reorder in [false, true] {
            let params = LinkParams {
                jitter_ms: 20,
                reorder,
                ..LinkParams::default()
            };
            let mut l = link(params, 3);
            let t0 = Instant::now();
            let mut out = Vec::new();
            for i in 0..200 {
                let now = t0 + ms(i);
                match l.offer(now, 100, 128) {
                    Verdict::Deliver(at) => {
                        assert!(at >= now);
                        if !reorder {
                            assert!(at <= now + ms(20) || out.last().is_some_and(|&l| at == l));
                        } else {
                            assert!(at <= now + ms(20));
                        }
                        out.push(at);
                    }
                    v => panic!("{v:?}"),
                }
            }
            let in_order = out.windows(2).all(|w| w[0] <= w[1]);
            assert_eq!(in_order, !reorder, "reorder = {reorder}");
        }
    }

    #[test]
    fn duplication_mtu_and_direction_overrides() {
        let params = LinkParams {
            duplicate: 0.2,
            mtu: Some(1280),
            bandwidth_kbps: Some(1000),
            down: Some(DirectionParams {
                bandwidth_kbps: Some(8000),
                delay_ms: 30,
                ..DirectionParams::default()
            }),
            ..LinkParams::default()
        };
        let t0 = Instant::now();
        let mut up = LinkDirection::new(params.clone(), true, ChaCha8Rng::seed_from_u64(1));
        let mut down = LinkDirection::new(params, false, ChaCha8Rng::seed_from_u64(1));
        // Larger than the MTU: dropped and counted.
        assert_eq!(up.offer(t0, 1300, 1328), Verdict::TooBig);
        assert_eq!(up.counters.too_big, 1);
        // 1000 B at 1000 kbit/s up: 8 ms; down at 8000 kbit/s: 1 ms, plus 30 ms of delay.
        let at = |v: Verdict| match v {
            Verdict::Deliver(at) | Verdict::Duplicate(at) => at,
            v => panic!("{v:?}"),
        };
        assert_eq!(at(up.offer(t0, 1000, 1028)), t0 + ms(8));
        assert_eq!(at(down.offer(t0, 1000, 1028)), t0 + ms(31));
        let mut copies = 0;
        for i in 0..1000 {
            if let Verdict::Duplicate(_) = down.offer(t0 + ms(100 + i), 100, 128) {
                copies += 1;
            }
        }
        assert!((150..250).contains(&copies), "{copies} duplicates");
        assert_eq!(down.counters.duplicated, copies);
    }

    #[test]
    fn burst_loss_comes_in_bursts() {
        // Good -> bad with 1 %, bad -> good with 25 %: bursts of 4 on average, ~3.8 % loss.
        let params = LinkParams {
            burst_loss: Some(BurstLoss {
                p_enter: 0.01,
                p_exit: 0.25,
                loss_bad: 1.0,
                loss_good: 0.0,
            }),
            ..LinkParams::default()
        };
        let mut l = link(params, 9);
        let now = Instant::now();
        let lost: Vec<bool> = (0..100_000)
            .map(|_| l.offer(now, 100, 128) == Verdict::Lost)
            .collect();
        let losses = lost.iter().filter(|&&x| x).count();
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = losses as f64 / bursts as f64;
        assert!((3.0..5.0).contains(&mean_burst), "mean burst {mean_burst}");
        assert!((2500..5500).contains(&losses), "{losses} lost");
    }

    #[test]
    fn codel_keeps_a_standing_queue_short_where_drop_tail_fills_it() {
        // 1000 kbit/s, a 1 MB queue, offered 1250 B every 5 ms (2 Mbit/s) for 5 s.
        let delay = |aqm: Aqm| {
            let params = LinkParams {
                bandwidth_kbps: Some(1000),
                queue_bytes: 1 << 20,
                aqm,
                ..LinkParams::default()
            };
            let mut l = link(params, 1);
            let t0 = Instant::now();
            let mut last = Duration::ZERO;
            for i in 0..1000 {
                let now = t0 + ms(5 * i);
                if let Verdict::Deliver(at) = l.offer(now, 1250, 1278) {
                    last = at - now;
                }
            }
            (last, l.counters.aqm_drops)
        };
        let (tail, none) = delay(Aqm::DropTail);
        let (codel, drops) = delay(Aqm::Codel);
        assert_eq!(none, 0);
        assert!(tail > ms(1000), "drop-tail queueing delay {tail:?}");
        assert!(codel < ms(200), "CoDel queueing delay {codel:?}");
        assert!(drops > 100, "{drops} CoDel drops");
    }
}
