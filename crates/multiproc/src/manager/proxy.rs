//! `Proxy`: a counted reference to an object in a manager, usable from any process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::session::Session;
use super::wire::{Call, Request};
use crate::codec;
use crate::error::ManagerError;

/// A reference to an object living in a manager; typed proxies ([`DictProxy`](super::DictProxy),
/// [`QueueProxy`](super::QueueProxy), generated `…Proxy` types) wrap one.
///
/// Cloning is cheap and local. The object lives while a proxy to it exists in any process:
/// the last proxy of a process dropping it tells the server, and a process that dies or is
/// killed releases its references when its connections close.
///
/// A proxy is also a handle: pass it to a child process as an argument, or send it through
/// a connection or queue. The receiving process connects to the manager itself (with the
/// authkey, which travels inside the serialized proxy: send proxies only over channels you
/// trust). A process that sent a proxy keeps the object alive until it exits, so the
/// receiver always finds it.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    id: u64,
    kind: String,
    pinned: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A forked child borrows its parent's references: only the process that counted
        // the reference gives it back.
        if self.session.is_current() {
            let _ = self
                .session
                .request(&Request::Decref { id: self.id }, None, |_| Ok(()));
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("kind", &self.inner.kind)
            .field("id", &self.inner.id)
            .field("manager", &self.inner.session.address)
            .finish()
    }
}

/// What travels when a proxy is sent to another process.
#[derive(Serialize, Deserialize)]
struct Wire {
    address: String,
    #[serde(with = "serde_bytes")]
    authkey: Vec<u8>,
    id: u64,
    kind: String,
}

impl Proxy {
    /// A proxy for a reference `session` already holds.
    pub(crate) fn adopt(session: Arc<Session>, id: u64, kind: String) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                session,
                id,
                kind,
                pinned: AtomicBool::new(false),
            }),
        }
    }

    /// The object's id on the server.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The object's kind (`"dict"`, `"queue"`, `"user:path::Type"`).
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// The session to talk through: ours, or in a forked child a fresh one of its own.
    pub(super) fn session(&self) -> Result<Arc<Session>, ManagerError> {
        let s = &self.inner.session;
        if s.is_current() {
            Ok(s.clone())
        } else {
            Session::connect(&s.address, &s.authkey)
        }
    }

    /// Calls `method` with `args` (a tuple of the method's parameters) and decodes its
    /// result: what generated proxy methods do.
    pub fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, ManagerError> {
        let session = self.session()?;
        let args = codec::encode(args)?;
        session.call(self.inner.id, method, &args, None, |b| {
            Ok(codec::decode(b)?)
        })
    }

    /// Makes a built-in method's `call`, decoding the result with `decode`.
    pub(crate) fn send<R>(
        &self,
        call: impl Call,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        self.send_timed(call, None, decode)
    }

    /// [`send`](Self::send) for a blocking method given `timeout` on the server: its reply
    /// may take that long, and a little more.
    pub(crate) fn send_timed<R>(
        &self,
        call: impl Call,
        timeout: Option<Duration>,
        decode: impl FnOnce(&[u8]) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        let session = self.session()?;
        let args = call.encode_args()?;
        session.call(self.inner.id, call.name(), &args, timeout, decode)
    }
}

impl Serialize for Proxy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let s = &self.inner.session;
        if !self.inner.pinned.load(Ordering::Relaxed) {
            self.session()
                .and_then(|s| s.request(&Request::Pin { id: self.inner.id }, None, |_| Ok(())))
                .map_err(|e| S::Error::custom(format!("cannot send the proxy: {e}")))?;
            self.inner.pinned.store(true, Ordering::Relaxed);
        }
        Wire {
            address: s.address.to_string(),
            authkey: s.authkey.clone(),
            id: self.inner.id,
            kind: self.inner.kind.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = Wire::deserialize(deserializer)?;
        let fail = |e: ManagerError| D::Error::custom(format!("cannot receive the proxy: {e}"));
        let address = w
            .address
            .parse()
            .map_err(|e: crate::error::ConnectionError| fail(e.into()))?;
        let session = Session::connect(&address, &w.authkey).map_err(fail)?;
        session
            .request(&Request::Incref { id: w.id }, None, |_| Ok(()))
            .map_err(fail)?;
        Ok(Proxy::adopt(session, w.id, w.kind))
    }
}

/// A typed proxy: what [`Manager::lookup`](super::Manager::lookup) can return.
pub trait ProxyType: Sized {
    /// The kind of object this proxy talks to.
    fn kind() -> String;
    /// Wraps a raw proxy (of the right kind).
    fn from_proxy(proxy: Proxy) -> Self;
    /// The raw proxy.
    fn proxy(&self) -> &Proxy;
}

/// Whether an object of kind `found` can be used through a proxy for `expected`.
pub(crate) fn kind_fits(expected: &str, found: &str) -> bool {
    expected == found
        || (expected == "queue" && found == "joinable_queue")
        || (expected == "lock" && found == "rlock")
}
