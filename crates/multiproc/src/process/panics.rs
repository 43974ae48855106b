//! What a child prints when it panics: one line naming the process, where it panicked and
//! the message, then a backtrace of the user's frames only when `RUST_BACKTRACE` asks
//! for one. The parent gets the message through `join` as well.

use std::any::Any;
use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicBool, Ordering};

use super::current;

/// Installs the hook once per process. In a child it prints the line; elsewhere it calls
/// the hook that was there before, so the program's own panics print as they always did.
///
/// Called in the parent before its first fork (a forked child inherits the hook: setting
/// one in the child could wait for ever on the hook's lock if another thread of the
/// parent held it at the fork), in the forkserver (its children inherit it) and in a
/// spawned child before it runs anything. A hook the program sets later replaces it.
pub(crate) fn install() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.load(Ordering::Relaxed) || INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match current::child_name() {
        Some(name) => report(&name, info),
        None => previous(info),
    }));
}

/// The message of a panic, from its payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Prints what a panic in this child is, in one write.
fn report(name: &str, info: &PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let place = info
        .location()
        .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let pid = crate::sys::getpid();
    let mut text = format!("process '{name}' (pid {pid}) panicked{place}: {message}\n");
    match std::env::var("RUST_BACKTRACE").as_deref() {
        Err(_) | Ok("0") => {}
        Ok("full") => {
            let trace = std::backtrace::Backtrace::force_capture();
            text.push_str(&format!("stack backtrace:\n{trace:#}\n"));
        }
        Ok(_) => {
            let trace = std::backtrace::Backtrace::force_capture();
            text.push_str("stack backtrace:\n");
            text.push_str(&user_frames(&trace.to_string()));
            text.push_str(
                "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a \
                 verbose backtrace.\n",
            );
        }
    }
    // Not `eprint!`: under a test harness a forked test thread's output is still captured.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The frames of a printed backtrace that are the user's, renumbered: those after the panic
/// machinery (up to `std`'s `__rust_end_short_backtrace`) and before the frames of
/// multiproc that started the child's function. Frames of multiproc's process code at the
/// top (a panic inside it) are kept: only those under the user's frames are the start-up.
///
/// No marker function of ours sits under the user's frames, as `std`'s
/// `__rust_begin_short_backtrace` does under a thread's: a forked child would pay a page
/// fault for its code on every start.
fn user_frames(trace: &str) -> String {
    // A frame is its numbered line and the lines after it (inlined calls, `at` lines).
    let mut frames: Vec<String> = Vec::new();
    for line in trace.lines() {
        let numbered = line
            .trim_start()
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !numbered => {
                frame.push_str(line);
                frame.push('\n');
            }
            _ => frames.push(format!("{line}\n")),
        }
    }
    let start = frames
        .iter()
        .rposition(|f| f.contains("__rust_end_short_backtrace"))
        .map_or(0, |i| i + 1);
    let ours = |f: &String| f.contains("multiproc::process::");
    let first_user = frames[start..]
        .iter()
        .position(|f| !ours(f))
        .map_or(frames.len(), |i| start + i);
    let end = frames[first_user..]
        .iter()
        .position(ours)
        .map_or(frames.len(), |i| first_user + i);
    let mut out = String::new();
    for (i, frame) in frames[start..end].iter().enumerate() {
        // Replace the frame's number with its new one, keeping the alignment.
        let (head, rest) = frame.split_once(": ").unwrap_or(("", frame));
        let width = head.len();
        out.push_str(&format!("{i:>width$}: {rest}"));
    }
    out
}

#[cfg(test)]
mod test {
    use super::user_frames;

    #[test]
    fn user_frames_are_those_between_the_panic_and_the_start_up_renumbered() {
        let trace = "   0: std::backtrace::Backtrace::force_capture
             at /rustc/library/std/src/backtrace.rs:1:1
   1: std::panicking::begin_panic_handler::{{closure}}
   2: std::sys::backtrace::__rust_end_short_backtrace
   3: core::panicking::panic_fmt
   4: app::work
             at ./src/main.rs:4:5
             app::inlined
   5: multiproc::process::bootstrap::run_start::{{closure}}
   6: multiproc::process::bootstrap::run_spawned
   7: main
";
        assert_eq!(
            user_frames(trace),
            "   0: core::panicking::panic_fmt
   1: app::work
             at ./src/main.rs:4:5
             app::inlined
"
        );
        // A panic in multiproc's own code keeps its frames on top.
        assert_eq!(
            user_frames("  0: multiproc::process::x\n  1: app::f\n  2: multiproc::process::y\n"),
            "  0: multiproc::process::x\n  1: app::f\n"
        );
    }
}
