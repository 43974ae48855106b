//! Counting primes on a cluster: the same binary is the head (client) and, with
//! `--mp-worker`, a worker on any number of machines.
//!
//! ```text
//! # on the head machine (or anywhere): a Redis, reachable by every machine
//! redis-server --bind 0.0.0.0 --protected-mode no --save '' &
//! export MULTIPROC_AUTHKEY=change-me
//! # on every worker machine (N local processes each, default: its CPU count)
//! ./cluster_primes --mp-worker redis://head:6379/ --queue primes
//! # on the head
//! ./cluster_primes --redis redis://head:6379/ --queue primes --limit 2000000
//! multiproc cluster status --redis redis://head:6379/ --queue primes
//! ```
//!
//! Without persistence (`--save ''`) a Redis restart loses the queue: the head notices
//! within its broker check (10 s) and submits the lost blocks again; `docs/cluster.md` says what
//! each persistence setting means for the tasks.
//!
//! The head splits `0..limit` into blocks of 10,000 numbers, maps `count_primes` over them
//! through the cluster, and prints the total with the workers that took part.

use std::process::ExitCode;
use std::time::Instant;

use multiproc_cluster::ClusterPool;

/// Primes in `[from, to)`.
#[multiproc::func]
fn count_primes(from: u64, to: u64) -> u64 {
    (from.max(2)..to)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count() as u64
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run(args: &[String]) -> Result<(), String> {
    let url = arg(args, "--redis").ok_or("--redis URL is required (or --mp-worker URL)")?;
    let queue = arg(args, "--queue").unwrap_or_else(|| "primes".into());
    let limit: u64 = arg(args, "--limit")
        .unwrap_or_else(|| "1000000".into())
        .parse()
        .map_err(|_| "--limit takes a number")?;
    let key = std::env::var("MULTIPROC_AUTHKEY").map_err(|_| "set MULTIPROC_AUTHKEY")?;
    let pool = ClusterPool::connect(&url, &queue, key.as_bytes()).map_err(|e| e.to_string())?;
    let blocks: Vec<(u64, u64)> = (0..limit)
        .step_by(10_000)
        .map(|a| (a, (a + 10_000).min(limit)))
        .collect();
    let t = Instant::now();
    let counts = pool
        .map_chunked(&count_primes, blocks, 4)
        .map_err(|e| e.to_string())?;
    let total: u64 = counts.iter().sum();
    println!(
        "{total} primes below {limit} in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let st = multiproc_cluster::status(&url, &queue).map_err(|e| e.to_string())?;
    for w in st.workers {
        println!("  worker {}: {} tasks done", w.id, w.done);
    }
    Ok(())
}

#[multiproc::main]
fn main() -> ExitCode {
    multiproc_cluster::run_worker_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster_primes: {e}");
            ExitCode::FAILURE
        }
    }
}
