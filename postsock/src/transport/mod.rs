//! Transients: one protocol-stack instance on one path.
//!
//! A transient is a set of tasks: a sending loop that takes items from the carrier's
//! [`Outbox`](crate::outbox) and a reader that turns what arrives into [`crate::Event`]s on the
//! carrier's event channel. The reader's last event says how the transient ended.

pub(crate) mod assemble;
pub mod framing;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod tls_tcp;
