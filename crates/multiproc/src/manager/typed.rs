//! Typed proxies of the built-in kinds.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::{ByteBuf, Bytes};

use super::cpython::convert::{from_py, to_py};
use super::cpython::{PyDict, PyList, PyLock, PyQueue, PyValue};
use super::proxy::{Proxy, ProxyType};
use super::wire::{
    BarrierCall, ConditionCall, DictCall, EventCall, JoinableCall, ListCall, LockCall,
    NamespaceCall, QueueCall, SemaphoreCall, SeqCall, ValueCall,
};
use crate::codec;
use crate::error::{ManagerError, SyncError};

/// Encodes an item (a key, a value) for the server, which keeps it as bytes.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<ByteBuf, ManagerError> {
    Ok(codec::encode(value)?.into())
}

/// Decodes a reply payload that is a plain value (a length, a flag).
pub(super) fn plain<R: DeserializeOwned>(payload: &[u8]) -> Result<R, ManagerError> {
    Ok(codec::decode(payload)?)
}

/// Decodes a reply payload that is a count.
pub(super) fn count(payload: &[u8]) -> Result<usize, ManagerError> {
    plain::<u64>(payload).map(|n| n as usize)
}

/// Decodes a reply payload that is one encoded item.
pub(super) fn item<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ManagerError> {
    let bytes: &Bytes = codec::decode_borrowed(payload)?;
    Ok(codec::decode(bytes)?)
}

/// Decodes a reply payload that is an optional encoded item.
pub(super) fn opt_item<T: DeserializeOwned>(payload: &[u8]) -> Result<Option<T>, ManagerError> {
    let bytes: Option<&Bytes> = codec::decode_borrowed(payload)?;
    Ok(bytes.map(|b| codec::decode(b)).transpose()?)
}

/// Decodes a reply payload that is a list of encoded items.
pub(super) fn items<T: DeserializeOwned>(payload: &[u8]) -> Result<Vec<T>, ManagerError> {
    let all: Vec<&Bytes> = codec::decode_borrowed(payload)?;
    all.into_iter().map(|b| Ok(codec::decode(b)?)).collect()
}

/// The proxy's dict, when it lives on a CPython manager.
fn py_dict(proxy: &Proxy) -> Option<PyDict> {
    proxy.on_cpython().cloned().map(PyDict)
}

/// The proxy's list, when it lives on a CPython manager.
fn py_list(proxy: &Proxy) -> Option<PyList> {
    proxy.on_cpython().cloned().map(PyList)
}

/// The proxy's queue, when it lives on a CPython manager.
fn py_queue(proxy: &Proxy) -> Option<PyQueue> {
    proxy.on_cpython().cloned().map(PyQueue)
}

/// The proxy's lock, when it lives on a CPython manager.
fn py_lock(proxy: &Proxy) -> Option<PyLock> {
    proxy.on_cpython().cloned().map(PyLock)
}

/// A Python reply that is optional, as a `T`.
fn from_py_opt<T: DeserializeOwned>(value: Option<PyValue>) -> Result<Option<T>, ManagerError> {
    value.map(from_py).transpose()
}

/// A list index as Python's.
fn py_index(index: usize) -> Result<i64, ManagerError> {
    i64::try_from(index).map_err(|_| ManagerError::Invalid(format!("index {index} is too large")))
}

/// A CPython list's `IndexError` as [`ManagerError::IndexOutOfRange`] (with the length the
/// list has when asked right after).
fn py_index_error<R>(
    list: &PyList,
    index: usize,
    r: Result<R, ManagerError>,
) -> Result<R, ManagerError> {
    match r {
        Err(ManagerError::Python { class, .. }) if class == "IndexError" => {
            Err(ManagerError::IndexOutOfRange {
                index: index as u64,
                len: list.len()?,
            })
        }
        other => other,
    }
}

/// Defines a typed proxy: the struct and its `ProxyType`, `Clone`, `Debug` and serde impls
/// (`@impls`: the last four alone, for a struct with a `ProxyType` written by hand).
macro_rules! typed_proxy {
    ($(#[$m:meta])* $name:ident [$($g:ident),*] $kind:literal) => {
        $(#[$m])*
        pub struct $name<$($g),*> {
            proxy: Proxy,
            _types: PhantomData<fn() -> ($($g,)*)>,
        }

        impl<$($g),*> ProxyType for $name<$($g),*> {
            fn kind() -> String {
                $kind.to_string()
            }
            fn from_proxy(proxy: Proxy) -> Self {
                $name { proxy, _types: PhantomData }
            }
            fn proxy(&self) -> &Proxy {
                &self.proxy
            }
        }

        typed_proxy!(@impls $name [$($g),*]);
    };
    (@impls $name:ident [$($g:ident),*]) => {
        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                Self::from_proxy(self.proxy().clone())
            }
        }

        impl<$($g),*> fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(self.proxy()).finish()
            }
        }

        impl<$($g),*> Serialize for $name<$($g),*> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.proxy().serialize(s)
            }
        }

        impl<'de, $($g),*> Deserialize<'de> for $name<$($g),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Proxy::deserialize(d).map(Self::from_proxy)
            }
        }
    };
}

typed_proxy! {
    /// A dict in a manager ([`Manager::dict`](super::Manager::dict)). Keys compare by their
    /// encoding; iteration follows insertion order, as Python's dict.
    ///
    /// ```
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// let mgr = multiproc::Manager::start()?;
    /// let d = mgr.dict::<String, u64>()?;
    /// d.set(&"apples".into(), &3)?;
    /// assert_eq!(d.get(&"apples".into())?, Some(3));
    /// # Ok(()) }
    /// ```
    DictProxy [K, V] "dict"
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return from_py_opt(d.get(to_py(key)?)?);
        }
        let key = encode(key)?;
        self.proxy.send(DictCall::Get { key }, opt_item)
    }

    /// Sets `key` to `value` (without fetching the old value: one round trip, no copy back).
    pub fn set(&self, key: &K, value: &V) -> Result<(), ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.set(to_py(key)?, to_py(value)?);
        }
        let (key, value) = (encode(key)?, encode(value)?);
        self.proxy.send(DictCall::Set { key, value }, plain)
    }

    /// Sets `key` to `value` and returns the value it replaced.
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>, ManagerError> {
        let (key, value) = (encode(key)?, encode(value)?);
        self.proxy.send(DictCall::Insert { key, value }, opt_item)
    }

    /// The value of `key`, inserting `default` first when absent (Python's `setdefault`).
    pub fn setdefault(&self, key: &K, default: &V) -> Result<V, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return from_py(d.setdefault(to_py(key)?, to_py(default)?)?);
        }
        let (key, default) = (encode(key)?, encode(default)?);
        self.proxy.send(DictCall::SetDefault { key, default }, item)
    }

    /// Removes `key` and returns its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return from_py_opt(d.remove(to_py(key)?)?);
        }
        let key = encode(key)?;
        self.proxy.send(DictCall::Remove { key }, opt_item)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> Result<bool, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.contains(to_py(key)?);
        }
        let key = encode(key)?;
        self.proxy.send(DictCall::Contains { key }, plain)
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.len().map(|n| n as usize);
        }
        self.proxy.send(DictCall::Len, count)
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.clear();
        }
        self.proxy.send(DictCall::Clear, plain)
    }

    /// Sets many entries in one round trip.
    pub fn update<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    ) -> Result<(), ManagerError>
    where
        K: 'a,
        V: 'a,
    {
        if let Some(d) = py_dict(&self.proxy) {
            let entries = entries
                .into_iter()
                .map(|(k, v)| Ok((to_py(k)?, to_py(v)?)))
                .collect::<Result<_, ManagerError>>()?;
            return d.update(entries);
        }
        let entries = entries
            .into_iter()
            .map(|(k, v)| Ok((encode(k)?, encode(v)?)))
            .collect::<Result<_, ManagerError>>()?;
        self.proxy.send(DictCall::Update { entries }, plain)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.items()?.into_iter().map(|(k, _)| from_py(k)).collect();
        }
        self.proxy.send(DictCall::Keys, items)
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d.items()?.into_iter().map(|(_, v)| from_py(v)).collect();
        }
        self.proxy.send(DictCall::Values, items)
    }

    /// The entries, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>, ManagerError> {
        if let Some(d) = py_dict(&self.proxy) {
            return d
                .items()?
                .into_iter()
                .map(|(k, v)| Ok((from_py(k)?, from_py(v)?)))
                .collect();
        }
        self.proxy.send(DictCall::Items, |p| {
            let all: Vec<(&Bytes, &Bytes)> = codec::decode_borrowed(p)?;
            all.into_iter()
                .map(|(k, v)| Ok((codec::decode(k)?, codec::decode(v)?)))
                .collect()
        })
    }
}

typed_proxy! {
    /// A list in a manager ([`Manager::list`](super::Manager::list)).
    ListProxy [T] "list"
}

typed_proxy! {
    /// A fixed-length array in a manager ([`Manager::array`](super::Manager::array)): a list
    /// that cannot grow or shrink.
    ArrayProxy [T] "array"
}

/// Methods lists and arrays share.
macro_rules! sequence_methods {
    ($name:ident) => {
        impl<T: Serialize + DeserializeOwned> $name<T> {
            /// The number of items.
            pub fn len(&self) -> Result<usize, ManagerError> {
                if let Some(l) = py_list(&self.proxy) {
                    return l.len().map(|n| n as usize);
                }
                self.proxy.send(SeqCall::Len, count)
            }

            /// Whether there are no items.
            pub fn is_empty(&self) -> Result<bool, ManagerError> {
                Ok(self.len()? == 0)
            }

            /// Item `index` ([`ManagerError::IndexOutOfRange`] past the end).
            pub fn get(&self, index: usize) -> Result<T, ManagerError> {
                if let Some(l) = py_list(&self.proxy) {
                    let got = l.get(py_index(index)?);
                    return from_py(py_index_error(&l, index, got)?);
                }
                let index = index as u64;
                self.proxy.send(SeqCall::Get { index }, item)
            }

            /// Replaces item `index`.
            pub fn set(&self, index: usize, value: &T) -> Result<(), ManagerError> {
                if let Some(l) = py_list(&self.proxy) {
                    let done = l.set(py_index(index)?, to_py(value)?);
                    return py_index_error(&l, index, done);
                }
                let (index, value) = (index as u64, encode(value)?);
                self.proxy.send(SeqCall::Set { index, value }, plain)
            }

            /// All items.
            pub fn to_vec(&self) -> Result<Vec<T>, ManagerError> {
                if let Some(l) = py_list(&self.proxy) {
                    return l.to_vec()?.into_iter().map(from_py).collect();
                }
                self.proxy.send(SeqCall::ToVec, items)
            }

            /// Whether an item equal to `value` (by encoding) is present.
            pub fn contains(&self, value: &T) -> Result<bool, ManagerError> {
                if let Some(l) = py_list(&self.proxy) {
                    return l.contains(to_py(value)?);
                }
                let value = encode(value)?;
                self.proxy.send(SeqCall::Contains { value }, plain)
            }
        }
    };
}

sequence_methods!(ListProxy);
sequence_methods!(ArrayProxy);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends `value` (Python's `append`).
    pub fn push(&self, value: &T) -> Result<(), ManagerError> {
        if let Some(l) = py_list(&self.proxy) {
            return l.append(to_py(value)?);
        }
        let value = encode(value)?;
        self.proxy.send(ListCall::Push { value }, plain)
    }

    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>, ManagerError> {
        if let Some(l) = py_list(&self.proxy) {
            return match l.pop(-1) {
                Err(ManagerError::Python { class, .. }) if class == "IndexError" => Ok(None),
                other => from_py(other?).map(Some),
            };
        }
        self.proxy.send(ListCall::Pop, opt_item)
    }

    /// Inserts `value` before `index` (`index == len` appends).
    pub fn insert(&self, index: usize, value: &T) -> Result<(), ManagerError> {
        if let Some(l) = py_list(&self.proxy) {
            // Python's insert appends past the end: refused here, as on a multiproc server
            // (the length is read first, so a list another client shrinks meanwhile may still
            // see an append).
            let len = l.len()?;
            if index as u64 > len {
                return Err(ManagerError::IndexOutOfRange {
                    index: index as u64,
                    len,
                });
            }
            return l.insert(py_index(index)?, to_py(value)?);
        }
        let (index, value) = (index as u64, encode(value)?);
        self.proxy.send(ListCall::Insert { index, value }, plain)
    }

    /// Removes and returns item `index`.
    pub fn remove(&self, index: usize) -> Result<T, ManagerError> {
        if let Some(l) = py_list(&self.proxy) {
            let got = l.pop(py_index(index)?);
            return from_py(py_index_error(&l, index, got)?);
        }
        let index = index as u64;
        self.proxy.send(ListCall::Remove { index }, item)
    }

    /// Appends many items in one round trip.
    pub fn extend<'a>(&self, values: impl IntoIterator<Item = &'a T>) -> Result<(), ManagerError>
    where
        T: 'a,
    {
        if let Some(l) = py_list(&self.proxy) {
            let items = values.into_iter().map(to_py).collect::<Result<_, _>>()?;
            return l.extend(items);
        }
        let items = values.into_iter().map(encode).collect::<Result<_, _>>()?;
        self.proxy.send(ListCall::Extend { items }, plain)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<(), ManagerError> {
        if let Some(l) = py_list(&self.proxy) {
            return l.clear();
        }
        self.proxy.send(ListCall::Clear, plain)
    }
}

typed_proxy! {
    /// A queue in a manager ([`Manager::queue`](super::Manager::queue)): unlike
    /// [`Queue`](crate::Queue), reachable from other machines.
    ///
    /// Blocking calls wait on the server; their `_timeout` variants give up with
    /// [`QueueError::Empty`](crate::QueueError::Empty) or
    /// [`QueueError::Full`](crate::QueueError::Full) (as Python's `queue.Empty`/`Full`), in
    /// [`ManagerError::Queue`].
    QueueProxy [T] "queue"
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    fn put_with(&self, value: &T, timeout: Option<Duration>) -> Result<(), ManagerError> {
        if let Some(q) = py_queue(&self.proxy) {
            return q.put_timeout(to_py(value)?, timeout);
        }
        let item = encode(value)?;
        self.proxy
            .send_timed(QueueCall::Put { item, timeout }, timeout, plain)
    }

    fn get_with(&self, timeout: Option<Duration>) -> Result<T, ManagerError> {
        if let Some(q) = py_queue(&self.proxy) {
            return from_py(q.get(timeout)?);
        }
        self.proxy
            .send_timed(QueueCall::Get { timeout }, timeout, item)
    }

    /// Puts `value`, waiting for room in a bounded queue.
    pub fn put(&self, value: &T) -> Result<(), ManagerError> {
        self.put_with(value, None)
    }

    /// Puts `value`, waiting at most `timeout` for room
    /// ([`QueueError::Full`](crate::QueueError::Full) after).
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<(), ManagerError> {
        self.put_with(value, Some(timeout))
    }

    /// Puts `value` only if there is room now.
    pub fn put_nowait(&self, value: &T) -> Result<(), ManagerError> {
        self.put_with(value, Some(Duration::ZERO))
    }

    /// Takes the next item, waiting for one.
    pub fn get(&self) -> Result<T, ManagerError> {
        self.get_with(None)
    }

    /// Takes the next item, waiting at most `timeout`
    /// ([`QueueError::Empty`](crate::QueueError::Empty) after).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, ManagerError> {
        self.get_with(Some(timeout))
    }

    /// Takes the next item if there is one now.
    pub fn get_nowait(&self) -> Result<T, ManagerError> {
        self.get_with(Some(Duration::ZERO))
    }

    /// The number of items queued.
    pub fn qsize(&self) -> Result<usize, ManagerError> {
        if let Some(q) = py_queue(&self.proxy) {
            return q.qsize().map(|n| n as usize);
        }
        self.proxy.send(QueueCall::QSize, count)
    }

    /// Whether the queue is empty.
    pub fn empty(&self) -> Result<bool, ManagerError> {
        if let Some(q) = py_queue(&self.proxy) {
            return q.empty();
        }
        self.proxy.send(QueueCall::Empty, plain)
    }

    /// Whether a bounded queue is full.
    pub fn full(&self) -> Result<bool, ManagerError> {
        if let Some(q) = py_queue(&self.proxy) {
            return q.full();
        }
        self.proxy.send(QueueCall::Full, plain)
    }
}

/// A joinable queue in a manager ([`Manager::joinable_queue`](super::Manager::joinable_queue)):
/// a [`QueueProxy`] (all its methods, through `Deref`) whose consumers call
/// [`task_done`](JoinableQueueProxy::task_done) after each item and whose producers can
/// [`join`](JoinableQueueProxy::join) until every item put was done.
pub struct JoinableQueueProxy<T> {
    queue: QueueProxy<T>,
}

impl<T> ProxyType for JoinableQueueProxy<T> {
    fn kind() -> String {
        "joinable_queue".to_string()
    }
    fn from_proxy(proxy: Proxy) -> Self {
        JoinableQueueProxy {
            queue: QueueProxy::from_proxy(proxy),
        }
    }
    fn proxy(&self) -> &Proxy {
        &self.queue.proxy
    }
}

typed_proxy!(@impls JoinableQueueProxy [T]);

impl<T> std::ops::Deref for JoinableQueueProxy<T> {
    type Target = QueueProxy<T>;

    fn deref(&self) -> &QueueProxy<T> {
        &self.queue
    }
}

impl<T> JoinableQueueProxy<T> {
    fn join_with(&self, timeout: Option<Duration>) -> Result<(), ManagerError> {
        self.queue
            .proxy
            .send_timed(JoinableCall::Join { timeout }, timeout, plain)
    }

    /// Marks one item taken with `get` as processed.
    /// [`QueueError::TooManyTaskDone`](crate::QueueError::TooManyTaskDone) when called more
    /// often than items were put.
    pub fn task_done(&self) -> Result<(), ManagerError> {
        self.queue.proxy.send(JoinableCall::TaskDone, plain)
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), ManagerError> {
        self.join_with(None)
    }

    /// Waits at most `timeout` ([`SyncError::Timeout`] after).
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), ManagerError> {
        self.join_with(Some(timeout))
    }
}

typed_proxy! {
    /// A namespace in a manager ([`Manager::namespace`](super::Manager::namespace)): named
    /// attributes of any types, as Python's `Namespace`.
    NamespaceProxy [] "namespace"
}

impl NamespaceProxy {
    /// Sets attribute `name`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ManagerError> {
        let value = encode(value)?;
        self.proxy.send(NamespaceCall::Set { name, value }, plain)
    }

    /// Attribute `name` ([`ManagerError::KeyNotFound`] when unset).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, ManagerError> {
        self.proxy.send(NamespaceCall::Get { name }, item)
    }

    /// Removes attribute `name` ([`ManagerError::KeyNotFound`] when unset).
    pub fn remove(&self, name: &str) -> Result<(), ManagerError> {
        self.proxy.send(NamespaceCall::Remove { name }, plain)
    }

    /// Whether attribute `name` is set.
    pub fn contains(&self, name: &str) -> Result<bool, ManagerError> {
        self.proxy.send(NamespaceCall::Contains { name }, plain)
    }

    /// The attribute names, sorted.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        self.proxy.send(NamespaceCall::Names, plain)
    }
}

typed_proxy! {
    /// A single value in a manager ([`Manager::value`](super::Manager::value)). For
    /// read-modify-write from several processes, hold a [`LockProxy`] around it.
    ValueProxy [T] "value"
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value.
    pub fn get(&self) -> Result<T, ManagerError> {
        self.proxy.send(ValueCall::Get, item)
    }

    /// Replaces the value.
    pub fn set(&self, value: &T) -> Result<(), ManagerError> {
        let value = encode(value)?;
        self.proxy.send(ValueCall::Set { value }, plain)
    }

    /// Replaces the value and returns the old one, atomically.
    pub fn swap(&self, value: &T) -> Result<T, ManagerError> {
        let value = encode(value)?;
        self.proxy.send(ValueCall::Swap { value }, item)
    }
}

/// Acquire, in its blocking, non-blocking and timed forms, through `$call::Acquire`.
macro_rules! acquire_methods {
    ($what:literal, $call:ident) => {
        fn acquire_with(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
            if let Some(l) = py_lock(&self.proxy) {
                return l.acquire(timeout);
            }
            self.proxy
                .send_timed($call::Acquire { timeout }, timeout, plain)
        }

        #[doc = concat!("Acquires ", $what, ", waiting as long as it takes.")]
        pub fn acquire(&self) -> Result<(), ManagerError> {
            self.acquire_with(None).map(drop)
        }

        #[doc = concat!("Acquires ", $what, " if available now; whether it was.")]
        pub fn try_acquire(&self) -> Result<bool, ManagerError> {
            self.acquire_with(Some(Duration::ZERO))
        }

        #[doc = concat!("Acquires ", $what, ", waiting at most `timeout` ([`SyncError::Timeout`] after).")]
        pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), ManagerError> {
            match self.acquire_with(Some(timeout))? {
                true => Ok(()),
                false => Err(SyncError::Timeout(crate::TimedOut(timeout)).into()),
            }
        }
    };
}

/// Acquire/release of the lock-like proxies, through `$call::Acquire` and `$call::Release`.
macro_rules! lock_methods {
    ($name:ident, $call:ident) => {
        impl $name {
            acquire_methods!("the lock", $call);

            fn release_of(proxy: &Proxy) -> Result<(), ManagerError> {
                if let Some(l) = py_lock(proxy) {
                    return py_release(&l);
                }
                proxy.send($call::Release, plain)
            }

            /// Releases.
            pub fn release(&self) -> Result<(), ManagerError> {
                Self::release_of(&self.proxy)
            }

            /// Acquires and returns a guard that releases when dropped.
            pub fn lock(&self) -> Result<ProxyGuard<'_>, ManagerError> {
                self.acquire()?;
                Ok(ProxyGuard {
                    proxy: &self.proxy,
                    release: Self::release_of,
                })
            }
        }
    };
}

/// Releases a CPython manager's lock, with its `RuntimeError`s as this crate's errors.
fn py_release(lock: &PyLock) -> Result<(), ManagerError> {
    match lock.release() {
        Err(ManagerError::Python { class, message }) if class == "RuntimeError" => {
            Err(if message.contains("un-acquired") {
                SyncError::NotOwner.into()
            } else {
                SyncError::NotLocked.into()
            })
        }
        other => other,
    }
}

/// Releases a manager lock or condition when dropped ([`LockProxy::lock`]). A release that
/// fails (the manager is gone) is ignored: the server releases the locks of a session that
/// ends.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct ProxyGuard<'a> {
    proxy: &'a Proxy,
    release: fn(&Proxy) -> Result<(), ManagerError>,
}

impl Drop for ProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = (self.release)(self.proxy);
    }
}

typed_proxy! {
    /// A lock in a manager ([`Manager::lock`](super::Manager::lock), or reentrant from
    /// [`Manager::rlock`](super::Manager::rlock)): mutual exclusion across processes and
    /// machines. The owner is a thread of a process; when a process holding it dies, the
    /// manager releases it (CPython's stays locked for ever).
    ///
    /// ```
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// let mgr = multiproc::Manager::start()?;
    /// let (lock, total) = (mgr.lock()?, mgr.value(&0u64)?);
    /// {
    ///     let _held = lock.lock()?; // released when dropped
    ///     total.set(&(total.get()? + 1))?;
    /// }
    /// assert_eq!(total.get()?, 1);
    /// assert!(!lock.locked()?);
    /// # Ok(()) }
    /// ```
    LockProxy [] "lock"
}

lock_methods!(LockProxy, LockCall);

impl LockProxy {
    /// Whether someone holds the lock.
    pub fn locked(&self) -> Result<bool, ManagerError> {
        self.proxy.send(LockCall::Locked, plain)
    }
}

typed_proxy! {
    /// A condition variable in a manager ([`Manager::condition`](super::Manager::condition)),
    /// with its own reentrant lock.
    ConditionProxy [] "condition"
}

lock_methods!(ConditionProxy, ConditionCall);

impl ConditionProxy {
    fn wait_with(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        self.proxy
            .send_timed(ConditionCall::Wait { timeout }, timeout, plain)
    }

    /// Releases the lock, waits for a notification, re-acquires; the lock must be held.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.wait_with(None).map(drop)
    }

    /// As [`wait`](Self::wait), at most `timeout`; false when it timed out (the lock is
    /// held again either way).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.wait_with(Some(timeout))
    }

    /// Wakes up to `n` waiters; the lock must be held.
    pub fn notify(&self, n: usize) -> Result<(), ManagerError> {
        let n = n as u64;
        self.proxy.send(ConditionCall::Notify { n }, plain)
    }

    /// Wakes every waiter; the lock must be held.
    pub fn notify_all(&self) -> Result<(), ManagerError> {
        let n = u64::MAX;
        self.proxy.send(ConditionCall::Notify { n }, plain)
    }
}

typed_proxy! {
    /// A semaphore in a manager ([`Manager::semaphore`](super::Manager::semaphore),
    /// [`Manager::bounded_semaphore`](super::Manager::bounded_semaphore)).
    SemaphoreProxy [] "semaphore"
}

impl SemaphoreProxy {
    acquire_methods!("one unit", SemaphoreCall);

    /// Gives back `n` units ([`SyncError::OverReleased`] past a bounded semaphore's
    /// initial value).
    pub fn release(&self, n: u64) -> Result<(), ManagerError> {
        self.proxy.send(SemaphoreCall::Release { n }, plain)
    }

    /// The current value.
    pub fn value(&self) -> Result<u64, ManagerError> {
        self.proxy.send(SemaphoreCall::Value, plain)
    }
}

typed_proxy! {
    /// An event flag in a manager ([`Manager::event`](super::Manager::event)).
    EventProxy [] "event"
}

impl EventProxy {
    fn wait_with(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        self.proxy
            .send_timed(EventCall::Wait { timeout }, timeout, plain)
    }

    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.proxy.send(EventCall::Set, plain)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.proxy.send(EventCall::Clear, plain)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        self.proxy.send(EventCall::IsSet, plain)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), ManagerError> {
        self.wait_with(None).map(drop)
    }

    /// Waits at most `timeout`; whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.wait_with(Some(timeout))
    }
}

typed_proxy! {
    /// A barrier in a manager ([`Manager::barrier`](super::Manager::barrier)).
    BarrierProxy [] "barrier"
}

impl BarrierProxy {
    fn wait_with(&self, timeout: Option<Duration>) -> Result<usize, ManagerError> {
        self.proxy
            .send_timed(BarrierCall::Wait { timeout }, timeout, count)
    }

    /// Waits until every party arrived; this party's arrival index (0 for the first).
    /// [`SyncError::BrokenBarrier`] when the barrier broke.
    pub fn wait(&self) -> Result<usize, ManagerError> {
        self.wait_with(None)
    }

    /// As [`wait`](Self::wait), at most `timeout`; running out breaks the barrier for
    /// everyone ([`SyncError::BrokenBarrier`]), as in Python.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.wait_with(Some(timeout))
    }

    /// Breaks the barrier: waiters and later callers get [`SyncError::BrokenBarrier`].
    pub fn abort(&self) -> Result<(), ManagerError> {
        self.proxy.send(BarrierCall::Abort, plain)
    }

    /// Returns the barrier to its initial state; current waiters see it broken.
    pub fn reset(&self) -> Result<(), ManagerError> {
        self.proxy.send(BarrierCall::Reset, plain)
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<usize, ManagerError> {
        self.proxy.send(BarrierCall::Parties, count)
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> Result<usize, ManagerError> {
        self.proxy.send(BarrierCall::NWaiting, count)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> Result<bool, ManagerError> {
        self.proxy.send(BarrierCall::Broken, plain)
    }
}
