//! The path monitor: follows the host's interfaces through [`Net`] and publishes each change.

use std::sync::Arc;

use tokio::sync::watch;

use crate::net::{Interface, Net};

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

    /// A monitor of `interfaces` that never change (for tests of what subscribes).
    #[cfg(test)]
    pub(crate) fn fixed(interfaces: Vec<Interface>) -> Self {
        let (tx, rx) = watch::channel(interfaces);
        let task = tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
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
