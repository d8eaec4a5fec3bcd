//! Neutralising a git repository that the command created during the run, for the backends on
//! Unix.
//!
//! Protected names are enforced with mounts on Linux and with rules on existing paths on macOS;
//! either way a directory without `.git` must stay free for `git init`, so a repository
//! created inside the sandbox starts with writable hooks and configuration. When the run ends
//! (every process of it is dead), palisade looks for `.git` entries in the writable roots again,
//! with the bounded search that protection uses, and disables what each new one would make the
//! host's git execute. On macOS an entry counts in any ASCII case (`.GIT`), because git opens
//! it as `.git` on a case-insensitive volume (`GIT_NAME_IGNORES_CASE` in `git.rs`):
//! - hooks other than git's own `*.sample` files are renamed with a `.disabled-by-palisade`
//!   suffix and lose their execute bits, so git no longer finds or runs them;
//! - configuration keys outside a short list of harmless ones (the ones `git init`, `git clone`
//!   and `git config user.*` write) are removed from `.git/config`, and the original is kept
//!   beside it as `config.rejected-by-palisade`;
//! - `commondir`, `gitdir` and `config.worktree`, which redirect git or add configuration, are
//!   removed.
//!
//! Every change is reported on stderr. Nothing is deleted except those three redirect files,
//! which a new repository never needs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Configuration keys kept in a repository created inside the sandbox, as `section.key` in
/// lower case. A subsection (`remote "origin"`) is matched by its section alone.
const HARMLESS_KEYS: &[&str] = &[
    "core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
    "core.ignorecase", "core.precomposeunicode", "core.symlinks", "core.autocrlf", "core.eol",
    "user.name", "user.email", "init.defaultbranch", "remote.url", "remote.fetch",
    "remote.pushurl", "branch.remote", "branch.merge", "branch.rebase", "extensions.objectformat",
];

/// The `.git` entries of the writable roots before the run, found with the same bounded
/// search that protection uses.
pub struct NewRepositories<'a> {
    roots: &'a [PathBuf],
    before: &'a [PathBuf],
}

impl<'a> NewRepositories<'a> {
    /// Takes the roots and the `.git` entries the policy found in them when it was resolved.
    pub fn capture(roots: &'a [PathBuf], before: &'a [PathBuf]) -> NewRepositories<'a> {
        NewRepositories { roots, before }
    }

    /// Neutralises every `.git` entry that appeared in the roots during the run.
    ///
    /// NOTE: the search has the bounds of [`crate::git_entries`], so a repository
    /// created deeper than it looks keeps what the command planted.
    pub fn scrub(&self) {
        let found: Vec<PathBuf> = self.roots.iter().flat_map(|root| crate::git_entries(root)).collect();
        for git_dir in found.iter().filter(|entry| !self.before.contains(entry)) {
            match git_dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => scrub_repository(git_dir),
                // A `.git` file or symlink points git at a directory the command chose.
                Ok(_) => match fs::remove_file(git_dir) {
                    Ok(()) => report(git_dir, "removed: a .git pointer the command created would redirect git"),
                    Err(error) => warn(git_dir, &format!("failed to remove this .git pointer the command created: {error}")),
                },
                Err(_) => {}
            }
        }
    }
}

fn report(path: &Path, what: &str) {
    eprintln!("palisade: {}: {what}", path.display());
}

fn warn(path: &Path, what: &str) {
    eprintln!("palisade: warning: {}: {what}; inspect it before running git there", path.display());
}

fn scrub_repository(git_dir: &Path) {
    disable_hooks(&git_dir.join("hooks"));
    filter_config(&git_dir.join("config"));
    for name in ["commondir", "gitdir", "config.worktree"] {
        let path = git_dir.join(name);
        if path.symlink_metadata().is_ok() {
            let removed = if path.is_dir() && !path.is_symlink() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            match removed {
                Ok(()) => report(&path, "removed: it would redirect git or add configuration"),
                Err(error) => warn(&path, &format!("failed to remove: {error}")),
            }
        }
    }
}

fn disable_hooks(hooks: &Path) {
    let Ok(meta) = hooks.symlink_metadata() else { return };
    if !meta.is_dir() {
        // A symlink or file in place of the hooks directory: move it aside whole.
        disable(hooks);
        return;
    }
    let Ok(entries) = fs::read_dir(hooks) else {
        warn(hooks, "failed to list the hooks the command may have created");
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_sample = name.ends_with(".sample") && entry.file_type().is_ok_and(|kind| kind.is_file());
        if !is_sample && !name.ends_with(".disabled-by-palisade") {
            disable(&path);
        }
    }
}

/// Renames `path` with the `.disabled-by-palisade` suffix and clears its execute bits.
fn disable(path: &Path) {
    let mut target = path.as_os_str().to_owned();
    target.push(".disabled-by-palisade");
    let target = PathBuf::from(target);
    if let Err(error) = fs::rename(path, &target) {
        warn(path, &format!("failed to disable this hook the command created: {error}"));
        return;
    }
    if let Ok(meta) = target.symlink_metadata() {
        if meta.is_file() {
            let _ = fs::set_permissions(&target, fs::Permissions::from_mode(meta.permissions().mode() & 0o666));
        }
    }
    report(path, &format!("disabled a hook the command created (renamed to {})", target.display()));
}

/// Removes every configuration line that is not a harmless key, keeping the original beside.
fn filter_config(config: &Path) {
    let Ok(meta) = config.symlink_metadata() else { return };
    if !meta.is_file() {
        disable(config);
        return;
    }
    let Ok(text) = fs::read_to_string(config) else {
        warn(config, "failed to read the configuration the command created");
        return;
    };
    let (kept, rejected) = split_config(&text);
    if rejected.is_empty() {
        return;
    }
    let backup = config.with_file_name("config.rejected-by-palisade");
    let written = fs::write(&backup, &text)
        .and_then(|()| fs::set_permissions(&backup, fs::Permissions::from_mode(0o600)))
        .and_then(|()| fs::write(config.with_file_name("config.palisade-tmp"), &kept))
        .and_then(|()| fs::rename(config.with_file_name("config.palisade-tmp"), config));
    match written {
        Ok(()) => report(
            config,
            &format!("removed configuration the command set that git would act on ({}); the original is in {}", rejected.join(", "), backup.display()),
        ),
        Err(error) => warn(config, &format!("failed to remove configuration the command set: {error}")),
    }
}

/// Splits a git config text into the harmless lines and the names of the rejected keys.
/// Anything the reader does not recognise (includes, continuation lines) is rejected.
fn split_config(text: &str) -> (String, Vec<String>) {
    let mut kept = String::new();
    let mut rejected = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        if trimmed.starts_with('[') {
            section = trimmed.trim_start_matches('[').split([']', ' ', '"', '.']).next().unwrap_or("").to_ascii_lowercase();
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        let key = trimmed.split(['=', ' ', '\t']).next().unwrap_or("").to_ascii_lowercase();
        let name = format!("{section}.{key}");
        if HARMLESS_KEYS.contains(&name.as_str()) && !line.trim_end().ends_with('\\') {
            kept.push_str(line);
            kept.push('\n');
        } else {
            rejected.push(name);
        }
    }
    (kept, rejected)
}

#[cfg(test)]
mod tests {
    use super::split_config;

    #[test]
    fn init_config_is_kept_whole() {
        let text = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n[remote \"origin\"]\n\turl = https://example.invalid/r.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n";
        let (kept, rejected) = split_config(text);
        assert_eq!(kept, text);
        assert!(rejected.is_empty());
    }

    #[test]
    fn executable_keys_are_rejected() {
        let text = "[core]\n\tfsmonitor = touch /tmp/x\n\thooksPath = h\n[alias]\n\tst = !sh\n[include]\n\tpath = other\n[core]\n\tbare = false\n";
        let (kept, rejected) = split_config(text);
        assert_eq!(rejected, vec!["core.fsmonitor", "core.hookspath", "alias.st", "include.path"]);
        assert_eq!(kept, "[core]\n[alias]\n[include]\n[core]\n\tbare = false\n");
    }
}
