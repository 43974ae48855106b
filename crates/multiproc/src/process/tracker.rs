//! The tracker of named shared memory: names in `/dev/shm` outlive the processes that made
//! them, so a creator killed before it could unlink leaves its segment behind for good.
//!
//! The first named segment a process tree creates starts a tracker: a small helper (this
//! executable re-run, stopped before `main`) holding one end of a packet socket pair. Every
//! process of the tree holds a copy of the other end: forked children inherit it, spawned and
//! forkserver children get it with their start message. Creators register each name and
//! unregister it when they unlink it themselves. When the last copy closes — every process
//! of the tree has ended, however it ended (SIGKILL included) — the tracker reads end of file,
//! unlinks what is still registered and exits. It ignores SIGINT, SIGTERM and SIGHUP, which
//! a terminal sends to the whole group, so that it is still there to clean up.
//!
//! Python's `multiprocessing.resource_tracker` works the same way (a pipe whose write end
//! every process inherits); here a name can only be registered by a process of the tree.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::wire;
use crate::sys;

/// This process's end of the tree's tracker socket, once there is a tracker.
static LINK: OnceLock<OwnedFd> = OnceLock::new();
/// Held while starting the tracker, so that two threads do not start two.
static STARTING: Mutex<()> = Mutex::new(());

const REGISTER: u8 = b'R';
const UNREGISTER: u8 = b'U';
/// A name is at most 255 bytes (`NAME_MAX`), plus the command byte.
const MAX_MESSAGE: usize = 256;

/// The tracker link, to hand to a child being started, if this tree has a tracker.
pub(crate) fn link() -> Option<BorrowedFd<'static>> {
    LINK.get().map(|fd| fd.as_fd())
}

/// Takes the tracker link a spawned or forkserver child received with its start message.
pub(crate) fn adopt(fd: OwnedFd) {
    // A process holds one link; a second one (not expected) is closed.
    let _ = LINK.set(fd);
}

/// The link, starting the tracker if this tree has none yet.
fn ensure() -> Option<BorrowedFd<'static>> {
    if let Some(fd) = link() {
        return Some(fd);
    }
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(fd) = link() {
        return Some(fd);
    }
    let (ours, theirs) = sys::packet_pair().ok()?;
    sys::spawn_self(theirs.as_fd(), (wire::ENV, "tracker")).ok()?;
    drop(theirs);
    let _ = LINK.set(ours);
    link()
}

fn message(command: u8, name: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + name.len());
    msg.push(command);
    msg.extend_from_slice(name.as_bytes());
    msg
}

/// Asks the tracker to unlink `name` when the tree ends (starting the tracker if needed).
/// Best effort: without a tracker, the creating handle still unlinks the name when dropped.
pub(crate) fn register(name: &str) {
    if let Some(fd) = ensure() {
        let _ = sys::send_packet(fd, &message(REGISTER, name));
    }
}

/// Tells the tracker that `name` was unlinked by its creator.
pub(crate) fn unregister(name: &str) {
    if let Some(fd) = link() {
        let _ = sys::send_packet(fd, &message(UNREGISTER, name));
    }
}

/// Whether `name` is a name that `SharedMemory` could have made: `/` then one path
/// component. Anything else is ignored, whoever sent it.
fn valid(name: &[u8]) -> bool {
    let bare = name.get(1..).unwrap_or_default();
    name.first() == Some(&b'/')
        && !bare.is_empty()
        && bare != b"."
        && bare != b".."
        && !bare.contains(&b'/')
        && !bare.contains(&0)
}

/// The tracker's loop (in the re-run executable, before `main`). Never returns.
pub(crate) fn serve(sock: OwnedFd) -> ! {
    sys::ignore_stop_signals();
    let mut names: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = [0u8; MAX_MESSAGE + 1];
    loop {
        match sys::recv_packet(sock.as_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if n > MAX_MESSAGE => {} // cut: not a message of ours
            Ok(n) => {
                let (command, name) = (buf[0], &buf[1..n]);
                match command {
                    REGISTER if valid(name) => {
                        names.insert(name.to_vec());
                    }
                    UNREGISTER => {
                        names.remove(name);
                    }
                    _ => {}
                }
            }
        }
    }
    for name in names {
        if let Ok(name) = std::str::from_utf8(&name) {
            let _ = sys::Region::unlink_named(name);
        }
    }
    sys::exit_now(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_component_names_are_accepted() {
        assert!(valid(b"/mp-seg"));
        assert!(!valid(b"/"));
        assert!(!valid(b"mp-seg"));
        assert!(!valid(b"/../etc/passwd"));
        assert!(!valid(b"/a/b"));
        assert!(!valid(b"/a\0b"));
        assert!(!valid(b"/.."));
        assert!(!valid(b""));
    }
}
