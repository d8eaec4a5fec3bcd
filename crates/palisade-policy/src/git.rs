//! What palisade needs to know about git repositories inside writable roots: where hooks
//! live (`core.hooksPath`), and where a linked worktree keeps its metadata.
//!
//! Only the two keys palisade needs are read, with a deliberately small reader: a full git
//! config parser (includes, conditional includes) would be a large dependency for one value.
//! NOTE: `include.path` and `includeIf` are not followed, so a `core.hooksPath` set only in an
//! included file is not protected unless it is one of the default protected names.

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
}
