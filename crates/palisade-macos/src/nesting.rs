//! Running inside another Seatbelt sandbox. A sandboxed process cannot apply a second profile:
//! `sandbox_init` fails, and `sandbox-exec` prints `sandbox_apply: Operation not permitted`.
//! Editors and other agents often start their shells sandboxed, so palisade checks before it
//! starts anything and rejects the run with a message that names the way out. There is no weaker mode to
//! fall back to: without its own profile, palisade would enforce nothing of the policy.

use std::fmt;

/// palisade was started inside a Seatbelt sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedSandbox {
    /// The name of palisade's parent process, when it could be read.
    pub parent: Option<String>,
}

impl fmt::Display for NestedSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("palisade is already running inside a Seatbelt sandbox")?;
        if let Some(parent) = &self.parent {
            write!(f, " (its parent process is {parent:?})")?;
        }
        f.write_str(
            ", and macOS does not apply a second sandbox inside one, so palisade cannot enforce its policy here. \
             Run palisade outside that sandbox: from a terminal, or from a tool configured to start it unsandboxed",
        )
    }
}

impl std::error::Error for NestedSandbox {}

/// Decides whether palisade may apply its profile, from `sandbox_check`'s result for
/// palisade's own process.
pub fn check_not_nested(already_sandboxed: bool, parent: Option<&str>) -> Result<(), NestedSandbox> {
    if already_sandboxed {
        return Err(NestedSandbox { parent: parent.map(str::to_owned) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // https://github.com/openai/codex/issues/45657: an agent nested in an outer Seatbelt
    // failed late with "sandbox_apply: Operation not permitted". palisade refuses
    // before starting anything, and names the cause and the way out.
    #[test]
    fn nested_run_is_refused_with_its_cause() {
        assert_eq!(check_not_nested(false, Some("zsh")), Ok(()));
        let error = check_not_nested(true, Some("Code Helper")).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("palisade is already running inside a Seatbelt sandbox"), "{message}");
        assert!(message.contains("\"Code Helper\""), "{message}");
        assert!(message.contains("Run palisade outside that sandbox"), "{message}");
        let unknown = check_not_nested(true, None).unwrap_err().to_string();
        assert!(!unknown.contains("parent process"), "{unknown}");
    }
}
