//! Who this process is: `current_process()`, `parent_process()`, and the names of children.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::sys;

/// This process as multiproc sees it.
#[derive(Debug, Clone)]
pub(crate) struct Me {
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<ParentProcess>,
}

static ME: Mutex<Option<Me>> = Mutex::new(None);
static COUNTER: AtomicU32 = AtomicU32::new(0);

#[inline]
pub(crate) fn lock_me() -> MutexGuard<'static, Option<Me>> {
    ME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's name if multiproc started it; `None` in the main process, and while the
/// record is being written (never waits: the panic hook calls it).
pub(crate) fn child_name() -> Option<String> {
    let name = |me: &Option<Me>| me.as_ref().map(|m| m.name.clone());
    match ME.try_lock() {
        Ok(me) => name(&me),
        Err(std::sync::TryLockError::Poisoned(me)) => name(&me.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn me() -> Me {
    lock_me().clone().unwrap_or_else(|| Me {
        name: "MainProcess".into(),
        identity: Vec::new(),
        daemon: false,
        parent: None,
    })
}

/// The identity and default name of the next child: `Process-1`, `Process-1:2`, ...
pub(crate) fn next_child_identity() -> (Vec<u32>, String) {
    let mut identity = me().identity;
    identity.push(COUNTER.fetch_add(1, Ordering::Relaxed) + 1);
    let name = format!(
        "Process-{}",
        identity
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(":")
    );
    (identity, name)
}

/// Records, in a new child, who it is; opens a handle on the parent when it needs one and,
/// for a daemon, makes sure the child dies with it. `direct` says the parent is the OS parent
/// (spawn and fork), which lets us detect a parent that died before we got here.
///
/// A direct, non-daemonic child opens nothing: whether its parent lives is exactly whether
/// it is still our OS parent (an orphan is re-parented), and every syscall and page a forked
/// child touches is on the start-up path the parent waits for.
#[inline]
pub(crate) fn become_child(
    slot: &mut Option<Me>,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    parent_pid: u32,
    parent_name: String,
    direct: bool,
) {
    if COUNTER.load(Ordering::Relaxed) != 0 {
        COUNTER.store(0, Ordering::Relaxed);
    }
    let watch = if direct && !daemon {
        ParentWatch::OsParent
    } else {
        match sys::pidfd_open(parent_pid) {
            Ok(fd) => ParentWatch::Pidfd(Arc::new(fd)),
            Err(_) => ParentWatch::Gone,
        }
    };
    let parent_gone = match watch {
        ParentWatch::OsParent => false,
        ParentWatch::Gone => true,
        ParentWatch::Pidfd(_) => direct && sys::getppid() != parent_pid,
    };
    if daemon {
        if parent_gone {
            let _ = sys::send_signal(sys::getpid(), sys::SIGKILL);
        }
        if let ParentWatch::Pidfd(fd) = &watch {
            watch_parent(fd.clone(), parent_pid);
        }
    }
    *slot = Some(Me {
        name,
        identity,
        daemon,
        parent: Some(ParentProcess {
            pid: parent_pid,
            name: parent_name,
            watch: if parent_gone {
                ParentWatch::Gone
            } else {
                watch
            },
        }),
    });
}

/// A daemonic child ends (SIGKILL) as soon as its parent does, however the parent ended.
///
/// It watches the parent through `pidfd`. A task may close every descriptor of its process,
/// that one too (the poll then returns at once, as for an ended parent): a wake-up while the
/// parent still runs opens a fresh descriptor, or, when none can be had, looks every 100 ms.
fn watch_parent(pidfd: Arc<OwnedFd>, parent: u32) {
    let spawned = std::thread::Builder::new()
        .name("multiproc-parent-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut watched = Some(pidfd);
            loop {
                match &watched {
                    Some(fd) => {
                        let _ = sys::poll_readable(&[fd.as_fd()], None);
                    }
                    None => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
                if !sys::process_alive(parent) {
                    break;
                }
                // Closed under us: its number may belong to another file by now, so it is
                // never closed here again.
                std::mem::forget(watched.take());
                watched = sys::pidfd_open(parent).ok().map(Arc::new);
            }
            let _ = sys::send_signal(sys::getpid(), sys::SIGKILL);
        });
    if spawned.is_err() {
        // Without a watcher the daemon guarantee cannot hold: do not outlive the parent.
        let _ = sys::send_signal(sys::getpid(), sys::SIGKILL);
    }
}

/// This process: its name, pid and whether it is a daemon. See [`current_process`].
#[derive(Debug, Clone)]
pub struct CurrentProcess {
    name: String,
    pid: u32,
    daemon: bool,
    identity: Vec<u32>,
}

impl CurrentProcess {
    /// `MainProcess` in the main process, the name given at start in a child.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Whether this process was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
    /// Python's `_identity`: the position in the tree of processes (empty for the main
    /// process, `[1]` for its first child, `[1, 2]` for that child's second child).
    pub fn identity(&self) -> &[u32] {
        &self.identity
    }
}

/// The process this code runs in.
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.pid(), std::process::id());
/// ```
pub fn current_process() -> CurrentProcess {
    let m = me();
    CurrentProcess {
        name: m.name,
        pid: sys::getpid(),
        daemon: m.daemon,
        identity: m.identity,
    }
}

/// The process that started this one, as seen from a child. See [`parent_process`].
#[derive(Debug, Clone)]
pub struct ParentProcess {
    pid: u32,
    name: String,
    watch: ParentWatch,
}

/// How a child tells whether its parent still runs.
#[derive(Debug, Clone)]
enum ParentWatch {
    /// The parent is the OS parent: alive while `getppid()` still names it.
    OsParent,
    /// A pidfd opened at start (forkserver children, whose OS parent is the server; daemons,
    /// which watch it).
    Pidfd(Arc<OwnedFd>),
    /// The parent had ended before the child started.
    Gone,
}

impl ParentProcess {
    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether the parent is still running (exact: a pidfd or the OS parent link, never a
    /// reusable pid).
    pub fn is_alive(&self) -> bool {
        match &self.watch {
            ParentWatch::OsParent => sys::getppid() == self.pid,
            ParentWatch::Pidfd(fd) => matches!(
                sys::poll_readable(&[fd.as_fd()], Some(std::time::Duration::ZERO)).as_deref(),
                Ok([false])
            ),
            ParentWatch::Gone => false,
        }
    }
}

/// The parent of this process if multiproc started it, `None` in the main process.
pub fn parent_process() -> Option<ParentProcess> {
    me().parent
}
