//! A run's identity in its own profile, so that palisade can find every process of the run,
//! including the ones that left its process group and were adopted by launchd.
//!
//! A Seatbelt profile is inherited by every descendant and cannot be removed, so the profile
//! itself can mark them. It allows one path that exists nowhere (the member path) and denies a
//! second one (the outsider path), both named after the run's random id. `sandbox_check`
//! queries another process's sandbox about a path without touching the file system, and a
//! process of this run allows the first and denies the second. An unsandboxed process allows both, and a
//! process of any other sandbox treats the two alike, because no other profile names them.

use std::fmt;

/// A run's random id: lower-case hexadecimal, 16 to 64 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    pub fn parse(text: &str) -> Result<RunId, String> {
        let is_hex = text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !(16..=64).contains(&text.len()) || !is_hex {
            return Err(format!("expected 16 to 64 lower-case hexadecimal digits, got {text:?}"));
        }
        Ok(RunId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two paths that tell this run's processes from all others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMarker {
    /// Allowed for `file-read-metadata` by this run's profile.
    pub member: String,
    /// Denied for `file-read-metadata` at the end of this run's profile, whatever the policy
    /// allows before it.
    pub outsider: String,
}

/// The operation both marker paths are checked with.
pub const MARKER_OPERATION: &str = "file-read-metadata";

impl RunMarker {
    /// Returns the marker of a run. The paths sit directly below `/`, where no policy path
    /// leads: a hidden path cannot cover `/` itself.
    pub fn for_run(run_id: &RunId) -> RunMarker {
        RunMarker { member: format!("/.palisade-run-{run_id}/member"), outsider: format!("/.palisade-run-{run_id}/outsider") }
    }
}

/// Decides from three `sandbox_check` results whether a process belongs to the run.
pub fn is_member(sandboxed: bool, member_allowed: bool, outsider_allowed: bool) -> bool {
    sandboxed && member_allowed && !outsider_allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_long_lower_case_hex() {
        assert!(RunId::parse("0123456789abcdef").is_ok());
        for bad in ["", "0123456789abcde", "0123456789ABCDEF", "0123456789abcdeg", "../../etc/passwd0", &"a".repeat(65)] {
            assert!(RunId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_this_runs_sandbox_is_a_member() {
        assert!(is_member(true, true, false));
        // Not sandboxed: every check passes.
        assert!(!is_member(false, true, true));
        // A sandbox that reads everything, or one that reads nothing.
        assert!(!is_member(true, true, true));
        assert!(!is_member(true, false, false));
    }

    #[test]
    fn marker_paths_name_the_run() {
        let marker = RunMarker::for_run(&RunId::parse("00112233445566778899aabbccddeeff").unwrap());
        assert_eq!(marker.member, "/.palisade-run-00112233445566778899aabbccddeeff/member");
        assert_ne!(marker.member, marker.outsider);
    }
}
