//! The processes a probe leaves on the host, found through `/proc`.

use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Instant;

use crate::selftest::host::{POLL, SETTLE};

/// A process of the host whose `argv[0]` is the probe's binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeProcess {
    pub pid: i32,
    /// The pid of its parent.
    pub parent: i32,
    /// Clock ticks after boot at which it started, which distinguishes it from a later process
    /// with the same pid.
    pub start_time: u64,
    /// Whether it leads its own session, as a process that called setsid does.
    pub session_leader: bool,
}

/// Lists the running processes of the host whose `argv[0]` is `exe`: the probes and every
/// process they forked. Palisade's own processes have another `argv[0]`.
pub fn probe_processes(exe: &Path) -> Vec<ProbeProcess> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|&byte| byte == 0).next() == Some(exe.as_os_str().as_bytes())
        })
        .filter_map(read_process)
        .collect()
}

/// Reads a running process from `/proc/PID/stat`, or returns `None` once it has exited.
fn read_process(pid: i32) -> Option<ProbeProcess> {
    parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/PID/stat` (proc_pid_stat(5)), or returns `None` for a zombie, which has
/// exited.
fn parse_stat(pid: i32, stat: &str) -> Option<ProbeProcess> {
    // The command name in field 2 may contain spaces and parentheses, so it ends at the last `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // `fields[0]` is field 3, so field N is `fields[N - 3]`.
    let state = *fields.first()?;
    let parent: i32 = fields.get(4 - 3)?.parse().ok()?;
    let session: i32 = fields.get(6 - 3)?.parse().ok()?;
    let start_time: u64 = fields.get(22 - 3)?.parse().ok()?;
    (state != "Z" && state != "X").then_some(ProbeProcess { pid, parent, start_time, session_leader: session == pid })
}

fn still_running(process: &ProbeProcess) -> bool {
    read_process(process.pid).is_some_and(|now| now.start_time == process.start_time)
}

/// Waits up to [`SETTLE`] for `processes` to exit, and returns those still running.
pub fn wait_until_gone(processes: &[ProbeProcess]) -> Vec<ProbeProcess> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let running: Vec<ProbeProcess> = processes.iter().copied().filter(still_running).collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(POLL);
    }
}

/// Kills processes that selftest's probes started and that outlived their run.
pub fn kill(processes: &[ProbeProcess]) {
    for process in processes {
        // NOTE: the pid could be reused between this check and the signal, which the start time
        // narrows to a window of microseconds but cannot close.
        if still_running(process) {
            if let Some(pid) = rustix::process::Pid::from_raw(process.pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    // Fields 3 to 22 of proc_pid_stat(5), after a command name with spaces and parentheses.
    const STAT: &str = "4242 (pal (x) y) S 4241 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 8192 2 18446744073709551615";

    #[test]
    fn stat_gives_parent_session_and_start_time() {
        let process = parse_stat(4242, STAT).unwrap();
        assert_eq!(process, ProbeProcess { pid: 4242, parent: 4241, start_time: 987654, session_leader: true });
        let member = parse_stat(4243, &STAT.replacen("4242 (", "4243 (", 1)).unwrap();
        assert!(!member.session_leader);
    }

    #[test]
    fn zombie_is_not_running() {
        assert_eq!(parse_stat(4242, &STAT.replace(") S ", ") Z ")), None);
        assert_eq!(parse_stat(4242, "4242 (truncated"), None);
    }

    #[test]
    fn this_process_is_listed_by_its_argv0() {
        let argv0 = std::env::args_os().next().unwrap();
        let found = probe_processes(Path::new(&argv0));
        let own = std::process::id() as i32;
        assert!(found.iter().any(|process| process.pid == own), "{found:?}");
        assert!(probe_processes(Path::new("/nonexistent/palisade-probe")).is_empty());
    }
}
