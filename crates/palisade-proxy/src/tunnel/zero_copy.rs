//! Relaying a tunnel between two TCP sockets without copying its bytes through the proxy's
//! memory. In each direction, splice(2) moves the bytes from one socket into a pipe and from
//! the pipe into the other socket. The kernel passes references to its pages instead of
//! copying them into a buffer and back.
//!
//! A copying relay reads every byte into the proxy's buffer and writes it out again, two copies
//! on top of the two that the sender and the receiver make anyway. With `bench/proxy.py` on a
//! 2-CPU VM, a 1 GiB transfer through the copying relay reached 0.64 of direct loopback
//! throughput. docs/benchmarks.md has the figures with this relay.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::BufferBudget;

/// Largest capacity a tunnel's pipe grows to. It is the default of `fs.pipe-max-size`, the
/// largest capacity an unprivileged process may give a pipe.
const PIPE_MAX: usize = 1024 * 1024;

/// Reports whether SIGPIPE is ignored in this process.
///
/// A splice into a socket whose peer has gone raises SIGPIPE, because, unlike `send`, splice
/// has no way to ask for `MSG_NOSIGNAL`. Rust programs ignore SIGPIPE unless they opt out. A
/// program that embeds the proxy may have opted out, and the signal would then kill it, so such
/// a process gets the copying relay instead.
pub(super) fn sigpipe_ignored() -> bool {
    let mut current = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current action into `current`,
    // which is valid for writes of a `sigaction`.
    let status = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), current.as_mut_ptr()) };
    if status != 0 {
        return false;
    }
    // SAFETY: sigaction succeeded, so it filled `current`; it was also zeroed, which is a valid
    // `sigaction`.
    let current = unsafe { current.assume_init() };
    current.sa_sigaction == libc::SIG_IGN
}

/// The pipe of one direction of a tunnel. Its capacity starts at the system's default for a new
/// pipe. It doubles, up to [`PIPE_MAX`] and within the budget, each time one splice from the
/// socket fills at least half of it. Only a direction that carries a bulk transfer therefore
/// has many pages in flight.
pub(super) struct Pipe<'a> {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// The bytes of capacity reserved from the budget, beyond the capacity the pipe had when it
    /// was made.
    reserved: usize,
    /// Whether growing this pipe failed (the kernel's limit on pipe pages), after which it keeps
    /// its capacity.
    growth_failed: bool,
    budget: &'a BufferBudget,
}

impl Pipe<'_> {
    /// Makes a non-blocking pipe, or fails when this process is out of descriptors or the user
    /// out of pipe pages; the caller then copies instead.
    pub(super) fn new(budget: &BufferBudget) -> io::Result<Pipe<'_>> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = rustix::pipe::fcntl_getpipe_size(&write)?;
        Ok(Pipe { read, write, capacity, reserved: 0, growth_failed: false, budget })
    }

    /// Doubles the capacity if a splice of `moved` bytes filled at least half of it and the
    /// budget allows. After a refusal from the kernel (the user's pipe pages are used up) the
    /// pipe keeps its capacity and stops asking.
    fn grow_after(&mut self, moved: usize) {
        if moved * 2 < self.capacity || self.capacity >= PIPE_MAX || self.growth_failed {
            return;
        }
        let doubled = (self.capacity * 2).min(PIPE_MAX);
        let extra = doubled - self.capacity;
        if !self.budget.try_reserve(extra) {
            return;
        }
        match rustix::pipe::fcntl_setpipe_size(&self.write, doubled) {
            Ok(_) => {
                self.capacity = doubled;
                self.reserved += extra;
            }
            Err(_) => {
                self.budget.release(extra);
                self.growth_failed = true;
            }
        }
    }
}

impl Drop for Pipe<'_> {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// Moves bytes from `from` to `to` through `pipe` until `from` ends, then shuts down the
/// sending side of `to` so that its peer reads the end of the stream too. Returns the number of
/// bytes moved.
///
/// The pipe is empty each time a splice from `from` starts, so a splice that would block is
/// waiting for the socket, never for the pipe, and the socket's readiness is what to wait for.
pub(super) async fn one_way(from: &TcpStream, to: &TcpStream, mut pipe: Pipe<'_>) -> io::Result<u64> {
    let mut moved: u64 = 0;
    loop {
        let filled = loop {
            from.readable().await?;
            let capacity = pipe.capacity;
            let attempt = from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(from, None, &pipe.write, None, capacity, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
            });
            match attempt {
                Ok(filled) => break filled,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        };
        if filled == 0 {
            rustix::net::shutdown(to, Shutdown::Write)?;
            return Ok(moved);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            let attempt = to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(&pipe.read, None, to, None, left, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
            });
            match attempt {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => left -= written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        moved += filled as u64;
        pipe.grow_after(filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_harness_ignores_sigpipe() {
        // Rust's runtime ignores SIGPIPE before main, and the tunnel tests rely on it to take
        // the zero-copy path.
        assert!(sigpipe_ignored());
    }

    #[test]
    fn pipe_grows_after_large_splice() {
        let budget = BufferBudget::new(usize::MAX);
        let mut pipe = Pipe::new(&budget).unwrap();
        let start = pipe.capacity;
        pipe.grow_after(start / 2 - 1);
        assert_eq!(pipe.capacity, start);
        pipe.grow_after(start / 2);
        assert_eq!(pipe.capacity, 2 * start);
        assert_eq!(rustix::pipe::fcntl_getpipe_size(&pipe.write).unwrap(), 2 * start);
        drop(pipe);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn pipe_growth_stays_within_budget() {
        let budget = BufferBudget::new(0);
        let mut pipe = Pipe::new(&budget).unwrap();
        let start = pipe.capacity;
        pipe.grow_after(start);
        assert_eq!(pipe.capacity, start);
        assert_eq!(rustix::pipe::fcntl_getpipe_size(&pipe.write).unwrap(), start);
    }

    #[test]
    fn pipe_stops_growing_at_maximum() {
        let budget = BufferBudget::new(usize::MAX);
        let mut pipe = Pipe::new(&budget).unwrap();
        for _ in 0..20 {
            pipe.grow_after(pipe.capacity);
        }
        // An unprivileged user past `fs.pipe-user-pages-soft` keeps a smaller pipe.
        assert!(pipe.capacity <= PIPE_MAX);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Relaxed), pipe.reserved);
    }
}
