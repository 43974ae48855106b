//! Processes: starting this executable again, forking, waiting for and signalling children
//! by pidfd, ids, exit, the environment, and what the machine lets this process run on.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::signal::SigSet;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::errno;
use super::signal::STOP_SIGNALS;

/// The fd number at which a spawned child finds its bootstrap socket.
pub(crate) const CHILD_BOOTSTRAP_FD: RawFd = 3;

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
///
/// Through rustix: nix has no pidfd calls.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
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

static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's id (cached: lock fast paths use it; refreshed in children we fork).
pub(crate) fn getpid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    match PID.load(Relaxed) {
        0 => {
            watch_forks();
            let pid = nix::unistd::getpid().as_raw() as u32;
            PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Forks this process image went through: a forked child counts one more than its parent
/// (`shm::lock_watch` tells by it that its thread is its parent's, not its own).
static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How many forks made this process image (see [`FORKS`]).
pub(crate) fn fork_generation() -> u32 {
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes a child forked by any means (not only [`fork_then`]) forget the cached pid and count
/// its fork: a lock taken there must name the child, and a child has no thread of its
/// parent's. Called before `main`, while the process has one thread (and lazily, in case
/// that hook did not run).
pub(crate) fn watch_forks() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn in_child() {
        PID.store(0, Relaxed);
        FORKS.fetch_add(1, Relaxed);
    }
    if !REGISTERED.swap(true, Relaxed) {
        // SAFETY: registers a handler that the C library runs in the child after a fork; it
        // only writes atomics (async-signal-safe). Registered once per process image.
        if unsafe { nix::libc::pthread_atfork(None, None, Some(in_child)) } != 0 {
            REGISTERED.store(false, Relaxed);
        }
    }
}

/// This thread's id (cached per thread, and taken anew in a forked child, whose one thread
/// has an id of its own).
pub(crate) fn gettid() -> u32 {
    use std::cell::Cell;
    // (fork generation, id); no thread has id 0.
    thread_local!(static TID: Cell<(u32, u32)> = const { Cell::new((0, 0)) });
    let forks = fork_generation();
    TID.with(|cached| match cached.get() {
        (at, tid) if at == forks && tid != 0 => tid,
        _ => {
            watch_forks();
            let tid = nix::unistd::gettid().as_raw() as u32;
            cached.set((forks, tid));
            tid
        }
    })
}

/// The parent's id (1 or a subreaper once the parent is gone).
pub(crate) fn getppid() -> u32 {
    nix::unistd::getppid().as_raw() as u32
}

/// Ends the process at once: no atexit handlers, no destructors (the caller flushes stdio).
///
/// nix wraps neither `_exit` nor `atexit`: both are called through the C library that nix
/// re-exports (`nix::libc`), so libc is no dependency of its own.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns; skipping atexit handlers and
    // destructors is the point (a forked child must not run the parent's).
    unsafe { nix::libc::_exit(code) }
}

/// Has `exit` (a return from `main`, `std::process::exit`) call `handler` before the process
/// ends. `exit_now` skips it.
pub(crate) fn at_exit(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `handler` is a plain function with no arguments that lives as long as the
    // program; the C library keeps only its address.
    match unsafe { nix::libc::atexit(handler) } {
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
            // Inline system calls (rustix), as in `close_inline`.
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

/// Closes `fd` with the system call made inline, through rustix (no C library page touched:
/// see [`send_all`](super::send_all)).
pub(crate) fn close_inline(fd: OwnedFd) {
    // SAFETY: `fd` is ours (owned) and is not used after this call.
    unsafe { rustix::io::close(fd.into_raw_fd()) }
}

/// CPUs online on this machine.
pub(crate) fn online_cpu_count() -> Option<usize> {
    let n = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN).ok()??;
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// CPUs this process may run on (its affinity mask).
pub(crate) fn affinity_cpu_count() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    (n > 0).then_some(n)
}

/// Whether process `pid` still runs (a zombie has ended). A reused pid reads as alive.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked by any means, from a thread whose id is cached, has a thread id of its
    /// own: an `RLock` taken there must not name a thread of the parent's (whose id a thread
    /// of the child could later get).
    #[test]
    fn a_forked_child_has_its_own_thread_id() {
        watch_forks();
        let before = gettid();
        // SAFETY: the child only compares two thread ids (no allocation, no lock) and ends
        // with `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let real = nix::unistd::gettid().as_raw() as u32;
                exit_now(if gettid() == real && real != before {
                    0
                } else {
                    1
                })
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert_eq!(gettid(), before, "the parent's thread keeps its id");
            }
        }
    }
}
