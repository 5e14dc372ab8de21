//! Transients: one protocol-stack instance on one path.
//!
//! A transient is a set of tasks: a sending loop that takes items from the carrier's
//! send queue (the outbox) and a reader that turns what arrives into [`crate::Event`]s on the
//! carrier's event channel. The reader's last event says how the transient ended.

pub(crate) mod assemble;
mod cc;
pub(crate) mod framing;
pub(crate) mod moving;
pub(crate) mod outbox;
pub(crate) mod quic;
mod seqmap;
pub(crate) mod stream;
pub mod tls;

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::Event;

type Queued = (Event, Option<OwnedSemaphorePermit>);

/// The transient's side of a carrier's event queue. The queue is bounded twice: in events
/// (`Configuration::receive_queue`) and in payload bytes (`Configuration::receive_buffer`), so
/// an application that stops reading holds a bounded amount of memory; past the bound the
/// readers stop and the transport's flow control slows the peer.
#[derive(Debug, Clone)]
pub(crate) struct EventTx {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl EventTx {
    /// Queues an event, waiting for room. Fails once the carrier is gone.
    pub(crate) async fn send(&self, event: Event) -> Result<(), ()> {
        let size = match &event {
            Event::Received(m) => m.data.len(),
            Event::ReceivedPartial(p) => p.data.len(),
            _ => 0,
        }
        .min(self.limit);
        let permit = if size > 0 {
            Some(
                self.bytes
                    .clone()
                    .acquire_many_owned(size as u32)
                    .await
                    .map_err(|_| ())?,
            )
        } else {
            None
        };
        self.tx.send((event, permit)).await.map_err(|_| ())
    }

    /// Whether the carrier is gone (nobody will read events again).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues an event if there is room now.
    pub(crate) fn try_send(&self, event: Event) -> bool {
        self.tx.try_send((event, None)).is_ok()
    }
}

/// The carrier's side of its event queue.
#[derive(Debug)]
pub(crate) struct EventRx {
    rx: mpsc::Receiver<Queued>,
}

impl EventRx {
    /// The next event; its bytes leave the queue's budget as it is handed over.
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.map(|(event, _permit)| event)
    }
}

/// An event queue of at most `events` events and `bytes` payload bytes.
pub(crate) fn event_channel(events: usize, bytes: usize) -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel(events.max(2));
    let limit = bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    (
        EventTx {
            tx,
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
        },
        EventRx { rx },
    )
}

impl crate::path::Announce for EventTx {
    fn announce(&self, event: Event) -> crate::net::BoxFuture<'_, bool> {
        Box::pin(async move { self.send(event).await.is_ok() })
    }

    fn gone(&self) -> bool {
        self.is_closed()
    }
}
