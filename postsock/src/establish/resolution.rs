//! Name resolution for a race, as Happy Eyeballs v2 does it (RFC 8305 §3).
//!
//! The AAAA and the A query go out together (only for the families the host has an address
//! of, as `getaddrinfo`'s `AI_ADDRCONFIG`). A positive AAAA answer starts the race at once. A
//! positive A answer that comes first waits up to the resolution delay (50 ms) for the AAAA
//! answer; then the race starts with what is there, and IPv6 addresses that come later join
//! the race as further candidates. A failed or empty answer waits for nothing.
//!
//! [`Resolution`] is the sans-IO core: it takes each answer with the time it came and says
//! when the race may start and with which addresses; [`resolve`] drives it over a [`Net`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::report::{Query, ResolutionReport};
use crate::net::{BoxFuture, Family, Net};

/// How long a positive A answer waits for the AAAA answer (RFC 8305 §3 recommends 50 ms).
pub const RESOLUTION_DELAY: Duration = Duration::from_millis(50);

/// One query's state.
#[derive(Debug, Clone)]
enum Answer {
    /// Not asked: the host has no address of the family.
    NotAsked,
    Pending,
    /// Answered (maybe empty, maybe an error) at this offset from the start.
    Done(Vec<SocketAddr>),
}

/// The sans-IO core of Happy Eyeballs resolution (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Resolution {
    start: Instant,
    v6: Answer,
    v4: Answer,
    /// Whether the race has started (the addresses were handed out).
    started: bool,
    report: ResolutionReport,
}

impl Resolution {
    /// A resolution asking the queries of `families`, starting at `now`.
    pub(crate) fn new(families: &[Family], now: Instant) -> Self {
        let state = |f| {
            if families.contains(&f) {
                Answer::Pending
            } else {
                Answer::NotAsked
            }
        };
        Resolution {
            start: now,
            v6: state(Family::V6),
            v4: state(Family::V4),
            started: false,
            report: ResolutionReport::default(),
        }
    }

    fn slot(&mut self, family: Family) -> &mut Answer {
        match family {
            Family::V6 => &mut self.v6,
            Family::V4 => &mut self.v4,
        }
    }

    /// The answer to `family`'s query came at `now`.
    pub(crate) fn answered(
        &mut self,
        family: Family,
        now: Instant,
        answer: std::io::Result<Vec<SocketAddr>>,
    ) {
        let (addrs, error) = match answer {
            Ok(a) => (
                a.into_iter()
                    .filter(|a| Family::of(a.ip()) == family)
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        self.report.queries.push(Query {
            family,
            answered: now - self.start,
            addresses: addrs.iter().map(|a: &SocketAddr| a.ip()).collect(),
            error,
            late: self.started,
        });
        *self.slot(family) = Answer::Done(addrs);
    }

    /// Which queries are still unanswered.
    pub(crate) fn pending(&self) -> Vec<Family> {
        [(Family::V6, &self.v6), (Family::V4, &self.v4)]
            .into_iter()
            .filter(|(_, a)| matches!(a, Answer::Pending))
            .map(|(f, _)| f)
            .collect()
    }

    /// When the race may start, once it may: at once on a positive AAAA answer or when no
    /// query is pending; the resolution delay after a positive A answer while AAAA is
    /// pending; `None` while nothing useful has come.
    pub(crate) fn start_at(&self) -> Option<Instant> {
        if self.started {
            return None;
        }
        let positive = |a: &Answer| matches!(a, Answer::Done(v) if !v.is_empty());
        if positive(&self.v6) || self.pending().is_empty() {
            return Some(self.start);
        }
        if positive(&self.v4) {
            let a_at = self
                .report
                .queries
                .iter()
                .find(|q| q.family == Family::V4)
                .map_or(Duration::ZERO, |q| q.answered);
            return Some(self.start + a_at + RESOLUTION_DELAY);
        }
        None
    }

    /// The race starts at `now`: the addresses answered so far, IPv6 first (RFC 6724's
    /// preference; the race interleaves the families).
    pub(crate) fn start(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.started = true;
        self.report.race_started = now - self.start;
        [&self.v6, &self.v4]
            .into_iter()
            .filter_map(|a| match a {
                Answer::Done(v) => Some(v.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The addresses of `family` (answered after the race started).
    pub(crate) fn late(&self, family: Family) -> Vec<SocketAddr> {
        match (family, &self.v6, &self.v4) {
            (Family::V6, Answer::Done(v), _) | (Family::V4, _, Answer::Done(v)) => v.clone(),
            _ => Vec::new(),
        }
    }

    /// What happened: the answers so far, and the queries still unanswered.
    pub(crate) fn report(&self) -> ResolutionReport {
        ResolutionReport {
            unanswered: self.pending(),
            ..self.report.clone()
        }
    }

    /// Every error answered, for a resolution that found nothing.
    fn errors(&self) -> Vec<String> {
        self.report
            .queries
            .iter()
            .filter_map(|q| q.error.clone())
            .collect()
    }
}

/// When a race starts, counted from the start of resolution, if the host asks the queries of
/// `asked` and each answer comes at its time, with an address or without (`(family, time,
/// has an address)`): RFC 8305 §3 as a carrier's resolution applies it. `None` when no
/// answer has an address. The floor of a carrier's time to first message, before any
/// handshake.
pub fn race_start(asked: &[Family], answers: &[(Family, Duration, bool)]) -> Option<Duration> {
    let t0 = Instant::now();
    let mut r = Resolution::new(asked, t0);
    let mut answers: Vec<_> = answers.iter().filter(|a| asked.contains(&a.0)).collect();
    answers.sort_by_key(|a| (a.1, a.0));
    let mut now = Duration::ZERO;
    for &&(family, at, positive) in &answers {
        if let Some(start) = r.start_at() {
            if start - t0 < at {
                return Some((start - t0).max(now));
            }
        }
        now = at;
        let addr = match family {
            Family::V6 => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
            Family::V4 => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let found = if positive { vec![addr] } else { Vec::new() };
        r.answered(family, t0 + at, Ok(found));
    }
    let start = r.start_at()?;
    Some((start - t0).max(now)).filter(|_| answers.iter().any(|a| a.2))
}

/// A query answer still to come when the race started: its family, the answer, and the time
/// it came.
pub(crate) type LateAnswer = BoxFuture<'static, (Family, std::io::Result<Vec<SocketAddr>>)>;

/// Resolved addresses to start a race with.
pub(crate) struct Resolved {
    /// What to race at once.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The answer still to come, if any (its addresses join the race).
    pub(crate) late: Option<LateAnswer>,
    /// The resolution so far (the race adds the late answer).
    pub(crate) resolution: Resolution,
}

fn query(net: Arc<dyn Net>, name: String, port: u16, family: Family) -> LateAnswer {
    Box::pin(async move {
        let answer = net.resolve_family(&name, port, family).await;
        (family, answer)
    })
}

/// The next answer of `queries` (in their order when several are ready); `wait`: until one
/// comes, else `None` when none is ready now.
async fn next_answer(
    queries: &mut [Option<LateAnswer>],
    wait: bool,
) -> Option<(Family, std::io::Result<Vec<SocketAddr>>)> {
    std::future::poll_fn(|cx| {
        for q in queries.iter_mut() {
            if let Some(f) = q {
                if let std::task::Poll::Ready(a) = f.as_mut().poll(cx) {
                    *q = None;
                    return std::task::Poll::Ready(Some(a));
                }
            }
        }
        if wait && queries.iter().any(Option::is_some) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(None)
        }
    })
    .await
}

/// Resolves `name` for a race over `families` (see the [module docs](self)). A literal
/// address resolves to itself at once. Fails when every query failed or came back empty.
pub(crate) async fn resolve(
    net: &Arc<dyn Net>,
    name: &str,
    port: u16,
    families: &[Family],
) -> std::io::Result<Resolved> {
    let now = Instant::now();
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        let mut resolution = Resolution::new(&[], now);
        let addrs = vec![SocketAddr::new(ip, port)];
        resolution.start(now);
        return Ok(Resolved {
            addrs,
            late: None,
            resolution,
        });
    }
    let families: Vec<Family> = if families.is_empty() {
        vec![Family::V6, Family::V4]
    } else {
        families.to_vec()
    };
    let mut resolution = Resolution::new(&families, now);
    let mut queries: Vec<Option<LateAnswer>> = families
        .iter()
        .map(|&f| Some(query(net.clone(), name.to_owned(), port, f)))
        .collect();
    loop {
        if resolution.start_at().is_some_and(|at| at <= Instant::now()) {
            // Answers that came in the same instant count as having come together.
            while let Some((family, answer)) = next_answer(&mut queries, false).await {
                resolution.answered(family, Instant::now(), answer);
            }
            break;
        }
        let start_at = resolution.start_at();
        tokio::select! {
            biased;
            Some((family, answer)) = next_answer(&mut queries, true) => {
                resolution.answered(family, Instant::now(), answer);
            }
            _ = crate::util::until_opt(start_at) => {}
        }
    }
    let addrs = resolution.start(Instant::now());
    if addrs.is_empty() {
        let errors = resolution.errors();
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            if errors.is_empty() {
                "no addresses".to_owned()
            } else {
                errors.join("; ")
            },
        ));
    }
    let late = queries.into_iter().flatten().next();
    Ok(Resolved {
        addrs,
        late,
        resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(n: u16) -> SocketAddr {
        SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n),
            443,
        ))
    }

    fn v4(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 443))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_positive_aaaa_answer_starts_the_race_at_once() {
        let t0 = Instant::now();
        let mut r = Resolution::new(&[Family::V6, Family::V4], t0);
        assert_eq!(r.start_at(), None);
        r.answered(Family::V6, t0 + ms(20), Ok(vec![v6(1)]));
        assert_eq!(r.start_at(), Some(t0));
        assert_eq!(r.start(t0 + ms(20)), [v6(1)]);
        assert_eq!(r.pending(), [Family::V4]);
        assert_eq!(r.report().unanswered, [Family::V4]);
        r.answered(Family::V4, t0 + ms(90), Ok(vec![v4(1)]));
        assert_eq!(r.late(Family::V4), [v4(1)]);
        let q = &r.report().queries;
        assert_eq!((q[0].late, q[1].late), (false, true));
        assert!(r.report().unanswered.is_empty());
        assert_eq!(r.report().race_started, ms(20));
    }

    #[test]
    fn a_positive_a_answer_waits_the_resolution_delay_for_aaaa() {
        let t0 = Instant::now();
        let mut r = Resolution::new(&[Family::V6, Family::V4], t0);
        r.answered(Family::V4, t0 + ms(10), Ok(vec![v4(1)]));
        assert_eq!(r.start_at(), Some(t0 + ms(10) + RESOLUTION_DELAY));
        // AAAA within the delay: both, IPv6 first.
        r.answered(Family::V6, t0 + ms(30), Ok(vec![v6(1)]));
        assert_eq!(r.start_at(), Some(t0));
        assert_eq!(r.start(t0 + ms(30)), [v6(1), v4(1)]);
        assert!(r.pending().is_empty());
    }

    #[test]
    fn a_negative_answer_waits_for_nothing() {
        let t0 = Instant::now();
        let mut r = Resolution::new(&[Family::V6, Family::V4], t0);
        r.answered(Family::V6, t0 + ms(5), Ok(Vec::new()));
        assert_eq!(r.start_at(), None, "nothing to race yet");
        r.answered(Family::V4, t0 + ms(8), Ok(vec![v4(2)]));
        assert_eq!(r.start_at(), Some(t0));
        // An IPv4-only host asks no AAAA at all.
        let mut r = Resolution::new(&[Family::V4], t0);
        r.answered(Family::V4, t0 + ms(8), Ok(vec![v4(2)]));
        assert_eq!(r.start_at(), Some(t0));
        assert_eq!(r.start(t0 + ms(8)), [v4(2)]);
        // Both failed: an empty start, and the errors.
        let mut r = Resolution::new(&[Family::V6, Family::V4], t0);
        r.answered(Family::V6, t0, Err(std::io::Error::other("servfail")));
        r.answered(Family::V4, t0, Ok(Vec::new()));
        assert_eq!(r.start_at(), Some(t0));
        assert!(r.start(t0).is_empty());
        assert_eq!(r.errors(), ["servfail"]);
    }

    #[test]
    fn race_start_follows_the_rules() {
        use Family::{V4, V6};
        let both = [V6, V4];
        // AAAA first: at once.
        assert_eq!(
            race_start(&both, &[(V6, ms(10), true), (V4, ms(10), true)]),
            Some(ms(10))
        );
        // A first: the resolution delay, cut short by the AAAA answer.
        assert_eq!(
            race_start(&both, &[(V6, ms(200), true), (V4, ms(10), true)]),
            Some(ms(60))
        );
        assert_eq!(
            race_start(&both, &[(V6, ms(30), true), (V4, ms(10), true)]),
            Some(ms(30))
        );
        // A negative AAAA answer ends the wait.
        assert_eq!(
            race_start(&both, &[(V6, ms(30), false), (V4, ms(10), true)]),
            Some(ms(30))
        );
        assert_eq!(
            race_start(&both, &[(V6, ms(5), false), (V4, ms(10), true)]),
            Some(ms(10))
        );
        // Only what is asked counts; nothing positive: no race.
        assert_eq!(
            race_start(&[V4], &[(V6, ms(1), true), (V4, ms(15), true)]),
            Some(ms(15))
        );
        assert_eq!(
            race_start(&both, &[(V6, ms(1), false), (V4, ms(2), false)]),
            None
        );
    }

    #[test]
    fn an_answer_of_the_wrong_family_is_ignored() {
        let t0 = Instant::now();
        let mut r = Resolution::new(&[Family::V6, Family::V4], t0);
        r.answered(Family::V6, t0, Ok(vec![v4(1)]));
        assert_eq!(r.start_at(), None);
    }
}
