//! The overlay header that carries a datagram's true address between a host and its gateway.
//!
//! turmoil cannot route or rewrite packets, so a host behind a gateway sends every datagram to
//! the gateway's overlay port with the real destination in front; the gateway sends the
//! payload on from its own socket (that is the address translation) and hands replies back
//! with the real source in front.
//!
//! ```text
//! +--------+-----------------------+-----------+---------
//! | family | address (4 or 16 B)   | port (BE) | payload
//! +--------+-----------------------+-----------+---------
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The UDP and TCP port a gateway listens on for its inside hosts.
pub const OVERLAY_PORT: u16 = 4789;

/// Prepends `addr` to `payload`.
pub fn encode(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 19);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a datagram into the address in front and the payload; `None` if malformed.
pub fn decode(datagram: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (ip, rest): (IpAddr, &[u8]) = match datagram.first()? {
        4 if datagram.len() >= 7 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(&datagram[1..5]);
            (Ipv4Addr::from(o).into(), &datagram[5..])
        }
        6 if datagram.len() >= 19 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&datagram[1..17]);
            (Ipv6Addr::from(o).into(), &datagram[17..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Some((SocketAddr::new(ip, port), &rest[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        for addr in ["192.168.0.9:4433", "[2001:db8::1]:53"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let wire = encode(addr, b"hello");
            assert_eq!(decode(&wire), Some((addr, &b"hello"[..])));
        }
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[4, 1, 2, 3]), None);
        assert_eq!(decode(&[5, 0, 0, 0, 0, 0, 0]), None);
        let empty = encode("10.0.0.1:1".parse().expect("addr"), b"");
        assert_eq!(decode(&empty).map(|(_, p)| p.len()), Some(0));
    }
}
