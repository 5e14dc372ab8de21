//! The `Net` seam: the only way postsock reaches the network and the outside world.
//!
//! postsock never opens an OS socket itself. A carrier asks its [`Net`] to bind a datagram
//! socket (which QUIC drives through quinn's [`AsyncUdpSocket`]), to connect or listen on a
//! byte stream (which TLS runs over), to resolve names, and for entropy seeds. Two
//! implementations exist: [`TokioNet`] over the operating system, and the simulated network of
//! the `sim` crate. They are chosen at run time by handing a different `Arc<dyn Net>` to
//! [`Carrier::initiate`](crate::Carrier::initiate) or [`Listener::bind`](crate::Listener::bind).
//!
//! Time is read through `tokio::time` everywhere: in the simulator tokio's clock is the
//! simulated clock, on real sockets it is the monotonic clock.

pub mod datagram;
mod tokio_net;

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use datagram::{recv_from, send_to};
pub use quinn::AsyncUdpSocket;
use tokio::io::{AsyncRead, AsyncWrite};
pub use tokio_net::TokioNet;

/// A boxed, `Send` future, as returned by [`Net`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reliable, ordered byte stream (a TCP connection, real or simulated).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + Debug> ByteStream for T {}

/// A bound stream listener (a TCP listening socket, real or simulated).
pub trait StreamListener: Send + Sync + Debug {
    /// Waits for the next inbound stream; returns it with the peer's address.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn ByteStream>, SocketAddr)>>;
    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A network interface as the host sees it: what the path monitor reports to carriers.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    /// Its name (`wlan0`, `wifi`, `cell`...): what path preferences refer to.
    pub name: String,
    /// Its addresses; binding a socket to one sends through this interface.
    pub addrs: Vec<IpAddr>,
    /// Whether it is operationally up.
    pub up: bool,
    /// What the link layer knows of the path's quality, if anything.
    pub quality: Option<LinkQuality>,
}

/// Link-layer knowledge of an interface's path (the simulator knows it exactly; an OS
/// interface list does not say).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkQuality {
    /// One-way latency of the access link.
    pub latency: Duration,
    /// Loss probability of the access link.
    pub loss: f64,
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv6 (AAAA records).
    V6,
    /// IPv4 (A records).
    V4,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// `"ipv6"` or `"ipv4"`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V6 => "ipv6",
            Family::V4 => "ipv4",
        }
    }
}

/// The first of `addrs` of the other IP version than `peer`'s: where a carrier goes on when
/// `peer`'s version breaks.
pub(crate) fn other_version(addrs: &[SocketAddr], peer: SocketAddr) -> Option<SocketAddr> {
    addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() != peer.is_ipv4())
}

/// The network as postsock sees it. See the [module docs](self).
pub trait Net: Send + Sync + Debug {
    /// Binds a datagram socket at `local` (port 0 picks a free port).
    fn bind_udp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Arc<dyn AsyncUdpSocket>>>;
    /// Opens a byte stream to `remote`; returns once the connection is established.
    fn connect_tcp(&self, remote: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>>;
    /// Opens a byte stream to `remote` from local address `local` (through the interface
    /// that owns it). Networks that cannot choose an interface say so with `Unsupported`.
    fn connect_tcp_from(
        &self,
        local: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        let _ = (local, remote);
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this network cannot choose the interface of a stream",
            ))
        })
    }
    /// The host's interfaces now. Empty when the network cannot tell (one default path).
    fn interfaces(&self) -> Vec<Interface> {
        Vec::new()
    }
    /// Resolves when the interface list may have changed (the path monitor then reads it
    /// again): at once on an OS or simulator notification, or after a polling interval.
    fn interfaces_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// Listens for byte streams at `local`.
    fn listen_tcp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn StreamListener>>>;
    /// Resolves `name` to addresses with `port`. Literal IP addresses resolve to themselves.
    fn resolve(&self, name: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>>;
    /// Resolves `name` to the addresses of one family (an AAAA or an A query), with `port`.
    /// Happy Eyeballs sends both at once and starts racing on the first useful answer
    /// (RFC 8305 §3). The default filters
    /// [`resolve`](Self::resolve)'s answer; a name with no address of the family is an empty
    /// list, not an error.
    fn resolve_family(
        &self,
        name: &str,
        port: u16,
        family: Family,
    ) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let all = self.resolve(name, port);
        Box::pin(async move {
            Ok(all
                .await?
                .into_iter()
                .filter(|a| Family::of(a.ip()) == family)
                .collect())
        })
    }
    /// A 32-byte seed for a protocol engine's random number generator, or `None` to let the
    /// engine draw from the operating system. Deterministic networks return seeded bytes so
    /// that connection IDs and similar choices repeat exactly.
    fn rng_seed(&self) -> Option<[u8; 32]> {
        None
    }
    /// The calendar TLS judges certificates and session tickets by (their validity, a
    /// ticket's lifetime and age, 0-RTT's freshness check): the system's clock by default; a
    /// simulated network's own, so that a ticket ages in simulated time and runs repeat.
    fn tls_clock(&self) -> crate::transport::tls::Clock {
        crate::transport::tls::system_clock()
    }
    /// The runtime quinn uses for timers and tasks. Defaults to tokio's.
    fn quic_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }
}
