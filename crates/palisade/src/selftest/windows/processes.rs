//! The processes a probe leaves on the host, found by the file name of the probe's executable,
//! which no other program on the machine has (see `Scratch::create`).

use std::time::Instant;

use super::sys::{self, ProcessEntry};
use crate::selftest::host::{POLL, SETTLE};

/// Lists the running processes whose executable is named `image`. A process list that cannot
/// be read lists nothing, and the reason goes to the log.
pub fn running(image: &str) -> Vec<ProcessEntry> {
    sys::processes_named(image).unwrap_or_else(|error| {
        tracing::warn!("failed to list the running processes: {error}");
        Vec::new()
    })
}

/// Waits up to [`SETTLE`] for the processes `pids`, of the executable `image`, to exit, and
/// returns those still running.
pub fn wait_until_gone(image: &str, pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let listed = running(image);
        let left: Vec<u32> = pids.iter().copied().filter(|pid| listed.iter().any(|process| process.pid == *pid)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// Terminates processes that selftest's probes started and that outlived their run. Returns a
/// description of each that could not be terminated.
///
/// NOTE: a process id may be reused between the listing and the termination. A process of
/// another program that got the id within that window would be terminated.
pub fn kill(pids: &[u32]) -> Vec<String> {
    pids.iter().filter_map(|&pid| sys::terminate(pid).err().map(|error| format!("process {pid}: {error}"))).collect()
}
