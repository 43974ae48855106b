//! A program with `#[multiproc::main]` for the lifecycle tests.
//!
//! `mp-lifecycle MODE DIR [METHOD]`:
//! - `main-end`: starts a non-daemon child that finishes after 300 ms (writing
//!   `DIR/nondaemon.done`) and a daemon child that would sleep 60 s (its pid in
//!   `DIR/daemon.pid`), then returns from `main` at once: the first is joined, the second
//!   terminated.
//! - `pool`: starts a pool of 2 workers (pids in `DIR/pool.pids`), then sleeps until killed.
//! - `manager`: starts a manager (its pid in `DIR/manager.pid`) holding a dict, then sleeps
//!   until killed.
//! - `shm`: creates the named segment `/mp-track-PID-root`, starts a child that creates
//!   `/mp-track-PID-killed` and SIGKILLs itself, and a daemon child that creates
//!   `/mp-track-PID-daemon` and sleeps; writes the three names to `DIR/shm.names`, then
//!   sleeps until killed. Nothing unlinks them but the tree's tracker. `MP_TEST_SHM_PREFIX`,
//!   if set, replaces `mp-` in the names (the test's own prefix, which its leak check sees).
//! - `hold`: starts the forkserver (pid in `DIR/forkserver.pid`) and a daemon child (pid in
//!   `DIR/daemon.pid`), then sleeps until killed.

use std::path::PathBuf;
use std::time::Duration;

use multiproc::{Process, StartMethod};
use multiproc_testbin::{finish_later, sleep_long, write_pid};

/// Creates the named segment `name`, writes `DIR/NAME.ready`, then: `hold` forgets the
/// handle and sleeps 60 s; otherwise the process SIGKILLs itself (nothing is dropped).
#[multiproc::func]
fn create_named(name: String, dir: String, hold: bool) {
    let shm = multiproc::SharedMemory::create(&name, 4096).unwrap();
    std::mem::forget(shm);
    let tag = name.trim_start_matches('/');
    write_pid(&dir, &format!("{tag}.ready"), std::process::id());
    if hold {
        std::thread::sleep(Duration::from_secs(60));
    } else {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[multiproc::main]
fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = (args[1].as_str(), args[2].clone());
    let method: StartMethod = args
        .get(3)
        .map_or(Ok(StartMethod::Forkserver), |m| m.parse())
        .unwrap();
    match mode {
        "main-end" => {
            let _joined = Process::builder()
                .start_method(method)
                .start(&finish_later, (dir.clone(), 300))?;
            let daemon = Process::builder()
                .daemon(true)
                .start_method(method)
                .start(&sleep_long, ())?;
            write_pid(&dir, "daemon.pid", daemon.pid());
        }
        "shm" => {
            let prefix = std::env::var("MP_TEST_SHM_PREFIX").unwrap_or_else(|_| "mp-".into());
            let base = format!("/{prefix}track-{}", std::process::id());
            let root = multiproc::SharedMemory::create(&format!("{base}-root"), 4096)?;
            std::mem::forget(root);
            let killed = format!("{base}-killed");
            let p = Process::builder()
                .start_method(method)
                .start(&create_named, (killed.clone(), dir.clone(), false))?;
            let _ = p.join(); // killed by itself
            let held = format!("{base}-daemon");
            let _daemon = Process::builder()
                .daemon(true)
                .start_method(method)
                .start(&create_named, (held.clone(), dir.clone(), true))?;
            let ready = PathBuf::from(&dir).join(format!("{}.ready", held.trim_start_matches('/')));
            while !ready.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let names = format!("{base}-root {killed} {held}");
            let tmp = PathBuf::from(&dir).join("shm.names.tmp");
            std::fs::write(&tmp, names).unwrap();
            std::fs::rename(tmp, PathBuf::from(&dir).join("shm.names")).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        "hold" => {
            write_pid(&dir, "forkserver.pid", multiproc::start_forkserver()?);
            let daemon = Process::builder()
                .daemon(true)
                .start_method(method)
                .start(&sleep_long, ())?;
            write_pid(&dir, "daemon.pid", daemon.pid());
            std::thread::sleep(Duration::from_secs(60));
        }
        "pool" => {
            let pool = multiproc::Pool::builder()
                .processes(2)
                .start_method(method)
                .build()?;
            let pids: Vec<String> = pool.initial_pids().iter().map(u32::to_string).collect();
            let tmp = PathBuf::from(&dir).join("pool.pids.tmp");
            std::fs::write(&tmp, pids.join(" ")).unwrap();
            std::fs::rename(tmp, PathBuf::from(&dir).join("pool.pids")).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        "manager" => {
            let mgr = multiproc::Manager::builder().start_method(method).start()?;
            let d = mgr.dict::<String, u64>()?;
            d.set(&"owner".into(), &u64::from(std::process::id()))?;
            let tmp = PathBuf::from(&dir).join("manager.pid.tmp");
            std::fs::write(&tmp, mgr.pid().to_string()).unwrap();
            std::fs::rename(tmp, PathBuf::from(&dir).join("manager.pid")).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown mode {other}"),
    }
    Ok(())
}
