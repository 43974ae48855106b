//! The `manager` group: dict operations through a proxy next to a raw socket round trip
//! between two processes (the floor for any request/reply, blocking and spinning) in each CPU
//! placement, manager start-up next to a process spawn, and both next to CPython's
//! `Manager()`.

use std::time::{Duration, Instant};

use multiproc::manager::{DictProxy, EventProxy, LockProxy, Manager, PyManager, ValueProxy};
use multiproc::{Connection, Func, Process, pipe};

use super::pep::empty_func;
use super::place::{Cpu, Ends, Placement};
use super::raw::{self, Wait};
use super::report::{Report, Unit};
use super::stats::{Samples, per_call, repeat};

/// Child side of the contended counter: pins itself to `cpu`, then `n` increments under the
/// proxy lock.
#[multiproc::func]
pub(crate) fn locked_increments(cpu: Cpu, lock: LockProxy, total: ValueProxy<u64>, n: u32) {
    cpu.pin().expect("pin");
    for _ in 0..n {
        let _held = lock.lock().expect("lock");
        total.set(&(total.get().expect("get") + 1)).expect("set");
    }
}

/// One client of the many-clients rows: waits for the start, then `ops` dict sets and gets.
#[multiproc::func]
pub(crate) fn dict_client(address: String, policy: u8, ops: u32) -> Result<(), String> {
    multiproc::set_spin_policy(spin_policy(policy));
    let mgr = Manager::connect(address.as_str(), AUTHKEY).map_err(|e| e.to_string())?;
    let d: DictProxy<u32, u64> = mgr.lookup("d").map_err(|e| e.to_string())?;
    let start: EventProxy = mgr.lookup("start").map_err(|e| e.to_string())?;
    start.wait().map_err(|e| e.to_string())?;
    for i in 0..ops {
        d.set(&(i % 64), &u64::from(i)).map_err(|e| e.to_string())?;
        d.get(&(i % 64)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Dict operations per second of `clients` processes against one manager, every process
/// (server and clients) waiting under spin policy `policy`. Runs in a process of its own, so
/// that the policy is the only difference between rows.
#[multiproc::func]
pub(crate) fn dict_clients(clients: u32, ops: u32, policy: u8) -> Result<f64, String> {
    let err = |e: multiproc::ManagerError| e.to_string();
    multiproc::set_spin_policy(spin_policy(policy));
    let server = Manager::serve(
        format!("@multiproc-bench-dict-{}", std::process::id()).as_str(),
        AUTHKEY,
    )
    .map_err(err)?;
    let address = server.address().to_string();
    let mgr = Manager::connect(address.as_str(), AUTHKEY).map_err(err)?;
    mgr.publish("d", &mgr.dict::<u32, u64>().map_err(err)?)
        .map_err(err)?;
    let start = mgr.event().map_err(err)?;
    mgr.publish("start", &start).map_err(err)?;
    let kids = (0..clients)
        .map(|_| super::helper(&dict_client, (address.clone(), policy, ops)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Every client connected and waiting: then the clock starts.
    let secs = raw::time_clients(kids, || start.set().map_err(err))?;
    server.shutdown();
    Ok(2.0 * f64::from(clients) * f64::from(ops) / secs)
}

const AUTHKEY: &[u8] = b"multiproc-bench";

/// "1 client process", "8 client processes".
fn processes(clients: u32) -> String {
    let s = if clients == 1 { "" } else { "es" };
    format!("{clients} client process{s}")
}

fn spin_policy(p: u8) -> multiproc::SpinPolicy {
    match p {
        1 => multiproc::SpinPolicy::Never,
        2 => multiproc::SpinPolicy::Always,
        _ => multiproc::SpinPolicy::Adaptive,
    }
}

/// Child side: pins itself to `cpu`, serves a manager at `address` (`None`: a fresh abstract
/// Unix address; its threads take the CPU), sends the address through `ready`, and serves
/// until a client shuts it down.
#[multiproc::func]
pub(crate) fn pinned_server(
    cpu: Cpu,
    ready: Connection,
    address: Option<String>,
) -> Result<(), String> {
    cpu.pin().map_err(|e| e.to_string())?;
    let address =
        address.unwrap_or_else(|| format!("@multiproc-bench-placed-{}", std::process::id()));
    let server = Manager::serve(address.as_str(), AUTHKEY).map_err(|e| e.to_string())?;
    ready
        .send(&server.address().to_string())
        .map_err(|e| e.to_string())?;
    // Bounded: a bench that died before its shutdown leaves no server behind for long.
    server.wait_timeout(Duration::from_secs(600));
    server.shutdown();
    Ok(())
}

/// The figures of one placement.
struct Placed {
    set: Samples,
    get: Samples,
    raw_block: Samples,
    raw_spin: Samples,
    inc: Samples,
}

/// Proxy operations against a server on `ends.there` from this process (on `ends.here`), in
/// turns with raw round trips in the same placement; the proxy-lock counter from 2 processes
/// on `ends.here`.
fn placed(
    ends: &Ends,
    reps: usize,
    (n, incs): (u32, u32),
    budget: Duration,
) -> multiproc::Result<Placed> {
    let (ready, theirs) = pipe(true)?;
    let server = super::helper(&pinned_server, (ends.there, theirs, None))?;
    let address: String = ready.recv()?;
    let mgr = Manager::connect(address.as_str(), AUTHKEY)?;
    let d = mgr.dict::<String, u64>()?;
    let key = "k".to_string();
    let set = |i| d.set(&key, &u64::from(i));
    let get = |_| d.get(&key).map(drop);
    per_call(200, budget / 10, set)?;
    per_call(200, budget / 10, get)?;
    let [mut sets, mut gets, mut raw_block, mut raw_spin]: [Vec<f64>; 4] = Default::default();
    for _ in 0..reps {
        sets.push(per_call(n, budget, set)?);
        gets.push(per_call(n, budget, get)?);
        raw_block.push(raw::round_trip(ends, Wait::Block, n, budget)?);
        raw_spin.push(raw::round_trip(ends, Wait::Spin, n, budget)?);
    }
    let inc = repeat(reps.min(3), || {
        let lock = mgr.lock()?;
        let total = mgr.value(&0u64)?;
        let t = Instant::now();
        let kids = (0..2)
            .map(|_| locked_increments.spawn((ends.here, lock.clone(), total.clone(), incs)))
            .collect::<Result<Vec<_>, _>>()?;
        for k in kids {
            k.join()?;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(total.get()?, u64::from(incs) * 2, "lost increments");
        Ok(f64::from(incs) * 2.0 / secs)
    })?;
    drop(d);
    mgr.shutdown()?;
    server
        .join()?
        .map_err(|e| multiproc::Error::from(multiproc::ManagerError::Invalid(e)))?;
    Ok(Placed {
        set: Samples(sets),
        get: Samples(gets),
        raw_block: Samples(raw_block),
        raw_spin: Samples(raw_spin),
        inc,
    })
}

/// The figures with no placement to choose: start-up, and many clients under each waiting
/// policy.
struct Unplaced {
    start: Samples,
    spawn: Samples,
    /// Per client count: the adaptive, blocking-only and always-spinning policies' dict
    /// operations, and raw round trips (`raw::raw_clients`).
    many: Vec<(u32, [Samples; 4])>,
}

fn unplaced(r: &Report, reps: usize, starts: usize) -> multiproc::Result<Unplaced> {
    let start = Samples::measure(starts, 1, || {
        let m = Manager::start().and_then(|m| m.shutdown());
        assert!(m.is_ok(), "manager start: {m:?}");
    });
    let spawn = Samples::measure(starts, 1, || {
        let r = Process::builder()
            .start(&empty_func, ())
            .and_then(|p| p.join());
        assert!(r.is_ok(), "spawn: {r:?}");
    });
    // Many clients on few CPUs: the adaptive waiting policy next to plain blocking and to
    // spinning whatever the load, every row in a process tree of its own, in turns.
    let total_ops = r.size.pick(2_000u32, 8_000, 40_000);
    let mut many = Vec::new();
    for clients in [1u32, 2, 4, 8] {
        let ops = total_ops / clients;
        let mut by_policy = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let failed = |e: String| multiproc::Error::from(std::io::Error::other(e));
        // These rows swing ±20% between runs of the same binary: five repetitions in full
        // mode, so that the ratio to blocking-only means something.
        for _ in 0..reps.min(5) {
            let [policies @ .., raw_rates] = &mut by_policy;
            for (policy, out) in policies.iter_mut().enumerate() {
                let rate = super::helper(&dict_clients, (clients, ops, policy as u8))?
                    .join()?
                    .map_err(failed)?;
                out.push(rate);
            }
            // As many round trips per client as a dict client's sets and gets.
            let rate = super::helper(&raw::raw_clients, (clients, 2 * ops))?
                .join()?
                .map_err(failed)?;
            raw_rates.push(rate);
        }
        many.push((clients, by_policy.map(Samples)));
    }
    Ok(Unplaced { start, spawn, many })
}

/// Runs the group: in each placement, proxy round trips next to raw socket round trips (and
/// CPython, unpinned); start-up and many clients unpinned.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n, starts, incs) = r.size.pick(
        (2, 200, 2, 200),
        (3, 2_000, 5, 2_000),
        (7, 20_000, 20, 10_000),
    );
    let budget = r.size.budget();
    r.group(&format!(
        "manager: proxy operations and start-up, median of {reps}"
    ));
    let py_set = r.cpython("mp_manager.py", "py.mgr.dict.set.fork", 1e-6);
    let py_get = r.cpython("mp_manager.py", "py.mgr.dict.get.fork", 1e-6);
    let py_start = r.cpython("mp_manager.py", "py.mgr.startup.fork", 1e-6);
    let py_inc = r.cpython("mp_manager.py", "py.mgr.value.inc2p", 1.0);
    for ends in r.placements() {
        let pinned = ends.enter()?;
        let f = placed(&ends, reps, (n, incs), budget)?;
        drop(pinned);
        let rest = match ends.placement {
            Placement::Unpinned => Some(unplaced(r, reps, starts)?),
            _ => None,
        };
        r.section(&ends);
        let (spin, block) = (f.raw_spin.median(), f.raw_block.median());
        for (name, s, py) in [
            ("dict set through a proxy", &f.set, py_set),
            ("dict get through a proxy", &f.get, py_get),
        ] {
            r.row(
                "manager",
                name,
                Unit::Secs,
                s,
                &[
                    ("raw spinning RT", Some(spin)),
                    ("raw blocking RT", Some(block)),
                    ("CPython", ends.unpinned(py)),
                ],
            );
        }
        for (name, s) in [
            ("raw socketpair RT, spinning", &f.raw_spin),
            ("raw socketpair RT, blocking", &f.raw_block),
        ] {
            r.row("manager", name, Unit::Secs, s, &[]);
        }
        r.row(
            "manager",
            "counter += 1 under a proxy lock, 2 procs",
            Unit::Rate,
            &f.inc,
            &[("CPython", ends.unpinned(py_inc))],
        );
        let Some(u) = rest else { continue };
        r.row(
            "manager",
            "Manager::start + shutdown",
            Unit::Secs,
            &u.start,
            &[
                ("spawn+join", Some(u.spawn.median())),
                ("CPython, fork", py_start),
            ],
        );
        r.row(
            "manager",
            "process spawn + join (empty)",
            Unit::Secs,
            &u.spawn,
            &[],
        );
        for (clients, [adaptive, never, always, raw]) in &u.many {
            let py = r.cpython(
                "mp_manager.py",
                &format!("py.mgr.dict.clients{clients}"),
                1.0,
            );
            r.row(
                "manager",
                &format!("dict ops, {}", processes(*clients)),
                Unit::Rate,
                adaptive,
                &[
                    ("blocking only", Some(never.median())),
                    ("always spinning", Some(always.median())),
                    ("raw echo RT, a thread per client", Some(raw.median())),
                    ("CPython", py),
                ],
            );
        }
        for (clients, [.., raw]) in &u.many {
            r.row(
                "manager",
                &format!("raw echo RT, {}", processes(*clients)),
                Unit::Rate,
                raw,
                &[],
            );
        }
    }
    interop(r)
}

/// A stock CPython `SyncManager` client's dict operations against this crate's server and
/// against CPython's own, measured by one Python process in the same run, in each placement:
/// the client on one end's CPU, both servers on the other's.
fn interop(r: &mut Report) -> multiproc::Result<()> {
    if !r.python {
        return Ok(());
    }
    for ends in r.placements() {
        // A server process of its own, as CPython's is (a server inside this process would
        // compete with a spinning client of this process for the CPUs).
        let (ready, theirs) = pipe(true)?;
        let server = super::helper(
            &pinned_server,
            (ends.there, theirs, Some("127.0.0.1:0".to_string())),
        )?;
        let address: String = ready.recv()?;
        let cpu = |c: Cpu| c.0.map_or_else(|| "-".to_string(), |c| c.to_string());
        let figures = super::python::run_with(
            "mp_manager_interop.py",
            r.size,
            r.python,
            &[
                &address,
                std::str::from_utf8(AUTHKEY).unwrap_or_default(),
                &cpu(ends.here),
                &cpu(ends.there),
            ],
        );
        let done = match figures {
            Ok(figures) => interop_rows(r, &ends, &figures, &address),
            Err(note) => {
                r.note(note);
                Ok(())
            }
        };
        Manager::connect(address.as_str(), AUTHKEY)?.shutdown()?;
        server
            .join()?
            .map_err(|e| multiproc::Error::from(multiproc::ManagerError::Invalid(e)))?;
        done?;
    }
    Ok(())
}

/// The rows of one placement's Python clients (and, unpinned, the Rust client of CPython's
/// server).
fn interop_rows(
    r: &mut Report,
    ends: &Ends,
    figures: &super::python::Figures,
    address: &str,
) -> multiproc::Result<()> {
    let series = |name: &str| {
        let mut v: Vec<(usize, f64)> = figures
            .iter()
            .filter_map(|(k, (value, _))| {
                let rep = k.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
                Some((rep, value * 1e-6))
            })
            .collect();
        v.sort_by_key(|e| e.0);
        Samples(v.into_iter().map(|e| e.1).collect())
    };
    r.section_named("stock CPython clients (TCP)", ends);
    for op in ["set", "get", "raw"] {
        let ours = series(&format!("py.interop.ours.{op}"));
        let theirs = series(&format!("py.interop.cpython.{op}"));
        if ours.0.is_empty() || theirs.0.is_empty() {
            r.note(format!("mp_manager_interop.py printed no {op} figures"));
            continue;
        }
        let what = match op {
            "raw" => "raw set RT".to_string(),
            op => format!("dict {op}"),
        };
        r.row(
            "manager",
            &format!("py client {what}, our server"),
            Unit::Secs,
            &ours,
            &[("CPython's server", Some(theirs.median()))],
        );
        r.row(
            "manager",
            &format!("py client {what}, CPython's"),
            Unit::Secs,
            &theirs,
            &[],
        );
    }
    if ends.placement == Placement::Unpinned {
        let ours = PyManager::connect(address, AUTHKEY)?;
        rust_on_cpython(r, figures, &ours)?;
    }
    Ok(())
}

/// Per-call times of `reps` runs of a dict `set` and `get` through `d`.
fn py_dict_ops(
    r: &Report,
    d: &multiproc::manager::PyDict,
) -> multiproc::Result<(Samples, Samples)> {
    let (reps, n) = r.size.pick((2, 200), (5, 2_000), (7, 10_000));
    let budget = r.size.budget();
    let set = repeat(reps, || {
        Ok(per_call(n, budget, |i| d.set("k", i64::from(i)))?)
    })?;
    let get = repeat(reps, || Ok(per_call(n, budget, |_| d.get("k").map(drop))?))?;
    Ok((set, get))
}

/// This crate's client of CPython's protocol ([`PyManager`]) against CPython's own manager
/// server, next to CPython's client against it and to the same client against our server
/// (`ours`): with a client that costs little, the servers' own costs show.
fn rust_on_cpython(
    r: &mut Report,
    figures: &super::python::Figures,
    ours: &PyManager,
) -> multiproc::Result<()> {
    if !r.python {
        return Ok(());
    }
    let key = "multiproc-bench-interop";
    let (server, address) = match super::python::start("mp_manager_server.py", &[key]) {
        Ok(s) => s,
        Err(note) => {
            r.note(note);
            return Ok(());
        }
    };
    let mgr = PyManager::connect(address.as_str(), key.as_bytes())?;
    let d = mgr.dict()?;
    let (set, get) = py_dict_ops(r, &d)?;
    let (ours_set, ours_get) = py_dict_ops(r, &ours.dict()?)?;
    let python_median = |op: &str| {
        let prefix = format!("py.interop.cpython.{op}.");
        let v: Vec<f64> = figures
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, (v, _))| v * 1e-6)
            .collect();
        (!v.is_empty()).then(|| Samples(v).median())
    };
    for (op, s, o) in [("set", &set, &ours_set), ("get", &get, &ours_get)] {
        r.row(
            "manager",
            &format!("Rust client dict {op}, CPython's server"),
            Unit::Secs,
            s,
            &[("py client", python_median(op))],
        );
        r.row(
            "manager",
            &format!("Rust client dict {op}, our server"),
            Unit::Secs,
            o,
            &[("CPython's server", Some(s.median()))],
        );
    }
    drop((d, mgr, server));
    Ok(())
}
