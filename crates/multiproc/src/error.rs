//! Error types: one `thiserror` enum per area, converging on [`Error`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A wait ran out of time: the one timeout of every area (a lock's `acquire`, a join, a
/// `recv`, a wait for a pool result). Each area's error carries it as its `Timeout` variant
/// (`WaitTimeout` for pools, whose `Timeout` is a task's own time limit), and converts from
/// it with `?`.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{SyncError, TimedOut};
/// let e = SyncError::from(TimedOut(Duration::from_millis(5)));
/// assert!(matches!(e, SyncError::Timeout(TimedOut(d)) if d == Duration::from_millis(5)));
/// assert_eq!(e.to_string(), "timed out after 5ms");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// A function named to run in another process is not registered with
/// `#[multiproc::func]` in this binary (or is a closure, which cannot be): the error of every
/// area that runs functions by name (processes, pools, the cluster pool). The message says
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", not_registered(&self.0))]
pub struct NotRegistered(pub String);

impl NotRegistered {
    /// The function's full path, as `std::any::type_name` reports it.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Errors of the serde codec used by every typed channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    #[error(transparent)]
    NotRegistered(#[from] NotRegistered),
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
    /// The child ran out of its memory limit
    /// ([`Builder::memory_limit`](crate::Builder::memory_limit)). `reported`: the child itself
    /// reported the failed allocation (its abort handler found `ENOMEM`): exact. Otherwise
    /// it was killed by `SIGABRT` under the limit, which is what a failed allocation does but
    /// also what an `abort` for another reason does: inferred, and the message says so. (The
    /// report is lost when `RUST_BACKTRACE` makes Rust print a backtrace before aborting.) A
    /// child that dies by another signal under the limit is [`Killed`](Self::Killed).
    #[error(
        "process {pid} ran out of its memory limit of {limit} bytes ({})",
        if *reported { "an allocation failed" } else { "inferred: it aborted under the limit; an abort for another reason looks the same" }
    )]
    MemoryLimit {
        /// Process id of the child.
        pid: u32,
        /// The limit in bytes.
        limit: u64,
        /// Whether the child reported the failed allocation (exact) rather than the cause
        /// being inferred from its abort.
        reported: bool,
    },
    /// The child used up its CPU-time limit
    /// ([`Builder::cpu_time_limit`](crate::Builder::cpu_time_limit)). Inferred from
    /// the signal that killed it (`SIGXCPU`, which the kernel sends at the limit and which
    /// another process could also send).
    #[error("process {pid} used up its CPU-time limit of {limit:?} (killed by SIGXCPU)")]
    CpuTimeLimit {
        /// Process id of the child.
        pid: u32,
        /// The limit (the kernel counts whole seconds, rounded up).
        limit: Duration,
    },
    /// An option that needs root (running the child as another user or group) was set in a
    /// process that is not root.
    #[error(
        "the `{option}` option needs root privileges (this process's effective user is not root)"
    )]
    NotRoot {
        /// The option.
        option: &'static str,
    },
    /// A wait ran out of time.
    #[error(transparent)]
    Timeout(#[from] TimedOut),
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

/// Errors of connections: pipes, listeners, clients and their handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed the connection (end of stream where a message was expected).
    #[error("the connection was closed by the peer")]
    Closed,
    /// The message did not fit the buffer given to `recv_bytes_into`; it is here whole.
    #[error("message of {} bytes does not fit the buffer", .0.len())]
    BufferTooShort(Vec<u8>),
    /// A peer announced a message larger than this end accepts.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The announced size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The peer sent bytes that are not a message: a truncated or impossible frame.
    #[error("bad frame from the peer: {0}")]
    BadFrame(String),
    /// File descriptors sent with the message could not all be taken (this process is at
    /// its limit of open files, or the peer sent more than one message may carry): the
    /// message is dropped, the connection stays in step for the next one.
    #[error(
        "the file descriptors sent with a message could not be received (too many open files?); \
         the message was dropped"
    )]
    DescriptorsLost,
    /// The handshake broke down: the peer sent something that is not part of the handshake
    /// (a peer without an authkey talking to one with), closed the connection in the middle,
    /// asked for a digest this build lacks, or was dropped unfinished to make room for
    /// other clients. A wrong key is [`AuthenticationFailed`](Self::AuthenticationFailed), a
    /// silent peer [`HandshakeTimeout`](Self::HandshakeTimeout).
    #[error("handshake failed: {0}")]
    Authentication(String),
    /// The peer does not know the key: its answer to our challenge was wrong, or it
    /// rejected our answer to its challenge.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The peer did not send its part of the handshake in time: a silent or stuck peer, or
    /// a peer without an authkey facing one with (it waits for a challenge that never comes,
    /// or never answers one).
    #[error(
        "handshake timed out: no {waiting_for} from the peer within {timeout:?} (a silent peer, or only one side uses an authkey?)"
    )]
    HandshakeTimeout {
        /// The handshake message that did not come.
        waiting_for: &'static str,
        /// The handshake's time limit.
        timeout: Duration,
    },
    /// A wait ran out of time.
    #[error(transparent)]
    Timeout(#[from] TimedOut),
    /// This end was opened write-only or read-only.
    #[error("this end of the connection is not {0}")]
    WrongDirection(&'static str),
    /// The address could not be understood.
    #[error(
        "bad address `{0}`: expected HOST:PORT, a socket path, or @name for an abstract socket"
    )]
    BadAddress(String),
    /// A value could not go through the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a task, a map or an executor itself can report: one type for every executor (the
/// process [`Pool`](crate::Pool), the closure pool, the [`ThreadPool`](crate::ThreadPool) and
/// the cluster pool of `multiproc-cluster`), so that code handling a failure does not care
/// where the task ran. Some kinds come from one backend only: [`WorkerDied`](Self::WorkerDied),
/// [`MemoryLimit`](Self::MemoryLimit) and [`CpuTimeLimit`](Self::CpuTimeLimit) need a worker
/// process; [`DeadLetter`](Self::DeadLetter), [`Expired`](Self::Expired),
/// [`BrokerLost`](Self::BrokerLost) and [`Broker`](Self::Broker) a broker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The worker running the task died (SIGKILL, a segfault in FFI code, `abort`, the OOM
    /// killer). Only its tasks fail; a replacement worker starts.
    #[error("worker {pid} died running the task (exit code {exitcode})")]
    WorkerDied {
        /// The worker's pid.
        pid: u32,
        /// Its exit code: negative for the signal that killed it.
        exitcode: i32,
    },
    /// The task ran its worker out of the workers' memory limit
    /// ([`PoolBuilder::memory_limit`](crate::PoolBuilder::memory_limit)); only this task fails
    /// and a replacement worker starts. `reported` as in
    /// [`ProcessError::MemoryLimit`](crate::ProcessError::MemoryLimit): exact when the worker
    /// reported the failed allocation, inferred from its abort otherwise. A worker killed by
    /// another signal under the limit (the kernel's OOM killer) is
    /// [`WorkerDied`](Self::WorkerDied).
    #[error(
        "worker {pid} ran out of its memory limit of {limit} bytes running the task ({})",
        if *reported { "an allocation failed" } else { "inferred: it aborted under the limit; an abort for another reason looks the same" }
    )]
    MemoryLimit {
        /// The worker's pid.
        pid: u32,
        /// The limit in bytes.
        limit: u64,
        /// Whether the worker reported the failed allocation (exact).
        reported: bool,
    },
    /// The task used up the pool's CPU-time limit per task
    /// ([`PoolBuilder::cpu_time_limit`](crate::PoolBuilder::cpu_time_limit)): its worker was
    /// killed by `SIGXCPU` (inferred from that signal) and replaced.
    #[error("the task used up its CPU-time limit of {limit:?} (worker {pid} killed by SIGXCPU)")]
    CpuTimeLimit {
        /// The worker's pid.
        pid: u32,
        /// The limit (whole seconds, rounded up).
        limit: Duration,
    },
    /// The task panicked; the worker survives.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task left its worker unable to go on (for example it closed the worker's
    /// descriptors): the task fails, the worker is replaced, and the tasks queued behind it run
    /// on another worker.
    #[error("the task broke its worker: {0}")]
    WorkerBroken(String),
    /// The task ran past the pool's task timeout: its worker was killed and replaced.
    #[error("task ran longer than {0:?}; its worker was killed")]
    Timeout(Duration),
    /// A wait for a result ran out of time (the task goes on).
    #[error("no result: {0}")]
    WaitTimeout(#[from] TimedOut),
    /// The pool was terminated before the task finished.
    #[error("the pool was terminated")]
    Terminated,
    /// The pool is closed: no new tasks.
    #[error("the pool is closed")]
    Closed,
    /// The worker initializer failed, as the worker reported it (its panic or error message;
    /// the error itself lived in the worker's process); the pool does not restart workers in
    /// a loop.
    #[error("worker initializer failed: {0}")]
    Initializer(String),
    /// Arguments or a result could not go through the codec (on this side, or in the
    /// worker, which reports its codec's words).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The function is not registered with `#[multiproc::func]`.
    #[error(transparent)]
    NotRegistered(#[from] NotRegistered),
    /// A bad argument, such as a chunk size of 0.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The worker could not run the task at all, as it reported it.
    #[error("the task failed on its worker: {0}")]
    Failed(String),
    /// Starting or talking to a worker failed: what was being done, and why (the OS error,
    /// or the [`ProcessError`] of a worker that did not start; shared, so that the error of
    /// one chunk can be each of its items').
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The task was cancelled before it started
    /// ([`AsyncResult::cancel`](crate::AsyncResult::cancel), or
    /// [`Executor::shutdown`](crate::Executor::shutdown) with `cancel_pending`); it never ran.
    #[error("the task was cancelled before it started")]
    Cancelled,
    /// The task killed the processes that ran it `tries` times: a broker set it aside (its
    /// dead-letter stream) instead of running it in a loop.
    #[error("the task killed its worker {tries} times and was dead-lettered: {last}")]
    DeadLetter {
        /// How many times it was tried.
        tries: u32,
        /// What happened the last time.
        last: String,
    },
    /// No worker started the task before its expiry; it will not run.
    #[error("no worker started the task within its expiry of {0:?}")]
    Expired(Duration),
    /// The broker could not be reached for long enough while the task waited for its result:
    /// it may or may not have run.
    #[error("the broker was lost: {0}")]
    BrokerLost(String),
    /// Talking to a broker failed (unreachable, refused, denied): its client's own error
    /// (for the cluster pool a `redis::RedisError`, which `source()` gives back; shared, so
    /// that one failure can be every waiting task's).
    #[error("broker: {0}")]
    Broker(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// The name [`TaskError`] had before every executor shared it.
pub type PoolError = TaskError;

impl TaskError {
    pub(crate) fn io<E: std::error::Error + Send + Sync + 'static>(
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |e| TaskError::Io {
            op,
            source: Arc::new(e),
        }
    }
}

/// Errors of queues.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Nothing to get (at once, or within the time limit).
    #[error("the queue is empty")]
    Empty,
    /// No room (at once, or within the time limit).
    #[error("the queue is full")]
    Full,
    /// The queue was closed: nothing more can be put, and a get on an empty closed queue
    /// returns this instead of waiting for ever.
    #[error("the queue is closed")]
    Closed,
    /// One item is larger than the queue's whole buffer.
    #[error("an item of {size} bytes does not fit a queue buffer of {limit} bytes")]
    TooLarge {
        /// The encoded item's size.
        size: usize,
        /// The buffer's size.
        limit: usize,
    },
    /// `task_done` called more times than items were put.
    #[error("task_done() called more times than there were items")]
    TooManyTaskDone,
    /// The item could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Errors of the cross-process synchronization primitives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A wait ran out of time.
    #[error(transparent)]
    Timeout(#[from] TimedOut),
    /// The process holding the lock died holding it. The lock was taken over by the caller;
    /// the data it protected may be half-updated.
    #[error("the owner of the lock (process {pid}) died holding it")]
    OwnerDied {
        /// The dead owner's pid.
        pid: u32,
    },
    /// `release` of a lock that is not locked.
    #[error("release of a lock that is not locked")]
    NotLocked,
    /// `release` of an `RLock` by a thread that does not own it.
    #[error("release of a lock owned by another thread or process")]
    NotOwner,
    /// A `BoundedSemaphore` released more times than acquired.
    #[error("semaphore released too many times (its bound is {bound})")]
    OverReleased {
        /// The semaphore's bound.
        bound: u32,
    },
    /// The barrier is broken (aborted, reset while waiting, or a wait timed out).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A value outside what the primitive accepts (for example a barrier of 0 parties).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Errors of [`SharedMemory`](crate::SharedMemory).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedMemoryError {
    /// A name that is not a shared memory name (empty, with a `/` inside, or too long).
    #[error("bad shared memory name `{0}`: one word without `/`, at most 250 bytes")]
    BadName(String),
    /// Shared memory of 0 bytes.
    #[error("shared memory of size 0")]
    ZeroSize,
    /// `create` of a name that exists.
    #[error("shared memory `{0}` exists already")]
    Exists(String),
    /// `open` of a name that does not exist (never made, or unlinked).
    #[error("no shared memory is named `{0}`")]
    NotFound(String),
    /// `open_sized` found another size.
    #[error("shared memory `{name}` is {size} bytes, not {expected}")]
    WrongSize {
        /// The name.
        name: String,
        /// Its size.
        size: usize,
        /// The size asked for.
        expected: usize,
    },
    /// A read or write outside the block.
    #[error("range {offset}+{len} outside {size} bytes")]
    OutOfRange {
        /// Where it starts.
        offset: usize,
        /// How many bytes.
        len: usize,
        /// The block's size.
        size: usize,
    },
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Errors of managers and their proxies (see [`manager`](crate::manager)).
///
/// Errors an object raised on the server come back as their own variant: a queue's as
/// [`Queue`](Self::Queue) (empty, full), a lock's, semaphore's or barrier's as
/// [`Sync`](Self::Sync) (timed out, not the owner, broken), the same errors as the local
/// objects'; transport problems as [`Connection`](Self::Connection) or
/// [`Closed`](Self::Closed). None of them leaves the server in a bad state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The manager shut down, or the connection to it was lost (its process died).
    #[error("the manager has shut down or is unreachable")]
    Closed,
    /// The manager process could not be started.
    #[error("cannot start the manager: {0}")]
    Start(String),
    /// The object no longer exists on the server (every reference to it was dropped), or the
    /// id never named one.
    #[error("object {0} does not exist on the manager")]
    UnknownObject(u64),
    /// The object has no such method.
    #[error("a `{kind}` object has no method `{method}`")]
    UnknownMethod {
        /// The object's kind.
        kind: String,
        /// The method asked for.
        method: String,
    },
    /// The server cannot create objects of this kind: a user type whose
    /// `#[multiproc::managed]` impl the server's binary does not contain, such as any user
    /// type asked of `multiproc manager serve`, which serves only the built-in objects.
    ///
    /// A server for user types is started from the user's own binary, the one with the impl
    /// ([`Manager::start`](crate::manager::Manager::start) does this by itself):
    ///
    /// ```
    /// use multiproc::manager::Manager;
    ///
    /// #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// struct Counter { n: u64 }
    ///
    /// #[multiproc::managed]
    /// impl Counter {
    ///     fn incr(&mut self) -> u64 { self.n += 1; self.n }
    /// }
    ///
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// // This binary contains `#[multiproc::managed] impl Counter`: its server creates them.
    /// let server = Manager::serve("127.0.0.1:0", b"secret")?; // e.g. "0.0.0.0:5000"
    ///
    /// // A client, from any process or machine that knows the key.
    /// let mgr = Manager::connect(server.address(), b"secret")?;
    /// let c = mgr.create(Counter::default())?;
    /// assert_eq!(c.incr()?, 1);
    /// mgr.shutdown()?;
    ///
    /// server.wait(); // returns once a client (here, `mgr`) shut the server down
    /// # Ok(()) }
    /// ```
    #[error(
        "the manager cannot create `{0}`: its server's binary does not contain this type's \
         `#[multiproc::managed]` impl (`multiproc manager serve` serves only the built-in \
         objects); serve user types from your own binary, the one with the impl: \
         `let server = multiproc::manager::Manager::serve(address, authkey)?; server.wait();`"
    )]
    UnknownKind(String),
    /// The arguments did not decode as the method's parameter types (the two sides disagree
    /// on the types).
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// A method of a user type panicked on the server; the object stays usable.
    #[error("the method panicked on the manager: {0}")]
    Panicked(String),
    /// A queue's error: [`QueueError::Empty`] when a `get` found no item (at once, or within
    /// its time limit), [`QueueError::Full`] when a `put` found no room,
    /// [`QueueError::TooManyTaskDone`].
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A synchronization object's error: [`SyncError::Timeout`] when a blocking call ran out
    /// of time, [`SyncError::NotLocked`] and [`SyncError::NotOwner`] for a release of a lock
    /// this thread does not hold, [`SyncError::OverReleased`], [`SyncError::BrokenBarrier`].
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A dict or namespace has no such key.
    #[error("no such key")]
    KeyNotFound,
    /// A list or array index past the end.
    #[error("index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The length at the time.
        len: u64,
    },
    /// `publish` with a name that is already taken.
    #[error("the name `{0}` is already published on the manager")]
    NameTaken(String),
    /// `lookup` of a name that is not published.
    #[error("no object is published as `{0}`")]
    NameNotFound(String),
    /// `lookup` found an object of another kind than the proxy asked for.
    #[error("`{name}` is a `{found}`, not a `{expected}`")]
    WrongKind {
        /// The published name.
        name: String,
        /// The kind the proxy type needs.
        expected: String,
        /// The kind of the published object.
        found: String,
    },
    /// A message larger than the server accepts.
    #[error("request of {size} bytes exceeds the manager's limit of {limit} bytes")]
    MessageTooLarge {
        /// The request's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An argument out of its domain (a barrier of 0 parties, ...), or a call the object
    /// refuses in its state (a condition's `wait` or `notify` without its lock).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Values could not go through the codec on this side.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Connecting or talking to the manager failed (wrong authkey, refused, ...).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A value did not convert between a Rust type and a Python value, on a manager reached
    /// over CPython's protocol: what a CPython server sent does not fit the proxy's Rust type
    /// (a `str` where a `u64` was expected, an `int` past `u8`), or a Rust value has no
    /// Python form (an enum variant holding data). The object is unchanged by a value that
    /// could not be sent.
    #[error("cannot convert between the Rust type and the Python value: {0}")]
    PyConversion(String),
    /// What this manager cannot do: a manager reached over CPython's protocol offers dicts,
    /// lists, queues and locks to Rust programs, and none of the multiproc-only parts
    /// (the other kinds, user types, published names, statistics, stopping the server).
    #[error("{what} is not available: {reason}")]
    Unsupported {
        /// What was asked for (`"Manager::namespace"`).
        what: String,
        /// Why not.
        reason: String,
    },
    /// A CPython manager raised an exception with no variant of its own here (its class and
    /// message), or sent a traceback (class `"RemoteError"`).
    #[error("the CPython manager raised {class}: {message}")]
    Python {
        /// The exception's class (`"ValueError"`, `"RemoteError"`).
        class: String,
        /// Its message (for a traceback, the whole text).
        message: String,
    },
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
    /// See [`ConnectionError`].
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// See [`IntoFdError`](crate::IntoFdError): a connection that could not give up its
    /// socket (it is inside).
    #[error(transparent)]
    IntoFd(Box<crate::connection::IntoFdError>),
    /// See [`SyncError`].
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// See [`QueueError`].
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// See [`SharedMemoryError`].
    #[error(transparent)]
    SharedMemory(#[from] SharedMemoryError),
    /// See [`TaskError`].
    #[error(transparent)]
    Pool(#[from] TaskError),
    /// See [`ManagerError`].
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// An operating system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<crate::connection::IntoFdError> for Error {
    fn from(e: crate::connection::IntoFdError) -> Error {
        Error::IntoFd(Box::new(e))
    }
}

/// `Result` with the crate's umbrella [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to tell a user whose function `name` is not registered: the attribute for a `fn`, the
/// ways that do run a closure for a closure.
fn not_registered(name: &str) -> String {
    if name.contains("{{closure}}") {
        format!(
            "`{name}` is a closure, and a closure cannot be registered to run in another \
             process: use `Pool::builder().build_closure(..)` for a pool, `Process::fork(..)` \
             for one process, or make it a `fn` with `#[multiproc::func]`"
        )
    } else {
        format!("function `{name}` is not registered: add `#[multiproc::func]` to its definition")
    }
}
