//! `multiproc cluster status`: the workers, depth, in-flight and failed tasks of a queue.

/// The Redis URL and queue of `multiproc cluster status`.
pub(crate) fn parse(args: &[String]) -> Result<(String, String), String> {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(bad) = args
        .iter()
        .step_by(2)
        .find(|a| !matches!(a.as_str(), "--redis" | "--queue"))
    {
        return Err(format!("unknown argument `{bad}`"));
    }
    let url = value("--redis").ok_or("--redis URL is required")?;
    let queue = value("--queue").unwrap_or_else(|| "default".into());
    Ok((url, queue))
}

/// Prints the status of `queue` on the Redis at `url`.
pub(crate) fn status(url: &str, queue: &str) -> Result<(), String> {
    let st = multiproc_cluster::status(url, queue).map_err(|e| e.to_string())?;
    println!(
        "queue {queue}: {} waiting, {} in flight, {} dead letters, {} workers",
        st.waiting,
        st.in_flight,
        st.dead,
        st.workers.len()
    );
    if !st.workers.is_empty() {
        println!(
            "{:<32} {:>7} {:>9} {:>7} {:>9} {:>7} {:>8} {:>6}",
            "worker", "pid", "processes", "running", "done", "failed", "rejected", "seen"
        );
    }
    for w in &st.workers {
        println!(
            "{:<32} {:>7} {:>9} {:>7} {:>9} {:>7} {:>8} {:>5}s",
            w.id, w.pid, w.processes, w.running, w.done, w.failed, w.rejected, w.seen_secs_ago
        );
    }
    Ok(())
}
