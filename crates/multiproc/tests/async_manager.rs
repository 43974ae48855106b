//! Manager proxy calls awaited (feature `tokio`): many calls from one task set on a few
//! threads, blocking calls satisfied by other processes, cancellation in mid-flight (the
//! connection stays in step, what an abandoned call took is given back), a killed server;
//! under both runtimes and every start method of the server.
#![cfg(all(target_os = "linux", feature = "tokio"))]

mod async_common;
mod common;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use async_common::{both_runtimes, threads};
use common::{LeakCheck, alive, eventually};
use multiproc::manager::{Manager, QueueProxy};
use multiproc::{ManagerError, Process, StartMethod};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(20);

#[derive(Default, Serialize, Deserialize)]
struct Echo {
    calls: u64,
}

#[multiproc::managed]
impl Echo {
    /// `x` back, after `ms` milliseconds in the server.
    fn echo(&mut self, x: u64, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.calls += 1;
        x
    }
}

#[multiproc::func]
fn put_after(q: QueueProxy<u64>, ms: u64, item: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    q.put(&item).unwrap();
}

fn manager(method: StartMethod) -> Manager {
    Manager::builder().start_method(method).start().unwrap()
}

/// Polls `fut` once (so its request goes out on a pooled connection), then leaves it.
async fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> bool {
    let mut fut = Some(fut);
    poll_fn(|cx| Poll::Ready(fut.take().unwrap().poll(cx).is_pending())).await
}

/// Whether `cond` becomes true within [`T`], looking every few milliseconds without
/// blocking the runtime (tasks it waits for run meanwhile).
async fn eventually_async(mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + T;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

per_start_method!(
    a_thousand_concurrent_dict_calls_on_bounded_threads_and_connections,
    an_awaited_queue_get_is_satisfied_by_a_producer_process,
    select_between_lock_acquire_and_a_timer_leaves_the_connection_in_step,
    a_task_owns_what_it_acquired_on_whichever_thread_it_runs,
    a_call_cancelled_in_mid_flight_leaves_later_calls_their_own_replies,
    what_an_abandoned_call_took_is_given_back,
    a_killed_server_ends_an_awaited_call_with_an_error,
);

fn a_thousand_concurrent_dict_calls_on_bounded_threads_and_connections(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            let d = mgr.dict::<u64, u64>().unwrap();
            let before = threads();
            let tasks: Vec<_> = (0..1000u64)
                .map(|i| {
                    let d = d.clone();
                    tokio::spawn(async move {
                        d.set_async(&i, &(i * i)).await.unwrap();
                        d.get_async(&i).await.unwrap()
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let during = threads();
            assert!(
                during <= before + 8,
                "{during} threads while awaiting, {before} before"
            );
            for (i, t) in tasks.into_iter().enumerate() {
                let i = i as u64;
                assert_eq!(t.await.unwrap(), Some(i * i));
            }
            assert_eq!(d.len_async().await.unwrap(), 1000);
            // Calls that are answered at once share a few connections (the pool's size, the
            // session's anchor, the one asking).
            let stats = mgr.stats().unwrap();
            assert!(stats.connections <= 18, "{stats:?}");
        }
    });
    mgr.shutdown().unwrap();
}

fn an_awaited_queue_get_is_satisfied_by_a_producer_process(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            let q = mgr.queue::<u64>().unwrap();
            let producer = Process::builder()
                .start_method(method)
                .start(&put_after, (q.clone(), 150, 7))
                .unwrap();
            let before = threads();
            let waiting = tokio::spawn({
                let q = q.clone();
                async move { q.get_async().await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "the get did not wait");
            assert!(threads() <= before + 2);
            assert_eq!(waiting.await.unwrap().unwrap(), 7);
            producer.join_async().await.unwrap();
            // A timed get with nothing to take ends with the queue's own error.
            match q.get_timeout_async(Duration::from_millis(50)).await {
                Err(ManagerError::Queue(multiproc::QueueError::Empty)) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    mgr.shutdown().unwrap();
}

fn select_between_lock_acquire_and_a_timer_leaves_the_connection_in_step(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            let lock = mgr.lock().unwrap();
            let d = mgr.dict::<String, u64>().unwrap();
            lock.acquire().unwrap();
            tokio::select! {
                r = lock.acquire_async() => panic!("acquired a held lock: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            // The next calls get their own replies.
            d.set_async(&"a".into(), &1).await.unwrap();
            assert_eq!(d.get_async(&"a".into()).await.unwrap(), Some(1));
            assert_eq!(d.get_async(&"b".into()).await.unwrap(), None);
            assert!(lock.locked().unwrap());
            lock.release().unwrap();
            // The abandoned acquire did not take the lock when it was released.
            lock.acquire_timeout_async(T).await.unwrap();
            assert!(lock.locked().unwrap());
            lock.release_async().await.unwrap();
            assert!(!lock.locked().unwrap());
            match lock.acquire_timeout_async(Duration::ZERO).await {
                Ok(()) => lock.release_async().await.unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    mgr.shutdown().unwrap();
}

fn a_task_owns_what_it_acquired_on_whichever_thread_it_runs(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            // Reentrant: only the owner may release; the owner of an awaited call is its task.
            let rlock = mgr.rlock().unwrap();
            let cond = mgr.condition().unwrap();
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (rlock, cond) = (rlock.clone(), cond.clone());
                    tokio::spawn(async move {
                        for _ in 0..5 {
                            rlock.acquire_async().await.unwrap();
                            tokio::task::yield_now().await;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            rlock.release_async().await.unwrap();
                        }
                        cond.acquire_async().await.unwrap();
                        // Notified by another task or timed out: the lock is held again.
                        let _notified: bool = cond
                            .wait_timeout_async(Duration::from_millis(10))
                            .await
                            .unwrap();
                        cond.notify_all_async().await.unwrap();
                        cond.release_async().await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert!(!rlock.locked().unwrap());
        }
    });
    mgr.shutdown().unwrap();
}

fn a_call_cancelled_in_mid_flight_leaves_later_calls_their_own_replies(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            let echo = mgr.create(Echo::default()).unwrap();
            assert_eq!(echo.echo_async(1, 0).await.unwrap(), 1);
            // Cancelled while the server runs it: its reply (1000) must reach no one.
            tokio::select! {
                r = echo.echo_async(1000, 300) => panic!("finished early: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            // Through the raw proxy as well as the generated twin.
            for x in 2..20u64 {
                let got: u64 = if x % 2 == 0 {
                    echo.echo_async(x, 0).await.unwrap()
                } else {
                    multiproc::manager::ProxyType::proxy(&echo)
                        .call_async("echo", &(x, 0u64))
                        .await
                        .unwrap()
                };
                assert_eq!(got, x);
            }
            // The same on a queue: a get cancelled in flight takes nothing.
            let q = mgr.queue::<u64>().unwrap();
            tokio::select! {
                r = q.get_async() => panic!("got from an empty queue: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            // The server gives the abandoned get up when it next looks (a tenth of a second).
            tokio::time::sleep(Duration::from_millis(250)).await;
            q.put_async(&5).await.unwrap();
            q.put_async(&6).await.unwrap();
            assert_eq!(q.get_timeout_async(T).await.unwrap(), 5);
            assert_eq!(q.get_timeout_async(T).await.unwrap(), 6);
            // Errors come back as the call's own.
            let r: Result<u64, _> = multiproc::manager::ProxyType::proxy(&echo)
                .call_async("nope", &())
                .await;
            assert!(
                matches!(r, Err(ManagerError::UnknownMethod { .. })),
                "{r:?}"
            );
        }
    });
    mgr.shutdown().unwrap();
}

fn what_an_abandoned_call_took_is_given_back(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    both_runtimes(|| {
        let mgr = mgr.clone();
        async move {
            // Each call below goes out in its first poll and waits on the server; then what
            // it waits for comes, the server completes it, and the future is dropped with
            // the answer unread: as when a `select!` takes another branch just as the call
            // completes.
            let lock = mgr.lock().unwrap();
            lock.acquire().unwrap();
            {
                let fut = pin!(lock.acquire_async());
                assert!(poll_once(fut).await);
                lock.release().unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(lock.locked().unwrap(), "the server granted the lock");
            }
            assert!(
                eventually_async(|| !lock.locked().unwrap()).await,
                "an abandoned acquire kept the lock"
            );
            let sem = mgr.semaphore(0).unwrap();
            {
                let fut = pin!(sem.acquire_async());
                assert!(poll_once(fut).await);
                sem.release(1).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(sem.value().unwrap(), 0);
            }
            assert!(eventually_async(|| sem.value().unwrap() == 1).await);
            let q = mgr.joinable_queue::<u64>().unwrap();
            {
                let fut = pin!(q.get_async());
                assert!(poll_once(fut).await);
                q.put(&1).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                q.put(&2).unwrap();
                assert_eq!(q.qsize().unwrap(), 1);
            }
            assert!(eventually_async(|| q.qsize().unwrap() == 2).await);
            // Put back at the end; the count of unfinished tasks is still two.
            assert_eq!(q.get_async().await.unwrap(), 2);
            assert_eq!(q.get_async().await.unwrap(), 1);
            q.task_done_async().await.unwrap();
            assert!(
                q.join_timeout_async(Duration::from_millis(50))
                    .await
                    .is_err()
            );
            q.task_done_async().await.unwrap();
            q.join_timeout_async(T).await.unwrap();
        }
    });
    mgr.shutdown().unwrap();
}

fn a_killed_server_ends_an_awaited_call_with_an_error(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mut round = 0;
    both_runtimes(|| {
        round += 1;
        async move {
            let mgr = manager(method);
            let q = mgr.queue::<u64>().unwrap();
            let e = mgr.event().unwrap();
            let getting = tokio::spawn({
                let q = q.clone();
                async move { q.get_async().await }
            });
            let waiting = tokio::spawn({
                let e = e.clone();
                async move { e.wait_async().await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let pid = mgr.pid();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let r = getting.await.unwrap();
            assert!(r.is_err(), "round {round}: {r:?}");
            assert!(waiting.await.unwrap().is_err());
            // Later calls fail at once.
            assert!(q.put_async(&1).await.is_err());
            drop((q, e));
            drop(mgr);
            assert!(eventually(T, || !alive(pid)));
        }
    });
}
