//! The facts about this machine and the calling user that a [`Machine`] contains, read from the
//! environment and the system.

use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
use windows_sys::Win32::System::Threading::{GetActiveProcessorCount, ALL_PROCESSOR_GROUPS};

use crate::path::WinPath;
use crate::plan::{Machine, PlanError};

use super::Error;

/// Reads the caller's [`Machine`]: `%USERNAME%`, `%USERPROFILE%`, the directories of
/// `%PATH%`, `%SystemRoot%`, `%ProgramData%\palisade` and the number of logical processors.
/// `PATH` entries that are not absolute paths are left out, as no grant could name them.
pub fn current() -> Result<Machine, Error> {
    let path_dirs = std::env::var("PATH")
        .unwrap_or_default()
        .split(';')
        .map(|entry| entry.trim_matches('"'))
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| match WinPath::parse(entry) {
            Ok(path) => Some(path),
            Err(error) => {
                tracing::debug!("PATH entry {entry:?} left out of the plan: {error}");
                None
            }
        })
        .collect();
    let state_dir = variable_path("ProgramData", "palisade's state directory")?;
    Ok(Machine {
        user_name: variable("USERNAME")?,
        profile_dir: variable_path("USERPROFILE", "the profile directory")?,
        path_dirs,
        system_root: variable_path("SystemRoot", "the Windows directory")?,
        cpu_count: cpu_count(),
        state_dir: state_dir.join("palisade").expect("a fixed relative name joins"),
        program_dirs: ["ProgramFiles", "ProgramFiles(x86)", "ProgramW6432"]
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .filter_map(|text| WinPath::parse(&text).ok())
            .collect(),
    })
}

fn variable(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|error| Error::Io {
        what: format!("failed to read %{name}%"),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, error),
    })
}

fn variable_path(name: &str, what: &'static str) -> Result<WinPath, Error> {
    let text = variable(name)?;
    WinPath::parse(&text).map_err(|source| Error::Plan(PlanError::Path { what, path: text, source }))
}

/// Logical processors in every processor group; at least 1.
pub fn cpu_count() -> u32 {
    // SAFETY: GetActiveProcessorCount has no preconditions.
    unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) }.max(1)
}

/// Returns the machine's physical memory in bytes, which sizes the default memory limit.
pub fn memory_total() -> Option<u64> {
    let mut status = MEMORYSTATUSEX { dwLength: size_of::<MEMORYSTATUSEX>() as u32, ..Default::default() };
    // SAFETY: `status` is a valid MEMORYSTATUSEX with dwLength set, as the call requires.
    if unsafe { GlobalMemoryStatusEx(&mut status) } == 0 {
        return None;
    }
    Some(status.ullTotalPhys)
}
