//! Starting processes: the builder, the start methods, and the default method.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::child::{self, ChildShared, Process};
use super::registry::Func;
use super::wire::{self, Kind, Outcome, Start};
use super::{before_main, bootstrap, current, forkserver, panics, reaper, registry, scope};
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
    /// ```no_run
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
            return Err(ProcessError::NotRegistered {
                name: function.to_string(),
            });
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
        Self::fork_with(start, |_, sock| {
            bootstrap::run_and_finish(sock, |out| out.encode(&f()))
        })
    }

    /// Forks a child that becomes `start`'s process and runs `body`, which reports on the
    /// socket it is given and exits. The child has the start message in memory already:
    /// nothing goes through the socket but the outcome.
    fn fork_with<R>(
        start: Start,
        body: impl FnOnce(&Start, BorrowedFd<'_>) -> std::convert::Infallible,
    ) -> Result<Process<R>, ProcessError> {
        // The child inherits the hook that names it when it panics.
        panics::install();
        let (ours, theirs) =
            child::report_pair().map_err(ProcessError::io("creating a socket pair"))?;
        let report = theirs.as_fd();
        // The child's copies are made here: allocating in the child would write to pages
        // it shares with us (a copy-on-write fault each) on the path the parent waits for.
        let (name, identity, parent_name) = (
            start.name.clone(),
            start.identity.clone(),
            start.parent_name.clone(),
        );
        let pid = fork_child(ours.as_raw_fd(), || {
            current::become_child(
                &mut current::lock_me(),
                name,
                identity,
                start.daemon,
                start.parent_pid,
                parent_name,
                true,
            );
            match body(&start, report) {}
        })
        .map_err(ProcessError::io("fork"))?;
        Self::register(pid, start, None, ours, Some(theirs))
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
            let entry = registry::lookup(&start.function);
            return Self::fork_with(start, move |start, sock| match entry {
                Some(e) => bootstrap::run_and_finish(sock, |out| (e.invoke)(&start.args, fds, out)),
                None => bootstrap::finish(
                    sock,
                    Err(Outcome::Failed(format!(
                        "function `{}` is not registered",
                        start.function
                    ))),
                ),
            });
        }
        let io = ProcessError::io;
        let (ours, theirs) = sys::socketpair().map_err(io("creating a socket pair"))?;
        let mut start = start;
        let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        // A forked child inherits the tracker link; these get it with the start message.
        if let Some(link) = super::tracker::link() {
            start.tracker = true;
            fds.push(link);
        }
        let payload = crate::codec::encode(&start)?;
        if method == StartMethod::Forkserver {
            // The start message travels with the request: the child has it in memory.
            let (pid, pidfd) = forkserver::request(theirs.as_fd(), &payload, &fds)?;
            return Self::register(pid, start, Some(pidfd), ours, None);
        }
        let pid = sys::spawn_self(theirs.as_fd(), (bootstrap::ENV, "child"))
            .map_err(io("spawning a child"))?;
        drop(theirs);
        let sent = wire::write_frame(ours.as_fd(), Kind::Start, &payload, &fds);
        let process = Self::register(pid, start, None, ours, None)?;
        match sent {
            Ok(()) => Ok(process),
            // A child that died before reading is reported by its exit status at join.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(process)
            }
            Err(e) => {
                let _ = process.kill();
                let _ = process.join_timeout(std::time::Duration::from_secs(5));
                Err(ProcessError::Io {
                    op: "sending the start message",
                    source: e,
                })
            }
        }
    }

    /// Takes the start message by value: moving its name (not cloning it) keeps the parent
    /// from allocating while a fork child shares its pages (each write there is a
    /// copy-on-write fault).
    fn register<R>(
        pid: u32,
        start: Start,
        pidfd: Option<OwnedFd>,
        sock: OwnedFd,
        theirs: Option<OwnedFd>,
    ) -> Result<Process<R>, ProcessError> {
        let shared = ChildShared::new(pid, start.name, start.daemon, pidfd, sock, theirs)
            .map_err(ProcessError::io("watching the child"))?;
        let shared = Arc::new(shared);
        child::register(shared.clone());
        Ok(Process::new(shared))
    }
}

fn check_bootstrapped() -> Result<(), ProcessError> {
    if before_main::pending() {
        Err(ProcessError::NotBootstrapped)
    } else {
        Ok(())
    }
}

/// Forks with every global lock of the crate held, so that the child finds them in a known
/// state: it empties the parent's tables (those children are not its own) and unlocks.
/// Standard output and error are held too (flushed first): a child that prints or exits
/// through `std::process::exit` would otherwise hang if another thread was printing.
fn fork_child(close: RawFd, body: impl FnOnce() -> i32) -> std::io::Result<u32> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let _ = stdout.flush();
    let _ = stderr.flush();
    let mut locks = Some((
        forkserver::lock_client(),
        child::lock_children(),
        current::lock_me(),
        child::lock_spare_pair(),
        reaper::lock_reaper(),
        scope::lock_scopes(),
    ));
    // Room for the new child's entry now, so that registering it after the fork does not
    // reallocate while the child shares our pages.
    if let Some((_, children, _, _, _, _)) = locks.as_mut() {
        children.reserve(1);
    }
    let pid = sys::fork_then(&[close], || {
        if let Some((mut client, mut children, me, mut spare, mut reaper, scopes)) = locks.take() {
            // Written only when there is something to forget: each write to a static is a
            // copy-on-write fault in the child.
            forkserver::forget_in_child(&mut client);
            reaper::forget_in_child(&mut reaper);
            if !children.is_empty() {
                children.clear();
            }
            // Another thread's spare report channel: the parent's, not ours.
            if let Some((a, b)) = spare.take() {
                sys::close_inline(a);
                sys::close_inline(b);
            }
            // The running tests' scopes are left as they are: no test ends in this child.
            drop((client, children, me, spare, reaper, scopes));
        }
        drop((stdout, stderr));
        body()
    });
    drop(locks);
    pid
}
