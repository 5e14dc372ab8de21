//! The path manager: drives a [`PathDecider`] for one client transient — every few
//! milliseconds and on every interface change — and carries out its decisions: moves the
//! transient ([`PathUser::move_to`]) and announces handovers and dormancy.

use std::net::IpAddr;

use tokio::time::Instant;

use super::decide::{Decision, Health, PathDecider};
use super::{CurrentPath, PathChoice, PathMonitor, PathPolicy};
use crate::net::BoxFuture;
use crate::Event;

/// What a path manager needs from the transient it steers.
pub(crate) trait PathUser: Send {
    /// Moves the transient onto `choice`.
    fn move_to<'a>(&'a mut self, choice: &'a PathChoice) -> BoxFuture<'a, bool>;
    /// Traffic counters of the transient now.
    fn health(&self) -> Health;
}

/// Where a path manager announces what it did: the carrier's event queue.
pub(crate) trait Announce: Send {
    /// Queues `event`; `false` once nobody listens.
    fn announce(&self, event: Event) -> BoxFuture<'_, bool>;
    /// Whether nobody listens any more.
    fn gone(&self) -> bool;
}

/// How often a path manager checks its path's health.
const CHECK: std::time::Duration = std::time::Duration::from_millis(5);

/// Steers one client transient between interfaces (see the [module docs](super)) until the
/// event queue closes. `current` starts as the path the transient was established on;
/// `alternates` are the remote's addresses of the other IP version, to go on over when the
/// current version has no path left.
pub(crate) async fn manage(
    mut user: impl PathUser,
    monitor: PathMonitor,
    policy: PathPolicy,
    (remote, alternates): (IpAddr, Vec<IpAddr>),
    start: PathChoice,
    current: CurrentPath,
    events: impl Announce,
) {
    let mut interfaces = monitor.subscribe();
    let set_current = |c: Option<&PathChoice>| {
        *crate::util::lock(&current) = c.map(|c| c.interface.clone());
    };
    let list = interfaces.borrow().clone();
    let mut decider = PathDecider::new(policy, remote, start, &list, user.health(), Instant::now())
        .with_alternates(alternates);
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
        if events.gone() || h.ended {
            return;
        }
        let now = Instant::now();
        let list = interfaces.borrow_and_update().clone();
        let event = match decider.handle(now, &list, h) {
            None => continue,
            Some(Decision::Move { to, reason }) => {
                if !user.move_to(&to).await {
                    decider.move_failed(&to, now);
                    continue;
                }
                set_current(Some(&to));
                decider.moved(to.clone(), user.health());
                Event::Handover {
                    interface: to.interface,
                    reason,
                }
            }
            Some(Decision::Dormant) => {
                set_current(None);
                Event::Dormant
            }
        };
        if !events.announce(event).await {
            return;
        }
    }
}
