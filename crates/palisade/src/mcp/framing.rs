//! The stdio transport: one JSON-RPC message per line. A reader thread splits stdin into lines
//! without ever holding more than [`MAX_MESSAGE_BYTES`] of one, and a writer thread writes the
//! responses to stdout in the order they are sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::thread;

use tokio::sync::mpsc as async_mpsc;

/// The maximum size of one message in bytes. A longer line is discarded as it arrives and
/// rejected with a JSON-RPC error, so one message takes at most this much memory.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Size of the reader's buffer: large enough that discarding an oversized line is fast.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// One line of input, without its line terminator.
#[derive(Debug)]
pub enum Frame {
    Line(Vec<u8>),
    /// A line longer than [`MAX_MESSAGE_BYTES`]: its first bytes, kept to look for the request
    /// id, and its full length.
    Oversized { prefix: Vec<u8>, length: u64 },
}

/// Starts the thread that reads `input` line by line into `frames`. The channel closes at end
/// of file or on a read error, which the server treats as the client's disconnection.
pub fn spawn_reader(input: impl Read + Send + 'static, frames: async_mpsc::Sender<Frame>) {
    thread::Builder::new()
        .name("mcp-stdin".into())
        .spawn(move || read_frames(BufReader::with_capacity(READ_BUFFER_BYTES, input), &frames))
        .expect("failed to start the stdin thread");
}

fn read_frames(mut input: impl BufRead, frames: &async_mpsc::Sender<Frame>) {
    loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!("mcp: failed to read stdin, stopping: {error}");
                return;
            }
        };
        if let Frame::Line(line) = &frame {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
        }
        // `blocking_send` waits while the server is busy, so a fast client cannot queue
        // unbounded input in memory.
        if frames.blocking_send(frame).is_err() {
            return;
        }
    }
}

/// Reads one line. Returns `None` at end of file; a last line without a terminator still counts.
fn read_frame(input: &mut impl BufRead) -> std::io::Result<Option<Frame>> {
    let mut line = Vec::new();
    let mut length: u64 = 0;
    let mut oversized = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            if length == 0 {
                return Ok(None);
            }
            break;
        }
        let newline = available.iter().position(|&byte| byte == b'\n');
        let take = newline.map_or(available.len(), |index| index + 1);
        let content = newline.map_or(take, |index| index);
        if !oversized && line.len() + content > MAX_MESSAGE_BYTES {
            // Keep what fits, so that the request id can still be read from the prefix.
            let room = MAX_MESSAGE_BYTES - line.len();
            line.extend_from_slice(&available[..room]);
            oversized = true;
        } else if !oversized {
            line.extend_from_slice(&available[..content]);
        }
        length += content as u64;
        input.consume(take);
        if newline.is_some() {
            break;
        }
    }
    if oversized {
        return Ok(Some(Frame::Oversized { prefix: line, length }));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(Frame::Line(line)))
}

/// The sending side of stdout. Every message becomes one line. Sending never blocks, because
/// the channel is unbounded.
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<String>);

impl Outbox {
    pub fn send(&self, message: &serde_json::Value) {
        let text = serde_json::to_string(message).expect("a JSON value serialises");
        // A send fails only after the writer thread stopped on a write error, when the client is
        // gone.
        let _ = self.0.send(text);
    }
}

/// Starts the thread that writes each message of the returned [`Outbox`] to `output` and
/// flushes it. The returned receiver gets a message once every `Outbox` was dropped and the
/// thread wrote everything sent before.
pub fn spawn_writer(output: impl Write + Send + 'static) -> (Outbox, mpsc::Receiver<()>) {
    let (sender, messages) = mpsc::channel::<String>();
    let (done_sender, done) = mpsc::channel();
    thread::Builder::new()
        .name("mcp-stdout".into())
        .spawn(move || {
            write_messages(output, &messages);
            let _ = done_sender.send(());
        })
        .expect("failed to start the stdout thread");
    (Outbox(sender), done)
}

fn write_messages(mut output: impl Write, messages: &mpsc::Receiver<String>) {
    for message in messages {
        let written = output
            .write_all(message.as_bytes())
            .and_then(|()| output.write_all(b"\n"))
            .and_then(|()| output.flush());
        if let Err(error) = written {
            tracing::info!("mcp: failed to write to stdout, dropping further messages: {error}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        // A small buffer makes lines cross buffer boundaries.
        let mut reader = BufReader::with_capacity(7, input);
        std::iter::from_fn(|| read_frame(&mut reader).unwrap()).collect()
    }

    #[test]
    fn read_frame_splits_lines() {
        let read = frames(b"{\"a\":1}\r\n\n{\"b\":2}\nlast");
        let lines: Vec<&[u8]> = read
            .iter()
            .map(|frame| match frame {
                Frame::Line(line) => line.as_slice(),
                Frame::Oversized { .. } => panic!("unexpected oversized frame"),
            })
            .collect();
        assert_eq!(lines, [&b"{\"a\":1}"[..], b"", b"{\"b\":2}", b"last"]);
    }

    #[test]
    fn read_frame_cuts_oversized_line_and_recovers() {
        let mut input = vec![b'x'; MAX_MESSAGE_BYTES + 10];
        input.extend_from_slice(b"\n{}\n");
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, input.as_slice());
        match read_frame(&mut reader).unwrap() {
            Some(Frame::Oversized { prefix, length }) => {
                assert_eq!(prefix.len(), MAX_MESSAGE_BYTES);
                assert_eq!(length, MAX_MESSAGE_BYTES as u64 + 10);
            }
            other => panic!("expected an oversized frame, got {other:?}"),
        }
        assert!(matches!(read_frame(&mut reader).unwrap(), Some(Frame::Line(line)) if line == b"{}"));
        assert!(read_frame(&mut reader).unwrap().is_none());
    }

    #[test]
    fn read_frame_accepts_line_of_exactly_maximum() {
        let mut input = vec![b'x'; MAX_MESSAGE_BYTES];
        input.push(b'\n');
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, input.as_slice());
        assert!(matches!(read_frame(&mut reader).unwrap(), Some(Frame::Line(line)) if line.len() == MAX_MESSAGE_BYTES));
    }
}
