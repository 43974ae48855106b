//! Processes: start a function in a child, wait for its typed result, signal it.
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
//!     println!("{total}");
//!     Ok(())
//! }
//! ```
//!
//! How it works: a child is either this executable re-run ([`StartMethod::Spawn`]), a fork
//! of a clean helper ([`StartMethod::Forkserver`], the default) or a fork of this process
//! ([`StartMethod::Fork`], which alone can run closures). A re-run binary is intercepted
//! before `main` (or before the test harness) by a life-before-main hook; it reads the name
//! of a registered function and its arguments from a socket inherited as descriptor 3, with
//! any file descriptors in the arguments attached (`SCM_RIGHTS`). The result or the panic
//! message comes back on the same socket; the exit status comes from `waitpid`.
//!
//! Each start method has its launch code in a module of its own: [`fork`], [`spawn`],
//! [`forkserver`]; [`builder`] picks one. The child's side is [`bootstrap`] (and
//! [`before_main`], where a re-run binary becomes the child); [`child`] is the parent's side, [`handle`]
//! the handles a program holds.

mod before_main;
mod bootstrap;
mod builder;
mod child;
mod current;
mod fork;
mod forkserver;
mod handle;
mod output;
mod panics;
pub(crate) mod parent_only;
mod reaper;
pub(crate) mod registry;
mod scope;
pub(crate) mod setup;
mod spawn;
pub(crate) mod tracker;
mod wire;

pub use crate::sys::Resource;
pub use builder::{Builder, StartMethod, UnknownStartMethod, get_start_method, set_start_method};
pub use current::{CurrentProcess, ParentProcess, current_process, parent_process};
pub use handle::{ActiveChild, Process, active_children};
pub use output::CapturedOutput;
pub use setup::{Enforcement, Limits, Output, cgroup2_memory_hierarchy};

/// No limit, for [`Builder::rlimit`] (`RLIM_INFINITY`).
pub const UNLIMITED: u64 = crate::sys::UNLIMITED;
// What the rest of the crate uses of the start machinery.
pub(crate) use before_main::on_load;
pub(crate) use bootstrap::run_guarded_into;
pub(crate) use child::{Finish, finish_children};
pub(crate) use panics::panic_message;
pub(crate) use scope::TestScope;
pub(crate) use wire::Outcome;

impl Process<()> {
    /// A builder for a process: name, daemon flag, start method.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Runs closure `f` in a forked child; see [`Builder::fork`].
    ///
    /// ```
    /// let data = vec![1u64, 2, 3];
    /// let p = multiproc::Process::fork(move || data.iter().sum::<u64>())?;
    /// assert_eq!(p.join()?, 6);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn fork<R, C>(f: C) -> Result<Process<R>, crate::error::ProcessError>
    where
        C: FnOnce() -> R,
        R: serde::Serialize + serde::de::DeserializeOwned,
    {
        Builder::new().start_method(StartMethod::Fork).fork(f)
    }
}

/// Starts the forkserver now, from wherever this is called (it is always a clean re-run of
/// this executable, so calling this early only moves its start-up cost out of the first
/// child's start). Returns the forkserver's pid.
pub fn start_forkserver() -> Result<u32, crate::error::ProcessError> {
    forkserver::ensure_started()
}
