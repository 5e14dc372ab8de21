//! Hole punching: a QUIC carrier between two peers behind NATs, found through a rendezvous
//! (ICE-style, RFC 8445 in outline) — direct where the NATs allow, through a TURN relay
//! otherwise. [`crate::Carrier::rendezvous`] is the API; this module is the mechanism.
//!
//! Each peer:
//! 1. binds one UDP socket and wraps it in a [`Demux`] (RFC 7983), so the STUN checks below
//!    and the QUIC connection afterwards use the same socket — the same NAT mapping;
//! 2. gathers candidates: its host address and its server-reflexive address (a STUN Binding
//!    to the configured STUN server, from that socket);
//! 3. makes a one-off certificate authority and identity, and exchanges candidates, the CA
//!    certificate and a tie-breaker through the [`rendezvous`] (sealed with
//!    the key both derive from their shared secret);
//! 4. sends STUN Binding requests (connectivity checks, named with a username derived from
//!    the pairing key) to every candidate of the peer every `check_interval`, answers the
//!    peer's checks with a Binding success to wherever they came from, and adds that source
//!    as a peer-reflexive candidate (behind a symmetric NAT it is the only address that
//!    works). The first pair whose check succeeds wins;
//! 5. QUIC: the peer with the higher tie-breaker is the client and connects to the winning
//!    address, verifying the other's certificate against the CA certificate received through
//!    the rendezvous (verification stays on); the other accepts on its socket.
//!
//! With a TURN server configured ([`PunchConfig::turn`]), each peer also allocates a relayed
//! address on it (from the same socket) and offers it as a candidate; checks then also run
//! through the relay: to the peer's relayed address, and from ours. Direct pairs win: a
//! relayed pair is taken only once `direct_first` has passed without a direct one (or at
//! once with [`RelayPolicy::Only`], which offers only the relayed candidate, so the peer
//! never learns this host's addresses). The carrier then runs over the relay, on a TURN
//! channel, and [`PunchReport::path`] says so.
//!
//! Afterwards a keeper answers the peer's late checks and, when the pair falls silent (a NAT
//! rebooted), meets the peer again and moves the same QUIC connection to the new pair.
//!
//! When no pair works within `checks_for`, the error says which candidates were tried.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::establish::attempt::Transient;
use crate::net::Net;
use crate::transport::{quic, tls};
use crate::traversal::codec::stun::{answer_check, check_request};
use crate::traversal::rendezvous::{self, Candidate, CandidateKind, Pairing, PeerInfo};
use crate::traversal::stun::{self, Answers, Demux, Via};
use crate::traversal::turn::{self, TurnConfig};
use crate::{Carrier, Configuration, Error, Remote, Result, Security, TestCa};
use crate::{ConfigError, ConnectionError, Violation};

/// Where the peers meet and how long they try.
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// The rendezvous server.
    pub rendezvous: Remote,
    /// The rendezvous server's configuration (its trusted roots).
    pub rendezvous_config: Configuration,
    /// A STUN server for the server-reflexive candidate.
    pub stun: SocketAddr,
    /// How long to wait for the other peer at the rendezvous.
    pub wait: Duration,
    /// How often each candidate pair is checked.
    pub check_interval: Duration,
    /// How long checks run before giving up.
    pub checks_for: Duration,
    /// A TURN server to relay through when no direct pair works.
    pub turn: Option<TurnConfig>,
    /// Whether relayed pairs are a fallback or the only ones used.
    pub relay: RelayPolicy,
    /// How long direct pairs have to work before a working relayed pair is taken.
    pub direct_first: Duration,
}

/// When the relay is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayPolicy {
    /// Only when no direct pair works within `direct_first`.
    #[default]
    Fallback,
    /// Always: only the relayed candidate is offered and only relayed pairs are used (the
    /// peer learns no address of this host).
    Only,
}

impl PunchConfig {
    /// Defaults: wait 30 s for the peer, check every 20 ms for 5 s, no relay (a relayed pair
    /// is taken after 1 s without a direct one once [`PunchConfig::turn`] is set).
    pub fn new(rendezvous: Remote, rendezvous_config: Configuration, stun: SocketAddr) -> Self {
        PunchConfig {
            rendezvous,
            rendezvous_config,
            stun,
            wait: Duration::from_secs(30),
            check_interval: Duration::from_millis(20),
            checks_for: Duration::from_secs(5),
            turn: None,
            relay: RelayPolicy::Fallback,
            direct_first: Duration::from_secs(1),
        }
    }
}

pub use crate::establish::report::{PathKind, PunchReport};

/// What each peer puts in [`PeerInfo::extra`].
#[derive(Debug, Serialize, Deserialize)]
struct Extra {
    /// The peer's one-off CA certificate (DER, in hexadecimal: its length, and so the
    /// messages', does not depend on the bytes), which its QUIC identity chains to.
    root: String,
    /// The higher one is the QUIC client.
    tiebreak: u64,
}

/// The name the one-off identities are issued for.
const PEER_NAME: &str = "peer.postsock.invalid";

/// Establishes a direct QUIC carrier with the peer that shares `secret`.
pub(crate) async fn punch(
    net: Arc<dyn Net>,
    secret: &[u8],
    punch: &PunchConfig,
    config: &Configuration,
) -> Result<(Transient, PunchReport)> {
    let t0 = Instant::now();
    let pairing = Pairing::new(secret)?;
    let socket = net
        .bind_udp(([0, 0, 0, 0], 0).into())
        .await
        .map_err(|e| Error::io("binding the punching socket", e))?;
    let host = socket
        .local_addr()
        .map_err(|e| Error::io("reading the punching socket's address", e))?;
    let demux = Demux::new(socket);
    demux.pump();
    if punch.turn.is_none() && punch.relay == RelayPolicy::Only {
        return Err(ConfigError::RelayOnlyWithoutTurn.into());
    }

    let user = check_username(&pairing);
    let spot = Spot {
        net: &net,
        demux: &demux,
        host,
        punch,
        user: &user,
    };
    let gathered = spot.gather().await?;

    let ca = TestCa::new("postsock punched peer")?;
    let identity = ca.issue(&[PEER_NAME])?;
    let tiebreak = u64::from_be_bytes(
        stun::transaction_id(net.as_ref())[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let extra = Extra {
        root: crate::util::hex(ca.root().as_ref()),
        tiebreak,
    };
    let extra = serde_json::to_vec(&extra).map_err(|e| ConfigError::Json(e.to_string()))?;
    let met = spot.meet(&pairing, gathered, extra).await?;
    let rendezvous_done = met.rendezvous_at.duration_since(t0);
    let checks_done = t0.elapsed();
    let Met {
        theirs,
        pair: (remote, via),
        reflexive,
        own_relay,
        relayed_remote,
        ..
    } = met;
    let their_extra: Extra = serde_json::from_slice(&theirs.extra)
        .map_err(|e| Violation::RendezvousExtra(e.to_string()))?;
    if their_extra.tiebreak == tiebreak {
        return Err(Violation::SameTieBreaker.into());
    }
    let controlling = tiebreak > their_extra.tiebreak;
    let their_root = crate::util::unhex(&their_extra.root).ok_or(Violation::CaNotHex)?;

    // Keep answering the peer's checks while QUIC starts (quinn reads the socket from now
    // on; STUN still comes to us through the demultiplexer).
    demux.stop_pump();
    let responder = tokio::spawn(answer_checks(demux.clone(), user.clone()));
    let result = if controlling {
        demux.set_route(remote, via);
        let security = Security {
            trusted_roots: vec![rustls::pki_types::CertificateDer::from(their_root)],
            server_name: Some(PEER_NAME.into()),
            identity: None,
            key_log: config.security.key_log.clone(),
        };
        let mut client = config.clone();
        client.security = Arc::new(security);
        let tls = Arc::new(tls::client_config(&client.security, net.tls_clock())?);
        let endpoint = quic::endpoint_on(net.as_ref(), demux.clone(), None, None)?;
        let epoch = quic::PathEpoch::default();
        let conn = quic::connect_on(&endpoint, remote, PEER_NAME, &client, tls, &epoch).await?;
        Transient::Quic {
            conn,
            endpoint: Some(endpoint),
            resumed: Some(false),
            zero_rtt: None,
            epoch,
        }
    } else {
        let mut server = config.clone();
        server.security = Arc::new(Security {
            identity: Some(identity),
            key_log: config.security.key_log.clone(),
            ..Security::default()
        });
        let epoch = quic::PathEpoch::default();
        let endpoint = quic::endpoint_on(net.as_ref(), demux.clone(), Some(&server), Some(&epoch))?;
        let incoming = tokio::time::timeout(punch.checks_for, endpoint.accept())
            .await
            .ok()
            .flatten()
            .ok_or(ConnectionError::PeerDidNotConnect)?;
        let conn = incoming
            .await
            .map_err(|e| ConnectionError::PeerHandshake(e.to_string()))?;
        Transient::Quic {
            conn,
            endpoint: Some(endpoint),
            resumed: None,
            zero_rtt: None,
            epoch,
        }
    };
    responder.abort();
    // The controlled peer learns the pair from where QUIC came.
    let remote = match &result {
        Transient::Quic { conn, .. } => conn.remote_address(),
        _ => remote,
    };
    let path = match (demux.route(remote), own_relay) {
        (Via::Relay, Some(relay)) => PathKind::Relayed { relay },
        _ if relayed_remote.contains(&remote) => PathKind::Relayed { relay: remote },
        _ => PathKind::Direct,
    };
    if let Transient::Quic {
        conn,
        endpoint: Some(endpoint),
        epoch,
        ..
    } = &result
    {
        let keeper = Keeper {
            endpoint: endpoint.clone(),
            epoch: epoch.clone(),
            net: net.clone(),
            demux: demux.clone(),
            conn: conn.clone(),
            secret: secret.to_vec(),
            punch: punch.clone(),
            user: user.clone(),
            host,
            own_relay,
            silence: config.keepalive.map(|k| k * 3),
        };
        tokio::spawn(keeper.run());
    }
    let report = PunchReport {
        path,
        reflexive,
        remote,
        controlling,
        rendezvous: rendezvous_done,
        checks_done,
        ready: t0.elapsed(),
    };
    Ok((result, report))
}

impl Carrier {
    /// Rendezvous: a carrier with the peer that shares `secret`, both behind whatever NATs —
    /// met through the rendezvous server, hole-punched where the NATs allow, relayed through
    /// the TURN server otherwise (see [`crate::traversal::punch`]). Like every carrier its first event is
    /// `Ready`; [`Carrier::rendezvous_report`] tells whether its path is direct or relayed.
    pub async fn rendezvous(
        net: Arc<dyn Net>,
        secret: &[u8],
        punch: &PunchConfig,
        config: Configuration,
    ) -> Result<Self> {
        let (transient, report) = self::punch(net, secret, punch, &config).await?;
        Ok(Carrier::start(transient, &config, None).met(report))
    }
}

/// Keeps a punched carrier's path (and answers the peer's checks): when nothing has come from the peer for three keepalive
/// intervals (its NAT, or ours, rebooted or rebound: the pair is dead), both peers notice —
/// the break cuts both ways — and meet again through the rendezvous under a pairing derived
/// from the secret and the restart's number (an ICE restart, RFC 8445 §2.4): fresh reflexive
/// addresses, checks, a new pair. The QUIC connection carries on over it: the demultiplexer
/// sends what QUIC addresses to the peer's old address to the new one ([`Demux::alias`]),
/// so neither end's QUIC sees the move (a QUIC client could not follow a server that
/// moved). Ends with the connection.
struct Keeper {
    net: Arc<dyn Net>,
    demux: Arc<Demux>,
    endpoint: quinn::Endpoint,
    /// Bumped after a restart: the new path's congestion control starts afresh.
    epoch: quic::PathEpoch,
    conn: quinn::Connection,
    secret: Vec<u8>,
    punch: PunchConfig,
    user: String,
    host: SocketAddr,
    own_relay: Option<SocketAddr>,
    /// Three keepalive intervals; without keepalives silence means nothing and the keeper
    /// only answers the peer's checks.
    silence: Option<Duration>,
}

impl Keeper {
    async fn run(mut self) {
        let mut rx = self.conn.stats().udp_rx.datagrams;
        let mut heard = Instant::now();
        let mut restarts: u32 = 0;
        loop {
            // Meanwhile the peer's checks (it may still be checking) are answered, and
            // nothing STUN piles up.
            let tick = tokio::time::sleep(KEEPER_CHECK);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut tick => break,
                    got = self.demux.recv_stun_via() => {
                        let Ok((from, data, via)) = got else { return };
                        if let Some(reply) = answer_check(&data, from, &self.user) {
                            let _ = self.demux.send_stun_via(from, &reply, via).await;
                        }
                    }
                }
            }
            if self.conn.close_reason().is_some() {
                return;
            }
            let now = Instant::now();
            let got = self.conn.stats().udp_rx.datagrams;
            if got != rx {
                rx = got;
                heard = now;
                continue;
            }
            if self.silence.is_none_or(|s| now.duration_since(heard) < s) {
                continue;
            }
            restarts += 1;
            match self.restart(restarts).await {
                Ok((remote, via)) => {
                    tracing::info!("rendezvous restart {restarts}: the peer is now at {remote}");
                    self.demux.alias(self.conn.remote_address(), remote);
                    self.demux.set_route(remote, via);
                    // A new path: fresh congestion control (the old one collapsed during the
                    // outage), and rebinding (to the same socket) makes quinn probe at once
                    // instead of after its backed-off probe timeout.
                    self.epoch.bump();
                    if let Err(e) = self.endpoint.rebind_abstract(self.demux.clone()) {
                        tracing::warn!("probing after the restart: {e}");
                    }
                }
                Err(e) => tracing::warn!("rendezvous restart {restarts}: {e}"),
            }
            heard = Instant::now();
        }
    }

    /// Meets the peer again and finds a working pair.
    async fn restart(&mut self, n: u32) -> Result<(SocketAddr, Via)> {
        let secret = [&self.secret[..], b"/restart/", &n.to_be_bytes()].concat();
        let pairing = Pairing::new(&secret)?;
        let spot = Spot {
            net: &self.net,
            demux: &self.demux,
            host: self.host,
            punch: &self.punch,
            user: &self.user,
        };
        let gathered = spot.gather().await?;
        let met = spot.meet(&pairing, gathered, Vec::new()).await?;
        self.own_relay = met.own_relay;
        Ok(met.pair)
    }
}

/// How often a [`Keeper`] looks at its connection.
const KEEPER_CHECK: Duration = Duration::from_millis(100);

/// Where a peer meets the other: its socket, the servers, its checks' username.
struct Spot<'a> {
    net: &'a Arc<dyn Net>,
    demux: &'a Arc<Demux>,
    host: SocketAddr,
    punch: &'a PunchConfig,
    user: &'a str,
}

/// What a meeting found.
struct Met {
    theirs: PeerInfo,
    /// The working pair: the peer's address and the way there.
    pair: (SocketAddr, Via),
    reflexive: SocketAddr,
    own_relay: Option<SocketAddr>,
    /// The peer's relayed candidates.
    relayed_remote: BTreeSet<SocketAddr>,
    /// When the rendezvous returned the peer's candidates.
    rendezvous_at: Instant,
}

/// This peer's addresses, gathered on its socket.
struct Gathered {
    reflexive: SocketAddr,
    allocation: Option<turn::Allocation>,
}

impl Spot<'_> {
    /// The reflexive address (STUN), and with a TURN server an allocation on the socket —
    /// any earlier one released first: after a NAT reboot it belongs to a mapping that is
    /// gone (allocations are bound to the 5-tuple; RFC 8656 has no mobility).
    async fn gather(&self) -> Result<Gathered> {
        let (net, demux, punch) = (self.net, self.demux, self.punch);
        let allocate = || async {
            match &punch.turn {
                Some(t) => {
                    demux.release_relay().await;
                    turn::allocate(net.clone(), demux, t).await.map(Some)
                }
                None => Ok(None),
            }
        };
        // With a relay attached the TURN server's answers go to the TURN client: if it is
        // our STUN server too, its Allocate answer says where our mapping is.
        if punch.turn.as_ref().map(|t| t.server) == Some(punch.stun) {
            let allocation = allocate().await?;
            if let Some(reflexive) = allocation.as_ref().and_then(|a| a.mapped()) {
                return Ok(Gathered {
                    reflexive,
                    allocation,
                });
            }
        }
        let txid = stun::transaction_id(net.as_ref());
        let timing = stun::Timing {
            rto: Duration::from_millis(250),
            ..stun::Timing::default()
        };
        let answers = Answers::Demux(demux.as_ref());
        let reflexive = stun::binding(demux.as_ref(), answers, punch.stun, txid, timing).await?;
        Ok(Gathered {
            reflexive,
            allocation: allocate().await?,
        })
    }

    /// One meeting under `pairing`: our candidates (and `extra`) exchanged through the
    /// rendezvous; checks until a pair works, with our relay's permissions for the peer
    /// installed alongside.
    async fn meet(&self, pairing: &Pairing, gathered: Gathered, extra: Vec<u8>) -> Result<Met> {
        let (net, demux, punch) = (self.net, self.demux, self.punch);
        let Gathered {
            reflexive,
            allocation,
        } = gathered;
        let own_relay = allocation.as_ref().map(|a| a.relayed());
        let mine = PeerInfo {
            candidates: our_candidates(punch.relay, reflexive, self.host, own_relay),
            extra,
        };
        let theirs = rendezvous::exchange(
            net.clone(),
            punch.rendezvous.clone(),
            punch.rendezvous_config.clone(),
            pairing,
            &mine,
            punch.wait,
        )
        .await?;
        let rendezvous_at = Instant::now();
        let relayed_remote = relayed_candidates(&theirs);
        let plan = Plan {
            user: self.user,
            relayed_remote: &relayed_remote,
            relay: allocation.is_some(),
            policy: punch.relay,
        };
        // Direct pairs need not wait for the permissions.
        let ips: Vec<std::net::IpAddr> = theirs.candidates.iter().map(|c| c.addr.ip()).collect();
        let permit = allocation
            .as_ref()
            .map(|a| Box::pin(a.permit(&ips)) as Permit<'_>);
        let pair = checks(demux, net, &theirs, &plan, punch, permit).await?;
        if let Some(a) = allocation {
            a.keep(demux);
        }
        Ok(Met {
            theirs,
            pair,
            reflexive,
            own_relay,
            relayed_remote,
            rendezvous_at,
        })
    }
}

/// The USERNAME both peers' checks carry: derived from the pairing, so a stranger's probes
/// are not answered.
fn check_username(pairing: &Pairing) -> String {
    format!("postsock:{}", &pairing.id()[..16])
}

/// What we offer the peer: server-reflexive and host (unless relay-only), and relayed.
fn our_candidates(
    policy: RelayPolicy,
    reflexive: SocketAddr,
    host: SocketAddr,
    relayed: Option<SocketAddr>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    if policy != RelayPolicy::Only {
        out.push(Candidate {
            kind: CandidateKind::ServerReflexive,
            addr: reflexive,
        });
        out.push(Candidate {
            kind: CandidateKind::Host,
            addr: host,
        });
    }
    out.extend(relayed.map(|addr| Candidate {
        kind: CandidateKind::Relayed,
        addr,
    }));
    out
}

/// The peer's relayed candidates.
fn relayed_candidates(theirs: &PeerInfo) -> BTreeSet<SocketAddr> {
    theirs
        .candidates
        .iter()
        .filter(|c| c.kind == CandidateKind::Relayed)
        .map(|c| c.addr)
        .collect()
}

/// What the checks need to know besides the peer's candidates.
struct Plan<'a> {
    user: &'a str,
    /// The peer's relayed candidates.
    relayed_remote: &'a BTreeSet<SocketAddr>,
    /// Whether we have an allocation.
    relay: bool,
    policy: RelayPolicy,
}

impl Plan<'_> {
    /// Whether the pair goes through a relay (ours, or the peer's relayed address).
    fn relayed(&self, pair: (SocketAddr, Via)) -> bool {
        pair.1 == Via::Relay || self.relayed_remote.contains(&pair.0)
    }

    /// Whether the policy lets the pair be checked and used.
    fn allowed(&self, pair: (SocketAddr, Via)) -> bool {
        self.policy != RelayPolicy::Only || self.relayed(pair)
    }
}

/// Installing the TURN permissions.
type Permit<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Runs checks until one pair works; returns the peer address that answered and the way.
/// A direct pair is returned at once; a relayed one once `direct_first` has passed.
/// `permit` (installing our relay's permissions) runs alongside.
async fn checks(
    demux: &Arc<Demux>,
    net: &Arc<dyn Net>,
    theirs: &PeerInfo,
    plan: &Plan<'_>,
    punch: &PunchConfig,
    mut permit: Option<Permit<'_>>,
) -> Result<(SocketAddr, Via)> {
    let mut targets: BTreeSet<(SocketAddr, Via)> = BTreeSet::new();
    for c in &theirs.candidates {
        targets.insert((c.addr, Via::Direct));
        if plan.relay {
            targets.insert((c.addr, Via::Relay));
        }
    }
    targets.retain(|p| plan.allowed(*p));
    let mut sent: std::collections::BTreeMap<[u8; 12], (SocketAddr, Via)> = Default::default();
    let start = Instant::now();
    let deadline = start + punch.checks_for;
    let direct_until = match plan.policy {
        RelayPolicy::Only => start,
        RelayPolicy::Fallback => start + punch.direct_first,
    };
    let mut relayed_ok: Option<(SocketAddr, Via)> = None;
    let mut tick = tokio::time::interval(punch.check_interval);
    loop {
        tokio::select! {
            biased;
            done = async { permit.as_mut()?.await.into() }, if permit.is_some() => {
                permit = None;
                if let Some(Err(e)) = done {
                    tracing::warn!("TURN permissions for the peer: {e}");
                }
            }
            got = demux.recv_stun_via() => {
                let (from, data, via) = got.map_err(|e| Error::io("reading checks", e))?;
                let pair = (from, via);
                if !plan.allowed(pair) {
                    continue;
                }
                if let Some(reply) = answer_check(&data, from, plan.user) {
                    let _ = demux.send_stun_via(from, &reply, via).await;
                    // Peer-reflexive: where the peer's check came from works for it. A new
                    // one is checked at once (RFC 8445 §7.3.1.4, a triggered check).
                    if targets.insert(pair) {
                        let txid = stun::transaction_id(net.as_ref());
                        sent.insert(txid, pair);
                        if let Some(request) = check_request(txid, plan.user) {
                            let _ = demux.send_stun_via(from, &request, via).await;
                        }
                    }
                    continue;
                }
                let answered = sent.iter().find_map(|(txid, to)| {
                    (*to == pair && stun::reflexive_address(&data, *txid).is_some()).then_some(*to)
                });
                if let Some(pair) = answered {
                    if !plan.relayed(pair) || Instant::now() >= direct_until {
                        return Ok(pair);
                    }
                    relayed_ok.get_or_insert(pair);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(pair) = relayed_ok.filter(|_| now >= direct_until) {
                    return Ok(pair);
                }
                if now >= deadline {
                    let relay = if plan.relay {
                        "including through the TURN relay"
                    } else {
                        "and no TURN server is configured to relay through"
                    };
                    return Err(ConnectionError::NoCandidatePair {
                        ms: punch.checks_for.as_millis(),
                        candidates: theirs.candidates.iter().map(|c| c.addr.to_string()).collect(),
                        relay: relay.to_string(),
                    }
                    .into());
                }
                for (to, via) in targets.clone() {
                    let txid = stun::transaction_id(net.as_ref());
                    sent.insert(txid, (to, via));
                    if let Some(request) = check_request(txid, plan.user) {
                        let _ = demux.send_stun_via(to, &request, via).await;
                    }
                }
            }
        }
    }
}

/// Answers the peer's checks (it may still be checking when we are done).
async fn answer_checks(demux: Arc<Demux>, user: String) {
    while let Ok((from, data, via)) = demux.recv_stun_via().await {
        if let Some(reply) = answer_check(&data, from, &user) {
            let _ = demux.send_stun_via(from, &reply, via).await;
        }
    }
}
