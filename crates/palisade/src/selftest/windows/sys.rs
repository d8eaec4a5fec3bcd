//! The Windows calls of selftest that std does not offer: the 8.3 name of a path, an ACL entry
//! for Authenticated Users, the process list, and `ShellExecuteExW` with a look at the job of
//! the process it started. Every `unsafe` block of the Windows selftest is in this file.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::windows::io::{AsRawHandle as _, FromRawHandle as _, OwnedHandle};
use std::path::Path;
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{GetLastError, LocalFree, ERROR_MORE_DATA, HANDLE, INVALID_HANDLE_VALUE, STILL_ACTIVE};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{GetSecurityDescriptorDacl, ACL, DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};
use windows_sys::Win32::Storage::FileSystem::GetShortPathNameW;
use windows_sys::Win32::System::Com::{CoInitializeEx, COINIT_APARTMENTTHREADED, COINIT_DISABLE_OLE1DDE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS};
use windows_sys::Win32::System::JobObjects::{JobObjectBasicProcessIdList, QueryInformationJobObject};
use windows_sys::Win32::System::Threading::{GetExitCodeProcess, GetProcessId, OpenProcess, TerminateProcess, PROCESS_TERMINATE};
use windows_sys::Win32::UI::Shell::{ShellExecuteExW, SEE_MASK_FLAG_NO_UI, SEE_MASK_NOASYNC, SEE_MASK_NOCLOSEPROCESS, SHELLEXECUTEINFOW};

/// A DACL with one entry, inheritable by files and directories, that lets Authenticated Users
/// (`AU`, S-1-5-11) modify: read, write, execute and delete (`0x1301bf`, what `icacls` calls M).
const AUTHENTICATED_USERS_MODIFY: &str = "D:(A;OICI;0x1301bf;;;AU)";

/// `SW_SHOWNORMAL`: how `Start-Process` shows what it opens.
const SW_SHOWNORMAL: i32 = 1;

/// The exit code of a process that selftest terminates.
const TERMINATED: u32 = 1;

/// The maximum number of process ids read from the job's list, far more than a probe starts.
const JOB_LIST_CAPACITY: usize = 1024;

fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(std::iter::once(0)).collect()
}

/// Returns the 8.3 short name of the last component of `path`, or its long name where the
/// volume keeps no short name for it.
pub fn short_name(path: &Path) -> io::Result<String> {
    let long = wide(path.as_os_str());
    // SAFETY: `long` is NUL-terminated; a null buffer of length 0 requests the size needed.
    let needed = unsafe { GetShortPathNameW(long.as_ptr(), null_mut(), 0) };
    if needed == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u16; needed as usize];
    // SAFETY: `buffer` is writable for `needed` characters, the size the first call returned.
    let written = unsafe { GetShortPathNameW(long.as_ptr(), buffer.as_mut_ptr(), needed) };
    if written == 0 || written >= needed {
        return Err(io::Error::last_os_error());
    }
    buffer.truncate(written as usize);
    let short = std::ffi::OsString::from_wide(&buffer);
    let name = Path::new(&short).file_name().ok_or_else(|| io::Error::other(format!("{} has no last component", short.to_string_lossy())))?;
    Ok(name.to_string_lossy().into_owned())
}

/// Adds to the DACL of the directory `dir` an entry, inherited by everything created below it,
/// that lets Authenticated Users modify it. The entries `dir` inherits from its parent stay.
pub fn grant_authenticated_users_modify(dir: &Path) -> io::Result<()> {
    let sddl = wide(OsStr::new(AUTHENTICATED_USERS_MODIFY));
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `sddl` is NUL-terminated; `descriptor` receives a LocalAlloc'd descriptor, freed
    // below; the size is not needed.
    if unsafe { ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.as_ptr(), SDDL_REVISION_1, &mut descriptor, null_mut()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let result = set_dacl_from(descriptor, dir);
    // SAFETY: `descriptor` was allocated by the conversion above, and nothing refers to it now.
    unsafe { LocalFree(descriptor) };
    result
}

/// Sets the DACL of `descriptor` as the explicit DACL of `path`.
fn set_dacl_from(descriptor: PSECURITY_DESCRIPTOR, path: &Path) -> io::Result<()> {
    let (mut present, mut defaulted) = (0, 0);
    let mut dacl: *mut ACL = null_mut();
    // SAFETY: `descriptor` is a valid descriptor; the out-pointers are locals, and `dacl` ends up
    // pointing into `descriptor`, which outlives this function.
    if unsafe { GetSecurityDescriptorDacl(descriptor, &mut present, &mut dacl, &mut defaulted) } == 0 {
        return Err(io::Error::last_os_error());
    }
    if present == 0 || dacl.is_null() {
        return Err(io::Error::other(format!("{AUTHENTICATED_USERS_MODIFY} contains no DACL")));
    }
    let name = wide(path.as_os_str());
    // SAFETY: `name` is NUL-terminated and `dacl` is valid for the call. Without
    // PROTECTED_DACL_SECURITY_INFORMATION, the entries inherited from the parent are kept.
    let status = unsafe { SetNamedSecurityInfoW(name.as_ptr(), SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, null_mut(), null_mut(), dacl, null()) };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    Ok(())
}

/// A running process, from a snapshot of the process list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: u32,
    /// The process id of its parent, which may have exited since.
    pub parent: u32,
}

/// Lists the running processes whose executable file is named `image` (`palisade.exe`),
/// ignoring letter case.
pub fn processes_named(image: &str) -> io::Result<Vec<ProcessEntry>> {
    // SAFETY: no pointers are passed; the result is checked before use.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle that nothing else owns.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(snapshot) };
    let mut entry = PROCESSENTRY32W { dwSize: size_of::<PROCESSENTRY32W>() as u32, ..Default::default() };
    let mut found = Vec::new();
    // SAFETY: the snapshot handle is valid, and `entry` is a PROCESSENTRY32W with dwSize set.
    let mut more = unsafe { Process32FirstW(snapshot.as_raw_handle(), &mut entry) } != 0;
    while more {
        let length = entry.szExeFile.iter().position(|&unit| unit == 0).unwrap_or(entry.szExeFile.len());
        let name = String::from_utf16_lossy(&entry.szExeFile[..length]);
        if name.eq_ignore_ascii_case(image) {
            found.push(ProcessEntry { pid: entry.th32ProcessID, parent: entry.th32ParentProcessID });
        }
        // SAFETY: as for Process32FirstW.
        more = unsafe { Process32NextW(snapshot.as_raw_handle(), &mut entry) } != 0;
    }
    Ok(found)
}

/// Terminates the process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    // SAFETY: no pointers are passed; the handle is checked before use.
    let process = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle that nothing else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(process) };
    // SAFETY: the handle is valid and was opened with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(process.as_raw_handle(), TERMINATED) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The outcome of a request to the shell.
#[derive(Debug)]
pub enum ShellOutcome {
    /// The call failed, so the shell started nothing.
    Failed(io::Error),
    /// The call succeeded without a new process: a process that was already running took the
    /// request.
    HandedOff,
    /// The shell started a new process.
    Started { pid: u32, job: JobMembership },
}

/// The job of a process that the shell started, seen right after the call returned.
#[derive(Debug)]
pub enum JobMembership {
    /// In the job of this process, the run's job.
    SameJob,
    /// Running, and not in the job of this process.
    Outside,
    /// It had exited already, so the job's list of processes no longer contains it.
    Exited,
    /// The job's list could not be read.
    Unknown(io::Error),
}

/// Asks the shell to open `target` as `Start-Process` does, without any error dialog, and
/// reports whether a process was started and whether it runs in this process's job.
pub fn shell_execute(target: &str) -> ShellOutcome {
    // ShellExecuteExW may use COM, which this thread must initialise first. A failure here (an
    // apartment of another kind) leaves COM usable, so the result is ignored.
    // SAFETY: the reserved pointer is null as required.
    unsafe { CoInitializeEx(null(), (COINIT_APARTMENTTHREADED | COINIT_DISABLE_OLE1DDE) as u32) };

    let verb = wide(OsStr::new("open"));
    let file = wide(OsStr::new(target));
    let mut info = SHELLEXECUTEINFOW {
        cbSize: size_of::<SHELLEXECUTEINFOW>() as u32,
        // NOASYNC: return only once the request has been handed on, so its outcome is final.
        fMask: SEE_MASK_NOCLOSEPROCESS | SEE_MASK_FLAG_NO_UI | SEE_MASK_NOASYNC,
        lpVerb: verb.as_ptr(),
        lpFile: file.as_ptr(),
        nShow: SW_SHOWNORMAL,
        ..Default::default()
    };
    // SAFETY: `info` is a SHELLEXECUTEINFOW with cbSize set, and its strings are NUL-terminated
    // locals that outlive the call.
    if unsafe { ShellExecuteExW(&mut info) } == 0 {
        return ShellOutcome::Failed(io::Error::last_os_error());
    }
    if info.hProcess.is_null() {
        return ShellOutcome::HandedOff;
    }

    // SAFETY: with SEE_MASK_NOCLOSEPROCESS, a non-null hProcess is a new handle owned by the
    // caller.
    let process = unsafe { OwnedHandle::from_raw_handle(info.hProcess) };
    // SAFETY: the handle is valid.
    let pid = unsafe { GetProcessId(process.as_raw_handle()) };
    let job = match own_job_process_ids() {
        Ok(pids) if pids.contains(&pid) => JobMembership::SameJob,
        Ok(_) if has_exited(process.as_raw_handle()) => JobMembership::Exited,
        Ok(_) => JobMembership::Outside,
        Err(error) => JobMembership::Unknown(error),
    };
    ShellOutcome::Started { pid, job }
}

fn has_exited(process: HANDLE) -> bool {
    let mut code = 0u32;
    // SAFETY: the handle is valid and `code` is a local.
    unsafe { GetExitCodeProcess(process, &mut code) != 0 && code != STILL_ACTIVE as u32 }
}

/// The layout of `JOBOBJECT_BASIC_PROCESS_ID_LIST` with room for [`JOB_LIST_CAPACITY`] ids.
#[repr(C)]
struct ProcessIdList {
    assigned: u32,
    listed: u32,
    ids: [usize; JOB_LIST_CAPACITY],
}

/// Lists the process ids in the job of this process.
fn own_job_process_ids() -> io::Result<Vec<u32>> {
    let mut list = Box::new(ProcessIdList { assigned: 0, listed: 0, ids: [0; JOB_LIST_CAPACITY] });
    // SAFETY: a null job handle names the job of the calling process. `list` is writable for
    // the size passed, and the returned length is not needed.
    let ok = unsafe {
        QueryInformationJobObject(null_mut(), JobObjectBasicProcessIdList, (&raw mut *list).cast(), size_of::<ProcessIdList>() as u32, null_mut())
    };
    // SAFETY: reads the calling thread's last error, set by the call above.
    if ok == 0 && unsafe { GetLastError() } != ERROR_MORE_DATA {
        return Err(io::Error::last_os_error());
    }
    let listed = (list.listed as usize).min(JOB_LIST_CAPACITY);
    Ok(list.ids[..listed].iter().map(|&id| id as u32).collect())
}
