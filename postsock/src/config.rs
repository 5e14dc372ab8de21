//! What the application asks for: protocols, security, limits, and whom it talks to.
//!
//! Configuration is plain data with defaults; the stack reads it when a carrier is initiated
//! or a listener bound.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    /// Where TLS secrets are logged (NSS key log format, for Wireshark), if anywhere. Off by
    /// default; it gives whoever reads the log the plaintext of every connection.
    pub key_log: Option<Arc<dyn rustls::KeyLog>>,
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
