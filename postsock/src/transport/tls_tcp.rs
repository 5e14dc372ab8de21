//! Stream transients: TLS 1.3 over TCP (tokio-rustls) and, when security is explicitly
//! disabled, plain TCP; messages are framed as in [`super::framing`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::assemble::{Assembly, ReceiveLimits};
use super::framing::{FrameHeader, HEADER_LEN};
use super::tls;
use crate::message::{MessageProperties, SendStatus};
use crate::net::{ByteStream, Net};
use crate::outbox::Outbox;
use crate::{Configuration, Error, Event, MessageId, Protocol, Result};

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

/// Connects plain TCP through `net` (only when the configuration allows an insecure stack).
pub(crate) async fn connect_plain(
    net: &dyn Net,
    remote: SocketAddr,
) -> Result<Box<dyn ByteStream>> {
    net.connect_tcp(remote).await.map_err(|e| Error::Establish {
        protocol: Protocol::Tcp,
        remote,
        reason: format!("TCP connect: {e}"),
    })
}

/// Largest frame the writer emits: big messages are cut into frames of this size so that a
/// more urgent message can go between them.
pub(crate) const MAX_FRAME: usize = 16 * 1024;

/// Messages on one ordered byte stream are delivered in the order they are written, so an
/// antecedent handed to the writer is always delivered first.
pub(crate) fn order_rule(_: &MessageProperties, _: &MessageProperties) -> bool {
    true
}

/// The running halves of a stream transient.
pub(crate) struct StreamTasks {
    pub writer: JoinHandle<Result<()>>,
    pub reader: JoinHandle<()>,
    pub kill: watch::Sender<bool>,
}

/// Starts the writer (draining `outbox`) and the reader (feeding `events`) of a connected
/// stream (TLS or plain TCP).
pub(crate) fn start<S>(
    stream: S,
    outbox: Arc<Outbox>,
    events: mpsc::Sender<Event>,
    limits: ReceiveLimits,
) -> StreamTasks
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (kill, killed) = watch::channel(false);
    let writer = tokio::spawn(write_loop(write_half, outbox, killed));
    let reader = tokio::spawn(read_loop(read_half, events, limits, kill.clone()));
    StreamTasks {
        writer,
        reader,
        kill,
    }
}

async fn killed(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|k| *k).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    outbox: Arc<Outbox>,
    mut kill: watch::Receiver<bool>,
) -> Result<()> {
    let result = async {
        let io = |e: std::io::Error| Error::Connection(format!("TCP write: {e}"));
        loop {
            let item = tokio::select! {
                biased;
                _ = killed(&mut kill) => return Err(Error::Connection("transient ended".into())),
                item = outbox.next(MAX_FRAME) => item,
            };
            let Some(item) = item else { break };
            let header = if item.abort {
                FrameHeader::abort(item.id)
            } else {
                // `next` cut the item to at most MAX_FRAME bytes.
                FrameHeader::part(item.id, item.data.len() as u32, item.fin)
            };
            let write = async {
                out.write_all(&header.encode()).await?;
                out.write_all(&item.data).await?;
                if item.props.immediate || outbox.idle() {
                    out.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::select! {
                biased;
                _ = killed(&mut kill) => return Err(Error::Connection("transient ended".into())),
                done = write => done.map_err(io)?,
            }
            if item.fin && !item.abort {
                outbox.update(item.id, SendStatus::Sent, true);
            }
        }
        out.flush().await.map_err(io)?;
        out.shutdown().await.map_err(io)?;
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        outbox.fail_all(&e.to_string());
    }
    result
}

/// Messages being reassembled at once; more is a protocol violation.
const MAX_OPEN_MESSAGES: usize = 1024;

async fn read_loop<R: AsyncRead + Unpin>(
    mut input: R,
    events: mpsc::Sender<Event>,
    limits: ReceiveLimits,
    kill: watch::Sender<bool>,
) {
    // A clean end of stream is the peer's half-close: our writer may go on until we close.
    // A violation or read error ends the whole transient.
    match read_messages(&mut input, &events, &limits).await {
        Ok(()) => {
            let _ = events.send(Event::Closed).await;
        }
        Err(e) => {
            let _ = kill.send(true);
            let _ = events.send(Event::ConnectionError(e)).await;
        }
    }
}

async fn read_messages<R: AsyncRead + Unpin>(
    input: &mut R,
    events: &mpsc::Sender<Event>,
    limits: &ReceiveLimits,
) -> Result<()> {
    let mut open: BTreeMap<MessageId, Assembly> = BTreeMap::new();
    let mut discarding: BTreeSet<MessageId> = BTreeSet::new();
    loop {
        let Some((header, data)) = read_frame(input, limits.max_message_size).await? else {
            if let Some(id) = open.keys().next() {
                return Err(Error::Protocol(format!(
                    "stream ended in the middle of message {id}"
                )));
            }
            return Ok(());
        };
        let id = header.id;
        let mut out = Vec::new();
        if header.aborts() {
            discarding.remove(&id);
            if let Some(a) = open.remove(&id) {
                if a.partly_delivered() {
                    out.push(Event::ReceiveError {
                        id,
                        error: Error::Connection(format!(
                            "the sender abandoned message {id} after part of it was delivered"
                        )),
                    });
                }
            }
        } else if discarding.contains(&id) {
            if header.fin() {
                discarding.remove(&id);
            }
        } else {
            if !open.contains_key(&id) && open.len() >= MAX_OPEN_MESSAGES {
                return Err(Error::Protocol(format!(
                    "more than {MAX_OPEN_MESSAGES} messages interleaved at once"
                )));
            }
            let a = open.entry(id).or_insert_with(|| Assembly::new(id, true));
            match a.push(&data, header.fin(), limits) {
                Ok(evs) => out = evs,
                Err(error) => {
                    open.remove(&id);
                    if !header.fin() {
                        discarding.insert(id);
                    }
                    out.push(Event::ReceiveError { id, error });
                }
            }
            if header.fin() {
                open.remove(&id);
            }
        }
        for event in out {
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    max: usize,
) -> Result<Option<(FrameHeader, Vec<u8>)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = input
            .read(&mut header[filled..])
            .await
            .map_err(|e| Error::Connection(format!("TCP read: {e}")))?;
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
            Error::Connection(format!("TCP read: {e}"))
        }
    })?;
    Ok(Some((header, data)))
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
        assert_eq!(got.map(|(h, d)| (h.id, d)), Some((7, b"abc".to_vec())));
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
