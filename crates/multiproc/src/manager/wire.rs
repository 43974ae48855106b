//! The manager protocol: requests and replies, encoded by [`codec`] inside connection frames.
//!
//! Every connection starts with [`Request::Hello`]; then each request gets exactly one
//! reply, `Result<bytes, Fault>`. A request names an object by id and a method by name from
//! the object's fixed set; nothing received is executed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{ManagerError, QueueError, SyncError};

/// Who holds a lock: a client session and a thread in it.
pub(crate) type Owner = (u128, u64);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request<'a> {
    /// Joins (or opens) client session `session`; the reply is a [`Hello`].
    Hello { session: u128 },
    /// Creates an object of `kind` from `init`; the reply is its id, referenced once by the
    /// session.
    Create {
        kind: &'a str,
        #[serde(with = "serde_bytes")]
        init: &'a [u8],
    },
    /// Calls `method` of object `id`; `thread` identifies the calling thread (lock owner).
    Call {
        id: u64,
        method: &'a str,
        thread: u64,
        #[serde(with = "serde_bytes")]
        args: &'a [u8],
    },
    /// One more reference from this session.
    Incref { id: u64 },
    /// One reference less from this session.
    Decref { id: u64 },
    /// Keeps the object alive as long as this session lives (it was sent to another process).
    Pin { id: u64 },
    /// Publishes object `id` under `name` (the name holds a reference).
    Publish { name: &'a str, id: u64 },
    /// The id and kind published under `name`, referenced once more by the session.
    Lookup { name: &'a str },
    /// Removes a published name.
    Unpublish { name: &'a str },
    /// Server statistics.
    Stats,
    /// Stops the server.
    Shutdown,
}

/// The reply to [`Request::Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub pid: u32,
    pub max_message: u64,
}

/// What the server reports about itself ([`Manager::stats`](super::Manager::stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Objects alive.
    pub objects: u64,
    /// Client sessions connected (one per process using the manager).
    pub sessions: u64,
    /// Open connections.
    pub connections: u64,
    /// Published names.
    pub names: u64,
}

/// An error as the server reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Fault {
    UnknownObject(u64),
    UnknownMethod {
        kind: String,
        method: String,
    },
    UnknownKind(String),
    BadArguments(String),
    Panicked(String),
    /// A blocking call ran out of the time it was given.
    Timeout(Duration),
    Empty,
    Full,
    TooManyTaskDone,
    KeyNotFound,
    IndexOutOfRange {
        index: u64,
        len: u64,
    },
    NameTaken(String),
    NameNotFound(String),
    NotLocked,
    NotOwner,
    OverReleased {
        bound: u64,
    },
    BrokenBarrier,
    Invalid(String),
    NoSession,
    ShuttingDown,
}

impl From<Fault> for ManagerError {
    /// The client-side error: a queue's and a synchronization object's as the local ones'.
    fn from(fault: Fault) -> ManagerError {
        match fault {
            Fault::UnknownObject(id) => ManagerError::UnknownObject(id),
            Fault::UnknownMethod { kind, method } => ManagerError::UnknownMethod { kind, method },
            Fault::UnknownKind(k) => ManagerError::UnknownKind(k),
            Fault::BadArguments(m) => ManagerError::BadArguments(m),
            Fault::Panicked(m) => ManagerError::Panicked(m),
            Fault::Timeout(t) => SyncError::Timeout(t).into(),
            Fault::Empty => QueueError::Empty.into(),
            Fault::Full => QueueError::Full.into(),
            Fault::TooManyTaskDone => QueueError::TooManyTaskDone.into(),
            Fault::KeyNotFound => ManagerError::KeyNotFound,
            Fault::IndexOutOfRange { index, len } => ManagerError::IndexOutOfRange { index, len },
            Fault::NameTaken(n) => ManagerError::NameTaken(n),
            Fault::NameNotFound(n) => ManagerError::NameNotFound(n),
            Fault::NotLocked => SyncError::NotLocked.into(),
            Fault::NotOwner => SyncError::NotOwner.into(),
            Fault::OverReleased { bound } => SyncError::OverReleased {
                bound: u32::try_from(bound).unwrap_or(u32::MAX),
            }
            .into(),
            Fault::BrokenBarrier => SyncError::BrokenBarrier.into(),
            Fault::Invalid(m) => ManagerError::Invalid(m),
            Fault::NoSession | Fault::ShuttingDown => ManagerError::Closed,
        }
    }
}

/// Decodes the arguments of a call; bytes left over mean the caller sent other types.
pub(crate) fn args<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Fault> {
    codec::decode_borrowed(bytes).map_err(|e| Fault::BadArguments(e.to_string()))
}

/// Encodes the result of a call.
pub(crate) fn ret<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Fault> {
    codec::encode(value).map_err(|e| Fault::Invalid(format!("cannot encode the result: {e}")))
}
