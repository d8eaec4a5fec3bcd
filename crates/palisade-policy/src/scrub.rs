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
//! The command may have taken away its own permissions on what it created (`chmod 555
//! .git/hooks`). So before those changes, the owner gets back read, write and search
//! permission on the repository and its hooks directory, and read and write permission on its
//! configuration. None of these changes follows a symbolic link.
//!
//! Every change is reported on stderr, and so is every failure, which [`NewRepositories::scrub`]
//! also returns. Nothing is deleted except those three redirect files, which a new repository
//! never needs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
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

    /// Neutralises every `.git` entry that appeared in the roots during the run. Returns the
    /// failures, one message each, which are printed on stderr too; a repository named in
    /// one may still run what the command planted.
    ///
    /// NOTE: the search has the bounds of [`crate::git_entries`], so a repository
    /// created deeper than it looks keeps what the command planted.
    #[must_use = "a failure leaves hooks or configuration the command planted in place"]
    pub fn scrub(&self) -> Vec<String> {
        let mut failures = Failures::default();
        let found: Vec<PathBuf> = self.roots.iter().flat_map(|root| crate::git_entries(root)).collect();
        for git_dir in found.iter().filter(|entry| !self.before.contains(entry)) {
            match git_dir.symlink_metadata() {
                Ok(meta) if meta.is_dir() => scrub_repository(git_dir, &mut failures),
                // A `.git` file or symlink points git at a directory the command chose.
                Ok(_) => match fs::remove_file(git_dir) {
                    Ok(()) => report(git_dir, "removed: a .git pointer the command created would redirect git"),
                    Err(error) => failures.warn(git_dir, &format!("failed to remove this .git pointer the command created: {error}")),
                },
                Err(_) => {}
            }
        }
        failures.messages
    }
}

fn report(path: &Path, what: &str) {
    eprintln!("palisade: {}: {what}", path.display());
}

/// The failures of one scrub, in the order they happened.
#[derive(Default)]
struct Failures {
    messages: Vec<String>,
}

impl Failures {
    /// Prints a failure on stderr and records it.
    fn warn(&mut self, path: &Path, what: &str) {
        let message = format!("{}: {what}; inspect it before running git there", path.display());
        eprintln!("palisade: warning: {message}");
        self.messages.push(message);
    }
}

fn scrub_repository(git_dir: &Path, failures: &mut Failures) {
    // The renames and the new configuration files below are entries of these directories.
    restore_owner_access(git_dir, 0o700, failures);
    restore_owner_access(&git_dir.join("hooks"), 0o700, failures);
    restore_owner_access(&git_dir.join("config"), 0o600, failures);
    disable_hooks(&git_dir.join("hooks"), failures);
    filter_config(&git_dir.join("config"), failures);
    for name in ["commondir", "gitdir", "config.worktree"] {
        let path = git_dir.join(name);
        if path.symlink_metadata().is_ok() {
            let removed = if path.is_dir() && !path.is_symlink() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            match removed {
                Ok(()) => report(&path, "removed: it would redirect git or add configuration"),
                Err(error) => failures.warn(&path, &format!("failed to remove: {error}")),
            }
        }
    }
}

/// Adds the owner permission bits `owner_bits` to `path`, a directory or regular file the
/// command created, when it lacks any of them. A symbolic link, and a path that does not
/// exist, is left alone: the steps after this one move a link aside whole.
fn restore_owner_access(path: &Path, owner_bits: u32, failures: &mut Failures) {
    let Ok(meta) = path.symlink_metadata() else { return };
    let mode = meta.permissions().mode();
    if !(meta.is_dir() || meta.is_file()) || mode & owner_bits == owner_bits {
        return;
    }
    if let Err(error) = chmod_no_follow(path, (mode | owner_bits) & 0o7777) {
        failures.warn(path, &format!("failed to give the owner back the permissions the command removed: {error}"));
    }
}

/// Sets the mode of `path` itself, failing rather than following a symbolic link that
/// replaced it since it was examined.
fn chmod_no_follow(path: &Path, mode: u32) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
    // SAFETY: the path is a NUL-terminated string that outlives the call, and fchmodat reads
    // nothing else of this process's memory. With AT_SYMLINK_NOFOLLOW, glibc and macOS fail
    // on a symbolic link instead of changing its target.
    let status = unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode as libc::mode_t, libc::AT_SYMLINK_NOFOLLOW) };
    if status == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn disable_hooks(hooks: &Path, failures: &mut Failures) {
    let Ok(meta) = hooks.symlink_metadata() else { return };
    if !meta.is_dir() {
        // A symlink or file in place of the hooks directory: move it aside whole.
        disable(hooks, failures);
        return;
    }
    let Ok(entries) = fs::read_dir(hooks) else {
        failures.warn(hooks, "failed to list the hooks the command may have created");
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_sample = name.ends_with(".sample") && entry.file_type().is_ok_and(|kind| kind.is_file());
        if !is_sample && !name.ends_with(".disabled-by-palisade") {
            disable(&path, failures);
        }
    }
}

/// Renames `path` with the `.disabled-by-palisade` suffix and clears its execute bits.
fn disable(path: &Path, failures: &mut Failures) {
    let mut target = path.as_os_str().to_owned();
    target.push(".disabled-by-palisade");
    let target = PathBuf::from(target);
    if let Err(error) = fs::rename(path, &target) {
        failures.warn(path, &format!("failed to disable this hook the command created: {error}"));
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
fn filter_config(config: &Path, failures: &mut Failures) {
    let Ok(meta) = config.symlink_metadata() else { return };
    if !meta.is_file() {
        disable(config, failures);
        return;
    }
    let text = match fs::read_to_string(config) {
        Ok(text) => text,
        Err(error) => {
            failures.warn(config, &format!("failed to read the configuration the command created: {error}"));
            return;
        }
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
        Err(error) => failures.warn(config, &format!("failed to remove configuration the command set: {error}")),
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
    use super::{chmod_no_follow, split_config, NewRepositories};
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};

    /// A scratch directory with a repository at `repo/.git`, as `git init` leaves it plus a
    /// hook, removed when dropped.
    struct Scratch {
        root: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let root = std::env::temp_dir().join(format!("palisade-scrub-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("repo/.git/hooks")).unwrap();
            fs::write(root.join("repo/.git/config"), "[core]\n\tbare = false\n\tfsmonitor = touch x\n").unwrap();
            fs::write(root.join("repo/.git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
            fs::set_permissions(root.join("repo/.git/hooks/pre-commit"), fs::Permissions::from_mode(0o755)).unwrap();
            Scratch { root }
        }

        fn git(&self) -> PathBuf {
            self.root.join("repo/.git")
        }

        fn scrub(&self) -> Vec<String> {
            let roots = [self.root.clone()];
            NewRepositories::capture(&roots, &[]).scrub()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for dir in [self.git(), self.git().join("hooks")] {
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
            }
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn mode(path: &Path) -> u32 {
        path.symlink_metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn scrub_restores_owner_permissions_first() {
        let scratch = Scratch::new("modes");
        let git = scratch.git();
        fs::set_permissions(git.join("config"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(git.join("hooks"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&git, fs::Permissions::from_mode(0o555)).unwrap();

        let failures = scratch.scrub();

        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(mode(&git), 0o755);
        assert_eq!(mode(&git.join("hooks")), 0o755);
        assert!(!git.join("hooks/pre-commit").exists(), "the hook was not renamed");
        assert!(git.join("hooks/pre-commit.disabled-by-palisade").exists());
        assert_eq!(fs::read_to_string(git.join("config")).unwrap(), "[core]\n\tbare = false\n");
    }

    #[test]
    fn scrub_leaves_symlinked_hooks_target_alone() {
        let scratch = Scratch::new("link");
        let outside = scratch.root.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o555)).unwrap();
        fs::remove_file(scratch.git().join("hooks/pre-commit")).unwrap();
        fs::remove_dir(scratch.git().join("hooks")).unwrap();
        std::os::unix::fs::symlink(&outside, scratch.git().join("hooks")).unwrap();

        let failures = scratch.scrub();

        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(mode(&outside), 0o555, "the scrub changed the mode of a symlink's target");
        assert!(scratch.git().join("hooks.disabled-by-palisade").is_symlink());
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn chmod_no_follow_rejects_symlink() {
        let scratch = Scratch::new("chmod");
        let target = scratch.root.join("target");
        fs::write(&target, "").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = scratch.root.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        assert!(chmod_no_follow(&link, 0o777).is_err());
        assert_eq!(mode(&target), 0o600);
    }

    #[test]
    fn scrub_returns_failed_rename() {
        // A name that fits NAME_MAX alone but not with the suffix, so the rename fails even
        // for root.
        let scratch = Scratch::new("fail");
        let hook = scratch.git().join("hooks").join("h".repeat(250));
        fs::write(&hook, "").unwrap();

        let failures = scratch.scrub();

        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains(&"h".repeat(250)), "{}", failures[0]);
        assert!(failures[0].contains("failed to disable this hook"), "{}", failures[0]);
    }

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
