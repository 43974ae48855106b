//! How far a worker got in the chunk it runs, in shared memory that outlives the worker.
//!
//! A worker reports a chunk's results through its report ring when the chunk ends. Were that
//! all, a worker killed (or timed out) on item 5 of a chunk would take items 1-4 with it. So
//! after each item it keeps the item's encoded result here, before the next item starts; the
//! handler reads this area once the worker is dead and delivers what was finished, fails only
//! the item that was running, and sends the items that had not started to another worker.
//!
//! Only the worker writes; the handler reads `SEQ` and `STARTED` while the worker runs (to time
//! the running item), everything else after the worker is gone. A result that does not fit, and
//! every failed item, goes through the ring at once instead (a partial report): what is kept
//! here is always what the ring has not reported yet.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::shm::Block;

/// The chunk being run (its `Chunk::seq`); 0 before the first.
const SEQ: usize = 0;
/// When the running item started (`now_ns`), or 0 when the chunk keeps no clock.
const STARTED: usize = 8;
/// Items of the chunk already reported through the ring.
const FLUSHED: usize = 16;
/// Items of the chunk finished (reported or kept here).
const DONE: usize = 20;
/// Bytes of results kept in `DATA`.
const USED: usize = 24;
/// Where each kept result ends in `DATA`, for items `FLUSHED..DONE`.
const ENDS: usize = 64;
/// How many results are kept at most before they go through the ring.
const SLOTS: usize = 4096;
const DATA: usize = ENDS + 4 * SLOTS;
/// Bytes of results kept at most before they go through the ring (memory is used only as far
/// as results reach, and reused by every chunk).
const DATA_BYTES: usize = 240 << 10;

pub(crate) use crate::sys::monotonic_ns as now_ns;

/// A worker's progress area (see the module docs). Travels to the worker as its memfd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Progress {
    block: Block,
}

/// Whether a chunk's items are timed: the handler then needs to know when each one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Clock {
    /// No time limit: nothing to record per item.
    Off,
    /// A time limit per item: record each item's start.
    PerItem,
}

/// What a dead worker had finished of its chunk and not reported.
#[derive(Debug)]
pub(crate) struct Kept {
    /// The first kept item, as an index in the chunk.
    pub(crate) first: u32,
    /// The kept results back to back, and where each ends.
    pub(crate) data: Vec<u8>,
    pub(crate) ends: Vec<u32>,
    /// When the item that was running started (`now_ns`), 0 if unknown.
    pub(crate) started: u64,
}

impl Kept {
    /// The index in the chunk of the item that was running (the first one not finished).
    pub(crate) fn running(&self) -> u32 {
        self.first + self.ends.len() as u32
    }
}

/// The area's shared memory.
impl std::os::fd::AsFd for Progress {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.block.0.as_fd()
    }
}

impl Progress {
    pub(crate) fn new() -> std::io::Result<Progress> {
        Ok(Progress {
            block: Block::new("multiproc-pool-progress", DATA + DATA_BYTES)?,
        })
    }

    fn u32(&self, at: usize) -> &std::sync::atomic::AtomicU32 {
        self.block.u32_at(at)
    }

    fn u64(&self, at: usize) -> &std::sync::atomic::AtomicU64 {
        self.block.u64_at(at)
    }

    /// Worker: chunk `seq` starts (its first item too, when `clock` says so).
    pub(crate) fn begin(&self, seq: u64, clock: Clock) {
        self.u32(FLUSHED).store(0, Ordering::Relaxed);
        self.u32(DONE).store(0, Ordering::Relaxed);
        self.u32(USED).store(0, Ordering::Relaxed);
        let started = if clock == Clock::PerItem { now_ns() } else { 0 };
        self.u64(STARTED).store(started, Ordering::Relaxed);
        // Published last: whoever sees `seq` sees the rest of this chunk's start.
        self.u64(SEQ).store(seq, Ordering::Release);
    }

    /// Worker: the next item starts now (timed chunks only).
    pub(crate) fn item_started(&self) {
        self.u64(STARTED).store(now_ns(), Ordering::Release);
    }

    /// Worker: item `index` of the chunk finished with `result`; keeps it unless there is no
    /// room (`false`: report it through the ring, then call [`Progress::reported`]).
    pub(crate) fn keep(&self, index: u32, result: &[u8]) -> bool {
        let flushed = self.u32(FLUSHED).load(Ordering::Relaxed);
        let used = self.u32(USED).load(Ordering::Relaxed) as usize;
        let slot = index.saturating_sub(flushed) as usize;
        if slot >= SLOTS || used + result.len() > DATA_BYTES {
            return false;
        }
        self.block.write(DATA + used, result);
        let end = used + result.len();
        self.u32(ENDS + 4 * slot)
            .store(end as u32, Ordering::Relaxed);
        self.u32(USED).store(end as u32, Ordering::Relaxed);
        self.u32(DONE).store(index + 1, Ordering::Release);
        true
    }

    /// Worker: items before `upto` went through the ring; nothing is kept any more.
    pub(crate) fn reported(&self, upto: u32) {
        self.u32(DONE).store(upto, Ordering::Relaxed);
        self.u32(USED).store(0, Ordering::Relaxed);
        self.u32(FLUSHED).store(upto, Ordering::Release);
    }

    /// Handler, while the worker runs: when the running item of chunk `seq` started, if the
    /// worker has begun that chunk and times its items.
    pub(crate) fn item_start(&self, seq: u64) -> Option<u64> {
        if self.u64(SEQ).load(Ordering::Acquire) != seq {
            return None;
        }
        let started = self.u64(STARTED).load(Ordering::Acquire);
        // The chunk may have been left for the next one between the two loads.
        (self.u64(SEQ).load(Ordering::Acquire) == seq && started != 0).then_some(started)
    }

    /// Handler, once the worker is dead: what it kept of chunk `seq`; `None` if it never
    /// began that chunk.
    pub(crate) fn kept(&self, seq: u64) -> Option<Kept> {
        if self.u64(SEQ).load(Ordering::Acquire) != seq {
            return None;
        }
        let first = self.u32(FLUSHED).load(Ordering::Acquire);
        let done = self.u32(DONE).load(Ordering::Acquire).max(first);
        let n = ((done - first) as usize).min(SLOTS);
        let ends: Vec<u32> = (0..n)
            .map(|i| self.u32(ENDS + 4 * i).load(Ordering::Relaxed))
            .collect();
        let used = (self.u32(USED).load(Ordering::Relaxed) as usize).min(DATA_BYTES);
        // Ends only grow and stay within what was used: anything else is not ours to trust.
        let sane = ends.windows(2).all(|w| w[0] <= w[1])
            && ends.last().is_none_or(|&e| e as usize <= used);
        if !sane {
            return Some(Kept {
                first,
                data: Vec::new(),
                ends: Vec::new(),
                started: 0,
            });
        }
        let mut data = vec![0u8; ends.last().copied().unwrap_or(0) as usize];
        self.block.read(DATA, &mut data);
        Some(Kept {
            first,
            data,
            ends,
            started: self.u64(STARTED).load(Ordering::Relaxed),
        })
    }
}
