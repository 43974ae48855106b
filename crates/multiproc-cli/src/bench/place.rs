//! Where the two ends of a measurement run. A hand-off between processes costs what the
//! scheduler's placement makes it cost (on a 2-core VM a wake-up across CPUs takes about ten
//! times one on the same CPU), so the pipe, queue, pool and manager groups measure with both
//! ends on one CPU, on two CPUs, and unpinned (what users get), each next to its raw
//! reference in the same placement.
//!
//! The measuring process pins its calling thread for the time of a placement ([`Ends::enter`]);
//! every other end pins itself first thing from a [`Cpu`] it is given as an argument: a child
//! started by the forkserver does not inherit its caller's current CPUs.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Where the two ends of a measurement run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Placement {
    /// Wherever the scheduler puts them: what users get.
    Unpinned,
    /// Both ends pinned to one CPU: every hand-off is a context switch on that CPU.
    SameCpu,
    /// The ends pinned to two CPUs: every hand-off reaches across to the other CPU.
    CrossCpu,
}

impl Placement {
    /// A few words for the chart's labels.
    pub(crate) fn short(self) -> &'static str {
        match self {
            Placement::Unpinned => "unpinned",
            Placement::SameCpu => "same CPU",
            Placement::CrossCpu => "across CPUs",
        }
    }
}

/// The CPU one end pins itself to, or none: left where the scheduler puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cpu(pub(crate) Option<usize>);

impl Cpu {
    /// Pins the calling thread (and the threads it creates from now on) to this CPU; does
    /// nothing when there is none.
    pub(crate) fn pin(self) -> std::io::Result<()> {
        match self.0 {
            Some(cpu) => {
                let mut set = CpuSet::new();
                set.set(cpu)?;
                set_affinity(&set)
            }
            None => Ok(()),
        }
    }
}

/// Pool initializer: pins each worker to `cpu`.
#[multiproc::func]
pub(crate) fn pin_worker(cpu: Cpu) {
    cpu.pin().expect("pin the worker");
}

/// A placement with the CPUs of its two ends: `here`, the measuring process, and `there`, the
/// other end (an echo, a producer, the pool's workers, a manager's server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub(crate) placement: Placement,
    pub(crate) here: Cpu,
    pub(crate) there: Cpu,
}

impl Ends {
    /// Pins the calling thread to `here` until the guard drops, when it gets its CPUs back.
    /// Threads created meanwhile (a pool's handler threads) keep `here`.
    pub(crate) fn enter(&self) -> std::io::Result<Pinned> {
        let saved = sched_getaffinity(Pid::from_raw(0))?;
        self.here.pin()?;
        Ok(Pinned(saved))
    }

    /// `figure` for the unpinned placement only (CPython's peers run unpinned).
    pub(crate) fn unpinned<T>(&self, figure: Option<T>) -> Option<T> {
        figure.filter(|_| self.placement == Placement::Unpinned)
    }

    /// The heading of this placement's rows.
    pub(crate) fn title(&self) -> String {
        let cpu = |c: Cpu| c.0.map_or_else(|| "?".to_string(), |c| c.to_string());
        match self.placement {
            Placement::Unpinned => "unpinned: where the scheduler puts the processes".into(),
            Placement::SameCpu => format!("same CPU: both ends pinned to CPU {}", cpu(self.here)),
            Placement::CrossCpu => format!(
                "across CPUs: this end on CPU {}, the other on CPU {}",
                cpu(self.here),
                cpu(self.there)
            ),
        }
    }
}

/// The CPUs a thread ran on before [`Ends::enter`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Pinned(CpuSet);

impl Drop for Pinned {
    fn drop(&mut self) {
        // Nothing to report to: the set was this thread's a moment ago, so it is valid.
        let _ = set_affinity(&self.0);
    }
}

fn set_affinity(set: &CpuSet) -> std::io::Result<()> {
    Ok(sched_setaffinity(Pid::from_raw(0), set)?)
}

/// The CPUs the calling thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The placements to measure on `cpus` (the CPUs the run may use): unpinned, both ends on
/// the first, and across the first two when there are two (`None` for that one otherwise).
pub(crate) fn placements(cpus: &[usize]) -> (Vec<Ends>, Option<&'static str>) {
    let mut out = vec![Ends {
        placement: Placement::Unpinned,
        here: Cpu(None),
        there: Cpu(None),
    }];
    let Some(&first) = cpus.first() else {
        return (
            out,
            Some("no CPU list for this process: pinned rows skipped"),
        );
    };
    out.push(Ends {
        placement: Placement::SameCpu,
        here: Cpu(Some(first)),
        there: Cpu(Some(first)),
    });
    match cpus.get(1) {
        Some(&second) => {
            out.push(Ends {
                placement: Placement::CrossCpu,
                here: Cpu(Some(first)),
                there: Cpu(Some(second)),
            });
            (out, None)
        }
        None => (
            out,
            Some("one CPU for this process: the across-CPUs rows are skipped"),
        ),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_placement_pins_the_caller_and_gives_its_cpus_back() {
        // On a thread of its own: the test harness's other threads keep their CPUs.
        std::thread::spawn(|| {
            let before = allowed_cpus();
            let (ends, _) = placements(&before);
            for e in &ends {
                {
                    let _pinned = e.enter().unwrap();
                    let now = allowed_cpus();
                    match e.here.0 {
                        Some(cpu) => assert_eq!(now, vec![cpu], "{e:?}"),
                        None => assert_eq!(now, before, "{e:?}"),
                    }
                }
                assert_eq!(allowed_cpus(), before, "{e:?} kept the thread pinned");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_cpu_skips_the_cross_placement_with_a_note() {
        let (ends, note) = placements(&[3]);
        let kinds: Vec<Placement> = ends.iter().map(|e| e.placement).collect();
        assert_eq!(kinds, [Placement::Unpinned, Placement::SameCpu]);
        assert_eq!(ends[1].here, Cpu(Some(3)));
        assert!(note.unwrap().contains("across-CPUs rows are skipped"));
        let (ends, note) = placements(&[0, 1]);
        assert_eq!(ends.len(), 3);
        assert_eq!((ends[2].here, ends[2].there), (Cpu(Some(0)), Cpu(Some(1))));
        assert!(note.is_none());
    }
}
