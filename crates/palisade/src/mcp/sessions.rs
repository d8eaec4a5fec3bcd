//! Sessions of the MCP server: `session_open`, `session_exec` and `session_close`.
//!
//! Each session is one `palisade session-host` child: a sandbox whose host process runs the
//! commands it receives on a socket (see `palisade_linux::session`). The server keeps what a
//! shell would carry from one command to the next, the working directory and the exported
//! environment, and sends it with every command. A shell command line runs inside a small
//! wrapper that writes the final directory and environment to descriptor 3 after the line ran.
//!
//! Commands of one session run one after another: a call waits for the one before it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_linux::session::{self, ExecRequest, Reply, Request};
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::Child;

use crate::mcp::child::{Captured, OUTPUT_KEPT_BYTES};

/// Sessions open at once in one server; each is a sandbox with processes of its own.
pub const MAX_SESSIONS: usize = 16;

/// How long a new session may take to report that it is ready.
const START_WAIT: Duration = Duration::from_secs(30);

/// How long a command's output is still read after it exited. A background process that kept
/// stdout or stderr open keeps the pipe from closing; the result then has what arrived by this deadline.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// How long a session may take to end once its socket is closed, before its palisade process
/// gets SIGTERM, and then SIGKILL after as long again.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long the server waits, once a session's palisade has exited, for the rest of its stderr.
/// A process the session left behind could keep the pipe open.
const STDERR_WAIT: Duration = Duration::from_secs(1);

/// The bytes of palisade's own stderr kept for a session, for the message when it fails.
const STDERR_KEPT_BYTES: usize = 16 << 10;

/// Runs a shell command line in the session's shell state: `$1` is the line. The directory and
/// the exported environment after the line are written to descriptor 3, which the line itself
/// does not get. A line that calls `exit` skips this, and the state stays as it was.
const SHELL_WRAPPER: &str = r#"__palisade_line=$1; shift; eval "$__palisade_line" 3>&-; __palisade_status=$?; { printf '%s\0' "$PWD"; /usr/bin/env -0; } >&3; exit $__palisade_status"#;

/// Variables the shell sets for itself, which are not carried to the next command.
const SHELL_OWN_VARIABLES: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// The descriptors of a new session: the server keeps `socket` and `events_read`, and the
/// session's palisade gets the other two as its descriptors 3 and 4.
pub struct Descriptors {
    pub socket: OwnedFd,
    pub host_socket: OwnedFd,
    pub events_read: OwnedFd,
    pub events_write: OwnedFd,
}

impl Descriptors {
    pub fn create() -> io::Result<Descriptors> {
        let (socket, host_socket) = session::socket_pair()?;
        let (events_read, events_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)?;
        // The child moves the two to 3 and 4. Copies above 4 make sure that moving one cannot
        // overwrite the other first.
        let above = |fd: OwnedFd| -> io::Result<OwnedFd> { Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 5)?) };
        Ok(Descriptors { socket, host_socket: above(host_socket)?, events_read, events_write: above(events_write)? })
    }
}

/// The size the server requests for a session's event pipe, the most an unprivileged
/// process may set by default. The proxy drops lines it cannot write at once, so the pipe must
/// absorb bursts while the server is busy elsewhere.
const EVENT_PIPE_BYTES: usize = 1 << 20;

/// Events kept for the command running; more are counted only. The session's report lists
/// them all.
const MAX_KEPT_EVENTS: usize = 1000;

/// The refusals palisade's proxy reported on the session's event pipe, not yet claimed by a
/// command's result.
#[derive(Default)]
struct Events {
    /// Bytes of a line whose end has not arrived yet.
    partial: Vec<u8>,
    kept: Vec<Value>,
    not_kept: u64,
}

impl Events {
    /// Reads what is in `pipe` now, without waiting. Returns the error that stopped the
    /// reading: `WouldBlock` once the pipe is empty; `Ok` at its end.
    fn read(&mut self, pipe: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let mut buffer = [0u8; 16 << 10];
        let stopped = loop {
            match rustix::io::read(pipe, &mut buffer) {
                Ok(0) => break Ok(()),
                Ok(read) => self.partial.extend_from_slice(&buffer[..read]),
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => break Err(io::Error::from(error)),
            }
        };
        if let Some(end) = self.partial.iter().rposition(|&byte| byte == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            for line in complete.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
                match serde_json::from_slice(line) {
                    Ok(event) if self.kept.len() < MAX_KEPT_EVENTS => self.kept.push(event),
                    Ok(_) => self.not_kept += 1,
                    Err(error) => tracing::warn!("mcp: an event line of a session does not parse: {error}"),
                }
            }
        }
        stopped
    }

    /// Returns every event since the last call, with the number past [`MAX_KEPT_EVENTS`].
    fn take(&mut self) -> (Vec<Value>, u64) {
        (std::mem::take(&mut self.kept), std::mem::take(&mut self.not_kept))
    }
}

/// Reads the event pipe whenever it has data, until its end: the session's palisade exited.
async fn read_events(pipe: Arc<AsyncFd<OwnedFd>>, events: Arc<Mutex<Events>>) {
    loop {
        let Ok(mut guard) = pipe.readable().await else { return };
        match guard.try_io(|pipe| events.lock().expect("events lock").read(pipe.get_ref().as_fd())) {
            Ok(Ok(())) => return,
            Ok(Err(error)) => {
                tracing::warn!("mcp: failed to read a session's events: {error}");
                return;
            }
            Err(_would_block) => {}
        }
    }
}

/// The state carried from one command of a session to the next.
struct State {
    cwd: PathBuf,
    /// `NAME=VALUE` entries, in the order the shell printed them.
    env: Vec<OsString>,
    next_id: u64,
    /// Set once the session has ended; the reason.
    ended: Option<String>,
}

/// One open session.
pub struct Session {
    pub name: String,
    socket: AsyncFd<OwnedFd>,
    /// Held by the command running; the next waits for it.
    state: tokio::sync::Mutex<State>,
    process: tokio::sync::Mutex<Option<Child>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The task that reads palisade's stderr into `stderr`, until the end of the pipe.
    stderr_reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    events_pipe: Arc<AsyncFd<OwnedFd>>,
    events: Arc<Mutex<Events>>,
    pub report_path: PathBuf,
}

/// The request of one command of a session, checked against the ceiling already.
pub struct Exec {
    pub command: Command,
    /// `None` continues in the session's current directory.
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub stdin: Option<Vec<u8>>,
    pub env: Vec<(String, String)>,
    pub max_output: Option<u64>,
    /// Rows and columns of a pseudo-terminal for the command, instead of pipes.
    pub terminal: Option<(u16, u16)>,
}

pub enum Command {
    /// Run by `/bin/sh -c` inside the session's shell state; changes to the directory and the
    /// exported environment carry over.
    Line(String),
    /// Executed directly; changes nothing for later commands.
    Argv(Vec<OsString>),
}

/// The end of one command: its status, its output and the session's state after it.
#[derive(Debug, Default)]
pub struct Ended {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output_cut_at: Option<u64>,
    /// The reason the command could not start (exit code 126 or 127).
    pub exec_error: Option<String>,
    pub stdout: Captured,
    pub stderr: Captured,
    /// The output was still open when reading stopped, because a background process kept it open.
    pub output_held: bool,
    pub cwd: PathBuf,
    /// The requests palisade's proxy refused while the command ran, as the run report's
    /// `denials` entries.
    pub network_denials: Vec<Value>,
    /// Refusals past the ones kept in `network_denials`.
    pub network_denials_not_kept: u64,
}

/// The reasons a command gets no result.
pub enum ExecError {
    /// The session is gone; the reason, with the session's report when it wrote one.
    SessionEnded(String),
    /// The request does not fit in one message.
    TooLarge(usize),
    Io(io::Error),
}

impl Session {
    /// Starts a session with `child` (a `palisade session-host` that was given the other end
    /// of `socket`) and waits until it is ready or fails. On failure the error gives the
    /// reason, with palisade's stderr.
    pub async fn start(name: String, mut child: Child, socket: OwnedFd, events: OwnedFd, report_path: PathBuf) -> Result<Session, String> {
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|pipe| tokio::spawn(keep_stderr(pipe, Arc::clone(&stderr))));

        rustix::io::ioctl_fionbio(&socket, true).map_err(|error| format!("failed to make the session's socket non-blocking: {error}"))?;
        // SAFETY: `socket` is an open descriptor the `OwnedFd` owns, and the `AsyncFd` takes
        // that ownership: nothing else can close or replace it while the `AsyncFd` lives.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|error| format!("failed to watch the session's socket: {error}"))?;
        // Best effort: the default size, 64 KiB, is room for a few hundred events.
        let _ = rustix::pipe::fcntl_setpipe_size(&events, EVENT_PIPE_BYTES);
        // SAFETY: as for the socket; the pipe was created non-blocking.
        let events_pipe = unsafe { AsyncFd::register(events) }.map_err(|error| format!("failed to watch the session's event pipe: {error}"))?;

        let session = Session {
            name,
            socket,
            state: tokio::sync::Mutex::new(State { cwd: PathBuf::new(), env: Vec::new(), next_id: 1, ended: None }),
            events_pipe: Arc::new(events_pipe),
            events: Arc::default(),
            process: tokio::sync::Mutex::new(Some(child)),
            stderr,
            stderr_reader: Mutex::new(stderr_reader),
            report_path,
        };
        tokio::spawn(read_events(Arc::clone(&session.events_pipe), Arc::clone(&session.events)));

        let ready = tokio::time::timeout(START_WAIT, session.receive()).await;
        match ready {
            Ok(Ok(Some((Reply::Ready { cwd, env }, _)))) => {
                let mut state = session.state.lock().await;
                state.cwd = cwd;
                state.env = env;
                drop(state);
                Ok(session)
            }
            Ok(Ok(Some((reply, _)))) => {
                let reason = format!("the session sent {reply:?} before it was ready");
                Err(session.end(&reason).await)
            }
            Ok(Ok(None)) => Err(session.end("the session ended before it was ready").await),
            Ok(Err(error)) => Err(session.end(&format!("failed to read from the session: {error}")).await),
            Err(_) => Err(session.end(&format!("the session was not ready within {START_WAIT:?}")).await),
        }
    }

    /// Returns the session's current working directory.
    pub async fn cwd(&self) -> PathBuf {
        self.state.lock().await.cwd.clone()
    }

    /// Runs one command, after any command of this session still running. Returns `Ok(None)`
    /// when `cancelled` completed first; the command was killed then.
    pub async fn exec(&self, exec: Exec, cancelled: impl Future<Output = ()>) -> Result<Option<Ended>, ExecError> {
        tokio::pin!(cancelled);
        let mut state = tokio::select! {
            state = self.state.lock() => state,
            () = &mut cancelled => return Ok(None),
        };
        if let Some(reason) = &state.ended {
            return Err(ExecError::SessionEnded(reason.clone()));
        }
        // Refusals from between commands (of background processes) stay in the session's
        // report; this command's result lists only its own.
        self.take_events();
        let id = state.next_id;
        state.next_id += 1;
        let cwd = exec.cwd.clone().unwrap_or_else(|| state.cwd.clone());
        let env = merge_env(&state.env, &exec.env);
        let (argv, wants_state) = match &exec.command {
            Command::Line(line) => (
                ["/bin/sh", "-c", SHELL_WRAPPER, "sh", line.as_str()].map(OsString::from).to_vec(),
                true,
            ),
            Command::Argv(argv) => (argv.clone(), false),
        };
        let request = Request::Exec(ExecRequest { id, cwd: cwd.clone(), argv, env, state_fd: wants_state, terminal: exec.terminal }).encode();
        if request.len() > session::MAX_MESSAGE_BYTES {
            return Err(ExecError::TooLarge(request.len()));
        }

        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|error| ExecError::Io(error.into()));
        let state_pipe = if wants_state { Some(pipe()?) } else { None };
        let receiver = |fd: OwnedFd| pipe::Receiver::from_owned_fd(fd).map_err(ExecError::Io);
        let mut early_error = None;
        let streams = if exec.terminal.is_some() {
            let fds: Vec<_> = state_pipe.iter().map(|(_, write)| write.as_fd()).collect();
            self.send(&request, &fds).await.map_err(|error| self.lost(error))?;
            // The host sends the terminal's master side before it starts the command, or the
            // reason it could not create the terminal. The exit follows either way.
            let master = loop {
                match self.receive().await.map_err(|error| self.lost(error))? {
                    Some((Reply::Started { id: started }, mut fds)) if started == id => break fds.pop(),
                    Some((Reply::Failed { id: failed, reason, .. }, _)) if failed == id => {
                        early_error = Some(reason);
                        break None;
                    }
                    Some(_) => {}
                    None => {
                        drop(state);
                        return Err(ExecError::SessionEnded(self.end("the session ended while the command started").await));
                    }
                }
            };
            let master = master.map(terminal_master).transpose().map_err(ExecError::Io)?;
            Streams::Terminal(master)
        } else {
            let (stdin_read, stdin_write) = pipe()?;
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            let mut fds = vec![stdin_read.as_fd(), stdout_write.as_fd(), stderr_write.as_fd()];
            if let Some((_, write)) = &state_pipe {
                fds.push(write.as_fd());
            }
            self.send(&request, &fds).await.map_err(|error| self.lost(error))?;
            drop(fds);
            drop((stdin_read, stdout_write, stderr_write));
            Streams::Pipes {
                stdin: pipe::Sender::from_owned_fd(stdin_write).map_err(ExecError::Io)?,
                stdout: receiver(stdout_read)?,
                stderr: receiver(stderr_read)?,
            }
        };
        let state_receiver = state_pipe.map(|(read, _write)| receiver(read)).transpose()?;

        let output = OutputCounter::new(exec.max_output);
        let mut ended = Ended { cwd: cwd.clone(), ..Ended::default() };
        let (mut stdout_captured, mut stderr_captured) = (Captured::default(), Captured::default());
        let mut state_bytes = Vec::new();
        let finished = {
            let reading = async {
                match streams {
                    Streams::Pipes { stdin, stdout, stderr } => {
                        tokio::join!(
                            feed(stdin, exec.stdin.as_deref()),
                            capture(stdout, &mut stdout_captured, &output),
                            capture(stderr, &mut stderr_captured, &output),
                            read_all(state_receiver, &mut state_bytes),
                        );
                    }
                    Streams::Terminal(master) => {
                        if let Some(master) = &master {
                            tokio::join!(
                                feed_terminal(master, exec.stdin.as_deref()),
                                capture_terminal(master, &mut stdout_captured, &output),
                                read_all(state_receiver, &mut state_bytes),
                            );
                        }
                    }
                }
            };
            tokio::pin!(reading);
            let mut read_all_output = false;
            let waiting = self.wait(id, exec.timeout, &output, &mut cancelled);
            tokio::pin!(waiting);
            let finished = loop {
                tokio::select! {
                    finished = &mut waiting => break finished,
                    () = &mut reading, if !read_all_output => read_all_output = true,
                }
            };
            if !read_all_output && tokio::time::timeout(OUTPUT_GRACE, &mut reading).await.is_err() {
                ended.output_held = true;
            }
            finished
        };
        (ended.stdout, ended.stderr) = (stdout_captured, stderr_captured);
        let finished = finished.map_err(|error| self.lost(error))?;
        match finished {
            Waited::Cancelled => return Ok(None),
            Waited::SessionEnded => {
                drop(state);
                return Err(ExecError::SessionEnded(self.end("the session ended while the command ran").await));
            }
            Waited::Ended { code, signal, timed_out, exec_error } => {
                ended.code = code;
                ended.signal = signal;
                ended.timed_out = timed_out;
                ended.exec_error = exec_error.or(early_error);
            }
        }
        ended.output_cut_at = output.cut_at();
        // The proxy writes each event before the client hears of the refusal, so every event
        // of this command is in the pipe by the time the command has exited.
        (ended.network_denials, ended.network_denials_not_kept) = self.take_events();
        if let Some((cwd, env)) = parse_state(&state_bytes) {
            // A directory given for this command is for this command only, and so is any `cd`
            // the command makes from it.
            if exec.cwd.is_none() {
                state.cwd = cwd;
            }
            state.env = keep_after(env, &state.env, &exec.env);
        }
        ended.cwd = state.cwd.clone();
        Ok(Some(ended))
    }

    /// Waits for the reply that command `id` ended, killing it at the timeout, when its output
    /// goes over the limit, or when `cancelled` completes.
    async fn wait(&self, id: u64, timeout: Option<Duration>, output: &OutputCounter, cancelled: &mut (impl Future<Output = ()> + Unpin)) -> io::Result<Waited> {
        let deadline = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut exec_error = None;
        let mut timed_out = false;
        let mut killed = false;
        let mut was_cancelled = false;
        loop {
            tokio::select! {
                reply = self.receive() => match reply? {
                    None => return Ok(Waited::SessionEnded),
                    Some((Reply::Failed { id: failed, reason, .. }, _)) if failed == id => exec_error = Some(reason),
                    Some((Reply::Exited { id: exited, code }, _)) if exited == id => {
                        return Ok(if was_cancelled { Waited::Cancelled } else { Waited::Ended { code: Some(code), signal: None, timed_out, exec_error } });
                    }
                    Some((Reply::Signaled { id: exited, signal }, _)) if exited == id => {
                        return Ok(if was_cancelled { Waited::Cancelled } else { Waited::Ended { code: None, signal: Some(signal), timed_out, exec_error } });
                    }
                    // Replies about earlier commands, which were killed, are of no interest.
                    Some(_) => {}
                },
                () = &mut deadline, if !killed => {
                    timed_out = true;
                    killed = true;
                    self.kill(id).await?;
                }
                () = output.over_limit(), if !killed => {
                    killed = true;
                    self.kill(id).await?;
                }
                () = &mut *cancelled, if !killed => {
                    was_cancelled = true;
                    killed = true;
                    self.kill(id).await?;
                }
            }
        }
    }

    /// Reads what is in the event pipe now, then returns every event since the last call.
    fn take_events(&self) -> (Vec<Value>, u64) {
        let mut events = self.events.lock().expect("events lock");
        let _ = events.read(self.events_pipe.get_ref().as_fd());
        events.take()
    }

    async fn kill(&self, id: u64) -> io::Result<()> {
        self.send(&Request::Signal { id, signal: libc::SIGKILL }.encode(), &[]).await
    }

    async fn send(&self, message: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            let mut guard = self.socket.writable().await?;
            match guard.try_io(|socket| session::send(socket.get_ref().as_fd(), message, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn receive(&self) -> io::Result<Option<(Reply, Vec<OwnedFd>)>> {
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|socket| session::receive(socket.get_ref().as_fd())) {
                Ok(Ok(Some((bytes, fds)))) => match Reply::decode(&bytes) {
                    Some(reply) => return Ok(Some((reply, fds))),
                    None => return Err(io::Error::new(io::ErrorKind::InvalidData, "the session sent a message that does not parse")),
                },
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }

    fn lost(&self, error: io::Error) -> ExecError {
        tracing::warn!("mcp: session {}: {error}", self.name);
        ExecError::Io(error)
    }

    /// Ends the session: closes its socket, which ends the host and every process of the
    /// session, and waits for palisade to exit. Returns `reason` with what palisade wrote on
    /// stderr, if anything.
    pub async fn end(&self, reason: &str) -> String {
        let _ = rustix::net::shutdown(self.socket.get_ref(), rustix::net::Shutdown::Both);
        let mut process = self.process.lock().await;
        if let Some(mut child) = process.take() {
            wait_or_kill(&mut child).await;
        }
        // The last lines palisade wrote may still be in the pipe when it has exited.
        let reader = self.stderr_reader.lock().expect("stderr reader lock").take();
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(STDERR_WAIT, reader).await;
        }
        let written = String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).trim().to_owned();
        let message = if written.is_empty() { reason.to_owned() } else { format!("{reason}; palisade's stderr: {written}") };
        let mut state = self.state.try_lock();
        if let Ok(state) = state.as_deref_mut() {
            state.ended.get_or_insert_with(|| message.clone());
        }
        message
    }

    /// Waits for the command running, if any, then ends the session.
    pub async fn close(&self) -> String {
        let mut state = self.state.lock().await;
        state.ended.get_or_insert_with(|| "the session was closed".to_owned());
        drop(state);
        self.end("the session was closed").await
    }
}

/// The destination of a command's standard streams.
enum Streams {
    Pipes { stdin: pipe::Sender, stdout: pipe::Receiver, stderr: pipe::Receiver },
    /// The master side of the command's pseudo-terminal, or `None` when the host could not
    /// create it.
    Terminal(Option<AsyncFd<OwnedFd>>),
}

/// Watches the master side of a command's pseudo-terminal.
fn terminal_master(master: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    rustix::io::ioctl_fionbio(&master, true)?;
    // SAFETY: the `OwnedFd` owns the open descriptor, and the `AsyncFd` takes that ownership.
    unsafe { AsyncFd::register(master) }.map_err(io::Error::from)
}

/// Types `data` into the terminal, then the end-of-file character, so a program that reads
/// its input to the end finishes. A last line without a newline gets the character twice: the
/// first passes the line on, the second is the end of the input.
async fn feed_terminal(master: &AsyncFd<OwnedFd>, data: Option<&[u8]>) {
    const END_OF_FILE: u8 = 0x04;
    let mut input = data.unwrap_or_default().to_vec();
    if !input.is_empty() && !input.ends_with(b"\n") {
        input.push(END_OF_FILE);
    }
    input.push(END_OF_FILE);
    let mut written = 0;
    while written < input.len() {
        let Ok(mut guard) = master.writable().await else { return };
        match guard.try_io(|master| rustix::io::write(master.get_ref(), &input[written..]).map_err(io::Error::from)) {
            Ok(Ok(count)) => written += count,
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

/// Reads the terminal's output into `captured` until the command's side is closed (the
/// master then reads EIO). Past the output limit it reads on and discards, as [`capture`]
/// does, until the killed command's side closes.
async fn capture_terminal(master: &AsyncFd<OwnedFd>, captured: &mut Captured, output: &OutputCounter) {
    let mut buffer = vec![0u8; 16 << 10];
    let mut over_limit = false;
    loop {
        let Ok(mut guard) = master.readable().await else { return };
        let read = match guard.try_io(|master| rustix::io::read(master.get_ref(), &mut buffer).map_err(io::Error::from)) {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(read)) => read,
            Err(_would_block) => continue,
        };
        if over_limit {
            continue;
        }
        let room = OUTPUT_KEPT_BYTES.saturating_sub(captured.kept.len());
        captured.kept.extend_from_slice(&buffer[..read.min(room)]);
        captured.total += read as u64;
        over_limit = !output.add(read);
    }
}

/// The ways waiting for a command ends.
enum Waited {
    Ended { code: Option<i32>, signal: Option<i32>, timed_out: bool, exec_error: Option<String> },
    Cancelled,
    SessionEnded,
}

/// Counts the output of one command against `--max-output`.
struct OutputCounter {
    limit: Option<u64>,
    total: AtomicU64,
    over: tokio::sync::Notify,
}

impl OutputCounter {
    fn new(limit: Option<u64>) -> OutputCounter {
        OutputCounter { limit, total: AtomicU64::new(0), over: tokio::sync::Notify::new() }
    }

    /// Adds `bytes`; returns false once the total is over the limit.
    fn add(&self, bytes: usize) -> bool {
        let total = self.total.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let within = self.limit.is_none_or(|limit| total <= limit);
        if !within {
            self.over.notify_one();
        }
        within
    }

    async fn over_limit(&self) {
        match self.limit {
            Some(_) => self.over.notified().await,
            None => std::future::pending().await,
        }
    }

    fn cut_at(&self) -> Option<u64> {
        self.limit.filter(|limit| self.total.load(Ordering::Relaxed) > *limit)
    }
}

/// Reads a command's output into `captured`, keeping the first [`OUTPUT_KEPT_BYTES`]. Past the
/// output limit it reads on and discards what it reads until the command, which is killed
/// then, closes the pipe: closing it first would end the command with SIGPIPE before the
/// kill, and the result would not name the limit.
async fn capture(mut pipe: pipe::Receiver, captured: &mut Captured, output: &OutputCounter) {
    let mut buffer = vec![0u8; 16 << 10];
    let mut over_limit = false;
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!("mcp: failed to read a session command's output: {error}");
                return;
            }
        };
        if over_limit {
            continue;
        }
        let room = OUTPUT_KEPT_BYTES.saturating_sub(captured.kept.len());
        captured.kept.extend_from_slice(&buffer[..read.min(room)]);
        captured.total += read as u64;
        over_limit = !output.add(read);
    }
}

async fn read_all(pipe: Option<pipe::Receiver>, into: &mut Vec<u8>) {
    if let Some(mut pipe) = pipe {
        // The wrapper writes a directory and an environment; a megabyte is far more than
        // either. A command that writes more to its descriptor 3 loses its state change.
        let mut limited = (&mut pipe).take(1 << 20);
        if limited.read_to_end(into).await.is_err() {
            into.clear();
        }
    }
}

async fn feed(mut pipe: pipe::Sender, data: Option<&[u8]>) {
    if let Some(data) = data {
        if let Err(error) = pipe.write_all(data).await {
            if error.kind() != io::ErrorKind::BrokenPipe {
                tracing::warn!("mcp: failed to write stdin to a session command: {error}");
            }
        }
    }
}

async fn keep_stderr(mut pipe: tokio::process::ChildStderr, kept: Arc<Mutex<Vec<u8>>>) {
    let mut buffer = [0u8; 4096];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            return;
        }
        let mut kept = kept.lock().expect("stderr lock");
        let room = STDERR_KEPT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
}

/// Waits for a session's palisade process to exit after its socket closed; SIGTERM after
/// [`CLOSE_WAIT`], SIGKILL after as long again.
async fn wait_or_kill(child: &mut Child) {
    if tokio::time::timeout(CLOSE_WAIT, child.wait()).await.is_ok() {
        return;
    }
    if let Some(pid) = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
        tracing::warn!("mcp: a session's palisade process {pid:?} did not exit within {CLOSE_WAIT:?}; sending SIGTERM");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(CLOSE_WAIT, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Returns the session's environment with `overrides` set.
fn merge_env(env: &[OsString], overrides: &[(String, String)]) -> Vec<OsString> {
    let mut merged: Vec<OsString> = env
        .iter()
        .filter(|entry| !overrides.iter().any(|(name, _)| name_of(entry) == name.as_bytes()))
        .cloned()
        .collect();
    merged.extend(overrides.iter().map(|(name, value)| OsString::from(format!("{name}={value}"))));
    merged
}

fn name_of(entry: &OsString) -> &[u8] {
    let bytes = entry.as_bytes();
    bytes.split(|&byte| byte == b'=').next().unwrap_or(bytes)
}

/// Returns the environment to keep after a command: what the shell reported, except the
/// shell's own variables, and except `overrides` the command left unchanged, which were meant
/// for that command only and go back to their earlier values.
fn keep_after(reported: Vec<OsString>, before: &[OsString], overrides: &[(String, String)]) -> Vec<OsString> {
    let mut kept: Vec<OsString> = reported
        .into_iter()
        .filter(|entry| !SHELL_OWN_VARIABLES.iter().any(|name| name_of(entry) == name.as_bytes()))
        .filter(|entry| !overrides.iter().any(|(name, value)| entry.as_bytes() == format!("{name}={value}").as_bytes()))
        .collect();
    for (name, _) in overrides {
        let changed = kept.iter().any(|entry| name_of(entry) == name.as_bytes());
        if let Some(earlier) = before.iter().find(|entry| name_of(entry) == name.as_bytes()).filter(|_| !changed) {
            kept.push(earlier.clone());
        }
    }
    kept
}

/// Reads what the shell wrapper wrote: the directory, then `NAME=VALUE` entries, each ended by
/// NUL. `None` when it wrote nothing usable, as after `exit`.
fn parse_state(bytes: &[u8]) -> Option<(PathBuf, Vec<OsString>)> {
    let mut fields = bytes.split(|&byte| byte == 0);
    let cwd = fields.next().filter(|cwd| cwd.starts_with(b"/"))?;
    if !bytes.ends_with(&[0]) {
        return None;
    }
    let env = fields.filter(|entry| entry.contains(&b'=') && !entry.starts_with(b"=")).map(|entry| OsString::from_vec(entry.to_vec())).collect();
    Some((PathBuf::from(OsString::from_vec(cwd.to_vec())), env))
}

/// The open sessions of one server, by name.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    next: AtomicU64,
}

impl Sessions {
    /// Reserves a name for a new session, or returns `None` when [`MAX_SESSIONS`] are open.
    pub fn reserve(&self) -> Option<String> {
        let open = self.open.lock().expect("sessions lock");
        if open.len() >= MAX_SESSIONS {
            return None;
        }
        Some(format!("s{}", self.next.fetch_add(1, Ordering::Relaxed) + 1))
    }

    /// Adds a started session. Fails when others filled the slots meanwhile.
    pub fn insert(&self, session: Arc<Session>) -> Result<(), Arc<Session>> {
        let mut open = self.open.lock().expect("sessions lock");
        if open.len() >= MAX_SESSIONS {
            return Err(session);
        }
        open.insert(session.name.clone(), session);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Session>> {
        self.open.lock().expect("sessions lock").get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Session>> {
        self.open.lock().expect("sessions lock").remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.open.lock().expect("sessions lock").keys().cloned().collect();
        names.sort();
        names
    }

    /// Ends every session, as the server stops. They end in parallel, each waiting on its
    /// own process.
    pub async fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = self.open.lock().expect("sessions lock").drain().map(|(_, session)| session).collect();
        let mut ending = tokio::task::JoinSet::new();
        for session in sessions {
            ending.spawn(async move { session.end("the server stopped").await });
        }
        while let Some(ended) = ending.join_next().await {
            match ended {
                Ok(message) => tracing::info!("mcp: {message}"),
                Err(error) => tracing::warn!("mcp: failed to end a session: {error}"),
            }
        }
    }
}

/// Describes how a command ended, for the result.
pub fn status_text(ended: &Ended) -> String {
    let line = if ended.timed_out {
        "timed out".to_owned()
    } else if let Some(signal) = ended.signal {
        format!("killed by signal {signal}")
    } else {
        match (ended.code, &ended.exec_error) {
            (Some(code), Some(reason)) => format!("exit code {code}: {reason}"),
            (Some(code), None) => format!("exit code {code}"),
            (None, _) => "ended without an exit status".to_owned(),
        }
    };
    match ended.output_cut_at {
        Some(limit) => format!("{line}: the output went over the limit of {limit} bytes and the command was killed"),
        None => line,
    }
}

/// Builds the `structuredContent` of a `session_exec` result.
pub fn structured(session: &str, ended: &Ended, timeout: Option<Duration>) -> Value {
    let mut denials = Vec::new();
    if ended.timed_out {
        let rule = timeout.map(|timeout| format!("--timeout {}", crate::mcp::ceiling::format_duration(timeout)));
        denials.push(json!({
            "kind": "limit",
            "object": "timeout",
            "rule": rule,
            "message": "the command ran out of time and was killed with its process group; background processes it detached keep running in the session",
        }));
    }
    if let Some(limit) = ended.output_cut_at {
        denials.push(json!({
            "kind": "limit",
            "object": "max_output",
            "rule": format!("--max-output {limit}"),
            "message": format!("the command wrote more than {limit} bytes of output and was killed with its process group"),
        }));
    }
    denials.extend(ended.network_denials.iter().map(crate::mcp::result::denial));
    json!({
        "session": session,
        "exit_code": ended.code,
        "signal": ended.signal,
        "timed_out": ended.timed_out,
        "exec_error": ended.exec_error,
        "stdout": ended.stdout.text(),
        "stderr": ended.stderr.text(),
        "stdout_bytes": ended.stdout.total,
        "stderr_bytes": ended.stderr.total,
        "stdout_cut": ended.stdout.is_cut(),
        "stderr_cut": ended.stderr.is_cut(),
        "output_held_open": ended.output_held,
        "cwd": ended.cwd,
        "denials": denials,
        "denials_not_listed": ended.network_denials_not_kept,
    })
}

/// Reads the report a session's palisade wrote when it ended, and removes the file.
pub fn take_report(path: &Path) -> Option<Value> {
    let report = std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let _ = std::fs::remove_file(path);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn parse_state_reads_directory_and_environment() {
        let (cwd, env) = parse_state(b"/ws/sub\0A=1\0B=x=y\0PWD=/ws/sub\0").unwrap();
        assert_eq!(cwd, Path::new("/ws/sub"));
        assert_eq!(env, entries(&["A=1", "B=x=y", "PWD=/ws/sub"]));
        assert_eq!(parse_state(b""), None);
        assert_eq!(parse_state(b"/ws\0A=1"), None, "a cut write is not used");
        assert_eq!(parse_state(b"relative\0"), None);
    }

    #[test]
    fn overrides_last_one_command_unless_changed() {
        let before = entries(&["KEEP=1", "MODE=old"]);
        let overrides = [("MODE".to_owned(), "temp".to_owned()), ("NEW".to_owned(), "n".to_owned())];
        let merged = merge_env(&before, &overrides);
        assert_eq!(merged, entries(&["KEEP=1", "MODE=temp", "NEW=n"]));
        // The command left both overrides alone: MODE goes back, NEW goes away.
        let kept = keep_after(entries(&["KEEP=1", "MODE=temp", "NEW=n", "SHLVL=1", "PWD=/"]), &before, &overrides);
        assert_eq!(kept, entries(&["KEEP=1", "MODE=old"]));
        // The command exported a new value: it stays.
        let kept = keep_after(entries(&["KEEP=1", "MODE=mine"]), &before, &overrides);
        assert_eq!(kept, entries(&["KEEP=1", "MODE=mine"]));
    }
}
