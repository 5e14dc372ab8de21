//! TLS 1.3 early data over TCP.
//!
//! **Server:** [`ServerTls`] is the server side of a TLS connection that can be read before
//! its handshake completes. tokio-rustls' acceptor finishes the handshake before it hands
//! over the stream, and rustls keeps early data apart from ordinary application data
//! (`ServerConnection::early_data`), so a resumed client's first messages would wait a full
//! round trip for its Finished. `ServerTls::accept` returns as soon as the server has
//! answered the ClientHello when it accepted early data; reads then yield the early data
//! first, and the ordinary data after the handshake, in the order the client wrote them.
//!
//! Replays: TLS 1.3 early data can be replayed by anyone who recorded it (RFC 8446 §8). The
//! listener's session store hands out single-use tickets (rustls takes a stateful ticket
//! out of the store when it resumes), so a replayed ClientHello does not resume on the same
//! listener, and a postsock client puts only idempotent messages in early data.
//!
//! **Client:** tokio-rustls' connector writes early data itself (feature `early-data`);
//! [`ClientEarly`] wraps its stream to tell the carrier, once the handshake is done, whether
//! the server resumed the session.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most early data a postsock listener accepts from one connection: the client's HELLO
/// and its first idempotent messages. A client never writes more than the ticket allows.
pub(crate) const MAX_EARLY_DATA: u32 = 16 * 1024;

/// The rustls configuration of a TLS/TCP listener: postsock's (`tls::server_config`) with
/// early data allowed. Its session store is stateful, so a ticket resumes once.
pub(crate) fn server_config(
    security: &crate::Security,
    clock: super::tls::Clock,
) -> crate::Result<Arc<rustls::ServerConfig>> {
    let mut config = super::tls::server_config(security, clock)?;
    config.max_early_data_size = MAX_EARLY_DATA;
    Ok(Arc::new(config))
}

/// `io` seen as a blocking reader and writer inside a poll: `Pending` is `WouldBlock`.
struct SyncIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for SyncIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// rustls hands its queued records as slices: one system call for all of them.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "TCP closed during the TLS handshake",
    )
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The server side of a TLS 1.3 connection whose early data is readable at once.
pub(crate) struct ServerTls<IO> {
    io: IO,
    conn: rustls::ServerConnection,
    /// The client closed TCP.
    eof: bool,
    /// The waker of the last write (`poll_write`, `poll_flush`, `poll_shutdown`): the task
    /// a read's write of pending records does on its behalf (see `poll_read`).
    writer: Option<Waker>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTls<IO> {
    /// Runs the server handshake on `io` until the stream can be read: to its end, or, when
    /// the server accepted the client's early data, until its answer to the ClientHello is
    /// written (the rest completes as the stream is read).
    pub(crate) async fn accept(config: Arc<rustls::ServerConfig>, io: IO) -> io::Result<Self> {
        let mut conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
        // Whatever is written before the handshake completes waits inside rustls; the writer
        // keeps it small (its window), and `poll_write` takes nothing new while TLS records
        // are still unwritten.
        conn.set_buffer_limit(None);
        let mut tls = ServerTls {
            io,
            conn,
            eof: false,
            writer: None,
        };
        std::future::poll_fn(|cx| tls.poll_accept(cx)).await?;
        Ok(tls)
    }

    /// Drives the handshake (writing what rustls has to send, reading on) until `done`
    /// holds; what arrives meanwhile stays readable.
    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        done: fn(&mut rustls::ServerConnection) -> bool,
    ) -> Poll<io::Result<()>> {
        loop {
            while self.conn.wants_write() {
                std::task::ready!(self.write_tls(cx))?;
            }
            if done(&mut self.conn) {
                return Poll::Ready(Ok(()));
            }
            if self.eof || std::task::ready!(self.read_tls(cx))? == 0 {
                return Poll::Ready(Err(closed_in_handshake()));
            }
        }
    }

    /// Readable: the handshake is complete, or the client's early data was accepted.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_handshake(cx, |c| !c.is_handshaking() || c.early_data().is_some())
    }

    /// Completes the handshake. Early data is replayable; what must not be, waits for this.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx, |c| !c.is_handshaking())).await
    }

    /// The rustls connection (ALPN, handshake kind).
    pub(crate) fn connection(&self) -> &rustls::ServerConnection {
        &self.conn
    }

    /// Reads TLS records from TCP and processes them; `Ok(0)` at TCP's end.
    fn read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = match self.conn.read_tls(&mut SyncIo {
            io: &mut self.io,
            cx,
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Tell the client why (best effort: the alert is queued by rustls).
            let waker = Waker::noop();
            let _ = self.write_tls(&mut Context::from_waker(waker));
            return Poll::Ready(Err(tls_error(e)));
        }
        Poll::Ready(Ok(n))
    }

    /// Writes pending TLS records to TCP.
    fn write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.conn.write_tls(&mut SyncIo {
            io: &mut self.io,
            cx,
        }) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Hands plaintext to rustls with `put`, once earlier records are out (back-pressure:
    /// nothing new while they wait for TCP); the new records go to TCP as far as it takes
    /// them.
    fn write_plain(
        &mut self,
        cx: &mut Context<'_>,
        put: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        self.note_writer(cx);
        while self.conn.wants_write() {
            std::task::ready!(self.write_tls(cx))?;
        }
        let n = put(&mut self.conn.writer())?;
        while self.conn.wants_write() {
            match self.write_tls(cx) {
                Poll::Ready(r) => r?,
                // Taken: the records go out with the next write or flush.
                Poll::Pending => break,
            };
        }
        Poll::Ready(Ok(n))
    }

    /// Keeps the writing task's waker for a read's writes (see `poll_read`).
    fn note_writer(&mut self, cx: &Context<'_>) {
        if !self
            .writer
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.writer = Some(cx.waker().clone());
        }
    }

    /// Copies what can be read now into `buf`: early data first, then application data once
    /// the handshake is complete. `None` when nothing is buffered.
    fn read_buffered(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        if let Some(mut early) = self.conn.early_data() {
            match early.read(buf.initialize_unfilled()) {
                Ok(0) => {}
                Ok(n) => {
                    buf.advance(n);
                    return Some(Ok(()));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        if self.conn.is_handshaking() {
            return None;
        }
        match read_plaintext(self.conn.reader(), buf) {
            Ok(()) => Some(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Copies decrypted application data into `buf` straight from rustls' buffer, without
/// zeroing `buf` first (as `Read::read` into `initialize_unfilled` would: a memset of all
/// the room offered, per read). Same outcomes as `Reader::read`: `WouldBlock` when nothing
/// is buffered, nothing added at a clean close, `UnexpectedEof` at an unclean one.
fn read_plaintext(mut reader: rustls::Reader<'_>, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    let chunk = reader.fill_buf()?;
    let n = chunk.len().min(buf.remaining());
    buf.put_slice(&chunk[..n]);
    reader.consume(n);
    Ok(())
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(r) = this.read_buffered(buf) {
                return Poll::Ready(r);
            }
            // Pending records (the session tickets after the client's Finished, or what the
            // writer left for want of room) go out now if TCP takes them, else with the
            // writer's next flush; the reader never waits for write readiness. A stream has
            // one waker slot for that (a TCP socket's), where the writer may be waiting: the
            // write from here registers the writer's waker, not one of its own (with none,
            // it took the slot from the writer, who was then never woken when room came).
            if this.conn.wants_write() {
                let writer = this.writer.clone();
                let waker = writer.as_ref().unwrap_or(Waker::noop());
                let _ = this.write_tls(&mut Context::from_waker(waker));
            }
            if this.eof {
                return Poll::Ready(if this.conn.is_handshaking() {
                    Err(closed_in_handshake())
                } else {
                    // Read everything: rustls says whether a close_notify ended it.
                    read_plaintext(this.conn.reader(), buf)
                });
            }
            match this.read_tls(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_plain(cx, |w| w.write(buf))
    }

    /// All of `bufs` in as few records as fit (rustls fills each record across slices), not
    /// one record and one system call per slice as the default `poll_write_vectored` would.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_plain(cx, |w| w.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.note_writer(cx);
        this.conn.writer().flush()?;
        while this.conn.wants_write() {
            std::task::ready!(this.write_tls(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.send_close_notify();
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A client TLS stream that may still be in its early-data phase: once the handshake is
/// done (the first flush after the early data completes it), it records in `resumed`
/// whether the server resumed the session, and in `accepted` whether it took the early data.
pub(crate) struct ClientEarly<IO> {
    inner: tokio_rustls::client::TlsStream<IO>,
    resumed: Arc<OnceLock<bool>>,
    accepted: Arc<OnceLock<bool>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientEarly<IO> {
    pub(crate) fn new(inner: tokio_rustls::client::TlsStream<IO>) -> Self {
        let mut s = ClientEarly {
            inner,
            resumed: Arc::new(OnceLock::new()),
            accepted: Arc::new(OnceLock::new()),
        };
        s.learn();
        s
    }

    /// Whether the handshake resumed a session, once it is done.
    pub(crate) fn resumed(&self) -> Arc<OnceLock<bool>> {
        self.resumed.clone()
    }

    /// Whether the stream is still before the end of its handshake: what is written now
    /// goes in early data.
    pub(crate) fn in_early_data(&self) -> bool {
        self.resumed.get().is_none()
    }

    /// Whether the server accepted the early data, once the handshake is done (tokio-rustls
    /// writes rejected early data again after it).
    pub(crate) fn early_accepted(&self) -> Arc<OnceLock<bool>> {
        self.accepted.clone()
    }

    fn learn(&mut self) {
        if self.resumed.get().is_none() && !self.inner.get_ref().1.is_handshaking() {
            let _ = self
                .accepted
                .set(self.inner.get_ref().1.is_early_data_accepted());
            let kind = self.inner.get_ref().1.handshake_kind();
            let _ = self
                .resumed
                .set(kind == Some(rustls::HandshakeKind::Resumed));
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientEarly<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.learn();
        r
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientEarly<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.learn();
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.learn();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.learn();
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.learn();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Security;

    /// Moves every pending TLS record between the two ends until both are quiet.
    fn exchange(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..20 {
            let mut c2s = Vec::new();
            client.write_tls(&mut c2s).expect("client write");
            let mut s2c = Vec::new();
            server.write_tls(&mut s2c).expect("server write");
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
            if !c2s.is_empty() {
                server.read_tls(&mut &c2s[..]).expect("server read");
                server.process_new_packets().expect("server process");
            }
            if !s2c.is_empty() {
                client.read_tls(&mut &s2c[..]).expect("client read");
                client.process_new_packets().expect("client process");
            }
        }
        panic!("the handshake did not settle");
    }

    /// A stream that keeps a copy of every byte written through it, and writes vectored.
    struct Tap {
        io: tokio::io::DuplexStream,
        seen: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Tap {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Tap {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            self.seen.lock().expect("tap").extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// The TLS records in `wire`: (content type, length).
    fn records(wire: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        let mut rest = wire;
        while rest.len() >= 5 {
            let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
            out.push((rest[0], len));
            rest = &rest[(5 + len).min(rest.len())..];
        }
        out
    }

    /// A listener's configuration (early data allowed) and a client's that trusts it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let ca = crate::certs::TestCa::new("early CA").expect("ca");
        let server = Security {
            identity: Some(ca.issue(&["localhost"]).expect("identity")),
            ..Default::default()
        };
        let client = Security {
            trusted_roots: vec![ca.root()],
            ..Default::default()
        };
        let client = crate::establish::association::TlsClients::new(
            &client,
            super::super::tls::system_clock(),
        )
        .expect("client configs")
        .tcp;
        (
            server_config(&server, super::super::tls::system_clock()).expect("server config"),
            client,
        )
    }

    #[tokio::test]
    async fn a_vectored_write_goes_out_in_one_record_each_way_and_reads_back_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server_config, config) = configs();
        let (a, b) = tokio::io::duplex(1 << 20);
        let (client_seen, server_seen) = (Arc::default(), Arc::default());
        let client_io = Tap {
            io: a,
            seen: Arc::clone(&client_seen),
        };
        let server_io = Tap {
            io: b,
            seen: Arc::clone(&server_seen),
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, client_io);
        let accept = ServerTls::accept(server_config, server_io);
        let (client, server) = tokio::join!(connect, accept);
        let mut client = ClientEarly::new(client.expect("client handshake"));
        let mut server = server.expect("server accept");
        server.handshake().await.expect("server handshake");
        assert!(client.is_write_vectored() && server.is_write_vectored());

        // A frame header and a long payload, as the writer's batch hands them.
        let header = [7u8; 12];
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut want = header.to_vec();
        want.extend_from_slice(&payload);
        for (from_client, seen) in [(true, &client_seen), (false, &server_seen)] {
            seen.lock().expect("tap").clear();
            let slices = [io::IoSlice::new(&header), io::IoSlice::new(&payload)];
            let n = if from_client {
                client.write_vectored(&slices).await.expect("write")
            } else {
                server.write_vectored(&slices).await.expect("write")
            };
            assert_eq!(n, want.len(), "both slices taken at once");
            let mut got = vec![0u8; want.len()];
            if from_client {
                client.flush().await.expect("flush");
                server.read_exact(&mut got).await.expect("read");
            } else {
                server.flush().await.expect("flush");
                client.read_exact(&mut got).await.expect("read");
            }
            assert_eq!(got, want);
            let data: Vec<_> = records(&seen.lock().expect("tap"))
                .into_iter()
                .filter(|(kind, _)| *kind == 23)
                .collect();
            assert_eq!(data.len(), 1, "client {from_client}: {data:?}");
        }
    }

    /// The reader must not take the writer's wake-up. A stream has one waker slot for write
    /// readiness (a TCP socket's, as this pipe's): the writer, its records still unwritten,
    /// waits there for room; a read that tried those records with a waker of its own (or none)
    /// took the slot, and the writer was never woken when room came. With the kernel's unsent
    /// bytes bounded (`TCP_NOTSENT_LOWAT`) a full socket is common, and a TLS/TCP echo over
    /// loopback hung about one run in eight.
    #[tokio::test]
    async fn a_read_leaves_the_writer_waiting_for_room_its_wake_up() {
        use tokio::io::AsyncReadExt;
        let (server_config, config) = configs();
        let (a, b) = tokio::io::duplex(4096);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, a);
        let (client, server) = tokio::join!(connect, ServerTls::accept(server_config, b));
        let mut client = client.expect("client handshake");
        let mut server = server.expect("server accept");
        // The handshake's last records (the tickets) reach the client.
        let handshake = async {
            let mut none = [0u8; 1];
            tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut none)).await
        };
        let (done, _) = tokio::join!(server.handshake(), handshake);
        done.expect("server handshake");

        // The writer: more than the pipe holds, so records wait and it waits for room.
        let (writer, writer_waker) = crate::transport::tests::counting();
        let mut cx = Context::from_waker(&writer_waker);
        let data = vec![7u8; 64 * 1024];
        let n = match Pin::new(&mut server).poll_write(&mut cx, &data) {
            Poll::Ready(r) => r.expect("write"),
            Poll::Pending => panic!("rustls takes the plaintext"),
        };
        assert!(n > 0);
        assert!(
            Pin::new(&mut server).poll_flush(&mut cx).is_pending(),
            "the pipe is full"
        );
        // The reader looks for data (none comes): it must leave the write slot alone.
        let (_, reader_waker) = crate::transport::tests::counting();
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        let read =
            Pin::new(&mut server).poll_read(&mut Context::from_waker(&reader_waker), &mut buf);
        assert!(read.is_pending());
        // The pipe's far end is read (raw TLS records): room, and the writer is told.
        let mut raw = vec![0u8; 1024];
        let n = client.get_mut().0.read(&mut raw).await.expect("raw read");
        assert!(n > 0);
        assert!(
            writer.0.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the writer was not woken when room came"
        );
    }

    #[test]
    fn a_replayed_client_hello_with_early_data_is_not_resumed_again() {
        let (server_config, client_config) = configs();
        let name = || rustls::pki_types::ServerName::try_from("localhost").expect("name");

        // A full handshake leaves the client a ticket.
        let mut client = rustls::ClientConnection::new(client_config.clone(), name()).expect("c");
        let mut server = rustls::ServerConnection::new(server_config.clone()).expect("s");
        exchange(&mut client, &mut server);
        assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));

        // The next connection resumes with early data; its first flight is recorded.
        let mut client = rustls::ClientConnection::new(client_config, name()).expect("c");
        client
            .early_data()
            .expect("the ticket allows early data")
            .write_all(b"idempotent")
            .expect("early write");
        let mut flight = Vec::new();
        client.write_tls(&mut flight).expect("client hello");

        let accept = |flight: &[u8]| {
            let mut server = rustls::ServerConnection::new(server_config.clone()).expect("s");
            server.read_tls(&mut &flight[..]).expect("read");
            server.process_new_packets().expect("process");
            let mut early = Vec::new();
            if let Some(mut data) = server.early_data() {
                data.read_to_end(&mut early).expect("early read");
            }
            (server.handshake_kind(), early)
        };
        let (kind, early) = accept(&flight);
        assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
        assert_eq!(early, b"idempotent");
        // The same bytes again (a replay): the ticket is spent, no early data is read.
        let (kind, early) = accept(&flight);
        assert_eq!(kind, Some(rustls::HandshakeKind::Full));
        assert!(early.is_empty(), "a replay delivered {early:?}");
    }
}
