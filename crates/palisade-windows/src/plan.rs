//! The translation of a resolved policy into what Windows enforces: which sandbox account runs
//! the command, the token it gets, the job object's limits, the ACL entries that `palisade
//! setup` applies once, the placeholders a run creates, and the firewall filters.
//!
//! Everything here is pure so that it is tested on every platform; `sys` carries the plan out.
//! The design, and why it was chosen over the alternatives, is in `docs/windows.md`.

use std::fmt;
use std::time::Duration;

use palisade_policy::{Limits, NetworkMode, Profile};

use crate::path::{PathError, WinPath};

/// Facts about the machine and the calling user that the plan depends on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The caller's account name, from which the sandbox accounts are named.
    pub user_name: String,
    /// `%USERPROFILE%`.
    pub profile_dir: WinPath,
    /// The directories of the caller's `PATH`, in order.
    pub path_dirs: Vec<WinPath>,
    /// `%SystemRoot%`, normally `C:\Windows`.
    pub system_root: WinPath,
    /// Logical processors, for the CPU rate of the job.
    pub cpu_count: u32,
    /// palisade's machine-wide directory, `%ProgramData%\palisade`, created by setup.
    pub state_dir: WinPath,
    /// `%ProgramFiles%` and `%ProgramFiles(x86)%`, where installed programs live.
    pub program_dirs: Vec<WinPath>,
}

/// The parts of a resolved policy the Windows backend enforces, with Windows paths.
#[derive(Debug, Clone)]
pub struct Request {
    pub profile: Profile,
    pub workspace: WinPath,
    pub cwd: WinPath,
    pub read_only: Vec<WinPath>,
    /// Caches that the Linux backend shows through a copy-on-write layer. Windows has no such
    /// layer; they are readable and not writable.
    pub copy_on_write: Vec<WinPath>,
    pub writable: Vec<WinPath>,
    pub hidden: Vec<WinPath>,
    pub protected: Vec<WinPath>,
    pub network: NetworkMode,
    pub limits: Limits,
    /// The limits of the profile before the policy changed any, so the plan can tell a limit
    /// the user asked for from a default.
    pub default_limits: Limits,
}

/// The reason a policy cannot be planned on Windows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("{what} {path:?} is not a usable Windows path: {source}")]
    Path { what: &'static str, path: String, source: PathError },
    #[error("the writable root {0} would give the sandbox {1}; choose a directory below it")]
    WritableTooBroad(WinPath, &'static str),
    #[error("the writable root {0} lies in {1}; choose a directory elsewhere")]
    WritableInSystem(WinPath, &'static str),
    #[error("the readable path {0} would let the sandbox read {1}; name the directories it needs instead")]
    ReadTooBroad(WinPath, &'static str),
    #[error("{0} may be an 8.3 short name, which the plan cannot compare with other paths; name it by its long name")]
    ShortName(WinPath),
    #[error("{option} is not supported on Windows: {reason}")]
    OptionUnsupported { option: &'static str, reason: &'static str },
    #[error("the {limit} limit cannot be enforced on Windows: {reason}; leave it out or set it to \"unlimited\"")]
    LimitUnsupported { limit: &'static str, reason: &'static str },
    #[error("the unconfined profile is not planned: it runs the command as the caller")]
    Unconfined,
}

/// The two local accounts that `palisade setup` creates for one caller. Commands run as one of
/// them, never as the caller, so the caller's profile, documents and credential stores are
/// unreadable unless the plan grants a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// For `--net none` and `--net allowlist`: every outbound connection is blocked by the
    /// firewall except to the sandbox's own loopback servers and to palisade's proxy.
    pub offline: String,
    /// For `--net full`: no firewall filter.
    pub online: String,
}

/// Local account names are at most 20 characters and may not hold `"/\[]:;|=,+*?<>@`.
const ACCOUNT_NAME_MAX: usize = 20;

impl Accounts {
    /// Derives the account names from the caller's name: `pal-<name>-<hash>` and the same
    /// with `-net`. The name is cut to fit Windows' limit, so the hash of the whole name keeps
    /// two callers whose names share a beginning from sharing an account.
    pub fn for_user(user_name: &str) -> Accounts {
        let clean: String = user_name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .map(|c| c.to_ascii_lowercase())
            .take(7)
            .collect();
        let clean = if clean.is_empty() { "user".to_owned() } else { clean };
        let base = format!("pal-{clean}-{:04x}", fnv1a(user_name.to_lowercase().as_bytes()) & 0xffff);
        debug_assert!(base.len() + "-net".len() <= ACCOUNT_NAME_MAX);
        Accounts { online: format!("{base}-net"), offline: base }
    }
}

/// Computes the 32-bit FNV-1a hash, which is stable across versions and platforms, unlike
/// `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// The account, of the two, that runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Offline,
    Online,
}

/// A mandatory integrity level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// `S-1-16-4096`. A Low process cannot write to an object labelled Medium or above, which
    /// is every object without a label, whatever its DACL grants ("no write up").
    Low,
}

impl Integrity {
    pub fn sid(self) -> &'static str {
        match self {
            Integrity::Low => "S-1-16-4096",
        }
    }

    /// The SDDL label entry that lets processes of this level write to an object and, through
    /// inheritance, to everything created below it.
    pub fn inheritable_label(self) -> &'static str {
        match self {
            Integrity::Low => "S:(ML;OICI;NW;;;LW)",
        }
    }
}

/// The token the command runs with, derived from the sandbox account's own token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlan {
    pub integrity: Integrity,
    /// Groups turned into deny-only: they can deny access but never grant it. The sandbox
    /// accounts belong to none of these, but a machine policy could add them to one.
    pub deny_only: &'static [&'static str],
    /// The only privilege kept. Bypass-traverse checking is needed to open any path below a
    /// directory the account cannot list, and every Windows program assumes it.
    pub keep_privilege: &'static str,
}

/// Administrators, Power Users, Backup Operators, Network Configuration Operators, Hyper-V
/// Administrators, and Remote Management Users.
const DENY_ONLY_GROUPS: &[&str] = &["S-1-5-32-544", "S-1-5-32-547", "S-1-5-32-551", "S-1-5-32-556", "S-1-5-32-578", "S-1-5-32-580"];

/// The job object every run is assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// Closing palisade's handle, which happens however palisade ends, kills every process.
    pub kill_on_close: bool,
    /// Processes may not leave the job, not even with `CREATE_BREAKAWAY_FROM_JOB`.
    pub allow_breakaway: bool,
    /// A crash ends the process instead of showing a dialog that keeps the job alive.
    pub die_on_unhandled_exception: bool,
    /// Committed memory of all processes together, in bytes.
    pub job_memory: Option<u64>,
    /// Processes alive at once. Windows counts processes only, not threads.
    pub active_processes: Option<u32>,
    /// User-mode CPU time of all processes together.
    pub job_user_time: Option<Duration>,
    /// A hard cap of CPU use, in hundredths of a percent of the whole machine (1 to 10000).
    pub cpu_rate: Option<u32>,
    /// No clipboard, desktop switching, global atoms, display or system settings, no handles to
    /// other processes' windows, and no logging off the user.
    pub ui_restrictions: bool,
    /// Wall-clock time, enforced by palisade, which then terminates the job.
    pub timeout: Option<Duration>,
    /// Bytes of stdout and stderr together, counted by palisade on its pipes.
    pub max_output: Option<u64>,
}

/// The rights an access control entry gives the sandbox accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read, list, and execute.
    ReadExecute,
    /// As `ReadExecute`, plus write, create and delete the object itself. Deliberately without
    /// `FILE_DELETE_CHILD`, which would let a process delete or rename a protected entry
    /// through its parent whatever the entry's own ACL contains.
    Modify,
}

impl Access {
    /// Returns the access mask of the entry.
    pub fn mask(self) -> u32 {
        match self {
            Access::ReadExecute => mask::READ_EXECUTE,
            Access::Modify => mask::READ_EXECUTE | mask::WRITE | mask::DELETE,
        }
    }
}

/// Access masks of file objects, from the Windows SDK's `winnt.h`.
pub mod mask {
    pub const READ_DATA: u32 = 0x0001;
    pub const WRITE_DATA: u32 = 0x0002;
    pub const APPEND_DATA: u32 = 0x0004;
    pub const READ_EA: u32 = 0x0008;
    pub const WRITE_EA: u32 = 0x0010;
    pub const EXECUTE: u32 = 0x0020;
    pub const DELETE_CHILD: u32 = 0x0040;
    pub const READ_ATTRIBUTES: u32 = 0x0080;
    pub const WRITE_ATTRIBUTES: u32 = 0x0100;
    pub const DELETE: u32 = 0x0001_0000;
    pub const READ_CONTROL: u32 = 0x0002_0000;
    pub const WRITE_DAC: u32 = 0x0004_0000;
    pub const WRITE_OWNER: u32 = 0x0008_0000;
    pub const SYNCHRONIZE: u32 = 0x0010_0000;

    pub const READ_EXECUTE: u32 = READ_DATA | READ_EA | EXECUTE | READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE;
    /// Writing data, attributes and extended attributes; on a directory, creating entries.
    pub const WRITE: u32 = WRITE_DATA | APPEND_DATA | WRITE_EA | WRITE_ATTRIBUTES;
    /// Everything that changes an object, its name, its children or its security.
    pub const ANY_CHANGE: u32 = WRITE | DELETE | DELETE_CHILD | WRITE_DAC | WRITE_OWNER;
    /// Everything that reveals an object's content or its children.
    pub const ANY_READ: u32 = READ_DATA | READ_EA | EXECUTE | READ_ATTRIBUTES;
}

/// An allow entry for the sandbox accounts, inheritable to files and directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: WinPath,
    pub access: Access,
    pub reason: Reason,
}

/// A deny entry for the sandbox accounts, inheritable to files and directories. Deny entries
/// come before allow entries in a DACL, so they win over every grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub path: WinPath,
    /// The denied rights (a combination of [`mask`] values).
    pub mask: u32,
    /// Whether the entry is inherited by everything below `path`, or covers `path` alone.
    pub tree: bool,
    pub reason: Reason,
}

/// The reason the plan touches a path, shown by `palisade setup` and in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Workspace,
    WritableRoot,
    ReadRoot,
    /// A directory of the caller's `PATH`, so tools installed per user run.
    PathDirectory,
    Cache,
    Hidden,
    Protected,
    Temp,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Workspace => "the workspace",
            Reason::WritableRoot => "a writable root",
            Reason::ReadRoot => "a readable path",
            Reason::PathDirectory => "a directory on PATH",
            Reason::Cache => "a build cache (readable, not writable, on Windows)",
            Reason::Hidden => "a hidden path",
            Reason::Protected => "a protected path",
            Reason::Temp => "palisade's temporary directories",
        })
    }
}

/// The ACL side of the plan. `palisade setup` applies `grants`, `labels` and `denies` once;
/// a run only checks that they are in place and never rewrites ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    pub grants: Vec<Grant>,
    /// Roots that get an inheritable Low integrity label, so the Low token can write there.
    pub labels: Vec<WinPath>,
    pub denies: Vec<Deny>,
    /// Protected names whose parent is a directory: where one does not exist when a run starts,
    /// the run creates an empty directory in its place with the deny entry, so the command can
    /// neither create it nor remove the placeholder, and removes it when the run ends.
    pub placeholders: Vec<WinPath>,
    /// The directory below which each run gets a private temporary directory (`TEMP`, `TMP`),
    /// removed when the run ends.
    pub temp_root: WinPath,
}

/// A filter of the Windows Filtering Platform, installed by setup, keyed on a sandbox
/// account's SID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub account: AccountKind,
    pub layer: Layer,
    pub action: FilterAction,
    /// Only connections to a loopback address.
    pub loopback_only: bool,
    /// Only connections to a socket owned by the same sandbox account.
    pub remote_is_sandbox: bool,
    /// Only connections to a remote port in this range (inclusive).
    pub remote_ports: Option<(u16, u16)>,
    /// Higher weights are evaluated first.
    pub weight: u8,
}

/// The filtering layers that authorise new connections, for both address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// `FWPM_LAYER_ALE_AUTH_CONNECT_V4`: outgoing TCP connections and the first datagram of
    /// every UDP or raw flow.
    ConnectV4,
    ConnectV6,
    /// `FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4`: incoming connections and datagrams.
    AcceptV4,
    AcceptV6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    Block,
    Permit,
}

/// The command's access to the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// Only the sandbox account's own loopback servers.
    None,
    /// As `None`, plus palisade's proxy on 127.0.0.1, which requires the run's credential.
    Proxy,
    /// The host's network.
    Full,
}

/// A part of the policy this backend does not enforce for this run, reported to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub what: &'static str,
    pub consequence: &'static str,
}

/// Everything a run needs, derived from one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub accounts: Accounts,
    pub account: AccountKind,
    pub token: TokenPlan,
    pub job: JobPlan,
    pub files: FilePlan,
    pub network: NetworkPlan,
    /// Every filter of both accounts: setup installs them all, whatever this run's network.
    pub filters: Vec<Filter>,
    pub gaps: Vec<Gap>,
}

/// Builds the plan for `request` on `machine`.
pub fn plan(request: &Request, machine: &Machine) -> Result<Plan, PlanError> {
    if request.profile == Profile::Unconfined {
        return Err(PlanError::Unconfined);
    }
    let mut gaps = Vec::new();
    let files = plan_files(request, machine)?;
    let job = plan_job(&request.limits, &request.default_limits, machine.cpu_count, &mut gaps)?;
    if let NetworkMode::Allowlist { resolve_allowed: true, .. } = request.network {
        return Err(PlanError::OptionUnsupported {
            option: "--resolve-allowed",
            reason: "the command shares the host's name resolution; clients must use the proxy variables",
        });
    }
    let (account, network) = match request.network {
        NetworkMode::None => (AccountKind::Offline, NetworkPlan::None),
        NetworkMode::Allowlist { .. } => (AccountKind::Offline, NetworkPlan::Proxy),
        NetworkMode::Full => (AccountKind::Online, NetworkPlan::Full),
    };
    if !request.copy_on_write.is_empty() {
        gaps.push(Gap {
            what: "copy-on-write caches",
            consequence: "build caches are readable but not writable, so a build that must download into one fails instead of writing there",
        });
    }
    Ok(Plan {
        accounts: Accounts::for_user(&machine.user_name),
        account,
        token: TokenPlan { integrity: Integrity::Low, deny_only: DENY_ONLY_GROUPS, keep_privilege: "SeChangeNotifyPrivilege" },
        job,
        files,
        network,
        filters: filters(),
        gaps,
    })
}

fn plan_files(request: &Request, machine: &Machine) -> Result<FilePlan, PlanError> {
    let mut grants = Vec::new();
    let mut labels = Vec::new();
    for (index, root) in request.writable.iter().enumerate() {
        check_grant(root, machine)?;
        check_writable(root, machine)?;
        let reason = if *root == request.workspace || (index == 0 && root.starts_with(&request.workspace)) {
            Reason::Workspace
        } else {
            Reason::WritableRoot
        };
        grants.push(Grant { path: root.clone(), access: Access::Modify, reason });
        labels.push(root.clone());
    }
    let readable = [
        (&request.read_only, Reason::ReadRoot),
        (&request.copy_on_write, Reason::Cache),
    ];
    for (paths, reason) in readable {
        for path in paths {
            check_grant(path, machine)?;
            push_read(&mut grants, path, reason);
        }
    }
    // Tools installed per user live on PATH below the profile, which the sandbox accounts
    // cannot read by default (openai/codex#27171). Directories outside the profile are readable
    // already. A PATH entry that is the profile itself, or an 8.3 spelling the plan cannot
    // compare, gets no grant: it would open the whole profile.
    for dir in &machine.path_dirs {
        if dir.starts_with(&machine.profile_dir) && *dir != machine.profile_dir && check_grant(dir, machine).is_ok() {
            push_read(&mut grants, dir, Reason::PathDirectory);
        }
    }
    // The workspace is readable in read-only mode too.
    push_read(&mut grants, &request.workspace, Reason::Workspace);

    let temp_root = machine.state_dir.join("tmp").expect("a fixed relative name joins");
    grants.push(Grant { path: temp_root.clone(), access: Access::Modify, reason: Reason::Temp });
    labels.push(temp_root.clone());

    // A hidden path outside every grant needs no entry: the sandbox accounts cannot read the
    // caller's profile unless a grant opens part of it.
    let mut denies = Vec::new();
    for path in request.hidden.iter().filter(|path| grants.iter().any(|grant| path.starts_with(&grant.path))) {
        denies.push(Deny { path: path.clone(), mask: mask::ANY_READ | mask::ANY_CHANGE, tree: true, reason: Reason::Hidden });
    }
    let mut placeholders = Vec::new();
    for path in &request.protected {
        denies.push(Deny { path: path.clone(), mask: mask::ANY_CHANGE, tree: true, reason: Reason::Protected });
        // Pin every directory between the writable root and the protected name: without
        // DELETE on them, and without FILE_DELETE_CHILD anywhere, a command cannot rename
        // `.git` aside and build a new `.git\hooks` in its place.
        if let Some(root) = request.writable.iter().find(|root| path.starts_with(root) && path != *root) {
            let mut ancestor = path.parent();
            while let Some(directory) = ancestor {
                if directory == *root || !directory.starts_with(root) {
                    break;
                }
                if !denies.iter().any(|deny| deny.path == directory && !deny.tree) {
                    denies.push(Deny { path: directory.clone(), mask: mask::DELETE, tree: false, reason: Reason::Protected });
                }
                ancestor = directory.parent();
            }
        }
        // A name is created only inside a writable root, and only where its parent exists at
        // run time; the run checks the latter.
        if request.writable.iter().any(|root| path.starts_with(root) && path != root) {
            placeholders.push(path.clone());
        }
    }
    Ok(FilePlan { grants, labels, denies, placeholders, temp_root })
}

/// Adds a read grant unless a grant already covers `path`.
fn push_read(grants: &mut Vec<Grant>, path: &WinPath, reason: Reason) {
    if grants.iter().any(|grant| path.starts_with(&grant.path)) {
        return;
    }
    grants.push(Grant { path: path.clone(), access: Access::ReadExecute, reason });
}

/// Rejects a granted path that would open more than its name shows: an 8.3 spelling, which the
/// plan cannot compare with the profile or the system, a whole drive, or a directory that
/// contains the caller's profile.
fn check_grant(path: &WinPath, machine: &Machine) -> Result<(), PlanError> {
    if path.may_hold_short_names() {
        return Err(PlanError::ShortName(path.clone()));
    }
    if path.components().is_empty() {
        return Err(PlanError::ReadTooBroad(path.clone(), "a whole drive or share"));
    }
    if machine.profile_dir.starts_with(path) {
        return Err(PlanError::ReadTooBroad(path.clone(), "your whole profile, credential stores included"));
    }
    Ok(())
}

/// Rejects writable roots that would hand the sandbox a whole drive, the profile, or the
/// system, where an inheritable grant would also reach what the user never meant to share.
fn check_writable(root: &WinPath, machine: &Machine) -> Result<(), PlanError> {
    if root.components().is_empty() {
        return Err(PlanError::WritableTooBroad(root.clone(), "a whole drive or share"));
    }
    if machine.profile_dir.starts_with(root) {
        return Err(PlanError::WritableTooBroad(root.clone(), "your whole profile, credential stores included"));
    }
    if machine.system_root.starts_with(root) {
        return Err(PlanError::WritableTooBroad(root.clone(), "the Windows directory"));
    }
    if root.starts_with(&machine.system_root) {
        return Err(PlanError::WritableInSystem(root.clone(), "the Windows directory"));
    }
    for program_dir in &machine.program_dirs {
        if program_dir.starts_with(root) {
            return Err(PlanError::WritableTooBroad(root.clone(), "every installed program"));
        }
        if root.starts_with(program_dir) {
            return Err(PlanError::WritableInSystem(root.clone(), "the directory of installed programs"));
        }
    }
    // AppData contains what the caller's own programs run and trust at their next start (the
    // Startup folder, editor and shell settings).
    let app_data = machine.profile_dir.join("AppData").expect("a fixed relative name joins");
    if app_data.starts_with(root) {
        return Err(PlanError::WritableTooBroad(root.clone(), "your AppData, where your programs' start-up settings live"));
    }
    if machine.state_dir.starts_with(root) {
        return Err(PlanError::WritableTooBroad(root.clone(), "palisade's own state"));
    }
    Ok(())
}

fn plan_job(limits: &Limits, defaults: &Limits, cpu_count: u32, gaps: &mut Vec<Gap>) -> Result<JobPlan, PlanError> {
    // Windows has no per-file size limit, no per-process limit of open handles and no size
    // limit for a directory. A limit the user set is refused; the profile's default is
    // reported as not enforced.
    let unsupported = [
        ("max_file_size", limits.max_file_size, defaults.max_file_size, "Windows has no limit on the size of one file"),
        ("max_open_files", limits.max_open_files, defaults.max_open_files, "Windows has no limit on the handles of one process"),
        ("tmp_size", limits.tmp_size, defaults.tmp_size, "the temporary directory is on a disk, not a sized tmpfs"),
    ];
    for (limit, value, default, reason) in unsupported {
        match value {
            None => {}
            Some(_) if value == default => gaps.push(Gap { what: limit, consequence: reason }),
            Some(_) => return Err(PlanError::LimitUnsupported { limit, reason }),
        }
    }
    let cpu_rate = limits.cpus_milli.map(|milli| {
        // cpus = 1.5 on a 4-CPU machine is 37.5% of the machine, a rate of 3750.
        let cpus = u64::from(cpu_count.max(1));
        (milli * 10 / cpus).clamp(1, 10_000) as u32
    });
    Ok(JobPlan {
        kill_on_close: true,
        allow_breakaway: false,
        die_on_unhandled_exception: true,
        job_memory: limits.memory,
        active_processes: limits.max_procs.map(|count| count.min(u64::from(u32::MAX)) as u32),
        job_user_time: limits.cpu_time,
        cpu_rate,
        ui_restrictions: true,
        timeout: limits.timeout,
        max_output: limits.max_output,
    })
}

/// The loopback ports palisade's proxy listens on, one per concurrent run (inclusive). The
/// firewall lets the offline account reach the caller's loopback only on these ports, and the
/// proxy there requires the run's own credential, so a command can neither borrow another
/// run's proxy nor reach the caller's other loopback services.
///
/// NOTE: nothing reserves these ports yet. Another program of the caller that listens on one of
/// them is reachable from the sandbox; a run that finds the range full fails to start its proxy.
pub const PROXY_PORTS: (u16, u16) = (47_610, 47_641);

/// The filters of both accounts. The offline account may connect only to loopback sockets of
/// its own account (servers the command started) and to palisade's proxy, which runs as the
/// caller and requires the run's credential; nothing else, in either address family. The
/// online account gets no filter.
pub fn filters() -> Vec<Filter> {
    let mut filters = Vec::new();
    for layer in [Layer::ConnectV4, Layer::ConnectV6, Layer::AcceptV4, Layer::AcceptV6] {
        filters.push(Filter {
            account: AccountKind::Offline,
            layer,
            action: FilterAction::Block,
            loopback_only: false,
            remote_is_sandbox: false,
            remote_ports: None,
            weight: 1,
        });
        filters.push(Filter {
            account: AccountKind::Offline,
            layer,
            action: FilterAction::Permit,
            loopback_only: true,
            remote_is_sandbox: true,
            remote_ports: None,
            weight: 10,
        });
    }
    // The proxy listens on IPv4 loopback only, on a port of PROXY_PORTS.
    filters.push(Filter {
        account: AccountKind::Offline,
        layer: Layer::ConnectV4,
        action: FilterAction::Permit,
        loopback_only: true,
        remote_is_sandbox: false,
        remote_ports: Some(PROXY_PORTS),
        weight: 5,
    });
    filters
}

impl Request {
    /// Converts the paths of a resolved policy. Used on Windows, where the policy's paths are
    /// Windows paths.
    pub fn from_policy(policy: &palisade_policy::Policy, default_limits: Limits) -> Result<Request, PlanError> {
        let convert = |what: &'static str, path: &std::path::Path| -> Result<WinPath, PlanError> {
            let text = path.to_str().ok_or_else(|| PlanError::Path {
                what,
                path: path.display().to_string(),
                source: PathError::BadCharacter(path.display().to_string()),
            })?;
            WinPath::parse(text).map_err(|source| PlanError::Path { what, path: text.to_owned(), source })
        };
        let all = |what: &'static str, paths: &[std::path::PathBuf]| -> Result<Vec<WinPath>, PlanError> {
            paths.iter().map(|path| convert(what, path)).collect()
        };
        let fs = &policy.filesystem;
        Ok(Request {
            profile: policy.profile,
            workspace: convert("the workspace", &policy.workspace)?,
            cwd: convert("the working directory", &policy.cwd)?,
            read_only: all("a readable path", &fs.read_only)?,
            copy_on_write: all("a cache", &fs.copy_on_write)?,
            writable: all("a writable root", &fs.writable)?,
            hidden: all("a hidden path", &fs.hidden)?,
            protected: all("a protected path", &fs.protected)?,
            network: policy.network.clone(),
            limits: policy.limits.clone(),
            default_limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> WinPath {
        WinPath::parse(text).unwrap()
    }

    fn machine() -> Machine {
        Machine {
            user_name: "Dev User".into(),
            profile_dir: p(r"C:\Users\dev"),
            path_dirs: vec![
                p(r"C:\Windows\system32"),
                p(r"C:\Program Files\Git\cmd"),
                p(r"C:\Users\dev\AppData\Local\Programs\mytool"),
                p(r"C:\Users\dev\.cargo\bin"),
            ],
            system_root: p(r"C:\Windows"),
            cpu_count: 4,
            state_dir: p(r"C:\ProgramData\palisade"),
            program_dirs: vec![p(r"C:\Program Files"), p(r"C:\Program Files (x86)")],
        }
    }

    fn request() -> Request {
        let defaults = Limits::defaults(Some(16 << 30));
        Request {
            profile: Profile::WorkspaceWrite,
            workspace: p(r"C:\Users\dev\src\ws"),
            cwd: p(r"C:\Users\dev\src\ws"),
            read_only: vec![p(r"C:\Users\dev\.rustup")],
            copy_on_write: vec![p(r"C:\Users\dev\.cargo")],
            writable: vec![p(r"C:\Users\dev\src\ws")],
            hidden: vec![p(r"C:\Users\dev\.ssh"), p(r"C:\Users\dev\.cargo\credentials.toml")],
            protected: vec![p(r"C:\Users\dev\src\ws\.git\hooks"), p(r"C:\Users\dev\src\ws\.vscode")],
            network: NetworkMode::None,
            limits: defaults.clone(),
            default_limits: defaults,
        }
    }

    fn grant_for<'a>(plan: &'a Plan, path: &str) -> Option<&'a Grant> {
        let path = p(path);
        plan.files.grants.iter().find(|grant| path.starts_with(&grant.path))
    }

    #[test]
    fn account_names_fit_windows_limits() {
        let accounts = Accounts::for_user("Dev User");
        assert!(accounts.offline.starts_with("pal-devuser-"), "{}", accounts.offline);
        assert_eq!(accounts.online, format!("{}-net", accounts.offline));
        assert_eq!(accounts, Accounts::for_user("dev user"), "Windows account names ignore case");
        for name in ["a-very-long-user-name-indeed", "Ünï\\[]", "x:y@z", ""] {
            let accounts = Accounts::for_user(name);
            assert!(accounts.online.len() <= ACCOUNT_NAME_MAX, "{}", accounts.online);
            assert!(accounts.online.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        }
        // Names that share their first characters still get their own accounts.
        assert_ne!(Accounts::for_user("developer-one"), Accounts::for_user("developer-two"));
    }

    #[test]
    fn workspace_is_granted_modify_and_labelled_low() {
        let plan = plan(&request(), &machine()).unwrap();
        let grant = grant_for(&plan, r"C:\Users\dev\src\ws\src\main.rs").unwrap();
        assert_eq!(grant.access, Access::Modify);
        assert_eq!(grant.reason, Reason::Workspace);
        assert!(plan.files.labels.contains(&p(r"C:\Users\dev\src\ws")));
        assert_eq!(plan.token.integrity, Integrity::Low);
    }

    // Additive grants left every directory that Authenticated Users may modify writable
    // (anthropic-experimental/sandbox-runtime#402). Here nothing outside the writable roots and palisade's temporary directory is
    // labelled Low, and a Low token cannot write to an unlabelled (Medium) object whatever its
    // DACL says.
    #[test]
    fn only_writable_roots_and_temp_are_labelled_low() {
        let plan = plan(&request(), &machine()).unwrap();
        assert_eq!(plan.files.labels, vec![p(r"C:\Users\dev\src\ws"), p(r"C:\ProgramData\palisade\tmp")]);
        for outside in [r"D:\other\x.txt", r"C:\Users\Public\x", r"C:\ProgramData\x", r"C:\Users\dev\x"] {
            assert!(!plan.files.labels.iter().any(|label| p(outside).starts_with(label)), "{outside}");
            assert!(
                grant_for(&plan, outside).is_none_or(|grant| grant.access != Access::Modify),
                "{outside}"
            );
        }
    }

    // With network access on, Codex's Windows sandbox let commands write outside the workspace
    // (openai/codex#18558). The network mode chooses only the account and the firewall; the files part of
    // the plan is the same.
    #[test]
    fn network_mode_does_not_change_file_access() {
        let none = plan(&request(), &machine()).unwrap();
        for network in [NetworkMode::Full, NetworkMode::Allowlist { allow: vec!["example.com".into()], deny: vec![], resolve_allowed: false }] {
            let other = plan(&Request { network, ..request() }, &machine()).unwrap();
            assert_eq!(other.files, none.files);
            assert_eq!(other.token, none.token);
        }
    }

    #[test]
    fn network_mode_chooses_the_account() {
        let none = plan(&request(), &machine()).unwrap();
        assert_eq!((none.account, &none.network), (AccountKind::Offline, &NetworkPlan::None));
        let full = plan(&Request { network: NetworkMode::Full, ..request() }, &machine()).unwrap();
        assert_eq!((full.account, &full.network), (AccountKind::Online, &NetworkPlan::Full));
        let allow = NetworkMode::Allowlist { allow: vec!["crates.io".into()], deny: vec![], resolve_allowed: false };
        let proxy = plan(&Request { network: allow, ..request() }, &machine()).unwrap();
        assert_eq!((proxy.account, &proxy.network), (AccountKind::Offline, &NetworkPlan::Proxy));
    }

    #[test]
    fn offline_account_is_blocked_in_both_families_and_directions() {
        let filters = filters();
        for layer in [Layer::ConnectV4, Layer::ConnectV6, Layer::AcceptV4, Layer::AcceptV6] {
            let block = filters.iter().find(|f| f.layer == layer && f.action == FilterAction::Block).unwrap();
            assert_eq!(block.account, AccountKind::Offline);
            assert!(!block.loopback_only && !block.remote_is_sandbox, "the block covers every address");
            // Every permit is narrower than the block and only reaches loopback.
            for permit in filters.iter().filter(|f| f.layer == layer && f.action == FilterAction::Permit) {
                assert!(permit.loopback_only);
                assert!(permit.weight > block.weight);
            }
        }
        assert!(filters.iter().all(|f| f.account == AccountKind::Offline), "the online account is not filtered");
        // The only permit to sockets of other identities is the IPv4 proxy connection, and it
        // reaches only the proxy's ports, not every loopback service of the caller.
        let foreign: Vec<_> = filters.iter().filter(|f| f.action == FilterAction::Permit && !f.remote_is_sandbox).collect();
        assert_eq!(foreign.len(), 1);
        assert_eq!(foreign[0].layer, Layer::ConnectV4);
        assert_eq!(foreign[0].remote_ports, Some(PROXY_PORTS));
        assert!(PROXY_PORTS.0 <= PROXY_PORTS.1);
    }

    #[test]
    fn hidden_paths_are_denied_read_and_write() {
        let plan = plan(&request(), &machine()).unwrap();
        // A credential file inside a readable cache is denied even though its parent is granted.
        let credentials = p(r"C:\Users\dev\.cargo\credentials.toml");
        assert!(grant_for(&plan, credentials.to_string().as_str()).is_some());
        let deny = plan.files.denies.iter().find(|deny| deny.path == credentials).unwrap();
        assert_eq!(deny.mask & mask::READ_DATA, mask::READ_DATA);
        assert_eq!(deny.mask & mask::WRITE_DATA, mask::WRITE_DATA);
        assert!(deny.tree);
        // `~/.ssh` lies under no grant, so the profile's own permissions keep it unreadable.
        assert!(grant_for(&plan, r"C:\Users\dev\.ssh\id_ed25519").is_none());
    }

    // Protection must hold for `.GiT` and `config:stream`, which passed Codex's name checks
    // (its docs/windows_sandbox_security.md). It does because the deny entry sits on the object. Placeholders cover the names that do not exist yet, and the
    // grant never includes FILE_DELETE_CHILD, which would let a process rename a protected
    // entry away through its parent.
    #[test]
    fn protected_names_are_denied_change_and_get_placeholders() {
        let plan = plan(&request(), &machine()).unwrap();
        for name in [r"C:\Users\dev\src\ws\.git\hooks", r"C:\Users\dev\src\ws\.vscode"] {
            let deny = plan.files.denies.iter().find(|deny| deny.path == p(name)).unwrap();
            assert_eq!(deny.mask, mask::ANY_CHANGE);
            assert_eq!(deny.mask & mask::ANY_READ, 0, "protected entries stay readable");
            assert!(plan.files.placeholders.contains(&p(name)));
        }
        assert_eq!(Access::Modify.mask() & mask::DELETE_CHILD, 0);
        assert_eq!(Access::Modify.mask() & (mask::WRITE_DAC | mask::WRITE_OWNER), 0);
    }

    // Tools installed per user under %LOCALAPPDATA%\Programs failed with "Access denied" in
    // Codex's Windows sandbox (openai/codex#27171). PATH directories inside the profile are readable and executable.
    #[test]
    fn path_directories_in_the_profile_are_readable() {
        let plan = plan(&request(), &machine()).unwrap();
        let tool = grant_for(&plan, r"C:\Users\dev\AppData\Local\Programs\mytool\tool.exe").unwrap();
        assert_eq!((tool.access, tool.reason), (Access::ReadExecute, Reason::PathDirectory));
        // Already covered by the cache grant, so not listed twice.
        assert_eq!(grant_for(&plan, r"C:\Users\dev\.cargo\bin\cargo.exe").unwrap().reason, Reason::Cache);
        // System directories need no grant.
        assert!(grant_for(&plan, r"C:\Windows\system32\cmd.exe").is_none());
        // The rest of the profile stays unreadable.
        assert!(grant_for(&plan, r"C:\Users\dev\Documents\taxes.pdf").is_none());
    }

    // A command must not be able to rename `.git` aside and build a new `.git\hooks` in its
    // place: every directory between the writable root and a protected name is pinned.
    #[test]
    fn ancestors_of_protected_names_are_pinned() {
        let mut request = request();
        request.protected.push(p(r"C:\Users\dev\src\ws\vendor\lib\.git\hooks"));
        let plan = plan(&request, &machine()).unwrap();
        let pins: Vec<&Deny> = plan.files.denies.iter().filter(|deny| !deny.tree).collect();
        for pinned in [r"C:\Users\dev\src\ws\.git", r"C:\Users\dev\src\ws\vendor\lib\.git", r"C:\Users\dev\src\ws\vendor\lib", r"C:\Users\dev\src\ws\vendor"] {
            let pin = pins.iter().find(|deny| deny.path == p(pinned)).unwrap_or_else(|| panic!("{pinned} is not pinned"));
            assert_eq!(pin.mask, mask::DELETE, "{pinned}");
        }
        assert!(!pins.iter().any(|deny| deny.path == p(r"C:\Users\dev\src\ws")), "the workspace itself needs no pin");
        assert_eq!(pins.iter().filter(|deny| deny.path == p(r"C:\Users\dev\src\ws\.git")).count(), 1, "one pin per directory");
    }

    #[test]
    fn hidden_paths_outside_every_grant_get_no_entry() {
        let mut request = request();
        request.hidden.push(p(r"C:\Users\dev\.aws"));
        let plan = plan(&request, &machine()).unwrap();
        assert!(!plan.files.denies.iter().any(|deny| deny.path == p(r"C:\Users\dev\.aws")));
        assert!(grant_for(&plan, r"C:\Users\dev\.aws\credentials").is_none(), "and nothing grants it either");
    }

    #[test]
    fn short_names_are_rejected_in_every_grant() {
        for root in [r"C:\Users\DEVELO~1", r"C:\PROGRA~3\x", r"C:\Users\dev\src\WS~1"] {
            let writable = Request { writable: vec![p(root)], ..request() };
            assert!(matches!(plan(&writable, &machine()), Err(PlanError::ShortName(_))), "{root}");
            let readable = Request { read_only: vec![p(root)], ..request() };
            assert!(matches!(plan(&readable, &machine()), Err(PlanError::ShortName(_))), "{root}");
        }
    }

    #[test]
    fn read_grants_may_not_cover_the_profile() {
        for root in [r"C:\Users\dev", r"C:\Users", r"C:\"] {
            let request = Request { read_only: vec![p(root)], ..request() };
            assert!(matches!(plan(&request, &machine()), Err(PlanError::ReadTooBroad(..))), "{root}");
        }
        // A PATH entry that is the profile, or a short name, is left out rather than granted.
        let mut machine = machine();
        machine.path_dirs.push(p(r"C:\Users\dev"));
        machine.path_dirs.push(p(r"C:\Users\dev\APPDAT~1\bin"));
        let plan = plan(&request(), &machine).unwrap();
        assert!(grant_for(&plan, r"C:\Users\dev\Documents\taxes.pdf").is_none());
        assert!(grant_for(&plan, r"C:\Users\dev\APPDAT~1\bin\tool.exe").is_none());
    }

    #[test]
    fn resolve_allowed_is_refused() {
        let network = NetworkMode::Allowlist { allow: vec!["crates.io".into()], deny: vec![], resolve_allowed: true };
        let request = Request { network, ..request() };
        assert!(matches!(plan(&request, &machine()), Err(PlanError::OptionUnsupported { option: "--resolve-allowed", .. })));
    }

    #[test]
    fn broad_writable_roots_are_rejected() {
        for root in [r"C:\", r"C:\Users", r"C:\Users\dev", r"C:\ProgramData", r"\\server\share", r"C:\Users\dev\AppData"] {
            let request = Request { writable: vec![p(root)], ..request() };
            let result = plan(&request, &machine());
            assert!(matches!(result, Err(PlanError::WritableTooBroad(..)) | Err(PlanError::ReadTooBroad(..))), "{root}: {result:?}");
        }
        for root in [r"C:\Windows\Temp", r"C:\Windows\Temp\sub", r"C:\Program Files\tool", r"C:\Program Files"] {
            let request = Request { writable: vec![p(root)], ..request() };
            let result = plan(&request, &machine());
            assert!(matches!(result, Err(PlanError::WritableInSystem(..)) | Err(PlanError::WritableTooBroad(..))), "{root}: {result:?}");
        }
    }

    #[test]
    fn limits_map_onto_the_job() {
        let mut request = request();
        request.limits.memory = Some(1 << 30);
        request.limits.max_procs = Some(64);
        request.limits.cpu_time = Some(Duration::from_secs(30));
        request.limits.cpus_milli = Some(1500);
        request.limits.timeout = Some(Duration::from_secs(5));
        let job = plan(&request, &machine()).unwrap().job;
        assert!(job.kill_on_close && !job.allow_breakaway && job.die_on_unhandled_exception && job.ui_restrictions);
        assert_eq!(job.job_memory, Some(1 << 30));
        assert_eq!(job.active_processes, Some(64));
        assert_eq!(job.job_user_time, Some(Duration::from_secs(30)));
        assert_eq!(job.cpu_rate, Some(3750));
        assert_eq!(job.timeout, Some(Duration::from_secs(5)));
        request.limits.cpus_milli = Some(64_000);
        assert_eq!(plan(&request, &machine()).unwrap().job.cpu_rate, Some(10_000));
    }

    #[test]
    fn limits_windows_lacks_are_refused_when_set_and_reported_when_default() {
        let plan_default = plan(&request(), &machine()).unwrap();
        let gaps: Vec<_> = plan_default.gaps.iter().map(|gap| gap.what).collect();
        assert!(gaps.contains(&"max_file_size") && gaps.contains(&"max_open_files") && gaps.contains(&"tmp_size"));
        let mut request = request();
        request.limits.max_file_size = Some(1 << 20);
        assert!(matches!(plan(&request, &machine()), Err(PlanError::LimitUnsupported { limit: "max_file_size", .. })));
        request.limits.max_file_size = None;
        request.limits.max_open_files = None;
        request.limits.tmp_size = None;
        assert!(plan(&request, &machine()).unwrap().gaps.iter().all(|gap| gap.what == "copy-on-write caches"));
    }

    #[test]
    fn unconfined_is_not_planned() {
        let request = Request { profile: Profile::Unconfined, ..request() };
        assert!(matches!(plan(&request, &machine()), Err(PlanError::Unconfined)));
    }
}
