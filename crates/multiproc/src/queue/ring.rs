//! The shared ring under every queue: records `[len: u32][bytes]` in a byte ring that lives
//! in a memfd, guarded by a robust lock, with futex sequence words to sleep on.
//!
//! A producer or consumer killed at any moment leaves the ring recoverable: indices move only
//! after the bytes are copied, and the next locker takes the dead holder's lock over and
//! re-derives the count from the records themselves (`repair`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::QueueError;
use crate::shared::block::Block;
use crate::sync::raw;
use crate::sys;

// The header, by cache line. Line 0 holds what a put or get changes under the lock, so one
// transfer of that line serves the whole critical section; the words every operation only
// reads (limits, `CLOSED`, the sleeper counts that `notify` checks) live on lines nobody
// writes in the steady state, so reading them costs no transfer.
const LOCK: usize = 0;
const HEAD: usize = 8;
const TAIL: usize = 16;
const COUNT: usize = 24;
const UNFINISHED: usize = 32;
const MAX_ITEMS: usize = 64;
const DATA_SIZE: usize = 72;
/// Bumped by every discard: pages a handle populated before may be gone.
const DISCARDS: usize = 80;
const CLOSED: usize = 84;
const GET_SLEEPERS: usize = 128;
const NOT_EMPTY: usize = 132;
const PUT_SLEEPERS: usize = 192;
const NOT_FULL: usize = 196;
const ALL_DONE: usize = 256;
/// A word the ring's owner gives its own meaning (see [`Ring::flag`]).
const FLAG: usize = 320;
/// Where the ring's bytes start.
const DATA: usize = 4096;
/// Consumed memory is given back to the system in chunks of this size.
const DISCARD_CHUNK: u64 = 1 << 20;
/// Record header: the payload length.
const REC: usize = 4;
/// Spins before a consumer sleeps: a producer on the other core usually delivers within a
/// few microseconds, and a sleep/wake pair costs far more.
const SPINS: u32 = 200;
/// How far past what it needs now a handle populates the ring's pages in one call.
const WARM_AHEAD: u64 = 256 << 10;

/// The ring as seen by one process. The limits never change after creation, so each handle
/// keeps a copy instead of reading the (contended) shared header on every operation.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    block: Block,
    max_items: u64,
    data_size: u64,
    warm: Arc<Warm>,
}

/// The ring range (logical positions) this process has populated for writing and for
/// reading, valid while the ring's discard count is `epoch`. Page faults in the ring cost
/// microseconds each, and taken inside the lock they stall every other process waiting for
/// it (a producer writing into fresh pages while its consumer waits was the slow mode of the
/// seed benchmark); populating ahead, outside the lock, takes them in one call off that path.
#[derive(Debug, Default)]
struct Warm {
    write: Mark,
}

#[derive(Debug, Default)]
struct Mark {
    lo: AtomicU64,
    hi: AtomicU64,
    epoch: AtomicU32,
}

impl serde::Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.block.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let block = Block::deserialize(deserializer)?;
        if block.len() < DATA + 64 {
            return Err(serde::de::Error::custom(
                "shared memory too small for a queue",
            ));
        }
        Ok(Ring::from_block(block))
    }
}

/// The ring locked by this process; unlocks on drop.
struct Held<'a> {
    ring: &'a Ring,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        raw::unlock(self.ring.u32(LOCK));
    }
}

impl Ring {
    /// A ring of `data_size` bytes (virtual: memory is used as items arrive and given back
    /// as they leave) holding at most `max_items` items (0: no item limit).
    pub(crate) fn new(max_items: u64, data_size: usize) -> Result<Ring, QueueError> {
        let block = Block::new("multiproc-queue", DATA + data_size)?;
        block.u64_at(MAX_ITEMS).store(max_items, Ordering::Relaxed);
        block
            .u64_at(DATA_SIZE)
            .store(data_size as u64, Ordering::Release);
        Ok(Ring::from_block(block))
    }

    fn from_block(block: Block) -> Ring {
        let max_items = block.u64_at(MAX_ITEMS).load(Ordering::Acquire);
        // Never trust the header beyond the mapping (the block came from another process).
        let data_size = block
            .u64_at(DATA_SIZE)
            .load(Ordering::Acquire)
            .min((block.len() - DATA) as u64);
        Ring {
            block,
            max_items,
            data_size,
            warm: Arc::default(),
        }
    }

    fn u32(&self, at: usize) -> &AtomicU32 {
        self.block.u32_at(at)
    }

    fn u64(&self, at: usize) -> &AtomicU64 {
        self.block.u64_at(at)
    }

    fn data_size(&self) -> u64 {
        self.data_size
    }

    fn lock(&self) -> Held<'_> {
        if let raw::Acquired::FromDead(_) = raw::lock(self.u32(LOCK), None) {
            self.repair();
        }
        Held { ring: self }
    }

    /// Populates the pages behind logical positions `start..start+len` (and some way past)
    /// unless this handle already did since the last discard. Only a shortcut: a page that
    /// went missing in between is faulted in by the copy as usual.
    fn warm(&self, mark: &Mark, start: u64, len: u64, write: bool) {
        let epoch = self.u32(DISCARDS).load(Ordering::Relaxed);
        if mark.epoch.load(Ordering::Relaxed) == epoch
            && mark.lo.load(Ordering::Relaxed) <= start
            && start + len <= mark.hi.load(Ordering::Relaxed)
        {
            return;
        }
        let size = self.data_size();
        let phys = start % size;
        let span = (len + WARM_AHEAD).min(size - phys);
        self.block
            .populate(DATA + phys as usize, span as usize, write);
        mark.lo.store(start, Ordering::Relaxed);
        mark.hi.store(start + span, Ordering::Relaxed);
        mark.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Restores the invariants after a holder died mid-operation (the lock is held): the
    /// records between head and tail are walked and counted, and a tail past the last whole
    /// record is pulled back. At most the record the dead process was moving is lost (or,
    /// for a reader that died after copying, delivered again).
    fn repair(&self) {
        let size = self.data_size();
        let head = self.u64(HEAD).load(Ordering::Relaxed);
        let tail = self.u64(TAIL).load(Ordering::Relaxed);
        let (mut pos, mut count) = (head, 0u64);
        if tail >= head && tail - head <= size {
            while pos + REC as u64 <= tail {
                let mut len = [0u8; REC];
                self.copy_out(pos, &mut len);
                let next = pos + (REC + u32::from_le_bytes(len) as usize) as u64;
                if next > tail {
                    break;
                }
                pos = next;
                count += 1;
            }
        } else {
            pos = head;
        }
        self.u64(TAIL).store(pos, Ordering::Relaxed);
        self.u64(COUNT).store(count, Ordering::Release);
    }

    /// Copies `bytes` into the ring at logical position `pos` (wrapping).
    fn copy_in(&self, pos: u64, bytes: &[u8]) {
        let size = self.data_size();
        let start = (pos % size) as usize;
        let first = bytes.len().min(size as usize - start);
        self.block.write(DATA + start, &bytes[..first]);
        if first < bytes.len() {
            self.block.write(DATA, &bytes[first..]);
        }
    }

    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let size = self.data_size();
        let start = (pos % size) as usize;
        let first = out.len().min(size as usize - start);
        self.block.read(DATA + start, &mut out[..first]);
        if first < out.len() {
            let rest = first;
            self.block.read(DATA, &mut out[rest..]);
        }
    }

    /// Puts every item of `items` (all or none fit now); `joinable` counts them as tasks.
    /// Waits for room until `deadline` when `block` (a bounded queue), else fails at once.
    pub(crate) fn put(
        &self,
        items: &[impl AsRef<[u8]>],
        block: bool,
        deadline: Option<Instant>,
        joinable: bool,
    ) -> Result<(), QueueError> {
        let size = self.data_size();
        let need: u64 = items.iter().map(|i| (REC + i.as_ref().len()) as u64).sum();
        if let Some(big) = items
            .iter()
            .find(|i| (REC + i.as_ref().len()) as u64 > size)
        {
            return Err(QueueError::TooLarge {
                size: big.as_ref().len(),
                limit: size as usize - REC,
            });
        }
        loop {
            let end = {
                let _held = self.lock();
                if self.u32(CLOSED).load(Ordering::Relaxed) != 0 {
                    return Err(QueueError::Closed);
                }
                let head = self.u64(HEAD).load(Ordering::Relaxed);
                let tail = self.u64(TAIL).load(Ordering::Relaxed);
                let count = self.u64(COUNT).load(Ordering::Relaxed);
                let max = self.max_items;
                let room_bytes = size - (tail - head) >= need;
                let room_items = max == 0 || count + items.len() as u64 <= max;
                if room_bytes && room_items {
                    // An empty ring starts over at 0: a queue that is usually near empty keeps
                    // reusing the same warm pages instead of faulting in fresh ones.
                    let rewind = count == 0 && head == tail && tail != 0;
                    let start = if rewind { 0 } else { tail };
                    let mut pos = start;
                    for item in items {
                        let item = item.as_ref();
                        self.copy_in(pos, &(item.len() as u32).to_le_bytes());
                        self.copy_in(pos + REC as u64, item);
                        pos += (REC + item.len()) as u64;
                    }
                    if joinable {
                        self.u32(UNFINISHED)
                            .fetch_add(items.len() as u32, Ordering::Relaxed);
                    }
                    // Positions first, count last: a writer killed in between leaves records
                    // that `repair` finds and counts.
                    if rewind {
                        self.u64(HEAD).store(0, Ordering::Relaxed);
                    }
                    self.u64(TAIL).store(pos, Ordering::Release);
                    self.u64(COUNT)
                        .store(count + items.len() as u64, Ordering::Release);
                    pos
                } else if !block {
                    return Err(QueueError::Full);
                } else {
                    drop(_held);
                    let ready =
                        || self.u64(HEAD).load(Ordering::SeqCst) != head || self.is_closed();
                    if !self.sleep(PUT_SLEEPERS, NOT_FULL, ready, deadline) {
                        return Err(QueueError::Full);
                    }
                    continue;
                }
            };
            self.notify(GET_SLEEPERS, NOT_EMPTY, items.len() as u32);
            // The next put most likely lands right after this one: its pages are faulted in
            // now, outside the lock (see `Warm`).
            self.warm(&self.warm.write, end, need, true);
            return Ok(());
        }
    }

    /// After publishing a change: wakes up to `n` sleepers of `word`, if there are any. No
    /// system call (and no shared write) when nobody sleeps.
    fn notify(&self, sleepers: usize, word: usize, n: u32) {
        // Pairs with the fence-free SeqCst sequence in `sleep`: either the sleeper sees our
        // change in its last check, or we see it registered and wake it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.u32(sleepers).load(Ordering::SeqCst) > 0 {
            self.u32(word).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.u32(word), n);
        }
    }

    /// Sleeps on `word` until woken, unless `ready()` already holds once registered as a
    /// sleeper; `false` once `deadline` has passed.
    fn sleep(
        &self,
        sleepers: usize,
        word: usize,
        ready: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        let left = raw::remaining(deadline);
        if left == Some(Duration::ZERO) {
            return false;
        }
        self.u32(sleepers).fetch_add(1, Ordering::SeqCst);
        let seq = self.u32(word).load(Ordering::SeqCst);
        if !ready() {
            sys::futex_wait(self.u32(word), seq, left);
        }
        self.u32(sleepers).fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Takes up to `max` items (at least one), waiting until `deadline` when `block`.
    pub(crate) fn get(
        &self,
        max: usize,
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<u8>>, QueueError> {
        self.take_when_ready(block, deadline, |head, count| {
            let n = count.min(max as u64);
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = head;
            for _ in 0..n {
                let mut item = Vec::new();
                pos = self.read_record(pos, &mut item);
                items.push(item);
            }
            (items, n, pos)
        })
    }

    /// Takes one item into `out` (replacing its contents), waiting until `deadline` when
    /// `block`.
    pub(crate) fn get_one(
        &self,
        out: &mut Vec<u8>,
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), QueueError> {
        self.take_when_ready(block, deadline, |head, _| {
            ((), 1, self.read_record(head, out))
        })
    }

    /// Waits (spinning briefly, then sleeping) until there is an item, then, under the lock,
    /// lets `take(head, count)` copy records out from `head`: it returns its result, how many
    /// records it took (at least one) and the position after them.
    fn take_when_ready<R>(
        &self,
        block: bool,
        deadline: Option<Instant>,
        mut take: impl FnMut(u64, u64) -> (R, u64, u64),
    ) -> Result<R, QueueError> {
        let mut spins = 0;
        loop {
            if self.u64(COUNT).load(Ordering::Acquire) > 0
                || self.u32(CLOSED).load(Ordering::Relaxed) != 0
            {
                let held = self.lock();
                let count = self.u64(COUNT).load(Ordering::Relaxed);
                if count > 0 {
                    let head = self.u64(HEAD).load(Ordering::Relaxed);
                    let (taken, n, pos) = take(head, count);
                    self.u64(COUNT).store(count - n, Ordering::Relaxed);
                    self.u64(HEAD).store(pos, Ordering::Release);
                    self.discard_consumed(head, pos);
                    drop(held);
                    self.notify(PUT_SLEEPERS, NOT_FULL, u32::MAX);
                    return Ok(taken);
                }
                if self.u32(CLOSED).load(Ordering::Relaxed) != 0 {
                    return Err(QueueError::Closed);
                }
            }
            if !block {
                return Err(QueueError::Empty);
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                if spins % 50 == 0 {
                    std::thread::yield_now();
                }
                continue;
            }
            let ready = || self.u64(COUNT).load(Ordering::SeqCst) > 0 || self.is_closed();
            if !self.sleep(GET_SLEEPERS, NOT_EMPTY, ready, deadline) {
                return Err(QueueError::Empty);
            }
        }
    }

    /// Copies the record at `pos` into `out` (replacing its contents) and returns the
    /// position after it (the lock is held).
    fn read_record(&self, pos: u64, out: &mut Vec<u8>) -> u64 {
        let mut len = [0u8; REC];
        self.copy_out(pos, &mut len);
        let len = u32::from_le_bytes(len) as usize;
        out.clear();
        out.resize(len, 0);
        self.copy_out(pos + REC as u64, out);
        pos + (REC + len) as u64
    }

    /// Gives back whole chunks that `head..pos` finished consuming.
    fn discard_consumed(&self, head: u64, pos: u64) {
        let size = self.data_size();
        let mut chunk = head / DISCARD_CHUNK;
        while (chunk + 1) * DISCARD_CHUNK <= pos {
            let start = (chunk * DISCARD_CHUNK) % size;
            let len = DISCARD_CHUNK.min(size - start);
            let _ = self.block.discard(DATA + start as usize, len as usize);
            self.u32(DISCARDS).fetch_add(1, Ordering::Relaxed);
            chunk += 1;
        }
    }

    /// A shared word the ring does not use itself, for a protocol on top of it (the pool
    /// marks there that its handler sleeps in `poll` rather than on this ring's futex).
    pub(crate) fn flag(&self) -> &AtomicU32 {
        self.u32(FLAG)
    }

    pub(crate) fn max_items(&self) -> u64 {
        self.max_items
    }

    pub(crate) fn len(&self) -> u64 {
        self.u64(COUNT).load(Ordering::Acquire)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.max_items != 0 && self.len() >= self.max_items
    }

    pub(crate) fn close(&self) {
        {
            let _held = self.lock();
            self.u32(CLOSED).store(1, Ordering::SeqCst);
        }
        self.u32(NOT_EMPTY).fetch_add(1, Ordering::SeqCst);
        self.u32(NOT_FULL).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.u32(NOT_EMPTY), u32::MAX);
        sys::futex_wake(self.u32(NOT_FULL), u32::MAX);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.u32(CLOSED).load(Ordering::SeqCst) != 0
    }

    /// Marks one task done; wakes joiners when none is left.
    pub(crate) fn task_done(&self) -> Result<(), QueueError> {
        let left = {
            let _held = self.lock();
            let unfinished = self.u32(UNFINISHED).load(Ordering::Relaxed);
            if unfinished == 0 {
                return Err(QueueError::TooManyTaskDone);
            }
            self.u32(UNFINISHED)
                .store(unfinished - 1, Ordering::Relaxed);
            unfinished - 1
        };
        if left == 0 {
            self.u32(ALL_DONE).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.u32(ALL_DONE), u32::MAX);
        }
        Ok(())
    }

    /// Waits until every task put has been marked done; `false` on timeout.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        loop {
            let seq = self.u32(ALL_DONE).load(Ordering::SeqCst);
            if self.u32(UNFINISHED).load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = raw::remaining(deadline);
            if left == Some(Duration::ZERO) {
                return false;
            }
            sys::futex_wait(self.u32(ALL_DONE), seq, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Item `i`: a length that varies from 1 byte to a few KiB, and bytes that depend on `i`.
    fn item(i: u64) -> Vec<u8> {
        let len = 1 + (i * 7919 % 3000) as usize;
        (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
    }

    /// Puts and gets with a backlog that grows, shrinks and drains to empty, so that the
    /// positions cross many discarded chunks, start over at 0 when empty and (in a small
    /// ring) wrap around the end, while this handle populates pages ahead: every item comes
    /// back whole and in order.
    fn round_trip(ring: &Ring, total: u64) {
        let (mut put, mut got) = (0u64, 0u64);
        let mut buf = Vec::new();
        while got < total {
            let burst = 1 + put % 97;
            for _ in 0..burst.min(total - put) {
                match ring.put(&[item(put)], false, None, false) {
                    Ok(()) => put += 1,
                    Err(QueueError::Full) => break,
                    Err(e) => panic!("put {put}: {e}"),
                }
            }
            let drain = if put % 5 == 0 {
                put - got
            } else {
                (put - got) / 2 + 1
            };
            for _ in 0..drain.min(put - got) {
                ring.get_one(&mut buf, false, None).unwrap();
                assert_eq!(buf, item(got), "item {got}");
                got += 1;
            }
        }
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn items_survive_discards_rewinds_and_populating_ahead() {
        let ring = Ring::new(0, 1 << 30).unwrap();
        round_trip(&ring, 20_000);
        assert!(
            ring.u32(DISCARDS).load(Ordering::Relaxed) > 0,
            "the test should cross discarded chunks"
        );
    }

    #[test]
    fn items_survive_wrapping_a_small_ring() {
        let ring = Ring::new(0, 64 << 10).unwrap();
        round_trip(&ring, 20_000);
    }
}
