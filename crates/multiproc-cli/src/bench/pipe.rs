//! The `pipe` group: a `Connection` between two processes next to a raw `socketpair` driven
//! with plain `read`/`write` in the same run: small-message round trip and 1 MiB-message
//! bandwidth.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use multiproc::{Connection, Fd, Func, pipe};

use super::stats::{Samples, human, ratio};

const SMALL: usize = 8;
const MIB: usize = 1 << 20;

/// Child side: echoes `n` messages.
#[multiproc::func]
pub(crate) fn conn_echo(conn: Connection, n: u32) {
    for _ in 0..n {
        let m = conn.recv_bytes().expect("recv");
        conn.send_bytes(&m).expect("send");
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
            let (ours, theirs) = pipe(true)?;
            let p = conn_echo.spawn((theirs, n + 10))?;
            let buf = [7u8; SMALL];
            for _ in 0..10 {
                ours.send_bytes(&buf)?;
                ours.recv_bytes()?;
            }
            let t = Instant::now();
            for _ in 0..n {
                ours.send_bytes(&buf)?;
                ours.recv_bytes()?;
            }
            samples.push(t.elapsed().as_secs_f64() / f64::from(n));
            p.join()?;
        }
    }
    Ok(Samples(samples))
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

/// Runs the group and prints it.
pub(crate) fn run(quick: bool) -> multiproc::Result<()> {
    let (reps, n_rt, n_bw) = if quick {
        (3, 2_000, 200)
    } else {
        (7, 20_000, 2_000)
    };
    println!(
        "\n== pipe: Connection between two processes vs a raw socketpair, median of {reps} =="
    );
    let ours_rt = round_trips(reps, n_rt, false)?;
    let raw_rt = round_trips(reps, n_rt, true)?;
    let ours_bw = bandwidth(reps, n_bw, false)?;
    let raw_bw = bandwidth(reps, n_bw, true)?;
    println!("{:<40} {:>12} {:>12}", "what", "median", "ratio");
    println!(
        "{:<40} {:>12} {:>11.2}x",
        "round trip, 8 bytes: multiproc",
        human(ours_rt.median()),
        ratio(ours_rt.median(), raw_rt.median())
    );
    println!(
        "{:<40} {:>12} {:>12}",
        "round trip, 8 bytes: raw socketpair",
        human(raw_rt.median()),
        "1.00x (OS)"
    );
    let gb = |s: &Samples| format!("{:.2} GB/s", s.median() / 1e9);
    println!(
        "{:<40} {:>12} {:>11.0}%",
        "1 MiB messages: multiproc",
        gb(&ours_bw),
        100.0 * ratio(ours_bw.median(), raw_bw.median())
    );
    println!(
        "{:<40} {:>12} {:>12}",
        "1 MiB blocks: raw socketpair",
        gb(&raw_bw),
        "100% (OS)"
    );
    Ok(())
}
