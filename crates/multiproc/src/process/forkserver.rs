//! The forkserver: a helper started from a clean state (the same executable re-run, stopped
//! before `main`, single-threaded) that forks children on request. Children get fork speed
//! without inheriting the parent's threads, locks or memory. It ends when its owner ends.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::handle::{self, Process};
use super::wire::{self, Kind, Start};
use super::{bootstrap, panics, registry};
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

/// In a forked child: the parent's forkserver is not ours; close our copy of its socket
/// (so that it still ends when its owner does) with an inline system call.
pub(crate) fn forget_in_child(guard: &mut Option<Client>) {
    if let Some(client) = guard.take() {
        sys::close_inline(client.sock);
    }
}

fn start_server() -> std::io::Result<Client> {
    let (ours, theirs) = sys::socketpair()?;
    let pid = sys::spawn_self(theirs.as_fd(), (wire::ENV, "forkserver"))?;
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

/// The parent's side of the forkserver start method: asks the forkserver for a child that
/// runs the encoded start message `payload` (with `fds`) and reports on `theirs`, and
/// watches it on `ours`. The start message travels with the request: the child has it in
/// memory.
pub(super) fn launch<R>(
    ours: OwnedFd,
    theirs: OwnedFd,
    start: Start,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
    streams: super::builder::Streams,
) -> Result<Process<R>, ProcessError> {
    let (pid, pidfd) = request(theirs.as_fd(), payload, fds)?;
    handle::register_started(pid, start, Some(pidfd), ours, None, streams)
}

/// Asks the forkserver for a child that runs the encoded start message `start` (with `fds`,
/// its arguments' descriptors) and reports on `child_sock`; returns its pid and a
/// pidfd for it (opened by the forkserver before it could reap the child, so it cannot
/// miss a child that ends at once). A forkserver that died is replaced once.
fn request(
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
                    kill_and_reap(old.pid);
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

/// How long the forkserver stays idle before it forks a [`Spare`].
const SPARE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(1);

/// A child forked ahead of the next request, waiting for its start message on `chan`: the
/// fork (and the child's first page faults) happen while nobody waits, not on a request's
/// critical path. It exits when `chan` closes without a message (the forkserver is gone).
struct Spare {
    pid: u32,
    pidfd: OwnedFd,
    chan: OwnedFd,
}

/// The forkserver's loop (in the re-run executable, before `main`). Never returns.
pub(crate) fn serve(ctrl: OwnedFd) -> ! {
    // What every child looks up or writes to first, made once here and inherited: built in
    // each child, the table of registered functions (a hash of every name, allocations)
    // and the standard output handle (its buffer) cost a dozen page faults per child.
    registry::warm();
    let _ = std::io::stdout();
    panics::install();
    let owner = sys::getppid();
    let Ok(owner_fd) = sys::pidfd_open(owner) else {
        sys::exit_now(0)
    };
    let mut children: HashMap<u32, Forked> = HashMap::new();
    let mut spare: Option<Spare> = None;
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
        // Without a spare, wait a little for the next request before forking one: in a burst
        // or a tight loop of requests, a spare forked right away would only compete for the
        // CPU with the child just started.
        let idle = (spare.is_none()).then_some(SPARE_AFTER_IDLE);
        let Ok(ready) = sys::poll(&set, idle) else {
            sys::exit_now(1)
        };
        drop(set);
        if ready[1] {
            sys::exit_now(0); // the owner is gone
        }
        if ready[0] && !handle_request(&ctrl, &owner_fd, &mut children, &mut spare) {
            sys::exit_now(0);
        }
        if spare.is_none() && !ready.contains(&true) {
            spare = fork_spare(&ctrl, &owner_fd, &mut children);
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

/// In a new child of the forkserver: the other children's descriptors are the forkserver's,
/// not ours (closed with inline system calls: each C library page is a fault here).
fn forget_siblings(children: &mut HashMap<u32, Forked>) {
    for (_, forked) in children.drain() {
        sys::close_inline(forked.sock);
        sys::close_inline(forked.pidfd);
    }
}

/// Forks a spare child (see [`Spare`]); `None` if that fails (requests then fork on demand).
fn fork_spare(
    ctrl: &OwnedFd,
    owner_fd: &OwnedFd,
    children: &mut HashMap<u32, Forked>,
) -> Option<Spare> {
    let (ours, theirs) = sys::socketpair().ok()?;
    let close = [ctrl.as_raw_fd(), owner_fd.as_raw_fd(), ours.as_raw_fd()];
    let pid = sys::fork_then(&close, || {
        forget_siblings(children);
        match wire::read_frame(theirs.as_fd(), u64::MAX) {
            Ok((Kind::Start, start, fds)) => {
                let mut fds = fds.into_iter();
                match fds.next() {
                    Some(sock) => bootstrap::run_start(sock.as_fd(), &start, fds.collect(), false),
                    None => 70,
                }
            }
            _ => 0, // the forkserver went away first
        }
    })
    .ok()?;
    drop(theirs);
    match sys::pidfd_open(pid) {
        Ok(pidfd) => Some(Spare {
            pid,
            pidfd,
            chan: ours,
        }),
        Err(_) => {
            kill_and_reap(pid);
            None
        }
    }
}

/// Hands a request to the spare child: it becomes the requested child. `Err` gives the
/// request back (the spare is gone: it is reaped and another one is made later).
fn use_spare(
    spare: Spare,
    sock: OwnedFd,
    start: &[u8],
    args: Vec<OwnedFd>,
    children: &mut HashMap<u32, Forked>,
) -> Result<u32, (OwnedFd, Vec<OwnedFd>)> {
    let mut fds: Vec<BorrowedFd<'_>> = vec![sock.as_fd()];
    fds.extend(args.iter().map(|f| f.as_fd()));
    if wire::write_frame(spare.chan.as_fd(), Kind::Start, start, &fds).is_err() {
        drop(fds);
        kill_and_reap(spare.pid);
        return Err((sock, args));
    }
    drop(fds);
    watch(children, spare.pid, spare.pidfd, sock);
    Ok(spare.pid)
}

/// Ends a child of ours that will not be used, without leaving a zombie (bounded wait).
fn kill_and_reap(pid: u32) {
    let _ = sys::send_signal(pid, sys::SIGKILL);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while matches!(sys::try_wait(pid), Ok(None)) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Watches a started child until it ends, to send its exit status on `sock`.
fn watch(children: &mut HashMap<u32, Forked>, pid: u32, pidfd: OwnedFd, sock: OwnedFd) {
    let _ = sys::set_nonblocking(sock.as_fd(), true);
    children.insert(
        pid,
        Forked {
            sock,
            pidfd,
            pending: None,
        },
    );
}

/// Handles one request; `false` when the owner closed the control socket.
fn handle_request(
    ctrl: &OwnedFd,
    owner_fd: &OwnedFd,
    children: &mut HashMap<u32, Forked>,
    spare: &mut Option<Spare>,
) -> bool {
    // The owner is trusted (it started us): no size limit on its start messages.
    let (kind, start, fds) = match wire::read_frame(ctrl.as_fd(), u64::MAX) {
        Ok(frame) => frame,
        Err(_) => return false,
    };
    let mut fds = fds.into_iter();
    let (reply, pidfd): (Result<u32, String>, _) = match (kind, fds.next()) {
        (Kind::ForkRequest, Some(sock)) => {
            let args: Vec<OwnedFd> = fds.collect();
            let started = match spare.take() {
                Some(s) => use_spare(s, sock, &start, args, children),
                None => Err((sock, args)),
            };
            let started = match started {
                Ok(pid) => Ok(pid),
                Err((sock, args)) => fork_child(sock, &start, args, ctrl, owner_fd, children),
            };
            match started {
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
        forget_siblings(children);
        bootstrap::run_start(sock.as_fd(), start, args, false)
    });
    let pid = forked.map_err(|e| e.to_string())?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| e.to_string())?;
    watch(children, pid, pidfd, sock);
    Ok(pid)
}
