//! The processes a probe leaves on the host, found by the path of their executable: the copy
//! of palisade in the scratch workspace, which no other program on the machine runs.

use std::path::Path;
use std::time::Instant;

use palisade_macos::sys;

use crate::selftest::host::{POLL, SETTLE};

/// Lists the running processes whose executable is `exe`. A process table that cannot be read
/// lists nothing, and the reason goes to the log.
pub fn probe_processes(exe: &Path) -> Vec<i32> {
    let processes = sys::list_processes().unwrap_or_else(|error| {
        tracing::warn!("failed to list the running processes: {error}");
        Vec::new()
    });
    processes.into_iter().map(|process| process.pid).filter(|&pid| sys::executable_path(pid).as_deref() == Some(exe)).collect()
}

/// Waits up to [`SETTLE`] for the processes `pids` of `exe` to exit, and returns those still
/// running.
pub fn wait_until_gone(exe: &Path, pids: &[i32]) -> Vec<i32> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let running = probe_processes(exe);
        let left: Vec<i32> = pids.iter().copied().filter(|pid| running.contains(pid)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// Kills processes that selftest's probes started and that outlived their run. Returns a
/// description of each that could not be killed.
///
/// NOTE: a process id may be reused between the listing and the signal. A process of another
/// program that got the id within that window would be killed.
pub fn kill(pids: &[i32]) -> Vec<String> {
    let mut failures = Vec::new();
    for &pid in pids {
        // SAFETY: kill takes a pid and a signal number and touches no memory of this process.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            failures.push(format!("process {pid}: {}", std::io::Error::last_os_error()));
        }
    }
    failures
}
