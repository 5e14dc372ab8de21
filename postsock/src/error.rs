//! The one error type of the postsock library.
//!
//! Every variant says what failed and carries the context a user needs to act on it
//! (which remote, which protocol, which limit).

use std::io;
use std::net::SocketAddr;

use crate::Protocol;

/// A message id (the same as [`crate::MessageId`], named here so that errors sit below
/// messages in the layering).
type MessageId = u64;

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
    /// The configuration cannot be used, or a call does not fit the carrier (for example no
    /// protocol, no identity on a listener, an unreliable message on TCP).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A message is larger than the configured maximum message size.
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// The size of the offending message.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer violated the wire mapping (see docs/WIRE.md) or a traversal protocol.
    #[error("protocol violation by the peer: {0}")]
    Protocol(#[from] Violation),
    /// The carrier's transient failed or was closed, or a traversal exchange got no answer.
    #[error("connection error: {0}")]
    Connection(#[from] ConnectionError),
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

/// Why a configuration, or a call, cannot be used. Each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A secure protocol was attempted without a TLS client configuration.
    #[error("no TLS configuration for a secure protocol")]
    NoTlsConfiguration,
    /// No protocol stack is left after the transport properties.
    #[error("no protocol stack meets the transport properties: {}", if .rejected.is_empty() { "no protocol allowed".to_string() } else { .rejected.join("; ") })]
    NoStackMeets {
        /// Why each protocol was rejected.
        rejected: Vec<String>,
    },
    /// The path policy and the host's interfaces leave no interface towards the remote.
    #[error("no usable interface towards {remote}: the path policy and the interfaces [{}] leave none", .interfaces.join(", "))]
    NoUsableInterface {
        /// The remote address.
        remote: std::net::IpAddr,
        /// Every interface, with its state.
        interfaces: Vec<String>,
    },
    /// A client needs roots to verify the server's certificate.
    #[error("no trusted root certificates: set Security::trusted_roots (verification cannot be disabled)")]
    NoTrustedRoots,
    /// A listener needs an identity.
    #[error("a listener needs an identity: set Security::identity")]
    NoIdentity,
    /// The name to verify the server's certificate against is not a valid server name.
    #[error("`{name}` is not a valid server name: {reason}")]
    InvalidServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An association file cannot be read or written as one.
    #[error("{path}: {reason}")]
    AssociationFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `fork` on an accepted carrier.
    #[error("only an initiated carrier can fork; this one was accepted")]
    ForkAccepted,
    /// An unreliable message to a peer that does not take QUIC datagrams.
    #[error("the peer does not accept unreliable messages (QUIC datagrams)")]
    UnreliableRefused,
    /// An unreliable message on a stream protocol.
    #[error("{protocol} cannot send unreliable messages; require per_msg_reliability to get QUIC")]
    UnreliableOnStream {
        /// The carrier's protocol.
        protocol: crate::Protocol,
    },
    /// A partial send of an unreliable message.
    #[error("an unreliable message cannot be sent in parts")]
    UnreliablePartial,
    /// `receive` met a partial message: with partial delivery, read events.
    #[error("part of message {id} arrived: with partial delivery use next_event")]
    PartialArrived {
        /// The message.
        id: MessageId,
    },
    /// A part sent after the message's last part.
    #[error("the message has already ended")]
    MessageEnded,
    /// A message names an antecedent this carrier never sent.
    #[error("antecedent {antecedent} of message {id} has not been sent on this carrier")]
    UnknownAntecedent {
        /// The antecedent.
        antecedent: MessageId,
        /// The message.
        id: MessageId,
    },
    /// The `Lines` framer cannot send a line with a newline in it.
    #[error("a line cannot contain a newline")]
    NewlineInLine,
    /// The `Json` framer cannot serialise the value.
    #[error("JSON: {0}")]
    Json(String),
    /// A framer panicked in another task.
    #[error("framer poisoned")]
    FramerPoisoned,
    /// The TURN user name cannot be sent.
    #[error("TURN user name: {0}")]
    TurnUserName(String),
    /// A TURN server on the unspecified address must be told its relay address.
    #[error("a TURN server listening on the unspecified address needs a relay address")]
    TurnRelayAddress,
    /// A TURN server without users.
    #[error("a TURN server needs at least one user")]
    TurnNoUser,
    /// Relay-only punching without a TURN server.
    #[error("relay policy `only` needs a TURN server")]
    RelayOnlyWithoutTurn,
    /// A rendezvous pairing secret that is too short to be a secret.
    #[error("a pairing secret needs at least 16 bytes")]
    ShortSecret,
    /// Sealing the rendezvous blob failed (the crypto library refused).
    #[error("sealing failed")]
    Sealing,
}

/// How the peer broke the wire mapping (docs/WIRE.md) or a traversal protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A header's reserved bytes are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedBytes,
    /// An unknown frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// Flags a frame type does not have.
    #[error("unknown frame flags 0x{0:02x}")]
    UnknownFlags(u8),
    /// An ACK frame with flags or a payload.
    #[error("an ACK frame must have no flags and no payload")]
    MalformedAck,
    /// A CLOSE frame with a payload or flags other than ABORT.
    #[error("a CLOSE frame must be empty, with at most the ABORT flag")]
    MalformedClose,
    /// An abort frame with a payload or without FIN.
    #[error("an abort frame must be empty and carry FIN")]
    MalformedAbort,
    /// A frame longer than the maximum message size.
    #[error("frame of {len} bytes exceeds the maximum message size of {max} bytes")]
    FrameTooLarge {
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message (reassembled) longer than the maximum message size.
    #[error("message {id} exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// The message.
        id: MessageId,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame header.
    #[error("truncated frame header: stream ended after {filled} of {len} bytes")]
    TruncatedHeader {
        /// Bytes read.
        filled: usize,
        /// Bytes of a header.
        len: usize,
    },
    /// The stream ended inside a frame's payload.
    #[error("truncated frame: message {id} announced {len} bytes")]
    TruncatedFrame {
        /// The message.
        id: MessageId,
        /// The announced length.
        len: u32,
    },
    /// The stream ended in the middle of a message.
    #[error("stream ended in the middle of message {id}")]
    EndedInMessage {
        /// The message.
        id: MessageId,
    },
    /// A continued transient that does not start with HELLO.
    #[error("a continued transient must start with HELLO")]
    HelloExpected,
    /// A HELLO frame of the wrong length or with other flags.
    #[error("a HELLO frame carries a token and a position (24 bytes) and only RESUME, REFUSED or MOVE (not with RESUME); a MOVED frame a carrier identity and two receipts")]
    MalformedHello,
    /// HELLO anywhere but first.
    #[error("HELLO is only allowed as the first frame of a transient")]
    HelloMisplaced,
    /// MOVED anywhere but right after a HELLO with MOVE.
    #[error("MOVED is only allowed right after a HELLO with MOVE")]
    MovedMisplaced,
    /// A frame written again after a continuation does not start where the receiver is.
    #[error("a frame written again at {at} units does not line up with the {received} received")]
    ResendMisaligned {
        /// Where the frame starts.
        at: u64,
        /// What the receiver has.
        received: u64,
    },
    /// A HELLO cut short.
    #[error("truncated HELLO")]
    TruncatedHello,
    /// More messages interleaved than a receiver reassembles at once.
    #[error("more than {max} messages interleaved at once")]
    TooManyOpen {
        /// The limit.
        max: usize,
    },
    /// An ACK of less than before, or of more than was sent.
    #[error("ACK of {acked} units, outside the {from}..={to} sent")]
    AckOutOfRange {
        /// The ACK.
        acked: u64,
        /// What was acknowledged already.
        from: u64,
        /// What was written.
        to: u64,
    },
    /// A partial message's parts went past its end.
    #[error("a message ended inside a frame ({left} bytes left over)")]
    LeftOver {
        /// Bytes past the end.
        left: usize,
    },
    /// A length-prefixed frame longer than the framer's maximum.
    #[error("length-prefixed frame of {len} bytes exceeds the maximum of {max}")]
    PrefixTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line longer than the framer's maximum.
    #[error("line longer than the maximum of {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// A line that is not UTF-8.
    #[error("line is not UTF-8: {0}")]
    NotUtf8(String),
    /// A line that is not the JSON the receiver expects.
    #[error("bad JSON value: {0}")]
    BadJson(String),
    /// The TURN server's success answer to Allocate lacks the relayed address.
    #[error("the TURN server's Allocate answer has no relayed address")]
    NoRelayedAddress,
    /// A TURN response that fails MESSAGE-INTEGRITY or cannot be built.
    #[error("{0}")]
    Turn(String),
    /// The peer's rendezvous blob does not decode, or names both peers the same.
    #[error("the peer's rendezvous extra: {0}")]
    RendezvousExtra(String),
    /// Both peers drew the same tie-breaker (one in 2^64).
    #[error("both peers drew the same tie-breaker")]
    SameTieBreaker,
    /// The peer's one-off CA is not hexadecimal.
    #[error("the peer's CA certificate is not hexadecimal")]
    CaNotHex,
    /// The rendezvous server's answer does not decode.
    #[error("rendezvous answer: {0}")]
    RendezvousAnswer(String),
    /// The peer's rendezvous message does not authenticate.
    #[error("the peer's rendezvous message did not authenticate (wrong secret, or forged)")]
    NotAuthenticated,
}

/// Why a transient ended, a carrier failed, or an exchange got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The listener stopped accepting.
    #[error("listener stopped")]
    ListenerStopped,
    /// The carrier's sending task failed (it panicked or was cancelled).
    #[error("sending task failed: {0}")]
    TaskFailed(String),
    /// Nothing came from the peer for the dormancy threshold.
    #[error("nothing heard from the peer for {ms} ms")]
    Silent {
        /// How long, in ms.
        ms: u128,
    },
    /// A resumable stream ended without CLOSE (a break, not a close).
    #[error("the stream ended without CLOSE")]
    EndedWithoutClose,
    /// The peer refused a continuation: it no longer knows the carrier.
    #[error("the peer no longer knows this carrier")]
    UnknownCarrier,
    /// The peer aborted the carrier.
    #[error("the peer aborted the carrier")]
    PeerAborted,
    /// This end aborted the carrier.
    #[error("carrier aborted")]
    Aborted,
    /// The transient was replaced or ended under a write.
    #[error("transient ended")]
    TransientEnded,
    /// The sender abandoned a message after part of it was delivered.
    #[error("the sender abandoned message {id} after part of it was delivered")]
    Abandoned {
        /// The message.
        id: MessageId,
    },
    /// Reading or writing the TCP connection failed.
    #[error("TCP {op}: {reason}")]
    Tcp {
        /// `read` or `write`.
        op: &'static str,
        /// What the OS said.
        reason: String,
    },
    /// The QUIC connection failed or was closed, as quinn reports it.
    #[error("{0}")]
    Quic(String),
    /// The carrier had already failed, for this reason.
    #[error("{0}")]
    Failed(String),
    /// A STUN Binding transaction got no answer.
    #[error("no STUN answer from {server} after {requests} requests")]
    NoStunAnswer {
        /// The server.
        server: std::net::SocketAddr,
        /// Requests sent.
        requests: u32,
    },
    /// A TURN request got no answer.
    #[error("no answer from the TURN server {server} to {method}")]
    NoTurnAnswer {
        /// The server.
        server: std::net::SocketAddr,
        /// The request.
        method: &'static str,
    },
    /// The TURN server refused a request.
    #[error("the TURN server {server} refused {method}: {reason}")]
    TurnRefused {
        /// The server.
        server: std::net::SocketAddr,
        /// The request.
        method: &'static str,
        /// Its error code and reason.
        reason: String,
    },
    /// The TURN server kept challenging the credentials.
    #[error("the TURN server {server} kept refusing {method} (wrong credentials?)")]
    TurnKeptRefusing {
        /// The server.
        server: std::net::SocketAddr,
        /// The request.
        method: &'static str,
    },
    /// No peer registered with the same pairing at the rendezvous server in time.
    #[error("no peer registered with the same pairing within {ms} ms")]
    NoPeer {
        /// How long it waited, in ms.
        ms: u128,
    },
    /// The rendezvous server closed before a peer came.
    #[error("the rendezvous server closed without a peer")]
    RendezvousClosed,
    /// No candidate pair passed its connectivity checks.
    #[error("no candidate pair worked within {ms} ms (the peer's candidates: {}), {relay}", .candidates.join(", "))]
    NoCandidatePair {
        /// How long the checks ran, in ms.
        ms: u128,
        /// The peer's candidates.
        candidates: Vec<String>,
        /// What became of the relay.
        relay: String,
    },
    /// The punched peer did not open its QUIC connection.
    #[error("the peer did not open the QUIC connection")]
    PeerDidNotConnect,
    /// The QUIC handshake with the punched peer failed.
    #[error("QUIC handshake with the peer: {0}")]
    PeerHandshake(String),
}

/// Result alias for postsock.
pub type Result<T, E = Error> = std::result::Result<T, E>;
