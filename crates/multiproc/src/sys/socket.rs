//! Stream and packet sockets between processes: pairs, sends that never raise `SIGPIPE`,
//! receives, readiness waits.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};

use super::errno;

/// A connected pair of Unix stream sockets, close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// [`socketpair`], both ends non-blocking.
pub(crate) fn socketpair_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(errno)
}

/// A connected pair of Unix packet sockets (message boundaries kept; a reader sees end of
/// file once every copy of the other end is closed), close-on-exec.
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// Sends one message on a packet socket (whole or not at all), without `SIGPIPE`.
pub(crate) fn send_packet(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    loop {
        match send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Receives one message from a packet socket into `buf` (a longer one is cut); 0 is end of
/// file.
pub(crate) fn recv_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(errno),
        }
    }
}

/// One plain receive (no descriptors; any that came along are closed by the kernel),
/// without waiting when `nonblocking`. The end of the stream, or a reset, is `Ok(0)`.
pub(crate) fn recv_plain(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = if nonblocking {
        MsgFlags::MSG_DONTWAIT
    } else {
        MsgFlags::empty()
    };
    loop {
        match nix::sys::socket::recv(fd.as_raw_fd(), buf, flags) {
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(0),
            Err(e) => return Err(errno(e)),
            Ok(n) => return Ok(n),
        }
    }
}

/// Waits until each of `fds` is ready for its interest (`true`: writable, `false`: readable),
/// or `timeout` passes (`None`: forever). Returns which are ready (hang-up and errors count
/// as ready). Interrupted waits are resumed with the remaining time.
pub(crate) fn poll(
    fds: &[(BorrowedFd<'_>, bool)],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut set: Vec<PollFd<'_>> = fds
            .iter()
            .map(|(f, w)| {
                PollFd::new(
                    *f,
                    if *w {
                        PollFlags::POLLOUT
                    } else {
                        PollFlags::POLLIN
                    },
                )
            })
            .collect();
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short timeout does not spin at 0 ms.
                let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut set, wait) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
            Ok(_) => {
                return Ok(set
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect());
            }
        }
    }
}

/// [`poll`] for readability only.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let set: Vec<_> = fds.iter().map(|f| (*f, false)).collect();
    poll(&set, timeout)
}

/// Blocks until `fd` is readable (or writable).
pub(super) fn wait_fd(fd: BorrowedFd<'_>, writable: bool) -> io::Result<()> {
    poll(&[(fd, writable)], None).map(drop)
}

/// Writes all of `data`, never raising `SIGPIPE` (a closed peer is `BrokenPipe`).
///
/// The system call is made inline (rustix), not through the C library as nix would make it:
/// a forked child reports with it, and each C library page it touches first is a page fault
/// there.
#[inline]
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    use rustix::io::Errno as E;
    while !data.is_empty() {
        match rustix::net::send(fd, data, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(E::INTR) => {}
            Err(E::AGAIN) => wait_fd(fd, true)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One `send` that never waits and never raises `SIGPIPE`: `WouldBlock` when a
/// non-blocking socket is full.
pub(crate) fn try_send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(errno),
        }
    }
}

/// Fills `buf` completely; end of stream first is `UnexpectedEof`.
pub(crate) fn recv_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match read_some(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(fd, false)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `read`: `Ok(0)` is end of stream, `WouldBlock` on a non-blocking fd with no data.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(errno),
        }
    }
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(errno)?);
    let new = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    if new != flags {
        fcntl(fd, FcntlArg::F_SETFL(new)).map_err(errno)?;
    }
    Ok(())
}
