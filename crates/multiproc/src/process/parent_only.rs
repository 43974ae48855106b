//! Descriptors only this process may hold: its side of its own children (their report
//! channels; a pool's connections to its workers, their rings and pidfds). A child forked
//! from this process (the `fork` start method, a closure pool's workers) would otherwise
//! keep a copy of each, for as long as it runs: a pool's last worker held every earlier
//! worker's, so descriptors grew with the square of the workers, and a worker held another
//! one's connection open. A fork (`fork::fork_child`) closes every listed descriptor in the
//! child.
//!
//! A descriptor is listed from when it is open until just before it is closed, under the
//! lock the fork holds, so a forked child closes exactly the listed descriptors open at the
//! fork. Objects forgotten in a child (its copy of the parent's children) may still drop
//! there: a [`ParentFd`] listed by another process image is then forgotten, not closed, since
//! its number may belong to a file of the child by then. The owner of a [`Listed`] set, a
//! pool's worker, is only ever dropped by its pool's handler thread, which a forked child
//! does not have.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::sys;

static LISTED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// The list, held across a fork (see `fork::fork_child`).
pub(super) fn lock() -> MutexGuard<'static, Vec<RawFd>> {
    LISTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In a child just forked with the list held, after `fork_then` closed every listed
/// descriptor: the list is the child's own from now on. Written only when there is something
/// to forget: each write is a copy-on-write fault on the path the parent waits for.
pub(super) fn forget_in_child(listed: &mut Vec<RawFd>) {
    if !listed.is_empty() {
        listed.clear();
    }
}

/// Descriptors that something else owns, listed while this lives: declared before their
/// owners in a struct, so that it drops first.
#[derive(Debug)]
pub(crate) struct Listed {
    fds: Vec<RawFd>,
    forks: u32,
}

impl Listed {
    pub(crate) fn new(fds: &[BorrowedFd<'_>]) -> Listed {
        let fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        lock().extend_from_slice(&fds);
        Listed {
            fds,
            forks: sys::fork_generation(),
        }
    }

    /// Whether this process image listed them (not a forked child, whose list is its own).
    fn here(&self) -> bool {
        self.forks == sys::fork_generation()
    }

    /// Takes them off the list now (one entry each); nothing in a forked child.
    fn unlist(&mut self) {
        if !self.here() {
            return;
        }
        let mut listed = lock();
        for fd in std::mem::take(&mut self.fds) {
            if let Some(i) = listed.iter().rposition(|&l| l == fd) {
                listed.swap_remove(i);
            }
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.unlist();
    }
}

/// A descriptor listed for as long as it is open.
#[derive(Debug)]
pub(crate) struct ParentFd {
    listed: Listed,
    fd: Option<OwnedFd>,
}

impl ParentFd {
    pub(crate) fn new(fd: OwnedFd) -> ParentFd {
        ParentFd {
            listed: Listed::new(&[fd.as_fd()]),
            fd: Some(fd),
        }
    }

    /// The descriptor, no longer listed (kept by something a forked child closes itself).
    pub(crate) fn into_owned(mut self) -> OwnedFd {
        self.listed.unlist();
        self.fd
            .take()
            .expect("a ParentFd holds its descriptor until dropped")
    }
}

impl AsFd for ParentFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a ParentFd holds its descriptor until dropped")
            .as_fd()
    }
}

impl Drop for ParentFd {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        if self.listed.here() {
            // Unlisted, then closed.
            self.listed.unlist();
            drop(fd);
        } else {
            // A forked child's copy: closed at the fork, its number maybe reused since.
            std::mem::forget(fd);
        }
    }
}
