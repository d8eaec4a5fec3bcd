//! The server's child processes. Every tool call runs the palisade binary again (`palisade run`
//! or `palisade check`), because `palisade_linux::run` forks with `clone` and needs a
//! single-threaded process, which the server is not.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

/// The descriptor a `palisade session-host` child finds its session's socket at.
pub const SESSION_SOCKET_FD: i32 = 3;

/// The descriptor a `palisade session-host` child writes its event stream to.
pub const SESSION_EVENTS_FD: i32 = 4;

/// Bytes of stdout and of stderr kept for the result; the rest is counted and dropped.
pub const OUTPUT_KEPT_BYTES: usize = 64 << 10;

/// How long a run may take to end after SIGTERM before it gets SIGKILL: palisade's own grace
/// for the command (5 s), plus time to remove its placeholders and scrub new git repositories.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// The first bytes of one output stream and its full length.
#[derive(Debug, Default)]
pub struct Captured {
    pub kept: Vec<u8>,
    pub total: u64,
}

impl Captured {
    pub fn is_cut(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// Returns the kept bytes as text. Invalid UTF-8 is replaced, and a character split by the
    /// cut is dropped.
    pub fn text(&self) -> String {
        let mut bytes = self.kept.as_slice();
        if let Err(error) = std::str::from_utf8(bytes) {
            if error.error_len().is_none() && self.is_cut() {
                bytes = &bytes[..error.valid_up_to()];
            }
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// A child that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Starts palisade child processes.
pub struct Spawner {
    /// The binary's path, shown as the children's `argv[0]`.
    name: PathBuf,
    server: Pid,
}

impl Spawner {
    pub fn new() -> Spawner {
        let name = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("palisade"));
        Spawner { name, server: rustix::process::getpid() }
    }

    /// Runs the palisade binary with `args` in `cwd`, feeding it `stdin`, until it exits or
    /// `cancelled` completes. Returns `None` when cancelled, after the child is gone.
    pub async fn run(&self, args: &[OsString], cwd: &Path, stdin: Option<Vec<u8>>, cancelled: impl Future<Output = ()>) -> io::Result<Option<Finished>> {
        let stdin_kind = if stdin.is_some() { Stdio::piped() } else { Stdio::null() };
        let mut child = self.spawn(args, cwd, stdin_kind, Stdio::piped(), None)?;
        let (stdout, stderr, input) = (child.stdout.take(), child.stderr.take(), child.stdin.take());
        let collect = async {
            let (stdout, stderr, (), status) = tokio::join!(capture(stdout), capture(stderr), feed(input, stdin), child.wait());
            status.map(|status| Finished { status, stdout, stderr })
        };
        tokio::select! {
            finished = collect => finished.map(Some),
            () = cancelled => {
                terminate(&mut child).await;
                Ok(None)
            }
        }
    }

    /// Starts `palisade session-host` with `args`, in `cwd`, with `socket` as its descriptor 3.
    /// Its stderr is piped, for the reason when it fails.
    pub fn spawn_session(&self, args: &[OsString], cwd: &Path, socket: &OwnedFd, events: &OwnedFd) -> io::Result<Child> {
        self.spawn(args, cwd, Stdio::null(), Stdio::null(), Some((socket, events)))
    }

    fn spawn(&self, args: &[OsString], cwd: &Path, stdin: Stdio, stdout: Stdio, session: Option<(&OwnedFd, &OwnedFd)>) -> io::Result<Child> {
        // `/proc/self/exe` is this very binary even if the file was replaced since, so every
        // run takes the flags the way this server rendered them.
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0(&self.name)
            .args(args)
            .current_dir(cwd)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            // The server's log level is for the server: a child's log lines would land in the
            // command's stderr.
            .env_remove("PALISADE_LOG")
            .kill_on_drop(true);
        let server = self.server;
        let session = session.map(|(socket, events)| [(socket.as_raw_fd(), SESSION_SOCKET_FD), (events.as_raw_fd(), SESSION_EVENTS_FD)]);
        // SAFETY: the closure runs in the forked child before `execve`. It makes a few system
        // calls through rustix and libc and builds an `io::Error` from an errno. None of these
        // allocates or takes a lock that another thread of the server could hold. `socket`
        // stays open in the parent until `spawn` returns.
        unsafe {
            command.pre_exec(move || {
                // The session's descriptors go to 3 and 4, without close-on-exec; dup2 onto
                // itself would keep the flag. Both sources are above 4, so neither overwrites
                // the other (see `Tools::session_open`).
                for (source, target) in session.into_iter().flatten() {
                    let rc = if source == target { libc::fcntl(source, libc::F_SETFD, 0) } else { libc::dup2(source, target) };
                    if rc < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // A server killed without a chance to clean up still ends its runs: palisade
                // handles SIGTERM by stopping the command and cleaning up. The signal follows
                // the death of the forking thread, which is always the main thread here.
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                if rustix::process::getppid() != Some(server) {
                    // The server died before the line above took effect.
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// Ends a child: SIGTERM first, so that `palisade run` stops the command and cleans up after
/// it, then SIGKILL if it takes longer than [`TERMINATE_WAIT`].
async fn terminate(child: &mut Child) {
    let pid = child.id().and_then(|pid| Pid::from_raw(pid as i32));
    if let Some(pid) = pid {
        if let Err(error) = rustix::process::kill_process(pid, Signal::TERM) {
            tracing::warn!("mcp: failed to send SIGTERM to palisade process {pid}: {error}");
        }
    }
    match tokio::time::timeout(TERMINATE_WAIT, child.wait()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!("mcp: failed to wait for a cancelled palisade process: {error}"),
        Err(_) => {
            tracing::warn!("mcp: palisade process {pid:?} did not exit within {TERMINATE_WAIT:?} of SIGTERM; sending SIGKILL");
            if let Err(error) = child.kill().await {
                tracing::warn!("mcp: failed to kill palisade process {pid:?}: {error}");
            }
        }
    }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_KEPT_BYTES`].
async fn capture(pipe: Option<impl AsyncRead + Unpin>) -> Captured {
    let mut captured = Captured::default();
    let Some(mut pipe) = pipe else {
        return captured;
    };
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) => return captured,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!("mcp: failed to read a palisade process's output: {error}");
                return captured;
            }
        };
        let room = OUTPUT_KEPT_BYTES.saturating_sub(captured.kept.len());
        captured.kept.extend_from_slice(&buffer[..read.min(room)]);
        captured.total += read as u64;
    }
}

/// Writes `data` to the child's stdin and closes it. A command that exits without reading
/// all of it is no error.
async fn feed(input: Option<ChildStdin>, data: Option<Vec<u8>>) {
    let (Some(mut input), Some(data)) = (input, data) else {
        return;
    };
    if let Err(error) = input.write_all(&data).await {
        if error.kind() != io::ErrorKind::BrokenPipe {
            tracing::warn!("mcp: failed to write stdin to a palisade process: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_text_drops_character_split_by_cut() {
        let cut = Captured { kept: "ab\u{e9}".as_bytes()[..3].to_vec(), total: 10 };
        assert_eq!(cut.text(), "ab");
        let whole = Captured { kept: b"ab\xff".to_vec(), total: 3 };
        assert_eq!(whole.text(), "ab\u{fffd}");
    }
}
