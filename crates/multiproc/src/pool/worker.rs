//! The worker side of a pool: a registered function that runs tasks sent over a connection.

// `#[multiproc::func]` registers the worker loop with a link-section static (linkme); that
// declaration is the only thing the `unsafe_code` lint sees here.
#![allow(unsafe_code)]

use serde_bytes::ByteBuf;

use crate::codec::ResultBuf;
use crate::connection::Connection;
use crate::process::{Outcome, registry, run_guarded_into};

use super::progress::{Clock, Progress};
use super::reports::Reports;
use super::wire::{Batch, Failure, FromWorker, ToWorker};

/// What a worker watches itself: the CPU time each task may use, and the resident memory
/// above which it retires after a chunk.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerLimits {
    pub(crate) cpu_per_task: Option<std::time::Duration>,
    pub(crate) max_resident: Option<u64>,
}

impl WorkerLimits {
    /// Whether the worker used more memory than it may keep (then it retires).
    fn too_big(&self) -> bool {
        self.max_resident
            .is_some_and(|max| crate::sys::resident_bytes().is_ok_and(|rss| rss > max))
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Returned(_) => "returned".into(),
        Outcome::Panicked(m) => format!("panicked: {m}"),
        Outcome::Codec { message, .. } => format!("codec error: {message}"),
        Outcome::Failed(m) => m.clone(),
        Outcome::MemoryLimit => "ran out of its memory limit".into(),
    }
}

/// Runs one task: its encoded argument, the buffer the encoded result is appended to;
/// `Some` says why there is no result.
pub(crate) type Task<'a> = Box<dyn Fn(&[u8], &mut Vec<u8>) -> Option<Outcome> + 'a>;

/// Finds how to run the tasks of a function from its registered name: once per chunk, not
/// per item (the lookup hashes the name).
pub(crate) type Resolve<'a> = dyn Fn(&str) -> Task<'a> + 'a;

/// The tasks of `function`: a closure pool's closure for its tasks, a registered function for
/// the others.
pub(crate) fn closure_or_registered(
    closure: &super::handler::ClosureRunner,
    function: &str,
) -> Task<'static> {
    if function == super::CLOSURE {
        let run = closure.clone();
        Box::new(move |a, out| run(a, out))
    } else {
        registered(function)
    }
}

/// The tasks of registered `function`.
pub(crate) fn registered(function: &str) -> Task<'static> {
    match registry::lookup(function) {
        None => {
            let why = format!("function `{function}` is not registered");
            Box::new(move |_, _| Some(Outcome::Failed(why.clone())))
        }
        Some(entry) => Box::new(move |args, out| {
            run_guarded_into(&mut ResultBuf::Append(out), |out| {
                (entry.invoke)(args, Vec::new(), out)
            })
        }),
    }
}

/// The worker loop: initializer, then tasks until told to exit, the parent goes away, or
/// `maxtasks` tasks (chunks) are done. `resolve` gives the runner of a chunk's tasks from the
/// function's registered name (ignored by closure pools).
pub(crate) fn serve(
    conn: &Connection,
    reports: &Reports,
    progress: &Progress,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
    limits: WorkerLimits,
    resolve: &Resolve<'_>,
) {
    if let Some((function, args)) = init
        && let Some(failure) = registered(&function)(&args, &mut Vec::new())
    {
        let _ = conn.send_untagged(&FromWorker::InitFailed(describe(&failure)));
        return;
    }
    if conn.send_untagged(&FromWorker::Ready).is_err() {
        return;
    }
    let mut done = 0u64;
    // Tasks come pipelined: one receive takes in every one that has arrived (the
    // connection keeps the rest for the next receives).
    // A short look for the next task before sleeping, as the library's waiting policy
    // allows: a caller on another CPU that sends its next task within microseconds (an
    // `apply_async` round trip) is served without a cross-CPU wake-up; a spin that keeps
    // missing, or that had to yield its CPU to the parent, stops it for a while.
    while let Ok(frame) = conn.recv_spinning(NEXT_TASK_SPIN, None) {
        let Ok(ToWorker::Run {
            seq,
            job,
            start,
            function,
            args,
            clock,
        }) = crate::codec::decode::<ToWorker>(&frame)
        else {
            break;
        };
        let chunk = ChunkRun {
            conn,
            reports,
            progress,
            job,
            start,
            cpu: limits.cpu_per_task,
        };
        if chunk.run(seq, &resolve(&function), &args, clock).is_err() {
            return;
        }
        done += 1;
        if maxtasks > 0 && done >= maxtasks {
            return;
        }
        // A task that leaked: retire, as after `maxtasks`; the chunks sent behind this one go
        // to another worker (see `handler::settle_dead`).
        if limits.too_big() {
            return;
        }
    }
}

/// One chunk being run: where its results go.
struct ChunkRun<'a> {
    conn: &'a Connection,
    reports: &'a Reports,
    progress: &'a Progress,
    job: u64,
    start: u64,
    /// The CPU time each item may use.
    cpu: Option<std::time::Duration>,
}

impl ChunkRun<'_> {
    /// Runs every item, keeping each result in the progress area as it finishes, and reports
    /// the chunk. `Err` when this worker must stop: the handler is gone, or an item broke the
    /// worker (that item is reported as the failure).
    fn run(&self, seq: u64, task: &Task<'_>, args: &Batch, clock: Clock) -> Result<(), ()> {
        self.progress.begin(seq, clock);
        let n = args.len();
        let mut out = Vec::new();
        let mut ends = Vec::with_capacity(n);
        let mut failures = Vec::new();
        // Items before this one went through the ring already.
        let mut from = 0;
        for i in 0..n {
            if clock == Clock::PerItem && i > 0 {
                self.progress.item_started();
            }
            if let Some(budget) = self.cpu {
                // Each item gets its own budget: the kernel counts the process's whole life.
                let _ = crate::sys::allow_cpu_time(budget);
            }
            let begin = out.len();
            let failure = task(args.item(i), &mut out);
            ends.push(out.len() as u32);
            let kept = failure.is_none() && self.progress.keep(i as u32, &out[begin..]);
            if let Some(f) = failure {
                failures.push((i as u32, Failure::Task(f)));
            }
            if !kept {
                // A failure, or a result too large to keep: report up to here now, so that
                // the progress area never holds what the ring does not have.
                self.report(&out, &ends, &mut failures, from, i + 1, false)?;
                from = i + 1;
            }
        }
        // The task may have closed the worker's connection: the next task would fail on a
        // worker it did not break. Checked once per chunk (a system call): with one item per
        // chunk the item that broke the worker is exact; with more, the last item of the
        // chunk takes the blame for the ones before it since the last look.
        let broken = !connection_intact(self.conn);
        if broken && let Some(last) = n.checked_sub(1) {
            failures.retain(|(i, _)| *i as usize != last);
            failures.push((
                last as u32,
                Failure::BrokeWorker(format!(
                    "the task closed or replaced its worker's connection{}; the worker was \
                     replaced",
                    if n > 1 {
                        format!(
                            " (this item or one of the {} before it in its chunk)",
                            n - 1
                        )
                    } else {
                        String::new()
                    }
                )),
            ));
            let begin = if last == 0 { 0 } else { ends[last - 1] };
            ends[last] = begin;
            out.truncate(begin as usize);
            from = from.min(last);
        }
        self.report(&out, &ends, &mut failures, from, n, true)?;
        if broken { Err(()) } else { Ok(()) }
    }

    /// Reports items `from..to` of the chunk through the ring (`last`: the chunk's final
    /// report, sent once, possibly with no item).
    fn report(
        &self,
        out: &[u8],
        ends: &[u32],
        failures: &mut Vec<(u32, Failure)>,
        from: usize,
        to: usize,
        last: bool,
    ) -> Result<(), ()> {
        let base = if from == 0 { 0 } else { ends[from - 1] };
        let end = if to == 0 { 0 } else { ends[to - 1] };
        let results = Batch {
            data: ByteBuf::from(out[base as usize..end as usize].to_vec()),
            ends: ends[from..to].iter().map(|e| e - base).collect(),
        };
        let failures = failures
            .drain(..)
            .map(|(i, f)| (i - from as u32, f))
            .collect();
        let msg = FromWorker::Done {
            job: self.job,
            start: self.start + from as u64,
            results,
            failures,
            last,
        };
        self.reports.send(self.conn, &msg)?;
        self.progress.reported(to as u32);
        Ok(())
    }
}

/// Whether the worker's connection is still open: a task may have closed every descriptor of
/// its process.
fn connection_intact(conn: &Connection) -> bool {
    use std::os::fd::AsFd;
    nix::fcntl::fcntl(conn.as_fd(), nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// How long an idle worker looks for its next task before it sleeps, when spinning pays.
const NEXT_TASK_SPIN: std::time::Duration = crate::spin::REPLY_SPIN;

/// The worker of a pool of registered functions.
#[multiproc_macros::func]
pub(crate) fn multiproc_pool_worker(
    conn: Connection,
    reports: Reports,
    progress: Progress,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
    limits: WorkerLimits,
) {
    serve(
        &conn,
        &reports,
        &progress,
        init,
        maxtasks,
        limits,
        &registered,
    );
}
