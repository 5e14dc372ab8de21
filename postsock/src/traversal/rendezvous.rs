//! Rendezvous: two peers that share a secret find each other's candidates through a server.
//!
//! Each peer derives two values from the pairing secret (HMAC-SHA256, ring): a *pairing id*,
//! which it gives the server, and a *key* it never gives anyone. It seals its candidates
//! (host, server-reflexive, relayed addresses, and whatever else the peers agree on) with the
//! key (ChaCha20-Poly1305, random nonce, the pairing id and a per-peer nonce as associated
//! data) and registers `{pairing id, sealed blob}` with the server over a postsock carrier
//! (QUIC or TLS/TCP, certificate verified). The server pairs the first two registrations with
//! the same pairing id and hands each the other's blob; it cannot read or forge them.
//!
//! - Only peers that present the same pairing id are paired, and a third registration for an
//!   id already paired is refused: a stranger who does not know the secret cannot compute the
//!   id, so cannot join.
//! - A blob that does not open with the key (a stranger who learned the id, or a tampering
//!   server) is rejected by the peer: it learns nothing and pairs with nothing.
//! - A peer's own blob reflected back is recognised by its per-peer nonce and rejected.
//!
//! `postsock rendezvous-server` runs [`RendezvousServer`] on real sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::net::Net;
use crate::{Carrier, Configuration, Error, Listener, Remote, Result};
use crate::{ConfigError, ConnectionError, Violation};

/// Largest registration or answer accepted, bytes.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// A candidate address of a peer (RFC 8445 §5.1.1 kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateKind {
    /// An address of one of the peer's interfaces.
    Host,
    /// The address a STUN server saw (the peer's NAT mapping).
    ServerReflexive,
    /// An address on a TURN relay.
    Relayed,
}

/// One candidate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Candidate {
    /// Its kind.
    pub kind: CandidateKind,
    /// The transport address.
    pub addr: SocketAddr,
}

/// What a peer tells the other through the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its candidates, best first.
    pub candidates: Vec<Candidate>,
    /// Anything else the peers agree on (say the SHA-256 of a certificate to pin). Sent as
    /// hexadecimal, so that the sealed message's length depends on its length only.
    #[serde(default, with = "hex_bytes")]
    pub extra: Vec<u8>,
}

/// Serde for bytes as a hexadecimal string.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::util::unhex(&text).ok_or_else(|| serde::de::Error::custom("not hexadecimal"))
    }
}

/// The values both peers derive from their shared secret.
#[derive(Clone)]
pub struct Pairing {
    id: [u8; 32],
    key: [u8; 32],
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "Pairing({})", hex(&self.id[..8]))
    }
}

impl Pairing {
    /// Derives the pairing id and key from `secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < 16 {
            return Err(ConfigError::ShortSecret.into());
        }
        let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| {
            let mut out = [0u8; 32];
            out.copy_from_slice(hmac::sign(&k, label).as_ref());
            out
        };
        Ok(Pairing {
            id: derive(b"postsock rendezvous pairing id"),
            key: derive(b"postsock rendezvous key"),
        })
    }

    /// The pairing id, as the server sees it.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is what ChaCha20-Poly1305 takes.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.key).expect("32-byte key"))
    }

    /// Seals `info` for the other peer; `me` marks it as ours.
    pub(crate) fn seal(&self, info: &PeerInfo, me: [u8; 16], nonce: [u8; 12]) -> Result<String> {
        let mut plain = serde_json::to_vec(info).map_err(|e| ConfigError::Json(e.to_string()))?;
        let aad = [&self.id[..], &me[..]].concat();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut plain,
            )
            .map_err(|_| ConfigError::Sealing)?;
        Ok(hex(&[&me[..], &nonce[..], &plain[..]].concat()))
    }

    /// Opens the other peer's blob: `None` if it does not authenticate, or is our own.
    pub(crate) fn open(&self, blob: &str, me: [u8; 16]) -> Option<PeerInfo> {
        let bytes = unhex(blob)?;
        if bytes.len() < 16 + 12 + aead::CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (sender, rest) = bytes.split_at(16);
        if sender == me {
            return None;
        }
        let (nonce, sealed) = rest.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let aad = [&self.id[..], sender].concat();
        let mut sealed = sealed.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(&aad), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

use crate::util::{hex, unhex};

/// A registration, as sent to the server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    pair: String,
    blob: String,
}

/// The server's answer: the other peer's blob.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Matched {
    blob: String,
}

/// Random bytes for nonces and pairing secrets; without entropy a nonce is merely guessable
/// (ring's RNG does not fail on Linux).
fn random<const N: usize>(net: &dyn Net) -> [u8; N] {
    crate::util::random(net).unwrap_or([0; N])
}

/// Registers `mine` under `pairing` with the rendezvous server `server` and waits (at most
/// `wait`) for the other peer's; returns it once it authenticates.
pub async fn exchange(
    net: Arc<dyn Net>,
    server: Remote,
    config: Configuration,
    pairing: &Pairing,
    mine: &PeerInfo,
    wait: Duration,
) -> Result<PeerInfo> {
    let me: [u8; 16] = random(net.as_ref());
    let nonce: [u8; 12] = random(net.as_ref());
    let blob = pairing.seal(mine, me, nonce)?;
    let register = Register {
        pair: pairing.id(),
        blob,
    };
    let bytes = serde_json::to_vec(&register).map_err(|e| ConfigError::Json(e.to_string()))?;
    let carrier = Carrier::initiate(net, server, config).await?;
    carrier.send_bytes(bytes).await?;
    let answer = tokio::time::timeout(wait, carrier.receive())
        .await
        .map_err(|_| {
            Error::from(ConnectionError::NoPeer {
                ms: wait.as_millis(),
            })
        })??;
    // The answer is in hand: the registration carrier closes on its own time (a QUIC close
    // waits for the server's goodbye, a round trip the meeting need not wait for).
    tokio::spawn(async move {
        let _ = carrier.close().await;
    });
    let answer = answer.ok_or(ConnectionError::RendezvousClosed)?;
    let matched: Matched = serde_json::from_slice(&answer.data)
        .map_err(|e| Violation::RendezvousAnswer(e.to_string()))?;
    pairing
        .open(&matched.blob, me)
        .ok_or_else(|| Error::from(Violation::NotAuthenticated))
}

/// What a [`RendezvousServer`] did.
#[derive(Debug, Default)]
pub struct RendezvousStats {
    paired: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
}

impl RendezvousStats {
    /// Pairs made.
    pub fn paired(&self) -> u64 {
        self.paired.load(Ordering::Relaxed)
    }
    /// Registrations refused (a pairing id already paired).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Malformed registrations dropped.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

/// Registrations waiting for their peer, and pairing ids already used.
#[derive(Default)]
struct Book {
    waiting: BTreeMap<String, (String, tokio::sync::oneshot::Sender<String>)>,
    paired: std::collections::BTreeSet<String>,
}

/// A rendezvous server: a postsock listener (QUIC and TLS/TCP on one port) pairing
/// registrations.
pub type RendezvousServer = crate::traversal::stun::Served<RendezvousStats>;

impl RendezvousServer {
    /// Binds at `local` with `config` (which needs an identity) and starts pairing. A peer
    /// waits at most `wait` for the other.
    pub async fn bind(
        net: Arc<dyn Net>,
        local: SocketAddr,
        config: Configuration,
        wait: Duration,
    ) -> Result<Self> {
        let mut listener = Listener::bind(net, local, config).await?;
        let local = listener.local_addr();
        let stats = Arc::new(RendezvousStats::default());
        let book: Arc<Mutex<Book>> = Default::default();
        let s = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok(carrier) = listener.accept().await {
                tokio::spawn(handle(carrier, book.clone(), s.clone(), wait));
            }
        });
        Ok(crate::traversal::stun::Served::new(local, stats, task))
    }
}

fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    crate::util::lock(book)
}

async fn handle(
    carrier: Carrier,
    book: Arc<Mutex<Book>>,
    stats: Arc<RendezvousStats>,
    wait: Duration,
) {
    let first = tokio::time::timeout(wait, carrier.receive()).await;
    let Ok(Ok(Some(message))) = first else {
        return;
    };
    let register: Option<Register> = (message.data.len() <= MAX_MESSAGE)
        .then(|| serde_json::from_slice(&message.data).ok())
        .flatten()
        .filter(|r: &Register| r.pair.len() == 64 && unhex(&r.pair).is_some());
    let Some(register) = register else {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        carrier.abort();
        return;
    };
    let partner = {
        let mut b = lock(&book);
        if b.paired.contains(&register.pair) {
            None
        } else {
            Some(b.waiting.remove(&register.pair))
        }
    };
    let reply = match partner {
        // A pair was already made with this id: a third party is refused.
        None => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            carrier.abort();
            return;
        }
        // The second of a pair: each gets the other's blob.
        Some(Some((their_blob, tell_them))) => {
            lock(&book).paired.insert(register.pair.clone());
            stats.paired.fetch_add(1, Ordering::Relaxed);
            let _ = tell_them.send(register.blob);
            their_blob
        }
        // The first: wait for the second.
        Some(None) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            lock(&book)
                .waiting
                .insert(register.pair.clone(), (register.blob, tx));
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(blob)) => blob,
                _ => {
                    lock(&book).waiting.remove(&register.pair);
                    carrier.abort();
                    return;
                }
            }
        }
    };
    if let Ok(bytes) = serde_json::to_vec(&Matched { blob: reply }) {
        let _ = carrier.send_bytes(bytes).await;
    }
    let _ = carrier.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16) -> PeerInfo {
        PeerInfo {
            candidates: vec![Candidate {
                kind: CandidateKind::ServerReflexive,
                addr: ([203, 0, 113, 1], port).into(),
            }],
            extra: vec![1, 2, 3],
        }
    }

    #[test]
    fn sealed_info_opens_only_with_the_same_secret_and_not_for_its_sender() {
        let a = Pairing::new(b"correct horse battery staple").expect("pairing");
        let b = Pairing::new(b"correct horse battery staple").expect("pairing");
        let stranger = Pairing::new(b"another secret of enough length").expect("pairing");
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), stranger.id());
        let blob = a.seal(&info(4000), [1; 16], [2; 12]).expect("seal");
        assert_eq!(b.open(&blob, [9; 16]), Some(info(4000)));
        assert_eq!(stranger.open(&blob, [9; 16]), None, "wrong key");
        assert_eq!(b.open(&blob, [1; 16]), None, "our own blob reflected");
        // Any flipped bit fails authentication; so does garbage.
        let mut bytes = unhex(&blob).expect("hex");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(b.open(&hex(&bytes), [9; 16]), None);
        assert_eq!(b.open("zz", [9; 16]), None);
        assert_eq!(b.open("", [9; 16]), None);
        assert!(Pairing::new(b"short").is_err());
    }
}
