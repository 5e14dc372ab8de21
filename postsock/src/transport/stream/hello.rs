//! HELLO: how a transient names the resumable carrier it continues (docs/WIRE.md), and a
//! stream with the bytes read while looking for it put back in front.

use super::*;

/// A HELLO frame: header, token, resend position.
pub(crate) fn hello_frame(token: &Token, received: u64, resend_from: u64, flags: u8) -> Vec<u8> {
    let mut out = FrameHeader::hello(received, flags).encode().to_vec();
    out.extend_from_slice(token);
    out.extend_from_slice(&resend_from.to_be_bytes());
    out
}

/// Parses a HELLO frame's payload.
pub(super) fn parse_hello(header: &FrameHeader, payload: &[u8]) -> Result<Hello> {
    if payload.len() != HELLO_LEN {
        return Err(Violation::TruncatedHello.into());
    }
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&payload[..TOKEN_LEN]);
    let mut at = [0u8; 8];
    at.copy_from_slice(&payload[TOKEN_LEN..]);
    Ok(Hello {
        token,
        flags: header.flags,
        received: header.id,
        resend_from: u64::from_be_bytes(at),
    })
}

/// A HELLO as read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hello {
    pub(crate) token: Token,
    pub(crate) flags: u8,
    /// ACK units the sender has received.
    pub(crate) received: u64,
    /// Where the frames the sender writes again on this transient start.
    pub(crate) resend_from: u64,
}

/// Reads the first frame of a stream if it is a HELLO (consumed whole). Anything else stays in
/// `read` (the bytes taken so far) for the carrier's reader to see again; so does a partial
/// header if the caller gives up waiting.
pub(crate) async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
) -> Result<Option<Hello>> {
    while read.len() < HEADER_LEN {
        let mut byte = [0u8; HEADER_LEN];
        let want = HEADER_LEN - read.len();
        let n = stream
            .read(&mut byte[..want])
            .await
            .map_err(|e| tcp("read", e))?;
        if n == 0 {
            return Ok(None);
        }
        read.extend_from_slice(&byte[..n]);
        if read[0] != TYPE_HELLO {
            return Ok(None);
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&read[..HEADER_LEN]);
    if header[0] != TYPE_HELLO {
        return Ok(None);
    }
    let h = FrameHeader::decode(&header, HELLO_LEN)?;
    let mut payload = [0u8; HELLO_LEN];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Violation::TruncatedHello.into(),
            _ => tcp("read", e),
        })?;
    read.clear();
    parse_hello(&h, &payload).map(Some)
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
