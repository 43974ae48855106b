//! Queues and events awaited (feature `tokio`): woken by other processes through the queue's
//! doorbell, cancel-safe, under both runtimes; process tests under every start method.
#![cfg(all(target_os = "linux", feature = "tokio"))]

mod async_common;
mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use async_common::both_runtimes;
use common::LeakCheck;
use multiproc::{Event, JoinableQueue, Process, Queue, QueueError, StartMethod};

#[multiproc::func]
fn put_after(q: Queue<u64>, ms: u64, item: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    q.put(&item).unwrap();
    std::thread::sleep(Duration::from_millis(60_000));
}

#[multiproc::func]
fn exit_after(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::func]
fn take_after(q: Queue<u64>, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    q.get().unwrap()
}

#[multiproc::func]
fn finish_tasks(q: JoinableQueue<u64>, n: u64) {
    for _ in 0..n {
        q.get().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        q.task_done().unwrap();
    }
}

#[multiproc::func]
fn set_after(e: Event, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    e.set();
}

fn builder(method: StartMethod) -> multiproc::Builder {
    Process::builder().start_method(method)
}

per_start_method!(
    select_takes_the_item_when_the_producer_delivers,
    select_ends_when_the_producer_dies_first,
    a_bounded_put_async_is_woken_by_a_get_in_another_process,
    join_async_waits_for_every_task_done_in_another_process,
    event_wait_async_is_woken_by_another_process,
);

fn select_takes_the_item_when_the_producer_delivers(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let q = Queue::<u64>::new().unwrap();
        let producer = builder(method)
            .start(&put_after, (q.clone(), 50, 7))
            .unwrap();
        tokio::select! {
            item = q.get_async() => assert_eq!(item.unwrap(), 7),
            _ = producer.wait_async() => panic!("the producer ended first"),
        }
        producer.kill().unwrap();
        assert!(producer.join_async().await.is_err());
    });
}

fn select_ends_when_the_producer_dies_first(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let q = Queue::<u64>::new().unwrap();
        let producer = builder(method).start(&exit_after, 50).unwrap();
        tokio::select! {
            item = q.get_async() => panic!("got {item:?} from nobody"),
            code = producer.wait_async() => assert_eq!(code.unwrap(), 0),
        }
        // The dropped get took nothing: an item put now is the next one.
        q.put(&9).unwrap();
        assert_eq!(q.get_async().await.unwrap(), 9);
        assert_eq!(producer.join_async().await.unwrap(), 50);
    });
}

fn a_bounded_put_async_is_woken_by_a_get_in_another_process(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let q = Queue::<u64>::bounded(1).unwrap();
        q.put(&1).unwrap();
        let consumer = builder(method).start(&take_after, (q.clone(), 50)).unwrap();
        q.put_async(&2).await.unwrap(); // waits for the child's get
        assert_eq!(consumer.join_async().await.unwrap(), 1);
        assert_eq!(q.get_async().await.unwrap(), 2);
    });
}

fn join_async_waits_for_every_task_done_in_another_process(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let q = JoinableQueue::<u64>::new().unwrap();
        for i in 0..5 {
            q.put_async(&i).await.unwrap();
        }
        let worker = builder(method)
            .start(&finish_tasks, (q.clone(), 5))
            .unwrap();
        q.join_async().await.unwrap();
        assert!(q.join_timeout(Duration::ZERO));
        worker.join_async().await.unwrap();
    });
}

fn event_wait_async_is_woken_by_another_process(method: StartMethod) {
    let _leaks = LeakCheck::new();
    both_runtimes(|| async move {
        let e = Event::new().unwrap();
        let setter = builder(method).start(&set_after, (e.clone(), 50)).unwrap();
        e.wait_async().await.unwrap();
        assert!(e.is_set());
        setter.join_async().await.unwrap();
    });
}

#[test]
fn a_put_async_dropped_while_waiting_put_nothing() {
    both_runtimes(|| async {
        let q = Queue::<u64>::bounded(1).unwrap();
        q.put_async(&1).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), q.put_async(&2))
                .await
                .is_err()
        );
        assert_eq!(q.get_async().await.unwrap(), 1);
        assert!(matches!(q.get_nowait(), Err(QueueError::Empty)));
        q.put_async(&3).await.unwrap();
        assert_eq!(q.get().unwrap(), 3);
    });
}

#[test]
fn many_waiters_each_get_one_item_and_close_ends_the_rest() {
    both_runtimes(|| async {
        let q = Queue::<u64>::new().unwrap();
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.get_async().await })
            })
            .collect();
        tokio::task::yield_now().await;
        for i in 0..60 {
            q.put_async(&i).await.unwrap();
        }
        q.close();
        let (mut got, mut closed) = (Vec::new(), 0);
        for w in waiters {
            match w.await.unwrap() {
                Ok(v) => got.push(v),
                Err(QueueError::Closed) => closed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        got.sort();
        assert_eq!(got, (0..60).collect::<Vec<_>>());
        assert_eq!(closed, 40);
        assert!(matches!(q.put_async(&1).await, Err(QueueError::Closed)));
    });
}

#[test]
fn a_queue_waits_beside_a_sentinel_in_multiproc_wait() {
    let _leaks = LeakCheck::new();
    let q = Queue::<u64>::new().unwrap();
    let fd_ready =
        |q: &Queue<u64>| multiproc::wait(&[q.as_fd()], Some(Duration::ZERO)).unwrap() == [0];
    assert!(!fd_ready(&q));
    q.put(&1).unwrap();
    assert!(fd_ready(&q));
    assert_eq!(q.get_nowait().unwrap(), 1);
    // Found empty: the doorbell is quiet again.
    assert!(matches!(q.get_nowait(), Err(QueueError::Empty)));
    assert!(!fd_ready(&q));
    // A producer in another process rings it; a dead one's sentinel ends the wait.
    let producer = Process::builder()
        .start(&put_after, (q.clone(), 20, 5))
        .unwrap();
    let ready = multiproc::wait(
        &[q.as_fd(), producer.sentinel()],
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(ready, [0]);
    assert_eq!(q.get_nowait().unwrap(), 5);
    // The doorbell is a hint until a get finds the queue empty (see `impl AsFd for Queue`).
    assert!(matches!(q.get_nowait(), Err(QueueError::Empty)));
    producer.kill().unwrap();
    let ready = multiproc::wait(
        &[q.as_fd(), producer.sentinel()],
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(ready, [1]);
    assert!(producer.join().is_err());
}
