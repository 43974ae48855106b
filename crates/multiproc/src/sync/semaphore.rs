//! `Semaphore` and `BoundedSemaphore`, shared by processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::raw;
use crate::error::SyncError;
use crate::shared::block::Block;
use crate::sys;

const VALUE: usize = 0;
const SLEEPERS: usize = 4;
const BOUND: usize = 8;
const UNBOUNDED: u32 = u32::MAX;

/// A counting semaphore shared by processes (Python's `multiprocessing.Semaphore`).
///
/// ```
/// let s = multiproc::Semaphore::new(2)?;
/// s.acquire();
/// assert!(s.try_acquire());
/// assert!(!s.try_acquire());
/// s.release()?;
/// assert_eq!(s.value(), 1);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Semaphore {
    block: Block,
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

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> bool {
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

    /// Waits for a permit.
    pub fn acquire(&self) {
        self.wait_for_permit(None);
    }

    /// Waits for a permit at most `timeout`; returns whether it got one.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.wait_for_permit(Some(timeout))
    }

    fn wait_for_permit(&self, timeout: Option<Duration>) -> bool {
        let deadline = raw::deadline(timeout);
        loop {
            if self.try_acquire() {
                return true;
            }
            let left = raw::remaining(deadline);
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

    /// Returns a permit. Over the bound of a [`BoundedSemaphore`] it is an error.
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
/// `BoundedSemaphore`): an extra release is [`SyncError::OverReleased`].
///
/// ```
/// let s = multiproc::BoundedSemaphore::new(1)?;
/// assert!(s.release().is_err());
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
