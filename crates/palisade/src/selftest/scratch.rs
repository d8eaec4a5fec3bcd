//! The temporary world of one selftest on Linux and macOS: a workspace with a git repository
//! and a copy of this binary, a fake home directory with a planted fake SSH key, and a
//! directory outside the workspace. All of it lies under one fresh directory, which is removed
//! at the end.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The contents of the planted fake key.
pub const FAKE_KEY: &str = "fake key planted by palisade selftest, not a credential\n";
/// The contents of the file in the outside directory.
const EXISTING_CONTENT: &str = "written by palisade selftest before the probe\n";

/// The temporary directories of one selftest, removed when dropped.
pub struct Scratch {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub outside: PathBuf,
    /// The copy of this binary that each probe runs.
    pub probe_exe: PathBuf,
}

impl Scratch {
    /// Creates the scratch world, owned by this process's user.
    pub fn create() -> anyhow::Result<Scratch> {
        // Canonical, as the paths of a resolved policy are, so that the two compare.
        let temp = std::env::temp_dir();
        let temp = fs::canonicalize(&temp).with_context(|| format!("failed to resolve the temporary directory {}", temp.display()))?;
        let root = create_fresh_dir(&temp)?;
        let scratch = Scratch {
            workspace: root.join("workspace"),
            home: root.join("home"),
            outside: root.join("outside"),
            probe_exe: root.join("workspace").join("palisade"),
            root,
        };
        // Every step from here on may fail; `scratch` removes what was made.
        scratch.fill()?;
        Ok(scratch)
    }

    fn fill(&self) -> anyhow::Result<()> {
        let git = self.workspace.join(".git");
        for dir in [&self.workspace, &git.join("hooks"), &git.join("objects"), &git.join("refs/heads")] {
            create_dir(dir)?;
        }
        // The minimum that makes `.git` a repository to git and to palisade's protection.
        write_file(&git.join("HEAD"), "ref: refs/heads/main\n")?;
        write_file(&git.join("config"), "[core]\n\trepositoryformatversion = 0\n\tbare = false\n")?;

        // A copy in the workspace rather than `--allow-read` of this binary: the binary may lie
        // where the sandbox's user cannot reach it (a home directory, `/root`), and an extra
        // rule would change the policy under test. The copy is a file of its own, not a hard
        // link, so a probe that could write it would not change this binary.
        fs::copy(own_executable()?, &self.probe_exe)
            .with_context(|| format!("failed to copy the palisade binary to {}", self.probe_exe.display()))?;
        set_mode(&self.probe_exe, 0o755)?;

        let ssh = self.home.join(".ssh");
        create_dir(&self.home)?;
        create_dir(&ssh)?;
        set_mode(&ssh, 0o700)?;
        let key = self.fake_key();
        write_file(&key, FAKE_KEY)?;
        set_mode(&key, 0o600)?;

        create_dir(&self.outside)?;
        write_file(&self.existing_outside(), EXISTING_CONTENT)?;
        Ok(())
    }

    /// Gives the outside directory and its file to `owner`, the uid and gid the sandboxed
    /// command runs as, so that only the sandbox, and not file permissions, keeps the probe
    /// from writing there.
    #[cfg(target_os = "linux")]
    pub fn give_outside_to(&self, owner: (u32, u32)) -> anyhow::Result<()> {
        change_owner(&[&self.outside, &self.existing_outside()], owner)
    }

    /// Gives the fake key and its directory to `owner`, so that only the sandbox, and not file
    /// permissions, keeps the probe from reading it.
    #[cfg(target_os = "linux")]
    pub fn give_key_to(&self, owner: (u32, u32)) -> anyhow::Result<()> {
        change_owner(&[&self.home.join(".ssh"), &self.fake_key()], owner)
    }

    pub fn fake_key(&self) -> PathBuf {
        self.home.join(".ssh/id_ed25519")
    }

    pub fn existing_outside(&self) -> PathBuf {
        self.outside.join("existing")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.root) {
            tracing::warn!("failed to remove the selftest directory {}: {error}", self.root.display());
        }
    }
}

/// Creates a new directory with a unique name in `parent`, readable and searchable by every
/// user: as root, the sandbox's user must reach the directories below it.
fn create_fresh_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.subsec_nanos()).unwrap_or(0);
    for attempt in 0..100u32 {
        let dir = parent.join(format!("palisade-selftest-{}-{stamp}-{attempt}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                set_mode(&dir, 0o755)?;
                return Ok(dir);
            }
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

/// Returns the file of this binary: `/proc/self/exe` on Linux, which is this very binary even if
/// its file was replaced since, and the path the system recorded at exec elsewhere.
fn own_executable() -> anyhow::Result<PathBuf> {
    if cfg!(target_os = "linux") {
        return Ok(PathBuf::from("/proc/self/exe"));
    }
    std::env::current_exe().context("failed to find palisade's own executable")
}

#[cfg(target_os = "linux")]
fn change_owner(paths: &[&Path], (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    for path in paths {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("failed to change the owner of {}", path.display()))?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("failed to change the mode of {}", path.display()))
}

