//! A program WITHOUT `#[multiproc::main]`: what multiproc does at process exit on its own,
//! and what a panicking child prints.
//!
//! `mp-plain MODE DIR METHOD`:
//! - `return`, `exit`, `panic`: starts a non-daemon child that finishes after 500 ms
//!   (writing `DIR/nondaemon.done`) and a daemon child that would sleep 60 s (its pid in
//!   `DIR/daemon.pid`), drops both handles and leaves `main` at once: by returning, by
//!   `std::process::exit(3)`, or by a panic.
//! - `child-panics`: starts a child named `panicker` whose function panics, joins it and
//!   prints what `join` gave back (`Panicked: MESSAGE`) on standard output.

use multiproc::{Process, ProcessError, StartMethod};
use multiproc_testbin::{finish_later, sleep_long, write_pid};

#[multiproc::func]
fn panic_with(message: String) {
    panic!("{message}")
}

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = (args[1].as_str(), args[2].clone());
    let method: StartMethod = args[3].parse().unwrap();
    let builder = || Process::builder().start_method(method);
    if mode == "child-panics" {
        let p = builder()
            .name("panicker")
            .start(&panic_with, "boom 42".to_string())?;
        match p.join() {
            Err(ProcessError::Panicked { message, .. }) => println!("Panicked: {message}"),
            other => println!("unexpected: {other:?}"),
        }
        return Ok(());
    }
    builder().start(&finish_later, (dir.clone(), 500))?;
    let daemon = builder().daemon(true).start(&sleep_long, ())?;
    write_pid(&dir, "daemon.pid", daemon.pid());
    match mode {
        "return" => Ok(()),
        "exit" => std::process::exit(3),
        "panic" => panic!("main panics"),
        other => panic!("unknown mode {other}"),
    }
}
