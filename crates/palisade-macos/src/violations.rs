//! Sandbox denials from the unified log, as best-effort entries of the run report.
//!
//! The kernel logs each refusal as `Sandbox: NAME(PID) deny(COUNT) OPERATION TARGET`. The log
//! can start late, folds repeats into "duplicate report" lines and reuses process ids, so a
//! denial read here is something palisade observed, never proof that nothing else was
//! denied. palisade keeps the denials of the run's own processes ([`crate::tree`]).

/// The arguments of the `log` command that streams sandbox denials, one line each.
///
/// NOTE: the predicate follows what other Seatbelt tools use. The line format, and whether an
/// account without administrator rights may stream the log, are unverified on a Mac.
pub const LOG_STREAM_ARGUMENTS: &[&str] =
    &["stream", "--style", "compact", "--predicate", r#"sender == "Sandbox" AND eventMessage CONTAINS "deny(""#];

/// One refusal seen in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub process: String,
    pub pid: i32,
    /// The operation, such as `file-read-data` or `network-outbound`.
    pub operation: String,
    /// The path, address or name the operation was refused on; empty for operations without
    /// one.
    pub target: String,
}

/// Parses a log line that contains a sandbox denial, wherever the message starts in the line.
/// Returns `None` for every other line, "duplicate report" summaries included.
pub fn parse_denial(line: &str) -> Option<Denial> {
    let message = &line[line.find("Sandbox: ")? + "Sandbox: ".len()..];
    // A process name may hold spaces and parentheses, so the pid is the last parenthesised
    // number before " deny(".
    let deny = message.find(") deny(")?;
    let open = message[..deny].rfind('(')?;
    let pid: i32 = message[open + 1..deny].parse().ok()?;
    let process = message[..open].to_owned();
    let after = &message[deny + ") deny(".len()..];
    let after = &after[after.find(") ")? + 2..];
    let (operation, target) = after.split_once(' ').unwrap_or((after, ""));
    if process.is_empty() || operation.is_empty() {
        return None;
    }
    Some(Denial { process, pid, operation: operation.to_owned(), target: target.trim_end().to_owned() })
}

/// The maximum number of denials a report lists. More are counted instead.
pub const MAX_LISTED_DENIALS: usize = 100;

/// A denial as the log reader saw it, with whether its process carried the run's marker when
/// the line arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub denial: Denial,
    pub marked: bool,
}

/// Selects the denials of the run: those of a process that carried the run's marker when its
/// line arrived, or whose id is one of `known`, the run's processes palisade saw itself. Each
/// distinct denial is listed once, in the order seen, up to [`MAX_LISTED_DENIALS`]. Returns
/// the list and how many of the run's denials were left out.
///
/// A process that exited before its line arrived is found only through `known`, so the list
/// can miss denials of short-lived processes.
pub fn select_run_denials(observed: &[Observed], known: &[i32]) -> (Vec<Denial>, u64) {
    let mut listed: Vec<Denial> = Vec::new();
    let mut left_out = 0;
    for seen in observed.iter().filter(|seen| seen.marked || known.contains(&seen.denial.pid)) {
        if listed.contains(&seen.denial) {
            continue;
        }
        if listed.len() == MAX_LISTED_DENIALS {
            left_out += 1;
        } else {
            listed.push(seen.denial.clone());
        }
    }
    (listed, left_out)
}

/// The state of `log stream` when the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    /// Still running.
    Running,
    /// Exited with this code, or with `None` when a signal ended it.
    Exited(Option<i32>),
}

/// Returns whether the report may claim that palisade read the log during the whole run, and
/// a warning when it may not. That takes both ends of the run: `streaming_at_start`, whether
/// `log stream` printed its first line (the header it prints once it filters) before the
/// command started, and a `state` of [`LogState::Running`] when the run ended. An exit during
/// the run fails the claim whatever its status, 0 included, because denials after it were not
/// read. `first_error_line` is the first line `log stream` wrote on stderr.
pub fn log_verdict(streaming_at_start: bool, state: &LogState, first_error_line: Option<&str>) -> (bool, Option<String>) {
    let said = first_error_line.map_or_else(String::new, |line| format!(": {line}"));
    let exited = match state {
        LogState::Running if streaming_at_start => return (true, None),
        LogState::Running => {
            return (false, Some(format!("log stream printed nothing before the command started, so the report's sandbox denials are incomplete{said}")));
        }
        LogState::Exited(Some(code)) => format!("exit status {code}"),
        LogState::Exited(None) => "a signal".to_owned(),
    };
    (false, Some(format!("log stream ended with {exited} during the run, so the report's sandbox denials are incomplete{said}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_lines_parse() {
        let line = "2026-12-05 10:00:00.123 E  kernel[0:1a2b] (Sandbox) Sandbox: cat(4242) deny(1) file-read-data /Users/dev/ws/.env";
        assert_eq!(
            parse_denial(line),
            Some(Denial { process: "cat".into(), pid: 4242, operation: "file-read-data".into(), target: "/Users/dev/ws/.env".into() })
        );
        let spaced = "Sandbox: Code Helper (Plugin)(77) deny(2) file-write-create /Users/dev/My Files/x";
        let denial = parse_denial(spaced).unwrap();
        assert_eq!((denial.process.as_str(), denial.pid, denial.target.as_str()), ("Code Helper (Plugin)", 77, "/Users/dev/My Files/x"));
        let network = parse_denial("Sandbox: curl(9) deny(1) network-outbound 10.99.0.1:80").unwrap();
        assert_eq!((network.operation.as_str(), network.target.as_str()), ("network-outbound", "10.99.0.1:80"));
        let no_target = parse_denial("Sandbox: node(10) deny(1) process-fork").unwrap();
        assert_eq!((no_target.operation.as_str(), no_target.target.as_str()), ("process-fork", ""));
    }

    #[test]
    fn run_denials_are_selected_once() {
        let denial = |pid: i32, target: &str| Denial { process: "cat".into(), pid, operation: "file-read-data".into(), target: target.into() };
        let observed = [
            Observed { denial: denial(10, "/ws/.env"), marked: true },
            Observed { denial: denial(10, "/ws/.env"), marked: true },
            Observed { denial: denial(11, "/other"), marked: false },
            Observed { denial: denial(12, "/ws/x"), marked: false },
        ];
        let (listed, left_out) = select_run_denials(&observed, &[12]);
        assert_eq!(listed, vec![denial(10, "/ws/.env"), denial(12, "/ws/x")]);
        assert_eq!(left_out, 0);
        let many: Vec<Observed> = (0..MAX_LISTED_DENIALS + 3).map(|index| Observed { denial: denial(10, &format!("/f{index}")), marked: true }).collect();
        let (listed, left_out) = select_run_denials(&many, &[]);
        assert_eq!((listed.len(), left_out), (MAX_LISTED_DENIALS, 3));
    }

    #[test]
    fn other_lines_are_skipped() {
        for line in [
            "Filtering the log data using \"sender == Sandbox\"",
            "Sandbox: 3 duplicate reports for cat deny(1) file-read-data /x",
            "kernel: something else",
            "Sandbox: cat(x) deny(1) file-read-data /x",
        ] {
            assert_eq!(parse_denial(line), None, "{line}");
        }
    }

    #[test]
    fn log_read_only_while_stream_ran() {
        assert_eq!(log_verdict(true, &LogState::Running, None), (true, None));
        let (read, warning) = log_verdict(true, &LogState::Exited(Some(64)), Some("log: stream failed"));
        assert!(!read);
        assert_eq!(warning.as_deref(), Some("log stream ended with exit status 64 during the run, so the report's sandbox denials are incomplete: log: stream failed"));
        let (read, warning) = log_verdict(true, &LogState::Exited(None), None);
        assert!(!read);
        assert!(warning.unwrap().contains("ended with a signal"));
    }

    #[test]
    fn log_exit_with_status_zero_is_incomplete() {
        let (read, warning) = log_verdict(true, &LogState::Exited(Some(0)), None);
        assert!(!read);
        assert_eq!(warning.as_deref(), Some("log stream ended with exit status 0 during the run, so the report's sandbox denials are incomplete"));
    }

    #[test]
    fn log_silent_at_start_is_incomplete() {
        let (read, warning) = log_verdict(false, &LogState::Running, None);
        assert!(!read);
        assert_eq!(warning.as_deref(), Some("log stream printed nothing before the command started, so the report's sandbox denials are incomplete"));
        let (read, _) = log_verdict(false, &LogState::Exited(Some(0)), None);
        assert!(!read);
    }
}
