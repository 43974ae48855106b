//! A client for `echo_server` (or any CPython `multiprocessing.connection.Listener` that
//! answers each message).
//!
//! `cargo run --release --example echo_client -- ADDRESS`
//!
//! Same authkey rule as the server (`MULTIPROC_AUTHKEY`). Sends each line of standard input
//! (without its newline; an empty line is a 0-byte message) and prints each reply as a line.
//! Exits 0 at the end of input; with a message, 3 when the handshake fails (a wrong key, a
//! server that never answers), 1 when the connection does.

use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

use multiproc::{Client, ConnectionError};

fn main() -> ExitCode {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: echo_client ADDRESS   (HOST:PORT or a socket path)");
        return ExitCode::from(2);
    };
    let authkey = std::env::var_os("MULTIPROC_AUTHKEY").map(OsStringExt::into_vec);
    let conn = match Client::connect(address.as_str(), authkey.as_deref()) {
        Ok(c) => c,
        Err(
            e @ (ConnectionError::AuthenticationFailed(_)
            | ConnectionError::HandshakeTimeout { .. }
            | ConnectionError::Authentication(_)),
        ) => {
            eprintln!("echo_client: {e}");
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("echo_client: cannot connect to {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().split(b'\n') {
        let Ok(mut line) = line else { break };
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let reply = conn.send_bytes(&line).and_then(|()| conn.recv_bytes());
        match reply {
            Ok(reply) => {
                let _ = out.write_all(&reply);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("echo_client: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
