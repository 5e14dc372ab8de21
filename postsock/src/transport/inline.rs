//! A sending loop that the application's own thread may run a step of.
//!
//! A transient's sending loop is a task. When the application queues a message from a
//! thread that is not the worker the loop would run on (the thread in `block_on`, or another
//! worker of a runtime with several), waking that task is a hand-over between threads: a
//! parked worker is woken through the I/O driver (a write to its event fd, then that
//! thread's own wake-up). Raw tokio-rustls has no such hand-over: the application writes
//! itself.
//!
//! [`Driven::spawn`] keeps the loop's future where both its task and a queueing thread can
//! reach it. When a message is queued on a carrier with nothing in flight (the `idle` test:
//! a lone message, a request after its answer), the queueing thread polls the loop itself,
//! with the loop's wake-ups held back while it does (they land as a flag it looks at). With data in
//! flight the task is woken as usual, so messages sent in a stream are gathered into one
//! write by the task, as before (Nagle's rule, turned round: write now only when nothing is
//! outstanding). Whichever of the two polls, the other finds the future taken and leaves a
//! note, so no wake-up is lost.
//!
//! Used by the TLS/TCP writer. On a two-worker TLS/TCP echo it took the writer's hand-over
//! out of each round trip (per round trip 2.5 futex calls instead of 4, 0.1 event-fd writes
//! instead of 0.9, 2.4 context switches instead of 3.6; raw tokio-rustls: 2, 0, 2) and about
//! 15 % of the CPU (BENCHMARKS.md). The QUIC sending loop measured worse with it (95-112 µs
//! against 93-97 µs a round trip): there the queueing thread's write into quinn wakes
//! quinn's connection driver across threads anyway, and contends with it for the
//! connection's lock. (A lone QUIC message is written by the thread that sends it without
//! running the loop, `quic::DirectWriter`: that skips the loop's step rather than moving
//! it, and on two workers the echo's best went from 89-102 µs to 80-87 µs.)
//!
//! Only on a multi-thread runtime: on a current-thread runtime (the simulator's hosts, an
//! application on one thread) a wake-up is no hand-over, so nothing is gained and the loop
//! keeps running where it always did (and the simulator's event order is unchanged).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

use crate::util::lock;

type Fut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An application thread is polling the loop: wake-ups are noted, not sent to the task.
const INLINE: u8 = 1;
/// A wake-up came while `INLINE`.
const WOKEN: u8 = 2;
/// The task was polled while the future was taken.
const WANTED: u8 = 4;
/// The task is gone (aborted or dropped): the loop is dropped too.
const CANCELLED: u8 = 8;

/// Polls of the loop one queueing may make before it hands the rest to the task (a loop that
/// keeps waking itself, e.g. out of cooperative budget, goes back to its task).
const MAX_INLINE_POLLS: usize = 4;

/// The is-nothing-in-flight test of a [`Driven`].
pub(crate) type Idle = Box<dyn Fn() -> bool + Send + Sync>;

/// A sending loop that its task and, when idle, a queueing thread can poll.
pub(crate) struct Driven {
    /// `None` once the loop finished or its task went.
    fut: Mutex<Option<Fut>>,
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
    handle: tokio::runtime::Handle,
    idle: Idle,
}

impl std::fmt::Debug for Driven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driven")
            .field("state", &self.state.load(SeqCst))
            .finish_non_exhaustive()
    }
}

impl Wake for Driven {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut s = self.state.load(SeqCst);
        while s & INLINE != 0 {
            match self.state.compare_exchange(s, s | WOKEN, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
        self.wake_task();
    }
}

impl Driven {
    /// Spawns `fut` as a task that queueing threads may also poll (see the module's
    /// documentation); `None` in the second place on a current-thread runtime, where it is
    /// an ordinary task. The handle aborts the loop as a task's would.
    pub(crate) fn spawn(
        fut: impl Future<Output = ()> + Send + 'static,
        idle: Idle,
    ) -> (tokio::task::JoinHandle<()>, Option<Arc<Self>>) {
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return (tokio::spawn(fut), None);
        }
        let driven = Arc::new(Driven {
            fut: Mutex::new(Some(Box::pin(fut))),
            state: AtomicU8::new(0),
            task: Mutex::new(None),
            handle,
            idle,
        });
        (tokio::spawn(Task(driven.clone())), Some(driven))
    }

    fn wake_task(&self) {
        if let Some(w) = lock(&self.task).as_ref() {
            w.wake_by_ref();
        }
    }

    /// Polls the loop (whose future the caller holds) once with this loop's waker; ready
    /// once it finished (or had finished).
    fn poll_once(self: &Arc<Self>, fut: &mut Option<Fut>) -> Poll<()> {
        let Some(f) = fut.as_mut() else {
            return Poll::Ready(());
        };
        let waker = Waker::from(self.clone());
        let out = f.as_mut().poll(&mut Context::from_waker(&waker));
        if out.is_ready() {
            *fut = None;
        }
        out
    }

    /// Whether the loop has nothing in flight (the moment to poll it inline).
    pub(crate) fn idle(&self) -> bool {
        self.state.load(SeqCst) & CANCELLED == 0 && (self.idle)()
    }

    /// Runs `wake` (what wakes the loop for a queued message) with the loop's wake-ups
    /// held, then polls the loop here while it has something to do, at most a few times;
    /// whatever it still wants goes to its task. If the task is polling it right now, `wake`
    /// simply wakes the task.
    pub(crate) fn run_inline(self: &Arc<Self>, wake: impl FnOnce()) {
        let mut fut = match self.fut.try_lock() {
            Ok(g) => g,
            // Taken by the task, or left by a panic: the task's to deal with.
            Err(_) => return wake(),
        };
        if fut.is_none() {
            drop(fut);
            return wake();
        }
        self.state.fetch_or(INLINE, SeqCst);
        wake();
        {
            // The loop makes timers and reads the runtime's clock: its runtime's context.
            let _enter = self.handle.enter();
            // The first poll whether or not `wake` reached the loop: it may not be waiting
            // for the queue at all yet (a loop its task has not polled since it started).
            for i in 0..MAX_INLINE_POLLS {
                if self.state.fetch_and(!WOKEN, SeqCst) & WOKEN == 0 && i > 0 {
                    break;
                }
                if self.poll_once(&mut fut).is_ready() {
                    // Finished: the task ends at its next poll.
                    self.state.fetch_or(WOKEN, SeqCst);
                    break;
                }
            }
        }
        drop(fut);
        // After letting go of the future: a wake-up or a task poll from now on either finds
        // INLINE clear (and goes to the task) or is seen here.
        let prev = self.state.fetch_and(!(INLINE | WOKEN | WANTED), SeqCst);
        if prev & (WOKEN | WANTED) != 0 {
            self.wake_task();
        }
        if prev & CANCELLED != 0 {
            *lock(&self.fut) = None;
        }
    }
}

/// The task's side: polls the loop unless a queueing thread has it.
struct Task(Arc<Driven>);

impl Future for Task {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let d = &self.0;
        {
            let mut task = lock(&d.task);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        for attempt in 0..2 {
            match d.fut.try_lock() {
                Ok(mut fut) => {
                    if attempt == 1 {
                        d.state.fetch_and(!WANTED, SeqCst);
                    }
                    // (Ready at once if a queueing thread saw it finish.)
                    return d.poll_once(&mut fut);
                }
                Err(TryLockError::Poisoned(_)) => {
                    panic!("the sending loop panicked on a queueing thread");
                }
                // A queueing thread is polling it: note that we want it back, then look once
                // more (it may have let go before seeing the note).
                Err(TryLockError::WouldBlock) if attempt == 0 => {
                    d.state.fetch_or(WANTED, SeqCst);
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        Poll::Pending
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // Aborted or dropped with its runtime: the loop goes with it (now, or when the
        // queueing thread polling it lets go).
        self.0.state.fetch_or(CANCELLED, SeqCst);
        if let Ok(mut fut) = self.0.fut.try_lock() {
            *fut = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use tokio::sync::Notify;

    /// A loop that counts the notifications it takes (as a sending loop takes queued items),
    /// and the threads it ran on.
    struct Probe {
        notify: Notify,
        taken: AtomicUsize,
        idle: AtomicBool,
    }

    impl Probe {
        fn new() -> Arc<Probe> {
            Arc::new(Probe {
                notify: Notify::new(),
                taken: AtomicUsize::new(0),
                idle: AtomicBool::new(true),
            })
        }
    }

    fn start(probe: &Arc<Probe>) -> (tokio::task::JoinHandle<()>, Option<Arc<Driven>>) {
        let p = probe.clone();
        let idle = probe.clone();
        Driven::spawn(
            async move {
                loop {
                    p.notify.notified().await;
                    p.taken.fetch_add(1, SeqCst);
                }
            },
            Box::new(move || idle.idle.load(SeqCst)),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queueing_thread_runs_an_idle_loop_itself_and_no_wake_up_is_lost() {
        let probe = Probe::new();
        let (task, driven) = start(&probe);
        let driven = driven.expect("a multi-thread runtime");
        // Let the task poll the loop once, so it waits on the notification.
        while lock(&driven.task).is_none() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(driven.idle());
        driven.run_inline(|| probe.notify.notify_one());
        assert_eq!(
            probe.taken.load(SeqCst),
            1,
            "the loop ran here, before run_inline returned"
        );
        // Queueings inline and as plain wake-ups of the task, alternating, from another
        // task: each is taken (a lost wake-up would stall this until the timeout).
        let n = 2_000;
        let queueing = {
            let (probe, driven) = (probe.clone(), driven.clone());
            tokio::spawn(async move {
                for i in 0..n {
                    if i % 2 == 0 {
                        driven.run_inline(|| probe.notify.notify_one());
                    } else {
                        probe.notify.notify_one();
                    }
                    while probe.taken.load(SeqCst) < 2 + i {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), queueing)
            .await
            .expect("every notification taken in time")
            .expect("queueing task");
        assert_eq!(probe.taken.load(SeqCst), 1 + n);
        // Aborting the task drops the loop, even though queueing threads could reach it.
        task.abort();
        let _ = task.await;
        assert!(!driven.idle(), "a cancelled loop is never run inline");
        assert!(
            lock(&driven.fut).is_none(),
            "the loop is dropped with its task"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_one_thread_the_loop_is_an_ordinary_task() {
        let probe = Probe::new();
        let (task, driven) = start(&probe);
        assert!(driven.is_none());
        probe.notify.notify_one();
        tokio::task::yield_now().await;
        assert_eq!(probe.taken.load(SeqCst), 1);
        task.abort();
    }
}
