//! Path expansion and canonicalisation.
//!
//! Paths are made absolute and resolved through symlinks on the host before any backend sees
//! them, so a mount or rule is always placed on the real location. A path that does not exist
//! yet is resolved as far as it exists and the rest is appended, which lets a hidden or
//! protected name be enforced before anything creates it.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Removes `.` components and rejects `..`, which would make the meaning of a path depend on
/// symlinks that do not exist yet.
///
/// NOTE: `..` is applied lexically, so `/a/link/..` means `/a` even when `link` is a symlink;
/// the kernel would go to the link target's parent. Policies rarely contain `..`.
fn normalize_lexically(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return Err("'..' climbs above the root".into());
                }
            }
            // A drive or share (`C:`, `\\server\share`) starts a Windows path, before its root.
            #[cfg(windows)]
            Component::Prefix(prefix) => out.push(prefix.as_os_str()),
            #[cfg(not(windows))]
            Component::Prefix(_) => return Err("path prefixes are not supported".into()),
        }
    }
    Ok(out)
}

/// Returns the canonical path of an existing `path`, as `std::fs::canonicalize` does. On
/// Windows, that returns the `\\?\` form (`\\?\C:\x`), which never compares equal to the
/// `C:\x` a user or an environment variable writes, so a drive path short enough for every
/// program is returned in its usual form.
pub fn canonicalize(path: &Path) -> io::Result<PathBuf> {
    let real = std::fs::canonicalize(path)?;
    #[cfg(windows)]
    {
        /// Windows' `MAX_PATH`: longer paths need the `\\?\` form.
        const MAX_PATH: usize = 260;
        let text = real.to_string_lossy();
        let usual = text.strip_prefix(r"\\?\").filter(|rest| {
            let drive = rest.as_bytes();
            drive.len() >= 3 && drive[0].is_ascii_alphabetic() && &drive[1..3] == b":\\" && rest.len() < MAX_PATH
        });
        if let Some(usual) = usual {
            return Ok(PathBuf::from(usual));
        }
    }
    Ok(real)
}

/// Returns the canonical form of an absolute path that may not exist: the longest existing
/// ancestor is canonicalised and the missing components are appended unchanged.
///
/// Walks the path one component at a time with `lstat`, resolving only the components that are
/// symlinks, because `realpath` on every ancestor costs a `readlink` per component and
/// resolution runs for dozens of built-in paths on every start.
pub fn canonicalize_lenient(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err("path is not absolute".into());
    }
    let path = normalize_lexically(path)?;
    // The root: `/` on Unix, the drive or share and its root on Windows.
    let mut components = path.components().peekable();
    let mut root = PathBuf::new();
    while let Some(component) = components.next_if(|component| matches!(component, Component::Prefix(_) | Component::RootDir)) {
        root.push(component.as_os_str());
    }
    resolve_below(root, components)
}

/// Returns the canonical form of `base.join(relative)`, where `base` is already canonical, so
/// only the components of `relative` are looked at. Resolution uses it for the dozens of
/// built-in names under the home directory.
pub fn canonicalize_below(base: &Path, relative: &str) -> Result<PathBuf, String> {
    let relative = normalize_lexically(Path::new(relative))?;
    if relative.is_absolute() {
        return Err("expected a relative path".into());
    }
    resolve_below(base.to_path_buf(), relative.components())
}

fn resolve_below<'a>(mut resolved: PathBuf, components: impl Iterator<Item = Component<'a>>) -> Result<PathBuf, String> {
    let mut components = components;
    while let Some(component) = components.next() {
        let candidate = resolved.join(component);
        match listing::lookup(&candidate) {
            Ok(is_symlink) if is_symlink => match canonicalize(&candidate) {
                Ok(real) => resolved = real,
                // A dangling symlink is not "missing": creating it would create its target.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err("path is a dangling symlink".into());
                }
                Err(error) => return Err(error.to_string()),
            },
            Ok(_) => resolved = candidate,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                resolved = candidate;
                resolved.extend(components);
                return Ok(resolved);
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(resolved)
}

/// Lookups remembered while one policy is resolved: resolution looks up the same paths
/// several times (when it canonicalises them, for protected names, for planted symlinks).
///
/// Missing names are looked up one by one, except in the home directory and `~/.config`,
/// which resolution reads whole when they are small ([`listing::prefetch`]). Listing every
/// parent directory cost more than the failed `statx` calls it saved: 0.1 to 0.2 ms per run,
/// with the workspace in a small directory and in a `/tmp` of 270 entries alike. A listing
/// after a few lookups made a home directory of 2 000 entries 0.5 ms slower
/// (docs/benchmarks.md).
pub(crate) mod listing {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::ffi::OsString;
    use std::path::Path;

    /// The filesystem as resolution has found it. Keyed by the paths' bytes: the paths are
    /// normalised, and comparing bytes costs less than hashing a `Path` component by
    /// component.
    #[derive(Default)]
    struct Cache {
        /// Whether each path looked up is a symlink, or `None` for a missing one.
        paths: BTreeMap<OsString, Option<bool>>,
        /// Directories read whole by [`prefetch`]: a name in one that `paths` lacks is missing.
        listed: BTreeSet<OsString>,
    }

    thread_local! {
        /// `None` outside [`with_cache`].
        static LOOKUPS: RefCell<Option<Cache>> = const { RefCell::new(None) };
    }

    /// Runs `work` with lookups cached, and drops them afterwards so a later resolution reads
    /// the filesystem as it is then.
    pub fn with_cache<T>(work: impl FnOnce() -> T) -> T {
        LOOKUPS.with(|cell| *cell.borrow_mut() = Some(Cache::default()));
        let result = work();
        LOOKUPS.with(|cell| *cell.borrow_mut() = None);
        result
    }

    /// Looks `path` up without following a final symlink and returns whether it is a symlink.
    /// Within [`with_cache`], a path looked up before, found or missing, or in a directory
    /// [`prefetch`] read, is returned from memory: resolution takes the filesystem as it was
    /// when it first looked.
    pub fn lookup(path: &Path) -> std::io::Result<bool> {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let known = LOOKUPS.with(|cell| {
            let cell = cell.borrow();
            let cache = cell.as_ref()?;
            if let Some(known) = cache.paths.get(path.as_os_str()) {
                return Some(*known);
            }
            let parent = listed_parent(path)?;
            cache.listed.contains(parent.as_os_str()).then_some(None)
        });
        if let Some(known) = known {
            return known.ok_or_else(missing);
        }
        let found = match path.symlink_metadata() {
            Ok(meta) => Some(meta.file_type().is_symlink()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        LOOKUPS.with(|cell| {
            if let Some(cache) = cell.borrow_mut().as_mut() {
                cache.paths.insert(path.as_os_str().to_owned(), found);
            }
        });
        found.ok_or_else(missing)
    }

    /// Returns the directory `path` names an entry of, when `path` is that directory, a
    /// separator and the entry's name, as [`prefetch`] records entries. Not for a path that
    /// ends in `.`, `..` or a separator: its entry is not one of the names read.
    #[cfg(target_os = "linux")]
    fn listed_parent(path: &Path) -> Option<&Path> {
        use std::os::unix::ffi::OsStrExt;
        let (parent, name) = (path.parent()?, path.file_name()?);
        let separator = usize::from(!parent.as_os_str().as_bytes().ends_with(b"/"));
        let bytes = path.as_os_str().as_bytes();
        (bytes.ends_with(name.as_bytes()) && bytes.len() == parent.as_os_str().len() + separator + name.len()).then_some(parent)
    }

    /// Elsewhere no directory is read whole.
    #[cfg(not(target_os = "linux"))]
    fn listed_parent(_path: &Path) -> Option<&Path> {
        None
    }

    /// The maximum number of entries [`prefetch`] takes from a directory, and the size of its
    /// buffer, room for about 100 entries with short names. A larger directory is left to lookups one by
    /// one: reading it cost more than the lookups it spared (docs/benchmarks.md).
    #[cfg(target_os = "linux")]
    const PREFETCH_ENTRIES: usize = 128;
    #[cfg(target_os = "linux")]
    const PREFETCH_BUFFER: usize = 4096;
    /// The largest directory size, as `stat` reports it, that [`prefetch`] reads: one ext4
    /// block, about 200 entries on tmpfs.
    #[cfg(target_os = "linux")]
    const PREFETCH_MAX_SIZE: u64 = 4096;

    /// Within [`with_cache`], reads `dir` whole if it is small, so its entries need no lookup of
    /// their own. Resolution looks up about fifty built-in names in the home directory, most of
    /// them missing, and reading it costs about as much as ten of those lookups. A directory
    /// larger than [`PREFETCH_MAX_SIZE`] or with more than [`PREFETCH_ENTRIES`] entries, an
    /// unreadable one, or one whose listing lacks an entry's type, is left as it was.
    #[cfg(target_os = "linux")]
    pub fn prefetch(dir: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(fd) = rustix::fs::open(dir, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        else {
            return;
        };
        // Only a small directory is read. On ext4 a directory of more than one block is
        // indexed, and reading even the start of one with 2 000 entries took 0.1 ms.
        if !rustix::fs::fstat(&fd).is_ok_and(|stat| u64::try_from(stat.st_size).is_ok_and(|size| size <= PREFETCH_MAX_SIZE)) {
            return;
        }
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); PREFETCH_BUFFER];
        let mut entries = rustix::fs::RawDir::new(fd, &mut buffer);
        let mut found = Vec::new();
        while let Some(entry) = entries.next() {
            let Ok(entry) = entry else { return };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let is_symlink = match entry.file_type() {
                rustix::fs::FileType::Unknown => return,
                kind => kind == rustix::fs::FileType::Symlink,
            };
            if found.len() == PREFETCH_ENTRIES {
                return;
            }
            found.push((dir.join(std::ffi::OsStr::from_bytes(name)).into_os_string(), is_symlink));
        }
        LOOKUPS.with(|cell| {
            if let Some(cache) = cell.borrow_mut().as_mut() {
                for (path, is_symlink) in found {
                    // A path looked up before keeps its first result.
                    cache.paths.entry(path).or_insert(Some(is_symlink));
                }
                cache.listed.insert(dir.as_os_str().to_owned());
            }
        });
    }

    /// Elsewhere every name is looked up one by one.
    #[cfg(not(target_os = "linux"))]
    pub fn prefetch(_dir: &Path) {}

    /// Reports whether `path` exists, without following a final symlink. Within [`with_cache`]
    /// the result may come from memory, as for [`lookup`].
    pub fn exists(path: &Path) -> bool {
        lookup(path).is_ok()
    }

    /// Reports whether `path` is a symlink. Within [`with_cache`] the result may come from
    /// memory, as for [`lookup`].
    pub fn is_symlink(path: &Path) -> bool {
        lookup(path).unwrap_or(false)
    }
}

/// Expands `~`, `~/...` and `{workspace}` at the start of a path written in a policy.
pub fn expand(text: &str, home: &Path, workspace: &Path) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("empty path".into());
    }
    if text.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    let expanded = if text == "~" {
        home.to_path_buf()
    } else if let Some(rest) = text.strip_prefix("~/") {
        home.join(rest)
    } else if text.starts_with('~') {
        return Err("'~user' is not supported; write the path out".into());
    } else if let Some(rest) = text.strip_prefix("{workspace}") {
        if rest.is_empty() {
            workspace.to_path_buf()
        } else if let Some(rest) = rest.strip_prefix('/') {
            workspace.join(rest)
        } else {
            return Err("'{workspace}' must be followed by '/' or nothing".into());
        }
    } else {
        PathBuf::from(text)
    };
    if !expanded.is_absolute() {
        return Err("path must be absolute or start with '~' or '{workspace}'".into());
    }
    Ok(expanded)
}

/// Returns true when `path` is `root` or lies below it, comparing whole components (so
/// `/ws-evil` is not inside `/ws`).
///
/// Both paths must be normalised (no `.`, `..`, repeated or trailing slashes), as resolved
/// paths are. Comparing bytes instead of `Path::starts_with` matters because resolution and
/// planning compare every hidden path with every visible one on each start.
pub fn is_within(path: &Path, root: &Path) -> bool {
    const SEPARATOR: u8 = std::path::MAIN_SEPARATOR as u8;
    let (path, root) = (path.as_os_str().as_encoded_bytes(), root.as_os_str().as_encoded_bytes());
    if root == [SEPARATOR] {
        return path.first() == Some(&SEPARATOR);
    }
    path.starts_with(root) && (path.len() == root.len() || path[root.len()] == SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory read by `prefetch` gives the results that lookups one by one give: present
    /// and missing names, symlinks, dangling ones, and names looked up before it was read.
    #[cfg(target_os = "linux")]
    #[test]
    fn prefetch_matches_lookups() {
        let dir = std::env::temp_dir().join(format!("palisade-prefetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.join("dangling")).unwrap();
        let names = ["missing", "file", "link", "dangling", "sub", "sub/inner", ".", "..", "sub/.", "sub/", "sub/.."];
        let ask = || names.iter().map(|name| (*name, listing::lookup(&dir.join(name)).ok())).collect::<Vec<_>>();
        let expected = ask();
        assert_eq!(expected.iter().filter(|(_, answer)| answer.is_some()).count(), 9, "{expected:?}");
        let cached = listing::with_cache(|| {
            let early = listing::lookup(&dir.join("file")).ok();
            listing::prefetch(&dir);
            std::fs::write(dir.join("missing"), b"").unwrap();
            (early, ask())
        });
        assert_eq!(cached.0, Some(false));
        // "missing" was created after the directory was read, so resolution still finds it
        // missing, as it would had it looked the name up first.
        assert_eq!(cached.1, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory larger than one ext4 block is left to lookups one by one.
    #[cfg(target_os = "linux")]
    #[test]
    fn prefetch_skips_large_directory() {
        let dir = std::env::temp_dir().join(format!("palisade-prefetch-large-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for index in 0..300 {
            std::fs::write(dir.join(format!("entry-{index}")), b"").unwrap();
        }
        let seen_late = listing::with_cache(|| {
            listing::prefetch(&dir);
            std::fs::write(dir.join("late"), b"").unwrap();
            listing::lookup(&dir.join("late")).is_ok()
        });
        assert!(seen_late, "a name created after a refused prefetch is looked up for real");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sibling_with_shared_prefix_is_outside() {
        assert!(!is_within(Path::new("/work/ws-evil/x"), Path::new("/work/ws")));
        assert!(!is_within(Path::new("/work/ws.bak"), Path::new("/work/ws")));
        assert!(is_within(Path::new("/work/ws/x"), Path::new("/work/ws")));
        assert!(is_within(Path::new("/work/ws"), Path::new("/work/ws")));
    }

    #[test]
    fn within_matches_components_only() {
        assert!(is_within(Path::new("/a/b"), Path::new("/")));
        assert!(is_within(Path::new("/"), Path::new("/")));
        assert!(is_within(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(!is_within(Path::new("/a/bc"), Path::new("/a/b")));
        assert!(!is_within(Path::new("/a"), Path::new("/a/b")));
    }

    #[test]
    fn expand_handles_home_and_workspace() {
        let home = Path::new("/home/u");
        let ws = Path::new("/w");
        assert_eq!(expand("~", home, ws).unwrap(), PathBuf::from("/home/u"));
        assert_eq!(expand("~/.cache/pip", home, ws).unwrap(), PathBuf::from("/home/u/.cache/pip"));
        assert_eq!(expand("{workspace}/build", home, ws).unwrap(), PathBuf::from("/w/build"));
        assert!(expand("relative/path", home, ws).is_err());
        assert!(expand("~bob/x", home, ws).is_err());
        assert!(expand("{workspace}x", home, ws).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn lenient_canonicalisation_keeps_missing_tail() {
        let dir = std::env::temp_dir().join(format!("palisade-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("alias")).unwrap();
        let resolved = canonicalize_lenient(&dir.join("alias/missing/file")).unwrap();
        assert_eq!(resolved, std::fs::canonicalize(dir.join("real")).unwrap().join("missing/file"));
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
        assert!(canonicalize_lenient(&dir.join("dangling")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
