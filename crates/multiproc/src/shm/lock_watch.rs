//! The watcher that lets a lock waiter sleep without a time limit and still notice an owner
//! that died holding the lock.
//!
//! A waiter used to sleep in time slices and check the owner after each one. A futex wait
//! with a time limit arms a kernel timer: on one CPU that was about 0.3 µs of a 2.8 µs lock
//! hand-off. Now a waiter with no deadline lists the word it sleeps on
//! ([`sys::while_listed`]) and sleeps without a limit; one thread per process wakes every
//! word that stayed listed for a whole [`TICK`] ([`sys::wake_listed`]), and the woken waiter
//! checks the owner as before: every 50-100 ms, since a word is woken once it stayed
//! listed across two ticks. The thread starts at the first such sleep, parks while nothing is
//! listed (the next listing wakes it), and a forked child starts its own. When it
//! cannot start, or every listing is taken, waiters sleep in slices as before.

use crate::sys;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How long a listed sleep lasts at least before the watcher wakes it (at most twice that):
/// the slice of a waiter that checks by itself.
const TICK: Duration = super::lock_word::LIVENESS_SLICE;

/// The process image whose watcher runs (its fork generation above its pid: a pid alone can
/// be a parent's that was reused), or is starting ([`STARTING`]) or could not start
/// ([`FAILED`]) in it.
static OWNER: AtomicU64 = AtomicU64::new(0);
const STARTING: u64 = 1 << 31;
const FAILED: u64 = 1 << 30;
/// 1 while the watcher sleeps until a listing wakes it.
static PARKED: AtomicU32 = AtomicU32::new(0);

/// Runs `f` with `word` watched: `f(true)` may sleep on `word` without a time limit (the
/// watcher wakes it now and then); `f(false)` must sleep in slices, since nothing watches.
pub(crate) fn watched<R>(word: &AtomicU32, f: impl FnOnce(bool) -> R) -> R {
    if !running() {
        return f(false);
    }
    sys::while_listed(word, |listed| {
        // Listed first, then looked at the watcher: it either sees the listing before it
        // parks or is seen parked here (both sequentially consistent).
        if listed && PARKED.load(Ordering::SeqCst) == 1 && PARKED.swap(0, Ordering::SeqCst) == 1 {
            sys::futex_wake(&PARKED, 1);
        }
        f(listed)
    })
}

/// Whether this process's watcher runs; starts it if no thread of this process has tried.
fn running() -> bool {
    let me = u64::from(sys::fork_generation()) << 32 | u64::from(sys::getpid());
    let cur = OWNER.load(Ordering::Acquire);
    if cur == me {
        return true;
    }
    if cur & !(STARTING | FAILED) == me
        || OWNER
            .compare_exchange(cur, me | STARTING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        // Starting in another thread (which sleeps in slices meanwhile), or failed.
        return false;
    }
    // Anything listed is a parent's (this is a new process, forked): forget it.
    sys::forget_listed();
    PARKED.store(0, Ordering::Relaxed);
    let started = std::thread::Builder::new()
        .name("multiproc-lock-watch".into())
        .stack_size(64 * 1024)
        .spawn(run);
    let ok = started.is_ok();
    OWNER.store(if ok { me } else { me | FAILED }, Ordering::Release);
    ok
}

/// The watcher: every tick, wakes the words listed since the last one; parks when none is.
fn run() {
    let mut seen = [0; sys::LISTED_MAX];
    loop {
        std::thread::sleep(TICK);
        if sys::wake_listed(&mut seen) {
            continue;
        }
        PARKED.store(1, Ordering::SeqCst);
        if sys::any_listed() {
            PARKED.store(0, Ordering::Relaxed);
            continue;
        }
        while PARKED.load(Ordering::SeqCst) == 1 {
            sys::futex_wait(&PARKED, 1, None);
        }
    }
}

#[cfg(test)]
mod test {
    use std::sync::atomic::AtomicU32;
    use std::time::{Duration, Instant};

    use crate::shm::lock_word::{self, Acquired};
    use crate::sys;

    /// Waits until `f` holds, at most 10 s.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// The voluntary context switches of thread `tid` of this process (one per sleep).
    fn sleeps(tid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    #[test]
    fn a_waiter_with_no_deadline_is_listed_and_woken_while_it_sleeps_and_one_with_a_deadline_is_not_listed()
     {
        // Held by another process that lives for the whole test (the one that runs it): every
        // check finds the holder alive, and no waiter takes the lock over.
        let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(sys::getppid())));
        let timed = std::thread::spawn(|| {
            lock_word::lock(word, Some(Instant::now() + Duration::from_millis(200)))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !sys::is_listed(word),
            "a waiter with a deadline sleeps in slices"
        );
        assert_eq!(timed.join().unwrap(), Acquired::TimedOut);
        let (tid_tx, tid) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tid_tx.send(sys::gettid()).unwrap();
            lock_word::lock(word, None)
        });
        let tid = tid.recv().unwrap();
        assert!(
            eventually(|| sys::is_listed(word)),
            "the waiter lists the word"
        );
        std::thread::sleep(Duration::from_millis(20));
        let before = sleeps(tid);
        // Two ticks and more: the watcher wakes it, it finds the holder alive and sleeps again.
        std::thread::sleep(Duration::from_millis(250));
        assert!(sleeps(tid) > before, "the watcher woke the waiter");
        assert!(sys::is_listed(word) && !waiter.is_finished());
        lock_word::unlock(word);
        assert_eq!(waiter.join().unwrap(), Acquired::Yes);
        assert!(!sys::is_listed(word));
        lock_word::unlock(word);
    }
}
