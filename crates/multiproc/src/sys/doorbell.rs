//! Doorbells: eventfds that shared-memory structures ring for waiters that sleep in a
//! reactor (`epoll`) or in `poll`, not on a futex. Non-blocking and close-on-exec.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::errno;

/// A new doorbell, not rung.
pub(crate) fn doorbell() -> io::Result<OwnedFd> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(errno)
}

/// Rings `bell`: it becomes readable, and every `epoll` watching it (edge-triggered) sees a
/// new event, whether or not it was rung before. Never waits (a counter at its limit is as
/// rung as it gets).
pub(crate) fn ring(bell: BorrowedFd<'_>) {
    loop {
        match nix::unistd::write(bell.as_fd(), &1u64.to_ne_bytes()) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Silences `bell` (not readable until rung again). Never waits.
pub(crate) fn silence(bell: BorrowedFd<'_>) {
    let mut count = [0u8; 8];
    loop {
        match nix::unistd::read(bell, &mut count) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rung_bell_is_readable_until_silenced() {
        let bell = doorbell().unwrap();
        let ready = || super::super::poll_readable(&[bell.as_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready(), [false]);
        ring(bell.as_fd());
        ring(bell.as_fd());
        assert_eq!(ready(), [true]);
        silence(bell.as_fd());
        assert_eq!(ready(), [false]);
        silence(bell.as_fd()); // silencing a quiet bell does not wait
    }
}
