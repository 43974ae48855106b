//! Sockets for connections: listening, connecting, accepting, vectored sends.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrLike, SockaddrStorage, UnixAddr,
};

use super::errno;

/// Where a socket lives, as the OS sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SockTarget<'a> {
    /// TCP over IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix socket at a filesystem path.
    Path(&'a Path),
    /// A Linux abstract Unix socket (no filesystem entry).
    Abstract(&'a [u8]),
}

fn with_addr<T>(
    target: SockTarget<'_>,
    f: impl FnOnce(AddressFamily, &dyn SockaddrLike) -> io::Result<T>,
) -> io::Result<T> {
    match target {
        SockTarget::Tcp(SocketAddr::V4(a)) => f(AddressFamily::Inet, &SockaddrIn::from(a)),
        SockTarget::Tcp(SocketAddr::V6(a)) => f(AddressFamily::Inet6, &SockaddrIn6::from(a)),
        SockTarget::Path(p) => f(AddressFamily::Unix, &UnixAddr::new(p).map_err(errno)?),
        SockTarget::Abstract(name) => f(
            AddressFamily::Unix,
            &UnixAddr::new_abstract(name).map_err(errno)?,
        ),
    }
}

fn stream_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(errno)
}

/// A listening stream socket bound to `target` (TCP listeners get `SO_REUSEADDR`).
pub(crate) fn listen(target: SockTarget<'_>, backlog: i32) -> io::Result<OwnedFd> {
    with_addr(target, |family, addr| {
        let fd = stream_socket(family)?;
        if matches!(target, SockTarget::Tcp(_)) {
            socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true).map_err(errno)?;
        }
        socket::bind(fd.as_raw_fd(), addr).map_err(errno)?;
        socket::listen(&fd, Backlog::new(backlog).map_err(errno)?).map_err(errno)?;
        Ok(fd)
    })
}

/// A stream socket connected to `target`.
pub(crate) fn connect(target: SockTarget<'_>) -> io::Result<OwnedFd> {
    with_addr(target, |family, addr| {
        let fd = stream_socket(family)?;
        loop {
            match socket::connect(fd.as_raw_fd(), addr) {
                Err(Errno::EINTR) => continue,
                other => break other.map_err(errno)?,
            }
        }
        if family != AddressFamily::Unix {
            let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
        }
        Ok(fd)
    })
}

/// Accepts one connection (close-on-exec); TCP ones get `TCP_NODELAY`.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match socket::accept4(listener, SockFlag::SOCK_CLOEXEC) {
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e) => return Err(errno(e)),
            Ok(fd) => {
                let _ = socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true);
                return Ok(fd);
            }
        }
    }
}

/// The TCP address a socket is bound to (`None` for Unix sockets).
pub(crate) fn local_tcp_address(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(errno)?;
    Ok(if let Some(a) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4((*a).into()))
    } else {
        addr.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
    })
}

/// Shuts down the read (`false`) or write (`true`) direction.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
    let how = if write {
        socket::Shutdown::Write
    } else {
        socket::Shutdown::Read
    };
    socket::shutdown(fd.as_raw_fd(), how).map_err(errno)
}

/// Sends all of `parts` in order (`sendmsg` with several buffers, so a header and its payload
/// go in one system call), attaching `fds` to the first byte. Never raises `SIGPIPE`.
pub(crate) fn send_parts(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsgs: Vec<socket::ControlMessage<'_>> = Vec::new();
    if !raw.is_empty() {
        cmsgs.push(socket::ControlMessage::ScmRights(&raw));
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    while sent < total || (!cmsgs.is_empty() && total == 0) {
        // Skip what was sent already.
        let mut skip = sent;
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        match socket::sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                super::socket::poll(&[(fd, true)], None)?;
            }
            Err(e) => return Err(errno(e)),
            Ok(n) => {
                sent += n;
                cmsgs.clear(); // the descriptors went with the first byte
                if total == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(feature = "tokio")]
/// One `sendmsg` that never waits: sends what fits of `parts` now (with `fds` on the first
/// byte) and returns how many bytes went; `WouldBlock` when none could. Never raises
/// `SIGPIPE`.
pub(crate) fn try_send_parts(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsgs: Vec<socket::ControlMessage<'_>> = Vec::new();
    if !raw.is_empty() {
        cmsgs.push(socket::ControlMessage::ScmRights(&raw));
    }
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    loop {
        match socket::sendmsg::<()>(
            fd.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(errno),
        }
    }
}
