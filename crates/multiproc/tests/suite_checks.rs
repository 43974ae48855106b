//! The suite's own checks (tests/common): they fail on a leak or a late wait of the code under
//! test and never on what other programs on the machine do meanwhile.
#![cfg(target_os = "linux")]

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use common::LeakCheck;

/// Held by the tests that make segments of this process on purpose: under plain `cargo test`
/// they share one process, and each would see the other's segment as its own.
static SEGMENTS: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SEGMENTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the given /dev/shm files when dropped, whether or not the test passed.
struct Removed(Vec<String>);

impl Drop for Removed {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        }
    }
}

#[test]
fn leak_check_ignores_segments_other_programs_make_during_the_check() {
    let _serial = one_at_a_time();
    let leaks = LeakCheck::new();
    let me = std::process::id();
    // A browser's or database's segment, another checkout's test run, and another test
    // process of a run (nextest runs each test in its own process).
    let foreign = vec![
        format!("foreign-{me}"),
        format!("mp-test-other-run-{me}-seg"),
        format!("mp-test-{}-{}-seg", common::run_token(), u32::MAX - me),
    ];
    let _removed = Removed(foreign.clone());
    let paths: Vec<String> = foreign.iter().map(|n| format!("/dev/shm/{n}")).collect();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"for f in "$@"; do head -c 4096 /dev/zero > "$f" || exit 1; done"#)
        .arg("sh")
        .args(&paths)
        .status()
        .unwrap();
    assert!(status.success(), "sh: {status:?}");
    // They outlast the grace, yet none is this test's leak.
    let left = leaks.shm_left(Duration::from_millis(200));
    assert!(
        left.is_empty(),
        "foreign segments counted as leaks: {left:?}"
    );
    drop(leaks);
    for p in &paths {
        assert!(std::path::Path::new(p).exists(), "{p} vanished");
    }
}

#[multiproc::test]
fn leak_check_fails_on_a_segment_of_ours_left_behind() {
    let _serial = one_at_a_time();
    let leaks = LeakCheck::new();
    let name = common::shm_name("kept");
    let seg = multiproc::SharedMemory::create(&name, 4096).unwrap();
    // Still there when the check ends: a leak, reported by name.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(leaks)));
    drop(seg); // unlinks
    let message = caught.expect_err("the leak check passed with a segment left behind");
    let message = message.downcast_ref::<String>().map_or("", String::as_str);
    assert!(
        message.contains("/dev/shm entries left") && message.contains(&name),
        "{message}"
    );
    assert!(common::shm_entries().is_empty());
}

#[test]
fn zombie_check_sees_only_children_of_this_process() {
    // Another program's zombie: the child of a shell that exec'd into `sleep`, which never
    // reaps it. It is a grandchild of this process, not a child.
    let mut foreign = common::Reaped(
        Command::new("sh")
            .arg("-c")
            .arg("sh -c 'exit 0' & exec sleep 10")
            .spawn()
            .unwrap(),
    );
    let sleeper = foreign.0.id();
    let mut theirs = None;
    assert!(
        common::eventually(Duration::from_secs(10), || {
            theirs = common::processes()
                .into_iter()
                .find(|&(_, ppid, st)| ppid == sleeper && st == 'Z')
                .map(|(pid, _, _)| pid);
            theirs.is_some()
        }),
        "the other program's zombie never appeared"
    );
    let zombies = common::zombies();
    assert!(!zombies.contains(&theirs.unwrap()), "{zombies:?}");
    // A child of this process that ended and was not waited for is a zombie of ours.
    let mut ours = Command::new("true").spawn().unwrap();
    let pid = ours.id();
    assert!(
        common::eventually(Duration::from_secs(10), || common::zombies().contains(&pid)),
        "an unreaped child of this process is not seen as a zombie"
    );
    ours.wait().unwrap();
    foreign.0.kill().unwrap();
}

/// A wait of `ms` milliseconds, as a timed-out call would take.
fn wait_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Whether `check` panics with a message containing `words`.
fn fails_with(words: &str, check: impl FnOnce()) -> bool {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    let Err(message) = caught else { return false };
    message
        .downcast_ref::<String>()
        .is_some_and(|m| m.contains(words))
}

#[test]
fn timeout_check_passes_a_wait_the_machine_ran_late_once() {
    let mut tries = 0;
    common::assert_times_out_on_time(
        Duration::from_millis(50),
        Duration::from_millis(100),
        || {
            tries += 1;
            // The first time, the process is run 500 ms late (a busy machine).
            wait_ms(if tries == 1 { 550 } else { 50 });
        },
    );
    assert!(tries >= 2);
}

#[test]
fn timeout_check_fails_a_wait_that_is_always_late() {
    assert!(fails_with("late or more every time", || {
        common::assert_times_out_on_time(
            Duration::from_millis(50),
            Duration::from_millis(100),
            || wait_ms(200),
        )
    }));
}

#[test]
fn timeout_check_fails_a_wait_that_returns_early() {
    assert!(fails_with("returned early", || {
        common::assert_times_out_on_time(
            Duration::from_millis(50),
            Duration::from_millis(100),
            || wait_ms(10),
        )
    }));
}
