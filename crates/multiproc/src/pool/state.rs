//! The state a pool's handler thread and its callers share.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::progress::Clock;
use super::reports::Reports;
use super::wire::{Batch, Failure, FromWorker, RunRef};
use crate::connection::Connection;
use crate::error::{CodecError, PoolError};
use crate::process::Outcome;

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
    /// The encoded message that has a worker run this chunk (the arguments are copied into
    /// it once, not cloned first).
    pub(crate) fn run_message(&self, clock: Clock) -> Result<Vec<u8>, crate::error::CodecError> {
        crate::codec::encode(&RunRef::Run {
            seq: self.seq,
            job: self.job,
            start: self.start,
            function: self.function,
            args: &self.args,
            clock,
        })
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
    /// For [`Reader::InOrder`]: how many slots from the front are done (the results the
    /// iterator can take now).
    head_done: usize,
    /// A lazy iterator sleeps until `wake_after` results can be taken (or the job is
    /// complete, or [`FLUSH_AFTER`] passed since the first one could): one wake-up per batch
    /// of small results instead of one per result.
    iterator_waits: bool,
    wake_after: usize,
    /// A result can be taken but the iterator was not woken for it yet (see
    /// [`State::flush_deferred`]).
    deferred: bool,
    /// Async tasks waiting for this job (`pool::future`), and callers asleep on a worker's
    /// report ring (`result::sleep_on_worker`): woken wherever the condition variable's
    /// waiters would find something new for it.
    wakers: Vec<Waker>,
    /// The worker a caller sent this job's only chunk to itself, if one did.
    sent_to: Option<u64>,
    /// An awaited result's look-again-soon while the waiting policy allows (see
    /// `pool::future`).
    #[cfg(feature = "tokio")]
    pub(crate) spin: Option<crate::spin::Spinner>,
}

/// How long a lazy iterator that waits for a batch of results (see `Job::wait_for`) may
/// leave one result untaken: the latency a batch may add to a result.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(1);

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
            match self.reader {
                Reader::AsCompleted => self.completed.push_back(index),
                Reader::InOrder if index - self.base == self.head_done => {
                    while matches!(self.slots.get(self.head_done), Some(Slot::Done(_))) {
                        self.head_done += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// How many results the job's lazy iterator can take now.
    pub(crate) fn yieldable(&self) -> usize {
        match self.reader {
            Reader::AsCompleted => self.completed.len(),
            Reader::InOrder => self.head_done,
            Reader::AtTheEnd => 0,
        }
    }

    /// The lazy iterator goes to sleep until `n` results can be taken, the job completes, or
    /// a result waited [`FLUSH_AFTER`].
    pub(crate) fn wait_for(&mut self, n: usize) {
        self.iterator_waits = true;
        self.wake_after = n.max(1);
    }

    /// Wakes `waker` at the job's next change that a waiter of the condition variable would
    /// act on (a result recorded for it, its end, a deferred batch).
    pub(crate) fn wake_on_change(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|w| w.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }

    /// Undoes [`wake_on_change`](Job::wake_on_change) for `waker`.
    pub(crate) fn forget_waker(&mut self, waker: &Waker) {
        self.wakers.retain(|w| !w.will_wake(waker));
    }

    fn wake_tasks(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
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
        if self.reader == Reader::InOrder {
            self.head_done -= 1;
        }
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
        self.wake_tasks();
    }
}

/// Turns a worker's report on a failed item into the item's error.
pub(crate) fn failure(failure: Failure) -> PoolError {
    match failure {
        Failure::Task(Outcome::Returned(_)) => {
            PoolError::Failed("a failure report without a failure".into())
        }
        Failure::Task(Outcome::Panicked(m)) => PoolError::Panicked(m),
        Failure::Task(Outcome::Codec { encode, message }) => PoolError::Codec(match encode {
            true => CodecError::Encode(message),
            false => CodecError::Decode(message),
        }),
        Failure::Task(Outcome::Failed(m)) => PoolError::Failed(m),
        // Sent by a dying worker's abort handler on its process channel, never in a report.
        Failure::Task(Outcome::MemoryLimit) => {
            PoolError::Failed("a memory-limit report in a task's failure".into())
        }
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

/// Everything behind the pool's mutex. Its rules live in its methods: what may still be
/// submitted, the line of chunks waiting for a worker, the jobs and their results, and the two
/// shortcuts callers take past the handler (chunks sent to lent workers, reports picked up).
#[derive(Default)]
pub(crate) struct State {
    /// Chunks waiting for a worker, in the order they go out.
    pending: VecDeque<Chunk>,
    jobs: HashMap<u64, Job>,
    next_job: u64,
    /// The last chunk number given out (see `Chunk::seq`).
    next_seq: u64,
    closed: bool,
    terminated: bool,
    /// The initializer failed (or a worker could not be started): no more workers start and
    /// every task fails with this.
    broken: Option<PoolError>,
    /// Workers that reported ready, ever (start-up and replacements).
    ready_workers: usize,
    /// The live workers' report rings, by worker id, for callers that take reports while
    /// they wait (see [`pickup`]).
    rings: Vec<(u64, Reports)>,
    /// Reports callers took out of a ring and recorded, in order: the handler still counts
    /// them in that worker's bookkeeping and runs their callbacks.
    picked: Vec<Picked>,
    /// Idle workers the handler lends to callers: a caller with a one-chunk job sends it to
    /// one of them itself (see `Pool::submit_limited`), without waking the handler.
    lent: Vec<Lent>,
    /// Chunks callers sent to lent workers (worker, chunk, when), in order, for the
    /// handler's bookkeeping.
    direct: Vec<(u64, Chunk, Instant)>,
    /// The argument bytes those chunks hold (kept until the handler counts them).
    direct_bytes: usize,
    /// Workers a caller sent a chunk to, while the handler has not changed what it lends
    /// since: the caller that takes such a worker's report lends it again at once (see
    /// [`pickup`]), so that one-at-a-time tasks keep going past the handler. Emptied
    /// whenever the handler changes the lent workers (it may have sent them work itself).
    on_loan: Vec<Lent>,
    /// Whether callers may lend a worker again themselves: not when workers retire after a
    /// number of tasks or tasks have a time limit (the handler must count and time them).
    relend: bool,
    /// Whether the handler sleeps (set under the lock before it sleeps, cleared when it next
    /// takes the lock): a caller that took reports the handler must act on wakes it.
    pub(crate) asleep: bool,
    /// Lazy iterators that may still submit items: a closed pool does not finish before they
    /// end (their input may still hold items).
    open_streams: usize,
    /// Jobs whose sleeping iterator has a result it was not woken for, and since when (see
    /// [`State::flush_deferred`]).
    deferred: Vec<(u64, Instant)>,
}

impl State {
    /// The state of a process pool whose callers may lend a worker again themselves when
    /// `relend` (see [`State::sent_directly`]).
    pub(crate) fn relending(relend: bool) -> State {
        State {
            relend,
            ..State::default()
        }
    }

    /// Whether items may be submitted now: to a new job (`None`), or more items of a lazy
    /// iterator's job, which a closed pool still takes (`close` means no new jobs).
    pub(crate) fn accepting(&self, job: Option<u64>) -> Result<(), PoolError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if self.terminated {
            return Err(PoolError::Terminated);
        }
        if self.closed && job.is_none() {
            return Err(PoolError::Closed);
        }
        Ok(())
    }

    /// No new jobs; the handler stops once every submitted task is done.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Stop now: the handler fails what is left.
    pub(crate) fn terminate(&mut self) {
        self.terminated = true;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Why the pool cannot run tasks any more, if it cannot.
    pub(crate) fn broken(&self) -> Option<&PoolError> {
        self.broken.as_ref()
    }

    /// The pool cannot run tasks any more (the first reason is kept; not once terminated,
    /// which says why already).
    pub(crate) fn break_with(&mut self, e: PoolError) {
        if self.broken.is_none() && !self.terminated {
            self.broken = Some(e);
        }
    }

    /// A worker reported ready.
    pub(crate) fn worker_ready(&mut self) {
        self.ready_workers += 1;
    }

    /// Workers that reported ready, ever.
    pub(crate) fn ready_workers(&self) -> usize {
        self.ready_workers
    }

    /// A new job whose results `reader` takes.
    pub(crate) fn new_job(&mut self, reader: Reader) -> u64 {
        self.next_job += 1;
        self.jobs.insert(self.next_job, Job::new(reader));
        self.next_job
    }

    pub(crate) fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub(crate) fn job_mut(&mut self, id: u64) -> Option<&mut Job> {
        self.jobs.get_mut(&id)
    }

    /// A new job for a lazy iterator, open until [`State::close_stream`].
    pub(crate) fn open_stream(&mut self, reader: Reader) -> u64 {
        self.open_streams += 1;
        self.new_job(reader)
    }

    /// A lazy iterator submits nothing more.
    pub(crate) fn close_stream(&mut self) {
        self.open_streams = self.open_streams.saturating_sub(1);
    }

    /// Whether a closed pool may stop: nothing waits in line and no lazy iterator may still
    /// submit (the workers' own chunks are the handler's to count).
    pub(crate) fn may_finish(&self) -> bool {
        self.closed && self.pending.is_empty() && self.open_streams == 0
    }

    /// Whether job `id` has no item left to run (a job already taken counts as done).
    pub(crate) fn job_done(&self, id: u64) -> bool {
        self.jobs.get(&id).is_none_or(|j| j.remaining == 0)
    }

    /// Takes job `id` out of the pool, with its results.
    pub(crate) fn take_job(&mut self, id: u64) -> Option<Job> {
        self.jobs.remove(&id)
    }

    /// No handle waits for job `id` any more: it goes once complete.
    pub(crate) fn abandon(&mut self, id: u64) {
        let done = match self.jobs.get_mut(&id) {
            Some(j) => {
                j.abandoned = true;
                j.remaining == 0
            }
            None => false,
        };
        if done {
            self.jobs.remove(&id);
        }
    }

    /// A new chunk number.
    pub(crate) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Chunks join the end of the line.
    pub(crate) fn enqueue(&mut self, chunks: impl IntoIterator<Item = Chunk>) {
        self.pending.extend(chunks);
    }

    /// A chunk goes back to the front of the line (it had not started, or its rest had not).
    pub(crate) fn requeue(&mut self, chunk: Chunk) {
        self.pending.push_front(chunk);
    }

    /// The chunk next in line.
    pub(crate) fn next_in_line(&self) -> Option<&Chunk> {
        self.pending.front()
    }

    /// Takes the chunk next in line.
    pub(crate) fn take_next_in_line(&mut self) -> Option<Chunk> {
        self.pending.pop_front()
    }

    pub(crate) fn line_is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The workers the handler lends out now (see [`State::lend_one`]); none while chunks
    /// wait in line (the handler hands those out itself) or once the pool stops.
    pub(crate) fn lend(&mut self, idle: impl Iterator<Item = Lent> + Clone) {
        if !self.lending() {
            self.lend_none();
            return;
        }
        // The same workers in another order (callers lend them back as their tasks end)
        // are no change.
        let same = idle.clone().count() == self.lent.len()
            && idle
                .clone()
                .all(|l| self.lent.iter().any(|m| m.worker == l.worker));
        if !same {
            self.lent = idle.collect();
            self.on_loan.clear();
        }
    }

    /// Whether workers may be lent now: not while chunks wait in line, nor once the pool
    /// stops.
    fn lending(&self) -> bool {
        self.pending.is_empty() && !self.closed && !self.terminated && self.broken.is_none()
    }

    /// Takes every lent worker back.
    pub(crate) fn lend_none(&mut self) {
        self.lent.clear();
        self.on_loan.clear();
    }

    /// A caller takes a lent worker to send it a chunk itself.
    pub(crate) fn lend_one(&mut self) -> Option<Lent> {
        self.lent.pop()
    }

    /// A caller sent `chunk` to lent worker `lent`: the handler counts it when it next looks.
    pub(crate) fn sent_directly(&mut self, lent: Lent, chunk: Chunk) {
        if let Some(j) = self.jobs.get_mut(&chunk.job) {
            j.sent_to = Some(lent.worker);
        }
        self.direct_bytes += chunk.args.data.len();
        self.direct.push((lent.worker, chunk, Instant::now()));
        if self.relend {
            self.on_loan.push(lent);
        }
    }

    /// A caller recorded the report that ended worker `worker`'s chunk: if a caller had sent
    /// it (and the handler has sent it nothing since), the worker is idle again and is lent
    /// again at once.
    /// Returns whether it was lent again (the handler has nothing to do for it).
    fn chunk_ended(&mut self, worker: u64) -> bool {
        if let Some(i) = self.on_loan.iter().position(|l| l.worker == worker) {
            let lent = self.on_loan.swap_remove(i);
            // Not past a backlog the handler has yet to count (it may be busy awake, with
            // a long callback or a dead worker): the report then goes its way.
            if self.lending() && !self.backlogged() {
                self.lent.push(lent);
                return true;
            }
        }
        false
    }

    /// The worker a caller sent job `id` to itself, and its report ring.
    pub(crate) fn sent_to(&self, id: u64) -> Option<(u64, Reports)> {
        let worker = self.jobs.get(&id)?.sent_to?;
        Some((worker, self.ring_of(worker)?))
    }

    /// Worker `worker`'s report ring.
    pub(crate) fn ring_of(&self, worker: u64) -> Option<Reports> {
        Some(self.rings.iter().find(|(w, _)| *w == worker)?.1.clone())
    }

    /// The rings callers take reports from, to [`watch`](Reports::watch) while spinning.
    pub(crate) fn rings(&self) -> Vec<Reports> {
        self.rings.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Chunks callers sent to lent workers since the handler last looked, in order.
    pub(crate) fn take_sent_directly(&mut self) -> Vec<(u64, Chunk, Instant)> {
        self.direct_bytes = 0;
        std::mem::take(&mut self.direct)
    }

    /// Reports callers recorded since the handler last looked, in order.
    pub(crate) fn take_picked(&mut self) -> Vec<Picked> {
        std::mem::take(&mut self.picked)
    }

    /// Wakes the iterators that left a result untaken for [`FLUSH_AFTER`] (their batch did
    /// not fill): returns whether any must be woken (notify `changed`), and when the next one
    /// is due.
    pub(crate) fn flush_deferred(&mut self, now: Instant) -> (bool, Option<Instant>) {
        let (mut wake, mut next) = (false, None::<Instant>);
        let jobs = &mut self.jobs;
        self.deferred.retain(|&(id, since)| {
            let Some(j) = jobs.get_mut(&id).filter(|j| j.deferred && j.iterator_waits) else {
                return false;
            };
            let due = since + FLUSH_AFTER;
            if due <= now {
                j.iterator_waits = false;
                j.deferred = false;
                j.wake_tasks();
                wake = true;
                return false;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
            true
        });
        (wake, next)
    }

    /// Whether callers did something the handler has not counted yet.
    pub(crate) fn callers_acted(&self) -> bool {
        !self.picked.is_empty() || !self.direct.is_empty()
    }

    /// The report rings callers may take reports from: those of `workers` (by id).
    pub(crate) fn show_rings(
        &mut self,
        workers: impl ExactSizeIterator<Item = (u64, Reports)> + Clone,
    ) {
        if self.rings.len() != workers.len()
            || self
                .rings
                .iter()
                .map(|r| r.0)
                .ne(workers.clone().map(|w| w.0))
        {
            self.rings = workers.collect();
        }
    }

    /// Workers that are gone: nobody may send to them or read their rings any more.
    pub(crate) fn forget_workers(&mut self, gone: &[u64]) {
        self.lent.retain(|l| !gone.contains(&l.worker));
        self.on_loan.retain(|l| !gone.contains(&l.worker));
        self.rings.retain(|(id, _)| !gone.contains(id));
    }
}

/// One report a caller took from worker `worker`'s ring and recorded.
pub(crate) struct Picked {
    pub(crate) worker: u64,
    /// When it was taken (the chunk's end, for the handler's average chunk time).
    pub(crate) at: Instant,
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
    /// Fails every unfinished item of every job with `err` (termination, a broken pool), and
    /// empties the line.
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
        let ready = j.yieldable();
        if j.remaining == 0 || (j.iterator_waits && ready >= j.wake_after) {
            j.wake_tasks();
            wake = true;
            j.iterator_waits = false;
            j.deferred = false;
        } else if j.iterator_waits && ready > 0 && !j.deferred {
            // The batch is not full: the handler wakes the iterator after FLUSH_AFTER.
            j.deferred = true;
            st.deferred.push((job, Instant::now()));
        }
        let Some(j) = st.jobs.get_mut(&job) else {
            return (callbacks, wake);
        };
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

/// Takes every report waiting in `reports` and records it (the state is locked). Returns
/// whether waiters should be woken, and per report (in order) what recording it did.
pub(crate) fn drain_reports(st: &mut State, reports: &Reports) -> (bool, Vec<Recorded>) {
    let (mut wake, mut done) = (false, Vec::new());
    for report in reports.take() {
        if let FromWorker::Done {
            job,
            start,
            results,
            failures,
            last,
        } = report
        {
            let (callbacks, w) = record_locked(st, job, start, split_results(results, failures));
            wake |= w;
            done.push(Recorded {
                callbacks,
                ends_chunk: last,
            });
        }
    }
    (wake, done)
}

/// Takes every report waiting in the workers' rings and records it (the state is locked),
/// leaving the workers' bookkeeping and the callbacks to the handler (`State::picked`): a
/// caller waiting for a small task gets its result without waiting for the handler to wake.
/// Returns whether waiters should be woken.
///
/// A report the handler must act on (callbacks to run, a chunk it sent, a result held back for
/// a batch) wakes it if it sleeps: a caller that [`watch`](Reports::watch)es the rings keeps the
/// workers from ringing for it. So does a long backlog of what callers did.
pub(crate) fn pickup(shared: &Inner, st: &mut State) -> bool {
    let rings = std::mem::take(&mut st.rings);
    let (mut wake, mut for_handler) = (false, false);
    let deferred = st.deferred.len();
    for (worker, ring) in &rings {
        let (w, done) = drain_reports(st, ring);
        wake |= w;
        for report in done {
            let relent = report.ends_chunk && st.chunk_ended(*worker);
            for_handler |= !relent || !report.callbacks.is_empty();
            st.picked.push(Picked {
                worker: *worker,
                at: Instant::now(),
                report,
            });
        }
    }
    st.rings = rings;
    // A result held back for a batch is the handler's to flush in time (one held back
    // before this pickup has its timer already).
    for_handler |= st.deferred.len() > deferred || st.backlogged();
    if for_handler && st.asleep {
        st.asleep = false;
        shared.poke();
    }
    wake
}

/// A caller stops watching `rings` (see `reports`: the read-modify-write and fence of
/// [`Reports::unwatch`]), then looks once more, under the lock: what came while it watched
/// rang no doorbell, so it takes it (and wakes the handler if that must act on it).
pub(crate) fn end_watch(shared: &Inner, st: &mut State, rings: &[Reports]) {
    rings.iter().for_each(Reports::unwatch);
    if pickup(shared, st) {
        shared.changed.notify_all();
    }
}

/// What callers did past a sleeping handler that makes them wake it (its bookkeeping grows).
const BACKLOG: usize = 256;
/// The same for the argument bytes of the chunks callers sent (the handler keeps a chunk
/// until it has counted it, to run it again if its worker dies).
const BACKLOG_BYTES: usize = 4 << 20;

impl State {
    /// Whether callers did so much past the handler that it must count it now (see
    /// [`BACKLOG`]).
    fn backlogged(&self) -> bool {
        self.picked.len() + self.direct.len() >= BACKLOG || self.direct_bytes >= BACKLOG_BYTES
    }
}

/// What callers and the handler share.
pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Changed,
    /// How the ones that run the line are woken (new work, close, terminate).
    pub(crate) wake: Wake,
}

/// The condition variable callers wait on for their results: a notification nobody waits for
/// makes no system call (std's `notify_all` always makes one, and a caller that took its own
/// result notifies on every round trip).
#[derive(Debug, Default)]
pub(crate) struct Changed {
    cv: Condvar,
    /// Threads in [`Inner::wait`]; counted under the state lock, before they wait.
    waiters: std::sync::atomic::AtomicUsize,
}

impl Changed {
    /// Wakes every waiter, if there is one. Called after changing the state under its lock,
    /// so a waiter either saw the change before it waited or is counted here.
    pub(crate) fn notify_all(&self) {
        if self.waiters.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }
}

/// Who runs a pool's line of chunks, and so how [`Inner::poke`] wakes them.
pub(crate) enum Wake {
    /// A process pool's handler thread: written to (a socket it polls with its workers).
    Handler(Mutex<UnixStream>),
    /// A thread pool's threads: they sleep on this condition variable, with the state lock.
    Threads(Condvar),
    /// Nobody here: the tasks run elsewhere (a [`Ledger`](super::Ledger)'s executor), which
    /// may say how to cancel a job that has not started.
    Elsewhere(std::sync::OnceLock<Canceller>),
}

/// How an executor whose tasks run elsewhere cancels job `id`: whether it did.
pub(crate) type Canceller = Box<dyn Fn(u64) -> bool + Send + Sync>;

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn poke(&self) {
        match &self.wake {
            Wake::Handler(w) => {
                let mut w = w.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = w.write(&[1]); // non-blocking: a full pipe already means "wake up"
            }
            Wake::Threads(work) => {
                work.notify_all();
            }
            Wake::Elsewhere(_) => {}
        }
    }

    /// Cancels job `id` if none of its items started (see [`State::cancel`]; for tasks that
    /// run elsewhere, their executor's canceller decides); whether it did.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let mut st = self.lock();
        let callbacks = match st.cancel(id) {
            Some(callbacks) => callbacks,
            None => {
                let Wake::Elsewhere(hook) = &self.wake else {
                    return false;
                };
                let Some(hook) = hook.get() else {
                    return false;
                };
                if st.job_done(id) {
                    return false;
                }
                drop(st);
                if !hook(id) {
                    return false;
                }
                st = self.lock();
                st.fail_job(id, &PoolError::Cancelled)
            }
        };
        drop(st);
        self.changed.notify_all();
        run_callbacks(callbacks);
        true
    }

    /// Waits on the condition variable until `deadline` (`None`: no limit); `false` once it
    /// has passed.
    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let waiters = &self.changed.waiters;
        match deadline {
            None => {
                waiters.fetch_add(1, SeqCst);
                let g = self
                    .changed
                    .cv
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
                waiters.fetch_sub(1, SeqCst);
                (g, true)
            }
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (guard, false);
                }
                waiters.fetch_add(1, SeqCst);
                let (g, _) = self
                    .changed
                    .cv
                    .wait_timeout(guard, d - now)
                    .unwrap_or_else(PoisonError::into_inner);
                waiters.fetch_sub(1, SeqCst);
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

/// Cancelling: chunks still in line have not started (a chunk leaves the line when a worker
/// is sent it), so they can be taken out and their items failed with `Cancelled`.
impl State {
    /// Takes job `id` out of the line if none of its unfinished items started; returns the
    /// callbacks to run, or `None` when it could not be cancelled (done, started, or an open
    /// lazy iterator's job, whose input may still hold items).
    pub(crate) fn cancel(&mut self, id: u64) -> Option<Vec<(OnDone, ItemResult)>> {
        let job = self.jobs.get(&id)?;
        if job.remaining == 0 || job.reader != Reader::AtTheEnd {
            return None;
        }
        let waiting: usize = self
            .pending
            .iter()
            .filter(|c| c.job == id)
            .map(|c| c.args.len())
            .sum();
        if waiting != job.remaining {
            return None;
        }
        Some(self.cancel_where(|c| c.job == id))
    }

    /// Fails every unfinished item of job `id` with `err`; the callbacks to run.
    pub(crate) fn fail_job(&mut self, id: u64, err: &PoolError) -> Vec<(OnDone, ItemResult)> {
        let Some(j) = self.jobs.get(&id) else {
            return Vec::new();
        };
        let failed = (j.base..j.submitted()).map(|_| Err(err.clone())).collect();
        let base = j.base as u64;
        record_locked(self, id, base, failed).0
    }

    /// Fails job `id`'s items still in line with `Cancelled` (a dropped lazy iterator's).
    pub(crate) fn cancel_pending_of(&mut self, id: u64) -> Vec<(OnDone, ItemResult)> {
        self.cancel_where(|c| c.job == id)
    }

    /// Fails every item still in line with `Cancelled` (shutdown with `cancel_pending`).
    pub(crate) fn cancel_pending(&mut self) -> Vec<(OnDone, ItemResult)> {
        self.cancel_where(|_| true)
    }

    fn cancel_where(&mut self, which: impl Fn(&Chunk) -> bool) -> Vec<(OnDone, ItemResult)> {
        let (gone, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition::<VecDeque<_>, _>(|c| which(c));
        self.pending = kept;
        let mut callbacks = Vec::new();
        for c in gone {
            let failed = (0..c.args.len())
                .map(|_| Err(PoolError::Cancelled))
                .collect();
            callbacks.extend(record_locked(self, c.job, c.start, failed).0);
        }
        callbacks
    }
}
