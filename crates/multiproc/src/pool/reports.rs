//! The report path from a worker to its pool: a shared-memory ring the pool owns, and a
//! doorbell rung only while the handler sleeps.
//!
//! A worker puts each report (a [`FromWorker::Done`]) in its ring and goes on: while the
//! handler is awake, a report costs no system call on either side, and it is safe the moment
//! it is written, even if the worker dies right after (the ring is the pool's memory). Two
//! kinds of party take reports out: the handler, and callers (they record them themselves
//! under the pool's lock, one wake-up less on a round trip; see `state::pickup`).
//!
//! # Why no report is ever missed
//! The handler sleeps in `poll` on the workers' connections, not on the ring. Before it sleeps
//! it [`arm`](Reports::arm)s every ring (stores 1 in the ring's flag word, then a `SeqCst`
//! fence) and looks once more, under the pool's lock, at the rings and at what callers took
//! ([`Reports::pending`]). A worker's [`send`](Reports::send) ends its `put` with a `SeqCst`
//! fence and then reads the flag. Of the two orders, either the handler's last look sees the
//! report, or the worker sees the flag and rings the doorbell (a `Wake` frame on its
//! connection), which ends the poll. After the poll the handler
//! [`disarm`](Reports::disarm)s, and reports go back to costing no system call.
//!
//! A caller [`watch`](Reports::watch)es the rings while it spins for its result, while it
//! sleeps on the ring of the worker it sent its task to (`result::sleep_on_worker`), and while
//! it sends a task straight to a worker (`Pool::send_to_lent`): it takes the reports itself,
//! so the worker leaves the doorbell alone (no wake-up of the handler on the caller's CPU in
//! the middle of a round trip). When it stops it
//! [`unwatch`](Reports::unwatch)es (a read-modify-write, then a `SeqCst` fence, as `arm`),
//! then looks once more (the same two orders as above: it sees the report, or the worker sees
//! no watcher and rings), also when it unwinds; what it took that the handler
//! must act on wakes the handler then (see `state::pickup`).

use std::sync::atomic::{Ordering, fence};

use serde_bytes::ByteBuf;

use super::wire::{Batch, Failure, FromWorker};
use crate::connection::Connection;
use crate::error::{PoolError, QueueError};
use crate::process::Outcome;
use crate::shm::{Blocking, Ring, Tally};

/// The ring's flag word: bit 0 is set while the handler sleeps; the rest counts the callers
/// watching the ring (in units of [`WATCHER`]).
const ARMED: u32 = 1;
const WATCHER: u32 = 2;

/// One worker's reports: both ends share it (it travels to the worker as its memfd).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Reports {
    ring: Ring,
}

/// The ring's shared memory.
impl std::os::fd::AsFd for Reports {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl Reports {
    pub(crate) fn new() -> Result<Reports, PoolError> {
        // Waited for on futexes and the worker's connection only: no doorbell.
        let ring = Ring::without_bell(0, crate::queue::DEFAULT_QUEUE_BYTES)
            .map_err(PoolError::io("cannot make a report ring"))?;
        Ok(Reports { ring })
    }

    /// Worker: puts one report in the ring, and rings the doorbell on `conn` if the handler
    /// sleeps. Results too large for the ring fail their items instead. `Err` when the handler
    /// is gone.
    pub(crate) fn send(&self, conn: &Connection, msg: &FromWorker) -> Result<(), ()> {
        let bytes = crate::codec::encode(msg).map_err(drop)?;
        match self.ring.put(&[bytes], Blocking::Wait, None, Tally::Items) {
            Ok(()) => {}
            Err(QueueError::TooLarge { size, limit }) => {
                let why = format!("results of {size} bytes exceed the {limit}-byte report buffer");
                return self.send(conn, &failed_instead(msg, &why).ok_or(())?);
            }
            Err(_) => return Err(()),
        }
        // See the module docs: `put` ended with a SeqCst fence. Armed, and nobody watching.
        if self.ring.flag().load(Ordering::SeqCst) == ARMED {
            conn.send_untagged(&FromWorker::Wake).map_err(drop)?;
        }
        Ok(())
    }

    /// Handler, before it sleeps: from now on the worker rings the doorbell after a report.
    /// Look at [`pending`](Reports::pending) afterwards (see the module docs).
    pub(crate) fn arm(&self) {
        self.ring.flag().fetch_or(ARMED, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Handler, awake again: reports need no doorbell.
    pub(crate) fn disarm(&self) {
        self.ring.flag().fetch_and(!ARMED, Ordering::SeqCst);
    }

    /// Caller, before it spins or sleeps for a result, or sends a task straight to the
    /// worker: it takes the reports itself, no doorbell needed.
    pub(crate) fn watch(&self) {
        self.ring.flag().fetch_add(WATCHER, Ordering::SeqCst);
    }

    /// Caller, done watching: look at the rings once more afterwards (see the module docs,
    /// and `state::end_watch`).
    pub(crate) fn unwatch(&self) {
        self.ring.flag().fetch_sub(WATCHER, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Caller, watching (see [`watch`](Reports::watch)): sleeps until a report comes or the
    /// [`arrival_waker`](Reports::arrival_waker) is woken, unless `ready()` holds once
    /// registered (see `Ring::sleep_for_arrival`); `false` once `deadline` has passed.
    pub(crate) fn sleep_for_arrival(
        &self,
        ready: impl Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        self.ring.sleep_for_arrival(ready, deadline)
    }

    /// A waker that ends every [`sleep_for_arrival`](Reports::sleep_for_arrival) on this ring:
    /// what completes a job other than its report (the handler, another caller) wakes the
    /// caller sleeping for it.
    pub(crate) fn arrival_waker(&self) -> std::task::Waker {
        /// Wakes the ring's arrival sleepers when woken.
        struct Arrival(Ring);
        impl std::task::Wake for Arrival {
            fn wake(self: std::sync::Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &std::sync::Arc<Self>) {
                self.0.wake_arrival_sleepers();
            }
        }
        std::task::Waker::from(std::sync::Arc::new(Arrival(self.ring.clone())))
    }

    /// Whether reports wait in the ring.
    pub(crate) fn pending(&self) -> bool {
        self.ring.len() > 0
    }

    /// Takes every report waiting, decoded, in the order written (the pool's lock is held:
    /// the handler and callers take turns).
    pub(crate) fn take(&self) -> Vec<FromWorker> {
        let mut out = Vec::new();
        while self.ring.len() > 0 {
            let Ok(reports) = self.ring.get(usize::MAX, Blocking::Try, None) else {
                break;
            };
            out.extend(
                reports
                    .iter()
                    .filter_map(|bytes| crate::codec::decode::<FromWorker>(bytes).ok()),
            );
        }
        out
    }
}

/// The report that fails every item of `msg` with `why`, when its results cannot be sent.
fn failed_instead(msg: &FromWorker, why: &str) -> Option<FromWorker> {
    let FromWorker::Done {
        job,
        start,
        results,
        last,
        ..
    } = msg
    else {
        return None;
    };
    Some(FromWorker::Done {
        job: *job,
        start: *start,
        results: Batch {
            data: ByteBuf::new(),
            ends: vec![0; results.len()],
        },
        failures: (0..results.len() as u32)
            .map(|i| (i, Failure::Task(Outcome::Failed(why.to_string()))))
            .collect(),
        last: *last,
    })
}
