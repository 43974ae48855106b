//! The clock that processes share.

/// Nanoseconds on the system's monotonic clock: the same clock in every process of the machine,
/// so a time one process writes to shared memory means the same to another.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
