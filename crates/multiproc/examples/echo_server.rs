//! An echo server on `multiproc::Listener`, wire-compatible with CPython clients.
//!
//! `cargo run --release --example echo_server -- ADDRESS`
//!
//! ADDRESS is `HOST:PORT` (TCP) or a filesystem path (Unix socket). The authkey is the bytes
//! of the environment variable `MULTIPROC_AUTHKEY` (unset: no authentication). Prints
//! `listening ADDRESS` when ready, serves connections one after another (a failed handshake
//! or a broken client only ends that connection), echoes every message back, and exits 0
//! after echoing a message equal to `shutdown`.

use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

use multiproc::{ConnectionError, Listener};

fn main() -> ExitCode {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: echo_server ADDRESS   (HOST:PORT or a socket path)");
        return ExitCode::from(2);
    };
    let authkey = std::env::var_os("MULTIPROC_AUTHKEY").map(OsStringExt::into_vec);
    let listener = match Listener::bind(address.as_str(), authkey.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo_server: cannot listen on {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening {}", listener.address());
    let _ = out.flush();
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("echo_server: client refused: {e}");
                continue;
            }
        };
        loop {
            match conn.recv_bytes() {
                Ok(msg) => {
                    if conn.send_bytes(&msg).is_err() {
                        break;
                    }
                    if msg == b"shutdown" {
                        return ExitCode::SUCCESS;
                    }
                }
                Err(ConnectionError::Closed) => break,
                Err(e) => {
                    eprintln!("echo_server: connection ended: {e}");
                    break;
                }
            }
        }
    }
}
