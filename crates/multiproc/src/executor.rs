//! One API for every executor: [`Executor`], and `concurrent.futures`' [`as_completed`] and
//! [`wait`](wait()) over the handles any of them returns.
//!
//! A program written against [`Executor`] runs on threads ([`ThreadPool`]),
//! on processes ([`Pool`], under every start method), or on many machines
//! (`multiproc_cluster::ClusterPool`) by changing how the executor is built, not the code that
//! uses it: the same methods, the same [`AsyncResult`] and [`MapResult`], the same
//! [`TaskError`] for a failure wherever the task ran.
//!
//! ```
//! use multiproc::{Executor, TaskError};
//!
//! #[multiproc::func]
//! fn crunch(n: u64) -> u64 { (1..=n).sum() }
//!
//! fn crunch_all<E: Executor>(ex: &E, inputs: Vec<u64>) -> Result<u64, TaskError> {
//!     let total = ex.map(&crunch, inputs.clone())?.into_iter().sum::<u64>();
//!     let first = ex.apply_async(&crunch, inputs[0])?;
//!     for r in multiproc::as_completed(ex.submit_all(&crunch, inputs)?) {
//!         let _ = r?;
//!     }
//!     Ok(total + first.get()?)
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let inputs = vec![10, 100, 1000];
//! let on_threads = crunch_all(&multiproc::ThreadPool::new(2)?, inputs.clone())?;
//! let on_processes = crunch_all(&multiproc::Pool::new(2)?, inputs)?;
//! assert_eq!(on_threads, on_processes);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{TaskError, TimedOut};
use crate::pool::{AsArg, AsyncResult, Imap, MapResult, Pool, ThreadPool};
use crate::process::registry::Func;

/// What every executor does: run registered functions (`#[multiproc::func]`) on its
/// workers, with Python's `Pool` methods. Implemented by [`Pool`] (processes),
/// [`ThreadPool`] (threads) and `multiproc_cluster::ClusterPool` (machines, through Redis).
///
/// The methods are generic (a function's argument and result types), so the trait is used
/// through generics (`fn run<E: Executor>(ex: &E)`), not as `dyn Executor`: no method call
/// through it costs a dynamic dispatch or an allocation more than the executor's own method.
///
/// A closure pool ([`ClosurePool`](crate::ClosurePool)) runs one closure, not registered
/// functions: its own methods take the closure's arguments. Its
/// [`pool`](crate::ClosurePool::pool) is the `Pool` or `ThreadPool` underneath, an executor
/// whose workers run registered functions too.
///
/// What differs between executors is written on each: the failures that cannot occur (no
/// worker process dies in a thread pool, no broker is lost by a local pool), latency, and
/// which start methods or machines run the tasks.
pub trait Executor {
    /// The lazy iterator of [`imap_chunked`](Self::imap_chunked): each item is that task's
    /// own result.
    type Imap<'a, R, I>: Iterator<Item = Result<R, TaskError>>
    where
        Self: 'a,
        R: DeserializeOwned,
        I: Iterator<Item: Serialize>;

    /// How many workers run tasks at once (processes, threads; for a cluster, the chunks it
    /// keeps in flight per lazy iterator are sized from it).
    fn workers(&self) -> usize;

    /// Runs `f(args)` on a worker; the result comes through the handle.
    fn apply_async<F: Func<M>, M>(
        &self,
        f: &F,
        args: F::Args,
    ) -> Result<AsyncResult<F::Output>, TaskError>;

    /// `f` over every item without waiting, in chunks of the executor's default size.
    fn map_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError>;

    /// [`map_async`](Self::map_async) with `chunksize` items per task (at least 1).
    fn map_async_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<MapResult<F::Output>, TaskError>;

    /// `f` over `items`, lazily, `chunksize` items per task: in order, or (`ordered` false)
    /// as they complete. The input is read ahead only as far as the workers need.
    fn imap_chunked<F: Func<M>, M, I>(
        &self,
        f: &F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Self::Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>;

    /// No more tasks; the workers stop once every submitted task is done.
    fn close(&self);

    /// Stops now: unfinished tasks fail with [`TaskError::Terminated`].
    fn terminate(&self);

    /// Waits for the workers to stop; call [`close`](Self::close) or
    /// [`terminate`](Self::terminate) first.
    fn join(&self) -> Result<(), TaskError>;

    /// Fails every task that has not started with [`TaskError::Cancelled`]; running tasks
    /// go on.
    fn cancel_pending(&self);

    /// Runs `f(args)` on a worker and waits for the result.
    fn apply<F: Func<M>, M>(&self, f: &F, args: F::Args) -> Result<F::Output, TaskError> {
        self.apply_async(f, args)?.get()
    }

    /// `f` over every item, in order; the first failing item's error is returned.
    fn map<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Self::map) with `chunksize` items per task.
    fn map_chunked<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// `f` over argument tuples (Python's `starmap`: a function of several arguments takes a
    /// tuple here already, so this is [`map`](Self::map)).
    fn starmap<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        self.map(f, items)
    }

    /// [`starmap`](Self::starmap) without waiting.
    fn starmap_async<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<MapResult<F::Output>, TaskError> {
        self.map_async(f, items)
    }

    /// One task per item, each with its own handle (Python's `executor.submit` in a loop):
    /// for [`as_completed`], [`wait`](wait()) and [`AsyncResult::cancel`].
    fn submit_all<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<Vec<AsyncResult<F::Output>>, TaskError> {
        items.into_iter().map(|a| self.apply_async(f, a)).collect()
    }

    /// [`imap_chunked`](Self::imap_chunked) in order, one item per task.
    fn imap<F: Func<M>, M, I>(&self, f: &F, items: I) -> Self::Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        self.imap_chunked(f, items, 1, true)
    }

    /// [`imap_chunked`](Self::imap_chunked) as completed, one item per task.
    fn imap_unordered<F: Func<M>, M, I>(
        &self,
        f: &F,
        items: I,
    ) -> Self::Imap<'_, F::Output, I::IntoIter>
    where
        I: IntoIterator<Item: AsArg<F::Args>>,
    {
        self.imap_chunked(f, items, 1, false)
    }

    /// [`map`](Self::map) with a progress bar on standard error (the `progress` feature),
    /// drawn only when that is a terminal.
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    fn map_progress<F: Func<M>, M>(
        &self,
        f: &F,
        items: impl IntoIterator<Item = impl AsArg<F::Args>>,
    ) -> Result<Vec<F::Output>, TaskError> {
        let items: Vec<_> = items.into_iter().collect();
        let chunksize = items.len().div_ceil(self.workers().max(1) * 4).max(1);
        let bar = indicatif::ProgressBar::new(items.len() as u64);
        let out = self
            .imap_chunked(f, items, chunksize, true)
            .inspect(|_| bar.inc(1))
            .collect();
        bar.finish();
        out
    }

    /// Python's `executor.shutdown(cancel_futures=...)`: no more tasks; with
    /// `cancel_pending`, the tasks that have not started fail with [`TaskError::Cancelled`];
    /// then waits for the running (and, without it, the waiting) tasks to finish.
    fn shutdown(&self, cancel_pending: bool) -> Result<(), TaskError> {
        self.close();
        if cancel_pending {
            self.cancel_pending();
        }
        self.join()
    }
}

/// The process pool and the thread pool are executors through their own methods (they share
/// one core): one forwarding impl for both, `$workers` naming the method that counts them.
macro_rules! local_executor {
    ($pool:ident, $workers:ident) => {
        impl Executor for $pool {
            type Imap<'a, R, I>
                = Imap<'a, R, I>
            where
                R: DeserializeOwned,
                I: Iterator<Item: Serialize>;

            fn workers(&self) -> usize {
                self.$workers()
            }

            fn apply_async<F: Func<M>, M>(
                &self,
                f: &F,
                args: F::Args,
            ) -> Result<AsyncResult<F::Output>, TaskError> {
                $pool::apply_async(self, f, args)
            }

            fn map_async<F: Func<M>, M>(
                &self,
                f: &F,
                items: impl IntoIterator<Item = impl AsArg<F::Args>>,
            ) -> Result<MapResult<F::Output>, TaskError> {
                $pool::map_async(self, f, items)
            }

            fn map_async_chunked<F: Func<M>, M>(
                &self,
                f: &F,
                items: impl IntoIterator<Item = impl AsArg<F::Args>>,
                chunksize: usize,
            ) -> Result<MapResult<F::Output>, TaskError> {
                $pool::map_async_chunked(self, f, items, chunksize)
            }

            fn imap_chunked<F: Func<M>, M, I>(
                &self,
                f: &F,
                items: I,
                chunksize: usize,
                ordered: bool,
            ) -> Imap<'_, F::Output, I::IntoIter>
            where
                I: IntoIterator<Item: AsArg<F::Args>>,
            {
                match ordered {
                    true => $pool::imap(self, f, items),
                    false => $pool::imap_unordered(self, f, items),
                }
                .chunksize(chunksize)
            }

            fn close(&self) {
                $pool::close(self)
            }

            fn terminate(&self) {
                $pool::terminate(self)
            }

            fn join(&self) -> Result<(), TaskError> {
                $pool::join(self)
            }

            fn cancel_pending(&self) {
                self.core().cancel_pending()
            }
        }
    };
}

local_executor!(Pool, processes);
local_executor!(ThreadPool, threads);

/// Completions of a group of handles, in the order they happen: the index of each handle
/// once, through the handles' done callbacks.
struct Completions {
    state: Mutex<(VecDeque<usize>, u64)>,
    changed: Condvar,
}

impl Completions {
    fn watch<R: DeserializeOwned + 'static>(handles: &[AsyncResult<R>]) -> Arc<Completions> {
        let c = Arc::new(Completions {
            state: Mutex::new((VecDeque::new(), 0)),
            changed: Condvar::new(),
        });
        for (i, h) in handles.iter().enumerate() {
            let cc = c.clone();
            h.on_done(move |_| cc.push(i));
            // A handle whose result was taken already has no callback to run.
            if h.ready() {
                c.push(i);
            }
        }
        c
    }

    fn lock(&self) -> MutexGuard<'_, (VecDeque<usize>, u64)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, i: usize) {
        let mut st = self.lock();
        st.0.push_back(i);
        st.1 += 1;
        drop(st);
        self.changed.notify_all();
    }

    /// Waits until the count of completions is past `seen`, at most until `deadline`;
    /// the new count.
    fn wait_past(&self, seen: u64, deadline: Option<Instant>) -> u64 {
        let mut st = self.lock();
        while st.1 == seen {
            st = match deadline {
                None => self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        st.1
    }
}

/// The results of `handles` in the order the tasks complete (Python's
/// `concurrent.futures.as_completed`): each item is that task's own result, failures
/// included. The handles may come from different executors.
///
/// ```
/// use std::time::Duration;
///
/// #[multiproc::func]
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = multiproc::ThreadPool::new(3)?;
/// let handles = [300, 10, 150].map(|ms| pool.apply_async(&nap, ms)).into_iter();
/// let order: Vec<u64> = multiproc::as_completed(handles.collect::<Result<Vec<_>, _>>()?)
///     .timeout(Duration::from_secs(10))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(order, [10, 150, 300]);
/// # Ok(()) }
/// ```
pub fn as_completed<R: DeserializeOwned + 'static>(
    handles: impl IntoIterator<Item = AsyncResult<R>>,
) -> AsCompleted<R> {
    let handles: Vec<AsyncResult<R>> = handles.into_iter().collect();
    let completions = Completions::watch(&handles);
    AsCompleted {
        left: handles.len(),
        handles: handles.into_iter().map(Some).collect(),
        completions,
        deadline: None,
        timeout: None,
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<R> {
    handles: Vec<Option<AsyncResult<R>>>,
    completions: Arc<Completions>,
    left: usize,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish()
    }
}

impl<R: DeserializeOwned> AsCompleted<R> {
    /// Waits at most `timeout` from now for all of them: past it the iterator yields
    /// [`TaskError::WaitTimeout`] once and ends (the tasks go on).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self.timeout = Some(timeout);
        self
    }

    /// The next result with the index of its handle in the input.
    pub fn next_indexed(&mut self) -> Option<(usize, Result<R, TaskError>)> {
        loop {
            if self.left == 0 {
                return None;
            }
            let next = self.completions.lock().0.pop_front();
            match next {
                Some(i) => {
                    if let Some(h) = self.handles.get_mut(i).and_then(Option::take) {
                        self.left -= 1;
                        return Some((i, h.get()));
                    }
                }
                None => {
                    let seen = {
                        let st = self.completions.lock();
                        if !st.0.is_empty() {
                            continue;
                        }
                        st.1
                    };
                    if self.completions.wait_past(seen, self.deadline) == seen {
                        // Timed out: reported once, then the iterator ends.
                        self.left = 0;
                        let t = self.timeout.unwrap_or_default();
                        return Some((usize::MAX, Err(TimedOut(t).into())));
                    }
                }
            }
        }
    }
}

impl<R: DeserializeOwned> Iterator for AsCompleted<R> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|(_, r)| r)
    }
}

/// When [`wait`](wait()) returns (Python's `return_when`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// When any task is done (Python's `FIRST_COMPLETED`).
    FirstCompleted,
    /// When any task failed, or all are done (Python's `FIRST_EXCEPTION`).
    FirstException,
    /// When all are done (Python's `ALL_COMPLETED`).
    AllCompleted,
}

/// What [`wait`](wait()) returns: the handles split into done and not done, each in the
/// order given.
#[derive(Debug)]
pub struct Waited<R> {
    /// The tasks that are done (succeeded, failed or cancelled): `get` returns at once.
    pub done: Vec<AsyncResult<R>>,
    /// The others.
    pub not_done: Vec<AsyncResult<R>>,
}

/// Waits until `return_when` holds for `handles`, or `timeout` passes (`None`: no limit),
/// and splits them into done and not done (Python's `concurrent.futures.wait`). The handles
/// may come from different executors.
///
/// ```
/// use std::time::Duration;
/// use multiproc::ReturnWhen;
///
/// #[multiproc::func]
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = multiproc::ThreadPool::new(2)?;
/// let handles = vec![pool.apply_async(&nap, 10)?, pool.apply_async(&nap, 2000)?];
/// let w = multiproc::executor::wait(handles, ReturnWhen::FirstCompleted, Some(Duration::from_secs(10)));
/// assert_eq!((w.done.len(), w.not_done.len()), (1, 1));
/// # Ok(()) }
/// ```
pub fn wait<R: DeserializeOwned + 'static>(
    handles: impl IntoIterator<Item = AsyncResult<R>>,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> Waited<R> {
    let handles: Vec<AsyncResult<R>> = handles.into_iter().collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    let completions = Completions::watch(&handles);
    loop {
        let seen = completions.lock().1;
        let done = handles.iter().filter(|h| h.ready()).count();
        let failed = handles.iter().any(|h| h.successful() == Some(false));
        let enough = match return_when {
            ReturnWhen::FirstCompleted => done > 0 || handles.is_empty(),
            ReturnWhen::FirstException => failed || done == handles.len(),
            ReturnWhen::AllCompleted => done == handles.len(),
        };
        if enough || completions.wait_past(seen, deadline) == seen {
            break;
        }
    }
    let (done, not_done) = handles.into_iter().partition(|h| h.ready());
    Waited { done, not_done }
}
