//! The PEP 371 benchmark tables: the same function run N times serially, in N threads and
//! in N processes, for N = 1, 2, 4, 8, best of several runs (as the PEP's
//! `run_benchmarks.py` did with `timeit`).

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;

use multiproc::Func;

use super::report::{Report, Size, Unit};
use super::stats::{Samples, human};

/// Does nothing (returns 0, so every group has the same result type): the cost of
/// starting a worker.
#[multiproc::func]
pub(crate) fn empty_func() -> u64 {
    0
}

/// The PEP's fibonacci test: the first `n` Fibonacci numbers (mod 2^64), `rounds` times.
#[multiproc::func]
pub(crate) fn fibonacci(n: u64, rounds: u32) -> u64 {
    let mut acc = 0u64;
    for _ in 0..rounds {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            let next = a.wrapping_add(b);
            a = std::hint::black_box(b);
            b = next;
        }
        acc = acc.wrapping_add(a);
    }
    acc
}

/// The PEP's crunch_primes: the sum of all primes below `limit`, by trial division.
#[multiproc::func]
pub(crate) fn crunch_primes(limit: u64) -> u64 {
    (2..limit).filter(|&n| is_prime(n)).sum()
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The PEP's file_io: random seeks in a text file, each line read written to /dev/null.
#[multiproc::func]
pub(crate) fn file_io(path: String, seeks: u32) -> u64 {
    let file = std::fs::File::open(&path).expect("bench text file");
    let len = file.metadata().map(|m| m.len()).unwrap_or(1).max(1);
    let mut reader = BufReader::new(file);
    let mut sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0u64;
    let mut line = String::new();
    for _ in 0..seeks {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        reader.seek(SeekFrom::Start(state % len)).expect("seek");
        line.clear();
        let _ = reader.read_line(&mut line);
        line.clear();
        let _ = reader.read_line(&mut line);
        sink.write_all(line.as_bytes()).expect("write /dev/null");
        written += line.len() as u64;
    }
    written
}

/// The PEP's url_get: `n` HTTP GETs of `http://{address}/`, one connection each; the
/// number of bytes received.
#[multiproc::func]
pub(crate) fn fetch_urls(address: String, n: u32) -> u64 {
    use std::io::Read;
    let mut total = 0u64;
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(&address).expect("connect to the bench server");
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut page = Vec::new();
        s.read_to_end(&mut page).expect("read the page");
        assert!(
            page.starts_with(b"HTTP/1.1 200"),
            "bad answer from the bench server"
        );
        total += page.len() as u64;
    }
    total
}

/// A small HTTP server on a loopback port for the URL group: answers every request with a
/// 2 KiB page and closes. Stops when dropped.
pub(crate) struct PageServer {
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    pub(crate) fn start() -> std::io::Result<PageServer> {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let body = "<html><body>".to_string() + &"lorem ipsum ".repeat(170) + "</body></html>";
            let page = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let page = page.clone();
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(page.as_bytes());
                });
            }
        });
        Ok(PageServer {
            address,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.address); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A generated lorem-ipsum file for the file I/O group (the PEP used lorem.txt).
fn lorem_file() -> std::io::Result<PathBuf> {
    let path =
        std::env::temp_dir().join(format!("multiproc-bench-lorem-{}.txt", std::process::id()));
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
    ];
    let mut text = String::new();
    for i in 0..20_000usize {
        for j in 0..(8 + i % 7) {
            text.push_str(words[(i * 7 + j * 3) % words.len()]);
            text.push(' ');
        }
        text.push('\n');
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One workload: how to run it once in this thread, and how to start it in a process.
struct Workload {
    title: String,
    serial: Box<dyn Fn() + Sync>,
    process: Box<dyn Fn() -> multiproc::Result<multiproc::Process<u64>>>,
}

fn workload(
    group: &str,
    size: Size,
    lorem: &Option<PathBuf>,
    web: &Option<PageServer>,
) -> Workload {
    match group {
        "url" => {
            let address = web.as_ref().expect("page server").address.clone();
            let n = size.pick(10, 100, 100);
            let a2 = address.clone();
            Workload {
                title: format!(
                    "URL fetch ({n} GETs of a 2 KiB page from a loopback server per worker)"
                ),
                serial: Box::new(move || {
                    std::hint::black_box(fetch_urls(address.clone(), n));
                }),
                process: Box::new(move || Ok(fetch_urls.spawn((a2.clone(), n))?)),
            }
        }
        "empty" => Workload {
            title: "empty function (worker start-up cost)".into(),
            serial: Box::new(|| {
                std::hint::black_box(empty_func());
            }),
            process: Box::new(|| Ok(empty_func.spawn(())?)),
        },
        "fib" => {
            let (n, rounds) = (50_000, size.pick(10, 100, 400));
            Workload {
                title: format!("fibonacci ({n} numbers x {rounds} rounds per worker)"),
                serial: Box::new(move || {
                    std::hint::black_box(fibonacci(n, rounds));
                }),
                process: Box::new(move || Ok(fibonacci.spawn((n, rounds))?)),
            }
        }
        "primes" => {
            let limit = size.pick(10_000, 100_000, 400_000);
            Workload {
                title: format!("crunch primes (sum of primes below {limit} per worker)"),
                serial: Box::new(move || {
                    std::hint::black_box(crunch_primes(limit));
                }),
                process: Box::new(move || Ok(crunch_primes.spawn(limit)?)),
            }
        }
        _ => {
            let path = lorem
                .as_ref()
                .expect("lorem file")
                .to_string_lossy()
                .into_owned();
            let seeks = size.pick(500, 5_000, 20_000);
            let p2 = path.clone();
            Workload {
                title: format!(
                    "file I/O ({seeks} random seeks + line writes to /dev/null per worker)"
                ),
                serial: Box::new(move || {
                    std::hint::black_box(file_io(path.clone(), seeks));
                }),
                process: Box::new(move || Ok(file_io.spawn((p2.clone(), seeks))?)),
            }
        }
    }
}

/// Runs one PEP group and prints its table (best of N, as the PEP).
pub(crate) fn run_group(group: &str, r: &mut Report) -> multiproc::Result<()> {
    let lorem = if group == "fileio" {
        Some(lorem_file()?)
    } else {
        None
    };
    let web = if group == "url" {
        Some(PageServer::start()?)
    } else {
        None
    };
    let w = workload(group, r.size, &lorem, &web);
    let reps = r.size.pick(1, 3, 10);
    let counts: &[usize] = if r.size == Size::Tiny {
        &[1, 2]
    } else {
        &[1, 2, 4, 8]
    };
    println!("\n== {} ==  best of {reps}", w.title);
    println!(
        "{:>8} {:>14} {:>14} {:>14}",
        "workers", "serial", "threads", "processes"
    );
    for &n in counts {
        let serial = Samples::measure(reps, 1, || {
            for _ in 0..n {
                (w.serial)();
            }
        });
        let threads = Samples::measure(reps, 1, || {
            std::thread::scope(|s| {
                for _ in 0..n {
                    s.spawn(|| (w.serial)());
                }
            });
        });
        let mut failure = None;
        let processes = Samples::measure(reps, 1, || {
            let started: Vec<_> = (0..n).map(|_| (w.process)()).collect();
            for p in started {
                if let Err(e) = p.and_then(|p| Ok(p.join()?)) {
                    failure = Some(e);
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        println!(
            "{n:>8} {:>14} {:>14} {:>14}",
            human(serial.min()),
            human(threads.min()),
            human(processes.min())
        );
        for (how, s) in [
            ("serial", &serial),
            ("threads", &threads),
            ("processes", &processes),
        ] {
            r.add_value(
                group,
                &format!("{how}, {n} workers"),
                Unit::Secs,
                s,
                s.min(),
            );
        }
    }
    if let Some(p) = lorem {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn workloads_compute_known_values() {
        assert_eq!(crunch_primes(100), 1060);
        assert_eq!(crunch_primes(100_000), 454_396_537);
        assert_eq!(fibonacci(10, 1), 55);
        assert_eq!(fibonacci(10, 2), 110);
        let path = lorem_file().unwrap();
        assert!(file_io(path.to_string_lossy().into_owned(), 100) > 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_page_server_serves_pages() {
        let server = PageServer::start().unwrap();
        assert!(fetch_urls(server.address.clone(), 3) > 3 * 2000);
    }
}
