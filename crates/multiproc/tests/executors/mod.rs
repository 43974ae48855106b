//! One set of checks run against every executor: processes under each start method, closure
//! pools, threads (`crates/multiproc/tests/executor.rs`) and the cluster against a real
//! `redis-server` (`crates/multiproc-cluster/tests/executor.rs`, which includes this file).
//! The same calls give the same results and the same error kinds wherever the tasks run.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use multiproc::executor::wait;
use multiproc::{Executor, ReturnWhen, TaskError, as_completed};

/// What the executor under test is: some failures exist only where there are worker
/// processes to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Processes,
    Threads,
    Cluster,
}

/// Every wait of these checks ends by this.
pub const LIMIT: Duration = Duration::from_secs(60);

#[multiproc::func]
pub fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::func]
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Sleeps `ms` milliseconds, then returns it.
#[multiproc::func]
pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Panics with a message naming `x`.
#[multiproc::func]
pub fn explode(x: u64) -> u64 {
    panic!("boom {x}")
}

/// Kills the process it runs in.
#[multiproc::func]
pub fn die(_x: u64) -> u64 {
    std::process::abort()
}

/// A value whose encoding always fails.
#[derive(Debug)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unencodable refuses to be encoded",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[multiproc::func]
pub fn unencodable(_x: u64) -> Unencodable {
    Unencodable
}

/// The same calls give the same results: apply, apply_async, map (default and explicit chunk
/// sizes), map_async, starmap, imap (ordered, unordered, chunked) and submit_all.
pub fn same_results<E: Executor>(ex: &E) {
    let want: Vec<u64> = (0..100u64).map(|x| x * x).collect();
    assert_eq!(ex.apply(&square, 7).unwrap(), 49);
    assert_eq!(ex.apply_async(&square, 8).unwrap().get().unwrap(), 64);
    assert_eq!(ex.map(&square, 0..100u64).unwrap(), want);
    assert_eq!(ex.map_chunked(&square, 0..100u64, 7).unwrap(), want);
    assert_eq!(
        ex.map(&square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    let each = ex.map_async(&square, 0..10u64).unwrap().get_each();
    assert_eq!(
        each.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        want[..10]
    );
    assert_eq!(ex.starmap(&add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    let ordered: Vec<u64> = ex.imap(&square, 0..100u64).map(Result::unwrap).collect();
    assert_eq!(ordered, want);
    let chunked: Vec<u64> = ex
        .imap_chunked(&square, 0..100u64, 9, true)
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunked, want);
    let mut unordered: Vec<u64> = ex
        .imap_unordered(&square, 0..100u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, want);
    let handles = ex.submit_all(&square, 0..10u64).unwrap();
    let mut got: Vec<u64> = as_completed(handles)
        .timeout(LIMIT)
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(got, want[..10]);
    assert!(
        ex.map_chunked(&square, 0..3u64, 0).is_err(),
        "a chunk size of 0 is refused"
    );
}

/// A panicking task is `Panicked` with its message; the executor goes on.
pub fn panicking_task<E: Executor>(ex: &E) {
    match ex.apply(&explode, 3) {
        Err(TaskError::Panicked(m)) => assert!(m.contains("boom 3"), "{m}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    let each = ex.map_async(&explode, [1u64]).unwrap().get_each();
    assert!(
        matches!(each[..], [Err(TaskError::Panicked(_))]),
        "{each:?}"
    );
    let items: Vec<_> = ex.imap(&explode, [5u64]).collect();
    assert!(
        matches!(items[..], [Err(TaskError::Panicked(_))]),
        "{items:?}"
    );
    assert_eq!(ex.apply(&square, 3).unwrap(), 9, "the executor goes on");
}

/// A task that kills its worker: `WorkerDied` on a process pool, `DeadLetter` on the cluster
/// (it killed its worker every time it was tried); the executor goes on.
pub fn dying_worker<E: Executor>(ex: &E, backend: Backend) {
    let r = ex.apply(&die, 1);
    match backend {
        Backend::Processes => assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}"),
        Backend::Cluster => assert!(matches!(r, Err(TaskError::DeadLetter { .. })), "{r:?}"),
        Backend::Threads => unreachable!("a thread pool has no worker to kill"),
    }
    assert_eq!(ex.apply(&square, 4).unwrap(), 16, "the executor goes on");
}

/// On an executor built with a task timeout of about 500 ms: a task past it is `Timeout`, the
/// others are delivered, and the executor goes on.
pub fn task_timeout<E: Executor>(ex: &E) {
    let r = ex.apply(&nap, 20_000);
    assert!(matches!(r, Err(TaskError::Timeout(_))), "{r:?}");
    let each = ex
        .map_async_chunked(&nap, [10u64, 20_000, 10], 1)
        .unwrap()
        .get_each();
    assert!(
        matches!(each[..], [Ok(10), Err(TaskError::Timeout(_)), Ok(10)]),
        "{each:?}"
    );
    // In one chunk: what finished before the late item is delivered, what follows it runs
    // elsewhere, and nothing waits for the late item to return.
    let each = ex
        .map_async_chunked(&nap, [10u64, 20_000, 10], 3)
        .unwrap()
        .get_each_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("a chunk with a late item waited for it: {e}"));
    assert!(
        matches!(each[..], [Ok(10), Err(TaskError::Timeout(_)), Ok(10)]),
        "{each:?}"
    );
    assert_eq!(ex.apply(&square, 5).unwrap(), 25, "the executor goes on");
}

/// A result that does not encode is a codec error (encoding, on the worker's side).
pub fn unserializable_result<E: Executor>(ex: &E) {
    let r = ex.apply(&unencodable, 1);
    assert!(
        matches!(r, Err(TaskError::Codec(multiproc::CodecError::Encode(ref m))) if m.contains("refuses")),
        "{r:?}"
    );
    assert_eq!(ex.apply(&square, 6).unwrap(), 36, "the executor goes on");
}

/// `as_completed` yields in completion order (needs 3 workers).
pub fn as_completed_order<E: Executor>(ex: &E) {
    let handles = ex.submit_all(&nap, [1500u64, 50, 700]).unwrap();
    let mut it = as_completed(handles).timeout(LIMIT);
    let mut order = Vec::new();
    while let Some((i, r)) = it.next_indexed() {
        order.push((i, r.unwrap()));
    }
    assert_eq!(order, [(1, 50), (2, 700), (0, 1500)]);
}

/// `wait` in each mode (needs 3 workers).
pub fn wait_modes<E: Executor>(ex: &E) {
    // FIRST_COMPLETED: the short one is done, the long one is not.
    let started = Instant::now();
    let w = wait(
        ex.submit_all(&nap, [3000u64, 30]).unwrap(),
        ReturnWhen::FirstCompleted,
        Some(LIMIT),
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((w.done.len(), w.not_done.len()), (1, 1));
    assert_eq!(w.done.into_iter().next().unwrap().get().unwrap(), 30);
    // FIRST_EXCEPTION: returns at the failure, before the long task.
    let handles = vec![
        ex.apply_async(&nap, 3000).unwrap(),
        ex.apply_async(&explode, 1).unwrap(),
    ];
    let started = Instant::now();
    let w = wait(handles, ReturnWhen::FirstException, Some(LIMIT));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.not_done.len(), 1);
    let failed = w.done.into_iter().next().unwrap().get();
    assert!(matches!(failed, Err(TaskError::Panicked(_))), "{failed:?}");
    // FIRST_EXCEPTION without a failure waits for all.
    let w = wait(
        ex.submit_all(&nap, [20u64, 40]).unwrap(),
        ReturnWhen::FirstException,
        Some(LIMIT),
    );
    assert_eq!((w.done.len(), w.not_done.len()), (2, 0));
    // ALL_COMPLETED.
    let w = wait(
        ex.submit_all(&nap, [10u64, 60, 30]).unwrap(),
        ReturnWhen::AllCompleted,
        Some(LIMIT),
    );
    assert_eq!((w.done.len(), w.not_done.len()), (3, 0));
    let got: Vec<u64> = w.done.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(got, [10, 60, 30], "done keeps the order given");
    // A timeout: nothing done yet.
    let started = Instant::now();
    let w = wait(
        ex.submit_all(&nap, [2000u64]).unwrap(),
        ReturnWhen::AllCompleted,
        Some(Duration::from_millis(200)),
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((w.done.len(), w.not_done.len()), (0, 1));
}

/// Fills the workers with long tasks and queues many short ones behind them: the last of those
/// has certainly not started (process workers hold a few chunks ahead).
fn busy_then_queued<E: Executor>(
    ex: &E,
) -> (
    Vec<multiproc::AsyncResult<u64>>,
    Vec<multiproc::AsyncResult<u64>>,
) {
    let blockers = ex.submit_all(&nap, vec![800u64; ex.workers()]).unwrap();
    let queued = ex.submit_all(&nap, vec![1u64; 64 * ex.workers()]).unwrap();
    (blockers, queued)
}

/// `cancel` takes out a task that has not started (it fails with `Cancelled`, and never runs);
/// a running or finished task cannot be cancelled and delivers its result.
pub fn cancel<E: Executor>(ex: &E) {
    let (blockers, mut queued) = busy_then_queued(ex);
    let last = queued.pop().unwrap();
    assert!(last.cancel(), "a queued task is cancelled");
    assert!(last.ready());
    assert!(matches!(last.get(), Err(TaskError::Cancelled)));
    // Once running: let the blockers start.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!blockers[0].cancel(), "a running task is not cancelled");
    for b in blockers {
        assert_eq!(b.get_timeout(LIMIT).unwrap(), 800);
    }
    for q in queued {
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 1);
    }
    let done = ex.apply_async(&square, 2).unwrap();
    assert!(done.wait(Some(LIMIT)));
    assert!(!done.cancel(), "a finished task is not cancelled");
    assert_eq!(done.get().unwrap(), 4);
}

/// `shutdown(false)` runs every submitted task, then refuses new ones.
pub fn shutdown_waits<E: Executor>(ex: &E) {
    let handles = ex.submit_all(&nap, [100u64, 10, 50]).unwrap();
    ex.shutdown(false).unwrap();
    for (h, want) in handles.into_iter().zip([100, 10, 50]) {
        assert!(h.ready(), "shutdown waited for it");
        assert_eq!(h.get().unwrap(), want);
    }
    assert!(matches!(ex.apply_async(&square, 1), Err(TaskError::Closed)));
}

/// `shutdown(true)` cancels what has not started; the running tasks finish.
pub fn shutdown_cancels<E: Executor>(ex: &E) {
    let (blockers, queued) = busy_then_queued(ex);
    std::thread::sleep(Duration::from_millis(200));
    ex.shutdown(true).unwrap();
    for b in blockers {
        assert_eq!(
            b.get_timeout(LIMIT).unwrap(),
            800,
            "a running task finishes"
        );
    }
    let results: Vec<_> = queued.into_iter().map(|q| q.get_timeout(LIMIT)).collect();
    assert!(
        matches!(results.last(), Some(Err(TaskError::Cancelled))),
        "the last queued task was cancelled: {:?}",
        results.last()
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(1) | Err(TaskError::Cancelled)))
    );
}
