//! The `remote_queue` example: a served manager over TCP and workers, each a separate
//! command, as on separate machines.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Reaped, eventually, example};

const KEY: &str = "remote queue test key";

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(example("remote_queue"));
    cmd.args(args)
        .env("MULTIPROC_AUTHKEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The example's server on a free loopback port, the address it printed, and its output
/// (kept open: the server prints again when it stops).
fn serve() -> (Reaped, String, BufReader<std::process::ChildStdout>) {
    let mut server = Reaped(
        command(&["serve", "--address", "127.0.0.1:0"])
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("serving on ")
        .expect("serving line")
        .to_string();
    (server, address, out)
}

#[test]
fn server_workers_and_submitter_as_separate_commands() {
    let (mut server, address, _out) = serve();
    let workers: Vec<Reaped> = (0..3)
        .map(|_| Reaped(command(&["worker", "--address", &address]).spawn().unwrap()))
        .collect();
    let submit = command(&[
        "submit",
        "--address",
        &address,
        "--jobs",
        "120",
        "--workers",
        "3",
        "--shutdown",
    ])
    .output()
    .unwrap();
    let submitted = common::stdout_of(submit);
    let expected: u64 = (0..120u64)
        .map(|id| {
            let limit = 1000 + id * 10;
            (2..limit)
                .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
                .count() as u64
        })
        .sum();
    assert_eq!(
        submitted.trim(),
        format!("120 jobs done, {expected} primes in all")
    );
    let mut done = 0;
    for mut w in workers {
        let out = std::mem::replace(&mut w.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        let text = common::stdout_of(out);
        done += text
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse::<u64>().ok())
            .expect("worker summary");
    }
    assert_eq!(done, 120, "every job done exactly once");
    // The submitter's shutdown stops the server cleanly.
    assert!(eventually(Duration::from_secs(20), || matches!(
        server.0.try_wait(),
        Ok(Some(_))
    )));
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn a_worker_with_the_wrong_key_is_refused() {
    let (_server, address, _out) = serve();
    let worker = command(&["worker", "--address", &address])
        .env("MULTIPROC_AUTHKEY", "not the key")
        .output()
        .unwrap();
    assert!(!worker.status.success());
    let err = String::from_utf8_lossy(&worker.stderr);
    assert!(
        err.contains("authentication") || err.contains("digest"),
        "{err}"
    );
}
