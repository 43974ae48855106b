//! The serde codec behind every typed channel: one place to swap formats.
//!
//! Public for the layers that carry values as bytes themselves (a broker, a file, a
//! process of another kind): [`encode`] and [`decode`] give the bytes a [`Connection`],
//! a [`Queue`] or a pool task carries, so that what such a layer stores can go to
//! [`Pool::map_encoded`] and come back from it. Everything else uses the typed APIs.
//!
//! ```
//! let bytes = multiproc::codec::encode(&(7u64, "seven"))?;
//! let back: (u64, String) = multiproc::codec::decode(&bytes)?;
//! assert_eq!(back, (7, "seven".to_string()));
//! // All of the bytes must be the value: a prefix of something else is an error.
//! assert!(multiproc::codec::decode::<u64>(&bytes).is_err());
//! # Ok::<(), multiproc::CodecError>(())
//! ```
//!
//! [`Connection`]: crate::Connection
//! [`Queue`]: crate::Queue
//! [`Pool::map_encoded`]: crate::Pool::map_encoded
//!
//! Values are encoded with `postcard` (compact, varint-based), through a layer that keeps the
//! words of the errors a value's own serde code raises (see [`format`]). Decoding takes the
//! whole input: bytes left over after the value are an error, not ignored. File descriptors
//! inside a value (see [`Fd`]) are collected out of band while encoding and handed back while
//! decoding, so that the transport can move them with `SCM_RIGHTS`.

mod format;
pub(crate) mod tag;

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use postcard::ser_flavors::{Slice, StdVec, io::WriteFlavor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::CodecError;
use format::Failure;

thread_local! {
    /// Descriptors collected by the encoder that runs on this thread, if it accepts any.
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// Descriptors received with the message being decoded on this thread.
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// A buffer reused by the hot single-item paths (queue put/get) instead of allocating
    /// one per item.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, emptied (a fresh one if it is in use further
/// up the stack). A buffer grown past 1 MiB is not kept.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// The error of encoding a `T`, with the type's name: postcard's own words are generic.
#[cold]
fn encode_error<T: ?Sized>(e: Failure) -> CodecError {
    CodecError::Encode(format!(
        "`{}`: {}",
        std::any::type_name::<T>(),
        explain(e, "Serialize")
    ))
}

/// The error of decoding a `T`, with the type's name.
#[cold]
fn decode_error<T>(e: Failure) -> CodecError {
    CodecError::Decode(format!(
        "`{}`: {}",
        std::any::type_name::<T>(),
        explain(e, "Deserialize")
    ))
}

/// What went wrong, in words: postcard's, or those of the serde code (`which`: `Serialize`
/// or `Deserialize`) that refused the value.
fn explain(e: Failure, which: &str) -> String {
    match e {
        Failure::Custom(message) => format!("its {which} implementation failed: {message}"),
        Failure::Format(e) => e.to_string(),
    }
}

/// Encodes a value that carries no file descriptors ([`Fd`]): the bytes every typed channel
/// carries. [`CodecError::Encode`] names the type and says why (its `Serialize` refused, or
/// the format cannot hold it).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Most values are small: encode on the stack and allocate once, at the exact size,
    // instead of growing a vector from empty.
    let mut small = [0u8; 256];
    match format::serialize(value, Slice::new(&mut small)) {
        Ok(used) => Ok(used.to_vec()),
        Err(Failure::Format(postcard::Error::SerializeBufferFull)) => {
            format::serialize(value, StdVec::new()).map_err(encode_error::<T>)
        }
        Err(e) => Err(encode_error::<T>(e)),
    }
}

/// Appends the encoding of a value that must not carry file descriptors to `out` (on error,
/// `out` may hold a partial encoding past its old length: callers truncate).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    format::serialize(value, WriteFlavor::new(&mut *out))
        .map(drop)
        .map_err(encode_error::<T>)
}

/// Where a function's encoded result goes: appended to a vector (pool workers batch their
/// reports), or into a small buffer with the heap as overflow (a child reports once: a small
/// result allocates nothing, which in a forked child saves the page faults of a first
/// allocation on the path its parent waits for).
#[doc(hidden)]
#[derive(Debug)]
pub enum ResultBuf<'a> {
    /// Appended to this vector.
    Append(&'a mut Vec<u8>),
    /// At the start of this buffer, `len` bytes long.
    Small {
        /// The buffer.
        buf: &'a mut [u8; SMALL_RESULT],
        /// How much of it is used.
        len: usize,
    },
    /// A result that did not fit its small buffer.
    Spilled(Vec<u8>),
}

/// The size of a [`ResultBuf::Small`] buffer.
pub(crate) const SMALL_RESULT: usize = 64;

impl ResultBuf<'_> {
    /// Encodes `value` (after what is there already, for `Append`).
    pub(crate) fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        match self {
            ResultBuf::Append(out) => encode_into(value, out),
            ResultBuf::Small { buf, len } => {
                match format::serialize(value, SmallFlavor { buf, len: *len }) {
                    Ok(used) => {
                        *len = used;
                        Ok(())
                    }
                    Err(Failure::Format(postcard::Error::SerializeBufferFull)) => {
                        let mut spilled = buf[..*len].to_vec();
                        encode_into(value, &mut spilled)?;
                        *self = ResultBuf::Spilled(spilled);
                        Ok(())
                    }
                    Err(e) => Err(encode_error::<T>(e)),
                }
            }
            ResultBuf::Spilled(out) => encode_into(value, out),
        }
    }

    /// How much is encoded: a mark to go back to with [`truncate`](Self::truncate).
    pub(crate) fn mark(&self) -> usize {
        match self {
            ResultBuf::Append(out) => out.len(),
            ResultBuf::Small { len, .. } => *len,
            ResultBuf::Spilled(out) => out.len(),
        }
    }

    /// Takes back what was encoded after `mark`.
    pub(crate) fn truncate(&mut self, mark: usize) {
        match self {
            ResultBuf::Append(out) => out.truncate(mark),
            ResultBuf::Spilled(out) => out.truncate(mark),
            ResultBuf::Small { len, .. } => *len = mark.min(*len),
        }
    }
}

/// Postcard output into a [`ResultBuf::Small`] buffer, a byte at a time: its slice flavor
/// copies runs with `memcpy`, a C library page that a forked child touches first otherwise.
struct SmallFlavor<'a, 'b> {
    buf: &'a mut &'b mut [u8; SMALL_RESULT],
    len: usize,
}

impl postcard::ser_flavors::Flavor for SmallFlavor<'_, '_> {
    type Output = usize;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        let slot = self
            .buf
            .get_mut(self.len)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = byte;
        self.len += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// Decodes a value that carries no file descriptors from all of `bytes`: bytes left over
/// after the value are an error, as are bytes of another type ([`CodecError::Decode`]
/// names the type).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_borrowed(bytes)
}

/// Decodes a value that may borrow from `bytes` (framing around encoded items). The value
/// must take all of `bytes`: any left over means that the sender encoded something else (a
/// type with more fields, another type), an error rather than a value made of a prefix.
pub(crate) fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    match format::deserialize(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(left_over::<T>(rest.len())),
        Err(e) => Err(decode_error::<T>(e)),
    }
}

/// The error of bytes left over after decoding a `T`.
#[cold]
fn left_over<T>(left: usize) -> CodecError {
    CodecError::Decode(format!(
        "`{}`: {} left over after the value: the message holds more than a `{0}` (the two ends \
         disagree on the type)",
        std::any::type_name::<T>(),
        match left {
            1 => "1 byte".to_string(),
            n => format!("{n} bytes"),
        }
    ))
}

/// Encodes a value, collecting the file descriptors of any [`Fd`] inside it (duplicated, so
/// the caller keeps its own).
pub(crate) fn encode_with_fds<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<OwnedFd>), CodecError> {
    let saved = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let result = format::serialize(value, StdVec::new());
    let fds = OUTGOING.with(|o| std::mem::replace(&mut *o.borrow_mut(), saved));
    let bytes = result.map_err(encode_error::<T>)?;
    Ok((bytes, fds.unwrap_or_default()))
}

/// Decodes a value whose [`Fd`]s refer to `fds` by index. Descriptors that the value does not
/// claim are closed.
pub(crate) fn decode_with_fds<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, CodecError> {
    if fds.is_empty() {
        // Nothing to claim: leave the slots alone (a thread's first use of them registers a
        // destructor, four page faults in a freshly forked child).
        return decode(bytes);
    }
    let slots = fds.into_iter().map(Some).collect();
    let saved = INCOMING.with(|i| i.borrow_mut().replace(slots));
    let result = decode(bytes);
    INCOMING.with(|i| *i.borrow_mut() = saved);
    result
}

/// An owned file descriptor that can travel to another process inside any value sent
/// through multiproc: a spawn argument, a process result, and later connections and queues.
///
/// On the way out the descriptor is duplicated (the sender keeps its own); the receiver gets
/// a new descriptor for the same open file description, with close-on-exec set.
///
/// ```
/// use std::os::fd::OwnedFd;
/// let file = std::fs::File::open("/dev/null").unwrap();
/// let fd = multiproc::Fd::from(OwnedFd::from(file));
/// let back: std::fs::File = fd.into_owned().into();
/// # drop(back);
/// ```
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// Gives back the owned descriptor.
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0.as_fd(), serializer)
    }
}

/// Serializes a descriptor as [`Fd`] does: a duplicate goes out of band, its index in band.
/// Any handle that wraps a descriptor (a `Connection`, ...) serializes through this.
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    {
        use serde::ser::Error;
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| S::Error::custom(format!("cannot duplicate file descriptor: {e}")))?;
        let index = OUTGOING.with(|o| {
            o.borrow_mut().as_mut().map(|fds| {
                fds.push(dup);
                fds.len() - 1
            })
        });
        match index {
            Some(i) => serializer.serialize_u32(i as u32),
            None => Err(S::Error::custom(
                "a file descriptor can only travel through a multiproc process argument, \
                 result or connection",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let index = u32::deserialize(deserializer)? as usize;
        INCOMING
            .with(|i| {
                i.borrow_mut()
                    .as_mut()
                    .and_then(|slots| slots.get_mut(index).and_then(Option::take))
            })
            .map(Fd)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "file descriptor #{index} was not received with this message"
                ))
            })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn round_trip_plain_values() {
        let v = (1u64, String::from("x"), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        let back: (u64, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn result_buffers_keep_small_results_inline_and_spill_large_ones() {
        let mut small = [0u8; SMALL_RESULT];
        let mut out = ResultBuf::Small {
            buf: &mut small,
            len: 0,
        };
        out.encode(&7u64).unwrap();
        assert!(matches!(out, ResultBuf::Small { len: 1, .. }));
        let mark = out.mark();
        let big = "x".repeat(2 * SMALL_RESULT);
        out.encode(&big).unwrap();
        let ResultBuf::Spilled(bytes) = &out else {
            panic!("a large result spills to the heap: {out:?}");
        };
        let mut expected = encode(&7u64).unwrap();
        expected.extend(encode(&big).unwrap());
        assert_eq!(bytes, &expected);
        out.truncate(mark);
        assert_eq!(out.mark(), 1);

        let mut vec = vec![9u8];
        let mut out = ResultBuf::Append(&mut vec);
        out.encode(&big).unwrap();
        out.truncate(1);
        assert_eq!(vec, [9]);
    }

    #[test]
    fn fd_outside_a_channel_is_an_error() {
        let fd = Fd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let err = encode(&fd).unwrap_err();
        assert!(err.to_string().contains("file descriptor"), "{err}");
    }

    #[test]
    fn fds_travel_out_of_band() {
        let a = Fd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let (bytes, fds) = encode_with_fds(&(7u8, &a)).unwrap();
        assert_eq!(fds.len(), 1);
        assert_ne!(fds[0].as_raw_fd(), a.as_raw_fd());
        let (n, b): (u8, Fd) = decode_with_fds(&bytes, fds).unwrap();
        assert_eq!(n, 7);
        assert!(b.as_raw_fd() >= 0);
    }

    #[test]
    fn missing_fd_is_a_decode_error() {
        let a = Fd::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let (bytes, _fds) = encode_with_fds(&a).unwrap();
        let err = decode_with_fds::<Fd>(&bytes, Vec::new()).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)));
    }

    #[test]
    fn wrong_type_is_a_decode_error() {
        let bytes = encode(&"hello").unwrap();
        match decode::<Vec<u64>>(&bytes[..2]) {
            Err(CodecError::Decode(m)) => assert!(m.starts_with("`alloc::vec::Vec<u64>`: "), "{m}"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    /// Refuses 0 when serialized and odd numbers when deserialized, in words of its own.
    #[derive(Debug, PartialEq)]
    struct Picky(u32);

    impl Serialize for Picky {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 == 0 {
                return Err(serde::ser::Error::custom("zero is not a picky number"));
            }
            s.serialize_u32(self.0)
        }
    }

    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u32::deserialize(d)?;
            if n % 2 == 1 {
                return Err(serde::de::Error::custom(format!("odd value {n} refused")));
            }
            Ok(Picky(n))
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Holder {
        Nothing,
        One(Picky),
        Pair(u8, Picky),
        Named {
            first: Option<Picky>,
            rest: Vec<Picky>,
        },
        Map(std::collections::BTreeMap<String, Picky>),
    }

    #[test]
    fn a_types_own_error_messages_are_kept() {
        let err = encode(&Picky(0)).unwrap_err().to_string();
        assert!(
            err.contains("Picky`: its Serialize implementation failed: zero is not a picky number"),
            "{err}"
        );
        let err = decode::<Picky>(&encode(&Picky(3)).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Picky`: its Deserialize implementation failed: odd value 3 refused"),
            "{err}"
        );
        // Deep inside other values, through every path of the codec.
        let deep = [
            Holder::One(Picky(0)),
            Holder::Pair(1, Picky(0)),
            Holder::Named {
                first: Some(Picky(0)),
                rest: vec![],
            },
            Holder::Named {
                first: None,
                rest: vec![Picky(2), Picky(0)],
            },
            Holder::Map([("k".to_string(), Picky(0))].into()),
        ];
        for value in &deep {
            for err in [
                encode(value).unwrap_err(),
                encode_into(value, &mut Vec::new()).unwrap_err(),
                encode_with_fds(value).unwrap_err(),
                ResultBuf::Spilled(Vec::new()).encode(value).unwrap_err(),
                ResultBuf::Small {
                    buf: &mut [0; SMALL_RESULT],
                    len: 0,
                }
                .encode(value)
                .unwrap_err(),
            ] {
                assert!(err.to_string().contains("zero is not a picky"), "{err}");
            }
        }
        let odd = [
            Holder::One(Picky(3)),
            Holder::Pair(1, Picky(3)),
            Holder::Named {
                first: Some(Picky(3)),
                rest: vec![],
            },
            Holder::Named {
                first: None,
                rest: vec![Picky(2), Picky(3)],
            },
            Holder::Map([("k".to_string(), Picky(3))].into()),
        ];
        for value in &odd {
            let bytes = encode(value).unwrap();
            for err in [
                decode::<Holder>(&bytes).unwrap_err(),
                decode_with_fds::<Holder>(&bytes, Vec::new()).unwrap_err(),
            ] {
                assert!(err.to_string().contains("odd value 3 refused"), "{err}");
            }
        }
        // And what is acceptable goes through.
        for value in [
            Holder::Nothing,
            Holder::Pair(1, Picky(2)),
            Holder::Named {
                first: Some(Picky(4)),
                rest: vec![Picky(6)],
            },
        ] {
            assert_eq!(decode::<Holder>(&encode(&value).unwrap()).unwrap(), value);
        }
    }

    #[test]
    fn bytes_left_over_after_a_value_are_a_decode_error() {
        let bytes = encode(&(1u8, 2u8)).unwrap();
        match decode::<u8>(&bytes) {
            Err(CodecError::Decode(m)) => assert!(
                m.starts_with("`u8`: 1 byte left over after the value"),
                "{m}"
            ),
            other => panic!("expected a decode error, got {other:?}"),
        }
        let bytes = encode(&("ab", 7u32, 8u32)).unwrap();
        match decode_borrowed::<&str>(&bytes) {
            Err(CodecError::Decode(m)) => assert!(m.contains("2 bytes left over"), "{m}"),
            other => panic!("expected a decode error, got {other:?}"),
        }
        assert_eq!(
            decode_borrowed::<(&str, u32, u32)>(&bytes).unwrap(),
            ("ab", 7, 8)
        );
    }
}
