//! User namespaces: writing the sandbox's id mapping, and explaining why the kernel refused to
//! create one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

use crate::Error;

/// Maps the caller's uid and gid to themselves inside the sandbox's user namespace. `setgroups`
/// is denied first, as the kernel requires for an unprivileged writer.
pub fn write_maps(pid: libc::pid_t, uid: u32, gid: u32) -> Result<(), Error> {
    let write = |file: &str, content: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, content).map_err(|error| explain_map_failure(&path, error))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_owned())
}

/// Names the host setting that blocks user namespaces, with the command that lifts it.
pub fn diagnose() -> Option<(String, String)> {
    diagnose_with(&read_sysctl)
}

/// [`diagnose`] with the sysctl reader as a parameter, so tests can describe a host.
fn diagnose_with(read_sysctl: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some((
            "the sysctl user.max_user_namespaces is 0".into(),
            "run `sudo sysctl -w user.max_user_namespaces=15000` (and set it in /etc/sysctl.d to keep it), or run palisade where user namespaces are allowed".into(),
        ));
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some((
            "the sysctl kernel.unprivileged_userns_clone is 0".into(),
            "run `sudo sysctl -w kernel.unprivileged_userns_clone=1` (and set it in /etc/sysctl.d to keep it)".into(),
        ));
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some((
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1, the default on Ubuntu 23.10 and later)".into(),
            "install an AppArmor profile that grants `userns` to the palisade binary (see docs/security.md), or run `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`".into(),
        ));
    }
    None
}

/// Turns a failed `clone` into an error that names the cause and the fix.
pub fn explain_clone_failure(error: io::Error) -> Error {
    let (cause, fix) = diagnose().unwrap_or_else(|| {
        let cause = match error.raw_os_error() {
            Some(libc::EPERM) => "the kernel refused (EPERM); palisade may be running in a container or under a seccomp filter that forbids new namespaces".to_owned(),
            Some(libc::ENOSPC) | Some(libc::EUSERS) => "the limit on nested user namespaces is reached (ENOSPC)".to_owned(),
            Some(libc::EINVAL) => "the kernel lacks user, mount, PID or network namespace support (EINVAL); it needs CONFIG_USER_NS, CONFIG_PID_NS and CONFIG_NET_NS".to_owned(),
            _ => error.to_string(),
        };
        (cause, "run palisade on a host that allows unprivileged user namespaces, or as root".to_owned())
    });
    Error::UserNamespaces { cause: format!("{cause} ({error})"), fix }
}

fn explain_map_failure(path: &str, error: io::Error) -> Error {
    match diagnose() {
        Some((cause, fix)) => Error::UserNamespaces { cause: format!("{cause}; writing {path} failed: {error}"), fix },
        None => Error::setup("write", path, error),
    }
}

/// Creates a user namespace whose only mapping sends uid and gid 0 to the sandbox user, for
/// idmapped mounts. Through them, files the calling root user owns appear owned by the sandbox
/// user, so the workspace stays writable while root-only host files stay out of reach.
///
/// Starts a child straight into a new user namespace; it waits on a pipe while the mapping is
/// written and the namespace opened. Closing the pipe ends it. On success the caller keeps the
/// returned [`Holder`] until the sandbox is set up, so the child's exit overlaps the setup.
/// Dropping the holder reaps the child.
pub fn idmap_namespace(sandbox_uid: u32) -> Result<(OwnedFd, Holder), Error> {
    let (hold_read, hold_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::setup("create", "a pipe", e.into()))?;
    let mut holder = match sys::clone_holder(libc::CLONE_NEWUSER, hold_read.as_fd(), hold_write.as_fd()) {
        Ok((pid, memory)) => Holder { hold: Some(hold_write), pid, _memory: memory },
        Err(error) => return Err(explain_idmap_failure(error)),
    };
    drop(hold_read);
    let pid = holder.pid;
    let result = (|| {
        let map = format!("0 {sandbox_uid} 1\n");
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, &map).map_err(|error| format!("failed to write {path}: {error}"))?;
        }
        let path = format!("/proc/{pid}/ns/user");
        std::fs::File::open(&path).map(OwnedFd::from).map_err(|error| format!("failed to open {path}: {error}"))
    })();
    // The last write end: closing it ends the child's read.
    holder.release();
    match result {
        Ok(fd) => Ok((fd, holder)),
        Err(error) => Err(Error::Sandbox(error)),
    }
}

/// The child that keeps the idmap user namespace alive until the sandbox is set up, and the
/// write end of the pipe it waits on. Dropping it closes that end, waits for the child to exit
/// and then frees the stack it ran on. No early return or panic can therefore wait for a child
/// that is itself still waiting.
pub struct Holder {
    hold: Option<OwnedFd>,
    pid: libc::pid_t,
    _memory: sys::HolderMemory,
}

impl Holder {
    /// Closes the pipe's last write end, which lets the child exit.
    fn release(&mut self) {
        self.hold = None;
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release();
        // The child's stack must stay allocated until the child is gone, so reap first. Fields
        // drop after this body, so `_memory` outlives the wait.
        reap_child(self.pid);
    }
}

/// Turns a failure to create the user namespace for idmapped mounts into an error that names
/// the cause and the fix. Palisade running as root needs one too, which a root without the
/// right to create user namespaces (uid 0 inside a container's user namespace, say) lacks.
pub fn explain_idmap_failure(error: io::Error) -> Error {
    let Error::UserNamespaces { cause, fix } = explain_clone_failure(error) else {
        unreachable!("explain_clone_failure returns UserNamespaces")
    };
    Error::UserNamespaces {
        cause: format!("palisade runs as root and needs a user namespace for the idmapped mounts of the workspace, but creating one failed: {cause}"),
        fix,
    }
}

/// Waits for a child that is about to exit or has exited.
pub fn reap_child(pid: libc::pid_t) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        // A signal handler may interrupt the wait; only a reaped child lets a holder's stack go.
        while let Err(rustix::io::Errno::INTR) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {}
    }
}

#[cfg(test)]
mod tests {
    use super::diagnose_with;

    #[test]
    fn apparmor_restriction_is_named_with_both_fixes() {
        let ubuntu = |path: &str| match path {
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns" => Some("1".to_owned()),
            "/proc/sys/user/max_user_namespaces" => Some("63000".to_owned()),
            _ => None,
        };
        let (cause, fix) = diagnose_with(&ubuntu).expect("the restriction is diagnosed");
        assert!(cause.contains("apparmor_restrict_unprivileged_userns"), "{cause}");
        assert!(fix.contains("AppArmor profile"), "{fix}");
        assert!(fix.contains("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"), "{fix}");
    }

    #[test]
    fn open_host_has_no_diagnosis() {
        assert_eq!(diagnose_with(&|_: &str| None), None);
    }
}
