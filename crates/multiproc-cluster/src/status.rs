//! What `multiproc cluster status` shows: live workers, queue depth, in-flight and failed
//! tasks.

use std::collections::HashMap;

use crate::envelope::{GROUP, Keys, bytes};
use crate::error::ClusterError;

/// A live worker, as its last heartbeat described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// `host-pid`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Local processes.
    pub processes: u32,
    /// Tasks running now.
    pub running: u64,
    /// Tasks done (every item succeeded).
    pub done: u64,
    /// Tasks done with failed items, or dead-lettered.
    pub failed: u64,
    /// Task entries refused without running them: unsigned or tampered, a copy of a task
    /// that runs or ran (a replay), past the task's expiry, or addressed to another queue.
    pub rejected: u64,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: u64,
}

/// The state of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStatus {
    /// Workers whose heartbeat is fresh.
    pub workers: Vec<WorkerStatus>,
    /// Tasks submitted and not yet taken by a worker.
    pub waiting: u64,
    /// Tasks taken and not yet acknowledged (running, or held by a dead worker until its
    /// lease runs out).
    pub in_flight: u64,
    /// Entries in the dead-letter stream (crashing tasks, rejected entries).
    pub dead: u64,
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::Int(n) => Some(n.to_string()),
        v => String::from_utf8(bytes(v)?).ok(),
    }
}

/// Reads the state of queue `queue` on the Redis at `url`.
pub fn status(url: &str, queue: &str) -> Result<QueueStatus, ClusterError> {
    read_status(url, queue).map_err(crate::error::broker)
}

fn read_status(url: &str, queue: &str) -> redis::RedisResult<QueueStatus> {
    let keys = Keys::new(queue);
    let mut con = redis::Client::open(url)?.get_connection()?;
    let ids: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.workers).query(&mut con)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut workers = Vec::new();
    for id in ids {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.worker(&id))
            .query(&mut con)?;
        if h.is_empty() {
            // Its heartbeat expired: gone.
            let _: () = redis::cmd("SREM")
                .arg(&keys.workers)
                .arg(&id)
                .query(&mut con)?;
            continue;
        }
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        workers.push(WorkerStatus {
            host: h.get("host").cloned().unwrap_or_default(),
            pid: num("pid") as u32,
            processes: num("processes") as u32,
            running: num("running"),
            done: num("done"),
            failed: num("failed"),
            rejected: num("rejected"),
            seen_secs_ago: now.saturating_sub(num("seen")),
            id,
        });
    }
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    let len: u64 = redis::cmd("XLEN").arg(&keys.tasks).query(&mut con)?;
    let dead: u64 = redis::cmd("XLEN").arg(&keys.dead).query(&mut con)?;
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&keys.tasks)
        .query(&mut con)
        .unwrap_or(redis::Value::Nil);
    let mut in_flight = 0;
    let mut lag = None;
    if let redis::Value::Array(gs) = groups {
        for g in gs {
            let fields: Vec<(String, Option<String>)> = match g {
                redis::Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|p| Some((text(p.first()?)?, p.get(1).and_then(text))))
                    .collect(),
                redis::Value::Map(kv) => kv
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, text(v))))
                    .collect(),
                _ => continue,
            };
            let get = |k: &str| fields.iter().find(|f| f.0 == k).and_then(|f| f.1.clone());
            if get("name").as_deref() == Some(GROUP) {
                in_flight = get("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
                lag = get("lag").and_then(|v| v.parse().ok());
            }
        }
    }
    Ok(QueueStatus {
        workers,
        // Acknowledged tasks are deleted, so what is left is waiting or in flight.
        waiting: lag.unwrap_or_else(|| len.saturating_sub(in_flight)),
        in_flight,
        dead,
    })
}
