//! `palisade setup`: the one-time, idempotent preparation that every confined run checks.
//! The steps and their order are in [`crate::setup_steps`]; this module checks whether each
//! is in place and carries out the missing ones.
//!
//! Order: the accounts first (every ACL entry and filter names their SIDs), then the password
//! store, the firewall filters and palisade's machine-wide temporary directory, which need an
//! elevated prompt, then the ACL roots, which run as the caller, the owner of the directories.
//! Nothing changes until every step has been checked, so a caller without elevation learns
//! which steps need it before any step runs.

use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;

use super::Error;
use super::acl::{self, Resolved};
use super::account::{self, Credentials};
use super::security::{Descriptor, account_sid, current_user_name, is_elevated, wide};
use super::wfp;
use crate::path::WinPath;
use crate::plan::{AccountKind, Plan};
use crate::setup_steps::{self, Outcome, Step};
use crate::store;

pub use crate::setup_steps::SetupReport;

/// The options of `palisade setup`.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Check every step and report what would be done, changing nothing.
    pub dry_run: bool,
}

/// The descriptor of `%ProgramData%\palisade`: SYSTEM and Administrators have full access,
/// Users may read it.
const STATE_DIR_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1200a9;;;BU)";
/// The descriptor of its `tmp`: Users may also create directories in it (this directory
/// only), and the creator of each directory gets full access to it, so one caller's run
/// directories are not readable by another caller.
const TEMP_ROOT_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;;0x1200ad;;;BU)(A;OICIIO;FA;;;CO)";

/// Prepares the machine and the caller's directories for `plan`.
///
/// TODO: a path that left the policy keeps the entries an earlier setup wrote; nothing removes
/// them yet (`palisade setup --remove`), so the sandbox accounts keep their access there.
pub fn setup(plan: &Plan, options: &SetupOptions) -> Result<SetupReport, Error> {
    let steps = setup_steps::steps(plan);
    let store_entries = account::read_store()?;

    // Check every step before changing anything.
    let resolved = resolve_if_accounts_exist(plan)?;
    let mut states = Vec::with_capacity(steps.len());
    for step in &steps {
        let state = in_place(step, plan, &store_entries, resolved.as_ref());
        match state {
            Ok(done) => states.push(Ok(done)),
            Err(error) if options.dry_run => states.push(Err(error.to_string())),
            Err(error) => return Err(Error::SetupCheckFailed { step: step.to_string(), cause: error.to_string() }),
        }
    }
    if options.dry_run {
        let steps = steps.into_iter().zip(states).map(|(step, state)| {
            let outcome = match state {
                Ok(true) => Outcome::AlreadyInPlace,
                Ok(false) => Outcome::WouldDo,
                Err(reason) => Outcome::CannotCheck(reason),
            };
            (step, outcome)
        });
        return Ok(SetupReport { dry_run: true, steps: steps.collect() });
    }

    let missing: Vec<&Step> = steps.iter().zip(&states).filter(|(_, state)| matches!(state, Ok(false))).map(|(step, _)| step).collect();
    if !is_elevated() {
        if let Some(fix) = setup_steps::elevation_message(&missing) {
            return Err(Error::NotSetUp { what: "palisade's machine-wide setup".into(), fix });
        }
    }

    let caller = current_user_name()?;
    let mut new_credentials: Vec<(AccountKind, Credentials)> = Vec::new();
    let mut resolved: Option<Resolved> = None;
    let mut report = Vec::with_capacity(steps.len());
    for (step, state) in steps.into_iter().zip(states) {
        if matches!(state, Ok(true)) {
            report.push((step, Outcome::AlreadyInPlace));
            continue;
        }
        let outcome = match &step {
            Step::CreateAccount { kind, name } => create_account(*kind, name, &caller, &mut new_credentials)?,
            Step::HideAccount { name } => account::hide(name).map(|()| Outcome::Done)?,
            Step::StorePasswords => store_passwords(&store_entries, &new_credentials)?,
            Step::InstallFilters { .. } => {
                let added = wfp::install(&plan.filters, &plan.accounts)?;
                Outcome::DoneWithNote(format!("{added} firewall objects added or replaced"))
            }
            Step::CreateTempRoot { path } => create_temp_root(path).map(|()| Outcome::Done)?,
            Step::ApplyAcl { path, .. } => {
                // Resolved once, after the accounts and directories above exist.
                if resolved.is_none() {
                    create_missing_writable_roots(plan)?;
                    resolved = Some(acl::resolve_roots(&plan.files, &plan.accounts)?);
                }
                let resolved = resolved.as_ref().expect("resolved just above");
                let summary = acl::apply_root(resolved, path)?;
                match summary.note() {
                    Some(note) => Outcome::DoneWithNote(format!("{} objects checked, {} updated; {note}", summary.objects, summary.updated)),
                    None => Outcome::DoneWithNote(format!("{} objects checked, {} updated", summary.objects, summary.updated)),
                }
            }
        };
        report.push((step, outcome));
    }
    Ok(SetupReport { dry_run: false, steps: report })
}

/// Writes the ACL entries of the roots of `plan` that lie within `scope`, and of everything
/// below them, and nothing else of setup. `palisade selftest` prepares its scratch directory
/// this way, because it creates that directory afresh for each selftest, after any `palisade
/// setup`. The caller owns the objects there, so this needs no elevation, but the sandbox
/// accounts must exist: without them it fails with [`Error::NotSetUp`].
pub fn apply_acl_within(plan: &Plan, scope: &WinPath) -> Result<Vec<(WinPath, acl::WalkSummary)>, Error> {
    let resolved = acl::resolve_roots(&plan.files, &plan.accounts)?;
    let mut summaries = Vec::new();
    for (root, _, _) in setup_steps::acl_roots(&plan.files) {
        if root.starts_with(scope) {
            let summary = acl::apply_root(&resolved, &root)?;
            summaries.push((root, summary));
        }
    }
    Ok(summaries)
}

/// Resolves the ACL plan, or returns why a root does not resolve; `None` while an account is
/// missing.
fn resolve_if_accounts_exist(plan: &Plan) -> Result<Option<Result<Resolved, Error>>, Error> {
    for name in [&plan.accounts.offline, &plan.accounts.online] {
        if account_sid(name)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(acl::resolve_roots(&plan.files, &plan.accounts)))
}

/// Checks whether one step is already in place, changing nothing.
fn in_place(step: &Step, plan: &Plan, store_entries: &[store::Entry], resolved: Option<&Result<Resolved, Error>>) -> Result<bool, Error> {
    match step {
        Step::CreateAccount { kind, name } => Ok(account_sid(name)?.is_some() && account::stored_password_works(store_entries, *kind, name)),
        Step::HideAccount { name } => Ok(account::is_hidden(name)),
        Step::StorePasswords => {
            let stored = |kind: AccountKind| account::stored_password_works(store_entries, kind, account::name_of(&plan.accounts, kind));
            Ok(stored(AccountKind::Offline) && stored(AccountKind::Online))
        }
        Step::InstallFilters { .. } => Ok(wfp::missing(&plan.filters, &plan.accounts)? == 0),
        Step::CreateTempRoot { path } => Ok(std::fs::metadata(path.to_verbatim()).is_ok_and(|metadata| metadata.is_dir())),
        Step::ApplyAcl { path, .. } => match resolved {
            Some(Ok(resolved)) => acl::root_in_place(resolved, path),
            // Reported before anything changes, since the ACL steps would fail on it.
            Some(Err(error)) => Err(Error::Io { what: "the roots of the ACL plan".into(), source: std::io::Error::other(error.to_string()) }),
            // The accounts do not exist yet; the ACL steps run after they are created.
            None => Ok(false),
        },
    }
}

/// Creates or resets the account and keeps its new password for the store.
fn create_account(kind: AccountKind, name: &str, caller: &str, new_credentials: &mut Vec<(AccountKind, Credentials)>) -> Result<Outcome, Error> {
    // An existing account is checked before its password is reset, so a refused account is
    // left as it was.
    if super::security::account_sid(name)?.is_some() {
        refuse_extra_groups(name)?;
    }
    let (credentials, created) = account::create_or_reset(kind, name, caller)?;
    new_credentials.push((kind, credentials));
    refuse_extra_groups(name)?;
    Ok(if created { Outcome::Done } else { Outcome::DoneWithNote("the account existed without a stored password that works, so its password was reset".into()) })
}

/// Fails when the account belongs to a local group besides Users, which could grant it what
/// the plan does not.
fn refuse_extra_groups(name: &str) -> Result<(), Error> {
    let extra = account::extra_groups(name)?;
    if extra.is_empty() {
        return Ok(());
    }
    Err(Error::Io {
        what: format!("the sandbox account {name} belongs to the local groups {} besides Users", extra.join(", ")),
        source: std::io::Error::other("remove it from them (lusrmgr.msc or `net localgroup GROUP NAME /delete`) and run `palisade setup` again"),
    })
}

/// Writes the store with the new passwords, keeping the entries of other accounts.
fn store_passwords(existing: &[store::Entry], new_credentials: &[(AccountKind, Credentials)]) -> Result<Outcome, Error> {
    let mut entries: Vec<store::Entry> = existing
        .iter()
        .filter(|entry| !new_credentials.iter().any(|(kind, credentials)| *kind == entry.kind && credentials.name.eq_ignore_ascii_case(&entry.name)))
        .cloned()
        .collect();
    for (kind, credentials) in new_credentials {
        let protected = account::protect(&credentials.password, &credentials.name)?;
        entries.push(store::Entry { kind: *kind, name: credentials.name.clone(), protected });
    }
    let path = account::write_store(&entries)?;
    Ok(Outcome::DoneWithNote(format!("written to {}", path.display())))
}

/// Creates `%ProgramData%\palisade` and its `tmp` with descriptors of their own.
fn create_temp_root(path: &WinPath) -> Result<(), Error> {
    let state_dir = path.parent().expect("the temporary root lies in palisade's state directory");
    for (dir, sddl) in [(&state_dir, STATE_DIR_SDDL), (path, TEMP_ROOT_SDDL)] {
        if std::fs::metadata(dir.to_verbatim()).is_ok_and(|metadata| metadata.is_dir()) {
            continue;
        }
        let descriptor = Descriptor::from_sddl(sddl)?;
        let attributes = SECURITY_ATTRIBUTES { nLength: size_of::<SECURITY_ATTRIBUTES>() as u32, lpSecurityDescriptor: descriptor.as_ptr(), bInheritHandle: 0 };
        let name = wide(&dir.to_verbatim());
        // SAFETY: `name` is NUL-terminated; `attributes` points to a descriptor alive here.
        if unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } == 0 {
            return Err(Error::last("CreateDirectoryW", dir));
        }
    }
    Ok(())
}

/// Creates the writable roots that do not exist yet, where their parents do.
fn create_missing_writable_roots(plan: &Plan) -> Result<(), Error> {
    for (path, reason, entries) in setup_steps::acl_roots(&plan.files) {
        if entries.label {
            acl::create_missing_root(&path, reason)?;
        }
    }
    Ok(())
}
