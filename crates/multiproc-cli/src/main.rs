//! `multiproc`: the command-line companion of the library.
//!
//! ```text
//! multiproc bench [--quick | --full | --tiny] [--no-python] [--json FILE] [--chart FILE] [--group NAME]... [--busy N]
//! multiproc manager serve --address ADDR [--authkey-env VAR | --authkey-file PATH]
//! multiproc cluster status --redis URL [--queue NAME]
//! multiproc --help | --version, and --help after any command
//! ```
//!
//! Exit codes: 0 done, 1 the command failed, 2 a bad command line (the error names the
//! argument).

mod bench;
mod cluster;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "multiproc",
    version,
    about = "multiproc's command: its benchmarks, a manager served on the network, a cluster queue's status",
    arg_required_else_help = true,
    after_help = "Exit codes: 0 done, 1 the command failed, 2 a bad command line.\n\
                  `multiproc COMMAND --help` lists a command's options with their defaults."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Bench(bench::Args),
    /// Managers served on the network
    #[command(subcommand, arg_required_else_help = true)]
    Manager(ManagerCommand),
    /// Clusters on Redis Streams
    #[command(subcommand, arg_required_else_help = true)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ManagerCommand {
    Serve(serve::Args),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    Status(cluster::Args),
}

#[multiproc::main]
fn main() -> ExitCode {
    // `multiproc --mp-worker URL ...`: a cluster worker for the bench's tasks (its own
    // arguments, read before the command line's).
    multiproc_cluster::run_worker_if_requested();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (code 0, on stdout) as well as bad arguments (code 2).
        Err(e) => return exit_with(&e),
    };
    match cli.command {
        Command::Bench(args) => outcome("bench", bench::run(&args.into())),
        Command::Manager(ManagerCommand::Serve(args)) => match serve::Options::try_from(args) {
            Ok(opts) => outcome("manager serve", serve::run(&opts)),
            Err(msg) => exit_with(&usage_error(&["manager", "serve"], msg)),
        },
        Command::Cluster(ClusterCommand::Status(args)) => {
            outcome("cluster status", cluster::status(&args))
        }
    }
}

/// Code 0 for a command that succeeded; its error and code 1 for one that failed.
fn outcome<E: std::fmt::Display>(command: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multiproc {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what clap has to say (help, version or an error) and returns its exit code.
fn exit_with(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// A bad command line found after parsing (an authkey that cannot be read), reported as
/// clap reports its own errors: with the usage of the subcommand at `path`.
fn usage_error(path: &[&str], msg: impl std::fmt::Display) -> clap::Error {
    let mut cmd = Cli::command();
    cmd.build();
    let mut sub = &mut cmd;
    for name in path {
        sub = sub
            .find_subcommand_mut(name)
            .expect("the path names subcommands of Cli");
    }
    sub.error(clap::error::ErrorKind::ValueValidation, msg)
}

#[cfg(test)]
mod test {
    use super::*;
    use bench::{Options, Size};

    fn bench(args: &[&str]) -> Result<Options, clap::Error> {
        let argv = ["multiproc", "bench"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Bench(a) => Ok(a.into()),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let e = usage_error(&["manager", "serve"], "no key")
            .render()
            .to_string();
        assert!(
            e.contains("no key") && e.contains("Usage: multiproc manager serve"),
            "{e}"
        );
    }

    #[test]
    fn bench_options_keep_their_meaning() {
        let o = bench(&["--full", "--group", "spawn", "--group", "fib"]).unwrap();
        assert_eq!(o.size, Size::Full);
        assert_eq!(o.groups, vec!["spawn", "fib"]);
        assert!(o.wants("fib") && !o.wants("primes"));
        let o = bench(&["--json", "a.json", "--chart", "c.svg", "--no-python"]).unwrap();
        assert_eq!(o.size, Size::Quick, "quick by default");
        assert_eq!(o.json.as_deref(), Some(std::path::Path::new("a.json")));
        assert_eq!(o.chart.as_deref(), Some(std::path::Path::new("c.svg")));
        assert!(!o.python);
        assert!(bench(&[]).unwrap().python, "CPython peers by default");
        assert!(
            bench(&[]).unwrap().wants("primes"),
            "every group by default"
        );
        assert_eq!(bench(&["--tiny"]).unwrap().size, Size::Tiny);
        // As before, the last size flag wins.
        assert_eq!(bench(&["--full", "--quick"]).unwrap().size, Size::Quick);
        assert_eq!(bench(&["--quick", "--full"]).unwrap().size, Size::Full);
        assert_eq!(bench(&["--full", "--full"]).unwrap().size, Size::Full);
        let o = bench(&["--json", "a", "--json", "b", "--no-python", "--no-python"]).unwrap();
        assert_eq!(o.json.as_deref(), Some(std::path::Path::new("b")));
        for bad in [
            &["--group"][..],
            &["--json"],
            &["--group", "nope"],
            &["--fast"],
        ] {
            assert!(bench(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_bench_group_is_accepted() {
        for (g, _) in bench::GROUPS {
            assert_eq!(bench(&["--group", g]).unwrap().groups, vec![g]);
        }
    }
}
