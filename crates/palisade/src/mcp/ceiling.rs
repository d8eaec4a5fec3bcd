//! The ceiling: the policy `palisade mcp` was started with. Every tool call may narrow it (a
//! shorter timeout, a working directory inside the workspace) but never widen it. It is
//! resolved once at start, and each run gets it as the same flags, with paths made absolute.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use palisade_policy::{Policy, is_within};
use serde_json::{json, Value};

use crate::cli::PolicyArgs;
use crate::mcp::scratch::Scratch;

pub struct Ceiling {
    /// The flags every run gets, without the timeout: each run passes its own.
    flags: Vec<OsString>,
    pub policy: Policy,
}

impl Ceiling {
    /// Resolves `args` as `palisade run` would, and fixes the flags that reproduce it.
    ///
    /// Each run starts in its own working directory, so relative paths are made absolute, and
    /// the workspace is always given. The policy file is copied into `scratch`: a file inside the
    /// workspace could otherwise be rewritten by one run to widen the next.
    pub fn resolve(args: &PolicyArgs, scratch: &Scratch) -> anyhow::Result<Ceiling> {
        if args.report.is_some() {
            anyhow::bail!("--report applies to `palisade run` only; each result of the mcp tool `run` carries its run's report");
        }
        let policy = args.resolve()?;
        let cwd = std::env::current_dir().context("failed to read the current directory")?;
        let mut passed = args.clone();
        passed.workspace = Some(policy.workspace.clone());
        passed.timeout = None;
        for list in [&mut passed.allow_write, &mut passed.allow_read, &mut passed.deny_read] {
            for path in list.iter_mut() {
                *path = absolute(&cwd, path);
            }
        }
        if let Some(file) = &args.policy_file {
            let copy = scratch.path().join("policy.toml");
            std::fs::copy(file, &copy).with_context(|| format!("failed to copy the policy file {} to {}", file.display(), copy.display()))?;
            passed.policy_file = Some(copy);
            // The file could have changed between the two reads.
            let again = passed.resolve()?;
            if again.to_toml() != policy.to_toml() {
                anyhow::bail!("the policy file {} changed while palisade mcp started; start it again", file.display());
            }
        }
        Ok(Ceiling { flags: passed.to_flags(), policy })
    }

    pub fn workspace(&self) -> &Path {
        &self.policy.workspace
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.policy.limits.timeout
    }

    /// Returns the `palisade run` flags for one run with `timeout`.
    pub fn run_flags(&self, timeout: Option<Duration>) -> Vec<OsString> {
        let mut flags = self.flags.clone();
        if let Some(timeout) = timeout {
            flags.push("--timeout".into());
            flags.push(format_duration(timeout).into());
        }
        flags
    }

    /// Resolves a requested working directory, relative to the workspace or absolute, to a
    /// directory inside the workspace.
    ///
    /// The check is on the canonical path, so a symlink cannot lead out. A symlink swapped in
    /// afterwards gains nothing either: `palisade run` starts the command in the workspace
    /// when its working directory is outside, and the sandbox shows the same files wherever
    /// the command starts.
    pub fn narrow_cwd(&self, requested: &str) -> Result<PathBuf, Refusal> {
        let workspace = self.workspace();
        let joined = workspace.join(requested);
        let real = std::fs::canonicalize(&joined).map_err(|error| {
            let message = if error.kind() == std::io::ErrorKind::NotFound {
                format!("the working directory {} does not exist; use an existing directory inside the workspace {}", joined.display(), workspace.display())
            } else {
                format!("cannot use the working directory {}: {error}", joined.display())
            };
            Refusal::invalid("cwd", requested, message)
        })?;
        if !is_within(&real, workspace) {
            return Err(Refusal::ceiling(
                "cwd",
                requested,
                &workspace.display().to_string(),
                format!(
                    "asked for the working directory {}, which is outside the workspace {}; use a directory inside the workspace, or ask the user to restart palisade mcp with another --workspace",
                    real.display(),
                    workspace.display()
                ),
            ));
        }
        if !real.is_dir() {
            return Err(Refusal::invalid("cwd", requested, format!("the working directory {} is not a directory", real.display())));
        }
        Ok(real)
    }

    /// Returns the timeout of a run whose request is `requested`, or the ceiling's own when the
    /// request sets none.
    pub fn narrow_timeout(&self, requested: Option<&TimeoutRequest>) -> Result<Option<Duration>, Refusal> {
        let Some(requested) = requested else {
            return Ok(self.timeout());
        };
        let Some(max) = self.timeout() else {
            return Ok(match requested {
                TimeoutRequest::Duration(duration) => Some(*duration),
                TimeoutRequest::Unlimited => None,
            });
        };
        let (asked, requested_text) = match requested {
            TimeoutRequest::Duration(duration) if *duration <= max => return Ok(Some(*duration)),
            TimeoutRequest::Duration(duration) => (format!("a timeout of {}", format_duration(*duration)), format_duration(*duration)),
            TimeoutRequest::Unlimited => ("no timeout".to_owned(), "unlimited".to_owned()),
        };
        let allowed = format_duration(max);
        Err(Refusal::ceiling(
            "timeout",
            &requested_text,
            &allowed,
            format!("asked for {asked}, but this server allows at most {allowed}; ask the user to restart palisade mcp with a longer --timeout"),
        ))
    }
}

/// A timeout that a tool call requests.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeoutRequest {
    Duration(Duration),
    Unlimited,
}

/// A tool call the server rejects with a tool error (`isError`), so that the model reads why
/// and can adjust its request.
#[derive(Debug)]
pub struct Refusal {
    pub structured: Value,
    pub message: String,
}

impl Refusal {
    /// Builds the refusal of a request for more than the ceiling allows.
    fn ceiling(setting: &str, requested: &str, allowed: &str, message: String) -> Refusal {
        let structured = json!({
            "error": "ceiling",
            "setting": setting,
            "requested": requested,
            "allowed": allowed,
            "message": message,
        });
        Refusal { structured, message }
    }

    /// Builds the refusal of a request that names something missing or unusable.
    pub fn invalid(argument: &str, requested: &str, message: String) -> Refusal {
        let structured = json!({
            "error": "invalid_argument",
            "argument": argument,
            "requested": requested,
            "message": message,
        });
        Refusal { structured, message }
    }
}

/// Makes a path flag absolute against `cwd`, as `palisade run` would read it there. Paths that
/// start with `~` or `{workspace}` are expanded by `palisade run` itself.
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if text.starts_with('~') || text.starts_with("{workspace}") { path.to_path_buf() } else { cwd.join(path) }
}

/// Formats a duration the way palisade's flags take it, exactly: `10m`, `1h30m`, `1s500ms`.
pub fn format_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    let parts = [("h", total_ms / 3_600_000), ("m", total_ms / 60_000 % 60), ("s", total_ms / 1000 % 60), ("ms", total_ms % 1000)];
    let text: String = parts.iter().filter(|(_, value)| *value > 0).map(|(unit, value)| format!("{value}{unit}")).collect();
    if text.is_empty() { "0s".to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_duration_round_trips() {
        for (duration, text) in [
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_millis(250), "250ms"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(palisade_policy::parse_duration(text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn absolute_keeps_expanded_forms() {
        let cwd = Path::new("/srv/project");
        assert_eq!(absolute(cwd, Path::new("docs")), Path::new("/srv/project/docs"));
        assert_eq!(absolute(cwd, Path::new("/etc/hosts")), Path::new("/etc/hosts"));
        assert_eq!(absolute(cwd, Path::new("~/.cache")), Path::new("~/.cache"));
        assert_eq!(absolute(cwd, Path::new("{workspace}/target")), Path::new("{workspace}/target"));
    }
}
