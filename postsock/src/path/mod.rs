//! Paths: which interface a carrier uses, watching interfaces come and go, and when to move.
//!
//! A [`PathMonitor`] follows the host's interfaces through [`Net`](crate::net::Net): in the simulator the
//! world tells it at once when an interface goes down or comes up; on a real host it reads
//! the OS interface list (getifaddrs) every second. [`PathPolicy`] (in the
//! [`Configuration`](crate::Configuration)) says which interfaces a carrier may use and which
//! it prefers; [`rank`] orders the usable ones. A client carrier starts on the best one and,
//! while it lives, moves (see `Carrier`'s path manager):
//!
//! - away at once when its interface goes down, when the path falls silent (nothing received
//!   for [`PathPolicy::silence_rtts`] smoothed RTTs although something was sent: a black hole
//!   nobody announced), or when its loss — measured, or reported by the link layer through
//!   the monitor — exceeds [`PathPolicy::max_loss`] and a path without such loss is usable;
//! - back to a better interface once that one has been up for [`PathPolicy::return_after`];
//! - nowhere when no interface is usable: the carrier is *dormant*
//!   ([`Event::Dormant`](crate::Event::Dormant)), keeps what the application sends, and
//!   becomes active again on the first usable interface.

mod decide;
mod manage;
mod monitor;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::net::Interface;
use crate::Preference;

pub(crate) use decide::Health;
pub(crate) use manage::{manage, Announce, PathUser};
pub use monitor::PathMonitor;

/// A carrier's traffic moving: what a path manager that sleeps while its transient is idle
/// waits for (BENCHMARKS.md, "Idle connections": checking every 5 ms woke an idle carrier's
/// thread 200 times a second). The transports [`touch`](Self::touch) it wherever what the
/// manager reads ([`Health`]) can change: a message queued, data written, anything read, the
/// transient's state, a QUIC connection's driver having run. A touch while the manager is
/// awake costs one relaxed load. QUIC's address watch sleeps on one of its own.
///
/// Not [`util::Signal`](crate::util::Signal), the project's other one-waiter wake-up: its
/// `notify` is two atomic writes on every call, and touches come on hot paths (every message
/// queued, every QUIC driver poll) where almost always nobody sleeps.
#[derive(Clone, Debug, Default)]
pub(crate) struct Activity(Arc<ActivityInner>);

#[derive(Debug, Default)]
struct ActivityInner {
    /// The manager sleeps and wants to hear of the next touch.
    armed: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Activity {
    /// Something the manager watches may have changed.
    pub(crate) fn touch(&self) {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        if self.0.armed.load(Relaxed) && self.0.armed.swap(false, SeqCst) {
            self.0.wake.notify_one();
        }
    }

    /// Sleeps until the next touch or `until` (`None`: no deadline), unless `moved()` says
    /// something changed already. `moved` is asked after the arming, so a touch after that
    /// look wakes the sleep rather than being lost. Dropping the future (a `select!` that
    /// took another branch) disarms. On x86 the touches' counter updates are locked
    /// instructions, which order them before the relaxed load of the flag; where they are
    /// not, a touch that raced the arming is caught by the next touch or by `until`.
    pub(crate) async fn sleep_unless(
        &self,
        moved: impl FnOnce() -> bool,
        until: Option<tokio::time::Instant>,
    ) {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        struct Disarm<'a>(&'a AtomicBool);
        impl Drop for Disarm<'_> {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        self.0.armed.store(true, SeqCst);
        let _disarm = Disarm(&self.0.armed);
        if moved() {
            return;
        }
        tokio::select! {
            biased;
            () = self.0.wake.notified() => {}
            () = crate::util::until_opt(until) => {}
        }
    }
}

/// The carrier's current path, shared with the application's handle.
pub(crate) type CurrentPath = Arc<std::sync::Mutex<Option<String>>>;

/// Which interfaces a carrier may use and how it moves between them.
#[derive(Debug, Clone, PartialEq)]
pub struct PathPolicy {
    /// Per interface name: Require (only these), Prefer, Avoid, Prohibit (never). Interfaces
    /// not named have no preference. RFC 9622 §6.2.11 (`interface`).
    pub interfaces: BTreeMap<String, Preference>,
    /// A better interface must stay up this long before a carrier moves back to it (so a
    /// flapping interface is not chased). Default 2 s.
    pub return_after: Duration,
    /// The path is declared silent (black-holed) when nothing has been received for this
    /// many smoothed RTTs although something was sent since. Default 3.
    pub silence_rtts: u32,
    /// The silence threshold is never below this (ACKs may be delayed up to 25 ms). Default
    /// 60 ms.
    pub silence_floor: Duration,
    /// A path losing more than this fraction of packets (measured over the last
    /// `quality_window`, at least 20 packets) is left when another path is usable.
    /// Default 0.15.
    pub max_loss: f64,
    /// Window for measuring a path's loss. Default 1 s.
    pub quality_window: Duration,
    /// After leaving a silent or lossy interface (which still looks up), do not return to it
    /// for this long unless it goes down and comes back up. Default 10 s.
    pub suspect_for: Duration,
    /// Whether carriers move between paths at all. Default true.
    pub failover: bool,
    /// Whether loss the link layer reports (through the path monitor) counts like measured
    /// loss. Default true.
    pub link_quality: bool,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            interfaces: BTreeMap::new(),
            return_after: Duration::from_secs(2),
            silence_rtts: 3,
            silence_floor: Duration::from_millis(60),
            max_loss: 0.15,
            quality_window: Duration::from_secs(1),
            suspect_for: Duration::from_secs(10),
            failover: true,
            link_quality: true,
        }
    }
}

impl PathPolicy {
    /// Sets the preference for interface `name`.
    pub fn interface(&mut self, name: impl Into<String>, preference: Preference) -> &mut Self {
        self.interfaces.insert(name.into(), preference);
        self
    }

    fn preference(&self, name: &str) -> Preference {
        self.interfaces
            .get(name)
            .copied()
            .unwrap_or(Preference::NoPreference)
    }

    /// Whether the policy allows interface `name` at all.
    pub fn allows(&self, name: &str) -> bool {
        let required = self.interfaces.values().any(|p| *p == Preference::Require);
        match self.preference(name) {
            Preference::Prohibit => false,
            Preference::Require => true,
            _ => !required,
        }
    }

    /// Lower is better: Require/Prefer, then no preference, then Avoid.
    pub fn rank_of(&self, name: &str) -> u8 {
        match self.preference(name) {
            Preference::Require | Preference::Prefer => 0,
            Preference::NoPreference => 1,
            Preference::Avoid | Preference::Prohibit => 2,
        }
    }
}

/// One usable path: an interface and the local address to bind on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathChoice {
    /// The interface's name.
    pub interface: String,
    /// The local address on it (matching the remote's address family).
    pub local: IpAddr,
}

/// The usable interfaces (up, allowed, with an address of the remote's family, not
/// loopback unless the remote is), best first; ties keep the order the network lists them in.
pub fn rank(policy: &PathPolicy, interfaces: &[Interface], remote: IpAddr) -> Vec<PathChoice> {
    let mut out: Vec<(u8, usize, PathChoice)> = interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.up && policy.allows(&i.name))
        .filter_map(|(n, i)| {
            let local = i.addrs.iter().copied().find(|a| {
                a.is_ipv4() == remote.is_ipv4() && a.is_loopback() == remote.is_loopback()
            })?;
            let choice = PathChoice {
                interface: i.name.clone(),
                local,
            };
            Some((policy.rank_of(&i.name), n, choice))
        })
        .collect();
    out.sort_by_key(|(r, n, _)| (*r, *n));
    out.into_iter().map(|(_, _, c)| c).collect()
}

/// Why a carrier moved to another path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoverReason {
    /// Its interface went down.
    InterfaceDown,
    /// Nothing came back on its path although something was sent (a silent black hole).
    Silent,
    /// Its path lost more than the policy allows.
    Degraded,
    /// A better interface has been up long enough.
    Preferred,
    /// The carrier was dormant and an interface became usable.
    Recovered,
    /// The transient broke (the peer reset it, say); a new one continues the carrier.
    Broken,
}

impl HandoverReason {
    /// A short lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            HandoverReason::InterfaceDown => "interface-down",
            HandoverReason::Silent => "silent",
            HandoverReason::Degraded => "degraded",
            HandoverReason::Preferred => "preferred",
            HandoverReason::Recovered => "recovered",
            HandoverReason::Broken => "broken",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: [u8; 4], up: bool) -> Interface {
        Interface {
            name: name.into(),
            addrs: vec![IpAddr::from(ip)],
            up,
            quality: None,
        }
    }

    #[test]
    fn rank_follows_preferences_and_skips_down_or_prohibited() {
        let list = [
            iface("cell", [10, 0, 0, 2], true),
            iface("wifi", [10, 0, 0, 1], true),
            iface("vpn", [10, 0, 0, 3], true),
            iface("eth", [10, 0, 0, 4], false),
        ];
        let remote = IpAddr::from([192, 168, 0, 1]);
        let mut p = PathPolicy::default();
        p.interface("wifi", Preference::Prefer)
            .interface("cell", Preference::Avoid)
            .interface("vpn", Preference::Prohibit);
        let names: Vec<_> = rank(&p, &list, remote)
            .into_iter()
            .map(|c| c.interface)
            .collect();
        assert_eq!(names, ["wifi", "cell"]);
        p.interface("cell", Preference::Require);
        let names: Vec<_> = rank(&p, &list, remote)
            .into_iter()
            .map(|c| c.interface)
            .collect();
        assert_eq!(names, ["cell"]);
    }
}
