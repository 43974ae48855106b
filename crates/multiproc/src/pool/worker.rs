//! The worker side of a pool: a registered function that runs tasks sent over a connection.

// `#[multiproc::func]` registers the worker loop with a link-section static (linkme); that
// declaration is the only thing the `unsafe_code` lint sees here.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::process::bootstrap::run_guarded;
use crate::process::registry;
use crate::process::wire::Outcome;

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `function` on each encoded argument; report the outcomes together.
    Run {
        job: u64,
        start: u64,
        function: String,
        args: Vec<Vec<u8>>,
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
    /// The outcomes of one `Run`, in argument order.
    Done {
        job: u64,
        start: u64,
        outcomes: Vec<Outcome>,
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

fn run_one(function: &str, args: &[u8]) -> Outcome {
    match registry::lookup(function) {
        None => Outcome::Failed(format!("function `{function}` is not registered")),
        Some(entry) => run_guarded(|| (entry.invoke)(args, Vec::new())),
    }
}

/// The worker loop: initializer, then tasks until told to exit, the parent goes away, or
/// `maxtasks` tasks (chunks) are done.
/// `run` runs one task from the function's registered name (ignored by closure pools) and its
/// encoded argument.
pub(crate) fn serve(
    conn: &Connection,
    init: Option<(String, Vec<u8>)>,
    maxtasks: u64,
    run: &dyn Fn(&str, &[u8]) -> Outcome,
) {
    if let Some((function, args)) = init {
        let outcome = run_one(&function, &args);
        if !matches!(outcome, Outcome::Returned(_)) {
            let _ = conn.send(&FromWorker::InitFailed(describe(&outcome)));
            return;
        }
    }
    if conn.send(&FromWorker::Ready).is_err() {
        return;
    }
    let mut done = 0u64;
    while let Ok(ToWorker::Run {
        job,
        start,
        function,
        args,
    }) = conn.recv::<ToWorker>()
    {
        let outcomes = args.iter().map(|a| run(&function, a)).collect();
        if conn
            .send(&FromWorker::Done {
                job,
                start,
                outcomes,
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
