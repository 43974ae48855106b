//! The library's one waiting policy: whether a waiter looks for its event a little while before
//! it sleeps, and for how long.
//!
//! A wake-up from another CPU costs tens of microseconds on a virtual machine, and an event
//! that another process on another CPU is about to produce usually comes within a few: spinning
//! first then saves most of a round trip. But a spinner is a runnable task. When the machine has
//! more runnable tasks than CPUs, the spinner takes the CPU the process it waits for needs, and
//! every wait gets longer. So spinning is allowed only while it pays:
//! - never on a single CPU (the event cannot come while this task holds the CPU). The count is
//!   the machine's CPUs as the cgroup limits them, not this process's affinity mask: a process
//!   pinned to one CPU may wait for a peer pinned to another;
//! - on a crowded machine (more runnable tasks than those CPUs, sampled from
//!   `/proc/loadavg` at most every [`SAMPLE_EVERY`] by whichever waiter finds the sample
//!   stale), only while spins have been paying: a running score of hits counts, and below
//!   [`CROWDED_SCORE`] one wait in [`PROBE_EVERY`] still spins, so the score can recover. A
//!   consumer whose producer runs flat out on the other CPU keeps spinning (it hits); a
//!   request/reply client among more clients than CPUs stops (it misses);
//! - not at all on a swamped machine (at least [`SWAMPED_PER_CPU`] runnable tasks per CPU): there
//!   a spin that hits has still kept a CPU from tasks that wait for one (see `budget`);
//! - not for a while after spins keep missing: [`MISSES_TO_BACK_OFF`] misses in a row stop
//!   spinning in this process for a back-off that doubles (up to [`MAX_BACKOFF`]) while misses
//!   continue, and a hit resets it. A spin that lost its CPU before the event came counts as a
//!   miss too: the event may have come because another task ran here (the peer shares this
//!   CPU), which a sleep does as well for less. It lost it when a yield ran another task
//!   ([`CEDED`]) or the clock jumped between two looks ([`PREEMPTED`]).
//!
//! A spin yields now and then, so that a peer on the same CPU can run (a producer then fills
//! the queue its consumer looks at). A yield that ran a CPU-bound task for its time slice
//! ([`HOGGED`]) stops yields in the process for [`NO_YIELD_FOR`]: beside such a task each yield
//! cost a round trip hundreds of microseconds.
//!
//! `MULTIPROC_SPIN=off` (or `0`) turns spinning off in a process and its children, `on` (or
//! `1`) keeps it on whatever the load; the default is the adaptive policy above.
//! [`set_spin_policy`] sets it from code.
//!
//! Every waiter of the library (pool results, queue gets, lock words, connections, manager
//! calls) asks [`Spinner::new`] and reports with [`Spinner::hit`] / [`Spinner::keep_going`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::monotonic_ns;

/// How often the machine's runnable count is read at most.
const SAMPLE_EVERY: u64 = 5_000_000;
/// Runnable tasks per CPU from which the machine is swamped and waits do not spin. Three, not
/// two: beside one CPU hog, a pool's caller, handler and workers on two CPUs made four or five
/// runnable tasks in most samples (with no spins at two per CPU, across-CPU round trips paid a
/// wake-up each, 7x a spinning one); eight manager clients made twelve or more. At four, eight
/// clients beside a hog did 0.93x the blocking-only operations; at three, 1.03x.
const SWAMPED_PER_CPU: usize = 3;
/// Misses in a row that stop spinning for a while.
const MISSES_TO_BACK_OFF: u32 = 8;
/// The hit score (out of 1024) a crowded machine asks of spinning, and how often a wait
/// spins anyway to measure it again.
const CROWDED_SCORE: u32 = 600;
const PROBE_EVERY: u32 = 32;
/// A yield that takes this long (ns) ran another task on this CPU meanwhile; one that finds
/// nothing else to run returns in about a microsecond.
const CEDED: u64 = 3_000;
/// A yield that takes this long (ns) ran a task that kept the CPU for a time slice: no
/// yields in this process for [`NO_YIELD_FOR`] after one.
const HOGGED: u64 = 50_000;
const NO_YIELD_FOR: u64 = 50_000_000;
/// Until when spins in this process do not yield (see [`HOGGED`]).
static YIELD_AGAIN_AT: AtomicU64 = AtomicU64::new(0);
/// A spin that went this long (ns) between two looks at the clock (at most 8 looks apart, a
/// few microseconds) lost its CPU to another task meanwhile.
const PREEMPTED: u64 = 20_000;
/// The first back-off, and the longest.
const MIN_BACKOFF: u64 = 2_000_000;
const MAX_BACKOFF: u64 = 32_000_000;

/// When waiters of this library spin before they sleep (see [`set_spin_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpinPolicy {
    /// Spin while it pays: never on one CPU; while the machine has more runnable tasks than
    /// CPUs, only while spins keep hitting; never while it has three times as many; and not for a
    /// while after spins keep missing. The default.
    Adaptive,
    /// Never spin: every wait sleeps at once (the least CPU, the slowest wake-ups).
    Never,
    /// Always spin briefly, whatever the load (the fastest round trips on an idle machine).
    Always,
}

/// How long a waiter for a reply (a round trip's other half, a task's result, the next request
/// or task) looks before it sleeps, when spinning pays: a few times what a reply from a peer
/// running on another CPU takes, and about what a sleep and a wake-up from another CPU cost
/// together on a virtual machine (measured: 20 µs made pool round trips slower and less
/// steady, the next task often came later than that).
pub(crate) const REPLY_SPIN: Duration = Duration::from_micros(50);

/// The policy in force: 0 until first asked, then 1 + the policy's index.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets when the waiters of this process spin before they sleep (pool results, queue gets,
/// lock words, connections, manager calls): a process-wide choice, also made by the
/// `MULTIPROC_SPIN` environment variable (`off`, `on`; unset: adaptive). Children started
/// afterwards by `fork` inherit it; others read their environment.
///
/// ```
/// multiproc::set_spin_policy(multiproc::SpinPolicy::Never); // a machine shared with batch jobs
/// # multiproc::set_spin_policy(multiproc::SpinPolicy::Adaptive);
/// ```
pub fn set_spin_policy(policy: SpinPolicy) {
    MODE.store(1 + policy as u8, Ordering::Relaxed);
}

fn mode() -> SpinPolicy {
    const ALL: [SpinPolicy; 3] = [SpinPolicy::Adaptive, SpinPolicy::Never, SpinPolicy::Always];
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let p = match std::env::var("MULTIPROC_SPIN").as_deref() {
                Ok("off" | "0" | "never") => SpinPolicy::Never,
                Ok("on" | "1" | "always") => SpinPolicy::Always,
                _ => SpinPolicy::Adaptive,
            };
            // A policy set meanwhile by `set_spin_policy` wins.
            let _ = MODE.compare_exchange(0, 1 + p as u8, Ordering::Relaxed, Ordering::Relaxed);
            mode()
        }
        m => ALL[usize::from(m - 1).min(2)],
    }
}

fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(crate::cpu::shared_cpu_count)
}

/// When the runnable count was last read, whether it exceeded the CPUs, and whether it was
/// at least [`SWAMPED_PER_CPU`] times their number.
static SAMPLED_AT: AtomicU64 = AtomicU64::new(0);
static CROWDED: AtomicBool = AtomicBool::new(false);
static SWAMPED: AtomicBool = AtomicBool::new(false);
/// Misses in a row, the current back-off, and until when spinning is off because of it.
static MISSES: AtomicU32 = AtomicU32::new(0);
static BACKOFF: AtomicU64 = AtomicU64::new(MIN_BACKOFF);
static QUIET_UNTIL: AtomicU64 = AtomicU64::new(0);
/// How often spins paid lately, out of 1024 (a moving average: each outcome moves it 1/8 of
/// the way), and a count of waits for the probes.
static SCORE: AtomicU32 = AtomicU32::new(512);
static WAITS: AtomicU32 = AtomicU32::new(0);

/// The number of runnable tasks on the machine now (the fourth field of `/proc/loadavg`,
/// `running/total`).
fn runnable() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Whether the machine has more runnable tasks than this process's CPUs, from a sample at most
/// [`SAMPLE_EVERY`] old (the caller that finds it stale takes the new one).
fn crowded(now: u64) -> bool {
    let at = SAMPLED_AT.load(Ordering::Relaxed);
    if now.saturating_sub(at) >= SAMPLE_EVERY
        && SAMPLED_AT
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        // The reader itself is one of the runnable tasks.
        let n = runnable().unwrap_or(0);
        let c = n > cpus();
        CROWDED.store(c, Ordering::Relaxed);
        SWAMPED.store(n >= SWAMPED_PER_CPU * cpus(), Ordering::Relaxed);
        return c;
    }
    CROWDED.load(Ordering::Relaxed)
}

/// Whether a waiter may spin now.
fn may_spin() -> bool {
    match mode() {
        SpinPolicy::Never => false,
        SpinPolicy::Always => true,
        SpinPolicy::Adaptive => {
            if cpus() < 2 {
                return false;
            }
            let now = monotonic_ns();
            if now < QUIET_UNTIL.load(Ordering::Relaxed) {
                return false;
            }
            !crowded(now)
                || SCORE.load(Ordering::Relaxed) >= CROWDED_SCORE
                || WAITS
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(PROBE_EVERY)
        }
    }
}

/// Moves the score 1/8 of the way towards 1024 (a hit) or 0 (a miss).
fn score(hit: bool) {
    let s = SCORE.load(Ordering::Relaxed);
    let next = if hit { s + (1024 - s) / 8 } else { s - s / 8 };
    SCORE.store(next, Ordering::Relaxed);
}

fn record_hit() {
    score(true);
    if MISSES.load(Ordering::Relaxed) != 0 {
        MISSES.store(0, Ordering::Relaxed);
    }
    if BACKOFF.load(Ordering::Relaxed) != MIN_BACKOFF {
        BACKOFF.store(MIN_BACKOFF, Ordering::Relaxed);
    }
}

fn record_miss() {
    if mode() != SpinPolicy::Adaptive {
        return;
    }
    score(false);
    if MISSES.fetch_add(1, Ordering::Relaxed) + 1 >= MISSES_TO_BACK_OFF {
        MISSES.store(0, Ordering::Relaxed);
        let backoff = BACKOFF.load(Ordering::Relaxed);
        QUIET_UNTIL.store(monotonic_ns() + backoff, Ordering::Relaxed);
        BACKOFF.store((backoff * 2).min(MAX_BACKOFF), Ordering::Relaxed);
    }
}

/// How long a wait may look (at most `max`) under `policy`: nothing on a swamped machine
/// (at least [`SWAMPED_PER_CPU`] runnable tasks per CPU) under the adaptive policy. There even a
/// spin that hits has kept a CPU from tasks that wait for one: eight manager clients on two
/// CPUs did 0.83-0.90x the operations of blocking-only with 50 µs spins, and 0.95-1.03x
/// with looks of 3 µs.
fn budget(max: Duration, policy: SpinPolicy, swamped: bool) -> Duration {
    match policy {
        SpinPolicy::Adaptive if swamped => Duration::ZERO,
        _ => max,
    }
}

/// One wait's spin: ask before looking, then [`Spinner::keep_going`] after each look that found
/// nothing, and [`Spinner::hit`] when the event came.
#[derive(Debug)]
pub(crate) struct Spinner {
    /// When the spin ends (`monotonic_ns`); `None`: no spinning for this wait.
    end: Option<u64>,
    looks: u32,
    /// The clock at the last look at it, and whether the spin lost its CPU meanwhile (a
    /// yield that ran another task, see [`CEDED`], or a gap of [`PREEMPTED`]).
    last: u64,
    preempted: bool,
}

impl Spinner {
    /// A spin of at most `max` if the policy allows one now.
    pub(crate) fn new(max: Duration) -> Spinner {
        // `may_spin` takes a new sample of the machine's load when the last one is stale.
        let max = if !max.is_zero() && may_spin() {
            budget(max, mode(), SWAMPED.load(Ordering::Relaxed))
        } else {
            Duration::ZERO
        };
        if max.is_zero() {
            return Spinner {
                end: None,
                looks: 0,
                last: 0,
                preempted: false,
            };
        }
        let now = monotonic_ns();
        Spinner {
            end: Some(now + max.as_nanos() as u64),
            looks: 0,
            last: now,
            preempted: false,
        }
    }

    /// After a look that found nothing: whether to look again (after a pause), or sleep. Once
    /// the spin runs out it counts as a miss.
    pub(crate) fn keep_going(&mut self) -> bool {
        let Some(end) = self.end else {
            return false;
        };
        self.looks += 1;
        // The clock costs more than a pause: read it every few looks.
        if self.looks.is_multiple_of(8) && self.clock() >= end {
            self.end = None;
            record_miss();
            return false;
        }
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        // Now and then let a task that shares this CPU run: it may be the one we wait for (a
        // producer on this CPU then fills a queue while its consumer looks). But a yield that
        // took long ran a CPU-bound task for its time slice (a round trip beside one took
        // 200 µs instead of 12): then this process stops yielding for a while.
        if self.looks.is_multiple_of(4)
            && let before = monotonic_ns()
            && before >= YIELD_AGAIN_AT.load(Ordering::Relaxed)
        {
            std::thread::yield_now();
            let now = monotonic_ns();
            let took = now.saturating_sub(before);
            self.preempted |= took >= CEDED;
            if took >= HOGGED {
                YIELD_AGAIN_AT.store(now + NO_YIELD_FOR, Ordering::Relaxed);
            }
            self.last = now;
        }
        true
    }

    /// Reads the clock, noting whether the spin lost its CPU since the last read.
    fn clock(&mut self) -> u64 {
        let now = monotonic_ns();
        self.preempted |= now.saturating_sub(self.last) >= PREEMPTED;
        self.last = now;
        now
    }

    /// The event came: if it came while spinning, the spin paid — unless the spin lost its
    /// CPU to another task meanwhile: then the event may have come because it did (the peer
    /// shares this CPU, or a task crowds it), which a plain sleep does as well without the
    /// spin's cost, so it counts as a miss.
    pub(crate) fn hit(mut self) {
        if self.end.is_some() && self.looks > 0 {
            self.clock();
            if self.preempted {
                record_miss();
            } else {
                record_hit();
            }
        }
    }

    /// Whether this wait spins at all.
    pub(crate) fn spinning(&self) -> bool {
        self.end.is_some()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn misses_in_a_row_stop_spinning_and_a_hit_resets_the_back_off() {
        // Single-threaded view of the global state: other tests of this binary may spin too,
        // so only what this test does in a row is asserted.
        if mode() != SpinPolicy::Adaptive || cpus() < 2 {
            return;
        }
        QUIET_UNTIL.store(0, Ordering::Relaxed);
        for _ in 0..MISSES_TO_BACK_OFF {
            record_miss();
        }
        assert!(QUIET_UNTIL.load(Ordering::Relaxed) > monotonic_ns());
        assert!(!Spinner::new(Duration::from_micros(50)).spinning());
        record_hit();
        assert_eq!(BACKOFF.load(Ordering::Relaxed), MIN_BACKOFF);
        QUIET_UNTIL.store(0, Ordering::Relaxed);
    }

    #[test]
    fn a_swamped_machine_stops_adaptive_spins() {
        assert_eq!(
            budget(REPLY_SPIN, SpinPolicy::Adaptive, true),
            Duration::ZERO
        );
        assert_eq!(budget(REPLY_SPIN, SpinPolicy::Adaptive, false), REPLY_SPIN);
        assert_eq!(budget(REPLY_SPIN, SpinPolicy::Always, true), REPLY_SPIN);
    }

    #[test]
    fn the_runnable_count_is_read_from_loadavg() {
        assert!(runnable().is_some_and(|n| n >= 1));
    }
}
