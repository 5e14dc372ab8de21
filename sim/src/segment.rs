//! TCP segments as the simulator carries them: whole IPv4 packets (header, TCP header,
//! payload, real checksums), sent as the payload of a turmoil datagram to a host's or
//! gateway's [`TCP_PORT`]. Hosts make and take them with smoltcp (`tcp.rs`); gateways read
//! and rewrite their addresses and ports here (that is the translation), and middleboxes and
//! NATs answer with resets made here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber,
};

/// The turmoil port every host interface (its index added) and every gateway receives IP
/// packets carrying TCP on. turmoil's own TCP is not used.
pub const TCP_PORT: u16 = 4790;

/// The turmoil port a host's IPv6 TCP stack receives IPv6 packets carrying TCP on (through
/// the IPv6 core).
pub const TCP6_PORT: u16 = TCP_PORT + 16;

/// What a gateway needs to know of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) syn: bool,
    pub(crate) ack: bool,
    pub(crate) rst: bool,
    pub(crate) fin: bool,
    seq: u32,
    ack_number: u32,
    /// Sequence space it occupies: payload, plus one for SYN and for FIN.
    len: u32,
}

/// The IP version of a packet, from its first nibble.
fn version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

/// The addresses and payload of an IPv4 or IPv6 packet carrying TCP (IPv6: no extension
/// headers, as smoltcp sends none).
fn tcp_of(packet: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    match version(packet)? {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then_some(())?;
            let len = usize::from(ip.total_len()).min(packet.len());
            let hl = usize::from(ip.header_len());
            Some((
                ip.src_addr().into(),
                ip.dst_addr().into(),
                packet.get(hl..len)?,
            ))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then_some(())?;
            let len = (40 + usize::from(ip.payload_len())).min(packet.len());
            Some((
                ip.src_addr().into(),
                ip.dst_addr().into(),
                packet.get(40..len)?,
            ))
        }
        _ => None,
    }
}

/// Reads the addresses, ports and flags of an IPv4 or IPv6 packet carrying TCP; `None` if
/// it is anything else or malformed.
pub(crate) fn parse(packet: &[u8]) -> Option<Segment> {
    let (src_ip, dst_ip, payload) = tcp_of(packet)?;
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let payload = tcp.payload().len() as u32;
    Some(Segment {
        src: SocketAddr::new(src_ip, tcp.src_port()),
        dst: SocketAddr::new(dst_ip, tcp.dst_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        seq: tcp.seq_number().0 as u32,
        ack_number: tcp.ack_number().0 as u32,
        len: payload + u32::from(tcp.syn()) + u32::from(tcp.fin()),
    })
}

fn v4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// Rewrites the source and/or destination address and port of a TCP/IPv4 packet and
/// recomputes both checksums, as a NAT does. `false` if it is not such a packet.
pub(crate) fn rewrite(packet: &mut [u8], src: Option<SocketAddr>, dst: Option<SocketAddr>) -> bool {
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut *packet) else {
        return false;
    };
    if let Some(a) = src.and_then(v4) {
        ip.set_src_addr(a);
    }
    if let Some(a) = dst.and_then(v4) {
        ip.set_dst_addr(a);
    }
    ip.fill_checksum();
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else {
        return false;
    };
    if let Some(a) = src {
        tcp.set_src_port(a.port());
    }
    if let Some(a) = dst {
        tcp.set_dst_port(a.port());
    }
    tcp.fill_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
    true
}

/// The reset answering `seg` (RFC 9293 §3.10.7.1), sent from its destination back to its
/// source: a segment with ACK is answered at its acknowledgement number, one without
/// acknowledges it. `None` for a reset (never answered) or a non-IPv4 segment.
pub(crate) fn reset_for(seg: &Segment) -> Option<Vec<u8>> {
    if seg.rst {
        return None;
    }
    let (src, dst) = (v4(seg.dst)?, v4(seg.src)?);
    let (seq, ack) = if seg.ack {
        (seg.ack_number, None)
    } else {
        (0, Some(seg.seq.wrapping_add(seg.len)))
    };
    let tcp = TcpRepr {
        src_port: seg.dst.port(),
        dst_port: seg.src.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    ip_packet(
        src.into(),
        dst.into(),
        IpProtocol::Tcp,
        tcp.buffer_len(),
        |payload, caps| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(payload),
                &IpAddress::Ipv4(src),
                &IpAddress::Ipv4(dst),
                caps,
            );
        },
    )
}

/// An IPv4 or IPv6 packet from `src` to `dst` carrying `payload_len` bytes of `protocol`,
/// which `fill` writes (with the checksum capabilities to use); an IPv4 header's checksum is
/// computed. `None` when the two addresses are of different versions.
pub(crate) fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8], &ChecksumCapabilities),
) -> Option<Vec<u8>> {
    if src.is_ipv4() != dst.is_ipv4() {
        return None;
    }
    let ip = IpRepr::new(src.into(), dst.into(), protocol, payload_len, 64);
    let mut out = vec![0u8; ip.buffer_len()];
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut out[..], &caps);
    fill(&mut out[ip.header_len()..], &caps);
    Some(out)
}

/// The destination address of an IPv4 or IPv6 packet (where a host sends it).
pub(crate) fn destination(packet: &[u8]) -> Option<IpAddr> {
    match version(packet)? {
        4 => Ipv4Packet::new_checked(packet)
            .ok()
            .map(|p| p.dst_addr().into()),
        6 => Ipv6Packet::new_checked(packet)
            .ok()
            .map(|p| p.dst_addr().into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> Vec<u8> {
        let seg = Segment {
            src: "10.0.0.2:40000".parse().expect("addr"),
            dst: "192.0.2.1:443".parse().expect("addr"),
            syn: true,
            ack: false,
            rst: false,
            fin: false,
            seq: 1000,
            ack_number: 0,
            len: 1,
        };
        // A reset of a reset-answer is a valid TCP/IPv4 packet to test parsing with.
        reset_for(&seg).expect("reset")
    }

    #[test]
    fn a_reset_answers_a_syn_and_parses_back() {
        let rst = parse(&syn()).expect("parses");
        assert!(rst.rst && rst.ack && !rst.syn);
        assert_eq!(rst.src, "192.0.2.1:443".parse().expect("addr"));
        assert_eq!(rst.dst, "10.0.0.2:40000".parse().expect("addr"));
        assert_eq!(rst.ack_number, 1001, "acknowledges the SYN");
        assert_eq!(reset_for(&rst), None, "a reset is never answered");
    }

    #[test]
    fn rewriting_keeps_checksums_valid() {
        let mut p = syn();
        let to: SocketAddr = "203.0.113.7:20000".parse().expect("addr");
        assert!(rewrite(&mut p, None, Some(to)));
        let ip = Ipv4Packet::new_checked(&p[..]).expect("ip");
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert_eq!(parse(&p).expect("parses").dst, to);
        assert_eq!(destination(&p), Some(to.ip()));
        assert_eq!(parse(b"not a packet"), None);
    }
}
