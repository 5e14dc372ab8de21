//! # postsock — Post Sockets in Rust
//!
//! An asynchronous, message-oriented transport API after the Post Sockets proposal
//! (draft-trammell-taps-post-sockets-03), with what the IETF TAPS documents (RFC 9621–9623)
//! refined. Applications send and receive *messages* on a *carrier* and say what they need;
//! the stack picks the protocol (QUIC, TLS 1.3 over TCP, plain TCP only when security is
//! explicitly lowered), always with certificate verification.
//!
//! | Post Sockets concept | type here |
//! |---|---|
//! | Message, message properties (lifetime, niceness, antecedents, idempotent, immediate, ordered, reliable) | [`Message`], [`MessageProperties`] |
//! | Message events (sent, acknowledged, expired, send error) | [`SendHandle`], [`SendStatus`] |
//! | Partial send / partial receive | [`Carrier::start_message`] / [`PartialSend`], [`ReceivedPartial`] with [`Configuration::receive_min_incomplete`] and [`Configuration::receive_max_length`] |
//! | Carrier (send, receive, events, fork, close, abort) | [`Carrier`], [`Event`] |
//! | Transient | internal: a QUIC or TLS/TCP connection owned by a carrier |
//! | Listener | [`Listener`] |
//! | Responder, Source, Sink | [`Responder`] (with [`Request`]), [`Source`], [`Sink`] |
//! | Parsing and serialisation in the stack (framers) | [`Framer`], [`Framed`]; [`LengthPrefix`], [`Lines`], [`Json`] |
//! | Remote | [`Remote`] |
//! | Association (what is remembered of a remote: sessions, racing outcomes) | [`Associations`], [`Association`], [`Configuration::associations`] |
//! | Racing candidate stacks and addresses | [`Carrier::initiate`], [`EstablishmentReport`], [`Configuration::attempt_delay`] |
//! | Initiate-with-send, 0-RTT | [`Carrier::initiate_with`] |
//! | Configuration, policy, selection | [`Configuration`], [`TransportProperties`], [`Preference`], [`select`], [`Security`] |
//! | (the network) | [`net::Net`]: [`net::TokioNet`] for real sockets, the `sim` crate for simulation |
//!
//! The wire mapping of each protocol is specified in `docs/WIRE.md`; a peer that follows it
//! needs nothing of this crate.
//!
//! Back-pressure is built in: a carrier holds at most [`Configuration::send_buffer`] bytes of
//! unsettled messages (then `send` waits) and [`Configuration::receive_buffer`] bytes the
//! application has not taken (then it stops reading and flow control slows the peer).
//!
//! ```no_run
//! # async fn demo() -> postsock::Result<()> {
//! use postsock::{Carrier, Configuration, Listener, Protocol, Remote, Security, TestCa};
//! use postsock::net::TokioNet;
//!
//! let ca = TestCa::new("demo CA")?;
//! let mut server_config = Configuration::default();
//! server_config.security(Security { identity: Some(ca.issue(&["localhost"])?), ..Default::default() });
//! let mut listener = Listener::bind(TokioNet::shared(), "127.0.0.1:0".parse().unwrap(), server_config).await?;
//!
//! let mut client_config = Configuration::default();
//! client_config
//!     .protocols(&[Protocol::Quic])
//!     .security(Security { trusted_roots: vec![ca.root()], ..Default::default() });
//! let port = listener.local_addr().port();
//! let carrier = Carrier::initiate(TokioNet::shared(), Remote::new("localhost", port), client_config).await?;
//! carrier.send_bytes(&b"hello"[..]).await?;
//! let accepted = listener.accept().await?;
//! let hello = accepted.receive().await?;
//! # Ok(()) }
//! ```

// The layers, bottom up (docs/ARCHITECTURE.md): the vocabulary every layer speaks
// (messages, configuration, errors), the network seam, paths, transports, establishment,
// the application API, and NAT traversal built on top of it.
mod certs;
mod config;
mod configuration;
mod error;
mod message;
pub mod policy;
mod util;

pub mod net;
pub mod path;
pub mod transport;

mod establish;

mod api;

pub mod traversal;

#[cfg(test)]
mod fuzz;

pub use api::carrier::{Carrier, CarrierStats, PartialSend};
pub use api::framer;
pub use api::framer::{Framed, Framer, Json, LengthPrefix, Lines};
pub use api::listener::Listener;
pub use api::roles::{Request, Responder, Sink, Source};
pub use certs::TestCa;
pub use config::{Identity, Protocol, Remote, Security};
pub use configuration::Configuration;
pub use error::{ConfigError, ConnectionError, Error, Result, Violation};
pub use establish::association::{
    Association, AssociationKey, Associations, PathMemory, SavedSessions, DEFAULT_PATH,
};
pub use establish::race::MIN_ATTEMPT_DELAY;
pub use establish::report::{
    Attempt, AttemptOutcome, EstablishmentReport, Query, ResolutionReport,
};
pub use establish::resolution::{race_start, RESOLUTION_DELAY};
pub use establish::selection::{select, Preference, Rejection, TransportProperties};
pub use establish::sessions::{SavedTicket, TICKETS_PER_SERVER};
pub use message::{
    Event, Message, MessageId, MessageProperties, Received, ReceivedPartial, SendHandle, SendStatus,
};
pub use path::{HandoverReason, PathMonitor, PathPolicy};
pub use policy::{PolicyChoice, PolicySet};
pub use transport::tls::ALPN;
