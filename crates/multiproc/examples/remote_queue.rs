//! The PEP 371 pattern of a queue served on one machine and workers on many: one server,
//! N workers and a submitter, each started as a separate command, talking through a
//! manager over TCP.
//!
//! ```text
//! export MULTIPROC_AUTHKEY=change-me
//! cargo run --example remote_queue -- serve --address 0.0.0.0:5000      # machine A
//! cargo run --example remote_queue -- worker --address A:5000            # machines B, C, ...
//! cargo run --example remote_queue -- submit --address A:5000 --jobs 100 --workers 2 --shutdown
//! ```
//!
//! The server holds a joinable queue of jobs (`"jobs"`) and a queue of results
//! (`"results"`). Workers take jobs until they get a stop marker; the submitter puts jobs,
//! waits until every one is done (`join`), collects the results, then sends one stop
//! marker per worker (and with `--shutdown` stops the server).
//!
//! `multiproc manager serve --address ...` serves the same way without this example's code.

use std::process::ExitCode;

use multiproc::ManagerError;
use multiproc::manager::{JoinableQueueProxy, Manager, QueueProxy};
use serde::{Deserialize, Serialize};

/// One unit of work: count the primes below `limit`.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
    limit: u64,
}

fn primes_below(limit: u64) -> u64 {
    (2..limit)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count() as u64
}

/// Jobs, and `None` to stop a worker.
type Jobs = JoinableQueueProxy<Option<Job>>;
/// `(job id, primes counted)`.
type Results = QueueProxy<(u64, u64)>;

/// The two shared queues, created by whoever comes first.
fn queues(mgr: &Manager) -> Result<(Jobs, Results), ManagerError> {
    let jobs = mgr.lookup_or_publish("jobs", |m| m.joinable_queue())?;
    let results = mgr.lookup_or_publish("results", |m| m.queue())?;
    Ok((jobs, results))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn authkey() -> Result<Vec<u8>, String> {
    std::env::var("MULTIPROC_AUTHKEY")
        .map(String::into_bytes)
        .map_err(|_| "set MULTIPROC_AUTHKEY to the shared key".to_string())
}

fn run(args: &[String]) -> Result<(), String> {
    let mode = args.first().map(String::as_str).unwrap_or("");
    let address = arg(args, "--address").ok_or("--address is required")?;
    let key = authkey()?;
    let err = |e: ManagerError| e.to_string();
    match mode {
        "serve" => {
            let server = Manager::serve(address.as_str(), &key).map_err(err)?;
            println!("serving on {}", server.address());
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
            server.wait();
            println!("stopped");
        }
        "worker" => {
            let mgr = Manager::connect(address.as_str(), &key).map_err(err)?;
            let (jobs, results) = queues(&mgr).map_err(err)?;
            let mut done = 0;
            while let Some(job) = jobs.get().map_err(err)? {
                results
                    .put(&(job.id, primes_below(job.limit)))
                    .map_err(err)?;
                jobs.task_done().map_err(err)?;
                done += 1;
            }
            jobs.task_done().map_err(err)?;
            println!("worker {} did {done} jobs", std::process::id());
        }
        "submit" => {
            let n: u64 = arg(args, "--jobs")
                .unwrap_or_else(|| "100".into())
                .parse()
                .map_err(|_| "--jobs takes a number")?;
            let workers: u64 = arg(args, "--workers")
                .unwrap_or_else(|| "1".into())
                .parse()
                .map_err(|_| "--workers takes a number")?;
            let mgr = Manager::connect(address.as_str(), &key).map_err(err)?;
            let (jobs, results) = queues(&mgr).map_err(err)?;
            for id in 0..n {
                jobs.put(&Some(Job {
                    id,
                    limit: 1000 + id * 10,
                }))
                .map_err(err)?;
            }
            jobs.join().map_err(err)?;
            let mut total = 0;
            for _ in 0..n {
                total += results.get().map_err(err)?.1;
            }
            for _ in 0..workers {
                jobs.put(&None).map_err(err)?;
            }
            println!("{n} jobs done, {total} primes in all");
            if args.iter().any(|a| a == "--shutdown") {
                jobs.join().map_err(err)?;
                mgr.shutdown().map_err(err)?;
            }
        }
        _ => return Err("usage: remote_queue serve|worker|submit --address ADDR".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remote_queue: {e}");
            ExitCode::FAILURE
        }
    }
}
