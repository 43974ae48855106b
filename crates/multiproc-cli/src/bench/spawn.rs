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

/// Runs the group: each start method next to the OS primitive and CPython.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let n = r.size.pick(5, 60, 400);
    r.group(&format!(
        "spawn: start + join of an empty function, median of {n}"
    ));
    multiproc::start_forkserver()?; // its own start-up is not a per-child cost
    let methods = [
        StartMethod::Spawn,
        StartMethod::Forkserver,
        StartMethod::Fork,
    ];
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
    // All in turns: a raw fork and ours see the same moments of the machine.
    let samples = Samples::measure_in_turns(
        n,
        5,
        &mut [
            &mut || start_join(StartMethod::Spawn),
            &mut || start_join(StartMethod::Forkserver),
            &mut || start_join(StartMethod::Fork),
            &mut || {
                let _ = Process::fork(|| 0u8).and_then(|p| p.join());
            },
            &mut raw_fork_exit_wait,
            &mut raw_posix_spawn_true,
        ],
    );
    if let Some(e) = err.into_inner() {
        return Err(e.into());
    }
    let (fork, posix) = (&samples[4], &samples[5]);
    for (method, s) in methods.iter().zip(&samples) {
        let os = match method {
            StartMethod::Spawn => ("posix_spawn(/bin/true)", posix.median()),
            _ => ("raw fork", fork.median()),
        };
        let py = r.cpython("mp_spawn.py", &format!("py.spawn1.{method}"), 1e-6);
        r.row(
            "spawn",
            &format!("multiproc {method}"),
            Unit::Secs,
            s,
            &[(os.0, Some(os.1)), ("CPython", py)],
        );
    }
    r.row(
        "spawn",
        "multiproc fork (closure)",
        Unit::Secs,
        &samples[3],
        &[("raw fork", Some(fork.median()))],
    );
    r.row("spawn", "raw fork+_exit+waitpid", Unit::Secs, fork, &[]);
    r.row("spawn", "raw posix_spawn /bin/true", Unit::Secs, posix, &[]);
    Ok(())
}
