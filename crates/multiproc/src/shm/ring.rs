//! The shared ring under every queue: records `[len: u32][bytes]` in a byte ring that lives
//! in a memfd, with futex sequence words to sleep on.
//!
//! Producers and consumers have a robust lock each, on cache lines of their own: a producer
//! publishes records by moving `TAIL`, a consumer takes them by moving `HEAD`, and neither
//! reads the other side's line unless it must (a producer looks at `HEAD` only when its cached
//! copy says the ring may be full, or to notice that the ring is empty; a consumer reads `TAIL`
//! only once it has taken every record it knew of). With one producer and one consumer on two
//! CPUs, the lines that travel between them per item are the data and, at most, the tail.
//!
//! A producer or consumer killed at any moment leaves the ring recoverable: positions move
//! only after the bytes are copied, each side writes its intended (position, count) before
//! moving, and whoever takes a lock over from a dead holder finishes or discards what it was
//! doing (`repair_put`, `repair_get`). At most the record a dead producer was writing is
//! lost; a consumer killed before it moved `HEAD` leaves its record to the next consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Bell, Block, lock_word};
use crate::error::QueueError;
use crate::sys;

// The header, by cache line.
// Producers' line: written under PUT_LOCK.
const PUT_LOCK: usize = 0;
/// End of the published records (logical position).
const TAIL: usize = 8;
/// Items ever published.
const PUT_COUNT: usize = 16;
/// The producers' last look at `HEAD` (never ahead of it).
const HEAD_SEEN: usize = 24;
/// What the producer holding the lock is about to make `TAIL` and `PUT_COUNT`.
const PUT_INTENT_TAIL: usize = 32;
const PUT_INTENT_COUNT: usize = 40;
// Consumers' line: written under GET_LOCK.
const GET_LOCK: usize = 64;
/// Start of the first record not taken yet (logical position).
const HEAD: usize = 72;
/// Items ever taken.
const GET_COUNT: usize = 80;
/// The consumers' last look at `TAIL` (never ahead of it).
const TAIL_SEEN: usize = 88;
const GET_INTENT_HEAD: usize = 96;
const GET_INTENT_COUNT: usize = 104;
// Read-mostly line.
const MAX_ITEMS: usize = 128;
const DATA_SIZE: usize = 136;
/// Bumped by every discard: pages a handle populated before may be gone.
const DISCARDS: usize = 144;
const CLOSED: usize = 148;
// Sleepers, each pair on its own line.
const GET_SLEEPERS: usize = 192;
const NOT_EMPTY: usize = 196;
const PUT_SLEEPERS: usize = 256;
const NOT_FULL: usize = 260;
const UNFINISHED: usize = 320;
const ALL_DONE: usize = 324;
/// A word the ring's owner gives its own meaning (see [`Ring::flag`]).
const FLAG: usize = 384;
/// Who watches the ring's doorbell (see `shm::bell`).
const BELL_WATCHERS: usize = 448;
/// Where the ring's bytes start.
const DATA: usize = 4096;
/// Consumed memory is given back to the system in chunks of this size.
const DISCARD_CHUNK: u64 = 1 << 20;
/// Record header: the payload length.
const REC: usize = 4;
/// How long a consumer looks for an item before it sleeps, when the library's waiting policy
/// allows it: a producer on the other core usually delivers within a few microseconds, and a
/// sleep/wake pair costs far more.
const SPIN: Duration = Duration::from_micros(20);
/// How far past what it needs now a handle populates the ring's pages in one call.
const WARM_AHEAD: u64 = 256 << 10;
/// Once the tail is this far in, a producer that finds the ring empty starts over at 0: a
/// queue that is usually near empty keeps reusing the same warm pages.
const REWIND_AFTER: u64 = 256 << 10;
/// How much a producer writes between looks at `HEAD` while it waits to find the ring empty.
const LOOK_EVERY: u64 = 4096;

/// One side's position, count and the intent written before moving them.
struct Side {
    pos: usize,
    count: usize,
    intent_pos: usize,
    intent_count: usize,
}

const PRODUCERS: Side = Side {
    pos: TAIL,
    count: PUT_COUNT,
    intent_pos: PUT_INTENT_TAIL,
    intent_count: PUT_INTENT_COUNT,
};

const CONSUMERS: Side = Side {
    pos: HEAD,
    count: GET_COUNT,
    intent_pos: GET_INTENT_HEAD,
    intent_count: GET_INTENT_COUNT,
};

/// Whether a ring operation waits (for room, for an item) or fails at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    Wait,
    Try,
}

/// Whether items put count as unfinished tasks (a joinable queue's `task_done`/`join`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    Items,
    Tasks,
}

/// The ring as seen by one process. The limits never change after creation, so each handle
/// keeps a copy instead of reading the shared header on every operation.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    block: Block,
    /// Rung after each change while someone watches (async waiters, `poll`). A ring nobody
    /// watches that way (a pool worker's reports) has none: one descriptor less per worker.
    bell: Option<Bell>,
    max_items: u64,
    data_size: u64,
    warm: Arc<Warm>,
}

/// The ring range (logical positions) this process has populated for writing, valid while the
/// ring's discard count is `epoch`. Page faults in the ring cost microseconds each, and taken
/// inside a lock they stall every process waiting for it (a producer writing into fresh pages
/// while its consumer waited was the slow mode of the seed benchmark); populating ahead,
/// outside the lock, takes them in one call off that path.
#[derive(Debug, Default)]
struct Warm {
    lo: AtomicU64,
    hi: AtomicU64,
    epoch: AtomicU32,
}

impl serde::Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.block, &self.bell).serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (block, bell) = <(Block, Option<Bell>)>::deserialize(deserializer)?;
        if block.len() < DATA + 64 {
            return Err(serde::de::Error::custom(
                "shared memory too small for a queue",
            ));
        }
        Ok(Ring::from_block(block, bell))
    }
}

/// One of the ring's locks, held by this process; unlocks on drop.
struct Held<'a> {
    word: &'a AtomicU32,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock_word::unlock(self.word);
    }
}

/// The ring's shared memory (not its doorbell).
impl std::os::fd::AsFd for Ring {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.block.0.as_fd()
    }
}

impl Ring {
    /// A ring of `data_size` bytes (virtual: memory is used as items arrive and given back
    /// as they leave) holding at most `max_items` items (0: no item limit).
    pub(crate) fn new(max_items: u64, data_size: usize) -> Result<Ring, QueueError> {
        Ring::with_bell(max_items, data_size, Some(Bell::new()?))
    }

    /// [`Ring::new`] with no doorbell: for a ring that no one waits for in a reactor or in
    /// `poll` (its `bell_for_poll` and `wait_until` must not be called).
    pub(crate) fn without_bell(max_items: u64, data_size: usize) -> Result<Ring, QueueError> {
        Ring::with_bell(max_items, data_size, None)
    }

    fn with_bell(max_items: u64, data_size: usize, bell: Option<Bell>) -> Result<Ring, QueueError> {
        let block = Block::new("multiproc-queue", DATA + data_size)?;
        block.u64_at(MAX_ITEMS).store(max_items, Ordering::Relaxed);
        block
            .u64_at(DATA_SIZE)
            .store(data_size as u64, Ordering::Release);
        Ok(Ring::from_block(block, bell))
    }

    fn from_block(block: Block, bell: Option<Bell>) -> Ring {
        let max_items = block.u64_at(MAX_ITEMS).load(Ordering::Acquire);
        // Never trust the header beyond the mapping (the block came from another process).
        let data_size = block
            .u64_at(DATA_SIZE)
            .load(Ordering::Acquire)
            .clamp(1, (block.len() - DATA) as u64);
        Ring {
            block,
            bell,
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

    /// Moves `side` to `pos` with `count` items behind it: the intent first, so that whoever
    /// takes the lock over from a holder killed in between can finish the count.
    fn advance(&self, side: &Side, pos: u64, count: u64) {
        self.u64(side.intent_pos).store(pos, Ordering::Relaxed);
        self.u64(side.intent_count).store(count, Ordering::Relaxed);
        self.u64(side.pos).store(pos, Ordering::Release);
        self.u64(side.count).store(count, Ordering::Release);
    }

    /// After a holder of `side`'s lock was killed: if it had moved the position, its count
    /// is finished from the intent. Returns the position.
    fn finish_advance(&self, side: &Side) -> u64 {
        let pos = self.u64(side.pos).load(Ordering::Acquire);
        if pos == self.u64(side.intent_pos).load(Ordering::Relaxed) {
            let count = self.u64(side.intent_count).load(Ordering::Relaxed);
            self.u64(side.count).store(count, Ordering::Release);
        }
        pos
    }

    /// The producers' lock (always taken before the consumers' one when both are needed).
    fn lock_put(&self) -> Held<'_> {
        let word = self.u32(PUT_LOCK);
        if let lock_word::Acquired::FromDead(_) = lock_word::lock(word, None) {
            self.repair_put();
        }
        Held { word }
    }

    /// The consumers' lock.
    fn lock_get(&self) -> Held<'_> {
        let word = self.u32(GET_LOCK);
        if let lock_word::Acquired::FromDead(_) = lock_word::lock(word, None) {
            self.repair_get();
        }
        Held { word }
    }

    /// A producer died holding the lock (which we now hold). Records past `TAIL` are
    /// half-written: ignored. If it had moved `TAIL`, its count is finished from the intent.
    /// If it died starting the ring over (`TAIL` moved back to 0 before `HEAD`), the
    /// consumers' side is finished too.
    fn repair_put(&self) {
        let tail = self.finish_advance(&PRODUCERS);
        if self.u64(HEAD).load(Ordering::Acquire) > tail {
            let _get = self.lock_get(); // repairs the consumers' side
        }
        let head = self.u64(HEAD).load(Ordering::Acquire);
        self.u64(HEAD_SEEN).store(head.min(tail), Ordering::Relaxed);
    }

    /// A consumer died holding the lock (which we now hold). If it had moved `HEAD`, its
    /// count is finished from the intent; otherwise the record it was copying is still
    /// there for us. A `HEAD` past `TAIL` means a producer died starting the ring over an
    /// empty ring: the consumers start over at 0 too.
    fn repair_get(&self) {
        let head = self.finish_advance(&CONSUMERS);
        let tail = self.u64(TAIL).load(Ordering::Acquire);
        if head > tail {
            let count = self.u64(GET_COUNT).load(Ordering::Relaxed);
            self.advance(&CONSUMERS, 0, count);
        }
        let seen = self.u64(TAIL_SEEN).load(Ordering::Relaxed);
        self.u64(TAIL_SEEN).store(seen.min(tail), Ordering::Relaxed);
    }

    /// Populates for writing the pages behind logical positions `start..start+len` (and some
    /// way past) unless this handle already did since the last discard. Only a shortcut: a
    /// page that went missing in between is faulted in by the copy as usual.
    fn warm(&self, start: u64, len: u64) {
        let mark = &self.warm;
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
            .populate_for_writing(DATA + phys as usize, span as usize);
        mark.lo.store(start, Ordering::Relaxed);
        mark.hi.store(start + span, Ordering::Relaxed);
        mark.epoch.store(epoch, Ordering::Relaxed);
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

    /// With the producers' lock held and the ring seen empty at `tail`: starts over at 0 if
    /// the consumers' lock is free right now (otherwise another time), so that a queue that
    /// is usually near empty keeps reusing its first, warm pages. `TAIL` moves first: a
    /// producer that dies in between leaves `HEAD > TAIL`, which the repairs recognise.
    fn rewind(&self, tail: u64) -> bool {
        let word = self.u32(GET_LOCK);
        if !lock_word::try_lock(word) {
            return false;
        }
        let _get = Held { word };
        if self.u64(HEAD).load(Ordering::Acquire) != tail {
            return false;
        }
        self.advance(&PRODUCERS, 0, self.u64(PUT_COUNT).load(Ordering::Relaxed));
        self.advance(&CONSUMERS, 0, self.u64(GET_COUNT).load(Ordering::Relaxed));
        self.u64(TAIL_SEEN).store(0, Ordering::Relaxed);
        self.u64(HEAD_SEEN).store(0, Ordering::Relaxed);
        true
    }

    /// Puts every item of `items` (all or none fit now); [`Tally::Tasks`] counts them as
    /// unfinished tasks. Waits for room until `deadline` with [`Blocking::Wait`] (a bounded
    /// queue), else fails at once.
    pub(crate) fn put(
        &self,
        items: &[impl AsRef<[u8]>],
        wait: Blocking,
        deadline: Option<Instant>,
        tally: Tally,
    ) -> Result<(), QueueError> {
        let (block, joinable) = (wait == Blocking::Wait, tally == Tally::Tasks);
        let size = self.data_size();
        let n = items.len() as u64;
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
        if need > size {
            return Err(QueueError::Full);
        }
        loop {
            let end = {
                let _put = self.lock_put();
                if self.u32(CLOSED).load(Ordering::Relaxed) != 0 {
                    return Err(QueueError::Closed);
                }
                // The consumers' count, read before their position: whatever they take after
                // this moves it on, which is what a put that has to wait sleeps on. Not read
                // when nothing depends on it (an unbounded put that fails rather than waits):
                // that line lives on the consumers' CPU.
                let taken = if self.max_items > 0 || block {
                    self.u64(GET_COUNT).load(Ordering::SeqCst)
                } else {
                    0
                };
                let mut tail = self.u64(TAIL).load(Ordering::Relaxed);
                let mut head = self.u64(HEAD_SEEN).load(Ordering::Relaxed);
                // A fresh look at the consumers' side only when the cached one says the ring
                // may be full, or, far enough in, to catch it empty and start over.
                let look = size - (tail - head) < need
                    || (tail >= REWIND_AFTER && tail - head >= LOOK_EVERY);
                if look {
                    head = self.u64(HEAD).load(Ordering::Acquire).min(tail);
                    self.u64(HEAD_SEEN).store(head, Ordering::Relaxed);
                }
                if head == tail && tail >= REWIND_AFTER && self.rewind(tail) {
                    (tail, head) = (0, 0);
                }
                let put_count = self.u64(PUT_COUNT).load(Ordering::Relaxed);
                let room_bytes = size - (tail - head) >= need;
                let room_items =
                    self.max_items == 0 || put_count.saturating_sub(taken) + n <= self.max_items;
                if room_bytes && room_items {
                    let mut pos = tail;
                    for item in items {
                        let item = item.as_ref();
                        self.copy_in(pos, &(item.len() as u32).to_le_bytes());
                        self.copy_in(pos + REC as u64, item);
                        pos += (REC + item.len()) as u64;
                    }
                    if joinable {
                        self.u32(UNFINISHED)
                            .fetch_add(items.len() as u32, Ordering::SeqCst);
                    }
                    self.advance(&PRODUCERS, pos, put_count + n);
                    pos
                } else if !block {
                    return Err(QueueError::Full);
                } else {
                    drop(_put);
                    // Every take moves the count on (positions may start over at 0).
                    let ready =
                        || self.u64(GET_COUNT).load(Ordering::SeqCst) != taken || self.is_closed();
                    if !self.sleep(PUT_SLEEPERS, NOT_FULL, ready, deadline) {
                        return Err(QueueError::Full);
                    }
                    continue;
                }
            };
            self.notify(GET_SLEEPERS, NOT_EMPTY, items.len() as u32);
            // The next put most likely lands right after this one: its pages are faulted in
            // now, outside the lock (see `Warm`).
            self.warm(end, need);
            return Ok(());
        }
    }

    /// After publishing a change: wakes up to `n` sleepers of `word`, if there are any. No
    /// system call (and no shared write) when nobody sleeps.
    fn notify(&self, sleepers: usize, word: usize, n: u32) {
        // Pairs with the sleeper's registration and fence in `sleep`: either the sleeper sees
        // our change in its last check, or we see it registered and wake it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.u32(sleepers).load(Ordering::SeqCst) > 0 {
            self.u32(word).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.u32(word), n);
        }
        self.ring_bell();
    }

    /// After a change: rings the doorbell if there is one and someone watches it.
    fn ring_bell(&self) {
        if let Some(bell) = &self.bell {
            bell.ring_if_watched(self.u32(BELL_WATCHERS));
        }
    }

    /// The doorbell, which only a ring made [`without_bell`](Ring::without_bell) lacks.
    fn bell(&self) -> &Bell {
        self.bell
            .as_ref()
            .expect("a ring without a doorbell is never waited for through one")
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
        let left = lock_word::remaining(deadline);
        if left == Some(Duration::ZERO) {
            return false;
        }
        /// Counts a sleeper while it lives (also when `ready` unwinds).
        struct Sleeper<'a>(&'a AtomicU32);
        impl Drop for Sleeper<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.u32(sleepers).fetch_add(1, Ordering::SeqCst);
        let _sleeper = Sleeper(self.u32(sleepers));
        let seq = self.u32(word).load(Ordering::SeqCst);
        // Pairs with the fence in `notify`: `ready` sees the change, or the changer sees this
        // sleeper (whatever `ready` reads and however it reads it).
        std::sync::atomic::fence(Ordering::SeqCst);
        if !ready() {
            sys::futex_wait(self.u32(word), seq, left);
        }
        true
    }

    /// Takes up to `max` items (at least one), waiting until `deadline` with
    /// [`Blocking::Wait`].
    pub(crate) fn get(
        &self,
        max: usize,
        wait: Blocking,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<u8>>, QueueError> {
        // All there is now, up to `max`: a fresh look at the tail, not the cached one.
        self.take_when_ready(wait, deadline, max > 1, |head, tail| {
            let mut items = Vec::new();
            let mut pos = head;
            while pos < tail && items.len() < max.max(1) {
                let mut item = Vec::new();
                pos = self.read_record(pos, &mut item);
                items.push(item);
            }
            let n = items.len() as u64;
            (items, n, pos)
        })
    }

    /// Takes one item into `out` (replacing its contents), waiting until `deadline` with
    /// [`Blocking::Wait`].
    pub(crate) fn get_one(
        &self,
        out: &mut Vec<u8>,
        wait: Blocking,
        deadline: Option<Instant>,
    ) -> Result<(), QueueError> {
        self.take_when_ready(wait, deadline, false, |head, _| {
            ((), 1, self.read_record(head, out))
        })
    }

    /// Whether there may be a record to take, without taking a lock: one the consumers
    /// already know of (their own line), or else a tail that moved (the producers' line).
    fn may_have_items(&self) -> bool {
        let head = self.u64(HEAD).load(Ordering::Relaxed);
        head < self.u64(TAIL_SEEN).load(Ordering::Relaxed)
            || self.u64(TAIL).load(Ordering::Acquire) != head
    }

    /// Waits (spinning briefly, then sleeping) until there is an item, then, under the
    /// consumers' lock, lets `take(head, tail)` copy records out from `head` (all of them
    /// whole below `tail`, the cached tail unless `fresh_tail`): it returns its result, how
    /// many records it took (at least one) and the position after them.
    fn take_when_ready<R>(
        &self,
        wait: Blocking,
        deadline: Option<Instant>,
        fresh_tail: bool,
        mut take: impl FnMut(u64, u64) -> (R, u64, u64),
    ) -> Result<R, QueueError> {
        let mut spin = crate::spin::Spinner::new(SPIN);
        loop {
            if self.may_have_items() || self.u32(CLOSED).load(Ordering::Relaxed) != 0 {
                let get = self.lock_get();
                let head = self.u64(HEAD).load(Ordering::Relaxed);
                let mut tail = self.u64(TAIL_SEEN).load(Ordering::Relaxed);
                if head >= tail || fresh_tail {
                    tail = self.u64(TAIL).load(Ordering::Acquire);
                    self.u64(TAIL_SEEN).store(tail, Ordering::Relaxed);
                }
                if head < tail {
                    let (taken, n, pos) = take(head, tail);
                    let count = self.u64(GET_COUNT).load(Ordering::Relaxed) + n;
                    self.advance(&CONSUMERS, pos, count);
                    self.discard_consumed(head, pos);
                    drop(get);
                    self.notify(PUT_SLEEPERS, NOT_FULL, u32::MAX);
                    spin.hit();
                    return Ok(taken);
                }
                if self.u32(CLOSED).load(Ordering::Relaxed) != 0 {
                    return Err(QueueError::Closed);
                }
            }
            if wait == Blocking::Try {
                if let Some(bell) = &self.bell {
                    bell.quiet(self.u32(BELL_WATCHERS), || {
                        self.may_have_items() || self.is_closed()
                    });
                }
                return Err(QueueError::Empty);
            }
            if spin.keep_going() {
                continue;
            }
            let ready = || {
                std::sync::atomic::fence(Ordering::SeqCst);
                self.may_have_items() || self.is_closed()
            };
            if !self.sleep(GET_SLEEPERS, NOT_EMPTY, ready, deadline) {
                return Err(QueueError::Empty);
            }
        }
    }

    /// Copies the record at `pos` into `out` (replacing its contents) and returns the
    /// position after it (the consumers' lock is held).
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
    /// marks there that its handler sleeps in `poll` rather than on this ring's futex, and
    /// counts the callers watching the ring).
    pub(crate) fn flag(&self) -> &AtomicU32 {
        self.u32(FLAG)
    }

    pub(crate) fn max_items(&self) -> u64 {
        self.max_items
    }

    /// Items in the ring now (a producer or consumer in mid-step may be counted or not yet).
    pub(crate) fn len(&self) -> u64 {
        let put = self.u64(PUT_COUNT).load(Ordering::Acquire);
        let taken = self.u64(GET_COUNT).load(Ordering::Acquire);
        put.saturating_sub(taken)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.max_items != 0 && self.len() >= self.max_items
    }

    pub(crate) fn close(&self) {
        {
            let _put = self.lock_put();
            self.u32(CLOSED).store(1, Ordering::SeqCst);
        }
        self.u32(NOT_EMPTY).fetch_add(1, Ordering::SeqCst);
        self.u32(NOT_FULL).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.u32(NOT_EMPTY), u32::MAX);
        sys::futex_wake(self.u32(NOT_FULL), u32::MAX);
        self.ring_bell();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.u32(CLOSED).load(Ordering::SeqCst) != 0
    }

    /// Marks one task done; wakes joiners when none is left.
    pub(crate) fn task_done(&self) -> Result<(), QueueError> {
        let word = self.u32(UNFINISHED);
        let left = word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| QueueError::TooManyTaskDone)?
            - 1;
        if left == 0 {
            self.u32(ALL_DONE).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.u32(ALL_DONE), u32::MAX);
            self.ring_bell();
        }
        Ok(())
    }

    /// Whether every task put has been marked done.
    #[cfg(feature = "tokio")]
    pub(crate) fn all_done(&self) -> bool {
        self.u32(UNFINISHED).load(Ordering::SeqCst) == 0
    }

    /// Sleeps (on the futex an item's put wakes, as a `get` does) until an item is put or
    /// [`wake_arrival_sleepers`](Ring::wake_arrival_sleepers) is called, unless `ready()`,
    /// looked at once registered as a sleeper, already holds; `false` once `deadline` has
    /// passed (then `ready` is not called). A put wakes one sleeper per item: a sleeper that
    /// takes what others wait for must wake them.
    pub(crate) fn sleep_for_arrival(
        &self,
        ready: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        self.sleep(GET_SLEEPERS, NOT_EMPTY, ready, deadline)
    }

    /// Wakes every thread in [`sleep_for_arrival`](Ring::sleep_for_arrival), in any process,
    /// as an arrival would.
    pub(crate) fn wake_arrival_sleepers(&self) {
        self.u32(NOT_EMPTY).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.u32(NOT_EMPTY), u32::MAX);
    }

    /// The ring's doorbell for `poll`: readable when an item may have come (or the ring was
    /// closed). Every process's changes ring it from now on.
    pub(crate) fn bell_for_poll(&self) -> std::os::fd::BorrowedFd<'_> {
        self.bell().for_poll(self.u32(BELL_WATCHERS))
    }

    /// Runs `op` until it is ready, waiting in the runtime's reactor for the ring's changes
    /// in between (see `shm::bell`).
    #[cfg(feature = "tokio")]
    pub(crate) async fn wait_until<R>(
        &self,
        op: impl FnMut() -> std::task::Poll<R>,
    ) -> std::io::Result<R> {
        self.bell().wait_until(self.u32(BELL_WATCHERS), op).await
    }

    /// Waits until every task put has been marked done; `false` on timeout.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        loop {
            let seq = self.u32(ALL_DONE).load(Ordering::SeqCst);
            if self.u32(UNFINISHED).load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = lock_word::remaining(deadline);
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
                match ring.put(&[item(put)], Blocking::Try, None, Tally::Items) {
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
                ring.get_one(&mut buf, Blocking::Try, None).unwrap();
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

/// A killed producer or consumer, simulated: the ring is left as a process would leave it if
/// killed at a given point of a put, a get or a rewind, its lock held by a pid that no longer
/// runs; the next user takes the lock over and must find the ring whole.
#[cfg(test)]
mod crash_tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn ring_with(items: &[&[u8]]) -> Ring {
        let ring = Ring::new(0, 1 << 20).unwrap();
        for item in items {
            ring.put(&[*item], Blocking::Try, None, Tally::Items)
                .unwrap();
        }
        ring
    }

    /// Writes a whole record at the tail as a producer would, without publishing it.
    fn write_record(ring: &Ring, item: &[u8]) -> u64 {
        let tail = ring.u64(TAIL).load(Ordering::Relaxed);
        ring.copy_in(tail, &(item.len() as u32).to_le_bytes());
        ring.copy_in(tail + REC as u64, item);
        tail + (REC + item.len()) as u64
    }

    fn take_all(ring: &Ring) -> Vec<Vec<u8>> {
        ring.get(usize::MAX, Blocking::Try, None)
            .unwrap_or_default()
    }

    #[test]
    fn producer_killed_before_publishing_loses_only_its_record() {
        let ring = ring_with(&[b"one"]);
        write_record(&ring, b"half-written");
        ring.u32(PUT_LOCK).store(dead_pid(), Ordering::SeqCst);
        ring.put(&[b"two"], Blocking::Try, None, Tally::Items)
            .unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(take_all(&ring), [b"one".to_vec(), b"two".to_vec()]);
    }

    /// Leaves `side` as a holder killed between moving the position and storing the count.
    fn killed_mid_advance(ring: &Ring, side: &Side, lock: usize, pos: u64) {
        let count = ring.u64(side.count).load(Ordering::Relaxed);
        ring.u64(side.intent_pos).store(pos, Ordering::Relaxed);
        ring.u64(side.intent_count)
            .store(count + 1, Ordering::Relaxed);
        ring.u64(side.pos).store(pos, Ordering::Release);
        ring.u32(lock).store(dead_pid(), Ordering::SeqCst);
    }

    #[test]
    fn producer_killed_after_moving_the_tail_has_its_count_finished() {
        let ring = ring_with(&[b"one"]);
        let end = write_record(&ring, b"two");
        killed_mid_advance(&ring, &PRODUCERS, PUT_LOCK, end);
        ring.put(&[b"three"], Blocking::Try, None, Tally::Items)
            .unwrap();
        assert_eq!(ring.len(), 3);
        assert_eq!(take_all(&ring).len(), 3);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn consumer_killed_while_copying_leaves_its_record_to_the_next() {
        let ring = ring_with(&[b"one", b"two"]);
        ring.u32(GET_LOCK).store(dead_pid(), Ordering::SeqCst);
        let mut out = Vec::new();
        ring.get_one(&mut out, Blocking::Try, None).unwrap();
        assert_eq!(out, b"one");
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn consumer_killed_after_moving_the_head_has_its_count_finished() {
        let ring = ring_with(&[b"one", b"two"]);
        let head = ring.u64(HEAD).load(Ordering::Relaxed);
        killed_mid_advance(&ring, &CONSUMERS, GET_LOCK, head + (REC + 3) as u64);
        assert_eq!(take_all(&ring), [b"two".to_vec()]);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn producer_killed_while_starting_over_leaves_a_working_ring() {
        let ring = ring_with(&[]);
        // An empty ring far in, both positions at X; the rewinder moved the tail to 0 and
        // died holding both locks.
        let x = REWIND_AFTER + 123;
        for word in [
            TAIL,
            HEAD,
            HEAD_SEEN,
            TAIL_SEEN,
            PUT_INTENT_TAIL,
            GET_INTENT_HEAD,
        ] {
            ring.u64(word).store(x, Ordering::Relaxed);
        }
        ring.u64(PUT_INTENT_TAIL).store(0, Ordering::Relaxed);
        ring.u64(TAIL).store(0, Ordering::Release);
        let pid = dead_pid();
        ring.u32(PUT_LOCK).store(pid, Ordering::SeqCst);
        ring.u32(GET_LOCK).store(pid, Ordering::SeqCst);
        ring.put(&[b"after"], Blocking::Try, None, Tally::Items)
            .unwrap();
        assert_eq!(ring.len(), 1);
        assert_eq!(take_all(&ring), [b"after".to_vec()]);
        ring.put(&[b"again"], Blocking::Try, None, Tally::Items)
            .unwrap();
        assert_eq!(take_all(&ring), [b"again".to_vec()]);
    }
}
