//! Process basics: start, name, typed result, exit codes, panics, signals.
//!
//! `cargo run --example hello`

use std::time::Duration;

use multiproc::{Func, Process, ProcessError, StartMethod, current_process, parent_process};

#[multiproc::func]
fn greet(who: String) -> String {
    let me = current_process();
    let parent = parent_process().map(|p| p.pid()).unwrap_or(0);
    format!(
        "hello {who} from {} (pid {}, parent {parent})",
        me.name(),
        me.pid()
    )
}

#[multiproc::func]
fn fail(msg: String) -> u32 {
    panic!("{msg}")
}

#[multiproc::func]
fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

#[multiproc::main]
fn main() -> multiproc::Result<()> {
    for method in StartMethod::ALL {
        let p = Process::builder()
            .name(format!("greeter-{method}"))
            .start_method(method)
            .start(&greet, "world".into())?;
        println!("{method:>10}: {}", p.join()?);
    }

    // Closures run in a forked child.
    let data: Vec<u64> = (1..=100).collect();
    let p = Process::fork(move || data.iter().sum::<u64>())?;
    println!("fork closure summed {}", p.join()?);

    // A panic comes back as an error carrying the message; the exit code is 1.
    match fail.spawn("boom".into())?.join() {
        Err(ProcessError::Panicked { message, .. }) => println!("child panicked: {message}"),
        other => println!("unexpected: {other:?}"),
    }

    // Signals: terminate gives exit code -15.
    let p = sleep_ms.spawn(10_000)?;
    p.terminate()?;
    p.join_timeout(Duration::from_secs(5))?;
    println!("terminated child exit code {:?}", p.exitcode());
    Ok(())
}
