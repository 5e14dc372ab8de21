//! The gateway program: address translation for the hosts behind a gateway.
//!
//! UDP: an inside host sends `[destination][payload]` to the gateway's overlay port. The
//! gateway keeps one public socket per inside (address, port) — an endpoint-independent,
//! port-preserving mapping — sends the payload from it, and wraps whatever arrives on it as
//! `[source][payload]` back to the inside socket (endpoint-independent filtering).
//!
//! TCP: an inside host connects to the overlay port; the destination travels with the SYN
//! (see [`WorldState::push_tcp_intent`]). The gateway connects onwards, waits as long as the
//! far SYN-ACK would take to come back, answers one status byte, then splices the two streams.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::net::{SPLICE_OK, SPLICE_REFUSED};
use crate::overlay::{self, OVERLAY_PORT};
use crate::world::{Middlebox, WorldState};

/// The gateway's middlebox (its policy lives in the world state, where faults change it)
/// with its per-flow datagram counts.
#[derive(Debug)]
struct Filter {
    state: Arc<WorldState>,
    gateway: String,
    /// Datagrams seen per (inside, remote) flow.
    flows: Mutex<BTreeMap<(SocketAddr, SocketAddr), u32>>,
}

impl Filter {
    fn policy(&self) -> Middlebox {
        self.state.middlebox(&self.gateway)
    }

    /// Whether a datagram of the flow (inside, remote) may pass; counts it.
    fn pass_udp(&self, inside: SocketAddr, remote: SocketAddr) -> bool {
        let p = &self.policy();
        if p.block_udp || p.block_udp_ports.contains(&remote.port()) {
            return false;
        }
        if let Some(limit) = p.udp_blackhole_after {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            let seen = flows.entry((inside, remote)).or_insert(0);
            if *seen >= limit {
                return false;
            }
            *seen += 1;
        }
        true
    }
}

/// Runs the gateway `name` until the simulation ends.
pub(crate) async fn run(state: Arc<WorldState>, name: String) -> turmoil::Result {
    let filter = Arc::new(Filter {
        state: state.clone(),
        gateway: name.clone(),
        flows: Mutex::new(BTreeMap::new()),
    });
    let ip = state
        .resolve(&name)
        .ok_or_else(|| format!("gateway `{name}` has no address"))?;
    let inside =
        Arc::new(turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, OVERLAY_PORT)).await?);
    let tcp = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, OVERLAY_PORT)).await?;
    tokio::spawn(splice_loop(state.clone(), ip, tcp, filter.clone()));

    type Mapping = (Arc<turmoil::net::UdpSocket>, tokio::task::JoinHandle<()>);
    let mut mappings: BTreeMap<SocketAddr, Mapping> = BTreeMap::new();
    // Ports stay marked as used after a reboot, so a rebound flow gets a new one.
    let mut used_ports: BTreeSet<u16> = BTreeSet::from([OVERLAY_PORT]);
    let mut epoch = state.nat_epoch(&name);
    let mut buf = vec![0u8; 65_600];
    loop {
        let (n, from) = inside.recv_from(&mut buf).await?;
        let now = state.nat_epoch(&name);
        if now != epoch {
            // The NAT rebooted: forget every mapping; replies to old ports go nowhere.
            epoch = now;
            for (_, (_, task)) in std::mem::take(&mut mappings) {
                task.abort();
            }
        }
        let Some((dst, payload)) = overlay::decode(&buf[..n]) else {
            continue;
        };
        if !filter.pass_udp(from, dst) {
            continue;
        }
        let public = match mappings.get(&from) {
            Some((s, _)) => s.clone(),
            None => {
                let socket = Arc::new(bind_public(from.port(), &mut used_ports).await?);
                let task = tokio::spawn(return_path(
                    socket.clone(),
                    inside.clone(),
                    from,
                    filter.clone(),
                    epoch,
                ));
                mappings.insert(from, (socket.clone(), task));
                socket
            }
        };
        let _ = public.send_to(payload, dst).await;
    }
}

/// Binds the public side of a new mapping, preserving the inside port when it is free.
async fn bind_public(
    wanted: u16,
    used: &mut BTreeSet<u16>,
) -> std::io::Result<turmoil::net::UdpSocket> {
    let mut port = wanted.max(1024);
    while used.contains(&port) {
        port = if port == u16::MAX { 1024 } else { port + 1 };
    }
    used.insert(port);
    turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await
}

/// Carries replies from the public socket of a mapping back to the inside host.
async fn return_path(
    public: Arc<turmoil::net::UdpSocket>,
    inside: Arc<turmoil::net::UdpSocket>,
    to: SocketAddr,
    filter: Arc<Filter>,
    epoch: u64,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, src)) = public.recv_from(&mut buf).await {
        // A mapping from before a reboot is gone: what arrives on it is dropped.
        if filter.state.nat_epoch(&filter.gateway) != epoch {
            return;
        }
        if filter.pass_udp(to, src) {
            let _ = inside.send_to(&overlay::encode(src, &buf[..n]), to).await;
        }
    }
}

async fn splice_loop(
    state: Arc<WorldState>,
    ip: IpAddr,
    listener: turmoil::net::TcpListener,
    filter: Arc<Filter>,
) {
    while let Ok((inside, peer)) = listener.accept().await {
        let Some(dst) = state.pop_tcp_intent(peer.ip(), ip) else {
            continue;
        };
        let policy = filter.policy();
        if policy.tcp_blackhole {
            // The SYN vanished: never answer, keep the inside end waiting.
            tokio::spawn(async move {
                let _held = inside;
                std::future::pending::<()>().await;
            });
            continue;
        }
        if policy.tcp_reset {
            // A reset comes back as fast as a SYN-ACK would have from the gateway.
            tokio::spawn(async move {
                let mut inside = inside;
                let _ = inside.write_u8(SPLICE_REFUSED).await;
            });
            continue;
        }
        tokio::spawn(splice(state.clone(), ip, inside, dst));
    }
}

async fn splice(
    state: Arc<WorldState>,
    ip: IpAddr,
    mut inside: turmoil::net::TcpStream,
    dst: SocketAddr,
) {
    let start = Instant::now();
    let rtt = state
        .one_way(ip, dst.ip())
        .map_or(Default::default(), |d| d * 2);
    match turmoil::net::TcpStream::connect(dst).await {
        Ok(mut outside) => {
            tokio::time::sleep_until(start + rtt).await;
            if inside.write_u8(SPLICE_OK).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
        }
        Err(_) => {
            tokio::time::sleep_until(start + rtt).await;
            let _ = inside.write_u8(SPLICE_REFUSED).await;
        }
    }
}
