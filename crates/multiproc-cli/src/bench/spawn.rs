//! The `spawn` group: start → join of an empty function per start method, next to the OS
//! primitives measured in the same run (`fork`+`_exit`+`waitpid`, `posix_spawn` of
//! `/bin/true`), printed as ratios.

use multiproc::{Process, StartMethod};

use super::pep::empty_func;
use super::stats::{Samples, human, ratio};

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

/// Runs the group and prints medians with spread, and the ratios to the OS.
pub(crate) fn run(quick: bool) -> multiproc::Result<()> {
    let n = if quick { 60 } else { 400 };
    println!("\n== spawn: start + join of an empty function, median of {n} (min..max) ==");
    multiproc::start_forkserver()?; // its own start-up is not a per-child cost
    let fork = Samples::measure(n, 5, raw_fork_exit_wait);
    let posix = Samples::measure(n, 5, raw_posix_spawn_true);
    let mut rows: Vec<(String, Samples, String)> = Vec::new();
    for method in [
        StartMethod::Spawn,
        StartMethod::Forkserver,
        StartMethod::Fork,
    ] {
        let mut err = None;
        let s = Samples::measure(n, 5, || {
            let r = Process::builder()
                .start_method(method)
                .start(&empty_func, ())
                .and_then(|p| p.join());
            if let Err(e) = r {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e.into());
        }
        let reference = match method {
            StartMethod::Spawn => format!(
                "{:.2}x posix_spawn(/bin/true)",
                ratio(s.median(), posix.median())
            ),
            _ => format!("{:.2}x raw fork", ratio(s.median(), fork.median())),
        };
        rows.push((format!("multiproc {method}"), s, reference));
    }
    let closure = Samples::measure(n, 5, || {
        let _ = Process::fork(|| 0u8).and_then(|p| p.join());
    });
    let closure_ratio = format!("{:.2}x raw fork", ratio(closure.median(), fork.median()));
    rows.push(("multiproc fork (closure)".into(), closure, closure_ratio));
    rows.push(("raw fork+_exit+waitpid".into(), fork, "1.00x (OS)".into()));
    rows.push((
        "raw posix_spawn /bin/true".into(),
        posix,
        "1.00x (OS)".into(),
    ));
    println!("{:<28} {:>12} {:>24}   ratio", "what", "median", "min..max");
    for (name, s, r) in rows {
        println!(
            "{name:<28} {:>12} {:>24}   {r}",
            human(s.median()),
            format!("{}..{}", human(s.min()), human(s.max()))
        );
    }
    Ok(())
}
