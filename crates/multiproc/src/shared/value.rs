//! `Value<T>` and `Array<T>`: plain data in shared memory.

use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Serialize};

use super::block::Block;
use crate::error::SyncError;
use crate::sync::{AcquireError, Lock, LockGuard};

/// Where the data starts in a block: room for alignment up to 64 bytes.
const DATA: usize = 64;

fn size_of_n<T>(n: usize) -> Result<usize, SyncError> {
    std::mem::size_of::<T>()
        .checked_mul(n)
        .and_then(|b| b.checked_add(DATA))
        .ok_or_else(|| SyncError::Invalid(format!("an array of {n} elements is too large")))
}

/// Takes the optional lock of a value or an array. Plain data cannot be left half-built in a
/// way that breaks memory safety: a dead holder's lock is taken over and work goes on.
fn guard(lock: &Option<Lock>) -> Result<Option<LockGuard<'_>>, SyncError> {
    match lock {
        None => Ok(None),
        Some(l) => Ok(Some(l.acquire().or_else(AcquireError::recover)?)),
    }
}

/// A single plain-old-data value in shared memory (Python's `multiprocessing.Value`), with
/// an optional lock. `T` must be [`bytemuck::Pod`]: no pointers, no padding, any bit pattern
/// valid, so that sharing its bytes between processes is sound.
///
/// ```
/// let counter = multiproc::Value::new(0u64)?;
/// counter.update(|v| *v += 5)?;
/// assert_eq!(counter.get(), 5);
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
    lock: Option<Lock>,
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
        let lock = if synchronized {
            Some(Lock::new()?)
        } else {
            None
        };
        Ok(Value {
            block,
            lock,
            _t: PhantomData,
        })
    }

    /// The lock, if the value has one (Python's `get_lock()`).
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    fn guard(&self) -> Result<Option<LockGuard<'_>>, SyncError> {
        guard(&self.lock)
    }

    /// A copy of the value (read under the lock when there is one).
    pub fn get(&self) -> T {
        let _g = self.guard().ok().flatten();
        self.read()
    }

    fn read(&self) -> T {
        let mut v = T::zeroed();
        self.block.read(DATA, bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Stores `value` (under the lock when there is one).
    pub fn set(&self, value: T) {
        let _g = self.guard().ok().flatten();
        self.block.write(DATA, bytemuck::bytes_of(&value));
    }

    /// Reads, changes and writes back the value while holding the lock; returns what `f`
    /// returns. Without a lock this is not atomic.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, SyncError> {
        let _g = self.guard()?;
        let mut v = self.read();
        let r = f(&mut v);
        self.block.write(DATA, bytemuck::bytes_of(&v));
        Ok(r)
    }

    /// [`update`](Value::update) that gives up after `timeout` waiting for the lock.
    pub fn update_timeout<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, SyncError> {
        let _g = match &self.lock {
            None => None,
            Some(l) => Some(l.acquire_timeout(timeout).or_else(AcquireError::recover)?),
        };
        let mut v = self.read();
        let r = f(&mut v);
        self.block.write(DATA, bytemuck::bytes_of(&v));
        Ok(r)
    }
}

/// A fixed-length array of plain-old-data values in shared memory (Python's
/// `multiprocessing.Array`), with an optional lock.
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
    lock: Option<Lock>,
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
        let lock = if synchronized {
            Some(Lock::new()?)
        } else {
            None
        };
        Ok(Array {
            block,
            len,
            lock,
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

    /// The lock, if the array has one.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    fn guard(&self) -> Result<Option<LockGuard<'_>>, SyncError> {
        guard(&self.lock)
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
        let _g = self.guard()?;
        let mut v = T::zeroed();
        self.block.read(at, bytemuck::bytes_of_mut(&mut v));
        Ok(v)
    }

    /// Sets element `index`.
    pub fn set(&self, index: usize, value: T) -> Result<(), SyncError> {
        let at = self.offset(index)?;
        let _g = self.guard()?;
        self.block.write(at, bytemuck::bytes_of(&value));
        Ok(())
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        let _g = self.guard().ok().flatten();
        self.read_all()
    }

    fn read_all(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.len];
        self.block.read(DATA, bytemuck::cast_slice_mut(&mut v));
        v
    }

    /// Works on a copy of the whole array under the lock and writes it back.
    pub fn update<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R, SyncError> {
        let _g = self.guard()?;
        let mut v = self.read_all();
        let r = f(&mut v);
        self.block.write(DATA, bytemuck::cast_slice(&v));
        Ok(r)
    }
}
