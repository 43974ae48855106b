//! Lifetimes across real program boundaries: the end of `main`, a SIGKILLed parent, a
//! binary started as a child without its bootstrap socket.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;

use common::{alive, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_mp-lifecycle");
/// The program without `#[multiproc::main]`.
const PLAIN: &str = env!("CARGO_BIN_EXE_mp-plain");

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mp-lifecycle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The whitespace-separated words of `dir/file`, once the program has written it.
fn read_words(dir: &Path, file: &str) -> Vec<String> {
    let path = dir.join(file);
    assert!(
        eventually(Duration::from_secs(20), || path.exists()),
        "{file} never written"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn read_pid(dir: &Path, file: &str) -> u32 {
    read_words(dir, file)[0].parse().unwrap()
}

fn wait_with_timeout(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("program did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main_end_joins_non_daemons_and_terminates_daemons(method: &str) {
    let dir = tempdir(&format!("end-{method}"));
    let mut child = Command::new(BIN)
        .args(["main-end", dir.to_str().unwrap(), method])
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert_children_were_finished(&dir, "main");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Once the program that wrote `dir` has exited: its non-daemon child had finished (its file
/// is there) and its daemon child had been ended (not only left to die with its parent).
fn assert_children_were_finished(dir: &Path, how: &str) {
    assert!(
        dir.join("nondaemon.done").exists(),
        "the non-daemon child was not joined ({how})"
    );
    let daemon = read_pid(dir, "daemon.pid");
    assert!(
        !alive(daemon),
        "daemon {daemon} survived the program ({how})"
    );
}

/// Without `#[multiproc::main]`, leaving `main` by returning, by `std::process::exit` or by
/// a panic still joins the non-daemon children and terminates the daemonic ones.
fn process_exit_without_the_attribute_finishes_children(method: &str) {
    for (how, code) in [("return", 0), ("exit", 3), ("panic", 101)] {
        let dir = tempdir(&format!("plain-{how}-{method}"));
        let mut child = Command::new(PLAIN)
            .args([how, dir.to_str().unwrap(), method])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(code), "{how}");
        assert_children_were_finished(&dir, how);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn plain_main_end_spawn() {
    process_exit_without_the_attribute_finishes_children("spawn");
}
#[test]
fn plain_main_end_fork() {
    process_exit_without_the_attribute_finishes_children("fork");
}
#[test]
fn plain_main_end_forkserver() {
    process_exit_without_the_attribute_finishes_children("forkserver");
}

/// Runs `mp-plain child-panics` with `RUST_BACKTRACE` set to `backtrace` (unset: `None`);
/// gives back its standard output and error.
fn run_panicking_child(method: &str, backtrace: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(PLAIN);
    cmd.args(["child-panics", "-", method])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(value) = backtrace {
        cmd.env("RUST_BACKTRACE", value);
    }
    let child = common::Reaped(cmd.spawn().unwrap());
    let out = wait_output(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (common::stdout_of(out), stderr)
}

/// Waits at most `limit` for the command's end and collects its output.
fn wait_output(mut child: common::Reaped, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let (mut stdout, mut stderr) = (
        child.0.stdout.take().unwrap(),
        child.0.stderr.take().unwrap(),
    );
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let mut out = Vec::new();
    let reader = std::thread::spawn(move || stdout.read_to_end(&mut out).map(|_| out));
    let status = wait_with_timeout(&mut child.0, limit);
    std::process::Output {
        status,
        stdout: reader.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

/// Whether `line` is the one line a panicking child prints: its name, pid, where and what.
fn is_panic_line(line: &str) -> bool {
    line.starts_with("process 'panicker' (pid ")
        && line.contains(") panicked at ")
        && line.contains("mp-plain.rs:")
        && line.ends_with(": boom 42")
}

/// A panicking child prints one line naming itself, where it panicked and the message,
/// no backtrace unless `RUST_BACKTRACE` asks; the parent gets the message from `join`.
fn a_panicking_child_prints_one_line_naming_itself(method: &str) {
    let (stdout, stderr) = run_panicking_child(method, None);
    assert_eq!(stdout, "Panicked: boom 42\n");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && is_panic_line(lines[0]),
        "expected one panic line, got:\n{stderr}"
    );
    for asked in ["1", "full"] {
        let (stdout, stderr) = run_panicking_child(method, Some(asked));
        assert_eq!(stdout, "Panicked: boom 42\n");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() > 1 && is_panic_line(lines[0]),
            "RUST_BACKTRACE={asked}: expected the panic line and a backtrace, got:\n{stderr}"
        );
        assert!(
            stderr.contains("panic_with"),
            "RUST_BACKTRACE={asked}: the backtrace does not show the function:\n{stderr}"
        );
        if asked == "1" {
            // Only the user's frames: not how multiproc started the child.
            assert!(
                !stderr.contains("multiproc::process") && !stderr.contains("mp_plain::main"),
                "RUST_BACKTRACE=1: frames of the machinery shown:\n{stderr}"
            );
        }
    }
}

#[test]
fn panic_line_spawn() {
    a_panicking_child_prints_one_line_naming_itself("spawn");
}
#[test]
fn panic_line_fork() {
    a_panicking_child_prints_one_line_naming_itself("fork");
}
#[test]
fn panic_line_forkserver() {
    a_panicking_child_prints_one_line_naming_itself("forkserver");
}

#[test]
fn main_end_spawn() {
    main_end_joins_non_daemons_and_terminates_daemons("spawn");
}
#[test]
fn main_end_fork() {
    main_end_joins_non_daemons_and_terminates_daemons("fork");
}
#[test]
fn main_end_forkserver() {
    main_end_joins_non_daemons_and_terminates_daemons("forkserver");
}

fn sigkilled_parent_takes_daemons_and_forkserver_along(method: &str) {
    let dir = tempdir(&format!("kill-{method}"));
    let tag = format!("kill-{method}-{}", std::process::id());
    let mut child = Command::new(BIN)
        .args(["hold", dir.to_str().unwrap(), method])
        .env("MP_TEST_TAG", &tag)
        .spawn()
        .unwrap();
    let daemon = read_pid(&dir, "daemon.pid");
    let forkserver = read_pid(&dir, "forkserver.pid");
    assert!(alive(daemon) && alive(forkserver));
    child.kill().unwrap(); // SIGKILL: no exit handler runs in the parent
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !alive(daemon)),
        "daemon {daemon} outlived its parent"
    );
    assert!(
        eventually(Duration::from_secs(1), || !alive(forkserver)),
        "forkserver {forkserver} outlived its owner"
    );
    // Nor the forkserver's spare child (forked while it idles), nor anything else of the tree.
    assert_tree_gone(&tag);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sigkill_spawn() {
    sigkilled_parent_takes_daemons_and_forkserver_along("spawn");
}
#[test]
fn sigkill_fork() {
    sigkilled_parent_takes_daemons_and_forkserver_along("fork");
}
#[test]
fn sigkill_forkserver() {
    sigkilled_parent_takes_daemons_and_forkserver_along("forkserver");
}

#[test]
fn started_as_child_without_bootstrap_socket_fails_fast_with_a_message() {
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .env("MULTIPROC_BOOTSTRAP", "child")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(70));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap socket"), "{err}");
}

#[test]
fn garbage_on_the_bootstrap_socket_fails_fast() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut ours, &[0u8; 64]).unwrap();
    let raw = theirs.as_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.env("MULTIPROC_BOOTSTRAP", "child")
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it only places the inherited socket at fd 3.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(70));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multiproc"), "{err}");
}

fn sigkilled_parent_takes_its_pool_along(method: &str) {
    let dir = tempdir(&format!("pool-{method}"));
    let mut child = Command::new(BIN)
        .args(["pool", dir.to_str().unwrap(), method])
        .spawn()
        .unwrap();
    let pids: Vec<u32> = read_words(&dir, "pool.pids")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    child.kill().unwrap();
    child.wait().unwrap();
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(1), || !alive(pid)),
            "pool worker {pid} outlived its parent"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pool_dies_with_sigkilled_parent_spawn() {
    sigkilled_parent_takes_its_pool_along("spawn");
}
#[test]
fn pool_dies_with_sigkilled_parent_forkserver() {
    sigkilled_parent_takes_its_pool_along("forkserver");
}

fn sigkilled_owner_takes_its_manager_along(method: &str) {
    let dir = tempdir(&format!("manager-{method}"));
    let mut child = Command::new(BIN)
        .args(["manager", dir.to_str().unwrap(), method])
        .spawn()
        .unwrap();
    let path = dir.join("manager.pid");
    assert!(
        eventually(Duration::from_secs(20), || path.exists()),
        "manager never started"
    );
    let pid = read_pid(&dir, "manager.pid");
    assert!(alive(pid));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !alive(pid)),
        "manager {pid} outlived its SIGKILLed owner (CPython's runs for ever)"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn manager_dies_with_sigkilled_owner_spawn() {
    sigkilled_owner_takes_its_manager_along("spawn");
}
#[test]
fn manager_dies_with_sigkilled_owner_forkserver() {
    sigkilled_owner_takes_its_manager_along("forkserver");
}
#[test]
fn manager_dies_with_sigkilled_owner_fork() {
    sigkilled_owner_takes_its_manager_along("fork");
}

/// Processes whose environment holds `MP_TEST_TAG=tag` (a program's whole tree inherits it).
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("MP_TEST_TAG={tag}");
    common::processes()
        .into_iter()
        .filter(|&(pid, _, st)| {
            st != 'Z'
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// No process of the program tagged `tag` remains (within 5 s).
fn assert_tree_gone(tag: &str) {
    assert!(
        eventually(Duration::from_secs(5), || tagged(tag).is_empty()),
        "processes of the tree left behind: {:?}",
        tagged(tag)
    );
}

fn named_segments_die_with_the_tree(method: &str) {
    let dir = tempdir(&format!("shm-{method}"));
    let tag = format!("shm-{method}-{}", std::process::id());
    let mut root = common::Reaped(
        Command::new(BIN)
            .args(["shm", dir.to_str().unwrap(), method])
            .env("MP_TEST_TAG", &tag)
            // Its segments are named as this test's own, for the run's leak check.
            .env("MP_TEST_SHM_PREFIX", common::shm_prefix())
            .spawn()
            .unwrap(),
    );
    let names: Vec<String> = read_words(&dir, "shm.names")
        .iter()
        .map(|n| format!("/dev/shm{n}"))
        .collect();
    assert_eq!(names.len(), 3);
    // The tree still runs: even the SIGKILLed child's segment is kept (others may use it).
    for n in &names {
        assert!(Path::new(n).exists(), "{n} gone while its tree runs");
    }
    root.0.kill().unwrap(); // SIGKILL: no handle of the root is dropped
    root.0.wait().unwrap();
    // The daemon dies with the root, then the tracker sees the last link close.
    for n in &names {
        assert!(
            eventually(Duration::from_secs(10), || !Path::new(n).exists()),
            "{n} left in /dev/shm after its tree ended"
        );
    }
    assert_tree_gone(&tag);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn named_segments_die_with_the_tree_spawn() {
    named_segments_die_with_the_tree("spawn");
}
#[test]
fn named_segments_die_with_the_tree_fork() {
    named_segments_die_with_the_tree("fork");
}
#[test]
fn named_segments_die_with_the_tree_forkserver() {
    named_segments_die_with_the_tree("forkserver");
}
