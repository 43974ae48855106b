//! The reaper: one background thread, started the first time a handle of a running child
//! is dropped, that reaps exactly the children whose handles were dropped, as they end.
//!
//! It waits on their pidfds and reaps each one by its own pid (through the child's shared
//! state, so that an [`ActiveChild`](super::ActiveChild) still sees the status): never
//! `waitpid(-1)`, which would take the statuses of children that handles or the program
//! itself still wait for. Children of the forkserver need no reaper: the forkserver reaps
//! them.
//!
//! A forked child has no reaper thread even if its parent had one: the state names the
//! process that owns the thread, and a process that does not own it starts its own.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::child::{self, ChildShared};
use crate::sys;

/// The reaper of this process.
#[derive(Debug)]
pub(crate) struct Reaper {
    /// The process whose thread this is.
    owner: u32,
    /// Written to wake the thread when a child is added.
    wake: OwnedFd,
    /// Children whose handles were dropped while they ran.
    dropped: Vec<Arc<ChildShared>>,
}

static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

pub(crate) fn lock_reaper() -> MutexGuard<'static, Option<Reaper>> {
    REAPER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In a forked child: the parent's reaper thread does not exist here; forget its state (the
/// children it watched are the parent's), closing our copy of its wake-up socket inline.
pub(crate) fn forget_in_child(guard: &mut Option<Reaper>) {
    if let Some(reaper) = guard.take() {
        sys::close_inline(reaper.wake);
        // Not dropped: the thread may have been changing one of them at the fork, and
        // these are the parent's children (our copies of their descriptors stay unused).
        std::mem::forget(reaper.dropped);
    }
}

/// Reaps `child` as soon as it ends; its last handle was dropped while it ran. If no
/// thread can be started, the child is reaped as before: by the next start or
/// [`active_children`](super::active_children).
pub(crate) fn adopt(child: Arc<ChildShared>) {
    let mut guard = lock_reaper();
    if guard.as_ref().is_some_and(|r| r.owner != sys::getpid()) {
        forget_in_child(&mut guard); // forked by other means than ours
    }
    if guard.is_none() {
        match start() {
            Ok(reaper) => *guard = Some(reaper),
            Err(_) => return,
        }
    }
    let reaper = guard.as_mut().expect("set above");
    reaper.dropped.push(child);
    // A full socket already holds a wake-up: the thread will look.
    let _ = sys::try_send(reaper.wake.as_fd(), &[1]);
}

fn start() -> std::io::Result<Reaper> {
    let (wake, woken) = sys::socketpair_nonblocking()?;
    std::thread::Builder::new()
        .name("multiproc-reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || run(woken))?;
    Ok(Reaper {
        owner: sys::getpid(),
        wake,
        dropped: Vec::new(),
    })
}

/// The thread: waits for the wake-up socket or the end of a watched child; reaps the
/// children that ended and forgets them (here and in the table of children).
fn run(woken: OwnedFd) {
    let mut scratch = [0u8; 64];
    loop {
        let watched: Vec<Arc<ChildShared>> = lock_reaper()
            .as_ref()
            .map(|r| r.dropped.clone())
            .unwrap_or_default();
        let mut fds = vec![woken.as_fd()];
        fds.extend(watched.iter().map(|c| c.pidfd()));
        let Ok(ready) = sys::poll_readable(&fds, None) else {
            // Out of memory or descriptors: try again a little later.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        if ready[0] {
            while matches!(sys::read_some(woken.as_fd(), &mut scratch), Ok(n) if n > 0) {}
        }
        // An ended child leaves the list whether or not it could be reaped (someone else's
        // `waitpid(-1)` may have taken it): its pidfd stays readable for ever.
        let ended: Vec<Arc<ChildShared>> = watched
            .into_iter()
            .zip(&ready[1..])
            .filter(|(_, r)| **r)
            .map(|(c, _)| c)
            .collect();
        if ended.is_empty() {
            continue;
        }
        let reaped: Vec<u32> = ended
            .iter()
            .filter(|c| c.exit_status().is_some())
            .map(|c| c.pid)
            .collect();
        if let Some(r) = lock_reaper().as_mut() {
            r.dropped
                .retain(|c| !ended.iter().any(|e| Arc::ptr_eq(c, e)));
        }
        child::forget(&reaped);
    }
}
