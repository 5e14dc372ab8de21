//! The wire formats of NAT traversal, without I/O: STUN messages (RFC 8489) and TURN
//! messages, ChannelData and indications (RFC 8656), on the `stun_codec` crate.

pub(crate) mod stun;
pub(crate) mod turn;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{ErrorCode, UnknownAttributes};
use stun_codec::TransactionId;
use stun_codec::{AttributeType, Message, MessageClass, MessageDecoder, MessageEncoder, Method};

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

/// A datagram that is STUN by its header but whose attributes could not be decoded (a value
/// out of range, a truncated attribute): enough to answer a request with 400.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Broken {
    pub class: MessageClass,
    pub method: Method,
    pub transaction: TransactionId,
}

/// Like [`decode`], but tells a STUN message whose attributes are malformed (`Err`) from
/// something that is not STUN at all (`None`).
pub(crate) fn decode_or_broken<A: stun_codec::Attribute>(
    datagram: &[u8],
    max: usize,
) -> Option<Result<Message<A>, Broken>> {
    if datagram.len() > max || !stun::is_stun(datagram) {
        return None;
    }
    match MessageDecoder::<A>::new()
        .decode_from_bytes(datagram)
        .ok()?
    {
        Ok(m) => Some(Ok(m)),
        Err(b) => Some(Err(Broken {
            class: b.class(),
            method: b.method(),
            transaction: b.transaction_id(),
        })),
    }
}

/// The comprehension-required attributes of `m` its attribute set does not know (RFC 8489
/// §6.3.1: a request carrying any gets 420 listing them).
pub(crate) fn unknown_required<A: stun_codec::Attribute>(m: &Message<A>) -> Vec<AttributeType> {
    m.unknown_attributes()
        .map(stun_codec::Attribute::get_type)
        .filter(|t| t.is_comprehension_required())
        .collect()
}

/// An error response to request `method`/`transaction`: ERROR-CODE `code` with `reason`, and
/// UNKNOWN-ATTRIBUTES listing `unknown` when there are any (a 420). Callers add what else
/// their response carries (a signature, a realm and nonce, SOFTWARE).
pub(crate) fn error_message<A>(
    method: Method,
    transaction: TransactionId,
    code: u16,
    reason: &str,
    unknown: Vec<AttributeType>,
) -> Message<A>
where
    A: stun_codec::Attribute + From<ErrorCode> + From<UnknownAttributes>,
{
    let mut r = Message::<A>::new(MessageClass::ErrorResponse, method, transaction);
    if let Ok(e) = ErrorCode::new(code, reason.into()) {
        r.add_attribute(e);
    }
    if !unknown.is_empty() {
        r.add_attribute(UnknownAttributes::new(unknown));
    }
    r
}
