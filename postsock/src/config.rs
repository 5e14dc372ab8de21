//! What the application asks for: protocols, security, limits, and whom it talks to.
//!
//! Configuration is plain data with defaults; the stack reads it when a carrier is initiated
//! or a listener bound.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TransportProperties;

/// A protocol stack postsock can run a transient on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// QUIC (RFC 9000) with TLS 1.3, via quinn. One message = one unidirectional stream.
    Quic,
    /// TLS 1.3 over TCP, via rustls. Messages are framed as in docs/WIRE.md.
    TlsTcp,
    /// Plain TCP with the same framing, no TLS. Selected only when the transport properties
    /// lower `security` from Require.
    Tcp,
}

impl Protocol {
    /// The stable lower-case name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Quic => "quic",
            Protocol::TlsTcp => "tls-tcp",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Quic => "QUIC",
            Protocol::TlsTcp => "TLS/TCP",
            Protocol::Tcp => "TCP (no TLS)",
        })
    }
}

/// A certificate chain and its private key: who a listener proves to be.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Security parameters. Certificate verification is always on: a client must be given the
/// roots it trusts, a listener its identity.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Root certificates a client trusts when verifying a server.
    pub trusted_roots: Vec<CertificateDer<'static>>,
    /// The name to verify the server certificate against; defaults to the remote's host name.
    pub server_name: Option<String>,
    /// The identity a listener presents.
    pub identity: Option<Identity>,
}

/// How a carrier or listener should behave. Construct with [`Configuration::default`] and the
/// `&mut Self` setters, or fill the public fields.
///
/// ```
/// use postsock::{Configuration, Protocol};
/// let mut config = Configuration::default();
/// config.protocols(&[Protocol::TlsTcp]).max_message_size(1 << 20);
/// assert_eq!(config.protocols, vec![Protocol::TlsTcp]);
/// ```
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Protocol stacks the stack may choose from, in order of preference when the transport
    /// properties do not decide.
    pub protocols: Vec<Protocol>,
    /// What the application needs; decides which of `protocols` are used and in what order.
    pub properties: TransportProperties,
    /// Security parameters.
    pub security: Arc<Security>,
    /// Largest message accepted or sent, in bytes.
    pub max_message_size: usize,
    /// How long establishment may take before it fails (the whole race).
    pub connect_timeout: Duration,
    /// How long a connection attempt runs before the next candidate starts racing it
    /// (RFC 8305's connection attempt delay; default 250 ms, never below 10 ms).
    pub attempt_delay: Duration,
    /// Bytes of messages a carrier may hold queued or unacknowledged before `send` waits
    /// (`try_send` reports it instead). Each message counts its size plus 64 bytes.
    pub send_buffer: usize,
    /// Events a carrier holds for an application that is not reading; when full the carrier
    /// stops reading from the network and flow control slows the peer.
    pub receive_queue: usize,
    /// Payload bytes a carrier holds for an application that is not reading (received
    /// messages and parts not yet taken), beyond which it stops reading from the network.
    pub receive_buffer: usize,
    /// Deliver messages in parts ([`crate::Event::ReceivedPartial`]) once at least this many
    /// bytes of one are waiting. `None`: whole messages only (unless `receive_max_length`).
    pub receive_min_incomplete: Option<usize>,
    /// Deliver no piece larger than this; longer messages come in parts.
    pub receive_max_length: Option<usize>,
    /// Where carriers remember remotes (racing outcomes, TLS sessions); `None`: nothing is
    /// remembered between carriers.
    pub associations: Option<Arc<crate::Associations>>,
    /// With an association that knows the path's RTT, race with an attempt delay of
    /// 2 × RTT when that is shorter than `attempt_delay` (never below 10 ms).
    pub adaptive_attempt_delay: bool,
    /// Which interfaces carriers use and how they move between them.
    pub paths: crate::PathPolicy,
    /// How long a carrier may stay dormant (no working path, or on a listener the client
    /// gone) before it ends with [`crate::Error::DormantTimeout`]. Default 30 s.
    pub dormant_timeout: Duration,
    /// An idle carrier proves its path at least this often (a QUIC PING, or an ACK frame on a
    /// TLS/TCP carrier that can continue); three silent intervals make a listener's carrier
    /// dormant. Default 1 s. The keepalives also hold NAT mappings open (UDP mappings idle
    /// out after as little as 30 s to 2 min). `None`: no keepalives (and silence is then no
    /// sign of a dead path) — an idle carrier behind a NAT loses its mapping.
    pub keepalive: Option<Duration>,
}

impl Default for Configuration {
    fn default() -> Self {
        Configuration {
            protocols: vec![Protocol::Quic, Protocol::TlsTcp, Protocol::Tcp],
            properties: TransportProperties::default(),
            security: Arc::new(Security::default()),
            max_message_size: 16 << 20,
            connect_timeout: Duration::from_secs(10),
            attempt_delay: Duration::from_millis(250),
            send_buffer: 4 << 20,
            receive_queue: 256,
            receive_buffer: 4 << 20,
            receive_min_incomplete: None,
            receive_max_length: None,
            associations: None,
            adaptive_attempt_delay: false,
            paths: crate::PathPolicy::default(),
            dormant_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(1)),
        }
    }
}

impl Configuration {
    /// Sets the allowed protocols, most preferred first.
    pub fn protocols(&mut self, protocols: &[Protocol]) -> &mut Self {
        self.protocols = protocols.to_vec();
        self
    }
    /// Sets the security parameters.
    pub fn security(&mut self, security: Security) -> &mut Self {
        self.security = Arc::new(security);
        self
    }
    /// Sets the maximum message size in bytes.
    pub fn max_message_size(&mut self, bytes: usize) -> &mut Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets the transport properties.
    pub fn properties(&mut self, properties: TransportProperties) -> &mut Self {
        self.properties = properties;
        self
    }
    /// Sets the send buffer limit in bytes.
    pub fn send_buffer(&mut self, bytes: usize) -> &mut Self {
        self.send_buffer = bytes;
        self
    }
    /// Sets partial delivery: parts once `min_incomplete` bytes wait, none above `max_length`.
    pub fn partial_delivery(
        &mut self,
        min_incomplete: Option<usize>,
        max_length: Option<usize>,
    ) -> &mut Self {
        self.receive_min_incomplete = min_incomplete;
        self.receive_max_length = max_length;
        self
    }
    /// The protocol stacks to try, best first (see [`crate::select`]).
    pub fn candidates(&self) -> crate::Result<Vec<Protocol>> {
        crate::establish::selection::select(&self.properties, &self.protocols)
    }
    /// Sets the establishment timeout.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }
}

/// The peer a carrier is initiated to: a host name (or literal address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// A name to resolve, or a literal IP address.
    pub host: String,
    /// The port QUIC (UDP) and TLS/TCP listen on.
    pub port: u16,
}

impl Remote {
    /// A remote by name and port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Remote {
            host: host.into(),
            port,
        }
    }

    /// A remote by socket address; the certificate name must then come from
    /// [`Security::server_name`].
    pub fn addr(addr: SocketAddr) -> Self {
        Remote {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}
