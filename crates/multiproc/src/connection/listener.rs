//! `Listener` and `Client`: connections over TCP and Unix sockets, with CPython's
//! authentication handshake.
//!
//! A listener with an authkey runs its clients' handshakes on one background thread (started
//! by the first [`Listener::accept`]): it accepts clients, runs every pending handshake at
//! once with `poll` — each a small state machine that reads only what has arrived — and
//! queues the outcomes for `accept` in the order they complete. One thread multiplexing, not
//! a thread per handshake: a pending handshake costs a descriptor and a few hundred bytes
//! instead of a thread, a silent client costs its slot until its own time limit and nothing
//! else, and the work of a handshake (two HMACs, six short messages) is a few dozen
//! microseconds of CPU, so one thread keeps up with many clients. Handshakes also go on
//! while the program is busy between two `accept`s, so clients do not time out waiting.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::address::{Address, ToAddress};
use super::auth::{Exchange, Handshake};
use super::conn::{Connection, DEFAULT_MAX_MESSAGE};
use super::lock;
use crate::error::ConnectionError;
use crate::sys;

/// How long a handshake may take by default: a silent or mismatched peer fails after this
/// instead of hanging (CPython waits for ever).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default backlog: that of Rust's std listeners, not CPython's 1 (which drops bursts of
/// clients).
pub const DEFAULT_BACKLOG: i32 = 128;

/// How many handshakes a listener runs at once by default (see
/// [`ListenerBuilder::max_pending_handshakes`]).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 128;

/// When a listener runs as many handshakes as it allows, the oldest is closed to make room
/// for a new client once it has been pending this long. Until then new clients wait in the
/// backlog: a burst of real clients, which finish their handshakes within milliseconds, is
/// not thinned out, and a flood of silent connections slows new clients down (each round of
/// silent ones gives way after this long) instead of locking them out.
const EVICT_AFTER: Duration = Duration::from_secs(1);

/// After the OS refuses an accept (out of descriptors, memory), the handshake thread waits
/// this long before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings shared by listeners and clients.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) authkey: Option<Vec<u8>>,
    pub(super) handshake_timeout: Duration,
    pub(super) max_message: u64,
    max_pending: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            authkey: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

/// Accepts connections on an [`Address`], authenticating each client when there is an
/// authkey. Wire-compatible with CPython's `multiprocessing.connection.Client`.
///
/// With an authkey, the handshakes of all clients run at once on a background thread (see
/// [`accept`](Listener::accept)): a slow or silent client holds up nobody. A server serves
/// each accepted connection on a thread of its own:
///
/// ```
/// use multiproc::{Client, Listener};
/// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
/// let address = listener.address().clone();
/// std::thread::spawn(move || {
///     for conn in listener.incoming() {
///         let Ok(conn) = conn else { continue }; // a client that failed its handshake
///         std::thread::spawn(move || {
///             while let Ok(msg) = conn.recv_bytes() {
///                 if conn.send_bytes(&msg).is_err() {
///                     break;
///                 }
///             }
///         });
///     }
/// });
/// let conn = Client::connect(&address, Some(b"secret"))?;
/// conn.send_bytes(b"ping")?;
/// assert_eq!(conn.recv_bytes()?, b"ping");
/// # Ok::<(), multiproc::ConnectionError>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    /// The reactor's watch of [`AsFd::as_fd`] (see `accept_async`).
    #[cfg(feature = "tokio")]
    pub(super) async_watch: crate::aio::LazyWatch,
    /// The listening socket, non-blocking (an accept never waits once `poll` said ready,
    /// even when another thread took the client first).
    fd: Arc<OwnedFd>,
    address: Address,
    settings: Settings,
    /// The handshake thread, from the first `accept` of a listener with an authkey.
    acceptor: OnceLock<Acceptor>,
    /// Held while the handshake thread starts.
    starting: Mutex<()>,
}

/// Configures a [`Listener`]: `Listener::builder().authkey(k).backlog(512).bind(addr)`.
#[derive(Debug, Clone)]
pub struct ListenerBuilder {
    settings: Settings,
    backlog: i32,
}

impl ListenerBuilder {
    /// Clients must prove they know this key (HMAC challenge, both ways).
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.settings.authkey = Some(key.into());
        self
    }

    /// How many pending connections the OS queues (default [`DEFAULT_BACKLOG`]).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// How long a client has to complete the handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// The largest message accepted connections receive (default [`DEFAULT_MAX_MESSAGE`]).
    pub fn max_message_size(mut self, limit: u64) -> Self {
        self.settings.max_message = limit;
        self
    }

    /// How many handshakes run at once (default [`DEFAULT_MAX_PENDING_HANDSHAKES`], at
    /// least 1), which bounds the descriptors a flood of silent connections can hold.
    ///
    /// With that many pending, a new client waits in the OS backlog until a handshake ends
    /// — or, once the oldest pending one has gone on for a second, that one is closed (its
    /// client gets an error from `accept`) and the new client takes its place. The same
    /// number bounds the connections and errors that wait for `accept`: while that many
    /// wait, no new client is taken from the backlog.
    pub fn max_pending_handshakes(mut self, limit: usize) -> Self {
        self.settings.max_pending = limit.max(1);
        self
    }

    /// Binds and listens.
    pub fn bind(self, address: impl ToAddress) -> Result<Listener, ConnectionError> {
        let mut address = address.to_address()?;
        let fd = sys::listen(address.target(), self.backlog)?;
        sys::set_nonblocking(fd.as_fd(), true)?;
        if let Address::Tcp(_) = address
            && let Some(bound) = sys::local_tcp_address(fd.as_fd())?
        {
            address = Address::Tcp(bound); // port 0 becomes the real port
        }
        Ok(Listener::new(fd, address, self.settings))
    }
}

impl Listener {
    fn new(fd: OwnedFd, address: Address, settings: Settings) -> Listener {
        Listener {
            #[cfg(feature = "tokio")]
            async_watch: Default::default(),
            fd: Arc::new(fd),
            address,
            settings,
            acceptor: OnceLock::new(),
            starting: Mutex::new(()),
        }
    }

    /// A builder with the defaults: no authkey, backlog 128, 5 s handshake, 256 MiB
    /// messages, 128 handshakes at once.
    pub fn builder() -> ListenerBuilder {
        ListenerBuilder {
            settings: Settings::default(),
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// Binds to `address` with the defaults and `authkey` (`None`: no authentication).
    pub fn bind(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
    ) -> Result<Listener, ConnectionError> {
        let mut b = Listener::builder();
        if let Some(k) = authkey {
            b = b.authkey(k);
        }
        b.bind(address)
    }

    /// The address clients connect to (with the real port when bound to port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The next authenticated connection, waiting as long as it takes.
    ///
    /// With an authkey, handshakes run on the listener's handshake thread (started by the
    /// first call), many at once: `accept` hands back connections in the order their
    /// handshakes complete, not the order clients connected, so a silent client costs only
    /// its own time limit. A client that fails its handshake is an error for that client
    /// only — [`ConnectionError::AuthenticationFailed`] (wrong key),
    /// [`ConnectionError::HandshakeTimeout`], [`ConnectionError::Authentication`] (anything
    /// else) — and the next call goes on serving. Several threads may call `accept` on one
    /// listener; each connection goes to one of them.
    ///
    /// Without an authkey this is the OS's accept.
    pub fn accept(&self) -> Result<Connection, ConnectionError> {
        self.next(None)
    }

    /// [`accept`](Listener::accept) with a time limit: [`ConnectionError::Timeout`] when no
    /// connection (or failed client) comes within `timeout`. `Duration::ZERO` takes what is
    /// ready without waiting.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection, ConnectionError> {
        self.next(Some((Instant::now() + timeout, timeout)))
    }

    fn next(&self, deadline: Option<(Instant, Duration)>) -> Result<Connection, ConnectionError> {
        match self.acceptor()? {
            Some(acceptor) => acceptor.next(deadline),
            None => self.accept_raw_until(deadline),
        }
    }

    /// Accepted connections, one after another, for ever: each item is the result of one
    /// [`accept`](Listener::accept) (an error is one client's, or the OS's).
    pub fn incoming(&self) -> impl Iterator<Item = Result<Connection, ConnectionError>> + '_ {
        std::iter::repeat_with(|| self.accept())
    }

    /// The next client as it connects, without a handshake: for a server that runs
    /// handshakes on threads of its own with
    /// [`Connection::authenticate_server`]. Do not mix with [`accept`](Listener::accept)
    /// on a listener with an authkey: once `accept` has started the handshake thread, the
    /// two take clients from the same backlog, and the thread authenticates the ones it
    /// takes.
    pub fn accept_raw(&self) -> Result<Connection, ConnectionError> {
        self.accept_raw_until(None)
    }

    fn accept_raw_until(
        &self,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Connection, ConnectionError> {
        loop {
            match sys::accept(self.fd.as_fd()) {
                Ok(fd) => return Ok(Connection::new(fd, true, true, self.settings.max_message)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_readable(self.fd.as_fd(), deadline)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The handshake thread, started if need be; `None` without an authkey.
    fn acceptor(&self) -> Result<Option<&Acceptor>, ConnectionError> {
        let Some(key) = &self.settings.authkey else {
            return Ok(None);
        };
        if let Some(a) = self.acceptor.get() {
            return Ok(Some(a));
        }
        let _starting = lock(&self.starting);
        if self.acceptor.get().is_none() {
            let a = Acceptor::start(self.fd.clone(), key.clone(), &self.settings)?;
            let _ = self.acceptor.set(a);
        }
        Ok(self.acceptor.get())
    }

    /// A listener over an already listening socket (handed to a server process).
    pub(crate) fn from_listening(fd: OwnedFd, address: Address, authkey: Vec<u8>) -> Listener {
        // Non-blocking already when it comes from `bind` (the flag travels with the socket),
        // and `fcntl` does not fail on a descriptor that is open.
        let _ = sys::set_nonblocking(fd.as_fd(), true);
        let settings = Settings {
            authkey: Some(authkey),
            ..Settings::default()
        };
        Listener::new(fd, address, settings)
    }

    /// The listening socket, without removing a Unix socket path (another process takes
    /// the listener over).
    pub(crate) fn into_fd(mut self) -> std::io::Result<OwnedFd> {
        self.address = Address::Abstract(Vec::new()); // nothing to remove when dropped
        self.fd.try_clone()
    }
}

/// `for conn in &listener { ... }`: accepted connections, as [`Listener::incoming`].
impl<'a> IntoIterator for &'a Listener {
    type Item = Result<Connection, ConnectionError>;
    type IntoIter = Box<dyn Iterator<Item = Result<Connection, ConnectionError>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.incoming())
    }
}

/// The descriptor to [`wait`](super::wait) on before [`accept`](Listener::accept): readable
/// when `accept` has something to hand back. Without an authkey that is the listening
/// socket; with one, a descriptor of the handshake thread (started here if it has not yet),
/// readable while authenticated connections or failed clients' errors wait.
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.acceptor() {
            Ok(Some(a)) => a.shared.ready_rx.as_fd(),
            // No thread (no key, or it could not start: `accept` says why).
            _ => self.fd.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The handshake thread first (its drop stops it), then the path.
        drop(self.acceptor.take());
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Waits until `fd` is readable, or until `deadline` (when, and the time limit it comes
/// from): [`ConnectionError::Timeout`] once it has passed.
fn wait_readable(
    fd: BorrowedFd<'_>,
    deadline: Option<(Instant, Duration)>,
) -> Result<(), ConnectionError> {
    let left = match deadline {
        None => None,
        Some((at, timeout)) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectionError::Timeout(crate::TimedOut(timeout)));
            }
            Some(left)
        }
    };
    sys::poll_readable(&[fd], left)?;
    Ok(())
}

/// One result of the handshake thread for `accept`.
type Outcome = Result<Connection, ConnectionError>;

/// What a listener and its handshake thread share.
#[derive(Debug)]
struct Shared {
    /// Authenticated connections and failed clients' errors, in the order they came out.
    ready: Mutex<VecDeque<Outcome>>,
    /// Holds one byte while `ready` is not empty (changed under its lock), so that it can be
    /// waited on.
    ready_rx: OwnedFd,
    ready_tx: OwnedFd,
    /// Wakes the thread: to stop, or to take clients again once `ready` has room.
    wake_rx: OwnedFd,
    wake_tx: OwnedFd,
    stop: AtomicBool,
    /// How many outcomes may wait before the thread stops taking clients.
    max_ready: usize,
}

impl Shared {
    fn push(&self, outcome: Outcome) {
        let mut ready = lock(&self.ready);
        if ready.is_empty() {
            // A non-blocking socket pair with nothing in it: the byte fits.
            let _ = sys::try_send(self.ready_tx.as_fd(), &[1]);
        }
        ready.push_back(outcome);
    }

    fn has_room(&self) -> bool {
        lock(&self.ready).len() < self.max_ready
    }

    fn wake(&self) {
        // Full means a wake-up is pending already.
        let _ = sys::try_send(self.wake_tx.as_fd(), &[1]);
    }
}

/// Takes whatever bytes wait on a non-blocking socket.
fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    while matches!(sys::recv_plain(fd, &mut buf, true), Ok(n) if n > 0) {}
}

/// A listener's handshake thread (see the module's documentation); stopped and joined when
/// dropped, closing the connections it holds.
#[derive(Debug)]
struct Acceptor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The process that runs the thread (a forked child has a copy of this, not the thread).
    pid: u32,
}

impl Acceptor {
    fn start(
        listener: Arc<OwnedFd>,
        key: Vec<u8>,
        settings: &Settings,
    ) -> Result<Acceptor, ConnectionError> {
        let (ready_rx, ready_tx) = sys::socketpair_nonblocking()?;
        let (wake_rx, wake_tx) = sys::socketpair_nonblocking()?;
        let shared = Arc::new(Shared {
            ready: Mutex::new(VecDeque::new()),
            ready_rx,
            ready_tx,
            wake_rx,
            wake_tx,
            stop: AtomicBool::new(false),
            max_ready: settings.max_pending,
        });
        let handshakes = Handshakes {
            listener,
            key,
            timeout: settings.handshake_timeout,
            max_pending: settings.max_pending,
            max_message: settings.max_message,
            shared: shared.clone(),
            pending: VecDeque::new(),
            backoff_until: None,
        };
        let thread = std::thread::Builder::new()
            .name("multiproc-handshakes".into())
            .spawn(move || handshakes.run())?;
        Ok(Acceptor {
            shared,
            thread: Some(thread),
            pid: std::process::id(),
        })
    }

    /// The next outcome, waiting until `deadline` if there is one.
    fn next(&self, deadline: Option<(Instant, Duration)>) -> Outcome {
        let shared = &self.shared;
        loop {
            {
                let mut ready = lock(&shared.ready);
                if let Some(outcome) = ready.pop_front() {
                    if ready.is_empty() {
                        drain(shared.ready_rx.as_fd());
                    }
                    if ready.len() + 1 == shared.max_ready {
                        shared.wake(); // it was full: the thread may take clients again
                    }
                    return outcome;
                }
            }
            wait_readable(shared.ready_rx.as_fd(), deadline)?;
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            return; // a forked copy: the thread is the parent's
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client whose handshake is under way.
struct Pending {
    conn: Connection,
    exchange: Exchange,
    since: Instant,
}

/// The state of the handshake thread.
struct Handshakes {
    listener: Arc<OwnedFd>,
    key: Vec<u8>,
    timeout: Duration,
    max_pending: usize,
    max_message: u64,
    shared: Arc<Shared>,
    /// Oldest first (so also by deadline).
    pending: VecDeque<Pending>,
    /// No accepting until then (the OS refused the last one).
    backoff_until: Option<Instant>,
}

impl Handshakes {
    fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            self.expire(now);
            let (accepting, timer) = self.plan(now);
            // The wake-up socket, the listening socket when taking clients, the handshakes.
            let mut fds = vec![self.shared.wake_rx.as_fd()];
            if accepting {
                fds.push(self.listener.as_fd());
            }
            fds.extend(self.pending.iter().map(|p| p.conn.as_fd()));
            let timeout = timer.map(|t| t.saturating_duration_since(now));
            let Ok(ready) = sys::poll_readable(&fds, timeout) else {
                std::thread::sleep(ACCEPT_BACKOFF); // out of memory for the poll set
                continue;
            };
            if ready[0] {
                drain(self.shared.wake_rx.as_fd());
            }
            let first_handshake = fds.len() - self.pending.len();
            self.advance(&ready[first_handshake..]);
            if accepting && ready[1] {
                self.accept_clients();
            }
        }
    }

    /// Ends the handshakes whose time is up.
    fn expire(&mut self, now: Instant) {
        while let Some(p) = self.pending.front()
            && p.exchange.deadline() <= now
        {
            let p = self.pending.pop_front().expect("front exists");
            self.shared.push(Err(p.exchange.timed_out()));
        }
    }

    /// Whether to take new clients now, and when the thread must wake up on its own (the
    /// next time-out, the end of a back-off, the moment the oldest handshake may give way).
    fn plan(&self, now: Instant) -> (bool, Option<Instant>) {
        let mut timer = self.pending.front().map(|p| p.exchange.deadline());
        let mut earliest = |t: Instant| timer = Some(timer.map_or(t, |x| x.min(t)));
        if let Some(until) = self.backoff_until
            && until > now
        {
            earliest(until);
            return (false, timer);
        }
        if !self.shared.has_room() {
            return (false, timer); // `accept` wakes the thread when it makes room
        }
        if self.pending.len() < self.max_pending {
            return (true, timer);
        }
        let evictable_at = self.pending.front().map(|p| p.since + EVICT_AFTER);
        match evictable_at {
            Some(at) if at > now => {
                earliest(at);
                (false, timer)
            }
            _ => (true, timer),
        }
    }

    /// Moves on the handshakes whose connections are readable (`ready`, in `pending`'s
    /// order).
    fn advance(&mut self, ready: &[bool]) {
        let pending = std::mem::take(&mut self.pending);
        for (mut p, &readable) in pending.into_iter().zip(ready) {
            if !readable {
                self.pending.push_back(p);
                continue;
            }
            match p.exchange.advance(&p.conn) {
                Ok(false) => self.pending.push_back(p),
                Ok(true) => self.shared.push(Ok(p.conn)),
                Err(e) => self.shared.push(Err(e)),
            }
        }
    }

    /// Takes the clients waiting in the backlog, as many as there is room for, and sends
    /// each its challenge.
    fn accept_clients(&mut self) {
        for _ in 0..self.max_pending {
            if self.pending.len() >= self.max_pending {
                let oldest = self.pending.front().map(|p| p.since.elapsed());
                match oldest {
                    Some(age) if age >= EVICT_AFTER => {
                        self.pending.pop_front();
                        self.shared
                            .push(Err(ConnectionError::Authentication(format!(
                                "handshake closed unfinished after {age:?} to make room for a new \
                             client ({} handshakes were under way)",
                                self.max_pending
                            ))));
                    }
                    _ => return,
                }
            }
            let fd = match sys::accept(self.listener.as_fd()) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors or memory: say so, and let the backlog wait.
                    self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.shared.push(Err(e.into()));
                    return;
                }
            };
            let conn = Connection::new(fd, true, true, self.max_message);
            let started = Handshake::server(&self.key)
                .and_then(|machine| Exchange::start(&conn, machine, self.timeout));
            match started {
                Ok(exchange) => self.pending.push_back(Pending {
                    conn,
                    exchange,
                    since: Instant::now(),
                }),
                Err(e) => self.shared.push(Err(e)),
            }
        }
    }
}

/// Connects to a [`Listener`] (or a CPython `multiprocessing.connection.Listener`).
///
/// [`Client::connect`] with the defaults, or a configured `Client` and [`open`](Client::open):
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Client, ConnectionError, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
/// let address = listener.address().clone();
/// let server = std::thread::spawn(move || -> Result<(), ConnectionError> {
///     let conn = listener.accept()?; // authenticated
///     let n: u64 = conn.recv()?;
///     conn.send(&(n * 2))?;
///     // The next client has the wrong key: `accept` hands back its error.
///     assert!(matches!(listener.accept(), Err(ConnectionError::AuthenticationFailed(_))));
///     Ok(())
/// });
///
/// let conn = Client::default()
///     .authkey(b"secret".to_vec())
///     .handshake_timeout(Duration::from_secs(2))
///     .max_message_size(1 << 20)
///     .open(&address)?;
/// conn.send(&21u64)?;
/// assert_eq!(conn.recv::<u64>()?, 42);
///
/// // A wrong key fails on both ends, as CPython's handshake does.
/// assert!(matches!(
///     Client::connect(&address, Some(b"guess")),
///     Err(ConnectionError::AuthenticationFailed(_))
/// ));
/// server.join().unwrap()?;
/// # Ok::<(), ConnectionError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub(super) settings: Settings,
}

impl Client {
    /// Connects to `address` with the defaults and `authkey` (`None`: no authentication).
    pub fn connect(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
    ) -> Result<Connection, ConnectionError> {
        let mut c = Client::default();
        if let Some(k) = authkey {
            c = c.authkey(k);
        }
        c.open(address)
    }

    /// Prove knowledge of this key to the server, and make it prove it too.
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.settings.authkey = Some(key.into());
        self
    }

    /// How long the handshake may take (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// The largest message the connection receives (default [`DEFAULT_MAX_MESSAGE`]).
    pub fn max_message_size(mut self, limit: u64) -> Self {
        self.settings.max_message = limit;
        self
    }

    /// Connects and authenticates: a server that rejects the key is
    /// [`ConnectionError::AuthenticationFailed`], one that sends no challenge within the
    /// handshake time limit (a server without an authkey, a stuck one)
    /// [`ConnectionError::HandshakeTimeout`].
    pub fn open(&self, address: impl ToAddress) -> Result<Connection, ConnectionError> {
        let address = address.to_address()?;
        let fd = sys::connect(address.target())?;
        let conn = Connection::new(fd, true, true, self.settings.max_message);
        if let Some(key) = &self.settings.authkey {
            conn.authenticate_client(key, self.settings.handshake_timeout)?;
        }
        Ok(conn)
    }
}
