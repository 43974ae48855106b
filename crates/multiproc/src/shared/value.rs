//! `Value<T>` and `Array<T>`: plain data in shared memory.

use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::shm::Block;
use crate::sync::{AcquireError, RLock, RLockGuard};

/// Where the data starts in a block: room for alignment up to 64 bytes.
const DATA: usize = 64;

fn size_of_n<T>(n: usize) -> Result<usize, SyncError> {
    std::mem::size_of::<T>()
        .checked_mul(n)
        .and_then(|b| b.checked_add(DATA))
        .ok_or_else(|| SyncError::Invalid(format!("an array of {n} elements is too large")))
}

/// Takes the optional lock of a value or an array, waiting at most `timeout` (`None`: no
/// limit); at once when the calling thread already holds it (through `get_lock()`). Plain
/// data cannot be left half-built in a way that breaks memory safety: a dead holder's lock is
/// taken over and work goes on.
fn guard(
    lock: &Option<RLock>,
    timeout: Option<Duration>,
) -> Result<Option<RLockGuard<'_>>, SyncError> {
    let Some(l) = lock else { return Ok(None) };
    let got = match timeout {
        None => l.acquire(),
        Some(t) => l.acquire_timeout(t),
    };
    Ok(Some(got.or_else(AcquireError::recover)?))
}

/// Runs `f`, a copy in or out that never takes the lock, under the optional lock: a free
/// lock costs one compare-and-swap and one swap (see `RLock::run_brief`).
fn brief<R>(lock: &Option<RLock>, f: impl FnOnce() -> R) -> R {
    match lock {
        None => f(),
        Some(l) => l.run_brief(f),
    }
}

/// A new lock for a value or an array when `synchronized`.
fn new_lock(synchronized: bool) -> Result<Option<RLock>, SyncError> {
    synchronized.then(RLock::new).transpose()
}

/// A single plain-old-data value in shared memory (Python's `multiprocessing.Value`), with
/// an optional lock. `T` must be [`bytemuck::Pod`]: no pointers, no padding, any bit pattern
/// valid, so that sharing its bytes between processes is sound.
///
/// The lock is an [`RLock`], as CPython's default: `get`, `set` and `update` take it, and
/// take it at once when the calling thread already holds it through
/// [`get_lock`](Value::get_lock), so Python's `with v.get_lock(): v.value += 1` works.
///
/// ```
/// let counter = multiproc::Value::new(0u64)?;
/// counter.update(|v| *v += 5)?;
/// assert_eq!(counter.get(), 5);
/// {
///     let _held = counter.get_lock().expect("synchronized").acquire()?;
///     counter.set(counter.get() + 1); // no deadlock: this thread holds the lock
/// }
/// assert_eq!(counter.get(), 6);
/// # Ok::<(), multiproc::SyncError>(())
/// ```
///
/// Types with pointers are refused at compile time:
/// ```compile_fail
/// let v = multiproc::Value::new(String::new());
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Value<T: Pod> {
    block: Block,
    lock: Option<RLock>,
    _t: PhantomData<T>,
}

impl<T: Pod> Value<T> {
    /// A value with a lock (`synchronized`, as Python's default).
    pub fn new(value: T) -> Result<Value<T>, SyncError> {
        Value::with_lock(value, true)
    }

    /// A value with or without a lock. Without one, `get`/`set` are still whole-value
    /// copies, but read-modify-write sequences race.
    pub fn with_lock(value: T, synchronized: bool) -> Result<Value<T>, SyncError> {
        if std::mem::align_of::<T>() > DATA {
            return Err(SyncError::Invalid(
                "alignment over 64 bytes is not supported".into(),
            ));
        }
        let block = Block::new("multiproc-value", size_of_n::<T>(1)?)?;
        block.write(DATA, bytemuck::bytes_of(&value));
        Ok(Value {
            block,
            lock: new_lock(synchronized)?,
            _t: PhantomData,
        })
    }

    /// The lock, if the value has one (Python's `get_lock()`). Hold it to make several
    /// operations one atomic step; `get`, `set` and `update` still work while this thread
    /// holds it. Other threads and processes wait for it.
    ///
    /// ```
    /// fn bump(v: &multiproc::Value<u64>) -> multiproc::Result<()> {
    ///     // Python: `with v.get_lock(): v.value += 1`
    ///     let _held = v.get_lock().expect("a value made with a lock").acquire()?;
    ///     v.set(v.get() + 1);
    ///     Ok(())
    /// }
    /// let v = multiproc::Value::new(41u64)?;
    /// bump(&v)?;
    /// assert_eq!(v.get(), 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_lock(&self) -> Option<&RLock> {
        self.lock.as_ref()
    }

    /// A copy of the value (read under the lock when there is one).
    pub fn get(&self) -> T {
        brief(&self.lock, || self.read())
    }

    fn read(&self) -> T {
        let mut v = T::zeroed();
        self.block.read(DATA, bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Stores `value` (under the lock when there is one).
    pub fn set(&self, value: T) {
        brief(&self.lock, || {
            self.block.write(DATA, bytemuck::bytes_of(&value))
        });
    }

    /// Reads, changes and writes back the value while holding the lock; returns what `f`
    /// returns. Without a lock this is not atomic.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, SyncError> {
        self.update_within(None, f)
    }

    /// [`update`](Value::update) that gives up after `timeout` waiting for the lock
    /// ([`SyncError::Timeout`]).
    pub fn update_timeout<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, SyncError> {
        self.update_within(Some(timeout), f)
    }

    fn update_within<R>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, SyncError> {
        let _g = guard(&self.lock, timeout)?;
        let mut v = self.read();
        let r = f(&mut v);
        self.block.write(DATA, bytemuck::bytes_of(&v));
        Ok(r)
    }
}

/// A fixed-length array of plain-old-data values in shared memory (Python's
/// `multiprocessing.Array`), with an optional lock: an [`RLock`], which the array's own
/// methods take at once when the calling thread holds it (see [`Value`]).
///
/// ```
/// let a = multiproc::Array::from_slice(&[1i32, 2, 3])?;
/// a.set(1, 20)?;
/// assert_eq!(a.to_vec(), [1, 20, 3]);
/// assert!(a.get(3).is_err());
/// # Ok::<(), multiproc::SyncError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Array<T: Pod> {
    block: Block,
    len: usize,
    lock: Option<RLock>,
    _t: PhantomData<T>,
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements, with a lock.
    pub fn zeroed(len: usize) -> Result<Array<T>, SyncError> {
        Array::build(len, None, true)
    }

    /// An array holding a copy of `items`, with a lock.
    pub fn from_slice(items: &[T]) -> Result<Array<T>, SyncError> {
        Array::build(items.len(), Some(items), true)
    }

    /// An array holding a copy of `items`, with or without a lock.
    pub fn from_slice_with_lock(items: &[T], synchronized: bool) -> Result<Array<T>, SyncError> {
        Array::build(items.len(), Some(items), synchronized)
    }

    fn build(len: usize, items: Option<&[T]>, synchronized: bool) -> Result<Array<T>, SyncError> {
        if std::mem::align_of::<T>() > DATA {
            return Err(SyncError::Invalid(
                "alignment over 64 bytes is not supported".into(),
            ));
        }
        let block = Block::new("multiproc-array", size_of_n::<T>(len)?)?;
        if let Some(items) = items {
            block.write(DATA, bytemuck::cast_slice(items));
        }
        Ok(Array {
            block,
            len,
            lock: new_lock(synchronized)?,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lock, if the array has one (Python's `get_lock()`); the array's methods still
    /// work while this thread holds it.
    pub fn get_lock(&self) -> Option<&RLock> {
        self.lock.as_ref()
    }

    fn offset(&self, index: usize) -> Result<usize, SyncError> {
        if index >= self.len {
            return Err(SyncError::Invalid(format!(
                "index {index} out of range for an array of {}",
                self.len
            )));
        }
        Ok(DATA + index * std::mem::size_of::<T>())
    }

    /// Element `index`.
    pub fn get(&self, index: usize) -> Result<T, SyncError> {
        let at = self.offset(index)?;
        let mut v = T::zeroed();
        brief(&self.lock, || {
            self.block.read(at, bytemuck::bytes_of_mut(&mut v))
        });
        Ok(v)
    }

    /// Sets element `index`.
    pub fn set(&self, index: usize, value: T) -> Result<(), SyncError> {
        let at = self.offset(index)?;
        brief(&self.lock, || {
            self.block.write(at, bytemuck::bytes_of(&value))
        });
        Ok(())
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        brief(&self.lock, || self.read_all())
    }

    fn read_all(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.len];
        self.block.read(DATA, bytemuck::cast_slice_mut(&mut v));
        v
    }

    /// Works on a copy of the whole array under the lock and writes it back.
    pub fn update<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R, SyncError> {
        let _g = guard(&self.lock, None)?;
        let mut v = self.read_all();
        let r = f(&mut v);
        self.block.write(DATA, bytemuck::cast_slice(&v));
        Ok(r)
    }
}
