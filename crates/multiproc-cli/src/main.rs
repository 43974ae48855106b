//! `multiproc`: the command-line companion of the library.
//!
//! ```text
//! multiproc bench [--quick | --full] [--no-python] [--json FILE] [--chart FILE.svg] [--group NAME]...
//! multiproc manager serve --address ADDR [--authkey-env VAR | --authkey-file PATH]
//! multiproc cluster status --redis URL [--queue NAME]
//! ```

mod bench;
mod cluster;
mod serve;

use std::process::ExitCode;

const USAGE: &str = "usage: multiproc bench [--quick | --full] [--no-python] [--json FILE] [--chart FILE.svg] [--group NAME]...
       multiproc manager serve --address ADDR [--authkey-env VAR | --authkey-file PATH]
         serves a manager (dicts, queues, locks, ... by name) until SIGINT/SIGTERM or a
         client's shutdown; the authkey comes from $MULTIPROC_AUTHKEY by default
       multiproc cluster status --redis URL [--queue NAME]
         live workers, waiting, in-flight and dead-lettered tasks of a cluster queue
  with no option: every group in quick mode (well under a minute on 2 cores), CPython
  peers included when python3 is present
groups: empty, fib, primes, fileio, url (the PEP 371 tables: serial / threads / processes),
        spawn (start methods vs the OS), pipe (Connection vs a raw socketpair),
        queue (Queue vs a raw pipe, locks vs a raw futex), pool (Pool throughput and latency),
        manager (proxy operations and start-up), scaling (Pool vs rayon on every core),
        cluster (the Pool API through Redis Streams vs a raw Redis round trip)";

#[multiproc::main]
fn main() -> ExitCode {
    // `multiproc --mp-worker URL`: a cluster worker for the bench's tasks.
    multiproc_cluster::run_worker_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => match bench::Options::parse(&args[1..]) {
            Ok(opts) => match bench::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("multiproc bench: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(msg) => {
                eprintln!("{msg}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("manager") if args.get(1).map(String::as_str) == Some("serve") => {
            match serve::Options::parse(&args[2..]) {
                Ok(opts) => match serve::run(&opts) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("multiproc manager serve: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(msg) => {
                    eprintln!("{msg}\n{USAGE}");
                    ExitCode::from(2)
                }
            }
        }
        Some("cluster") if args.get(1).map(String::as_str) == Some("status") => {
            match cluster::parse(&args[2..]) {
                Ok((url, queue)) => match cluster::status(&url, &queue) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("multiproc cluster status: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("multiproc cluster status: {e}\n{USAGE}");
                    ExitCode::from(2)
                }
            }
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
