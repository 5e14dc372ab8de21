//! TLS 1.3 over TCP transients via tokio-rustls, with messages framed as in [`super::framing`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::framing::{FrameHeader, HEADER_LEN};
use super::{inbound_channel, tls, Inbound};
use crate::net::{ByteStream, Net};
use crate::{Configuration, Error, MessageId, Protocol, Received, Result};

/// Connects TCP through `net`, then runs the TLS 1.3 client handshake.
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    host: &str,
    config: &Configuration,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn ByteStream>>> {
    let client = tls::client_config(&config.security)?;
    let name = tls::server_name(&config.security, host)?;
    let establish = |reason: String| Error::Establish {
        protocol: Protocol::TlsTcp,
        remote,
        reason,
    };
    let tcp = net
        .connect_tcp(remote)
        .await
        .map_err(|e| establish(format!("TCP connect: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map_err(|e| establish(format!("TLS handshake: {e}")))
}

/// A queued outgoing frame. (Shutdown is signalled by dropping the queue's sender.)
#[derive(Debug)]
enum Outgoing {
    Message(MessageId, Bytes),
}

/// The sending side of a TLS/TCP transient.
#[derive(Debug)]
pub(crate) struct TlsTx {
    queue: Mutex<Option<mpsc::Sender<Outgoing>>>,
    writer: Mutex<Option<JoinHandle<Result<()>>>>,
    next_id: AtomicU64,
    max_message_size: usize,
}

impl TlsTx {
    pub(crate) async fn send(&self, data: Bytes) -> Result<MessageId> {
        if data.len() > self.max_message_size || data.len() > u32::MAX as usize {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                max: self.max_message_size,
            });
        }
        let queue = self
            .queue
            .lock()
            .map_err(|_| Error::Closed)?
            .clone()
            .ok_or(Error::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        queue
            .send(Outgoing::Message(id, data))
            .await
            .map_err(|_| Error::Connection("TLS/TCP writer has stopped".into()))?;
        Ok(id)
    }

    pub(crate) async fn close(&self) -> Result<()> {
        // Dropping the queue lets the writer drain it, flush, and send close_notify + FIN.
        drop(self.queue.lock().map_err(|_| Error::Closed)?.take());
        let writer = self.writer.lock().map_err(|_| Error::Closed)?.take();
        match writer {
            Some(handle) => handle
                .await
                .map_err(|e| Error::Connection(format!("TLS/TCP writer failed: {e}")))?,
            None => Ok(()),
        }
    }

    pub(crate) fn abort(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(handle) = w.take() {
                handle.abort();
            }
        }
    }
}

/// Starts the reader and writer tasks of an established TLS stream.
pub(crate) fn start<S>(
    stream: S,
    config: &Configuration,
) -> (TlsTx, mpsc::Receiver<Inbound>, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (queue_tx, queue_rx) = mpsc::channel(config.send_queue.max(1));
    let (tx, rx) = inbound_channel();
    let writer = tokio::spawn(write_loop(write_half, queue_rx));
    let reader = tokio::spawn(read_loop(read_half, tx, config.max_message_size));
    (
        TlsTx {
            queue: Mutex::new(Some(queue_tx)),
            writer: Mutex::new(Some(writer)),
            next_id: AtomicU64::new(0),
            max_message_size: config.max_message_size,
        },
        rx,
        reader,
    )
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    mut queue: mpsc::Receiver<Outgoing>,
) -> Result<()> {
    let io = |e| Error::Connection(format!("TLS/TCP write: {e}"));
    while let Some(Outgoing::Message(id, data)) = queue.recv().await {
        // Lengths were checked in `send`.
        let header = FrameHeader::message(id, data.len() as u32);
        out.write_all(&header.encode()).await.map_err(io)?;
        out.write_all(&data).await.map_err(io)?;
        // Flush once the queue is momentarily empty, so bursts share TLS records.
        if queue.is_empty() {
            out.flush().await.map_err(io)?;
        }
    }
    out.flush().await.map_err(io)?;
    out.shutdown().await.map_err(io)?;
    Ok(())
}

async fn read_loop<R: AsyncRead + Unpin>(mut input: R, tx: mpsc::Sender<Inbound>, max: usize) {
    loop {
        match read_frame(&mut input, max).await {
            Ok(Some(received)) => {
                if tx.send(Ok(received)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
async fn read_frame<R: AsyncRead + Unpin>(input: &mut R, max: usize) -> Result<Option<Received>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = input
            .read(&mut header[filled..])
            .await
            .map_err(|e| Error::Connection(format!("TLS/TCP read: {e}")))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Error::Protocol(format!(
                "truncated frame header: stream ended after {filled} of {HEADER_LEN} bytes"
            )));
        }
        filled += n;
    }
    let header = FrameHeader::decode(&header, max)?;
    let mut data = vec![0u8; header.len as usize];
    input.read_exact(&mut data).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Protocol(format!(
                "truncated frame: message {} announced {} bytes",
                header.id, header.len
            ))
        } else {
            Error::Connection(format!("TLS/TCP read: {e}"))
        }
    })?;
    Ok(Some(Received {
        id: header.id,
        data: data.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_rejects_truncation() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&FrameHeader::message(7, 3).encode());
        wire.extend_from_slice(b"abc");
        let mut input = &wire[..];
        let got = read_frame(&mut input, 100).await.ok().flatten();
        assert_eq!(
            got.map(|r| (r.id, r.data)),
            Some((7, Bytes::from_static(b"abc")))
        );
        assert!(matches!(read_frame(&mut input, 100).await, Ok(None)));

        let mut short = &wire[..HEADER_LEN + 1];
        let err = read_frame(&mut short, 100).await.expect_err("truncated");
        assert!(err.to_string().contains("truncated frame"), "{err}");
        let mut half = &wire[..5];
        let err = read_frame(&mut half, 100)
            .await
            .expect_err("truncated header");
        assert!(err.to_string().contains("truncated frame header"), "{err}");
    }
}
