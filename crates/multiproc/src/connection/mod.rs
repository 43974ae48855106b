//! Connections: [`pipe`], [`Listener`]/[`Client`] over TCP and Unix sockets, and [`wait`].
//!
//! Wire-compatible with CPython's `multiprocessing.connection`: the same framing and the same
//! HMAC handshake (modern `{sha256}` and legacy MD5 peers), so a Rust process and a Python
//! process can talk unchanged. Unlike CPython, a handshake has a time limit (a peer with a key
//! against one without fails instead of hanging) and a listener runs the handshakes of all its
//! clients at once ([`Listener::accept`]), network connections bound the message size (256 MiB
//! by default: a peer announcing 2 GiB gets an error, not an allocation, and memory grows with
//! the bytes that arrive), and the listener backlog defaults to 128. Nothing received is ever executed: typed messages go
//! through the crate's serde codec, and a typed message is checked against the type the
//! receiver asks for (see [`Connection::send`]).

mod address;
mod auth;
mod conn;
mod inbox;
mod listener;
#[cfg(feature = "tokio")]
mod nonblocking;

use std::os::fd::BorrowedFd;
use std::time::Duration;

pub use address::{Address, ToAddress};
pub use conn::{Connection, DEFAULT_MAX_MESSAGE, IntoFdError};
pub use listener::{
    Client, DEFAULT_BACKLOG, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING_HANDSHAKES, Listener,
    ListenerBuilder,
};

use crate::error::ConnectionError;
use crate::sys;

/// Locks `m`; a panic elsewhere while it was held leaves state that is still whole (every
/// update under these locks is a single step).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pair of connected [`Connection`]s (Python's `Pipe`). With `duplex`, both ends send and
/// receive; without, the first end only receives and the second only sends.
///
/// Both ends are Unix stream sockets, so file descriptors (and other connections) can travel
/// through them, and either end can be passed to a child process.
///
/// ```
/// let (rx, tx) = multiproc::pipe(false)?;
/// tx.send(&vec![1u8, 2, 3])?;
/// assert_eq!(rx.recv::<Vec<u8>>()?, [1, 2, 3]);
/// assert!(rx.send(&0u8).is_err());
/// # Ok::<(), multiproc::ConnectionError>(())
/// ```
pub fn pipe(duplex: bool) -> Result<(Connection, Connection), ConnectionError> {
    let (a, b) = sys::socketpair()?;
    if duplex {
        return Ok((
            Connection::new(a, true, true, u64::MAX),
            Connection::new(b, true, true, u64::MAX),
        ));
    }
    sys::shutdown(std::os::fd::AsFd::as_fd(&a), true)?;
    sys::shutdown(std::os::fd::AsFd::as_fd(&b), false)?;
    Ok((
        Connection::new(a, true, false, u64::MAX),
        Connection::new(b, false, true, u64::MAX),
    ))
}

/// Waits until at least one of `objects` is ready, at most `timeout` (`None`: no limit), and
/// returns the indices of the ready ones (empty on timeout), as Python's
/// `multiprocessing.connection.wait`. Objects are any descriptors: connections
/// (`conn.as_fd()`), process sentinels (`process.sentinel()`), listeners, raw fds.
///
/// A connection is ready when a message (or the end of the stream) can be received; a
/// sentinel when its process has ended; a listener when a client is waiting.
///
/// One loop that serves several workers' connections and notices a worker that ended:
///
/// ```
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use multiproc::{Connection, Func};
///
/// #[multiproc::func]
/// fn report(conn: Connection, n: u64) {
///     conn.send(&(n * n)).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (ours, theirs) = multiproc::pipe(true)?;
/// let worker = report.spawn((theirs, 7))?;
/// let (idle, _other_end) = multiproc::pipe(true)?; // never written to
///
/// // The message is ready first (the sentinel may be too, once the worker has exited).
/// let ready = multiproc::wait(&[idle.as_fd(), ours.as_fd()], Some(Duration::from_secs(10)))?;
/// assert_eq!(ready, [1]);
/// assert_eq!(ours.recv::<u64>()?, 49);
///
/// // Nothing to read any more: what ends the wait is the worker's sentinel.
/// let ready = multiproc::wait(&[idle.as_fd(), worker.sentinel()], Some(Duration::from_secs(10)))?;
/// assert_eq!(ready, [1]);
/// assert_eq!(worker.exitcode(), Some(0));
///
/// // A time limit with nothing ready: an empty list.
/// assert!(multiproc::wait(&[idle.as_fd()], Some(Duration::from_millis(10)))?.is_empty());
/// # Ok(()) }
/// ```
pub fn wait(
    objects: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<Vec<usize>, ConnectionError> {
    // A connection holding a message it received already (behind another) is ready, and
    // then the others are only looked at.
    let ready = match inbox::ready_among(objects) {
        None => sys::poll_readable(objects, timeout)?,
        Some(buffered) => sys::poll_readable(objects, Some(Duration::ZERO))?
            .into_iter()
            .zip(buffered)
            .map(|(a, b)| a || b)
            .collect(),
    };
    Ok(ready
        .iter()
        .enumerate()
        .filter(|(_, r)| **r)
        .map(|(i, _)| i)
        .collect())
}
