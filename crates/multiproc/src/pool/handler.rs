//! The pool's handler thread: it owns the workers, hands them chunks, collects results, and
//! turns every failure into a result instead of a hang.
//!
//! Workers write their reports into a shared-memory ring each (see `reports`) and wake
//! the handler only when it sleeps. Two shortcuts bypass the handler on a round trip, both under
//! the state lock so that the handler counts them before anything else: a caller with a single
//! chunk sends it to an idle worker the handler lent out (`State::lent`, `State::direct`), and a
//! caller waiting for its result takes reports out of the rings itself (`state::pickup`,
//! `State::picked`), lending that worker out again when it sent it the chunk. Deaths, time limits and respawns stay with the handler.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::progress::{Clock, Progress, now_ns};
use super::reports::Reports;
use super::state::{
    Chunk, ItemResult, Lent, OnDone, Shared, State, drain_reports, payloads, record_locked,
    run_callbacks,
};
use super::wire::{FromWorker, ToWorker};
use super::worker::{WorkerLimits, multiproc_pool_worker};
use crate::connection::{Connection, pipe, wait};
use crate::error::TaskError;
use crate::process::parent_only::Listed;
use crate::process::setup::Setup;
use crate::process::{Outcome, Process, StartMethod};

/// Runs a closure pool's tasks in a forked worker.
pub(crate) type ClosureRunner =
    std::sync::Arc<dyn Fn(&[u8], &mut Vec<u8>) -> Option<Outcome> + Send + Sync>;

/// How the pool was configured.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<(String, Vec<u8>)>,
    pub(crate) maxtasks: u64,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) method: Option<StartMethod>,
    /// Set for a closure pool: workers are forks that run this.
    pub(crate) closure: Option<ClosureRunner>,
    /// How each worker is set up (limits, surroundings, output).
    pub(crate) setup: Setup,
    /// What each worker watches itself.
    pub(crate) limits: WorkerLimits,
}

/// A chunk sent to a worker and not yet reported. A worker holds up to [`depth`] of them, so
/// it never waits for the parent between tiny tasks; only the first is running.
struct Busy {
    chunk: Chunk,
    deadline: Option<Instant>,
}

/// At most this many bytes of chunks wait in a worker's socket behind the running one (well
/// under the smallest Unix socket buffer).
const PIPELINE_BYTES: usize = 64 * 1024;

/// Chunks in flight per worker: two for tasks of a millisecond or more (little hoarding at the
/// end of a map), more for tiny ones, so that the worker never waits for the parent.
fn depth(avg: Duration) -> usize {
    if avg < Duration::from_micros(100) {
        32
    } else if avg < Duration::from_millis(1) {
        8
    } else {
        2
    }
}

pub(crate) struct Worker {
    /// Our side of the worker, which a worker forked after it must not keep (first: unlisted
    /// before the descriptors close).
    _listed: Listed,
    process: Process<()>,
    /// Shared with callers while the worker is lent (see `State::lent`).
    conn: Arc<Connection>,
    /// Names the worker in `State::rings`, `State::picked`, `State::lent` and `State::direct`.
    id: u64,
    ready: bool,
    busy: VecDeque<Busy>,
    /// Killed for running past its time limit, at this `now_ns`.
    timed_out: Option<u64>,
    tasks: u64,
    /// Moving average of the time a chunk takes, from the worker's reports.
    avg: Duration,
    last_report: Instant,
    /// The worker's reports.
    reports: Reports,
    /// How far it got in the chunk it runs.
    progress: Progress,
}

impl Worker {
    fn new(process: Process<()>, conn: Connection, reports: Reports, progress: Progress) -> Worker {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        use std::os::fd::AsFd;
        Worker {
            // The pidfd too: only the handler thread, which a forked child does not have,
            // signals or waits for a worker.
            _listed: Listed::new(&[
                conn.as_fd(),
                reports.as_fd(),
                progress.as_fd(),
                process.sentinel(),
            ]),
            process,
            conn: Arc::new(conn),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            reports,
            progress,
            ready: false,
            busy: VecDeque::new(),
            timed_out: None,
            tasks: 0,
            avg: Duration::from_millis(1),
            last_report: Instant::now(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Counts the report of the chunk it was running, taken at `at` (by the handler or by a
    /// caller, counted later): the next one starts its clock then.
    fn finished_one(&mut self, cfg: &Config, at: Instant) {
        self.busy.pop_front();
        let took = at.saturating_duration_since(self.last_report);
        self.last_report = at;
        self.avg = (self.avg * 7 + took) / 8;
        if let Some(next) = self.busy.front_mut() {
            next.deadline = deadline_for(cfg, &next.chunk);
        }
        self.tasks += 1;
    }
}

/// Takes into the workers' bookkeeping what callers did under the lock since the handler last
/// looked: chunks they sent to lent workers, then reports they took out of rings (in that
/// order: a report can only follow its chunk).
fn absorb(
    st: &mut State,
    cfg: &Config,
    workers: &mut [Worker],
    callbacks: &mut Vec<(OnDone, ItemResult)>,
) {
    for (id, chunk, sent) in st.take_sent_directly() {
        if let Some(w) = workers.iter_mut().find(|w| w.id == id) {
            let deadline = if w.busy.is_empty() {
                // It started about when the caller sent it, not when the handler looks.
                w.last_report = sent;
                deadline_for(cfg, &chunk)
            } else {
                None
            };
            w.busy.push_back(Busy { chunk, deadline });
        }
    }
    for p in st.take_picked() {
        if p.report.ends_chunk
            && let Some(w) = workers.iter_mut().find(|w| w.id == p.worker)
        {
            w.finished_one(cfg, p.at);
        }
        callbacks.extend(p.report.callbacks);
    }
}

/// Tells callers which workers' report rings to look at and which idle workers they may send
/// a chunk to themselves (none while chunks wait in the pool's own line, or once it closes).
fn publish(st: &mut State, cfg: &Config, workers: &[Worker]) {
    st.show_rings(workers.iter().map(|w| (w.id, w.reports.clone())));
    // Not with a time limit: the handler must see a chunk start to time it.
    let idle = workers.iter().filter(|w| {
        let retiring = cfg.maxtasks > 0 && w.tasks + w.busy.len() as u64 + 1 > cfg.maxtasks;
        cfg.task_timeout.is_none()
            && w.ready
            && w.busy.is_empty()
            && w.timed_out.is_none()
            && !retiring
    });
    st.lend(idle.map(|w| Lent {
        worker: w.id,
        conn: w.conn.clone(),
    }));
}

pub(crate) fn spawn_worker(cfg: &Config) -> Result<Worker, TaskError> {
    let (ours, theirs) = pipe(true).map_err(TaskError::io("cannot make a worker's connection"))?;
    let reports = Reports::new()?;
    let progress = Progress::new().map_err(TaskError::io("cannot make a progress area"))?;
    if let Some(run) = cfg.closure.clone() {
        let (maxtasks, limits) = (cfg.maxtasks, cfg.limits);
        let (ring, kept) = (reports.clone(), progress.clone());
        let process = Process::builder()
            .daemon(true)
            .name("PoolWorker")
            .with_setup(cfg.setup.clone())
            .fork(move || {
                // The closure, or a registered function (the fork has them all).
                super::worker::serve(&theirs, &ring, &kept, None, maxtasks, limits, &|name| {
                    super::worker::closure_or_registered(&run, name)
                })
            })
            .map_err(TaskError::io("cannot fork a worker"))?;
        return Ok(Worker::new(process, ours, reports, progress));
    }
    let mut b = Process::builder()
        .daemon(true)
        .name("PoolWorker")
        .with_setup(cfg.setup.clone());
    if let Some(m) = cfg.method {
        b = b.start_method(m);
    }
    let process = b
        .start(
            &multiproc_pool_worker,
            (
                theirs,
                reports.clone(),
                progress.clone(),
                cfg.init.clone(),
                cfg.maxtasks,
                cfg.limits,
            ),
        )
        .map_err(TaskError::io("cannot start a worker"))?;
    Ok(Worker::new(process, ours, reports, progress))
}

/// Takes the reports of every worker, under one lock: what callers already did (`absorb`),
/// then what waits in the rings, so that each worker's reports count in the order written.
fn take_reports(
    shared: &Shared,
    cfg: &Config,
    workers: &mut [Worker],
    callbacks: &mut Vec<(OnDone, ItemResult)>,
) {
    let mut st = shared.lock();
    absorb(&mut st, cfg, workers, callbacks);
    let mut wake = false;
    for w in workers.iter_mut() {
        let (wk, done) = drain_reports(&mut st, &w.reports);
        wake |= wk;
        for report in done {
            if report.ends_chunk {
                w.finished_one(cfg, Instant::now());
            }
            callbacks.extend(report.callbacks);
        }
    }
    drop(st);
    if wake {
        shared.changed.notify_all();
    }
}

/// Acts on one message that came on worker `w`'s connection.
fn take_message(shared: &Shared, w: &mut Worker, msg: FromWorker) {
    match msg {
        FromWorker::Ready => {
            w.ready = true;
            shared.lock().worker_ready();
            shared.changed.notify_all();
        }
        FromWorker::InitFailed(m) => {
            shared.lock().break_with(TaskError::Initializer(m));
        }
        // Reports come through the ring (`take_reports`), never on the connection.
        FromWorker::Done { .. } | FromWorker::Wake => {}
    }
}

/// The time limit of each item of `chunk`, if it has one.
fn limit_of(cfg: &Config, chunk: &Chunk) -> Option<Duration> {
    chunk.timeout.or(cfg.task_timeout)
}

/// Whether a worker records when each item of `chunk` starts.
fn clock_for(cfg: &Config, chunk: &Chunk) -> Clock {
    if limit_of(cfg, chunk).is_some() {
        Clock::PerItem
    } else {
        Clock::Off
    }
}

/// When `chunk`'s first item is due at the latest, counted from now (the handler looks at when
/// each item actually started once this passes).
fn deadline_for(cfg: &Config, chunk: &Chunk) -> Option<Instant> {
    limit_of(cfg, chunk).map(|t| Instant::now() + t)
}

/// Settles the chunks of a worker that ended: what it finished of its running chunk is
/// delivered, the item it was running fails (or runs again, if it was killed for another
/// item's time limit and had not used up its own), and every item it had not started goes back
/// to the front of the line.
fn settle_dead(shared: &Shared, cfg: &Config, w: Worker) -> Vec<(OnDone, ItemResult)> {
    let _ = w.process.join_timeout(Duration::from_secs(5));
    let exitcode = w.process.exitcode().unwrap_or(-9);
    let pid = w.pid();
    let mut busy = w.busy;
    let Some(running) = busy.pop_front() else {
        if !w.ready {
            // Died before it was ready: the initializer crashed. No respawn storm.
            shared.lock().break_with(TaskError::Initializer(format!(
                "worker {pid} died during start-up (exit code {exitcode})"
            )));
        }
        return Vec::new();
    };
    let mut st = shared.lock();
    for b in busy.into_iter().rev() {
        st.requeue(b.chunk);
    }
    let chunk = running.chunk;
    let Some(kept) = w.progress.kept(chunk.seq) else {
        // It never began the chunk: nothing of it ran.
        st.requeue(chunk);
        return Vec::new();
    };
    let limit = limit_of(cfg, &chunk).unwrap_or_default();
    let running_item = kept.running() as usize;
    let mut rest = running_item + 1;
    let mut results = payloads(kept.data, &kept.ends);
    if running_item < chunk.args.len() {
        match w.timed_out {
            // Killed for an item that finished just before: this one had time left.
            Some(killed)
                if kept.started != 0 && kept.started + limit.as_nanos() as u64 > killed =>
            {
                rest = running_item;
            }
            Some(_) => results.push(Err(TaskError::Timeout(limit))),
            None => results.push(Err(death_cause(cfg, &w.process, exitcode))),
        }
    }
    let seq = st.seq();
    if let Some(tail) = chunk.tail(rest, seq) {
        st.requeue(tail);
    }
    let (callbacks, wake) = record_locked(
        &mut st,
        chunk.job,
        chunk.start + u64::from(kept.first),
        results,
    );
    drop(st);
    if wake {
        shared.changed.notify_all();
    }
    callbacks
}

/// Why worker `process` died running a task, from what it reported and its exit code: a
/// memory limit it reported (exact) or an abort under one (inferred), the CPU-time limit
/// (`SIGXCPU`, inferred from the signal), or a plain death.
fn death_cause(cfg: &Config, process: &Process<()>, exitcode: i32) -> TaskError {
    let pid = process.pid();
    let memory = cfg.setup.memory_limit;
    match (memory, cfg.limits.cpu_per_task) {
        (Some(limit), _) if process.hit_memory_limit() => TaskError::MemoryLimit {
            pid,
            limit,
            reported: true,
        },
        (Some(limit), _) if exitcode == -crate::sys::SIGABRT => TaskError::MemoryLimit {
            pid,
            limit,
            reported: false,
        },
        (_, Some(limit)) if exitcode == -crate::sys::SIGXCPU => {
            TaskError::CpuTimeLimit { pid, limit }
        }
        _ => TaskError::WorkerDied { pid, exitcode },
    }
}

/// Kills the workers whose running item is past its time limit; their deaths are settled
/// next round. A chunk's deadline is its first item's: once it passes, the time the running
/// item actually started (from the worker's progress area) decides.
fn kill_overdue(cfg: &Config, workers: &mut [Worker]) {
    let now = Instant::now();
    for w in workers.iter_mut() {
        if w.timed_out.is_some() {
            continue;
        }
        let Some(b) = w.busy.front_mut() else {
            continue;
        };
        if b.deadline.is_none_or(|d| d > now) {
            continue;
        }
        let limit = limit_of(cfg, &b.chunk).unwrap_or_default();
        if let Some(started) = w.progress.item_start(b.chunk.seq) {
            let due = started + limit.as_nanos() as u64;
            let now_ns = now_ns();
            if due > now_ns {
                b.deadline = Some(now + Duration::from_nanos(due - now_ns));
                continue;
            }
        }
        w.timed_out = Some(now_ns());
        let _ = w.process.kill();
    }
}

fn stop_workers(workers: &mut Vec<Worker>, kill: bool) {
    for w in workers.iter() {
        if kill {
            let _ = w.process.terminate();
        } else {
            let _ = w.conn.send_untagged(&ToWorker::Exit);
        }
    }
    for w in workers.drain(..) {
        if !w
            .process
            .join_timeout(Duration::from_secs(5))
            .unwrap_or(false)
        {
            let _ = w.process.kill();
            let _ = w.process.join_timeout(Duration::from_secs(5));
        }
    }
}

/// Whether `w` can take a chunk of `len` argument bytes now: ready, not retiring, below the
/// pipeline `depth`, and with room in its socket buffer for a chunk queued behind a running one
/// (otherwise this thread would block sending it while the worker blocks sending its report,
/// each waiting for the other to read).
fn can_take(w: &Worker, cfg: &Config, depth: usize, len: usize) -> bool {
    if !w.ready || w.busy.len() >= depth {
        return false;
    }
    if cfg.maxtasks > 0 && w.tasks + w.busy.len() as u64 >= cfg.maxtasks {
        return false;
    }
    let queued: usize = w.busy.iter().skip(1).map(|b| b.chunk.args.data.len()).sum();
    w.busy.is_empty() || queued + len <= PIPELINE_BYTES
}

/// What the handler does next after handing out work.
enum Next {
    /// Sleep until something happens, then look again.
    Wait,
    /// The pool is closed and drained: ask the workers to exit.
    Finish,
    /// The pool was terminated: kill the workers.
    Kill,
}

/// The handler thread: it owns the workers. Each round has the same phases, in this order:
/// [`dispatch`](Handler::dispatch) (count what callers did, hand chunks out, lend idle workers),
/// [`send`](Handler::send), [`replenish`](Handler::replenish) (keep the pool at its size),
/// [`sleep`](Handler::sleep) (until a message, a death, a deadline or a poke),
/// [`read_messages`](Handler::read_messages), [`collect_reports`](Handler::collect_reports),
/// [`bury`](Handler::bury) (settle the dead) and [`kill_overdue`].
struct Handler {
    shared: Shared,
    cfg: Config,
    /// Written to by callers to wake the handler (new work, close, terminate).
    wake: UnixStream,
    workers: Vec<Worker>,
    /// Callbacks to run outside the lock at the end of a phase.
    callbacks: Vec<(OnDone, ItemResult)>,
}

/// The handler loop; returns when the pool is closed and drained, or terminated.
pub(crate) fn run(shared: Shared, cfg: Config, wake: UnixStream, workers: Vec<Worker>) {
    let mut h = Handler {
        shared,
        cfg,
        wake,
        workers,
        callbacks: Vec::new(),
    };
    loop {
        let (next, sends) = h.dispatch();
        h.run_callbacks();
        match next {
            Next::Finish | Next::Kill => {
                stop_workers(&mut h.workers, matches!(next, Next::Kill));
                h.shared.changed.notify_all();
                return;
            }
            Next::Wait => {}
        }
        h.send(sends);
        h.replenish();
        let ready = h.sleep();
        let dead = h.read_messages(&ready);
        h.collect_reports();
        h.bury(dead);
        kill_overdue(&h.cfg, &mut h.workers);
        h.run_callbacks();
    }
}

impl Handler {
    fn run_callbacks(&mut self) {
        run_callbacks(std::mem::take(&mut self.callbacks));
    }

    /// Under the lock: counts what callers did, fails everything on termination or a broken
    /// pool, hands waiting chunks to workers, and lends idle workers out. Returns what to do
    /// next and the messages to send (worker index, message).
    fn dispatch(&mut self) -> (Next, Vec<(usize, Vec<u8>)>) {
        let mut sends = Vec::new();
        let mut st = self.shared.lock();
        st.asleep = false;
        absorb(&mut st, &self.cfg, &mut self.workers, &mut self.callbacks);
        if st.is_terminated() {
            st.lend_none();
            self.callbacks.extend(st.fail_all(&TaskError::Terminated));
            drop(st);
            // Waiters wait for results, for ready workers, or for the end.
            self.shared.changed.notify_all();
            return (Next::Kill, sends);
        }
        if !st.line_is_empty() {
            // Work waits in line: take the lent workers back to hand it out (so none is lent
            // while the loop below dispatches).
            st.lend_none();
        }
        let broken = st.broken().cloned();
        if let Some(err) = &broken {
            self.callbacks.extend(st.fail_all(err));
        }
        for w in self.workers.iter_mut() {
            if w.busy.is_empty() {
                w.last_report = Instant::now();
            }
        }
        // Each chunk goes to the least busy worker that can take it: a few heavy chunks after
        // many tiny ones (deep pipelines) spread over every worker, whether they come as one
        // batch or one per wake-up. Ties go to the first: one-at-a-time tasks (apply_async,
        // then get) keep meeting the same worker, whose CPU the scheduler has settled,
        // instead of waking each in turn. One depth for all: were it per worker, the first
        // worker whose average dipped under a threshold would take every pending chunk while
        // the others, still at the lower depth, could not.
        let depth = self
            .workers
            .iter()
            .filter(|w| w.ready)
            .map(|w| depth(w.avg))
            .min()
            .unwrap_or(1);
        while let Some(next) = st.next_in_line() {
            let next_len = next.args.data.len();
            let Some(i) = (0..self.workers.len())
                .filter(|&i| can_take(&self.workers[i], &self.cfg, depth, next_len))
                .min_by_key(|&i| self.workers[i].busy.len())
            else {
                break;
            };
            let chunk = st.take_next_in_line().expect("next_in_line() was Some");
            let msg = match chunk.run_message(clock_for(&self.cfg, &chunk)) {
                Ok(msg) => msg,
                Err(e) => {
                    // Cannot happen with plain bytes; fail the chunk rather than lose it.
                    let err = TaskError::Codec(e);
                    let results = (0..chunk.args.len()).map(|_| Err(err.clone())).collect();
                    let (cbs, _) = record_locked(&mut st, chunk.job, chunk.start, results);
                    self.callbacks.extend(cbs);
                    self.shared.changed.notify_all();
                    continue;
                }
            };
            let w = &mut self.workers[i];
            let deadline = if w.busy.is_empty() {
                deadline_for(&self.cfg, &chunk)
            } else {
                None
            };
            sends.push((i, msg));
            w.busy.push_back(Busy { chunk, deadline });
        }
        let workers_idle = self.workers.iter().all(|w| w.busy.is_empty()) && sends.is_empty();
        publish(&mut st, &self.cfg, &self.workers);
        let finish = st.may_finish() && workers_idle;
        if finish {
            st.lend_none();
        }
        drop(st);
        // Handing out work changes nothing a waiter waits for, and a wake-up per round would
        // cost a system call here and a spurious wake-up in a sleeping caller.
        if broken.is_some() {
            self.shared.changed.notify_all();
        }
        (if finish { Next::Finish } else { Next::Wait }, sends)
    }

    /// Sends each worker its messages in one write.
    fn send(&self, sends: Vec<(usize, Vec<u8>)>) {
        if sends.is_empty() {
            return;
        }
        let mut per_worker: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.workers.len()];
        for (i, msg) in sends {
            per_worker[i].push(msg);
        }
        for (w, msgs) in self.workers.iter().zip(&per_worker) {
            if !msgs.is_empty() {
                // A worker that is going away: its sentinel will report how.
                let _ = w.conn.send_many(msgs);
            }
        }
    }

    /// Keeps the pool at its size (not once it is broken: no respawn storm).
    fn replenish(&mut self) {
        while self.workers.len() < self.cfg.processes && self.shared.lock().broken().is_none() {
            match spawn_worker(&self.cfg) {
                Ok(w) => self.workers.push(w),
                Err(e) => {
                    self.shared.lock().break_with(e);
                    // The next round fails what waits: without a busy worker to report,
                    // nothing else would wake this thread for it.
                    self.shared.poke();
                    break;
                }
            }
        }
    }

    /// Sleeps until a worker's message or death, the earliest deadline, or a poke. Returns
    /// the indices ready in `[wake, conn 0, sentinel 0, conn 1, sentinel 1, ...]`.
    fn sleep(&mut self) -> Vec<usize> {
        let deadline = self
            .workers
            .iter()
            .filter(|w| w.timed_out.is_none())
            .filter_map(|w| w.busy.front().and_then(|b| b.deadline))
            .min();
        let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // About to sleep: from now on workers ring the doorbell after a report. A report
        // that came before is in a ring already: then only look (see `reports`).
        for w in &self.workers {
            w.reports.arm();
        }
        // Under the lock: a caller may take a report out of a ring (`pickup`) between a look
        // at the rings and a look at what callers did; either way it is seen here, and a
        // report written from now on rings the doorbell.
        let (must_look, flushed, flush_due) = {
            let mut st = self.shared.lock();
            let (flushed, due) = st.flush_deferred(Instant::now());
            let look = st.callers_acted() || self.workers.iter().any(|w| w.reports.pending());
            st.asleep = !look;
            (look, flushed, due)
        };
        if flushed {
            self.shared.changed.notify_all();
        }
        if let Some(due) = flush_due {
            let left = due.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if must_look {
            timeout = Some(Duration::ZERO);
        }
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.wake.as_fd()];
        for w in &self.workers {
            fds.push(w.conn.as_fd());
            fds.push(w.process.sentinel());
        }
        // No busy-polling here: measured, a spinning handler takes the CPU the task, the
        // caller or a broker needs on a small machine (apply_async 22 µs without, 50-150 µs
        // with); the caller's short spin in `wait_done`, and the idle worker's, are what pay.
        let ready = wait(&fds, timeout).unwrap_or_default();
        drop(fds);
        for w in &self.workers {
            w.reports.disarm();
        }
        if ready.contains(&0) {
            let mut buf = [0u8; 256];
            while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        }
        ready
    }

    /// Reads what came on the ready workers' connections; returns the indices of the workers
    /// that ended.
    fn read_messages(&mut self, ready: &[usize]) -> Vec<usize> {
        let mut dead = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let (conn_ready, ended) = (ready.contains(&(1 + 2 * i)), ready.contains(&(2 + 2 * i)));
            // Every message that arrived before looking at the exit: the connection first
            // (`Ready` comes before any report), then the report ring.
            if conn_ready || ended {
                loop {
                    let msg = match w.conn.try_recv_bytes() {
                        Ok(Some(frame)) => crate::codec::decode::<FromWorker>(&frame)
                            .map_err(crate::error::ConnectionError::from),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                    match msg {
                        Ok(msg) => take_message(&self.shared, w, msg),
                        Err(_) => break,
                    }
                }
            }
            if ended {
                dead.push(i);
            }
        }
        dead
    }

    /// Takes the reports of every worker (see [`take_reports`]).
    fn collect_reports(&mut self) {
        take_reports(
            &self.shared,
            &self.cfg,
            &mut self.workers,
            &mut self.callbacks,
        );
    }

    /// Settles the workers that ended (see [`settle_dead`]).
    fn bury(&mut self, dead: Vec<usize>) {
        if dead.is_empty() {
            return;
        }
        {
            // Whatever callers sent or took since the reports were collected is counted
            // before the dead are settled, and nobody may send to them any more.
            let mut st = self.shared.lock();
            absorb(&mut st, &self.cfg, &mut self.workers, &mut self.callbacks);
            let gone: Vec<u64> = dead.iter().map(|&i| self.workers[i].id).collect();
            st.forget_workers(&gone);
        }
        for i in dead.into_iter().rev() {
            let w = self.workers.remove(i);
            self.callbacks
                .extend(settle_dead(&self.shared, &self.cfg, w));
        }
    }
}
