//! [`Watch`] on tokio's reactor: an `AsyncFd` over a duplicate of the descriptor watched.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;

/// How long an awaited read looks for its data before it sleeps in the reactor, when
/// spinning pays (the synchronous receive's budget).
const SPIN: std::time::Duration = crate::spin::REPLY_SPIN;

/// A descriptor registered with the runtime's reactor (edge-triggered), so tasks can wait
/// until it is readable or writable. Any number of tasks may wait on one watch at once.
#[derive(Debug)]
pub(crate) struct Watch(AsyncFd<OwnedFd>, ::tokio::runtime::Id);

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
            Ok(r) => r.map(|a| Watch(a, runtime.id())),
            Err(_) => Err(io::Error::other(
                "an async method of multiproc needs a tokio runtime with its I/O driver \
                 (`enable_io()` or `enable_all()` on the runtime builder)",
            )),
        }
    }

    /// Whether this was registered with the reactor of the runtime polling now.
    pub(crate) fn in_current_runtime(&self) -> bool {
        ::tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.1)
    }

    /// Runs `op` until it is ready, waiting for the descriptor to become readable after each
    /// try that was not: `op` tries without waiting (a non-blocking receive, a look at shared
    /// memory) and returns `Pending` when it must wait for the next readiness event. No
    /// event is missed between a try and the wait: readiness that arrives in between stays
    /// recorded until a try that follows it has run.
    pub(crate) async fn readable<R>(&self, mut op: impl FnMut() -> Poll<R>) -> io::Result<R> {
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
        loop {
            let mut guard = self.0.readable().await?;
            if let Poll::Ready(r) = op() {
                return Ok(r);
            }
            guard.clear_ready();
        }
    }

    /// [`readable`](Watch::readable) for writing.
    pub(crate) async fn writable<R>(&self, mut op: impl FnMut() -> Poll<R>) -> io::Result<R> {
        if let Poll::Ready(r) = op() {
            return Ok(r);
        }
        loop {
            let mut guard = self.0.writable().await?;
            if let Poll::Ready(r) = op() {
                return Ok(r);
            }
            guard.clear_ready();
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
