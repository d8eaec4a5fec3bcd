//! Errors of the Linux backend.

use std::io;
use std::path::PathBuf;

/// The reason a sandbox could not be set up. Nothing runs when any of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused to create the namespaces the policy needs.
    #[error("cannot create a user namespace: {cause}\nfix: {fix}, or pass --allow-degraded to run with Landlock and seccomp only")]
    UserNamespaces { cause: String, fix: String },

    /// A protection layer the policy needs is missing on this machine.
    #[error("{layer} is not available: {cause}\nfix: {fix}, or pass --allow-degraded to run without it")]
    LayerMissing { layer: &'static str, cause: String, fix: String },

    /// Palisade runs as the host's root user without CAP_SYS_ADMIN. Root mode needs that
    /// capability, and in a user namespace of its own the command would still be the host's
    /// root user, owner of every root-only file.
    #[error("palisade runs as the host's root user without CAP_SYS_ADMIN, so it cannot run the command as an unprivileged user: in a user namespace the command would still be root on the host and could read root-only files such as /etc/shadow\nfix: run palisade as an unprivileged user, or as root with CAP_SYS_ADMIN")]
    RootWithoutAdmin,

    /// Palisade runs as root with CAP_SYS_ADMIN but lacks other capabilities that building the
    /// sandbox as root needs, listed in `missing`.
    #[error("palisade runs as root but lacks {missing}, which it needs to build the sandbox as root\nfix: run palisade with these capabilities (a container runtime may drop them; with Docker, --cap-add), or as an unprivileged user")]
    RootCapabilitiesMissing { missing: String },

    /// A setup step in the supervisor failed.
    #[error("failed to {op} {object}")]
    Setup { op: &'static str, object: String, source: io::Error },

    /// A setup step inside the new namespaces failed; the message comes from the sandbox's init.
    #[error("{0}")]
    Sandbox(String),

    /// The policy requests something this build cannot enforce yet.
    #[error("{feature} is not enforced by this build of palisade; refusing to run without it")]
    Unsupported { feature: String },

    /// `--pty` was requested for a run that cannot give the command a terminal of its own.
    #[error("--pty is not available for this run: {reason}\nfix: {fix}")]
    PtyUnavailable { reason: String, fix: String },

    /// A path that must be a directory or file is neither, or cannot be used as a mount source.
    #[error("cannot use {path} in the sandbox: {reason}")]
    Path { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn setup(op: &'static str, object: impl std::fmt::Display, source: io::Error) -> Error {
        Error::Setup { op, object: object.to_string(), source }
    }
}
