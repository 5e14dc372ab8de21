//! The path decider: the sans-IO core of a client carrier's path manager.
//!
//! It holds what the manager remembers between checks — the path in use, since when each
//! interface has been up, which interfaces are suspected after a black hole or heavy loss,
//! the window of loss counters — and turns one observation (the time, the interface list,
//! the transient's [`Health`]) into at most one [`Decision`]: move to a path, or go dormant.
//! [`manage`](super::manage) drives it every few milliseconds while traffic moves, on every
//! interface change, and while the transient is idle at its
//! [`next_deadline`](PathDecider::next_deadline) or when the transient touches its activity;
//! the unit tests below drive it on a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{rank, HandoverReason, PathChoice, PathPolicy};
use crate::net::Interface;

/// Traffic counters a path manager watches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Health {
    /// What was sent that the peer must answer (ack-eliciting QUIC frames; TLS writes that
    /// carry data), and datagrams (or frames) received, so far.
    pub(crate) tx: u64,
    pub(crate) rx: u64,
    /// Packets sent and declared lost so far.
    pub(crate) sent_packets: u64,
    pub(crate) lost_packets: u64,
    /// Smoothed RTT of the current path.
    pub(crate) srtt: Duration,
    /// The transient has ended: nothing left to steer.
    pub(crate) ended: bool,
    /// The transient broke but the carrier can continue on a new one.
    pub(crate) broken: bool,
}

/// What the decider wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Move the transient onto `to`; report [`moved`](PathDecider::moved) or
    /// [`move_failed`](PathDecider::move_failed).
    Move {
        to: PathChoice,
        reason: HandoverReason,
    },
    /// No usable path: the carrier is dormant until one comes.
    Dormant,
}

/// The state of one client carrier's path manager (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct PathDecider {
    policy: PathPolicy,
    remote: IpAddr,
    current: Option<PathChoice>,
    /// Since when each interface has been up (interfaces up at the start count as stable).
    up_since: BTreeMap<String, Instant>,
    /// Interfaces left because they fell silent or lossy, until when they are not tried again.
    /// Suspected paths, by (interface, towards IPv4) — the IP version counts: a broken IPv6
    /// says nothing of IPv4 over the same interface.
    suspect: BTreeMap<(String, bool), Instant>,
    /// The remote's addresses of the other IP version (from resolution): where a carrier goes
    /// when no path of the current version is left.
    alternates: Vec<IpAddr>,
    /// Alternate-version paths (by local address) that failed to open, until when.
    alternate_failed: BTreeMap<IpAddr, Instant>,
    last: Health,
    unanswered_since: Option<Instant>,
    /// (time, packets sent, packets lost) over the quality window.
    window: VecDeque<(Instant, u64, u64)>,
}

impl PathDecider {
    /// A decider for a transient established on `start`, with `interfaces` up at `now`.
    pub(crate) fn new(
        policy: PathPolicy,
        remote: IpAddr,
        start: PathChoice,
        interfaces: &[Interface],
        health: Health,
        now: Instant,
    ) -> Self {
        let stable = now.checked_sub(policy.return_after).unwrap_or(now);
        let up_since = interfaces
            .iter()
            .filter(|i| i.up)
            .map(|i| (i.name.clone(), stable))
            .collect();
        PathDecider {
            policy,
            remote,
            current: Some(start),
            up_since,
            suspect: BTreeMap::new(),
            alternates: Vec::new(),
            alternate_failed: BTreeMap::new(),
            last: health,
            unanswered_since: None,
            window: VecDeque::new(),
        }
    }

    /// The remote's addresses of another IP version, to fall back to (see
    /// [`handle`](Self::handle)).
    pub(crate) fn with_alternates(mut self, alternates: Vec<IpAddr>) -> Self {
        self.alternates = alternates
            .into_iter()
            .filter(|a| a.is_ipv4() != self.remote.is_ipv4())
            .collect();
        self
    }

    /// A path to the remote over another IP version, when the current one has none left
    /// (the current version is broken on every interface, say): the best interface with a
    /// local address of an alternate's version that has not just failed to open.
    fn fallback(&self, now: Instant, list: &[Interface]) -> Option<PathChoice> {
        self.alternates.iter().find_map(|alt| {
            rank(&self.policy, list, *alt).into_iter().find(|c| {
                !self
                    .suspect
                    .contains_key(&(c.interface.clone(), c.local.is_ipv4()))
                    && self
                        .alternate_failed
                        .get(&c.local)
                        .is_none_or(|until| *until <= now)
            })
        })
    }

    /// Nothing sent is waiting for an answer: with the same interfaces and counters, only
    /// [`next_deadline`](Self::next_deadline) can change what [`handle`](Self::handle) says.
    pub(crate) fn quiet(&self) -> bool {
        self.unanswered_since.is_none()
    }

    /// The earliest time after `now` at which [`handle`](Self::handle), given the same
    /// interfaces and counters as at its last call, could decide otherwise: when a suspected
    /// interface or a failed alternate may be tried again, or when an interface that came up
    /// has been up for [`PathPolicy::return_after`] (a better one is then returned to).
    /// `None`: not before something changes. (While something is unanswered the manager
    /// checks every few milliseconds anyway: see [`quiet`](Self::quiet).)
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let return_after = self.policy.return_after;
        self.suspect
            .values()
            .chain(self.alternate_failed.values())
            .copied()
            .chain(self.up_since.values().map(|t| *t + return_after))
            .filter(|t| *t > now)
            .min()
    }

    /// The path in use; `None` while dormant.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<&PathChoice> {
        self.current.as_ref()
    }

    /// One observation: the interfaces and the transient's counters at `now`.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        list: &[Interface],
        h: Health,
    ) -> Option<Decision> {
        let policy = &self.policy;
        for i in list {
            if i.up {
                self.up_since.entry(i.name.clone()).or_insert(now);
            } else {
                self.up_since.remove(&i.name);
                // Down and (later) up again: no longer suspected of silence.
                self.suspect.retain(|(name, _), _| name != &i.name);
            }
        }
        self.up_since
            .retain(|name, _| list.iter().any(|i| i.up && &i.name == name));
        self.suspect.retain(|_, until| *until > now);
        let usable: Vec<PathChoice> = rank(policy, list, self.remote)
            .into_iter()
            .filter(|c| {
                !self
                    .suspect
                    .contains_key(&(c.interface.clone(), c.local.is_ipv4()))
            })
            .collect();

        // Health of the current path.
        if h.rx != self.last.rx {
            self.unanswered_since = None;
        } else if h.tx != self.last.tx && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        self.window.push_back((now, h.sent_packets, h.lost_packets));
        while self
            .window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > policy.quality_window)
        {
            self.window.pop_front();
        }
        self.last = h;
        let silence = (h.srtt * policy.silence_rtts).max(policy.silence_floor);
        let silent = self
            .unanswered_since
            .is_some_and(|t| now.duration_since(t) > silence);
        let loss = self.window.front().map_or(0.0, |(_, sent, lost)| {
            let sent = h.sent_packets.saturating_sub(*sent);
            let lost = h.lost_packets.saturating_sub(*lost);
            if sent >= 20 {
                lost as f64 / sent as f64
            } else {
                0.0
            }
        });

        let position = |name: &str| usable.iter().position(|c| c.interface == name);
        // What the link layer reports of an interface's loss (an OS interface list does not
        // say, and then only measured loss counts).
        let reported_loss = |name: &str| {
            list.iter()
                .find(|i| i.name == name && policy.link_quality)
                .and_then(|i| i.quality)
                .map_or(0.0, |q| q.loss)
        };
        let (target, reason) = match &self.current {
            None => match usable.first().cloned().or_else(|| {
                // Dormant with nothing of this IP version: the other one, if it works.
                self.policy
                    .failover
                    .then(|| self.fallback(now, list))
                    .flatten()
            }) {
                Some(best) => (Some(best), HandoverReason::Recovered),
                None => return None,
            },
            Some(c) if position(&c.interface).is_none() => {
                (usable.first().cloned(), HandoverReason::InterfaceDown)
            }
            // The transient broke under us (the carrier can continue on a new one).
            Some(_) if h.broken => (usable.first().cloned(), HandoverReason::Broken),
            Some(c) if silent => {
                self.suspect.insert(
                    (c.interface.clone(), c.local.is_ipv4()),
                    now + policy.suspect_for,
                );
                let other = usable.iter().find(|u| u.interface != c.interface).cloned();
                (other, HandoverReason::Silent)
            }
            Some(c) if loss > policy.max_loss || reported_loss(&c.interface) > policy.max_loss => {
                let better = |u: &&PathChoice| {
                    u.interface != c.interface && reported_loss(&u.interface) <= policy.max_loss
                };
                match usable.iter().find(better) {
                    Some(other) => {
                        // Not back to it for a while: its link still looks up.
                        self.suspect.insert(
                            (c.interface.clone(), c.local.is_ipv4()),
                            now + policy.suspect_for,
                        );
                        (Some(other.clone()), HandoverReason::Degraded)
                    }
                    None => return None,
                }
            }
            Some(c) => {
                let here = position(&c.interface).unwrap_or(0);
                match usable.first() {
                    Some(best)
                        if here > 0
                            && self
                                .up_since
                                .get(&best.interface)
                                .is_some_and(|t| now.duration_since(*t) >= policy.return_after) =>
                    {
                        (Some(best.clone()), HandoverReason::Preferred)
                    }
                    _ => return None,
                }
            }
        };
        if !self.policy.failover {
            return None;
        }
        // Nothing of this IP version is left: the other version, if the remote has it.
        let target = match (target, reason) {
            (
                None,
                HandoverReason::InterfaceDown | HandoverReason::Broken | HandoverReason::Silent,
            ) => self.fallback(now, list),
            (t, _) => t,
        };
        match target {
            Some(to) => Some(Decision::Move { to, reason }),
            None => {
                self.current.take()?;
                self.unanswered_since = None;
                Some(Decision::Dormant)
            }
        }
    }

    /// The transient now runs on `to`; `health` are its counters after the move.
    pub(crate) fn moved(&mut self, to: PathChoice, health: Health) {
        // Onto the other IP version: its address is the remote now.
        if to.local.is_ipv4() != self.remote.is_ipv4() {
            if let Some(k) = self
                .alternates
                .iter()
                .position(|a| a.is_ipv4() == to.local.is_ipv4())
            {
                let old = std::mem::replace(&mut self.remote, self.alternates.remove(k));
                self.alternates.push(old);
            }
        }
        self.current = Some(to);
        self.last = health;
        self.unanswered_since = None;
        self.window.clear();
    }

    /// Moving onto `to` failed (binding on it did not work): leave it alone for a while.
    pub(crate) fn move_failed(&mut self, to: &PathChoice, now: Instant) {
        if to.local.is_ipv4() != self.remote.is_ipv4() {
            self.alternate_failed
                .insert(to.local, now + self.policy.return_after);
            return;
        }
        self.suspect.insert(
            (to.interface.clone(), to.local.is_ipv4()),
            now + self.policy.return_after,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::LinkQuality;

    fn iface(name: &str, last: u8, up: bool) -> Interface {
        Interface {
            name: name.into(),
            addrs: vec![IpAddr::from([10, 0, last, 1])],
            up,
            quality: None,
        }
    }

    fn choice(name: &str, last: u8) -> PathChoice {
        PathChoice {
            interface: name.into(),
            local: IpAddr::from([10, 0, last, 1]),
        }
    }

    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn two_up() -> Vec<Interface> {
        vec![iface("wifi", 1, true), iface("cell", 2, true)]
    }

    fn decider(t0: Instant) -> PathDecider {
        let health = Health {
            srtt: Duration::from_millis(40),
            ..Health::default()
        };
        PathDecider::new(
            PathPolicy::default(),
            REMOTE,
            choice("wifi", 1),
            &two_up(),
            health,
            t0,
        )
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn interface_down_moves_to_the_next_and_none_left_is_dormant() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let h = d.last;
        assert_eq!(d.handle(ms(t0, 5), &two_up(), h), None);
        let wifi_down = vec![iface("wifi", 1, false), iface("cell", 2, true)];
        let cell = choice("cell", 2);
        assert_eq!(
            d.handle(ms(t0, 10), &wifi_down, h),
            Some(Decision::Move {
                to: cell.clone(),
                reason: HandoverReason::InterfaceDown
            })
        );
        d.moved(cell, h);
        let all_down = vec![iface("wifi", 1, false), iface("cell", 2, false)];
        assert_eq!(d.handle(ms(t0, 15), &all_down, h), Some(Decision::Dormant));
        assert_eq!(d.current(), None);
        // Dormant once, not on every check.
        assert_eq!(d.handle(ms(t0, 20), &all_down, h), None);
        // The first interface back ends dormancy at once.
        assert_eq!(
            d.handle(ms(t0, 25), &wifi_down, h),
            Some(Decision::Move {
                to: choice("cell", 2),
                reason: HandoverReason::Recovered
            })
        );
    }

    #[test]
    fn silence_after_sending_is_a_black_hole_after_three_srtts() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let mut h = d.last;
        h.tx += 1; // sent something; nothing comes back
        assert_eq!(d.handle(ms(t0, 5), &two_up(), h), None);
        // 3 × 40 ms srtt = 120 ms of silence is tolerated...
        assert_eq!(d.handle(ms(t0, 125), &two_up(), h), None);
        // ...then the path is silent: move, and suspect wifi.
        assert_eq!(
            d.handle(ms(t0, 130), &two_up(), h),
            Some(Decision::Move {
                to: choice("cell", 2),
                reason: HandoverReason::Silent
            })
        );
        d.moved(choice("cell", 2), h);
        // Wifi is better but suspected: no return within suspect_for (10 s)...
        for t in (200..10_000).step_by(500) {
            assert_eq!(d.handle(ms(t0, t), &two_up(), h), None, "at {t} ms");
        }
        // ...and after it, back to the preferred wifi (up long enough).
        assert_eq!(
            d.handle(ms(t0, 10_200), &two_up(), h),
            Some(Decision::Move {
                to: choice("wifi", 1),
                reason: HandoverReason::Preferred
            })
        );
    }

    /// A manager asleep until `next_deadline` misses nothing: with the same interfaces and
    /// counters, every check before it decides nothing, and the one at it decides what a
    /// check every 5 ms would have.
    #[test]
    fn nothing_is_decided_before_the_next_deadline() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let mut h = d.last;
        assert!(d.quiet());
        h.tx += 1;
        assert_eq!(d.handle(ms(t0, 5), &two_up(), h), None);
        assert!(!d.quiet(), "something sent, nothing heard");
        assert!(matches!(
            d.handle(ms(t0, 130), &two_up(), h),
            Some(Decision::Move { .. })
        ));
        d.moved(choice("cell", 2), h);
        assert!(d.quiet());
        // Wifi is suspected until 130 ms + 10 s; both interfaces have long been up.
        let deadline = d.next_deadline(ms(t0, 135)).expect("the suspicion ends");
        assert_eq!(deadline, ms(t0, 10_130));
        let mut t = 135;
        while ms(t0, t) < deadline {
            assert_eq!(d.handle(ms(t0, t), &two_up(), h), None, "at {t} ms");
            t += 5;
        }
        assert_eq!(
            d.handle(deadline, &two_up(), h),
            Some(Decision::Move {
                to: choice("wifi", 1),
                reason: HandoverReason::Preferred
            })
        );
    }

    /// An interface that comes up is returned to `return_after` later: that is a deadline.
    #[test]
    fn an_interface_coming_up_sets_a_deadline_of_return_after() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let h = d.last;
        let wifi_down = vec![iface("wifi", 1, false), iface("cell", 2, true)];
        assert!(matches!(
            d.handle(ms(t0, 5), &wifi_down, h),
            Some(Decision::Move { .. })
        ));
        d.moved(choice("cell", 2), h);
        assert_eq!(d.next_deadline(ms(t0, 5)), None, "nothing to wait for");
        assert_eq!(d.handle(ms(t0, 1_000), &two_up(), h), None);
        let back = d.next_deadline(ms(t0, 1_000)).expect("wifi's return");
        assert_eq!(back, ms(t0, 1_000) + d.policy.return_after);
        assert_eq!(
            d.handle(back - Duration::from_millis(1), &two_up(), h),
            None
        );
        assert!(matches!(
            d.handle(back, &two_up(), h),
            Some(Decision::Move {
                reason: HandoverReason::Preferred,
                ..
            })
        ));
    }

    #[test]
    fn a_silent_ip_version_falls_back_to_the_other_on_the_same_interface() {
        let t0 = Instant::now();
        let v6 = |n: u16| IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        let (v4_remote, v6_remote) = (REMOTE, v6(2));
        let eth = vec![Interface {
            name: "eth0".into(),
            addrs: vec![IpAddr::from([10, 0, 1, 1]), v6(1)],
            up: true,
            quality: None,
        }];
        let on = |local: IpAddr| PathChoice {
            interface: "eth0".into(),
            local,
        };
        let health = Health {
            srtt: Duration::from_millis(40),
            ..Health::default()
        };
        let fresh = |alternates: Vec<IpAddr>| {
            PathDecider::new(
                PathPolicy::default(),
                v6_remote,
                on(v6(1)),
                &eth,
                health,
                t0,
            )
            .with_alternates(alternates)
        };
        let mut d = fresh(vec![v6(3), v4_remote]);
        let mut h = d.last;
        h.tx += 1;
        assert_eq!(d.handle(ms(t0, 5), &eth, h), None);
        // Silent IPv6, no other interface: IPv4 on the same one.
        let to_v4 = on(IpAddr::from([10, 0, 1, 1]));
        assert_eq!(
            d.handle(ms(t0, 250), &eth, h),
            Some(Decision::Move {
                to: to_v4.clone(),
                reason: HandoverReason::Silent
            })
        );
        d.moved(to_v4.clone(), h);
        // IPv4 is the remote now and is not suspected (the suspicion is IPv6's): it stays.
        for t in (300..12_000).step_by(500) {
            assert_eq!(d.handle(ms(t0, t), &eth, h), None, "at {t} ms");
        }
        // Without an alternate the same silence ends dormant; a failed fallback is not
        // retried until return_after has passed.
        let mut d = fresh(Vec::new());
        assert_eq!(d.handle(ms(t0, 5), &eth, h), None);
        assert_eq!(d.handle(ms(t0, 250), &eth, h), Some(Decision::Dormant));
        let mut d = fresh(vec![v4_remote]);
        d.handle(ms(t0, 5), &eth, h);
        let Some(Decision::Move { to, .. }) = d.handle(ms(t0, 250), &eth, h) else {
            panic!("a fallback");
        };
        d.move_failed(&to, ms(t0, 250));
        assert_eq!(d.handle(ms(t0, 255), &eth, h), Some(Decision::Dormant));
        assert_eq!(d.handle(ms(t0, 1_000), &eth, h), None);
    }

    #[test]
    fn an_answer_resets_the_silence_clock() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let mut h = d.last;
        h.tx += 1;
        assert_eq!(d.handle(ms(t0, 5), &two_up(), h), None);
        h.rx += 1;
        assert_eq!(d.handle(ms(t0, 100), &two_up(), h), None);
        h.tx += 1;
        assert_eq!(d.handle(ms(t0, 105), &two_up(), h), None);
        assert_eq!(d.handle(ms(t0, 220), &two_up(), h), None);
        assert!(d.handle(ms(t0, 230), &two_up(), h).is_some());
    }

    #[test]
    fn measured_loss_above_the_limit_moves_only_to_a_cleaner_path() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let mut h = d.last;
        assert_eq!(d.handle(ms(t0, 0), &two_up(), h), None);
        h.sent_packets = 100;
        h.lost_packets = 30;
        h.rx = 1;
        assert_eq!(
            d.handle(ms(t0, 5), &two_up(), h),
            Some(Decision::Move {
                to: choice("cell", 2),
                reason: HandoverReason::Degraded
            })
        );
        // With the link layer reporting the other path lossy too, stay.
        let mut d = decider(t0);
        let mut lossy = two_up();
        lossy[1].quality = Some(LinkQuality {
            loss: 0.5,
            latency: Duration::ZERO,
        });
        let mut h = d.last;
        assert_eq!(d.handle(ms(t0, 0), &lossy, h), None);
        h.sent_packets = 100;
        h.lost_packets = 30;
        assert_eq!(d.handle(ms(t0, 5), &lossy, h), None);
    }

    #[test]
    fn fewer_than_twenty_packets_say_nothing_about_loss() {
        let t0 = Instant::now();
        let mut d = decider(t0);
        let mut h = d.last;
        assert_eq!(d.handle(ms(t0, 0), &two_up(), h), None);
        h.sent_packets = 19;
        h.lost_packets = 19;
        assert_eq!(d.handle(ms(t0, 5), &two_up(), h), None);
    }

    #[test]
    fn a_flapping_better_interface_is_not_chased() {
        let t0 = Instant::now();
        let mut d = PathDecider::new(
            PathPolicy::default(),
            REMOTE,
            choice("cell", 2),
            &[iface("wifi", 1, false), iface("cell", 2, true)],
            Health::default(),
            t0,
        );
        let h = d.last;
        // Wifi comes up at 100 ms: return only once it stayed up 2 s.
        assert_eq!(d.handle(ms(t0, 100), &two_up(), h), None);
        assert_eq!(d.handle(ms(t0, 2_000), &two_up(), h), None);
        // It flaps down and up: the clock starts again.
        let down = vec![iface("wifi", 1, false), iface("cell", 2, true)];
        assert_eq!(d.handle(ms(t0, 2_050), &down, h), None);
        assert_eq!(d.handle(ms(t0, 2_060), &two_up(), h), None);
        assert_eq!(d.handle(ms(t0, 4_000), &two_up(), h), None);
        assert_eq!(
            d.handle(ms(t0, 4_060), &two_up(), h),
            Some(Decision::Move {
                to: choice("wifi", 1),
                reason: HandoverReason::Preferred
            })
        );
        // Binding on it fails: not tried again for return_after.
        d.move_failed(&choice("wifi", 1), ms(t0, 4_060));
        assert_eq!(d.handle(ms(t0, 5_000), &two_up(), h), None);
        assert!(d.handle(ms(t0, 6_100), &two_up(), h).is_some());
    }

    #[test]
    fn failover_off_decides_nothing() {
        let t0 = Instant::now();
        let policy = PathPolicy {
            failover: false,
            ..PathPolicy::default()
        };
        let mut d = PathDecider::new(
            policy,
            REMOTE,
            choice("wifi", 1),
            &two_up(),
            Health::default(),
            t0,
        );
        let down = vec![iface("wifi", 1, false), iface("cell", 2, true)];
        assert_eq!(d.handle(ms(t0, 5), &down, Health::default()), None);
    }
}
