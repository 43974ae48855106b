//! The pool's handler thread: it owns the workers, hands them chunks, collects results, and
//! turns every failure into a result instead of a hang.
//!
//! Workers write their reports into a shared-memory ring each (see `worker::report`) and wake
//! the handler only when it sleeps. Two shortcuts bypass the handler on a round trip, both under
//! the state lock so that the handler counts them before anything else: a caller with a single
//! chunk sends it to an idle worker the handler lent out (`State::lent`, `State::direct`), and a
//! caller waiting for its result takes reports out of the rings itself (`state::pickup`,
//! `State::picked`). Deaths, time limits and respawns stay with the handler.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::progress::{Clock, Progress, now_ns};
use super::state::{
    Chunk, ItemResult, Lent, OnDone, Shared, State, drain_reports, payloads, record_locked,
    run_callbacks,
};
use super::worker::{FromWorker, ToWorker, multiproc_pool_worker};
use crate::connection::{Connection, FrameReader, pipe, wait};
use crate::error::PoolError;
use crate::process::wire::Outcome;
use crate::process::{Process, StartMethod};
use crate::queue::ring::Ring;

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
    /// Start-up messages and doorbells come several per receive.
    reader: FrameReader,
    /// The worker's reports (see `worker::report`).
    reports: Ring,
    /// How far it got in the chunk it runs.
    progress: Progress,
}

impl Worker {
    fn new(process: Process<()>, conn: Connection, reports: Ring, progress: Progress) -> Worker {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Worker {
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
            reader: FrameReader::default(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Counts the report of the chunk it was running: the next one starts its clock.
    fn finished_one(&mut self, cfg: &Config) {
        self.busy.pop_front();
        let took = self.last_report.elapsed();
        self.last_report = Instant::now();
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
    for (id, chunk) in std::mem::take(&mut st.direct) {
        if let Some(w) = workers.iter_mut().find(|w| w.id == id) {
            let deadline = if w.busy.is_empty() {
                deadline_for(cfg, &chunk)
            } else {
                None
            };
            w.busy.push_back(Busy { chunk, deadline });
        }
    }
    for p in std::mem::take(&mut st.picked) {
        if p.report.ends_chunk
            && let Some(w) = workers.iter_mut().find(|w| w.id == p.worker)
        {
            w.finished_one(cfg);
        }
        callbacks.extend(p.report.callbacks);
    }
}

/// Tells callers which workers' report rings to look at and which idle workers they may send
/// a chunk to themselves (none while chunks wait in the pool's own line, or once it closes).
fn publish(st: &mut State, cfg: &Config, workers: &[Worker]) {
    if st.rings.len() != workers.len()
        || st
            .rings
            .iter()
            .zip(workers.iter())
            .any(|(r, w)| r.0 != w.id)
    {
        st.rings = workers.iter().map(|w| (w.id, w.reports.clone())).collect();
    }
    // Not with a time limit: the handler must see a chunk start to time it.
    let lend = st.pending.is_empty()
        && !st.closed
        && !st.terminated
        && st.broken.is_none()
        && cfg.task_timeout.is_none();
    let idle = workers.iter().filter(|w| {
        let retiring = cfg.maxtasks > 0 && w.tasks + w.busy.len() as u64 + 1 > cfg.maxtasks;
        lend && w.ready && w.busy.is_empty() && w.timed_out.is_none() && !retiring
    });
    if !idle
        .clone()
        .map(|w| w.id)
        .eq(st.lent.iter().map(|l| l.worker))
    {
        st.lent = idle
            .map(|w| Lent {
                worker: w.id,
                conn: w.conn.clone(),
            })
            .collect();
    }
}

pub(crate) fn spawn_worker(cfg: &Config) -> Result<Worker, PoolError> {
    let (ours, theirs) = pipe(true).map_err(|e| PoolError::Io(e.to_string()))?;
    let reports = Ring::new(0, crate::queue::DEFAULT_QUEUE_BYTES)
        .map_err(|e| PoolError::Io(format!("cannot make a report ring: {e}")))?;
    let progress =
        Progress::new().map_err(|e| PoolError::Io(format!("cannot make a progress area: {e}")))?;
    if let Some(run) = cfg.closure.clone() {
        let maxtasks = cfg.maxtasks;
        let (ring, kept) = (reports.clone(), progress.clone());
        let process = Process::builder()
            .daemon(true)
            .name("PoolWorker")
            .fork(move || {
                super::worker::serve(&theirs, &ring, &kept, None, maxtasks, &|_| {
                    let run = run.clone();
                    Box::new(move |a, out| run(a, out))
                })
            })
            .map_err(|e| PoolError::Io(format!("cannot fork a worker: {e}")))?;
        return Ok(Worker::new(process, ours, reports, progress));
    }
    let mut b = Process::builder().daemon(true).name("PoolWorker");
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
            ),
        )
        .map_err(|e| PoolError::Io(format!("cannot start a worker: {e}")))?;
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
                w.finished_one(cfg);
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
            shared.lock().ready_workers += 1;
            shared.changed.notify_all();
        }
        FromWorker::InitFailed(m) => {
            shared.lock().broken = Some(PoolError::Initializer(m));
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
            let mut st = shared.lock();
            if st.broken.is_none() && !st.terminated {
                st.broken = Some(PoolError::Initializer(format!(
                    "worker {pid} died during start-up (exit code {exitcode})"
                )));
            }
        }
        return Vec::new();
    };
    let mut st = shared.lock();
    for b in busy.into_iter().rev() {
        st.pending.push_front(b.chunk);
    }
    let chunk = running.chunk;
    let Some(kept) = w.progress.kept(chunk.seq) else {
        // It never began the chunk: nothing of it ran.
        st.pending.push_front(chunk);
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
            Some(_) => results.push(Err(PoolError::Timeout(limit))),
            None => results.push(Err(PoolError::WorkerDied { pid, exitcode })),
        }
    }
    let seq = st.seq();
    if let Some(tail) = chunk.tail(rest, seq) {
        st.pending.push_front(tail);
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

/// The handler loop; returns when the pool is closed and drained, or terminated.
pub(crate) fn run(shared: Shared, cfg: Config, mut wake: UnixStream, mut workers: Vec<Worker>) {
    loop {
        // Hand out work and see whether it is time to stop.
        let mut sends: Vec<(usize, ToWorker)> = Vec::new();
        let mut callbacks = Vec::new();
        let (stop, terminate, broken) = {
            let mut st = shared.lock();
            absorb(&mut st, &cfg, &mut workers, &mut callbacks);
            if st.terminated {
                st.lent.clear();
                callbacks.extend(st.fail_all(&PoolError::Terminated));
                (true, true, None)
            } else {
                if !st.pending.is_empty() {
                    // Work waits in line: take the lent workers back to hand it out (so
                    // none is lent while the loop below dispatches).
                    st.lent.clear();
                }
                if let Some(err) = st.broken.clone() {
                    callbacks.extend(st.fail_all(&err));
                }
                for w in workers.iter_mut() {
                    if w.busy.is_empty() {
                        w.last_report = Instant::now();
                    }
                }
                // Each chunk goes to the least busy worker that can take it: a few heavy
                // chunks after many tiny ones (deep pipelines) spread over every worker,
                // whether they come as one batch or one per wake-up. Ties go to the first:
                // one-at-a-time tasks (apply_async, then get) keep meeting the same worker,
                // whose CPU the scheduler has settled, instead of waking each in turn.
                // One depth for all: were it per worker, the first worker whose average
                // dipped under a threshold would take every pending chunk while the others,
                // still at the lower depth, could not.
                let depth = workers
                    .iter()
                    .filter(|w| w.ready)
                    .map(|w| depth(w.avg))
                    .min()
                    .unwrap_or(1);
                while let Some(next) = st.pending.front() {
                    let next_len = next.args.data.len();
                    let Some(i) = (0..workers.len())
                        .filter(|&i| can_take(&workers[i], &cfg, depth, next_len))
                        .min_by_key(|&i| workers[i].busy.len())
                    else {
                        break;
                    };
                    let chunk = st.pending.pop_front().expect("front() was Some");
                    let w = &mut workers[i];
                    let deadline = if w.busy.is_empty() {
                        deadline_for(&cfg, &chunk)
                    } else {
                        None
                    };
                    sends.push((i, chunk.run_message(clock_for(&cfg, &chunk))));
                    w.busy.push_back(Busy { chunk, deadline });
                }
                let drained = st.pending.is_empty()
                    && workers.iter().all(|w| w.busy.is_empty())
                    && sends.is_empty();
                publish(&mut st, &cfg, &workers);
                if st.closed && drained {
                    st.lent.clear();
                }
                (st.closed && drained, false, st.broken.clone())
            }
        };
        // Waiters wait for results (woken by `record`), for ready workers, or for the end;
        // handing out work changes none of that, and a wake-up per round would cost a
        // system call here and a spurious wake-up in a sleeping caller.
        if terminate || broken.is_some() {
            shared.changed.notify_all();
        }
        run_callbacks(callbacks);
        if stop {
            stop_workers(&mut workers, terminate);
            shared.lock().handler_done = true;
            shared.changed.notify_all();
            return;
        }
        // Everything for one worker in one write.
        let mut per_worker: Vec<Vec<Vec<u8>>> = Vec::new();
        if !sends.is_empty() {
            per_worker.resize(workers.len(), Vec::new());
        }
        for (i, msg) in sends {
            if let Ok(bytes) = crate::codec::encode(&msg) {
                per_worker[i].push(bytes);
            }
        }
        for (w, msgs) in workers.iter().zip(&per_worker) {
            if !msgs.is_empty() {
                // A worker that is going away: its sentinel will report how.
                let _ = w.conn.send_many(msgs);
            }
        }
        // Keep the pool at its size (not once the initializer failed: no respawn storm).
        while broken.is_none() && workers.len() < cfg.processes {
            match spawn_worker(&cfg) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    shared.lock().broken = Some(e);
                    break;
                }
            }
        }
        // Wait for a message, a death, a deadline or a poke.
        let deadline = workers
            .iter()
            .filter(|w| w.timed_out.is_none())
            .filter_map(|w| w.busy.front().and_then(|b| b.deadline))
            .min();
        let mut fds: Vec<BorrowedFd<'_>> = vec![wake.as_fd()];
        for w in &workers {
            fds.push(w.conn.as_fd());
            fds.push(w.process.sentinel());
        }
        let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // About to sleep: from now on workers ring the doorbell after a report. A report
        // that came before the flag was seen is in a ring already: then only look.
        for w in &workers {
            w.reports.flag().store(1, Ordering::SeqCst);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        // Under the lock: a caller may take a report out of a ring (`pickup`) between a look
        // at the rings and a look at what callers did; either way it is seen here, and a
        // report written from now on rings the doorbell.
        let must_look = {
            let st = shared.lock();
            !st.picked.is_empty()
                || !st.direct.is_empty()
                || workers.iter().any(|w| w.reports.len() > 0)
        };
        if must_look {
            timeout = Some(Duration::ZERO);
        }
        // No busy-polling here: measured, a spinning handler (or worker) takes the CPU the
        // task, the caller or a broker needs on a small machine (apply_async 22 µs without,
        // 50-150 µs with); the caller's short spin in `wait_done` is what pays.
        let ready = wait(&fds, timeout).unwrap_or_default();
        drop(fds);
        for w in &workers {
            w.reports.flag().store(0, Ordering::Relaxed);
        }
        let mut callbacks = Vec::new();
        if ready.contains(&0) {
            let mut buf = [0u8; 256];
            while matches!(wake.read(&mut buf), Ok(n) if n > 0) {}
        }
        let mut dead = Vec::new();
        for (i, w) in workers.iter_mut().enumerate() {
            let (conn_ready, ended) = (ready.contains(&(1 + 2 * i)), ready.contains(&(2 + 2 * i)));
            // Every message that arrived before looking at the exit: the connection first
            // (`Ready` comes before any report), then the report ring.
            if conn_ready || ended {
                loop {
                    let msg = match w.reader.try_next(&w.conn) {
                        Ok(Some(frame)) => crate::codec::decode::<FromWorker>(&frame)
                            .map_err(crate::error::ConnectionError::from),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                    match msg {
                        Ok(msg) => take_message(&shared, w, msg),
                        Err(_) => break,
                    }
                }
            }
            if ended {
                dead.push(i);
            }
        }
        take_reports(&shared, &cfg, &mut workers, &mut callbacks);
        if !dead.is_empty() {
            // Whatever callers sent or took since `take_reports` is counted before the dead
            // are failed, and nobody may send to them any more.
            let mut st = shared.lock();
            absorb(&mut st, &cfg, &mut workers, &mut callbacks);
            let gone: Vec<u64> = dead.iter().map(|&i| workers[i].id).collect();
            st.lent.retain(|l| !gone.contains(&l.worker));
            st.rings.retain(|(id, _)| !gone.contains(id));
        }
        for i in dead.into_iter().rev() {
            let w = workers.remove(i);
            callbacks.extend(settle_dead(&shared, &cfg, w));
        }
        kill_overdue(&cfg, &mut workers);
        run_callbacks(callbacks);
    }
}
