//! The calls into macOS: applying the profile, asking a process's sandbox a question, lowering
//! rlimits and killing a run's processes. Compiled only for macOS; every `unsafe` block wraps
//! one call.
//!
//! The profile is applied with `sandbox_init` in a stage of palisade's own binary, started
//! with `execve` for each run, which then replaces itself with the command. A fresh process
//! has one thread, so `sandbox_init`, which allocates and compiles the profile, is safe to
//! call there, where it would not be between `fork` and `exec` of palisade's threaded
//! supervisor. The stage keeps the profile out of the command line (other processes can read
//! argv) and gets `sandbox_init`'s error text back as a string for the report.
//!
//! NOTE: nothing here has run yet: it is type-checked for `aarch64-apple-darwin` and
//! `x86_64-apple-darwin` on Linux, and `docs/macos.md` lists the steps that check it on a Mac.

pub mod check;
pub mod log;
pub mod machine;
pub mod output;
pub mod run;
pub mod signals;
pub mod stage;

use std::ffi::{c_char, c_int, c_void, CStr, CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use crate::limits::{Resource, Rlimit};
use crate::marker::{is_member, RunMarker, MARKER_OPERATION};
use crate::nesting::{check_not_nested, NestedSandbox};
use crate::stage::{bounded, exec_candidates, exec_failure, keep_searching, path_of, ExecError, StageRequest, StageStatus};
use crate::tree::{kill_rounds, KillReport, ProcessInfo, ProcessTable, Signal};

// libsandbox, part of libSystem. sandbox_init(3) is marked deprecated since macOS 10.8 and still
// applies a profile given as text when `flags` is 0. sandbox_check and SANDBOX_CHECK_NO_REPORT
// are exported but declared only in Apple's private sandbox.h, which Chromium and WebKit copy.
unsafe extern "C" {
    fn sandbox_init(profile: *const c_char, flags: u64, errorbuf: *mut *mut c_char) -> c_int;
    fn sandbox_free_error(errorbuf: *mut c_char);
    fn sandbox_check(pid: libc::pid_t, operation: *const c_char, filter_type: c_int, ...) -> c_int;
    static SANDBOX_CHECK_NO_REPORT: c_int;
}

/// `SANDBOX_FILTER_NONE` of `enum sandbox_filter_type`: a question about the process itself.
const SANDBOX_FILTER_NONE: c_int = 0;
/// `SANDBOX_FILTER_PATH`: the variadic argument is a path.
const SANDBOX_FILTER_PATH: c_int = 1;

/// Why a step of the stage failed. Nothing of the command has run when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SysError {
    #[error(transparent)]
    Nested(#[from] NestedSandbox),
    #[error("sandbox_init rejected the profile: {0}")]
    Apply(String),
    #[error("sandbox_init returned success, but sandbox_check does not see a sandbox on this process")]
    NotApplied,
    #[error("the {0} contains a NUL byte")]
    Nul(&'static str),
    #[error("failed to {operation}: {source}")]
    Call { operation: &'static str, source: io::Error },
}

fn last_error(operation: &'static str) -> SysError {
    SysError::Call { operation, source: io::Error::last_os_error() }
}

/// Returns whether process `pid` runs under a Seatbelt profile.
pub fn is_sandboxed(pid: i32) -> bool {
    // SAFETY: with SANDBOX_FILTER_NONE and a null operation the call reads no variadic
    // argument; it only looks the process up.
    unsafe { sandbox_check(pid, std::ptr::null(), SANDBOX_FILTER_NONE) == 1 }
}

/// Returns whether process `pid`'s sandbox allows `operation` on `path`, without logging a
/// denial, or `None` when the process is gone or the query failed.
fn sandbox_allows(pid: i32, operation: &CStr, path: &CStr) -> Option<bool> {
    // SAFETY: SANDBOX_CHECK_NO_REPORT is a constant exported by libsandbox.
    let no_report = unsafe { SANDBOX_CHECK_NO_REPORT };
    // SAFETY: both strings are NUL-terminated and outlive the call; SANDBOX_FILTER_PATH reads
    // exactly one variadic argument, a `const char *`.
    let answer = unsafe { sandbox_check(pid, operation.as_ptr(), SANDBOX_FILTER_PATH | no_report, path.as_ptr()) };
    match answer {
        0 => Some(true),
        1 => Some(false),
        _ => None,
    }
}

/// Returns the name of palisade's parent process, for the message about nesting.
pub(crate) fn parent_name() -> Option<String> {
    let mut name = [0u8; 256];
    // SAFETY: getppid has no failure case, and proc_name is given the buffer's length as its
    // size, which bounds what it writes.
    let length = unsafe { libc::proc_name(libc::getppid(), name.as_mut_ptr().cast::<c_void>(), name.len() as u32) };
    (length > 0).then(|| String::from_utf8_lossy(&name[..length as usize]).into_owned())
}

/// Refuses to go on inside another Seatbelt sandbox, where `sandbox_init` would fail.
pub fn check_not_nested_here() -> Result<(), NestedSandbox> {
    check_not_nested(is_sandboxed(std::process::id() as i32), parent_name().as_deref())
}

/// Applies `profile` to this process and, through inheritance, to everything it executes.
pub fn apply_profile(profile: &str) -> Result<(), SysError> {
    let profile = CString::new(profile).map_err(|_| SysError::Nul("profile"))?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: the profile is NUL-terminated and outlives the call; `error` is a valid place for
    // the library to store a string it allocates.
    let status = unsafe { sandbox_init(profile.as_ptr(), 0, &mut error) };
    if status != 0 {
        let message = if error.is_null() {
            "no reason given".to_owned()
        } else {
            // SAFETY: on failure `error` points to a NUL-terminated string owned by libsandbox,
            // read once here and freed right after.
            let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
            // SAFETY: `error` came from sandbox_init and is freed exactly once.
            unsafe { sandbox_free_error(error) };
            text
        };
        return Err(SysError::Apply(message));
    }
    // Fail closed if the call claims success without a sandbox in place.
    if !is_sandboxed(std::process::id() as i32) {
        return Err(SysError::NotApplied);
    }
    Ok(())
}

fn resource_id(resource: Resource) -> c_int {
    match resource {
        Resource::Core => libc::RLIMIT_CORE,
        Resource::Cpu => libc::RLIMIT_CPU,
        Resource::FileSize => libc::RLIMIT_FSIZE,
        Resource::OpenFiles => libc::RLIMIT_NOFILE,
    }
}

/// Lowers each limit to its value, and never raises one: a limit the caller already has
/// below the policy's stays.
///
/// NOTE: XNU is understood to clamp RLIMIT_NOFILE to `kern.maxfilesperproc` rather than fail;
/// unverified on a Mac.
pub fn lower_rlimits(rlimits: &[Rlimit]) -> Result<(), SysError> {
    for rlimit in rlimits {
        let resource = resource_id(rlimit.resource);
        let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `current` is a valid rlimit for the call to fill.
        if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
            return Err(last_error("read a resource limit"));
        }
        let value = rlimit.value.min(current.rlim_max);
        let lowered = libc::rlimit { rlim_cur: value.min(current.rlim_cur), rlim_max: value };
        // SAFETY: `lowered` is a valid rlimit; lowering a limit needs no privilege.
        if unsafe { libc::setrlimit(resource, &lowered) } != 0 {
            return Err(last_error("lower a resource limit"));
        }
    }
    Ok(())
}

/// Confines this process and replaces it with the command. Returns only when the command did
/// not start, with the status the stage reports to the supervisor.
pub fn confine_and_exec(request: &StageRequest) -> StageStatus {
    if let Err(error) = confine(request) {
        return StageStatus::Failed { reason: bounded(error.to_string()) };
    }
    exec(request)
}

/// Starts a session, changes to the working directory, lowers the rlimits and applies the
/// profile, in that order.
pub fn confine(request: &StageRequest) -> Result<(), SysError> {
    // A session of its own: the run's processes form one process group palisade can signal,
    // and the command has no controlling terminal to push keystrokes into with TIOCSTI.
    // NOTE: that macOS refuses TIOCSTI on a terminal that is not the caller's controlling
    // terminal, as Linux does, is unverified.
    // SAFETY: setsid takes no arguments and touches no memory of this process; a failure (the
    // stage already leads a process group) is returned below.
    if unsafe { libc::setsid() } < 0 {
        return Err(last_error("start a new session"));
    }
    let cwd = CString::new(request.cwd.as_os_str().as_bytes()).map_err(|_| SysError::Nul("working directory"))?;
    // SAFETY: the directory is a NUL-terminated string that outlives the call.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(last_error("change to the working directory"));
    }
    lower_rlimits(&request.rlimits)?;
    let Some(profile) = &request.profile else { return Ok(()) };
    // Before applying: inside another sandbox, sandbox_init would fail with a bare EPERM.
    check_not_nested_here()?;
    // Last, because the profile may deny the calls before it.
    apply_profile(profile)
}

/// Executes the command, looked up in its `PATH` as a shell does. The search runs inside the
/// sandbox, so it finds only what the command may execute.
pub fn exec(request: &StageRequest) -> StageStatus {
    let cstrings = |items: &[OsString]| items.iter().map(|item| CString::new(item.as_bytes()).ok()).collect::<Option<Vec<CString>>>();
    let (Some(argv), Some(env)) = (cstrings(&request.argv), cstrings(&request.env)) else {
        return StageStatus::ExecFailed { status: 126, reason: "an argument or variable of the command contains a NUL byte".into() };
    };
    let argv_pointers: Vec<*const c_char> = argv.iter().map(|arg| arg.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let env_pointers: Vec<*const c_char> = env.iter().map(|var| var.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();

    let program = Path::new(&request.argv[0]);
    let path = path_of(&request.env);
    let candidates = exec_candidates(program, path);
    let mut last: Option<(ExecError, String)> = None;
    for candidate in &candidates {
        let Ok(file) = CString::new(candidate.as_os_str().as_bytes()) else { continue };
        // SAFETY: the program and every entry are NUL-terminated strings that outlive the
        // call, and both arrays end with a null pointer.
        unsafe { libc::execve(file.as_ptr(), argv_pointers.as_ptr(), env_pointers.as_ptr()) };
        let error = io::Error::last_os_error();
        let kind = match error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => ExecError::NotFound,
            Some(libc::EACCES) => ExecError::PermissionDenied,
            _ => ExecError::Other,
        };
        if kind != ExecError::NotFound || last.is_none() {
            last = Some((kind, error.to_string()));
        }
        if !keep_searching(kind) {
            break;
        }
    }
    match exec_failure(program, candidates.len(), path, last) {
        StageStatus::ExecFailed { status, reason } => StageStatus::ExecFailed { status, reason: bounded(reason) },
        failed => failed,
    }
}

/// Reads the process table: the id, parent and process group of every process that is not
/// a zombie.
pub fn list_processes() -> io::Result<Vec<ProcessInfo>> {
    // SAFETY: with a null buffer the call only returns the number of processes.
    let count = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    // Room for processes started since the count.
    let mut pids = vec![0 as libc::pid_t; count as usize + 64];
    let bytes = (pids.len() * std::mem::size_of::<libc::pid_t>()) as c_int;
    // SAFETY: `bytes` is the buffer's size in bytes, and the call writes no more than that.
    let filled = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast::<c_void>(), bytes) };
    if filled < 0 {
        return Err(io::Error::last_os_error());
    }
    pids.truncate(filled as usize);

    let mut processes = Vec::with_capacity(pids.len());
    for pid in pids.into_iter().filter(|pid| *pid > 0) {
        // SAFETY: proc_bsdinfo is plain data, for which all zeroes is a valid value.
        let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as c_int;
        // SAFETY: the buffer is one proc_bsdinfo of `size` bytes, the size PROC_PIDTBSDINFO
        // writes.
        let written = unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast::<c_void>(), size) };
        // A process that exited since the list was read is skipped, and so is a zombie: it
        // runs nothing and goes when its parent reaps it.
        if written == size && info.pbi_status != libc::SZOMB {
            processes.push(ProcessInfo { pid: info.pbi_pid as i32, parent: info.pbi_ppid as i32, group: info.pbi_pgid as i32 });
        }
    }
    Ok(processes)
}

/// Returns the path of the executable process `pid` runs, or `None` when it is gone or cannot
/// be read.
pub fn executable_path(pid: i32) -> Option<std::path::PathBuf> {
    let mut buffer = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: the buffer's length is passed as its size, which bounds what proc_pidpath writes.
    let length = unsafe { libc::proc_pidpath(pid, buffer.as_mut_ptr().cast::<c_void>(), buffer.len() as u32) };
    if length <= 0 {
        return None;
    }
    buffer.truncate(length as usize);
    Some(std::path::PathBuf::from(std::ffi::OsString::from_vec(buffer)))
}

/// Returns whether process `pid` runs under this run's profile (see [`crate::marker`]).
pub fn is_run_member(pid: i32, marker: &RunMarker) -> bool {
    let (Ok(operation), Ok(member), Ok(outsider)) =
        (CString::new(MARKER_OPERATION), CString::new(marker.member.as_str()), CString::new(marker.outsider.as_str()))
    else {
        return false;
    };
    let member_allowed = sandbox_allows(pid, &operation, &member);
    let outsider_allowed = sandbox_allows(pid, &operation, &outsider);
    match (member_allowed, outsider_allowed) {
        (Some(member), Some(outsider)) => is_member(is_sandboxed(pid), member, outsider),
        _ => false,
    }
}

/// Rounds of stopping and killing before palisade gives up on a process tree.
const KILL_ROUNDS: usize = 20;
const KILL_PAUSE: Duration = Duration::from_millis(10);

/// The process table of this Mac, for [`kill_rounds`].
struct SystemTable<'a> {
    marker: &'a RunMarker,
}

impl ProcessTable for SystemTable<'_> {
    fn list(&mut self) -> io::Result<Vec<ProcessInfo>> {
        list_processes()
    }

    fn is_marked(&mut self, pid: i32) -> bool {
        is_run_member(pid, self.marker)
    }

    fn signal(&mut self, target: i32, signal: Signal) {
        let number = match signal {
            Signal::Stop => libc::SIGSTOP,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill takes a process or group id and a signal number and touches no memory.
        // A target that has gone fails with ESRCH, which is ignored.
        unsafe { libc::kill(target, number) };
    }

    fn pause(&mut self, duration: Duration) {
        sleep(duration);
    }
}

/// Kills every process of the run that `root` started: its descendants, its process group,
/// and every process carrying the run's marker (see [`kill_rounds`]). `root` must be
/// palisade's child and not reaped yet. The command and its process group are sent SIGKILL
/// even when the process table cannot be read, and the report then lists the failure.
///
/// NOTE: a process id can be reused between a round's snapshot and its signal, so a process
/// that exits at that moment could give its id to an unrelated one. The marker is checked in
/// the snapshot, which narrows the window to a few microseconds but does not close it. A
/// process sent SIGKILL stays a member in the later rounds (10 ms apart), so an unrelated
/// process that takes its id within them is stopped and killed too.
pub fn kill_run(root: i32, marker: &RunMarker) -> KillReport {
    let own = std::process::id() as i32;
    kill_rounds(&mut SystemTable { marker }, root, own, KILL_ROUNDS, KILL_PAUSE)
}
