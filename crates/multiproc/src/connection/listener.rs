//! `Listener` and `Client`: connections over TCP and Unix sockets, with CPython's
//! authentication handshake.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::address::{Address, ToAddress};
use super::conn::{Connection, DEFAULT_MAX_MESSAGE};
use crate::error::ConnectionError;
use crate::sys;

/// How long a handshake may take by default: a silent or mismatched peer fails after this
/// instead of hanging (CPython waits for ever).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default backlog: that of Rust's std listeners, not CPython's 1 (which drops bursts of
/// clients).
pub const DEFAULT_BACKLOG: i32 = 128;

/// Settings shared by listeners and clients.
#[derive(Debug, Clone)]
struct Settings {
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
    max_message: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            authkey: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Accepts connections on an [`Address`], authenticating each client when there is an
/// authkey. Wire-compatible with CPython's `multiprocessing.connection.Client`.
///
/// ```
/// use multiproc::{Client, Listener};
/// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
/// let address = listener.address().clone();
/// let t = std::thread::spawn(move || -> Result<(), multiproc::ConnectionError> {
///     let conn = listener.accept()?;
///     let msg = conn.recv_bytes()?;
///     conn.send_bytes(&msg)
/// });
/// let conn = Client::connect(&address, Some(b"secret"))?;
/// conn.send_bytes(b"ping")?;
/// assert_eq!(conn.recv_bytes()?, b"ping");
/// t.join().unwrap()?;
/// # Ok::<(), multiproc::ConnectionError>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    address: Address,
    settings: Settings,
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

    /// Binds and listens.
    pub fn bind(self, address: impl ToAddress) -> Result<Listener, ConnectionError> {
        let mut address = address.to_address()?;
        let fd = sys::listen(address.target(), self.backlog)?;
        if let Address::Tcp(_) = address
            && let Some(bound) = sys::local_tcp_address(fd.as_fd())?
        {
            address = Address::Tcp(bound); // port 0 becomes the real port
        }
        Ok(Listener {
            fd,
            address,
            settings: self.settings,
        })
    }
}

impl Listener {
    /// A builder with the defaults: no authkey, backlog 128, 5 s handshake, 256 MiB messages.
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

    /// Waits for the next client and authenticates it. A failed handshake is an error for
    /// that client only: call `accept` again to go on serving.
    pub fn accept(&self) -> Result<Connection, ConnectionError> {
        let conn = self.accept_raw()?;
        authenticate(&self.settings, &conn)?;
        Ok(conn)
    }

    /// The next client as it connects, without a handshake: for a server that runs
    /// handshakes on threads of its own with [`Connection::authenticate_server`], so that a
    /// slow client cannot hold up the others.
    pub fn accept_raw(&self) -> Result<Connection, ConnectionError> {
        let fd = sys::accept(self.fd.as_fd())?;
        Ok(Connection::new(fd, true, true, self.settings.max_message))
    }

    /// The server side of the handshake, to run on connections from
    /// [`accept_raw`](Listener::accept_raw) (on any thread).
    pub(crate) fn handshake(&self) -> Handshake {
        Handshake(self.settings.clone())
    }

    /// A listener over an already listening socket (handed to a server process).
    pub(crate) fn from_listening(fd: OwnedFd, address: Address, authkey: Vec<u8>) -> Listener {
        Listener {
            fd,
            address,
            settings: Settings {
                authkey: Some(authkey),
                ..Settings::default()
            },
        }
    }

    /// The listening socket, without removing a Unix socket path (another process takes
    /// the listener over).
    pub(crate) fn into_fd(mut self) -> std::io::Result<OwnedFd> {
        self.address = Address::Abstract(Vec::new()); // nothing to remove when dropped
        self.fd.try_clone()
    }

    /// Accepted connections, one after another, for ever (each item is the result of one
    /// [`accept`](Listener::accept)).
    pub fn incoming(&self) -> impl Iterator<Item = Result<Connection, ConnectionError>> + '_ {
        std::iter::repeat_with(|| self.accept())
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

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The server side of a listener's handshake, detached from the listener.
#[derive(Debug, Clone)]
pub(crate) struct Handshake(Settings);

impl Handshake {
    /// Authenticates the client on `conn` when there is an authkey.
    pub(crate) fn authenticate(&self, conn: &Connection) -> Result<(), ConnectionError> {
        authenticate(&self.0, conn)
    }
}

/// The server side of the handshake on an accepted connection, when there is an authkey.
fn authenticate(settings: &Settings, conn: &Connection) -> Result<(), ConnectionError> {
    if let Some(key) = &settings.authkey {
        conn.authenticate_server(key, settings.handshake_timeout)?;
    }
    Ok(())
}

/// Connects to a [`Listener`] (or a CPython `multiprocessing.connection.Listener`).
#[derive(Debug, Clone, Default)]
pub struct Client {
    settings: Settings,
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
