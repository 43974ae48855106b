//! The clock that processes share.

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds on the system's monotonic clock: the same clock in every process of the machine,
/// so a time one process writes to shared memory means the same to another.
pub(crate) fn monotonic_ns() -> u64 {
    // The monotonic clock always exists on Linux: a failure is a broken system, as it is for
    // `std::time::Instant::now`, which panics the same way.
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("the monotonic clock is readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
