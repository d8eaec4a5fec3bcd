//! What this machine can enforce, layer by layer, for `palisade check` and for deciding the
//! layers of a run. Each probe answers with the reason and the fix when a layer is missing.

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
    // As root, `palisade run` stops before it creates any namespace when a capability it needs is
    // missing, so the namespaces count as missing then.
    let namespaces = root_capabilities().and_then(|()| namespaces()).map(|()| "user, mount, PID, network, IPC, UTS and cgroup namespaces".to_owned());
    vec![
        Layer::new("namespaces", true, namespaces),
        Layer::new("landlock", true, landlock),
        Layer::new("seccomp", true, seccomp().map(|()| "seccomp-bpf filters".to_owned())),
        Layer::new("cgroup_v2", false, cgroup_v2()),
        Layer::new("rlimits", true, Ok("setrlimit".to_owned())),
        // The accounting enforces the memory and CPU time limits where there is no cgroup,
        // so it is required exactly then.
        Layer::new("accounting", cgroup_v2().is_err(), accounting()),
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
    // As root, the idmapped mounts of the workspace need a user namespace of their own.
    if matches!(identity, Identity::Root { .. }) {
        if let Err(error) = can_create_user_namespace() {
            let _ = sys::kill(pid, libc::SIGKILL);
            userns::reap_child(pid);
            let crate::Error::UserNamespaces { cause, fix } = userns::explain_idmap_failure(error) else {
                unreachable!("explain_idmap_failure returns UserNamespaces")
            };
            return Err((cause, fix));
        }
    }
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

/// Creates a user namespace in a child that exits at once.
fn can_create_user_namespace() -> std::io::Result<()> {
    // The caller is single-threaded, which `clone_fork` requires.
    match sys::clone_fork(libc::CLONE_NEWUSER)? {
        0 => sys::exit_now(0),
        pid => {
            userns::reap_child(pid);
            Ok(())
        }
    }
}

/// Checks that palisade, when it runs as root, has the capabilities root mode needs for the
/// default policy, whose run has a network namespace of its own. `palisade run` stops without
/// them, with or without `--allow-degraded`.
pub fn root_capabilities() -> Result<(), (String, String)> {
    let Some(error) = crate::root_capability_problem(Identity::current(), true) else { return Ok(()) };
    let message = error.to_string();
    match message.split_once("\nfix: ") {
        Some((cause, fix)) => Err((cause.to_owned(), fix.to_owned())),
        None => Err((message, String::new())),
    }
}

/// Checks for a delegated cgroup v2 directory of this process with the memory and pids
/// controllers, in which palisade can create one cgroup per run.
pub fn cgroup_v2() -> Result<String, (String, String)> {
    let fallback = "without it, the memory, CPU time and process limits rest on rlimits, the PID namespace and palisade's own sampled accounting";
    let dir = crate::own_cgroup().map_err(|cause| (cause, fallback.to_owned()))?;
    crate::cgroup::check(&dir, crate::CGROUP_CONTROLLERS).map_err(|(cause, fix)| (cause, format!("{fallback}; {fix}")))?;
    Ok(format!("{} with memory and pids: one cgroup per run", dir.display()))
}

/// Checks that palisade's own accounting can find a run's processes in `/proc`.
pub fn accounting() -> Result<String, (String, String)> {
    crate::limits::accounting_available()?;
    Ok("reads the run's processes from /proc to hold the memory and CPU time limits where no cgroup does".to_owned())
}

/// Reports whether `--allow-degraded` lets a run go here. With the namespaces available
/// (`namespaces`), it does: the run keeps them and goes without the other missing layers.
/// Without them, degraded mode needs Landlock ABI 3 (truncation is a right from ABI 3 on, and
/// without it a read-only file could be emptied) and seccomp. As root without a capability
/// root mode needs, no run goes at all.
pub fn degraded_possible(namespaces: bool) -> Result<(), String> {
    if root_capabilities().is_err() {
        return Err("as root without the capabilities named above, palisade stops every run, degraded or not".to_owned());
    }
    if namespaces {
        return Ok(());
    }
    match landlock::kernel_abi() {
        None => return Err(format!("it needs Landlock, and {}", landlock::missing_reason().0)),
        Some(abi) if abi < 3 => return Err(format!("it needs Landlock ABI 3 (Linux 6.2), and this kernel offers ABI {abi}")),
        Some(_) => {}
    }
    seccomp().map_err(|(cause, _)| format!("it needs seccomp, and {cause}"))
}
