//! The TLS/TCP frame format (docs/WIRE.md): a 16-byte header, then the payload.
//!
//! ```text
//!  0        1        2        4                 12          16
//! +--------+--------+--------+-----------------+-----------+------------
//! | type   | flags  | rsvd=0 | message id (BE) | len (BE)  | payload ...
//! +--------+--------+--------+-----------------+-----------+------------
//! ```
//!
//! Decoding is pure: [`FrameHeader::decode`] validates a header against the limits and
//! returns what the reader must do next, so violations are unit-testable without a network.

use crate::Violation;
use crate::{MessageId, Result};

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// Frame type: a whole application message.
pub const TYPE_MESSAGE: u8 = 0x01;
/// Frame type: a carrier-level acknowledgement. Its id field counts the ACK units the sender
/// of the ACK has received on this carrier so far (a MESSAGE frame is its payload length plus
/// one units); its flags and length are 0.
pub const TYPE_ACK: u8 = 0x02;
/// Frame type: the first frame of a transient of a resumable carrier (docs/WIRE.md §
/// Continuation). Id field: the ACK units the sender has received on this carrier so far
/// (over all its transients). Payload: the 16-byte carrier token, then (8 bytes, big-endian)
/// the ACK unit position from which the sender writes its frames again on this transient.
pub const TYPE_HELLO: u8 = 0x03;
/// Frame type: the sender has finished sending on this carrier; end of stream follows. An
/// end of stream without it, on a resumable carrier, is a broken transient, not a close. With
/// `FLAG_ABORT` the sender aborted the carrier.
pub const TYPE_CLOSE: u8 = 0x04;
/// Frame type: follows a HELLO with `FLAG_MOVE` (docs/WIRE.md § Moving from QUIC). Payload:
/// the 16-byte QUIC carrier identity (a TLS exporter of the QUIC connection), then what the
/// sender received on QUIC: for unidirectional, then bidirectional streams the peer opened,
/// each as 8 bytes (every stream index below it was delivered), 4 bytes (a count) and that
/// many 8-byte stream indices above it, strictly increasing, that were delivered too. The
/// client's first MOVED carries the identity only. All big-endian.
pub const TYPE_MOVED: u8 = 0x05;
/// HELLO flag: continue an existing carrier (without it: a new carrier).
pub const FLAG_RESUME: u8 = 0x01;
/// HELLO flag: the carrier was QUIC until now and moves to this transient; a MOVED frame
/// follows. The HELLO's token names the carrier from now on (for continuations).
pub const FLAG_MOVE: u8 = 0x04;
/// Largest MOVED payload (the identity and two receipts of at most 4096 indices each).
pub const MOVED_MAX: usize = TOKEN_LEN + 2 * (12 + 8 * 4096);
/// HELLO flag (in the listener's answer): the token is unknown, the carrier cannot continue.
pub const FLAG_REFUSED: u8 = 0x02;
/// Length of a carrier token.
pub const TOKEN_LEN: usize = 16;
/// Payload length of a HELLO frame: the token and the resend position.
pub const HELLO_LEN: usize = TOKEN_LEN + 8;
/// Flag: this frame ends its message. Without it, more frames of the same id follow.
pub const FLAG_FIN: u8 = 0x01;
/// Flag: the sender abandoned the message (it expired or was aborted after some of it was
/// sent); the receiver discards what it has of it. Set together with `FLAG_FIN` on an empty
/// frame.
pub const FLAG_ABORT: u8 = 0x02;
/// MESSAGE flag: this frame fills the sender's window of unacknowledged bytes; the receiver
/// acknowledges at once rather than after its ACK delay (the sender can write nothing more
/// until it does).
pub const FLAG_ACK_NOW: u8 = 0x04;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Message id.
    pub id: MessageId,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// The header of a whole message (tests write such frames by hand).
    #[cfg(test)]
    pub fn message(id: MessageId, len: u32) -> Self {
        Self::part(id, len, true)
    }

    /// The header of a part of a message; `fin` ends it.
    pub fn part(id: MessageId, len: u32, fin: bool) -> Self {
        FrameHeader {
            kind: TYPE_MESSAGE,
            flags: if fin { FLAG_FIN } else { 0 },
            id,
            len,
        }
    }

    /// The empty frame that abandons message `id`.
    pub fn abort(id: MessageId) -> Self {
        FrameHeader {
            kind: TYPE_MESSAGE,
            flags: FLAG_FIN | FLAG_ABORT,
            id,
            len: 0,
        }
    }

    /// The acknowledgement of the first `count` messages.
    pub fn ack(count: u64) -> Self {
        FrameHeader {
            kind: TYPE_ACK,
            flags: 0,
            id: count,
            len: 0,
        }
    }

    /// A HELLO frame header (the token and the resend position follow as payload).
    pub fn hello(received: u64, flags: u8) -> Self {
        FrameHeader {
            kind: TYPE_HELLO,
            flags,
            id: received,
            len: HELLO_LEN as u32,
        }
    }

    /// The CLOSE frame header; `abort`: the sender aborted the carrier.
    pub fn close(abort: bool) -> Self {
        FrameHeader {
            kind: TYPE_CLOSE,
            flags: if abort { FLAG_ABORT } else { 0 },
            id: 0,
            len: 0,
        }
    }

    /// Whether this is an ACK frame.
    pub fn is_ack(&self) -> bool {
        self.kind == TYPE_ACK
    }

    /// Whether this frame ends its message.
    pub fn fin(&self) -> bool {
        self.flags & FLAG_FIN != 0
    }

    /// Whether this frame abandons its message.
    pub fn aborts(&self) -> bool {
        self.flags & FLAG_ABORT != 0
    }

    /// Whether the sender asks for an ACK at once (its window is full).
    pub fn ack_now(&self) -> bool {
        self.kind == TYPE_MESSAGE && self.flags & FLAG_ACK_NOW != 0
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind;
        out[1] = self.flags;
        out[4..12].copy_from_slice(&self.id.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes and validates a header; `max_len` is the largest payload accepted.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_len: usize) -> Result<Self> {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[4..12]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[12..16]);
        let header = FrameHeader {
            kind: bytes[0],
            flags: bytes[1],
            id: u64::from_be_bytes(id),
            len: u32::from_be_bytes(len),
        };
        if bytes[2] != 0 || bytes[3] != 0 {
            return Err(Violation::ReservedBytes.into());
        }
        if header.kind == TYPE_ACK {
            if header.flags != 0 || header.len != 0 {
                return Err(Violation::MalformedAck.into());
            }
            return Ok(header);
        }
        if header.kind == TYPE_HELLO {
            let known = FLAG_RESUME | FLAG_REFUSED | FLAG_MOVE;
            if header.flags & !known != 0
                || header.flags & FLAG_RESUME != 0 && header.flags & FLAG_MOVE != 0
                || header.len as usize != HELLO_LEN
            {
                return Err(Violation::MalformedHello.into());
            }
            return Ok(header);
        }
        if header.kind == TYPE_CLOSE {
            if header.flags & !FLAG_ABORT != 0 || header.len != 0 || header.id != 0 {
                return Err(Violation::MalformedClose.into());
            }
            return Ok(header);
        }
        if header.kind == TYPE_MOVED {
            if header.flags != 0
                || header.id != 0
                || (header.len as usize) < TOKEN_LEN
                || header.len as usize > MOVED_MAX
            {
                return Err(Violation::MalformedHello.into());
            }
            return Ok(header);
        }
        if header.kind != TYPE_MESSAGE {
            return Err(Violation::UnknownFrameType(header.kind).into());
        }
        if header.flags & !(FLAG_FIN | FLAG_ABORT | FLAG_ACK_NOW) != 0 {
            return Err(Violation::UnknownFlags(header.flags).into());
        }
        if header.aborts() && (header.len != 0 || !header.fin()) {
            return Err(Violation::MalformedAbort.into());
        }
        if header.len as usize > max_len {
            return Err(Violation::FrameTooLarge {
                len: u64::from(header.len),
                max: max_len,
            }
            .into());
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = FrameHeader::message(0x0102_0304_0506_0708, 65_536);
        let bytes = h.encode();
        assert_eq!(bytes[0], TYPE_MESSAGE);
        assert_eq!(&bytes[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(FrameHeader::decode(&bytes, 1 << 20).ok(), Some(h));
    }

    #[test]
    fn rejects_violations() {
        let good = FrameHeader::message(1, 10).encode();
        let cases: Vec<([u8; HEADER_LEN], &str)> = vec![
            (
                {
                    let mut b = good;
                    b[0] = 9;
                    b
                },
                "unknown frame type 0x09",
            ),
            (
                {
                    let mut b = good;
                    b[1] = 0x81;
                    b
                },
                "unknown frame flags",
            ),
            (
                {
                    let mut b = good;
                    b[1] = FLAG_FIN | FLAG_ABORT;
                    b
                },
                "abort frame must be empty",
            ),
            (
                {
                    let mut b = good;
                    b[3] = 1;
                    b
                },
                "reserved",
            ),
        ];
        for (bytes, want) in cases {
            let err = FrameHeader::decode(&bytes, 100)
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let mut bad_ack = FrameHeader::ack(3).encode();
        bad_ack[15] = 1;
        let err = FrameHeader::decode(&bad_ack, 100).expect_err("ack with payload");
        assert!(err.to_string().contains("ACK frame"), "{err}");
        assert!(FrameHeader::decode(&FrameHeader::ack(3).encode(), 100).is_ok_and(|h| h.is_ack()));
        let big = FrameHeader::message(1, 101).encode();
        let err = FrameHeader::decode(&big, 100)
            .expect_err("too big")
            .to_string();
        assert!(err.contains("exceeds the maximum"), "{err}");
        assert!(FrameHeader::decode(&FrameHeader::message(1, 100).encode(), 100).is_ok());
        let mut ack_now = FrameHeader::message(1, 10).encode();
        ack_now[1] |= FLAG_ACK_NOW;
        let h = FrameHeader::decode(&ack_now, 100).expect("ACK_NOW is a MESSAGE flag");
        assert!(h.ack_now() && h.fin() && !h.aborts());
        assert!(!FrameHeader::decode(&good, 100).is_ok_and(|h| h.ack_now()));
        let mut ack_flagged = FrameHeader::ack(3).encode();
        ack_flagged[1] = FLAG_ACK_NOW;
        assert!(
            FrameHeader::decode(&ack_flagged, 100).is_err(),
            "not on an ACK"
        );
    }
}
