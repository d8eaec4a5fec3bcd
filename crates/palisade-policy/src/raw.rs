//! The policy file as written: plain data that rejects unknown fields and keeps the position of
//! every value, so a later error can name the line it came from.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::error::PolicyError;

/// One policy file, parsed but not yet checked or resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Base profile: `read-only`, `workspace-write` or `unconfined`.
    pub profile: Option<Spanned<String>>,
    /// Run with the layers available when some are missing.
    pub allow_degraded: Option<bool>,
    /// Allow `ptrace` inside the sandbox, for debuggers and `strace`.
    pub allow_ptrace: Option<bool>,
    #[serde(default)]
    pub filesystem: RawFilesystem,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub env: RawEnv,
    /// The file's path and text, for error messages. Not part of the TOML.
    #[serde(skip)]
    pub source: Option<RawSource>,
}

/// The text and path of a policy file, kept to turn byte offsets into line numbers.
#[derive(Debug, Clone)]
pub struct RawSource {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    #[serde(default)]
    pub writable: Vec<Spanned<String>>,
    #[serde(default)]
    pub readable: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_read: Vec<Spanned<String>>,
    #[serde(default)]
    pub protected: Vec<Spanned<String>>,
    #[serde(default)]
    pub copy_on_write: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Whether names on the allowlist resolve inside the sandbox, to loopback addresses palisade
    /// serves.
    pub resolve_allowed: Option<Spanned<bool>>,
    /// TCP ports the command may listen on; absent means any.
    pub listen: Option<Vec<Spanned<i64>>>,
    /// TCP ports of the sandbox's loopback that the host reaches at the same port of its own.
    #[serde(default)]
    pub expose: Vec<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub timeout: Option<Spanned<RawNumber>>,
    pub cpu_time: Option<Spanned<RawNumber>>,
    pub memory: Option<Spanned<RawNumber>>,
    pub max_procs: Option<Spanned<RawNumber>>,
    pub max_file_size: Option<Spanned<RawNumber>>,
    pub max_open_files: Option<Spanned<RawNumber>>,
    pub tmp_size: Option<Spanned<RawNumber>>,
    pub max_output: Option<Spanned<RawNumber>>,
    pub cpus: Option<Spanned<RawNumber>>,
}

/// A limit as written: a TOML number (seconds for a duration, bytes for a size), or a string
/// such as `"10m"`, `"4G"` or `"unlimited"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawNumber {
    Integer(u64),
    Float(f64),
    Text(String),
}

impl RawNumber {
    /// Returns the value as text, the form command-line flags take.
    pub fn to_text(&self) -> String {
        match self {
            RawNumber::Integer(value) => value.to_string(),
            RawNumber::Float(value) => value.to_string(),
            RawNumber::Text(text) => text.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnv {
    /// Variables passed even when their names look like credentials.
    #[serde(default)]
    pub pass: Vec<Spanned<String>>,
    /// Variables set to a fixed value inside the sandbox.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

impl RawPolicy {
    /// Reads and parses a policy file. Syntax errors and unknown fields name the file and line.
    pub fn from_file(path: &Path) -> Result<RawPolicy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Self::from_str_at(&text, path)
    }

    /// Parses policy text that was read from `path`.
    pub fn from_str_at(text: &str, path: &Path) -> Result<RawPolicy, PolicyError> {
        let source = RawSource { path: path.to_owned(), text: text.to_owned() };
        match toml::from_str::<RawPolicy>(text) {
            Ok(mut policy) => {
                policy.source = Some(source);
                Ok(policy)
            }
            Err(error) => {
                let origin = match error.span() {
                    Some(span) => source.origin(span.start),
                    None => format!("in {}", path.display()),
                };
                Err(PolicyError::Syntax { origin, message: error.message().trim().to_owned() })
            }
        }
    }
}

impl RawSource {
    /// Describes a byte offset as "in FILE line N".
    pub fn origin(&self, offset: usize) -> String {
        let line = 1 + self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|&&b| b == b'\n').count();
        format!("in {} line {line}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawPolicy, PolicyError> {
        RawPolicy::from_str_at(text, Path::new("policy.toml"))
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let error = parse("[filesystem]\nwritable = []\nwriteable = [\"/x\"]\n").unwrap_err().to_string();
        assert!(error.contains("writeable"), "{error}");
        assert!(error.contains("policy.toml line 3"), "{error}");
    }

    #[test]
    fn unknown_table_is_rejected() {
        let error = parse("[netwrok]\nmode = \"none\"\n").unwrap_err().to_string();
        assert!(error.contains("netwrok"), "{error}");
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn wrong_type_names_line() {
        let error = parse("\n\n[limits]\nmax_procs = true\n").unwrap_err().to_string();
        assert!(error.contains("line 4"), "{error}");
    }

    #[test]
    fn full_policy_parses() {
        let policy = parse(
            r#"
profile = "workspace-write"
allow_degraded = false
allow_ptrace = true
[filesystem]
writable = ["{workspace}", "~/.cache/pip"]
readable = ["/srv/datasets"]
deny_read = ["~/.ssh"]
protected = [".husky"]
[network]
mode = "none"
[limits]
timeout = "10m"
memory = "4G"
max_procs = 512
[env]
pass = ["GITHUB_TOKEN"]
set = { LANG = "C.UTF-8" }
"#,
        )
        .unwrap();
        assert_eq!(policy.filesystem.writable.len(), 2);
        assert_eq!(policy.limits.max_procs.map(|v| v.get_ref().to_text()), Some("512".to_owned()));
        assert_eq!(policy.env.set.get("LANG").map(String::as_str), Some("C.UTF-8"));
    }
}
