//! The protocol between the supervisor and the stage, and the stage's decisions that need no
//! system call.
//!
//! The supervisor starts the stage (`palisade macos-stage`, a fresh process of palisade's own
//! binary) with two extra descriptors: [`REQUEST_FD`], a pipe from which the stage reads a
//! [`StageRequest`], and [`STATUS_FD`], a pipe the stage marks close-on-exec. Once confined, the
//! stage writes [`READY`] there, and `execve` closes the pipe when the command starts. When
//! the stage fails, it writes a [`StageStatus`] there and exits. The supervisor reads the pipe
//! to its end ([`read_stage_end`]), so a stage that died before it was confined, without a
//! word, can never pass for a confined command.
//!
//! The request is a hand-written sequence of length-prefixed byte strings rather than JSON:
//! arguments, paths and variables need not be UTF-8, and the format has six fields.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use palisade_policy::EnvVar;

use crate::limits::{Resource, Rlimit};

/// The hidden subcommand of the palisade binary that runs the stage.
pub const STAGE_SUBCOMMAND: &str = "macos-stage";

/// The stage's descriptor for reading its request.
pub const REQUEST_FD: i32 = 3;
/// The stage's descriptor for reporting a failure before the command runs.
pub const STATUS_FD: i32 = 4;

/// The largest request the stage reads. A profile stays far below it: every string in it is
/// at most 1000 bytes, and a policy has tens of paths.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// The exit code of a stage that failed before it started the command. The supervisor reads
/// the reason from the status pipe, so the code only matters to someone who starts the stage
/// by hand.
pub const STAGE_FAILED: i32 = 125;

/// The first bytes of a request, which also carry the format's version.
const MAGIC: &[u8] = b"palisade-macos-stage-1\n";

/// The command and its confinement, as the supervisor hands them to the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRequest {
    /// The Seatbelt profile, applied with `sandbox_init`, or `None` for the unconfined
    /// profile, which runs the command with the rlimits only.
    pub profile: Option<String>,
    pub rlimits: Vec<Rlimit>,
    pub cwd: PathBuf,
    /// The command and its arguments; `argv[0]` is looked up in `PATH` of `env` when it has no
    /// slash.
    pub argv: Vec<OsString>,
    /// The command's complete environment, as `NAME=VALUE` entries.
    pub env: Vec<OsString>,
}

/// The reason a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the stage request does not start with the expected header; palisade and its stage are different versions")]
    Header,
    #[error("the stage request ends in the middle of a field")]
    Truncated,
    #[error("the stage request has {0} bytes after its last field")]
    TrailingBytes(usize),
    #[error("the stage request names an unknown resource limit {0}")]
    Resource(u8),
    #[error("the profile in the stage request is not UTF-8")]
    ProfileNotUtf8,
    #[error("the stage request has an empty command")]
    EmptyCommand,
}

impl StageRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.push(u8::from(self.profile.is_some()));
        put(&mut bytes, self.profile.as_deref().unwrap_or_default().as_bytes());
        put_count(&mut bytes, self.rlimits.len());
        for rlimit in &self.rlimits {
            bytes.push(resource_code(rlimit.resource));
            bytes.extend_from_slice(&rlimit.value.to_le_bytes());
        }
        put(&mut bytes, self.cwd.as_os_str().as_bytes());
        for list in [&self.argv, &self.env] {
            put_count(&mut bytes, list.len());
            for item in list {
                put(&mut bytes, item.as_bytes());
            }
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<StageRequest, DecodeError> {
        let mut reader = Reader { rest: bytes.strip_prefix(MAGIC).ok_or(DecodeError::Header)? };
        let confined = reader.take(1)?[0] != 0;
        let profile = String::from_utf8(reader.field()?.to_vec()).map_err(|_| DecodeError::ProfileNotUtf8)?;
        let profile = confined.then_some(profile);
        let mut rlimits = Vec::new();
        for _ in 0..reader.count()? {
            let code = reader.take(1)?[0];
            let resource = resource_from_code(code).ok_or(DecodeError::Resource(code))?;
            let value = u64::from_le_bytes(reader.take(8)?.try_into().expect("eight bytes"));
            rlimits.push(Rlimit { resource, value });
        }
        let cwd = PathBuf::from(OsString::from_vec(reader.field()?.to_vec()));
        let argv = reader.list()?;
        let env = reader.list()?;
        if !reader.rest.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.rest.len()));
        }
        if argv.is_empty() {
            return Err(DecodeError::EmptyCommand);
        }
        Ok(StageRequest { profile, rlimits, cwd, argv, env })
    }
}

fn put_count(bytes: &mut Vec<u8>, count: usize) {
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
}

fn put(bytes: &mut Vec<u8>, field: &[u8]) {
    put_count(bytes, field.len());
    bytes.extend_from_slice(field);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < length {
            return Err(DecodeError::Truncated);
        }
        let (field, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(field)
    }

    fn count(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes")) as usize)
    }

    fn field(&mut self) -> Result<&'a [u8], DecodeError> {
        let length = self.count()?;
        self.take(length)
    }

    fn list(&mut self) -> Result<Vec<OsString>, DecodeError> {
        // The count comes from the pipe, so the list grows with what is read, not with it.
        let count = self.count()?;
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(OsString::from_vec(self.field()?.to_vec()));
        }
        Ok(items)
    }
}

fn resource_code(resource: Resource) -> u8 {
    match resource {
        Resource::Core => 0,
        Resource::Cpu => 1,
        Resource::FileSize => 2,
        Resource::OpenFiles => 3,
    }
}

fn resource_from_code(code: u8) -> Option<Resource> {
    Some(match code {
        0 => Resource::Core,
        1 => Resource::Cpu,
        2 => Resource::FileSize,
        3 => Resource::OpenFiles,
        _ => return None,
    })
}

/// The stage's report when the command did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStatus {
    /// A step of the confinement failed; nothing of the command ran. palisade exits with 125.
    Failed { reason: String },
    /// The confinement is in place, but no candidate of the command could be executed: 127
    /// for not found, 126 otherwise, as a shell does.
    ExecFailed { status: u8, reason: String },
}

impl StageStatus {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StageStatus::Failed { reason } => [b"F".as_slice(), reason.as_bytes()].concat(),
            StageStatus::ExecFailed { status, reason } => [b"E".as_slice(), &[*status], reason.as_bytes()].concat(),
        }
    }

    /// Reads what the stage wrote before its status pipe closed. Nothing at all means the
    /// command started; bytes that are no status are reported as a failure of the stage.
    pub fn decode(bytes: &[u8]) -> Option<StageStatus> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match bytes {
            [] => None,
            [b'F', reason @ ..] => Some(StageStatus::Failed { reason: text(reason) }),
            [b'E', status, reason @ ..] => Some(StageStatus::ExecFailed { status: *status, reason: text(reason) }),
            other => Some(StageStatus::Failed { reason: format!("the stage reported something unreadable: {:?}", text(other)) }),
        }
    }
}

/// Builds the command's environment: the policy's variables, with `TMPDIR` naming the run's
/// own temporary directory and, for an allowlist run, the proxy's variables in place of any
/// proxy setting of the caller, which the sandbox could not reach.
pub fn command_environment(policy_env: &[EnvVar], temp_dir: &Path, proxy: Option<&[(String, String)]>) -> Vec<OsString> {
    let replaced = |name: &[u8]| {
        name == b"TMPDIR" || (proxy.is_some() && name.to_ascii_lowercase().ends_with(b"_proxy"))
    };
    let mut env: Vec<OsString> = policy_env
        .iter()
        .filter(|var| !replaced(var.name.as_bytes()))
        .map(|var| entry(var.name.as_bytes(), var.value.as_bytes()))
        .collect();
    env.push(entry(b"TMPDIR", temp_dir.as_os_str().as_bytes()));
    for (name, value) in proxy.unwrap_or_default() {
        env.push(entry(name.as_bytes(), value.as_bytes()));
    }
    env
}

fn entry(name: &[u8], value: &[u8]) -> OsString {
    OsString::from_vec([name, b"=", value].concat())
}

/// The byte the stage writes once it is confined, right before it executes the command.
pub const READY: u8 = b'R';

/// The supervisor's reading of the status pipe once it has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageEnd {
    /// The stage was confined and executed the command.
    Started,
    /// The stage failed, or ended, before it was confined. Nothing of the command ran.
    Failed { reason: String },
    /// The stage was confined, but no candidate of the command could be executed.
    ExecFailed { status: u8, reason: String },
}

/// Reads everything the stage wrote to its status pipe.
pub fn read_stage_end(bytes: &[u8]) -> StageEnd {
    match bytes {
        [] => StageEnd::Failed { reason: "the stage ended before it was confined, without a report".into() },
        [READY] => StageEnd::Started,
        [READY, rest @ ..] => match StageStatus::decode(rest) {
            Some(StageStatus::ExecFailed { status, reason }) => StageEnd::ExecFailed { status, reason },
            Some(StageStatus::Failed { reason }) => StageEnd::Failed { reason },
            None => StageEnd::Started,
        },
        // A stage reports an exec failure only after READY.
        other => match StageStatus::decode(other) {
            Some(StageStatus::Failed { reason }) => StageEnd::Failed { reason },
            _ => StageEnd::Failed { reason: format!("the stage reported something unreadable: {:?}", String::from_utf8_lossy(other)) },
        },
    }
}

/// The `PATH` a command gets when its environment has none, as `execvp` uses.
const DEFAULT_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// Returns the files to try executing for `program`: itself when it contains a slash, or each
/// directory of `path` joined with it, as a shell searches.
pub fn exec_candidates(program: &Path, path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return vec![program.to_path_buf()];
    }
    let path = path.unwrap_or(std::ffi::OsStr::new(DEFAULT_PATH));
    std::env::split_paths(path).filter(|dir| !dir.as_os_str().is_empty()).map(|dir| dir.join(program)).collect()
}

/// Returns the value of `PATH` in `env` (`NAME=VALUE` entries).
pub fn path_of(env: &[OsString]) -> Option<&std::ffi::OsStr> {
    env.iter().find_map(|entry| entry.as_bytes().strip_prefix(b"PATH=")).map(std::ffi::OsStr::from_bytes)
}

/// The outcome of trying one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecError {
    /// ENOENT or ENOTDIR: a shell goes on to the next directory.
    NotFound,
    /// EACCES: a shell goes on, but reports it if nothing else runs.
    PermissionDenied,
    /// Any other error on an existing file ends the search.
    Other,
}

/// Decides whether the search goes on after `error`.
pub fn keep_searching(error: ExecError) -> bool {
    matches!(error, ExecError::NotFound | ExecError::PermissionDenied)
}

/// Returns the exit status and reason for a command none of whose candidates ran. `last` is
/// the error worth reporting (the last one other than "not found", if any) and its text.
pub fn exec_failure(program: &Path, candidates: usize, path: Option<&std::ffi::OsStr>, last: Option<(ExecError, String)>) -> StageStatus {
    let name = program.display();
    match last {
        None | Some((ExecError::NotFound, _)) if candidates <= 1 => {
            StageStatus::ExecFailed { status: 127, reason: format!("{name}: not found inside the sandbox") }
        }
        None | Some((ExecError::NotFound, _)) => {
            let path = Path::new(path.unwrap_or(std::ffi::OsStr::new(DEFAULT_PATH))).display().to_string();
            StageStatus::ExecFailed { status: 127, reason: format!("{name}: command not found in the sandbox's PATH ({path})") }
        }
        Some((_, text)) => StageStatus::ExecFailed { status: 126, reason: format!("{name}: cannot execute: {text}") },
    }
}

/// The maximum length of a reason the stage reports. The supervisor reads the status pipe up
/// to this length and a few bytes more, so a longer reason would be cut there.
pub const MAX_REASON: usize = 2048;

/// Cuts `reason` to [`MAX_REASON`] bytes at a character boundary.
pub fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Returns the inherited descriptors the stage closes: every one above [`STATUS_FD`], so that
/// nothing palisade's caller left open reaches the command.
pub fn descriptors_to_close(open: &[i32]) -> Vec<i32> {
    let mut close: Vec<i32> = open.iter().copied().filter(|fd| *fd > STATUS_FD).collect();
    close.sort_unstable();
    close.dedup();
    close
}

/// Lists the descriptors open in this process from `dir`, which is `/dev/fd` on macOS. The
/// listing's own descriptor is among them. An error while reading any entry fails the whole
/// listing, because a descriptor missing from it would stay open in the command.
pub fn open_descriptors(dir: &Path) -> std::io::Result<Vec<i32>> {
    let mut open = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let fd = name.to_str().and_then(|name| name.parse().ok()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} has an entry that is not a descriptor number: {name:?}", dir.display()))
        })?;
        open.push(fd);
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> StageRequest {
        StageRequest {
            profile: Some("(version 1)\n(deny default)\n".into()),
            rlimits: vec![Rlimit { resource: Resource::Core, value: 0 }, Rlimit { resource: Resource::OpenFiles, value: 65536 }],
            cwd: "/Users/dev/ws".into(),
            argv: vec!["sh".into(), "-c".into(), OsString::from_vec(b"echo \xff".to_vec())],
            env: vec!["PATH=/usr/bin:/bin".into(), "EMPTY=".into()],
        }
    }

    #[test]
    fn request_round_trips() {
        let request = request();
        assert_eq!(StageRequest::decode(&request.encode()), Ok(request.clone()));
        let unconfined = StageRequest { profile: None, ..request };
        assert_eq!(StageRequest::decode(&unconfined.encode()), Ok(unconfined));
    }

    #[test]
    fn damaged_requests_are_rejected() {
        let bytes = request().encode();
        assert_eq!(StageRequest::decode(b"something else"), Err(DecodeError::Header));
        assert_eq!(StageRequest::decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Truncated));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(StageRequest::decode(&longer), Err(DecodeError::TrailingBytes(1)));
        let empty = StageRequest { argv: vec![], ..request() };
        assert_eq!(StageRequest::decode(&empty.encode()), Err(DecodeError::EmptyCommand));
        // A count far beyond the bytes that follow fails as truncated, without allocating it.
        let mut huge = MAGIC.to_vec();
        huge.push(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(StageRequest::decode(&huge), Err(DecodeError::Truncated));
    }

    #[test]
    fn status_round_trips() {
        assert_eq!(StageStatus::decode(b""), None);
        for status in [
            StageStatus::Failed { reason: "sandbox_init rejected the profile: syntax error".into() },
            StageStatus::ExecFailed { status: 127, reason: "x: not found inside the sandbox".into() },
        ] {
            assert_eq!(StageStatus::decode(&status.encode()), Some(status));
        }
        assert!(matches!(StageStatus::decode(b"?"), Some(StageStatus::Failed { .. })));
    }

    #[test]
    fn stage_end_needs_ready_for_a_start() {
        assert_eq!(read_stage_end(&[READY]), StageEnd::Started);
        // A stage that died before it was confined, such as from a crash in sandbox_init.
        assert!(matches!(read_stage_end(b""), StageEnd::Failed { .. }));
        let failed = StageStatus::Failed { reason: "sandbox_init rejected the profile: x".into() }.encode();
        assert_eq!(read_stage_end(&failed), StageEnd::Failed { reason: "sandbox_init rejected the profile: x".into() });
        let exec_failed = StageStatus::ExecFailed { status: 127, reason: "x: not found inside the sandbox".into() }.encode();
        let mut after_ready = vec![READY];
        after_ready.extend_from_slice(&exec_failed);
        assert_eq!(read_stage_end(&after_ready), StageEnd::ExecFailed { status: 127, reason: "x: not found inside the sandbox".into() });
        // An exec failure without READY is no start either.
        assert!(matches!(read_stage_end(&exec_failed), StageEnd::Failed { .. }));
    }

    #[test]
    fn candidates_follow_path_like_a_shell() {
        let path = std::ffi::OsStr::new("/opt/homebrew/bin::/usr/bin");
        assert_eq!(exec_candidates(Path::new("git"), Some(path)), [PathBuf::from("/opt/homebrew/bin/git"), PathBuf::from("/usr/bin/git")]);
        assert_eq!(exec_candidates(Path::new("./run.sh"), Some(path)), [PathBuf::from("./run.sh")]);
        assert_eq!(exec_candidates(Path::new("ls"), None)[0], PathBuf::from("/usr/bin/ls"));
        let env = ["HOME=/Users/dev".into(), "PATH=/bin".into()];
        assert_eq!(path_of(&env), Some(std::ffi::OsStr::new("/bin")));
    }

    #[test]
    fn exec_failures_read_as_a_shells() {
        let not_found = exec_failure(Path::new("nope"), 3, Some(std::ffi::OsStr::new("/bin:/usr/bin")), None);
        assert_eq!(not_found, StageStatus::ExecFailed { status: 127, reason: "nope: command not found in the sandbox's PATH (/bin:/usr/bin)".into() });
        let absolute = exec_failure(Path::new("/x/y"), 1, None, Some((ExecError::NotFound, "No such file".into())));
        assert!(matches!(absolute, StageStatus::ExecFailed { status: 127, .. }));
        let denied = exec_failure(Path::new("tool"), 2, None, Some((ExecError::PermissionDenied, "Operation not permitted".into())));
        assert_eq!(denied, StageStatus::ExecFailed { status: 126, reason: "tool: cannot execute: Operation not permitted".into() });
        assert!(keep_searching(ExecError::NotFound));
        assert!(keep_searching(ExecError::PermissionDenied));
        assert!(!keep_searching(ExecError::Other));
    }

    #[test]
    fn environment_names_run_temp_and_proxy() {
        let var = |name: &str, value: &str| EnvVar { name: name.into(), value: value.into() };
        let policy_env = [var("HOME", "/Users/dev"), var("TMPDIR", "/var/folders/x/T/"), var("https_proxy", "http://corp:3128")];
        let proxy = [("HTTPS_PROXY".to_owned(), "http://palisade:t@127.0.0.1:5000".to_owned())];
        let env = command_environment(&policy_env, Path::new("/private/var/folders/x/T/palisade-1"), Some(&proxy));
        let expected: Vec<OsString> =
            ["HOME=/Users/dev", "TMPDIR=/private/var/folders/x/T/palisade-1", "HTTPS_PROXY=http://palisade:t@127.0.0.1:5000"].map(OsString::from).into();
        assert_eq!(env, expected);
        // Without a proxy, the caller's proxy settings pass as the policy has them.
        let env = command_environment(&policy_env, Path::new("/t"), None);
        assert!(env.contains(&OsString::from("https_proxy=http://corp:3128")));
    }

    #[test]
    fn only_descriptors_above_status_are_closed() {
        assert_eq!(descriptors_to_close(&[0, 1, 2, 3, 4, 9, 5, 9]), [5, 9]);
        assert_eq!(bounded("é".repeat(MAX_REASON)).len(), MAX_REASON);
    }

    #[test]
    fn open_descriptors_lists_this_process() {
        // /dev/fd lists the calling process's descriptors on Linux too.
        let open = open_descriptors(Path::new("/dev/fd")).unwrap();
        for fd in [0, 1, 2] {
            assert!(open.contains(&fd), "descriptor {fd} missing from {open:?}");
        }
        assert!(open_descriptors(Path::new("/nonexistent/fd")).is_err());
    }
}
