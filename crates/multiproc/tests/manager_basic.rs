//! Managers: built-in objects, user types, proxies across processes, lifetimes, remote
//! serving, and what hostile or broken clients cannot do to a server.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{LeakCheck, alive, eventually};
use multiproc::manager::{
    DictProxy, JoinableQueueProxy, LockProxy, Manager, Proxy, ProxyType, QueueProxy, ValueProxy,
};
use multiproc::{Func, ManagerError, Process, QueueError, StartMethod, SyncError};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(20);

per_start_method!(
    multiproc::test;
    dict_list_array_namespace_value,
    proxies_travel_to_children,
    user_types_become_proxies,
    queues_block_time_out_and_join,
    eight_processes_count_exactly_under_the_proxy_lock,
    locks_of_a_killed_process_are_released,
    rlock_condition_semaphore_event_barrier,
    objects_live_while_proxies_exist,
    a_killed_client_releases_its_objects,
    manager_ends_with_its_last_handle_and_shutdown_closes_proxies,
    served_manager_over_tcp,
    hostile_and_broken_clients_do_not_hurt_the_server,
    unknown_objects_are_typed_errors,
    a_slow_call_stalls_only_its_own_object,
    frames_announced_but_not_sent_cost_the_server_only_what_arrives,
);

/// A manager whose server starts with `method`.
fn manager(method: StartMethod) -> Manager {
    Manager::builder().start_method(method).start().unwrap()
}

/// `f(args)` in a child started with `method`.
fn start<F: Func<M>, M>(
    method: StartMethod,
    f: &F,
    args: F::Args,
) -> Result<Process<F::Output>, multiproc::ProcessError> {
    Process::builder().start_method(method).start(f, args)
}

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
    log: Vec<String>,
}

#[multiproc::managed]
impl Counter {
    /// Adds `by`; the new value.
    fn incr(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }

    fn get(&self) -> u64 {
        self.value
    }

    fn note(&mut self, text: &str, tags: &[u8]) -> usize {
        self.log.push(format!("{text}{tags:?}"));
        self.log.len()
    }

    fn slow(&self, millis: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(millis));
        self.value
    }

    fn explode(&mut self) {
        panic!("counter exploded");
    }

    #[allow(dead_code)]
    fn local_only() -> u8 {
        1
    }
}

fn dict_list_array_namespace_value(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let d = mgr.dict::<String, u64>().unwrap();
    assert_eq!(d.get(&"a".into()).unwrap(), None);
    d.set(&"b".into(), &2).unwrap();
    assert_eq!(d.insert(&"a".into(), &1).unwrap(), None);
    assert_eq!(d.insert(&"a".into(), &10).unwrap(), Some(1));
    assert_eq!(d.setdefault(&"c".into(), &3).unwrap(), 3);
    assert_eq!(d.setdefault(&"c".into(), &4).unwrap(), 3);
    assert_eq!(d.keys().unwrap(), ["b", "a", "c"], "insertion order");
    assert_eq!(d.values().unwrap(), [2, 10, 3]);
    assert!(d.contains_key(&"b".into()).unwrap());
    assert_eq!(d.remove(&"b".into()).unwrap(), Some(2));
    assert_eq!(d.len().unwrap(), 2);
    d.update([(&"x".to_string(), &7), (&"y".to_string(), &8)])
        .unwrap();
    assert_eq!(
        d.items().unwrap(),
        [
            ("a".into(), 10),
            ("c".into(), 3),
            ("x".into(), 7),
            ("y".into(), 8)
        ]
    );
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());

    let l = mgr.list::<String>().unwrap();
    l.push(&"one".into()).unwrap();
    l.extend(&["two".to_string(), "three".to_string()]).unwrap();
    l.insert(0, &"zero".into()).unwrap();
    assert_eq!(l.to_vec().unwrap(), ["zero", "one", "two", "three"]);
    assert_eq!(l.remove(1).unwrap(), "one");
    assert_eq!(l.pop().unwrap().as_deref(), Some("three"));
    l.set(0, &"0".into()).unwrap();
    assert_eq!(l.get(0).unwrap(), "0");
    assert!(matches!(
        l.get(5),
        Err(ManagerError::IndexOutOfRange { index: 5, len: 2 })
    ));
    assert!(l.contains(&"two".into()).unwrap());

    let a = mgr.array(&[1.5f64, 2.5, 3.5]).unwrap();
    a.set(1, &9.0).unwrap();
    assert_eq!(a.to_vec().unwrap(), [1.5, 9.0, 3.5]);
    assert_eq!(a.len().unwrap(), 3);
    assert!(matches!(
        a.set(3, &0.0),
        Err(ManagerError::IndexOutOfRange { .. })
    ));

    let ns = mgr.namespace().unwrap();
    ns.set("x", &10).unwrap();
    ns.set("name", "job").unwrap();
    assert_eq!(ns.get::<i32>("x").unwrap(), 10);
    assert_eq!(ns.get::<String>("name").unwrap(), "job");
    assert_eq!(ns.names().unwrap(), ["name", "x"]);
    assert!(matches!(
        ns.get::<i32>("nope"),
        Err(ManagerError::KeyNotFound)
    ));
    ns.remove("x").unwrap();
    assert!(!ns.contains("x").unwrap());

    let v = mgr.value(&(1u8, "one".to_string())).unwrap();
    assert_eq!(v.swap(&(2, "two".into())).unwrap(), (1, "one".into()));
    assert_eq!(v.get().unwrap(), (2, "two".into()));
}

#[multiproc::func]
fn fill(d: DictProxy<u32, u32>, q: QueueProxy<u32>, from: u32) {
    for i in from..from + 100 {
        d.set(&i, &(i * i)).unwrap();
        q.put(&i).unwrap();
    }
}

fn proxies_travel_to_children(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let d = mgr.dict::<u32, u32>().unwrap();
    let q = mgr.queue::<u32>().unwrap();
    let kids: Vec<_> = (0..3)
        .map(|k| start(method, &fill, (d.clone(), q.clone(), k * 100)).unwrap())
        .collect();
    let mut got: Vec<u32> = (0..300).map(|_| q.get_timeout(T).unwrap()).collect();
    for k in kids {
        k.join().unwrap();
    }
    got.sort();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    assert_eq!(d.len().unwrap(), 300);
    assert_eq!(d.get(&17).unwrap(), Some(289));
    // A forked child uses the proxies it inherited.
    let d2 = d.clone();
    let p = Process::builder()
        .fork(move || d2.get(&3).unwrap().unwrap() + d2.len().unwrap() as u32)
        .unwrap();
    assert_eq!(p.join().unwrap(), 9 + 300);
}

#[multiproc::func]
fn bump(c: CounterProxy, times: u64) -> u64 {
    let mut last = 0;
    for _ in 0..times {
        last = c.incr(1).unwrap();
    }
    last
}

fn user_types_become_proxies(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let c: CounterProxy = mgr.create(Counter::default()).unwrap();
    assert_eq!(c.incr(5).unwrap(), 5);
    let kids: Vec<_> = (0..4)
        .map(|_| start(method, &bump, (c.clone(), 250)).unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!(c.get().unwrap(), 1005);
    assert_eq!(c.note("hi", &[1, 2]).unwrap(), 1);
    match c.explode() {
        Err(ManagerError::Panicked(m)) => assert!(m.contains("counter exploded"), "{m}"),
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert_eq!(c.incr(1).unwrap(), 1006, "usable after a panicking method");
    // The same object through the raw proxy: unknown method, wrong arguments.
    let raw: &Proxy = c.proxy();
    assert!(matches!(
        raw.call::<_, u64>("nope", &()),
        Err(ManagerError::UnknownMethod { .. })
    ));
    assert!(matches!(
        raw.call::<_, u64>("incr", &("not a number",)),
        Err(ManagerError::BadArguments(_))
    ));
    assert_eq!(c.get().unwrap(), 1006);
}

fn queues_block_time_out_and_join(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let q = mgr.queue_bounded::<String>(2).unwrap();
    q.put(&"a".into()).unwrap();
    q.put(&"b".into()).unwrap();
    assert!(q.full().unwrap());
    assert!(matches!(
        q.put_nowait(&"c".into()),
        Err(ManagerError::Queue(QueueError::Full))
    ));
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(&"c".into(), Duration::from_millis(200)),
        Err(ManagerError::Queue(QueueError::Full))
    ));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.qsize().unwrap(), 1);
    assert_eq!(q.get_nowait().unwrap(), "b");
    assert!(matches!(
        q.get_nowait(),
        Err(ManagerError::Queue(QueueError::Empty))
    ));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(ManagerError::Queue(QueueError::Empty))
    ));

    let jq = mgr.joinable_queue::<u32>().unwrap();
    jq.put(&1).unwrap();
    assert!(matches!(
        jq.join_timeout(Duration::from_millis(100)),
        Err(ManagerError::Sync(SyncError::Timeout(_)))
    ));
    assert_eq!(jq.get().unwrap(), 1);
    jq.task_done().unwrap();
    jq.join_timeout(T).unwrap();
    assert!(matches!(
        jq.task_done(),
        Err(ManagerError::Queue(QueueError::TooManyTaskDone))
    ));
    // A joinable queue can be looked up as a plain queue, not the other way round.
    mgr.publish("jq", &jq).unwrap();
    let as_queue: QueueProxy<u32> = mgr.lookup("jq").unwrap();
    as_queue.put(&5).unwrap();
    assert_eq!(jq.get().unwrap(), 5);
    mgr.publish("q", &q).unwrap();
    assert!(matches!(
        mgr.lookup::<JoinableQueueProxy<String>>("q"),
        Err(ManagerError::WrongKind { .. })
    ));
}

#[multiproc::func]
fn add_under_lock(lock: LockProxy, total: ValueProxy<u64>, times: u32) {
    for _ in 0..times {
        let _held = lock.lock().unwrap();
        total.set(&(total.get().unwrap() + 1)).unwrap();
    }
}

fn eight_processes_count_exactly_under_the_proxy_lock(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let lock = mgr.lock().unwrap();
    let total = mgr.value(&0u64).unwrap();
    let kids: Vec<_> = (0..8)
        .map(|_| {
            start(
                method,
                &add_under_lock,
                (lock.clone(), total.clone(), 3_000),
            )
            .unwrap()
        })
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!(total.get().unwrap(), 24_000);
}

#[multiproc::func]
fn hold_forever(lock: LockProxy, ready: multiproc::manager::EventProxy) {
    lock.acquire().unwrap();
    ready.set().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

fn locks_of_a_killed_process_are_released(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let lock = mgr.lock().unwrap();
    let ready = mgr.event().unwrap();
    let holder = start(method, &hold_forever, (lock.clone(), ready.clone())).unwrap();
    assert!(ready.wait_timeout(T).unwrap());
    assert!(!lock.try_acquire().unwrap());
    holder.kill().unwrap();
    assert!(holder.join().is_err());
    lock.acquire_timeout(T).unwrap();
    lock.release().unwrap();
    assert!(matches!(
        lock.release(),
        Err(ManagerError::Sync(SyncError::NotLocked))
    ));
}

fn rlock_condition_semaphore_event_barrier(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let r = mgr.rlock().unwrap();
    r.acquire().unwrap();
    r.acquire().unwrap();
    // Another thread is another owner: it cannot take or release it.
    let r2 = r.clone();
    std::thread::spawn(move || {
        assert!(!r2.try_acquire().unwrap());
        assert!(matches!(
            r2.release(),
            Err(ManagerError::Sync(SyncError::NotOwner))
        ));
    })
    .join()
    .unwrap();
    r.release().unwrap();
    r.release().unwrap();
    assert!(!r.locked().unwrap());

    let s = mgr.bounded_semaphore(2).unwrap();
    s.acquire().unwrap();
    assert!(s.try_acquire().unwrap());
    assert!(!s.try_acquire().unwrap());
    assert!(matches!(
        s.acquire_timeout(Duration::from_millis(50)),
        Err(ManagerError::Sync(SyncError::Timeout(_)))
    ));
    s.release(2).unwrap();
    assert!(matches!(
        s.release(1),
        Err(ManagerError::Sync(SyncError::OverReleased { bound: 2 }))
    ));
    assert_eq!(s.value().unwrap(), 2);

    let e = mgr.event().unwrap();
    assert!(!e.wait_timeout(Duration::from_millis(50)).unwrap());
    let e2 = e.clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        e2.set().unwrap();
    });
    e.wait().unwrap();
    assert!(e.is_set().unwrap());
    setter.join().unwrap();

    let c = mgr.condition().unwrap();
    assert!(matches!(c.notify(1), Err(ManagerError::Invalid(_))));
    c.acquire().unwrap();
    assert!(!c.wait_timeout(Duration::from_millis(50)).unwrap());
    let flag = mgr.value(&false).unwrap();
    let (c2, flag2) = (c.clone(), flag.clone());
    let notifier = std::thread::spawn(move || {
        let _g = c2.lock().unwrap();
        flag2.set(&true).unwrap();
        c2.notify_all().unwrap();
    });
    while !flag.get().unwrap() {
        assert!(c.wait_timeout(T).unwrap(), "notification lost");
    }
    c.release().unwrap();
    notifier.join().unwrap();

    let b = mgr.barrier(3).unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || b.wait_timeout(T).unwrap())
        })
        .collect();
    let mine = b.wait_timeout(T).unwrap();
    let mut all: Vec<usize> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    all.push(mine);
    all.sort();
    assert_eq!(all, [0, 1, 2]);
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(50)),
        Err(ManagerError::Sync(SyncError::BrokenBarrier))
    ));
    assert!(b.broken().unwrap());
    b.reset().unwrap();
    assert!(!b.broken().unwrap());
    assert_eq!(b.parties().unwrap(), 3);
    assert!(matches!(mgr.barrier(0), Err(ManagerError::Invalid(_))));
}

fn objects_live_while_proxies_exist(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let base = mgr.stats().unwrap().objects;
    let d = mgr.dict::<u8, u8>().unwrap();
    let d2 = d.clone();
    assert_eq!(mgr.stats().unwrap().objects, base + 1);
    drop(d);
    d2.set(&1, &1).unwrap();
    let id = d2.proxy().id();
    drop(d2);
    assert_eq!(
        mgr.stats().unwrap().objects,
        base,
        "freed with the last proxy"
    );
    // A published object lives without proxies until unpublished.
    let l = mgr.list::<u8>().unwrap();
    mgr.publish("keep", &l).unwrap();
    assert!(matches!(
        mgr.publish("keep", &l),
        Err(ManagerError::NameTaken(_))
    ));
    drop(l);
    assert_eq!(mgr.stats().unwrap().objects, base + 1);
    let again: multiproc::manager::ListProxy<u8> = mgr.lookup("keep").unwrap();
    mgr.unpublish("keep").unwrap();
    assert_eq!(mgr.stats().unwrap().objects, base + 1);
    drop(again);
    assert_eq!(mgr.stats().unwrap().objects, base);
    assert!(matches!(
        mgr.lookup::<DictProxy<u8, u8>>("keep"),
        Err(ManagerError::NameNotFound(_))
    ));
    let _ = id;
}

#[multiproc::func]
fn make_objects_and_wait(address: String, key: Vec<u8>, made: multiproc::Connection) {
    let mgr = Manager::connect(address.as_str(), &key).unwrap();
    let kept: Vec<_> = (0..5).map(|_| mgr.dict::<u8, u8>().unwrap()).collect();
    made.send(&kept.len()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

fn a_killed_client_releases_its_objects(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let base = mgr.stats().unwrap();
    let (rx, tx) = multiproc::pipe(false).unwrap();
    let address = mgr.address().to_string();
    let client = start(
        method,
        &make_objects_and_wait,
        (address, mgr.authkey().to_vec(), tx),
    )
    .unwrap();
    assert_eq!(rx.recv_timeout::<usize>(T).unwrap(), 5);
    assert_eq!(mgr.stats().unwrap().objects, base.objects + 5);
    client.kill().unwrap();
    let _ = client.join();
    assert!(
        eventually(T, || mgr.stats().unwrap().objects == base.objects),
        "objects of the killed client were not freed: {:?}",
        mgr.stats()
    );
    assert!(eventually(T, || mgr.stats().unwrap().sessions == base.sessions));
}

fn manager_ends_with_its_last_handle_and_shutdown_closes_proxies(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let pid = mgr.pid();
    let d = mgr.dict::<u8, u8>().unwrap();
    drop(mgr);
    d.set(&1, &2).unwrap(); // a proxy keeps the manager alive
    assert!(alive(pid));
    drop(d);
    assert!(
        eventually(T, || !alive(pid)),
        "manager {pid} outlived its owner's handles"
    );

    let mgr = manager(method);
    let pid = mgr.pid();
    let q = mgr.queue::<u8>().unwrap();
    mgr.shutdown().unwrap();
    assert!(!alive(pid));
    assert!(matches!(q.put(&1), Err(ManagerError::Closed)));
    assert!(matches!(mgr.dict::<u8, u8>(), Err(ManagerError::Closed)));
}

#[multiproc::func]
fn remote_worker(address: String, key: Vec<u8>) -> u64 {
    let mgr = Manager::connect(address.as_str(), &key).unwrap();
    let jobs: JoinableQueueProxy<Option<u64>> = mgr.lookup("jobs").unwrap();
    let results: QueueProxy<u64> = mgr.lookup("results").unwrap();
    let mut done = 0;
    while let Some(n) = jobs.get().unwrap() {
        results.put(&(n * n)).unwrap();
        jobs.task_done().unwrap();
        done += 1;
    }
    jobs.task_done().unwrap();
    done
}

fn served_manager_over_tcp(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let key = b"tcp secret".to_vec();
    assert!(matches!(
        Manager::serve("127.0.0.1:0", b""),
        Err(ManagerError::Invalid(_))
    ));
    let server = Manager::serve("127.0.0.1:0", &key).unwrap();
    let address = server.address().to_string();
    let t = Instant::now();
    assert!(matches!(
        Manager::connect(address.as_str(), b"wrong key"),
        Err(ManagerError::Connection(_))
    ));
    eprintln!("wrong key {:?}", t.elapsed());
    let mgr = Manager::connect(address.as_str(), &key).unwrap();
    let jobs = mgr
        .lookup_or_publish("jobs", |m| m.joinable_queue::<Option<u64>>())
        .unwrap();
    let results = mgr
        .lookup_or_publish("results", |m| m.queue::<u64>())
        .unwrap();
    assert!(
        matches!(
            Manager::connect(address.as_str(), b"wrong key"),
            Err(ManagerError::Connection(_))
        ),
        "a wrong key must not reuse the open session"
    );
    let again: JoinableQueueProxy<Option<u64>> =
        mgr.lookup_or_publish("jobs", |_| panic!("exists")).unwrap();
    assert_eq!(again.proxy().id(), jobs.proxy().id());
    let workers: Vec<_> = (0..3)
        .map(|_| start(method, &remote_worker, (address.clone(), key.clone())).unwrap())
        .collect();
    for n in 0..60 {
        jobs.put(&Some(n)).unwrap();
    }
    jobs.join_timeout(T).unwrap();
    for _ in 0..3 {
        jobs.put(&None).unwrap();
    }
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(done, 60);
    let mut squares: Vec<u64> = (0..60).map(|_| results.get_timeout(T).unwrap()).collect();
    squares.sort();
    assert_eq!(squares, (0..60).map(|n| n * n).collect::<Vec<_>>());
    // Any authorized client may stop it; the server's wait then returns.
    let t = Instant::now();
    mgr.shutdown().unwrap();
    eprintln!("shutdown {:?}", t.elapsed());
    assert!(server.wait_timeout(T));
    eprintln!("wait {:?}", t.elapsed());
    assert!(matches!(jobs.qsize(), Err(ManagerError::Closed)));
    assert!(Manager::connect(address.as_str(), &key).is_err());
}

fn hostile_and_broken_clients_do_not_hurt_the_server(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let d = mgr.dict::<u8, u8>().unwrap();
    d.set(&1, &1).unwrap();
    let key = mgr.authkey().to_vec();
    // No key at all: all the client gets is the challenge, then the door.
    let c = multiproc::Client::connect(mgr.address(), None).unwrap();
    assert!(c.recv_bytes_timeout(T).unwrap().starts_with(b"#CHALLENGE#"));
    c.send_bytes(b"no idea").unwrap();
    assert_eq!(c.recv_bytes_timeout(T).unwrap(), b"#FAILURE#");
    assert!(c.recv_bytes_timeout(T).is_err());
    // Garbage instead of a hello: refused as CPython's server refuses a bad request (a
    // pickled `#TRACEBACK`), then the connection is closed.
    let c = multiproc::Client::connect(mgr.address(), Some(&key)).unwrap();
    c.send_bytes(b"\xff\xff\xff garbage").unwrap();
    let refusal = c.recv_bytes_timeout(T).unwrap();
    assert!(
        refusal.windows(10).any(|w| w == b"#TRACEBACK"),
        "{refusal:?}"
    );
    assert!(c.recv_bytes_timeout(T).is_err());
    // A frame announcing 2 GiB: closed without allocating it.
    let c = multiproc::Client::connect(mgr.address(), Some(&key)).unwrap();
    nix::unistd::write(std::os::fd::AsFd::as_fd(&c), &i32::MAX.to_be_bytes()).unwrap();
    assert!(c.recv_bytes_timeout(T).is_err());
    // A client that disconnects in the middle of a blocking call.
    let q = mgr.queue::<u8>().unwrap();
    let before = mgr.stats().unwrap().connections;
    let q2 = q.clone();
    let p = Process::builder()
        .fork(move || {
            let _ = q2.get();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.kill().unwrap();
    let _ = p.join();
    assert!(eventually(T, || mgr.stats().unwrap().connections <= before));
    q.put(&7).unwrap();
    assert_eq!(
        q.get_timeout(T).unwrap(),
        7,
        "the item was not taken by the dead call"
    );
    // Oversized requests are refused on the client.
    let big = serde_bytes::ByteBuf::from(vec![0u8; 257 << 20]);
    let l = mgr.list::<serde_bytes::ByteBuf>().unwrap();
    assert!(matches!(
        l.push(&big),
        Err(ManagerError::MessageTooLarge { .. })
    ));
    // Unknown objects.
    drop(l);
    assert_eq!(d.get(&1).unwrap(), Some(1), "the server is fine");
}

fn unknown_objects_are_typed_errors(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let d = mgr.dict::<u8, u8>().unwrap();
    let raw = d.proxy().clone();
    // Serialize a proxy, then free the object: receiving it fails cleanly.
    let bytes = postcard::to_stdvec(&raw).unwrap();
    drop(raw);
    drop(d);
    let stats = mgr.stats().unwrap();
    assert_eq!(
        stats.objects, 1,
        "the sent proxy pins the object in this process"
    );
    let back: Proxy = postcard::from_bytes(&bytes).unwrap();
    assert!(back.call::<_, u64>("len", &()).is_ok());
    mgr.shutdown().unwrap();
    assert!(postcard::from_bytes::<Proxy>(&bytes).is_err());
}

fn a_slow_call_stalls_only_its_own_object(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let slow: CounterProxy = mgr.create(Counter::default()).unwrap();
    let other: CounterProxy = mgr.create(Counter::default()).unwrap();
    let d = mgr.dict::<u8, u8>().unwrap();
    let s2 = slow.clone();
    let busy = std::thread::spawn(move || s2.slow(1500).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    for i in 0..50 {
        other.incr(1).unwrap();
        d.set(&i, &i).unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "calls on other objects waited for the slow one: {:?}",
        t.elapsed()
    );
    // Calls on the same object wait their turn (methods of one object run one at a time).
    let t = Instant::now();
    assert_eq!(slow.incr(1).unwrap(), 1);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(busy.join().unwrap(), 0);
}

/// A call the server has carried out gets its answer even when another client stops the
/// server right after: here the worker's last `task_done` lets the submitter's `join`
/// return and shut the server down (the `remote_queue` example's worker got `Closed` from
/// that `task_done` in CI: the stopping server cut the connection before the reply).
/// (In this process: no start method involved.)
#[multiproc::test]
fn a_call_carried_out_before_a_shutdown_gets_its_answer() {
    let key = b"answers before shutdown".to_vec();
    for round in 0..300 {
        let server = Manager::serve("127.0.0.1:0", &key).unwrap();
        let mgr = Manager::connect(server.address().to_string().as_str(), &key).unwrap();
        let jobs = mgr.joinable_queue::<u8>().unwrap();
        jobs.put(&1).unwrap();
        assert_eq!(jobs.get().unwrap(), 1);
        let worker_jobs = jobs.clone();
        let worker = std::thread::spawn(move || worker_jobs.task_done());
        jobs.join_timeout(T).unwrap();
        mgr.shutdown().unwrap();
        let done = worker.join().unwrap();
        assert!(
            done.is_ok(),
            "round {round}: the task_done the join saw came back as {done:?}"
        );
        assert!(server.wait_timeout(T));
    }
    // A call still waiting when the server stops gives up with `Closed` (not a time-out).
    let server = Manager::serve("127.0.0.1:0", &key).unwrap();
    let mgr = Manager::connect(server.address().to_string().as_str(), &key).unwrap();
    let q = mgr.queue::<u8>().unwrap();
    let waiting_q = q.clone();
    let waiting = std::thread::spawn(move || waiting_q.get_timeout(T));
    std::thread::sleep(Duration::from_millis(100));
    mgr.shutdown().unwrap();
    assert!(matches!(waiting.join().unwrap(), Err(ManagerError::Closed)));
    assert!(server.wait_timeout(T));
}

/// The first request on a manager connection, encoded as the client library encodes it.
#[derive(Serialize)]
enum WireRequest {
    Hello { session: u128 },
}

fn frames_announced_but_not_sent_cost_the_server_only_what_arrives(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let mgr = manager(method);
    let key = mgr.authkey().to_vec();
    // Half of the connections are yet to say hello (the server waits for that with a time
    // limit), half are in a session, between requests.
    let conns: Vec<multiproc::Connection> = (0..8u128)
        .map(|i| {
            let c = multiproc::Client::connect(mgr.address(), Some(&key)).unwrap();
            if i % 2 == 1 {
                let hello = WireRequest::Hello {
                    session: 0x5e55_1000 + i,
                };
                c.send_bytes(&postcard::to_stdvec(&hello).unwrap()).unwrap();
                c.recv_bytes_timeout(T).unwrap();
            }
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // every connection thread waits
    let before = common::rss_bytes(mgr.pid());
    for c in &conns {
        let fd = std::os::fd::AsFd::as_fd(c);
        nix::unistd::write(fd, &(200i32 << 20).to_be_bytes()).unwrap();
        nix::unistd::write(fd, &[7u8; 1024]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // the server takes the 1 KiB in
    let growth = common::rss_bytes(mgr.pid()).saturating_sub(before);
    drop(conns);
    eprintln!("the server grew by {} KiB", growth >> 10);
    assert!(
        growth < 2 << 20,
        "8 frames announced as 200 MiB, 1 KiB each sent, took {growth} bytes"
    );
    let d = mgr.dict::<u8, u8>().unwrap();
    d.set(&1, &1).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1), "the server is fine");
}

/// (In this process: no start method involved.)
#[multiproc::test]
fn silent_connections_do_not_hold_up_a_served_manager() {
    let _leaks = LeakCheck::new();
    let key = b"busy server".to_vec();
    let server = Manager::serve("127.0.0.1:0", &key).unwrap();
    let address = server.address().to_string();
    let silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(address.as_str()).unwrap())
        .collect();
    let t = Instant::now();
    let mgr = Manager::connect(address.as_str(), &key).unwrap();
    let d = mgr.dict::<u8, u8>().unwrap();
    d.set(&1, &2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(2));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(silent);
    mgr.shutdown().unwrap();
    assert!(server.wait_timeout(T));
}
