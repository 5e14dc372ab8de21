//! Listeners: accept carriers over every allowed protocol on one port.
//!
//! A listener binds QUIC (UDP) and TLS/TCP on the same port number, runs each handshake in
//! its own task (a slow or failing handshake never blocks others) and queues ready carriers.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::net::{Net, StreamListener};
use crate::transport::{quic, tls};
use crate::{Carrier, Configuration, Error, Protocol, Result};

/// Accepts carriers. See the [crate docs](crate) for an example.
#[derive(Debug)]
pub struct Listener {
    local: SocketAddr,
    incoming: mpsc::Receiver<Carrier>,
    tasks: Vec<JoinHandle<()>>,
    _endpoint: Option<quinn::Endpoint>,
}

impl Listener {
    /// Binds at `local` for every protocol in `config.protocols`. Needs
    /// `config.security.identity`.
    pub async fn bind(net: Arc<dyn Net>, local: SocketAddr, config: Configuration) -> Result<Self> {
        if config.protocols.is_empty() {
            return Err(Error::Config("no protocol allowed".into()));
        }
        let (queue, incoming) = mpsc::channel(64);
        let mut tasks = Vec::new();
        let mut endpoint = None;
        let mut port = local.port();
        if config.protocols.contains(&Protocol::Quic) {
            let ep = quic::endpoint(net.as_ref(), local, Some(&config)).await?;
            port = ep
                .local_addr()
                .map_err(|e| Error::io("reading the QUIC socket address", e))?
                .port();
            tasks.push(tokio::spawn(accept_quic(
                ep.clone(),
                queue.clone(),
                config.clone(),
            )));
            endpoint = Some(ep);
        }
        if config.protocols.contains(&Protocol::TlsTcp) {
            let addr = SocketAddr::new(local.ip(), port);
            let listener = net
                .listen_tcp(addr)
                .await
                .map_err(|e| Error::io(format!("listening on TCP {addr}"), e))?;
            port = listener
                .local_addr()
                .map_err(|e| Error::io("reading the TCP listener address", e))?
                .port();
            let acceptor =
                tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&config.security)?));
            tasks.push(tokio::spawn(accept_tls(listener, acceptor, queue, config)));
        }
        Ok(Listener {
            local: SocketAddr::new(local.ip(), port),
            incoming,
            tasks,
            _endpoint: endpoint,
        })
    }

    /// The bound address (the port is shared by QUIC and TLS/TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next carrier whose handshake has completed.
    pub async fn accept(&mut self) -> Result<Carrier> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| Error::Connection("listener stopped".into()))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_quic(
    endpoint: quinn::Endpoint,
    queue: mpsc::Sender<Carrier>,
    config: Configuration,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let queue = queue.clone();
                let config = config.clone();
                handshakes.spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            let _ = queue.send(Carrier::from_quic(conn, None, &config)).await;
                        }
                        Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
                    }
                });
            }
        }
    }
}

async fn accept_tls(
    listener: Box<dyn StreamListener>,
    acceptor: tokio_rustls::TlsAcceptor,
    queue: mpsc::Sender<Carrier>,
    config: Configuration,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!("TCP accept failed: {e}");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let queue = queue.clone();
                let config = config.clone();
                handshakes.spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let _ = queue.send(Carrier::from_tls(tls, peer, &config)).await;
                        }
                        Err(e) => tracing::debug!("TLS handshake from {peer} failed: {e}"),
                    }
                });
            }
        }
    }
}
