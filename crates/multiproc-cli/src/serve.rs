//! `multiproc manager serve`: a manager serving on the network until stopped.

use std::io::Write;
use std::path::PathBuf;

use multiproc::manager::Manager;
use nix::sys::signal::{SigSet, Signal};

/// The environment variable read for the authkey when neither `--authkey-env` nor
/// `--authkey-file` is given.
pub(crate) const DEFAULT_KEY_ENV: &str = "MULTIPROC_AUTHKEY";

/// The command line of `multiproc manager serve`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Serves a manager (dicts, queues, locks, ... by name) until SIGINT/SIGTERM or a client's shutdown",
    long_about = "Serves a manager on the network: clients that know the authkey create dicts, \
                  lists, queues, locks, events, barriers, ... on it and publish them by name \
                  (Manager::connect, publish, lookup). Stock Python clients connect too \
                  (multiprocessing.managers.SyncManager(address, authkey).connect()), and a \
                  published name is a type id for them (SyncManager.register(name)). It runs \
                  until SIGINT/SIGTERM or a client's shutdown, and prints the address it \
                  serves on.",
    after_long_help = "User types (#[multiproc::managed]) are created only by a server whose \
                       binary contains their impl; this command serves the built-in objects. \
                       Serve them from your own binary:\n\n    \
                       let server = multiproc::manager::Manager::serve(\"0.0.0.0:5000\", &authkey)?;\n    \
                       server.wait();"
)]
pub(crate) struct Args {
    /// Where to listen: HOST:PORT (port 0 picks a free one), a Unix socket /path, or an
    /// abstract Unix socket @name
    #[arg(long, value_name = "ADDR")]
    address: String,
    /// The environment variable that holds the authkey
    #[arg(long, value_name = "VAR", default_value = DEFAULT_KEY_ENV)]
    authkey_env: String,
    /// A file that holds the authkey (trailing whitespace ignored), instead of a variable
    #[arg(long, value_name = "PATH", conflicts_with = "authkey_env")]
    authkey_file: Option<PathBuf>,
}

/// What `multiproc manager serve` was asked for, its authkey read.
#[derive(Debug)]
pub(crate) struct Options {
    address: String,
    authkey: Vec<u8>,
}

impl TryFrom<Args> for Options {
    type Error = String;

    /// Reads the authkey from the file or the variable; a message naming where it looked
    /// when it cannot.
    fn try_from(args: Args) -> Result<Options, String> {
        let authkey = match &args.authkey_file {
            Some(path) => {
                let mut key = std::fs::read(path)
                    .map_err(|e| format!("cannot read the authkey file {}: {e}", path.display()))?;
                while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    key.pop();
                }
                key
            }
            None => std::env::var_os(&args.authkey_env)
                .ok_or_else(|| format!("the authkey variable {} is not set", args.authkey_env))?
                .into_encoded_bytes(),
        };
        if authkey.is_empty() {
            return Err("the authkey is empty".into());
        }
        Ok(Options {
            address: args.address,
            authkey,
        })
    }
}

/// Serves until SIGINT/SIGTERM or a client's shutdown; prints the address it serves on.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    // Block the stop signals before any thread starts, so that every thread inherits the
    // mask and the waiting thread below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let server = Manager::serve(opts.address.as_str(), &opts.authkey).map_err(|e| e.to_string())?;
    println!("serving on {}", server.address());
    let _ = std::io::stdout().flush();
    let handle = server.handle();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("multiproc manager: {sig}, stopping");
        }
        handle.shutdown();
    });
    server.wait();
    println!("stopped");
    Ok(())
}
