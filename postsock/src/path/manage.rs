//! The path manager: drives a [`PathDecider`] for one client transient — every few
//! milliseconds while its traffic moves, on every interface change, and while the transient
//! is idle only when it touches its [`Activity`] or at the decider's next deadline — and
//! carries out its decisions: moves the transient ([`PathUser::move_to`]) and announces
//! handovers and dormancy.

use std::net::IpAddr;

use tokio::time::Instant;

use super::decide::{Decision, Health, PathDecider};
use super::{Activity, CurrentPath, PathChoice, PathMonitor, PathPolicy};
use crate::net::BoxFuture;
use crate::Event;

/// What a path manager needs from the transient it steers.
pub(crate) trait PathUser: Send + Sync {
    /// Moves the transient onto `choice`.
    fn move_to<'a>(&'a mut self, choice: &'a PathChoice) -> BoxFuture<'a, bool>;
    /// Traffic counters of the transient now.
    fn health(&self) -> Health;
    /// What the transient touches when its counters may have changed.
    fn activity(&self) -> Activity;
}

/// Where a path manager announces what it did: the carrier's event queue.
pub(crate) trait Announce: Send {
    /// Queues `event`; `false` once nobody listens.
    fn announce(&self, event: Event) -> BoxFuture<'_, bool>;
    /// Whether nobody listens any more.
    fn gone(&self) -> bool;
}

/// How often a path manager checks its path's health while anything moves.
const CHECK: std::time::Duration = std::time::Duration::from_millis(5);
/// Checks in a row that found the same counters, with nothing unanswered, after which the
/// manager sleeps until the transient touches its [`Activity`], an interface changes or
/// the decider's next deadline (two: a message queued touches before the writer counts it).
const QUIET_CHECKS: u32 = 2;
/// While asleep, a check at least this often all the same: for a counter that moved
/// without a touch (one that raced the arming on a weakly ordered CPU) and for a carrier
/// dropped meanwhile.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

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
    let activity = user.activity();
    // The counters the last check read, and how many checks in a row found them unchanged
    // with nothing unanswered.
    let mut last: Option<Health> = None;
    let mut quiet_checks = 0u32;
    loop {
        if quiet_checks >= QUIET_CHECKS {
            // Idle: sleep (BENCHMARKS.md, "Idle connections") unless one more look finds
            // the counters moved.
            let now = Instant::now();
            let wake = decider
                .next_deadline(now)
                .map_or(now + IDLE_CHECK, |d| d.min(now + IDLE_CHECK));
            tokio::select! {
                biased;
                changed = interfaces.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = activity.sleep_unless(|| last != Some(user.health()), Some(wake)) => {}
            }
            quiet_checks = 0;
            ticker.reset_immediately();
        }
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
        let unchanged = last == Some(h);
        last = Some(h);
        let quiet_before = std::mem::take(&mut quiet_checks);
        let event = match decider.handle(now, &list, h) {
            None => {
                if unchanged && decider.quiet() {
                    quiet_checks = quiet_before + 1;
                }
                continue;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::net::Interface;
    use crate::HandoverReason;

    /// A transient whose counters the test sets, counting the manager's looks at them.
    struct Fake {
        health: Arc<Mutex<Health>>,
        looks: Arc<AtomicUsize>,
        activity: Activity,
    }

    impl PathUser for Fake {
        fn move_to<'a>(&'a mut self, _: &'a PathChoice) -> BoxFuture<'a, bool> {
            Box::pin(async { true })
        }
        fn health(&self) -> Health {
            self.looks.fetch_add(1, SeqCst);
            *self.health.lock().expect("health")
        }
        fn activity(&self) -> Activity {
            self.activity.clone()
        }
    }

    /// The events announced, with when.
    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<(Instant, Event)>>>);

    impl Announce for Heard {
        fn announce(&self, event: Event) -> BoxFuture<'_, bool> {
            self.0.lock().expect("heard").push((Instant::now(), event));
            Box::pin(async { true })
        }
        fn gone(&self) -> bool {
            false
        }
    }

    struct Run {
        health: Arc<Mutex<Health>>,
        looks: Arc<AtomicUsize>,
        activity: Activity,
        heard: Heard,
    }

    /// A manager on wifi (cell also up) over an idle transient, on the paused clock.
    fn start() -> Run {
        let iface = |name: &str, last: u8| Interface {
            name: name.into(),
            addrs: vec![IpAddr::from([10, 0, last, 1])],
            up: true,
            quality: None,
        };
        let monitor = PathMonitor::fixed(vec![iface("wifi", 1), iface("cell", 2)]);
        let policy = PathPolicy {
            interfaces: [("wifi".to_string(), crate::Preference::Prefer)].into(),
            ..PathPolicy::default()
        };
        let (health, looks, activity, heard) = (
            Arc::new(Mutex::new(Health::default())),
            Arc::new(AtomicUsize::new(0)),
            Activity::default(),
            Heard::default(),
        );
        let user = Fake {
            health: health.clone(),
            looks: looks.clone(),
            activity: activity.clone(),
        };
        let start = PathChoice {
            interface: "wifi".into(),
            local: IpAddr::from([10, 0, 1, 1]),
        };
        tokio::spawn(manage(
            user,
            monitor,
            policy,
            (IpAddr::from([10, 9, 9, 9]), Vec::new()),
            start,
            Arc::new(Mutex::new(None)),
            heard.clone(),
        ));
        Run {
            health,
            looks,
            activity,
            heard,
        }
    }

    impl Run {
        /// Something is sent (the transient counts it), touching the activity or not.
        fn send(&self, touch: bool) {
            self.health.lock().expect("health").tx += 1;
            if touch {
                self.activity.touch();
            }
        }

        /// When the manager announced a handover for a silent path, if it did.
        fn silent_at(&self) -> Option<Instant> {
            self.heard
                .0
                .lock()
                .expect("heard")
                .iter()
                .find_map(|(at, e)| {
                    matches!(
                        e,
                        Event::Handover {
                            reason: HandoverReason::Silent,
                            ..
                        }
                    )
                    .then_some(*at)
                })
        }
    }

    /// An idle transient is looked at about once a second (the backstop), not every 5 ms:
    /// the 200 wake-ups a second an idle carrier cost (BENCHMARKS.md, "Idle connections").
    #[tokio::test(start_paused = true)]
    async fn an_idle_transient_is_not_checked_every_few_milliseconds() {
        let run = start();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let looks = run.looks.load(SeqCst);
        // Each second: the backstop's wake-up, its check and the quiet one after it (three
        // looks, two of them 5 ms apart).
        assert!(
            looks <= 40,
            "{looks} looks in 10 s idle (every 5 ms: 2,000)"
        );
        assert!(looks >= 10, "{looks}: the backstop looks once a second");
    }

    /// A message sent after a quiet spell wakes the manager at once, and a path that
    /// swallows it is declared silent as soon as it would have been with checks every 5 ms
    /// (60 ms of silence, within a check or two).
    #[tokio::test(start_paused = true)]
    async fn a_send_after_a_quiet_spell_is_watched_at_once() {
        let run = start();
        tokio::time::sleep(Duration::from_millis(3_002)).await;
        let sent = Instant::now();
        let before = run.looks.load(SeqCst);
        run.send(true);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            run.looks.load(SeqCst) > before,
            "the touch woke the manager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let at = run.silent_at().expect("the black hole is found");
        let after = at - sent;
        assert!(
            after > Duration::from_millis(60) && after <= Duration::from_millis(60 + 2 * 5),
            "declared silent {after:?} after the send"
        );
    }

    /// A counter that moved without a touch (a PING quinn sends on its own) is still seen:
    /// by the backstop's look, within a second.
    #[tokio::test(start_paused = true)]
    async fn an_untouched_change_is_seen_by_the_backstop() {
        let run = start();
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let sent = Instant::now();
        run.send(false);
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let at = run.silent_at().expect("the black hole is found");
        assert!(
            at - sent <= IDLE_CHECK + Duration::from_millis(60 + 2 * 5),
            "{:?}",
            at - sent
        );
    }
}
