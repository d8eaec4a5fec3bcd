//! How a run ended and what it used, as pure values the binary turns into an exit status and
//! a report, and the output count that decides when `max_output` ends a run.

use std::time::{Duration, Instant};

use crate::limits::LimitStatus;
use crate::violations::Denial;

/// The way a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command exited with this code.
    Code(i32),
    /// A signal ended the command.
    Signal(i32),
    /// The wall-clock timeout ended the run.
    TimedOut,
    /// palisade ended the run at a limit.
    Killed(Limit),
}

/// Exit status when the wall-clock timeout ended the run, as `timeout(1)` gives.
pub const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when palisade killed the run at a limit: that of a SIGKILL (128 + 9).
pub const EXIT_KILLED_AT_LIMIT: u8 = 137;
/// Exit status when palisade itself failed, also after the command ran.
pub const EXIT_PALISADE_FAILED: u8 = 125;
/// Exit status of a command ended by signal N is this plus N, as a shell reports it.
const SIGNAL_BASE: i32 = 128;

impl Exit {
    /// Describes the ending for messages: `exit status 3`, `signal 5`.
    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exit status {code}"),
            Exit::Signal(signal) => format!("signal {signal}"),
            Exit::TimedOut => "the timeout".to_owned(),
            Exit::Killed(limit) => format!("a kill at the {} limit", limit.name()),
        }
    }

    /// Returns palisade's exit status for this ending, as on Linux.
    pub fn status(self) -> u8 {
        match self {
            Exit::Code(code) => code.clamp(0, 255) as u8,
            Exit::Signal(signal) => (SIGNAL_BASE + signal).clamp(0, 255) as u8,
            Exit::TimedOut => EXIT_TIMED_OUT,
            Exit::Killed(_) => EXIT_KILLED_AT_LIMIT,
        }
    }
}

/// A limit palisade itself watches during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    Output,
}

impl Limit {
    /// Returns the name the policy and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Output => "max_output",
        }
    }
}

/// A limit the run reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitEvent {
    pub limit: Limit,
    /// The limit: bytes or milliseconds.
    pub value: u64,
    pub ended_run: bool,
    pub message: String,
}

impl LimitEvent {
    pub fn timeout(timeout: Duration) -> LimitEvent {
        LimitEvent {
            limit: Limit::Timeout,
            value: timeout.as_millis() as u64,
            ended_run: true,
            message: format!("the run reached its timeout of {} and every process of it was killed", format_duration(timeout)),
        }
    }

    pub fn output(max_output: u64) -> LimitEvent {
        LimitEvent {
            limit: Limit::Output,
            value: max_output,
            ended_run: true,
            message: format!("the output reached its limit of {} and every process of the run was killed", format_size(max_output)),
        }
    }
}

/// Returns the line palisade writes on its stderr where it cut the output, in the Linux
/// backend's words.
pub fn output_cut_marker(max_output: u64, at_line_start: bool) -> String {
    let newline = if at_line_start { "" } else { "\n" };
    format!("{newline}[palisade: output cut after {}: the run reached its output limit and was stopped]\n", format_size(max_output))
}

/// The count of stdout and stderr bytes together against `max_output`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputBudget {
    max_output: Option<u64>,
    passed: u64,
    reached: bool,
}

/// The decision about one chunk the command wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// How many bytes from the chunk's start to pass on; the rest is dropped.
    pub pass: usize,
    /// Whether this chunk reached the limit, which ends the run. True for one chunk only.
    pub reached_now: bool,
}

impl OutputBudget {
    pub fn new(max_output: Option<u64>) -> OutputBudget {
        OutputBudget { max_output, passed: 0, reached: false }
    }

    /// Counts a chunk of `length` bytes and returns how much of it passes.
    pub fn take(&mut self, length: usize) -> Take {
        let Some(max) = self.max_output else { return Take { pass: length, reached_now: false } };
        let pass = max.saturating_sub(self.passed).min(length as u64) as usize;
        self.passed += pass as u64;
        let reached_now = pass < length && !self.reached;
        self.reached |= pass < length;
        Take { pass, reached_now }
    }
}

/// The clocks a supervisor watches during a run: the wall-clock timeout, and the grace after
/// a terminating signal that palisade passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    timeout: Option<Instant>,
    grace_ends: Option<Instant>,
}

/// The clock that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Timeout,
    Grace,
}

impl Deadlines {
    pub fn new(started: Instant, timeout: Option<Duration>) -> Deadlines {
        Deadlines { timeout: timeout.map(|timeout| started + timeout), grace_ends: None }
    }

    /// Returns the moment the supervisor must wake up next, or `None` when no clock runs.
    pub fn next(&self) -> Option<Instant> {
        self.timeout.into_iter().chain(self.grace_ends).min()
    }

    /// Starts the grace after a terminating signal, unless one runs already: a second signal
    /// does not postpone the kill.
    pub fn start_grace(&mut self, now: Instant, grace: Duration) {
        self.grace_ends.get_or_insert(now + grace);
    }

    /// Returns the clock that has run out at `now`, the timeout first when both have.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        if self.timeout.is_some_and(|timeout| now >= timeout) {
            Some(Expired::Timeout)
        } else if self.grace_ends.is_some_and(|grace_ends| now >= grace_ends) {
            Some(Expired::Grace)
        } else {
            None
        }
    }
}

/// The resources the run used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of the command and of the descendants it waited for, from `wait4`.
    pub user_cpu: Option<Duration>,
    pub system_cpu: Option<Duration>,
    /// The largest resident set of those processes, from `wait4`'s `ru_maxrss`, in bytes.
    pub peak_memory: Option<u64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// The protections that held during the run, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    /// The Seatbelt profile was applied and `sandbox_check` saw it on the stage.
    pub seatbelt: bool,
    /// The rlimits the stage lowered, as `NAME=VALUE` with the report's lower-case names.
    pub rlimits: Vec<String>,
    /// Each limit of the policy with the mechanism that held it, or why none did.
    pub limits: Vec<LimitStatus>,
    /// Parts of the policy not enforced as on Linux, as `what: consequence`.
    pub missing: Vec<String>,
}

/// The proxy's record of an allowlist run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRecord {
    /// The proxy's loopback address.
    pub proxy: Option<String>,
    pub denials: Vec<NetworkDenial>,
    pub denials_dropped: u64,
    pub auth_failures: u64,
}

/// One refusal of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDenial {
    pub destination: String,
    pub port: u16,
    pub protocol: String,
    pub rule: Option<String>,
    pub reason: String,
}

/// The facts the report gives about a run that started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The reason the command could not be executed, when it could not (exit status 126 or 127).
    pub exec_error: Option<String>,
    pub wall_time: Duration,
    pub usage: Usage,
    pub limits_reached: Vec<LimitEvent>,
    pub layers: Layers,
    pub network: NetworkRecord,
    /// Sandbox denials read from the system log; best effort, see [`crate::violations`].
    pub violations: Vec<Denial>,
    /// Whether `log stream` streamed from before the command started until the run ended.
    pub violations_read: bool,
    /// Processes of the run still found after the last kill round.
    pub survivors: Vec<i32>,
    /// Failures of palisade after the command may have started, one message each: to
    /// supervise the command, kill every process of the run, reap it or clean up after it.
    pub supervisor_errors: Vec<String>,
    /// Whether the last kill round read the process table and found no process of the run.
    /// For the unconfined profile, which carries no marker, that covers the command's
    /// descendants and process group only.
    pub all_killed: bool,
    /// The command's process id and every process the kill rounds found, for telling the
    /// run's denials in the log from others.
    pub run_pids: Vec<i32>,
}

impl Outcome {
    /// Returns palisade's exit status for this run (see [`run_status`]).
    pub fn status(&self) -> u8 {
        run_status(self.exit, &self.supervisor_errors)
    }
}

/// Returns palisade's exit status for a run that ended with `exit`: the command's own status,
/// or [`EXIT_PALISADE_FAILED`] when palisade failed after the command may have started
/// (`supervisor_errors`). After such a failure a process of the run may still run, or a new
/// repository may still contain its hooks. The report keeps `exit` either way.
pub fn run_status(exit: Exit, supervisor_errors: &[String]) -> u8 {
    if supervisor_errors.is_empty() { exit.status() } else { EXIT_PALISADE_FAILED }
}

/// Formats a size for messages: `1 MiB`, `1.5 KiB`, `100 bytes`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_match_linux() {
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Code(-1).status(), 0);
        assert_eq!(Exit::Signal(11).status(), 139);
        assert_eq!(Exit::TimedOut.status(), 124);
        assert_eq!(Exit::Killed(Limit::Output).status(), 137);
        assert_eq!(Exit::Signal(5).describe(), "signal 5");
    }

    #[test]
    fn supervisor_error_exits_125() {
        let errors = vec!["failed to list the processes of the run".to_owned()];
        assert_eq!(run_status(Exit::Code(0), &errors), 125);
        assert_eq!(run_status(Exit::Code(3), &errors), 125);
        assert_eq!(run_status(Exit::TimedOut, &errors), 125);
        assert_eq!(run_status(Exit::Code(3), &[]), 3);
    }

    #[test]
    fn output_budget_cuts_once() {
        let mut budget = OutputBudget::new(Some(10));
        assert_eq!(budget.take(4), Take { pass: 4, reached_now: false });
        assert_eq!(budget.take(6), Take { pass: 6, reached_now: false });
        assert_eq!(budget.take(3), Take { pass: 0, reached_now: true });
        assert_eq!(budget.take(3), Take { pass: 0, reached_now: false });
        let mut split = OutputBudget::new(Some(5));
        assert_eq!(split.take(8), Take { pass: 5, reached_now: true });
        let mut unlimited = OutputBudget::new(None);
        assert_eq!(unlimited.take(1 << 20), Take { pass: 1 << 20, reached_now: false });
    }

    #[test]
    fn deadlines_wake_at_the_earliest_clock() {
        let started = Instant::now();
        let second = Duration::from_secs(1);
        let mut deadlines = Deadlines::new(started, Some(10 * second));
        assert_eq!(deadlines.next(), Some(started + 10 * second));
        assert_eq!(deadlines.expired(started + 9 * second), None);
        deadlines.start_grace(started + 2 * second, 5 * second);
        assert_eq!(deadlines.next(), Some(started + 7 * second));
        // A second signal does not postpone the kill.
        deadlines.start_grace(started + 3 * second, 5 * second);
        assert_eq!(deadlines.next(), Some(started + 7 * second));
        assert_eq!(deadlines.expired(started + 7 * second), Some(Expired::Grace));
        assert_eq!(deadlines.expired(started + 10 * second), Some(Expired::Timeout));
    }

    #[test]
    fn deadlines_without_timeout_wait_forever() {
        let started = Instant::now();
        let deadlines = Deadlines::new(started, None);
        assert_eq!(deadlines.next(), None);
        assert_eq!(deadlines.expired(started + Duration::from_secs(86_400)), None);
    }

    #[test]
    fn marker_and_messages_name_the_limit() {
        assert_eq!(output_cut_marker(1 << 20, true), "[palisade: output cut after 1 MiB: the run reached its output limit and was stopped]\n");
        assert!(output_cut_marker(10, false).starts_with("\n[palisade: output cut after 10 bytes"));
        assert!(LimitEvent::timeout(Duration::from_millis(1500)).message.contains("timeout of 1.5s"));
        assert_eq!(LimitEvent::output(2048).value, 2048);
    }
}
