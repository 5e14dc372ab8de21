//! Scenario files: topology + workload + fault timeline + expectations, in TOML.
//!
//! The format is documented in `scenarios/README.md`. Every table rejects unknown keys, and
//! every error names the file, line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use std::collections::BTreeMap;

use sim::{Fault, GatewaySpec, HostSpec, WorldSpec};
use toml::Spanned;

use crate::locate::{key_offset, Step};

/// The longest scenario: a day of simulated time.
const MAX_DURATION_S: u64 = 86_400;
/// The largest message a workload may send: postsock's default maximum message size.
const MAX_MESSAGE: usize = 16 << 20;
/// The most messages a workload may send.
const MAX_MESSAGES: u32 = 1_000_000;
/// The most cycles of one flap.
const MAX_FLAPS: u32 = 10_000;

/// A scenario that failed to load: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ScenarioError {
    /// The file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ScenarioError {
    /// An error about the file as a whole (line and column 0).
    pub fn whole_file(path: &Path, message: String) -> Self {
        ScenarioError {
            path: path.display().to_string(),
            line: 0,
            column: 0,
            message,
        }
    }
}

/// The protocols a workload's carrier may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolName {
    /// QUIC only.
    Quic,
    /// TLS 1.3 over TCP only.
    TlsTcp,
    /// Whatever the stack selects and wins the race (QUIC, then TLS/TCP).
    Any,
}

impl ProtocolName {
    /// The postsock protocols allowed.
    pub fn protocols(self) -> Vec<postsock::Protocol> {
        match self {
            ProtocolName::Quic => vec![postsock::Protocol::Quic],
            ProtocolName::TlsTcp => vec![postsock::Protocol::TlsTcp],
            ProtocolName::Any => vec![postsock::Protocol::Quic, postsock::Protocol::TlsTcp],
        }
    }

    /// The name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolName::Quic => "quic",
            ProtocolName::TlsTcp => "tls-tcp",
            ProtocolName::Any => "any",
        }
    }
}

/// What the application does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// The client sends messages; the server echoes each one back.
    Echo,
    /// The client sends messages one way, with per-message properties; the server receives.
    Stream,
    /// Both hosts are peers behind their NATs: they meet through the `rendezvous` host
    /// (`Carrier::rendezvous`: STUN from `stun`, hole punching, the TURN relay on `turn`
    /// when nothing direct works); then the client sends messages and the server echoes them.
    RendezvousEcho,
}

/// The workload table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The kind of workload.
    pub kind: WorkloadKind,
    /// Host that initiates the carrier.
    pub client: Spanned<String>,
    /// Host that listens.
    pub server: Spanned<String>,
    /// Protocol of the carrier.
    pub protocol: ProtocolName,
    /// Messages the client sends.
    pub messages: u32,
    /// Smallest message in bytes (message 0 has this size); at least 8.
    #[serde(default = "eight")]
    pub min_size: usize,
    /// Largest message in bytes (message 1 has this size); others are log-uniform between.
    #[serde(default = "sixty_four_k")]
    pub max_size: usize,
    /// Gap between two sends in ms (0 = send all at once).
    #[serde(default)]
    pub interval_ms: u64,
    /// When the client starts, in simulated ms.
    #[serde(default)]
    pub start_ms: u64,
    /// A policy file (JSON, `postsock::policy`) the client applies to each carrier it
    /// initiates; a path relative to the scenario file's directory.
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    /// The client application's name, for policies that match on it.
    #[serde(default)]
    pub application: Option<String>,
    /// A client group (`[[host]] count = N`): member k (from 0) starts `k × stagger_ms`
    /// after `start_ms` (default 0: all at once).
    #[serde(default)]
    pub stagger_ms: u64,
    /// Port the server listens on.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Stream only: message i has niceness `niceness[i % len]` (default all 0).
    #[serde(default)]
    pub niceness: Vec<u32>,
    /// Stream only: every message's lifetime in ms.
    #[serde(default)]
    pub lifetime_ms: Option<u64>,
    /// Stream only: messages come in groups of this many; every later message of a group
    /// depends on the group's first (its antecedent).
    #[serde(default)]
    pub antecedent_group: Option<u32>,
    /// Stream only: whether messages are ordered (default true).
    #[serde(default = "yes")]
    pub ordered: bool,
    /// Stream only: whether messages are reliable (default true; false needs QUIC).
    #[serde(default = "yes")]
    pub reliable: bool,
    /// The client's connection attempt delay in ms (default: postsock's 250 ms).
    #[serde(default)]
    pub attempt_delay_ms: Option<u64>,
    /// The client's connect timeout in ms (default: postsock's 10 s).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Echo only: carriers the client runs one after the other (default 1).
    #[serde(default = "one_carrier")]
    pub carriers: u32,
    /// Whether the client keeps an association store (racing cache, TLS sessions) across
    /// its carriers (default false).
    #[serde(default)]
    pub association: bool,
    /// With an association that knows the RTT, shorten the attempt delay to 2 × RTT.
    #[serde(default)]
    pub adaptive_attempt_delay: bool,
    /// Echo only: pause between two carriers, in ms.
    #[serde(default)]
    pub carrier_gap_ms: u64,
    /// Echo only: initiate each carrier with its first message
    /// (`Carrier::initiate_with`), marked idempotent or not — an idempotent one may travel in
    /// 0-RTT on a resumed QUIC carrier.
    #[serde(default)]
    pub first_idempotent: Option<bool>,
    /// The client's interface preferences, e.g. `{ wifi = "prefer", cell = "avoid" }`
    /// (require, prefer, no-preference, avoid, prohibit).
    #[serde(default)]
    pub interfaces: BTreeMap<String, InterfacePreference>,
    /// How long a better interface must stay up before the client moves back (ms; default
    /// postsock's 2 s).
    #[serde(default)]
    pub return_after_ms: Option<u64>,
    /// The dormant timeout of both ends, in s (default postsock's 30 s).
    #[serde(default)]
    pub dormant_timeout_s: Option<u64>,
    /// The keepalive interval of both ends, in ms (default postsock's 1000; 0: none).
    #[serde(default)]
    pub keepalive_ms: Option<u64>,
    /// Rendezvous only: the public host running the rendezvous server.
    #[serde(default)]
    pub rendezvous: Option<Spanned<String>>,
    /// Rendezvous only: the public host running the STUN server.
    #[serde(default)]
    pub stun: Option<Spanned<String>>,
    /// Rendezvous only: the public host running the TURN relay (none: no relay).
    #[serde(default)]
    pub turn: Option<Spanned<String>>,
    /// An oracle, off by default: the client acts on the loss the simulator knows each access
    /// link has (configured, not measured: no real host learns it this way). Off, the stack
    /// learns path quality only from what it measures and from interfaces going up or down.
    /// A run with it on names it in its report's `oracles`.
    #[serde(default)]
    pub link_quality: bool,
    /// Rendezvous-echo only: the server peer starts this late, in ms (default 0), so the
    /// peers reach the rendezvous apart.
    #[serde(default)]
    pub server_start_ms: u64,
}

/// A preference for an interface, as written in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterfacePreference {
    /// Only this interface (and other required ones).
    Require,
    /// This one first.
    Prefer,
    /// No preference.
    NoPreference,
    /// Others first.
    Avoid,
    /// Never.
    Prohibit,
}

impl InterfacePreference {
    /// As postsock's preference.
    pub fn preference(self) -> postsock::Preference {
        use postsock::Preference as P;
        match self {
            InterfacePreference::Require => P::Require,
            InterfacePreference::Prefer => P::Prefer,
            InterfacePreference::NoPreference => P::NoPreference,
            InterfacePreference::Avoid => P::Avoid,
            InterfacePreference::Prohibit => P::Prohibit,
        }
    }
}

fn one_carrier() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl Workload {
    /// The properties of message `index` of a stream workload.
    pub fn properties(&self, index: u64) -> postsock::MessageProperties {
        let mut p = postsock::MessageProperties {
            niceness: if self.niceness.is_empty() {
                0
            } else {
                self.niceness[(index % self.niceness.len() as u64) as usize]
            },
            lifetime: self.lifetime_ms.map(std::time::Duration::from_millis),
            ordered: self.ordered,
            reliable: self.reliable,
            ..Default::default()
        };
        if let Some(group) = self.antecedent_group {
            let head = index - index % u64::from(group);
            if head != index {
                p.antecedents.push(head);
            }
        }
        p
    }
}

fn eight() -> usize {
    8
}
fn sixty_four_k() -> usize {
    65_536
}
fn default_port() -> u16 {
    4433
}
fn default_duration() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum FaultAction {
    Ipv6Blackhole,
    Ipv6Restore,
    LinkDown,
    Blackhole,
    Flap,
    Bounce,
    SetMiddlebox,
    NatReboot,
    LinkUp,
    SetLink,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultEntry {
    at_ms: u64,
    action: Spanned<FaultAction>,
    host: Spanned<String>,
    /// Which interface of a multi-homed host (link actions).
    #[serde(default)]
    interface: Option<Spanned<String>>,
    /// `flap`: how long each down and each up phase lasts.
    #[serde(default)]
    period_ms: Option<u64>,
    /// `flap`: how many down-up cycles.
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    latency_ms: Option<u64>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    bandwidth_kbps: Option<u64>,
    #[serde(default)]
    queue_bytes: Option<usize>,
    #[serde(default)]
    middlebox: Option<sim::Middlebox>,
}

/// A fault at a point of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedFault {
    /// Simulated time in ms.
    pub at_ms: u64,
    /// The fault.
    pub fault: Fault,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectEntry {
    metric: Spanned<String>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

/// A bound on a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    /// Metric name (see `reports::Metrics::NAMES`).
    pub metric: String,
    /// Lower bound, inclusive.
    pub min: Option<f64>,
    /// Upper bound, inclusive.
    pub max: Option<f64>,
}

impl Expect {
    /// `min <= metric <= max` in words.
    pub fn name(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) if a == b => format!("{} == {a}", self.metric),
            (Some(a), Some(b)) => format!("{a} <= {} <= {b}", self.metric),
            (Some(a), None) => format!("{} >= {a}", self.metric),
            (None, Some(b)) => format!("{} <= {b}", self.metric),
            (None, None) => self.metric.clone(),
        }
    }

    /// Whether `value` satisfies the bounds.
    pub fn holds(&self, value: f64) -> bool {
        self.min.is_none_or(|m| value >= m) && self.max.is_none_or(|m| value <= m)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: String,
    #[serde(default = "default_duration")]
    duration_s: u64,
    #[serde(default)]
    host: Vec<HostSpec>,
    #[serde(default)]
    gateway: Vec<GatewaySpec>,
    #[serde(default)]
    dns: sim::DnsSpec,
    workload: Workload,
    #[serde(default)]
    fault: Vec<FaultEntry>,
    #[serde(default)]
    expect: Vec<ExpectEntry>,
}

/// A loaded, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name: the path below the scenario directory without `.toml`, e.g. `echo/quic`.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// One line on what it shows.
    pub description: String,
    /// Upper bound on simulated time.
    pub duration_s: u64,
    /// The topology.
    pub world: WorldSpec,
    /// The workload. Its `client` is the first of [`clients`](Self::clients).
    pub workload: Workload,
    /// The hosts running the workload's client: the workload's `client`, or every member of
    /// the group it names (`[[host]] count = N`), in order.
    pub clients: Vec<String>,
    /// Faults sorted by time.
    pub faults: Vec<TimedFault>,
    /// Expectations.
    pub expect: Vec<Expect>,
    /// The TOML it was parsed from (chaos rewrites its faults and parses it again).
    pub source: String,
    /// The client's policies (the workload's `policy` file, read when the scenario is).
    pub policies: Option<std::sync::Arc<postsock::PolicySet>>,
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turns a byte offset of the scenario text into a `file:line:col` error.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    /// An error at the key `path` (or the deepest key of it the text has; 1:1 if none).
    fn key(&self, path: &[Step], message: String) -> ScenarioError {
        self.at(key_offset(self.text, path).unwrap_or(0), message)
    }

    /// A world-spec error at the key it names.
    fn spec_error(&self, e: sim::SimError) -> ScenarioError {
        match &e {
            sim::SimError::Invalid { key, message } => {
                let path: Vec<Step> = key
                    .iter()
                    .map(|k| k.parse().map_or(Step::Key(k), Step::Index))
                    .collect();
                self.key(&path, message.clone())
            }
            _ => self.at(0, e.to_string()),
        }
    }

    fn at(&self, offset: usize, message: String) -> ScenarioError {
        let (line, column) = position(self.text, offset);
        ScenarioError {
            path: self.path.display().to_string(),
            line,
            column,
            message,
        }
    }
}

impl Scenario {
    /// Parses scenario `name` from `text` (read from `path`): the TOML, then the world, the
    /// workload, the fault timeline and the expectations, each checked where it is read.
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Self, ScenarioError> {
        let loc = Locator { path, text };
        let file: ScenarioFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim();
            // The TOML parser says nothing for some syntax errors (a key with no value at the
            // end of the file, say): the position is all it has.
            let message = if message.is_empty() {
                "invalid TOML: a value is missing or malformed here"
            } else {
                message
            };
            loc.at(offset, message.to_owned())
        })?;
        let world = WorldSpec {
            hosts: file.host,
            gateways: file.gateway,
            dns: file.dns,
        };
        world.validate().map_err(|e| loc.spec_error(e))?;
        if file.duration_s == 0 || file.duration_s > MAX_DURATION_S {
            return Err(loc.key(
                &[Step::Key("duration_s")],
                format!(
                    "duration_s must be between 1 and {MAX_DURATION_S} (a day), got {}",
                    file.duration_s
                ),
            ));
        }
        check_workload(&file.workload, &world, file.duration_s, &loc)?;
        let (world, workload, clients) =
            expand_groups(world, file.workload, file.duration_s, &loc)?;
        let faults = timeline(&file.fault, &world, &workload, file.duration_s, &loc)?;
        let expect = expectations(&file.expect, &loc)?;
        let policies = match &workload.policy {
            Some(file) => {
                let at = path.parent().unwrap_or(Path::new(".")).join(file.get_ref());
                let set = postsock::PolicySet::load(&at)
                    .map_err(|e| loc.at(file.span().start, format!("workload: {e}")))?;
                Some(std::sync::Arc::new(set))
            }
            None => None,
        };
        Ok(Scenario {
            name: name.to_owned(),
            path: path.to_owned(),
            description: file.description,
            duration_s: file.duration_s,
            world,
            workload,
            clients,
            faults,
            expect,
            source: text.to_owned(),
            policies,
        })
    }

    /// Reads and parses the scenario file at `path`, naming it `name`.
    pub fn load(name: &str, path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::whole_file(path, format!("cannot read: {e}")))?;
        Self::parse(name, path, &text)
    }
}

/// Expands host groups (`count = N`) into their members. The workload's client may name a
/// group (every member runs the client, each with its own carrier); no other workload role
/// may. Returns the expanded world, the workload with `client` set to the first member, and
/// every client host.
fn expand_groups(
    world: WorldSpec,
    mut workload: Workload,
    duration_s: u64,
    loc: &Locator,
) -> Result<(WorldSpec, Workload, Vec<String>), ScenarioError> {
    let group = |name: &str| {
        world
            .hosts
            .iter()
            .find(|h| h.name == name && h.count.is_some())
    };
    let roles = [
        Some(&workload.server),
        workload.rendezvous.as_ref(),
        workload.stun.as_ref(),
        workload.turn.as_ref(),
    ];
    for h in roles.into_iter().flatten() {
        if group(h.get_ref()).is_some() {
            return Err(loc.at(
                h.span().start,
                format!(
                    "`{}` is a host group (count): only the workload's client may be one",
                    h.get_ref()
                ),
            ));
        }
    }
    let clients = match group(workload.client.get_ref()) {
        Some(g) if workload.kind == WorkloadKind::RendezvousEcho => {
            return Err(loc.at(
                workload.client.span().start,
                format!(
                    "`{}` is a host group (count): a rendezvous workload has one client",
                    g.name
                ),
            ))
        }
        Some(g) => g.members(),
        None => vec![workload.client.get_ref().clone()],
    };
    let last = (clients.len() as u64 - 1).saturating_mul(workload.stagger_ms);
    if workload.start_ms.saturating_add(last) >= duration_s * 1000 {
        return Err(loc.key(
            &[Step::Key("workload"), Step::Key("stagger_ms")],
            format!(
                "workload: the last of {} clients would start at {} ms, not before the end \
                 of the scenario ({duration_s} s)",
                clients.len(),
                workload.start_ms.saturating_add(last)
            ),
        ));
    }
    let expanded = world.expand().map_err(|e| loc.spec_error(e))?;
    workload.client = Spanned::new(workload.client.span(), clients[0].clone());
    Ok((expanded, workload, clients))
}

/// The workload's hosts exist and its settings fit its kind and protocol.
fn check_workload(
    w: &Workload,
    world: &WorldSpec,
    duration_s: u64,
    loc: &Locator,
) -> Result<(), ScenarioError> {
    let endpoints: Vec<&str> = world.hosts.iter().map(|h| h.name.as_str()).collect();
    let known_host = |h: &Spanned<String>| -> Result<(), ScenarioError> {
        if endpoints.contains(&h.get_ref().as_str()) {
            return Ok(());
        }
        let message = format!(
            "unknown host `{}` (hosts: {})",
            h.get_ref(),
            endpoints.join(", ")
        );
        Err(loc.at(h.span().start, message))
    };
    // An error at `workload.<key>`.
    let at = |key: &str, message: &str| {
        Err(loc.key(
            &[Step::Key("workload"), Step::Key(key)],
            format!("workload: {message}"),
        ))
    };
    let fail =
        |message: &str| Err(loc.key(&[Step::Key("workload")], format!("workload: {message}")));
    known_host(&w.client)?;
    known_host(&w.server)?;
    if w.client.get_ref() == w.server.get_ref() {
        return Err(loc.at(
            w.server.span().start,
            "client and server must be different hosts".into(),
        ));
    }
    let infrastructure = [&w.rendezvous, &w.stun, &w.turn];
    for h in infrastructure.into_iter().flatten() {
        known_host(h)?;
        if h.get_ref() == w.client.get_ref() || h.get_ref() == w.server.get_ref() {
            return Err(loc.at(
                h.span().start,
                format!(
                    "`{}` is a peer of the workload; the rendezvous, stun and turn servers \
                     need hosts of their own (they may share one)",
                    h.get_ref()
                ),
            ));
        }
    }
    if w.kind == WorkloadKind::RendezvousEcho {
        if w.rendezvous.is_none() || w.stun.is_none() {
            return fail("kind = \"rendezvous-echo\" needs a `rendezvous` and a `stun` host");
        }
        if w.protocol != ProtocolName::Quic {
            return fail("kind = \"rendezvous-echo\" runs on QUIC: protocol = \"quic\"");
        }
    } else if infrastructure.iter().any(|h| h.is_some()) {
        return fail("rendezvous, stun and turn apply to kind = \"rendezvous-echo\" only");
    }
    if w.server_start_ms > 0 && w.kind != WorkloadKind::RendezvousEcho {
        return at(
            "server_start_ms",
            "server_start_ms applies to kind = \"rendezvous-echo\" only",
        );
    }
    if w.min_size < 8 || w.min_size > w.max_size {
        return at(
            "min_size",
            &format!(
            "need 8 <= min_size <= max_size (each message carries its 8-byte index), got {} and {}",
            w.min_size, w.max_size
        ),
        );
    }
    if w.max_size > MAX_MESSAGE {
        return at("max_size", &format!(
            "max_size must be at most {MAX_MESSAGE} (postsock's default maximum message size), got {}",
            w.max_size
        ));
    }
    if w.messages == 0 || w.messages > MAX_MESSAGES {
        return at(
            "messages",
            &format!(
                "messages must be between 1 and {MAX_MESSAGES}, got {}",
                w.messages
            ),
        );
    }
    if w.port == 0 {
        return at("port", "port must be between 1 and 65535");
    }
    if w.start_ms >= duration_s * 1000 {
        return at(
            "start_ms",
            &format!(
                "start_ms {} is not before the end of the scenario ({duration_s} s)",
                w.start_ms
            ),
        );
    }
    if w.attempt_delay_ms
        .is_some_and(|d| !(10..=60_000).contains(&d))
    {
        return at(
            "attempt_delay_ms",
            "attempt_delay_ms must be between 10 and 60000 (RFC 8305 says at least 10 ms)",
        );
    }
    let zero_or_huge = |v: Option<u64>, max: u64| v.is_some_and(|v| v == 0 || v > max);
    if zero_or_huge(w.connect_timeout_ms, 3_600_000) {
        return at(
            "connect_timeout_ms",
            "connect_timeout_ms must be between 1 and 3600000",
        );
    }
    if zero_or_huge(w.dormant_timeout_s, 86_400) {
        return at(
            "dormant_timeout_s",
            "dormant_timeout_s must be between 1 and 86400",
        );
    }
    if zero_or_huge(w.lifetime_ms, 86_400_000) {
        return at("lifetime_ms", "lifetime_ms must be between 1 and 86400000");
    }
    if w.keepalive_ms.is_some_and(|k| k > 3_600_000) {
        return at(
            "keepalive_ms",
            "keepalive_ms must be at most 3600000 (0: no keepalive)",
        );
    }
    if w.first_idempotent.is_some() && w.kind != WorkloadKind::Echo {
        return at(
            "first_idempotent",
            "first_idempotent applies to kind = \"echo\" only",
        );
    }
    let client_spec = world.hosts.iter().find(|h| &h.name == w.client.get_ref());
    let client_interfaces: Vec<&str> = match client_spec {
        Some(h) if !h.interfaces.is_empty() => {
            h.interfaces.iter().map(|i| i.name.as_str()).collect()
        }
        _ => vec!["eth0"],
    };
    for name in w.interfaces.keys() {
        if !client_interfaces.contains(&name.as_str()) {
            return Err(loc.key(
                &[
                    Step::Key("workload"),
                    Step::Key("interfaces"),
                    Step::Key(name),
                ],
                format!(
                    "workload: the client `{}` has no interface `{name}` (interfaces: {})",
                    w.client.get_ref(),
                    client_interfaces.join(", ")
                ),
            ));
        }
    }
    let stream_only = !w.niceness.is_empty()
        || w.lifetime_ms.is_some()
        || w.antecedent_group.is_some()
        || !w.ordered
        || !w.reliable;
    if w.kind != WorkloadKind::Stream && stream_only {
        return fail("niceness, lifetime_ms, antecedent_group, ordered and reliable apply to kind = \"stream\" only");
    }
    if w.carriers == 0 || w.carriers > 10_000 || (w.carriers > 1 && w.kind != WorkloadKind::Echo) {
        return at(
            "carriers",
            "carriers must be between 1 and 10000, and more than 1 only for kind = \"echo\"",
        );
    }
    if w.antecedent_group.is_some_and(|g| g < 2) {
        return at("antecedent_group", "antecedent_group must be at least 2");
    }
    if !w.reliable && w.protocol != ProtocolName::Quic {
        return at(
            "reliable",
            "unreliable messages need protocol = \"quic\" (QUIC DATAGRAM frames)",
        );
    }
    if !w.reliable && w.max_size > 1200 {
        return at(
            "max_size",
            &format!(
                "unreliable messages must fit one datagram: max_size {} > 1200",
                w.max_size
            ),
        );
    }
    Ok(())
}

/// The fault timeline, sorted by time: each entry's keys fit its action, flaps expanded into
/// their downs and ups, every fault checked against the world (`WorldSpec::check_fault`, the
/// one place faults are validated), nothing after the end of the scenario.
fn timeline(
    entries: &[FaultEntry],
    world: &WorldSpec,
    workload: &Workload,
    duration_s: u64,
    loc: &Locator,
) -> Result<Vec<TimedFault>, ScenarioError> {
    let mut faults = Vec::new();
    for (index, f) in entries.iter().enumerate() {
        let expanded = fault_entry(f, index, workload, loc)?;
        for t in &expanded {
            world.check_fault(&t.fault).map_err(|e| {
                let offset = match e.part {
                    sim::FaultPart::Host => f.host.span().start,
                    sim::FaultPart::Interface => f
                        .interface
                        .as_ref()
                        .map_or(f.action.span().start, |i| i.span().start),
                    // A bad parameter: at its key.
                    _ => e
                        .key
                        .and_then(|k| {
                            key_offset(
                                loc.text,
                                &[Step::Key("fault"), Step::Index(index), Step::Key(k)],
                            )
                        })
                        .unwrap_or(f.action.span().start),
                };
                loc.at(offset, e.message)
            })?;
        }
        let last = expanded.iter().map(|t| t.at_ms).max().unwrap_or(f.at_ms);
        if last >= duration_s * 1000 {
            return Err(loc.key(
                &[Step::Key("fault"), Step::Index(index), Step::Key("at_ms")],
                format!("fault at {last} ms is after the end of the scenario ({duration_s} s)"),
            ));
        }
        faults.extend(expanded);
    }
    faults.sort_by_key(|f| f.at_ms);
    Ok(faults)
}

/// One `[[fault]]` entry as the faults it stands for (a flap is several), its keys checked
/// against its action.
fn fault_entry(
    f: &FaultEntry,
    index: usize,
    workload: &Workload,
    loc: &Locator,
) -> Result<Vec<TimedFault>, ScenarioError> {
    let action = *f.action.get_ref();
    let key = |k: &str, message: String| {
        Err(loc.key(
            &[Step::Key("fault"), Step::Index(index), Step::Key(k)],
            message,
        ))
    };
    let here = |message: &str| Err(loc.at(f.action.span().start, message.to_owned()));
    let host = f.host.get_ref().clone();
    let link_action = matches!(
        action,
        FaultAction::LinkDown
            | FaultAction::LinkUp
            | FaultAction::Blackhole
            | FaultAction::Flap
            | FaultAction::SetLink
    );
    if let (Some(name), false) = (&f.interface, link_action) {
        return Err(loc.at(
            name.span().start,
            "interface belongs to the link actions (link-down, link-up, blackhole, flap, set-link)"
                .into(),
        ));
    }
    let interface = f.interface.as_ref().map(|i| i.get_ref().clone());
    let has_params = f.loss.is_some()
        || f.bandwidth_kbps.is_some()
        || f.queue_bytes.is_some()
        || f.latency_ms.is_some();
    if (f.period_ms.is_some() || f.count.is_some()) && action != FaultAction::Flap {
        return here("period_ms and count belong to action `flap` only");
    }
    if f.middlebox.is_some() && action != FaultAction::SetMiddlebox {
        return here("middlebox belongs to action `set-middlebox` only");
    }
    let at = |at_ms: u64, fault: Fault| TimedFault { at_ms, fault };
    let fault = match action {
        FaultAction::SetMiddlebox => {
            if has_params {
                return here("set-middlebox takes a middlebox, not link parameters");
            }
            let Some(middlebox) = f.middlebox.clone() else {
                return here("set-middlebox needs `middlebox = { ... }`");
            };
            Fault::SetMiddlebox { host, middlebox }
        }
        FaultAction::Ipv6Blackhole | FaultAction::Ipv6Restore
            if has_params || f.interface.is_some() =>
        {
            return here("ipv6-blackhole and ipv6-restore take only a host");
        }
        FaultAction::Ipv6Blackhole => Fault::Ipv6 {
            host,
            working: false,
        },
        FaultAction::Ipv6Restore => Fault::Ipv6 {
            host,
            working: true,
        },
        FaultAction::NatReboot if has_params => return here("nat-reboot takes no parameters"),
        FaultAction::NatReboot => Fault::NatReboot { host },
        FaultAction::LinkDown
        | FaultAction::LinkUp
        | FaultAction::Blackhole
        | FaultAction::Flap
        | FaultAction::Bounce
            if has_params =>
        {
            return here(
                "loss, bandwidth_kbps, queue_bytes and latency_ms belong to action `set-link` only",
            )
        }
        FaultAction::LinkDown => Fault::LinkDown { host, interface },
        FaultAction::LinkUp => Fault::LinkUp { host, interface },
        FaultAction::Blackhole => Fault::Blackhole { host, interface },
        FaultAction::Flap => {
            let (Some(period), Some(count)) = (f.period_ms, f.count) else {
                return here("flap needs `period_ms` (each phase) and `count` (cycles)");
            };
            if period == 0 || period > 86_400_000 {
                return key(
                    "period_ms",
                    format!("flap: period_ms must be between 1 and 86400000, got {period}"),
                );
            }
            if count == 0 || count > MAX_FLAPS {
                return key(
                    "count",
                    format!("flap: count must be between 1 and {MAX_FLAPS}, got {count}"),
                );
            }
            // 2 × 10000 × 86400000 fits a u64, and so does the end added to at_ms below
            // (at_ms itself is checked against the duration, at most a day).
            if f.at_ms > MAX_DURATION_S * 1000 {
                return key(
                    "at_ms",
                    format!("fault at {} ms is after any scenario's end", f.at_ms),
                );
            }
            // Down for a period, up for a period, `count` times.
            let mut out = Vec::new();
            for k in 0..u64::from(count) {
                let (host, interface) = (host.clone(), interface.clone());
                out.push(at(
                    f.at_ms + 2 * k * period,
                    Fault::LinkDown {
                        host: host.clone(),
                        interface: interface.clone(),
                    },
                ));
                out.push(at(
                    f.at_ms + (2 * k + 1) * period,
                    Fault::LinkUp { host, interface },
                ));
            }
            return Ok(out);
        }
        FaultAction::Bounce => {
            if host != *workload.server.get_ref() {
                return Err(loc.at(
                    f.host.span().start,
                    "only the workload's server can be bounced".into(),
                ));
            }
            Fault::Bounce { host }
        }
        FaultAction::SetLink => Fault::SetLink {
            host,
            interface,
            loss: f.loss,
            bandwidth_kbps: f.bandwidth_kbps,
            queue_bytes: f.queue_bytes,
            latency_ms: f.latency_ms,
        },
    };
    Ok(vec![at(f.at_ms, fault)])
}

/// The expectations: known metrics, each with a bound.
fn expectations(entries: &[ExpectEntry], loc: &Locator) -> Result<Vec<Expect>, ScenarioError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let key = |k: &str, message: String| {
                loc.key(
                    &[Step::Key("expect"), Step::Index(index), Step::Key(k)],
                    message,
                )
            };
            for (name, bound) in [("min", e.min), ("max", e.max)] {
                if bound.is_some_and(|b| !b.is_finite()) {
                    return Err(key(name, format!("{name} must be a finite number")));
                }
            }
            if let (Some(min), Some(max)) = (e.min, e.max) {
                if min > max {
                    return Err(key(
                        "min",
                        format!("min {min} is above max {max}: nothing can pass"),
                    ));
                }
            }
            let metric = e.metric.get_ref();
            if !reports::Metrics::known(metric) {
                return Err(loc.at(
                    e.metric.span().start,
                    format!(
                        "unknown metric `{metric}` (metrics: {})",
                        reports::Metrics::NAMES.join(", ")
                    ),
                ));
            }
            if e.min.is_none() && e.max.is_none() {
                return Err(loc.at(
                    e.metric.span().start,
                    "an expectation needs `min`, `max` or both".into(),
                ));
            }
            Ok(Expect {
                metric: metric.clone(),
                min: e.min,
                max: e.max,
            })
        })
        .collect()
}

/// Scenario files below `dir`, as (name, path), sorted by name.
pub fn discover(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                let rel = path.strip_prefix(dir).unwrap_or(&path).with_extension("");
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((name, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "t"
[[host]]
name = "c"
[[host]]
name = "s"
link = { latency_ms = 20 }
[workload]
kind = "echo"
client = "c"
server = "s"
protocol = "quic"
messages = 3
[[expect]]
metric = "messages_lost"
max = 0
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse("t", Path::new("t.toml"), text)
    }

    #[test]
    fn parses_a_good_file() {
        let s = parse(GOOD).expect("good scenario");
        assert_eq!(s.world.hosts[1].link.latency_ms, 20);
        assert_eq!(s.expect[0].name(), "messages_lost <= 0");
    }

    #[test]
    fn a_client_group_expands_into_its_members() {
        let text = GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 3")
            + "[[fault]]\nat_ms = 10\naction = \"link-down\"\nhost = \"c-2\"\n";
        let s = parse(&text).expect("a group");
        assert_eq!(s.clients, ["c-1", "c-2", "c-3"]);
        assert_eq!(s.workload.client.get_ref(), "c-1");
        let names: Vec<&str> = s.world.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["c-1", "c-2", "c-3", "s"]);
        assert!(s.world.hosts[..3]
            .iter()
            .all(|h| h.aliases == ["c"] && h.count.is_none()));
        // Faults name members; the group's own name is not a host.
        let on_group = GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 3")
            + "[[fault]]\nat_ms = 10\naction = \"link-down\"\nhost = \"c\"\n";
        let e = parse(&on_group).expect_err("a fault on the group");
        assert!(e.message.contains("c-1"), "{e}");
    }

    #[test]
    fn errors_carry_line_and_column() {
        let bad = GOOD.replace("messages = 3", "messages = 3\nmesages = 4");
        let e = parse(&bad).expect_err("unknown key");
        assert_eq!((e.line, e.column), (14, 1), "{e}");
        assert!(e.to_string().starts_with("t.toml:14:1: "), "{e}");
        assert!(e.message.contains("mesages"), "{e}");

        let bad = GOOD.replace("server = \"s\"", "server = \"nobody\"");
        let e = parse(&bad).expect_err("unknown host");
        assert_eq!((e.line, e.column), (11, 10), "{e}");
        assert!(e.message.contains("hosts: c, s"), "{e}");

        let bad = GOOD.replace("\"messages_lost\"", "\"lost\"");
        let e = parse(&bad).expect_err("unknown metric");
        assert!(e.message.contains("unknown metric `lost`"), "{e}");

        let bad = GOOD.replace("latency_ms = 20", "latency_ms = -1");
        assert!(parse(&bad).is_err());
    }

    /// Each bad value is an error at its own key (line:col of the key), never a panic, an
    /// abort or a silent acceptance.
    #[test]
    fn bad_values_are_errors_at_their_key() {
        let with_fault = |fault: &str| format!("{GOOD}[[fault]]\n{fault}\n");
        let cases: Vec<(String, &str, &str)> = vec![
            (GOOD.replace("messages = 3", "messages = 0"), "messages = 0", "messages must be between"),
            (format!("duration_s = 0\n{GOOD}"), "duration_s", "duration_s must be"),
            (GOOD.replace("messages = 3", "messages = 3\nport = 0"), "port = 0", "port must be"),
            (GOOD.replace("messages = 3", "messages = 3\nmax_size = 1000000000"), "max_size = 1", "max_size must be at most"),
            (GOOD.replace("messages = 3", "messages = 3\nmin_size = 100\nmax_size = 10"), "min_size = 100", "min_size <= max_size"),
            (GOOD.replace("messages = 3", "messages = 3\nconnect_timeout_ms = 0"), "connect_timeout_ms", "connect_timeout_ms must be"),
            (GOOD.replace("messages = 3", "messages = 3\ndormant_timeout_s = 0"), "dormant_timeout_s", "dormant_timeout_s must be"),
            (GOOD.replace("messages = 3", "messages = 3\nattempt_delay_ms = 2"), "attempt_delay_ms", "at least 10 ms"),
            (GOOD.replace("messages = 3", "messages = 3\nstart_ms = 60000"), "start_ms", "not before the end"),
            (GOOD.replace("messages = 3", "messages = 3\nfirst_idempotent = true").replace("\"echo\"", "\"stream\""), "first_idempotent", "kind = \"echo\" only"),
            (GOOD.replace("messages = 3", "messages = 3\ninterfaces = { wlan9 = \"prefer\" }"), "wlan9", "no interface `wlan9`"),
            (GOOD.replace("max = 0", "min = 5\nmax = 1"), "min = 5", "nothing can pass"),
            (GOOD.replace("max = 0", "max = nan"), "max = nan", "finite"),
            (with_fault("at_ms = 10\naction = \"flap\"\nhost = \"c\"\nperiod_ms = 100\ncount = 4000000000"), "count = 4", "count must be between"),
            (with_fault("at_ms = 10\naction = \"flap\"\nhost = \"c\"\nperiod_ms = 0\ncount = 2"), "period_ms = 0", "period_ms must be"),
            (with_fault("at_ms = 99000\naction = \"link-down\"\nhost = \"c\""), "at_ms = 99000", "after the end"),
            (GOOD.replace("name = \"s\"", "name = \"c\""), "name = \"c\"\nlink", "used twice"),
            (GOOD.replace("[[host]]\nname = \"c\"", "[[host]]\nname = \"c\"\ngateway = \"gw\""), "gateway = \"gw\"", "not defined"),
            (GOOD.replace("latency_ms = 20", "latency_ms = 99999999"), "99999999", "at most 60000"),
            (with_fault("at_ms = 10\naction = \"set-link\"\nhost = \"c\"\nlatency_ms = 70000"), "latency_ms = 7", "at most 60000"),
            (with_fault("at_ms = 10\naction = \"set-link\"\nhost = \"c\"\nloss = 1.5"), "loss = 1.5", "between 0.0 and 1.0"),
            (GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 0"), "count = 0", "count must be between 1 and 10000"),
            (GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 2\ninterfaces = [{ name = \"wifi\", gateway = \"g\" }]\n[[gateway]]\nname = \"g\""), "count = 2", "single-interface"),
            (GOOD.replace("name = \"s\"", "name = \"s\"\ncount = 3"), "\"s\"\nprotocol", "only the workload's client may be one"),
            (GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 10").replace("messages = 3", "messages = 3\nstagger_ms = 10000"), "stagger_ms", "would start at 90000 ms"),
            (GOOD.replace("name = \"c\"", "name = \"c\"\ncount = 2\n[[host]]\nname = \"c-1\""), "count = 2", "member name `c-1` is already taken"),
            (
                GOOD.replace("[[host]]\nname = \"c\"", "[[gateway]]\nname = \"gw\"\nlink = { bandwidth_kbps = 1000, latency_ms = 5 }\n[[host]]\nname = \"c\"\ngateway = \"gw\""),
                "latency_ms = 5",
                "leave link.latency_ms out",
            ),
        ];
        for (text, at, message) in cases {
            let e = match parse(&text) {
                Err(e) => e,
                Ok(_) => panic!("accepted:\n{text}"),
            };
            let offset = text
                .find(at)
                .unwrap_or_else(|| panic!("`{at}` not in\n{text}"));
            assert_eq!((e.line, e.column), position(&text, offset), "{e}\n{text}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    /// A property over seeded random mutations of every shipped scenario file: the parser
    /// answers with a scenario or an error that has a position inside the text, and never
    /// panics, aborts or allocates without bound.
    #[test]
    fn mutated_scenario_files_parse_or_fail_cleanly() {
        use rand::{Rng, SeedableRng};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let files = discover(&dir).expect("scenarios");
        let texts: Vec<String> = files
            .iter()
            .map(|(_, p)| std::fs::read_to_string(p).expect("read"))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        // Values that stress the checks: huge, negative, zero, NaN, wrong types.
        let values = [
            "0",
            "-1",
            "4294967296",
            "18446744073709551615",
            "nan",
            "inf",
            "1e308",
            "\"x\"",
            "true",
            "[]",
            "{}",
            "0.0",
            "99999999999",
        ];
        let mut accepted = 0;
        for round in 0..3000 {
            let mut text = texts[round % texts.len()].clone();
            for _ in 0..rng.gen_range(1..=3) {
                let bytes = text.as_bytes();
                // Replace the value after a random `=` or cut, insert, or delete a char.
                let at = rng.gen_range(0..=bytes.len());
                let at = (0..=at)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                match rng.gen_range(0..4) {
                    0 => {
                        if let Some(eq) = text[at..].find("= ") {
                            let start = at + eq + 2;
                            let end = text[start..].find('\n').map_or(text.len(), |e| start + e);
                            let v = values[rng.gen_range(0..values.len())];
                            text.replace_range(start..end, v);
                        }
                    }
                    1 => text.truncate(at),
                    2 => text.insert(
                        at,
                        ['[', ']', '"', '=', '\n', '{', '9'][rng.gen_range(0..7)],
                    ),
                    _ => {
                        if at < text.len() {
                            text.remove(at);
                        }
                    }
                }
            }
            match parse(&text) {
                Ok(s) => {
                    accepted += 1;
                    assert!(s.duration_s >= 1 && s.workload.messages >= 1);
                }
                Err(e) => {
                    assert!(
                        e.line >= 1 && e.line <= text.lines().count().max(1) + 1,
                        "{e}"
                    );
                    assert!(
                        !e.message.is_empty(),
                        "empty message at {}:{} for\n{text}",
                        e.line,
                        e.column
                    );
                }
            }
        }
        assert!(
            accepted > 50,
            "mutations must leave some files valid ({accepted})"
        );
    }
}
