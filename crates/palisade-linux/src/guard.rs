//! Protected paths in degraded mode. Without a mount namespace nothing keeps `.git/hooks` or
//! `.vscode` read-only inside a writable root: Landlock grants rights on whole directory trees
//! and cannot take them away below. So their content is copied before the run and put back
//! after it. Whatever the command left there is moved aside under a `.rejected-by-palisade`
//! name for the user to inspect.
//!
//! During the run the command sees its own changes. That is harmless inside the sandbox (a hook
//! it plants runs sandboxed). What matters is that nothing it planted survives for a program
//! outside the sandbox to run. If palisade itself is killed with SIGKILL, the restore does not
//! happen, as docs/security.md states.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bounds on what a snapshot holds, so a huge protected tree refuses the run instead of
/// filling memory.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_TOTAL_BYTES: u64 = 16 << 20;
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Snapshot {
    Missing,
    File { bytes: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
    Dir { mode: u32, entries: Vec<(OsString, Snapshot)> },
}

/// The saved state of every protected path.
pub struct Guard {
    saved: Vec<(PathBuf, Snapshot)>,
}

struct Budget {
    bytes: u64,
    entries: usize,
}

fn read_snapshot(path: &Path, budget: &mut Budget) -> Result<Snapshot, String> {
    let meta = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::Missing),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    budget.entries += 1;
    if budget.entries > MAX_ENTRIES {
        return Err(format!("{} holds more than {MAX_ENTRIES} entries", path.display()));
    }
    let mode = meta.mode() & 0o7777;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        return Ok(Snapshot::Symlink(target));
    }
    if file_type.is_dir() {
        let mut entries = Vec::new();
        let listing = fs::read_dir(path).map_err(|error| format!("cannot list {}: {error}", path.display()))?;
        for entry in listing {
            let entry = entry.map_err(|error| format!("cannot list {}: {error}", path.display()))?;
            let name = entry.file_name();
            entries.push((name.clone(), read_snapshot(&path.join(&name), budget)?));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(Snapshot::Dir { mode, entries });
    }
    if !file_type.is_file() {
        // A FIFO, socket or device in a protected place: nothing to save, and palisade never
        // recreates one. It is compared by its absence of content.
        return Ok(Snapshot::File { bytes: Vec::new(), mode: u32::MAX });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    budget.bytes += meta.len();
    if budget.bytes > MAX_TOTAL_BYTES {
        return Err(format!("the protected paths hold more than {MAX_TOTAL_BYTES} bytes"));
    }
    let bytes = fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(Snapshot::File { bytes, mode })
}

fn write_snapshot(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    match snapshot {
        Snapshot::Missing => Ok(()),
        Snapshot::File { mode: u32::MAX, .. } => Ok(()),
        Snapshot::File { bytes, mode } => {
            fs::write(path, bytes)?;
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
        }
        Snapshot::Symlink(target) => std::os::unix::fs::symlink(target, path),
        Snapshot::Dir { mode, entries } => {
            fs::create_dir(path)?;
            for (name, entry) in entries {
                write_snapshot(&path.join(name), entry)?;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
        }
    }
}

/// A free name beside `path` to move the command's version to.
fn aside_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".rejected-by-palisade");
    let first = path.with_file_name(&name);
    if first.symlink_metadata().is_err() {
        return first;
    }
    (1..)
        .map(|n| {
            let mut numbered = name.clone();
            numbered.push(format!(".{n}"));
            path.with_file_name(numbered)
        })
        .find(|candidate| candidate.symlink_metadata().is_err())
        .expect("some numbered name is free")
}

impl Guard {
    /// Saves every path in `paths`. Fails when one cannot be read or the whole is too large.
    pub fn capture(paths: &[PathBuf]) -> Result<Guard, String> {
        let mut budget = Budget { bytes: 0, entries: 0 };
        let saved = paths
            .iter()
            .map(|path| read_snapshot(path, &mut budget).map(|snapshot| (path.clone(), snapshot)))
            .collect::<Result<_, _>>()?;
        Ok(Guard { saved })
    }

    /// Puts every changed path back as it was, moving the command's version aside. Returns one
    /// line per path it restored, or failed to restore.
    pub fn restore(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (path, before) in &self.saved {
            // The command may have replaced a directory on the way with a symlink, and following it
            // would move or write files elsewhere with palisade's rights.
            if let Some(link) = path.ancestors().skip(1).find(|ancestor| ancestor.symlink_metadata().is_ok_and(|meta| meta.file_type().is_symlink())) {
                notes.push(format!(
                    "warning: {} is now a symlink, so the protected path {} was not checked or restored; inspect it before trusting it",
                    link.display(),
                    path.display()
                ));
                continue;
            }
            let mut budget = Budget { bytes: 0, entries: 0 };
            let now = read_snapshot(path, &mut budget);
            if now.as_ref() == Ok(before) {
                continue;
            }
            let exists = path.symlink_metadata().is_ok();
            let aside = aside_name(path);
            if exists {
                if let Err(error) = fs::rename(path, &aside) {
                    notes.push(format!(
                        "warning: the command changed the protected path {}, and moving it aside failed: {error}; inspect it before trusting it",
                        path.display()
                    ));
                    continue;
                }
            }
            if let Some(parent) = path.parent() {
                let _ = fs::create_dir_all(parent);
            }
            match write_snapshot(path, before) {
                Ok(()) if exists => notes.push(format!(
                    "restored the protected path {}, which the command changed; its version is in {}",
                    path.display(),
                    aside.display()
                )),
                Ok(()) => notes.push(format!("the command changed the protected path {}, now removed", path.display())),
                Err(error) => notes.push(format!(
                    "warning: failed to restore the protected path {}: {error}; the command's version is in {}",
                    path.display(),
                    aside.display()
                )),
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_and_created_paths_are_put_back() {
        let dir = std::env::temp_dir().join(format!("palisade-guard-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("hooks")).unwrap();
        fs::write(dir.join("hooks/pre-commit.sample"), "sample").unwrap();
        fs::write(dir.join("config"), "[core]\n").unwrap();
        let paths = vec![dir.join("hooks"), dir.join("config"), dir.join("absent")];
        let guard = Guard::capture(&paths).unwrap();

        fs::write(dir.join("hooks/pre-commit"), "#!/bin/sh\necho planted\n").unwrap();
        fs::write(dir.join("config"), "[core]\nfsmonitor = evil\n").unwrap();
        fs::create_dir(dir.join("absent")).unwrap();
        let notes = guard.restore();
        assert_eq!(notes.len(), 3, "{notes:?}");

        assert!(!dir.join("hooks/pre-commit").exists());
        assert_eq!(fs::read_to_string(dir.join("hooks/pre-commit.sample")).unwrap(), "sample");
        assert_eq!(fs::read_to_string(dir.join("config")).unwrap(), "[core]\n");
        assert!(!dir.join("absent").exists());
        assert!(dir.join("hooks.rejected-by-palisade/pre-commit").exists(), "the command's version is kept aside");
        assert!(guard.restore().is_empty(), "a second restore finds nothing to do");
        fs::remove_dir_all(&dir).unwrap();
    }
}
