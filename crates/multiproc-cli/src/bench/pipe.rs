//! The `pipe` group: a `Connection` between two processes next to a raw `socketpair` driven
//! with plain `read`/`write` in the same run: small-message round trip (raw bytes, and a typed
//! `u64` through the codec) and 1 MiB-message bandwidth.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use multiproc::{Connection, Fd, Func, pipe};

use super::report::{Report, Unit};
use super::stats::Samples;

const SMALL: usize = 8;
const MIB: usize = 1 << 20;

/// Child side: echoes `n` messages, raw bytes or (`typed`) `u64`s.
#[multiproc::func]
pub(crate) fn conn_echo(conn: Connection, n: u32, typed: bool) {
    for _ in 0..n {
        if typed {
            let v: u64 = conn.recv().expect("recv");
            conn.send(&v).expect("send");
        } else {
            let m = conn.recv_bytes().expect("recv");
            conn.send_bytes(&m).expect("send");
        }
    }
}

/// Child side: echoes `n` 8-byte messages with plain read/write on a socket.
#[multiproc::func]
pub(crate) fn raw_echo(fd: Fd, n: u32) {
    let mut sock = std::fs::File::from(fd.into_owned());
    let mut buf = [0u8; SMALL];
    for _ in 0..n {
        sock.read_exact(&mut buf).expect("read");
        sock.write_all(&buf).expect("write");
    }
}

/// Child side: sends `n` messages of `size` bytes.
#[multiproc::func]
pub(crate) fn conn_source(conn: Connection, n: u32, size: usize) {
    let block = vec![0x5au8; size];
    for _ in 0..n {
        conn.send_bytes(&block).expect("send");
    }
}

/// Child side: writes `n` blocks of `size` bytes with plain writes.
#[multiproc::func]
pub(crate) fn raw_source(fd: Fd, n: u32, size: usize) {
    let mut sock = std::fs::File::from(fd.into_owned());
    let block = vec![0x5au8; size];
    for _ in 0..n {
        sock.write_all(&block).expect("write");
    }
}

fn socketpair() -> multiproc::Result<(std::fs::File, Fd)> {
    // A duplex pipe's ends are socketpair ends; take their descriptors to drive them raw.
    let (a, b) = pipe(true)?;
    Ok((
        std::fs::File::from(OwnedFd::from(a)),
        Fd::from(OwnedFd::from(b)),
    ))
}

/// Per-round-trip seconds over `n` round trips, for each of `reps` runs.
pub(crate) fn round_trips(reps: usize, n: u32, raw: bool) -> multiproc::Result<Samples> {
    let mut samples = Vec::new();
    for _ in 0..reps {
        if raw {
            let (mut ours, theirs) = socketpair()?;
            let p = raw_echo.spawn((theirs, n + 10))?;
            let mut buf = [7u8; SMALL];
            for _ in 0..10 {
                ours.write_all(&buf)?;
                ours.read_exact(&mut buf)?;
            }
            let t = Instant::now();
            for _ in 0..n {
                ours.write_all(&buf)?;
                ours.read_exact(&mut buf)?;
            }
            samples.push(t.elapsed().as_secs_f64() / f64::from(n));
            p.join()?;
        } else {
            samples.push(conn_round_trips(n, false)?);
        }
    }
    Ok(Samples(samples))
}

/// Seconds per round trip over `n` round trips through a `Connection` to a child that echoes:
/// 8 raw bytes, or (`typed`) a `u64` through `send`/`recv`.
fn conn_round_trips(n: u32, typed: bool) -> multiproc::Result<f64> {
    let (ours, theirs) = pipe(true)?;
    let p = conn_echo.spawn((theirs, n + 10, typed))?;
    let exchange = || -> multiproc::Result<()> {
        if typed {
            ours.send(&7u64)?;
            std::hint::black_box(ours.recv::<u64>()?);
        } else {
            ours.send_bytes(&[7u8; SMALL])?;
            std::hint::black_box(ours.recv_bytes()?);
        }
        Ok(())
    };
    for _ in 0..10 {
        exchange()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        exchange()?;
    }
    let secs = t.elapsed().as_secs_f64() / f64::from(n);
    p.join()?;
    Ok(secs)
}

/// Bytes per second receiving `n` blocks of 1 MiB, for each of `reps` runs.
fn bandwidth(reps: usize, n: u32, raw: bool) -> multiproc::Result<Samples> {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let t;
        if raw {
            let (mut ours, theirs) = socketpair()?;
            let p = raw_source.spawn((theirs, n, MIB))?;
            let mut buf = vec![0u8; MIB];
            t = Instant::now();
            for _ in 0..n {
                ours.read_exact(&mut buf)?;
            }
            samples.push((f64::from(n) * MIB as f64) / t.elapsed().as_secs_f64());
            p.join()?;
        } else {
            let (ours, theirs) = pipe(true)?;
            let p = conn_source.spawn((theirs, n, MIB))?;
            t = Instant::now();
            for _ in 0..n {
                let m = ours.recv_bytes()?;
                std::hint::black_box(&m);
            }
            samples.push((f64::from(n) * MIB as f64) / t.elapsed().as_secs_f64());
            p.join()?;
        }
    }
    Ok(Samples(samples))
}

/// Runs the group: round trip and bandwidth next to a raw socketpair and CPython.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n_rt, n_bw) = r
        .size
        .pick((2, 200, 20), (3, 2_000, 200), (7, 20_000, 2_000));
    r.group(&format!(
        "pipe: Connection between two processes vs a raw socketpair, median of {reps}"
    ));
    let ours_rt = round_trips(reps, n_rt, false)?;
    let raw_rt = round_trips(reps, n_rt, true)?;
    let typed_rt = Samples(
        (0..reps)
            .map(|_| conn_round_trips(n_rt, true))
            .collect::<multiproc::Result<_>>()?,
    );
    let ours_bw = bandwidth(reps, n_bw, false)?;
    let raw_bw = bandwidth(reps, n_bw, true)?;
    let py_rt = r.cpython("mp_pipe.py", "py.pipe.rtt.bytes.duplex", 1e-6);
    let py_obj_rt = r.cpython("mp_pipe.py", "py.pipe.rtt.obj.duplex", 1e-6);
    let py_bw = r.cpython("mp_pipe.py", "py.pipe.bw1m.duplex", 1e6);
    let raw = raw_rt.median();
    r.row(
        "pipe",
        "round trip, 8 bytes: multiproc",
        Unit::Secs,
        &ours_rt,
        &[("raw socketpair", Some(raw)), ("CPython", py_rt)],
    );
    r.row(
        "pipe",
        "round trip, typed u64: multiproc",
        Unit::Secs,
        &typed_rt,
        &[("raw socketpair", Some(raw)), ("CPython", py_obj_rt)],
    );
    r.row(
        "pipe",
        "round trip, 8 bytes: raw socketpair",
        Unit::Secs,
        &raw_rt,
        &[],
    );
    let raw = raw_bw.median();
    r.row(
        "pipe",
        "1 MiB messages: multiproc",
        Unit::Bandwidth,
        &ours_bw,
        &[("raw socketpair", Some(raw)), ("CPython", py_bw)],
    );
    r.row(
        "pipe",
        "1 MiB blocks: raw socketpair",
        Unit::Bandwidth,
        &raw_bw,
        &[],
    );
    Ok(())
}
