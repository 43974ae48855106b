//! The `manager` group: dict operations through a proxy next to a raw socket round trip
//! between two processes (the floor for any request/reply), manager start-up next to a
//! process spawn, and both next to CPython's `Manager()`.

use std::time::Instant;

use multiproc::manager::{LockProxy, Manager, ValueProxy};
use multiproc::{Func, Process};

use super::pep::empty_func;
use super::python::{self, Figures};
use super::stats::{Samples, human, ratio, repeat};

/// Child side of the contended counter: `n` increments under the proxy lock.
#[multiproc::func]
pub(crate) fn locked_increments(lock: LockProxy, total: ValueProxy<u64>, n: u32) {
    for _ in 0..n {
        let _held = lock.lock().expect("lock");
        total.set(&(total.get().expect("get") + 1)).expect("set");
    }
}

/// Child side of the busy-polling raw round trip: polls (without sleeping) before each
/// read, as the manager's connection threads do.
#[multiproc::func]
pub(crate) fn raw_spin_echo(fd: multiproc::Fd, n: u32) {
    use std::io::{Read, Write};
    let mut sock = std::fs::File::from(fd.into_owned());
    let mut buf = [0u8; 8];
    for _ in 0..n {
        busy_poll(&sock);
        sock.read_exact(&mut buf).expect("read");
        sock.write_all(&buf).expect("write");
    }
}

/// Polls `sock` until readable, without sleeping.
fn busy_poll(sock: &std::fs::File) {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    while nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(1) == 0 {
        std::hint::spin_loop();
    }
}

/// Seconds per round trip of 8 bytes over a raw socketpair whose both ends busy-poll.
fn raw_spin_round_trips(reps: usize, n: u32) -> multiproc::Result<Samples> {
    use std::io::{Read, Write};
    repeat(reps, || {
        let (a, b) = multiproc::pipe(true)?;
        let mut ours = std::fs::File::from(std::os::fd::OwnedFd::from(a));
        let theirs = multiproc::Fd::from(std::os::fd::OwnedFd::from(b));
        let p = raw_spin_echo.spawn((theirs, n + 200))?;
        let mut buf = [7u8; 8];
        let mut once = |ours: &mut std::fs::File| -> std::io::Result<()> {
            ours.write_all(&buf)?;
            busy_poll(ours);
            ours.read_exact(&mut buf)
        };
        for _ in 0..200 {
            once(&mut ours)?;
        }
        let t = Instant::now();
        for _ in 0..n {
            once(&mut ours)?;
        }
        let secs = t.elapsed().as_secs_f64() / f64::from(n);
        p.join()?;
        Ok(secs)
    })
}

/// Seconds per operation over `n` operations, for each of `reps` runs.
fn per_op(reps: usize, n: u32, mut op: impl FnMut(u32)) -> Samples {
    for i in 0..n.min(200) {
        op(i);
    }
    Samples(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for i in 0..n {
                    op(i);
                }
                t.elapsed().as_secs_f64() / f64::from(n)
            })
            .collect(),
    )
}

fn cpython(figures: &Result<Figures, String>, name: &str, scale: f64) -> Option<f64> {
    figures
        .as_ref()
        .ok()
        .and_then(|f| f.get(name))
        .map(|(v, _)| v * scale)
}

/// Runs the group and prints it.
pub(crate) fn run(quick: bool, with_python: bool) -> multiproc::Result<()> {
    let (reps, n, starts, incs) = if quick {
        (3, 2_000, 5, 2_000)
    } else {
        (7, 20_000, 20, 10_000)
    };
    println!("\n== manager: proxy operations and start-up, median of {reps} (min..max) ==");
    let mgr = Manager::start()?;
    let d = mgr.dict::<String, u64>()?;
    let key = "k".to_string();
    let mut failed = None;
    let set = per_op(reps, n, |i| {
        if let Err(e) = d.set(&key, &u64::from(i)) {
            failed = Some(e);
        }
    });
    let get = per_op(reps, n, |_| {
        if let Err(e) = d.get(&key) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let raw = super::pipe::round_trips(reps, n, true)?;
    let raw_spin = raw_spin_round_trips(reps, n)?;
    let start = Samples::measure(starts, 1, || {
        let m = Manager::start().and_then(|m| m.shutdown());
        assert!(m.is_ok(), "manager start: {m:?}");
    });
    let spawn = Samples::measure(starts, 1, || {
        let r = Process::builder()
            .start(&empty_func, ())
            .and_then(|p| p.join());
        assert!(r.is_ok(), "spawn: {r:?}");
    });
    let inc = repeat(reps.min(3), || {
        let lock = mgr.lock()?;
        let total = mgr.value(&0u64)?;
        let t = Instant::now();
        let kids = (0..2)
            .map(|_| locked_increments.spawn((lock.clone(), total.clone(), incs)))
            .collect::<Result<Vec<_>, _>>()?;
        for k in kids {
            k.join()?;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(total.get()?, u64::from(incs) * 2, "lost increments");
        Ok(f64::from(incs) * 2.0 / secs)
    })?;
    drop(d);
    mgr.shutdown()?;
    let py = python::run("mp_manager.py", quick, with_python);

    println!("{:<36} {:>10} {:>22}   ratio", "what", "median", "min..max");
    let row = |name: &str, s: &Samples, note: String| {
        println!(
            "{name:<36} {:>10} {:>22}   {note}",
            human(s.median()),
            format!("{}..{}", human(s.min()), human(s.max()))
        );
    };
    let vs_py = |ours: f64, name: &str| match cpython(&py, name, 1e-6) {
        Some(p) => format!(", CPython {} = {:.1}x slower", human(p), ratio(p, ours)),
        None => String::new(),
    };
    for (name, s, py_name) in [
        ("dict set through a proxy", &set, "py.mgr.dict.set.fork"),
        ("dict get through a proxy", &get, "py.mgr.dict.get.fork"),
    ] {
        row(
            name,
            s,
            format!(
                "{:.2}x raw busy-poll RT, {:.2}x raw blocking RT{}",
                ratio(s.median(), raw_spin.median()),
                ratio(s.median(), raw.median()),
                vs_py(s.median(), py_name)
            ),
        );
    }
    row(
        "raw socketpair RT, busy-poll",
        &raw_spin,
        "1.00x (OS)".into(),
    );
    row("raw socketpair RT, blocking", &raw, "1.00x (OS)".into());
    row(
        "Manager::start + shutdown",
        &start,
        format!(
            "{:.2}x spawn+join ({}){}",
            ratio(start.median(), spawn.median()),
            multiproc::get_start_method(),
            vs_py(start.median(), "py.mgr.startup.fork")
        ),
    );
    row("process spawn + join (empty)", &spawn, "1.00x".into());
    let rate = inc.median();
    let py_inc = cpython(&py, "py.mgr.value.inc2p", 1.0)
        .map(|p| format!(", CPython {p:.0}/s = {:.1}x slower", ratio(rate, p)))
        .unwrap_or_default();
    println!(
        "{:<36} {:>10} {:>22}   2 processes{py_inc}",
        "counter += 1 under a proxy lock",
        format!("{rate:.0}/s"),
        format!("{:.0}..{:.0}/s", inc.min(), inc.max()),
    );
    if let Err(note) = py {
        println!("note: {note}");
    }
    Ok(())
}
