//! Which running `#[multiproc::test]` a new child belongs to, so that the test ends every
//! child it started when it returns or fails.
//!
//! A child started on a test's own thread is that test's. A child started on another
//! thread (one the test spawned) is the test's when the harness runs one test at a time:
//! under `cargo nextest` (a process per test), or `cargo test` with `--test-threads=1` or
//! `RUST_TEST_THREADS=1`. With tests running side by side in one process there is no
//! telling which test such a thread belongs to (it could be a plain `#[test]`'s), and the
//! exit of the test harness ends the child instead.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::ThreadId;

use super::child::{self, Finish};

/// Running tests: their scope ids and threads.
static ACTIVE: Mutex<Vec<(u64, ThreadId)>> = Mutex::new(Vec::new());
/// How many tests run (the common case, none, needs no lock).
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Children that belong to no test.
pub(crate) const NONE: u64 = 0;

pub(crate) fn lock_scopes() -> MutexGuard<'static, Vec<(u64, ThreadId)>> {
    ACTIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scope of a child this thread starts now (see the module's documentation).
pub(crate) fn of_new_child() -> u64 {
    if RUNNING.load(Ordering::Relaxed) == 0 {
        return NONE;
    }
    let active = lock_scopes();
    let me = std::thread::current().id();
    match active.iter().find(|(_, t)| *t == me) {
        Some((id, _)) => *id,
        None if active.len() == 1 && one_test_at_a_time() => active[0].0,
        None => NONE,
    }
}

/// Whether the test harness runs one test at a time in this process.
fn one_test_at_a_time() -> bool {
    static ONE: OnceLock<bool> = OnceLock::new();
    *ONE.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok();
        let args: Vec<String> = std::env::args().collect();
        let one_thread = args.iter().enumerate().any(|(i, a)| {
            a == "--test-threads=1"
                || (a == "--test-threads" && args.get(i + 1).is_some_and(|n| n == "1"))
        });
        one_thread
            || var("NEXTEST_EXECUTION_MODE").as_deref() == Some("process-per-test")
            || var("RUST_TEST_THREADS").as_deref().map(str::trim) == Some("1")
    })
}

/// One running `#[multiproc::test]`: when dropped, ends the children the test started.
/// When the test returns, daemonic ones are terminated and the others joined; when it
/// fails (the thread unwinds), all are terminated (killed if they are still there 5 s
/// later): a failed test wants nothing more from them, and joining one that waits for the
/// test would never end.
#[derive(Debug)]
pub(crate) struct TestScope {
    id: u64,
}

impl TestScope {
    /// The test running on this thread begins.
    pub(crate) fn enter() -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock_scopes().push((id, std::thread::current().id()));
        RUNNING.fetch_add(1, Ordering::Relaxed);
        TestScope { id }
    }
}

impl Drop for TestScope {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            Finish::TerminateAll
        } else {
            Finish::TerminateDaemons
        };
        child::finish_children(Some(self.id), how);
        lock_scopes().retain(|(id, _)| *id != self.id);
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}
