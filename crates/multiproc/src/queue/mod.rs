//! Queues shared by processes: [`Queue`], [`JoinableQueue`], [`SimpleQueue`].
//!
//! Items live in shared memory owned by the queue, not by the process that put them: an
//! unbounded `put` never blocks, and a producer may exit right after `put` without losing the
//! item (CPython's feeder thread makes "child puts 1 MB, parent joins the child before
//! reading" deadlock; here it just works). A serialization error is returned by `put` itself.
//! A producer or consumer killed with SIGKILL at any moment does not wedge the queue: at most
//! the item it was moving is lost. Waits sleep on futexes; when nobody sleeps, `put` and `get`
//! make no system call.

#[cfg(feature = "tokio")]
mod nonblocking;

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::QueueError;
use crate::shm::{Blocking, Ring, Tally, lock_word};

/// The default buffer of a queue: virtual, so memory is used only by items actually queued
/// (and given back as they leave).
pub const DEFAULT_QUEUE_BYTES: usize = 1 << 30;

/// A multi-producer, multi-consumer queue shared by processes (Python's
/// `multiprocessing.Queue`), typed: items go through the crate's codec.
///
/// ```
/// let q = multiproc::Queue::<String>::new()?;
/// q.put(&"job".to_string())?;
/// assert_eq!(q.get()?, "job");
/// assert!(matches!(q.get_nowait(), Err(multiproc::QueueError::Empty)));
/// # Ok::<(), multiproc::QueueError>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Queue<T> {
    ring: Ring,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ring: self.ring.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue: `put` never blocks (up to [`DEFAULT_QUEUE_BYTES`] of queued data,
    /// beyond which it fails with [`QueueError::Full`]).
    pub fn new() -> Result<Queue<T>, QueueError> {
        Queue::with_limits(0, DEFAULT_QUEUE_BYTES)
    }

    /// A queue of at most `maxsize` items: `put` waits for room (Python's `Queue(maxsize)`).
    ///
    /// `maxsize` 0 means no item limit, as in Python, where `Queue(0)` is unbounded: the
    /// queue is then the same as [`Queue::new`] (and not a zero-capacity rendezvous channel).
    ///
    /// ```
    /// let q = multiproc::Queue::<u8>::bounded(1)?;
    /// q.put(&1)?;
    /// assert!(q.full());
    /// assert_eq!(multiproc::Queue::<u8>::bounded(0)?.maxsize(), None); // unbounded
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn bounded(maxsize: usize) -> Result<Queue<T>, QueueError> {
        Queue::with_limits(maxsize as u64, DEFAULT_QUEUE_BYTES)
    }

    /// A queue of at most `max_items` items (0: unbounded) and `max_bytes` of encoded data.
    pub fn with_limits(max_items: u64, max_bytes: usize) -> Result<Queue<T>, QueueError> {
        Ok(Queue {
            ring: Ring::new(max_items, max_bytes.max(64))?,
            _t: PhantomData,
        })
    }

    /// How a plain `put` waits: for room in a bounded queue, never in an unbounded one.
    fn bounded_queue(&self) -> Blocking {
        if self.maxsize().is_some() {
            Blocking::Wait
        } else {
            Blocking::Try
        }
    }

    /// The item limit, `None` for an unbounded queue.
    pub fn maxsize(&self) -> Option<u64> {
        match self.ring.max_items() {
            0 => None,
            n => Some(n),
        }
    }

    fn encode(item: &T) -> Result<Vec<u8>, QueueError> {
        Ok(codec::encode(item)?)
    }

    fn decode(bytes: &[u8]) -> Result<T, QueueError> {
        Ok(codec::decode(bytes)?)
    }

    /// Puts one item, encoded in this thread's scratch buffer: no allocation per item.
    fn put_one(
        &self,
        item: &T,
        wait: Blocking,
        deadline: Option<Instant>,
        tally: Tally,
    ) -> Result<(), QueueError> {
        codec::with_scratch(|buf| {
            codec::encode_into(item, buf)?;
            self.ring.put(&[&buf[..]], wait, deadline, tally)
        })
    }

    /// Takes one item through this thread's scratch buffer.
    fn get_one(&self, wait: Blocking, deadline: Option<Instant>) -> Result<T, QueueError> {
        codec::with_scratch(|buf| {
            self.ring.get_one(buf, wait, deadline)?;
            Self::decode(buf)
        })
    }

    /// Puts an item: waits for room in a bounded queue, never waits in an unbounded one.
    pub fn put(&self, item: &T) -> Result<(), QueueError> {
        self.put_one(item, self.bounded_queue(), None, Tally::Items)
    }

    /// Puts an item, waiting at most `timeout` for room ([`QueueError::Full`] after).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), QueueError> {
        self.put_one(
            item,
            Blocking::Wait,
            lock_word::deadline(Some(timeout)),
            Tally::Items,
        )
    }

    /// Puts an item only if there is room now.
    pub fn put_nowait(&self, item: &T) -> Result<(), QueueError> {
        self.put_one(item, Blocking::Try, None, Tally::Items)
    }

    /// Puts several items in one step (one lock, one wake-up): all or none.
    pub fn put_many(&self, items: &[T]) -> Result<(), QueueError> {
        let encoded = items
            .iter()
            .map(Self::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.ring
            .put(&encoded, self.bounded_queue(), None, Tally::Items)
    }

    /// Takes an item, waiting until there is one (or the queue is closed and empty:
    /// [`QueueError::Closed`]).
    pub fn get(&self) -> Result<T, QueueError> {
        self.get_one(Blocking::Wait, None)
    }

    /// Takes an item, waiting at most `timeout` ([`QueueError::Empty`] after).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, QueueError> {
        self.get_one(Blocking::Wait, lock_word::deadline(Some(timeout)))
    }

    /// Takes an item if there is one now.
    pub fn get_nowait(&self) -> Result<T, QueueError> {
        self.get_one(Blocking::Try, None)
    }

    /// Takes up to `max` items in one step, waiting for at least one.
    pub fn get_many(&self, max: usize) -> Result<Vec<T>, QueueError> {
        self.ring
            .get(max.max(1), Blocking::Wait, None)?
            .iter()
            .map(|b| Self::decode(b))
            .collect()
    }

    /// [`get_many`](Queue::get_many) waiting at most `timeout` for the first item.
    pub fn get_many_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<T>, QueueError> {
        self.ring
            .get(
                max.max(1),
                Blocking::Wait,
                lock_word::deadline(Some(timeout)),
            )?
            .iter()
            .map(|b| Self::decode(b))
            .collect()
    }

    /// The number of items now.
    pub fn qsize(&self) -> usize {
        self.ring.len() as usize
    }

    /// Whether the queue holds no item now.
    pub fn empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// Whether a bounded queue is at its limit now.
    pub fn full(&self) -> bool {
        self.ring.is_full()
    }

    /// Closes the queue for every process: later puts fail with [`QueueError::Closed`];
    /// items already queued can still be taken, then gets fail with `Closed` instead of
    /// waiting.
    pub fn close(&self) {
        self.ring.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }
}

/// The queue's doorbell, for [`wait`](crate::wait) beside connections and process
/// sentinels: readable when an item may be there to take, or the queue was closed. It is a
/// hint, not a promise: another consumer may take the item first, so take with
/// [`get_nowait`](Queue::get_nowait) (or a `get_timeout`) and wait again on
/// [`QueueError::Empty`]. Once a queue's descriptor has been asked for, every put, get and
/// close on it rings the doorbell, in every process (one system call each).
///
/// A consumer that stops when its producer dies instead of hanging:
///
/// ```
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use multiproc::{Func, Queue};
///
/// #[multiproc::func]
/// fn produce(q: Queue<u32>) {
///     q.put(&1).unwrap();
///     std::process::exit(3); // dies without a word
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = Queue::<u32>::new()?;
/// let producer = produce.spawn(q.clone())?;
/// let mut got = Vec::new();
/// loop {
///     let ready = multiproc::wait(&[q.as_fd(), producer.sentinel()], Some(Duration::from_secs(10)))?;
///     match q.get_nowait() {
///         Ok(item) => got.push(item),
///         Err(multiproc::QueueError::Empty) if ready.contains(&1) => break, // producer gone
///         Err(multiproc::QueueError::Empty) => {}
///         Err(e) => return Err(e.into()),
///     }
/// }
/// assert_eq!(got, [1]);
/// assert!(matches!(producer.join(), Err(multiproc::ProcessError::Exited { code: 3, .. })));
/// # Ok(()) }
/// ```
impl<T> AsFd for Queue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.bell_for_poll()
    }
}

/// A [`Queue`] whose consumers mark items done, so producers can wait for all of them
/// (Python's `JoinableQueue`).
///
/// ```
/// let q = multiproc::JoinableQueue::<u32>::new()?;
/// q.put(&1)?;
/// let _ = q.get()?;
/// q.task_done()?;
/// assert!(q.join_timeout(std::time::Duration::ZERO));
/// assert!(q.task_done().is_err()); // more task_done() than items
/// # Ok::<(), multiproc::QueueError>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, QueueError> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
        })
    }

    /// A joinable queue of at most `maxsize` items; 0 means no item limit, as in Python's
    /// `JoinableQueue(0)` (see [`Queue::bounded`]).
    pub fn bounded(maxsize: usize) -> Result<JoinableQueue<T>, QueueError> {
        Ok(JoinableQueue {
            queue: Queue::bounded(maxsize)?,
        })
    }

    /// Puts an item and counts it as a task to be done.
    pub fn put(&self, item: &T) -> Result<(), QueueError> {
        self.queue
            .put_one(item, self.queue.bounded_queue(), None, Tally::Tasks)
    }

    /// Puts an item, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), QueueError> {
        self.queue.put_one(
            item,
            Blocking::Wait,
            lock_word::deadline(Some(timeout)),
            Tally::Tasks,
        )
    }

    /// Puts several items, each a task.
    pub fn put_many(&self, items: &[T]) -> Result<(), QueueError> {
        let encoded = items
            .iter()
            .map(Queue::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.queue
            .ring
            .put(&encoded, self.queue.bounded_queue(), None, Tally::Tasks)
    }

    /// Marks one item taken with `get` as done. More calls than items put is
    /// [`QueueError::TooManyTaskDone`].
    pub fn task_done(&self) -> Result<(), QueueError> {
        self.queue.ring.task_done()
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) {
        self.queue.ring.join(None);
    }

    /// [`join`](JoinableQueue::join) at most `timeout`; returns whether all are done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.queue.ring.join(lock_word::deadline(Some(timeout)))
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

/// The plainest queue (Python's `SimpleQueue`): unbounded, `put`/`get`/`empty`/`close`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new empty queue.
    pub fn new() -> Result<SimpleQueue<T>, QueueError> {
        Ok(SimpleQueue {
            queue: Queue::new()?,
        })
    }

    /// Puts an item (never waits).
    pub fn put(&self, item: &T) -> Result<(), QueueError> {
        self.queue.put(item)
    }

    /// Takes an item, waiting for one.
    pub fn get(&self) -> Result<T, QueueError> {
        self.queue.get()
    }

    /// Whether the queue is empty now.
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// Closes the queue (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close()
    }
}
