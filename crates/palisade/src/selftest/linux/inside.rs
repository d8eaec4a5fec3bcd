//! The attempts that `palisade selftest-probe` makes inside the sandbox on Linux. Each prints
//! one result line (`../attempt.rs`) for the host side (`linux.rs`) to read.
//!
//! The probe process is single-threaded: palisade starts no thread before it dispatches to the
//! probe. That is what makes `fork` and `unshare(CLONE_NEWUSER)` here sound and possible.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::{Pid, WaitOptions};

use crate::selftest::attempt::{create_and_append, look_up_variable, read_file, short, Attempt, INSIDE_CONTENT};
use crate::selftest::Probe;

/// How long the loopback probe waits for its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An unknown `bpf` command: a kernel that reads it fails the call with EINVAL and does nothing.
const BPF_UNKNOWN_COMMAND: libc::c_long = 9999;

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
    let result = match probe {
        Probe::WriteOutsideWorkspace => create_and_append(&path(0)?, &path(1)?),
        Probe::WriteInsideWorkspace => {
            let target = path(0)?;
            let written = OpenOptions::new().write(true).create_new(true).open(&target).and_then(|mut file| file.write_all(INSIDE_CONTENT.as_bytes()));
            Attempt::of(written, &format!("creating {}", short(&target)))
        }
        Probe::ReadCredential => read_file(&path(0)?),
        Probe::GitHook => {
            let hook = path(0)?;
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&hook)
                .and_then(|mut file| file.write_all(b"#!/bin/sh\nexit 0\n"));
            Attempt::of(created, &format!("creating {}", short(&hook)))
        }
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
        Probe::TimeoutDetached => outlive_timeout(),
        Probe::UserNamespace => create_user_namespace(),
        Probe::Ptrace => trace_child(),
        Probe::IoUring => io_uring_setup(),
        Probe::Bpf => bpf_unknown_command(),
        Probe::ReadShadow => {
            let shadow = path(0)?;
            // Opening is enough to show the file is readable; nothing is read from it.
            Attempt::of(File::open(&shadow), &format!("opening {} for reading", shadow.display()))
        }
        // Not in the Linux catalogue, so `selftest` never runs them here and `selftest-probe`
        // rejects their ids.
        Probe::WriteStreamOfProtected
        | Probe::WriteShortNameOfProtected
        | Probe::WriteThroughJunction
        | Probe::WriteWhereUsersMayModify
        | Probe::ShellExecuteUrl => anyhow::bail!("probe {} runs on Windows only", probe.id()),
        Probe::WriteCaseVariantOfProtected => anyhow::bail!("probe {} runs on Windows and macOS only", probe.id()),
        Probe::CpuInfo | Probe::EnvFileHidden | Probe::FullNetwork | Probe::ListenWithoutEgress | Probe::NestedSandbox | Probe::ReadCaseVariantOfHidden => {
            anyhow::bail!("probe {} runs on macOS only", probe.id())
        }
    };
    result.print();
    Ok(0)
}

/// Creates a pipe whose ends the probe's children use to wait for the probe.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe()?)
}

/// Forks a child that blocks until every copy of `write_end` is closed, then exits. Returns its
/// pid. Dropping the parent's `write_end` releases all such children at once, and so does the
/// probe's death, so they cannot outlive it.
fn fork_waiting_child(read_end: &OwnedFd, write_end: &OwnedFd) -> io::Result<libc::pid_t> {
    let (read_fd, write_fd) = (read_end.as_raw_fd(), write_end.as_raw_fd());
    // SAFETY: the probe process is single-threaded (see the module comment), so no lock or
    // allocator state is held by another thread at the fork. The child runs only the raw calls
    // below and leaves through `_exit`, so it never returns into Rust code or drops the
    // parent's values.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child. The descriptors are the child's own copies, `byte` is a local
        // one-byte buffer, and `_exit` does not return.
        unsafe {
            libc::close(write_fd);
            let mut byte = 0u8;
            while libc::read(read_fd, (&raw mut byte).cast(), 1) < 0 && *libc::__errno_location() == libc::EINTR {}
            libc::_exit(0);
        }
    }
    Ok(pid)
}

/// Waits for the next change of state of the child `pid`: its exit, or the stop of a child
/// this process traces, which a tracer sees without `WUNTRACED`.
fn wait_for(pid: libc::pid_t) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
    }
}

/// Starts waiting children until `fork` fails or `cap` of them run, then releases and reaps
/// them all.
fn start_processes(cap: u64) -> Attempt {
    let (read_end, write_end) = match pipe() {
        Ok(ends) => ends,
        Err(error) => return Attempt::failure(&error, "creating a pipe"),
    };
    let mut children = Vec::new();
    let mut failure = None;
    while (children.len() as u64) < cap {
        match fork_waiting_child(&read_end, &write_end) {
            Ok(pid) => children.push(pid),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    drop(write_end);
    for &pid in &children {
        wait_for(pid);
    }
    let started = children.len() as u64;
    match failure {
        None => Attempt { count: Some(started), ..Attempt::success(format!("started all {started} processes")) },
        Some(error) => Attempt { count: Some(started), ..Attempt::failure(&error, &format!("started {started} processes, then fork")) },
    }
}

/// Forks a child that leaves the session with `setsid` and waits forever, prints the result
/// line, and waits forever too, so that only the run's timeout can end either. Returns only
/// when the child could not be started.
fn outlive_timeout() -> Attempt {
    let (read_end, write_end) = match pipe() {
        Ok(ends) => ends,
        Err(error) => return Attempt::failure(&error, "creating a pipe"),
    };
    let (read_fd, write_fd) = (read_end.as_raw_fd(), write_end.as_raw_fd());
    // SAFETY: as in `fork_waiting_child`: the probe is single-threaded, and the child runs only
    // the raw calls below and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Attempt::failure(&io::Error::last_os_error(), "fork");
    }
    if pid == 0 {
        // SAFETY: in the child. The descriptors are the child's own copies, the path is a
        // NUL-terminated literal, and `pause` never returns to Rust code. The child's stdio
        // moves to /dev/null so that, should it survive, it does not hold the host's pipes open.
        unsafe {
            libc::close(read_fd);
            let status: &[u8] = if libc::setsid() < 0 { b"!" } else { b"x" };
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
            libc::write(write_fd, status.as_ptr().cast(), 1);
            libc::close(write_fd);
            loop {
                libc::pause();
            }
        }
    }
    drop(write_end);
    let mut status = [0u8; 1];
    match File::from(read_end).read_exact(&mut status) {
        Ok(()) if status == *b"x" => {}
        Ok(()) => return Attempt::failed_without_code("setsid failed in the child".into()),
        Err(error) => return Attempt::failure(&error, "waiting for the detached child"),
    }
    Attempt::success("a child left the session with setsid and keeps running".into()).print();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn create_user_namespace() -> Attempt {
    // SAFETY: unshare takes no pointers. It changes only this probe process, which exits right
    // after, and the process is single-threaded as CLONE_NEWUSER requires.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    let result = if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    Attempt::of(result, "unshare(CLONE_NEWUSER)")
}

/// Attaches to a waiting child of the probe's own with `PTRACE_ATTACH`, and detaches again if
/// that worked.
fn trace_child() -> Attempt {
    let (read_end, write_end) = match pipe() {
        Ok(ends) => ends,
        Err(error) => return Attempt::failure(&error, "creating a pipe"),
    };
    let pid = match fork_waiting_child(&read_end, &write_end) {
        Ok(pid) => pid,
        Err(error) => return Attempt::failure(&error, "fork"),
    };
    // SAFETY: PTRACE_ATTACH and PTRACE_DETACH take a pid and ignore the address and data
    // arguments, so no memory is passed to the kernel.
    let rc = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH as libc::c_long, pid as libc::c_long, 0 as libc::c_long, 0 as libc::c_long) };
    let result = if rc == 0 {
        // The attach stops the child; wait for the stop before detaching.
        wait_for(pid);
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH as libc::c_long, pid as libc::c_long, 0 as libc::c_long, 0 as libc::c_long) };
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    drop(write_end);
    wait_for(pid);
    Attempt::of(result, "ptrace(PTRACE_ATTACH) of a child process")
}

/// Calls `io_uring_setup(1, NULL)`. A kernel that processes the call fails it with EFAULT on
/// the null pointer; only a refusal in front of it (the seccomp filter, or the
/// `kernel.io_uring_disabled` setting) answers EPERM.
pub fn io_uring_setup() -> Attempt {
    // SAFETY: the parameter pointer is null, which the kernel checks before any access, so no
    // memory of this process is read or written.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1 as libc::c_long, std::ptr::null_mut::<libc::c_void>()) };
    syscall_attempt(rc, "io_uring_setup(1, NULL)")
}

/// Calls `bpf` with an unknown command, a null attribute pointer and size 0: a kernel that
/// processes the call answers EINVAL and does nothing.
pub fn bpf_unknown_command() -> Attempt {
    // SAFETY: the attribute pointer is null and its size 0, so the kernel reads no memory of
    // this process.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_UNKNOWN_COMMAND, std::ptr::null_mut::<libc::c_void>(), 0 as libc::c_long) };
    syscall_attempt(rc, "bpf(unknown command, NULL, 0)")
}

fn syscall_attempt(rc: libc::c_long, what: &str) -> Attempt {
    if rc >= 0 {
        // Neither call returns a descriptor with these arguments; close one should it happen.
        if let Ok(fd) = i32::try_from(rc) {
            // SAFETY: `fd` was just returned by the kernel to this process and nothing else
            // owns it.
            unsafe { libc::close(fd) };
        }
        return Attempt::success(format!("{what} returned {rc}"));
    }
    Attempt::failure(&io::Error::last_os_error(), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_operation_keeps_its_errno() {
        let attempt = Attempt::of::<()>(Err(io::Error::from_raw_os_error(libc::EROFS)), "creating outside/created");
        assert!(!attempt.succeeded);
        assert_eq!(attempt.errno, Some(libc::EROFS));
        assert!(attempt.detail.starts_with("creating outside/created failed: Read-only file system"), "{}", attempt.detail);
    }
}
