//! The `pool` group: task throughput, `apply_async` round trip, default-chunked `map`, and
//! pool start-up, each next to its reference measured in the same run.

use std::time::Instant;

use multiproc::{Func, Pool, Process};

use super::pep::{crunch_primes, empty_func};
use super::report::{Report, Unit};
use super::stats::{Samples, repeat};

/// A trivial task.
#[multiproc::func]
pub(crate) fn ident(x: u64) -> u64 {
    x
}

/// Runs the group: throughput, latency and start-up next to references and CPython.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let reps = r.size.pick(2, 3, 5);
    let workers = multiproc::cpu_count().max(2);
    r.group(&format!("pool: {workers} workers, median of {reps}"));
    let pool = Pool::new(workers)?;
    let n1 = r.size.pick(2_000, 20_000, 100_000);
    // map, imap and imap_unordered at chunk size 1 in turns: streaming is compared with the
    // map of the same runs.
    let rate = |f: &mut dyn FnMut() -> multiproc::Result<()>| -> multiproc::Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(n1 as f64 / t.elapsed().as_secs_f64())
    };
    let (mut chunk1, mut imap1, mut unordered1) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        chunk1.push(rate(&mut || {
            pool.map_chunked(&ident, 0..n1, 1)?;
            Ok(())
        })?);
        imap1.push(rate(&mut || {
            pool.imap(&ident, 0..n1).try_for_each(|r| r.map(drop))?;
            Ok(())
        })?);
        unordered1.push(rate(&mut || {
            pool.imap_unordered(&ident, 0..n1)
                .try_for_each(|r| r.map(drop))?;
            Ok(())
        })?);
    }
    let (chunk1, imap1, unordered1) = (Samples(chunk1), Samples(imap1), Samples(unordered1));
    let n2 = r.size.pick(10_000, 100_000, 100_000);
    let chunked = repeat(reps, || {
        let t = Instant::now();
        pool.map(&ident, 0..n2)?;
        Ok(n2 as f64 / t.elapsed().as_secs_f64())
    })?;
    let rtn = r.size.pick(50, 500, 3000);
    // Taken in turns with a raw socketpair round trip: the machine's wake-up latency moves
    // between runs, and the ratio is what counts.
    let mut raw_rts = Vec::new();
    let rt = repeat(reps, || {
        raw_rts.extend(super::pipe::round_trips(1, rtn as u32, true)?.0);
        let t = Instant::now();
        for i in 0..rtn {
            pool.apply_async(&ident, i)?.get()?;
        }
        Ok(t.elapsed().as_secs_f64() / rtn as f64)
    })?;
    let raw_rt = Samples(raw_rts);
    let startup = repeat(reps, || {
        let t = Instant::now();
        let p = Pool::new(4)?;
        let s = t.elapsed().as_secs_f64();
        drop(p);
        Ok(s)
    })?;
    let spawn4 = repeat(reps, || {
        let t = Instant::now();
        let ps: Vec<Process<u64>> = (0..4)
            .map(|_| empty_func.spawn(()))
            .collect::<Result<_, _>>()?;
        for p in ps {
            p.join()?;
        }
        Ok(t.elapsed().as_secs_f64())
    })?;
    let limit = r.size.pick(5_000, 30_000, 100_000);
    let tasks = workers * 4;
    // Serial, threads and the pool in turns within each run: this shared VM has windows of
    // a few milliseconds where two busy CPUs run at half speed, and a run of each kind in a
    // row would put one of them in such a window and not the others.
    let (mut pool_x, mut threads_x) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(5) {
        let t = Instant::now();
        for _ in 0..tasks {
            std::hint::black_box(crunch_primes(limit));
        }
        let serial = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < tasks {
                        std::hint::black_box(crunch_primes(limit));
                    }
                });
            }
        });
        threads_x.push(serial / t.elapsed().as_secs_f64());
        let t = Instant::now();
        pool.map_chunked(&crunch_primes, std::iter::repeat_n(limit, tasks), 1)?;
        pool_x.push(serial / t.elapsed().as_secs_f64());
    }
    let (speedups, threads_x) = (Samples(pool_x), Samples(threads_x));
    pool.close();
    pool.join()?;
    let py = |r: &mut Report, name: &str, scale: f64| r.cpython("mp_pool.py", name, scale);
    let py_c1 = py(r, "py.pool.map100k.c1.fork", 1.0);
    let py_map = py(r, "py.pool.map100k.default.fork", 1.0);
    let py_rt = py(r, "py.pool.apply_async.fork", 1e-6);
    let py_start = py(r, "py.pool.startup.fork", 1e-6);
    let py_speedup = r.cpython("mp_primes.py", "py.primes.speedup.balanced.x1", 1.0);
    r.row(
        "pool",
        "trivial tasks, chunksize 1",
        Unit::Rate,
        &chunk1,
        &[("CPython", py_c1)],
    );
    for (name, samples) in [("imap", &imap1), ("imap_unordered", &unordered1)] {
        r.row(
            "pool",
            &format!("{name} of trivial tasks, chunksize 1"),
            Unit::Rate,
            samples,
            &[("map, chunksize 1, same runs", Some(chunk1.median()))],
        );
    }
    r.row(
        "pool",
        &format!("map of {n2} trivial tasks, default chunks"),
        Unit::Rate,
        &chunked,
        &[("CPython", py_map)],
    );
    r.row(
        "pool",
        "apply_async round trip",
        Unit::Secs,
        &rt,
        &[
            ("raw socketpair round trip", Some(raw_rt.median())),
            ("CPython", py_rt),
        ],
    );
    r.row(
        "pool",
        "raw socketpair round trip, 8 bytes",
        Unit::Secs,
        &raw_rt,
        &[],
    );
    let s4 = spawn4.median();
    r.row(
        "pool",
        "pool start-up, 4 workers",
        Unit::Secs,
        &startup,
        &[("4 spawns", Some(s4)), ("CPython Pool(), fork", py_start)],
    );
    r.row(
        "pool",
        &format!("crunch primes x{tasks}: speed-up on {workers} cores"),
        Unit::Factor,
        &speedups,
        &[
            ("ideal", Some(workers as f64)),
            ("threads in the same runs", Some(threads_x.median())),
            ("CPython", py_speedup),
        ],
    );
    Ok(())
}
