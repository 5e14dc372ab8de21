//! TLS 1.3 session tickets that can leave the process.
//!
//! [`SessionStore`] is the [`ClientSessionStore`] of an association's TLS client
//! configurations. It keeps TLS 1.3 tickets the way rustls' own memory cache does (at most
//! [`TICKETS_PER_SERVER`] per server name, the newest used first, each used once: RFC 8446
//! C.4) and can export them as bytes with their expiry, so that
//! [`Associations::save`](super::association::Associations::save) writes them to the
//! association file and a later process resumes (QUIC in 0-RTT, TLS/TCP with early data)
//! instead of a full handshake. Key-exchange hints and TLS 1.2 sessions stay in memory.
//!
//! A saved ticket holds its session's resumption secret; the association file is written
//! readable by its owner only. A restored ticket is bound to the configuration that resumes
//! with it, and a resumed session is not verified again, so tickets are only restored under
//! the same trust (the same roots and server-name rule: [`trust_fingerprint`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::NamedGroup;
use serde::{Deserialize, Serialize};

use crate::Security;

/// How many TLS 1.3 tickets are kept per server name (as rustls' memory cache).
pub const TICKETS_PER_SERVER: usize = 8;

/// One saved ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTicket {
    /// The server name the session was established with.
    pub server_name: String,
    /// When the ticket expires, in seconds since the Unix epoch (its lifetime as the server
    /// gave it, capped at 7 days); `None` for a ticket without a lifetime.
    pub valid_until: Option<u64>,
    /// The session, hexadecimal (secret: it resumes the session).
    pub session: String,
}

impl SavedTicket {
    /// Whether the ticket's lifetime is over at `now`.
    pub fn expired(&self, now: UnixTime) -> bool {
        self.valid_until.is_some_and(|t| t < now.as_secs())
    }
}

/// The TLS 1.3 client session cache of one TLS configuration.
#[derive(Debug)]
pub(crate) struct SessionStore {
    tls13: Mutex<BTreeMap<String, VecDeque<Tls13ClientSessionValue>>>,
    /// Key-exchange hints and TLS 1.2 sessions, which never leave the process.
    other: ClientSessionMemoryCache,
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore {
            tls13: Mutex::default(),
            other: ClientSessionMemoryCache::new(64),
        }
    }
}

/// The text form of a server name (a DNS name or an IP address).
fn name_key(name: &ServerName<'_>) -> String {
    name.to_str().into_owned()
}

impl SessionStore {
    fn tickets(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Tls13ClientSessionValue>>> {
        crate::util::lock(&self.tls13)
    }

    /// The tickets held that are still valid at `now`, oldest first per server name.
    pub(crate) fn export(&self, now: UnixTime) -> Vec<SavedTicket> {
        self.tickets()
            .iter()
            .flat_map(|(name, values)| {
                values.iter().map(move |v| SavedTicket {
                    server_name: name.clone(),
                    valid_until: v.valid_until().map(|t| t.as_secs()),
                    session: crate::util::hex(&v.to_bytes()),
                })
            })
            .filter(|t| !t.expired(now))
            .collect()
    }

    /// Restores `saved` tickets for `config` (whose verifier and client credentials they are
    /// bound to), skipping those expired at `now`. Returns how many were restored; tickets
    /// that cannot be read (another format version, a cipher suite the configuration does
    /// not offer) are skipped.
    pub(crate) fn restore(
        &self,
        config: &rustls::ClientConfig,
        saved: &[SavedTicket],
        now: UnixTime,
    ) -> usize {
        let mut restored = 0;
        for t in saved {
            if t.expired(now) {
                continue;
            }
            let Ok(name) = ServerName::try_from(t.server_name.clone()) else {
                continue;
            };
            let Some(bytes) = crate::util::unhex(&t.session) else {
                continue;
            };
            if let Ok(value) = config.restore_tls13_session(&bytes) {
                self.insert_tls13_ticket(name, value);
                restored += 1;
            }
        }
        restored
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.other.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.other.set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut tickets = self.tickets();
        let queue = tickets.entry(name_key(&server_name)).or_default();
        if queue.len() == TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut tickets = self.tickets();
        let key = name_key(server_name);
        let value = tickets.get_mut(&key)?.pop_back();
        if tickets.get(&key).is_some_and(VecDeque::is_empty) {
            tickets.remove(&key);
        }
        value
    }
}

/// What a session's trust depended on: the roots a client verifies servers with and the
/// server-name rule. Tickets saved under one fingerprint are restored only under the same.
pub(crate) fn trust_fingerprint(security: &Security) -> String {
    let mut h = Fnv::default();
    h.write(&(security.trusted_roots.len() as u64).to_be_bytes());
    for root in &security.trusted_roots {
        h.write(&(root.as_ref().len() as u64).to_be_bytes());
        h.write(root.as_ref());
    }
    match &security.server_name {
        None => h.write(&[0]),
        Some(name) => {
            h.write(&[1]);
            h.write(name.as_bytes());
        }
    }
    format!("roots-{:016x}", h.0)
}

/// FNV-1a (64 bit): stable across processes and platforms, enough to tell configurations
/// apart (not a security boundary: whoever can write the association file can also write
/// its tickets).
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The session stores of an association's two TLS configurations.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions {
    pub quic: Arc<SessionStore>,
    pub tcp: Arc<SessionStore>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::establish::association::{AssociationKey, Associations, TlsClients};
    use crate::{Remote, TestCa};
    use rustls::{ClientConnection, ServerConnection};

    fn security(ca: &TestCa) -> Security {
        Security {
            trusted_roots: vec![ca.root()],
            ..Security::default()
        }
    }

    fn server(ca: &TestCa) -> Arc<rustls::ServerConfig> {
        let identity = ca.issue(&["localhost"]).expect("identity");
        let mut config = crate::transport::tls::server_config(
            &Security {
                identity: Some(identity),
                ..Security::default()
            },
            crate::transport::tls::system_clock(),
        )
        .expect("server config");
        config.max_early_data_size = 16 * 1024;
        Arc::new(config)
    }

    /// A server, the client's security and its association key.
    fn fixture() -> (Arc<rustls::ServerConfig>, Security, AssociationKey) {
        let ca = TestCa::new("sessions CA").expect("ca");
        let sec = security(&ca);
        let key = AssociationKey::new(&sec, &Remote::new("localhost", 443));
        (server(&ca), sec, key)
    }

    /// The TLS configurations of `key`'s association in a new store (as in a new process).
    fn fresh_tls(sec: &Security, key: &AssociationKey) -> TlsClients {
        Associations::new(std::time::Duration::from_secs(60))
            .get(key)
            .tls(sec, crate::transport::tls::system_clock())
            .expect("tls")
    }

    /// Hands everything `from` has to write to `to`.
    fn flight<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).expect("write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("read");
            to.process_new_packets().expect("process");
        }
    }

    /// One TLS handshake in memory (early data offered when the client has a ticket);
    /// returns whether it resumed and whether the server took the early data.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> (bool, bool) {
        let name = ServerName::try_from("localhost").expect("name");
        let mut c = ClientConnection::new(client.clone(), name).expect("client");
        let mut s = ServerConnection::new(server.clone()).expect("server");
        let mut early_sent = false;
        if let Some(mut early) = c.early_data() {
            use std::io::Write;
            early_sent = early.write(b"early").expect("early data") > 0;
        }
        let mut early_read = Vec::new();
        for _ in 0..10 {
            flight(&mut c, &mut s);
            if let Some(mut e) = s.early_data() {
                use std::io::Read;
                let _ = e.read_to_end(&mut early_read);
            }
            flight(&mut s, &mut c);
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                break;
            }
        }
        let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        (resumed, early_sent && early_read == b"early")
    }

    #[test]
    fn tickets_exported_by_one_configuration_resume_in_another_with_early_data() {
        let (server, sec, key) = fixture();
        let tls = fresh_tls(&sec, &key);
        assert_eq!(
            handshake(&tls.tcp, &server),
            (false, false),
            "a full handshake first"
        );
        let now = UnixTime::now();
        let saved = tls.sessions.tcp.export(now);
        assert!(!saved.is_empty(), "the server's tickets are held");
        assert!(saved.iter().all(|t| t.server_name == "localhost"));
        assert!(saved
            .iter()
            .all(|t| t.valid_until.is_some_and(|v| v > now.as_secs())));

        // A new store with new configurations (new verifier objects), as in a new process.
        let tls2 = fresh_tls(&sec, &key);
        assert_eq!(
            tls2.sessions.tcp.restore(&tls2.tcp, &saved, now),
            saved.len()
        );
        assert_eq!(
            handshake(&tls2.tcp, &server),
            (true, true),
            "resumed, early data taken"
        );

        // Without the tickets the same configuration starts over.
        let tls3 = fresh_tls(&sec, &key);
        assert_eq!(handshake(&tls3.tcp, &server), (false, false));
    }

    #[test]
    fn expired_damaged_or_foreign_tickets_are_not_restored() {
        let (server, sec, key) = fixture();
        let tls = fresh_tls(&sec, &key);
        handshake(&tls.tcp, &server);
        let now = UnixTime::now();
        let saved = tls.sessions.tcp.export(now);
        let t = saved[0].clone();
        let fresh = SessionStore::default();
        // Expired by its own lifetime.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            t.valid_until.expect("lifetime") + 1,
        ));
        assert_eq!(fresh.restore(&tls.tcp, std::slice::from_ref(&t), later), 0);
        assert!(
            tls.sessions.tcp.export(later).is_empty(),
            "expired tickets are not saved"
        );
        // Damaged bytes, or not hexadecimal.
        let mut cut = t.clone();
        cut.session.truncate(cut.session.len() - 2);
        let mut odd = t.clone();
        odd.session.push('x');
        assert_eq!(fresh.restore(&tls.tcp, &[cut, odd], now), 0);
        assert_eq!(fresh.restore(&tls.tcp, std::slice::from_ref(&t), now), 1);
    }

    #[test]
    fn the_trust_fingerprint_follows_roots_and_server_name() {
        let a = TestCa::new("a").expect("ca");
        let b = TestCa::new("b").expect("ca");
        let fa = trust_fingerprint(&security(&a));
        assert_eq!(fa, trust_fingerprint(&security(&a)));
        assert_ne!(fa, trust_fingerprint(&security(&b)));
        let named = Security {
            server_name: Some("other".into()),
            ..security(&a)
        };
        assert_ne!(fa, trust_fingerprint(&named));
    }

    #[test]
    fn the_store_keeps_the_newest_tickets_and_uses_each_once() {
        let (server, sec, key) = fixture();
        let tls = fresh_tls(&sec, &key);
        for _ in 0..10 {
            handshake(&tls.tcp, &server);
        }
        let held = tls.sessions.tcp.export(UnixTime::now());
        assert_eq!(held.len(), TICKETS_PER_SERVER);
        let name = ServerName::try_from("localhost").expect("name");
        let newest = held.last().expect("a ticket").session.clone();
        let taken = tls.sessions.tcp.take_tls13_ticket(&name).expect("ticket");
        assert_eq!(crate::util::hex(&taken.to_bytes()), newest);
        assert_eq!(
            tls.sessions.tcp.export(UnixTime::now()).len(),
            TICKETS_PER_SERVER - 1
        );
    }

    #[tokio::test]
    async fn the_association_file_carries_tickets_to_a_new_process_under_the_same_trust() {
        let (server, sec, key) = fixture();
        let first = Associations::new(std::time::Duration::from_secs(60));
        handshake(
            &first
                .get(&key)
                .tls(&sec, crate::transport::tls::system_clock())
                .expect("tls")
                .tcp,
            &server,
        );
        let dir = std::env::temp_dir().join(format!("postsock-sessions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("associations.json");
        first.save(&file).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "tickets are secrets");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(json["version"], 2);
        assert!(json["associations"][0]["sessions"]["tls_tcp"]
            .as_array()
            .is_some_and(|t| !t.is_empty()));

        // Loaded and saved again before any carrier: the tickets are kept.
        let relay = Associations::new(std::time::Duration::from_secs(60));
        relay.load(&file).expect("load");
        relay.save(&file).expect("save again");

        let second = Associations::new(std::time::Duration::from_secs(60));
        second.load(&file).expect("load");
        let tls = second
            .get(&key)
            .tls(&sec, crate::transport::tls::system_clock())
            .expect("tls");
        assert_eq!(handshake(&tls.tcp, &server), (true, true));

        // Under other roots the same association restores nothing.
        let other = security(&TestCa::new("another CA").expect("ca"));
        let third = Associations::new(std::time::Duration::from_secs(60));
        third.load(&file).expect("load");
        let tls = third
            .get(&key)
            .tls(&other, crate::transport::tls::system_clock())
            .expect("tls");
        assert!(tls.sessions.tcp.export(UnixTime::now()).is_empty());
        assert!(tls.sessions.quic.export(UnixTime::now()).is_empty());

        // A version 1 file (racing caches only) is still read.
        std::fs::write(&file, r#"{"version": 1, "associations": []}"#).expect("write");
        Associations::new(std::time::Duration::from_secs(60))
            .load(&file)
            .expect("version 1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
