//! Resolution: raw policy file plus command-line overrides, merged over a built-in profile,
//! into the [`Policy`] that backends enforce.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::builtin;
use crate::env::looks_secret;
use crate::error::PolicyError;
use crate::git;
use crate::network::{EntryList, MAX_SERVED_PORTS, Rules};
use crate::parse::{parse_duration, parse_size};
use crate::paths::{canonicalize, canonicalize_below, canonicalize_lenient, expand, is_within, listing};
use crate::raw::{RawNumber, RawPolicy};

/// A built-in starting point for a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The system and toolchains readable, the workspace readable, nothing writable.
    ReadOnly,
    /// As `read-only`, plus the workspace and `--allow-write` roots writable and a private `/tmp`.
    WorkspaceWrite,
    /// No sandbox: the command runs with the caller's full access. Only on explicit request.
    Unconfined,
}

impl Profile {
    pub fn parse(name: &str) -> Result<Profile, String> {
        match name {
            "read-only" => Ok(Profile::ReadOnly),
            "workspace-write" => Ok(Profile::WorkspaceWrite),
            "unconfined" => Ok(Profile::Unconfined),
            _ => Err("expected read-only, workspace-write or unconfined".into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::ReadOnly => "read-only",
            Profile::WorkspaceWrite => "workspace-write",
            Profile::Unconfined => "unconfined",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sandbox's network access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum NetworkMode {
    /// A private network namespace with only a loopback interface.
    None,
    /// Only the listed destinations, through palisade's proxy. With `resolve_allowed`, exact
    /// names on the list also resolve inside the sandbox, to loopback addresses where palisade
    /// accepts plain TCP connections for them.
    Allowlist { allow: Vec<String>, deny: Vec<String>, resolve_allowed: bool },
    /// The host's network.
    Full,
}

impl NetworkMode {
    pub fn name(&self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Allowlist { .. } => "allowlist",
            NetworkMode::Full => "full",
        }
    }
}

/// Command-line settings, applied over the policy file. `None` and empty lists leave the file's
/// value (or the profile's default) in place.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub profile: Option<String>,
    pub workspace: Option<PathBuf>,
    pub allow_write: Vec<PathBuf>,
    pub allow_read: Vec<PathBuf>,
    pub deny_read: Vec<PathBuf>,
    pub net: Option<String>,
    pub allow_domain: Vec<String>,
    /// `--resolve-allowed`.
    pub resolve_allowed: bool,
    /// `--allow-listen` ports, as given.
    pub allow_listen: Vec<String>,
    /// `--expose` ports, as given.
    pub expose: Vec<String>,
    pub timeout: Option<String>,
    pub cpu_time: Option<String>,
    pub memory: Option<String>,
    /// A number or `unlimited`.
    pub max_procs: Option<String>,
    pub max_file_size: Option<String>,
    /// A number or `unlimited`.
    pub max_open_files: Option<String>,
    pub tmp_size: Option<String>,
    pub max_output: Option<String>,
    /// A number of CPUs, such as `1.5`, or `unlimited`.
    pub cpus: Option<String>,
    /// `NAME` passes a variable through; `NAME=VALUE` sets it.
    pub env: Vec<String>,
    pub allow_degraded: bool,
    pub allow_ptrace: bool,
}

/// Facts about the caller that resolution depends on.
#[derive(Debug, Clone)]
pub struct Context {
    /// The directory palisade was started in.
    pub cwd: PathBuf,
    /// The caller's home directory (`$HOME`).
    pub home: Option<PathBuf>,
    /// The caller's environment.
    pub env: Vec<(OsString, OsString)>,
    /// The machine's physical memory in bytes, which sets the default memory and /tmp limits.
    pub memory_total: Option<u64>,
}

impl Context {
    /// Captures the current process's directory, home and environment.
    pub fn from_process() -> std::io::Result<Context> {
        Ok(Context {
            cwd: std::env::current_dir()?,
            home: std::env::var_os(HOME_VARIABLE).map(PathBuf::from),
            env: std::env::vars_os().collect(),
            memory_total: read_memory_total(),
        })
    }
}

/// The variable that names the caller's home directory.
#[cfg(not(windows))]
const HOME_VARIABLE: &str = "HOME";
#[cfg(windows)]
const HOME_VARIABLE: &str = "USERPROFILE";

/// Returns the machine's memory in bytes: `MemTotal` of `/proc/meminfo`, which `sysinfo`
/// gives in one system call.
#[cfg(target_os = "linux")]
fn read_memory_total() -> Option<u64> {
    // SAFETY: sysinfo only writes the structure it is given, which is plain data.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo structure.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    (info.totalram as u64).checked_mul(u64::from(info.mem_unit))
}

/// Reads `MemTotal` from `/proc/meminfo`. Returns `None` where there is no such file.
#[cfg(not(target_os = "linux"))]
fn read_memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The filesystem view of a sandbox. Every path is absolute and canonical.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filesystem {
    /// Visible read-only. Only paths that exist.
    pub read_only: Vec<PathBuf>,
    /// Visible through a copy-on-write layer that is discarded after the run. Only paths that
    /// exist.
    pub copy_on_write: Vec<PathBuf>,
    /// Visible read-write. Only paths that exist.
    pub writable: Vec<PathBuf>,
    /// Hidden, even inside a visible or writable path. May not exist yet.
    pub hidden: Vec<PathBuf>,
    /// Read-only and impossible to create, even inside a writable root. May not exist yet.
    pub protected: Vec<PathBuf>,
    /// Files inside writable roots that must not appear, but that cannot be covered while
    /// missing because tools fail on a placeholder (git's `commondir`). One created during the
    /// run is removed when the run ends.
    pub revert_if_created: Vec<PathBuf>,
    /// Whether the private `/tmp` (and `/var/tmp`) accepts writes.
    pub tmp_writable: bool,
    /// The `.git` directories and pointer files that exist in the writable roots before the run.
    /// One that appears during the run is neutralised afterwards.
    pub git_entries: Vec<PathBuf>,
}

/// Resource limits. `None` means no limit beyond the host's; the policy file writes it as
/// `"unlimited"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_duration")]
    pub cpu_time: Option<Duration>,
    /// Memory in use by every process of the run together, swap included.
    #[serde(serialize_with = "serialize_size")]
    pub memory: Option<u64>,
    /// Processes and threads of the run together.
    #[serde(serialize_with = "serialize_count")]
    pub max_procs: Option<u64>,
    #[serde(serialize_with = "serialize_size")]
    pub max_file_size: Option<u64>,
    /// Open files per process.
    #[serde(serialize_with = "serialize_count")]
    pub max_open_files: Option<u64>,
    /// Size of each of the sandbox's temporary filesystems (`/tmp`, `/var/tmp`, `/dev/shm`, the
    /// home directory and the copy-on-write layers of the caches).
    #[serde(serialize_with = "serialize_size")]
    pub tmp_size: Option<u64>,
    /// Bytes of stdout and stderr together; the run is stopped when it writes more.
    #[serde(serialize_with = "serialize_size")]
    pub max_output: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (`cpus = 1.5` is 1500).
    #[serde(rename = "cpus", serialize_with = "serialize_cpus")]
    pub cpus_milli: Option<u64>,
}

/// Processes and threads a run may have by default: more than a parallel build on a large
/// machine starts, few enough that a fork bomb stops long before the host's limit.
pub const DEFAULT_MAX_PROCS: u64 = 4096;
/// The default size of one file.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 << 30;
/// The default maximum of open files per process.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 65536;
/// The default size of each temporary filesystem, unless a quarter of the machine's memory
/// is smaller.
pub const DEFAULT_TMP_SIZE: u64 = 4 << 30;
/// The memory assumed when the machine's is unknown.
const ASSUMED_MEMORY_TOTAL: u64 = 16 << 30;

impl Limits {
    /// Returns the limits a sandboxed profile has when the policy sets none: half the
    /// machine's memory, [`DEFAULT_MAX_PROCS`], [`DEFAULT_MAX_FILE_SIZE`],
    /// [`DEFAULT_MAX_OPEN_FILES`], and temporary filesystems of [`DEFAULT_TMP_SIZE`] or a
    /// quarter of the memory. No timeout, CPU time, output or CPU bandwidth limit.
    pub fn defaults(memory_total: Option<u64>) -> Limits {
        let memory_total = memory_total.unwrap_or(ASSUMED_MEMORY_TOTAL);
        Limits {
            memory: Some(memory_total / 2),
            max_procs: Some(DEFAULT_MAX_PROCS),
            max_file_size: Some(DEFAULT_MAX_FILE_SIZE),
            max_open_files: Some(DEFAULT_MAX_OPEN_FILES),
            tmp_size: Some(DEFAULT_TMP_SIZE.min(memory_total / 4)),
            ..Limits::default()
        }
    }
}

const UNLIMITED: &str = "unlimited";

/// Writes a size as the string form the policy file takes back (`"536870912"`).
fn serialize_size<S: serde::Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => serializer.serialize_str(&bytes.to_string()),
        None => serializer.serialize_str(UNLIMITED),
    }
}

fn serialize_count<S: serde::Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(count) => serializer.serialize_u64(*count),
        None => serializer.serialize_str(UNLIMITED),
    }
}

fn serialize_cpus<S: serde::Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(milli) => serializer.serialize_f64(*milli as f64 / 1000.0),
        None => serializer.serialize_str(UNLIMITED),
    }
}

fn serialize_duration<S: serde::Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) if duration.subsec_millis() == 0 => serializer.serialize_str(&format!("{}s", duration.as_secs())),
        Some(duration) => serializer.serialize_str(&format!("{}ms", duration.as_millis())),
        None => serializer.serialize_str(UNLIMITED),
    }
}

/// One variable of the sandbox's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: OsString,
    pub value: OsString,
}

/// A resolved policy, ready for a backend.
#[derive(Debug, Clone)]
pub struct Policy {
    pub profile: Profile,
    pub workspace: PathBuf,
    /// The working directory of the command inside the sandbox.
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub filesystem: Filesystem,
    pub network: NetworkMode,
    /// The ports the command may listen on and the ports the host reaches.
    pub ports: Ports,
    pub limits: Limits,
    /// The complete environment of the command.
    pub env: Vec<EnvVar>,
    /// Names of the caller's variables that were dropped because they look like credentials.
    pub dropped_env: Vec<String>,
    /// Run with the layers available when some are missing, and say which held.
    pub allow_degraded: bool,
    /// Let the command trace its own descendants (`ptrace`, `process_vm_*`).
    pub allow_ptrace: bool,
}

/// The TCP ports of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    /// The only TCP ports the command may listen on (bind), or `None` for any. 0 stands for
    /// ports the kernel picks.
    pub listen: Option<Vec<u16>>,
    /// Ports of the sandbox's loopback that palisade makes reachable from the host, at the
    /// same port of the host's 127.0.0.1.
    pub expose: Vec<u16>,
}

/// The source of a setting, for error messages.
struct Origin<'a> {
    raw: &'a RawPolicy,
}

impl Origin<'_> {
    fn of<T>(&self, value: &Spanned<T>) -> String {
        match &self.raw.source {
            Some(source) => source.origin(value.span().start),
            None => "in the policy".into(),
        }
    }
}

const FLAG: &str = "on the command line";

/// Merges `raw` and `overrides` over the chosen profile and resolves every path.
pub fn resolve(raw: &RawPolicy, overrides: &Overrides, context: &Context) -> Result<Policy, PolicyError> {
    crate::paths::listing::with_cache(|| resolve_uncached(raw, overrides, context))
}

fn resolve_uncached(raw: &RawPolicy, overrides: &Overrides, context: &Context) -> Result<Policy, PolicyError> {
    let origin = Origin { raw };
    let home = context.home.clone().filter(|home| home.is_absolute()).ok_or(PolicyError::NoHome)?;
    let home = canonicalize_lenient(&home).map_err(|reason| PolicyError::InvalidValue {
        what: "home directory",
        value: home.display().to_string(),
        origin: "from HOME".into(),
        reason,
    })?;

    let profile = resolve_profile(raw, overrides, &origin)?;
    let workspace = resolve_workspace(overrides, context)?;
    let network = resolve_network(raw, overrides, &origin, profile)?;
    let ports = resolve_ports(raw, overrides, &origin, profile, &network)?;
    let limits = resolve_limits(raw, overrides, &origin, profile, context.memory_total)?;
    let allow_degraded = overrides.allow_degraded || raw.allow_degraded.unwrap_or(false);
    let allow_ptrace = overrides.allow_ptrace || raw.allow_ptrace.unwrap_or(false);
    for entry in &overrides.env {
        validate_env_name(entry.split_once('=').map_or(entry.as_str(), |(name, _)| name), FLAG.into())?;
    }
    for name in &raw.env.pass {
        validate_env_name(name.get_ref(), origin.of(name))?;
    }
    for name in raw.env.set.keys() {
        validate_env_name(name, "in the policy's [env] set table".into())?;
    }
    let (env, dropped_env) = resolve_env(raw, overrides, context, &home);

    let filesystem = if profile == Profile::Unconfined {
        reject_filesystem_rules_when_unconfined(raw, overrides)?;
        Filesystem::default()
    } else {
        let mut filesystem = resolve_filesystem(raw, overrides, context, profile, &home, &workspace, &origin)?;
        if network == NetworkMode::Full {
            add_resolver_configuration(&mut filesystem, Path::new("/etc/resolv.conf"));
        }
        filesystem
    };

    let cwd = if is_within(&context.cwd, &workspace) { context.cwd.clone() } else { workspace.clone() };
    let cwd = canonicalize(&cwd).unwrap_or(cwd);
    let mut env = env;
    set_env(&mut env, "PWD", cwd.as_os_str());

    Ok(Policy { profile, workspace, cwd, home, filesystem, network, ports, limits, env, dropped_env, allow_degraded, allow_ptrace })
}

/// Makes the file `/etc/resolv.conf` links to readable, for a command that uses the host's
/// network. Where systemd-resolved or resolvconf manage it, it is a symbolic link into `/run`,
/// which the sandbox does not show, and every name lookup would fail.
fn add_resolver_configuration(filesystem: &mut Filesystem, resolv_conf: &Path) {
    let Ok(target) = canonicalize(resolv_conf) else { return };
    let visible = filesystem.read_only.iter().chain(&filesystem.writable).any(|root| is_within(&target, root));
    let hidden = filesystem.hidden.iter().any(|hidden| is_within(&target, hidden));
    if !visible && !hidden && target.is_file() {
        filesystem.read_only.push(target);
    }
}

fn resolve_profile(raw: &RawPolicy, overrides: &Overrides, origin: &Origin) -> Result<Profile, PolicyError> {
    if let Some(name) = &overrides.profile {
        return Profile::parse(name).map_err(|reason| PolicyError::InvalidValue {
            what: "profile",
            value: name.clone(),
            origin: FLAG.into(),
            reason,
        });
    }
    match &raw.profile {
        Some(name) => Profile::parse(name.get_ref()).map_err(|reason| PolicyError::InvalidValue {
            what: "profile",
            value: name.get_ref().clone(),
            origin: origin.of(name),
            reason,
        }),
        None => Ok(Profile::WorkspaceWrite),
    }
}

fn resolve_workspace(overrides: &Overrides, context: &Context) -> Result<PathBuf, PolicyError> {
    let given = overrides.workspace.clone().unwrap_or_else(|| context.cwd.clone());
    let absolute = context.cwd.join(&given);
    match canonicalize(&absolute) {
        Ok(path) if path.is_dir() => Ok(path),
        Ok(path) => Err(PolicyError::InvalidValue {
            what: "workspace",
            value: path.display().to_string(),
            origin: FLAG.into(),
            reason: "not a directory".into(),
        }),
        Err(_) => Err(PolicyError::MissingPath { what: "workspace", path: absolute, origin: FLAG.into() }),
    }
}

fn resolve_network(raw: &RawPolicy, overrides: &Overrides, origin: &Origin, profile: Profile) -> Result<NetworkMode, PolicyError> {
    check_network_entries(raw, overrides, origin)?;

    // Flags override the file, so `--net none` and `--net full` replace the file's whole network
    // setting: its mode, its entries and its resolve_allowed. Its entries were checked above.
    let flag_replaces_file = matches!(overrides.net.as_deref(), Some("none" | "full"));
    let (mode, mode_origin) = match (&overrides.net, &raw.network.mode) {
        (Some(mode), _) => (Some(mode.clone()), FLAG.to_owned()),
        (None, Some(mode)) => (Some(mode.get_ref().clone()), origin.of(mode)),
        (None, None) => (None, String::new()),
    };
    let mut allow: Vec<String> = Vec::new();
    if !flag_replaces_file {
        allow.extend(raw.network.allow.iter().map(|entry| entry.get_ref().clone()));
    }
    allow.extend(overrides.allow_domain.iter().cloned());
    let deny: Vec<String> = raw.network.deny.iter().map(|entry| entry.get_ref().clone()).collect();
    let resolve_allowed = resolve_allowed_setting(raw, overrides, origin, flag_replaces_file);

    if profile == Profile::Unconfined {
        if let Some(setting) = &resolve_allowed {
            return Err(PolicyError::Contradiction(format!(
                "the unconfined profile uses the host network, which has no allowlist, so {setting} has no allowed names to resolve. Drop resolve_allowed or use another profile"
            )));
        }
    }
    let network = match mode.as_deref() {
        None if allow.is_empty() => match &resolve_allowed {
            Some(setting) => {
                return Err(PolicyError::Contradiction(format!(
                    "{setting} needs allowed names, but without allow entries the network mode is 'none'. Add entries with --allow-domain or [network] allow, or drop resolve_allowed"
                )));
            }
            None => NetworkMode::None,
        },
        None | Some("allowlist") => NetworkMode::Allowlist { allow, deny, resolve_allowed: resolve_allowed.is_some() },
        Some(mode @ ("none" | "full")) if !allow.is_empty() => {
            return Err(PolicyError::Contradiction(format!(
                "network mode '{mode}' {mode_origin} conflicts with allowed domains ({}); allowed domains need mode 'allowlist'",
                allow.join(", ")
            )));
        }
        Some(mode @ ("none" | "full")) if resolve_allowed.is_some() => {
            return Err(PolicyError::Contradiction(format!(
                "network mode '{mode}' {mode_origin} has no allowlist, so {} has no allowed names to resolve. Drop resolve_allowed or use mode 'allowlist'",
                resolve_allowed.unwrap_or_default()
            )));
        }
        Some("none") => NetworkMode::None,
        Some("full") => NetworkMode::Full,
        Some(other) => {
            return Err(PolicyError::InvalidValue {
                what: "network mode",
                value: other.into(),
                origin: mode_origin,
                reason: "expected none, allowlist or full".into(),
            });
        }
    };

    if profile == Profile::Unconfined {
        return unconfined_network(raw, overrides, &network);
    }
    Ok(network)
}

/// Names the setting that switched resolve_allowed on, for messages: `--resolve-allowed`, or
/// the file's field with its line unless a `--net` flag replaces the file's network setting.
fn resolve_allowed_setting(raw: &RawPolicy, overrides: &Overrides, origin: &Origin, flag_replaces_file: bool) -> Option<String> {
    if overrides.resolve_allowed {
        return Some("--resolve-allowed".to_owned());
    }
    let value = raw.network.resolve_allowed.as_ref()?;
    (*value.get_ref() && !flag_replaces_file).then(|| format!("resolve_allowed {}", origin.of(value)))
}

/// Returns the host network for the unconfined profile, which takes `full` or no mode at all.
fn unconfined_network(raw: &RawPolicy, overrides: &Overrides, network: &NetworkMode) -> Result<NetworkMode, PolicyError> {
    let explicit = overrides.net.is_some() || raw.network.mode.is_some();
    let explicit = explicit || !overrides.allow_domain.is_empty() || !raw.network.allow.is_empty();
    if explicit && *network != NetworkMode::Full {
        return Err(PolicyError::Contradiction(format!(
            "the unconfined profile uses the host network, but network mode '{}' was given; use --net full or another profile",
            network.name()
        )));
    }
    Ok(NetworkMode::Full)
}

/// Checks every entry of `[network] allow`, `deny` and `--allow-domain`, whatever the mode, so
/// a mistyped entry fails now rather than when the mode changes. The entries stay as written,
/// for the report.
fn check_network_entries(raw: &RawPolicy, overrides: &Overrides, origin: &Origin) -> Result<(), PolicyError> {
    let file_entries = raw.network.allow.iter().map(|entry| (EntryList::Allow, "[network] allow entry", entry));
    let file_entries = file_entries.chain(raw.network.deny.iter().map(|entry| (EntryList::Deny, "[network] deny entry", entry)));
    for (list, what, entry) in file_entries {
        crate::network::parse_entry(entry.get_ref(), list).map_err(|reason| PolicyError::InvalidValue {
            what,
            value: entry.get_ref().clone(),
            origin: origin.of(entry),
            reason,
        })?;
    }
    for pattern in &overrides.allow_domain {
        crate::network::parse_entry(pattern, EntryList::Allow).map_err(|reason| PolicyError::InvalidValue {
            what: "--allow-domain pattern",
            value: pattern.clone(),
            origin: FLAG.into(),
            reason,
        })?;
    }
    Ok(())
}

/// Resolves `[network] listen` and `expose` with `--allow-listen` and `--expose`. Flags add to
/// the file's lists.
fn resolve_ports(raw: &RawPolicy, overrides: &Overrides, origin: &Origin, profile: Profile, network: &NetworkMode) -> Result<Ports, PolicyError> {
    let port = |what: &'static str, value: i64, origin: String, lowest: i64| -> Result<u16, PolicyError> {
        if (lowest..=65535).contains(&value) {
            Ok(value as u16)
        } else {
            Err(PolicyError::InvalidValue { what, value: value.to_string(), origin, reason: format!("expected a TCP port from {lowest} to 65535") })
        }
    };
    let flag_port = |what: &'static str, text: &str, lowest: i64| -> Result<u16, PolicyError> {
        let value = text.trim().parse::<i64>().map_err(|_| PolicyError::InvalidValue {
            what,
            value: text.into(),
            origin: FLAG.into(),
            reason: format!("expected a TCP port from {lowest} to 65535"),
        })?;
        port(what, value, FLAG.into(), lowest)
    };

    let mut listen: Option<Vec<u16>> = None;
    if let Some(entries) = &raw.network.listen {
        let list = listen.get_or_insert_with(Vec::new);
        for entry in entries {
            list.push(port("[network] listen port", *entry.get_ref(), origin.of(entry), 0)?);
        }
    }
    for text in &overrides.allow_listen {
        let value = flag_port("--allow-listen port", text, 0)?;
        listen.get_or_insert_with(Vec::new).push(value);
    }
    // Each exposed port with where it was given, for messages.
    let mut exposed: Vec<(u16, String)> = Vec::new();
    for entry in &raw.network.expose {
        exposed.push((port("[network] expose port", *entry.get_ref(), origin.of(entry), 1)?, origin.of(entry)));
    }
    for text in &overrides.expose {
        exposed.push((flag_port("--expose port", text, 1)?, FLAG.into()));
    }
    let mut expose: Vec<u16> = exposed.iter().map(|(port, _)| *port).collect();
    for list in listen.iter_mut().chain(std::iter::once(&mut expose)) {
        list.sort_unstable();
        list.dedup();
    }

    if profile == Profile::Unconfined && (listen.is_some() || !expose.is_empty()) {
        return Err(PolicyError::Contradiction(
            "the unconfined profile runs the command outside any sandbox, so it cannot limit or expose ports; use another profile".into(),
        ));
    }
    if *network == NetworkMode::Full && !expose.is_empty() {
        return Err(PolicyError::Contradiction(format!(
            "ports to expose ({}) need a network of the sandbox's own, but network mode 'full' shares the host's, where the command's servers are reachable already; drop --expose or use --net none or allowlist",
            expose.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    if let Some(allowed) = &listen {
        if let Some(missing) = expose.iter().find(|port| !allowed.contains(port)) {
            return Err(PolicyError::Contradiction(format!(
                "port {missing} is to be exposed, but the command may not listen on it; add it to the ports to listen on (--allow-listen {missing})"
            )));
        }
    }
    if let NetworkMode::Allowlist { allow, deny, resolve_allowed } = network {
        let rules = Rules::from_strings(allow, deny)?;
        check_served_ports(&rules, *resolve_allowed)?;
        reject_exposed_forwarded_ports(&rules, &exposed, raw, origin)?;
    }
    Ok(Ports { listen, expose })
}

/// Rejects an allowlist that needs more ports served inside the sandbox than
/// [`MAX_SERVED_PORTS`].
fn check_served_ports(rules: &Rules, resolve_allowed: bool) -> Result<(), PolicyError> {
    if rules.served_port_count(resolve_allowed) <= MAX_SERVED_PORTS {
        return Ok(());
    }
    Err(PolicyError::TooManyServedPorts {
        forwarded: rules.forwarded_ports().len(),
        name_ports: resolve_allowed.then(|| rules.resolvable_name_port_count()),
        max: MAX_SERVED_PORTS,
    })
}

/// Rejects a port that is both exposed and forwarded. Palisade would listen on it at the
/// host's 127.0.0.1 and connect to the sandbox's, and inside the sandbox listen at the forwarded
/// address and connect to the host's, so for 127.0.0.1 each connection would loop.
fn reject_exposed_forwarded_ports(rules: &Rules, exposed: &[(u16, String)], raw: &RawPolicy, origin: &Origin) -> Result<(), PolicyError> {
    let forwarded = rules.forwarded_ports();
    for (port, expose_origin) in exposed {
        let Some(rule) = rules.allow.iter().find(|rule| {
            rule.loopback_socket_addr().is_some_and(|socket| socket.port() == *port && forwarded.contains(&socket))
        }) else {
            continue;
        };
        let entry_origin = match raw.network.allow.iter().find(|entry| entry.get_ref() == rule.text()) {
            Some(entry) => origin.of(entry),
            None => FLAG.to_owned(),
        };
        let is_loop = rule.loopback_socket_addr().is_some_and(|socket| socket.ip() == std::net::Ipv4Addr::LOCALHOST);
        let effect = if is_loop {
            "so palisade would pass each connection from the host into the sandbox and back out in a loop"
        } else {
            "so the port would lead both from the host into the sandbox and from the sandbox out to the host"
        };
        return Err(PolicyError::Contradiction(format!(
            "port {port} is both exposed {expose_origin} and forwarded by the allow entry '{}' {entry_origin}, {effect}. Remove the exposed port or the allow entry",
            rule.text()
        )));
    }
    Ok(())
}

fn resolve_limits(
    raw: &RawPolicy,
    overrides: &Overrides,
    origin: &Origin,
    profile: Profile,
    memory_total: Option<u64>,
) -> Result<Limits, PolicyError> {
    /// The value a limit was given, as text, and where it was given.
    type Given = Option<(String, String)>;
    fn pick<T>(flag: &Option<String>, file: &Option<Spanned<T>>, text: impl Fn(&T) -> String, origin: &Origin) -> Given {
        match (flag, file) {
            (Some(value), _) => Some((value.clone(), FLAG.into())),
            (None, Some(value)) => Some((text(value.get_ref()), origin.of(value))),
            (None, None) => None,
        }
    }
    // `Ok(None)`: not given, so the default applies; `Ok(Some(None))`: "unlimited".
    fn parse<T>(
        what: &'static str,
        given: Given,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Option<T>>, PolicyError> {
        let Some((text, origin)) = given else { return Ok(None) };
        if text.eq_ignore_ascii_case(UNLIMITED) {
            return Ok(Some(None));
        }
        parse(&text).map(|value| Some(Some(value))).map_err(|reason| PolicyError::InvalidValue { what, value: text, origin, reason })
    }
    let text = |value: &RawNumber| value.to_text();
    let count = |text: &str| -> Result<u64, String> {
        match text.parse::<u64>() {
            Ok(0) => Err("must be greater than zero".into()),
            Ok(value) => Ok(value),
            Err(_) => Err(format!("expected a whole number or \"{UNLIMITED}\"")),
        }
    };
    let cpus = |text: &str| -> Result<u64, String> {
        let value: f64 = text.parse().map_err(|_| format!("expected a number of CPUs, such as 1.5, or \"{UNLIMITED}\""))?;
        let milli = (value * 1000.0).round();
        if !(1.0..=1_000_000_000.0).contains(&milli) {
            return Err("must be at least 0.001 CPUs".into());
        }
        Ok(milli as u64)
    };
    let file = &raw.limits;
    let defaults = if profile == Profile::Unconfined { Limits::default() } else { Limits::defaults(memory_total) };
    let or_default = |given: Option<Option<u64>>, default: Option<u64>| given.unwrap_or(default);
    let or_default_duration = |given: Option<Option<Duration>>, default: Option<Duration>| given.unwrap_or(default);
    Ok(Limits {
        timeout: or_default_duration(
            parse("timeout", pick(&overrides.timeout, &file.timeout, text, origin), parse_duration)?,
            defaults.timeout,
        ),
        cpu_time: or_default_duration(
            parse("CPU time", pick(&overrides.cpu_time, &file.cpu_time, text, origin), parse_duration)?,
            defaults.cpu_time,
        ),
        memory: or_default(parse("memory size", pick(&overrides.memory, &file.memory, text, origin), parse_size)?, defaults.memory),
        max_procs: or_default(parse("process limit", pick(&overrides.max_procs, &file.max_procs, text, origin), count)?, defaults.max_procs),
        max_file_size: or_default(
            parse("file size", pick(&overrides.max_file_size, &file.max_file_size, text, origin), parse_size)?,
            defaults.max_file_size,
        ),
        max_open_files: or_default(
            parse("open file limit", pick(&overrides.max_open_files, &file.max_open_files, text, origin), count)?,
            defaults.max_open_files,
        ),
        tmp_size: or_default(parse("/tmp size", pick(&overrides.tmp_size, &file.tmp_size, text, origin), parse_size)?, defaults.tmp_size),
        max_output: or_default(
            parse("output limit", pick(&overrides.max_output, &file.max_output, text, origin), parse_size)?,
            defaults.max_output,
        ),
        cpus_milli: or_default(parse("CPU count", pick(&overrides.cpus, &file.cpus, text, origin), cpus)?, defaults.cpus_milli),
    })
}

fn set_env(env: &mut Vec<EnvVar>, name: &str, value: &std::ffi::OsStr) {
    env.retain(|var| var.name != name);
    env.push(EnvVar { name: name.into(), value: value.to_owned() });
}

/// Checks a variable name from `--env` or `[env]`: not empty, and free of `=`, NUL and
/// whitespace, which no program can look up.
fn validate_env_name(name: &str, origin: String) -> Result<(), PolicyError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.contains(['=', '\0']) || name.chars().any(char::is_whitespace) {
        "a name cannot contain '=', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(PolicyError::InvalidValue { what: "environment variable", value: name.to_owned(), origin, reason: reason.into() })
}

fn resolve_env(raw: &RawPolicy, overrides: &Overrides, context: &Context, home: &Path) -> (Vec<EnvVar>, Vec<String>) {
    let mut passed: BTreeSet<String> = raw.env.pass.iter().map(|name| name.get_ref().clone()).collect();
    let mut set: Vec<(String, String)> = raw.env.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for entry in &overrides.env {
        match entry.split_once('=') {
            Some((name, value)) => set.push((name.to_owned(), value.to_owned())),
            None => {
                passed.insert(entry.clone());
            }
        }
    }

    let mut env = Vec::new();
    let mut dropped = Vec::new();
    for (name, value) in &context.env {
        let text = name.to_string_lossy();
        if passed.contains(text.as_ref()) || !looks_secret(&text) {
            env.push(EnvVar { name: name.clone(), value: value.clone() });
        } else {
            dropped.push(text.into_owned());
        }
    }
    set_env(&mut env, "HOME", home.as_os_str());
    // The host's TMPDIR usually names a directory the sandbox cannot see.
    if let Some(tmpdir) = env.iter().find(|var| var.name == "TMPDIR") {
        if !Path::new(&tmpdir.value).starts_with("/tmp") {
            set_env(&mut env, "TMPDIR", "/tmp".as_ref());
        }
    }
    for (name, value) in set {
        set_env(&mut env, &name, value.as_ref());
    }
    dropped.sort();
    (env, dropped)
}

fn reject_filesystem_rules_when_unconfined(raw: &RawPolicy, overrides: &Overrides) -> Result<(), PolicyError> {
    let fs = &raw.filesystem;
    let rules_given: Vec<&str> = [
        ("[filesystem] writable", fs.writable.is_empty()),
        ("[filesystem] readable", fs.readable.is_empty()),
        ("[filesystem] deny_read", fs.deny_read.is_empty()),
        ("[filesystem] protected", fs.protected.is_empty()),
        ("[filesystem] copy_on_write", fs.copy_on_write.is_empty()),
        ("--allow-write", overrides.allow_write.is_empty()),
        ("--allow-read", overrides.allow_read.is_empty()),
        ("--deny-read", overrides.deny_read.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(name, _)| name)
    .collect();
    if !rules_given.is_empty() {
        let verb = if rules_given.len() == 1 { "was" } else { "were" };
        return Err(PolicyError::Contradiction(format!(
            "the unconfined profile enforces no filesystem rules, but {} {verb} given; choose workspace-write or read-only, or remove them",
            rules_given.join(", ")
        )));
    }
    Ok(())
}

/// Returns the canonical path of `base/name` if it exists; `base` must be canonical.
fn existing_below(base: &Path, name: &str) -> Option<PathBuf> {
    let real = canonicalize_below(base, name).ok()?;
    listing::exists(&real).then_some(real)
}

/// Returns the canonical path of `path` if it exists.
fn existing(path: &Path) -> Option<PathBuf> {
    let real = canonicalize_lenient(path).ok()?;
    listing::exists(&real).then_some(real)
}

/// Collects paths in order, without duplicates.
///
/// The paths are canonical, so equal bytes mean the same path, and the set compares bytes.
/// Hashing a `Path` walks its components through SipHash, which took about a tenth of
/// resolution's samples in `perf record`, together with the lookup cache's hashing.
#[derive(Default)]
struct PathSet {
    paths: Vec<PathBuf>,
    seen: std::collections::BTreeSet<std::ffi::OsString>,
}

impl PathSet {
    fn add(&mut self, path: PathBuf) {
        if self.seen.insert(path.as_os_str().to_owned()) {
            self.paths.push(path);
        }
    }
}

/// A user-supplied path with the place it came from.
struct Entry {
    /// The canonical path.
    path: PathBuf,
    /// The absolute path as given, before symlinks were resolved.
    lexical: PathBuf,
    origin: String,
}

fn user_paths(
    what: &'static str,
    from_file: &[Spanned<String>],
    from_flags: &[PathBuf],
    context: &Context,
    home: &Path,
    workspace: &Path,
    origin: &Origin,
) -> Result<Vec<Entry>, PolicyError> {
    let mut entries = Vec::new();
    for value in from_file {
        let text = value.get_ref();
        let invalid = |reason| PolicyError::InvalidValue { what, value: text.clone(), origin: origin.of(value), reason };
        reject_pattern(text).map_err(invalid)?;
        let expanded = expand(text, home, workspace).map_err(invalid)?;
        let path = canonicalize_lenient(&expanded).map_err(invalid)?;
        entries.push(Entry { path, lexical: expanded, origin: origin.of(value) });
    }
    for flag in from_flags {
        let text = flag.to_string_lossy().into_owned();
        let invalid = |reason| PolicyError::InvalidValue { what, value: text.clone(), origin: FLAG.into(), reason };
        reject_pattern(&text).map_err(invalid)?;
        let expanded = if text.starts_with('~') || text.starts_with("{workspace}") {
            expand(&text, home, workspace).map_err(invalid)?
        } else {
            context.cwd.join(flag)
        };
        let path = canonicalize_lenient(&expanded).map_err(invalid)?;
        entries.push(Entry { path, lexical: expanded, origin: FLAG.into() });
    }
    Ok(entries)
}

fn require_existing(what: &'static str, entries: &[Entry]) -> Result<(), PolicyError> {
    for entry in entries {
        if !listing::exists(&entry.path) {
            return Err(PolicyError::MissingPath { what, path: entry.path.clone(), origin: entry.origin.clone() });
        }
    }
    Ok(())
}

fn resolve_filesystem(
    raw: &RawPolicy,
    overrides: &Overrides,
    context: &Context,
    profile: Profile,
    home: &Path,
    workspace: &Path,
    origin: &Origin,
) -> Result<Filesystem, PolicyError> {
    let fs = &raw.filesystem;
    let writable_entries = user_paths("writable path", &fs.writable, &overrides.allow_write, context, home, workspace, origin)?;
    let readable_entries = user_paths("readable path", &fs.readable, &overrides.allow_read, context, home, workspace, origin)?;
    let hidden_entries = user_paths("hidden path", &fs.deny_read, &overrides.deny_read, context, home, workspace, origin)?;
    let cow_entries = user_paths("copy-on-write path", &fs.copy_on_write, &[], context, home, workspace, origin)?;
    // A missing allow target is an error rather than silently dropped. A missing hidden path is
    // fine, because hiding it also keeps it from being created.
    require_existing("writable path", &writable_entries)?;
    require_existing("readable path", &readable_entries)?;
    require_existing("copy-on-write path", &cow_entries)?;
    if let Some(entry) = cow_entries.iter().find(|entry| !entry.path.is_dir()) {
        return Err(PolicyError::InvalidValue {
            what: "copy-on-write path",
            value: entry.path.display().to_string(),
            origin: entry.origin.clone(),
            reason: "not a directory".into(),
        });
    }

    if profile == Profile::ReadOnly {
        if let Some(entry) = writable_entries.first() {
            return Err(PolicyError::Contradiction(format!(
                "the read-only profile allows no writes, but '{}' {} is writable; use workspace-write",
                entry.path.display(),
                entry.origin
            )));
        }
    }

    // Most of the built-in names below are looked up in these two directories.
    listing::prefetch(home);
    listing::prefetch(&home.join(".config"));
    let mut hidden = PathSet::default();
    for name in builtin::CREDENTIAL_STORES {
        hidden.add(canonicalize_below(home, name).unwrap_or_else(|_| home.join(name)));
    }
    for entry in &hidden_entries {
        hidden.add(entry.path.clone());
    }
    let mut covered_hidden = PathSet::default();

    let base_roots = [workspace.to_path_buf()];
    for entries in [&writable_entries, &readable_entries, &cow_entries] {
        reject_planted_symlinks(entries, &base_roots)?;
    }

    let mut writable = PathSet::default();
    if profile == Profile::WorkspaceWrite {
        writable.add(workspace.to_path_buf());
    }
    for entry in &writable_entries {
        if entry.path == Path::new("/") {
            return Err(PolicyError::Contradiction(format!(
                "'/' {} would make the whole system writable; use the unconfined profile instead",
                entry.origin
            )));
        }
        writable.add(entry.path.clone());
    }

    let mut read_only = PathSet::default();
    for path in builtin::SYSTEM_READ {
        if let Some(real) = existing(Path::new(path)) {
            read_only.add(real);
        }
    }
    for name in builtin::HOME_TOOLCHAIN {
        if let Some(real) = existing_below(home, name) {
            read_only.add(real);
        }
    }
    if profile == Profile::ReadOnly {
        read_only.add(workspace.to_path_buf());
    }
    for entry in &readable_entries {
        read_only.add(entry.path.clone());
    }

    let mut copy_on_write = PathSet::default();
    for name in builtin::HOME_CACHES {
        if let Some(real) = existing_below(home, name) {
            if real.is_dir() {
                copy_on_write.add(real);
            }
        }
    }
    for entry in &cow_entries {
        copy_on_write.add(entry.path.clone());
    }

    // Everything visible must stay clear of hidden paths: a hidden path may sit inside a visible
    // one, but a visible one inside a hidden one is a contradiction to report, not to guess at.
    for hidden_path in &hidden.paths {
        for (what, list) in [("writable", &writable.paths), ("readable", &read_only.paths), ("copy-on-write", &copy_on_write.paths)] {
            if let Some(inside) = list.iter().find(|path| is_within(path, hidden_path)) {
                let is_builtin = !hidden_entries.iter().any(|entry| &entry.path == hidden_path);
                let hidden_kind = if is_builtin { "a built-in credential store" } else { "a hidden path" };
                let visible_kind = if what == "readable" && builtin::SYSTEM_READ.iter().any(|system| inside == Path::new(system)) {
                    "a built-in system path that every sandbox reads".to_owned()
                } else {
                    format!("{what} in this policy")
                };
                let relation = if inside == hidden_path { "is also".to_owned() } else { format!("is inside '{}',", hidden_path.display()) };
                return Err(PolicyError::Contradiction(format!(
                    "'{}' is {visible_kind} and {relation} {hidden_kind}; remove one of the two rules",
                    inside.display()
                )));
            }
        }
    }

    let mut protected = PathSet::default();
    let mut revert = PathSet::default();
    let mut git_entries = PathSet::default();
    for root in &writable.paths {
        protect_in_root(root, &fs.protected, &mut protected, &mut revert, &mut git_entries, home, git::GIT_NAME_IGNORES_CASE);
    }
    let mut worktree_roots = Vec::new();
    for root in &writable.paths {
        if let Some(linked) = git::linked_git_dir(&root.join(".git")) {
            if !writable.paths.iter().any(|w| is_within(&linked.git_dir, w)) {
                worktree_roots.push(linked);
            }
        }
    }
    for linked in &worktree_roots {
        // A linked worktree keeps its index and HEAD in the main repository, and commits
        // write objects, refs, logs and lock files (`packed-refs.lock`) there. The main
        // repository's git directory is therefore writable, with what git executes or reads
        // as configuration protected, as in any git directory inside a writable root.
        writable.add(linked.common_dir.clone());
        protect_git_dir(&linked.common_dir, &linked.common_dir, &mut protected, &mut revert);
        for git_dir in git::worktree_dirs(&linked.common_dir) {
            protect_git_dir(&git_dir, &linked.common_dir, &mut protected, &mut revert);
        }
    }
    for name in builtin::PROTECTED_IN_HOME {
        let path = canonicalize_below(home, name).unwrap_or_else(|_| home.join(name));
        if let Some(root) = writable.paths.iter().filter(|root| is_within(&path, root)).max_by_key(|root| root.components().count()) {
            protected.add(highest_missing_ancestor(&path, root));
        }
    }
    for name in builtin::HOME_EXEC_CONFIG {
        if let Some(real) = existing_below(home, name) {
            protected.add(real);
        }
    }
    // Absolute protected entries from the policy file apply as written.
    for value in &fs.protected {
        let text = value.get_ref();
        if text.starts_with('/') || text.starts_with('~') || text.starts_with("{workspace}") {
            let invalid = |reason| PolicyError::InvalidValue {
                what: "protected path",
                value: text.clone(),
                origin: origin.of(value),
                reason,
            };
            reject_pattern(text).map_err(invalid)?;
            let expanded = expand(text, home, workspace).map_err(invalid)?;
            let path = canonicalize_lenient(&expanded).map_err(invalid)?;
            protected.add(covering_path(&path, &writable.paths));
        } else {
            validate_relative_name(text).map_err(|reason| PolicyError::InvalidValue {
                what: "protected name",
                value: text.clone(),
                origin: origin.of(value),
                reason,
            })?;
        }
    }

    // A hidden path that does not exist yet is kept from being created at its highest missing
    // ancestor inside a writable root (`secrets` for `secrets/token`).
    for path in &hidden.paths {
        covered_hidden.add(covering_path(path, &writable.paths));
    }
    Ok(Filesystem {
        read_only: read_only.paths,
        copy_on_write: copy_on_write.paths,
        writable: writable.paths,
        hidden: covered_hidden.paths,
        protected: protected.paths,
        revert_if_created: revert.paths,
        tmp_writable: profile == Profile::WorkspaceWrite,
        git_entries: git_entries.paths,
    })
}

/// Refuses glob characters. Paths are matched literally, so `**/.env` would protect a
/// directory named `**` and nothing the user meant. Failing loudly beats a rule that silently
/// covers nothing.
fn reject_pattern(text: &str) -> Result<(), String> {
    if text.contains(['*', '?', '[']) {
        return Err("patterns are not supported: entries are literal paths, and protected names are anchored at each writable root and each git repository in it; list every path instead".into());
    }
    Ok(())
}

fn validate_relative_name(text: &str) -> Result<(), String> {
    reject_pattern(text)?;
    let path = Path::new(text);
    if text.is_empty() || path.is_absolute() {
        return Err("expected a name relative to each writable root".into());
    }
    if path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err("'.' and '..' are not allowed in protected names".into());
    }
    if text.contains(['\0', '\n']) {
        return Err("control characters are not allowed".into());
    }
    Ok(())
}

/// Adds the protected names of one writable root: the built-in list, the policy's relative
/// names, the configuration, hooks and `info` of every git directory found in the root (nested
/// repositories and submodules included), `.git` pointer files, and the directories
/// `core.hooksPath` names. Also records the names that cannot be covered (see
/// [`Filesystem::revert_if_created`]). A `.git` entry is recognised in any ASCII case when
/// `ignore_case` ([`git::GIT_NAME_IGNORES_CASE`]), as the scrub after the run recognises it, so
/// a `.GIT` that existed before the run is recorded and never scrubbed as new.
#[allow(clippy::too_many_arguments)]
fn protect_in_root(
    root: &Path,
    extra: &[Spanned<String>],
    protected: &mut PathSet,
    revert: &mut PathSet,
    git_entries: &mut PathSet,
    home: &Path,
    ignore_case: bool,
) {
    let add = |protected: &mut PathSet, path: PathBuf| {
        if let Ok(path) = canonicalize_lenient(&path) {
            // A protected name that resolves outside the root (a symlink planted there) is
            // protected where it really is, and only if that place is inside this root.
            // NOTE: the symlink itself stays in a writable directory, so the command can
            // replace it with a real directory that host tools then use.
            if is_within(&path, root) && path != root {
                protected.add(highest_missing_ancestor(&path, root));
            }
        }
    };
    for name in builtin::PROTECTED_IN_WRITABLE {
        add(protected, root.join(name));
    }
    for value in extra {
        let text = value.get_ref();
        if validate_relative_name(text).is_ok() {
            add(protected, root.join(text));
        }
    }
    let (git_dirs, pointer_files) = git::repositories(root, ignore_case);
    for git_dir in &git_dirs {
        protect_git_dir(git_dir, root, protected, revert);
        if git_dir.file_name().is_some_and(|name| git::is_git_name(name, ignore_case)) {
            git_entries.add(git_dir.clone());
        }
    }
    for pointer in pointer_files {
        git_entries.add(pointer.clone());
        protected.add(pointer);
    }
    let mut hooks = git::hooks_paths(&root.join(".git/config"));
    hooks.extend(git::hooks_paths(&home.join(".gitconfig")));
    hooks.extend(git::hooks_paths(&home.join(".config/git/config")));
    for hook_dir in hooks {
        let path = if let Some(rest) = hook_dir.strip_prefix("~/") { home.join(rest) } else { root.join(hook_dir) };
        add(protected, path);
    }
}

/// Adds the entries of one git directory that git executes or reads as configuration. Hooks,
/// config and info are protected. `commondir`, `config.worktree` and `gitdir` are protected
/// when they exist, and removed after the run when the command creates them: git reads
/// `commondir` to find the configuration and hooks, and it fails on anything but a readable
/// file at these three names, so a missing one cannot be covered by a placeholder.
fn protect_git_dir(git_dir: &Path, root: &Path, protected: &mut PathSet, revert: &mut PathSet) {
    for name in ["hooks", "config", "info"] {
        protected.add(highest_missing_ancestor(&git_dir.join(name), root));
    }
    for name in ["commondir", "config.worktree", "gitdir"] {
        let path = git_dir.join(name);
        if listing::exists(&path) {
            protected.add(path);
        } else {
            revert.add(path);
        }
    }
}

/// Returns the highest missing ancestor of a missing `path` below `root`, or `path` itself.
/// Protecting that ancestor keeps the whole chain from being created (`.husky` for a missing
/// `.husky/_`). Paths inside `.git` are the exception: a missing `.git` must stay creatable so
/// `git init` works. A repository created in a writable root is neutralised after the run
/// instead; one created deeper in a subdirectory is not.
fn highest_missing_ancestor(path: &Path, root: &Path) -> PathBuf {
    highest_missing_ancestor_in(path, root, git::GIT_NAME_IGNORES_CASE)
}

/// Returns what [`highest_missing_ancestor`] does, recognising `.git` in any ASCII case when
/// `ignore_case`.
fn highest_missing_ancestor_in(path: &Path, root: &Path, ignore_case: bool) -> PathBuf {
    let mut highest = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        if ancestor == root || !is_within(ancestor, root) || listing::exists(ancestor) {
            break;
        }
        if ancestor.file_name().is_some_and(|name| git::is_git_name(name, ignore_case)) {
            return path.to_path_buf();
        }
        highest = ancestor.to_path_buf();
    }
    highest
}

/// Returns the path to cover so that `path` cannot be created: its highest missing ancestor
/// inside the innermost writable root containing it, or `path` itself.
fn covering_path(path: &Path, writable_roots: &[PathBuf]) -> PathBuf {
    match writable_roots.iter().filter(|root| is_within(path, root)).max_by_key(|root| root.components().count()) {
        Some(root) if path != root => highest_missing_ancestor(path, root),
        _ => path.to_path_buf(),
    }
}

/// Rejects a user-given path that passes through a symlink inside a writable root: the command
/// can plant such a link in one run to aim a later run's mount anywhere.
fn reject_planted_symlinks(entries: &[Entry], writable_roots: &[PathBuf]) -> Result<(), PolicyError> {
    for entry in entries {
        let mut current = PathBuf::from("/");
        for component in entry.lexical.components().skip(1) {
            current.push(component);
            let is_link = listing::is_symlink(&current);
            if is_link && writable_roots.iter().any(|root| is_within(&current, root) && &current != root) {
                return Err(PolicyError::InvalidValue {
                    what: "path",
                    value: entry.lexical.display().to_string(),
                    origin: entry.origin.clone(),
                    reason: format!(
                        "{} is a symlink inside the writable root, which a sandboxed command may have planted; give the real path instead",
                        current.display()
                    ),
                });
            }
            if is_link {
                match canonicalize(&current) {
                    Ok(real) => current = real,
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

impl Policy {
    /// Renders the effective policy as a TOML policy file that palisade accepts again.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Rendered<'a> {
            profile: &'a str,
            allow_degraded: bool,
            allow_ptrace: bool,
            filesystem: RenderedFilesystem<'a>,
            network: RenderedNetwork<'a>,
            limits: &'a Limits,
            env: RenderedEnv,
        }
        #[derive(Serialize)]
        struct RenderedFilesystem<'a> {
            writable: &'a [PathBuf],
            readable: &'a [PathBuf],
            copy_on_write: &'a [PathBuf],
            deny_read: &'a [PathBuf],
            protected: &'a [PathBuf],
        }
        #[derive(Serialize)]
        struct RenderedNetwork<'a> {
            mode: &'a str,
            allow: &'a [String],
            deny: &'a [String],
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            resolve_allowed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            listen: Option<&'a [u16]>,
            #[serde(skip_serializing_if = "<[u16]>::is_empty")]
            expose: &'a [u16],
        }
        #[derive(Serialize)]
        struct RenderedEnv {
            pass: Vec<String>,
        }
        let (allow, deny) = match &self.network {
            NetworkMode::Allowlist { allow, deny, .. } => (allow.as_slice(), deny.as_slice()),
            _ => (&[][..], &[][..]),
        };
        let rendered = Rendered {
            profile: self.profile.name(),
            allow_degraded: self.allow_degraded,
            allow_ptrace: self.allow_ptrace,
            filesystem: RenderedFilesystem {
                writable: &self.filesystem.writable,
                readable: &self.filesystem.read_only,
                copy_on_write: &self.filesystem.copy_on_write,
                deny_read: &self.filesystem.hidden,
                protected: &self.filesystem.protected,
            },
            network: RenderedNetwork {
                mode: self.network.name(),
                allow,
                deny,
                resolve_allowed: matches!(self.network, NetworkMode::Allowlist { resolve_allowed: true, .. }),
                listen: self.ports.listen.as_deref(),
                expose: &self.ports.expose,
            },
            limits: &self.limits,
            env: RenderedEnv { pass: self.env.iter().map(|var| var.name.to_string_lossy().into_owned()).collect() },
        };
        let body = toml::to_string_pretty(&rendered).unwrap_or_else(|error| format!("# failed to render policy: {error}\n"));
        format!(
            "# Effective palisade policy: profile {}, workspace {}\n# [env] lists the names passed; values are not printed.\n# Dropped because they look like credentials: {}\n{body}",
            self.profile,
            self.workspace.display(),
            if self.dropped_env.is_empty() { "none".to_owned() } else { self.dropped_env.join(", ") }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A temporary home and workspace, removed on drop.
    struct World {
        root: PathBuf,
    }

    impl World {
        fn new(name: &str) -> World {
            let root = std::env::temp_dir().join(format!("palisade-resolve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("home/.cargo/bin")).unwrap();
            std::fs::create_dir_all(root.join("home/.ssh")).unwrap();
            std::fs::create_dir_all(root.join("ws/.git/hooks")).unwrap();
            std::fs::write(root.join("ws/.git/config"), "[core]\n\thooksPath = .husky/_\n").unwrap();
            let root = std::fs::canonicalize(&root).unwrap();
            World { root }
        }

        fn context(&self) -> Context {
            Context {
                cwd: self.root.join("ws"),
                home: Some(self.root.join("home")),
                env: vec![
                    ("PATH".into(), "/usr/bin:/bin".into()),
                    ("GITHUB_TOKEN".into(), "ghp_secret".into()),
                    ("AWS_REGION".into(), "eu-west-1".into()),
                    ("LANG".into(), "C.UTF-8".into()),
                    ("TMPDIR".into(), "/run/user/1000".into()),
                ],
                memory_total: Some(8 << 30),
            }
        }

        fn resolve(&self, file: &str, overrides: Overrides) -> Result<Policy, PolicyError> {
            let raw = RawPolicy::from_str_at(file, Path::new("test.toml")).unwrap();
            resolve(&raw, &overrides, &self.context())
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn env_value<'a>(policy: &'a Policy, name: &str) -> Option<&'a OsString> {
        policy.env.iter().find(|var| var.name == name).map(|var| &var.value)
    }

    #[test]
    fn default_profile_writes_only_the_workspace() {
        let world = World::new("default");
        let policy = world.resolve("", Overrides::default()).unwrap();
        assert_eq!(policy.profile, Profile::WorkspaceWrite);
        assert_eq!(policy.filesystem.writable, vec![world.root.join("ws")]);
        assert_eq!(policy.network, NetworkMode::None);
        assert!(policy.filesystem.tmp_writable);
    }

    #[test]
    fn credential_stores_are_hidden() {
        let world = World::new("hidden");
        let policy = world.resolve("", Overrides::default()).unwrap();
        for name in [".ssh", ".aws", ".cargo/credentials.toml", ".npmrc", ".config/gh"] {
            assert!(policy.filesystem.hidden.contains(&world.root.join("home").join(name)), "{name} not hidden");
        }
    }

    #[test]
    fn git_metadata_and_hooks_path_are_protected() {
        let world = World::new("protected");
        let policy = world.resolve("", Overrides::default()).unwrap();
        let ws = world.root.join("ws");
        // `.husky/_` is missing, so its highest missing ancestor is protected instead.
        for path in [ws.join(".git/hooks"), ws.join(".git/config"), ws.join(".husky"), ws.join(".claude")] {
            assert!(policy.filesystem.protected.contains(&path), "{} not protected", path.display());
        }
        assert!(policy.filesystem.protected.contains(&world.root.join("home/.cargo/bin")));
        assert!(policy.filesystem.revert_if_created.contains(&ws.join(".git/commondir")));
    }

    /// macOS opens `.GIT` for `.git`, and the scrub after the run there treats it as a
    /// repository. The comparison is simulated on Linux with `ignore_case`.
    #[test]
    fn case_variant_git_dir_recorded_before_run() {
        let world = World::new("case-variant");
        let root = world.root.join("case");
        std::fs::create_dir_all(root.join(".GIT/hooks")).unwrap();
        std::fs::create_dir_all(root.join("nested/.Git/hooks")).unwrap();
        let (mut protected, mut revert, mut git_entries) = (PathSet::default(), PathSet::default(), PathSet::default());
        protect_in_root(&root, &[], &mut protected, &mut revert, &mut git_entries, &world.root.join("home"), true);
        for entry in [root.join(".GIT"), root.join("nested/.Git")] {
            assert!(git_entries.paths.contains(&entry), "{} not recorded: {:?}", entry.display(), git_entries.paths);
            assert!(protected.paths.contains(&entry.join("hooks")), "{} hooks not protected", entry.display());
        }
    }

    #[test]
    fn case_variant_git_dir_ignored_case_sensitively() {
        let world = World::new("case-sensitive");
        let root = world.root.join("case");
        std::fs::create_dir_all(root.join(".GIT/hooks")).unwrap();
        let (mut protected, mut revert, mut git_entries) = (PathSet::default(), PathSet::default(), PathSet::default());
        protect_in_root(&root, &[], &mut protected, &mut revert, &mut git_entries, &world.root.join("home"), false);
        assert!(git_entries.paths.is_empty(), "{:?}", git_entries.paths);
    }

    #[test]
    fn missing_case_variant_git_dir_creatable() {
        let world = World::new("case-missing");
        let root = world.root.join("ws");
        let hooks = root.join("sub/.GIT/hooks");
        assert_eq!(highest_missing_ancestor_in(&hooks, &root, true), hooks);
        assert_eq!(highest_missing_ancestor_in(&hooks, &root, false), root.join("sub"));
    }

    #[test]
    #[cfg(unix)]
    fn symlink_planted_in_workspace_is_rejected() {
        let world = World::new("planted");
        std::os::unix::fs::symlink(&world.root, world.root.join("ws/build")).unwrap();
        let overrides = Overrides { allow_write: vec![world.root.join("ws/build")], ..Default::default() };
        let error = world.resolve("", overrides).unwrap_err().to_string();
        assert!(error.contains("symlink inside the writable root"), "{error}");
    }

    #[test]
    fn secret_variables_are_dropped_unless_passed() {
        let world = World::new("env");
        let policy = world.resolve("", Overrides::default()).unwrap();
        assert_eq!(env_value(&policy, "GITHUB_TOKEN"), None);
        assert_eq!(env_value(&policy, "AWS_REGION"), None);
        assert_eq!(env_value(&policy, "LANG").map(|v| v.to_str().unwrap()), Some("C.UTF-8"));
        assert_eq!(env_value(&policy, "TMPDIR").map(|v| v.to_str().unwrap()), Some("/tmp"));
        assert!(policy.dropped_env.contains(&"GITHUB_TOKEN".to_owned()));

        let passed = world
            .resolve("", Overrides { env: vec!["GITHUB_TOKEN".into(), "FOO=bar".into()], ..Default::default() })
            .unwrap();
        assert_eq!(env_value(&passed, "GITHUB_TOKEN").map(|v| v.to_str().unwrap()), Some("ghp_secret"));
        assert_eq!(env_value(&passed, "FOO").map(|v| v.to_str().unwrap()), Some("bar"));
    }

    #[test]
    fn missing_writable_path_is_an_error() {
        let world = World::new("missing");
        let error = world
            .resolve("", Overrides { allow_write: vec!["does-not-exist".into()], ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(error.contains("does-not-exist"), "{error}");
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn relative_path_in_file_names_the_line() {
        let world = World::new("relative");
        let error = world.resolve("[filesystem]\n\nreadable = [\"data\"]\n", Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("'data'"), "{error}");
        assert!(error.contains("test.toml line 3"), "{error}");
    }

    #[test]
    fn read_only_profile_rejects_writable_roots() {
        let world = World::new("readonly");
        let overrides = Overrides { profile: Some("read-only".into()), allow_write: vec![".".into()], ..Default::default() };
        assert!(matches!(world.resolve("", overrides), Err(PolicyError::Contradiction(_))));
        let policy = world.resolve("", Overrides { profile: Some("read-only".into()), ..Default::default() }).unwrap();
        assert!(policy.filesystem.writable.is_empty());
        assert!(!policy.filesystem.tmp_writable);
        assert!(policy.filesystem.read_only.contains(&world.root.join("ws")));
    }

    #[test]
    fn network_none_with_domains_is_a_contradiction() {
        let world = World::new("net");
        let overrides = Overrides { net: Some("none".into()), allow_domain: vec!["example.com".into()], ..Default::default() };
        assert!(matches!(world.resolve("", overrides), Err(PolicyError::Contradiction(_))));
        let implied = world.resolve("", Overrides { allow_domain: vec!["example.com".into()], ..Default::default() }).unwrap();
        assert!(matches!(implied.network, NetworkMode::Allowlist { .. }));
        let error = world.resolve("[network]\nmode = \"open\"\n", Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("'open'"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn network_entry_error_names_value_and_line() {
        let world = World::new("net-entry");
        let file = "[network]\nallow = [\n  \"github.com\",\n  \"https://crates.io\",\n]\n";
        let error = world.resolve(file, Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("invalid [network] allow entry 'https://crates.io'"), "{error}");
        assert!(error.contains("test.toml line 4"), "{error}");
        assert!(error.contains("scheme"), "{error}");

        let file = "[network]\nmode = \"allowlist\"\nallow = [\"github.com\"]\ndeny = [\"127.1\"]\n";
        let error = world.resolve(file, Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("invalid [network] deny entry '127.1'"), "{error}");
        assert!(error.contains("test.toml line 4"), "{error}");
        assert!(error.contains("127.0.0.1"), "{error}");
    }

    #[test]
    fn network_entry_checked_in_every_mode() {
        let world = World::new("net-entry-mode");
        let error = world.resolve("[network]\nmode = \"none\"\ndeny = [\"*.com\"]\n", Overrides::default());
        let error = error.unwrap_err().to_string();
        assert!(error.contains("'*.com'"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("too broad"), "{error}");
    }

    #[test]
    fn allow_domain_flag_error_names_the_flag() {
        let world = World::new("net-flag");
        let overrides = Overrides { allow_domain: vec!["example.com/path".into()], ..Default::default() };
        let error = world.resolve("", overrides).unwrap_err().to_string();
        assert!(error.contains("invalid --allow-domain pattern 'example.com/path' on the command line"), "{error}");
        assert!(error.contains("path"), "{error}");
    }

    #[test]
    fn network_entries_stay_as_written() {
        let world = World::new("net-written");
        let overrides = Overrides { allow_domain: vec!["*.Example.com:443".into()], ..Default::default() };
        let file = "[network]\nallow = [\"[::1]:8080\", \"10.0.0.0/8\"]\ndeny = [\"Secret.example.com.\"]\n";
        let policy = world.resolve(file, overrides).unwrap();
        let NetworkMode::Allowlist { allow, deny, .. } = &policy.network else {
            panic!("expected an allowlist, got {:?}", policy.network);
        };
        assert_eq!(allow, &["[::1]:8080", "10.0.0.0/8", "*.Example.com:443"]);
        assert_eq!(deny, &["Secret.example.com."]);
        let rules = crate::network::Rules::from_strings(allow, deny).unwrap();
        assert_eq!(rules.allow.len(), 3);
        assert_eq!(rules.deny.len(), 1);
    }

    #[test]
    fn unconfined_uses_host_network_only() {
        let world = World::new("unconfined");
        let policy = world.resolve("", Overrides { profile: Some("unconfined".into()), ..Default::default() }).unwrap();
        assert_eq!(policy.network, NetworkMode::Full);
        for overrides in [
            Overrides { profile: Some("unconfined".into()), net: Some("none".into()), ..Default::default() },
            Overrides { profile: Some("unconfined".into()), allow_domain: vec!["example.com".into()], ..Default::default() },
        ] {
            assert!(matches!(world.resolve("", overrides), Err(PolicyError::Contradiction(_))));
        }
    }

    #[test]
    fn unconfined_names_filesystem_rules_given() {
        let world = World::new("unconfined-rules");
        let flag = Overrides { profile: Some("unconfined".into()), allow_read: vec!["/usr".into()], ..Default::default() };
        let message = contradiction(world.resolve("", flag));
        assert!(message.contains("but --allow-read was given"), "{message}");

        let file = "[filesystem]\nreadable = [\"/usr\"]\n";
        let both = Overrides { profile: Some("unconfined".into()), deny_read: vec!["/etc".into()], ..Default::default() };
        let message = contradiction(world.resolve(file, both));
        assert!(message.contains("but [filesystem] readable, --deny-read were given"), "{message}");
    }

    fn contradiction(result: Result<Policy, PolicyError>) -> String {
        match result {
            Err(PolicyError::Contradiction(message)) => message,
            other => panic!("expected a contradiction, got {other:?}"),
        }
    }

    #[test]
    fn net_flag_replaces_the_file_network() {
        let world = World::new("net-flag-replaces");
        let file = "[network]\nmode = \"allowlist\"\nallow = [\"example.com\", \"127.0.0.1:5432\"]\ndeny = [\"bad.example.com\"]\nresolve_allowed = true\n";
        let none = world.resolve(file, Overrides { net: Some("none".into()), ..Default::default() }).unwrap();
        assert_eq!(none.network, NetworkMode::None);
        let full = world.resolve(file, Overrides { net: Some("full".into()), ..Default::default() }).unwrap();
        assert_eq!(full.network, NetworkMode::Full);
        let allowlist = world.resolve(file, Overrides { net: Some("allowlist".into()), ..Default::default() }).unwrap();
        assert!(matches!(allowlist.network, NetworkMode::Allowlist { resolve_allowed: true, .. }), "{:?}", allowlist.network);

        // The file's entries are still checked.
        let invalid = "[network]\nallow = [\"https://example.com\"]\n";
        let error = world.resolve(invalid, Overrides { net: Some("none".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(error.contains("invalid [network] allow entry 'https://example.com' in test.toml line 2"), "{error}");
    }

    #[test]
    fn net_flag_with_flag_entries_is_a_contradiction() {
        let world = World::new("net-flag-entries");
        let file = "[network]\nallow = [\"example.com\"]\n";
        for mode in ["none", "full"] {
            let overrides = Overrides { net: Some(mode.into()), allow_domain: vec!["example.org".into()], ..Default::default() };
            let message = contradiction(world.resolve(file, overrides));
            assert_eq!(
                message,
                format!("network mode '{mode}' on the command line conflicts with allowed domains (example.org); allowed domains need mode 'allowlist'")
            );
            let overrides = Overrides { net: Some(mode.into()), resolve_allowed: true, ..Default::default() };
            let message = contradiction(world.resolve(file, overrides));
            assert_eq!(
                message,
                format!(
                    "network mode '{mode}' on the command line has no allowlist, so --resolve-allowed has no allowed names \
                     to resolve. Drop resolve_allowed or use mode 'allowlist'"
                )
            );
        }
        // Within the file, a mode without an allowlist and allow entries still contradict.
        let message = contradiction(world.resolve("[network]\nmode = \"none\"\nallow = [\"example.com\"]\n", Overrides::default()));
        assert!(message.starts_with("network mode 'none' in test.toml line 2 conflicts with allowed domains (example.com)"), "{message}");
    }

    #[test]
    fn resolve_allowed_without_entries_is_a_contradiction() {
        let world = World::new("resolve-allowed-none");
        let message = contradiction(world.resolve("", Overrides { resolve_allowed: true, ..Default::default() }));
        assert_eq!(
            message,
            "--resolve-allowed needs allowed names, but without allow entries the network mode is 'none'. \
             Add entries with --allow-domain or [network] allow, or drop resolve_allowed"
        );
        let message = contradiction(world.resolve("[network]\nresolve_allowed = true\n", Overrides::default()));
        assert!(message.starts_with("resolve_allowed in test.toml line 2 needs allowed names"), "{message}");

        let file = "[network]\nmode = \"full\"\nresolve_allowed = true\n";
        let message = contradiction(world.resolve(file, Overrides::default()));
        assert!(message.starts_with("network mode 'full' in test.toml line 2 has no allowlist, so resolve_allowed in test.toml line 3"), "{message}");

        // Off in the file is no setting at all.
        let policy = world.resolve("[network]\nresolve_allowed = false\n", Overrides::default()).unwrap();
        assert_eq!(policy.network, NetworkMode::None);
    }

    #[test]
    fn resolve_allowed_when_unconfined_is_a_contradiction() {
        let world = World::new("resolve-allowed-unconfined");
        let unconfined = || Overrides { profile: Some("unconfined".into()), ..Default::default() };
        let message = contradiction(world.resolve("", Overrides { resolve_allowed: true, ..unconfined() }));
        assert_eq!(
            message,
            "the unconfined profile uses the host network, which has no allowlist, so --resolve-allowed has no allowed \
             names to resolve. Drop resolve_allowed or use another profile"
        );
        let message = contradiction(world.resolve("[network]\nresolve_allowed = true\n", unconfined()));
        assert!(message.contains("so resolve_allowed in test.toml line 2 has no allowed names"), "{message}");

        // --net full replaces the file's network setting, resolve_allowed included.
        let file = "[network]\nallow = [\"example.com\"]\nresolve_allowed = true\n";
        let policy = world.resolve(file, Overrides { net: Some("full".into()), ..unconfined() }).unwrap();
        assert_eq!(policy.network, NetworkMode::Full);
    }

    #[test]
    fn loopback_name_entry_names_value_and_line() {
        let world = World::new("net-localhost");
        let file = "[network]\nallow = [\n  \"example.com\",\n  \"localhost:5432\",\n]\n";
        let error = world.resolve(file, Overrides::default()).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid [network] allow entry 'localhost:5432' in test.toml line 4: localhost and the names under .localhost \
             resolve to loopback addresses, which a name entry never reaches, so use the address entries 127.0.0.1:5432 and [::1]:5432"
        );
        for pattern in ["*.localhost", "app.localhost.", "LOCALHOST"] {
            let overrides = Overrides { allow_domain: vec![pattern.into()], ..Default::default() };
            let error = world.resolve("", overrides).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid --allow-domain pattern '{pattern}' on the command line: localhost")), "{error}");
            assert!(error.ends_with("127.0.0.1:PORT and [::1]:PORT"), "{error}");
        }
        // A deny entry for the name is valid: it never allows anything.
        let file = "[network]\nallow = [\"example.com\"]\ndeny = [\"localhost\"]\n";
        assert!(world.resolve(file, Overrides::default()).is_ok());
    }

    #[test]
    fn deny_entry_too_broad_hint_fits_deny() {
        let world = World::new("net-deny-star");
        let error = world.resolve("[network]\nallow = [\"example.com\"]\ndeny = [\"*\"]\n", Overrides::default());
        let error = error.unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid [network] deny entry '*' in test.toml line 3: '*' alone would match every name, which is too broad, \
             so use network mode none (--net none) to reject every destination"
        );
    }

    #[test]
    fn exposed_forwarded_port_is_a_contradiction() {
        let world = World::new("expose-forwarded");
        let file = "[network]\nallow = [\"127.0.0.1:5432\"]\n";
        let overrides = Overrides { expose: vec!["5432".into()], ..Default::default() };
        let message = contradiction(world.resolve(file, overrides));
        assert_eq!(
            message,
            "port 5432 is both exposed on the command line and forwarded by the allow entry '127.0.0.1:5432' in test.toml \
             line 2, so palisade would pass each connection from the host into the sandbox and back out in a loop. \
             Remove the exposed port or the allow entry"
        );

        let file = "[network]\nexpose = [8080]\n";
        for entry in ["[::1]:8080", "127.0.0.2:8080"] {
            let overrides = Overrides { allow_domain: vec![entry.into()], ..Default::default() };
            let message = contradiction(world.resolve(file, overrides));
            assert!(
                message.starts_with(&format!(
                    "port 8080 is both exposed in test.toml line 2 and forwarded by the allow entry '{entry}' on the command line, \
                     so the port would lead both from the host into the sandbox and from the sandbox out to the host"
                )),
                "{message}"
            );
        }

        // Entries that palisade does not forward leave the exposed port alone.
        let not_forwarded = [
            "[network]\nallow = [\"127.0.0.1\", \"127.0.0.0/8:5432\", \"10.0.0.5:5432\", \"127.0.0.1:5433\"]\nexpose = [5432]\n",
            "[network]\nallow = [\"127.0.0.1:5432\"]\ndeny = [\"127.0.0.1:5432\"]\nexpose = [5432]\n",
        ];
        for file in not_forwarded {
            let policy = world.resolve(file, Overrides::default()).unwrap_or_else(|error| panic!("{file}: {error}"));
            assert_eq!(policy.ports.expose, [5432]);
        }
    }

    #[test]
    fn too_many_served_ports_is_an_error() {
        let world = World::new("served-ports");
        let loopback = |count: u16| -> Vec<String> { (0..count).map(|index| format!("127.0.0.1:{}", 10000 + index)).collect() };
        let within = Overrides { allow_domain: loopback(64), ..Default::default() };
        assert!(world.resolve("", within).is_ok());

        let over = Overrides { allow_domain: loopback(65), ..Default::default() };
        let error = world.resolve("", over).unwrap_err();
        assert!(matches!(error, PolicyError::TooManyServedPorts { forwarded: 65, name_ports: None, max: 64 }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the allowlist needs 65 ports served inside the sandbox (one for each loopback address entry with a port), \
             more than the maximum of 64, so list fewer of these entries"
        );

        // 5 forwarded ports and 30 names on 80 and 443: 65 with resolve_allowed, 5 without.
        let mut entries = loopback(5);
        entries.extend((0..30).map(|index| format!("host{index}.test")));
        let without = Overrides { allow_domain: entries.clone(), ..Default::default() };
        assert!(world.resolve("", without).is_ok());
        let with = Overrides { allow_domain: entries, resolve_allowed: true, ..Default::default() };
        let error = world.resolve("", with).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the allowlist needs 65 ports served inside the sandbox (5 for loopback address entries with a port, 60 for \
             the ports of exact names with resolve_allowed), more than the maximum of 64, so list fewer entries, give each \
             name one port (a name without a port takes 80 and 443), or drop resolve_allowed"
        );
    }

    #[test]
    fn visible_path_inside_hidden_one_is_a_contradiction() {
        let world = World::new("inside-hidden");
        let overrides = Overrides { allow_read: vec!["~/.ssh".into()], ..Default::default() };
        let error = world.resolve("", overrides).unwrap_err().to_string();
        assert!(error.contains(".ssh"), "{error}");
        assert!(error.contains("built-in credential store"), "{error}");
    }

    #[test]
    fn whole_system_writable_is_refused() {
        let world = World::new("root-writable");
        let overrides = Overrides { allow_write: vec!["/".into()], ..Default::default() };
        assert!(matches!(world.resolve("", overrides), Err(PolicyError::Contradiction(_))));
    }

    #[test]
    fn unknown_profile_is_an_error() {
        let world = World::new("profile");
        let error = world.resolve("profile = \"yolo\"\n", Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("'yolo'"), "{error}");
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let world = World::new("override");
        let policy = world
            .resolve("[limits]\ntimeout = \"10m\"\n", Overrides { timeout: Some("30s".into()), ..Default::default() })
            .unwrap();
        assert_eq!(policy.limits.timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn sandboxed_profiles_get_default_limits() {
        let world = World::new("defaults");
        let policy = world.resolve("", Overrides::default()).unwrap();
        assert_eq!(policy.limits, Limits::defaults(Some(8 << 30)));
        assert_eq!(policy.limits.memory, Some(4 << 30));
        assert_eq!(policy.limits.tmp_size, Some(2 << 30));
        assert_eq!(policy.limits.max_procs, Some(DEFAULT_MAX_PROCS));
        assert_eq!(policy.limits.timeout, None);
        let unconfined = world.resolve("profile = \"unconfined\"\n", Overrides::default()).unwrap();
        assert_eq!(unconfined.limits, Limits::default());
    }

    #[test]
    fn unlimited_lifts_a_default() {
        let world = World::new("unlimited");
        let policy = world
            .resolve("[limits]\nmax_procs = \"unlimited\"\n", Overrides { memory: Some("unlimited".into()), ..Default::default() })
            .unwrap();
        assert_eq!(policy.limits.max_procs, None);
        assert_eq!(policy.limits.memory, None);
        assert_eq!(policy.limits.max_file_size, Some(DEFAULT_MAX_FILE_SIZE));
    }

    #[test]
    fn limits_take_toml_numbers() {
        let world = World::new("numbers");
        let policy = world.resolve("[limits]\ntimeout = 30\nmemory = 536870912\nmax_procs = \"UNLIMITED\"\n", Overrides::default()).unwrap();
        assert_eq!(policy.limits.timeout, Some(Duration::from_secs(30)));
        assert_eq!(policy.limits.memory, Some(512 << 20));
        assert_eq!(policy.limits.max_procs, None);
    }

    #[test]
    fn bad_limits_name_the_value_and_line() {
        let world = World::new("badlimit");
        let error = world.resolve("[limits]\n\nmax_procs = \"lots\"\n", Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("'lots'"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let error = world.resolve("", Overrides { max_procs: Some("0".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(error.contains("greater than zero"), "{error}");
        let error = world.resolve("[limits]\ncpus = 0.0001\n", Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("CPU"), "{error}");
    }

    #[test]
    fn rendered_policy_parses_again() {
        let world = World::new("render");
        let policy = world
            .resolve("[limits]\ntimeout = \"90s\"\nmemory = \"unlimited\"\ncpus = 1.5\n", Overrides::default())
            .unwrap();
        assert_eq!(policy.limits.cpus_milli, Some(1500));
        let text = policy.to_toml();
        let reparsed = RawPolicy::from_str_at(&text, Path::new("rendered.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let again = resolve(&reparsed, &Overrides::default(), &world.context()).unwrap();
        assert_eq!(again.filesystem.writable, policy.filesystem.writable);
        assert_eq!(again.filesystem.hidden, policy.filesystem.hidden);
        assert_eq!(again.limits, policy.limits);
    }

    #[test]
    fn cwd_outside_workspace_falls_back_to_workspace() {
        let world = World::new("cwd");
        let mut context = world.context();
        context.cwd = world.root.clone();
        let raw = RawPolicy::default();
        let overrides = Overrides { workspace: Some(world.root.join("ws")), ..Default::default() };
        let policy = resolve(&raw, &overrides, &context).unwrap();
        assert_eq!(policy.cwd, world.root.join("ws"));
    }

    #[test]
    #[cfg(unix)]
    fn resolver_link_target_becomes_readable() {
        let dir = std::env::temp_dir().join(format!("palisade-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run/resolve")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("run/resolve/stub.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink("../run/resolve/stub.conf", dir.join("etc/resolv.conf")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();

        let mut filesystem = Filesystem { read_only: vec![dir.join("etc")], ..Filesystem::default() };
        add_resolver_configuration(&mut filesystem, &dir.join("etc/resolv.conf"));
        assert_eq!(filesystem.read_only, [dir.join("etc"), dir.join("run/resolve/stub.conf")]);

        // A target that is already visible is not added twice.
        add_resolver_configuration(&mut filesystem, &dir.join("etc/resolv.conf"));
        assert_eq!(filesystem.read_only.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
