//! The `wide_finder` example: a generated log parsed by a Pool, top 10, checked against a
//! serial count.
#![cfg(target_os = "linux")]

mod common;

use std::process::Command;

#[test]
fn wide_finder_finds_the_top_ten_and_agrees_with_the_serial_count() {
    let out = Command::new(common::example("wide_finder"))
        .args(["--lines", "30000", "--workers", "3"])
        .output()
        .unwrap();
    let text = common::stdout_of(out);
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/ongoing/When/200x/"))
        .collect();
    assert_eq!(hits.len(), 10, "{text}");
    assert!(
        hits[0].ends_with("Article-0"),
        "the most popular article first: {text}"
    );
    assert!(text.contains("results agree"), "{text}");
}
