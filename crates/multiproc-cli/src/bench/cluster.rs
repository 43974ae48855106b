//! The `cluster` group: the cluster pool through a real `redis-server` (started here on a
//! free loopback port) with one worker (this binary in worker mode), next to a raw
//! `XADD` → `XREADGROUP` → reply `XADD` → `XREAD` round trip measured in the same run, and
//! next to Celery (prefork, as many processes as our worker, the same Redis as broker and
//! result backend) when the machine's `python3` can import it.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc_cluster::ClusterPool;

use super::report::{Report, Unit};
use super::stats::repeat;

const KEY: &str = "multiproc bench cluster key";

/// Items per task of the chunked maps, ours and Celery's.
const CHUNK: usize = 1000;

/// Processes of our worker and of Celery's.
const PROCESSES: usize = 2;

/// The Celery peer: a worker, or the client that measures (`python3 -c`, no file).
const CELERY_PEER: &str = include_str!("celery_peer.py");

/// The trivial task.
#[multiproc::func]
pub(crate) fn cluster_trivial(x: u64) -> u64 {
    x
}

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process leading a process group of its own (Celery's worker and its pool),
/// the group killed when dropped.
struct KilledGroup(Child);

impl Drop for KilledGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Celery's figures, measured in the same run.
struct Celery {
    /// Seconds per round trip of one task.
    rt: f64,
    /// Tasks per second of a map in chunks of [`CHUNK`].
    map: f64,
    /// What it is, for the comparisons.
    what: String,
}

/// Celery's figures, or why there are none.
fn celery(
    url: &str,
    python: bool,
    round_trips: u32,
    n_map: u64,
    reps: usize,
) -> Result<Celery, String> {
    if !python {
        return Err("Celery columns skipped (--no-python)".into());
    }
    let probe = Command::new("python3")
        .args(["-c", "import celery, redis; print(celery.__version__)"])
        .stderr(Stdio::null())
        .output();
    let version = match probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            let note = "celery (with the redis package) is not importable by python3: \
                        Celery columns skipped (pip install celery redis)";
            return Err(note.into());
        }
    };
    let failed = |e: &dyn std::fmt::Display| format!("the Celery peer failed: {e}");
    let _worker = KilledGroup(
        Command::new("python3")
            .args(["-c", CELERY_PEER, "worker", url, &PROCESSES.to_string()])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(&e))?,
    );
    let out = Command::new("python3")
        .args(["-c", CELERY_PEER, "bench", url])
        .args([
            round_trips.to_string(),
            n_map.to_string(),
            CHUNK.to_string(),
            reps.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(&e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(&err.lines().last().unwrap_or("no output")));
    }
    let figures = super::python::parse(&String::from_utf8_lossy(&out.stdout));
    let get = |name: &str| {
        figures
            .get(name)
            .map(|f| f.0)
            .ok_or_else(|| failed(&format!("no {name}")))
    };
    Ok(Celery {
        rt: get("celery.rt")? * 1e-6,
        map: get(&format!("celery.map.chunks{CHUNK}"))?,
        what: format!("CPython Celery {version}, prefork of {PROCESSES}"),
    })
}

fn fail(e: impl std::fmt::Display) -> multiproc::Error {
    multiproc::Error::Io(std::io::Error::other(e.to_string()))
}

fn start_redis() -> multiproc::Result<(Killed, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()?;
    let guard = Killed(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let end = Instant::now() + Duration::from_secs(10);
    while redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        if Instant::now() > end {
            return Err(fail("redis-server did not come up"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, url))
}

/// Seconds per raw round trip: a thread answers each entry of one stream (read through a
/// consumer group) on another stream, which the caller reads.
fn raw_round_trips(url: &str, n: u32) -> Result<f64, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection()?;
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("raw:req")
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut con);
    let mut peer = client.get_connection()?;
    let responder = std::thread::spawn(move || -> redis::RedisResult<()> {
        for _ in 0..n {
            let v: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(10_000)
                .arg("STREAMS")
                .arg("raw:req")
                .arg(">")
                .query(&mut peer)?;
            std::hint::black_box(v);
            redis::cmd("XADD")
                .arg("raw:rep")
                .arg("*")
                .arg("p")
                .arg(1)
                .query::<()>(&mut peer)?;
        }
        Ok(())
    });
    let mut last = "0-0".to_string();
    let t = Instant::now();
    for _ in 0..n {
        redis::cmd("XADD")
            .arg("raw:req")
            .arg("*")
            .arg("p")
            .arg(1)
            .query::<()>(&mut con)?;
        let v: redis::Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(10_000)
            .arg("STREAMS")
            .arg("raw:rep")
            .arg(&last)
            .query(&mut con)?;
        if let redis::Value::Array(s) = &v
            && let Some(id) = last_id(s)
        {
            last = id;
        }
    }
    let secs = t.elapsed().as_secs_f64() / f64::from(n);
    let _ = responder.join();
    redis::cmd("DEL")
        .arg("raw:req")
        .arg("raw:rep")
        .query::<()>(&mut con)?;
    Ok(secs)
}

/// The id of the last entry of an `XREAD` reply.
fn last_id(streams: &[redis::Value]) -> Option<String> {
    let redis::Value::Array(pair) = streams.first()? else {
        return None;
    };
    let redis::Value::Array(entries) = pair.get(1)? else {
        return None;
    };
    let redis::Value::Array(entry) = entries.last()? else {
        return None;
    };
    match entry.first()? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Runs the group: apply round trip next to a raw Redis round trip, chunked throughput.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n_rt, n_map) = r
        .size
        .pick((2, 50, 2_000), (3, 300, 20_000), (5, 2_000, 100_000));
    r.group(&format!(
        "cluster: the Pool API through Redis Streams, 1 worker of {PROCESSES} processes, median of {reps}"
    ));
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        let note =
            "no redis-server on this machine: cluster group skipped (apt-get install redis-server)";
        println!("note: {note}");
        r.notes.push(note.into());
        return Ok(());
    }
    let (_redis, url) = start_redis()?;
    let worker = Killed(
        Command::new(std::env::current_exe()?)
            .args(["--mp-worker", &url, "--queue", "bench", "--processes"])
            .arg(PROCESSES.to_string())
            .env("MULTIPROC_AUTHKEY", KEY)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pool = ClusterPool::connect(&url, "bench", KEY.as_bytes()).map_err(fail)?;
    // The first task waits for the worker to be up.
    pool.apply_async(&cluster_trivial, 0)
        .map_err(fail)?
        .get_timeout(Duration::from_secs(30))
        .map_err(fail)?;
    let rt = repeat(reps, || {
        for i in 0..20 {
            pool.apply(&cluster_trivial, i).map_err(fail)?;
        }
        let t = Instant::now();
        for i in 0..n_rt {
            pool.apply(&cluster_trivial, u64::from(i)).map_err(fail)?;
        }
        Ok(t.elapsed().as_secs_f64() / f64::from(n_rt))
    })?;
    let raw = repeat(reps, || raw_round_trips(&url, n_rt).map_err(fail))?;
    let map = repeat(reps, || {
        let t = Instant::now();
        let out = pool
            .map_chunked(&cluster_trivial, 0..n_map, CHUNK)
            .map_err(fail)?;
        assert_eq!(out.len() as u64, n_map);
        Ok(n_map as f64 / t.elapsed().as_secs_f64())
    })?;
    drop(pool);
    drop(worker);
    // Celery on the same Redis, in the same run (its round trips are slower: fewer).
    let celery = celery(&url, r.python, n_rt.min(300), n_map, reps)
        .map_err(|note| {
            println!("note: {note}");
            r.notes.push(note);
        })
        .ok();
    let reference = raw.median();
    let mut refs = vec![("raw Redis round trip", Some(reference))];
    if let Some(c) = &celery {
        refs.push((&c.what, Some(c.rt)));
    }
    r.row(
        "cluster",
        "apply round trip (trivial task)",
        Unit::Secs,
        &rt,
        &refs,
    );
    r.row(
        "cluster",
        "raw XADD>XREADGROUP>XADD>XREAD",
        Unit::Secs,
        &raw,
        &[],
    );
    let refs: Vec<(&str, Option<f64>)> = celery
        .iter()
        .map(|c| (c.what.as_str(), Some(c.map)))
        .collect();
    r.row(
        "cluster",
        &format!("map of {n_map} trivial tasks, chunks of {CHUNK}"),
        Unit::Rate,
        &map,
        &refs,
    );
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn celery_without_python_is_a_note_not_an_error() {
        let note = celery("redis://127.0.0.1:1/", false, 1, 1, 1)
            .err()
            .expect("no figures");
        assert!(note.contains("--no-python"), "{note}");
    }
}
