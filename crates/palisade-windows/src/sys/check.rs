//! `palisade check` on Windows: probes each enforcement layer the way a run would use it and
//! reports what is missing and how to fix it. The ACL entries depend on the policy, so each
//! run checks them instead.

use std::ptr::null;

use windows_sys::Win32::Foundation::{CloseHandle, FreeLibrary};
use windows_sys::Win32::System::JobObjects::CreateJobObjectW;
use windows_sys::Win32::System::LibraryLoader::{GetProcAddress, LoadLibraryW};

use super::security::{account_sid, current_user_name, wide, wine_version};
use super::{Error, account, token, wfp};
use crate::path::WinPath;
use crate::plan::{AccountKind, Machine, Plan, Request};

pub use crate::check_report::{CheckReport, Layer};

const SETUP_FIX: &str = "run `palisade setup` from an elevated prompt (Run as administrator)";

/// Probes every layer.
pub fn check() -> CheckReport {
    let wine = wine_version();
    let plan = current_user_name().map_err(|error| error.to_string()).and_then(|name| reference_plan(&name));
    let layers = vec![
        Layer::new("job_objects", true, job_objects()),
        Layer::new("restricted_token", true, restricted_token(&plan)),
        Layer::new("accounts", true, accounts(&plan)),
        Layer::new("password_store", true, password_store(&plan)),
        Layer::new("wfp", true, filters(&plan, wine.is_some())),
        Layer::new("appcontainer", false, appcontainer()),
    ];
    CheckReport { layers, wine }
}

/// Builds the plan of a read-only policy for `user_name`. The token and the filters do not depend on
/// the policy's paths, which is all `check` takes from it.
fn reference_plan(user_name: &str) -> Result<Plan, String> {
    let path = |text: &str| WinPath::parse(text).expect("a fixed absolute path parses");
    let machine = Machine {
        user_name: user_name.to_owned(),
        profile_dir: path(r"C:\Users\palisade-check"),
        path_dirs: Vec::new(),
        system_root: path(r"C:\Windows"),
        cpu_count: 1,
        state_dir: path(r"C:\ProgramData\palisade"),
        program_dirs: Vec::new(),
    };
    let request = Request {
        profile: palisade_policy::Profile::ReadOnly,
        workspace: path(r"C:\palisade-check"),
        cwd: path(r"C:\palisade-check"),
        read_only: Vec::new(),
        copy_on_write: Vec::new(),
        writable: Vec::new(),
        hidden: Vec::new(),
        protected: Vec::new(),
        network: palisade_policy::NetworkMode::None,
        limits: Default::default(),
        default_limits: Default::default(),
    };
    crate::plan::plan(&request, &machine).map_err(|error| error.to_string())
}

fn job_objects() -> Result<String, (String, String)> {
    // SAFETY: no attributes and no name are passed; the handle is closed at once.
    let job = unsafe { CreateJobObjectW(null(), null()) };
    if job.is_null() {
        let error = Error::last("CreateJobObjectW", "an unnamed job");
        return Err((error.to_string(), "job objects are part of every Windows since XP; check that no security product blocks them".into()));
    }
    // SAFETY: `job` is a handle this function owns, closed once.
    unsafe { CloseHandle(job) };
    Ok("job objects: kill on close, memory, process and CPU limits, UI restrictions".into())
}

fn restricted_token(plan: &Result<Plan, String>) -> Result<String, (String, String)> {
    let plan = plan.as_ref().map_err(|error| (error.clone(), String::new()))?;
    // The runner derives the command's token from the sandbox account's; the same calls on
    // this process's token show whether this system applies them.
    match token::sandbox_token(&plan.token) {
        Ok(_) => Ok("LUA restricted token, administrator groups deny-only, one privilege, Low integrity (each read back)".into()),
        Err(error) => Err((error.to_string(), "a Windows that applies restricted tokens and integrity levels (Vista or later; Wine does not)".into())),
    }
}

fn accounts(plan: &Result<Plan, String>) -> Result<String, (String, String)> {
    let plan = plan.as_ref().map_err(|error| (error.clone(), String::new()))?;
    let accounts = &plan.accounts;
    for name in [&accounts.offline, &accounts.online] {
        match account_sid(name) {
            Ok(Some(_)) => {}
            Ok(None) => return Err((format!("the sandbox account {name} does not exist"), SETUP_FIX.into())),
            Err(error) => return Err((error.to_string(), SETUP_FIX.into())),
        }
        match account::extra_groups(name) {
            Ok(extra) if extra.is_empty() => {}
            Ok(extra) => return Err((format!("{name} belongs to {} besides Users", extra.join(", ")), format!("remove {name} from those groups"))),
            Err(error) => return Err((error.to_string(), SETUP_FIX.into())),
        }
    }
    let hidden = if account::is_hidden(&accounts.offline) && account::is_hidden(&accounts.online) { "hidden from the sign-in screen" } else { "shown on the sign-in screen" };
    Ok(format!("{} and {} exist, members of Users only, {hidden}", accounts.offline, accounts.online))
}

fn password_store(plan: &Result<Plan, String>) -> Result<String, (String, String)> {
    let plan = plan.as_ref().map_err(|error| (error.clone(), String::new()))?;
    let path = account::store_path().map(|path| path.display().to_string()).unwrap_or_else(|error| error.to_string());
    for kind in [AccountKind::Offline, AccountKind::Online] {
        // The credentials are dropped at once, which clears the password.
        if let Err(error) = account::load(&plan.accounts, kind) {
            return Err((error.to_string(), SETUP_FIX.into()));
        }
    }
    Ok(format!("both passwords decrypt with DPAPI from {path}"))
}

fn filters(plan: &Result<Plan, String>, wine: bool) -> Result<String, (String, String)> {
    let plan = plan.as_ref().map_err(|error| (error.clone(), String::new()))?;
    let fix = if wine { "none under Wine, whose filter engine is a stub".to_owned() } else { SETUP_FIX.to_owned() };
    match wfp::engine_available() {
        Ok(()) => {}
        Err(error) => return Err((error.to_string(), fix)),
    }
    match wfp::verify(&plan.filters, &plan.accounts) {
        Ok(()) => Ok(format!("filter engine open; the {} filters of {} are in place", plan.filters.len(), plan.accounts.offline)),
        Err(error) => Err((error.to_string(), fix)),
    }
}

fn appcontainer() -> Result<String, (String, String)> {
    let library = wide("userenv.dll");
    // SAFETY: `library` is NUL-terminated; userenv runs no code of palisade's when loaded.
    let module = unsafe { LoadLibraryW(library.as_ptr()) };
    if module.is_null() {
        return Err(("userenv.dll is missing".into(), "palisade does not use AppContainer; nothing to do".into()));
    }
    // SAFETY: `module` is loaded and the name is NUL-terminated. The function is only looked
    // up, never called.
    let found = unsafe { GetProcAddress(module, c"CreateAppContainerProfile".as_ptr().cast()) }.is_some();
    // SAFETY: `module` was loaded above and is released once.
    unsafe { FreeLibrary(module) };
    if found {
        Ok("CreateAppContainerProfile is present (palisade does not use AppContainer)".into())
    } else {
        Err(("CreateAppContainerProfile is missing from userenv.dll".into(), "palisade does not use AppContainer; nothing to do".into()))
    }
}

