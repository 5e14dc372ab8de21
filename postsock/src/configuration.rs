//! [`Configuration`]: how a carrier or listener behaves — protocols, selection properties,
//! path policy, security, timers, buffers, the association store.

use std::sync::Arc;
use std::time::Duration;

use crate::{Protocol, Security, TransportProperties};

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
    /// Policies (a PIB, [`crate::policy`]) applied to each carrier this configuration
    /// initiates, before protocols are selected; `None`: none.
    pub policies: Option<Arc<crate::PolicySet>>,
    /// The application's name, for policies that match on it.
    pub application: Option<String>,
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
            policies: None,
            application: None,
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
