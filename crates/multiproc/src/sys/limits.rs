//! What a child may use and how it runs: resource limits (`setrlimit`), niceness, the
//! working directory, the environment, user and group, its standard streams, the CPU time and
//! memory it used, and the abort handler that tells an allocation failure apart.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::resource::{
    Resource as NixResource, Usage, UsageWho, getrlimit, getrusage, setrlimit,
};

use super::errno;

/// A resource whose use the kernel limits per process (`setrlimit(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Resource {
    /// The process's virtual address space, in bytes (`RLIMIT_AS`).
    AddressSpace,
    /// The size of a core dump, in bytes (`RLIMIT_CORE`); 0 writes none.
    Core,
    /// CPU time, in seconds (`RLIMIT_CPU`): `SIGXCPU` at the soft limit, `SIGKILL` at the hard.
    Cpu,
    /// The data segment and private writable mappings, in bytes (`RLIMIT_DATA`).
    Data,
    /// The largest file the process may create, in bytes (`RLIMIT_FSIZE`).
    FileSize,
    /// Memory locked into RAM, in bytes (`RLIMIT_MEMLOCK`).
    MemLock,
    /// One more than the highest descriptor number the process may open (`RLIMIT_NOFILE`).
    NoFile,
    /// Processes (threads) of the process's real user (`RLIMIT_NPROC`).
    NProc,
    /// The main thread's stack, in bytes (`RLIMIT_STACK`).
    Stack,
}

impl Resource {
    fn to_nix(self) -> NixResource {
        match self {
            Resource::AddressSpace => NixResource::RLIMIT_AS,
            Resource::Core => NixResource::RLIMIT_CORE,
            Resource::Cpu => NixResource::RLIMIT_CPU,
            Resource::Data => NixResource::RLIMIT_DATA,
            Resource::FileSize => NixResource::RLIMIT_FSIZE,
            Resource::MemLock => NixResource::RLIMIT_MEMLOCK,
            Resource::NoFile => NixResource::RLIMIT_NOFILE,
            Resource::NProc => NixResource::RLIMIT_NPROC,
            Resource::Stack => NixResource::RLIMIT_STACK,
        }
    }
}

/// No limit (`RLIM_INFINITY`).
pub(crate) const UNLIMITED: u64 = nix::libc::RLIM_INFINITY;

/// Sets this process's `soft` and `hard` limit of `resource`.
pub(crate) fn set_rlimit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    setrlimit(resource.to_nix(), soft, hard).map_err(errno)
}

/// This process's `(soft, hard)` limit of `resource`.
fn get_rlimit(resource: Resource) -> io::Result<(u64, u64)> {
    getrlimit(resource.to_nix()).map_err(errno)
}

/// The CPU time (user and system) this process used so far.
fn cpu_time_used() -> io::Result<Duration> {
    let usage: Usage = getrusage(UsageWho::RUSAGE_SELF).map_err(errno)?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
    };
    Ok(tv(usage.user_time()) + tv(usage.system_time()))
}

/// Lets this process use `budget` more seconds of CPU time from now (whole seconds, the
/// kernel's unit, rounded up) before it gets `SIGXCPU`: moves the soft `RLIMIT_CPU`.
pub(crate) fn allow_cpu_time(budget: Duration) -> io::Result<()> {
    let used = cpu_time_used()?;
    let until = (used + budget).as_secs() + u64::from((used + budget).subsec_nanos() > 0);
    let (_, hard) = get_rlimit(Resource::Cpu)?;
    set_rlimit(Resource::Cpu, until.min(hard), hard)
}

/// This process's resident memory in bytes (from `/proc/self/statm`).
pub(crate) fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/self/statm"))?;
    Ok(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

/// Sets this process's niceness (`setpriority`, absolute: -20 to 19; lowering it needs
/// privileges).
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: `setpriority` takes plain integers; `0` names this process.
    let rc = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Changes the working directory.
pub(crate) fn change_dir(dir: &Path) -> io::Result<()> {
    nix::unistd::chdir(dir).map_err(errno)
}

/// Whether this process runs with root's effective user id.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs as group `gid` (real, effective, saved; supplementary groups: only `gid`).
pub(crate) fn set_group(gid: u32) -> io::Result<()> {
    let gid = nix::unistd::Gid::from_raw(gid);
    nix::unistd::setgroups(&[gid]).map_err(errno)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(errno)
}

/// Runs as user `uid` (real, effective, saved): for good, when it was root.
pub(crate) fn set_user(uid: u32) -> io::Result<()> {
    let uid = nix::unistd::Uid::from_raw(uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(errno)
}

/// Changes this process's environment.
///
/// Only called in a new child before its function runs, while it has a single thread.
pub(crate) fn edit_env(clear: bool, changes: &[(&OsStr, Option<&OsStr>)]) {
    if clear {
        for (key, _) in std::env::vars_os() {
            // SAFETY: see the function's contract: no other thread reads the environment.
            unsafe { std::env::remove_var(key) };
        }
    }
    for (key, value) in changes {
        match value {
            // SAFETY: as above.
            Some(v) => unsafe { std::env::set_var(key, v) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(key) },
        }
    }
}

/// Makes `fd` this process's descriptor `target` (1: standard output, 2: standard error).
pub(crate) fn redirect(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        return Ok(());
    }
    // SAFETY: `dup2` onto a standard stream's number replaces that stream, which is the
    // point; `fd` is open (borrowed).
    let rc = unsafe { nix::libc::dup2(fd.as_raw_fd(), target) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno)
}

/// The report channel and the frame that [`on_abort`] writes to it.
static ABORT_FD: AtomicI32 = AtomicI32::new(-1);
static ABORT_FRAME: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static ABORT_FRAME_LEN: AtomicUsize = AtomicUsize::new(0);

/// Has an `abort` that follows a failed allocation write `frame` to `fd` and end the process
/// with exit code 1; any other abort goes on as usual.
///
/// Rust ends a process whose allocation failed with `abort` (the default alloc error hook);
/// the C library's `malloc` leaves `ENOMEM` in `errno` when it fails, and nothing between
/// the failure and the `abort` (the hook's one `write` to standard error) changes it. So an
/// abort with `errno == ENOMEM` is taken for an allocation failure. Called in a new child
/// before its function runs, with single thread.
pub(crate) fn report_alloc_failure_on_abort(fd: BorrowedFd<'_>, frame: Vec<u8>) -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let frame = Box::leak(frame.into_boxed_slice());
    ABORT_FRAME_LEN.store(frame.len(), Ordering::SeqCst);
    ABORT_FRAME.store(frame.as_mut_ptr(), Ordering::SeqCst);
    ABORT_FD.store(fd.as_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_abort),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: `on_abort` makes only async-signal-safe calls (`write`, `_exit`) and reads
    // statics written before it was installed.
    unsafe { sigaction(Signal::SIGABRT, &action) }.map_err(errno)?;
    Ok(())
}

extern "C" fn on_abort(_signal: nix::libc::c_int) {
    if Errno::last_raw() != nix::libc::ENOMEM {
        // Returning lets `abort` go on: the handler was reset, the process dies by SIGABRT.
        return;
    }
    let fd = ABORT_FD.load(Ordering::SeqCst);
    let ptr = ABORT_FRAME.load(Ordering::SeqCst);
    let len = ABORT_FRAME_LEN.load(Ordering::SeqCst);
    let mut sent = 0;
    while fd >= 0 && !ptr.is_null() && sent < len {
        // SAFETY: `ptr..ptr+len` is the leaked frame (never freed); `write` is
        // async-signal-safe.
        let n = unsafe { nix::libc::write(fd, ptr.add(sent).cast(), len - sent) };
        if n <= 0 {
            break;
        }
        sent += n as usize;
    }
    super::process::exit_now(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_round_trip_in_this_process() {
        let (soft, hard) = get_rlimit(Resource::Core).unwrap();
        set_rlimit(Resource::Core, 0, hard).unwrap();
        assert_eq!(get_rlimit(Resource::Core).unwrap(), (0, hard));
        set_rlimit(Resource::Core, soft, hard).unwrap();
    }

    #[test]
    fn resident_memory_and_cpu_time_are_read() {
        assert!(resident_bytes().unwrap() > 0);
        cpu_time_used().unwrap();
    }
}
