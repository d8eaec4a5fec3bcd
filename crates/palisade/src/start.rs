//! The start of the process on Linux, without the standard library's runtime start.
//!
//! A Rust `main` runs behind `std::rt::lang_start`. On Linux that start also installs the
//! handler that reports a stack overflow, and to find the main thread's stack it has glibc read
//! and parse `/proc/self/maps` (`pthread_getattr_np`). Every run of palisade paid for it:
//! `palisade policy` took 73 µs less without it (1.35 to 1.28 ms in 600 interleaved runs on
//! a 2-CPU VM, docs/benchmarks.md). With `#![no_main]`, glibc calls [`main`] here directly.
//! It makes the three steps of that start palisade relies on by hand: descriptors 0 to 2 are
//! open, `SIGPIPE` is ignored, and stdout is flushed at the end. The command-line arguments need
//! nothing: the standard library takes them from glibc's start on Linux whatever `main` is.
//!
//! NOTE: without that handler, a stack overflow ends palisade with a plain SIGSEGV instead of
//! a message naming the thread. The guard gap below the stack still stops the overflow.

use std::ffi::{c_char, c_int};
use std::io::Write;

/// The entry point glibc calls.
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    if !open_standard_descriptors() {
        return c_int::from(crate::EXIT_PALISADE_FAILED);
    }
    // A write to a pipe whose reader is gone then fails with EPIPE, which palisade handles,
    // instead of killing it.
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of this process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = crate::palisade_main();
    // The standard library keeps stdout line-buffered, and only its runtime flushes it after
    // `main` returns. Output without a final newline would otherwise be lost.
    let _ = std::io::stdout().flush();
    c_int::from(code)
}

/// Opens `/dev/null` as each of descriptors 0, 1 and 2 that is closed, as the standard library
/// does at its start. Otherwise a file palisade opens later could get one of those numbers,
/// and palisade's messages would be written into it. Returns false if one cannot be opened.
fn open_standard_descriptors() -> bool {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    loop {
        // SAFETY: poll reads and writes the three pollfd structures of a live local array.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
        if rc >= 0 {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // When poll fails, each descriptor's flags tell whether it is open.
            for pollfd in &mut fds {
                // SAFETY: F_GETFD only reads the flags of a descriptor number, open or not.
                let closed = unsafe { libc::fcntl(pollfd.fd, libc::F_GETFD) } == -1;
                pollfd.revents = if closed { libc::POLLNVAL } else { 0 };
            }
            break;
        }
    }
    for pollfd in fds {
        if pollfd.revents & libc::POLLNVAL != 0 {
            // The lowest free number is this one: the ones below it are open by now.
            // SAFETY: the path is a NUL-terminated literal; the descriptor is left open on
            // purpose, as the closed standard descriptor it replaces.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd != pollfd.fd {
                return false;
            }
        }
    }
    true
}
