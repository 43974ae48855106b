//! The `pipe` group: a `Connection` between two processes next to a raw `socketpair` driven
//! with plain `read`/`write`, in each CPU placement: small-message round trip (next to the
//! raw round trip blocking and spinning) and 1 MiB-message bandwidth.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use multiproc::{Connection, Fd, pipe};

use super::place::{Cpu, Ends};
use super::raw::{self, Wait};
use super::report::{Report, Unit};
use super::stats::{Samples, per_call};

const SMALL: usize = 8;
const MIB: usize = 1 << 20;

/// Child side: pins itself to `cpu`, then echoes messages until the other end closes.
#[multiproc::func]
pub(crate) fn conn_echo(cpu: Cpu, conn: Connection) {
    cpu.pin().expect("pin");
    while let Ok(m) = conn.recv_bytes() {
        conn.send_bytes(&m).expect("send");
    }
}

/// Child side: pins itself to `cpu`, then sends `n` messages of `size` bytes.
#[multiproc::func]
pub(crate) fn conn_source(cpu: Cpu, conn: Connection, n: u32, size: usize) {
    cpu.pin().expect("pin");
    let block = vec![0x5au8; size];
    for _ in 0..n {
        conn.send_bytes(&block).expect("send");
    }
}

/// Child side: pins itself to `cpu`, then writes `n` blocks of `size` bytes with plain writes.
#[multiproc::func]
pub(crate) fn raw_source(cpu: Cpu, fd: Fd, n: u32, size: usize) {
    cpu.pin().expect("pin");
    let mut sock = std::fs::File::from(fd.into_owned());
    let block = vec![0x5au8; size];
    for _ in 0..n {
        sock.write_all(&block).expect("write");
    }
}

/// Seconds per `Connection` round trip of 8 bytes with an echo on `ends.there`: `n` round
/// trips, fewer if `budget` runs out first.
fn round_trip(ends: &Ends, n: u32, budget: Duration, msg: Message) -> multiproc::Result<f64> {
    let (ours, theirs) = pipe(true)?;
    let echo = super::helper(&conn_echo, (ends.there, theirs))?;
    let buf = [7u8; SMALL];
    let once = |_| -> multiproc::Result<()> {
        match msg {
            Message::Bytes => {
                ours.send_bytes(&buf)?;
                ours.recv_bytes()?;
            }
            // The echo sends the frame back as it came: tag and encoding, decoded here.
            Message::TypedU64 => {
                ours.send(&7u64)?;
                std::hint::black_box(ours.recv::<u64>()?);
            }
        }
        Ok(())
    };
    per_call(100, budget / 10, once)?;
    let secs = per_call(n, budget, once)?;
    drop(ours);
    echo.join()?;
    Ok(secs)
}

/// What a round trip carries: 8 raw bytes, or a `u64` through the codec and its type tag.
#[derive(Debug, Clone, Copy)]
enum Message {
    Bytes,
    TypedU64,
}

/// Bytes per second receiving `n` blocks of 1 MiB from a process on `ends.there`, through a
/// `Connection` or (`raw`) a socketpair read with plain reads.
fn bandwidth(ends: &Ends, n: u32, raw: bool) -> multiproc::Result<f64> {
    let t;
    if raw {
        let (mut ours, theirs) = raw::socketpair()?;
        let p = super::helper(&raw_source, (ends.there, theirs, n, MIB))?;
        let mut buf = vec![0u8; MIB];
        t = Instant::now();
        for _ in 0..n {
            ours.read_exact(&mut buf)?;
        }
        let rate = (f64::from(n) * MIB as f64) / t.elapsed().as_secs_f64();
        p.join()?;
        Ok(rate)
    } else {
        let (ours, theirs) = pipe(true)?;
        let p = super::helper(&conn_source, (ends.there, theirs, n, MIB))?;
        t = Instant::now();
        for _ in 0..n {
            let m = ours.recv_bytes()?;
            std::hint::black_box(&m);
        }
        let rate = (f64::from(n) * MIB as f64) / t.elapsed().as_secs_f64();
        p.join()?;
        Ok(rate)
    }
}

/// Runs the group: in each placement, round trip and bandwidth next to a raw socketpair in
/// the same placement (and CPython, unpinned).
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n_rt, n_bw) = r
        .size
        .pick((2, 200, 10), (3, 2_000, 100), (7, 20_000, 1_000));
    let budget = r.size.budget();
    r.group(&format!(
        "pipe: Connection between two processes vs a raw socketpair, median of {reps}"
    ));
    let py_rt = r.cpython("mp_pipe.py", "py.pipe.rtt.bytes.duplex", 1e-6);
    let py_obj_rt = r.cpython("mp_pipe.py", "py.pipe.rtt.obj.duplex", 1e-6);
    let py_bw = r.cpython("mp_pipe.py", "py.pipe.bw1m.duplex", 1e6);
    for ends in r.placements() {
        let pinned = ends.enter()?;
        // In turns: ours and its references see the same moments of the machine.
        let [
            mut ours,
            mut typed,
            mut block,
            mut spin,
            mut ours_bw,
            mut raw_bw,
        ]: [Vec<f64>; 6] = Default::default();
        for _ in 0..reps {
            ours.push(round_trip(&ends, n_rt, budget, Message::Bytes)?);
            typed.push(round_trip(&ends, n_rt, budget, Message::TypedU64)?);
            block.push(raw::round_trip(&ends, Wait::Block, n_rt, budget)?);
            spin.push(raw::round_trip(&ends, Wait::Spin, n_rt, budget)?);
            ours_bw.push(bandwidth(&ends, n_bw, false)?);
            raw_bw.push(bandwidth(&ends, n_bw, true)?);
        }
        drop(pinned);
        let [ours, typed, block, spin, ours_bw, raw_bw] =
            [ours, typed, block, spin, ours_bw, raw_bw].map(Samples);
        r.section(&ends);
        r.row(
            "pipe",
            "round trip, 8 bytes: multiproc",
            Unit::Secs,
            &ours,
            &[
                ("raw spinning", Some(spin.median())),
                ("raw blocking", Some(block.median())),
                ("CPython", ends.unpinned(py_rt)),
            ],
        );
        r.row(
            "pipe",
            "round trip, typed u64: multiproc",
            Unit::Secs,
            &typed,
            &[
                ("raw blocking", Some(block.median())),
                ("CPython", ends.unpinned(py_obj_rt)),
            ],
        );
        for (name, s) in [
            ("round trip, 8 bytes: raw socketpair, spinning", &spin),
            ("round trip, 8 bytes: raw socketpair, blocking", &block),
        ] {
            r.row("pipe", name, Unit::Secs, s, &[]);
        }
        r.row(
            "pipe",
            "1 MiB messages: multiproc",
            Unit::Bandwidth,
            &ours_bw,
            &[
                ("raw socketpair", Some(raw_bw.median())),
                ("CPython", ends.unpinned(py_bw)),
            ],
        );
        r.row(
            "pipe",
            "1 MiB blocks: raw socketpair",
            Unit::Bandwidth,
            &raw_bw,
            &[],
        );
    }
    Ok(())
}
