//! The wire formats of NAT traversal, without I/O: STUN messages (RFC 8489) and TURN
//! messages, ChannelData and indications (RFC 8656), on the `stun_codec` crate.

pub(crate) mod stun;
pub(crate) mod turn;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::{Message, MessageDecoder, MessageEncoder};

/// Encodes `message` with attribute set `A`; `None` if it cannot be (then nothing is sent:
/// never an empty datagram).
pub(crate) fn encode<A: stun_codec::Attribute>(message: Message<A>) -> Option<Vec<u8>> {
    MessageEncoder::new().encode_into_bytes(message).ok()
}

/// Decodes a STUN message with attribute set `A`; `None` if it is not one, or is longer than
/// `max` bytes.
pub(crate) fn decode<A: stun_codec::Attribute>(datagram: &[u8], max: usize) -> Option<Message<A>> {
    if datagram.len() > max || !stun::is_stun(datagram) {
        return None;
    }
    MessageDecoder::<A>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()
}
