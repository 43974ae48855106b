//! `--busy N`: N processes burning a CPU each beside the measurements, as on a machine shared
//! with batch jobs. Started before the first group, stopped after the last; daemonic, so
//! that they die with the bench even when it crashes.

use std::time::Duration;

use multiproc::Process;

/// Child side: burns a CPU (arithmetic the optimizer cannot drop) until killed.
#[multiproc::func]
pub(crate) fn burn() {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
}

/// The running burners; stopped on drop.
#[derive(Debug)]
pub(crate) struct Burners(Vec<Process<()>>);

impl Burners {
    /// Starts `n` burners (none for 0).
    pub(crate) fn start(n: usize) -> multiproc::Result<Burners> {
        let mut started = Burners(Vec::with_capacity(n));
        for i in 0..n {
            // Pushed one by one: a failed start still stops the ones before it.
            started.0.push(
                Process::builder()
                    .daemon(true)
                    .name(format!("busy-{i}"))
                    .start(&burn, ())?,
            );
        }
        Ok(started)
    }

    /// Their process ids.
    pub(crate) fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(Process::pid)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = p.kill();
        }
        for p in &self.0 {
            // SIGKILL cannot be caught: the wait is a formality, bounded all the same.
            let _ = p.join_timeout(Duration::from_secs(10));
        }
    }
}
