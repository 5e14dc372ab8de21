//! [`Net`] over the operating system's sockets, through tokio.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{AsyncUdpSocket, BoxFuture, ByteStream, Interface, Net, StreamListener};

/// How often the OS interface list is read again (there is no portable change notification).
const INTERFACE_POLL: std::time::Duration = std::time::Duration::from_secs(1);
use quinn::Runtime;

/// Most bytes a carrier's TCP connection lets wait in the kernel unsent
/// (`TCP_NOTSENT_LOWAT`): one of the TLS/TCP writer's largest batches (`BATCH`, 64 KiB).
///
/// The writer keeps up to a window of unacknowledged bytes in flight, on a fast path
/// megabytes (twice the delivery rate × at least 5 ms). Without this bound what the
/// peer's receive window did not let go waited in the socket's send buffer, where niceness
/// and lifetimes no longer apply, and each read at the peer that opened its window sent it
/// on from inside that read (the kernel's TCP flow control). On loopback with both ends on
/// one thread that kernel work was most of what postsock paid over raw tokio-rustls, which
/// pays it too: TLS/TCP 1 KiB messages went from 0.76 of raw to 1.09-1.12, and on two
/// workers from 0.79-0.85 to 0.79-0.88 (BENCHMARKS.md, "TLS/TCP: what waits unsent in the
/// kernel"). Bytes sent and not yet acknowledged by TCP are not counted: the bound holds
/// back no path's throughput, only how far ahead of the path the socket is filled (at 10
/// Gbit/s 64 KiB is about 50 µs of sending for the writer to refill it in).
pub(crate) const UNSENT_LOWAT: u32 = 64 * 1024;

/// A TCP connection as carriers use it: Nagle off (the writer gathers its own batches), and
/// at most [`UNSENT_LOWAT`] bytes unsent in the kernel where the OS offers that (Linux,
/// Android; elsewhere Nagle off alone).
fn tuned(stream: tokio::net::TcpStream) -> io::Result<Box<dyn ByteStream>> {
    tune(&stream)?;
    Ok(Box::new(stream))
}

fn tune(stream: &tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LOWAT)?;
    Ok(())
}

/// The real network: OS sockets driven by tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioNet;

impl TokioNet {
    /// A handle to the real network, ready to share between carriers.
    pub fn shared() -> Arc<dyn Net> {
        Arc::new(TokioNet)
    }
}

#[derive(Debug)]
struct TokioListener(tokio::net::TcpListener);

impl StreamListener for TokioListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn ByteStream>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((tuned(stream)?, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Net for TokioNet {
    fn bind_udp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Arc<dyn AsyncUdpSocket>>> {
        Box::pin(async move {
            let socket = std::net::UdpSocket::bind(local)?;
            quinn::TokioRuntime.wrap_udp_socket(socket)
        })
    }

    fn connect_tcp(&self, remote: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        Box::pin(async move { tuned(tokio::net::TcpStream::connect(remote).await?) })
    }

    fn connect_tcp_from(
        &self,
        local: IpAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn ByteStream>>> {
        Box::pin(async move {
            let socket = match remote {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(local, 0))?;
            tuned(socket.connect(remote).await?)
        })
    }

    /// The OS interface list (getifaddrs on Unix), grouped by name in name order.
    fn interfaces(&self) -> Vec<Interface> {
        let Ok(list) = if_addrs::get_if_addrs() else {
            return Vec::new();
        };
        let mut by_name: std::collections::BTreeMap<String, Interface> = Default::default();
        for i in list {
            let up = i.is_oper_up() || i.is_loopback();
            let entry = by_name.entry(i.name.clone()).or_insert_with(|| Interface {
                name: i.name.clone(),
                addrs: Vec::new(),
                up,
                quality: None,
            });
            entry.addrs.push(i.ip());
            entry.up |= up;
        }
        by_name.into_values().collect()
    }

    fn interfaces_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(INTERFACE_POLL))
    }

    fn listen_tcp(&self, local: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn StreamListener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(local).await?;
            Ok(Box::new(TokioListener(listener)) as Box<dyn StreamListener>)
        })
    }

    fn resolve(&self, name: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let name = name.to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                .await?
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("`{name}` has no addresses"),
                ));
            }
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every TCP connection TokioNet makes or accepts goes through `tuned`: Nagle off, and
    /// on Linux the kernel's unsent bytes bounded.
    #[tokio::test]
    async fn a_carrier_s_tcp_connection_has_nagle_off_and_its_unsent_bytes_bounded(
    ) -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.map(|(s, _)| s)
        });
        let (client, accepted) = (client?, accepted?);
        assert!(!client.nodelay()?, "the OS default, before");
        for stream in [&client, &accepted] {
            tune(stream)?;
            assert!(stream.nodelay()?);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(
                socket2::SockRef::from(stream).tcp_notsent_lowat()?,
                UNSENT_LOWAT
            );
        }
        Ok(())
    }
}
