//! Racing candidates (RFC 9623 §4, RFC 8305): staggered connection attempts over the
//! candidate protocol stacks and addresses; the first to become ready wins, the others are
//! cancelled. Every carrier keeps the [`EstablishmentReport`] of its race.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::race::{Race, RaceEnd};
use crate::establish::association::MaybeTls;
use crate::establish::attempt::{attempt, Transient};
use crate::net::Net;
use crate::path::PathChoice;
use crate::{Configuration, Error, Protocol, Result};

/// The shortest attempt delay allowed (RFC 8305 §5: never below 10 ms).
pub const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(10);

/// How one connection attempt of a race ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Became ready first: the carrier runs on it.
    Won,
    /// Became ready, but another attempt had already won; it was closed.
    LostRace,
    /// Failed; the reason as the protocol stack reported it.
    Failed(String),
    /// Still running when another attempt won (or the race timed out); it was cancelled.
    Cancelled,
}

impl AttemptOutcome {
    /// A short name: "won", "lost race", "failed", "cancelled".
    pub fn name(&self) -> &'static str {
        match self {
            AttemptOutcome::Won => "won",
            AttemptOutcome::LostRace => "lost race",
            AttemptOutcome::Failed(_) => "failed",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// One connection attempt of a race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The protocol stack tried.
    pub protocol: Protocol,
    /// The remote address tried.
    pub remote: SocketAddr,
    /// The local interface it went out of (`None` when the network names none).
    pub interface: Option<String>,
    /// When the attempt started, from the start of the race.
    pub started: Duration,
    /// How long it ran until it ended (won, failed, or was cancelled).
    pub duration: Duration,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to {}{} (started at {} ms, {} after {} ms",
            self.protocol.name(),
            self.remote,
            self.interface
                .as_ref()
                .map(|i| format!(" via {i}"))
                .unwrap_or_default(),
            self.started.as_millis(),
            self.outcome.name(),
            self.duration.as_millis()
        )?;
        match &self.outcome {
            AttemptOutcome::Failed(why) => write!(f, ": {why})"),
            _ => write!(f, ")"),
        }
    }
}

/// What happened while a carrier was being established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EstablishmentReport {
    /// Every attempt that was started, in start order.
    pub attempts: Vec<Attempt>,
    /// From the start of the race until it was decided.
    pub duration: Duration,
}

impl EstablishmentReport {
    /// The winning attempt, if any.
    pub fn winner(&self) -> Option<&Attempt> {
        self.attempts
            .iter()
            .find(|a| a.outcome == AttemptOutcome::Won)
    }
}

/// One candidate of the race: a protocol stack to a remote address over a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) protocol: Protocol,
    pub(crate) remote: SocketAddr,
    /// The interface to go out of; `None`: wherever the network routes it.
    pub(crate) path: Option<PathChoice>,
}

/// The candidates in the order they are tried: for each path (best interface first), each
/// resolved address, each protocol stack in preference order (so a blocked protocol costs
/// one attempt delay, not one per address, and a dead interface one per candidate on it).
/// `paths` empty: the network names no interfaces; one unbound path.
pub(crate) fn candidates(
    protocols: &[Protocol],
    addrs: &[SocketAddr],
    paths: &[PathChoice],
) -> Vec<Candidate> {
    let paths: Vec<Option<&PathChoice>> = if paths.is_empty() {
        vec![None]
    } else {
        paths.iter().map(Some).collect()
    };
    paths
        .iter()
        .flat_map(|path| {
            addrs
                .iter()
                .filter(move |a| path.is_none_or(|p| p.local.is_ipv4() == a.is_ipv4()))
                .flat_map(move |&remote| {
                    protocols.iter().map(move |&protocol| Candidate {
                        protocol,
                        remote,
                        path: path.cloned(),
                    })
                })
        })
        .collect()
}

fn no_candidate(report: &EstablishmentReport) -> Error {
    Error::NoCandidate {
        attempts: report.attempts.iter().map(ToString::to_string).collect(),
        report: Box::new(report.clone()),
    }
}

/// Races `candidates` (see [`Race`] for the rules); the first ready transient wins. Bounded
/// by the connect timeout.
pub(crate) async fn race(
    net: Arc<dyn Net>,
    host: &str,
    config: &Configuration,
    candidates: Vec<Candidate>,
    tls: &MaybeTls,
) -> (Result<(Transient, Option<PathChoice>)>, EstablishmentReport) {
    let delay = config.attempt_delay.max(MIN_ATTEMPT_DELAY);
    let mut race = Race::new(candidates, delay, config.connect_timeout, Instant::now());
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
                                return (Ok((transient, path)), race.report().clone());
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
        return (Err(error), report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
