//! Synchronization across processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Condition`], [`Event`], [`Barrier`].
//!
//! Each lives in a small shared memory block (a memfd) and is a handle: clone it, pass it to a
//! child as an argument, send it through a connection. Waits sleep on futexes, so an
//! uncontended acquire is one atomic instruction and no system call. A lock whose holder dies
//! (even by `SIGKILL`) is taken over by the next acquirer, who is told so
//! ([`AcquireError::OwnerDied`]) instead of waiting for ever.

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;

pub use barrier::Barrier;
pub use condition::Condition;
pub use event::Event;
pub use lock::{AcquireError, Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
