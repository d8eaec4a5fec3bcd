//! The command's stdout and stderr, passed through pipes that palisade reads so it can count
//! the bytes and stop a flood at the output limit.
//!
//! A stream that is a terminal is passed to the command as it is, unless an output limit is
//! set, so interactive programs keep their terminal. Every other stream goes through a pipe
//! and a thread that copies it to palisade's own descriptor unchanged. With `--pty` there are no
//! pipes: the master side of the command's pseudo-terminal is read the same way, as one stream
//! that carries both stdout and stderr ([`Pumps::adopt_terminal`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The stack size of an output thread.
const PUMP_STACK_SIZE: usize = 64 * 1024;

/// Pipes prepared before the sandbox starts.
pub struct Streams {
    /// Write ends for the command's descriptors 1 and 2; `None` passes palisade's own.
    pub write_ends: [Option<OwnedFd>; 2],
    /// Read ends, each with the index (0 for stdout, 1 for stderr) of palisade's descriptor it
    /// is copied to.
    read_ends: Vec<(usize, OwnedFd)>,
    merged: bool,
}

/// Creates the pipes: one per stream that is not a terminal, or per stream whatever it is when
/// there is an output limit. When palisade's stdout and stderr are the same file, one pipe
/// serves both, so the order in which the command interleaves them is kept.
pub fn prepare(max_output: Option<u64>) -> std::io::Result<Streams> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let pumped = |fd: BorrowedFd<'_>| max_output.is_some() || !rustix::termios::isatty(fd);
    let (out, err) = (pumped(stdout.as_fd()), pumped(stderr.as_fd()));
    let same_file = match (rustix::fs::fstat(stdout.as_fd()), rustix::fs::fstat(stderr.as_fd())) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    };
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from);
    let mut streams = Streams { write_ends: [None, None], read_ends: Vec::new(), merged: false };
    if out && err && same_file {
        let (read, write) = pipe()?;
        streams.write_ends = [Some(write.try_clone()?), Some(write)];
        streams.read_ends.push((0, read));
        streams.merged = true;
        return Ok(streams);
    }
    for (index, wanted) in [out, err].into_iter().enumerate() {
        if wanted {
            let (read, write) = pipe()?;
            streams.write_ends[index] = Some(write);
            streams.read_ends.push((index, read));
        }
    }
    Ok(streams)
}

impl Streams {
    /// Gives the pipes to `uid` and the group of the same number, the command's user when
    /// palisade runs as root. A pipe belongs to its creator with mode 0600, so a command running
    /// as another user could not reopen its own stdout or stderr through `/dev/stdout`
    /// (`/proc/self/fd/1`), as many scripts do.
    pub fn give_to(&self, uid: u32) -> std::io::Result<()> {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(uid));
        for pipe in self.write_ends.iter().flatten() {
            rustix::fs::fchown(pipe, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Returns streams without pipes, for a command whose stdout and stderr are its
    /// pseudo-terminal. The master is added once init has sent it ([`Pumps::adopt_terminal`]).
    pub fn for_terminal() -> Streams {
        Streams { write_ends: [None, None], read_ends: Vec::new(), merged: true }
    }
}

/// The copying of the output, started once the sandbox runs. A pipe gets its thread only when
/// the command first writes to it, so a run without output starts no thread: each costs about
/// 0.2 ms of a short run's time.
pub struct Pumps {
    shared: Arc<Shared>,
    pumped: [bool; 2],
    merged: bool,
    /// Pipes no thread reads yet, with the index of their stream.
    idle: Vec<(usize, OwnedFd)>,
    /// Pipes whose writers all closed them before anything was written.
    closed: Vec<(usize, OwnedFd)>,
    sender: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
    running: usize,
    /// Read end that becomes readable when the output limit is reached.
    limit_reached: OwnedFd,
}

/// Shared by the pump threads.
struct Shared {
    counted: [AtomicU64; 2],
    total: AtomicU64,
    max_output: Option<u64>,
    marker_written: AtomicBool,
    /// Whether the last byte copied to palisade's stdout and to its stderr ended a line.
    at_line_start: [AtomicBool; 2],
    /// Stdout and stderr are the same file, so both count as one for `at_line_start`.
    merged: bool,
    limit_write: OwnedFd,
}

impl Streams {
    /// Prepares the copying. The write ends must have been given to the sandbox and dropped
    /// here before, or the pipes never reach end-of-file.
    pub fn start(self, max_output: Option<u64>) -> std::io::Result<Pumps> {
        let (limit_read, limit_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let shared = Arc::new(Shared {
            counted: [AtomicU64::new(0), AtomicU64::new(0)],
            total: AtomicU64::new(0),
            max_output,
            marker_written: AtomicBool::new(false),
            at_line_start: [AtomicBool::new(true), AtomicBool::new(true)],
            merged: self.merged,
            limit_write,
        });
        let mut pumped = [false, false];
        for (index, _) in &self.read_ends {
            pumped[*index] = true;
            if self.merged {
                pumped[1] = true;
            }
        }
        let (sender, done) = mpsc::channel();
        Ok(Pumps {
            shared,
            pumped,
            merged: self.merged,
            idle: self.read_ends,
            closed: Vec::new(),
            sender,
            done,
            running: 0,
            limit_reached: limit_read,
        })
    }
}

impl Pumps {
    /// Returns the descriptor that becomes readable when the output limit is reached.
    pub fn limit_fd(&self) -> BorrowedFd<'_> {
        self.limit_reached.as_fd()
    }

    /// Returns the pipes that have no thread yet, to poll for the command's first output.
    pub fn idle_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.idle.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// Acts on the poll results of [`Pumps::idle_fds`], in the same order: a pipe with output
    /// gets its thread, and one that was closed unused is set aside for [`Pumps::finish`].
    pub fn wake(&mut self, readable: &[bool], hung_up: &[bool]) -> std::io::Result<()> {
        let idle = std::mem::take(&mut self.idle);
        for (((index, read_end), &readable), &hung_up) in idle.into_iter().zip(readable).zip(hung_up) {
            if readable {
                self.spawn(index, read_end)?;
            } else if hung_up {
                self.closed.push((index, read_end));
            } else {
                self.idle.push((index, read_end));
            }
        }
        Ok(())
    }

    /// Adds the master side of the command's pseudo-terminal, a non-blocking descriptor, as the
    /// one stream of the run's output. Like a pipe, it gets its thread at its first output.
    pub fn adopt_terminal(&mut self, master: OwnedFd) {
        self.idle.push((0, master));
        self.pumped = [true, true];
    }

    /// Starts a thread for every pipe at once, for a caller that does not poll them.
    pub fn start_all(&mut self) -> std::io::Result<()> {
        for (index, read_end) in std::mem::take(&mut self.idle) {
            self.spawn(index, read_end)?;
        }
        Ok(())
    }

    fn spawn(&mut self, index: usize, read_end: OwnedFd) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let sender = self.sender.clone();
        // The copy buffer is on the heap, so a small stack suffices and the thread starts
        // faster than with the default 2 MiB one.
        std::thread::Builder::new().name(format!("palisade-output-{index}")).stack_size(PUMP_STACK_SIZE).spawn(move || {
            pump(&read_end, index, &shared, true);
            let _ = sender.send(());
        })?;
        self.running += 1;
        Ok(())
    }

    /// Copies what is left in the pipes that have no thread, then waits at most `wait` until
    /// every thread has drained its pipe. Returns the bytes the command wrote to stdout and to
    /// stderr, and whether both went through one pipe. A stream that was not pumped is `None`,
    /// and with one pipe for both, all bytes count as stdout. Call it when no process of the
    /// run is left, because a pipe without a thread is read here only until it is empty.
    pub fn finish(mut self, wait: Duration) -> (Option<u64>, Option<u64>, bool) {
        for (index, read_end) in self.idle.drain(..).chain(self.closed.drain(..)) {
            // Non-blocking, so a writer that somehow survived the run cannot hold palisade.
            if rustix::fs::fcntl_setfl(&read_end, rustix::fs::OFlags::NONBLOCK).is_ok() {
                pump(&read_end, index, &self.shared, false);
            }
        }
        let deadline = Instant::now() + wait;
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            // A thread still blocked after the wait writes to a reader that does not read;
            // it ends with the process.
            if self.done.recv_timeout(left).is_err() {
                break;
            }
            self.running -= 1;
        }
        let count = |index: usize| self.pumped[index].then(|| self.shared.counted[index].load(Ordering::Relaxed));
        let stderr = if self.merged { None } else { count(1) };
        (count(0), stderr, self.merged)
    }
}

/// Copies `read_end` to palisade's descriptor `index + 1` until end-of-file, counting the
/// bytes and cutting at the output limit. A non-blocking `read_end` with nothing to read is
/// waited for with `wait_when_empty`, and ends the copy without it. The pseudo-terminal's
/// master ends with EIO once no process has its slave open.
fn pump(read_end: &OwnedFd, index: usize, shared: &Shared, wait_when_empty: bool) {
    // palisade's own stdout or stderr, written directly. A copy of the descriptor would need a
    // free slot at the command's first write, and the proxy's connections may have taken the
    // last one by then.
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let target = if index == 0 { stdout.as_fd() } else { stderr.as_fd() };
    // The buffer grows to its full size once a read fills it. A pipe the command never wrote
    // to, which `Pumps::finish` drains at the end of every run, then costs no zeroed 64 KiB
    // (16 page faults, about 15 us per pipe).
    let mut buffer = vec![0u8; 4096];
    let mut writable = true;
    loop {
        let n = match rustix::io::read(read_end, &mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if wait_when_empty => {
                let mut fds = [rustix::event::PollFd::new(read_end, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, None);
                continue;
            }
            Err(_) => return,
        };
        shared.counted[index].fetch_add(n as u64, Ordering::Relaxed);
        let before = shared.total.fetch_add(n as u64, Ordering::Relaxed);
        let allowed = match shared.max_output {
            Some(max) => max.saturating_sub(before).min(n as u64) as usize,
            None => n,
        };
        if writable && allowed > 0 {
            if write_all(&target, &buffer[..allowed]).is_err() {
                // The reader of palisade's output went away. Closing this end gives the
                // command the same EPIPE or SIGPIPE it would have got writing there directly.
                return;
            }
            shared.at_line_start[index].store(buffer[allowed - 1] == b'\n', Ordering::Relaxed);
        }
        if allowed < n {
            writable = false;
            if !shared.marker_written.swap(true, Ordering::Relaxed) {
                let max = crate::limits::format_size(shared.max_output.unwrap_or_default());
                // The marker goes to stderr and starts on a line of its own there.
                let stderr_index = if shared.merged { 0 } else { 1 };
                let newline = if shared.at_line_start[stderr_index].load(Ordering::Relaxed) { "" } else { "\n" };
                let marker = format!("{newline}[palisade: output cut after {max}: the run reached its output limit and was stopped]\n");
                let _ = write_all(&std::io::stderr().as_fd(), marker.as_bytes());
                let _ = rustix::io::write(&shared.limit_write, b"1");
            }
        }
        if n == buffer.len() && buffer.len() < PUMP_BUFFER_SIZE {
            buffer.resize(PUMP_BUFFER_SIZE, 0);
        }
    }
}

/// The size of the buffer an output pipe is copied through once the command writes much.
const PUMP_BUFFER_SIZE: usize = 64 * 1024;

fn write_all(fd: &impl AsFd, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(rustix::io::Errno::PIPE),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                // Palisade's caller left the descriptor non-blocking; wait until it drains.
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::OUT)];
                let _ = rustix::event::poll(&mut fds, None);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
