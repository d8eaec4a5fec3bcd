//! The Landlock layer: the filesystem policy enforced a second time by the kernel's access
//! control, plus scoping of abstract UNIX sockets and signals.
//!
//! With namespaces, the rules follow the mount plan ([`grant_for`]): what is mounted read-only
//! is granted read and execute, what is mounted writable is granted everything but device
//! ioctls. Landlock cannot take a right away below a directory that has it, so protected and
//! hidden paths inside granted directories rely on the mounts, and Landlock catches a mistake
//! in everything else. Without namespaces (degraded mode) these rules are the filesystem
//! policy (see the `degraded` module).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::plan::MountOp;

/// The newest Landlock ABI this build supports and requests.
pub const NEWEST_ABI: ABI = ABI::V7;

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

/// The access a rule grants beneath the file or directory it is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read files, list directories, execute: a read-only mount.
    Read,
    /// Only list the directory itself and what lies below it (no file reads): the sandbox's
    /// root, which has mounts, the root symlinks and the directories on the way to mount
    /// points, and no file of its own.
    List,
    /// Everything except device ioctls: a writable mount.
    Write,
    /// Read and write device files, no ioctls.
    Device,
    /// `Read` and `Device` together, in one rule: the sandbox's own `/dev`, a read-only tmpfs
    /// that contains only the plain device nodes (null, zero, full, random, urandom), the
    /// terminals and `/dev/shm`, each of which needs at least these rights.
    DeviceDir,
    /// Read, write and ioctl on terminal devices.
    Terminal,
    /// Read and write files (procfs).
    Proc,
}

impl Grant {
    /// Returns the grant's rights that exist in `abi`. Device ioctls are mediated only from
    /// ABI 5: before it, a terminal rule grants reads and writes, and ioctls are not restricted.
    fn access(self, abi: ABI) -> BitFlags<AccessFs> {
        let access = match self {
            Grant::Read => read_access(abi),
            Grant::List => BitFlags::from(AccessFs::ReadDir),
            Grant::Write => write_access(abi),
            Grant::Device => device_access(abi),
            Grant::DeviceDir => read_access(abi) | device_access(abi),
            Grant::Terminal => device_access(abi) | AccessFs::IoctlDev,
            Grant::Proc => AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile,
        };
        access & AccessFs::from_all(abi)
    }
}

/// Returns what the rule on the mount that `op` attaches grants: read for what is mounted
/// read-only, everything but device ioctls for what is mounted writable. `None` for the
/// operations that only mask, protect or pin: Landlock cannot take a right away below a
/// directory that has it, so those rely on their mounts.
///
/// Init makes each rule from the descriptor of the mount it has just attached
/// (`mounts::build_root`), not from its path after the pivot. Landlock ties a rule to the
/// inode, which is the same either way, and the descriptor saves the path walk and palisade's
/// own `stat` of each rule. With time stamps around each part in 100 runs on a 2-CPU VM,
/// opening and inspecting the paths took 60 µs of the 116 µs that 30 rules cost.
pub fn grant_for(op: &MountOp) -> Option<Grant> {
    match op {
        MountOp::Proc => Some(Grant::Proc),
        MountOp::Dev => Some(Grant::DeviceDir),
        MountOp::Tmp { writable: true, .. } | MountOp::HomeTmpfs { .. } | MountOp::Overlay { .. } | MountOp::Bind { writable: true, .. } => {
            Some(Grant::Write)
        }
        MountOp::Tmp { writable: false, .. } | MountOp::Bind { writable: false, .. } | MountOp::File { .. } => Some(Grant::Read),
        MountOp::Hide { .. } | MountOp::Protect { .. } | MountOp::Pin { .. } => None,
    }
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

/// The protections [`Ruleset::enforce`] enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    pub abi: i32,
    pub scoped: bool,
    pub tcp: bool,
}

/// A Landlock ruleset with the newest ABI the kernel and this build share, to which rules are
/// added one by one, and which is then enforced on the calling thread.
pub struct Ruleset {
    created: RulesetCreated,
    kernel: i32,
    abi: ABI,
    enforced: Enforced,
}

/// Creates a ruleset that handles every filesystem right of the ABI, the network rights
/// `rules` needs and, from ABI 6, scoping, with `rules`' ports already allowed. Its path
/// lists are not added (see [`prepare`]). Fails unless the kernel offers at least
/// `minimum_abi` and every right asked for.
pub fn create(rules: &Rules, minimum_abi: i32) -> Result<Ruleset, String> {
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
        let mut ruleset = landlock::Ruleset::default().set_compatibility(CompatLevel::HardRequirement).handle_access(AccessFs::from_all(abi))?;
        // Landlock has TCP rules from ABI 4. Before it, a hard requirement for no TCP rights
        // fails the ruleset, so none are asked for. Degraded mode with the network off then
        // relies on the seccomp filter, which rejects the creation of sockets.
        if rules.deny_tcp && tcp {
            ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
        } else if rules.bind_ports.is_some() {
            ruleset = ruleset.handle_access(AccessNet::BindTcp)?;
        }
        if scoped {
            ruleset = ruleset.scope(Scope::from_all(abi))?;
        }
        let mut created = ruleset.create()?;
        for &port in rules.bind_ports.iter().flatten() {
            created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
        }
        Ok(created)
    };
    let created = create().map_err(|error| format!("failed to apply the Landlock rules: {error}"))?;
    Ok(Ruleset { created, kernel, abi, enforced: Enforced { abi: abi as i32, scoped, tcp } })
}

impl Ruleset {
    /// Adds a rule that grants `grant` beneath what `fd` refers to, or on it alone when it is
    /// not a directory (`is_dir`). A file gets only the file rights of the grant. `path` names
    /// it in an error.
    pub fn grant(&mut self, fd: BorrowedFd<'_>, grant: Grant, is_dir: bool, path: &Path) -> Result<(), String> {
        let access = grant.access(self.abi);
        let access = if is_dir { access } else { access & AccessFs::from_file(self.abi) };
        (&mut self.created)
            .add_rule(PathBeneath::new(fd, access))
            .map(drop)
            .map_err(|error| format!("failed to add the Landlock rule for {}: {error}", path.display()))
    }

    /// Restricts the calling thread, and everything it executes, to the rules added so far.
    /// It enforces a copy of the ruleset's descriptor, so the value stays as it is: the
    /// command stage calls this on init's ruleset, in init's memory.
    pub fn enforce(&self) -> Result<Enforced, String> {
        let copy = self.created.try_clone().map_err(|error| format!("failed to copy the Landlock ruleset: {error}"))?;
        let status = copy.restrict_self().map_err(|error| format!("failed to apply the Landlock rules: {error}"))?;
        if status.ruleset != RulesetStatus::FullyEnforced {
            return Err(format!("Landlock enforced only part of the rules ({:?}) on ABI {}", status.ruleset, self.kernel));
        }
        Ok(self.enforced)
    }
}

/// Creates a ruleset with `rules`, looked up by path in the current view (see [`create`]).
/// Degraded mode, which has no mounts of its own, prepares its ruleset this way before it
/// starts the command, so a failure is reported with its reason, and the command only calls
/// [`Ruleset::enforce`].
pub fn prepare(rules: &Rules, minimum_abi: i32) -> Result<Ruleset, String> {
    let mut ruleset = create(rules, minimum_abi)?;
    let groups: [(&Vec<PathBuf>, Grant); 6] = [
        (&rules.read, Grant::Read),
        (&rules.list, Grant::List),
        (&rules.write, Grant::Write),
        (&rules.devices, Grant::Device),
        (&rules.terminals, Grant::Terminal),
        (&rules.proc, Grant::Proc),
    ];
    for (paths, grant) in groups {
        for path in paths {
            // A path that does not exist in this view has nothing to grant.
            let Ok(fd) = PathFd::new(path) else { continue };
            ruleset.grant(fd.as_fd(), grant, is_directory(&fd), path)?;
        }
    }
    Ok(ruleset)
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
    fn grants_follow_the_mount_plan() {
        let bind = |path: &str, writable| MountOp::Bind { path: path.into(), kind: Kind::Dir, writable, idmap: false };
        assert_eq!(grant_for(&MountOp::Proc), Some(Grant::Proc));
        assert_eq!(grant_for(&MountOp::Dev), Some(Grant::DeviceDir));
        assert_eq!(grant_for(&MountOp::Tmp { path: "/tmp".into(), writable: true }), Some(Grant::Write));
        assert_eq!(grant_for(&MountOp::Tmp { path: "/tmp".into(), writable: false }), Some(Grant::Read));
        assert_eq!(grant_for(&bind("/usr", false)), Some(Grant::Read));
        assert_eq!(grant_for(&bind("/ws", true)), Some(Grant::Write));
        assert_eq!(grant_for(&MountOp::File { path: "/etc/passwd".into(), contents: Vec::new() }), Some(Grant::Read));
        assert_eq!(grant_for(&MountOp::Protect { path: "/ws/.git/hooks".into(), kind: Kind::Dir }), None);
        assert_eq!(grant_for(&MountOp::Hide { path: "/ws/.env".into(), kind: Kind::File }), None);
        assert_eq!(grant_for(&MountOp::Pin { path: "/ws/.git".into() }), None);
    }

    #[test]
    fn grants_keep_to_the_abi() {
        for grant in [Grant::Read, Grant::List, Grant::Write, Grant::Device, Grant::DeviceDir, Grant::Terminal, Grant::Proc] {
            for abi in [ABI::V1, ABI::V2, ABI::V3, ABI::V4, ABI::V5, ABI::V6, NEWEST_ABI] {
                // Every right of a grant is one the ruleset that `create` makes handles.
                let access = grant.access(abi);
                assert_eq!(access & AccessFs::from_all(abi), access, "{grant:?} on {abi:?}");
            }
        }
        assert!(!Grant::Terminal.access(ABI::V4).contains(AccessFs::IoctlDev));
        assert!(Grant::Terminal.access(ABI::V5).contains(AccessFs::IoctlDev));
    }

    #[test]
    fn only_terminals_get_device_ioctls() {
        for grant in [Grant::Read, Grant::List, Grant::Write, Grant::Device, Grant::DeviceDir, Grant::Proc] {
            assert!(!grant.access(NEWEST_ABI).contains(AccessFs::IoctlDev), "{grant:?}");
        }
        assert!(Grant::Terminal.access(NEWEST_ABI).contains(AccessFs::IoctlDev));
        // /dev is read-only and contains only device nodes, so nothing may be created in it.
        let dev = Grant::DeviceDir.access(NEWEST_ABI);
        assert!(dev.contains(AccessFs::WriteFile | AccessFs::ReadFile | AccessFs::ReadDir));
        assert!(!dev.intersects(AccessFs::MakeReg | AccessFs::MakeDir | AccessFs::MakeChar | AccessFs::RemoveFile));
    }
}
