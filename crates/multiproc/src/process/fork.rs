//! The fork start method: the child is a fork of this process, so it already holds the
//! function (or closure) to run and its arguments; only its outcome goes through the socket.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::builder::Streams;
use super::handle::{self, Process};
use super::setup::StreamEnds;
use super::wire::{Outcome, Start};
use super::{
    bootstrap, child, current, forkserver, panics, parent_only, reaper, registry, scope, setup,
};
use crate::error::ProcessError;
use crate::sys;

/// Runs closure `f` in a forked child that becomes `start`'s process (see
/// [`Builder::fork`](super::Builder::fork)).
pub(super) fn start_closure<R, C>(
    start: Start,
    f: C,
    ends: StreamEnds,
    streams: Streams,
) -> Result<Process<R>, ProcessError>
where
    C: FnOnce() -> R,
    R: Serialize + DeserializeOwned,
{
    fork_with(start, ends, streams, |_, sock| {
        bootstrap::run_and_finish(sock, |out| out.encode(&f()))
    })
}

/// Runs the registered function that `start` names, with the descriptors `fds` of its
/// arguments, in a forked child.
pub(super) fn start_registered<R>(
    start: Start,
    fds: Vec<OwnedFd>,
    ends: StreamEnds,
    streams: Streams,
) -> Result<Process<R>, ProcessError> {
    let entry = registry::lookup(&start.function);
    fork_with(start, ends, streams, move |start, sock| match entry {
        Some(e) => bootstrap::run_and_finish(sock, |out| (e.invoke)(&start.args, fds, out)),
        None => bootstrap::finish(
            sock,
            Err(Outcome::Failed(format!(
                "function `{}` is not registered",
                start.function
            ))),
        ),
    })
}

/// Forks a child that becomes `start`'s process and runs `body`, which reports on the
/// socket it is given and exits. The child has the start message in memory already:
/// nothing goes through the socket but the outcome.
fn fork_with<R>(
    start: Start,
    ends: StreamEnds,
    streams: Streams,
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
        if let Some(s) = &start.setup
            && let Err(message) = setup::apply(s, report, ends)
        {
            match bootstrap::finish(report, Err(Outcome::Failed(message))) {}
        }
        match body(&start, report) {}
    })
    .map_err(ProcessError::io("fork"))?;
    handle::register_started(pid, start, None, ours, Some(theirs), streams)
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
        parent_only::lock(),
    ));
    // Room for the new child's entry now, so that registering it after the fork does not
    // reallocate while the child shares our pages.
    if let Some((_, children, _, _, _, _, _)) = locks.as_mut() {
        children.reserve(1);
    }
    // Closed in the child: the parent's side of its children and pool workers, listed under
    // the lock held across the fork.
    let close: Vec<RawFd> = match &locks {
        Some((.., listed)) => listed.iter().copied().chain([close]).collect(),
        None => vec![close],
    };
    let pid = sys::fork_then(&close, || {
        if let Some((mut client, mut children, me, mut spare, mut reaper, scopes, mut listed)) =
            locks.take()
        {
            // Written only when there is something to forget: each write to a static is a
            // copy-on-write fault in the child.
            forkserver::forget_in_child(&mut client);
            reaper::forget_in_child(&mut reaper);
            // Forgotten, not dropped: dropping one can take a lock another thread of the
            // parent held at the fork (a reactor's, for a child awaited in a runtime), which
            // nobody here would ever release.
            if !children.is_empty() {
                std::mem::forget(std::mem::take(&mut *children));
            }
            // Another thread's spare report channel: the parent's, not ours.
            if let Some((a, b)) = spare.take() {
                sys::close_inline(a);
                sys::close_inline(b);
            }
            // Closed above (`close`); the list is this child's own from now on.
            parent_only::forget_in_child(&mut listed);
            // The running tests' scopes are left as they are: no test ends in this child.
            drop((client, children, me, spare, reaper, scopes, listed));
        }
        drop((stdout, stderr));
        body()
    });
    drop(locks);
    pid
}
