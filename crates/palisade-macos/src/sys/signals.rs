//! The signals palisade handles during a run instead of dying from them, as on Linux. SIGINT,
//! SIGTERM, SIGHUP and SIGQUIT are passed on to the command's process group. After SIGTERM,
//! SIGHUP or SIGQUIT, every process of the run is killed once a grace period is over.
//!
//! The command runs in a session of its own, so a terminal's Ctrl-C reaches palisade only,
//! and palisade passes it on. The signals are blocked in every thread and taken by one thread
//! with `sigwait`. A child inherits the signal mask through `fork` and `execve` (std's
//! `Command` keeps it), so [`unblock_in_child`] clears it again in each child palisade starts.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// The signals palisade takes during a run.
const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How long the command may take to exit after palisade passed on a SIGTERM, SIGHUP or SIGQUIT,
/// before every process of the run is killed.
pub const TERMINATION_GRACE: Duration = Duration::from_secs(5);

/// Returns whether palisade kills the run [`TERMINATION_GRACE`] after passing `signal` on.
pub fn ends_run(signal: libc::c_int) -> bool {
    matches!(signal, libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT)
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, for which all zeroes is a valid value. sigemptyset and
    // sigaddset only write into the set, and the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread and every thread it starts afterwards.
/// Call it before palisade starts any thread of the run, so that none of them dies from one.
pub fn block() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: `set` is a valid signal set; the old mask is not requested.
    let status = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status));
    }
    Ok(())
}

/// Starts the thread that takes the handled signals and sends each to `signals`, until the
/// receiver is gone.
pub fn forward_to(signals: Sender<libc::c_int>) -> io::Result<()> {
    std::thread::Builder::new().name("palisade-signals".into()).spawn(move || {
        let set = handled_set();
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set blocked in every thread of the run, and
            // `signal` is a valid place for the result.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            if signals.send(signal).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Makes `command`'s child start with no blocked signals.
pub fn unblock_in_child(command: &mut Command) {
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed; sigemptyset and sigprocmask are, and the hook allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
