//! The mount plan: the list of filesystem operations that builds a sandbox's root, computed
//! from a resolved policy before any system call runs.
//!
//! Keeping the plan pure lets its order and contents be unit-tested without privileges. Every
//! operation targets the same absolute path inside the sandbox that it has on the host, so
//! users see familiar paths and error messages name real locations.

use std::path::{Path, PathBuf};

use palisade_policy::{is_within, Policy};

/// The type of the entry at a host path, as far as planning needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Missing,
}

/// One step of building the sandbox's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// A fresh `/proc` for the sandbox's PID namespace.
    Proc,
    /// A minimal `/dev`: null, zero, full, random, urandom, tty, a private pts instance, shm.
    Dev,
    /// A private temporary directory, discarded at the end of the run (`/tmp`, `/var/tmp`).
    Tmp { path: PathBuf, writable: bool },
    /// An empty, writable temporary directory for the home directory; allowed parts of the real
    /// home are bound on top.
    HomeTmpfs { path: PathBuf },
    /// The host path, bound at the same path. `idmap` maps files owned by the calling root user
    /// to the sandbox user, see [`crate::Identity`].
    Bind { path: PathBuf, kind: Kind, writable: bool, idmap: bool },
    /// The host directory under a copy-on-write layer that is discarded at the end of the run.
    /// `hidden` lists paths (relative to `path`) that read as absent.
    Overlay { path: PathBuf, hidden: Vec<PathBuf>, idmap: bool },
    /// Hides a path. An existing one is covered by an empty, inaccessible file or directory,
    /// and a missing one inside a writable root gets a placeholder FIFO so it cannot be created.
    Hide { path: PathBuf, kind: Kind },
    /// Keeps a path inside a writable root read-only. A missing one gets a placeholder FIFO so it
    /// cannot be created.
    Protect { path: PathBuf, kind: Kind },
    /// A read-only file with these contents in place of the file at `path`, such as the
    /// sandbox's own `/etc/hosts`.
    File { path: PathBuf, contents: Vec<u8> },
    /// Binds a writable directory onto itself. A mount point cannot be renamed or removed, so
    /// a directory between a writable root and a protected path (`.git` for `.git/hooks`)
    /// cannot be moved aside and rebuilt without the protection.
    Pin { path: PathBuf },
}

impl MountOp {
    pub fn path(&self) -> &Path {
        match self {
            MountOp::Proc => Path::new("/proc"),
            MountOp::Dev => Path::new("/dev"),
            MountOp::Tmp { path, .. }
            | MountOp::HomeTmpfs { path }
            | MountOp::Bind { path, .. }
            | MountOp::Overlay { path, .. }
            | MountOp::Hide { path, .. }
            | MountOp::Protect { path, .. }
            | MountOp::Pin { path }
            | MountOp::File { path, .. } => path,
        }
    }

    /// Order among operations at the same depth: containers first, then masks.
    fn rank(&self) -> u8 {
        match self {
            MountOp::Proc | MountOp::Dev | MountOp::Tmp { .. } | MountOp::HomeTmpfs { .. } => 0,
            MountOp::Bind { .. } | MountOp::Overlay { .. } | MountOp::Pin { .. } => 1,
            MountOp::Hide { .. } | MountOp::Protect { .. } | MountOp::File { .. } => 2,
        }
    }

    /// Reports whether writes to this operation's path reach the host.
    fn writes_reach_host(&self) -> bool {
        matches!(self, MountOp::Bind { writable: true, .. })
    }
}

/// The complete plan: mounts in the order they must happen, and the top-level symlinks of the
/// host (`/bin -> usr/bin` on merged-/usr systems) to recreate in the new root.
#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    pub ops: Vec<MountOp>,
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// The size of the one tmpfs behind `/tmp`, `/var/tmp`, `/dev/shm`, the home directory and
    /// the caches' copy-on-write layers.
    pub tmp_size: Option<u64>,
}

impl MountPlan {
    /// Returns the host paths where building the root may create a placeholder: each missing
    /// path the plan hides or protects. The plan adds such an operation only inside a writable
    /// root, so each of these paths is on the host. After the run, also when init was killed
    /// during setup, the supervisor removes each mode-000 FIFO found at these paths, unless
    /// another run is live in the same root.
    pub fn placeholders(&self) -> impl Iterator<Item = &Path> {
        self.ops.iter().filter_map(|op| match op {
            MountOp::Hide { path, kind: Kind::Missing } | MountOp::Protect { path, kind: Kind::Missing } => Some(path.as_path()),
            _ => None,
        })
    }

    /// Returns the writable roots bound from the host.
    pub fn writable_roots(&self) -> Vec<PathBuf> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind { path, writable: true, .. } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Top-level paths that are often symlinks into `/usr`.
const ROOT_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Builds the plan for `policy`. `inspect` reports what exists on the host and `readlink` reads a
/// host symlink; both are parameters so tests can describe a host without touching one.
pub fn build(
    policy: &Policy,
    idmap: bool,
    inspect: &dyn Fn(&Path) -> Kind,
    readlink: &dyn Fn(&Path) -> Option<PathBuf>,
) -> MountPlan {
    let fs = &policy.filesystem;
    let mut ops = vec![
        MountOp::Proc,
        MountOp::Dev,
        MountOp::Tmp { path: "/tmp".into(), writable: fs.tmp_writable },
        MountOp::Tmp { path: "/var/tmp".into(), writable: fs.tmp_writable },
    ];

    let home_writable = fs.writable.iter().any(|root| is_within(&policy.home, root));
    if !home_writable {
        ops.push(MountOp::HomeTmpfs { path: policy.home.clone() });
    }
    for path in &fs.read_only {
        // The private /tmp and /var/tmp replace whatever the host has there.
        if path == Path::new("/tmp") || path == Path::new("/var/tmp") {
            continue;
        }
        // The workspace belongs to the caller even when it is read-only (the read-only
        // profile), so it gets the same mapping as a writable root: as root, git would
        // otherwise refuse a repository that appears owned by another user.
        let idmap = idmap && same(path, &policy.workspace);
        ops.push(MountOp::Bind { path: path.clone(), kind: inspect(path), writable: false, idmap });
    }
    for path in &fs.copy_on_write {
        let hidden = fs
            .hidden
            .iter()
            .filter_map(|hidden| hidden.strip_prefix(path).ok())
            .filter(|relative| !relative.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        ops.push(MountOp::Overlay { path: path.clone(), hidden, idmap });
    }
    for path in &fs.writable {
        ops.push(MountOp::Bind { path: path.clone(), kind: inspect(path), writable: true, idmap });
    }
    // A later operation on the same path replaces an earlier one: a writable root that is also
    // readable stays writable, and a cache listed as writable is bound directly.
    dedup_keep_last(&mut ops);
    drop_redundant_read_only(&mut ops);

    let containers: Vec<MountOp> = ops.clone();
    // A missing path under a protected or hidden one cannot be created anyway: its ancestor is
    // read-only or inaccessible in the sandbox, so it needs no placeholder.
    let sealed_ancestor = |path: &Path| {
        fs.protected.iter().chain(&fs.hidden).any(|other| !same(other, path) && is_within(path, other))
    };
    for path in &fs.hidden {
        let Some(container) = deepest_container(&containers, path) else { continue };
        // Overlays hide with whiteouts; in the home tmpfs, unbound entries do not exist.
        if matches!(container, MountOp::Overlay { .. } | MountOp::HomeTmpfs { .. } | MountOp::Tmp { .. }) {
            continue;
        }
        let kind = inspect(path);
        if kind == Kind::Missing && (sealed_ancestor(path) || !container.writes_reach_host()) {
            continue;
        }
        ops.push(MountOp::Hide { path: path.clone(), kind });
    }
    for path in &fs.protected {
        let Some(container) = deepest_container(&containers, path) else { continue };
        if !matches!(container, MountOp::Bind { writable: true, .. } | MountOp::Overlay { .. }) {
            continue;
        }
        let kind = inspect(path);
        if kind == Kind::Missing && sealed_ancestor(path) {
            continue;
        }
        let needed = match container {
            MountOp::Bind { writable: true, .. } => true,
            // Inside a copy-on-write layer, writes never reach the host, but the command could
            // still change what its own later tools run; existing entries stay read-only.
            MountOp::Overlay { .. } => kind != Kind::Missing,
            _ => false,
        };
        if needed && !fs.hidden.iter().any(|hidden| is_within(path, hidden)) {
            ops.push(MountOp::Protect { path: path.clone(), kind });
        }
    }

    pin_parents_of_masks(&mut ops, &containers, inspect);

    // Parents before children, so every mount lands on top of the one that contains it. The
    // cached key counts each path's components once; the sort is stable.
    ops.sort_by_cached_key(|op| (op.path().components().count(), op.rank()));

    let symlinks = ROOT_LINKS
        .iter()
        .filter_map(|link| readlink(Path::new(link)).map(|target| (PathBuf::from(link), target)))
        .collect();
    MountPlan { ops, symlinks, tmp_size: policy.limits.tmp_size }
}

/// Adds a [`MountOp::Pin`] for every existing directory between a writable root and a hidden or
/// protected path inside it.
fn pin_parents_of_masks(ops: &mut Vec<MountOp>, containers: &[MountOp], inspect: &dyn Fn(&Path) -> Kind) {
    let mut pins: Vec<PathBuf> = Vec::new();
    for op in ops.iter() {
        if !matches!(op, MountOp::Hide { .. } | MountOp::Protect { .. }) {
            continue;
        }
        let path = op.path();
        let Some(root @ MountOp::Bind { writable: true, .. }) = deepest_container(containers, path) else { continue };
        for ancestor in path.ancestors().skip(1) {
            if same(ancestor, root.path()) || !is_within(ancestor, root.path()) {
                break;
            }
            if inspect(ancestor) == Kind::Dir && !pins.iter().any(|pin| same(pin, ancestor)) {
                pins.push(ancestor.to_path_buf());
            }
        }
    }
    ops.extend(pins.into_iter().map(|path| MountOp::Pin { path }));
}

fn dedup_keep_last(ops: &mut Vec<MountOp>) {
    let mut kept: Vec<MountOp> = Vec::with_capacity(ops.len());
    for op in ops.drain(..).rev() {
        if !kept.iter().any(|existing| same(existing.path(), op.path())) {
            kept.push(op);
        }
    }
    kept.reverse();
    *ops = kept;
}

/// Drops read-only binds that another read-only bind already shows unchanged (`/usr/bin` on a
/// merged-/usr host, whose `/bin` resolves into `/usr`). Each bind costs a mount at start.
fn drop_redundant_read_only(ops: &mut Vec<MountOp>) {
    let snapshot = ops.clone();
    ops.retain(|op| {
        let MountOp::Bind { path, writable: false, .. } = op else { return true };
        let container = snapshot
            .iter()
            .filter(|other| !same(other.path(), path) && is_within(path, other.path()))
            .filter(|other| !matches!(other, MountOp::Proc | MountOp::Dev))
            // Every candidate contains `path`, so the longest is the deepest.
            .max_by_key(|other| other.path().as_os_str().len());
        !matches!(container, Some(MountOp::Bind { writable: false, .. }))
    });
}

/// Returns the operation whose path most closely contains `path`, if any is visible there.
fn deepest_container<'a>(ops: &'a [MountOp], path: &Path) -> Option<&'a MountOp> {
    ops.iter()
        .filter(|op| !matches!(op, MountOp::Proc | MountOp::Dev))
        .filter(|op| is_within(path, op.path()))
        // Every candidate contains `path`, so the longest is the deepest.
        .max_by_key(|op| op.path().as_os_str().len())
}

/// Compares two paths of a plan as bytes. Resolution made them absolute and normalised, so
/// equal bytes mean the same path. `Path`'s own comparison parses both into components, and the
/// plan compares every hidden or protected path with every other on each run.
fn same(a: &Path, b: &Path) -> bool {
    a.as_os_str() == b.as_os_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::{Filesystem, Limits, NetworkMode, Policy, Profile};

    fn policy(fs: Filesystem) -> Policy {
        Policy {
            profile: Profile::WorkspaceWrite,
            workspace: "/work/ws".into(),
            cwd: "/work/ws".into(),
            home: "/home/u".into(),
            filesystem: fs,
            network: NetworkMode::None,
            ports: Default::default(),
            limits: Limits::default(),
            env: Vec::new(),
            dropped_env: Vec::new(),
            allow_degraded: false,
            allow_ptrace: false,
        }
    }

    fn host(path: &Path) -> Kind {
        match path.to_str().unwrap() {
            "/work/ws/.git/hooks" | "/work/ws/.git" | "/home/u/.cargo" | "/usr" | "/work/ws" => Kind::Dir,
            "/work/ws/.git/config" | "/home/u/.gitconfig" => Kind::File,
            _ => Kind::Missing,
        }
    }

    fn plan(fs: Filesystem) -> MountPlan {
        build(&policy(fs), false, &host, &|path| (path == Path::new("/bin")).then(|| PathBuf::from("usr/bin")))
    }

    fn position(plan: &MountPlan, path: &str) -> usize {
        plan.ops.iter().position(|op| op.path() == Path::new(path)).unwrap_or_else(|| panic!("{path} not planned"))
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let plan = plan(Filesystem {
            read_only: vec!["/usr".into(), "/home/u/.gitconfig".into()],
            writable: vec!["/work/ws".into()],
            protected: vec!["/work/ws/.git/hooks".into()],
            ..Default::default()
        });
        assert!(position(&plan, "/home/u") < position(&plan, "/home/u/.gitconfig"));
        assert!(position(&plan, "/work/ws") < position(&plan, "/work/ws/.git/hooks"));
        assert!(position(&plan, "/tmp") < position(&plan, "/work/ws"));
    }

    #[test]
    fn missing_protected_name_in_writable_root_is_planned() {
        let plan = plan(Filesystem {
            writable: vec!["/work/ws".into()],
            protected: vec!["/work/ws/.claude".into(), "/work/ws/.git/config".into()],
            ..Default::default()
        });
        assert!(plan.ops.contains(&MountOp::Protect { path: "/work/ws/.claude".into(), kind: Kind::Missing }));
        assert!(plan.ops.contains(&MountOp::Protect { path: "/work/ws/.git/config".into(), kind: Kind::File }));
    }

    #[test]
    fn placeholders_only_for_missing_names() {
        let plan = plan(Filesystem {
            writable: vec!["/work/ws".into()],
            protected: vec!["/work/ws/.claude".into(), "/work/ws/.git/config".into(), "/work/ws/.git/hooks".into()],
            hidden: vec!["/work/ws/token".into(), "/usr/secret".into()],
            ..Default::default()
        });
        let mut placeholders: Vec<&Path> = plan.placeholders().collect();
        placeholders.sort();
        assert_eq!(placeholders, [Path::new("/work/ws/.claude"), Path::new("/work/ws/token")]);
    }

    #[test]
    fn hidden_paths_in_caches_become_whiteouts() {
        let plan = plan(Filesystem {
            copy_on_write: vec!["/home/u/.cargo".into()],
            hidden: vec!["/home/u/.cargo/credentials.toml".into(), "/home/u/.ssh".into()],
            ..Default::default()
        });
        assert!(plan.ops.contains(&MountOp::Overlay {
            path: "/home/u/.cargo".into(),
            hidden: vec!["credentials.toml".into()],
            idmap: false
        }));
        // ~/.ssh lies in the home tmpfs, where nothing unbound exists: no mask is needed.
        assert!(!plan.ops.iter().any(|op| matches!(op, MountOp::Hide { .. })));
    }

    #[test]
    fn missing_hidden_path_outside_writable_roots_needs_nothing() {
        let plan = plan(Filesystem {
            read_only: vec!["/usr".into()],
            writable: vec!["/work/ws".into()],
            hidden: vec!["/usr/secret".into(), "/work/ws/token".into()],
            ..Default::default()
        });
        assert!(!plan.ops.iter().any(|op| op.path() == Path::new("/usr/secret")));
        assert!(plan.ops.contains(&MountOp::Hide { path: "/work/ws/token".into(), kind: Kind::Missing }));
    }

    #[test]
    fn nested_read_only_bind_dropped() {
        let plan = plan(Filesystem {
            read_only: vec!["/usr".into(), "/usr/bin".into(), "/home/u/.gitconfig".into()],
            writable: vec!["/usr/src/ws".into()],
            ..Default::default()
        });
        assert!(!plan.ops.iter().any(|op| op.path() == Path::new("/usr/bin")));
        assert!(plan.ops.iter().any(|op| op.path() == Path::new("/home/u/.gitconfig")));
        assert!(plan.ops.iter().any(|op| op.path() == Path::new("/usr/src/ws")));
    }

    #[test]
    fn missing_path_under_protected_one_needs_no_placeholder() {
        let plan = plan(Filesystem {
            writable: vec!["/work/ws".into()],
            protected: vec!["/work/ws/.git/hooks".into(), "/work/ws/.git/hooks/extra".into()],
            hidden: vec!["/work/ws/.git/hooks/token".into()],
            ..Default::default()
        });
        assert!(plan.ops.iter().any(|op| op.path() == Path::new("/work/ws/.git/hooks")));
        assert!(!plan.ops.iter().any(|op| op.path() == Path::new("/work/ws/.git/hooks/extra")));
        assert!(!plan.ops.iter().any(|op| op.path() == Path::new("/work/ws/.git/hooks/token")));
    }

    #[test]
    fn directories_above_protected_paths_are_pinned() {
        let plan = plan(Filesystem {
            writable: vec!["/work/ws".into()],
            protected: vec!["/work/ws/.git/hooks".into(), "/work/ws/.git/config".into()],
            ..Default::default()
        });
        let pins: Vec<&Path> = plan.ops.iter().filter(|op| matches!(op, MountOp::Pin { .. })).map(MountOp::path).collect();
        assert_eq!(pins, vec![Path::new("/work/ws/.git")]);
        assert!(position(&plan, "/work/ws/.git") < position(&plan, "/work/ws/.git/hooks"));
    }

    #[test]
    fn root_symlinks_are_recreated() {
        let plan = plan(Filesystem::default());
        assert_eq!(plan.symlinks, vec![(PathBuf::from("/bin"), PathBuf::from("usr/bin"))]);
    }

    #[test]
    fn home_inside_writable_root_gets_no_tmpfs() {
        let plan = plan(Filesystem { writable: vec!["/home".into()], ..Default::default() });
        assert!(!plan.ops.iter().any(|op| matches!(op, MountOp::HomeTmpfs { .. })));
    }
}
