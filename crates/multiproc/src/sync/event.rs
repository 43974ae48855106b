//! `Event`, shared by processes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::shm::{Bell, Block, lock_word};
use crate::sys;

/// A flag processes can wait on (Python's `multiprocessing.Event`).
///
/// ```
/// let e = multiproc::Event::new()?;
/// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
/// e.set();
/// assert!(e.is_set() && e.wait_timeout(std::time::Duration::ZERO));
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The flag (word 0) and who watches the bell (word 1, see `shm::bell`).
    block: Block,
    bell: Bell,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, SyncError> {
        Ok(Event {
            block: Block::new("multiproc-event", 8)?,
            bell: Bell::new()?,
        })
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.block.u32_at(0).store(1, Ordering::SeqCst);
        sys::futex_wake(self.block.u32_at(0), u32::MAX);
        self.bell.ring_if_watched(self.block.u32_at(4));
    }

    /// [`wait`](Event::wait) without blocking a thread: waits in the runtime's reactor until
    /// any process sets the flag (feature `tokio`).
    ///
    /// **Cancel safety**: safe to drop and await again; it consumes nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiproc::SyncError> {
    /// let e = multiproc::Event::new()?;
    /// let setter = e.clone();
    /// std::thread::spawn(move || setter.set());
    /// e.wait_async().await?;
    /// assert!(e.is_set());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&self) -> Result<(), SyncError> {
        let op = || {
            if self.is_set() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        };
        Ok(self.bell.wait_until(self.block.u32_at(4), op).await?)
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.block.u32_at(0).store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.block.u32_at(0).load(Ordering::SeqCst) == 1
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_inner(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> bool {
        let deadline = lock_word::deadline(timeout);
        loop {
            if self.is_set() {
                return true;
            }
            let left = lock_word::remaining(deadline);
            if left == Some(Duration::ZERO) {
                return false;
            }
            sys::futex_wait(self.block.u32_at(0), 0, left);
        }
    }
}
