//! The parts of a resolved policy that the macOS backend enforces, with every path in the
//! spelling Seatbelt matches.
//!
//! The policy's paths were canonicalised on the host already. They pass through
//! [`canonicalize`] again, together with the machine's own directories (the per-user
//! temporary directory under `/var/folders`, `PATH`). A test can then describe a Mac's layout
//! with a [`MemoryFileSystem`](crate::canonical::MemoryFileSystem), and every path in a
//! profile comes from one place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use palisade_policy::network::Rules;
use palisade_policy::{NetworkMode, Policy, Profile};

use crate::canonical::{canonicalize, data_volume_alias, starts_with_any_case, Entry, FileSystem, DATA_VOLUME};
use crate::escape;
use crate::marker::{RunId, RunMarker};

/// Facts about the machine and the run that the profile depends on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The caller's home directory (`/Users/NAME`).
    pub home: PathBuf,
    /// The caller's temporary directory: `$TMPDIR`, or `confstr(_CS_DARWIN_USER_TEMP_DIR)`,
    /// normally `/var/folders/XX/YYYY/T`. The run gets its own directory below it.
    pub temp_dir: PathBuf,
    /// `confstr(_CS_DARWIN_USER_CACHE_DIR)`, normally `/var/folders/XX/YYYY/C`; readable.
    pub cache_dir: PathBuf,
    /// The directories of the caller's `PATH`, in order; readable and executable.
    pub path_dirs: Vec<PathBuf>,
    /// The loopback port of palisade's proxy for this run, required with an allowlist.
    pub proxy_port: Option<u16>,
    /// The run's random id (see [`RunId`]).
    pub run_id: String,
}

/// The command's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No IP traffic at all, not even to loopback, which on macOS is the host's.
    None,
    /// Only palisade's proxy, at this port of the loopback interface.
    Proxy { port: u16 },
    /// The host's network, the local network included.
    Full,
}

/// A part of the policy this backend does not enforce as the Linux backend does, for the
/// report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub what: &'static str,
    pub consequence: &'static str,
}

/// The input of profile generation. Every path is canonical for Seatbelt, and each list is
/// sorted and free of duplicates, so the profile does not depend on the policy's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub profile: Profile,
    pub workspace: PathBuf,
    /// The command's working directory. The profile does not depend on it.
    pub cwd: PathBuf,
    /// Readable and executable: the policy's read-only paths and caches, the workspace, the
    /// cache directory, the `PATH` directories, and the run's temporary directory when it is
    /// not writable.
    pub read_only: Vec<PathBuf>,
    /// Writable roots, the run's temporary directory among them when the profile writes.
    pub writable: Vec<PathBuf>,
    /// Unreadable and unwritable, existing or not. When a readable root covers the data volume,
    /// the data-volume spelling of each path below a firmlink is listed too.
    pub hidden: Vec<PathBuf>,
    /// Read-only and impossible to create inside writable roots, existing or not, with
    /// data-volume spellings as for `hidden`.
    pub protected: Vec<PathBuf>,
    /// The run's own temporary directory, which `TMPDIR` names inside the sandbox. The
    /// supervisor creates it before the run and removes it afterwards.
    pub temp_dir: PathBuf,
    pub network: Network,
    /// Loopback ports the command may listen on and connect to.
    pub listen_ports: Vec<u16>,
    /// Loopback ports the allowlist names (`127.0.0.1:5432`), which the command connects to
    /// directly.
    pub loopback_ports: Vec<u16>,
    pub run_id: RunId,
    pub marker: RunMarker,
    pub gaps: Vec<Gap>,
}

/// The reason a policy cannot become a macOS request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("the unconfined profile has no Seatbelt profile: it runs the command as the caller")]
    Unconfined,
    #[error("{what} {path} cannot be used in a Seatbelt profile: {reason}")]
    Path { what: &'static str, path: String, reason: String },
    #[error("the writable root {path} would give the sandbox {reason}; choose a directory below it")]
    WritableTooBroad { path: String, reason: &'static str },
    #[error("the network allowlist needs the port of palisade's proxy, and none was given")]
    MissingProxyPort,
    #[error("invalid run id: {0}")]
    InvalidRunId(String),
    #[error("invalid network allowlist: {0}")]
    InvalidAllowlist(String),
}

/// Directories below the home directory that macOS runs programs from at the next login.
/// They stay read-only when a writable root contains them.
const PROTECTED_IN_HOME: &[&str] = &["Library/LaunchAgents"];

impl Request {
    /// Builds the request for `policy` on `machine`, canonicalising every path through `fs`.
    pub fn from_policy(policy: &Policy, machine: &Machine, fs: &dyn FileSystem) -> Result<Request, RequestError> {
        if policy.profile == Profile::Unconfined {
            return Err(RequestError::Unconfined);
        }
        let run_id = RunId::parse(&machine.run_id).map_err(RequestError::InvalidRunId)?;
        let paths = Paths { fs };
        let filesystem = &policy.filesystem;

        let home = paths.canonical("the home directory", &machine.home)?;
        let workspace = paths.canonical("the workspace", &policy.workspace)?;
        let cwd = paths.canonical("the working directory", &policy.cwd)?;
        let temp_dir = paths.canonical("the temporary directory", &machine.temp_dir)?.join(format!("palisade-{run_id}"));
        paths.check_text("the run's temporary directory", &temp_dir)?;

        let mut writable = paths.all("a writable root", &filesystem.writable)?;
        for root in &writable {
            check_writable(root, &home)?;
        }
        if filesystem.tmp_writable {
            writable.insert(temp_dir.clone());
        }

        let mut hidden = paths.all_denied("a hidden path", &filesystem.hidden)?;
        let mut read_only = paths.all("a readable path", &filesystem.read_only)?;
        read_only.extend(paths.all("a cache", &filesystem.copy_on_write)?);
        read_only.insert(workspace.clone());
        read_only.insert(paths.canonical("the cache directory", &machine.cache_dir)?);
        if !filesystem.tmp_writable {
            read_only.insert(temp_dir.clone());
        }
        for dir in &machine.path_dirs {
            if let Some(dir) = paths.path_directory(dir, &home, &hidden)? {
                read_only.insert(dir);
            }
        }

        let mut protected = paths.all_denied("a protected path", &filesystem.protected)?;
        // Seatbelt refuses to create a name without a placeholder, so the files the Linux
        // backend can only remove after the run (git's `commondir`) are protected here.
        protected.extend(paths.all_denied("a protected path", &filesystem.revert_if_created)?);
        for name in PROTECTED_IN_HOME {
            let path = home.join(name);
            if writable.iter().any(|root| path.starts_with(root)) {
                protected.insert(path);
            }
        }
        // Every path below a firmlink has a second spelling below the data volume, which only
        // a grant of `/`, `/System` or the data volume itself reaches.
        let data_volume = Path::new(DATA_VOLUME);
        if read_only.iter().chain(&writable).any(|root| data_volume.starts_with(root)) {
            add_aliases(fs, &mut hidden);
            add_aliases(fs, &mut protected);
        }

        let mut loopback_ports = BTreeSet::new();
        let network = match &policy.network {
            NetworkMode::None => Network::None,
            NetworkMode::Allowlist { allow, deny, .. } => {
                let rules = Rules::from_strings(allow, deny).map_err(|error| RequestError::InvalidAllowlist(error.to_string()))?;
                loopback_ports.extend(rules.forwarded_ports().iter().map(|socket| socket.port()));
                Network::Proxy { port: machine.proxy_port.ok_or(RequestError::MissingProxyPort)? }
            }
            NetworkMode::Full => Network::Full,
        };
        let mut listen_ports: BTreeSet<u16> = policy.ports.listen.iter().flatten().copied().filter(|port| *port != 0).collect();
        listen_ports.extend(policy.ports.expose.iter().copied());

        let gaps = gaps(policy, &network);
        let marker = RunMarker::for_run(&run_id);
        Ok(Request {
            profile: policy.profile,
            workspace,
            cwd,
            read_only: read_only.into_iter().collect(),
            writable: writable.into_iter().collect(),
            hidden: hidden.into_iter().collect(),
            protected: protected.into_iter().collect(),
            temp_dir,
            network,
            listen_ports: listen_ports.into_iter().collect(),
            loopback_ports: loopback_ports.into_iter().collect(),
            run_id,
            marker,
            gaps,
        })
    }
}

/// Canonicalisation with the error that names the path's role.
struct Paths<'a> {
    fs: &'a dyn FileSystem,
}

impl Paths<'_> {
    fn canonical(&self, what: &'static str, path: &Path) -> Result<PathBuf, RequestError> {
        let canonical = canonicalize(self.fs, path).map_err(|error| RequestError::Path {
            what,
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        self.check_text(what, &canonical)?;
        Ok(canonical)
    }

    /// Checks that the profile can carry `path`: UTF-8, no control characters, not too long.
    /// A regex of the path is longer than the path, so the check is made on that.
    fn check_text(&self, what: &'static str, path: &Path) -> Result<(), RequestError> {
        let invalid = |error: escape::EscapeError| RequestError::Path { what, path: path.display().to_string(), reason: error.to_string() };
        let text = escape::path_text(path).map_err(invalid)?;
        escape::check(text).map_err(invalid)?;
        escape::check(&format!("^{}/", escape::regex_matching(text))).map_err(invalid)
    }

    fn all(&self, what: &'static str, paths: &[PathBuf]) -> Result<BTreeSet<PathBuf>, RequestError> {
        paths.iter().map(|path| self.canonical(what, path)).collect()
    }

    /// Canonicalises hidden or protected paths, which the profile writes as regexes of every
    /// ASCII case spelling. Such a regex takes four bytes for each ASCII letter, so the check
    /// is made on it.
    fn all_denied(&self, what: &'static str, paths: &[PathBuf]) -> Result<BTreeSet<PathBuf>, RequestError> {
        let canonical = self.all(what, paths)?;
        for path in &canonical {
            let regex = crate::profile::any_case_subpath_regex(&path.to_string_lossy());
            escape::check(&regex).map_err(|error| RequestError::Path { what, path: path.display().to_string(), reason: error.to_string() })?;
        }
        Ok(canonical)
    }

    /// Returns a `PATH` directory to make readable, or `None` for one that is missing,
    /// relative, inside a hidden path, or would expose the whole home directory (`.` or `~`
    /// in `PATH`).
    fn path_directory(&self, dir: &Path, home: &Path, hidden: &BTreeSet<PathBuf>) -> Result<Option<PathBuf>, RequestError> {
        if !dir.is_absolute() {
            return Ok(None);
        }
        let dir = self.canonical("a PATH directory", dir)?;
        let exists = matches!(self.fs.entry(&dir), Ok(Entry::Present));
        let too_broad = home.starts_with(&dir);
        let is_hidden = hidden.iter().any(|hidden| starts_with_any_case(&dir, hidden));
        Ok((exists && !too_broad && !is_hidden).then_some(dir))
    }
}

/// Rejects a writable root that is `/`, the home directory or one of its ancestors: macOS
/// starts programs from `~/Library/LaunchAgents` at login and keeps the keychains in
/// `~/Library/Keychains`, and a grant of the whole home directory reaches both.
fn check_writable(root: &Path, home: &Path) -> Result<(), RequestError> {
    let reason = if root == Path::new("/") {
        "the whole system"
    } else if home.starts_with(root) {
        "your whole home directory"
    } else {
        return Ok(());
    };
    Err(RequestError::WritableTooBroad { path: root.display().to_string(), reason })
}

/// Adds the data-volume spelling of each path below a firmlink, because a deny must hold
/// whichever spelling a program opens.
fn add_aliases(fs: &dyn FileSystem, paths: &mut BTreeSet<PathBuf>) {
    let aliases: Vec<PathBuf> = paths.iter().filter_map(|path| data_volume_alias(fs.firmlinks(), path)).collect();
    paths.extend(aliases);
}

fn gaps(policy: &Policy, network: &Network) -> Vec<Gap> {
    let mut gaps = Vec::new();
    if !policy.filesystem.copy_on_write.is_empty() {
        gaps.push(Gap {
            what: "copy-on-write caches",
            consequence: "macOS has no copy-on-write layer, so build caches are readable but not writable, and a build that must download into one fails",
        });
    }
    if policy.filesystem.tmp_writable {
        gaps.push(Gap {
            what: "private /tmp",
            consequence: "/tmp is shared with the host and stays closed; TMPDIR names the run's own directory instead",
        });
    }
    let listens_anywhere = policy.ports.listen.is_none() || policy.ports.listen.as_ref().is_some_and(|ports| ports.contains(&0));
    if *network != Network::Full && listens_anywhere {
        gaps.push(Gap {
            what: "listening sockets",
            consequence: "loopback is the host's on macOS, so the command listens only on the ports the policy lists",
        });
    }
    if let NetworkMode::Allowlist { allow, resolve_allowed, .. } = &policy.network {
        if *resolve_allowed {
            gaps.push(Gap {
                what: "resolve_allowed",
                consequence: "macOS gives the sandbox no resolver of its own, so allowed names do not resolve inside it; clients reach them through the proxy",
            });
        }
        if allow.iter().any(|entry| entry.starts_with("127.") || entry.starts_with("[::1]")) {
            gaps.push(Gap {
                what: "loopback allow entries",
                consequence: "Seatbelt names loopback only as localhost, so an entry such as 127.0.0.1:5432 opens its port on every loopback address",
            });
        }
    }
    if matches!(network, Network::Proxy { .. }) {
        gaps.push(Gap {
            what: "certificate checks through trustd",
            consequence: "trustd fetches certificates itself, past the proxy, so it is closed with an allowlist; Go programs that verify TLS through it fail",
        });
    }
    if policy.allow_ptrace {
        gaps.push(Gap { what: "allow_ptrace", consequence: "the profile grants no task ports, so debuggers cannot attach to the command's processes" });
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::MemoryFileSystem;
    use palisade_policy::{Filesystem, Limits, Ports};

    fn policy() -> Policy {
        Policy {
            profile: Profile::WorkspaceWrite,
            workspace: "/Users/dev/ws".into(),
            cwd: "/Users/dev/ws".into(),
            home: "/Users/dev".into(),
            filesystem: Filesystem {
                read_only: vec!["/usr".into(), "/Users/dev/.rustup".into()],
                copy_on_write: vec!["/Users/dev/.cargo".into()],
                writable: vec!["/Users/dev/ws".into()],
                hidden: vec!["/Users/dev/.ssh".into(), "/Users/dev/ws/.env".into()],
                protected: vec!["/Users/dev/ws/.git/hooks".into()],
                revert_if_created: vec!["/Users/dev/ws/.git/commondir".into()],
                tmp_writable: true,
                git_entries: vec![],
            },
            network: NetworkMode::None,
            ports: Ports::default(),
            limits: Limits::defaults(Some(16 << 30)),
            env: vec![],
            dropped_env: vec![],
            allow_degraded: false,
            allow_ptrace: false,
        }
    }

    fn machine() -> Machine {
        Machine {
            home: "/Users/dev".into(),
            temp_dir: "/var/folders/zz/abc/T".into(),
            cache_dir: "/var/folders/zz/abc/C".into(),
            path_dirs: vec!["/opt/homebrew/bin".into(), "/Users/dev/.local/bin".into(), ".".into(), "/Users/dev".into(), "/nowhere".into()],
            proxy_port: None,
            run_id: "0123456789abcdef".into(),
        }
    }

    fn fs() -> MemoryFileSystem {
        MemoryFileSystem::macos()
            .with_present("/Users/dev/ws/src")
            .with_present("/Users/dev/.local/bin")
            .with_present("/opt/homebrew/bin")
            .with_present("/private/var/folders/zz/abc/T")
            .with_present("/private/var/folders/zz/abc/C")
    }

    #[test]
    fn temp_and_cache_directories_are_canonical() {
        let request = Request::from_policy(&policy(), &machine(), &fs()).unwrap();
        let temp = PathBuf::from("/private/var/folders/zz/abc/T/palisade-0123456789abcdef");
        assert_eq!(request.temp_dir, temp);
        assert!(request.writable.contains(&temp));
        assert!(request.read_only.contains(&PathBuf::from("/private/var/folders/zz/abc/C")));
    }

    #[test]
    fn path_directories_are_filtered() {
        let request = Request::from_policy(&policy(), &machine(), &fs()).unwrap();
        assert!(request.read_only.contains(&PathBuf::from("/opt/homebrew/bin")));
        assert!(request.read_only.contains(&PathBuf::from("/Users/dev/.local/bin")));
        assert!(!request.read_only.contains(&PathBuf::from("/Users/dev")), "the home directory in PATH is not granted");
        assert!(!request.read_only.contains(&PathBuf::from("/nowhere")), "a missing PATH directory is not granted");
        let mut with_hidden = policy();
        with_hidden.filesystem.hidden.push("/Users/dev/.local".into());
        let request = Request::from_policy(&with_hidden, &machine(), &fs()).unwrap();
        assert!(!request.read_only.contains(&PathBuf::from("/Users/dev/.local/bin")));
    }

    #[test]
    fn revert_names_become_protected() {
        let request = Request::from_policy(&policy(), &machine(), &fs()).unwrap();
        assert!(request.protected.contains(&PathBuf::from("/Users/dev/ws/.git/commondir")));
    }

    #[test]
    fn data_volume_aliases_only_when_readable() {
        let request = Request::from_policy(&policy(), &machine(), &fs()).unwrap();
        assert!(!request.hidden.iter().any(|path| path.starts_with(DATA_VOLUME)));
        let mut policy = policy();
        policy.filesystem.read_only.push("/".into());
        let request = Request::from_policy(&policy, &machine(), &fs()).unwrap();
        assert!(request.hidden.contains(&PathBuf::from("/System/Volumes/Data/Users/dev/.ssh")));
        assert!(request.protected.contains(&PathBuf::from("/System/Volumes/Data/Users/dev/ws/.git/hooks")));
    }

    #[test]
    fn broad_writable_roots_are_rejected() {
        for root in ["/", "/Users", "/Users/dev", "/System/Volumes/Data/Users/dev"] {
            let mut policy = policy();
            policy.filesystem.writable = vec![root.into()];
            let error = Request::from_policy(&policy, &machine(), &fs()).unwrap_err();
            assert!(matches!(error, RequestError::WritableTooBroad { .. }), "{root}: {error}");
        }
    }

    #[test]
    fn allowlist_needs_a_proxy_port() {
        let mut policy = policy();
        policy.network = NetworkMode::Allowlist { allow: vec!["crates.io".into()], deny: vec![], resolve_allowed: false };
        assert_eq!(Request::from_policy(&policy, &machine(), &fs()), Err(RequestError::MissingProxyPort));
        let machine = Machine { proxy_port: Some(41234), ..machine() };
        assert_eq!(Request::from_policy(&policy, &machine, &fs()).unwrap().network, Network::Proxy { port: 41234 });
    }

    #[test]
    fn loopback_allow_entries_become_ports() {
        let mut policy = policy();
        let allow = vec!["crates.io".into(), "127.0.0.1:5432".into(), "[::1]:6379".into()];
        policy.network = NetworkMode::Allowlist { allow, deny: vec![], resolve_allowed: false };
        let machine = Machine { proxy_port: Some(41234), ..machine() };
        let request = Request::from_policy(&policy, &machine, &fs()).unwrap();
        assert_eq!(request.loopback_ports, vec![5432, 6379]);
        assert!(request.gaps.iter().any(|gap| gap.what == "loopback allow entries"));
    }

    #[test]
    fn unusable_paths_are_rejected_with_their_role() {
        let mut policy = policy();
        policy.filesystem.hidden.push("/Users/dev/ws/bad\nname".into());
        let error = Request::from_policy(&policy, &machine(), &fs()).unwrap_err();
        assert!(matches!(&error, RequestError::Path { what: "a hidden path", .. }), "{error}");
        assert!(error.to_string().contains("control character"), "{error}");
    }

    #[test]
    fn unconfined_is_rejected() {
        let policy = Policy { profile: Profile::Unconfined, ..policy() };
        assert_eq!(Request::from_policy(&policy, &machine(), &fs()), Err(RequestError::Unconfined));
    }

    #[test]
    fn listen_and_expose_ports_combine_without_port_zero() {
        let mut policy = policy();
        policy.ports = Ports { listen: Some(vec![0, 8000, 3000]), expose: vec![3000, 9000] };
        let request = Request::from_policy(&policy, &machine(), &fs()).unwrap();
        assert_eq!(request.listen_ports, vec![3000, 8000, 9000]);
        assert!(request.gaps.iter().any(|gap| gap.what == "listening sockets"));
    }
}
