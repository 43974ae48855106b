//! Async sending and receiving on a [`Connection`], a [`Listener`]'s accept and a
//! [`Client`]'s connect (feature `tokio`).
//!
//! Every step here is a non-blocking system call; waiting is the connection's socket becoming
//! readable or writable in the runtime's reactor (`crate::aio`). What a step has done lives in
//! the connection, not in the future: a future dropped part way (a `select!` that took
//! another branch) leaves a part-received frame for the next receive and a part-sent frame
//! for the next send to finish, so the stream never loses or splits a message.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::{Exchange, Handshake};
use super::conn::{header, map_send};
use super::inbox::Frame;
use super::lock;
use super::{Address, Client, Connection, Listener, ToAddress};
use crate::codec;
use crate::error::ConnectionError;
use crate::sys;

/// What a connection's async side keeps between steps.
#[derive(Debug, Default)]
pub(super) struct AsyncSide {
    watch: crate::aio::LazyWatch,
    /// The rest of a frame whose first bytes went out (its send was dropped, or is waiting
    /// for room), and how much of it went.
    outgoing: Mutex<Option<(Vec<u8>, usize)>>,
}

impl AsyncSide {
    /// Sync send: sends the rest of a frame an async send started, waiting as long as it
    /// takes, so that the next frame does not land inside it.
    pub(super) fn finish_send(&self, fd: BorrowedFd<'_>) -> Result<(), ConnectionError> {
        let mut out = lock(&self.outgoing);
        if let Some((buf, off)) = out.take() {
            sys::send_parts(fd, &[&buf[off..]], &[]).map_err(map_send)?;
        }
        Ok(())
    }

    /// Sends the rest of a frame an async send started, waiting for room at most `within`
    /// (a connection about to travel: the peer may be this very thread's next reader, so it
    /// must not wait for ever). Whether nothing is left.
    pub(super) fn finish_send_within(
        &self,
        fd: BorrowedFd<'_>,
        within: std::time::Duration,
    ) -> Result<bool, ConnectionError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Poll::Ready(r) = self.advance_send(fd, &mut None, &[]) {
                return r.map(|()| true);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || sys::poll(&[(fd, true)], Some(left))? != [true] {
                return Ok(false);
            }
        }
    }

    /// Sends what it can of an earlier frame's rest, then of `mine` (with `fds` on its first
    /// byte), without waiting: `Ready` once `mine` went out whole.
    fn advance_send(
        &self,
        fd: BorrowedFd<'_>,
        mine: &mut Option<Vec<u8>>,
        fds: &[BorrowedFd<'_>],
    ) -> Poll<Result<(), ConnectionError>> {
        let mut out = lock(&self.outgoing);
        loop {
            if let Some((buf, off)) = out.as_mut() {
                match sys::try_send_parts(fd, &[&buf[*off..]], &[]) {
                    Ok(n) => {
                        *off += n;
                        if *off == buf.len() {
                            *out = None;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => {
                        *out = None;
                        return Poll::Ready(Err(map_send(e)));
                    }
                }
            }
            let Some(frame) = mine.take() else {
                return Poll::Ready(Ok(()));
            };
            match sys::try_send_parts(fd, &[&frame], fds) {
                Ok(n) if n == frame.len() => return Poll::Ready(Ok(())),
                // Part of it went: from now on it is the connection's to finish.
                Ok(n) => *out = Some((frame, n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    *mine = Some(frame);
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(map_send(e))),
            }
        }
    }
}

impl Connection {
    fn watch(&self) -> Result<std::sync::Arc<crate::aio::Watch>, ConnectionError> {
        Ok(self.async_side.watch.get(self.as_fd())?)
    }

    /// Receives one frame, waiting in the reactor.
    async fn recv_frame_async(&self, limit: u64) -> Result<Frame, ConnectionError> {
        self.watch()?
            .readable(|| {
                self.try_frame(limit)
                    .transpose()
                    .map_or(Poll::Pending, Poll::Ready)
            })
            .await?
    }

    /// Sends one frame (header included), waiting in the reactor for room.
    async fn send_frame_async(
        &self,
        frame: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ConnectionError> {
        let fd = self.as_fd();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let mut mine = Some(frame);
        self.watch()?
            .writable(|| self.async_side.advance_send(fd, &mut mine, &borrowed))
            .await?
    }

    /// [`send`](Connection::send) without blocking a thread: waits in the runtime's reactor
    /// for room in the socket. The value is encoded when this is called, so it need not
    /// outlive the call.
    ///
    /// **Cancel safety**: dropped before its first byte went out, nothing is sent; dropped
    /// after, the rest of the message is kept in the connection and goes out first at the
    /// next send (async or not), so the peer always receives whole messages. Either way the
    /// connection stays usable.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiproc::ConnectionError> {
    /// let (a, b) = multiproc::pipe(true)?;
    /// a.send_async(&("job", 7u32)).await?;
    /// let (name, n): (String, u32) = b.recv_async().await?;
    /// assert_eq!((name.as_str(), n), ("job", 7));
    /// # Ok(()) }
    /// ```
    pub fn send_async<'a, T: Serialize + ?Sized>(
        &'a self,
        value: &T,
    ) -> impl Future<Output = Result<(), ConnectionError>> + Send + use<'a, T> {
        let encoded = self.check_writable().and_then(|()| {
            let (bytes, fds) = codec::encode_with_fds(value)?;
            if fds.len() > sys::MAX_FDS_PER_MESSAGE {
                return Err(ConnectionError::BadFrame(format!(
                    "a message can carry at most {} file descriptors",
                    sys::MAX_FDS_PER_MESSAGE
                )));
            }
            Ok((framed(&codec::tag::of::<T>(), &bytes), fds))
        });
        async move {
            let (frame, fds) = encoded?;
            self.send_frame_async(frame, fds).await
        }
    }

    /// [`send_bytes`](Connection::send_bytes) without blocking a thread. Cancel safety as
    /// [`send_async`](Connection::send_async).
    pub fn send_bytes_async<'a>(
        &'a self,
        buf: &[u8],
    ) -> impl Future<Output = Result<(), ConnectionError>> + Send + use<'a> {
        let frame = self.check_writable().map(|()| framed(&[], buf));
        async move { self.send_frame_async(frame?, Vec::new()).await }
    }

    /// [`recv`](Connection::recv) without blocking a thread: waits in the runtime's reactor
    /// for the message.
    ///
    /// **Cancel safety**: dropped while waiting or part way through a message, nothing is
    /// lost: what arrived of the message is kept in the connection and the next receive
    /// (async or not) goes on from there, returning that message whole.
    pub async fn recv_async<T: DeserializeOwned>(&self) -> Result<T, ConnectionError> {
        self.check_readable()?;
        let (bytes, fds) = self.recv_frame_async(self.max_message_size()).await?;
        Ok(codec::decode_with_fds(
            codec::tag::strip::<T>(&bytes)?,
            fds,
        )?)
    }

    /// [`recv_bytes`](Connection::recv_bytes) without blocking a thread. Cancel safety as
    /// [`recv_async`](Connection::recv_async).
    pub async fn recv_bytes_async(&self) -> Result<Vec<u8>, ConnectionError> {
        self.check_readable()?;
        Ok(self.recv_frame_async(self.max_message_size()).await?.0)
    }

    /// Runs one side of the authentication handshake, waiting in the reactor.
    async fn handshake_async(
        &self,
        machine: Handshake,
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        let mut x = Exchange::start(self, machine, timeout)?;
        let deadline = x.deadline();
        let watch = self.watch()?;
        let run = watch.readable(|| match x.advance(self) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        });
        match crate::aio::until(deadline, run).await {
            Some(r) => r?,
            None => Err(x.timed_out()),
        }
    }
}

/// A frame: CPython's header, then `tag` and `body`.
fn framed(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let (h, n) = header(tag.len() + body.len());
    let mut frame = Vec::with_capacity(n + tag.len() + body.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(tag);
    frame.extend_from_slice(body);
    frame
}

impl Listener {
    /// [`accept`](Listener::accept) without blocking a thread: waits in the runtime's reactor
    /// until a client has connected (and, with an authkey, finished its handshake on the
    /// listener's handshake thread, which runs the handshakes of all clients at once).
    ///
    /// **Cancel safety**: dropped while waiting, nothing is lost: a connection is taken from
    /// the listener only in the step that returns it.
    pub async fn accept_async(&self) -> Result<Connection, ConnectionError> {
        let fd = self.as_fd();
        let watch = self.async_watch.get(fd)?;
        watch
            .readable(|| match self.accept_timeout(Duration::ZERO) {
                Err(ConnectionError::Timeout(_)) => Poll::Pending,
                other => Poll::Ready(other),
            })
            .await?
    }
}

impl Client {
    /// [`open`](Client::open) without blocking a thread on the handshake: connects, then
    /// runs the client's side of the handshake in the runtime's reactor, within the
    /// handshake time limit. (The `connect` system call itself returns at once for Unix
    /// sockets and local TCP; to a remote host it waits for the TCP handshake.)
    ///
    /// **Cancel safety**: dropped part way, the connection is closed; nothing else is left.
    pub async fn open_async(&self, address: impl ToAddress) -> Result<Connection, ConnectionError> {
        let address: Address = address.to_address()?;
        let fd = sys::connect(address.target())?;
        let conn = Connection::new(fd, true, true, self.settings.max_message);
        if let Some(key) = &self.settings.authkey {
            conn.handshake_async(Handshake::client(key)?, self.settings.handshake_timeout)
                .await?;
        }
        Ok(conn)
    }

    /// [`Client::connect`] without blocking a thread on the handshake (see
    /// [`open_async`](Client::open_async)).
    pub async fn connect_async(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
    ) -> Result<Connection, ConnectionError> {
        let mut c = Client::default();
        if let Some(k) = authkey {
            c = c.authkey(k);
        }
        c.open_async(address).await
    }
}
