//! The executor API (`multiproc::Executor`, `as_completed`, `wait`, `cancel`, `shutdown`)
//! against every local executor: the process pool under each start method, the process pool
//! under a closure pool, the thread pool and the thread pool under a closure pool. The checks
//! themselves live in `executors/mod.rs`, which the cluster's tests run too.
#![cfg(target_os = "linux")]

mod common;
mod executors;

use std::time::Duration;

use common::LeakCheck;
use executors::Backend;
use multiproc::{Pool, StartMethod, ThreadPool};

fn processes(method: StartMethod, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(method)
        .build()
        .unwrap()
}

fn threads(n: usize) -> ThreadPool {
    ThreadPool::new(n).unwrap()
}

/// A closure pool's process pool: forks that run registered functions too.
fn closure_processes(n: usize) -> multiproc::ClosurePool<u64, u64> {
    Pool::builder()
        .processes(n)
        .build_closure(|x: u64| x + 1)
        .unwrap()
}

fn closure_threads(n: usize) -> multiproc::ClosurePool<u64, u64, ThreadPool> {
    ThreadPool::builder()
        .threads(n)
        .build_closure(|x: u64| x + 1)
        .unwrap()
}

const TIMEOUT: Duration = Duration::from_millis(500);

mod process_pool {
    use super::*;

    fn same_results(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::same_results(&processes(m, 2));
    }
    fn panicking_task(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::panicking_task(&processes(m, 2));
    }
    fn dying_worker(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::dying_worker(&processes(m, 2), Backend::Processes);
    }
    fn task_timeout(m: StartMethod) {
        let _leaks = LeakCheck::new();
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .task_timeout(TIMEOUT)
            .build()
            .unwrap();
        executors::task_timeout(&pool);
    }
    fn unserializable_result(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::unserializable_result(&processes(m, 1));
    }
    fn as_completed_order(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::as_completed_order(&processes(m, 3));
    }
    fn wait_modes(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::wait_modes(&processes(m, 3));
    }
    fn cancel(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::cancel(&processes(m, 2));
    }
    fn shutdown_waits(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::shutdown_waits(&processes(m, 2));
    }
    fn shutdown_cancels(m: StartMethod) {
        let _leaks = LeakCheck::new();
        executors::shutdown_cancels(&processes(m, 2));
    }

    per_start_method!(
        multiproc::test;
        same_results,
        panicking_task,
        dying_worker,
        task_timeout,
        unserializable_result,
        as_completed_order,
        wait_modes,
        cancel,
        shutdown_waits,
        shutdown_cancels,
    );
}

mod closure_process_pool {
    use super::*;

    #[multiproc::test]
    fn same_results() {
        let _leaks = LeakCheck::new();
        let pool = closure_processes(2);
        assert_eq!(pool.map(0..3).unwrap(), [1, 2, 3]);
        executors::same_results(pool.pool());
        assert_eq!(pool.apply(9).unwrap(), 10, "the closure still runs");
    }

    #[multiproc::test]
    fn failures_and_cancel() {
        let _leaks = LeakCheck::new();
        let pool = closure_processes(2);
        executors::panicking_task(pool.pool());
        executors::dying_worker(pool.pool(), Backend::Processes);
        executors::unserializable_result(pool.pool());
        executors::cancel(pool.pool());
        executors::shutdown_cancels(pool.pool());
    }
}

mod thread_pool {
    use super::*;

    #[test]
    fn same_results() {
        executors::same_results(&threads(2));
    }
    #[test]
    fn panicking_task() {
        executors::panicking_task(&threads(2));
    }
    #[test]
    fn task_timeout() {
        let pool = ThreadPool::builder()
            .threads(2)
            .task_timeout(TIMEOUT)
            .build()
            .unwrap();
        executors::task_timeout(&pool);
    }
    #[test]
    fn unserializable_result() {
        executors::unserializable_result(&threads(1));
    }
    #[test]
    fn as_completed_order() {
        executors::as_completed_order(&threads(3));
    }
    #[test]
    fn wait_modes() {
        executors::wait_modes(&threads(3));
    }
    #[test]
    fn cancel() {
        executors::cancel(&threads(2));
    }
    #[test]
    fn shutdown_waits() {
        executors::shutdown_waits(&threads(2));
    }
    #[test]
    fn shutdown_cancels() {
        executors::shutdown_cancels(&threads(2));
    }
    #[test]
    fn closures() {
        let pool = closure_threads(2);
        assert_eq!(pool.map(0..3).unwrap(), [1, 2, 3]);
        assert_eq!(pool.apply_async(4).unwrap().get().unwrap(), 5);
        let mut lazily: Vec<u64> = pool.imap_unordered(0..10).map(Result::unwrap).collect();
        lazily.sort_unstable();
        assert_eq!(lazily, (1..11).collect::<Vec<_>>());
        executors::same_results(pool.pool());
        executors::cancel(pool.pool());
    }
}

/// Dropping a lazy iterator takes the items it submitted that have not started out of the
/// line: the executor is free for the next task at once, not after the iterator's read-ahead.
fn dropping_an_imap_cancels_what_has_not_started<E: multiproc::Executor>(ex: &E) {
    use std::time::Instant;
    let mut it = ex.imap(&executors::nap, std::iter::repeat(50u64));
    assert_eq!(it.next().unwrap().unwrap(), 50);
    drop(it);
    // Without cancelling, the read-ahead (128 items per worker, 50 ms each) would run first.
    let t = Instant::now();
    assert_eq!(ex.apply(&executors::square, 3).unwrap(), 9);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[multiproc::test]
fn dropping_an_imap_cancels_its_unstarted_items_on_processes() {
    let _leaks = LeakCheck::new();
    dropping_an_imap_cancels_what_has_not_started(&processes(multiproc::get_start_method(), 1));
}

#[test]
fn dropping_an_imap_cancels_its_unstarted_items_on_threads() {
    dropping_an_imap_cancels_what_has_not_started(&threads(1));
}
