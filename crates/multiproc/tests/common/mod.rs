//! Helpers shared by the integration tests: bounded waits and leak checks.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

/// `(pid, ppid, state)` of every process on the machine.
pub fn processes() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // comm may hold spaces and parentheses: the fields after the last ')' are fixed.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

/// Zombie children of this process.
pub fn zombies() -> Vec<u32> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|&(_, ppid, st)| ppid == me && st == 'Z')
        .map(|(p, _, _)| p)
        .collect()
}

/// Asserts that no child of this process stays a zombie. Children still running (the
/// forkserver, other tests' children) are fine. A child that ended a moment ago is a zombie
/// until its handle or `active_children` reaps it, and tests running beside this one in the
/// same process (plain `cargo test`) start and end children at any time: only a zombie that
/// outlasts a 2 s grace, with `active_children` reaping meanwhile, is a leak.
pub fn assert_no_lasting_zombie() {
    let clean = eventually(Duration::from_secs(2), || {
        let _ = multiproc::active_children(); // reaps children whose handles were dropped
        zombies().is_empty()
    });
    assert!(clean, "zombies left: {:?}", zombies());
}

/// Whether `pid` is running (a zombie counts as ended).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `timed_out` — a call that waits `timeout` and then gives up (it asserts that
/// it did) — never returns early and returns on time: within `slack` after `timeout` in at
/// least one of up to five tries.
///
/// A busy machine may run this process late after any one wait (hundreds of milliseconds
/// when other programs keep the CPUs busy). That only ever adds time, so the quickest try
/// measures the wait itself; a wait that is always late (a timeout taken twice, restarted, or
/// in the wrong unit) is late in every try.
pub fn assert_times_out_on_time(timeout: Duration, slack: Duration, mut timed_out: impl FnMut()) {
    let mut late = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        timed_out();
        let waited = t0.elapsed();
        assert!(
            waited >= timeout,
            "returned early: {waited:?} of {timeout:?}"
        );
        if waited < timeout + slack {
            return;
        }
        late.push(waited);
    }
    panic!("a {timeout:?} wait returned {slack:?} late or more every time: {late:?}");
}

/// This test run's token: `MP_TEST_RUN` (scripts/test sets a fresh one per run), or `local`.
pub fn run_token() -> String {
    std::env::var("MP_TEST_RUN").unwrap_or_else(|_| "local".into())
}

/// The start of every /dev/shm name this test process gives: `mp-test-RUN-PID-`.
///
/// /dev/shm is the machine's: browsers, databases and other test runs (another checkout, or
/// this suite's other test processes under nextest) create and remove segments there at any
/// time. The leak checks count only names with this prefix (scripts/test: with this run's
/// token), so every test names its segments with [`shm_name`]; a child process, whose pid
/// differs, gets its names from the test.
pub fn shm_prefix() -> String {
    format!("mp-test-{}-{}-", run_token(), std::process::id())
}

/// A /dev/shm name for this test process, seen by its leak checks: [`shm_prefix`] + `tag`.
pub fn shm_name(tag: &str) -> String {
    format!("{}{tag}", shm_prefix())
}

/// The entries of /dev/shm named by this test process (see [`shm_prefix`]), sorted.
pub fn shm_entries() -> Vec<String> {
    let prefix = shm_prefix();
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Asserts on drop that the test left no zombie child and no new /dev/shm entry of its own
/// (each given a 2 s grace: see [`assert_no_lasting_zombie`] and [`LeakCheck::shm_left`]).
/// Both are scoped to this test process: its children, the segments it named with
/// [`shm_name`]. What other programs do meanwhile cannot fail it.
pub struct LeakCheck {
    shm: Vec<String>,
}

impl LeakCheck {
    pub fn new() -> Self {
        LeakCheck { shm: shm_entries() }
    }

    /// The entries of this test process (see [`shm_entries`]) made since the check began that
    /// are still there after `grace`. A test running beside this one in the same process
    /// (plain `cargo test`) may hold a segment of its own for a moment, so only an entry
    /// that stays is a leak.
    pub fn shm_left(&self, grace: Duration) -> Vec<String> {
        let mut left = Vec::new();
        eventually(grace, || {
            left = shm_entries();
            left.retain(|e| !self.shm.contains(e));
            left.is_empty()
        });
        left
    }
}

impl Drop for LeakCheck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        assert_no_lasting_zombie();
        let left = self.shm_left(Duration::from_secs(2));
        assert!(left.is_empty(), "/dev/shm entries left: {left:?}");
    }
}

/// The standard output of a finished command, after asserting that it succeeded (its
/// output and errors in the failure message).
pub fn stdout_of(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The path of example `name`, built by cargo with the tests.
pub fn example(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built (cargo builds examples with the tests)",
        path.display()
    );
    path
}

/// A child command; killed and reaped if a test fails before it ends.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Makes each named function `fn name(method: StartMethod)` a test per start method, in
/// modules `spawn`, `fork` and `forkserver` (a check that only sees the default start method
/// can hide a bug). The attribute before the `;` marks each test (default `test`).
#[macro_export]
macro_rules! per_start_method {
    ($attr:meta; $($name:ident),* $(,)?) => {
        mod spawn { $( #[$attr] fn $name() { super::$name(multiproc::StartMethod::Spawn) } )* }
        mod fork { $( #[$attr] fn $name() { super::$name(multiproc::StartMethod::Fork) } )* }
        mod forkserver { $( #[$attr] fn $name() { super::$name(multiproc::StartMethod::Forkserver) } )* }
    };
    ($($name:ident),* $(,)?) => {
        $crate::per_start_method!(test; $($name),*);
    };
}

/// The resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// `python3` when the machine's can import `module` (a part of CPython's `multiprocessing`),
/// for the tests that drive CPython; `None` (the test skips, saying so) otherwise, which
/// `CI=true` does not allow.
pub fn python(module: &str) -> Option<&'static str> {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("import {module}"))
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
