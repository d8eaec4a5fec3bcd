//! The palisade policy model, shared by every backend.
//!
//! Input arrives in two raw forms, a TOML policy file ([`RawPolicy`]) and command-line
//! overrides ([`Overrides`]). [`resolve`] merges them over a built-in profile, expands `~` and
//! `{workspace}`, canonicalises every path and checks for contradictions, producing a
//! [`Policy`]. Backends consume only [`Policy`]; none of them sees raw input.
//!
//! The crate reads the host (files, metadata, symlinks) and changes nothing on it, with one
//! exception: [`scrub`], which the Unix backends call after a run to neutralise the git
//! repositories the command created.

mod builtin;
mod env;
mod error;
mod git;
pub mod network;
mod parse;
mod paths;
mod raw;
mod resolve;
#[cfg(unix)]
pub mod scrub;

pub use builtin::{CREDENTIAL_STORES, HOME_CACHES, HOME_EXEC_CONFIG, HOME_TOOLCHAIN, PROTECTED_IN_HOME, PROTECTED_IN_WRITABLE, SYSTEM_READ};
pub use env::looks_secret;
pub use git::git_entries;
pub use error::PolicyError;
pub use parse::{parse_duration, parse_size};
pub use paths::is_within;
pub use raw::{RawNumber, RawPolicy, RawSource};
pub use resolve::{
    resolve, Context, EnvVar, Filesystem, Limits, NetworkMode, Ports, Overrides, Policy, Profile,
};
