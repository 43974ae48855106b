//! Interoperability with CPython's `multiprocessing.connection`, driven by the machine's
//! `python3`: its `Client` against our `Listener` and our `Client` against its `Listener`, with
//! and without authkey; the modern (3.12+, `{sha256}`) handshake is exercised with the 3.12
//! algorithm written out in the script, so it is covered whatever the local version is.
//! Without `python3` these tests skip with a message, except under `CI=true`.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use multiproc::{Address, Client, ConnectionError, Listener};

/// Runs a Python script with args; stdout is piped.
fn run_py(py: &str, script: &str, args: &[&str]) -> Child {
    Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3")
}

fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().expect("python output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The 3.12 handshake, so the modern path is tested against Python whatever its version.
const MODERN: &str = r#"
import hmac, os
_ALLOWED = {b'md5', b'sha256', b'sha384', b'sha3_256', b'sha3_384'}
def _split(m):
    if m.startswith(b'{'):
        c = m.find(b'}', 1, 22)
        if c > 0 and m[1:c] in _ALLOWED:
            return m[1:c].decode('ascii'), m[c+1:]
    return '', m
def _create(key, m):
    d = _split(m)[0]
    if not d:
        return hmac.new(key, m, 'md5').digest()
    return b'{%s}%s' % (d.encode('ascii'), hmac.new(key, m, d).digest())
def deliver(c, key):
    m = b'{sha256}' + os.urandom(40)
    c.send_bytes(b'#CHALLENGE#' + m)
    r = c.recv_bytes(256)
    d, mac = _split(r)
    exp = hmac.new(key, m, d or 'md5').digest()
    if not hmac.compare_digest(exp, mac):
        c.send_bytes(b'#FAILURE#'); raise SystemExit('bad digest')
    c.send_bytes(b'#WELCOME#')
def answer(c, key):
    m = c.recv_bytes(256)
    assert m.startswith(b'#CHALLENGE#'), m
    c.send_bytes(_create(key, m[len(b'#CHALLENGE#'):]))
    assert c.recv_bytes(256) == b'#WELCOME#', 'rejected'
"#;

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
host, port, key, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
if mode == 'modern':
    exec(MODERN)
    c = Client((host, port))
    answer(c, key); deliver(c, key)
else:
    c = Client((host, port), authkey=key or None)
for m in [b'hello', b'', bytes(range(256)) * 4096]:
    c.send_bytes(m)
    assert c.recv_bytes() == m, len(m)
c.send_bytes(b'bye')
print('ok', flush=True)
"#;

fn tcp(addr: &Address) -> (String, String) {
    match addr {
        Address::Tcp(a) => (a.ip().to_string(), a.port().to_string()),
        other => panic!("not TCP: {other}"),
    }
}

fn echo_until_bye(listener: &Listener) -> Result<usize, ConnectionError> {
    let conn = listener.accept()?;
    let mut n = 0;
    loop {
        let m = conn.recv_bytes()?;
        if m == b"bye" {
            return Ok(n);
        }
        conn.send_bytes(&m)?;
        n += 1;
    }
}

#[test]
fn python_client_talks_to_our_listener() {
    let Some(py) = common::python("multiprocessing.connection") else {
        return;
    };
    for (key, mode) in [("", "plain"), ("s3cret", "native"), ("s3cret", "modern")] {
        let listener =
            Listener::bind("127.0.0.1:0", (!key.is_empty()).then_some(key.as_bytes())).unwrap();
        let (host, port) = tcp(listener.address());
        let script = PY_CLIENT.replace("exec(MODERN)", &format!("exec({MODERN:?})"));
        let child = run_py(py, &script, &[&host, &port, key, mode]);
        let served = echo_until_bye(&listener);
        let (ok, out, err) = finish(child);
        assert!(ok, "python ({mode}) failed: {err}");
        assert_eq!(out.trim(), "ok");
        assert_eq!(served.unwrap(), 3, "{mode}");
    }
}

#[test]
fn python_client_with_wrong_key_is_refused_on_both_ends() {
    let Some(py) = common::python("multiprocessing.connection") else {
        return;
    };
    let listener = Listener::bind("127.0.0.1:0", Some(b"right")).unwrap();
    let (host, port) = tcp(listener.address());
    let script = PY_CLIENT.replace("exec(MODERN)", "pass");
    let child = run_py(py, &script, &[&host, &port, "wrong", "native"]);
    let err = listener.accept().unwrap_err();
    assert!(
        matches!(err, ConnectionError::AuthenticationFailed(_)),
        "{err}"
    );
    let (ok, _, stderr) = finish(child);
    assert!(!ok);
    assert!(
        stderr.contains("AuthenticationError")
            || stderr.contains("reset")
            || stderr.contains("EOFError"),
        "{stderr}"
    );
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
key, mode = sys.argv[1].encode(), sys.argv[2]
if mode == 'modern':
    exec(MODERN)
    l = Listener(('127.0.0.1', 0))
else:
    l = Listener(('127.0.0.1', 0), authkey=key or None)
print('%s:%d' % l.address, flush=True)
try:
    c = l.accept()
    if mode == 'modern':
        deliver(c, key); answer(c, key)
except Exception as e:
    print('refused', type(e).__name__, flush=True)
    sys.exit(0)
while True:
    m = c.recv_bytes()
    c.send_bytes(m[::-1])
    if m == b'bye':
        break
print('done', flush=True)
"#;

fn start_py_listener(
    py: &str,
    key: &str,
    mode: &str,
) -> (Child, String, BufReader<std::process::ChildStdout>) {
    let script = PY_LISTENER.replace("exec(MODERN)", &format!("exec({MODERN:?})"));
    let mut child = run_py(py, &script, &[key, mode]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, line.trim().to_string(), out)
}

#[test]
fn our_client_talks_to_a_python_listener() {
    let Some(py) = common::python("multiprocessing.connection") else {
        return;
    };
    for (key, mode) in [("", "plain"), ("s3cret", "native"), ("s3cret", "modern")] {
        let (child, addr, mut out) = start_py_listener(py, key, mode);
        let conn =
            Client::connect(addr.as_str(), (!key.is_empty()).then_some(key.as_bytes())).unwrap();
        for m in [&b"abc"[..], b"", &[7u8; 100_000][..]] {
            conn.send_bytes(m).unwrap();
            let mut rev = m.to_vec();
            rev.reverse();
            assert_eq!(
                conn.recv_bytes_timeout(Duration::from_secs(20)).unwrap(),
                rev
            );
        }
        conn.send_bytes(b"bye").unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"eyb");
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "{mode}");
        let (ok, _, err) = finish(child);
        assert!(ok, "{err}");
    }
}

#[test]
fn our_client_with_wrong_key_gets_an_authentication_error() {
    let Some(py) = common::python("multiprocessing.connection") else {
        return;
    };
    let (child, addr, mut out) = start_py_listener(py, "right", "native");
    let err = Client::connect(addr.as_str(), Some(b"wrong")).unwrap_err();
    assert!(
        matches!(err, ConnectionError::AuthenticationFailed(_)),
        "{err}"
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("refused"), "{line}");
    let _ = finish(child);
}

#[test]
fn python_send_handle_interoperates() {
    let Some(py) = common::python("multiprocessing.connection") else {
        return;
    };
    // Python sends a descriptor with multiprocessing.reduction.send_handle over a Unix socket.
    let path = std::env::temp_dir().join(format!("mp-py-handle-{}.sock", std::process::id()));
    let listener = Listener::bind(path.to_str().unwrap(), None).unwrap();
    let script = r#"
import sys, os
from multiprocessing.connection import Client
from multiprocessing.reduction import send_handle
c = Client(sys.argv[1], family='AF_UNIX')
r, w = os.pipe()
os.write(w, b'from python')
os.close(w)
send_handle(c, r, 0)
c.recv_bytes()
"#;
    let child = run_py(py, script, &[path.to_str().unwrap()]);
    let conn = listener.accept().unwrap();
    let fd = conn.recv_handle().unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
    assert_eq!(s, "from python");
    conn.send_bytes(b"done").unwrap();
    let (ok, _, err) = finish(child);
    assert!(ok, "{err}");
    let _ = std::io::stdout().flush();
}
