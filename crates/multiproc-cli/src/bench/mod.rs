//! `multiproc bench`: the PEP 371 tables (serial vs threads vs processes) and our own
//! groups, each measured side by side with the raw OS primitive and CPython
//! `multiprocessing` in the same run.

mod chart;
mod cluster;
mod manager;
mod pep;
mod pipe;
mod pool;
mod python;
mod queue;
mod report;
mod scaling;
mod spawn;
mod stats;

use std::path::PathBuf;

use report::Report;
pub(crate) use report::Size;

/// Command-line options of `multiproc bench`.
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
}

/// Every group, in the order they run.
pub(crate) const GROUPS: [&str; 12] = [
    "empty", "fib", "primes", "fileio", "url", "spawn", "pipe", "queue", "pool", "manager",
    "scaling", "cluster",
];

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            size: Size::Quick,
            groups: Vec::new(),
            python: true,
            json: None,
            chart: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => opts.size = Size::Quick,
                "--full" => opts.size = Size::Full,
                "--tiny" => opts.size = Size::Tiny,
                "--no-python" => opts.python = false,
                "--json" => opts.json = Some(it.next().ok_or("--json needs a file")?.into()),
                "--chart" => opts.chart = Some(it.next().ok_or("--chart needs a file")?.into()),
                "--group" => {
                    let g = it.next().ok_or("--group needs a name")?;
                    if !GROUPS.contains(&g.as_str()) {
                        return Err(format!("unknown group `{g}`"));
                    }
                    opts.groups.push(g.clone());
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        Ok(opts)
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

/// Runs the selected groups, prints their tables, writes the JSON and the chart.
pub(crate) fn run(opts: &Options) -> multiproc::Result<()> {
    let mut r = Report::new(opts.size, opts.python);
    let m = &r.machine;
    println!(
        "multiproc bench ({:?}) on {} CPUs ({}), kernel {}, default start method {}, CPython: {}",
        opts.size,
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.start_method,
        m.python.as_deref().unwrap_or("none")
    );
    let selected: Vec<&str> = GROUPS.iter().copied().filter(|g| opts.wants(g)).collect();
    let bar = indicatif::ProgressBar::new(selected.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} group {pos}/{len}: {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    for group in selected {
        bar.set_message(group);
        bar.suspend(|| run_group(group, &mut r))?;
        bar.inc(1);
    }
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
        "manager" => manager::run(r),
        "scaling" => scaling::run(r),
        _ => cluster::run(r),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let o = Options::parse(&args(&["--full", "--group", "spawn", "--group", "fib"])).unwrap();
        assert_eq!(o.size, Size::Full);
        assert_eq!(o.groups, vec!["spawn", "fib"]);
        assert!(o.wants("fib") && !o.wants("primes"));
        let o = Options::parse(&args(&[
            "--json",
            "a.json",
            "--chart",
            "c.svg",
            "--no-python",
        ]))
        .unwrap();
        assert_eq!(o.size, Size::Quick, "quick by default");
        assert_eq!(o.json.as_deref(), Some(std::path::Path::new("a.json")));
        assert_eq!(o.chart.as_deref(), Some(std::path::Path::new("c.svg")));
        assert!(!o.python);
        assert!(Options::parse(&args(&["--group"])).is_err());
        assert!(Options::parse(&args(&["--json"])).is_err());
        assert!(Options::parse(&args(&["--group", "nope"])).is_err());
        assert!(Options::parse(&args(&["--fast"])).is_err());
        assert!(Options::parse(&[]).unwrap().wants("primes"));
    }
}
