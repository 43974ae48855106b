//! The state a pool's handler thread and its callers share.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::worker::{Batch, FromWorker, ToWorker};
use crate::connection::Connection;
use crate::error::PoolError;
use crate::process::wire::Outcome;
use crate::queue::ring::Ring;

/// A finished item's encoded result: a slice of its chunk's result buffer (shared, so a chunk
/// of many results costs one allocation).
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    buf: Arc<Vec<u8>>,
    start: u32,
    end: u32,
}

impl Payload {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start as usize..self.end as usize]
    }
}

/// A finished item: the encoded result or why there is none.
pub(crate) type ItemResult = Result<Payload, PoolError>;

/// Called once with a single-item job's result (apply_async callbacks), in the handler.
pub(crate) type OnDone = Box<dyn FnOnce(&ItemResult) + Send>;

/// A unit of work for one worker: consecutive items of one job.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) job: u64,
    pub(crate) start: u64,
    pub(crate) function: &'static str,
    pub(crate) args: Batch,
    /// Per-item time limit of this chunk's job (otherwise the pool's).
    pub(crate) timeout: Option<Duration>,
}

impl Chunk {
    /// The message that has a worker run this chunk.
    pub(crate) fn run_message(&self) -> ToWorker {
        ToWorker::Run {
            job: self.job,
            start: self.start,
            function: self.function.to_string(),
            args: self.args.clone(),
        }
    }
}

/// One submitted map, apply or imap.
#[derive(Default)]
pub(crate) struct Job {
    /// One slot per item submitted so far.
    pub(crate) results: Vec<Option<ItemResult>>,
    /// Indices in the order they completed (for unordered iteration).
    pub(crate) completed: VecDeque<usize>,
    pub(crate) remaining: usize,
    /// Called with the (single) result when the job completes.
    pub(crate) on_done: Vec<OnDone>,
    /// No handle waits for the results: drop the job once complete.
    pub(crate) abandoned: bool,
    /// A lazy iterator reads items as they complete: wake it for every item, not only at
    /// the end.
    pub(crate) streaming: bool,
}

impl Job {
    pub(crate) fn add_items(&mut self, n: usize) -> u64 {
        let start = self.results.len() as u64;
        self.results.resize_with(self.results.len() + n, || None);
        self.remaining += n;
        start
    }

    pub(crate) fn finish(&mut self, index: usize, result: ItemResult) {
        if let Some(slot) = self.results.get_mut(index)
            && slot.is_none()
        {
            *slot = Some(result);
            self.remaining -= 1;
            self.completed.push_back(index);
        }
    }
}

/// Turns a worker's report on a failed item into the item's error.
pub(crate) fn failure(outcome: Outcome) -> PoolError {
    match outcome {
        Outcome::Returned(_) => PoolError::Io("a failure report without a failure".into()),
        Outcome::Panicked(m) => PoolError::Panicked(m),
        Outcome::Codec { message, .. } => PoolError::Codec(message),
        Outcome::Failed(m) => PoolError::Io(m),
    }
}

/// Splits a chunk's report into one result per item.
pub(crate) fn split_results(results: Batch, failures: Vec<(u32, Outcome)>) -> Vec<ItemResult> {
    let n = results.len();
    let buf = Arc::new(results.data.into_vec());
    let mut out: Vec<ItemResult> = (0..n)
        .map(|i| {
            let start = if i == 0 { 0 } else { results.ends[i - 1] };
            Ok(Payload {
                buf: buf.clone(),
                start,
                end: results.ends[i],
            })
        })
        .collect();
    for (i, f) in failures {
        if let Some(slot) = out.get_mut(i as usize) {
            *slot = Err(failure(f));
        }
    }
    out
}

/// Everything behind the pool's mutex.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) pending: VecDeque<Chunk>,
    pub(crate) jobs: HashMap<u64, Job>,
    pub(crate) next_job: u64,
    pub(crate) closed: bool,
    pub(crate) terminated: bool,
    /// The initializer failed: the pool does not start workers any more.
    pub(crate) broken: Option<PoolError>,
    pub(crate) handler_done: bool,
    /// Workers that reported ready, ever (start-up and replacements).
    pub(crate) ready_workers: usize,
    /// The live workers' report rings, by worker id, for callers that take reports while
    /// they wait (see [`pickup`]).
    pub(crate) rings: Vec<(u64, Ring)>,
    /// Reports callers took out of a ring and recorded, in order: the handler still counts
    /// them in that worker's bookkeeping and runs their callbacks.
    pub(crate) picked: Vec<Picked>,
    /// Idle workers the handler lends to callers: a caller with a one-chunk job sends it to
    /// one of them itself (see `Pool::submit_limited`), without waking the handler.
    pub(crate) lent: Vec<Lent>,
    /// Chunks callers sent to lent workers, in order, for the handler's bookkeeping.
    pub(crate) direct: Vec<(u64, Chunk)>,
}

/// One report a caller took from worker `worker`'s ring and recorded.
pub(crate) struct Picked {
    pub(crate) worker: u64,
    pub(crate) callbacks: Vec<(OnDone, ItemResult)>,
}

/// An idle worker lent to callers: its id and its connection.
pub(crate) struct Lent {
    pub(crate) worker: u64,
    pub(crate) conn: Arc<Connection>,
}

impl State {
    /// Fails every unfinished item of every job with `err` (termination, a broken pool).
    pub(crate) fn fail_all(&mut self, err: &PoolError) -> Vec<(OnDone, ItemResult)> {
        self.pending.clear();
        let mut callbacks = Vec::new();
        for job in self.jobs.values_mut() {
            for i in 0..job.results.len() {
                job.finish(i, Err(err.clone()));
            }
            if job.remaining == 0
                && let Some(Some(r)) = job.results.first()
            {
                callbacks.extend(job.on_done.drain(..).map(|cb| (cb, r.clone())));
            }
        }
        callbacks
    }
}

/// Records item results of `job` from `start` (the state is locked); returns the callbacks to
/// run if it completed, and whether waiters should be woken.
pub(crate) fn record_locked(
    st: &mut State,
    job: u64,
    start: u64,
    results: Vec<ItemResult>,
) -> (Vec<(OnDone, ItemResult)>, bool) {
    let mut callbacks = Vec::new();
    let mut wake = false;
    if let Some(j) = st.jobs.get_mut(&job) {
        for (k, r) in results.into_iter().enumerate() {
            j.finish(start as usize + k, r);
        }
        wake = j.streaming || j.remaining == 0;
        if j.remaining == 0 {
            if let Some(Some(r)) = j.results.first() {
                callbacks.extend(j.on_done.drain(..).map(|cb| (cb, r.clone())));
            }
            if j.abandoned {
                st.jobs.remove(&job);
            }
        }
    }
    (callbacks, wake)
}

/// Takes every report waiting in `ring` and records it (the state is locked). Returns whether
/// waiters should be woken, and per report (in order) the callbacks its job completed.
pub(crate) fn drain_reports(st: &mut State, ring: &Ring) -> (bool, Vec<Vec<(OnDone, ItemResult)>>) {
    let (mut wake, mut done) = (false, Vec::new());
    while ring.len() > 0 {
        let Ok(reports) = ring.get(usize::MAX, false, None) else {
            break;
        };
        for bytes in reports {
            if let Ok(FromWorker::Done {
                job,
                start,
                results,
                failures,
            }) = crate::codec::decode::<FromWorker>(&bytes)
            {
                let (callbacks, w) =
                    record_locked(st, job, start, split_results(results, failures));
                wake |= w;
                done.push(callbacks);
            }
        }
    }
    (wake, done)
}

/// Takes every report waiting in the workers' rings and records it (the state is locked),
/// leaving the workers' bookkeeping and the callbacks to the handler (`State::picked`): a
/// caller waiting for a small task gets its result without waiting for the handler to wake.
/// Returns whether waiters should be woken.
pub(crate) fn pickup(st: &mut State) -> bool {
    let rings = std::mem::take(&mut st.rings);
    let mut wake = false;
    for (worker, ring) in &rings {
        let (w, done) = drain_reports(st, ring);
        wake |= w;
        st.picked.extend(done.into_iter().map(|callbacks| Picked {
            worker: *worker,
            callbacks,
        }));
    }
    st.rings = rings;
    wake
}

/// What callers and the handler share.
pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Condvar,
    /// Written to wake the handler (new work, close, terminate).
    pub(crate) wake: Mutex<UnixStream>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn poke(&self) {
        let mut w = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = w.write(&[1]); // non-blocking: a full pipe already means "wake up"
    }

    /// Waits on the condition variable until `deadline` (`None`: no limit); `false` once it
    /// has passed.
    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, bool) {
        match deadline {
            None => (
                self.changed
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner),
                true,
            ),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (guard, false);
                }
                let (g, _) = self
                    .changed
                    .wait_timeout(guard, d - now)
                    .unwrap_or_else(PoisonError::into_inner);
                (g, true)
            }
        }
    }
}

/// Runs callbacks outside every lock; a panicking callback is reported and ignored, so the
/// pool keeps working.
pub(crate) fn run_callbacks(callbacks: Vec<(OnDone, ItemResult)>) {
    for (cb, result) in callbacks {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&result))).is_err() {
            eprintln!("multiproc: a pool callback panicked; the pool goes on");
        }
    }
}

pub(crate) type Shared = Arc<Inner>;
