//! The temporary world of one selftest on Windows. It holds a workspace with a git repository
//! and a copy of this binary, and a fake home directory with a planted fake SSH key. Outside the
//! workspace are a plain directory, one that Authenticated Users may modify, and the target of
//! a junction planted in the workspace. All of it lies under one fresh directory below
//! `%TEMP%`, which is removed at the end.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::inside::create_link;
use super::sys;

/// The contents of the planted fake key.
pub const FAKE_KEY: &str = "fake key planted by palisade selftest, not a credential\r\n";
/// The contents of the file in each directory outside the workspace.
const EXISTING_CONTENT: &str = "written by palisade selftest before the probe\r\n";

/// The temporary directories of one selftest, removed when dropped.
pub struct Scratch {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub outside: PathBuf,
    /// A directory outside the workspace whose ACL lets Authenticated Users modify it, or why
    /// selftest could not give it that entry.
    pub users_may_modify: Result<PathBuf, String>,
    /// The junction (or directory symbolic link) in the workspace that leads to
    /// [`Scratch::link_target`], or why selftest could create neither.
    pub planted_link: Result<PathBuf, String>,
    /// A directory outside the workspace that Authenticated Users may modify, reached from the
    /// workspace through [`Scratch::planted_link`].
    pub link_target: PathBuf,
    /// The copy of this binary that runs both `palisade run` and each probe.
    pub probe_exe: PathBuf,
}

impl Scratch {
    /// Creates the scratch world, owned by this process's user.
    pub fn create() -> anyhow::Result<Scratch> {
        let temp = std::env::temp_dir();
        let temp = usual_form(&fs::canonicalize(&temp).with_context(|| format!("failed to resolve the temporary directory {}", temp.display()))?);
        let root = create_fresh_dir(&temp)?;
        let workspace = root.join("workspace");
        // A name of its own, so that selftest finds the processes of its probes by their
        // executable's name and distinguishes them from those of another selftest.
        let probe_exe = workspace.join(format!("palisade-probe-{}.exe", std::process::id()));
        let mut scratch = Scratch {
            home: root.join("home"),
            outside: root.join("outside"),
            users_may_modify: Err(String::new()),
            planted_link: Err(String::new()),
            link_target: root.join("junction-target"),
            probe_exe,
            workspace,
            root,
        };
        // Every step from here on may fail; `scratch` removes what was made.
        scratch.fill()?;
        Ok(scratch)
    }

    fn fill(&mut self) -> anyhow::Result<()> {
        let git = self.workspace.join(".git");
        for dir in [&self.workspace, &git.join("hooks"), &git.join("objects"), &git.join(r"refs\heads")] {
            create_dir(dir)?;
        }
        // The minimum that makes `.git` a repository to git and to palisade's protection.
        write_file(&git.join("HEAD"), "ref: refs/heads/main\n")?;
        write_file(&git.join("config"), "[core]\n\trepositoryformatversion = 0\n\tbare = false\n")?;

        // A copy in the workspace: the sandbox accounts cannot read the caller's profile, where
        // this binary usually lies, and `palisade run` starts its runner stage from its own
        // executable as the sandbox account. The copy therefore runs `palisade run` too.
        let exe = std::env::current_exe().context("failed to find palisade's own executable")?;
        fs::copy(&exe, &self.probe_exe).with_context(|| format!("failed to copy {} to {}", exe.display(), self.probe_exe.display()))?;

        create_dir(&self.home.join(".ssh"))?;
        write_file(&self.fake_key(), FAKE_KEY)?;

        create_dir(&self.outside)?;
        write_file(&self.outside.join("existing"), EXISTING_CONTENT)?;

        let users_may_modify = self.root.join("users-may-modify");
        create_dir(&users_may_modify)?;
        self.users_may_modify = open_to_authenticated_users(&users_may_modify).map(|()| users_may_modify);

        create_dir(&self.link_target)?;
        let link = self.workspace.join("junction-planted");
        self.planted_link = open_to_authenticated_users(&self.link_target)
            .and_then(|()| create_link(&link, &self.link_target))
            .and_then(|kind| check_link(&link, &self.link_target, kind))
            .map(|()| link);
        Ok(())
    }

    pub fn fake_key(&self) -> PathBuf {
        self.home.join(r".ssh\id_ed25519")
    }

    /// Returns the file name of the probe's executable, by which its processes are found.
    pub fn probe_image(&self) -> String {
        self.probe_exe.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // std's remove_dir_all removes a junction or symbolic link without following it.
        if let Err(error) = fs::remove_dir_all(&self.root) {
            tracing::warn!("failed to remove the selftest directory {}: {error}", self.root.display());
        }
    }
}

/// Gives Authenticated Users modify access to `dir` and writes the file the probes append to,
/// which inherits that access. Returns why it could not.
fn open_to_authenticated_users(dir: &Path) -> Result<(), String> {
    sys::grant_authenticated_users_modify(dir).map_err(|error| format!("giving Authenticated Users modify access to {} failed: {error}", dir.display()))?;
    fs::write(dir.join("existing"), EXISTING_CONTENT).map_err(|error| format!("writing {} failed: {error}", dir.join("existing").display()))
}

/// Checks that a file written through `link` lands in `target`, as it must for the junction
/// probe to show anything. Under Wine 8.0 a directory symbolic link leads nowhere.
fn check_link(link: &Path, target: &Path, kind: &str) -> Result<(), String> {
    let through = link.join("link-check");
    let written = fs::write(&through, b"");
    let arrived = target.join("link-check").is_file();
    let _ = fs::remove_file(target.join("link-check"));
    match written {
        Ok(()) if arrived => Ok(()),
        Ok(()) => Err(format!("{kind} was created, but a file written through it did not reach its target")),
        Err(error) => Err(format!("{kind} was created, but writing through it failed: {error}")),
    }
}

/// Returns `path` without the `\\?\` prefix that `fs::canonicalize` adds, where the path needs
/// none, so that it compares equal to the paths of a resolved policy.
fn usual_form(path: &Path) -> PathBuf {
    /// Windows' `MAX_PATH`: longer paths need the `\\?\` form.
    const MAX_PATH: usize = 260;
    let text = path.to_string_lossy();
    let usual = text.strip_prefix(r"\\?\").filter(|rest| {
        let bytes = rest.as_bytes();
        bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && &bytes[1..3] == b":\\" && rest.len() < MAX_PATH
    });
    usual.map_or_else(|| path.to_path_buf(), PathBuf::from)
}

/// Creates a new directory with a unique name in `parent`.
fn create_fresh_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.subsec_nanos()).unwrap_or(0);
    for attempt in 0..100u32 {
        let dir = parent.join(format!("palisade-selftest-{}-{stamp}-{attempt}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error).with_context(|| format!("failed to create a directory in {}", parent.display())),
        }
    }
    anyhow::bail!("failed to create a directory in {}: 100 names were taken", parent.display())
}

fn create_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("failed to create {}", path.display()))
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_form_drops_verbatim_prefix() {
        assert_eq!(usual_form(Path::new(r"\\?\C:\Users\dev\Temp")), PathBuf::from(r"C:\Users\dev\Temp"));
        assert_eq!(usual_form(Path::new(r"\\?\UNC\server\share\x")), PathBuf::from(r"\\?\UNC\server\share\x"));
        assert_eq!(usual_form(Path::new(r"C:\x")), PathBuf::from(r"C:\x"));
    }
}
