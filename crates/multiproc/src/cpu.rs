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

/// The number of CPUs this process and its peers can run on at the same time: the machine's
/// online CPUs, lowered to the cgroup's CPU set and CPU quota. Unlike [`cpu_count`] it leaves
/// this process's affinity mask out: a process pinned to one CPU may wait for a peer that
/// runs on another, and whether that peer can answer while this one waits is decided by the
/// CPUs of them both (the waiting policy of `crate::spin` asks this).
pub(crate) fn shared_cpu_count() -> usize {
    let online = crate::sys::online_cpu_count()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
    let root = Path::new("/sys/fs/cgroup");
    let set = cgroup.as_deref().and_then(|t| cgroup_cpuset(t, root));
    let quota = cgroup.as_deref().and_then(|t| cgroup_quota(t, root));
    [Some(online), set, quota]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(1)
        .max(1)
}

/// The number of CPUs in the cgroup's CPU set (v2 `cpuset.cpus.effective`, v1
/// `cpuset.effective_cpus`), when the cpuset controller is there.
fn cgroup_cpuset(proc_self_cgroup: &str, root: &Path) -> Option<usize> {
    for (controllers, path) in cgroups(proc_self_cgroup) {
        let file = if controllers.is_empty() {
            root.join(path.trim_start_matches('/'))
                .join("cpuset.cpus.effective")
        } else if controllers.split(',').any(|c| c == "cpuset") {
            root.join("cpuset")
                .join(path.trim_start_matches('/'))
                .join("cpuset.effective_cpus")
        } else {
            continue;
        };
        if let Some(n) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| parse_cpu_list(&t))
        {
            return Some(n);
        }
    }
    None
}

/// The lines of `/proc/self/cgroup` as (controllers, path): `id:controllers:path`, the
/// controllers empty for cgroup v2.
fn cgroups(proc_self_cgroup: &str) -> impl Iterator<Item = (&str, &str)> {
    proc_self_cgroup.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        parts.next()?;
        Some((parts.next()?, parts.next()?))
    })
}

/// How many CPUs a kernel CPU list names (`"0-3,6,8-9"` → 7); `None` when empty or garbled.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// The tightest CPU quota over the cgroup and its ancestors, in whole CPUs rounded up.
fn cgroup_quota(proc_self_cgroup: &str, root: &Path) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut consider = |q: Option<usize>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
    };
    for (controllers, path) in cgroups(proc_self_cgroup) {
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
    fn cpu_list_parsing() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("\n"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x-2"), None);
    }

    #[test]
    fn cpuset_from_fake_v1_and_v2_trees() {
        let root = std::env::temp_dir().join(format!("multiproc-cpuset-{}", std::process::id()));
        std::fs::create_dir_all(root.join("cpuset/job")).unwrap();
        std::fs::write(root.join("cpuset/job/cpuset.effective_cpus"), "2-3\n").unwrap();
        assert_eq!(cgroup_cpuset("3:cpuset:/job\n", &root), Some(2));
        std::fs::create_dir_all(root.join("svc")).unwrap();
        std::fs::write(root.join("svc/cpuset.cpus.effective"), "0\n").unwrap();
        assert_eq!(cgroup_cpuset("0::/svc\n", &root), Some(1));
        assert_eq!(cgroup_cpuset("0::/other\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn shared_cpus_ignore_this_process_affinity() {
        // The count a pinned process spins by is that of the machine (and cgroup), not of
        // its mask: pin this test's thread (affinity is per thread) to one CPU and ask.
        use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        let before = shared_cpu_count();
        let mask = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let first = (0..CpuSet::count())
            .find(|&i| mask.is_set(i).unwrap_or(false))
            .unwrap();
        let mut one = CpuSet::new();
        one.set(first).unwrap();
        sched_setaffinity(Pid::from_raw(0), &one).unwrap();
        let (pinned_shared, pinned_own) = (shared_cpu_count(), cpu_count());
        sched_setaffinity(Pid::from_raw(0), &mask).unwrap();
        assert_eq!(pinned_own, 1);
        assert_eq!(pinned_shared, before);
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
