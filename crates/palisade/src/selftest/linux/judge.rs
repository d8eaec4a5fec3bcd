//! The verdicts of the Linux probes whose judgement rests on an errno or on `/proc`. The verdicts
//! every platform shares are in `../judge.rs`.

use std::io;

use super::processes::ProbeProcess;
use crate::selftest::attempt::Attempt;
use crate::selftest::host::Finished;
use crate::selftest::{Verdict, PROBE_TIMEOUT_SECONDS};

pub use crate::selftest::judge::{connect, failed, no_result, write_inside, write_refused};

/// Errnos of a system call refused before the kernel looked at its arguments: EPERM from the
/// seccomp filter or a sysctl, ENOSYS from a kernel without the call, EACCES from a security
/// module.
const REFUSALS: &[i32] = &[libc::EPERM, libc::ENOSYS, libc::EACCES];

/// Holds when the system call was refused (see [`REFUSALS`]). `host` is the same call made by
/// selftest outside the sandbox, which shows whether the sandbox is what refuses it.
pub fn refused(run: &Finished, host: &Attempt) -> Verdict {
    let Some(result) = &run.result else { return no_result(run) };
    let is_refusal = |attempt: &Attempt| !attempt.succeeded && attempt.errno.is_some_and(|errno| REFUSALS.contains(&errno));
    if !is_refusal(result) {
        return Verdict::NotHeld(format!("{}: the kernel processed the call", result.detail));
    }
    let outside = match host.errno {
        _ if host.succeeded => "succeeds".to_owned(),
        Some(errno) => format!("fails with {}", io::Error::from_raw_os_error(errno)),
        None => "fails".to_owned(),
    };
    if is_refusal(host) {
        Verdict::Held(format!("{}; outside the sandbox it {outside} too, so this machine refuses it anyway", result.detail))
    } else {
        Verdict::Held(format!("{}; outside the sandbox it {outside}", result.detail))
    }
}

/// Holds when the planted key cannot be read inside. Selftest gives the key to the command's
/// user, so only the sandbox can make the read fail. It leaves the key out of the home
/// directory's tmpfs (ENOENT), or mounts an unreadable stand-in over it where the home
/// directory lies in a writable root (EACCES).
pub fn credential_hidden(result: &Attempt) -> Verdict {
    match (result.succeeded, result.errno) {
        (false, Some(libc::ENOENT)) => Verdict::Held(result.detail.clone()),
        (false, _) => Verdict::Held(format!("{}; an unreadable stand-in covers the key", result.detail)),
        (true, _) => Verdict::NotHeld(result.detail.clone()),
    }
}

/// Holds when `fork` failed with EAGAIN before the probe's cap, and below `limit` when the
/// policy sets one.
pub fn process_limit(result: &Attempt, limit: Option<u64>) -> Verdict {
    let started = result.count.unwrap_or(0);
    if result.succeeded {
        let reason = match limit {
            None => "the policy sets no process limit".to_owned(),
            Some(limit) => format!("the limit of {limit} did not stop them"),
        };
        return Verdict::NotHeld(format!("{}; {reason}", result.detail));
    }
    if result.errno != Some(libc::EAGAIN) {
        return Verdict::NotHeld(format!("{}: the process limit answers EAGAIN, so something else stopped the probe", result.detail));
    }
    match limit {
        Some(limit) if started >= limit => Verdict::NotHeld(format!("{}: more than the limit of {limit}", result.detail)),
        Some(limit) => Verdict::Held(format!("{}, below the limit of {limit}", result.detail)),
        None => Verdict::Held(format!("{}; the policy sets no process limit, so a limit outside palisade stopped it", result.detail)),
    }
}

/// Holds when the run ended with the timeout's status and no detached process outlived it.
pub fn timeout(code: Option<i32>, detached: &[ProbeProcess], survivors: &[ProbeProcess]) -> Verdict {
    let pids = |processes: &[ProbeProcess]| processes.iter().map(|process| process.pid.to_string()).collect::<Vec<_>>().join(", ");
    if !survivors.is_empty() {
        return Verdict::NotHeld(format!(
            "the detached process (host pid {}) outlived the {PROBE_TIMEOUT_SECONDS}s timeout, and selftest killed it",
            pids(survivors)
        ));
    }
    let timed_out = i32::from(crate::EXIT_TIMED_OUT);
    if code != Some(timed_out) {
        let status = code.map_or_else(|| "no status".to_owned(), |code| format!("status {code}"));
        return Verdict::NotHeld(format!("the run ended with {status} instead of the timeout's {timed_out}"));
    }
    Verdict::Held(format!(
        "the run ended at the {PROBE_TIMEOUT_SECONDS}s timeout (status {timed_out}), and the detached process (host pid {}) is gone",
        pids(detached)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::judge::fixtures::*;

    #[test]
    fn credential_must_stay_unread() {
        assert_eq!(credential_hidden(&failure(libc::ENOENT, "reading failed")), Verdict::Held("reading failed".into()));
        assert!(is_held(&credential_hidden(&failure(libc::EACCES, "reading failed"))));
        assert!(matches!(credential_hidden(&success("read 56 bytes")), Verdict::NotHeld(_)));
    }

    #[test]
    fn refused_tells_the_filter_from_the_kernel() {
        let inside = finished(Some(failure(libc::EPERM, "io_uring_setup failed")));
        let host_processes = failure(libc::EFAULT, "io_uring_setup failed");
        let Verdict::Held(detail) = refused(&inside, &host_processes) else { panic!("EPERM inside must hold") };
        assert!(detail.contains("outside the sandbox it fails with Bad address"), "{detail}");
        let Verdict::Held(detail) = refused(&inside, &failure(libc::EPERM, "io_uring_setup failed")) else { panic!("EPERM inside must hold") };
        assert!(detail.contains("so this machine refuses it anyway"), "{detail}");
        let reached = finished(Some(failure(libc::EFAULT, "io_uring_setup failed")));
        assert!(matches!(refused(&reached, &host_processes), Verdict::NotHeld(_)));
        assert!(matches!(refused(&finished(None), &host_processes), Verdict::Skipped(_)));
    }

    #[test]
    fn process_limit_needs_eagain_below_the_limit() {
        let stopped = Attempt { count: Some(13), ..failure(libc::EAGAIN, "started 13 processes, then fork failed") };
        assert!(is_held(&process_limit(&stopped, Some(16))));
        assert!(matches!(process_limit(&stopped, Some(10)), Verdict::NotHeld(_)));
        assert!(is_held(&process_limit(&stopped, None)));
        let other = Attempt { count: Some(13), ..failure(libc::ENOMEM, "started 13 processes, then fork failed") };
        assert!(matches!(process_limit(&other, Some(16)), Verdict::NotHeld(_)));
        let all = Attempt { count: Some(200), ..success("started all 200 processes") };
        assert_eq!(process_limit(&all, None), Verdict::NotHeld("started all 200 processes; the policy sets no process limit".into()));
    }

    #[test]
    fn timeout_needs_its_status_and_no_survivor() {
        let detached = [ProbeProcess { pid: 4242, parent: 4241, start_time: 1, session_leader: true }];
        let timed_out = Some(i32::from(crate::EXIT_TIMED_OUT));
        assert!(is_held(&timeout(timed_out, &detached, &[])));
        assert!(matches!(timeout(timed_out, &detached, &detached), Verdict::NotHeld(_)));
        assert!(matches!(timeout(Some(0), &detached, &[]), Verdict::NotHeld(_)));
    }
}
