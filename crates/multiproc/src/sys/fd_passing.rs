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
/// Descriptors that could not all be taken are an error (the bytes are then lost: see
/// [`recv_keeping`] for a receive that keeps them).
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    refuse_lost_fds(recv_keeping(fd, buf, false)?)
}

/// A receive's bytes and descriptors, or an error when descriptors sent with them were lost.
fn refuse_lost_fds(got: Received) -> io::Result<(usize, Vec<OwnedFd>)> {
    if got.fds_lost {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in one message",
        ));
    }
    Ok((got.n, got.fds))
}

/// What one receive brought.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes read (0: end of stream).
    pub(crate) n: usize,
    /// Descriptors that came with them.
    pub(crate) fds: Vec<OwnedFd>,
    /// Descriptors were sent with these bytes that this process could not take (at its
    /// limit of open files, or more than [`MAX_FDS_PER_MESSAGE`]): the bytes are good, but
    /// the message they came with is not whole. The ones it did take were closed.
    pub(crate) fds_lost: bool,
}

/// One receive into `buf` (without waiting when `now`; `WouldBlock` then when nothing has
/// arrived) that keeps the bytes even when descriptors sent with them are lost.
pub(crate) fn recv_keeping(fd: BorrowedFd<'_>, buf: &mut [u8], now: bool) -> io::Result<Received> {
    thread_local! {
        // Room for the most descriptors one message may carry, allocated once per thread
        // (every receive of a frame header goes through here).
        static SPACE: std::cell::RefCell<Vec<u8>> =
            std::cell::RefCell::new(nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]));
    }
    let flags = if now {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::empty()
    };
    SPACE.with(|space| recv_with_space(fd, buf, &mut space.borrow_mut(), flags))
}

fn recv_with_space(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Received> {
    loop {
        // A header the kernel writes only when it installs descriptors: cleared, so that a
        // truncated receive does not read an earlier one's (see `taken_before_truncation`).
        let head = CMSG_HEADER.min(space.len());
        space[..head].fill(0);
        let mut iov = [IoSliceMut::new(&mut *buf)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut *space),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(msg) => msg,
        };
        let n = msg.bytes;
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            drop(taken_before_truncation(space));
            return Ok(Received {
                n,
                fds: Vec::new(),
                fds_lost: true,
            });
        }
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
        return Ok(Received {
            n,
            fds,
            fds_lost: false,
        });
    }
}

fn bytes4_of(c: &[u8]) -> [u8; 4] {
    [c[0], c[1], c[2], c[3]]
}

/// `struct cmsghdr` on 64-bit Linux: `cmsg_len` (8 bytes), `cmsg_level`, `cmsg_type`.
const CMSG_HEADER: usize = 16;

/// The descriptors a truncated receive did install (the kernel stops at the first it cannot
/// take, and then writes a header for the ones before it, if any), read from the control
/// buffer by hand: nix refuses to read a truncated one.
fn taken_before_truncation(space: &[u8]) -> Vec<OwnedFd> {
    if !cfg!(all(target_os = "linux", target_pointer_width = "64")) || space.len() < CMSG_HEADER {
        return Vec::new();
    }
    let bytes4 = |at: usize| bytes4_of(&space[at..]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&space[..8]);
    let len = u64::from_ne_bytes(len8) as usize;
    let level = i32::from_ne_bytes(bytes4(8));
    let kind = i32::from_ne_bytes(bytes4(12));
    if level != nix::libc::SOL_SOCKET
        || kind != nix::libc::SCM_RIGHTS
        || len < CMSG_HEADER
        || len > space.len()
    {
        return Vec::new();
    }
    space[CMSG_HEADER..len]
        .chunks_exact(4)
        .map(|c| {
            let raw = i32::from_ne_bytes(bytes4_of(c));
            // SAFETY: the kernel wrote this header and installed these descriptors for this
            // receive (the header was cleared before it); nothing else refers to them.
            unsafe { OwnedFd::from_raw_fd(raw) }
        })
        .collect()
}
