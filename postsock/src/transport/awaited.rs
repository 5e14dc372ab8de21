//! The acknowledgements a QUIC sending loop waits for, without a future per message.
//!
//! quinn 0.11 tells of a stream's acknowledgement only through `SendStream::stopped()`: a
//! future that, while the stream is unacknowledged, leaves a `Notify` in the connection's
//! map for the connection driver to wake. Awaited message by message, that is a future, a
//! `Notify` and a wake-up of the sending loop per message, about 2 k of the 3.5 k
//! instructions a 1 KiB QUIC message cost over raw quinn's (BENCHMARKS.md, "QUIC
//! acknowledgements without a future per message").
//!
//! The vendored quinn (vendor/README.md) keeps one queue per connection of the send streams
//! that ended (all data acknowledged, or stopped by the peer), each with how it ended as
//! `stopped()` would answer, `Connection::poll_ended_sends`. [`Awaited`] keeps the written
//! messages by stream id and settles those the queue names with that answer: one waker for
//! the whole connection, nothing per message but its place here (no `stopped()` future,
//! not even one polled once), and every message settled when the peer acknowledged it, in
//! whatever order that happens.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// What `stopped()` answers: `Ok(None)` acknowledged, `Ok(Some(code))` the peer stopped the
/// stream, `Err` the connection ended.
pub(crate) type Stopped = Result<Option<quinn::VarInt>, quinn::StoppedError>;

/// Messages written and finished, waiting for the peer's acknowledgement; `T` is what the
/// sending loop keeps of each.
pub(crate) struct Awaited<T> {
    conn: quinn::Connection,
    /// Sorted by stream id: for the unidirectional streams this side opens, the order they
    /// were opened in.
    queue: VecDeque<(quinn::StreamId, quinn::SendStream, T)>,
    /// The ids the connection reported and how each ended, reused from poll to poll.
    ended: Vec<(quinn::StreamId, Option<quinn::VarInt>)>,
}

/// `stopped()`'s answer now, if it has one: one poll with a waker that is never woken.
pub(super) fn answer_now(stream: &quinn::SendStream) -> Option<Stopped> {
    let fut = stream.stopped();
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

impl<T> Awaited<T> {
    /// For `conn`'s streams; made before any of them is written (the connection records
    /// the streams that end from then on).
    pub(crate) fn new(conn: &quinn::Connection) -> Self {
        let mut ended = Vec::new();
        let _ = conn.poll_ended_sends(&mut Context::from_waker(Waker::noop()), &mut ended);
        ended.clear();
        Awaited {
            conn: conn.clone(),
            queue: VecDeque::new(),
            ended,
        }
    }

    /// Unsettled messages.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waits for `stream`'s acknowledgement; `t` comes back with it.
    pub(crate) fn push(&mut self, stream: quinn::SendStream, t: T) {
        let id = stream.id();
        // Nearly always at the end: streams are opened in the order messages are taken.
        if self.queue.back().is_none_or(|(last, _, _)| *last < id) {
            self.queue.push_back((id, stream, t));
        } else {
            let at = self.queue.partition_point(|(other, _, _)| *other < id);
            self.queue.insert(at, (id, stream, t));
        }
    }

    /// Settles into `out` the messages whose streams ended; `cx`'s task is woken when
    /// another ends (or the connection is lost: then every message is settled, as its
    /// stream's `stopped()` answers). Ready when something was settled.
    pub(crate) fn poll_settled(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<(quinn::SendStream, T, Stopped)>,
    ) -> Poll<()> {
        let before = out.len();
        // One call takes every id recorded, and leaves `cx`'s waker for the next.
        match self.conn.poll_ended_sends(cx, &mut self.ended) {
            Poll::Ready(Ok(())) => {
                for (id, stopped) in self.ended.drain(..) {
                    // Usually the oldest (streams of one priority leave in write order).
                    let found = match self.queue.front() {
                        Some((first, _, _)) if *first == id => self.queue.pop_front(),
                        _ => match self.queue.binary_search_by(|(other, _, _)| other.cmp(&id)) {
                            Ok(at) => self.queue.remove(at),
                            // Not one of these (a message that awaits its own).
                            Err(_) => continue,
                        },
                    };
                    // The connection says how it ended, as `stopped()` would.
                    let (_, stream, t) = found.expect("found");
                    out.push((stream, t, Ok(stopped)));
                }
            }
            Poll::Ready(Err(e)) => {
                for (_, stream, t) in self.queue.drain(..) {
                    let answer = answer_now(&stream)
                        .unwrap_or_else(|| Err(quinn::StoppedError::ConnectionLost(e.clone())));
                    out.push((stream, t, answer));
                }
            }
            Poll::Pending => {}
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes every unsettled message, in the order their streams were opened (the carrier
    /// halted).
    pub(crate) fn take_all(&mut self) -> Vec<(quinn::SendStream, T)> {
        self.queue
            .drain(..)
            .map(|(_, stream, t)| (stream, t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::quic::tests::connected;
    use std::time::Duration;

    /// Polls `a` (as a task would) until it settled `want` messages; panics after 5 s.
    async fn settle(a: &mut Awaited<u32>, want: usize) -> Vec<(u32, Stopped)> {
        let mut out = Vec::new();
        let settling = std::future::poll_fn(|cx| {
            let _ = a.poll_settled(cx, &mut out);
            if out.len() >= want {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(5), settling)
            .await
            .expect("settled in time");
        out.into_iter().map(|(_, t, answer)| (t, answer)).collect()
    }

    async fn written(conn: &quinn::Connection, n: u32, finish: bool) -> quinn::SendStream {
        let mut stream = conn.open_uni().await.expect("open");
        stream.write_all(&[n as u8; 1000]).await.expect("write");
        if finish {
            stream.finish().expect("finish");
        }
        stream
    }

    /// Writes messages `ns` on streams of their own (finished or not) and awaits them.
    async fn push_written(
        a: &mut Awaited<u32>,
        conn: &quinn::Connection,
        ns: impl IntoIterator<Item = u32>,
        finish: bool,
    ) {
        for n in ns {
            a.push(written(conn, n, finish).await, n);
        }
    }

    fn numbers(mut got: Vec<(u32, Stopped)>) -> Vec<u32> {
        got.sort_by_key(|(n, _)| *n);
        got.into_iter().map(|(n, _)| n).collect()
    }

    #[tokio::test]
    async fn every_written_message_is_settled_once_when_acknowledged() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::new(&conn);
        push_written(&mut a, &conn, 0..64, true).await;
        assert_eq!(a.len(), 64);
        let got = settle(&mut a, 64).await;
        assert!(got.iter().all(|(_, answer)| matches!(answer, Ok(None))));
        assert_eq!(
            numbers(got),
            (0..64).collect::<Vec<_>>(),
            "each message once"
        );
        assert!(a.is_empty());
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.poll_settled(&mut cx, &mut out).is_pending());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn messages_acknowledged_behind_an_unacknowledged_one_are_settled() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::new(&conn);
        // The oldest is never finished, so never acknowledged (as a lost one, for a while).
        push_written(&mut a, &conn, [0], false).await;
        push_written(&mut a, &conn, 1..=8, true).await;
        let got = settle(&mut a, 8).await;
        assert_eq!(numbers(got), (1..=8).collect::<Vec<_>>());
        assert_eq!(a.len(), 1);
        let left = a.take_all();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, 0, "the unanswered one comes back on a halt");
        assert!(a.is_empty());
    }

    #[tokio::test]
    async fn streams_it_does_not_hold_are_passed_over_and_it_still_wakes() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::new(&conn);
        // Streams that end but are not held here (messages awaiting their own).
        let mut others = Vec::new();
        for n in 0..4 {
            others.push(written(&conn, n, true).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.poll_settled(&mut cx, &mut out).is_pending());
        assert!(out.is_empty());
        // Pushed in another order than opened: kept in stream order, settled when acked.
        let late = conn.open_uni().await.expect("open");
        let early = written(&conn, 5, true).await;
        let mut late = late;
        late.write_all(&[6; 1000]).await.expect("write");
        late.finish().expect("finish");
        a.push(early, 5);
        a.push(late, 4);
        let got = settle(&mut a, 2).await;
        assert_eq!(numbers(got), vec![4, 5]);
    }

    #[tokio::test]
    async fn a_stream_the_peer_stops_is_answered_with_its_code() {
        let (_ep, conn, _server_ep, server) = connected().await;
        let mut a = Awaited::new(&conn);
        let stream = written(&conn, 1, false).await;
        let mut recv = server.accept_uni().await.expect("accept");
        recv.stop(7u32.into()).expect("stop");
        a.push(stream, 1);
        let got = settle(&mut a, 1).await;
        assert!(
            matches!(got[0].1, Ok(Some(code)) if code == 7u32.into()),
            "{:?}",
            got[0].1
        );
    }

    #[tokio::test]
    async fn a_lost_connection_settles_every_message_with_its_error() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::new(&conn);
        push_written(&mut a, &conn, 0..3, false).await;
        conn.close(3u32.into(), b"gone");
        let got = settle(&mut a, 3).await;
        assert!(
            got.iter().all(|(_, answer)| matches!(
                answer,
                Err(quinn::StoppedError::ConnectionLost(
                    quinn::ConnectionError::LocallyClosed
                ))
            )),
            "{got:?}"
        );
        assert!(a.is_empty());
    }
}
