//! Cgroup v2 limits and accounting for one run, written against the kernel's interface files
//! (Documentation/admin-guide/cgroup-v2.rst in the kernel tree).
//!
//! The caller finds its own cgroup with [`locate`], verifies with [`check`] that the cgroup is
//! delegated to it, turns it into a parent for run cgroups with [`prepare`], and creates one
//! [`RunCgroup`] per run. This module never mounts anything and never writes outside the
//! directory it is given.
//!
//! Every function takes the cgroup directory as a path, so the tests point it at a plain
//! temporary directory. There, `mkdir` creates no interface files, a write creates the file it
//! writes, and `rmdir` of a run cgroup fails once a limit has been written.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::Access;
use rustix::process::{Pid, Signal};

/// The leaf cgroup that [`prepare`] moves the supervisor into, so its parent may enable
/// controllers for its children.
const SUPERVISOR_LEAF: &str = "palisade-supervisor";

/// The number of rounds of SIGKILL the fallback of [`RunCgroup::kill`] sends before giving up.
const KILL_ROUNDS: u32 = 100;

/// The pause between two rounds of SIGKILL, so killed processes can exit before the next read.
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(1);

/// The interval at which [`RunCgroup::remove`] polls `cgroup.events`.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The time a dropped [`RunCgroup`] waits for its processes to exit before `rmdir`.
const DROP_WAIT: Duration = Duration::from_secs(1);

/// The bounds the kernel puts on the `cpu.max` period, and the minimum quota, in microseconds
/// (`min_cfs_quota_period` and `max_cfs_quota_period` in kernel/sched/core.c). A write outside
/// them fails with EINVAL.
const CPU_PERIOD_MIN_US: u64 = 1_000;
const CPU_PERIOD_MAX_US: u64 = 1_000_000;
const CPU_QUOTA_MIN_US: u64 = 1_000;

/// The fix suggested when this process's cgroup cannot hold run cgroups.
const DELEGATION_FIX: &str = "run palisade in a cgroup delegated to this user, such as \
    `systemd-run --user --scope -p Delegate=yes palisade ...`, or run it as root on a cgroup v2 host";

/// Limits applied to one run's cgroup. `None` leaves the file alone, so only the limits of the
/// ancestor cgroups apply. This module never writes `max`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// The memory limit in bytes, written to `memory.max`. When set, `memory.swap.max` is set to
    /// 0 so the limit cannot be evaded by swapping, and `memory.oom.group` to 1 so the OOM
    /// killer ends the whole run rather than one process of it.
    pub memory_max: Option<u64>,
    /// The maximum number of processes and threads, written to `pids.max`.
    pub pids_max: Option<u64>,
    /// The CPU bandwidth as (quota, period) in microseconds, written to `cpu.max`.
    pub cpu_max: Option<(u64, u64)>,
}

/// Resource usage read from a run's cgroup. A field whose file the kernel lacks is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The peak memory use in bytes, from `memory.peak` (Linux 5.19 and later).
    pub memory_peak: Option<u64>,
    /// User CPU time in microseconds, from `user_usec` in `cpu.stat`.
    pub cpu_user_us: Option<u64>,
    /// System CPU time in microseconds, from `system_usec` in `cpu.stat`.
    pub cpu_system_us: Option<u64>,
    /// The peak number of processes and threads, from `pids.peak` (Linux 6.1 and later).
    pub pids_peak: Option<u64>,
    /// The `oom_kill` count of `memory.events`: processes the OOM killer killed, 0 when unknown.
    /// `oom_group_kill` is not added because a group kill already counts every process it ends
    /// in `oom_kill` (mm/oom_kill.c, checked in Linux 6.6), so the sum would count kills twice.
    /// NOTE: in that source the chosen victim can be counted a second time during a group kill,
    /// so read this as "the OOM killer acted" rather than as an exact number of processes.
    pub oom_kills: u64,
    /// The `max` count of `pids.events`: forks rejected because of `pids.max`, 0 when unknown.
    pub pids_refused: u64,
}

/// The cgroup this process may create run cgroups under.
#[derive(Debug, Clone)]
pub struct Parent {
    pub dir: PathBuf,
}

/// Returns why no cgroup v2 directory can offer all of `needed`, judging from the text of
/// `/proc/cgroups`, or `None` when that file does not rule it out.
///
/// The file lists controllers with the hierarchy each is bound to (0 for the cgroup v2
/// hierarchy, or while unused) and whether it is enabled. A controller bound to a v1 hierarchy,
/// as on a host in systemd's hybrid mode, or disabled at boot, is offered by no v2 cgroup.
/// Finding that out from this one file spares reading `/proc/self/mountinfo` and the cgroup's
/// own files, about 0.07 ms of every run on such a host. A controller the file does not list
/// rules nothing out: since Linux 6.11 it lists only controllers that v1 could use, so a kernel
/// built without v1 memory control leaves `memory` out although v2 offers it.
pub fn unavailable_on_v2(proc_cgroups: &str, needed: &[&str]) -> Option<String> {
    let mut causes = Vec::new();
    for name in needed {
        let fields = proc_cgroups.lines().map(str::split_whitespace).find_map(|mut fields| {
            (fields.next() == Some(name)).then(|| (fields.next().unwrap_or(""), fields.nth(1).unwrap_or("")))
        });
        match fields {
            Some((_, "0")) => causes.push(format!("the {name} controller is disabled on this kernel (cgroup_disable= at boot)")),
            None | Some(("0", _)) => {}
            Some(_) => causes.push(format!("the {name} controller is bound to a cgroup v1 hierarchy, so no cgroup v2 directory offers it")),
        }
    }
    (!causes.is_empty()).then(|| format!("{} (/proc/cgroups)", causes.join("; ")))
}

/// Finds this process's cgroup v2 directory from the text of `/proc/self/cgroup` and
/// `/proc/self/mountinfo`, without reading any file.
///
/// The cgroup path of the `0::` line is relative to this process's cgroup namespace, and so is
/// the root of each cgroup2 mount. A mount whose root is a prefix of the path shows the cgroup
/// at the mount point plus the rest of the path. When several mounts qualify, the last one in
/// `mountinfo` wins, because a later mount on the same mount point hides the earlier one.
///
/// Returns an error when there is no `0::` line (a cgroup v1 host), when the path lies outside
/// the cgroup namespace, or when no cgroup2 mount shows the path.
pub fn locate(self_cgroup: &str, mountinfo: &str) -> Result<PathBuf, String> {
    let Some(relative) = self_cgroup.lines().find_map(|line| line.strip_prefix("0::")) else {
        return Err("/proc/self/cgroup has no \"0::\" line, so this process is in no cgroup v2 hierarchy".into());
    };
    let cgroup = Path::new(relative);
    // The kernel shows a cgroup outside the reader's cgroup namespace as a path with "..".
    if !cgroup.is_absolute() || cgroup.components().any(|part| part == Component::ParentDir) {
        return Err(format!(
            "this process's cgroup {relative} lies outside its cgroup namespace, so no mount shows its directory"
        ));
    }

    let mut found = None;
    let mut roots = Vec::new();
    for (root, mount_point) in mountinfo.lines().filter_map(parse_cgroup2_mount) {
        if let Ok(rest) = cgroup.strip_prefix(&root) {
            found = Some(if rest.as_os_str().is_empty() { mount_point } else { mount_point.join(rest) });
        }
        roots.push(root.display().to_string());
    }
    match found {
        Some(dir) => Ok(dir),
        None if roots.is_empty() => Err("/proc/self/mountinfo lists no cgroup2 mount".into()),
        None => Err(format!(
            "no cgroup2 mount shows this process's cgroup {relative} (the mounts' roots are {})",
            roots.join(", ")
        )),
    }
}

/// Parses one line of `/proc/self/mountinfo` and returns the mount's root and mount point when
/// its file system type is cgroup2.
fn parse_cgroup2_mount(line: &str) -> Option<(PathBuf, PathBuf)> {
    // Fields: ID, parent ID, major:minor, root, mount point, options, optional fields ending
    // with "-", then the file system type. Escaping keeps spaces out of the root and mount
    // point, so splitting on spaces is exact.
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = 6 + fields.get(6..)?.iter().position(|field| *field == "-")?;
    if fields.get(separator + 1) != Some(&"cgroup2") {
        return None;
    }
    Some((unescape_mountinfo(fields[3]), unescape_mountinfo(fields[4])))
}

/// Decodes the octal escapes the kernel writes in mountinfo paths (`\040` for a space, `\011`
/// for a tab, `\012` for a newline, `\134` for a backslash).
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' {
            if let Some(byte) = bytes.get(index + 1..index + 4).and_then(decode_octal_byte) {
                decoded.push(byte);
                index += 4;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(decoded))
}

/// Decodes three octal digits into one byte, or returns `None` when they are not that.
fn decode_octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for &digit in digits {
        if !(b'0'..=b'7').contains(&digit) {
            return None;
        }
        value = value * 8 + u32::from(digit - b'0');
    }
    u8::try_from(value).ok()
}

/// Checks that `dir`, this process's cgroup, offers every controller in `needed` and is
/// delegated to this user: `dir`, its `cgroup.procs` and its `cgroup.subtree_control` must be
/// writable. Changes nothing.
///
/// Returns the cause, which names the directory and what is missing, and the fix.
pub fn check(dir: &Path, needed: &[&str]) -> Result<(), (String, String)> {
    let controllers = read_file(&dir.join("cgroup.controllers")).map_err(|cause| (cause, DELEGATION_FIX.to_owned()))?;
    let missing = missing_names(&controllers, needed);
    if !missing.is_empty() {
        let offered = if controllers.trim().is_empty() { "none" } else { controllers.trim() };
        return Err((
            format!(
                "the cgroup {} does not offer the controllers {} (its cgroup.controllers lists {offered})",
                dir.display(),
                missing.join(", ")
            ),
            DELEGATION_FIX.to_owned(),
        ));
    }

    // Creating run cgroups needs the directory, and moving processes between this cgroup's
    // children needs cgroup.procs of their common ancestor, which is this cgroup.
    let mut unwritable = Vec::new();
    for path in [dir.to_path_buf(), dir.join("cgroup.procs"), dir.join("cgroup.subtree_control")] {
        if let Err(error) = rustix::fs::access(&path, Access::WRITE_OK) {
            unwritable.push(format!("{} ({})", path.display(), io::Error::from(error)));
        }
    }
    if !unwritable.is_empty() {
        return Err((
            format!(
                "the cgroup {} is not delegated to this user, who cannot write {}",
                dir.display(),
                unwritable.join(", ")
            ),
            DELEGATION_FIX.to_owned(),
        ));
    }
    Ok(())
}

/// Makes `dir` ready to hold run cgroups, with every controller in `needed` enabled in its
/// `cgroup.subtree_control`.
///
/// A non-root cgroup that contains processes cannot enable controllers for its children (the
/// "no internal processes" rule of cgroup v2). So unless the controllers are already enabled,
/// this process (`self_pid`) moves into the leaf `dir/palisade-supervisor` first. Another
/// process in `dir` is an error, because palisade does not move processes it does not own. The
/// root cgroup (`is_root`) is exempt from the rule and skips the leaf.
pub fn prepare(dir: &Path, needed: &[&str], self_pid: u32, is_root: bool) -> Result<Parent, String> {
    let subtree_control = dir.join("cgroup.subtree_control");
    let enabled = read_file(&subtree_control)?;
    if missing_names(&enabled, needed).is_empty() {
        return Ok(Parent { dir: dir.to_path_buf() });
    }

    if !is_root {
        let procs = read_file(&dir.join("cgroup.procs"))?;
        let others: Vec<String> =
            procs.split_whitespace().filter(|pid| pid.parse() != Ok(self_pid)).map(str::to_owned).collect();
        if !others.is_empty() {
            return Err(format!(
                "cannot enable controllers in the cgroup {} because other processes share it (pids {}), and a \
                 non-root cgroup with processes cannot enable controllers for its children; {DELEGATION_FIX}",
                dir.display(),
                others.join(", ")
            ));
        }

        let leaf = dir.join(SUPERVISOR_LEAF);
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            // A supervisor that ran earlier, or runs now, left it; sharing it is harmless.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(format!("failed to create the cgroup {}: {error}", leaf.display())),
        }
        write_file(&leaf.join("cgroup.procs"), &self_pid.to_string())?;
    }

    let request: Vec<String> = needed.iter().map(|name| format!("+{name}")).collect();
    write_file(&subtree_control, &request.join(" "))?;
    Ok(Parent { dir: dir.to_path_buf() })
}

/// Returns the names in `needed` that are not among the space-separated words of `listed`.
fn missing_names<'a>(listed: &str, needed: &[&'a str]) -> Vec<&'a str> {
    needed.iter().copied().filter(|name| !listed.split_whitespace().any(|word| word == *name)).collect()
}

/// One run's cgroup. Dropping it kills the processes left in it, waits up to one second for
/// them to exit and removes it, ignoring errors. [`RunCgroup::remove`] does the same and
/// reports them.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    removed: bool,
}

impl RunCgroup {
    /// Creates the cgroup `parent.dir/name`, which must not exist yet, and writes `limits` to
    /// it. Sizes are written in bytes as decimal numbers. On a failed write, the new cgroup is
    /// removed again and the error names the file.
    pub fn create(parent: &Parent, name: &str, limits: &Limits) -> Result<RunCgroup, String> {
        validate_name(name)?;
        if let Some(cpu_max) = limits.cpu_max {
            validate_cpu_max(cpu_max)?;
        }
        let path = parent.dir.join(name);
        fs::create_dir(&path).map_err(|error| format!("failed to create the cgroup {}: {error}", path.display()))?;

        if let Err(error) = write_limits(&path, limits) {
            // NOTE: no test reaches this branch, because a temporary directory accepts every
            // write. There, this rmdir also fails once a file was written and is ignored.
            let _ = fs::remove_dir(&path);
            return Err(error);
        }
        Ok(RunCgroup { path, removed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the process `pid`, with all its threads, into this cgroup.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        write_file(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Reads the usage counters. A missing or malformed file leaves its fields `None` or 0.
    pub fn usage(&self) -> Usage {
        let read = |name: &str| fs::read_to_string(self.path.join(name)).ok();
        let cpu_stat = read("cpu.stat").unwrap_or_default();
        Usage {
            memory_peak: read("memory.peak").and_then(|text| parse_single(&text)),
            cpu_user_us: parse_keyed(&cpu_stat, "user_usec"),
            cpu_system_us: parse_keyed(&cpu_stat, "system_usec"),
            pids_peak: read("pids.peak").and_then(|text| parse_single(&text)),
            oom_kills: read("memory.events").and_then(|text| parse_keyed(&text, "oom_kill")).unwrap_or(0),
            pids_refused: read("pids.events").and_then(|text| parse_keyed(&text, "max")).unwrap_or(0),
        }
    }

    /// Reports whether `cgroup.events` contains `populated 1`, meaning a process of this cgroup
    /// or its descendants is alive. An unreadable file counts as not populated.
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.path.join("cgroup.events"))
            .ok()
            .and_then(|text| parse_keyed(&text, "populated"))
            .is_some_and(|value| value != 0)
    }

    /// Kills every process in this cgroup and its descendants, ignoring errors.
    ///
    /// Writing 1 to `cgroup.kill` (Linux 5.14) kills them all at once, including processes
    /// forked meanwhile. Without that file, SIGKILL goes to each pid of `cgroup.procs`, repeated
    /// until the file is empty or after 100 rounds.
    pub fn kill(&self) {
        let kill_file = self.path.join("cgroup.kill");
        // The file is checked first because opening a missing cgroupfs file with O_CREAT fails
        // with EACCES, which would hide the reason.
        if kill_file.exists() && write_file(&kill_file, "1").is_ok() {
            return;
        }
        self.kill_each_process();
    }

    /// Sends SIGKILL to each process listed in `cgroup.procs`, round after round.
    ///
    /// NOTE: a listed process may exit and its pid be reused before the signal is sent, so on
    /// kernels without `cgroup.kill` an unrelated process can be killed. This fallback also
    /// misses processes in descendant cgroups.
    fn kill_each_process(&self) {
        let procs = self.path.join("cgroup.procs");
        for _ in 0..KILL_ROUNDS {
            let Ok(text) = fs::read_to_string(&procs) else { return };
            let pids = pids_to_kill(&text, std::process::id());
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            thread::sleep(KILL_ROUND_PAUSE);
        }
    }

    /// Kills every process, waits up to `wait` for `cgroup.events` to say `populated 0`, then
    /// removes the directory with `rmdir`.
    ///
    /// Interface files are never deleted, so in a temporary directory used in place of
    /// cgroupfs, this fails once a file was written in the cgroup.
    pub fn remove(mut self, wait: Duration) -> Result<(), String> {
        self.removed = true;
        self.kill();
        let emptied = self.wait_until_empty(wait);
        fs::remove_dir(&self.path).map_err(|error| {
            let still_running = if emptied { String::new() } else { format!(" (processes still ran after {wait:?})") };
            format!("failed to remove the cgroup {}: {error}{still_running}", self.path.display())
        })
    }

    /// Polls `cgroup.events` until the cgroup is empty or `wait` has passed, and reports
    /// whether it is empty.
    fn wait_until_empty(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.populated() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
        true
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.kill();
        self.wait_until_empty(DROP_WAIT);
        let _ = fs::remove_dir(&self.path);
    }
}

/// Rejects a run cgroup name that is not one plain path component.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("invalid cgroup name {name:?}: it must be one path component, without '/'"));
    }
    Ok(())
}

/// Rejects a `cpu.max` value the kernel would reject with EINVAL, naming the bounds.
fn validate_cpu_max((quota_us, period_us): (u64, u64)) -> Result<(), String> {
    if !(CPU_PERIOD_MIN_US..=CPU_PERIOD_MAX_US).contains(&period_us) {
        return Err(format!(
            "invalid CPU period {period_us} µs: the kernel accepts {CPU_PERIOD_MIN_US} to {CPU_PERIOD_MAX_US} µs"
        ));
    }
    if quota_us < CPU_QUOTA_MIN_US {
        return Err(format!("invalid CPU quota {quota_us} µs: the kernel accepts {CPU_QUOTA_MIN_US} µs or more"));
    }
    Ok(())
}

/// Writes each limit that is set to its interface file of the cgroup `path`.
fn write_limits(path: &Path, limits: &Limits) -> Result<(), String> {
    if let Some(bytes) = limits.memory_max {
        write_file(&path.join("memory.max"), &bytes.to_string())?;
        write_file(&path.join("memory.swap.max"), "0")?;
        write_file(&path.join("memory.oom.group"), "1")?;
    }
    if let Some(count) = limits.pids_max {
        write_file(&path.join("pids.max"), &count.to_string())?;
    }
    if let Some((quota_us, period_us)) = limits.cpu_max {
        write_file(&path.join("cpu.max"), &format!("{quota_us} {period_us}"))?;
    }
    Ok(())
}

/// Writes `value` to the interface file `path` in one `write` call, because cgroupfs takes each
/// call as a whole request. The file is created if missing, so a temporary directory can stand
/// in for cgroupfs. Opening an existing cgroupfs file with O_CREAT and O_TRUNC is harmless.
fn write_file(path: &Path, value: &str) -> Result<(), String> {
    let result = OpenOptions::new().write(true).create(true).truncate(true).open(path).and_then(|mut file| {
        let written = file.write(value.as_bytes())?;
        if written == value.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write of {written} bytes")))
        }
    });
    result.map_err(|error| {
        // cgroupfs cannot create files, so opening one the kernel does not provide fails with
        // EACCES, which reads like a permission problem.
        let missing = match path.symlink_metadata() {
            Err(stat_error) if stat_error.kind() == io::ErrorKind::NotFound => {
                "; the file does not exist, so its controller is not enabled for this cgroup or the kernel lacks it"
            }
            _ => "",
        };
        format!("failed to write {value} to {}: {error}{missing}", path.display())
    })
}

/// Reads the file `path` into a string, with an error that names the file.
fn read_file(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("failed to read {}: {error}", path.display()))
}

/// Parses a file that contains one decimal number, such as `memory.peak`.
fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Parses the value of `key` in a flat keyed file of "key value" lines, such as `cpu.stat`.
/// A malformed value counts as missing.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some(key) {
            let value = words.next()?.parse().ok();
            return if words.next().is_none() { value } else { None };
        }
    }
    None
}

/// Returns the pids of `cgroup.procs` text to send SIGKILL to, leaving out `own_pid`, 0 and
/// negative numbers. The kernel lists a process outside the reader's PID namespace as 0, and
/// kill(0) would signal palisade's own process group instead.
fn pids_to_kill(procs: &str, own_pid: u32) -> Vec<Pid> {
    procs
        .split_whitespace()
        .filter_map(|word| word.parse::<i32>().ok())
        .filter(|&raw| raw > 0 && raw.unsigned_abs() != own_pid)
        .filter_map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique temporary directory used in place of a cgroup, deleted with its contents when
    /// dropped.
    struct FakeCgroup {
        dir: PathBuf,
    }

    impl FakeCgroup {
        fn new() -> FakeCgroup {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let number = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("palisade-cgroup-test-{}-{number}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeCgroup { dir }
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.dir.join(name), text).unwrap();
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.dir.join(name)).unwrap()
        }

        fn parent(&self) -> Parent {
            Parent { dir: self.dir.clone() }
        }
    }

    impl Drop for FakeCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    const SYSTEMD_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn unavailable_on_v2_by_host_kind() {
        let hybrid = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t46\t1\nhugetlb\t0\t1\t1\npids\t8\t1\t1\n";
        let cause = unavailable_on_v2(hybrid, &["memory", "pids"]).unwrap();
        assert!(cause.contains("memory controller is bound to a cgroup v1 hierarchy"), "{cause}");
        assert!(cause.contains("pids controller"), "{cause}");
        assert_eq!(unavailable_on_v2(hybrid, &["hugetlb"]), None);

        let unified = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t80\t1\nmemory\t0\t80\t1\npids\t0\t80\t1\n";
        assert_eq!(unavailable_on_v2(unified, &["memory", "pids", "cpu"]), None);

        let disabled = "memory\t0\t1\t0\npids\t0\t1\t1\n";
        assert!(unavailable_on_v2(disabled, &["memory", "pids"]).unwrap().contains("memory controller is disabled"));

        // Linux 6.11 and later leave out controllers v1 cannot use, such as memory on a kernel
        // built without CONFIG_MEMCG_V1: absent is not unavailable.
        let without_v1_memory = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t80\t1\npids\t0\t80\t1\n";
        assert_eq!(unavailable_on_v2(without_v1_memory, &["memory", "pids"]), None);
    }

    #[test]
    fn locate_systemd_host() {
        let dir = locate("0::/user.slice/user-1000.slice/session-2.scope\n", SYSTEMD_MOUNTINFO).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope"));
    }

    #[test]
    fn locate_hybrid_host() {
        let self_cgroup = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n0::/user.slice/session-2.scope\n";
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let dir = locate(self_cgroup, mountinfo).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/unified/user.slice/session-2.scope"));
    }

    #[test]
    fn locate_pure_v1_host_fails() {
        let self_cgroup = "4:memory:/user.slice\n1:name=systemd:/user.slice\n";
        let error = locate(self_cgroup, SYSTEMD_MOUNTINFO).unwrap_err();
        assert!(error.contains("\"0::\""), "{error}");
    }

    #[test]
    fn locate_without_cgroup2_mount_fails() {
        let mountinfo = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        let error = locate("0::/user.slice\n", mountinfo).unwrap_err();
        assert!(error.contains("no cgroup2 mount"), "{error}");
    }

    #[test]
    fn locate_cgroup_namespace_root() {
        // Inside a cgroup namespace, both the process's path and the mount's root are "/".
        let mountinfo = "700 650 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n";
        assert_eq!(locate("0::/\n", mountinfo).unwrap(), Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn locate_mount_root_is_own_cgroup() {
        // A container without its own cgroup namespace, with its cgroup bind-mounted over
        // /sys/fs/cgroup: the mount's root is the process's cgroup path itself.
        let mountinfo = "\
700 650 0:26 /system.slice/docker-ab12.scope /sys/fs/cgroup rw,nosuid - cgroup2 cgroup rw
";
        let inside = locate("0::/system.slice/docker-ab12.scope\n", mountinfo).unwrap();
        assert_eq!(inside, Path::new("/sys/fs/cgroup"));
        let below = locate("0::/system.slice/docker-ab12.scope/job\n", mountinfo).unwrap();
        assert_eq!(below, Path::new("/sys/fs/cgroup/job"));
    }

    #[test]
    fn locate_path_outside_mount_root_fails() {
        let mountinfo = "700 650 0:26 /system.slice/docker-ab12.scope /sys/fs/cgroup rw - cgroup2 cgroup rw\n";
        let error = locate("0::/system.slice/docker-ab12.scope-other\n", mountinfo).unwrap_err();
        assert!(error.contains("/system.slice/docker-ab12.scope-other"), "{error}");
    }

    #[test]
    fn locate_path_outside_namespace_fails() {
        let error = locate("0::/../../user.slice\n", SYSTEMD_MOUNTINFO).unwrap_err();
        assert!(error.contains("outside its cgroup namespace"), "{error}");
    }

    #[test]
    fn locate_escaped_mount_point() {
        let mountinfo = "40 22 0:40 / /mnt/cgroup\\040v2\\134x rw,relatime - cgroup2 none rw\n";
        let dir = locate("0::/job\n", mountinfo).unwrap();
        assert_eq!(dir, Path::new("/mnt/cgroup v2\\x/job"));
    }

    #[test]
    fn locate_later_mount_wins() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
90 22 0:26 / /run/palisade/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(locate("0::/a\n", mountinfo).unwrap(), Path::new("/run/palisade/cgroup/a"));
    }

    #[test]
    fn unescape_leaves_incomplete_escapes() {
        assert_eq!(unescape_mountinfo("a\\04"), Path::new("a\\04"));
        assert_eq!(unescape_mountinfo("a\\777b"), Path::new("a\\777b"));
        assert_eq!(unescape_mountinfo("tab\\011end"), Path::new("tab\tend"));
    }

    #[test]
    fn check_names_missing_controller() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.controllers", "cpu io memory\n");
        cgroup.write("cgroup.procs", "");
        cgroup.write("cgroup.subtree_control", "");
        let (cause, fix) = check(&cgroup.dir, &["memory", "pids"]).unwrap_err();
        assert!(cause.contains(&cgroup.dir.display().to_string()), "{cause}");
        assert!(cause.contains("controllers pids"), "{cause}");
        assert!(!cause.contains("controllers memory"), "{cause}");
        assert!(fix.contains("Delegate=yes"), "{fix}");
    }

    #[test]
    fn check_accepts_delegated_cgroup() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.controllers", "cpuset cpu io memory pids\n");
        cgroup.write("cgroup.procs", "");
        cgroup.write("cgroup.subtree_control", "");
        assert_eq!(check(&cgroup.dir, &["memory", "pids", "cpu"]), Ok(()));
    }

    #[test]
    fn check_reports_unreadable_controllers() {
        let cgroup = FakeCgroup::new();
        let (cause, _) = check(&cgroup.dir, &["memory"]).unwrap_err();
        assert!(cause.contains("cgroup.controllers"), "{cause}");
    }

    #[test]
    fn check_rejects_unwritable_cgroup() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            eprintln!("SKIP check_rejects_unwritable_cgroup: root passes every write-permission check");
            return;
        }
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.controllers", "memory pids\n");
        cgroup.write("cgroup.procs", "");
        cgroup.write("cgroup.subtree_control", "");
        fs::set_permissions(cgroup.dir.join("cgroup.procs"), fs::Permissions::from_mode(0o444)).unwrap();
        let (cause, _) = check(&cgroup.dir, &["memory", "pids"]).unwrap_err();
        assert!(cause.contains("cgroup.procs"), "{cause}");
        assert!(!cause.contains("cgroup.subtree_control"), "{cause}");
    }

    #[test]
    fn prepare_already_enabled_writes_nothing() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.subtree_control", "cpu memory pids\n");
        cgroup.write("cgroup.procs", "4242\n");
        let parent = prepare(&cgroup.dir, &["memory", "pids"], 1, false).unwrap();
        assert_eq!(parent.dir, cgroup.dir);
        assert_eq!(cgroup.read("cgroup.subtree_control"), "cpu memory pids\n");
        assert_eq!(cgroup.read("cgroup.procs"), "4242\n");
        assert!(!cgroup.dir.join(SUPERVISOR_LEAF).exists());
    }

    #[test]
    fn prepare_rejects_other_processes() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.subtree_control", "");
        cgroup.write("cgroup.procs", "100\n4242\n");
        let error = prepare(&cgroup.dir, &["memory", "pids"], 100, false).unwrap_err();
        assert!(error.contains(&cgroup.dir.display().to_string()), "{error}");
        assert!(error.contains("other processes share it (pids 4242)"), "{error}");
        assert!(!cgroup.dir.join(SUPERVISOR_LEAF).exists());
        assert_eq!(cgroup.read("cgroup.subtree_control"), "");
    }

    #[test]
    fn prepare_moves_self_into_leaf() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.subtree_control", "cpu\n");
        cgroup.write("cgroup.procs", "100\n");
        let parent = prepare(&cgroup.dir, &["memory", "pids"], 100, false).unwrap();
        assert_eq!(parent.dir, cgroup.dir);
        assert_eq!(cgroup.read(&format!("{SUPERVISOR_LEAF}/cgroup.procs")), "100");
        assert_eq!(cgroup.read("cgroup.subtree_control"), "+memory +pids");
    }

    #[test]
    fn prepare_reuses_existing_leaf() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.subtree_control", "");
        cgroup.write("cgroup.procs", "");
        fs::create_dir(cgroup.dir.join(SUPERVISOR_LEAF)).unwrap();
        prepare(&cgroup.dir, &["pids"], 100, false).unwrap();
        assert_eq!(cgroup.read(&format!("{SUPERVISOR_LEAF}/cgroup.procs")), "100");
        assert_eq!(cgroup.read("cgroup.subtree_control"), "+pids");
    }

    #[test]
    fn prepare_root_skips_leaf() {
        let cgroup = FakeCgroup::new();
        cgroup.write("cgroup.subtree_control", "");
        cgroup.write("cgroup.procs", "1\n2\n100\n");
        prepare(&cgroup.dir, &["memory", "pids", "cpu"], 100, true).unwrap();
        assert!(!cgroup.dir.join(SUPERVISOR_LEAF).exists());
        assert_eq!(cgroup.read("cgroup.procs"), "1\n2\n100\n");
        assert_eq!(cgroup.read("cgroup.subtree_control"), "+memory +pids +cpu");
    }

    #[test]
    fn create_writes_every_limit() {
        let cgroup = FakeCgroup::new();
        let limits = Limits { memory_max: Some(536_870_912), pids_max: Some(64), cpu_max: Some((50_000, 100_000)) };
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &limits).unwrap();
        assert_eq!(run.path(), cgroup.dir.join("run-1"));
        assert_eq!(cgroup.read("run-1/memory.max"), "536870912");
        assert_eq!(cgroup.read("run-1/memory.swap.max"), "0");
        assert_eq!(cgroup.read("run-1/memory.oom.group"), "1");
        assert_eq!(cgroup.read("run-1/pids.max"), "64");
        assert_eq!(cgroup.read("run-1/cpu.max"), "50000 100000");
    }

    #[test]
    fn create_without_memory_limit() {
        let cgroup = FakeCgroup::new();
        let limits = Limits { pids_max: Some(8), ..Limits::default() };
        let _run = RunCgroup::create(&cgroup.parent(), "run-1", &limits).unwrap();
        for name in ["memory.max", "memory.swap.max", "memory.oom.group", "cpu.max"] {
            assert!(!cgroup.dir.join("run-1").join(name).exists(), "{name} was written");
        }
        assert_eq!(cgroup.read("run-1/pids.max"), "8");
    }

    #[test]
    fn create_fails_when_cgroup_exists() {
        let cgroup = FakeCgroup::new();
        fs::create_dir(cgroup.dir.join("run-1")).unwrap();
        let error = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap_err();
        assert!(error.contains("failed to create the cgroup"), "{error}");
        assert!(error.contains(&cgroup.dir.join("run-1").display().to_string()), "{error}");
    }

    #[test]
    fn create_rejects_invalid_name() {
        let cgroup = FakeCgroup::new();
        for name in ["", ".", "..", "a/b", "/abs"] {
            let error = RunCgroup::create(&cgroup.parent(), name, &Limits::default()).unwrap_err();
            assert!(error.starts_with("invalid cgroup name"), "{name:?}: {error}");
        }
    }

    #[test]
    fn create_rejects_invalid_cpu_max() {
        let cgroup = FakeCgroup::new();
        for cpu_max in [(50_000, 999), (50_000, 1_000_001), (999, 100_000)] {
            let limits = Limits { cpu_max: Some(cpu_max), ..Limits::default() };
            let error = RunCgroup::create(&cgroup.parent(), "run-1", &limits).unwrap_err();
            assert!(error.starts_with("invalid CPU"), "{cpu_max:?}: {error}");
            assert!(!cgroup.dir.join("run-1").exists(), "{cpu_max:?} created the cgroup");
        }
    }

    #[test]
    fn add_writes_pid() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        // The test's own pid, because dropping `run` sends SIGKILL to every other pid listed.
        let own_pid = std::process::id();
        run.add(own_pid).unwrap();
        assert_eq!(cgroup.read("run-1/cgroup.procs"), own_pid.to_string());
    }

    #[test]
    fn usage_parses_interface_files() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        cgroup.write("run-1/memory.peak", "123456789\n");
        cgroup.write("run-1/pids.peak", "17\n");
        cgroup.write(
            "run-1/cpu.stat",
            "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        );
        cgroup.write(
            "run-1/memory.events",
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 3\noom_group_kill 1\n",
        );
        cgroup.write("run-1/pids.events", "max 5\n");
        let usage = run.usage();
        assert_eq!(usage.memory_peak, Some(123_456_789));
        assert_eq!(usage.pids_peak, Some(17));
        assert_eq!(usage.cpu_user_us, Some(2000));
        assert_eq!(usage.cpu_system_us, Some(1000));
        assert_eq!(usage.oom_kills, 3);
        assert_eq!(usage.pids_refused, 5);
    }

    #[test]
    fn usage_treats_malformed_files_as_missing() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        cgroup.write("run-1/memory.peak", "max\n");
        cgroup.write("run-1/pids.peak", "");
        cgroup.write("run-1/cpu.stat", "user_usec\nsystem_usec -5\n");
        cgroup.write("run-1/memory.events", "oom_kill 3 4\n");
        cgroup.write("run-1/pids.events", "max lots\n");
        assert_eq!(run.usage(), Usage::default());
    }

    #[test]
    fn usage_of_bare_cgroup_is_empty() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        assert_eq!(run.usage(), Usage::default());
    }

    #[test]
    fn populated_reads_cgroup_events() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        assert!(!run.populated(), "a missing cgroup.events counts as empty");
        cgroup.write("run-1/cgroup.events", "populated 1\nfrozen 0\n");
        assert!(run.populated());
        cgroup.write("run-1/cgroup.events", "populated 0\nfrozen 0\n");
        assert!(!run.populated());
    }

    #[test]
    fn kill_writes_cgroup_kill_when_present() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        cgroup.write("run-1/cgroup.kill", "");
        run.kill();
        assert_eq!(cgroup.read("run-1/cgroup.kill"), "1");
    }

    #[test]
    fn kill_without_cgroup_kill_signals_each_process() {
        use std::os::unix::process::ExitStatusExt;
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        cgroup.write("run-1/cgroup.procs", &format!("{}\n", child.id()));
        // The fake cgroup.procs never empties, so this runs all rounds.
        run.kill();
        assert!(!cgroup.dir.join("run-1/cgroup.kill").exists(), "kill created cgroup.kill");
        // Emptied before the child is reaped, so dropping `run` cannot signal a process that
        // reuses the pid.
        cgroup.write("run-1/cgroup.procs", "");
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn pids_to_kill_skips_zero_negative_and_self() {
        let pids = pids_to_kill("0\n-1\n7\nabc\n100\n8\n", 100);
        let raw: Vec<i32> = pids.iter().map(|pid| pid.as_raw_nonzero().get()).collect();
        assert_eq!(raw, vec![7, 8]);
    }

    #[test]
    fn remove_deletes_empty_cgroup() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        run.remove(Duration::from_millis(50)).unwrap();
        assert!(!cgroup.dir.join("run-1").exists());
    }

    #[test]
    fn remove_names_path_when_rmdir_fails() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        cgroup.write("run-1/cgroup.events", "populated 1\n");
        let started = Instant::now();
        let error = run.remove(Duration::from_millis(30)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(30), "remove did not wait");
        assert!(error.contains(&cgroup.dir.join("run-1").display().to_string()), "{error}");
        assert!(error.contains("processes still ran"), "{error}");
    }

    #[test]
    fn drop_removes_empty_cgroup() {
        let cgroup = FakeCgroup::new();
        let run = RunCgroup::create(&cgroup.parent(), "run-1", &Limits::default()).unwrap();
        drop(run);
        assert!(!cgroup.dir.join("run-1").exists());
    }
}
