//! The one error type of the postsock library.
//!
//! Every variant says what failed and carries the context a user needs to act on it
//! (which remote, which protocol, which limit).

use std::io;
use std::net::SocketAddr;

use crate::Protocol;

/// Errors returned by postsock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote's name could not be resolved to any address.
    #[error("cannot resolve `{name}`: {source}")]
    Resolve {
        /// The name that was looked up.
        name: String,
        /// Why the lookup failed.
        #[source]
        source: io::Error,
    },
    /// A transient could not be established to any candidate.
    #[error("cannot establish {protocol} to {remote}: {reason}")]
    Establish {
        /// The protocol stack that was attempted.
        protocol: Protocol,
        /// The remote address of the attempt.
        remote: SocketAddr,
        /// What went wrong, as reported by the protocol stack.
        reason: String,
    },
    /// Every candidate (protocol × address) was tried and none could be established.
    #[error("no candidate could be established: {}", .attempts.join("; "))]
    NoCandidate {
        /// One line per attempt: what was tried and why it failed.
        attempts: Vec<String>,
        /// The race in full.
        report: Box<crate::EstablishmentReport>,
    },
    /// The send buffer is full (`try_send`); `send` would wait.
    #[error("send buffer full: {buffered} of {limit} bytes in use")]
    WouldBlock {
        /// Bytes in use.
        buffered: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Establishment did not finish within the configured connect timeout.
    #[error("{protocol} to {remote} did not complete within {timeout_ms} ms")]
    Timeout {
        /// The protocol stack that was attempted.
        protocol: Protocol,
        /// The remote address of the attempt.
        remote: SocketAddr,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The configuration cannot be used (for example no protocol, or no identity on a listener).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A message is larger than the configured maximum message size.
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// The size of the offending message.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer violated the wire mapping (see docs/WIRE.md).
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// The carrier's transient failed or was closed.
    #[error("connection error: {0}")]
    Connection(String),
    /// The carrier stayed dormant (no working path to its peer) for the configured dormant
    /// timeout and ended; what was still queued failed.
    #[error("carrier ended after {after_ms} ms without a working path (dormant timeout)")]
    DormantTimeout {
        /// The dormant timeout, in ms.
        after_ms: u64,
    },
    /// The carrier was closed locally; no more messages can be sent.
    #[error("carrier is closed")]
    Closed,
    /// An I/O error from the network layer.
    #[error("{context}: {source}")]
    Io {
        /// What postsock was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// TLS configuration or certificate error.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for postsock.
pub type Result<T, E = Error> = std::result::Result<T, E>;
