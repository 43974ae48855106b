//! `Barrier`, shared by processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::shm::{Block, lock_word};
use crate::sys;

const LOCK: usize = 0;
const GENERATION: usize = 4;
const COUNT: usize = 8;
const PARTIES: usize = 12;
const BROKEN: usize = 16;
/// The generation whose waiters were released by a break, not by the last arrival.
const BROKEN_GENERATION: usize = 20;
const NONE: u32 = u32::MAX;

/// A barrier for a fixed number of parties across processes (Python's
/// `multiprocessing.Barrier`): each `wait` returns once all parties have called it.
///
/// ```
/// let b = multiproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Barrier {
    block: Block,
}

impl Barrier {
    /// A barrier for `parties` (at least 1).
    pub fn new(parties: u32) -> Result<Barrier, SyncError> {
        if parties == 0 {
            return Err(SyncError::Invalid(
                "a barrier needs at least one party".into(),
            ));
        }
        let block = Block::new("multiproc-barrier", 24)?;
        block.u32_at(PARTIES).store(parties, Ordering::Release);
        block
            .u32_at(BROKEN_GENERATION)
            .store(NONE, Ordering::Release);
        Ok(Barrier { block })
    }

    fn w(&self, offset: usize) -> &AtomicU32 {
        self.block.u32_at(offset)
    }

    fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        // A holder that died mid-update leaves the barrier as it was: take it over.
        let _ = lock_word::lock(self.w(LOCK), None);
        let out = f();
        lock_word::unlock(self.w(LOCK));
        out
    }

    /// Waits for all parties; returns this party's arrival index (0 for the first).
    pub fn wait(&self) -> Result<u32, SyncError> {
        self.wait_inner(None)
    }

    /// [`wait`](Barrier::wait) at most `timeout`; a timeout breaks the barrier (as in
    /// Python) and is reported as [`SyncError::BrokenBarrier`] to everyone.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, SyncError> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<u32, SyncError> {
        let deadline = lock_word::deadline(timeout);
        let arrival = self.locked(|| {
            if self.w(BROKEN).load(Ordering::Relaxed) != 0 {
                return Err(SyncError::BrokenBarrier);
            }
            let generation = self.w(GENERATION).load(Ordering::Relaxed);
            let index = self.w(COUNT).fetch_add(1, Ordering::Relaxed);
            if index + 1 == self.w(PARTIES).load(Ordering::Relaxed) {
                self.w(COUNT).store(0, Ordering::Relaxed);
                self.w(GENERATION).fetch_add(1, Ordering::SeqCst);
                sys::futex_wake(self.w(GENERATION), u32::MAX);
                return Ok((index, None));
            }
            Ok((index, Some(generation)))
        })?;
        let (index, Some(generation)) = arrival else {
            return Ok(arrival.0);
        };
        loop {
            if self.w(GENERATION).load(Ordering::SeqCst) != generation {
                return if self.w(BROKEN_GENERATION).load(Ordering::SeqCst) == generation {
                    Err(SyncError::BrokenBarrier)
                } else {
                    Ok(index)
                };
            }
            let left = lock_word::remaining(deadline);
            if left == Some(Duration::ZERO) {
                self.abort();
                continue;
            }
            sys::futex_wait(self.w(GENERATION), generation, left);
        }
    }

    /// Breaks the barrier: current and future waiters get [`SyncError::BrokenBarrier`]
    /// until [`reset`](Barrier::reset).
    pub fn abort(&self) {
        self.locked(|| {
            self.w(BROKEN).store(1, Ordering::Relaxed);
            self.release_waiters_broken();
        });
    }

    /// Returns the barrier to its empty state; parties waiting now get
    /// [`SyncError::BrokenBarrier`].
    pub fn reset(&self) {
        self.locked(|| {
            self.w(BROKEN).store(0, Ordering::Relaxed);
            if self.w(COUNT).load(Ordering::Relaxed) > 0 {
                self.release_waiters_broken();
            }
        });
    }

    fn release_waiters_broken(&self) {
        let generation = self.w(GENERATION).load(Ordering::Relaxed);
        self.w(BROKEN_GENERATION)
            .store(generation, Ordering::SeqCst);
        self.w(COUNT).store(0, Ordering::Relaxed);
        self.w(GENERATION).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.w(GENERATION), u32::MAX);
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.w(PARTIES).load(Ordering::Relaxed)
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.w(COUNT).load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.w(BROKEN).load(Ordering::Relaxed) != 0
    }
}
