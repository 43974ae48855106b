//! The submitting side: `ClusterPool`.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multiproc::Func;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::envelope::{self, Keys, PAYLOAD, Reply, SIGNATURE, Task};
use crate::error::ClusterError;

/// How many chunks an `imap` keeps submitted ahead of what the caller consumed.
const IMAP_WINDOW: usize = 64;

/// The field of the entry that wakes the reply reader when the pool is dropped.
const WAKE: &str = "wake";

/// Each item's encoded result, or the failure of its whole task.
type TaskOutcome = Result<Vec<Result<Vec<u8>, ClusterError>>, ClusterError>;

#[derive(Default)]
struct State {
    next: u64,
    /// Submitted tasks: `None` until the reply is in.
    slots: HashMap<u64, Option<TaskOutcome>>,
    closed: bool,
}

struct Inner {
    keys: Keys,
    client: String,
    authkey: Vec<u8>,
    redis: redis::Client,
    /// The connection submissions go through (reopened after an error).
    con: Mutex<Option<redis::Connection>>,
    state: Mutex<State>,
    done: Condvar,
    stop: AtomicBool,
    timeout: Option<Duration>,
    chunksize: Option<usize>,
    rejected: AtomicU64,
    duplicates: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`ClusterPool`]: `ClusterPool::builder(url, queue, key).chunksize(64).connect()`.
#[derive(Debug, Clone)]
pub struct ClusterPoolBuilder {
    url: String,
    queue: String,
    authkey: Vec<u8>,
    timeout: Option<Duration>,
    chunksize: Option<usize>,
}

impl ClusterPoolBuilder {
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

    /// Connects to Redis and starts the reply reader.
    pub fn connect(self) -> Result<ClusterPool, ClusterError> {
        if self.queue.is_empty() {
            return Err(ClusterError::Invalid("the queue name is empty".into()));
        }
        if self.chunksize == Some(0) {
            return Err(ClusterError::Invalid("chunksize must be at least 1".into()));
        }
        let redis = redis::Client::open(self.url.as_str())?;
        let mut con = redis.get_connection()?;
        let keys = Keys::new(&self.queue);
        envelope::ensure_group(&mut con, &keys)?;
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let client: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let inner = Arc::new(Inner {
            keys,
            client,
            authkey: self.authkey,
            redis,
            con: Mutex::new(Some(con)),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
            timeout: self.timeout,
            chunksize: self.chunksize,
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let reader_con = inner.redis.get_connection()?;
        let i = inner.clone();
        let reader = std::thread::Builder::new()
            .name("cluster-replies".into())
            .spawn(move || read_replies(&i, reader_con))
            .map_err(|e| ClusterError::Invalid(format!("cannot start the reply reader: {e}")))?;
        Ok(ClusterPool {
            inner,
            reader: Some(reader),
        })
    }
}

/// The [`Pool`](multiproc::Pool) API across machines: tasks go to a Redis stream, workers
/// on any number of machines (the same binary, started with
/// [`run_worker_if_requested`](crate::run_worker_if_requested)) take them through a consumer
/// group, and results come back on this client's own reply stream.
///
/// A result is delivered exactly once even when a task ran twice (a worker died after
/// running it, another ran it again). Tasks are signed with the authkey; replies that are
/// not signed with it are rejected ([`rejected`](ClusterPool::rejected)).
#[derive(Debug)]
pub struct ClusterPool {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
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
        }
    }

    /// Replies seen that were not signed with the authkey (and were dropped).
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Replies seen for tasks already answered (a task that ran twice): dropped.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }

    /// Submits `items` (encoded) of `function` in chunks; the task ids.
    fn submit(
        &self,
        function: &str,
        items: Vec<Vec<u8>>,
        chunksize: usize,
    ) -> Result<Vec<u64>, ClusterError> {
        let inner = &self.inner;
        let mut ids = Vec::new();
        let mut pipe = redis::pipe();
        {
            let mut st = lock(&inner.state);
            if st.closed {
                return Err(ClusterError::Closed);
            }
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                st.next += 1;
                let id = st.next;
                let task = Task {
                    id,
                    client: inner.client.clone(),
                    function: function.to_string(),
                    items: items.by_ref().take(chunksize).map(ByteBuf::from).collect(),
                    timeout_ms: inner.timeout.map(|t| t.as_millis() as u64),
                };
                let (payload, tag) =
                    envelope::seal(&inner.authkey, &task).map_err(ClusterError::Codec)?;
                pipe.cmd("XADD")
                    .arg(&inner.keys.tasks)
                    .arg("*")
                    .arg(PAYLOAD)
                    .arg(payload)
                    .arg(SIGNATURE)
                    .arg(tag)
                    .ignore();
                st.slots.insert(id, None);
                ids.push(id);
            }
        }
        let sent = self.with_con(|con| pipe.query::<()>(con));
        if let Err(e) = sent {
            let mut st = lock(&inner.state);
            for id in &ids {
                st.slots.remove(id);
            }
            return Err(e);
        }
        Ok(ids)
    }

    /// Runs `f` on the submission connection, reconnecting once if it was lost.
    fn with_con<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let mut con = lock(&self.inner.con);
        for attempt in 0..2 {
            if con.is_none() {
                *con = Some(self.inner.redis.get_connection()?);
            }
            let c = con.as_mut().expect("connected above");
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *con = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClusterError::Redis(
            "the connection to Redis was lost".into(),
        ))
    }

    fn encode<A: Serialize>(
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Vec<u8>>, ClusterError> {
        items
            .into_iter()
            .map(|a| postcard::to_stdvec(&a).map_err(|e| ClusterError::Codec(e.to_string())))
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
    ) -> Result<ClusterResult<F::Output>, ClusterError> {
        let ids = self.submit(f.registered_name(), Self::encode([args])?, 1)?;
        Ok(ClusterResult::new(self.inner.clone(), ids))
    }

    /// `f` over every item, in order; the first failing item's error is returned.
    pub fn map<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<Vec<F::Output>, ClusterError> {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Self::map) with `chunksize` items per task.
    pub fn map_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = F::Args>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, ClusterError> {
        if chunksize == 0 {
            return Err(ClusterError::Invalid("chunksize must be at least 1".into()));
        }
        let ids = self.submit(f.registered_name(), Self::encode(items)?, chunksize)?;
        ClusterMapResult::new(self.inner.clone(), ids).get()
    }

    /// [`map`](Self::map) without waiting.
    pub fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<ClusterMapResult<F::Output>, ClusterError> {
        let encoded = Self::encode(items)?;
        let chunksize = self.default_chunksize(encoded.len());
        let ids = self.submit(f.registered_name(), encoded, chunksize)?;
        Ok(ClusterMapResult::new(self.inner.clone(), ids))
    }

    /// [`map`](Self::map) with a progress bar (the `progress` feature).
    #[cfg(feature = "progress")]
    pub fn map_progress<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<Vec<F::Output>, ClusterError> {
        let items: Vec<F::Args> = items.into_iter().collect();
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
    pub fn imap<F: Func<M>, M, I: IntoIterator<Item = F::Args>>(
        &self,
        f: &F,
        items: I,
    ) -> ClusterImap<'_, F::Args, F::Output, I::IntoIter> {
        ClusterImap::new(self, f.registered_name(), items.into_iter(), true)
    }

    /// As [`imap`](Self::imap), results in the order they complete.
    pub fn imap_unordered<F: Func<M>, M, I: IntoIterator<Item = F::Args>>(
        &self,
        f: &F,
        items: I,
    ) -> ClusterImap<'_, F::Args, F::Output, I::IntoIter> {
        ClusterImap::new(self, f.registered_name(), items.into_iter(), false)
    }

    /// No more submissions; tasks already submitted go on.
    pub fn close(&self) {
        lock(&self.inner.state).closed = true;
    }

    /// Waits until every submitted task has its result.
    pub fn join(&self) {
        let mut st = lock(&self.inner.state);
        while st.slots.values().any(Option::is_none) {
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
            .wait_timeout_while(st, timeout, |s| s.slots.values().any(Option::is_none))
            .unwrap_or_else(PoisonError::into_inner);
        !st.slots.values().any(Option::is_none)
    }
}

impl Drop for ClusterPool {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.stop.store(true, Ordering::SeqCst);
        let replies = inner.keys.replies(&inner.client);
        let _ = self.with_con(|con| {
            redis::cmd("XADD")
                .arg(&replies)
                .arg("*")
                .arg(WAKE)
                .arg(1)
                .query::<()>(con)
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = self.with_con(|con| redis::cmd("DEL").arg(&replies).query::<()>(con));
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
            None => match inner.redis.get_connection() {
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
            .arg(1000)
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
            if envelope::field(entry, WAKE).is_some() {
                continue;
            }
            match envelope::open::<Reply>(
                &inner.authkey,
                envelope::field(entry, PAYLOAD),
                envelope::field(entry, SIGNATURE),
            ) {
                Ok(reply) => deliver(inner, reply),
                Err(why) => {
                    inner.rejected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("multiproc-cluster: reply {} rejected: {why}", entry.0);
                }
            }
        }
        let _ = del.query::<()>(c);
    }
}

fn deliver(inner: &Inner, reply: Reply) {
    let outcome: TaskOutcome = reply
        .items
        .map(|items| {
            items
                .into_iter()
                .map(|r| r.map(ByteBuf::into_vec).map_err(ClusterError::from))
                .collect()
        })
        .map_err(ClusterError::from);
    let mut st = lock(&inner.state);
    match st.slots.get_mut(&reply.task) {
        Some(slot @ None) => {
            *slot = Some(outcome);
            drop(st);
            inner.done.notify_all();
        }
        // Already answered (the task ran twice), or taken and forgotten.
        _ => {
            inner.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits for task `id` and takes its outcome.
fn take(inner: &Inner, id: u64, deadline: Option<Instant>) -> Option<TaskOutcome> {
    let mut st = lock(&inner.state);
    loop {
        match st.slots.get(&id) {
            Some(Some(_)) => return st.slots.remove(&id).flatten(),
            None => {
                return Some(Err(ClusterError::Invalid(
                    "the result was already taken".into(),
                )));
            }
            Some(None) => {}
        }
        match deadline {
            None => st = inner.done.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                st = inner
                    .done
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

fn decode<R: DeserializeOwned>(item: Result<Vec<u8>, ClusterError>) -> Result<R, ClusterError> {
    postcard::from_bytes(&item?).map_err(|e| ClusterError::Codec(e.to_string()))
}

/// The tasks of one submission, and how to collect their items.
struct Pending {
    inner: Arc<Inner>,
    tasks: Vec<u64>,
}

impl Pending {
    fn ready(&self) -> bool {
        let st = lock(&self.inner.state);
        self.tasks
            .iter()
            .all(|t| st.slots.get(t).is_none_or(Option::is_some))
    }

    /// Every item's own result, in order, waiting at most until `deadline`.
    fn items(
        &self,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<Vec<Result<Vec<u8>, ClusterError>>, ClusterError> {
        let mut all = Vec::new();
        for &t in &self.tasks {
            match take(&self.inner, t, deadline) {
                None => return Err(ClusterError::WaitTimeout(timeout)),
                Some(Ok(items)) => all.extend(items),
                Some(Err(e)) => all.push(Err(e)),
            }
        }
        Ok(all)
    }
}

/// The pending result of [`apply_async`](ClusterPool::apply_async).
pub struct ClusterResult<R> {
    pending: Pending,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for ClusterResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterResult")
            .field("tasks", &self.pending.tasks)
            .finish()
    }
}

impl<R: DeserializeOwned> ClusterResult<R> {
    fn new(inner: Arc<Inner>, tasks: Vec<u64>) -> Self {
        ClusterResult {
            pending: Pending { inner, tasks },
            _r: PhantomData,
        }
    }

    /// Whether the result is in.
    pub fn ready(&self) -> bool {
        self.pending.ready()
    }

    /// Waits for the result.
    pub fn get(self) -> Result<R, ClusterError> {
        self.one(None, Duration::ZERO)
    }

    /// Waits at most `timeout` ([`ClusterError::WaitTimeout`] after; the task goes on).
    pub fn get_timeout(self, timeout: Duration) -> Result<R, ClusterError> {
        self.one(Some(Instant::now() + timeout), timeout)
    }

    fn one(&self, deadline: Option<Instant>, timeout: Duration) -> Result<R, ClusterError> {
        self.pending
            .items(deadline, timeout)?
            .into_iter()
            .next()
            .map(decode)
            .unwrap_or_else(|| Err(ClusterError::Invalid("no result".into())))
    }
}

/// The pending results of [`map_async`](ClusterPool::map_async).
pub struct ClusterMapResult<R> {
    pending: Pending,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for ClusterMapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMapResult")
            .field("tasks", &self.pending.tasks)
            .finish()
    }
}

impl<R: DeserializeOwned> ClusterMapResult<R> {
    fn new(inner: Arc<Inner>, tasks: Vec<u64>) -> Self {
        ClusterMapResult {
            pending: Pending { inner, tasks },
            _r: PhantomData,
        }
    }

    /// Whether every result is in.
    pub fn ready(&self) -> bool {
        self.pending.ready()
    }

    /// Waits for every item; the first failing item's error is returned.
    pub fn get(self) -> Result<Vec<R>, ClusterError> {
        self.pending
            .items(None, Duration::ZERO)?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// [`get`](Self::get), waiting at most `timeout`.
    pub fn get_timeout(self, timeout: Duration) -> Result<Vec<R>, ClusterError> {
        self.pending
            .items(Some(Instant::now() + timeout), timeout)?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Every item's own result, in order.
    pub fn get_each(self) -> Vec<Result<R, ClusterError>> {
        match self.pending.items(None, Duration::ZERO) {
            Ok(items) => items.into_iter().map(decode).collect(),
            Err(e) => vec![Err(e)],
        }
    }
}

/// Lazy results of [`imap`](ClusterPool::imap)/[`imap_unordered`](ClusterPool::imap_unordered).
pub struct ClusterImap<'a, A, R, I> {
    pool: &'a ClusterPool,
    function: &'static str,
    items: I,
    ordered: bool,
    chunksize: usize,
    /// Submitted tasks, oldest first.
    inflight: VecDeque<u64>,
    /// Results ready to hand out.
    ready: VecDeque<Result<R, ClusterError>>,
    failed: bool,
    _a: PhantomData<fn(A)>,
}

impl<A, R, I> std::fmt::Debug for ClusterImap<'_, A, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterImap")
            .field("function", &self.function)
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

impl<'a, A: Serialize, R: DeserializeOwned, I: Iterator<Item = A>> ClusterImap<'a, A, R, I> {
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
            _a: PhantomData,
        }
    }

    /// Items per task (default 1).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    /// Keeps the window of submitted chunks full.
    fn refill(&mut self) -> Result<(), ClusterError> {
        while self.inflight.len() < IMAP_WINDOW {
            let chunk: Vec<A> = self.items.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                break;
            }
            let ids =
                self.pool
                    .submit(self.function, ClusterPool::encode(chunk)?, self.chunksize)?;
            self.inflight.extend(ids);
        }
        Ok(())
    }

    fn accept(&mut self, outcome: TaskOutcome) {
        match outcome {
            Ok(items) => self.ready.extend(items.into_iter().map(decode)),
            Err(e) => self.ready.push_back(Err(e)),
        }
    }
}

impl<A: Serialize, R: DeserializeOwned, I: Iterator<Item = A>> Iterator
    for ClusterImap<'_, A, R, I>
{
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
                return Some(Err(e));
            }
            if self.inflight.is_empty() {
                return None;
            }
            let inner = &self.pool.inner;
            if self.ordered {
                let id = self.inflight.pop_front()?;
                let outcome = take(inner, id, None)?;
                self.accept(outcome);
            } else {
                // The first of the in-flight tasks to complete.
                let mut st = lock(&inner.state);
                loop {
                    let done = self
                        .inflight
                        .iter()
                        .position(|t| matches!(st.slots.get(t), Some(Some(_)) | None));
                    if let Some(i) = done {
                        let id = self.inflight.remove(i)?;
                        let outcome = st.slots.remove(&id).flatten().unwrap_or_else(|| {
                            Err(ClusterError::Invalid("the result was already taken".into()))
                        });
                        drop(st);
                        self.accept(outcome);
                        break;
                    }
                    st = inner.done.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}
