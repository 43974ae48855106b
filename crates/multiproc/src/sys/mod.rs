//! The operating-system layer: the only place for OS calls and `unsafe`.
//!
//! # Required items
//! Every backend provides the same names (as mio and ipc-channel do), so another OS is one
//! more module:
//! - sockets: [`socketpair`], [`send_with_fds`], [`recv_with_fds`], [`send_all`],
//!   [`try_send`], [`recv_exact`], [`read_some`], [`set_nonblocking`], [`poll_readable`];
//! - processes: [`spawn_self`], [`fork_then`], [`pidfd_open`], [`try_wait`], [`send_signal`],
//!   [`exit_now`], [`at_exit`], [`getpid`], [`getppid`], [`remove_env`], [`signal_name`];
//! - machine facts: [`affinity_cpu_count`].
//!
//! Errors are `io::Error`; the modules above map them to their own error enums.
#![allow(unsafe_code)]

mod net;
mod shm;
mod unix;

pub(crate) use net::*;
pub(crate) use shm::*;
pub(crate) use unix::*;

/// Nanoseconds on the system's monotonic clock: the same clock in every process of the machine,
/// so a time one process writes to shared memory means the same to another.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
