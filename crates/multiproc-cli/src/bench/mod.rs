//! `multiproc bench`: the PEP 371 tables (serial vs threads vs processes) and the start
//! methods measured side by side with the raw OS primitives.

mod cluster;
mod manager;
mod pep;
mod pipe;
mod pool;
mod python;
mod queue;
mod spawn;
mod stats;

/// Command-line options of `multiproc bench`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// Fewer repetitions and smaller work: a run well under a minute on 2 cores.
    pub(crate) quick: bool,
    /// Groups to run; empty means all.
    pub(crate) groups: Vec<String>,
    /// Run the CPython peers next to ours (when `python3` is there).
    pub(crate) python: bool,
}

pub(crate) const GROUPS: [&str; 10] = [
    "empty", "fib", "primes", "fileio", "spawn", "pipe", "queue", "pool", "manager", "cluster",
];

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            quick: false,
            groups: Vec::new(),
            python: true,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--full" => opts.quick = false,
                "--no-python" => opts.python = false,
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

/// Runs the selected groups and prints their tables.
pub(crate) fn run(opts: &Options) -> multiproc::Result<()> {
    println!(
        "multiproc bench ({} mode) on {} CPUs (cpu_count), kernel {}, default start method {}",
        if opts.quick { "quick" } else { "full" },
        multiproc::cpu_count(),
        kernel(),
        multiproc::get_start_method()
    );
    for group in ["empty", "fib", "primes", "fileio"] {
        if opts.wants(group) {
            pep::run_group(group, opts.quick)?;
        }
    }
    if opts.wants("spawn") {
        spawn::run(opts.quick)?;
    }
    if opts.wants("pipe") {
        pipe::run(opts.quick)?;
    }
    if opts.wants("queue") {
        queue::run(opts.quick)?;
    }
    if opts.wants("pool") {
        pool::run(opts.quick)?;
    }
    if opts.wants("manager") {
        manager::run(opts.quick, opts.python)?;
    }
    if opts.wants("cluster") {
        cluster::run(opts.quick)?;
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod test {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let o = Options::parse(&args(&["--quick", "--group", "spawn", "--group", "fib"])).unwrap();
        assert!(o.quick);
        assert_eq!(o.groups, vec!["spawn", "fib"]);
        assert!(o.wants("fib") && !o.wants("primes"));
        assert!(Options::parse(&args(&["--group"])).is_err());
        assert!(Options::parse(&args(&["--group", "nope"])).is_err());
        assert!(Options::parse(&args(&["--fast"])).is_err());
        assert!(Options::parse(&[]).unwrap().wants("primes"));
    }
}
