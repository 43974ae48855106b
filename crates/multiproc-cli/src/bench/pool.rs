//! The `pool` group: task throughput, `apply_async` round trip, default-chunked `map`, and
//! pool start-up, each next to its reference measured in the same run.

use std::time::Instant;

use multiproc::{Func, Pool, Process};

use super::pep::{crunch_primes, empty_func};
use super::stats::{Samples, human, ratio, repeat};

/// A trivial task.
#[multiproc::func]
pub(crate) fn ident(x: u64) -> u64 {
    x
}

/// Runs the group and prints it.
pub(crate) fn run(quick: bool) -> multiproc::Result<()> {
    let reps = if quick { 3 } else { 5 };
    let workers = multiproc::cpu_count().max(2);
    println!("\n== pool: {workers} workers, median of {reps} ==");
    let pool = Pool::new(workers)?;
    let n1 = if quick { 20_000 } else { 100_000 };
    let chunk1 = repeat(reps, || {
        let t = Instant::now();
        pool.map_chunked(&ident, 0..n1, 1)?;
        Ok(n1 as f64 / t.elapsed().as_secs_f64())
    })?;
    let n2 = 100_000u64;
    let chunked = repeat(reps, || {
        let t = Instant::now();
        pool.map(&ident, 0..n2)?;
        Ok(n2 as f64 / t.elapsed().as_secs_f64())
    })?;
    let rtn = if quick { 500 } else { 3000 };
    let rt = repeat(reps, || {
        let t = Instant::now();
        for i in 0..rtn {
            pool.apply_async(&ident, i)?.get()?;
        }
        Ok(t.elapsed().as_secs_f64() / rtn as f64)
    })?;
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
    let limit = if quick { 30_000 } else { 100_000 };
    let serial = repeat(reps, || {
        let t = Instant::now();
        for _ in 0..workers * 4 {
            std::hint::black_box(crunch_primes(limit));
        }
        Ok(t.elapsed().as_secs_f64())
    })?;
    let parallel = repeat(reps, || {
        let t = Instant::now();
        pool.map_chunked(&crunch_primes, std::iter::repeat_n(limit, workers * 4), 1)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let k = |s: &Samples| format!("{:.0} k/s", s.median() / 1e3);
    println!("{:<48} {:>12} {:>22}", "what", "median", "reference");
    println!(
        "{:<48} {:>12} {:>22}",
        "trivial tasks, chunksize 1",
        k(&chunk1),
        "CPython ~41 k/s"
    );
    println!(
        "{:<48} {:>12} {:>22}",
        "map of 100k trivial tasks, default chunks",
        format!("{:.2} M/s", chunked.median() / 1e6),
        "CPython ~5.9 M/s"
    );
    println!(
        "{:<48} {:>12} {:>22}",
        "apply_async round trip",
        human(rt.median()),
        "CPython ~190 µs"
    );
    println!(
        "{:<48} {:>12} {:>22}",
        "pool start-up, 4 workers",
        human(startup.median()),
        format!(
            "{:.2}x 4 spawns ({})",
            ratio(startup.median(), spawn4.median()),
            human(spawn4.median())
        )
    );
    let speedup = serial.median() / parallel.median();
    println!(
        "{:<48} {:>12} {:>22}",
        format!("crunch primes x{}, serial vs pool", workers * 4),
        format!("{speedup:.2}x"),
        format!(
            "{:.0}% of {workers} cores",
            100.0 * speedup / workers as f64
        )
    );
    pool.close();
    pool.join()?;
    Ok(())
}
