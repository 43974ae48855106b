//! `FrameReader`: many small messages per receive on a connection that carries no
//! descriptors (the pool's worker links), instead of two receives per message.

use std::os::fd::AsFd;
use std::time::Duration;

use super::conn::{Connection, frame_header};
use crate::error::ConnectionError;
use crate::sys;

/// Receives at least this much at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames (CPython framing) from a connection through a buffer: one receive takes in
/// every message that has arrived. For connections that never carry descriptors.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    /// Received bytes live in `buf[start..end]`; the rest of `buf` is room (zeroed once, when
    /// it grows, not on every receive).
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// The next complete frame's payload in the buffer, if there is one.
    fn parse(&mut self, limit: u64) -> Result<Option<Vec<u8>>, ConnectionError> {
        let avail = &self.buf[self.start..self.end];
        let Some((hlen, size)) = frame_header(avail, limit)? else {
            return Ok(None);
        };
        if avail.len() < hlen + size {
            return Ok(None);
        }
        let payload = avail[hlen..hlen + size].to_vec();
        self.start += hlen + size;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(payload))
    }

    /// Receives what is there (without waiting unless `block`); false when nothing came
    /// (would block). End of stream is `Closed`.
    fn fill(&mut self, conn: &Connection, block: bool) -> Result<bool, ConnectionError> {
        // Make room at the end: move what is left to the front, or grow.
        if self.buf.len() - self.end < READ_CHUNK / 4 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_CHUNK / 4 {
                let grown = (self.buf.len() * 2).max(READ_CHUNK);
                self.buf.resize(grown, 0);
            }
        }
        let got = sys::recv_plain(conn.as_fd(), &mut self.buf[self.end..], !block);
        match got {
            Ok(0) => Err(if self.end > self.start {
                ConnectionError::BadFrame(
                    "the peer closed the connection in the middle of a message".into(),
                )
            } else {
                ConnectionError::Closed
            }),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The next message if one has fully arrived, without waiting.
    pub(crate) fn try_next(
        &mut self,
        conn: &Connection,
    ) -> Result<Option<Vec<u8>>, ConnectionError> {
        loop {
            if let Some(p) = self.parse(conn.max_message_size())? {
                return Ok(Some(p));
            }
            if !self.fill(conn, false)? {
                return Ok(None);
            }
        }
    }

    /// The next message, polling for it up to `spin` without sleeping (as the library's
    /// waiting policy allows), then waiting as long as it takes.
    pub(crate) fn next(
        &mut self,
        conn: &Connection,
        spin: Duration,
    ) -> Result<Vec<u8>, ConnectionError> {
        let mut spin = crate::spin::Spinner::new(spin);
        loop {
            if let Some(p) = self.try_next(conn)? {
                spin.hit();
                return Ok(p);
            }
            if spin.keep_going() {
                continue;
            }
            self.fill(conn, true)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_many_frames_of_any_size_and_refuses_bad_ones() {
        let (a, b) = crate::pipe(true).unwrap();
        let a = std::sync::Arc::new(a);
        let sizes = [0usize, 1, 3, 4, 100, 70_000, 5, 200_000];
        let sender = std::thread::spawn({
            let a = a.clone();
            move || {
                for (i, &n) in sizes.iter().enumerate() {
                    a.send_bytes(&vec![i as u8; n]).unwrap();
                }
            }
        });
        let mut r = FrameReader::default();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(
                r.next(&b, Duration::from_micros(20)).unwrap(),
                vec![i as u8; n]
            );
        }
        sender.join().unwrap();
        assert!(r.try_next(&b).unwrap().is_none());
        drop(a);
        assert!(matches!(
            r.next(&b, Duration::ZERO),
            Err(ConnectionError::Closed)
        ));
        // A negative length is a bad frame.
        let (a, b) = crate::pipe(true).unwrap();
        nix::unistd::write(a.as_fd(), &(-5i32).to_be_bytes()).unwrap();
        let mut r = FrameReader::default();
        assert!(matches!(
            r.next(&b, Duration::ZERO),
            Err(ConnectionError::BadFrame(_))
        ));
    }
}
