//! The stage's side of a run: `palisade macos-stage`, started by the supervisor for each run.
//! It reads its request, closes what it inherited beyond its two pipes, confines itself and
//! becomes the command (see [`crate::stage`] for the protocol).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd as _;
use std::path::Path;

use crate::stage::{bounded, descriptors_to_close, open_descriptors, StageRequest, StageStatus, MAX_REQUEST_BYTES, READY, REQUEST_FD, STAGE_FAILED, STATUS_FD};

/// Runs the stage and returns the exit code to exit with when the command did not start:
/// its 126 or 127, or [`STAGE_FAILED`].
pub fn stage_main() -> i32 {
    // SAFETY: fcntl on a descriptor number reads or changes only that descriptor's flags; a
    // descriptor that is not open fails with EBADF, handled below.
    if unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        eprintln!(
            "palisade macos-stage: no status pipe on descriptor {STATUS_FD}: {}; the stage is started by `palisade run`",
            std::io::Error::last_os_error()
        );
        return STAGE_FAILED;
    }
    let status = match read_request() {
        Ok(request) => match close_inherited_descriptors().and_then(|()| crate::sys::confine(&request).map_err(|error| error.to_string())) {
            Ok(()) => {
                write_status(&[READY]);
                crate::sys::exec(&request)
            }
            Err(reason) => StageStatus::Failed { reason: bounded(reason) },
        },
        Err(reason) => StageStatus::Failed { reason },
    };
    write_status(&status.encode());
    match status {
        StageStatus::ExecFailed { status, .. } => i32::from(status),
        StageStatus::Failed { .. } => STAGE_FAILED,
    }
}

fn read_request() -> Result<StageRequest, String> {
    // SAFETY: the supervisor opened REQUEST_FD for the stage alone, and this is the only
    // place that takes it. The file closes it once the request is read.
    let file = unsafe { File::from_raw_fd(REQUEST_FD) };
    let mut bytes = Vec::new();
    file.take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("failed to read the stage request on descriptor {REQUEST_FD}: {error}"))?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!("the stage request is longer than {MAX_REQUEST_BYTES} bytes"));
    }
    StageRequest::decode(&bytes).map_err(|error| error.to_string())
}

/// Closes every descriptor above the status pipe, so that nothing palisade's caller left open
/// without close-on-exec reaches the command.
///
/// When `/dev/fd` cannot be read, the stage fails rather than guess. Closing every number up
/// to the RLIMIT_NOFILE soft limit would miss a descriptor opened before that limit was
/// lowered, and `/dev/fd` is part of every macOS, so a failure here means a broken system.
fn close_inherited_descriptors() -> Result<(), String> {
    let open = open_descriptors(Path::new("/dev/fd"))
        .map_err(|error| format!("failed to list the inherited descriptors in /dev/fd, so none were closed: {error}"))?;
    for fd in descriptors_to_close(&open) {
        // SAFETY: close takes a descriptor number, and nothing in this process uses the
        // inherited ones. The listing's own descriptor is closed already and fails with
        // EBADF, which is ignored.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn write_status(bytes: &[u8]) {
    // SAFETY: STATUS_FD is the status pipe the supervisor opened for the stage. ManuallyDrop
    // leaves it open, so that it closes only at exit or exec.
    let mut pipe = ManuallyDrop::new(unsafe { File::from_raw_fd(STATUS_FD) });
    if let Err(error) = pipe.write_all(bytes) {
        eprintln!("palisade macos-stage: failed to report to palisade: {error}");
    }
}
