//! `multiproc cluster status`: the workers, depth, in-flight and failed tasks of a queue.

/// The command line of `multiproc cluster status`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Live workers, waiting, in-flight and dead-lettered tasks of a cluster queue",
    long_about = "Live workers, waiting, in-flight and dead-lettered tasks of a cluster queue \
                  (multiproc-cluster's ClusterPool on Redis Streams), read from the broker; \
                  no authkey needed."
)]
pub(crate) struct Args {
    /// The broker, as redis://HOST:PORT/
    #[arg(long, value_name = "URL")]
    redis: String,
    /// The queue whose status is shown
    #[arg(long, value_name = "NAME", default_value = "default")]
    queue: String,
}

/// Prints the status of the queue on the Redis at the URL.
pub(crate) fn status(args: &Args) -> Result<(), String> {
    let (url, queue) = (&args.redis, &args.queue);
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
