//! The private protocol between a parent, its children and the forkserver, on a Unix stream
//! socket: frames of a 16-byte header (`magic`, `kind`, descriptor count, payload length)
//! followed by the payload; descriptors ride with the header (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::codec::SMALL_RESULT;
use crate::sys;

/// Set in the environment of a re-run binary: `child`, `forkserver` or `tracker`. The
/// bootstrap socket is descriptor [`sys::CHILD_BOOTSTRAP_FD`].
pub(crate) const ENV: &str = "MULTIPROC_BOOTSTRAP";

const MAGIC: u8 = 0xB7;
const HEADER: usize = 16;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Parent → child: [`Start`].
    Start = 1,
    /// Child → parent: [`Outcome`].
    Outcome = 2,
    /// Forkserver → parent: the child's [`sys::ExitStatus`].
    Status = 3,
    /// Parent → forkserver: fork a child that bootstraps from the attached socket.
    ForkRequest = 4,
    /// Forkserver → parent: the new child's pid, or why it failed.
    ForkReply = 5,
    /// Child → parent: an [`Outcome`] too large for the socket buffer, in the attached memfd,
    /// so that the child never blocks on its report and the parent need not read while it
    /// waits.
    OutcomeInFd = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Start,
            2 => Kind::Outcome,
            3 => Kind::Status,
            4 => Kind::ForkRequest,
            5 => Kind::ForkReply,
            6 => Kind::OutcomeInFd,
            _ => return None,
        })
    }
}

/// What a child needs to run: the function and its arguments, and who it is.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    pub(crate) function: String,
    pub(crate) name: String,
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) parent_pid: u32,
    pub(crate) parent_name: String,
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
    /// The link to the tree's shared memory tracker comes after the arguments' descriptors
    /// (and after the piped streams' ends).
    pub(crate) tracker: bool,
    /// Limits and surroundings to set up before the function runs; `None`: nothing to do.
    /// The ends of its piped streams (standard output, then error) come after the
    /// arguments' descriptors.
    pub(crate) setup: Option<Box<super::setup::Setup>>,
}

/// How the child's function ended, as the child reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded return value.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The panic message.
    Panicked(String),
    /// The arguments (`encode: false`) or the result (`encode: true`) did not go through
    /// the codec.
    Codec { encode: bool, message: String },
    /// The child could not run the function at all.
    Failed(String),
    /// An allocation failed under the child's memory limit (sent by its abort handler).
    MemoryLimit,
}

#[inline]
fn header(kind: Kind, nfds: usize, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = MAGIC;
    h[1] = kind as u8;
    h[2] = nfds as u8;
    h[8..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes one frame (blocking).
pub(crate) fn write_frame(
    sock: BorrowedFd<'_>,
    kind: Kind,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > sys::MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message can carry at most {} file descriptors",
                sys::MAX_FDS_PER_MESSAGE
            ),
        ));
    }
    let h = header(kind, fds.len(), payload.len());
    // Small frames go in one call; the descriptors ride with the first byte.
    let mut first = Vec::with_capacity(HEADER + payload.len().min(64 * 1024));
    first.extend_from_slice(&h);
    first.extend_from_slice(&payload[..payload.len().min(64 * 1024)]);
    let n = sys::send_with_fds(sock, &first, fds)?;
    let mut sent = n;
    if sent < first.len() {
        sys::send_all(sock, &first[sent..])?;
        sent = first.len();
    }
    sys::send_all(sock, &payload[sent - HEADER..])
}

/// A child's encoded result, as it reports it: in its small buffer, or anywhere.
pub(crate) enum Returned<'a> {
    /// The first `len` bytes of a small buffer.
    Small(&'a [u8; SMALL_RESULT], usize),
    /// Any bytes.
    Bytes(&'a [u8]),
}

/// `Outcome::Returned` by reference: encodes the same way (same variant, same field).
#[derive(Serialize)]
enum ReturnedRef<'a> {
    Returned(#[serde(with = "serde_bytes")] &'a [u8]),
}

/// Reports a returned value to the parent (see [`write_outcome`]).
///
/// A small one, the common report, is framed on the stack and sent with one inline system
/// call: in a forked child each page of code or heap touched first is a page fault on the
/// path the parent waits for, and one more mapping to tear down at its exit.
#[inline(always)]
pub(crate) fn write_returned(sock: BorrowedFd<'_>, returned: &Returned<'_>) -> io::Result<()> {
    match *returned {
        Returned::Small(buf, len) if len < 128 => {
            let mut frame = [0u8; HEADER + 2 + SMALL_RESULT];
            frame[..HEADER].copy_from_slice(&header(Kind::Outcome, 0, 2 + len));
            // The codec's encoding of `Outcome::Returned`: variant 0, the length as a
            // varint (one byte below 128), the bytes.
            frame[HEADER] = 0;
            frame[HEADER + 1] = len as u8;
            // All of the buffer, whatever `len`: a copy of fixed size needs no call.
            frame[HEADER + 2..].copy_from_slice(buf);
            sys::send_all(sock, &frame[..HEADER + 2 + len])
        }
        Returned::Small(buf, len) => write_outcome(sock, &ReturnedRef::Returned(&buf[..len])),
        Returned::Bytes(bytes) => write_outcome(sock, &ReturnedRef::Returned(bytes)),
    }
}

/// Reports `outcome` (an [`Outcome`], or [`ReturnedRef`]) to the parent: inline when small,
/// else through a memfd. Never blocks for long: a small frame always fits the socket buffer.
#[cold]
pub(crate) fn write_outcome(sock: BorrowedFd<'_>, outcome: &impl Serialize) -> io::Result<()> {
    let payload = crate::codec::encode(outcome).map_err(|e| invalid(e.to_string()))?;
    if payload.len() <= INLINE_OUTCOME {
        return write_frame(sock, Kind::Outcome, &payload, &[]);
    }
    let fd = sys::memfd_with("multiproc-outcome", &payload)?;
    write_frame(
        sock,
        Kind::OutcomeInFd,
        &[],
        &[std::os::fd::AsFd::as_fd(&fd)],
    )
}

/// The largest outcome sent inline: well under any socket buffer (Linux: about 200 KiB).
pub(crate) const INLINE_OUTCOME: usize = 32 * 1024;

/// The bytes of a frame without descriptors, for writers that send them on their own.
pub(crate) fn frame_bytes(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&header(kind, 0, payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// Writes a frame whose payload is `value` encoded.
pub(crate) fn write_value<T: Serialize>(
    sock: BorrowedFd<'_>,
    kind: Kind,
    value: &T,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let payload = crate::codec::encode(value).map_err(|e| invalid(e.to_string()))?;
    write_frame(sock, kind, &payload, fds)
}

/// Reads one frame (blocking): kind, payload and descriptors. `UnexpectedEof` at end of stream.
pub(crate) fn read_frame(
    sock: BorrowedFd<'_>,
    max_len: u64,
) -> io::Result<(Kind, Vec<u8>, Vec<OwnedFd>)> {
    let mut h = [0u8; HEADER];
    // The socket may be non-blocking (the file description can be shared with a process
    // that set O_NONBLOCK): wait for readiness then.
    let (n, fds) = loop {
        match sys::recv_with_fds(sock, &mut h) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sys::poll_readable(&[sock], None)?;
            }
            other => break other?,
        }
    };
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    sys::recv_exact(sock, &mut h[n..])?;
    let (kind, len) = parse_header(&h, max_len)?;
    let mut payload = vec![0u8; len];
    sys::recv_exact(sock, &mut payload)?;
    Ok((kind, payload, fds))
}

fn parse_header(h: &[u8], max_len: u64) -> io::Result<(Kind, usize)> {
    if h[0] != MAGIC {
        return Err(invalid("not a multiproc frame (bad magic byte)"));
    }
    let kind =
        Kind::from_u8(h[1]).ok_or_else(|| invalid(format!("unknown frame kind {}", h[1])))?;
    let len = u64::from_le_bytes(h[8..HEADER].try_into().expect("8 bytes"));
    if len > max_len {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {max_len}"
        )));
    }
    Ok((kind, len as usize))
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub(crate) fn take_frame(buf: &mut Vec<u8>) -> io::Result<Option<(Kind, Vec<u8>)>> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let (kind, len) = parse_header(&buf[..HEADER], u64::MAX)?;
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let payload = buf[HEADER..HEADER + len].to_vec();
    buf.drain(..HEADER + len);
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod test {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_round_trip_with_fds() {
        let (a, b) = sys::socketpair().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        write_frame(a.as_fd(), Kind::Start, b"hello", &[devnull.as_fd()]).unwrap();
        let (kind, payload, fds) = read_frame(b.as_fd(), 1024).unwrap();
        assert_eq!(kind, Kind::Start);
        assert_eq!(payload, b"hello");
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn large_frame_round_trips() {
        let (a, b) = sys::socketpair().unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let expected = big.clone();
        let t =
            std::thread::spawn(move || write_frame(a.as_fd(), Kind::Outcome, &big, &[]).unwrap());
        let (_, payload, _) = read_frame(b.as_fd(), u64::MAX).unwrap();
        t.join().unwrap();
        assert_eq!(payload, expected);
    }

    #[test]
    fn take_frame_waits_for_completion_and_rejects_garbage() {
        let mut buf = header(Kind::Status, 0, 3).to_vec();
        assert!(take_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"abc");
        buf.push(9);
        let (k, p) = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!((k, p.as_slice()), (Kind::Status, &b"abc"[..]));
        assert_eq!(buf, vec![9]);
        let mut garbage = vec![0u8; 32];
        assert!(take_frame(&mut garbage).is_err());
    }

    #[test]
    fn returned_reports_are_what_the_codec_writes() {
        let check = |returned: Returned<'_>, bytes: &[u8]| {
            let (a, b) = sys::socketpair().unwrap();
            write_returned(a.as_fd(), &returned).unwrap();
            let (kind, mut payload, fds) = read_frame(b.as_fd(), u64::MAX).unwrap();
            if kind == Kind::OutcomeInFd {
                let mut file = std::fs::File::from(fds.into_iter().next().unwrap());
                std::io::Read::read_to_end(&mut file, &mut payload).unwrap();
            } else {
                assert_eq!(kind, Kind::Outcome);
            }
            let expected = crate::codec::encode(&Outcome::Returned(bytes.to_vec())).unwrap();
            assert_eq!(payload, expected);
        };
        for len in [0, 1, 8, SMALL_RESULT] {
            let mut buf = [7u8; SMALL_RESULT];
            buf[..len]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8);
            check(Returned::Small(&buf, len), &buf[..len]);
        }
        let big: Vec<u8> = (0..=255).cycle().take(INLINE_OUTCOME + 1).collect();
        check(Returned::Bytes(&big), &big);
        check(Returned::Bytes(&big[..300]), &big[..300]);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let (a, b) = sys::socketpair().unwrap();
        write_frame(a.as_fd(), Kind::Start, &[0u8; 100], &[]).unwrap();
        assert_eq!(
            read_frame(b.as_fd(), 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
