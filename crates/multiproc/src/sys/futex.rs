//! Futexes: sleeping on a shared `u32` until it changes, and waking the sleepers, in any
//! process that maps it.
//!
//! Through rustix: nix has no futex calls.
//!
//! And a list of the words that sleepers of this process sleep on without a time limit
//! ([`while_listed`]), which a watcher thread wakes now and then ([`wake_listed`]): a lock
//! waiter then notices a dead owner without arming a timer for every sleep
//! (`shm::lock_watch`).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout` (`None`: until woken). Spurious
/// returns are possible; callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes up to `n` sleepers on `word` (in any process); `u32::MAX` wakes all.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    // The kernel reads the count as a signed int: a negative one wakes a single sleeper.
    let n = n.min(i32::MAX as u32);
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n);
}

/// How many sleepers of one process can be listed at once for [`wake_listed`] (more sleep
/// in time slices instead).
pub(crate) const LISTED_MAX: usize = 64;

/// A listing: its state (a sequence number above the two low bits, a tag in them) and the
/// address of the word its sleeper sleeps on (valid while the tag is [`SLEEPING`] or
/// [`WAKING`]). One per cache line: threads that sleep at once list and unlist side by side.
#[repr(align(64))]
struct Listing {
    state: AtomicU64,
    addr: AtomicUsize,
}

const TAG: u64 = 3;
const FREE: u64 = 0;
const CLAIMED: u64 = 1;
const SLEEPING: u64 = 2;
/// The watcher is waking the word: the sleeper's [`while_listed`] does not return (and its
/// borrow of the word does not end) until the watcher has put the listing back.
const WAKING: u64 = 3;

static LISTED: [Listing; LISTED_MAX] = [const {
    Listing {
        state: AtomicU64::new(FREE),
        addr: AtomicUsize::new(0),
    }
}; LISTED_MAX];

/// Runs `f` with `word` listed as slept on, so that [`wake_listed`] wakes its sleepers now
/// and then; `f` is told whether a listing was free (when none is, nothing is listed).
/// The listing ends before this returns, also when `f` unwinds.
pub(crate) fn while_listed<R>(word: &AtomicU32, f: impl FnOnce(bool) -> R) -> R {
    /// Ends the listing: waits while the watcher wakes the word (one system call).
    struct Unlist(&'static Listing);
    impl Drop for Unlist {
        fn drop(&mut self) {
            loop {
                let st = self.0.state.load(Ordering::Acquire);
                if st & TAG == SLEEPING
                    && self
                        .0
                        .state
                        .compare_exchange(st, st & !TAG, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    return;
                }
                // Sleep rather than yield: a waiter of a higher scheduling class would
                // never let the watcher run.
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
    // Threads start at different listings, so that they rarely meet on one.
    let start = super::gettid() as usize;
    let claimed = (0..LISTED_MAX).find_map(|i| {
        let l = &LISTED[(start + i) % LISTED_MAX];
        let st = l.state.load(Ordering::Relaxed);
        (st & TAG == FREE
            && l.state
                .compare_exchange(st, st | CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok())
        .then(|| {
            l.addr
                .store(word as *const AtomicU32 as usize, Ordering::Relaxed);
            // A new sequence number: the watcher tells this sleep from the listing's last.
            // Sequentially consistent: the watcher either sees it or is seen parked
            // (`shm::lock_watch`).
            l.state
                .store(((st >> 2) + 1) << 2 | SLEEPING, Ordering::SeqCst);
            Unlist(l)
        })
    });
    let listed = claimed.is_some();
    let r = f(listed);
    drop(claimed);
    r
}

/// Wakes every sleeper on each word listed now under the same listing as at the last call
/// (`seen` keeps what that call saw), each word once; returns whether any word is listed.
pub(crate) fn wake_listed(seen: &mut [u64; LISTED_MAX]) -> bool {
    let mut any = false;
    let mut woken = [0usize; LISTED_MAX];
    let mut n = 0;
    for (l, seen) in LISTED.iter().zip(seen.iter_mut()) {
        let st = l.state.load(Ordering::SeqCst);
        any |= st & TAG != FREE;
        // Many waiters of a lock each list its word: one wake-up reaches them all.
        if st & TAG == SLEEPING
            && st == *seen
            && !woken[..n].contains(&l.addr.load(Ordering::Relaxed))
            && l.state
                .compare_exchange(st, st | WAKING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            woken[n] = l.addr.load(Ordering::Relaxed);
            n += 1;
            // SAFETY: the address was stored from a `&AtomicU32` borrowed by the
            // `while_listed` call that listed it; that call cannot return, so the borrow
            // lasts, until the state leaves WAKING, which only the store below does.
            let word = unsafe { &*(woken[n - 1] as *const AtomicU32) };
            futex_wake(word, u32::MAX);
            l.state.store(st, Ordering::Release);
        }
        *seen = st;
    }
    any
}

/// Whether any word is listed now.
pub(crate) fn any_listed() -> bool {
    LISTED
        .iter()
        .any(|l| l.state.load(Ordering::SeqCst) & TAG != FREE)
}

/// In a forked child, before its own watcher starts: the listings are the parent's threads'
/// (none of which runs here).
pub(crate) fn forget_listed() {
    for l in &LISTED {
        l.state.store(FREE, Ordering::Relaxed);
    }
}

/// Whether `word` is listed now (for tests).
#[cfg(test)]
pub(crate) fn is_listed(word: &AtomicU32) -> bool {
    LISTED.iter().any(|l| {
        l.state.load(Ordering::SeqCst) & TAG != FREE
            && l.addr.load(Ordering::Relaxed) == word as *const AtomicU32 as usize
    })
}
