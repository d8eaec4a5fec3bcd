//! The supervisor: the palisade process on the host side. It forks the sandbox's init into new
//! namespaces, writes its user mapping, enforces the wall-clock timeout, forwards signals, and
//! turns what init reports into an [`Outcome`].

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_policy::Policy;
use rustix::event::{PollFd, PollFlags};

use crate::init::{self, InitContext, Message};
use crate::plan::MountPlan;
use crate::scrub;
use crate::userns;
use crate::{landlock, seccomp, sys, Error, Exit, Identity, Layers, Outcome};

/// Signals the supervisor handles instead of dying from them.
const HANDLED_SIGNALS: &[libc::c_int] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGWINCH];

/// Runs `argv` in a new sandbox and waits for it.
pub fn run(policy: &Policy, plan: &MountPlan, identity: Identity, argv: &[OsString], layers: Layers) -> Result<Outcome, Error> {
    let started = Instant::now();
    // Both are computed here, before the fork, so the command stage only applies them.
    let confinement = init::Confinement {
        landlock: layers.landlock_abi.map(|_| landlock::rules_for_plan(plan)),
        seccomp: layers.seccomp.then(|| seccomp::build(seccomp::FilterOptions { allow_ptrace: policy.allow_ptrace, no_sockets: false })),
    };
    let pipe = |what| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::setup("create", what, e.into()));
    let (go_read, go_write) = pipe("the start pipe")?;
    let (report_read, report_write) = pipe("the report pipe")?;
    let (idmap_userns, idmap_helper) = match identity {
        Identity::Root { sandbox_uid } if plan.needs_idmap() => {
            let (fd, helper) = userns::idmap_namespace(sandbox_uid).map_err(Error::Sandbox)?;
            (Some(fd), Some(helper))
        }
        _ => (None, None),
    };
    let _reap_helper = ReapOnDrop(idmap_helper);
    let signal_fd = sys::block_into_signalfd(HANDLED_SIGNALS).map_err(|e| Error::setup("block", "signals", e))?;

    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
    if matches!(identity, Identity::User { .. }) {
        flags |= libc::CLONE_NEWUSER;
    }
    // The supervisor is single-threaded here: the palisade binary starts no threads before
    // this point, which `clone_fork` requires.
    let pid = match sys::clone_fork(flags) {
        Ok(0) => {
            drop(go_write);
            drop(report_read);
            drop(signal_fd);
            init::main(InitContext { policy, plan, argv, identity, go: Some(go_read), report: report_write, idmap_userns, confinement: &confinement })
        }
        Ok(pid) => pid,
        Err(error) => return Err(userns::explain_clone_failure(error)),
    };
    drop(go_read);
    drop(report_write);
    drop(idmap_userns);
    let child = rustix::process::Pid::from_raw(pid).expect("clone returned a positive pid");
    let pidfd = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty())
        .map_err(|e| Error::setup("open a pidfd for", format!("process {pid}"), e.into()));
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(error) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err(error);
        }
    };

    if let Identity::User { uid, gid } = identity {
        if let Err(error) = userns::write_maps(pid, uid, gid) {
            let _ = sys::kill(pid, libc::SIGKILL);
            reap(pid);
            return Err(error);
        }
    }
    if rustix::io::write(&go_write, b"1").is_err() {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    // `go_write` stays open until the run ends: init treats its hang-up as this process's death.
    let revert = RevertList::capture(&policy.filesystem.revert_if_created);
    let new_repositories = scrub::NewRepositories::capture(&policy.filesystem.writable, &policy.filesystem.git_entries);

    let mut bytes = Vec::new();
    let end = wait_for_exit(pid, &pidfd, &signal_fd, &report_read, &mut bytes, policy.limits.timeout);
    let status = match end {
        // Init may still be tearing its namespaces down. It is reaped now if it is done, and
        // otherwise by `reap_finished` at the next run or when this process exits.
        End::Finished => reap_finished(pid),
        End::Exited | End::TimedOut => {
            let status = reap(pid);
            let _ = std::fs::File::from(report_read).read_to_end(&mut bytes);
            status
        }
    };
    let timed_out = end == End::TimedOut;
    let messages = Message::decode_all(&bytes);
    drop(go_write);
    remove_placeholders(&messages);
    revert.apply();
    new_repositories.scrub();

    let wall_time = started.elapsed();
    if timed_out {
        return Ok(Outcome { exit: Exit::TimedOut, wall_time, exec_error: None, layers });
    }
    let mut exec_error = None;
    for message in &messages {
        match message {
            Message::Error(text) => {
                // Under Ubuntu's AppArmor restriction, creating the user namespace succeeds but
                // the first mount inside fails; the host setting that causes it is the news.
                if let (Identity::User { .. }, Some((cause, fix))) = (identity, userns::diagnose()) {
                    return Err(Error::UserNamespaces { cause: format!("{cause}; inside the sandbox: {text}"), fix });
                }
                return Err(Error::Sandbox(text.clone()));
            }
            Message::Exec { code, reason } => exec_error = Some((*code, reason.clone())),
            _ => {}
        }
    }
    let exit = messages
        .iter()
        .find_map(|message| match message {
            Message::Exited(code) => Some(Exit::Code(*code)),
            Message::Signaled(signal) => Some(Exit::Signal(*signal)),
            _ => None,
        })
        .unwrap_or(match status {
            Some(WaitStatus::Signaled(signal)) => Exit::Signal(signal),
            Some(WaitStatus::Exited(code)) => Exit::Code(code),
            None => Exit::Signal(libc::SIGKILL),
        });
    Ok(Outcome { exit, wall_time, exec_error, layers })
}

/// The way waiting for a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Init reported that no process of the run is left.
    Finished,
    /// Init exited.
    Exited,
    /// The timeout expired and init, with every process of the run, was killed.
    TimedOut,
}

/// Waits until the run ends, forwarding signals and collecting init's reports meanwhile.
fn wait_for_exit(
    pid: libc::pid_t,
    pidfd: &OwnedFd,
    signal_fd: &OwnedFd,
    report: &OwnedFd,
    bytes: &mut Vec<u8>,
    timeout: Option<Duration>,
) -> End {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut report_open = true;
    loop {
        let remaining = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            // Killing PID 1 of the namespace makes the kernel kill every other process in it.
            let _ = sys::kill(pid, libc::SIGKILL);
            return End::TimedOut;
        }
        let timespec = remaining.map(|left| rustix::fs::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        });
        let report_events = if report_open { PollFlags::IN } else { PollFlags::empty() };
        let mut fds = [
            PollFd::new(pidfd, PollFlags::IN),
            PollFd::new(signal_fd, PollFlags::IN),
            PollFd::new(report, report_events),
        ];
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                let _ = sys::kill(pid, libc::SIGKILL);
                return End::Exited;
            }
        }
        if !fds[2].revents().is_empty() {
            let mut buffer = [0u8; 4096];
            match rustix::io::read(report, &mut buffer) {
                Ok(0) | Err(_) => report_open = false,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
            if Message::decode_all(bytes).contains(&Message::Finished) {
                return End::Finished;
            }
        }
        if !fds[0].revents().is_empty() {
            return End::Exited;
        }
        if !fds[1].revents().is_empty() {
            // Init shares this process's group, so a terminal's signals (Ctrl-C, a resize)
            // reach it directly and it forwards them to the command, which runs in its own
            // session. Only signals sent to palisade itself are passed on from here.
            if let Ok((signal, from_terminal)) = sys::read_signal(signal_fd.as_fd()) {
                if !from_terminal {
                    let _ = sys::kill(pid, signal);
                }
            }
        }
    }
}

enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Init processes that reported the end of their run but were still tearing down their
/// namespaces when the supervisor returned.
static UNREAPED: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// Reaps a finished init if it has exited, and earlier ones that have exited since; one still
/// exiting is kept for the next call. Its status is not needed: init reported the outcome.
fn reap_finished(pid: libc::pid_t) -> Option<WaitStatus> {
    let mut unreaped = UNREAPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    unreaped.push(pid);
    unreaped.retain(|&pid| {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local integer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        rc == 0
    });
    None
}

fn reap(pid: libc::pid_t) -> Option<WaitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid local integer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
    if libc::WIFSIGNALED(status) {
        Some(WaitStatus::Signaled(libc::WTERMSIG(status)))
    } else {
        Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
    }
}

/// Removes the placeholders init created on the host. Each is removed only while it is still a
/// FIFO with mode 000. A failure is reported on stderr, and the next run in the same workspace
/// adopts and removes a leftover.
fn remove_placeholders(messages: &[Message]) {
    for message in messages {
        if let Message::Placeholder(path) = message {
            remove_placeholder(path);
        }
    }
}

fn remove_placeholder(path: &PathBuf) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Ok(meta) = path.symlink_metadata() else { return };
    if !meta.file_type().is_fifo() || meta.permissions().mode() & 0o7777 != 0 {
        eprintln!("palisade: warning: placeholder {} was changed on the host; leaving it in place", path.display());
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => eprintln!("palisade: warning: failed to remove placeholder {}: {error}", path.display()),
    }
}

/// Names that must not be created but cannot be covered while missing, with whether each
/// existed before the run.
pub(crate) struct RevertList {
    entries: Vec<(PathBuf, bool)>,
}

impl RevertList {
    pub(crate) fn capture(paths: &[PathBuf]) -> RevertList {
        RevertList { entries: paths.iter().map(|path| (path.clone(), path.symlink_metadata().is_ok())).collect() }
    }

    /// Removes every listed name the run created. Only files, symlinks and empty directories are
    /// removed; anything else is reported and left for the user to inspect.
    pub(crate) fn apply(&self) {
        for (path, existed) in &self.entries {
            if *existed {
                continue;
            }
            let Ok(meta) = path.symlink_metadata() else { continue };
            let removed = if meta.is_dir() { std::fs::remove_dir(path) } else { std::fs::remove_file(path) };
            match removed {
                Ok(()) => eprintln!(
                    "palisade: removed {}, which the command created: git would read it from outside the sandbox",
                    path.display()
                ),
                Err(error) => eprintln!(
                    "palisade: warning: the command created {}, which git reads from outside the sandbox, and removing it failed: {error}; inspect it before running git there",
                    path.display()
                ),
            }
        }
    }
}

/// Reaps the idmap helper when the run is over, whichever way it ends.
struct ReapOnDrop(Option<libc::pid_t>);

impl Drop for ReapOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            userns::reap_child(pid);
        }
    }
}
