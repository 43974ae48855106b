//! The cluster pool against a real `redis-server` (started here on a free loopback port),
//! with workers started as separate commands: this test binary re-run in worker mode.
#![cfg(target_os = "linux")]

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;
#[path = "../../multiproc/tests/executors/mod.rs"]
mod executors;

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

/// Appends `x` to the file `log` (one line per run), then takes `millis`.
#[multiproc::func]
fn logged_square(x: u64, log: String, millis: u64) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    writeln!(f, "{x}").unwrap();
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

/// A `redis-server` on a free loopback port (or in a network namespace), stopped when
/// dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    /// Its address.
    host: String,
    /// Its network namespace, if not this one's.
    netns: Option<String>,
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
        let mut r = Redis {
            child: None,
            port,
            host: "127.0.0.1".into(),
            netns: None,
        };
        r.restart();
        r
    }

    /// A server on host `host` of `net`, waited for from host `from`.
    fn start_in(net: &Net, host: &str, from: &str) -> Redis {
        let mut r = Redis {
            child: None,
            port: 6379,
            host: net.addr(host),
            netns: Some(net.ns(host)),
        };
        r.spawn();
        let url = r.url();
        net.within(from, Duration::from_secs(15), move || wait_ready(&url));
        r
    }

    fn url(&self) -> String {
        format!("redis://{}:{}/", self.host, self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = in_netns(self.netns.as_deref(), "redis-server");
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", &self.host])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
        wait_ready(&self.url());
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

/// Waits for the Redis at `url` to answer.
fn wait_ready(url: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        if ok {
            return;
        }
        assert!(Instant::now() < end, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program` as a command, run in network namespace `netns` if given.
fn in_netns(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
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
        Self::start_in(None, url, queue, extra)
    }

    /// A worker in network namespace `netns` (if given).
    fn start_in(netns: Option<&str>, url: &str, queue: &str, extra: &str) -> Worker {
        let args = format!("--mp-worker {url} --queue {queue} --processes 2 {extra}");
        let child = in_netns(netns, std::env::current_exe().unwrap())
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

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_within(T, what, cond);
}

fn wait_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[multiproc::test]
fn cluster_results_are_awaited_in_a_tokio_program() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let _worker = Worker::start(&url, "aw", "");
    let pool = ClusterPool::connect(&url, "aw", KEY).unwrap();
    for multi_thread in [false, true] {
        let rt = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(async {
            // No thread per await: the handles are the core's Futures, woken by the reply.
            let tasks: Vec<_> = (0..50u64)
                .map(|x| tokio::spawn(pool.apply_async(&square, x).unwrap()))
                .collect();
            for (x, t) in tasks.into_iter().enumerate() {
                let got = tokio::time::timeout(T, t).await.expect("in time");
                assert_eq!(got.unwrap().unwrap(), (x * x) as u64);
            }
            let all = pool.map_async(&square, 0..100u64).unwrap();
            let all = tokio::time::timeout(T, all)
                .await
                .expect("in time")
                .unwrap();
            assert_eq!(all[99], 99 * 99);
        });
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
    // The same entry taken over is no replay.
    assert_eq!((pool.rejected(), st.dead), (0, 0));
    assert_eq!(workers_rejected(&url, "kill"), 0);
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
        let err = ClusterPool::connect(&bad, "acl", KEY).unwrap_err();
        // Redis's own error is kept as the cause: its kind tells a refused AUTH apart.
        let ClusterError::Broker(cause) = &err else {
            panic!("{err:?}")
        };
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
        let cause = cause
            .downcast_ref::<redis::RedisError>()
            .expect("Redis's own error");
        assert!(
            cause.code() == Some("NOAUTH")
                || cause.code() == Some("WRONGPASS")
                || cause.kind() == redis::ErrorKind::AuthenticationFailed,
            "{cause:?}"
        );
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mp-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines in `path` (0 when it does not exist).
fn lines(path: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// The fields of a stream entry.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of stream `key`: (id, fields).
fn stream(con: &mut redis::Connection, key: &str) -> Vec<(String, Fields)> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    let bytes = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => b.clone(),
        other => panic!("not a string: {other:?}"),
    };
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let redis::Value::Array(pair) = e else {
                panic!("not an entry: {e:?}")
            };
            let redis::Value::Array(fields) = &pair[1] else {
                panic!("no fields: {e:?}")
            };
            let fields = fields
                .chunks(2)
                .map(|kv| (bytes(&kv[0]), bytes(&kv[1])))
                .collect();
            (String::from_utf8(bytes(&pair[0])).unwrap(), fields)
        })
        .collect()
}

/// Adds an entry with `fields` to stream `key`, as someone with write access to Redis can.
fn xadd(con: &mut redis::Connection, key: &str, fields: &Fields) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(k.as_slice()).arg(v.as_slice());
    }
    let _: String = cmd.query(con).unwrap();
}

/// Waits for the one task entry of `queue` and returns a copy of its fields.
fn capture_task(con: &mut redis::Connection, queue: &str) -> Fields {
    let key = format!("mp:{{{queue}}}:tasks");
    let mut got = Vec::new();
    wait_within(Duration::from_secs(10), "the task entry", || {
        got = stream(con, &key);
        !got.is_empty()
    });
    assert_eq!(got.len(), 1, "one task entry");
    got.remove(0).1
}

/// The reasons of the dead-letter entries of `queue`.
fn dead_reasons(con: &mut redis::Connection, queue: &str) -> Vec<String> {
    stream(con, &format!("mp:{{{queue}}}:dead"))
        .into_iter()
        .filter_map(|(_, f)| {
            f.into_iter()
                .find(|(k, _)| k == b"reason")
                .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
        })
        .collect()
}

/// Workers' rejections, summed over the heartbeats.
fn workers_rejected(url: &str, queue: &str) -> u64 {
    status(url, queue).map_or(0, |s| s.workers.iter().map(|w| w.rejected).sum())
}

#[multiproc::test]
fn a_task_entry_replayed_while_its_original_runs_is_refused() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let scratch = Scratch::new("replay-pending");
    let log = scratch.path("runs");
    let _w = Worker::start(&url, "rp", "");
    let pool = ClusterPool::connect(&url, "rp", KEY).unwrap();
    let h = pool
        .apply_async(&logged_square, (3, log.clone(), 1500))
        .unwrap();
    let mut con = redis.con();
    let copy = capture_task(&mut con, "rp");
    wait_within(Duration::from_secs(10), "the original to start", || {
        lines(&log) == 1
    });
    // The worker has a second process free: the copy is taken at once.
    xadd(&mut con, "mp:{rp}:tasks", &copy);
    assert_eq!(h.get_timeout(T).unwrap(), 9);
    wait_within(Duration::from_secs(10), "the replay refused", || {
        workers_rejected(&url, "rp") == 1 && pool.rejected() == 1
    });
    let reasons = dead_reasons(&mut con, "rp");
    assert!(
        reasons.len() == 1 && reasons[0].contains("replay"),
        "{reasons:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&log), 1, "the task ran once");
    assert_eq!(pool.duplicates(), 0);
}

#[multiproc::test]
fn a_task_entry_replayed_after_it_completed_is_refused() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let scratch = Scratch::new("replay-done");
    let log = scratch.path("runs");
    let _w = Worker::start(&url, "rd", "");
    let _other = Worker::start(&url, "rd-other", "");
    let pool = ClusterPool::connect(&url, "rd", KEY).unwrap();
    let h = pool
        .apply_async(&logged_square, (4, log.clone(), 300))
        .unwrap();
    let mut con = redis.con();
    let copy = capture_task(&mut con, "rd");
    assert_eq!(h.get_timeout(T).unwrap(), 16);
    for _ in 0..3 {
        xadd(&mut con, "mp:{rd}:tasks", &copy);
    }
    // Nor does it run on another queue.
    xadd(&mut con, "mp:{rd-other}:tasks", &copy);
    wait_within(Duration::from_secs(10), "three replays refused", || {
        workers_rejected(&url, "rd") == 3 && pool.rejected() == 3
    });
    assert_eq!(dead_reasons(&mut con, "rd").len(), 3);
    wait_within(Duration::from_secs(10), "the other queue's refusal", || {
        workers_rejected(&url, "rd-other") == 1
    });
    let other = dead_reasons(&mut con, "rd-other");
    assert!(other[0].contains("addressed to queue `rd`"), "{other:?}");
    // The worker serves on; the task never ran again.
    assert_eq!(pool.apply(&square, 5).unwrap(), 25);
    assert_eq!(lines(&log), 1, "the task ran once");
}

#[multiproc::test]
fn replies_copied_into_another_clients_stream_are_rejected_and_counted() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let scratch = Scratch::new("wrong-client");
    let _w = Worker::start(&url, "wc", "");
    let a = ClusterPool::connect(&url, "wc", KEY).unwrap();
    let b = ClusterPool::connect(&url, "wc", KEY).unwrap();
    let a_replies = format!("mp:{{wc}}:replies:{}", a.id());
    let b_replies = format!("mp:{{wc}}:replies:{}", b.id());
    // Task 1 of each client; B's runs long.
    let hb = b
        .apply_async(&logged_square, (7, scratch.path("b"), 1500))
        .unwrap();
    let ha = a
        .apply_async(&logged_square, (55, scratch.path("a"), 200))
        .unwrap();
    drop(ha);
    drop(a); // A stops reading: its reply stays on its stream.
    let mut con = redis.con();
    let mut a_reply = Vec::new();
    wait_within(Duration::from_secs(10), "A's reply", || {
        a_reply = stream(&mut con, &a_replies);
        !a_reply.is_empty()
    });
    for (_, fields) in &a_reply {
        xadd(&mut con, &b_replies, fields);
    }
    assert_eq!(hb.get_timeout(T).unwrap(), 49, "B's own result");
    assert_eq!(b.rejected(), a_reply.len() as u64);
    assert_eq!(b.duplicates(), 0);
}

#[multiproc::test]
fn a_broker_restarted_empty_mid_map_loses_no_result() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let url = redis.url();
    let _w = Worker::start(&url, "lost", "--lease-ms 1000");
    let pool = ClusterPool::builder(&url, "lost", KEY)
        .broker_check(Duration::from_millis(300))
        .connect()
        .unwrap();
    let scratch = Scratch::new("lost");
    let log = scratch.path("runs");
    let items: Vec<(u64, String, u64)> = (0..300).map(|x| (x, log.clone(), 10)).collect();
    let pending = pool.map_async(&logged_square, items).unwrap();
    wait_within(Duration::from_secs(10), "the map under way", || {
        lines(&log) >= 20
    });
    // SIGKILL, and a new server without the data (no persistence).
    redis.restart();
    // `get()` without a limit ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(pending.get());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("map().get() did not return after the broker lost its tasks")
        .unwrap();
    assert_eq!(out, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    assert!(
        pool.resubmitted() > 0,
        "the lost tasks were submitted again"
    );
    assert!(pool.join_timeout(Duration::from_secs(5)));
}

#[multiproc::test]
fn a_task_entry_replayed_after_its_expiry_is_refused() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let scratch = Scratch::new("replay-expired");
    let log = scratch.path("runs");
    let _w = Worker::start(&url, "re", "");
    let pool = ClusterPool::builder(&url, "re", KEY)
        .task_expiry(Duration::from_secs(1))
        .connect()
        .unwrap();
    let h = pool
        .apply_async(&logged_square, (6, log.clone(), 300))
        .unwrap();
    let mut con = redis.con();
    let copy = capture_task(&mut con, "re");
    assert_eq!(h.get_timeout(T).unwrap(), 36);
    // Much later: past the expiry no entry of the task starts.
    std::thread::sleep(Duration::from_millis(1500));
    xadd(&mut con, "mp:{re}:tasks", &copy);
    wait_within(Duration::from_secs(10), "the late replay refused", || {
        workers_rejected(&url, "re") == 1 && pool.rejected() == 1
    });
    let reasons = dead_reasons(&mut con, "re");
    assert!(reasons[0].contains("expired"), "{reasons:?}");
    assert_eq!(pool.apply(&square, 5).unwrap(), 25);
    assert_eq!(lines(&log), 1, "the task ran once");
}

#[multiproc::test]
fn a_task_no_worker_starts_within_its_expiry_fails_with_expired() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let url = redis.url();
    let scratch = Scratch::new("expired");
    let log = scratch.path("runs");
    let pool = ClusterPool::builder(&url, "ex1", KEY)
        .task_expiry(Duration::from_millis(500))
        .broker_check(Duration::from_millis(200))
        .connect()
        .unwrap();
    let h = pool
        .apply_async(&logged_square, (2, log.clone(), 0))
        .unwrap();
    // No worker: `get()` without a limit still ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.get());
    });
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("get() ended");
    assert!(matches!(got, Err(ClusterError::Expired(_))), "{got:?}");
    // A worker that comes later refuses the entry.
    let _w = Worker::start(&url, "ex1", "");
    wait_within(Duration::from_secs(10), "the expired entry refused", || {
        workers_rejected(&url, "ex1") == 1
    });
    assert_eq!(lines(&log), 0, "the task never ran");
    assert_eq!(pool.apply(&square, 3).unwrap(), 9);
}

#[multiproc::test]
fn waiting_tasks_fail_with_broker_lost_when_the_broker_stays_away() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let url = redis.url();
    let pool = ClusterPool::builder(&url, "gone", KEY)
        .broker_check(Duration::from_millis(200))
        .broker_timeout(Duration::from_secs(1))
        .connect()
        .unwrap();
    let h = pool.map_async(&square, 0..10u64).unwrap();
    redis.stop();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.get());
    });
    let got = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("get() ended");
    assert!(matches!(got, Err(ClusterError::BrokerLost(_))), "{got:?}");
    assert!(pool.join_timeout(Duration::from_secs(1)));
}

/// The prefix of the network namespaces of these tests: `mpcl-PID-HOST`.
const NETNS_PREFIX: &str = "mpcl-";

/// Whether network namespaces can be made here (root, `ip`); under CI=true they must.
fn netns_available() -> bool {
    // The effective uid: the second field of `Uid:` in /proc/self/status.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uid = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uid.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false);
    let ok = root
        && Command::new("ip")
            .args(["netns", "list"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "network namespaces need root and `ip` (iproute2) under CI=true"
        );
        eprintln!("not root, or no `ip`: test skipped");
    }
    ok
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Machines simulated on this one: each host a network namespace with one interface,
/// `eth0` at 10.213.0.N/24, cabled to a bridge in a namespace of its own (the switch), so
/// no traffic and no interface of the tests touches the machine's own network. Everything
/// is deleted when dropped, and what a crashed run left (namespaces of a process that is
/// gone) when made.
struct Net {
    prefix: String,
    hosts: Vec<String>,
}

impl Net {
    fn new(hosts: &[&str]) -> Net {
        Self::remove_leftovers();
        // Made before the namespaces: a failure half way still deletes what was made.
        let net = Net {
            prefix: format!("{NETNS_PREFIX}{}-", std::process::id()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let sw = net.ns("switch");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for h in hosts {
            let ns = net.ns(h);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // The cable: `h` on the switch, `eth0` on the host.
            ip(&[
                "-n", &sw, "link", "add", h, "type", "veth", "peer", "name", "eth0",
            ]);
            ip(&["-n", &sw, "link", "set", "eth0", "netns", &ns]);
            ip(&["-n", &sw, "link", "set", h, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", h, "up"]);
            let cidr = format!("{}/24", net.addr(h));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// Deletes the namespaces of earlier runs whose process is gone.
    fn remove_leftovers() {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !common::alive(pid) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn addr(&self, host: &str) -> String {
        let n = self.hosts.iter().position(|h| h == host).unwrap() + 1;
        format!("10.213.0.{n}")
    }

    /// The switch, to pull cables out of.
    fn switch(&self) -> Switch {
        Switch(self.ns("switch"))
    }

    /// Runs `f` on a thread of its own in the network namespace of `host`, waiting at most
    /// `limit` (a panic in `f` is this one).
    fn within<T: Send + 'static>(
        &self,
        host: &str,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns(host))).unwrap();
        let t = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        });
        let end = Instant::now() + limit;
        while !t.is_finished() {
            assert!(Instant::now() < end, "no end within {limit:?} on {host}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// The switch of a [`Net`]: its namespace.
struct Switch(String);

impl Switch {
    /// Pulls the cable of `host` out of the switch.
    fn cut(&self, host: &str) {
        ip(&["-n", &self.0, "link", "set", host, "down"]);
    }

    /// Plugs it back.
    fn heal(&self, host: &str) {
        ip(&["-n", &self.0, "link", "set", host, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.iter().map(String::as_str).chain(["switch"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Appends `x PID start` to the file `log` (PID: the worker running it), takes `millis`,
/// then appends `x PID end`. Each line is one `write` of an `O_APPEND` file, so the lines
/// of processes running at once never interleave (`writeln!` on a `File` writes each
/// formatted piece with a system call of its own, and lines of two hosts came out mixed).
#[multiproc::func]
fn hosted_square(x: u64, log: String, millis: u64) -> u64 {
    use std::io::Write;
    let worker = multiproc::parent_process().map(|p| p.pid()).unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{x} {worker} start\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(millis));
    f.write_all(format!("{x} {worker} end\n").as_bytes())
        .unwrap();
    x * x
}

/// What `hosted_square` logged: (item, worker pid, whether the line is an end).
fn runs(log: &str) -> Vec<(u64, u32, bool)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let parsed = (|| {
                let x = w.next()?.parse().ok()?;
                let pid = w.next()?.parse().ok()?;
                let end = match w.next()? {
                    "start" => false,
                    "end" => true,
                    _ => return None,
                };
                Some((x, pid, end))
            })();
            parsed.unwrap_or_else(|| panic!("a mangled log line: {l:?}"))
        })
        .collect()
}

/// The items worker `pid` started and had not finished, by the log `runs`.
fn in_flight(runs: &[(u64, u32, bool)], pid: u32) -> Vec<u64> {
    let started = runs.iter().filter(|r| r.1 == pid && !r.2).map(|r| r.0);
    started
        .filter(|x| !runs.contains(&(*x, pid, true)))
        .collect()
}

#[multiproc::test]
fn a_worker_host_cut_off_mid_map_is_taken_over_and_its_late_replies_are_duplicates() {
    if !redis_available() || !netns_available() {
        return;
    }
    // Declared first, dropped last: the processes in the namespaces end before them.
    let net = Net::new(&["broker", "host1", "host2", "head"]);
    let redis = Redis::start_in(&net, "broker", "head");
    let url = redis.url();
    let scratch = Scratch::new("netns");
    let log = scratch.path("runs");
    let w1 = Worker::start_in(Some(&net.ns("host1")), &url, "hosts", "--lease-ms 1000");
    let w2 = Worker::start_in(Some(&net.ns("host2")), &url, "hosts", "--lease-ms 1000");
    let (pid1, pid2) = (w1.pid(), w2.pid());
    let switch = net.switch();
    let (dups, late) = net.within("head", Duration::from_secs(50), move || {
        let pool = ClusterPool::connect(&url, "hosts", KEY).unwrap();
        wait_within(Duration::from_secs(15), "both hosts' workers", || {
            status(&url, "hosts").is_ok_and(|s| s.workers.len() == 2)
        });
        let items: Vec<(u64, String, u64)> = (0..16).map(|x| (x, log.clone(), 1500)).collect();
        let pending = pool.map_async(&hosted_square, items).unwrap();
        // Cut as soon as host 1 runs something: an item it finishes after the cut cannot
        // have been answered before it.
        wait_within(Duration::from_secs(10), "host 1 at work", || {
            !in_flight(&runs(&log), pid1).is_empty()
        });
        switch.cut("host1");
        let unanswered = in_flight(&runs(&log), pid1);
        let out = pending.get_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(out, (0..16u64).map(|x| x * x).collect::<Vec<_>>());
        // What host 1 had not finished when it was cut off ran again on host 2.
        let all = runs(&log);
        for x in &unanswered {
            assert!(
                all.contains(&(*x, pid2, true)),
                "item {x} not taken over: {all:?}"
            );
        }
        assert_eq!(pool.duplicates(), 0, "no reply from host 1 while cut off");
        switch.heal("host1");
        wait_within(Duration::from_secs(20), "host 1's late replies", || {
            pool.duplicates() >= 1
        });
        // Both hosts serve on.
        let again = pool.map(&square, 0..200u64).unwrap();
        assert_eq!(again[199], 199 * 199);
        (pool.duplicates(), unanswered.len())
    });
    assert!(
        dups >= 1 && late >= 1,
        "{dups} duplicates of {late} late tasks"
    );
    for mut w in [w1, w2] {
        assert!(w.0.try_wait().unwrap().is_none(), "a worker ended");
    }
}

/// A cluster for the executor checks: its own Redis, two workers of two processes each (four
/// tasks at once), and a client that knows it. Dropped client first, then the workers, then
/// Redis.
struct Cluster {
    pool: ClusterPool,
    _workers: Vec<Worker>,
    _redis: Redis,
}

fn cluster(
    extra: &str,
    build: impl FnOnce(multiproc_cluster::ClusterPoolBuilder) -> multiproc_cluster::ClusterPoolBuilder,
) -> Option<Cluster> {
    if !redis_available() {
        return None;
    }
    let redis = Redis::start();
    let url = redis.url();
    let workers: Vec<Worker> = (0..2).map(|_| Worker::start(&url, "ex", extra)).collect();
    wait_for("2 workers", || {
        status(&url, "ex").is_ok_and(|s| s.workers.len() == 2)
    });
    let pool = build(ClusterPool::builder(&url, "ex", KEY).workers(4))
        .connect()
        .unwrap();
    Some(Cluster {
        pool,
        _workers: workers,
        _redis: redis,
    })
}

/// The executor checks every local executor passes (`multiproc/tests/executors`), on the
/// cluster: the same calls, results and error kinds.
mod executor {
    use super::*;
    use executors::Backend;

    fn run(extra: &str, check: impl FnOnce(&ClusterPool)) {
        if let Some(c) = cluster(extra, |b| b) {
            check(&c.pool);
        }
    }

    #[multiproc::test]
    fn same_results() {
        run("", executors::same_results);
    }
    #[multiproc::test]
    fn panicking_task() {
        run("", executors::panicking_task);
    }
    #[multiproc::test]
    fn dying_worker() {
        run("--max-tries 2", |p| {
            executors::dying_worker(p, Backend::Cluster)
        });
    }
    #[multiproc::test]
    fn task_timeout() {
        let timeout = Duration::from_millis(500);
        if let Some(c) = cluster("", |b| b.task_timeout(timeout)) {
            executors::task_timeout(&c.pool);
        }
    }
    #[multiproc::test]
    fn unserializable_result() {
        run("", executors::unserializable_result);
    }
    #[multiproc::test]
    fn as_completed_order() {
        run("", executors::as_completed_order);
    }
    #[multiproc::test]
    fn wait_modes() {
        run("", executors::wait_modes);
    }
    #[multiproc::test]
    fn cancel() {
        run("", executors::cancel);
    }
    #[multiproc::test]
    fn shutdown_waits() {
        run("", executors::shutdown_waits);
    }
    #[multiproc::test]
    fn shutdown_cancels() {
        run("", executors::shutdown_cancels);
    }
}
