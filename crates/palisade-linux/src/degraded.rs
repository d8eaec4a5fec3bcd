//! Degraded mode: the run when namespaces cannot be created and the user allowed it
//! (`--allow-degraded`). Landlock carries the filesystem policy, seccomp the network-off rule
//! and the system call filter, rlimits the limits. What is weaker than a full run is listed in
//! docs/security.md:
//!
//! - hidden paths are refused by Landlock instead of absent, and none may lie inside a writable
//!   root (Landlock cannot take a right away below a directory that has it);
//! - protected paths inside writable roots are writable during the run and put back after it
//!   ([`Guard`]);
//! - the command sees the host's `/proc` and process list, and gets a private temporary
//!   directory through `TMPDIR` instead of a private `/tmp`;
//! - no socket can be created (only `socketpair`), since host UNIX sockets are otherwise
//!   reachable; `/dev/shm` is not writable;
//! - no pseudo-terminal can be opened, since the host's `/dev/pts` has the caller's others
//!   ([`TERMINALS`]);
//! - before Landlock ABI 5, device ioctls are not mediated.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_policy::{is_within, NetworkMode, Policy};

use crate::guard::Guard;
use crate::init::{confine, Confinement};
use crate::landlock::Rules;
use crate::limits::Limit;
use crate::seccomp::{self, FilterOptions};
use crate::{sys, Error, Exit, Layers, Outcome};

/// Landlock must handle truncation (ABI 3), because nothing else stops a read-only file being
/// emptied. The test of the refusal reports ABI 2 to palisade through a seccomp notification,
/// on a kernel with a newer ABI.
const MINIMUM_ABI: i32 = 3;
/// The maximum number of entries granted one by one to leave hidden paths out.
const MAX_SPLIT_ENTRIES: usize = 4096;

const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// Only the controlling terminal. The host's `/dev/pts` has the caller's other
/// pseudo-terminals, whose typing the command could read, and a new one opened through
/// `/dev/ptmx` could not be used without it. Programs that open a pseudo-terminal therefore
/// fail in degraded mode.
const TERMINALS: &[&str] = &["/dev/tty"];

/// Refuses a policy degraded mode cannot enforce, naming the conflict.
fn check_enforceable(policy: &Policy) -> Result<(), Error> {
    let fs = &policy.filesystem;
    if let Some(hidden) = fs.hidden.iter().find(|hidden| fs.writable.iter().any(|root| is_within(hidden, root))) {
        return Err(Error::Sandbox(format!(
            "degraded mode cannot hide {}: it lies inside a writable root, and Landlock cannot take access away below a directory it grants; remove the deny-read entry or run where namespaces are available",
            hidden.display()
        )));
    }
    if !policy.ports.expose.is_empty() {
        return Err(Error::Sandbox(
            "degraded mode cannot expose ports: without a network namespace there is no network of the sandbox's own to expose; drop --expose or run where namespaces are available".into(),
        ));
    }
    // The proxy's only protection in allowlist mode is that it is the sandbox's only route out.
    // Without a network namespace, Landlock's TCP rules can limit connections by port only, so
    // the proxy's port on any other host would be reachable too, and UDP not at all.
    if let NetworkMode::Allowlist { .. } = policy.network {
        return Err(Error::Sandbox(
            "degraded mode cannot enforce network mode 'allowlist': without a network namespace the proxy cannot be the only route out; use --net none, --net full, or run where namespaces are available".into(),
        ));
    }
    Ok(())
}

/// Grants `path` for reading, leaving out every hidden path below it: a directory that
/// contains one is split into its entries, recursively, and gets no right of its own.
fn grant_read_except(path: &Path, hidden: &[PathBuf], rules: &mut Rules, budget: &mut usize) -> Result<(), Error> {
    if hidden.iter().any(|hidden| is_within(path, hidden)) {
        return Ok(());
    }
    if !hidden.iter().any(|hidden| is_within(hidden, path)) {
        rules.read.push(path.to_owned());
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|error| Error::setup("list", path.display(), error))?;
    for entry in entries {
        let entry = entry.map_err(|error| Error::setup("list", path.display(), error))?;
        *budget = budget.checked_sub(1).ok_or_else(|| {
            Error::Sandbox(format!(
                "degraded mode cannot leave the hidden paths out of {}: too many entries to grant one by one",
                path.display()
            ))
        })?;
        grant_read_except(&entry.path(), hidden, rules, budget)?;
    }
    Ok(())
}

/// Returns the Landlock rules of a degraded run: the policy's paths as they are on the host.
fn rules(policy: &Policy, tmp: &Path) -> Result<Rules, Error> {
    let fs = &policy.filesystem;
    let mut rules = Rules { deny_tcp: policy.network == NetworkMode::None, ..Rules::default() };
    let mut budget = MAX_SPLIT_ENTRIES;
    // The host's /tmp and /var/tmp are shared with every other program: the private directory
    // replaces them.
    let shared_tmp = |path: &Path| path == Path::new("/tmp") || path == Path::new("/var/tmp");
    for path in fs.read_only.iter().chain(&fs.copy_on_write) {
        if !shared_tmp(path) {
            grant_read_except(path, &fs.hidden, &mut rules, &mut budget)?;
        }
    }
    rules.write.extend(fs.writable.iter().filter(|path| !shared_tmp(path)).cloned());
    if fs.tmp_writable {
        rules.write.push(tmp.to_owned());
    } else {
        rules.read.push(tmp.to_owned());
    }
    rules.devices.extend(DEVICES.iter().map(PathBuf::from));
    rules.terminals.extend(TERMINALS.iter().map(PathBuf::from));
    rules.proc.push("/proc".into());
    Ok(rules)
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let path = base.join(format!("palisade-{}-{nanos:08x}{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(Error::setup("create", path.display(), error)),
            }
        }
        Err(Error::Sandbox("failed to create a private temporary directory".into()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks the command left in the directory.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills every descendant of this process and reaps them. Palisade is their subreaper, so
/// processes that detached (`setsid`, double fork) are still its children.
fn kill_descendants() {
    for _ in 0..1000 {
        let children = children_of_self();
        if children.is_empty() {
            return;
        }
        for pid in &children {
            let _ = sys::kill(*pid, libc::SIGKILL);
        }
        for pid in children {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a valid local integer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

fn children_of_self() -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return pids };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(text.split_whitespace().filter_map(|pid| pid.parse::<libc::pid_t>().ok()));
        }
    }
    pids
}

pub fn run(policy: &Policy, argv: &[OsString], mut layers: Layers, fix: &str, on_start: &mut dyn FnMut(&Layers)) -> Result<Outcome, Error> {
    let abi = layers.landlock_abi.filter(|&abi| abi >= MINIMUM_ABI).ok_or_else(|| {
        Error::Sandbox(format!(
            "{}; degraded mode needs Landlock ABI {MINIMUM_ABI} or later instead, and {}\nfix: {fix}",
            layers.missing.first().map(String::as_str).unwrap_or("namespaces are unavailable"),
            match layers.landlock_abi {
                Some(abi) => format!("this kernel offers ABI {abi}"),
                None => "this kernel has no Landlock".to_owned(),
            }
        ))
    })?;
    if !layers.seccomp {
        return Err(Error::Sandbox(format!("degraded mode needs seccomp, which is unavailable\nfix: {fix}")));
    }
    check_enforceable(policy)?;

    let tmp = TempDir::create()?;
    let mut rules = rules(policy, &tmp.0)?;
    let no_sockets = policy.network == NetworkMode::None;
    if abi >= crate::landlock::TCP_ABI {
        rules.bind_ports = policy.ports.listen.clone();
    }
    layers.landlock_tcp = (rules.deny_tcp || rules.bind_ports.is_some()) && abi >= crate::landlock::TCP_ABI;
    // Without a user namespace, RLIMIT_NPROC would count every process of the user on the
    // host, so the process limit rests on the accounting alone.
    let rlimits: Vec<_> = crate::limits::rlimits(&policy.limits).into_iter().filter(|limit| limit.name() != "nproc").collect();
    layers.rlimits = rlimits.iter().map(crate::limits::Rlimit::describe).collect();
    // The ruleset is created here, so that a rule the kernel rejects is reported with its
    // reason. In the child before execve, an error reaches palisade only as an errno.
    let ruleset = crate::landlock::prepare(&rules, MINIMUM_ABI).map_err(|reason| Error::Sandbox(format!("degraded mode failed to apply Landlock: {reason}")))?;
    let confinement = Confinement {
        rlimits,
        landlock: None,
        seccomp: Some(seccomp::build(FilterOptions { allow_ptrace: policy.allow_ptrace, no_sockets })),
    };
    let fs = &policy.filesystem;
    let guarded: Vec<PathBuf> = fs
        .protected
        .iter()
        .filter(|path| fs.writable.iter().any(|root| is_within(path, root)))
        .cloned()
        .collect();
    let guard = Guard::capture(&guarded)
        .map_err(|reason| Error::Sandbox(format!("degraded mode cannot guard the protected paths: {reason}")))?;
    let revert = crate::supervisor::RevertList::capture(&fs.revert_if_created);
    let new_repositories = palisade_policy::scrub::NewRepositories::capture(&fs.writable, &fs.git_entries);

    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
    let signal_fd = sys::block_into_signalfd(&signals).map_err(|e| Error::setup("block", "signals", e))?;

    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).current_dir(&policy.cwd).env_clear();
    for var in &policy.env {
        command.env(&var.name, &var.value);
    }
    for name in ["TMPDIR", "TMP", "TEMP"] {
        command.env(name, &tmp.0);
    }
    // The child writes a failure of its confinement here. From a pre_exec hook std passes only
    // an errno on, which would read as a failure to execute the command.
    let (setup_read, setup_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::setup("create", "the pipe for setup errors", e.into()))?;
    // SAFETY: the closure runs in the forked child before exec. Palisade is single-threaded, so
    // allocating there is safe, and everything it calls only affects the child.
    unsafe {
        command.pre_exec(move || {
            let confined = (|| -> Result<(), String> {
                sys::reset_signals().map_err(|error| format!("failed to reset the signal dispositions: {error}"))?;
                rustix::process::setsid().map_err(|error| format!("failed to start a new session: {error}"))?;
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(|error| format!("failed to set the parent-death signal: {error}"))?;
                rustix::thread::set_no_new_privs(true).map_err(|error| format!("failed to set no_new_privs: {error}"))?;
                confine(&confinement, Some(&ruleset))
            })();
            confined.map_err(|text| {
                let _ = rustix::io::write(&setup_write, text.as_bytes());
                std::io::Error::other(text)
            })
        });
    }
    let mut streams = crate::output::prepare(policy.limits.max_output).map_err(|e| Error::setup("create", "the output pipes", e))?;
    let [stdout, stderr] = std::mem::take(&mut streams.write_ends);
    if let Some(fd) = stdout {
        command.stdout(fd);
    }
    if let Some(fd) = stderr {
        command.stderr(fd);
    }
    on_start(&layers);
    let started = Instant::now();
    let spawned = command.spawn();
    // Only the command has the write ends of the output pipes now. No process has the setup
    // pipe's write end: palisade's copy went with the hook, and the child's closed at its exit
    // or execve.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let mut text = [0u8; 4096];
            if let Ok(read @ 1..) = rustix::io::read(&setup_read, &mut text) {
                return Err(Error::Sandbox(format!("degraded mode failed to confine the command: {}", String::from_utf8_lossy(&text[..read]))));
            }
            let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            let reason = format!("{}: {error}", argv[0].to_string_lossy());
            let usage = Default::default();
            return Ok(Outcome { exit: Exit::Code(code), wall_time: started.elapsed(), exec_error: Some((code, reason)), layers, usage, limits_reached: Vec::new(), network: Default::default() });
        }
    };
    let pid = child.id() as libc::pid_t;
    let pumps_started = streams.start(policy.limits.max_output).and_then(|mut pumps| pumps.start_all().map(|()| pumps));
    let pumps = match pumps_started {
        Ok(pumps) => pumps,
        Err(error) => {
            kill_descendants();
            return Err(Error::setup("start", "the output threads", error));
        }
    };
    // Orphans are reparented to palisade, the subreaper, so the tree is read from palisade
    // itself, whose own memory and threads are left out.
    let proc = Path::new("/proc");
    let mut monitor = crate::limits::Monitor::new(&policy.limits, proc, std::process::id() as libc::pid_t, false);
    let deadline = policy.limits.timeout.map(|timeout| started + timeout);
    let exit = loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::setup("wait for", "the command", e))? {
            use std::os::unix::process::ExitStatusExt;
            break match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Code(1),
            };
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = child.wait();
            let timeout = policy.limits.timeout.unwrap_or_default();
            monitor.record(Limit::Timeout, timeout.as_millis() as u64, true, format!(
                "the run did not finish within its timeout of {}; every process was killed",
                crate::limits::format_duration(timeout)
            ));
            break Exit::TimedOut;
        }
        if let Some(limit) = monitor.poll() {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = child.wait();
            break Exit::Killed(limit);
        }
        let mut fds = [
            rustix::event::PollFd::new(&signal_fd, rustix::event::PollFlags::IN),
            rustix::event::PollFd::from_borrowed_fd(pumps.limit_fd(), rustix::event::PollFlags::IN),
        ];
        let wait = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        if rustix::event::poll(&mut fds, Some(&wait)).unwrap_or(0) > 0 {
            // The output threads write one byte when the output limit is reached.
            if !fds[1].revents().is_empty() {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = child.wait();
                let max = policy.limits.max_output.unwrap_or_default();
                monitor.record(Limit::Output, max, true, format!(
                    "the run wrote more than its output limit of {}; the output was cut and every process was killed",
                    crate::limits::format_size(max)
                ));
                break Exit::Killed(Limit::Output);
            }
            if !fds[0].revents().is_empty() {
                if let Ok((signal, _)) = sys::read_signal(signal_fd.as_fd()) {
                    crate::init::forward(pid, signal);
                }
            }
        }
    };
    kill_descendants();
    let (stdout_bytes, stderr_bytes, output_merged) = pumps.finish(Duration::from_secs(5));
    let mut usage = crate::limits::Usage { stdout_bytes, stderr_bytes, output_merged, ..Default::default() };
    let rusage = sys::children_usage();
    usage.user_cpu = Some(Duration::from_micros(rusage.user_us));
    usage.system_cpu = Some(Duration::from_micros(rusage.system_us));
    usage.peak_memory = Some(rusage.max_rss_kib * 1024);
    if let Some((memory, tasks, (user, system))) = monitor.peaks() {
        // Processes killed with the run are reaped during teardown, and their time does not
        // always reach the usage of init, so the last reading can be the larger.
        usage.user_cpu = usage.user_cpu.max(Some(user));
        usage.system_cpu = usage.system_cpu.max(Some(system));
        usage.peak_memory = usage.peak_memory.max(Some(memory));
        usage.peak_tasks = Some(tasks);
    }
    let wall_time = started.elapsed();
    for note in guard.restore() {
        eprintln!("palisade: {note}");
    }
    revert.apply();
    // NOTE: the Linux report has no field for palisade's own failures after the run, so a
    // failed scrub shows only in the warnings `scrub` prints on stderr.
    let _scrub_failures = new_repositories.scrub();
    drop(tmp);
    Ok(Outcome { exit, wall_time, exec_error: None, layers, usage, limits_reached: monitor.events, network: Default::default() })
}
