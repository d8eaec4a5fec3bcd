//! How a run ended and what it used, as pure values the binary turns into an exit status and
//! a report.
//!
//! A Windows exit code is 32 bits, and a crash ends a process with an `NTSTATUS` code such as
//! `0xC0000005` in place of a signal. [`ExitCode::from_raw`] maps every code onto the 0 to 255
//! of palisade's exit status the way a POSIX shell would read the same event, so a harness
//! written for Linux reads it right:
//!
//! - 0 to 255 pass unchanged.
//! - The crash codes that have a POSIX signal counterpart give 128 + that signal's number.
//!   Access violation, stack overflow and in-page error give 139 (SIGSEGV). Illegal and
//!   privileged instructions give 132 (SIGILL), integer and float faults 136 (SIGFPE), a
//!   breakpoint 133 (SIGTRAP), fail-fast and `abort` 134 (SIGABRT), Ctrl+C 130 (SIGINT).
//! - Every other code, such as `exit(-1)` or `exit(1000)`, gives 255, never a value below 256
//!   that could read as success.
//!
//! The raw code is kept in [`Outcome::raw_exit_code`] for the report.

use std::fmt;
use std::time::Duration;

/// A process exit code mapped onto palisade's exit status, with the raw code it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode {
    /// The exit status palisade returns.
    pub status: u8,
    /// The code `GetExitCodeProcess` returned.
    pub raw: u32,
    /// The name of the crash code, for the codes mapped onto a signal.
    pub crash: Option<&'static str>,
}

/// Crash codes from the Windows SDK's `ntstatus.h`, with the POSIX signal of the same event.
const CRASHES: &[(u32, &str, u8)] = &[
    (0xC000_0005, "STATUS_ACCESS_VIOLATION", 11),
    (0xC000_00FD, "STATUS_STACK_OVERFLOW", 11),
    (0xC000_0006, "STATUS_IN_PAGE_ERROR", 11),
    (0xC000_001D, "STATUS_ILLEGAL_INSTRUCTION", 4),
    (0xC000_0096, "STATUS_PRIVILEGED_INSTRUCTION", 4),
    (0xC000_0094, "STATUS_INTEGER_DIVIDE_BY_ZERO", 8),
    (0xC000_0095, "STATUS_INTEGER_OVERFLOW", 8),
    (0xC000_008E, "STATUS_FLOAT_DIVIDE_BY_ZERO", 8),
    (0xC000_0090, "STATUS_FLOAT_INVALID_OPERATION", 8),
    (0x8000_0003, "STATUS_BREAKPOINT", 5),
    (0xC000_0409, "STATUS_STACK_BUFFER_OVERRUN", 6),
    (0xC000_0602, "STATUS_FAIL_FAST_EXCEPTION", 6),
    (0xC000_013A, "STATUS_CONTROL_C_EXIT", 2),
];

impl ExitCode {
    /// Maps a raw exit code; see the module documentation for the rules.
    pub fn from_raw(raw: u32) -> ExitCode {
        if let Ok(status) = u8::try_from(raw) {
            return ExitCode { status, raw, crash: None };
        }
        match CRASHES.iter().find(|(code, _, _)| *code == raw) {
            Some((_, name, signal)) => ExitCode { status: 128 + signal, raw, crash: Some(name) },
            None => ExitCode { status: 255, raw, crash: None },
        }
    }
}

/// The way a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command exited on its own, or crashed.
    Code(ExitCode),
    /// The wall-clock timeout ended the run.
    TimedOut,
    /// palisade ended the run at a limit.
    Killed(Limit),
}

/// A limit that a run can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    Memory,
    CpuTime,
    MaxProcs,
    Output,
}

impl Limit {
    /// Returns the name the policy and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Memory => "memory",
            Limit::CpuTime => "cpu_time",
            Limit::MaxProcs => "max_procs",
            Limit::Output => "max_output",
        }
    }
}

/// A limit the run reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitEvent {
    pub limit: Limit,
    /// The limit: bytes, milliseconds or a count.
    pub value: u64,
    /// Whether the run ended because of it. At `max_procs`, process creation fails and the run
    /// goes on.
    pub ended_run: bool,
    pub message: String,
}

/// The resources the run's processes used, from the job's accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub user_cpu: Option<Duration>,
    pub kernel_cpu: Option<Duration>,
    /// The most committed memory of the job's processes together. `None` where the system does
    /// not account for it (Wine returns zero).
    pub peak_memory: Option<u64>,
    /// The most processes alive at once, counted from the job's messages, which Windows may
    /// drop under load: a lower bound. `None` when no message arrived.
    pub peak_processes: Option<u64>,
    /// Processes ever started in the job, palisade's runner included in a confined run.
    pub total_processes: Option<u64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// The protections that held during the run, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    /// The job object: kill on close, no breakaway, and the limits.
    pub job: bool,
    /// The sandbox account the command ran as; `None` when it ran as the caller.
    pub account: Option<String>,
    /// Whether the command ran with the restricted Low integrity token.
    pub restricted_token: bool,
    /// Whether setup's ACL entries were verified before the run.
    pub acl_verified: bool,
    /// Whether setup's firewall filters were verified before the run.
    pub firewall_verified: bool,
}

/// A request palisade's proxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDenial {
    /// The host as the client requested it, without the port.
    pub destination: String,
    pub port: u16,
    /// `connect`, `http` or `socks5`.
    pub protocol: &'static str,
    /// The deny entry that decided, or `None` when the destination is not on the allowlist.
    pub rule: Option<String>,
    /// Why, and what to change to allow it.
    pub reason: String,
}

/// What palisade's proxy recorded during a run (`--net allowlist`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRecord {
    /// The address the proxy listened on, or `None` when the run had no proxy.
    pub proxy: Option<String>,
    pub denials: Vec<NetworkDenial>,
    /// Denials past the proxy's cap, counted but not listed.
    pub denials_dropped: u64,
    /// Connections refused because they lacked the run's credential: some local process other
    /// than the command, or a client that dropped the credential from the proxy URL.
    pub auth_failures: u64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The exit code of the command's process as Windows returned it; `None` when palisade
    /// ended the run or the command never started.
    pub raw_exit_code: Option<u32>,
    /// Why the command could not be started (statuses 126 and 127).
    pub exec_error: Option<String>,
    pub wall_time: Duration,
    pub usage: Usage,
    pub limits_reached: Vec<LimitEvent>,
    pub enforced: Enforced,
    pub network: NetworkRecord,
}

/// Exit status when the program could not be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// Exit status when the program was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Formats a size for messages: `512 MiB`, `1.5 KiB`, `100 bytes`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let size = 1u64 << shift;
        if bytes >= size {
            return if bytes % size == 0 { format!("{} {unit}", bytes >> shift) } else { format!("{:.1} {unit}", bytes as f64 / size as f64) };
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

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.crash {
            Some(name) => write!(f, "{name} (0x{:08X})", self.raw),
            None => write!(f, "{}", self.raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_up_to_255_pass_unchanged() {
        for raw in [0, 1, 7, 124, 125, 137, 255] {
            assert_eq!(ExitCode::from_raw(raw), ExitCode { status: raw as u8, raw, crash: None });
        }
    }

    #[test]
    fn crash_codes_map_to_their_signal() {
        let cases = [(0xC000_0005, 139), (0xC000_00FD, 139), (0xC000_001D, 132), (0xC000_0094, 136), (0x8000_0003, 133), (0xC000_0409, 134), (0xC000_013A, 130)];
        for (raw, status) in cases {
            let code = ExitCode::from_raw(raw);
            assert_eq!(code.status, status, "0x{raw:08X}");
            assert!(code.crash.is_some());
        }
        assert_eq!(ExitCode::from_raw(0xC000_0005).to_string(), "STATUS_ACCESS_VIOLATION (0xC0000005)");
    }

    #[test]
    fn other_codes_never_read_as_success() {
        for raw in [256, 512, 1000, 0xFFFF_FFFF, 0xC000_0135, 0xE000_0001] {
            assert_eq!(ExitCode::from_raw(raw), ExitCode { status: 255, raw, crash: None }, "{raw}");
        }
    }

    #[test]
    fn sizes_and_durations_format_like_linux() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
