//! The TURN server's decisions, without I/O: [`Handler`] holds the allocations (their
//! permissions, channels and lifetimes), checks long-term credentials and answers requests.
//! Every input carries `now`; every output is an [`Action`] for the driver
//! ([`TurnServer`](super::TurnServer)(super::TurnServer)) to carry out on its sockets. The unit tests below
//! drive it with hand-made datagrams.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stun_codec::rfc5389::attributes::{MessageIntegrity, Nonce, Realm, Username, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::rfc8656::attributes::{AddressFamily, RequestedAddressFamily};
use stun_codec::{Message, MessageClass, Method, TransactionId};
use tokio::time::Instant;

use super::{CHANNEL_LIFETIME, DEFAULT_LIFETIME, MAX_LIFETIME, PERMISSION_LIFETIME};
use crate::traversal::codec::turn::{
    channel_data, decode_or_broken, encode, indication, is_channel_data, parse_channel_data,
    Attribute, UDP,
};
use crate::traversal::codec::{error_message, unknown_required};
use crate::traversal::stun;

/// What a [`TurnServer`](super::TurnServer) did.
#[derive(Debug, Default)]
pub struct TurnStats {
    pub(super) allocations: AtomicU64,
    pub(super) channels: AtomicU64,
    pub(super) relayed_out: AtomicU64,
    pub(super) relayed_in: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) unauthenticated: AtomicU64,
    pub(super) unpermitted: AtomicU64,
    pub(super) refused: AtomicU64,
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

/// How a [`TurnServer`](super::TurnServer) is set up.
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

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send `data` to the client at `to` from the server's socket.
    Reply { to: SocketAddr, data: Vec<u8> },
    /// Send `data` to `peer` from the relay socket of the allocation at `relayed`.
    Relay {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Bind a relay socket for an allocation, then call [`Handler::allocated`].
    BindRelay(PendingAllocation),
    /// The allocation at `relayed` is gone: close its relay socket.
    Release { relayed: SocketAddr },
}

/// An Allocate request that passed every check and waits for its relay socket.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PendingAllocation {
    client: SocketAddr,
    user: String,
    transaction: TransactionId,
    lifetime: Duration,
    /// EVEN-PORT asked for an even relayed port (RFC 8656 §7.2).
    pub(super) even_port: bool,
}

/// One allocation's state.
#[derive(Debug)]
struct Allocation {
    username: String,
    relayed: SocketAddr,
    expires: Instant,
    permissions: BTreeMap<IpAddr, Instant>,
    /// Channel number → (peer, expiry).
    channels: BTreeMap<u16, (SocketAddr, Instant)>,
}

impl Allocation {
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

type Refusal = (u16, &'static str);

/// The TURN server's state (see the [module docs](self)).
#[derive(Debug)]
pub(super) struct Handler {
    config: TurnServerConfig,
    nonce: String,
    stats: Arc<TurnStats>,
    /// Client address (the 5-tuple, as the server has one socket) → its allocation.
    allocations: BTreeMap<SocketAddr, Allocation>,
    /// Relayed address → client address.
    by_relay: BTreeMap<SocketAddr, SocketAddr>,
}

fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Handler {
    pub(super) fn new(config: TurnServerConfig, nonce: String, stats: Arc<TurnStats>) -> Self {
        Handler {
            config,
            nonce,
            stats,
            allocations: BTreeMap::new(),
            by_relay: BTreeMap::new(),
        }
    }

    /// When the next allocation, permission or channel expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                std::iter::once(a.expires)
                    .chain(a.permissions.values().copied())
                    .chain(a.channels.values().map(|(_, t)| *t))
            })
            .min()
    }

    /// Forgets what expired by `now`; releases the relays of expired allocations.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Action> {
        let gone: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        let mut out = Vec::new();
        for c in gone {
            if let Some(relayed) = self.remove(&c) {
                out.push(Action::Release { relayed });
            }
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, (_, t)| *t > now);
        }
        out
    }

    fn remove(&mut self, client: &SocketAddr) -> Option<SocketAddr> {
        let a = self.allocations.remove(client)?;
        self.by_relay.remove(&a.relayed);
        Some(a.relayed)
    }

    /// A peer sent `data` to the relayed address `relayed`: to the client as ChannelData on
    /// its channel, else in a Data indication with a transaction id from `txid`.
    pub(super) fn on_peer(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        txid: impl FnOnce() -> [u8; 12],
    ) -> Option<Action> {
        let client = self.by_relay.get(&relayed).copied()?;
        let a = self.allocations.get(&client)?;
        if !a.permitted(peer.ip(), now) {
            count(&self.stats.unpermitted);
            return None;
        }
        let out = match a.channel_of(peer, now) {
            Some(ch) => channel_data(ch, data),
            None => indication(DATA, txid(), peer, data)?,
        };
        count(&self.stats.relayed_in);
        Some(Action::Reply {
            to: client,
            data: out,
        })
    }

    /// A datagram from the client at `from`.
    pub(super) fn on_client(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Vec<Action> {
        if is_channel_data(data) {
            let relayed = parse_channel_data(data).and_then(|(ch, payload)| {
                let a = self.allocations.get(&from)?;
                let (peer, t) = a.channels.get(&ch)?;
                (*t > now && a.permitted(peer.ip(), now)).then(|| Action::Relay {
                    relayed: a.relayed,
                    peer: *peer,
                    data: payload.to_vec(),
                })
            });
            return match relayed {
                Some(relay) => {
                    count(&self.stats.relayed_out);
                    vec![relay]
                }
                None if parse_channel_data(data).is_none() => {
                    count(&self.stats.malformed);
                    vec![]
                }
                None => {
                    count(&self.stats.unpermitted);
                    vec![]
                }
            };
        }
        let m = match decode_or_broken(data) {
            Some(Ok(m)) => m,
            // A request whose attributes do not decode (a channel number outside
            // 0x4000-0x4FFF, a truncated attribute): 400, unsigned, since its integrity
            // cannot be checked (RFC 8489 §6.3.1). Anything else malformed is dropped.
            Some(Err(b)) if b.class == MessageClass::Request => {
                count(&self.stats.malformed);
                count(&self.stats.refused);
                let r = error_message(b.method, b.transaction, 400, "Bad Request", Vec::new());
                return encode(r)
                    .map(|data| Action::Reply { to: from, data })
                    .into_iter()
                    .collect();
            }
            _ => {
                count(&self.stats.malformed);
                return vec![];
            }
        };
        match (m.class(), m.method()) {
            // A Binding request: answered as the STUN server answers it.
            (MessageClass::Request, BINDING) => match stun::answer(data, from) {
                Some(reply) => vec![Action::Reply {
                    to: from,
                    data: reply,
                }],
                None => {
                    count(&self.stats.malformed);
                    vec![]
                }
            },
            (MessageClass::Indication, SEND) => {
                let peer = m.get_attribute::<XorPeerAddress>().map(|a| a.address());
                let payload = m.get_attribute::<Data>().map(|d| d.data().to_vec());
                let (Some(peer), Some(payload)) = (peer, payload) else {
                    count(&self.stats.malformed);
                    return vec![];
                };
                match self.allocations.get(&from) {
                    Some(a) if a.permitted(peer.ip(), now) => {
                        count(&self.stats.relayed_out);
                        vec![Action::Relay {
                            relayed: a.relayed,
                            peer,
                            data: payload,
                        }]
                    }
                    _ => {
                        count(&self.stats.unpermitted);
                        vec![]
                    }
                }
            }
            (MessageClass::Request, ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND) => {
                let user = match self.authenticate(&m) {
                    Ok(user) => user,
                    Err(challenge) => {
                        return challenge
                            .map(|data| Action::Reply { to: from, data })
                            .into_iter()
                            .collect()
                    }
                };
                // Authenticated: now its attributes are checked (RFC 8489 §6.3.1).
                let unknown = unknown_required(&m);
                if !unknown.is_empty() {
                    count(&self.stats.refused);
                    let (method, transaction) = (m.method(), m.transaction_id());
                    let r = error_message(method, transaction, 420, "Unknown Attribute", unknown);
                    return self
                        .sign(r, &user)
                        .map(|data| Action::Reply { to: from, data })
                        .into_iter()
                        .collect();
                }
                let mut out = Vec::new();
                let answer = self.request(now, &m, from, &user, &mut out);
                if let Some(reply) = self.respond(m.method(), m.transaction_id(), answer, &user) {
                    out.push(Action::Reply {
                        to: from,
                        data: reply,
                    });
                }
                out
            }
            _ => {
                count(&self.stats.malformed);
                vec![]
            }
        }
    }

    /// The relay socket of `pending` is bound at `relayed` (or could not be): grants the
    /// allocation and answers the request.
    pub(super) fn allocated(
        &mut self,
        now: Instant,
        pending: PendingAllocation,
        relayed: std::io::Result<SocketAddr>,
    ) -> Vec<Action> {
        let PendingAllocation {
            client,
            user,
            transaction,
            lifetime,
            ..
        } = pending;
        let answer = match relayed {
            Err(_) => Err((508, "Insufficient Capacity")),
            Ok(relayed) => {
                self.allocations.insert(
                    client,
                    Allocation {
                        username: user.clone(),
                        relayed,
                        expires: now + lifetime,
                        permissions: BTreeMap::new(),
                        channels: BTreeMap::new(),
                    },
                );
                self.by_relay.insert(relayed, client);
                count(&self.stats.allocations);
                Lifetime::new(lifetime)
                    .map(|l| {
                        Some(vec![
                            Attribute::XorRelayAddress(XorRelayAddress::new(relayed)),
                            Attribute::Lifetime(l),
                            Attribute::XorMappedAddress(XorMappedAddress::new(client)),
                        ])
                    })
                    .map_err(|_| (500, "Server Error"))
            }
        };
        self.respond(ALLOCATE, transaction, answer, &user)
            .map(|data| Action::Reply { to: client, data })
            .into_iter()
            .collect()
    }

    /// The signed success or error response to request `method`/`transaction`; `Ok(None)`:
    /// answered later.
    fn respond(
        &self,
        method: Method,
        transaction: TransactionId,
        answer: Result<Option<Vec<Attribute>>, Refusal>,
        user: &str,
    ) -> Option<Vec<u8>> {
        let reply = match answer {
            Ok(None) => return None,
            Ok(Some(attrs)) => {
                let mut r = Message::new(MessageClass::SuccessResponse, method, transaction);
                for a in attrs {
                    r.add_attribute(a);
                }
                r
            }
            Err((code, reason)) => {
                count(&self.stats.refused);
                error_message(method, transaction, code, reason, Vec::new())
            }
        };
        self.sign(reply, user)
    }

    /// Adds MESSAGE-INTEGRITY for `user` (who has authenticated).
    fn sign(&self, mut reply: Message<Attribute>, user: &str) -> Option<Vec<u8>> {
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

    fn challenge(&self, m: &Message<Attribute>, code: u16, reason: &str) -> Option<Vec<u8>> {
        let mut r = error_message(m.method(), m.transaction_id(), code, reason, Vec::new());
        if let Ok(realm) = Realm::new(self.config.realm.clone()) {
            r.add_attribute(realm);
        }
        if let Ok(n) = Nonce::new(self.nonce.clone()) {
            r.add_attribute(n);
        }
        encode(r)
    }

    /// Checks the long-term credentials of request `m`: the user, or the 401 or 438
    /// challenge to answer.
    fn authenticate(&self, m: &Message<Attribute>) -> Result<String, Option<Vec<u8>>> {
        let username = m.get_attribute::<Username>();
        let realm = m.get_attribute::<Realm>();
        let nonce = m.get_attribute::<Nonce>();
        let integrity = m.get_attribute::<MessageIntegrity>();
        let (Some(username), Some(realm), Some(nonce), Some(integrity)) =
            (username, realm, nonce, integrity)
        else {
            // The first request of the exchange: no credentials yet. Not an attack, but not
            // served either.
            count(&self.stats.unauthenticated);
            return Err(self.challenge(m, 401, "Unauthorized"));
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
            count(&self.stats.unauthenticated);
            return Err(self.challenge(m, 401, "Unauthorized"));
        }
        if nonce.value() != self.nonce {
            count(&self.stats.unauthenticated);
            return Err(self.challenge(m, 438, "Stale Nonce"));
        }
        Ok(username.name().to_string())
    }

    /// Serves an authenticated request: the success response's attributes, `None` when the
    /// answer comes later (an allocation waits for its relay socket: `out` gets the
    /// [`Action::BindRelay`]), or an error.
    fn request(
        &mut self,
        now: Instant,
        m: &Message<Attribute>,
        from: SocketAddr,
        user: &str,
        out: &mut Vec<Action>,
    ) -> Result<Option<Vec<Attribute>>, Refusal> {
        let lifetime = |m: &Message<Attribute>| {
            m.get_attribute::<Lifetime>()
                .map(|l| l.lifetime())
                .unwrap_or(DEFAULT_LIFETIME)
                .min(MAX_LIFETIME)
        };
        if m.method() == ALLOCATE {
            if self.allocations.contains_key(&from) {
                // RFC 8656 §7.2: an allocation exists for this 5-tuple. (A retransmitted
                // request would be answered again; ours are not kept, so it is a mismatch.)
                return Err((437, "Allocation Mismatch"));
            }
            match m.get_attribute::<RequestedTransport>() {
                Some(t) if t.protocol() == UDP => {}
                Some(_) => return Err((442, "Unsupported Transport Protocol")),
                None => return Err((400, "Bad Request")),
            }
            // RFC 8656 §7.2: IPv4 relays only; EVEN-PORT with RESERVATION-TOKEN is a
            // contradiction; this server keeps no reservations, so it can neither honour a
            // token nor reserve the next port (R bit).
            if m.get_attribute::<RequestedAddressFamily>()
                .is_some_and(|f| f.address_family() != AddressFamily::V4)
            {
                return Err((440, "Address Family not Supported"));
            }
            let even = m.get_attribute::<EvenPort>();
            let token = m.get_attribute::<ReservationToken>();
            if even.is_some() && token.is_some() {
                return Err((400, "Bad Request"));
            }
            if token.is_some() || even.is_some_and(|e| e.is_requested()) {
                return Err((508, "Insufficient Capacity"));
            }
            if self.allocations.len() >= self.config.max_allocations {
                return Err((486, "Allocation Quota Reached"));
            }
            out.push(Action::BindRelay(PendingAllocation {
                client: from,
                user: user.to_string(),
                transaction: m.transaction_id(),
                lifetime: lifetime(m),
                even_port: even.is_some(),
            }));
            return Ok(None);
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
                    if let Some(relayed) = self.remove(&from) {
                        out.push(Action::Release { relayed });
                    }
                } else {
                    a.expires = now + life;
                }
                let l = Lifetime::new(life).map_err(|_| (500, "Server Error"))?;
                Ok(Some(vec![Attribute::Lifetime(l)]))
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
                Ok(Some(vec![]))
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
                count(&self.stats.channels);
                Ok(Some(vec![]))
            }
            _ => Err((400, "Bad Request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traversal::codec::turn::decode;
    use stun_codec::rfc5389::attributes::{ErrorCode, UnknownAttributes};

    const CLIENT: &str = "192.0.2.10:5000";
    const PEER: &str = "198.51.100.7:4242";
    const RELAYED: &str = "203.0.113.1:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn handler() -> Handler {
        let config = TurnServerConfig::new("alice", "secret");
        Handler::new(config, "nonce-1".into(), Arc::new(TurnStats::default()))
    }

    /// A request from alice with `attrs`, signed with `password` and `nonce`.
    fn request(method: Method, attrs: Vec<Attribute>, password: &str, nonce: &str) -> Vec<u8> {
        let mut m =
            Message::<Attribute>::new(MessageClass::Request, method, TransactionId::new([9; 12]));
        for a in attrs {
            m.add_attribute(a);
        }
        let user = Username::new("alice".into()).expect("user");
        let realm = Realm::new("postsock".into()).expect("realm");
        m.add_attribute(user.clone());
        m.add_attribute(realm.clone());
        m.add_attribute(Nonce::new(nonce.into()).expect("nonce"));
        let mi =
            MessageIntegrity::new_long_term_credential(&m, &user, &realm, password).expect("mi");
        m.add_attribute(mi);
        encode(m).expect("encodes")
    }

    fn allocate() -> Vec<u8> {
        request(
            ALLOCATE,
            vec![Attribute::RequestedTransport(RequestedTransport::new(UDP))],
            "secret",
            "nonce-1",
        )
    }

    /// The class and error code of the one reply in `actions`.
    fn reply(actions: &[Action]) -> (MessageClass, Option<u16>) {
        let [Action::Reply { data, .. }] = actions else {
            panic!("one reply expected: {actions:?}");
        };
        let m = decode(data).expect("a STUN message");
        (m.class(), m.get_attribute::<ErrorCode>().map(|e| e.code()))
    }

    /// An allocation for CLIENT at RELAYED, granted at `now`.
    fn allocated(h: &mut Handler, now: Instant) {
        let mut actions = h.on_client(now, addr(CLIENT), &allocate());
        let Some(Action::BindRelay(pending)) = actions.pop() else {
            panic!("an allocation waits for its relay socket")
        };
        let done = h.allocated(now, pending, Ok(addr(RELAYED)));
        assert_eq!(reply(&done), (MessageClass::SuccessResponse, None));
    }

    #[test]
    fn unauthenticated_requests_are_challenged_and_stale_nonces_refused() {
        let mut h = handler();
        let now = Instant::now();
        let bare = {
            let mut m = Message::<Attribute>::new(
                MessageClass::Request,
                ALLOCATE,
                TransactionId::new([1; 12]),
            );
            m.add_attribute(RequestedTransport::new(UDP));
            encode(m).expect("encodes")
        };
        let challenge = h.on_client(now, addr(CLIENT), &bare);
        assert_eq!(reply(&challenge), (MessageClass::ErrorResponse, Some(401)));
        let wrong = request(ALLOCATE, vec![], "guess", "nonce-1");
        assert_eq!(reply(&h.on_client(now, addr(CLIENT), &wrong)).1, Some(401));
        let stale = request(ALLOCATE, vec![], "secret", "nonce-0");
        assert_eq!(reply(&h.on_client(now, addr(CLIENT), &stale)).1, Some(438));
        assert_eq!(h.stats.unauthenticated(), 3);
        assert_eq!(h.stats.allocations(), 0);
    }

    #[test]
    fn an_allocation_relays_only_to_permitted_peers_and_binds_channels() {
        let mut h = handler();
        let now = Instant::now();
        allocated(&mut h, now);
        // A second Allocate on the same 5-tuple is a mismatch.
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &allocate())).1,
            Some(437)
        );
        // Nothing from the peer passes before a permission.
        assert_eq!(
            h.on_peer(now, addr(RELAYED), addr(PEER), b"early", || [0; 12]),
            None
        );
        assert_eq!(h.stats.unpermitted(), 1);
        let permit = request(
            CREATE_PERMISSION,
            vec![Attribute::XorPeerAddress(XorPeerAddress::new(addr(PEER)))],
            "secret",
            "nonce-1",
        );
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &permit)).0,
            MessageClass::SuccessResponse
        );
        // Now a Data indication carries it to the client.
        let Some(Action::Reply { to, data }) =
            h.on_peer(now, addr(RELAYED), addr(PEER), b"hi", || [3; 12])
        else {
            panic!("relayed in")
        };
        assert_eq!(to, addr(CLIENT));
        assert!(!is_channel_data(&data));
        // A channel: traffic both ways as ChannelData.
        let bind = request(
            CHANNEL_BIND,
            vec![
                Attribute::ChannelNumber(ChannelNumber::new(0x4001).expect("number")),
                Attribute::XorPeerAddress(XorPeerAddress::new(addr(PEER))),
            ],
            "secret",
            "nonce-1",
        );
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &bind)).0,
            MessageClass::SuccessResponse
        );
        let Some(Action::Reply { data, .. }) =
            h.on_peer(now, addr(RELAYED), addr(PEER), b"hi", || [4; 12])
        else {
            panic!("relayed in")
        };
        assert_eq!(parse_channel_data(&data), Some((0x4001, &b"hi"[..])));
        assert_eq!(
            h.on_client(now, addr(CLIENT), &channel_data(0x4001, b"out")),
            vec![Action::Relay {
                relayed: addr(RELAYED),
                peer: addr(PEER),
                data: b"out".to_vec()
            }]
        );
        // An unbound channel is dropped and counted.
        assert_eq!(
            h.on_client(now, addr(CLIENT), &channel_data(0x4002, b"out")),
            vec![]
        );
        assert_eq!(
            (
                h.stats.relayed_in(),
                h.stats.relayed_out(),
                h.stats.unpermitted()
            ),
            (2, 1, 2)
        );
    }

    #[test]
    fn expiry_and_refresh_zero_release_the_relay() {
        let mut h = handler();
        let t0 = Instant::now();
        allocated(&mut h, t0);
        assert_eq!(h.next_expiry(), Some(t0 + DEFAULT_LIFETIME));
        assert_eq!(h.expire(t0 + Duration::from_secs(599)), vec![]);
        assert_eq!(
            h.expire(t0 + DEFAULT_LIFETIME),
            vec![Action::Release {
                relayed: addr(RELAYED)
            }]
        );
        assert_eq!(h.next_expiry(), None);

        allocated(&mut h, t0);
        let zero = request(
            REFRESH,
            vec![Attribute::Lifetime(Lifetime::from_u32(0))],
            "secret",
            "nonce-1",
        );
        let actions = h.on_client(t0, addr(CLIENT), &zero);
        assert_eq!(
            actions[0],
            Action::Release {
                relayed: addr(RELAYED)
            }
        );
        assert_eq!(reply(&actions[1..]).0, MessageClass::SuccessResponse);
    }

    #[test]
    fn bad_requests_are_refused_with_their_codes() {
        let mut h = handler();
        let now = Instant::now();
        let tcp = request(
            ALLOCATE,
            vec![Attribute::RequestedTransport(RequestedTransport::new(6))],
            "secret",
            "nonce-1",
        );
        assert_eq!(reply(&h.on_client(now, addr(CLIENT), &tcp)).1, Some(442));
        let permit = request(CREATE_PERMISSION, vec![], "secret", "nonce-1");
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &permit)).1,
            Some(437),
            "no allocation"
        );
        allocated(&mut h, now);
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &permit)).1,
            Some(400),
            "no peer"
        );
        // A relay socket that cannot be bound: 508.
        let mut actions = h.on_client(now, addr("192.0.2.11:5000"), &allocate());
        let Some(Action::BindRelay(pending)) = actions.pop() else {
            panic!()
        };
        let refused = h.allocated(now, pending, Err(std::io::ErrorKind::AddrInUse.into()));
        assert_eq!(reply(&refused).1, Some(508));
        assert_eq!(h.stats.refused(), 4);
        // Garbage is malformed.
        assert_eq!(h.on_client(now, addr(CLIENT), &[0x02; 40]), vec![]);
        assert_eq!(h.stats.malformed(), 1);
    }

    /// A raw STUN request: `method`, transaction [7; 12], then `attrs` as (type, value).
    fn raw_request(method: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&method.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_request_that_does_not_decode_gets_400_not_silence() {
        let mut h = handler();
        let now = Instant::now();
        // ChannelBind with channel 0x577E: RFC 5766's range, outside RFC 8656's (coturn's
        // turnutils_uclient sends such numbers).
        let bind = raw_request(0x0009, &[(0x000C, &[0x57, 0x7E, 0, 0])]);
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &bind)),
            (MessageClass::ErrorResponse, Some(400))
        );
        // A broken indication is still dropped: indications are never answered.
        let send = raw_request(0x0016, &[(0x000C, &[0x57, 0x7E, 0, 0])]);
        assert!(h.on_client(now, addr(CLIENT), &send).is_empty());
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420_listing_them() {
        let mut h = handler();
        let now = Instant::now();
        // 0x0030 is comprehension-required and unassigned; 0x8030 is optional and ignored.
        // A TURN request is authenticated first (RFC 8489 §9.2.4): without credentials it
        // gets 401 whatever it carries...
        let bytes = raw_request(0x0003, &[(0x0019, &[17, 0, 0, 0]), (0x0030, &[1, 2, 3, 4])]);
        assert_eq!(
            reply(&h.on_client(now, addr(CLIENT), &bytes)),
            (MessageClass::ErrorResponse, Some(401))
        );
        // ...and a Binding request (no credentials) with it gets 420 at once.
        let binding = raw_request(0x0001, &[(0x0030, &[1, 2, 3, 4]), (0x8030, &[0; 4])]);
        let actions = h.on_client(now, addr(CLIENT), &binding);
        let [Action::Reply { data, .. }] = &actions[..] else {
            panic!("{actions:?}");
        };
        let r = decode(data).expect("stun");
        assert_eq!(r.get_attribute::<ErrorCode>().map(|e| e.code()), Some(420));
        let listed: Vec<u16> = r
            .get_attribute::<UnknownAttributes>()
            .map(|u| u.unknowns().iter().map(|t| t.as_u16()).collect())
            .unwrap_or_default();
        assert_eq!(listed, vec![0x0030]);
    }

    #[test]
    fn allocate_understands_even_port_and_the_address_family() {
        let now = Instant::now();
        let family = |f| Attribute::RequestedAddressFamily(RequestedAddressFamily::new(f));
        let transport = || Attribute::RequestedTransport(RequestedTransport::new(UDP));
        for (attrs, want) in [
            (vec![transport(), family(AddressFamily::V4)], None),
            (vec![transport(), family(AddressFamily::V6)], Some(440)),
            (
                vec![transport(), Attribute::EvenPort(EvenPort::new(false))],
                None,
            ),
            (
                vec![transport(), Attribute::EvenPort(EvenPort::new(true))],
                Some(508),
            ),
            (
                vec![
                    transport(),
                    Attribute::ReservationToken(ReservationToken::new(7)),
                ],
                Some(508),
            ),
        ] {
            let mut h = handler();
            let actions = h.on_client(
                now,
                addr(CLIENT),
                &request(ALLOCATE, attrs.clone(), "secret", "nonce-1"),
            );
            match want {
                None => {
                    let [Action::BindRelay(p)] = &actions[..] else {
                        panic!("{attrs:?}: {actions:?}");
                    };
                    let even = attrs.iter().any(|a| matches!(a, Attribute::EvenPort(_)));
                    assert_eq!(p.even_port, even);
                }
                Some(code) => assert_eq!(
                    reply(&actions),
                    (MessageClass::ErrorResponse, Some(code)),
                    "{attrs:?}"
                ),
            }
        }
    }
}
