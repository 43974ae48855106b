//! The parent's side of a child: its state, waiting, signals, results, and the table of
//! children that keeps every one of them reaped. The handles a program holds are in `handle`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
#[cfg(feature = "tokio")]
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::parent_only::ParentFd;
use super::wire::{self, Kind, Outcome};
use crate::error::{CodecError, ProcessError};
use crate::sys::{self, ExitStatus};

/// One started child, shared by its handles and the table of children.
#[derive(Debug)]
pub(crate) struct ChildShared {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// The forkserver, not this process, is the OS parent: the exit status comes as a frame.
    via_forkserver: bool,
    /// The `#[multiproc::test]` that started it (see `scope`), or `scope::NONE`.
    scope: u64,
    /// Not listed in `parent_only`: a forked child may still signal its sibling through a copy
    /// of this handle (as CPython's `terminate` can), and `sentinel` stays valid there.
    pidfd: OwnedFd,
    /// The fork generation of the process image that started it (see [`Self::progress`]).
    forks: u32,
    /// The reactor's watch of the pidfd, for `join_async`.
    #[cfg(feature = "tokio")]
    watch: crate::aio::LazyWatch,
    state: Mutex<ChildState>,
    /// The limits it runs under, if any (see `setup`).
    pub(crate) limits: Option<Box<super::setup::Limits>>,
    /// The readers of its piped streams, if any.
    pub(crate) streams: Option<super::output::Streams>,
}

#[derive(Debug, Default)]
struct ChildState {
    /// The channel from the child (non-blocking); dropped once the child is over.
    sock: Option<Arc<ParentFd>>,
    /// A forked child's end of the channel, kept to reuse the pair (see [`report_pair`]).
    theirs: Option<ParentFd>,
    buf: Vec<u8>,
    outcome: Option<Outcome>,
    outcome_taken: bool,
    status: Option<ExitStatus>,
    /// The process has ended (pidfd ready); for a forkserver child the status may follow.
    ended: bool,
    /// No handle is left: discard the result instead of keeping it.
    detached: bool,
    /// Descriptors received with the report (a memfd holding a large outcome).
    fds: Vec<OwnedFd>,
    /// The exit code the child's report implies (0 returned, 1 otherwise).
    outcome_code: Option<i32>,
    /// The child reported an allocation failure under its memory limit.
    memory_limit_seen: bool,
}

impl ChildShared {
    /// `scope`: the test it belongs to (see `scope`). `pidfd`: the forkserver's, for its
    /// children; opened here for our own. `theirs`: the child's end of a forked child's
    /// [`report_pair`] (non-blocking already), kept for reuse.
    pub(crate) fn new(
        pid: u32,
        name: String,
        daemon: bool,
        scope: u64,
        pidfd: Option<OwnedFd>,
        sock: OwnedFd,
        theirs: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let via_forkserver = pidfd.is_some();
        let pidfd = match pidfd {
            Some(fd) => fd,
            None => sys::pidfd_open(pid)?,
        };
        if theirs.is_none() {
            sys::set_nonblocking(sock.as_fd(), true)?;
        }
        Ok(ChildShared {
            pid,
            name,
            daemon,
            via_forkserver,
            scope,
            pidfd,
            forks: sys::fork_generation(),
            #[cfg(feature = "tokio")]
            watch: Default::default(),
            state: Mutex::new(ChildState {
                sock: Some(Arc::new(ParentFd::new(sock))),
                theirs: theirs.map(ParentFd::new),
                ..ChildState::default()
            }),
            limits: None,
            streams: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps the child if it has ended and takes its report. Never blocks.
    ///
    /// The child never blocks on its report (large ones go through a memfd), so the report
    /// is read once, after the exit: waiting costs one wake-up, as a bare `waitpid` does.
    fn progress(&self, st: &mut ChildState) -> io::Result<()> {
        if st.status.is_some() {
            return Ok(());
        }
        if self.forks != sys::fork_generation() {
            // A copy of the handle in a forked child, whose report channel was closed at the
            // fork (`parent_only`); the child is not its child either.
            return Err(io::Error::other(
                "this process was started by the parent of this forked process: only that \
                 process can wait for it",
            ));
        }
        if !self.via_forkserver {
            if let Some(s) = sys::try_wait(self.pid)? {
                st.status = Some(s);
                st.ended = true;
                self.drain(st);
            }
        } else {
            if !st.ended {
                st.ended = matches!(
                    sys::poll_readable(&[self.pidfd.as_fd()], Some(Duration::ZERO)).as_deref(),
                    Ok([true])
                );
            }
            if st.ended {
                self.drain(st);
                if st.status.is_none() {
                    // The forkserver reports the status after reaping. A child that reported
                    // an outcome ends right after with a known code (`finish`), so there is
                    // no need to wait for that report.
                    st.status = st.outcome_code.map(ExitStatus::Code);
                }
                if st.status.is_none() && st.sock.is_none() {
                    // The forkserver went away (killed) without reporting: say so rather
                    // than wait forever.
                    st.status = Some(ExitStatus::Code(255));
                    st.outcome = Some(Outcome::Failed(
                        "the forkserver ended before reporting this child's exit status".into(),
                    ));
                }
            }
        }
        if st.status.is_some() {
            let (sock, theirs) = (st.sock.take(), st.theirs.take());
            // Reported one whole outcome and ended: nothing can be left in the pair.
            let clean = st.outcome_code.is_some() && st.buf.is_empty() && st.fds.is_empty();
            if let (Some(sock), Some(theirs), true) = (sock, theirs, clean)
                && let Ok(ours) = Arc::try_unwrap(sock)
            {
                put_back_pair(ours.into_owned(), theirs.into_owned());
            }
            st.buf = Vec::new();
            st.fds.clear();
        }
        Ok(())
    }

    /// Reads everything the child (or the forkserver) has sent so far.
    fn drain(&self, st: &mut ChildState) {
        let Some(sock) = st.sock.clone() else { return };
        loop {
            match read_into(sock.as_fd(), &mut st.buf, &mut st.fds) {
                Ok(0) => {
                    st.sock = None;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    st.sock = None;
                    break;
                }
            }
            self.parse(st);
        }
        self.parse(st);
    }

    fn parse(&self, st: &mut ChildState) {
        loop {
            let frame = match wire::take_frame(&mut st.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(_) => {
                    // Not our protocol: stop listening to this child.
                    st.sock = None;
                    st.buf.clear();
                    return;
                }
            };
            let outcome = match frame {
                (Kind::Outcome, payload) => Some(payload),
                (Kind::OutcomeInFd, _) if !st.fds.is_empty() => {
                    let mut file = std::fs::File::from(st.fds.remove(0));
                    let mut payload = Vec::new();
                    Some(match std::io::Read::read_to_end(&mut file, &mut payload) {
                        Ok(_) => payload,
                        Err(_) => Vec::new(),
                    })
                }
                (Kind::Status, payload) => {
                    st.status =
                        Some(crate::codec::decode(&payload).unwrap_or(ExitStatus::Code(255)));
                    st.ended = true;
                    None
                }
                _ => {
                    st.sock = None;
                    st.buf.clear();
                    return;
                }
            };
            if let Some(payload) = outcome {
                let outcome = crate::codec::decode::<Outcome>(&payload).unwrap_or_else(|e| {
                    Outcome::Failed(format!("unreadable report from the child: {e}"))
                });
                st.outcome_code = Some(if matches!(outcome, Outcome::Returned(_)) {
                    0
                } else {
                    1
                });
                st.memory_limit_seen |= matches!(outcome, Outcome::MemoryLimit);
                if !st.detached {
                    st.outcome = Some(outcome);
                }
            }
        }
    }

    /// Waits until the child has ended, at most `timeout` (`None`: no limit).
    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let (sock, ended) = {
                let mut st = self.lock();
                self.progress(&mut st)
                    .map_err(ProcessError::io("waiting for a child"))?;
                if let Some(s) = st.status {
                    return Ok(Some(s));
                }
                (st.sock.clone(), st.ended)
            };
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
            };
            // Running: the pidfd alone tells the end. Ended (a forkserver child with no
            // report): the forkserver's status frame comes on the socket.
            let fd = match (&sock, ended) {
                (Some(s), true) => s.as_fd(),
                _ => self.pidfd.as_fd(),
            };
            let ready =
                sys::poll_readable(&[fd], left).map_err(ProcessError::io("waiting for a child"))?;
            if ready == [true] && !ended {
                self.lock().ended = true;
            }
        }
    }

    /// [`wait`](Self::wait) in the runtime's reactor: the pidfd becoming readable ends the
    /// wait (then, for a forkserver child that did not report, its status frame on the
    /// socket). Dropping the future part way loses nothing: what was read is in the state.
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_async(&self) -> Result<ExitStatus, ProcessError> {
        let io = |e| ProcessError::io("waiting for a child")(e);
        let step = |st: &mut ChildState| -> Result<Option<ExitStatus>, ProcessError> {
            self.progress(st)
                .map_err(ProcessError::io("waiting for a child"))?;
            Ok(st.status)
        };
        let watch = self.watch.get(self.pidfd.as_fd()).map_err(&io)?;
        let ended = watch
            .readable(|| {
                let mut st = self.lock();
                match step(&mut st) {
                    Ok(Some(s)) => Poll::Ready(Ok(Some(s))),
                    Err(e) => Poll::Ready(Err(e)),
                    Ok(None) if st.ended => Poll::Ready(Ok(None)),
                    Ok(None) => Poll::Pending,
                }
            })
            .await
            .map_err(&io)??;
        if let Some(s) = ended {
            return Ok(s);
        }
        // A forkserver child that ended without a report: its status comes on the socket.
        let Some(sock) = self.lock().sock.clone() else {
            return Ok(step(&mut self.lock())?.unwrap_or(ExitStatus::Code(255)));
        };
        let watch = crate::aio::Watch::new(sock.as_fd()).map_err(&io)?;
        watch
            .readable(|| match step(&mut self.lock()) {
                Ok(Some(s)) => Poll::Ready(Ok(s)),
                Err(e) => Poll::Ready(Err(e)),
                Ok(None) => Poll::Pending,
            })
            .await
            .map_err(io)?
    }

    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        let _ = self.progress(&mut st);
        st.status
    }

    pub(crate) fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        let st = self.lock();
        if st.status.is_some() {
            return Ok(()); // Already over, as Python's terminate() on a finished process.
        }
        match sys::pidfd_send_signal(self.pidfd.as_fd(), sig) {
            Err(e) if e.raw_os_error() == Some(3) => Ok(()), // ESRCH: ended meanwhile
            other => other.map_err(ProcessError::io("sending a signal")),
        }
    }

    /// The child's result once it has ended (call after `wait` returned a status).
    pub(crate) fn take_result<R: DeserializeOwned>(&self) -> Result<R, ProcessError> {
        let mut st = self.lock();
        let status = st.status.expect("take_result after the child ended");
        if st.outcome_taken {
            return Err(ProcessError::ResultTaken { pid: self.pid });
        }
        st.outcome_taken = true;
        let pid = self.pid;
        match st.outcome.take() {
            Some(Outcome::Returned(bytes)) => Ok(crate::codec::decode(&bytes)?),
            Some(Outcome::Panicked(message)) => Err(ProcessError::Panicked { pid, message }),
            Some(Outcome::Codec {
                encode: true,
                message,
            }) => Err(CodecError::Encode(message).into()),
            Some(Outcome::Codec {
                encode: false,
                message,
            }) => Err(CodecError::Decode(message).into()),
            Some(Outcome::Failed(message)) => Err(ProcessError::Bootstrap { pid, message }),
            Some(Outcome::MemoryLimit) => Err(ProcessError::MemoryLimit {
                pid,
                limit: self.memory_limit().unwrap_or(0),
                reported: true,
            }),
            None => Err(match (status, self.cpu_limit(), self.memory_limit()) {
                (ExitStatus::Signal(sys::SIGXCPU), Some(limit), _) => {
                    ProcessError::CpuTimeLimit { pid, limit }
                }
                (ExitStatus::Signal(sys::SIGABRT), _, Some(limit)) => ProcessError::MemoryLimit {
                    pid,
                    limit,
                    reported: false,
                },
                (ExitStatus::Code(code), ..) => ProcessError::Exited { pid, code },
                (ExitStatus::Signal(signal), ..) => ProcessError::Killed { pid, signal },
            }),
        }
    }

    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.limits.as_ref().and_then(|l| l.memory())
    }

    fn cpu_limit(&self) -> Option<std::time::Duration> {
        self.limits.as_ref().and_then(|l| l.cpu_time())
    }

    /// Whether the child reported that an allocation failed under its memory limit (once it
    /// has ended; the result stays for `take_result`).
    pub(crate) fn hit_memory_limit(&self) -> bool {
        let mut st = self.lock();
        let _ = self.progress(&mut st);
        matches!(st.outcome, Some(Outcome::MemoryLimit)) || st.memory_limit_seen
    }

    /// The last handle is gone: the result is no longer wanted. Returns whether a reaper
    /// must still reap the child: it runs and we are its OS parent (the forkserver reaps
    /// its own children).
    pub(super) fn detach(&self) -> bool {
        let mut st = self.lock();
        st.detached = true;
        st.outcome = None;
        let _ = self.progress(&mut st);
        st.status.is_none() && !self.via_forkserver
    }

    /// The descriptor that becomes readable when the child ends.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// Appends one receive's worth of bytes to `buf` and descriptors to `fds`. Reports are small
/// (large outcomes come as a memfd), so one page of stack suffices and waiting on a child
/// touches no fresh memory (each fresh page is a page fault, copy-on-write while a fork
/// child lives).
fn read_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let (n, received) = sys::recv_with_fds(fd, &mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    fds.extend(received);
    Ok(n)
}

static CHILDREN: Mutex<Vec<Arc<ChildShared>>> = Mutex::new(Vec::new());

/// The report channel of a forked child that ended cleanly, kept for the next fork: creating
/// a socket pair and closing it again cost about 9 µs here, against about 150 µs for a whole
/// raw fork and wait.
static SPARE_PAIR: Mutex<Option<(OwnedFd, OwnedFd)>> = Mutex::new(None);

pub(crate) fn lock_spare_pair() -> MutexGuard<'static, Option<(OwnedFd, OwnedFd)>> {
    SPARE_PAIR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A report channel for a forked child, `(ours, theirs)`, both ends non-blocking: the spare
/// one or a new one. The parent keeps `theirs` until the child has ended, to reuse the pair.
pub(crate) fn report_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    match lock_spare_pair().take() {
        Some(pair) => Ok(pair),
        None => sys::socketpair_nonblocking(),
    }
}

fn put_back_pair(ours: OwnedFd, theirs: OwnedFd) {
    let mut spare = lock_spare_pair();
    if spare.is_none() {
        *spare = Some((ours, theirs));
    }
}

#[inline]
pub(crate) fn lock_children() -> MutexGuard<'static, Vec<Arc<ChildShared>>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn register(child: Arc<ChildShared>) {
    // Normally done before `main` already (see `before_main::on_load`).
    finish_at_exit();
    lock_children().push(child);
}

/// Has the exit of this process (a return from `main`, `std::process::exit`, a panic out
/// of `main`) end its children first, as Python does at interpreter exit: daemonic ones
/// terminated, the others joined. Registered once; later calls cost one atomic load.
///
/// Children end with `_exit` ([`sys::exit_now`]), which skips the hook; a child that calls
/// `std::process::exit` itself runs it for its own children only: the table of children is
/// per process (a forked child empties the copy it inherits, see `Builder::fork`). The hook
/// takes only locks that are held for a moment (never across a wait), so it cannot
/// deadlock on a lock another thread holds when `exit` is called.
pub(crate) fn finish_at_exit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if !REGISTERED.load(Ordering::Relaxed) && !REGISTERED.swap(true, Ordering::SeqCst) {
        // Without the hook, children are still ended by `#[multiproc::main]`.
        let _ = sys::at_exit(at_process_exit);
    }
}

extern "C" fn at_process_exit() {
    // A panic must not unwind into the C library.
    let _ = std::panic::catch_unwind(|| finish_children(None, Finish::TerminateDaemons));
}

/// Whether this process has children it has not reaped yet.
#[inline]
pub(crate) fn any() -> bool {
    !lock_children().is_empty()
}

/// Reaps children that have ended and forgets them (Python's `_cleanup`).
pub(crate) fn reap_finished() {
    let snapshot = lock_children().clone();
    let done: Vec<u32> = snapshot
        .iter()
        .filter(|c| c.exit_status().is_some())
        .map(|c| c.pid)
        .collect();
    forget(&done);
}

/// Removes the children `pids`, which have been reaped, from the table of children.
pub(crate) fn forget(pids: &[u32]) {
    if !pids.is_empty() {
        lock_children().retain(|c| !pids.contains(&c.pid));
    }
}

/// How [`finish_children`] ends children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Terminate daemonic children and join the others, as Python does at exit.
    TerminateDaemons,
    /// Terminate all of them, and kill those still there after [`KILL_AFTER`].
    TerminateAll,
}

/// How long [`Finish::TerminateAll`] lets children end on `SIGTERM` before `SIGKILL`.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// Ends this process's children (`scope`: only those of one test, see `scope`) and reaps
/// them.
pub(crate) fn finish_children(scope: Option<u64>, how: Finish) {
    let mine: Vec<Arc<ChildShared>> = lock_children()
        .iter()
        .filter(|c| scope.is_none_or(|s| c.scope == s))
        .cloned()
        .collect();
    let all = how == Finish::TerminateAll;
    for c in mine.iter().filter(|c| all || c.daemon) {
        let _ = c.signal(sys::SIGTERM);
    }
    let deadline = Instant::now() + KILL_AFTER;
    for c in &mine {
        if !all {
            let _ = c.wait(None);
        } else if !matches!(
            c.wait(Some(deadline.saturating_duration_since(Instant::now()))),
            Ok(Some(_))
        ) {
            let _ = c.signal(sys::SIGKILL);
            let _ = c.wait(Some(KILL_AFTER));
        }
    }
    reap_finished();
}
