//! Sessions: one sandbox in which a client runs many commands, one after another.
//!
//! A session is a run whose command stage does not execute a program. Once confined (rlimits,
//! Landlock, seccomp), it becomes the session host: it waits on a socket the client passed in
//! and forks one child per request, which executes the requested program with the standard
//! streams that came with the request. Commands therefore share the sandbox's files, `/tmp`
//! and background processes, and each costs a fork and an `execve` instead of a new sandbox.
//!
//! The socket is a `SOCK_SEQPACKET` pair, so each message is one datagram. The client keeps
//! the state that a shell would (working directory, environment) and sends it whole with each
//! request; the host only executes. Closing the client's end ends the host, and with it init
//! and every process of the session.
//!
//! Messages are a kind byte, an id, and length-prefixed fields (see [`Writer`] and [`Reader`]).
//! Both ends are palisade, but the host still checks every length, since a message that does
//! not parse must not crash it.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::net::{RecvFlags, SendFlags};

use crate::sys;

/// The largest message either end sends. A unix datagram socket cannot carry more than its
/// send buffer, which the kernel caps at `net.core.wmem_max` (208 KiB by default), and
/// `execve` refuses a single argument over 128 KiB anyway.
pub const MAX_MESSAGE_BYTES: usize = 160 << 10;

/// The descriptors an [`ExecRequest`] carries: stdin, stdout and stderr (unless it requests a
/// terminal), then the state pipe when [`ExecRequest::state_fd`] is set.
const STREAMS: usize = 3;

const KIND_EXEC: u8 = b'x';
const KIND_SIGNAL: u8 = b's';
const KIND_READY: u8 = b'r';
const KIND_EXITED: u8 = b'e';
const KIND_SIGNALED: u8 = b'k';
const KIND_FAILED: u8 = b'f';
const KIND_STARTED: u8 = b't';

/// A request to run one command in the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Chosen by the client; replies about this command carry it.
    pub id: u64,
    pub cwd: PathBuf,
    pub argv: Vec<OsString>,
    /// The whole environment, as `NAME=VALUE` entries.
    pub env: Vec<OsString>,
    /// The request carries a descriptor for the state, which the command gets as descriptor 3.
    pub state_fd: bool,
    /// Run the command on a new pseudo-terminal of this many rows and columns instead of the
    /// request's streams, which it then does not carry. The host sends the terminal's master
    /// side with [`Reply::Started`].
    pub terminal: Option<(u16, u16)>,
}

/// A message from the client to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    /// Sends `signal` to the process group of the command `id`.
    Signal { id: u64, signal: i32 },
}

/// A message from the host to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The host is confined and waiting. `env` is the environment a command gets under the
    /// policy, proxy variables included.
    Ready { cwd: PathBuf, env: Vec<OsString> },
    /// The command `id` runs on a terminal, whose master side comes with this message.
    Started { id: u64 },
    /// The command `id` exited with `code`.
    Exited { id: u64, code: i32 },
    /// The command `id` was killed by `signal`.
    Signaled { id: u64, signal: i32 },
    /// The command `id` could not be started: `code` is 126 or 127 as a shell gives, and
    /// `reason` is the cause. An [`Reply::Exited`] with the same code follows.
    Failed { id: u64, code: i32, reason: String },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Exec(exec) => {
                let mut writer = Writer::new(KIND_EXEC, exec.id);
                writer.bytes(exec.cwd.as_os_str().as_bytes());
                writer.number(u64::from(exec.state_fd));
                let (rows, columns) = exec.terminal.unwrap_or((0, 0));
                writer.number(u64::from(exec.terminal.is_some()) << 32 | u64::from(rows) << 16 | u64::from(columns));
                writer.list(&exec.argv);
                writer.list(&exec.env);
                writer.finish()
            }
            Request::Signal { id, signal } => {
                let mut writer = Writer::new(KIND_SIGNAL, *id);
                writer.number(*signal as u64);
                writer.finish()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let (kind, id, mut reader) = Reader::start(bytes)?;
        let request = match kind {
            KIND_EXEC => {
                let cwd = PathBuf::from(OsString::from_vec(reader.bytes()?.to_vec()));
                let state_fd = reader.number()? != 0;
                let terminal = reader.number()?;
                let terminal = (terminal >> 32 != 0).then_some(((terminal >> 16) as u16, terminal as u16));
                let argv = reader.list()?;
                let env = reader.list()?;
                if argv.is_empty() {
                    return None;
                }
                Request::Exec(ExecRequest { id, cwd, argv, env, state_fd, terminal })
            }
            KIND_SIGNAL => Request::Signal { id, signal: i32::try_from(reader.number()?).ok()? },
            _ => return None,
        };
        reader.end().then_some(request)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ready { cwd, env } => {
                let mut writer = Writer::new(KIND_READY, 0);
                writer.bytes(cwd.as_os_str().as_bytes());
                writer.list(env);
                writer.finish()
            }
            Reply::Started { id } => Writer::new(KIND_STARTED, *id).finish(),
            Reply::Exited { id, code } => {
                let mut writer = Writer::new(KIND_EXITED, *id);
                writer.number(*code as u32 as u64);
                writer.finish()
            }
            Reply::Signaled { id, signal } => {
                let mut writer = Writer::new(KIND_SIGNALED, *id);
                writer.number(*signal as u32 as u64);
                writer.finish()
            }
            Reply::Failed { id, code, reason } => {
                let mut writer = Writer::new(KIND_FAILED, *id);
                writer.number(*code as u32 as u64);
                writer.bytes(reason.as_bytes());
                writer.finish()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let (kind, id, mut reader) = Reader::start(bytes)?;
        let small = |number: u64| u32::try_from(number).ok().map(|number| number as i32);
        let reply = match kind {
            KIND_READY => {
                let cwd = PathBuf::from(OsString::from_vec(reader.bytes()?.to_vec()));
                Reply::Ready { cwd, env: reader.list()? }
            }
            KIND_STARTED => Reply::Started { id },
            KIND_EXITED => Reply::Exited { id, code: small(reader.number()?)? },
            KIND_SIGNALED => Reply::Signaled { id, signal: small(reader.number()?)? },
            KIND_FAILED => {
                let code = small(reader.number()?)?;
                Reply::Failed { id, code, reason: String::from_utf8_lossy(reader.bytes()?).into_owned() }
            }
            _ => return None,
        };
        reader.end().then_some(reply)
    }
}

/// Builds one message: the kind byte, the id, then fields.
struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, id: u64) -> Writer {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&id.to_le_bytes());
        Writer(bytes)
    }

    fn number(&mut self, number: u64) {
        self.0.extend_from_slice(&number.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn list(&mut self, items: &[OsString]) {
        self.0.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for item in items {
            self.bytes(item.as_bytes());
        }
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads the fields of one message, refusing any length that runs past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn start(bytes: &'a [u8]) -> Option<(u8, u64, Reader<'a>)> {
        let (&kind, rest) = bytes.split_first()?;
        let mut reader = Reader(rest);
        let id = reader.number()?;
        Some((kind, id, reader))
    }

    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        if self.0.len() < length {
            return None;
        }
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        Some(taken)
    }

    fn number(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn length(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = self.length()?;
        self.take(length)
    }

    fn list(&mut self) -> Option<Vec<OsString>> {
        let count = self.length()?;
        // Each item takes at least its 4-byte length, so a count the message cannot hold is
        // refused before anything is allocated for it.
        if count > self.0.len() / 4 {
            return None;
        }
        (0..count).map(|_| self.bytes().map(|item| OsString::from_vec(item.to_vec()))).collect()
    }

    fn end(&self) -> bool {
        self.0.is_empty()
    }
}

/// Creates the socket pair of a session: the client's end first. Both ends are close-on-exec;
/// the client places the host's end where the host process expects it.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    crate::handoff::pair()
}

/// Takes ownership of the inherited descriptor `fd` as a session's socket, after checking that
/// it is one: an open unix socket of type `SOCK_SEQPACKET`.
pub fn adopt_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is a standard stream, not a session socket")));
    }
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it fails with EBADF if `fd` is
    // not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is not open")));
    }
    // SAFETY: the descriptor is open, and nothing else in this process owns it: `main` marked
    // every inherited descriptor close-on-exec and took none.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = rustix::net::sockopt::socket_type(&owned)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is not a socket")))?;
    if kind != rustix::net::SocketType::SEQPACKET {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is not a SOCK_SEQPACKET socket")));
    }
    Ok(owned)
}

/// Sends `message` with `fds` attached, without waiting: the client's call, for a caller that
/// waits for the socket itself. Returns `WouldBlock` when the socket's buffer is full.
pub fn send(socket: BorrowedFd<'_>, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a session message of {} bytes is over the maximum of {MAX_MESSAGE_BYTES}", message.len())));
    }
    if fds.len() > STREAMS + 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} descriptors are too many for one session message", fds.len())));
    }
    crate::handoff::send_with(socket, message, fds, SendFlags::DONTWAIT)
}

/// Receives one message and the descriptors attached to it, without waiting. `Ok(None)` means
/// the other end is closed; `WouldBlock` that nothing is there yet.
pub fn receive(socket: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buffer = vec![0u8; MAX_MESSAGE_BYTES];
    let received = crate::handoff::receive_with(socket, &mut buffer, STREAMS + 1, RecvFlags::DONTWAIT)?;
    if received.bytes == 0 && received.fds.is_empty() {
        return Ok(None);
    }
    if received.truncated {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a session message did not fit the receive buffer"));
    }
    buffer.truncate(received.bytes);
    Ok(Some((buffer, received.fds)))
}

/// Runs in the command stage, confined, in place of the command: serves requests on `socket`
/// until the client closes it, then exits. `env` is the environment under the policy, which
/// the client receives in [`Reply::Ready`] and builds each request's environment from.
pub(crate) fn host(socket: &OwnedFd, cwd: &Path, env: &[CString]) -> ! {
    let signal_fd = match sys::block_into_signalfd(&[libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(_) => sys::exit_now(SESSION_FAILED),
    };
    set_blocking(socket.as_fd());
    let env: Vec<OsString> = env.iter().map(|entry| OsStr::from_bytes(entry.as_bytes()).to_owned()).collect();
    if reply(socket.as_fd(), &Reply::Ready { cwd: cwd.to_owned(), env }, &[]).is_err() {
        sys::exit_now(SESSION_FAILED);
    }
    let mut running: HashMap<libc::pid_t, u64> = HashMap::new();
    loop {
        let mut fds = [
            rustix::event::PollFd::new(socket, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&signal_fd, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => sys::exit_now(SESSION_FAILED),
        }
        let (request_ready, child_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if child_ready {
            let _ = sys::read_signal(signal_fd.as_fd());
            reap(socket.as_fd(), &mut running);
        }
        if !request_ready {
            continue;
        }
        let (message, received) = match receive(socket.as_fd()) {
            Ok(Some(message)) => message,
            // The client is gone: so is the session.
            Ok(None) => sys::exit_now(0),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) if error.kind() == io::ErrorKind::InvalidData => continue,
            Err(_) => sys::exit_now(SESSION_FAILED),
        };
        match Request::decode(&message) {
            Some(Request::Exec(request)) => {
                let failed = |reason: String| {
                    let _ = reply(socket.as_fd(), &Reply::Failed { id: request.id, code: 126, reason }, &[]);
                    let _ = reply(socket.as_fd(), &Reply::Exited { id: request.id, code: 126 }, &[]);
                };
                let wanted = if request.terminal.is_some() { 0 } else { STREAMS } + usize::from(request.state_fd);
                if received.len() != wanted {
                    failed(format!("the request carried {} descriptors instead of {wanted}", received.len()));
                    continue;
                }
                let mut received = received.into_iter();
                let stdio = match request.terminal {
                    Some(size) => match open_terminal(size) {
                        Ok((master, slave)) => {
                            if let Err(error) = reply(socket.as_fd(), &Reply::Started { id: request.id }, &[master.as_fd()]) {
                                failed(format!("failed to pass the terminal on: {error}"));
                                continue;
                            }
                            // The host keeps no copy of the master, so the client reads
                            // end-of-file once the command's side closes.
                            drop(master);
                            Stdio::Terminal(slave)
                        }
                        Err(error) => {
                            failed(format!("failed to create a pseudo-terminal inside the sandbox: {error}"));
                            continue;
                        }
                    },
                    None => Stdio::Pipes(received.by_ref().take(STREAMS).collect()),
                };
                let state = received.next();
                match start(socket.as_fd(), &request, &stdio, state.as_ref()) {
                    Ok(pid) => {
                        running.insert(pid, request.id);
                    }
                    Err(error) => failed(format!("failed to fork the command: {error}")),
                }
            }
            Some(Request::Signal { id, signal }) => {
                if let Some((&pid, _)) = running.iter().find(|(_, running_id)| **running_id == id) {
                    crate::init::forward(pid, signal);
                }
            }
            // A message that does not parse came from a broken client. Its id is unknown, so no
            // reply can name it.
            None => {}
        }
    }
}

/// Exit status of the host when its socket or signal handling fails.
const SESSION_FAILED: i32 = 125;

/// Sends `message` from the host, waiting for room in the socket's buffer, so that no reply
/// is lost while the client is slow to read.
fn reply(socket: BorrowedFd<'_>, message: &Reply, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    crate::handoff::send_with(socket, &message.encode(), fds, SendFlags::empty())
}

/// Clears `O_NONBLOCK` on the session's socket, whatever the client left it, so that the
/// host's sends wait for room. The host waits with `poll` and reads with `MSG_DONTWAIT`.
fn set_blocking(socket: BorrowedFd<'_>) {
    if let Ok(flags) = rustix::fs::fcntl_getfl(socket) {
        let _ = rustix::fs::fcntl_setfl(socket, flags - rustix::fs::OFlags::NONBLOCK);
    }
}

/// Reports every child that ended.
fn reap(socket: BorrowedFd<'_>, running: &mut HashMap<libc::pid_t, u64>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let Some(id) = running.remove(&pid) else { continue };
        let finished = if libc::WIFSIGNALED(status) {
            Reply::Signaled { id, signal: libc::WTERMSIG(status) }
        } else {
            Reply::Exited { id, code: libc::WEXITSTATUS(status) }
        };
        let _ = reply(socket, &finished, &[]);
    }
}

/// The standard streams of one command.
enum Stdio {
    /// stdin, stdout and stderr, as the client sent them.
    Pipes(Vec<OwnedFd>),
    /// The slave side of a pseudo-terminal, for all three and as the controlling terminal.
    Terminal(OwnedFd),
}

/// Creates a pseudo-terminal in the sandbox's own `/dev/pts`, of `rows` and `columns`.
/// Returns the master and the slave side. The host runs as the command's uid, so the slave
/// belongs to the command, which can reopen it by its name.
fn open_terminal((rows, columns): (u16, u16)) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY | rustix::pty::OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::unlockpt(&master)?;
    // TIOCGPTPEER opens the slave through the master, with no lookup by name.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    let size = rustix::termios::Winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&master, size)?;
    Ok((master, slave))
}

/// Forks the child that becomes the command of `request`, with `stdio` as its descriptors 0,
/// 1 and 2 and `state`, when present, as 3. Returns the child's pid.
fn start(socket: BorrowedFd<'_>, request: &ExecRequest, stdio: &Stdio, state: Option<&OwnedFd>) -> io::Result<libc::pid_t> {
    // SAFETY of forking here: the host is single-threaded, a fork of single-threaded init.
    match sys::clone_fork(0)? {
        0 => {
            let fail = |code: i32, reason: String| -> ! {
                let _ = reply(socket, &Reply::Failed { id: request.id, code, reason }, &[]);
                sys::exit_now(code)
            };
            if let Err(error) = sys::reset_signals() {
                fail(126, format!("failed to reset signal handling: {error}"));
            }
            // Each command leads its own process group, so a timeout or a cancellation reaches
            // what it started in the foreground. Background processes it detached stay.
            if let Err(error) = rustix::process::setsid() {
                fail(126, format!("failed to start a new session: {error}"));
            }
            let streams: Vec<RawFd> = match stdio {
                Stdio::Pipes(pipes) => pipes.iter().map(AsRawFd::as_raw_fd).collect(),
                Stdio::Terminal(slave) => {
                    // The new session has no controlling terminal yet, so this one becomes it,
                    // with the command's process group in the foreground.
                    if let Err(error) = rustix::process::ioctl_tiocsctty(slave) {
                        fail(126, format!("failed to make the pseudo-terminal the controlling terminal: {error}"));
                    }
                    vec![slave.as_raw_fd(); STREAMS]
                }
            };
            // The state pipe first goes above the standard slots, so that placing the streams
            // cannot overwrite it.
            let state = state.map(|state| rustix::io::fcntl_dupfd_cloexec(state, STREAMS as RawFd + 1));
            for (target, stream) in streams.into_iter().enumerate() {
                if let Err(error) = place(stream, target as RawFd) {
                    fail(126, format!("failed to attach descriptor {target}: {error}"));
                }
            }
            match state {
                Some(Ok(state)) => {
                    if let Err(error) = place(state.as_raw_fd(), STREAMS as RawFd) {
                        fail(126, format!("failed to attach descriptor 3: {error}"));
                    }
                }
                Some(Err(error)) => fail(126, format!("failed to copy the state descriptor: {error}")),
                None => {}
            }
            if let Err(error) = rustix::process::chdir(&request.cwd) {
                fail(126, format!("cannot enter the working directory {}: {error}", request.cwd.display()));
            }
            let envp: Vec<CString> = request.env.iter().filter_map(|entry| CString::new(entry.as_bytes()).ok()).collect();
            let path = request.env.iter().find_map(|entry| entry.as_bytes().strip_prefix(b"PATH=")).map(OsStr::from_bytes);
            let (code, reason) = crate::init::execute(&request.argv, &envp, path);
            fail(code, reason)
        }
        pid => Ok(pid),
    }
}

/// Makes `target` a copy of `fd` that survives `execve`. `dup2` onto itself would keep the
/// close-on-exec flag, so that case clears the flag instead.
fn place(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: plain descriptor calls on integers; the caller owns `fd`, and `target` is a
    // standard slot the command is meant to get.
    let rc = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let requests = [
            Request::Exec(ExecRequest {
                id: 7,
                cwd: "/ws/sub dir".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), "echo 'a\nb'".into()],
                env: vec!["PATH=/usr/bin".into(), "EMPTY=".into()],
                state_fd: true,
                terminal: Some((40, 132)),
            }),
            Request::Signal { id: u64::MAX, signal: 9 },
        ];
        for request in requests {
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
        let replies = [
            Reply::Ready { cwd: "/ws".into(), env: vec!["A=1".into()] },
            Reply::Started { id: 4 },
            Reply::Exited { id: 1, code: 255 },
            Reply::Signaled { id: 2, signal: 15 },
            Reply::Failed { id: 3, code: 127, reason: "x: not found".into() },
        ];
        for reply in replies {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
    }

    #[test]
    fn truncated_or_padded_messages_are_refused() {
        let request = Request::Exec(ExecRequest { id: 1, cwd: "/".into(), argv: vec!["true".into()], env: vec![], state_fd: false, terminal: None });
        let bytes = request.encode();
        for length in 0..bytes.len() {
            assert_eq!(Request::decode(&bytes[..length]), None, "prefix of {length} bytes");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Request::decode(&padded), None);
        // A count far beyond what the message contains is refused before any allocation.
        let mut huge = Writer::new(KIND_EXEC, 1);
        huge.bytes(b"/");
        huge.number(0);
        huge.0.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&huge.finish()), None);
    }

    #[test]
    fn empty_argv_is_refused() {
        let request = Request::Exec(ExecRequest { id: 1, cwd: "/".into(), argv: vec![], env: vec![], state_fd: false, terminal: None });
        assert_eq!(Request::decode(&request.encode()), None);
    }
}
