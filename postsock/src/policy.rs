//! Policies, after NEAT's policy manager: a policy information base (PIB) of JSON policy
//! files that match a carrier's request — the remote, an interface being up, the
//! application — and set its selection properties, protocols, path preferences and racing
//! timers; and a characteristics information base (CIB) of what the stack learned about the
//! remote and path (the association's racing cache: RTT, blocked protocols, last winner),
//! which policies may match on too.
//!
//! ```json
//! { "policies": [
//!     { "name": "no-quic-where-blocked", "priority": 10,
//!       "match": { "remote": "*.example.net", "learned": { "blocked": "quic" } },
//!       "set": { "protocols": ["tls-tcp"], "attempt_delay_ms": 10 } },
//!     { "name": "bulk-avoids-cell",
//!       "match": { "application": "backup", "interface": "cell" },
//!       "set": { "interfaces": { "cell": "avoid" },
//!                "properties": { "multistreaming": "require" } } } ] }
//! ```
//!
//! Every matching policy applies, highest `priority` first (file order among equals); a
//! setting a higher policy made is kept (the later one is recorded as overridden). What each
//! policy chose is in the carrier's [`EstablishmentReport::policy`](crate::EstablishmentReport).
//! Unknown keys, names and values are errors that name the policy and key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{Configuration, Preference, Protocol, Remote};

/// A set of policies (one or more policy files).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Highest priority first; file order among equals.
    policies: Vec<Policy>,
}

/// One policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    name: String,
    #[serde(default)]
    priority: i32,
    #[serde(default, rename = "match")]
    when: Match,
    set: Settings,
}

/// When a policy applies; every key given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    /// The remote's name: exact, or `*.suffix` for any name below `suffix`.
    remote: Option<String>,
    port: Option<u16>,
    /// The application the configuration names ([`Configuration::application`]).
    application: Option<String>,
    /// An interface of this name is up.
    interface: Option<String>,
    /// What the stack learned about this remote (the CIB).
    learned: Option<Learned>,
}

/// A condition on the CIB.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Learned {
    /// This protocol failed its last race on the path and is still believed blocked.
    blocked: Option<String>,
    /// The path's RTT is known and at least this, ms.
    rtt_ms_at_least: Option<f64>,
    /// The path's RTT is known and below this, ms.
    rtt_ms_below: Option<f64>,
    /// This protocol won the last race.
    winner: Option<String>,
}

/// What a policy sets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The protocols to race, best first (replaces the configuration's list).
    protocols: Option<Vec<String>>,
    /// Selection properties by RFC 9622 name (snake case): require, prefer, no-preference,
    /// avoid, prohibit.
    #[serde(default)]
    properties: BTreeMap<String, String>,
    /// Interface preferences by interface name.
    #[serde(default)]
    interfaces: BTreeMap<String, String>,
    attempt_delay_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy file {path}: {message}")]
pub struct PolicyError {
    /// The file.
    pub path: String,
    /// What is wrong, and where.
    pub message: String,
}

/// What a policy chose for one carrier (or what the CIB knew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChoice {
    /// The policy's name; `learned` for the CIB's facts.
    pub policy: String,
    /// What it set, e.g. `protocols = [tls-tcp]`, or `… (kept: set by <policy>)`.
    pub setting: String,
}

/// What the stack knows about a remote and path (the CIB's view for one carrier).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Characteristics {
    /// The path's RTT as the last race measured it.
    pub rtt: Option<Duration>,
    /// Protocols believed blocked (they failed their last race).
    pub blocked: Vec<Protocol>,
    /// The protocol that won the last race.
    pub winner: Option<Protocol>,
}

impl Characteristics {
    fn describe(&self) -> String {
        let names = |ps: &[Protocol]| ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
        format!(
            "rtt {}, blocked [{}], last winner {}",
            self.rtt
                .map(|r| format!("{:.1} ms", r.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "unknown".into()),
            names(&self.blocked),
            self.winner.map_or("none", |w| w.name())
        )
    }
}

/// The request a policy is matched against.
#[derive(Debug, Clone)]
pub struct PolicyRequest<'a> {
    /// Where the carrier goes.
    pub remote: &'a Remote,
    /// Interfaces that are up.
    pub interfaces: Vec<String>,
    /// The CIB's view.
    pub learned: Characteristics,
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Quic, Protocol::TlsTcp, Protocol::Tcp];

fn protocol(name: &str) -> Result<Protocol, String> {
    PROTOCOLS
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| format!("unknown protocol `{name}` (known: quic, tls-tcp, tcp)"))
}

fn preference(value: &str) -> Result<Preference, String> {
    Ok(match value {
        "require" => Preference::Require,
        "prefer" => Preference::Prefer,
        "no-preference" => Preference::NoPreference,
        "avoid" => Preference::Avoid,
        "prohibit" => Preference::Prohibit,
        other => {
            return Err(format!(
                "unknown preference `{other}` (require, prefer, no-preference, avoid, prohibit)"
            ))
        }
    })
}

/// The selection property `name` of `props`, for reading or setting.
fn property<'a>(
    props: &'a mut crate::TransportProperties,
    name: &str,
) -> Result<&'a mut Preference, String> {
    Ok(match name {
        "reliability" => &mut props.reliability,
        "preserve_order" => &mut props.preserve_order,
        "preserve_msg_boundaries" => &mut props.preserve_msg_boundaries,
        "per_msg_reliability" => &mut props.per_msg_reliability,
        "zero_rtt_msg" => &mut props.zero_rtt_msg,
        "multistreaming" => &mut props.multistreaming,
        "security" => &mut props.security,
        other => {
            return Err(format!(
                "unknown property `{other}` (reliability, preserve_order, \
                 preserve_msg_boundaries, per_msg_reliability, zero_rtt_msg, multistreaming, \
                 security)"
            ))
        }
    })
}

impl Policy {
    /// Checks every name and value, so a bad file fails at load, not at a carrier.
    fn check(&self) -> Result<(), String> {
        let mut props = crate::TransportProperties::default();
        for (name, value) in &self.set.properties {
            property(&mut props, name)?;
            preference(value)?;
        }
        for value in self.set.interfaces.values() {
            preference(value)?;
        }
        for name in self.set.protocols.iter().flatten() {
            protocol(name)?;
        }
        if self.set.protocols.as_ref().is_some_and(Vec::is_empty) {
            return Err("`protocols` is empty".into());
        }
        if let Some(l) = &self.when.learned {
            for name in l.blocked.iter().chain(&l.winner) {
                protocol(name)?;
            }
        }
        if self
            .set
            .attempt_delay_ms
            .is_some_and(|d| !(10..=60_000).contains(&d))
        {
            return Err("attempt_delay_ms must be between 10 and 60000".into());
        }
        if self.set.connect_timeout_ms.is_some_and(|t| t == 0) {
            return Err("connect_timeout_ms must be at least 1".into());
        }
        Ok(())
    }

    fn matches(&self, request: &PolicyRequest<'_>, application: Option<&str>) -> bool {
        let m = &self.when;
        let host = request.remote.host.as_str();
        let remote_ok = m
            .remote
            .as_deref()
            .is_none_or(|want| match want.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => want == host,
            });
        let learned_ok = m.learned.as_ref().is_none_or(|l| {
            let c = &request.learned;
            let rtt_ms = c.rtt.map(|r| r.as_secs_f64() * 1000.0);
            l.blocked
                .as_deref()
                .is_none_or(|b| c.blocked.iter().any(|p| p.name() == b))
                && l.winner
                    .as_deref()
                    .is_none_or(|w| c.winner.is_some_and(|p| p.name() == w))
                && l.rtt_ms_at_least
                    .is_none_or(|min| rtt_ms.is_some_and(|r| r >= min))
                && l.rtt_ms_below
                    .is_none_or(|max| rtt_ms.is_some_and(|r| r < max))
        });
        remote_ok
            && m.port.is_none_or(|p| p == request.remote.port)
            && m.application
                .as_deref()
                .is_none_or(|a| Some(a) == application)
            && m.interface
                .as_ref()
                .is_none_or(|i| request.interfaces.contains(i))
            && learned_ok
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// Parses a policy file's JSON text (`path` names it in errors).
    pub fn parse(path: &str, text: &str) -> Result<Self, PolicyError> {
        let error = |message: String| PolicyError {
            path: path.to_owned(),
            message,
        };
        let file: PolicyFile = serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for p in &file.policies {
            if !names.insert(p.name.as_str()) {
                return Err(error(format!("policy `{}` is defined twice", p.name)));
            }
            p.check()
                .map_err(|m| error(format!("policy `{}`: {m}", p.name)))?;
        }
        let mut set = PolicySet::default();
        set.extend(file.policies);
        Ok(set)
    }

    /// Reads and parses the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Adds the policies of `other` (as if its file came after this one's).
    pub fn merge(&mut self, other: PolicySet) {
        self.extend(other.policies);
    }

    fn extend(&mut self, policies: Vec<Policy>) {
        self.policies.extend(policies);
        // Stable: file order among equal priorities.
        self.policies.sort_by_key(|p| std::cmp::Reverse(p.priority));
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Applies every policy that matches `request` to `config`, highest priority first;
    /// returns what each chose (the CIB's facts first, when it knows any).
    pub fn apply(
        &self,
        config: &mut Configuration,
        request: &PolicyRequest<'_>,
    ) -> Vec<PolicyChoice> {
        let mut choices = Vec::new();
        if request.learned != Characteristics::default() {
            choices.push(PolicyChoice {
                policy: "learned".into(),
                setting: request.learned.describe(),
            });
        }
        // Which policy set each setting first.
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        let application = config.application.clone();
        for p in self
            .policies
            .iter()
            .filter(|p| p.matches(request, application.as_deref()))
        {
            let mut choose = |key: String, shown: String, apply: &mut dyn FnMut()| {
                let setting = match owner.get(&key) {
                    Some(first) => format!("{shown} (not applied: set by {first})"),
                    None => {
                        apply();
                        owner.insert(key, p.name.clone());
                        shown
                    }
                };
                choices.push(PolicyChoice {
                    policy: p.name.clone(),
                    setting,
                });
            };
            let s = &p.set;
            if let Some(names) = &s.protocols {
                let list: Vec<Protocol> = names.iter().filter_map(|n| protocol(n).ok()).collect();
                let shown = format!("protocols = [{}]", names.join(", "));
                choose("protocols".into(), shown, &mut || {
                    config.protocols = list.clone()
                });
            }
            for (name, value) in &s.properties {
                let Ok(pref) = preference(value) else {
                    continue;
                };
                let shown = format!("properties.{name} = {value}");
                choose(format!("properties.{name}"), shown, &mut || {
                    if let Ok(slot) = property(&mut config.properties, name) {
                        *slot = pref;
                    }
                });
            }
            for (name, value) in &s.interfaces {
                let Ok(pref) = preference(value) else {
                    continue;
                };
                let shown = format!("interfaces.{name} = {value}");
                choose(format!("interfaces.{name}"), shown, &mut || {
                    config.paths.interface(name.clone(), pref);
                });
            }
            if let Some(ms) = s.attempt_delay_ms {
                let shown = format!("attempt_delay_ms = {ms}");
                choose("attempt_delay".into(), shown, &mut || {
                    config.attempt_delay = Duration::from_millis(ms)
                });
            }
            if let Some(ms) = s.connect_timeout_ms {
                let shown = format!("connect_timeout_ms = {ms}");
                choose("connect_timeout".into(), shown, &mut || {
                    config.connect_timeout = Duration::from_millis(ms)
                });
            }
        }
        choices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{ "policies": [
        { "name": "low", "match": { "remote": "*.example.net" },
          "set": { "protocols": ["quic", "tls-tcp"], "attempt_delay_ms": 100 } },
        { "name": "high", "priority": 5,
          "match": { "learned": { "blocked": "quic" } },
          "set": { "protocols": ["tls-tcp"] } },
        { "name": "backup", "match": { "application": "backup", "interface": "cell" },
          "set": { "interfaces": { "cell": "avoid" },
                   "properties": { "multistreaming": "require" } } } ] }"#;

    fn request<'a>(remote: &'a Remote, learned: Characteristics) -> PolicyRequest<'a> {
        PolicyRequest {
            remote,
            interfaces: vec!["wifi".into(), "cell".into()],
            learned,
        }
    }

    #[test]
    fn higher_priority_wins_and_every_choice_is_recorded() {
        let set = PolicySet::parse("p.json", FILE).expect("parses");
        let remote = Remote::new("api.example.net", 443);
        let learned = Characteristics {
            blocked: vec![Protocol::Quic],
            ..Characteristics::default()
        };
        let mut config = Configuration::default();
        let choices = set.apply(&mut config, &request(&remote, learned));
        assert_eq!(config.protocols, vec![Protocol::TlsTcp]);
        assert_eq!(config.attempt_delay, Duration::from_millis(100));
        let shown: Vec<String> = choices
            .iter()
            .map(|c| format!("{}: {}", c.policy, c.setting))
            .collect();
        assert_eq!(
            shown,
            [
                "learned: rtt unknown, blocked [quic], last winner none",
                "high: protocols = [tls-tcp]",
                "low: protocols = [quic, tls-tcp] (not applied: set by high)",
                "low: attempt_delay_ms = 100",
            ]
        );
    }

    #[test]
    fn conditions_must_all_hold() {
        let set = PolicySet::parse("p.json", FILE).expect("parses");
        // Not below example.net, nothing learned, no application: nothing applies.
        let remote = Remote::new("example.net", 443);
        let mut config = Configuration::default();
        assert!(set
            .apply(&mut config, &request(&remote, Characteristics::default()))
            .is_empty());
        assert_eq!(config.protocols, Configuration::default().protocols);
        // The application with its interface up.
        config.application = Some("backup".into());
        let choices = set.apply(&mut config, &request(&remote, Characteristics::default()));
        assert_eq!(choices.len(), 2, "{choices:?}");
        assert_eq!(config.properties.multistreaming, Preference::Require);
    }

    #[test]
    fn bad_files_name_the_policy_and_the_key() {
        for (text, want) in [
            (
                r#"{ "policies": [ { "name": "a", "set": { "protocols": ["sctp"] } } ] }"#,
                "policy `a`: unknown protocol `sctp`",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": { "properties": { "speed": "prefer" } } } ] }"#,
                "unknown property `speed`",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": { "interfaces": { "wifi": "love" } } } ] }"#,
                "unknown preference `love`",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": {}, "match": { "remotes": "x" } } ] }"#,
                "unknown field `remotes`",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": {} }, { "name": "a", "set": {} } ] }"#,
                "defined twice",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": { "attempt_delay_ms": 1 } } ] }"#,
                "between 10 and 60000",
            ),
            (
                r#"{ "policies": [ { "name": "a", "set": { "protocols": [] } } ] }"#,
                "`protocols` is empty",
            ),
            (r#"{ "policies": "#, "EOF while parsing"),
        ] {
            let e = PolicySet::parse("p.json", text).expect_err(text);
            assert!(e.to_string().starts_with("policy file p.json: "), "{e}");
            assert!(e.to_string().contains(want), "want `{want}` in: {e}");
        }
    }
}
