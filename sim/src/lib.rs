//! # sim — deterministic simulated networks for postsock
//!
//! Built on turmoil, which gives every host its own simulated tokio runtime and clock and a
//! full mesh of links with per-link latency. What turmoil lacks — NAT, gateways, loss and
//! bandwidth per access link, TCP that crosses them as packets — this crate adds as
//! an overlay, without forking any protocol logic: postsock reaches the simulated network only
//! through [`SimNet`], its implementation of `postsock::net::Net`.
//!
//! | module | owns |
//! |---|---|
//! | [`world`] | the topology spec and fault checks (`spec`), the shared state (`state`), building and driving the turmoil simulation |
//! | [`net`] | `SimNet`: datagram sockets and streams of one host |
//! | [`link`] | the access-link model (rate, drop-tail queue, loss): pure and seeded |
//! | [`overlay`] | the header that carries true addresses between a host and its gateway |
//! | `nat` | the NAT table (RFC 4787 mapping, filtering, ports, hairpin): pure |
//! | `gateway` | the gateway program: sockets per UDP mapping, TCP segment translation |
//! | `tcp` | real TCP (smoltcp) per host interface, as packets over the access link |
//! | `capture` | packets on every access link as pcap-ng (raw IPv4 and IPv6, simulated time) |
//! | `segment` | TCP/IP packets: parsing (IPv4 and IPv6), rewriting (NAT), resets |
//! | `v6core` | the IPv6 core: routes IPv6 datagrams between hosts (an overlay on turmoil) |
//! | [`rng`] | deriving every random stream from the run's one seed |
//!
//! Same spec + same seed ⇒ the same simulation, event for event. That needs the build flag
//! `--cfg tokio_unstable` (the workspace's `.cargo/config.toml` sets it): only then does
//! turmoil seed each host's tokio runtime, whose RNG decides, among other things, the order
//! in which `tokio::sync::watch` wakes its receivers.

#[cfg(not(tokio_unstable))]
compile_error!(
    "sim needs `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS environment \
     variable replaces it): without it tokio's RNG is not seeded from the run's seed and two \
     runs with one seed can differ"
);

mod capture;
mod gateway;
pub mod link;
mod nat;
pub mod net;
pub mod overlay;
pub mod rng;
mod segment;
mod tcp;
mod v6core;
pub mod world;

pub use link::{LinkParams, Verdict};
pub use net::SimNet;
pub use segment::TCP_PORT;
pub use tcp::TcpSocketStatus;
pub use world::{
    Dependence, DnsSpec, Fault, FaultError, FaultPart, GatewaySpec, HostSpec, InterfaceSpec,
    InterfaceStatus, IpVersions, LinkCounters, Middlebox, NatBehaviour, NatPreset, NatSpec,
    PortAssignment, World, WorldSpec, DEFAULT_INTERFACE, MAX_GROUP,
};

/// Locks `m`; a lock poisoned by a panicked task is taken as it is (the data behind every
/// mutex here is never left half-updated across a panic point).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The world specification is inconsistent.
    #[error("{0}")]
    Spec(String),
    /// A key of the world specification is invalid: `key` is its path in the scenario file
    /// (`host`, `1`, `link`, ... with array indices as numbers), so the file's parser can
    /// point at it.
    #[error("{message}")]
    Invalid {
        /// The key's path.
        key: Vec<String>,
        /// What is wrong.
        message: String,
    },
    /// A host program failed or the simulation exceeded its duration.
    #[error("simulation: {0}")]
    Host(String),
}
