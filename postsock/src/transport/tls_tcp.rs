//! Stream transients: TLS 1.3 over TCP (tokio-rustls) and, when security is explicitly
//! disabled, plain TCP; messages are framed as in [`super::framing`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assemble::{Assembly, ReceiveLimits};
use super::framing::{FrameHeader, HEADER_LEN};
use super::{tls, EventTx};
use crate::message::{MessageProperties, SendStatus};
use crate::net::{ByteStream, Net};
use crate::outbox::{Item, Outbox};
use crate::{Configuration, Error, Event, MessageId, Protocol, Result};

/// Connects TCP through `net`, then runs the TLS 1.3 client handshake.
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
    host: &str,
    config: &Configuration,
    client: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn ByteStream>>> {
    let name = tls::server_name(&config.security, host)?;
    let establish = |reason: String| Error::Establish {
        protocol: Protocol::TlsTcp,
        remote,
        reason,
    };
    let tcp = tcp_connect(net, remote, local)
        .await
        .map_err(|e| establish(format!("TCP connect: {e}")))?;
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| establish(format!("TLS handshake: {e}")))
}

/// Connects plain TCP through `net` (only when the configuration allows an insecure stack).
pub(crate) async fn connect_plain(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> Result<Box<dyn ByteStream>> {
    tcp_connect(net, remote, local).await.map_err(|e| Error::Establish {
        protocol: Protocol::Tcp,
        remote,
        reason: format!("TCP connect: {e}"),
    })
}

/// A TCP connection to `remote`, out of interface address `local` when given.
async fn tcp_connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<Box<dyn ByteStream>> {
    match local {
        Some(ip) => net.connect_tcp_from(ip, remote).await,
        None => net.connect_tcp(remote).await,
    }
}

/// Largest frame the writer emits: big messages are cut into frames of this size so that a
/// more urgent message can go between them.
pub(crate) const MAX_FRAME: usize = 16 * 1024;

/// Messages on one ordered byte stream are delivered in the order they are written, so an
/// antecedent handed to the writer is always delivered first.
pub(crate) fn order_rule(_: &MessageProperties, _: &MessageProperties) -> bool {
    true
}

/// Bounds on the writer's window of unacknowledged bytes.
const MIN_WINDOW: u64 = 16 * 1024;
const INITIAL_WINDOW: u64 = MIN_WINDOW;
const MAX_WINDOW: u64 = 16 << 20;
const RTT_FLOOR: Duration = Duration::from_millis(5);

/// The unit ACK frames count: a message frame's payload length plus one (so an empty frame
/// counts too).
fn ack_units(len: usize) -> u64 {
    len as u64 + 1
}

/// Carrier-level acknowledgement state of a stream transient, shared by writer and reader.
///
/// The writer keeps at most a window of unacknowledged bytes in flight: twice the measured
/// delivery rate times the minimum RTT (at least 16 KiB). That keeps a backlog in the
/// carrier's queue, where niceness and lifetimes still apply, rather than in TLS and socket
/// buffers, without holding back a fast path.
#[derive(Debug, Default)]
struct Acks {
    inner: std::sync::Mutex<AckInner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct AckInner {
    /// Frames written and not yet acknowledged: where each ends in ACK units, when it was
    /// written, and the message it completes (if it carried FIN).
    frames: VecDeque<(u64, Instant, Option<MessageId>)>,
    written: u64,
    acked: u64,
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// Delivery rate in bytes per second, and the last point it was measured from.
    rate: Option<f64>,
    rate_mark: Option<(Instant, u64)>,
    /// The peer's direction ended: no more ACKs will come.
    peer_done: bool,
}

impl AckInner {
    fn window(&self) -> u64 {
        match (self.rate, self.min_rtt) {
            (Some(rate), Some(min_rtt)) => {
                // Below a few ms the RTT is the scheduler's, not the path's: count at least
                // RTT_FLOOR so a fast path is not throttled by task wake-ups.
                let rtt = min_rtt.max(RTT_FLOOR).as_secs_f64();
                ((2.0 * rate * rtt) as u64).clamp(MIN_WINDOW, MAX_WINDOW)
            }
            _ => INITIAL_WINDOW,
        }
    }
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while the window is full.
    async fn window_open(&self) {
        crate::wait::until(&self.changed, || self.has_room().then_some(())).await
    }

    /// How many bytes of frames to gather into one write: about 2 ms at the measured
    /// delivery rate, so a slow path gets small TLS records (a record is only readable once
    /// whole) and a fast one few system calls.
    fn batch_limit(&self) -> usize {
        self.lock().rate.map_or(0, |rate| {
            ((rate * BATCH_TIME.as_secs_f64()) as usize).min(BATCH)
        })
    }

    /// Whether more may be written now.
    fn has_room(&self) -> bool {
        let st = self.lock();
        st.peer_done || st.written - st.acked < st.window()
    }

    /// Waits until every written message is acknowledged or the peer can no longer ack.
    async fn all_acked(&self) {
        crate::wait::until(&self.changed, || {
            let st = self.lock();
            (st.frames.is_empty() || st.peer_done).then_some(())
        })
        .await
    }

    fn written(&self, id: MessageId, bytes: usize, fin: bool) {
        let mut st = self.lock();
        st.written += ack_units(bytes);
        let end = st.written;
        st.frames
            .push_back((end, Instant::now(), fin.then_some(id)));
    }

    /// Applies the peer's ACK of `acked` units.
    fn acknowledge(&self, acked: u64, outbox: &Outbox) -> Result<()> {
        let mut st = self.lock();
        if acked < st.acked || acked > st.written {
            return Err(Error::Protocol(format!(
                "ACK of {acked} units, outside the {}..={} sent",
                st.acked, st.written
            )));
        }
        let now = Instant::now();
        let mut sample = None;
        while let Some(&(end, at, fin)) = st.frames.front() {
            if end > acked {
                break;
            }
            st.frames.pop_front();
            sample = Some(now - at);
            if let Some(id) = fin {
                outbox.update(id, SendStatus::Acked, true);
            }
        }
        st.acked = acked;
        if let Some(rtt) = sample {
            let srtt = st.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8);
            let min_rtt = st.min_rtt.map_or(rtt, |m| m.min(rtt));
            st.srtt = Some(srtt);
            st.min_rtt = Some(min_rtt);
            outbox.set_rtt(srtt, min_rtt);
            // One delivery-rate sample per minimum RTT at most, smoothed.
            match st.rate_mark {
                Some((t0, a0)) if now - t0 >= min_rtt && now > t0 => {
                    let sample = (acked - a0) as f64 / (now - t0).as_secs_f64();
                    st.rate = Some(st.rate.map_or(sample, |r| 0.75 * r + 0.25 * sample));
                    st.rate_mark = Some((now, acked));
                }
                Some(_) => {}
                None => st.rate_mark = Some((now, acked)),
            }
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The peer will send no more ACKs: what was written is as sent as it will get.
    fn peer_done(&self, outbox: &Outbox) {
        let mut st = self.lock();
        st.peer_done = true;
        for (_, _, fin) in st.frames.drain(..) {
            if let Some(id) = fin {
                outbox.update(id, SendStatus::Sent, true);
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }
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
    events: EventTx,
    limits: ReceiveLimits,
) -> StreamTasks
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (kill, killed) = watch::channel(false);
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let acks = Arc::new(Acks::default());
    let writer = tokio::spawn(write_loop(
        write_half,
        outbox.clone(),
        acks.clone(),
        ack_rx,
        killed,
    ));
    // Frames are read in small pieces (a 16-byte header, then the payload): a buffer keeps
    // that from costing a TLS read (and a system call) each.
    let read_half = tokio::io::BufReader::with_capacity(64 * 1024, read_half);
    let reader = tokio::spawn(read_loop(
        read_half,
        Receiver {
            events,
            limits,
            outbox,
            acks,
            ack_tx,
        },
        kill.clone(),
    ));
    StreamTasks {
        writer,
        reader,
        kill,
    }
}

async fn killed(kill: &mut watch::Receiver<bool>) {
    let _ = kill.wait_for(|k| *k).await;
}

enum Step {
    Killed,
    Ack,
    AckDue,
    Item(Option<Item>),
    Done,
    Flush,
}

/// How long the writer lets written data sit unflushed when nothing more comes (the queue
/// can empty under it when queued messages expire).
const FLUSH_DELAY: Duration = Duration::from_millis(1);

/// Most bytes of frames gathered into one write (one system call).
const BATCH: usize = 64 * 1024;
/// How much sending time one write may gather (see [`Acks::batch_limit`]).
const BATCH_TIME: Duration = Duration::from_millis(2);
/// An ACK waits at most this long for data to ride on, or for more to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// ...unless this many units are unacknowledged.
const ACK_EVERY: u64 = 32 * 1024;

fn encode_frame(batch: &mut BytesMut, item: &Item) {
    let header = if item.abort {
        FrameHeader::abort(item.id)
    } else {
        // `next` cut the item to at most MAX_FRAME bytes.
        FrameHeader::part(item.id, item.data.len() as u32, item.fin)
    };
    batch.extend_from_slice(&header.encode());
    batch.extend_from_slice(&item.data);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    outbox: Arc<Outbox>,
    acks: Arc<Acks>,
    mut ack_rx: watch::Receiver<u64>,
    mut kill: watch::Receiver<bool>,
) -> Result<()> {
    let result = async {
        let io = |e: std::io::Error| Error::Connection(format!("TCP write: {e}"));
        let mut draining = true;
        let mut dirty = false;
        // The ACK count last sent, and when a pending one is due.
        let mut ack_sent: u64 = 0;
        let mut ack_due: Option<Instant> = None;
        let mut batch = BytesMut::with_capacity(BATCH + MAX_FRAME + HEADER_LEN);
        loop {
            let step = tokio::select! {
                biased;
                _ = killed(&mut kill) => Step::Killed,
                Ok(()) = ack_rx.changed() => Step::Ack,
                _ = sleep_until_opt(ack_due) => Step::AckDue,
                item = async { acks.window_open().await; outbox.next(MAX_FRAME).await }, if draining => Step::Item(item),
                _ = acks.all_acked(), if !draining => Step::Done,
                _ = tokio::time::sleep(FLUSH_DELAY), if dirty => Step::Flush,
            };
            let mut sent_fins = Vec::new();
            let mut flush = false;
            match step {
                // Closing with everything acknowledged: the peer going away now costs nothing.
                Step::Killed if !draining && acks.lock().frames.is_empty() => return Ok(()),
                Step::Killed => return Err(Error::Connection("transient ended".into())),
                Step::Ack => {
                    let count = *ack_rx.borrow_and_update();
                    if count - ack_sent < ACK_EVERY {
                        ack_due.get_or_insert_with(|| Instant::now() + ACK_DELAY);
                        continue;
                    }
                    flush = true;
                }
                Step::AckDue => flush = true,
                Step::Item(None) => {
                    // Everything is written; wait for the acknowledgements (acking the peer
                    // meanwhile), then end our direction.
                    out.flush().await.map_err(io)?;
                    draining = false;
                    continue;
                }
                Step::Done => break,
                Step::Flush => flush = true,
                Step::Item(Some(first)) => {
                    // Gather what is ready into one write, within the window.
                    let mut item = first;
                    loop {
                        // Recorded before writing: the peer's ACK can come back before
                        // the write returns.
                        acks.written(item.id, item.data.len(), item.fin);
                        encode_frame(&mut batch, &item);
                        flush |= item.props.immediate;
                        if item.fin && !item.abort {
                            sent_fins.push(item.id);
                        }
                        if batch.len() >= acks.batch_limit() || !acks.has_room() {
                            break;
                        }
                        match outbox.try_next(MAX_FRAME) {
                            Some(next) => item = next,
                            None => break,
                        }
                    }
                    flush |= outbox.idle();
                }
            }
            // A pending ACK rides along with whatever is written now.
            let count = *ack_rx.borrow_and_update();
            if count > ack_sent {
                batch.extend_from_slice(&FrameHeader::ack(count).encode());
                ack_sent = count;
            }
            ack_due = None;
            let write = async {
                if !batch.is_empty() {
                    out.write_all(&batch).await?;
                }
                if flush {
                    out.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::select! {
                biased;
                _ = killed(&mut kill) => return Err(Error::Connection("transient ended".into())),
                done = write => done.map_err(io)?,
            }
            dirty = !flush;
            batch.clear();
            for id in sent_fins {
                outbox.update(id, SendStatus::Sent, false);
            }
        }
        out.shutdown().await.map_err(io)?;
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        outbox.fail_all(&e.to_string());
    }
    result
}

/// What the reader of a stream transient feeds.
struct Receiver {
    events: EventTx,
    limits: ReceiveLimits,
    outbox: Arc<Outbox>,
    acks: Arc<Acks>,
    ack_tx: watch::Sender<u64>,
}

/// Messages being reassembled at once; more is a protocol violation.
const MAX_OPEN_MESSAGES: usize = 1024;

async fn read_loop<R: AsyncRead + Unpin>(mut input: R, rx: Receiver, kill: watch::Sender<bool>) {
    // A clean end of stream is the peer's half-close: our writer may go on until we close.
    // A violation or read error ends the whole transient.
    let mut killed_rx = kill.subscribe();
    let end = tokio::select! {
        biased;
        end = read_messages(&mut input, &rx) => end,
        // Aborted locally (or the writer failed): drop our half too, so the connection closes.
        _ = killed(&mut killed_rx) => Err(Error::Connection("aborted".into())),
    };
    rx.acks.peer_done(&rx.outbox);
    match end {
        Ok(()) => {
            let _ = rx.events.send(Event::Closed).await;
        }
        Err(e) => {
            let _ = kill.send(true);
            let _ = rx.events.send(Event::ConnectionError(e)).await;
        }
    }
}

async fn read_messages<R: AsyncRead + Unpin>(input: &mut R, rx: &Receiver) -> Result<()> {
    let (events, limits) = (&rx.events, &rx.limits);
    let mut open: BTreeMap<MessageId, Assembly> = BTreeMap::new();
    let mut discarding: BTreeSet<MessageId> = BTreeSet::new();
    let mut received: u64 = 0;
    loop {
        let Some((header, data)) = read_frame(input, limits.max_message_size).await? else {
            if let Some(id) = open.keys().next() {
                return Err(Error::Protocol(format!(
                    "stream ended in the middle of message {id}"
                )));
            }
            return Ok(());
        };
        if header.is_ack() {
            rx.acks.acknowledge(header.id, &rx.outbox)?;
            continue;
        }
        let id = header.id;
        let mut out = Vec::new();
        received += ack_units(data.len());
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
            match a.push(data, header.fin(), limits) {
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
        // Acknowledge as the frame is handed to the application's queue (or the reassembly),
        // so the ACK can ride on an answer the application sends at once.
        let _ = rx.ack_tx.send(received);
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
) -> Result<Option<(FrameHeader, Bytes)>> {
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
    let len = header.len as usize;
    let mut data = BytesMut::with_capacity(len);
    while data.len() < len {
        let want = (len - data.len()) as u64;
        let n = (&mut *input)
            .take(want)
            .read_buf(&mut data)
            .await
            .map_err(|e| Error::Connection(format!("TCP read: {e}")))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "truncated frame: message {} announced {} bytes",
                header.id, header.len
            )));
        }
    }
    Ok(Some((header, data.freeze())))
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
            got.map(|(h, d)| (h.id, d.to_vec())),
            Some((7, b"abc".to_vec()))
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
