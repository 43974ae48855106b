//! The worker side of a pool: a registered function that runs tasks sent over a connection.

// `#[multiproc::func]` registers the worker loop with a link-section static (linkme); that
// declaration is the only thing the `unsafe_code` lint sees here.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::connection::Connection;
use crate::process::bootstrap::run_guarded_into;
use crate::process::registry;
use crate::process::wire::Outcome;

/// Encoded values back to back, with where each one ends: one buffer for a whole chunk
/// instead of an allocation per item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) data: ByteBuf,
    pub(crate) ends: Vec<u32>,
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Item `i`'s bytes.
    pub(crate) fn item(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }
}

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `function` on each item of `args`; report the results together.
    Run {
        job: u64,
        start: u64,
        function: String,
        args: Batch,
    },
    /// Finish and exit.
    Exit,
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer (if any) ran; tasks are welcome.
    Ready,
    /// The initializer failed; the worker exits.
    InitFailed(String),
    /// The results of one `Run`, in argument order; the items that failed have an empty
    /// slot in `results` and their story in `failures`.
    Done {
        job: u64,
        start: u64,
        results: Batch,
        failures: Vec<(u32, Outcome)>,
    },
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Returned(_) => "returned".into(),
        Outcome::Panicked(m) => format!("panicked: {m}"),
        Outcome::Codec { message, .. } => format!("codec error: {message}"),
        Outcome::Failed(m) => m.clone(),
    }
}

/// Runs registered `function` on `args`, appending the encoded result to `out`; `Some` says
/// why there is none.
fn run_one(function: &str, args: &[u8], out: &mut Vec<u8>) -> Option<Outcome> {
    match registry::lookup(function) {
        None => Some(Outcome::Failed(format!(
            "function `{function}` is not registered"
        ))),
        Some(entry) => run_guarded_into(out, |out| (entry.invoke)(args, Vec::new(), out)),
    }
}

/// Runs one task: the function's registered name, its encoded argument, the buffer the
/// encoded result is appended to; `Some` says why there is no result.
pub(crate) type RunTask<'a> = dyn Fn(&str, &[u8], &mut Vec<u8>) -> Option<Outcome> + 'a;

/// The worker loop: initializer, then tasks until told to exit, the parent goes away, or
/// `maxtasks` tasks (chunks) are done. `run` runs one task from the function's registered
/// name (ignored by closure pools) and its encoded argument.
pub(crate) fn serve(
    conn: &Connection,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
    run: &RunTask<'_>,
) {
    if let Some((function, args)) = init
        && let Some(failure) = run_one(&function, &args, &mut Vec::new())
    {
        let _ = conn.send(&FromWorker::InitFailed(describe(&failure)));
        return;
    }
    if conn.send(&FromWorker::Ready).is_err() {
        return;
    }
    let mut done = 0u64;
    // Tasks come pipelined: one receive takes in every one that has arrived.
    let mut reader = crate::connection::FrameReader::default();
    // No busy-polling for the next task: a spinning worker takes the CPU its parent needs
    // to send it (see the handler).
    while let Ok(frame) = reader.next(conn, std::time::Duration::ZERO) {
        let Ok(ToWorker::Run {
            job,
            start,
            function,
            args,
        }) = crate::codec::decode::<ToWorker>(&frame)
        else {
            break;
        };
        let mut results = Batch::default();
        let mut failures = Vec::new();
        let mut out = Vec::new();
        for i in 0..args.len() {
            if let Some(failure) = run(&function, args.item(i), &mut out) {
                failures.push((i as u32, failure));
            }
            results.ends.push(out.len() as u32);
        }
        results.data = ByteBuf::from(out);
        // Each report goes at once, before the next task starts: if that task kills this
        // process, the parent knows exactly which tasks finished (held reports would die
        // with it and their tasks would be failed or run again).
        if conn
            .send(&FromWorker::Done {
                job,
                start,
                results,
                failures,
            })
            .is_err()
        {
            return;
        }
        done += 1;
        if maxtasks > 0 && done >= maxtasks {
            return;
        }
    }
}

/// The worker of a pool of registered functions.
#[multiproc_macros::func]
pub(crate) fn multiproc_pool_worker(
    conn: Connection,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
) {
    serve(&conn, init, maxtasks, &run_one);
}
