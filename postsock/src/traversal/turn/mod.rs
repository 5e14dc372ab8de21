//! TURN (RFC 8656) over UDP: a relay for peers whose NATs defeat hole punching.
//!
//! - [`allocate`] is the client: from a [`Demux`]'s socket (the one QUIC uses) it asks a TURN
//!   server for an allocation with long-term credentials (the 401 / REALM / NONCE exchange,
//!   MESSAGE-INTEGRITY on every request, 438 Stale Nonce handled), installs permissions for
//!   the peer's addresses, and hands the [`Demux`] the relay so that traffic to a relayed peer
//!   is wrapped (ChannelData once a channel is bound, Send indications before) and traffic
//!   from the relay is unwrapped (ChannelData, Data indications) before QUIC or the
//!   connectivity checks see it. [`Allocation::keep`] refreshes the allocation, permissions
//!   and channels, binds a channel for every peer QUIC reaches through the relay, and frees
//!   the allocation (Refresh with LIFETIME 0) when the socket goes away. It works against
//!   coturn (tested) and against [`TurnServer`].
//! - [`TurnServer`] is the same subset served: Allocate (UDP only), Refresh,
//!   CreatePermission, ChannelBind, Send/Data indications and ChannelData, Binding (so it is
//!   a STUN server too), long-term credentials. It is what the simulator's relay host runs
//!   and what `postsock turn-server` runs. Malformed, unauthenticated and unpermitted
//!   datagrams are dropped and counted; nothing reaches a peer without a permission.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use bytes::Bytes;
use stun_codec::define_attribute_enums;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm, Software,
    UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, Lifetime, RequestedTransport, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::net::{AsyncUdpSocket, Net};
use crate::traversal::stun::{self, Demux, Via};
use crate::{Error, Result};

define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        Fingerprint,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport,
        DontFragment
    ]
);

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

/// The protocol number of UDP in REQUESTED-TRANSPORT.
const UDP: u8 = 17;
/// How long a permission lasts (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// The allocation lifetime asked for and granted by default (RFC 8656 §3.2).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The longest allocation lifetime [`TurnServer`] grants.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

fn encode(message: Message<Attribute>) -> Vec<u8> {
    // Encoding a message built from valid attributes cannot fail.
    MessageEncoder::new()
        .encode_into_bytes(message)
        .unwrap_or_default()
}

/// Largest TURN message accepted: Send and Data indications carry whole datagrams (QUIC's
/// are 1200 bytes and up), so the limit is a full-sized Ethernet datagram, not STUN's 548.
pub const MAX_MESSAGE: usize = 1500;

/// Decodes a STUN/TURN message; `None` if it is not one (or is larger than [`MAX_MESSAGE`]).
pub fn decode(datagram: &[u8]) -> Option<Message<Attribute>> {
    if datagram.len() > MAX_MESSAGE || !stun::is_stun(datagram) {
        return None;
    }
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()
}

/// Whether `datagram` starts like ChannelData (RFC 7983: first byte 64 to 79).
pub fn is_channel_data(datagram: &[u8]) -> bool {
    datagram.len() >= 4 && (0x40..=0x4F).contains(&datagram[0])
}

/// ChannelData (RFC 8656 §12.4): channel number, length, the data.
pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The channel number and the data of a ChannelData message; `None` if it is malformed (a
/// number outside 0x4000–0x4FFF, or a length beyond the datagram).
pub fn parse_channel_data(datagram: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(datagram) {
        return None;
    }
    let channel = u16::from_be_bytes([datagram[0], datagram[1]]);
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if !(ChannelNumber::MIN..=ChannelNumber::MAX).contains(&channel) {
        return None;
    }
    datagram.get(4..4 + len).map(|d| (channel, d))
}

/// A Send (client → server) or Data (server → client) indication carrying `data` for `peer`.
pub fn indication(method: Method, txid: [u8; 12], peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::new(MessageClass::Indication, method, TransactionId::new(txid));
    m.add_attribute(XorPeerAddress::new(peer));
    if let Ok(d) = Data::new(data.to_vec()) {
        m.add_attribute(d);
    }
    encode(m)
}

/// A Send indication: what a client sends the server to relay `data` to `peer`.
pub fn send_indication(txid: [u8; 12], peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    indication(SEND, txid, peer, data)
}

/// What a datagram from our TURN server is.
#[derive(Debug)]
pub(crate) enum FromServer {
    /// Relayed data from a peer.
    Peer(SocketAddr, Vec<u8>),
    /// A response (or anything else STUN) for the TURN client.
    Control,
    /// Nothing usable (unknown channel, malformed).
    Drop,
}

/// Classifies a datagram that came from the TURN server; `incoming` maps the channel
/// numbers the server may use to their peers.
pub(crate) fn from_server(datagram: &[u8], incoming: &BTreeMap<u16, SocketAddr>) -> FromServer {
    if is_channel_data(datagram) {
        return match parse_channel_data(datagram) {
            Some((ch, data)) => match incoming.get(&ch) {
                Some(peer) => FromServer::Peer(*peer, data.to_vec()),
                None => FromServer::Drop,
            },
            None => FromServer::Drop,
        };
    }
    match decode(datagram) {
        Some(m) if m.class() == MessageClass::Indication && m.method() == DATA => {
            let peer = m.get_attribute::<XorPeerAddress>().map(|a| a.address());
            let data = m.get_attribute::<Data>().map(|d| d.data().to_vec());
            match (peer, data) {
                (Some(p), Some(d)) => FromServer::Peer(p, d),
                _ => FromServer::Drop,
            }
        }
        Some(_) => FromServer::Control,
        None => FromServer::Drop,
    }
}

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
    fn build(&self, method: Method, txid: [u8; 12], attrs: &[Attribute]) -> Vec<u8> {
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
        encode(m)
    }

    /// One request/response transaction (RFC 8489 §6.2.1 timing, shortened), with the
    /// 401 and 438 retries of the long-term credential mechanism.
    async fn transact(&self, method: Method, attrs: &[Attribute]) -> Result<Message<Attribute>> {
        let mut control = self.control.lock().await;
        let server = self.config.server;
        for _attempt in 0..3 {
            let txid = stun::transaction_id(self.net.as_ref());
            let request = self.build(method, txid, attrs);
            let Some(response) = self.exchange(&mut control, &request, txid).await? else {
                return Err(Error::Connection(format!(
                    "no answer from the TURN server {server} to {}",
                    method_name(method)
                )));
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
                            return Err(Error::Protocol(format!(
                                "the TURN server {server}'s answer to {} failed its integrity \
                                 check",
                                method_name(method)
                            )));
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
                                .map_err(|e| Error::Config(format!("TURN user name: {e}")))?;
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
                            return Err(Error::Connection(format!(
                                "the TURN server {server} refused {}: {}",
                                method_name(method),
                                text_error(&response)
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        Err(Error::Connection(format!(
            "the TURN server {server} kept refusing {} (wrong credentials?)",
            method_name(method)
        )))
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
        let request = self.build(REFRESH, txid, &[Attribute::Lifetime(Lifetime::from_u32(0))]);
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
        .ok_or_else(|| {
            Error::Protocol("the TURN server's Allocate answer has no relayed address".into())
        })?;
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
        crate::util::lock(&self.permitted)
            .extend(ips);
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
            crate::util::lock(&alloc.permitted)
                .insert(peer.ip());
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

/// What a [`TurnServer`] did.
#[derive(Debug, Default)]
pub struct TurnStats {
    allocations: AtomicU64,
    channels: AtomicU64,
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    malformed: AtomicU64,
    unauthenticated: AtomicU64,
    unpermitted: AtomicU64,
    refused: AtomicU64,
}

impl TurnStats {
    /// Allocations granted so far.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }
    /// Channels bound (or refreshed) so far.
    pub fn channels(&self) -> u64 {
        self.channels.load(Ordering::Relaxed)
    }
    /// Datagrams relayed from clients to peers.
    pub fn relayed_out(&self) -> u64 {
        self.relayed_out.load(Ordering::Relaxed)
    }
    /// Datagrams relayed from peers to clients.
    pub fn relayed_in(&self) -> u64 {
        self.relayed_in.load(Ordering::Relaxed)
    }
    /// Dropped: not STUN, not ChannelData, truncated, oversized, unknown method or class.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
    /// Requests refused for missing or wrong credentials, or a stale nonce.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }
    /// Datagrams dropped for want of a permission, allocation or channel.
    pub fn unpermitted(&self) -> u64 {
        self.unpermitted.load(Ordering::Relaxed)
    }
    /// Authenticated requests refused (bad request, mismatch, quota).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How a [`TurnServer`] is set up.
#[derive(Debug, Clone)]
pub struct TurnServerConfig {
    /// The realm of the long-term credentials.
    pub realm: String,
    /// User name → password.
    pub users: BTreeMap<String, String>,
    /// The address relayed addresses are allocated on (required when listening on the
    /// unspecified address).
    pub relay_ip: Option<IpAddr>,
    /// Most allocations at once.
    pub max_allocations: usize,
}

impl TurnServerConfig {
    /// One user, realm `postsock`, 64 allocations.
    pub fn new(username: &str, password: &str) -> Self {
        TurnServerConfig {
            realm: "postsock".into(),
            users: [(username.to_string(), password.to_string())].into(),
            relay_ip: None,
            max_allocations: 64,
        }
    }
}

/// A TURN server (UDP; see the module documentation for what it serves).
pub type TurnServer = crate::traversal::stun::Served<TurnStats>;

impl TurnServer {
    /// Binds at `local` through `net` and starts serving.
    pub async fn bind(
        net: Arc<dyn Net>,
        local: SocketAddr,
        config: TurnServerConfig,
    ) -> Result<Self> {
        let relay_ip = match (config.relay_ip, local.ip().is_unspecified()) {
            (Some(ip), _) => ip,
            (None, false) => local.ip(),
            (None, true) => {
                return Err(Error::Config(
                    "a TURN server listening on the unspecified address needs a relay address"
                        .into(),
                ))
            }
        };
        if config.users.is_empty() {
            return Err(Error::Config(
                "a TURN server needs at least one user".into(),
            ));
        }
        let (socket, local) = stun::bind_server_socket(net.as_ref(), local).await?;
        let stats = Arc::new(TurnStats::default());
        let nonce = crate::traversal::rendezvous::hex(&stun::transaction_id(net.as_ref()));
        let server = Server {
            net,
            socket,
            config,
            relay_ip,
            nonce,
            stats: stats.clone(),
            allocations: BTreeMap::new(),
            by_relay: BTreeMap::new(),
        };
        let task = tokio::spawn(server.serve());
        Ok(crate::traversal::stun::Served::new(local, stats, task))
    }
}

struct ServerAllocation {
    username: String,
    socket: Arc<dyn AsyncUdpSocket>,
    relayed: SocketAddr,
    expires: Instant,
    permissions: BTreeMap<IpAddr, Instant>,
    /// Channel number → (peer, expiry).
    channels: BTreeMap<u16, (SocketAddr, Instant)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for ServerAllocation {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ServerAllocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, (p, t))| *p == peer && *t > now)
            .map(|(ch, _)| *ch)
    }
}

struct Server {
    net: Arc<dyn Net>,
    socket: Arc<dyn AsyncUdpSocket>,
    config: TurnServerConfig,
    relay_ip: IpAddr,
    nonce: String,
    stats: Arc<TurnStats>,
    /// Client address (the 5-tuple, as the server has one socket) → its allocation.
    allocations: BTreeMap<SocketAddr, ServerAllocation>,
    /// Relayed address → client address.
    by_relay: BTreeMap<SocketAddr, SocketAddr>,
}

/// A datagram a peer sent to a relayed address.
struct FromPeer {
    relayed: SocketAddr,
    peer: SocketAddr,
    data: Bytes,
}

impl Server {
    async fn serve(mut self) {
        let (peer_tx, mut peer_rx) = mpsc::unbounded_channel::<FromPeer>();
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                biased;
                got = stun::recv_from(self.socket.as_ref()) => {
                    let Ok((from, data)) = got else { return };
                    self.on_client(from, &data, &peer_tx).await;
                }
                Some(p) = peer_rx.recv() => self.on_peer(p).await,
                _ = crate::util::until_opt(expiry) => self.expire(),
            }
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                std::iter::once(a.expires)
                    .chain(a.permissions.values().copied())
                    .chain(a.channels.values().map(|(_, t)| *t))
            })
            .min()
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in gone {
            if let Some(a) = self.allocations.remove(&c) {
                self.by_relay.remove(&a.relayed);
            }
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, (_, t)| *t > now);
        }
    }

    async fn send(&self, to: SocketAddr, data: &[u8]) {
        let _ = stun::send_to(self.socket.as_ref(), to, data).await;
    }

    async fn on_peer(&mut self, p: FromPeer) {
        let now = Instant::now();
        let Some(client) = self.by_relay.get(&p.relayed).copied() else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        if !a.permitted(p.peer.ip(), now) {
            self.stats.unpermitted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let out = match a.channel_of(p.peer, now) {
            Some(ch) => channel_data(ch, &p.data),
            None => {
                let txid = stun::transaction_id(self.net.as_ref());
                indication(DATA, txid, p.peer, &p.data)
            }
        };
        self.stats.relayed_in.fetch_add(1, Ordering::Relaxed);
        self.send(client, &out).await;
    }

    async fn on_client(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        peers: &mpsc::UnboundedSender<FromPeer>,
    ) {
        let now = Instant::now();
        if is_channel_data(data) {
            let relayed = parse_channel_data(data).and_then(|(ch, payload)| {
                let a = self.allocations.get(&from)?;
                let (peer, t) = a.channels.get(&ch)?;
                (*t > now && a.permitted(peer.ip(), now))
                    .then(|| (a.socket.clone(), *peer, payload.to_vec()))
            });
            match relayed {
                Some((socket, peer, payload)) => {
                    self.stats.relayed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = stun::send_to(socket.as_ref(), peer, &payload).await;
                }
                None if parse_channel_data(data).is_none() => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.stats.unpermitted.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let Some(m) = decode(data) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match (m.class(), m.method()) {
            // A Binding request: answered as the STUN server answers it.
            (MessageClass::Request, BINDING) => match stun::answer(data, from) {
                Some(reply) => self.send(from, &reply).await,
                None => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            },
            (MessageClass::Indication, SEND) => {
                let peer = m.get_attribute::<XorPeerAddress>().map(|a| a.address());
                let payload = m.get_attribute::<Data>().map(|d| d.data().to_vec());
                let (Some(peer), Some(payload)) = (peer, payload) else {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                match self.allocations.get(&from) {
                    Some(a) if a.permitted(peer.ip(), now) => {
                        self.stats.relayed_out.fetch_add(1, Ordering::Relaxed);
                        let socket = a.socket.clone();
                        let _ = stun::send_to(socket.as_ref(), peer, &payload).await;
                    }
                    _ => {
                        self.stats.unpermitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (MessageClass::Request, ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND) => {
                let Some(user) = self.authenticate(&m, from).await else {
                    return;
                };
                let reply = match self.request(&m, from, &user, peers).await {
                    Ok(attrs) => {
                        let mut r = Message::new(
                            MessageClass::SuccessResponse,
                            m.method(),
                            m.transaction_id(),
                        );
                        for a in attrs {
                            r.add_attribute(a);
                        }
                        r
                    }
                    Err((code, reason)) => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        let mut r = Message::new(
                            MessageClass::ErrorResponse,
                            m.method(),
                            m.transaction_id(),
                        );
                        if let Ok(e) = ErrorCode::new(code, reason.into()) {
                            r.add_attribute(e);
                        }
                        r
                    }
                };
                self.send(from, &self.sign(reply, &user)).await;
            }
            _ => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds MESSAGE-INTEGRITY for `user` (who has authenticated).
    fn sign(&self, mut reply: Message<Attribute>, user: &str) -> Vec<u8> {
        let password = self.config.users.get(user).cloned().unwrap_or_default();
        if let (Ok(u), Ok(r)) = (
            Username::new(user.to_string()),
            Realm::new(self.config.realm.clone()),
        ) {
            if let Ok(mi) = MessageIntegrity::new_long_term_credential(&reply, &u, &r, &password) {
                reply.add_attribute(mi);
            }
        }
        encode(reply)
    }

    /// Checks the long-term credentials of request `m`; answers 401 or 438 and returns
    /// `None` when they do not hold.
    async fn authenticate(&self, m: &Message<Attribute>, from: SocketAddr) -> Option<String> {
        let username = m.get_attribute::<Username>();
        let realm = m.get_attribute::<Realm>();
        let nonce = m.get_attribute::<Nonce>();
        let integrity = m.get_attribute::<MessageIntegrity>();
        let challenge = |code: u16, reason: &str| {
            let mut r = Message::<Attribute>::new(
                MessageClass::ErrorResponse,
                m.method(),
                m.transaction_id(),
            );
            if let Ok(e) = ErrorCode::new(code, reason.into()) {
                r.add_attribute(e);
            }
            if let Ok(realm) = Realm::new(self.config.realm.clone()) {
                r.add_attribute(realm);
            }
            if let Ok(n) = Nonce::new(self.nonce.clone()) {
                r.add_attribute(n);
            }
            encode(r)
        };
        let (Some(username), Some(realm), Some(nonce), Some(integrity)) =
            (username, realm, nonce, integrity)
        else {
            // The first request of the exchange: no credentials yet. Not an attack, but not
            // served either.
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
            self.send(from, &challenge(401, "Unauthorized")).await;
            return None;
        };
        let ok = realm.text() == self.config.realm
            && self
                .config
                .users
                .get(username.name())
                .is_some_and(|password| {
                    integrity
                        .check_long_term_credential(username, realm, password)
                        .is_ok()
                });
        if !ok {
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
            self.send(from, &challenge(401, "Unauthorized")).await;
            return None;
        }
        if nonce.value() != self.nonce {
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
            self.send(from, &challenge(438, "Stale Nonce")).await;
            return None;
        }
        Some(username.name().to_string())
    }

    /// Serves an authenticated request: the success response's attributes, or an error.
    async fn request(
        &mut self,
        m: &Message<Attribute>,
        from: SocketAddr,
        user: &str,
        peers: &mpsc::UnboundedSender<FromPeer>,
    ) -> std::result::Result<Vec<Attribute>, (u16, &'static str)> {
        let now = Instant::now();
        let lifetime = |m: &Message<Attribute>| {
            m.get_attribute::<Lifetime>()
                .map(|l| l.lifetime())
                .unwrap_or(DEFAULT_LIFETIME)
                .min(MAX_LIFETIME)
        };
        if m.method() == ALLOCATE {
            if let Some(a) = self.allocations.get(&from) {
                // RFC 8656 §7.2: an allocation exists for this 5-tuple. (A retransmitted
                // request would be answered again; ours are not kept, so it is a mismatch.)
                let _ = a;
                return Err((437, "Allocation Mismatch"));
            }
            match m.get_attribute::<RequestedTransport>() {
                Some(t) if t.protocol() == UDP => {}
                Some(_) => return Err((442, "Unsupported Transport Protocol")),
                None => return Err((400, "Bad Request")),
            }
            if self.allocations.len() >= self.config.max_allocations {
                return Err((486, "Allocation Quota Reached"));
            }
            let socket = self
                .net
                .bind_udp(SocketAddr::new(self.relay_ip, 0))
                .await
                .map_err(|_| (508, "Insufficient Capacity"))?;
            let relayed = socket
                .local_addr()
                .map_err(|_| (508, "Insufficient Capacity"))?;
            let reader = {
                let (socket, peers) = (socket.clone(), peers.clone());
                tokio::spawn(async move {
                    while let Ok((peer, data)) = stun::recv_from(socket.as_ref()).await {
                        if peers
                            .send(FromPeer {
                                relayed,
                                peer,
                                data,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            };
            let life = lifetime(m);
            self.allocations.insert(
                from,
                ServerAllocation {
                    username: user.to_string(),
                    socket,
                    relayed,
                    expires: now + life,
                    permissions: BTreeMap::new(),
                    channels: BTreeMap::new(),
                    reader,
                },
            );
            self.by_relay.insert(relayed, from);
            self.stats.allocations.fetch_add(1, Ordering::Relaxed);
            return Ok(vec![
                Attribute::XorRelayAddress(XorRelayAddress::new(relayed)),
                Attribute::Lifetime(Lifetime::new(life).map_err(|_| (500, "Server Error"))?),
                Attribute::XorMappedAddress(XorMappedAddress::new(from)),
            ]);
        }
        let Some(a) = self.allocations.get_mut(&from) else {
            return Err((437, "Allocation Mismatch"));
        };
        if a.username != user {
            return Err((441, "Wrong Credentials"));
        }
        match m.method() {
            REFRESH => {
                let life = lifetime(m);
                if life.is_zero() {
                    if let Some(a) = self.allocations.remove(&from) {
                        self.by_relay.remove(&a.relayed);
                    }
                } else {
                    a.expires = now + life;
                }
                Ok(vec![Attribute::Lifetime(
                    Lifetime::new(life).map_err(|_| (500, "Server Error"))?,
                )])
            }
            CREATE_PERMISSION => {
                let ips: Vec<IpAddr> = m
                    .attributes()
                    .filter_map(|a| match a {
                        Attribute::XorPeerAddress(p) => Some(p.address().ip()),
                        _ => None,
                    })
                    .collect();
                if ips.is_empty() {
                    return Err((400, "Bad Request"));
                }
                for ip in ips {
                    a.permissions.insert(ip, now + PERMISSION_LIFETIME);
                }
                Ok(vec![])
            }
            CHANNEL_BIND => {
                let ch = m.get_attribute::<ChannelNumber>().map(|c| c.value());
                let peer = m.get_attribute::<XorPeerAddress>().map(|p| p.address());
                let (Some(ch), Some(peer)) = (ch, peer) else {
                    return Err((400, "Bad Request"));
                };
                // The channel must be free or bound to this peer, and the peer bound to no
                // other channel (RFC 8656 §12.2).
                let clash = a
                    .channels
                    .iter()
                    .any(|(c, (p, _))| (*c == ch) != (*p == peer));
                if clash || !(ChannelNumber::MIN..=ChannelNumber::MAX).contains(&ch) {
                    return Err((400, "Bad Request"));
                }
                a.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
                a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
                self.stats.channels.fetch_add(1, Ordering::Relaxed);
                Ok(vec![])
            }
            _ => Err((400, "Bad Request")),
        }
    }
}

/// Routing decisions of a [`Demux`] with a relay attached.
#[derive(Debug, Default)]
pub(crate) struct RelayRoutes {
    pub(crate) server: Option<SocketAddr>,
    /// Bound channels usable for sending: peer → number.
    pub(crate) channels: BTreeMap<SocketAddr, u16>,
    /// Channel numbers the server may use towards us: number → peer.
    pub(crate) incoming: BTreeMap<u16, SocketAddr>,
    /// How QUIC reaches a peer: the way its last QUIC packet came, or as set.
    pub(crate) routes: BTreeMap<SocketAddr, Via>,
    /// Peers QUIC knows by an address they no longer have (a restart found them
    /// elsewhere): QUIC's address → the real one.
    pub(crate) aliases: BTreeMap<SocketAddr, SocketAddr>,
}

impl RelayRoutes {
    /// `data` for `peer` as it goes to the server: ChannelData on a bound channel, else a
    /// Send indication.
    pub(crate) fn wrap(
        &self,
        txid: [u8; 12],
        peer: SocketAddr,
        data: &[u8],
    ) -> io::Result<(SocketAddr, Vec<u8>)> {
        let server = self
            .server
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no TURN relay"))?;
        let out = match self.channels.get(&peer) {
            Some(ch) => channel_data(*ch, data),
            None => send_indication(txid, peer, data),
        };
        Ok((server, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "198.51.100.7:4242".parse().expect("addr")
    }

    #[test]
    fn channel_data_round_trips_and_malformed_is_refused() {
        let wire = channel_data(0x4001, b"quic bytes");
        assert_eq!(
            parse_channel_data(&wire),
            Some((0x4001, &b"quic bytes"[..]))
        );
        // Padding after the data (RFC 8656 §12.5 over TCP) is ignored.
        let padded = [wire.clone(), vec![0, 0]].concat();
        assert_eq!(
            parse_channel_data(&padded),
            Some((0x4001, &b"quic bytes"[..]))
        );
        let mut long = wire.clone();
        long[3] += 1;
        assert_eq!(
            parse_channel_data(&long),
            None,
            "length beyond the datagram"
        );
        assert_eq!(parse_channel_data(&wire[..3]), None, "truncated header");
        assert_eq!(
            parse_channel_data(b"\x00\x01\x00\x00"),
            None,
            "not ChannelData"
        );
    }

    #[test]
    fn what_the_server_sends_is_unwrapped_or_dropped_never_misread() {
        let incoming = BTreeMap::from([(0x4000, peer())]);
        // ChannelData on a bound channel, and a Data indication: the peer's datagram.
        match from_server(&channel_data(0x4000, b"hi"), &incoming) {
            FromServer::Peer(p, d) => assert_eq!((p, d.as_slice()), (peer(), &b"hi"[..])),
            other => panic!("{other:?}"),
        }
        match from_server(&indication(DATA, [1; 12], peer(), b"yo"), &incoming) {
            FromServer::Peer(p, d) => assert_eq!((p, d.as_slice()), (peer(), &b"yo"[..])),
            other => panic!("{other:?}"),
        }
        // A response is for the TURN client.
        let mut response = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            ALLOCATE,
            TransactionId::new([2; 12]),
        );
        response.add_attribute(Lifetime::from_u32(600));
        assert!(matches!(
            from_server(&encode(response), &incoming),
            FromServer::Control
        ));
        // Dropped: an unbound channel, truncated ChannelData, a Data indication without its
        // data or peer, garbage, an oversized message.
        let no_data = {
            let mut m = Message::<Attribute>::new(
                MessageClass::Indication,
                DATA,
                TransactionId::new([3; 12]),
            );
            m.add_attribute(XorPeerAddress::new(peer()));
            encode(m)
        };
        let no_peer = {
            let mut m = Message::<Attribute>::new(
                MessageClass::Indication,
                DATA,
                TransactionId::new([4; 12]),
            );
            m.add_attribute(Data::new(b"x".to_vec()).expect("data"));
            encode(m)
        };
        let oversized = indication(DATA, [5; 12], peer(), &[7u8; 1600]);
        for (what, bytes) in [
            ("unbound channel", channel_data(0x4abc, b"hi")),
            (
                "truncated ChannelData",
                channel_data(0x4000, b"hi")[..5].to_vec(),
            ),
            ("Data without DATA", no_data),
            ("Data without a peer", no_peer),
            ("garbage", vec![0x02; 40]),
            ("oversized", oversized),
        ] {
            assert!(
                matches!(from_server(&bytes, &incoming), FromServer::Drop),
                "{what}"
            );
        }
    }
}
