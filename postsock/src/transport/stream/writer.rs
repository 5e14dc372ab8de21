//! The writer task of a stream transient: frames from the outbox, ACKs, keepalives, CLOSE.

use super::*;

/// How long an aborting writer may take to finish its frame and say goodbye.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The writer stops (the transient is being replaced, or broke).
pub(super) const KILL_STOP: u8 = 1;
/// The writer tells the peer the carrier is aborted, then stops.
pub(super) const KILL_ABORT: u8 = 2;

async fn killed(kill: &mut watch::Receiver<u8>) -> u8 {
    match kill.wait_for(|k| *k != 0).await {
        Ok(k) => *k,
        Err(_) => KILL_STOP,
    }
}

enum Step {
    KeepAlive,
    Killed(u8),
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
pub(super) const BATCH: usize = 64 * 1024;
/// How much sending time one write may gather (see [`Acks::batch_limit`]).
pub(super) const BATCH_TIME: Duration = Duration::from_millis(2);
/// An ACK waits at most this long for data to ride on, or for more to acknowledge.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// ...unless this many units are unacknowledged.
const ACK_EVERY: u64 = 32 * 1024;

fn frame_header(item: &Item) -> [u8; HEADER_LEN] {
    if item.abort {
        FrameHeader::abort(item.id).encode()
    } else {
        // `next` cut the item to at most MAX_FRAME bytes.
        FrameHeader::part(item.id, item.data.len() as u32, item.fin).encode()
    }
}

/// Adds `item`'s frame to `batch` (recorded as written first: the peer's ACK can come back
/// before the write returns); true if the message asks to be sent immediately.
fn append(
    batch: &mut BytesMut,
    item: &Item,
    (acks, keep): (&Acks, bool),
    sent_fins: &mut Vec<MessageId>,
) -> bool {
    let header = frame_header(item);
    acks.written(item, &header, keep);
    batch.extend_from_slice(&header);
    batch.extend_from_slice(&item.data);
    if item.fin && !item.abort {
        sent_fins.push(item.id);
    }
    item.props.immediate
}

/// Tells the peer (best effort, bounded) that the carrier is aborted, not merely broken.
async fn say_aborted<W: AsyncWrite + Unpin>(out: &mut W) -> Result<()> {
    let bye = FrameHeader::close(true).encode();
    let _ = tokio::time::timeout(ABORT_GRACE, async {
        out.write_all(&bye).await?;
        out.shutdown().await
    })
    .await;
    Err(ConnectionError::Aborted.into())
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut out: W,
    core: &StreamCore,
    (preamble, early): (Vec<Bytes>, Option<EarlyStart>),
    mut ack_rx: watch::Receiver<u64>,
    mut kill: watch::Receiver<u8>,
) -> Result<()> {
    let (outbox, acks) = (&core.outbox, &core.acks);
    let keep = core.token.is_some();
    let io = |e: std::io::Error| tcp("write", e);
    let mut draining = true;
    let mut dirty = false;
    // The ACK count last sent (a continuation's HELLO has sent the count it starts from),
    // and when a pending one is due.
    let mut ack_sent: u64 = *ack_rx.borrow_and_update();
    let mut ack_due: Option<Instant> = None;
    let mut batch = BytesMut::with_capacity(BATCH + MAX_FRAME + HEADER_LEN);
    for piece in preamble {
        batch.extend_from_slice(&piece);
    }
    let mut flush = !batch.is_empty();
    let mut carries_data = false;
    let mut sent_fins = Vec::new();
    if let Some(start) = early {
        let _ = start.gate.await;
        // TLS early data, which anyone who recorded it could replay: only idempotent
        // messages (RFC 9622 §9.1.3.4), what is ready now and fits the ticket's allowance.
        loop {
            let room = (MAX_EARLY_DATA as usize).saturating_sub(batch.len() + HEADER_LEN);
            if room == 0 || !acks.has_room() {
                break;
            }
            let Some(item) = outbox.try_next_where(room, |p| p.idempotent) else {
                break;
            };
            carries_data = true;
            append(&mut batch, &item, (acks, keep), &mut sent_fins);
        }
        // The flush completes the handshake; nothing else is written before it. A server
        // that took TCP but never answers TLS would otherwise hold the carrier forever.
        let handshake = async {
            out.write_all(&batch).await?;
            out.flush().await
        };
        let done = tokio::select! {
            biased;
            _ = killed(&mut kill) => return Err(ConnectionError::TransientEnded.into()),
            done = tokio::time::timeout(start.timeout, handshake) => done,
        };
        match done {
            Ok(r) => r.map_err(io)?,
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "TLS handshake after early data not done in {:?}",
                        start.timeout
                    ),
                );
                return Err(tcp("handshake", e));
            }
        }
        if std::mem::take(&mut carries_data) {
            core.tx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        batch.clear();
        flush = false;
        outbox.update_all(std::mem::take(&mut sent_fins), || SendStatus::Sent, false);
    }
    loop {
        if batch.is_empty() && !flush {
            let step = tokio::select! {
                biased;
                how = killed(&mut kill) => Step::Killed(how),
                Ok(()) = ack_rx.changed() => Step::Ack,
                _ = crate::util::until_opt(ack_due) => Step::AckDue,
                item = async { acks.window_open().await; outbox.next(MAX_FRAME).await }, if draining => Step::Item(item),
                _ = acks.all_acked(), if !draining => Step::Done,
                _ = tokio::time::sleep(FLUSH_DELAY), if dirty => Step::Flush,
                _ = crate::util::until_opt(core.keepalive.map(|k| Instant::now() + k)), if keep => Step::KeepAlive,
            };
            match step {
                Step::Killed(KILL_ABORT) => return say_aborted(&mut out).await,
                // Closing with everything acknowledged: the peer going away now costs nothing.
                Step::Killed(_) if !draining && acks.lock().nothing_unacked() => return Ok(()),
                Step::Killed(_) => return Err(ConnectionError::TransientEnded.into()),
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
                Step::KeepAlive => {
                    // Idle for a keepalive interval: an ACK (new or not) tells the peer the
                    // path still works.
                    batch.extend_from_slice(
                        &FrameHeader::ack(ack_sent.max(*ack_rx.borrow())).encode(),
                    );
                    flush = true;
                }
                Step::Item(Some(first)) => {
                    // Gather what is ready into one write, within the window.
                    carries_data = true;
                    let mut item = first;
                    loop {
                        flush |= append(&mut batch, &item, (acks, keep), &mut sent_fins);
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
        }
        // A pending ACK rides along with whatever is written now.
        let count = *ack_rx.borrow_and_update();
        if count > ack_sent {
            batch.extend_from_slice(&FrameHeader::ack(count).encode());
            ack_sent = count;
        }
        ack_due = None;
        let mut aborted = false;
        {
            let write = async {
                if !batch.is_empty() {
                    out.write_all(&batch).await?;
                }
                if flush {
                    out.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::pin!(write);
            let how = tokio::select! {
                biased;
                how = killed(&mut kill) => Some(how),
                done = &mut write => {
                    done.map_err(io)?;
                    None
                }
            };
            match how {
                // An abort lets the frame being written finish, so the CLOSE that follows
                // is read as one.
                Some(KILL_ABORT) => {
                    aborted = tokio::time::timeout(ABORT_GRACE, &mut write)
                        .await
                        .is_ok_and(|r| r.is_ok());
                }
                Some(_) => return Err(ConnectionError::TransientEnded.into()),
                None => {}
            }
        }
        if aborted {
            return say_aborted(&mut out).await;
        }
        // Only writes the peer must acknowledge count as sent for the path's health: a lone
        // ACK or keepalive gets no answer of its own, so silence after it means nothing.
        if std::mem::take(&mut carries_data) {
            core.tx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        dirty = !flush;
        flush = false;
        batch.clear();
        outbox.update_all(std::mem::take(&mut sent_fins), || SendStatus::Sent, false);
    }
    // The peer's last messages are acknowledged before we go, so that they end acked, not
    // merely sent, at the peer.
    let mut tail = Vec::new();
    let count = *ack_rx.borrow();
    if count > ack_sent {
        tail.extend_from_slice(&FrameHeader::ack(count).encode());
    }
    if keep {
        // A resumable carrier says it is done, so the peer can tell a close from a break.
        tail.extend_from_slice(&FrameHeader::close(false).encode());
    }
    if !tail.is_empty() {
        out.write_all(&tail).await.map_err(io)?;
    }
    out.shutdown().await.map_err(io)?;
    Ok(())
}
