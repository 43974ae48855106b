//! The `pool` group: task throughput, `apply_async` round trip and default-chunked `map` in
//! each CPU placement (the round trip next to a raw socketpair round trip, blocking and
//! spinning, in the same placement); pool start-up and the crunch-primes speed-up on every
//! core, unpinned.

use std::time::{Duration, Instant};

use multiproc::{Func, Pool, Process, ThreadPool};

use super::pep::{crunch_primes, empty_func};
use super::place::{Ends, Placement, pin_worker};
use super::raw::{self, Wait};
use super::report::{Report, Unit};
use super::stats::{Samples, per_call, repeat};

/// A trivial task.
#[multiproc::func]
pub(crate) fn ident(x: u64) -> u64 {
    x
}

/// The figures of one placement.
struct Placed {
    chunk1: Samples,
    imap1: Samples,
    unordered1: Samples,
    chunked: Samples,
    rt: Samples,
    raw_block: Samples,
    raw_spin: Samples,
}

/// Measures `pool` (its handler threads on `ends.here`, its workers on `ends.there`).
fn placed(
    pool: &Pool,
    ends: &Ends,
    reps: usize,
    (n1, n2, rtn): (u64, u64, u32),
    budget: Duration,
) -> multiproc::Result<Placed> {
    // map, imap and imap_unordered at chunk size 1 in turns: streaming is compared with the
    // map of the same runs.
    let rate = |n: u64, f: &mut dyn FnMut() -> multiproc::Result<()>| {
        let t = Instant::now();
        f()?;
        Ok::<_, multiproc::Error>(n as f64 / t.elapsed().as_secs_f64())
    };
    let [mut chunk1, mut imap1, mut unordered1, mut chunked]: [Vec<f64>; 4] = Default::default();
    let [mut rt, mut raw_block, mut raw_spin]: [Vec<f64>; 3] = Default::default();
    for _ in 0..reps {
        chunk1.push(rate(n1, &mut || {
            pool.map_chunked(&ident, 0..n1, 1)?;
            Ok(())
        })?);
        imap1.push(rate(n1, &mut || {
            pool.imap(&ident, 0..n1).try_for_each(|r| r.map(drop))?;
            Ok(())
        })?);
        unordered1.push(rate(n1, &mut || {
            pool.imap_unordered(&ident, 0..n1)
                .try_for_each(|r| r.map(drop))?;
            Ok(())
        })?);
        chunked.push(rate(n2, &mut || {
            pool.map(&ident, 0..n2)?;
            Ok(())
        })?);
        // In turns with the raw round trips: the machine's wake-up latency moves between
        // runs, and the ratios are what count.
        raw_block.push(raw::round_trip(ends, Wait::Block, rtn, budget)?);
        raw_spin.push(raw::round_trip(ends, Wait::Spin, rtn, budget)?);
        rt.push(per_call(rtn, budget, |i| -> multiproc::Result<()> {
            pool.apply_async(&ident, u64::from(i))?.get()?;
            Ok(())
        })?);
    }
    Ok(Placed {
        chunk1: Samples(chunk1),
        imap1: Samples(imap1),
        unordered1: Samples(unordered1),
        chunked: Samples(chunked),
        rt: Samples(rt),
        raw_block: Samples(raw_block),
        raw_spin: Samples(raw_spin),
    })
}

/// The figures with no placement to choose: start-up, and a speed-up on every core.
struct Unplaced {
    startup: Samples,
    spawn4: Samples,
    tasks: usize,
    speedups: Samples,
    threads_x: Samples,
    /// The thread pool beside rayon: trivial tasks one per task, and a round trip.
    tp_chunk1: Samples,
    rayon_chunk1: Samples,
    pool_chunk1: Samples,
    tp_rt: Samples,
    rayon_rt: Samples,
}

/// The thread pool and rayon in turns (with the process pool's chunksize-1 map in the same
/// runs): trivial-task throughput and a submit-and-wait round trip.
fn threads_beside_rayon(
    pool: &Pool,
    workers: usize,
    reps: usize,
    (n1, rtn): (u64, u32),
    budget: Duration,
) -> multiproc::Result<[Samples; 5]> {
    let tp = ThreadPool::new(workers)?;
    let ry = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| multiproc::Error::Io(std::io::Error::other(e.to_string())))?;
    let rate = |f: &mut dyn FnMut() -> multiproc::Result<()>| {
        let t = Instant::now();
        f()?;
        Ok::<_, multiproc::Error>(n1 as f64 / t.elapsed().as_secs_f64())
    };
    let mut out: [Vec<f64>; 5] = Default::default();
    for _ in 0..reps {
        out[0].push(rate(&mut || {
            tp.map_chunked(&ident, 0..n1, 1)?;
            Ok(())
        })?);
        out[1].push(rate(&mut || {
            use rayon::prelude::*;
            let v: Vec<usize> = ry.install(|| {
                (0..n1 as usize)
                    .into_par_iter()
                    .with_max_len(1)
                    .map(std::hint::black_box)
                    .collect()
            });
            std::hint::black_box(v);
            Ok(())
        })?);
        out[2].push(rate(&mut || {
            pool.map_chunked(&ident, 0..n1, 1)?;
            Ok(())
        })?);
        out[3].push(per_call(rtn, budget, |i| -> multiproc::Result<()> {
            tp.apply_async(&ident, u64::from(i))?.get()?;
            Ok(())
        })?);
        let (tx, rx) = std::sync::mpsc::channel();
        out[4].push(per_call(rtn, budget, |i| -> multiproc::Result<()> {
            let tx = tx.clone();
            ry.spawn(move || {
                let _ = tx.send(std::hint::black_box(u64::from(i)));
            });
            rx.recv()
                .map_err(|e| multiproc::Error::Io(std::io::Error::other(e.to_string())))?;
            Ok(())
        })?);
    }
    Ok(out.map(Samples))
}

fn unplaced(r: &Report, pool: &Pool, workers: usize, reps: usize) -> multiproc::Result<Unplaced> {
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
    let budget = r.size.budget();
    let n1 = r.size.pick(2_000, 20_000, 100_000);
    let rtn = r.size.pick(50, 500, 3000);
    let [tp_chunk1, rayon_chunk1, pool_chunk1, tp_rt, rayon_rt] =
        threads_beside_rayon(pool, workers, reps, (n1, rtn), budget)?;
    Ok(Unplaced {
        startup,
        spawn4,
        tasks,
        speedups: Samples(pool_x),
        threads_x: Samples(threads_x),
        tp_chunk1,
        rayon_chunk1,
        pool_chunk1,
        tp_rt,
        rayon_rt,
    })
}

/// Runs the group: throughput and latency in each placement next to references (and
/// CPython, unpinned), start-up and speed-up unpinned.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let reps = r.size.pick(2, 3, 5);
    let workers = multiproc::cpu_count().max(2);
    let sizes = (
        r.size.pick(2_000, 20_000, 100_000),
        r.size.pick(10_000, 100_000, 100_000),
        r.size.pick(50, 500, 3000),
    );
    let budget = r.size.budget();
    r.group(&format!("pool: {workers} workers, median of {reps}"));
    let py = |r: &mut Report, name: &str, scale: f64| r.cpython("mp_pool.py", name, scale);
    let py_c1 = py(r, "py.pool.map100k.c1.fork", 1.0);
    let py_map = py(r, "py.pool.map100k.default.fork", 1.0);
    let py_rt = py(r, "py.pool.apply_async.fork", 1e-6);
    let py_start = py(r, "py.pool.startup.fork", 1e-6);
    let py_speedup = r.cpython("mp_primes.py", "py.primes.speedup.balanced.x1", 1.0);
    for ends in r.placements() {
        let pinned = ends.enter()?;
        // The pool's handler threads take this thread's CPUs (built after pinning); its
        // workers pin themselves.
        let pool = Pool::builder()
            .processes(workers)
            .initializer(&pin_worker, ends.there)
            .build()?;
        let f = placed(&pool, &ends, reps, sizes, budget)?;
        let rest = match ends.placement {
            Placement::Unpinned => Some(unplaced(r, &pool, workers, reps)?),
            _ => None,
        };
        pool.close();
        pool.join()?;
        drop(pinned);
        r.section(&ends);
        r.row(
            "pool",
            "trivial tasks, chunksize 1",
            Unit::Rate,
            &f.chunk1,
            &[("CPython", ends.unpinned(py_c1))],
        );
        for (name, samples) in [("imap", &f.imap1), ("imap_unordered", &f.unordered1)] {
            r.row(
                "pool",
                &format!("{name} of trivial tasks, chunksize 1"),
                Unit::Rate,
                samples,
                &[("map, chunksize 1, same runs", Some(f.chunk1.median()))],
            );
        }
        r.row(
            "pool",
            &format!("map of {} trivial tasks, default chunks", sizes.1),
            Unit::Rate,
            &f.chunked,
            &[("CPython", ends.unpinned(py_map))],
        );
        r.row(
            "pool",
            "apply_async round trip",
            Unit::Secs,
            &f.rt,
            &[
                ("raw spinning RT", Some(f.raw_spin.median())),
                ("raw blocking RT", Some(f.raw_block.median())),
                ("CPython", ends.unpinned(py_rt)),
            ],
        );
        for (name, s) in [
            ("raw socketpair RT, 8 bytes, spinning", &f.raw_spin),
            ("raw socketpair RT, 8 bytes, blocking", &f.raw_block),
        ] {
            r.row("pool", name, Unit::Secs, s, &[]);
        }
        if let Some(u) = rest {
            r.row(
                "pool",
                "pool start-up, 4 workers",
                Unit::Secs,
                &u.startup,
                &[
                    ("4 spawns", Some(u.spawn4.median())),
                    ("CPython Pool(), fork", py_start),
                ],
            );
            r.row(
                "pool",
                &format!("crunch primes x{}: speed-up on {workers} cores", u.tasks),
                Unit::Factor,
                &u.speedups,
                &[
                    ("ideal", Some(workers as f64)),
                    ("threads in the same runs", Some(u.threads_x.median())),
                    ("CPython", py_speedup),
                ],
            );
            r.row(
                "pool",
                "ThreadPool: trivial tasks, chunksize 1",
                Unit::Rate,
                &u.tp_chunk1,
                &[
                    ("rayon, one item per task", Some(u.rayon_chunk1.median())),
                    ("process Pool, same runs", Some(u.pool_chunk1.median())),
                ],
            );
            r.row(
                "pool",
                "rayon: trivial tasks, one item per task",
                Unit::Rate,
                &u.rayon_chunk1,
                &[],
            );
            r.row(
                "pool",
                "ThreadPool: apply_async round trip",
                Unit::Secs,
                &u.tp_rt,
                &[
                    ("rayon spawn + channel", Some(u.rayon_rt.median())),
                    ("process Pool", Some(f.rt.median())),
                ],
            );
            r.row(
                "pool",
                "rayon: spawn + channel round trip",
                Unit::Secs,
                &u.rayon_rt,
                &[],
            );
        }
    }
    Ok(())
}
