//! The `queue` group: a `Queue` between two processes next to a raw pipe with one write and
//! one read per item, the PEP's seed workload, and the cost of an uncontended `Lock`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc::{Event, Fd, Func, Lock, Queue};

use super::report::{Report, Unit};
use super::stats::{Samples, repeat};

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
        // CPython's `str(i) * 100`, cut to 100 bytes (digits are ASCII).
        let mut s = i.to_string().repeat(100);
        s.truncate(100);
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

/// Runs the group and prints it.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n) = r.size.pick((2, 5_000), (3, 100_000), (7, 1_000_000));
    r.group(&format!(
        "queue: 1 producer -> 1 consumer process, 8-byte items, median of {reps}"
    ));
    // In turns, so that the queue and the pipe see the same moments of the machine.
    let (mut ours, mut batched, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        ours.push(queue_rate(n, 1)?);
        batched.push(queue_rate(n, 256)?);
        raw.push(pipe_rate(n)?);
    }
    let (ours, batched, raw) = (Samples(ours), Samples(batched), Samples(raw));
    let seeds = repeat(reps, || seed(r.size.pick(2_000, 20_000, 20_000)))?;
    let lock = repeat(reps, || {
        lock_ns(r.size.pick(10_000, 1_000_000, 10_000_000)).map(|ns| ns * 1e-9)
    })?;
    let handoffs = r.size.pick(200, 2_000, 20_000);
    let handoff = repeat(reps, || lock_handoff(handoffs))?;
    let futex = repeat(reps, || futex_handoff(handoffs))?;
    let py_q = r.cpython("mp_queue.py", "py.queue.1p1c.fork", 1.0);
    let py_seed = r.cpython("mp_queue.py", "py.queue.seed20k.fork", 1.0);
    let py_lock = r
        .cpython("mp_manager.py", "py.value.lock.inc1p", 1.0)
        .map(|rate| 1.0 / rate);
    let pipe = raw.median();
    r.row(
        "queue",
        "Queue put/get",
        Unit::Rate,
        &ours,
        &[("raw pipe", Some(pipe)), ("CPython", py_q)],
    );
    r.row(
        "queue",
        "Queue put_many/get_many (256)",
        Unit::Rate,
        &batched,
        &[("raw pipe", Some(pipe))],
    );
    r.row(
        "queue",
        "raw pipe, one write + one read per item",
        Unit::Rate,
        &raw,
        &[],
    );
    r.row(
        "queue",
        "seed: 20,000 items of ten 100-byte strings",
        Unit::Secs,
        &seeds,
        &[("CPython", py_seed)],
    );
    r.row(
        "queue",
        "Lock acquire+release, uncontended",
        Unit::Secs,
        &lock,
        &[("CPython (with v.get_lock(): v.value += 1)", py_lock)],
    );
    let f = futex.median();
    r.row(
        "queue",
        "Lock hand-off between processes",
        Unit::Secs,
        &handoff,
        &[("raw futex", Some(f))],
    );
    r.row(
        "queue",
        "raw futex ping-pong, per hand-off",
        Unit::Secs,
        &futex,
        &[],
    );
    Ok(())
}

/// Child side of the lock hand-off: takes `ping` (released by the parent), releases `pong`.
#[multiproc::func]
pub(crate) fn lock_baton(ping: Lock, pong: Lock, n: u32) {
    for _ in 0..n {
        std::mem::forget(
            ping.acquire()
                .map_err(multiproc::SyncError::from)
                .expect("ping"),
        );
        pong.release().expect("pong");
    }
}

/// Seconds per hand-off (half a round trip) of two `Lock`s used as batons between processes.
fn lock_handoff(n: u32) -> multiproc::Result<f64> {
    let (ping, pong) = (Lock::new()?, Lock::new()?);
    std::mem::forget(ping.acquire().map_err(multiproc::SyncError::from)?);
    std::mem::forget(pong.acquire().map_err(multiproc::SyncError::from)?);
    let p = lock_baton.spawn((ping.clone(), pong.clone(), n))?;
    let t = Instant::now();
    for _ in 0..n {
        ping.release()?;
        std::mem::forget(pong.acquire().map_err(multiproc::SyncError::from)?);
    }
    let per = t.elapsed().as_secs_f64() / (2.0 * f64::from(n));
    p.join()?;
    Ok(per)
}

/// Seconds per hand-off of a raw futex ping-pong between a forked child and this process:
/// a word in shared memory, FUTEX_WAIT at once, FUTEX_WAKE every time.
fn futex_handoff(n: u32) -> multiproc::Result<f64> {
    use rustix::thread::futex;
    use std::sync::atomic::{AtomicU32, Ordering};
    let shm = multiproc::SharedMemory::new(4096).map_err(multiproc::Error::from)?;
    // The word lives in memory both processes map; reached through a raw mapping of our own.
    let word: &AtomicU32 = raw_word(&shm)?;
    word.store(0, Ordering::SeqCst);
    let wait_for = |w: &AtomicU32, v: u32| {
        while w.load(Ordering::Acquire) != v {
            let cur = w.load(Ordering::Acquire);
            if cur != v {
                let _ = futex::wait(w, futex::Flags::empty(), cur, None);
            }
        }
    };
    let post = |w: &AtomicU32, v: u32| {
        w.store(v, Ordering::Release);
        let _ = futex::wake(w, futex::Flags::empty(), 1);
    };
    let child = multiproc::Process::fork(move || {
        for _ in 0..n {
            wait_for(word, 1);
            post(word, 2);
        }
    })?;
    let t = Instant::now();
    for _ in 0..n {
        post(word, 1);
        wait_for(word, 2);
    }
    let per = t.elapsed().as_secs_f64() / (2.0 * f64::from(n));
    child.join()?;
    Ok(per)
}

/// A `'static` atomic view of the first word of `shm`, through a second shared mapping of
/// its memfd (kept for the life of the process: a benchmark helper).
fn raw_word(
    shm: &multiproc::SharedMemory,
) -> multiproc::Result<&'static std::sync::atomic::AtomicU32> {
    use std::num::NonZeroUsize;
    use std::os::fd::AsFd;
    let fd = shm.as_fd();
    // SAFETY: a fresh shared mapping of a memfd we hold, never unmapped (leaked on purpose for
    // the benchmark's lifetime); the word is only accessed atomically.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            NonZeroUsize::new(4096).expect("non-zero"),
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .map_err(std::io::Error::from)?;
    // SAFETY: the mapping is page-aligned, 4096 bytes, lives for ever, and is shared memory
    // accessed only through atomics.
    Ok(unsafe { std::sync::atomic::AtomicU32::from_ptr(ptr.as_ptr().cast()) })
}
