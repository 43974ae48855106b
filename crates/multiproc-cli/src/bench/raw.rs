//! The raw round trip our request/reply figures (pipe, pool, manager) are compared with: 8
//! bytes over a `socketpair` driven with plain reads and writes, in the same placement, once
//! blocking and once spinning; and the raw form of the manager's many-clients rows.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use multiproc::{Fd, pipe};
use serde::{Deserialize, Serialize};

use super::place::{Cpu, Ends};
use super::stats::per_call;

const SMALL: usize = 8;

/// How both ends of a raw round trip wait for the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Wait {
    /// A blocking `read`: the process sleeps and the kernel wakes it.
    Block,
    /// A non-blocking `recv` in a loop: no sleep and no wake-up, a CPU burnt meanwhile.
    Spin,
}

/// Child side: pins itself to `cpu`, then echoes 8-byte messages until the other end closes.
#[multiproc::func]
pub(crate) fn raw_echo(cpu: Cpu, fd: Fd, wait: Wait) {
    cpu.pin().expect("pin");
    echo(std::fs::File::from(fd.into_owned()), wait).expect("echo");
}

/// Echoes 8-byte messages on `sock` until the other end closes.
fn echo(mut sock: std::fs::File, wait: Wait) -> std::io::Result<()> {
    let mut buf = [0u8; SMALL];
    while receive(&mut sock, &mut buf, wait)? {
        sock.write_all(&buf)?;
    }
    Ok(())
}

/// One client process of [`raw_clients`]: waits for the start, then `n` blocking round trips.
#[multiproc::func]
pub(crate) fn raw_client(fd: Fd, start: multiproc::Event, n: u32) -> Result<(), String> {
    let mut sock = std::fs::File::from(fd.into_owned());
    start.wait();
    let mut buf = [7u8; SMALL];
    for _ in 0..n {
        sock.write_all(&buf).map_err(|e| e.to_string())?;
        if !receive(&mut sock, &mut buf, Wait::Block).map_err(|e| e.to_string())? {
            return Err("the echo ended".into());
        }
    }
    Ok(())
}

/// Round trips per second of `clients` processes, each against a thread of this process that
/// echoes on a socketpair of its own, every wait a blocking read: the manager's many-clients
/// rows with nothing but the messages (its server, too, has a thread per connection).
#[multiproc::func]
pub(crate) fn raw_clients(clients: u32, n: u32) -> Result<f64, String> {
    let err = |e: multiproc::Error| e.to_string();
    let start = multiproc::Event::new().map_err(|e| e.to_string())?;
    let mut echoes = Vec::new();
    let mut kids = Vec::new();
    for _ in 0..clients {
        let (ours, theirs) = socketpair().map_err(err)?;
        echoes.push(std::thread::spawn(move || echo(ours, Wait::Block)));
        kids.push(
            super::helper(&raw_client, (theirs, start.clone(), n)).map_err(|e| e.to_string())?,
        );
    }
    let secs = time_clients(kids, || {
        start.set();
        Ok(())
    })?;
    for e in echoes {
        e.join()
            .map_err(|_| "an echo thread panicked".to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(f64::from(clients) * f64::from(n) / secs)
}

/// Fills `buf` from `sock`, waiting as `wait` says; false at the end of the stream.
fn receive(sock: &mut std::fs::File, buf: &mut [u8], wait: Wait) -> std::io::Result<bool> {
    use nix::sys::socket::{MsgFlags, recv};
    let mut got = 0;
    while got < buf.len() {
        let n = match wait {
            Wait::Block => sock.read(&mut buf[got..]),
            Wait::Spin => match recv(sock.as_raw_fd(), &mut buf[got..], MsgFlags::MSG_DONTWAIT) {
                Err(nix::errno::Errno::EAGAIN) => {
                    std::hint::spin_loop();
                    continue;
                }
                r => r.map_err(std::io::Error::from),
            },
        };
        match n {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The two ends of a socketpair: ours as a file to drive raw, the other to hand to a child.
pub(crate) fn socketpair() -> multiproc::Result<(std::fs::File, Fd)> {
    // A duplex pipe's ends are socketpair ends; take their descriptors to drive them raw.
    let (a, b) = pipe(true)?;
    Ok((
        std::fs::File::from(OwnedFd::try_from(a)?),
        Fd::from(OwnedFd::try_from(b)?),
    ))
}

/// Seconds per round trip of 8 bytes between this process and an echo on `ends.there`, both
/// waiting as `wait` says: `n` round trips, fewer if `budget` runs out first.
pub(crate) fn round_trip(
    ends: &Ends,
    wait: Wait,
    n: u32,
    budget: Duration,
) -> multiproc::Result<f64> {
    let (mut ours, theirs) = socketpair()?;
    let echo = super::helper(&raw_echo, (ends.there, theirs, wait))?;
    let mut buf = [7u8; SMALL];
    let mut once = |_| -> std::io::Result<()> {
        ours.write_all(&buf)?;
        match receive(&mut ours, &mut buf, wait)? {
            true => Ok(()),
            false => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    };
    // Warm: both ends running and their caches filled before the clock starts.
    per_call(100, budget / 10, &mut once)?;
    let secs = per_call(n, budget, &mut once)?;
    drop(ours);
    echo.join()?;
    Ok(secs)
}

/// Seconds from `start` (called once every client process has had time to start and wait
/// for it) until every one of `kids` has ended well: the many-clients rows' clock.
pub(crate) fn time_clients(
    kids: Vec<multiproc::Process<Result<(), String>>>,
    start: impl FnOnce() -> Result<(), String>,
) -> Result<f64, String> {
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    start()?;
    for k in kids {
        k.join().map_err(|e| e.to_string())??;
    }
    Ok(t.elapsed().as_secs_f64())
}
