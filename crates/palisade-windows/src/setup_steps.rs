//! The steps of `palisade setup` on Windows and its report, as pure values: which steps a plan
//! needs, in what order, which of them need an elevated prompt, and how the report reads.
//! `sys::setup` checks and carries out each step.

use std::fmt;

use crate::path::WinPath;
use crate::plan::{Access, AccountKind, FilePlan, Plan, Reason};

/// One step of setup. Steps run in the order [`steps`] returns them: the accounts first,
/// because every ACL entry and filter names their SIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the local account, or reset its password when the store cannot supply it.
    CreateAccount { kind: AccountKind, name: String },
    /// Hide the account from the sign-in screen.
    HideAccount { name: String },
    /// Store the accounts' passwords, protected with DPAPI, in the caller's profile.
    StorePasswords,
    /// Add palisade's provider, sublayer and the filters of the offline account.
    InstallFilters { count: usize },
    /// Create the machine-wide directory below which each run gets its temporary directory.
    CreateTempRoot { path: WinPath },
    /// Write the plan's entries on a root and on everything below it.
    ApplyAcl { path: WinPath, reason: Reason, entries: AclEntries },
}

/// The kinds of entry an ACL step writes on its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AclEntries {
    pub grant: Option<Access>,
    pub label: bool,
    pub deny: Option<u32>,
    /// Rights denied on the directory alone, not below it: the pin that keeps an ancestor of a
    /// protected name from being renamed or deleted.
    pub pin: Option<u32>,
}

impl Step {
    /// Checks whether the step changes machine-wide state, which needs an elevated prompt. The ACL
    /// steps run as the caller, the owner of the directories, except on palisade's own
    /// machine-wide directory.
    pub fn needs_admin(&self) -> bool {
        match self {
            Step::CreateAccount { .. } | Step::HideAccount { .. } | Step::InstallFilters { .. } | Step::CreateTempRoot { .. } => true,
            Step::StorePasswords => false,
            Step::ApplyAcl { reason, .. } => *reason == Reason::Temp,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateAccount { kind, name } => {
                let purpose = match kind {
                    AccountKind::Offline => "runs commands with --net none or allowlist",
                    AccountKind::Online => "runs commands with --net full",
                };
                write!(f, "create local account {name} (member of Users only; {purpose})")
            }
            Step::HideAccount { name } => write!(f, "hide {name} from the sign-in screen"),
            Step::StorePasswords => f.write_str("store the accounts' passwords with DPAPI in %LOCALAPPDATA%\\palisade\\accounts"),
            Step::InstallFilters { count } => write!(f, "install palisade's firewall provider, sublayer and {count} filters for the offline account"),
            Step::CreateTempRoot { path } => write!(f, "create {path} for the runs' temporary directories"),
            Step::ApplyAcl { path, reason, entries } => {
                let mut parts = Vec::new();
                match entries.grant {
                    Some(Access::Modify) => parts.push("allow modify"),
                    Some(Access::ReadExecute) => parts.push("allow read and execute"),
                    None => {}
                }
                if entries.label {
                    parts.push("Low integrity label");
                }
                if let Some(mask) = entries.deny {
                    parts.push(if mask & crate::plan::mask::ANY_READ != 0 { "deny all access" } else { "deny changes" });
                }
                if parts.is_empty() && entries.pin.is_some() {
                    return write!(f, "deny renaming or deleting {path} ({reason}) for the sandbox accounts");
                }
                write!(f, "{} for the sandbox accounts on {path} ({reason}) and below", parts.join(", "))?;
                if entries.pin.is_some() {
                    f.write_str(", and deny renaming or deleting it")?;
                }
                Ok(())
            }
        }
    }
}

/// Lists the steps that `plan` needs, in order.
pub fn steps(plan: &Plan) -> Vec<Step> {
    let accounts = [(AccountKind::Offline, &plan.accounts.offline), (AccountKind::Online, &plan.accounts.online)];
    let mut steps: Vec<Step> = accounts.iter().map(|(kind, name)| Step::CreateAccount { kind: *kind, name: (*name).clone() }).collect();
    steps.extend(accounts.iter().map(|(_, name)| Step::HideAccount { name: (*name).clone() }));
    steps.push(Step::StorePasswords);
    steps.push(Step::InstallFilters { count: plan.filters.len() });
    steps.push(Step::CreateTempRoot { path: plan.files.temp_root.clone() });

    steps.extend(acl_roots(&plan.files).into_iter().map(|(path, reason, entries)| Step::ApplyAcl { path, reason, entries }));
    steps
}

/// Lists every root of the ACL plan with the entries it carries, in the order grants, labels and
/// denies list them, palisade's own machine-wide directory first (its step needs elevation).
pub fn acl_roots(files: &FilePlan) -> Vec<(WinPath, Reason, AclEntries)> {
    let mut acl: Vec<(WinPath, Reason, AclEntries)> = Vec::new();
    for grant in &files.grants {
        let entries = entries_of(&mut acl, &grant.path, grant.reason);
        // Two grants on one path combine; Modify includes ReadExecute.
        if entries.grant != Some(Access::Modify) {
            entries.grant = Some(grant.access);
        }
    }
    for label in &files.labels {
        entries_of(&mut acl, label, Reason::WritableRoot).label = true;
    }
    for deny in &files.denies {
        let entries = entries_of(&mut acl, &deny.path, deny.reason);
        if deny.tree {
            entries.deny = Some(entries.deny.unwrap_or(0) | deny.mask);
        } else {
            entries.pin = Some(entries.pin.unwrap_or(0) | deny.mask);
        }
    }
    acl.sort_by_key(|(_, reason, _)| *reason != Reason::Temp);
    acl
}

/// Finds the entries of `path` in `acl`, adding the path with `reason` when it is new.
fn entries_of<'a>(acl: &'a mut Vec<(WinPath, Reason, AclEntries)>, path: &WinPath, reason: Reason) -> &'a mut AclEntries {
    let index = match acl.iter().position(|(existing, _, _)| existing == path) {
        Some(index) => index,
        None => {
            acl.push((path.clone(), reason, AclEntries::default()));
            acl.len() - 1
        }
    };
    &mut acl[index].2
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    AlreadyInPlace,
    /// A dry run found the step missing.
    WouldDo,
    /// Done, with something the user should know, such as objects that were skipped.
    DoneWithNote(String),
    /// A dry run could not tell whether the step is in place, for this reason.
    CannotCheck(String),
}

/// The report of `palisade setup`: each step and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub dry_run: bool,
    pub steps: Vec<(Step, Outcome)>,
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (step, outcome) in &self.steps {
            let (state, note) = match outcome {
                Outcome::Done => ("done", None),
                Outcome::AlreadyInPlace => ("in place", None),
                Outcome::WouldDo => ("would do", None),
                Outcome::DoneWithNote(note) => ("done", Some(note)),
                Outcome::CannotCheck(reason) => ("unknown", Some(reason)),
            };
            let admin = if step.needs_admin() { " [admin]" } else { "" };
            writeln!(f, "{state:<9} {step}{admin}")?;
            if let Some(note) = note {
                writeln!(f, "{:<9} note: {note}", "")?;
            }
        }
        let missing = self.steps.iter().filter(|(_, outcome)| matches!(outcome, Outcome::WouldDo | Outcome::CannotCheck(_))).count();
        if self.dry_run {
            writeln!(f, "\nDry run: nothing was changed. {missing} of {} steps would be taken or could not be checked.", self.steps.len())?;
            if self.steps.iter().any(|(step, outcome)| *outcome == Outcome::WouldDo && step.needs_admin()) {
                writeln!(f, "Steps marked [admin] need `palisade setup` from an elevated prompt (Run as administrator).")?;
            }
        } else {
            writeln!(f, "\nSetup is complete: runs with the same policy flags only check these entries.")?;
        }
        Ok(())
    }
}

/// Builds the message for a caller without elevation when `missing` steps need it, or `None` when
/// every missing step can run as the caller.
pub fn elevation_message(missing: &[&Step]) -> Option<String> {
    let admin: Vec<String> = missing.iter().filter(|step| step.needs_admin()).map(|step| format!("  - {step}")).collect();
    if admin.is_empty() {
        return None;
    }
    Some(format!(
        "run `palisade setup` from an elevated prompt (Run as administrator), with the same policy flags; nothing was changed. These steps need it:\n{}",
        admin.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{mask, Accounts, Deny, Grant, Integrity, JobPlan, NetworkPlan, TokenPlan};

    fn p(text: &str) -> WinPath {
        WinPath::parse(text).unwrap()
    }

    fn plan() -> Plan {
        Plan {
            accounts: Accounts::for_user("dev"),
            account: AccountKind::Offline,
            token: TokenPlan { integrity: Integrity::Low, deny_only: &[], keep_privilege: "SeChangeNotifyPrivilege" },
            job: JobPlan {
                kill_on_close: true,
                allow_breakaway: false,
                die_on_unhandled_exception: true,
                job_memory: None,
                active_processes: None,
                job_user_time: None,
                cpu_rate: None,
                ui_restrictions: true,
                timeout: None,
                max_output: None,
            },
            files: FilePlan {
                grants: vec![
                    Grant { path: p(r"C:\ws"), access: Access::Modify, reason: Reason::Workspace },
                    Grant { path: p(r"C:\ProgramData\palisade\tmp"), access: Access::Modify, reason: Reason::Temp },
                ],
                labels: vec![p(r"C:\ws"), p(r"C:\ProgramData\palisade\tmp")],
                denies: vec![Deny { path: p(r"C:\ws\.git\hooks"), mask: mask::ANY_CHANGE, tree: true, reason: Reason::Protected }],
                placeholders: vec![],
                temp_root: p(r"C:\ProgramData\palisade\tmp"),
            },
            network: NetworkPlan::None,
            filters: vec![],
            gaps: vec![],
        }
    }

    #[test]
    fn accounts_come_before_everything_that_names_them() {
        let steps = steps(&plan());
        assert!(matches!(steps[0], Step::CreateAccount { kind: AccountKind::Offline, .. }));
        assert!(matches!(steps[1], Step::CreateAccount { kind: AccountKind::Online, .. }));
        let first_acl = steps.iter().position(|step| matches!(step, Step::ApplyAcl { .. })).unwrap();
        let filters = steps.iter().position(|step| matches!(step, Step::InstallFilters { .. })).unwrap();
        assert!(filters < first_acl);
        // The temporary root is created before its entries are written.
        let temp = steps.iter().position(|step| matches!(step, Step::CreateTempRoot { .. })).unwrap();
        assert!(temp < first_acl);
    }

    #[test]
    fn acl_steps_merge_entries_per_root() {
        let steps = steps(&plan());
        let acl: Vec<_> = steps.iter().filter_map(|step| match step {
            Step::ApplyAcl { path, entries, .. } => Some((path.to_string(), *entries)),
            _ => None,
        }).collect();
        assert_eq!(acl.len(), 3);
        assert_eq!(acl[0].0, r"C:\ProgramData\palisade\tmp", "the step that needs elevation comes first");
        assert_eq!(acl[1], (r"C:\ws".to_owned(), AclEntries { grant: Some(Access::Modify), label: true, deny: None, pin: None }));
        assert_eq!(acl[2].1, AclEntries { grant: None, label: false, deny: Some(mask::ANY_CHANGE), pin: None });
    }

    #[test]
    fn only_machine_wide_steps_need_admin() {
        for step in steps(&plan()) {
            let machine_wide = match &step {
                Step::ApplyAcl { reason, .. } => *reason == Reason::Temp,
                Step::StorePasswords => false,
                _ => true,
            };
            assert_eq!(step.needs_admin(), machine_wide, "{step}");
        }
    }

    #[test]
    fn elevation_message_lists_only_admin_steps() {
        let steps = steps(&plan());
        let all: Vec<&Step> = steps.iter().collect();
        let message = elevation_message(&all).unwrap();
        assert!(message.contains("elevated prompt"));
        assert!(message.contains("create local account pal-dev-"));
        assert!(!message.contains(r"C:\ws "), "{message}");
        let caller_only: Vec<&Step> = steps.iter().filter(|step| !step.needs_admin()).collect();
        assert_eq!(elevation_message(&caller_only), None);
    }

    #[test]
    fn dry_run_report_lists_every_step() {
        let steps = steps(&plan());
        let report = SetupReport { dry_run: true, steps: steps.iter().map(|step| (step.clone(), Outcome::WouldDo)).collect() };
        let text = report.to_string();
        assert_eq!(text.lines().filter(|line| line.starts_with("would do")).count(), steps.len());
        assert!(text.contains(r"allow modify, Low integrity label for the sandbox accounts on C:\ws (the workspace) and below"), "{text}");
        assert!(text.contains(r"deny changes for the sandbox accounts on C:\ws\.git\hooks"), "{text}");
        assert!(text.contains("nothing was changed"));
        assert!(text.contains("[admin]"));
    }

    #[test]
    fn report_shows_notes_and_steps_in_place() {
        let report = SetupReport {
            dry_run: false,
            steps: vec![(Step::StorePasswords, Outcome::AlreadyInPlace), (Step::HideAccount { name: "pal-x".into() }, Outcome::DoneWithNote("a note".into()))],
        };
        let text = report.to_string();
        assert!(text.starts_with("in place  store"), "{text}");
        assert!(text.contains("note: a note"));
        assert!(text.contains("Setup is complete"));
    }

    #[test]
    fn dry_run_shows_steps_it_could_not_check() {
        let report = SetupReport { dry_run: true, steps: vec![(Step::InstallFilters { count: 9 }, Outcome::CannotCheck("FwpmEngineOpen0 failed".into()))] };
        let text = report.to_string();
        assert!(text.starts_with("unknown   install"), "{text}");
        assert!(text.contains("note: FwpmEngineOpen0 failed"));
        assert!(text.contains("1 of 1 steps would be taken or could not be checked"), "{text}");
    }
}
