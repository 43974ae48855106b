//! Typed proxies of the built-in kinds.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::Bytes;

use super::proxy::{Proxy, ProxyType};
use crate::codec;
use crate::error::{ManagerError, SyncError};

/// Decodes a reply payload that is a plain value (a length, a flag).
fn plain<R: DeserializeOwned>(payload: &[u8]) -> Result<R, ManagerError> {
    Ok(codec::decode(payload)?)
}

/// Decodes a reply payload that is one encoded item.
fn item<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ManagerError> {
    let bytes: &Bytes = codec::decode_borrowed(payload)?;
    Ok(codec::decode(bytes)?)
}

/// Decodes a reply payload that is an optional encoded item.
fn opt_item<T: DeserializeOwned>(payload: &[u8]) -> Result<Option<T>, ManagerError> {
    let bytes: Option<&Bytes> = codec::decode_borrowed(payload)?;
    Ok(bytes.map(|b| codec::decode(b)).transpose()?)
}

/// Decodes a reply payload that is a list of encoded items.
fn items<T: DeserializeOwned>(payload: &[u8]) -> Result<Vec<T>, ManagerError> {
    let all: Vec<&Bytes> = codec::decode_borrowed(payload)?;
    all.into_iter().map(|b| Ok(codec::decode(b)?)).collect()
}

/// The `wait` of events and conditions: whether the awaited thing happened in time.
fn wait_on(proxy: &Proxy, timeout: Option<Duration>) -> Result<bool, ManagerError> {
    proxy.call_with("wait", &(timeout,), timeout, plain)
}

fn enc<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ManagerError> {
    Ok(codec::encode(value)?)
}

/// Defines a typed proxy: the struct and its `Clone`, `Debug`, `ProxyType` and serde impls.
macro_rules! typed_proxy {
    ($(#[$m:meta])* $name:ident [$($g:ident),*] $kind:literal) => {
        $(#[$m])*
        pub struct $name<$($g),*> {
            proxy: Proxy,
            _types: PhantomData<fn() -> ($($g,)*)>,
        }

        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                Self::from_proxy(self.proxy.clone())
            }
        }

        impl<$($g),*> fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.proxy).finish()
            }
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

        impl<$($g),*> Serialize for $name<$($g),*> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.proxy.serialize(s)
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
    /// ```no_run
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
        let k = enc(key)?;
        self.proxy
            .call_with("get", &(Bytes::new(&k),), None, opt_item)
    }

    /// Sets `key` to `value` (without fetching the old value: one round trip, no copy back).
    pub fn set(&self, key: &K, value: &V) -> Result<(), ManagerError> {
        let (k, v) = (enc(key)?, enc(value)?);
        self.proxy
            .call_with("set", &(Bytes::new(&k), Bytes::new(&v)), None, plain)
    }

    /// Sets `key` to `value` and returns the value it replaced.
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>, ManagerError> {
        let (k, v) = (enc(key)?, enc(value)?);
        self.proxy
            .call_with("insert", &(Bytes::new(&k), Bytes::new(&v)), None, opt_item)
    }

    /// The value of `key`, inserting `default` first when absent (Python's `setdefault`).
    pub fn setdefault(&self, key: &K, default: &V) -> Result<V, ManagerError> {
        let (k, v) = (enc(key)?, enc(default)?);
        self.proxy
            .call_with("setdefault", &(Bytes::new(&k), Bytes::new(&v)), None, item)
    }

    /// Removes `key` and returns its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>, ManagerError> {
        let k = enc(key)?;
        self.proxy
            .call_with("remove", &(Bytes::new(&k),), None, opt_item)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> Result<bool, ManagerError> {
        let k = enc(key)?;
        self.proxy
            .call_with("contains", &(Bytes::new(&k),), None, plain)
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, ManagerError> {
        self.proxy
            .call_with("len", &(), None, plain::<u64>)
            .map(|n| n as usize)
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("clear", &(), None, plain)
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
        let encoded = entries
            .into_iter()
            .map(|(k, v)| Ok((enc(k)?, enc(v)?)))
            .collect::<Result<Vec<_>, ManagerError>>()?;
        let borrowed: Vec<_> = encoded
            .iter()
            .map(|(k, v)| (Bytes::new(k), Bytes::new(v)))
            .collect();
        self.proxy.call_with("update", &borrowed, None, plain)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>, ManagerError> {
        self.proxy.call_with("keys", &(), None, items)
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>, ManagerError> {
        self.proxy.call_with("values", &(), None, items)
    }

    /// The entries, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>, ManagerError> {
        self.proxy.call_with("items", &(), None, |p| {
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
                self.proxy
                    .call_with("len", &(), None, plain::<u64>)
                    .map(|n| n as usize)
            }

            /// Whether there are no items.
            pub fn is_empty(&self) -> Result<bool, ManagerError> {
                Ok(self.len()? == 0)
            }

            /// Item `index` ([`ManagerError::IndexOutOfRange`] past the end).
            pub fn get(&self, index: usize) -> Result<T, ManagerError> {
                self.proxy.call_with("get", &(index as u64,), None, item)
            }

            /// Replaces item `index`.
            pub fn set(&self, index: usize, value: &T) -> Result<(), ManagerError> {
                let v = enc(value)?;
                self.proxy
                    .call_with("set", &(index as u64, Bytes::new(&v)), None, plain)
            }

            /// All items.
            pub fn to_vec(&self) -> Result<Vec<T>, ManagerError> {
                self.proxy.call_with("to_vec", &(), None, items)
            }

            /// Whether an item equal to `value` (by encoding) is present.
            pub fn contains(&self, value: &T) -> Result<bool, ManagerError> {
                let v = enc(value)?;
                self.proxy
                    .call_with("contains", &(Bytes::new(&v),), None, plain)
            }
        }
    };
}

sequence_methods!(ListProxy);
sequence_methods!(ArrayProxy);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends `value` (Python's `append`).
    pub fn push(&self, value: &T) -> Result<(), ManagerError> {
        let v = enc(value)?;
        self.proxy
            .call_with("push", &(Bytes::new(&v),), None, plain)
    }

    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>, ManagerError> {
        self.proxy.call_with("pop", &(), None, opt_item)
    }

    /// Inserts `value` before `index` (`index == len` appends).
    pub fn insert(&self, index: usize, value: &T) -> Result<(), ManagerError> {
        let v = enc(value)?;
        self.proxy
            .call_with("insert", &(index as u64, Bytes::new(&v)), None, plain)
    }

    /// Removes and returns item `index`.
    pub fn remove(&self, index: usize) -> Result<T, ManagerError> {
        self.proxy.call_with("remove", &(index as u64,), None, item)
    }

    /// Appends many items in one round trip.
    pub fn extend<'a>(&self, values: impl IntoIterator<Item = &'a T>) -> Result<(), ManagerError>
    where
        T: 'a,
    {
        let encoded = values.into_iter().map(enc).collect::<Result<Vec<_>, _>>()?;
        let borrowed: Vec<_> = encoded.iter().map(|v| Bytes::new(v)).collect();
        self.proxy.call_with("extend", &borrowed, None, plain)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("clear", &(), None, plain)
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
        let v = enc(value)?;
        self.proxy
            .call_with("put", &(Bytes::new(&v), timeout), timeout, plain)
    }

    fn get_with(&self, timeout: Option<Duration>) -> Result<T, ManagerError> {
        self.proxy.call_with("get", &(timeout,), timeout, item)
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
        self.proxy
            .call_with("qsize", &(), None, plain::<u64>)
            .map(|n| n as usize)
    }

    /// Whether the queue is empty.
    pub fn empty(&self) -> Result<bool, ManagerError> {
        self.proxy.call_with("empty", &(), None, plain)
    }

    /// Whether a bounded queue is full.
    pub fn full(&self) -> Result<bool, ManagerError> {
        self.proxy.call_with("full", &(), None, plain)
    }
}

/// A joinable queue in a manager ([`Manager::joinable_queue`](super::Manager::joinable_queue)):
/// a [`QueueProxy`] (all its methods, through `Deref`) whose consumers call
/// [`task_done`](JoinableQueueProxy::task_done) after each item and whose producers can
/// [`join`](JoinableQueueProxy::join) until every item put was done.
pub struct JoinableQueueProxy<T> {
    queue: QueueProxy<T>,
}

impl<T> Clone for JoinableQueueProxy<T> {
    fn clone(&self) -> Self {
        JoinableQueueProxy {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueueProxy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueueProxy")
            .field(&self.queue.proxy)
            .finish()
    }
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

impl<T> Serialize for JoinableQueueProxy<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueueProxy<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Proxy::deserialize(d).map(Self::from_proxy)
    }
}

impl<T> std::ops::Deref for JoinableQueueProxy<T> {
    type Target = QueueProxy<T>;

    fn deref(&self) -> &QueueProxy<T> {
        &self.queue
    }
}

impl<T> JoinableQueueProxy<T> {
    /// Marks one item taken with `get` as processed.
    /// [`QueueError::TooManyTaskDone`](crate::QueueError::TooManyTaskDone) when called more
    /// often than items were put.
    pub fn task_done(&self) -> Result<(), ManagerError> {
        self.queue.proxy.call_with("task_done", &(), None, plain)
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), ManagerError> {
        self.queue
            .proxy
            .call_with("join", &(None::<Duration>,), None, plain)
    }

    /// Waits at most `timeout` ([`SyncError::Timeout`] after).
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), ManagerError> {
        self.queue
            .proxy
            .call_with("join", &(Some(timeout),), Some(timeout), plain)
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
        let v = enc(value)?;
        self.proxy
            .call_with("set", &(name, Bytes::new(&v)), None, plain)
    }

    /// Attribute `name` ([`ManagerError::KeyNotFound`] when unset).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, ManagerError> {
        self.proxy.call_with("get", &(name,), None, item)
    }

    /// Removes attribute `name` ([`ManagerError::KeyNotFound`] when unset).
    pub fn remove(&self, name: &str) -> Result<(), ManagerError> {
        self.proxy.call_with("remove", &(name,), None, plain)
    }

    /// Whether attribute `name` is set.
    pub fn contains(&self, name: &str) -> Result<bool, ManagerError> {
        self.proxy.call_with("contains", &(name,), None, plain)
    }

    /// The attribute names, sorted.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        self.proxy.call_with("names", &(), None, plain)
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
        self.proxy.call_with("get", &(), None, item)
    }

    /// Replaces the value.
    pub fn set(&self, value: &T) -> Result<(), ManagerError> {
        let v = enc(value)?;
        self.proxy.call_with("set", &(Bytes::new(&v),), None, plain)
    }

    /// Replaces the value and returns the old one, atomically.
    pub fn swap(&self, value: &T) -> Result<T, ManagerError> {
        let v = enc(value)?;
        self.proxy.call_with("swap", &(Bytes::new(&v),), None, item)
    }
}

/// Acquire, in its blocking, non-blocking and timed forms.
macro_rules! acquire_methods {
    ($what:literal) => {
        fn acquire_with(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
            self.proxy.call_with("acquire", &(timeout,), timeout, plain)
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
                false => Err(SyncError::Timeout(timeout).into()),
            }
        }
    };
}

/// Acquire/release of the lock-like proxies.
macro_rules! lock_methods {
    ($name:ident) => {
        impl $name {
            acquire_methods!("the lock");

            /// Releases.
            pub fn release(&self) -> Result<(), ManagerError> {
                self.proxy.call_with("release", &(), None, plain)
            }

            /// Acquires and returns a guard that releases when dropped.
            pub fn lock(&self) -> Result<ProxyGuard<'_>, ManagerError> {
                self.acquire()?;
                Ok(ProxyGuard(&self.proxy))
            }
        }
    };
}

/// Releases a manager lock or condition when dropped ([`LockProxy::lock`]). A release that
/// fails (the manager is gone) is ignored: the server releases the locks of a session that
/// ends.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct ProxyGuard<'a>(&'a Proxy);

impl Drop for ProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.call_with("release", &(), None, plain::<()>);
    }
}

typed_proxy! {
    /// A lock in a manager ([`Manager::lock`](super::Manager::lock), or reentrant from
    /// [`Manager::rlock`](super::Manager::rlock)): mutual exclusion across processes and
    /// machines. The owner is a thread of a process; when a process holding it dies, the
    /// manager releases it (CPython's stays locked for ever).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// let mgr = multiproc::Manager::start()?;
    /// let (lock, total) = (mgr.lock()?, mgr.value(&0u64)?);
    /// {
    ///     let _held = lock.lock()?;
    ///     total.set(&(total.get()? + 1))?;
    /// }
    /// # Ok(()) }
    /// ```
    LockProxy [] "lock"
}

lock_methods!(LockProxy);

impl LockProxy {
    /// Whether someone holds the lock.
    pub fn locked(&self) -> Result<bool, ManagerError> {
        self.proxy.call_with("locked", &(), None, plain)
    }
}

typed_proxy! {
    /// A condition variable in a manager ([`Manager::condition`](super::Manager::condition)),
    /// with its own reentrant lock.
    ConditionProxy [] "condition"
}

lock_methods!(ConditionProxy);

impl ConditionProxy {
    /// Releases the lock, waits for a notification, re-acquires; the lock must be held.
    pub fn wait(&self) -> Result<(), ManagerError> {
        wait_on(&self.proxy, None).map(drop)
    }

    /// As [`wait`](Self::wait), at most `timeout`; false when it timed out (the lock is
    /// held again either way).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        wait_on(&self.proxy, Some(timeout))
    }

    /// Wakes up to `n` waiters; the lock must be held.
    pub fn notify(&self, n: usize) -> Result<(), ManagerError> {
        self.proxy.call_with("notify", &(n as u64,), None, plain)
    }

    /// Wakes every waiter; the lock must be held.
    pub fn notify_all(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("notify", &(u64::MAX,), None, plain)
    }
}

typed_proxy! {
    /// A semaphore in a manager ([`Manager::semaphore`](super::Manager::semaphore),
    /// [`Manager::bounded_semaphore`](super::Manager::bounded_semaphore)).
    SemaphoreProxy [] "semaphore"
}

impl SemaphoreProxy {
    acquire_methods!("one unit");

    /// Gives back `n` units ([`SyncError::OverReleased`] past a bounded semaphore's
    /// initial value).
    pub fn release(&self, n: u64) -> Result<(), ManagerError> {
        self.proxy.call_with("release", &(n,), None, plain)
    }

    /// The current value.
    pub fn value(&self) -> Result<u64, ManagerError> {
        self.proxy.call_with("value", &(), None, plain)
    }
}

typed_proxy! {
    /// An event flag in a manager ([`Manager::event`](super::Manager::event)).
    EventProxy [] "event"
}

impl EventProxy {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("set", &(), None, plain)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("clear", &(), None, plain)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ManagerError> {
        self.proxy.call_with("is_set", &(), None, plain)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), ManagerError> {
        wait_on(&self.proxy, None).map(drop)
    }

    /// Waits at most `timeout`; whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ManagerError> {
        wait_on(&self.proxy, Some(timeout))
    }
}

typed_proxy! {
    /// A barrier in a manager ([`Manager::barrier`](super::Manager::barrier)).
    BarrierProxy [] "barrier"
}

impl BarrierProxy {
    /// Waits until every party arrived; this party's arrival index (0 for the first).
    /// [`SyncError::BrokenBarrier`] when the barrier broke.
    pub fn wait(&self) -> Result<usize, ManagerError> {
        self.proxy
            .call_with("wait", &(None::<Duration>,), None, plain::<u64>)
            .map(|i| i as usize)
    }

    /// As [`wait`](Self::wait), at most `timeout`; running out breaks the barrier for
    /// everyone ([`SyncError::BrokenBarrier`]), as in Python.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.proxy
            .call_with("wait", &(Some(timeout),), Some(timeout), plain::<u64>)
            .map(|i| i as usize)
    }

    /// Breaks the barrier: waiters and later callers get [`SyncError::BrokenBarrier`].
    pub fn abort(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("abort", &(), None, plain)
    }

    /// Returns the barrier to its initial state; current waiters see it broken.
    pub fn reset(&self) -> Result<(), ManagerError> {
        self.proxy.call_with("reset", &(), None, plain)
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<usize, ManagerError> {
        self.proxy
            .call_with("parties", &(), None, plain::<u64>)
            .map(|n| n as usize)
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> Result<usize, ManagerError> {
        self.proxy
            .call_with("n_waiting", &(), None, plain::<u64>)
            .map(|n| n as usize)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> Result<bool, ManagerError> {
        self.proxy.call_with("broken", &(), None, plain)
    }
}
