//! The server's private directory: run reports and the copy of the policy file live there, and
//! it is removed when the server stops.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Scratch {
    dir: PathBuf,
    next_report: AtomicU64,
}

impl Scratch {
    /// Creates a new directory under the system's temporary directory, readable by this user
    /// only. `create_dir` fails on any existing entry, a planted symlink included.
    pub fn create() -> io::Result<Scratch> {
        let base = std::env::temp_dir();
        remove_abandoned(&base);
        let mut attempt = 0u32;
        loop {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |time| time.subsec_nanos());
            let dir = base.join(format!("palisade-mcp-{}-{nanos:08x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Scratch { dir, next_report: AtomicU64::new(1) }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Returns a path for one run's report that no other run uses.
    pub fn report_path(&self) -> PathBuf {
        let number = self.next_report.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("run-{number}.json"))
    }
}

/// Removes the directories of servers that were killed before they could remove their own:
/// those named like ours, owned by this user, whose process is gone.
fn remove_abandoned(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else { return };
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|name| name.strip_prefix("palisade-mcp-")).and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        let owned_directory = entry.path().symlink_metadata().is_ok_and(|meta| meta.is_dir() && meta.uid() == uid);
        if !owned_directory || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!("mcp: removed {}, left by a server that is gone", entry.path().display()),
            Err(error) => tracing::warn!("mcp: failed to remove {}, left by a server that is gone: {error}", entry.path().display()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("mcp: failed to remove {}: {error}", self.dir.display());
        }
    }
}
