//! [`Net`] over the operating system's sockets, through tokio.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{AsyncUdpSocket, BoxFuture, ByteStream, Interface, Net, StreamListener};

/// How often the OS interface list is read again (there is no portable change notification).
const INTERFACE_POLL: std::time::Duration = std::time::Duration::from_secs(1);
use quinn::Runtime;

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
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as Box<dyn ByteStream>, peer))
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
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(remote).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn ByteStream>)
        })
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
            let stream = socket.connect(remote).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn ByteStream>)
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
