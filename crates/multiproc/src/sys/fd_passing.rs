//! Descriptors that travel with the bytes of a message on a Unix socket (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};

use super::errno;
use super::socket::wait_fd;

/// Most descriptors one message may carry (Linux `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `data` (some prefix of it, as `sendmsg` does) with `fds` attached to the first byte.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(&raw)]
    };
    loop {
        match nix::sys::socket::sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(data)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => wait_fd(fd, true)?,
            other => return other.map_err(errno),
        }
    }
}

/// Receives into `buf` and takes ownership of any descriptors that came with the bytes.
/// Returns `(0, [])` at end of stream, `WouldBlock` on a non-blocking socket with no data.
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_flags(fd, buf, MsgFlags::empty())
}

/// [`recv_with_fds`] without waiting: `WouldBlock` when nothing has arrived.
pub(crate) fn recv_with_fds_now(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_flags(fd, buf, MsgFlags::MSG_DONTWAIT)
}

fn recv_with_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    thread_local! {
        // Room for the most descriptors one message may carry, allocated once per thread
        // (every receive of a frame header goes through here).
        static SPACE: std::cell::RefCell<Vec<u8>> =
            std::cell::RefCell::new(nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]));
    }
    SPACE.with(|space| recv_with_space(fd, buf, &mut space.borrow_mut(), flags))
}

fn recv_with_space(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(space),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(msg) => msg,
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(errno)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for r in raw {
                    // SAFETY: the kernel installed these descriptors in our table for this
                    // message (SCM_RIGHTS); nothing else refers to them, so we own them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors in one message",
            ));
        }
        return Ok((msg.bytes, fds));
    }
}
