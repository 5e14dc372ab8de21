//! Datagram I/O for STUN and TURN on a quinn-style socket, and the retransmitting
//! request/response transaction (RFC 8489 §6.2.1) both use.

use std::io::{self};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::net::{AsyncUdpSocket, Net};
use crate::{Error, Result};

use super::demux::Demux;
pub use crate::net::{recv_from, send_to};

/// Retransmission timing of a Binding transaction (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first retransmission timeout; it doubles after each request.
    pub rto: Duration,
    /// How many requests in all (`Rc`).
    pub requests: u32,
    /// After the last request, wait this many RTOs (`Rm`) for the answer.
    pub last_wait: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rto: Duration::from_millis(500),
            requests: 7,
            last_wait: 16,
        }
    }
}

/// Where the answers of a STUN transaction come from: a plain socket (every datagram is
/// read), a [`Demux`] (its STUN side), or what a demultiplexer hands a TURN client (every
/// message from its server).
#[derive(Debug)]
pub enum Answers<'a> {
    /// Read the socket directly.
    Socket(&'a dyn AsyncUdpSocket),
    /// Read what a demultiplexer set aside.
    Demux(&'a Demux),
    /// Messages from the TURN server at the address given.
    Relay(&'a mut mpsc::UnboundedReceiver<Bytes>, SocketAddr),
}

impl Answers<'_> {
    async fn next(&mut self) -> io::Result<(SocketAddr, Bytes)> {
        match self {
            Answers::Socket(s) => recv_from(*s).await,
            Answers::Demux(d) => d.recv_stun().await,
            Answers::Relay(rx, server) => match rx.recv().await {
                Some(data) => Ok((*server, data)),
                None => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TURN client's demultiplexer closed",
                )),
            },
        }
    }
}

/// One client transaction with `server` (RFC 8489 §6.2.1): sends `request` from `socket`
/// with `timing` until an answer from `server` that `accept` takes; `None` when none came.
pub(crate) async fn transaction<T>(
    socket: &dyn AsyncUdpSocket,
    answers: &mut Answers<'_>,
    server: SocketAddr,
    request: &[u8],
    timing: Timing,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Option<T>> {
    let mut rto = timing.rto;
    for sent in 1..=timing.requests.max(1) {
        send_to(socket, server, request)
            .await
            .map_err(|e| Error::io(format!("sending a STUN request to {server}"), e))?;
        let wait = if sent == timing.requests {
            timing.rto * timing.last_wait
        } else {
            rto
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(Error::io("reading a STUN answer", e)),
                Ok(Ok((from, data))) => {
                    if let Some(t) = (from == server).then(|| accept(&data)).flatten() {
                        return Ok(Some(t));
                    }
                }
            }
        }
        rto *= 2;
    }
    Ok(None)
}

/// A transaction id from the network's seeded RNG (simulator) or the secure random source.
pub fn transaction_id(net: &dyn Net) -> [u8; 12] {
    // Without entropy the transaction is merely guessable, not broken.
    crate::util::random(net).unwrap_or_default()
}
