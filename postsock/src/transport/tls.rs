//! rustls configurations shared by QUIC and TLS/TCP (TLS 1.3 only, ring provider).

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::ConfigError;
use crate::{Error, Result, Security};

/// The ALPN protocol name of postsock's wire mapping (docs/WIRE.md).
pub const ALPN: &[u8] = b"postsock/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration postsock uses (TLS 1.3, ring, verification against
/// `security.trusted_roots`, ALPN `postsock/1`).
/// `clock` is the calendar certificates and tickets are judged by ([`Net::tls_clock`]).
///
/// [`Net::tls_clock`]: crate::net::Net::tls_clock
pub fn client_config(security: &Security, clock: Clock) -> Result<rustls::ClientConfig> {
    Ok(observed_client_config(security, clock)?.0)
}

/// The calendar a TLS configuration reads (see [`Net::tls_clock`](crate::net::Net::tls_clock)).
pub type Clock = Arc<dyn rustls::time_provider::TimeProvider>;

/// The system's calendar, for configurations used on real sockets only.
pub fn system_clock() -> Clock {
    Arc::new(rustls::time_provider::DefaultTimeProvider)
}

/// A server-certificate verifier that verifies exactly as rustls' WebPKI verifier does and
/// counts the verifications per server name. rustls verifies a certificate only in a full
/// handshake, so a handshake that leaves the count unchanged resumed a session: this is how
/// a QUIC carrier (whose rustls connection quinn keeps to itself) learns it was resumed.
#[derive(Debug)]
pub(crate) struct ObservingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verified: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl ObservingVerifier {
    /// Full handshakes (certificate verifications) with `name` so far.
    pub(crate) fn verifications(&self, name: &str) -> u64 {
        crate::util::lock(&self.verified)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

impl rustls::client::danger::ServerCertVerifier for ObservingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *crate::util::lock(&self.verified)
            .entry(server_name.to_str().into_owned())
            .or_insert(0) += 1;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client configuration with its observing verifier.
pub(crate) fn observed_client_config(
    security: &Security,
    clock: Clock,
) -> Result<(rustls::ClientConfig, Arc<ObservingVerifier>)> {
    if security.trusted_roots.is_empty() {
        return Err(ConfigError::NoTrustedRoots.into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for root in &security.trusted_roots {
        roots
            .add(root.clone())
            .map_err(|e| Error::Tls(format!("bad trusted root: {e}")))?;
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::Tls(format!("building the certificate verifier: {e}")))?;
    let verifier = Arc::new(ObservingVerifier {
        inner,
        verified: std::sync::Mutex::new(std::collections::BTreeMap::new()),
    });
    let mut config = rustls::ClientConfig::builder_with_details(provider(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    if let Some(log) = &security.key_log {
        config.key_log = log.clone();
    }
    Ok((config, verifier))
}

/// The rustls server configuration postsock uses (TLS 1.3, ring, `security.identity`, ALPN
/// `postsock/1`); `clock` as for [`client_config`].
pub fn server_config(security: &Security, clock: Clock) -> Result<rustls::ServerConfig> {
    let identity = security
        .identity
        .as_ref()
        .ok_or_else(|| Error::from(ConfigError::NoIdentity))?;
    let mut config = rustls::ServerConfig::builder_with_details(provider(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::Tls(format!("bad identity: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if let Some(log) = &security.key_log {
        config.key_log = log.clone();
    }
    Ok(config)
}

/// The name a server certificate is verified against.
pub fn server_name(security: &Security, host: &str) -> Result<ServerName<'static>> {
    let name = security.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|e| {
        ConfigError::InvalidServerName {
            name: name.to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}
