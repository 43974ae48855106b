//! CPython peers: the scripts of `crates/multiproc-cli/peers/py/` (built into the binary, so
//! `multiproc bench` works from any directory), run with the machine's `python3` when there is one.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use super::report::Size;

/// The peer scripts, by file name.
const SCRIPTS: [(&str, &str); 10] = [
    ("_common.py", include_str!("../../peers/py/_common.py")),
    (
        "mp_manager.py",
        include_str!("../../peers/py/mp_manager.py"),
    ),
    (
        "mp_manager_interop.py",
        include_str!("../../peers/py/mp_manager_interop.py"),
    ),
    (
        "mp_manager_server.py",
        include_str!("../../peers/py/mp_manager_server.py"),
    ),
    ("mp_pipe.py", include_str!("../../peers/py/mp_pipe.py")),
    ("mp_pool.py", include_str!("../../peers/py/mp_pool.py")),
    ("mp_queue.py", include_str!("../../peers/py/mp_queue.py")),
    ("mp_spawn.py", include_str!("../../peers/py/mp_spawn.py")),
    ("mp_primes.py", include_str!("../../peers/py/mp_primes.py")),
    (
        "mp_futures.py",
        include_str!("../../peers/py/mp_futures.py"),
    ),
];

/// Figures a peer script printed: name → (median, unit).
pub(crate) type Figures = HashMap<String, (f64, String)>;

/// Parses the scripts' `name value unit # spread` lines.
pub(crate) fn parse(output: &str) -> Figures {
    output
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('#').next()?.split_whitespace();
            let (name, value, unit) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), (value.parse().ok()?, unit.to_string())))
        })
        .collect()
}

/// Runs peer `script` (quick mode: `QUICK=1`). `Err` says why there are no CPython figures
/// (no python3, the script failed), for a note under the table.
pub(crate) fn run(script: &str, size: Size, enabled: bool) -> Result<Figures, String> {
    run_with(script, size, enabled, &[])
}

/// [`run`] with command-line arguments for the script.
pub(crate) fn run_with(
    script: &str,
    size: Size,
    enabled: bool,
    args: &[&str],
) -> Result<Figures, String> {
    if !enabled {
        return Err("CPython columns skipped (--no-python)".into());
    }
    let (dir, _cleanup) = write_scripts("run")?;
    let mut cmd = Command::new("python3");
    cmd.arg(dir.join(script)).args(args);
    if script == "mp_primes.py" && size != Size::Full {
        cmd.args(["--reps", "1", "--modes", "serial,balanced"]);
    }
    let out = cmd
        .env("QUICK", if size == Size::Full { "0" } else { "1" })
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|_| "no python3 on this machine: CPython columns skipped".to_string())?;
    if !out.status.success() {
        return Err(format!("python3 {script} failed: CPython columns skipped"));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Writes the peer scripts into a fresh directory (named after `what`), removed when the
/// guard drops.
fn write_scripts(what: &str) -> Result<(std::path::PathBuf, RemoveOnDrop), String> {
    let dir =
        std::env::temp_dir().join(format!("multiproc-bench-py-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot write the peer scripts: {e}"))?;
    let guard = RemoveOnDrop(dir.clone());
    for (name, text) in SCRIPTS {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("cannot write the peer scripts: {e}"))?;
    }
    Ok((dir, guard))
}

/// A peer script that keeps running (a server): it prints one line, then serves until its
/// stdin closes, which dropping the handle does (the process is then waited for).
pub(crate) struct Running {
    child: std::process::Child,
    _scripts: RemoveOnDrop,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Starts peer `script` with `args` and reads the first line it prints (within 30 s).
pub(crate) fn start(script: &str, args: &[&str]) -> Result<(Running, String), String> {
    use std::io::Read;
    let (dir, scripts) = write_scripts("server")?;
    let mut child = Command::new("python3")
        .arg(dir.join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|_| "no python3 on this machine: CPython columns skipped".to_string())?;
    let mut out = child.stdout.take();
    let running = Running {
        child,
        _scripts: scripts,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while let Some(o) = out.as_mut() {
            if o.read_exact(&mut b).is_err() || b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(line) if !line.is_empty() => Ok((running, line)),
        _ => Err(format!(
            "python3 {script} did not start: CPython columns skipped"
        )),
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_peer_lines() {
        let f = parse(
            "py.mgr.dict.set.fork 47.3 us # min=40 max=90 n=2000\n# a note\nbroken line\n\
             py.value.lock.inc2p 1.2e6 incr/s\n",
        );
        assert_eq!(f["py.mgr.dict.set.fork"], (47.3, "us".to_string()));
        assert_eq!(f["py.value.lock.inc2p"].0, 1.2e6);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn missing_python_is_a_note_not_an_error() {
        assert!(run("mp_manager.py", Size::Tiny, false).is_err());
    }
}
