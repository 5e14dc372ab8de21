//! Packet capture: every datagram and TCP segment crossing a host's access link, as a real
//! IPv4 packet with its simulated timestamp, written as pcap-ng (one file per link) for
//! Wireshark or tshark.
//!
//! A datagram is captured where it leaves the host onto its link and where it is handed to
//! the host off its link, with the addresses the host sees (inside addresses behind a NAT).
//! UDP datagrams get an IPv4 (or IPv6) and a UDP header (checksums computed); TCP segments
//! already are IP packets. Timestamps are simulated time since the start of the run.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smoltcp::wire::{IpAddress, IpProtocol, UdpPacket, UdpRepr};

/// The packets captured on each access link, in order.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    links: BTreeMap<String, Vec<(Duration, Vec<u8>)>>,
}

impl Capture {
    /// Records an IPv4 packet seen on `link` at simulated time `at`.
    pub(crate) fn packet(&mut self, link: &str, at: Duration, packet: Vec<u8>) {
        self.links
            .entry(link.to_owned())
            .or_default()
            .push((at, packet));
    }

    /// Records a UDP datagram from `src` to `dst` seen on `link` at `at`.
    pub(crate) fn datagram(
        &mut self,
        link: &str,
        at: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) {
        if let Some(packet) = udp_packet(src, dst, payload) {
            self.packet(link, at, packet);
        }
    }

    /// Writes `<dir>/<link>.pcapng` for every link that carried anything (a `/` in a link's
    /// name becomes `_`); returns the files written.
    pub(crate) fn write(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (link, packets) in &self.links {
            let path = dir.join(format!("{}.pcapng", link.replace('/', "_")));
            let mut out = io::BufWriter::new(std::fs::File::create(&path)?);
            write_pcapng(&mut out, link, packets)?;
            out.flush()?;
            written.push(path);
        }
        Ok(written)
    }
}

/// An IPv4/UDP or IPv6/UDP packet around `payload`; `None` for mixed families or an
/// oversized payload.
fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let udp_len = udp.header_len() + payload.len();
    if udp_len > usize::from(u16::MAX) - 20 {
        return None;
    }
    let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
    let fill = |buf: &mut [u8], caps: &smoltcp::phy::ChecksumCapabilities| {
        udp.emit(
            &mut UdpPacket::new_unchecked(buf),
            &s,
            &d,
            payload.len(),
            |b| b.copy_from_slice(payload),
            caps,
        );
    };
    crate::segment::ip_packet(src.ip(), dst.ip(), IpProtocol::Udp, udp_len, fill)
}

/// LINKTYPE_RAW: packets begin with their IP header.
const LINKTYPE_RAW: u16 = 101;

fn block(out: &mut impl Write, kind: u32, body: &[u8]) -> io::Result<()> {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&vec![0u8; padded - body.len()])?;
    out.write_all(&total.to_le_bytes())
}

/// A pcap-ng option: code, length, value padded to 32 bits.
fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    body.resize(body.len().div_ceil(4) * 4, 0);
}

/// One section, one raw-IPv4 interface named `link`, its packets (microsecond timestamps).
fn write_pcapng(
    out: &mut impl Write,
    link: &str,
    packets: &[(Duration, Vec<u8>)],
) -> io::Result<()> {
    // Section header: byte-order magic, version 1.0, unknown section length, shb_userappl.
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    option(&mut shb, 4, b"postsock simulator");
    option(&mut shb, 0, b"");
    block(out, 0x0A0D_0D0A, &shb)?;
    // Interface description: link type, snap length, if_name (timestamps in µs, the default).
    let mut idb = Vec::new();
    idb.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&0u32.to_le_bytes());
    option(&mut idb, 2, link.as_bytes());
    option(&mut idb, 0, b"");
    block(out, 1, &idb)?;
    for (at, packet) in packets {
        let us = at.as_micros() as u64;
        let mut epb = Vec::with_capacity(20 + packet.len());
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((us >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(us as u32).to_le_bytes());
        epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        epb.extend_from_slice(packet);
        block(out, 6, &epb)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::Ipv4Packet;

    use super::*;

    #[test]
    fn a_udp_packet_has_valid_checksums_and_the_file_its_blocks() {
        let src: SocketAddr = "10.0.0.2:5000".parse().expect("addr");
        let dst: SocketAddr = "192.0.2.1:4433".parse().expect("addr");
        let p = udp_packet(src, dst, b"hello").expect("packet");
        let ip = Ipv4Packet::new_checked(&p[..]).expect("ip");
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert_eq!(udp.payload(), b"hello");
        let mut file = Vec::new();
        write_pcapng(
            &mut file,
            "client",
            &[(Duration::from_millis(1500), p.clone())],
        )
        .expect("write");
        // Section header block, then interface description, then one enhanced packet.
        assert_eq!(&file[..4], &0x0A0D_0D0Au32.to_le_bytes());
        let shb_len = u32::from_le_bytes(file[4..8].try_into().expect("len")) as usize;
        assert_eq!(&file[shb_len..shb_len + 4], &1u32.to_le_bytes());
        let idb_len =
            u32::from_le_bytes(file[shb_len + 4..shb_len + 8].try_into().expect("len")) as usize;
        let epb = &file[shb_len + idb_len..];
        assert_eq!(&epb[..4], &6u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(epb[16..20].try_into().expect("ts")),
            1_500_000
        );
        assert_eq!(&epb[28..28 + p.len()], &p[..]);
        assert_eq!(file.len() % 4, 0);
    }
}
