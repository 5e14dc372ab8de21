//! # postsock — Post Sockets in Rust
//!
//! An asynchronous, message-oriented transport API after the Post Sockets proposal
//! (draft-trammell-taps-post-sockets-03) and the IETF TAPS documents (RFC 9621–9623).
//! Applications send and receive *messages* on a *carrier*; the stack runs them over QUIC or
//! TLS 1.3 over TCP, always with certificate verification.
//!
//! | Post Sockets concept | type here |
//! |---|---|
//! | Message | [`Message`] (to send), [`Received`] (delivered) |
//! | Carrier | [`Carrier`] |
//! | Transient | internal: a QUIC connection or TLS/TCP connection owned by a carrier |
//! | Listener | [`Listener`] |
//! | Remote | [`Remote`] |
//! | Configuration | [`Configuration`], [`Security`] |
//! | (the network) | [`net::Net`]: [`net::TokioNet`] for real sockets, the `sim` crate for simulation |
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

mod carrier;
mod certs;
mod config;
mod error;
pub mod framer;
mod kin;
mod listener;
mod message;
pub mod net;
mod outbox;
mod selection;
pub mod transport;

pub use carrier::{Carrier, PartialSend};
pub use certs::TestCa;
pub use config::{Configuration, Identity, Protocol, Remote, Security};
pub use error::{Error, Result};
pub use framer::{Framed, Framer, Json, LengthPrefix, Lines};
pub use kin::{Request, Responder, Sink, Source};
pub use listener::Listener;
pub use message::{
    Event, Message, MessageId, MessageProperties, Received, ReceivedPartial, SendHandle, SendStatus,
};
pub use selection::{select, Preference, Rejection, TransportProperties};
pub use transport::tls::ALPN;
