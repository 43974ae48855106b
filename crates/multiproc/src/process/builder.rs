//! Starting processes: the builder, the default start method, and the dispatch to the start
//! methods (`fork`, `spawn`, `forkserver`, one module each).

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::handle::Process;
use super::output;
use super::registry::Func;
use super::setup::{DEFAULT_CAPTURE_LIMIT, Output, Setup};
use super::wire::Start;
use super::{before_main, child, current, fork, forkserver, registry, spawn, tracker};
use crate::error::ProcessError;
use crate::sys::{self, Resource};

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
///
/// Besides name, daemon flag and start method, a builder sets up the child before its
/// function runs, under every start method: resource limits ([`memory_limit`](Self::memory_limit),
/// [`cpu_time_limit`](Self::cpu_time_limit), [`rlimit`](Self::rlimit)), niceness, working
/// directory, environment, user and group, and where its output goes.
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::{Output, Process, Resource};
///
/// #[multiproc::func]
/// fn render(scene: String) -> usize { scene.len() }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = Process::builder()
///     .memory_limit(512 << 20)
///     .cpu_time_limit(Duration::from_secs(30))
///     .rlimit(Resource::NoFile, 256, 256)
///     .rlimit(Resource::Core, 0, 0)
///     .nice(10)
///     .current_dir("/tmp")
///     .env_clear()
///     .env("LANG", "C")
///     .stdout(Output::Capture)
///     .stderr(Output::Prefixed)
///     .start(&render, "scene".into())?;
/// let output = p.output(Duration::from_secs(60))?;
/// assert_eq!(p.join()?, 5);
/// print!("{}", output.stdout_lossy());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    name: Option<String>,
    daemon: Option<bool>,
    method: Option<StartMethod>,
    setup: Setup,
    capture_limit: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            daemon: None,
            method: None,
            setup: Setup::default(),
            capture_limit: DEFAULT_CAPTURE_LIMIT,
        }
    }
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

    /// The child cannot use more than `bytes` of memory: an allocation past it fails the
    /// child with [`ProcessError::MemoryLimit`]. Enforced as `RLIMIT_DATA` (heap and private
    /// writable mappings; see [`Limits`](super::Limits) for what is exact).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.setup.memory_limit = Some(bytes);
        self
    }

    /// The child may use this much CPU time (whole seconds, rounded up; at least one): past
    /// it the kernel ends it and `join` reports [`ProcessError::CpuTimeLimit`].
    pub fn cpu_time_limit(mut self, limit: Duration) -> Self {
        self.setup.cpu_time_limit = Some(limit);
        self
    }

    /// Sets the child's `soft` and `hard` limit of `resource` (`setrlimit`), after the memory
    /// and CPU-time limits (so it overrides them for the same resource). Raising a hard
    /// limit needs privileges; [`UNLIMITED`](crate::UNLIMITED) is no limit.
    pub fn rlimit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.setup.rlimits.push((resource, soft, hard));
        self
    }

    /// The child's niceness, -20 (first) to 19 (last); lowering it below the parent's needs
    /// privileges.
    pub fn nice(mut self, nice: i32) -> Self {
        self.setup.nice = Some(nice);
        self
    }

    /// The child's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.setup.current_dir = Some(dir.into());
        self
    }

    /// The child starts with an empty environment (plus what [`env`](Self::env) sets after).
    pub fn env_clear(mut self) -> Self {
        self.setup.env_clear = true;
        self.setup.env.clear();
        self
    }

    /// Sets environment variable `key` to `value` in the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.setup.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes environment variable `key` in the child.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.setup.env.push((key.into(), None));
        self
    }

    /// Runs the child as user `uid` (needs root: otherwise starting fails with
    /// [`ProcessError::NotRoot`]).
    pub fn user(mut self, uid: u32) -> Self {
        self.setup.user = Some(uid);
        self
    }

    /// Runs the child as group `gid`, with no supplementary groups (needs root: otherwise
    /// starting fails with [`ProcessError::NotRoot`]).
    pub fn group(mut self, gid: u32) -> Self {
        self.setup.group = Some(gid);
        self
    }

    /// Where the child's standard output goes (default: this process's).
    pub fn stdout(mut self, output: Output) -> Self {
        self.setup.stdout = output;
        self
    }

    /// Where the child's standard error goes (default: this process's).
    pub fn stderr(mut self, output: Output) -> Self {
        self.setup.stderr = output;
        self
    }

    /// How many bytes of each captured stream are kept, the most recent ones (default 1 MiB):
    /// a child that prints gigabytes costs this much memory here, no more.
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        self
    }

    /// Replaces the child's set-up (the pool's and the manager's builders share it).
    pub(crate) fn with_setup(mut self, setup: Setup) -> Self {
        self.setup = setup;
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
        let start = self.describe(String::new(), Vec::new())?;
        let (pending, ends) = output::pipes(start.setup.as_deref())?;
        fork::start_closure(start, f, ends, self.streams(pending))
    }

    /// What the parent keeps of the child's piped streams.
    fn streams(&self, pending: output::Pending) -> Streams {
        Streams {
            pending,
            limit: self.capture_limit,
        }
    }

    fn describe(&self, function: String, args: Vec<u8>) -> Result<Start, ProcessError> {
        let setup = if self.setup.is_empty() {
            None
        } else {
            self.setup.check()?;
            Some(Box::new(self.setup.clone()))
        };
        let (identity, default_name) = current::next_child_identity();
        let me = current::current_process();
        Ok(Start {
            function,
            name: self.name.clone().unwrap_or(default_name),
            identity,
            daemon: self.daemon.unwrap_or(me.daemon()),
            parent_pid: me.pid(),
            parent_name: me.name().to_string(),
            args,
            tracker: false,
            setup,
        })
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
        let start = self.describe(function.to_string(), args)?;
        let (pending, ends) = output::pipes(start.setup.as_deref())?;
        let streams = self.streams(pending);
        let method = self.method.unwrap_or_else(get_start_method);
        if method == StartMethod::Fork {
            return fork::start_registered(start, fds, ends, streams);
        }
        // Spawn and forkserver: the start message goes through a socket pair.
        let (ours, theirs) =
            sys::socketpair().map_err(ProcessError::io("creating a socket pair"))?;
        let mut start = start;
        let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        // The ends of the piped streams, then the tracker link (see `Start::setup`).
        fds.extend(ends.0.iter().chain(ends.1.iter()).map(|f| f.as_fd()));
        // A forked child inherits the tracker link; these get it with the start message.
        if let Some(link) = tracker::link() {
            start.tracker = true;
            fds.push(link);
        }
        let payload = crate::codec::encode(&start)?;
        let started = if method == StartMethod::Forkserver {
            forkserver::launch(ours, theirs, start, &payload, &fds, streams)
        } else {
            spawn::launch(ours, theirs, start, &payload, &fds, streams)
        };
        // Our copies of the write ends: the child has its own now (the reader sees the end
        // of the stream when the child's are closed).
        drop(fds);
        drop(ends);
        started
    }
}

/// What the parent keeps of a new child's piped streams until it knows the child's pid.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) pending: output::Pending,
    pub(crate) limit: usize,
}

fn check_bootstrapped() -> Result<(), ProcessError> {
    if before_main::pending() {
        Err(ProcessError::NotBootstrapped)
    } else {
        Ok(())
    }
}
