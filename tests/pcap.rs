//! `postsock run X --seed N --pcap DIR`: every access link's packets as pcap-ng with
//! simulated timestamps, and the run's TLS secrets as a key log, so that tshark decodes the
//! run's QUIC and TLS. tshark is installed (apt-get) if it is missing.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `name` (seed 1) with captures into a directory that goes when the result is
/// dropped, pass or fail.
fn capture(name: &str, tag: &str) -> common::TempDir {
    let dir = common::TempDir::new(&format!("pcap-{name}-{tag}"));
    let options = testbed::RunOptions {
        pcap: Some(dir.to_path_buf()),
    };
    let r = testbed::run_with(&common::scenario(name), 1, &options).report;
    assert!(r.passed, "{name}: {:?} {:?}", r.error, r.expectations);
    dir
}

/// (timestamp in µs, length) of every packet of a pcap-ng file, checking its block structure.
fn packets(path: &Path) -> Vec<(u64, usize)> {
    let data = std::fs::read(path).expect("read capture");
    let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(0), 0x0A0D_0D0A, "section header first");
    assert_eq!(word(8), 0x1A2B_3C4D, "little-endian section");
    let mut at = 0;
    let mut out = Vec::new();
    let mut interfaces = 0;
    while at < data.len() {
        let (kind, len) = (word(at), word(at + 4) as usize);
        assert_eq!(
            word(at + len - 4) as usize,
            len,
            "block length repeated at its end"
        );
        match kind {
            1 => {
                interfaces += 1;
                // LINKTYPE_RAW: IPv4 packets.
                assert_eq!(u16::from_le_bytes([data[at + 8], data[at + 9]]), 101);
            }
            6 => {
                let ts = (u64::from(word(at + 12)) << 32) | u64::from(word(at + 16));
                let caplen = word(at + 20) as usize;
                assert_eq!(data[at + 28] >> 4, 4, "an IPv4 packet");
                out.push((ts, caplen));
            }
            _ => {}
        }
        at += len;
    }
    assert_eq!(interfaces, 1);
    out
}

fn tshark() -> &'static str {
    common::ensure_installed("tshark", "tshark")
}

/// tshark's one-line summaries of the packets of `file` matching `filter`, decrypted with
/// the run's key log.
fn decode(dir: &Path, file: &str, filter: &str) -> Vec<String> {
    let out = Command::new(tshark())
        .arg("-r")
        .arg(dir.join(file))
        .arg("-o")
        .arg(format!(
            "tls.keylog_file:{}",
            dir.join("keys.log").display()
        ))
        .args(["-d", "tcp.port==4433,tls", "-Y", filter])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_quic_capture_decodes_with_its_key_log() {
    let dir = capture("echo/quic-lossy", "a");
    let keys = std::fs::read_to_string(dir.join("keys.log")).expect("key log");
    assert!(keys.contains("CLIENT_TRAFFIC_SECRET_0 "), "{keys}");
    // STREAM frames are inside 1-RTT packets: visible only when decrypted.
    let streams = decode(&dir, "client.pcapng", "quic.stream.stream_id");
    assert!(streams.len() > 50, "{streams:?}");
    assert!(streams.iter().any(|l| l.contains("STREAM(")), "{streams:?}");
    // Same seed: the same packets at the same simulated times, apart from key bytes.
    let again = capture("echo/quic-lossy", "b");
    for link in ["client.pcapng", "server.pcapng"] {
        let (a, b) = (packets(&dir.join(link)), packets(&again.join(link)));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{link}");
    }
}

#[test]
fn a_tls_over_tcp_capture_decodes_with_its_key_log() {
    let dir = capture("echo/tls-tcp", "a");
    // TLS 1.3's Finished is encrypted: visible only with the key log.
    let finished = decode(&dir, "client.pcapng", "tls.handshake.type == 20");
    assert_eq!(finished.len(), 2, "{finished:?}");
    // Real TCP: a SYN and a SYN-ACK on the client's link; application data records reach
    // the server.
    let syns = decode(&dir, "client.pcapng", "tcp.flags.syn == 1");
    assert_eq!(syns.len(), 2, "{syns:?}");
    let data = decode(&dir, "server.pcapng", "tls.app_data");
    assert!(!data.is_empty());
}

#[test]
fn ipv6_captures_decode_as_ipv6_with_the_key_log() {
    // TLS over TCP over IPv6: smoltcp's IPv6 segments, as they crossed the links.
    let dir = capture("echo/tls-tcp-ipv6", "a");
    let syns = decode(&dir, "client.pcapng", "ipv6 && tcp.flags.syn == 1");
    assert_eq!(syns.len(), 2, "{syns:?}");
    assert!(
        decode(&dir, "client.pcapng", "ip").is_empty(),
        "nothing over IPv4"
    );
    let finished = decode(&dir, "client.pcapng", "tls.handshake.type == 20");
    assert_eq!(finished.len(), 2, "{finished:?}");
    // QUIC over IPv6: UDP datagrams in IPv6 headers, decrypted.
    let dir = capture("blocking/ipv6-only", "a");
    let quic = decode(&dir, "client.pcapng", "ipv6 && quic.stream.stream_id");
    assert!(!quic.is_empty());
}
