//! # multiproc-cluster
//!
//! [`multiproc`]'s [`Pool`](multiproc::Pool) API across machines, on Redis Streams: the
//! same binary is the client and, started with `--mp-worker URL`, the worker on every
//! machine.
//!
//! ```no_run
//! use multiproc_cluster::ClusterPool;
//!
//! #[multiproc::func]
//! fn crunch(n: u64) -> u64 { (1..=n).sum() }
//!
//! #[multiproc::main]
//! fn main() -> Result<(), multiproc_cluster::ClusterError> {
//!     // `MULTIPROC_AUTHKEY=k ./app --mp-worker redis://head:6379/ --queue jobs` on any machine
//!     multiproc_cluster::run_worker_if_requested();
//!     let pool = ClusterPool::connect("redis://head:6379/", "jobs", b"k")?;
//!     let out: Vec<u64> = pool.map(&crunch, 0..10_000)?;
//!     assert_eq!(out[3], 6);
//!     Ok(())
//! }
//! ```
//!
//! Delivery: tasks are `XADD`ed to `mp:{queue}:tasks`; workers read them through the
//! consumer group `workers`; a reply is stored on the client's reply stream in the same
//! transaction as the `XACK`; running tasks keep their lease with `XCLAIM ... JUSTID`; tasks
//! of dead workers are taken over with `XAUTOCLAIM` after the lease; a task that killed its
//! process `max_tries` times goes to `mp:{queue}:dead` and fails with
//! [`ClusterError::DeadLetter`]. The client keeps one slot per task, so a task that ran twice
//! is still delivered once.
//!
//! Authenticity: tasks and replies are signed (HMAC-SHA256) with the authkey; unsigned or
//! tampered entries are rejected and reported. A task is signed together with its client,
//! queue, task id, submission number and expiry, and a worker claims it in Redis before
//! running it, so a copy of a task entry is refused (dead-lettered, reported to its client's
//! [`rejected`](ClusterPool::rejected)) while the task runs, after it ran, and after its
//! expiry; the same entry taken over from a dead worker runs. A reply names the client and
//! task it answers: on another client's stream it is rejected. What someone who can write to
//! Redis without the authkey can still do (read, delete, delay) is in the repository's
//! `docs/cluster.md`.
//!
//! Broker loss: the client checks that the broker still holds its waiting tasks and submits
//! again those it lost (a restart without persistence), fails those no worker started in
//! time with [`ClusterError::Expired`], and all of them with [`ClusterError::BrokerLost`]
//! when the broker stays unreachable: no wait is endless. Redis AUTH/ACL come with the URL
//! (`redis://user:password@host/`; the user needs the stream commands and `EVAL`), TLS with
//! `rediss://` and the `tls` feature. Redis 6.2 or later.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod envelope;
mod error;
mod status;
mod worker;

pub use client::{ClusterImap, ClusterPool, ClusterPoolBuilder};
pub use error::ClusterError;
pub use multiproc::TaskError;

/// The handle of [`ClusterPool::apply_async`]: the one every executor returns.
pub type ClusterResult<R> = multiproc::AsyncResult<R>;
/// The handle of [`ClusterPool::map_async`]: the one every executor returns.
pub type ClusterMapResult<R> = multiproc::MapResult<R>;
pub use status::{QueueStatus, WorkerStatus, status};
pub use worker::{WorkerOptions, run_worker, run_worker_if_requested, worker_main};

/// The repository's front page and cluster guide, whose examples run (or, needing a Redis
/// server, compile) as doctests of this crate, the one that depends on all the others. Only
/// the repository has them: the published package compiles this module in no build.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../../README.md")]
    mod readme {}
    #[doc = include_str!("../../../docs/cluster.md")]
    mod cluster {}
}

/// Sleeps `d` in slices of at most 50 ms; `false` as soon as `stop` is set (a client's or a
/// worker's background thread that must end promptly when its owner stops).
fn nap(stop: &std::sync::atomic::AtomicBool, d: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + d;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
    }
    false
}
