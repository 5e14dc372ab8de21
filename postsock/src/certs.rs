//! Test certificate authorities (rcgen, Ed25519).
//!
//! Ed25519 keys and signatures have fixed sizes, and serial numbers are fixed here, so every
//! handshake has the same byte count: this keeps simulated runs deterministic even though the
//! key material itself is fresh each time.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SerialNumber, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, Identity, Result};

/// A certificate authority that issues server identities for tests and simulations.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    root: CertificateDer<'static>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::Tls(format!("certificate generation failed: {e}"))
}

impl TestCa {
    /// Creates a new CA with a fresh Ed25519 key.
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(tls_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(1u64));
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(TestCa {
            root: cert.der().clone(),
            cert,
            key,
            next_serial: std::sync::atomic::AtomicU64::new(2),
        })
    }

    /// The CA certificate, to put into [`Security::trusted_roots`](crate::Security::trusted_roots).
    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// Issues a server identity valid for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Result<Identity> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(tls_err)?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(tls_err)?;
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(tls_err)?;
        Ok(Identity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}
