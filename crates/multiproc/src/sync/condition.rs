//! `Condition`, shared by processes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::{AcquireError, Lock, LockGuard};
use crate::error::SyncError;
use crate::shm::{Block, lock_word};
use crate::sys;

const SEQ: usize = 0;

/// A condition variable shared by processes, with its lock (Python's
/// `multiprocessing.Condition`).
///
/// ```
/// let c = multiproc::Condition::new()?;
/// let guard = c.acquire()?;
/// let (guard, notified) = c.wait_timeout(guard, std::time::Duration::from_millis(10))?;
/// assert!(!notified);
/// c.notify_all();
/// drop(guard);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    block: Block,
}

impl Condition {
    /// A condition with a new lock.
    pub fn new() -> Result<Condition, SyncError> {
        Condition::with_lock(Lock::new()?)
    }

    /// A condition over an existing lock.
    pub fn with_lock(lock: Lock) -> Result<Condition, SyncError> {
        Ok(Condition {
            lock,
            block: Block::new("multiproc-condition", 8)?,
        })
    }

    /// The condition's lock.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Acquires the condition's lock.
    pub fn acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        self.lock.acquire()
    }

    /// Releases the lock, sleeps until notified, takes the lock back.
    pub fn wait<'a>(&'a self, guard: LockGuard<'a>) -> Result<LockGuard<'a>, SyncError> {
        Ok(self.wait_inner(guard, None)?.0)
    }

    /// [`wait`](Condition::wait) at most `timeout`; the flag says whether it was notified
    /// (rather than timed out).
    pub fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool), SyncError> {
        self.wait_inner(guard, Some(timeout))
    }

    /// Waits until `predicate` holds (checked under the lock), at most `timeout`; returns the
    /// guard and the predicate's last value.
    pub fn wait_for<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        timeout: Option<Duration>,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<(LockGuard<'a>, bool), SyncError> {
        let deadline = lock_word::deadline(timeout);
        loop {
            if predicate() {
                return Ok((guard, true));
            }
            let left = lock_word::remaining(deadline);
            if left == Some(Duration::ZERO) {
                return Ok((guard, false));
            }
            guard = self.wait_inner(guard, left)?.0;
        }
    }

    fn wait_inner<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Option<Duration>,
    ) -> Result<(LockGuard<'a>, bool), SyncError> {
        let seq = self.block.u32_at(SEQ);
        let before = seq.load(Ordering::SeqCst);
        drop(guard);
        sys::futex_wait(seq, before, timeout);
        let notified = seq.load(Ordering::SeqCst) != before;
        let guard = self.lock.acquire()?;
        Ok((guard, notified))
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) {
        self.block.u32_at(SEQ).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.block.u32_at(SEQ), n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}
