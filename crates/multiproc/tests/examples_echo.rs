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
    // A server that never answers leaves the client waiting: kill it after a while.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("echo_client got no answer within 30 s");
        }
    };
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

fn tcp_of(address: &str) -> std::net::SocketAddr {
    address.parse().expect("a TCP address")
}

#[test]
fn fifty_silent_connections_do_not_hold_up_a_good_client() {
    let (_server, addr) = start_server("127.0.0.1:0", Some("k1"));
    let silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(tcp_of(&addr)).unwrap())
        .collect();
    let t0 = Instant::now();
    let (code, out, err) = client(&addr, Some("k1"), "hello\n");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(silent);
}

#[test]
fn an_idle_client_does_not_block_another() {
    let (_server, addr) = start_server("127.0.0.1:0", Some("k1"));
    let idle = multiproc::Client::connect(addr.as_str(), Some(b"k1")).unwrap();
    let t0 = Instant::now();
    let (code, out, err) = client(&addr, Some("k1"), "hello\n");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    idle.send_bytes(b"still there").unwrap();
    assert_eq!(
        idle.recv_bytes_timeout(Duration::from_secs(10)).unwrap(),
        b"still there"
    );
}

#[test]
fn two_hundred_concurrent_clients_are_all_served() {
    const CLIENTS: usize = 200;
    let (_server, addr) = start_server("127.0.0.1:0", Some("k1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, served) = (addr.clone(), served.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let left = deadline.saturating_duration_since(Instant::now());
                let conn = multiproc::Client::default()
                    .authkey("k1")
                    .handshake_timeout(left)
                    .open(addr.as_str())
                    .map_err(|e| format!("client {i}: {e}"))?;
                let msg = format!("client {i}");
                conn.send_bytes(msg.as_bytes()).map_err(|e| e.to_string())?;
                let left = deadline.saturating_duration_since(Instant::now());
                let reply = conn.recv_bytes_timeout(left).map_err(|e| e.to_string())?;
                assert_eq!(reply, msg.as_bytes());
                // Stay connected until every client is served: the server holds them all.
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while served.load(std::sync::atomic::Ordering::SeqCst) < CLIENTS
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), CLIENTS);
}
