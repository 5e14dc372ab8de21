//! Workloads: the application programs a scenario runs on its hosts, and the trace they keep.
//!
//! Both ends of a run live in one process, so they record into one shared [`Trace`]: the
//! sender when it hands a message to its carrier, the receiver when its application gets it.
//! Times are simulated (turmoil's global clock), so the trace is exact and repeatable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postsock::net::Net;
use postsock::{
    Carrier, Configuration, Event, Listener, Message, MessageProperties, Remote, SendStatus,
};
use rand::{Rng, RngCore};
use reports::PathEventKind;
use reports::{Direction, MessageRecord};

use crate::scenario::Workload;

/// Simulated time since the start of the run, in ms (microsecond resolution).
pub fn now_ms() -> f64 {
    let t = turmoil::sim_elapsed().unwrap_or_default();
    reports::model::round_us(t.as_secs_f64() * 1000.0)
}

/// Everything the workload observed.
#[derive(Debug, Default)]
pub struct Trace {
    /// When the client called `initiate`.
    pub initiated_ms: Option<f64>,
    /// Messages by (direction, id).
    pub messages: BTreeMap<(Direction, u64), MessageRecord>,
    /// The first failure of a workload program.
    pub error: Option<String>,
    /// The client's connection race.
    pub establishment: Option<reports::Establishment>,
    /// The protocol the client's carrier runs on.
    pub protocol: Option<String>,
    /// When each of the client's carriers was initiated (ms).
    pub initiations: Vec<f64>,
    /// Whether each of the client's carriers resumed a TLS session (when known).
    pub resumed: Vec<Option<bool>>,
    /// One-way latency of the client–server path.
    pub path_one_way: Option<Duration>,
    /// The client carrier's interface changes (and the server carrier's dormancy and
    /// continuations).
    pub path_events: Vec<reports::PathEvent>,
    /// Carriers the server accepted.
    pub carriers_accepted: u64,
    /// Rendezvous workloads: whether either peer's carrier runs through the relay.
    pub relayed: Option<bool>,
    /// Rendezvous workloads: the client's time from its start to a ready carrier.
    pub rendezvous_ms: Option<f64>,
    /// Rendezvous workloads: the server peer's time from its start to a ready carrier.
    pub server_rendezvous_ms: Option<f64>,
}

fn ms(d: std::time::Duration) -> f64 {
    reports::model::round_us(d.as_secs_f64() * 1000.0)
}

/// The DNS query for `family`.
fn record_name(family: postsock::net::Family) -> String {
    match family {
        postsock::net::Family::V6 => "AAAA",
        postsock::net::Family::V4 => "A",
    }
    .to_string()
}

/// The report's record of a race.
fn establishment(
    report: &postsock::EstablishmentReport,
    error: Option<String>,
) -> reports::Establishment {
    reports::Establishment {
        attempts: report
            .attempts
            .iter()
            .map(|a| reports::AttemptRecord {
                protocol: a.protocol.name().to_string(),
                remote: a.remote.to_string(),
                started_ms: ms(a.started),
                duration_ms: ms(a.duration),
                outcome: a.outcome.name().to_string(),
                reason: match &a.outcome {
                    postsock::AttemptOutcome::Failed(why) => Some(why.clone()),
                    _ => None,
                },
            })
            .collect(),
        duration_ms: ms(report.duration),
        error,
        policy: report
            .policy
            .iter()
            .map(|c| reports::PolicyRecord {
                policy: c.policy.clone(),
                setting: c.setting.clone(),
            })
            .collect(),
        resolution: report
            .resolution
            .as_ref()
            .map(|r| reports::ResolutionRecord {
                queries: r
                    .queries
                    .iter()
                    .map(|q| reports::QueryRecord {
                        query: record_name(q.family),
                        answered_ms: ms(q.answered),
                        addresses: q.addresses.iter().map(ToString::to_string).collect(),
                        error: q.error.clone(),
                        late: q.late,
                    })
                    .collect(),
                race_started_ms: ms(r.race_started),
                unanswered: r.unanswered.iter().map(|f| record_name(*f)).collect(),
            }),
    }
}

/// Which client of the run a client program is: the workload's only one, or a member of
/// its client group (`[[host]] count = N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Position in the group, from 0.
    pub index: u64,
}

impl Member {
    /// The first (or only) client: the one whose race, protocol and path events the
    /// report shows. Every member's messages and errors are recorded.
    fn primary(self) -> bool {
        self.index == 0
    }

    /// When this member starts: the workload's `start_ms`, plus `stagger_ms` per member
    /// before it (the runner starts its program then).
    pub fn start(self, workload: &Workload) -> Duration {
        Duration::from_millis(workload.start_ms + self.index * workload.stagger_ms)
    }

    /// This member's first message index: members' messages are numbered apart, so each
    /// message of the run has its own index (and payload).
    fn first_index(self, workload: &Workload) -> u64 {
        self.index * Self::block(workload)
    }

    /// How many message indexes each member has.
    fn block(workload: &Workload) -> u64 {
        (u64::from(workload.messages) * u64::from(workload.carriers)).max(1)
    }

    /// The member that sent (or was sent) message `index`: each member's carriers are
    /// independent, so order holds only among one member's messages.
    pub fn of(workload: &Workload, index: u64) -> Member {
        Member {
            index: index / Self::block(workload),
        }
    }
}

/// Initiates the client's carrier and records how the race went.
async fn initiate(
    net: Arc<dyn Net>,
    workload: &Workload,
    config: Configuration,
    trace: &SharedTrace,
    first: Option<Message>,
    member: Member,
) -> Option<Carrier> {
    {
        let mut t = trace.lock();
        let now = now_ms();
        t.initiated_ms.get_or_insert(now);
        t.initiations.push(now);
    }
    let started = tokio::time::Instant::now();
    let remote = Remote::new(workload.server.get_ref().clone(), workload.port);
    let result = match first {
        Some(message) => Carrier::initiate_with(net, remote, config, message)
            .await
            .map(|(c, _handle)| c),
        None => Carrier::initiate(net, remote, config).await,
    };
    match result {
        Ok(carrier) if !member.primary() => Some(carrier),
        Ok(carrier) => {
            let mut t = trace.lock();
            if let Some(interface) = carrier.interface() {
                t.path_events.push(reports::PathEvent {
                    at_ms: now_ms(),
                    event: PathEventKind::Start,
                    interface: Some(interface),
                    reason: None,
                });
            }

            t.protocol = Some(carrier.protocol().name().to_string());
            t.establishment = carrier.establishment().map(|r| establishment(r, None));
            Some(carrier)
        }
        Err(e) if !member.primary() => {
            trace.fail(format!("client {} initiate: {e}", member.index + 1));
            None
        }
        Err(e) => {
            // The error names every attempt; the report keeps them and the failure.
            let report = match &e {
                postsock::Error::NoCandidate { report, .. } => (**report).clone(),
                _ => postsock::EstablishmentReport {
                    duration: started.elapsed(),
                    ..Default::default()
                },
            };
            let record = establishment(&report, Some(e.to_string()));
            trace.lock().establishment = Some(record);
            None
        }
    }
}

/// A trace shared by the programs of one run.
#[derive(Debug, Clone, Default)]
pub struct SharedTrace(Arc<Mutex<Trace>>);

impl SharedTrace {
    /// Locks the trace.
    pub fn lock(&self) -> MutexGuard<'_, Trace> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, what: String) {
        self.lock().error.get_or_insert(what);
    }

    fn sent(&self, direction: Direction, id: u64, bytes: usize) {
        let record = MessageRecord::new(direction, id, bytes as u64, now_ms());
        self.lock().messages.insert((direction, id), record);
    }

    /// Records a message sent with `props`; its antecedents are carrier message ids, which
    /// are trace ids less `first` (the sender's first index).
    fn sent_with(
        &self,
        (direction, id, first): (Direction, u64, u64),
        bytes: usize,
        props: &MessageProperties,
    ) {
        let mut record = MessageRecord::new(direction, id, bytes as u64, now_ms());
        record.niceness = Some(props.niceness);
        record.deadline_ms = props
            .lifetime
            .map(|l| reports::model::round_us(record.sent_ms + l.as_secs_f64() * 1000.0));
        record.antecedents = props.antecedents.iter().map(|a| a + first).collect();
        record.reliable = props.reliable;
        self.lock().messages.insert((direction, id), record);
    }

    fn outcome(&self, direction: Direction, id: u64, outcome: &SendStatus) {
        if let Some(m) = self.lock().messages.get_mut(&(direction, id)) {
            m.outcome = Some(outcome.name().to_string());
        }
    }

    /// Records the delivery of `data`, a payload made by [`payload`], travelling `direction`;
    /// returns its index (a payload without one is a failure of the run).
    fn received(
        &self,
        workload: &Workload,
        seed: u64,
        direction: Direction,
        data: &[u8],
    ) -> Option<u64> {
        let (index, intact) = intact(workload, seed, data);
        match index {
            Some(i) => self.delivered(direction, i, intact),
            None => self.fail(format!(
                "{}: a {} B message with no index",
                direction.label(),
                data.len()
            )),
        }
        index
    }

    fn path_event(&self, event: PathEventKind, interface: Option<String>, reason: Option<String>) {
        self.lock().path_events.push(reports::PathEvent {
            at_ms: now_ms(),
            event,
            interface,
            reason,
        });
    }

    fn delivered(&self, direction: Direction, id: u64, intact: bool) {
        let t = now_ms();
        let mut trace = self.lock();
        match trace.messages.get_mut(&(direction, id)) {
            Some(m) => {
                m.delivered_ms.push(t);
                m.intact &= intact;
            }
            None => {
                trace.error.get_or_insert(format!(
                    "{} message {id} was delivered but never sent",
                    direction.label()
                ));
            }
        }
    }
}

/// The deterministic payload of client message `index` for `seed`.
pub fn payload(workload: &Workload, seed: u64, index: u64) -> Vec<u8> {
    let mut rng = sim::rng::stream(seed, &format!("workload/message/{index}"));
    // Every carrier of a run starts with a min_size message, then a max_size one.
    let size = match index % u64::from(workload.messages.max(1)) {
        0 => workload.min_size,
        1 => workload.max_size,
        _ => {
            let (lo, hi) = (
                (workload.min_size as f64).ln(),
                (workload.max_size as f64).ln(),
            );
            let size = rng.gen_range(lo..=hi).exp().round() as usize;
            size.clamp(workload.min_size, workload.max_size)
        }
    };
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    // The first 8 bytes name the message, so the receiver knows which one it got whatever
    // the transport's own message naming (scenario files require min_size >= 8).
    let n = data.len().min(8);
    data[..n].copy_from_slice(&index.to_be_bytes()[..n]);
    data
}

/// The index a payload made by [`payload`] carries.
pub fn index_of(data: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = data.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Whether `data` is exactly message `index`'s payload.
fn intact(workload: &Workload, seed: u64, data: &[u8]) -> (Option<u64>, bool) {
    match index_of(data) {
        Some(i) => (Some(i), data == &payload(workload, seed, i)[..]),
        None => (None, false),
    }
}

/// Listens on the workload's port and runs `handle` on every carrier accepted.
async fn serve<F, Fut>(
    trace: &SharedTrace,
    net: Arc<dyn Net>,
    config: Configuration,
    workload: &Workload,
    handle: F,
) -> turmoil::Result
where
    F: Fn(Carrier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A host with an IPv6 address listens on `[::]` (dual-stack where it has both).
    let v6 = net
        .interfaces()
        .iter()
        .any(|i| i.addrs.iter().any(|a| a.is_ipv6()));
    let local = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, workload.port).into()
    } else {
        ([0, 0, 0, 0], workload.port).into()
    };
    let mut listener = Listener::bind(net, local, config).await?;
    loop {
        let carrier = listener.accept().await?;
        trace.lock().carriers_accepted += 1;
        tokio::spawn(handle(carrier));
    }
}

/// Records a server carrier's event other than a message: its path's dormancy and changes,
/// its end. An error is the run's failure.
fn server_event(trace: &SharedTrace, event: Event) -> Result<(), String> {
    match event {
        Event::ConnectionError(e) => {
            trace.path_event(PathEventKind::ServerEnded, None, Some(e.to_string()));
            Err(format!("server carrier: {e}"))
        }
        Event::ReceiveError { id, error } => Err(format!("server receive {id}: {error}")),
        Event::Dormant => {
            trace.path_event(PathEventKind::ServerDormant, None, None);
            Ok(())
        }
        Event::ProtocolChange { protocol } => {
            let name = protocol.name().to_string();
            trace.path_event(PathEventKind::ServerProtocolChange, None, Some(name));
            Ok(())
        }
        Event::PathChange { remote } => {
            trace.path_event(
                PathEventKind::ServerPathChange,
                Some(remote.to_string()),
                None,
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Records a client carrier's event other than a message: handovers, dormancy, its end.
/// An error is the run's failure.
fn client_event(trace: &SharedTrace, event: Event, member: Member) -> Result<(), String> {
    if !member.primary() {
        // Only the first client's path is the report's.
        return match event {
            Event::ConnectionError(e) => Err(format!("client {}: {e}", member.index + 1)),
            Event::ReceiveError { id, error } => {
                Err(format!("client {} receive {id}: {error}", member.index + 1))
            }
            _ => Ok(()),
        };
    }
    match event {
        Event::Handover { interface, reason } => {
            trace.path_event(
                PathEventKind::Handover,
                Some(interface),
                Some(reason.name().into()),
            );
            Ok(())
        }
        Event::Dormant => {
            trace.path_event(PathEventKind::Dormant, None, None);
            Ok(())
        }
        Event::ProtocolChange { protocol } => {
            let name = protocol.name().to_string();
            trace.path_event(PathEventKind::ProtocolChange, None, Some(name));
            Ok(())
        }
        Event::ConnectionError(e) => Err(format!("client carrier: {e}")),
        Event::ReceiveError { id, error } => Err(format!("client receive {id}: {error}")),
        _ => Ok(()),
    }
}

/// The echo server: accepts carriers and sends every message straight back.
pub async fn echo_server(
    net: Arc<dyn Net>,
    config: Configuration,
    workload: Workload,
    seed: u64,
    trace: SharedTrace,
) -> turmoil::Result {
    serve(
        &trace.clone(),
        net,
        config,
        &workload.clone(),
        move |carrier| echo_carrier(carrier, workload.clone(), seed, trace.clone()),
    )
    .await
}

/// Sends every message that arrives on `carrier` straight back, until the client closes.
async fn echo_carrier(carrier: Carrier, workload: Workload, seed: u64, trace: SharedTrace) {
    while let Some(event) = carrier.next_event().await {
        match event {
            Event::Received(msg) => {
                let dir = Direction::ClientToServer;
                let Some(index) = trace.received(&workload, seed, dir, &msg.data) else {
                    return;
                };
                // The echo of message i is recorded as server → client message i.
                trace.sent(Direction::ServerToClient, index, msg.data.len());
                if let Err(e) = carrier.send_bytes(msg.data).await {
                    return trace.fail(format!("server send: {e}"));
                }
            }
            Event::Closed => break,
            other => {
                if let Err(e) = server_event(&trace, other) {
                    return trace.fail(e);
                }
            }
        }
    }
    let _ = carrier.close().await;
}

/// Where the two peers of a rendezvous workload meet, and the secret they share.
#[derive(Debug, Clone)]
pub struct Meeting {
    /// Rendezvous, STUN and TURN servers.
    pub punch: postsock::traversal::punch::PunchConfig,
    /// The pairing secret.
    pub secret: Vec<u8>,
}

/// One peer of a rendezvous workload: meets the other (`Carrier::rendezvous`), then runs
/// the echo client on the carrier (the workload's client) or echoes (its server).
#[allow(clippy::too_many_arguments)]
pub async fn rendezvous_peer(
    net: Arc<dyn Net>,
    config: Configuration,
    workload: Workload,
    seed: u64,
    deadline: Duration,
    trace: SharedTrace,
    meeting: Meeting,
    client: bool,
) -> turmoil::Result {
    if !client && workload.server_start_ms > 0 {
        tokio::time::sleep(Duration::from_millis(workload.server_start_ms)).await;
    }
    if client {
        tokio::time::sleep(Duration::from_millis(workload.start_ms)).await;
        let mut t = trace.lock();
        let now = now_ms();
        t.initiated_ms.get_or_insert(now);
        t.initiations.push(now);
    }
    let who = if client { "client" } else { "server" };
    let carrier = match Carrier::rendezvous(net, &meeting.secret, &meeting.punch, config).await {
        Ok(c) => c,
        Err(e) => {
            trace.fail(format!("{who} rendezvous: {e}"));
            return Ok(());
        }
    };
    if let Some(r) = carrier.rendezvous_report() {
        let mut t = trace.lock();
        let relayed = r.path != postsock::traversal::punch::PathKind::Direct;
        *t.relayed.get_or_insert(relayed) |= relayed;
        if client {
            t.rendezvous_ms = Some(ms(r.ready));
            t.protocol = Some(carrier.protocol().name().to_string());
        } else {
            t.server_rendezvous_ms = Some(ms(r.ready));
        }
    }
    if client {
        let only = Member { index: 0 };
        echo_round(
            Arc::new(carrier),
            &workload,
            seed,
            (0, 0),
            deadline,
            &trace,
            only,
        )
        .await;
    } else {
        trace.lock().carriers_accepted += 1;
        echo_carrier(carrier, workload, seed, trace).await;
    }
    Ok(())
}

/// The echo client: initiates, sends every message, waits for every echo, closes.
pub async fn echo_client(
    net: Arc<dyn Net>,
    config: Configuration,
    workload: Workload,
    seed: u64,
    deadline: Duration,
    trace: SharedTrace,
    member: Member,
) -> turmoil::Result {
    // With `carriers = N` the client runs N carriers one after the other (message indices
    // continue), so a later one can profit from what the association learnt.
    for round in 0..u64::from(workload.carriers) {
        if round > 0 && workload.carrier_gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(workload.carrier_gap_ms)).await;
        }
        let base = member.first_index(&workload) + round * u64::from(workload.messages);
        // With `first_idempotent`, each carrier is initiated with its first message (which
        // may then travel in 0-RTT when it is idempotent and a ticket is held).
        let first = workload.first_idempotent.map(|idempotent| {
            let data = payload(&workload, seed, base);
            trace.sent(Direction::ClientToServer, base, data.len());
            let mut m = Message::new(data);
            m.properties.idempotent = idempotent;
            m
        });
        let skip = u64::from(first.is_some());
        let Some(carrier) = initiate(
            net.clone(),
            &workload,
            config.clone(),
            &trace,
            first,
            member,
        )
        .await
        else {
            return Ok(());
        };
        let carrier = Arc::new(carrier);
        echo_round(
            carrier.clone(),
            &workload,
            seed,
            (base, skip),
            deadline,
            &trace,
            member,
        )
        .await;
        if member.primary() {
            trace.lock().resumed.push(carrier.resumed());
        }
        if trace.lock().error.is_some() {
            break;
        }
    }
    Ok(())
}

async fn echo_round(
    carrier: Arc<Carrier>,
    workload: &Workload,
    seed: u64,
    (base, already_sent): (u64, u64),
    deadline: Duration,
    trace: &SharedTrace,
    member: Member,
) {
    let sender = {
        let (carrier, workload, trace) = (carrier.clone(), workload.clone(), trace.clone());
        tokio::spawn(async move {
            for i in base + already_sent..base + u64::from(workload.messages) {
                if i > base && workload.interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(workload.interval_ms)).await;
                }
                let data = payload(&workload, seed, i);
                let len = data.len();
                trace.sent(Direction::ClientToServer, i, len);
                if let Err(e) = carrier.send_bytes(data).await {
                    return trace.fail(format!("client send {i}: {e}"));
                }
            }
        })
    };
    let receive_all = async {
        let mut echoes = 0;
        while echoes < workload.messages {
            match carrier.next_event().await {
                Some(Event::Received(msg)) => {
                    let dir = Direction::ServerToClient;
                    if trace.received(workload, seed, dir, &msg.data).is_none() {
                        return;
                    }
                    echoes += 1;
                }
                Some(Event::Closed) | None => {
                    return trace.fail("server closed the carrier early".into())
                }
                Some(other) => {
                    if let Err(e) = client_event(trace, other, member) {
                        return trace.fail(e);
                    }
                }
            }
        }
    };
    if tokio::time::timeout(deadline, receive_all).await.is_err() {
        trace.fail(format!(
            "not every echo arrived within {} s",
            deadline.as_secs()
        ));
        // Past the deadline a graceful close could wait for ever on a path that still
        // barely works: give up on what is outstanding.
        sender.abort();
        carrier.abort();
        return;
    }
    if trace.lock().error.is_some() {
        // The carrier ended with an error: nothing more will be sent or echoed.
        sender.abort();
        return;
    }
    let _ = sender.await;
    if let Err(e) = carrier.close().await {
        trace.fail(format!("close: {e}"));
    }
}

/// The stream server: accepts carriers and records every message it receives.
pub async fn stream_server(
    net: Arc<dyn Net>,
    config: Configuration,
    workload: Workload,
    seed: u64,
    trace: SharedTrace,
) -> turmoil::Result {
    serve(
        &trace.clone(),
        net,
        config,
        &workload.clone(),
        move |carrier| {
            let (workload, trace) = (workload.clone(), trace.clone());
            async move {
                while let Some(event) = carrier.next_event().await {
                    match event {
                        Event::Received(msg) => {
                            let dir = Direction::ClientToServer;
                            trace.received(&workload, seed, dir, &msg.data);
                        }
                        other => {
                            if let Err(e) = server_event(&trace, other) {
                                return trace.fail(e);
                            }
                        }
                    }
                }
            }
        },
    )
    .await
}

/// The stream client: sends every message with its properties, records each message's
/// terminal outcome, closes.
pub async fn stream_client(
    net: Arc<dyn Net>,
    config: Configuration,
    workload: Workload,
    seed: u64,
    deadline: Duration,
    trace: SharedTrace,
    member: Member,
) -> turmoil::Result {
    let Some(carrier) = initiate(net, &workload, config, &trace, None, member).await else {
        return Ok(());
    };
    let first = member.first_index(&workload);
    let done = tokio::sync::Notify::new();
    // The client's own events: path changes for the report.
    let watch_events = async {
        loop {
            let event = tokio::select! {
                biased;
                _ = done.notified() => return,
                e = carrier.next_event() => e,
            };
            match event {
                Some(event) => {
                    if let Err(e) = client_event(&trace, event, member) {
                        return trace.fail(e);
                    }
                }
                None => return,
            }
        }
    };
    let run = async {
        let mut handles = Vec::new();
        for i in first..first + u64::from(workload.messages) {
            if i > first && workload.interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(workload.interval_ms)).await;
            }
            let data = payload(&workload, seed, i);
            let props = workload.properties(i - first);
            trace.sent_with((Direction::ClientToServer, i, first), data.len(), &props);
            let message = Message {
                data: data.into(),
                properties: props,
            };
            match carrier.send(message).await {
                Ok(handle) => handles.push((i, handle)),
                Err(e) => {
                    // The carrier is gone: this message failed, the rest are never sent;
                    // the outcomes of those sent before are still recorded.
                    trace.fail(format!("client send {i}: {e}"));
                    let failed = SendStatus::Failed(e.to_string());
                    trace.outcome(Direction::ClientToServer, i, &failed);
                    break;
                }
            }
        }
        for (i, handle) in handles {
            let outcome = handle.outcome().await;
            trace.outcome(Direction::ClientToServer, i, &outcome);
        }
    };
    let run = async {
        let settled = tokio::time::timeout(deadline, run).await;
        done.notify_one();
        settled
    };
    if tokio::join!(run, watch_events).0.is_err() {
        trace.fail(format!(
            "not every message was settled within {} s",
            deadline.as_secs()
        ));
        // Past the deadline a graceful close could wait for ever: give up instead.
        carrier.abort();
    } else if let Err(e) = carrier.close().await {
        trace.fail(format!("close: {e}"));
    }
    // Acknowledged means the server's transport has the message; give its application the
    // time to take what is still queued before the simulation ends with this client.
    tokio::time::sleep(LINGER).await;
    Ok(())
}

/// How long a stream client stays after closing.
const LINGER: Duration = Duration::from_secs(2);
