//! `palisade run --pty`: a pseudo-terminal of the sandbox's own for the command.
//!
//! Init creates the pseudo-terminal once the root is built, in the sandbox's private devpts
//! instance, so its name (`/dev/pts/0`) resolves inside the sandbox and `tty` and `ttyname`
//! work. The command stage makes the slave side its stdin, stdout, stderr and controlling
//! terminal. Init hands the master side to the supervisor over a socket pair
//! ([`crate::handoff`]) and keeps no copy.
//!
//! The supervisor relays palisade's stdin to the master, and an output thread of
//! [`crate::output`] copies the master to palisade's stdout, counting the bytes toward the
//! output limit. While it relays, a terminal on palisade's stdin is in raw mode, so every key
//! reaches the sandbox's terminal unchanged, and the sandbox's line discipline turns Ctrl-C
//! into SIGINT for the command's foreground process group. A resize of the caller's terminal
//! is copied to the master, and the kernel then sends SIGWINCH to that group.
//!
//! The command's controlling terminal is this pseudo-terminal, never the caller's terminal, so
//! TIOCSTI could only push input into the sandbox's own terminal. The seccomp filter rejects
//! TIOCSTI and TIOCLINUX all the same.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::PollFlags;
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, SpecialCodeIndex, Termios, Winsize};

use crate::handoff;
use crate::output::Pumps;

/// The window size the command's terminal starts with when none of palisade's standard
/// descriptors is a terminal.
pub(crate) const DEFAULT_WINDOW_SIZE: Winsize = Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };

/// The end-of-file character sent when the sandbox's terminal has none set: Ctrl-D.
const CONTROL_D: u8 = 0x04;

/// Payload of the message that carries the master to the supervisor.
const MASTER_MESSAGE: &[u8] = b"m";

/// Returns the window size of the caller's terminal: that of palisade's stdin, else of its
/// stdout, else of its stderr. `None` when none of them is a terminal.
pub(crate) fn caller_window_size() -> Option<Winsize> {
    let descriptors = [rustix::stdio::stdin(), rustix::stdio::stdout(), rustix::stdio::stderr()];
    descriptors.into_iter().find_map(|fd| rustix::termios::tcgetwinsize(fd).ok())
}

/// The request for the command's terminal, prepared by the supervisor before the fork.
pub(crate) struct Request {
    /// Init's end of the socket pair the master goes over.
    pub(crate) channel: OwnedFd,
    /// The window size the terminal starts with.
    pub(crate) size: Winsize,
}

/// Runs in init, after the root is built: creates a pseudo-terminal in the sandbox's
/// `/dev/pts`, gives its slave to `uid` and `gid`, sets its window size and sends the master
/// to the supervisor. Returns the slave, for the command stage.
pub(crate) fn create_and_send(request: Request, uid: u32, gid: u32) -> Result<OwnedFd, String> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    // /dev/ptmx is a symlink to pts/ptmx, the private devpts instance that mounts.rs mounted.
    let master = rustix::pty::openpt(flags).map_err(|error| format!("failed to open /dev/ptmx inside the sandbox: {error}"))?;
    rustix::pty::unlockpt(&master).map_err(|error| format!("failed to unlock the new pseudo-terminal: {error}"))?;
    // TIOCGPTPEER opens the slave through the master, so no path lookup can pick another one.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)
        .map_err(|error| format!("failed to open the slave side of the new pseudo-terminal: {error}"))?;
    // As root the slave belongs to root, and the command, which runs as the sandbox user, could
    // not reopen it by its name, as `ssh` and `sudo` do.
    let owner = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    rustix::fs::fchown(&slave, Some(owner.0), Some(owner.1))
        .map_err(|error| format!("failed to give the pseudo-terminal to uid {uid}: {error}"))?;
    // Set here, before the command starts, so that its first query already returns the size.
    rustix::termios::tcsetwinsize(&master, request.size)
        .map_err(|error| format!("failed to set the window size of the pseudo-terminal: {error}"))?;
    handoff::send(&request.channel, MASTER_MESSAGE, &[master.as_fd()])
        .map_err(|error| format!("failed to hand the pseudo-terminal to palisade: {error}"))?;
    Ok(slave)
}

/// Runs in the command stage, after `setsid`: makes `slave` the controlling terminal of the
/// new session, which also makes the session its foreground process group, and puts it on
/// descriptors 0, 1 and 2. `dup2` leaves the copies without close-on-exec, so the command
/// inherits them.
pub(crate) fn attach(slave: &OwnedFd) -> rustix::io::Result<()> {
    rustix::process::ioctl_tiocsctty(slave)?;
    rustix::stdio::dup2_stdin(slave)?;
    rustix::stdio::dup2_stdout(slave)?;
    rustix::stdio::dup2_stderr(slave)
}

/// The supervisor's side of the command's terminal for one run.
pub(crate) enum Session {
    /// Waiting for the master: the supervisor's end of the socket pair.
    Waiting(OwnedFd),
    /// Relaying between palisade's descriptors and the master.
    Relaying(Relay),
    /// Init closed the socket pair without sending a master, because its setup failed first.
    Closed,
    /// Relaying failed, and the run was stopped.
    Failed(io::Error),
}

/// A descriptor of a [`Session`] that the supervisor polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// The socket pair, for the master.
    Channel,
    /// Palisade's stdin, for input to relay.
    Input,
    /// The master, for room to write the input read so far.
    Master,
}

impl Session {
    /// Returns the descriptors to poll now, each with its role and the events wanted. A
    /// descriptor with nothing to do is left out rather than polled for no events, because poll
    /// reports a hang-up even then.
    pub(crate) fn watched(&self) -> Vec<(Watch, BorrowedFd<'_>, PollFlags)> {
        match self {
            Session::Waiting(channel) => vec![(Watch::Channel, channel.as_fd(), PollFlags::IN)],
            Session::Relaying(relay) => relay.watched(),
            Session::Closed | Session::Failed(_) => Vec::new(),
        }
    }

    /// Acts on the events poll returned for the descriptor in the role `watch`. Returns false
    /// when relaying failed: the error is kept for [`Session::finish`], and the caller must stop
    /// the run.
    pub(crate) fn handle(&mut self, watch: Watch, revents: PollFlags, pumps: &mut Pumps) -> bool {
        let result = match (watch, &mut *self) {
            (Watch::Channel, Session::Waiting(channel)) => match receive_master(channel) {
                Ok(Some(master)) => Relay::start(master, pumps, true).map(|relay| *self = Session::Relaying(relay)),
                Ok(None) => {
                    *self = Session::Closed;
                    Ok(())
                }
                Err(error) => Err(error),
            },
            (Watch::Input, Session::Relaying(relay)) => {
                relay.read_input();
                Ok(())
            }
            (Watch::Master, Session::Relaying(relay)) => {
                relay.write_input(revents);
                Ok(())
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => true,
            Err(error) => {
                *self = Session::Failed(error);
                false
            }
        }
    }

    /// Copies the window size of the caller's terminal to the command's terminal, if there is
    /// one of each. The kernel sends SIGWINCH to the command's foreground process group when
    /// the size changes.
    pub(crate) fn copy_window_size(&self) {
        if let (Session::Relaying(relay), Some(size)) = (self, caller_window_size()) {
            if let Err(error) = rustix::termios::tcsetwinsize(&relay.master, size) {
                tracing::debug!(%error, "failed to copy the window size to the command's terminal");
            }
        }
    }

    /// Ends the session once the run is over and restores the caller's terminal modes. A master
    /// that init sent but the supervisor had not received yet goes to `pumps`, so the output
    /// the command left in it is still copied. Returns the error that stopped the relay, if any.
    pub(crate) fn finish(self, pumps: &mut Pumps) -> Option<io::Error> {
        match self {
            Session::Waiting(channel) => {
                let mut ready = [rustix::event::PollFd::new(&channel, PollFlags::IN)];
                let zero = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 0 };
                if !matches!(rustix::event::poll(&mut ready, Some(&zero)), Ok(1..)) {
                    return None;
                }
                match receive_master(&channel) {
                    Ok(Some(master)) => Relay::start(master, pumps, false).err(),
                    Ok(None) => None,
                    Err(error) => Some(error),
                }
            }
            // Dropping the relay restores the caller's terminal.
            Session::Relaying(_) | Session::Closed => None,
            Session::Failed(error) => Some(error),
        }
    }
}

/// Receives the master from init. `None` when init closed its end without sending it.
fn receive_master(channel: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut payload = [0u8; MASTER_MESSAGE.len()];
    let received = handoff::receive(channel, &mut payload, 1)?;
    if received.bytes == 0 {
        return Ok(None);
    }
    match received.fds.into_iter().next() {
        Some(master) if payload == MASTER_MESSAGE => Ok(Some(master)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the sandbox's init sent no pseudo-terminal")),
    }
}

/// The relay between palisade's stdin and the master.
pub(crate) struct Relay {
    /// The master, non-blocking, so a command that reads no input cannot stall the supervisor.
    master: OwnedFd,
    /// Whether palisade's stdin is still read; false after its end of file.
    reading: bool,
    /// Input read from palisade's stdin that the master has not accepted yet.
    pending: Vec<u8>,
    /// The last byte read from palisade's stdin.
    last_input: Option<u8>,
    /// The caller's terminal in raw mode, restored when the relay is dropped.
    _raw_mode: Option<RawMode>,
}

impl Relay {
    /// Starts relaying through `master`: makes it non-blocking, copies the caller's current
    /// window size, which may have changed since the fork, and gives a copy to `pumps` for the
    /// output. With `interactive`, a terminal on palisade's stdin goes into raw mode.
    fn start(master: OwnedFd, pumps: &mut Pumps, interactive: bool) -> io::Result<Relay> {
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK)?;
        if let Some(size) = caller_window_size() {
            rustix::termios::tcsetwinsize(&master, size)?;
        }
        pumps.adopt_terminal(master.try_clone()?);
        let raw_mode = if interactive { RawMode::enter()? } else { None };
        Ok(Relay { master, reading: interactive, pending: Vec::new(), last_input: None, _raw_mode: raw_mode })
    }

    fn watched(&self) -> Vec<(Watch, BorrowedFd<'_>, PollFlags)> {
        let mut watched = Vec::new();
        // Input is read only once the master has taken the previous read, so a command that
        // reads slowly slows the reading of palisade's stdin too.
        if self.reading && self.pending.is_empty() {
            watched.push((Watch::Input, rustix::stdio::stdin(), PollFlags::IN));
        }
        if !self.pending.is_empty() {
            watched.push((Watch::Master, self.master.as_fd(), PollFlags::OUT));
        }
        watched
    }

    /// Reads what palisade's stdin has. End of file, or an error other than an interruption,
    /// ends the input.
    fn read_input(&mut self) {
        let mut buffer = [0u8; 4096];
        match rustix::io::read(rustix::stdio::stdin(), &mut buffer) {
            Ok(0) => self.end_input(),
            Ok(n) => {
                self.pending.extend_from_slice(&buffer[..n]);
                self.last_input = Some(buffer[n - 1]);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(error) => {
                tracing::debug!(%error, "failed to read palisade's stdin; ending the command's input");
                self.end_input();
            }
        }
    }

    /// Queues the terminal's end-of-file character (VEOF, normally Ctrl-D) in place of closing
    /// the master, which would hang up the command's terminal. The line discipline passes an
    /// unfinished line on at the first one, so an input that does not end with a line end gets
    /// a second, which the command then reads as the end of file.
    fn end_input(&mut self) {
        self.reading = false;
        let configured = rustix::termios::tcgetattr(&self.master).map(|modes| modes.special_codes[SpecialCodeIndex::VEOF]);
        // 0 disables the character (_POSIX_VDISABLE).
        let eof = configured.ok().filter(|&character| character != 0).unwrap_or(CONTROL_D);
        let line_ended = self.last_input.is_none_or(|byte| byte == b'\n' || byte == b'\r' || byte == eof);
        self.pending.push(eof);
        if !line_ended {
            self.pending.push(eof);
        }
    }

    /// Writes as much of the pending input as the master takes. When the command's terminal is
    /// gone (EIO once the last slave descriptor is closed), the input is dropped.
    fn write_input(&mut self, revents: PollFlags) {
        match rustix::io::write(&self.master, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) if !revents.contains(PollFlags::HUP) => {}
            Err(error) => {
                tracing::debug!(%error, "failed to write to the command's terminal; dropping its input");
                self.pending.clear();
                self.reading = false;
            }
        }
    }
}

/// Palisade's stdin in raw mode while the relay runs. Dropping it restores the modes the
/// terminal had.
///
/// NOTE: a SIGKILL of palisade, or a panic in a release build (which aborts), skips the
/// restore and leaves the caller's terminal raw until `stty sane` or `reset`. A stop signal
/// sent to palisade (SIGTSTP, SIGSTOP) stops it with the terminal still raw.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts palisade's stdin into raw mode if it is a terminal. `None` when it is not.
    fn enter() -> io::Result<Option<RawMode>> {
        let stdin = rustix::stdio::stdin();
        if !rustix::termios::isatty(stdin) {
            return Ok(None);
        }
        let saved = rustix::termios::tcgetattr(stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(error) = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved) {
            eprintln!("palisade: warning: failed to restore the terminal's modes: {error}; `stty sane` resets them");
        }
    }
}
