//! Pool limits, under every start method: a task past the workers' memory limit or past its
//! CPU-time limit fails with that error while every other task succeeds; a leaking task gets
//! its worker recycled with no task failed; rlimits and surroundings reach the workers.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::LeakCheck;
use multiproc::{Output, Pool, PoolError, Resource, StartMethod};

#[multiproc::func]
fn square(x: u64) -> u64 {
    x * x
}

/// Allocates and touches `bytes`, returns how many it got.
#[multiproc::func]
fn allocate(bytes: usize) -> usize {
    let v = vec![1u8; bytes];
    std::hint::black_box(&v);
    v.len()
}

/// Leaks 50 MB (touched) and returns its worker's pid.
#[multiproc::func]
fn leak_50mb(_: u64) -> u32 {
    let v = vec![1u8; 50_000_000];
    std::mem::forget(std::hint::black_box(v));
    std::process::id()
}

/// Spins on the CPU for `ms` milliseconds of wall time, returns its worker's pid.
#[multiproc::func]
fn spin_ms(ms: u64) -> u32 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut n = 0u64;
    while Instant::now() < end {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    std::process::id()
}

/// The worker's open-file limit, its working directory and `LANG`.
#[multiproc::func]
fn worker_view(_: u64) -> ((u64, u64), std::path::PathBuf, Option<String>) {
    (
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap(),
        std::env::current_dir().unwrap(),
        std::env::var("LANG").ok(),
    )
}

fn pool(method: StartMethod, processes: usize) -> multiproc::PoolBuilder {
    Pool::builder().processes(processes).start_method(method)
}

fn a_task_past_the_memory_limit_fails_alone(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // Without a backtrace to print, the worker reports the failed allocation (exact).
    let p = pool(method, 2)
        .memory_limit(256 << 20)
        .env_remove("RUST_BACKTRACE")
        .stderr(Output::Null)
        .build()
        .unwrap();
    let big = p.apply_async(&allocate, 2 << 30).unwrap();
    let squares = p.map_async(&square, 0..100u64).unwrap();
    match big.get_timeout(Duration::from_secs(60)) {
        Err(PoolError::MemoryLimit {
            limit, reported, ..
        }) => {
            assert_eq!(limit, 256 << 20);
            assert!(reported, "the worker reports the failed allocation");
        }
        other => panic!("expected a memory-limit error, got {other:?}"),
    }
    let squares = squares.get_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    // The pool goes on with a replacement worker, within the limit.
    assert_eq!(
        p.apply_async(&allocate, 64 << 20)
            .unwrap()
            .get_timeout(Duration::from_secs(60))
            .unwrap(),
        64 << 20
    );
    p.close();
    p.join().unwrap();
}

fn a_leaking_worker_is_recycled_with_no_task_failed(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = pool(method, 1)
        .max_memory_per_child(120 << 20)
        .build()
        .unwrap();
    let pids: Vec<u32> = p
        .map_async_chunked(&leak_50mb, 0..12u64, 1)
        .unwrap()
        .get_timeout(Duration::from_secs(120))
        .unwrap();
    assert_eq!(pids.len(), 12);
    let workers: HashSet<u32> = pids.iter().copied().collect();
    // Each worker holds at most 3 × 50 MB before it is replaced: at least 4 workers for 12.
    assert!(
        workers.len() >= 4,
        "only {} workers: {pids:?}",
        workers.len()
    );
    p.close();
    p.join().unwrap();
}

fn a_task_past_its_cpu_time_fails_alone(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = pool(method, 2)
        .cpu_time_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let busy = p.apply_async(&spin_ms, 60_000).unwrap();
    let squares = p.map_async(&square, 0..20u64).unwrap();
    match busy.get_timeout(Duration::from_secs(60)) {
        Err(PoolError::CpuTimeLimit { limit, .. }) => assert_eq!(limit, Duration::from_secs(1)),
        other => panic!("expected a CPU-time error, got {other:?}"),
    }
    assert_eq!(
        squares.get_timeout(Duration::from_secs(60)).unwrap(),
        (0..20u64).map(|x| x * x).collect::<Vec<_>>()
    );
    // The limit is per task: three tasks of 0.6 s on one worker use more than a second in
    // all, and each succeeds.
    let one = pool(method, 1)
        .cpu_time_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let pids = one
        .map_async_chunked(&spin_ms, [600u64, 600, 600], 1)
        .unwrap()
        .get_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 1, "{pids:?}");
    for pool in [p, one] {
        pool.close();
        pool.join().unwrap();
    }
}

fn workers_get_rlimits_directory_and_environment(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let dir = std::env::temp_dir();
    let p = pool(method, 2)
        .rlimit(Resource::NoFile, 256, 256)
        .current_dir(&dir)
        .env("LANG", "C")
        .build()
        .unwrap();
    for view in p.map(&worker_view, 0..4u64).unwrap() {
        assert_eq!(
            view,
            ((256, 256), dir.canonicalize().unwrap(), Some("C".into()))
        );
    }
    p.close();
    p.join().unwrap();
}

per_start_method!(
    a_task_past_the_memory_limit_fails_alone,
    a_leaking_worker_is_recycled_with_no_task_failed,
    a_task_past_its_cpu_time_fails_alone,
    workers_get_rlimits_directory_and_environment,
);

#[test]
fn a_pool_cannot_capture_its_workers_output() {
    let err = Pool::builder()
        .processes(1)
        .stdout(Output::Capture)
        .build()
        .unwrap_err();
    assert!(matches!(err, PoolError::Invalid(_)), "{err}");
}
