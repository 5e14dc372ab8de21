//! Messages: what applications send and receive.

use bytes::Bytes;

/// A carrier-scoped message number, assigned by the sender in send order starting at 0.
///
/// On QUIC it is the index of the unidirectional stream that carried the message; on TLS/TCP
/// it is the id field of the frame header (docs/WIRE.md). Both ends therefore agree on it.
pub type MessageId = u64;

/// A message to send: bytes plus properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The payload.
    pub data: Bytes,
    /// Safe to replay or to send in 0-RTT.
    pub idempotent: bool,
}

impl Message {
    /// A message with default properties.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Message {
            data: data.into(),
            idempotent: false,
        }
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::new(data)
    }
}

impl From<&'static [u8]> for Message {
    fn from(data: &'static [u8]) -> Self {
        Message::new(Bytes::from_static(data))
    }
}

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's id for this message.
    pub id: MessageId,
    /// The payload.
    pub data: Bytes,
}
