//! Small helpers every layer uses: waiting on a condition guarded by a [`Notify`] (or, with
//! one waiter, a [`Signal`]) without lost wake-ups (or until a time that may never come), locking a mutex that a panicked task
//! may have poisoned, and random bytes that are seeded in the simulator and secure on real
//! sockets.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::net::Net;

/// Locks `m`. The data behind a mutex here is never left half-updated across a panic point,
/// so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `N` random bytes: from the network's seeded RNG in the simulator (so runs repeat), else
/// from the system's secure random source. `None` when that source fails.
pub(crate) fn random<const N: usize>(net: &dyn Net) -> Option<[u8; N]> {
    const { assert!(N <= 32, "a seed has 32 bytes") };
    let mut out = [0u8; N];
    match net.rng_seed() {
        Some(seed) => out.copy_from_slice(&seed[..N]),
        None => {
            let rng = rustls::crypto::ring::default_provider().secure_random;
            rng.fill(&mut out).ok()?;
        }
    }
    Some(out)
}

/// Waits until `check` yields a value, re-checking whenever `notify` is notified. The
/// notification is registered before each check, so one that fires between the check and
/// the wait is not lost.
pub(crate) async fn until<T>(notify: &Notify, mut check: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = check() {
            return value;
        }
        notified.await;
    }
}

/// A wake-up for the one task that waits on a queue (a transient's sending loop waiting on
/// its outbox): [`notify`](Self::notify) wakes it if it waits, [`until`](Self::until) waits
/// for a condition the way [`until`] does for a [`Notify`].
///
/// A [`Notify`] serves any number of waiters: each wait puts an entry on its list and takes
/// it off under the `Notify`'s lock, and a notification finds and removes it under that lock
/// again (about 650 instructions a message for the QUIC sending loop's wait on its outbox,
/// callgrind). With one waiter the registration is one waker slot.
///
/// One waiter at a time: a second task waiting at once would take the slot from the first.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    waiter: futures_util::task::AtomicWaker,
    /// Notified since the waiter last checked: a poll for another reason (the task woken by
    /// something else) does not check again.
    notified: std::sync::atomic::AtomicBool,
}

impl Signal {
    /// Wakes the waiter, if one waits. Not kept for a later wait (unlike a `Notify`'s
    /// permit): every wait checks its condition before it waits.
    pub(crate) fn notify(&self) {
        self.notified
            .store(true, std::sync::atomic::Ordering::Release);
        self.waiter.wake();
    }

    /// Waits until `check` yields a value: checks at once, then again after each
    /// [`notify`](Self::notify) (not at every poll: the task may be woken for something
    /// else). The waker is registered before each check, so a notification between the
    /// check and the wait is not lost; it is let go when the wait ends or is dropped, so a notification
    /// while the task does something else does not wake it for nothing.
    pub(crate) fn until<T, F: FnMut() -> Option<T>>(&self, check: F) -> SignalWait<'_, F> {
        SignalWait {
            signal: self,
            check,
            registered: false,
        }
    }
}

/// The wait of [`Signal::until`].
pub(crate) struct SignalWait<'a, F> {
    signal: &'a Signal,
    check: F,
    registered: bool,
}

// `check` is never pinned (called through `&mut`), so the wait moves freely.
impl<F> Unpin for SignalWait<'_, F> {}

impl<T, F: FnMut() -> Option<T>> std::future::Future for SignalWait<'_, F> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        self.signal.waiter.register(cx.waker());
        // Cleared before the check: a notification after it is seen by the next poll.
        let notified = self
            .signal
            .notified
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if self.registered && !notified {
            return std::task::Poll::Pending;
        }
        self.registered = true;
        match (self.check)() {
            Some(value) => {
                self.registered = false;
                drop(self.signal.waiter.take());
                std::task::Poll::Ready(value)
            }
            None => std::task::Poll::Pending,
        }
    }
}

impl<F> Drop for SignalWait<'_, F> {
    fn drop(&mut self) {
        if self.registered {
            drop(self.signal.waiter.take());
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at` (a disabled `select!` timer).
pub(crate) async fn until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hexadecimal string; `None` if it is not one.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::cell::Cell;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_signal_wait_checks_at_once_and_again_only_when_notified() {
        let signal = Signal::default();
        let ready = Cell::new(false);
        let checks = Cell::new(0);
        let mut wait = signal.until(|| {
            checks.set(checks.get() + 1);
            ready.get().then_some(7)
        });
        let (woken, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_pending());
        assert_eq!(checks.get(), 1, "checked at the first poll");
        // Polled again because the task was woken for something else: no check.
        assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_pending());
        assert_eq!(checks.get(), 1);
        ready.set(true);
        signal.notify();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the waiter is woken");
        assert_eq!(std::pin::Pin::new(&mut wait).poll(&mut cx), Poll::Ready(7));
        assert_eq!(checks.get(), 2);
        // Ended: the waker is let go, a later notification wakes no one.
        drop(wait);
        signal.notify();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_notification_before_a_wait_is_not_needed_and_one_after_its_check_is_not_lost() {
        let signal = Signal::default();
        // Nobody waits: nothing is kept but the flag, and the next wait checks anyway.
        signal.notify();
        let ready = Cell::new(false);
        let (woken, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        {
            let mut wait = signal.until(|| {
                // The state changes and is notified right after this check looked.
                let now = ready.get();
                if !now {
                    ready.set(true);
                    signal.notify();
                }
                now.then_some(())
            });
            assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_pending());
            assert_eq!(
                woken.0.load(Ordering::SeqCst),
                1,
                "woken by the late notification"
            );
            assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_ready());
        }
        // A wait dropped while waiting lets its waker go too.
        let mut wait = signal.until(|| None::<()>);
        assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_pending());
        drop(wait);
        signal.notify();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
