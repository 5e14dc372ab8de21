//! Helpers for postsock's tests: plain rustls configurations for peers that know only
//! docs/WIRE.md (built here rather than taken from postsock), and postsock configurations
//! with certificates from a test CA. The testbed's tests share this file.

#![allow(dead_code)]

use std::sync::Arc;

use postsock::net::Net;
use postsock::{Configuration, Listener, Protocol, Security, TestCa};

/// The ALPN name docs/WIRE.md specifies.
pub const ALPN: &[u8] = b"postsock/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A plain rustls client trusting `ca`, offering the postsock ALPN.
pub fn rustls_client(ca: &TestCa) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// A plain rustls server for `localhost` with a certificate from `ca`.
pub fn rustls_server(ca: &TestCa) -> rustls::ServerConfig {
    let identity = ca.issue(&["localhost"]).expect("identity");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain, identity.key)
        .expect("cert");
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// Server and client configurations of postsock for `protocol`, with certificates from `ca`.
pub fn postsock_configs(ca: &TestCa, protocol: Protocol) -> (Configuration, Configuration) {
    let mut server = Configuration::default();
    server.protocols(&[protocol]).security(Security {
        identity: Some(ca.issue(&["localhost"]).expect("identity")),
        ..Security::default()
    });
    let mut client = Configuration::default();
    client.protocols(&[protocol]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    (server, client)
}

/// A listener on a free loopback port, and that port.
pub async fn listen(net: &Arc<dyn Net>, config: Configuration) -> (Listener, u16) {
    let listener = Listener::bind(net.clone(), "127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let port = listener.local_addr().port();
    (listener, port)
}

/// An echo server on a free loopback port: echoes every message on every carrier.
pub async fn echo_listener(net: &Arc<dyn Net>, config: Configuration) -> u16 {
    let (mut listener, port) = listen(net, config).await;
    tokio::spawn(async move {
        while let Ok(carrier) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(Some(m)) = carrier.receive().await {
                    if carrier.send_bytes(m.data).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A fresh directory under the system's temporary directory, removed (with everything in
/// it) when dropped, so a test leaves nothing behind, pass or fail. Named after the test
/// and this process, so concurrent test binaries do not share one.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        // One directory, whatever the name holds ("TLS/TCP" would make two, and only the
        // inner one would go).
        let name = name.replace(['/', '\\'], "-");
        let dir = std::env::temp_dir().join(format!("postsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
