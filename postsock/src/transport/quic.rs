//! QUIC transients via quinn. One reliable message = one unidirectional stream ended by FIN;
//! the message id is the stream's index (docs/WIRE.md).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{inbound_channel, tls, Inbound};
use crate::net::Net;
use crate::{Configuration, Error, MessageId, Received, Result};

/// Streams the peer may open at once (messages in flight towards us).
const MAX_CONCURRENT_STREAMS: u32 = 1024;

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_bidi_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(5)));
    Arc::new(t)
}

fn endpoint_config(net: &dyn Net) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.rng_seed(net.rng_seed());
    config
}

/// Creates a QUIC endpoint on a socket bound through `net`.
pub(crate) async fn endpoint(
    net: &dyn Net,
    local: SocketAddr,
    server: Option<&Configuration>,
) -> Result<quinn::Endpoint> {
    let server_config = match server {
        Some(config) => {
            let crypto = QuicServerConfig::try_from(tls::server_config(&config.security)?)
                .map_err(|e| Error::Tls(e.to_string()))?;
            let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            sc.transport_config(transport_config());
            Some(sc)
        }
        None => None,
    };
    let socket = net
        .bind_udp(local)
        .await
        .map_err(|e| Error::io(format!("binding UDP {local}"), e))?;
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(net),
        server_config,
        socket,
        net.quic_runtime(),
    )
    .map_err(|e| Error::io("creating QUIC endpoint", e))
}

/// Connects to `remote` over a fresh client endpoint.
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    host: &str,
    config: &Configuration,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let local: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let endpoint = endpoint(net, local, None).await?;
    let crypto = QuicClientConfig::try_from(tls::client_config(&config.security)?)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config());
    let name = tls::server_name(&config.security, host)?
        .to_str()
        .into_owned();
    let establish = |reason: String| Error::Establish {
        protocol: crate::Protocol::Quic,
        remote,
        reason,
    };
    let connecting = endpoint
        .connect_with(client, remote, &name)
        .map_err(|e| establish(e.to_string()))?;
    let connection = connecting.await.map_err(|e| establish(e.to_string()))?;
    Ok((endpoint, connection))
}

/// The sending side of a QUIC transient.
#[derive(Debug)]
pub(crate) struct QuicTx {
    conn: quinn::Connection,
    sends: Mutex<JoinSet<Result<()>>>,
}

impl QuicTx {
    pub(crate) async fn send(&self, data: Bytes) -> Result<MessageId> {
        let mut stream = self
            .conn
            .open_uni()
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        let id = stream.id().index();
        let write = async move {
            stream
                .write_chunk(data)
                .await
                .map_err(|e| Error::Connection(format!("message {id}: {e}")))?;
            stream
                .finish()
                .map_err(|e| Error::Connection(e.to_string()))?;
            // Resolves once the peer has acknowledged every byte of the stream.
            stream
                .stopped()
                .await
                .map_err(|e| Error::Connection(format!("message {id}: {e}")))?;
            Ok(())
        };
        self.sends
            .lock()
            .map_err(|_| Error::Connection("send task set poisoned".into()))?
            .spawn(write);
        Ok(id)
    }

    pub(crate) async fn close(&self) -> Result<()> {
        let mut sends = std::mem::take(
            &mut *self
                .sends
                .lock()
                .map_err(|_| Error::Connection("send task set poisoned".into()))?,
        );
        let mut first_error = None;
        while let Some(done) = sends.join_next().await {
            let outcome = done.map_err(|e| Error::Connection(format!("send task failed: {e}")));
            if let Err(e) = outcome.and_then(|r| r) {
                first_error.get_or_insert(e);
            }
        }
        self.conn.close(0u32.into(), b"done");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn abort(&self) {
        if let Ok(mut sends) = self.sends.lock() {
            sends.abort_all();
        }
        self.conn.close(1u32.into(), b"abort");
    }
}

/// Starts the reader of a QUIC transient; returns the sender side and the inbound channel.
pub(crate) fn start(
    conn: quinn::Connection,
    max_message_size: usize,
) -> (QuicTx, mpsc::Receiver<Inbound>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = inbound_channel();
    let reader = tokio::spawn(read_loop(conn.clone(), tx, max_message_size));
    (
        QuicTx {
            conn,
            sends: Mutex::new(JoinSet::new()),
        },
        rx,
        reader,
    )
}

async fn read_loop(conn: quinn::Connection, tx: mpsc::Sender<Inbound>, max: usize) {
    let mut reads = JoinSet::new();
    let end = loop {
        tokio::select! {
            biased;
            Some(_) = reads.join_next(), if !reads.is_empty() => {}
            accepted = conn.accept_uni() => match accepted {
                Ok(mut stream) => {
                    let tx = tx.clone();
                    reads.spawn(async move {
                        let id = stream.id().index();
                        let item = match stream.read_to_end(max).await {
                            Ok(data) => Ok(Received { id, data: data.into() }),
                            Err(quinn::ReadToEndError::TooLong) => Err(Error::Protocol(format!(
                                "message {id} exceeds the maximum message size of {max} bytes"
                            ))),
                            Err(e) => Err(Error::Connection(format!("message {id}: {e}"))),
                        };
                        let _ = tx.send(item).await;
                    });
                }
                Err(e) => break e,
            },
        }
    };
    while reads.join_next().await.is_some() {}
    match end {
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => {}
        other => {
            let _ = tx.send(Err(Error::Connection(other.to_string()))).await;
        }
    }
}
