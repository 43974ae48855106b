//! Async `get`, `put` and `join` on queues (feature `tokio`): each try is the non-blocking
//! operation (`get_nowait`, `put_nowait`), and waiting is the queue's doorbell in the
//! runtime's reactor (see `shm::bell`), rung by any process's put, get, close or last
//! `task_done` while an async waiter watches it.

use std::task::Poll;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{JoinableQueue, Queue};
use crate::codec;
use crate::error::QueueError;
use crate::shm::{Blocking, Tally};

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// [`get`](Queue::get) without blocking a thread: waits in the runtime's reactor for an
    /// item put by any process ([`QueueError::Closed`] once the queue is closed and empty).
    ///
    /// **Cancel safety**: an item is taken only in the step that returns it; dropped while
    /// waiting (a `select!` that took another branch), the future took nothing and the item
    /// stays for the next `get`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiproc::QueueError> {
    /// let q = multiproc::Queue::<String>::bounded(1)?;
    /// q.put_async(&"job".to_string()).await?;
    /// assert_eq!(q.get_async().await?, "job");
    /// # Ok(()) }
    /// ```
    pub async fn get_async(&self) -> Result<T, QueueError> {
        self.ring
            .wait_until(|| match self.get_one(Blocking::Try, None) {
                Err(QueueError::Empty) => Poll::Pending,
                other => Poll::Ready(other),
            })
            .await?
    }

    /// [`put`](Queue::put) without blocking a thread: in a bounded queue, waits in the
    /// runtime's reactor for room. The item is encoded when this is called.
    ///
    /// **Cancel safety**: the item goes into the queue whole in one step, or not at all;
    /// dropped while waiting for room, nothing was put.
    pub fn put_async<'a>(
        &'a self,
        item: &T,
    ) -> impl Future<Output = Result<(), QueueError>> + Send + use<'a, T> {
        let bytes = codec::encode(item).map_err(QueueError::from);
        async move { self.put_bytes_async(bytes?, Tally::Items).await }
    }

    /// Puts an encoded item, waiting in the reactor for room.
    async fn put_bytes_async(&self, bytes: Vec<u8>, tally: Tally) -> Result<(), QueueError> {
        self.ring
            .wait_until(|| {
                match self.ring.put(&[&bytes[..]], Blocking::Try, None, tally) {
                    // Full only waits in a bounded queue, as `put` does.
                    Err(QueueError::Full) if self.maxsize().is_some() => Poll::Pending,
                    other => Poll::Ready(other),
                }
            })
            .await?
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// [`put`](JoinableQueue::put) without blocking a thread (see [`Queue::put_async`],
    /// the same cancel safety: put whole, counted as a task, or not at all).
    pub fn put_async<'a>(
        &'a self,
        item: &T,
    ) -> impl Future<Output = Result<(), QueueError>> + Send + use<'a, T> {
        let bytes = codec::encode(item).map_err(QueueError::from);
        async move { self.queue.put_bytes_async(bytes?, Tally::Tasks).await }
    }

    /// [`join`](JoinableQueue::join) without blocking a thread: waits in the runtime's reactor
    /// until every item put has been marked done, in any process.
    ///
    /// **Cancel safety**: safe to drop and await again; it consumes nothing.
    pub async fn join_async(&self) -> Result<(), QueueError> {
        let ring = &self.queue.ring;
        ring.wait_until(|| {
            if ring.all_done() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await?;
        Ok(())
    }
}
