//! The cluster pool against a real `redis-server` (started here on a free loopback port),
//! with workers started as separate commands: this test binary re-run in worker mode.
#![cfg(target_os = "linux")]

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc_cluster::{ClusterError, ClusterPool, WorkerOptions, status};

const KEY: &[u8] = b"cluster test key";
const T: Duration = Duration::from_secs(60);

#[multiproc::func]
fn square(x: u64) -> u64 {
    x * x
}

/// Records its worker's pid in `dir`, then takes `millis`.
#[multiproc::func]
fn slow_square(x: u64, dir: String, millis: u64) -> u64 {
    // The worker that started this pool process (its logical parent, also under the
    // forkserver).
    let worker = multiproc::parent_process().map(|p| p.pid()).unwrap_or(0);
    let _ = std::fs::write(PathBuf::from(dir).join(worker.to_string()), b"");
    std::thread::sleep(Duration::from_millis(millis));
    x * x
}

#[multiproc::func]
fn crash(_x: u64) -> u64 {
    std::process::abort()
}

#[multiproc::func]
fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

/// Worker mode of this binary: `cargo test -- --ignored --exact worker_entry` with the
/// worker's arguments in `MP_TEST_WORKER`.
#[test]
#[ignore = "run by the other tests as a worker process"]
fn worker_entry() {
    let _guard = multiproc::__private::MainGuard::new();
    let Ok(args) = std::env::var("MP_TEST_WORKER") else {
        return;
    };
    let args: Vec<String> = args.split(' ').map(String::from).collect();
    let opts = WorkerOptions::from_args(&args).unwrap().unwrap();
    multiproc_cluster::run_worker(&opts, None).unwrap();
}

/// A `redis-server` on a free loopback port, stopped when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is missing under CI=true (scripts/test installs it)"
        );
        eprintln!("redis-server not installed: test skipped");
    }
    found
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { child: None, port };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = redis::Client::open(self.url().as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return;
            }
            assert!(Instant::now() < end, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker command; killed and reaped when dropped.
struct Worker(Child);

impl Worker {
    fn start(url: &str, queue: &str, extra: &str) -> Worker {
        let args = format!("--mp-worker {url} --queue {queue} --processes 2 {extra}");
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "worker_entry", "--nocapture"])
            .env("MP_TEST_WORKER", args.trim())
            .env("MULTIPROC_AUTHKEY", std::str::from_utf8(KEY).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[multiproc::test]
fn map_over_three_workers_started_as_commands() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let _workers: Vec<Worker> = (0..3).map(|_| Worker::start(&url, "sq", "")).collect();
    let pool = ClusterPool::connect(&url, "sq", KEY).unwrap();
    wait_for("3 workers", || {
        status(&url, "sq").is_ok_and(|s| s.workers.len() == 3)
    });
    let out = pool.map(&square, 0..1000u64).unwrap();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(pool.apply(&square, 12).unwrap(), 144);
    let h = pool.apply_async(&square, 7).unwrap();
    assert_eq!(h.get_timeout(T).unwrap(), 49);
    let ordered: Vec<u64> = pool
        .imap(&square, 0..100u64)
        .chunksize(7)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ordered, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    let mut any: Vec<u64> = pool
        .imap_unordered(&square, 0..100u64)
        .collect::<Result<_, _>>()
        .unwrap();
    any.sort();
    assert_eq!(any, ordered);
    // 10,000 small tasks, chunked.
    let big = pool.map(&square, 0..10_000u64).unwrap();
    assert_eq!(big.iter().sum::<u64>(), (0..10_000u64).map(|x| x * x).sum());
    // Failures are per item and typed.
    let each = pool.map_async(&boom, 0..6u64).unwrap().get_each();
    assert!(matches!(&each[3], Err(ClusterError::Panicked(m)) if m.contains("three")));
    assert_eq!(each.iter().filter(|r| r.is_ok()).count(), 5);
    let st = status(&url, "sq").unwrap();
    assert_eq!(st.workers.len(), 3);
    assert_eq!((st.waiting, st.in_flight), (0, 0));
    wait_for("heartbeats with the counts", || {
        status(&url, "sq").is_ok_and(|s| s.workers.iter().map(|w| w.done).sum::<u64>() > 0)
    });
    pool.close();
    assert!(matches!(pool.apply(&square, 1), Err(ClusterError::Closed)));
}

#[multiproc::test]
fn a_sigkilled_worker_loses_no_task_and_the_result_comes_once() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("mp-cluster-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = Worker::start(&url, "kill", "--lease-ms 1000");
    let pool = ClusterPool::connect(&url, "kill", KEY).unwrap();
    wait_for("the first worker", || {
        status(&url, "kill").is_ok_and(|s| s.workers.len() == 1)
    });
    let h = pool
        .apply_async(&slow_square, (9, dir.to_string_lossy().into_owned(), 1500))
        .unwrap();
    wait_for("the task to start", || {
        std::fs::read_dir(&dir).unwrap().next().is_some()
    });
    assert!(dir.join(first.pid().to_string()).exists());
    drop(first); // SIGKILL mid-task
    let second = Worker::start(&url, "kill", "--lease-ms 1000");
    assert_eq!(h.get_timeout(T).unwrap(), 81);
    assert!(
        dir.join(second.pid().to_string()).exists(),
        "taken over by the second"
    );
    // Exactly one result, no matter how many runs.
    assert!(pool.join_timeout(Duration::from_secs(5)));
    let st = status(&url, "kill").unwrap();
    assert_eq!((st.waiting, st.in_flight), (0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[multiproc::test]
fn a_task_that_always_crashes_is_dead_lettered() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let _w = Worker::start(&url, "crash", "--max-tries 2");
    let pool = ClusterPool::connect(&url, "crash", KEY).unwrap();
    match pool.apply_async(&crash, 1).unwrap().get_timeout(T) {
        Err(ClusterError::DeadLetter { tries, .. }) => assert_eq!(tries, 2),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(status(&url, "crash").unwrap().dead, 1);
    // The worker goes on serving.
    assert_eq!(pool.apply(&square, 5).unwrap(), 25);
}

#[multiproc::test]
fn task_timeout_kills_the_item() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let _w = Worker::start(&url, "slow", "");
    let pool = ClusterPool::builder(&url, "slow", KEY)
        .task_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    let dir = std::env::temp_dir().to_string_lossy().into_owned();
    assert!(matches!(
        pool.apply(&slow_square, (2, dir, 5000)),
        Err(ClusterError::Timeout(_))
    ));
    assert_eq!(pool.apply(&square, 3).unwrap(), 9);
}

#[multiproc::test]
fn workers_and_clients_reconnect_after_a_broker_restart() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let url = redis.url();
    let _w = Worker::start(&url, "rs", "");
    let pool = ClusterPool::connect(&url, "rs", KEY).unwrap();
    assert_eq!(pool.map(&square, 0..10u64).unwrap()[9], 81);
    redis.restart(); // everything in it is gone: stream, group, heartbeats
    let end = Instant::now() + T;
    loop {
        match pool
            .apply_async(&square, 6)
            .and_then(|h| h.get_timeout(Duration::from_secs(3)))
        {
            Ok(v) => {
                assert_eq!(v, 36);
                break;
            }
            Err(e) => assert!(Instant::now() < end, "no recovery: {e}"),
        }
    }
    assert_eq!(pool.map(&square, 0..100u64).unwrap()[10], 100);
}

#[multiproc::test]
fn tampered_and_unsigned_tasks_are_rejected() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let _w = Worker::start(&url, "sec", "");
    let pool = ClusterPool::connect(&url, "sec", KEY).unwrap();
    assert_eq!(pool.apply(&square, 2).unwrap(), 4);
    let mut con = redis.con();
    // Unsigned, and signed with another key.
    let _: String = redis::cmd("XADD")
        .arg("mp:{sec}:tasks")
        .arg("*")
        .arg("p")
        .arg("rm -rf /")
        .query(&mut con)
        .unwrap();
    let bad = ClusterPool::connect(&url, "sec", b"wrong key").unwrap();
    assert!(matches!(
        bad.apply_async(&square, 3)
            .unwrap()
            .get_timeout(Duration::from_secs(2)),
        Err(ClusterError::WaitTimeout(_))
    ));
    wait_for("two rejections", || {
        status(&url, "sec").is_ok_and(|s| s.dead == 2 && s.workers.iter().any(|w| w.rejected == 2))
    });
    // The worker is fine.
    assert_eq!(pool.apply(&square, 4).unwrap(), 16);
}

#[test]
fn the_cluster_primes_example_with_workers_as_commands() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let bin = common::example("cluster_primes");
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            Worker(
                Command::new(&bin)
                    .args(["--mp-worker", &url, "--queue", "ex", "--processes", "1"])
                    .env("MULTIPROC_AUTHKEY", "example key")
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    wait_for("3 workers", || {
        status(&url, "ex").is_ok_and(|s| s.workers.len() == 3)
    });
    let out = Command::new(&bin)
        .args(["--redis", &url, "--queue", "ex", "--limit", "200000"])
        .env("MULTIPROC_AUTHKEY", "example key")
        .output()
        .unwrap();
    let text = common::stdout_of(out);
    assert!(text.starts_with("17984 primes below 200000"), "{text}");
    // SIGTERM stops a worker cleanly: it leaves the worker set.
    for w in &workers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for mut w in workers {
        let end = Instant::now() + T;
        let status = loop {
            if let Some(s) = w.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "a worker ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success());
    }
    assert!(status(&url, "ex").unwrap().workers.is_empty());
}

#[multiproc::test]
fn redis_auth_and_acl_users_come_with_the_url() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mut admin = redis.con();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("mp")
        .arg("on")
        .arg(">mp-secret")
        .arg("~mp:*")
        .arg("+@all")
        .query(&mut admin)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("admin-secret")
        .query(&mut admin)
        .unwrap();
    let port = redis.port;
    let user_url = format!("redis://mp:mp-secret@127.0.0.1:{port}/");
    let _w = Worker::start(&user_url, "acl", "");
    let pool = ClusterPool::connect(&user_url, "acl", KEY).unwrap();
    assert_eq!(pool.apply(&square, 11).unwrap(), 121);
    for bad in [
        format!("redis://127.0.0.1:{port}/"),
        format!("redis://mp:wrong@127.0.0.1:{port}/"),
    ] {
        assert!(matches!(
            ClusterPool::connect(&bad, "acl", KEY),
            Err(ClusterError::Redis(_))
        ));
    }
}
