//! An echo server on `multiproc::Listener`, wire-compatible with CPython clients.
//!
//! `cargo run --release --example echo_server -- ADDRESS`
//!
//! ADDRESS is `HOST:PORT` (TCP) or a filesystem path (Unix socket). The authkey is the bytes
//! of the environment variable `MULTIPROC_AUTHKEY` (unset: no authentication). Prints
//! `listening ADDRESS` when ready, serves every client at once, each on a thread of its own
//! (the listener runs the handshakes, so a silent or failed client only costs itself),
//! echoes every message back, and exits 0 after echoing a message equal to `shutdown`.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::sync::Arc;

use multiproc::{Connection, ConnectionError, Listener};

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
    // The client thread that echoes `shutdown` writes here to stop the server.
    let (stop_rx, stop_tx) = match multiproc::pipe(false) {
        Ok((rx, tx)) => (rx, Arc::new(tx)),
        Err(e) => {
            eprintln!("echo_server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening {}", listener.address());
    let _ = out.flush();
    loop {
        // Returning drops the listener, which removes a Unix socket's file.
        match multiproc::wait(&[listener.as_fd(), stop_rx.as_fd()], None) {
            Ok(ready) if ready.contains(&1) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("echo_server: {e}");
                return ExitCode::FAILURE;
            }
        }
        match listener.accept() {
            Ok(conn) => {
                let stop = stop_tx.clone();
                std::thread::spawn(move || echo(&conn, &stop));
            }
            Err(e) => eprintln!("echo_server: client refused: {e}"),
        }
    }
}

/// Echoes `conn`'s messages until it closes; after `shutdown`, stops the server.
fn echo(conn: &Connection, stop: &Connection) {
    loop {
        match conn.recv_bytes() {
            Ok(msg) => {
                if conn.send_bytes(&msg).is_err() {
                    return;
                }
                if msg == b"shutdown" {
                    let _ = stop.send_bytes(b"");
                    return;
                }
            }
            Err(ConnectionError::Closed) => return,
            Err(e) => {
                eprintln!("echo_server: connection ended: {e}");
                return;
            }
        }
    }
}
