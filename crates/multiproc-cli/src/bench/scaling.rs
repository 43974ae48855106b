//! The `scaling` group: the same CPU-bound work (crunch primes over many blocks) serially,
//! on a multiproc `Pool`, a multiproc `ThreadPool` and `rayon`'s thread pool, each using every
//! core: what process isolation costs against the best in-process parallelism, and what the
//! thread pool's codec round trip costs against rayon.

use std::time::Instant;

use multiproc::{Pool, ThreadPool};
use rayon::prelude::*;

use super::pep::crunch_primes;
use super::report::{Report, Unit};
use super::stats::Samples;

/// Runs the group.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let reps = r.size.pick(1, 3, 5);
    let cpus = multiproc::cpu_count().max(1);
    let blocks = 8 * cpus;
    let limit = r.size.pick(3_000u64, 40_000, 120_000);
    r.group(&format!(
        "scaling: crunch primes below {limit}, {blocks} blocks, on {cpus} cores, median of {reps}"
    ));
    let work: Vec<u64> = vec![limit; blocks];
    let expected: u64 = work.iter().map(|&l| crunch_primes(l)).sum();
    let pool = Pool::new(cpus)?;
    let tpool = ThreadPool::new(cpus)?;
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cpus)
        .build()
        .map_err(|e| multiproc::Error::Io(std::io::Error::other(e.to_string())))?;
    // Serial, Pool and rayon in turns within each run (see benchmarks.md: this VM has short
    // windows where two busy CPUs run at half speed).
    let timed = |f: &mut dyn FnMut() -> multiproc::Result<u64>| -> multiproc::Result<f64> {
        let t = Instant::now();
        assert_eq!(f()?, expected);
        Ok(t.elapsed().as_secs_f64())
    };
    let (mut serial, mut procs, mut rayon) = (Vec::new(), Vec::new(), Vec::new());
    let mut threads = Vec::new();
    for _ in 0..reps {
        serial.push(timed(&mut || {
            Ok(work.iter().map(|&l| crunch_primes(l)).sum())
        })?);
        procs.push(timed(&mut || {
            Ok(pool
                .map_chunked(&crunch_primes, work.iter().copied(), 1)?
                .iter()
                .sum())
        })?);
        threads.push(timed(&mut || {
            Ok(tpool
                .map_chunked(&crunch_primes, work.iter().copied(), 1)?
                .iter()
                .sum())
        })?);
        rayon.push(timed(&mut || {
            Ok(rayon_pool.install(|| work.par_iter().map(|&l| crunch_primes(l)).sum()))
        })?);
    }
    drop(pool);
    drop(tpool);
    let (serial, procs, rayon) = (Samples(serial), Samples(procs), Samples(rayon));
    let threads = Samples(threads);
    let speedup = |s: &Samples| Samples(serial.0.iter().zip(&s.0).map(|(a, b)| a / b).collect());
    let (p, y) = (speedup(&procs), speedup(&rayon));
    let rayon_speedup = y.median();
    r.row("scaling", "serial", Unit::Secs, &serial, &[]);
    let rayon_time = rayon.median();
    r.row(
        "scaling",
        "multiproc Pool",
        Unit::Secs,
        &procs,
        &[("rayon", Some(rayon_time))],
    );
    r.row(
        "scaling",
        "multiproc ThreadPool",
        Unit::Secs,
        &threads,
        &[("rayon", Some(rayon_time))],
    );
    r.row("scaling", "rayon", Unit::Secs, &rayon, &[]);
    r.row(
        "scaling",
        "speed-up, multiproc Pool",
        Unit::Factor,
        &p,
        &[
            ("ideal", Some(cpus as f64)),
            ("rayon's speed-up", Some(rayon_speedup)),
        ],
    );
    r.row(
        "scaling",
        "speed-up, multiproc ThreadPool",
        Unit::Factor,
        &speedup(&threads),
        &[
            ("ideal", Some(cpus as f64)),
            ("rayon's speed-up", Some(rayon_speedup)),
        ],
    );
    r.row(
        "scaling",
        "speed-up, rayon",
        Unit::Factor,
        &y,
        &[("ideal", Some(cpus as f64))],
    );
    Ok(())
}
