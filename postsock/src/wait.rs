//! Waiting: on a condition guarded by a [`Notify`] without lost wake-ups, or until a time
//! that may never come.

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

/// Sleeps until `at`, or forever when there is no `at` (a disabled `select!` timer).
pub(crate) async fn until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
