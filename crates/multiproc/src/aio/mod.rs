//! The readiness layer under every async method (feature `tokio`).
//!
//! Async methods wait for the kernel, never for a thread: a process's end is its pidfd
//! becoming readable, a connection's message its socket, a queue's item or room the queue's
//! doorbell (an eventfd its producers and consumers ring while someone waits that way, see
//! `shm::ring`), a pool result a waker the pool's handler wakes (`pool::future`). Nothing here
//! parks a thread per pending future.
//!
//! Everything above this module is runtime-agnostic: plain `async fn`s and `Future`/`Stream`
//! implementations that ask a [`Watch`] to wait until a descriptor is ready. [`Watch`] is the
//! one piece that names a runtime — today tokio's reactor (`AsyncFd`, in `tokio.rs`); an
//! adapter for another runtime (smol's or async-std's `async-io`) provides the same
//! [`Watch`] from a file of its own, and nothing else changes.

mod tokio;

pub(crate) use self::tokio::{Gate, Watch, detach, task_number, until};

use std::sync::{Arc, Mutex, PoisonError};

/// A [`Watch`] made on first use and kept: descriptors that live as long as their owner (a
/// connection's socket, a queue's doorbell, a process's pidfd) are registered with the
/// reactor once, not per wait. A use under another runtime than the registration's (the
/// first one ended, or the owner moved: a manager's pooled connections serve every runtime
/// of the process) registers the descriptor again with that runtime's reactor.
#[derive(Debug, Default)]
pub(crate) struct LazyWatch(Mutex<Option<Arc<Watch>>>);

impl LazyWatch {
    /// The watch of `fd` in the current runtime, registering it on first use there. `fd`
    /// must be the same descriptor on every call.
    pub(crate) fn get(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Arc<Watch>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = slot.as_ref().filter(|w| w.in_current_runtime()) {
            return Ok(w.clone());
        }
        let w = Arc::new(Watch::new(fd)?);
        *slot = Some(w.clone());
        Ok(w)
    }
}
