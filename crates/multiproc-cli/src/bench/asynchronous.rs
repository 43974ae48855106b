//! The `async` group: the async methods (feature `tokio`, on a current-thread runtime) next
//! to their synchronous forms, measured in turns in the same run: a pool `apply_async` round
//! trip awaited vs `get`, a `Connection` round trip with `send_async`/`recv_async` vs
//! `send`/`recv`, queue put/get throughput with `put_async`/`get_async` vs `put`/`get`, a
//! manager dict `set_async` awaited vs `set`, and the threads of the process while 10,000
//! pool results are awaited at once.

use std::time::{Duration, Instant};

use multiproc::manager::DictProxy;
use multiproc::{Connection, Func, Manager, Pool, Queue, pipe};

use super::pipe::conn_echo;
use super::place::Cpu;
use super::pool::ident;
use super::report::{Report, Unit};
use super::stats::{Samples, per_call, per_call_async};

/// The runtime the async side runs on: one thread, the plainest setting.
fn runtime() -> multiproc::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Seconds per awaited `apply_async` round trip.
fn pool_rt_async(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    n: u32,
    budget: Duration,
) -> multiproc::Result<f64> {
    rt.block_on(per_call_async(
        n,
        budget,
        async |i| -> multiproc::Result<()> {
            pool.apply_async(&ident, u64::from(i))?.await?;
            Ok(())
        },
    ))
}

/// Seconds per typed round trip with an echo process, awaited or not.
fn conn_rt(
    rt: &tokio::runtime::Runtime,
    ours: &Connection,
    n: u32,
    budget: Duration,
    asynchronous: bool,
) -> multiproc::Result<f64> {
    if !asynchronous {
        return per_call(n, budget, |_| -> multiproc::Result<()> {
            ours.send(&7u64)?;
            std::hint::black_box(ours.recv::<u64>()?);
            Ok(())
        });
    }
    rt.block_on(per_call_async(
        n,
        budget,
        async |_| -> multiproc::Result<()> {
            ours.send_async(&7u64).await?;
            std::hint::black_box(ours.recv_async::<u64>().await?);
            Ok(())
        },
    ))
}

/// Items per second through a queue, a producer task and a consumer task in this process
/// (threads for the synchronous form, tasks of one runtime for the async one).
fn queue_rate(n: u64, asynchronous: bool) -> multiproc::Result<f64> {
    let q = Queue::<u64>::bounded(1024)?;
    let t = Instant::now();
    if asynchronous {
        // Two tasks on a runtime of two worker threads, as the synchronous form has two
        // threads: the same parallelism on both sides.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(multiproc::Error::Io)?;
        let (qp, qc) = (q.clone(), q.clone());
        rt.block_on(async move {
            let producer = tokio::spawn(async move {
                for i in 0..n {
                    qp.put_async(&i).await?;
                }
                Ok::<_, multiproc::QueueError>(())
            });
            let consumer = tokio::spawn(async move {
                for _ in 0..n {
                    std::hint::black_box(qc.get_async().await?);
                }
                Ok::<_, multiproc::QueueError>(())
            });
            let (p, c) = (producer.await, consumer.await);
            p.expect("producer task").and(c.expect("consumer task"))
        })?;
    } else {
        std::thread::scope(|s| -> multiproc::Result<()> {
            let producer = s.spawn(|| -> multiproc::Result<()> {
                for i in 0..n {
                    q.put(&i)?;
                }
                Ok(())
            });
            for _ in 0..n {
                std::hint::black_box(q.get()?);
            }
            producer.join().expect("producer")?;
            Ok(())
        })?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Seconds per manager dict `set` (one round trip to the server process), awaited or not.
fn dict_set(
    rt: &tokio::runtime::Runtime,
    d: &DictProxy<u64, u64>,
    n: u32,
    budget: Duration,
    asynchronous: bool,
) -> multiproc::Result<f64> {
    if !asynchronous {
        return Ok(per_call(n, budget, |i| d.set(&u64::from(i % 64), &7))?);
    }
    rt.block_on(per_call_async(
        n,
        budget,
        async |i| -> multiproc::Result<()> {
            d.set_async(&u64::from(i % 64), &7).await?;
            Ok(())
        },
    ))
}

/// The threads of this process now (`Threads` of `/proc/self/status`).
fn threads() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The threads of the process while `tasks` pool results are awaited at once on a
/// current-thread runtime, and before.
fn threads_while_awaiting(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    tasks: u64,
) -> multiproc::Result<(f64, f64)> {
    rt.block_on(async {
        let before = threads();
        let handles: Vec<_> = (0..tasks)
            .map(|i| pool.apply_async(&ident, i).map(tokio::spawn))
            .collect::<Result<_, _>>()?;
        tokio::task::yield_now().await;
        let during = threads();
        for h in handles {
            h.await.map_err(std::io::Error::other)??;
        }
        Ok((before, during))
    })
}

pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n_rt, n_q) = r.size.pick(
        (2, 200, 20_000),
        (3, 2_000, 200_000),
        (7, 20_000, 1_000_000),
    );
    let budget = r.size.budget();
    r.group(&format!(
        "async: the async methods (a current-thread tokio runtime; the queue row two worker threads) vs their synchronous forms, same run, median of {reps}"
    ));
    let rt = runtime()?;
    let pool = Pool::new(2)?;
    let (ours, theirs) = pipe(true)?;
    let echo = conn_echo.spawn((Cpu(None), theirs))?;
    let mgr = Manager::start()?;
    let dict = mgr.dict::<u64, u64>()?;
    let [
        mut pool_sync,
        mut pool_async,
        mut conn_sync,
        mut conn_async,
        mut q_sync,
        mut q_async,
        mut mgr_sync,
        mut mgr_async,
    ]: [Vec<f64>; 8] = Default::default();
    // Warm up both forms, then measure in turns.
    pool_rt_async(&rt, &pool, 100, budget / 10)?;
    conn_rt(&rt, &ours, 100, budget / 10, true)?;
    dict_set(&rt, &dict, 100, budget / 10, true)?;
    for _ in 0..reps {
        pool_sync.push(per_call(n_rt, budget, |i| -> multiproc::Result<()> {
            pool.apply_async(&ident, u64::from(i))?.get()?;
            Ok(())
        })?);
        pool_async.push(pool_rt_async(&rt, &pool, n_rt, budget)?);
        conn_sync.push(conn_rt(&rt, &ours, n_rt, budget, false)?);
        conn_async.push(conn_rt(&rt, &ours, n_rt, budget, true)?);
        q_sync.push(queue_rate(n_q, false)?);
        q_async.push(queue_rate(n_q, true)?);
        mgr_sync.push(dict_set(&rt, &dict, n_rt, budget, false)?);
        mgr_async.push(dict_set(&rt, &dict, n_rt, budget, true)?);
    }
    drop(dict);
    mgr.shutdown()?;
    let (before, during) = threads_while_awaiting(&rt, &pool, 10_000)?;
    drop(ours);
    echo.join()?;
    let [
        pool_sync,
        pool_async,
        conn_sync,
        conn_async,
        q_sync,
        q_async,
        mgr_sync,
        mgr_async,
    ] = [
        pool_sync, pool_async, conn_sync, conn_async, q_sync, q_async, mgr_sync, mgr_async,
    ]
    .map(Samples);
    r.row(
        "async",
        "pool apply_async round trip: awaited",
        Unit::Secs,
        &pool_async,
        &[("get()", Some(pool_sync.median()))],
    );
    r.row(
        "async",
        "pool apply_async round trip: get()",
        Unit::Secs,
        &pool_sync,
        &[],
    );
    r.row(
        "async",
        "Connection round trip, typed u64: send_async/recv_async",
        Unit::Secs,
        &conn_async,
        &[("send/recv", Some(conn_sync.median()))],
    );
    r.row(
        "async",
        "Connection round trip, typed u64: send/recv",
        Unit::Secs,
        &conn_sync,
        &[],
    );
    r.row(
        "async",
        "manager dict set, one round trip to the server: set_async",
        Unit::Secs,
        &mgr_async,
        &[("set()", Some(mgr_sync.median()))],
    );
    r.row(
        "async",
        "manager dict set, one round trip to the server: set()",
        Unit::Secs,
        &mgr_sync,
        &[],
    );
    r.row(
        "async",
        "bounded queue put/get, one producer and one consumer: put_async/get_async (2 tasks, 2 runtime threads)",
        Unit::Rate,
        &q_async,
        &[("put/get (threads)", Some(q_sync.median()))],
    );
    r.row(
        "async",
        "bounded queue put/get, one producer and one consumer: put/get (2 threads)",
        Unit::Rate,
        &q_sync,
        &[],
    );
    r.row(
        "async",
        "threads of the process while 10,000 apply_async results are awaited",
        Unit::Factor,
        &Samples(vec![during]),
        &[("threads before", Some(before))],
    );
    Ok(())
}
