//! Gathers the facts of `palisade check` on this Mac (see [`crate::check`]).

use std::path::Path;

use crate::check::Facts;

/// The tool the report's denials are read with.
pub const LOG_TOOL: &str = "/usr/bin/log";

/// Gathers the facts. Unless palisade runs inside another sandbox, it starts `stage_exe` as
/// the stage once, with a profile that allows everything, so that the check observes
/// `sandbox_init` work rather than assume it.
pub fn facts(stage_exe: Result<&Path, String>) -> Facts {
    let sandboxed = super::is_sandboxed(std::process::id() as i32);
    let profile_applied = (!sandboxed).then(|| stage_exe.and_then(super::run::check_profile));
    Facts {
        os_version: super::machine::sysctl_string("kern.osproductversion"),
        sandboxed,
        parent: super::parent_name(),
        log_tool: Path::new(LOG_TOOL).exists(),
        profile_applied,
    }
}
