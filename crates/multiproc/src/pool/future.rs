//! [`AsyncResult`] as a `Future` and [`Imap`] as a `Stream` (feature `tokio`, though nothing
//! here names a runtime).
//!
//! No descriptor is involved: results are recorded in this process, under the pool's lock, by
//! the handler thread (or by a caller that picked reports up). A waiting task leaves its
//! waker on its job (`state::Job::wake_on_change`), and whoever records what a condition
//! variable waiter would wake for wakes it too. A poll takes the workers' waiting reports
//! itself first, as a synchronous `get` does, so a result already reported costs no wake-up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::state::Shared;
use super::super::state::pickup;
use super::{AsyncResult, Imap, MapResult, SPIN};
use crate::error::PoolError;
use crate::spin::Spinner;

/// `pool.apply_async(&f, x)?.await`: the task's result, without blocking a thread.
///
/// **Cancel safety**: dropping the future drops the handle, as dropping an `AsyncResult`
/// does (the task still runs; its result is discarded). Polling again after the result was
/// returned is a [`PoolError::Invalid`].
///
/// ```
/// #[multiproc::func]
/// fn square(x: u64) -> u64 { x * x }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiproc::Result<()> {
/// let pool = multiproc::Pool::new(2)?;
/// assert_eq!(pool.apply_async(&square, 7)?.await?, 49);
/// # Ok(()) }
/// ```
impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match poll_done(&this.shared, this.job, cx) {
            true => Poll::Ready(this.take_one()),
            false => Poll::Pending,
        }
    }
}

/// `pool.map_async(&f, items)?.await`: every item's result, as [`MapResult::get`] gives them
/// (the first failing item's error), without blocking a thread.
///
/// **Cancel safety**: dropping the future drops the handle (the tasks still run; their
/// results are discarded). Polling again after the results were returned is a
/// [`PoolError::Invalid`].
///
/// ```
/// #[multiproc::func]
/// fn square(x: u64) -> u64 { x * x }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiproc::Result<()> {
/// let pool = multiproc::Pool::new(2)?;
/// assert_eq!(pool.map_async(&square, 0..4u64)?.await?, [0, 1, 4, 9]);
/// # Ok(()) }
/// ```
impl<R: DeserializeOwned> Future for MapResult<R> {
    type Output = Result<Vec<R>, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match poll_done(&this.shared, this.job, cx) {
            true => Poll::Ready(this.take_all()),
            false => Poll::Pending,
        }
    }
}

/// Whether job `job` is done; if not, `cx`'s waker is left to be woken when it may be.
fn poll_done(shared: &Shared, job: u64, cx: &mut Context<'_>) -> bool {
    let mut st = shared.lock();
    let wake = pickup(shared, &mut st);
    let done = st.job_done(job);
    let mut spun = None;
    if let Some(j) = st.job_mut(job) {
        let spin = j.spin.get_or_insert_with(|| Spinner::new(SPIN));
        if done {
            spun = j.spin.take();
        } else if spin.keep_going() {
            // A small task's result is usually reported within microseconds, and a
            // wake-up through the handler costs two: look again soon, as a synchronous
            // `get` spins, but through the runtime's queue, so other tasks run meanwhile.
            cx.waker().wake_by_ref();
        } else {
            j.wake_on_change(cx.waker());
        }
    }
    drop(st);
    if wake {
        shared.changed.notify_all();
    }
    if done && let Some(spin) = spun {
        spin.hit();
    }
    done
}

/// The stream of an [`Imap`]: [`Imap::into_stream`].
#[derive(Debug)]
pub struct ImapStream<'p, R, I> {
    imap: Imap<'p, R, I>,
}

impl<'p, R: DeserializeOwned, A: Serialize, I: Iterator<Item = A>> Imap<'p, R, I> {
    /// The results as a `Stream` (`futures_core::Stream`), awaited without blocking a thread:
    /// the same items as the iterator, in the same order.
    ///
    /// Submitting the input happens in `poll_next` as it does in `next` (it encodes items
    /// and hands them to the pool, which does not wait for workers).
    ///
    /// **Cancel safety**: a `next()` dropped while waiting loses nothing: results are taken
    /// out of the pool only in the poll that returns one.
    ///
    /// ```
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    /// use futures_core::Stream;
    ///
    /// #[multiproc::func]
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiproc::Result<()> {
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut s = pool.imap_unordered(&double, 0..100).into_stream();
    /// let mut total = 0;
    /// while let Some(r) = poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
    ///     total += r?;
    /// }
    /// assert_eq!(total, 2 * (0..100).sum::<u32>());
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> ImapStream<'p, R, I> {
        ImapStream { imap: self }
    }

    /// [`Imap::fill`] without blocking: `Ready(Some(()))` once a result is in `ready`,
    /// `Ready(None)` if the job is gone, else the waker is left on the job.
    fn poll_fill(&mut self, job: u64, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let shared = self.pool.shared().clone();
        let mut st = shared.lock();
        let wake = pickup(&shared, &mut st);
        let Some(j) = st.job_mut(job) else {
            return Poll::Ready(None);
        };
        self.take_ready(j);
        let got = !self.ready.is_empty();
        if !got {
            let in_flight = self.submitted - self.taken;
            j.wait_for((in_flight / 4).clamp(1, 64));
            j.wake_on_change(cx.waker());
        }
        drop(st);
        if wake {
            shared.changed.notify_all();
        }
        if got {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

impl<R: DeserializeOwned, A: Serialize, I: Iterator<Item = A> + Unpin> Stream
    for ImapStream<'_, R, I>
{
    type Item = Result<R, PoolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .imap
            .step(|imap, job| imap.poll_fill(job, cx))
    }
}
