//! Associations (Post Sockets §3.5): what the stack remembers about a remote across carriers.
//!
//! An [`Associations`] store is shared through [`crate::Configuration::associations`]. Each
//! association is keyed by (local identity, remote) and holds
//!
//! * the TLS client configurations (one for QUIC, one for TLS/TCP), whose session caches hold
//!   the tickets a later carrier resumes with;
//! * per path, a racing cache: which stack won last, which stacks failed (and until when that
//!   is believed), and the path's RTT. A later carrier tries the winner first, skips stacks
//!   known to fail and, knowing the RTT, may use a shorter attempt delay.
//!
//! Entries expire after the store's time-to-live. Associations never share state with each
//! other, and a store can be cleared, or saved to and loaded from a JSON file: the racing
//! caches and the TLS 1.3 session tickets (see [`super::sessions`]), so that a later process
//! resumes — QUIC in 0-RTT — instead of starting over. Tickets expire as the server said.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::establish::report::{AttemptOutcome, EstablishmentReport};
use rustls::pki_types::UnixTime;

use crate::establish::sessions::{trust_fingerprint, Fnv, SavedTicket, Sessions};
use crate::ConfigError;
use crate::{Error, Protocol, Result, Security};

/// The name of the only path until multihoming (one interface per host).
pub const DEFAULT_PATH: &str = "default";

/// What identifies an association.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AssociationKey {
    /// The local identity: `anonymous` for a client without a certificate, otherwise a
    /// fingerprint of its certificate.
    pub local: String,
    /// The remote as `host:port`.
    pub remote: String,
}

impl AssociationKey {
    /// The key for `security`'s local identity and `remote`.
    pub fn new(security: &Security, remote: &crate::Remote) -> Self {
        let local = match &security.identity {
            None => "anonymous".to_string(),
            Some(id) => {
                // FNV-1a of the leaf certificate: stable, and enough to tell identities apart.
                let mut h = Fnv::default();
                h.write(
                    id.cert_chain
                        .first()
                        .map(|c| c.as_ref())
                        .unwrap_or_default(),
                );
                format!("cert-{:016x}", h.0)
            }
        };
        AssociationKey {
            local,
            remote: remote.to_string(),
        }
    }
}

/// The racing cache of one path, as saved to a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathMemory {
    /// The stack that won the last race on this path.
    pub winner: Option<String>,
    /// Stacks that failed, with how much longer that is believed (ms).
    pub failed: BTreeMap<String, u64>,
    /// The path's round-trip time as the last race measured it (ms).
    pub rtt_ms: Option<f64>,
    /// How much longer the winner and RTT are believed (ms).
    pub valid_for_ms: u64,
}

#[derive(Debug, Clone)]
struct PathState {
    winner: Option<Protocol>,
    failed: BTreeMap<Protocol, Instant>,
    rtt: Option<Duration>,
    expires: Instant,
}

/// TLS client configurations shared by the carriers of one association.
#[derive(Debug, Clone)]
pub(crate) struct TlsClients {
    pub quic: Arc<rustls::ClientConfig>,
    pub tcp: Arc<rustls::ClientConfig>,
    /// Observes full handshakes of the QUIC configuration (see `ObservingVerifier`).
    pub quic_verifier: Arc<crate::transport::tls::ObservingVerifier>,
    /// The TLS 1.3 session caches of `quic` and `tcp`.
    pub(crate) sessions: Sessions,
    /// What the sessions' trust depended on (see `trust_fingerprint`).
    trust: String,
}

/// TLS client configurations, or none when only plain TCP may be used.
pub(crate) type MaybeTls = Option<TlsClients>;

impl TlsClients {
    pub(crate) fn new(security: &Security, clock: crate::transport::tls::Clock) -> Result<Self> {
        let (mut quic, quic_verifier) =
            crate::transport::tls::observed_client_config(security, clock.clone())?;
        // 0-RTT needs early data on; postsock only ever puts idempotent messages in it.
        quic.enable_early_data = true;
        let mut tcp = crate::transport::tls::client_config(security, clock)?;
        tcp.enable_early_data = true;
        let sessions = Sessions::default();
        quic.resumption = rustls::client::Resumption::store(sessions.quic.clone());
        tcp.resumption = rustls::client::Resumption::store(sessions.tcp.clone());
        Ok(TlsClients {
            quic: Arc::new(quic),
            tcp: Arc::new(tcp),
            quic_verifier,
            sessions,
            trust: trust_fingerprint(security),
        })
    }

    /// The tickets held now, for the association file.
    fn save(&self) -> SavedSessions {
        let now = ticket_clock(&self.quic);
        SavedSessions {
            trust: self.trust.clone(),
            quic: self.sessions.quic.export(now),
            tls_tcp: self.sessions.tcp.export(now),
        }
    }

    /// Restores tickets from the association file, if they were saved under the same trust.
    fn restore(&self, saved: &SavedSessions) {
        if saved.trust != self.trust {
            return;
        }
        let now = ticket_clock(&self.quic);
        self.sessions.quic.restore(&self.quic, &saved.quic, now);
        self.sessions.tcp.restore(&self.tcp, &saved.tls_tcp, now);
    }
}

/// Now, by the clock rustls judges ticket lifetimes by.
fn ticket_clock(config: &rustls::ClientConfig) -> UnixTime {
    config
        .time_provider
        .current_time()
        .unwrap_or_else(UnixTime::now)
}

/// An association's session tickets as saved in the association file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSessions {
    /// What the sessions' trust depended on: tickets are restored only under the same roots
    /// and server-name rule.
    pub trust: String,
    /// Tickets of the QUIC configuration (their QUIC transport parameters included).
    pub quic: Vec<SavedTicket>,
    /// Tickets of the TLS/TCP configuration.
    pub tls_tcp: Vec<SavedTicket>,
}

impl SavedSessions {
    fn is_empty(&self) -> bool {
        self.quic.is_empty() && self.tls_tcp.is_empty()
    }

    /// These sessions without the tickets expired at `now`; `None` when none is left.
    fn fresh(&self, now: UnixTime) -> Option<SavedSessions> {
        let fresh = |t: &[SavedTicket]| t.iter().filter(|t| !t.expired(now)).cloned().collect();
        Some(SavedSessions {
            trust: self.trust.clone(),
            quic: fresh(&self.quic),
            tls_tcp: fresh(&self.tls_tcp),
        })
        .filter(|s| !s.is_empty())
    }
}

/// One association.
#[derive(Debug)]
pub struct Association {
    key: AssociationKey,
    tls: Mutex<Option<TlsClients>>,
    /// Tickets loaded from a file, waiting for the TLS configurations they are bound to.
    loaded: Mutex<Option<SavedSessions>>,
    paths: Mutex<BTreeMap<String, PathState>>,
    ttl: Duration,
}

impl Association {
    fn paths(&self) -> MutexGuard<'_, BTreeMap<String, PathState>> {
        crate::util::lock(&self.paths)
    }

    /// The key.
    pub fn key(&self) -> &AssociationKey {
        &self.key
    }

    /// The TLS client configurations (built on first use, on `clock`; their session caches
    /// persist).
    pub(crate) fn tls(
        &self,
        security: &Security,
        clock: crate::transport::tls::Clock,
    ) -> Result<TlsClients> {
        let mut tls = crate::util::lock(&self.tls);
        if let Some(t) = tls.as_ref() {
            return Ok(t.clone());
        }
        let t = TlsClients::new(security, clock)?;
        if let Some(saved) = crate::util::lock(&self.loaded).take() {
            t.restore(&saved);
        }
        *tls = Some(t.clone());
        Ok(t)
    }

    /// Orders `protocols` for a race on `path`: the last winner first, stacks known to fail
    /// dropped (unless that would leave none).
    pub fn order(&self, path: &str, protocols: &[Protocol]) -> Vec<Protocol> {
        let now = Instant::now();
        let paths = self.paths();
        let Some(p) = paths.get(path) else {
            return protocols.to_vec();
        };
        let mut out: Vec<Protocol> = protocols
            .iter()
            .copied()
            .filter(|proto| p.failed.get(proto).is_none_or(|until| *until <= now))
            .collect();
        if out.is_empty() {
            out = protocols.to_vec();
        }
        if let Some(w) = p.winner.filter(|_| p.expires > now) {
            if let Some(i) = out.iter().position(|x| *x == w) {
                let w = out.remove(i);
                out.insert(0, w);
            }
        }
        out
    }

    /// The stack that won the last race on `path`, if known and fresh.
    pub fn winner(&self, path: &str) -> Option<Protocol> {
        let now = Instant::now();
        self.paths()
            .get(path)
            .filter(|p| p.expires > now)
            .and_then(|p| p.winner)
    }

    /// What is known about `path` (the CIB's view): RTT and winner while fresh, and the
    /// protocols whose failure is still believed.
    pub fn characteristics(&self, path: &str) -> crate::policy::Characteristics {
        let now = Instant::now();
        let paths = self.paths();
        let Some(p) = paths.get(path) else {
            return Default::default();
        };
        let fresh = p.expires > now;
        crate::policy::Characteristics {
            rtt: p.rtt.filter(|_| fresh),
            blocked: p
                .failed
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(proto, _)| *proto)
                .collect(),
            winner: p.winner.filter(|_| fresh),
        }
    }

    /// The path's RTT, if known and fresh.
    pub fn rtt(&self, path: &str) -> Option<Duration> {
        let now = Instant::now();
        self.paths()
            .get(path)
            .filter(|p| p.expires > now)
            .and_then(|p| p.rtt)
    }

    /// Learns from a race on `path`.
    pub fn record(&self, path: &str, report: &EstablishmentReport) {
        let now = Instant::now();
        let mut paths = self.paths();
        let p = paths.entry(path.to_string()).or_insert_with(|| PathState {
            winner: None,
            failed: BTreeMap::new(),
            rtt: None,
            expires: now,
        });
        for a in &report.attempts {
            match &a.outcome {
                AttemptOutcome::Failed(_) => {
                    p.failed.insert(a.protocol, now + self.ttl);
                }
                AttemptOutcome::Won => {
                    p.failed.remove(&a.protocol);
                    p.winner = Some(a.protocol);
                    // QUIC is ready after one round trip; TCP + TLS 1.3 after two.
                    let trips = if a.protocol == Protocol::Quic { 1 } else { 2 };
                    p.rtt = Some(a.duration / trips);
                    p.expires = now + self.ttl;
                }
                _ => {}
            }
        }
    }

    /// Forgets everything learnt (the TLS session caches included).
    pub fn clear(&self) {
        self.paths().clear();
        *crate::util::lock(&self.tls) = None;
        *crate::util::lock(&self.loaded) = None;
    }

    /// The session tickets to save: those of the TLS configurations once built, else those
    /// loaded and not yet used (still valid).
    fn saved_sessions(&self) -> Option<SavedSessions> {
        if let Some(tls) = crate::util::lock(&self.tls).as_ref() {
            return Some(tls.save()).filter(|s| !s.is_empty());
        }
        crate::util::lock(&self.loaded)
            .as_ref()?
            .fresh(UnixTime::now())
    }

    fn snapshot(&self) -> BTreeMap<String, PathMemory> {
        let now = Instant::now();
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        self.paths()
            .iter()
            .map(|(name, p)| {
                let memory = PathMemory {
                    winner: p.winner.map(|w| w.name().to_string()),
                    failed: p
                        .failed
                        .iter()
                        .filter(|(_, until)| **until > now)
                        .map(|(proto, until)| (proto.name().to_string(), left(*until)))
                        .collect(),
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    valid_for_ms: left(p.expires),
                };
                (name.clone(), memory)
            })
            .collect()
    }
}

/// A store of associations, shared by the carriers that use it.
#[derive(Debug)]
pub struct Associations {
    inner: Mutex<BTreeMap<AssociationKey, Arc<Association>>>,
    ttl: Duration,
}

/// The file format of [`Associations::save`].
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    associations: Vec<SavedAssociation>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedAssociation {
    key: AssociationKey,
    paths: BTreeMap<String, PathMemory>,
    /// Absent in version 1 files, and when no ticket is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sessions: Option<SavedSessions>,
}

/// The association file's format version: 2 added session tickets (version 1 files, racing
/// caches only, are still read).
const FILE_VERSION: u32 = 2;

impl Associations {
    /// An empty store whose entries are believed for `ttl`.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Associations {
            inner: Mutex::new(BTreeMap::new()),
            ttl,
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<AssociationKey, Arc<Association>>> {
        crate::util::lock(&self.inner)
    }

    /// The association for `key`, created on first use.
    pub fn get(&self, key: &AssociationKey) -> Arc<Association> {
        self.lock()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Association {
                    key: key.clone(),
                    tls: Mutex::new(None),
                    loaded: Mutex::new(None),
                    paths: Mutex::new(BTreeMap::new()),
                    ttl: self.ttl,
                })
            })
            .clone()
    }

    /// The keys of the associations held.
    pub fn keys(&self) -> Vec<AssociationKey> {
        self.lock().keys().cloned().collect()
    }

    /// Forgets every association.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Saves the racing caches and the TLS 1.3 session tickets as JSON. The tickets hold
    /// their sessions' secrets, so the file is readable by its owner only (on Unix); it is
    /// written to a temporary file beside `path` and renamed, so a reader never sees half
    /// of it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let associations = self
            .lock()
            .values()
            .map(|a| SavedAssociation {
                key: a.key.clone(),
                paths: a.snapshot(),
                sessions: a.saved_sessions(),
            })
            .collect();
        let text = serde_json::to_string_pretty(&Saved {
            version: FILE_VERSION,
            associations,
        })
        .map_err(|e| ConfigError::AssociationFile {
            path: path.display().to_string(),
            reason: format!("encoding associations: {e}"),
        })?;
        write_private(path, text.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Loads racing caches saved by [`save`](Self::save) into this store.
    pub fn load(&self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let saved: Saved =
            serde_json::from_str(&text).map_err(|e| ConfigError::AssociationFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if !(1..=FILE_VERSION).contains(&saved.version) {
            return Err(ConfigError::AssociationFile {
                path: path.display().to_string(),
                reason: format!(
                    "association file version {} is not supported",
                    saved.version
                ),
            }
            .into());
        }
        let now = Instant::now();
        let protocol = |name: &str| {
            [Protocol::Quic, Protocol::TlsTcp, Protocol::Tcp]
                .into_iter()
                .find(|p| p.name() == name)
        };
        for sa in saved.associations {
            let a = self.get(&sa.key);
            if let Some(sessions) = sa.sessions {
                // Bound to the TLS configurations when they are built (or at once when
                // they already are).
                match crate::util::lock(&a.tls).as_ref() {
                    Some(tls) => tls.restore(&sessions),
                    None => *crate::util::lock(&a.loaded) = Some(sessions),
                }
            }
            let mut paths = a.paths();
            for (name, m) in sa.paths {
                paths.insert(
                    name,
                    PathState {
                        winner: m.winner.as_deref().and_then(protocol),
                        failed: m
                            .failed
                            .iter()
                            .filter_map(|(p, left)| {
                                Some((protocol(p)?, now + Duration::from_millis(*left)))
                            })
                            .collect(),
                        rtt: m.rtt_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                        expires: now + Duration::from_millis(m.valid_for_ms),
                    },
                );
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file beside it, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::establish::report::Attempt;

    fn race(winner: Protocol, failed: Option<Protocol>) -> EstablishmentReport {
        let addr = ([10, 0, 0, 1], 1).into();
        let mut attempts = Vec::new();
        if let Some(f) = failed {
            attempts.push(Attempt {
                protocol: f,
                remote: addr,
                interface: None,
                started: Duration::ZERO,
                duration: Duration::from_millis(5),
                outcome: AttemptOutcome::Failed("refused".into()),
            });
        }
        attempts.push(Attempt {
            protocol: winner,
            remote: addr,
            interface: None,
            started: Duration::from_millis(250),
            duration: Duration::from_millis(80),
            outcome: AttemptOutcome::Won,
        });
        EstablishmentReport {
            attempts,
            duration: Duration::from_millis(330),
            ..EstablishmentReport::default()
        }
    }

    fn key(remote: &str) -> AssociationKey {
        AssociationKey {
            local: "anonymous".into(),
            remote: remote.into(),
        }
    }

    const BOTH: [Protocol; 2] = [Protocol::Quic, Protocol::TlsTcp];

    #[tokio::test(start_paused = true)]
    async fn winner_first_failures_skipped_then_forgotten() {
        let store = Associations::new(Duration::from_secs(60));
        let a = store.get(&key("server:443"));
        assert_eq!(a.order(DEFAULT_PATH, &BOTH), BOTH);
        a.record(DEFAULT_PATH, &race(Protocol::TlsTcp, Some(Protocol::Quic)));
        assert_eq!(a.order(DEFAULT_PATH, &BOTH), [Protocol::TlsTcp]);
        assert_eq!(a.rtt(DEFAULT_PATH), Some(Duration::from_millis(40)));
        // Another remote knows nothing of it.
        assert_eq!(
            store.get(&key("other:443")).order(DEFAULT_PATH, &BOTH),
            BOTH
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(a.order(DEFAULT_PATH, &BOTH), BOTH, "entries expire");
        a.record(DEFAULT_PATH, &race(Protocol::TlsTcp, None));
        a.clear();
        assert_eq!(a.order(DEFAULT_PATH, &BOTH), BOTH, "cleared");
    }

    #[tokio::test(start_paused = true)]
    async fn saved_and_loaded() {
        let store = Associations::new(Duration::from_secs(60));
        store
            .get(&key("server:443"))
            .record(DEFAULT_PATH, &race(Protocol::TlsTcp, Some(Protocol::Quic)));
        let file = std::env::temp_dir().join(format!("postsock-assoc-{}.json", std::process::id()));
        store.save(&file).expect("save");
        let fresh = Associations::new(Duration::from_secs(60));
        fresh.load(&file).expect("load");
        assert_eq!(
            fresh.get(&key("server:443")).order(DEFAULT_PATH, &BOTH),
            [Protocol::TlsTcp]
        );
        std::fs::write(&file, "{\"version\": 9, \"associations\": []}").expect("write");
        let err = fresh.load(&file).expect_err("bad version");
        assert!(err.to_string().contains("version 9"), "{err}");
        let _ = std::fs::remove_file(&file);
    }
}
