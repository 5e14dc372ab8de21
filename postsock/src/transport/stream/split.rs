//! The two directions of one TLS stream, for the reader's task and the writer's, without a
//! thread ever sleeping on the other direction's lock.
//!
//! Reading and writing TLS both need the one connection state, so the halves share the
//! stream behind a lock, as `tokio::io::split` does. That one's lock is a plain mutex: a
//! worker whose half found the stream in use slept on it (`futex`) until the other half's
//! system call returned, and the other woke it with a second one: on two workers about 530
//! such calls per 60,000 messages of 1 KiB, as many as the send queue's own. Here a half
//! that finds the stream in use returns `Pending` and is woken by the other half when it
//! lets go, so the thread runs other tasks meanwhile. On one thread the stream is never
//! found in use (neither half holds it across an `.await`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

struct Shared<S> {
    io: Mutex<S>,
    /// The task of the read half, waiting for the stream to be let go.
    reader: AtomicWaker,
    /// The same for the write half.
    writer: AtomicWaker,
    /// Whether the stream takes vectored writes (asked once: the answer never changes).
    vectored: bool,
}

/// The read half of [`split`].
pub(crate) struct ReadHalf<S>(Arc<Shared<S>>);

/// The write half of [`split`].
pub(crate) struct WriteHalf<S>(Arc<Shared<S>>);

/// Splits `io` into a read half and a write half.
pub(crate) fn split<S: AsyncWrite>(io: S) -> (ReadHalf<S>, WriteHalf<S>) {
    let shared = Arc::new(Shared {
        vectored: io.is_write_vectored(),
        io: Mutex::new(io),
        reader: AtomicWaker::new(),
        writer: AtomicWaker::new(),
    });
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

fn try_lock<S>(m: &Mutex<S>) -> Option<MutexGuard<'_, S>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl<S: Unpin> Shared<S> {
    /// Runs `op` on the stream if it is free; else `Pending`, `me` woken when the holder
    /// lets go. Wakes `other` if it waited.
    fn with<R>(
        &self,
        cx: &mut Context<'_>,
        (me, other): (&AtomicWaker, &AtomicWaker),
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let mut guard = match try_lock(&self.io) {
            Some(guard) => guard,
            None => {
                me.register(cx.waker());
                // Let go of between the two looks: take it now (no wake-up will come).
                match try_lock(&self.io) {
                    Some(guard) => {
                        me.take();
                        guard
                    }
                    None => return Poll::Pending,
                }
            }
        };
        let out = op(Pin::new(&mut *guard), cx);
        drop(guard);
        other.wake();
        out
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let s = &*self.0;
        s.with(cx, (&s.reader, &s.writer), |io, cx| io.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = &*self.0;
        s.with(cx, (&s.writer, &s.reader), |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let s = &*self.0;
        s.with(cx, (&s.writer, &s.reader), |io, cx| {
            io.poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.0.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &*self.0;
        s.with(cx, (&s.writer, &s.reader), |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &*self.0;
        s.with(cx, (&s.writer, &s.reader), |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::transport::tests::counting;

    /// A half that finds the stream in use returns at once (a blocking lock would hang this
    /// one-thread test) and is woken when the other half lets go; then it reads.
    #[tokio::test]
    async fn a_half_that_finds_the_stream_in_use_waits_as_a_task_and_is_woken() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut read, mut write) = split(near);
        far.write_all(b"hello").await.expect("write");
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut bytes = [0u8; 8];
        let shared = read.0.clone();
        let held = shared.io.lock().expect("lock");
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(Pin::new(&mut read)
            .poll_read(&mut cx, &mut buf)
            .is_pending());
        drop(held);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // The write half's next use lets go of the stream and wakes the reader.
        write.flush().await.expect("flush");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(Pin::new(&mut read).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"hello");
        // Once taken, the waiter is gone: no more wake-ups for it.
        write.flush().await.expect("flush");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        write.write_all(b"back").await.expect("write");
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"back");
        assert!(write.is_write_vectored() == far.is_write_vectored());
    }

    /// Both halves busy at once on two workers, through a small pipe echoed back: every
    /// byte comes back (a wake-up lost while a half waited for the other would stall this
    /// until the timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_halves_at_once_on_two_workers_lose_no_wake_up() {
        let (near, far) = tokio::io::duplex(256);
        let (mut read, mut write) = split(near);
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(far);
            tokio::io::copy(&mut r, &mut w).await
        });
        let total = 4 << 20;
        let writer = tokio::spawn(async move {
            let chunk: Vec<u8> = (0..=255u8).collect();
            for _ in 0..total / chunk.len() {
                write.write_all(&chunk).await.expect("write");
            }
            write.flush().await.expect("flush");
            write
        });
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1000];
            let (mut got, mut next) = (0, 0u8);
            while got < total {
                let n = read.read(&mut buf).await.expect("read");
                assert!(n > 0, "ended early");
                for &b in &buf[..n] {
                    assert_eq!(b, next, "byte {got} out of order");
                    next = next.wrapping_add(1);
                    got += 1;
                }
            }
            got
        });
        let both = async { (writer.await.expect("writer"), reader.await.expect("reader")) };
        let (_write, got) = tokio::time::timeout(std::time::Duration::from_secs(60), both)
            .await
            .expect("every byte back in time");
        assert_eq!(got, total);
        echo.abort();
    }
}
