//! Opening a stream transient: TCP through [`Net`] (from a chosen interface address), then
//! the TLS 1.3 client handshake.

use super::*;

/// Connects TCP through `net`, then runs the TLS 1.3 client handshake. With `early`, a
/// client resuming a session whose ticket allows early data gets its stream at once, still
/// in the handshake: what it writes first goes in early data (see
/// [`ClientEarly`](super::ClientEarly)).
pub(crate) async fn connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
    (host, early): (&str, bool),
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
        .early_data(early)
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
    tcp_connect(net, remote, local)
        .await
        .map_err(|e| Error::Establish {
            protocol: Protocol::Tcp,
            remote,
            reason: format!("TCP connect: {e}"),
        })
}

/// A TCP connection to `remote`, out of interface address `local` when given.
pub(super) async fn tcp_connect(
    net: &dyn Net,
    remote: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<Box<dyn ByteStream>> {
    match local {
        Some(ip) => net.connect_tcp_from(ip, remote).await,
        None => net.connect_tcp(remote).await,
    }
}
