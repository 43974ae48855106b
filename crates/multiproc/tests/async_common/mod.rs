//! Helpers of the async tests (feature `tokio`): both runtimes, the process's thread count.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// Every wait of the async tests is bounded by this.
pub const ASYNC_LIMIT: Duration = Duration::from_secs(60);

/// Runs `make()`'s future to its end under a current-thread runtime, then under a
/// multi-thread one, each within [`ASYNC_LIMIT`].
pub fn both_runtimes<F: std::future::Future<Output = ()>>(mut make: impl FnMut() -> F) {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(async {
        tokio::time::timeout(ASYNC_LIMIT, make())
            .await
            .expect("timed out")
    });
    drop(current);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(async {
        tokio::time::timeout(ASYNC_LIMIT, make())
            .await
            .expect("timed out")
    });
}

/// The threads of this process now (`Threads` of `/proc/self/status`).
pub fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads in /proc/self/status")
}
