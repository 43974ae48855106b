//! Samples and their spread.

use std::time::{Duration, Instant};

/// Measurements of one figure, in seconds.
#[derive(Debug, Clone)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    /// Runs `f` `n` times (after `warmup` unmeasured runs) and records each wall time.
    pub(crate) fn measure(n: usize, warmup: usize, mut f: impl FnMut()) -> Samples {
        for _ in 0..warmup {
            f();
        }
        Samples(
            (0..n.max(1))
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    }

    /// Like [`Samples::measure`] for several functions at once, one call of each in turn:
    /// every function sees the same moments of a machine whose speed drifts, so their ratios
    /// compare like with like.
    pub(crate) fn measure_in_turns(
        n: usize,
        warmup: usize,
        fs: &mut [&mut dyn FnMut()],
    ) -> Vec<Samples> {
        for _ in 0..warmup {
            for f in fs.iter_mut() {
                f();
            }
        }
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); fs.len()];
        for _ in 0..n.max(1) {
            for (f, times) in fs.iter_mut().zip(&mut out) {
                let t = Instant::now();
                f();
                times.push(t.elapsed().as_secs_f64());
            }
        }
        out.into_iter().map(Samples).collect()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub(crate) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
}

/// The shortest sample [`per_call`] takes (or a tenth of its budget, if less): many scheduler
/// time slices (a few milliseconds each). A shorter sample of a fast figure on a busy machine
/// often falls between two preemptions of a process by a CPU burner and shows a quiet
/// machine, while a slower figure's sample spans them: the two would not be comparable.
pub(crate) const MIN_SAMPLE: Duration = Duration::from_millis(50);

/// Seconds per call of `f` (given the call's index) over `n` calls, more if they took less
/// than [`MIN_SAMPLE`], fewer if `budget` runs out first: a placement where waiting goes badly
/// (a spin on the CPU the other end needs) costs the run a bounded time instead of minutes,
/// and still gives its figure.
pub(crate) fn per_call<E>(
    n: u32,
    budget: Duration,
    mut f: impl FnMut(u32) -> Result<(), E>,
) -> Result<f64, E> {
    let t = Instant::now();
    let mut done = 0u32;
    loop {
        f(done)?;
        done += 1;
        if sampled(done, n, t.elapsed(), budget) {
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64() / f64::from(done))
}

/// [`per_call`] of an async `f`, awaited in turn.
pub(crate) async fn per_call_async<E>(
    n: u32,
    budget: Duration,
    mut f: impl AsyncFnMut(u32) -> Result<(), E>,
) -> Result<f64, E> {
    let t = Instant::now();
    let mut done = 0u32;
    loop {
        f(done).await?;
        done += 1;
        if sampled(done, n, t.elapsed(), budget) {
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64() / f64::from(done))
}

/// Whether a sample of `done` calls after `elapsed` is over (see [`per_call`]).
fn sampled(done: u32, n: u32, elapsed: Duration, budget: Duration) -> bool {
    elapsed > budget || (done >= n && elapsed >= MIN_SAMPLE.min(budget / 10)) || done == u32::MAX
}

/// Runs a measurement that reports its own figure `reps` times.
pub(crate) fn repeat(
    reps: usize,
    mut f: impl FnMut() -> multiproc::Result<f64>,
) -> multiproc::Result<Samples> {
    Ok(Samples((0..reps).map(|_| f()).collect::<Result<_, _>>()?))
}

/// Seconds in a unit a reader takes in at a glance.
pub(crate) fn human(secs: f64) -> String {
    if !secs.is_finite() {
        "-".into()
    } else if secs >= 1.0 {
        format!("{secs:.3} s")
    } else if secs >= 1e-3 {
        format!("{:.3} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.1} µs", secs * 1e6)
    } else {
        format!("{:.1} ns", secs * 1e9)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn spread_of_samples() {
        let s = Samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.min(), 1.0);
        assert_eq!(s.max(), 10.0);
        assert_eq!(s.median(), 2.5);
        assert_eq!(Samples(vec![5.0, 1.0, 3.0]).median(), 3.0);
        assert!(Samples(vec![]).median().is_nan());
    }

    #[test]
    fn per_call_stops_at_its_budget() {
        let mut calls = 0;
        let secs = per_call(1_000_000, Duration::from_millis(20), |_| {
            calls += 1;
            std::thread::sleep(Duration::from_millis(1));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!((10..100).contains(&calls), "{calls} calls");
        assert!(secs >= 1e-3, "{secs}");
        // Calls quicker than the shortest sample: more of them, numbered on.
        let (mut seen, t) = (Vec::new(), Instant::now());
        per_call(3, Duration::from_secs(60), |i| {
            seen.push(i);
            std::thread::sleep(Duration::from_millis(1));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(t.elapsed() >= MIN_SAMPLE, "{:?}", t.elapsed());
        assert!(seen.len() > 3 && seen.iter().copied().eq(0..seen.len() as u32));
        // Slow calls: `n` of them.
        let mut seen = Vec::new();
        per_call(3, Duration::from_secs(60), |i| {
            seen.push(i);
            std::thread::sleep(MIN_SAMPLE / 2);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn units() {
        assert_eq!(human(2.5), "2.500 s");
        assert_eq!(human(0.0025), "2.500 ms");
        assert_eq!(human(0.0000025), "2.5 µs");
        assert_eq!(human(f64::NAN), "-");
    }
}
