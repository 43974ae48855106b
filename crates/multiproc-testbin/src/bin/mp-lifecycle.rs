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
//! - `hold`: starts the forkserver (pid in `DIR/forkserver.pid`) and a daemon child (pid in
//!   `DIR/daemon.pid`), then sleeps until killed.

use std::path::PathBuf;
use std::time::Duration;

use multiproc::{Process, StartMethod};

#[multiproc::func]
fn finish_later(dir: String) {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(PathBuf::from(dir).join("nondaemon.done"), b"done").unwrap();
}

#[multiproc::func]
fn sleep_long() {
    std::thread::sleep(Duration::from_secs(60));
}

fn write_pid(dir: &str, file: &str, pid: u32) {
    let tmp = PathBuf::from(dir).join(format!("{file}.tmp"));
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(tmp, PathBuf::from(dir).join(file)).unwrap();
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
                .start(&finish_later, dir.clone())?;
            let daemon = Process::builder()
                .daemon(true)
                .start_method(method)
                .start(&sleep_long, ())?;
            write_pid(&dir, "daemon.pid", daemon.pid());
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
