//! Listeners: accept carriers over every allowed protocol on one port.
//!
//! A listener binds QUIC (UDP) and TLS/TCP on the same port number, runs each handshake in
//! its own task (a slow or failing handshake never blocks others) and queues ready carriers.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use std::future::Future;

use crate::carrier::Transient;
use crate::net::{BoxFuture, ByteStream, Net, StreamListener};
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
        let candidates = config.candidates()?;
        let (queue, incoming) = mpsc::channel(64);
        let mut tasks = Vec::new();
        let mut endpoint = None;
        let mut port = local.port();
        if candidates.contains(&Protocol::Quic) {
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
        // One TCP port: TLS when it is a candidate, plain TCP only when TLS is not.
        let stream_protocol = [Protocol::TlsTcp, Protocol::Tcp]
            .into_iter()
            .find(|p| candidates.contains(p));
        if let Some(stream_protocol) = stream_protocol {
            let addr = SocketAddr::new(local.ip(), port);
            let listener = net
                .listen_tcp(addr)
                .await
                .map_err(|e| Error::io(format!("listening on TCP {addr}"), e))?;
            port = listener
                .local_addr()
                .map_err(|e| Error::io("reading the TCP listener address", e))?
                .port();
            let acceptor = match stream_protocol {
                Protocol::TlsTcp => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                    tls::server_config(&config.security)?,
                ))),
                _ => None,
            };
            tasks.push(tokio::spawn(accept_stream(
                listener, acceptor, queue, config,
            )));
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

/// Takes connections from `next` (until it yields `None`) and runs each `handshake` in a task
/// of its own, so a slow or failing handshake never holds up the others; carriers whose
/// handshake completes are queued for [`Listener::accept`].
async fn accept_loop<T, N, H, HF>(mut next: N, handshake: H, queue: mpsc::Sender<Carrier>)
where
    N: FnMut() -> BoxFuture<'static, Option<T>>,
    H: Fn(T) -> HF,
    HF: Future<Output = Option<Carrier>> + Send + 'static,
{
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = next() => {
                let Some(accepted) = accepted else { break };
                let (done, queue) = (handshake(accepted), queue.clone());
                handshakes.spawn(async move {
                    if let Some(carrier) = done.await {
                        let _ = queue.send(carrier).await;
                    }
                });
            }
        }
    }
}

async fn accept_quic(
    endpoint: quinn::Endpoint,
    queue: mpsc::Sender<Carrier>,
    config: Configuration,
) {
    let next = move || -> BoxFuture<'static, Option<quinn::Incoming>> {
        let endpoint = endpoint.clone();
        Box::pin(async move { endpoint.accept().await })
    };
    let handshake = move |incoming: quinn::Incoming| {
        let config = config.clone();
        async move {
            // Accept at 0.5-RTT: a resuming client's 0-RTT messages (idempotent by
            // construction) are delivered as they arrive; a handshake that then fails ends the
            // carrier with a connection error.
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("QUIC connection refused: {e}");
                    return None;
                }
            };
            let conn = match connecting.into_0rtt() {
                Ok((conn, _always_true)) => conn,
                Err(connecting) => match connecting.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!("QUIC handshake failed: {e}");
                        return None;
                    }
                },
            };
            let transient = Transient::Quic {
                conn,
                endpoint: None,
                resumed: None,
                zero_rtt: None,
                epoch: Default::default(),
            };
            Some(Carrier::start(transient, &config, None))
        }
    };
    accept_loop(next, handshake, queue).await;
}

async fn accept_stream(
    listener: Box<dyn StreamListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    queue: mpsc::Sender<Carrier>,
    config: Configuration,
) {
    let listener: Arc<dyn StreamListener> = Arc::from(listener);
    let next = move || -> BoxFuture<'static, Option<(Box<dyn ByteStream>, SocketAddr)>> {
        let listener = listener.clone();
        Box::pin(async move {
            loop {
                match listener.accept().await {
                    Ok(pair) => return Some(pair),
                    Err(e) => tracing::debug!("TCP accept failed: {e}"),
                }
            }
        })
    };
    let handshake = move |(stream, peer): (Box<dyn ByteStream>, SocketAddr)| {
        let (acceptor, config) = (acceptor.clone(), config.clone());
        async move {
            let transient = match acceptor {
                None => Transient::Stream {
                    stream: Box::new(stream),
                    peer,
                    protocol: Protocol::Tcp,
                    resumed: None,
                },
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => {
                        let resumed = tls.get_ref().1.handshake_kind()
                            == Some(rustls::HandshakeKind::Resumed);
                        Transient::Stream {
                            stream: Box::new(tls),
                            peer,
                            protocol: Protocol::TlsTcp,
                            resumed: Some(resumed),
                        }
                    }
                    Err(e) => {
                        tracing::debug!("TLS handshake from {peer} failed: {e}");
                        return None;
                    }
                },
            };
            Some(Carrier::start(transient, &config, None))
        }
    };
    accept_loop(next, handshake, queue).await;
}
