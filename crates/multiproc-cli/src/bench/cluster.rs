//! The `cluster` group: the cluster pool through a real `redis-server` (started here on a
//! free loopback port) with one worker (this binary in worker mode), next to a raw
//! `XADD` → `XREADGROUP` → reply `XADD` → `XREAD` round trip measured in the same run.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc_cluster::ClusterPool;

use super::report::{Report, Unit};
use super::stats::repeat;

const KEY: &str = "multiproc bench cluster key";

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
        "cluster: the Pool API through Redis Streams, 1 worker of 2 processes, median of {reps}"
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
            .args(["--mp-worker", &url, "--queue", "bench", "--processes", "2"])
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
        let out = pool.map(&cluster_trivial, 0..n_map).map_err(fail)?;
        assert_eq!(out.len() as u64, n_map);
        Ok(n_map as f64 / t.elapsed().as_secs_f64())
    })?;
    drop(pool);
    drop(worker);
    let reference = raw.median();
    r.row(
        "cluster",
        "apply round trip (trivial task)",
        Unit::Secs,
        &rt,
        &[("raw Redis round trip", Some(reference))],
    );
    r.row(
        "cluster",
        "raw XADD>XREADGROUP>XADD>XREAD",
        Unit::Secs,
        &raw,
        &[],
    );
    r.row(
        "cluster",
        &format!("map of {n_map} trivial tasks"),
        Unit::Rate,
        &map,
        &[],
    );
    Ok(())
}
