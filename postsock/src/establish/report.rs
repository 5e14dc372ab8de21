//! What happened while a carrier was being established: every attempt of the race, how it
//! ended, and how long the race took. Plain data, kept by every carrier.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Protocol;

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
    /// What the configuration's policies chose for this carrier, highest priority first
    /// (after what the stack had learned, when a policy set is in use); empty without one.
    pub policy: Vec<crate::PolicyChoice>,
    /// How the remote's name was resolved before (and during) the race; `None` when the
    /// carrier did not resolve a name (a literal address, or a 0-RTT carrier).
    pub resolution: Option<ResolutionReport>,
}

/// The name resolution of a race (Happy Eyeballs, RFC 8305 §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolutionReport {
    /// Each query's answer, in the order they came.
    pub queries: Vec<Query>,
    /// When the race started, from the start of resolution (the attempts' `started` times
    /// count from here).
    pub race_started: Duration,
    /// The queries not answered by the time the race was decided.
    pub unanswered: Vec<crate::net::Family>,
}

/// The answer to one query (AAAA or A).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The address family asked for.
    pub family: crate::net::Family,
    /// When the answer came, from the start of resolution.
    pub answered: Duration,
    /// The addresses in it.
    pub addresses: Vec<std::net::IpAddr>,
    /// The resolver's error, if the query failed.
    pub error: Option<String>,
    /// Whether it came after the race had started (its addresses joined the race).
    pub late: bool,
}

impl EstablishmentReport {
    /// The winning attempt, if any.
    pub fn winner(&self) -> Option<&Attempt> {
        self.attempts
            .iter()
            .find(|a| a.outcome == AttemptOutcome::Won)
    }
}

/// How a punched carrier came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchReport {
    /// Direct, or through which relayed address.
    pub path: PathKind,
    /// This peer's server-reflexive address.
    pub reflexive: SocketAddr,
    /// The peer's address the carrier runs to.
    pub remote: SocketAddr,
    /// Whether this peer was the QUIC client.
    pub controlling: bool,
    /// From the start until the rendezvous returned the peer's candidates (this includes
    /// learning the reflexive address by STUN).
    pub rendezvous: Duration,
    /// From the start until the first successful check.
    pub checks_done: Duration,
    /// From the start until the carrier was ready.
    pub ready: Duration,
}

/// Direct or relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathKind {
    /// Straight between the peers' NAT mappings.
    Direct,
    /// Through a TURN relay: the relayed address in use (this peer's or the other's).
    Relayed {
        /// The relayed transport address.
        relay: SocketAddr,
    },
}
