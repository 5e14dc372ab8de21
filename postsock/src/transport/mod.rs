//! Transients: one protocol-stack instance on one path, behind one internal interface.
//!
//! A transient is split into a sending side (`TransientTx`) and a receiving side: a task that
//! reads the wire and pushes `Inbound` items into a channel the carrier drains. The channel
//! closing means the transient ended; a final `Err` item says why, when it was not a clean close.

pub mod framing;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod tls_tcp;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{Error, MessageId, Received, Result};

/// What a transient's reader hands to the carrier.
pub(crate) type Inbound = Result<Received, Error>;

/// Capacity of the inbound channel, in messages.
pub(crate) const INBOUND_QUEUE: usize = 1024;

pub(crate) fn inbound_channel() -> (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>) {
    mpsc::channel(INBOUND_QUEUE)
}

/// The sending side of a transient.
#[derive(Debug)]
pub(crate) enum TransientTx {
    Quic(quic::QuicTx),
    Tls(tls_tcp::TlsTx),
}

impl TransientTx {
    pub(crate) async fn send(&self, data: Bytes) -> Result<MessageId> {
        match self {
            TransientTx::Quic(q) => q.send(data).await,
            TransientTx::Tls(t) => t.send(data).await,
        }
    }

    /// Waits until every message handed to `send` has been delivered to the peer's transport
    /// (QUIC: acknowledged; TLS/TCP: written and flushed), then closes the transient.
    pub(crate) async fn close(&self) -> Result<()> {
        match self {
            TransientTx::Quic(q) => q.close().await,
            TransientTx::Tls(t) => t.close().await,
        }
    }

    /// Closes at once, dropping whatever is queued.
    pub(crate) fn abort(&self) {
        match self {
            TransientTx::Quic(q) => q.abort(),
            TransientTx::Tls(t) => t.abort(),
        }
    }
}
