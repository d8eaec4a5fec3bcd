//! Gathers the facts of `palisade check` on this Mac (see [`crate::check`]).

use std::path::Path;

use crate::check::Facts;

/// The tool the report's denials are read with.
pub const LOG_TOOL: &str = "/usr/bin/log";

/// Gathers the facts. Unless palisade runs inside another sandbox, it calls `trial_run` once,
/// which runs a command under the default policy (see [`super::run::check_run`]), so that the
/// check observes the default profile compile and apply rather than assume it.
pub fn facts(trial_run: impl FnOnce() -> Result<(), String>) -> Facts {
    let sandboxed = super::is_sandboxed(std::process::id() as i32);
    let profile_applied = (!sandboxed).then(trial_run);
    Facts {
        os_version: super::machine::sysctl_string("kern.osproductversion"),
        sandboxed,
        parent: super::parent_name(),
        log_tool: Path::new(LOG_TOOL).exists(),
        profile_applied,
    }
}
