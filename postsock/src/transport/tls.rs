//! rustls configurations shared by QUIC and TLS/TCP (TLS 1.3 only, ring provider).

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::{Error, Result, Security};

/// The ALPN protocol name of postsock's wire mapping (docs/WIRE.md).
pub const ALPN: &[u8] = b"postsock/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration postsock uses (TLS 1.3, ring, verification against
/// `security.trusted_roots`, ALPN `postsock/1`).
pub fn client_config(security: &Security) -> Result<rustls::ClientConfig> {
    if security.trusted_roots.is_empty() {
        return Err(Error::Config(
            "no trusted root certificates: set Security::trusted_roots (verification cannot be disabled)"
                .into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for root in &security.trusted_roots {
        roots
            .add(root.clone())
            .map_err(|e| Error::Tls(format!("bad trusted root: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls server configuration postsock uses (TLS 1.3, ring, `security.identity`, ALPN
/// `postsock/1`).
pub fn server_config(security: &Security) -> Result<rustls::ServerConfig> {
    let identity = security.identity.as_ref().ok_or_else(|| {
        Error::Config("a listener needs an identity: set Security::identity".into())
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::Tls(format!("bad identity: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The name a server certificate is verified against.
pub fn server_name(security: &Security, host: &str) -> Result<ServerName<'static>> {
    let name = security.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned())
        .map_err(|e| Error::Config(format!("`{name}` is not a valid server name: {e}")))
}
