//! `multiproc manager serve`: a manager served by the command, used from this process,
//! stopped by a signal or by a client.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::ManagerError;
use multiproc::manager::{Manager, QueueProxy};

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

/// The server; killed and reaped if a test fails first.
struct Served(Child, String);

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str], env_key: Option<&str>) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.args(["manager", "serve"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match env_key {
        Some(k) => cmd.env("MULTIPROC_AUTHKEY", k),
        None => cmd.env_remove("MULTIPROC_AUTHKEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("serving on ")
        .unwrap_or_else(|| panic!("no address line: {line:?}"))
        .to_string();
    Served(child, address)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "the server did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serves_named_objects_and_stops_on_sigterm() {
    let mut s = serve(&["--address", "127.0.0.1:0"], Some("cli key"));
    let a = Manager::connect(s.1.as_str(), b"cli key").unwrap();
    let q = a.queue::<String>().unwrap();
    a.publish("inbox", &q).unwrap();
    let b = Manager::connect(s.1.as_str(), b"cli key").unwrap();
    let inbox: QueueProxy<String> = b.lookup("inbox").unwrap();
    inbox.put(&"hello".into()).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(20)).unwrap(), "hello");
    assert!(matches!(
        Manager::connect(s.1.as_str(), b"other key"),
        Err(ManagerError::Connection(_))
    ));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut s.0).success());
    let mut rest = String::new();
    s.0.stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest.trim(), "stopped");
    assert!(matches!(q.qsize(), Err(ManagerError::Closed)));
}

/// A user type: the test binary has its `#[managed]` impl, `multiproc manager serve` does not.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    n: u64,
}

#[multiproc::managed]
impl Tally {
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

#[test]
fn a_user_type_asked_of_the_command_says_to_serve_from_the_users_binary() {
    let s = serve(&["--address", "127.0.0.1:0"], Some("user key"));
    let m = Manager::connect(s.1.as_str(), b"user key").unwrap();
    let err = m.create(Tally::default()).unwrap_err();
    assert!(
        matches!(&err, ManagerError::UnknownKind(kind) if kind.ends_with("Tally")),
        "{err:?}"
    );
    let message = err.to_string();
    for hint in [
        "multiproc manager serve",
        "Manager::serve",
        "#[multiproc::managed]",
    ] {
        assert!(message.contains(hint), "{hint} not in: {message}");
    }
    // The server is fine: built-in objects still come.
    assert_eq!(m.dict::<String, u64>().unwrap().len().unwrap(), 0);
    m.shutdown().unwrap();
}

#[test]
fn key_from_a_file_and_shutdown_by_a_client() {
    let path = std::env::temp_dir().join(format!("multiproc-cli-key-{}", std::process::id()));
    std::fs::write(&path, "file key\n").unwrap();
    let mut s = serve(
        &[
            "--address",
            "127.0.0.1:0",
            "--authkey-file",
            path.to_str().unwrap(),
        ],
        None,
    );
    let m = Manager::connect(s.1.as_str(), b"file key").unwrap();
    m.shutdown().unwrap();
    assert!(wait_exit(&mut s.0).success());
    std::fs::remove_file(path).unwrap();
}

#[test]
fn refuses_to_serve_without_a_key_or_address() {
    for (args, env) in [
        (vec!["--address", "127.0.0.1:0"], None),
        (vec!["--address", "127.0.0.1:0"], Some("")),
        (vec![], Some("k")),
        (vec!["--address", "127.0.0.1:0", "--bogus"], Some("k")),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["manager", "serve"]).args(&args);
        match env {
            Some(k) => cmd.env("MULTIPROC_AUTHKEY", k),
            None => cmd.env_remove("MULTIPROC_AUTHKEY"),
        };
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

/// The command serves stock CPython `SyncManager` clients too (the handshake is the same;
/// the server tells the protocols apart by the first request).
#[test]
fn serves_a_stock_python_sync_manager_client() {
    let have = Command::new("python3")
        .args(["-c", "import multiprocessing.managers"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is required under CI=true"
        );
        eprintln!("skipping: python3 with multiprocessing is not available");
        return;
    }
    let mut s = serve(&["--address", "127.0.0.1:0"], Some("secret"));
    let script = r#"
import sys
from multiprocessing.managers import SyncManager
host, port = sys.argv[1].rsplit(':', 1)
m = SyncManager(address=(host, int(port)), authkey=b"secret"); m.connect()
d = m.dict(); d["jobs"] = 3; q = m.Queue(); q.put({"id": 1, "path": "/tmp/a"})
lock = m.Lock()
with lock: d["jobs"] += 1
print(d["jobs"], q.get(timeout=10))
m._Client(m._address, authkey=m._authkey).send((None, 'shutdown', (), {}))
"#;
    let mut py = Command::new("python3")
        .args(["-c", script, s.1.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut py);
    let mut out = String::new();
    py.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), "4 {'id': 1, 'path': '/tmp/a'}");
    // A Python client's shutdown stops the command.
    assert!(wait_exit(&mut s.0).success());
}
