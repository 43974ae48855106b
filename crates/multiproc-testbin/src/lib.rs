//! Helper binaries for the lifecycle tests live in `src/bin`.
