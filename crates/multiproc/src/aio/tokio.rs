//! [`Watch`] on tokio's reactor: an `AsyncFd` over a duplicate of the descriptor watched.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How long an awaited read looks for its data before it sleeps in the reactor, when
/// spinning pays (the synchronous receive's budget).
const SPIN: std::time::Duration = crate::spin::REPLY_SPIN;

/// A descriptor registered with the runtime's reactor (edge-triggered), so tasks can wait
/// until it is readable or writable. Any number of tasks may wait on one watch at once, each
/// for a condition of its own (a queue's doorbell: items for a getter, room for a putter).
///
/// # Why no wake-up is lost between tasks
/// The reactor keeps one readiness per descriptor, and a task whose try finds nothing clears
/// it. Another task of this process may have made its last try before the event that
/// readiness stands for, and not be registered with the reactor yet: it would then sleep
/// through that event, which the first task used up for a condition of its own. So a task
/// counts its clearing in [`clears`](Watch::clears) before it clears, and a task that has
/// just registered with the reactor tries again if the count moved since its last try.
///
/// That is enough: an event that came before the registration either is still there (the
/// registration returns at once) or was cleared, and the count moved before the clearing,
/// which the registering task has seen (tokio clears and reads the readiness with release and
/// acquire); an event after the registration wakes every registered task, and a woken task
/// always gets its try. Costs one atomic load per registration, one increment per clearing.
#[derive(Debug)]
pub(crate) struct Watch {
    fd: AsyncFd<OwnedFd>,
    runtime: ::tokio::runtime::Id,
    clears: AtomicU64,
}

impl Watch {
    /// Registers `fd` with the reactor of the runtime this is called in; an error outside
    /// one. The watch registers a duplicate it owns (same open file, so the same readiness),
    /// so it may outlive `fd`.
    pub(crate) fn new(fd: BorrowedFd<'_>) -> io::Result<Watch> {
        let Ok(runtime) = ::tokio::runtime::Handle::try_current() else {
            return Err(io::Error::other(
                "an async method of multiproc was polled outside a tokio runtime",
            ));
        };
        let owned = fd.try_clone_to_owned()?;
        // Deprecated for descriptors an `AsyncFd` does not own; this one owns its duplicate,
        // which stays open exactly as long as the registration.
        // tokio panics on a runtime built without its I/O driver: say so as an error.
        #[allow(deprecated)]
        let registered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| AsyncFd::new(owned)));
        match registered {
            Ok(r) => r.map(|fd| Watch {
                fd,
                runtime: runtime.id(),
                clears: AtomicU64::new(0),
            }),
            Err(_) => Err(io::Error::other(
                "an async method of multiproc needs a tokio runtime with its I/O driver \
                 (`enable_io()` or `enable_all()` on the runtime builder)",
            )),
        }
    }

    /// Whether this was registered with the reactor of the runtime polling now.
    pub(crate) fn in_current_runtime(&self) -> bool {
        ::tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.runtime)
    }

    /// Runs `op` until it is ready, waiting for the descriptor to become readable after each
    /// try that was not: `op` tries without waiting (a non-blocking receive, a look at shared
    /// memory) and returns `Pending` when it must wait for the next readiness event. No
    /// event is missed between a try and the wait: readiness that arrives in between stays
    /// recorded until a try that follows it has run, in this task or (see [`Watch`]) in every
    /// task waiting on this watch.
    pub(crate) async fn readable<R>(&self, mut op: impl FnMut() -> Poll<R>) -> io::Result<R> {
        // The clearings seen before the first try (see [`Watch`]).
        let seen = self.clears.load(Ordering::SeqCst);
        if let Poll::Ready(r) = op() {
            return Ok(r);
        }
        // As a synchronous receive does: look again for a short while, as the library's
        // waiting policy allows, before sleeping in the reactor (a peer on another CPU
        // usually answers within microseconds; a wake-up through the reactor costs tens).
        // Each look yields to the runtime first, so other tasks run meanwhile.
        let mut spin = crate::spin::Spinner::new(SPIN);
        if spin.spinning() {
            loop {
                ::tokio::task::yield_now().await;
                if let Poll::Ready(r) = op() {
                    spin.hit();
                    return Ok(r);
                }
                if !spin.keep_going() {
                    break;
                }
            }
        }
        self.sleep_until(Interest::READABLE, seen, op).await
    }

    /// [`readable`](Watch::readable) for writing.
    pub(crate) async fn writable<R>(&self, mut op: impl FnMut() -> Poll<R>) -> io::Result<R> {
        let seen = self.clears.load(Ordering::SeqCst);
        if let Poll::Ready(r) = op() {
            return Ok(r);
        }
        self.sleep_until(Interest::WRITABLE, seen, op).await
    }

    /// The waiting part of [`readable`](Watch::readable) and [`writable`](Watch::writable),
    /// after a try that was not ready; `seen`: the clearings counted before that try.
    async fn sleep_until<R>(
        &self,
        interest: Interest,
        mut seen: u64,
        mut op: impl FnMut() -> Poll<R>,
    ) -> io::Result<R> {
        loop {
            let woke = {
                let mut ready = pin!(self.fd.ready(interest));
                std::future::poll_fn(|cx| match ready.as_mut().poll(cx) {
                    Poll::Ready(guard) => Poll::Ready(Some(guard)),
                    // Registered: cleared since the last try? Then try again (see [`Watch`]).
                    Poll::Pending => match self.clears.load(Ordering::SeqCst) {
                        now if now == seen => Poll::Pending,
                        _ => Poll::Ready(None),
                    },
                })
                .await
            };
            let guard = woke.transpose()?;
            seen = self.clears.load(Ordering::SeqCst);
            if let Poll::Ready(r) = op() {
                return Ok(r);
            }
            if let Some(mut guard) = guard {
                // Counted before the clearing; our own count is not news to us, another
                // task's in between is.
                if self.clears.fetch_add(1, Ordering::SeqCst) == seen {
                    seen += 1;
                }
                guard.clear_ready();
            }
        }
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first (the future is dropped).
pub(crate) async fn until<F: std::future::Future>(
    deadline: std::time::Instant,
    fut: F,
) -> Option<F::Output> {
    ::tokio::time::timeout_at(deadline.into(), fut).await.ok()
}

/// A number for the task being polled, distinct from every other task's of this process
/// (tokio's task ids come from one process-wide counter); `None` outside a spawned task
/// (a `block_on`'s own future stays on its thread). A task moves between worker threads,
/// so what it owns (a manager lock) is owned by the task, not the thread.
pub(crate) fn task_number() -> Option<u64> {
    ::tokio::task::try_id().map(|id| {
        let text = id.to_string();
        text.parse().unwrap_or(0)
    })
}

/// Runs `fut` to its end on the current runtime, without anyone awaiting it; `false` (and
/// `fut` dropped) outside a runtime.
pub(crate) fn detach(fut: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
    match ::tokio::runtime::Handle::try_current() {
        Ok(h) => {
            drop(h.spawn(fut));
            true
        }
        Err(_) => false,
    }
}

/// At most a fixed number of holders at once; more wait in line (first come, first
/// served). A waiter dropped in line gives its place up; a permit dropped lets the next in.
#[derive(Debug)]
pub(crate) struct Gate(::tokio::sync::Semaphore);

/// A place through a [`Gate`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Pass<'a>(#[allow(dead_code)] ::tokio::sync::SemaphorePermit<'a>);

impl Gate {
    /// A gate for `n` holders at once.
    pub(crate) const fn new(n: usize) -> Gate {
        Gate(::tokio::sync::Semaphore::const_new(n))
    }

    /// Waits for a place.
    pub(crate) async fn enter(&self) -> Pass<'_> {
        // The semaphore is never closed.
        Pass(self.0.acquire().await.expect("a gate is never closed"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::sys;

    /// Task Y makes its first try before a change (it looked, then was held up), while the
    /// doorbell rings for that change and task X, waiting on the same watch for something
    /// else, takes the readiness, finds nothing for itself and clears it. Y, no longer
    /// registered when the ring came, must not sleep through the change: only X's word can
    /// wake it (it slept for ever: a queue's getter and putter tasks stalled each other now
    /// and then on a multi-thread runtime). No spinning, which would look again.
    #[test]
    fn a_task_whose_try_came_before_the_ring_is_not_left_asleep_by_another_clearing() {
        crate::set_spin_policy(crate::SpinPolicy::Never);
        let rt = ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bell = sys::doorbell().unwrap();
        let watch = Arc::new(rt.block_on(async { Watch::new(bell.as_fd()) }).unwrap());
        let ready = Arc::new(AtomicBool::new(false));
        // 0: Y's first try is under way, having looked; 1: let go.
        let held = Arc::new(AtomicU32::new(2));
        let y = rt.spawn({
            let (watch, ready, held) = (watch.clone(), ready.clone(), held.clone());
            async move {
                watch
                    .readable(|| {
                        let seen = ready.load(Ordering::SeqCst);
                        if held.load(Ordering::SeqCst) == 2 {
                            held.store(0, Ordering::SeqCst);
                            while held.load(Ordering::SeqCst) != 1 {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        if seen { Poll::Ready(()) } else { Poll::Pending }
                    })
                    .await
            }
        });
        let until = |cond: &dyn Fn() -> bool| {
            while !cond() {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        until(&|| held.load(Ordering::SeqCst) == 0);
        // The change Y waits for, rung while its try is under way; X uses up the readiness:
        // its first try, then a second one once the reactor reported the ring, then it clears.
        ready.store(true, Ordering::SeqCst);
        sys::ring_doorbell(bell.as_fd());
        let tries = Arc::new(AtomicU32::new(0));
        let x = rt.spawn({
            let (watch, tries) = (watch.clone(), tries.clone());
            async move {
                watch
                    .readable(|| {
                        tries.fetch_add(1, Ordering::SeqCst);
                        Poll::<()>::Pending
                    })
                    .await
            }
        });
        until(&|| tries.load(Ordering::SeqCst) >= 2);
        std::thread::sleep(Duration::from_millis(50));
        held.store(1, Ordering::SeqCst);
        let woke = rt.block_on(async { ::tokio::time::timeout(Duration::from_secs(5), y).await });
        x.abort();
        crate::set_spin_policy(crate::SpinPolicy::Adaptive);
        assert!(
            matches!(woke, Ok(Ok(Ok(())))),
            "the task slept through the change it waited for: {woke:?}"
        );
    }
}
