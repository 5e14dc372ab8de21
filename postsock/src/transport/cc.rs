//! Congestion control that knows when this end changed paths.
//!
//! quinn resets congestion control when the *peer* migrates, but not when this end rebinds
//! its socket to another interface: the client keeps the old path's window, and counts the
//! packets it sent into the dead path as in flight until they are declared lost. After a
//! dormant period that is crippling: the window has collapsed to the minimum, the dead
//! packets fill it, and the PING that would announce the new path waits for a probe timeout
//! that has backed off for seconds.
//!
//! RFC 9000 §9.4 says what to do instead: the new path starts with a fresh congestion
//! controller, and packets sent on the old path do not count towards it. [`PathAware`] does
//! exactly that around quinn's CUBIC: when its [`PathEpoch`] is bumped (the path manager does
//! it when it rebinds), it starts a fresh controller; bytes still in flight from before are
//! carried beside the new window until they are acknowledged or declared lost, and their
//! acknowledgements and losses are not fed to the new controller.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn::congestion::{Controller, ControllerFactory, CubicConfig};
use quinn_proto::RttEstimator;

/// quinn's clock (tokio's, converted, under both runtimes postsock uses).
type Instant = std::time::Instant;

/// Bumped each time the connection's local path changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathEpoch(Arc<AtomicU64>);

impl PathEpoch {
    /// The local path changed: the next congestion decision starts afresh.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds [`PathAware`] controllers around CUBIC for one connection.
#[derive(Debug)]
pub(crate) struct PathAwareFactory {
    epoch: PathEpoch,
    inner: Arc<CubicConfig>,
}

impl PathAwareFactory {
    pub(crate) fn new(epoch: PathEpoch) -> Arc<Self> {
        Arc::new(PathAwareFactory {
            epoch,
            inner: Arc::new(CubicConfig::default()),
        })
    }
}

impl ControllerFactory for PathAwareFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let seen = self.epoch.get();
        Box::new(PathAware {
            current: self.inner.clone().build(now, current_mtu),
            factory: self,
            seen,
            in_flight: 0,
            old: 0,
            reset_at: None,
            mtu: current_mtu,
        })
    }
}

/// A controller that restarts when the local path changes (see the module docs).
struct PathAware {
    factory: Arc<PathAwareFactory>,
    current: Box<dyn Controller>,
    seen: u64,
    /// Bytes in flight as far as we know (quinn's figure at each ACK batch, plus sends,
    /// minus losses since).
    in_flight: u64,
    /// Of those, bytes sent on an earlier path.
    old: u64,
    reset_at: Option<Instant>,
    mtu: u16,
}

impl PathAware {
    fn sync(&mut self, now: Instant) {
        let epoch = self.factory.epoch.get();
        if epoch != self.seen {
            self.seen = epoch;
            self.current = self.factory.inner.clone().build(now, self.mtu);
            self.old = self.in_flight;
            self.reset_at = Some(now);
        }
    }

    fn sent_on_old_path(&self, sent: Instant) -> bool {
        self.reset_at.is_some_and(|r| sent < r)
    }
}

impl Controller for PathAware {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.sync(now);
        self.in_flight += bytes;
        self.current.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.sync(now);
        if self.sent_on_old_path(sent) {
            self.old = self.old.saturating_sub(bytes);
            return;
        }
        self.current.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.sync(now);
        self.in_flight = in_flight;
        self.old = self.old.min(in_flight);
        let new_path = in_flight - self.old;
        self.current
            .on_end_acks(now, new_path, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.sync(now);
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
        if self.sent_on_old_path(sent) {
            // Losses on the old path say nothing about the new one.
            self.old = self.old.saturating_sub(lost_bytes);
            return;
        }
        self.old = self.old.min(self.in_flight);
        self.current
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.current.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.factory.epoch.get() != self.seen {
            // About to restart: what the fresh controller will allow, beside the old bytes.
            return self.in_flight + self.current.initial_window();
        }
        self.current.window() + self.old
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(PathAware {
            factory: self.factory.clone(),
            current: self.current.clone_box(),
            seen: self.seen,
            in_flight: self.in_flight,
            old: self.old,
            reset_at: self.reset_at,
            mtu: self.mtu,
        })
    }

    fn initial_window(&self) -> u64 {
        self.current.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
