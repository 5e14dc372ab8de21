//! NAT traversal: how two peers behind NATs get a carrier between them.
//!
//! Bottom up: [`stun`] (Binding client and server, the RFC 7983 demultiplexer that lets STUN
//! and TURN share the QUIC socket), [`turn`] (RFC 8656 relay client and server),
//! [`rendezvous`] (an authenticated meeting point, itself a Post Sockets application over
//! carriers) and [`punch`] (candidates, ICE-style connectivity checks, relay fallback,
//! restarts), which [`Carrier::rendezvous`](crate::Carrier::rendezvous) drives.

pub(crate) mod codec;
mod demux;
mod transaction;

pub mod punch;
pub mod rendezvous;
pub mod stun;
pub mod turn;
