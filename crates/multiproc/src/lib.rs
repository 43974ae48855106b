//! # multiproc
//!
//! Python's `multiprocessing` model for Rust: a [`Process`] API shaped like threading, typed
//! results and panics that come back as errors, three start methods, and children that never
//! become zombies or outlive a parent they belong to.
//!
//! ```
//! #[multiproc::func]
//! fn crunch(limit: u64) -> u64 {
//!     (2..limit).filter(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0)).sum()
//! }
//!
//! #[multiproc::main]
//! fn main() -> multiproc::Result<()> {
//!     use multiproc::Func;
//!     let p = crunch.spawn(100_000)?;
//!     let total: u64 = p.join()?;
//!     assert_eq!(total, 454_396_537);
//!     Ok(())
//! }
//! ```
//!
//! Functions that run in a spawned child are registered with [`#[multiproc::func]`](func);
//! closures run with [`Process::fork`] or a closure pool. A registered function takes its
//! arguments by value (they are decoded in the child), and a borrowed one is refused with the
//! owned type to take instead:
//!
//! ```compile_fail
//! #[multiproc::func]
//! fn count_words(text: &str) -> usize { text.split_whitespace().count() }
//! // error: #[multiproc::func] arguments travel by value to another process:
//! //        take `String` instead of a reference
//! ```
//! Arguments and results are any
//! `Serialize + DeserializeOwned` type; an [`Fd`] inside the arguments travels as a real file
//! descriptor. Children also work inside `#[test]` functions, under `cargo test` and
//! `cargo nextest`, with nothing to add: a re-run test binary becomes the child before the
//! test harness starts.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Lets the crate use its own attribute macros (which name `::multiproc`).
extern crate self as multiproc;

#[cfg(feature = "tokio")]
mod aio;
pub mod codec;
pub mod connection;
mod cpu;
mod error;
pub mod executor;
pub mod manager;
pub mod pool;
mod process;
pub mod queue;
pub mod shared;
mod shm;
mod spin;
pub use spin::{SpinPolicy, set_spin_policy};
pub mod sync;
mod sys;

pub use codec::Fd;
pub use connection::{Address, Client, Connection, IntoFdError, Listener, pipe, wait};
pub use cpu::cpu_count;
pub use error::{
    CodecError, ConnectionError, Error, ManagerError, NotRegistered, PoolError, ProcessError,
    QueueError, Result, SharedMemoryError, SyncError, TaskError, TimedOut,
};
pub use executor::{AsCompleted, Executor, ReturnWhen, Waited, as_completed};
pub use manager::Manager;
pub use multiproc_macros::{func, main, managed, test};
pub use pool::{
    AsArg, AsyncResult, ClosurePool, Imap, MapResult, Pool, PoolBuilder, ThreadPool,
    ThreadPoolBuilder,
};
pub use process::registry::Func;
pub use process::{
    ActiveChild, Builder, CapturedOutput, CurrentProcess, Enforcement, Limits, Output,
    ParentProcess, Process, Resource, StartMethod, UNLIMITED, UnknownStartMethod, active_children,
    cgroup2_memory_hierarchy, current_process, get_start_method, parent_process, set_start_method,
    start_forkserver,
};
pub use queue::{JoinableQueue, Queue, SimpleQueue};
pub use shared::{Array, SharedMemory, Value};
pub use sync::{AcquireError, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};

/// Runs the child bootstrap if this process is a multiproc child whose life-before-main hook
/// did not run (it normally does). Call it first in `main` when not using
/// `#[multiproc::main]`; in a normal start it returns at once.
pub fn init() {
    process::on_load();
}

/// Ends this process's children as Python does when the main process exits: daemonic ones
/// are terminated, the others joined. The process's exit runs it (see
/// [`#[multiproc::main]`](main), which runs it when `main`'s body ends); call it to do it
/// earlier.
pub fn shutdown() {
    process::finish_children(None, process::Finish::TerminateDaemons);
}

/// The guide's pages (`docs/` in the repository), whose examples run as doctests of this crate
/// so that they cannot fall behind it. Only the repository has them: the published package
/// compiles this module in no build.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../../docs/patterns.md")]
    mod patterns {}
    #[doc = include_str!("../../../docs/from-python.md")]
    mod from_python {}
}

/// What the macros expand to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::ResultBuf;
    pub use crate::process::registry::{Entry, FUNCTIONS, Invoke, decode_args, encode_result};
    pub use linkme;
    pub use serde;

    /// Ends the children when `main` returns or unwinds.
    #[derive(Debug)]
    pub struct MainGuard(());

    impl MainGuard {
        /// Runs the bootstrap check and arms the guard.
        pub fn new() -> Self {
            crate::init();
            MainGuard(())
        }
    }

    impl Default for MainGuard {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for MainGuard {
        fn drop(&mut self) {
            crate::shutdown();
        }
    }

    /// Ends the children a test started when the test returns or fails (see
    /// `#[multiproc::test]`).
    #[derive(Debug)]
    pub struct TestGuard {
        _scope: crate::process::TestScope,
    }

    impl TestGuard {
        /// Arms the guard for the test running on the current thread.
        pub fn new() -> Self {
            crate::init();
            TestGuard {
                _scope: crate::process::TestScope::enter(),
            }
        }
    }

    impl Default for TestGuard {
        fn default() -> Self {
            Self::new()
        }
    }
}
