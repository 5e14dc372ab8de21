//! Listeners: accept carriers over every allowed protocol on one port.
//!
//! A listener binds QUIC (UDP) and TLS/TCP on the same port number, runs each handshake in
//! its own task (a slow or failing handshake never blocks others) and queues ready carriers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use std::future::Future;

use crate::establish::attempt::Transient;
use crate::net::{BoxFuture, ByteStream, Net, StreamListener};
use crate::transport::framing::{FLAG_MOVE, FLAG_REFUSED, FLAG_RESUME, TYPE_HELLO};
use crate::transport::moving::{self, QuicMove};
use crate::transport::{quic, stream as tls_tcp};
use crate::ConnectionError;
use crate::{Carrier, Configuration, Error, Event, Protocol, Result};

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
        // One TCP port: TLS when it is a candidate, plain TCP only when TLS is not.
        let stream_protocol = [Protocol::TlsTcp, Protocol::Tcp]
            .into_iter()
            .find(|p| candidates.contains(p));
        let quic = candidates.contains(&Protocol::Quic);
        let mut tries = 0;
        let (endpoint, stream, port) = loop {
            tries += 1;
            match bind_sockets(
                net.as_ref(),
                local,
                &config,
                quic,
                stream_protocol.is_some(),
            )
            .await
            {
                // An ephemeral port free for UDP may be taken for TCP: ask for another one,
                // as the caller let the system choose.
                Err(Error::Io { source, .. })
                    if local.port() == 0
                        && tries < EPHEMERAL_TRIES
                        && source.kind() == std::io::ErrorKind::AddrInUse => {}
                other => break other?,
            }
        };
        let (queue, incoming) = mpsc::channel(64);
        let movable = Movable::default();
        let mut tasks = Vec::new();
        if let Some(ep) = &endpoint {
            tasks.push(tokio::spawn(accept_quic(
                ep.clone(),
                queue.clone(),
                config.clone(),
                movable.clone(),
            )));
        }
        if let (Some(listener), Some(stream_protocol)) = (stream, stream_protocol) {
            let acceptor = match stream_protocol {
                // A resuming client's first idempotent messages may come in early data.
                Protocol::TlsTcp => Some(tls_tcp::early_server_config(
                    &config.security,
                    net.tls_clock(),
                )?),
                _ => None,
            };
            tasks.push(tokio::spawn(accept_stream(
                listener, acceptor, queue, config, movable,
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
            .ok_or(ConnectionError::ListenerStopped.into())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often `bind` asks for another ephemeral port when the one chosen for UDP is taken
/// for TCP.
const EPHEMERAL_TRIES: u32 = 16;

/// The QUIC endpoint and the TCP listener on one port number, and that port.
async fn bind_sockets(
    net: &dyn Net,
    local: SocketAddr,
    config: &Configuration,
    quic: bool,
    stream: bool,
) -> Result<(
    Option<quinn::Endpoint>,
    Option<Box<dyn StreamListener>>,
    u16,
)> {
    let mut port = local.port();
    let mut endpoint = None;
    if quic {
        let ep = quic::endpoint(net, local, Some(config)).await?;
        port = ep
            .local_addr()
            .map_err(|e| Error::io("reading the QUIC socket address", e))?
            .port();
        endpoint = Some(ep);
    }
    let mut listener = None;
    if stream {
        let addr = SocketAddr::new(local.ip(), port);
        let tcp = net
            .listen_tcp(addr)
            .await
            .map_err(|e| Error::io(format!("listening on TCP {addr}"), e))?;
        port = tcp
            .local_addr()
            .map_err(|e| Error::io("reading the TCP listener address", e))?
            .port();
        listener = Some(tcp);
    }
    Ok((endpoint, listener, port))
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
    movable: Movable,
) {
    let next = move || -> BoxFuture<'static, Option<quinn::Incoming>> {
        let endpoint = endpoint.clone();
        Box::pin(async move { endpoint.accept().await })
    };
    let handshake = move |incoming: quinn::Incoming| {
        let (config, movable) = (config.clone(), movable.clone());
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
            let carrier = Carrier::start(transient, &config, None);
            if let Some(mv) = carrier.quic_move() {
                let mut list = crate::util::lock(&movable);
                list.retain(|m| m.strong_count() > 0);
                list.push(Arc::downgrade(&mv));
            }
            Some(carrier)
        }
    };
    accept_loop(next, handshake, queue).await;
}

/// The QUIC carriers of a listener, which a client can move to TLS/TCP; a carrier that ended
/// is forgotten. Found by the identity both ends derive from the QUIC connection (each
/// carrier's exporter is computed at the lookup: a carrier accepted at 0.5-RTT has none
/// before its handshake completes).
type Movable = Arc<std::sync::Mutex<Vec<Weak<QuicMove>>>>;

/// A client moves a QUIC carrier of this listener to this TLS/TCP connection (docs/WIRE.md,
/// "Moving from QUIC"): its HELLO (with MOVE) names the carrier's continuation token, the
/// MOVED frame after it the QUIC carrier and what the client delivered. An unknown carrier
/// is refused.
async fn move_carrier<S>(
    movable: &Movable,
    registry: &Resumable,
    (mut stream, peer): (S, SocketAddr),
    h: tls_tcp::Hello,
    wait: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use tokio::io::AsyncWriteExt;
    let moved = tokio::time::timeout(wait, moving::read_moved(&mut stream)).await;
    let identity = match moved {
        Ok(Ok((identity, None))) => identity,
        Ok(Ok((_, Some(_)))) => {
            tracing::debug!("move from {peer}: receipts before the listener's answer");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!("move from {peer}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("move from {peer}: no MOVED frame in {wait:?}");
            return;
        }
    };
    let found = {
        let list = crate::util::lock(movable);
        list.iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.identity() == Some(identity))
    };
    let Some(mv) = found else {
        tracing::debug!("move from {peer} of an unknown carrier refused");
        let refusal = tls_tcp::hello_frame(&h.token, 0, 0, FLAG_MOVE | FLAG_REFUSED);
        let _ = stream.write_all(&refusal).await;
        let _ = stream.shutdown().await;
        return;
    };
    match mv.move_server(stream, peer, h.token, wait).await {
        Ok(core) => {
            let mut map = crate::util::lock(registry);
            map.retain(|_, c| c.strong_count() > 0);
            map.insert(h.token, Arc::downgrade(&core));
        }
        Err(e) => tracing::debug!("move from {peer} failed: {e}"),
    }
}

/// How long a listener waits for the first frame of a TLS client that did not negotiate ALPN
/// `postsock/1` (such a peer need not speak first) before it starts a carrier that cannot
/// continue.
const HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Resumable carriers by token; a carrier that ended is forgotten.
type Resumable = Arc<std::sync::Mutex<BTreeMap<tls_tcp::Token, Weak<tls_tcp::StreamCore>>>>;

/// A client came back on a new transient with a HELLO that continues carrier `h.token`: the
/// same carrier goes on over it (the application sees a `PathChange`, not a new carrier). An
/// unknown token (the carrier ended, or never existed) is refused.
async fn continue_carrier<S>(
    registry: &Resumable,
    mut stream: S,
    peer: SocketAddr,
    h: tls_tcp::Hello,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use tokio::io::AsyncWriteExt;
    let core = crate::util::lock(registry)
        .get(&h.token)
        .and_then(Weak::upgrade);
    let Some(core) = core else {
        tracing::debug!("continuation from {peer} with an unknown token refused");
        let refusal = tls_tcp::hello_frame(&h.token, 0, 0, FLAG_RESUME | FLAG_REFUSED);
        let _ = stream.write_all(&refusal).await;
        let _ = stream.shutdown().await;
        return;
    };
    let received = core.detach().await;
    let mode = tls_tcp::Attach::Continue {
        peer: Some(h),
        received,
    };
    match core.attach(stream, peer, mode) {
        Ok(()) => core.announce(Event::PathChange { remote: peer }).await,
        Err(e) => tracing::debug!("continuation from {peer} failed: {e}"),
    }
}

async fn accept_stream(
    listener: Box<dyn StreamListener>,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    queue: mpsc::Sender<Carrier>,
    config: Configuration,
    movable: Movable,
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
    let registry: Resumable = Default::default();
    let handshake = move |(stream, peer): (Box<dyn ByteStream>, SocketAddr)| {
        let (acceptor, config, registry) = (acceptor.clone(), config.clone(), registry.clone());
        let movable = movable.clone();
        async move {
            let Some(acceptor) = acceptor else {
                let transient = Transient::Stream {
                    stream: Box::new(stream),
                    peer,
                    protocol: Protocol::Tcp,
                    resumed: Default::default(),
                    early: None,
                    token: None,
                };
                return Some(Carrier::start(transient, &config, None));
            };
            let mut tls = match tls_tcp::ServerTls::accept(acceptor, stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!("TLS handshake from {peer} failed: {e}");
                    return None;
                }
            };
            let resumed = tls.connection().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            // The client's first frame: a HELLO names a new resumable carrier or continues
            // one; anything else is read again by a carrier that cannot be continued.
            let mut first = Vec::new();
            // A `postsock/1` client writes a HELLO before anything else (docs/WIRE.md), so the
            // listener waits for it as long as a carrier would wait for a lost path: on a
            // lossy path TCP can deliver the segment carrying it seconds after the handshake
            // (retransmitted after 1, 2, 4 s...), and a carrier started sooner would be handed
            // to the application and then broken by the HELLO.
            let speaks_first =
                tls.connection().alpn_protocol() == Some(crate::transport::tls::ALPN);
            let wait = if speaks_first {
                config.dormant_timeout.max(HELLO_WAIT)
            } else {
                HELLO_WAIT
            };
            let hello = tokio::time::timeout(wait, tls_tcp::read_hello(&mut tls, &mut first)).await;
            let token = match hello {
                // Taking over a carrier waits for the handshake: early data can be replayed.
                Ok(Ok(Some(h))) if h.flags & (FLAG_MOVE | FLAG_RESUME) != 0 => {
                    if let Err(e) = tls.handshake().await {
                        tracing::debug!("TLS handshake from {peer} failed: {e}");
                        return None;
                    }
                    if h.flags & FLAG_MOVE != 0 {
                        move_carrier(&movable, &registry, (tls, peer), h, wait).await;
                    } else {
                        continue_carrier(&registry, tls, peer, h).await;
                    }
                    return None;
                }
                Ok(Ok(Some(h))) => Some(h.token),
                // The connection ended or failed before its first byte (the losing attempt
                // of a client's race, say): nothing to carry, no carrier.
                Ok(Ok(None)) | Ok(Err(_)) if first.is_empty() => {
                    tracing::debug!("connection from {peer} ended before its first frame");
                    return None;
                }
                // Waited in vain for a HELLO that had begun to arrive, or for any frame of a
                // `postsock/1` client (which always starts with one): this connection carries
                // no carrier. Starting one would hand the application a carrier the rest of
                // the HELLO then breaks; the client continues or retries on a new connection.
                Err(_) if speaks_first || first.first() == Some(&TYPE_HELLO) => {
                    tracing::debug!(
                        "no complete HELLO from {peer} in {wait:?}: connection dropped"
                    );
                    return None;
                }
                // Not a HELLO, a malformed one, or nothing yet: the carrier's reader sees the
                // same bytes and judges them.
                _ => None,
            };
            let transient = Transient::Stream {
                stream: Box::new(tls_tcp::Prefixed::new(first, tls)),
                peer,
                protocol: Protocol::TlsTcp,
                resumed: Arc::new(resumed.into()),
                early: None,
                token,
            };
            let carrier = Carrier::start(transient, &config, None);
            if let (Some(token), Some(core)) = (token, carrier.stream_core()) {
                let mut map = crate::util::lock(&registry);
                map.retain(|_, c| c.strong_count() > 0);
                map.insert(token, Arc::downgrade(&core));
            }
            Some(carrier)
        }
    };
    accept_loop(next, handshake, queue).await;
}
