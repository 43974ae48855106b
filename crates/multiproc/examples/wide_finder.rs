//! Tim Bray's "Wide Finder" in processes: the top 10 articles of a web server's access log,
//! the log cut into line-aligned byte ranges that a [`Pool`](multiproc::Pool) parses in
//! parallel, the per-range counts merged at the end.
//!
//! ```text
//! cargo run --release --example wide_finder                    # a generated 1,000,000-line log
//! cargo run --release --example wide_finder -- --log access.log --workers 8
//! ```
//!
//! An article hit is a `GET /ongoing/When/200x/yyyy/mm/dd/Slug` request (no dot in the last
//! part). The serial count runs too, and the two must agree.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use multiproc::Pool;

/// Counts the article hits of the lines that start in `[start, end)` of the log at `path`.
#[multiproc::func]
fn count_range(path: String, start: u64, end: u64) -> HashMap<String, u64> {
    let mut file = File::open(&path).expect("open the log");
    let mut counts = HashMap::new();
    // A line belongs to the range where it starts: skip a partial first line.
    let mut pos = start;
    if start > 0 {
        file.seek(SeekFrom::Start(start - 1)).expect("seek");
        let mut reader = BufReader::new(&mut file);
        let mut skipped = Vec::new();
        pos = start - 1 + reader.read_until(b'\n', &mut skipped).expect("read") as u64;
    }
    file.seek(SeekFrom::Start(pos)).expect("seek");
    let mut reader = BufReader::with_capacity(1 << 20, file.take(u64::MAX));
    let mut line = Vec::new();
    while pos < end {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).expect("read");
        if n == 0 {
            break;
        }
        pos += n as u64;
        if let Some(article) = article_of(&line) {
            *counts.entry(article.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// The article a log line asks for, if it is an article hit.
fn article_of(line: &[u8]) -> Option<&str> {
    const PREFIX: &[u8] = b"\"GET /ongoing/When/";
    let at = line.windows(PREFIX.len()).position(|w| w == PREFIX)?;
    let rest = &line[at + 5..]; // from "/ongoing/..."
    let path = &rest[..rest.iter().position(|&b| b == b' ')?];
    // /ongoing/When/200x/2007/06/15/Slug
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    if parts.len() != 8 || parts[7].is_empty() || parts[7].contains(&b'.') {
        return None;
    }
    std::str::from_utf8(path).ok()
}

/// Writes a log of `lines` lines: mostly other requests, a skewed mix of article hits.
fn generate(path: &Path, lines: u64) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..lines {
        let r = next();
        let ip = format!("10.{}.{}.{}", r % 256, (r >> 8) % 256, (r >> 16) % 256);
        let request = match r % 10 {
            0..=3 => {
                // Zipf-ish: low article numbers far more popular.
                let n = (next() % 1000).pow(2) / 1000;
                format!(
                    "GET /ongoing/When/200x/2007/{:02}/{:02}/Article-{n} HTTP/1.1",
                    1 + n % 12,
                    1 + n % 28
                )
            }
            4 => "GET /ongoing/ongoing.atom HTTP/1.1".to_string(),
            5 => format!(
                "GET /ongoing/When/200x/2007/05/01/pic-{}.png HTTP/1.1",
                r % 50
            ),
            6 => "GET /favicon.ico HTTP/1.1".to_string(),
            _ => format!("GET /ongoing/What/misc/{} HTTP/1.1", r % 300),
        };
        writeln!(
            out,
            "{ip} - - [25/Nov/2026:{:02}:{:02}:{:02} +0000] \"{request}\" 200 {} \"-\" \"Mozilla/5.0\"",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            1000 + r % 9000
        )?;
    }
    out.flush()
}

fn top10(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut all: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    all.truncate(10);
    all
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[multiproc::main]
fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workers: usize = arg(&args, "--workers")
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(multiproc::cpu_count);
    let (path, generated) = match arg(&args, "--log") {
        Some(p) => (PathBuf::from(p), false),
        None => {
            let lines: u64 = arg(&args, "--lines")
                .and_then(|l| l.parse().ok())
                .unwrap_or(1_000_000);
            let p = std::env::temp_dir().join(format!("wide-finder-{}.log", std::process::id()));
            generate(&p, lines)?;
            (p, true)
        }
    };
    let len = std::fs::metadata(&path)?.len();
    let name = path.to_string_lossy().into_owned();
    println!("log {name}: {:.1} MB, {workers} workers", len as f64 / 1e6);

    let t = Instant::now();
    let serial = count_range(name.clone(), 0, len);
    let serial_time = t.elapsed();

    let t = Instant::now();
    let pool = Pool::new(workers)?;
    let pieces = (workers * 4) as u64;
    let step = len.div_ceil(pieces).max(1);
    let ranges = (0..pieces).map(|k| (name.clone(), k * step, ((k + 1) * step).min(len)));
    let mut merged: HashMap<String, u64> = HashMap::new();
    for counts in pool.map_chunked(&count_range, ranges, 1)? {
        for (k, v) in counts {
            *merged.entry(k).or_insert(0) += v;
        }
    }
    let parallel_time = t.elapsed();
    if generated {
        std::fs::remove_file(&path)?;
    }

    let (top, check) = (top10(&merged), top10(&serial));
    assert_eq!(
        top, check,
        "the parallel count disagrees with the serial one"
    );
    for (article, hits) in &top {
        println!("{hits:>8}  {article}");
    }
    println!(
        "serial {:.3} s, {workers} processes {:.3} s (pool start-up included): {:.2}x; results agree",
        serial_time.as_secs_f64(),
        parallel_time.as_secs_f64(),
        serial_time.as_secs_f64() / parallel_time.as_secs_f64()
    );
    Ok(())
}
