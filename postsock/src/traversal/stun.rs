//! STUN (RFC 8489) Binding: learning one's server-reflexive address, and serving it.
//!
//! The message codec is the `stun_codec` crate (RFC 5389/8489 and the TURN attributes, which
//! the relay client will need). On top of it:
//!
//! - [`binding`]: a client transaction on any datagram socket [`Net`] gives: a Binding request
//!   retransmitted with RFC 8489 §6.2.1 timing (RTO doubling from `rto`, `Rc` requests), whose
//!   success response's XOR-MAPPED-ADDRESS is the address the server saw — behind a NAT, the
//!   NAT's public mapping.
//! - [`StunServer`]: answers every well-formed Binding request with the source address it came
//!   from; drops and counts everything else (malformed, oversized, responses, other methods).
//!   `postsock stun-server` runs it on real sockets; the simulator runs the same code.
//! - [`Demux`]: RFC 7983 demultiplexing on one socket. STUN messages start with a byte of 0
//!   to 3, QUIC packets with one of 64 to 127 (or above 127 for long headers), so a QUIC
//!   endpoint and STUN connectivity checks can share the socket the peer sees. [`Demux`]
//!   hands quinn everything else and keeps STUN for itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::net::{AsyncUdpSocket, Net};
use crate::ConnectionError;
use crate::{Error, Result};

pub use super::codec::stun::{answer, binding_request, is_stun, reflexive_address, MAX_MESSAGE};
pub use super::demux::{Demux, Via};
pub(crate) use super::transaction::transaction;
pub use super::transaction::{recv_from, send_to, transaction_id, Answers, Timing};

/// One Binding transaction to `server` from `socket`: the server-reflexive address (the
/// address the server saw the request come from).
pub async fn binding(
    socket: &dyn AsyncUdpSocket,
    mut answers: Answers<'_>,
    server: SocketAddr,
    txid: [u8; 12],
    timing: Timing,
) -> Result<SocketAddr> {
    let request = binding_request(txid);
    let accept = |data: &[u8]| reflexive_address(data, txid);
    transaction(socket, &mut answers, server, &request, timing, accept)
        .await?
        .ok_or_else(|| {
            Error::from(ConnectionError::NoStunAnswer {
                server,
                requests: timing.requests,
            })
        })
}

/// What a [`StunServer`] did.
#[derive(Debug, Default)]
pub struct StunStats {
    answered: AtomicU64,
    dropped: AtomicU64,
}

impl StunStats {
    /// Binding requests answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
    /// Datagrams dropped: malformed, oversized, not a Binding request.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A server running in a task of its own: where it listens and what it has done (`S`, its
/// statistics). Dropping it stops it.
#[derive(Debug)]
pub struct Served<S> {
    local: SocketAddr,
    stats: Arc<S>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Served<S> {
    pub(crate) fn new(local: SocketAddr, stats: Arc<S>, task: tokio::task::JoinHandle<()>) -> Self {
        Served { local, stats, task }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it has done so far.
    pub fn stats(&self) -> Arc<S> {
        self.stats.clone()
    }

    /// Serves until the task ends (it does not, unless the socket fails).
    pub async fn run(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }
}

impl<S> Drop for Served<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a server's UDP socket at `local`; returns it and the address it got.
pub(crate) async fn bind_server_socket(
    net: &dyn Net,
    local: SocketAddr,
) -> Result<(Arc<dyn AsyncUdpSocket>, SocketAddr)> {
    let socket = net
        .bind_udp(local)
        .await
        .map_err(|e| Error::io(format!("binding UDP {local}"), e))?;
    let bound = socket
        .local_addr()
        .map_err(|e| Error::io(format!("reading the address bound for {local}"), e))?;
    Ok((socket, bound))
}

/// A STUN server (Binding only, no authentication: RFC 8489 §12's basic server).
pub type StunServer = Served<StunStats>;

impl StunServer {
    /// Binds at `local` through `net` and starts answering.
    pub async fn bind(net: &dyn Net, local: SocketAddr) -> Result<Self> {
        let (socket, local) = bind_server_socket(net, local).await?;
        let stats = Arc::new(StunStats::default());
        let task = tokio::spawn(serve(socket, stats.clone()));
        Ok(Served::new(local, stats, task))
    }
}

async fn serve(socket: Arc<dyn AsyncUdpSocket>, stats: Arc<StunStats>) {
    loop {
        let Ok((from, data)) = recv_from(socket.as_ref()).await else {
            return;
        };
        match answer(&data, from) {
            Some(reply) => {
                if send_to(socket.as_ref(), from, &reply).await.is_ok() {
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "dropped a {} B datagram from {from}: not a Binding request",
                    data.len()
                );
            }
        }
    }
}
