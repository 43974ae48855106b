//! How a child is set up before its function runs: resource limits, niceness, working
//! directory, environment, user and group, and where its standard output and error go.
//!
//! The parent writes a [`Setup`] into the start message; the child applies it ([`apply`])
//! after the fork (or the re-run's bootstrap) and before any user code, under every start
//! method. With no option set there is no `Setup` at all and nothing is done.
//!
//! # How limits are enforced, and what is exact
//!
//! Limits are `setrlimit` limits of the child ([`Enforcement::Rlimit`]), which every Linux
//! has. A cgroup v2 hierarchy would also bound the page cache and the child's own children,
//! but this version does not use one; [`Limits::enforcement`] says why, naming what this
//! machine has.
//!
//! - The memory limit is `RLIMIT_DATA`: the heap and every private writable mapping
//!   (allocations, thread stacks), not code, files mapped read-only or shared memory. An
//!   allocation past it fails; Rust then aborts. The child's abort handler sees `ENOMEM` in
//!   `errno` (left there by the failed `malloc`) and reports the memory limit to the parent
//!   before exiting: [`ProcessError::MemoryLimit`](crate::error::ProcessError::MemoryLimit)
//!   with `reported: true` is exact. When `RUST_BACKTRACE` is set, Rust prints a backtrace
//!   between the failure and the abort, which changes `errno`: the child then dies by
//!   `SIGABRT` unreported, and the parent infers the memory limit from that signal
//!   (`reported: false`; an `abort` for another reason under a memory limit looks the
//!   same, and the error message says so). A child that dies by another signal under a
//!   memory limit (a stack that cannot grow is a `SIGSEGV`; the kernel's OOM killer sends
//!   `SIGKILL`) is reported by its signal, as
//!   [`ProcessError::Killed`](crate::error::ProcessError::Killed): the cause cannot be told
//!   apart from the outside.
//! - The CPU-time limit is `RLIMIT_CPU` (whole seconds, rounded up): the kernel sends
//!   `SIGXCPU` at the limit and `SIGKILL` a second later. A child killed by `SIGXCPU` under a
//!   CPU-time limit is reported as
//!   [`ProcessError::CpuTimeLimit`](crate::error::ProcessError::CpuTimeLimit): inferred from the
//!   signal, which another process could also send.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::{self, Kind, Outcome};
use crate::sys::{self, Resource};

/// Where a child's standard output or standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Output {
    /// The parent's stream (the default).
    #[default]
    Inherit,
    /// Nowhere (`/dev/null`).
    Null,
    /// Kept by the parent, at most the builder's capture limit of the most recent bytes (the
    /// rest is counted and dropped): read it with [`Process::output`](super::Process::output).
    Capture,
    /// Written to the parent's stream a whole line at a time, each line prefixed with
    /// `[name pid] `, so that the lines of many children never mix. [`Process::join`](super::Process::join)
    /// writes out the child's last lines before it returns; a child whose handle was dropped
    /// may lose its last lines if this process ends first.
    Prefixed,
}

impl Output {
    /// Whether the child's stream goes through a pipe to this process.
    pub(crate) fn piped(self) -> bool {
        matches!(self, Output::Capture | Output::Prefixed)
    }
}

/// How a child is set up before its function runs (see the module docs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Setup {
    pub(crate) memory_limit: Option<u64>,
    pub(crate) cpu_time_limit: Option<Duration>,
    pub(crate) rlimits: Vec<(Resource, u64, u64)>,
    pub(crate) nice: Option<i32>,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) env_clear: bool,
    /// In order; `None` removes the variable.
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) user: Option<u32>,
    pub(crate) group: Option<u32>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
}

/// Bytes of each captured stream kept by default.
pub(crate) const DEFAULT_CAPTURE_LIMIT: usize = 1 << 20;

impl Setup {
    /// Whether no option is set: then no `Setup` travels at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.memory_limit.is_none()
            && self.cpu_time_limit.is_none()
            && self.rlimits.is_empty()
            && self.nice.is_none()
            && self.current_dir.is_none()
            && !self.env_clear
            && self.env.is_empty()
            && self.user.is_none()
            && self.group.is_none()
            && self.stdout == Output::Inherit
            && self.stderr == Output::Inherit
    }

    /// Refuses what cannot work from this process: user and group need root.
    pub(crate) fn check(&self) -> Result<(), crate::error::ProcessError> {
        for (option, set) in [
            ("user", self.user.is_some()),
            ("group", self.group.is_some()),
        ] {
            if set && !sys::is_root() {
                return Err(crate::error::ProcessError::NotRoot { option });
            }
        }
        Ok(())
    }

    /// The CPU-time limit in force: the builder's, or a soft `RLIMIT_CPU` given directly.
    pub(crate) fn cpu_limit(&self) -> Option<Duration> {
        self.cpu_time_limit.or_else(|| {
            self.rlimits
                .iter()
                .rev()
                .find(|(r, _, _)| *r == Resource::Cpu)
                .map(|(_, soft, _)| Duration::from_secs(*soft))
        })
    }

    /// What [`Limits`] reports, if any limit is set.
    pub(crate) fn limits(&self) -> Option<Limits> {
        if self.memory_limit.is_none() && self.cpu_limit().is_none() && self.rlimits.is_empty() {
            return None;
        }
        Some(Limits {
            memory: self.memory_limit,
            cpu_time: self.cpu_limit(),
            enforcement: Enforcement::Rlimit {
                why: cgroup_unused_reason().to_string(),
            },
        })
    }
}

/// The limits a child runs under and how they are enforced: see [`Process::limits`](super::Process::limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    memory: Option<u64>,
    cpu_time: Option<Duration>,
    enforcement: Enforcement,
}

impl Limits {
    /// The memory limit in bytes, if one is set.
    pub fn memory(&self) -> Option<u64> {
        self.memory
    }
    /// The CPU-time limit, if one is set.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_time
    }
    /// How the limits are enforced.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }
}

/// How a child's limits are enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enforcement {
    /// `setrlimit` limits of the child (see [`Resource`]); `why` says why not a cgroup.
    Rlimit {
        /// What this machine has, and why no cgroup is used.
        why: String,
    },
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enforcement::Rlimit { why } => write!(f, "rlimits ({why})"),
        }
    }
}

/// Why limits are not put in a cgroup here: what this machine has (looked at once).
pub(crate) fn cgroup_unused_reason() -> &'static str {
    static REASON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REASON.get_or_init(|| match cgroup2_memory_hierarchy() {
        Ok(path) => format!(
            "a writable cgroup2 hierarchy with the memory controller is at {}, but this \
             version enforces limits with rlimits only",
            path.display()
        ),
        Err(why) => why,
    })
}

/// The writable cgroup2 hierarchy, with the memory controller enabled, that this process is
/// in; `Err` says what is missing.
pub fn cgroup2_memory_hierarchy() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    // Fields: ... mount-point (5th) ... ` - ` fstype source options.
    let mount = mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    });
    let Some(mount) = mount else {
        return Err("no cgroup2 file system is mounted".into());
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let dir = mount.join(relative);
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the cgroup2 hierarchy at {} has no memory controller (controllers: `{}`; \
             a hybrid set-up keeps it in cgroup v1)",
            dir.display(),
            controllers.trim()
        ));
    }
    let probe = std::fs::metadata(dir.join("cgroup.procs"));
    match probe {
        Ok(m) if !m.permissions().readonly() => Ok(dir),
        _ => Err(format!("{} is not writable", dir.display())),
    }
}

/// The descriptors of the child's piped streams, `(stdout, stderr)`.
pub(crate) type StreamEnds = (Option<OwnedFd>, Option<OwnedFd>);

/// The child's side: applies `setup` in this new child, before its function runs. `report`
/// is the channel to the parent; `streams` the write ends of its piped streams.
pub(crate) fn apply(
    setup: &Setup,
    report: BorrowedFd<'_>,
    streams: StreamEnds,
) -> Result<(), String> {
    let (out, err) = streams;
    for (output, end, target, what) in [
        (setup.stdout, out, 1, "standard output"),
        (setup.stderr, err, 2, "standard error"),
    ] {
        let end = match (output, end) {
            (Output::Null, _) => Some(OwnedFd::from(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .map_err(|e| format!("cannot open /dev/null for {what}: {e}"))?,
            )),
            (o, Some(end)) if o.piped() => Some(end),
            _ => None,
        };
        if let Some(end) = end {
            sys::redirect(end.as_fd(), target)
                .map_err(|e| format!("cannot redirect {what}: {e}"))?;
        }
    }
    if let Some(gid) = setup.group {
        sys::set_group(gid).map_err(|e| format!("cannot run as group {gid}: {e}"))?;
    }
    if let Some(uid) = setup.user {
        sys::set_user(uid).map_err(|e| format!("cannot run as user {uid}: {e}"))?;
    }
    if let Some(dir) = &setup.current_dir {
        sys::change_dir(dir)
            .map_err(|e| format!("cannot change directory to {}: {e}", dir.display()))?;
    }
    if setup.env_clear || !setup.env.is_empty() {
        let changes: Vec<_> = setup
            .env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_deref()))
            .collect();
        sys::edit_env(setup.env_clear, &changes);
    }
    if let Some(nice) = setup.nice {
        sys::set_nice(nice).map_err(|e| format!("cannot set niceness {nice}: {e}"))?;
    }
    if let Some(bytes) = setup.memory_limit {
        sys::set_rlimit(Resource::Data, bytes, bytes)
            .map_err(|e| format!("cannot set the memory limit of {bytes} bytes: {e}"))?;
        let frame = wire::frame_bytes(
            Kind::Outcome,
            &crate::codec::encode(&Outcome::MemoryLimit).map_err(|e| e.to_string())?,
        );
        sys::report_alloc_failure_on_abort(report, frame)
            .map_err(|e| format!("cannot watch for allocation failures: {e}"))?;
    }
    if let Some(limit) = setup.cpu_time_limit {
        let soft = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
        let soft = soft.max(1);
        sys::set_rlimit(Resource::Cpu, soft, soft + 1)
            .map_err(|e| format!("cannot set the CPU-time limit of {limit:?}: {e}"))?;
    }
    for &(resource, soft, hard) in &setup.rlimits {
        sys::set_rlimit(resource, soft, hard)
            .map_err(|e| format!("cannot set {resource:?} to ({soft}, {hard}): {e}"))?;
    }
    Ok(())
}
