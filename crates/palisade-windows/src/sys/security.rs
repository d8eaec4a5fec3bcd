//! Small Windows helpers that the token, account, ACL, firewall, setup and check modules share:
//! wide strings, memory that Windows allocates, account SIDs, and facts about the caller.

use std::ffi::c_void;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{
    ERROR_INSUFFICIENT_BUFFER, ERROR_NONE_MAPPED, GetLastError, HANDLE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, LookupAccountNameW, PSECURITY_DESCRIPTOR, SID_NAME_USE, TOKEN_ACCESS_MASK,
    TOKEN_ELEVATION, TOKEN_INFORMATION_CLASS, TOKEN_QUERY, TOKEN_USER, TokenElevation, TokenUser,
};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows_sys::Win32::System::WindowsProgramming::GetUserNameW;

use super::Error;
use crate::ace::Sid;
use crate::plan::{AccountKind, Accounts};

/// `text` as a NUL-terminated UTF-16 string.
pub(crate) fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Copies the UTF-16 string at `pointer`, up to its NUL.
///
/// # Safety
/// `pointer` must be null or point to a NUL-terminated UTF-16 string.
pub(crate) unsafe fn from_wide_ptr(pointer: *const u16) -> String {
    if pointer.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller guarantees a NUL-terminated string, so every index up to and
    // including the NUL is inside it.
    while unsafe { *pointer.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` units before the NUL were just read one by one.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// Memory that Windows allocated with `LocalAlloc` for the caller, freed on drop.
pub(crate) struct LocalMemory(pub *mut c_void);

impl Drop for LocalMemory {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a function documented to allocate with LocalAlloc
            // and is owned by this value alone, so it is freed exactly once.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// A self-relative security descriptor built from SDDL, and its size in bytes.
pub(crate) struct Descriptor {
    pub memory: LocalMemory,
    pub size: u32,
}

impl Descriptor {
    pub fn from_sddl(sddl: &str) -> Result<Descriptor, Error> {
        let text = wide(sddl);
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        let mut size = 0u32;
        // SAFETY: `text` is NUL-terminated and outlives the call; both out-pointers point to
        // locals. On success Windows hands over a LocalAlloc'd descriptor, owned below.
        let ok = unsafe { ConvertStringSecurityDescriptorToSecurityDescriptorW(text.as_ptr(), SDDL_REVISION_1, &mut descriptor, &mut size) };
        if ok == 0 {
            return Err(Error::last("ConvertStringSecurityDescriptorToSecurityDescriptorW", sddl));
        }
        Ok(Descriptor { memory: LocalMemory(descriptor), size })
    }

    pub fn as_ptr(&self) -> PSECURITY_DESCRIPTOR {
        self.memory.0
    }
}

/// Opens the current process's token with `access`.
pub(crate) fn own_token(access: TOKEN_ACCESS_MASK) -> Result<OwnedHandle, Error> {
    let mut token: HANDLE = null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `token` is a
    // local that receives a new handle on success.
    if unsafe { OpenProcessToken(GetCurrentProcess(), access, &mut token) } == 0 {
        return Err(Error::last("OpenProcessToken", "the current process"));
    }
    // SAFETY: OpenProcessToken succeeded, so `token` is a new handle that nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(token) })
}

/// Reads one class of token information into a buffer aligned for the structures in it,
/// which contain pointers, so 8 bytes.
pub(crate) fn token_information(token: HANDLE, class: TOKEN_INFORMATION_CLASS, what: &'static str) -> Result<Vec<u64>, Error> {
    let mut needed = 0u32;
    // SAFETY: a null buffer of length 0 requests only the size, written to a local.
    unsafe { GetTokenInformation(token, class, null_mut(), 0, &mut needed) };
    let mut buffer = vec![0u64; (needed as usize).div_ceil(8).max(1)];
    let len = (buffer.len() * 8) as u32;
    // SAFETY: `buffer` is writable for `len` bytes and 8-byte aligned; `needed` is a local.
    if unsafe { GetTokenInformation(token, class, buffer.as_mut_ptr().cast(), len, &mut needed) } == 0 {
        return Err(Error::last("GetTokenInformation", what));
    }
    Ok(buffer)
}

/// Copies the SID at `sid` out of Windows' memory.
///
/// # Safety
/// `sid` must point to a valid SID.
pub(crate) unsafe fn sid_at(sid: *const c_void) -> Result<Sid, Error> {
    // A SID is 8 bytes plus 4 per sub-authority, at most 15 of them.
    // SAFETY: the caller guarantees a valid SID, whose second byte is its sub-authority count.
    let count = usize::from(unsafe { *sid.cast::<u8>().add(1) });
    let len = 8 + 4 * count.min(15);
    // SAFETY: a valid SID with `count` sub-authorities is exactly `len` bytes long.
    let bytes = unsafe { std::slice::from_raw_parts(sid.cast::<u8>(), len) };
    Sid::from_bytes(bytes).map_err(|error| Error::Io { what: "a SID returned by Windows".into(), source: std::io::Error::other(error) })
}

/// Looks up the SID of the local account `name`; `None` when there is no such account.
pub(crate) fn account_sid(name: &str) -> Result<Option<Sid>, Error> {
    let account = wide(name);
    let mut sid = vec![0u8; 68];
    let mut sid_len = sid.len() as u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind: SID_NAME_USE = 0;
    // SAFETY: `account` is NUL-terminated; `sid` and `domain` are writable for the lengths
    // passed, which are locals the call updates; `kind` is a local.
    let ok = unsafe { LookupAccountNameW(null(), account.as_ptr(), sid.as_mut_ptr().cast(), &mut sid_len, domain.as_mut_ptr(), &mut domain_len, &mut kind) };
    if ok == 0 {
        // SAFETY: reads the calling thread's last error, set by the call above.
        return match unsafe { GetLastError() } {
            ERROR_NONE_MAPPED => Ok(None),
            ERROR_INSUFFICIENT_BUFFER => Err(Error::last("LookupAccountNameW", format!("{name} (a SID longer than 68 bytes)"))),
            _ => Err(Error::last("LookupAccountNameW", name)),
        };
    }
    Sid::from_bytes(&sid[..sid_len as usize]).map(Some).map_err(|error| Error::Io { what: format!("the SID of {name}"), source: std::io::Error::other(error) })
}

/// The SIDs of both sandbox accounts, offline first. A missing account means setup has not
/// run for this caller.
pub(crate) fn account_sids(accounts: &Accounts) -> Result<[Sid; 2], Error> {
    let lookup = |kind: AccountKind, name: &str| -> Result<Sid, Error> {
        account_sid(name)?.ok_or_else(|| Error::NotSetUp {
            what: format!("the {} sandbox account {name}", crate::store::kind_name(kind)),
            fix: "run `palisade setup` from an elevated prompt (Run as administrator)".into(),
        })
    };
    Ok([lookup(AccountKind::Offline, &accounts.offline)?, lookup(AccountKind::Online, &accounts.online)?])
}

/// The error for something `palisade setup` creates and a run found missing.
pub(crate) fn not_set_up(what: String) -> Error {
    Error::NotSetUp { what, fix: "run `palisade setup` with the same policy flags".into() }
}

/// The name of the account this process runs as.
pub(crate) fn current_user_name() -> Result<String, Error> {
    // UNLEN is 256 characters, plus the NUL.
    let mut buffer = vec![0u16; 257];
    let mut len = buffer.len() as u32;
    // SAFETY: `buffer` is writable for `len` characters; `len` is a local.
    if unsafe { GetUserNameW(buffer.as_mut_ptr(), &mut len) } == 0 {
        return Err(Error::last("GetUserNameW", "the current process"));
    }
    // `len` counts the NUL.
    Ok(String::from_utf16_lossy(&buffer[..(len as usize).saturating_sub(1)]))
}

/// The SID of the account this process runs as.
pub(crate) fn current_user_sid() -> Result<Sid, Error> {
    let token = own_token(TOKEN_QUERY)?;
    let buffer = token_information(handle(&token), TokenUser, "TokenUser of the current process")?;
    // SAFETY: GetTokenInformation(TokenUser) filled `buffer` with a TOKEN_USER whose SID
    // pointer points into the same buffer, which is alive here.
    unsafe {
        let user = &*buffer.as_ptr().cast::<TOKEN_USER>();
        sid_at(user.User.Sid)
    }
}

/// Whether this process runs elevated (a full administrator token).
pub(crate) fn is_elevated() -> bool {
    let Ok(token) = own_token(TOKEN_QUERY) else {
        return false;
    };
    let Ok(buffer) = token_information(handle(&token), TokenElevation, "TokenElevation") else {
        return false;
    };
    // SAFETY: GetTokenInformation(TokenElevation) filled `buffer` with a TOKEN_ELEVATION.
    unsafe { (*buffer.as_ptr().cast::<TOKEN_ELEVATION>()).TokenIsElevated != 0 }
}

/// Wine's version when this process runs under Wine, from the `wine_get_version` function
/// that Wine's ntdll exports and Windows' does not.
pub(crate) fn wine_version() -> Option<String> {
    let ntdll = wide("ntdll.dll");
    // SAFETY: ntdll is loaded in every process; the name is NUL-terminated.
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    if module.is_null() {
        return None;
    }
    // SAFETY: the module handle is valid and the name is a NUL-terminated ASCII string.
    let function = unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }?;
    // SAFETY: Wine declares `const char *wine_get_version(void)`, returning a static string.
    let get_version: unsafe extern "C" fn() -> *const std::ffi::c_char = unsafe { std::mem::transmute(function) };
    // SAFETY: the returned pointer is a static NUL-terminated string owned by Wine.
    let version = unsafe { std::ffi::CStr::from_ptr(get_version()) };
    Some(version.to_string_lossy().into_owned())
}

/// The raw handle of an owned one, for calls that take a `HANDLE`.
pub(crate) fn handle(owned: &OwnedHandle) -> HANDLE {
    use std::os::windows::io::AsRawHandle;
    owned.as_raw_handle()
}
