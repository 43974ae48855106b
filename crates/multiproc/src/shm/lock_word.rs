//! The futex lock word under `Lock`, `RLock`, `Condition` and the shared objects: `0` when
//! free, else the owner's pid, with bit 31 set when someone may be sleeping on it.
//!
//! A waiter that slept a while with the same owner checks that the owner process still runs
//! and takes the lock over if it does not. That is how a lock held by a process killed with
//! SIGKILL is recovered instead of deadlocking everyone. A waiter with a deadline sleeps in
//! slices for that; one without sleeps without a time limit, and this process's watcher
//! thread wakes it now and then ([`lock_watch`]), so that its sleep arms no kernel timer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::lock_watch;
use crate::sys;

const WAITERS: u32 = 1 << 31;
/// How long a contended acquire spins before it goes to sleep (when the waiting policy allows).
const SPIN: Duration = Duration::from_micros(4);
/// How long a waiter with a deadline (or with no watcher) sleeps before it checks whether
/// the owner is still alive.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(50);

/// How an acquisition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken normally.
    Yes,
    /// Taken over from this dead process.
    FromDead(u32),
    /// Not taken before the deadline.
    TimedOut,
}

/// Tries once, without waiting.
pub(crate) fn try_lock(word: &AtomicU32) -> bool {
    word.compare_exchange(0, sys::getpid(), Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Takes the lock, waiting until `deadline` (`None`: no limit).
pub(crate) fn lock(word: &AtomicU32, deadline: Option<Instant>) -> Acquired {
    let me = sys::getpid();
    if word
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return Acquired::Yes;
    }
    // Critical sections under these locks are short: spin a little before sleeping, since a
    // futex sleep and wake-up cost microseconds (while the waiting policy says it pays).
    let mut spin = crate::spin::Spinner::new(SPIN);
    while spin.keep_going() {
        if word.load(Ordering::Relaxed) == 0
            && word
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            spin.hit();
            return Acquired::Yes;
        }
    }
    // With no deadline, a waiter sleeps without a time limit while the watcher watches
    // (see `lock_watch`): it wakes it now and then to check the owner.
    let sleep = |watched: bool| {
        // The value this waiter has slept on, and since when: a holder seen that long is
        // checked at the next wake-up, whoever wakes it (watchers of other processes that
        // wait on this word too wake it at their own ticks).
        let mut seen: Option<(u32, Instant)> = None;
        loop {
            let cur = word.load(Ordering::Relaxed);
            if cur & !WAITERS == 0 {
                // Free: take it, keeping the waiters bit since others may sleep.
                if word
                    .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Acquired::Yes;
                }
                continue;
            }
            if cur & WAITERS == 0
                && word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let t0 = Instant::now();
            let slice = match deadline {
                Some(d) => {
                    if t0 >= d {
                        return Acquired::TimedOut;
                    }
                    Some((d - t0).min(LIVENESS_SLICE))
                }
                None if watched => None,
                None => Some(LIVENESS_SLICE),
            };
            let since = match seen {
                Some((v, since)) if v == cur | WAITERS => since,
                _ => seen.insert((cur | WAITERS, t0)).1,
            };
            sys::futex_wait(word, cur | WAITERS, slice);
            // The same holder for most of a slice (or for the whole of a slice cut short by the
            // deadline): is it alive? A wake-up sooner than that lost a race for the lock.
            let woke = Instant::now();
            if (woke - since >= LIVENESS_SLICE * 7 / 8 || slice.is_some_and(|s| woke - t0 >= s))
                && word.load(Ordering::Relaxed) == cur | WAITERS
            {
                let owner = cur & !WAITERS;
                if owner != me
                    && !sys::process_alive(owner)
                    && word
                        .compare_exchange(
                            cur | WAITERS,
                            me | WAITERS,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return Acquired::FromDead(owner);
                }
                // Alive: the next check after another while, not at every wake-up.
                seen = Some((cur | WAITERS, woke));
            }
        }
    };
    match deadline {
        None => lock_watch::watched(word, sleep),
        Some(_) => sleep(false),
    }
}

/// Releases the lock; `false` if it was not locked.
pub(crate) fn unlock(word: &AtomicU32) -> bool {
    let prev = word.swap(0, Ordering::Release);
    if prev & WAITERS != 0 {
        sys::futex_wake(word, 1);
    }
    prev != 0
}

/// Whether the lock is held (by anyone).
pub(crate) fn is_locked(word: &AtomicU32) -> bool {
    word.load(Ordering::Relaxed) & !WAITERS != 0
}

/// A deadline `timeout` from now.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

/// What is left until `deadline`, `None` for no deadline, `Some(ZERO)` once passed.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}
