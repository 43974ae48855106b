//! `multiproc bench` itself: every group runs (with tiny sizes) and the JSON and the chart
//! it writes are what a reader and a script expect; without python3 the CPython columns
//! become a note.
#![cfg(target_os = "linux")]

use std::process::Command;

#[path = "../../multiproc/tests/common/mod.rs"]
mod common;

const BIN: &str = env!("CARGO_BIN_EXE_multiproc");

const GROUPS: [&str; 12] = [
    "empty", "fib", "primes", "fileio", "url", "spawn", "pipe", "queue", "pool", "manager",
    "scaling", "cluster",
];

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "multiproc-bench-test-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn every_group_runs_and_emits_json_and_a_chart() {
    let (json, svg) = (temp("out.json"), temp("out.svg"));
    let out = Command::new(BIN)
        .args(["bench", "--tiny", "--no-python", "--json"])
        .arg(&json)
        .arg("--chart")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = common::stdout_of(out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["size"], "tiny");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(report["machine"]["kernel"].is_string());
    let figures = report["figures"].as_array().unwrap();
    for g in GROUPS {
        let n = figures.iter().filter(|f| f["group"] == g).count();
        let skipped = report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap_or("").contains(g));
        assert!(n > 0 || skipped, "group {g} recorded nothing");
        if g == "cluster" && std::env::var("CI").as_deref() == Ok("true") {
            assert!(n > 0, "the cluster group may not skip under CI=true");
        }
    }
    for f in figures {
        for key in ["group", "name", "unit"] {
            assert!(f[key].is_string(), "{f}");
        }
        for key in ["value", "min", "median", "max"] {
            let v = f[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{key} of {f}");
        }
        assert!(f["min"].as_f64() <= f["max"].as_f64(), "{f}");
        for v in f["versus"].as_array().unwrap() {
            let (value, reference, ratio) = (
                f["value"].as_f64().unwrap(),
                v["reference"].as_f64().unwrap(),
                v["ratio"].as_f64().unwrap(),
            );
            assert!(
                (value / reference - ratio).abs() < 1e-9 * ratio.abs().max(1.0),
                "{f}"
            );
        }
    }
    // The tables were printed, PEP style and with comparisons.
    assert!(stdout.contains("workers         serial        threads      processes"));
    assert!(stdout.contains("x raw fork"));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("PEP 371 table: primes"));
    std::fs::remove_file(json).unwrap();
    std::fs::remove_file(svg).unwrap();
}

#[test]
fn without_python3_the_cpython_columns_are_a_note() {
    let out = Command::new(BIN)
        .args(["bench", "--tiny", "--group", "spawn"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = common::stdout_of(out);
    assert!(
        stdout.contains("note: no python3 on this machine"),
        "{stdout}"
    );
    assert!(stdout.contains("multiproc spawn"), "{stdout}");
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["bench", "--group", "nope"][..],
        &["bench", "--json"],
        &["bench", "--fast"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
