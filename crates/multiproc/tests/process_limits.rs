//! Process isolation and limits: a memory or CPU-time limit fails the child with a typed
//! error, rlimits, niceness, environment and working directory are as set, output is captured
//! (bounded) or prefixed line by line, and root-only options fail clearly. Every body runs
//! once per start method. The rlimit path runs on any Linux; the cgroup path is reported.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{LeakCheck, rss_bytes};
use multiproc::{Enforcement, Output, Process, ProcessError, Resource, StartMethod};

/// Allocates and touches `bytes`, returns how many it got.
#[multiproc::func]
fn allocate(bytes: usize) -> usize {
    let v = vec![1u8; bytes];
    std::hint::black_box(&v);
    v.len()
}

/// Spins on the CPU for at most `secs` seconds of wall time; returns how long it spun.
#[multiproc::func]
fn spin_for(secs: u64) -> u64 {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while std::time::Instant::now() < end {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    secs
}

/// The child's `(soft, hard)` limit of open files.
#[multiproc::func]
fn nofile_limit() -> (u64, u64) {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap()
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Surroundings {
    lang: Option<String>,
    removed: Option<String>,
    vars: usize,
    dir: std::path::PathBuf,
    nice: i32,
}

/// What the child sees around it.
#[multiproc::func]
fn surroundings() -> Surroundings {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields after `comm`: state is field 3 of the file; nice is field 19.
    let nice = after
        .split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap();
    Surroundings {
        lang: std::env::var("LANG").ok(),
        removed: std::env::var("MP_LIMITS_REMOVED").ok(),
        vars: std::env::vars_os().count(),
        dir: std::env::current_dir().unwrap(),
        nice,
    }
}

/// Prints `lines` numbered lines naming `tag` on standard output and one line on standard
/// error.
#[multiproc::func]
fn print_lines(tag: u32, lines: u32) -> u32 {
    use std::io::Write;
    for i in 0..lines {
        println!("child {tag} line {i} {}", "x".repeat(40));
        if i % 16 == 0 {
            std::thread::yield_now();
        }
    }
    let _ = writeln!(std::io::stderr(), "child {tag} done");
    tag
}

/// Writes `mib` MiB to standard output.
#[multiproc::func]
fn flood(mib: usize) -> usize {
    use std::io::Write;
    let block = vec![b'y'; 1 << 20];
    let mut out = std::io::stdout().lock();
    for _ in 0..mib {
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    mib
}

/// Starts ten children with prefixed output that print interleaved lines, and waits for them.
#[multiproc::func]
fn ten_prefixed(method: String, lines: u32) -> Vec<u32> {
    let method: StartMethod = method.parse().unwrap();
    let children: Vec<_> = (0..10)
        .map(|tag| {
            Process::builder()
                .name(format!("printer-{tag}"))
                .start_method(method)
                .stdout(Output::Prefixed)
                .stderr(Output::Prefixed)
                .start(&print_lines, (tag, lines))
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.join().unwrap()).collect()
}

fn builder(method: StartMethod) -> multiproc::Builder {
    Process::builder().start_method(method)
}

fn memory_limit_fails_the_child_with_a_memory_error(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // Without a backtrace to print, the child reports the failed allocation itself (exact);
    // with one, the parent infers the limit from the abort (and says so).
    for (backtrace, reported) in [(None, true), (Some("1"), false)] {
        let mut b = builder(method)
            .memory_limit(256 << 20)
            .stderr(Output::Capture);
        b = match backtrace {
            None => b.env_remove("RUST_BACKTRACE"),
            Some(v) => b.env("RUST_BACKTRACE", v),
        };
        let p = b.start(&allocate, 2 << 30).unwrap();
        let limits = p.limits().expect("a limit was set").clone();
        assert_eq!(limits.memory(), Some(256 << 20));
        assert!(matches!(limits.enforcement(), Enforcement::Rlimit { .. }));
        let pid = p.pid();
        let stderr = p.output(Duration::from_secs(30)).unwrap().stderr_lossy();
        assert!(
            stderr.contains("memory allocation of 2147483648 bytes failed"),
            "{stderr}"
        );
        match p.join() {
            Err(e @ ProcessError::MemoryLimit { .. }) => {
                let ProcessError::MemoryLimit {
                    pid: p,
                    limit,
                    reported: r,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((p, limit), (pid, 256 << 20));
                // Reported when it could be; never claimed otherwise.
                if reported {
                    assert!(r, "RUST_BACKTRACE unset: the child reports it");
                } else {
                    assert!(e.to_string().contains("inferred") != r, "{e}");
                }
            }
            other => panic!("expected a memory-limit error, got {other:?}"),
        }
    }
    // Under the limit, the same function works.
    let p = builder(method)
        .memory_limit(256 << 20)
        .start(&allocate, 64 << 20)
        .unwrap();
    assert_eq!(p.join().unwrap(), 64 << 20);
}

fn cpu_time_limit_fails_the_child_with_a_cpu_error(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .cpu_time_limit(Duration::from_secs(1))
        .start(&spin_for, 60)
        .unwrap();
    assert_eq!(
        p.limits().and_then(|l| l.cpu_time()),
        Some(Duration::from_secs(1))
    );
    // Bounded: a second of CPU time takes a few seconds at most on a busy machine.
    assert!(
        p.join_timeout(Duration::from_secs(30)).unwrap(),
        "still running"
    );
    match p.join() {
        Err(ProcessError::CpuTimeLimit { limit, .. }) => {
            assert_eq!(limit, Duration::from_secs(1));
        }
        other => panic!("expected a CPU-time error, got {other:?}"),
    }
}

fn rlimits_are_seen_by_the_child(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .rlimit(Resource::NoFile, 256, 256)
        .rlimit(Resource::Core, 0, 0)
        .start(&nofile_limit, ())
        .unwrap();
    assert_eq!(p.join().unwrap(), (256, 256));
}

fn environment_directory_and_niceness_are_as_set(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let dir = std::env::temp_dir();
    let p = builder(method)
        .env_clear()
        .env("LANG", "C")
        .current_dir(&dir)
        .nice(7)
        .start(&surroundings, ())
        .unwrap();
    let s = p.join().unwrap();
    assert_eq!(s.lang.as_deref(), Some("C"));
    assert_eq!(s.vars, 1, "only LANG is left");
    assert_eq!(s.dir, dir.canonicalize().unwrap());
    assert_eq!(s.nice, 7);
    // Without env_clear the rest of the environment stays; env_remove takes one out.
    let p = builder(method)
        .env("MP_LIMITS_REMOVED", "set")
        .env_remove("MP_LIMITS_REMOVED")
        .env("LANG", "C.UTF-8")
        .start(&surroundings, ())
        .unwrap();
    let s = p.join().unwrap();
    assert_eq!(s.lang.as_deref(), Some("C.UTF-8"));
    assert_eq!(s.removed, None);
    assert!(s.vars > 1);
}

fn a_directory_that_does_not_exist_is_a_start_failure(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .current_dir("/nonexistent/multiproc-limits")
        .start(&surroundings, ())
        .unwrap();
    match p.join() {
        Err(ProcessError::Bootstrap { message, .. }) => {
            assert!(
                message.contains("/nonexistent/multiproc-limits"),
                "{message}"
            );
        }
        other => panic!("expected a start failure, got {other:?}"),
    }
}

fn captured_output_is_readable_after_the_end(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .stdout(Output::Capture)
        .stderr(Output::Capture)
        .start(&print_lines, (3, 100))
        .unwrap();
    let out = p.output(Duration::from_secs(30)).unwrap();
    assert_eq!(p.join().unwrap(), 3);
    let text = out.stdout_lossy();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("child 3 line {i} {}", "x".repeat(40)));
    }
    assert_eq!(out.stderr_lossy(), "child 3 done\n");
    assert_eq!((out.stdout_dropped, out.stderr_dropped), (0, 0));
}

fn prefixed_lines_of_ten_children_stay_whole(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // The ten children print through a middle process, whose own output is captured here.
    let lines = 200;
    let middle = builder(method)
        .stdout(Output::Capture)
        .stderr(Output::Capture)
        .capture_limit(16 << 20)
        .start(&ten_prefixed, (method.to_string(), lines))
        .unwrap();
    let out = middle.output(Duration::from_secs(60)).unwrap();
    assert_eq!(middle.join().unwrap(), (0..10).collect::<Vec<_>>());
    let text = out.stdout_lossy();
    let mut seen = vec![0u32; 10];
    for line in text.lines() {
        // `[printer-T PID] child T line I xxx...`
        let (prefix, rest) = line.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
        let tag: usize = prefix
            .strip_prefix("[printer-")
            .and_then(|p| p.split_once(' '))
            .and_then(|(t, pid)| pid.parse::<u32>().ok().map(|_| t))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("bad prefix in {line:?}"));
        assert_eq!(
            rest,
            format!("child {tag} line {} {}", seen[tag], "x".repeat(40)),
            "a line mixed with another"
        );
        seen[tag] += 1;
    }
    assert_eq!(seen, vec![lines; 10]);
    let errors = out.stderr_lossy();
    for tag in 0..10 {
        assert!(
            errors.contains(&format!("] child {tag} done\n")),
            "{errors}"
        );
    }
}

fn a_flood_of_output_is_bounded_in_the_parent(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let limit = 1 << 20;
    let before = rss_bytes(std::process::id());
    let p = builder(method)
        .stdout(Output::Capture)
        .capture_limit(limit)
        .start(&flood, 1024)
        .unwrap();
    let out = p.output(Duration::from_secs(120)).unwrap();
    assert_eq!(p.join().unwrap(), 1024);
    let grown = rss_bytes(std::process::id()).saturating_sub(before);
    assert_eq!(out.stdout.len(), limit);
    assert_eq!(out.stdout_dropped, (1u64 << 30) - limit as u64);
    assert!(out.stdout.iter().all(|&b| b == b'y'));
    assert!(
        grown < 32 << 20,
        "the parent grew by {grown} bytes for a 1 MiB capture limit"
    );
}

fn manager_server_gets_its_setup(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let manager = multiproc::Manager::builder()
        .start_method(method)
        .server(
            Process::builder()
                .nice(5)
                .rlimit(Resource::NoFile, 300, 300),
        )
        .start()
        .unwrap();
    // A round trip first: the server runs its function only once set up.
    let d = manager.dict::<u32, u32>().unwrap();
    d.insert(&1, &2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(2));
    let pid = manager.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(files, ["300", "300"]);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    assert_eq!(after.split_whitespace().nth(19 - 3), Some("5"));
    manager.shutdown().unwrap();
}

per_start_method!(
    manager_server_gets_its_setup,
    memory_limit_fails_the_child_with_a_memory_error,
    cpu_time_limit_fails_the_child_with_a_cpu_error,
    rlimits_are_seen_by_the_child,
    environment_directory_and_niceness_are_as_set,
    a_directory_that_does_not_exist_is_a_start_failure,
    captured_output_is_readable_after_the_end,
    prefixed_lines_of_ten_children_stay_whole,
    a_flood_of_output_is_bounded_in_the_parent,
);

/// Runs as user `nobody`, then asks for a child as root.
#[multiproc::func]
fn start_as_root_from_nobody() -> String {
    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
    nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).unwrap();
    match Process::builder().user(0).start(&nofile_limit, ()) {
        Err(e @ ProcessError::NotRoot { .. }) => e.to_string(),
        Err(e) => format!("unexpected error: {e}"),
        Ok(p) => format!("started: {:?}", p.join()),
    }
}

#[test]
fn root_only_options_fail_clearly_when_not_root() {
    let _leaks = LeakCheck::new();
    if !nix::unistd::geteuid().is_root() {
        let err = Process::builder()
            .group(0)
            .start(&nofile_limit, ())
            .unwrap_err();
        assert!(
            matches!(err, ProcessError::NotRoot { option: "group" }),
            "{err}"
        );
        return;
    }
    // As root: a child that gave up root cannot start one as root.
    let p = Process::builder()
        .start_method(StartMethod::Spawn)
        .start(&start_as_root_from_nobody, ())
        .unwrap();
    let message = p.join().unwrap();
    assert!(message.contains("`user` option needs root"), "{message}");
}

#[test]
fn no_limit_means_no_limits_report() {
    let _leaks = LeakCheck::new();
    let p = Process::builder().start(&nofile_limit, ()).unwrap();
    assert!(p.limits().is_none());
    p.join().unwrap();
}

/// The cgroup v2 path: reported as skipped, with the reason, where no writable cgroup2
/// hierarchy with the memory controller exists; elsewhere the reason given for not using it is
/// checked to name the hierarchy.
#[test]
fn cgroup_path_is_reported() {
    let _leaks = LeakCheck::new();
    let p = Process::builder()
        .memory_limit(1 << 30)
        .start(&nofile_limit, ())
        .unwrap();
    let Enforcement::Rlimit { why } = p.limits().unwrap().enforcement().clone() else {
        panic!("unexpected enforcement")
    };
    p.join().unwrap();
    match multiproc::cgroup2_memory_hierarchy() {
        Err(reason) => {
            assert_eq!(why, reason);
            eprintln!("SKIPPED cgroup path: {reason}");
        }
        Ok(path) => assert!(why.contains(&path.display().to_string()), "{why}"),
    }
}
