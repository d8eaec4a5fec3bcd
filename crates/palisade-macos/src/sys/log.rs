//! Sandbox denials read from the unified log while a run goes on, for the report. Best
//! effort, see [`crate::violations`].

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::marker::RunMarker;
use crate::violations::{log_verdict, parse_denial, LogState, Observed, LOG_STREAM_ARGUMENTS};

use super::check::LOG_TOOL;

/// How long palisade waits for `log stream` to print its first line before it starts the
/// command anyway. A later first line leaves the report's denials marked incomplete.
const START_WAIT: Duration = Duration::from_secs(1);

/// The maximum number of denials kept from one run's log, so a flood of them cannot grow
/// palisade's memory without bound.
const MAX_OBSERVED: usize = 10_000;

/// The characters of `log stream`'s first stderr line kept for the warning.
const MAX_ERROR_LINE: usize = 500;

/// A running `log stream` and the threads that read its stdout and stderr.
pub struct LogReader {
    child: Child,
    thread: JoinHandle<Vec<Observed>>,
    errors: JoinHandle<Option<String>>,
    /// Whether `log stream` printed its first line before [`LogReader::start`] returned, and
    /// so before the command started.
    streaming_at_start: bool,
}

/// The denials the log gave for one run, and whether they cover all of it.
pub struct LogRead {
    pub observed: Vec<Observed>,
    /// Whether `log stream` streamed from before the command started until the run ended.
    pub complete: bool,
    /// The reason the denials are incomplete, when they are.
    pub warning: Option<String>,
}

impl LogReader {
    /// Starts `log stream` for sandbox denials. Each denial's process is checked for the run's
    /// marker as its line arrives.
    pub fn start(marker: RunMarker) -> std::io::Result<LogReader> {
        let mut command = Command::new(LOG_TOOL);
        command.args(LOG_STREAM_ARGUMENTS).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        super::signals::unblock_in_child(&mut command);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // Reads stderr to its end, so `log stream` never blocks on a full pipe, and keeps the
        // first line for the warning.
        let errors = std::thread::Builder::new().name("palisade-log-errors".into()).spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let first = lines.next().and_then(Result::ok).map(|line| line.chars().take(MAX_ERROR_LINE).collect());
            lines.for_each(drop);
            first
        })?;

        let (started, first_line) = mpsc::channel();
        let thread = std::thread::Builder::new().name("palisade-log".into()).spawn(move || {
            let mut observed = Vec::new();
            let mut started = Some(started);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
                let Some(denial) = parse_denial(&line) else { continue };
                if observed.len() < MAX_OBSERVED {
                    let marked = super::is_run_member(denial.pid, &marker);
                    observed.push(Observed { denial, marked });
                }
            }
            observed
        })?;
        // `log stream` prints a header line once it filters; denials before it are not seen.
        // NOTE: that the header comes on stdout, as the line `parse_denial`'s tests skip, is
        // unverified on a Mac. If it comes on stderr, every report marks the denials incomplete.
        let streaming_at_start = first_line.recv_timeout(START_WAIT).is_ok();
        if !streaming_at_start {
            tracing::debug!("log stream printed nothing within {START_WAIT:?}; starting the command anyway");
        }
        Ok(LogReader { child, thread, errors, streaming_at_start })
    }

    /// Waits `grace` for late lines, stops `log stream` and returns the denials it saw, and
    /// whether it ran until the run ended. Call it once the run has ended.
    pub fn stop(mut self, grace: Duration) -> LogRead {
        let state = match self.child.try_wait() {
            Ok(None) => LogState::Running,
            Ok(Some(status)) => LogState::Exited(status.code()),
            // Whether it still runs is unknown, so the denials count as incomplete.
            Err(_) => LogState::Exited(None),
        };
        if state == LogState::Running {
            std::thread::sleep(grace);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let observed = self.thread.join().unwrap_or_default();
        let first_error_line = self.errors.join().ok().flatten();
        let (complete, warning) = log_verdict(self.streaming_at_start, &state, first_error_line.as_deref());
        LogRead { observed, complete, warning }
    }
}
