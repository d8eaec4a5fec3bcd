//! The Landlock layer: the filesystem policy enforced a second time by the kernel's access
//! control, plus scoping of abstract UNIX sockets and signals.
//!
//! With namespaces, the rules follow the mount plan: what is mounted read-only is granted
//! read and execute, what is mounted writable is granted everything but device ioctls. Landlock
//! cannot take a right away below a directory that has it, so protected and hidden paths inside
//! granted directories rely on the mounts, and Landlock catches a mistake in everything else.
//! Without namespaces (degraded mode) these rules are the filesystem policy, see
//! [`rules_for_degraded`].

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::plan::{MountOp, MountPlan};

/// The newest Landlock ABI this build supports and requests.
pub const NEWEST_ABI: ABI = ABI::V7;

/// Terminal devices, which also need ioctls (window size, raw mode, new pseudo-terminals).
const TERMINALS: &[&str] = &["/dev/tty", "/dev/pts", "/dev/ptmx"];

/// The paths each kind of access is granted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Read files, list directories, execute.
    pub read: Vec<PathBuf>,
    /// Only list the directory itself and what lies below it (no file reads).
    pub list: Vec<PathBuf>,
    /// Everything except device ioctls.
    pub write: Vec<PathBuf>,
    /// Read and write device files, no ioctls.
    pub devices: Vec<PathBuf>,
    /// Directories of device nodes: `read` and `devices` together, in one rule. The sandbox's
    /// own `/dev` is one: a read-only tmpfs that holds only the plain device nodes (null,
    /// zero, full, random, urandom), the terminals and `/dev/shm`, each of which needs at
    /// least these rights. One rule instead of six saves about 4 µs per rule at every start.
    pub device_dirs: Vec<PathBuf>,
    /// Read, write and ioctl on terminal devices.
    pub terminals: Vec<PathBuf>,
    /// Read and write files (procfs).
    pub proc: Vec<PathBuf>,
    /// Refuse every TCP bind and connect (degraded mode with the network off).
    pub deny_tcp: bool,
    /// The only TCP ports the command may bind, or `None` to leave binding alone. Needs ABI 4.
    pub bind_ports: Option<Vec<u16>>,
}

/// The first Landlock ABI with TCP rules.
pub const TCP_ABI: i32 = 4;

/// Asks the kernel for its Landlock ABI version. The landlock crate keeps this query private
/// because it wants rulesets written against a fixed ABI. Palisade needs it to report the layer and
/// to refuse a kernel too old for the policy, so it makes the call itself.
fn query_abi() -> Result<i32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag the kernel reads neither the null attribute pointer nor
    // the zero size.
    let version = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION)
    };
    if version < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOSYS));
    }
    Ok(version as i32)
}

/// Returns the Landlock ABI the running kernel offers, or `None` when Landlock is missing or
/// disabled.
pub fn kernel_abi() -> Option<i32> {
    query_abi().ok().filter(|&abi| abi > 0)
}

/// Explains a missing Landlock, with the fix.
pub fn missing_reason() -> (String, String) {
    match query_abi() {
        Err(libc::EOPNOTSUPP) => (
            "Landlock is built into this kernel but not enabled".into(),
            "add `landlock` to the `lsm=` kernel boot parameter (see /sys/kernel/security/lsm for the current list) and reboot".into(),
        ),
        _ => (
            "this kernel has no Landlock (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK)".into(),
            "run palisade on a kernel with Landlock enabled".into(),
        ),
    }
}

/// Returns the rules that mirror the mount plan.
pub fn rules_for_plan(plan: &MountPlan) -> Rules {
    let mut rules = Rules { list: vec!["/".into()], ..Rules::default() };
    for op in &plan.ops {
        match op {
            MountOp::Proc => rules.proc.push("/proc".into()),
            MountOp::Dev => {
                rules.device_dirs.push("/dev".into());
                rules.terminals.extend(TERMINALS.iter().map(PathBuf::from));
                rules.write.push("/dev/shm".into());
            }
            MountOp::Tmp { path, writable: true, .. } | MountOp::HomeTmpfs { path } | MountOp::Overlay { path, .. } => {
                rules.write.push(path.clone())
            }
            MountOp::Bind { path, writable: true, .. } => rules.write.push(path.clone()),
            MountOp::Tmp { path, writable: false, .. } | MountOp::Bind { path, writable: false, .. } => {
                rules.read.push(path.clone())
            }
            MountOp::File { path, .. } => rules.read.push(path.clone()),
            MountOp::Hide { .. } | MountOp::Protect { .. } | MountOp::Pin { .. } => {}
        }
    }
    rules
}

/// Read and execute rights for the ABI.
fn read_access(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_read(abi)
}

/// Returns every filesystem right of the ABI except device ioctls.
fn write_access(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_all(abi) & !BitFlags::from(AccessFs::IoctlDev)
}

fn device_access(abi: ABI) -> BitFlags<AccessFs> {
    (AccessFs::from_file(abi) & !(AccessFs::Execute | AccessFs::IoctlDev)) | AccessFs::ReadDir
}

/// The protections [`apply`] enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    pub abi: i32,
    pub scoped: bool,
    pub tcp: bool,
}

/// Restricts the calling thread (and everything it executes) to `rules`, with the newest ABI
/// the kernel and this build share. Fails unless the kernel enforced every right asked for, and
/// unless it offers at least `minimum_abi`.
pub fn apply(rules: &Rules, minimum_abi: i32) -> Result<Enforced, String> {
    let Some(kernel) = kernel_abi() else {
        let (cause, fix) = missing_reason();
        return Err(format!("{cause}; {fix}"));
    };
    let minimum_abi = if rules.bind_ports.is_some() { minimum_abi.max(TCP_ABI) } else { minimum_abi };
    if kernel < minimum_abi {
        return Err(format!(
            "this kernel offers Landlock ABI {kernel}, and this policy needs ABI {minimum_abi} or later (Linux 6.2 for ABI 3)"
        ));
    }
    let abi = ABI::from(kernel.min(NEWEST_ABI as i32));
    let scoped = abi >= ABI::V6;
    let tcp = (rules.deny_tcp || rules.bind_ports.is_some()) && abi >= ABI::V4;
    let create = || -> Result<_, landlock::RulesetError> {
        // Every right asked for must be enforced: with a hard requirement the crate fails
        // instead of dropping a right the kernel lacks.
        let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::HardRequirement).handle_access(AccessFs::from_all(abi))?;
        if rules.deny_tcp {
            ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
        } else if rules.bind_ports.is_some() {
            ruleset = ruleset.handle_access(AccessNet::BindTcp)?;
        }
        if scoped {
            ruleset = ruleset.scope(Scope::from_all(abi))?;
        }
        let mut created = ruleset.create()?;
        let groups: [(&Vec<PathBuf>, BitFlags<AccessFs>); 7] = [
            (&rules.read, read_access(abi)),
            (&rules.list, BitFlags::from(AccessFs::ReadDir)),
            (&rules.write, write_access(abi)),
            (&rules.devices, device_access(abi)),
            (&rules.device_dirs, read_access(abi) | device_access(abi)),
            (&rules.terminals, device_access(abi) | AccessFs::IoctlDev),
            (&rules.proc, AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile),
        ];
        for (paths, access) in groups {
            for path in paths {
                // A path that does not exist in this view has nothing to grant.
                let Ok(fd) = PathFd::new(path) else { continue };
                let access = if is_directory(&fd) { access } else { access & AccessFs::from_file(abi) };
                created = created.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        for &port in rules.bind_ports.iter().flatten() {
            created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
        }
        created.restrict_self()
    };
    let status = create().map_err(|error| format!("failed to apply the Landlock rules: {error}"))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!("Landlock enforced only part of the rules ({:?}) on ABI {kernel}", status.ruleset));
    }
    Ok(Enforced { abi: abi as i32, scoped, tcp })
}

/// Returns whether `fd` is a directory. Asking the open descriptor rather than the path saves
/// walking the path a second time.
fn is_directory(fd: &PathFd) -> bool {
    rustix::fs::fstat(fd).map(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Kind;

    #[test]
    fn rules_follow_the_mount_plan() {
        let plan = MountPlan {
            ops: vec![
                MountOp::Proc,
                MountOp::Dev,
                MountOp::Tmp { path: "/tmp".into(), writable: true },
                MountOp::Bind { path: "/usr".into(), kind: Kind::Dir, writable: false, idmap: false },
                MountOp::Bind { path: "/ws".into(), kind: Kind::Dir, writable: true, idmap: false },
                MountOp::Protect { path: "/ws/.git/hooks".into(), kind: Kind::Dir },
            ],
            symlinks: Vec::new(),
            tmp_size: None,
        };
        let rules = rules_for_plan(&plan);
        assert!(rules.read.contains(&PathBuf::from("/usr")));
        assert!(rules.write.contains(&PathBuf::from("/ws")));
        assert!(rules.write.contains(&PathBuf::from("/tmp")));
        assert!(rules.terminals.contains(&PathBuf::from("/dev/pts")));
        assert_eq!(rules.device_dirs, vec![PathBuf::from("/dev")]);
        assert!(!rules.read.contains(&PathBuf::from("/dev")), "/dev has one rule");
        assert!(!rules.devices.contains(&PathBuf::from("/dev/tty")), "only terminals get ioctls");
        assert!(!rules.write.iter().chain(&rules.read).any(|path| path.starts_with("/ws/.git")));
        assert_eq!(rules.list, vec![PathBuf::from("/")]);
    }
}
