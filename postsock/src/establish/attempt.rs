//! One connection attempt: establishes one candidate (a protocol stack to an address from a
//! local path) into a [`Transient`], the protocol connection a carrier runs on.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::establish::association::{MaybeTls, TlsClients};
use crate::net::Net;
use crate::transport::{quic, stream as tls_tcp};
use crate::ConfigError;
use crate::{Configuration, Error, Protocol, Result};

/// An established transient, before it becomes a carrier.
pub(crate) enum Transient {
    /// A QUIC connection.
    Quic {
        conn: quinn::Connection,
        /// The client's endpoint (it must live as long as the connection).
        endpoint: Option<quinn::Endpoint>,
        /// Whether the handshake resumed a session, when known.
        resumed: Option<bool>,
        /// For a client connection in 0-RTT (usable before its handshake completes): whether
        /// the server accepts the early data.
        zero_rtt: Option<quinn::ZeroRttAccepted>,
        /// Bumped when the endpoint moves to another interface (restarts congestion control).
        epoch: quic::PathEpoch,
    },
    /// A connected byte stream (TLS or plain TCP).
    Stream {
        stream: Box<dyn StreamIo>,
        peer: SocketAddr,
        protocol: Protocol,
        /// Whether TLS resumed a session, once known (a client in early data learns it when
        /// its handshake completes).
        resumed: Arc<std::sync::OnceLock<bool>>,
        /// A client's stream still in TLS early data (see `tls_tcp::Attach::New`): whether
        /// the server accepts it, once known.
        early: Option<Arc<std::sync::OnceLock<bool>>>,
        /// An accepted resumable carrier's token (from the client's HELLO).
        token: Option<tls_tcp::Token>,
    },
}

/// A byte stream a transient can run on (TLS or plain TCP).
pub(crate) trait StreamIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> StreamIo for T {}

/// One connection attempt: establishes `protocol` to `addr` within the connect timeout.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn attempt(
    net: &dyn Net,
    protocol: Protocol,
    addr: SocketAddr,
    local: Option<IpAddr>,
    host: &str,
    config: &Configuration,
    endpoint: Option<(&quinn::Endpoint, &quic::PathEpoch)>,
    tls: &MaybeTls,
) -> Result<Transient> {
    let tls_for = |pick: fn(&TlsClients) -> Arc<rustls::ClientConfig>| {
        tls.as_ref()
            .map(pick)
            .ok_or_else(|| Error::from(ConfigError::NoTlsConfiguration))
    };
    let attempt = async {
        match protocol {
            Protocol::Quic => {
                // A handshake in which rustls verified no certificate resumed a session.
                let name = crate::transport::tls::server_name(&config.security, host)?
                    .to_str()
                    .into_owned();
                let verifications = || tls.as_ref().map(|t| t.quic_verifier.verifications(&name));
                let before = verifications();
                let tls = tls_for(|t| t.quic.clone())?;
                let (conn, ep, epoch) = match endpoint {
                    Some((ep, epoch)) => {
                        let conn = quic::connect_on(ep, addr, host, config, tls, epoch).await?;
                        (conn, ep.clone(), epoch.clone())
                    }
                    None => {
                        let (ep, conn, epoch) =
                            quic::connect(net, addr, local, host, config, tls).await?;
                        (conn, ep, epoch)
                    }
                };
                let resumed = before.map(|b| verifications() == Some(b));
                Ok(Transient::Quic {
                    conn,
                    endpoint: Some(ep),
                    resumed,
                    zero_rtt: None,
                    epoch,
                })
            }
            Protocol::TlsTcp => {
                let tls = tls_for(|t| t.tcp.clone())?;
                // A session whose ticket allows it starts in early data: the carrier's first
                // idempotent messages go with the ClientHello (1.5 RTT to the peer's
                // application instead of 2.5).
                let stream = tls_tcp::connect(net, addr, local, (host, true), config, tls).await?;
                let stream = tls_tcp::ClientEarly::new(stream);
                Ok(Transient::Stream {
                    early: stream.in_early_data().then(|| stream.early_accepted()),
                    resumed: stream.resumed(),
                    stream: Box::new(stream),
                    peer: addr,
                    protocol,
                    token: None,
                })
            }
            Protocol::Tcp => {
                let stream = tls_tcp::connect_plain(net, addr, local).await?;
                Ok(Transient::Stream {
                    stream: Box::new(stream),
                    peer: addr,
                    protocol,
                    resumed: Default::default(),
                    early: None,
                    token: None,
                })
            }
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            protocol,
            remote: addr,
            timeout_ms: config.connect_timeout.as_millis() as u64,
        }),
    }
}

/// A fresh carrier token: from the network's seeded RNG in the simulator, else from the
/// system's secure random source.
/// `None` when there is no secure random source: the carrier then cannot be continued.
pub(crate) fn new_token(net: &dyn Net) -> Option<tls_tcp::Token> {
    crate::util::random(net)
}
