//! Gathers the facts of `palisade check` on this Mac (see [`crate::check`]).

use std::path::Path;

use crate::check::Facts;

/// The tool the report's denials are read with.
pub const LOG_TOOL: &str = "/usr/bin/log";

pub fn facts() -> Facts {
    Facts {
        os_version: super::machine::sysctl_string("kern.osproductversion"),
        sandboxed: super::is_sandboxed(std::process::id() as i32),
        parent: super::parent_name(),
        log_tool: Path::new(LOG_TOOL).exists(),
    }
}
