//! The `multiproc` command line as a user meets it: `--help` at every level with the options
//! and their defaults, `--version`, exit code 2 with the bad argument named, and every
//! command line that worked before still accepted.
#![cfg(target_os = "linux")]

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// Runs `multiproc ARGS` (with `MULTIPROC_AUTHKEY` set to `key`, or unset) and waits at most
/// 20 s for it to end; killed and the test failed if it does not.
fn run_with_key(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match key {
        Some(k) => cmd.env("MULTIPROC_AUTHKEY", k),
        None => cmd.env_remove("MULTIPROC_AUTHKEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`multiproc {}` did not end within 20 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn run(args: &[&str]) -> Output {
    run_with_key(args, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The help of `option` in a `--help` page: its line and those after it up to the next option.
fn help_of(page: &str, option: &str) -> String {
    let lines: Vec<&str> = page.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(option))
        .unwrap_or_else(|| panic!("{option} is not in the help:\n{page}"));
    let rest = lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('-'));
    std::iter::once(&lines[start])
        .chain(rest)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// `multiproc ARGS` succeeds and prints its help on stdout; the help.
fn help(args: &[&str]) -> String {
    let out = run(args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "multiproc {args:?}\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Usage: multiproc"), "{args:?}: {stdout}");
    stdout
}

#[test]
fn help_at_the_top_lists_the_commands_and_the_version_flag() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let page = help(args);
        for word in ["bench", "manager", "cluster", "--version", "--help"] {
            assert!(page.contains(word), "{args:?} lacks {word}:\n{page}");
        }
    }
}

#[test]
fn bench_help_lists_its_options_groups_and_defaults() {
    for args in [&["bench", "--help"][..], &["help", "bench"]] {
        let page = help(args);
        for option in [
            "--quick",
            "--full",
            "--tiny",
            "--no-python",
            "--json <FILE>",
            "--chart <FILE>",
            "--group <NAME>",
            "--busy <N>",
        ] {
            help_of(&page, option);
        }
        assert!(help_of(&page, "--quick").contains("default"), "{page}");
        assert!(help_of(&page, "--group").contains("every group"), "{page}");
        for group in [
            "empty", "fib", "primes", "fileio", "url", "spawn", "pipe", "queue", "pool", "manager",
            "scaling", "cluster",
        ] {
            assert!(page.contains(group), "{group} is not in:\n{page}");
        }
    }
}

#[test]
fn manager_help_lists_serve_and_serve_help_lists_its_options_with_defaults() {
    let page = help(&["manager", "--help"]);
    assert!(page.contains("serve"), "{page}");
    let page = help(&["manager", "serve", "--help"]);
    assert!(
        help_of(&page, "--address <ADDR>").contains("HOST:PORT"),
        "{page}"
    );
    assert!(
        help_of(&page, "--authkey-env <VAR>").contains("[default: MULTIPROC_AUTHKEY]"),
        "{page}"
    );
    help_of(&page, "--authkey-file <PATH>");
    assert!(page.contains("Manager::serve"), "user types: {page}");
}

#[test]
fn cluster_help_lists_status_and_status_help_lists_its_options_with_defaults() {
    let page = help(&["cluster", "--help"]);
    assert!(page.contains("status"), "{page}");
    let page = help(&["cluster", "status", "--help"]);
    help_of(&page, "--redis <URL>");
    assert!(
        help_of(&page, "--queue <NAME>").contains("[default: default]"),
        "{page}"
    );
}

#[test]
fn version_prints_the_package_version() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("multiproc {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn a_bad_argument_exits_2_and_is_named() {
    for (args, named) in [
        (&["frobnicate"][..], "frobnicate"),
        (&["bench", "--fast"], "--fast"),
        (&["bench", "--group", "nope"], "nope"),
        (&["bench", "--json"], "--json"),
        (&["bench", "--group"], "--group"),
        (&["manager", "frob"], "frob"),
        (
            &["manager", "serve", "--address", "127.0.0.1:0", "--bogus"],
            "--bogus",
        ),
        (&["manager", "serve"], "--address"),
        (
            &[
                "manager",
                "serve",
                "--address",
                "127.0.0.1:0",
                "--authkey-env",
                "K",
                "--authkey-file",
                "/k",
            ],
            "--authkey-file",
        ),
        (&["cluster", "frob"], "frob"),
        (&["cluster", "status"], "--redis"),
        (
            &["cluster", "status", "--redis", "redis://h/", "--queue"],
            "--queue",
        ),
        (
            &["cluster", "status", "--redis", "redis://h/", "--bogus"],
            "--bogus",
        ),
    ] {
        let out = run_with_key(args, Some("k"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} does not name {named}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
}

#[test]
fn a_missing_or_unreadable_authkey_exits_2_and_says_where_it_looked() {
    let serve = ["manager", "serve", "--address", "127.0.0.1:0"];
    for (extra, key, named) in [
        (&[][..], None, "MULTIPROC_AUTHKEY"),
        (&[][..], Some(""), "empty"),
        (
            &["--authkey-env", "NO_SUCH_KEY_VAR"],
            Some("k"),
            "NO_SUCH_KEY_VAR",
        ),
        (
            &["--authkey-file", "/nonexistent/key"],
            None,
            "/nonexistent/key",
        ),
    ] {
        let args: Vec<&str> = serve.iter().chain(extra).copied().collect();
        let out = run_with_key(&args, key);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn without_a_command_the_usage_goes_to_stderr_with_code_2() {
    for args in [&[][..], &["manager"], &["cluster"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("Usage: multiproc"), "{args:?}");
    }
}

#[test]
fn cluster_status_parses_and_a_broker_that_is_not_there_is_a_failure_not_a_usage_error() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    for args in [
        &["cluster", "status", "--redis", "redis://127.0.0.1:1/"][..],
        &[
            "cluster",
            "status",
            "--queue",
            "jobs",
            "--redis",
            "redis://127.0.0.1:1/",
        ],
    ] {
        let out = run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("multiproc cluster status: "), "{stderr}");
    }
}

#[test]
fn mp_worker_still_makes_the_binary_a_cluster_worker() {
    // The bench's cluster group starts `multiproc --mp-worker URL --queue bench ...`; the
    // worker (not the command-line parser) answers, here that it has no authkey.
    let out = run(&[
        "--mp-worker",
        "redis://127.0.0.1:1/",
        "--queue",
        "bench",
        "--processes",
        "2",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MULTIPROC_AUTHKEY"), "{stderr}");
}
