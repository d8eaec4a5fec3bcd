//! Errors raised while reading and resolving a policy.

use std::path::PathBuf;

/// A policy that cannot be used. Every variant names the offending value and, where the value
/// came from a policy file, the file and line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("failed to read policy file {path}")]
    Read { path: PathBuf, source: std::io::Error },

    #[error("invalid policy {origin}: {message}")]
    Syntax { origin: String, message: String },

    #[error("invalid {what} '{value}' {origin}: {reason}")]
    InvalidValue { what: &'static str, value: String, origin: String, reason: String },

    #[error("{what} '{path}' {origin} does not exist; create it first or name an existing path")]
    MissingPath { what: &'static str, path: PathBuf, origin: String },

    #[error("contradictory policy: {0}")]
    Contradiction(String),

    /// The allowlist needs more ports served inside the sandbox than
    /// [`crate::network::MAX_SERVED_PORTS`]. `name_ports` counts the ports of resolvable names,
    /// and is `None` without `resolve_allowed`.
    #[error("{}", too_many_served_ports_message(*forwarded, *name_ports, *max))]
    TooManyServedPorts { forwarded: usize, name_ports: Option<usize>, max: usize },

    #[error("cannot determine the home directory: HOME is unset or not absolute")]
    NoHome,
}

fn too_many_served_ports_message(forwarded: usize, name_ports: Option<usize>, max: usize) -> String {
    match name_ports {
        None => format!(
            "the allowlist needs {forwarded} ports served inside the sandbox (one for each loopback address entry with a port), \
             more than the maximum of {max}, so list fewer of these entries"
        ),
        Some(name_ports) => format!(
            "the allowlist needs {} ports served inside the sandbox ({forwarded} for loopback address entries with a port, \
             {name_ports} for the ports of exact names with resolve_allowed), more than the maximum of {max}, so list fewer \
             entries, give each name one port (a name without a port takes 80 and 443), or drop resolve_allowed",
            forwarded + name_ports
        ),
    }
}
