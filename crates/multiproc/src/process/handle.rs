//! The handles a program holds on its children: [`Process`] for one it started,
//! [`ActiveChild`] for one that [`active_children`] lists.

use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::builder::Streams;
use super::child::{self, ChildShared};
use super::output::{self, CapturedOutput};
use super::setup::Limits;
use super::wire::Start;
use super::{reaper, scope};
use crate::error::ProcessError;
use crate::sys::{self, ExitStatus};

/// Watches a child just started as `start` describes, in the table of children, and gives
/// its handle. Takes the start message by value: moving its name (not cloning it) keeps the
/// parent from allocating while a fork child shares its pages (each write there is a
/// copy-on-write fault).
pub(super) fn register_started<R>(
    pid: u32,
    start: Start,
    pidfd: Option<OwnedFd>,
    sock: OwnedFd,
    theirs: Option<OwnedFd>,
    streams: Streams,
) -> Result<Process<R>, ProcessError> {
    let scope = scope::of_new_child();
    let mut shared = ChildShared::new(pid, start.name, start.daemon, scope, pidfd, sock, theirs)
        .map_err(ProcessError::io("watching the child"))?;
    if let Some(setup) = start.setup {
        shared.limits = setup.limits().map(Box::new);
        shared.streams = output::Streams::start(streams.pending, &shared.name, pid, streams.limit);
    }
    let shared = Arc::new(shared);
    child::register(shared.clone());
    Ok(Process::new(shared))
}

/// A started process. Dropping the handle neither kills nor waits: the child goes on, and
/// a background thread reaps it as soon as it ends (it never becomes a zombie).
///
/// `R` is what the child's function returns; [`join`](Process::join) gives it back.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Func, Process, ProcessError};
///
/// #[multiproc::func]
/// fn nap(ms: u64) -> String {
///     std::thread::sleep(Duration::from_millis(ms));
///     multiproc::current_process().name().to_string()
/// }
///
/// #[multiproc::func]
/// fn fail(reason: String) -> u8 {
///     panic!("{reason}")
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = Process::builder().name("napper").start(&nap, 50)?;
/// assert!(p.is_alive() && p.exitcode().is_none());
/// assert!(p.join_timeout(Duration::from_secs(10))?); // ended in time
/// assert_eq!(p.exitcode(), Some(0));
/// assert_eq!(p.join()?, "napper"); // join consumes the handle
///
/// // A panic comes back as an error, with its message; the exit code is 1.
/// let p = fail.spawn("no such file".to_string())?;
/// match p.join() {
///     Err(ProcessError::Panicked { message, .. }) => assert!(message.contains("no such file")),
///     other => panic!("{other:?}"),
/// }
///
/// // A child killed by a signal: a negative exit code, and `Killed` from `join`.
/// let p = nap.spawn(60_000)?;
/// p.terminate()?;
/// assert!(p.join_timeout(Duration::from_secs(10))?);
/// assert_eq!(p.exitcode(), Some(-15)); // SIGTERM
/// assert!(matches!(p.join(), Err(ProcessError::Killed { signal: 15, .. })));
/// # Ok(()) }
/// ```
pub struct Process<R> {
    shared: Arc<ChildShared>,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.shared.pid)
            .field("name", &self.shared.name)
            .field("daemon", &self.shared.daemon)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

impl<R> Process<R> {
    pub(crate) fn new(shared: Arc<ChildShared>) -> Self {
        Process {
            shared,
            _result: PhantomData,
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The name given at start, or `Process-N`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the process is daemonic (dies with its parent).
    pub fn daemon(&self) -> bool {
        self.shared.daemon
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        self.exitcode().is_none()
    }

    /// `None` while running; the exit code once ended; the negative signal number if a signal
    /// killed it; `1` if its function panicked.
    pub fn exitcode(&self) -> Option<i32> {
        self.shared.exit_status().map(ExitStatus::exitcode)
    }

    /// Waits at most `timeout` for the process to end; returns whether it has.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ProcessError> {
        Ok(self.shared.wait(Some(timeout))?.is_some())
    }

    /// Sends `SIGTERM`. A process that already ended is left alone.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.shared.signal(sys::SIGTERM)
    }

    /// Sends `SIGKILL`.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.shared.signal(sys::SIGKILL)
    }

    /// Sends `SIGINT`.
    pub fn interrupt(&self) -> Result<(), ProcessError> {
        self.shared.signal(sys::SIGINT)
    }

    /// The limits the process runs under and how they are enforced; `None` if none was set.
    ///
    /// ```no_run
    /// #[multiproc::func]
    /// fn work(x: u64) -> u64 { x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let p = multiproc::Process::builder().memory_limit(256 << 20).start(&work, 1)?;
    /// let limits = p.limits().expect("a limit was set");
    /// println!("memory ≤ {:?} bytes, by {}", limits.memory(), limits.enforcement());
    /// # p.join()?; Ok(()) }
    /// ```
    pub fn limits(&self) -> Option<&Limits> {
        self.shared.limits.as_deref()
    }

    /// What the process wrote to its captured streams ([`Output::Capture`](super::Output)),
    /// once it has ended and closed them: waits at most `timeout` for that (a grandchild
    /// that inherited the streams keeps them open). Call it before [`join`](Self::join), which
    /// consumes the handle; it may be called again. A stream not captured comes back empty;
    /// with no captured stream at all this is an empty [`CapturedOutput`] at once.
    pub fn output(&self, timeout: Duration) -> Result<CapturedOutput, ProcessError> {
        match &self.shared.streams {
            Some(s) if s.capturing() => s.wait(timeout),
            _ => Ok(CapturedOutput::default()),
        }
    }

    /// Whether the process reported an allocation failure under its memory limit.
    pub(crate) fn hit_memory_limit(&self) -> bool {
        self.shared.hit_memory_limit()
    }

    /// A descriptor that becomes readable when the process ends (a pidfd), for `poll`,
    /// `epoll` or `multiproc::connection::wait`. Valid as long as this handle lives.
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.shared.pidfd()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the process to end and returns what its function returned.
    ///
    /// Errors tell how it ended otherwise: [`ProcessError::Panicked`] with the panic message,
    /// [`ProcessError::Exited`], [`ProcessError::Killed`], or a codec error.
    ///
    /// A child whose output is piped ([`Output::Capture`](super::Output),
    /// [`Output::Prefixed`](super::Output)) has the rest of its output read (prefixed lines
    /// written out) before `join` returns, waiting at most 5 s for that after it ended.
    pub fn join(self) -> Result<R, ProcessError> {
        self.shared.wait(None)?;
        if let Some(streams) = &self.shared.streams {
            streams.settle(Duration::from_secs(5));
        }
        self.shared.take_result()
    }
}

#[cfg(feature = "tokio")]
impl<R: DeserializeOwned> Process<R> {
    /// [`join`](Self::join) without blocking a thread: the process's pidfd becoming readable
    /// in the runtime's reactor ends the wait (feature `tokio`). Errors as `join`: a process
    /// killed by a signal, even `SIGKILL`, is [`ProcessError::Killed`].
    ///
    /// **Cancel safety**: the future owns the handle; dropped before the end, the handle is
    /// dropped with it, as a dropped [`Process`] is (the child goes on, and is reaped when it
    /// ends). To wait again after a `select!` took another branch, await
    /// [`wait_async`](Self::wait_async) on a borrowed handle instead, then `join`.
    ///
    /// A child whose output is piped has the rest of it read as `join` does, once it ended.
    ///
    /// ```
    /// #[multiproc::func]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiproc::Result<()> {
    /// # use multiproc::Func;
    /// let p = square.spawn(7)?;
    /// assert_eq!(p.join_async().await?, 49);
    /// # Ok(()) }
    /// ```
    pub async fn join_async(self) -> Result<R, ProcessError> {
        self.wait_async().await?;
        if let Some(streams) = &self.shared.streams {
            streams.settle(Duration::from_secs(5));
        }
        self.shared.take_result()
    }
}

#[cfg(feature = "tokio")]
impl<R> Process<R> {
    /// Waits for the process to end without blocking a thread (its pidfd in the runtime's
    /// reactor) and returns its exit code as [`exitcode`](Self::exitcode) tells it; the
    /// result stays for [`join`](Self::join).
    ///
    /// **Cancel safety**: safe to drop and await again; nothing is consumed.
    pub async fn wait_async(&self) -> Result<i32, ProcessError> {
        Ok(self.shared.wait_async().await?.exitcode())
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.shared.detach() {
            reaper::adopt(self.shared.clone());
        }
    }
}

/// A running child of this process, as [`active_children`] lists it.
#[derive(Debug, Clone)]
pub struct ActiveChild {
    shared: Arc<ChildShared>,
}

impl ActiveChild {
    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }
    /// The process's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Whether it is daemonic.
    pub fn daemon(&self) -> bool {
        self.shared.daemon
    }
    /// `None` while running, else as [`Process::exitcode`].
    pub fn exitcode(&self) -> Option<i32> {
        self.shared.exit_status().map(ExitStatus::exitcode)
    }
    /// Sends `SIGTERM`.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.shared.signal(sys::SIGTERM)
    }
    /// Sends `SIGKILL`.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.shared.signal(sys::SIGKILL)
    }
    /// Waits at most `timeout` for it to end; returns whether it has.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ProcessError> {
        Ok(self.shared.wait(Some(timeout))?.is_some())
    }
}

/// The children of this process that are still running. Finished ones are reaped as a side
/// effect, as in Python.
pub fn active_children() -> Vec<ActiveChild> {
    child::reap_finished();
    child::lock_children()
        .iter()
        .map(|c| ActiveChild { shared: c.clone() })
        .collect()
}
