//! One datagram at a time on a quinn-style socket ([`AsyncUdpSocket`]): what the STUN and
//! TURN code and the servers use outside QUIC.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};

use super::AsyncUdpSocket;

/// Sends one datagram on a quinn-style socket, waiting while it is not writable.
pub async fn send_to(socket: &dyn AsyncUdpSocket, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
    let transmit = Transmit {
        destination: dst,
        ecn: None,
        contents: data,
        segment_size: None,
        src_ip: None,
    };
    loop {
        match socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            other => return other,
        }
    }
}

/// Receives one datagram from a quinn-style socket.
pub async fn recv_from(socket: &dyn AsyncUdpSocket) -> io::Result<(SocketAddr, Bytes)> {
    let mut buf = vec![0u8; 65_536];
    let mut meta = [RecvMeta::default()];
    std::future::poll_fn(|cx| {
        let mut bufs = [IoSliceMut::new(&mut buf)];
        socket.poll_recv(cx, &mut bufs, &mut meta)
    })
    .await?;
    // A coalesced receive (GRO) carries several datagrams of `stride` bytes: keep the first.
    let len = meta[0].len.min(meta[0].stride.max(1));
    buf.truncate(len);
    Ok((meta[0].addr, buf.into()))
}
