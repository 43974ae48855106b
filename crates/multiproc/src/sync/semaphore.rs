//! `Semaphore` and `BoundedSemaphore`, shared by processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::shm::{Block, lock_word};
use crate::sys;

const VALUE: usize = 0;
const SLEEPERS: usize = 4;
const BOUND: usize = 8;
const UNBOUNDED: u32 = u32::MAX;

/// A counting semaphore shared by processes (Python's `multiprocessing.Semaphore`).
///
/// Taking a permit hands back a [`SemaphoreGuard`] that returns it when dropped, also when
/// the holder panics. For Python's hand-over, where one party takes a permit and another
/// returns it, [`forget`](SemaphoreGuard::forget) the guard and call
/// [`release`](Semaphore::release) later, from any thread or process. A semaphore has no
/// owner: a holder killed with `SIGKILL` does not give its permit back.
///
/// ```
/// let s = multiproc::Semaphore::new(2)?;
/// {
///     let _a = s.acquire();
///     let _b = s.try_acquire().expect("a second permit");
///     assert!(s.try_acquire().is_none());
/// } // both permits come back here
/// assert_eq!(s.value(), 2);
/// s.acquire().forget(); // taken without a guard ...
/// assert_eq!(s.value(), 1);
/// s.release()?; // ... and returned by hand
/// assert_eq!(s.value(), 2);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Semaphore {
    block: Block,
}

/// A permit of a [`Semaphore`] (or a [`BoundedSemaphore`]); returned when dropped.
///
/// Returning it is refused, without a panic, if the semaphore is a `BoundedSemaphore`
/// already at its bound (someone released a permit by hand that this guard still holds).
#[derive(Debug)]
#[must_use = "the permit is returned when the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit taken without a guard: it comes back only through
    /// [`Semaphore::release`], which any thread or process may call (Python's hand-over).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = self.sem.release();
    }
}

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: u32) -> Result<Semaphore, SyncError> {
        Semaphore::with_bound(value, UNBOUNDED)
    }

    fn with_bound(value: u32, bound: u32) -> Result<Semaphore, SyncError> {
        let block = Block::new("multiproc-semaphore", 16)?;
        block.u32_at(VALUE).store(value, Ordering::Release);
        block.u32_at(BOUND).store(bound, Ordering::Release);
        Ok(Semaphore { block })
    }

    fn value_word(&self) -> &AtomicU32 {
        self.block.u32_at(VALUE)
    }

    fn take_one(&self) -> bool {
        let word = self.value_word();
        let mut v = word.load(Ordering::Relaxed);
        while v > 0 {
            match word.compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.take_one().then(|| SemaphoreGuard { sem: self })
    }

    /// Waits for a permit.
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        self.wait_for_permit(None);
        SemaphoreGuard { sem: self }
    }

    /// Waits for a permit at most `timeout` ([`SyncError::Timeout`] after).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>, SyncError> {
        if self.wait_for_permit(Some(timeout)) {
            Ok(SemaphoreGuard { sem: self })
        } else {
            Err(SyncError::Timeout(crate::TimedOut(timeout)))
        }
    }

    fn wait_for_permit(&self, timeout: Option<Duration>) -> bool {
        let deadline = lock_word::deadline(timeout);
        loop {
            if self.take_one() {
                return true;
            }
            let left = lock_word::remaining(deadline);
            if left == Some(Duration::ZERO) {
                return false;
            }
            let sleepers = self.block.u32_at(SLEEPERS);
            sleepers.fetch_add(1, Ordering::SeqCst);
            if self.value_word().load(Ordering::SeqCst) == 0 {
                sys::futex_wait(self.value_word(), 0, left);
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Returns a permit taken without a guard (see [`SemaphoreGuard::forget`]); any thread or
    /// process may. Over the bound of a [`BoundedSemaphore`] it is
    /// [`SyncError::OverReleased`].
    pub fn release(&self) -> Result<(), SyncError> {
        let bound = self.block.u32_at(BOUND).load(Ordering::Relaxed);
        let word = self.value_word();
        let mut v = word.load(Ordering::Relaxed);
        loop {
            if v >= bound {
                return Err(SyncError::OverReleased { bound });
            }
            match word.compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if self.block.u32_at(SLEEPERS).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(word, 1);
        }
        Ok(())
    }

    /// The number of free permits now.
    pub fn value(&self) -> u32 {
        self.value_word().load(Ordering::Relaxed)
    }
}

/// A semaphore that refuses to be released above its initial value (Python's
/// `BoundedSemaphore`): an extra release is [`SyncError::OverReleased`]. It has the methods of
/// [`Semaphore`] (through `Deref`), guards included.
///
/// ```
/// let s = multiproc::BoundedSemaphore::new(1)?;
/// assert!(s.release().is_err());
/// drop(s.acquire());
/// assert_eq!(s.value(), 1);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A semaphore with `value` permits, never more.
    pub fn new(value: u32) -> Result<BoundedSemaphore, SyncError> {
        Ok(BoundedSemaphore(Semaphore::with_bound(value, value)?))
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    fn deref(&self) -> &Semaphore {
        &self.0
    }
}
