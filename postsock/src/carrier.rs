//! Carriers: the application's handle to a peer.
//!
//! A carrier owns one transient at a time. `send` hands a message to the transient and returns
//! its [`MessageId`]; `receive` yields messages the peer sent, in arrival order; `close` waits
//! until everything sent has reached the peer's transport, then ends the transient.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::net::Net;
use crate::transport::{quic, tls_tcp, Inbound, TransientTx};
use crate::{Configuration, Error, Message, MessageId, Protocol, Received, Remote, Result};

/// The application's handle to a peer. See the [crate docs](crate) for an example.
#[derive(Debug)]
pub struct Carrier {
    protocol: Protocol,
    peer: SocketAddr,
    tx: TransientTx,
    rx: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    reader: JoinHandle<()>,
    max_message_size: usize,
    // Keeps a client's QUIC endpoint (and its socket) alive as long as the carrier.
    _endpoint: Option<quinn::Endpoint>,
}

impl Carrier {
    /// Initiates a carrier to `remote` over `net`, using the first protocol of
    /// `config.protocols` and trying the resolved addresses in order.
    pub async fn initiate(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
    ) -> Result<Self> {
        let protocol = *config
            .protocols
            .first()
            .ok_or_else(|| Error::Config("no protocol allowed".into()))?;
        let addrs = net
            .resolve(&remote.host, remote.port)
            .await
            .map_err(|source| Error::Resolve {
                name: remote.host.clone(),
                source,
            })?;
        let mut last = None;
        for addr in addrs {
            let attempt = Self::attempt(net.as_ref(), protocol, addr, &remote.host, &config);
            match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(Ok(carrier)) => return Ok(carrier),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        protocol,
                        remote: addr,
                        timeout_ms: config.connect_timeout.as_millis() as u64,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Resolve {
            name: remote.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    async fn attempt(
        net: &dyn Net,
        protocol: Protocol,
        addr: SocketAddr,
        host: &str,
        config: &Configuration,
    ) -> Result<Self> {
        match protocol {
            Protocol::Quic => {
                let (endpoint, conn) = quic::connect(net, addr, host, config).await?;
                Ok(Self::from_quic(conn, Some(endpoint), config))
            }
            Protocol::TlsTcp => {
                let stream = tls_tcp::connect(net, addr, host, config).await?;
                Ok(Self::from_tls(stream, addr, config))
            }
        }
    }

    pub(crate) fn from_quic(
        conn: quinn::Connection,
        endpoint: Option<quinn::Endpoint>,
        config: &Configuration,
    ) -> Self {
        let peer = conn.remote_address();
        let (tx, rx, reader) = quic::start(conn, config.max_message_size);
        Carrier {
            protocol: Protocol::Quic,
            peer,
            tx: TransientTx::Quic(tx),
            rx: tokio::sync::Mutex::new(rx),
            reader,
            max_message_size: config.max_message_size,
            _endpoint: endpoint,
        }
    }

    pub(crate) fn from_tls<S>(stream: S, peer: SocketAddr, config: &Configuration) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx, reader) = tls_tcp::start(stream, config);
        Carrier {
            protocol: Protocol::TlsTcp,
            peer,
            tx: TransientTx::Tls(tx),
            rx: tokio::sync::Mutex::new(rx),
            reader,
            max_message_size: config.max_message_size,
            _endpoint: None,
        }
    }

    /// The protocol stack of the current transient.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The peer's address as this end sees it (behind a NAT: the NAT's public address).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sends a message; returns its id once the transient has taken it.
    pub async fn send(&self, message: impl Into<Message>) -> Result<MessageId> {
        let message = message.into();
        if message.data.len() > self.max_message_size {
            return Err(Error::MessageTooLarge {
                size: message.data.len(),
                max: self.max_message_size,
            });
        }
        self.tx.send(message.data).await
    }

    /// Sends raw bytes as a message with default properties.
    pub async fn send_bytes(&self, data: impl Into<Bytes>) -> Result<MessageId> {
        self.send(Message::new(data)).await
    }

    /// The next message from the peer. `Ok(None)` once the peer closed the carrier cleanly.
    /// An `Err` for one message (for example an oversized one) leaves the carrier usable;
    /// an `Err` that ends the transient is followed by `Ok(None)`. Concurrent callers each
    /// get different messages.
    pub async fn receive(&self) -> Result<Option<Received>> {
        match self.rx.lock().await.recv().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Closes gracefully: waits until every sent message has reached the peer's transport,
    /// then ends the transient.
    pub async fn close(&self) -> Result<()> {
        let result = self.tx.close().await;
        if let Some(endpoint) = &self._endpoint {
            // Give the CONNECTION_CLOSE a chance to leave before the socket goes away.
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(100), endpoint.wait_idle())
                    .await;
        }
        result
    }

    /// Closes at once; queued messages are dropped.
    pub fn abort(&self) {
        self.tx.abort();
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
