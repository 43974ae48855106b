//! The errors of the cluster pool.

use std::sync::Arc;
use std::time::Duration;

use multiproc::{CodecError, NotRegistered, TaskError};
use serde::{Deserialize, Serialize};

/// The cluster's errors are the executors' shared [`TaskError`]: a failure is the same value
/// wherever the task ran. Talking to Redis fails with [`TaskError::Broker`] (its `source()` is
/// the `redis::RedisError`). The name stays for code written before.
pub type ClusterError = TaskError;

/// Redis's error as the task error every waiting task can share.
pub(crate) fn broker(e: redis::RedisError) -> TaskError {
    TaskError::Broker(Arc::new(e))
}

/// A task's failure as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskFailure {
    NotRegistered(String),
    Panicked(String),
    Timeout(u64),
    DeadLetter {
        tries: u32,
        last: String,
    },
    Failed(String),
    /// The argument did not decode, or the result did not encode, on the worker.
    Codec {
        encode: bool,
        message: String,
    },
}

impl From<TaskFailure> for TaskError {
    fn from(f: TaskFailure) -> Self {
        match f {
            TaskFailure::NotRegistered(n) => TaskError::NotRegistered(NotRegistered(n)),
            TaskFailure::Panicked(m) => TaskError::Panicked(m),
            TaskFailure::Timeout(ms) => TaskError::Timeout(Duration::from_millis(ms)),
            TaskFailure::DeadLetter { tries, last } => TaskError::DeadLetter { tries, last },
            TaskFailure::Failed(m) => TaskError::Failed(m),
            TaskFailure::Codec { encode, message } => TaskError::Codec(match encode {
                true => CodecError::Encode(message),
                false => CodecError::Decode(message),
            }),
        }
    }
}
