//! The `manager` group: dict operations through a proxy next to a raw socket round trip
//! between two processes (the floor for any request/reply), manager start-up next to a
//! process spawn, and both next to CPython's `Manager()`.

use std::time::Instant;

use multiproc::manager::{DictProxy, EventProxy, LockProxy, Manager, ValueProxy};
use multiproc::{Func, Process};

use super::pep::empty_func;
use super::report::{Report, Unit};
use super::stats::{Samples, repeat};

/// Child side of the contended counter: `n` increments under the proxy lock.
#[multiproc::func]
pub(crate) fn locked_increments(lock: LockProxy, total: ValueProxy<u64>, n: u32) {
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
        .map(|_| dict_client.spawn((address.clone(), policy, ops)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Every client connected and waiting: then the clock starts.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let t = Instant::now();
    start.set().map_err(err)?;
    for k in kids {
        k.join().map_err(|e| e.to_string())??;
    }
    let secs = t.elapsed().as_secs_f64();
    server.shutdown();
    Ok(2.0 * f64::from(clients) * f64::from(ops) / secs)
}

const AUTHKEY: &[u8] = b"multiproc-bench";

fn spin_policy(p: u8) -> multiproc::SpinPolicy {
    match p {
        1 => multiproc::SpinPolicy::Never,
        2 => multiproc::SpinPolicy::Always,
        _ => multiproc::SpinPolicy::Adaptive,
    }
}

/// Child side of the busy-polling raw round trip: polls (without sleeping) before each
/// read, as the manager's connection threads do.
#[multiproc::func]
pub(crate) fn raw_spin_echo(fd: multiproc::Fd, n: u32) {
    use std::io::{Read, Write};
    let mut sock = std::fs::File::from(fd.into_owned());
    let mut buf = [0u8; 8];
    for _ in 0..n {
        busy_poll(&sock);
        sock.read_exact(&mut buf).expect("read");
        sock.write_all(&buf).expect("write");
    }
}

/// Polls `sock` until readable, without sleeping.
fn busy_poll(sock: &std::fs::File) {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    while nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(1) == 0 {
        std::hint::spin_loop();
    }
}

/// Seconds per round trip of 8 bytes over a raw socketpair whose both ends busy-poll.
fn raw_spin_round_trips(reps: usize, n: u32) -> multiproc::Result<Samples> {
    use std::io::{Read, Write};
    repeat(reps, || {
        let (a, b) = multiproc::pipe(true)?;
        let mut ours = std::fs::File::from(std::os::fd::OwnedFd::from(a));
        let theirs = multiproc::Fd::from(std::os::fd::OwnedFd::from(b));
        let p = raw_spin_echo.spawn((theirs, n + 200))?;
        let mut buf = [7u8; 8];
        let mut once = |ours: &mut std::fs::File| -> std::io::Result<()> {
            ours.write_all(&buf)?;
            busy_poll(ours);
            ours.read_exact(&mut buf)
        };
        for _ in 0..200 {
            once(&mut ours)?;
        }
        let t = Instant::now();
        for _ in 0..n {
            once(&mut ours)?;
        }
        let secs = t.elapsed().as_secs_f64() / f64::from(n);
        p.join()?;
        Ok(secs)
    })
}

/// Seconds per operation over `n` operations, for each of `reps` runs.
fn per_op(reps: usize, n: u32, mut op: impl FnMut(u32)) -> Samples {
    for i in 0..n.min(200) {
        op(i);
    }
    Samples(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for i in 0..n {
                    op(i);
                }
                t.elapsed().as_secs_f64() / f64::from(n)
            })
            .collect(),
    )
}

/// Runs the group: proxy round trips next to raw socket round trips and CPython.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n, starts, incs) = r.size.pick(
        (2, 200, 2, 200),
        (3, 2_000, 5, 2_000),
        (7, 20_000, 20, 10_000),
    );
    r.group(&format!(
        "manager: proxy operations and start-up, median of {reps}"
    ));
    let mgr = Manager::start()?;
    let d = mgr.dict::<String, u64>()?;
    let key = "k".to_string();
    let mut failed = None;
    let set = per_op(reps, n, |i| {
        if let Err(e) = d.set(&key, &u64::from(i)) {
            failed = Some(e);
        }
    });
    let get = per_op(reps, n, |_| {
        if let Err(e) = d.get(&key) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let raw = super::pipe::round_trips(reps, n, true)?;
    let raw_spin = raw_spin_round_trips(reps, n)?;
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
    let inc = repeat(reps.min(3), || {
        let lock = mgr.lock()?;
        let total = mgr.value(&0u64)?;
        let t = Instant::now();
        let kids = (0..2)
            .map(|_| locked_increments.spawn((lock.clone(), total.clone(), incs)))
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
    // Many clients on few CPUs: the adaptive waiting policy next to plain blocking and to
    // spinning whatever the load, every row in a process tree of its own, in turns.
    let total_ops = r.size.pick(2_000u32, 8_000, 40_000);
    let mut many = Vec::new();
    for clients in [1u32, 2, 4, 8] {
        let ops = total_ops / clients;
        let mut by_policy = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..reps.min(3) {
            for (policy, out) in by_policy.iter_mut().enumerate() {
                let rate = dict_clients
                    .spawn((clients, ops, policy as u8))?
                    .join()?
                    .map_err(|e| multiproc::Error::from(multiproc::ManagerError::Invalid(e)))?;
                out.push(rate);
            }
        }
        many.push((clients, by_policy.map(Samples)));
    }
    let py_set = r.cpython("mp_manager.py", "py.mgr.dict.set.fork", 1e-6);
    let py_get = r.cpython("mp_manager.py", "py.mgr.dict.get.fork", 1e-6);
    let py_start = r.cpython("mp_manager.py", "py.mgr.startup.fork", 1e-6);
    let py_inc = r.cpython("mp_manager.py", "py.mgr.value.inc2p", 1.0);
    let (spin, block) = (raw_spin.median(), raw.median());
    for (name, s, py) in [
        ("dict set through a proxy", &set, py_set),
        ("dict get through a proxy", &get, py_get),
    ] {
        r.row(
            "manager",
            name,
            Unit::Secs,
            s,
            &[
                ("raw busy-poll RT", Some(spin)),
                ("raw blocking RT", Some(block)),
                ("CPython", py),
            ],
        );
    }
    r.row(
        "manager",
        "raw socketpair RT, busy-poll",
        Unit::Secs,
        &raw_spin,
        &[],
    );
    r.row(
        "manager",
        "raw socketpair RT, blocking",
        Unit::Secs,
        &raw,
        &[],
    );
    let sp = spawn.median();
    r.row(
        "manager",
        "Manager::start + shutdown",
        Unit::Secs,
        &start,
        &[("spawn+join", Some(sp)), ("CPython, fork", py_start)],
    );
    r.row(
        "manager",
        "process spawn + join (empty)",
        Unit::Secs,
        &spawn,
        &[],
    );
    for (clients, [adaptive, never, always]) in &many {
        let py = r.cpython(
            "mp_manager.py",
            &format!("py.mgr.dict.clients{clients}"),
            1.0,
        );
        r.row(
            "manager",
            &format!("dict ops, {clients} client processes"),
            Unit::Rate,
            adaptive,
            &[
                ("blocking only", Some(never.median())),
                ("always spinning", Some(always.median())),
                ("CPython", py),
            ],
        );
    }
    r.row(
        "manager",
        "counter += 1 under a proxy lock, 2 procs",
        Unit::Rate,
        &inc,
        &[("CPython", py_inc)],
    );
    Ok(())
}
