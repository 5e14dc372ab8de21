//! The race: the sans-IO core of establishment (RFC 9623 §4.2, RFC 8305 §5).
//!
//! [`Race`] decides when each candidate starts and what each attempt's outcome was, and keeps
//! the [`EstablishmentReport`]; it does no I/O and reads no clock — every input carries `now`.
//! [`racing::race`](super::racing::race) drives it: it starts an attempt whenever
//! [`Race::next_start`] passes, feeds back each attempt's end, and stops at the
//! [`Race::deadline`]. The rules: the first candidate starts at once, the next one attempt
//! delay later — or at once when an attempt fails; the first attempt to become ready wins,
//! the ones that also became ready lost the race, the rest are cancelled.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::report::{Attempt, AttemptOutcome, EstablishmentReport};
use crate::path::PathChoice;
use crate::Protocol;

/// The shortest attempt delay allowed (RFC 8305 §5: never below 10 ms).
pub const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(10);

/// One candidate of the race: a protocol stack to a remote address over a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) protocol: Protocol,
    pub(crate) remote: SocketAddr,
    /// The interface to go out of; `None`: wherever the network routes it.
    pub(crate) path: Option<PathChoice>,
}

/// The resolved addresses in the order they are tried (RFC 8305 §4): address families
/// interleaved, starting with the family of the resolver's first address (its RFC 6724
/// preference, usually IPv6), each family in the resolver's order. A broken family then
/// costs one attempt delay before the other is tried, not one per address.
pub(crate) fn interleave_families(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (std::collections::VecDeque<_>, std::collections::VecDeque<_>) =
        addrs
            .iter()
            .copied()
            .partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(addrs.len());
    loop {
        match (same.pop_front(), other.pop_front()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// The candidates in the order they are tried: for each interface (best first), each
/// resolved address (families interleaved: [`interleave_families`]) that the interface has a
/// local address of the same family for, each protocol stack in preference order (so a
/// blocked protocol costs one attempt delay, not one per address, and a dead interface one per
/// candidate on it). `paths` holds a choice per interface and family.
/// `paths` empty: the network names no interfaces; one unbound path.
pub(crate) fn candidates(
    protocols: &[Protocol],
    addrs: &[SocketAddr],
    paths: &[PathChoice],
) -> Vec<Candidate> {
    let addrs = interleave_families(addrs);
    let mut interfaces: Vec<Option<&str>> = Vec::new();
    for p in paths {
        if !interfaces.contains(&Some(p.interface.as_str())) {
            interfaces.push(Some(&p.interface));
        }
    }
    if paths.is_empty() {
        interfaces.push(None);
    }
    let mut out = Vec::new();
    for interface in interfaces {
        for &remote in &addrs {
            let path = match interface {
                None => None,
                Some(name) => match paths
                    .iter()
                    .find(|p| p.interface == name && p.local.is_ipv4() == remote.is_ipv4())
                {
                    Some(p) => Some(p.clone()),
                    // The interface has no address of this family.
                    None => continue,
                },
            };
            out.extend(protocols.iter().map(|&protocol| Candidate {
                protocol,
                remote,
                path: path.clone(),
            }));
        }
    }
    out
}

/// How a race ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaceEnd {
    /// Candidate `0` won.
    Won(usize),
    /// Every candidate was tried and failed.
    Exhausted,
    /// The connect timeout passed first.
    TimedOut,
}

/// The state of one race (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Race {
    /// (protocol, remote, interface) of each candidate, in the order they are tried.
    candidates: Vec<Candidate>,
    delay: Duration,
    start: Instant,
    timeout: Duration,
    /// Whether the report names interfaces (only when candidates use more than one).
    name_paths: bool,
    /// The next candidate to start, and when.
    next: usize,
    next_at: Instant,
    /// Attempts started and not yet ended, by candidate index.
    running: usize,
    report: EstablishmentReport,
    end: Option<RaceEnd>,
    /// More candidates may come (a late DNS answer): running out of them is not the end.
    awaiting: bool,
}

impl Race {
    /// A race over `candidates` starting at `now`, one attempt `delay` apart, bounded by
    /// `timeout`.
    pub(crate) fn new(
        candidates: Vec<Candidate>,
        delay: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let name_paths = candidates
            .iter()
            .filter_map(|c| c.path.as_ref().map(|p| &p.interface))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
        let end = candidates.is_empty().then_some(RaceEnd::Exhausted);
        Race {
            candidates,
            delay,
            start: now,
            timeout,
            name_paths,
            next: 0,
            next_at: now,
            running: 0,
            report: EstablishmentReport::default(),
            end,
            awaiting: false,
        }
    }

    /// More candidates may still come ([`add`](Self::add)): until they do, trying every
    /// candidate without success does not end the race (RFC 8305 §3: a late AAAA answer joins
    /// the race).
    pub(crate) fn more_coming(mut self) -> Self {
        self.awaiting = true;
        if self.end == Some(RaceEnd::Exhausted) {
            self.end = None;
        }
        self
    }

    /// The awaited candidates came at `now` (maybe none): they are tried after the ones
    /// before them, one attempt delay apart. Returns the end of the race when nothing is left
    /// to try.
    pub(crate) fn add(&mut self, now: Instant, more: Vec<Candidate>) -> Option<RaceEnd> {
        self.awaiting = false;
        if self.end.is_some() {
            return self.end;
        }
        if self.next >= self.candidates.len() && self.running == 0 {
            self.next_at = now;
        }
        self.candidates.extend(more);
        (self.running == 0 && self.next >= self.candidates.len())
            .then(|| self.close(now, RaceEnd::Exhausted))
    }

    /// When the next candidate should start; `None` when all have started or the race ended.
    pub(crate) fn next_start(&self) -> Option<Instant> {
        (self.end.is_none() && self.next < self.candidates.len()).then_some(self.next_at)
    }

    /// When the race times out.
    pub(crate) fn deadline(&self) -> Instant {
        self.start + self.timeout
    }

    /// How the race ended, once it has.
    pub(crate) fn end(&self) -> Option<RaceEnd> {
        self.end
    }

    /// The candidates, in the order they are tried.
    pub(crate) fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The report so far (complete once the race ended).
    pub(crate) fn report(&self) -> &EstablishmentReport {
        &self.report
    }

    /// Starts the next candidate at `now`; returns its index. Call when
    /// [`next_start`](Self::next_start) has passed.
    pub(crate) fn start_next(&mut self, now: Instant) -> Option<usize> {
        self.next_start()?;
        let i = self.next;
        let c = &self.candidates[i];
        self.report.attempts.push(Attempt {
            protocol: c.protocol,
            remote: c.remote,
            interface: c
                .path
                .as_ref()
                .filter(|_| self.name_paths)
                .map(|p| p.interface.clone()),
            started: now - self.start,
            duration: Duration::ZERO,
            // Until it ends one way or another.
            outcome: AttemptOutcome::Cancelled,
        });
        self.next += 1;
        self.running += 1;
        self.next_at = now + self.delay;
        Some(i)
    }

    fn finish(&mut self, now: Instant, i: usize, outcome: AttemptOutcome) {
        let elapsed = now - self.start;
        if let Some(a) = self.report.attempts.get_mut(i) {
            a.duration = elapsed.saturating_sub(a.started);
            a.outcome = outcome;
        }
    }

    fn close(&mut self, now: Instant, end: RaceEnd) -> RaceEnd {
        self.report.duration = now - self.start;
        self.end = Some(end);
        end
    }

    /// Attempt `i` failed at `now`: the next candidate starts at once (RFC 8305 §5). Returns
    /// the end of the race when nothing is left to try.
    pub(crate) fn failed(&mut self, now: Instant, i: usize, why: String) -> Option<RaceEnd> {
        self.finish(now, i, AttemptOutcome::Failed(why));
        self.running = self.running.saturating_sub(1);
        self.next_at = now;
        (self.running == 0 && self.next >= self.candidates.len() && !self.awaiting)
            .then(|| self.close(now, RaceEnd::Exhausted))
    }

    /// Attempt `i` became ready at `now` and wins; `also_done` are the attempts that had
    /// also finished by then (`Ok` ready, `Err` failed). The rest are cancelled.
    pub(crate) fn won(
        &mut self,
        now: Instant,
        i: usize,
        also_done: impl IntoIterator<Item = (usize, Result<(), String>)>,
    ) -> RaceEnd {
        self.finish(now, i, AttemptOutcome::Won);
        for (j, result) in also_done {
            let outcome = match result {
                Ok(()) => AttemptOutcome::LostRace,
                Err(why) => AttemptOutcome::Failed(why),
            };
            self.finish(now, j, outcome);
        }
        let elapsed = now - self.start;
        for a in self.report.attempts.iter_mut() {
            if a.outcome == AttemptOutcome::Cancelled && a.duration.is_zero() {
                a.duration = elapsed.saturating_sub(a.started);
            }
        }
        self.running = 0;
        self.close(now, RaceEnd::Won(i))
    }

    /// The connect timeout passed at `now`: every running attempt failed with it.
    pub(crate) fn timed_out(&mut self, now: Instant) -> RaceEnd {
        let elapsed = now - self.start;
        let timeout_ms = self.timeout.as_millis();
        for a in self.report.attempts.iter_mut() {
            if a.outcome == AttemptOutcome::Cancelled {
                a.duration = elapsed.saturating_sub(a.started);
                a.outcome = AttemptOutcome::Failed(format!(
                    "no answer within the {timeout_ms} ms connect timeout"
                ));
            }
        }
        self.running = 0;
        self.close(now, RaceEnd::TimedOut)
    }

    /// The single candidate, when the race had exactly one (its own error says everything).
    pub(crate) fn only(&self) -> Option<(crate::Protocol, SocketAddr)> {
        match &self.candidates[..] {
            [c] => Some((c.protocol, c.remote)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn cand(protocol: Protocol, last: u8, interface: Option<&str>) -> Candidate {
        Candidate {
            protocol,
            remote: ([192, 0, 2, last], 443).into(),
            path: interface.map(|i| PathChoice {
                interface: i.into(),
                local: [10, 0, 0, 1].into(),
            }),
        }
    }

    #[test]
    fn address_families_are_interleaved_from_the_resolvers_first() {
        let v6 = |n: u16| {
            SocketAddr::from((
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n),
                443,
            ))
        };
        let v4 = |n: u8| SocketAddr::from(([192, 0, 2, n], 443));
        assert_eq!(
            interleave_families(&[v6(1), v6(2), v6(3), v4(1), v4(2)]),
            [v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(
            interleave_families(&[v4(1), v4(2), v6(1)]),
            [v4(1), v6(1), v4(2)]
        );
        assert_eq!(interleave_families(&[v4(2), v4(1)]), [v4(2), v4(1)]);
        assert!(interleave_families(&[]).is_empty());
        // With two protocols: a dead IPv6 costs QUIC and TLS/TCP on it, then IPv4 comes.
        let c = candidates(
            &[Protocol::Quic, Protocol::TlsTcp],
            &[v6(1), v6(2), v4(1)],
            &[],
        );
        let order: Vec<_> = c.iter().map(|c| (c.remote, c.protocol)).collect();
        assert_eq!(
            order,
            [
                (v6(1), Protocol::Quic),
                (v6(1), Protocol::TlsTcp),
                (v4(1), Protocol::Quic),
                (v4(1), Protocol::TlsTcp),
                (v6(2), Protocol::Quic),
                (v6(2), Protocol::TlsTcp),
            ]
        );
    }

    fn race(n: usize, t0: Instant) -> Race {
        let c = (0..n)
            .map(|i| {
                cand(
                    if i % 2 == 0 {
                        Protocol::Quic
                    } else {
                        Protocol::TlsTcp
                    },
                    i as u8,
                    None,
                )
            })
            .collect();
        Race::new(c, Duration::from_millis(250), Duration::from_secs(10), t0)
    }

    fn outcomes(r: &Race) -> Vec<(&'static str, u128, u128)> {
        r.report()
            .attempts
            .iter()
            .map(|a| {
                (
                    a.outcome.name(),
                    a.started.as_millis(),
                    a.duration.as_millis(),
                )
            })
            .collect()
    }

    #[test]
    fn attempts_are_staggered_and_the_first_ready_wins() {
        let t0 = Instant::now();
        let mut r = race(3, t0);
        assert_eq!(r.next_start(), Some(t0));
        assert_eq!(r.start_next(t0), Some(0));
        assert_eq!(r.next_start(), Some(ms(t0, 250)));
        assert_eq!(r.start_next(ms(t0, 250)), Some(1));
        // The second attempt wins at 300 ms; the first is still running: cancelled.
        assert_eq!(r.won(ms(t0, 300), 1, []), RaceEnd::Won(1));
        assert_eq!(outcomes(&r), vec![("cancelled", 0, 300), ("won", 250, 50)]);
        assert_eq!(r.report().duration, Duration::from_millis(300));
        assert_eq!(r.next_start(), None, "nothing starts after the race ended");
        assert_eq!(
            r.report().winner().map(|a| a.protocol),
            Some(Protocol::TlsTcp)
        );
    }

    #[test]
    fn a_failure_starts_the_next_candidate_at_once() {
        let t0 = Instant::now();
        let mut r = race(2, t0);
        r.start_next(t0);
        assert_eq!(r.failed(ms(t0, 30), 0, "refused".into()), None);
        assert_eq!(r.next_start(), Some(ms(t0, 30)));
        r.start_next(ms(t0, 30));
        assert_eq!(
            r.failed(ms(t0, 70), 1, "refused".into()),
            Some(RaceEnd::Exhausted)
        );
        assert_eq!(outcomes(&r), vec![("failed", 0, 30), ("failed", 30, 40)]);
    }

    #[test]
    fn attempts_ready_together_lost_the_race() {
        let t0 = Instant::now();
        let mut r = race(3, t0);
        for t in [0, 250, 500] {
            r.start_next(ms(t0, t));
        }
        r.won(ms(t0, 600), 2, [(0, Ok(())), (1, Err("reset".into()))]);
        let names: Vec<_> = outcomes(&r).into_iter().map(|o| o.0).collect();
        assert_eq!(names, ["lost race", "failed", "won"]);
    }

    #[test]
    fn the_timeout_fails_what_still_runs() {
        let t0 = Instant::now();
        let mut r = race(1, t0);
        r.start_next(t0);
        assert_eq!(r.deadline(), ms(t0, 10_000));
        assert_eq!(r.timed_out(ms(t0, 10_000)), RaceEnd::TimedOut);
        match &r.report().attempts[0].outcome {
            AttemptOutcome::Failed(why) => assert!(why.contains("10000 ms connect timeout")),
            other => panic!("{other:?}"),
        }
        assert!(r.only().is_some());
    }

    #[test]
    fn interfaces_are_named_only_when_candidates_use_several() {
        let t0 = Instant::now();
        let one = vec![
            cand(Protocol::Quic, 1, Some("wifi")),
            cand(Protocol::TlsTcp, 1, Some("wifi")),
        ];
        let mut r = Race::new(one, Duration::from_millis(250), Duration::from_secs(1), t0);
        r.start_next(t0);
        assert_eq!(r.report().attempts[0].interface, None);
        let two = vec![
            cand(Protocol::Quic, 1, Some("wifi")),
            cand(Protocol::Quic, 1, Some("cell")),
        ];
        let mut r = Race::new(two, Duration::from_millis(250), Duration::from_secs(1), t0);
        r.start_next(t0);
        assert_eq!(r.report().attempts[0].interface.as_deref(), Some("wifi"));
    }

    #[test]
    fn late_candidates_join_and_keep_the_race_going() {
        let t0 = Instant::now();
        let mut r = race(1, t0).more_coming();
        assert_eq!(r.start_next(t0), Some(0));
        // The only candidate failed, but a late answer is awaited: not the end.
        assert_eq!(r.failed(ms(t0, 30), 0, "refused".into()), None);
        assert_eq!(r.next_start(), None);
        // It comes: its candidate starts at once.
        assert_eq!(r.add(ms(t0, 40), vec![cand(Protocol::Quic, 9, None)]), None);
        assert_eq!(r.next_start(), Some(ms(t0, 40)));
        assert_eq!(r.start_next(ms(t0, 40)), Some(1));
        assert_eq!(
            r.failed(ms(t0, 50), 1, "refused".into()),
            Some(RaceEnd::Exhausted)
        );
        // A late answer with nothing in it ends a race that has nothing left.
        let mut r = race(1, t0).more_coming();
        r.start_next(t0);
        r.failed(ms(t0, 5), 0, "refused".into());
        assert_eq!(r.add(ms(t0, 9), Vec::new()), Some(RaceEnd::Exhausted));
        // Nothing to start with, everything from the late answer.
        let mut r = race(0, t0).more_coming();
        assert_eq!(r.end(), None);
        r.add(ms(t0, 60), vec![cand(Protocol::Quic, 1, None)]);
        assert_eq!(r.start_next(ms(t0, 60)), Some(0));
        assert_eq!(r.report().attempts[0].started, Duration::from_millis(60));
    }

    #[test]
    fn dual_stack_interfaces_pair_each_address_with_their_own_family() {
        let v6 = |n: u16| {
            SocketAddr::from((
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n),
                443,
            ))
        };
        let v4 = SocketAddr::from(([192, 0, 2, 1], 443));
        let path = |i: &str, local: std::net::IpAddr| PathChoice {
            interface: i.into(),
            local,
        };
        let wifi6 = path(
            "wifi",
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into(),
        );
        let wifi4 = path("wifi", [10, 0, 0, 1].into());
        let cell4 = path("cell", [10, 0, 1, 1].into());
        let c = candidates(
            &[Protocol::Quic],
            &[v6(1), v4],
            &[wifi6.clone(), wifi4.clone(), cell4.clone()],
        );
        let got: Vec<_> = c
            .iter()
            .map(|c| (c.remote, c.path.clone().expect("a path")))
            .collect();
        // Families interleave on each interface; the IPv4-only one gets the IPv4 address.
        assert_eq!(got, [(v6(1), wifi6), (v4, wifi4), (v4, cell4)]);
    }

    #[test]
    fn no_candidates_is_exhausted_at_once() {
        let r = race(0, Instant::now());
        assert_eq!(r.end(), Some(RaceEnd::Exhausted));
        assert_eq!(r.next_start(), None);
    }

    #[test]
    fn candidates_interleave_protocols_per_address() {
        let a: SocketAddr = ([10, 0, 0, 1], 1).into();
        let b: SocketAddr = ([10, 0, 0, 2], 1).into();
        let c: Vec<_> = candidates(&[Protocol::Quic, Protocol::TlsTcp], &[a, b], &[])
            .into_iter()
            .map(|c| (c.protocol, c.remote))
            .collect();
        assert_eq!(
            c,
            vec![
                (Protocol::Quic, a),
                (Protocol::TlsTcp, a),
                (Protocol::Quic, b),
                (Protocol::TlsTcp, b)
            ]
        );
    }
}
