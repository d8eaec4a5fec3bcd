//! The Linux backend of palisade: runs one command inside user, mount, PID, network, IPC, UTS
//! and cgroup namespaces, on a root assembled from the policy's visible paths only.
//!
//! The flow, from [`run`] to `execve`:
//! 1. [`plan::build`] turns the resolved policy into an ordered list of mount operations.
//! 2. The supervisor ([`supervisor::run`]) forks init into new namespaces and, for an
//!    unprivileged caller, writes the user mapping.
//! 3. Init ([`init`]) builds the root ([`mounts`]) and forks the command stage, which drops
//!    every privilege and calls `execve`. Init then forwards signals and reaps until the
//!    command exits.
//!
//! The crate is empty on other systems, so that the whole workspace builds there.
#![cfg(target_os = "linux")]

pub mod cgroup;
mod degraded;
mod error;
mod guard;
mod handoff;
mod init;
mod landlock;
pub mod limits;
mod mounts;
mod network;
mod output;
pub mod plan;
pub mod probe;
mod pty;
mod seccomp;
pub mod session;
mod supervisor;
mod sys;
mod unconfined;
mod userns;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

pub use error::Error;
pub use network::NetworkOutcome;
pub use palisade_proxy::Denial as NetworkDenial;
pub use palisade_proxy::DenialSink;
use palisade_policy::{NetworkMode, Policy, Profile};
use plan::{Kind, MountPlan};

/// The unprivileged uid and gid a command runs as when palisade itself runs as root. It owns
/// nothing on the host; idmapped mounts make the workspace appear owned by it.
pub const ROOT_SANDBOX_UID: u32 = 0x7ff0_0000;

/// The identity the command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// An unprivileged caller: a user namespace maps the caller's ids to themselves.
    User { uid: u32, gid: u32 },
    /// Palisade runs as root: the command runs as [`ROOT_SANDBOX_UID`] with no capabilities,
    /// so it gets no more than an unprivileged user would.
    Root { sandbox_uid: u32 },
}

impl Identity {
    /// Returns the identity for the current process. Root mode needs CAP_SYS_ADMIN as well as uid 0: a
    /// uid-0 process without it (inside a container's user namespace, say) must create a user
    /// namespace like any unprivileged caller.
    pub fn current() -> Identity {
        let uid = rustix::process::geteuid().as_raw();
        if uid == 0 && has_sys_admin() {
            Identity::Root { sandbox_uid: ROOT_SANDBOX_UID }
        } else {
            Identity::User { uid, gid: rustix::process::getegid().as_raw() }
        }
    }

    /// Returns the kernel uid and gid of the command.
    pub fn sandbox_ids(self) -> (u32, u32) {
        match self {
            Identity::User { uid, gid } => (uid, gid),
            Identity::Root { sandbox_uid } => (sandbox_uid, sandbox_uid),
        }
    }
}

/// Reports whether the effective capability set contains CAP_SYS_ADMIN, asked with `capget`.
/// (Reading `/proc/self/status` for it cost about 30 µs of every run: the kernel fills in the
/// memory statistics too.) A failed call counts as no capability.
fn has_sys_admin() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|sets| sets.effective.contains(rustix::thread::CapabilitySet::SYS_ADMIN))
}

/// The capabilities root mode needs besides CAP_SYS_ADMIN, each with what needs it. Found by
/// dropping one capability at a time from the bounding set (`setpriv --bounding-set=-NAME`):
/// without any of these, the run failed partway with a message that named none of them.
const ROOT_CAPABILITIES: &[(rustix::thread::CapabilitySet, &str)] = &[
    // The home tmpfs and the copy-on-write layers belong to the sandbox user.
    (rustix::thread::CapabilitySet::CHOWN, "CAP_CHOWN"),
    (rustix::thread::CapabilitySet::FOWNER, "CAP_FOWNER"),
    // Mount points are created in directories that the sandbox user owns.
    (rustix::thread::CapabilitySet::DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
    // The idmap namespace's uid and gid maps.
    (rustix::thread::CapabilitySet::SETUID, "CAP_SETUID"),
    (rustix::thread::CapabilitySet::SETGID, "CAP_SETGID"),
    // The command stage empties the capability bounding set.
    (rustix::thread::CapabilitySet::SETPCAP, "CAP_SETPCAP"),
];

/// The capability that brings the run's loopback interface up, needed unless the run keeps the
/// host's network.
const NETWORK_CAPABILITY: (rustix::thread::CapabilitySet, &str) = (rustix::thread::CapabilitySet::NET_ADMIN, "CAP_NET_ADMIN");

/// Returns the names of the capabilities in [`ROOT_CAPABILITIES`], and with `network` the
/// [`NETWORK_CAPABILITY`], that this process lacks in its effective set. A failed `capget`
/// counts as lacking them all.
fn missing_root_capabilities(network: bool) -> Vec<&'static str> {
    let effective = rustix::thread::capabilities(None).map(|sets| sets.effective).unwrap_or(rustix::thread::CapabilitySet::empty());
    let network = network.then_some(&NETWORK_CAPABILITY);
    ROOT_CAPABILITIES.iter().chain(network).filter(|(capability, _)| !effective.contains(*capability)).map(|(_, name)| *name).collect()
}

/// Reports whether this process is in the host's first user namespace, whose uid map is the
/// identity over every id. A root user there is the host's root.
fn in_initial_user_namespace() -> bool {
    // An unreadable map counts as the host's, because rejecting the run is the safe side.
    std::fs::read_to_string("/proc/self/uid_map").map_or(true, |map| {
        map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
    })
}

impl MountPlan {
    /// Reports whether any operation needs an idmapped mount.
    pub fn needs_idmap(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, plan::MountOp::Bind { idmap: true, .. } | plan::MountOp::Overlay { idmap: true, .. }))
    }
}

/// Options of one run that are not part of the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Give the command a pseudo-terminal of its own as stdin, stdout, stderr and controlling
    /// terminal, relayed to palisade's own descriptors (`palisade run --pty`).
    pub pty: bool,
    /// The calling process exits soon after the run, as `palisade run` does. Its memory is then
    /// freed by a child of its own after it has exited, which shortens that exit by about
    /// 0.1 ms (see `sys::defer_memory_teardown`). A process that runs more than one command
    /// leaves it false: each run would leave such a child alive until the process exits.
    pub exits_after_run: bool,
}

/// The way a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command exited with this code.
    Code(i32),
    /// The command was killed by this signal.
    Signal(i32),
    /// The wall-clock timeout expired and every process of the run was killed.
    TimedOut,
    /// Palisade killed every process of the run because it went over this limit.
    Killed(limits::Limit),
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub wall_time: Duration,
    /// Set when the command could not be executed: the exit code (126 or 127) and the reason.
    pub exec_error: Option<(i32, String)>,
    /// The layers that protected the run.
    pub layers: Layers,
    /// The resources the run used.
    pub usage: limits::Usage,
    /// Every limit the run reached, whether or not it ended the run.
    pub limits_reached: Vec<limits::LimitEvent>,
    /// The proxy's address and refusals, in allowlist mode.
    pub network: NetworkOutcome,
}

/// The protections in force for one run. A run either gets every layer the policy needs or,
/// with `allow_degraded`, the ones this machine has, with the others listed in `missing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    /// User (when unprivileged), mount, PID, network, IPC, UTS and cgroup namespaces, with the
    /// new root assembled from the policy.
    pub namespaces: bool,
    /// The Landlock ABI the rules were enforced with.
    pub landlock_abi: Option<i32>,
    /// Landlock also confines abstract UNIX sockets and signals to the sandbox (ABI 6).
    pub landlock_scoped: bool,
    /// Landlock's TCP rules are in force (ABI 4): they refuse every TCP bind and connect in
    /// degraded mode with the network off, and bind outside the policy's listen ports.
    pub landlock_tcp: bool,
    /// The seccomp filter was installed.
    pub seccomp: bool,
    /// The resource limits set with setrlimit, as `name=value`.
    pub rlimits: Vec<String>,
    /// The cgroup that held the run's memory, process and CPU limits; `None` when palisade's
    /// own accounting and the rlimits held them.
    pub cgroup: Option<String>,
    /// Each layer that was missing, with the reason; empty unless degraded mode was allowed.
    pub missing: Vec<String>,
}

impl Layers {
    /// Reports whether the run lacked a layer the full policy has.
    pub fn degraded(&self) -> bool {
        !self.missing.is_empty()
    }

    /// Returns one line naming the layers in force, such as `namespaces, Landlock ABI 7, seccomp`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.namespaces {
            parts.push("namespaces".to_owned());
        }
        if let Some(abi) = self.landlock_abi {
            parts.push(format!("Landlock ABI {abi}"));
        }
        if self.seccomp {
            parts.push("seccomp".to_owned());
        }
        if !self.rlimits.is_empty() {
            parts.push(format!("rlimits ({})", self.rlimits.join(", ")));
        }
        if parts.is_empty() {
            return "none".into();
        }
        parts.join(", ")
    }
}

/// Refuses settings this build cannot enforce, rather than running without them.
fn check_supported(policy: &Policy) -> Result<(), Error> {
    let unsupported = |feature: &str| Err(Error::Unsupported { feature: feature.to_owned() });
    let limits = &policy.limits;
    if policy.profile == Profile::Unconfined {
        // The unconfined profile has no defaults, so any of these was asked for.
        for (set, name) in [
            (limits.cpu_time.is_some(), "a CPU time limit"),
            (limits.memory.is_some(), "a memory limit"),
            (limits.max_procs.is_some(), "a process limit"),
            (limits.max_file_size.is_some(), "a file size limit"),
            (limits.max_open_files.is_some(), "an open file limit"),
            (limits.max_output.is_some(), "an output limit"),
            (limits.cpus_milli.is_some(), "a CPU bandwidth limit"),
        ] {
            if set {
                return unsupported(&format!("{name} in the unconfined profile, which runs the command outside any sandbox,"));
            }
        }
    }
    Ok(())
}

/// Builds the mount plan for `policy` against the real host.
pub fn plan_for(policy: &Policy, identity: Identity) -> MountPlan {
    // The plan inspects some paths more than once (a workspace's `.git` for each protected
    // entry in it), and each is looked up once.
    let seen: std::cell::RefCell<Vec<(std::path::PathBuf, Kind)>> = std::cell::RefCell::new(Vec::new());
    let inspect = |path: &Path| {
        if let Some((_, kind)) = seen.borrow().iter().find(|(known, _)| known == path) {
            return *kind;
        }
        let kind = match path.symlink_metadata() {
            // A placeholder left by a run that was killed counts as missing, so this run adopts
            // it and removes it afterwards.
            Ok(meta) if is_stale_placeholder(&meta) => Kind::Missing,
            Ok(meta) if meta.is_dir() => Kind::Dir,
            Ok(_) => Kind::File,
            Err(_) => Kind::Missing,
        };
        seen.borrow_mut().push((path.to_path_buf(), kind));
        kind
    };
    // readlink fails on anything but a symlink, so no lookup is needed first.
    let readlink = |path: &Path| std::fs::read_link(path).ok();
    plan::build(policy, matches!(identity, Identity::Root { .. }), &inspect, &readlink)
}

/// Reports whether `meta` describes a palisade placeholder: a FIFO with mode 000.
fn is_stale_placeholder(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_fifo() && meta.mode() & 0o7777 == 0
}

/// The role of a run's command stage once it is confined.
pub(crate) enum Workload<'a> {
    /// The program of this command line.
    Command(&'a [OsString]),
    /// The host of a session, serving the client at the other end of this socket (see
    /// [`session`]).
    Session(OwnedFd),
}

/// The work of one run, its options, and the receiver of its refusals as they happen.
pub(crate) struct Job<'a> {
    pub(crate) workload: Workload<'a>,
    pub(crate) options: RunOptions,
    pub(crate) on_denial: Option<DenialSink>,
}

/// Runs `argv` under `policy` and waits for it to finish. `on_start` is called once with the
/// layers that will protect the run, before the command starts, so a caller can tell the user
/// about a degraded run first.
///
/// `on_denial`, if given, is called with each network request the proxy refuses, as it
/// happens, from the supervisor's network thread.
pub fn run(
    policy: &Policy,
    argv: &[OsString],
    options: RunOptions,
    on_start: &mut dyn FnMut(&Layers),
    on_denial: Option<DenialSink>,
) -> Result<Outcome, Error> {
    assert!(!argv.is_empty(), "the command line is empty");
    check_supported(policy)?;
    if policy.profile == Profile::Unconfined {
        if options.pty {
            return Err(Error::PtyUnavailable {
                reason: "the unconfined profile runs the command directly, without a sandbox to create its terminal in".into(),
                fix: "drop --pty: the command already gets your terminal as it is".into(),
            });
        }
        on_start(&Layers::default());
        return unconfined::run(policy, argv);
    }
    launch(policy, Job { workload: Workload::Command(argv), options, on_denial }, on_start)
}

/// Starts a session under `policy` whose host serves the client at the other end of `socket`
/// (from [`session::socket_pair`]), and waits until the client closes it or the session ends
/// otherwise (a limit, a signal to palisade). The outcome describes the whole session.
pub fn run_session(policy: &Policy, socket: OwnedFd, on_start: &mut dyn FnMut(&Layers), on_denial: Option<DenialSink>) -> Result<Outcome, Error> {
    check_supported(policy)?;
    if policy.profile == Profile::Unconfined {
        // NOTE: a session runs its commands from a host inside the sandbox. The unconfined
        // profile has no sandbox to put one in, so its clients run each command on its own.
        return Err(Error::Unsupported { feature: "a session in the unconfined profile, which has no sandbox to keep commands in,".into() });
    }
    // Each command of a session requests its own terminal (see `session`).
    launch(policy, Job { workload: Workload::Session(socket), options: RunOptions::default(), on_denial }, on_start)
}

/// Reports whether `identity` is the host's root user without CAP_SYS_ADMIN, which root mode
/// needs (see [`Error::RootWithoutAdmin`]).
fn is_host_root_without_admin(identity: Identity) -> bool {
    matches!(identity, Identity::User { uid: 0, .. }) && in_initial_user_namespace()
}

/// Returns why palisade, run as the host's root user with `identity`, cannot build the
/// sandbox: no CAP_SYS_ADMIN, or another capability root mode needs missing. With `network`,
/// the run has a network namespace of its own, which needs CAP_NET_ADMIN too. `None` for an
/// unprivileged caller and for root with every capability needed.
pub(crate) fn root_capability_problem(identity: Identity, network: bool) -> Option<Error> {
    match identity {
        _ if is_host_root_without_admin(identity) => Some(Error::RootWithoutAdmin),
        Identity::Root { .. } => {
            let missing = missing_root_capabilities(network);
            (!missing.is_empty()).then(|| Error::RootCapabilitiesMissing { missing: missing.join(", ") })
        }
        Identity::User { .. } => None,
    }
}

fn launch(policy: &Policy, job: Job<'_>, on_start: &mut dyn FnMut(&Layers)) -> Result<Outcome, Error> {
    let identity = Identity::current();
    if is_host_root_without_admin(identity) {
        return Err(Error::RootWithoutAdmin);
    }
    let mut layers = Layers { namespaces: true, rlimits: vec!["core=0".into()], ..Layers::default() };
    match landlock::kernel_abi() {
        Some(abi) => layers.landlock_abi = Some(abi.min(landlock::NEWEST_ABI as i32)),
        None => {
            let (cause, fix) = landlock::missing_reason();
            if !policy.allow_degraded {
                return Err(Error::LayerMissing { layer: "Landlock", cause, fix });
            }
            layers.missing.push(format!("Landlock: {cause}"));
        }
    }
    match probe::seccomp() {
        Ok(()) => layers.seccomp = true,
        Err((cause, fix)) => {
            if !policy.allow_degraded {
                return Err(Error::LayerMissing { layer: "seccomp", cause, fix });
            }
            layers.missing.push(format!("seccomp: {cause}"));
        }
    }
    layers.landlock_scoped = layers.landlock_abi.is_some_and(|abi| abi >= 6);
    if policy.ports.listen.is_some() {
        if layers.landlock_abi.is_some_and(|abi| abi >= landlock::TCP_ABI) {
            layers.landlock_tcp = true;
        } else {
            let cause = match layers.landlock_abi {
                Some(abi) => format!("this kernel offers Landlock ABI {abi}, and limiting the ports the command listens on needs ABI 4 (Linux 6.7)"),
                None => "limiting the ports the command listens on needs Landlock ABI 4 (Linux 6.7), and this kernel has no Landlock".to_owned(),
            };
            if !policy.allow_degraded {
                let fix = "run on Linux 6.7 or later with Landlock enabled, or drop --allow-listen".to_owned();
                return Err(Error::LayerMissing { layer: "Landlock TCP rules", cause, fix });
            }
            layers.missing.push(format!("listen ports: {cause}"));
        }
    }

    // With degraded mode allowed, whether the namespaces can be created is asked first, so
    // the run's layers are settled before anything starts. Without it, the run itself fails
    // with the reason.
    if policy.allow_degraded {
        if let Err((cause, fix)) = probe::namespaces() {
            // The command's pseudo-terminal lives in the sandbox's private /dev/pts, which only
            // a run with namespaces has.
            if job.options.pty {
                return Err(Error::PtyUnavailable {
                    reason: format!("degraded mode has no private /dev/pts to create the command's terminal in, and this run would be degraded: {cause}"),
                    fix: format!("{fix}, or drop --pty"),
                });
            }
            layers.namespaces = false;
            layers.missing.insert(0, format!("namespaces: {cause}"));
            if let Err((cause, _)) = limits::accounting_available() {
                layers.missing.push(format!("memory and CPU time limits: {cause}"));
            }
            let Workload::Command(argv) = job.workload else {
                // NOTE: degraded mode forks each command straight from palisade and has no
                // session host yet, so a session there is refused rather than weakened.
                return Err(Error::UserNamespaces { cause, fix: format!("{fix}; sessions need the namespaces even with --allow-degraded") });
            };
            return degraded::run(policy, argv, layers, &fix, on_start);
        }
    }
    if let Identity::Root { .. } = identity {
        if let Some(error) = root_capability_problem(identity, !matches!(policy.network, NetworkMode::Full)) {
            return Err(error);
        }
    }
    // Taken before the plan looks for placeholders, and held until the run ends.
    let root_locks = supervisor::RootLocks::take(&policy.filesystem.writable);
    let mut plan = plan_for(policy, identity);
    if let Identity::Root { sandbox_uid } = identity {
        add_sandbox_account(&mut plan, sandbox_uid, &policy.home);
    }
    if let NetworkMode::Allowlist { allow, deny, resolve_allowed: true } = &policy.network {
        // The names on the allowlist resolve through the sandbox's own /etc/hosts.
        let rules = palisade_policy::network::Rules::from_strings(allow, deny).map_err(|error| Error::Sandbox(error.to_string()))?;
        let names = network::ForwardPlan::new(&rules, true).hosts;
        let original = std::fs::read("/etc/hosts").unwrap_or_default();
        plan.ops.push(plan::MountOp::File { path: "/etc/hosts".into(), contents: network::hosts_file(&original, &names) });
    }
    let cgroup = match run_cgroup(&policy.limits) {
        Ok(cgroup) => Some(cgroup),
        // Only a cgroup can hold a CPU bandwidth limit.
        Err(cause) if policy.limits.cpus_milli.is_some() => {
            let fix = "on a cgroup v2 host, run palisade as root or in a cgroup delegated to this user with the cpu, memory and pids controllers (such as under `systemd-run --user --scope -p Delegate=yes`); elsewhere drop --cpus".to_owned();
            if !policy.allow_degraded {
                return Err(Error::LayerMissing { layer: "a cgroup for the CPU bandwidth limit (--cpus)", cause, fix });
            }
            layers.missing.push(format!("CPU bandwidth limit: {cause}"));
            None
        }
        Err(reason) => {
            tracing::debug!("no cgroup for the run: {reason}");
            None
        }
    };
    layers.cgroup = cgroup.as_ref().map(|cgroup| cgroup.path().display().to_string());
    if cgroup.is_none() {
        // Without a cgroup, the memory and CPU time limits rest on the accounting. It finds the
        // run's processes through the `children` files, so without them it would find none
        // and enforce nothing.
        if let Err((cause, fix)) = limits::accounting_available() {
            if !policy.allow_degraded {
                return Err(Error::LayerMissing { layer: "palisade's accounting of the run's processes", cause, fix });
            }
            layers.missing.push(format!("memory and CPU time limits: {cause}"));
        }
    }
    on_start(&layers);
    supervisor::run(policy, &plan, identity, job, layers, cgroup, &root_locks)
}

/// Gives the sandbox's uid an account in the sandbox's `/etc/passwd` and `/etc/group`, so
/// programs that look their user up (ssh, whoami) find one. Palisade running as root runs the
/// command as [`ROOT_SANDBOX_UID`], which no host account has.
fn add_sandbox_account(plan: &mut MountPlan, sandbox_uid: u32, home: &Path) {
    let entries = [
        ("/etc/passwd", format!("palisade:x:{sandbox_uid}:{sandbox_uid}:palisade sandbox:{}:/bin/sh\n", home.display())),
        ("/etc/group", format!("palisade:x:{sandbox_uid}:\n")),
    ];
    for (path, entry) in entries {
        // Without the host's file there is nothing to add to, and a file in its place could
        // not be mounted on the read-only /etc.
        let Ok(mut contents) = std::fs::read(path) else { continue };
        if !contents.is_empty() && !contents.ends_with(b"\n") {
            contents.push(b'\n');
        }
        contents.extend_from_slice(entry.as_bytes());
        plan.ops.push(plan::MountOp::File { path: path.into(), contents });
    }
}

/// The controllers a run cgroup must have to hold the memory and process limits.
const CGROUP_CONTROLLERS: &[&str] = &["memory", "pids"];

/// Finds this process's cgroup v2 directory from `/proc/self`.
pub(crate) fn own_cgroup() -> Result<std::path::PathBuf, String> {
    // /proc files report a size of 0, so `fs::read_to_string` starts with 32-byte reads and
    // doubles: eight system calls for a typical mountinfo. One page takes one read and the
    // end-of-file, and the buffer still grows for a longer file.
    let read = |path: &str| {
        let mut text = String::with_capacity(4096);
        std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_to_string(&mut file, &mut text))
            .map(|_| text)
            .map_err(|error| format!("failed to read {path}: {error}"))
    };
    let membership = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    cgroup::locate(&membership, &mountinfo)
}

/// Creates the cgroup of one run under this process's cgroup, when that is delegated to it
/// and offers the memory and pids controllers. Otherwise the reason, and the limits rest on
/// rlimits and palisade's accounting.
fn run_cgroup(limits: &palisade_policy::Limits) -> Result<cgroup::RunCgroup, String> {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    /// The period of the CPU bandwidth limit: the kernel's default, 100 ms.
    const CPU_PERIOD_US: u64 = 100_000;
    let mut needed = CGROUP_CONTROLLERS.to_vec();
    if limits.cpus_milli.is_some() {
        needed.push("cpu");
    }
    if let Some(cause) = std::fs::read_to_string("/proc/cgroups").ok().and_then(|text| cgroup::unavailable_on_v2(&text, &needed)) {
        return Err(cause);
    }
    let dir = own_cgroup()?;
    cgroup::check(&dir, &needed).map_err(|(cause, _)| cause)?;
    // Only the root of the hierarchy lacks `cgroup.type`.
    let is_root = !dir.join("cgroup.type").exists();
    let parent = cgroup::prepare(&dir, &needed, std::process::id(), is_root)?;
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("palisade-{}-{run}", std::process::id());
    let cpu_max = limits.cpus_milli.map(|milli| (milli * CPU_PERIOD_US / 1000, CPU_PERIOD_US));
    let cgroup_limits = cgroup::Limits { memory_max: limits.memory, pids_max: limits.max_procs, cpu_max };
    cgroup::RunCgroup::create(&parent, &name, &cgroup_limits)
}

/// Marks every descriptor above stderr close-on-exec, so nothing the caller leaked to palisade
/// reaches the command. Call it first thing in `main`.
pub fn close_inherited_descriptors() -> Result<(), Error> {
    sys::cloexec_from(3).map_err(|e| Error::setup("mark close-on-exec", "inherited descriptors", e))
}


