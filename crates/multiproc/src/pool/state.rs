//! The state a pool's handler thread and its callers share.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::progress::Clock;
use super::worker::{Batch, Failure, FromWorker, ToWorker};
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
    /// Unique in the pool: names the chunk in a worker's progress area.
    pub(crate) seq: u64,
    pub(crate) job: u64,
    pub(crate) start: u64,
    pub(crate) function: &'static str,
    pub(crate) args: Batch,
    /// Per-item time limit of this chunk's job (otherwise the pool's).
    pub(crate) timeout: Option<Duration>,
}

impl Chunk {
    /// The message that has a worker run this chunk.
    pub(crate) fn run_message(&self, clock: Clock) -> ToWorker {
        ToWorker::Run {
            seq: self.seq,
            job: self.job,
            start: self.start,
            function: self.function.to_string(),
            args: self.args.clone(),
            clock,
        }
    }

    /// The items from `from` (an index in the chunk) on, as a chunk of their own.
    pub(crate) fn tail(&self, from: usize, seq: u64) -> Option<Chunk> {
        (from < self.args.len()).then(|| Chunk {
            seq,
            job: self.job,
            start: self.start + from as u64,
            function: self.function,
            args: self.args.slice(from, self.args.len()),
            timeout: self.timeout,
        })
    }
}

/// Who reads a job's results, and so when they may be dropped and whom to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Reader {
    /// A handle takes every result at once when the job is complete.
    #[default]
    AtTheEnd,
    /// A lazy iterator takes results in order as they come.
    InOrder,
    /// A lazy iterator takes results as they complete.
    AsCompleted,
}

/// One item's place in a job.
#[derive(Debug)]
enum Slot {
    Pending,
    Done(ItemResult),
    Taken,
}

/// One submitted map, apply or imap.
#[derive(Default)]
pub(crate) struct Job {
    /// Items `base..base + slots.len()`; the ones before `base` were taken by a lazy
    /// iterator, so memory follows the items in flight, not the items seen.
    slots: VecDeque<Slot>,
    base: usize,
    /// Indices in the order they completed (for [`Reader::AsCompleted`]).
    completed: VecDeque<usize>,
    pub(crate) remaining: usize,
    /// Called with the (single) result when the job completes.
    pub(crate) on_done: Vec<OnDone>,
    /// No handle waits for the results: drop the job once complete.
    pub(crate) abandoned: bool,
    pub(crate) reader: Reader,
    /// A lazy iterator sleeps until the next result comes.
    pub(crate) iterator_waits: bool,
}

impl Job {
    pub(crate) fn new(reader: Reader) -> Job {
        Job {
            reader,
            ..Job::default()
        }
    }

    /// Items submitted so far.
    pub(crate) fn submitted(&self) -> usize {
        self.base + self.slots.len()
    }

    pub(crate) fn add_items(&mut self, n: usize) -> u64 {
        let start = self.submitted() as u64;
        self.slots.extend((0..n).map(|_| Slot::Pending));
        self.remaining += n;
        start
    }

    /// Records item `index`'s result; the first result of an item counts, later ones (a
    /// report of an item already failed, or already taken) are ignored.
    pub(crate) fn finish(&mut self, index: usize, result: ItemResult) {
        let Some(slot) = index
            .checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(i))
        else {
            return;
        };
        if matches!(slot, Slot::Pending) {
            *slot = Slot::Done(result);
            self.remaining -= 1;
            if self.reader == Reader::AsCompleted {
                self.completed.push_back(index);
            }
        }
    }

    /// The first item's result, if it is done (a single-item job's).
    pub(crate) fn first(&self) -> Option<&ItemResult> {
        match self.slots.front() {
            Some(Slot::Done(r)) if self.base == 0 => Some(r),
            _ => None,
        }
    }

    /// Takes the next result for the job's lazy iterator (the next in order, or the next
    /// completed), if there is one.
    pub(crate) fn take_next(&mut self) -> Option<ItemResult> {
        let index = match self.reader {
            Reader::AsCompleted => self.completed.pop_front()?,
            _ => self.base,
        };
        let slot = self.slots.get_mut(index.checked_sub(self.base)?)?;
        if !matches!(slot, Slot::Done(_)) {
            return None;
        }
        let Slot::Done(r) = std::mem::replace(slot, Slot::Taken) else {
            return None;
        };
        while matches!(self.slots.front(), Some(Slot::Taken)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(r)
    }

    /// Every result, in order; an item without one failed with `Terminated`.
    pub(crate) fn into_results(self) -> Vec<ItemResult> {
        self.slots
            .into_iter()
            .map(|s| match s {
                Slot::Done(r) => r,
                Slot::Pending | Slot::Taken => Err(PoolError::Terminated),
            })
            .collect()
    }

    /// Fails every unfinished item with `err`.
    fn fail_unfinished(&mut self, err: &PoolError) {
        for i in self.base..self.submitted() {
            self.finish(i, Err(err.clone()));
        }
    }
}

/// Turns a worker's report on a failed item into the item's error.
pub(crate) fn failure(failure: Failure) -> PoolError {
    match failure {
        Failure::Task(Outcome::Returned(_)) => {
            PoolError::Io("a failure report without a failure".into())
        }
        Failure::Task(Outcome::Panicked(m)) => PoolError::Panicked(m),
        Failure::Task(Outcome::Codec { message, .. }) => PoolError::Codec(message),
        Failure::Task(Outcome::Failed(m)) => PoolError::Io(m),
        Failure::BrokeWorker(m) => PoolError::WorkerBroken(m),
    }
}

/// Results back to back in one shared buffer, one per item.
pub(crate) fn payloads(data: Vec<u8>, ends: &[u32]) -> Vec<ItemResult> {
    let buf = Arc::new(data);
    (0..ends.len())
        .map(|i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            Ok(Payload {
                buf: buf.clone(),
                start,
                end: ends[i],
            })
        })
        .collect()
}

/// Splits a chunk's report into one result per item.
pub(crate) fn split_results(results: Batch, failures: Vec<(u32, Failure)>) -> Vec<ItemResult> {
    let mut out = payloads(results.data.into_vec(), &results.ends);
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
    /// The last chunk number given out (see `Chunk::seq`).
    pub(crate) next_seq: u64,
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
    pub(crate) report: Recorded,
}

/// What recording one report did: the callbacks of the job it completed, and whether it ended
/// its chunk.
pub(crate) struct Recorded {
    pub(crate) callbacks: Vec<(OnDone, ItemResult)>,
    pub(crate) ends_chunk: bool,
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
            job.fail_unfinished(err);
            if job.remaining == 0
                && let Some(r) = job.first()
            {
                let r = r.clone();
                callbacks.extend(job.on_done.drain(..).map(|cb| (cb, r.clone())));
            }
        }
        callbacks
    }

    /// A new chunk number.
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
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
        wake = j.remaining == 0 || std::mem::take(&mut j.iterator_waits);
        if j.remaining == 0 {
            if let Some(r) = j.first() {
                let r = r.clone();
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
/// waiters should be woken, and per report (in order) what recording it did.
pub(crate) fn drain_reports(st: &mut State, ring: &Ring) -> (bool, Vec<Recorded>) {
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
                last,
            }) = crate::codec::decode::<FromWorker>(&bytes)
            {
                let (callbacks, w) =
                    record_locked(st, job, start, split_results(results, failures));
                wake |= w;
                done.push(Recorded {
                    callbacks,
                    ends_chunk: last,
                });
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
        st.picked.extend(done.into_iter().map(|report| Picked {
            worker: *worker,
            report,
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
