//! A caller's two sandbox accounts: created by setup, their passwords kept with DPAPI in the
//! caller's `AppData\Local\palisade\accounts`, and loaded by each run to start the runner
//! with `CreateProcessWithLogonW`.
//!
//! DPAPI's user scope ties the store to the caller's Windows account: another user, or the
//! sandbox accounts themselves, cannot decrypt it even where they can read the file. Setup
//! must therefore run as the caller (an elevated prompt of the same user, not another
//! administrator's credentials).

use std::ffi::c_void;
use std::fmt;
use std::io::Write as _;
use std::os::windows::ffi::OsStringExt as _;
use std::os::windows::io::{AsRawHandle as _, FromRawHandle};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{
    ERROR_LOGON_FAILURE, ERROR_MEMBER_IN_ALIAS, GENERIC_WRITE, GetLastError, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::NetworkManagement::NetManagement::{
    LOCALGROUP_MEMBERS_INFO_3, LOCALGROUP_USERS_INFO_0, NERR_UserExists, NetApiBufferFree, NetLocalGroupAddMembers, NetUserAdd,
    NetUserGetLocalGroups, NetUserSetInfo, UF_DONT_EXPIRE_PASSWD, UF_PASSWD_CANT_CHANGE, UF_SCRIPT, USER_INFO_1, USER_INFO_1003,
    USER_INFO_1008, USER_PRIV_USER,
};
use windows_sys::Win32::Security::Cryptography::{
    BCRYPT_USE_SYSTEM_PREFERRED_RNG, BCryptGenRandom, CRYPT_INTEGER_BLOB, CRYPTPROTECT_UI_FORBIDDEN, CryptProtectData,
    CryptUnprotectData,
};
use windows_sys::Win32::Security::{LOGON32_LOGON_INTERACTIVE, LOGON32_PROVIDER_DEFAULT, LogonUserW, LookupAccountSidW, SECURITY_ATTRIBUTES, SID_NAME_USE, TOKEN_QUERY};
use windows_sys::Win32::Storage::FileSystem::{CREATE_ALWAYS, CreateDirectoryW, CreateFileW, FILE_ATTRIBUTE_NORMAL};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_SET_VALUE, REG_DWORD, REG_OPTION_NON_VOLATILE, RegCloseKey, RegCreateKeyExW,
    RegOpenKeyExW, RegQueryValueExW, RegSetValueExW,
};
use windows_sys::Win32::UI::Shell::GetUserProfileDirectoryW;

use super::Error;
use super::error::Code;
use super::security::{Descriptor, LocalMemory, account_sid, current_user_sid, from_wide_ptr, own_token, wide};
use crate::ace::Sid;
use crate::plan::{AccountKind, Accounts};
use crate::store;

/// The name and password of one sandbox account.
pub struct Credentials {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).field("password", &"<hidden>").finish()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        // SAFETY: zero bytes are valid UTF-8, so the string stays valid.
        unsafe { self.password.as_bytes_mut().fill(0) };
    }
}

/// The registry key whose values hide accounts from the sign-in screen.
const USER_LIST_KEY: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon\SpecialAccounts\UserList";
/// The well-known SID of the local Users group, whose name differs between languages.
const USERS_GROUP_SID: &str = "S-1-5-32-545";
/// The label DPAPI stores with each protected password.
const DPAPI_DESCRIPTION: &str = "palisade sandbox account";

fn setup_needed(what: String) -> Error {
    Error::NotSetUp { what, fix: "run `palisade setup` from an elevated prompt (Run as administrator)".into() }
}

/// Loads the name and password of the account of `kind`.
pub fn load(accounts: &Accounts, kind: AccountKind) -> Result<Credentials, Error> {
    let name = name_of(accounts, kind);
    if account_sid(name)?.is_none() {
        return Err(setup_needed(format!("the sandbox account {name}")));
    }
    let path = store_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(setup_needed(format!("the password store {}", path.display()))),
        Err(source) => return Err(Error::Io { what: format!("failed to read {}", path.display()), source }),
    };
    let entries = store::parse(&text).map_err(|error| Error::Io { what: format!("failed to read {}", path.display()), source: std::io::Error::other(error) })?;
    let Some(entry) = store::find(&entries, kind, name) else {
        return Err(setup_needed(format!("the password of {name} in {}", path.display())));
    };
    let password = unprotect(&entry.protected, name)?;
    Ok(Credentials { name: name.to_owned(), password })
}

pub(crate) fn name_of(accounts: &Accounts, kind: AccountKind) -> &str {
    match kind {
        AccountKind::Offline => &accounts.offline,
        AccountKind::Online => &accounts.online,
    }
}

/// Returns `AppData\Local\palisade\accounts` in the caller's profile directory, which is where
/// `%LOCALAPPDATA%` points by default.
///
/// The profile comes from the caller's token rather than from `%USERPROFILE%`. Nor does the
/// path come from the known folder `FOLDERID_LocalAppData`, which Windows expands from
/// `%USERPROFILE%` in this process's environment (platformdirs 4.7.0 failed on that when
/// `USERPROFILE` named a directory without `AppData\Local`). So the store stays where setup
/// wrote it when a run's environment names another home directory, as `palisade selftest`
/// does with its fake home.
pub fn store_path() -> Result<PathBuf, Error> {
    let token = own_token(TOKEN_QUERY)?;
    let mut length = 0u32;
    // SAFETY: the token is valid and has TOKEN_QUERY; a null buffer with a length of 0 requests
    // the length needed, written to a local.
    unsafe { GetUserProfileDirectoryW(token.as_raw_handle(), null_mut(), &mut length) };
    let mut buffer = vec![0u16; length.max(1) as usize];
    // SAFETY: `buffer` is writable for `length` characters, the length the first call returned.
    if unsafe { GetUserProfileDirectoryW(token.as_raw_handle(), buffer.as_mut_ptr(), &mut length) } == 0 {
        return Err(Error::last("GetUserProfileDirectoryW", "the caller's token"));
    }
    let end = buffer.iter().position(|&unit| unit == 0).unwrap_or(buffer.len());
    let profile = PathBuf::from(std::ffi::OsString::from_wide(&buffer[..end]));
    Ok(profile.join("AppData").join("Local").join("palisade").join("accounts"))
}

/// Reads every entry of the store, or none when it does not exist or cannot be parsed (setup
/// then writes a new one).
pub(crate) fn read_store() -> Result<Vec<store::Entry>, Error> {
    let path = store_path()?;
    Ok(std::fs::read_to_string(&path).ok().and_then(|text| store::parse(&text).ok()).unwrap_or_default())
}

/// Checks whether the store has a password for the account that still signs it in.
pub(crate) fn stored_password_works(entries: &[store::Entry], kind: AccountKind, name: &str) -> bool {
    let Some(entry) = store::find(entries, kind, name) else {
        return false;
    };
    let Ok(password) = unprotect(&entry.protected, name) else {
        return false;
    };
    let credentials = Credentials { name: name.to_owned(), password };
    !matches!(sign_in(&credentials), Err(code) if code == ERROR_LOGON_FAILURE)
}

/// Signs the account in once, to check its password. Returns the error code on failure.
fn sign_in(credentials: &Credentials) -> Result<(), u32> {
    let (name, domain, password) = (wide(&credentials.name), wide("."), wide(&credentials.password));
    let mut token: HANDLE = null_mut();
    // SAFETY: the three strings are NUL-terminated and outlive the call; `token` is a local
    // that receives a new handle on success, closed at once.
    let ok = unsafe { LogonUserW(name.as_ptr(), domain.as_ptr(), password.as_ptr(), LOGON32_LOGON_INTERACTIVE, LOGON32_PROVIDER_DEFAULT, &mut token) };
    if ok == 0 {
        // SAFETY: reads the calling thread's last error, set by LogonUserW.
        return Err(unsafe { GetLastError() });
    }
    // SAFETY: LogonUserW returned a new handle owned here alone.
    drop(unsafe { std::os::windows::io::OwnedHandle::from_raw_handle(token) });
    Ok(())
}

/// Creates the account, or gives an existing one a new password, and returns its credentials
/// and whether it was created. Either way the account ends with palisade's flags and in Users.
pub(crate) fn create_or_reset(kind: AccountKind, name: &str, caller: &str) -> Result<(Credentials, bool), Error> {
    let password = new_password()?;
    let (wide_name, wide_password) = (wide(name), wide(&password));
    let comment = wide(&format!("palisade sandbox account of {caller} ({})", store::kind_name(kind)));
    let flags = UF_SCRIPT | UF_DONT_EXPIRE_PASSWD | UF_PASSWD_CANT_CHANGE;
    let info = USER_INFO_1 {
        usri1_name: wide_name.as_ptr().cast_mut(),
        usri1_password: wide_password.as_ptr().cast_mut(),
        usri1_password_age: 0,
        usri1_priv: USER_PRIV_USER,
        usri1_home_dir: null_mut(),
        usri1_comment: comment.as_ptr().cast_mut(),
        usri1_flags: flags,
        usri1_script_path: null_mut(),
    };
    let mut bad_field = 0u32;
    // SAFETY: `info` points to NUL-terminated strings that outlive the call; `bad_field` is a
    // local.
    let status = unsafe { NetUserAdd(null(), 1, (&raw const info).cast(), &mut bad_field) };
    let created = match status {
        0 => true,
        status if status == NERR_UserExists => {
            let reset = USER_INFO_1003 { usri1003_password: wide_password.as_ptr().cast_mut() };
            // SAFETY: `reset` points to a NUL-terminated string that outlives the call.
            let status = unsafe { NetUserSetInfo(null(), wide_name.as_ptr(), 1003, (&raw const reset).cast(), &mut bad_field) };
            if status != 0 {
                return Err(Error::Call { call: "NetUserSetInfo(password)", object: name.to_owned(), code: Code(status) });
            }
            let flag_info = USER_INFO_1008 { usri1008_flags: flags };
            // SAFETY: `flag_info` is a local structure of plain data.
            let status = unsafe { NetUserSetInfo(null(), wide_name.as_ptr(), 1008, (&raw const flag_info).cast(), &mut bad_field) };
            if status != 0 {
                return Err(Error::Call { call: "NetUserSetInfo(flags)", object: name.to_owned(), code: Code(status) });
            }
            false
        }
        _ => return Err(Error::Call { call: "NetUserAdd", object: name.to_owned(), code: Code(status) }),
    };
    add_to_users(name)?;
    Ok((Credentials { name: name.to_owned(), password }, created))
}

/// A new random password for an account.
fn new_password() -> Result<String, Error> {
    let mut random = [0u8; store::PASSWORD_RANDOM_BYTES];
    // SAFETY: `random` is writable for its length; no algorithm handle is needed with
    // BCRYPT_USE_SYSTEM_PREFERRED_RNG.
    let status = unsafe { BCryptGenRandom(null_mut(), random.as_mut_ptr(), random.len() as u32, BCRYPT_USE_SYSTEM_PREFERRED_RNG) };
    if status < 0 {
        return Err(Error::Call { call: "BCryptGenRandom", object: "a sandbox account password".into(), code: Code(status as u32) });
    }
    let password = store::password(&random);
    random.fill(0);
    Ok(password)
}

/// Adds the account to the local Users group, whose name is looked up from its SID.
fn add_to_users(name: &str) -> Result<(), Error> {
    let group = users_group_name()?;
    let member = wide(name);
    let info = LOCALGROUP_MEMBERS_INFO_3 { lgrmi3_domainandname: member.as_ptr().cast_mut() };
    let group_wide = wide(&group);
    // SAFETY: both strings are NUL-terminated and outlive the call; one entry is passed.
    let status = unsafe { NetLocalGroupAddMembers(null(), group_wide.as_ptr(), 3, (&raw const info).cast(), 1) };
    if status != 0 && status != ERROR_MEMBER_IN_ALIAS {
        return Err(Error::Call { call: "NetLocalGroupAddMembers", object: format!("{name} in {group}"), code: Code(status) });
    }
    Ok(())
}

fn users_group_name() -> Result<String, Error> {
    let sid = Sid::parse(USERS_GROUP_SID).expect("the Users SID is well formed");
    let mut name = vec![0u16; 256];
    let mut name_len = name.len() as u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind: SID_NAME_USE = 0;
    // SAFETY: `sid` is a valid SID; both buffers are writable for the lengths passed, which
    // are locals the call updates.
    let ok = unsafe { LookupAccountSidW(null(), sid.as_bytes().as_ptr().cast_mut().cast(), name.as_mut_ptr(), &mut name_len, domain.as_mut_ptr(), &mut domain_len, &mut kind) };
    if ok == 0 {
        return Err(Error::last("LookupAccountSidW", USERS_GROUP_SID));
    }
    Ok(String::from_utf16_lossy(&name[..name_len as usize]))
}

/// The local groups of the account other than Users, which palisade's accounts must not have.
pub(crate) fn extra_groups(name: &str) -> Result<Vec<String>, Error> {
    let users = users_group_name()?;
    let account = wide(name);
    let mut buffer: *mut u8 = null_mut();
    let (mut read, mut total) = (0u32, 0u32);
    // SAFETY: `account` is NUL-terminated; `buffer` receives a NetApiBufferAllocate'd array of
    // `read` entries, freed below; MAX_PREFERRED_LENGTH asks for all of them at once.
    let status = unsafe { NetUserGetLocalGroups(null(), account.as_ptr(), 0, 0, &mut buffer, u32::MAX, &mut read, &mut total) };
    if status != 0 {
        return Err(Error::Call { call: "NetUserGetLocalGroups", object: name.to_owned(), code: Code(status) });
    }
    // SAFETY: on success `buffer` holds `read` LOCALGROUP_USERS_INFO_0 entries whose names
    // point into the same allocation, alive until NetApiBufferFree.
    let groups: Vec<String> = unsafe {
        let entries = std::slice::from_raw_parts(buffer.cast::<LOCALGROUP_USERS_INFO_0>(), read as usize);
        let names = entries.iter().map(|entry| from_wide_ptr(entry.lgrui0_name)).collect();
        NetApiBufferFree(buffer.cast::<c_void>());
        names
    };
    Ok(groups.into_iter().filter(|group| !group.eq_ignore_ascii_case(&users)).collect())
}

/// Whether the account is hidden from the sign-in screen.
pub(crate) fn is_hidden(name: &str) -> bool {
    let key_name = wide(USER_LIST_KEY);
    let mut key: HKEY = null_mut();
    // SAFETY: `key_name` is NUL-terminated; `key` receives an open key on success, closed below.
    if unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, key_name.as_ptr(), 0, KEY_QUERY_VALUE, &mut key) } != 0 {
        return false;
    }
    let value_name = wide(name);
    let mut value = 1u32;
    let mut len = size_of::<u32>() as u32;
    let mut kind = 0u32;
    // SAFETY: `key` is open; `value` is writable for `len` bytes; the rest are locals.
    let status = unsafe { RegQueryValueExW(key, value_name.as_ptr(), null(), &mut kind, (&raw mut value).cast(), &mut len) };
    // SAFETY: `key` is open and closed once.
    unsafe { RegCloseKey(key) };
    status == 0 && kind == REG_DWORD && value == 0
}

/// Hides the account from the sign-in screen: a DWORD 0 named after it in the UserList key.
pub(crate) fn hide(name: &str) -> Result<(), Error> {
    let key_name = wide(USER_LIST_KEY);
    let mut key: HKEY = null_mut();
    // SAFETY: `key_name` is NUL-terminated; `key` receives an open key on success, closed
    // below; no class, security attributes or disposition are needed.
    let status = unsafe { RegCreateKeyExW(HKEY_LOCAL_MACHINE, key_name.as_ptr(), 0, null(), REG_OPTION_NON_VOLATILE, KEY_SET_VALUE, null(), &mut key, null_mut()) };
    if status != 0 {
        return Err(Error::Call { call: "RegCreateKeyExW", object: format!(r"HKLM\{USER_LIST_KEY}"), code: Code(status) });
    }
    let value_name = wide(name);
    let hidden = 0u32;
    // SAFETY: `key` is open with KEY_SET_VALUE; the value is 4 bytes of a local.
    let status = unsafe { RegSetValueExW(key, value_name.as_ptr(), 0, REG_DWORD, (&raw const hidden).cast(), 4) };
    // SAFETY: `key` is open and closed once.
    unsafe { RegCloseKey(key) };
    if status != 0 {
        return Err(Error::Call { call: "RegSetValueExW", object: format!(r"HKLM\{USER_LIST_KEY}\{name}"), code: Code(status) });
    }
    Ok(())
}

/// Protects a password with DPAPI for the calling user.
pub(crate) fn protect(password: &str, name: &str) -> Result<Vec<u8>, Error> {
    let input = CRYPT_INTEGER_BLOB { cbData: password.len() as u32, pbData: password.as_ptr().cast_mut() };
    let description = wide(DPAPI_DESCRIPTION);
    let mut output = CRYPT_INTEGER_BLOB { cbData: 0, pbData: null_mut() };
    // SAFETY: `input` points to the password's bytes, which DPAPI only reads; the description
    // is NUL-terminated; `output` receives a LocalAlloc'd buffer, owned below.
    if unsafe { CryptProtectData(&input, description.as_ptr(), null(), null(), null(), CRYPTPROTECT_UI_FORBIDDEN, &mut output) } == 0 {
        return Err(Error::last("CryptProtectData", format!("the password of {name}")));
    }
    let memory = LocalMemory(output.pbData.cast());
    // SAFETY: DPAPI returned `cbData` bytes at `pbData`, alive until `memory` is dropped.
    Ok(unsafe { std::slice::from_raw_parts(memory.0.cast::<u8>(), output.cbData as usize) }.to_vec())
}

/// Decrypts a password that [`protect`] returned.
fn unprotect(protected: &[u8], name: &str) -> Result<String, Error> {
    let input = CRYPT_INTEGER_BLOB { cbData: protected.len() as u32, pbData: protected.as_ptr().cast_mut() };
    let mut output = CRYPT_INTEGER_BLOB { cbData: 0, pbData: null_mut() };
    // SAFETY: `input` points to the protected bytes, which DPAPI only reads; `output`
    // receives a LocalAlloc'd buffer, owned below.
    if unsafe { CryptUnprotectData(&input, null_mut(), null(), null(), null(), CRYPTPROTECT_UI_FORBIDDEN, &mut output) } == 0 {
        return Err(Error::last("CryptUnprotectData", format!("the stored password of {name} (stored by another Windows user, or corrupted)")));
    }
    let memory = LocalMemory(output.pbData.cast());
    // SAFETY: DPAPI returned `cbData` bytes at `pbData`, alive until `memory` is dropped.
    let bytes = unsafe { std::slice::from_raw_parts_mut(memory.0.cast::<u8>(), output.cbData as usize) };
    let password = String::from_utf8(bytes.to_vec()).map_err(|_| Error::Io { what: format!("the stored password of {name}"), source: std::io::Error::other("not UTF-8") });
    bytes.fill(0);
    password
}

/// Writes the store: the directory and the file readable and writable only by the caller,
/// the file replaced whole so a reader never sees half of it.
pub(crate) fn write_store(entries: &[store::Entry]) -> Result<PathBuf, Error> {
    let path = store_path()?;
    let caller: Sid = current_user_sid()?;
    let only_caller = Descriptor::from_sddl(&format!("D:P(A;OICI;FA;;;{caller})"))?;
    let attributes = SECURITY_ATTRIBUTES { nLength: size_of::<SECURITY_ATTRIBUTES>() as u32, lpSecurityDescriptor: only_caller.as_ptr(), bInheritHandle: 0 };

    let directory = path.parent().expect("the store path has a parent");
    std::fs::create_dir_all(directory.parent().expect("AppData\\Local is a directory")).map_err(|source| Error::Io { what: format!("failed to create {}", directory.display()), source })?;
    if !directory.is_dir() {
        let name = wide(&directory.to_string_lossy());
        // SAFETY: `name` is NUL-terminated; `attributes` points to a descriptor alive here.
        if unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } == 0 {
            return Err(Error::last("CreateDirectoryW", directory.display()));
        }
    }

    let temporary = path.with_extension("new");
    let name = wide(&temporary.to_string_lossy());
    // SAFETY: `name` is NUL-terminated; `attributes` gives the new file a protected DACL that
    // only the caller is in; no template is passed.
    let raw = unsafe { CreateFileW(name.as_ptr(), GENERIC_WRITE, 0, &attributes, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, null_mut()) };
    if raw == INVALID_HANDLE_VALUE {
        return Err(Error::last("CreateFileW", temporary.display()));
    }
    // SAFETY: CreateFileW returned a new handle owned here alone.
    let mut file = unsafe { std::fs::File::from_raw_handle(raw) };
    let written = file.write_all(store::format(entries).as_bytes()).and_then(|()| file.sync_all());
    drop(file);
    written.map_err(|source| Error::Io { what: format!("failed to write {}", temporary.display()), source })?;
    std::fs::rename(&temporary, &path).map_err(|source| Error::Io { what: format!("failed to replace {}", path.display()), source })?;
    Ok(path)
}
