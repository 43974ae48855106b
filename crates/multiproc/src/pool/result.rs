//! Handles on results: [`AsyncResult`], [`MapResult`], and the lazy [`Imap`] iterator.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Core;
use std::collections::VecDeque;

use super::reports::Reports;
use super::state::{ItemResult, Reader, Shared};
use super::wire::Batch;
use crate::error::PoolError;

#[cfg(feature = "tokio")]
#[path = "future.rs"]
mod future;
#[cfg(feature = "tokio")]
pub use future::ImapStream;

fn decode<R: DeserializeOwned>(r: ItemResult) -> Result<R, PoolError> {
    Ok(crate::codec::decode(r?.bytes())?)
}

/// How long a caller looks for its result before it sleeps.
const SPIN: std::time::Duration = crate::spin::REPLY_SPIN;

/// Waits until job `id` has no item left, at most until `deadline`; `false` on timeout.
fn wait_done(shared: &Shared, id: u64, deadline: Option<Instant>) -> bool {
    // A small task's result is usually there within microseconds: look a few times before
    // sleeping (on the report ring of the worker this caller sent the task to, or on the
    // condition variable; a wake-up from another CPU costs more), while the library's
    // waiting policy says that spinning pays.
    let mut spin = crate::spin::Spinner::new(SPIN);
    // While spinning, the workers need not wake the handler for their reports: this caller
    // takes them (see `reports`).
    let watching = spin.spinning().then(|| Watching::new(shared));
    let mut hit = false;
    while spin.spinning() {
        let (done, wake) = {
            let mut st = shared.lock();
            // Take the reports ourselves rather than wait for the handler to wake for
            // them: one wake-up less on a round trip.
            let wake = super::state::pickup(shared, &mut st);
            (st.job_done(id), wake)
        };
        if wake {
            shared.changed.notify_all();
        }
        if done {
            hit = true;
            break;
        }
        if !spin.keep_going() {
            break;
        }
    }
    drop(watching);
    if hit {
        spin.hit();
        return true;
    }
    if let Some(done) = sleep_on_worker(shared, id, deadline) {
        return done;
    }
    let mut st = shared.lock();
    loop {
        if st.job_done(id) {
            return true;
        }
        let (g, more) = shared.wait(st, deadline);
        st = g;
        if !more {
            return st.job_done(id);
        }
    }
}

/// Sleeps until job `id` is done (`Some(true)`) or `deadline` passes (`Some(false)`) on the
/// report ring of the worker the caller sent the job to itself: the worker's report wakes the
/// caller directly (a futex in the ring's shared memory), not through the handler (two
/// wake-ups a round trip instead of three; on one CPU that is most of its cost). The caller
/// takes that worker's reports meanwhile (the worker rings the handler for none of them), and
/// whatever else completes the job (the handler failing it, another caller taking its report)
/// wakes the same futex through the job's wakers. `None`: the job did not go to a worker this
/// way (the caller sleeps on the condition variable).
fn sleep_on_worker(shared: &Shared, id: u64, deadline: Option<Instant>) -> Option<bool> {
    let (_, reports) = shared.lock().sent_to(id)?;
    let watching = Watching::of(shared, vec![reports.clone()]);
    let waker = reports.arrival_waker();
    let outcome = std::cell::Cell::new(None);
    let done = loop {
        // Looked at once registered as a sleeper: a report put meanwhile, or a waker, ends
        // the sleep at once.
        let slept = reports.sleep_for_arrival(
            || {
                let mut st = shared.lock();
                // This caller's own pickup must not wake it again.
                if let Some(job) = st.job_mut(id) {
                    job.forget_waker(&waker);
                }
                if super::state::pickup(shared, &mut st) {
                    shared.changed.notify_all();
                }
                match st.job_mut(id).filter(|j| j.remaining > 0) {
                    None => outcome.set(Some(true)),
                    // Woken (and dropped) at each change: registered again before every sleep.
                    Some(job) => job.wake_on_change(&waker),
                }
                outcome.get().is_some()
            },
            deadline,
        );
        if let Some(done) = outcome.get() {
            break done;
        }
        if !slept {
            break false;
        }
    };
    // Ending the watch takes what came meanwhile: a report that came during the last sleep
    // completes the job even when its time is up. The waker goes with the wait.
    let mut st = shared.lock();
    watching.end(&mut st);
    if let Some(job) = st.job_mut(id) {
        job.forget_waker(&waker);
    }
    Some(done || st.job_done(id))
}

/// A caller watching the workers' report rings while it spins (see `reports`): the workers
/// ring no doorbell meanwhile. Ending the watch (also on unwinding) takes what came while it
/// watched, which rang no doorbell, and wakes whoever must act on it.
struct Watching<'a> {
    shared: &'a Shared,
    /// `None` once ended.
    rings: Option<Vec<Reports>>,
}

impl<'a> Watching<'a> {
    fn new(shared: &'a Shared) -> Watching<'a> {
        let rings = shared.lock().rings();
        Self::of(shared, rings)
    }

    fn of(shared: &'a Shared, rings: Vec<Reports>) -> Watching<'a> {
        rings.iter().for_each(Reports::watch);
        Watching {
            shared,
            rings: Some(rings),
        }
    }

    /// Ends the watch under the lock the caller holds already.
    fn end(mut self, st: &mut super::state::State) {
        if let Some(rings) = self.rings.take() {
            super::state::end_watch(self.shared, st, &rings);
        }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        if let Some(rings) = self.rings.take() {
            super::state::end_watch(self.shared, &mut self.shared.lock(), &rings);
        }
    }
}

/// Takes the results of a finished job out of the pool.
fn take(shared: &Shared, id: u64) -> Vec<ItemResult> {
    let job = shared.lock().take_job(id);
    job.map(|j| j.into_results()).unwrap_or_default()
}

fn abandon(shared: &Shared, id: u64) {
    shared.lock().abandon(id);
}

/// The pending result of [`Pool::apply_async`](crate::Pool::apply_async).
pub struct AsyncResult<R> {
    shared: Shared,
    job: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("job", &self.job)
            .finish()
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    pub(crate) fn new(shared: Shared, job: u64) -> Self {
        AsyncResult {
            shared,
            job,
            _r: PhantomData,
        }
    }

    /// Waits for the result.
    pub fn get(self) -> Result<R, PoolError> {
        wait_done(&self.shared, self.job, None);
        self.take_one()
    }

    /// Waits at most `timeout` ([`PoolError::WaitTimeout`] after; the task goes on).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, PoolError> {
        if !wait_done(&self.shared, self.job, Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout(crate::TimedOut(timeout)));
        }
        self.take_one()
    }

    fn take_one(&self) -> Result<R, PoolError> {
        take(&self.shared, self.job)
            .into_iter()
            .next()
            .map(decode)
            .unwrap_or(Err(PoolError::Invalid(
                "the result was already taken".into(),
            )))
    }

    /// Waits until the task is done (or `timeout` passes); returns whether it is.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        wait_done(&self.shared, self.job, timeout.map(|t| Instant::now() + t))
    }

    /// Whether the task is done.
    pub fn ready(&self) -> bool {
        self.shared.lock().job_done(self.job)
    }

    /// Takes the task out of the line if it has not started (Python's `Future.cancel`):
    /// `true` if it did, and the task then fails with [`PoolError::Cancelled`]; `false` if it
    /// runs or ran already (it goes on).
    pub fn cancel(&self) -> bool {
        self.shared.cancel(self.job)
    }

    /// Whether the task is done and succeeded (`None` while it runs).
    pub fn successful(&self) -> Option<bool> {
        let st = self.shared.lock();
        let j = st.job(self.job)?;
        if j.remaining > 0 {
            return None;
        }
        j.first().map(|r| r.is_ok())
    }
}

impl<R: DeserializeOwned + 'static> AsyncResult<R> {
    /// Runs `f` once the task is done (in the pool's handler thread; at once if it is done
    /// already), with the item's result; the result stays available to `get`.
    pub(crate) fn on_done(&self, f: impl FnOnce(&ItemResult) + Send + 'static) {
        let mut st = self.shared.lock();
        match st.job_mut(self.job) {
            Some(j) if j.remaining > 0 => j.on_done.push(Box::new(f)),
            Some(j) => {
                let r = j.first().cloned().unwrap_or(Err(PoolError::Terminated));
                drop(st);
                super::state::run_callbacks(vec![(Box::new(f), r)]);
            }
            None => {}
        }
    }

    /// Calls `f` with the value when the task succeeds (Python's `callback`). A panic in `f`
    /// is reported and the pool goes on.
    pub fn callback(self, f: impl FnOnce(R) + Send + 'static) -> Self {
        self.on_done(move |r| {
            if let Ok(v) = decode::<R>(r.clone()) {
                f(v)
            }
        });
        self
    }

    /// Calls `f` with the error when the task fails (Python's `error_callback`).
    pub fn error_callback(self, f: impl FnOnce(PoolError) + Send + 'static) -> Self {
        self.on_done(move |r| {
            if let Err(e) = decode::<R>(r.clone()) {
                f(e)
            }
        });
        self
    }

    /// [`callback`](AsyncResult::callback) and [`error_callback`](AsyncResult::error_callback)
    /// without keeping the handle. Exactly one of the two runs, in the pool's handler thread:
    /// send what it gets somewhere (a channel, a shared counter) rather than doing slow work
    /// there.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// #[multiproc::func]
    /// fn parse(text: String) -> u64 {
    ///     text.trim().parse().expect("a number")
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = multiproc::Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// for text in ["1", " 2 ", "three"] {
    ///     let (ok, err) = (tx.clone(), tx.clone());
    ///     pool.apply_async(&parse, text.to_string())?.then(
    ///         move |n| ok.send(Ok(n)).unwrap(),
    ///         move |e| err.send(Err(e.to_string())).unwrap(),
    ///     );
    /// }
    /// let wait = Duration::from_secs(10);
    /// let mut got: Vec<_> = (0..3).map(|_| rx.recv_timeout(wait).unwrap()).collect();
    /// got.sort();
    /// assert_eq!(got[..2], [Ok(1), Ok(2)]);
    /// assert!(got[2].as_ref().unwrap_err().contains("a number")); // the panic's message
    /// # Ok(()) }
    /// ```
    pub fn then(
        self,
        on_ok: impl FnOnce(R) + Send + 'static,
        on_err: impl FnOnce(PoolError) + Send + 'static,
    ) {
        drop(self.callback(on_ok).error_callback(on_err));
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        abandon(&self.shared, self.job);
    }
}

/// The pending results of [`Pool::map_async`](crate::Pool::map_async).
pub struct MapResult<R> {
    shared: Shared,
    job: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapResult").field("job", &self.job).finish()
    }
}

/// The result type of [`Pool::map_encoded`](super::Pool::map_encoded): results kept as the
/// bytes the worker sent ([`MapResult::get_each_encoded`]).
#[derive(Debug, serde::Deserialize)]
pub struct Encoded;

impl MapResult<Encoded> {
    /// Waits for every item; each item's encoded result (decode it with
    /// [`codec::decode`](crate::codec::decode)) or its error, in order.
    pub fn get_each_encoded(self) -> Vec<Result<Vec<u8>, PoolError>> {
        wait_done(&self.shared, self.job, None);
        take(&self.shared, self.job)
            .into_iter()
            .map(|r| r.map(|p| p.bytes().to_vec()))
            .collect()
    }
}

impl<R: DeserializeOwned> MapResult<R> {
    pub(crate) fn new(shared: Shared, job: u64) -> Self {
        MapResult {
            shared,
            job,
            _r: PhantomData,
        }
    }

    /// Waits for every item; the first failing item's error is returned.
    pub fn get(self) -> Result<Vec<R>, PoolError> {
        wait_done(&self.shared, self.job, None);
        self.take_all()
    }

    /// Takes the results of the finished job: the first failing item's error, or them all
    /// ([`PoolError::Invalid`] if they were taken already: a future polled after it ended).
    pub(crate) fn take_all(&self) -> Result<Vec<R>, PoolError> {
        let job = self.shared.lock().take_job(self.job);
        let Some(job) = job else {
            return Err(PoolError::Invalid("the results were already taken".into()));
        };
        job.into_results().into_iter().map(decode).collect()
    }

    /// [`get`](MapResult::get) waiting at most `timeout`.
    pub fn get_timeout(self, timeout: Duration) -> Result<Vec<R>, PoolError> {
        if !wait_done(&self.shared, self.job, Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout(crate::TimedOut(timeout)));
        }
        take(&self.shared, self.job)
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Every item's own result, in order (nothing is lost to the first error).
    pub fn get_each(self) -> Vec<Result<R, PoolError>> {
        wait_done(&self.shared, self.job, None);
        take(&self.shared, self.job)
            .into_iter()
            .map(decode)
            .collect()
    }

    /// [`get_each`](MapResult::get_each) waiting at most `timeout`
    /// ([`PoolError::WaitTimeout`] after; the tasks go on).
    pub fn get_each_timeout(
        self,
        timeout: Duration,
    ) -> Result<Vec<Result<R, PoolError>>, PoolError> {
        if !wait_done(&self.shared, self.job, Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout(crate::TimedOut(timeout)));
        }
        Ok(take(&self.shared, self.job)
            .into_iter()
            .map(decode)
            .collect())
    }

    /// Whether every item is done.
    pub fn ready(&self) -> bool {
        self.shared.lock().job_done(self.job)
    }
}

impl<R> Drop for MapResult<R> {
    fn drop(&mut self) {
        abandon(&self.shared, self.job);
    }
}

/// The lazy iterator of [`Pool::imap`](crate::Pool::imap) and [`Pool::imap_unordered`](crate::Pool::imap_unordered): each item is that task's
/// own result. An item's own failure (a panic, a dead worker) is yielded and the iteration
/// goes on. A failure that stops the submitting (a function that is not registered, a chunk
/// size of 0, an argument that does not encode, a pool closed or terminated before the
/// iterator's first items) is yielded once, after the results of every item submitted before
/// it, and then the iterator ends. A pool closed while an iterator runs waits for it: the
/// iterator submits the rest of its input, and `join` returns after it ends (or is dropped).
/// Dropping it takes the items it submitted that have not started out of the line (they never
/// run); the running ones finish.
///
/// ```
/// #[multiproc::func]
/// fn words(line: String) -> usize {
///     line.split_whitespace().count()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = multiproc::Pool::new(2)?;
/// // An endless input: read ahead only as far as the workers need.
/// let lines = (1..).map(|n| "word ".repeat(n % 5));
/// let total: usize = pool
///     .imap(&words, lines)
///     .chunksize(64) // 64 lines per task: one round trip per 64 results
///     .take(1000)
///     .map(|r| r.expect("a result"))
///     .sum();
/// assert_eq!(total, (1..=1000).map(|n| n % 5).sum::<usize>());
/// # Ok(()) }
/// ```
pub struct Imap<'p, R, I> {
    pool: &'p Core,
    function: Result<&'static str, PoolError>,
    input: I,
    reader: Reader,
    chunksize: usize,
    job: Option<u64>,
    /// Items submitted, and items yielded (or taken into `ready`).
    submitted: usize,
    taken: usize,
    /// Encoded bytes submitted so far, to size the read-ahead.
    bytes: usize,
    /// Results taken from the pool under one lock, not yet yielded.
    ready: VecDeque<ItemResult>,
    /// Nothing more will be submitted (the input ended, or submitting failed).
    exhausted: bool,
    /// Why submitting failed: yielded once every item submitted before it was.
    failure: Option<PoolError>,
    /// Everything was yielded: `None` from now on.
    ended: bool,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
    _r: PhantomData<fn() -> R>,
}

impl<R, I> std::fmt::Debug for Imap<'_, R, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("reader", &self.reader)
            .field("submitted", &self.submitted)
            .finish()
    }
}

/// Bytes of encoded arguments an iterator keeps in flight at most (beyond its first chunks).
const READ_AHEAD_BYTES: usize = 8 << 20;
/// Items in flight per worker at least, so that tiny tasks fill the workers' pipelines.
const READ_AHEAD_PER_WORKER: usize = 128;

impl<'p, R: DeserializeOwned, A: Serialize, I: Iterator<Item = A>> Imap<'p, R, I> {
    pub(crate) fn new(
        pool: &'p Core,
        function: Result<&'static str, PoolError>,
        input: I,
        ordered: bool,
    ) -> Self {
        Imap {
            pool,
            function,
            input,
            reader: if ordered {
                Reader::InOrder
            } else {
                Reader::AsCompleted
            },
            chunksize: 1,
            job: None,
            submitted: 0,
            taken: 0,
            bytes: 0,
            ready: VecDeque::new(),
            exhausted: false,
            failure: None,
            ended: false,
            #[cfg(feature = "progress")]
            bar: None,
            _r: PhantomData,
        }
    }

    /// Shows a progress bar of the results yielded (with the input's length when its size
    /// hint knows it), on standard error (drawn only when that is a terminal). Needs the
    /// `progress` feature.
    ///
    /// ```
    /// #[multiproc::func]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = multiproc::Pool::new(2)?;
    /// let squares: Vec<u64> = pool
    ///     .imap(&square, 0..10_000u64) // a known length: the bar shows how far along it is
    ///     .chunksize(100)
    ///     .progress()
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(squares[99], 99 * 99);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn progress(mut self) -> Self {
        let bar = match self.input.size_hint() {
            (lo, Some(hi)) if lo == hi => indicatif::ProgressBar::new(hi as u64),
            _ => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.bar = Some(bar);
        self
    }

    fn advance(&self) {
        #[cfg(feature = "progress")]
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn finish_bar(&self) {
        #[cfg(feature = "progress")]
        if let Some(b) = &self.bar {
            b.finish();
        }
    }

    /// Items per task (default 1; 0 is an error, reported by the first `next`). Results
    /// still come one by one; a larger chunk costs fewer round trips between the pool and its
    /// workers, and makes the read-ahead (two chunks per worker, at least) larger.
    ///
    /// ```
    /// #[multiproc::func]
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut out: Vec<u32> = pool
    ///     .imap_unordered(&double, 0..1000)
    ///     .chunksize(50)
    ///     .collect::<Result<_, _>>()?;
    /// out.sort();
    /// assert_eq!(out, (0..1000).map(|x| 2 * x).collect::<Vec<_>>());
    ///
    /// // A chunk size of 0 is the iterator's one item: an error.
    /// let mut bad = pool.imap(&double, 0..10).chunksize(0);
    /// assert!(matches!(bad.next(), Some(Err(multiproc::PoolError::Invalid(_)))));
    /// assert!(bad.next().is_none());
    /// # Ok(()) }
    /// ```
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n;
        self
    }

    /// How many items may be submitted but not yet yielded: two chunks per worker, at least
    /// [`READ_AHEAD_PER_WORKER`] items per worker, and no more than [`READ_AHEAD_BYTES`] of
    /// arguments (by the average size so far) beyond those two chunks. Memory follows this,
    /// not the number of items seen.
    fn read_ahead(&self) -> usize {
        let workers = self.pool.processes();
        let chunks = 2 * self.chunksize.max(1) * workers;
        let wanted = chunks.max(READ_AHEAD_PER_WORKER * workers);
        let by_bytes = match self.bytes / self.submitted.max(1) {
            0 => wanted,
            avg => READ_AHEAD_BYTES / avg,
        };
        wanted.min(by_bytes).max(chunks)
    }

    /// Submits items until the read-ahead is full again, once it has half emptied: one lock
    /// and one wake-up of the handler per batch of chunks, not per chunk. Items are encoded
    /// one by one: those before an item that does not encode are still submitted.
    fn top_up(&mut self) -> Result<(), PoolError> {
        if self.exhausted {
            return Ok(());
        }
        let function = self.function.clone()?;
        if self.chunksize == 0 {
            return Err(PoolError::Invalid("chunksize must be at least 1".into()));
        }
        let ahead = self.read_ahead();
        // Results taken into `ready` but not yielded still count: the caller has not seen them.
        let in_flight = self.submitted - (self.taken - self.ready.len());
        if in_flight > ahead / 2 {
            return Ok(());
        }
        let want = (ahead - in_flight).div_ceil(self.chunksize) * self.chunksize;
        let mut batch = Batch::default();
        let mut data = Vec::new();
        let mut failed = None;
        for item in self.input.by_ref().take(want) {
            if let Err(e) = crate::codec::encode_into(&item, &mut data) {
                failed = Some(PoolError::Codec(e));
                break;
            }
            batch.ends.push(data.len() as u32);
        }
        batch.data = serde_bytes::ByteBuf::from(data);
        if failed.is_some() || batch.len() < want {
            self.exhausted = true;
        }
        if !batch.is_empty() {
            let job = match self.job {
                Some(job) => job,
                None => *self.job.insert(self.pool.new_stream(self.reader)?),
            };
            let n = batch.len();
            self.bytes += batch.data.len();
            self.pool
                .submit_more(function, batch, self.chunksize, Some(job))?;
            self.submitted += n;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Moves every result that can be yielded now into `ready` (the state is locked).
    fn take_ready(&mut self, job: &mut super::state::Job) {
        while let Some(r) = job.take_next() {
            self.ready.push_back(r);
            self.taken += 1;
        }
    }

    /// Waits until at least one result is in `ready`: a short look first (taking the workers'
    /// reports itself, like [`wait_done`]), then a sleep until the handler records one.
    fn fill(&mut self, job: u64) -> Option<()> {
        let shared = self.pool.shared().clone();
        let mut spin = crate::spin::Spinner::new(SPIN);
        let mut st = shared.lock();
        loop {
            let wake = spin.spinning() && super::state::pickup(&shared, &mut st);
            let j = st.job_mut(job)?;
            self.take_ready(j);
            let got = !self.ready.is_empty();
            if !got && !spin.spinning() {
                // Woken for a batch: a quarter of what is in flight, so the workers still
                // have most of it queued when this wakes (at most 64; results that wait
                // are delivered within FLUSH_AFTER anyway).
                let in_flight = self.submitted - self.taken;
                j.wait_for((in_flight / 4).clamp(1, 64));
            }
            if wake {
                shared.changed.notify_all();
            }
            if got {
                spin.hit();
                return Some(());
            }
            if spin.spinning() {
                // The pause between looks without the lock: the handler and other callers
                // take it meanwhile.
                drop(st);
                spin.keep_going();
                st = shared.lock();
                continue;
            }
            let (g, _) = shared.wait(st, None);
            st = g;
        }
    }
}

impl<R: DeserializeOwned, A: Serialize, I: Iterator<Item = A>> Imap<'_, R, I> {
    /// One step of the iteration: submits more input, waits for a result with `fill`
    /// (blocking for the iterator, registering a waker for the stream), and yields it.
    fn step(
        &mut self,
        fill: impl FnOnce(&mut Self, u64) -> std::task::Poll<Option<()>>,
    ) -> std::task::Poll<Option<Result<R, PoolError>>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        let was_open = !self.exhausted;
        if let Err(e) = self.top_up() {
            // Nothing more will be submitted; what was is yielded first, then the error.
            self.exhausted = true;
            self.failure = Some(e);
        }
        if was_open && self.exhausted && self.job.is_some() {
            self.pool.end_stream();
        }
        if self.ready.is_empty() && self.submitted > self.taken {
            let Some(job) = self.job else {
                return Poll::Ready(None);
            };
            match fill(self, job) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(r) = self.ready.pop_front() {
            self.advance();
            return Poll::Ready(Some(decode(r)));
        }
        self.ended = true;
        self.finish_bar();
        Poll::Ready(self.failure.take().map(Err))
    }
}

impl<R: DeserializeOwned, A: Serialize, I: Iterator<Item = A>> Iterator for Imap<'_, R, I> {
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step(|s, job| std::task::Poll::Ready(s.fill(job))) {
            std::task::Poll::Ready(item) => item,
            std::task::Poll::Pending => unreachable!("a blocking fill is always ready"),
        }
    }
}

impl<R, I> Drop for Imap<'_, R, I> {
    fn drop(&mut self) {
        if let Some(job) = self.job {
            if !self.exhausted {
                self.pool.end_stream();
            }
            // Nobody will read what has not started: it leaves the line.
            self.pool.cancel_job_pending(job);
            abandon(self.pool.shared(), job);
        }
    }
}
