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
/// Missing names are looked up one by one. An earlier version listed each parent directory
/// instead and found missing names in the listing, but reading a directory cost more than the
/// failed `statx` calls it saved. Without listings, a run of the default profile took 0.1 to
/// 0.2 ms less on a 2-CPU VM, with the workspace in a small directory and in a `/tmp` of 270
/// entries alike (docs/benchmarks.md).
pub(crate) mod listing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::path::Path;

    thread_local! {
        /// Whether each path looked up is a symlink, or `None` for a missing one. `None`
        /// outside [`with_cache`]. Keyed by the path's bytes: the paths are normalised, and
        /// comparing bytes costs less than hashing a `Path` component by component.
        static LOOKUPS: RefCell<Option<BTreeMap<OsString, Option<bool>>>> = const { RefCell::new(None) };
    }

    /// Runs `work` with lookups cached, and drops them afterwards so a later resolution reads
    /// the filesystem as it is then.
    pub fn with_cache<T>(work: impl FnOnce() -> T) -> T {
        LOOKUPS.with(|cell| *cell.borrow_mut() = Some(BTreeMap::new()));
        let result = work();
        LOOKUPS.with(|cell| *cell.borrow_mut() = None);
        result
    }

    /// Looks `path` up without following a final symlink and returns whether it is a symlink.
    /// Within [`with_cache`], a path looked up before, found or missing, is returned from
    /// memory: resolution takes the filesystem as it was when it first looked.
    pub fn lookup(path: &Path) -> std::io::Result<bool> {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        if let Some(known) = LOOKUPS.with(|cell| cell.borrow().as_ref().and_then(|cache| cache.get(path.as_os_str()).copied())) {
            return known.ok_or_else(missing);
        }
        let found = match path.symlink_metadata() {
            Ok(meta) => Some(meta.file_type().is_symlink()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        LOOKUPS.with(|cell| {
            if let Some(cache) = cell.borrow_mut().as_mut() {
                cache.insert(path.as_os_str().to_owned(), found);
            }
        });
        found.ok_or_else(missing)
    }

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
