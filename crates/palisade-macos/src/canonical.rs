//! Paths spelled the way Seatbelt matches them.
//!
//! Seatbelt compares a rule with the path the kernel resolved, never with the spelling a
//! program used, so a rule for `/tmp/ws` matches nothing: the kernel resolves it to
//! `/private/tmp/ws`.
//! [`canonicalize`] resolves symbolic links against a [`FileSystem`] view, keeps the missing
//! tail of a path that does not exist yet (a protected `.git/hooks` before `git init`), and
//! maps the data volume's spelling of a firmlinked directory
//! (`/System/Volumes/Data/Users/dev`) onto the one `realpath` returns (`/Users/dev`). The view
//! is a trait so that tests describe a Mac's layout on any machine.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed while resolving one path before it counts as a loop; the same
/// number as Darwin's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 32;

/// The data volume's mount point since macOS 10.15, below which firmlinked directories have a
/// second spelling.
pub const DATA_VOLUME: &str = "/System/Volumes/Data";

/// The kind of entry at a path, as `lstat` and `readlink` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// A symbolic link and its target, as stored.
    Symlink(PathBuf),
    /// Anything else: a directory, a file, a socket, a device.
    Present,
}

/// A directory of the system volume that is a firmlink into the data volume: `/Users` is also
/// reachable as `/System/Volumes/Data/Users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmlink {
    /// The spelling `realpath` returns, such as `/Users`.
    pub path: PathBuf,
    /// The same directory below [`DATA_VOLUME`].
    pub data_path: PathBuf,
}

/// The file-system facts canonicalisation needs.
pub trait FileSystem {
    /// Looks `path` up without following a final symbolic link.
    fn entry(&self, path: &Path) -> io::Result<Entry>;

    /// Returns the firmlinks of the system volume.
    fn firmlinks(&self) -> &[Firmlink];
}

/// Why a path has no canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("more than {MAX_SYMLINKS} symbolic links were followed; the links form a loop")]
    SymlinkLoop,
    #[error("failed to look up {path}: {message}")]
    Lookup { path: PathBuf, message: String },
}

/// Returns the spelling of `path` that Seatbelt matches. Every symbolic link is resolved, and
/// `.` and `..` are applied after resolution, as the kernel does. From the first missing
/// component on, the rest is appended unchanged, with `..` applied lexically. A data-volume
/// spelling is mapped to its firmlink.
pub fn canonicalize(fs: &dyn FileSystem, path: &Path) -> Result<PathBuf, CanonicalError> {
    if !path.is_absolute() {
        return Err(CanonicalError::NotAbsolute);
    }
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, path, false);
    let mut resolved = PathBuf::from("/");
    let mut links_followed = 0;

    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let entry = fs.entry(&candidate).map_err(|error| CanonicalError::Lookup { path: candidate.clone(), message: error.to_string() })?;
        match entry {
            Entry::Present => resolved = candidate,
            Entry::Symlink(target) => {
                links_followed += 1;
                if links_followed > MAX_SYMLINKS {
                    return Err(CanonicalError::SymlinkLoop);
                }
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                push_components(&mut pending, &target, true);
            }
            Entry::Missing => {
                resolved = candidate;
                for rest in pending.drain(..) {
                    if rest == ".." {
                        resolved.pop();
                    } else {
                        resolved.push(rest);
                    }
                }
                break;
            }
        }
    }
    Ok(firmlinked(fs.firmlinks(), resolved))
}

/// Queues the normal and `..` components of `path`, at the front of the queue for a link's
/// target, which is resolved before the rest of the path.
fn push_components(pending: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for name in names.into_iter().rev() {
            pending.push_front(name);
        }
    } else {
        pending.extend(names);
    }
}

/// Maps a data-volume spelling onto the firmlink that `realpath` would have returned.
fn firmlinked(firmlinks: &[Firmlink], path: PathBuf) -> PathBuf {
    for firmlink in firmlinks {
        if let Ok(rest) = path.strip_prefix(&firmlink.data_path) {
            return if rest.as_os_str().is_empty() { firmlink.path.clone() } else { firmlink.path.join(rest) };
        }
    }
    path
}

/// Returns whether `path` is `root` or below it when ASCII letters compare equal in either
/// case, as they do on a case-insensitive volume.
pub fn starts_with_any_case(path: &Path, root: &Path) -> bool {
    let mut path = path.components();
    for root in root.components() {
        match path.next() {
            Some(component) if component.as_os_str().eq_ignore_ascii_case(root.as_os_str()) => {}
            _ => return false,
        }
    }
    true
}

/// Returns the data-volume spelling of a canonical `path` below a firmlink, if it has one.
pub fn data_volume_alias(firmlinks: &[Firmlink], path: &Path) -> Option<PathBuf> {
    firmlinks.iter().find_map(|firmlink| {
        let rest = path.strip_prefix(&firmlink.path).ok()?;
        Some(if rest.as_os_str().is_empty() { firmlink.data_path.clone() } else { firmlink.data_path.join(rest) })
    })
}

/// Parses `/usr/share/firmlinks`: one firmlink a line, its path on the system volume and its
/// target relative to the data volume, separated by a tab.
pub fn parse_firmlinks(text: &str) -> Vec<Firmlink> {
    text.lines()
        .filter_map(|line| {
            let (path, target) = line.split_once('\t')?;
            let (path, target) = (path.trim(), target.trim().trim_start_matches('/'));
            if !path.starts_with('/') || target.is_empty() {
                return None;
            }
            Some(Firmlink { path: PathBuf::from(path), data_path: Path::new(DATA_VOLUME).join(target) })
        })
        .collect()
}

/// The machine palisade runs on.
#[derive(Debug, Clone, Default)]
pub struct HostFileSystem {
    firmlinks: Vec<Firmlink>,
}

impl HostFileSystem {
    /// Reads the firmlinks from `/usr/share/firmlinks`; a machine without that file (every
    /// system but macOS 10.15 and later) has none.
    pub fn new() -> HostFileSystem {
        let text = std::fs::read_to_string("/usr/share/firmlinks").unwrap_or_default();
        HostFileSystem { firmlinks: parse_firmlinks(&text) }
    }
}

impl FileSystem for HostFileSystem {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_symlink() => Ok(Entry::Symlink(std::fs::read_link(path)?)),
            Ok(_) => Ok(Entry::Present),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Entry::Missing),
            // A component that is a file is as missing as a name in a directory: nothing
            // below it can exist.
            Err(error) if error.raw_os_error() == Some(ENOTDIR) => Ok(Entry::Missing),
            Err(error) => Err(error),
        }
    }

    fn firmlinks(&self) -> &[Firmlink] {
        &self.firmlinks
    }
}

/// `ENOTDIR`, which is 20 on Linux and on Darwin.
const ENOTDIR: i32 = 20;

/// A file-system view held in memory: the layout of a Mac for tests on any machine, or of
/// another machine for printing its profile. Every ancestor of a listed path exists as a
/// directory. It looks paths up as they are written, without following a symbolic link in
/// an ancestor, which is enough for [`canonicalize`]: it only looks up paths whose ancestors
/// are resolved.
#[derive(Debug, Clone, Default)]
pub struct MemoryFileSystem {
    entries: BTreeMap<PathBuf, Entry>,
    firmlinks: Vec<Firmlink>,
}

impl MemoryFileSystem {
    /// Returns a view with the root symbolic links of macOS (`/tmp`, `/var` and `/etc` into
    /// `/private`) and the firmlinks of `/Users`, `/Applications`, `/Library`, `/opt`,
    /// `/private` and `/usr/local`.
    pub fn macos() -> MemoryFileSystem {
        let mut fs = MemoryFileSystem::default()
            .with_symlink("/tmp", "private/tmp")
            .with_symlink("/var", "private/var")
            .with_symlink("/etc", "private/etc")
            .with_present("/private/tmp")
            .with_present("/private/var/folders")
            .with_present("/private/etc/hosts")
            .with_present("/System/Library")
            .with_present("/usr/bin")
            .with_present("/bin")
            .with_present("/sbin");
        let firmlinks = "/Applications\tApplications\n/Library\tLibrary\n/Users\tUsers\n/opt\topt\n/private\tprivate\n/usr/local\tusr/local\n";
        fs.firmlinks = parse_firmlinks(firmlinks);
        fs
    }

    /// Adds a path that exists (a directory or a file).
    pub fn with_present(mut self, path: impl Into<PathBuf>) -> MemoryFileSystem {
        self.entries.insert(path.into(), Entry::Present);
        self
    }

    /// Adds a symbolic link.
    pub fn with_symlink(mut self, path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> MemoryFileSystem {
        self.entries.insert(path.into(), Entry::Symlink(target.into()));
        self
    }
}

impl FileSystem for MemoryFileSystem {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        if let Some(entry) = self.entries.get(path) {
            return Ok(entry.clone());
        }
        // A path is an implicit directory when a listed path lies below it. Paths sort by
        // component, so the first listed path after it is below it if any is.
        let below = self.entries.range(path.to_path_buf()..).next().is_some_and(|(listed, _)| listed.starts_with(path));
        Ok(if below || path == Path::new("/") { Entry::Present } else { Entry::Missing })
    }

    fn firmlinks(&self) -> &[Firmlink] {
        &self.firmlinks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(fs: &MemoryFileSystem, path: &str) -> PathBuf {
        canonicalize(fs, Path::new(path)).unwrap()
    }

    #[test]
    fn root_links_resolve_into_private() {
        let fs = MemoryFileSystem::macos();
        assert_eq!(canonical(&fs, "/tmp"), Path::new("/private/tmp"));
        assert_eq!(canonical(&fs, "/tmp/ws/src"), Path::new("/private/tmp/ws/src"));
        assert_eq!(canonical(&fs, "/var/folders/zz/abc/T"), Path::new("/private/var/folders/zz/abc/T"));
        assert_eq!(canonical(&fs, "/etc/hosts"), Path::new("/private/etc/hosts"));
        assert_eq!(canonical(&fs, "/private/tmp/x"), Path::new("/private/tmp/x"));
    }

    #[test]
    fn missing_tail_is_kept_below_nearest_existing_ancestor() {
        let fs = MemoryFileSystem::macos().with_present("/Users/dev/ws");
        assert_eq!(canonical(&fs, "/Users/dev/ws/.git/hooks"), Path::new("/Users/dev/ws/.git/hooks"));
        assert_eq!(canonical(&fs, "/tmp/new/deeper/x"), Path::new("/private/tmp/new/deeper/x"));
        assert_eq!(canonical(&fs, "/tmp/new/../other"), Path::new("/private/tmp/other"));
    }

    #[test]
    fn relative_and_chained_links_resolve() {
        let fs = MemoryFileSystem::macos()
            .with_present("/Users/dev/real/ws")
            .with_symlink("/Users/dev/link", "real")
            .with_symlink("/Users/dev/chain", "/Users/dev/link/ws");
        assert_eq!(canonical(&fs, "/Users/dev/link/ws"), Path::new("/Users/dev/real/ws"));
        assert_eq!(canonical(&fs, "/Users/dev/chain/.env"), Path::new("/Users/dev/real/ws/.env"));
    }

    #[test]
    fn dotdot_after_a_link_leaves_the_target() {
        // The kernel applies `..` to the directory it reached, which is the link's target.
        let fs = MemoryFileSystem::macos().with_present("/Users/dev/real/inner").with_symlink("/Users/dev/ws/link", "/Users/dev/real/inner");
        assert_eq!(canonical(&fs, "/Users/dev/ws/link/.."), Path::new("/Users/dev/real"));
    }

    #[test]
    fn dangling_link_resolves_to_its_target() {
        let fs = MemoryFileSystem::macos().with_present("/Users/dev/ws").with_symlink("/Users/dev/ws/out", "/tmp/elsewhere");
        assert_eq!(canonical(&fs, "/Users/dev/ws/out/file"), Path::new("/private/tmp/elsewhere/file"));
    }

    #[test]
    fn loops_are_reported() {
        let fs = MemoryFileSystem::macos().with_symlink("/Users/dev/a", "b").with_symlink("/Users/dev/b", "a");
        assert_eq!(canonicalize(&fs, Path::new("/Users/dev/a/x")), Err(CanonicalError::SymlinkLoop));
    }

    #[test]
    fn relative_paths_are_rejected() {
        assert_eq!(canonicalize(&MemoryFileSystem::macos(), Path::new("ws")), Err(CanonicalError::NotAbsolute));
    }

    #[test]
    fn data_volume_spelling_maps_to_firmlink() {
        let fs = MemoryFileSystem::macos().with_present("/System/Volumes/Data/Users/dev/ws");
        assert_eq!(canonical(&fs, "/System/Volumes/Data/Users/dev/ws"), Path::new("/Users/dev/ws"));
        assert_eq!(canonical(&fs, "/System/Volumes/Data/private/tmp/x"), Path::new("/private/tmp/x"));
        assert_eq!(canonical(&fs, "/System/Volumes/Data/Users"), Path::new("/Users"));
        // Not below a firmlink: kept as it is.
        assert_eq!(canonical(&fs, "/System/Volumes/Data/sw"), Path::new("/System/Volumes/Data/sw"));
        assert_eq!(
            data_volume_alias(fs.firmlinks(), Path::new("/Users/dev/.ssh")),
            Some(PathBuf::from("/System/Volumes/Data/Users/dev/.ssh"))
        );
        assert_eq!(data_volume_alias(fs.firmlinks(), Path::new("/System/Library")), None);
    }

    #[test]
    fn prefix_comparison_ignores_ascii_case() {
        assert!(starts_with_any_case(Path::new("/users/DEV/ws/.GIT"), Path::new("/Users/dev/ws")));
        assert!(starts_with_any_case(Path::new("/Users/dev/ws"), Path::new("/Users/dev/ws")));
        assert!(!starts_with_any_case(Path::new("/Users/dev/ws2"), Path::new("/Users/dev/ws")));
        assert!(!starts_with_any_case(Path::new("/Users/dev"), Path::new("/Users/dev/ws")));
    }

    #[test]
    fn firmlinks_file_parses() {
        let text = "/Applications\tApplications\n/usr/local\tusr/local\n\nnot a line\n/bad\t\n";
        let firmlinks = parse_firmlinks(text);
        assert_eq!(firmlinks.len(), 2);
        assert_eq!(firmlinks[1], Firmlink { path: "/usr/local".into(), data_path: "/System/Volumes/Data/usr/local".into() });
    }

    #[cfg(unix)]
    #[test]
    fn host_view_resolves_real_links() {
        let dir = std::env::temp_dir().join(format!("palisade-macos-canonical-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        std::fs::write(dir.join("file"), "").unwrap();
        let base = std::fs::canonicalize(&dir).unwrap();
        let fs = HostFileSystem::new();
        assert_eq!(canonicalize(&fs, &dir.join("link/missing")).unwrap(), base.join("real/missing"));
        // A name below a regular file is missing, not an error.
        assert_eq!(canonicalize(&fs, &dir.join("file/below")).unwrap(), base.join("file/below"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
