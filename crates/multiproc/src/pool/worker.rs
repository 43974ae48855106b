//! The worker side of a pool: a registered function that runs tasks sent over a connection.

// `#[multiproc::func]` registers the worker loop with a link-section static (linkme); that
// declaration is the only thing the `unsafe_code` lint sees here.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::ResultBuf;
use crate::connection::Connection;
use crate::process::bootstrap::run_guarded_into;
use crate::process::registry;
use crate::process::wire::Outcome;
use crate::queue::ring::Ring;

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
    /// slot in `results` and their story in `failures`. Goes through the report ring.
    Done {
        job: u64,
        start: u64,
        results: Batch,
        failures: Vec<(u32, Outcome)>,
    },
    /// Reports are waiting in the ring and the handler sleeps: wake up.
    Wake,
}

/// Puts one report in the ring the handler reads, and rings its doorbell (a `Wake` on the
/// connection) only if it sleeps: while the handler is awake, a report costs no system call
/// on either side. The ring is shared memory the handler owns, so a report is safe once
/// written even if this process dies right after. `Err` when the handler is gone.
fn report(conn: &Connection, reports: &Ring, msg: &FromWorker) -> Result<(), ()> {
    let bytes = crate::codec::encode(msg).map_err(drop)?;
    match reports.put(&[bytes], true, None, false) {
        Ok(()) => {}
        Err(crate::error::QueueError::TooLarge { size, limit }) => {
            // Only a chunk's results can be that large: fail its items instead.
            let FromWorker::Done {
                job,
                start,
                results,
                ..
            } = msg
            else {
                return Err(());
            };
            let why = format!("results of {size} bytes exceed the {limit}-byte report buffer");
            let failed = FromWorker::Done {
                job: *job,
                start: *start,
                results: Batch {
                    data: ByteBuf::new(),
                    ends: vec![0; results.len()],
                },
                failures: (0..results.len() as u32)
                    .map(|i| (i, Outcome::Failed(why.clone())))
                    .collect(),
            };
            return report(conn, reports, &failed);
        }
        Err(_) => return Err(()),
    }
    // Pairs with the handler's store + fence before it polls: either it sees the report,
    // or we see that it sleeps (`put` ends with a SeqCst fence).
    if reports.flag().load(std::sync::atomic::Ordering::SeqCst) != 0 {
        conn.send(&FromWorker::Wake).map_err(drop)?;
    }
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Returned(_) => "returned".into(),
        Outcome::Panicked(m) => format!("panicked: {m}"),
        Outcome::Codec { message, .. } => format!("codec error: {message}"),
        Outcome::Failed(m) => m.clone(),
    }
}

/// Runs one task: its encoded argument, the buffer the encoded result is appended to;
/// `Some` says why there is no result.
pub(crate) type Task<'a> = Box<dyn Fn(&[u8], &mut Vec<u8>) -> Option<Outcome> + 'a>;

/// Finds how to run the tasks of a function from its registered name: once per chunk, not
/// per item (the lookup hashes the name).
pub(crate) type Resolve<'a> = dyn Fn(&str) -> Task<'a> + 'a;

/// The tasks of registered `function`.
fn registered(function: &str) -> Task<'static> {
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
    reports: &Ring,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
    resolve: &Resolve<'_>,
) {
    if let Some((function, args)) = init
        && let Some(failure) = registered(&function)(&args, &mut Vec::new())
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
        let run = resolve(&function);
        for i in 0..args.len() {
            if let Some(failure) = run(args.item(i), &mut out) {
                failures.push((i as u32, failure));
            }
            results.ends.push(out.len() as u32);
        }
        results.data = ByteBuf::from(out);
        // Each report goes at once, before the next task starts: if that task kills this
        // process, the parent knows exactly which tasks finished (held reports would die
        // with it and their tasks would be failed or run again).
        let done_msg = FromWorker::Done {
            job,
            start,
            results,
            failures,
        };
        if report(conn, reports, &done_msg).is_err() {
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
    reports: Ring,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
) {
    serve(&conn, &reports, init, maxtasks, &registered);
}
