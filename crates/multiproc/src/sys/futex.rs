//! Futexes: sleeping on a shared `u32` until it changes, and waking the sleepers, in any
//! process that maps it.
//!
//! Through rustix: nix has no futex calls.

use std::sync::atomic::AtomicU32;
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
