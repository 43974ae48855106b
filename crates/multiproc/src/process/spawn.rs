//! The spawn start method: this executable run again, which becomes the child before `main`
//! (see `before_main`) and reads its start message from the socket it inherits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::bootstrap::{self, run_start};
use super::builder::Streams;
use super::handle::{self, Process};
use super::wire::{self, Kind, Start};
use crate::error::ProcessError;
use crate::sys;

/// The parent's side: starts this executable again with `theirs` as its bootstrap socket and
/// sends it the encoded start message `payload`, with `fds`, on `ours`.
pub(super) fn launch<R>(
    ours: OwnedFd,
    theirs: OwnedFd,
    start: Start,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
    streams: Streams,
) -> Result<Process<R>, ProcessError> {
    let pid = sys::spawn_self(theirs.as_fd(), (wire::ENV, "child"))
        .map_err(ProcessError::io("spawning a child"))?;
    drop(theirs);
    let sent = wire::write_frame(ours.as_fd(), Kind::Start, payload, fds);
    let process = handle::register_started(pid, start, None, ours, None, streams)?;
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

/// The child's side: reads the start message from `sock`, the socket inherited as
/// [`sys::CHILD_BOOTSTRAP_FD`], then runs it (see [`run_start`]).
pub(super) fn run_spawned(sock: OwnedFd, direct: bool) -> ! {
    let (kind, payload, fds) = match wire::read_frame(sock.as_fd(), u64::MAX) {
        Ok(frame) => frame,
        Err(e) => bootstrap::die(&format!(
            "cannot read the start message from the parent: {e}"
        )),
    };
    if kind != Kind::Start {
        bootstrap::die(&format!("expected a start message, got {kind:?}"));
    }
    run_start(sock.as_fd(), &payload, fds, direct)
}
