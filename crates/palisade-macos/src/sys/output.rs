//! The command's stdout and stderr, passed through pipes that palisade reads, so it can count
//! the bytes and end the run at `max_output`, as the other backends do.
//!
//! NOTE: both streams always go through a pipe, so `isatty` is false on them inside, and a
//! caller that sends both to one file may get their lines in another order than the command
//! wrote them.

use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::outcome::{output_cut_marker, OutputBudget};

/// The count both output threads share.
struct Shared {
    budget: OutputBudget,
    max_output: u64,
    /// Whether the last byte copied to palisade's stderr ended a line, so the marker starts on
    /// a line of its own.
    stderr_at_line_start: bool,
}

/// The two running output threads.
pub struct Pumps {
    threads: Vec<JoinHandle<u64>>,
    done: Receiver<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Starts a thread per pipe that copies it to palisade's own stream, counting the bytes.
/// `limit_reached` gets one message when the output passes `max_output`.
pub fn start(stdout: impl Read + Send + 'static, stderr: impl Read + Send + 'static, max_output: Option<u64>, limit_reached: Sender<()>) -> std::io::Result<Pumps> {
    let shared = Arc::new(Mutex::new(Shared { budget: OutputBudget::new(max_output), max_output: max_output.unwrap_or(0), stderr_at_line_start: true }));
    let (finished, done) = mpsc::channel();
    let mut threads = Vec::new();
    let pipes: [(Stream, Box<dyn Read + Send>); 2] = [(Stream::Stdout, Box::new(stdout)), (Stream::Stderr, Box::new(stderr))];
    for (stream, pipe) in pipes {
        let shared = Arc::clone(&shared);
        let limit_reached = limit_reached.clone();
        let finished = finished.clone();
        let thread = std::thread::Builder::new().name("palisade-output".into()).spawn(move || {
            let counted = pump(pipe, stream, &shared, &limit_reached);
            let _ = finished.send(());
            counted
        })?;
        threads.push(thread);
    }
    Ok(Pumps { threads, done })
}

impl Pumps {
    /// Waits up to `grace` for both pipes to reach end-of-file, which happens once every
    /// process holding a write end has exited. Returns the bytes the command wrote to stdout
    /// and stderr, counting past the output limit too, or `None` for a pipe still open.
    pub fn finish(self, grace: Duration) -> (Option<u64>, Option<u64>) {
        let deadline = Instant::now() + grace;
        let mut finished = 0;
        while finished < self.threads.len() {
            match self.done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => finished += 1,
                Err(_) => {
                    tracing::warn!("the command's output pipes were still open {grace:?} after the run ended; stopped reading them");
                    break;
                }
            }
        }
        let mut counts = self.threads.into_iter().map(|thread| if thread.is_finished() { thread.join().ok() } else { None });
        (counts.next().flatten(), counts.next().flatten())
    }
}

/// Copies `pipe` to palisade's `stream` until end-of-file and returns the bytes read. Past the
/// limit it keeps reading and discarding, so that the command, killed by then, cannot end
/// with SIGPIPE first and hide the limit.
fn pump(mut pipe: Box<dyn Read + Send>, stream: Stream, shared: &Mutex<Shared>, limit_reached: &Sender<()>) -> u64 {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut counted = 0u64;
    let mut writable = true;
    loop {
        let n = match pipe.read(&mut buffer) {
            Ok(0) => return counted,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return counted,
        };
        counted += n as u64;
        let mut shared = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let take = shared.budget.take(n);
        if writable && take.pass > 0 {
            let chunk = &buffer[..take.pass];
            let written = match stream {
                Stream::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(chunk).and_then(|()| stdout.flush())
                }
                Stream::Stderr => std::io::stderr().lock().write_all(chunk),
            };
            if written.is_err() {
                // The reader of palisade's output went away. Returning closes this end, so the
                // command gets the same broken pipe it would have got writing there.
                return counted;
            }
            if stream == Stream::Stderr {
                shared.stderr_at_line_start = chunk.last() == Some(&b'\n');
            }
        }
        if take.reached_now {
            writable = false;
            let marker = output_cut_marker(shared.max_output, shared.stderr_at_line_start);
            let _ = std::io::stderr().lock().write_all(marker.as_bytes());
            let _ = limit_reached.send(());
        } else if take.pass < n {
            writable = false;
        }
    }
}
