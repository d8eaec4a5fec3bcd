//! The command's token, derived by the runner from its own (the sandbox account's): a LUA
//! restricted token whose administrator groups are deny-only, with every privilege but one
//! removed, at Low integrity. Each property is read back from the new token, and the run stops
//! when one did not take, because Windows versions and Wine differ in what they apply.

use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{HANDLE, LUID};
use windows_sys::Win32::Security::{
    CreateRestrictedToken, DISABLE_MAX_PRIVILEGE, LUA_TOKEN, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SID_AND_ATTRIBUTES,
    SetTokenInformation, TOKEN_ADJUST_DEFAULT, TOKEN_ASSIGN_PRIMARY, TOKEN_DUPLICATE, TOKEN_GROUPS, TOKEN_MANDATORY_LABEL,
    TOKEN_PRIVILEGES, TOKEN_QUERY, TokenGroups, TokenIntegrityLevel, TokenPrivileges,
};

use super::Error;
use super::security::{handle, own_token, sid_at, token_information, wide};
use crate::ace::Sid;
use crate::plan::TokenPlan;

/// `SE_GROUP_USE_FOR_DENY_ONLY`, from `winnt.h`.
const SE_GROUP_USE_FOR_DENY_ONLY: u32 = 0x10;
/// `SE_GROUP_INTEGRITY`, from `winnt.h`.
const SE_GROUP_INTEGRITY: u32 = 0x20;

/// Creates the command's token from the current process token, as `plan` describes.
pub fn sandbox_token(plan: &TokenPlan) -> Result<OwnedHandle, Error> {
    // The new token gets the access of the handle it is made from: enough to query it, set
    // its integrity level, and start a process with it.
    let own = own_token(TOKEN_DUPLICATE | TOKEN_QUERY | TOKEN_ASSIGN_PRIMARY | TOKEN_ADJUST_DEFAULT)?;
    let keep = privilege_luid(plan.keep_privilege)?;

    // DISABLE_MAX_PRIVILEGE alone removes every privilege but SeChangeNotifyPrivilege on
    // Windows. The explicit list below also covers a different `keep_privilege`, and systems
    // that ignore the flag, as Wine 8 does.
    let privileges = privileges_of(handle(&own))?;
    let delete: Vec<LUID_AND_ATTRIBUTES> = privileges.iter().filter(|luid| !same_luid(luid, &keep)).map(|luid| LUID_AND_ATTRIBUTES { Luid: *luid, Attributes: 0 }).collect();

    let deny_only: Vec<Sid> = plan.deny_only.iter().map(|text| Sid::parse(text)).collect::<Result<_, _>>().map_err(|error| Error::Io { what: "a deny-only group of the token plan".into(), source: std::io::Error::other(error) })?;
    let disable: Vec<SID_AND_ATTRIBUTES> = deny_only.iter().map(|sid| SID_AND_ATTRIBUTES { Sid: sid.as_bytes().as_ptr().cast_mut().cast(), Attributes: 0 }).collect();

    let mut restricted: HANDLE = null_mut();
    // SAFETY: `own` is a token handle with TOKEN_DUPLICATE. `disable` and `delete` contain
    // `len()` initialised entries, whose SID pointers point into `deny_only`, alive for the
    // call. No restricting SIDs are passed, and `restricted` is a local.
    let ok = unsafe {
        CreateRestrictedToken(
            handle(&own),
            DISABLE_MAX_PRIVILEGE | LUA_TOKEN,
            disable.len() as u32,
            disable.as_ptr(),
            delete.len() as u32,
            delete.as_ptr(),
            0,
            null(),
            &mut restricted,
        )
    };
    if ok == 0 {
        return Err(Error::last("CreateRestrictedToken", "the sandbox account's token"));
    }
    // SAFETY: CreateRestrictedToken succeeded, so `restricted` is a new handle nothing else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(restricted) };

    check_privileges(handle(&token), &keep)?;
    check_deny_only(handle(&token), &deny_only)?;
    set_integrity(handle(&token), plan.integrity.sid())?;
    Ok(token)
}

/// Looks up the LUID of the privilege named `name` on this system.
fn privilege_luid(name: &str) -> Result<LUID, Error> {
    let text = wide(name);
    let mut luid = LUID { LowPart: 0, HighPart: 0 };
    // SAFETY: `text` is NUL-terminated; `luid` is a local.
    if unsafe { LookupPrivilegeValueW(null(), text.as_ptr(), &mut luid) } == 0 {
        return Err(Error::last("LookupPrivilegeValueW", name));
    }
    Ok(luid)
}

fn same_luid(a: &LUID, b: &LUID) -> bool {
    a.LowPart == b.LowPart && a.HighPart == b.HighPart
}

/// Lists the LUIDs of every privilege in the token, enabled or not.
fn privileges_of(token: HANDLE) -> Result<Vec<LUID>, Error> {
    let buffer = token_information(token, TokenPrivileges, "TokenPrivileges")?;
    // SAFETY: GetTokenInformation(TokenPrivileges) filled `buffer` with a TOKEN_PRIVILEGES
    // holding `PrivilegeCount` entries, all inside the buffer it sized.
    let privileges = unsafe {
        let header = &*buffer.as_ptr().cast::<TOKEN_PRIVILEGES>();
        std::slice::from_raw_parts(header.Privileges.as_ptr(), header.PrivilegeCount as usize)
    };
    Ok(privileges.iter().map(|entry| entry.Luid).collect())
}

/// Fails unless `keep` is the only privilege left in the token.
fn check_privileges(token: HANDLE, keep: &LUID) -> Result<(), Error> {
    let left = privileges_of(token)?;
    if left.iter().all(|luid| same_luid(luid, keep)) {
        return Ok(());
    }
    Err(Error::NotEnforced {
        what: "removing privileges with CreateRestrictedToken",
        consequence: "privileges other than the plan's one remained in the restricted token, so the command is not started with it",
    })
}

/// Fails unless every group of `deny_only` that is in the token is deny-only there.
fn check_deny_only(token: HANDLE, deny_only: &[Sid]) -> Result<(), Error> {
    let buffer = token_information(token, TokenGroups, "TokenGroups")?;
    // SAFETY: GetTokenInformation(TokenGroups) filled `buffer` with a TOKEN_GROUPS holding
    // `GroupCount` entries whose SID pointers point into the same buffer, alive here.
    let groups = unsafe {
        let header = &*buffer.as_ptr().cast::<TOKEN_GROUPS>();
        std::slice::from_raw_parts(header.Groups.as_ptr(), header.GroupCount as usize)
    };
    for group in groups {
        // SAFETY: each entry's SID points to a valid SID inside `buffer`.
        let sid = unsafe { sid_at(group.Sid) }?;
        if deny_only.contains(&sid) && group.Attributes & SE_GROUP_USE_FOR_DENY_ONLY == 0 {
            return Err(Error::NotEnforced {
                what: "making the administrator groups deny-only with CreateRestrictedToken",
                consequence: "an administrator group stayed enabled in the restricted token, so the command is not started with it",
            });
        }
    }
    Ok(())
}

/// Sets the token's integrity level to `level_sid` and reads it back.
fn set_integrity(token: HANDLE, level_sid: &str) -> Result<(), Error> {
    let level = Sid::parse(level_sid).map_err(|error| Error::Io { what: "the integrity level of the token plan".into(), source: std::io::Error::other(error) })?;
    let label = TOKEN_MANDATORY_LABEL { Label: SID_AND_ATTRIBUTES { Sid: level.as_bytes().as_ptr().cast_mut().cast(), Attributes: SE_GROUP_INTEGRITY } };
    let len = (size_of::<TOKEN_MANDATORY_LABEL>() + level.as_bytes().len()) as u32;
    // SAFETY: `token` was opened with TOKEN_ADJUST_DEFAULT; `label` points to `level`, which
    // is alive for the call; the length covers the structure and the SID.
    if unsafe { SetTokenInformation(token, TokenIntegrityLevel, (&raw const label).cast(), len) } == 0 {
        return Err(Error::last("SetTokenInformation(TokenIntegrityLevel)", "the restricted token"));
    }

    let buffer = token_information(token, TokenIntegrityLevel, "TokenIntegrityLevel")?;
    // SAFETY: GetTokenInformation(TokenIntegrityLevel) filled `buffer` with a
    // TOKEN_MANDATORY_LABEL whose SID points into the same buffer, alive here.
    let actual = unsafe { sid_at((*buffer.as_ptr().cast::<TOKEN_MANDATORY_LABEL>()).Label.Sid) }?;
    if actual != level {
        // Wine 8 accepts the call and keeps the old level.
        return Err(Error::NotEnforced {
            what: "SetTokenInformation(TokenIntegrityLevel)",
            consequence: "the token kept its integrity level instead of Low, so the command is not started with it",
        });
    }
    Ok(())
}
