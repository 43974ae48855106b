//! The manager protocol: requests and replies, encoded by [`codec`] inside connection frames.
//!
//! Every connection starts with [`Request::Hello`]; then each request gets exactly one
//! reply, `Result<bytes, Fault>`. A request names an object by id and a method by name from
//! the object's fixed set; nothing received is executed.
//!
//! The built-in kinds and their methods are declared once, here (`calls!`): the proxies
//! send these calls and the objects match on them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec;
use crate::error::{CodecError, ManagerError, QueueError, SyncError};

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
    /// The kind of object `id`, referenced once more by the session (a proxy received
    /// inside a CPython client's value).
    Adopt { id: u64 },
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
            Fault::Timeout(t) => SyncError::Timeout(crate::TimedOut(t)).into(),
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

/// A call from a fixed set (a built-in kind's methods, or the built-in kinds themselves): its
/// name on the wire, and its arguments encoded as the tuple of its parameters, as the proxy of
/// a user type encodes a method's.
pub(crate) trait Call {
    /// The name of the method (or kind).
    fn name(&self) -> &'static str;
    /// The arguments, encoded.
    fn encode_args(&self) -> Result<Vec<u8>, CodecError>;
}

/// Declares sets of calls once for both sides: per set an enum with a variant per method,
/// each named on the wire by its string. A proxy builds a variant and sends it ([`Call`]);
/// the server decodes the name and the arguments back into the variant (`decode`) and matches
/// on it, so the two cannot disagree on a name or on the types of the arguments.
macro_rules! calls {
    ($(
        $(#[$doc:meta])*
        enum $name:ident $(<$lt:lifetime>)? {
            $($method:literal => $var:ident $({ $($field:ident: $ty:ty),* $(,)? })?,)*
        }
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) enum $name $(<$lt>)? {
            $($var $({ $($field: $ty),* })?,)*
        }

        impl $(<$lt>)? Call for $name $(<$lt>)? {
            fn name(&self) -> &'static str {
                match self {
                    $(Self::$var { .. } => $method,)*
                }
            }

            fn encode_args(&self) -> Result<Vec<u8>, CodecError> {
                match self {
                    $(Self::$var $({ $($field),* })? => codec::encode(&($($($field,)*)?)),)*
                }
            }
        }

        impl $(<$lt>)? $name $(<$lt>)? {
            /// The call of `method` with the encoded `bytes`; `None` for a method not in the
            /// set.
            pub(crate) fn decode(
                method: &str,
                bytes: &$($lt)? [u8],
            ) -> Result<Option<Self>, Fault> {
                Ok(Some(match method {
                    $($method => {
                        let ($($($field,)*)?): ($($($ty,)*)?) = args(bytes)?;
                        Self::$var $({ $($field),* })?
                    })*
                    _ => return Ok(None),
                }))
            }
        }
    )*};
}

calls! {
    /// The built-in kinds, with what an object of each is created from.
    enum New {
        "dict" => Dict,
        "list" => List,
        "array" => Array { items: Vec<ByteBuf> },
        "queue" => Queue { maxsize: u64 },
        "joinable_queue" => JoinableQueue { maxsize: u64 },
        "namespace" => Namespace,
        "value" => Value { value: ByteBuf },
        "lock" => Lock,
        "rlock" => RLock,
        "semaphore" => Semaphore { value: u64 },
        "bounded_semaphore" => BoundedSemaphore { value: u64 },
        "event" => Event,
        "condition" => Condition,
        "barrier" => Barrier { parties: u64 },
    }

    /// The methods of a dict; keys and values as the proxy encoded them.
    enum DictCall {
        "get" => Get { key: ByteBuf },
        "set" => Set { key: ByteBuf, value: ByteBuf },
        "insert" => Insert { key: ByteBuf, value: ByteBuf },
        "setdefault" => SetDefault { key: ByteBuf, default: ByteBuf },
        "remove" => Remove { key: ByteBuf },
        "contains" => Contains { key: ByteBuf },
        "len" => Len,
        "clear" => Clear,
        "update" => Update { entries: Vec<(ByteBuf, ByteBuf)> },
        "keys" => Keys,
        "values" => Values,
        "items" => Items,
    }

    /// The methods of lists and arrays.
    enum SeqCall {
        "len" => Len,
        "get" => Get { index: u64 },
        "set" => Set { index: u64, value: ByteBuf },
        "to_vec" => ToVec,
        "contains" => Contains { value: ByteBuf },
    }

    /// The methods of lists only (an array keeps its length).
    enum ListCall {
        "push" => Push { value: ByteBuf },
        "pop" => Pop,
        "insert" => Insert { index: u64, value: ByteBuf },
        "remove" => Remove { index: u64 },
        "extend" => Extend { items: Vec<ByteBuf> },
        "clear" => Clear,
    }

    /// The methods of queues; `timeout: None` waits for ever, `Some(ZERO)` not at all.
    enum QueueCall {
        "put" => Put { item: ByteBuf, timeout: Option<Duration> },
        "get" => Get { timeout: Option<Duration> },
        "qsize" => QSize,
        "empty" => Empty,
        "full" => Full,
    }

    /// The methods of joinable queues only.
    enum JoinableCall {
        "task_done" => TaskDone,
        "join" => Join { timeout: Option<Duration> },
    }

    /// The methods of a namespace.
    enum NamespaceCall<'a> {
        "get" => Get { name: &'a str },
        "set" => Set { name: &'a str, value: ByteBuf },
        "remove" => Remove { name: &'a str },
        "contains" => Contains { name: &'a str },
        "names" => Names,
    }

    /// The methods of a value.
    enum ValueCall {
        "get" => Get,
        "set" => Set { value: ByteBuf },
        "swap" => Swap { value: ByteBuf },
    }

    /// The methods of locks and reentrant locks.
    enum LockCall {
        "acquire" => Acquire { timeout: Option<Duration> },
        "release" => Release,
        "locked" => Locked,
    }

    /// The methods of a condition (with its own reentrant lock).
    enum ConditionCall {
        "acquire" => Acquire { timeout: Option<Duration> },
        "release" => Release,
        "wait" => Wait { timeout: Option<Duration> },
        "notify" => Notify { n: u64 },
    }

    /// The methods of semaphores.
    enum SemaphoreCall {
        "acquire" => Acquire { timeout: Option<Duration> },
        "release" => Release { n: u64 },
        "value" => Value,
    }

    /// The methods of an event.
    enum EventCall {
        "set" => Set,
        "clear" => Clear,
        "is_set" => IsSet,
        "wait" => Wait { timeout: Option<Duration> },
    }

    /// The methods of a barrier.
    enum BarrierCall {
        "wait" => Wait { timeout: Option<Duration> },
        "abort" => Abort,
        "reset" => Reset,
        "parties" => Parties,
        "n_waiting" => NWaiting,
        "broken" => Broken,
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

#[cfg(test)]
mod tests {
    use serde_bytes::Bytes;

    use super::*;

    #[test]
    fn the_server_decodes_the_call_a_proxy_sends() {
        let call = DictCall::Set {
            key: ByteBuf::from(vec![1, 2]),
            value: ByteBuf::from(vec![3]),
        };
        let bytes = call.encode_args().unwrap();
        // The arguments are the tuple of the parameters, as a user type's proxy sends them.
        let tuple = codec::encode(&(Bytes::new(&[1, 2]), Bytes::new(&[3]))).unwrap();
        assert_eq!(bytes, tuple);
        match DictCall::decode(call.name(), &bytes) {
            Ok(Some(DictCall::Set { key, value })) => {
                assert_eq!((&key[..], &value[..]), (&[1, 2][..], &[3][..]))
            }
            other => panic!("{other:?}"),
        }
        let call = NamespaceCall::Contains { name: "x" };
        let bytes = call.encode_args().unwrap();
        assert!(matches!(
            NamespaceCall::decode("contains", &bytes),
            Ok(Some(NamespaceCall::Contains { name: "x" }))
        ));
        assert!(matches!(DictCall::decode("pop", &[]), Ok(None)));
        assert!(matches!(
            DictCall::decode("get", &[]),
            Err(Fault::BadArguments(_))
        ));
        // Bytes left over mean other argument types: refused, not ignored.
        assert!(matches!(
            DictCall::decode("len", &[0]),
            Err(Fault::BadArguments(_))
        ));
    }
}
