//! The client side: a Rust program using a CPython `SyncManager` server.
//!
//! Requests are what CPython's proxies send; replies go through the same checked decoder as
//! the server's requests, so a CPython server (or anything that speaks for it) can make this
//! side run nothing. A token's address is never connected to: every connection goes to the
//! address given to [`PyManager::connect`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use super::pickle;
use super::value::{ExcClass, PyException, PyValue};
use crate::connection::{Address, Client, Connection, ToAddress};
use crate::error::{ConnectionError, ManagerError, QueueError, SyncError};
use crate::manager::objects::lock;

/// How long a reply may take beyond a blocking call's own time limit.
const REPLY_GRACE: Duration = Duration::from_secs(30);

/// How long a call polls for its reply before it sleeps.
const SPIN: Duration = crate::spin::REPLY_SPIN;

/// A connection to a CPython manager server (`multiprocessing.managers.SyncManager` or any
/// `BaseManager` serving the same type ids).
///
/// ```no_run
/// use multiproc::manager::{PyManager, PyValue};
/// # fn main() -> Result<(), multiproc::ManagerError> {
/// // python3 -c "from multiprocessing.managers import SyncManager as S; \
/// //             S(('127.0.0.1', 5000), b'secret').get_server().serve_forever()"
/// let mgr = PyManager::connect("127.0.0.1:5000", b"secret")?;
/// let d = mgr.dict()?;
/// d.set("jobs", 3)?;
/// assert_eq!(d.get("jobs")?, Some(PyValue::Int(3)));
/// let q = mgr.queue()?;
/// q.put(PyValue::Str("/tmp/a".into()))?;
/// let lock = mgr.lock()?;
/// lock.acquire(None)?;
/// lock.release()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PyManager {
    inner: Arc<Inner>,
}

struct Inner {
    address: Address,
    authkey: Vec<u8>,
    /// Each thread's connection serving method calls (CPython's server gives each its own
    /// thread; a reentrant lock belongs to it).
    threads: Mutex<HashMap<ThreadId, Connection>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyManager")
            .field("address", &self.address)
            .finish()
    }
}

/// An error a CPython manager raised, as this crate's error where there is one.
fn raised(e: PyException) -> ManagerError {
    let message = e
        .args
        .iter()
        .map(super::methods::repr)
        .collect::<Vec<_>>()
        .join(", ");
    match e.class {
        ExcClass::KeyError => ManagerError::KeyNotFound,
        ExcClass::QueueEmpty => QueueError::Empty.into(),
        ExcClass::QueueFull => QueueError::Full.into(),
        ExcClass::BrokenBarrierError => SyncError::BrokenBarrier.into(),
        class => ManagerError::Python {
            class: class.path().1.to_string(),
            message,
        },
    }
}

fn refused(what: impl std::fmt::Display) -> ManagerError {
    ManagerError::Connection(ConnectionError::BadFrame(format!(
        "reply from the CPython manager refused: {what}"
    )))
}

fn transport(e: ConnectionError) -> ManagerError {
    match e {
        ConnectionError::Closed => ManagerError::Closed,
        e => ManagerError::Connection(e),
    }
}

/// Whether `reply` is what a CPython manager server answers to a first request it cannot
/// unpickle: a pickled `('#TRACEBACK', text)` (decoded by the checked decoder, so nothing in
/// it runs).
pub(in crate::manager) fn is_refused_request(reply: &[u8]) -> bool {
    if reply.first() != Some(&0x80) {
        return false;
    }
    match pickle::decode(reply) {
        Ok(PyValue::Tuple(parts)) => matches!(
            parts.as_slice(),
            [PyValue::Str(kind), PyValue::Str(_)] if kind == "#TRACEBACK"
        ),
        _ => false,
    }
}

/// What a reply carried.
enum Answer {
    Value(PyValue),
    Proxy(String),
}

impl Inner {
    fn open(&self) -> Result<Connection, ManagerError> {
        Ok(Client::default()
            .authkey(self.authkey.clone())
            .open(&self.address)?)
    }

    /// One request on `conn` and its checked reply.
    fn exchange(
        conn: &Connection,
        request: &PyValue,
        timeout: Option<Duration>,
    ) -> Result<Answer, ManagerError> {
        let bytes = pickle::encode(request).map_err(|e| ManagerError::Invalid(e.to_string()))?;
        conn.send_bytes(&bytes).map_err(transport)?;
        // Most replies come within microseconds: wait for them awake, as the manager's own
        // client does (within the library's waiting policy).
        let deadline = timeout.map(|t| std::time::Instant::now() + t.saturating_add(REPLY_GRACE));
        let reply = conn.recv_spinning(SPIN, deadline).map_err(transport)?;
        let reply = pickle::decode(&reply).map_err(refused)?;
        let PyValue::Tuple(parts) = reply else {
            return Err(refused("not a (kind, result) pair"));
        };
        let Ok([kind, result]) = <[PyValue; 2]>::try_from(parts) else {
            return Err(refused("not a (kind, result) pair"));
        };
        match (kind.as_str(), result) {
            (Some("#RETURN"), v) => Ok(Answer::Value(v)),
            (Some("#ERROR"), PyValue::Exception(e)) => Err(raised(e)),
            (Some("#TRACEBACK" | "#UNSERIALIZABLE"), PyValue::Str(text)) => {
                Err(ManagerError::Python {
                    class: "RemoteError".into(),
                    message: text,
                })
            }
            (Some("#PROXY"), PyValue::Tuple(t)) => match t.as_slice() {
                [_, PyValue::Token(token)] => Ok(Answer::Proxy(token.id.clone())),
                _ => Err(refused("a #PROXY without a token")),
            },
            (kind, _) => Err(refused(format!("reply kind {kind:?}"))),
        }
    }

    /// A manager function on a connection of its own (`create`, `decref`, ...).
    fn function(&self, func: &str, args: Vec<PyValue>) -> Result<PyValue, ManagerError> {
        let conn = self.open()?;
        let request = PyValue::Tuple(vec![
            PyValue::None,
            PyValue::Str(func.into()),
            PyValue::Tuple(args),
            PyValue::Dict(Vec::new()),
        ]);
        match Self::exchange(&conn, &request, None)? {
            Answer::Value(v) => Ok(v),
            Answer::Proxy(_) => Err(refused("a proxy where a value was expected")),
        }
    }

    /// This thread's connection for method calls, opened (and `accept_connection`ed) if
    /// needed.
    fn thread_conn(&self) -> Result<Connection, ManagerError> {
        let me = std::thread::current().id();
        if let Some(c) = lock(&self.threads).remove(&me) {
            return Ok(c);
        }
        let conn = self.open()?;
        let name = format!("{me:?}");
        let request = PyValue::Tuple(vec![
            PyValue::None,
            PyValue::Str("accept_connection".into()),
            PyValue::Tuple(vec![PyValue::Str(name)]),
            PyValue::Dict(Vec::new()),
        ]);
        Self::exchange(&conn, &request, None)?;
        Ok(conn)
    }
}

impl PyManager {
    /// Connects to the CPython manager serving on `address` (wrong key: a connection
    /// error), as `BaseManager.connect` does.
    pub fn connect(address: impl ToAddress, authkey: &[u8]) -> Result<PyManager, ManagerError> {
        let inner = Arc::new(Inner {
            address: address.to_address()?,
            authkey: authkey.to_vec(),
            threads: Mutex::new(HashMap::new()),
        });
        inner.function("dummy", Vec::new())?;
        Ok(PyManager { inner })
    }

    /// A client of the CPython manager at `address` that already answered as one (after
    /// the handshake with `authkey`), without asking again.
    pub(in crate::manager) fn answered(address: Address, authkey: &[u8]) -> PyManager {
        PyManager {
            inner: Arc::new(Inner {
                address,
                authkey: authkey.to_vec(),
                threads: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The address of the server.
    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// The authkey.
    pub fn authkey(&self) -> &[u8] {
        &self.inner.authkey
    }

    /// Creates an object of `typeid` (a SyncManager type id such as `"dict"`, `"Queue"`,
    /// `"Lock"`, or one the server registered) from `args`; its proxy.
    pub fn create(&self, typeid: &str, args: Vec<PyValue>) -> Result<PyProxy, ManagerError> {
        let mut all = vec![PyValue::Str(typeid.into())];
        all.extend(args);
        let reply = self.inner.function("create", all)?;
        let (id, exposed) = match reply {
            PyValue::Tuple(t) => match <[PyValue; 2]>::try_from(t) {
                Ok(
                    [
                        PyValue::Str(id),
                        PyValue::Tuple(exposed) | PyValue::List(exposed),
                    ],
                ) => (id, exposed),
                _ => return Err(refused("create did not return (id, exposed)")),
            },
            _ => return Err(refused("create did not return (id, exposed)")),
        };
        let exposed = exposed
            .into_iter()
            .filter_map(|m| match m {
                PyValue::Str(s) => Some(s),
                _ => None,
            })
            .collect();
        Ok(PyProxy {
            inner: Arc::new(ProxyInner {
                mgr: self.inner.clone(),
                typeid: typeid.to_string(),
                id,
                exposed,
            }),
        })
    }

    /// A new, empty dict.
    pub fn dict(&self) -> Result<PyDict, ManagerError> {
        Ok(PyDict(self.create("dict", Vec::new())?))
    }

    /// A new, empty list.
    pub fn list(&self) -> Result<PyList, ManagerError> {
        Ok(PyList(self.create("list", Vec::new())?))
    }

    /// A new unbounded queue (CPython's `queue.Queue`, joinable).
    pub fn queue(&self) -> Result<PyQueue, ManagerError> {
        Ok(PyQueue(self.create("Queue", Vec::new())?))
    }

    /// A new queue holding at most `maxsize` items (`0`: unbounded).
    pub fn queue_bounded(&self, maxsize: u64) -> Result<PyQueue, ManagerError> {
        let maxsize = PyValue::Int(maxsize.into());
        Ok(PyQueue(self.create("Queue", vec![maxsize])?))
    }

    /// A new lock (`threading.Lock` on the server).
    pub fn lock(&self) -> Result<PyLock, ManagerError> {
        Ok(PyLock(self.create("Lock", Vec::new())?))
    }

    /// A new reentrant lock (`threading.RLock` on the server: the thread that acquired it,
    /// here this thread's connection, releases it).
    pub fn rlock(&self) -> Result<PyLock, ManagerError> {
        Ok(PyLock(self.create("RLock", Vec::new())?))
    }

    /// The number of objects the server holds.
    pub fn number_of_objects(&self) -> Result<u64, ManagerError> {
        match self.inner.function("number_of_objects", Vec::new())? {
            PyValue::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            _ => Err(refused("number_of_objects is not an int")),
        }
    }
}

/// A proxy to an object of a CPython manager: calls its exposed methods with Python
/// values. The object is released when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PyProxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    mgr: Arc<Inner>,
    typeid: String,
    id: String,
    exposed: Vec<String>,
}

impl Drop for ProxyInner {
    fn drop(&mut self) {
        let _ = self
            .mgr
            .function("decref", vec![PyValue::Str(self.id.clone())]);
    }
}

impl PyProxy {
    /// The object's type id.
    pub fn typeid(&self) -> &str {
        &self.inner.typeid
    }

    /// The object's id on the server (hexadecimal, as CPython writes it).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The methods the server exposes for it.
    pub fn exposed(&self) -> &[String] {
        &self.inner.exposed
    }

    /// Calls `method` with positional `args`.
    pub fn call(&self, method: &str, args: Vec<PyValue>) -> Result<PyValue, ManagerError> {
        self.call_with(method, args, Vec::new(), None)
    }

    /// Calls `method` with positional and keyword arguments; `timeout` is the call's own
    /// limit on the server (the reply may take that long, and a little more).
    pub fn call_with(
        &self,
        method: &str,
        args: Vec<PyValue>,
        kwds: Vec<(String, PyValue)>,
        timeout: Option<Duration>,
    ) -> Result<PyValue, ManagerError> {
        if !self.inner.exposed.iter().any(|m| m == method) {
            return Err(ManagerError::UnknownMethod {
                kind: self.inner.typeid.clone(),
                method: method.to_string(),
            });
        }
        let mgr = &self.inner.mgr;
        let conn = mgr.thread_conn()?;
        let request = PyValue::Tuple(vec![
            PyValue::Str(self.inner.id.clone()),
            PyValue::Str(method.into()),
            PyValue::Tuple(args),
            PyValue::Dict(
                kwds.into_iter()
                    .map(|(k, v)| (PyValue::Str(k), v))
                    .collect(),
            ),
        ]);
        let answer = Inner::exchange(&conn, &request, timeout);
        // A connection that finished its exchange serves this thread's next call.
        if !matches!(
            answer,
            Err(ManagerError::Closed | ManagerError::Connection(_))
        ) {
            lock(&mgr.threads).insert(std::thread::current().id(), conn);
        }
        match answer? {
            Answer::Value(v) => Ok(v),
            Answer::Proxy(id) => {
                // The server counted one reference for us: give it back.
                let _ = mgr.function("decref", vec![PyValue::Str(id)]);
                Err(ManagerError::Invalid(format!(
                    "{method} returns a proxy, which this client does not build"
                )))
            }
        }
    }
}

fn seconds(t: Option<Duration>) -> PyValue {
    t.map_or(PyValue::None, |t| PyValue::Float(t.as_secs_f64()))
}

fn int(v: PyValue) -> Result<u64, ManagerError> {
    v.as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| refused(format!("expected an int, got a {}", v.type_name())))
}

/// `value` as a `bool` reply of `method`.
fn flag(method: &str, value: PyValue) -> Result<bool, ManagerError> {
    match value {
        PyValue::Bool(b) => Ok(b),
        v => Err(refused(format!("{method}() gave a {}", v.type_name()))),
    }
}

/// The items of a `list` (or `tuple`) reply of `method`.
fn sequence(method: &str, value: PyValue) -> Result<Vec<PyValue>, ManagerError> {
    match value {
        PyValue::List(items) | PyValue::Tuple(items) => Ok(items),
        v => Err(refused(format!("{method}() gave a {}", v.type_name()))),
    }
}

/// `slice(None, None, None)`: the whole of a list.
fn whole() -> PyValue {
    PyValue::Slice(Box::new([PyValue::None, PyValue::None, PyValue::None]))
}

/// A dict of a CPython manager.
#[derive(Clone, Debug)]
pub struct PyDict(pub PyProxy);

impl PyDict {
    /// `d[key]`, `None` when absent.
    pub fn get(&self, key: impl Into<PyValue>) -> Result<Option<PyValue>, ManagerError> {
        match self.0.call("__getitem__", vec![key.into()]) {
            Err(ManagerError::KeyNotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    /// `d[key] = value`.
    pub fn set(
        &self,
        key: impl Into<PyValue>,
        value: impl Into<PyValue>,
    ) -> Result<(), ManagerError> {
        self.0
            .call("__setitem__", vec![key.into(), value.into()])
            .map(drop)
    }

    /// `d.pop(key)`, `None` when absent (a value that is Python's `None` is `Some`).
    pub fn remove(&self, key: impl Into<PyValue>) -> Result<Option<PyValue>, ManagerError> {
        match self.0.call("pop", vec![key.into()]) {
            Err(ManagerError::KeyNotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    /// `key in d`.
    pub fn contains(&self, key: impl Into<PyValue>) -> Result<bool, ManagerError> {
        flag(
            "__contains__",
            self.0.call("__contains__", vec![key.into()])?,
        )
    }

    /// `d.setdefault(key, default)`.
    pub fn setdefault(
        &self,
        key: impl Into<PyValue>,
        default: impl Into<PyValue>,
    ) -> Result<PyValue, ManagerError> {
        self.0.call("setdefault", vec![key.into(), default.into()])
    }

    /// `d.update(entries)`, in one call.
    pub fn update(&self, entries: Vec<(PyValue, PyValue)>) -> Result<(), ManagerError> {
        self.0
            .call("update", vec![PyValue::Dict(entries)])
            .map(drop)
    }

    /// `d.clear()`.
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.0.call("clear", Vec::new()).map(drop)
    }

    /// `len(d)`.
    pub fn len(&self) -> Result<u64, ManagerError> {
        int(self.0.call("__len__", Vec::new())?)
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }

    /// `d.copy()`: the entries.
    pub fn items(&self) -> Result<Vec<(PyValue, PyValue)>, ManagerError> {
        match self.0.call("copy", Vec::new())? {
            PyValue::Dict(d) => Ok(d),
            v => Err(refused(format!("copy() gave a {}", v.type_name()))),
        }
    }
}

/// A list of a CPython manager.
#[derive(Clone, Debug)]
pub struct PyList(pub PyProxy);

impl PyList {
    /// `l.append(value)`.
    pub fn append(&self, value: impl Into<PyValue>) -> Result<(), ManagerError> {
        self.0.call("append", vec![value.into()]).map(drop)
    }

    /// `l.extend(values)`, in one call.
    pub fn extend(&self, values: Vec<PyValue>) -> Result<(), ManagerError> {
        self.0.call("extend", vec![PyValue::List(values)]).map(drop)
    }

    /// `l.insert(index, value)`.
    pub fn insert(&self, index: i64, value: impl Into<PyValue>) -> Result<(), ManagerError> {
        self.0
            .call("insert", vec![index.into(), value.into()])
            .map(drop)
    }

    /// `l[index]` (negative from the end).
    pub fn get(&self, index: i64) -> Result<PyValue, ManagerError> {
        self.0.call("__getitem__", vec![index.into()])
    }

    /// `l[index] = value`.
    pub fn set(&self, index: i64, value: impl Into<PyValue>) -> Result<(), ManagerError> {
        self.0
            .call("__setitem__", vec![index.into(), value.into()])
            .map(drop)
    }

    /// `l.pop(index)` (`-1`: the last item).
    pub fn pop(&self, index: i64) -> Result<PyValue, ManagerError> {
        self.0.call("pop", vec![index.into()])
    }

    /// `value in l`.
    pub fn contains(&self, value: impl Into<PyValue>) -> Result<bool, ManagerError> {
        flag(
            "__contains__",
            self.0.call("__contains__", vec![value.into()])?,
        )
    }

    /// `l[:]`: all items.
    pub fn to_vec(&self) -> Result<Vec<PyValue>, ManagerError> {
        sequence("__getitem__", self.0.call("__getitem__", vec![whole()])?)
    }

    /// `del l[:]` (a list proxy has no `clear`).
    pub fn clear(&self) -> Result<(), ManagerError> {
        self.0.call("__delitem__", vec![whole()]).map(drop)
    }

    /// `len(l)`.
    pub fn len(&self) -> Result<u64, ManagerError> {
        int(self.0.call("__len__", Vec::new())?)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool, ManagerError> {
        Ok(self.len()? == 0)
    }
}

/// A queue of a CPython manager.
#[derive(Clone, Debug)]
pub struct PyQueue(pub PyProxy);

/// `block, timeout` of a queue call: `None` waits for ever, zero does not wait.
fn blocking(timeout: Option<Duration>) -> [PyValue; 2] {
    match timeout {
        Some(t) if t.is_zero() => [PyValue::Bool(false), PyValue::None],
        t => [PyValue::Bool(true), seconds(t)],
    }
}

impl PyQueue {
    /// `q.put(item)`.
    pub fn put(&self, item: impl Into<PyValue>) -> Result<(), ManagerError> {
        self.put_timeout(item, None)
    }

    /// `q.put(item, timeout=...)`: [`QueueError::Full`] when there was no room in time
    /// (`None`: wait for ever; zero: `put_nowait`).
    pub fn put_timeout(
        &self,
        item: impl Into<PyValue>,
        timeout: Option<Duration>,
    ) -> Result<(), ManagerError> {
        let [block, t] = blocking(timeout);
        self.0
            .call_with("put", vec![item.into(), block, t], Vec::new(), timeout)
            .map(drop)
    }

    /// `q.get(timeout=...)`: [`QueueError::Empty`] when nothing came in time (`None`: wait
    /// for ever; zero: `get_nowait`).
    pub fn get(&self, timeout: Option<Duration>) -> Result<PyValue, ManagerError> {
        let [block, t] = blocking(timeout);
        self.0.call_with("get", vec![block, t], Vec::new(), timeout)
    }

    /// `q.qsize()`.
    pub fn qsize(&self) -> Result<u64, ManagerError> {
        int(self.0.call("qsize", Vec::new())?)
    }

    /// `q.empty()`.
    pub fn empty(&self) -> Result<bool, ManagerError> {
        flag("empty", self.0.call("empty", Vec::new())?)
    }

    /// `q.full()`.
    pub fn full(&self) -> Result<bool, ManagerError> {
        flag("full", self.0.call("full", Vec::new())?)
    }
}

/// A lock of a CPython manager.
#[derive(Clone, Debug)]
pub struct PyLock(pub PyProxy);

impl PyLock {
    /// Acquires the lock within `timeout` (`None`: for ever; zero: without waiting);
    /// whether it was acquired.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<bool, ManagerError> {
        let args = match timeout {
            Some(t) if t.is_zero() => vec![PyValue::Bool(false)],
            Some(t) => vec![PyValue::Bool(true), PyValue::Float(t.as_secs_f64())],
            None => vec![PyValue::Bool(true)],
        };
        flag(
            "acquire",
            self.0.call_with("acquire", args, Vec::new(), timeout)?,
        )
    }

    /// Releases the lock.
    pub fn release(&self) -> Result<(), ManagerError> {
        self.0.call("release", Vec::new()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(kind: &str, value: PyValue) -> Vec<u8> {
        pickle::encode(&PyValue::Tuple(vec![kind.into(), value])).unwrap()
    }

    #[test]
    fn only_a_pickled_traceback_is_a_cpython_servers_refusal() {
        assert!(is_refused_request(&pair(
            "#TRACEBACK",
            "UnpicklingError: invalid load key".into()
        )));
        assert!(!is_refused_request(&pair("#RETURN", PyValue::None)));
        assert!(!is_refused_request(&pair("#TRACEBACK", PyValue::Int(1))));
        // A reply of multiproc's own protocol, bytes that only start like a pickle, nothing.
        assert!(!is_refused_request(&[0, 1, 2]));
        assert!(!is_refused_request(&[0x80, 4, 0xff]));
        assert!(!is_refused_request(&[]));
    }
}
