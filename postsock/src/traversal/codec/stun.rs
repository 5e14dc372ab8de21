//! The STUN message codec (RFC 8489) on the `stun_codec` crate: what is STUN by RFC 7983's
//! first-byte rule, Binding requests and responses.

use std::net::SocketAddr;

use bytecodec::DecodeExt;
use stun_codec::rfc5389::attributes::{Software, Username, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, TransactionId};

/// Largest STUN message accepted (RFC 8489 §6.1: fits an unfragmented IPv4 datagram).
pub const MAX_MESSAGE: usize = 548 * 2;
/// The STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Whether `datagram` is a STUN message by RFC 7983's first-byte rule (and carries the magic
/// cookie): what [`Demux`](crate::traversal::stun::Demux) keeps away from QUIC.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] <= 3 && datagram[4..8] == MAGIC_COOKIE
}

/// A Binding request with transaction id `txid`: a bare 20-byte header (RFC 8489 §5), type
/// Binding request, no attributes.
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(&txid);
    out
}

fn encode(message: Message<Attribute>) -> Option<Vec<u8>> {
    super::encode(message)
}

pub(crate) fn decode(datagram: &[u8]) -> Option<Message<Attribute>> {
    super::decode(datagram, MAX_MESSAGE)
}

/// The server's answer to `datagram` received from `source`: a Binding success response
/// carrying `source` as XOR-MAPPED-ADDRESS; 400 for a Binding request whose attributes are
/// malformed, 420 (with UNKNOWN-ATTRIBUTES) for one with comprehension-required attributes
/// it does not know (RFC 8489 §6.3.1); `None` for anything else.
pub fn answer(datagram: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let request = match super::decode_or_broken::<Attribute>(datagram, MAX_MESSAGE)? {
        Ok(m) => m,
        Err(b) if b.class == MessageClass::Request && b.method == BINDING => {
            return error_response(b.transaction, 400, "Bad Request", Vec::new());
        }
        Err(_) => return None,
    };
    if request.class() != MessageClass::Request || request.method() != BINDING {
        return None;
    }
    let unknown = super::unknown_required(&request);
    if !unknown.is_empty() {
        let transaction = request.transaction_id();
        return error_response(transaction, 420, "Unknown Attribute", unknown);
    }
    let mut response = Message::<Attribute>::new(
        MessageClass::SuccessResponse,
        BINDING,
        request.transaction_id(),
    );
    response.add_attribute(XorMappedAddress::new(source));
    if let Ok(software) = Software::new("postsock".to_string()) {
        response.add_attribute(software);
    }
    encode(response)
}

/// An error response to Binding request `transaction` (listing `unknown` attributes for a
/// 420), with SOFTWARE.
fn error_response(
    transaction: TransactionId,
    code: u16,
    reason: &str,
    unknown: Vec<stun_codec::AttributeType>,
) -> Option<Vec<u8>> {
    let mut r = super::error_message::<Attribute>(BINDING, transaction, code, reason, unknown);
    if let Ok(software) = Software::new("postsock".to_string()) {
        r.add_attribute(software);
    }
    encode(r)
}

/// The reflexive address in a Binding success response to transaction `txid`; `None` for
/// anything else (another transaction, an error response, a malformed message).
pub fn reflexive_address(datagram: &[u8], txid: [u8; 12]) -> Option<SocketAddr> {
    let response = decode(datagram)?;
    if response.class() != MessageClass::SuccessResponse
        || response.method() != BINDING
        || response.transaction_id().as_bytes() != &txid
    {
        return None;
    }
    response
        .get_attribute::<XorMappedAddress>()
        .map(XorMappedAddress::address)
}

/// A connectivity check (RFC 8445 §7.2.2): a Binding request carrying `user` as USERNAME;
/// `None` if `user` does not fit one.
pub(crate) fn check_request(txid: [u8; 12], user: &str) -> Option<Vec<u8>> {
    let mut m = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    m.add_attribute(Username::new(user.to_string()).ok()?);
    encode(m)
}

/// The answer to `datagram` from `from` if it is a connectivity check carrying `user`: a
/// Binding success response with `from` as XOR-MAPPED-ADDRESS.
pub(crate) fn answer_check(datagram: &[u8], from: SocketAddr, user: &str) -> Option<Vec<u8>> {
    let m = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()?;
    if m.class() != MessageClass::Request || m.method() != BINDING {
        return None;
    }
    if m.get_attribute::<Username>().map(Username::name) != Some(user) {
        return None;
    }
    let mut r =
        Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, m.transaction_id());
    r.add_attribute(XorMappedAddress::new(from));
    encode(r)
}

#[cfg(test)]
mod check_tests {
    use super::*;

    #[test]
    fn checks_are_answered_only_with_the_pairing_username() {
        let from: SocketAddr = "192.0.2.1:4000".parse().expect("address");
        let check = check_request([3; 12], "postsock:abc").expect("encodes");
        let answer = answer_check(&check, from, "postsock:abc").expect("answered");
        assert_eq!(reflexive_address(&answer, [3; 12]), Some(from));
        assert_eq!(
            answer_check(&check, from, "postsock:xyz"),
            None,
            "a stranger's check"
        );
        assert_eq!(
            answer_check(&binding_request([3; 12]), from, "postsock:abc"),
            None
        );
        assert_eq!(
            answer_check(&answer, from, "postsock:abc"),
            None,
            "a response"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::rfc5389::attributes::{ErrorCode, UnknownAttributes};

    #[test]
    fn a_binding_request_is_what_the_codec_would_write() {
        let txid = [7; 12];
        let by_codec = encode(Message::<Attribute>::new(
            MessageClass::Request,
            BINDING,
            TransactionId::new(txid),
        ));
        assert_eq!(Some(binding_request(txid)), by_codec);
    }

    #[test]
    fn request_answer_round_trip() {
        let txid = [9u8; 12];
        let request = binding_request(txid);
        assert!(is_stun(&request));
        let from: SocketAddr = "203.0.113.7:40001".parse().expect("addr");
        let reply = answer(&request, from).expect("an answer");
        assert_eq!(reflexive_address(&reply, txid), Some(from));
        // Another transaction's answer is not ours.
        assert_eq!(reflexive_address(&reply, [1u8; 12]), None);
        // A response is not a request.
        assert_eq!(answer(&reply, from), None);
        let v6: SocketAddr = "[2001:db8::5]:7".parse().expect("addr");
        let reply = answer(&request, v6).expect("an answer");
        assert_eq!(reflexive_address(&reply, txid), Some(v6));
    }

    #[test]
    fn malformed_messages_are_not_answered() {
        let from: SocketAddr = "198.51.100.1:9".parse().expect("addr");
        let good = binding_request([3u8; 12]);
        let mut bad_cookie = good.clone();
        bad_cookie[4] ^= 0xff;
        let mut bad_length = good.clone();
        bad_length[3] = 200;
        let mut truncated_attribute = good.clone();
        truncated_attribute[3] = 8;
        truncated_attribute.extend_from_slice(&[0x80, 0x22, 0x00, 0x20]);
        let oversized = [good.clone(), vec![0u8; 2000]].concat();
        for (what, bytes) in [
            ("empty", vec![]),
            ("short", good[..19].to_vec()),
            ("bad cookie", bad_cookie),
            ("bad length", bad_length),
            ("oversized", oversized),
            ("QUIC long header", vec![0xc0; 40]),
        ] {
            assert_eq!(answer(&bytes, from), None, "{what}");
        }
        // A Binding request whose header is sound but whose attributes are not: 400.
        let reply = answer(&truncated_attribute, from).expect("an answer");
        let reply = decode(&reply).expect("STUN");
        assert_eq!(reply.class(), MessageClass::ErrorResponse);
        assert_eq!(
            reply.get_attribute::<ErrorCode>().map(|e| e.code()),
            Some(400)
        );
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let from: SocketAddr = "198.51.100.1:9".parse().expect("addr");
        let mut request = binding_request([4u8; 12]);
        // PRIORITY (0x0024, ICE) is not in this server's set; ICE-CONTROLLED (0x8029) is
        // optional: only the first is listed.
        request[3] = 20;
        request.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        request.extend_from_slice(&[0x80, 0x29, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 1]);
        let reply = decode(&answer(&request, from).expect("an answer")).expect("STUN");
        assert_eq!(
            reply.get_attribute::<ErrorCode>().map(|e| e.code()),
            Some(420)
        );
        let listed: Vec<u16> = reply
            .get_attribute::<UnknownAttributes>()
            .map(|u| u.unknowns().iter().map(|t| t.as_u16()).collect())
            .unwrap_or_default();
        assert_eq!(listed, vec![0x0024]);
        // Only optional unknown attributes: answered as usual.
        let mut optional = binding_request([5u8; 12]);
        optional[3] = 12;
        optional.extend_from_slice(&[0x80, 0x29, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            reflexive_address(&answer(&optional, from).expect("answer"), [5u8; 12]),
            Some(from)
        );
    }
}
