//! The forkserver: a helper started from a clean state (the same executable re-run, stopped
//! before `main`, single-threaded) that forks children on request. Children get fork speed
//! without inheriting the parent's threads, locks or memory. It ends when its owner ends.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::bootstrap;
use super::wire::{self, Kind};
use crate::error::ProcessError;
use crate::sys::{self, ExitStatus};

/// The owner's connection to its forkserver.
#[derive(Debug)]
pub(crate) struct Client {
    sock: OwnedFd,
    pid: u32,
    owner: u32,
}

static CLIENT: Mutex<Option<Client>> = Mutex::new(None);

pub(crate) fn lock_client() -> MutexGuard<'static, Option<Client>> {
    CLIENT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start_server() -> std::io::Result<Client> {
    let (ours, theirs) = sys::socketpair()?;
    let pid = sys::spawn_self(theirs.as_fd(), (bootstrap::ENV, "forkserver"))?;
    Ok(Client {
        sock: ours,
        pid,
        owner: sys::getpid(),
    })
}

/// Starts the forkserver now if it is not running (otherwise the first forkserver child
/// starts it).
pub(crate) fn ensure_started() -> Result<u32, ProcessError> {
    let mut guard = lock_client();
    client(&mut guard).map(|c| c.pid)
}

fn client(guard: &mut Option<Client>) -> Result<&Client, ProcessError> {
    if guard.as_ref().is_some_and(|c| c.owner != sys::getpid()) {
        *guard = None; // inherited through fork: not ours
    }
    if guard.is_none() {
        *guard = Some(start_server().map_err(ProcessError::io("starting the forkserver"))?);
    }
    Ok(guard.as_ref().expect("set above"))
}

/// Asks the forkserver for a child that runs the encoded start message `start` (with `fds`,
/// its arguments' descriptors) and reports on `child_sock`; returns its pid and a
/// pidfd for it (opened by the forkserver before it could reap the child, so it cannot
/// miss a child that ends at once). A forkserver that died is replaced once.
pub(crate) fn request(
    child_sock: BorrowedFd<'_>,
    start: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(u32, OwnedFd), ProcessError> {
    let mut guard = lock_client();
    for attempt in 0..2 {
        let c = client(&mut guard)?;
        match ask(c, child_sock, start, fds) {
            Ok(reply) => return reply,
            Err(_) if attempt == 0 => {
                if let Some(old) = guard.take() {
                    let _ = sys::send_signal(old.pid, sys::SIGKILL);
                    let _ = sys::try_wait(old.pid);
                }
            }
            Err(e) => {
                return Err(ProcessError::Io {
                    op: "talking to the forkserver",
                    source: e,
                });
            }
        }
    }
    unreachable!("the loop returns on its second attempt")
}

fn ask(
    c: &Client,
    child_sock: BorrowedFd<'_>,
    start: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<Result<(u32, OwnedFd), ProcessError>> {
    let mut all = Vec::with_capacity(fds.len() + 1);
    all.push(child_sock);
    all.extend_from_slice(fds);
    wire::write_frame(c.sock.as_fd(), Kind::ForkRequest, start, &all)?;
    let (kind, payload, mut fds) = wire::read_frame(c.sock.as_fd(), 1 << 16)?;
    if kind != Kind::ForkReply {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected forkserver reply",
        ));
    }
    let reply: Result<u32, String> = crate::codec::decode(&payload)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(match (reply, fds.pop()) {
        (Ok(pid), Some(pidfd)) => Ok((pid, pidfd)),
        (Ok(_), None) => Err(ProcessError::Io {
            op: "forking in the forkserver",
            source: std::io::Error::other("no pidfd came with the reply"),
        }),
        (Err(message), _) => Err(ProcessError::Io {
            op: "forking in the forkserver",
            source: std::io::Error::other(message),
        }),
    })
}

/// A child of the forkserver, watched until it ends.
struct Forked {
    sock: OwnedFd,
    pidfd: OwnedFd,
    /// The status frame, once the child is reaped, until it is written.
    pending: Option<Vec<u8>>,
}

/// The forkserver's loop (in the re-run executable, before `main`). Never returns.
pub(crate) fn serve(ctrl: OwnedFd) -> ! {
    let owner = sys::getppid();
    let Ok(owner_fd) = sys::pidfd_open(owner) else {
        sys::exit_now(0)
    };
    let mut children: HashMap<u32, Forked> = HashMap::new();
    loop {
        let pids: Vec<u32> = children.keys().copied().collect();
        let mut set: Vec<(BorrowedFd<'_>, bool)> =
            vec![(ctrl.as_fd(), false), (owner_fd.as_fd(), false)];
        for pid in &pids {
            let f = &children[pid];
            set.push(match f.pending {
                None => (f.pidfd.as_fd(), false),
                Some(_) => (f.sock.as_fd(), true),
            });
        }
        let Ok(ready) = sys::poll(&set, None) else {
            sys::exit_now(1)
        };
        drop(set);
        if ready[1] {
            sys::exit_now(0); // the owner is gone
        }
        if ready[0] && !handle_request(&ctrl, &owner_fd, &mut children) {
            sys::exit_now(0);
        }
        for (i, pid) in pids.iter().enumerate() {
            if !ready[2 + i] {
                continue;
            }
            let f = children.get_mut(pid).expect("listed above");
            if f.pending.is_none() {
                match sys::try_wait(*pid) {
                    Ok(Some(status)) => f.pending = Some(status_frame(status)),
                    Ok(None) => continue,
                    Err(_) => f.pending = Some(status_frame(ExitStatus::Code(255))),
                }
            }
            let frame = f.pending.take().expect("set above");
            match sys::send_with_fds(f.sock.as_fd(), &frame, &[]) {
                Ok(n) if n == frame.len() => {
                    children.remove(pid);
                }
                Ok(n) => f.pending = Some(frame[n..].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => f.pending = Some(frame),
                Err(_) => {
                    children.remove(pid); // nobody listens any more
                }
            }
        }
    }
}

fn status_frame(status: ExitStatus) -> Vec<u8> {
    let payload = crate::codec::encode(&status).unwrap_or_default();
    wire::frame_bytes(Kind::Status, &payload)
}

/// Handles one request; `false` when the owner closed the control socket.
fn handle_request(ctrl: &OwnedFd, owner_fd: &OwnedFd, children: &mut HashMap<u32, Forked>) -> bool {
    // The owner is trusted (it started us): no size limit on its start messages.
    let (kind, start, fds) = match wire::read_frame(ctrl.as_fd(), u64::MAX) {
        Ok(frame) => frame,
        Err(_) => return false,
    };
    let mut fds = fds.into_iter();
    let (reply, pidfd): (Result<u32, String>, _) = match (kind, fds.next()) {
        (Kind::ForkRequest, Some(sock)) => {
            match fork_child(sock, &start, fds.collect(), ctrl, owner_fd, children) {
                Ok(pid) => (Ok(pid), children.get(&pid).map(|f| f.pidfd.as_fd())),
                Err(e) => (Err(e), None),
            }
        }
        _ => (Err("malformed fork request".into()), None),
    };
    let fds: Vec<BorrowedFd<'_>> = pidfd.into_iter().collect();
    wire::write_value(ctrl.as_fd(), Kind::ForkReply, &reply, &fds).is_ok()
}

/// Forks a child that runs `start` with `args` (its arguments' descriptors, which this
/// process closes once the child has them) and reports on `sock`.
fn fork_child(
    sock: OwnedFd,
    start: &[u8],
    args: Vec<OwnedFd>,
    ctrl: &OwnedFd,
    owner_fd: &OwnedFd,
    children: &mut HashMap<u32, Forked>,
) -> Result<u32, String> {
    // The child keeps only its own socket: not the control socket, not the other children's.
    let forked = sys::fork_then(&[ctrl.as_raw_fd(), owner_fd.as_raw_fd()], || {
        children.clear();
        let own = match sock.try_clone() {
            Ok(s) => s,
            Err(_) => return 70,
        };
        bootstrap::run_start(own, start, args, false)
    });
    let pid = forked.map_err(|e| e.to_string())?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| e.to_string())?;
    let _ = sys::set_nonblocking(sock.as_fd(), true);
    children.insert(
        pid,
        Forked {
            sock,
            pidfd,
            pending: None,
        },
    );
    Ok(pid)
}
