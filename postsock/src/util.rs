//! Small helpers every layer uses: waiting on a condition guarded by a [`Notify`] without
//! lost wake-ups (or until a time that may never come), locking a mutex that a panicked task
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
