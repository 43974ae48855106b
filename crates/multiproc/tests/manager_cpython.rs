//! CPython's manager protocol, driven by the machine's `python3` with stock
//! `multiprocessing.managers` code: its `SyncManager` clients against our server (every
//! type id and method, blocking calls with time-outs, locks of killed clients, hostile
//! pickles), and sharing objects with Rust clients. Without `python3` these tests skip
//! with a message, except under `CI=true`.
#![cfg(target_os = "linux")]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::manager::{DictProxy, Manager, PyValue, QueueProxy};

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import multiprocessing.managers")
        .status();
    match ok {
        Ok(s) if s.success() => Some("python3"),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 is required under CI=true"
            );
            eprintln!("skipping: python3 with multiprocessing is not available");
            None
        }
    }
}

/// The helpers every script starts with: `connect()` to the manager named by argv.
const PRELUDE: &str = r#"
import sys, time, queue, threading, os
from multiprocessing.managers import SyncManager, BaseManager
def connect(cls=SyncManager):
    host, port = sys.argv[1].rsplit(':', 1)
    m = cls(address=(host, int(port)), authkey=sys.argv[2].encode())
    m.connect()
    return m
"#;

/// Runs `script` (after the prelude) against `address` with `key`.
fn spawn_py(py: &str, script: &str, address: &str, key: &str) -> Child {
    Command::new(py)
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .args([address, key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3")
}

/// Waits (at most 60 s) for `child`: whether it succeeded, its stdout and stderr.
fn finish(mut child: Child) -> (bool, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// Runs `script` to its end and asserts it succeeded; its stdout.
fn run_ok(py: &str, script: &str, address: &str, key: &str) -> String {
    let (ok, out, err) = finish(spawn_py(py, script, address, key));
    assert!(ok, "python failed:\n{out}\n{err}");
    out
}

fn serve(key: &str) -> (multiproc::manager::Server, String) {
    let server = Manager::serve("127.0.0.1:0", key.as_bytes()).unwrap();
    let address = server.address().to_string();
    (server, address)
}

#[test]
fn the_issue_example_runs_against_our_server() {
    let Some(py) = python() else { return };
    let (server, address) = serve("secret");
    let out = run_ok(
        py,
        r#"
m = connect()
d = m.dict(); d["jobs"] = 3; q = m.Queue(); q.put({"id": 1, "path": "/tmp/a"})
lock = m.Lock()
with lock: d["jobs"] += 1
print(d["jobs"], q.get(timeout=5), d.copy(), len(d), "jobs" in d, str(d))
"#,
        &address,
        "secret",
    );
    assert_eq!(
        out.trim(),
        "4 {'id': 1, 'path': '/tmp/a'} {'jobs': 4} 1 True {'jobs': 4}"
    );
    server.shutdown();
}
