//! Error types: one `thiserror` enum per area, converging on [`Error`].

use std::io;
use std::time::Duration;

/// Errors of the serde codec used by every typed channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A value could not be serialized (for example a map with non-string keys in a
    /// format that needs them, or a file descriptor outside a channel that can carry it).
    #[error("cannot serialize value: {0}")]
    Encode(String),
    /// Received bytes do not decode as the expected type (type mismatch between the two
    /// ends, truncated or corrupted data).
    #[error("cannot deserialize value: {0}")]
    Decode(String),
}

/// Errors of processes: starting, joining, and what a child reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The function named for a spawned child is not in this binary's registry.
    #[error(
        "function `{name}` is not registered: add `#[multiproc::func]` to its definition \
         (closures can only run with `Process::fork`)"
    )]
    NotRegistered {
        /// Full path of the function as `std::any::type_name` reports it.
        name: String,
    },
    /// The child panicked; the message is the panic payload.
    #[error("process {pid} panicked: {message}")]
    Panicked {
        /// Process id of the child.
        pid: u32,
        /// The panic message.
        message: String,
    },
    /// The child exited (for example through `std::process::exit`) before returning a value.
    #[error("process {pid} exited with code {code} before returning a result")]
    Exited {
        /// Process id of the child.
        pid: u32,
        /// The exit code.
        code: i32,
    },
    /// The child was killed by a signal before returning a value.
    #[error("process {pid} was killed by signal {signal} ({})", crate::sys::signal_name(*signal))]
    Killed {
        /// Process id of the child.
        pid: u32,
        /// The signal number.
        signal: i32,
    },
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The child could not start its function (a bootstrap problem in the child).
    #[error("process {pid} failed to start: {message}")]
    Bootstrap {
        /// Process id of the child.
        pid: u32,
        /// What went wrong, as the child reported it.
        message: String,
    },
    /// This process was started as a multiproc child but its bootstrap never ran.
    #[error(
        "this process was started by multiproc but its bootstrap did not run: put \
         `#[multiproc::main]` on `main` or call `multiproc::init()` as its first line"
    )]
    NotBootstrapped,
    /// The result was already taken by an earlier `join`.
    #[error("the result of process {pid} was already taken")]
    ResultTaken {
        /// Process id of the child.
        pid: u32,
    },
    /// Arguments or result could not go through the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An operating system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ProcessError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| ProcessError::Io { op, source }
    }
}

/// The umbrella error of the crate: every area's error converts into it with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`ProcessError`].
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// See [`CodecError`].
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `Result` with the crate's umbrella [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
