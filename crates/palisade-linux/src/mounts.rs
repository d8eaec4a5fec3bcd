//! Carrying out a [`MountPlan`] inside the sandbox's new mount namespace.
//!
//! Runs in the sandbox's init, before the command exists. The order matters:
//! 1. The whole tree becomes a slave of the host's, so nothing mounted here reaches the host.
//! 2. Every host path the plan binds is opened and cloned into a detached mount *first*, while
//!    the host's paths are still visible. Any symlink on the way is refused
//!    (`RESOLVE_NO_SYMLINKS`), because the resolver already made the paths canonical and a
//!    symlink now means something changed since then.
//! 3. A tmpfs at `/tmp` becomes the new root; the plan's operations attach the detached mounts
//!    and build `/dev`, `/proc` and the private temporary directories, parents first.
//! 4. `pivot_root` swaps the roots, and a child detaches the host's tree while the command
//!    stage confines itself; the stage waits for it before `execve`.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use rustix::fs::{CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags};

use crate::landlock::{Grant, Ruleset};
use crate::plan::{Kind, MountOp, MountPlan};
use crate::sys;

/// Mount point of the new root while it is assembled, before `pivot_root`. Any directory that
/// exists on every host works, because the tmpfs mounted on it is visible only in the
/// sandbox's namespace.
const NEW_ROOT: &str = "/tmp";
/// Scratch space outside the new root: the directories behind `/tmp`, `/var/tmp`, `/dev/shm`
/// and the home tmpfs, the overlay layers and the mask sources. Because they share this one
/// tmpfs, the policy's `tmp_size` bounds all of them together.
///
/// The stage is mounted over the host's `/dev` in the old root, once that directory is open
/// (`open_host_dev`), so its device nodes can still be bound. It then goes away with the old
/// root, which is detached after `pivot_root`, so it needs no detach of its own (each detach
/// waits for an RCU grace period).
const STAGE: &str = "/dev";

/// A failed step, already phrased as "failed to <op> <object>: <cause>".
#[derive(Debug)]
pub struct StepError(pub String);

fn step<T>(op: &str, object: impl AsRef<OsStr>, result: io::Result<T>) -> Result<T, StepError> {
    result.map_err(|error| StepError(format!("failed to {op} {}: {error}", Path::new(object.as_ref()).display())))
}

fn step_rustix<T>(op: &str, object: impl AsRef<OsStr>, result: rustix::io::Result<T>) -> Result<T, StepError> {
    step(op, object, result.map_err(io::Error::from))
}

/// The owner of what the setup creates, and the mapping through which host files appear to the
/// command.
pub struct Owner<'a> {
    /// The uid and gid that own the home tmpfs and overlay roots, as seen by the kernel.
    pub uid: u32,
    pub gid: u32,
    /// A user namespace whose mapping sends the calling root user to the sandbox user; set only
    /// when palisade runs as root, see `Identity`.
    pub idmap: Option<BorrowedFd<'a>>,
    /// Whether setup runs inside a new user namespace (an unprivileged caller).
    pub in_user_namespace: bool,
}

/// Builds the new root from `plan` and pivots into it. Placeholders go only where
/// [`MountPlan::placeholders`] lists them, which is where the supervisor looks for them after
/// the run.
///
/// With `ruleset`, each mount it attaches gets its Landlock rule there, made from the mount's
/// descriptor (see [`crate::landlock::grant_for`]).
///
/// Returns the child that detaches the host's tree, which is still stacked on the new root:
/// nothing of the command may run before [`sys::DetachChild::wait`] succeeds.
pub fn build_root(plan: &MountPlan, owner: &Owner<'_>, mut ruleset: Option<&mut Ruleset>) -> Result<sys::DetachChild, StepError> {
    let mut placeholders = Placeholders::default();
    // Step 1: no mount event from here on propagates back to the host.
    step_rustix(
        "make private",
        "/",
        rustix::mount::mount_change("/", MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC),
    )?;

    // Step 2: clone every host tree the plan binds while host paths are still reachable.
    let mut detached: Vec<Option<OwnedFd>> = Vec::with_capacity(plan.ops.len());
    for op in &plan.ops {
        detached.push(match op {
            MountOp::Bind { path, writable, idmap, .. } => {
                let idmap = if *idmap { owner.idmap } else { None };
                Some(clone_host_tree(path, !*writable, idmap)?)
            }
            MountOp::Overlay { path, idmap, .. } => {
                let idmap = if *idmap { owner.idmap } else { None };
                Some(clone_host_tree(path, true, idmap)?)
            }
            _ => None,
        });
    }
    let host_dev = open_host_dev()?;

    // Step 3: the new root.
    mount_tmpfs(NEW_ROOT, "mode=0755,size=16m", MountFlags::NOSUID | MountFlags::NODEV)?;
    let root = step_rustix(
        "open",
        NEW_ROOT,
        rustix::fs::open(NEW_ROOT, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()),
    )?;
    mount_tmpfs(STAGE, &format!("mode=0700{}", size_options(plan.tmp_size)), MountFlags::NOSUID | MountFlags::NODEV)?;
    let mut stage = Stage { next: 0, cover: None };
    let mut overlays = OverlayHelper::start(plan, &mut detached, owner)?;
    // Read-only temporary directories are mounted writable first, so mount points for deeper
    // operations (a workspace under /tmp) can still be created, and sealed at the end.
    let mut seal_later: Vec<PathBuf> = Vec::new();

    for (op, tree) in plan.ops.iter().zip(detached) {
        if !matches!(op, MountOp::Hide { .. } | MountOp::Protect { .. }) {
            placeholders.forget_parent();
        }
        let grant = crate::landlock::grant_for(op);
        match op {
            MountOp::Proc => {
                attach_proc(&root)?;
                if let Some(ruleset) = ruleset.as_deref_mut() {
                    let proc = new_root_path(Path::new("/proc"));
                    let opened = step_rustix("open", &proc, rustix::fs::open(&proc, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()))?;
                    add_rule(ruleset, &opened, Grant::Proc, true, Path::new("/proc"))?;
                }
            }
            MountOp::Dev => {
                let shm = stage.scratch_dir("shm", 0o1777, None)?;
                attach_dev(&root, &host_dev, owner.in_user_namespace, &shm, ruleset.as_deref_mut())?;
            }
            MountOp::Tmp { path, writable, .. } => {
                let scratch = stage.scratch_dir("tmp", 0o1777, None)?;
                let target = open_target(&root, path, Kind::Dir)?;
                attach(&scratch, &target, path)?;
                add_grant(ruleset.as_deref_mut(), &scratch, grant, true, path)?;
                if !writable {
                    seal_later.push(path.clone());
                }
            }
            MountOp::HomeTmpfs { path } => {
                let scratch = stage.scratch_dir("home", 0o755, Some((owner.uid, owner.gid)))?;
                let target = open_target(&root, path, Kind::Dir)?;
                attach(&scratch, &target, path)?;
                add_grant(ruleset.as_deref_mut(), &scratch, grant, true, path)?;
            }
            MountOp::Bind { path, kind, .. } => {
                let target = open_target(&root, path, *kind)?;
                let tree = tree.as_ref().expect("bind was cloned");
                attach(tree, &target, path)?;
                add_grant(ruleset.as_deref_mut(), tree, grant, *kind == Kind::Dir, path)?;
            }
            MountOp::Overlay { path, .. } => {
                let overlay = overlays.next()?;
                let target = open_target(&root, path, Kind::Dir)?;
                attach(&overlay, &target, path)?;
                add_grant(ruleset.as_deref_mut(), &overlay, grant, true, path)?;
            }
            MountOp::Hide { path, kind } => {
                let Some(target) = target_or_placeholder(&root, path, *kind, owner, &mut placeholders)? else { continue };
                let mask = match kind {
                    Kind::Missing => stage.empty_placeholder_cover()?,
                    Kind::Dir => stage.empty_mask(Kind::Dir)?,
                    Kind::File => stage.empty_mask(Kind::File)?,
                };
                attach(&mask, &target, path)?;
            }
            MountOp::Protect { path, kind } => {
                let Some(target) = target_or_placeholder(&root, path, *kind, owner, &mut placeholders)? else { continue };
                if *kind == Kind::Missing {
                    let mask = stage.empty_placeholder_cover()?;
                    attach(&mask, &target, path)?;
                } else {
                    bind_in_place(&target, path, true)?;
                }
            }
            MountOp::File { path, contents } => {
                let file = stage.file_with(contents)?;
                let target = open_target(&root, path, Kind::File)?;
                attach(&file, &target, path)?;
                add_grant(ruleset.as_deref_mut(), &file, grant, false, path)?;
            }
            MountOp::Pin { path } => {
                let target = open_target(&root, path, Kind::Dir)?;
                bind_in_place(&target, path, false)?;
            }
        }
    }
    for (link, target) in &plan.symlinks {
        let at = new_root_path(link);
        step("create symlink", &at, std::os::unix::fs::symlink(target, &at))?;
    }
    for path in &seal_later {
        let at = new_root_path(path);
        let fd = step_rustix("open", &at, rustix::fs::open(&at, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()))?;
        step("make read-only", path, sys::mount_setattr(fd.as_fd(), false, sys::MOUNT_ATTR_RDONLY, None))?;
    }


    // The root itself may only be listed. Everything below it is reached through a mount with
    // a rule of its own, or is a symlink or a directory on the way to one.
    if let Some(ruleset) = ruleset {
        add_rule(ruleset, &root, Grant::List, true, Path::new("/"))?;
    }

    // Step 4: swap roots. The host's tree, now stacked on the new root, is detached by a
    // child while the command stage confines itself (see `sys::DetachChild`).
    step_rustix("enter", NEW_ROOT, rustix::process::chdir(NEW_ROOT))?;
    step_rustix("pivot root to", NEW_ROOT, rustix::process::pivot_root(".", "."))?;
    let detach = step("start detaching the host root", "/", sys::DetachChild::start())?;
    // The root directory itself is a tmpfs of palisade's; nothing may be created in it. `root`
    // is that tmpfs, opened before the pivot.
    step("make read-only", "/", sys::mount_setattr(root.as_fd(), false, sys::MOUNT_ATTR_RDONLY, None))?;
    Ok(detach)
}

/// Adds the Landlock rule that `grant` names for the mount `tree`, attached at `path`, when
/// there is a ruleset to fill.
fn add_grant(ruleset: Option<&mut Ruleset>, tree: &OwnedFd, grant: Option<Grant>, is_dir: bool, path: &Path) -> Result<(), StepError> {
    match (ruleset, grant) {
        (Some(ruleset), Some(grant)) => add_rule(ruleset, tree, grant, is_dir, path),
        _ => Ok(()),
    }
}

fn add_rule(ruleset: &mut Ruleset, fd: &OwnedFd, grant: Grant, is_dir: bool, path: &Path) -> Result<(), StepError> {
    ruleset.grant(fd.as_fd(), grant, is_dir, path).map_err(StepError)
}

/// Returns `path` as seen from the new root before the pivot.
fn new_root_path(path: &Path) -> PathBuf {
    Path::new(NEW_ROOT).join(path.strip_prefix("/").unwrap_or(path))
}

fn mount_tmpfs(target: &str, options: &str, flags: MountFlags) -> Result<(), StepError> {
    let options = std::ffi::CString::new(options).expect("mount options contain no NUL");
    step_rustix(
        "mount tmpfs on",
        target,
        rustix::mount::mount("tmpfs", target, "tmpfs", flags, Some(options.as_c_str())),
    )
}

/// Opens a host path without following any symlink and clones its mount tree into a detached
/// mount, read-only and without setuid or device files, idmapped when `idmap` is given.
fn clone_host_tree(path: &Path, read_only: bool, idmap: Option<BorrowedFd<'_>>) -> Result<OwnedFd, StepError> {
    let source = step_rustix(
        "open",
        path,
        rustix::fs::openat2(CWD, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS),
    )?;
    let tree = step_rustix(
        "clone the mount tree of",
        path,
        rustix::mount::open_tree(
            source.as_fd(),
            "",
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH | OpenTreeFlags::AT_RECURSIVE,
        ),
    )?;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    step("restrict", path, sys::mount_setattr(tree.as_fd(), true, attrs, None))?;
    if let Some(userns) = idmap {
        step(
            "idmap",
            path,
            sys::mount_setattr(tree.as_fd(), true, sys::MOUNT_ATTR_IDMAP, Some(userns)),
        )?;
    }
    Ok(tree)
}

/// The device nodes a sandbox gets, with their device numbers (the kernel's list of them is
/// `Documentation/admin-guide/devices.txt`).
const DEV_NODES: [(&str, u32, u32); 6] = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Opens the host's `/dev`, which the stage tmpfs covers later, so its nodes can still be
/// bound from it.
fn open_host_dev() -> Result<OwnedFd, StepError> {
    let opened = rustix::fs::openat2(CWD, "/dev", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::NO_SYMLINKS);
    step_rustix("open", "/dev", opened)
}

/// Puts device node `name` into the sandbox's `/dev` (`dev_fd`, at `dev`). Outside a user
/// namespace it is created with `mknod`, one system call instead of the five of a bind
/// (measured together with another change in docs/benchmarks.md). The caller clears the
/// umask first. Where that fails (no `CAP_MKNOD` in the host's first user namespace, or a
/// device cgroup that forbids it), and always inside a user namespace, whose tmpfs cannot
/// hold usable nodes, the host's node is bound. A node the host lacks is then left out.
fn add_dev_node(dev_fd: &OwnedFd, dev: &Path, host_dev: &OwnedFd, (name, major, minor): (&str, u32, u32), in_user_namespace: bool) -> Result<(), StepError> {
    let path = dev.join(name);
    if !in_user_namespace
        && rustix::fs::mknodat(dev_fd, name, FileType::CharacterDevice, Mode::from_raw_mode(0o666), rustix::fs::makedev(major, minor)).is_ok()
    {
        return Ok(());
    }
    let host_path = Path::new("/dev").join(name);
    let source = match rustix::fs::openat2(host_dev, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH) {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        opened => step_rustix("open", &host_path, opened)?,
    };
    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH;
    let tree = step_rustix("clone", &host_path, rustix::mount::open_tree(source.as_fd(), "", flags))?;
    // Device nodes must keep working, so only nosuid is added here.
    step("restrict", &host_path, sys::mount_setattr(tree.as_fd(), false, sys::MOUNT_ATTR_NOSUID, None))?;
    // The new file's descriptor is the mount point.
    let file = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let target = step_rustix("create mount point", &path, rustix::fs::openat(dev_fd, name, file, Mode::from_raw_mode(0o444)))?;
    attach(&tree, &target, &path)
}

/// Opens `path` inside the new root for use as a mount point, creating missing parents and the
/// final component (a directory, or an empty file for a file bind) on palisade's own tmpfs.
/// No symlink is followed, so nothing planted in a bound directory can redirect a mount.
fn open_target(root: &OwnedFd, path: &Path, kind: Kind) -> Result<OwnedFd, StepError> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
    let components: Vec<&OsStr> = relative
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    // A deeper target often exists already (inside a bound directory): one lookup of the whole
    // path, with the same restrictions as the walk below, saves opening each directory on the way.
    if components.len() > 1 {
        match rustix::fs::openat2(root, relative, flags, Mode::empty(), resolve) {
            Ok(target) => return Ok(target),
            Err(rustix::io::Errno::NOENT) => {}
            Err(error) => return step_rustix("open mount point", path, Err(error)),
        }
    }
    let mut current: Option<OwnedFd> = None;
    // Below a directory created here, nothing exists yet, so the lookup is skipped.
    let mut created = false;
    for (index, part) in components.iter().enumerate() {
        let last = index + 1 == components.len();
        let dir = current.as_ref().unwrap_or(root);
        let lookup = if created { Err(rustix::io::Errno::NOENT) } else { rustix::fs::openat2(dir, *part, flags, Mode::empty(), resolve) };
        let next = match lookup {
            Ok(next) => next,
            Err(rustix::io::Errno::NOENT) => {
                created = true;
                if last && kind == Kind::File {
                    let file = step_rustix(
                        "create mount point",
                        path,
                        rustix::fs::openat(dir, *part, OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::EXCL, Mode::from_raw_mode(0o444)),
                    )?;
                    drop(file);
                } else {
                    step_rustix("create mount point", path, rustix::fs::mkdirat(dir, *part, Mode::from_raw_mode(0o755)))?;
                }
                step_rustix("open", path, rustix::fs::openat2(dir, *part, flags, Mode::empty(), resolve))?
            }
            Err(error) => return step_rustix("open mount point", path, Err(error)),
        };
        current = Some(next);
    }
    match current {
        Some(target) => Ok(target),
        // No components: the path is the new root itself.
        None => step_rustix("open", NEW_ROOT, rustix::fs::openat(root, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())),
    }
}

/// Opens an existing path in the new root, or creates a placeholder for a missing one. The
/// placeholder lands on the host (the path is inside a writable root), and the supervisor
/// removes it after the run.
///
/// The placeholder is a FIFO with mode 000, covered inside the sandbox by another one. A FIFO
/// needs no data block, so it costs about a third of a directory to create and remove on ext4
/// (measured on one VM). It blocks `mkdir` and `open(O_CREAT)` at that name and anything below
/// it. Git ignores FIFOs, so `git status` and `git add -A` in the sandbox neither list nor fail
/// on it.
fn target_or_placeholder(
    root: &OwnedFd,
    path: &Path,
    kind: Kind,
    owner: &Owner<'_>,
    placeholders: &mut Placeholders,
) -> Result<Option<OwnedFd>, StepError> {
    if kind != Kind::Missing {
        return open_target(root, path, kind).map(Some);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| StepError(format!("cannot protect {}: no file name", path.display())))?;
    let relative_parent = parent.strip_prefix("/").unwrap_or(parent);
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
    let parent_fd = match placeholders.take_parent(parent) {
        Some(fd) => fd,
        None => match rustix::fs::openat2(root, relative_parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Ok(fd) => fd,
            // The parent does not exist either (for example .git/hooks without .git). Creating
            // the whole chain on the host would leave more behind than one placeholder.
            // A protected name under a missing parent can therefore still be created by the
            // command. The common case, a repository created with `git init` in a writable
            // root, is neutralised after the run (see `scrub`).
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(error) => return step_rustix("open", parent, Err(error)),
        },
    };
    let open = || rustix::fs::openat2(&parent_fd, name, OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty(), resolve);
    // Usually the supervisor has created the placeholder already (see
    // `create_placeholders_on_host`). An entry found here may also have been created since
    // planning, or left by a run that was killed before cleaning up. A stale placeholder is
    // adopted and removed after the run like a new one. Anything else is protected as it is.
    let placeholder = match open() {
        Ok(existing) => existing,
        Err(rustix::io::Errno::NOENT) => {
            // Created as the sandbox user: on an idmapped writable root only that user maps to
            // a host owner, and the placeholder then belongs to the workspace's owner on the host.
            let previous = sys::set_fs_ids(owner.uid, owner.gid);
            let created = placeholders.create(&parent_fd, name);
            sys::set_fs_ids(previous.0, previous.1);
            match created {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(error) => return step_rustix("create placeholder", path, Err(error)),
            }
            step_rustix("open placeholder", path, open())?
        }
        Err(error) => return step_rustix("open placeholder", path, Err(error)),
    };
    placeholders.keep_parent(parent, parent_fd);
    Ok(Some(placeholder))
}

/// The placeholders created so far in this run.
#[derive(Default)]
struct Placeholders {
    /// The first one, opened before anything covers it; later ones link to its inode.
    first: Option<OwnedFd>,
    /// The directory the last placeholder went into, kept for the next one there (a workspace
    /// gets about ten). Between two uses only names inside it get mounts: operations run parents
    /// first, so none mounts on the directory itself, and every other kind drops it.
    parent: Option<(PathBuf, OwnedFd)>,
}

impl Placeholders {
    fn take_parent(&mut self, dir: &Path) -> Option<OwnedFd> {
        match self.parent.take() {
            Some((kept, fd)) if kept == dir => Some(fd),
            _ => None,
        }
    }

    fn keep_parent(&mut self, dir: &Path, fd: OwnedFd) {
        self.parent = Some((dir.to_path_buf(), fd));
    }

    /// Drops the kept directory, before an operation that may mount on it.
    fn forget_parent(&mut self) {
        self.parent = None;
    }

    /// Creates a placeholder FIFO at `name` in `dir`. After the first, each is a hard link to
    /// the first: ext4 allocates a new inode slowly after recent deletions (it skips recently
    /// freed inodes), and every run deletes its placeholders. The link goes through the first
    /// one's descriptor, because its name is covered by a mount by then. A link to another
    /// filesystem fails with EXDEV and falls back to a new FIFO.
    fn create(&mut self, dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<()> {
        if let Some(first) = &self.first {
            let source = format!("/proc/self/fd/{}", first.as_raw_fd());
            match rustix::fs::linkat(CWD, source.as_str(), dir, name, rustix::fs::AtFlags::SYMLINK_FOLLOW) {
                Err(rustix::io::Errno::XDEV) => {}
                other => return other,
            }
        }
        rustix::fs::mknodat(dir, name, FileType::Fifo, Mode::empty(), 0)?;
        if self.first.is_none() {
            let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
            self.first = Some(rustix::fs::openat2(dir, name, OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty(), resolve)?);
        }
        Ok(())
    }
}

/// Creates the placeholders of `plan` on the host, as the caller, before init reaches them.
/// The supervisor calls this just before the go byte, while init prepares itself, so init
/// usually only opens and covers each one. Init creates any placeholder still missing. An
/// entry already at a name (`EEXIST`: a stale placeholder, another run's, or the user's) is
/// left as it is, and init covers whatever it finds there. A failure here only leaves the
/// work to init.
///
/// With `as_root`, a placeholder is created only in a directory that root owns and may write
/// to as owner: init creates it as the sandbox user through the idmapped mount, where the
/// owner's rights are all that user has. Elsewhere init makes the attempt, and a directory it
/// cannot write stops the run as before, instead of getting root's placeholders.
///
/// Each parent is opened from the host's root without following any symlink: plan paths are
/// canonical, so a symlink on the way was planted in a writable root. A missing parent is
/// skipped, as init skips it.
pub fn create_placeholders_on_host(plan: &MountPlan, as_root: bool) {
    let mut first: Option<(Rc<OwnedFd>, &OsStr)> = None;
    // The placeholders of one directory usually follow each other in the plan, so its
    // descriptor, and whether placeholders go there, are kept for the next.
    let mut current: Option<(&Path, Option<Rc<OwnedFd>>)> = None;
    for path in plan.placeholders() {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
        if current.as_ref().is_none_or(|(open, _)| *open != parent) {
            let dir = open_host_dir(parent).ok().filter(|dir| {
                !as_root || rustix::fs::fstat(dir).is_ok_and(|stat| stat.st_uid == 0 && stat.st_mode & 0o200 != 0)
            });
            current = Some((parent, dir.map(Rc::new)));
        }
        let Some((_, Some(dir))) = &current else { continue };
        // After the first, each is a hard link to it, as in `Placeholders::create`.
        if let Some((first_dir, first_name)) = &first {
            match rustix::fs::linkat(&**first_dir, *first_name, &**dir, name, rustix::fs::AtFlags::empty()) {
                Err(rustix::io::Errno::XDEV) => {}
                _ => continue,
            }
        }
        if rustix::fs::mknodat(&**dir, name, FileType::Fifo, Mode::empty(), 0).is_ok() && first.is_none() {
            first = Some((Rc::clone(dir), name));
        }
    }
}

/// Opens a host directory without following any symlink on the way (see
/// [`create_placeholders_on_host`]).
pub fn open_host_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(CWD, path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::NO_SYMLINKS)
}

/// Attaches a detached mount on top of `target`.
fn attach(tree: &OwnedFd, target: &OwnedFd, path: &Path) -> Result<(), StepError> {
    step_rustix(
        "mount on",
        path,
        rustix::mount::move_mount(tree.as_fd(), "", target.as_fd(), "", MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH),
    )
}

/// Binds a path onto itself, read-only when `read_only`. Either way it becomes a mount point,
/// which cannot be renamed, removed or replaced.
fn bind_in_place(target: &OwnedFd, path: &Path, read_only: bool) -> Result<(), StepError> {
    let tree = step_rustix(
        "clone",
        path,
        rustix::mount::open_tree(target.as_fd(), "", OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH | OpenTreeFlags::AT_RECURSIVE),
    )?;
    if read_only {
        step("make read-only", path, sys::mount_setattr(tree.as_fd(), true, sys::MOUNT_ATTR_RDONLY, None))?;
    }
    attach(&tree, target, path)
}

fn attach_proc(root: &OwnedFd) -> Result<(), StepError> {
    let _ = open_target(root, Path::new("/proc"), Kind::Dir)?;
    step_rustix(
        "mount proc on",
        "/proc",
        rustix::mount::mount("proc", new_root_path(Path::new("/proc")), "proc", MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC, None),
    )
}

fn attach_dev(root: &OwnedFd, host_dev: &OwnedFd, in_user_namespace: bool, shm: &OwnedFd, mut ruleset: Option<&mut Ruleset>) -> Result<(), StepError> {
    let _ = open_target(root, Path::new("/dev"), Kind::Dir)?;
    let dev = new_root_path(Path::new("/dev"));
    let dev_text = dev.to_string_lossy().into_owned();
    mount_tmpfs(&dev_text, "mode=0755,size=64k", MountFlags::NOSUID | MountFlags::NOEXEC)?;
    // Everything below is created in this new, empty tmpfs, which no other process can reach
    // yet, so names are created and used through this descriptor without a walk from the root.
    let dev_fd = step_rustix("open", &dev, rustix::fs::open(&dev, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()))?;
    // With no umask, `mknod` creates each node with exactly its mode, which saves a `chmod`
    // per node. Init's own umask, which the command inherits, comes back at once.
    let umask = rustix::process::umask(Mode::empty());
    let added = DEV_NODES.into_iter().try_for_each(|node| add_dev_node(&dev_fd, &dev, host_dev, node, in_user_namespace));
    rustix::process::umask(umask);
    added?;
    for dir in ["pts", "shm"] {
        step_rustix("create", dev.join(dir), rustix::fs::mkdirat(&dev_fd, dir, Mode::from_raw_mode(0o755)))?;
    }
    let pts_options = c"newinstance,ptmxmode=0666,mode=0620";
    step_rustix(
        "mount devpts on",
        dev.join("pts"),
        rustix::mount::mount("devpts", dev.join("pts"), "devpts", MountFlags::NOSUID | MountFlags::NOEXEC, Some(pts_options)),
    )?;
    let shm_target = step_rustix(
        "open",
        dev.join("shm"),
        rustix::fs::openat(&dev_fd, "shm", OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()),
    )?;
    attach(shm, &shm_target, &dev.join("shm"))?;
    if let Some(ruleset) = ruleset.as_deref_mut() {
        add_rule(ruleset, &dev_fd, Grant::DeviceDir, true, Path::new("/dev"))?;
        add_rule(ruleset, shm, Grant::Write, true, Path::new("/dev/shm"))?;
        // The terminals: the controlling terminal's node, the pseudo-terminals and their
        // multiplexer, which /dev/ptmx links to.
        for (name, is_dir) in [("tty", false), ("pts", true), ("pts/ptmx", false)] {
            let path = Path::new("/dev").join(name);
            match rustix::fs::openat(&dev_fd, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
                // A node the host lacks was left out, and has nothing to grant.
                Err(rustix::io::Errno::NOENT) => {}
                opened => add_rule(ruleset, &step_rustix("open", &path, opened)?, Grant::Terminal, is_dir, &path)?,
            }
        }
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step_rustix("create symlink", dev.join(link), rustix::fs::symlinkat(target, &dev_fd, link))?;
    }
    step("make read-only", &dev, sys::mount_setattr(dev_fd.as_fd(), false, sys::MOUNT_ATTR_RDONLY, None))
}

/// Returns the tmpfs options that bound the stage to `size` bytes and to one inode per 8 KiB
/// of it (at least 4096), so that empty files cannot use up kernel memory that no size limit
/// counts. Empty without a size: the kernel's default of half the memory.
fn size_options(size: Option<u64>) -> String {
    match size {
        Some(bytes) => format!(",size={bytes},nr_inodes={}", (bytes / 8192).max(4096)),
        None => String::new(),
    }
}

/// Scratch directories and mask sources on the stage tmpfs.
struct Stage {
    next: usize,
    /// The first placeholder cover, which later covers are cloned from.
    cover: Option<OwnedFd>,
}

impl Stage {
    fn fresh_dir(&mut self, label: &str) -> Result<PathBuf, StepError> {
        self.next += 1;
        let path = Path::new(STAGE).join(format!("{label}{}", self.next));
        step("create", &path, fs::create_dir(&path))?;
        Ok(path)
    }

    /// Returns a detached, read-only mount of a FIFO with mode 000, to cover a placeholder. Git
    /// and most tree walkers skip FIFOs, and no process without capabilities can open it.
    ///
    /// The first cover is made from a new FIFO; later ones are clones of it, which keep its
    /// read-only, nosuid and nodev flags. The clones come from the first cover's mount after
    /// it was attached: closing a detached mount that was never attached would unmount it,
    /// which waits for an RCU grace period.
    fn empty_placeholder_cover(&mut self) -> Result<OwnedFd, StepError> {
        if let Some(first) = &self.cover {
            return step_rustix(
                "clone",
                "the placeholder cover",
                rustix::mount::open_tree(first.as_fd(), "", OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH),
            );
        }
        self.next += 1;
        let path = Path::new(STAGE).join(format!("cover{}", self.next));
        step_rustix("create", &path, rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::empty(), 0))?;
        let cover = self.read_only_clone(&path)?;
        self.cover = Some(step("keep", &path, cover.try_clone())?);
        Ok(cover)
    }

    /// Returns a detached, writable, nosuid and nodev mount of a new stage directory with
    /// `mode`, owned by `owner` if given: the backing of a temporary directory of the sandbox.
    fn scratch_dir(&mut self, label: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<OwnedFd, StepError> {
        let path = self.fresh_dir(label)?;
        // chmod, not the mode of mkdir, which the umask would narrow.
        step_rustix("set mode of", &path, rustix::fs::chmod(&path, Mode::from_raw_mode(mode)))?;
        if let Some((uid, gid)) = owner {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            step_rustix("set owner of", &path, rustix::fs::chown(&path, Some(uid), Some(gid)))?;
        }
        let source = step_rustix("open", &path, rustix::fs::open(&path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()))?;
        let tree = step_rustix(
            "clone",
            &path,
            rustix::mount::open_tree(source.as_fd(), "", OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH),
        )?;
        step("restrict", &path, sys::mount_setattr(tree.as_fd(), false, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV, None))?;
        Ok(tree)
    }

    /// Returns a detached, read-only mount of a new stage file with `contents`, readable by all.
    fn file_with(&mut self, contents: &[u8]) -> Result<OwnedFd, StepError> {
        self.next += 1;
        let path = Path::new(STAGE).join(format!("file{}", self.next));
        step("write", &path, fs::write(&path, contents))?;
        step_rustix("set mode of", &path, rustix::fs::chmod(&path, Mode::from_raw_mode(0o644)))?;
        self.read_only_clone(&path)
    }

    /// Returns a detached, read-only mount of an empty file or directory with mode 000, which
    /// no process without capabilities can open, its owner included.
    fn empty_mask(&mut self, kind: Kind) -> Result<OwnedFd, StepError> {
        self.next += 1;
        let path = Path::new(STAGE).join(format!("mask{}", self.next));
        match kind {
            Kind::File => step("create", &path, fs::File::create(&path).map(drop))?,
            _ => step("create", &path, fs::create_dir(&path))?,
        }
        step_rustix("restrict", &path, rustix::fs::chmod(&path, Mode::empty()))?;
        self.read_only_clone(&path)
    }

    /// Clones a stage entry into a detached mount that is read-only, nosuid and nodev.
    fn read_only_clone(&self, path: &Path) -> Result<OwnedFd, StepError> {
        let source = step_rustix("open", path, rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()))?;
        let tree = step_rustix(
            "clone",
            path,
            rustix::mount::open_tree(source.as_fd(), "", OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH),
        )?;
        step(
            "make read-only",
            path,
            sys::mount_setattr(tree.as_fd(), false, sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV, None),
        )?;
        Ok(tree)
    }
}

/// The copy-on-write layers of a plan, built by a helper child on another CPU while init works
/// through the operations before them. Each overlay is mounted on a directory of the stage
/// tmpfs and moved to its place when init reaches its operation. Mounting an overlay is one of
/// the slowest steps of the root, most of it in the kernel's checks of the upper filesystem
/// (docs/benchmarks.md). A thread would have been simpler, but starting one cost init about
/// as much as the overlays.
///
/// The child shares init's memory, so it follows [`sys::HelperChild`]'s rules: everything it
/// needs, paths and mount options included, is prepared here, and it only makes system calls
/// and stores its results in the jobs' atomics.
struct OverlayHelper {
    child: Option<sys::HelperChild<OverlayJobs>>,
    built: Option<OverlayJobs>,
    next: usize,
}

/// The overlays the helper child builds, in plan order.
struct OverlayJobs {
    jobs: Vec<OverlayJob>,
}

/// One overlay for the helper child, and its result.
struct OverlayJob {
    path: PathBuf,
    /// The host tree, taken when init has the result.
    lower_tree: Option<OwnedFd>,
    lower: CString,
    upper: CString,
    work: CString,
    merged: CString,
    /// Directories under the upper layer that the whiteouts need, parents first, each with its
    /// counterpart in the lower layer.
    whiteout_dirs: Vec<(CString, CString)>,
    whiteouts: Vec<CString>,
    options: CString,
    owner: (u32, u32),
    /// The merged root's descriptor, the negated errno of the step that failed, or
    /// [`sys::NO_RESULT`].
    result: AtomicI32,
    /// The step that failed, as an [`OverlayStep`].
    failed_step: AtomicUsize,
}

impl Drop for OverlayJob {
    fn drop(&mut self) {
        // A merged root that was built but not taken, after an error elsewhere.
        drop(sys::take_shared_fd(&self.result));
    }
}

/// The steps of building an overlay that can fail.
#[derive(Clone, Copy)]
enum OverlayStep {
    CreateLower,
    AttachLower,
    CreateUpper,
    CreateWork,
    CreateMerged,
    InspectLower,
    PrepareUpper,
    CreateWhiteoutDir,
    InspectWhiteoutDir,
    PrepareWhiteoutDir,
    CreateWhiteout,
    Mount,
    OpenMerged,
}

const OVERLAY_STEPS: [OverlayStep; 13] = [
    OverlayStep::CreateLower,
    OverlayStep::AttachLower,
    OverlayStep::CreateUpper,
    OverlayStep::CreateWork,
    OverlayStep::CreateMerged,
    OverlayStep::InspectLower,
    OverlayStep::PrepareUpper,
    OverlayStep::CreateWhiteoutDir,
    OverlayStep::InspectWhiteoutDir,
    OverlayStep::PrepareWhiteoutDir,
    OverlayStep::CreateWhiteout,
    OverlayStep::Mount,
    OverlayStep::OpenMerged,
];

impl OverlayStep {
    /// Returns the operation and object of the error message: "failed to <op> <object>".
    fn describe(self, job: &OverlayJob) -> (&'static str, &OsStr) {
        fn c(path: &CString) -> &OsStr {
            OsStr::from_bytes(path.as_bytes())
        }
        match self {
            OverlayStep::CreateLower => ("create", c(&job.lower)),
            OverlayStep::AttachLower => ("attach the host tree on", c(&job.lower)),
            OverlayStep::CreateUpper => ("create", c(&job.upper)),
            OverlayStep::CreateWork => ("create", c(&job.work)),
            OverlayStep::CreateMerged => ("create", c(&job.merged)),
            OverlayStep::InspectLower => ("inspect", c(&job.lower)),
            OverlayStep::PrepareUpper => ("set the owner and mode of", c(&job.upper)),
            OverlayStep::CreateWhiteoutDir => ("create a directory for whiteouts in", c(&job.upper)),
            OverlayStep::InspectWhiteoutDir => ("inspect a directory above a hidden entry in", c(&job.lower)),
            OverlayStep::PrepareWhiteoutDir => ("set the owner and mode of a directory for whiteouts in", c(&job.upper)),
            OverlayStep::CreateWhiteout => ("create a whiteout in", c(&job.upper)),
            OverlayStep::Mount => ("mount a copy-on-write layer on", job.path.as_os_str()),
            OverlayStep::OpenMerged => ("open", c(&job.merged)),
        }
    }
}

impl OverlayHelper {
    /// Prepares a job for each overlay of `plan`, with its lower tree taken from `detached`, and
    /// starts the child. Without overlays no child starts. The stage tmpfs must be mounted.
    fn start(plan: &MountPlan, detached: &mut [Option<OwnedFd>], owner: &Owner<'_>) -> Result<OverlayHelper, StepError> {
        let c_path = |path: &Path| CString::new(path.as_os_str().as_bytes()).map_err(|_| StepError(format!("invalid path (contains a NUL byte): {}", path.display())));
        let mut jobs = Vec::new();
        for (op, tree) in plan.ops.iter().zip(detached.iter_mut()) {
            let MountOp::Overlay { path, hidden, .. } = op else { continue };
            let index = jobs.len();
            let dir = |label: &str| Path::new(STAGE).join(format!("overlay{index}-{label}"));
            let (lower, upper, work, merged) = (dir("lower"), dir("upper"), dir("work"), dir("merged"));
            let mut whiteout_dirs: Vec<&Path> = Vec::new();
            for relative in hidden {
                let ancestors: Vec<&Path> = relative.ancestors().skip(1).filter(|ancestor| !ancestor.as_os_str().is_empty()).collect();
                for ancestor in ancestors.into_iter().rev() {
                    if !whiteout_dirs.contains(&ancestor) {
                        whiteout_dirs.push(ancestor);
                    }
                }
            }
            // Inside a user namespace overlayfs needs `userxattr`, which it refuses outside one.
            let options = format!(
                "lowerdir={},upperdir={},workdir={}{}",
                escape_overlay(&lower),
                escape_overlay(&upper),
                escape_overlay(&work),
                if owner.in_user_namespace { ",userxattr" } else { "" }
            );
            jobs.push(OverlayJob {
                path: path.clone(),
                lower_tree: Some(tree.take().expect("overlay lower was cloned")),
                lower: c_path(&lower)?,
                upper: c_path(&upper)?,
                work: c_path(&work)?,
                merged: c_path(&merged)?,
                whiteout_dirs: whiteout_dirs.iter().map(|dir| Ok((c_path(&upper.join(dir))?, c_path(&lower.join(dir))?))).collect::<Result<_, _>>()?,
                whiteouts: hidden.iter().map(|relative| c_path(&upper.join(relative))).collect::<Result<_, _>>()?,
                options: CString::new(options).map_err(|_| StepError(format!("invalid path (contains a NUL byte): {}", path.display())))?,
                owner: (owner.uid, owner.gid),
                result: AtomicI32::new(sys::NO_RESULT),
                failed_step: AtomicUsize::new(0),
            });
        }
        if jobs.is_empty() {
            return Ok(OverlayHelper { child: None, built: Some(OverlayJobs { jobs }), next: 0 });
        }
        // SAFETY: `build_overlays` uses no heap and no thread-local state, and makes its
        // system calls through rustix. It contains no indexing, unwrapping or formatting that
        // could panic, and writes only the jobs' atomics.
        let child = unsafe { sys::HelperChild::start(OverlayJobs { jobs }, build_overlays) };
        let child = step("start", "the child building the copy-on-write layers", child)?;
        Ok(OverlayHelper { child: Some(child), built: None, next: 0 })
    }

    /// Returns the next overlay's merged root, in plan order, waiting for the child the first
    /// time.
    fn next(&mut self) -> Result<OwnedFd, StepError> {
        if let Some(child) = self.child.take() {
            let mut built = child.finish();
            // The host trees are attached under the stage now; their descriptors can go.
            for job in &mut built.jobs {
                job.lower_tree = None;
            }
            self.built = Some(built);
        }
        let job = self.built.as_ref().and_then(|built| built.jobs.get(self.next));
        let job = job.ok_or_else(|| StepError("a copy-on-write layer was not planned".into()))?;
        self.next += 1;
        match sys::take_shared_fd(&job.result) {
            Ok(merged) => Ok(merged),
            Err(sys::NO_RESULT) => Err(StepError(format!(
                "failed to build the copy-on-write layer for {}: the child building it ended without a result",
                job.path.display()
            ))),
            Err(negated) => {
                let failed = OVERLAY_STEPS.get(job.failed_step.load(Ordering::Relaxed)).copied().unwrap_or(OverlayStep::Mount);
                let (op, object) = failed.describe(job);
                step(op, object, Err(io::Error::from_raw_os_error(-negated)))
            }
        }
    }
}

/// The helper child's work: builds each overlay in order and stops at the first failure.
fn build_overlays(jobs: &OverlayJobs) {
    for job in &jobs.jobs {
        match build_overlay(job) {
            Ok(merged) => job.result.store(std::os::fd::IntoRawFd::into_raw_fd(merged), Ordering::Release),
            Err((step, errno)) => {
                job.failed_step.store(step as usize, Ordering::Relaxed);
                job.result.store(-errno.raw_os_error(), Ordering::Release);
                return;
            }
        }
    }
}

/// Builds one overlay on the stage tmpfs: the host tree as its only lower layer, an upper
/// layer with a whiteout for each hidden entry (overlayfs shows them as absent), and the
/// merged root mounted on a stage directory. Returns that root, or the step that failed.
///
/// Runs in the helper child, so it uses no heap, no errno and nothing that panics. The only
/// descriptor it keeps is the merged root it returns.
fn build_overlay(job: &OverlayJob) -> Result<OwnedFd, (OverlayStep, rustix::io::Errno)> {
    let at = |step: OverlayStep| move |errno: rustix::io::Errno| (step, errno);
    let dir_mode = Mode::from_raw_mode(0o777);
    let Some(lower_tree) = &job.lower_tree else { return Err((OverlayStep::AttachLower, rustix::io::Errno::BADF)) };
    rustix::fs::mkdirat(CWD, job.lower.as_c_str(), dir_mode).map_err(at(OverlayStep::CreateLower))?;
    rustix::mount::move_mount(lower_tree, c"", CWD, job.lower.as_c_str(), MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).map_err(at(OverlayStep::AttachLower))?;
    rustix::fs::mkdirat(CWD, job.upper.as_c_str(), dir_mode).map_err(at(OverlayStep::CreateUpper))?;
    rustix::fs::mkdirat(CWD, job.work.as_c_str(), dir_mode).map_err(at(OverlayStep::CreateWork))?;
    rustix::fs::mkdirat(CWD, job.merged.as_c_str(), dir_mode).map_err(at(OverlayStep::CreateMerged))?;
    // The merged root takes its owner and mode from the upper directory.
    let lower_mode = rustix::fs::stat(job.lower.as_c_str()).map_err(at(OverlayStep::InspectLower))?.st_mode & 0o7777;
    let (uid, gid) = (rustix::fs::Uid::from_raw(job.owner.0), rustix::fs::Gid::from_raw(job.owner.1));
    rustix::fs::chown(job.upper.as_c_str(), Some(uid), Some(gid)).map_err(at(OverlayStep::PrepareUpper))?;
    rustix::fs::chmod(job.upper.as_c_str(), Mode::from_raw_mode(lower_mode)).map_err(at(OverlayStep::PrepareUpper))?;
    for (dir, below) in &job.whiteout_dirs {
        match rustix::fs::mkdirat(CWD, dir.as_c_str(), dir_mode) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(errno) => return Err((OverlayStep::CreateWhiteoutDir, errno)),
        }
        prepare_whiteout_dir(dir, below, (uid, gid))?;
    }
    for whiteout in &job.whiteouts {
        rustix::fs::mknodat(CWD, whiteout.as_c_str(), FileType::CharacterDevice, Mode::empty(), 0).map_err(at(OverlayStep::CreateWhiteout))?;
    }
    // NOTE: copying up an entry whose owner has no mapping in the sandbox (a file in the
    // cache owned by another user or group) fails with EOVERFLOW. Writing to such an entry
    // then fails inside the sandbox, and the host's cache is not affected either way.
    let flags = MountFlags::NOSUID | MountFlags::NODEV;
    rustix::mount::mount(c"overlay", job.merged.as_c_str(), c"overlay", flags, Some(job.options.as_c_str())).map_err(at(OverlayStep::Mount))?;
    rustix::fs::open(job.merged.as_c_str(), OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(at(OverlayStep::OpenMerged))
}

/// Gives a directory of the upper layer the owner and mode of its counterpart `below`, as
/// overlayfs does when it copies a directory up: the upper one hides the lower one's
/// attributes. Without this, the command could not write next to a hidden entry in a
/// directory it may write to. An owner the kernel cannot set here (one without a mapping in
/// the sandbox's user namespace) leaves the sandbox user as owner with only the rights the
/// lower directory grants to others. A counterpart that does not exist leaves the directory
/// the sandbox user's: it exists only in this layer.
fn prepare_whiteout_dir(dir: &CString, below: &CString, (uid, gid): (rustix::fs::Uid, rustix::fs::Gid)) -> Result<(), (OverlayStep, rustix::io::Errno)> {
    let at = |step: OverlayStep| move |errno: rustix::io::Errno| (step, errno);
    let lower = match rustix::fs::statat(CWD, below.as_c_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Some(stat),
        Ok(_) | Err(rustix::io::Errno::NOENT) => None,
        Err(errno) => return Err((OverlayStep::InspectWhiteoutDir, errno)),
    };
    let Some(lower) = lower else {
        return rustix::fs::chown(dir.as_c_str(), Some(uid), Some(gid)).map_err(at(OverlayStep::PrepareWhiteoutDir));
    };
    let mode = lower.st_mode & 0o7777;
    let owner = (rustix::fs::Uid::from_raw(lower.st_uid), rustix::fs::Gid::from_raw(lower.st_gid));
    let mode = match rustix::fs::chown(dir.as_c_str(), Some(owner.0), Some(owner.1)) {
        Ok(()) => mode,
        Err(rustix::io::Errno::INVAL) => {
            rustix::fs::chown(dir.as_c_str(), Some(uid), Some(gid)).map_err(at(OverlayStep::PrepareWhiteoutDir))?;
            let others = mode & 0o7;
            (mode & 0o7000) | (others << 6) | (others << 3) | others
        }
        Err(errno) => return Err((OverlayStep::PrepareWhiteoutDir, errno)),
    };
    rustix::fs::chmod(dir.as_c_str(), Mode::from_raw_mode(mode)).map_err(at(OverlayStep::PrepareWhiteoutDir))
}

/// Escapes the characters overlayfs treats specially in its options.
fn escape_overlay(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.as_os_str().as_bytes() {
        match byte {
            b',' | b':' | b'\\' => {
                out.push('\\');
                out.push(*byte as char);
            }
            _ => out.push(*byte as char),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{OVERLAY_STEPS, OverlayStep};

    #[test]
    fn overlay_steps_match_their_index() {
        for (index, step) in OVERLAY_STEPS.iter().enumerate() {
            assert_eq!(*step as usize, index);
        }
        assert_eq!(OVERLAY_STEPS.len(), OverlayStep::OpenMerged as usize + 1);
    }
}
