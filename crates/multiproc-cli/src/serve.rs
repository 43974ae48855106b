//! `multiproc manager serve`: a manager serving on the network until stopped.

use std::io::Write;

use multiproc::manager::Manager;
use nix::sys::signal::{SigSet, Signal};

/// What `multiproc manager serve` was asked for.
#[derive(Debug)]
pub(crate) struct Options {
    address: String,
    authkey: Vec<u8>,
}

/// The environment variable read for the authkey when neither `--authkey-env` nor
/// `--authkey-file` is given.
pub(crate) const DEFAULT_KEY_ENV: &str = "MULTIPROC_AUTHKEY";

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut address = None;
        let mut key_env = None;
        let mut key_file = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--address" => address = Some(value("--address")?),
                "--authkey-env" => key_env = Some(value("--authkey-env")?),
                "--authkey-file" => key_file = Some(value("--authkey-file")?),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        let address = address.ok_or("--address is required (HOST:PORT, /path or @name)")?;
        let authkey = match (key_env, key_file) {
            (Some(_), Some(_)) => {
                return Err("give --authkey-env or --authkey-file, not both".into());
            }
            (None, Some(path)) => {
                let mut key = std::fs::read(&path)
                    .map_err(|e| format!("cannot read the authkey file {path}: {e}"))?;
                while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    key.pop();
                }
                key
            }
            (env, None) => {
                let name = env.as_deref().unwrap_or(DEFAULT_KEY_ENV);
                std::env::var_os(name)
                    .ok_or_else(|| format!("the authkey variable {name} is not set"))?
                    .into_encoded_bytes()
            }
        };
        if authkey.is_empty() {
            return Err("the authkey is empty".into());
        }
        Ok(Options { address, authkey })
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
