//! The child's side of starting: reading the start message, running the registered function,
//! reporting how it ended.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::panics::{self, panic_message};
use super::wire::{self, Outcome, Returned, Start};
use super::{child, current, registry, setup};
use crate::codec::{ResultBuf, SMALL_RESULT};
use crate::error::CodecError;
use crate::sys;

/// Exit code of a child whose bootstrap itself failed (`EX_SOFTWARE`).
const BOOTSTRAP_FAILED: i32 = 70;

/// Ends a child whose bootstrap failed, saying why.
pub(super) fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "multiproc: {msg}");
    sys::exit_now(BOOTSTRAP_FAILED)
}

/// Becomes the child that the encoded start message describes, runs its function with
/// `fds` as the descriptors of its arguments, reports on `sock`, exits.
/// `direct`: the OS parent is the process that asked for us (not a forkserver).
pub(crate) fn run_start(
    sock: BorrowedFd<'_>,
    payload: &[u8],
    fds: Vec<OwnedFd>,
    direct: bool,
) -> ! {
    panics::install();
    let start: Start = match crate::codec::decode(payload) {
        Ok(s) => s,
        Err(e) => die(&format!("unreadable start message: {e}")),
    };
    let mut fds = fds;
    if start.tracker {
        // Sent after the arguments' descriptors (see `Builder::launch`).
        if let Some(link) = fds.pop() {
            super::tracker::adopt(link);
        }
    }
    // The piped streams' ends come before the tracker link: error, then output from the end.
    let mut ends = (None, None);
    if let Some(s) = &start.setup {
        if s.stderr.piped() {
            ends.1 = fds.pop();
        }
        if s.stdout.piped() {
            ends.0 = fds.pop();
        }
    }
    current::become_child(
        &mut current::lock_me(),
        start.name,
        start.identity,
        start.daemon,
        start.parent_pid,
        start.parent_name,
        direct,
    );
    if let Some(s) = &start.setup
        && let Err(message) = setup::apply(s, sock, ends)
    {
        finish(sock, Err(Outcome::Failed(message)))
    }
    match registry::lookup(&start.function) {
        None => finish(
            sock,
            Err(Outcome::Failed(format!(
                "function `{}` is not registered in this binary: add `#[multiproc::func]` to it",
                start.function
            ))),
        ),
        Some(entry) => run_and_finish(sock.as_fd(), |out| (entry.invoke)(&start.args, fds, out)),
    }
}

/// Runs `body`, which encodes one result into `out`; on a panic or a codec error, takes
/// back what it encoded and says what happened.
#[inline(always)]
pub(crate) fn run_guarded_into(
    out: &mut ResultBuf<'_>,
    body: impl FnOnce(&mut ResultBuf<'_>) -> Result<(), CodecError>,
) -> Option<Outcome> {
    let before = out.mark();
    let failure = match catch_unwind(AssertUnwindSafe(|| body(&mut *out))) {
        Ok(Ok(())) => return None,
        Ok(Err(CodecError::Encode(message))) => Outcome::Codec {
            encode: true,
            message,
        },
        Ok(Err(CodecError::Decode(message))) => Outcome::Codec {
            encode: false,
            message,
        },
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    };
    out.truncate(before);
    Some(failure)
}

/// Runs the body of a child, which encodes its result into the buffer it is given (on the
/// stack when small), then reports how it ended and exits (see [`finish`]).
#[inline(always)]
pub(crate) fn run_and_finish(
    sock: BorrowedFd<'_>,
    body: impl FnOnce(&mut ResultBuf<'_>) -> Result<(), CodecError>,
) -> ! {
    let mut small = [0u8; SMALL_RESULT];
    let mut out = ResultBuf::Small {
        buf: &mut small,
        len: 0,
    };
    match run_guarded_into(&mut out, body) {
        Some(failure) => finish(sock, Err(failure)),
        None => match &out {
            ResultBuf::Small { buf, len } => finish(sock, Ok(Returned::Small(buf, *len))),
            ResultBuf::Spilled(bytes) => finish(sock, Ok(Returned::Bytes(bytes))),
            ResultBuf::Append(bytes) => finish(sock, Ok(Returned::Bytes(bytes))),
        },
    }
}

/// Ends this process's own children as Python does at exit (daemons terminated, others
/// joined), flushes stdio, reports `outcome` to the parent and exits at once. Reporting last
/// keeps the gap between the report and the exit short, so a parent woken by the report
/// usually finds the child already ended instead of sleeping a second time.
#[inline(always)]
pub(crate) fn finish(sock: BorrowedFd<'_>, ended: Result<Returned<'_>, Outcome>) -> ! {
    let code = match ended {
        Ok(_) => 0,
        Err(_) => 1,
    };
    if child::any() {
        child::finish_children(None, child::Finish::TerminateDaemons);
    }
    // Standard error is unbuffered; standard output may hold a line without its newline.
    let _ = std::io::stdout().flush();
    // A parent that dropped its handle may have closed the socket: not an error here.
    let _ = match &ended {
        Ok(returned) => wire::write_returned(sock, returned),
        Err(outcome) => wire::write_outcome(sock, outcome),
    };
    sys::exit_now(code)
}
