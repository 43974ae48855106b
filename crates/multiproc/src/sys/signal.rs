//! Signals: sending one (by pid, or race-free by pidfd), their names and numbers, ignoring
//! the signals that stop a program.

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::errno;

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

/// Sends signal `sig` to `pid`.
pub(crate) fn send_signal(pid: u32, sig: i32) -> io::Result<()> {
    let sig = Signal::try_from(sig).map_err(errno)?;
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).map_err(errno)
}

/// Sends signal `sig` to the process behind `pidfd`: race-free even if the pid was reused.
///
/// Through rustix: nix has no pidfd calls.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    rustix::process::pidfd_send_signal(pidfd, sig).map_err(io::Error::from)
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
/// The signal the kernel sends at the soft CPU-time limit.
pub(crate) const SIGXCPU: i32 = Signal::SIGXCPU as i32;
/// The signal of `abort`.
pub(crate) const SIGABRT: i32 = Signal::SIGABRT as i32;

/// Signals whose default action a spawned child gets back.
pub(super) const STOP_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
