//! One file or directory opened for reading and writing its security, never through a
//! reparse point: the handle is the junction or link itself, not its target.

use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_HANDLE_EOF, ERROR_MORE_DATA, ERROR_NO_MORE_FILES, ERROR_PATH_NOT_FOUND, GetLastError, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Security::Authorization::{GetNamedSecurityInfoW, GetSecurityInfo, SE_FILE_OBJECT};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorControl, InitializeSecurityDescriptor, LABEL_SECURITY_INFORMATION,
    OBJECT_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SE_DACL_AUTO_INHERITED, SE_DACL_PROTECTED, SECURITY_DESCRIPTOR,
    SetKernelObjectSecurity, SetSecurityDescriptorControl, SetSecurityDescriptorDacl, SetSecurityDescriptorSacl,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, CreateFileW, DELETE, FILE_DISPOSITION_INFO, FileDispositionInfo, SetFileInformationByHandle, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT, FILE_FLAG_BACKUP_SEMANTICS,
    FILE_FLAG_OPEN_REPARSE_POINT, FILE_FULL_DIR_INFO, FILE_LIST_DIRECTORY, FILE_NAME_NORMALIZED, FILE_READ_ATTRIBUTES,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, FindClose, FindFirstFileNameW, FindNextFileNameW,
    FileFullDirectoryInfo, FileFullDirectoryRestartInfo, GetFileInformationByHandle, GetFileInformationByHandleEx,
    GetFinalPathNameByHandleW, GetLongPathNameW, OPEN_EXISTING, READ_CONTROL, VOLUME_NAME_DOS, WRITE_DAC, WRITE_OWNER,
};

use super::Error;
use super::error::Code;
use super::security::{LocalMemory, handle, wide};
use crate::ace::Acl;
use crate::path::WinPath;

/// `SECURITY_DESCRIPTOR_REVISION`, from `winnt.h`.
const SECURITY_DESCRIPTOR_REVISION: u32 = 1;

/// An open file or directory.
pub(crate) struct FileObject {
    handle: OwnedHandle,
    pub path: WinPath,
}

/// The type of an object, read from its handle.
pub(crate) struct Kind {
    pub is_dir: bool,
    /// A junction, symbolic link or other reparse point, which the walk never crosses.
    pub is_reparse_point: bool,
    pub links: u32,
}

/// The parts of an object's security descriptor that palisade changes.
pub(crate) struct Security {
    /// `None` for a NULL DACL, which grants everyone everything.
    pub dacl: Option<Acl>,
    /// The mandatory label entries, when they were requested.
    pub label: Option<Acl>,
    pub control: u16,
}

impl FileObject {
    /// Opens the object at `path` itself, not what a reparse point there leads to. Returns
    /// `None` when nothing exists at `path`. `write_label` requests `WRITE_OWNER`, which
    /// changing the mandatory label needs.
    pub fn open(path: &WinPath, write_label: bool) -> Result<Option<FileObject>, Error> {
        let name = wide(&path.to_verbatim());
        let mut access = READ_CONTROL | WRITE_DAC | FILE_READ_ATTRIBUTES | FILE_LIST_DIRECTORY;
        if write_label {
            access |= WRITE_OWNER;
        }
        // SAFETY: `name` is NUL-terminated and outlives the call; no security attributes or
        // template are passed.
        let raw = unsafe {
            CreateFileW(
                name.as_ptr(),
                access,
                FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                null(),
                OPEN_EXISTING,
                FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT,
                null_mut(),
            )
        };
        if raw == INVALID_HANDLE_VALUE {
            // SAFETY: reads the calling thread's last error, set by CreateFileW.
            return match unsafe { GetLastError() } {
                ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => Ok(None),
                _ => Err(Error::last("CreateFileW", path)),
            };
        }
        // SAFETY: CreateFileW succeeded, so `raw` is a new handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(Some(FileObject { handle, path: path.clone() }))
    }

    /// Returns the path Windows reports for the open object: long names, every reparse point
    /// above it resolved.
    pub fn final_path(&self) -> Result<WinPath, Error> {
        final_path(&self.handle, &self.path)
    }

    pub fn kind(&self) -> Result<Kind, Error> {
        // SAFETY: BY_HANDLE_FILE_INFORMATION is plain data, valid when zeroed.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open with FILE_READ_ATTRIBUTES; `info` is a local.
        if unsafe { GetFileInformationByHandle(handle(&self.handle), &mut info) } == 0 {
            return Err(Error::last("GetFileInformationByHandle", &self.path));
        }
        Ok(Kind {
            is_dir: info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0,
            is_reparse_point: info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0,
            links: info.nNumberOfLinks,
        })
    }

    /// Lists the names in the directory, without `.` and `..`.
    pub fn children(&self) -> Result<Vec<String>, Error> {
        // Entries are 8-byte aligned in the buffer, so it is made of u64.
        let mut buffer = vec![0u64; 8192];
        let mut names = Vec::new();
        let mut class = FileFullDirectoryRestartInfo;
        loop {
            // SAFETY: the handle is a directory opened with FILE_LIST_DIRECTORY; `buffer` is
            // writable for the size passed.
            let ok = unsafe { GetFileInformationByHandleEx(handle(&self.handle), class, buffer.as_mut_ptr().cast(), (buffer.len() * 8) as u32) };
            if ok == 0 {
                // SAFETY: reads the calling thread's last error, set by the call above.
                if unsafe { GetLastError() } == ERROR_NO_MORE_FILES {
                    return Ok(names);
                }
                return Err(Error::last("GetFileInformationByHandleEx(FileFullDirectoryInfo)", &self.path));
            }
            class = FileFullDirectoryInfo;
            let base = buffer.as_ptr().cast::<u8>();
            let mut offset = 0usize;
            loop {
                // SAFETY: Windows wrote a chain of FILE_FULL_DIR_INFO entries into `buffer`,
                // each at an 8-byte-aligned offset given by the previous entry, and each
                // name of `FileNameLength` bytes lies inside the buffer.
                let (name, next) = unsafe {
                    let entry = &*base.add(offset).cast::<FILE_FULL_DIR_INFO>();
                    let units = std::slice::from_raw_parts(entry.FileName.as_ptr(), entry.FileNameLength as usize / 2);
                    (String::from_utf16_lossy(units), entry.NextEntryOffset as usize)
                };
                if name != "." && name != ".." {
                    names.push(name);
                }
                if next == 0 {
                    break;
                }
                offset += next;
            }
        }
    }

    /// Reads the DACL and, when `label` is set, the mandatory label.
    pub fn security(&self, label: bool) -> Result<Security, Error> {
        let mut info: OBJECT_SECURITY_INFORMATION = DACL_SECURITY_INFORMATION;
        if label {
            info |= LABEL_SECURITY_INFORMATION;
        }
        let mut dacl: *mut ACL = null_mut();
        let mut sacl: *mut ACL = null_mut();
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: the handle is open with READ_CONTROL and every out-pointer is a local. On
        // success the descriptor is LocalAlloc'd and owned below, and the ACL pointers point
        // into it.
        let status = unsafe { GetSecurityInfo(handle(&self.handle), SE_FILE_OBJECT, info, null_mut(), null_mut(), &mut dacl, &mut sacl, &mut descriptor) };
        if status != 0 {
            return Err(Error::Call { call: "GetSecurityInfo", object: self.path.to_string(), code: Code(status) });
        }
        let memory = LocalMemory(descriptor);
        // SAFETY: `memory` owns the descriptor the ACL pointers point into, alive here.
        unsafe { read_security(&memory, dacl, if label { sacl } else { null_mut() }, &self.path) }
    }

    /// Writes `dacl` and, if given, the label entries `label`, with the DACL's inheritance
    /// control bits taken from `control`. The low-level call writes exactly this object:
    /// unlike `SetSecurityInfo`, it does not propagate entries to the objects below.
    pub fn write(&self, dacl: Option<&Acl>, label: Option<&Acl>, control: u16) -> Result<(), Error> {
        let dacl_bytes = dacl.map(|acl| aligned(acl, &self.path)).transpose()?;
        let label_bytes = label.map(|acl| aligned(acl, &self.path)).transpose()?;
        // SAFETY: SECURITY_DESCRIPTOR is plain data; InitializeSecurityDescriptor sets it up.
        let mut descriptor: SECURITY_DESCRIPTOR = unsafe { std::mem::zeroed() };
        let sd: PSECURITY_DESCRIPTOR = (&raw mut descriptor).cast();
        let mut info: OBJECT_SECURITY_INFORMATION = 0;
        // SAFETY: `sd` points to a local SECURITY_DESCRIPTOR; the ACL buffers it points to
        // are 4-byte aligned, hold well-formed ACLs, and outlive the SetKernelObjectSecurity
        // call below; the handle is open with WRITE_DAC, and WRITE_OWNER when a label is set.
        unsafe {
            if InitializeSecurityDescriptor(sd, SECURITY_DESCRIPTOR_REVISION) == 0 {
                return Err(Error::last("InitializeSecurityDescriptor", &self.path));
            }
            if let Some(bytes) = &dacl_bytes {
                if SetSecurityDescriptorDacl(sd, 1, bytes.as_ptr().cast(), 0) == 0 {
                    return Err(Error::last("SetSecurityDescriptorDacl", &self.path));
                }
                let bits = SE_DACL_AUTO_INHERITED | SE_DACL_PROTECTED;
                if SetSecurityDescriptorControl(sd, bits, control & bits) == 0 {
                    return Err(Error::last("SetSecurityDescriptorControl", &self.path));
                }
                info |= DACL_SECURITY_INFORMATION;
            }
            if let Some(bytes) = &label_bytes {
                if SetSecurityDescriptorSacl(sd, 1, bytes.as_ptr().cast(), 0) == 0 {
                    return Err(Error::last("SetSecurityDescriptorSacl", &self.path));
                }
                info |= LABEL_SECURITY_INFORMATION;
            }
            if info != 0 && SetKernelObjectSecurity(handle(&self.handle), info, sd) == 0 {
                return Err(Error::last("SetKernelObjectSecurity", &self.path));
            }
        }
        Ok(())
    }
}

/// Reads the security of the object that `path` names, following a link at its end, as any
/// program opening the path would. Returns `None` when nothing exists there.
pub(crate) fn named_security(path: &WinPath, label: bool) -> Result<Option<Security>, Error> {
    let name = wide(&path.to_verbatim());
    let mut info: OBJECT_SECURITY_INFORMATION = DACL_SECURITY_INFORMATION;
    if label {
        info |= LABEL_SECURITY_INFORMATION;
    }
    let mut dacl: *mut ACL = null_mut();
    let mut sacl: *mut ACL = null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `name` is NUL-terminated; every out-pointer is a local; on success the
    // descriptor is LocalAlloc'd and owned below, and the ACL pointers point into it.
    let status = unsafe { GetNamedSecurityInfoW(name.as_ptr(), SE_FILE_OBJECT, info, null_mut(), null_mut(), &mut dacl, &mut sacl, &mut descriptor) };
    match status {
        0 => {}
        ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => return Ok(None),
        _ => return Err(Error::Call { call: "GetNamedSecurityInfoW", object: path.to_string(), code: Code(status) }),
    }
    let memory = LocalMemory(descriptor);
    // SAFETY: `memory` owns the descriptor the ACL pointers point into, alive here.
    unsafe { read_security(&memory, dacl, if label { sacl } else { null_mut() }, path) }.map(Some)
}

/// Copies the ACLs and control bits out of a descriptor that Windows returned.
///
/// # Safety
/// `descriptor` must hold a valid security descriptor, and `dacl` and `sacl` must be null or
/// point to ACLs inside it.
unsafe fn read_security(descriptor: &LocalMemory, dacl: *const ACL, sacl: *const ACL, path: &WinPath) -> Result<Security, Error> {
    let mut control = 0u16;
    let mut revision = 0u32;
    // SAFETY: the caller guarantees a valid descriptor; both out-pointers are locals.
    if unsafe { GetSecurityDescriptorControl(descriptor.0, &mut control, &mut revision) } == 0 {
        return Err(Error::last("GetSecurityDescriptorControl", path));
    }
    // SAFETY: the caller guarantees the ACL pointers.
    let (dacl, label) = unsafe { (acl_at(dacl, path)?, acl_at(sacl, path)?) };
    Ok(Security { dacl, label, control })
}

/// Parses the ACL at `acl`, or returns `None` for a null pointer.
///
/// # Safety
/// `acl` must be null or point to a valid ACL.
unsafe fn acl_at(acl: *const ACL, path: &WinPath) -> Result<Option<Acl>, Error> {
    if acl.is_null() {
        return Ok(None);
    }
    // SAFETY: a valid ACL is at least its 8-byte header, whose `AclSize` is its whole length.
    let bytes = unsafe {
        let size = usize::from((*acl).AclSize);
        std::slice::from_raw_parts(acl.cast::<u8>(), size)
    };
    Acl::parse(bytes).map(Some).map_err(|error| Error::Io { what: format!("the ACL of {path}"), source: std::io::Error::other(error) })
}

/// The ACL's bytes in a buffer aligned as Windows requires (4 bytes).
fn aligned(acl: &Acl, path: &WinPath) -> Result<Vec<u32>, Error> {
    let bytes = acl.to_bytes().map_err(|error| Error::Io { what: format!("the new ACL of {path}"), source: std::io::Error::other(error) })?;
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    for (index, byte) in bytes.iter().enumerate() {
        words[index / 4] |= u32::from(*byte) << (8 * (index % 4));
    }
    Ok(words)
}

/// The normalised path of an open handle, parsed.
fn final_path(handle_: &OwnedHandle, path: &WinPath) -> Result<WinPath, Error> {
    let mut buffer = vec![0u16; 512];
    loop {
        // SAFETY: `buffer` is writable for the length passed.
        let len = unsafe { GetFinalPathNameByHandleW(handle(handle_), buffer.as_mut_ptr(), buffer.len() as u32, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS) } as usize;
        if len == 0 {
            return Err(Error::last("GetFinalPathNameByHandleW", path));
        }
        if len < buffer.len() {
            let text = String::from_utf16_lossy(&buffer[..len]);
            return WinPath::parse(&text).map_err(|error| Error::Io { what: format!("the final path {text:?} of {path}"), source: std::io::Error::other(error) });
        }
        // Too small: `len` is the size needed, with the NUL.
        buffer.resize(len + 1, 0);
    }
}

/// The object `path` leads to, following every link, as its final path; `None` when nothing
/// exists there.
pub(crate) fn resolve(path: &WinPath) -> Result<Option<WinPath>, Error> {
    let name = wide(&path.to_verbatim());
    // SAFETY: `name` is NUL-terminated and outlives the call; no security attributes or
    // template are passed.
    let raw = unsafe {
        CreateFileW(name.as_ptr(), FILE_READ_ATTRIBUTES, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, null(), OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, null_mut())
    };
    if raw == INVALID_HANDLE_VALUE {
        // SAFETY: reads the calling thread's last error, set by CreateFileW.
        return match unsafe { GetLastError() } {
            ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => Ok(None),
            _ => Err(Error::last("CreateFileW", path)),
        };
    }
    // SAFETY: CreateFileW succeeded, so `raw` is a new handle that nothing else owns.
    let owned = unsafe { OwnedHandle::from_raw_handle(raw) };
    final_path(&owned, path).map(Some)
}

/// `path` with every 8.3 short name replaced by its long name, and nothing else resolved.
pub(crate) fn long_name(path: &WinPath) -> Result<WinPath, Error> {
    let name = wide(&path.to_verbatim());
    let mut buffer = vec![0u16; 512];
    loop {
        // SAFETY: `name` is NUL-terminated; `buffer` is writable for the length passed.
        let len = unsafe { GetLongPathNameW(name.as_ptr(), buffer.as_mut_ptr(), buffer.len() as u32) } as usize;
        if len == 0 {
            return Err(Error::last("GetLongPathNameW", path));
        }
        if len < buffer.len() {
            let text = String::from_utf16_lossy(&buffer[..len]);
            return WinPath::parse(&text).map_err(|error| Error::Io { what: format!("the long name {text:?} of {path}"), source: std::io::Error::other(error) });
        }
        buffer.resize(len + 1, 0);
    }
}

/// Every name of the file at `path`, volume-relative (`\Users\dev\ws\a.txt`).
pub(crate) fn link_names(path: &WinPath) -> Result<Vec<String>, Error> {
    let name = wide(&path.to_verbatim());
    let mut buffer = vec![0u16; 1024];
    let mut names = Vec::new();
    let mut len = buffer.len() as u32;
    // SAFETY: `name` is NUL-terminated; `buffer` is writable for `len` characters.
    let find = unsafe { FindFirstFileNameW(name.as_ptr(), 0, &mut len, buffer.as_mut_ptr()) };
    if find == INVALID_HANDLE_VALUE {
        return Err(Error::last("FindFirstFileNameW", path));
    }
    loop {
        // `len` counts the NUL.
        names.push(String::from_utf16_lossy(&buffer[..(len as usize).saturating_sub(1)]));
        len = buffer.len() as u32;
        // SAFETY: `find` is the open search handle; `buffer` is writable for `len` characters.
        if unsafe { FindNextFileNameW(find, &mut len, buffer.as_mut_ptr()) } == 0 {
            // SAFETY: reads the calling thread's last error, set by FindNextFileNameW.
            let code = unsafe { GetLastError() };
            if code == ERROR_MORE_DATA {
                // A name longer than the buffer: treat the file as linked outside.
                names.push(String::new());
            } else if code != ERROR_HANDLE_EOF {
                // SAFETY: `find` is open and closed once.
                unsafe { FindClose(find) };
                return Err(Error::Call { call: "FindNextFileNameW", object: path.to_string(), code: Code(code) });
            }
            break;
        }
    }
    // SAFETY: `find` is open and closed once.
    unsafe { FindClose(find) };
    Ok(names)
}

/// The identity of a file object on its volume, which no rename or new link changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    volume: u32,
    index: u64,
}

/// Opens the object at `path` itself with `access`, never following a link at its end.
fn open_object(path: &WinPath, access: u32) -> Result<Option<OwnedHandle>, Error> {
    let name = wide(&path.to_verbatim());
    // SAFETY: `name` is NUL-terminated and outlives the call; no security attributes or
    // template are passed.
    let raw = unsafe {
        CreateFileW(
            name.as_ptr(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            null(),
            OPEN_EXISTING,
            FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT,
            null_mut(),
        )
    };
    if raw == INVALID_HANDLE_VALUE {
        // SAFETY: reads the calling thread's last error, set by CreateFileW.
        return match unsafe { GetLastError() } {
            ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => Ok(None),
            _ => Err(Error::last("CreateFileW", path)),
        };
    }
    // SAFETY: CreateFileW succeeded, so `raw` is a new handle that nothing else owns.
    Ok(Some(unsafe { OwnedHandle::from_raw_handle(raw) }))
}

fn file_id(handle_: &OwnedHandle, path: &WinPath) -> Result<FileId, Error> {
    // SAFETY: BY_HANDLE_FILE_INFORMATION is plain data, valid when zeroed.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is open with FILE_READ_ATTRIBUTES; `info` is a local.
    if unsafe { GetFileInformationByHandle(handle(handle_), &mut info) } == 0 {
        return Err(Error::last("GetFileInformationByHandle", path));
    }
    Ok(FileId { volume: info.dwVolumeSerialNumber, index: u64::from(info.nFileIndexHigh) << 32 | u64::from(info.nFileIndexLow) })
}

/// The identity of the object at `path`, or `None` when nothing is there.
pub(crate) fn identity(path: &WinPath) -> Result<Option<FileId>, Error> {
    match open_object(path, FILE_READ_ATTRIBUTES)? {
        Some(handle_) => file_id(&handle_, path).map(Some),
        None => Ok(None),
    }
}

/// Removes the directory at `path` if it is still the object `expected` and is empty. The
/// delete goes through a handle to that object, so a junction put in place of a directory
/// above it since cannot redirect the delete elsewhere. Returns whether it was removed.
pub(crate) fn remove_empty_directory(path: &WinPath, expected: FileId) -> bool {
    let Ok(Some(handle_)) = open_object(path, DELETE | FILE_READ_ATTRIBUTES) else {
        return false;
    };
    if file_id(&handle_, path).ok() != Some(expected) {
        return false;
    }
    let disposition = FILE_DISPOSITION_INFO { DeleteFile: true };
    // SAFETY: the handle is open with DELETE; `disposition` is a local of the size passed. A
    // directory that is not empty makes the call fail and stays.
    let ok = unsafe { SetFileInformationByHandle(handle(&handle_), FileDispositionInfo, (&raw const disposition).cast(), size_of::<FILE_DISPOSITION_INFO>() as u32) };
    ok != 0
}
