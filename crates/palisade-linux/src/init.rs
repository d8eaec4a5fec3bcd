//! The sandbox's init (PID 1 of the new PID namespace) and the final stage that becomes the
//! command.
//!
//! Init builds the filesystem, forks the command, forwards signals to it, reaps every orphan,
//! and exits as soon as the command does. Its exit tears the whole PID namespace down, so no
//! process of the run outlives it, whatever it did to detach (`setsid`, double fork, `nohup`).
//!
//! Init is a child forked from the single-threaded supervisor, so allocating is safe there. The
//! command stage shares init's memory until it executes the command (see
//! [`sys::spawn_sharing_memory`]): it keeps every signal blocked until just before `execve`, so
//! no signal can end it in the middle of an allocation. Both report to the supervisor over a
//! pipe, one line per message (see [`Message`]).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use palisade_policy::Policy;

use crate::landlock::Ruleset;
use crate::mounts::{self, Owner};
use crate::plan::MountPlan;
use crate::pty;
use crate::sys;
use crate::{Identity, Workload};

/// Exit status of init when setup failed; the supervisor reads the reason from the pipe.
const SETUP_FAILED: i32 = 125;

/// A report from the sandbox to the supervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Setup failed; nothing ran.
    Error(String),
    /// The command could not be executed; the supervisor exits with `code` (126 or 127).
    Exec { code: i32, reason: String },
    /// The command exited with this status.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
    /// CPU time and largest resident set of the processes init reaped, sent before
    /// [`Message::Finished`].
    Usage { user_us: u64, system_us: u64, max_rss_kib: u64 },
    /// No process of the run is left: init reaped the command and has no other child. Init
    /// only tears its namespaces down after this.
    Finished,
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let one_line = |text: &str| text.replace('\n', " ");
        let mut line = match self {
            Message::Error(text) => format!("error {}", one_line(text)).into_bytes(),
            Message::Exec { code, reason } => format!("exec {code} {}", one_line(reason)).into_bytes(),
            Message::Exited(code) => format!("exited {code}").into_bytes(),
            Message::Signaled(signal) => format!("signaled {signal}").into_bytes(),
            Message::Usage { user_us, system_us, max_rss_kib } => format!("usage {user_us} {system_us} {max_rss_kib}").into_bytes(),
            Message::Finished => b"finished -".to_vec(),
        };
        line.push(b'\n');
        line
    }

    /// Parses every message in `bytes`, skipping lines that do not parse.
    pub fn decode_all(bytes: &[u8]) -> Vec<Message> {
        bytes.split(|&b| b == b'\n').filter_map(Message::decode).collect()
    }

    fn decode(line: &[u8]) -> Option<Message> {
        let space = line.iter().position(|&b| b == b' ')?;
        let (kind, rest) = (&line[..space], &line[space + 1..]);
        let text = || String::from_utf8_lossy(rest).into_owned();
        match kind {
            b"error" => Some(Message::Error(text())),
            b"exec" => {
                let text = text();
                let (code, reason) = text.split_once(' ')?;
                Some(Message::Exec { code: code.parse().ok()?, reason: reason.to_owned() })
            }
            b"exited" => Some(Message::Exited(text().parse().ok()?)),
            b"signaled" => Some(Message::Signaled(text().parse().ok()?)),
            b"usage" => {
                let text = text();
                let mut numbers = text.split(' ').map(str::parse::<u64>);
                let (user_us, system_us, max_rss_kib) = (numbers.next()?.ok()?, numbers.next()?.ok()?, numbers.next()?.ok()?);
                Some(Message::Usage { user_us, system_us, max_rss_kib })
            }
            b"finished" => Some(Message::Finished),
            _ => None,
        }
    }
}

/// Everything init needs, prepared by the supervisor before the fork.
pub struct InitContext<'a> {
    pub policy: &'a Policy,
    pub plan: &'a MountPlan,
    /// The role of the command stage: a program, or a session's host.
    pub workload: &'a Workload<'a>,
    pub identity: Identity,
    /// Read end of the start pipe: the supervisor writes one byte once the id maps are written,
    /// and keeps its end open until the run ends.
    pub go: Option<OwnedFd>,
    /// Write end of the report pipe.
    pub report: OwnedFd,
    /// The user namespace for idmapped mounts, when palisade runs as root.
    pub idmap_userns: Option<OwnedFd>,
    /// The Landlock rules and seccomp filter the command stage applies.
    pub confinement: &'a Confinement,
    /// Write ends of the pipes the supervisor reads the command's stdout and stderr from;
    /// `None` leaves that descriptor as palisade's own. One pipe may serve both.
    pub output: [Option<OwnedFd>; 2],
    /// In allowlist mode, init's end of the socket pair it hands the proxy's listening socket
    /// to the supervisor over.
    pub proxy_channel: Option<OwnedFd>,
    /// With exposed ports, init's end of the socket pair on which the supervisor requests new
    /// sockets of the run's network namespace.
    pub socket_requests: Option<OwnedFd>,
    /// The loopback addresses and ports forwarded to the host, in allowlist mode.
    pub forwarded: &'a [std::net::SocketAddr],
    /// With `--pty`, the request for the command's pseudo-terminal.
    pub terminal: Option<pty::Request>,
    /// Whether init starts the network namespace's child before the go byte. Only a run
    /// without a cgroup may, because the supervisor moves init into its cgroup just before
    /// that byte.
    pub network_before_go: bool,
}

/// The layers the command stage applies after the root is built, each prepared before the
/// fork. A `None` seccomp filter means the layer is missing and the run was allowed without it.
pub struct Confinement {
    pub rlimits: Vec<crate::limits::Rlimit>,
    /// The settings of the run's Landlock ruleset other than its filesystem rules: the ports.
    /// Init creates the ruleset from them and adds the filesystem rules while it mounts.
    /// `None` means the run goes without Landlock. Degraded mode leaves this `None` and
    /// prepares its whole ruleset itself (`landlock::prepare`).
    pub landlock: Option<crate::landlock::Rules>,
    pub seccomp: Option<seccompiler::BpfProgram>,
}

fn send(report: &OwnedFd, message: &Message) {
    send_all(report, std::slice::from_ref(message));
}

/// Sends `messages` in one write, so the supervisor wakes once for all of them.
fn send_all(report: &OwnedFd, messages: &[Message]) {
    // The supervisor may already be gone; there is no one else to tell. A failed write is
    // ignored for the same reason: nothing here may panic, because the command stage shares
    // init's memory.
    let bytes: Vec<u8> = messages.iter().flat_map(Message::encode).collect();
    let mut written = 0;
    while written < bytes.len() {
        match rustix::io::write(report, &bytes[written..]) {
            Ok(0) | Err(_) => return,
            Ok(count) => written += count,
        }
    }
}

fn fail(report: &OwnedFd, text: String) -> ! {
    send(report, &Message::Error(text));
    sys::exit_now(SETUP_FAILED)
}

/// Runs as PID 1 of the new PID namespace. Never returns.
pub fn main(mut context: InitContext<'_>) -> ! {
    // If the supervisor dies, init dies, and with it every process in the namespace. The
    // supervisor may have died before this call, and the read below then returns end-of-file.
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)) {
        fail(&context.report, format!("failed to set the parent-death signal: {error}"));
    }
    // Two steps of the command's confinement, made here while the supervisor finishes its part
    // before the go byte. The command stage inherits both. An ignored signal would survive
    // execve, so every disposition goes back to its default. Init itself needs neither: it
    // takes its signals through a signalfd, and as PID 1 it ignores signals without a handler.
    sys::reset_signal_dispositions();
    if let Err(error) = sys::drop_bounding_set() {
        fail(&context.report, format!("failed to drop the capability bounding set: {error}"));
    }
    // The child that creates the network and IPC namespaces needs nothing the supervisor does
    // before the go byte, not even the id maps. Started here, its start is off the critical
    // path: runs were 0.04 ms faster in two sets of 600 interleaved rounds on a 2-CPU VM.
    // Not when the run has a cgroup, because the supervisor moves init into it before the go
    // byte, and a child forked earlier would stay outside.
    let early_network = if context.network_before_go && uses_network_child(&context.policy.network) {
        match start_network_child() {
            Ok(child) => Some(child),
            Err(text) => fail(&context.report, text),
        }
    } else {
        None
    };
    let mut go = [0u8; 1];
    let go_pipe = context.go.take().expect("start pipe is set");
    match rustix::io::read(&go_pipe, &mut go) {
        Ok(1) => {}
        _ => sys::exit_now(SETUP_FAILED),
    }
    // Init is a copy of palisade and carries its whole environment, credentials included. A
    // non-dumpable process's /proc files (environ, mem, fd) are closed to processes without
    // CAP_SYS_PTRACE, so the command, which runs as the same user, cannot read them. This
    // comes only after the go byte: it also closes init's uid_map to the supervisor.
    if let Err(error) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        fail(&context.report, format!("failed to make init non-dumpable: {error}"));
    }

    let (proxy_port, detach, ruleset) = match setup(&mut context, early_network) {
        Ok(done) => done,
        Err(text) => fail(&context.report, text),
    };
    // The pseudo-terminal comes after the root, in the sandbox's own /dev/pts, so its name
    // resolves inside the sandbox.
    let (uid, gid) = context.identity.sandbox_ids();
    let terminal = match context.terminal.take().map(|request| pty::create_and_send(request, uid, gid)) {
        Some(Ok(slave)) => Some(slave),
        Some(Err(text)) => fail(&context.report, text),
        None => None,
    };
    // Changing the filesystem uid during setup (for placeholders on idmapped mounts) clears the
    // parent-death signal, so it is set again. The supervisor keeps its end of the start pipe
    // open for the whole run: a hang-up there means it died before the signal was back.
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)) {
        fail(&context.report, format!("failed to set the parent-death signal: {error}"));
    }
    let mut lifeline = [rustix::event::PollFd::new(&go_pipe, rustix::event::PollFlags::IN)];
    let zero = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 0 };
    // A failed poll leaves the supervisor's state unknown, so it counts as a hang-up.
    let polled = rustix::event::poll(&mut lifeline, Some(&zero));
    if polled.is_err() || !lifeline[0].revents().is_empty() {
        sys::exit_now(SETUP_FAILED);
    }
    drop(go_pipe);

    let mut signals = vec![
        libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1,
        libc::SIGUSR2, libc::SIGWINCH, libc::SIGCONT, libc::SIGALRM,
    ];
    // With its own terminal, the command gets SIGWINCH from the kernel when the supervisor
    // resizes that terminal. A copy from init could arrive before the new size is set.
    if terminal.is_some() {
        signals.retain(|&signal| signal != libc::SIGWINCH);
    }
    let signal_fd = match sys::block_into_signalfd(&signals) {
        Ok(fd) => fd,
        Err(error) => fail(&context.report, format!("failed to set up signal forwarding: {error}")),
    };

    let stage = Stage {
        context: &context,
        signal_fd: signal_fd.as_raw_fd(),
        socket_requests: context.socket_requests.as_ref().map(|fd| fd.as_raw_fd()),
        proxy_port,
        terminal: terminal.as_ref(),
        detach: &detach,
        landlock: ruleset.as_ref(),
    };
    let started = match context.workload {
        // A command stage ends in execve at once, so it may borrow init's memory until then,
        // with init suspended: that saves copying init's page tables and the copy-on-write
        // faults after a fork, about 0.1 ms of every run (docs/benchmarks.md).
        // SAFETY: `stage_entry` ends in execve or _exit through `enter_stage`. That function
        // blocks every signal first and writes nothing of init's (see `Stage`). `stage` lives
        // in this frame until the call returns, and init is single-threaded.
        Workload::Command(_) => unsafe { sys::spawn_sharing_memory(stage_entry, &stage as *const Stage as *mut libc::c_void) },
        // A session's host serves requests for the whole run without executing anything, so it
        // needs memory of its own: a fork. Init is single-threaded (it is a clone of the
        // single-threaded supervisor and starts no threads), which `clone_fork` requires.
        // The host's root must be gone before the fork: the host's copy of this memory no
        // longer reads the detach child's result.
        Workload::Session(_) => match detach.wait() {
            Ok(()) => sys::clone_fork(0).map(|pid| if pid == 0 { enter_stage(&stage) } else { pid }),
            Err(error) => fail(&context.report, explain_detach_failure(error)),
        },
    };
    // The stage waited for the detach before it executed the command; this reaps the child.
    drop(detach);
    let command_pid = match started {
        Ok(pid) => pid,
        Err(error) => fail(&context.report, format!("failed to fork the command: {error}")),
    };
    // Dumpability belongs to the memory, which the stage shared: its switch to the sandbox uid
    // may have reset it to the host's suid_dumpable. Init stays closed to the command.
    if let Err(error) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        fail(&context.report, format!("failed to make init non-dumpable: {error}"));
    }
    // Init keeps no write end of the output pipes and no slave of the terminal, so the
    // supervisor reads end-of-file as soon as the last process of the run is gone.
    context.output = [None, None];
    drop(terminal);
    // The writable roots are detached at the end only when the plan lists placeholders (see
    // `detach_covers`).
    let roots = if context.plan.placeholders().next().is_some() { context.plan.writable_roots() } else { Vec::new() };
    supervise(command_pid, &signal_fd, context.socket_requests, &context.report, &roots)
}

/// The part of init's state the command stage needs. The stage only reads it: with
/// [`sys::spawn_sharing_memory`], everything it wrote would be init's memory too.
struct Stage<'a, 'b> {
    context: &'a InitContext<'b>,
    /// Init's descriptors that the stage closes in its own descriptor table.
    signal_fd: RawFd,
    socket_requests: Option<RawFd>,
    proxy_port: Option<u16>,
    terminal: Option<&'a OwnedFd>,
    /// The child detaching the host's root, which the command must not run before.
    detach: &'a sys::DetachChild,
    /// The Landlock ruleset init filled while it built the root.
    landlock: Option<&'a Ruleset>,
}

/// The entry point of a stage started by [`sys::spawn_sharing_memory`]. `arg` points to the
/// [`Stage`], which lives in init's suspended frame until the stage executes or exits.
extern "C" fn stage_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: init passes a pointer to a Stage in its own frame, and stays suspended
    // (CLONE_VFORK) until this process has executed the command or exited, so the Stage
    // outlives every use here, and nothing writes to it meanwhile.
    enter_stage(unsafe { &*(arg as *const Stage<'_, '_>) })
}

/// Closes init's own descriptors in the stage's descriptor table, puts the output pipes in
/// place and becomes the command. Never returns.
fn enter_stage(stage: &Stage<'_, '_>) -> ! {
    // Every signal stays blocked until just before execve (see `execute`): a signal that ended
    // the stage inside an allocation would leave init's heap half-updated.
    if let Err(error) = sys::block_all_signals() {
        fail(&stage.context.report, format!("failed to block signals in the command stage: {error}"));
    }
    // Closing by number leaves init's OwnedFd values untouched: the stage must not drop or
    // change anything of init's, whose memory it may share.
    // SAFETY: the numbers are init's signalfd and socket channel, which the stage never uses;
    // their owners are in init's descriptor table, not this one.
    unsafe {
        sys::close_raw(stage.signal_fd);
        if let Some(fd) = stage.socket_requests {
            sys::close_raw(fd);
        }
    }
    let context = stage.context;
    if let Err(error) = attach_output(&context.output) {
        fail(&context.report, format!("failed to attach the output pipes: {error}"));
    }
    command_stage(context.policy, context.workload, context.identity, context.confinement, stage, &context.report)
}

/// Puts the output pipes in place of stdout and stderr. dup2 leaves the copies without
/// close-on-exec, so the command inherits them.
fn attach_output(output: &[Option<OwnedFd>; 2]) -> rustix::io::Result<()> {
    if let Some(pipe) = &output[0] {
        rustix::stdio::dup2_stdout(pipe)?;
    }
    if let Some(pipe) = &output[1] {
        rustix::stdio::dup2_stderr(pipe)?;
    }
    Ok(())
}

/// Prepares the namespaces: hostname, loopback, the proxy's listening socket, and the new
/// root. Returns the proxy's port in allowlist mode and the child detaching the host's root.
fn setup(context: &mut InitContext<'_>, started_network: Option<sys::NetworkChild>) -> Result<(Option<u16>, sys::DetachChild, Option<Ruleset>), String> {
    rustix::system::sethostname(b"palisade").map_err(|error| format!("failed to set the hostname: {error}"))?;
    let mut proxy_port = None;
    // With the host's network, there is no network namespace of the run's own, and init's
    // clone created the IPC namespace. Otherwise a child creates both while the root is built
    // (see `sys::NetworkChild`), unless `main` started that child before the go byte.
    let mut network = match started_network {
        Some(child) => Some(child),
        None if uses_network_child(&context.policy.network) => Some(start_network_child()?),
        None => None,
    };
    // The proxy's listening sockets and the buffer sizes belong to the namespace, and the
    // supervisor waits for the sockets, so allowlist mode joins it before building the root.
    if let Some(channel) = context.proxy_channel.take() {
        join_network(network.take())?;
        crate::network::raise_loopback_buffers();
        proxy_port = Some(crate::network::listen_and_send(&channel, context.forwarded)?);
    }

    let (uid, gid) = context.identity.sandbox_ids();
    let owner = Owner {
        uid,
        gid,
        idmap: context.idmap_userns.as_ref().map(|fd| fd.as_fd()),
        in_user_namespace: matches!(context.identity, Identity::User { .. }),
    };
    // Init fills the command's Landlock ruleset as it mounts, and the stage enforces it.
    let mut ruleset = context.confinement.landlock.as_ref().map(|rules| crate::landlock::create(rules, 1)).transpose()?;
    let detach = mounts::build_root(context.plan, &owner, ruleset.as_mut()).map_err(|error| error.0)?;
    join_network(network)?;
    // Init is in the run's IPC namespace now, whose limits these files set. Only root may
    // write them (see the function), so an unprivileged run skips them.
    if let (Some(bytes), Identity::Root { .. }) = (context.plan.tmp_size, context.identity) {
        limit_shared_memory_segments(bytes);
    }
    Ok((proxy_port, detach, ruleset))
}

/// Starts the child that creates the run's network and IPC namespaces.
fn start_network_child() -> Result<sys::NetworkChild, String> {
    sys::NetworkChild::start().map_err(|error| format!("failed to start creating the network and IPC namespaces: {error}"))
}

/// Describes a failure to detach the host's root after `pivot_root`. `ECHILD` is what
/// [`sys::DetachChild::wait`] returns for a child that ended without a result.
fn explain_detach_failure(error: rustix::io::Errno) -> String {
    let cause = match error {
        rustix::io::Errno::CHILD => "the child detaching it ended without a result".to_owned(),
        other => std::io::Error::from(other).to_string(),
    };
    format!("failed to detach the host's root from the sandbox: {cause}")
}

/// Moves init into the network and IPC namespaces that `child` created, after the child
/// brought the loopback interface up. Nothing of the command runs before this succeeds, so a
/// failure here leaves no process of the run in the host's network or IPC namespace.
fn join_network(child: Option<sys::NetworkChild>) -> Result<(), String> {
    let Some(child) = child else { return Ok(()) };
    let (network, ipc) = child.finish().map_err(|(step, error)| explain_namespace_failure(step, &error))?;
    rustix::thread::move_into_link_name_space(network.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .map_err(|error| format!("failed to enter the run's network namespace: {error}"))?;
    rustix::thread::move_into_link_name_space(ipc.as_fd(), Some(rustix::thread::LinkNameSpaceType::InterProcessCommunication))
        .map_err(|error| format!("failed to enter the run's IPC namespace: {error}"))
}

/// Describes a failure of the child creating the run's network and IPC namespaces at `step`,
/// with the host setting to change where one is the likely cause.
fn explain_namespace_failure(step: sys::NamespaceStep, error: &std::io::Error) -> String {
    let (kind, sysctl, config) = match step {
        sys::NamespaceStep::Network => ("network", "user.max_net_namespaces", "CONFIG_NET_NS"),
        sys::NamespaceStep::Ipc => ("IPC", "user.max_ipc_namespaces", "CONFIG_IPC_NS"),
        sys::NamespaceStep::Loopback => return format!("failed to bring up the loopback interface of the run's network namespace: {error}"),
        sys::NamespaceStep::OpenIpc => {
            return format!("failed to open the run's IPC namespace at /proc/self/ns/ipc: {error}; palisade needs /proc mounted")
        }
    };
    let cause = match error.raw_os_error() {
        Some(libc::ENOSPC) => format!("the limit on {kind} namespaces is reached (ENOSPC); raise the sysctl {sysctl}"),
        Some(libc::EPERM) => format!("the kernel refused (EPERM); palisade may be running in a container or under a seccomp filter that forbids new {kind} namespaces"),
        Some(libc::EINVAL) => format!("the kernel lacks {kind} namespace support (EINVAL); it needs {config}"),
        _ => error.to_string(),
    };
    format!("failed to create the run's {kind} namespace: {cause}")
}

/// Reports whether init has a child create the run's network and IPC namespaces
/// ([`sys::NetworkChild`]). With the host's network it has none, and init's clone creates the
/// IPC namespace instead. The supervisor's clone flags and init's setup both follow this.
pub(crate) fn uses_network_child(network: &palisade_policy::NetworkMode) -> bool {
    !matches!(network, palisade_policy::NetworkMode::Full)
}

/// Bounds the System V shared memory of the run's IPC namespace to `bytes` in all, as its
/// temporary filesystem is bounded: a segment that no process maps counts against no other
/// limit. The namespace is the run's own, so the host's settings are unchanged.
///
/// NOTE: takes effect only when palisade runs as root. The kernel lets only uid 0 of the
/// namespace's owner write these files, and for an unprivileged caller init runs as the
/// caller's own uid, so the kernel's defaults (no practical bound) stay.
fn limit_shared_memory_segments(bytes: u64) {
    let pages = bytes / rustix::param::page_size() as u64;
    let _ = std::fs::write("/proc/sys/kernel/shmmax", bytes.to_string());
    let _ = std::fs::write("/proc/sys/kernel/shmall", pages.max(1).to_string());
}

/// Forwards signals to the command and reaps children until the command exits, then exits
/// with the command's status. `roots` are detached once no process of the run is left.
fn supervise(command_pid: libc::pid_t, signal_fd: &OwnedFd, mut socket_requests: Option<OwnedFd>, report: &OwnedFd, roots: &[PathBuf]) -> ! {
    loop {
        // With exposed ports, init also creates sockets when the supervisor requests them.
        if let Some(channel) = &socket_requests {
            let mut fds = [
                rustix::event::PollFd::new(signal_fd, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(channel, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => fail(report, format!("failed to wait for signals: {error}")),
            }
            let (signal_ready, request_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if request_ready && !crate::network::serve_socket_request(channel) {
                socket_requests = None;
            }
            if !signal_ready {
                continue;
            }
        }
        let (signal, _from_kernel) = match sys::read_signal(signal_fd.as_fd()) {
            Ok(received) => received,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => fail(report, format!("failed to read signals: {error}")),
        };
        if signal != libc::SIGCHLD {
            forward(command_pid, signal);
            continue;
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a valid local integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == command_pid {
                let (message, code) = if libc::WIFSIGNALED(status) {
                    let signal = libc::WTERMSIG(status);
                    (Message::Signaled(signal), 128 + signal)
                } else {
                    let code = libc::WEXITSTATUS(status);
                    (Message::Exited(code), code)
                };
                let usage = children_usage();
                // Every process of a PID namespace is a descendant of its init, since orphans
                // are reparented to it. With no child left, nothing of the run is alive, and the
                // supervisor need not wait for the namespaces to be torn down.
                match (reap_all(), roots.is_empty()) {
                    (true, true) => send_all(report, &[message, usage, Message::Finished]),
                    // The outcome goes first, so that the supervisor wakes up while init
                    // detaches the roots, and finds the end waiting once it has read the
                    // outcome. In 700 interleaved runs on a 2-CPU VM this was 0.02 ms faster
                    // than one message after the detach, within that VM's noise.
                    (true, false) => {
                        send_all(report, &[message, usage]);
                        detach_covers(roots);
                        send(report, &Message::Finished);
                    }
                    (false, _) => send_all(report, &[message, usage]),
                }
                sys::exit_now(code);
            }
        }
    }
}

/// Detaches the writable roots, and with them the mounts covering the placeholders, before
/// init reports that the run is over. The supervisor then removes the placeholders while init
/// tears its namespaces down. Otherwise the supervisor's unlink of a placeholder also unmounts
/// the cover on it, and waits for an RCU grace period each time. On a 2-CPU VM, removing ten
/// placeholders took 0.2 ms that way and 0.1 ms after this detach, which itself took 0.06 ms
/// (medians of 300 runs of a build with time stamps). No process is left that could use the
/// roots, and a failure only costs that time.
fn detach_covers(roots: &[PathBuf]) {
    for root in roots {
        let _ = rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Sends `signal` to the command's process group, as a terminal would to its foreground group,
/// so children the command waits for get it too. The command leads its own session, so the
/// group id is its pid. If the group is gone, the signal goes to the pid alone.
pub(crate) fn forward(command_pid: libc::pid_t, signal: libc::c_int) {
    if sys::kill(-command_pid, signal).is_err() {
        let _ = sys::kill(command_pid, signal);
    }
}

/// Returns the usage of every process init has reaped so far.
fn children_usage() -> Message {
    let usage = sys::children_usage();
    Message::Usage { user_us: usage.user_us, system_us: usage.system_us, max_rss_kib: usage.max_rss_kib }
}

/// Reaps every child that has exited. Returns true when init has no child left at all.
fn reap_all() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        return pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
}

/// Becomes the command: drops every privilege, then executes it. Never returns. `stage` brings
/// the proxy's port, the slave side of the command's pseudo-terminal (with `--pty`) and the
/// child detaching the host's root.
fn command_stage(policy: &Policy, workload: &Workload<'_>, identity: Identity, confinement: &Confinement, stage: &Stage<'_, '_>, report: &OwnedFd) -> ! {
    let (proxy_port, terminal) = (stage.proxy_port, stage.terminal);
    // A new session: the command leaves palisade's process group, so `kill 0` and terminal job
    // control cannot reach processes outside the sandbox. Without `--pty` it has no controlling
    // terminal, which TIOCSTI keystroke injection needs, and init forwards the terminal's
    // signals. Programs that open /dev/tty (password prompts, some editors) then fail.
    if let Err(error) = rustix::process::setsid() {
        fail(report, format!("failed to start a new session: {error}"));
    }
    // With `--pty`, the controlling terminal is the sandbox's own pseudo-terminal, never the
    // caller's terminal, so input pushed into it could only reach the sandbox.
    if let Some(slave) = terminal {
        if let Err(error) = pty::attach(slave) {
            fail(report, format!("failed to attach the command's pseudo-terminal: {error}"));
        }
    }
    if let Err(text) = drop_privileges(identity) {
        fail(report, text);
    }
    if let Err(error) = rustix::process::chdir(&policy.cwd) {
        fail(report, format!("failed to enter the working directory {}: {error}", policy.cwd.display()));
    }
    // Everything above descriptor 2 closes at exec, including anything palisade inherited.
    if let Err(error) = sys::cloexec_from(3) {
        fail(report, format!("failed to mark inherited descriptors close-on-exec: {error}"));
    }
    if let Err(text) = confine(confinement, stage.landlock) {
        fail(report, text);
    }

    let entry = |name: &[u8], value: &[u8]| {
        let mut entry = name.to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value);
        CString::new(entry).ok()
    };
    // In allowlist mode the proxy variables point at palisade's proxy, replacing any value
    // from the caller's environment.
    let mut envp: Vec<CString> = policy
        .env
        .iter()
        .filter(|var| proxy_port.is_none() || !crate::network::is_proxy_variable(var.name.as_bytes()))
        .filter_map(|var| entry(var.name.as_bytes(), var.value.as_bytes()))
        .collect();
    if let Some(port) = proxy_port {
        envp.extend(crate::network::proxy_environment(port).iter().filter_map(|(name, value)| entry(name.as_bytes(), value.as_bytes())));
    }
    let argv = match workload {
        Workload::Command(argv) => argv,
        // A session's host is a fork with memory of its own, and serves the whole run.
        Workload::Session(socket) => {
            if let Err(error) = sys::unblock_all_signals() {
                fail(report, format!("failed to unblock signals in the session host: {error}"));
            }
            crate::session::host(socket, &policy.cwd, &envp)
        }
    };
    // The last step of setup ran alongside the stage's: nothing of the command runs while the
    // host's root is still reachable. A session's host is past this point already.
    if let Err(error) = stage.detach.wait() {
        fail(report, explain_detach_failure(error));
    }
    let path_var = policy.env.iter().find(|var| var.name == "PATH").map(|var| var.value.as_os_str());
    let (code, reason) = execute(argv, &envp, path_var);
    send(report, &Message::Exec { code, reason });
    sys::exit_now(code)
}

/// Executes `argv[0]`, looked up in `path` (the command's `PATH`) when it has no slash, as a
/// shell does. Returns only when no candidate could be executed: the exit status a shell
/// gives then (127 for not found, 126 otherwise) and the reason.
pub(crate) fn execute(argv: &[OsString], envp: &[CString], path: Option<&OsStr>) -> (i32, String) {
    let to_cstring = |value: &OsStr| CString::new(value.as_bytes()).ok();
    let Some(args) = argv.iter().map(|arg| to_cstring(arg)).collect::<Option<Vec<_>>>() else {
        return (126, "an argument contains a NUL byte".into());
    };
    let path_var = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let program = &argv[0];
    let candidates: Vec<PathBuf> = if program.as_bytes().contains(&b'/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::split_paths(path_var).filter(|dir| !dir.as_os_str().is_empty()).map(|dir| dir.join(program)).collect()
    };
    // Everything execve needs is built first. Between unblocking the signals and execve, and
    // until they are blocked again after a failed attempt, nothing allocates: the command
    // stage may share init's memory (see the module documentation).
    let paths: Vec<CString> = candidates.iter().filter_map(|candidate| to_cstring(candidate.as_os_str())).collect();
    let prepared = sys::PreparedExec::new(&args, envp);
    let mut last_error = std::io::Error::from_raw_os_error(libc::ENOENT);
    for path in &paths {
        let _ = sys::unblock_all_signals();
        let error = prepared.execve(path);
        let _ = sys::block_all_signals();
        // Keep looking after "not found" and "not a directory", as a shell does; any other
        // failure on an existing file is the one to report.
        match error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            _ => {
                last_error = error;
                if !program.as_bytes().contains(&b'/') && last_error.raw_os_error() == Some(libc::EACCES) {
                    continue;
                }
                break;
            }
        }
    }
    let name = Path::new(program).display();
    match last_error.raw_os_error() {
        Some(libc::ENOENT) if candidates.len() == 1 => (127, format!("{name}: not found inside the sandbox")),
        Some(libc::ENOENT) => (127, format!("{name}: command not found in the sandbox's PATH ({})", Path::new(path_var).display())),
        _ => (126, format!("{name}: cannot execute: {last_error}")),
    }
}

/// Applies the last layers, in order: the rlimits, Landlock's `ruleset`, and the seccomp
/// filter, which must come last because it rejects calls the steps before it make. Without a
/// ruleset, the run goes without Landlock, as the caller allowed.
pub(crate) fn confine(confinement: &Confinement, ruleset: Option<&Ruleset>) -> Result<(), String> {
    // The list starts with core dumps off: a core dump would write the command's memory into
    // the working directory.
    crate::limits::apply(&confinement.rlimits)?;
    if let Some(ruleset) = ruleset {
        ruleset.enforce()?;
    }
    if let Some(program) = &confinement.seccomp {
        crate::seccomp::install(program)?;
    }
    Ok(())
}

/// Leaves the command with no capabilities, no way to gain any (`no_new_privs`, locked
/// securebits), and, when palisade runs as root, the identity of an unprivileged user.
fn drop_privileges(identity: Identity) -> Result<(), String> {
    // Init reset the signal dispositions and dropped the bounding set at its start, and the
    // stage inherited both. The mask stays as it is: blocked until just before execve.
    sys::lock_capabilities().map_err(|error| format!("failed to lock the securebits and ambient capabilities: {error}"))?;
    if let Identity::Root { sandbox_uid } = identity {
        let id = rustix::thread::Gid::from_raw(sandbox_uid);
        rustix::thread::set_thread_groups(&[]).map_err(|error| format!("failed to drop supplementary groups: {error}"))?;
        rustix::thread::set_thread_res_gid(id, id, id).map_err(|error| format!("failed to switch to gid {sandbox_uid}: {error}"))?;
        let id = rustix::thread::Uid::from_raw(sandbox_uid);
        rustix::thread::set_thread_res_uid(id, id, id).map_err(|error| format!("failed to switch to uid {sandbox_uid}: {error}"))?;
    }
    sys::clear_capabilities().map_err(|error| format!("failed to clear capabilities: {error}"))?;
    rustix::thread::set_no_new_privs(true).map_err(|error| format!("failed to set no_new_privs: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn messages_round_trip() {
        let messages = [
            Message::Error("failed to mount\nsomething".into()),
            Message::Exec { code: 127, reason: "foo: not found".into() },
            Message::Exited(3),
            Message::Signaled(9),
            Message::Usage { user_us: 1_500_000, system_us: 20, max_rss_kib: 4096 },
            Message::Finished,
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(Message::encode).collect();
        let decoded = Message::decode_all(&bytes);
        assert_eq!(decoded[0], Message::Error("failed to mount something".into()));
        assert_eq!(&decoded[1..], &messages[1..]);
    }
}
