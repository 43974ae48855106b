//! Awaited manager calls (feature `tokio`): the same requests and replies as the blocking
//! calls, on the same pooled connections of the session, sent and received with
//! [`Connection::send_bytes_async`]/[`Connection::recv_bytes_async`], so a pending call
//! sleeps in the runtime's reactor and parks no thread.
//!
//! One call holds one connection from its request to its reply (the protocol has one reply
//! per request, in order, and a server thread per connection). Calls that do not wait on the
//! server share at most sixteen connections per session (as many as the pool keeps idle): more wait in line for one, so
//! a thousand concurrent `get_async`s of a dict use a few connections, not a thousand. Calls
//! that wait on the server (a queue `get`, a lock `acquire`, an event `wait`) hold a
//! connection each, as a blocked thread does, so that they never hold up the others.
//!
//! **Cancellation.** A call's connection lives in the call's future until the reply is in;
//! a future dropped before that closes it, so no later call can read the reply of an
//! abandoned one (the connection is never desynchronised: the next call takes another from
//! the pool or opens one). What the server does with the abandoned call:
//!
//! - A call that does not wait (a dict `set`, a user method) runs or not, as a request lost
//!   in the network would: dropped before its request went out, it never ran; after, it may
//!   have.
//! - A call that waits on the server gives up there as soon as the server sees the
//!   connection closed (within a tenth of a second), taking nothing. If it had already
//!   completed (an item taken, a lock granted) when the future was dropped, what it took is
//!   given back by a task left on the runtime for it: an acquired lock, condition or
//!   semaphore unit is released, a queue's item put back (at the end of the queue; a
//!   joinable queue's count of unfinished tasks stays as it was). A cancelled condition
//!   `wait` leaves the condition's lock released; a cancelled barrier `wait` breaks the
//!   barrier, as a timed-out one does.
//!
//! **Owners.** Locks are owned by a thread of a process in the blocking calls; an awaited
//! call made from a spawned task is made by the task (a task moves between a runtime's
//! worker threads), so a task that acquired with [`LockProxy::acquire_async`] releases with
//! [`LockProxy::release_async`], from whichever thread it runs on. Outside a spawned task
//! (the future of a `block_on`) the owner is the thread, as in the blocking calls.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::{ByteBuf, Bytes};

use super::proxy::{Proxy, ProxyType};
use super::session::{REPLY_GRACE, Session, decode_reply, thread_id, transport};
use super::typed::{
    BarrierProxy, ConditionProxy, DictProxy, EventProxy, JoinableQueueProxy, LockProxy, QueueProxy,
    SemaphoreProxy, ValueProxy, count, encode, item, opt_item, plain,
};
use super::wire::{
    BarrierCall, Call, ConditionCall, DictCall, EventCall, Hello, JoinableCall, LockCall,
    QueueCall, Request, SemaphoreCall, ValueCall,
};
use crate::aio;
use crate::codec;
use crate::connection::{Client, Connection};
use crate::error::{ConnectionError, ManagerError, SyncError};

/// Owner numbers of tasks: apart from those of threads, which count up from 1.
const TASK_OWNER: u64 = 1 << 63;

/// The owner of locks for a call made now: the task being polled, or the thread.
fn owner() -> u64 {
    match aio::task_number() {
        Some(n) => TASK_OWNER | n,
        None => thread_id(),
    }
}

/// How a call waits on the server, and what to give back when its future is dropped after
/// the call took effect.
#[derive(Clone, Copy)]
enum Waits {
    /// Answered at once: shares the session's gated connections.
    No,
    /// May wait on the server (`None`: for ever), on a connection of its own.
    Up(Option<Duration>, Undo),
}

/// What an abandoned call that completed on the server is undone by.
#[derive(Clone, Copy)]
enum Undo {
    /// Nothing to give back.
    Nothing,
    /// A granted `acquire` (reply `true`) or a completed condition `wait` (any success): the
    /// call given is made with the same owner.
    Release(fn() -> (&'static str, Vec<u8>), Granted),
    /// A queue `get` that took an item: put back, and for a joinable queue marked done (the
    /// put counted it once more).
    Requeue { joinable: bool },
}

/// Which successful replies mean the caller holds something.
#[derive(Clone, Copy)]
enum Granted {
    /// A reply of `true`.
    True,
    /// Any success.
    Any,
}

/// A call in flight: its connection, closed if the call is abandoned.
struct Flight {
    session: Arc<Session>,
    conn: Option<Connection>,
    /// Set once the request went out whole: from then on the server may run it.
    sent: Option<Sent>,
}

/// What an abandoned call needs to be undone.
struct Sent {
    id: u64,
    owner: u64,
    undo: Undo,
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Still here: the future was dropped before the reply was read.
        let Some(conn) = self.conn.take() else {
            return;
        };
        if let Some(sent) = self.sent.take()
            && !matches!(sent.undo, Undo::Nothing)
        {
            // Outside a runtime the connection is just closed.
            aio::detach(settle(self.session.clone(), conn, sent));
        }
    }
}

/// Finishes an abandoned call that may have taken something: tells the server the caller
/// has gone (the write side is shut, which a blocked call sees as its caller leaving), reads
/// the reply, and gives back what the call took.
async fn settle(session: Arc<Session>, conn: Connection, sent: Sent) {
    use std::os::fd::AsFd;
    let _ = crate::sys::shutdown(conn.as_fd(), true);
    let Some(Ok(reply)) = aio::until(Instant::now() + REPLY_GRACE, conn.recv_bytes_async()).await
    else {
        return;
    };
    drop(conn);
    let (method, args) = match sent.undo {
        Undo::Nothing => return,
        Undo::Release(release, granted) => {
            let held = decode_reply(&reply, |p| match granted {
                Granted::True => plain::<bool>(p),
                Granted::Any => Ok(true),
            });
            if !matches!(held, Ok(true)) {
                return;
            }
            release()
        }
        Undo::Requeue { joinable } => {
            let Ok(taken) = decode_reply(&reply, |p| {
                Ok(ByteBuf::from(codec::decode_borrowed::<&Bytes>(p)?.to_vec()))
            }) else {
                return;
            };
            let put = QueueCall::Put {
                item: taken,
                timeout: None,
            };
            let Ok(args) = put.encode_args() else { return };
            if session
                .call_async(
                    sent.id,
                    put.name(),
                    &args,
                    sent.owner,
                    Waits::No,
                    plain::<()>,
                )
                .await
                .is_err()
                || !joinable
            {
                return;
            }
            let done = JoinableCall::TaskDone;
            match done.encode_args() {
                Ok(args) => (done.name(), args),
                Err(_) => return,
            }
        }
    };
    let _ = session
        .call_async(sent.id, method, &args, sent.owner, Waits::No, plain::<()>)
        .await;
}

impl Session {
    /// A connection in this session: a pooled one, or a new one opened in the reactor.
    async fn connection_async(&self) -> Result<Connection, ManagerError> {
        let pooled = super::objects::lock(&self.idle).pop();
        if let Some(c) = pooled {
            return Ok(c);
        }
        let conn = Client::default()
            .authkey(self.authkey.clone())
            .open_async(&self.address)
            .await?;
        let hello = codec::encode(&Request::Hello { session: self.id })?;
        conn.send_bytes_async(&hello).await.map_err(transport)?;
        let reply = aio::until(Instant::now() + REPLY_GRACE, conn.recv_bytes_async())
            .await
            .ok_or(ManagerError::Connection(ConnectionError::Timeout(
                crate::TimedOut(REPLY_GRACE),
            )))?
            .map_err(transport)?;
        let _: Hello = decode_reply(&reply, |b| Ok(codec::decode(b)?))?;
        Ok(conn)
    }

    /// [`call`](Session::call) awaited: calls `method` of object `id` with its encoded
    /// `args` as `owner`.
    async fn call_async<R>(
        self: &Arc<Self>,
        id: u64,
        method: &str,
        args: &[u8],
        owner: u64,
        waits: Waits,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        let bytes = self.encode_request(&Request::Call {
            id,
            method,
            thread: owner,
            args,
        })?;
        let _pass = match waits {
            Waits::No => Some(self.gate.enter().await),
            Waits::Up(..) => None,
        };
        let reply = self
            .exchange_async(&bytes, id, owner, waits)
            .await
            .inspect_err(|e| self.note(e))?;
        decode_reply(&reply, decode)
    }

    /// Sends one encoded request and returns the encoded reply, both in the reactor.
    async fn exchange_async(
        self: &Arc<Self>,
        bytes: &[u8],
        id: u64,
        owner: u64,
        waits: Waits,
    ) -> Result<Vec<u8>, ManagerError> {
        let mut flight = Flight {
            session: self.clone(),
            conn: Some(self.connection_async().await?),
            sent: None,
        };
        let (timeout, undo) = match waits {
            Waits::No => (None, Undo::Nothing),
            Waits::Up(t, u) => (t, u),
        };
        let conn = flight.conn.as_ref().ok_or(ManagerError::Closed)?;
        conn.send_bytes_async(bytes).await.map_err(transport)?;
        flight.sent = Some(Sent { id, owner, undo });
        let reply = match timeout {
            None => conn.recv_bytes_async().await,
            Some(t) => {
                let deadline = Instant::now() + t.saturating_add(REPLY_GRACE);
                aio::until(deadline, conn.recv_bytes_async())
                    .await
                    .unwrap_or(Err(ConnectionError::Timeout(crate::TimedOut(
                        t.saturating_add(REPLY_GRACE),
                    ))))
            }
        }
        .map_err(transport)?;
        // Only a connection that completed its exchange goes back to the pool.
        if let Some(conn) = flight.conn.take() {
            self.give_back(conn);
        }
        Ok(reply)
    }
}

impl Proxy {
    /// [`call`](Proxy::call) awaited: calls `method` with `args` (a tuple of the method's
    /// parameters) without blocking a thread, and decodes its result. The generated
    /// `…_async` methods of [`#[multiproc::managed]`](crate::managed) types call this.
    ///
    /// **Cancel safety**: the call's connection is closed when the future is dropped before
    /// the reply is in, so no later call can receive this call's reply. Dropped before the
    /// request went out, the method does not run; after, it may have run (as a request lost
    /// in the network). Locks taken by awaited calls belong to the calling task (see
    /// [the module notes](crate::manager)).
    pub async fn call_async<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, ManagerError> {
        let args = codec::encode(args)?;
        self.session()?
            .call_async(self.id(), method, &args, owner(), Waits::No, |b| {
                Ok(codec::decode(b)?)
            })
            .await
    }

    /// Makes a built-in method's `call` awaited, decoding the result with `decode`.
    async fn send_async<R>(
        &self,
        call: impl Call,
        waits: Waits,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        let args = call.encode_args()?;
        self.session()?
            .call_async(self.id(), call.name(), &args, owner(), waits, decode)
            .await
    }
}

/// The cancel-safety note of calls that are answered at once.
macro_rules! at_once_note {
    () => {
        "\n\n**Cancel safety**: a dropped future closes the call's connection (no later call \
         can read its reply); the call ran or not, as a request lost in the network. See \
         [`Proxy::call_async`]."
    };
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    #[doc = concat!("[`get`](Self::get) awaited.", at_once_note!())]
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiproc::ManagerError> {
    /// let mgr = multiproc::Manager::start()?;
    /// let d = mgr.dict::<String, u64>()?;
    /// d.set_async(&"apples".into(), &3).await?;
    /// assert_eq!(d.get_async(&"apples".into()).await?, Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn get_async(&self, key: &K) -> Result<Option<V>, ManagerError> {
        let key = encode(key)?;
        self.proxy()
            .send_async(DictCall::Get { key }, Waits::No, opt_item)
            .await
    }

    #[doc = concat!("[`set`](Self::set) awaited.", at_once_note!())]
    pub async fn set_async(&self, key: &K, value: &V) -> Result<(), ManagerError> {
        let (key, value) = (encode(key)?, encode(value)?);
        self.proxy()
            .send_async(DictCall::Set { key, value }, Waits::No, plain)
            .await
    }

    #[doc = concat!("[`insert`](Self::insert) awaited.", at_once_note!())]
    pub async fn insert_async(&self, key: &K, value: &V) -> Result<Option<V>, ManagerError> {
        let (key, value) = (encode(key)?, encode(value)?);
        self.proxy()
            .send_async(DictCall::Insert { key, value }, Waits::No, opt_item)
            .await
    }

    #[doc = concat!("[`remove`](Self::remove) awaited.", at_once_note!())]
    pub async fn remove_async(&self, key: &K) -> Result<Option<V>, ManagerError> {
        let key = encode(key)?;
        self.proxy()
            .send_async(DictCall::Remove { key }, Waits::No, opt_item)
            .await
    }

    #[doc = concat!("[`len`](Self::len) awaited.", at_once_note!())]
    pub async fn len_async(&self) -> Result<usize, ManagerError> {
        self.proxy()
            .send_async(DictCall::Len, Waits::No, count)
            .await
    }
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    #[doc = concat!("[`get`](Self::get) awaited.", at_once_note!())]
    pub async fn get_async(&self) -> Result<T, ManagerError> {
        self.proxy()
            .send_async(ValueCall::Get, Waits::No, item)
            .await
    }

    #[doc = concat!("[`set`](Self::set) awaited.", at_once_note!())]
    pub async fn set_async(&self, value: &T) -> Result<(), ManagerError> {
        let value = encode(value)?;
        self.proxy()
            .send_async(ValueCall::Set { value }, Waits::No, plain)
            .await
    }
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    async fn get_with_async(&self, timeout: Option<Duration>) -> Result<T, ManagerError> {
        let joinable = self.proxy().kind() == "joinable_queue";
        let waits = Waits::Up(timeout, Undo::Requeue { joinable });
        self.proxy()
            .send_async(QueueCall::Get { timeout }, waits, item)
            .await
    }

    async fn put_with_async(
        &self,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<(), ManagerError> {
        let item = encode(value)?;
        let waits = Waits::Up(timeout, Undo::Nothing);
        self.proxy()
            .send_async(QueueCall::Put { item, timeout }, waits, plain)
            .await
    }

    /// [`get`](Self::get) awaited: waits on the server for an item, parking no thread.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection and the server gives
    /// the wait up without taking an item. An item the server had already handed out when
    /// the future was dropped is put back, at the end of the queue (a joinable queue's count
    /// of unfinished tasks stays as it was), by a task left on the runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiproc::ManagerError> {
    /// let mgr = multiproc::Manager::start()?;
    /// let q = mgr.queue::<u64>()?;
    /// q.put_async(&7).await?;
    /// assert_eq!(q.get_async().await?, 7);
    /// # Ok(()) }
    /// ```
    pub async fn get_async(&self) -> Result<T, ManagerError> {
        self.get_with_async(None).await
    }

    /// [`get_timeout`](Self::get_timeout) awaited
    /// ([`QueueError::Empty`](crate::QueueError::Empty) after `timeout`). Cancel safety as
    /// [`get_async`](Self::get_async).
    pub async fn get_timeout_async(&self, timeout: Duration) -> Result<T, ManagerError> {
        self.get_with_async(Some(timeout)).await
    }

    /// [`put`](Self::put) awaited: waits on the server for room in a bounded queue.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection; the server gives
    /// a put still waiting for room up. A put that had already found room when the future
    /// was dropped stays done (the item is in the queue).
    pub async fn put_async(&self, value: &T) -> Result<(), ManagerError> {
        self.put_with_async(value, None).await
    }

    /// [`put_timeout`](Self::put_timeout) awaited
    /// ([`QueueError::Full`](crate::QueueError::Full) after `timeout`). Cancel safety as
    /// [`put_async`](Self::put_async).
    pub async fn put_timeout_async(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), ManagerError> {
        self.put_with_async(value, Some(timeout)).await
    }

    #[doc = concat!("[`qsize`](Self::qsize) awaited.", at_once_note!())]
    pub async fn qsize_async(&self) -> Result<usize, ManagerError> {
        self.proxy()
            .send_async(QueueCall::QSize, Waits::No, count)
            .await
    }
}

impl<T> JoinableQueueProxy<T> {
    async fn join_with_async(&self, timeout: Option<Duration>) -> Result<(), ManagerError> {
        let waits = Waits::Up(timeout, Undo::Nothing);
        self.proxy()
            .send_async(JoinableCall::Join { timeout }, waits, plain)
            .await
    }

    /// [`join`](Self::join) awaited: waits on the server until every item put was marked
    /// done.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection and the server gives
    /// the wait up; nothing changes in the queue.
    pub async fn join_async(&self) -> Result<(), ManagerError> {
        self.join_with_async(None).await
    }

    /// [`join_timeout`](Self::join_timeout) awaited ([`SyncError::Timeout`] after
    /// `timeout`). Cancel safety as [`join_async`](Self::join_async).
    pub async fn join_timeout_async(&self, timeout: Duration) -> Result<(), ManagerError> {
        self.join_with_async(Some(timeout)).await
    }

    #[doc = concat!("[`task_done`](Self::task_done) awaited.", at_once_note!())]
    pub async fn task_done_async(&self) -> Result<(), ManagerError> {
        self.proxy()
            .send_async(JoinableCall::TaskDone, Waits::No, plain)
            .await
    }
}

/// `acquire_async`, `acquire_timeout_async` and `release_async` of the lock-like proxies.
macro_rules! acquire_async_methods {
    ($what:literal, $call:ident, $release:expr) => {
        async fn acquire_with_async(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
            let release: fn() -> (&'static str, Vec<u8>) = || {
                let call = $release;
                (call.name(), call.encode_args().unwrap_or_default())
            };
            let waits = Waits::Up(timeout, Undo::Release(release, Granted::True));
            self.proxy()
                .send_async($call::Acquire { timeout }, waits, plain)
                .await
        }

        #[doc = concat!("Acquires ", $what, " without blocking a thread: the wait is on the \
            server, the task sleeps in the runtime's reactor. The owner is the calling task \
            (see [the module notes](crate::manager)).")]
        ///
        /// **Cancel safety**: a dropped future closes the call's connection and the server
        /// gives the wait up; if it had already granted the acquire, a task left on the
        /// runtime releases it again, so a `select!` that took another branch never leaves
        /// it held.
        pub async fn acquire_async(&self) -> Result<(), ManagerError> {
            self.acquire_with_async(None).await.map(drop)
        }

        #[doc = concat!("Acquires ", $what, ", waiting at most `timeout` \
            ([`SyncError::Timeout`] after). Cancel safety as `acquire_async`.")]
        pub async fn acquire_timeout_async(&self, timeout: Duration) -> Result<(), ManagerError> {
            match self.acquire_with_async(Some(timeout)).await? {
                true => Ok(()),
                false => Err(SyncError::Timeout(crate::TimedOut(timeout)).into()),
            }
        }
    };
}

impl LockProxy {
    acquire_async_methods!("the lock", LockCall, LockCall::Release);

    #[doc = concat!("[`release`](Self::release) awaited, as the calling task.", at_once_note!())]
    pub async fn release_async(&self) -> Result<(), ManagerError> {
        self.proxy()
            .send_async(LockCall::Release, Waits::No, plain)
            .await
    }
}

impl SemaphoreProxy {
    acquire_async_methods!("one unit", SemaphoreCall, SemaphoreCall::Release { n: 1 });

    #[doc = concat!("[`release`](Self::release) awaited.", at_once_note!())]
    pub async fn release_async(&self, n: u64) -> Result<(), ManagerError> {
        self.proxy()
            .send_async(SemaphoreCall::Release { n }, Waits::No, plain)
            .await
    }
}

impl ConditionProxy {
    acquire_async_methods!(
        "the condition's lock",
        ConditionCall,
        ConditionCall::Release
    );

    #[doc = concat!("[`release`](Self::release) awaited, as the calling task.", at_once_note!())]
    pub async fn release_async(&self) -> Result<(), ManagerError> {
        self.proxy()
            .send_async(ConditionCall::Release, Waits::No, plain)
            .await
    }

    async fn wait_with_async(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        let release: fn() -> (&'static str, Vec<u8>) = || {
            let call = ConditionCall::Release;
            (call.name(), call.encode_args().unwrap_or_default())
        };
        let waits = Waits::Up(timeout, Undo::Release(release, Granted::Any));
        self.proxy()
            .send_async(ConditionCall::Wait { timeout }, waits, plain)
            .await
    }

    /// [`wait`](Self::wait) awaited: releases the lock (held by the calling task), waits for
    /// a notification, re-acquires.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection; the server takes
    /// the waiter out of line. The lock is then **not** held by the task: a wait given up
    /// before it re-acquired leaves it released, and one that had re-acquired is released
    /// by a task left on the runtime (once: at depth one).
    pub async fn wait_async(&self) -> Result<(), ManagerError> {
        self.wait_with_async(None).await.map(drop)
    }

    /// [`wait_timeout`](Self::wait_timeout) awaited; false when it timed out (the lock is
    /// held again either way). Cancel safety as [`wait_async`](Self::wait_async).
    pub async fn wait_timeout_async(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.wait_with_async(Some(timeout)).await
    }

    #[doc = concat!("[`notify`](Self::notify) awaited, as the calling task.", at_once_note!())]
    pub async fn notify_async(&self, n: usize) -> Result<(), ManagerError> {
        let n = n as u64;
        self.proxy()
            .send_async(ConditionCall::Notify { n }, Waits::No, plain)
            .await
    }

    #[doc = concat!("[`notify_all`](Self::notify_all) awaited, as the calling task.", at_once_note!())]
    pub async fn notify_all_async(&self) -> Result<(), ManagerError> {
        self.notify_async(usize::MAX).await
    }
}

impl EventProxy {
    async fn wait_with_async(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        let waits = Waits::Up(timeout, Undo::Nothing);
        self.proxy()
            .send_async(EventCall::Wait { timeout }, waits, plain)
            .await
    }

    /// [`wait`](Self::wait) awaited: until the flag is set, parking no thread.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection and the server
    /// gives the wait up; the event is unchanged.
    pub async fn wait_async(&self) -> Result<(), ManagerError> {
        self.wait_with_async(None).await.map(drop)
    }

    /// [`wait_timeout`](Self::wait_timeout) awaited; whether the flag is set. Cancel safety
    /// as [`wait_async`](Self::wait_async).
    pub async fn wait_timeout_async(&self, timeout: Duration) -> Result<bool, ManagerError> {
        self.wait_with_async(Some(timeout)).await
    }

    #[doc = concat!("[`set`](Self::set) awaited.", at_once_note!())]
    pub async fn set_async(&self) -> Result<(), ManagerError> {
        self.proxy()
            .send_async(EventCall::Set, Waits::No, plain)
            .await
    }
}

impl BarrierProxy {
    async fn wait_with_async(&self, timeout: Option<Duration>) -> Result<usize, ManagerError> {
        let waits = Waits::Up(timeout, Undo::Nothing);
        self.proxy()
            .send_async(BarrierCall::Wait { timeout }, waits, count)
            .await
    }

    /// [`wait`](Self::wait) awaited: until every party arrived; this party's arrival index.
    ///
    /// **Cancel safety**: a dropped future closes the call's connection; a party that leaves
    /// a barrier it was waiting at breaks it for everyone ([`SyncError::BrokenBarrier`]), as
    /// a timed-out wait does. A wait that had already passed the barrier stays passed.
    pub async fn wait_async(&self) -> Result<usize, ManagerError> {
        self.wait_with_async(None).await
    }

    /// [`wait_timeout`](Self::wait_timeout) awaited. Cancel safety as
    /// [`wait_async`](Self::wait_async).
    pub async fn wait_timeout_async(&self, timeout: Duration) -> Result<usize, ManagerError> {
        self.wait_with_async(Some(timeout)).await
    }
}

/// The futures of awaited calls are `Send`, so tasks on a multi-thread runtime can await
/// them: checked when this compiles.
#[allow(dead_code)]
fn futures_are_send(p: &Proxy) -> impl Future<Output = Result<u64, ManagerError>> + Send + '_ {
    p.call_async::<(), u64>("x", &())
}
