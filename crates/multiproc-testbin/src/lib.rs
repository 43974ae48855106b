//! Helper binaries for the lifecycle tests live in `src/bin`; what several of them run is
//! here.

use std::path::PathBuf;
use std::time::Duration;

/// Sleeps `ms`, then writes `DIR/nondaemon.done`.
#[multiproc::func]
pub fn finish_later(dir: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(PathBuf::from(dir).join("nondaemon.done"), b"done").unwrap();
}

/// Sleeps 60 s (a child that only ends when something ends it).
#[multiproc::func]
pub fn sleep_long() {
    std::thread::sleep(Duration::from_secs(60));
}

/// Writes `pid` to `DIR/FILE` at once (through a rename: a reader never sees half of it).
pub fn write_pid(dir: &str, file: &str, pid: u32) {
    let tmp = PathBuf::from(dir).join(format!("{file}.tmp"));
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(tmp, PathBuf::from(dir).join(file)).unwrap();
}
