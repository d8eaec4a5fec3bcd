//! The `unconfined` profile: the command runs with the caller's full access, by explicit
//! request only. The environment filter and the wall-clock timeout still apply.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_policy::Policy;

use crate::limits::{Limit, LimitEvent};
use crate::{Error, Exit, Outcome};

pub fn run(policy: &Policy, argv: &[OsString]) -> Result<Outcome, Error> {
    let started = Instant::now();
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).current_dir(&policy.cwd).env_clear();
    for var in &policy.env {
        command.env(&var.name, &var.value);
    }
    // Its own process group, so a timeout can end the command's children too.
    // NOTE: a child that calls setsid leaves the group and survives the timeout here; only
    // the sandboxed profiles end every process of the run.
    command.process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            let reason = format!("{}: {error}", argv[0].to_string_lossy());
            return Ok(Outcome { exit: Exit::Code(code), wall_time: started.elapsed(), exec_error: Some((code, reason)), layers: Default::default(), usage: Default::default(), limits_reached: Vec::new(), network: Default::default() });
        }
    };
    let deadline = policy.limits.timeout.map(|timeout| started + timeout);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::setup("wait for", "the command", e))? {
            use std::os::unix::process::ExitStatusExt;
            let exit = match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Code(1),
            };
            return Ok(Outcome { exit, wall_time: started.elapsed(), exec_error: None, layers: Default::default(), usage: Default::default(), limits_reached: Vec::new(), network: Default::default() });
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let _ = crate::sys::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            let _ = child.wait();
            let timeout = policy.limits.timeout.unwrap_or_default();
            let event = LimitEvent {
                limit: Limit::Timeout,
                value: timeout.as_millis() as u64,
                ended_run: true,
                message: format!(
                    "the command did not finish within its timeout of {}; its process group was killed",
                    crate::limits::format_duration(timeout)
                ),
            };
            let usage = Default::default();
            return Ok(Outcome { exit: Exit::TimedOut, wall_time: started.elapsed(), exec_error: None, layers: Default::default(), usage, limits_reached: vec![event], network: Default::default() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
