//! The Windows Filtering Platform filters of the sandbox accounts: installed persistently by
//! setup (which needs an administrator), looked up by their fixed keys on each run.
//!
//! `fwpuclnt.dll`'s functions are looked up at run time, so a system without them, or Wine
//! (whose `FwpmEngineOpen0` returns `RPC_S_CANNOT_SUPPORT`), gets an error that names the
//! missing function instead of a process that fails to load.

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{FWP_E_ALREADY_EXISTS, FWP_E_FILTER_NOT_FOUND, FreeLibrary, HANDLE, HMODULE};
use windows_sys::Win32::NetworkManagement::WindowsFilteringPlatform::{
    FWP_ACTION_BLOCK, FWP_ACTION_PERMIT, FWP_BYTE_BLOB, FWP_CONDITION_FLAG_IS_LOOPBACK, FWP_MATCH_EQUAL, FWP_MATCH_FLAGS_ALL_SET, FWP_MATCH_RANGE, FWP_RANGE0, FWP_RANGE_TYPE, FWP_UINT16,
    FWP_SECURITY_DESCRIPTOR_TYPE, FWP_UINT8, FWP_UINT32, FWPM_CONDITION_ALE_REMOTE_USER_ID, FWPM_CONDITION_ALE_USER_ID, FWPM_CONDITION_IP_REMOTE_PORT,
    FWPM_CONDITION_FLAGS, FWPM_FILTER_CONDITION0, FWPM_FILTER_FLAG_PERSISTENT, FWPM_FILTER0, FWPM_LAYER_ALE_AUTH_CONNECT_V4,
    FWPM_LAYER_ALE_AUTH_CONNECT_V6, FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4, FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6, FWPM_PROVIDER_FLAG_PERSISTENT,
    FWPM_PROVIDER0, FWPM_SESSION0, FWPM_SUBLAYER_FLAG_PERSISTENT, FWPM_SUBLAYER0,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;
use windows_sys::Win32::System::LibraryLoader::{GetProcAddress, LoadLibraryW};
use windows_sys::core::GUID;

use super::Error;
use super::error::Code;
use super::security::{Descriptor, account_sid, wide};
use crate::ace::Sid;
use crate::firewall::{self, PROVIDER_KEY, SUBLAYER_KEY, SUBLAYER_WEIGHT};
use crate::plan::{AccountKind, Accounts, Filter, FilterAction, Layer};

const LIBRARY: &str = "fwpuclnt.dll";
const CONSEQUENCE: &str = "palisade cannot install or check the firewall filters of its offline account, so --net none and --net allowlist cannot be enforced";
/// `RPC_C_AUTHN_DEFAULT`: let the engine choose the authentication service.
const RPC_C_AUTHN_DEFAULT: u32 = 0xffff_ffff;

type EngineOpen = unsafe extern "system" fn(*const u16, u32, *const c_void, *const FWPM_SESSION0, *mut HANDLE) -> u32;
type EngineClose = unsafe extern "system" fn(HANDLE) -> u32;
type Transaction = unsafe extern "system" fn(HANDLE) -> u32;
type TransactionBegin = unsafe extern "system" fn(HANDLE, u32) -> u32;
type ProviderAdd = unsafe extern "system" fn(HANDLE, *const FWPM_PROVIDER0, PSECURITY_DESCRIPTOR) -> u32;
type SubLayerAdd = unsafe extern "system" fn(HANDLE, *const FWPM_SUBLAYER0, PSECURITY_DESCRIPTOR) -> u32;
type FilterAdd = unsafe extern "system" fn(HANDLE, *const FWPM_FILTER0, PSECURITY_DESCRIPTOR, *mut u64) -> u32;
type GetByKey = unsafe extern "system" fn(HANDLE, *const GUID, *mut *mut c_void) -> u32;
type DeleteByKey = unsafe extern "system" fn(HANDLE, *const GUID) -> u32;
type FreeMemory = unsafe extern "system" fn(*mut *mut c_void);

/// The functions of `fwpuclnt.dll` that palisade uses.
struct Api {
    module: HMODULE,
    engine_open: EngineOpen,
    engine_close: EngineClose,
    transaction_begin: TransactionBegin,
    transaction_commit: Transaction,
    transaction_abort: Transaction,
    provider_add: ProviderAdd,
    provider_get: GetByKey,
    sublayer_add: SubLayerAdd,
    sublayer_get: GetByKey,
    filter_add: FilterAdd,
    filter_get: GetByKey,
    filter_delete: DeleteByKey,
    free_memory: FreeMemory,
}

impl Api {
    fn load() -> Result<Api, Error> {
        let name = wide(LIBRARY);
        // SAFETY: `name` is NUL-terminated; loading fwpuclnt runs no code of palisade's.
        let module = unsafe { LoadLibraryW(name.as_ptr()) };
        if module.is_null() {
            return Err(Error::Unavailable { function: "LoadLibraryW", library: LIBRARY, consequence: CONSEQUENCE });
        }
        // SAFETY: each type named below is the signature that fwpmu.h declares for the
        // export of that name, and `module` stays loaded while `Api` keeps the pointers.
        let api = unsafe {
            Api {
                module,
                engine_open: export::<EngineOpen>(module, "FwpmEngineOpen0")?,
                engine_close: export::<EngineClose>(module, "FwpmEngineClose0")?,
                transaction_begin: export::<TransactionBegin>(module, "FwpmTransactionBegin0")?,
                transaction_commit: export::<Transaction>(module, "FwpmTransactionCommit0")?,
                transaction_abort: export::<Transaction>(module, "FwpmTransactionAbort0")?,
                provider_add: export::<ProviderAdd>(module, "FwpmProviderAdd0")?,
                provider_get: export::<GetByKey>(module, "FwpmProviderGetByKey0")?,
                sublayer_add: export::<SubLayerAdd>(module, "FwpmSubLayerAdd0")?,
                sublayer_get: export::<GetByKey>(module, "FwpmSubLayerGetByKey0")?,
                filter_add: export::<FilterAdd>(module, "FwpmFilterAdd0")?,
                filter_get: export::<GetByKey>(module, "FwpmFilterGetByKey0")?,
                filter_delete: export::<DeleteByKey>(module, "FwpmFilterDeleteByKey0")?,
                free_memory: export::<FreeMemory>(module, "FwpmFreeMemory0")?,
            }
        };
        Ok(api)
    }
}

/// The export `function` of `module` as a function pointer of type `F`.
///
/// # Safety
/// `F` must be an `extern "system"` function pointer type matching the export's signature.
unsafe fn export<F: Copy>(module: HMODULE, function: &'static str) -> Result<F, Error> {
    let symbol = std::ffi::CString::new(function).expect("function names hold no NUL");
    // SAFETY: `module` is loaded and `symbol` is NUL-terminated.
    let address = unsafe { GetProcAddress(module, symbol.as_ptr().cast()) };
    let address = address.ok_or(Error::Unavailable { function, library: LIBRARY, consequence: CONSEQUENCE })?;
    assert_eq!(size_of::<F>(), size_of_val(&address), "F must be a function pointer");
    // SAFETY: the caller guarantees that `F` is the export's function pointer type, which has
    // the size and representation of the pointer GetProcAddress returned.
    Ok(unsafe { std::mem::transmute_copy(&address) })
}

impl Drop for Api {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by `load` and no function pointer outlives `self`.
        unsafe { FreeLibrary(self.module) };
    }
}

/// An open session with the filter engine.
struct Engine {
    api: Api,
    handle: HANDLE,
}

impl Engine {
    fn open() -> Result<Engine, Error> {
        let api = Api::load()?;
        let mut handle: HANDLE = null_mut();
        // SAFETY: a null server name means this machine, and no identity or session is passed.
        // `handle` is a local that receives the engine handle, closed on drop.
        let status = unsafe { (api.engine_open)(null(), RPC_C_AUTHN_DEFAULT, null(), null(), &mut handle) };
        if status != 0 {
            return Err(Error::Call { call: "FwpmEngineOpen0", object: "the local filter engine".into(), code: Code(status) });
        }
        Ok(Engine { api, handle })
    }

    /// Looks an object up by key; `None` when the engine has no such object.
    fn get(&self, get: GetByKey, key: u128, what: &str) -> Result<Option<Owned<'_>>, Error> {
        let guid = GUID::from_u128(key);
        let mut object: *mut c_void = null_mut();
        // SAFETY: the engine is open; `guid` and `object` are locals; on success the engine
        // allocates the object, freed by `Owned`'s drop.
        let status = unsafe { get(self.handle, &guid, &mut object) };
        match status {
            0 => Ok(Some(Owned { engine: self, pointer: object })),
            // Each lookup returns its own "not found" code: FWP_E_FILTER_NOT_FOUND,
            // FWP_E_PROVIDER_NOT_FOUND, FWP_E_SUBLAYER_NOT_FOUND are 0x80320003, 5 and 7.
            0x8032_0003 | 0x8032_0005 | 0x8032_0007 => Ok(None),
            _ => Err(Error::Call { call: "FwpmGetByKey0", object: what.to_owned(), code: Code(status) }),
        }
    }

    fn check(&self, call: &'static str, object: &str, status: u32) -> Result<(), Error> {
        if status == 0 { Ok(()) } else { Err(Error::Call { call, object: object.to_owned(), code: Code(status) }) }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by `open` and is closed once.
        unsafe { (self.api.engine_close)(self.handle) };
    }
}

/// Memory the engine allocated for a returned object.
struct Owned<'a> {
    engine: &'a Engine,
    pointer: *mut c_void,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer was returned by an engine lookup and is freed once.
        unsafe { (self.engine.api.free_memory)(&mut self.pointer) };
    }
}

/// Checks that every filter of `filters` is installed for its account.
pub fn verify(filters: &[Filter], accounts: &Accounts) -> Result<(), Error> {
    let engine = Engine::open()?;
    for filter in filters {
        let (name, sid) = account(accounts, filter.account)?;
        if !filter_in_place(&engine, filter, name, &sid)? {
            return Err(Error::NotSetUp {
                what: format!("the firewall filter \"{}\"", firewall::filter_name(filter, name)),
                fix: "run `palisade setup` from an elevated prompt (Run as administrator)".into(),
            });
        }
    }
    Ok(())
}

/// Counts palisade's firewall objects that are missing or differ: the provider, the sublayer
/// and each filter. Used by a dry run and to report a setup step as already in place.
pub fn missing(filters: &[Filter], accounts: &Accounts) -> Result<usize, Error> {
    let engine = Engine::open()?;
    let mut missing = 0;
    if engine.get(engine.api.provider_get, PROVIDER_KEY, "palisade's provider")?.is_none() {
        missing += 1;
    }
    if engine.get(engine.api.sublayer_get, SUBLAYER_KEY, "palisade's sublayer")?.is_none() {
        missing += 1;
    }
    for filter in filters {
        match account(accounts, filter.account) {
            Ok((name, sid)) if filter_in_place(&engine, filter, name, &sid)? => {}
            _ => missing += 1,
        }
    }
    Ok(missing)
}

/// Adds palisade's provider and sublayer when missing, and each filter that is missing or
/// differs, in one transaction. Returns how many objects were added.
pub fn install(filters: &[Filter], accounts: &Accounts) -> Result<usize, Error> {
    let engine = Engine::open()?;
    // SAFETY: the engine is open, and flags 0 request a read-write transaction.
    engine.check("FwpmTransactionBegin0", "palisade's filters", unsafe { (engine.api.transaction_begin)(engine.handle, 0) })?;
    match install_in_transaction(&engine, filters, accounts) {
        Ok(added) => {
            // SAFETY: a transaction is open on this engine.
            engine.check("FwpmTransactionCommit0", "palisade's filters", unsafe { (engine.api.transaction_commit)(engine.handle) })?;
            Ok(added)
        }
        Err(error) => {
            // SAFETY: a transaction is open on this engine; nothing of it is kept.
            unsafe { (engine.api.transaction_abort)(engine.handle) };
            Err(error)
        }
    }
}

fn install_in_transaction(engine: &Engine, filters: &[Filter], accounts: &Accounts) -> Result<usize, Error> {
    let mut added = 0;
    let mut provider_key = GUID::from_u128(PROVIDER_KEY);
    let (provider_name, provider_description, sublayer_name) = (wide(firewall::PROVIDER_NAME), wide(firewall::PROVIDER_DESCRIPTION), wide(firewall::SUBLAYER_NAME));

    if engine.get(engine.api.provider_get, PROVIDER_KEY, "palisade's provider")?.is_none() {
        // SAFETY: FWPM_PROVIDER0 is plain data with pointers, valid when zeroed.
        let mut provider: FWPM_PROVIDER0 = unsafe { std::mem::zeroed() };
        provider.providerKey = provider_key;
        provider.displayData.name = provider_name.as_ptr().cast_mut();
        provider.displayData.description = provider_description.as_ptr().cast_mut();
        provider.flags = FWPM_PROVIDER_FLAG_PERSISTENT;
        // SAFETY: the engine is open; `provider` and the strings it points to are alive.
        let status = unsafe { (engine.api.provider_add)(engine.handle, &provider, null_mut()) };
        if status != FWP_E_ALREADY_EXISTS as u32 {
            engine.check("FwpmProviderAdd0", "palisade's provider", status)?;
            added += 1;
        }
    }
    if engine.get(engine.api.sublayer_get, SUBLAYER_KEY, "palisade's sublayer")?.is_none() {
        // SAFETY: FWPM_SUBLAYER0 is plain data with pointers, valid when zeroed.
        let mut sublayer: FWPM_SUBLAYER0 = unsafe { std::mem::zeroed() };
        sublayer.subLayerKey = GUID::from_u128(SUBLAYER_KEY);
        sublayer.displayData.name = sublayer_name.as_ptr().cast_mut();
        sublayer.flags = FWPM_SUBLAYER_FLAG_PERSISTENT;
        sublayer.providerKey = &mut provider_key;
        sublayer.weight = SUBLAYER_WEIGHT;
        // SAFETY: the engine is open; `sublayer` and what it points to are alive.
        let status = unsafe { (engine.api.sublayer_add)(engine.handle, &sublayer, null_mut()) };
        if status != FWP_E_ALREADY_EXISTS as u32 {
            engine.check("FwpmSubLayerAdd0", "palisade's sublayer", status)?;
            added += 1;
        }
    }

    for filter in filters {
        let (name, sid) = account(accounts, filter.account)?;
        if filter_in_place(engine, filter, name, &sid)? {
            continue;
        }
        let key = GUID::from_u128(firewall::filter_key(filter, name));
        // A filter with this key but other content is replaced, not kept beside the new one.
        // SAFETY: the engine is open and `key` is a local.
        let status = unsafe { (engine.api.filter_delete)(engine.handle, &key) };
        if status != FWP_E_FILTER_NOT_FOUND as u32 {
            engine.check("FwpmFilterDeleteByKey0", &firewall::filter_name(filter, name), status)?;
        }
        add_filter(engine, filter, name, &sid, &mut provider_key)?;
        added += 1;
    }
    Ok(added)
}

/// Adds one filter: the account's user condition, and the loopback and same-account
/// conditions the filter asks for.
fn add_filter(engine: &Engine, filter: &Filter, account_name: &str, sid: &Sid, provider_key: &mut GUID) -> Result<(), Error> {
    let descriptor = Descriptor::from_sddl(&firewall::user_match_sddl(&sid.to_string()))?;
    let mut blob = FWP_BYTE_BLOB { size: descriptor.size, data: descriptor.as_ptr().cast() };
    let display_name = firewall::filter_name(filter, account_name);
    let name = wide(&display_name);

    // SAFETY: FWPM_FILTER_CONDITION0 is plain data with pointers, valid when zeroed.
    let mut user: FWPM_FILTER_CONDITION0 = unsafe { std::mem::zeroed() };
    user.fieldKey = FWPM_CONDITION_ALE_USER_ID;
    user.matchType = FWP_MATCH_EQUAL;
    user.conditionValue.r#type = FWP_SECURITY_DESCRIPTOR_TYPE;
    user.conditionValue.Anonymous.sd = &mut blob;
    let mut conditions = vec![user];
    if filter.loopback_only {
        // SAFETY: as above.
        let mut loopback: FWPM_FILTER_CONDITION0 = unsafe { std::mem::zeroed() };
        loopback.fieldKey = FWPM_CONDITION_FLAGS;
        loopback.matchType = FWP_MATCH_FLAGS_ALL_SET;
        loopback.conditionValue.r#type = FWP_UINT32;
        loopback.conditionValue.Anonymous.uint32 = FWP_CONDITION_FLAG_IS_LOOPBACK;
        conditions.push(loopback);
    }
    if filter.remote_is_sandbox {
        // SAFETY: as above.
        let mut remote: FWPM_FILTER_CONDITION0 = unsafe { std::mem::zeroed() };
        remote.fieldKey = FWPM_CONDITION_ALE_REMOTE_USER_ID;
        remote.matchType = FWP_MATCH_EQUAL;
        remote.conditionValue.r#type = FWP_SECURITY_DESCRIPTOR_TYPE;
        remote.conditionValue.Anonymous.sd = &mut blob;
        conditions.push(remote);
    }
    // The range lives until FwpmFilterAdd0 returns, like the other values the conditions
    // point to.
    let mut ports = port_range(filter.remote_ports);
    if let Some(range) = ports.as_mut() {
        // SAFETY: as above.
        let mut port: FWPM_FILTER_CONDITION0 = unsafe { std::mem::zeroed() };
        port.fieldKey = FWPM_CONDITION_IP_REMOTE_PORT;
        port.matchType = FWP_MATCH_RANGE;
        port.conditionValue.r#type = FWP_RANGE_TYPE;
        port.conditionValue.Anonymous.rangeValue = range;
        conditions.push(port);
    }

    // SAFETY: FWPM_FILTER0 is plain data with pointers and unions, valid when zeroed.
    let mut entry: FWPM_FILTER0 = unsafe { std::mem::zeroed() };
    entry.filterKey = GUID::from_u128(firewall::filter_key(filter, account_name));
    entry.displayData.name = name.as_ptr().cast_mut();
    entry.flags = FWPM_FILTER_FLAG_PERSISTENT;
    entry.providerKey = provider_key;
    entry.layerKey = layer_key(filter.layer);
    entry.subLayerKey = GUID::from_u128(SUBLAYER_KEY);
    entry.weight.r#type = FWP_UINT8;
    entry.weight.Anonymous.uint8 = filter.weight;
    entry.numFilterConditions = conditions.len() as u32;
    entry.filterCondition = conditions.as_mut_ptr();
    entry.action.r#type = action_type(filter.action);
    let mut id = 0u64;
    // SAFETY: the engine is open; `entry` points to `conditions`, `blob`, `descriptor`,
    // `name` and `provider_key`, all alive for the call; `id` is a local.
    let status = unsafe { (engine.api.filter_add)(engine.handle, &entry, null_mut(), &mut id) };
    engine.check("FwpmFilterAdd0", &display_name, status)
}

/// Whether the filter is installed with the right layer, action and account.
fn filter_in_place(engine: &Engine, filter: &Filter, account_name: &str, sid: &Sid) -> Result<bool, Error> {
    let display_name = firewall::filter_name(filter, account_name);
    let Some(found) = engine.get(engine.api.filter_get, firewall::filter_key(filter, account_name), &display_name)? else {
        return Ok(false);
    };
    // SAFETY: FwpmFilterGetByKey0 returned an FWPM_FILTER0 whose condition array and blobs
    // live in the same allocation, alive until `found` is dropped.
    let installed = unsafe {
        let entry = &*found.pointer.cast::<FWPM_FILTER0>();
        let conditions = if entry.filterCondition.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(entry.filterCondition, entry.numFilterConditions as usize)
        };
        let user_matches = conditions.iter().any(|condition| {
            if guid_value(&condition.fieldKey) != guid_value(&FWPM_CONDITION_ALE_USER_ID) || condition.conditionValue.r#type != FWP_SECURITY_DESCRIPTOR_TYPE {
                return false;
            }
            let blob = &*condition.conditionValue.Anonymous.sd;
            firewall::descriptor_matches(std::slice::from_raw_parts(blob.data, blob.size as usize), sid)
        });
        // The condition count tells a filter of this key from one an older palisade
        // installed with fewer conditions, which would match more connections.
        guid_value(&entry.layerKey) == guid_value(&layer_key(filter.layer))
            && entry.action.r#type == action_type(filter.action)
            && user_matches
            && conditions.len() == condition_count(filter)
    };
    Ok(installed)
}

/// The account name and SID that a filter of `kind` is keyed on.
fn account(accounts: &Accounts, kind: AccountKind) -> Result<(&str, Sid), Error> {
    let name = super::account::name_of(accounts, kind);
    let sid = account_sid(name)?.ok_or_else(|| Error::NotSetUp {
        what: format!("the sandbox account {name}"),
        fix: "run `palisade setup` from an elevated prompt (Run as administrator)".into(),
    })?;
    Ok((name, sid))
}

/// The number of conditions `add_filter` gives `filter`.
fn condition_count(filter: &Filter) -> usize {
    1 + usize::from(filter.loopback_only) + usize::from(filter.remote_is_sandbox) + usize::from(filter.remote_ports.is_some())
}

/// An FWP_RANGE0 of two FWP_UINT16 values for a port condition.
fn port_range(ports: Option<(u16, u16)>) -> Option<FWP_RANGE0> {
    let (first, last) = ports?;
    // SAFETY: FWP_RANGE0 is plain data with unions, valid when zeroed.
    let mut range: FWP_RANGE0 = unsafe { std::mem::zeroed() };
    range.valueLow.r#type = FWP_UINT16;
    range.valueLow.Anonymous.uint16 = first;
    range.valueHigh.r#type = FWP_UINT16;
    range.valueHigh.Anonymous.uint16 = last;
    Some(range)
}

fn layer_key(layer: Layer) -> GUID {
    match layer {
        Layer::ConnectV4 => FWPM_LAYER_ALE_AUTH_CONNECT_V4,
        Layer::ConnectV6 => FWPM_LAYER_ALE_AUTH_CONNECT_V6,
        Layer::AcceptV4 => FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4,
        Layer::AcceptV6 => FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6,
    }
}

fn action_type(action: FilterAction) -> u32 {
    match action {
        FilterAction::Block => FWP_ACTION_BLOCK,
        FilterAction::Permit => FWP_ACTION_PERMIT,
    }
}

/// A GUID as one number, for comparisons.
fn guid_value(guid: &GUID) -> u128 {
    let mut data4 = [0u8; 8];
    data4.copy_from_slice(&guid.data4);
    (u128::from(guid.data1) << 96) | (u128::from(guid.data2) << 80) | (u128::from(guid.data3) << 64) | u128::from(u64::from_be_bytes(data4))
}

/// Whether the filter engine can be opened: used by `palisade check`.
pub(crate) fn engine_available() -> Result<(), Error> {
    Engine::open().map(drop)
}
