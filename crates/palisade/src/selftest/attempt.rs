//! The result line that `palisade selftest-probe` prints inside the sandbox for the host side
//! of selftest to read, and the attempts that are the same on every platform.
//!
//! An attempt reports what happened and nothing more: whether the operation succeeded and, if
//! not, the OS error code. The host side decides whether the protection held. An attempt never
//! prints what it read, so a run that leaks a file or a variable's value does not leak it any
//! further.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Marks the result line among anything else on the probe's stdout.
const RESULT_PREFIX: &str = "palisade-selftest-result ";

/// The contents of the file the write-inside probe creates, which the host side expects to find.
pub const INSIDE_CONTENT: &str = "written by palisade selftest inside the sandbox\n";

/// The outcome of a probe's operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Whether the operation succeeded.
    pub succeeded: bool,
    /// The OS error code of the failure that ended the attempt, if any: an errno on Linux, a
    /// Windows error code on Windows.
    pub errno: Option<i32>,
    /// A description of the outcome, for the verdict.
    pub detail: String,
    /// How many processes the process-limit probe started.
    pub count: Option<u64>,
    /// The process id of a process the probe leaves running on purpose, for the host side to
    /// watch: the detached child of the timeout probe on Windows.
    pub pid: Option<u32>,
}

impl Attempt {
    pub fn success(detail: String) -> Attempt {
        Attempt { succeeded: true, errno: None, detail, count: None, pid: None }
    }

    pub fn failure(error: &io::Error, what: &str) -> Attempt {
        Attempt { succeeded: false, errno: error.raw_os_error(), detail: format!("{what} failed: {error}"), count: None, pid: None }
    }

    /// Returns the attempt of an operation that failed without an OS error code.
    pub fn failed_without_code(detail: String) -> Attempt {
        Attempt { succeeded: false, errno: None, detail, count: None, pid: None }
    }

    /// Returns the attempt of an operation that returned `result`.
    pub fn of<T>(result: io::Result<T>, what: &str) -> Attempt {
        match result {
            Ok(_) => Attempt::success(format!("{what} succeeded")),
            Err(error) => Attempt::failure(&error, what),
        }
    }

    /// Renders the result line.
    fn to_line(&self) -> String {
        let value = serde_json::json!({
            "succeeded": self.succeeded,
            "errno": self.errno,
            "detail": self.detail,
            "count": self.count,
            "pid": self.pid,
        });
        format!("{RESULT_PREFIX}{value}")
    }

    /// Parses a result line, or returns `None` for any other line.
    pub fn from_line(line: &str) -> Option<Attempt> {
        let value: serde_json::Value = serde_json::from_str(line.strip_prefix(RESULT_PREFIX)?).ok()?;
        Some(Attempt {
            succeeded: value["succeeded"].as_bool()?,
            errno: value["errno"].as_i64().and_then(|errno| i32::try_from(errno).ok()),
            detail: value["detail"].as_str()?.to_owned(),
            count: value["count"].as_u64(),
            pid: value["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()),
        })
    }

    pub fn print(&self) {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{}", self.to_line());
        let _ = stdout.flush();
    }
}

/// Returns the last two components of `path`, which name a file well enough in a verdict
/// without the temporary directory in front.
pub fn short(path: &Path) -> String {
    let components: Vec<_> = path.components().collect();
    let tail = &components[components.len().saturating_sub(2)..];
    tail.iter().collect::<PathBuf>().display().to_string()
}

/// Creates `create` and appends to `append`, the two writes of the probes that write where they
/// must not. The attempt succeeded when either write did.
pub fn create_and_append(create: &Path, append: &Path) -> Attempt {
    let created = OpenOptions::new().write(true).create_new(true).open(create).and_then(|mut file| file.write_all(b"escaped\n"));
    let appended = OpenOptions::new().append(true).open(append).and_then(|mut file| file.write_all(b"escaped\n"));
    let attempts = [
        Attempt::of(created, &format!("creating {}", short(create))),
        Attempt::of(appended, &format!("appending to {}", short(append))),
    ];
    let detail = attempts.iter().map(|attempt| attempt.detail.as_str()).collect::<Vec<_>>().join("; ");
    let errno = attempts.iter().find_map(|attempt| attempt.errno);
    Attempt { succeeded: attempts.iter().any(|attempt| attempt.succeeded), errno, detail, count: None, pid: None }
}

/// Reads the whole file at `path`, reporting only its size.
pub fn read_file(path: &Path) -> Attempt {
    let mut contents = Vec::new();
    match File::open(path).and_then(|mut file| file.read_to_end(&mut contents)) {
        Ok(size) => Attempt::success(format!("read {size} bytes of {}", short(path))),
        Err(error) => Attempt::failure(&error, &format!("reading {}", short(path))),
    }
}

pub fn look_up_variable(name: &str) -> Attempt {
    match std::env::var_os(name) {
        Some(value) => Attempt::success(format!("{name} is set inside ({} bytes)", value.len())),
        None => Attempt::failed_without_code(format!("{name} is not set inside")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_round_trips() {
        let attempt = Attempt { succeeded: false, errno: Some(11), detail: "started 14 processes, then fork failed".into(), count: Some(14), pid: None };
        let line = attempt.to_line();
        assert!(line.starts_with(RESULT_PREFIX), "{line}");
        assert_eq!(Attempt::from_line(&line), Some(attempt));
        let bare = Attempt::success("connecting succeeded".into());
        assert_eq!(Attempt::from_line(&bare.to_line()), Some(bare));
        let watched = Attempt { pid: Some(4242), ..Attempt::success("started a detached process".into()) };
        assert_eq!(Attempt::from_line(&watched.to_line()), Some(watched));
    }

    #[test]
    fn other_lines_are_not_results() {
        assert_eq!(Attempt::from_line("hello"), None);
        assert_eq!(Attempt::from_line(&format!("{RESULT_PREFIX}not json")), None);
        assert_eq!(Attempt::from_line(&format!("{RESULT_PREFIX}{{\"errno\": 1}}")), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn short_keeps_two_components() {
        assert_eq!(short(Path::new("/tmp/palisade-selftest-1/outside/created")), "outside/created");
        assert_eq!(short(Path::new(".git/hooks/pre-commit")), "hooks/pre-commit");
        assert_eq!(short(Path::new("file")), "file");
    }

    #[cfg(windows)]
    #[test]
    fn short_keeps_two_components() {
        assert_eq!(short(Path::new(r"C:\Temp\palisade-selftest-1\outside\created")), r"outside\created");
        assert_eq!(short(Path::new(r".git\hooks\pre-commit")), r"hooks\pre-commit");
        assert_eq!(short(Path::new("file")), "file");
    }
}
