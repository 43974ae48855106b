//! The `queue` group: a `Queue` between two processes next to a raw pipe with one write and
//! one read per item, the PEP's seed workload, and a `Lock` handed between processes next to
//! a raw futex ping-pong, in each CPU placement; and the cost of an uncontended `Lock`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc::{Event, Fd, Lock, Process, Queue};

use super::place::{Cpu, Ends, Placement};
use super::raw::Wait;
use super::report::{Report, Unit};
use super::stats::{Samples, per_call, repeat};

/// Child side: pins itself to `cpu`, waits for `go`, then puts `n` 8-byte items (in batches
/// of `batch` if > 1).
#[multiproc::func]
pub(crate) fn queue_source(cpu: Cpu, q: Queue<u64>, go: Event, n: u64, batch: u64) {
    cpu.pin().expect("pin");
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

/// Child side: pins itself to `cpu`, waits for `go`, then writes `n` 8-byte items to a pipe,
/// one `write` each.
#[multiproc::func]
pub(crate) fn pipe_source(cpu: Cpu, fd: Fd, go: Event, n: u64) {
    cpu.pin().expect("pin");
    let mut w = std::fs::File::from(fd.into_owned());
    go.wait();
    for i in 0..n {
        w.write_all(&i.to_le_bytes()).expect("write");
    }
}

/// Child side: pins itself to `cpu`, then the PEP's seed workload, `n` items of ten 100-byte
/// strings.
#[multiproc::func]
pub(crate) fn seed_writer(cpu: Cpu, q: Queue<Vec<String>>, n: u32) {
    cpu.pin().expect("pin");
    for i in 0..n {
        // CPython's `str(i) * 100`, cut to 100 bytes (digits are ASCII).
        let mut s = i.to_string().repeat(100);
        s.truncate(100);
        q.put(&vec![s; 10]).expect("put");
    }
}

/// Joins `p`, or kills it first when the measurement stopped `early` (its budget ran out
/// and the child still waits for what will not come).
fn finish(p: Process<()>, early: bool) -> multiproc::Result<()> {
    if early {
        p.kill()?;
        // Killed on purpose: how it ended is no news.
        let _ = p.join();
        return Ok(());
    }
    Ok(p.join()?)
}

/// Items per second from a producer on `ends.there` through a `Queue` (in batches of `batch`
/// if > 1): `n` items, fewer if `budget` runs out first.
fn queue_rate(ends: &Ends, n: u64, batch: u64, budget: Duration) -> multiproc::Result<f64> {
    let q = Queue::<u64>::new()?;
    let go = Event::new()?;
    let p = super::helper(&queue_source, (ends.there, q.clone(), go.clone(), n, batch))?;
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    go.set();
    let (mut got, mut look) = (0u64, 256);
    while got < n {
        got += if batch > 1 {
            q.get_many(batch as usize)?.len() as u64
        } else {
            q.get().map(|_| 1)?
        };
        // A look at the clock every 256 items: reading it costs a fair part of a get.
        if got >= look {
            look = got + 256;
            if t.elapsed() > budget {
                break;
            }
        }
    }
    let rate = got as f64 / t.elapsed().as_secs_f64();
    finish(p, got < n)?;
    Ok(rate)
}

/// Items per second from a writer on `ends.there` through a raw pipe, one write and one read
/// per item.
fn pipe_rate(ends: &Ends, n: u64) -> multiproc::Result<f64> {
    let (mut r, w) = std::io::pipe()?;
    let go = Event::new()?;
    let p = super::helper(
        &pipe_source,
        (ends.there, Fd::from(OwnedFd::from(w)), go.clone(), n),
    )?;
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

fn seed(ends: &Ends, n: u32) -> multiproc::Result<f64> {
    let q = Queue::<Vec<String>>::new()?;
    let t = Instant::now();
    let p = super::helper(&seed_writer, (ends.there, q.clone(), n))?;
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

/// Runs the group: in each placement, the queue next to a raw pipe and lock hand-offs next to
/// a raw futex ping-pong (and a raw spin on the same word), CPython when unpinned.
pub(crate) fn run(r: &mut Report) -> multiproc::Result<()> {
    let (reps, n) = r.size.pick((2, 5_000), (3, 50_000), (7, 1_000_000));
    let budget = r.size.budget();
    r.group(&format!(
        "queue: 1 producer -> 1 consumer process, 8-byte items, median of {reps}"
    ));
    let seed_items = r.size.pick(2_000, 20_000, 20_000);
    let handoffs = r.size.pick(200, 2_000, 20_000);
    let py_q = r.cpython("mp_queue.py", "py.queue.1p1c.fork", 1.0);
    let py_seed = r.cpython("mp_queue.py", "py.queue.seed20k.fork", 1.0);
    let py_lock = r
        .cpython("mp_manager.py", "py.value.lock.inc1p", 1.0)
        .map(|rate| 1.0 / rate);
    // One process: no placement to choose.
    let lock = repeat(reps, || {
        lock_ns(r.size.pick(10_000, 1_000_000, 10_000_000)).map(|ns| ns * 1e-9)
    })?;
    for ends in r.placements() {
        let pinned = ends.enter()?;
        // In turns, so that the queue and its references see the same moments of the machine.
        let [
            mut ours,
            mut batched,
            mut raw,
            mut seeds,
            mut handoff,
            mut futex,
            mut spin,
        ]: [Vec<f64>; 7] = Default::default();
        for _ in 0..reps {
            ours.push(queue_rate(&ends, n, 1, budget)?);
            batched.push(queue_rate(&ends, n, 256, budget)?);
            raw.push(pipe_rate(&ends, n)?);
            seeds.push(seed(&ends, seed_items)?);
            handoff.push(lock_handoff(&ends, handoffs, budget)?);
            futex.push(futex_handoff(&ends, Wait::Block, handoffs, budget)?);
            spin.push(futex_handoff(&ends, Wait::Spin, handoffs, budget)?);
        }
        drop(pinned);
        let [ours, batched, raw, seeds, handoff, futex, spin] =
            [ours, batched, raw, seeds, handoff, futex, spin].map(Samples);
        r.section(&ends);
        let pipe = raw.median();
        r.row(
            "queue",
            "Queue put/get",
            Unit::Rate,
            &ours,
            &[("raw pipe", Some(pipe)), ("CPython", ends.unpinned(py_q))],
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
            &[("CPython", ends.unpinned(py_seed))],
        );
        if ends.placement == Placement::Unpinned {
            r.row(
                "queue",
                "Lock acquire+release, uncontended",
                Unit::Secs,
                &lock,
                &[("CPython (with v.get_lock(): v.value += 1)", py_lock)],
            );
        }
        r.row(
            "queue",
            "Lock hand-off between processes",
            Unit::Secs,
            &handoff,
            &[
                ("raw spinning", Some(spin.median())),
                ("raw futex", Some(futex.median())),
            ],
        );
        r.row(
            "queue",
            "raw spin on a shared word, per hand-off",
            Unit::Secs,
            &spin,
            &[],
        );
        r.row(
            "queue",
            "raw futex ping-pong, per hand-off",
            Unit::Secs,
            &futex,
            &[],
        );
    }
    Ok(())
}

/// Child side of the lock hand-off: pins itself to `cpu`, then takes `ping` (released by the
/// parent) and releases `pong`, until killed.
#[multiproc::func]
pub(crate) fn lock_baton(cpu: Cpu, ping: Lock, pong: Lock) {
    cpu.pin().expect("pin");
    loop {
        std::mem::forget(
            ping.acquire()
                .map_err(multiproc::SyncError::from)
                .expect("ping"),
        );
        pong.release().expect("pong");
    }
}

/// Seconds per hand-off (half a round trip) of two `Lock`s used as batons between this
/// process and one on `ends.there`: `n` round trips (more or fewer: see [`per_call`]).
fn lock_handoff(ends: &Ends, n: u32, budget: Duration) -> multiproc::Result<f64> {
    let (ping, pong) = (Lock::new()?, Lock::new()?);
    std::mem::forget(ping.acquire().map_err(multiproc::SyncError::from)?);
    std::mem::forget(pong.acquire().map_err(multiproc::SyncError::from)?);
    let p = super::helper(&lock_baton, (ends.there, ping.clone(), pong.clone()))?;
    let mut once = |_| -> multiproc::Result<()> {
        ping.release()?;
        std::mem::forget(pong.acquire().map_err(multiproc::SyncError::from)?);
        Ok(())
    };
    // Warm: the child started, pinned and waiting before the clock starts.
    per_call(100, budget / 10, &mut once)?;
    let per = per_call(n, budget, &mut once)?;
    // It waits for the next hand-off, which will not come.
    finish(p, true)?;
    Ok(per / 2.0)
}

/// Seconds per hand-off of a raw ping-pong on a word in shared memory between this process
/// and a forked child on `ends.there`: each side waits with FUTEX_WAIT and wakes the other
/// with FUTEX_WAKE every time (`Wait::Block`), or spins on the word (`Wait::Spin`). `n`
/// round trips (more or fewer: see [`per_call`]).
fn futex_handoff(ends: &Ends, wait: Wait, n: u32, budget: Duration) -> multiproc::Result<f64> {
    use rustix::thread::futex;
    use std::sync::atomic::{AtomicU32, Ordering};
    let shm = multiproc::SharedMemory::new(4096).map_err(multiproc::Error::from)?;
    // The word lives in memory both processes map; reached through a raw mapping of our own.
    let word: &AtomicU32 = raw_word(&shm)?;
    word.store(0, Ordering::SeqCst);
    let wait_for = move |w: &AtomicU32, v: u32| loop {
        let cur = w.load(Ordering::Acquire);
        if cur == v {
            return;
        }
        match wait {
            Wait::Block => {
                let _ = futex::wait(w, futex::Flags::empty(), cur, None);
            }
            Wait::Spin => std::hint::spin_loop(),
        }
    };
    let post = move |w: &AtomicU32, v: u32| {
        w.store(v, Ordering::Release);
        if wait == Wait::Block {
            let _ = futex::wake(w, futex::Flags::empty(), 1);
        }
    };
    let there = ends.there;
    let child = multiproc::Process::builder().daemon(true).fork(move || {
        there.pin().expect("pin");
        loop {
            wait_for(word, 1);
            post(word, 2);
        }
    })?;
    let mut once = |_| -> multiproc::Result<()> {
        post(word, 1);
        wait_for(word, 2);
        Ok(())
    };
    per_call(100, budget / 10, &mut once)?;
    let per = per_call(n, budget, &mut once)?;
    // It waits for the next hand-off, which will not come.
    finish(child, true)?;
    Ok(per / 2.0)
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
