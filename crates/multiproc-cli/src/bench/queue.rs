//! The `queue` group: a `Queue` between two processes next to a raw pipe with one write and
//! one read per item, the PEP's seed workload, and the cost of an uncontended `Lock`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc::{Event, Fd, Func, Lock, Queue};

use super::stats::{Samples, human, ratio};

/// Child side: waits for `go`, then puts `n` 8-byte items (in batches of `batch` if > 1).
#[multiproc::func]
pub(crate) fn queue_source(q: Queue<u64>, go: Event, n: u64, batch: u64) {
    go.wait();
    if batch > 1 {
        let mut i = 0;
        while i < n {
            let end = (i + batch).min(n);
            q.put_many(&(i..end).collect::<Vec<_>>()).expect("put_many");
            i = end;
        }
    } else {
        for i in 0..n {
            q.put(&i).expect("put");
        }
    }
}

/// Child side: writes `n` 8-byte items to a pipe, one `write` each.
#[multiproc::func]
pub(crate) fn pipe_source(fd: Fd, go: Event, n: u64) {
    let mut w = std::fs::File::from(fd.into_owned());
    go.wait();
    for i in 0..n {
        w.write_all(&i.to_le_bytes()).expect("write");
    }
}

/// Child side: the PEP's seed workload, `n` items of ten 100-byte strings.
#[multiproc::func]
pub(crate) fn seed_writer(q: Queue<Vec<String>>, n: u32) {
    for i in 0..n {
        let s = i
            .to_string()
            .repeat(100)
            .chars()
            .take(100)
            .collect::<String>();
        q.put(&vec![s; 10]).expect("put");
    }
}

fn queue_rate(n: u64, batch: u64) -> multiproc::Result<f64> {
    let q = Queue::<u64>::new()?;
    let go = Event::new()?;
    let p = queue_source.spawn((q.clone(), go.clone(), n, batch))?;
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    go.set();
    let mut got = 0u64;
    while got < n {
        got += if batch > 1 {
            q.get_many(batch as usize)?.len() as u64
        } else {
            q.get().map(|_| 1)?
        };
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    p.join()?;
    Ok(rate)
}

fn pipe_rate(n: u64) -> multiproc::Result<f64> {
    let (mut r, w) = std::io::pipe()?;
    let go = Event::new()?;
    let p = pipe_source.spawn((Fd::from(OwnedFd::from(w)), go.clone(), n))?;
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    go.set();
    let mut buf = [0u8; 8];
    for _ in 0..n {
        r.read_exact(&mut buf)?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    p.join()?;
    Ok(rate)
}

fn seed(n: u32) -> multiproc::Result<f64> {
    let q = Queue::<Vec<String>>::new()?;
    let t = Instant::now();
    let p = seed_writer.spawn((q.clone(), n))?;
    for _ in 0..n {
        std::hint::black_box(q.get()?);
    }
    p.join()?;
    Ok(t.elapsed().as_secs_f64())
}

fn lock_ns(n: u32) -> multiproc::Result<f64> {
    let lock = Lock::new()?;
    let t = Instant::now();
    for _ in 0..n {
        drop(std::hint::black_box(
            lock.acquire().map_err(multiproc::SyncError::from)?,
        ));
    }
    Ok(t.elapsed().as_secs_f64() * 1e9 / f64::from(n))
}

fn repeat(
    reps: usize,
    mut f: impl FnMut() -> multiproc::Result<f64>,
) -> multiproc::Result<Samples> {
    Ok(Samples((0..reps).map(|_| f()).collect::<Result<_, _>>()?))
}

/// Runs the group and prints it.
pub(crate) fn run(quick: bool) -> multiproc::Result<()> {
    let (reps, n) = if quick { (3, 100_000) } else { (7, 1_000_000) };
    println!("\n== queue: 1 producer -> 1 consumer process, 8-byte items, median of {reps} ==");
    let ours = repeat(reps, || queue_rate(n, 1))?;
    let batched = repeat(reps, || queue_rate(n, 256))?;
    let raw = repeat(reps, || pipe_rate(n))?;
    let seeds = repeat(reps, || seed(20_000))?;
    let lock = repeat(reps, || lock_ns(if quick { 1_000_000 } else { 10_000_000 }))?;
    let m = |s: &Samples| format!("{:.2} M/s", s.median() / 1e6);
    println!("{:<44} {:>12} {:>14}", "what", "median", "ratio");
    println!(
        "{:<44} {:>12} {:>13.2}x",
        "Queue put/get",
        m(&ours),
        ratio(ours.median(), raw.median())
    );
    println!(
        "{:<44} {:>12} {:>13.2}x",
        "Queue put_many/get_many (256)",
        m(&batched),
        ratio(batched.median(), raw.median())
    );
    println!(
        "{:<44} {:>12} {:>14}",
        "raw pipe, one write + one read per item",
        m(&raw),
        "1.00x (OS)"
    );
    println!(
        "{:<44} {:>12} {:>14}",
        "seed: 20,000 items of ten 100-byte strings",
        human(seeds.median()),
        "CPython 0.22 s"
    );
    println!(
        "{:<44} {:>9.1} ns {:>14}",
        "Lock acquire+release, uncontended",
        lock.median(),
        "target <= 50 ns"
    );
    Ok(())
}
