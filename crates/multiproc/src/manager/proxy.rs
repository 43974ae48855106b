//! `Proxy`: a counted reference to an object in a manager, usable from any process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::cpython::PyProxy;
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
    target: Target,
}

/// Where the object lives.
#[derive(Clone)]
enum Target {
    /// On a multiproc manager.
    Native(Arc<Inner>),
    /// On a CPython manager server: `kind` is the built-in kind it stands for.
    CPython { proxy: PyProxy, kind: &'static str },
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
        match &self.target {
            Target::Native(inner) => f
                .debug_struct("Proxy")
                .field("kind", &inner.kind)
                .field("id", &inner.id)
                .field("manager", &inner.session.address)
                .finish(),
            Target::CPython { proxy, kind } => f
                .debug_struct("Proxy")
                .field("kind", kind)
                .field("cpython", proxy)
                .finish(),
        }
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
            target: Target::Native(Arc::new(Inner {
                session,
                id,
                kind,
                pinned: AtomicBool::new(false),
            })),
        }
    }

    /// A proxy for an object of a CPython manager, standing for the built-in `kind`.
    pub(crate) fn cpython(proxy: PyProxy, kind: &'static str) -> Proxy {
        Proxy {
            target: Target::CPython { proxy, kind },
        }
    }

    /// The CPython manager's proxy, when the object lives on one.
    pub(crate) fn on_cpython(&self) -> Option<&PyProxy> {
        match &self.target {
            Target::Native(_) => None,
            Target::CPython { proxy, .. } => Some(proxy),
        }
    }

    /// The object's id on the server (on a CPython manager, its hexadecimal id read as a
    /// number).
    pub fn id(&self) -> u64 {
        match &self.target {
            Target::Native(inner) => inner.id,
            Target::CPython { proxy, .. } => u64::from_str_radix(proxy.id(), 16).unwrap_or(0),
        }
    }

    /// The object's kind (`"dict"`, `"queue"`, `"user:path::Type"`).
    pub fn kind(&self) -> &str {
        match &self.target {
            Target::Native(inner) => &inner.kind,
            Target::CPython { kind, .. } => kind,
        }
    }

    /// The native object, or the error for a call only a multiproc manager answers.
    fn native(&self) -> Result<&Arc<Inner>, ManagerError> {
        match &self.target {
            Target::Native(inner) => Ok(inner),
            Target::CPython { kind, .. } => Err(ManagerError::Unsupported {
                what: format!("this call on a `{kind}` proxy"),
                reason: "its object lives on a CPython manager server, which offers the \
                         methods the Python object has and no awaited calls (see \
                         `Manager::connect`)"
                    .into(),
            }),
        }
    }

    /// The session to talk through: ours, or in a forked child a fresh one of its own.
    pub(super) fn session(&self) -> Result<Arc<Session>, ManagerError> {
        let s = &self.native()?.session;
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
        session.call(self.id(), method, &args, None, |b| Ok(codec::decode(b)?))
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
        session.call(self.id(), call.name(), &args, timeout, decode)
    }
}

impl Serialize for Proxy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let inner = self.native().map_err(|_| {
            S::Error::custom(
                "cannot send the proxy: its object lives on a CPython manager server; \
                 the receiving process connects to it with `Manager::connect` itself",
            )
        })?;
        let s = &inner.session;
        if !inner.pinned.load(Ordering::Relaxed) {
            self.session()
                .and_then(|s| s.request(&Request::Pin { id: inner.id }, None, |_| Ok(())))
                .map_err(|e| S::Error::custom(format!("cannot send the proxy: {e}")))?;
            inner.pinned.store(true, Ordering::Relaxed);
        }
        Wire {
            address: s.address.to_string(),
            authkey: s.authkey.clone(),
            id: inner.id,
            kind: inner.kind.clone(),
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
