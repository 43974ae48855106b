//! The submitting side: `ClusterPool`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiproc::pool::Ledger;
use multiproc::{AsArg, AsyncResult, Func, MapResult, TaskError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::envelope::{self, Keys, Kind, PAYLOAD, Reply, ReplyBody, SIGNATURE, Task};
use crate::error::{ClusterError, TaskFailure, broker};

/// How many chunks an `imap` keeps submitted ahead of what the caller consumed.
const IMAP_WINDOW: usize = 64;

/// The field of the entry that wakes the reply reader when the pool is dropped.
const WAKE: &str = "wake";

/// How long the reply reader's `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(1);

/// How long an answer of the broker may take (beyond a `BLOCK`) on the client's connections:
/// past it the connection is taken for lost and opened again.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many waiting tasks one pipeline of the broker check asks about.
const CHECK_BATCH: usize = 512;

const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_BROKER_CHECK: Duration = Duration::from_secs(10);
const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Each item's encoded result, or the failure of its whole task.
type TaskOutcome = Result<Vec<Result<Vec<u8>, ClusterError>>, ClusterError>;

/// Where a waiting task's current submission is.
enum Sent {
    /// Its `XADD` has not been answered yet.
    Sending,
    /// In the task stream under this entry id.
    Entry(String),
    /// Its `XADD` failed: the broker check submits it again.
    Failed,
}

/// A submitted task waiting for its reply: the task as submitted (to check on it and submit
/// it again), where it is, and whose items it holds (items `start..` of ledger job `job`).
struct Slot {
    task: Task,
    sent: Sent,
    job: u64,
    start: usize,
}

#[derive(Default)]
struct State {
    next: u64,
    slots: HashMap<u64, Slot>,
    /// Tasks out of `slots` whose outcome is not in the ledger yet (see [`Inner::settle`]).
    settling: usize,
    closed: bool,
}

impl State {
    /// Whether a task still waits for its result (or for it to reach its handle).
    fn unfinished(&self) -> bool {
        !self.slots.is_empty() || self.settling > 0
    }
}

/// A task's outcome, to record in the ledger once the state's lock is released (the ledger
/// runs the handles' callbacks).
struct Finished {
    job: u64,
    start: usize,
    items: Vec<Result<Vec<u8>, ClusterError>>,
}

/// Signed tasks ready to go: [`Inner::go`] adds them to the stream.
struct Sending {
    pipe: redis::Pipeline,
    /// (task, submission) of each `XADD`, in order.
    tasks: Vec<(u64, u32)>,
}

struct Inner {
    keys: Keys,
    client: String,
    authkey: Vec<u8>,
    redis: redis::Client,
    /// The connection submissions go through (reopened after an error).
    con: Mutex<Option<redis::Connection>>,
    state: Mutex<State>,
    /// Notified when a task leaves `state` (for `join`).
    done: Condvar,
    /// The jobs and results the handles read.
    ledger: Ledger,
    workers: usize,
    stop: AtomicBool,
    timeout: Option<Duration>,
    chunksize: Option<usize>,
    expiry: Duration,
    broker_check: Duration,
    broker_timeout: Duration,
    /// The broker's clock minus ours, in milliseconds.
    clock_offset: AtomicI64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    resubmitted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the epoch by this machine's clock.
fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Inner {
    /// The broker's clock as last measured, in milliseconds since the epoch.
    fn broker_now(&self) -> u64 {
        (local_ms() + self.clock_offset.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Reads the broker's clock on `con`: its time now.
    fn sync_clock(&self, con: &mut redis::Connection) -> redis::RedisResult<u64> {
        let now = envelope::broker_ms(con)?;
        self.clock_offset
            .store(now as i64 - local_ms(), Ordering::Relaxed);
        Ok(now)
    }

    /// Runs `f` on the submission connection, reconnecting once if it was lost.
    fn with_con<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let mut con = lock(&self.con);
        for attempt in 0..2 {
            if con.is_none() {
                *con = Some(envelope::connect(&self.redis, READ_TIMEOUT).map_err(broker)?);
            }
            let c = con.as_mut().expect("connected above");
            match f(c) {
                Ok(v) => return Ok(v),
                // A connection the broker dropped (it restarted) fails at once: once more on
                // a new one. A timeout is not retried: what was sent may have gone through.
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    *con = None;
                    if attempt == 1 || e.is_timeout() {
                        return Err(broker(e));
                    }
                }
                Err(e) => return Err(broker(e)),
            }
        }
        Err(broker(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the connection to Redis was lost",
        ))))
    }

    /// Signs `tasks` into their `XADD`s. The slots of the tasks must exist before the
    /// `XADD`s go: a reply may come back before their own answer.
    fn seal<'t>(&self, tasks: impl IntoIterator<Item = &'t Task>) -> Result<Sending, ClusterError> {
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        for task in tasks {
            let (payload, tag) = envelope::seal(&self.authkey, Kind::Task, task)?;
            pipe.cmd("XADD")
                .arg(&self.keys.tasks)
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload)
                .arg(SIGNATURE)
                .arg(tag);
            sent.push((task.id, task.attempt));
        }
        Ok(Sending { pipe, tasks: sent })
    }

    /// Adds the tasks of `s` to the stream; records their entries, or on a failure returns
    /// the error, marking them [`Sent::Failed`] when `keep_failed` (the broker check submits
    /// them again).
    fn go(&self, s: &Sending, keep_failed: bool) -> Result<(), ClusterError> {
        let sent = self.with_con(|con| s.pipe.query::<Vec<String>>(con));
        let mut st = lock(&self.state);
        let mut entries = match &sent {
            Ok(entries) => entries.clone(),
            Err(_) if !keep_failed => return sent.map(drop),
            Err(_) => Vec::new(),
        }
        .into_iter();
        for &(id, attempt) in &s.tasks {
            let entry = entries.next().map_or(Sent::Failed, Sent::Entry);
            if let Some(slot) = st.slots.get_mut(&id)
                && slot.task.attempt == attempt
            {
                slot.sent = entry;
            }
        }
        sent.map(drop)
    }

    /// Takes task `id` out of the waiting ones with `outcome`, if it still waits: what to
    /// [`settle`](Self::settle) once the lock is released.
    fn finish(&self, st: &mut State, id: u64, outcome: TaskOutcome) -> Option<Finished> {
        let slot = st.slots.remove(&id)?;
        st.settling += 1;
        let n = slot.task.items.len();
        let mut items = match outcome {
            Ok(items) => items,
            Err(e) => vec![Err(e); n],
        };
        items.resize_with(n, || {
            Err(TaskError::Failed(
                "the reply holds fewer results than the task's items".into(),
            ))
        });
        items.truncate(n);
        Some(Finished {
            job: slot.job,
            start: slot.start,
            items,
        })
    }

    /// Records finished tasks in the ledger (no lock held: callbacks run here).
    fn settle(&self, finished: impl IntoIterator<Item = Finished>) {
        for f in finished {
            self.ledger.record(f.job, f.start, f.items);
            lock(&self.state).settling -= 1;
            self.done.notify_all();
        }
    }

    /// Takes back the waiting tasks `ids` that no worker claimed yet: each one's claim is set
    /// to `cancelled` (a worker that reads its entry then drops it) and its entry deleted.
    /// Returns the ones it took back, out of the waiting ones.
    fn cancel_tasks(&self, ids: &[u64]) -> Vec<Finished> {
        let targets: Vec<(u64, String, Option<String>, u64)> = {
            let st = lock(&self.state);
            ids.iter()
                .filter_map(|id| {
                    let slot = st.slots.get(id)?;
                    let entry = match &slot.sent {
                        Sent::Entry(e) => Some(e.clone()),
                        _ => None,
                    };
                    let claim = self.keys.claim(&self.client, *id, slot.task.attempt);
                    Some((*id, claim, entry, slot.task.expires_ms))
                })
                .collect()
        };
        if targets.is_empty() {
            return Vec::new();
        }
        let mut p = redis::pipe();
        for (_, claim, entry, expires) in &targets {
            p.cmd("EVAL")
                .arg(CANCEL)
                .arg(2)
                .arg(claim)
                .arg(&self.keys.tasks)
                .arg(entry.as_deref().unwrap_or(""))
                .arg(*expires);
        }
        let Ok(taken) = self.with_con(|c| p.query::<Vec<i64>>(c)) else {
            return Vec::new();
        };
        let mut st = lock(&self.state);
        targets
            .iter()
            .zip(taken)
            .filter(|(_, t)| *t == 1)
            .filter_map(|((id, ..), _)| self.finish(&mut st, *id, Err(TaskError::Cancelled)))
            .collect()
    }

    /// Cancels ledger job `job` if no worker claimed any of its tasks; whether it did.
    fn cancel_job(&self, job: u64) -> bool {
        let ids: Vec<u64> = lock(&self.state)
            .slots
            .iter()
            .filter(|(_, s)| s.job == job)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return false;
        }
        let cancelled = self.cancel_tasks(&ids);
        // The tasks taken back fail with `Cancelled`; if some were not, they run, and the
        // job was not cancelled.
        let all = cancelled.len() == ids.len();
        self.settle(cancelled);
        all
    }
}

/// Takes back a task no worker claimed: `KEYS`: its claim, the task stream; `ARGV`: its
/// entry (or empty), its expiry (ms). 1 if it was taken back.
const CANCEL: &str = r"
if redis.call('SET', KEYS[1], 'cancelled', 'NX', 'PXAT', ARGV[2]) then
  if ARGV[1] ~= '' then redis.call('XDEL', KEYS[2], ARGV[1]) end
  return 1
end
return 0
";

/// Configures a [`ClusterPool`]: `ClusterPool::builder(url, queue, key).chunksize(64).connect()`.
#[derive(Debug, Clone)]
pub struct ClusterPoolBuilder {
    url: String,
    queue: String,
    authkey: Vec<u8>,
    timeout: Option<Duration>,
    chunksize: Option<usize>,
    expiry: Duration,
    broker_check: Duration,
    broker_timeout: Duration,
    workers: usize,
}

impl ClusterPoolBuilder {
    /// How many tasks the cluster runs at once, as far as this client knows (default 1):
    /// [`Executor::workers`](multiproc::Executor::workers), which sizes the chunks of
    /// `map_progress`. Nothing else depends on it; workers come and go freely.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Every item may run at most `timeout` on a worker; past it the process running it is
    /// killed and the item fails with [`ClusterError::Timeout`].
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Items per task for `map` (default: about 32 tasks per map, at most 256 items each).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// A task that no worker started within `expiry` of its submission never starts: it
    /// fails with [`ClusterError::Expired`] (default 24 hours; measured by the broker's
    /// clock). A task that started runs to its end, however long.
    ///
    /// The expiry also bounds replays: workers refuse a copy of a task entry while the task
    /// runs and after it ran, by a claim kept in Redis until the expiry (about 170 bytes per
    /// task, so shorten the expiry at high task rates), and refuse every entry of the task
    /// after it.
    pub fn task_expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// How often the pool checks that the broker still holds the tasks waiting for their
    /// results (default 10 s). A task the broker lost (it restarted without persistence, or
    /// its stream was deleted) is submitted again: noticed within this period, or within two
    /// of the workers' leases after the last renewal when the worker running it died too.
    pub fn broker_check(mut self, every: Duration) -> Self {
        self.broker_check = every;
        self
    }

    /// When the broker cannot be reached for this long while tasks wait for their results,
    /// they fail with [`ClusterError::BrokerLost`] (default 5 minutes).
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.broker_timeout = timeout;
        self
    }

    /// Connects to Redis and starts the reply reader and the broker check.
    pub fn connect(self) -> Result<ClusterPool, ClusterError> {
        if self.queue.is_empty() {
            return Err(ClusterError::Invalid("the queue name is empty".into()));
        }
        if self.chunksize == Some(0) {
            return Err(ClusterError::Invalid("chunksize must be at least 1".into()));
        }
        for (name, d) in [
            ("task_expiry", self.expiry),
            ("broker_check", self.broker_check),
            ("broker_timeout", self.broker_timeout),
        ] {
            if d.is_zero() {
                return Err(ClusterError::Invalid(format!("{name} must not be zero")));
            }
        }
        let redis = redis::Client::open(self.url.as_str()).map_err(broker)?;
        let mut con = envelope::connect(&redis, READ_TIMEOUT).map_err(broker)?;
        let keys = Keys::new(&self.queue);
        envelope::ensure_group(&mut con, &keys).map_err(broker)?;
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let client: String = id.iter().map(|b| format!("{b:02x}")).collect();
        // The reply stream exists from now on: workers report refused copies of this
        // client's tasks on it, but only on a stream that exists (none is made for a client
        // that is gone).
        redis::cmd("XADD")
            .arg(keys.replies(&client))
            .arg("*")
            .arg(WAKE)
            .arg(0)
            .query::<()>(&mut con)
            .map_err(broker)?;
        let reader_con = envelope::connect(&redis, BLOCK + READ_TIMEOUT).map_err(broker)?;
        let inner = Arc::new(Inner {
            keys,
            client,
            authkey: self.authkey,
            redis,
            con: Mutex::new(None),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            ledger: Ledger::new(),
            workers: self.workers,
            stop: AtomicBool::new(false),
            timeout: self.timeout,
            chunksize: self.chunksize,
            expiry: self.expiry,
            broker_check: self.broker_check,
            broker_timeout: self.broker_timeout,
            clock_offset: AtomicI64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            resubmitted: AtomicU64::new(0),
        });
        inner.sync_clock(&mut con).map_err(broker)?;
        *lock(&inner.con) = Some(con);
        let weak = Arc::downgrade(&inner);
        inner
            .ledger
            .set_canceller(move |job| weak.upgrade().is_some_and(|i| i.cancel_job(job)));
        // The pool first: if a thread cannot start, its drop stops the one already started.
        let mut pool = ClusterPool {
            inner,
            threads: Vec::new(),
        };
        let i = pool.inner.clone();
        pool.threads.push(spawn("cluster-replies", move || {
            read_replies(&i, reader_con)
        })?);
        let i = pool.inner.clone();
        pool.threads
            .push(spawn("cluster-check", move || check_broker(&i))?);
        Ok(pool)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ClusterError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| ClusterError::Invalid(format!("cannot start the thread {name}: {e}")))
}

/// The [`Pool`](multiproc::Pool) API across machines: tasks go to a Redis stream, workers
/// on any number of machines (the same binary, started with
/// [`run_worker_if_requested`](crate::run_worker_if_requested)) take them through a consumer
/// group, and results come back on this client's own reply stream.
///
/// A result is delivered exactly once even when a task ran twice (a worker died after
/// running it, another ran it again). Tasks are signed with the authkey together with this
/// client's id, their queue and their expiry, and workers refuse copies of them; replies not
/// signed with the authkey, or addressed to another client, are dropped
/// ([`rejected`](ClusterPool::rejected)). Tasks the broker lost are submitted again
/// ([`resubmitted`](ClusterPool::resubmitted)); when the broker stays unreachable, waiting
/// tasks fail with [`ClusterError::BrokerLost`], so no wait is endless.
#[derive(Debug)]
pub struct ClusterPool {
    inner: Arc<Inner>,
    /// The reply reader and the broker check.
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("tasks", &self.keys.tasks)
            .field("client", &self.client)
            .finish()
    }
}

impl ClusterPool {
    /// Connects with the defaults to the queue `queue` on the Redis at `url`
    /// (`redis://[user:password@]host:port/db`, `rediss://` with the `tls` feature,
    /// `redis+unix:///path`).
    pub fn connect(url: &str, queue: &str, authkey: &[u8]) -> Result<ClusterPool, ClusterError> {
        Self::builder(url, queue, authkey).connect()
    }

    /// A builder with the defaults.
    pub fn builder(url: &str, queue: &str, authkey: &[u8]) -> ClusterPoolBuilder {
        ClusterPoolBuilder {
            url: url.to_string(),
            queue: queue.to_string(),
            authkey: authkey.to_vec(),
            timeout: None,
            chunksize: None,
            expiry: DEFAULT_EXPIRY,
            broker_check: DEFAULT_BROKER_CHECK,
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            workers: 1,
        }
    }

    /// This pool's id, unique among clients: its reply stream is
    /// `mp:{queue}:replies:{id}`.
    pub fn id(&self) -> &str {
        &self.inner.client
    }

    /// What was refused: replies this pool dropped (not signed with the authkey, or
    /// addressed to another client), and copies of this pool's task entries that workers
    /// refused without running them (replayed, or past their expiry).
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Replies seen for tasks already answered (a task that ran twice, or the late reply of
    /// a worker whose task was taken over): dropped.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }

    /// Tasks submitted again because the broker lost them.
    pub fn resubmitted(&self) -> u64 {
        self.inner.resubmitted.load(Ordering::Relaxed)
    }

    /// Submits `items` (encoded) of `function` in chunks as one ledger job; the job.
    fn submit(
        &self,
        function: &str,
        items: Vec<Vec<u8>>,
        chunksize: usize,
    ) -> Result<u64, ClusterError> {
        if chunksize == 0 {
            return Err(ClusterError::Invalid("chunksize must be at least 1".into()));
        }
        let inner = &self.inner;
        let n = items.len();
        let mut tasks = Vec::new();
        let (job, sending) = {
            let mut st = lock(&inner.state);
            if st.closed {
                return Err(ClusterError::Closed);
            }
            let job = inner.ledger.open(n)?;
            let expires_ms = inner.broker_now() + inner.expiry.as_millis() as u64;
            let mut items = items.into_iter().peekable();
            let mut starts = Vec::new();
            let mut start = 0;
            while items.peek().is_some() {
                st.next += 1;
                let task = Task {
                    client: inner.client.clone(),
                    queue: inner.keys.queue.clone(),
                    id: st.next,
                    attempt: 0,
                    expires_ms,
                    function: function.to_string(),
                    items: items.by_ref().take(chunksize).map(ByteBuf::from).collect(),
                    timeout_ms: inner.timeout.map(|t| t.as_millis() as u64),
                };
                starts.push(start);
                start += task.items.len();
                tasks.push(task);
            }
            if tasks.is_empty() {
                return Ok(job);
            }
            let sending = match inner.seal(&tasks) {
                Ok(s) => s,
                Err(e) => {
                    drop(st);
                    self.abandon(job, n, e.clone());
                    return Err(e);
                }
            };
            for (task, start) in tasks.into_iter().zip(starts) {
                let sent = Sent::Sending;
                st.slots.insert(
                    task.id,
                    Slot {
                        task,
                        sent,
                        job,
                        start,
                    },
                );
            }
            (job, sending)
        };
        if let Err(e) = inner.go(&sending, false) {
            let mut st = lock(&inner.state);
            for (id, _) in &sending.tasks {
                st.slots.remove(id);
            }
            drop(st);
            self.abandon(job, n, e.clone());
            return Err(e);
        }
        Ok(job)
    }

    /// A job whose submission failed: nobody gets its handle.
    fn abandon(&self, job: u64, n: usize, e: ClusterError) {
        self.inner.ledger.record(job, 0, vec![Err(e); n]);
        drop(self.inner.ledger.map_result::<()>(job));
    }

    fn encode<A: Serialize>(
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Vec<u8>>, ClusterError> {
        items
            .into_iter()
            .map(|a| Ok(multiproc::codec::encode(&a)?))
            .collect()
    }

    fn default_chunksize(&self, n: usize) -> usize {
        self.inner
            .chunksize
            .unwrap_or_else(|| n.div_ceil(32).clamp(1, 256))
    }

    /// Runs `f(args)` on a worker and waits for the result.
    pub fn apply<F: Func<M>, M>(&self, f: &F, args: F::Args) -> Result<F::Output, ClusterError> {
        self.apply_async(f, args)?.get()
    }

    /// Runs `f(args)` on a worker; the result comes through the handle.
    pub fn apply_async<F: Func<M>, M>(
        &self,
        f: &F,
        args: F::Args,
    ) -> Result<AsyncResult<F::Output>, ClusterError> {
        let job = self.submit(f.registered_name(), Self::encode([args])?, 1)?;
        Ok(self.inner.ledger.async_result(job))
    }

    /// `f` over every item, in order; the first failing item's error is returned.
    pub fn map<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, ClusterError> {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Self::map) with `chunksize` items per task.
    pub fn map_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, ClusterError> {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// [`map_async`](Self::map_async) with `chunksize` items per task.
    pub fn map_async_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<MapResult<F::Output>, ClusterError> {
        let job = self.submit(f.registered_name(), Self::encode(items)?, chunksize)?;
        Ok(self.inner.ledger.map_result(job))
    }

    /// [`map`](Self::map) without waiting.
    pub fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, ClusterError> {
        let encoded = Self::encode(items)?;
        let chunksize = self.default_chunksize(encoded.len());
        let job = self.submit(f.registered_name(), encoded, chunksize)?;
        Ok(self.inner.ledger.map_result(job))
    }

    /// [`map`](Self::map) with a progress bar (the `progress` feature).
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn map_progress<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, ClusterError> {
        let items: Vec<_> = items.into_iter().collect();
        let n = items.len();
        let chunksize = self.default_chunksize(n);
        let bar = indicatif::ProgressBar::new(n as u64);
        let out = self
            .imap(f, items)
            .chunksize(chunksize)
            .inspect(|_| bar.inc(1))
            .collect();
        bar.finish();
        out
    }

    /// Results of `f` over `items` in order, lazily: chunks are submitted as the results are
    /// consumed (a bounded window ahead), so an endless input works.
    pub fn imap<F: Func<M>, M, I: IntoIterator<Item: AsArg<F::Args>>>(
        &self,
        f: &F,
        items: I,
    ) -> ClusterImap<'_, F::Output, I::IntoIter> {
        ClusterImap::new(self, f.registered_name(), items.into_iter(), true)
    }

    /// As [`imap`](Self::imap), results in the order they complete.
    pub fn imap_unordered<F: Func<M>, M, I: IntoIterator<Item: AsArg<F::Args>>>(
        &self,
        f: &F,
        items: I,
    ) -> ClusterImap<'_, F::Output, I::IntoIter> {
        ClusterImap::new(self, f.registered_name(), items.into_iter(), false)
    }

    /// No more submissions; tasks already submitted go on.
    pub fn close(&self) {
        lock(&self.inner.state).closed = true;
        self.inner.ledger.close();
    }

    /// Fails every waiting task that no worker claimed yet with [`ClusterError::Cancelled`]
    /// (a worker that reads its entry drops it); the others go on.
    pub fn cancel_pending(&self) {
        let ids: Vec<u64> = lock(&self.inner.state).slots.keys().copied().collect();
        let cancelled = self.inner.cancel_tasks(&ids);
        self.inner.settle(cancelled);
    }

    /// No more submissions; the waiting tasks no worker claimed are taken back, and every
    /// waiting task fails with [`ClusterError::Terminated`] now. Tasks that workers run go on
    /// there: their replies are dropped.
    pub fn terminate(&self) {
        self.close();
        let ids: Vec<u64> = lock(&self.inner.state).slots.keys().copied().collect();
        let cancelled = self.inner.cancel_tasks(&ids);
        let rest: Vec<Finished> = {
            let mut st = lock(&self.inner.state);
            let ids: Vec<u64> = st.slots.keys().copied().collect();
            ids.into_iter()
                .filter_map(|id| {
                    self.inner
                        .finish(&mut st, id, Err(ClusterError::Terminated))
                })
                .collect()
        };
        // Taken back or not, they end as terminated (as on a local pool).
        for mut f in cancelled.into_iter().chain(rest) {
            f.items
                .iter_mut()
                .for_each(|r| *r = Err(ClusterError::Terminated));
            self.inner.settle([f]);
        }
    }

    /// Waits until every submitted task has its result.
    pub fn join(&self) {
        let mut st = lock(&self.inner.state);
        while st.unfinished() {
            st = self
                .inner
                .done
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// As [`join`](Self::join), at most `timeout`; whether everything finished.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        let st = lock(&self.inner.state);
        let (st, _) = self
            .inner
            .done
            .wait_timeout_while(st, timeout, |s| s.unfinished())
            .unwrap_or_else(PoisonError::into_inner);
        !st.unfinished()
    }
}

impl Drop for ClusterPool {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.stop.store(true, Ordering::SeqCst);
        let replies = inner.keys.replies(&inner.client);
        let _ = inner.with_con(|con| {
            redis::cmd("XADD")
                .arg(&replies)
                .arg("*")
                .arg(WAKE)
                .arg(1)
                .query::<()>(con)
        });
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No reply will be read any more: the waiting tasks fail, as on a dropped local pool.
        let ended: Vec<Finished> = {
            let mut st = lock(&inner.state);
            let ids: Vec<u64> = st.slots.keys().copied().collect();
            ids.into_iter()
                .filter_map(|id| inner.finish(&mut st, id, Err(ClusterError::Terminated)))
                .collect()
        };
        inner.settle(ended);
        let _ = inner.with_con(|con| redis::cmd("DEL").arg(&replies).query::<()>(con));
    }
}

/// Reads this client's reply stream and fills the slots of the tasks.
fn read_replies(inner: &Inner, con: redis::Connection) {
    let key = inner.keys.replies(&inner.client);
    let mut con = Some(con);
    let mut last = "0-0".to_string();
    while !inner.stop.load(Ordering::SeqCst) {
        let c = match con.as_mut() {
            Some(c) => c,
            None => match envelope::connect(&inner.redis, BLOCK + READ_TIMEOUT) {
                Ok(c) => con.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let read: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1024)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query(c);
        let value = match read {
            Ok(v) => v,
            Err(_) => {
                con = None; // the broker restarted or the connection broke: reconnect
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let entries = envelope::read_entries(&value);
        if entries.is_empty() {
            continue;
        }
        let mut del = redis::cmd("XDEL");
        del.arg(&key);
        for entry in &entries {
            last.clone_from(&entry.0);
            del.arg(&entry.0);
            if envelope::field(entry, WAKE).is_none() {
                accept(inner, entry);
            }
        }
        let _ = del.query::<()>(c);
    }
}

/// Takes in one entry of the reply stream.
fn accept(inner: &Inner, entry: &envelope::Entry) {
    let reply = envelope::open::<Reply>(
        &inner.authkey,
        Kind::Reply,
        envelope::field(entry, PAYLOAD),
        envelope::field(entry, SIGNATURE),
    );
    let why = match reply {
        Err(why) => why,
        // A reply of another client copied here: its task N is not ours.
        Ok(r) if r.client != inner.client => "addressed to another client".to_string(),
        Ok(Reply {
            task,
            body: ReplyBody::Refused(why),
            ..
        }) => format!("a copy of task {task} was refused by a worker: {why}"),
        Ok(Reply {
            task,
            body: ReplyBody::Done(items),
            ..
        }) => {
            deliver(inner, task, items);
            return;
        }
    };
    inner.rejected.fetch_add(1, Ordering::Relaxed);
    eprintln!("multiproc-cluster: reply {} rejected: {why}", entry.0);
}

fn deliver(
    inner: &Inner,
    task: u64,
    items: Result<Vec<Result<ByteBuf, TaskFailure>>, TaskFailure>,
) {
    let outcome: TaskOutcome = items
        .map(|items| {
            items
                .into_iter()
                .map(|r| r.map(ByteBuf::into_vec).map_err(ClusterError::from))
                .collect()
        })
        .map_err(ClusterError::from);
    // Already answered (the task ran twice), or cancelled or terminated: a duplicate.
    let finished = inner.finish(&mut lock(&inner.state), task, outcome);
    match finished {
        Some(f) => inner.settle([f]),
        None => {
            inner.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A task waiting for its result, as the broker check asks about it.
struct Waiting {
    id: u64,
    attempt: u32,
    expires_ms: u64,
    /// Its entry; `None` when its `XADD` failed.
    entry: Option<String>,
}

/// What the broker holds of a waiting task.
enum Verdict {
    /// Its entry waits or runs, or it ran (its reply is on the way).
    Held,
    /// Not started before its expiry: it never will.
    Expired,
    /// Neither its entry nor its claim: the broker lost it.
    Lost,
}

/// The broker check: every `broker_check`, asks the broker about the tasks waiting for
/// their results; submits again the ones it lost, fails the ones that expired, and fails
/// them all with `BrokerLost` once the broker has been unreachable for `broker_timeout`.
fn check_broker(inner: &Inner) {
    let mut con = None;
    let mut last_seen = Instant::now();
    while crate::nap(&inner.stop, inner.broker_check) {
        let waiting: Vec<Waiting> = lock(&inner.state)
            .slots
            .iter()
            .filter_map(|(&id, slot)| {
                Some(Waiting {
                    id,
                    attempt: slot.task.attempt,
                    expires_ms: slot.task.expires_ms,
                    entry: match &slot.sent {
                        Sent::Sending => return None,
                        Sent::Entry(e) => Some(e.clone()),
                        Sent::Failed => None,
                    },
                })
            })
            .collect();
        if waiting.is_empty() {
            last_seen = Instant::now();
            continue;
        }
        match inspect(inner, &mut con, &waiting) {
            Ok(verdicts) => {
                last_seen = Instant::now();
                act(inner, &waiting, &verdicts);
            }
            Err(e) => {
                con = None;
                if last_seen.elapsed() >= inner.broker_timeout {
                    let why = format!(
                        "unreachable for {:?} while tasks waited: {e}",
                        inner.broker_timeout
                    );
                    let lost: Vec<Finished> = {
                        let mut st = lock(&inner.state);
                        waiting
                            .iter()
                            .filter_map(|w| {
                                let e = ClusterError::BrokerLost(why.clone());
                                inner.finish(&mut st, w.id, Err(e))
                            })
                            .collect()
                    };
                    inner.settle(lost);
                }
            }
        }
    }
}

/// Asks the broker what it holds of each of `waiting`.
fn inspect(
    inner: &Inner,
    con: &mut Option<redis::Connection>,
    waiting: &[Waiting],
) -> Result<Vec<Verdict>, ClusterError> {
    let c = match con {
        Some(c) => c,
        None => con.insert(envelope::connect(&inner.redis, READ_TIMEOUT).map_err(broker)?),
    };
    let mut verdicts = Vec::with_capacity(waiting.len());
    for batch in waiting.chunks(CHECK_BATCH) {
        // Entry first, claim second, the clock last: a worker retires an entry and marks its
        // claim done in one transaction, and refuses an expired task only by the broker's
        // clock; so a task missing from both is lost, and one refused as expired shows as
        // expired here.
        let mut p = redis::pipe();
        for w in batch {
            match &w.entry {
                Some(e) => p.cmd("XRANGE").arg(&inner.keys.tasks).arg(e).arg(e),
                None => p.cmd("ECHO").arg(""),
            };
            p.cmd("EXISTS")
                .arg(inner.keys.claim(&inner.client, w.id, w.attempt));
        }
        p.cmd("TIME");
        let mut answers: Vec<redis::Value> = p.query(c).map_err(broker)?;
        let now = match answers.pop() {
            Some(redis::Value::Array(t)) if t.len() == 2 => {
                let n = |v: &redis::Value| -> u64 {
                    envelope::bytes(v)
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                n(&t[0]) * 1000 + n(&t[1]) / 1000
            }
            _ => {
                let e = (redis::ErrorKind::UnexpectedReturnType, "TIME gave no time");
                return Err(broker(redis::RedisError::from(e)));
            }
        };
        for (w, pair) in batch.iter().zip(answers.chunks(2)) {
            let present = matches!(pair.first(), Some(redis::Value::Array(a)) if !a.is_empty());
            let claimed = matches!(pair.get(1), Some(redis::Value::Int(n)) if *n > 0);
            verdicts.push(if claimed {
                Verdict::Held
            } else if now >= w.expires_ms {
                Verdict::Expired
            } else if present {
                Verdict::Held
            } else {
                Verdict::Lost
            });
        }
    }
    Ok(verdicts)
}

/// Fails the expired tasks of `waiting` and submits the lost ones again (a new submission:
/// the next attempt, a new expiry).
fn act(inner: &Inner, waiting: &[Waiting], verdicts: &[Verdict]) {
    let mut finished = Vec::new();
    let sending = {
        let mut st = lock(&inner.state);
        let mut again = Vec::new();
        let expires_ms = inner.broker_now() + inner.expiry.as_millis() as u64;
        for (w, v) in waiting.iter().zip(verdicts) {
            match v {
                Verdict::Held => {}
                Verdict::Expired => {
                    let e = ClusterError::Expired(inner.expiry);
                    finished.extend(inner.finish(&mut st, w.id, Err(e)));
                }
                Verdict::Lost => {
                    if let Some(slot) = st.slots.get_mut(&w.id)
                        && slot.task.attempt == w.attempt
                    {
                        slot.task.attempt += 1;
                        slot.task.expires_ms = expires_ms;
                        slot.sent = Sent::Sending;
                        again.push(w.id);
                    }
                }
            }
        }
        let tasks = again
            .iter()
            .filter_map(|id| st.slots.get(id).map(|s| &s.task));
        match inner.seal(tasks) {
            _ if again.is_empty() => None,
            Ok(s) => Some(s),
            Err(e) => {
                for id in again {
                    finished.extend(inner.finish(&mut st, id, Err(e.clone())));
                }
                None
            }
        }
    };
    inner.settle(finished);
    let Some(sending) = sending else {
        return;
    };
    let n = sending.tasks.len() as u64;
    eprintln!("multiproc-cluster: the broker lost {n} waiting tasks: submitted again");
    inner.resubmitted.fetch_add(n, Ordering::Relaxed);
    let _ = inner.go(&sending, true);
}

/// Lazy results of [`imap`](ClusterPool::imap)/[`imap_unordered`](ClusterPool::imap_unordered):
/// each item is that task's own result. Chunks are submitted as the results are consumed
/// (a bounded window ahead), so an endless input works; dropping the iterator leaves the
/// submitted chunks to run.
pub struct ClusterImap<'a, R, I> {
    pool: &'a ClusterPool,
    function: &'static str,
    items: I,
    ordered: bool,
    chunksize: usize,
    /// Submitted chunks (a ledger job each), oldest first.
    inflight: VecDeque<(u64, MapResult<R>)>,
    /// Results ready to hand out.
    ready: VecDeque<Result<R, ClusterError>>,
    failed: bool,
}

impl<R, I> std::fmt::Debug for ClusterImap<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterImap")
            .field("function", &self.function)
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

impl<'a, R: DeserializeOwned, I: Iterator<Item: Serialize>> ClusterImap<'a, R, I> {
    fn new(pool: &'a ClusterPool, function: &'static str, items: I, ordered: bool) -> Self {
        ClusterImap {
            pool,
            function,
            items,
            ordered,
            chunksize: 1,
            inflight: VecDeque::new(),
            ready: VecDeque::new(),
            failed: false,
        }
    }

    /// Items per task (default 1; 0 is an error, reported by the first `next`).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n;
        self
    }

    /// Keeps the window of submitted chunks full.
    fn refill(&mut self) -> Result<(), ClusterError> {
        while self.inflight.len() < IMAP_WINDOW {
            let chunk: Vec<I::Item> = self.items.by_ref().take(self.chunksize.max(1)).collect();
            if chunk.is_empty() {
                break;
            }
            let job =
                self.pool
                    .submit(self.function, ClusterPool::encode(chunk)?, self.chunksize)?;
            let handle = self.pool.inner.ledger.map_result(job);
            self.inflight.push_back((job, handle));
        }
        Ok(())
    }
}

impl<R: DeserializeOwned, I: Iterator<Item: Serialize>> Iterator for ClusterImap<'_, R, I> {
    type Item = Result<R, ClusterError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.failed {
                return None;
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                self.ready.push_back(Err(e));
                continue;
            }
            if self.inflight.is_empty() {
                return None;
            }
            let i = match self.ordered {
                true => 0,
                false => {
                    let jobs: Vec<u64> = self.inflight.iter().map(|j| j.0).collect();
                    self.pool.inner.ledger.wait_any(&jobs, None)?
                }
            };
            let (_, handle) = self.inflight.remove(i)?;
            self.ready.extend(handle.get_each());
        }
    }
}

/// The cluster as an [`Executor`](multiproc::Executor): the same code as on a local pool.
/// What differs: a task may run on any machine that runs a worker of the queue (a binary with
/// the same registered functions); a round trip goes through the broker (milliseconds, not
/// microseconds); [`TaskError::WorkerDied`] does not reach the client (a task that kills its
/// worker is tried again, then dead-lettered: [`TaskError::DeadLetter`]), while
/// [`TaskError::Expired`], [`TaskError::BrokerLost`] and [`TaskError::Broker`] can occur;
/// [`cancel`](multiproc::AsyncResult::cancel) takes a task back until a worker claims it;
/// `join` waits for the results of the submitted tasks (the workers go on serving).
impl multiproc::Executor for ClusterPool {
    type Imap<'a, R, I>
        = ClusterImap<'a, R, I>
    where
        R: DeserializeOwned,
        I: Iterator<Item: Serialize>;

    fn workers(&self) -> usize {
        self.inner.workers
    }

    fn apply_async<F: Func<M>, M>(
        &self,
        f: &F,
        args: F::Args,
    ) -> Result<AsyncResult<F::Output>, TaskError> {
        ClusterPool::apply_async(self, f, args)
    }

    fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError> {
        ClusterPool::map_async(self, f, items)
    }

    fn map_async_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<MapResult<F::Output>, TaskError> {
        ClusterPool::map_async_chunked(self, f, items, chunksize)
    }

    fn imap_chunked<F: Func<M>, M, I>(
        &self,
        f: &F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> ClusterImap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        ClusterImap::new(self, f.registered_name(), items.into_iter(), ordered).chunksize(chunksize)
    }

    fn close(&self) {
        ClusterPool::close(self)
    }

    fn terminate(&self) {
        ClusterPool::terminate(self)
    }

    fn join(&self) -> Result<(), TaskError> {
        ClusterPool::join(self);
        Ok(())
    }

    fn cancel_pending(&self) {
        ClusterPool::cancel_pending(self)
    }
}
