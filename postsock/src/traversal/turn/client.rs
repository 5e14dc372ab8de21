//! The TURN client: an allocation from a demultiplexed socket, kept alive for as long as the
//! socket lives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{Message, MessageClass, Method, TransactionId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::net::{AsyncUdpSocket, Net};
use crate::traversal::stun::{self, Demux};
use crate::{ConfigError, ConnectionError, Violation};
use crate::{Error, Result};

use super::{CHANNEL_LIFETIME, DEFAULT_LIFETIME, PERMISSION_LIFETIME};
use crate::traversal::codec::turn::{decode, encode, Attribute, UDP};

/// A TURN server and the long-term credentials to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// Retransmission of TURN requests: RFC 8489 §6.2.1 with a shorter first timeout and fewer
/// requests (about 8 s in all before giving up).
const TIMING: stun::Timing = stun::Timing {
    rto: Duration::from_millis(250),
    requests: 5,
    last_wait: 16,
};

/// The long-term credential state of a client.
#[derive(Debug, Clone)]
struct Auth {
    username: Username,
    realm: Realm,
    nonce: Nonce,
}

/// A TURN client session on a demultiplexed socket.
#[derive(Debug)]
struct Client {
    net: Arc<dyn Net>,
    socket: Arc<dyn AsyncUdpSocket>,
    config: TurnConfig,
    control: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    auth: Mutex<Option<Auth>>,
}

fn text_error(m: &Message<Attribute>) -> String {
    m.get_attribute::<ErrorCode>()
        .map(|e| format!("{} {}", e.code(), e.reason_phrase()))
        .unwrap_or_else(|| "an error without ERROR-CODE".into())
}

fn method_name(m: Method) -> &'static str {
    match m {
        ALLOCATE => "Allocate",
        REFRESH => "Refresh",
        CREATE_PERMISSION => "CreatePermission",
        CHANNEL_BIND => "ChannelBind",
        _ => "request",
    }
}

impl Client {
    fn auth(&self) -> Option<Auth> {
        crate::util::lock(&self.auth).clone()
    }

    /// `attrs` with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY added (once the server has
    /// told us its realm and nonce).
    fn build(&self, method: Method, txid: [u8; 12], attrs: &[Attribute]) -> Result<Vec<u8>> {
        let mut m = Message::new(MessageClass::Request, method, TransactionId::new(txid));
        for a in attrs {
            m.add_attribute(a.clone());
        }
        if let Some(auth) = self.auth() {
            m.add_attribute(auth.username.clone());
            m.add_attribute(auth.realm.clone());
            m.add_attribute(auth.nonce.clone());
            if let Ok(mi) = MessageIntegrity::new_long_term_credential(
                &m,
                &auth.username,
                &auth.realm,
                &self.config.password,
            ) {
                m.add_attribute(mi);
            }
        }
        encode(m).ok_or_else(|| {
            Error::from(Violation::Turn(format!(
                "a TURN {} request that cannot be encoded",
                method_name(method)
            )))
        })
    }

    /// One request/response transaction (RFC 8489 §6.2.1 timing, shortened), with the
    /// 401 and 438 retries of the long-term credential mechanism.
    async fn transact(&self, method: Method, attrs: &[Attribute]) -> Result<Message<Attribute>> {
        let mut control = self.control.lock().await;
        let server = self.config.server;
        for _attempt in 0..3 {
            let txid = stun::transaction_id(self.net.as_ref());
            let request = self.build(method, txid, attrs)?;
            let Some(response) = self.exchange(&mut control, &request, txid).await? else {
                return Err(ConnectionError::NoTurnAnswer {
                    server,
                    method: method_name(method),
                }
                .into());
            };
            match response.class() {
                MessageClass::SuccessResponse => {
                    if let Some(auth) = self.auth() {
                        let ok = response
                            .get_attribute::<MessageIntegrity>()
                            .map(|mi| {
                                mi.check_long_term_credential(
                                    &auth.username,
                                    &auth.realm,
                                    &self.config.password,
                                )
                                .is_ok()
                            })
                            .unwrap_or(false);
                        if !ok {
                            return Err(Violation::Turn(format!(
                                "the TURN server {server}'s answer to {} failed its integrity \
                                 check",
                                method_name(method)
                            ))
                            .into());
                        }
                    }
                    return Ok(response);
                }
                MessageClass::ErrorResponse => {
                    let code = response.get_attribute::<ErrorCode>().map(|e| e.code());
                    let realm = response.get_attribute::<Realm>().cloned();
                    let nonce = response.get_attribute::<Nonce>().cloned();
                    let had = self.auth();
                    match (code, realm, nonce) {
                        // 401 with a realm and nonce: authenticate (once; a second 401 with
                        // credentials means they are wrong).
                        (Some(401), Some(realm), Some(nonce)) if had.is_none() => {
                            let username = Username::new(self.config.username.clone())
                                .map_err(|e| ConfigError::TurnUserName(e.to_string()))?;
                            *crate::util::lock(&self.auth) = Some(Auth {
                                username,
                                realm,
                                nonce,
                            });
                        }
                        // 438 Stale Nonce: the new nonce, and again.
                        (Some(438), realm, Some(nonce)) if had.is_some() => {
                            let mut a = crate::util::lock(&self.auth);
                            if let Some(a) = a.as_mut() {
                                a.nonce = nonce;
                                if let Some(r) = realm {
                                    a.realm = r;
                                }
                            }
                        }
                        _ => {
                            return Err(ConnectionError::TurnRefused {
                                server,
                                method: method_name(method),
                                reason: text_error(&response),
                            }
                            .into())
                        }
                    }
                }
                _ => {}
            }
        }
        Err(ConnectionError::TurnKeptRefusing {
            server,
            method: method_name(method),
        }
        .into())
    }

    /// Sends `request` until its response arrives; `None` after the last wait.
    async fn exchange(
        &self,
        control: &mut mpsc::UnboundedReceiver<Bytes>,
        request: &[u8],
        txid: [u8; 12],
    ) -> Result<Option<Message<Attribute>>> {
        let server = self.config.server;
        let mut answers = stun::Answers::Relay(control, server);
        let accept = |data: &[u8]| {
            decode(data).filter(|m| {
                matches!(
                    m.class(),
                    MessageClass::SuccessResponse | MessageClass::ErrorResponse
                ) && m.transaction_id().as_bytes() == &txid
            })
        };
        stun::transaction(
            self.socket.as_ref(),
            &mut answers,
            server,
            request,
            TIMING,
            accept,
        )
        .await
    }

    /// Frees the allocation now, without waiting for the answer (the socket is going).
    fn release(&self) {
        let txid = stun::transaction_id(self.net.as_ref());
        let Ok(request) = self.build(REFRESH, txid, &[Attribute::Lifetime(Lifetime::from_u32(0))])
        else {
            return;
        };
        let transmit = quinn::udp::Transmit {
            destination: self.config.server,
            ecn: None,
            contents: &request,
            segment_size: None,
            src_ip: None,
        };
        let _ = self.socket.try_send(&transmit);
    }
}

/// An allocation on a TURN server, made from a [`Demux`]'s socket.
#[derive(Debug)]
pub struct Allocation {
    client: Arc<Client>,
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    lifetime: Duration,
    permitted: Mutex<BTreeSet<IpAddr>>,
}

/// Asks `turn.server` for an allocation from `demux`'s socket; from now on the demultiplexer
/// routes relayed traffic (see the module documentation). Somebody must be reading the
/// socket — the demultiplexer's pump, quinn, or the caller — for the answers to arrive.
pub async fn allocate(
    net: Arc<dyn Net>,
    demux: &Arc<Demux>,
    turn: &TurnConfig,
) -> Result<Allocation> {
    let control = demux.attach_relay(turn.server);
    let client = Arc::new(Client {
        net,
        socket: demux.inner(),
        config: turn.clone(),
        control: tokio::sync::Mutex::new(control),
        auth: Mutex::new(None),
    });
    let attrs = [
        Attribute::RequestedTransport(RequestedTransport::new(UDP)),
        Attribute::Lifetime(Lifetime::new(DEFAULT_LIFETIME).unwrap_or(Lifetime::from_u32(600))),
    ];
    let response = client.transact(ALLOCATE, &attrs).await?;
    let relayed = response
        .get_attribute::<XorRelayAddress>()
        .map(|a| a.address())
        .ok_or_else(|| Error::from(Violation::NoRelayedAddress))?;
    let mapped = response
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address());
    let lifetime = response
        .get_attribute::<Lifetime>()
        .map(|l| l.lifetime())
        .unwrap_or(DEFAULT_LIFETIME);
    Ok(Allocation {
        client,
        relayed,
        mapped,
        lifetime,
        permitted: Mutex::new(BTreeSet::new()),
    })
}

impl Allocation {
    /// The relayed transport address: what peers send to.
    pub fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    /// Our address as the TURN server saw it (its XOR-MAPPED-ADDRESS), if it said.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.client.config.server
    }

    /// The lifetime the server granted.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Installs (or refreshes) permissions for `peers` (RFC 8656 §9: by IP address; the
    /// port does not matter).
    pub async fn permit(&self, peers: &[IpAddr]) -> Result<()> {
        let mut ips: Vec<IpAddr> = peers.to_vec();
        ips.sort();
        ips.dedup();
        ips.retain(|ip| ip.is_ipv4() == self.relayed.is_ipv4());
        if ips.is_empty() {
            return Ok(());
        }
        let attrs: Vec<Attribute> = ips
            .iter()
            .map(|ip| Attribute::XorPeerAddress(XorPeerAddress::new(SocketAddr::new(*ip, 0))))
            .collect();
        self.client.transact(CREATE_PERMISSION, &attrs).await?;
        crate::util::lock(&self.permitted).extend(ips);
        Ok(())
    }

    /// Keeps the allocation for as long as `demux` lives: refreshes it, its permissions and
    /// its channels before they expire, and binds a channel for every peer the demultiplexer
    /// routes through the relay. When `demux` is dropped the allocation is released.
    pub fn keep(self, demux: &Arc<Demux>) {
        let weak = Arc::downgrade(demux);
        let task = tokio::spawn(maintain(self, weak));
        demux.set_relay_task(task);
    }
}

/// Releases the allocation when the maintenance task ends (it is aborted with the socket).
struct Release(Arc<Client>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

async fn maintain(alloc: Allocation, demux: Weak<Demux>) {
    let _release = Release(alloc.client.clone());
    let wanted = match demux.upgrade() {
        Some(d) => d.relay_wanted(),
        None => return,
    };
    let refresh_every = alloc
        .lifetime
        .saturating_sub(Duration::from_secs(60))
        .max(Duration::from_secs(30));
    let mut next_refresh = Instant::now() + refresh_every;
    let mut next_permissions = Instant::now() + PERMISSION_LIFETIME - Duration::from_secs(60);
    let mut channels: BTreeMap<SocketAddr, (u16, Instant)> = BTreeMap::new();
    let mut next_channel = ChannelNumber::MIN;
    loop {
        let channel_due = channels
            .values()
            .map(|(_, t)| *t)
            .min()
            .unwrap_or(next_refresh);
        let wake = next_refresh.min(next_permissions).min(channel_due);
        tokio::select! {
            biased;
            _ = wanted.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let Some(d) = demux.upgrade() else { return };
        let now = Instant::now();
        if now >= next_refresh {
            let attrs = [Attribute::Lifetime(
                Lifetime::new(alloc.lifetime).unwrap_or(Lifetime::from_u32(600)),
            )];
            if let Err(e) = alloc.client.transact(REFRESH, &attrs).await {
                tracing::warn!("refreshing the TURN allocation: {e}");
            }
            next_refresh = now + refresh_every;
        }
        if now >= next_permissions {
            let ips: Vec<IpAddr> = crate::util::lock(&alloc.permitted)
                .iter()
                .copied()
                .collect();
            if let Err(e) = alloc.permit(&ips).await {
                tracing::warn!("refreshing TURN permissions: {e}");
            }
            next_permissions = now + PERMISSION_LIFETIME - Duration::from_secs(60);
        }
        // New peers to bind, and bindings to refresh.
        let mut bind: Vec<(SocketAddr, u16)> = Vec::new();
        for peer in d.relay_unbound() {
            if !channels.contains_key(&peer) && next_channel <= ChannelNumber::MAX {
                bind.push((peer, next_channel));
                next_channel += 1;
            }
        }
        for (peer, (ch, due)) in &channels {
            if *due <= now {
                bind.push((*peer, *ch));
            }
        }
        drop(d);
        for (peer, ch) in bind {
            if let Some(d) = demux.upgrade() {
                // Accept the server's ChannelData for it from now on.
                d.relay_channel_incoming(ch, peer);
            }
            let attrs = [
                Attribute::ChannelNumber(match ChannelNumber::new(ch) {
                    Ok(c) => c,
                    Err(_) => continue,
                }),
                Attribute::XorPeerAddress(XorPeerAddress::new(peer)),
            ];
            // A permission for the peer comes with the binding.
            crate::util::lock(&alloc.permitted).insert(peer.ip());
            match alloc.client.transact(CHANNEL_BIND, &attrs).await {
                Ok(_) => {
                    if let Some(d) = demux.upgrade() {
                        d.relay_channel_bound(peer, ch);
                    }
                    channels.insert(
                        peer,
                        (
                            ch,
                            Instant::now() + CHANNEL_LIFETIME - Duration::from_secs(60),
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!("binding TURN channel {ch:#x} to {peer}: {e}");
                    channels.insert(peer, (ch, Instant::now() + Duration::from_secs(5)));
                }
            }
        }
    }
}
