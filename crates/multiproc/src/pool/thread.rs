//! [`ThreadPool`]: the pool's API on threads of this process (Python's
//! `multiprocessing.dummy.Pool`), for I/O-bound work and for tests.
//!
//! It shares the process pool's state (`state.rs`): the same line of chunks, jobs, results,
//! lazy iterators and cancelling; threads take chunks from the line instead of a handler
//! sending them to processes. Arguments and results still go through the codec, so a task
//! that runs here behaves as it does in a process (a result that does not encode is the same
//! [`TaskError::Codec`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::handler::ClosureRunner;
use super::state::{
    Chunk, FLUSH_AFTER, Inner, ItemResult, State, Wake, record_locked, run_callbacks,
};
use super::wire::{Batch, Failure};
use super::worker::{Task, closure_or_registered, registered};
use super::{AsArg, AsyncResult, ClosurePool, Core, Imap, MapResult};
use crate::error::TaskError;
use crate::process::registry::Func;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`ThreadPool`]: `ThreadPool::builder().threads(8).build()`.
#[derive(Clone, Default)]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    task_timeout: Option<Duration>,
    closure: Option<ClosureRunner>,
}

impl std::fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("threads", &self.threads)
            .field("task_timeout", &self.task_timeout)
            .finish()
    }
}

impl ThreadPoolBuilder {
    /// The number of threads (default [`cpu_count`](crate::cpu_count)).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// A task running longer than this fails with [`TaskError::Timeout`] and a new thread
    /// takes its thread's place. A thread cannot be killed: the late task runs on until it
    /// returns, and its result is dropped. With chunks, the limit is per item.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// A pool whose threads run closure `f` on every task (and registered functions through
    /// [`ClosurePool::pool`]). The closure is shared by the threads, not copied.
    ///
    /// ```
    /// let offset = 10u64;
    /// let pool = multiproc::ThreadPool::builder().threads(2).build_closure(move |x: u64| x + offset)?;
    /// assert_eq!(pool.map(0..3)?, vec![10, 11, 12]);
    /// # Ok::<(), multiproc::TaskError>(())
    /// ```
    pub fn build_closure<A, R, F>(
        mut self,
        f: F,
    ) -> Result<ClosurePool<A, R, ThreadPool>, TaskError>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.closure = Some(Arc::new(move |bytes: &[u8], out: &mut Vec<u8>| {
            let mut out = crate::codec::ResultBuf::Append(out);
            crate::process::run_guarded_into(&mut out, |out| {
                out.encode(&f(crate::codec::decode(bytes)?))
            })
        }));
        let pool = self.build()?;
        let core = pool.crew.core.clone();
        Ok(ClosurePool::new(pool, core))
    }

    /// Starts the threads.
    pub fn build(self) -> Result<ThreadPool, TaskError> {
        let threads = self.threads.unwrap_or_else(crate::cpu::cpu_count);
        if threads == 0 {
            return Err(TaskError::Invalid(
                "a pool needs at least one thread".into(),
            ));
        }
        let shared = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Default::default(),
            wake: Wake::Threads(Condvar::new()),
        });
        let crew = Arc::new(Crew {
            core: Core::new(shared, threads),
            closure: self.closure,
            timeout: self.task_timeout,
            slots: Mutex::new(Vec::new()),
            live: Mutex::new(0),
            gone: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        for _ in 0..threads {
            if let Err(e) = crew.start_thread() {
                crew.stop();
                return Err(e);
            }
        }
        if let Some(timeout) = self.task_timeout {
            let watched = crew.clone();
            std::thread::Builder::new()
                .name("multiproc-threadpool-watch".into())
                .spawn(move || watched.watch(timeout))
                .map_err(|e| {
                    crew.stop();
                    TaskError::io("cannot start the pool's thread")(e)
                })?;
        }
        Ok(ThreadPool { crew })
    }
}

/// A pool of threads with the process [`Pool`](crate::Pool)'s API (Python's
/// `multiprocessing.dummy.Pool`): the same registered functions, results, errors, lazy
/// iterators and [`Executor`](crate::Executor) methods, without a process boundary. For
/// I/O-bound work (threads waiting on the network share one process), and to test code
/// written for a process pool quickly.
///
/// What differs from a process pool: a task shares this process's memory and its fate (a
/// task that aborts or crashes ends the program; so [`TaskError::WorkerDied`],
/// [`MemoryLimit`](TaskError::MemoryLimit) and [`CpuTimeLimit`](TaskError::CpuTimeLimit) cannot
/// occur); a timed-out task cannot be killed (it fails with [`TaskError::Timeout`] and its
/// thread is replaced, but runs on until it returns); arguments and results still go through
/// the codec, so they are the same values a process pool would give; a round trip costs a
/// thread wake-up, not a process's.
///
/// ```
/// use multiproc::ThreadPool;
///
/// #[multiproc::func]
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = ThreadPool::new(4)?;
/// assert_eq!(pool.map(&square, 0..5)?, [0, 1, 4, 9, 16]);
/// assert_eq!(pool.apply_async(&square, 7)?.get()?, 49);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc::TaskError>(())
/// ```
pub struct ThreadPool {
    crew: Arc<Crew>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.crew.core.workers)
            .finish()
    }
}

impl ThreadPool {
    /// A builder with the defaults: [`cpu_count`](crate::cpu_count) threads, no time limit.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// A pool of `threads` threads.
    pub fn new(threads: usize) -> Result<ThreadPool, TaskError> {
        Self::builder().threads(threads).build()
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.crew.core.workers
    }

    pub(crate) fn core(&self) -> &Core {
        &self.crew.core
    }

    fn function<F: Func<M>, M>(f: &F) -> Result<&'static str, TaskError> {
        super::Pool::function(f)
    }

    /// Runs `f(args)` in a thread and waits for the result.
    pub fn apply<F: Func<M>, M>(&self, f: &F, args: F::Args) -> Result<F::Output, TaskError> {
        self.apply_async(f, args)?.get()
    }

    /// Runs `f(args)` in a thread; the result comes through the returned handle.
    pub fn apply_async<F: Func<M>, M>(
        &self,
        f: &F,
        args: F::Args,
    ) -> Result<AsyncResult<F::Output>, TaskError> {
        self.crew.core.apply_async(Self::function(f)?, args)
    }

    /// `f` over every item, in order (the default chunk size as [`Pool::map`](crate::Pool::map)).
    pub fn map<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Self::map) with an explicit chunk size (at least 1).
    pub fn map_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// `f` over argument tuples (Python's `starmap`; see [`Pool::starmap`](crate::Pool::starmap)).
    pub fn starmap<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map(f, items)
    }

    /// [`map`](Self::map) without waiting.
    pub fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError> {
        self.crew.core.map_async(Self::function(f)?, items, None)
    }

    /// [`map_async`](Self::map_async) with an explicit chunk size (at least 1).
    pub fn map_async_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<MapResult<F::Output>, TaskError> {
        self.crew
            .core
            .map_async(Self::function(f)?, items, Some(chunksize))
    }

    /// `f` over `items`, lazily, in order (see [`Pool::imap`](crate::Pool::imap)).
    pub fn imap<F: Func<M>, M, I>(&self, f: &F, items: I) -> Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        Imap::new(&self.crew.core, Self::function(f), items.into_iter(), true)
    }

    /// [`imap`](Self::imap) yielding results as they complete.
    pub fn imap_unordered<F: Func<M>, M, I>(
        &self,
        f: &F,
        items: I,
    ) -> Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        Imap::new(&self.crew.core, Self::function(f), items.into_iter(), false)
    }

    /// No more tasks; the threads end once every submitted task is done.
    pub fn close(&self) {
        if self.crew.core.inherited() {
            return;
        }
        self.crew.core.shared.lock().close();
        self.crew.core.shared.poke();
    }

    /// Fails every unfinished task with [`TaskError::Terminated`] now. Threads cannot be
    /// stopped: a running task goes on in its thread until it returns (its result is
    /// dropped), and the thread ends then.
    pub fn terminate(&self) {
        // A forked child's copy: the threads are the parent's to end.
        if !self.crew.core.inherited() {
            self.crew.stop();
        }
    }

    /// Waits until every thread ended (call [`close`](Self::close) or
    /// [`terminate`](Self::terminate) first); a timed-out task's thread is not waited for.
    pub fn join(&self) -> Result<(), TaskError> {
        self.crew.core.usable()?;
        {
            let st = self.crew.core.shared.lock();
            if !st.is_closed() && !st.is_terminated() {
                return Err(TaskError::Invalid(
                    "join() needs close() or terminate() first".into(),
                ));
            }
        }
        let mut live = lock(&self.crew.live);
        while *live > 0 {
            live = self
                .crew
                .gone
                .wait(live)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(live);
        self.crew.stop.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for ThreadPool {
    /// Terminates: unfinished tasks fail, the threads end after their running task.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// What the threads, the watch and the pool share.
struct Crew {
    core: Core,
    closure: Option<ClosureRunner>,
    timeout: Option<Duration>,
    /// What each thread runs, when tasks are timed.
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Threads that take chunks (not those left behind by a timed-out task).
    live: Mutex<usize>,
    gone: Condvar,
    /// The watch ends.
    stop: AtomicBool,
}

/// A thread's running item, for the watch.
#[derive(Default)]
struct Slot {
    now: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    /// The chunk, the item's index in it, and when it started.
    item: Option<(Arc<Chunk>, usize, Instant)>,
    /// The item ran out of time: the thread's results from now on are not wanted.
    abandoned: bool,
}

impl Crew {
    fn start_thread(self: &Arc<Self>) -> Result<(), TaskError> {
        let slot = self.timeout.map(|_| Arc::new(Slot::default()));
        if let Some(s) = &slot {
            lock(&self.slots).push(s.clone());
        }
        *lock(&self.live) += 1;
        let crew = self.clone();
        std::thread::Builder::new()
            .name("multiproc-thread".into())
            .spawn(move || crew.serve(slot))
            .map(drop)
            .map_err(|e| {
                self.thread_gone();
                TaskError::io("cannot start a pool thread")(e)
            })
    }

    fn thread_gone(&self) {
        *lock(&self.live) -= 1;
        self.gone.notify_all();
    }

    /// Terminates: every unfinished item fails, the threads and the watch end.
    fn stop(&self) {
        let shared = &self.core.shared;
        let callbacks = {
            let mut st = shared.lock();
            st.terminate();
            st.fail_all(&TaskError::Terminated)
        };
        self.stop.store(true, Ordering::SeqCst);
        shared.changed.notify_all();
        shared.poke();
        run_callbacks(callbacks);
    }

    /// A thread: takes chunks until the pool is terminated, or closed and drained.
    fn serve(&self, slot: Option<Arc<Slot>>) {
        let shared = &self.core.shared;
        let Wake::Threads(work) = &shared.wake else {
            return;
        };
        loop {
            let chunk = {
                let mut st = shared.lock();
                loop {
                    if st.is_terminated() {
                        break None;
                    }
                    if let Some(c) = st.take_next_in_line() {
                        break Some(c);
                    }
                    if st.may_finish() {
                        break None;
                    }
                    st = work.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let Some(chunk) = chunk else {
                shared.poke(); // the others see the end too
                self.thread_gone();
                return;
            };
            if !self.run(chunk, slot.as_deref()) {
                return; // left behind by a timed-out item: a new thread took its place
            }
        }
    }

    /// Runs a chunk and records its results; `false` if the thread was left behind.
    fn run(&self, chunk: Chunk, slot: Option<&Slot>) -> bool {
        let task: Task<'static> = match &self.closure {
            Some(c) => closure_or_registered(c, chunk.function),
            None => registered(chunk.function),
        };
        let chunk = Arc::new(chunk);
        let n = chunk.args.len();
        let (mut out, mut ends, mut failures) = (Vec::new(), Vec::with_capacity(n), Vec::new());
        let mut kept = true;
        for i in 0..n {
            if let Some(s) = slot {
                let mut now = lock(&s.now);
                if now.abandoned {
                    kept = false;
                    break;
                }
                now.item = Some((chunk.clone(), i, Instant::now()));
            }
            if slot.is_some() {
                // Under a time limit each item is recorded as it ends: the watch may give the
                // rest of the chunk to another thread, and what this one finished must not
                // wait for an item that never returns.
                let mut one = Vec::new();
                let failure = task(chunk.args.item(i), &mut one);
                let failures = failure.map(|f| vec![(0, Failure::Task(f))]);
                let end = one.len() as u32;
                let batch = Batch {
                    data: serde_bytes::ByteBuf::from(one),
                    ends: vec![end],
                };
                let results = super::state::split_results(batch, failures.unwrap_or_default());
                self.record(chunk.job, chunk.start + i as u64, results);
                continue;
            }
            let failure = task(chunk.args.item(i), &mut out);
            ends.push(out.len() as u32);
            if let Some(f) = failure {
                failures.push((i as u32, Failure::Task(f)));
            }
        }
        if let Some(s) = slot {
            let mut now = lock(&s.now);
            now.item = None;
            kept &= !now.abandoned;
            // Every item was recorded as it ended.
            return kept;
        }
        let results = super::state::split_results(
            Batch {
                data: serde_bytes::ByteBuf::from(out),
                ends,
            },
            failures,
        );
        self.record(chunk.job, chunk.start, results);
        kept
    }

    fn record(&self, job: u64, start: u64, results: Vec<ItemResult>) {
        let shared = &self.core.shared;
        let callbacks = {
            let mut st = shared.lock();
            let (callbacks, _) = record_locked(&mut st, job, start, results);
            // No handler flushes a waiting iterator's batch on a timer here: every deferred
            // batch is flushed now (its async tasks woken; sync iterators are woken below).
            st.flush_deferred(Instant::now() + FLUSH_AFTER);
            callbacks
        };
        // Every recording wakes the waiters: there is no handler to flush an iterator's batch.
        shared.changed.notify_all();
        run_callbacks(callbacks);
    }

    /// The watch of a pool with a task timeout: fails an item past it, puts the rest of its
    /// chunk back in line, and starts a thread in its thread's place.
    fn watch(self: Arc<Self>, timeout: Duration) {
        let tick = (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(tick);
            let slots = lock(&self.slots).clone();
            for slot in slots {
                let late = {
                    let mut now = lock(&slot.now);
                    match &now.item {
                        Some((_, _, since)) if since.elapsed() >= timeout && !now.abandoned => {
                            now.abandoned = true;
                            now.item.take()
                        }
                        _ => None,
                    }
                };
                let Some((chunk, index, _)) = late else {
                    continue;
                };
                lock(&self.slots).retain(|s| !Arc::ptr_eq(s, &slot));
                let shared = &self.core.shared;
                let (callbacks, terminated) = {
                    let mut st = shared.lock();
                    let (callbacks, _) = record_locked(
                        &mut st,
                        chunk.job,
                        chunk.start + index as u64,
                        vec![Err(TaskError::Timeout(timeout))],
                    );
                    st.flush_deferred(Instant::now() + FLUSH_AFTER);
                    let seq = st.seq();
                    if let Some(tail) = chunk.tail(index + 1, seq) {
                        st.requeue(tail);
                    }
                    (callbacks, st.is_terminated())
                };
                shared.changed.notify_all();
                shared.poke();
                run_callbacks(callbacks);
                // The late thread no longer counts; a new one takes its place.
                if !terminated {
                    let _ = self.start_thread(); // counted before the late one stops counting
                }
                self.thread_gone();
            }
        }
    }
}
