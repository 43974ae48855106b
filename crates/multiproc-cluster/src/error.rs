//! The errors of the cluster pool.

use std::sync::Arc;
use std::time::Duration;

use multiproc::{CodecError, NotRegistered, TimedOut};
use serde::{Deserialize, Serialize};

/// What can go wrong submitting tasks to the cluster, or running them there.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Talking to Redis failed (unreachable, refused, AUTH/ACL denied, ...): Redis's own
    /// error (shared, so that one failure can be every waiting task's).
    #[error("redis: {0}")]
    Redis(#[source] Arc<redis::RedisError>),
    /// Arguments or results could not go through the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The function is not registered with `#[multiproc::func]` (in the client, or in the
    /// worker's binary).
    #[error(transparent)]
    NotRegistered(#[from] NotRegistered),
    /// The task panicked on a worker.
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The task ran past its time limit and its process was killed.
    #[error("the task ran past its limit of {0:?}")]
    Timeout(Duration),
    /// The task killed the processes that ran it `tries` times: it went to the dead-letter
    /// stream instead of looping for ever.
    #[error("the task killed its worker {tries} times and was dead-lettered: {last}")]
    DeadLetter {
        /// How many times it was tried.
        tries: u32,
        /// What happened the last time.
        last: String,
    },
    /// The task failed on the worker in another way.
    #[error("the task failed: {0}")]
    Failed(String),
    /// Waiting for a result ran out of time (the task goes on).
    #[error("no result: {0}")]
    WaitTimeout(#[from] TimedOut),
    /// No worker started the task before its expiry
    /// ([`task_expiry`](crate::ClusterPoolBuilder::task_expiry)); it will not run.
    #[error("no worker started the task within its expiry of {0:?}")]
    Expired(Duration),
    /// The broker could not be reached for
    /// [`broker_timeout`](crate::ClusterPoolBuilder::broker_timeout) while the task waited for
    /// its result: it may or may not have run.
    #[error("the broker was lost: {0}")]
    BrokerLost(String),
    /// The pool was closed: no more submissions.
    #[error("the pool is closed")]
    Closed,
    /// An argument out of its domain (chunk size 0, an empty queue name, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Redis(Arc::new(e))
    }
}

/// A task's failure as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskFailure {
    NotRegistered(String),
    Panicked(String),
    Timeout(u64),
    DeadLetter { tries: u32, last: String },
    Failed(String),
}

impl From<TaskFailure> for ClusterError {
    fn from(f: TaskFailure) -> Self {
        match f {
            TaskFailure::NotRegistered(n) => ClusterError::NotRegistered(NotRegistered(n)),
            TaskFailure::Panicked(m) => ClusterError::Panicked(m),
            TaskFailure::Timeout(ms) => ClusterError::Timeout(Duration::from_millis(ms)),
            TaskFailure::DeadLetter { tries, last } => ClusterError::DeadLetter { tries, last },
            TaskFailure::Failed(m) => ClusterError::Failed(m),
        }
    }
}
