//! The working side: the user's own binary in worker mode.
//!
//! A worker runs a local [`Pool`] of N processes and N consumer threads.
//! Each thread takes one task at a time from the task stream through the consumer group
//! (`XREADGROUP`), runs its items in the local pool, stores the signed reply on the client's
//! reply stream and acknowledges the task in the same transaction (`MULTI`: `XADD` reply,
//! `XACK`, `XDEL`), so a task is never acknowledged without its reply. While a task runs, a
//! lease thread keeps it claimed (`XCLAIM ... JUSTID` resets its idle time); tasks of workers
//! that died are taken over once idle longer than the lease (`XAUTOCLAIM`). A task that
//! killed the processes running it `max_tries` times goes to the dead-letter stream and
//! fails at the client instead of looping for ever. A heartbeat announces the worker.
//!
//! Before running a task a worker claims it (`CLAIM`, a script): the claim key of the task's
//! (client, task, submission) holds the stream entry that runs it. A second entry of the same
//! task (a copy added by someone with write access to Redis) finds the claim taken and is
//! refused, moved to the dead letters and never run, while the original is pending and after
//! it completed, until the task's expiry; after the expiry no entry of it may start. A task
//! taken over from a dead worker is the same entry, which its claim names: it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use multiproc::{Pool, PoolError};
use serde_bytes::ByteBuf;

use crate::envelope::{self, Entry, GROUP, Keys, Kind, PAYLOAD, Reply, ReplyBody, SIGNATURE, Task};
use crate::error::{ClusterError, TaskFailure, broker};

/// How long a worker's heartbeat record lives without renewal.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// How long a reply stream lives after its last reply (a client that vanished).
const REPLIES_TTL_SECS: u64 = 24 * 3600;

/// How long a worker's `XREADGROUP` blocks.
const BLOCK: Duration = Duration::from_millis(500);

/// How long an answer of the broker may take beyond a `BLOCK`: past it the connection is
/// taken for cut (a broker behind a link that went down answers nothing, not even an error).
const READ_MARGIN: Duration = Duration::from_secs(5);

/// How long a worker keeps trying to store the reply of a task it ran while the broker is
/// unreachable. The task may have been taken over meanwhile: the client then counts the late
/// reply as a duplicate.
const REPLY_PATIENCE: Duration = Duration::from_secs(300);

/// Claims, renews and completes the claim of a task (`KEYS[1]`), atomically, by the broker's
/// clock. `ARGV`: mode, stream entry id, the task's expiry (ms), how long a claim of a
/// running task lives without renewal (ms).
///
/// - `take` (a new delivery) and `retake` (a delivery taken over from a worker that stopped
///   renewing it): on `retake`, `run` when the claim names this entry (a genuine
///   redelivery, even past the expiry: the task started in time); else `expired` past the
///   expiry, `run` when the task is unclaimed (the claim now names this entry), `done` when
///   it ran, `replay` when another entry runs it (or this entry was added again),
///   `cancelled` when its client cancelled it first (the claim holds `cancelled`).
/// - `renew`: keeps this entry's claim alive while it runs (two leases past the last
///   renewal, and at least until the expiry).
/// - `done`: marks the claim done; it stays until the expiry, and two leases at least, so
///   that the client's broker check sees the task ran until its reply is in.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = tonumber(ARGV[3])
local keep = math.max(expires, now + tonumber(ARGV[4]))
local mode, run = ARGV[1], 'run:' .. ARGV[2]
local held = redis.call('GET', KEYS[1])
if mode == 'done' then
  redis.call('SET', KEYS[1], 'done:' .. ARGV[2], 'PXAT', keep)
  return 'ok'
elseif mode == 'renew' then
  if held == run then redis.call('PEXPIREAT', KEYS[1], keep) end
  return 'ok'
end
if mode == 'retake' and held == run then
  redis.call('PEXPIREAT', KEYS[1], keep)
  return 'run'
end
if held == 'cancelled' then return 'cancelled' end
if now >= expires then return 'expired' end
if not held then
  redis.call('SET', KEYS[1], run, 'PXAT', keep)
  return 'run'
end
if string.sub(held, 1, 5) == 'done:' then return 'done' end
return 'replay'
";

/// A `CLAIM` call in `mode` on the claim of `held`.
fn claim(shared: &Shared, held: &Held, mode: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(CLAIM)
        .arg(1)
        .arg(&held.claim)
        .arg(mode)
        .arg(&held.entry)
        .arg(held.expires_ms)
        .arg(shared.hold_ms());
    cmd
}

/// A task being run: its entry, who holds it and its claim.
#[derive(Debug, Clone)]
struct Held {
    entry: String,
    consumer: String,
    claim: String,
    expires_ms: u64,
}

/// The settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The Redis URL.
    pub url: String,
    /// The queue name (as the clients use it).
    pub queue: String,
    /// The authkey (tasks not signed with it are rejected).
    pub authkey: Vec<u8>,
    /// Local processes, and tasks run at once (default: `cpu_count()`).
    pub processes: usize,
    /// A task not renewed for this long is taken over by another worker (default 30 s).
    pub lease: Duration,
    /// A task that killed its process this many times is dead-lettered (default 3).
    pub max_tries: u32,
}

impl WorkerOptions {
    /// The defaults for `url`, `queue` and `authkey`.
    pub fn new(url: &str, queue: &str, authkey: &[u8]) -> Self {
        WorkerOptions {
            url: url.to_string(),
            queue: queue.to_string(),
            authkey: authkey.to_vec(),
            processes: multiproc::cpu_count(),
            lease: Duration::from_secs(30),
            max_tries: 3,
        }
    }

    /// Reads `--mp-worker URL --queue NAME [--processes N] [--lease-ms MS] [--max-tries N]`
    /// from `args`, the authkey from `MULTIPROC_AUTHKEY`; `None` without `--mp-worker`.
    pub fn from_args(args: &[String]) -> Option<Result<WorkerOptions, String>> {
        let pos = args.iter().position(|a| a == "--mp-worker")?;
        Some(Self::parse(&args[pos..]))
    }

    fn parse(args: &[String]) -> Result<WorkerOptions, String> {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let url = value("--mp-worker").ok_or("--mp-worker needs the Redis URL")?;
        let queue = value("--queue").unwrap_or_else(|| "default".into());
        let key = std::env::var_os("MULTIPROC_AUTHKEY")
            .ok_or("set MULTIPROC_AUTHKEY to the cluster's authkey")?
            .into_encoded_bytes();
        let mut o = WorkerOptions::new(&url, &queue, &key);
        if let Some(n) = value("--processes") {
            o.processes = n.parse().map_err(|_| "--processes takes a number")?;
        }
        if let Some(ms) = value("--lease-ms") {
            o.lease = Duration::from_millis(ms.parse().map_err(|_| "--lease-ms takes a number")?);
        }
        if let Some(n) = value("--max-tries") {
            o.max_tries = n.parse().map_err(|_| "--max-tries takes a number")?;
        }
        if o.processes == 0 || o.max_tries == 0 || o.lease.is_zero() {
            return Err("--processes, --max-tries and --lease-ms must be at least 1".into());
        }
        Ok(o)
    }
}

/// If this process was started as a worker (`--mp-worker URL` among its arguments), runs the
/// worker until it is stopped and exits; otherwise returns at once. Call it first in `main`
/// (after `#[multiproc::main]`'s set-up), so the same binary is client and worker:
///
/// ```no_run
/// #[multiproc::main]
/// fn main() {
///     multiproc_cluster::run_worker_if_requested();
///     // ... the client side
/// }
/// ```
pub fn run_worker_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    let Some(opts) = WorkerOptions::from_args(&args) else {
        return;
    };
    // SIGINT/SIGTERM stop the worker between tasks: blocked here (before any thread starts,
    // so every thread inherits the mask) and received by a waiting thread.
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    if signals.thread_block().is_ok() {
        let s = stop.clone();
        std::thread::spawn(move || {
            if signals.wait().is_ok() {
                s.store(true, Ordering::SeqCst);
            }
        });
    }
    let code = match opts
        .map_err(ClusterError::Invalid)
        .and_then(|o| run_worker(&o, Some(stop)))
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("multiproc-cluster worker: {e}");
            1
        }
    };
    multiproc::shutdown();
    std::process::exit(code);
}

/// Runs this process as a worker from its arguments (`--mp-worker URL --queue NAME ...`,
/// key in `MULTIPROC_AUTHKEY`) and exits: for a dedicated worker binary's `main`. Without
/// `--mp-worker` it exits with code 2 and a usage message.
pub fn worker_main() -> ! {
    run_worker_if_requested();
    eprintln!(
        "usage: {} --mp-worker redis://HOST:PORT/ [--queue NAME] [--processes N] \
         [--lease-ms MS] [--max-tries N]  (authkey in MULTIPROC_AUTHKEY)",
        std::env::args().next().unwrap_or_else(|| "worker".into())
    );
    multiproc::shutdown();
    std::process::exit(2)
}

/// What the worker threads share.
struct Shared {
    opts: WorkerOptions,
    keys: Keys,
    id: String,
    redis: redis::Client,
    pool: Pool,
    /// Tasks being run, by entry id (their leases and claims are renewed).
    running: Mutex<HashMap<String, Held>>,
    stop: Arc<AtomicBool>,
    done: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    /// How long the claim of a running task lives without renewal: two leases.
    fn hold_ms(&self) -> u64 {
        2 * self.opts.lease.as_millis() as u64
    }
}

/// Runs a worker until `stop` is set (never, without one). Returns an error only when it
/// cannot start (no Redis at first, no local pool).
pub fn run_worker(opts: &WorkerOptions, stop: Option<Arc<AtomicBool>>) -> Result<(), ClusterError> {
    let redis = redis::Client::open(opts.url.as_str()).map_err(broker)?;
    let keys = Keys::new(&opts.queue);
    envelope::ensure_group(&mut redis.get_connection().map_err(broker)?, &keys).map_err(broker)?;
    let pool = Pool::builder()
        .processes(opts.processes)
        .build()
        .map_err(|e| ClusterError::Failed(format!("cannot start the local pool: {e}")))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        keys,
        id: format!("{host}-{}", std::process::id()),
        redis,
        pool,
        running: Mutex::new(HashMap::new()),
        stop: stop.unwrap_or_default(),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    for n in 0..opts.processes {
        let s = shared.clone();
        threads.push(std::thread::spawn(move || consume(&s, n)));
    }
    let s = shared.clone();
    threads.push(std::thread::spawn(move || keep_leases(&s)));
    let s = shared.clone();
    threads.push(std::thread::spawn(move || heartbeat(&s, &host)));
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A connection, reopened after errors (the broker restarted, the link was cut): `None`
/// while unreachable.
struct Link<'a> {
    shared: &'a Shared,
    con: Option<redis::Connection>,
}

impl Link<'_> {
    fn get(&mut self) -> Option<&mut redis::Connection> {
        if self.con.is_none() {
            let opened = envelope::connect(&self.shared.redis, BLOCK + READ_MARGIN)
                // After a broker restart without persistence the group is gone.
                .and_then(|mut c| envelope::ensure_group(&mut c, &self.shared.keys).map(|()| c));
            match opened {
                Ok(c) => self.con = Some(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    return None;
                }
            }
        }
        self.con.as_mut()
    }

    /// Runs `f`; on an error the connection is dropped (reopened next time).
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        self.try_run(f).ok()
    }

    /// As [`run`](Self::run); `Err(true)` when the broker could not be reached (worth
    /// trying again), `Err(false)` when it refused the command.
    fn try_run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, bool> {
        let con = self.get().ok_or(true)?;
        f(con).map_err(|e| {
            self.con = None;
            e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
        })
    }
}

/// One consumer: takes tasks one at a time until stopped.
fn consume(shared: &Shared, n: usize) {
    let consumer = format!("{}-{n}", shared.id);
    let lease_ms = shared.opts.lease.as_millis() as u64;
    let mut link = Link { shared, con: None };
    while !shared.stop.load(Ordering::SeqCst) {
        let fresh = link.run(|c| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&shared.keys.tasks)
                .arg(">")
                .query::<redis::Value>(c)
        });
        let Some(fresh) = fresh else { continue };
        let mut entries = envelope::read_entries(&fresh);
        let mut reclaimed = false;
        if entries.is_empty() {
            // Nothing new: take over a task whose worker stopped renewing it.
            let claimed = link.run(|c| {
                redis::cmd("XAUTOCLAIM")
                    .arg(&shared.keys.tasks)
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(lease_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1)
                    .query::<redis::Value>(c)
            });
            if let Some(redis::Value::Array(parts)) = claimed {
                entries = parts.get(1).map(envelope::entries).unwrap_or_default();
                reclaimed = true;
            }
        }
        for entry in entries {
            run_entry(shared, &mut link, &consumer, entry, reclaimed);
        }
    }
}

/// How many times entry `id` was delivered (`XPENDING`).
fn deliveries(link: &mut Link<'_>, keys: &Keys, id: &str) -> u32 {
    let v = link.run(|c| {
        redis::cmd("XPENDING")
            .arg(&keys.tasks)
            .arg(GROUP)
            .arg(id)
            .arg(id)
            .arg(1)
            .query::<redis::Value>(c)
    });
    match v {
        Some(redis::Value::Array(rows)) => match rows.first() {
            Some(redis::Value::Array(row)) => match row.get(3) {
                Some(redis::Value::Int(n)) => *n as u32,
                _ => 1,
            },
            _ => 1,
        },
        _ => 1,
    }
}

fn run_entry(shared: &Shared, link: &mut Link<'_>, consumer: &str, entry: Entry, reclaimed: bool) {
    let keys = &shared.keys;
    let id = entry.0.clone();
    let task: Task = match envelope::open(
        &shared.opts.authkey,
        Kind::Task,
        envelope::field(&entry, PAYLOAD),
        envelope::field(&entry, SIGNATURE),
    ) {
        Ok(t) => t,
        Err(why) => {
            // Never run, never answered (the reply address is not to be trusted either).
            refuse(shared, link, consumer, &entry, None, &why);
            return;
        }
    };
    let held = Held {
        entry: id.clone(),
        consumer: consumer.to_string(),
        claim: keys.claim(&task.client, task.id, task.attempt),
        expires_ms: task.expires_ms,
    };
    if task.queue != keys.queue {
        let why = format!("addressed to queue `{}`", task.queue);
        refuse(shared, link, consumer, &entry, Some(&task), &why);
        return;
    }
    let mode = if reclaimed { "retake" } else { "take" };
    let verdict = link.run(|c| claim(shared, &held, mode).query::<String>(c));
    match verdict.as_deref() {
        Some("run") => {}
        Some("cancelled") => {
            // Its client cancelled it before any worker claimed it: retired unanswered (the
            // client failed it already).
            let mut p = redis::pipe();
            acknowledge(&mut p, keys, &id);
            link.run(|c| p.query::<()>(c));
            return;
        }
        Some("expired") => {
            let why = "expired: no worker started it before its expiry";
            refuse(shared, link, consumer, &entry, Some(&task), why);
            return;
        }
        Some("done") => {
            let why = "replayed: this task already ran";
            refuse(shared, link, consumer, &entry, Some(&task), why);
            return;
        }
        Some(_) => {
            let why = "replayed: another entry of this task runs or ran it";
            refuse(shared, link, consumer, &entry, Some(&task), why);
            return;
        }
        // The broker is unreachable: the entry stays pending, and is taken over after the
        // lease (this worker's claim, if it was made, names it).
        None => return,
    }
    let mut tries = if reclaimed {
        deliveries(link, keys, &id)
    } else {
        1
    };
    lock(&shared.running).insert(id.clone(), held.clone());
    let mut last = "its worker was killed".to_string();
    let items = loop {
        if tries > shared.opts.max_tries {
            break Err(TaskFailure::DeadLetter {
                tries: tries - 1,
                last: last.clone(),
            });
        }
        match run_items(shared, &task) {
            Ok(items) => break Ok(items),
            Err(crash) => {
                // The process running it died: count a delivery (XCLAIM without JUSTID
                // increments it) and try again, up to the limit.
                last = crash;
                link.run(|c| {
                    redis::cmd("XCLAIM")
                        .arg(&keys.tasks)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(0)
                        .arg(&id)
                        .query::<redis::Value>(c)
                });
                tries += 1;
            }
        }
    };
    if items.as_ref().is_ok_and(|i| i.iter().all(Result::is_ok)) {
        shared.done.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    let dead = matches!(items, Err(TaskFailure::DeadLetter { .. }));
    let reply = Reply {
        client: task.client.clone(),
        task: task.id,
        attempt: task.attempt,
        body: ReplyBody::Done(items),
    };
    let replies = keys.replies(&task.client);
    match envelope::seal(&shared.opts.authkey, Kind::Reply, &reply) {
        Ok((payload, tag)) => {
            let mut p = redis::pipe();
            p.atomic()
                .cmd("XADD")
                .arg(&replies)
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload)
                .arg(SIGNATURE)
                .arg(tag)
                .ignore()
                .cmd("EXPIRE")
                .arg(&replies)
                .arg(REPLIES_TTL_SECS)
                .ignore();
            if dead {
                dead_letter(&mut p, keys, &entry, "it killed its worker max_tries times");
            }
            p.add_command(claim(shared, &held, "done")).ignore();
            acknowledge(&mut p, keys, &id);
            store(shared, link, consumer, &id, &p);
        }
        Err(e) => {
            eprintln!("multiproc-cluster worker {consumer}: cannot encode the reply of {id}: {e}")
        }
    }
    lock(&shared.running).remove(&id);
}

/// Runs the transaction `p` that stores a task's outcome and retires its entry. Until it
/// goes through, keeps trying while the broker is unreachable (restarting, or behind a cut
/// link), up to [`REPLY_PATIENCE`] or until the worker stops; meanwhile the lease lapses and
/// another worker may take the task over.
fn store(shared: &Shared, link: &mut Link<'_>, consumer: &str, id: &str, p: &redis::Pipeline) {
    let deadline = Instant::now() + REPLY_PATIENCE.max(shared.opts.lease);
    loop {
        match link.try_run(|c| p.query::<()>(c)) {
            Ok(()) => return,
            Err(true) if Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                eprintln!(
                    "multiproc-cluster worker {consumer}: the outcome of {id} was not stored"
                );
                return;
            }
        }
    }
}

/// Adds to `p` a copy of `entry` on the dead-letter stream, with `reason`.
fn dead_letter(p: &mut redis::Pipeline, keys: &Keys, entry: &Entry, reason: &str) {
    p.cmd("XADD")
        .arg(&keys.dead)
        .arg("*")
        .arg("entry")
        .arg(&entry.0)
        .arg("reason")
        .arg(reason)
        .arg(PAYLOAD)
        .arg(envelope::field(entry, PAYLOAD).unwrap_or_default())
        .arg(SIGNATURE)
        .arg(envelope::field(entry, SIGNATURE).unwrap_or_default())
        .ignore();
}

/// Refuses a task entry without running it: counted, moved to the dead letters with the
/// reason, acknowledged, and (a genuine task's copy: its client is known) reported to its
/// client, on the client's reply stream only if it exists.
fn refuse(
    shared: &Shared,
    link: &mut Link<'_>,
    consumer: &str,
    entry: &Entry,
    task: Option<&Task>,
    why: &str,
) {
    let keys = &shared.keys;
    shared.rejected.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "multiproc-cluster worker {consumer}: task {} rejected: {why}",
        entry.0
    );
    let mut p = redis::pipe();
    p.atomic();
    dead_letter(&mut p, keys, entry, why);
    if let Some(task) = task {
        let notice = Reply {
            client: task.client.clone(),
            task: task.id,
            attempt: task.attempt,
            body: ReplyBody::Refused(why.to_string()),
        };
        if let Ok((payload, tag)) = envelope::seal(&shared.opts.authkey, Kind::Reply, &notice) {
            p.cmd("XADD")
                .arg(keys.replies(&task.client))
                .arg("NOMKSTREAM")
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload)
                .arg(SIGNATURE)
                .arg(tag)
                .ignore();
        }
    }
    acknowledge(&mut p, keys, &entry.0);
    link.run(|c| p.query::<()>(c));
}

/// Adds to `p` what retires task entry `id`: acknowledged in the group, deleted from the
/// stream.
fn acknowledge<'p>(p: &'p mut redis::Pipeline, keys: &Keys, id: &str) -> &'p mut redis::Pipeline {
    p.cmd("XACK")
        .arg(&keys.tasks)
        .arg(GROUP)
        .arg(id)
        .ignore()
        .cmd("XDEL")
        .arg(&keys.tasks)
        .arg(id)
        .ignore()
}

/// Runs the task's items in the local pool. `Err` when a process running it died (the
/// task may be what kills it): the caller retries or dead-letters.
fn run_items(shared: &Shared, task: &Task) -> Result<Vec<Result<ByteBuf, TaskFailure>>, String> {
    let timeout = task.timeout_ms.map(Duration::from_millis);
    let chunk = task.items.len().div_ceil(shared.opts.processes).max(1);
    let results = match shared
        .pool
        .map_encoded(&task.function, &task.items, chunk, timeout)
    {
        Ok(r) => r.get_each_encoded(),
        Err(PoolError::NotRegistered(name)) => {
            return Ok(task
                .items
                .iter()
                .map(|_| Err(TaskFailure::NotRegistered(name.name().to_string())))
                .collect());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.push(match r {
            Ok(bytes) => Ok(ByteBuf::from(bytes)),
            Err(PoolError::WorkerDied { pid, exitcode }) => {
                return Err(format!("process {pid} died (exit code {exitcode})"));
            }
            Err(PoolError::Panicked(m)) => Err(TaskFailure::Panicked(m)),
            Err(PoolError::Timeout(t)) => Err(TaskFailure::Timeout(t.as_millis() as u64)),
            Err(PoolError::NotRegistered(n)) => Err(TaskFailure::NotRegistered(n.0)),
            Err(PoolError::Codec(c)) => Err(TaskFailure::Codec {
                encode: matches!(c, multiproc::CodecError::Encode(_)),
                message: match c {
                    multiproc::CodecError::Encode(m) | multiproc::CodecError::Decode(m) => m,
                    other => other.to_string(),
                },
            }),
            Err(e) => Err(TaskFailure::Failed(e.to_string())),
        });
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Renews the leases and claims of running tasks a few times per lease: `XCLAIM ... JUSTID`
/// to the consumer that holds the task resets its idle time.
fn keep_leases(shared: &Shared) {
    let mut link = Link { shared, con: None };
    let every = (shared.opts.lease / 4).max(Duration::from_millis(10));
    while crate::nap(&shared.stop, every) {
        let held: Vec<Held> = lock(&shared.running).values().cloned().collect();
        if held.is_empty() {
            continue;
        }
        let mut p = redis::pipe();
        for h in &held {
            p.cmd("XCLAIM")
                .arg(&shared.keys.tasks)
                .arg(GROUP)
                .arg(&h.consumer)
                .arg(0)
                .arg(&h.entry)
                .arg("JUSTID")
                .ignore();
            p.add_command(claim(shared, h, "renew")).ignore();
        }
        link.run(|c| p.query::<()>(c));
    }
}

/// Announces the worker: a hash with its facts and counters, expiring unless renewed, and
/// its id in the queue's worker set.
fn heartbeat(shared: &Shared, host: &str) {
    let mut link = Link { shared, con: None };
    let key = shared.keys.worker(&shared.id);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    while !shared.stop.load(Ordering::SeqCst) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let running = lock(&shared.running).len();
        link.run(|c| {
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg("host")
                .arg(host)
                .arg("pid")
                .arg(std::process::id())
                .arg("processes")
                .arg(shared.opts.processes)
                .arg("started")
                .arg(started)
                .arg("seen")
                .arg(now)
                .arg("running")
                .arg(running)
                .arg("done")
                .arg(shared.done.load(Ordering::Relaxed))
                .arg("failed")
                .arg(shared.failed.load(Ordering::Relaxed))
                .arg("rejected")
                .arg(shared.rejected.load(Ordering::Relaxed))
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(HEARTBEAT_TTL.as_secs())
                .ignore()
                .cmd("SADD")
                .arg(&shared.keys.workers)
                .arg(&shared.id)
                .ignore()
                .query::<()>(c)
        });
        if !crate::nap(&shared.stop, Duration::from_secs(1)) {
            break;
        }
    }
    link.run(|c| {
        redis::pipe()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("SREM")
            .arg(&shared.keys.workers)
            .arg(&shared.id)
            .ignore()
            .query::<()>(c)
    });
}
