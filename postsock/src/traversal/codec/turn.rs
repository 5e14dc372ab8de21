//! The TURN wire format: STUN messages with RFC 5389 and RFC 8656 attributes (the
//! `stun_codec` crate, one attribute set), ChannelData, Send and Data indications, and the
//! classification of what a TURN server sends a client.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use stun_codec::define_attribute_enums;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm, Software,
    UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{DATA, SEND};
use stun_codec::rfc8656::attributes::RequestedAddressFamily;
use stun_codec::{Message, MessageClass, Method, TransactionId};

define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        Fingerprint,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport,
        DontFragment,
        EvenPort,
        ReservationToken,
        RequestedAddressFamily
    ]
);

/// The protocol number of UDP in REQUESTED-TRANSPORT.
pub(crate) const UDP: u8 = 17;

/// Encodes `message`; `None` if it cannot be (then nothing is sent).
pub(crate) fn encode(message: Message<Attribute>) -> Option<Vec<u8>> {
    super::encode(message)
}

/// Largest TURN message accepted: Send and Data indications carry whole datagrams, up to the
/// largest UDP payload (as coturn relays them), not STUN's 548 bytes.
pub const MAX_MESSAGE: usize = 65_507;

/// Decodes a STUN/TURN message; `None` if it is not one (or is larger than [`MAX_MESSAGE`]).
pub(crate) fn decode(datagram: &[u8]) -> Option<Message<Attribute>> {
    super::decode(datagram, MAX_MESSAGE)
}

/// [`decode`], telling a STUN message with malformed attributes (`Err`) from non-STUN.
pub(crate) fn decode_or_broken(
    datagram: &[u8],
) -> Option<Result<Message<Attribute>, super::Broken>> {
    super::decode_or_broken(datagram, MAX_MESSAGE)
}

/// Whether `datagram` starts like ChannelData (RFC 7983: first byte 64 to 79).
pub fn is_channel_data(datagram: &[u8]) -> bool {
    datagram.len() >= 4 && (0x40..=0x4F).contains(&datagram[0])
}

/// ChannelData (RFC 8656 §12.4): channel number, length, the data.
pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The channel number and the data of a ChannelData message; `None` if it is malformed (a
/// number outside 0x4000–0x4FFF, or a length beyond the datagram).
pub fn parse_channel_data(datagram: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(datagram) {
        return None;
    }
    let channel = u16::from_be_bytes([datagram[0], datagram[1]]);
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if !(ChannelNumber::MIN..=ChannelNumber::MAX).contains(&channel) {
        return None;
    }
    datagram.get(4..4 + len).map(|d| (channel, d))
}

/// A Send (client → server) or Data (server → client) indication carrying `data` for `peer`.
/// `None` if `data` does not fit a DATA attribute.
pub(crate) fn indication(
    method: Method,
    txid: [u8; 12],
    peer: SocketAddr,
    data: &[u8],
) -> Option<Vec<u8>> {
    let mut m = Message::new(MessageClass::Indication, method, TransactionId::new(txid));
    m.add_attribute(XorPeerAddress::new(peer));
    m.add_attribute(Data::new(data.to_vec()).ok()?);
    encode(m)
}

/// A Send indication: what a client sends the server to relay `data` to `peer`; `None` if
/// `data` does not fit one.
pub fn send_indication(txid: [u8; 12], peer: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    indication(SEND, txid, peer, data)
}

/// What a datagram from our TURN server is.
#[derive(Debug)]
pub(crate) enum FromServer {
    /// Relayed data from a peer.
    Peer(SocketAddr, Vec<u8>),
    /// A response (or anything else STUN) for the TURN client.
    Control,
    /// Nothing usable (unknown channel, malformed).
    Drop,
}

/// Classifies a datagram that came from the TURN server; `incoming` maps the channel
/// numbers the server may use to their peers.
pub(crate) fn from_server(datagram: &[u8], incoming: &BTreeMap<u16, SocketAddr>) -> FromServer {
    if is_channel_data(datagram) {
        return match parse_channel_data(datagram) {
            Some((ch, data)) => match incoming.get(&ch) {
                Some(peer) => FromServer::Peer(*peer, data.to_vec()),
                None => FromServer::Drop,
            },
            None => FromServer::Drop,
        };
    }
    match decode(datagram) {
        Some(m) if m.class() == MessageClass::Indication && m.method() == DATA => {
            let peer = m.get_attribute::<XorPeerAddress>().map(|a| a.address());
            let data = m.get_attribute::<Data>().map(|d| d.data().to_vec());
            match (peer, data) {
                (Some(p), Some(d)) => FromServer::Peer(p, d),
                _ => FromServer::Drop,
            }
        }
        Some(_) => FromServer::Control,
        None => FromServer::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::rfc5766::methods::ALLOCATE;

    fn peer() -> SocketAddr {
        "198.51.100.7:4242".parse().expect("addr")
    }

    #[test]
    fn channel_data_round_trips_and_malformed_is_refused() {
        let wire = channel_data(0x4001, b"quic bytes");
        assert_eq!(
            parse_channel_data(&wire),
            Some((0x4001, &b"quic bytes"[..]))
        );
        // Padding after the data (RFC 8656 §12.5 over TCP) is ignored.
        let padded = [wire.clone(), vec![0, 0]].concat();
        assert_eq!(
            parse_channel_data(&padded),
            Some((0x4001, &b"quic bytes"[..]))
        );
        let mut long = wire.clone();
        long[3] += 1;
        assert_eq!(
            parse_channel_data(&long),
            None,
            "length beyond the datagram"
        );
        assert_eq!(parse_channel_data(&wire[..3]), None, "truncated header");
        assert_eq!(
            parse_channel_data(b"\x00\x01\x00\x00"),
            None,
            "not ChannelData"
        );
    }

    #[test]
    fn what_the_server_sends_is_unwrapped_or_dropped_never_misread() {
        let incoming = BTreeMap::from([(0x4000, peer())]);
        // ChannelData on a bound channel, and a Data indication: the peer's datagram.
        match from_server(&channel_data(0x4000, b"hi"), &incoming) {
            FromServer::Peer(p, d) => assert_eq!((p, d.as_slice()), (peer(), &b"hi"[..])),
            other => panic!("{other:?}"),
        }
        match from_server(
            &indication(DATA, [1; 12], peer(), b"yo").expect("fits"),
            &incoming,
        ) {
            FromServer::Peer(p, d) => assert_eq!((p, d.as_slice()), (peer(), &b"yo"[..])),
            other => panic!("{other:?}"),
        }
        // A response is for the TURN client.
        let mut response = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            ALLOCATE,
            TransactionId::new([2; 12]),
        );
        response.add_attribute(Lifetime::from_u32(600));
        assert!(matches!(
            from_server(&encode(response).expect("encodes"), &incoming),
            FromServer::Control
        ));
        // Dropped: an unbound channel, truncated ChannelData, a Data indication without its
        // data or peer, garbage, an oversized message.
        let no_data = {
            let mut m = Message::<Attribute>::new(
                MessageClass::Indication,
                DATA,
                TransactionId::new([3; 12]),
            );
            m.add_attribute(XorPeerAddress::new(peer()));
            encode(m).expect("encodes")
        };
        let no_peer = {
            let mut m = Message::<Attribute>::new(
                MessageClass::Indication,
                DATA,
                TransactionId::new([4; 12]),
            );
            m.add_attribute(Data::new(b"x".to_vec()).expect("data"));
            encode(m).expect("encodes")
        };
        // Data indications up to the largest UDP payload are fine (1600 bytes is); beyond it
        // is no datagram at all.
        let mut oversized = indication(DATA, [5; 12], peer(), &[7u8; 1600]).expect("fits");
        oversized.resize(MAX_MESSAGE + 1, 0);
        for (what, bytes) in [
            ("unbound channel", channel_data(0x4abc, b"hi")),
            (
                "truncated ChannelData",
                channel_data(0x4000, b"hi")[..5].to_vec(),
            ),
            ("Data without DATA", no_data),
            ("Data without a peer", no_peer),
            ("garbage", vec![0x02; 40]),
            ("oversized", oversized),
        ] {
            assert!(
                matches!(from_server(&bytes, &incoming), FromServer::Drop),
                "{what}"
            );
        }
    }
}
