//! The invariant oracle: what must hold after any run, whatever the network did.
//!
//! Scenario expectations are bounds one author chose for one timeline; these hold for every
//! timeline, so `chaos` checks them after each random one. They are read from the report
//! alone (its messages, their outcomes and deliveries, and the run's error), so a report
//! written earlier can be checked again.

use reports::{Direction, MessageRecord, Report};

use crate::scenario::{Scenario, WorkloadKind};
use crate::workload::Member;

/// What kind of invariant a run broke (the shrinker keeps a timeline only while the same
/// kind still breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A program panicked.
    Panic,
    /// A delivery carried other bytes than were sent, or a message nobody sent.
    Corrupt,
    /// A message was delivered more than once.
    Duplicate,
    /// A stream message ended the run without a terminal outcome.
    NoOutcome,
    /// A reliable message reported delivered (acked) never reached the peer application.
    Lost,
    /// A message was delivered after its deadline.
    Late,
    /// Ordered messages were delivered out of order.
    Order,
    /// A message was delivered before one of its antecedents.
    Antecedent,
    /// The carrier neither delivered everything nor ended with an error within the bound.
    Hang,
    /// One end of the stack told the other it broke the wire protocol: a bug of the stack
    /// itself, whatever the network did.
    ProtocolViolation,
}

impl Kind {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Panic => "panic",
            Kind::Corrupt => "corrupt",
            Kind::Duplicate => "duplicate",
            Kind::NoOutcome => "no-outcome",
            Kind::Lost => "lost",
            Kind::Late => "late",
            Kind::Order => "order",
            Kind::Antecedent => "antecedent",
            Kind::Hang => "hang",
            Kind::ProtocolViolation => "protocol-violation",
        }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Breach {
    /// Which invariant.
    pub kind: Kind,
    /// What happened, with the message ids and times.
    pub detail: String,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// Errors a workload reports when its carrier neither finished nor ended in time.
const HANG_ERRORS: [&str; 3] = [
    "not every echo arrived within",
    "not every message was settled within",
    // turmoil: the simulation's time limit passed with a program still running (a close
    // that never returns, say).
    "without completing",
];

/// Errors a workload reports when the bytes it got are not what was sent.
const CORRUPT_ERRORS: [&str; 2] = ["with no index", "was delivered but never sent"];

/// Every invariant `report` (a run of `scenario`) breaks; empty when it holds them all.
///
/// - every stream message has exactly one terminal outcome (the workload records one per
///   send handle; a missing one is a breach);
/// - a message is delivered at most once and intact; a reliable one reported `acked` is
///   delivered (unless the server restarted after it was sent: an acknowledgement is the
///   peer's transport's, and a restart loses what its application had not read); on QUIC a message never after its deadline (TLS/TCP cannot recall what TCP
///   has taken, as `MessageProperties::lifetime` says);
/// - ordered messages in order, antecedents before the messages that depend on them;
/// - no panic, no protocol violation between the two ends of the stack;
/// - the run ends: everything delivered, or the carrier's failure surfaced as an error
///   event, before the workload's deadline (a scenario for `chaos` sets that deadline from
///   its timeline, see [`crate::chaos`]).
pub fn check(report: &Report, scenario: &Scenario) -> Vec<Breach> {
    let mut out = Vec::new();
    let mut breach = |kind, detail: String| out.push(Breach { kind, detail });
    if let Some(error) = &report.error {
        if error.starts_with("panicked") {
            breach(Kind::Panic, error.clone());
        } else if HANG_ERRORS.iter().any(|h| error.contains(h)) {
            breach(Kind::Hang, error.clone());
        } else if error.contains("protocol violation by the peer") {
            breach(Kind::ProtocolViolation, error.clone());
        } else if CORRUPT_ERRORS.iter().any(|c| error.contains(c)) {
            breach(Kind::Corrupt, error.clone());
        }
    }
    let w = &scenario.workload;
    let ordered = w.kind != WorkloadKind::Stream || w.ordered;
    // A transport acknowledgement means the peer's stack holds the message, not that its
    // application has read it: a server that restarts (bounce) loses what it held. Only a
    // message sent after the last restart must be delivered once acknowledged.
    let last_bounce = scenario
        .faults
        .iter()
        .filter(|f| matches!(f.fault, sim::Fault::Bounce { .. }))
        .map(|f| f.at_ms as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    for m in &report.messages {
        let name = || format!("{} message {}", m.direction.label(), m.id);
        if !m.intact {
            breach(Kind::Corrupt, format!("{} arrived altered", name()));
        }
        if m.delivered_ms.len() > 1 {
            breach(
                Kind::Duplicate,
                format!(
                    "{} delivered {} times at {:?} ms",
                    name(),
                    m.delivered_ms.len(),
                    m.delivered_ms
                ),
            );
        }
        // Only QUIC can take back a message in flight (it resets the stream); TLS/TCP stops
        // handing expired messages to TCP, but cannot recall bytes TCP has taken, nor skip
        // the frames a continuation writes again (postsock::MessageProperties::lifetime).
        let recallable = report.protocol == "quic";
        if let (Some(deadline), Some(&first), true) =
            (m.deadline_ms, m.delivered_ms.first(), recallable)
        {
            if first > deadline {
                breach(
                    Kind::Late,
                    format!(
                        "{} delivered at {first} ms, after its deadline {deadline} ms",
                        name()
                    ),
                );
            }
        }
        if w.kind == WorkloadKind::Stream && m.direction == Direction::ClientToServer {
            match m.outcome.as_deref() {
                None => breach(
                    Kind::NoOutcome,
                    format!("{} has no terminal outcome", name()),
                ),
                Some("queued") => breach(
                    Kind::NoOutcome,
                    format!("{} ended the run still queued", name()),
                ),
                Some("acked")
                    if m.reliable && m.delivered_ms.is_empty() && m.sent_ms > last_bounce =>
                {
                    breach(
                        Kind::Lost,
                        format!("{} was acknowledged but never delivered", name()),
                    )
                }
                _ => {}
            }
        }
    }
    for direction in [Direction::ClientToServer, Direction::ServerToClient] {
        let mut delivered: Vec<&MessageRecord> = report
            .messages
            .iter()
            .filter(|m| m.direction == direction && !m.delivered_ms.is_empty())
            .collect();
        // Order holds within one client's messages: the members of a client group each
        // have their own carriers.
        let member = |m: &MessageRecord| Member::of(w, m.id).index;
        delivered.sort_by(|a, b| {
            member(a)
                .cmp(&member(b))
                .then(a.delivered_ms[0].total_cmp(&b.delivered_ms[0]))
                .then(a.id.cmp(&b.id))
        });
        if ordered {
            for pair in delivered.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.reliable && b.reliable && a.id > b.id && member(a) == member(b) {
                    breach(
                        Kind::Order,
                        format!(
                            "{} message {} delivered at {} ms before message {} at {} ms",
                            direction.label(),
                            b.id,
                            b.delivered_ms[0],
                            a.id,
                            a.delivered_ms[0]
                        ),
                    );
                    break;
                }
            }
        }
        let when = |id: u64| {
            report
                .messages
                .iter()
                .find(|m| m.direction == direction && m.id == id)
                .and_then(|m| m.delivered_ms.first().copied())
        };
        for m in &delivered {
            for &a in &m.antecedents {
                let ok = when(a).is_some_and(|t| t <= m.delivered_ms[0]);
                if !ok {
                    breach(
                        Kind::Antecedent,
                        format!(
                            "{} message {} delivered at {} ms, its antecedent {a} {}",
                            direction.label(),
                            m.id,
                            m.delivered_ms[0],
                            when(a).map_or("never".to_string(), |t| format!("at {t} ms"))
                        ),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(kind: &str, extra: &str) -> Scenario {
        let text = format!(
            "description = \"t\"\n[[host]]\nname = \"c\"\n[[host]]\nname = \"s\"\n\
             [workload]\nkind = \"{kind}\"\nclient = \"c\"\nserver = \"s\"\n\
             protocol = \"quic\"\nmessages = 3\n{extra}"
        );
        Scenario::parse("t", std::path::Path::new("t.toml"), &text).expect("scenario")
    }

    fn message(id: u64, delivered: &[f64]) -> MessageRecord {
        let mut m = MessageRecord::new(Direction::ClientToServer, id, 8, 0.0);
        m.delivered_ms = delivered.to_vec();
        m.outcome = Some("acked".into());
        m
    }

    fn report(messages: Vec<MessageRecord>, error: Option<&str>) -> Report {
        // A real report (of a short run), its messages and error replaced.
        static BASE: std::sync::OnceLock<Report> = std::sync::OnceLock::new();
        let mut r = BASE
            .get_or_init(|| crate::runner::run(&scenario("echo", ""), 1).report)
            .clone();
        r.messages = messages;
        r.error = error.map(Into::into);
        r
    }

    fn kinds(r: &Report, s: &Scenario) -> Vec<Kind> {
        check(r, s).into_iter().map(|b| b.kind).collect()
    }

    #[test]
    fn a_clean_run_holds_every_invariant() {
        let s = scenario("stream", "");
        let r = report(
            vec![message(0, &[1.0]), message(1, &[2.0]), message(2, &[2.0])],
            None,
        );
        assert!(check(&r, &s).is_empty(), "{:?}", check(&r, &s));
    }

    #[test]
    fn order_holds_within_each_member_of_a_client_group() {
        // messages = 3: member 0 has messages 0-2, member 1 has 3-5.
        let s = scenario("stream", "");
        let apart = report(
            vec![
                message(0, &[4.0]),
                message(1, &[5.0]),
                message(3, &[1.0]),
                message(4, &[2.0]),
            ],
            None,
        );
        assert!(check(&apart, &s).is_empty(), "{:?}", check(&apart, &s));
        let swapped = report(
            vec![message(0, &[4.0]), message(3, &[3.0]), message(4, &[2.0])],
            None,
        );
        assert_eq!(kinds(&swapped, &s), [Kind::Order]);
    }

    #[test]
    fn each_invariant_is_caught() {
        let s = scenario("stream", "");
        let dup = report(vec![message(0, &[1.0, 3.0])], None);
        assert_eq!(kinds(&dup, &s), [Kind::Duplicate]);
        let order = report(vec![message(0, &[5.0]), message(1, &[2.0])], None);
        assert_eq!(kinds(&order, &s), [Kind::Order]);
        let lost = report(vec![message(0, &[])], None);
        assert_eq!(kinds(&lost, &s), [Kind::Lost]);
        let mut pending = message(0, &[]);
        pending.outcome = None;
        assert_eq!(kinds(&report(vec![pending], None), &s), [Kind::NoOutcome]);
        let mut late = message(0, &[10.0]);
        late.deadline_ms = Some(9.5);
        assert_eq!(kinds(&report(vec![late], None), &s), [Kind::Late]);
        let mut dependent = message(1, &[1.0]);
        dependent.antecedents = vec![0];
        let early = report(vec![message(0, &[]), dependent.clone()], None);
        assert!(kinds(&early, &s).contains(&Kind::Antecedent));
        let mut altered = message(0, &[1.0]);
        altered.intact = false;
        assert_eq!(kinds(&report(vec![altered], None), &s), [Kind::Corrupt]);
        let hang = report(vec![], Some("not every message was settled within 60 s"));
        assert_eq!(kinds(&hang, &s), [Kind::Hang]);
        let panic = report(vec![], Some("panicked: boom"));
        assert_eq!(kinds(&panic, &s), [Kind::Panic]);
        let violation = report(
            vec![],
            Some("server carrier: protocol violation by the peer: HELLO is only allowed as the first frame of a transient"),
        );
        assert_eq!(kinds(&violation, &s), [Kind::ProtocolViolation]);
    }

    #[test]
    fn a_surfaced_error_and_unordered_messages_are_not_breaches() {
        let s = scenario("stream", "ordered = false");
        let mut failed = message(2, &[]);
        failed.outcome = Some("failed".into());
        let r = report(
            vec![message(0, &[5.0]), message(1, &[2.0]), failed],
            Some("client carrier: carrier ended after 30000 ms without a working path (dormant timeout)"),
        );
        assert!(check(&r, &s).is_empty(), "{:?}", check(&r, &s));
        // An echo workload records no outcomes: none is missing.
        let echo = scenario("echo", "");
        let mut m = message(0, &[1.0]);
        m.outcome = None;
        assert!(check(&report(vec![m], None), &echo).is_empty());
    }
}
