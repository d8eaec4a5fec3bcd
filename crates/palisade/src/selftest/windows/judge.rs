//! The verdicts of the Windows probes whose judgement rests on a Windows error code or on the
//! process list. The verdicts every platform shares are in `../judge.rs`.

use windows_sys::Win32::Foundation::ERROR_NOT_ENOUGH_QUOTA;

use crate::selftest::attempt::Attempt;
use crate::selftest::{Verdict, PROBE_TIMEOUT_SECONDS};

/// Holds when starting a process failed with `ERROR_NOT_ENOUGH_QUOTA` before the probe's cap,
/// and below `limit` when the policy sets one.
///
/// NOTE: that CreateProcess fails with ERROR_NOT_ENOUGH_QUOTA at the job's active process limit
/// is the documented mapping of the kernel's quota status, not yet seen on Windows; Wine does
/// not enforce the limit. Another code makes the probe not hold, which errs towards a false
/// alarm, never towards a false "held".
pub fn process_limit(result: &Attempt, limit: Option<u64>) -> Verdict {
    let started = result.count.unwrap_or(0);
    if result.succeeded {
        let reason = match limit {
            None => "the policy sets no process limit".to_owned(),
            Some(limit) => format!("the limit of {limit} did not stop them"),
        };
        return Verdict::NotHeld(format!("{}; {reason}", result.detail));
    }
    if result.errno != Some(ERROR_NOT_ENOUGH_QUOTA as i32) {
        return Verdict::NotHeld(format!(
            "{}: the job's process limit fails CreateProcess with ERROR_NOT_ENOUGH_QUOTA, so something else stopped the probe",
            result.detail
        ));
    }
    match limit {
        Some(limit) if started >= limit => Verdict::NotHeld(format!("{}: more than the limit of {limit}", result.detail)),
        Some(limit) => Verdict::Held(format!("{}, below the limit of {limit}", result.detail)),
        None => Verdict::Held(format!("{}; the policy sets no process limit, so a limit outside palisade stopped it", result.detail)),
    }
}

/// Holds when the run ended with the timeout's status and the detached process `pid` did not
/// outlive it. `survived` is whether it was still running after the run, and `kill_failures`
/// lists why selftest could not terminate it then.
pub fn timeout(code: Option<i32>, pid: u32, survived: bool, kill_failures: &[String]) -> Verdict {
    if survived {
        let killed = if kill_failures.is_empty() {
            "and selftest terminated it".to_owned()
        } else {
            format!("and selftest failed to terminate it ({})", kill_failures.join("; "))
        };
        return Verdict::NotHeld(format!("the detached process {pid} outlived the {PROBE_TIMEOUT_SECONDS}s timeout, {killed}"));
    }
    let timed_out = i32::from(crate::EXIT_TIMED_OUT);
    if code != Some(timed_out) {
        let status = code.map_or_else(|| "no status".to_owned(), |code| format!("status {code}"));
        return Verdict::NotHeld(format!("the run ended with {status} instead of the timeout's {timed_out}"));
    }
    Verdict::Held(format!("the run ended at the {PROBE_TIMEOUT_SECONDS}s timeout (status {timed_out}), and the detached process {pid} is gone"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::judge::fixtures::is_held;

    fn stopped(code: u32, started: u64) -> Attempt {
        let error = std::io::Error::from_raw_os_error(code as i32);
        Attempt { count: Some(started), ..Attempt::failure(&error, &format!("started {started} processes, then CreateProcess")) }
    }

    #[test]
    fn process_limit_needs_quota_error_below_limit() {
        assert!(is_held(&process_limit(&stopped(ERROR_NOT_ENOUGH_QUOTA, 14), Some(16))));
        assert!(matches!(process_limit(&stopped(ERROR_NOT_ENOUGH_QUOTA, 16), Some(16)), Verdict::NotHeld(_)));
        assert!(is_held(&process_limit(&stopped(ERROR_NOT_ENOUGH_QUOTA, 14), None)));
        // ERROR_ACCESS_DENIED: something other than the job's limit stopped the probe.
        assert!(matches!(process_limit(&stopped(5, 14), Some(16)), Verdict::NotHeld(_)));
        let all = Attempt { count: Some(200), ..Attempt::success("started all 200 processes".into()) };
        assert_eq!(process_limit(&all, None), Verdict::NotHeld("started all 200 processes; the policy sets no process limit".into()));
    }

    #[test]
    fn timeout_needs_its_status_and_no_survivor() {
        let timed_out = Some(i32::from(crate::EXIT_TIMED_OUT));
        assert!(is_held(&timeout(timed_out, 4242, false, &[])));
        assert!(matches!(timeout(timed_out, 4242, true, &[]), Verdict::NotHeld(_)));
        assert!(matches!(timeout(Some(0), 4242, false, &[]), Verdict::NotHeld(_)));
        let Verdict::NotHeld(detail) = timeout(timed_out, 4242, true, &["process 4242: Access is denied.".into()]) else { panic!("a survivor must not hold") };
        assert!(detail.contains("failed to terminate it"), "{detail}");
    }
}
