//! Process API: results, exit codes, panics, signals, timeouts, names, handles, nesting.
//! Every body runs once per start method.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::{LeakCheck, alive, eventually};
use multiproc::{Fd, Func, Process, ProcessError, StartMethod};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    name: String,
    pid: u32,
    parent_pid: Option<u32>,
    parent_alive: bool,
    identity: Vec<u32>,
    daemon: bool,
    cpus: usize,
}

#[multiproc::func]
fn whoami() -> Report {
    let me = multiproc::current_process();
    let parent = multiproc::parent_process();
    Report {
        name: me.name().to_string(),
        pid: me.pid(),
        parent_pid: parent.as_ref().map(|p| p.pid()),
        parent_alive: parent.as_ref().is_some_and(|p| p.is_alive()),
        identity: me.identity().to_vec(),
        daemon: me.daemon(),
        cpus: multiproc::cpu_count(),
    }
}

#[multiproc::func]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[multiproc::func]
fn exit_with(code: i32) -> u8 {
    std::process::exit(code)
}

#[multiproc::func]
fn panics(msg: String) -> u8 {
    panic!("custom: {msg}")
}

#[multiproc::func]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::func]
fn sleep_then_exit(ms: u64, code: i32) -> u8 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::exit(code)
}

#[multiproc::func]
fn echo_big(data: Vec<u8>) -> Vec<u8> {
    data.iter().rev().copied().collect()
}

/// A result that writes `len` bytes of itself, then refuses to serialize.
#[derive(Debug, Deserialize)]
struct Refuses {
    len: usize,
}

impl Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        let mut t = s.serialize_tuple(self.len + 1)?;
        for _ in 0..self.len {
            t.serialize_element(&7u8)?;
        }
        Err(S::Error::custom(format!(
            "refused after {} bytes",
            self.len
        )))
    }
}

#[multiproc::func]
fn refuse_after(len: usize) -> Refuses {
    Refuses { len }
}

/// Points this child's standard output at `fd` and prints `text` without a newline: the
/// line stays in the standard-output buffer unless the child flushes it before it exits.
#[multiproc::func]
fn print_partial_line(fd: Fd, text: String) -> u8 {
    use std::os::fd::AsRawFd;
    let fd = fd.into_owned();
    nix::unistd::dup2_stdout(&fd).unwrap();
    drop(fd);
    assert_eq!(std::io::stdout().as_raw_fd(), 1);
    // Not `print!`: under libtest, a forked test thread still has its output captured.
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()).unwrap();
    0
}

#[multiproc::func]
fn write_to(fd: Fd, text: String) -> usize {
    use std::io::Write;
    let mut f = std::fs::File::from(fd.into_owned());
    f.write_all(text.as_bytes()).unwrap();
    text.len()
}

#[multiproc::func]
fn nested(method: String) -> (Report, Report) {
    let method: StartMethod = method.parse().unwrap();
    let inner = Process::builder()
        .start_method(method)
        .start(&whoami, ())
        .unwrap();
    (whoami(), inner.join().unwrap())
}

/// Starts `n` children that sleep a little, drops their handles while they run and returns
/// those of them still zombies of this process 2 s after they all ended.
#[multiproc::func]
fn drop_running_children(method: String, n: u32) -> Vec<u32> {
    let method: StartMethod = method.parse().unwrap();
    let pids = start_and_drop(method, n);
    zombies_after_they_end(&pids)
}

/// Starts `n` children that sleep 100 ms and more and drops their handles while they run.
fn start_and_drop(method: StartMethod, n: u32) -> HashSet<u32> {
    (0..n)
        .map(|i| {
            builder(method)
                .start(&sleep_ms, 100 + 10 * u64::from(i))
                .unwrap()
                .pid()
        })
        .collect()
}

/// Waits (at most 20 s) until every process of `pids` has ended, then gives those of them
/// that are still zombies of this process 2 s later. Nothing here reaps: it only looks at
/// /proc (no start, no `active_children`).
fn zombies_after_they_end(pids: &HashSet<u32>) -> Vec<u32> {
    assert!(
        eventually(Duration::from_secs(20), || pids.iter().all(|&p| !alive(p))),
        "the children did not end"
    );
    let mut left = Vec::new();
    eventually(Duration::from_secs(2), || {
        left = common::zombies();
        left.retain(|p| pids.contains(p));
        left.is_empty()
    });
    left
}

fn not_registered(x: u32) -> u32 {
    x
}

/// Starts `watch_parent_end` as a non-daemonic child, waits until it has looked at its
/// parent once, and ends without joining it (`_exit`: `exit` would join it, as Python's
/// `sys.exit` does): the grandchild becomes an orphan.
#[multiproc::func]
fn leave_orphan(method: String, out: Fd) -> u8 {
    let method: StartMethod = method.parse().unwrap();
    let (mut ready_r, ready_w) = std::io::pipe().unwrap();
    let grandchild = Process::builder()
        .start_method(method)
        .start(&watch_parent_end, (out, Fd::from(OwnedFd::from(ready_w))))
        .unwrap();
    let mut byte = [0u8; 1];
    ready_r.read_exact(&mut byte).unwrap();
    std::mem::forget(grandchild);
    // SAFETY: `_exit` takes no pointer and ends the process at once.
    unsafe { nix::libc::_exit(0) }
}

/// Reports whether its parent was alive at start and whether it saw the parent end.
#[multiproc::func]
fn watch_parent_end(out: Fd, ready: Fd) -> u8 {
    use std::io::Write;
    let parent = multiproc::parent_process().unwrap();
    let at_start = parent.is_alive();
    std::fs::File::from(ready.into_owned())
        .write_all(b"!")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while parent.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = format!(
        "alive at start: {at_start}, alive now: {}",
        parent.is_alive()
    );
    std::fs::File::from(out.into_owned())
        .write_all(report.as_bytes())
        .unwrap();
    0
}

fn builder(method: StartMethod) -> multiproc::Builder {
    Process::builder().start_method(method)
}

per_start_method!(
    typed_result_and_identity,
    a_child_holds_no_descriptor_of_its_siblings,
    a_forked_copy_of_a_sibling_handle_can_signal_it_but_not_wait_for_it,
    several_arguments,
    exit_codes,
    panic_message_comes_back,
    signals_give_negative_exit_codes,
    join_timeout_is_accurate,
    large_arguments_and_results,
    results_of_every_size_come_back,
    children_ending_every_way_in_a_row_report_their_own,
    result_that_cannot_be_encoded_is_a_codec_error,
    partial_stdout_line_is_flushed_at_exit,
    file_descriptor_passes_to_child,
    sentinel_becomes_readable_at_exit,
    child_spawns_its_own_child,
    many_concurrent_children,
    sequential_spawns_leave_no_zombie,
    unregistered_function_is_refused,
    daemon_flag_and_names,
    stop_signals_work_when_the_parent_blocks_them,
    orphan_sees_its_parent_end,
    dropped_handles_are_reaped_when_their_children_end,
    a_child_reaps_the_children_it_dropped,
    a_daemon_that_closes_its_descriptors_lives_while_its_parent_does,
);

fn typed_result_and_identity(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method).name("worker-a").start(&whoami, ()).unwrap();
    let pid = p.pid();
    let r = p.join().unwrap();
    assert_eq!(r.name, "worker-a");
    assert_eq!(r.pid, pid);
    assert_eq!(r.parent_pid, Some(std::process::id()));
    assert!(r.parent_alive);
    assert_eq!(r.identity.len(), 1);
    assert!(!r.daemon);
    assert_eq!(r.cpus, multiproc::cpu_count());
}

/// The kinds of descriptor this process holds (`/proc/self/fd` link targets, with the
/// numbers of sockets and pipes cut off), pidfds left out.
#[multiproc::func]
fn my_descriptor_kinds() -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t != "anon_inode:[pidfd]")
        .map(|t| match t.split_once(":[") {
            Some((kind @ ("socket" | "pipe"), _)) => kind.to_string(),
            // The listing itself.
            _ if t.starts_with("/proc/") => "/proc/PID/fd".to_string(),
            _ => t,
        })
        .collect();
    kinds.sort();
    kinds
}

/// The descriptors of a child started alone and of one started beside four running
/// siblings, all with `method`.
#[multiproc::func]
fn descriptors_alone_and_beside_siblings(method: String) -> (Vec<String>, Vec<String>) {
    let method: StartMethod = method.parse().unwrap();
    let kinds = |p: Process<Vec<String>>| p.join().unwrap();
    let alone = kinds(builder(method).start(&my_descriptor_kinds, ()).unwrap());
    let siblings: Vec<_> = (0..4)
        .map(|_| builder(method).start(&sleep_ms, 2_000).unwrap())
        .collect();
    let beside = kinds(builder(method).start(&my_descriptor_kinds, ()).unwrap());
    for s in siblings {
        s.terminate().unwrap();
        let _ = s.join();
    }
    (alone, beside)
}

/// A child keeps nothing of this process's side of its other children (their report
/// channels): under the fork method, a child held what its parent held at the fork, two
/// sockets per earlier sibling. (A sibling's pidfd stays, so that a forked copy of its handle
/// can still signal it.) Looked at in a process of its own: the other tests of this binary,
/// which the plain test harness runs beside this one, make descriptors a fork inherits too.
fn a_child_holds_no_descriptor_of_its_siblings(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let (alone, beside) = Process::builder()
        .start_method(StartMethod::Spawn)
        .start(&descriptors_alone_and_beside_siblings, method.to_string())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        beside, alone,
        "alone: {alone:?}; beside four siblings: {beside:?}"
    );
}

/// A forked child has a copy of its parent's handle of a sibling: it can signal the sibling
/// (its pidfd stays open in the child), but waiting is refused with an error, not done on the
/// report channel the fork closed (its number may be another file of the child's by then).
fn a_forked_copy_of_a_sibling_handle_can_signal_it_but_not_wait_for_it(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let sibling = builder(method).start(&sleep_ms, 30_000).unwrap();
    let child = Process::builder()
        .fork(|| {
            let refused = matches!(
                sibling.join_timeout(Duration::from_millis(10)),
                Err(ProcessError::Io { .. })
            );
            (refused, sibling.terminate().is_ok())
        })
        .unwrap();
    assert_eq!(child.join().unwrap(), (true, true));
    assert!(sibling.join_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(sibling.exitcode(), Some(-15));
}

fn several_arguments(method: StartMethod) {
    let _leaks = LeakCheck::new();
    assert_eq!(
        builder(method)
            .start(&add, (40, 2))
            .unwrap()
            .join()
            .unwrap(),
        42
    );
}

fn exit_codes(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let ok = builder(method).start(&add, (1, 1)).unwrap();
    assert!(ok.join_timeout(Duration::from_secs(20)).unwrap());
    assert_eq!(ok.exitcode(), Some(0));
    for code in [3, 42] {
        let p = builder(method).start(&exit_with, code).unwrap();
        assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
        assert_eq!(p.exitcode(), Some(code));
        match p.join() {
            Err(ProcessError::Exited { code: c, .. }) => assert_eq!(c, code),
            other => panic!("expected Exited, got {other:?}"),
        }
    }
    let p = builder(method).start(&panics, "x".into()).unwrap();
    assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    assert_eq!(p.exitcode(), Some(1));
}

fn panic_message_comes_back(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .start(&panics, "the answer is 42".into())
        .unwrap();
    let pid = p.pid();
    match p.join() {
        Err(ProcessError::Panicked { pid: p2, message }) => {
            assert_eq!(p2, pid);
            assert_eq!(message, "custom: the answer is 42");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
}

fn signals_give_negative_exit_codes(method: StartMethod) {
    let _leaks = LeakCheck::new();
    for (sig, send) in [
        (
            15,
            Process::terminate as fn(&Process<u64>) -> Result<(), ProcessError>,
        ),
        (9, Process::kill),
        (2, Process::interrupt),
    ] {
        let p = builder(method).start(&sleep_ms, 30_000).unwrap();
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        send(&p).unwrap();
        assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
        assert_eq!(p.exitcode(), Some(-sig));
        assert!(!p.is_alive());
        match p.join() {
            Err(ProcessError::Killed { signal, .. }) => assert_eq!(signal, sig),
            other => panic!("expected Killed, got {other:?}"),
        }
    }
    // Signalling a finished process is a no-op, not an error.
    let p = builder(method).start(&add, (1, 2)).unwrap();
    assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    p.terminate().unwrap();
    assert_eq!(p.join().unwrap(), 3);
}

/// A program that blocks SIGTERM/SIGINT in the thread that starts children (to wait for
/// them with `sigwait`, as servers do) still gets children that `terminate` ends: children
/// start with nothing blocked.
fn stop_signals_work_when_the_parent_blocks_them(method: StartMethod) {
    let _leaks = LeakCheck::new();
    std::thread::spawn(move || {
        let mut stops = nix::sys::signal::SigSet::empty();
        stops.add(nix::sys::signal::Signal::SIGTERM);
        stops.add(nix::sys::signal::Signal::SIGINT);
        stops.thread_block().unwrap();
        for (sig, send) in [
            (
                15,
                Process::terminate as fn(&Process<u64>) -> Result<(), ProcessError>,
            ),
            (2, Process::interrupt),
        ] {
            let p = builder(method).start(&sleep_ms, 30_000).unwrap();
            send(&p).unwrap();
            assert!(
                p.join_timeout(Duration::from_secs(10)).unwrap(),
                "the child ignored signal {sig}"
            );
            assert_eq!(p.exitcode(), Some(-sig));
        }
    })
    .join()
    .unwrap();
}

fn join_timeout_is_accurate(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method).start(&sleep_ms, 30_000).unwrap();
    common::assert_times_out_on_time(
        Duration::from_millis(300),
        Duration::from_millis(100),
        || assert!(!p.join_timeout(Duration::from_millis(300)).unwrap()),
    );
    p.kill().unwrap();
    assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
    // A short sleeper ends within its time.
    let p = builder(method).start(&sleep_ms, 100).unwrap();
    assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(p.join().unwrap(), 100);
}

fn large_arguments_and_results(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7) as u8).collect();
    let expected: Vec<u8> = data.iter().rev().copied().collect();
    let p = builder(method).start(&echo_big, data).unwrap();
    // Polling while the child writes a result larger than the socket buffer must not stall.
    assert!(eventually(Duration::from_secs(30), || !p.is_alive()));
    assert_eq!(p.join().unwrap(), expected);
}

fn results_of_every_size_come_back(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // Around the child's small result buffer (64 bytes), one length byte (128), the inline
    // report limit (32 KiB).
    for len in [
        0,
        1,
        61,
        62,
        63,
        64,
        65,
        126,
        127,
        128,
        300,
        32 * 1024,
        40_000,
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let expected: Vec<u8> = data.iter().rev().copied().collect();
        let p = builder(method).start(&echo_big, data).unwrap();
        assert_eq!(p.join().unwrap(), expected, "{len} bytes");
    }
    let p = Process::fork(|| "x".repeat(100)).unwrap();
    assert_eq!(p.join().unwrap(), "x".repeat(100));
}

/// Forked children reuse the report channel of one that ended cleanly: whatever way the one
/// before ended (returned, panicked, exited without a report, killed, a result through a
/// memfd), the next one's result is its own.
fn children_ending_every_way_in_a_row_report_their_own(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    for round in 0..3u64 {
        assert_eq!(
            builder(method)
                .start(&add, (round, 1))
                .unwrap()
                .join()
                .unwrap(),
            round + 1
        );
        match builder(method)
            .start(&panics, format!("round {round}"))
            .unwrap()
            .join()
        {
            Err(ProcessError::Panicked { message, .. }) => {
                assert_eq!(message, format!("custom: round {round}"))
            }
            other => panic!("expected Panicked, got {other:?}"),
        }
        match builder(method).start(&exit_with, 3).unwrap().join() {
            Err(ProcessError::Exited { code: 3, .. }) => {}
            other => panic!("expected Exited, got {other:?}"),
        }
        let p = builder(method).start(&sleep_ms, 10_000).unwrap();
        p.kill().unwrap();
        match p.join() {
            Err(ProcessError::Killed { signal: 9, .. }) => {}
            other => panic!("expected Killed, got {other:?}"),
        }
        let echoed = builder(method)
            .start(&echo_big, big.clone())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(echoed.len(), big.len());
        assert!(echoed.iter().rev().eq(big.iter()));
        let small = vec![round as u8; 100];
        assert_eq!(
            builder(method)
                .start(&echo_big, small.clone())
                .unwrap()
                .join()
                .unwrap(),
            small
        );
    }
}

fn result_that_cannot_be_encoded_is_a_codec_error(method: StartMethod) {
    let _leaks = LeakCheck::new();
    // Within the child's small result buffer, past it, and then a good result again.
    for len in [0, 10, 200] {
        match builder(method).start(&refuse_after, len).unwrap().join() {
            // The codec (postcard) keeps no words of a custom error raised by a user's type:
            // the error names the type.
            Err(ProcessError::Codec(multiproc::CodecError::Encode(message))) => assert!(
                message.contains("Refuses`: its Serialize implementation failed"),
                "{message}"
            ),
            other => panic!("expected an encode error after {len} bytes, got {other:?}"),
        }
    }
    assert_eq!(
        builder(method).start(&add, (2, 3)).unwrap().join().unwrap(),
        5
    );
}

/// Starts `f` with the write end of a pipe and `text`, joins it; gives back its result and
/// what came through the pipe.
fn through_pipe<F, M>(method: StartMethod, f: &F, text: &str) -> (F::Output, String)
where
    F: Func<M, Args = (Fd, String)>,
{
    let (mut read, write) = std::io::pipe().unwrap();
    let p = builder(method)
        .start(f, (Fd::from(OwnedFd::from(write)), text.into()))
        .unwrap();
    let result = p.join().unwrap();
    let mut got = String::new();
    read.read_to_string(&mut got).unwrap();
    (result, got)
}

fn partial_stdout_line_is_flushed_at_exit(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let (code, got) = through_pipe(method, &print_partial_line, "no newline here");
    assert_eq!((code, got.as_str()), (0, "no newline here"));
}

fn file_descriptor_passes_to_child(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let (n, got) = through_pipe(method, &write_to, "through SCM_RIGHTS");
    assert_eq!((n, got.as_str()), (18, "through SCM_RIGHTS"));
}

fn orphan_sees_its_parent_end(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let (mut read, write) = std::io::pipe().unwrap();
    let p = builder(method)
        .start(
            &leave_orphan,
            (method.to_string(), Fd::from(OwnedFd::from(write))),
        )
        .unwrap();
    assert!(p.join_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    // EOF once the grandchild has written its report and ended (it gives up after 10 s).
    let mut got = String::new();
    read.read_to_string(&mut got).unwrap();
    assert_eq!(got, "alive at start: true, alive now: false");
}

fn sentinel_becomes_readable_at_exit(method: StartMethod) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let _leaks = LeakCheck::new();
    let p = builder(method).start(&sleep_ms, 200).unwrap();
    let mut set = [PollFd::new(p.sentinel(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut set, PollTimeout::ZERO).unwrap(),
        0,
        "ready while running"
    );
    assert_eq!(
        poll(&mut set, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "not ready after exit"
    );
    assert_eq!(p.join().unwrap(), 200);
}

fn child_spawns_its_own_child(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method).start(&nested, method.to_string()).unwrap();
    let (outer, inner) = p.join().unwrap();
    assert_eq!(inner.parent_pid, Some(outer.pid));
    assert!(inner.parent_alive);
    assert_eq!(inner.identity.len(), 2);
    assert_eq!(inner.identity[..1], outer.identity[..]);
    assert_eq!(inner.name, format!("Process-{}:1", outer.identity[0]));
}

fn many_concurrent_children(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let procs: Vec<_> = (0..64u64)
        .map(|i| builder(method).start(&add, (i, 1000)).unwrap())
        .collect();
    let pids: std::collections::HashSet<u32> = procs.iter().map(|p| p.pid()).collect();
    assert_eq!(pids.len(), 64);
    let results: Vec<u64> = procs.into_iter().map(|p| p.join().unwrap()).collect();
    assert_eq!(results, (0..64).map(|i| i + 1000).collect::<Vec<_>>());
}

fn sequential_spawns_leave_no_zombie(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let n = if method == StartMethod::Spawn {
        300
    } else {
        1000
    };
    let mut pids = std::collections::HashSet::new();
    for i in 0..n {
        let p = builder(method).start(&add, (i, 1)).unwrap();
        pids.insert(p.pid());
        if i % 2 == 0 {
            assert_eq!(p.join().unwrap(), i + 1);
        } // odd ones: handle dropped without join; reaped later all the same
    }
    // Only this test's children: under plain cargo test other tests' children run beside.
    assert!(eventually(Duration::from_secs(10), || {
        !multiproc::active_children()
            .iter()
            .any(|c| pids.contains(&c.pid()))
    }));
    common::assert_no_lasting_zombie();
}

/// Children whose handles were dropped while they ran are reaped as they end, with no call
/// that reaps (no start, no `active_children`); a child whose handle is kept still gives its
/// exit status to that handle.
fn dropped_handles_are_reaped_when_their_children_end(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let kept = builder(method).start(&sleep_then_exit, (200, 7)).unwrap();
    let pids = start_and_drop(method, 20);
    let left = zombies_after_they_end(&pids);
    assert!(left.is_empty(), "zombies 2 s after they ended: {left:?}");
    assert!(kept.join_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(kept.exitcode(), Some(7));
    match kept.join() {
        Err(ProcessError::Exited { code: 7, .. }) => {}
        other => panic!("expected Exited with code 7, got {other:?}"),
    }
}

/// A child (a forked one too, whose parent already drops handles of running children)
/// reaps the children whose handles it dropped.
fn a_child_reaps_the_children_it_dropped(method: StartMethod) {
    let _leaks = LeakCheck::new();
    drop(builder(method).start(&sleep_ms, 50).unwrap());
    let p = builder(method)
        .start(&drop_running_children, (method.to_string(), 5))
        .unwrap();
    let left = p.join().unwrap();
    assert!(
        left.is_empty(),
        "the child's zombies 2 s after they ended: {left:?}"
    );
}

fn unregistered_function_is_refused(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let err = builder(method).start(&not_registered, 1).unwrap_err();
    assert!(matches!(err, ProcessError::NotRegistered { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not_registered") && msg.contains("#[multiproc::func]"),
        "{msg}"
    );
    let err = (|x: u32| x + 1).spawn(1).unwrap_err();
    assert!(matches!(err, ProcessError::NotRegistered { .. }));
}

fn daemon_flag_and_names(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method).daemon(true).start(&whoami, ()).unwrap();
    assert!(p.daemon());
    assert!(p.name().starts_with("Process-"));
    let r = p.join().unwrap();
    assert!(r.daemon);
}

#[multiproc::test]
fn fork_runs_closures_with_captured_state() {
    let _leaks = LeakCheck::new();
    let words: Vec<String> = vec!["a".into(), "bc".into(), "def".into()];
    let words = std::hint::black_box(words);
    let p = Process::fork(move || words.iter().map(|w| w.len()).sum::<usize>()).unwrap();
    assert_eq!(p.join().unwrap(), 6);
    let p = Process::fork(|| -> u8 { panic!("closure panic") }).unwrap();
    assert!(
        matches!(p.join(), Err(ProcessError::Panicked { message, .. }) if message == "closure panic")
    );
}

#[multiproc::test]
fn active_children_lists_running_and_reaps_finished() {
    let _leaks = LeakCheck::new();
    let running = sleep_ms.spawn(30_000).unwrap();
    let done = add.spawn((1, 2)).unwrap();
    assert!(done.join_timeout(Duration::from_secs(20)).unwrap());
    let pids: Vec<u32> = multiproc::active_children()
        .iter()
        .map(|c| c.pid())
        .collect();
    assert!(pids.contains(&running.pid()));
    assert!(!pids.contains(&done.pid()));
    running.kill().unwrap();
    assert!(running.join_timeout(Duration::from_secs(10)).unwrap());
    assert!(!alive(running.pid()));
}

#[multiproc::test]
fn result_is_taken_once_and_join_twice_is_not_possible() {
    // `join` consumes the handle; a second look goes through the exit code.
    let p = add.spawn((2, 2)).unwrap();
    assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(p.join().unwrap(), 4);
}

#[test]
fn start_method_names_round_trip() {
    for m in StartMethod::ALL {
        assert_eq!(m.to_string().parse::<StartMethod>().unwrap(), m);
    }
    assert!("vfork".parse::<StartMethod>().is_err());
}

#[multiproc::test]
fn threads_forking_at_once_each_get_their_own_results() {
    let _leaks = LeakCheck::new();
    // Report channels are reused between forks; threads take and give them back at once,
    // and a child that forks in turn must not take its parent's spare one.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    let p = Process::fork(move || {
                        let grandchild = Process::fork(move || t * 1000 + i).unwrap();
                        (
                            grandchild.join().unwrap(),
                            vec![t as u8; (i as usize) % 130],
                        )
                    })
                    .unwrap();
                    let expected = (t * 1000 + i, vec![t as u8; (i as usize) % 130]);
                    assert_eq!(p.join().unwrap(), expected);
                    let q = builder(StartMethod::Fork).start(&add, (t, i)).unwrap();
                    assert_eq!(q.join().unwrap(), t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[multiproc::test]
fn fork_child_does_not_hang_on_stdout_held_by_another_thread() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _leaks = LeakCheck::new();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _held = std::io::stdout().lock();
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    for _ in 0..40 {
        let p = Process::fork(|| -> u8 {
            let _ = std::io::stdout().write_all(b"");
            let _ = std::io::stderr().write_all(b"");
            std::process::exit(7)
        })
        .unwrap();
        let ended = p.join_timeout(Duration::from_secs(10)).unwrap();
        if !ended {
            let _ = p.kill();
            let _ = p.join_timeout(Duration::from_secs(5));
        }
        assert!(ended, "a forked child hung on a lock another thread held");
        assert_eq!(p.exitcode(), Some(7));
    }
    stop.store(true, Ordering::Relaxed);
    holder.join().unwrap();
}

/// Closes every descriptor from 3 up (as a task may), waits, then exits with `code`.
#[multiproc::func]
fn close_every_fd_then_exit(code: i32) {
    for fd in 3..1024 {
        let _ = nix::unistd::close(fd);
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::exit(code);
}

/// A daemon ends when its parent does, watched through a descriptor of the parent. A daemon
/// that closes every descriptor (a task in a pool worker may) closes that one too: it must
/// not take that for its parent's end and kill itself.
fn a_daemon_that_closes_its_descriptors_lives_while_its_parent_does(method: StartMethod) {
    let _leaks = LeakCheck::new();
    let p = builder(method)
        .daemon(true)
        .start(&close_every_fd_then_exit, 7)
        .unwrap();
    assert!(p.join_timeout(Duration::from_secs(30)).unwrap());
    assert_eq!(p.exitcode(), Some(7));
}
