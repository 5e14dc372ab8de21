//! Paths: which interface a carrier uses, watching interfaces come and go, and when to move.
//!
//! A [`PathMonitor`] follows the host's interfaces through [`Net`]: in the simulator the
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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::net::{Interface, Net};
use crate::Preference;

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

/// Follows the host's interfaces and publishes each change to its subscribers.
#[derive(Debug)]
pub struct PathMonitor {
    current: watch::Receiver<Vec<Interface>>,
    task: tokio::task::JoinHandle<()>,
}

impl PathMonitor {
    /// Starts following the interfaces of `net`'s host.
    pub fn start(net: Arc<dyn Net>) -> Self {
        let (tx, rx) = watch::channel(net.interfaces());
        let task = tokio::spawn(async move {
            loop {
                net.interfaces_changed().await;
                let now = net.interfaces();
                tx.send_if_modified(|old| {
                    let changed = *old != now;
                    if changed {
                        *old = now;
                    }
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        PathMonitor { current: rx, task }
    }

    /// The interfaces now.
    pub fn interfaces(&self) -> Vec<Interface> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Interface>> {
        self.current.clone()
    }
}

impl Drop for PathMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
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

/// What a path manager needs from the transient it steers.
pub(crate) trait PathUser: Send {
    /// Moves the transient onto `choice`.
    fn move_to<'a>(&'a mut self, choice: &'a PathChoice) -> crate::net::BoxFuture<'a, bool>;
    /// Traffic counters of the transient now.
    fn health(&self) -> Health;
}

/// Traffic counters a path manager watches.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Health {
    /// What was sent that the peer must answer (ack-eliciting QUIC frames; TLS writes that
    /// carry data), and datagrams (or frames) received, so far.
    pub(crate) tx: u64,
    pub(crate) rx: u64,
    /// Packets sent and declared lost so far.
    pub(crate) sent_packets: u64,
    pub(crate) lost_packets: u64,
    /// Smoothed RTT of the current path.
    pub(crate) srtt: Duration,
    /// The transient has ended: nothing left to steer.
    pub(crate) ended: bool,
    /// The transient broke but the carrier can continue on a new one.
    pub(crate) broken: bool,
}

/// How often a path manager checks its path's health.
const CHECK: Duration = Duration::from_millis(5);

/// The carrier's current path, shared with the application's handle.
pub(crate) type CurrentPath = Arc<std::sync::Mutex<Option<String>>>;

/// Steers one client transient between interfaces (see the [module docs](self)) until the
/// event queue closes. `current` starts as the path the transient was established on.
pub(crate) async fn manage(
    mut user: impl PathUser,
    monitor: PathMonitor,
    policy: PathPolicy,
    remote: IpAddr,
    start: PathChoice,
    current: CurrentPath,
    events: crate::transport::EventTx,
) {
    use tokio::time::Instant;
    let mut interfaces = monitor.subscribe();
    let set_current = |c: Option<&PathChoice>| {
        *current.lock().unwrap_or_else(|p| p.into_inner()) = c.map(|c| c.interface.clone());
    };
    let t0 = Instant::now();
    let mut cur: Option<PathChoice> = Some(start);
    // Since when each interface has been up (interfaces up at the start count as stable).
    let mut up_since: BTreeMap<String, Instant> = BTreeMap::new();
    let stable = t0.checked_sub(policy.return_after).unwrap_or(t0);
    for i in interfaces.borrow().iter().filter(|i| i.up) {
        up_since.insert(i.name.clone(), stable);
    }
    // Interfaces left because they fell silent, until when they are not tried again.
    let mut suspect: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last = user.health();
    let mut unanswered_since: Option<Instant> = None;
    let mut window: std::collections::VecDeque<(Instant, u64, u64)> = Default::default();
    let mut ticker = tokio::time::interval(CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            changed = interfaces.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {}
        }
        let h = user.health();
        if events.is_closed() || h.ended {
            return;
        }
        let now = Instant::now();
        let list = interfaces.borrow_and_update().clone();
        for i in &list {
            if i.up {
                up_since.entry(i.name.clone()).or_insert(now);
            } else {
                up_since.remove(&i.name);
                // Down and (later) up again: no longer suspected of silence.
                suspect.remove(&i.name);
            }
        }
        up_since.retain(|name, _| list.iter().any(|i| i.up && &i.name == name));
        suspect.retain(|_, until| *until > now);
        let usable: Vec<PathChoice> = rank(&policy, &list, remote)
            .into_iter()
            .filter(|c| !suspect.contains_key(&c.interface))
            .collect();

        // Health of the current path.
        if h.rx != last.rx {
            unanswered_since = None;
        } else if h.tx != last.tx && unanswered_since.is_none() {
            unanswered_since = Some(now);
        }
        window.push_back((now, h.sent_packets, h.lost_packets));
        while window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > policy.quality_window)
        {
            window.pop_front();
        }
        last = h;
        let silence = (h.srtt * policy.silence_rtts).max(policy.silence_floor);
        let silent = unanswered_since.is_some_and(|t| now.duration_since(t) > silence);
        let loss = window.front().map_or(0.0, |(_, sent, lost)| {
            let sent = h.sent_packets.saturating_sub(*sent);
            let lost = h.lost_packets.saturating_sub(*lost);
            if sent >= 20 {
                lost as f64 / sent as f64
            } else {
                0.0
            }
        });

        let position = |name: &str| usable.iter().position(|c| c.interface == name);
        // What the link layer reports of an interface's loss (the simulator knows it; an OS
        // interface list does not say, and then only measured loss counts).
        let reported_loss = |name: &str| {
            list.iter()
                .find(|i| i.name == name && policy.link_quality)
                .and_then(|i| i.quality)
                .map_or(0.0, |q| q.loss)
        };
        let (target, reason) = match &cur {
            None => match usable.first() {
                Some(best) => (Some(best.clone()), HandoverReason::Recovered),
                None => continue,
            },
            Some(c) if position(&c.interface).is_none() => {
                (usable.first().cloned(), HandoverReason::InterfaceDown)
            }
            // The transient broke under us (the carrier can continue on a new one).
            Some(_) if h.broken => (usable.first().cloned(), HandoverReason::Broken),
            Some(c) if silent => {
                suspect.insert(c.interface.clone(), now + policy.suspect_for);
                let other = usable.iter().find(|u| u.interface != c.interface).cloned();
                (other, HandoverReason::Silent)
            }
            Some(c) if loss > policy.max_loss || reported_loss(&c.interface) > policy.max_loss => {
                let better = |u: &&PathChoice| {
                    u.interface != c.interface && reported_loss(&u.interface) <= policy.max_loss
                };
                match usable.iter().find(better) {
                    Some(other) => {
                        // Not back to it for a while: its link still looks up.
                        suspect.insert(c.interface.clone(), now + policy.suspect_for);
                        (Some(other.clone()), HandoverReason::Degraded)
                    }
                    None => continue,
                }
            }
            Some(c) => {
                let here = position(&c.interface).unwrap_or(0);
                match usable.first() {
                    Some(best)
                        if here > 0
                            && up_since
                                .get(&best.interface)
                                .is_some_and(|t| now.duration_since(*t) >= policy.return_after) =>
                    {
                        (Some(best.clone()), HandoverReason::Preferred)
                    }
                    _ => continue,
                }
            }
        };
        if !policy.failover {
            continue;
        }
        match target {
            Some(choice) => {
                if !user.move_to(&choice).await {
                    // Binding on it failed: leave it alone for a while.
                    suspect.insert(choice.interface.clone(), now + policy.return_after);
                    continue;
                }
                set_current(Some(&choice));
                cur = Some(choice.clone());
                last = user.health();
                unanswered_since = None;
                window.clear();
                let event = crate::Event::Handover {
                    interface: choice.interface,
                    reason,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            None => {
                if cur.take().is_some() {
                    set_current(None);
                    unanswered_since = None;
                    if events.send(crate::Event::Dormant).await.is_err() {
                        return;
                    }
                }
            }
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
