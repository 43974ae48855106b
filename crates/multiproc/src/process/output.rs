//! The parent's side of a child's piped standard output and error: a thread per stream that
//! keeps the most recent bytes ([`Output::Capture`]) or writes whole prefixed lines to this
//! process's stream ([`Output::Prefixed`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::setup::{Output, Setup};
use crate::error::ProcessError;
use crate::sys;

/// A line longer than this is written in pieces (each prefixed) in prefixed mode.
const MAX_LINE: usize = 64 << 10;
const READ_CHUNK: usize = 64 << 10;

/// The read ends of a child's piped streams, before it has a pid.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    stdout: Option<(Output, OwnedFd)>,
    stderr: Option<(Output, OwnedFd)>,
}

/// Makes the pipes `setup` asks for: the read ends stay here, the write ends go to the child.
pub(crate) fn pipes(
    setup: Option<&Setup>,
) -> Result<(Pending, super::setup::StreamEnds), ProcessError> {
    let mut pending = Pending::default();
    let mut ends = (None, None);
    let Some(setup) = setup else {
        return Ok((pending, ends));
    };
    if setup.stdout.piped() {
        let (r, w) =
            sys::pipe().map_err(ProcessError::io("creating a pipe for standard output"))?;
        pending.stdout = Some((setup.stdout, r));
        ends.0 = Some(w);
    }
    if setup.stderr.piped() {
        let (r, w) = sys::pipe().map_err(ProcessError::io("creating a pipe for standard error"))?;
        pending.stderr = Some((setup.stderr, r));
        ends.1 = Some(w);
    }
    Ok((pending, ends))
}

/// What a child wrote to its captured streams: the most recent bytes of each, up to the
/// capture limit, and how many earlier bytes were dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The standard output kept (empty when it was not captured).
    pub stdout: Vec<u8>,
    /// The standard error kept (empty when it was not captured).
    pub stderr: Vec<u8>,
    /// Bytes of standard output dropped to stay within the limit (the oldest).
    pub stdout_dropped: u64,
    /// Bytes of standard error dropped to stay within the limit (the oldest).
    pub stderr_dropped: u64,
}

impl CapturedOutput {
    /// The standard output kept, as text (invalid UTF-8 replaced).
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// The standard error kept, as text (invalid UTF-8 replaced).
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[derive(Debug, Default)]
struct Kept {
    bytes: VecDeque<u8>,
    dropped: u64,
}

#[derive(Debug, Default)]
struct State {
    stdout: Kept,
    stderr: Kept,
    /// Readers still running.
    open: usize,
}

/// The reader threads of one child's piped streams; cloned into its handles.
#[derive(Debug, Clone)]
pub(crate) struct Streams {
    inner: Arc<(Mutex<State>, Condvar)>,
    capturing: bool,
}

impl Streams {
    /// Starts a reader per piped stream of child `name` (`pid`), keeping at most `limit` bytes
    /// of each captured stream. `None` when nothing is piped.
    pub(crate) fn start(pending: Pending, name: &str, pid: u32, limit: usize) -> Option<Streams> {
        if pending.stdout.is_none() && pending.stderr.is_none() {
            return None;
        }
        let capturing = [&pending.stdout, &pending.stderr]
            .iter()
            .any(|p| matches!(p, Some((Output::Capture, _))));
        let streams = Streams {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
            capturing,
        };
        let prefix = format!("[{name} {pid}] ");
        for (err, p) in [(false, pending.stdout), (true, pending.stderr)] {
            let Some((mode, fd)) = p else { continue };
            streams.lock().open += 1;
            let s = streams.clone();
            let prefix = prefix.clone();
            let spawned = std::thread::Builder::new()
                .name("multiproc-output".into())
                .stack_size(128 << 10)
                .spawn(move || {
                    let file = std::fs::File::from(fd);
                    match mode {
                        Output::Capture => s.capture(file, err, limit),
                        _ => prefix_lines(file, err, &prefix),
                    }
                    s.lock().open -= 1;
                    s.inner.1.notify_all();
                });
            if spawned.is_err() {
                // The pipe's read end is closed with the closure: the child's writes fail
                // instead of blocking.
                streams.lock().open -= 1;
            }
        }
        Some(streams)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capture(&self, mut file: std::fs::File, err: bool, limit: usize) {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut st = self.lock();
            let kept = if err { &mut st.stderr } else { &mut st.stdout };
            // Only the last `limit` bytes of this read can stay.
            let data = &chunk[n.saturating_sub(limit)..n];
            let skipped = (n - data.len()) as u64;
            kept.bytes.extend(data);
            let excess = kept.bytes.len().saturating_sub(limit);
            kept.bytes.drain(..excess);
            kept.dropped += skipped + excess as u64;
        }
    }

    /// Whether a stream is captured (rather than only prefixed).
    pub(crate) fn capturing(&self) -> bool {
        self.capturing
    }

    /// Waits at most `timeout` until every reader has seen the end of its stream (the child
    /// and everything it started with the same streams ended), then gives what was captured.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<CapturedOutput, ProcessError> {
        let st = self
            .closed(timeout)
            .ok_or(ProcessError::Timeout(crate::TimedOut(timeout)))?;
        Ok(CapturedOutput {
            stdout: st.stdout.bytes.iter().copied().collect(),
            stderr: st.stderr.bytes.iter().copied().collect(),
            stdout_dropped: st.stdout.dropped,
            stderr_dropped: st.stderr.dropped,
        })
    }
}

impl Streams {
    /// Waits at most `timeout` until every reader has seen the end of its stream; `None` if
    /// one is still open then.
    fn closed(&self, timeout: Duration) -> Option<std::sync::MutexGuard<'_, State>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .inner
                .1
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(st)
    }

    /// After the child ended: lets the readers write out or keep what the child wrote last,
    /// at most `timeout` (a grandchild may hold the streams open for longer).
    pub(crate) fn settle(&self, timeout: Duration) {
        let _ = self.closed(timeout);
    }
}

/// Copies `file` to this process's standard output (or error, `err`) a whole line at a time,
/// each prefixed, holding the stream's lock for the line.
fn prefix_lines(mut file: std::fs::File, err: bool, prefix: &str) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &[u8]| {
        let mut whole = Vec::with_capacity(prefix.len() + line.len() + 1);
        whole.extend_from_slice(prefix.as_bytes());
        whole.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            whole.push(b'\n');
        }
        let _ = if err {
            std::io::stderr().lock().write_all(&whole)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&whole).and_then(|()| out.flush())
        };
    };
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &chunk[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&rest[..=i]);
            emit(&line);
            line.clear();
            rest = &rest[i + 1..];
        }
        line.extend_from_slice(rest);
        while line.len() >= MAX_LINE {
            let tail = line.split_off(MAX_LINE);
            emit(&line);
            line = tail;
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}
