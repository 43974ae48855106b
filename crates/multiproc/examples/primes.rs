//! The PEP 371 `crunch_primes` benchmark in processes: the sum of all primes below a limit,
//! split into ranges, one process per range.
//!
//! `cargo run --release --example primes -- [LIMIT] [PROCESSES]`

use std::time::Instant;

use multiproc::{Func, Process};

/// Sum of the primes in `[lo, hi)`, by trial division (as the PEP's version).
#[multiproc::func]
fn sum_primes(lo: u64, hi: u64) -> u64 {
    (lo.max(2)..hi)
        .filter(|&n| {
            (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
        })
        .sum()
}

#[multiproc::main]
fn main() -> multiproc::Result<()> {
    let mut args = std::env::args().skip(1);
    let limit: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let workers: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(multiproc::cpu_count() as u64);

    let t = Instant::now();
    let serial = sum_primes(2, limit);
    let serial_time = t.elapsed();

    let t = Instant::now();
    let step = limit.div_ceil(workers);
    let procs: Vec<Process<u64>> = (0..workers)
        .map(|i| sum_primes.spawn((i * step, ((i + 1) * step).min(limit))))
        .collect::<Result<_, _>>()?;
    let mut total = 0;
    for p in procs {
        total += p.join()?;
    }
    let parallel_time = t.elapsed();

    assert_eq!(total, serial);
    println!("sum of primes below {limit}: {total}");
    println!("serial: {serial_time:.2?}   {workers} processes: {parallel_time:.2?}");
    Ok(())
}
