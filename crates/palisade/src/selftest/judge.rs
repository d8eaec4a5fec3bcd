//! The verdicts every platform shares: each function decides from a probe's result and what
//! selftest saw on the host whether the protection held. A host observation that contradicts
//! the probe's own report makes the probe not hold, whichever way the contradiction goes.

use crate::selftest::attempt::Attempt;
use crate::selftest::host::Finished;
use crate::selftest::Verdict;

/// Returns the verdict of a probe that printed no result line, which did not get to make its
/// attempt.
pub fn no_result(run: &Finished) -> Verdict {
    let status = run.code.map_or_else(|| "no status".to_owned(), |code| format!("status {code}"));
    let last_line = run.stderr.lines().last().unwrap_or_default().trim();
    Verdict::Skipped(format!("the probe printed no result; palisade exited with {status}: {last_line}"))
}

/// Holds when the attempt failed in any way, as reading a variable that must be absent,
/// creating a user namespace or attaching with ptrace must.
pub fn failed(run: &Finished) -> Verdict {
    let Some(result) = &run.result else { return no_result(run) };
    if result.succeeded { Verdict::NotHeld(result.detail.clone()) } else { Verdict::Held(result.detail.clone()) }
}

/// Holds when the write failed and nothing changed on the host. `changes` lists what changed.
pub fn write_refused(result: &Attempt, changes: &[String]) -> Verdict {
    match (result.succeeded, changes.is_empty()) {
        (false, true) => Verdict::Held(format!("{}; nothing changed on the host", result.detail)),
        (_, false) => Verdict::NotHeld(format!("{}; on the host {}", result.detail, changes.join(", "))),
        (true, true) => Verdict::NotHeld(format!(
            "{}; nothing changed on the host, so the write went somewhere else, but it must fail",
            result.detail
        )),
    }
}

/// Holds when the write succeeded and the file is on the host with the probe's contents.
pub fn write_inside(result: &Attempt, on_host: bool) -> Verdict {
    match (result.succeeded, on_host) {
        (true, true) => Verdict::Held(format!("{}, and the file is on the host", result.detail)),
        (true, false) => Verdict::NotHeld(format!("{}, but the file is not on the host", result.detail)),
        (false, _) => Verdict::NotHeld(format!("{}: the workspace must be writable", result.detail)),
    }
}

/// Holds when the connection failed and the listener accepted none.
pub fn connect(result: &Attempt, accepted: usize) -> Verdict {
    match (result.succeeded, accepted) {
        (false, 0) => Verdict::Held(format!("{}; the listener accepted no connection", result.detail)),
        (_, 1) => Verdict::NotHeld(format!("{}; the listener accepted the connection", result.detail)),
        (_, accepted) if accepted > 1 => Verdict::NotHeld(format!("{}; the listener accepted {accepted} connections", result.detail)),
        _ => Verdict::NotHeld(format!("{}, but the listener accepted no connection: the probe reached something else", result.detail)),
    }
}

/// Holds when the run ended with the timeout's status and the detached process `pid` did not
/// outlive it. `survived` is whether it was still running after the run, and `kill_failures`
/// lists why selftest could not terminate it then.
#[cfg(any(windows, target_os = "macos", test))]
pub fn detached_timeout(code: Option<i32>, pid: u32, survived: bool, kill_failures: &[String]) -> Verdict {
    let timeout = crate::selftest::PROBE_TIMEOUT_SECONDS;
    if survived {
        let killed = if kill_failures.is_empty() {
            "and selftest terminated it".to_owned()
        } else {
            format!("and selftest failed to terminate it ({})", kill_failures.join("; "))
        };
        return Verdict::NotHeld(format!("the detached process {pid} outlived the {timeout}s timeout, {killed}"));
    }
    let timed_out = i32::from(crate::EXIT_TIMED_OUT);
    if code != Some(timed_out) {
        let status = code.map_or_else(|| "no status".to_owned(), |code| format!("status {code}"));
        return Verdict::NotHeld(format!("the run ended with {status} instead of the timeout's {timed_out}"));
    }
    Verdict::Held(format!("the run ended at the {timeout}s timeout (status {timed_out}), and the detached process {pid} is gone"))
}

/// Attempts, runs and verdict checks for the tests of every platform's verdicts.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn failure(errno: i32, detail: &str) -> Attempt {
        Attempt { succeeded: false, errno: Some(errno), detail: detail.into(), count: None, pid: None }
    }

    pub(crate) fn success(detail: &str) -> Attempt {
        Attempt { succeeded: true, errno: None, detail: detail.into(), count: None, pid: None }
    }

    pub(crate) fn finished(result: Option<Attempt>) -> Finished {
        Finished { code: Some(0), result, stderr: String::new() }
    }

    pub(crate) fn is_held(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Held(_))
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    /// An OS error code for the failures below; the verdicts do not look at it.
    const SOME_ERROR: i32 = 5;

    #[test]
    fn write_refused_needs_the_host_to_agree() {
        let refused = failure(SOME_ERROR, "creating outside/created failed");
        assert!(is_held(&write_refused(&refused, &[])));
        // The probe saw a failure, but the directory changed on the host.
        let verdict = write_refused(&refused, &["created appeared".into()]);
        assert_eq!(verdict, Verdict::NotHeld("creating outside/created failed; on the host created appeared".into()));
        // The probe's write succeeded, but nothing reached the host.
        assert!(matches!(write_refused(&success("creating succeeded"), &[]), Verdict::NotHeld(_)));
    }

    #[test]
    fn write_inside_needs_the_file_on_the_host() {
        assert!(is_held(&write_inside(&success("creating succeeded"), true)));
        assert!(matches!(write_inside(&success("creating succeeded"), false), Verdict::NotHeld(_)));
        assert!(matches!(write_inside(&failure(SOME_ERROR, "creating failed"), false), Verdict::NotHeld(_)));
    }

    #[test]
    fn connect_needs_an_idle_listener() {
        let refused = failure(SOME_ERROR, "connecting failed");
        assert!(is_held(&connect(&refused, 0)));
        assert!(matches!(connect(&refused, 1), Verdict::NotHeld(_)));
        assert!(matches!(connect(&success("connecting succeeded"), 0), Verdict::NotHeld(_)));
        assert!(matches!(connect(&success("connecting succeeded"), 1), Verdict::NotHeld(_)));
    }

    #[test]
    fn failed_holds_only_for_a_failure() {
        assert!(is_held(&failed(&finished(Some(failure(SOME_ERROR, "unshare failed"))))));
        assert!(matches!(failed(&finished(Some(success("unshare succeeded")))), Verdict::NotHeld(_)));
        assert!(matches!(failed(&finished(None)), Verdict::Skipped(_)));
    }

    #[test]
    fn detached_timeout_needs_status_and_no_survivor() {
        let timed_out = Some(i32::from(crate::EXIT_TIMED_OUT));
        assert!(is_held(&detached_timeout(timed_out, 4242, false, &[])));
        assert!(matches!(detached_timeout(timed_out, 4242, true, &[]), Verdict::NotHeld(_)));
        assert!(matches!(detached_timeout(Some(0), 4242, false, &[]), Verdict::NotHeld(_)));
        let Verdict::NotHeld(detail) = detached_timeout(timed_out, 4242, true, &["process 4242: Access is denied.".into()]) else { panic!("a survivor must not hold") };
        assert!(detail.contains("failed to terminate it"), "{detail}");
    }
}
