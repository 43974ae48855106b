//! `multiproc bench` itself: every group runs (with tiny sizes) and the JSON and the chart
//! it writes are what a reader and a script expect; without python3 the CPython columns
//! become a note.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

const GROUPS: [&str; 12] = [
    "empty", "fib", "primes", "fileio", "url", "spawn", "pipe", "queue", "pool", "manager",
    "scaling", "cluster",
];

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "multiproc-bench-test-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn every_group_runs_and_emits_json_and_a_chart() {
    let (json, svg) = (temp("out.json"), temp("out.svg"));
    // About 15 s; a bench that hangs fails here with its output, before the harness's limit.
    let stdout = bench_within(
        &[
            "bench",
            "--tiny",
            "--no-python",
            "--json",
            json.to_str().unwrap(),
            "--chart",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["size"], "tiny");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(report["machine"]["kernel"].is_string());
    let figures = report["figures"].as_array().unwrap();
    for g in GROUPS {
        let n = figures.iter().filter(|f| f["group"] == g).count();
        let skipped = report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap_or("").contains(g));
        assert!(n > 0 || skipped, "group {g} recorded nothing");
        if g == "cluster" && std::env::var("CI").as_deref() == Ok("true") {
            assert!(n > 0, "the cluster group may not skip under CI=true");
        }
    }
    for f in figures {
        for key in ["group", "name", "unit"] {
            assert!(f[key].is_string(), "{f}");
        }
        for key in ["value", "min", "median", "max"] {
            let v = f[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{key} of {f}");
        }
        assert!(f["min"].as_f64() <= f["max"].as_f64(), "{f}");
        for v in f["versus"].as_array().unwrap() {
            let (value, reference, ratio) = (
                f["value"].as_f64().unwrap(),
                v["reference"].as_f64().unwrap(),
                v["ratio"].as_f64().unwrap(),
            );
            assert!(
                (value / reference - ratio).abs() < 1e-9 * ratio.abs().max(1.0),
                "{f}"
            );
        }
    }
    // The tables were printed, PEP style and with comparisons.
    assert!(stdout.contains("workers         serial        threads      processes"));
    assert!(stdout.contains("x raw fork"));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("PEP 371 table: primes"));
    std::fs::remove_file(json).unwrap();
    std::fs::remove_file(svg).unwrap();
}

#[test]
fn without_python3_the_cpython_columns_are_a_note() {
    let out = Command::new(BIN)
        .args(["bench", "--tiny", "--group", "spawn"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = common::stdout_of(out);
    assert!(
        stdout.contains("note: no python3 on this machine"),
        "{stdout}"
    );
    assert!(stdout.contains("multiproc spawn"), "{stdout}");
}

/// The process ids on the bench's `busy:` line.
fn burner_pids(stdout: &str) -> Vec<u32> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("busy: "))
        .unwrap_or_else(|| panic!("no busy line in:\n{stdout}"));
    let pids = line
        .split_once("(pids ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no pids in {line:?}"));
    pids.split(' ').map(|p| p.parse().unwrap()).collect()
}

/// Runs the bench with `args`, its output read as it comes; killed if it takes over `limit`,
/// and then the test fails with what it printed so far (which row it was at).
fn bench_within(args: &[&str], limit: Duration) -> String {
    use std::os::unix::process::CommandExt;
    // A process group of its own: at the deadline the bench goes with every process it
    // started, its plain commands (a redis server, cluster workers) too, which would keep
    // its output open.
    let mut child = common::Reaped(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let read_all = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            from.read_to_string(&mut s).map(|_| s)
        })
    };
    let stdout = read_all(Box::new(child.0.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.0.stderr.take().unwrap()));
    let ended = common::eventually(limit, || matches!(child.0.try_wait(), Ok(Some(_))));
    if !ended {
        let group = nix::unistd::Pid::from_raw(-(child.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::SIGKILL);
    }
    let status = child.0.wait().unwrap();
    // Both ends close once the bench's helpers (daemonic, or in its group) have died too.
    let (stdout, stderr) = (
        stdout.join().unwrap().unwrap(),
        stderr.join().unwrap().unwrap(),
    );
    assert!(
        ended,
        "bench {args:?} still running after {limit:?}; it printed:\n{stdout}\n{stderr}"
    );
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn busy_runs_burners_beside_the_measurements_and_stops_them() {
    let json = temp("busy.json");
    let stdout = bench_within(
        &[
            "bench",
            "--tiny",
            "--no-python",
            "--group",
            "pipe",
            "--busy",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert!(
        stdout.lines().next().unwrap().ends_with("busy 1"),
        "{stdout}"
    );
    let pids = burner_pids(&stdout);
    assert_eq!(pids.len(), 1, "{stdout}");
    let gone = common::eventually(Duration::from_secs(10), || {
        pids.iter().all(|&p| !common::alive(p))
    });
    assert!(gone, "burners {pids:?} outlived the bench");
    // Every pipe figure in each placement, and the run says how busy the machine was.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["busy"], 1);
    let figures = report["figures"].as_array().unwrap();
    let mut placements: Vec<&str> = figures
        .iter()
        .map(|f| f["placement"].as_str().unwrap())
        .collect();
    placements.dedup();
    let two_cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count()
                >= 2
        })
        .unwrap();
    if two_cpus {
        assert_eq!(
            placements,
            ["unpinned", "same-cpu", "cross-cpu"],
            "{stdout}"
        );
    } else {
        assert_eq!(placements, ["unpinned", "same-cpu"], "{stdout}");
        assert!(
            stdout.contains("the across-CPUs rows are skipped"),
            "{stdout}"
        );
    }
    for p in ["unpinned", "same-cpu"] {
        let rt = figures
            .iter()
            .find(|f| f["placement"] == p && f["name"] == "round trip, 8 bytes: multiproc")
            .unwrap_or_else(|| panic!("no {p} round trip in {stdout}"));
        let refs: Vec<&str> = rt["versus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["what"].as_str().unwrap())
            .collect();
        assert_eq!(refs, ["raw spinning", "raw blocking"], "{rt}");
    }
    std::fs::remove_file(json).unwrap();
}

#[test]
fn burners_die_with_a_bench_that_is_killed() {
    let mut bench = common::Reaped(
        Command::new(BIN)
            .args([
                "bench",
                "--tiny",
                "--no-python",
                "--group",
                "queue",
                "--busy",
                "2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Lines come as they are printed: the busy line is the second.
    let mut out = BufReader::new(bench.0.stdout.take().unwrap());
    let mut head = String::new();
    for _ in 0..2 {
        out.read_line(&mut head).unwrap();
    }
    let pids = burner_pids(&head);
    assert_eq!(pids.len(), 2, "{head}");
    assert!(pids.iter().all(|&p| common::alive(p)), "{head}");
    bench.0.kill().unwrap();
    bench.0.wait().unwrap();
    let gone = common::eventually(Duration::from_secs(10), || {
        pids.iter().all(|&p| !common::alive(p))
    });
    assert!(gone, "burners {pids:?} outlived a killed bench");
}

/// The children of process `pid` (`/proc/PID/task/*/children`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every process under `pid`, depth first.
fn descendants(pid: u32) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    let mut todo = vec![(pid, 0)];
    while let Some((p, depth)) = todo.pop() {
        for c in children(p) {
            out.push((c, depth + 1));
            todo.push((c, depth + 1));
        }
    }
    out
}

/// Whether `pid` still runs (a zombie waiting for its new parent to reap it does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn helpers_die_with_a_bench_that_is_killed_mid_measurement() {
    // Killed at eight moments of its queue group (helpers starting, waiting for their start
    // signal, measuring): no process the bench started may run on, whatever it waited for.
    for millis in (0..8).map(|k| 30 + 60 * k) {
        let mut bench = common::Reaped(
            Command::new(BIN)
                .args(["bench", "--tiny", "--no-python", "--group", "queue"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(millis));
        let seen = descendants(bench.0.id());
        bench.0.kill().unwrap();
        bench.0.wait().unwrap();
        let gone = common::eventually(Duration::from_secs(10), || {
            seen.iter().all(|&(p, _)| !running(p))
        });
        let left: Vec<u32> = seen.iter().map(|s| s.0).filter(|&p| running(p)).collect();
        assert!(
            gone,
            "killed after {millis} ms: {left:?} of {seen:?} live on"
        );
        for p in left {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["bench", "--group", "nope"][..],
        &["bench", "--json"],
        &["bench", "--fast"],
        &["bench", "--busy", "-1"],
        &["bench", "--busy", "many"],
        &["bench", "--busy", "100000"],
        &["bench", "--busy"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
