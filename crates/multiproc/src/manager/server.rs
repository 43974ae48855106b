//! The manager server: accepts clients, owns the objects, counts references per session.
//!
//! The listener runs the clients' handshakes (all at once, so a slow one holds up nobody
//! else); one thread takes the authenticated connections, and each gets its own thread, which
//! answers its requests one by one.
//! References are counted per client session (a process); when a session's last
//! connection closes — the process exited or was killed — its references are dropped and
//! the locks it held released, so nothing leaks until shutdown as in CPython.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::objects::{Ctx, Object, create_builtin, lock};
use super::wire::{Fault, Hello, ManagerStats, Request, ret};
use crate::codec;
use crate::connection::{Address, Connection, Listener, pipe};
use crate::error::{ConnectionError, ManagerError};
use crate::sys;

/// At most this many connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 4096;

/// How long a connection thread polls for the next request before it sleeps.
pub(super) const SPIN: Duration = crate::spin::REPLY_SPIN;

/// How long a stopping server waits for its connection threads.
const STOP_GRACE: Duration = Duration::from_secs(2);

struct Slot {
    obj: Arc<dyn Object>,
    refs: u64,
}

#[derive(Default)]
struct SessionRefs {
    connections: u64,
    refs: HashMap<u64, u64>,
    pinned: HashSet<u64>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    objects: HashMap<u64, Slot>,
    names: HashMap<String, u64>,
    sessions: HashMap<u128, SessionRefs>,
    /// References held by CPython clients (counted per object, not per process: their
    /// `incref`/`decref` come on connections of their own).
    py_refs: HashMap<u64, u64>,
    /// Objects a stored value refers to (a proxy inside a CPython client's value): kept
    /// until shutdown, as CPython's server keeps them.
    value_pins: HashSet<u64>,
    /// Open connections (duplicates, to shut them down when stopping).
    connections: HashMap<u64, OwnedFd>,
    next_conn: u64,
}

impl Registry {
    fn incref(&mut self, session: u128, id: u64) -> Result<(), Fault> {
        let holder = self.sessions.get_mut(&session).ok_or(Fault::NoSession)?;
        let slot = self.objects.get_mut(&id).ok_or(Fault::UnknownObject(id))?;
        slot.refs += 1;
        *holder.refs.entry(id).or_default() += 1;
        Ok(())
    }

    /// Drops one reference to `id`; the object when it was the last.
    fn release(&mut self, id: u64) -> Option<Arc<dyn Object>> {
        let slot = self.objects.get_mut(&id)?;
        slot.refs -= 1;
        if slot.refs == 0 {
            return self.objects.remove(&id).map(|s| s.obj);
        }
        None
    }
}

/// What the server threads share.
pub(super) struct Core {
    address: Address,
    reg: Mutex<Registry>,
    stopping: AtomicBool,
    /// Written to wake the accept loop.
    wake: Connection,
    wake_rx: Connection,
    /// Set (and signalled) when the server has stopped.
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
    /// Signalled when a connection thread ends.
    conn_ended: Condvar,
}

impl Core {
    pub(super) fn stop(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            let _ = self.wake.send_bytes(b"");
        }
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(super) fn address(&self) -> &Address {
        &self.address
    }

    /// The object `id`, if alive.
    pub(super) fn object(&self, id: u64) -> Option<Arc<dyn Object>> {
        lock(&self.reg).objects.get(&id).map(|s| s.obj.clone())
    }

    /// How many objects are alive.
    pub(super) fn object_count(&self) -> usize {
        lock(&self.reg).objects.len()
    }

    /// Adds `obj`, referenced once by CPython clients; its id.
    pub(super) fn py_create(&self, obj: Arc<dyn Object>) -> u64 {
        let mut reg = lock(&self.reg);
        reg.next_id += 1;
        let id = reg.next_id;
        reg.objects.insert(id, Slot { obj, refs: 1 });
        reg.py_refs.insert(id, 1);
        id
    }

    /// One more CPython reference to `id`.
    pub(super) fn py_incref(&self, id: u64) -> Result<(), Fault> {
        let mut reg = lock(&self.reg);
        let slot = reg.objects.get_mut(&id).ok_or(Fault::UnknownObject(id))?;
        slot.refs += 1;
        *reg.py_refs.entry(id).or_default() += 1;
        Ok(())
    }

    /// One CPython reference less (never more than CPython clients took).
    pub(super) fn py_decref(&self, id: u64) -> Result<(), Fault> {
        let mut reg = lock(&self.reg);
        let held = reg
            .py_refs
            .get_mut(&id)
            .ok_or_else(|| Fault::Invalid(format!("no reference to {id} to drop")))?;
        *held -= 1;
        if *held == 0 {
            reg.py_refs.remove(&id);
        }
        let freed = reg.release(id);
        drop(reg);
        drop(freed);
        Ok(())
    }

    /// The object published as `name` with a new CPython reference: its id and the object.
    pub(super) fn py_lookup(&self, name: &str) -> Option<(u64, Arc<dyn Object>)> {
        let id = *lock(&self.reg).names.get(name)?;
        self.py_incref(id).ok()?;
        Some((id, self.object(id)?))
    }

    /// Keeps `id` alive until shutdown (a stored value refers to it); false when there is
    /// no such object.
    pub(super) fn keep(&self, id: u64) -> bool {
        let mut reg = lock(&self.reg);
        if !reg.objects.contains_key(&id) {
            return false;
        }
        if reg.value_pins.insert(id)
            && let Some(slot) = reg.objects.get_mut(&id)
        {
            slot.refs += 1;
        }
        true
    }
}

/// A running manager server: [`Manager::serve`](super::Manager::serve).
///
/// Serving happens on background threads from the moment it is created. The server stops
/// when an authorized client calls [`Manager::shutdown`](super::Manager::shutdown), when
/// [`ServerHandle::shutdown`] is called, or when the `Server` is dropped.
///
/// ```
/// use multiproc::manager::Manager;
/// # fn main() -> Result<(), multiproc::ManagerError> {
/// let server = Manager::serve("127.0.0.1:0", b"secret")?;
/// let mgr = Manager::connect(server.address(), b"secret")?;
/// let totals = mgr.dict::<String, u64>()?;
/// mgr.publish("totals", &totals)?;
/// assert_eq!(server.stats().names, 1);
/// drop((totals, mgr));
/// server.shutdown(); // clients now get `ManagerError::Closed`
/// # Ok(()) }
/// ```
pub struct Server {
    core: Arc<Core>,
    accept: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.core.address)
            .finish()
    }
}

/// Stops a [`Server`] from another thread (a signal handler thread, for example).
///
/// ```
/// use std::time::Duration;
/// use multiproc::manager::Manager;
/// # fn main() -> Result<(), multiproc::ManagerError> {
/// let server = Manager::serve("127.0.0.1:0", b"secret")?;
/// let handle = server.handle();
/// let stopper = std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_millis(50)); // a signal, a deadline, an admin command...
///     handle.shutdown();
/// });
/// assert!(server.wait_timeout(Duration::from_secs(10))); // returns once stopped
/// stopper.join().unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerHandle(Arc<Core>);

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerHandle")
            .field(&self.0.address)
            .finish()
    }
}

impl ServerHandle {
    /// Asks the server to stop; [`Server::wait`] then returns.
    pub fn shutdown(&self) {
        self.0.stop();
    }
}

impl Server {
    /// Starts serving on `listener`.
    pub(crate) fn start(listener: Listener) -> Result<Server, ManagerError> {
        let (wake_rx, wake) = pipe(false)?;
        let core = Arc::new(Core {
            address: listener.address().clone(),
            reg: Mutex::new(Registry::default()),
            stopping: AtomicBool::new(false),
            wake,
            wake_rx,
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
            conn_ended: Condvar::new(),
        });
        let c = core.clone();
        let accept = thread::Builder::new()
            .name("manager-accept".into())
            .spawn(move || accept_loop(&c, listener))
            .map_err(|e| ManagerError::Start(format!("cannot start the accept thread: {e}")))?;
        Ok(Server {
            core,
            accept: Some(accept),
        })
    }

    /// Serves `conns`, trusted connections (socketpair ends from the owner), as members of
    /// client session `session`: no handshake, no hello.
    pub(crate) fn adopt(&self, conns: Vec<Connection>, session: u128) {
        for conn in conns {
            spawn_connection(&self.core, conn, Some(session));
        }
    }

    /// The address clients connect to (with the real port when bound to port 0).
    pub fn address(&self) -> &Address {
        &self.core.address
    }

    /// A handle that stops the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.core.clone())
    }

    /// Blocks until the server has stopped (a client's `shutdown`, or a handle's).
    pub fn wait(&self) {
        let mut stopped = lock(&self.core.stopped);
        while !*stopped {
            stopped = self
                .core
                .stopped_cv
                .wait(stopped)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Blocks until the server has stopped or `timeout` passed; true when it stopped.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let stopped = lock(&self.core.stopped);
        let (stopped, _) = self
            .core
            .stopped_cv
            .wait_timeout_while(stopped, timeout, |s| !*s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopped
    }

    /// What the server holds now.
    pub fn stats(&self) -> ManagerStats {
        stats(&lock(&self.core.reg))
    }

    /// Stops serving: clients get [`ManagerError::Closed`], objects are dropped.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.core.stop();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn stats(reg: &Registry) -> ManagerStats {
    ManagerStats {
        objects: reg.objects.len() as u64,
        sessions: reg.sessions.len() as u64,
        connections: reg.connections.len() as u64,
        names: reg.names.len() as u64,
    }
}

/// Takes authenticated connections until the server stops; the listener closes when it
/// returns (later clients are refused at once instead of waiting for a handshake that never
/// comes).
fn accept_loop(core: &Arc<Core>, listener: Listener) {
    while let Ok(ready) = sys::poll_readable(&[listener.as_fd(), core.wake_rx.as_fd()], None) {
        if ready[1] || core.stopping.load(Ordering::SeqCst) {
            break;
        }
        if !ready[0] {
            continue;
        }
        match listener.accept_timeout(Duration::ZERO) {
            Ok(conn) => spawn_connection(core, conn, None),
            // Out of descriptors and the like: back off instead of spinning.
            Err(ConnectionError::Io(_)) => thread::sleep(Duration::from_millis(10)),
            // A client that failed its handshake (its own affair), or a spurious wake-up.
            Err(_) => {}
        }
    }
    drop(listener);
    finish(core);
}

/// Serves `conn` on a thread of its own: an authenticated client, or (with `session`) a
/// trusted connection already in that session.
fn spawn_connection(core: &Arc<Core>, conn: Connection, session: Option<u128>) {
    let Ok(dup) = conn.as_fd().try_clone_to_owned() else {
        return;
    };
    let conn_id = {
        let mut reg = lock(&core.reg);
        if reg.connections.len() >= MAX_CONNECTIONS {
            return;
        }
        reg.next_conn += 1;
        let id = reg.next_conn;
        reg.connections.insert(id, dup);
        if let Some(s) = session {
            reg.sessions.entry(s).or_default().connections += 1;
        }
        id
    };
    let c = core.clone();
    let spawned = thread::Builder::new()
        .name("manager-conn".into())
        .spawn(move || {
            match session {
                Some(s) => serve_session(&c, &conn, s),
                None => serve_connection(&c, &conn),
            }
            let mut reg = lock(&c.reg);
            reg.connections.remove(&conn_id);
            drop(reg);
            c.conn_ended.notify_all();
        });
    if spawned.is_err() {
        let mut reg = lock(&core.reg);
        reg.connections.remove(&conn_id);
        drop(reg);
        if let Some(s) = session {
            leave_session(core, s);
        }
    }
}

/// Stops every connection, waits a little for their threads, drops the objects.
///
/// Only the reading side is shut at first: a thread waiting for the next request ends at
/// once, a blocking call gives up (it sees `stopping`), and a call already carried out still
/// sends its answer — cutting the writing side too made a client's last `task_done`, which
/// let another client's `join` return and shut the server down, fail with `Closed`
/// although it was done.
fn finish(core: &Core) {
    core.stopping.store(true, Ordering::SeqCst);
    let mut reg = lock(&core.reg);
    for fd in reg.connections.values() {
        let _ = sys::shutdown(fd.as_fd(), false);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !reg.connections.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // A thread stuck in a user method: its client gets `Closed` now, the thread is
            // left to end on its own.
            for fd in reg.connections.values() {
                let _ = sys::shutdown(fd.as_fd(), true);
            }
            break;
        }
        reg = core
            .conn_ended
            .wait_timeout(reg, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
    let objects = std::mem::take(&mut reg.objects);
    reg.names.clear();
    reg.py_refs.clear();
    reg.value_pins.clear();
    drop(reg);
    drop(objects);
    *lock(&core.stopped) = true;
    core.stopped_cv.notify_all();
}

/// Serves one authenticated client connection until it closes.
fn serve_connection(core: &Core, conn: &Connection) {
    // The first message joins a session, or is a CPython client's first request (the
    // handshake is the same; a pickle starts with its PROTO opcode).
    // Anything else is answered as CPython's server would, with a `#TRACEBACK`.
    let session = match conn.recv_bytes_timeout(Duration::from_secs(10)) {
        Ok(bytes) if bytes.first() == Some(&0x80) => {
            return super::cpython::serve(core, conn, &bytes);
        }
        Ok(bytes) => match codec::decode_borrowed::<Request<'_>>(&bytes) {
            Ok(Request::Hello { session }) => session,
            _ => return super::cpython::serve(core, conn, &bytes),
        },
        Err(_) => return,
    };
    lock(&core.reg)
        .sessions
        .entry(session)
        .or_default()
        .connections += 1;
    let hello = Hello {
        pid: std::process::id(),
        max_message: conn.max_message_size(),
    };
    if reply(conn, ret(&hello)).is_ok() {
        requests(core, conn, session);
    }
    leave_session(core, session);
}

/// Serves a trusted connection that joined `session` when it was handed over.
fn serve_session(core: &Core, conn: &Connection, session: u128) {
    requests(core, conn, session);
    leave_session(core, session);
}

fn reply(conn: &Connection, result: Result<Vec<u8>, Fault>) -> Result<(), ConnectionError> {
    let encoded = match &result {
        Ok(bytes) => codec::encode(&Ok::<_, Fault>(serde_bytes::Bytes::new(bytes)))?,
        Err(f) => codec::encode(&Err::<(), _>(f))?,
    };
    conn.send_bytes(&encoded)
}

/// Whether the client of `conn` has gone (or the server is stopping): a blocked call gives
/// up. A client waiting for a reply sends nothing, so anything readable means it closed.
pub(super) fn peer_gone(core: &Core, conn: &Connection) -> bool {
    core.stopping.load(Ordering::SeqCst)
        || sys::poll_readable(&[conn.as_fd()], Some(Duration::ZERO))
            .map(|r| r[0])
            .unwrap_or(true)
}

fn requests(core: &Core, conn: &Connection, session: u128) {
    let peer_gone = || peer_gone(core, conn);
    loop {
        // Clients often send the next request right after a reply: catch it awake.
        let Ok(bytes) = conn.recv_spinning(SPIN, None) else {
            return;
        };
        let result = match codec::decode_borrowed::<Request<'_>>(&bytes) {
            Ok(Request::Shutdown) => {
                let _ = reply(conn, ret(&()));
                core.stop();
                return;
            }
            Ok(req) => handle(core, session, req, &peer_gone),
            Err(e) => Err(Fault::Invalid(format!("malformed request: {e}"))),
        };
        if reply(conn, result).is_err() {
            return;
        }
    }
}

fn handle(
    core: &Core,
    session: u128,
    req: Request<'_>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<u8>, Fault> {
    match req {
        Request::Call {
            id,
            method,
            thread,
            args,
        } => {
            let obj = lock(&core.reg)
                .objects
                .get(&id)
                .map(|s| s.obj.clone())
                .ok_or(Fault::UnknownObject(id))?;
            let cx = Ctx {
                owner: (session, thread),
                cancelled,
            };
            catch_unwind(AssertUnwindSafe(|| obj.call(&cx, method, args)))
                .unwrap_or_else(|p| Err(Fault::Panicked(crate::process::panic_message(&*p))))
        }
        Request::Create { kind, init } => {
            let obj: Arc<dyn Object> = create_builtin(kind, init)
                .or_else(|| super::managed::create_user(kind, init))
                .ok_or_else(|| Fault::UnknownKind(kind.to_string()))??
                .into();
            let mut reg = lock(&core.reg);
            reg.next_id += 1;
            let id = reg.next_id;
            reg.objects.insert(id, Slot { obj, refs: 0 });
            if let Err(e) = reg.incref(session, id) {
                reg.objects.remove(&id);
                return Err(e);
            }
            ret(&id)
        }
        Request::Incref { id } => {
            lock(&core.reg).incref(session, id)?;
            ret(&())
        }
        Request::Decref { id } => {
            let mut reg = lock(&core.reg);
            let held = reg
                .sessions
                .get_mut(&session)
                .and_then(|s| s.refs.get_mut(&id))
                .ok_or_else(|| {
                    Fault::Invalid(format!("this session holds no reference to {id}"))
                })?;
            *held -= 1;
            if *held == 0
                && let Some(s) = reg.sessions.get_mut(&session)
            {
                s.refs.remove(&id);
            }
            let freed = reg.release(id);
            drop(reg);
            drop(freed);
            ret(&())
        }
        Request::Pin { id } => {
            let mut reg = lock(&core.reg);
            if !reg.objects.contains_key(&id) {
                return Err(Fault::UnknownObject(id));
            }
            let s = reg.sessions.get_mut(&session).ok_or(Fault::NoSession)?;
            if s.pinned.insert(id)
                && let Some(slot) = reg.objects.get_mut(&id)
            {
                slot.refs += 1;
            }
            ret(&())
        }
        Request::Publish { name, id } => {
            let mut reg = lock(&core.reg);
            if reg.names.contains_key(name) {
                return Err(Fault::NameTaken(name.to_string()));
            }
            let slot = reg.objects.get_mut(&id).ok_or(Fault::UnknownObject(id))?;
            slot.refs += 1;
            reg.names.insert(name.to_string(), id);
            ret(&())
        }
        Request::Lookup { name } => {
            let mut reg = lock(&core.reg);
            let id = *reg
                .names
                .get(name)
                .ok_or_else(|| Fault::NameNotFound(name.to_string()))?;
            reg.incref(session, id)?;
            let kind = reg.objects[&id].obj.kind().to_string();
            ret(&(id, kind))
        }
        Request::Unpublish { name } => {
            let mut reg = lock(&core.reg);
            let id = reg
                .names
                .remove(name)
                .ok_or_else(|| Fault::NameNotFound(name.to_string()))?;
            let freed = reg.release(id);
            drop(reg);
            drop(freed);
            ret(&())
        }
        Request::Adopt { id } => {
            let mut reg = lock(&core.reg);
            reg.incref(session, id)?;
            ret(&reg.objects[&id].obj.kind().to_string())
        }
        Request::Stats => ret(&stats(&lock(&core.reg))),
        Request::Hello { .. } => Err(Fault::Invalid("hello sent twice".into())),
        Request::Shutdown => unreachable!("handled by the request loop"),
    }
}

/// A connection of `session` closed; the last one ends the session: its locks are
/// released and its references dropped.
fn leave_session(core: &Core, session: u128) {
    let mut reg = lock(&core.reg);
    let Some(s) = reg.sessions.get_mut(&session) else {
        return;
    };
    s.connections -= 1;
    if s.connections > 0 {
        return;
    }
    let s = reg.sessions.remove(&session).unwrap_or_default();
    let mut touched = Vec::new();
    let mut freed = Vec::new();
    let held = s
        .refs
        .into_iter()
        .flat_map(|(id, n)| std::iter::repeat_n(id, n as usize))
        .chain(s.pinned);
    for id in held {
        if let Some(slot) = reg.objects.get(&id) {
            touched.push(slot.obj.clone());
        }
        freed.extend(reg.release(id));
    }
    drop(reg);
    for obj in touched {
        obj.session_ended(session);
    }
    drop(freed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        let name = format!(
            "@multiproc-server-test-{}-{:?}",
            std::process::id(),
            thread::current().id()
        );
        Server::start(Listener::bind(name.as_str(), Some(b"k")).unwrap()).unwrap()
    }

    fn call(s: &Server, session: u128, req: Request<'_>) -> Result<Vec<u8>, Fault> {
        handle(&s.core, session, req, &|| false)
    }

    #[test]
    fn wire_request_roundtrip() {
        let req = Request::Call {
            id: 7,
            method: "get",
            thread: 3,
            args: &[1, 2, 3],
        };
        let bytes = codec::encode(&req).unwrap();
        match codec::decode_borrowed::<Request<'_>>(&bytes).unwrap() {
            Request::Call {
                id, method, args, ..
            } => assert_eq!((id, method, args), (7, "get", &[1u8, 2, 3][..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_faults() {
        let s = server();
        lock(&s.core.reg).sessions.entry(1).or_default().connections = 1;
        let call_on = |id| Request::Call {
            id,
            method: "len",
            thread: 1,
            args: &[],
        };
        assert!(matches!(
            call(&s, 1, call_on(999)),
            Err(Fault::UnknownObject(999))
        ));
        assert!(matches!(
            call(&s, 1, Request::Incref { id: 5 }),
            Err(Fault::UnknownObject(5))
        ));
        assert!(matches!(
            call(&s, 1, Request::Decref { id: 5 }),
            Err(Fault::Invalid(_))
        ));
        assert!(matches!(
            call(&s, 1, Request::Pin { id: 5 }),
            Err(Fault::UnknownObject(5))
        ));
        assert!(matches!(
            call(
                &s,
                1,
                Request::Create {
                    kind: "user:no::Such",
                    init: &[]
                }
            ),
            Err(Fault::UnknownKind(_))
        ));
        assert!(matches!(
            call(
                &s,
                1,
                Request::Create {
                    kind: "barrier",
                    init: &[0]
                }
            ),
            Err(Fault::Invalid(_))
        ));
        assert!(matches!(
            call(
                &s,
                1,
                Request::Create {
                    kind: "queue",
                    init: &[]
                }
            ),
            Err(Fault::BadArguments(_))
        ));
        assert!(matches!(
            call(&s, 1, Request::Lookup { name: "x" }),
            Err(Fault::NameNotFound(_))
        ));
        assert!(matches!(
            call(&s, 1, Request::Unpublish { name: "x" }),
            Err(Fault::NameNotFound(_))
        ));
        assert!(matches!(
            call(&s, 1, Request::Hello { session: 1 }),
            Err(Fault::Invalid(_))
        ));
        // A session that never said hello cannot hold references.
        let id: u64 = codec::decode(
            &call(
                &s,
                1,
                Request::Create {
                    kind: "dict",
                    init: &[],
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            call(&s, 2, Request::Incref { id }),
            Err(Fault::NoSession)
        ));
        assert!(matches!(
            call(
                &s,
                1,
                Request::Call {
                    id,
                    method: "pop",
                    thread: 1,
                    args: &[]
                }
            ),
            Err(Fault::UnknownMethod { .. })
        ));
        // The last reference frees the object.
        call(&s, 1, Request::Decref { id }).unwrap();
        assert!(matches!(
            call(&s, 1, call_on(id)),
            Err(Fault::UnknownObject(_))
        ));
        assert_eq!(s.stats().objects, 0);
    }
}
