//! Resource limits: the rlimits the command stage sets, and the supervisor's own accounting.
//! No rlimit can hold memory or CPU time for a whole process tree, so where there is no
//! cgroup to do it, the accounting measures the tree and enforces those limits.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_policy::Limits;
use rustix::process::Resource;

/// A limit of the policy that a run reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    Memory,
    CpuTime,
    MaxProcs,
    MaxFileSize,
    Output,
}

impl Limit {
    /// Returns the limit's name in the policy file and the report.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Memory => "memory",
            Limit::CpuTime => "cpu_time",
            Limit::MaxProcs => "max_procs",
            Limit::MaxFileSize => "max_file_size",
            Limit::Output => "max_output",
        }
    }
}

/// A limit the run reached, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitEvent {
    pub limit: Limit,
    /// The limit's value: bytes, milliseconds or a count.
    pub value: u64,
    /// Whether palisade ended the run because of it.
    pub ended_run: bool,
    /// One sentence on what happened, for a person or a model.
    pub message: String,
}

/// Resources the run used. `None` where palisade could not measure one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub user_cpu: Option<Duration>,
    pub system_cpu: Option<Duration>,
    /// The highest memory use of the run's processes together, in bytes.
    pub peak_memory: Option<u64>,
    /// The maximum number of processes and threads the run had at once.
    pub peak_tasks: Option<u64>,
    pub stdout_bytes: Option<u64>,
    pub stderr_bytes: Option<u64>,
    /// Stdout and stderr were the same file for palisade, so the command's two streams went
    /// through one pipe and `stdout_bytes` counts both.
    pub output_merged: bool,
}

/// One resource limit the command stage sets with `setrlimit`.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    resource: Resource,
    soft: u64,
    hard: u64,
    name: &'static str,
}

impl Rlimit {
    /// Returns the limit's short name: `core`, `nproc`, `fsize`, `nofile` or `cpu`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Returns the limit as `name=value`, as the report lists it.
    pub fn describe(&self) -> String {
        format!("{}={}", self.name, self.soft)
    }
}

/// Returns the rlimits that carry `limits`, core dumps off first. Each only ever lowers what
/// palisade itself has: an rlimit cannot be raised without privilege, and a caller's lower
/// limit (an outer guard) must stay in force.
pub fn rlimits(limits: &Limits) -> Vec<Rlimit> {
    let lowered = |resource: Resource, value: u64, name: &'static str| {
        let current = rustix::process::getrlimit(resource);
        let soft = current.current.map_or(value, |soft| soft.min(value));
        let hard = current.maximum.map_or(value, |hard| hard.min(value));
        Rlimit { resource, soft: soft.min(hard), hard, name }
    };
    let mut list = vec![Rlimit { resource: Resource::Core, soft: 0, hard: 0, name: "core" }];
    if let Some(count) = limits.max_procs {
        list.push(lowered(Resource::Nproc, count, "nproc"));
    }
    if let Some(bytes) = limits.max_file_size {
        list.push(lowered(Resource::Fsize, bytes, "fsize"));
    }
    if let Some(count) = limits.max_open_files {
        list.push(lowered(Resource::Nofile, count, "nofile"));
    }
    if let Some(time) = limits.cpu_time {
        // Per process, as a backstop for the accounting, which adds up the whole tree. At
        // the soft limit the kernel sends SIGXCPU, which ends a process that does not catch
        // it; a second later, at the hard limit, SIGKILL.
        let seconds = time.as_secs() + u64::from(time.subsec_nanos() > 0);
        let mut limit = lowered(Resource::Cpu, seconds + 1, "cpu");
        limit.soft = limit.soft.min(seconds);
        list.push(limit);
    }
    list
}

/// Sets every rlimit of `list` on the calling process.
pub fn apply(list: &[Rlimit]) -> Result<(), String> {
    for limit in list {
        let value = rustix::process::Rlimit { current: Some(limit.soft), maximum: Some(limit.hard) };
        rustix::process::setrlimit(limit.resource, value)
            .map_err(|error| format!("failed to set the {} limit to {}: {error}", limit.name, limit.soft))?;
    }
    Ok(())
}

/// The maximum time between two readings of the run's processes.
const MAX_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// The minimum time between two readings, near the memory limit.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
/// The fastest rate, in bytes per second, at which the accounting assumes a run can fill
/// memory. The next reading comes before a run filling memory this fast reaches the limit,
/// so far from it readings are rare and cheap, and near it they come every 10 ms. A single
/// core writes fresh pages at a few GB/s.
const ASSUMED_FILL_RATE: u64 = 8 << 30;
/// How long a run may stay at its process limit before palisade ends it. A fork bomb stays
/// there; a parallel build that touches the limit drops below it again.
const PROCESS_LIMIT_GRACE: Duration = Duration::from_secs(2);

/// Palisade's own accounting of a run. It reads every process of the tree at intervals and
/// keeps the peaks for the report. It returns the limit to enforce when the tree is over its
/// memory or CPU time limit, or has stayed at its process limit.
///
/// NOTE: the readings are samples. A process can allocate for up to 10 ms past the memory
/// limit before it is noticed, more if it fills memory faster than [`ASSUMED_FILL_RATE`]. A
/// peak between two readings is missed. A cgroup, where there is one, enforces and measures
/// exactly.
pub struct Monitor<'a> {
    limits: &'a Limits,
    proc: &'a Path,
    root: libc::pid_t,
    count_root_tasks: bool,
    next: Instant,
    peak: Sample,
    /// The CPU time of the last reading.
    cpu: (Duration, Duration),
    at_process_limit_since: Option<Instant>,
    /// Limits reached so far, in order.
    pub events: Vec<LimitEvent>,
}

impl<'a> Monitor<'a> {
    /// Starts the accounting of the tree rooted at `root`, read from `proc`; see [`sample`]
    /// for `count_root_tasks`.
    pub fn new(limits: &'a Limits, proc: &'a Path, root: libc::pid_t, count_root_tasks: bool) -> Monitor<'a> {
        Monitor {
            limits,
            proc,
            root,
            count_root_tasks,
            next: Instant::now() + MIN_SAMPLE_INTERVAL,
            peak: Sample::default(),
            cpu: (Duration::ZERO, Duration::ZERO),
            at_process_limit_since: None,
            events: Vec::new(),
        }
    }

    /// Returns when the next reading is due.
    pub fn next_reading(&self) -> Instant {
        self.next
    }

    /// Reads the tree if a reading is due, and returns the limit that must end the run, if
    /// any. The event that ends it is recorded.
    pub fn poll(&mut self) -> Option<Limit> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        let reading = sample(self.proc, self.root, self.count_root_tasks);
        self.peak.memory = self.peak.memory.max(reading.memory);
        self.peak.tasks = self.peak.tasks.max(reading.tasks);
        self.cpu = (self.cpu.0.max(reading.user_cpu), self.cpu.1.max(reading.system_cpu));
        self.next = now + next_interval(self.limits.memory, reading.memory);

        if let Some(max) = self.limits.memory.filter(|&max| reading.memory > max) {
            self.record(Limit::Memory, max, true, format!(
                "the run's processes together used {} of memory, over its limit of {}; every process was killed",
                format_size(reading.memory),
                format_size(max)
            ));
            return Some(Limit::Memory);
        }
        if let Some(max) = self.limits.cpu_time.filter(|&max| reading.cpu() > max) {
            self.record(Limit::CpuTime, max.as_millis() as u64, true, format!(
                "the run's processes together used {} of CPU time, over its limit of {}; every process was killed",
                format_duration(reading.cpu()),
                format_duration(max)
            ));
            return Some(Limit::CpuTime);
        }
        if let Some(max) = self.limits.max_procs {
            if reading.tasks >= max {
                let since = *self.at_process_limit_since.get_or_insert(now);
                if !self.events.iter().any(|event| event.limit == Limit::MaxProcs) {
                    self.record(Limit::MaxProcs, max, false, format!(
                        "the run reached its limit of {max} processes and threads; further forks failed with EAGAIN"
                    ));
                }
                if now.duration_since(since) >= PROCESS_LIMIT_GRACE {
                    self.record(Limit::MaxProcs, max, true, format!(
                        "the run stayed at its limit of {max} processes and threads for {}, as a fork bomb does; every process was killed",
                        format_duration(PROCESS_LIMIT_GRACE)
                    ));
                    return Some(Limit::MaxProcs);
                }
            } else {
                self.at_process_limit_since = None;
            }
        }
        None
    }

    /// Records that `limit` was reached.
    pub fn record(&mut self, limit: Limit, value: u64, ended_run: bool, message: String) {
        self.events.push(LimitEvent { limit, value, ended_run, message });
    }

    /// Returns the peak memory, the peak number of tasks, and the last user and system CPU
    /// time read. `None` when no reading was taken (a run shorter than the first interval).
    pub fn peaks(&self) -> Option<(u64, u64, (Duration, Duration))> {
        (self.peak.tasks > 0).then_some((self.peak.memory, self.peak.tasks, self.cpu))
    }
}

/// Returns the time until the next reading: as long as a run filling memory at
/// [`ASSUMED_FILL_RATE`] needs to reach `limit` from `used`, within the bounds.
fn next_interval(limit: Option<u64>, used: u64) -> Duration {
    let Some(limit) = limit else { return MAX_SAMPLE_INTERVAL };
    let headroom = limit.saturating_sub(used);
    let time = Duration::from_secs_f64(headroom as f64 / ASSUMED_FILL_RATE as f64);
    time.clamp(MIN_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL)
}

/// Formats a size for messages: whole units where the size is a multiple of one
/// (`512 MiB`), one decimal otherwise (`512.2 MiB`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let size = 1u64 << shift;
        if bytes >= size {
            return if bytes % size == 0 {
                format!("{} {unit}", bytes >> shift)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Formats a duration for messages: `30s`, `1.5s`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// A reading of every process of a run at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Private and shared memory of all processes plus their swap, in bytes, each page
    /// divided among the processes that map it. Page cache is not counted, and neither are
    /// shared memory pages no process maps; the temporary filesystems have their own limit.
    pub memory: u64,
    /// Processes and threads, the root included.
    pub tasks: u64,
    /// User CPU time of the live processes and of every descendant they have reaped.
    pub user_cpu: Duration,
    /// System CPU time, counted the same way.
    pub system_cpu: Duration,
}

impl Sample {
    /// Returns user and system CPU time together.
    pub fn cpu(&self) -> Duration {
        self.user_cpu + self.system_cpu
    }
}

/// Reads the processes of the tree rooted at `root` from `proc` (the host's `/proc`). The
/// tree is found through each thread's `children` file. In a PID namespace every orphan is
/// reparented to the namespace's init, so the tree from init contains every process of the run.
/// A process that exits while it is read is skipped.
///
/// The root is palisade's own process: init, or palisade itself in degraded mode. Its CPU time
/// counts, because it includes that of every descendant it reaped. Its memory does not count,
/// and its threads count only with `count_root_tasks`, set where the kernel counts the root
/// against the run's process limit too.
pub fn sample(proc: &Path, root: libc::pid_t, count_root_tasks: bool) -> Sample {
    let ticks = clock_ticks();
    let mut total = Sample::default();
    let mut pending = vec![root];
    let mut seen = 0usize;
    while let Some(pid) = pending.pop() {
        seen += 1;
        // A bound against a malformed or looping listing; a run has at most pid_max processes.
        if seen > 4_194_304 {
            break;
        }
        let dir = proc.join(pid.to_string());
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            if let Some(fields) = parse_stat(&stat) {
                if pid != root || count_root_tasks {
                    total.tasks += fields.threads;
                }
                total.user_cpu += Duration::from_millis(fields.user_ticks * 1000 / ticks);
                total.system_cpu += Duration::from_millis(fields.system_ticks * 1000 / ticks);
            }
        }
        if pid != root {
            total.memory += process_memory(&dir);
        }
        let Ok(tasks) = std::fs::read_dir(dir.join("task")) else { continue };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
            pending.extend(children.split_whitespace().filter_map(|pid| pid.parse::<libc::pid_t>().ok()));
        }
    }
    total
}

/// Checks that this kernel lists each thread's children in `/proc`, which [`sample`] needs to
/// find the run's processes (`CONFIG_PROC_CHILDREN`, Linux 3.5). Returns the cause and the
/// fix when it does not.
pub fn accounting_available() -> Result<(), (String, String)> {
    let thread = rustix::thread::gettid().as_raw_nonzero();
    let path = format!("/proc/self/task/{thread}/children");
    match std::fs::metadata(&path) {
        Ok(_) => Ok(()),
        Err(error) => Err((
            format!("{path} cannot be read ({error}), so palisade cannot find the run's processes to enforce the memory and CPU time limits"),
            "use a kernel built with CONFIG_PROC_CHILDREN, or run palisade in a delegated cgroup v2 with the memory and pids controllers".to_owned(),
        )),
    }
}

/// Returns the memory of one process in bytes: its proportional share (PSS) of anonymous
/// and shared memory and of swap, from `smaps_rollup`. Proportional shares keep the pages
/// that forked children share with their parent from counting once per child. Where
/// `smaps_rollup` cannot be read (a process that exits, Linux before 4.14), the resident
/// anonymous and shared memory and swap of `status`, which count shared pages in full.
fn process_memory(dir: &Path) -> u64 {
    if let Ok(rollup) = std::fs::read_to_string(dir.join("smaps_rollup")) {
        if rollup.contains("Pss_Anon:") {
            return ["Pss_Anon:", "Pss_Shmem:", "SwapPss:"].iter().map(|key| status_kib(&rollup, key)).sum::<u64>() * 1024;
        }
    }
    match std::fs::read_to_string(dir.join("status")) {
        Ok(status) => ["RssAnon:", "RssShmem:", "VmSwap:"].iter().map(|key| status_kib(&status, key)).sum::<u64>() * 1024,
        Err(_) => 0,
    }
}

/// The fields of `/proc/PID/stat` the accounting needs.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    /// utime + cutime, in clock ticks.
    user_ticks: u64,
    /// stime + cstime, in clock ticks.
    system_ticks: u64,
    threads: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces and parentheses,
/// so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, index 0 is field 3 (state); utime is field 14 and num_threads field 20.
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields { user_ticks: number(14)? + number(16)?, system_ticks: number(15)? + number(17)?, threads: number(20)? })
}

/// Returns a `kB` value of `/proc/PID/status` or `smaps_rollup`, or 0 when the line is
/// missing (a zombie has no memory lines).
fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises the tests that fork: each reads this process's children and memory, which
    /// another forking test running at the same time would change.
    static FORKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn this_kernel_lists_children() {
        assert_eq!(accounting_available(), Ok(()));
    }

    #[test]
    fn stat_with_a_hostile_name_parses() {
        let line = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 5 0 1234 1000 10 0 0 0";
        assert_eq!(parse_stat(line), Some(StatFields { user_ticks: 9, system_ticks: 4, threads: 5 }));
        assert_eq!(parse_stat("42 (truncated"), None);
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tpython3\nRssAnon:\t  2048 kB\nVmSwap:\t       0 kB\n";
        assert_eq!(status_kib(status, "RssAnon:"), 2048);
        assert_eq!(status_kib(status, "RssShmem:"), 0);
    }

    #[test]
    fn pages_shared_with_a_forked_child_count_once() {
        let _serial = FORKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let buffer = vec![1u8; 64 << 20];
        // SAFETY: the child only sleeps and exits, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: sleep and _exit are async-signal-safe.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let parent = process_memory(Path::new(&format!("/proc/{}", std::process::id())));
        let forked = process_memory(Path::new(&format!("/proc/{child}")));
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(parent + forked < 100 << 20, "64 MiB shared with a child counted as {} MiB", (parent + forked) >> 20);
        assert!(parent + forked >= 64 << 20, "{parent} + {forked}");
        drop(buffer);
    }

    #[test]
    fn this_process_is_measured() {
        let _serial = FORKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let buffer = vec![1u8; 8 << 20];
        // SAFETY: the child only sleeps and exits, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: sleep and _exit are async-signal-safe.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let root = std::process::id() as libc::pid_t;
        let with_root = sample(Path::new("/proc"), root, true);
        let without_root = sample(Path::new("/proc"), root, false);
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(with_root.tasks > without_root.tasks, "{with_root:?} {without_root:?}");
        assert!(without_root.tasks >= 1, "the child was not counted: {without_root:?}");
        // The root's own 8 MiB buffer is not counted; the child shares it and counts its half.
        assert!(without_root.memory < 8 << 20, "{without_root:?}");
        drop(buffer);
    }

    #[test]
    fn readings_come_sooner_near_the_memory_limit() {
        assert_eq!(next_interval(None, 0), MAX_SAMPLE_INTERVAL);
        assert_eq!(next_interval(Some(16 << 30), 1 << 30), MAX_SAMPLE_INTERVAL);
        let far = next_interval(Some(512 << 20), 0);
        let near = next_interval(Some(512 << 20), 400 << 20);
        assert!(far > near, "{far:?} {near:?}");
        assert!(far < MAX_SAMPLE_INTERVAL, "{far:?}");
        assert_eq!(next_interval(Some(512 << 20), 600 << 20), MIN_SAMPLE_INTERVAL);
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(537_092_096), "512.2 MiB");
        assert_eq!(format_size(16 << 30), "16 GiB");
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn open_file_limit_only_lowers() {
        let current = rustix::process::getrlimit(Resource::Nofile);
        let limits = Limits { max_open_files: Some(u64::MAX), ..Limits::default() };
        let list = rlimits(&limits);
        let nofile = list.iter().find(|limit| limit.name == "nofile").unwrap();
        assert_eq!(Some(nofile.soft), current.current.or(Some(u64::MAX)));
    }
}
