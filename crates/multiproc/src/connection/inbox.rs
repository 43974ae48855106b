//! `Inbox`: what a connection has received and not yet handed out.
//!
//! A receive takes in as much as has arrived, up to [`READ_AHEAD`] bytes, so a small message
//! costs one system call (the header and the payload together) and a burst of small messages
//! costs one for all of them. On a stream the bytes of the next messages may come along: they
//! wait here for the next receive, and whatever asks whether a message is there
//! ([`Connection::poll`](super::Connection::poll), [`wait`](super::wait), the async receive)
//! looks here before it looks at the socket.
//!
//! A message longer than the buffer is received straight into its own vector (never more
//! than the message, so nothing of the next one), which grows with the bytes that arrive, not
//! with the length announced.
//!
//! Descriptors (`SCM_RIGHTS`) come with the receive that reads the first byte of the message
//! they were sent with, and the kernel ends that receive with the bytes of that send: so they
//! belong to the message holding the last byte the receive read. Each batch is kept with that
//! byte's offset in the stream and handed out with the message (or the
//! [`recv_handle`](super::Connection::recv_handle) byte) that holds it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::conn::{FIRST_STEP, GROW_STEP, frame_header};
use super::lock;
use crate::error::ConnectionError;
use crate::sys;

/// The most one receive takes in (the buffer's size, allocated at the first receive).
pub(crate) const READ_AHEAD: usize = 16 * 1024;

/// A received message: its payload and the descriptors that came with it.
pub(super) type Frame = (Vec<u8>, Vec<OwnedFd>);

/// How a receive waits for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Not at all: a socket with nothing to read gives `Ok(false)`.
    Now,
    /// In the receive, as long as it takes.
    Block,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    /// Received bytes not yet handed out live in `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A count of the bytes that went through the buffer, at `buf[start]`: the position that
    /// descriptors are kept by.
    offset: u64,
    /// Descriptors that came with received bytes, with the `offset` of the last byte of the
    /// receive that brought them, oldest first.
    fds: VecDeque<(u64, Batch)>,
    /// A message longer than the buffer, part received.
    long: Option<Long>,
    /// The descriptor under which this inbox is listed in [`READY`] (it holds a whole
    /// message), if it is.
    listed: Option<RawFd>,
}

/// The descriptors of one receive.
#[derive(Debug)]
enum Batch {
    Fds(Vec<OwnedFd>),
    /// Some could not be taken (see `sys::Received`): the message they came with is lost.
    Lost,
}

#[derive(Debug)]
struct Long {
    size: usize,
    /// `payload[..filled]` has arrived; the rest of its length is zeroed room.
    payload: Vec<u8>,
    filled: usize,
    fds: Vec<OwnedFd>,
    fds_lost: bool,
}

fn cut_short() -> ConnectionError {
    ConnectionError::BadFrame("the peer closed the connection in the middle of a message".into())
}

impl Inbox {
    /// An inbox holding `bytes` received before (a connection handed over with them).
    pub(super) fn with_bytes(mut bytes: Vec<u8>) -> Inbox {
        let mut inbox = Inbox::default();
        inbox.end = bytes.len();
        bytes.resize(bytes.len().max(READ_AHEAD), 0);
        inbox.buf = bytes;
        inbox
    }

    /// Whether nothing at all has been received and kept.
    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end && self.long.is_none() && self.fds.is_empty()
    }

    /// The received bytes not yet handed out, when that is all there is (no descriptors, no
    /// part of a long message): what a connection handed to another process takes along.
    pub(super) fn plain_bytes(&self) -> Option<&[u8]> {
        (self.long.is_none() && self.fds.is_empty()).then(|| &self.buf[self.start..self.end])
    }

    /// Whether a receive would return at once: a whole message (or a header that is an
    /// error) is here.
    pub(super) fn ready(&self, limit: u64) -> bool {
        if let Some(l) = &self.long {
            return l.filled == l.size;
        }
        match frame_header(&self.buf[self.start..self.end], limit) {
            Ok(Some((hlen, size))) => self.end - self.start >= hlen + size,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Takes the descriptors that came with bytes before `offset` `until`, and whether some
    /// of them were lost.
    fn take_fds(&mut self, until: u64) -> (Vec<OwnedFd>, bool) {
        let (mut out, mut lost) = (Vec::new(), false);
        while let Some((at, _)) = self.fds.front() {
            if *at >= until {
                break;
            }
            match self.fds.pop_front().map(|(_, b)| b) {
                Some(Batch::Fds(f)) => out.extend(f),
                Some(Batch::Lost) => lost = true,
                None => {}
            }
        }
        (out, lost)
    }

    /// Hands out `n` buffered bytes' worth of stream: moves the start and the offset.
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The next whole message, if it is here. A header that is an error (negative, over
    /// `limit`) is consumed with the error; so is a message whose descriptors were lost
    /// ([`ConnectionError::DescriptorsLost`]).
    pub(super) fn next(&mut self, limit: u64) -> Result<Option<Frame>, ConnectionError> {
        if let Some(l) = &self.long {
            if l.filled < l.size {
                return Ok(None);
            }
            let mut l = self.long.take().expect("checked");
            if l.fds_lost {
                return Err(ConnectionError::DescriptorsLost);
            }
            l.payload.truncate(l.size);
            return Ok(Some((l.payload, l.fds)));
        }
        let avail = self.end - self.start;
        let (hlen, size) = match frame_header(&self.buf[self.start..self.end], limit) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                let bad = avail.min(if self.buf[self.start..].starts_with(&[0xff; 4]) {
                    12
                } else {
                    4
                });
                let _ = self.take_fds(self.offset + bad as u64);
                self.consume(bad);
                return Err(e);
            }
        };
        // `frame_header` bounds `size` well below `usize::MAX`: no overflow here.
        let whole = hlen + size;
        if avail >= whole {
            let at = self.start + hlen;
            let payload = self.buf[at..at + size].to_vec();
            let (fds, lost) = self.take_fds(self.offset + whole as u64);
            self.consume(whole);
            if lost {
                return Err(ConnectionError::DescriptorsLost);
            }
            return Ok(Some((payload, fds)));
        }
        if whole > self.buf.len().max(READ_AHEAD) {
            // Too long for the buffer: it goes on in a vector of its own, which takes what
            // is here (all of it belongs to this message).
            let mut payload = Vec::with_capacity(size.min(GROW_STEP));
            payload.extend_from_slice(&self.buf[self.start + hlen..self.end]);
            let (fds, fds_lost) = self.take_fds(u64::MAX);
            self.consume(avail);
            self.long = Some(Long {
                size,
                filled: payload.len(),
                payload,
                fds,
                fds_lost,
            });
        }
        Ok(None)
    }

    /// One receive from `sock`: into the buffer, or into the long message being received
    /// (never past its end). `Ok(false)`: nothing has arrived (`Wait::Now` only; a blocking
    /// receive on a socket someone made non-blocking waits in `poll`). The end of the stream
    /// is `Closed` between messages, a `BadFrame` inside one.
    pub(super) fn receive(&mut self, sock: &File, wait: Wait) -> Result<bool, ConnectionError> {
        if let Some(l) = &mut self.long {
            return receive_long(l, sock, wait);
        }
        if self.buf.is_empty() {
            self.buf = vec![0; READ_AHEAD];
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Cannot happen (a frame that fits the buffer leaves room until it is whole, a
            // longer one leaves it), and a receive into no room would read as the end.
            return Err(ConnectionError::BadFrame("no room to receive into".into()));
        }
        let got = loop {
            match sys::recv_keeping(sock.as_fd(), &mut self.buf[self.end..], wait == Wait::Now) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if wait == Wait::Now {
                        return Ok(false);
                    }
                    sys::poll_readable(&[sock.as_fd()], None)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    break sys::Received {
                        n: 0,
                        fds: Vec::new(),
                        fds_lost: false,
                    };
                }
                Err(e) => return Err(e.into()),
                Ok(got) => break got,
            }
        };
        if got.n == 0 {
            return Err(if self.end > self.start {
                cut_short()
            } else {
                ConnectionError::Closed
            });
        }
        self.end += got.n;
        let last = self.offset + (self.end - self.start) as u64 - 1;
        if got.fds_lost {
            self.fds.push_back((last, Batch::Lost));
        } else if !got.fds.is_empty() {
            self.fds.push_back((last, Batch::Fds(got.fds)));
        }
        Ok(true)
    }

    /// The one-byte message of a `send_handle` and its descriptors, if the byte is here.
    pub(super) fn next_handle(&mut self) -> Option<(u8, Vec<OwnedFd>)> {
        if self.long.is_some() || self.start == self.end {
            return None;
        }
        let byte = self.buf[self.start];
        let (fds, _) = self.take_fds(self.offset + 1);
        self.consume(1);
        Some((byte, fds))
    }

    /// Lists this inbox in [`READY`] under `fd` while it holds a whole message, so that
    /// [`wait`](super::wait) sees it; called after every change.
    pub(super) fn relist(&mut self, fd: RawFd, limit: u64) {
        let ready = self.ready(limit);
        if ready == self.listed.is_some() {
            return;
        }
        if ready {
            let mut list = lock(&READY.list);
            list.push(fd);
            self.listed = Some(fd);
            READY.count.store(list.len(), Ordering::Release);
        } else {
            self.unlist();
        }
    }

    /// Takes this inbox off [`READY`], if it is listed.
    fn unlist(&mut self) {
        if let Some(fd) = self.listed.take() {
            let mut list = lock(&READY.list);
            if let Some(i) = list.iter().position(|f| *f == fd) {
                list.swap_remove(i);
            }
            READY.count.store(list.len(), Ordering::Release);
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.unlist();
    }
}

/// One receive into a long message: as much as has arrived of its rest (blocking: all of it).
fn receive_long(l: &mut Long, sock: &File, wait: Wait) -> Result<bool, ConnectionError> {
    if wait == Wait::Block {
        // Straight into the vector's spare capacity (no zeroing first); it grows with what
        // actually arrives.
        l.payload.truncate(l.filled);
        loop {
            let rest = (l.size - l.payload.len()) as u64;
            let got =
                std::io::Read::read_to_end(&mut std::io::Read::take(sock, rest), &mut l.payload);
            l.filled = l.payload.len();
            match got {
                Ok(_) if l.filled == l.size => return Ok(true),
                Ok(_) => return Err(cut_short()),
                // A socket someone made non-blocking: what came is kept; wait for the rest.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    sys::poll_readable(&[sock.as_fd()], None)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Zeroed a step ahead of what arrived, once (see `FIRST_STEP`): memory follows the bytes
    // that come, not the length announced.
    let have = l.filled;
    if l.payload.len() == have {
        let step = (l.size - have).min(have.clamp(FIRST_STEP, GROW_STEP));
        l.payload.resize(have + step, 0);
    }
    match sys::recv_keeping(sock.as_fd(), &mut l.payload[have..], true) {
        Ok(got) if got.n == 0 => Err(cut_short()),
        Ok(got) => {
            l.filled += got.n;
            l.fds.extend(got.fds);
            l.fds_lost |= got.fds_lost;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(cut_short()),
        Err(e) => Err(e.into()),
    }
}

/// The inboxes that hold a whole message, by their connection's descriptor: what
/// [`wait`](super::wait) adds to what the sockets say. `count` lets a wait skip the lock
/// while there are none (nearly always: only a burst of messages leaves one behind).
struct Ready {
    list: Mutex<Vec<RawFd>>,
    count: AtomicUsize,
}

static READY: Ready = Ready {
    list: Mutex::new(Vec::new()),
    count: AtomicUsize::new(0),
};

/// Which of `fds` belong to connections holding a whole message already received; `None`
/// when none does.
pub(super) fn ready_among(fds: &[std::os::fd::BorrowedFd<'_>]) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    if READY.count.load(Ordering::Acquire) == 0 {
        return None;
    }
    let list = lock(&READY.list);
    let ready: Vec<bool> = fds.iter().map(|f| list.contains(&f.as_raw_fd())).collect();
    ready.contains(&true).then_some(ready)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use crate::{Connection, ConnectionError, Fd};

    /// The inode of a descriptor: which file it is, whatever its number.
    fn inode(fd: impl AsFd) -> u64 {
        std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    #[test]
    fn a_burst_of_messages_of_any_size_comes_whole_and_in_order() {
        let (a, b) = crate::pipe(true).unwrap();
        let sizes = [
            0usize,
            1,
            3,
            4,
            100,
            70_000,
            5,
            super::READ_AHEAD - 4,
            200_000,
            2,
        ];
        std::thread::scope(|s| {
            s.spawn(|| {
                for (i, &n) in sizes.iter().enumerate() {
                    a.send_bytes(&vec![i as u8; n]).unwrap();
                }
            });
            for (i, &n) in sizes.iter().enumerate() {
                assert_eq!(b.recv_bytes().unwrap(), vec![i as u8; n]);
            }
        });
        assert_eq!(b.try_recv_bytes().unwrap(), None);
        drop(a);
        assert!(matches!(b.recv_bytes(), Err(ConnectionError::Closed)));
        // A negative length is a bad frame, and the end inside a message says so.
        let (a, b) = crate::pipe(true).unwrap();
        nix::unistd::write(a.as_fd(), &(-5i32).to_be_bytes()).unwrap();
        assert!(matches!(b.recv_bytes(), Err(ConnectionError::BadFrame(_))));
        nix::unistd::write(a.as_fd(), &[0, 0, 0, 9, 1, 2]).unwrap();
        drop(a);
        assert!(matches!(b.recv_bytes(), Err(ConnectionError::BadFrame(_))));
    }

    /// A pair where two messages were sent and the first received: the second came with it
    /// and waits in the receiver's inbox.
    fn second_message_in_the_inbox() -> (crate::Connection, crate::Connection) {
        let (a, b) = crate::pipe(true).unwrap();
        a.send_bytes(b"first").unwrap();
        a.send_bytes(b"second").unwrap();
        assert_eq!(b.recv_bytes().unwrap(), b"first");
        (a, b)
    }

    #[test]
    fn poll_and_wait_see_a_message_received_behind_another() {
        let (a, b) = second_message_in_the_inbox();
        // "second" came with "first": the socket is empty, the connection is not.
        assert!(!crate::sys::poll_readable(&[b.as_fd()], Some(Duration::ZERO)).unwrap()[0]);
        let (idle, _other) = crate::pipe(true).unwrap();
        let ready = crate::wait(&[idle.as_fd(), b.as_fd()], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ready, [1]);
        assert!(b.poll(Some(Duration::ZERO)).unwrap());
        assert_eq!(b.recv_bytes().unwrap(), b"second");
        assert!(!b.poll(Some(Duration::ZERO)).unwrap());
        assert!(
            crate::wait(&[b.as_fd()], Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
        // A connection dropped with a message inside is no longer listed.
        a.send_bytes(b"x").unwrap();
        a.send_bytes(b"y").unwrap();
        assert_eq!(b.recv_bytes().unwrap(), b"x");
        let raw = b.as_raw_fd();
        drop(b);
        let (c, _d) = crate::pipe(true).unwrap();
        if c.as_raw_fd() == raw {
            assert!(
                crate::wait(&[c.as_fd()], Some(Duration::ZERO))
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn descriptors_in_a_burst_come_with_their_own_message() {
        let (a, b) = crate::pipe(true).unwrap();
        let files: Vec<std::fs::File> = (0..3).map(|_| tempfile()).collect();
        // Plain, with a descriptor, a handle outside the framing, plain, with a descriptor.
        a.send_bytes(b"plain").unwrap();
        a.send(&Fd::from(files[0].as_fd().try_clone_to_owned().unwrap()))
            .unwrap();
        a.send_handle(files[1].as_fd()).unwrap();
        a.send_bytes(b"plain again").unwrap();
        a.send(&(
            7u8,
            Fd::from(files[2].as_fd().try_clone_to_owned().unwrap()),
        ))
        .unwrap();
        // Nothing has been received yet: all of it is in the socket.
        assert_eq!(b.recv_bytes().unwrap(), b"plain");
        assert_eq!(inode(b.recv::<Fd>().unwrap()), inode(&files[0]));
        assert_eq!(inode(b.recv_handle().unwrap()), inode(&files[1]));
        assert_eq!(b.recv_bytes().unwrap(), b"plain again");
        let (n, fd) = b.recv::<(u8, Fd)>().unwrap();
        assert_eq!((n, inode(fd)), (7, inode(&files[2])));
        assert_eq!(b.try_recv_bytes().unwrap(), None);
    }

    #[test]
    fn a_connection_sent_on_takes_the_messages_it_had_received() {
        let (a, b) = crate::pipe(true).unwrap();
        let (carrier_in, carrier_out) = crate::pipe(true).unwrap();
        for m in [&b"one"[..], b"two", b"three"] {
            a.send_bytes(m).unwrap();
        }
        assert_eq!(b.recv_bytes().unwrap(), b"one");
        carrier_in.send(&b).unwrap();
        drop(b);
        let moved: Connection = carrier_out.recv().unwrap();
        assert_eq!(moved.recv_bytes().unwrap(), b"two");
        assert_eq!(moved.recv_bytes().unwrap(), b"three");
        a.send_bytes(b"four").unwrap();
        assert_eq!(moved.recv_bytes().unwrap(), b"four");
    }

    #[test]
    fn a_connection_handed_over_with_part_of_a_message_receives_the_rest() {
        let (a, b) = crate::pipe(true).unwrap();
        let (carrier_in, carrier_out) = crate::pipe(true).unwrap();
        a.send_bytes(b"one").unwrap();
        // The whole frame is exactly the buffer's size: the first receive takes "one" and
        // all of this but its last bytes, or all of it.
        let big = vec![7u8; super::READ_AHEAD - 4];
        std::thread::scope(|s| {
            s.spawn(|| a.send_bytes(&big).unwrap());
            assert_eq!(b.recv_bytes().unwrap(), b"one");
            carrier_in.send(&b).unwrap();
        });
        drop(b);
        let moved: Connection = carrier_out.recv().unwrap();
        assert_eq!(moved.recv_bytes().unwrap(), big);
        a.send_bytes(b"next").unwrap();
        assert_eq!(moved.recv_bytes().unwrap(), b"next");
    }

    #[test]
    fn an_impossible_length_is_an_error_not_a_panic() {
        let (a, b) = crate::pipe(true).unwrap();
        // -1, then a 64-bit length of 2^64 - 1, on a connection without a size limit.
        nix::unistd::write(a.as_fd(), &[0xffu8; 12]).unwrap();
        assert!(matches!(
            b.recv_bytes(),
            Err(ConnectionError::MessageTooLarge { .. })
        ));
        a.send_bytes(b"after").unwrap();
        assert_eq!(b.recv_bytes().unwrap(), b"after");
    }

    #[test]
    fn a_blocking_receive_on_a_socket_made_non_blocking_sleeps() {
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        y.set_nonblocking(true).unwrap();
        let (a, b) = (
            Connection::from_socket(x.into()),
            Connection::from_socket(y.into()),
        );
        // CPU time of the receiving thread, in ns (schedstat's first field).
        let cpu = || -> u64 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let long = vec![3u8; 3 * super::READ_AHEAD];
        std::thread::scope(|s| {
            let receiver = s.spawn(|| {
                let before = cpu();
                assert_eq!(b.recv_bytes().unwrap(), b"late");
                // A long message whose rest comes late: read straight into its vector.
                assert_eq!(b.recv_bytes().unwrap(), long);
                cpu() - before
            });
            std::thread::sleep(Duration::from_millis(300));
            a.send_bytes(b"late").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let frame = [&(long.len() as i32).to_be_bytes()[..], &long].concat();
            nix::unistd::write(a.as_fd(), &frame[..100]).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            nix::unistd::write(a.as_fd(), &frame[100..]).unwrap();
            let spent = receiver.join().unwrap();
            assert!(spent < 100_000_000, "{spent} ns of CPU to wait 700 ms");
        });
    }

    #[test]
    fn a_handshake_after_messages_were_received_is_refused() {
        let (_a, b) = second_message_in_the_inbox();
        let err = b
            .authenticate_server(b"key", Duration::from_millis(100))
            .unwrap_err();
        assert!(
            matches!(err, ConnectionError::Authentication(ref m) if m.contains("before the handshake")),
            "{err}"
        );
    }

    fn tempfile() -> std::fs::File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "multiproc-inbox-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let f = std::fs::File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
