//! Life before main: every binary that links multiproc runs [`on_load`] before `main` (and
//! before a test harness parses its arguments). A binary re-run by multiproc becomes the
//! child, forkserver or tracker it was started as, here; a normal start only registers the
//! exit handler that ends its children.

use std::sync::atomic::{AtomicBool, Ordering};

use super::bootstrap::die;
use super::wire::ENV;
use super::{child, forkserver, spawn, tracker};
use crate::sys;

static INTERCEPTED: AtomicBool = AtomicBool::new(false);

/// The hook itself: the system's loader runs it before `main`.
#[ctor::ctor(unsafe)]
fn multiproc_life_before_main() {
    on_load();
}

/// Runs before `main` (and before a test harness parses its arguments) in every binary that
/// links multiproc. In a normal start it only looks at one environment variable.
pub(crate) fn on_load() {
    sys::watch_forks();
    let Some(role) = std::env::var_os(ENV) else {
        // Registered here, before any thread: a later registration could race a fork.
        child::finish_at_exit();
        return;
    };
    if INTERCEPTED.swap(true, Ordering::SeqCst) {
        return;
    }
    // Remove the marker first: whatever this process starts later is not a multiproc child.
    sys::remove_env(ENV);
    let sock = match sys::take_inherited_fd(sys::CHILD_BOOTSTRAP_FD) {
        Ok(sock) => sock,
        Err(e) => die(&format!(
            "started as a child but has no bootstrap socket ({e})"
        )),
    };
    match role.to_str() {
        Some("child") => spawn::run_spawned(sock, true),
        Some("forkserver") => forkserver::serve(sock),
        Some("tracker") => tracker::serve(sock),
        _ => die(&format!("unknown bootstrap role {role:?}")),
    }
}

/// Whether this process was started as a multiproc child whose bootstrap has not run.
pub(crate) fn pending() -> bool {
    !INTERCEPTED.load(Ordering::SeqCst) && std::env::var_os(ENV).is_some()
}
