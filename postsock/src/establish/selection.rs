//! Protocol selection from transport properties (RFC 9622 §6.2, Post Sockets §3).
//!
//! The application states what it needs; [`select`] filters the protocol stacks the
//! configuration allows by the `Require` and `Prohibit` preferences and orders the rest by how
//! many `Prefer`s they meet and `Avoid`s they hit (ties keep the configuration's order).

use std::fmt;

use crate::ConfigError;
use crate::{Protocol, Result};

/// How much a property matters (RFC 9622 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    /// Only stacks that have it.
    Require,
    /// Stacks that have it first.
    Prefer,
    /// Either way.
    #[default]
    NoPreference,
    /// Stacks that lack it first.
    Avoid,
    /// Only stacks that lack it.
    Prohibit,
}

/// What the application needs from the transport. The defaults are RFC 9622's, except
/// `security`, which is required unless the application explicitly lowers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportProperties {
    /// Reliable delivery of messages (RFC 9622 `reliability`; default Require).
    pub reliability: Preference,
    /// Messages arrive in the order sent (`preserveOrder`; default Require).
    pub preserve_order: Preference,
    /// Message boundaries survive the transport (`preserveMsgBoundaries`; default
    /// NoPreference; every stack here preserves them, by framing where needed).
    pub preserve_msg_boundaries: Preference,
    /// Single messages may be sent unreliably (`perMsgReliability`; default NoPreference).
    pub per_msg_reliability: Preference,
    /// Data in the first flight (`zeroRttMsg`; default NoPreference). QUIC offers it: a
    /// carrier initiated with `Carrier::initiate_with` sends an idempotent first message in
    /// 0-RTT when its association holds a session ticket.
    pub zero_rtt_msg: Preference,
    /// Many messages in flight without head-of-line blocking between unordered ones
    /// (`multistreaming`; default Prefer).
    pub multistreaming: Preference,
    /// Authenticated and encrypted transport (default Require). Anything but Require lets
    /// plain TCP in; only Prohibit forbids TLS.
    pub security: Preference,
}

impl Default for TransportProperties {
    fn default() -> Self {
        TransportProperties {
            reliability: Preference::Require,
            preserve_order: Preference::Require,
            preserve_msg_boundaries: Preference::NoPreference,
            per_msg_reliability: Preference::NoPreference,
            zero_rtt_msg: Preference::NoPreference,
            multistreaming: Preference::Prefer,
            security: Preference::Require,
        }
    }
}

/// What a protocol stack offers.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
    reliability: bool,
    preserve_order: bool,
    preserve_msg_boundaries: bool,
    per_msg_reliability: bool,
    zero_rtt_msg: bool,
    multistreaming: bool,
    security: bool,
}

fn capabilities(p: Protocol) -> Capabilities {
    match p {
        Protocol::Quic => Capabilities {
            reliability: true,
            preserve_order: true,
            preserve_msg_boundaries: true,
            per_msg_reliability: true,
            zero_rtt_msg: true,
            multistreaming: true,
            security: true,
        },
        Protocol::TlsTcp | Protocol::Tcp => Capabilities {
            reliability: true,
            preserve_order: true,
            preserve_msg_boundaries: true,
            per_msg_reliability: false,
            zero_rtt_msg: false,
            multistreaming: false,
            security: p == Protocol::TlsTcp,
        },
    }
}

impl TransportProperties {
    fn checks(&self, c: Capabilities) -> [(&'static str, Preference, bool); 7] {
        [
            ("reliability", self.reliability, c.reliability),
            ("preserve_order", self.preserve_order, c.preserve_order),
            (
                "preserve_msg_boundaries",
                self.preserve_msg_boundaries,
                c.preserve_msg_boundaries,
            ),
            (
                "per_msg_reliability",
                self.per_msg_reliability,
                c.per_msg_reliability,
            ),
            ("zero_rtt_msg", self.zero_rtt_msg, c.zero_rtt_msg),
            ("multistreaming", self.multistreaming, c.multistreaming),
            ("security", self.security, c.security),
        ]
    }
}

/// Why a protocol was not selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The protocol.
    pub protocol: Protocol,
    /// The property it fails.
    pub property: &'static str,
    /// Whether the property was required (the stack lacks it) or prohibited (it has it).
    pub required: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, what) = if self.required {
            ("requires", "lacks it")
        } else {
            ("prohibits", "has it")
        };
        write!(
            f,
            "{} ({} {}, {})",
            self.protocol.name(),
            verb,
            self.property,
            what
        )
    }
}

/// Orders the `allowed` protocols by `props`; an error names why each one was rejected.
pub fn select(props: &TransportProperties, allowed: &[Protocol]) -> Result<Vec<Protocol>> {
    let mut ranked = Vec::new();
    let mut rejected = Vec::new();
    for (index, &p) in allowed.iter().enumerate() {
        let mut prefers = 0;
        let mut avoids = 0;
        let mut reject = None;
        for (property, preference, has) in props.checks(capabilities(p)) {
            match (preference, has) {
                (Preference::Require, false) => {
                    reject.get_or_insert(Rejection {
                        protocol: p,
                        property,
                        required: true,
                    });
                }
                (Preference::Prohibit, true) => {
                    reject.get_or_insert(Rejection {
                        protocol: p,
                        property,
                        required: false,
                    });
                }
                (Preference::Prefer, true) => prefers += 1,
                (Preference::Avoid, true) => avoids += 1,
                _ => {}
            }
        }
        match reject {
            Some(r) => rejected.push(r.to_string()),
            None => ranked.push((std::cmp::Reverse(prefers), avoids, index, p)),
        }
    }
    if ranked.is_empty() {
        return Err(ConfigError::NoStackMeets { rejected }.into());
    }
    ranked.sort();
    Ok(ranked.into_iter().map(|(_, _, _, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::TlsTcp, Protocol::Quic];

    #[test]
    fn defaults_pick_secure_stacks_quic_first() {
        let got = select(&TransportProperties::default(), &ALL).expect("some stack");
        assert_eq!(got, vec![Protocol::Quic, Protocol::TlsTcp]);
    }

    #[test]
    fn per_message_reliability_requires_quic() {
        let props = TransportProperties {
            per_msg_reliability: Preference::Require,
            ..Default::default()
        };
        assert_eq!(select(&props, &ALL).expect("quic"), vec![Protocol::Quic]);
        let err = select(&props, &[Protocol::TlsTcp]).expect_err("no stack");
        assert!(
            err.to_string()
                .contains("tls-tcp (requires per_msg_reliability"),
            "{err}"
        );
    }

    #[test]
    fn plain_tcp_only_when_security_is_lowered() {
        let props = TransportProperties {
            security: Preference::Avoid,
            multistreaming: Preference::NoPreference,
            ..Default::default()
        };
        assert_eq!(
            select(&props, &ALL).expect("stacks"),
            vec![Protocol::Tcp, Protocol::TlsTcp, Protocol::Quic]
        );
        let props = TransportProperties {
            security: Preference::Prohibit,
            ..Default::default()
        };
        assert_eq!(select(&props, &ALL).expect("tcp"), vec![Protocol::Tcp]);
    }

    #[test]
    fn avoiding_multistreaming_prefers_tls_tcp() {
        let props = TransportProperties {
            multistreaming: Preference::Avoid,
            ..Default::default()
        };
        assert_eq!(
            select(&props, &ALL).expect("stacks"),
            vec![Protocol::TlsTcp, Protocol::Quic]
        );
    }

    #[test]
    fn requiring_zero_rtt_selects_quic_only() {
        let props = TransportProperties {
            zero_rtt_msg: Preference::Require,
            ..Default::default()
        };
        assert_eq!(select(&props, &ALL).expect("quic"), vec![Protocol::Quic]);
        let err = select(&props, &[Protocol::TlsTcp]).expect_err("TLS/TCP has no 0-RTT here");
        assert!(err.to_string().contains("zero_rtt_msg"), "{err}");
    }
}
