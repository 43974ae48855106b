//! `cpu_count()`: the CPUs this process can really use.

use std::path::{Path, PathBuf};

/// The number of CPUs this process can use: the CPUs in its affinity mask, lowered to the
/// cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) rounded up, and at least 1.
///
/// CPython's `os.cpu_count()` ignores both; `os.process_cpu_count()` (3.13) only the quota.
/// A pool sized by this number does not oversubscribe a container.
///
/// ```
/// assert!(multiproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    let affinity = crate::sys::affinity_cpu_count()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let quota = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_quota(&text, Path::new("/sys/fs/cgroup")));
    quota.map_or(affinity, |q| affinity.min(q)).max(1)
}

/// The tightest CPU quota over the cgroup and its ancestors, in whole CPUs rounded up.
fn cgroup_quota(proc_self_cgroup: &str, root: &Path) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut consider = |q: Option<usize>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
    };
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            // cgroup v2: one hierarchy at the root.
            for dir in ancestors(root, path) {
                consider(
                    std::fs::read_to_string(dir.join("cpu.max"))
                        .ok()
                        .and_then(|t| parse_cpu_max(&t)),
                );
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in [
                root.join("cpu"),
                root.join("cpu,cpuacct"),
                root.join("cpuacct,cpu"),
            ] {
                for dir in ancestors(&mount, path) {
                    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok();
                    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok();
                    if let (Some(q), Some(p)) = (quota, period) {
                        consider(parse_v1(&q, &p));
                    }
                }
            }
        }
    }
    best
}

/// `root/path`, then each parent up to `root`.
fn ancestors(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut p = root.join(path.trim_start_matches('/'));
    loop {
        dirs.push(p.clone());
        if p == root || !p.pop() || !p.starts_with(root) {
            break;
        }
    }
    dirs
}

/// cgroup v2 `cpu.max`: `"max 100000"` (no limit) or `"150000 100000"` (1.5 CPUs → 2).
fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota.div_ceil(period).max(1) as usize)
}

/// cgroup v1: quota `-1` is no limit.
fn parse_v1(quota: &str, period: &str) -> Option<usize> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some((quota as u64).div_ceil(period as u64).max(1) as usize)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("100000 100000"), Some(1));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("400000 100000"), Some(4));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn v1_parsing() {
        assert_eq!(parse_v1("-1\n", "100000\n"), None);
        assert_eq!(parse_v1("250000", "100000"), Some(3));
        assert_eq!(parse_v1("x", "100000"), None);
    }

    #[test]
    fn quota_from_a_fake_v2_tree_takes_the_tightest_ancestor() {
        let root =
            std::env::temp_dir().join(format!("multiproc-cgroup-test-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("a/cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_quota("0::/a/b\n", &root), Some(2));
        std::fs::write(leaf.join("cpu.max"), "100000 100000\n").unwrap();
        assert_eq!(cgroup_quota("0::/a/b\n", &root), Some(1));
        assert_eq!(cgroup_quota("0::/elsewhere\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn quota_from_a_fake_v1_tree() {
        let root = std::env::temp_dir().join(format!("multiproc-cgroup-v1-{}", std::process::id()));
        let dir = root.join("cpu,cpuacct/job");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "300000\n").unwrap();
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(
            cgroup_quota("4:memory:/job\n3:cpu,cpuacct:/job\n", &root),
            Some(3)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cpu_count_is_within_the_machine() {
        let n = cpu_count();
        assert!(n >= 1);
        assert!(
            n <= std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(n)
                .max(n)
        );
    }
}
