//! Managers: objects that live in a server process and are shared through proxies, locally
//! or over the network (Python's `multiprocessing.managers`).
//!
//! A word count shared by several processes: each counts its own text, then adds its counts
//! into one dict under a manager lock (each `get` and `set` is a call to the server, so
//! without the lock two processes could read the same count and both write it plus their
//! own, losing one).
//!
//! ```
//! use std::collections::HashMap;
//! use multiproc::manager::{DictProxy, LockProxy, Manager};
//!
//! #[multiproc::func]
//! fn count_words(text: String, counts: DictProxy<String, u64>, lock: LockProxy) {
//!     // Counted here first: one round trip per distinct word, not per word.
//!     let mut mine: HashMap<String, u64> = HashMap::new();
//!     for w in text.split_whitespace() {
//!         *mine.entry(w.to_string()).or_default() += 1;
//!     }
//!     let _held = lock.lock().expect("the manager's lock"); // released when dropped
//!     for (word, n) in mine {
//!         let before = counts.get(&word).expect("get").unwrap_or(0);
//!         counts.set(&word, &(before + n)).expect("set");
//!     }
//! }
//!
//! #[multiproc::main]
//! fn main() -> multiproc::Result<()> {
//!     use multiproc::Func;
//!     let mgr = Manager::start()?; // a server process, random authkey
//!     let counts = mgr.dict::<String, u64>()?;
//!     let lock = mgr.lock()?;
//!     let texts = ["the cat in the hat", "the end", "cat"];
//!     let workers = texts
//!         .iter()
//!         .map(|t| count_words.spawn((t.to_string(), counts.clone(), lock.clone())))
//!         .collect::<Result<Vec<_>, _>>()?;
//!     for w in workers {
//!         w.join()?;
//!     }
//!     assert_eq!(counts.get(&"the".into())?, Some(3));
//!     assert_eq!(counts.get(&"cat".into())?, Some(2));
//!     assert_eq!(counts.len()?, 5); // the, cat, in, hat, end
//!     Ok(())
//! }
//! ```
//!
//! A [`#[multiproc::managed]`](crate::managed) type does the same without a lock: the server
//! runs each of its methods to the end before the next, so an `add(counts)` method merges
//! atomically. Counting in the workers and sending one result each back, with a
//! [`Pool`](crate::Pool), is faster still when no other process needs the counts meanwhile.
//!
//! - Built-in kinds: [`dict`](Manager::dict), [`list`](Manager::list),
//!   [`array`](Manager::array), [`queue`](Manager::queue),
//!   [`joinable_queue`](Manager::joinable_queue), [`namespace`](Manager::namespace),
//!   [`value`](Manager::value), and the synchronization kinds ([`lock`](Manager::lock),
//!   [`rlock`](Manager::rlock), semaphores, [`event`](Manager::event),
//!   [`condition`](Manager::condition), [`barrier`](Manager::barrier)) which work across
//!   machines. User types: [`#[multiproc::managed]`](crate::managed) and
//!   [`create`](Manager::create).
//! - Remote: [`Manager::serve`] (or `multiproc manager serve`) listens on TCP;
//!   [`Manager::connect`] reaches it; [`publish`](Manager::publish) and
//!   [`lookup`](Manager::lookup) name objects for other machines.
//! - Security: every connection passes the authkey handshake; a request names an object and
//!   a method from the object's fixed set; nothing received is executed.
//! - Lifetimes: an object lives while any proxy to it exists in any process (or a name
//!   publishes it); a process that is killed releases its references and its locks when its
//!   connections close. A local manager ends when its owner drops the last handle or
//!   proxy, or dies — even by `SIGKILL`.
//! - Concurrency: each client connection is served by its own thread; each object
//!   serializes its own methods, so a slow call never stalls other objects.
//! - Async (feature `tokio`): `Proxy::call_async`, `…_async` twins of `#[managed]` proxy
//!   methods and of the built-in proxies' blocking calls, waiting in the runtime's reactor on
//!   the session's connections (no thread per call). A dropped call closes its connection, so
//!   no later call reads its reply; the server gives up a waiting call whose caller left, and
//!   what such a call had already taken (a lock, a semaphore unit, a queue item) is given back
//!   by a task left on the runtime. Locks taken by an awaited call made from a spawned task
//!   belong to that task, whichever worker thread it runs on: release them with the
//!   `release_async` of the same task.

pub mod cpython;
mod entry;
mod managed;
#[cfg(feature = "tokio")]
mod nonblocking;
mod objects;
mod proxy;
mod server;
mod session;
mod typed;
mod wire;

use std::sync::Arc;

use serde::Serialize;

pub use cpython::{PyDict, PyList, PyLock, PyManager, PyProxy, PyQueue, PyValue};
pub use managed::Managed;
#[doc(hidden)]
pub use managed::{
    __Fault, __Served, __args, __create, __ret, __unknown, MANAGED_TYPES, ManagedEntry,
    kind_of as __kind,
};
pub use proxy::{Proxy, ProxyType};
pub use server::{Server, ServerHandle};
pub use typed::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, JoinableQueueProxy, ListProxy,
    LockProxy, NamespaceProxy, ProxyGuard, QueueProxy, SemaphoreProxy, ValueProxy,
};
pub use wire::ManagerStats;

use crate::codec;
use crate::connection::{Address, Listener, ToAddress};
use crate::error::ManagerError;
use crate::process::StartMethod;
use session::Session;
use wire::{Call, New, Request};

/// A handle to a manager: one started by this process ([`Manager::start`]) or one reached
/// over the network ([`Manager::connect`]). Creates objects and returns their proxies.
///
/// Clones share one session. A started manager's server process ends when the last handle
/// and the last proxy of the owner are dropped, on [`shutdown`](Manager::shutdown), or when
/// the owner dies.
#[derive(Clone, Debug)]
pub struct Manager {
    backend: Backend,
}

/// The server a [`Manager`] talks to.
#[derive(Clone, Debug)]
enum Backend {
    /// A multiproc manager, in its own protocol.
    Native(Arc<Session>),
    /// A CPython manager server, in CPython's protocol.
    CPython(PyManager),
}

/// Why a [`Manager`] reached over CPython's protocol refuses `what`.
fn on_cpython(what: impl Into<String>, reason: &str) -> ManagerError {
    ManagerError::Unsupported {
        what: what.into(),
        reason: format!("the manager is a CPython server, {reason}"),
    }
}

/// Configures a local manager: `Manager::builder().start_method(StartMethod::Spawn).start()`.
#[derive(Debug, Clone, Default)]
pub struct ManagerBuilder {
    method: Option<StartMethod>,
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    server: Option<crate::process::Builder>,
}

impl ManagerBuilder {
    /// How the server process is started (default: the process default).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Where the server listens (default: a fresh abstract Unix socket, reachable only on
    /// this machine). A TCP address makes the started manager reachable from others.
    pub fn address(mut self, address: impl ToAddress) -> Result<Self, ManagerError> {
        self.address = Some(address.to_address()?);
        Ok(self)
    }

    /// The authkey (default: 32 random bytes).
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.authkey = Some(key.into());
        self
    }

    /// How the server process is set up: its limits, niceness, working directory,
    /// environment, user and group, and where its output goes, as a process
    /// [`Builder`](crate::Builder) says (its name and daemon flag are the manager's own).
    ///
    /// ```no_run
    /// use multiproc::{Manager, Output, Process};
    ///
    /// let manager = Manager::builder()
    ///     .server(Process::builder().memory_limit(1 << 30).nice(5).stderr(Output::Prefixed))
    ///     .start()?;
    /// # Ok::<(), multiproc::ManagerError>(())
    /// ```
    pub fn server(mut self, process: crate::process::Builder) -> Self {
        self.server = Some(process);
        self
    }

    /// Starts the server process and connects to it.
    pub fn start(self) -> Result<Manager, ManagerError> {
        let authkey = match self.authkey {
            Some(k) => k,
            None => random_key()?,
        };
        let address = match self.address {
            Some(a) => a,
            None => {
                let tag = u64::from_ne_bytes(random_key()?[..8].try_into().unwrap_or_default());
                Address::Abstract(
                    format!("multiproc-manager-{}-{tag:016x}", std::process::id()).into_bytes(),
                )
            }
        };
        let listener = Listener::builder()
            .authkey(authkey.clone())
            .bind(&address)?;
        let address = listener.address().clone();
        // The server process takes the socket over (and removes a Unix path when it ends).
        let fd = listener.into_fd().map_err(|e| {
            ManagerError::Start(format!("cannot hand over the listening socket: {e}"))
        })?;
        let mut b = self.server.unwrap_or_default().daemon(true).name("Manager");
        if let Some(m) = self.method {
            b = b.start_method(m);
        }
        // The owner's first two connections (the session anchor and one for calls) are
        // socketpairs handed to the server with the listener: no connect, no handshake.
        let (anchor, anchor_server) = crate::pipe(true)?;
        let (first, first_server) = crate::pipe(true)?;
        let session = session::new_id()?;
        let process = b
            .start(
                &entry::multiproc_manager_server,
                (
                    crate::codec::Fd::from(fd),
                    address.to_string(),
                    serde_bytes::ByteBuf::from(authkey.clone()),
                    vec![anchor_server, first_server],
                    session,
                ),
            )
            .map_err(|e| ManagerError::Start(e.to_string()))?;
        let session = Session::owned(address, authkey, session, process, anchor, first);
        Ok(Manager {
            backend: Backend::Native(session),
        })
    }
}

fn random_key() -> Result<Vec<u8>, ManagerError> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| ManagerError::Start(format!("no random bytes for the authkey: {e}")))?;
    Ok(key)
}

impl Manager {
    /// Starts a local manager: a daemon server process on an abstract Unix socket with a
    /// random authkey, which ends with its owner.
    pub fn start() -> Result<Manager, ManagerError> {
        Self::builder().start()
    }

    /// A builder for a local manager with other settings.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Serves objects on `address` in this process (background threads) for clients that
    /// know `authkey`, as `multiproc manager serve` does. The server runs until a client
    /// calls [`shutdown`](Manager::shutdown), [`ServerHandle::shutdown`] is called, or the
    /// [`Server`] is dropped.
    ///
    /// ```
    /// use multiproc::manager::{JoinableQueueProxy, Manager};
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// let server = Manager::serve("127.0.0.1:0", b"secret")?; // port 0: any free port
    /// let address = server.address().clone();
    ///
    /// // Clients: this process here; other processes and machines the same way.
    /// let mgr = Manager::connect(&address, b"secret")?;
    /// mgr.publish("jobs", &mgr.joinable_queue::<u64>()?)?;
    /// let client = std::thread::spawn(move || -> Result<(), multiproc::ManagerError> {
    ///     let other = Manager::connect(&address, b"secret")?;
    ///     let jobs: JoinableQueueProxy<u64> = other.lookup("jobs")?;
    ///     jobs.put(&7)?;
    ///     other.shutdown() // any authorized client may stop the server
    /// });
    ///
    /// server.wait(); // until a client shuts it down
    /// client.join().unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn serve(address: impl ToAddress, authkey: &[u8]) -> Result<Server, ManagerError> {
        if authkey.is_empty() {
            return Err(ManagerError::Invalid(
                "a served manager needs a non-empty authkey".into(),
            ));
        }
        let listener = Listener::builder().authkey(authkey).bind(address)?;
        Server::start(listener)
    }

    /// Connects to a manager serving on `address` (wrong key: a connection error): a
    /// multiproc manager ([`Manager::serve`], `multiproc manager serve`, a started one), or a
    /// stock CPython `multiprocessing` manager server such as `SyncManager`'s.
    ///
    /// Which one answered is told by the reply to the first request, at no extra cost: a
    /// CPython server answers multiproc's hello with a pickled traceback (read by the
    /// checked pickle decoder, so nothing it sends is run), and the manager then speaks
    /// CPython's protocol. On a CPython server, [`dict`](Manager::dict),
    /// [`list`](Manager::list), [`queue`](Manager::queue) and
    /// [`queue_bounded`](Manager::queue_bounded), [`lock`](Manager::lock) and
    /// [`rlock`](Manager::rlock) create Python objects there and return the usual typed
    /// proxies: keys, values and items go to and from Python values through
    /// [`convert`](cpython::convert) (`String` as `str`, integers as `int`, structs as
    /// `dict`, ...), so Python clients of the same server see them as Python data, and a
    /// value that does not fit the Rust type is [`ManagerError::PyConversion`]. What CPython
    /// cannot do is [`ManagerError::Unsupported`]: the other kinds, user types, published
    /// names, [`stats`](Manager::stats), [`shutdown`](Manager::shutdown), sending such a
    /// proxy to another process, and awaited calls.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use multiproc::manager::Manager;
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// // python3 -c "from multiprocessing.managers import SyncManager as S; \
    /// //             S(('127.0.0.1', 5000), b'secret').get_server().serve_forever()"
    /// let mgr = Manager::connect("127.0.0.1:5000", b"secret")?;
    /// let jobs = mgr.dict::<String, u64>()?; // a Python dict on the server
    /// jobs.set(&"build".into(), &3)?;
    /// assert_eq!(jobs.get(&"build".into())?, Some(3));
    /// let q = mgr.queue::<(String, f64)>()?; // tuples as Python tuples
    /// q.put(&("a".into(), 1.5))?;
    /// assert_eq!(q.get_timeout(Duration::from_secs(5))?, ("a".into(), 1.5));
    /// let lock = mgr.lock()?; // a threading.Lock there
    /// let _held = lock.lock()?; // released when dropped
    /// # Ok(()) }
    /// ```
    pub fn connect(address: impl ToAddress, authkey: &[u8]) -> Result<Manager, ManagerError> {
        let address = address.to_address()?;
        let backend = match Session::connect_any(&address, authkey)? {
            Some(session) => Backend::Native(session),
            None => Backend::CPython(PyManager::answered(address, authkey)),
        };
        Ok(Manager { backend })
    }

    /// The multiproc session, or the error for `what` on a CPython server.
    fn session(&self, what: &str) -> Result<&Arc<Session>, ManagerError> {
        match &self.backend {
            Backend::Native(s) => Ok(s),
            Backend::CPython(_) => Err(on_cpython(
                format!("`Manager::{what}`"),
                "whose protocol has no such request",
            )),
        }
    }

    /// The address of the server.
    pub fn address(&self) -> &Address {
        match &self.backend {
            Backend::Native(s) => &s.address,
            Backend::CPython(py) => py.address(),
        }
    }

    /// The authkey (what a process needs, with the address, to connect).
    pub fn authkey(&self) -> &[u8] {
        match &self.backend {
            Backend::Native(s) => &s.authkey,
            Backend::CPython(py) => py.authkey(),
        }
    }

    /// The server's process id (0 for a CPython server, whose protocol does not tell it).
    pub fn pid(&self) -> u32 {
        match &self.backend {
            Backend::Native(s) => s.server_pid,
            Backend::CPython(_) => 0,
        }
    }

    /// Whether the server is a CPython manager ([`Manager::connect`] tells).
    pub fn is_cpython(&self) -> bool {
        matches!(self.backend, Backend::CPython(_))
    }

    /// What the server holds now.
    pub fn stats(&self) -> Result<ManagerStats, ManagerError> {
        self.session("stats")?
            .request(&Request::Stats, None, |b| Ok(codec::decode(b)?))
    }

    /// Stops the server (any authorized client may): every proxy of every process then gets
    /// [`ManagerError::Closed`]. For a started manager, waits for its process to exit.
    /// A CPython server is not this client's to stop ([`ManagerError::Unsupported`]).
    pub fn shutdown(&self) -> Result<(), ManagerError> {
        self.session("shutdown")?.shutdown()
    }

    /// Creates an object of `kind` from its encoded `init`; its proxy.
    fn create_kind<P: ProxyType>(&self, kind: &str, init: &[u8]) -> Result<P, ManagerError> {
        let session = match &self.backend {
            Backend::Native(s) => s,
            Backend::CPython(_) => {
                return Err(on_cpython(
                    format!("a `{kind}` object"),
                    "which creates only dicts, lists, queues and locks for Rust programs",
                ));
            }
        };
        let id = session.request(&Request::Create { kind, init }, None, |b| {
            Ok(codec::decode::<u64>(b)?)
        })?;
        Ok(P::from_proxy(Proxy::adopt(
            session.clone(),
            id,
            kind.to_string(),
        )))
    }

    /// Creates a built-in object.
    fn create_builtin<P: ProxyType>(&self, new: New) -> Result<P, ManagerError> {
        if let Backend::CPython(py) = &self.backend {
            // SyncManager's type ids for the kinds a CPython server has.
            let (typeid, args) = match &new {
                New::Dict => ("dict", vec![]),
                New::List => ("list", vec![]),
                New::Queue { maxsize } => ("Queue", vec![PyValue::Int((*maxsize).into())]),
                New::Lock => ("Lock", vec![]),
                New::RLock => ("RLock", vec![]),
                _ => return self.create_kind(new.name(), &[]),
            };
            let proxy = py.create(typeid, args)?;
            return Ok(P::from_proxy(Proxy::cpython(proxy, new.name())));
        }
        self.create_kind(new.name(), &new.encode_args()?)
    }

    /// A new, empty dict.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, ManagerError> {
        self.create_builtin(New::Dict)
    }

    /// A new, empty list.
    pub fn list<T>(&self) -> Result<ListProxy<T>, ManagerError> {
        self.create_builtin(New::List)
    }

    /// A new fixed-length array holding `items`.
    pub fn array<T: Serialize>(&self, items: &[T]) -> Result<ArrayProxy<T>, ManagerError> {
        let items = items.iter().map(typed::encode).collect::<Result<_, _>>()?;
        self.create_builtin(New::Array { items })
    }

    /// A new unbounded queue.
    pub fn queue<T>(&self) -> Result<QueueProxy<T>, ManagerError> {
        self.create_builtin(New::Queue { maxsize: 0 })
    }

    /// A new queue holding at most `maxsize` items (`put` waits for room).
    pub fn queue_bounded<T>(&self, maxsize: usize) -> Result<QueueProxy<T>, ManagerError> {
        if maxsize == 0 {
            return Err(ManagerError::Invalid(
                "a bounded queue needs maxsize > 0".into(),
            ));
        }
        self.create_builtin(New::Queue {
            maxsize: maxsize as u64,
        })
    }

    /// A new unbounded joinable queue.
    pub fn joinable_queue<T>(&self) -> Result<JoinableQueueProxy<T>, ManagerError> {
        self.create_builtin(New::JoinableQueue { maxsize: 0 })
    }

    /// A new, empty namespace.
    pub fn namespace(&self) -> Result<NamespaceProxy, ManagerError> {
        self.create_builtin(New::Namespace)
    }

    /// A new value holding `initial`.
    pub fn value<T: Serialize>(&self, initial: &T) -> Result<ValueProxy<T>, ManagerError> {
        self.create_builtin(New::Value {
            value: typed::encode(initial)?,
        })
    }

    /// A new lock (any thread of any process may release it).
    pub fn lock(&self) -> Result<LockProxy, ManagerError> {
        self.create_builtin(New::Lock)
    }

    /// A new reentrant lock (its owner thread may acquire it again; only it releases).
    pub fn rlock(&self) -> Result<LockProxy, ManagerError> {
        self.create_builtin(New::RLock)
    }

    /// A new semaphore with `value` units.
    pub fn semaphore(&self, value: u64) -> Result<SemaphoreProxy, ManagerError> {
        self.create_builtin(New::Semaphore { value })
    }

    /// A new semaphore that refuses releases past its initial `value`.
    pub fn bounded_semaphore(&self, value: u64) -> Result<SemaphoreProxy, ManagerError> {
        self.create_builtin(New::BoundedSemaphore { value })
    }

    /// A new event, cleared.
    pub fn event(&self) -> Result<EventProxy, ManagerError> {
        self.create_builtin(New::Event)
    }

    /// A new condition with its own reentrant lock.
    pub fn condition(&self) -> Result<ConditionProxy, ManagerError> {
        self.create_builtin(New::Condition)
    }

    /// A new barrier for `parties` parties.
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy, ManagerError> {
        self.create_builtin(New::Barrier {
            parties: parties as u64,
        })
    }

    /// Moves `value` into the manager and returns its proxy; `T`'s methods become the
    /// proxy's ([`#[multiproc::managed]`](crate::managed)). The server's binary must contain
    /// `T` (a started manager runs this binary).
    pub fn create<T: Managed>(&self, value: T) -> Result<T::Proxy, ManagerError> {
        self.create_kind(&managed::kind_of::<T>(), &codec::encode(&value)?)
    }

    /// Publishes `proxy`'s object as `name`, for [`lookup`](Manager::lookup) from other
    /// processes; the name keeps the object alive until [`unpublish`](Manager::unpublish).
    /// [`ManagerError::NameTaken`] when the name is in use.
    pub fn publish<P: ProxyType>(&self, name: &str, proxy: &P) -> Result<(), ManagerError> {
        let id = proxy.proxy().id();
        self.session("publish")?
            .request(&Request::Publish { name, id }, None, |_| Ok(()))
    }

    /// A proxy of type `P` to the object a CPython client sent inside a value (a
    /// [`PyValue::Proxy`], such as a Python client's `q.put(d)` of its dict `d`). The object
    /// must live on this manager ([`ManagerError::UnknownObject`]) and be of `P`'s kind
    /// ([`ManagerError::WrongKind`]); its items are [`PyValue`]s.
    ///
    /// ```no_run
    /// # use multiproc::manager::{Manager, DictProxy, QueueProxy, PyValue};
    /// # fn main() -> Result<(), multiproc::ManagerError> {
    /// # let mgr = Manager::connect("127.0.0.1:5000", b"secret")?;
    /// # let inbox: QueueProxy<PyValue> = mgr.lookup("inbox")?;
    /// if let PyValue::Proxy(sent) = inbox.get()? {
    ///     let d: DictProxy<PyValue, PyValue> = mgr.adopt(&sent)?;
    ///     d.set(&"seen".into(), &true.into())?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn adopt<P: ProxyType>(&self, sent: &cpython::ProxyRef) -> Result<P, ManagerError> {
        let id: u64 = sent.token.id.parse().map_err(|_| {
            ManagerError::Invalid(format!("{:?} is not an object id", sent.token.id))
        })?;
        let session = self.session("adopt")?;
        let kind: String =
            session.request(&Request::Adopt { id }, None, |b| Ok(codec::decode(b)?))?;
        let proxy = Proxy::adopt(session.clone(), id, kind);
        let expected = P::kind();
        if !proxy::kind_fits(&expected, proxy.kind()) {
            return Err(ManagerError::WrongKind {
                name: format!("{} {}", sent.token.typeid, sent.token.id),
                expected,
                found: proxy.kind().to_string(),
            });
        }
        Ok(P::from_proxy(proxy))
    }

    /// The object published as `name`, through a proxy of type `P`
    /// ([`ManagerError::NameNotFound`], [`ManagerError::WrongKind`]).
    pub fn lookup<P: ProxyType>(&self, name: &str) -> Result<P, ManagerError> {
        let session = self.session("lookup")?;
        let (id, kind): (u64, String) =
            session.request(&Request::Lookup { name }, None, |b| Ok(codec::decode(b)?))?;
        let proxy = Proxy::adopt(session.clone(), id, kind);
        let expected = P::kind();
        if !proxy::kind_fits(&expected, proxy.kind()) {
            return Err(ManagerError::WrongKind {
                name: name.to_string(),
                expected,
                found: proxy.kind().to_string(),
            });
        }
        Ok(P::from_proxy(proxy))
    }

    /// The object published as `name`; if there is none, the one `create` makes, published
    /// under that name. Safe against a race with another process doing the same: both end
    /// up with the one that was published first.
    pub fn lookup_or_publish<P: ProxyType>(
        &self,
        name: &str,
        create: impl FnOnce(&Manager) -> Result<P, ManagerError>,
    ) -> Result<P, ManagerError> {
        match self.lookup(name) {
            Err(ManagerError::NameNotFound(_)) => {}
            other => return other,
        }
        let p = create(self)?;
        match self.publish(name, &p) {
            Ok(()) => Ok(p),
            Err(ManagerError::NameTaken(_)) => self.lookup(name),
            Err(e) => Err(e),
        }
    }

    /// Removes a published name (the object lives on while proxies to it exist).
    pub fn unpublish(&self, name: &str) -> Result<(), ManagerError> {
        self.session("unpublish")?
            .request(&Request::Unpublish { name }, None, |_| Ok(()))
    }
}

/// The `…_async` twins of a [`#[multiproc::managed]`](crate::managed) type's proxy methods,
/// which the attribute writes through this macro: each awaits
/// [`Proxy::call_async`] (feature `tokio`; without it there are none).
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __managed_async {
    (impl $proxy:ident { $(
        $(#[$m:meta])*
        $vis:vis fn $name:ident(&self, $($a:ident: $t:ty),*) -> $ret:ty { $method:literal ($($n:ident),*) }
    )* }) => {
        impl $proxy { $(
            $(#[$m])*
            $vis async fn $name(&self, $($a: $t),*) -> ::std::result::Result<$ret, $crate::ManagerError> {
                $crate::manager::ProxyType::proxy(self).call_async($method, &($($n,)*)).await
            }
        )* }
    };
}

/// Without the `tokio` feature, managed proxies have no async twins.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __managed_async {
    ($($t:tt)*) => {};
}
