//! The verdicts of the Windows probes whose judgement rests on a Windows error code or on the
//! process list. The verdicts every platform shares are in `../judge.rs`.

use windows_sys::Win32::Foundation::ERROR_NOT_ENOUGH_QUOTA;

use crate::selftest::attempt::Attempt;
use crate::selftest::Verdict;

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
}
