//! [`Watch`] on tokio's reactor: an `AsyncFd` over a duplicate of the descriptor watched.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;

/// A descriptor registered with the runtime's reactor (edge-triggered), so tasks can wait
/// until it is readable or writable. Any number of tasks may wait on one watch at once.
#[derive(Debug)]
pub(crate) struct Watch(AsyncFd<OwnedFd>);

impl Watch {
    /// Registers `fd` with the reactor of the runtime this is called in; an error outside
    /// one. The watch registers a duplicate it owns (same open file, so the same readiness),
    /// so it may outlive `fd`.
    pub(crate) fn new(fd: BorrowedFd<'_>) -> io::Result<Watch> {
        if ::tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "an async method of multiproc was polled outside a tokio runtime",
            ));
        }
        let owned = fd.try_clone_to_owned()?;
        // Deprecated for descriptors an `AsyncFd` does not own; this one owns its duplicate,
        // which stays open exactly as long as the registration.
        #[allow(deprecated)]
        AsyncFd::new(owned).map(Watch)
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
