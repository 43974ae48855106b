//! [`Ledger`]: the book of jobs and results behind [`AsyncResult`] and [`MapResult`], for
//! executors whose tasks run elsewhere (the cluster pool), so that their handles are the very
//! handles of the local pools.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::de::DeserializeOwned;

use super::state::{
    Inner, ItemResult, Shared, State, Wake, payloads, record_locked, run_callbacks,
};
use super::{AsyncResult, MapResult, Reader};
use crate::error::TaskError;

/// Jobs and their results, for an executor that runs tasks elsewhere: it opens a job per
/// submission, gives out the job's [`AsyncResult`] or [`MapResult`], and records each item's
/// encoded result (the bytes of [`codec`](crate::codec)) or error as it comes back. Waiting,
/// callbacks, [`as_completed`](crate::as_completed), [`wait`](crate::executor::wait()) and
/// cancelling then work as they do with a local pool.
///
/// ```
/// use multiproc::pool::Ledger;
///
/// let ledger = Ledger::new();
/// let job = ledger.open(1)?;
/// let handle = ledger.async_result::<u64>(job);
/// assert!(!handle.ready());
/// ledger.record(job, 0, [Ok(multiproc::codec::encode(&42u64)?)]); // when the reply comes
/// assert_eq!(handle.get()?, 42);
/// # Ok::<(), multiproc::TaskError>(())
/// ```
#[derive(Clone)]
pub struct Ledger {
    shared: Shared,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger {
            shared: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Default::default(),
                wake: Wake::Elsewhere(OnceLock::new()),
            }),
        }
    }

    /// How [`AsyncResult::cancel`] cancels a job of this ledger: `cancel(job)` takes the
    /// job's tasks back if none started and says whether it did (its items then fail with
    /// [`TaskError::Cancelled`]). Set once; without it nothing is cancelled.
    pub fn set_canceller(&self, cancel: impl Fn(u64) -> bool + Send + Sync + 'static) {
        if let Wake::Elsewhere(hook) = &self.shared.wake {
            let _ = hook.set(Box::new(cancel));
        }
    }

    /// A new job of `items` items, or [`TaskError::Closed`] once [`close`](Self::close)d.
    pub fn open(&self, items: usize) -> Result<u64, TaskError> {
        let mut st = self.shared.lock();
        st.accepting(None)?;
        let id = st.new_job(Reader::AtTheEnd);
        if let Some(j) = st.job_mut(id) {
            j.add_items(items);
        }
        Ok(id)
    }

    /// No new jobs.
    pub fn close(&self) {
        self.shared.lock().close();
    }

    /// The handle of a job of one item.
    pub fn async_result<R: DeserializeOwned>(&self, job: u64) -> AsyncResult<R> {
        AsyncResult::new(self.shared.clone(), job)
    }

    /// The handle of a job.
    pub fn map_result<R: DeserializeOwned>(&self, job: u64) -> MapResult<R> {
        MapResult::new(self.shared.clone(), job)
    }

    /// Records the results of items `start..` of `job` (the first result of an item counts)
    /// and wakes its waiters; callbacks run on this thread, so call it without holding locks
    /// they might take.
    pub fn record(
        &self,
        job: u64,
        start: usize,
        results: impl IntoIterator<Item = Result<Vec<u8>, TaskError>>,
    ) {
        let results: Vec<ItemResult> = results
            .into_iter()
            .map(|r| {
                r.map(|bytes| {
                    let end = bytes.len() as u32;
                    payloads(bytes, &[end]).remove(0).expect("a payload")
                })
            })
            .collect();
        let (callbacks, _) = record_locked(&mut self.shared.lock(), job, start as u64, results);
        self.shared.changed.notify_all();
        run_callbacks(callbacks);
    }

    /// Fails every unfinished item of every job with `err` (the executor stops).
    pub fn fail_all(&self, err: &TaskError) {
        let callbacks = self.shared.lock().fail_all(err);
        self.shared.changed.notify_all();
        run_callbacks(callbacks);
    }

    /// Whether `job` has no item left (a job whose results were taken counts as done).
    pub fn is_done(&self, job: u64) -> bool {
        self.shared.lock().job_done(job)
    }

    /// Waits until one of `jobs` is done, at most until `deadline`; its index in `jobs`.
    pub fn wait_any(&self, jobs: &[u64], deadline: Option<Instant>) -> Option<usize> {
        let mut st = self.shared.lock();
        loop {
            if let Some(i) = jobs.iter().position(|&j| st.job_done(j)) {
                return Some(i);
            }
            let (g, more) = self.shared.wait(st, deadline);
            st = g;
            if !more {
                return jobs.iter().position(|&j| st.job_done(j));
            }
        }
    }
}
