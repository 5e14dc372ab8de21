//! Carriers: the application's handle to a peer.
//!
//! A carrier owns one transient at a time (a QUIC connection, or a TLS/TCP or TCP
//! connection). What the application sends goes through the carrier's
//! [`Outbox`](crate::transport::outbox) (back-pressure, niceness, antecedents, lifetimes) to the
//! transient's sending loop; what arrives comes back as [`Event`]s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;
use tokio::task::JoinHandle;

use tokio::time::Instant;

use crate::establish::association::{AssociationKey, MaybeTls, TlsClients, DEFAULT_PATH};
use crate::establish::attempt::{attempt, new_token, Transient};
use crate::establish::race::candidates;
use crate::establish::report::{Attempt, AttemptOutcome, EstablishmentReport, PunchReport};
use crate::establish::{racing, resolution};
use crate::message::{MessageProperties, Props, SendHandle, SendStatus};
use crate::net::{other_version, Family, Net};
use crate::path::{CurrentPath, PathChoice, PathMonitor};
use crate::transport::assemble::ReceiveLimits;
use crate::transport::moving::{self, MoveSettings, MoveWatch, QuicMove};
use crate::transport::outbox::Outbox;
use crate::transport::{event_channel, quic, stream as tls_tcp, EventRx, EventTx};
use crate::{ConfigError, ConnectionError};
use crate::{Configuration, Error, Event, Message, MessageId, Protocol, Received, Remote, Result};

/// How the carrier reaches its transient to end it.
#[derive(Debug)]
enum Link {
    Quic {
        conn: quinn::Connection,
        // Keeps a client's QUIC endpoint (and its socket) alive as long as the carrier.
        endpoint: Option<quinn::Endpoint>,
        /// The datagram send buffer's free space when empty.
        datagram_buffer: usize,
        epoch: quic::PathEpoch,
        goodbye: Arc<quic::Goodbye>,
    },
    Stream {
        core: Arc<tls_tcp::StreamCore>,
    },
}

/// Where an initiated carrier came from, so that it can be forked.
#[derive(Clone)]
pub(crate) struct Origin {
    net: Arc<dyn Net>,
    remote: Remote,
    tls: MaybeTls,
    /// Every address the remote's name resolved to (the race's).
    addrs: Vec<SocketAddr>,
}

impl Origin {
    /// The remote's address of the other IP version than `peer`'s, if it has one.
    fn alternates(&self, peer: SocketAddr) -> Vec<SocketAddr> {
        other_version(&self.addrs, peer).into_iter().collect()
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Origin({})", self.remote)
    }
}

/// What a client carrier needs to steer its transient between interfaces.
pub(crate) struct PathSetup {
    monitor: PathMonitor,
    choice: PathChoice,
}

/// Starts the task that steers a transient between interfaces (`path::manage`): `steering`
/// is where it starts, the peer's other addresses and where the current path is published.
fn spawn_path_manager(
    user: impl crate::path::PathUser + 'static,
    (steer, alternates, path): (PathSetup, Vec<SocketAddr>, CurrentPath),
    peer: SocketAddr,
    config: &Configuration,
    events: EventTx,
) -> JoinHandle<()> {
    let alternates = alternates.iter().map(|a| a.ip()).collect();
    tokio::spawn(crate::path::manage(
        user,
        steer.monitor,
        config.paths.clone(),
        (peer.ip(), alternates),
        steer.choice,
        path,
        events,
    ))
}

/// The path monitor (when the network names interfaces) and the usable paths towards
/// `remote`, best first. An error when interfaces exist but none is usable.
fn usable_paths(
    net: &Arc<dyn Net>,
    config: &Configuration,
    remotes: &[IpAddr],
) -> Result<(Option<PathMonitor>, Vec<PathChoice>)> {
    let interfaces = net.interfaces();
    if interfaces.is_empty() {
        return Ok((None, Vec::new()));
    }
    // A choice per interface and per family of the remotes, best interface first.
    let mut paths: Vec<PathChoice> = Vec::new();
    for remote in remotes {
        for choice in crate::path::rank(&config.paths, &interfaces, *remote) {
            if !paths.contains(&choice) {
                paths.push(choice);
            }
        }
    }
    let order: Vec<String> = crate::path::rank(&config.paths, &interfaces, remotes[0])
        .into_iter()
        .chain(paths.iter().cloned())
        .map(|c| c.interface)
        .collect();
    paths.sort_by_key(|p| order.iter().position(|i| *i == p.interface));
    if paths.is_empty() {
        let listed: Vec<String> = interfaces
            .iter()
            .map(|i| format!("{} ({})", i.name, if i.up { "up" } else { "down" }))
            .collect();
        return Err(ConfigError::NoUsableInterface {
            remote: remotes[0],
            interfaces: listed,
        }
        .into());
    }
    Ok((Some(PathMonitor::start(net.clone())), paths))
}

/// The address families worth asking DNS for (as `getaddrinfo`'s `AI_ADDRCONFIG`): those
/// the host has an address of on an interface that is up; both when the network lists no
/// interfaces.
fn families(net: &Arc<dyn Net>) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for i in net.interfaces().iter().filter(|i| i.up) {
        for a in &i.addrs {
            let f = Family::of(*a);
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// The association's path key: the interface for a multi-homed host, else the one default.
/// Applies the configuration's policies (if any) for a carrier to `remote`: returns the
/// configuration they leave and what each chose. The CIB's view is the association's
/// memory of the path a single-interface host uses, or of the first interface that is up.
fn apply_policies(
    net: &Arc<dyn Net>,
    remote: &Remote,
    mut config: Configuration,
) -> (Configuration, Vec<crate::PolicyChoice>) {
    let Some(policies) = config.policies.clone() else {
        return (config, Vec::new());
    };
    let interfaces: Vec<String> = net
        .interfaces()
        .into_iter()
        .filter(|i| i.up)
        .map(|i| i.name)
        .collect();
    let path = match interfaces.as_slice() {
        [first, _, ..] => first.clone(),
        _ => DEFAULT_PATH.to_owned(),
    };
    let learned = config
        .associations
        .as_ref()
        .map(|store| {
            store
                .get(&AssociationKey::new(&config.security, remote))
                .characteristics(&path)
        })
        .unwrap_or_default();
    let request = crate::policy::PolicyRequest {
        remote,
        interfaces,
        learned,
    };
    let choices = policies.apply(&mut config, &request);
    (config, choices)
}

fn path_key<'a>(monitor: Option<&PathMonitor>, paths: &'a [PathChoice]) -> &'a str {
    match (monitor, paths.first()) {
        (Some(m), Some(p)) if m.interfaces().len() > 1 => &p.interface,
        _ => DEFAULT_PATH,
    }
}

/// What a client QUIC carrier needs to move to TLS/TCP: it was initiated (it knows how to
/// reach the listener) and the configuration allows TLS/TCP.
fn move_watch(
    config: &Configuration,
    origin: &Option<Origin>,
    path: Option<CurrentPath>,
) -> Option<MoveWatch> {
    let origin = origin.as_ref()?;
    let tls = origin.tls.as_ref()?;
    if !config.candidates().ok()?.contains(&Protocol::TlsTcp) {
        return None;
    }
    Some(MoveWatch {
        net: origin.net.clone(),
        host: origin.remote.host.clone(),
        config: config.clone(),
        tls: tls.tcp.clone(),
        path,
        addrs: origin.addrs.clone(),
    })
}

/// Watches a client QUIC carrier until it moves to TLS/TCP; then, if the network names
/// interfaces, steers the moved carrier between them like any TLS/TCP carrier.
async fn watch_and_steer(
    mv: Arc<QuicMove>,
    w: MoveWatch,
    start: Option<PathChoice>,
    events: crate::transport::EventTx,
) {
    let (net, host, config, tls, current, addrs) = (
        w.net.clone(),
        w.host.clone(),
        w.config.clone(),
        w.tls.clone(),
        w.path.clone(),
        w.addrs.clone(),
    );
    let Some(core) = moving::watch(mv, w).await else {
        return;
    };
    let (Some(start), Some(current)) = (start, current) else {
        return;
    };
    let remote = core.peer();
    let list = net.interfaces();
    let start = crate::path::rank(&config.paths, &list, remote.ip())
        .into_iter()
        .next()
        .unwrap_or(start);
    let alternates: Vec<SocketAddr> = other_version(&addrs, remote).into_iter().collect();
    let user = tls_tcp::StreamPath {
        core,
        net: net.clone(),
        host,
        config: config.clone(),
        tls: Some(tls),
        remote,
        alternates: alternates.clone(),
    };
    let monitor = PathMonitor::start(net);
    crate::path::manage(
        user,
        monitor,
        config.paths.clone(),
        (remote.ip(), alternates.iter().map(|a| a.ip()).collect()),
        start,
        current,
        events,
    )
    .await;
}

/// Bounds on how long a closing QUIC carrier waits for the peer to answer its goodbye.
const GOODBYE_WAIT_MIN: Duration = Duration::from_millis(50);
const GOODBYE_WAIT_MAX: Duration = Duration::from_secs(2);

/// The application's handle to a peer. See the [crate docs](crate) for an example.
#[derive(Debug)]
pub struct Carrier {
    protocol: Protocol,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
    events: EventRx,
    sender: tokio::sync::Mutex<Option<JoinHandle<Result<()>>>>,
    tasks: Vec<JoinHandle<()>>,
    link: Link,
    config: Configuration,
    origin: Option<Origin>,
    establishment: Option<EstablishmentReport>,
    /// How a rendezvous carrier came about.
    rendezvous: Option<PunchReport>,
    resumed: Arc<std::sync::OnceLock<bool>>,
    /// The local interface in use (`None` when dormant or when the network names none).
    path: CurrentPath,
    /// A QUIC carrier's way to TLS/TCP (transport::moving).
    moving: Option<Arc<QuicMove>>,
    /// For a carrier that sent before its handshake completed (QUIC 0-RTT, TLS 1.3 early
    /// data): whether the server accepted that data, once known.
    early_data: Option<Arc<std::sync::OnceLock<bool>>>,
    /// A TLS/TCP carrier in early data: its writer waits until this is dropped, so that the
    /// first message `initiate_with` queues can go in early data.
    early_gate: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A snapshot of what a carrier's current transient measures ([`Carrier::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CarrierStats {
    /// The protocol stack of the current transient.
    pub protocol: Protocol,
    /// The smoothed round-trip time. On QUIC quinn's estimate, from its ACKs (the handshake
    /// gives the first sample). On TLS/TCP the one postsock's ACK frames measure, from a
    /// frame's write to its ACK's arrival: it includes the time the peer took to read the
    /// frame, and is `None` until the first ACK on the current connection.
    pub rtt: Option<Duration>,
    /// Bytes the transient lets be unacknowledged now: on QUIC the congestion window, on
    /// TLS/TCP postsock's ACK window, in payload bytes plus one per frame (twice the delivery
    /// rate × the least RTT, 16 KiB to 16 MiB; 16 KiB until measured); the kernel's own TCP
    /// window is not seen.
    pub send_window: u64,
    /// QUIC only: how many messages the send loop lets be in flight at once, measured from
    /// their completions and the least RTT (128 to 512; 512 on a fresh connection).
    pub message_limit: Option<usize>,
    /// QUIC only: packets declared lost on the current connection.
    pub lost_packets: Option<u64>,
    /// Bytes of the send buffer in use (queued or unacknowledged messages), as
    /// [`Carrier::buffered`].
    pub buffered: usize,
}

/// What a carrier's operations act on now: a QUIC carrier that moved runs on a stream core.
enum Now<'a> {
    Quic {
        conn: &'a quinn::Connection,
        endpoint: &'a Option<quinn::Endpoint>,
        datagram_buffer: usize,
        goodbye: &'a Arc<quic::Goodbye>,
        epoch: &'a quic::PathEpoch,
    },
    Stream(Arc<tls_tcp::StreamCore>),
}

impl Carrier {
    /// Initiates a carrier to `remote` over `net`. The candidates are the protocol stacks the
    /// configuration's transport properties select ([`Configuration::candidates`]) on each
    /// resolved address; they are raced (RFC 8305): one starts every
    /// [`Configuration::attempt_delay`], or at once when one fails, and the first ready wins.
    /// The race is bounded by the connect timeout; if nothing works the error names every
    /// attempt and why it failed. [`Carrier::establishment`] tells how the race went.
    pub async fn initiate(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
    ) -> Result<Self> {
        let mut carrier = Self::initiate_gated(net, remote, config).await?;
        carrier.early_gate = None;
        Ok(carrier)
    }

    /// [`initiate`](Self::initiate), its writer held before early data (see `early_gate`).
    async fn initiate_gated(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
    ) -> Result<Self> {
        let (config, policy) = apply_policies(&net, &remote, config);
        let protocols = config.candidates()?;
        // The association (if the configuration keeps them) orders the race and holds the
        // TLS session caches; configuration errors show before any packet.
        let association = config
            .associations
            .as_ref()
            .map(|store| store.get(&AssociationKey::new(&config.security, &remote)));
        let secure = protocols.iter().any(|p| *p != Protocol::Tcp);
        let tls = match (&association, secure) {
            (_, false) => None,
            (Some(a), true) => Some(a.tls(&config.security, net.tls_clock())?),
            (None, true) => Some(TlsClients::new(&config.security, net.tls_clock())?),
        };
        if secure {
            crate::transport::tls::server_name(&config.security, &remote.host)?;
        }
        let resolved = resolution::resolve(&net, &remote.host, remote.port, &families(&net))
            .await
            .map_err(|source| Error::Resolve {
                name: remote.host.clone(),
                source,
            })?;
        let addrs = resolved.addrs;
        // Paths for the families answered, and for the one still to come.
        let mut remotes: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        remotes.extend(resolved.resolution.pending().into_iter().map(|f| match f {
            Family::V6 => IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            Family::V4 => IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED),
        }));
        let (monitor, paths) = usable_paths(&net, &config, &remotes)?;
        let key = path_key(monitor.as_ref(), &paths);
        let protocols = match &association {
            Some(a) => a.order(key, &protocols),
            None => protocols,
        };
        let mut config = config;
        if let Some(rtt) = association.as_ref().and_then(|a| a.rtt(key)) {
            if config.adaptive_attempt_delay {
                // RFC 8305 §5 allows a delay from the RTT; 2 RTT covers a TLS/TCP handshake.
                config.attempt_delay = config.attempt_delay.min(rtt * 2);
            }
        }
        let candidates = candidates(&protocols, &addrs, &paths);
        let resolving = racing::Resolving {
            resolution: resolved.resolution,
            late: resolved.late,
            protocols: protocols.clone(),
            paths: paths.clone(),
        };
        let (result, mut report) = racing::race(
            net.clone(),
            &remote.host,
            &config,
            candidates,
            &tls,
            Some(resolving),
        )
        .await;
        report.policy = policy.clone();
        if let Some(a) = &association {
            a.record(key, &report);
        }
        let (transient, path) = result.map_err(|e| match e {
            Error::NoCandidate {
                attempts,
                mut report,
            } => {
                report.policy = policy;
                Error::NoCandidate { attempts, report }
            }
            other => other,
        })?;
        let origin = Origin {
            net,
            remote,
            tls,
            addrs,
        };
        let steer = monitor
            .zip(path)
            .map(|(monitor, choice)| PathSetup { monitor, choice });
        let mut carrier = Self::start_on(transient, &config, Some(origin), steer);
        carrier.establishment = Some(report);
        Ok(carrier)
    }

    /// Whether the TLS handshake resumed an earlier session (no certificate exchange): on
    /// TLS/TCP from rustls' handshake kind; on QUIC from rustls not having verified a server
    /// certificate during the handshake, or for a 0-RTT carrier ([`Carrier::initiate_with`])
    /// from the server accepting the early data. `None` for accepted carriers and plain TCP.
    pub fn resumed(&self) -> Option<bool> {
        self.resumed.get().copied()
    }

    /// Whether this carrier sent data before its handshake completed (QUIC 0-RTT, or TLS 1.3
    /// early data on a resumed TLS/TCP session) and the server accepted it: `Some(true)`
    /// accepted, `Some(false)` rejected (the data was sent again after the handshake).
    /// `None` when nothing went early (no ticket, a full handshake, an accepted carrier) or
    /// the server's answer is not known yet.
    pub fn early_data(&self) -> Option<bool> {
        self.early_data.as_ref().and_then(|l| l.get().copied())
    }

    /// Initiates a carrier and sends `first` on it — in 0-RTT when that is safe and possible:
    /// the message is idempotent, the configuration keeps associations, QUIC won the last
    /// race to this remote and its session ticket is still held. The message then reaches the
    /// server half a round trip after the call; a non-idempotent message (or no ticket) waits
    /// for a full handshake. If the server rejects the 0-RTT data (say it restarted and lost
    /// its session state), the message is sent again after the handshake, once.
    pub async fn initiate_with(
        net: Arc<dyn Net>,
        remote: Remote,
        config: Configuration,
        first: impl Into<Message>,
    ) -> Result<(Self, SendHandle)> {
        let first = first.into();
        if first.properties.idempotent {
            let (policed, policy) = apply_policies(&net, &remote, config.clone());
            if let Some(mut carrier) = Self::try_0rtt(&net, &remote, &policed).await? {
                if let Some(report) = carrier.establishment.as_mut() {
                    report.policy = policy;
                }
                let handle = carrier.send(first).await?;
                return Ok((carrier, handle));
            }
        }
        // On TLS/TCP a resumed session may carry it in early data: it is queued before the
        // writer starts.
        let mut carrier = Self::initiate_gated(net, remote, config).await?;
        let handle = carrier.send(first).await;
        carrier.early_gate = None;
        Ok((carrier, handle?))
    }

    /// A 0-RTT QUIC carrier from the association's session ticket, if there is one to use.
    async fn try_0rtt(
        net: &Arc<dyn Net>,
        remote: &Remote,
        config: &Configuration,
    ) -> Result<Option<Self>> {
        let Some(store) = &config.associations else {
            return Ok(None);
        };
        if !config.candidates()?.contains(&Protocol::Quic) {
            return Ok(None);
        }
        let association = store.get(&AssociationKey::new(&config.security, remote));
        let Some(addr) = net
            .resolve(&remote.host, remote.port)
            .await
            .ok()
            .and_then(|a| a.first().copied())
        else {
            return Ok(None);
        };
        let (monitor, paths) = usable_paths(net, config, &[addr.ip()])?;
        // The racing cache of the path the carrier would take (named by its interface on a
        // host with several).
        if association.winner(path_key(monitor.as_ref(), &paths)) != Some(Protocol::Quic) {
            return Ok(None);
        }
        let tls = association.tls(&config.security, net.tls_clock())?;
        let choice = paths.first().cloned();
        let local = choice.as_ref().map(|c| c.local);
        let connecting = quic::connect_0rtt(
            net.as_ref(),
            addr,
            local,
            &remote.host,
            config,
            tls.quic.clone(),
        )
        .await?;
        let Some((endpoint, conn, accepted, epoch)) = connecting else {
            return Ok(None);
        };
        let started = Instant::now();
        let origin = Origin {
            net: net.clone(),
            remote: remote.clone(),
            tls: Some(tls),
            addrs: vec![addr],
        };
        let steer = monitor
            .zip(choice)
            .map(|(monitor, choice)| PathSetup { monitor, choice });
        let mut carrier = Self::start_on(
            Transient::Quic {
                conn,
                endpoint: Some(endpoint),
                resumed: None,
                zero_rtt: Some(accepted),
                epoch,
            },
            config,
            Some(origin),
            steer,
        );
        carrier.establishment = Some(EstablishmentReport {
            attempts: vec![Attempt {
                protocol: Protocol::Quic,
                remote: addr,
                interface: None,
                started: Duration::ZERO,
                duration: started.elapsed(),
                outcome: AttemptOutcome::Won,
            }],
            duration: started.elapsed(),
            policy: Vec::new(),
            resolution: None,
        });
        Ok(Some(carrier))
    }

    /// How this carrier's connection race went (`None` for an accepted carrier).
    pub fn establishment(&self) -> Option<&EstablishmentReport> {
        self.establishment.as_ref()
    }

    /// How a [`Carrier::rendezvous`] carrier came about: direct or relayed, the addresses,
    /// the timings. `None` for other carriers.
    pub fn rendezvous_report(&self) -> Option<&PunchReport> {
        self.rendezvous.as_ref()
    }

    /// Records how a rendezvous carrier came about.
    pub(crate) fn met(mut self, report: PunchReport) -> Self {
        self.rendezvous = Some(report);
        self
    }

    /// Turns an established transient into a carrier: starts its tasks.
    pub(crate) fn start(
        transient: Transient,
        config: &Configuration,
        origin: Option<Origin>,
    ) -> Self {
        let mut carrier = Self::start_on(transient, config, origin, None);
        carrier.early_gate = None;
        carrier
    }

    /// [`start`](Self::start), steering the transient between interfaces when `steer` is given.
    /// A TLS/TCP transient in early data waits for `early_gate` to be dropped.
    pub(crate) fn start_on(
        transient: Transient,
        config: &Configuration,
        origin: Option<Origin>,
        steer: Option<PathSetup>,
    ) -> Self {
        let path: CurrentPath = Arc::new(std::sync::Mutex::new(
            steer.as_ref().map(|s| s.choice.interface.clone()),
        ));
        let mut extra = Vec::new();
        let (events_tx, events_rx) = event_channel(config.receive_queue, config.receive_buffer);
        events_tx.try_send(Event::Ready);
        let limits = ReceiveLimits::from_config(config);
        let mut resumed = Arc::new(std::sync::OnceLock::new());
        let mut moving = None;
        let mut early_gate = None;
        let mut early_data = None;
        let (protocol, peer, outbox, sender, tasks, link) = match transient {
            Transient::Quic {
                conn,
                endpoint,
                resumed: known,
                zero_rtt,
                epoch,
            } => {
                if let Some(r) = known {
                    let _ = resumed.set(r);
                }
                // A 0-RTT connection learns whether it resumed from the server's answer to
                // its early data.
                if zero_rtt.is_some() {
                    early_data = Some(resumed.clone());
                }
                let outbox = Outbox::new(config.send_buffer, quic::order_rule);
                outbox.set_rtt(conn.rtt(), conn.rtt());
                let mv = QuicMove::new(
                    conn.clone(),
                    outbox.clone(),
                    events_tx.clone(),
                    MoveSettings {
                        limits,
                        dormant_timeout: config.dormant_timeout,
                        keepalive: config.keepalive,
                    },
                );
                moving = Some(mv.clone());
                let watch = move_watch(config, &origin, steer.is_some().then(|| path.clone()));
                let restart_paths = match (&watch, &steer) {
                    (Some(_), Some(s)) => Some(s.choice.clone()),
                    _ => None,
                };
                if let (Some(steer), Some(ep), Some(origin)) = (steer, &endpoint, &origin) {
                    let user = quic::QuicPath {
                        net: origin.net.clone(),
                        endpoint: ep.clone(),
                        conn: conn.clone(),
                        epoch: epoch.clone(),
                        activity: outbox.activity().clone(),
                    };
                    let peer = conn.remote_address();
                    let steering = (steer, origin.alternates(peer), path.clone());
                    extra.push(spawn_path_manager(
                        user,
                        steering,
                        peer,
                        config,
                        events_tx.clone(),
                    ));
                }
                if let Some(w) = watch {
                    extra.push(tokio::spawn(watch_and_steer(
                        mv.clone(),
                        w,
                        restart_paths,
                        events_tx.clone(),
                    )));
                }
                let goodbye = Arc::new(quic::Goodbye::default());
                let (sender, reader) = quic::start(
                    conn.clone(),
                    zero_rtt,
                    resumed.clone(),
                    quic::Reader {
                        events: events_tx,
                        limits,
                        timers: (config.dormant_timeout, config.keepalive),
                        goodbye: goodbye.clone(),
                    },
                    mv,
                );
                let link = Link::Quic {
                    epoch,
                    goodbye,
                    datagram_buffer: conn.datagram_send_buffer_space(),
                    conn: conn.clone(),
                    endpoint,
                };
                (
                    Protocol::Quic,
                    conn.remote_address(),
                    outbox,
                    sender,
                    Some(reader),
                    link,
                )
            }
            Transient::Stream {
                stream,
                peer,
                protocol,
                resumed: known,
                early,
                token,
            } => {
                resumed = known;
                let outbox = Outbox::new(config.send_buffer, tls_tcp::order_rule);
                // An initiated TLS carrier can continue on a new transient: it names itself
                // with a fresh token in a HELLO, inside TLS, before anything else.
                let (token, preamble) = match (protocol, &origin) {
                    (Protocol::TlsTcp, Some(o)) => match new_token(o.net.as_ref()) {
                        Some(t) => (Some(t), vec![tls_tcp::hello_frame(&t, 0, 0, 0).into()]),
                        None => (None, Vec::new()),
                    },
                    _ => (token, Vec::new()),
                };
                let settings = tls_tcp::CoreSettings {
                    limits,
                    token,
                    client: origin.is_some(),
                    dormant_timeout: config.dormant_timeout,
                    keepalive: config.keepalive,
                };
                let core = tls_tcp::StreamCore::new(outbox.clone(), events_tx.clone(), settings);
                // A fresh core is detached: attaching its first transient cannot fail.
                early_data = early.clone();
                let early = early.is_some().then(|| {
                    let (tx, gate) = tokio::sync::oneshot::channel();
                    early_gate = Some(tx);
                    tls_tcp::EarlyStart {
                        gate,
                        timeout: config.connect_timeout,
                    }
                });
                let _ = core.attach(stream, peer, tls_tcp::Attach::New { preamble, early });
                if let (Some(steer), Some(o), Some(_)) = (steer, &origin, token) {
                    let user = tls_tcp::StreamPath {
                        core: core.clone(),
                        net: o.net.clone(),
                        host: o.remote.host.clone(),
                        config: config.clone(),
                        tls: o.tls.as_ref().map(|t| t.tcp.clone()),
                        remote: peer,
                        alternates: o.alternates(peer),
                    };
                    let steering = (steer, o.alternates(peer), path.clone());
                    extra.push(spawn_path_manager(user, steering, peer, config, events_tx));
                }
                let sender = tokio::spawn(core.clone().finished());
                let link = Link::Stream { core };
                (protocol, peer, outbox, sender, None, link)
            }
        };
        let reaper = tokio::spawn(outbox.clone().reaper());
        Carrier {
            protocol,
            peer,
            outbox,
            events: events_rx,
            sender: tokio::sync::Mutex::new(Some(sender)),
            tasks: tasks.into_iter().chain([reaper]).chain(extra).collect(),
            link,
            config: config.clone(),
            origin,
            establishment: None,
            rendezvous: None,
            resumed,
            path,
            moving,
            early_gate,
            early_data,
        }
    }

    /// What the carrier runs on now.
    fn now(&self) -> Now<'_> {
        match &self.link {
            Link::Stream { core } => Now::Stream(core.clone()),
            Link::Quic {
                conn,
                endpoint,
                datagram_buffer,
                epoch,
                goodbye,
            } => match self.moving.as_ref().and_then(|m| m.core()) {
                Some(core) => Now::Stream(core),
                None => Now::Quic {
                    conn,
                    endpoint,
                    datagram_buffer: *datagram_buffer,
                    goodbye,
                    epoch,
                },
            },
        }
    }

    /// The stream core of a TLS/TCP or TCP carrier (or of a QUIC carrier that moved).
    pub(crate) fn stream_core(&self) -> Option<Arc<tls_tcp::StreamCore>> {
        match self.now() {
            Now::Stream(core) => Some(core),
            Now::Quic { .. } => None,
        }
    }

    /// A QUIC carrier's way to TLS/TCP (a listener registers it for clients' moves).
    pub(crate) fn quic_move(&self) -> Option<Arc<QuicMove>> {
        self.moving.clone()
    }

    /// The local interface the carrier uses now: `None` while dormant, and when the network
    /// names no interfaces (or for an accepted carrier).
    pub fn interface(&self) -> Option<String> {
        crate::util::lock(&self.path).clone()
    }

    /// A new carrier to the same remote with the same configuration and protocol (Post
    /// Sockets' fork). On QUIC the new connection shares this carrier's endpoint and socket.
    /// Only initiated carriers can fork: an accepted one does not know how to reach its peer.
    pub async fn fork(&self) -> Result<Carrier> {
        let origin = self
            .origin
            .clone()
            .ok_or_else(|| Error::from(ConfigError::ForkAccepted))?;
        let now = self.now();
        let endpoint = match &now {
            Now::Quic {
                endpoint, epoch, ..
            } => endpoint.as_ref().map(|e| (e, *epoch)),
            Now::Stream(_) => None,
        };
        let local = match &now {
            Now::Quic { .. } => None,
            Now::Stream(_) => {
                let current = self.interface();
                let interfaces = origin.net.interfaces();
                let found = interfaces
                    .iter()
                    .find(|i| Some(&i.name) == current.as_ref());
                found.and_then(|i| {
                    i.addrs
                        .iter()
                        .copied()
                        .find(|a| a.is_ipv4() == self.peer.is_ipv4())
                })
            }
        };
        let transient = attempt(
            origin.net.as_ref(),
            self.protocol(),
            self.peer_addr(),
            local,
            &origin.remote.host,
            &self.config,
            endpoint,
            &origin.tls,
        )
        .await?;
        Ok(Self::start(transient, &self.config, Some(origin)))
    }

    /// The protocol stack of the current transient (TLS/TCP once a QUIC carrier moved, see
    /// [`Event::ProtocolChange`]).
    pub fn protocol(&self) -> Protocol {
        match (&self.link, self.now()) {
            (Link::Quic { .. }, Now::Stream(_)) => Protocol::TlsTcp,
            _ => self.protocol,
        }
    }

    /// The peer's address as this end sees it now (behind a NAT: the NAT's public address;
    /// on QUIC it follows migrations, see [`Event::PathChange`]).
    pub fn peer_addr(&self) -> SocketAddr {
        match self.now() {
            Now::Quic { conn, .. } => conn.remote_address(),
            Now::Stream(core) => core.peer(),
        }
    }

    /// Bytes of the send buffer in use (queued or unacknowledged messages).
    pub fn buffered(&self) -> usize {
        self.outbox.buffered()
    }

    /// What the current transient measures now: its RTT, the bytes it lets be unacknowledged
    /// and, on QUIC, its limit on messages in flight and the packets it lost.
    pub fn stats(&self) -> CarrierStats {
        let protocol = self.protocol();
        let buffered = self.outbox.buffered();
        match self.now() {
            Now::Quic { conn, .. } => {
                let path = conn.stats().path;
                CarrierStats {
                    protocol,
                    rtt: Some(path.rtt),
                    send_window: path.cwnd,
                    // (Before its send loop first ran, the limit it starts from.)
                    message_limit: Some(
                        self.outbox
                            .message_limit()
                            .unwrap_or(quic::FRESH_MESSAGE_LIMIT),
                    ),
                    lost_packets: Some(path.lost_packets),
                    buffered,
                }
            }
            Now::Stream(core) => {
                let (rtt, send_window) = core.path_stats();
                CarrierStats {
                    protocol,
                    rtt,
                    send_window,
                    message_limit: None,
                    lost_packets: None,
                    buffered,
                }
            }
        }
    }

    fn check(&self, message: &Message) -> Result<()> {
        let size = message.data.len();
        if size > self.config.max_message_size {
            return Err(Error::MessageTooLarge {
                size,
                max: self.config.max_message_size,
            });
        }
        if !message.properties.reliable {
            match self.now() {
                Now::Quic { conn, .. } => match conn.max_datagram_size() {
                    Some(max) if size > max => {
                        return Err(Error::MessageTooLarge { size, max });
                    }
                    Some(_) => {}
                    None => return Err(ConfigError::UnreliableRefused.into()),
                },
                Now::Stream(_) => {
                    return Err(ConfigError::UnreliableOnStream {
                        protocol: self.protocol(),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    /// Sends a message. Waits while the send buffer is full (back-pressure), then queues it
    /// and returns its handle, which reports the message's events. Errors here are about the
    /// message itself (too large, unsupported property, unknown antecedent) or a closed
    /// carrier; what happens later is in the handle.
    pub async fn send(&self, message: impl Into<Message>) -> Result<SendHandle> {
        let message = message.into();
        // A lifetime counts from this call, whatever the wait for buffer space.
        let deadline = message.properties.lifetime.map(|l| Instant::now() + l);
        self.check(&message)?;
        let permit = self.outbox.reserve(message.data.len()).await?;
        self.outbox
            .send(message.properties, message.data, permit, deadline)
    }

    /// Like [`send`](Self::send) but never waits: a full send buffer is
    /// [`Error::WouldBlock`].
    pub fn try_send(&self, message: impl Into<Message>) -> Result<SendHandle> {
        let message = message.into();
        self.check(&message)?;
        let permit = self.outbox.try_reserve(message.data.len())?;
        let deadline = message.properties.lifetime.map(|l| Instant::now() + l);
        self.outbox
            .send(message.properties, message.data, permit, deadline)
    }

    /// Sends raw bytes as a message with default properties; returns its id.
    pub async fn send_bytes(&self, data: impl Into<Bytes>) -> Result<MessageId> {
        Ok(self.send(Message::new(data)).await?.id())
    }

    /// Starts a message to be sent in parts (partial send). Parts go out as they are given;
    /// the properties apply to the whole message. Unreliable messages cannot be partial.
    pub fn start_message(&self, properties: MessageProperties) -> Result<PartialSend<'_>> {
        if !properties.reliable {
            return Err(ConfigError::UnreliablePartial.into());
        }
        let deadline = properties.lifetime.map(|l| Instant::now() + l);
        let (handle, props) = self.outbox.open(properties)?;
        Ok(PartialSend {
            carrier: self,
            handle,
            props,
            offset: 0,
            deadline,
            finished: false,
        })
    }

    /// The next event. `None` after the last one (`Closed` or `ConnectionError`).
    pub async fn next_event(&self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next whole message from the peer, skipping `Ready`. `Ok(None)` once the peer closed
    /// the carrier. A `ReceiveError` (one bad message) is an `Err` and the carrier goes on; a
    /// `ConnectionError` is an `Err` followed by `Ok(None)`. With partial delivery configured
    /// use [`next_event`](Self::next_event): a part here is an error.
    pub async fn receive(&self) -> Result<Option<Received>> {
        loop {
            match self.events.recv().await {
                Some(Event::Ready)
                | Some(Event::PathChange { .. })
                | Some(Event::Handover { .. })
                | Some(Event::ProtocolChange { .. })
                | Some(Event::Dormant) => continue,
                Some(Event::Received(m)) => return Ok(Some(m)),
                Some(Event::ReceivedPartial(p)) => {
                    return Err(ConfigError::PartialArrived { id: p.id }.into())
                }
                Some(Event::ReceiveError { error, .. }) => return Err(error),
                Some(Event::ConnectionError(e)) => return Err(e),
                Some(Event::Closed) | None => return Ok(None),
            }
        }
    }

    /// Closes gracefully: sends everything queued, waits until every message is settled
    /// (acknowledged by the peer on every stack), then ends the transient.
    pub async fn close(&self) -> Result<()> {
        self.outbox.close();
        let sender = self.sender.lock().await.take();
        let result = match sender {
            Some(task) => task
                .await
                .map_err(|e| ConnectionError::TaskFailed(e.to_string()).into())
                .and_then(|r| r),
            None => Ok(()),
        };
        match self.now() {
            Now::Quic {
                conn,
                endpoint,
                datagram_buffer,
                goodbye,
                ..
            } => {
                // Datagrams count as sent once quinn has them; let them leave before the
                // CONNECTION_CLOSE discards them (bounded: they are unreliable anyway).
                for _ in 0..100 {
                    if conn.datagram_send_buffer_space() >= datagram_buffer {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                // Goodbye first (docs/WIRE.md, "Closing"), so that the peer takes the end
                // of the connection as a close even if the CONNECTION_CLOSE is lost. A few
                // round trips at most: a peer that does not answer is closed all the same.
                let wait = (conn.rtt() * 4).clamp(GOODBYE_WAIT_MIN, GOODBYE_WAIT_MAX);
                goodbye.say(conn, wait).await;
                conn.close(0u32.into(), b"done");
                if let Some(endpoint) = endpoint {
                    // Give the CONNECTION_CLOSE a chance to leave before the socket goes.
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        endpoint.wait_idle(),
                    )
                    .await;
                }
            }
            // The writer shut the stream down when it finished.
            Now::Stream(_) => {}
        }
        result
    }

    /// Closes at once: queued and unacknowledged messages fail with "carrier aborted".
    pub fn abort(&self) {
        self.outbox.fail_all("carrier aborted");
        match self.now() {
            Now::Quic { conn, .. } => conn.close(1u32.into(), b"abort"),
            Now::Stream(core) => core.abort(),
        }
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        // Whoever still waits on a message's outcome learns it will not come.
        self.outbox
            .fail_all("the carrier was dropped before the message was settled");
        // A stream carrier's transient tasks belong to its core: dropping the carrier aborts
        // it (the peer learns at once), unless the peer had closed it cleanly.
        if let Now::Stream(core) = self.now() {
            core.dropped();
        }
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(mut sender) = self.sender.try_lock() {
            if let Some(task) = sender.take() {
                task.abort();
            }
        }
    }
}

/// A message being sent in parts (see [`Carrier::start_message`]). Dropping it before the
/// last part abandons the message: it fails, and the peer discards what it received of it.
#[derive(Debug)]
pub struct PartialSend<'a> {
    carrier: &'a Carrier,
    handle: SendHandle,
    props: Props,
    offset: u64,
    deadline: Option<Instant>,
    finished: bool,
}

impl PartialSend<'_> {
    /// The message's handle.
    pub fn handle(&self) -> &SendHandle {
        &self.handle
    }

    /// Sends the next part; `end` makes it the last. Waits while the send buffer is full.
    pub async fn send(&mut self, data: impl Into<Bytes>, end: bool) -> Result<()> {
        if self.finished {
            return Err(ConfigError::MessageEnded.into());
        }
        let data = data.into();
        let total = self.offset as usize + data.len();
        if total > self.carrier.config.max_message_size {
            return Err(Error::MessageTooLarge {
                size: total,
                max: self.carrier.config.max_message_size,
            });
        }
        let permit = self.carrier.outbox.reserve(data.len()).await?;
        let len = data.len() as u64;
        self.carrier.outbox.push(
            self.handle.id(),
            &self.props,
            (self.offset, data, end),
            Some(permit),
            self.deadline,
        );
        self.offset += len;
        self.finished = end;
        Ok(())
    }
}

impl Drop for PartialSend<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.carrier.outbox.update(
                self.handle.id(),
                SendStatus::Failed("abandoned before its last part".into()),
                true,
            );
        }
    }
}
