//! `multiproc bench`: the PEP 371 tables (serial vs threads vs processes) and our own
//! groups, each measured side by side with the raw OS primitive and CPython
//! `multiprocessing` in the same run.

mod asynchronous;
mod busy;
mod chart;
mod cluster;
mod manager;
mod pep;
mod pipe;
mod place;
mod pool;
mod python;
mod queue;
mod raw;
mod report;
mod scaling;
mod spawn;
mod stats;

use std::path::PathBuf;

use report::Report;
pub(crate) use report::Size;

/// What `multiproc bench` runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// How big the run is (`--quick`, the default; `--full`; `--tiny` for tests).
    pub(crate) size: Size,
    /// Groups to run; empty means all.
    pub(crate) groups: Vec<String>,
    /// Run the CPython peers next to ours (when `python3` is there).
    pub(crate) python: bool,
    /// Where to write the results as JSON.
    pub(crate) json: Option<PathBuf>,
    /// Where to write the charts (SVG).
    pub(crate) chart: Option<PathBuf>,
    /// CPU-burning processes to run beside the measurements.
    pub(crate) busy: usize,
}

/// Every group, in the order they run, with what it measures.
pub(crate) const GROUPS: [(&str, &str); 13] = [
    (
        "empty",
        "PEP 371 table: an empty function, serial / threads / processes",
    ),
    (
        "fib",
        "PEP 371 table: naive Fibonacci, serial / threads / processes",
    ),
    (
        "primes",
        "PEP 371 table: prime testing, serial / threads / processes",
    ),
    (
        "fileio",
        "PEP 371 table: file writes, seeks and reads, serial / threads / processes",
    ),
    (
        "url",
        "PEP 371 table: HTTP GETs of a local server, serial / threads / processes",
    ),
    ("spawn", "spawn + join per start method vs the OS"),
    (
        "pipe",
        "Connection vs a raw socketpair (blocking, spinning), per CPU placement",
    ),
    (
        "queue",
        "Queue vs a raw pipe, locks vs a raw futex, per CPU placement",
    ),
    ("pool", "Pool throughput and latency, per CPU placement"),
    (
        "async",
        "async methods (tokio) vs their synchronous forms: round trips (pool, Connection, manager dict), queue throughput, threads",
    ),
    (
        "manager",
        "manager proxy operations (per CPU placement) and start-up",
    ),
    ("scaling", "Pool vs rayon on every core"),
    (
        "cluster",
        "the Pool API through Redis Streams vs a raw Redis round trip",
    ),
];

/// The command line of `multiproc bench`.
#[derive(Debug, clap::Args)]
// As the options always did: a flag or option given twice counts once, the last value wins
// (`--group` adds up).
#[command(
    args_override_self = true,
    about = "Every benchmark group side by side with the OS and CPython",
    long_about = "Every benchmark group side by side with the raw OS primitive and CPython \
                  multiprocessing in the same run, as tables (and JSON and SVG charts when \
                  asked). The pipe, queue, pool and manager groups measure with both ends \
                  unpinned, pinned to one CPU and pinned to two CPUs, each next to the raw \
                  primitive in the same placement.\n\nWith no option: every group in quick mode (about a minute \
                  on 2 cores), CPython peers included when python3 is on the PATH."
)]
pub(crate) struct Args {
    /// Quick sizes: every group in about a minute on 2 cores (the default)
    #[arg(long, overrides_with_all = ["full", "tiny"])]
    quick: bool,
    /// Full sizes: the figures to quote (several minutes)
    #[arg(long, overrides_with_all = ["quick", "tiny"])]
    full: bool,
    /// The smallest sizes that still run every path (for tests: the figures mean nothing)
    #[arg(long, overrides_with_all = ["quick", "full"])]
    tiny: bool,
    /// Leave out the CPython peers (run by default when python3 is on the PATH)
    #[arg(long)]
    no_python: bool,
    /// Write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the charts as SVG to FILE
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Run this group only (repeat for several; every group when not given)
    #[arg(
        long = "group",
        value_name = "NAME",
        value_parser = clap::builder::PossibleValuesParser::new(
            GROUPS.map(|(name, what)| clap::builder::PossibleValue::new(name).help(what))
        )
    )]
    groups: Vec<String>,
    /// Run N CPU-burning processes beside the measurements (started and stopped by the bench)
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    busy: u16,
}

impl From<Args> for Options {
    fn from(a: Args) -> Options {
        // The size flags override one another: the last one given is the only one set.
        let size = match (a.full, a.tiny) {
            (true, _) => Size::Full,
            (_, true) => Size::Tiny,
            _ => Size::Quick,
        };
        Options {
            size,
            groups: a.groups,
            python: !a.no_python,
            json: a.json,
            chart: a.chart,
            busy: usize::from(a.busy),
        }
    }
}

impl Options {
    pub(crate) fn wants(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

/// Runs the selected groups, prints their tables, writes the JSON and the chart.
/// Starts `f(args)` in a daemonic child, for the helpers a measurement talks to (echo
/// servers, sources, clients): a bench that is killed (Ctrl-C, SIGKILL) leaves none of them
/// waiting for ever for a parent that is gone. Children whose start is what is measured are
/// started plainly, as users start theirs.
pub(crate) fn helper<F: multiproc::Func<M>, M>(
    f: &F,
    args: F::Args,
) -> Result<multiproc::Process<F::Output>, multiproc::ProcessError> {
    multiproc::Process::builder().daemon(true).start(f, args)
}

pub(crate) fn run(opts: &Options) -> multiproc::Result<()> {
    // Before any pinning: the forkserver's CPUs are those of every child it starts.
    multiproc::start_forkserver()?;
    let mut r = Report::new(opts.size, opts.python, opts.busy);
    let m = &r.machine;
    println!(
        "multiproc bench ({:?}) on {} CPUs ({}), kernel {}, default start method {}, CPython: {}, busy {}",
        opts.size,
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.start_method,
        m.python.as_deref().unwrap_or("none"),
        opts.busy
    );
    let selected: Vec<&str> = GROUPS
        .iter()
        .map(|(g, _)| *g)
        .filter(|g| opts.wants(g))
        .collect();
    let bar = indicatif::ProgressBar::new(selected.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} group {pos}/{len}: {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let burners = busy::Burners::start(opts.busy)?;
    if opts.busy > 0 {
        let pids: Vec<String> = burners.pids().map(|p| p.to_string()).collect();
        let s = if opts.busy == 1 { "" } else { "es" };
        println!(
            "busy: {} CPU-burning process{s} beside the measurements (pids {})",
            opts.busy,
            pids.join(" ")
        );
    }
    for group in selected {
        bar.set_message(group);
        bar.suspend(|| run_group(group, &mut r))?;
        bar.inc(1);
    }
    drop(burners);
    bar.finish_and_clear();
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&r).map_err(std::io::Error::other)?;
        std::fs::write(path, text)?;
        println!("\nresults written to {}", path.display());
    }
    if let Some(path) = &opts.chart {
        chart::write(&r, path)?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

fn run_group(group: &str, r: &mut Report) -> multiproc::Result<()> {
    match group {
        "empty" | "fib" | "primes" | "fileio" | "url" => pep::run_group(group, r),
        "spawn" => spawn::run(r),
        "pipe" => pipe::run(r),
        "queue" => queue::run(r),
        "pool" => pool::run(r),
        "async" => asynchronous::run(r),
        "manager" => manager::run(r),
        "scaling" => scaling::run(r),
        _ => cluster::run(r),
    }
}
