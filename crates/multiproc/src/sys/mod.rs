//! The operating-system layer: the only place for OS calls and `unsafe`.
//!
//! The rest of the crate uses the names listed here, re-exported one by one from a module
//! per concern, and never a binding crate: this list is the whole of what multiproc asks of
//! an operating system. This implementation is Linux's (pidfds, memfds, futexes, `/proc`);
//! another OS provides the same names from modules of its own, as mio and ipc-channel do.
//! Errors are `io::Error`; the modules above map them to their own error enums.
//!
//! # The contract
//! - sockets ([`socket`]): [`socketpair`], [`socketpair_nonblocking`], [`packet_pair`],
//!   [`send_packet`], [`recv_packet`], [`send_all`], [`try_send`], [`recv_exact`],
//!   [`read_some`], [`recv_plain`], [`set_nonblocking`], [`poll`], [`poll_readable`];
//! - descriptors that travel with a message ([`fd_passing`]): [`send_with_fds`],
//!   [`recv_with_fds`], [`recv_keeping`], [`MAX_FDS_PER_MESSAGE`];
//! - listening and connecting sockets ([`net`]): [`SockTarget`], [`listen`], [`connect`],
//!   [`accept`], [`local_tcp_address`], [`shutdown`], [`send_parts`], [`try_send_parts`];
//! - processes ([`process`]): [`spawn_self`], [`fork_then`], [`CHILD_BOOTSTRAP_FD`],
//!   [`take_inherited_fd`], [`close_inline`], [`pidfd_open`], [`try_wait`], [`ExitStatus`],
//!   [`process_alive`], [`getpid`], [`gettid`], [`getppid`], [`exit_now`], [`at_exit`],
//!   [`remove_env`], [`affinity_cpu_count`], [`online_cpu_count`], [`watch_forks`],
//!   [`fork_generation`];
//! - limits and the child's surroundings ([`limits`]): [`Resource`], [`set_rlimit`],
//!   [`UNLIMITED`], [`allow_cpu_time`], [`resident_bytes`], [`set_nice`], [`change_dir`], [`edit_env`], [`is_root`], [`set_user`],
//!   [`set_group`], [`redirect`], [`pipe`], [`report_alloc_failure_on_abort`];
//! - signals ([`signal`]): [`send_signal`], [`pidfd_send_signal`], [`signal_name`],
//!   [`SIGTERM`], [`SIGKILL`], [`SIGINT`], [`SIGXCPU`], [`SIGABRT`], [`ignore_stop_signals`];
//! - shared memory ([`shm`]): [`Region`], [`memfd_with`];
//! - futexes ([`futex`]): [`futex_wait`], [`futex_wake`], and the list of words slept on
//!   without a time limit: [`while_listed`], [`wake_listed`], [`any_listed`],
//!   [`forget_listed`], [`LISTED_MAX`];
//! - doorbells for waiters in a reactor or `poll` ([`doorbell`](mod@doorbell)): [`doorbell()`],
//!   [`ring_doorbell`], [`silence_doorbell`];
//! - the shared clock ([`time`]): [`monotonic_ns`].
//!
//! # One binding crate
//! nix, wherever it serves. rustix only where it does not: futexes ([`futex`]) and pidfds
//! ([`pidfd_open`], [`pidfd_send_signal`]), which nix lacks, and the system calls a forked
//! child makes on its way to report ([`send_all`], [`close_inline`], the closes in
//! [`fork_then`]), made inline so that the child touches no C library page (each first touch
//! costs it a page fault). `_exit` and `atexit`, which nix does not wrap, go through its
//! re-export of libc.
#![allow(unsafe_code)]

use std::io;

use nix::errno::Errno;

mod doorbell;
mod fd_passing;
mod futex;
mod limits;
mod net;
mod process;
mod shm;
mod signal;
mod socket;
mod time;

pub(crate) use doorbell::{doorbell, ring as ring_doorbell, silence as silence_doorbell};
pub(crate) use fd_passing::{
    MAX_FDS_PER_MESSAGE, Received, recv_keeping, recv_with_fds, send_with_fds,
};
#[cfg(test)]
pub(crate) use futex::is_listed;
pub(crate) use futex::{
    LISTED_MAX, any_listed, forget_listed, futex_wait, futex_wake, wake_listed, while_listed,
};
pub use limits::Resource;
pub(crate) use limits::{
    UNLIMITED, allow_cpu_time, change_dir, edit_env, is_root, pipe, redirect,
    report_alloc_failure_on_abort, resident_bytes, set_group, set_nice, set_rlimit, set_user,
};
#[cfg(feature = "tokio")]
pub(crate) use net::try_send_parts;
pub(crate) use net::{
    SockTarget, accept, connect, listen, local_tcp_address, send_parts, shutdown,
};
pub(crate) use process::{
    CHILD_BOOTSTRAP_FD, ExitStatus, affinity_cpu_count, at_exit, close_inline, exit_now,
    fork_generation, fork_then, getpid, getppid, gettid, online_cpu_count, pidfd_open,
    process_alive, remove_env, spawn_self, take_inherited_fd, try_wait, watch_forks,
};
pub(crate) use shm::{Region, memfd_with};
pub(crate) use signal::{
    SIGABRT, SIGINT, SIGKILL, SIGTERM, SIGXCPU, ignore_stop_signals, pidfd_send_signal,
    send_signal, signal_name,
};
pub(crate) use socket::{
    packet_pair, poll, poll_readable, read_some, recv_exact, recv_packet, recv_plain, send_all,
    send_packet, set_nonblocking, socketpair, socketpair_nonblocking, try_send,
};
pub(crate) use time::monotonic_ns;

/// The `io::Error` of a binding crate's error number.
fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
