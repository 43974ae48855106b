//! Pool: results, chunking, laziness, callbacks, and the failures CPython's Pool hangs on.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LeakCheck, alive, eventually};
use multiproc::{Fd, Pool, PoolError};

#[multiproc::func]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::func]
fn pid_of(_x: u32) -> u32 {
    std::process::id()
}

#[multiproc::func]
fn slow_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[multiproc::func]
fn maybe_panic(x: u32) -> u32 {
    if x == 3 {
        panic!("task 3 failed");
    }
    x
}

#[multiproc::func]
fn die_on(x: u32) -> u32 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[multiproc::func]
fn returns_fd(_x: u8) -> Fd {
    Fd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
}

#[multiproc::func]
fn failing_init(_x: u8) {
    panic!("no database");
}

#[multiproc::func]
fn nested_map(n: u64) -> u64 {
    let inner = Pool::new(1).unwrap();
    inner.map(&square, 0..n).unwrap().iter().sum()
}

#[multiproc::test]
fn map_keeps_order_and_chunks_any_size() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let expected: Vec<u64> = (0..1000).map(|x| x * x).collect();
    assert_eq!(pool.map(&square, 0..1000).unwrap(), expected);
    assert_eq!(pool.map_chunked(&square, 0..1000, 1).unwrap(), expected);
    assert_eq!(pool.map_chunked(&square, 0..1000, 5000).unwrap(), expected);
    assert!(pool.map(&square, 0..0).unwrap().is_empty());
    assert!(matches!(
        pool.map_chunked(&square, 0..10, 0),
        Err(PoolError::Invalid(_))
    ));
    assert_eq!(pool.starmap(&square, [2, 3]).unwrap(), vec![4, 9]);
    assert_eq!(pool.apply(&square, 12).unwrap(), 144);
    pool.close();
    pool.join().unwrap();
}

#[multiproc::test]
fn imap_is_lazy_on_an_endless_iterator() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = pool
        .imap(&square, endless)
        .chunksize(4)
        .take(100)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(first, (0..100).map(|x| x * x).collect::<Vec<_>>());
    // The read-ahead: 128 items per worker for tiny tasks (two chunks per worker for big ones).
    assert!(
        pulled.load(Ordering::Relaxed) <= 100 + 2 * 128 + 4,
        "read far ahead: {}",
        pulled.load(Ordering::Relaxed)
    );
    let mut unordered: Vec<u64> = pool
        .imap_unordered(&square, 0..300)
        .chunksize(7)
        .map(|r| r.unwrap())
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..300).map(|x| x * x).collect::<Vec<_>>());
    assert!(matches!(
        pool.imap(&square, 0..3).chunksize(0).next(),
        Some(Err(PoolError::Invalid(_)))
    ));
}

#[multiproc::test]
fn panics_are_errors_and_workers_survive() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let results = pool.map_async(&maybe_panic, 0..10).unwrap().get_each();
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (3, Err(PoolError::Panicked(m))) => assert_eq!(m, "task 3 failed"),
            (3, other) => panic!("expected a panic, got {other:?}"),
            (i, Ok(v)) => assert_eq!(*v as usize, i),
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert!(matches!(
        pool.map(&maybe_panic, 0..10),
        Err(PoolError::Panicked(_))
    ));
    let pids: HashSet<u32> = pool
        .map_chunked(&pid_of, 0..20, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        pids.iter().all(|p| pool.initial_pids().contains(p)),
        "workers were replaced after a panic"
    );
}

#[multiproc::test]
fn a_dying_worker_fails_exactly_its_task() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    // One item per task (imap's default chunk size), so the failure is exact.
    let results: Vec<_> = pool.imap(&die_on, 0..20).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            assert!(
                matches!(r, Err(PoolError::WorkerDied { exitcode: -6, .. })),
                "{r:?}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap() as usize, i);
        }
    }
    // The pool replaced the worker and still works.
    assert_eq!(pool.map(&square, 0..50).unwrap().len(), 50);
    pool.close();
    pool.join().unwrap();
}

#[multiproc::test]
fn kill_workers_repeatedly_during_a_long_map() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let job = pool.imap(&slow_pid, std::iter::repeat_n(5u64, 300));
    let mut ok = 0;
    let mut died = 0;
    let mut seen_pids = HashSet::new();
    for (i, r) in job.enumerate() {
        match r {
            Ok(pid) => {
                ok += 1;
                seen_pids.insert(pid);
                if i % 75 == 10 {
                    // Kill the worker that just answered (it is running the next task now).
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
            Err(PoolError::WorkerDied { .. }) => died += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok + died, 300);
    assert!(
        died <= 4,
        "more tasks failed than workers were killed: {died}"
    );
    assert!(seen_pids.len() > 2, "no worker was replaced");
}

#[multiproc::test]
fn initializer_failure_is_reported_without_a_respawn_storm() {
    let _leaks = LeakCheck::new();
    let t0 = Instant::now();
    let err = Pool::builder()
        .processes(2)
        .initializer(&failing_init, 0)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, PoolError::Initializer(ref m) if m.contains("no database")),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[multiproc::test]
fn unserializable_results_fail_their_task() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(1).unwrap();
    // The worker's codec error comes back as one: which way it failed, in the codec's words.
    let err = pool.apply(&returns_fd, 0).unwrap_err();
    assert!(
        matches!(&err, PoolError::Codec(multiproc::CodecError::Encode(m)) if m.contains("Fd")),
        "{err:?}"
    );
    assert_eq!(pool.apply(&square, 3).unwrap(), 9);
}

#[multiproc::test]
fn maxtasksperchild_rotates_workers() {
    let _leaks = LeakCheck::new();
    let pool = Pool::builder()
        .processes(1)
        .maxtasksperchild(2)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool.map_chunked(&pid_of, 0..10, 1).unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "{pids:?}");
}

/// Waiting callers take reports out of the workers' rings themselves; a handler that went to
/// sleep right after a caller did so, with chunks still waiting for those workers, once left
/// every map waiting forever (the bench hung in its first map).
#[multiproc::test]
fn callers_taking_reports_never_strand_waiting_chunks() {
    let _leaks = LeakCheck::new();
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        // Callers take reports only in the first moments of a wait: many short maps with
        // more chunks than the workers' pipelines hold make those moments many.
        for round in 0..2_000u64 {
            let out = p.map_chunked(&square, 0..100u64, 1).unwrap();
            assert_eq!(out[99], 99 * 99);
            assert_eq!(p.apply(&square, round).unwrap(), round * round);
        }
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("a map or an apply waited forever");
}

#[multiproc::test]
fn ten_thousand_tiny_tasks() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let out = pool.map_chunked(&square, 0..10_000, 1).unwrap();
    assert_eq!(out.len(), 10_000);
    assert_eq!(out[9_999], 9_999 * 9_999);
}

#[multiproc::test]
fn task_timeout_kills_and_replaces_the_worker() {
    let _leaks = LeakCheck::new();
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        pool.apply(&slow_pid, 30_000),
        Err(PoolError::Timeout(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(pool.apply(&slow_pid, 1).is_ok());
}

#[multiproc::test]
fn callbacks_run_and_a_panicking_one_does_not_break_the_pool() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    for x in 0..5u64 {
        let g = got.clone();
        pool.apply_async(&square, x)
            .unwrap()
            .then(move |v| g.lock().unwrap().push(v), |e| panic!("{e}"));
    }
    pool.apply_async(&square, 9)
        .unwrap()
        .then(|_| panic!("callback bug"), |_| ());
    let errs = Arc::new(Mutex::new(Vec::new()));
    let e2 = errs.clone();
    pool.apply_async(&maybe_panic, 3)
        .unwrap()
        .then(|_| (), move |e| e2.lock().unwrap().push(e.to_string()));
    assert!(eventually(Duration::from_secs(20), || got
        .lock()
        .unwrap()
        .len()
        == 5
        && errs.lock().unwrap().len() == 1));
    let mut v = got.lock().unwrap().clone();
    v.sort();
    assert_eq!(v, vec![0, 1, 4, 9, 16]);
    assert_eq!(pool.apply(&square, 4).unwrap(), 16);
    let h = pool.apply_async(&slow_pid, 200).unwrap();
    assert!(!h.ready());
    assert!(matches!(
        h.get_timeout(Duration::from_millis(10)),
        Err(PoolError::WaitTimeout(_))
    ));
    assert!(h.wait(Some(Duration::from_secs(10))));
    assert_eq!(h.successful(), Some(true));
}

#[multiproc::test]
fn close_finishes_work_terminate_fails_it() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let pending = pool
        .map_async(&slow_pid, std::iter::repeat_n(20u64, 20))
        .unwrap();
    pool.close();
    assert!(matches!(pool.apply(&square, 1), Err(PoolError::Closed)));
    pool.join().unwrap();
    assert_eq!(pending.get().unwrap().len(), 20);

    let pool = Pool::new(2).unwrap();
    let pending = pool
        .map_async(&slow_pid, std::iter::repeat_n(200u64, 20))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    pool.terminate();
    assert!(matches!(pending.get(), Err(PoolError::Terminated)));
    pool.join().unwrap();
}

#[multiproc::test]
fn dropping_the_pool_stops_its_workers_and_nested_pools_work() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.apply(&nested_map, 10).unwrap(),
        (0..10u64).map(|x| x * x).sum()
    );
    let pids = pool.initial_pids().to_vec();
    drop(pool);
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(5), || !alive(pid)),
            "worker {pid} outlived the pool"
        );
    }
}

#[cfg(feature = "progress")]
#[multiproc::test]
fn progress_bars_do_not_change_results() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let expected: Vec<u64> = (0..500).map(|x| x * x).collect();
    assert_eq!(pool.map_progress(&square, 0..500).unwrap(), expected);
    let got: Vec<u64> = pool
        .imap(&square, 0..500)
        .chunksize(10)
        .progress()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, expected);
}

#[multiproc::test]
fn closure_pools_fork_their_workers() {
    let _leaks = LeakCheck::new();
    let table: Vec<u64> = (0..100).map(|x| x * 3).collect();
    let pool = Pool::builder()
        .processes(2)
        .build_closure(move |i: usize| -> u64 {
            if i == 7 {
                panic!("seven");
            }
            table[i]
        })
        .unwrap();
    assert_eq!(pool.map(0..5).unwrap(), vec![0, 3, 6, 9, 12]);
    assert!(matches!(pool.apply(7), Err(PoolError::Panicked(m)) if m == "seven"));
    let mut got: Vec<u64> = pool.imap_unordered(10..20).map(|r| r.unwrap()).collect();
    got.sort();
    assert_eq!(got, (10..20).map(|x| x * 3).collect::<Vec<_>>());
    assert_eq!(pool.apply_async(99).unwrap().get().unwrap(), 297);
    pool.pool().close();
    pool.pool().join().unwrap();
}

#[multiproc::test]
fn callback_and_error_callback_leave_the_result_to_get() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let h = pool
        .apply_async(&square, 6)
        .unwrap()
        .callback(move |v| s1.lock().unwrap().push(format!("ok {v}")))
        .error_callback(move |e| s2.lock().unwrap().push(format!("err {e}")));
    assert_eq!(h.get_timeout(Duration::from_secs(20)).unwrap(), 36);
    let (s3, s4) = (seen.clone(), seen.clone());
    let failing = pool
        .apply_async(&maybe_panic, 3)
        .unwrap()
        .callback(move |v| s3.lock().unwrap().push(format!("ok {v}")))
        .error_callback(move |e| s4.lock().unwrap().push(format!("err {e}")));
    assert!(matches!(failing.get(), Err(PoolError::Panicked(_))));
    assert!(eventually(Duration::from_secs(5), || seen
        .lock()
        .unwrap()
        .len()
        == 2));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "ok 36");
    assert!(seen[1].starts_with("err task panicked"), "{seen:?}");
}

#[multiproc::func]
fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

#[multiproc::test]
fn large_chunks_both_ways_do_not_deadlock() {
    // Chunks and reports larger than a socket buffer, several per worker: the pool must
    // never block sending to a worker that is blocked sending to it.
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let items: Vec<Vec<u8>> = (0..20_000u32).map(|i| vec![(i % 251) as u8; 100]).collect();
    let expected = items.clone();
    let got = pool
        .map_async(&echo_bytes, items)
        .unwrap()
        .get_timeout(Duration::from_secs(60))
        .unwrap();
    assert!(got == expected);
}

#[multiproc::test]
fn encoded_tasks_for_layers_that_carry_bytes() {
    use multiproc::Func;
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let items: Vec<Vec<u8>> = (0..10u64)
        .map(|x| postcard::to_stdvec(&x).unwrap())
        .collect();
    let out = pool
        .map_encoded(square.registered_name(), &items, 3, None)
        .unwrap()
        .get_each_encoded();
    let back: Vec<u64> = out
        .into_iter()
        .map(|r| postcard::from_bytes(&r.unwrap()).unwrap())
        .collect();
    assert_eq!(back, (0..10u64).map(|x| x * x).collect::<Vec<_>>());
    // A per-call time limit kills the slow item only.
    let slow = [postcard::to_stdvec(&5000u64).unwrap()];
    let r = pool
        .map_encoded(
            slow_pid.registered_name(),
            &slow,
            1,
            Some(Duration::from_millis(200)),
        )
        .unwrap()
        .get_each_encoded();
    assert!(matches!(r[0], Err(PoolError::Timeout(t)) if t == Duration::from_millis(200)));
    assert!(matches!(
        pool.map_encoded("no::such::function", &items, 1, None),
        Err(PoolError::NotRegistered(_))
    ));
}

#[multiproc::test]
fn heavy_tasks_submitted_one_by_one_spread_over_the_workers() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    pool.map_chunked(&square, 0..5_000u64, 1).unwrap(); // deep pipelines
    // Each submission wakes the handler with a single chunk: the least busy worker takes it
    // (always handing it to the first worker that has room piled them all on one).
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let h = pool.apply_async(&slow_pid, 100u64).unwrap();
            std::thread::sleep(Duration::from_millis(5)); // dispatched before the next one
            h
        })
        .collect();
    let mut per_pid = std::collections::HashMap::new();
    for h in handles {
        *per_pid.entry(h.get().unwrap()).or_insert(0) += 1;
    }
    let mut counts: Vec<u32> = per_pid.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [4, 4], "tasks per worker: {per_pid:?}");
}

#[test]
fn heavy_tasks_after_tiny_ones_spread_over_the_workers() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    // Thousands of tiny tasks make the pipelines deep...
    pool.map_chunked(&square, 0..5_000u64, 1).unwrap();
    // ...yet two slow tasks submitted together still run on two workers, not one after the
    // other on the first.
    let pids = pool.map_chunked(&slow_pid, [200u64, 200], 1).unwrap();
    assert_ne!(
        pids[0], pids[1],
        "both slow tasks went to worker {}",
        pids[0]
    );
}

#[multiproc::func]
fn shout(s: String) -> String {
    s.to_uppercase()
}

#[multiproc::test]
fn borrowed_items_need_no_clone() {
    let _leaks = LeakCheck::new();
    let pool = Pool::new(2).unwrap();
    let names = vec!["ada".to_string(), "grace".to_string()];
    assert_eq!(pool.map(&shout, &names).unwrap(), ["ADA", "GRACE"]);
    assert_eq!(
        pool.map(&shout, ["alan", "barbara"]).unwrap(),
        ["ALAN", "BARBARA"]
    );
    let xs = vec![2u64, 3];
    assert_eq!(pool.map(&square, &xs).unwrap(), [4, 9]);
    assert_eq!(pool.map(&square, xs.iter()).unwrap(), [4, 9]);
    let lazy: Vec<u64> = pool.imap(&square, &xs).map(Result::unwrap).collect();
    assert_eq!(lazy, [4, 9]);
    assert_eq!(
        pool.map_async(&shout, &names).unwrap().get().unwrap().len(),
        2
    );
}

#[multiproc::test]
fn an_unregistered_closure_is_told_the_ways_that_run_closures() {
    let pool = Pool::new(1).unwrap();
    let double = |x: u64| x * 2;
    let err = pool.map(&double, 0..3u64).unwrap_err();
    assert!(matches!(err, PoolError::NotRegistered(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("build_closure") && msg.contains("Process::fork"),
        "{msg}"
    );
    assert!(
        !msg.contains("add `#[multiproc::func]` to its definition"),
        "{msg}"
    );
    let err = multiproc::Process::builder().start(&double, 1).unwrap_err();
    assert!(err.to_string().contains("build_closure"), "{err}");
    fn plain(x: u64) -> u64 {
        x
    }
    let msg = pool.apply(&plain, 1).unwrap_err().to_string();
    assert!(msg.contains("add `#[multiproc::func]`"), "{msg}");
}

/// A caller that spins for its result takes every worker's reports itself and keeps the
/// workers from waking the pool's handler; one-at-a-time callers reuse the worker they just
/// heard from. Meanwhile another thread's callbacks and a map must still be served promptly:
/// what the spinning caller took for them wakes the handler.
fn spinning_callers_leave_callbacks_and_maps_served(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    // Spinning whatever the load, so that the caller watches the rings nearly all the time.
    multiproc::set_spin_policy(multiproc::SpinPolicy::Always);
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let spinner = s.spawn(|| {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) && i < 2_000_000 {
                let v = pool.apply_async(&square, i).unwrap();
                assert_eq!(v.get_timeout(Duration::from_secs(20)).unwrap(), i * i);
                i += 1;
            }
            i
        });
        // The spinning thread stops when this one ends, failed or not.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = Stop(&done);
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..300u64 {
            let tx = tx.clone();
            let handle = pool.apply_async(&square, i).unwrap().callback(move |v| {
                let _ = tx.send(v);
            });
            // Each callback comes while the other thread spins for its own results.
            let got = rx.recv_timeout(Duration::from_secs(10));
            assert_eq!(got, Ok(i * i), "callback {i} did not come");
            drop(handle);
            if i % 50 == 0 {
                let m = pool.map(&square, 0..20u64).unwrap();
                assert_eq!(m, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
            }
        }
        drop(stop);
        assert!(spinner.join().unwrap() > 0);
    });
}

/// A caller that does not spin sleeps on the report ring of the worker it sent its task to,
/// and the worker's report wakes it directly. Whatever else ends the task wakes it too: a time
/// limit on the wait, the worker's death (the handler fails the task), a result taken by
/// another thread. A task already done is done at any time limit, even one already passed.
fn a_sleeping_caller_is_woken_by_its_worker_and_by_whatever_ends_its_task(
    method: multiproc::StartMethod,
) {
    let _leaks = LeakCheck::new();
    multiproc::set_spin_policy(multiproc::SpinPolicy::Never);
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .unwrap();
    for i in 0..300u64 {
        let r = pool.apply_async(&square, i).unwrap();
        assert_eq!(r.get_timeout(Duration::from_secs(20)).unwrap(), i * i);
    }
    let done = pool.apply_async(&square, 7).unwrap();
    assert!(eventually(Duration::from_secs(10), || done.ready()));
    assert!(done.wait(Some(Duration::ZERO)), "a done task said not done");
    assert_eq!(done.get_timeout(Duration::ZERO).unwrap(), 49);
    // The wait ends at its time limit; the task still ends later.
    let slow = pool.apply_async(&slow_pid, 300).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        slow.get_timeout(Duration::from_millis(50)),
        Err(PoolError::WaitTimeout(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(slow.get_timeout(Duration::from_secs(20)).is_ok());
    // The worker dies while the caller sleeps on its ring: the handler fails the task.
    let dying = pool.apply_async(&die_on, 5).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        dying.get_timeout(Duration::from_secs(30)),
        Err(PoolError::WorkerDied { .. })
    ));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the death was told after {:?}",
        t0.elapsed()
    );
    // The pool goes on, one caller per thread.
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..100u64 {
                    let r = pool.apply_async(&square, t * 1000 + i).unwrap();
                    let want = (t * 1000 + i) * (t * 1000 + i);
                    assert_eq!(r.get_timeout(Duration::from_secs(20)).unwrap(), want);
                }
            });
        }
    });
}

/// Pins the calling thread (and threads and processes it starts afterwards) to CPU 0.
fn pin_to_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// Pool initializer: pins the worker to CPU 0.
#[multiproc::func]
fn pin_worker_to_cpu0() {
    pin_to_cpu0();
}

/// The caller, the pool's threads and its worker on one CPU, so that the worker a caller's
/// send wakes runs at once and reports while the caller still sends (the caller takes that
/// report itself, after the send). Whatever the handler must act on still gets done: every
/// callback runs, a lazy iterator gets its held-back results, the worker goes on serving.
fn a_caller_on_its_workers_cpu_leaves_callbacks_and_iterators_served(
    method: multiproc::StartMethod,
) {
    let _leaks = LeakCheck::new();
    multiproc::set_spin_policy(multiproc::SpinPolicy::Never);
    pin_to_cpu0();
    let pool = Pool::builder()
        .processes(1)
        .start_method(method)
        .initializer(&pin_worker_to_cpu0, ())
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for round in 0..20u64 {
        for i in 0..20u64 {
            let x = round * 100 + i;
            assert_eq!(pool.apply_async(&square, x).unwrap().get().unwrap(), x * x);
        }
        let tx = tx.clone();
        let _handle = pool
            .apply_async(&square, round)
            .unwrap()
            .callback(move |v| {
                let _ = tx.send(v);
            });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(round * round));
        let got: Vec<u64> = pool.imap(&square, 0..7u64).map(|r| r.unwrap()).collect();
        assert_eq!(got, (0..7u64).map(|x| x * x).collect::<Vec<_>>());
    }
}

/// What a process holds open: paths, `anon_inode:[eventfd]` and the like, and `socket` or
/// `pipe` for those.
fn open_descriptor_kinds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| {
            let t = target.to_string_lossy().into_owned();
            match t.split_once(":[") {
                Some((kind @ ("socket" | "pipe"), _)) => kind.to_string(),
                _ => t,
            }
        })
        .collect()
}

/// A worker's report ring is waited for on futexes and the worker's connection only: it
/// carries no doorbell, so a pool costs no eventfd per worker (in the worker, nor in the
/// parent, which holds the same ring).
fn a_pool_worker_holds_no_doorbell(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    let eventfds = |pid| {
        open_descriptor_kinds(pid)
            .iter()
            .filter(|k| k.as_str() == "anon_inode:[eventfd]")
            .count()
    };
    let pool = Pool::builder()
        .processes(3)
        .start_method(method)
        .build()
        .unwrap();
    assert_eq!(pool.map(&square, 0..10u64).unwrap().len(), 10);
    for &pid in pool.initial_pids() {
        let kinds = open_descriptor_kinds(pid);
        assert_eq!(eventfds(pid), 0, "worker {pid} holds {kinds:?}");
    }
    pool.close();
    pool.join().unwrap();
}

/// How many descriptors each worker of a pool of five holds (with start method `method`, or
/// a closure pool for `None`).
#[multiproc::func]
fn descriptors_per_worker(method: Option<String>) -> Vec<Vec<String>> {
    let held = |pool: &Pool| -> Vec<Vec<String>> {
        let held = pool
            .initial_pids()
            .iter()
            .map(|&pid| open_descriptor_kinds(pid))
            .collect();
        pool.close();
        pool.join().unwrap();
        held
    };
    let builder = Pool::builder().processes(5);
    match method {
        Some(m) => {
            let pool = builder.start_method(m.parse().unwrap()).build().unwrap();
            assert_eq!(pool.map(&square, 0..10u64).unwrap().len(), 10);
            held(&pool)
        }
        None => {
            let pool = builder.build_closure(|x: u64| x * x).unwrap();
            assert_eq!(pool.map(0..10u64).unwrap().len(), 10);
            held(pool.pool())
        }
    }
}

/// Every worker holds as many descriptors as the first, however many were started before
/// it: a forked worker held every earlier worker's connection, ring, progress area, pidfd
/// and report channel (the pool's side of them), six more per worker. Looked at in a process
/// of its own: the other tests of this binary, which the plain test harness runs beside this
/// one, make descriptors a fork inherits too.
fn assert_workers_hold_as_many_descriptors(method: Option<String>) {
    let held = multiproc::Process::builder()
        .start_method(multiproc::StartMethod::Spawn)
        .start(&descriptors_per_worker, method)
        .unwrap()
        .join()
        .unwrap();
    assert!(held.iter().all(|h| h.len() == held[0].len()), "{held:#?}");
}

fn a_pool_worker_holds_nothing_of_the_workers_started_before_it(method: multiproc::StartMethod) {
    let _leaks = LeakCheck::new();
    assert_workers_hold_as_many_descriptors(Some(method.to_string()));
}

/// A forked child's copy of its parent's pool refuses work with an error (no thread of the
/// pool runs there, and the fork closed the pool's descriptors), and ending the copy leaves
/// the pool to the parent, which goes on using it.
#[multiproc::test]
fn a_forked_child_cannot_use_its_parents_pool() {
    let _leaks = LeakCheck::new();
    let pool = Pool::builder().processes(2).build().unwrap();
    assert_eq!(pool.map(&square, 0..4u64).unwrap(), [0, 1, 4, 9]);
    let child = multiproc::Process::builder()
        .fork(|| {
            let refused = matches!(
                pool.apply_async(&square, 3u64).map(drop),
                Err(multiproc::TaskError::Invalid(_))
            );
            pool.terminate();
            refused
        })
        .unwrap();
    assert!(child.join().unwrap());
    assert_eq!(pool.map(&square, 0..4u64).unwrap(), [0, 1, 4, 9]);
    pool.close();
    pool.join().unwrap();
}

/// The same for a closure pool, whose workers are always forks.
#[multiproc::test]
fn a_closure_pool_worker_holds_nothing_of_the_workers_started_before_it() {
    let _leaks = LeakCheck::new();
    assert_workers_hold_as_many_descriptors(None);
}

per_start_method!(
    multiproc::test;
    spinning_callers_leave_callbacks_and_maps_served,
    a_sleeping_caller_is_woken_by_its_worker_and_by_whatever_ends_its_task,
    a_caller_on_its_workers_cpu_leaves_callbacks_and_iterators_served,
    a_pool_worker_holds_no_doorbell,
    a_pool_worker_holds_nothing_of_the_workers_started_before_it
);
