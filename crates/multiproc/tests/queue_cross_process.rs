//! Queues across processes: CPython's acceptance cases plus the failures CPython cannot
//! survive (a consumer or producer killed mid-operation, a producer that exits at once).
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use common::LeakCheck;
use multiproc::{Fd, JoinableQueue, Queue, QueueError, SimpleQueue, StartMethod};

#[multiproc::func]
fn produce(q: Queue<(u32, u32)>, id: u32, n: u32) {
    for i in 0..n {
        q.put(&(id, i)).unwrap();
    }
}

/// A producer that keeps a bounded queue full and a consumer that keeps emptying it wait on
/// each other for every item: a lost wake-up on either side shows as a stall.
fn bounded_queue_hands_over_every_item_without_stalling(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let q = Queue::<(u32, u32)>::bounded(1).unwrap();
    let p = start(method, &produce, (q.clone(), 7, 20_000)).unwrap();
    for i in 0..20_000 {
        let got = q
            .get_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert_eq!(got, (7, i));
    }
    p.join().unwrap();
    // And with the sides swapped: the parent waits for room.
    let q = Queue::<u64>::bounded(2).unwrap();
    let seen = Queue::<u64>::new().unwrap();
    let c = start(method, &consume_forever, (q.clone(), seen.clone())).unwrap();
    for i in 0..20_000u64 {
        q.put_timeout(&i, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("item {i}: {e}"));
    }
    let mut last = None;
    for _ in 0..20_000 {
        last = Some(seen.get_timeout(Duration::from_secs(10)).unwrap());
    }
    assert_eq!(last, Some(19_999));
    q.close();
    c.join().unwrap();
}

fn order_is_kept_per_producer(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let q = Queue::<(u32, u32)>::new().unwrap();
    let procs: Vec<_> = (0..3)
        .map(|id| start(method, &produce, (q.clone(), id, 2000)).unwrap())
        .collect();
    let mut last: HashMap<u32, u32> = HashMap::new();
    for _ in 0..6000 {
        let (id, i) = q.get_timeout(Duration::from_secs(20)).unwrap();
        if let Some(prev) = last.insert(id, i) {
            assert_eq!(i, prev + 1, "producer {id} out of order");
        }
    }
    assert!(q.empty());
    for p in procs {
        p.join().unwrap();
    }
}

#[test]
fn timeouts_and_bounds() {
    let q = Queue::<u8>::bounded(2).unwrap();
    assert_eq!(q.maxsize(), Some(2));
    common::assert_times_out_on_time(
        Duration::from_millis(200),
        Duration::from_millis(100),
        || {
            assert!(matches!(
                q.get_timeout(Duration::from_millis(200)),
                Err(QueueError::Empty)
            ))
        },
    );
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    assert!(q.full());
    assert!(matches!(q.put_nowait(&3), Err(QueueError::Full)));
    common::assert_times_out_on_time(
        Duration::from_millis(200),
        Duration::from_millis(100),
        || {
            assert!(matches!(
                q.put_timeout(&3, Duration::from_millis(200)),
                Err(QueueError::Full)
            ))
        },
    );
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.get().unwrap(), 1);
    q.put_nowait(&3).unwrap();
    assert_eq!(q.get_many(10).unwrap(), vec![2, 3]);
    assert!(matches!(q.get_nowait(), Err(QueueError::Empty)));
    let tiny = Queue::<Vec<u8>>::with_limits(0, 1024).unwrap();
    assert!(matches!(
        tiny.put(&vec![0; 4096]),
        Err(QueueError::TooLarge { .. })
    ));
    tiny.put_many(&[vec![1; 100], vec![2; 100]]).unwrap();
    assert_eq!(tiny.get_many(5).unwrap().len(), 2);
}

/// Python's `Queue(0)` is unbounded; so is `bounded(0)` (not a one-slot queue).
#[test]
fn bounded_zero_is_unbounded_as_in_python() {
    let q = Queue::<u32>::bounded(0).unwrap();
    assert_eq!(q.maxsize(), None);
    for i in 0..100 {
        q.put_timeout(&i, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("item {i}: {e}"));
    }
    assert!(!q.full());
    assert_eq!(q.qsize(), 100);
    let j = JoinableQueue::<u32>::bounded(0).unwrap();
    assert_eq!(j.maxsize(), None);
    for i in 0..100 {
        j.put_timeout(&i, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("item {i}: {e}"));
    }
    assert!(!j.full());
    assert_eq!(j.get_many(1000).unwrap().len(), 100);
}

#[test]
fn serialization_errors_come_from_put_itself() {
    let q = Queue::<Fd>::new().unwrap();
    let fd = Fd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
    assert!(matches!(q.put(&fd), Err(QueueError::Codec(_))));
    assert!(q.empty());
}

#[test]
fn close_lets_consumers_drain_then_stop() {
    let q = Queue::<u32>::new().unwrap();
    q.put(&7).unwrap();
    q.close();
    assert!(q.is_closed());
    assert!(matches!(q.put(&8), Err(QueueError::Closed)));
    assert_eq!(q.get().unwrap(), 7);
    assert!(matches!(q.get(), Err(QueueError::Closed)));
    let s = SimpleQueue::<String>::new().unwrap();
    s.put(&"a".into()).unwrap();
    assert!(!s.empty());
    assert_eq!(s.get().unwrap(), "a");
}

#[multiproc::func]
fn put_big_and_exit(q: Queue<Vec<u8>>) {
    q.put(&vec![0xab; 1 << 20]).unwrap();
}

fn producer_exits_after_a_big_put_and_is_joined_before_the_get(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let q = Queue::<Vec<u8>>::new().unwrap();
    let p = start(method, &put_big_and_exit, q.clone()).unwrap();
    // CPython deadlocks here: the child's feeder thread waits for a reader.
    assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    p.join().unwrap();
    let item = q.get_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(item.len(), 1 << 20);
    assert!(item.iter().all(|&b| b == 0xab));
}

#[multiproc::func]
fn worker(tasks: JoinableQueue<u32>, results: Queue<u32>) {
    while let Ok(t) = tasks.get() {
        results.put(&(t * 10)).unwrap();
        tasks.task_done().unwrap();
    }
}

fn joinable_queue_join_waits_for_every_task(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let tasks = JoinableQueue::<u32>::new().unwrap();
    let results = Queue::<u32>::new().unwrap();
    let procs: Vec<_> = (0..3)
        .map(|_| start(method, &worker, (tasks.clone(), results.clone())).unwrap())
        .collect();
    tasks.put_many(&(0..300).collect::<Vec<_>>()).unwrap();
    assert!(
        tasks.join_timeout(Duration::from_secs(30)),
        "join did not return"
    );
    assert_eq!(results.qsize(), 300);
    let mut all = results.get_many(1000).unwrap();
    all.sort();
    assert_eq!(all, (0..300).map(|t| t * 10).collect::<Vec<_>>());
    tasks.close();
    for p in procs {
        p.join().unwrap();
    }
    assert!(matches!(
        tasks.task_done(),
        Err(QueueError::TooManyTaskDone)
    ));
}

#[multiproc::func]
fn consume_forever(q: Queue<u64>, seen: Queue<u64>) {
    loop {
        match q.get() {
            Ok(v) => seen.put(&v).unwrap(),
            Err(_) => return,
        }
    }
}

#[multiproc::func]
fn produce_forever(q: Queue<u64>, start: u64) {
    let mut i = start;
    loop {
        q.put(&i).unwrap();
        i += 1;
    }
}

fn killed_consumers_and_producers_do_not_wedge_the_queue(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let q = Queue::<u64>::new().unwrap();
    let seen = Queue::<u64>::new().unwrap();
    // Consumers killed while they work, again and again.
    for round in 0..5u64 {
        let c = start(method, &consume_forever, (q.clone(), seen.clone())).unwrap();
        let base = round * 1_000_000;
        for i in 0..20_000 {
            q.put(&(base + i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        c.kill().unwrap();
        assert!(c.join_timeout(Duration::from_secs(10)).unwrap());
    }
    // Producers killed while they work.
    for round in 0..3u64 {
        let p = start(
            method,
            &produce_forever,
            (q.clone(), 100_000_000 * (round + 1)),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        p.kill().unwrap();
        assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
    }
    // The survivors see no corruption: every item decodes, and the queue still works.
    let rest = q.get_many(usize::MAX).unwrap_or_default();
    for v in rest
        .iter()
        .chain(seen.get_many(usize::MAX).unwrap_or_default().iter())
    {
        assert!(*v < 1_000_000_000, "garbage item {v}");
    }
    q.put(&42).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 42);
    assert!(q.empty());
}

#[test]
fn queues_and_locks_travel_through_connections() {
    let (a, b) = multiproc::pipe(true).unwrap();
    let q = Queue::<u32>::new().unwrap();
    let lock = multiproc::Lock::new().unwrap();
    a.send(&(q.clone(), lock.clone())).unwrap();
    let (q2, lock2): (Queue<u32>, multiproc::Lock) = b.recv().unwrap();
    q2.put(&5).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 5);
    let held = lock2.acquire().unwrap();
    assert!(lock.is_locked());
    drop(held);
    assert!(!lock.is_locked());
}

/// Starts `f(args)` with start method `method`.
fn start<F: multiproc::Func<M>, M>(
    method: StartMethod,
    f: &F,
    args: F::Args,
) -> Result<multiproc::Process<F::Output>, multiproc::ProcessError> {
    multiproc::Process::builder()
        .start_method(method)
        .start(f, args)
}

per_start_method!(
    multiproc::test;
    bounded_queue_hands_over_every_item_without_stalling,
    order_is_kept_per_producer,
    producer_exits_after_a_big_put_and_is_joined_before_the_get,
    joinable_queue_join_waits_for_every_task,
    killed_consumers_and_producers_do_not_wedge_the_queue,
);
