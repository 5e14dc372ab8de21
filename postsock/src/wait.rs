//! Waiting on a condition guarded by a [`Notify`], without lost wake-ups.

use tokio::sync::Notify;

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
