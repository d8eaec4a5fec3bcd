//! The command's stdout and stderr, passed through pipes that palisade reads so it can count
//! the bytes and stop a flood at the output limit, as the Linux backend does.
//!
//! Both streams always go through a pipe, even when palisade's own is a console: the command
//! may run as another account, which cannot be handed palisade's console. A program that
//! writes to a console with `WriteConsoleW` therefore writes bytes in its code page instead.
//! NOTE: stdout and stderr always get a pipe each, so a caller that sends both to one file
//! (`2>&1`) may see their lines in another order than the command wrote them.

use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Pipes::CreatePipe;

use crate::outcome::format_size;

use super::spawn::{std_handle, Event, StdStream};
use super::Error;

/// The buffer size asked for each pipe.
const PIPE_BUFFER: u32 = 64 * 1024;
/// The stack size of an output thread.
const PUMP_STACK_SIZE: usize = 64 * 1024;

/// Creates an anonymous pipe with handles that are not inheritable. Returns (read, write).
pub fn pipe(what: &str) -> Result<(OwnedHandle, OwnedHandle), Error> {
    let mut read: HANDLE = std::ptr::null_mut();
    let mut write: HANDLE = std::ptr::null_mut();
    // SAFETY: both out-pointers are valid; no security attributes, so neither end is
    // inheritable.
    if unsafe { CreatePipe(&mut read, &mut write, std::ptr::null(), PIPE_BUFFER) } == 0 {
        return Err(Error::last("CreatePipe", what));
    }
    // SAFETY: CreatePipe returned two new handles owned by nobody else.
    Ok(unsafe { (OwnedHandle::from_raw_handle(read), OwnedHandle::from_raw_handle(write)) })
}

/// The two output pipes of a run, before the command starts.
pub struct OutputPipes {
    /// The write ends the command gets as stdout and stderr. They must be closed in palisade
    /// once the command has them, or the pipes never reach end-of-file.
    pub stdout_write: OwnedHandle,
    pub stderr_write: OwnedHandle,
    stdout_read: OwnedHandle,
    stderr_read: OwnedHandle,
}

impl OutputPipes {
    pub fn create() -> Result<OutputPipes, Error> {
        let (stdout_read, stdout_write) = pipe("the command's stdout")?;
        let (stderr_read, stderr_write) = pipe("the command's stderr")?;
        Ok(OutputPipes { stdout_write, stderr_write, stdout_read, stderr_read })
    }

    /// Closes palisade's copies of the write ends and starts a thread per pipe that copies it
    /// to palisade's own stream. `limit_reached` is set once the output passes `max_output`.
    pub fn start(self, max_output: Option<u64>, limit_reached: Arc<Event>) -> Result<Pumps, Error> {
        let OutputPipes { stdout_write, stderr_write, stdout_read, stderr_read } = self;
        drop((stdout_write, stderr_write));
        let shared = Arc::new(Shared {
            counted: [AtomicU64::new(0), AtomicU64::new(0)],
            total: AtomicU64::new(0),
            max_output,
            marker_written: AtomicBool::new(false),
            stderr_at_line_start: AtomicBool::new(true),
            limit_reached,
        });
        let (sender, done) = mpsc::channel();
        for (index, read_end) in [(STDOUT, stdout_read), (STDERR, stderr_read)] {
            let shared = Arc::clone(&shared);
            let sender = sender.clone();
            std::thread::Builder::new()
                .name(format!("palisade-output-{index}"))
                .stack_size(PUMP_STACK_SIZE)
                .spawn(move || {
                    pump(&read_end, index, &shared);
                    let _ = sender.send(());
                })
                .map_err(|source| Error::Io { what: "failed to start an output thread".into(), source })?;
        }
        Ok(Pumps { shared, done, running: 2 })
    }
}

const STDOUT: usize = 0;
const STDERR: usize = 1;

/// Shared by the two output threads.
struct Shared {
    counted: [AtomicU64; 2],
    total: AtomicU64,
    max_output: Option<u64>,
    marker_written: AtomicBool,
    /// Whether the last byte copied to palisade's stderr ended a line, so the marker starts on
    /// a line of its own.
    stderr_at_line_start: AtomicBool,
    limit_reached: Arc<Event>,
}

/// The running output threads.
pub struct Pumps {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
    running: usize,
}

impl Pumps {
    /// Waits up to `grace` for both pipes to reach end-of-file, which happens once every
    /// process holding a write end has exited. Returns the bytes the command wrote to stdout
    /// and stderr, counting past the output limit too.
    pub fn finish(mut self, grace: Duration) -> (u64, u64) {
        let deadline = std::time::Instant::now() + grace;
        while self.running > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => self.running -= 1,
                Err(_) => {
                    // A process outside the job has a write end open (one the command passed to a
                    // service, for instance); the thread is left to end with palisade.
                    tracing::warn!("the command's output pipes were still open {grace:?} after the run ended; stopped reading them");
                    break;
                }
            }
        }
        (self.shared.counted[STDOUT].load(Ordering::Relaxed), self.shared.counted[STDERR].load(Ordering::Relaxed))
    }
}

/// Copies `read_end` to palisade's stream `index` until end-of-file, counting the bytes and
/// cutting at the output limit.
fn pump(read_end: &OwnedHandle, index: usize, shared: &Shared) {
    let target = std_handle(if index == STDOUT { StdStream::Output } else { StdStream::Error });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut writable = true;
    loop {
        let n = match read(read_end.as_handle(), &mut buffer) {
            Some(0) | None => return,
            Some(n) => n,
        };
        shared.counted[index].fetch_add(n as u64, Ordering::Relaxed);
        let before = shared.total.fetch_add(n as u64, Ordering::Relaxed);
        let allowed = match shared.max_output {
            Some(max) => max.saturating_sub(before).min(n as u64) as usize,
            None => n,
        };
        if writable && allowed > 0 {
            if let Some(target) = target {
                if !write_all(target, &buffer[..allowed]) {
                    // The reader of palisade's output went away. Returning closes this end, so
                    // the command gets the same broken pipe it would have got writing there.
                    return;
                }
            }
            if index == STDERR {
                shared.stderr_at_line_start.store(buffer[allowed - 1] == b'\n', Ordering::Relaxed);
            }
        }
        if allowed < n {
            writable = false;
            if !shared.marker_written.swap(true, Ordering::Relaxed) {
                write_marker(shared);
                shared.limit_reached.set();
            }
        }
    }
}

/// Writes the line reporting that the output was cut, on palisade's stderr, in the words of
/// the Linux backend.
fn write_marker(shared: &Shared) {
    let max = format_size(shared.max_output.unwrap_or_default());
    let newline = if shared.stderr_at_line_start.load(Ordering::Relaxed) { "" } else { "\n" };
    let marker = format!("{newline}[palisade: output cut after {max}: the run reached its output limit and was stopped]\n");
    if let Some(stderr) = std_handle(StdStream::Error) {
        write_all(stderr, marker.as_bytes());
    }
}

/// Reads once; `None` at end-of-file (`ERROR_BROKEN_PIPE` once every writer has closed) or on
/// any error.
fn read(handle: BorrowedHandle<'_>, buffer: &mut [u8]) -> Option<usize> {
    let mut read = 0u32;
    let length = buffer.len().min(u32::MAX as usize) as u32;
    // SAFETY: the buffer is valid for `length` bytes and `read` is a valid out-pointer; the
    // handle is synchronous, so no OVERLAPPED.
    let ok = unsafe { ReadFile(handle.as_raw_handle(), buffer.as_mut_ptr(), length, &mut read, std::ptr::null_mut()) };
    (ok != 0).then_some(read as usize)
}

/// Writes all of `bytes` with `WriteFile`, which takes them unchanged whether the handle is a
/// file, a pipe or a console. Returns false when the handle refuses them.
pub fn write_all(handle: BorrowedHandle<'_>, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let mut written = 0u32;
        let length = bytes.len().min(u32::MAX as usize) as u32;
        // SAFETY: the buffer is valid for `length` bytes and `written` is a valid out-pointer.
        let ok = unsafe { WriteFile(handle.as_raw_handle(), bytes.as_ptr(), length, &mut written, std::ptr::null_mut()) };
        if ok == 0 || written == 0 {
            return false;
        }
        bytes = &bytes[written as usize..];
    }
    true
}

/// Reads `handle` to its end, or up to `max` bytes.
pub fn read_to_end(handle: BorrowedHandle<'_>, max: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    while bytes.len() < max {
        match read(handle, &mut buffer) {
            Some(0) | None => break,
            Some(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
    bytes.truncate(max);
    bytes
}
