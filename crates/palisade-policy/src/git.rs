//! Facts about git repositories inside writable roots that protection depends on: the hooks
//! directory (`core.hooksPath`), nested repositories and submodules, and the metadata of
//! linked worktrees.
//!
//! Only the two keys palisade needs are read, with a deliberately small reader: a full git
//! config parser (includes, conditional includes) would be a large dependency for one value.
//! NOTE: `include.path` and `includeIf` are not followed, so a `core.hooksPath` set only in an
//! included file is not protected unless it is one of the default protected names.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Returns the values of `core.hooksPath` found in a git config file, if any.
pub fn hooks_paths(config_file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(config_file) else {
        return Vec::new();
    };
    let mut in_core = false;
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let section = line.trim_start_matches('[').split([']', ' ', '"']).next().unwrap_or("");
            in_core = section.eq_ignore_ascii_case("core");
            continue;
        }
        if !in_core {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim().eq_ignore_ascii_case("hookspath") {
                let value = value.trim().trim_matches('"').to_owned();
                if !value.is_empty() {
                    found.push(value);
                }
            }
        }
    }
    found
}

/// The metadata of a linked worktree or submodule whose `.git` is a pointer file.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkedGitDir {
    /// The per-worktree directory (`<main>/.git/worktrees/<name>`).
    pub git_dir: PathBuf,
    /// The shared repository directory (`<main>/.git`).
    pub common_dir: PathBuf,
}

/// Reads a `.git` pointer file (`gitdir: PATH`) and the `commondir` file beside its target.
pub fn linked_git_dir(pointer_file: &Path) -> Option<LinkedGitDir> {
    let text = std::fs::read_to_string(pointer_file).ok()?;
    let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    let base = pointer_file.parent()?;
    let git_dir = std::fs::canonicalize(base.join(target)).ok()?;
    let common_dir = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(common) => std::fs::canonicalize(git_dir.join(common.trim())).ok()?,
        Err(_) => git_dir.clone(),
    };
    Some(LinkedGitDir { git_dir, common_dir })
}

/// Directory names the search for nested repositories never enters: they are large, generated,
/// or git's own metadata.
const SKIPPED_DIRS: &[&str] = &[".git", "node_modules", "target", ".venv", "venv", "__pycache__", ".tox", ".cache"];

/// Whether a `.git` entry is recognised in any ASCII case. macOS volumes are case-insensitive
/// by default, so git opens a `.GIT` directory when it looks up `.git`. On Linux a `.GIT` is
/// another directory, which git ignores. On a case-sensitive macOS volume a `.GIT` is treated
/// as a repository all the same, which costs at most a scrub of a directory git never reads.
///
/// NOTE: a case-insensitive mount on Linux (vfat, exFAT, an ext4 casefold directory) is
/// matched case-sensitively, so a `.GIT` there is neither protected nor scrubbed.
pub const GIT_NAME_IGNORES_CASE: bool = cfg!(target_os = "macos");

/// Returns whether `name` is git's metadata name `.git`, in any ASCII case when `ignore_case`.
pub fn is_git_name(name: &OsStr, ignore_case: bool) -> bool {
    if ignore_case {
        name.eq_ignore_ascii_case(".git")
    } else {
        name == ".git"
    }
}

/// Maximum depth below a writable root at which nested repositories are searched for.
const SEARCH_DEPTH: usize = 4;

/// How many directories the search reads at most, so a huge workspace cannot slow every start.
const SEARCH_BUDGET: usize = 2000;

/// Returns every git directory a host-side git may use for repositories in `root`: `.git`
/// directories of the root and of nested repositories, and the module directories of
/// submodules under them. Also returns `.git` pointer files (worktrees and submodules). A
/// `.git` entry is recognised in any ASCII case when `ignore_case`, which callers set to
/// [`GIT_NAME_IGNORES_CASE`] (tests simulate macOS with `true`).
///
/// NOTE: the search stops at [`SEARCH_DEPTH`] levels and [`SEARCH_BUDGET`] directories, so a
/// repository nested deeper in a very large workspace keeps writable hooks.
pub fn repositories(root: &Path, ignore_case: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut git_dirs = Vec::new();
    let mut pointer_files = Vec::new();
    let mut budget = SEARCH_BUDGET;
    let mut pending = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else { continue };
            if is_git_name(&name, ignore_case) {
                if kind.is_dir() {
                    collect_modules(&entry.path(), &mut git_dirs);
                    collect_worktrees(&entry.path(), &mut git_dirs);
                    git_dirs.push(entry.path());
                } else {
                    // A `.git` file (worktree, submodule) or symlink points git elsewhere.
                    pointer_files.push(entry.path());
                }
            } else if kind.is_dir() && depth < SEARCH_DEPTH && !SKIPPED_DIRS.iter().any(|skip| name == *skip) {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    (git_dirs, pointer_files)
}

/// Returns every `.git` entry in `root` and in nested repositories, within the search limits:
/// directories and pointer files alike, but not the module and worktree directories inside
/// them.
pub fn git_entries(root: &Path) -> Vec<PathBuf> {
    search_git_entries(root, GIT_NAME_IGNORES_CASE)
}

fn search_git_entries(root: &Path, ignore_case: bool) -> Vec<PathBuf> {
    let (git_dirs, pointer_files) = repositories(root, ignore_case);
    git_dirs.into_iter().filter(|dir| dir.file_name().is_some_and(|name| is_git_name(name, ignore_case))).chain(pointer_files).collect()
}

/// Adds the metadata directories of linked worktrees (`.git/worktrees/<name>`): each has its
/// own `commondir`, `gitdir`, `config.worktree` and possibly hooks that git run in that
/// worktree follows.
fn collect_worktrees(git_dir: &Path, found: &mut Vec<PathBuf>) {
    found.extend(worktree_dirs(git_dir));
}

/// Returns the metadata directories of the linked worktrees of `git_dir`.
pub fn worktree_dirs(git_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(git_dir.join("worktrees")) else { return Vec::new() };
    entries.flatten().filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir())).map(|entry| entry.path()).collect()
}

/// Adds the git directories of submodules (`.git/modules/<name>`, nested to any depth).
fn collect_modules(git_dir: &Path, found: &mut Vec<PathBuf>) {
    scan_modules(&git_dir.join("modules"), found, 0);
}

/// Scans a `modules` directory. A submodule whose name contains slashes (`libs/foo`) sits in
/// nested directories, so an entry without `HEAD` is scanned again, a few levels deep at most.
fn scan_modules(dir: &Path, found: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let path = entry.path();
        if path.join("HEAD").exists() {
            scan_modules(&path.join("modules"), found, 0);
            found.push(path);
        } else if depth < SEARCH_DEPTH {
            scan_modules(&path, found, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_path_is_read_from_core_section_only() {
        let dir = std::env::temp_dir().join(format!("palisade-git-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config");
        std::fs::write(&file, "[core]\n\tbare = false\n\thooksPath = .husky/_\n[alias]\n\thookspath = nope\n").unwrap();
        assert_eq!(hooks_paths(&file), vec![".husky/_".to_owned()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nested_repositories_and_modules_are_found() {
        let dir = std::env::temp_dir().join(format!("palisade-git-nested-{}", std::process::id()));
        for path in [".git/modules/lib/refs", "vendor/lib/.git/hooks", "node_modules/x/.git", "sub"] {
            std::fs::create_dir_all(dir.join(path)).unwrap();
        }
        std::fs::write(dir.join(".git/modules/lib/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(dir.join("sub/.git"), "gitdir: ../.git/modules/lib\n").unwrap();
        let (git_dirs, pointers) = repositories(&dir, GIT_NAME_IGNORES_CASE);
        assert!(git_dirs.contains(&dir.join(".git")));
        assert!(git_dirs.contains(&dir.join(".git/modules/lib")));
        assert!(git_dirs.contains(&dir.join("vendor/lib/.git")));
        assert!(!git_dirs.contains(&dir.join("node_modules/x/.git")));
        assert_eq!(pointers, vec![dir.join("sub/.git")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn git_name_case_variants() {
        for name in [".GIT", ".Git", ".gIT"] {
            assert!(is_git_name(OsStr::new(name), true), "{name}");
            assert!(!is_git_name(OsStr::new(name), false), "{name}");
        }
        assert!(is_git_name(OsStr::new(".git"), false));
        for name in ["git", ".gitx", ".github", "_git"] {
            assert!(!is_git_name(OsStr::new(name), true), "{name}");
        }
    }

    // A case-insensitive volume (macOS's default) opens `.GIT` for `.git`, so a repository
    // created under a case variant of the name must be found for the scrub.
    #[test]
    fn case_variant_entries_found() {
        let dir = std::env::temp_dir().join(format!("palisade-git-case-{}", std::process::id()));
        for path in [".GIT/hooks", "vendor/lib/.Git/hooks", "sub"] {
            std::fs::create_dir_all(dir.join(path)).unwrap();
        }
        std::fs::write(dir.join("sub/.gIT"), "gitdir: /elsewhere\n").unwrap();
        let mut found = search_git_entries(&dir, true);
        found.sort();
        assert_eq!(found, vec![dir.join(".GIT"), dir.join("sub/.gIT"), dir.join("vendor/lib/.Git")]);
        assert!(search_git_entries(&dir, false).is_empty(), "case-sensitive search found a variant");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
