//! The attempts that `palisade selftest-probe` makes inside the sandbox on Windows. Each prints
//! one result line (`../attempt.rs`) for the host side (`windows.rs`) to read.
//!
//! The timeout probe starts a copy of this binary with the extra argument [`CHILD_ROLE`], which
//! waits and prints nothing. The process-limit probe starts `cmd.exe` instead, which Windows
//! starts several times faster than this binary with its many imported libraries: 200 of them
//! took about 7 s under Wine 8.0 on a 2-CPU machine, against 7 to 14 s for 48 of this binary
//! (a debug build).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::windows::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use windows_sys::Win32::System::Threading::{CREATE_BREAKAWAY_FROM_JOB, CREATE_NEW_PROCESS_GROUP, DETACHED_PROCESS};

use super::sys::{self, JobMembership, ShellOutcome};
use crate::selftest::attempt::{create_and_append, look_up_variable, read_file, short, Attempt, INSIDE_CONTENT};
use crate::selftest::Probe;

/// The argument that makes `selftest-probe timeout-detached` the probe's detached child rather
/// than the probe.
pub const CHILD_ROLE: &str = "child";

/// How long the loopback probe waits for its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the detached child of the timeout probe lives when nothing ends it: long past its
/// run's timeout, yet bounded, so a child that escaped the job does not stay forever should
/// selftest be unable to terminate it.
const DETACHED_CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// Makes `probe`'s attempt with the arguments the host side passed and prints the result line.
pub fn attempt(probe: Probe, args: &[OsString]) -> anyhow::Result<u8> {
    let path = |index: usize| -> anyhow::Result<PathBuf> {
        let arg = args.get(index).with_context(|| format!("probe {} needs argument {}", probe.id(), index + 1))?;
        Ok(PathBuf::from(arg))
    };
    let text = |index: usize| -> anyhow::Result<String> {
        let arg = path(index)?;
        arg.to_str().map(str::to_owned).with_context(|| format!("argument {} of probe {} is not UTF-8", index + 1, probe.id()))
    };
    let is_child = args.first().is_some_and(|arg| arg == CHILD_ROLE);
    let result = match probe {
        Probe::WriteOutsideWorkspace | Probe::WriteWhereUsersMayModify => create_and_append(&path(0)?, &path(1)?),
        // The first argument is a file to create below a protected name, the second a
        // protected file to append to, each spelled in the way the probe tests.
        Probe::WriteCaseVariantOfProtected | Probe::WriteShortNameOfProtected => create_and_append(&path(0)?, &path(1)?),
        Probe::WriteInsideWorkspace => create_with(&path(0)?, INSIDE_CONTENT.as_bytes()),
        Probe::ReadCredential => read_file(&path(0)?),
        Probe::GitHook => create_with(&path(0)?, b"exit 0\r\n"),
        Probe::SecretEnvironment => look_up_variable(&text(0)?),
        Probe::ConnectHostLoopback => {
            let port: u16 = text(0)?.parse().context("the port of probe connect-host-loopback is not a number")?;
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            Attempt::of(TcpStream::connect_timeout(&address, CONNECT_TIMEOUT), &format!("connecting to {address}"))
        }
        Probe::ProcessLimit => {
            let cap: u64 = text(0)?.parse().context("the cap of probe process-limit is not a number")?;
            start_processes(cap)
        }
        Probe::TimeoutDetached if is_child => {
            std::thread::sleep(DETACHED_CHILD_LIFETIME);
            return Ok(0);
        }
        Probe::TimeoutDetached => outlive_timeout(),
        Probe::WriteStreamOfProtected => create_each(&[path(0)?, path(1)?]),
        Probe::WriteThroughJunction => write_through_links(&path(0)?, &path(1)?, &path(2)?),
        Probe::ShellExecuteUrl => {
            if let Some(version) = palisade_windows::sys::wine::is_wine() {
                // Wine hands URLs to the Linux desktop's browser, outside anything Windows could
                // confine; the host side never runs this probe there.
                anyhow::bail!("probe shell-execute-url does not run under Wine {version}, which passes URLs to the Linux desktop");
            }
            open_url(&text(0)?)
        }
        // Not in the Windows catalogue, so `selftest` never runs them here and `selftest-probe`
        // rejects their ids.
        Probe::UserNamespace | Probe::Ptrace | Probe::IoUring | Probe::Bpf | Probe::ReadShadow => {
            anyhow::bail!("probe {} runs on Linux only", probe.id())
        }
        Probe::CpuInfo | Probe::EnvFileHidden | Probe::FullNetwork | Probe::ListenWithoutEgress | Probe::NestedSandbox | Probe::ReadCaseVariantOfHidden => {
            anyhow::bail!("probe {} runs on macOS only", probe.id())
        }
    };
    result.print();
    Ok(0)
}

/// Creates the file `path`, which must not exist, with `contents`.
fn create_with(path: &Path, contents: &[u8]) -> Attempt {
    let created = OpenOptions::new().write(true).create_new(true).open(path).and_then(|mut file| file.write_all(contents));
    Attempt::of(created, &format!("creating {}", short(path)))
}

/// Creates each of `paths`; the attempt succeeded when any creation did.
fn create_each(paths: &[PathBuf]) -> Attempt {
    let attempts: Vec<Attempt> = paths.iter().map(|path| create_with(path, b"escaped\r\n")).collect();
    combine(&attempts)
}

/// Joins several attempts into one that succeeded when any of them did.
fn combine(attempts: &[Attempt]) -> Attempt {
    let detail = attempts.iter().map(|attempt| attempt.detail.as_str()).collect::<Vec<_>>().join("; ");
    let errno = attempts.iter().find_map(|attempt| attempt.errno);
    Attempt { succeeded: attempts.iter().any(|attempt| attempt.succeeded), errno, detail, count: None, pid: None }
}

/// Starts a copy of this binary as `selftest-probe timeout-detached child`, with `flags` as its
/// creation flags and none of the probe's standard handles.
fn start_detached_child(flags: u32) -> io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["selftest-probe", Probe::TimeoutDetached.id(), CHILD_ROLE])
        .creation_flags(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Starts `cmd.exe` reading one line from a pipe, which waits until the probe closes its end of
/// the pipe or dies. `DETACHED_PROCESS` keeps it from getting a console, and with it a console
/// host process. `/d` skips the AutoRun commands of the registry.
fn start_waiting_child() -> io::Result<Child> {
    Command::new("cmd")
        .args(["/d", "/c", "set", "/p", "line="])
        .creation_flags(DETACHED_PROCESS)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Starts children that wait for the end of their stdin until starting one fails or `cap` of
/// them run, then releases and reaps them all.
fn start_processes(cap: u64) -> Attempt {
    let mut children = Vec::new();
    let mut failure = None;
    while (children.len() as u64) < cap {
        match start_waiting_child() {
            Ok(child) => children.push(child),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Closing the write ends of their stdin releases the children.
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
    let started = children.len() as u64;
    match failure {
        None => Attempt { count: Some(started), ..Attempt::success(format!("started all {started} processes")) },
        Some(error) => Attempt { count: Some(started), ..Attempt::failure(&error, &format!("started {started} processes, then CreateProcess")) },
    }
}

/// Starts a child with `DETACHED_PROCESS` and `CREATE_NEW_PROCESS_GROUP`, first also with
/// `CREATE_BREAKAWAY_FROM_JOB`, which the run's job must refuse. Prints the result line with the
/// child's process id, then waits for the run's timeout to end the probe. Returns only when no
/// child could be started.
fn outlive_timeout() -> Attempt {
    let detached = DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP;
    let (child, breakaway) = match start_detached_child(detached | CREATE_BREAKAWAY_FROM_JOB) {
        Ok(child) => (child, "CREATE_BREAKAWAY_FROM_JOB succeeded, so it left the run's job".to_owned()),
        Err(refused) => match start_detached_child(detached) {
            Ok(child) => (child, format!("CREATE_BREAKAWAY_FROM_JOB failed first: {refused}")),
            Err(error) => return Attempt::failure(&error, "starting a detached process"),
        },
    };
    let pid = child.id();
    let detail = format!("started process {pid} with DETACHED_PROCESS and CREATE_NEW_PROCESS_GROUP; {breakaway}");
    Attempt { pid: Some(pid), ..Attempt::success(detail) }.print();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Creates a file through the link `planted`, which selftest created, then creates a link of
/// its own at `link` to `target` and a file through it. The attempt succeeded when a file was
/// created through either link.
fn write_through_links(planted: &Path, link: &Path, target: &Path) -> Attempt {
    let through_planted = create_with(&planted.join("through-planted"), b"escaped\r\n");
    let mut attempts = vec![through_planted];
    match create_link(link, target) {
        Ok(kind) => {
            let through_own = create_with(&link.join("through-own"), b"escaped\r\n");
            attempts.push(Attempt { detail: format!("{kind} created; {}", through_own.detail), ..through_own });
        }
        Err(error) => attempts.push(Attempt::failed_without_code(format!("creating a link at {} failed: {error}", short(link)))),
    }
    combine(&attempts)
}

/// Creates a directory link at `link` to `target`: a junction with `mklink /J`, which any user
/// may create, or else a directory symbolic link, which needs a privilege or developer mode.
/// Returns which kind it created.
pub(super) fn create_link(link: &Path, target: &Path) -> Result<&'static str, String> {
    // cmd's mklink exits 0 even when it fails (so under Wine 8.0), so the link itself is the
    // evidence.
    let output = Command::new("cmd").arg("/c").arg("mklink").arg("/J").arg(link).arg(target).stdin(Stdio::null()).output();
    if std::fs::symlink_metadata(link).is_ok() {
        return Ok("a junction");
    }
    let junction_error = match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned() + String::from_utf8_lossy(&output.stderr).trim(),
        Err(error) => error.to_string(),
    };
    match std::os::windows::fs::symlink_dir(target, link) {
        Ok(()) => Ok("a directory symbolic link"),
        Err(error) => Err(format!("mklink /J: {junction_error}; a directory symbolic link: {error}")),
    }
}

/// Opens `url` through the shell. The attempt succeeded when the request left the run's job:
/// the shell passed it to a process that was already running, or started a process outside the
/// job. A failed call, or a new process inside the job, keeps the request in the sandbox.
fn open_url(url: &str) -> Attempt {
    let what = format!("ShellExecuteExW of {url}");
    let (pid, job) = match sys::shell_execute(url) {
        ShellOutcome::Failed(error) => return Attempt::failure(&error, &what),
        ShellOutcome::HandedOff => {
            return Attempt::success(format!("{what} succeeded without starting a process: a process that was already running took the request"));
        }
        ShellOutcome::Started { pid, job } => (pid, job),
    };
    let started = format!("{what} started process {pid}");
    match job {
        JobMembership::SameJob => Attempt::failed_without_code(format!("{started}, inside the run's job")),
        // The shell creates the process whose handle it returns as a child of the caller, and
        // the job keeps a child in it unless breakaway is allowed, which the timeout probe checks.
        JobMembership::Exited => {
            Attempt::failed_without_code(format!("{started}, which exited before the job's process list was read; as the probe's child it ran in the job"))
        }
        JobMembership::Outside => Attempt { pid: Some(pid), ..Attempt::success(format!("{started}, which runs outside the run's job")) },
        JobMembership::Unknown(error) => Attempt::success(format!("{started}, and the job's process list could not be read ({error}), so it may run outside")),
    }
}
