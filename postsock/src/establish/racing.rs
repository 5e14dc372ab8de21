//! Racing candidates (RFC 9623 §4, RFC 8305): staggered connection attempts over the
//! candidate protocol stacks and addresses; the first to become ready wins, the others are
//! cancelled. Every carrier keeps the [`EstablishmentReport`] of its race.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::race::{Candidate, Race, RaceEnd, MIN_ATTEMPT_DELAY};
use super::report::EstablishmentReport;
use super::resolution::{LateAnswer, Resolution};
use crate::establish::association::MaybeTls;
use crate::establish::attempt::{attempt, Transient};
use crate::net::Net;
use crate::path::PathChoice;
use crate::{Configuration, Error, Result};

fn no_candidate(report: &EstablishmentReport) -> Error {
    Error::NoCandidate {
        attempts: report.attempts.iter().map(ToString::to_string).collect(),
        report: Box::new(report.clone()),
    }
}

/// The name resolution behind a race: what it found so far, and the answer still to come,
/// whose addresses become candidates over `protocols` and `paths` when it comes.
pub(crate) struct Resolving {
    pub(crate) resolution: Resolution,
    pub(crate) late: Option<LateAnswer>,
    pub(crate) protocols: Vec<crate::Protocol>,
    pub(crate) paths: Vec<PathChoice>,
}

/// Races `candidates` (see [`Race`] for the rules); the first ready transient wins. Bounded
/// by the connect timeout. With `resolving`, a late DNS answer adds its candidates, and the
/// report tells the resolution.
pub(crate) async fn race(
    net: Arc<dyn Net>,
    host: &str,
    config: &Configuration,
    candidates: Vec<Candidate>,
    tls: &MaybeTls,
    resolving: Option<Resolving>,
) -> (Result<(Transient, Option<PathChoice>)>, EstablishmentReport) {
    let (result, mut report, resolving) = run(net, host, config, candidates, tls, resolving).await;
    report.resolution = resolving.map(|r| r.resolution.report());
    (result, report)
}

type Raced = (
    Result<(Transient, Option<PathChoice>)>,
    EstablishmentReport,
    Option<Resolving>,
);

async fn run(
    net: Arc<dyn Net>,
    host: &str,
    config: &Configuration,
    candidates: Vec<Candidate>,
    tls: &MaybeTls,
    mut resolving: Option<Resolving>,
) -> Raced {
    let delay = config.attempt_delay.max(MIN_ATTEMPT_DELAY);
    let mut race = Race::new(candidates, delay, config.connect_timeout, Instant::now());
    let mut late = resolving.as_mut().and_then(|r| r.late.take());
    if late.is_some() {
        race = race.more_coming();
    }
    let mut running: JoinSet<(usize, Result<Transient>)> = JoinSet::new();
    // With a single candidate its own error says everything.
    let mut only_error = None;
    loop {
        let end = match race.end() {
            Some(end) => end,
            // Every attempt ended without a word (a panicked task): nothing is left to try.
            None if running.is_empty() && race.next_start().is_none() => RaceEnd::Exhausted,
            None => {
                tokio::select! {
                    biased;
                    (family, answer) = async { late.as_mut().expect("guarded").await }, if late.is_some() => {
                        late = None;
                        let now = Instant::now();
                        if let Some(r) = resolving.as_mut() {
                            r.resolution.answered(family, now, answer);
                            let more = super::race::candidates(&r.protocols, &r.resolution.late(family), &r.paths);
                            race.add(now, more);
                        }
                    }
                    Some(done) = running.join_next(), if !running.is_empty() => {
                        let Ok((i, result)) = done else { continue };
                        match result {
                            Ok(transient) => {
                                // Attempts that also completed are closed; the rest cancelled.
                                let mut also = Vec::new();
                                while let Some(Ok((j, other))) = running.try_join_next() {
                                    also.push((j, other.map(drop).map_err(|e| e.to_string())));
                                }
                                running.abort_all();
                                race.won(Instant::now(), i, also);
                                let path = race.candidates()[i].path.clone();
                                return (Ok((transient, path)), race.report().clone(), resolving);
                            }
                            Err(e) => {
                                race.failed(Instant::now(), i, e.to_string());
                                only_error = Some(e);
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(race.deadline()) => {
                        running.abort_all();
                        race.timed_out(Instant::now());
                    }
                    _ = crate::util::until_opt(race.next_start()) => {
                        let Some(i) = race.start_next(Instant::now()) else { continue };
                        let Candidate { protocol, remote, path } = race.candidates()[i].clone();
                        let (net, host, config) = (net.clone(), host.to_string(), config.clone());
                        let tls = tls.clone();
                        let local = path.map(|p| p.local);
                        running.spawn(async move {
                            let a = attempt(net.as_ref(), protocol, remote, local, &host, &config, None, &tls);
                            (i, a.await)
                        });
                    }
                }
                continue;
            }
        };
        let report = race.report().clone();
        let error = match (end, race.only()) {
            (RaceEnd::TimedOut, Some((protocol, remote))) => Error::Timeout {
                protocol,
                remote,
                timeout_ms: config.connect_timeout.as_millis() as u64,
            },
            (RaceEnd::Exhausted, Some(_)) => match only_error.take() {
                Some(e) => e,
                None => no_candidate(&report),
            },
            _ => no_candidate(&report),
        };
        return (Err(error), report, resolving);
    }
}
