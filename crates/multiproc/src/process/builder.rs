//! Starting processes: the builder, the default start method, and the dispatch to the start
//! methods (`fork`, `spawn`, `forkserver`, one module each).

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::handle::Process;
use super::registry::Func;
use super::wire::Start;
use super::{before_main, child, current, fork, forkserver, registry, spawn, tracker};
use crate::error::ProcessError;
use crate::sys;

/// How a child process is created.
///
/// | method | how | cost here | with threads |
/// |---|---|---|---|
/// | [`Forkserver`](StartMethod::Forkserver) (default) | a clean helper forks | a fork of a small process | safe |
/// | [`Spawn`](StartMethod::Spawn) | re-run this executable | an `exec` and a dynamic link | safe |
/// | [`Fork`](StartMethod::Fork) | fork this process | a fork of this process | opt-in: locks held by other threads stay locked in the child |
///
/// The default is the forkserver: measured on a 2-core machine it starts and joins an empty
/// function several times faster than spawn, and it is just as safe in a program with
/// threads, because the helper itself was started by spawn before any user code ran. Run
/// `multiproc bench --group spawn` to see the figures on your machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-run the same executable; the child is intercepted before `main`.
    Spawn,
    /// Fork this process; the only method that can run a closure.
    Fork,
    /// Fork a helper process that was started clean, early.
    Forkserver,
}

impl StartMethod {
    /// All methods, in Python's order of `get_all_start_methods()` on Linux.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ];

    /// The method's name as Python spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Fork => "fork",
            StartMethod::Forkserver => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was none of `spawn`, `fork`, `forkserver`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown start method `{0}`: expected spawn, fork or forkserver")]
pub struct UnknownStartMethod(pub String);

impl FromStr for StartMethod {
    type Err = UnknownStartMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spawn" => Ok(StartMethod::Spawn),
            "fork" => Ok(StartMethod::Fork),
            "forkserver" => Ok(StartMethod::Forkserver),
            other => Err(UnknownStartMethod(other.to_string())),
        }
    }
}

const UNSET: u8 = 0;
static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(UNSET);

fn code(m: StartMethod) -> u8 {
    match m {
        StartMethod::Spawn => 1,
        StartMethod::Fork => 2,
        StartMethod::Forkserver => 3,
    }
}

/// Sets the start method used when a builder names none (Python's `set_start_method`).
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(code(method), Ordering::Relaxed);
}

/// The start method used when a builder names none: the one set with [`set_start_method`],
/// else the environment variable `MULTIPROC_START_METHOD`, else
/// [`StartMethod::Forkserver`].
pub fn get_start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        1 => StartMethod::Spawn,
        2 => StartMethod::Fork,
        3 => StartMethod::Forkserver,
        _ => std::env::var("MULTIPROC_START_METHOD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(StartMethod::Forkserver),
    }
}

/// Configures and starts a [`Process`]: `Process::builder().name("w1").daemon(true)...`.
///
/// ```
/// use multiproc::{Process, StartMethod};
///
/// #[multiproc::func]
/// fn describe(tag: String) -> (String, bool, u32) {
///     let me = multiproc::current_process();
///     let parent = multiproc::parent_process().expect("started by a parent").pid();
///     (format!("{tag}: {}", me.name()), me.daemon(), parent)
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// for method in StartMethod::ALL {
///     let p = Process::builder()
///         .name(format!("w-{method}"))
///         .daemon(true) // dies with this process, even by SIGKILL
///         .start_method(method)
///         .start(&describe, "hello".to_string())?;
///     let (said, daemon, parent) = p.join()?;
///     assert_eq!(said, format!("hello: w-{method}"));
///     assert!(daemon);
///     assert_eq!(parent, std::process::id());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    name: Option<String>,
    daemon: Option<bool>,
    method: Option<StartMethod>,
}

impl Builder {
    /// A builder with the defaults: name `Process-N`, daemon flag of the current process,
    /// the default start method.
    pub fn new() -> Self {
        Builder::default()
    }

    /// The process's name (as `current_process().name()` reports it in the child).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemonic process is killed when its parent ends, even by `SIGKILL`, and is
    /// terminated rather than joined when its parent exits.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = Some(daemon);
        self
    }

    /// The start method for this process (otherwise [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts registered function `f` with `args` in a new process.
    ///
    /// ```
    /// use multiproc::{Process, StartMethod};
    ///
    /// #[multiproc::func]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let p = Process::builder().name("sq").start_method(StartMethod::Spawn).start(&square, 7)?;
    /// assert_eq!(p.join()?, 49);
    /// # Ok(()) }
    /// ```
    pub fn start<F: Func<M>, M>(
        self,
        f: &F,
        args: F::Args,
    ) -> Result<Process<F::Output>, ProcessError> {
        let function = f.registered_name();
        if registry::lookup(function).is_none() {
            return Err(crate::NotRegistered(function.to_string()).into());
        }
        let (args, fds) = crate::codec::encode_with_fds(&args)?;
        self.launch(function, args, fds)
    }

    /// Runs closure `f` in a forked child (always the fork method) and gives back its result
    /// through [`Process::join`].
    ///
    /// In a program with other threads the child has only this thread: a lock another
    /// thread held at the moment of the fork stays locked in the child.
    pub fn fork<R, C>(self, f: C) -> Result<Process<R>, ProcessError>
    where
        C: FnOnce() -> R,
        R: Serialize + DeserializeOwned,
    {
        check_bootstrapped()?;
        child::reap_finished();
        let start = self.describe(String::new(), Vec::new());
        fork::start_closure(start, f)
    }

    fn describe(&self, function: String, args: Vec<u8>) -> Start {
        let (identity, default_name) = current::next_child_identity();
        let me = current::current_process();
        Start {
            function,
            name: self.name.clone().unwrap_or(default_name),
            identity,
            daemon: self.daemon.unwrap_or(me.daemon()),
            parent_pid: me.pid(),
            parent_name: me.name().to_string(),
            args,
            tracker: false,
        }
    }

    /// Starts the registered function `function` with its encoded arguments `args` and their
    /// descriptors `fds` by the builder's start method.
    fn launch<R>(
        self,
        function: &str,
        args: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Result<Process<R>, ProcessError> {
        check_bootstrapped()?;
        child::reap_finished();
        let start = self.describe(function.to_string(), args);
        let method = self.method.unwrap_or_else(get_start_method);
        if method == StartMethod::Fork {
            return fork::start_registered(start, fds);
        }
        // Spawn and forkserver: the start message goes through a socket pair.
        let (ours, theirs) =
            sys::socketpair().map_err(ProcessError::io("creating a socket pair"))?;
        let mut start = start;
        let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        // A forked child inherits the tracker link; these get it with the start message.
        if let Some(link) = tracker::link() {
            start.tracker = true;
            fds.push(link);
        }
        let payload = crate::codec::encode(&start)?;
        if method == StartMethod::Forkserver {
            forkserver::launch(ours, theirs, start, &payload, &fds)
        } else {
            spawn::launch(ours, theirs, start, &payload, &fds)
        }
    }
}

fn check_bootstrapped() -> Result<(), ProcessError> {
    if before_main::pending() {
        Err(ProcessError::NotBootstrapped)
    } else {
        Ok(())
    }
}
