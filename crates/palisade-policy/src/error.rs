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

    #[error("{what} '{path}' {origin} does not exist; create it first or remove it from the policy")]
    MissingPath { what: &'static str, path: PathBuf, origin: String },

    #[error("contradictory policy: {0}")]
    Contradiction(String),

    #[error("cannot determine the home directory: HOME is unset or not absolute")]
    NoHome,
}
