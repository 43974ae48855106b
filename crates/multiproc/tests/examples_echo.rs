//! The `echo_server` and `echo_client` examples, driven as other programs drive them.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::{Reaped as Server, example};
use std::time::{Duration, Instant};

fn start_server(address: &str, key: Option<&str>) -> (Server, String) {
    let mut cmd = Command::new(example("echo_server"));
    cmd.arg(address)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match key {
        Some(k) => cmd.env("MULTIPROC_AUTHKEY", k),
        None => cmd.env_remove("MULTIPROC_AUTHKEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening line")
        .to_string();
    (Server(child), addr)
}

fn client(address: &str, key: Option<&str>, input: &str) -> (i32, String, String) {
    let mut cmd = Command::new(example("echo_client"));
    cmd.arg(address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match key {
        Some(k) => cmd.env("MULTIPROC_AUTHKEY", k),
        None => cmd.env_remove("MULTIPROC_AUTHKEY"),
    };
    let mut child = cmd.spawn().unwrap();
    // A client that fails its handshake may exit before reading its input (EPIPE).
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("echo_server did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn echo_over_tcp_with_key_survives_a_bad_client_and_shuts_down() {
    let (mut server, addr) = start_server("127.0.0.1:0", Some("k1"));
    let (code, out, _) = client(&addr, Some("k1"), "hello\n\nworld\n");
    assert_eq!((code, out.as_str()), (0, "hello\n\nworld\n"));
    let (code, _, err) = client(&addr, Some("bad"), "x\n");
    assert_ne!(code, 0);
    assert!(err.contains("authentication"), "{err}");
    let (code, _, err) = client(&addr, None, "");
    assert_eq!(code, 0, "{err}"); // no message sent: nothing to fail on
    let (code, out, _) = client(&addr, Some("k1"), "again\nshutdown\n");
    assert_eq!((code, out.as_str()), (0, "again\nshutdown\n"));
    assert_eq!(wait_exit(&mut server.0, Duration::from_secs(10)), 0);
}

#[test]
fn echo_over_a_unix_socket_without_key() {
    let path = std::env::temp_dir().join(format!("mp-echo-{}.sock", std::process::id()));
    let (mut server, addr) = start_server(path.to_str().unwrap(), None);
    assert_eq!(addr, path.to_str().unwrap());
    let (code, out, _) = client(&addr, None, "a b c\nshutdown\n");
    assert_eq!((code, out.as_str()), (0, "a b c\nshutdown\n"));
    assert_eq!(wait_exit(&mut server.0, Duration::from_secs(10)), 0);
    assert!(!path.exists());
}
