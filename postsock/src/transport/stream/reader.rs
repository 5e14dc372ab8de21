//! The reader task of a stream transient: frames in, messages and ACKs out.

use super::*;

/// Messages being reassembled at once; more is a protocol violation.
const MAX_OPEN_MESSAGES: usize = 1024;

pub(super) async fn read_messages<R: AsyncRead + Unpin>(
    mut input: R,
    core: &StreamCore,
    ack_tx: AckTx,
    mut stop: watch::Receiver<bool>,
    entry: Entry,
) -> ReadEnd {
    let mut expect_hello = entry.expect_hello;
    // Position of the peer's next data frame while it writes again what we may have.
    let mut skip = entry.skip_from;
    let limits = &core.limits;
    let Some(events) = core.events() else {
        return ReadEnd::Gone;
    };
    let resumable = core.token.is_some();
    let mut st = core.recv.lock().await;
    let mut closing = false;
    loop {
        // A resumable peer writes at least every keepalive interval: three silent intervals
        // mean the path is gone (the carrier goes dormant until the client comes back).
        let silent_for = core.keepalive.filter(|_| resumable).map(|k| k * 3);
        let silence = async {
            match silent_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return ReadEnd::Stopped,
            frame = read_frame(&mut input, limits.max_message_size) => frame,
            _ = silence => {
                return ReadEnd::Broken(
                    ConnectionError::Silent {
                        ms: silent_for.unwrap_or_default().as_millis(),
                    }
                    .into(),
                )
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e @ Error::Protocol(_)) => return ReadEnd::Fatal(e),
            Err(e) if resumable => return ReadEnd::Broken(e),
            Err(e) => return ReadEnd::Fatal(e),
        };
        core.rx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((header, data)) = frame else {
            if resumable && !closing {
                return ReadEnd::Broken(ConnectionError::EndedWithoutClose.into());
            }
            if let Some(id) = st.open.keys().next() {
                return ReadEnd::Fatal(Violation::EndedInMessage { id: *id }.into());
            }
            return ReadEnd::Clean;
        };
        if expect_hello {
            // A continuation: the peer's HELLO says what it has and where it starts again.
            expect_hello = false;
            if header.kind != TYPE_HELLO {
                return ReadEnd::Fatal(Violation::HelloExpected.into());
            }
            let h = match parse_hello(&header, &data) {
                Ok(h) => h,
                Err(e) => return ReadEnd::Fatal(e),
            };
            if h.flags & FLAG_REFUSED != 0 || Some(h.token) != core.token {
                return ReadEnd::Fatal(ConnectionError::UnknownCarrier.into());
            }
            if let Err(e) = core.acks.acknowledge(h.received, &core.outbox) {
                return ReadEnd::Fatal(e);
            }
            skip = Some(h.resend_from);
            continue;
        }
        if header.is_ack() {
            if let Err(e) = core.acks.acknowledge(header.id, &core.outbox) {
                return ReadEnd::Fatal(e);
            }
            continue;
        }
        if header.kind == TYPE_MESSAGE {
            if let Some(at) = skip {
                let end = at + ack_units(data.len());
                if end <= st.received {
                    // Written again by the peer; we have it.
                    skip = Some(end);
                    continue;
                }
                if at != st.received {
                    return ReadEnd::Fatal(
                        Violation::ResendMisaligned {
                            at,
                            received: st.received,
                        }
                        .into(),
                    );
                }
                skip = None;
            }
        }
        match header.kind {
            TYPE_CLOSE if header.aborts() => {
                return ReadEnd::Fatal(ConnectionError::PeerAborted.into())
            }
            TYPE_CLOSE => {
                closing = true;
                continue;
            }
            TYPE_HELLO => return ReadEnd::Fatal(Violation::HelloMisplaced.into()),
            TYPE_MOVED => return ReadEnd::Fatal(Violation::MovedMisplaced.into()),
            _ => {}
        }
        let id = header.id;
        let mut out = Vec::new();
        st.received += ack_units(data.len());
        let RecvState {
            open, discarding, ..
        } = &mut *st;
        if header.aborts() {
            discarding.remove(&id);
            if let Some(a) = open.remove(&id) {
                if a.partly_delivered() {
                    out.push(Event::ReceiveError {
                        id,
                        error: ConnectionError::Abandoned { id }.into(),
                    });
                }
            }
        } else if discarding.contains(&id) {
            if header.fin() {
                discarding.remove(&id);
            }
        } else {
            if !open.contains_key(&id) && open.len() >= MAX_OPEN_MESSAGES {
                return ReadEnd::Fatal(
                    Violation::TooManyOpen {
                        max: MAX_OPEN_MESSAGES,
                    }
                    .into(),
                );
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
        ack_tx.received(st.received);
        for event in out {
            if events.send(event).await.is_err() {
                return ReadEnd::Gone;
            }
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    max: usize,
) -> Result<Option<(FrameHeader, Bytes)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = input
            .read(&mut header[filled..])
            .await
            .map_err(|e| tcp("read", e))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(Violation::TruncatedHeader {
                filled,
                len: HEADER_LEN,
            }
            .into());
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
            .map_err(|e| tcp("read", e))?;
        if n == 0 {
            return Err(Violation::TruncatedFrame {
                id: header.id,
                len: header.len,
            }
            .into());
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
