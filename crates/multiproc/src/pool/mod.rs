//! [`Pool`]: a pool of worker processes with `map`, `imap`, `apply_async`... that never hangs.
//!
//! The parent knows which worker holds which task, so a worker that dies (SIGKILL, a segfault
//! in FFI code, `abort`, the OOM killer) fails exactly its task with
//! [`TaskError::WorkerDied`] and is replaced; every other task completes. A task past the
//! pool's task timeout has its worker killed and fails with [`TaskError::Timeout`]; one past the
//! workers' memory limit or its CPU-time limit fails with [`TaskError::MemoryLimit`] or
//! [`TaskError::CpuTimeLimit`], and a worker that leaked past
//! [`max_memory_per_child`](PoolBuilder::max_memory_per_child) is replaced. A panicking
//! task comes back as [`TaskError::Panicked`] and the worker goes on. A failing initializer is
//! reported once ([`TaskError::Initializer`]), without a respawn storm. Dropping the pool
//! terminates its workers; none outlives the parent (they are daemons).
//!
//! Tasks are functions registered with `#[multiproc::func]`, under any start method. Pending
//! tasks wait in the parent's memory, not in pipes: a million queued tasks use no extra file
//! descriptors. Pools nest: a worker may start a pool of its own.
//!
//! ```
//! use multiproc::Pool;
//!
//! #[multiproc::func]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[multiproc::main]
//! fn main() -> multiproc::Result<()> {
//!     let pool = Pool::builder().processes(4).build()?;
//!     let squares: Vec<u64> = pool.map(&square, 0..1000)?;
//!     assert_eq!(squares[10], 100);
//!     for r in pool.imap_unordered(&square, 0..100).chunksize(8) {
//!         let _ = r?;
//!     }
//!     let h = pool.apply_async(&square, 7)?;
//!     assert_eq!(h.get_timeout(std::time::Duration::from_secs(5))?, 49);
//!     pool.close();
//!     pool.join()?;
//!     Ok(())
//! }
//! ```

mod handler;
mod ledger;
mod progress;
mod reports;
mod result;
mod state;
mod thread;
mod wire;
mod worker;

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use ledger::Ledger;
#[doc(hidden)]
pub use result::Encoded;
#[cfg(feature = "tokio")]
pub use result::ImapStream;
pub use result::{AsyncResult, Imap, MapResult};
pub use thread::{ThreadPool, ThreadPoolBuilder};

use crate::error::{NotRegistered, TaskError};
use crate::process::registry::{self, Func};
use crate::process::setup::Setup;
use crate::process::{Output, Resource, StartMethod};
use handler::Config;
use state::{Chunk, Inner, Reader, Shared, State, Wake};
use wire::Batch;
use worker::WorkerLimits;

/// An item a pool can pass as argument `T`: `T` itself, a reference to it, `&str` for a
/// `String` and `&[T]` for a `Vec<T>` (they encode alike), so that borrowed collections need
/// no `.cloned()`.
///
/// ```
/// #[multiproc::func]
/// fn shout(s: String) -> String { s.to_uppercase() }
///
/// # fn main() -> Result<(), multiproc::TaskError> {
/// let pool = multiproc::Pool::new(2)?;
/// let names = vec!["ada".to_string(), "grace".to_string()];
/// assert_eq!(pool.map(&shout, &names)?, ["ADA", "GRACE"]);   // &String
/// assert_eq!(pool.map(&shout, ["alan"])?, ["ALAN"]);           // &str
/// # Ok(()) }
/// ```
pub trait AsArg<T>: Serialize {}

impl<T: Serialize> AsArg<T> for T {}
impl<T: Serialize> AsArg<T> for &T {}
impl AsArg<String> for &str {}
impl<T: Serialize> AsArg<Vec<T>> for &[T] {}

/// Configures a [`Pool`]: `Pool::builder().processes(4).initializer(&init, cfg).build()`.
#[derive(Clone)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<(String, Vec<u8>)>,
    init_error: Option<TaskError>,
    maxtasks: u64,
    task_timeout: Option<Duration>,
    method: Option<StartMethod>,
    closure: Option<handler::ClosureRunner>,
    setup: Setup,
    limits: WorkerLimits,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("maxtasks", &self.maxtasks)
            .finish()
    }
}

/// The name a closure pool's tasks go by (no registered function has it: a path of Rust).
pub(crate) const CLOSURE: &str = "<closure>";

impl PoolBuilder {
    /// The number of worker processes (default [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A registered function each worker runs once with `args` before any task. If it fails
    /// (panics, or its worker dies), `build` reports [`TaskError::Initializer`].
    pub fn initializer<F: Func<M>, M>(mut self, f: &F, args: F::Args) -> Self {
        let name = f.registered_name();
        if registry::lookup(name).is_none() {
            self.init_error = Some(NotRegistered(name.into()).into());
        }
        match crate::codec::encode(&args) {
            Ok(bytes) => self.init = Some((name.to_string(), bytes)),
            Err(e) => self.init_error = Some(e.into()),
        }
        self
    }

    /// Replace each worker after this many tasks (chunks) — 0, the default, never.
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.maxtasks = n;
        self
    }

    /// A task running longer than this has its worker killed (and replaced) and fails with
    /// [`TaskError::Timeout`]. With chunks, the limit is per item of the chunk.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Each worker cannot use more than `bytes` of memory: a task whose allocation goes past it
    /// fails with [`TaskError::MemoryLimit`], its worker is replaced, and the other tasks are
    /// not affected. See [`Builder::memory_limit`](crate::Builder::memory_limit).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let pool = multiproc::Pool::builder()
    ///     .processes(8)
    ///     .memory_limit(1 << 30)
    ///     .max_memory_per_child(700 << 20)
    ///     .cpu_time_limit(Duration::from_secs(60))
    ///     .build()?;
    /// # Ok::<(), multiproc::TaskError>(())
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.setup.memory_limit = Some(bytes);
        self
    }

    /// A worker whose resident memory is above `bytes` after a chunk of tasks (a task that
    /// leaks) is replaced, as after [`maxtasksperchild`](Self::maxtasksperchild): no task
    /// fails. Celery's `worker_max_memory_per_child`.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.limits.max_resident = Some(bytes);
        self
    }

    /// Each task may use this much CPU time (whole seconds, rounded up): past it the kernel
    /// ends its worker (`SIGXCPU`), the task fails with [`TaskError::CpuTimeLimit`] and the
    /// worker is replaced. Counted per task (per item of a chunk), not over a worker's life.
    pub fn cpu_time_limit(mut self, limit: Duration) -> Self {
        self.limits.cpu_per_task = Some(limit);
        self
    }

    /// Sets the workers' `soft` and `hard` limit of `resource`; see
    /// [`Builder::rlimit`](crate::Builder::rlimit).
    pub fn rlimit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.setup.rlimits.push((resource, soft, hard));
        self
    }

    /// The workers' niceness; see [`Builder::nice`](crate::Builder::nice).
    pub fn nice(mut self, nice: i32) -> Self {
        self.setup.nice = Some(nice);
        self
    }

    /// The workers' working directory.
    pub fn current_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.setup.current_dir = Some(dir.into());
        self
    }

    /// The workers start with an empty environment (plus what [`env`](Self::env) sets after).
    pub fn env_clear(mut self) -> Self {
        self.setup.env_clear = true;
        self.setup.env.clear();
        self
    }

    /// Sets environment variable `key` to `value` in the workers.
    pub fn env(
        mut self,
        key: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Self {
        self.setup.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes environment variable `key` in the workers.
    pub fn env_remove(mut self, key: impl Into<std::ffi::OsString>) -> Self {
        self.setup.env.push((key.into(), None));
        self
    }

    /// Runs the workers as user `uid` (needs root, else `build` fails with
    /// [`TaskError::Io`] naming the option).
    pub fn user(mut self, uid: u32) -> Self {
        self.setup.user = Some(uid);
        self
    }

    /// Runs the workers as group `gid` (needs root, as [`user`](Self::user)).
    pub fn group(mut self, gid: u32) -> Self {
        self.setup.group = Some(gid);
        self
    }

    /// Where the workers' standard output goes: [`Output::Prefixed`] names the worker on each
    /// line. [`Output::Capture`] is refused by `build` (nothing would read it).
    pub fn stdout(mut self, output: Output) -> Self {
        self.setup.stdout = output;
        self
    }

    /// Where the workers' standard error goes; as [`stdout`](Self::stdout).
    pub fn stderr(mut self, output: Output) -> Self {
        self.setup.stderr = output;
        self
    }

    /// The start method of the workers (default [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A pool whose workers are forks of this process running closure `f` on every task:
    /// the fork start method, the one way to run a closure (it is in the workers' memory from
    /// the fork on; replacements are forked again). In a program with other threads, the
    /// hazards of [`Process::fork`](crate::Process::fork) apply.
    ///
    /// ```
    /// let offset = 10u64;
    /// let pool = multiproc::Pool::builder().processes(2).build_closure(move |x: u64| x + offset)?;
    /// assert_eq!(pool.map(0..3)?, vec![10, 11, 12]);
    /// # Ok::<(), multiproc::TaskError>(())
    /// ```
    pub fn build_closure<A, R, F>(mut self, f: F) -> Result<ClosurePool<A, R>, TaskError>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.closure = Some(std::sync::Arc::new(
            move |bytes: &[u8], out: &mut Vec<u8>| {
                let mut out = crate::codec::ResultBuf::Append(out);
                crate::process::run_guarded_into(&mut out, |out| {
                    out.encode(&f(crate::codec::decode(bytes)?))
                })
            },
        ));
        self.init = None;
        let pool = self.build()?;
        let core = pool.core.clone();
        Ok(ClosurePool::new(pool, core))
    }

    /// Starts the workers and waits until they are ready (initializers done).
    pub fn build(self) -> Result<Pool, TaskError> {
        if let Some(e) = self.init_error {
            return Err(e);
        }
        if self.setup.stdout == Output::Capture || self.setup.stderr == Output::Capture {
            return Err(TaskError::Invalid(
                "a pool's workers cannot capture their output (nothing would read it): use \
                 Output::Prefixed, Null or Inherit"
                    .into(),
            ));
        }
        self.setup
            .check()
            .map_err(TaskError::io("cannot start a worker"))?;
        let processes = self.processes.unwrap_or_else(crate::cpu::cpu_count);
        if processes == 0 {
            return Err(TaskError::Invalid(
                "a pool needs at least one process".into(),
            ));
        }
        let cfg = Config {
            processes,
            init: self.init,
            maxtasks: self.maxtasks,
            task_timeout: self.task_timeout,
            method: self.method,
            closure: self.closure,
            setup: self.setup,
            limits: self.limits,
        };
        let (wake_r, wake_w) =
            UnixStream::pair().map_err(TaskError::io("cannot make the pool's doorbell"))?;
        wake_r
            .set_nonblocking(true)
            .map_err(TaskError::io("cannot make the pool's doorbell"))?;
        wake_w
            .set_nonblocking(true)
            .map_err(TaskError::io("cannot make the pool's doorbell"))?;
        let shared: Shared = Arc::new(Inner {
            state: Mutex::new(State::relending(
                cfg.maxtasks == 0 && cfg.task_timeout.is_none(),
            )),
            changed: Default::default(),
            wake: Wake::Handler(Mutex::new(wake_w)),
        });
        let mut workers = Vec::with_capacity(processes);
        for _ in 0..processes {
            workers.push(handler::spawn_worker(&cfg)?);
        }
        let pids = workers.iter().map(|w| w.pid()).collect();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || handler::run(thread_shared, cfg, wake_r, workers))
            .map_err(TaskError::io("cannot start the pool's thread"))?;
        let pool = Pool {
            core: Core::new(shared, processes),
            handler: Mutex::new(Some(handle)),
            pids,
        };
        pool.check_started()?;
        Ok(pool)
    }
}

/// What every executor built on the pool's state shares: the state (jobs, results, the line
/// of chunks) and how many workers take chunks from it. The process pool's handler and the
/// thread pool's threads are two ways to run the line; submitting, results and cancelling are
/// written once, here and in `state`.
#[derive(Clone)]
pub(crate) struct Core {
    pub(crate) shared: Shared,
    pub(crate) workers: usize,
    /// The fork generation of the process that made the pool (see [`Core::usable`]).
    forks: u32,
}

impl Core {
    pub(crate) fn new(shared: Shared, workers: usize) -> Core {
        Core {
            shared,
            workers,
            forks: crate::sys::fork_generation(),
        }
    }

    /// Whether this is a forked child's copy of its parent's pool: no thread of the pool
    /// runs here, and its descriptors were closed at the fork.
    pub(crate) fn inherited(&self) -> bool {
        self.forks != crate::sys::fork_generation()
    }

    /// An error for a forked child's copy (tasks there would wait for ever, or go through
    /// descriptors the fork closed).
    pub(crate) fn usable(&self) -> Result<(), TaskError> {
        if self.inherited() {
            return Err(TaskError::Invalid(
                "this pool was made by the parent of this forked process: a forked child \
                 cannot use it (make a pool in the child)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn processes(&self) -> usize {
        self.workers
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn submit(
        &self,
        function: &'static str,
        items: Batch,
        chunksize: usize,
        job: Option<u64>,
    ) -> Result<u64, TaskError> {
        self.submit_limited(function, items, chunksize, job, None)
    }

    pub(crate) fn submit_limited(
        &self,
        function: &'static str,
        mut items: Batch,
        chunksize: usize,
        job: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<u64, TaskError> {
        self.usable()?;
        if chunksize == 0 {
            return Err(TaskError::Invalid("chunksize must be at least 1".into()));
        }
        let mut st = self.shared.lock();
        st.accepting(job)?;
        let id = match job {
            Some(id) => id,
            None => st.new_job(Reader::AtTheEnd),
        };
        let n = items.len();
        let start = st.job_mut(id).map(|j| j.add_items(n)).unwrap_or(0);
        let mut chunks = VecDeque::new();
        for from in (0..n).step_by(chunksize) {
            let seq = st.seq();
            chunks.push_back(Chunk {
                seq,
                job: id,
                start: start + from as u64,
                function,
                args: if chunksize >= n {
                    std::mem::take(&mut items)
                } else {
                    items.slice(from, (from + chunksize).min(n))
                },
                timeout,
            });
        }
        if chunks.len() == 1
            && let Some(chunk) = Self::send_to_lent(
                &self.shared,
                &mut st,
                chunks.pop_front().expect("one chunk"),
            )
        {
            chunks.push_back(chunk);
        }
        if chunks.is_empty() {
            return Ok(id);
        }
        st.enqueue(chunks);
        drop(st);
        self.shared.poke();
        Ok(id)
    }

    /// A new job for a lazy iterator whose results `reader` takes, before its first items.
    /// Refused like any new job once the pool is closed, terminated or broken. The job stays
    /// open (the pool does not finish while it is) until [`Pool::end_stream`].
    pub(crate) fn new_stream(&self, reader: Reader) -> Result<u64, TaskError> {
        let mut st = self.shared.lock();
        st.accepting(None)?;
        Ok(st.open_stream(reader))
    }

    /// A lazy iterator will submit nothing more: a closed pool may finish once it is drained.
    pub(crate) fn end_stream(&self) {
        self.shared.lock().close_stream();
        self.shared.poke();
    }

    /// Sends a lone chunk straight to an idle worker the handler lent out, if there is one:
    /// a round trip then wakes the worker only, not the handler first (the handler counts
    /// the chunk from `State::direct` when it next looks). Gives the chunk back otherwise.
    ///
    /// The worker's report ring is watched while the send may hand this CPU to the worker:
    /// on a CPU they share, the worker the send wakes runs at once and reports before this
    /// caller could watch for it, and with the handler asleep it would ring the handler's
    /// doorbell (a wake-up of the handler in the middle of the round trip). Watched, it rings
    /// nothing; after the send this caller stops watching and takes what came (the same
    /// two orders as every watch, see `reports`), which often completes the task before its
    /// result is asked for.
    fn send_to_lent(shared: &state::Inner, st: &mut state::State, chunk: Chunk) -> Option<Chunk> {
        if chunk.timeout.is_some() {
            return Some(chunk); // the handler must see it start to time it
        }
        let Some(lent) = st.lend_one() else {
            return Some(chunk);
        };
        /// The watch during the send. Ended by `end_watch` after a send that went out; on a
        /// send that failed, or unwinding, it stops watching and wakes the handler, which
        /// looks at the rings itself (no pickup here: the chunk is not back in line yet, and
        /// the worker must not be lent again ahead of it).
        struct Send<'a> {
            shared: &'a state::Inner,
            ring: Option<reports::Reports>,
        }
        impl Drop for Send<'_> {
            fn drop(&mut self) {
                if let Some(r) = self.ring.take() {
                    r.unwatch();
                    self.shared.poke();
                }
            }
        }
        let mut watch = Send {
            shared,
            ring: st.ring_of(lent.worker),
        };
        if let Some(r) = &watch.ring {
            r.watch();
        }
        // Lent only while no time limit is set (see `handler::publish`): no clock to keep.
        let sent = chunk
            .run_message(progress::Clock::Off)
            .ok()
            .is_some_and(|bytes| lent.conn.send_many(&[bytes]).is_ok());
        if !sent {
            // A worker that is going away: its death reaches the handler as usual.
            return Some(chunk);
        }
        st.sent_directly(lent, chunk);
        if let Some(r) = watch.ring.take() {
            state::end_watch(shared, st, &[r]);
        }
        None
    }

    /// Encodes every item into one batch.
    pub(crate) fn encode_all<A: Serialize>(
        items: impl IntoIterator<Item = A>,
    ) -> Result<Batch, TaskError> {
        let mut batch = Batch::default();
        let mut data = Vec::new();
        for a in items {
            crate::codec::encode_into(&a, &mut data)?;
            batch.ends.push(data.len() as u32);
        }
        batch.data = serde_bytes::ByteBuf::from(data);
        Ok(batch)
    }

    pub(crate) fn submit_more(
        &self,
        function: &'static str,
        items: Batch,
        chunksize: usize,
        job: Option<u64>,
    ) -> Result<u64, TaskError> {
        self.submit(function, items, chunksize, job)
    }

    /// One task of `function` on `args`; its handle.
    pub(crate) fn apply_async<R: DeserializeOwned>(
        &self,
        function: &'static str,
        args: impl Serialize,
    ) -> Result<AsyncResult<R>, TaskError> {
        let job = self.submit(function, Self::encode_all([args])?, 1, None)?;
        Ok(AsyncResult::new(self.shared.clone(), job))
    }

    /// `function` over `items`, `chunksize` items per task (`None`: CPython's default).
    pub(crate) fn map_async<R: DeserializeOwned, A: Serialize>(
        &self,
        function: &'static str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>, TaskError> {
        let encoded = Self::encode_all(items)?;
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(encoded.len(), self.workers));
        let job = self.submit(function, encoded, chunksize, None)?;
        Ok(MapResult::new(self.shared.clone(), job))
    }

    /// Fails job `job`'s tasks that have not started with [`TaskError::Cancelled`].
    pub(crate) fn cancel_job_pending(&self, job: u64) {
        let callbacks = self.shared.lock().cancel_pending_of(job);
        if !callbacks.is_empty() {
            state::run_callbacks(callbacks);
        }
    }

    /// Fails every task that has not started with [`TaskError::Cancelled`].
    pub(crate) fn cancel_pending(&self) {
        let callbacks = self.shared.lock().cancel_pending();
        self.shared.changed.notify_all();
        state::run_callbacks(callbacks);
    }
}

/// A pool of worker processes (Python's `multiprocessing.Pool`). See the [module](self) docs.
///
/// As an [`Executor`](crate::Executor) beside [`ThreadPool`] and the cluster pool: tasks run
/// isolated in other processes (any start method; closures only in a
/// [`build_closure`](PoolBuilder::build_closure) pool, whose workers are forks), so a task
/// that kills its process fails alone ([`TaskError::WorkerDied`], `MemoryLimit`,
/// `CpuTimeLimit`) and a timed-out one is killed. A round trip costs a process wake-up (tens
/// of microseconds). The broker's failures (`DeadLetter`, `Expired`, `BrokerLost`, `Broker`)
/// cannot occur. A task sent to a worker counts as started for
/// [`AsyncResult::cancel`]: a worker holds a few chunks ahead of the one it runs.
///
/// A pool belongs to the process that made it. In a child forked from that process (a
/// closure given to [`Process::fork`](crate::Process::fork) that borrows it), it refuses
/// work with [`TaskError::Invalid`], and `close`, `terminate` and dropping it do nothing
/// there: the pool is the parent's to end.
pub struct Pool {
    core: Core,
    handler: Mutex<Option<JoinHandle<()>>>,
    pids: Vec<u32>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.core.workers)
            .finish()
    }
}

/// CPython's default chunk size: the items spread over four chunks per worker.
fn default_chunksize(items: usize, workers: usize) -> usize {
    let per = workers * 4;
    items.div_ceil(per).max(1)
}

impl Pool {
    /// A builder with the defaults: [`cpu_count`](crate::cpu_count) workers, no initializer.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            init_error: None,
            maxtasks: 0,
            task_timeout: None,
            method: None,
            closure: None,
            setup: Setup::default(),
            limits: WorkerLimits::default(),
        }
    }

    /// A pool of `processes` workers.
    pub fn new(processes: usize) -> Result<Pool, TaskError> {
        Pool::builder().processes(processes).build()
    }

    /// The number of workers.
    pub fn processes(&self) -> usize {
        self.core.workers
    }

    /// The pids of the workers started with the pool (replacements get new pids).
    pub fn initial_pids(&self) -> &[u32] {
        &self.pids
    }

    /// Waits until every worker ran its initializer, so that a failing one is reported by
    /// `build` (at most a minute: a slow initializer then delays the first tasks instead).
    fn check_started(&self) -> Result<(), TaskError> {
        let deadline = Some(std::time::Instant::now() + Duration::from_secs(60));
        let mut st = self.core.shared.lock();
        loop {
            if let Some(e) = st.broken().cloned() {
                drop(st);
                self.terminate();
                return Err(e);
            }
            if st.ready_workers() >= self.core.workers {
                return Ok(());
            }
            let (g, more) = self.core.shared.wait(st, deadline);
            st = g;
            if !more {
                return Ok(());
            }
        }
    }

    fn function<F: Func<M>, M>(f: &F) -> Result<&'static str, TaskError> {
        let name = f.registered_name();
        registry::lookup(name)
            .map(|_| name)
            .ok_or_else(|| NotRegistered(name.into()).into())
    }

    /// Runs the function registered as `function` over already encoded arguments,
    /// `chunksize` items per task; an item running past `timeout` has its worker killed and
    /// fails with [`TaskError::Timeout`]. The results stay encoded
    /// ([`MapResult::get_each_encoded`]). For layers that carry tasks as bytes, such as the
    /// cluster pool: the arguments and results are the bytes of [`codec`](crate::codec), and
    /// `function` is a name [`Func::registered_name`] gave.
    ///
    /// ```
    /// #[multiproc::func]
    /// fn double(x: u64) -> u64 { x * 2 }
    ///
    /// # #[multiproc::main] fn main() -> multiproc::Result<()> {
    /// use multiproc::{Func, Pool, codec};
    /// let pool = Pool::new(2)?;
    /// // Bytes as they came from elsewhere (a broker, a file): each item the encoded arguments.
    /// let items: Vec<Vec<u8>> = (1..=3u64).map(|x| codec::encode(&x)).collect::<Result<_, _>>()?;
    /// let results = pool.map_encoded(double.registered_name(), &items, 2, None)?;
    /// let doubled: Vec<u64> = results
    ///     .get_each_encoded()
    ///     .into_iter()
    ///     .map(|r| Ok(codec::decode(&r?)?))
    ///     .collect::<multiproc::Result<_>>()?;
    /// assert_eq!(doubled, [2, 4, 6]);
    /// # Ok(()) }
    /// ```
    pub fn map_encoded(
        &self,
        function: &str,
        items: &[impl AsRef<[u8]>],
        chunksize: usize,
        timeout: Option<Duration>,
    ) -> Result<MapResult<Encoded>, TaskError> {
        let entry = registry::lookup(function).ok_or_else(|| NotRegistered(function.into()))?;
        let mut batch = Batch::default();
        let mut data = Vec::new();
        for item in items {
            data.extend_from_slice(item.as_ref());
            batch.ends.push(data.len() as u32);
        }
        batch.data = serde_bytes::ByteBuf::from(data);
        let job = self
            .core
            .submit_limited((entry.name)(), batch, chunksize, None, timeout)?;
        Ok(MapResult::new(self.core.shared.clone(), job))
    }

    /// Runs `f(args)` in a worker and waits for the result.
    pub fn apply<F: Func<M>, M>(&self, f: &F, args: F::Args) -> Result<F::Output, TaskError> {
        self.apply_async(f, args)?.get()
    }

    /// Runs `f(args)` in a worker; the result comes through the returned handle.
    pub fn apply_async<F: Func<M>, M>(
        &self,
        f: &F,
        args: F::Args,
    ) -> Result<AsyncResult<F::Output>, TaskError> {
        let function = Self::function(f)?;
        let job = self
            .core
            .submit(function, Core::encode_all([args])?, 1, None)?;
        Ok(AsyncResult::new(self.core.shared.clone(), job))
    }

    /// `f` over every item, in order, with the default chunk size; the first failing item's
    /// error is returned.
    pub fn map<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Pool::map) with an explicit chunk size (at least 1).
    pub fn map_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// [`map`](Pool::map) without waiting: the results come through the returned handle.
    pub fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError> {
        let function = Self::function(f)?;
        let encoded = Core::encode_all(items)?;
        let chunksize = default_chunksize(encoded.len(), self.core.workers);
        let job = self.core.submit(function, encoded, chunksize, None)?;
        Ok(MapResult::new(self.core.shared.clone(), job))
    }

    /// [`map_async`](Pool::map_async) with an explicit chunk size (at least 1; Python's
    /// `map_async(f, items, chunksize)`).
    pub fn map_async_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<MapResult<F::Output>, TaskError> {
        let function = Self::function(f)?;
        let job = self
            .core
            .submit(function, Core::encode_all(items)?, chunksize, None)?;
        Ok(MapResult::new(self.core.shared.clone(), job))
    }

    /// [`map`](Pool::map) with a progress bar (the `progress` feature): the items go through
    /// [`imap`](Pool::imap) with `map`'s default chunk size, and the bar (on standard error,
    /// drawn only when that is a terminal) moves with each result.
    ///
    /// ```
    /// #[multiproc::func]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = multiproc::Pool::new(2)?;
    /// let squares = pool.map_progress(&square, 0..1000u64)?;
    /// assert_eq!(squares[999], 999 * 999);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn map_progress<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        let items: Vec<_> = items.into_iter().collect();
        let chunksize = default_chunksize(items.len(), self.core.workers);
        self.imap(f, items)
            .chunksize(chunksize)
            .progress()
            .collect()
    }

    /// `f` over items that are argument tuples (Python's `starmap`; with this crate's
    /// functions a multi-argument function already takes a tuple, so this is `map`).
    pub fn starmap<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map(f, items)
    }

    /// [`starmap`](Pool::starmap) without waiting.
    pub fn starmap_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError> {
        self.map_async(f, items)
    }

    /// `f` over `items`, lazily, yielding results in order. The input is read ahead only as
    /// far as needed to keep the workers busy, so memory stays flat on an endless iterator.
    pub fn imap<F: Func<M>, M, I>(&self, f: &F, items: I) -> Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        Imap::new(&self.core, Self::function(f), items.into_iter(), true)
    }

    /// [`imap`](Pool::imap) yielding results as they complete.
    pub fn imap_unordered<F: Func<M>, M, I>(
        &self,
        f: &F,
        items: I,
    ) -> Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        Imap::new(&self.core, Self::function(f), items.into_iter(), false)
    }

    /// No more tasks; the workers exit once every submitted task is done.
    pub fn close(&self) {
        if self.core.inherited() {
            return;
        }
        self.core.shared.lock().close();
        self.core.shared.poke();
    }

    /// Stops the workers now; unfinished tasks fail with [`TaskError::Terminated`].
    pub fn terminate(&self) {
        // A forked child's copy: the pool is the parent's to end.
        if self.core.inherited() {
            return;
        }
        self.core.shared.lock().terminate();
        self.core.shared.poke();
        self.join_handler();
    }

    /// Waits for the workers to exit; call [`close`](Pool::close) or
    /// [`terminate`](Pool::terminate) first.
    pub fn join(&self) -> Result<(), TaskError> {
        self.core.usable()?;
        {
            let st = self.core.shared.lock();
            if !st.is_closed() && !st.is_terminated() {
                return Err(TaskError::Invalid(
                    "join() needs close() or terminate() first".into(),
                ));
            }
        }
        self.join_handler();
        Ok(())
    }

    fn join_handler(&self) {
        let handle = self
            .handler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

/// A pool running one closure on every task: built by [`PoolBuilder::build_closure`] (worker
/// processes forked from this one) or [`ThreadPoolBuilder::build_closure`] (threads, `P` =
/// [`ThreadPool`]).
///
/// The closure may capture anything (process workers are forks of this process, made when the
/// pool is built); its argument and result travel through the codec like a registered
/// function's. It runs one closure, so it takes arguments, not functions; for the
/// [`Executor`](crate::Executor) API (registered functions, the same code as every other
/// executor) use [`pool`](Self::pool): a closure pool's workers are forks of this process or
/// threads in it, so they run every registered function as well.
///
/// ```
/// use std::collections::HashMap;
///
/// // Built once, captured by every worker: no need to send it with each task.
/// let prices: HashMap<&str, u64> = HashMap::from([("apple", 3), ("pear", 5)]);
/// let pool = multiproc::Pool::builder()
///     .processes(2)
///     .build_closure(move |(fruit, n): (String, u64)| prices.get(fruit.as_str()).map(|p| p * n))?;
///
/// assert_eq!(pool.apply(("pear".to_string(), 2))?, Some(10));
/// let order = vec![("apple".to_string(), 4), ("kiwi".to_string(), 1)];
/// assert_eq!(pool.map(&order)?, [Some(12), None]);
/// let lazily: Vec<_> = pool.imap(&order).collect::<Result<_, _>>()?;
/// assert_eq!(lazily, [Some(12), None]);
/// pool.pool().close();
/// pool.pool().join()?;
/// # Ok::<(), multiproc::TaskError>(())
/// ```
pub struct ClosurePool<A, R, P = Pool> {
    pool: P,
    core: Core,
    _t: std::marker::PhantomData<fn(A) -> R>,
}

impl<A, R, P: std::fmt::Debug> std::fmt::Debug for ClosurePool<A, R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosurePool")
            .field("pool", &self.pool)
            .finish()
    }
}

impl<A: Serialize, R: DeserializeOwned, P> ClosurePool<A, R, P> {
    pub(crate) fn new(pool: P, core: Core) -> Self {
        ClosurePool {
            pool,
            core,
            _t: std::marker::PhantomData,
        }
    }

    /// The closure over every item, in order, with the default chunk size.
    pub fn map(&self, items: impl IntoIterator<Item = impl AsArg<A>>) -> Result<Vec<R>, TaskError> {
        self.core.map_async(CLOSURE, items, None)?.get()
    }

    /// [`map`](ClosurePool::map) with an explicit chunk size.
    pub fn map_chunked(
        &self,
        items: impl IntoIterator<Item = impl AsArg<A>>,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError> {
        self.map_async(items, Some(chunksize))?.get()
    }

    /// [`map`](ClosurePool::map) without waiting (`None`: the default chunk size).
    pub fn map_async(
        &self,
        items: impl IntoIterator<Item = impl AsArg<A>>,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>, TaskError> {
        self.core.map_async(CLOSURE, items, chunksize)
    }

    /// The closure on one argument, in a worker.
    pub fn apply(&self, arg: A) -> Result<R, TaskError> {
        self.apply_async(arg)?.get()
    }

    /// The closure on one argument, without waiting.
    pub fn apply_async(&self, arg: A) -> Result<AsyncResult<R>, TaskError> {
        self.core.apply_async(CLOSURE, arg)
    }

    /// The closure on each argument, one task each, without waiting: handles for
    /// [`as_completed`](crate::as_completed) and [`wait`](crate::executor::wait()).
    pub fn submit_all(
        &self,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<AsyncResult<R>>, TaskError> {
        items.into_iter().map(|a| self.apply_async(a)).collect()
    }

    /// Lazily, in order (see [`Pool::imap`]).
    pub fn imap<I: IntoIterator<Item: AsArg<A>>>(&self, items: I) -> Imap<'_, R, I::IntoIter> {
        Imap::new(&self.core, Ok(CLOSURE), items.into_iter(), true)
    }

    /// Lazily, as completed (see [`Pool::imap_unordered`]).
    pub fn imap_unordered<I: IntoIterator<Item: AsArg<A>>>(
        &self,
        items: I,
    ) -> Imap<'_, R, I::IntoIter> {
        Imap::new(&self.core, Ok(CLOSURE), items.into_iter(), false)
    }

    /// The pool underneath: close, terminate, join, and the [`Executor`](crate::Executor)
    /// API for registered functions.
    pub fn pool(&self) -> &P {
        &self.pool
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn chunksize_like_cpython() {
        assert_eq!(super::default_chunksize(100_000, 4), 6250);
        assert_eq!(super::default_chunksize(10, 4), 1);
        assert_eq!(super::default_chunksize(17, 1), 5);
        assert_eq!(super::default_chunksize(0, 4), 1);
    }
}
