//! Unix (Linux first) implementation of the `sys` contract.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Most descriptors one message may carry (Linux `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// The fd number at which a spawned child finds its bootstrap socket.
pub(crate) const CHILD_BOOTSTRAP_FD: RawFd = 3;

pub(super) fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A connected pair of Unix stream sockets, close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// [`socketpair`], both ends non-blocking.
pub(crate) fn socketpair_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(errno)
}

/// A connected pair of Unix packet sockets (message boundaries kept; a reader sees end of
/// file once every copy of the other end is closed), close-on-exec.
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// Sends one message on a packet socket (whole or not at all), without `SIGPIPE`.
pub(crate) fn send_packet(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    loop {
        match send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Receives one message from a packet socket into `buf` (a longer one is cut); 0 is end of
/// file.
pub(crate) fn recv_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(errno),
        }
    }
}

/// Makes this process ignore the signals a terminal or a process group sends to stop a
/// program (SIGINT, SIGTERM, SIGHUP), for a helper that must outlive the program's stop to
/// clean up after it.
pub(crate) fn ignore_stop_signals() {
    use nix::sys::signal::{SigHandler, signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety concern.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Sends `data` (some prefix of it, as `sendmsg` does) with `fds` attached to the first byte.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(&raw)]
    };
    loop {
        match nix::sys::socket::sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(data)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => wait_fd(fd, true)?,
            other => return other.map_err(errno),
        }
    }
}

/// Receives into `buf` and takes ownership of any descriptors that came with the bytes.
/// Returns `(0, [])` at end of stream, `WouldBlock` on a non-blocking socket with no data.
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_flags(fd, buf, MsgFlags::empty())
}

/// [`recv_with_fds`] without waiting: `WouldBlock` when nothing has arrived.
pub(crate) fn recv_with_fds_now(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_flags(fd, buf, MsgFlags::MSG_DONTWAIT)
}

fn recv_with_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    thread_local! {
        // Room for the most descriptors one message may carry, allocated once per thread
        // (every receive of a frame header goes through here).
        static SPACE: std::cell::RefCell<Vec<u8>> =
            std::cell::RefCell::new(nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]));
    }
    SPACE.with(|space| recv_with_space(fd, buf, &mut space.borrow_mut(), flags))
}

/// One plain receive (no descriptors; any that came along are closed by the kernel),
/// without waiting when `nonblocking`. The end of the stream, or a reset, is `Ok(0)`.
pub(crate) fn recv_plain(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = if nonblocking {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::empty()
    };
    loop {
        match nix::sys::socket::recv(fd.as_raw_fd(), buf, flags) {
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(0),
            Err(e) => return Err(errno(e)),
            Ok(n) => return Ok(n),
        }
    }
}

fn recv_with_space(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(space),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(msg) => msg,
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(errno)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for r in raw {
                    // SAFETY: the kernel installed these descriptors in our table for this
                    // message (SCM_RIGHTS); nothing else refers to them, so we own them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors in one message",
            ));
        }
        return Ok((msg.bytes, fds));
    }
}

/// Waits until each of `fds` is ready for its interest (`true`: writable, `false`: readable),
/// or `timeout` passes (`None`: forever). Returns which are ready (hang-up and errors count
/// as ready). Interrupted waits are resumed with the remaining time.
pub(crate) fn poll(
    fds: &[(BorrowedFd<'_>, bool)],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut set: Vec<PollFd<'_>> = fds
            .iter()
            .map(|(f, w)| {
                PollFd::new(
                    *f,
                    if *w {
                        PollFlags::POLLOUT
                    } else {
                        PollFlags::POLLIN
                    },
                )
            })
            .collect();
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short timeout does not spin at 0 ms.
                let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut set, wait) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(_) => {
                return Ok(set
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect());
            }
        }
    }
}

/// [`poll`] for readability only.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let set: Vec<_> = fds.iter().map(|f| (*f, false)).collect();
    poll(&set, timeout)
}

/// Blocks until `fd` is readable (or writable).
fn wait_fd(fd: BorrowedFd<'_>, writable: bool) -> io::Result<()> {
    poll(&[(fd, writable)], None).map(drop)
}

/// Writes all of `data`, never raising `SIGPIPE` (a closed peer is `BrokenPipe`).
///
/// The system call is made inline (rustix), not through the C library: a forked child
/// reports with it, and each C library page it touches first is a page fault there.
#[inline]
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    use rustix::io::Errno as E;
    while !data.is_empty() {
        match rustix::net::send(fd, data, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(E::INTR) => {}
            Err(E::AGAIN) => wait_fd(fd, true)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One `send` that never waits and never raises `SIGPIPE`: `WouldBlock` when a
/// non-blocking socket is full.
pub(crate) fn try_send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(fd, data, rustix::net::SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Fills `buf` completely; end of stream first is `UnexpectedEof`.
pub(crate) fn recv_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match read_some(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(fd, false)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `read`: `Ok(0)` is end of stream, `WouldBlock` on a non-blocking fd with no data.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(errno),
        }
    }
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(errno)?);
    let new = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    if new != flags {
        fcntl(fd, FcntlArg::F_SETFL(new)).map_err(errno)?;
    }
    Ok(())
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Python's `exitcode`: the code, or the negative signal number.
    pub(crate) fn exitcode(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => -s,
        }
    }
}

/// Reaps `pid` if it has ended; `Ok(None)` while it runs.
pub(crate) fn try_wait(pid: u32) -> io::Result<Option<ExitStatus>> {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(ExitStatus::Code(code))),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(ExitStatus::Signal(sig as i32))),
            Ok(_) => return Ok(None),
        }
    }
}

/// A descriptor that becomes readable when `pid` ends (Linux pidfd).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
}

/// Sends signal `sig` to `pid`.
pub(crate) fn send_signal(pid: u32, sig: i32) -> io::Result<()> {
    let sig = Signal::try_from(sig).map_err(errno)?;
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).map_err(errno)
}

/// Sends signal `sig` to the process behind `pidfd`: race-free even if the pid was reused.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    rustix::process::pidfd_send_signal(pidfd, sig).map_err(io::Error::from)
}

/// Takes ownership of a descriptor this process inherited at a known number, and marks it
/// close-on-exec. Fails if nothing is open there.
pub(crate) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: F_GETFD only inspects the descriptor table; an invalid number gives EBADF.
    let probe = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(probe, FcntlArg::F_GETFD).map_err(errno)?;
    fcntl(probe, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(errno)?;
    // SAFETY: the descriptor is open (checked above) and was placed at this number for us by
    // the parent's spawn; this is the single place that claims it, once, before `main`.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The signal's name, such as `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

/// `SIGTERM`, `SIGKILL`, `SIGINT` as numbers.
pub(crate) const SIGTERM: i32 = Signal::SIGTERM as i32;
pub(crate) const SIGKILL: i32 = Signal::SIGKILL as i32;
pub(crate) const SIGINT: i32 = Signal::SIGINT as i32;

static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's id (cached: lock fast paths use it; refreshed in children we fork).
pub(crate) fn getpid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    match PID.load(Relaxed) {
        0 => {
            let pid = nix::unistd::getpid().as_raw() as u32;
            PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

/// This thread's id (cached per thread).
pub(crate) fn gettid() -> u32 {
    thread_local!(static TID: u32 = rustix::thread::gettid().as_raw_nonzero().get() as u32);
    TID.with(|t| *t)
}

/// The parent's id (1 or a subreaper once the parent is gone).
pub(crate) fn getppid() -> u32 {
    nix::unistd::getppid().as_raw() as u32
}

/// Ends the process at once: no atexit handlers, no destructors (the caller flushes stdio).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns; skipping atexit handlers and
    // destructors is the point (a forked child must not run the parent's).
    unsafe { libc::_exit(code) }
}

/// Has `exit` (a return from `main`, `std::process::exit`) call `handler` before the process
/// ends. `exit_now` skips it.
pub(crate) fn at_exit(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `handler` is a plain function with no arguments that lives as long as the
    // program; the C library keeps only its address.
    match unsafe { libc::atexit(handler) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit: no room for another handler")),
    }
}

/// Removes an environment variable of this process.
///
/// Only called while this process is single-threaded: from the life-before-main hook, or in
/// a child just after `fork`.
pub(crate) fn remove_env(key: &str) {
    // SAFETY: callers run before `main` (no other thread exists yet) or in a freshly forked
    // child, whose only thread is the caller; nothing reads the environment concurrently.
    unsafe { std::env::remove_var(key) }
}

/// Starts this same executable again (`/proc/self/exe`) with `argv[0]` only, the current
/// environment plus `marker`, and `bootstrap` as descriptor [`CHILD_BOOTSTRAP_FD`].
/// Signals whose default action a spawned child gets back.
const STOP_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Uses `posix_spawn` (a `vfork`-style clone): no `fork` of a large parent.
pub(crate) fn spawn_self(bootstrap: BorrowedFd<'_>, marker: (&str, &str)) -> io::Result<u32> {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, posix_spawn};
    // dup2(fd, fd) would keep close-on-exec set, so make sure the source is not fd 3.
    let moved;
    let source = if bootstrap.as_raw_fd() == CHILD_BOOTSTRAP_FD {
        moved = bootstrap.try_clone_to_owned()?;
        moved.as_fd()
    } else {
        bootstrap
    };
    let mut actions = PosixSpawnFileActions::init().map_err(errno)?;
    actions
        .add_dup2(source.as_raw_fd(), CHILD_BOOTSTRAP_FD)
        .map_err(errno)?;
    let mut attr = PosixSpawnAttr::init().map_err(errno)?;
    // A child starts with no blocked signal and the default action of the stop signals,
    // whatever the spawning thread had (a server blocking SIGTERM to wait for it in one
    // thread must not make its children immune to `terminate`).
    let mut stops = SigSet::empty();
    for sig in STOP_SIGNALS {
        stops.add(sig);
    }
    attr.set_sigmask(&SigSet::empty()).map_err(errno)?;
    attr.set_sigdefault(&stops).map_err(errno)?;
    attr.set_flags(
        nix::spawn::PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | nix::spawn::PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(errno)?;
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let args = [cstring(argv0.as_bytes())?];
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes().starts_with(b"MULTIPROC_BOOT") {
            continue;
        }
        env.push(cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    env.push(cstring(format!("{}={}", marker.0, marker.1).as_bytes())?);
    let pid =
        posix_spawn(OsStr::new("/proc/self/exe"), &actions, &attr, &args, &env).map_err(errno)?;
    Ok(pid.as_raw() as u32)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in argument or environment",
        )
    })
}

/// Forks. In the child, closes `close` (descriptors the child must not keep), runs `child`
/// and ends with its return value as exit code (never returning to the caller); in the
/// parent, returns the child's pid.
///
/// In a program with other threads, the child has only the calling thread: locks that other
/// threads held stay locked forever. That hazard is why `fork` is an opt-in start method.
pub(crate) fn fork_then(close: &[RawFd], child: impl FnOnce() -> i32) -> io::Result<u32> {
    // Asked here, where the pages involved are mapped: each page of code or data a forked
    // child touches first costs it a page fault on the path the parent waits for.
    let masked = SigSet::thread_get_mask().map_or(true, |set| set.iter().next().is_some());
    // SAFETY: in the child, control never returns to the caller: only `child` runs and the
    // process ends with `_exit`, also if `child` unwinds (`ExitOnUnwind`), so no destructor
    // of the parent's state runs twice. The documented multithreading hazard is accepted by
    // the caller.
    match unsafe { nix::unistd::fork() }.map_err(errno)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        nix::unistd::ForkResult::Child => {
            let guard = ExitOnUnwind;
            if PID.load(std::sync::atomic::Ordering::Relaxed) != 0 {
                PID.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            // As for spawned children: nothing blocked (see `spawn_self`).
            if masked {
                let _ = SigSet::empty().thread_set_mask();
            }
            for &fd in close {
                // SAFETY: the objects owning these descriptors live in the parent's half of
                // the fork; this child never returns to them (it ends in `_exit` below), so
                // closing its copies cannot cause a double close or a use after close.
                unsafe { rustix::io::close(fd) };
            }
            let code = child();
            std::mem::forget(guard);
            exit_now(code)
        }
    }
}

/// Ends a forked child that unwinds (a panic outside the code that reports panics): the
/// unwinding must not reach the frames above the fork, the parent's code path, which the
/// child has a copy of.
///
/// Cheaper than `catch_unwind` at the child's top: that moves the whole child closure (a
/// `memcpy`, one more page fault before the child does anything).
struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        exit_now(1)
    }
}

/// Closes `fd` with the system call made inline (no C library page touched: see
/// [`send_all`]).
pub(crate) fn close_inline(fd: OwnedFd) {
    // SAFETY: `fd` is ours (owned) and is not used after this call.
    unsafe { rustix::io::close(fd.into_raw_fd()) }
}

/// An anonymous in-memory file (close-on-exec) holding `data`, to hand to another process.
pub(crate) fn memfd_with(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(errno)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, data)?;
    // The offset belongs to the open file description the receiver shares: rewind it.
    std::io::Seek::rewind(&mut file)?;
    Ok(OwnedFd::from(file))
}

/// CPUs this process may run on (its affinity mask).
pub(crate) fn affinity_cpu_count() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    (n > 0).then_some(n)
}
