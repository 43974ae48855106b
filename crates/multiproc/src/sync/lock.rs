//! `Lock` and `RLock`: cross-process mutual exclusion that survives a holder's death.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::shm::Block;
use crate::shm::lock_word::{self, Acquired};
use crate::sys;

/// What a timed or checked acquisition can report instead of a guard.
#[derive(Debug)]
pub enum AcquireError<G> {
    /// The previous holder died holding the lock. The caller holds it now (the guard is
    /// here): check or repair the protected state, then use the guard as usual.
    OwnerDied {
        /// The dead holder's pid.
        pid: u32,
        /// The lock, now held by the caller.
        guard: G,
    },
    /// Not acquired within the time limit.
    Timeout(crate::TimedOut),
}

impl<G> AcquireError<G> {
    /// Accepts a takeover from a dead holder as a normal acquisition (the caller vouches for
    /// the protected state); a timeout stays an error.
    pub fn recover(self) -> Result<G, SyncError> {
        match self {
            AcquireError::OwnerDied { guard, .. } => Ok(guard),
            AcquireError::Timeout(t) => Err(SyncError::Timeout(t)),
        }
    }
}

impl<G> std::fmt::Display for AcquireError<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::OwnerDied { pid, .. } => write!(
                f,
                "the previous holder (pid {pid}) died holding the lock; the caller holds it now"
            ),
            AcquireError::Timeout(t) => write!(f, "the lock was not acquired within {:?}", t.0),
        }
    }
}

impl<G: std::fmt::Debug> std::error::Error for AcquireError<G> {}

/// `?` on an acquisition in a function returning [`multiproc::Result`](crate::Result): a
/// takeover from a dead holder is an error there too (the guard is dropped, releasing the
/// lock); handle [`AcquireError::OwnerDied`] yourself to keep it.
impl<G> From<AcquireError<G>> for crate::error::Error {
    fn from(e: AcquireError<G>) -> crate::error::Error {
        crate::error::Error::Sync(SyncError::from(e))
    }
}

impl<G> From<AcquireError<G>> for SyncError {
    fn from(e: AcquireError<G>) -> SyncError {
        match e {
            AcquireError::OwnerDied { pid, .. } => SyncError::OwnerDied { pid },
            AcquireError::Timeout(t) => SyncError::Timeout(t),
        }
    }
}

fn finish<G>(
    got: Acquired,
    timeout: Option<Duration>,
    guard: impl FnOnce() -> G,
) -> Result<G, AcquireError<G>> {
    match got {
        Acquired::Yes => Ok(guard()),
        Acquired::FromDead(pid) => Err(AcquireError::OwnerDied {
            pid,
            guard: guard(),
        }),
        Acquired::TimedOut => Err(AcquireError::Timeout(crate::TimedOut(
            timeout.unwrap_or_default(),
        ))),
    }
}

/// A lock shared by processes (Python's `multiprocessing.Lock`): a handle that can be cloned,
/// passed to children and sent through connections.
///
/// Unlike CPython's, it recovers from a holder that dies: the next acquirer gets
/// [`AcquireError::OwnerDied`] with the lock, instead of waiting for ever.
///
/// ```
/// let lock = multiproc::Lock::new()?;
/// {
///     let _guard = lock.acquire()?;
///     assert!(lock.try_acquire().is_none());
/// }
/// assert!(lock.try_acquire().is_some());
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    block: Block,
}

/// Holds a [`Lock`]; releases it when dropped.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        lock_word::unlock(self.lock.word());
    }
}

impl Lock {
    /// A new unlocked lock.
    pub fn new() -> Result<Lock, SyncError> {
        Ok(Lock {
            block: Block::new("multiproc-lock", 8)?,
        })
    }

    pub(crate) fn word(&self) -> &std::sync::atomic::AtomicU32 {
        self.block.u32_at(0)
    }

    /// Waits for the lock.
    pub fn acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        finish(lock_word::lock(self.word(), None), None, || LockGuard {
            lock: self,
        })
    }

    /// Waits for the lock at most `timeout`.
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        finish(
            lock_word::lock(self.word(), lock_word::deadline(Some(timeout))),
            Some(timeout),
            || LockGuard { lock: self },
        )
    }

    /// Takes the lock if it is free.
    pub fn try_acquire(&self) -> Option<LockGuard<'_>> {
        lock_word::try_lock(self.word()).then(|| LockGuard { lock: self })
    }

    /// Whether someone holds the lock.
    pub fn is_locked(&self) -> bool {
        lock_word::is_locked(self.word())
    }

    /// Releases a lock held without a guard (after [`std::mem::forget`] of one, or by another
    /// process, as Python allows). Releasing an unlocked lock is [`SyncError::NotLocked`].
    pub fn release(&self) -> Result<(), SyncError> {
        if lock_word::unlock(self.word()) {
            Ok(())
        } else {
            Err(SyncError::NotLocked)
        }
    }
}

/// A reentrant lock shared by processes (Python's `multiprocessing.RLock`): the thread that
/// holds it may acquire it again; it is released when every acquisition is.
///
/// ```
/// let lock = multiproc::RLock::new()?;
/// let a = lock.acquire()?;
/// let b = lock.acquire()?; // same thread: no deadlock
/// drop((b, a));
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RLock {
    block: Block,
}

const RL_WORD: usize = 0;
const RL_TID: usize = 4;
const RL_COUNT: usize = 8;

/// Holds an [`RLock`] once; the lock is free when every guard is dropped.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

impl RLock {
    /// A new unlocked reentrant lock.
    pub fn new() -> Result<RLock, SyncError> {
        Ok(RLock {
            block: Block::new("multiproc-rlock", 16)?,
        })
    }

    fn owned_here(&self) -> bool {
        let word = self
            .block
            .u32_at(RL_WORD)
            .load(std::sync::atomic::Ordering::Relaxed)
            & !(1 << 31);
        word == sys::getpid()
            && self
                .block
                .u32_at(RL_TID)
                .load(std::sync::atomic::Ordering::Relaxed)
                == sys::gettid()
    }

    fn take(
        &self,
        got: Acquired,
        timeout: Option<Duration>,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        use std::sync::atomic::Ordering::Relaxed;
        if !matches!(got, Acquired::TimedOut) {
            self.block.u32_at(RL_TID).store(sys::gettid(), Relaxed);
            self.block.u32_at(RL_COUNT).store(1, Relaxed);
        }
        finish(got, timeout, || RLockGuard { lock: self })
    }

    /// One more acquisition by the owning thread. Only the owner writes the count, so a plain
    /// load and store do (no read-modify-write instruction on this path).
    fn reenter(&self) -> RLockGuard<'_> {
        use std::sync::atomic::Ordering::Relaxed;
        let count = self.block.u32_at(RL_COUNT);
        count.store(count.load(Relaxed) + 1, Relaxed);
        RLockGuard { lock: self }
    }

    /// Waits for the lock (at once if this thread holds it).
    pub fn acquire(&self) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        if self.owned_here() {
            return Ok(self.reenter());
        }
        self.take(lock_word::lock(self.block.u32_at(RL_WORD), None), None)
    }

    /// Waits for the lock at most `timeout`.
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        if self.owned_here() {
            return Ok(self.reenter());
        }
        self.take(
            lock_word::lock(
                self.block.u32_at(RL_WORD),
                lock_word::deadline(Some(timeout)),
            ),
            Some(timeout),
        )
    }

    /// Releases one acquisition made without keeping the guard. Only the owning thread may
    /// release ([`SyncError::NotOwner`] otherwise).
    pub fn release(&self) -> Result<(), SyncError> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.owned_here() {
            return Err(SyncError::NotOwner);
        }
        // Only the owner writes the count (see `reenter`).
        let count = self.block.u32_at(RL_COUNT);
        let left = count.load(Relaxed).saturating_sub(1);
        count.store(left, Relaxed);
        if left == 0 {
            self.block.u32_at(RL_TID).store(0, Relaxed);
            lock_word::unlock(self.block.u32_at(RL_WORD));
        }
        Ok(())
    }

    /// Whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        self.owned_here()
    }

    /// Runs `f` holding the lock and returns what it returns, for a short critical section
    /// that never takes this lock itself (a copy in or out of shared memory). At once when
    /// this thread already holds the lock; a dead holder's lock is taken over.
    ///
    /// When the lock is free this costs what a [`Lock`] does, one compare-and-swap and one
    /// swap: the owning thread is not recorded. Nothing can ask for it before `f` returns,
    /// and other threads of this process see the owner thread id of 0 that every release
    /// leaves, which is none of theirs, so they wait as they should.
    pub(crate) fn run_brief<R>(&self, f: impl FnOnce() -> R) -> R {
        let word = self.block.u32_at(RL_WORD);
        if lock_word::try_lock(word) {
            let _held = BriefHold(word);
            return f();
        }
        let _held = match self.acquire() {
            Ok(g) | Err(AcquireError::OwnerDied { guard: g, .. }) => Some(g),
            Err(AcquireError::Timeout(_)) => None, // no deadline was given
        };
        f()
    }
}

/// The lock word of an [`RLock`] taken by [`RLock::run_brief`]'s fast path; released on
/// drop, also if the critical section unwinds.
struct BriefHold<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for BriefHold<'_> {
    fn drop(&mut self) {
        lock_word::unlock(self.0);
    }
}
