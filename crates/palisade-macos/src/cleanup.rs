//! Removal of the run's own temporary directory, which the command may have left unremovable.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Removes `path` and everything below it; a `path` that is gone already counts as removed.
///
/// With `restore` set, a failed removal gives every directory below `path` its owner's read,
/// write and search permission back and tries once more. The tree is the run's own, and the
/// command may have made a directory mode 000, whose entries then cannot be removed. Set it
/// only once every process of the run is dead, because a process still running could replace
/// a directory with a symbolic link between the check and the change of its permissions.
///
/// NOTE: a file flag such as `uchg`, which `chflags` sets, still makes the removal fail; the
/// run's outcome then lists the directory as not removed.
pub fn remove_run_dir(path: &Path, restore: bool) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) if !restore => return Err(error),
        Err(_) => {}
    }
    restore_permissions(path)?;
    std::fs::remove_dir_all(path)
}

/// Adds the owner's read, write and search permission to `root` and every directory below it,
/// without following symbolic links. The walk keeps its own stack, so a deep tree cannot
/// overflow palisade's.
fn restore_permissions(root: &Path) -> io::Result<()> {
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&dir)?;
        if !metadata.is_dir() {
            continue;
        }
        let mode = metadata.permissions().mode();
        if mode & 0o700 != 0o700 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700))?;
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("palisade-cleanup-{name}-{}", std::process::id()));
        let _ = remove_run_dir(&path, true);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    #[test]
    fn unreadable_subdirectory_is_removed() {
        let root = scratch("locked");
        let locked = root.join("a/locked");
        std::fs::create_dir_all(locked.join("inner")).unwrap();
        std::fs::write(locked.join("inner/file"), b"x").unwrap();
        std::fs::set_permissions(locked.join("inner"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_run_dir(&root, true).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn permissions_are_restored_below_root() {
        // As root, the first removal in `remove_run_dir` succeeds whatever the modes, so this
        // checks the walk itself.
        let root = scratch("modes");
        let locked = root.join("a/locked");
        std::fs::create_dir_all(locked.join("inner")).unwrap();
        std::fs::set_permissions(locked.join("inner"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o100)).unwrap();
        restore_permissions(&root).unwrap();
        let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&locked), 0o700);
        assert_eq!(mode(&locked.join("inner")), 0o700);
        remove_run_dir(&root, true).unwrap();
    }

    #[test]
    fn missing_directory_counts_as_removed() {
        let root = scratch("missing");
        std::fs::remove_dir(&root).unwrap();
        remove_run_dir(&root, false).unwrap();
    }

    #[test]
    fn symlinked_directory_keeps_its_target() {
        let root = scratch("link");
        let outside = scratch("link-target");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::fs::create_dir(root.join("locked")).unwrap();
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_run_dir(&root, true).unwrap();
        assert!(!root.exists());
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o500, "the walk changed the mode of a directory outside the run's");
        remove_run_dir(&outside, true).unwrap();
    }
}
