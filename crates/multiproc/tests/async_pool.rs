//! Pool results awaited (feature `tokio`): `AsyncResult` as a Future, `Imap` as a Stream,
//! under a current-thread and a multi-thread runtime.
#![cfg(all(target_os = "linux", feature = "tokio"))]

mod async_common;
mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use async_common::{both_runtimes, threads};
use common::LeakCheck;
use futures_core::Stream;
use multiproc::{Pool, PoolError};

#[multiproc::func]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::func]
fn maybe_panic(x: u32) -> u32 {
    if x == 3 {
        panic!("task 3 failed");
    }
    x
}

#[multiproc::func]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

#[test]
fn ten_thousand_concurrent_results_with_bounded_threads() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    both_runtimes(|| async {
        let before = threads();
        let tasks: Vec<_> = (0..10_000u64)
            .map(|x| {
                let r = pool.apply_async(&square, x).unwrap();
                tokio::spawn(r)
            })
            .collect();
        tokio::task::yield_now().await;
        let during = threads();
        assert!(
            during <= before + 4,
            "{during} threads while awaiting, {before} before"
        );
        for (x, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), (x * x) as u64);
        }
    });
}

#[test]
fn a_failed_task_is_its_own_error_and_terminate_ends_the_wait() {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async {
        let pool = Pool::new(2).unwrap();
        match pool.apply_async(&maybe_panic, 3).unwrap().await {
            Err(PoolError::Panicked(m)) => assert!(m.contains("task 3 failed"), "{m}"),
            other => panic!("expected a panic, got {other:?}"),
        }
        assert_eq!(pool.apply_async(&maybe_panic, 4).unwrap().await.unwrap(), 4);
        let slow = pool.apply_async(&sleep_ms, 30_000).unwrap();
        let terminate = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool.terminate();
        };
        let (r, ()) = tokio::join!(slow, terminate);
        assert!(r.is_err(), "{r:?}");
    });
}

#[test]
fn a_dropped_await_leaves_the_pool_working() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(1).unwrap();
    both_runtimes(|| async {
        let slow = pool.apply_async(&sleep_ms, 300).unwrap();
        tokio::select! {
            _ = slow => panic!("too soon"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert_eq!(pool.apply_async(&square, 9).unwrap().await.unwrap(), 81);
    });
}

#[test]
fn imap_streams_in_order_and_as_completed() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    both_runtimes(|| async {
        let mut s = pool.imap(&square, 0..2000u64).chunksize(7).into_stream();
        let mut got = Vec::new();
        while let Some(r) = next(&mut s).await {
            got.push(r.unwrap());
        }
        assert_eq!(got, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());

        let mut s = pool.imap_unordered(&maybe_panic, 0..10u32).into_stream();
        let (mut ok, mut failed) = (Vec::new(), 0);
        while let Some(r) = next(&mut s).await {
            match r {
                Ok(v) => ok.push(v),
                Err(PoolError::Panicked(_)) => failed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        ok.sort();
        assert_eq!(ok, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(failed, 1);
    });
}

#[test]
fn a_thread_pool_result_is_awaited_like_a_process_pool_result() {
    // The executors share one result type: awaiting it works whoever runs the task.
    let pool = multiproc::ThreadPool::new(2).unwrap();
    both_runtimes(|| async {
        let tasks: Vec<_> = (0..200u64)
            .map(|x| tokio::spawn(pool.apply_async(&sleep_ms, x % 3).unwrap()))
            .collect();
        for (x, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), x as u64 % 3);
        }
        let failed = pool.apply_async(&maybe_panic, 3).unwrap().await;
        assert!(matches!(failed, Err(PoolError::Panicked(_))), "{failed:?}");
        let mut s = pool.imap_unordered(&square, 0..50u64).into_stream();
        let mut got = Vec::new();
        while let Some(r) = next(&mut s).await {
            got.push(r.unwrap());
        }
        got.sort();
        assert_eq!(got, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    });
}

static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Item 0 ends after 50 ms; the others wait until the gate opens.
#[multiproc::func]
fn behind_gate(x: u64) -> u64 {
    if x == 0 {
        std::thread::sleep(Duration::from_millis(50));
    } else {
        while !GATE_OPEN.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    x
}

#[test]
fn a_thread_pool_stream_yields_a_result_while_the_next_one_waits() {
    // A stream waits for a batch of results; a thread pool has no timer to flush a batch that
    // does not fill, so it must hand over what it has at once (item 1 waits for the consumer).
    let pool = multiproc::ThreadPool::new(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = pool.imap(&behind_gate, 0..100u64).into_stream();
        let t0 = std::time::Instant::now();
        let first = tokio::time::timeout(Duration::from_secs(5), next(&mut s)).await;
        let waited = t0.elapsed();
        GATE_OPEN.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(first, Ok(Some(Ok(0)))), "{first:?}");
        // Woken by the result, not by the time limit's last look.
        assert!(
            waited < Duration::from_secs(2),
            "item 0 came after {waited:?}"
        );
        let mut n = 1;
        while let Some(r) = next(&mut s).await {
            assert_eq!(r.unwrap(), n);
            n += 1;
        }
        assert_eq!(n, 100);
    });
}

per_start_method!(multiproc::test; awaited_results_under_every_start_method);

/// The awaited forms (a result, a map, a stream) with the pool's workers started by `method`,
/// under both runtimes.
fn awaited_results_under_every_start_method(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .unwrap();
    both_runtimes(|| async {
        let tasks: Vec<_> = (0..200u64)
            .map(|x| tokio::spawn(pool.apply_async(&square, x).unwrap()))
            .collect();
        for (x, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), (x * x) as u64);
        }
        let all = pool.map_async(&square, 0..100u64).unwrap().await.unwrap();
        assert_eq!(all[99], 99 * 99);
        let mut s = pool.imap(&sleep_ms, [3u64, 0, 1, 0]).into_stream();
        let mut got = Vec::new();
        while let Some(r) = next(&mut s).await {
            got.push(r.unwrap());
        }
        assert_eq!(got, [3, 0, 1, 0]);
    });
}
