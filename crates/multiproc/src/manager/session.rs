//! The client side: one session per process and manager, with a pool of connections.
//!
//! A session's first connection (the anchor) stays open and idle for the session's life, so
//! the server keeps the session's references exactly as long as the process holds proxies.
//! Calls borrow a connection from the pool (opening one when all are busy, so a blocking
//! `get` on one thread does not hold up calls on others) and give it back.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_bytes::Bytes;

use super::objects::lock;
use super::wire::{Fault, Hello, Request};
use crate::codec;
use crate::connection::{Address, Client, Connection};
use crate::error::{ConnectionError, ManagerError};
use crate::process::Process;
use crate::sys;

/// Extra time a timed call waits for its reply beyond its own timeout before the
/// connection is considered lost.
pub(super) const REPLY_GRACE: Duration = Duration::from_secs(30);

/// How long a call polls for its reply before it sleeps.
const SPIN: Duration = crate::spin::REPLY_SPIN;

/// At most this many idle connections are kept per session.
pub(super) const MAX_IDLE: usize = 16;

/// The sessions of this process, by manager address.
static SESSIONS: Mutex<Vec<(Address, Weak<Session>)>> = Mutex::new(Vec::new());

pub(crate) struct Session {
    pub address: Address,
    pub authkey: Vec<u8>,
    pub(super) id: u128,
    /// The process that opened the session; a forked child must not use its sockets.
    pub opened_by: u32,
    pub server_pid: u32,
    pub(super) max_message: u64,
    _anchor: Connection,
    pub(super) idle: Mutex<Vec<Connection>>,
    /// The server process when this process started it.
    owned: Mutex<Option<Process<Result<(), String>>>>,
    pub(super) closed: AtomicBool,
    /// Bounds the connections of awaited calls that do not wait on the server.
    #[cfg(feature = "tokio")]
    pub(super) gate: crate::aio::Gate,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.address)
            .field("server_pid", &self.server_pid)
            .finish()
    }
}

thread_local! {
    static THREAD_ID: Cell<u64> = const { Cell::new(0) };
}

/// A number for the calling thread, unique in this process (lock ownership on the server).
pub(super) fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    THREAD_ID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

pub(super) fn transport(e: ConnectionError) -> ManagerError {
    match e {
        ConnectionError::Closed => ManagerError::Closed,
        ConnectionError::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            ManagerError::Closed
        }
        e => ManagerError::Connection(e),
    }
}

impl Session {
    /// The session of this process with the manager at `address`, opened if needed.
    pub(crate) fn connect(address: &Address, authkey: &[u8]) -> Result<Arc<Session>, ManagerError> {
        Self::connect_any(address, authkey)?.ok_or_else(|| ManagerError::Unsupported {
            what: format!("a multiproc session with {address}"),
            reason: "the server there is a CPython manager: reach it with `Manager::connect`, \
                     whose proxies cannot be sent to other processes"
                .into(),
        })
    }

    /// As [`connect`](Self::connect); `None` when the server there is a CPython manager
    /// (it answered the hello with its `#TRACEBACK` pickle and closed the connection).
    pub(crate) fn connect_any(
        address: &Address,
        authkey: &[u8],
    ) -> Result<Option<Arc<Session>>, ManagerError> {
        let pid = sys::getpid();
        let mut table = lock(&SESSIONS);
        table.retain(|(_, w)| w.upgrade().is_some_and(|s| s.opened_by == pid));
        if let Some(s) = table
            .iter()
            .filter(|(a, _)| a == address)
            .filter_map(|(_, w)| w.upgrade())
            // The key must match too: a wrong key never rides on a session opened with the
            // right one.
            .find(|s| s.authkey == authkey && !s.closed.load(Ordering::Relaxed))
        {
            return Ok(Some(s));
        }
        let Some(s) = Session::open(address.clone(), authkey.to_vec())? else {
            return Ok(None);
        };
        let s = Arc::new(s);
        table.push((address.clone(), Arc::downgrade(&s)));
        Ok(Some(s))
    }

    /// The session of the process that started the manager `server`, over connections
    /// handed to the server at its start (already in session `id`).
    pub(crate) fn owned(
        address: Address,
        authkey: Vec<u8>,
        id: u128,
        server: Process<Result<(), String>>,
        anchor: Connection,
        first: Connection,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            address: address.clone(),
            authkey,
            id,
            opened_by: sys::getpid(),
            server_pid: server.pid(),
            max_message: crate::connection::DEFAULT_MAX_MESSAGE,
            _anchor: anchor,
            idle: Mutex::new(vec![first]),
            owned: Mutex::new(Some(server)),
            closed: AtomicBool::new(false),
            #[cfg(feature = "tokio")]
            gate: crate::aio::Gate::new(MAX_IDLE),
        });
        lock(&SESSIONS).push((address, Arc::downgrade(&s)));
        s
    }

    /// A new session; `None` when the server is a CPython manager.
    fn open(address: Address, authkey: Vec<u8>) -> Result<Option<Session>, ManagerError> {
        let id = new_id()?;
        let Some((anchor, hello)) = Self::dial_any(&address, &authkey, id)? else {
            return Ok(None);
        };
        Ok(Some(Session {
            address,
            authkey,
            id,
            opened_by: sys::getpid(),
            server_pid: hello.pid,
            max_message: hello.max_message,
            _anchor: anchor,
            idle: Mutex::new(Vec::new()),
            owned: Mutex::new(None),
            closed: AtomicBool::new(false),
            #[cfg(feature = "tokio")]
            gate: crate::aio::Gate::new(MAX_IDLE),
        }))
    }

    /// Connects, authenticates and joins session `id`.
    fn dial(
        address: &Address,
        authkey: &[u8],
        id: u128,
    ) -> Result<(Connection, Hello), ManagerError> {
        Self::dial_any(address, authkey, id)?.ok_or_else(|| {
            ManagerError::Connection(ConnectionError::BadFrame(
                "the manager at this address is now a CPython manager".into(),
            ))
        })
    }

    /// As [`dial`](Self::dial); `None` when a CPython manager answered.
    ///
    /// The hello is the first request a CPython server sees too: its first byte (the
    /// variant, 0) is no pickle opcode, so CPython's unpickler refuses it at once, and the
    /// server answers with a pickled `('#TRACEBACK', text)` and closes the connection. That
    /// reply (a pickle starts with `PROTO`, 0x80, which no reply of ours does) is decoded by
    /// the checked pickle decoder and must be exactly that pair. Only a reply that is not
    /// ours is looked at, so this costs a multiproc server nothing.
    fn dial_any(
        address: &Address,
        authkey: &[u8],
        id: u128,
    ) -> Result<Option<(Connection, Hello)>, ManagerError> {
        let conn = Client::default().authkey(authkey).open(address)?;
        let hello = codec::encode(&Request::Hello { session: id })?;
        conn.send_bytes(&hello).map_err(transport)?;
        let reply = conn.recv_bytes_timeout(REPLY_GRACE).map_err(transport)?;
        match decode_reply(&reply, |b| Ok(codec::decode::<Hello>(b)?)) {
            Ok(hello) => Ok(Some((conn, hello))),
            Err(_) if super::cpython::is_refused_request(&reply) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn is_current(&self) -> bool {
        self.opened_by == sys::getpid()
    }

    /// Sends `req` and decodes the reply's payload with `decode`. `timeout` is the call's
    /// own limit (a blocking method's): the reply may take that long, and a little more.
    pub(crate) fn request<R>(
        &self,
        req: &Request<'_>,
        timeout: Option<Duration>,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        let bytes = self.encode_request(req)?;
        let reply = self
            .exchange(&bytes, timeout)
            .inspect_err(|e| self.note(e))?;
        decode_reply(&reply, decode)
    }

    /// `req` encoded, if the session is open and it fits in a message.
    pub(super) fn encode_request(&self, req: &Request<'_>) -> Result<Vec<u8>, ManagerError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(ManagerError::Closed);
        }
        let bytes = codec::encode(req)?;
        if bytes.len() as u64 > self.max_message {
            return Err(ManagerError::MessageTooLarge {
                size: bytes.len() as u64,
                limit: self.max_message,
            });
        }
        Ok(bytes)
    }

    /// Notes a call's error: after `Closed` (the server is gone) later calls fail at once,
    /// and a new `connect` to the address opens a new session.
    pub(super) fn note(&self, e: &ManagerError) {
        if matches!(e, ManagerError::Closed) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    /// Gives a connection that completed its exchange back to the pool.
    pub(super) fn give_back(&self, conn: Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Sends one encoded request on a pooled connection and returns the encoded reply.
    fn exchange(&self, bytes: &[u8], timeout: Option<Duration>) -> Result<Vec<u8>, ManagerError> {
        let pooled = lock(&self.idle).pop();
        let conn = match pooled {
            Some(c) => c,
            None => Self::dial(&self.address, &self.authkey, self.id)?.0,
        };
        conn.send_bytes(bytes).map_err(transport)?;
        // Most replies come within microseconds: wait for them awake.
        let deadline = timeout.map(|t| std::time::Instant::now() + t.saturating_add(REPLY_GRACE));
        let reply = conn.recv_spinning(SPIN, deadline).map_err(transport)?;
        // Only a connection that completed its exchange goes back to the pool.
        self.give_back(conn);
        Ok(reply)
    }

    /// Calls `method` of object `id` with its encoded `args`.
    pub(crate) fn call<R>(
        &self,
        id: u64,
        method: &str,
        args: &[u8],
        timeout: Option<Duration>,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        self.request(
            &Request::Call {
                id,
                method,
                thread: thread_id(),
                args,
            },
            timeout,
            decode,
        )
    }

    /// Stops the server (any authorized client may).
    pub(crate) fn shutdown(&self) -> Result<(), ManagerError> {
        let r = self.request(&Request::Shutdown, None, |_| Ok(()));
        self.closed.store(true, Ordering::Relaxed);
        lock(&self.idle).clear();
        if let Some(p) = lock(&self.owned).take()
            && !matches!(p.join_timeout(Duration::from_secs(5)), Ok(true))
        {
            let _ = p.kill();
            let _ = p.join_timeout(Duration::from_secs(5));
        }
        match r {
            Err(ManagerError::Closed) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.is_current() && lock(&self.owned).is_some() && !self.closed.load(Ordering::Relaxed)
        {
            let _ = self.shutdown();
        }
    }
}

/// A fresh random session id.
pub(crate) fn new_id() -> Result<u128, ManagerError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| ManagerError::Start(format!("no random bytes for a session id: {e}")))?;
    Ok(u128::from_ne_bytes(id))
}

/// Decodes a reply: `Ok(payload)` through `decode`, a fault into its error.
pub(crate) fn decode_reply<R>(
    reply: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
) -> Result<R, ManagerError> {
    match codec::decode_borrowed::<Result<&Bytes, Fault>>(reply) {
        Ok(Ok(payload)) => decode(payload),
        Ok(Err(fault)) => Err(fault.into()),
        Err(e) => Err(ManagerError::Connection(ConnectionError::BadFrame(
            format!("malformed reply from the manager: {e}"),
        ))),
    }
}
