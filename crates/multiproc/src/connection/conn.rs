//! `Connection`: one end of a pipe or socket, speaking CPython's framing.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::inbox::{Frame, Inbox, Wait};
use super::lock;
use crate::codec::{self, Fd};
use crate::error::ConnectionError;
use crate::sys;

/// The largest message a connection from a [`Listener`](super::Listener) or
/// [`Client`](super::Client) accepts unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE: u64 = 256 * 1024 * 1024;

/// A message's buffer is reserved up to this size at once (address space only: memory is
/// touched as bytes land in it), and grows by doubling beyond, so messages up to this size
/// are read straight into their final buffer.
pub(super) const GROW_STEP: usize = 1 << 20;

/// A receive of a long message that zeroes its buffer before reading into it (one that must
/// not block: with a time limit, async, spinning) zeroes this much beyond what has arrived at
/// first, then as much as has arrived (at most [`GROW_STEP`]): a peer that announces a huge
/// message and sends little costs little memory, whatever it announced.
pub(super) const FIRST_STEP: usize = 64 * 1024;

/// One end of a connection: a pipe from [`pipe`](super::pipe), or a socket from a
/// [`Listener`](super::Listener) or [`Client`](super::Client).
///
/// Messages are framed as CPython's `multiprocessing.connection` frames them (a 4-byte
/// big-endian signed length, or `-1` and an 8-byte length for messages over 2 GiB), so
/// [`send_bytes`](Connection::send_bytes)/[`recv_bytes`](Connection::recv_bytes) interoperate
/// with Python byte for byte. [`send`](Connection::send)/[`recv`](Connection::recv) carry typed
/// values through the crate's codec, tagged with their type so that a value is never read back
/// as another type; file descriptors inside them (an [`Fd`], another `Connection`) travel with
/// `SCM_RIGHTS` over Unix sockets.
///
/// A `Connection` is itself a handle that can be passed to a child process as an argument,
/// or sent through another connection.
///
/// A receive takes in every message that has arrived (one system call for a small message
/// or a burst): the next messages wait in the connection, where [`poll`](Connection::poll) and
/// [`wait`](super::wait) see them, but a bare `poll`/`epoll` on [`as_fd`](AsFd::as_fd) does not.
///
/// ```
/// let (a, b) = multiproc::pipe(true)?;
/// a.send(&("hello", 42u32))?;
/// let (word, n): (String, u32) = b.recv()?;
/// assert_eq!((word.as_str(), n), ("hello", 42));
/// b.send_bytes(b"raw bytes")?;
/// assert_eq!(a.recv_bytes()?, b"raw bytes");
/// # Ok::<(), multiproc::ConnectionError>(())
/// ```
///
/// An end passed to a child, as an argument of a registered function:
///
/// ```
/// use multiproc::{Connection, Func};
///
/// #[multiproc::func]
/// fn shout(conn: Connection) {
///     while let Ok(word) = conn.recv::<String>() { // Err once the parent's end is closed
///         conn.send(&word.to_uppercase()).unwrap();
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (ours, theirs) = multiproc::pipe(true)?;
/// let child = shout.spawn(theirs)?; // the child now holds that end
/// ours.send("hello")?;
/// assert_eq!(ours.recv::<String>()?, "HELLO");
/// ours.close(); // the child sees the end of the stream
/// child.join()?;
/// # Ok(()) }
/// ```
pub struct Connection {
    /// What async sends and receives keep between steps (see `nonblocking`).
    #[cfg(feature = "tokio")]
    pub(super) async_side: super::nonblocking::AsyncSide,
    /// What has been received and not yet handed out (see `inbox`). Before `fd`: dropped
    /// first, so it is no longer listed for `wait` when the descriptor's number is freed.
    inbox: Mutex<Inbox>,
    /// The socket. A `File` only for its `Read` implementation, which reads large payloads
    /// straight into a vector's spare capacity (no zero-filling first).
    fd: std::fs::File,
    readable: bool,
    writable: bool,
    max_message: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd.as_raw_fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

/// A frame header: the length as CPython writes it.
pub(super) fn header(len: usize) -> ([u8; 12], usize) {
    let mut h = [0u8; 12];
    if len > 0x7fff_ffff {
        h[..4].copy_from_slice(&(-1i32).to_be_bytes());
        h[4..].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 12)
    } else {
        h[..4].copy_from_slice(&(len as i32).to_be_bytes());
        (h, 4)
    }
}

impl Connection {
    pub(crate) fn new(fd: OwnedFd, readable: bool, writable: bool, max_message: u64) -> Self {
        Connection {
            #[cfg(feature = "tokio")]
            async_side: Default::default(),
            inbox: Mutex::default(),
            fd: std::fs::File::from(fd),
            readable,
            writable,
            max_message,
        }
    }

    /// Wraps a connected stream socket (Unix or TCP) as a duplex connection without a size
    /// limit on messages.
    pub fn from_socket(fd: OwnedFd) -> Self {
        Connection::new(fd, true, true, u64::MAX)
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The largest message this end accepts (`u64::MAX`: no limit).
    pub fn max_message_size(&self) -> u64 {
        self.max_message
    }

    /// Sets the largest message this end accepts; a larger one is refused with
    /// [`ConnectionError::MessageTooLarge`] before anything is allocated for it.
    pub fn set_max_message_size(&mut self, limit: u64) {
        self.max_message = limit;
        self.with_inbox(|_| ());
    }

    pub(super) fn check_writable(&self) -> Result<(), ConnectionError> {
        if self.writable {
            Ok(())
        } else {
            Err(ConnectionError::WrongDirection("writable"))
        }
    }

    pub(super) fn check_readable(&self) -> Result<(), ConnectionError> {
        if self.readable {
            Ok(())
        } else {
            Err(ConnectionError::WrongDirection("readable"))
        }
    }

    /// Sends `buf` as one message, as it is (CPython's `send_bytes`).
    pub fn send_bytes(&self, buf: &[u8]) -> Result<(), ConnectionError> {
        self.check_writable()?;
        self.send_frame(&[], buf, &[])
    }

    /// Sends several messages with as few system calls as the OS allows (one `sendmsg` per
    /// few hundred messages), in order.
    pub(crate) fn send_many(&self, messages: &[Vec<u8>]) -> Result<(), ConnectionError> {
        self.check_writable()?;
        self.finish_async_send()?;
        // Two buffers per message; stay well under IOV_MAX (1024).
        for group in messages.chunks(400) {
            let headers: Vec<([u8; 12], usize)> = group.iter().map(|m| header(m.len())).collect();
            let parts: Vec<&[u8]> = headers
                .iter()
                .zip(group)
                .flat_map(|((h, n), m)| [&h[..*n], m.as_slice()])
                .collect();
            sys::send_parts(self.fd.as_fd(), &parts, &[]).map_err(map_send)?;
        }
        Ok(())
    }

    /// Sends one message: `tag` (empty for a raw message), then `buf`, with `fds`.
    fn send_frame(
        &self,
        tag: &[u8],
        buf: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnectionError> {
        self.finish_async_send()?;
        let (h, n) = header(tag.len() + buf.len());
        let len = n + tag.len() + buf.len();
        if fds.is_empty() && len <= SMALL_SEND {
            // One buffer for a plain `send`: cheaper in the kernel than gathering three.
            let mut frame = [0u8; SMALL_SEND];
            frame[..n].copy_from_slice(&h[..n]);
            frame[n..n + tag.len()].copy_from_slice(tag);
            frame[n + tag.len()..len].copy_from_slice(buf);
            return sys::send_all(self.fd.as_fd(), &frame[..len]).map_err(map_send);
        }
        sys::send_parts(self.fd.as_fd(), &[&h[..n], tag, buf], fds).map_err(map_send)
    }

    /// Receives one message.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, ConnectionError> {
        self.check_readable()?;
        Ok(self.recv_frame(None, self.max_message)?.0)
    }

    /// Receives one message of at most `maxlength` bytes: a longer one is an error
    /// ([`ConnectionError::MessageTooLarge`], as CPython's "bad message length").
    pub fn recv_bytes_max(&self, maxlength: usize) -> Result<Vec<u8>, ConnectionError> {
        self.check_readable()?;
        Ok(self
            .recv_frame(None, (maxlength as u64).min(self.max_message))?
            .0)
    }

    /// Receives one message with a time limit.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, ConnectionError> {
        self.check_readable()?;
        Ok(self
            .recv_frame(Some(Instant::now() + timeout), self.max_message)?
            .0)
    }

    /// Receives one message into `buf` and returns its length. A message longer than `buf`
    /// is returned whole inside [`ConnectionError::BufferTooShort`].
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        let message = self.recv_bytes()?;
        if message.len() > buf.len() {
            return Err(ConnectionError::BufferTooShort(message));
        }
        buf[..message.len()].copy_from_slice(&message);
        Ok(message.len())
    }

    /// Sends a typed value through the crate's codec, to be received with
    /// [`recv`](Connection::recv). File descriptors inside it (an [`Fd`], another
    /// `Connection`, a queue, ...) travel along (Unix sockets only).
    ///
    /// The message starts with a 4-byte tag of the value's type, which `recv` checks, then
    /// the value's encoding. The tag is made of the type's name without module paths (a
    /// `Job` defined in another module or another program matches), with references and
    /// `Box`/`Rc`/`Arc`/`Cow` left out and borrowed and owned forms made one: `&str`, `str`
    /// and `String`; `&[T]` and `Vec<T>`; `Path` and `PathBuf`. So `send(&("job", &ids[..]))`
    /// is received as `(String, Vec<u32>)`.
    ///
    /// What the tag catches: a message received as another type (`-1i32` as a `u32`,
    /// `(u8, u8)` as a `u16`, a `Job` as a `Task`). What it does not: two types of the same
    /// name whose fields differ (an older `Job` at the other end) — there the codec still
    /// refuses bytes that do not decode, and bytes left over after the value, but a field
    /// whose type changed can decode; other types that serde encodes alike (`Vec<u8>` and
    /// `ByteBuf`, `Vec<T>` and `VecDeque<T>`) are refused as different. Tags of different
    /// names collide with a chance of one in four billion. Send the same type at both ends,
    /// built from the same definition.
    ///
    /// A typed message read with [`recv_bytes`](Connection::recv_bytes) is its tag, then the
    /// encoding; relayed as it is with [`send_bytes`](Connection::send_bytes), it stays a
    /// typed message.
    ///
    /// ```
    /// let (a, b) = multiproc::pipe(true)?;
    /// a.send(&("job", &[1u32, 2][..]))?;
    /// let (name, ids): (String, Vec<u32>) = b.recv()?;
    /// assert_eq!((name.as_str(), ids), ("job", vec![1, 2]));
    /// a.send(&-1i32)?;
    /// assert!(matches!(b.recv::<u32>(), Err(multiproc::ConnectionError::Codec(_))));
    /// # Ok::<(), multiproc::ConnectionError>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), ConnectionError> {
        self.check_writable()?;
        let (bytes, fds) = codec::encode_with_fds(value)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        if borrowed.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(ConnectionError::BadFrame(format!(
                "a message can carry at most {} file descriptors",
                sys::MAX_FDS_PER_MESSAGE
            )));
        }
        self.send_frame(&codec::tag::of::<T>(), &bytes, &borrowed)
    }

    /// Sends a value without a type tag, for the crate's own links whose reader decodes
    /// frames itself (a pool's workers). No descriptors.
    pub(crate) fn send_untagged<T: Serialize>(&self, value: &T) -> Result<(), ConnectionError> {
        self.check_writable()?;
        self.send_frame(&[], &codec::encode(value)?, &[])
    }

    /// Receives a typed value sent with [`send`](Connection::send) as this type (see there
    /// for what counts as the same type).
    ///
    /// A message sent as another type is a [`ConnectionError::Codec`] error that says so, as
    /// is a message whose encoding does not decode as a `T` or holds more than a `T` (bytes
    /// left over), or that was sent raw with [`send_bytes`](Connection::send_bytes) (it has
    /// no tag). The message is consumed either way, and descriptors that came with it are
    /// closed: the next `recv` reads the next message.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        self.recv_typed(None)
    }

    /// Receives a typed value as [`recv`](Connection::recv) does, with a time limit
    /// ([`ConnectionError::Timeout`]).
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, ConnectionError> {
        self.recv_typed(Some(Instant::now() + timeout))
    }

    /// Receives one typed message, before `deadline` if there is one.
    fn recv_typed<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
    ) -> Result<T, ConnectionError> {
        self.check_readable()?;
        let (bytes, fds) = self.recv_frame(deadline, self.max_message)?;
        Ok(codec::decode_with_fds(
            codec::tag::strip::<T>(&bytes)?,
            fds,
        )?)
    }

    /// Whether there is something to receive (or the peer closed), waiting at most
    /// `timeout` (`None`: until there is).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, ConnectionError> {
        self.check_readable()?;
        // A message received already (behind another) is ready, whatever the socket says. A
        // receive under way in another thread holds the inbox: then the socket decides.
        if let Ok(inbox) = self.inbox.try_lock()
            && inbox.ready(self.max_message)
        {
            return Ok(true);
        }
        Ok(sys::poll_readable(&[self.fd.as_fd()], timeout)? == [true])
    }

    /// Sends a file descriptor as CPython's `multiprocessing.reduction.send_handle` does
    /// (one byte with `SCM_RIGHTS`, outside the message framing).
    pub fn send_handle(&self, handle: BorrowedFd<'_>) -> Result<(), ConnectionError> {
        self.check_writable()?;
        self.finish_async_send()?;
        sys::send_parts(self.fd.as_fd(), &[&[1u8]], &[handle]).map_err(map_send)
    }

    /// Receives a file descriptor sent with [`send_handle`](Connection::send_handle) (or by
    /// CPython's `send_handle`).
    pub fn recv_handle(&self) -> Result<OwnedFd, ConnectionError> {
        self.check_readable()?;
        let (byte, mut fds) = self.with_inbox(|inbox| {
            loop {
                if let Some(got) = inbox.next_handle() {
                    return Ok::<_, ConnectionError>(got);
                }
                inbox.receive(&self.fd, Wait::Block)?;
            }
        })?;
        match (byte, fds.len()) {
            (1, 1) => Ok(fds.remove(0)),
            (_, got) => Err(ConnectionError::BadFrame(format!(
                "expected one file descriptor, received {got}"
            ))),
        }
    }

    /// Sends the rest of a message an async send left part-sent (see `send_async`), so that
    /// the next message does not land inside it.
    fn finish_async_send(&self) -> Result<(), ConnectionError> {
        #[cfg(feature = "tokio")]
        self.async_side.finish_send(self.fd.as_fd())?;
        Ok(())
    }

    /// Closes this end (dropping it does the same).
    pub fn close(self) {}

    /// Runs `f` on the inbox, then lists it for [`wait`](super::wait) if it now holds a
    /// whole message (or unlists it).
    fn with_inbox<R>(&self, f: impl FnOnce(&mut Inbox) -> R) -> R {
        let mut inbox = lock(&self.inbox);
        let r = f(&mut inbox);
        inbox.relist(self.fd.as_raw_fd(), self.max_message);
        r
    }

    /// Whether nothing has been received yet (and kept): the handshake reads the socket
    /// itself.
    pub(super) fn received_nothing(&self) -> bool {
        lock(&self.inbox).is_empty()
    }

    /// Receives one message for the crate's own request/reply and task links: polls for it
    /// up to `spin` without sleeping (as the library's waiting policy allows: a peer on
    /// another CPU that answers within that time is served without a sleep and a cross-CPU
    /// wake-up, which on virtual machines costs more than the whole exchange), then waits
    /// until `deadline`. Descriptors that came with it are closed.
    pub(crate) fn recv_spinning(
        &self,
        spin: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ConnectionError> {
        self.check_readable()?;
        Ok(self.receive(spin, deadline, self.max_message)?.0)
    }

    /// The next message if one has fully arrived, without waiting (descriptors that came
    /// with it are closed).
    pub(crate) fn try_recv_bytes(&self) -> Result<Option<Vec<u8>>, ConnectionError> {
        self.check_readable()?;
        Ok(self
            .try_frame(self.max_message)?
            .map(|(payload, _)| payload))
    }

    /// The next message (of at most `limit` bytes) if what has arrived completes one, without
    /// waiting.
    pub(super) fn try_frame(&self, limit: u64) -> Result<Option<Frame>, ConnectionError> {
        self.with_inbox(|inbox| {
            loop {
                if let Some(frame) = inbox.next(limit)? {
                    return Ok(Some(frame));
                }
                if !inbox.receive(&self.fd, Wait::Now)? {
                    return Ok(None);
                }
            }
        })
    }

    /// Receives one message (payload and descriptors) of at most `limit` bytes: from the
    /// inbox if it is there, else looking for it without sleeping up to `spin` (as the
    /// waiting policy allows), then waiting until `deadline`. Every receive takes in what
    /// has arrived (see `inbox`): a small message is one system call.
    fn receive(
        &self,
        spin: Duration,
        deadline: Option<Instant>,
        limit: u64,
    ) -> Result<Frame, ConnectionError> {
        self.with_inbox(|inbox| {
            if let Some(frame) = inbox.next(limit)? {
                return Ok(frame);
            }
            // A short spin (when it pays) before the receive that sleeps; when it does not,
            // the receive that sleeps is the first look (one system call for a message
            // already there or one that comes later).
            let mut spinner = crate::spin::Spinner::new(spin);
            if spinner.spinning() {
                loop {
                    if inbox.receive(&self.fd, Wait::Now)? {
                        if let Some(frame) = inbox.next(limit)? {
                            spinner.hit();
                            return Ok(frame);
                        }
                    } else if !spinner.keep_going() {
                        break;
                    }
                }
            }
            loop {
                match deadline {
                    None => {
                        inbox.receive(&self.fd, Wait::Block)?;
                    }
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if sys::poll_readable(&[self.fd.as_fd()], Some(left))? != [true] {
                            return Err(ConnectionError::Timeout(crate::TimedOut(left)));
                        }
                        inbox.receive(&self.fd, Wait::Now)?;
                    }
                }
                if let Some(frame) = inbox.next(limit)? {
                    return Ok(frame);
                }
            }
        })
    }

    /// Reads one frame: its payload and the descriptors that came with it.
    fn recv_frame(&self, deadline: Option<Instant>, limit: u64) -> Result<Frame, ConnectionError> {
        self.receive(RECV_SPIN, deadline, limit)
    }
}

/// The header at the start of `bytes`: (its length, the message's length), `None` while
/// part of it is still missing. Refuses negative lengths and lengths over `limit`.
pub(crate) fn frame_header(
    bytes: &[u8],
    limit: u64,
) -> Result<Option<(usize, usize)>, ConnectionError> {
    if bytes.len() < 4 {
        return Ok(None);
    }
    let (hlen, size) = match i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) {
        -1 => {
            let Some(long) = bytes.get(4..12) else {
                return Ok(None);
            };
            let mut h8 = [0u8; 8];
            h8.copy_from_slice(long);
            (12, u64::from_be_bytes(h8))
        }
        n if n < 0 => {
            return Err(ConnectionError::BadFrame(format!(
                "negative message length {n}"
            )));
        }
        n => (4, n as u64),
    };
    if size > limit {
        return Err(ConnectionError::MessageTooLarge { size, limit });
    }
    // Whatever the limit, a length this machine could never hold is refused before any
    // arithmetic on it.
    if size > MAX_FRAME {
        return Err(ConnectionError::MessageTooLarge {
            size,
            limit: MAX_FRAME,
        });
    }
    let size =
        usize::try_from(size).map_err(|_| ConnectionError::MessageTooLarge { size, limit })?;
    Ok(Some((hlen, size)))
}

/// The longest message any connection takes, whatever its limit: far beyond what fits in
/// memory, and far enough below `usize::MAX` that a header plus a length never overflows.
const MAX_FRAME: u64 = (isize::MAX as u64) / 2;

/// A message up to this size (header included) without descriptors is copied into one
/// buffer and sent with a plain `send`.
const SMALL_SEND: usize = 512;

/// How long a receive looks for a message before it sleeps, when spinning pays.
const RECV_SPIN: Duration = crate::spin::REPLY_SPIN;

pub(super) fn map_send(e: std::io::Error) -> ConnectionError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            ConnectionError::Closed
        }
        _ => ConnectionError::Io(e),
    }
}

/// The socket, for [`wait`](super::wait) beside other descriptors, or for a poll loop of one's
/// own. A receive takes in every message that has arrived, so a message may wait in the
/// connection while its socket has nothing to read: `wait` and [`Connection::poll`] know
/// (ask them, or `poll(Some(Duration::ZERO))` after a receive), a bare `poll`/`epoll` on the
/// descriptor does not.
impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The connection's socket, when the connection holds nothing it has received and not yet
/// handed out. One receive takes in every message that has arrived, so after a burst the next
/// messages may be in the connection rather than in the socket; then the conversion fails and
/// the error gives the connection back, messages and all. The rest of a message an async send
/// left part-sent goes out first, waiting for the peer to make room as a send does; if that
/// fails (the peer is gone), the stream is broken and the error says so.
///
/// ```
/// use std::os::fd::OwnedFd;
/// let (a, b) = multiproc::pipe(true)?;
/// a.send_bytes(b"one")?;
/// a.send_bytes(b"two")?;
/// assert_eq!(b.recv_bytes()?, b"one"); // "two" came in with "one": `b` holds it
/// let b = match OwnedFd::try_from(b) {
///     Ok(_) => unreachable!("`b` holds a message"),
///     Err(refused) => refused.into_connection(),
/// };
/// assert_eq!(b.recv_bytes()?, b"two");
/// let fd = OwnedFd::try_from(b)?;
/// # drop(fd);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl TryFrom<Connection> for OwnedFd {
    type Error = IntoFdError;

    fn try_from(c: Connection) -> Result<OwnedFd, IntoFdError> {
        if let Err(e) = c.finish_async_send() {
            return Err(IntoFdError {
                conn: c,
                unsent: Some(e),
            });
        }
        if c.received_nothing() {
            Ok(OwnedFd::from(c.fd))
        } else {
            Err(IntoFdError {
                conn: c,
                unsent: None,
            })
        }
    }
}

/// What a failure to send the rest of a part-sent message says first.
const UNSENT: &str = "the rest of a message an async send began could not be sent";

/// How long a connection about to travel waits for room for the rest of a message an async
/// send left part-sent.
#[cfg(feature = "tokio")]
const TRAVEL_FLUSH: Duration = Duration::from_secs(1);

/// A [`Connection`] that could not give up its socket without losing data
/// (`OwnedFd::try_from`): it holds bytes or descriptors it has received and not yet handed
/// out, or the rest of a message an async send began could not go out. Gives the connection
/// back.
pub struct IntoFdError {
    conn: Connection,
    /// Why the rest of a part-sent message did not go out, if that is what failed.
    unsent: Option<ConnectionError>,
}

impl IntoFdError {
    /// The connection, with everything it had received (after a failed send of a message's
    /// rest, its stream is broken: see [`IntoFdError::send_failure`]).
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    /// Why the rest of a message an async send left part-sent could not go out, when that is
    /// why the conversion failed.
    pub fn send_failure(&self) -> Option<&ConnectionError> {
        self.unsent.as_ref()
    }
}

impl std::fmt::Debug for IntoFdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntoFdError")
            .field("unsent", &self.unsent)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for IntoFdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.unsent {
            None => f.write_str(
                "the connection holds bytes or descriptors it has received and not yet handed \
                 out: receive them before taking its socket",
            ),
            Some(e) => write!(f, "{UNSENT}, so the connection's stream is broken: {e}"),
        }
    }
}

impl std::error::Error for IntoFdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.unsent.as_ref().map(|e| e as _)
    }
}

impl Serialize for Connection {
    /// A connection travels as its descriptor, and with the bytes it has received and not yet
    /// handed out (see `inbox`), so that the next messages are not lost on the way. The rest
    /// of a message an async send left part-sent goes out first. One with
    /// part of a long message, or with descriptors received and not yet handed out, or that
    /// another thread is receiving on, cannot travel (an error).
    ///
    /// As in CPython, the copy and this end then share one stream: receive on one of them
    /// only (usually this end is dropped once sent). Messages this end had taken in are in
    /// both, as the bytes after them are in whichever receives first.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        struct Descriptor<'a>(BorrowedFd<'a>);
        impl Serialize for Descriptor<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                codec::serialize_fd(self.0, serializer)
            }
        }
        // The copy's first send must not land inside a message this end left part-sent. Its
        // rest goes out now, waiting for room a little only: the peer may be read by this
        // very thread later on.
        #[cfg(feature = "tokio")]
        match self
            .async_side
            .finish_send_within(self.fd.as_fd(), TRAVEL_FLUSH)
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(S::Error::custom(
                    "a connection cannot be sent while the rest of a message an async send \
                     began waits for room: let the peer read it first",
                ));
            }
            Err(e) => return Err(S::Error::custom(format!("{UNSENT}: {e}"))),
        }
        // A receive, `poll` or `try_recv` elsewhere holds the inbox only briefly; one that
        // blocks in another thread holds it until its message comes.
        let inbox = (0..1000)
            .find_map(|_| match self.inbox.try_lock() {
                Ok(inbox) => Some(inbox),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::yield_now();
                    None
                }
            })
            .ok_or_else(|| {
                S::Error::custom("a connection cannot be sent while another thread receives on it")
            })?;
        let received = inbox.plain_bytes().ok_or_else(|| {
            S::Error::custom(
                "a connection cannot be sent with part of a long message, or descriptors, \
                 received and not yet handed out",
            )
        })?;
        let mut t = serializer.serialize_tuple(5)?;
        t.serialize_element(&Descriptor(self.fd.as_fd()))?;
        t.serialize_element(&self.readable)?;
        t.serialize_element(&self.writable)?;
        t.serialize_element(&self.max_message)?;
        t.serialize_element(serde_bytes::Bytes::new(received))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (fd, readable, writable, max_message, received) =
            <(Fd, bool, bool, u64, serde_bytes::ByteBuf)>::deserialize(deserializer)?;
        let conn = Connection::new(fd.into_owned(), readable, writable, max_message);
        if !received.is_empty() {
            conn.with_inbox(|inbox| *inbox = Inbox::with_bytes(received.into_vec()));
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn headers_follow_cpython() {
        assert_eq!(header(0), ([0u8; 12], 4));
        let (h, n) = header(0x0102_0304);
        assert_eq!(&h[..n], &[1, 2, 3, 4]);
        let (h, n) = header(0x8000_0000);
        assert_eq!(n, 12);
        assert_eq!(&h[..4], &[0xff; 4]);
        assert_eq!(&h[4..], &0x8000_0000u64.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_spinning_reads_messages_of_any_size_in_order() {
        let (a, b) = crate::pipe(true).unwrap();
        let a = std::sync::Arc::new(a);
        for size in [0usize, 1, 1019, 1020, 1021, 5000, 3 << 20] {
            let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let sender = std::thread::spawn({
                let (msg, a) = (msg.clone(), a.clone());
                move || a.send_bytes(&msg).unwrap()
            });
            assert_eq!(
                b.recv_spinning(Duration::from_micros(50), None).unwrap(),
                msg
            );
            sender.join().unwrap();
        }
        // Two at once: both, in order (the second waits in the inbox).
        a.send_bytes(b"one").unwrap();
        a.send_bytes(b"two").unwrap();
        assert_eq!(b.recv_spinning(Duration::ZERO, None).unwrap(), b"one");
        assert_eq!(b.try_recv_bytes().unwrap().unwrap(), b"two");
        assert_eq!(b.try_recv_bytes().unwrap(), None);
    }

    #[test]
    fn recv_spinning_times_out_and_sees_the_end() {
        let (a, b) = crate::pipe(true).unwrap();
        let deadline = Some(Instant::now() + Duration::from_millis(50));
        assert!(matches!(
            b.recv_spinning(Duration::ZERO, deadline),
            Err(ConnectionError::Timeout(_))
        ));
        drop(a);
        assert!(matches!(
            b.recv_spinning(Duration::ZERO, None),
            Err(ConnectionError::Closed)
        ));
    }
}
