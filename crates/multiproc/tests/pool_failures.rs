//! Pool: what a failure takes with it, under every start method. A dying, timed-out or broken
//! worker fails exactly the item it was running; items it finished are delivered, items it had
//! not started run elsewhere; iterators end after an error; memory stays flat on endless input.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::LeakCheck;
use multiproc::{Pool, PoolError, StartMethod};

#[multiproc::func]
fn square(x: u64) -> u64 {
    x * x
}

/// Aborts its worker on item 5; every other item returns itself.
#[multiproc::func]
fn abort_on_5(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

/// Sleeps `ms`, then aborts its worker.
#[multiproc::func]
fn abort_after(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::abort();
}

/// Sleeps 20 ms, or 30 s on item 5.
#[multiproc::func]
fn stall_on_5(x: u64) -> u64 {
    let ms = if x == 5 { 30_000 } else { 20 };
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// About 50 µs of work, then its pid.
#[multiproc::func]
fn busy_pid(x: u64) -> (u64, u32) {
    let end = Instant::now() + Duration::from_micros(50);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    (x, std::process::id())
}

/// Item 3 closes every descriptor of its worker above stderr (a daemonizing library does this),
/// then returns normally.
#[multiproc::func]
fn close_fds_on_3(x: u64) -> u64 {
    if x == 3 {
        for fd in 3..1024 {
            // SAFETY (test): closing descriptors this process owns is the behaviour under test.
            let _ = nix::unistd::close(fd);
        }
    }
    x
}

fn pool(method: StartMethod, processes: usize) -> multiproc::PoolBuilder {
    Pool::builder().processes(processes).start_method(method)
}

per_start_method!(
    multiproc::test;
    a_killed_worker_fails_only_the_item_it_was_running,
    a_timeout_fails_only_the_item_past_its_limit,
    one_sigkill_in_a_default_chunked_map_fails_at_most_one_item,
    the_task_that_breaks_its_worker_is_the_one_that_fails,
    imap_ends_after_an_error,
    imap_on_a_closed_or_terminated_pool_ends,
    imap_yields_what_it_submitted_before_an_item_that_does_not_encode,
    a_pool_closed_during_an_imap_finishes_the_imap,
    imap_yields_a_result_without_waiting_for_a_batch,
    a_worker_that_cannot_be_replaced_fails_the_waiting_tasks,
);

/// The number of descriptors this process has open.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// When a dead worker cannot be replaced (here: this process may open no more descriptors),
/// the pool is broken and says so to every task that waits, instead of leaving them waiting.
fn a_worker_that_cannot_be_replaced_fails_the_waiting_tasks(method: StartMethod) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let pool = pool(method, 1).build().unwrap();
    assert_eq!(pool.apply(&square, 3).unwrap(), 9);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_fds(), hard).unwrap();
    // The worker dies only after the second task waits behind the first (a worker that
    // takes its task at once could die before the second one is submitted, and a broken
    // pool refuses new tasks).
    let dying = pool.apply_async(&abort_after, 300).unwrap();
    let waiting = pool.apply_async(&square, 4).unwrap();
    let died = dying.get_timeout(Duration::from_secs(10));
    let got = waiting.get_timeout(Duration::from_secs(10));
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert!(
        matches!(died, Err(PoolError::WorkerDied { .. })),
        "{died:?}"
    );
    assert!(
        !matches!(got, Err(PoolError::WaitTimeout(_))),
        "the task behind the dead worker waited for ever: {got:?}"
    );
    assert!(got.is_err(), "{got:?}");
    pool.terminate();
}

/// Sleeps 10 ms on item 0, 3 s on the others.
#[multiproc::func]
fn quick_first(x: u64) -> u64 {
    let ms = if x == 0 { 10 } else { 3_000 };
    std::thread::sleep(Duration::from_millis(ms));
    x
}

/// The iterator is woken for batches of small results, but a result that is ready is
/// never held back for the rest of its batch: item 0 comes long before the slow items end.
fn imap_yields_a_result_without_waiting_for_a_batch(method: StartMethod) {
    let _leaks = LeakCheck::new();
    for ordered in [true, false] {
        // A pool each: the items of a dropped iterator still run.
        let pool = pool(method, 2).build().unwrap();
        let t0 = Instant::now();
        let first = if ordered {
            pool.imap(&quick_first, 0..16u64).next()
        } else {
            pool.imap_unordered(&quick_first, 0..16u64).next()
        };
        assert_eq!(first.unwrap().unwrap(), 0);
        let waited = t0.elapsed();
        assert!(
            waited < Duration::from_millis(1500),
            "first result after {waited:?}"
        );
        pool.terminate();
    }
}

fn a_killed_worker_fails_only_the_item_it_was_running(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    // Two chunks of 10: the first dies on its sixth item.
    let results = pool
        .map_async(&abort_on_5, 0..20u64)
        .unwrap()
        .get_each_timeout(Duration::from_secs(60))
        .unwrap();
    let results = pool_results(results, 20);
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            assert!(
                matches!(r, Err(PoolError::WorkerDied { .. })),
                "item 5: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)), "item {i}: {r:?}");
        }
    }
    // Chunks of 7, set by hand: the same.
    let results = pool.map_async_chunked(&abort_on_5, 0..20u64, 7).unwrap();
    let results = pool_results(
        results.get_each_timeout(Duration::from_secs(60)).unwrap(),
        20,
    );
    assert_eq!(
        results.iter().filter(|r| r.is_err()).count(),
        1,
        "{results:?}"
    );
}

fn pool_results<T: std::fmt::Debug>(
    r: Vec<Result<T, PoolError>>,
    n: usize,
) -> Vec<Result<T, PoolError>> {
    assert_eq!(r.len(), n, "{r:?}");
    r
}

fn a_timeout_fails_only_the_item_past_its_limit(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let t0 = Instant::now();
    // One chunk of 10 items of 20 ms each, item 5 stalls: only item 5 is past its limit.
    let results = pool
        .map_async_chunked(&stall_on_5, 0..10u64, 10)
        .unwrap()
        .get_each_timeout(Duration::from_secs(60))
        .unwrap();
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            assert!(matches!(r, Err(PoolError::Timeout(_))), "item 5: {r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)), "item {i}: {r:?}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

fn one_sigkill_in_a_default_chunked_map_fails_at_most_one_item(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    let job = pool.map_async(&busy_pid, 0..20_000u64).unwrap();
    // Kill one worker once the map is well under way.
    std::thread::sleep(Duration::from_millis(150));
    let victim = pool.initial_pids()[0];
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    );
    let results = job.get_each_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(results.len(), 20_000);
    let failed: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].is_err())
        .collect();
    assert!(
        failed.len() <= 1,
        "{} items failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    for (i, r) in results.iter().enumerate() {
        if let Ok((x, _)) = r {
            assert_eq!(*x, i as u64);
        }
    }
}

fn the_task_that_breaks_its_worker_is_the_one_that_fails(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 1).build().unwrap();
    // One item per task: the pipelined tasks behind item 3 are innocent.
    let results: Vec<_> = pool.imap(&close_fds_on_3, 0..10u64).collect();
    assert_eq!(results.len(), 10);
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(r, Err(PoolError::WorkerBroken(_))),
                "item 3: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)), "item {i}: {r:?}");
        }
    }
    assert_eq!(pool.apply(&square, 7).unwrap(), 49);
}

fn imap_ends_after_an_error(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    let got: Vec<Result<u64, PoolError>> = pool
        .imap(&square, 0..2u64)
        .chunksize(0)
        .take(1000)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(got[0], Err(PoolError::Invalid(_))));
    let got: Vec<_> = pool
        .imap_unordered(&square, 0..2u64)
        .chunksize(0)
        .take(1000)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let unregistered = |x: u64| x + 1;
    let got: Vec<Result<u64, PoolError>> = pool.imap(&unregistered, 0..2u64).take(1000).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(got[0], Err(PoolError::NotRegistered(_))));
    assert_eq!(
        pool.imap(&square, 0..2u64).filter_map(Result::ok).count(),
        2
    );
}

fn imap_on_a_closed_or_terminated_pool_ends(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    pool.close();
    // Workers gone: an imap must not wait for them.
    std::thread::sleep(Duration::from_millis(300));
    for ordered in [true, false] {
        let it = if ordered {
            pool.imap(&square, 0..3u64)
        } else {
            pool.imap_unordered(&square, 0..3u64)
        };
        let got: Vec<_> = it.take(1000).collect();
        assert!(matches!(got[..], [Err(PoolError::Closed)]), "{got:?}");
    }
    pool.join().unwrap();
    let pool = pool_builder_terminated(method);
    let got: Vec<_> = pool.imap(&square, 0..3u64).take(1000).collect();
    assert!(matches!(got[..], [Err(PoolError::Terminated)]), "{got:?}");
}

fn pool_builder_terminated(method: StartMethod) -> Pool {
    let pool = pool(method, 1).build().unwrap();
    pool.terminate();
    pool
}

/// Encodes as itself, except 13, whose encoding fails.
#[derive(Debug, Clone, serde::Deserialize)]
struct Picky(u64);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("thirteen does not travel"));
        }
        s.serialize_u64(self.0)
    }
}

#[multiproc::func]
fn picky_square(x: Picky) -> u64 {
    x.0 * x.0
}

fn imap_yields_what_it_submitted_before_an_item_that_does_not_encode(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    let got: Vec<_> = pool
        .imap(&picky_square, (0..100u64).map(Picky))
        .take(1000)
        .collect();
    assert_eq!(got.len(), 14, "{got:?}");
    for (i, r) in got[..13].iter().enumerate() {
        assert_eq!(r.as_ref().ok(), Some(&((i * i) as u64)), "{got:?}");
    }
    assert!(
        matches!(&got[13], Err(PoolError::Codec(m)) if m.to_string().contains("thirteen does not travel")),
        "{got:?}"
    );
}

fn a_pool_closed_during_an_imap_finishes_the_imap(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = pool(method, 2).build().unwrap();
    let mut it = pool.imap(&square, 0..500u64);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    pool.close();
    // The workers are idle for a moment; the pool must not stop under the iterator.
    std::thread::sleep(Duration::from_millis(300));
    let rest: Vec<u64> = it.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 499);
    assert_eq!(rest[498], 499 * 499);
    pool.join().unwrap();
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[multiproc::test]
fn imap_memory_is_bounded_by_the_read_ahead_not_the_items_seen() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let endless = 0u64..;
        let it = if ordered {
            pool.imap(&square, endless)
        } else {
            pool.imap_unordered(&square, endless)
        };
        let mut it = it.chunksize(256);
        let mut after_1m = 0;
        for n in 1..=5_000_000u64 {
            let r = it.next().expect("endless").unwrap();
            if ordered {
                assert_eq!(r, (n - 1) * (n - 1));
            }
            if n == 1_000_000 {
                after_1m = rss();
            }
        }
        let after_5m = rss();
        assert!(
            after_5m < after_1m + (8 << 20),
            "ordered={ordered}: {} MB after 1M items, {} MB after 5M",
            after_1m >> 20,
            after_5m >> 20
        );
    }
}
