//! The `spawn` group: start → join of an empty function per start method, next to the OS
//! primitives measured in the same run (`fork`+`_exit`+`waitpid`, `posix_spawn` of
//! `/bin/true`), printed as ratios.

use multiproc::{Process, StartMethod};

use super::pep::empty_func;
use super::report::{Report, Unit};
use super::stats::Samples;

/// `fork()`, the child `_exit(0)`s at once, `waitpid`.
fn raw_fork_exit_wait() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe; nothing else of
    // this (possibly multithreaded) process runs in it.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // SAFETY: `_exit` takes no pointers and never returns.
            unsafe { nix::libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).expect("waitpid");
        }
    }
}

/// `posix_spawn("/bin/true")` and `waitpid`.
fn raw_posix_spawn_true() {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, posix_spawn};
    let path = c"/bin/true";
    let env: Vec<std::ffi::CString> = Vec::new();
    let pid = posix_spawn(
        path,
        &PosixSpawnFileActions::init().expect("file actions"),
        &PosixSpawnAttr::init().expect("attr"),
        &[path],
        &env,
    )
    .expect("posix_spawn /bin/true");
    nix::sys::wait::waitpid(pid, None).expect("waitpid");
}

/// Keeps this thread busy for `d` (a sleep would let the CPU idle, and the next start would
/// pay for waking it).
fn spin(d: std::time::Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Runs the group: each start method next to the OS primitive and CPython.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let n = r.size.pick(5, 60, 400);
    r.group(&format!(
        "spawn: start + join of an empty function, median of {n}"
    ));
    multiproc::start_forkserver()?; // its own start-up is not a per-child cost
    let err = std::cell::RefCell::new(None);
    let start_join = |method: StartMethod| {
        let r = Process::builder()
            .start_method(method)
            .start(&empty_func, ())
            .and_then(|p| p.join());
        if let Err(e) = r {
            *err.borrow_mut() = Some(e);
        }
    };
    // In turns: a figure and its reference see the same moments of the machine. One
    // rotation per reference and per background: each start leaves work behind (an exec'd
    // image, the forkserver's next fork) that would land in whatever is measured next.
    let spawned = Samples::measure_in_turns(
        n,
        5,
        &mut [
            &mut || start_join(StartMethod::Spawn),
            &mut raw_posix_spawn_true,
        ],
    );
    // The forkserver keeps a child forked ahead once it has been idle for a millisecond:
    // measured once with that child ready (the caller busy for 1.5 ms first, the timing
    // thrown away) and once right after another start, when it forks on demand.
    let served = Samples::measure_in_turns(
        n,
        5,
        &mut [
            &mut || spin(std::time::Duration::from_micros(1500)),
            &mut || start_join(StartMethod::Forkserver),
            &mut raw_fork_exit_wait,
            &mut || start_join(StartMethod::Forkserver),
        ],
    );
    // With limits set (memory, CPU time, open files): the cost of setting them up in the
    // child, next to the same start without them.
    let start_join_limited = |method: StartMethod| {
        let r = Process::builder()
            .start_method(method)
            .memory_limit(1 << 30)
            .cpu_time_limit(std::time::Duration::from_secs(60))
            .rlimit(multiproc::Resource::NoFile, 1024, 1024)
            .start(&empty_func, ())
            .and_then(|p| p.join());
        if let Err(e) = r {
            *err.borrow_mut() = Some(e);
        }
    };
    let limited = Samples::measure_in_turns(
        n,
        5,
        &mut [
            &mut || spin(std::time::Duration::from_micros(1500)),
            &mut || start_join(StartMethod::Forkserver),
            &mut || spin(std::time::Duration::from_micros(1500)),
            &mut || start_join_limited(StartMethod::Forkserver),
        ],
    );
    let forked = Samples::measure_in_turns(
        n,
        5,
        &mut [
            &mut || start_join(StartMethod::Fork),
            &mut || {
                let _ = Process::fork(|| 0u8).and_then(|p| p.join());
            },
            &mut raw_fork_exit_wait,
        ],
    );
    if let Some(e) = err.into_inner() {
        return Err(e.into());
    }
    let rows = [
        (
            StartMethod::Spawn,
            &spawned[0],
            &spawned[1],
            "posix_spawn(/bin/true)",
        ),
        (StartMethod::Forkserver, &served[1], &served[2], "raw fork"),
        (StartMethod::Fork, &forked[0], &forked[2], "raw fork"),
    ];
    for (method, s, reference, what) in rows {
        let py = r.cpython("mp_spawn.py", &format!("py.spawn1.{method}"), 1e-6);
        r.row(
            "spawn",
            &format!("multiproc {method}"),
            Unit::Secs,
            s,
            &[(what, Some(reference.median())), ("CPython", py)],
        );
    }
    r.row(
        "spawn",
        "multiproc forkserver (back to back)",
        Unit::Secs,
        &served[3],
        &[("raw fork", Some(served[2].median()))],
    );
    r.row(
        "spawn",
        "multiproc forkserver with limits (memory, CPU, NoFile)",
        Unit::Secs,
        &limited[3],
        &[("no limits", Some(limited[1].median()))],
    );
    r.row(
        "spawn",
        "multiproc fork (closure)",
        Unit::Secs,
        &forked[1],
        &[("raw fork", Some(forked[2].median()))],
    );
    r.row(
        "spawn",
        "raw fork+_exit+waitpid (in turns with forkserver)",
        Unit::Secs,
        &served[2],
        &[],
    );
    r.row(
        "spawn",
        "raw fork+_exit+waitpid (in turns with fork)",
        Unit::Secs,
        &forked[2],
        &[],
    );
    r.row(
        "spawn",
        "raw posix_spawn /bin/true",
        Unit::Secs,
        &spawned[1],
        &[],
    );
    Ok(())
}
