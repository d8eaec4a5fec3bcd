//! The error of every Windows operation: the call that failed, on what, and the code.

use std::fmt;

/// A Windows error code from `GetLastError` or a returned status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u32);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = std::io::Error::from_raw_os_error(self.0 as i32);
        write!(f, "{message} (0x{:08X})", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Windows call failed.
    #[error("{call} failed for {object}: {code}")]
    Call { call: &'static str, object: String, code: Code },
    /// Something setup prepares is missing or different; `fix` says what to run.
    #[error("{what} is not set up: {fix}")]
    NotSetUp { what: String, fix: String },
    /// A function this Windows (or Wine) lacks, looked up at run time.
    #[error("{function} is not available in {library} on this system: {consequence}")]
    Unavailable { function: &'static str, library: &'static str, consequence: &'static str },
    #[error(transparent)]
    Plan(#[from] crate::PlanError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// `palisade setup` could not check one of its steps, and so changed nothing.
    #[error("palisade setup changed nothing: it could not check the step \"{step}\": {cause} (`palisade check` lists what this system lacks)")]
    SetupCheckFailed { step: String, cause: String },
    /// A call succeeded but its effect did not take, as the read-back showed.
    #[error("{what} did not take effect: {consequence}")]
    NotEnforced { what: &'static str, consequence: &'static str },
}

impl Error {
    /// The error of the call that just failed, from `GetLastError`.
    pub fn last(call: &'static str, object: impl fmt::Display) -> Error {
        Error::Call { call, object: object.to_string(), code: Code(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32) }
    }
}
