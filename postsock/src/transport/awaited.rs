//! The acknowledgements a QUIC sending loop waits for, without a future per message.
//!
//! quinn tells of a stream's acknowledgement only through `SendStream::stopped()`: a future
//! that, while the stream is unacknowledged, leaves a `Notify` in the connection's map for
//! the connection driver to wake. Awaited message by message, that is a future, a `Notify`
//! and a wake-up of the sending loop per message, about 2 k of the 3.5 k instructions a
//! 1 KiB QUIC message cost over raw quinn's (BENCHMARKS.md, "QUIC acknowledgements without a
//! future per message").
//!
//! [`Awaited`] keeps the written messages in the order they were written and watches two of
//! them: the oldest, and the newest when the loop last waited. `stopped()` also answers at
//! once, without leaving anything behind, for a stream that is already acknowledged (its
//! state is gone). So when the oldest is acknowledged, the ones after it are looked at in
//! order until one is not; when the newest is, every one is looked at. Every message is
//! settled: the oldest always has a watcher while the loop waits, and every message becomes
//! the oldest.
//!
//! Settled as promptly as one future each would have only while acknowledgements come in
//! write order: quinn sends streams of one priority in write order (postsock turns its
//! round-robin off, `quic::transport_config`), so they do unless a packet is lost. Behind
//! a lost one the peer acknowledges later messages first, and only the newest's answer
//! would settle them; so for a few round trips after a loss the sending loop awaits each
//! message on its own again (`quic::LOSS_MODE_RTTS`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// What `stopped()` answers: `Ok(None)` acknowledged, `Ok(Some(code))` the peer stopped the
/// stream, `Err` the connection ended.
pub(crate) type Stopped = Result<Option<quinn::VarInt>, quinn::StoppedError>;

type Watch = Pin<Box<dyn Future<Output = Stopped> + Send + Sync>>;

/// Messages written and finished, waiting for the peer's acknowledgement, in write order;
/// `T` is what the sending loop keeps of each.
pub(crate) struct Awaited<T> {
    /// `None`: settled ahead of an older one.
    queue: VecDeque<Option<(quinn::SendStream, T)>>,
    /// The number of `queue[0]`.
    base: u64,
    /// Unsettled messages in `queue`.
    live: usize,
    /// The watcher of the oldest (`queue[0]`), with its number.
    oldest: Option<(u64, Watch)>,
    /// The watcher of the newest when last polled, with its number.
    newest: Option<(u64, Watch)>,
}

impl<T> Default for Awaited<T> {
    fn default() -> Self {
        Awaited {
            queue: VecDeque::new(),
            base: 0,
            live: 0,
            oldest: None,
            newest: None,
        }
    }
}

/// `stopped()`'s answer now, if it has one: one poll with a waker that is never woken.
fn answer_now(stream: &quinn::SendStream) -> Option<Stopped> {
    let fut = stream.stopped();
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

impl<T> Awaited<T> {
    /// Unsettled messages.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Waits for `stream`'s acknowledgement; `t` comes back with it.
    pub(crate) fn push(&mut self, stream: quinn::SendStream, t: T) {
        self.queue.push_back(Some((stream, t)));
        self.live += 1;
    }

    /// Takes the settled entry at `i` (a number less `base`).
    fn take(&mut self, i: usize) -> (quinn::SendStream, T) {
        let entry = self.queue[i].take().expect("an unsettled entry");
        self.live -= 1;
        entry
    }

    /// Drops settled entries at either end.
    fn trim(&mut self) {
        while let Some(None) = self.queue.front() {
            self.queue.pop_front();
            self.base += 1;
        }
        while let Some(None) = self.queue.back() {
            self.queue.pop_back();
        }
    }

    /// Settles what has been answered into `out`; `cx`'s task is woken when the oldest is
    /// answered, and with `watch_newest` when the newest is. Ready when something was
    /// settled. (Without `watch_newest`, for a poll between two writes of a burst: the
    /// newest changes with every write, and a watcher is a `Notify` in quinn's map.)
    pub(crate) fn poll_settled(
        &mut self,
        cx: &mut Context<'_>,
        watch_newest: bool,
        out: &mut Vec<(quinn::SendStream, T, Stopped)>,
    ) -> Poll<()> {
        let before = out.len();
        loop {
            self.settle_oldest(cx, out);
            if !watch_newest || self.live < 2 {
                if self.live < 2 {
                    self.newest = None;
                }
                break;
            }
            let n = self.base + self.queue.len() as u64 - 1;
            if self.newest.as_ref().is_none_or(|(m, _)| *m != n) {
                let Some(Some((stream, _))) = self.queue.back() else {
                    unreachable!("trimmed at both ends");
                };
                self.newest = Some((n, Box::pin(stream.stopped())));
            }
            let Some((_, watch)) = &mut self.newest else {
                break;
            };
            let Poll::Ready(answer) = watch.as_mut().poll(cx) else {
                break;
            };
            // The newest is answered: so is every other the peer's ACKs covered.
            self.newest = None;
            let last = self.queue.len() - 1;
            let (stream, t) = self.take(last);
            out.push((stream, t, answer));
            for i in 0..self.queue.len() {
                let answer = match &self.queue[i] {
                    Some((stream, _)) => answer_now(stream),
                    None => None,
                };
                if let Some(answer) = answer {
                    let (stream, t) = self.take(i);
                    out.push((stream, t, answer));
                }
            }
            // And round again: the new oldest and newest get their watchers.
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Settles the oldest, then the ones after it while they are answered; leaves the
    /// oldest unanswered one watched.
    fn settle_oldest(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<(quinn::SendStream, T, Stopped)>,
    ) {
        loop {
            self.trim();
            let Some(Some((stream, _))) = self.queue.front() else {
                self.oldest = None;
                return;
            };
            let n = self.base;
            if self.oldest.as_ref().is_some_and(|(m, _)| *m != n) {
                self.oldest = None;
            }
            let answer = match &mut self.oldest {
                Some((_, watch)) => match watch.as_mut().poll(cx) {
                    Poll::Ready(answer) => answer,
                    Poll::Pending => return,
                },
                None => match answer_now(stream) {
                    Some(answer) => answer,
                    None => {
                        let mut watch: Watch = Box::pin(stream.stopped());
                        match watch.as_mut().poll(cx) {
                            Poll::Ready(answer) => answer,
                            Poll::Pending => {
                                self.oldest = Some((n, watch));
                                return;
                            }
                        }
                    }
                },
            };
            self.oldest = None;
            let (stream, t) = self.take(0);
            out.push((stream, t, answer));
        }
    }

    /// Takes every unsettled message, in write order (the carrier halted, or they are to
    /// be awaited one by one); nothing is watched any more.
    pub(crate) fn take_all(&mut self) -> Vec<(quinn::SendStream, T)> {
        self.oldest = None;
        self.newest = None;
        self.live = 0;
        self.base += self.queue.len() as u64;
        self.queue.drain(..).flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::quic::tests::connected;
    use std::time::Duration;

    /// Polls `a` (as a task would, watching the newest or not) until it settled `want`
    /// messages; panics after 5 s.
    async fn settle(a: &mut Awaited<u32>, want: usize, watch_newest: bool) -> Vec<(u32, Stopped)> {
        let mut out = Vec::new();
        let settling = std::future::poll_fn(|cx| {
            let _ = a.poll_settled(cx, watch_newest, &mut out);
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

    #[tokio::test]
    async fn every_written_message_is_settled_once_when_acknowledged() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::default();
        for n in 0..64 {
            a.push(written(&conn, n, true).await, n);
        }
        assert_eq!(a.len(), 64);
        let mut got = settle(&mut a, 64, true).await;
        assert!(got.iter().all(|(_, answer)| matches!(answer, Ok(None))));
        got.sort_by_key(|(n, _)| *n);
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..64).collect::<Vec<_>>(),
            "each message once"
        );
        assert!(a.is_empty());
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.poll_settled(&mut cx, true, &mut out).is_pending());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn messages_acknowledged_behind_an_unacknowledged_one_are_settled_by_the_newest() {
        let (_ep, conn, _server_ep, _server) = connected().await;
        let mut a = Awaited::default();
        // The oldest is never finished, so never acknowledged (as a lost one, for a while).
        a.push(written(&conn, 0, false).await, 0);
        for n in 1..=8 {
            a.push(written(&conn, n, true).await, n);
        }
        // Between two writes (no watcher of the newest) only the oldest is looked at.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.poll_settled(&mut cx, false, &mut out).is_pending());
        assert!(out.is_empty(), "nothing past the unanswered oldest");
        // Waiting, the loop watches the newest too: its answer settles the rest.
        let mut got = settle(&mut a, 8, true).await;
        got.sort_by_key(|(n, _)| *n);
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(a.len(), 1);
        let left = a.take_all();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, 0, "the unanswered one comes back on a halt");
        assert!(a.is_empty());
    }

    #[tokio::test]
    async fn a_stream_the_peer_stops_is_answered_with_its_code() {
        let (_ep, conn, _server_ep, server) = connected().await;
        let stream = written(&conn, 1, false).await;
        let mut recv = server.accept_uni().await.expect("accept");
        recv.stop(7u32.into()).expect("stop");
        let mut a = Awaited::default();
        a.push(stream, 1);
        let got = settle(&mut a, 1, true).await;
        assert!(
            matches!(got[0].1, Ok(Some(code)) if code == 7u32.into()),
            "{:?}",
            got[0].1
        );
    }
}
