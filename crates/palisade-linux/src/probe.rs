//! What this machine can enforce, layer by layer, for `palisade check` and for deciding the
//! layers of a run. Each probe answers with the reason and the fix when a layer is missing.

use std::path::{Path, PathBuf};

use crate::{landlock, sys, userns, Identity};

/// One layer's availability on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// A stable identifier, such as `namespaces` or `landlock`.
    pub name: &'static str,
    pub available: bool,
    /// The available feature (such as `ABI 7`), or the reason it is missing.
    pub detail: String,
    /// How to make the layer available, or empty when it is.
    pub fix: String,
    /// Whether the default policy needs this layer to run without `--allow-degraded`.
    pub required: bool,
}

impl Layer {
    fn new(name: &'static str, required: bool, result: Result<String, (String, String)>) -> Layer {
        match result {
            Ok(detail) => Layer { name, available: true, detail, fix: String::new(), required },
            Err((detail, fix)) => Layer { name, available: false, detail, fix, required },
        }
    }
}

/// Probes every layer. The namespace probe creates (and at once ends) one short-lived child in
/// new namespaces, the way a run would.
pub fn all() -> Vec<Layer> {
    let landlock = match landlock::kernel_abi() {
        Some(abi) => {
            let mut features = vec!["filesystem"];
            if abi >= 3 {
                features.push("truncate");
            }
            if abi >= 4 {
                features.push("TCP");
            }
            if abi >= 5 {
                features.push("device ioctls");
            }
            if abi >= 6 {
                features.push("abstract UNIX socket and signal scoping");
            }
            Ok(format!("ABI {abi} ({})", features.join(", ")))
        }
        None => Err(landlock::missing_reason()),
    };
    vec![
        Layer::new("namespaces", true, namespaces().map(|()| "user, mount, PID, network, IPC, UTS and cgroup namespaces".to_owned())),
        Layer::new("landlock", true, landlock),
        Layer::new("seccomp", true, seccomp().map(|()| "seccomp-bpf filters".to_owned())),
        Layer::new("cgroup_v2", false, cgroup_v2()),
        Layer::new("rlimits", true, Ok("setrlimit".to_owned())),
    ]
}

/// Checks that seccomp filters can be installed (CONFIG_SECCOMP_FILTER).
pub fn seccomp() -> Result<(), (String, String)> {
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which is valid.
    let result = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0, &action as *const u32) };
    if result == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    Err((
        format!("the kernel cannot install seccomp filters ({error}); it needs CONFIG_SECCOMP_FILTER"),
        "run palisade on a kernel built with CONFIG_SECCOMP_FILTER (every major distribution's kernel is)".into(),
    ))
}

/// Creates the namespaces a run creates, in a child that mounts a tmpfs in its own mount
/// namespace and exits, so a refusal at either step (AppArmor's restriction refuses the mount,
/// not the namespace) shows here.
pub fn namespaces() -> Result<(), (String, String)> {
    let identity = Identity::current();
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
    if matches!(identity, Identity::User { .. }) {
        flags |= libc::CLONE_NEWUSER;
    }
    let explain = |detail: String| {
        let (cause, fix) = userns::diagnose()
            .unwrap_or_else(|| (detail.clone(), "run palisade on a host that allows unprivileged user namespaces, or as root".into()));
        if cause == detail { (cause, fix) } else { (format!("{cause} ({detail})"), fix) }
    };
    let (go_read, go_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|error| (format!("failed to create a pipe: {error}"), String::new()))?;
    // The caller is single-threaded (the palisade binary starts no threads), which
    // `clone_fork` requires.
    let pid = match sys::clone_fork(flags) {
        Ok(0) => {
            drop(go_write);
            let mut byte = [0u8; 1];
            if rustix::io::read(&go_read, &mut byte) != Ok(1) {
                sys::exit_now(3);
            }
            let private = rustix::mount::mount_change("/", rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC);
            if private.is_err() {
                sys::exit_now(1);
            }
            let tmpfs = rustix::mount::mount("palisade-probe", "/tmp", "tmpfs", rustix::mount::MountFlags::empty(), None);
            sys::exit_now(if tmpfs.is_ok() { 0 } else { 2 })
        }
        Ok(pid) => pid,
        Err(error) => {
            let crate::Error::UserNamespaces { cause, fix } = userns::explain_clone_failure(error) else {
                unreachable!("explain_clone_failure returns UserNamespaces")
            };
            return Err((cause, fix));
        }
    };
    drop(go_read);
    let maps = match identity {
        Identity::User { uid, gid } => userns::write_maps(pid, uid, gid).map_err(|error| error.to_string()),
        Identity::Root { .. } => Ok(()),
    };
    let _ = rustix::io::write(&go_write, b"1");
    drop(go_write);
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid local integer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    maps.map_err(explain)?;
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(1) => Err(explain("the new mount namespace could not be made private".into())),
        Some(2) => Err(explain("mounting a tmpfs inside the new namespaces was refused".into())),
        _ => Err(explain(format!("the probe child ended with status {status:#x}"))),
    }
}

/// Checks for a writable cgroup v2 directory of this process with the memory and pids
/// controllers.
pub fn cgroup_v2() -> Result<String, (String, String)> {
    let fallback = "without it, limits can rest only on rlimits and the PID namespace (this build sets no limit but core dumps off and the timeout)";
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(relative) = membership.lines().find_map(|line| line.strip_prefix("0::")) else {
        return Err(("this process is in no cgroup v2 hierarchy".into(), fallback.into()));
    };
    let mount = Path::new("/sys/fs/cgroup");
    let is_cgroup2 = rustix::fs::statfs(mount).map(|stat| stat.f_type as i64 == 0x6367_7270).unwrap_or(false);
    if !is_cgroup2 {
        return Err((
            "/sys/fs/cgroup is not a cgroup v2 mount (a cgroup v1 or hybrid host)".into(),
            format!("{fallback}; boot with systemd.unified_cgroup_hierarchy=1 to use cgroup v2"),
        ));
    }
    let dir: PathBuf = mount.join(relative.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["memory", "pids"].into_iter().filter(|name| !controllers.split_whitespace().any(|c| c == *name)).collect();
    if !missing.is_empty() {
        return Err((
            format!("the cgroup {} does not offer the {} controller(s)", dir.display(), missing.join(" and ")),
            format!("{fallback}; run palisade in a delegated cgroup, for example under `systemd-run --user --scope -p Delegate=yes`"),
        ));
    }
    if rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK).is_err() {
        return Err((
            format!("the cgroup {} is not writable by this user", dir.display()),
            format!("{fallback}; run palisade in a delegated cgroup, for example under `systemd-run --user --scope -p Delegate=yes`"),
        ));
    }
    Ok(format!("{} with memory and pids", dir.display()))
}

/// Reports whether degraded mode can run here: it needs Landlock ABI 3 (truncation is a right
/// from ABI 3 on, and without it a read-only file could be emptied) and seccomp.
pub fn degraded_possible() -> Result<(), String> {
    match landlock::kernel_abi() {
        None => return Err(format!("it needs Landlock, and {}", landlock::missing_reason().0)),
        Some(abi) if abi < 3 => return Err(format!("it needs Landlock ABI 3 (Linux 6.2), and this kernel offers ABI {abi}")),
        Some(_) => {}
    }
    seccomp().map_err(|(cause, _)| format!("it needs seccomp, and {cause}"))
}
