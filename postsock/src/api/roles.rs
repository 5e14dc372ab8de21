//! The carrier's kin (Post Sockets §3.3): [`Responder`] (many remotes, request/response),
//! [`Source`] (send-only) and [`Sink`] (receive-only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::net::Net;
use crate::{
    Carrier, Configuration, Event, Listener, Message, PartialSend, Received, Remote, Result,
    SendHandle,
};

/// A message a [`Responder`] received, with the way back to its sender.
#[derive(Debug)]
pub struct Request {
    /// The remote that sent it (as this end sees it).
    pub from: SocketAddr,
    /// The message.
    pub message: Received,
    carrier: Arc<Carrier>,
}

impl Request {
    /// Sends `reply` to the remote this request came from, on the same carrier.
    pub async fn respond(&self, reply: impl Into<Message>) -> Result<SendHandle> {
        self.carrier.send(reply).await
    }

    /// The carrier the request arrived on (shared by every request from that remote).
    pub fn carrier(&self) -> &Arc<Carrier> {
        &self.carrier
    }
}

/// Receives messages from many remotes and answers each: a listener whose carriers are
/// read for the application and merged into one stream of [`Request`]s.
#[derive(Debug)]
pub struct Responder {
    local: SocketAddr,
    incoming: mpsc::Receiver<Request>,
    task: JoinHandle<()>,
}

impl Responder {
    /// Binds like [`Listener::bind`]. At most `config.receive_queue` requests wait for the
    /// application; beyond that the carriers stop reading and flow control slows the remotes.
    pub async fn bind(net: Arc<dyn Net>, local: SocketAddr, config: Configuration) -> Result<Self> {
        let depth = config.receive_queue.max(1);
        let mut listener = Listener::bind(net, local, config).await?;
        let local = listener.local_addr();
        let (queue, incoming) = mpsc::channel(depth);
        let task = tokio::spawn(async move {
            let mut readers = JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    Some(_) = readers.join_next(), if !readers.is_empty() => {}
                    accepted = listener.accept() => match accepted {
                        Ok(carrier) => {
                            readers.spawn(read_requests(Arc::new(carrier), queue.clone()));
                        }
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Responder {
            local,
            incoming,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next request from any remote; `None` if the responder stopped.
    pub async fn receive(&mut self) -> Option<Request> {
        self.incoming.recv().await
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_requests(carrier: Arc<Carrier>, queue: mpsc::Sender<Request>) {
    let from = carrier.peer_addr();
    while let Some(event) = carrier.next_event().await {
        match event {
            Event::Received(message) => {
                let request = Request {
                    from,
                    message,
                    carrier: carrier.clone(),
                };
                if queue.send(request).await.is_err() {
                    return;
                }
            }
            Event::ReceiveError { id, error } => {
                tracing::debug!("responder: message {id} from {from}: {error}");
            }
            Event::ConnectionError(error) => {
                tracing::debug!("responder: carrier from {from} failed: {error}");
            }
            _ => {}
        }
    }
}

/// A send-only carrier. Messages the peer sends anyway are read and dropped (counted in
/// [`Source::unexpected_messages`]) so they never hold up the connection.
#[derive(Debug)]
pub struct Source {
    carrier: Arc<Carrier>,
    unexpected: Arc<AtomicU64>,
    drain: JoinHandle<()>,
}

impl Source {
    /// Initiates a carrier and uses it send-only.
    pub async fn initiate(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
    ) -> Result<Self> {
        Ok(Self::from_carrier(
            Carrier::initiate(net, remote, config).await?,
        ))
    }

    /// Uses an existing carrier send-only.
    pub fn from_carrier(carrier: Carrier) -> Self {
        let carrier = Arc::new(carrier);
        let unexpected = Arc::new(AtomicU64::new(0));
        let drain = {
            let (carrier, unexpected) = (carrier.clone(), unexpected.clone());
            tokio::spawn(async move {
                while let Some(event) = carrier.next_event().await {
                    if matches!(event, Event::Received(_) | Event::ReceivedPartial(_)) {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Source {
            carrier,
            unexpected,
            drain,
        }
    }

    /// Sends a message (see [`Carrier::send`]).
    pub async fn send(&self, message: impl Into<Message>) -> Result<SendHandle> {
        self.carrier.send(message).await
    }

    /// Sends without waiting (see [`Carrier::try_send`]).
    pub fn try_send(&self, message: impl Into<Message>) -> Result<SendHandle> {
        self.carrier.try_send(message)
    }

    /// Starts a message sent in parts (see [`Carrier::start_message`]).
    pub fn start_message(&self, properties: crate::MessageProperties) -> Result<PartialSend<'_>> {
        self.carrier.start_message(properties)
    }

    /// Messages (or parts) the peer sent to this send-only carrier, dropped.
    pub fn unexpected_messages(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }

    /// Closes gracefully (see [`Carrier::close`]).
    pub async fn close(&self) -> Result<()> {
        self.carrier.close().await
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// A receive-only carrier: it has no way to send.
#[derive(Debug)]
pub struct Sink {
    carrier: Carrier,
}

impl Sink {
    /// Initiates a carrier and uses it receive-only.
    pub async fn initiate(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
    ) -> Result<Self> {
        Ok(Sink {
            carrier: Carrier::initiate(net, remote, config).await?,
        })
    }

    /// Uses an existing (for example accepted) carrier receive-only.
    pub fn from_carrier(carrier: Carrier) -> Self {
        Sink { carrier }
    }

    /// The next whole message (see [`Carrier::receive`]).
    pub async fn receive(&self) -> Result<Option<Received>> {
        self.carrier.receive().await
    }

    /// The next event (see [`Carrier::next_event`]).
    pub async fn next_event(&self) -> Option<Event> {
        self.carrier.next_event().await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.carrier.peer_addr()
    }

    /// Closes (see [`Carrier::close`]).
    pub async fn close(&self) -> Result<()> {
        self.carrier.close().await
    }
}
