//! The IPv6 core: the router between the IPv6 addresses of the world's hosts.
//!
//! turmoil gives every host one address, and one IP version for the whole simulation, so IPv6
//! runs as an overlay: a dual-stack or IPv6-only host sends each IPv6 datagram (after its
//! access link) to the core's overlay port as `[destination][payload]`; the core sends it on
//! to the host owning the destination address, to the destination port, as
//! `[source][payload]` with the sender's IPv6 address and port. What is addressed to no
//! host, or comes from or goes to a host whose IPv6 is black-holed, is dropped. The overlay
//! header is not on the simulated wire: links count an IPv6 and a UDP header (48 bytes) per
//! datagram instead.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::overlay::{self, OVERLAY_PORT};
use crate::world::state::WorldState;

/// Runs the core until the simulation ends.
pub(crate) async fn run(state: Arc<WorldState>) -> turmoil::Result {
    let socket = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, OVERLAY_PORT)).await?;
    let mut buf = vec![0u8; 65_600];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let Some(sender) = state.name_of(from.ip()).and_then(|n| state.nodes.get(n)) else {
            continue;
        };
        let Some(src) = sender.ipv6 else { continue };
        let Some((dst, payload)) = overlay::decode(&buf[..n]) else {
            continue;
        };
        let Some(receiver) = state.v6_owner(dst.ip()) else {
            continue;
        };
        let broken = |n: &crate::world::state::Node| {
            n.ipv6_blackhole.load(std::sync::atomic::Ordering::Relaxed)
        };
        if broken(sender) || broken(receiver) {
            continue;
        }
        let framed = overlay::encode(SocketAddr::new(src, from.port()), payload);
        let _ = socket
            .send_to(&framed, SocketAddr::new(receiver.ip, dst.port()))
            .await;
    }
}
