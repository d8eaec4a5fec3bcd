//! The supervisor: the palisade process on the host side. It forks the sandbox's init into new
//! namespaces, writes its user mapping, enforces the wall-clock timeout, forwards signals, and
//! turns what init reports into an [`Outcome`].

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_policy::network::Rules;
use palisade_policy::scrub::NewRepositories;
use palisade_policy::{NetworkMode, Policy};
use rustix::event::{PollFd, PollFlags};

use crate::cgroup;
use crate::handoff;
use crate::init::{self, InitContext, Message};
use crate::limits::{self, Limit};
use crate::network;
use crate::output;
use crate::plan::MountPlan;
use crate::pty;
use crate::userns;
use crate::{landlock, seccomp, sys, Error, Exit, Identity, Job, Layers, Outcome};

/// Signals the supervisor handles instead of dying from them.
const HANDLED_SIGNALS: &[libc::c_int] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGWINCH];
/// Signals the supervisor also handles with `--pty`, because dying from them would leave the
/// caller's terminal in raw mode. Like the others, it passes them on to init.
const PTY_HANDLED_SIGNALS: &[libc::c_int] = &[libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM];

/// How long the output threads may take to drain the pipes after the run ended.
const OUTPUT_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long a command may take to exit after palisade passed on a SIGTERM, SIGHUP or SIGQUIT
/// sent to it, before every process of the run is killed.
const TERMINATION_GRACE: Duration = Duration::from_secs(5);

/// Runs `job` in a new sandbox and waits for it.
pub fn run(
    policy: &Policy,
    plan: &MountPlan,
    identity: Identity,
    job: Job<'_>,
    mut layers: Layers,
    cgroup: Option<cgroup::RunCgroup>,
    root_locks: &RootLocks,
) -> Result<Outcome, Error> {
    let Job { workload, options, on_denial } = job;
    let started = Instant::now();
    let rlimits = limits::rlimits(&policy.limits);
    layers.rlimits = rlimits.iter().map(limits::Rlimit::describe).collect();
    // Both are computed here, before the fork, so the command stage only applies them. Init
    // adds the filesystem rules to the Landlock ruleset as it mounts (`mounts::build_root`).
    let confinement = init::Confinement {
        rlimits,
        landlock: layers.landlock_abi.map(|_| landlock::Rules {
            bind_ports: policy.ports.listen.clone().filter(|_| layers.landlock_tcp),
            ..landlock::Rules::default()
        }),
        seccomp: layers.seccomp.then(|| seccomp::build(seccomp::FilterOptions { allow_ptrace: policy.allow_ptrace, no_sockets: false })),
    };
    let pipe = |what| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::setup("create", what, e.into()));
    let (go_read, go_write) = pipe("the start pipe")?;
    let (report_read, report_write) = pipe("the report pipe")?;
    let mut streams = if options.pty {
        output::Streams::for_terminal()
    } else {
        output::prepare(policy.limits.max_output).map_err(|e| Error::setup("create", "the output pipes", e))?
    };
    // Where the sandbox uid has no mapping (root in a user namespace without it), the pipes
    // stay root's. The run then fails later with its own explanation, when the idmap namespace
    // cannot be created or the command stage switches to that uid.
    if let Identity::Root { sandbox_uid } = identity {
        let _ = streams.give_to(sandbox_uid);
    }
    // The holder of the idmap namespace is reaped after the go byte (see below).
    let (idmap_userns, idmap_holder) = match identity {
        Identity::Root { sandbox_uid } if plan.needs_idmap() => {
            let (fd, holder) = userns::idmap_namespace(sandbox_uid)?;
            (Some(fd), Some(holder))
        }
        _ => (None, None),
    };
    let mut handled_signals = HANDLED_SIGNALS.to_vec();
    if options.pty {
        handled_signals.extend_from_slice(PTY_HANDLED_SIGNALS);
    }
    let signal_fd = sys::block_into_signalfd(&handled_signals).map_err(|e| Error::setup("block", "signals", e))?;
    let rules = match &policy.network {
        NetworkMode::Allowlist { allow, deny, .. } => Some(Rules::from_strings(allow, deny).map_err(|error| Error::Sandbox(error.to_string()))?),
        _ => None,
    };
    let resolve_allowed = matches!(policy.network, NetworkMode::Allowlist { resolve_allowed: true, .. });
    let forwarded = rules.as_ref().map(|rules| network::ForwardPlan::new(rules, resolve_allowed).forwards).unwrap_or_default();
    // Resolution rejects a policy over the limit and gives the reason. This check only keeps
    // the hand-over within what one message can carry if that one is ever bypassed.
    if forwarded.len() > palisade_policy::network::MAX_SERVED_PORTS {
        return Err(Error::Sandbox(format!(
            "the allowlist needs {} ports served inside the sandbox, more than the maximum of {}",
            forwarded.len(),
            palisade_policy::network::MAX_SERVED_PORTS
        )));
    }
    let listen_addresses: Vec<std::net::SocketAddr> = forwarded.iter().map(|forward| forward.listen).collect();
    let (proxy_channel, init_proxy_channel) = match rules {
        Some(_) => {
            let (supervisor_end, init_end) = handoff::pair().map_err(|e| Error::setup("create", "the proxy's socket pair", e))?;
            (Some(supervisor_end), Some(init_end))
        }
        None => (None, None),
    };
    // Exposed ports: the host's listeners exist before the run starts, and init sends a new
    // socket of the run's namespace over a second socket pair for each client.
    let exposed = network::listen_for_exposed(&policy.ports.expose).map_err(Error::Sandbox)?;
    let (factory_channel, init_factory_channel) = if exposed.is_empty() {
        (None, None)
    } else {
        let (supervisor_end, init_end) = handoff::pair().map_err(|e| Error::setup("create", "the socket pair for exposed ports", e))?;
        (Some(supervisor_end), Some(init_end))
    };

    // With `--pty`, init sends the master side of the command's terminal over a socket pair of
    // its own, and the terminal starts with the caller's window size.
    let (terminal_channel, init_terminal) = if options.pty {
        let (supervisor_end, init_end) = handoff::pair().map_err(|e| Error::setup("create", "the socket pair for the command's terminal", e))?;
        let size = pty::caller_window_size().unwrap_or(pty::DEFAULT_WINDOW_SIZE);
        (Some(supervisor_end), Some(pty::Request { channel: init_end, size }))
    } else {
        (None, None)
    };

    // The network and IPC namespaces are not among these: init has a child create them
    // (`sys::NetworkChild`), so their cost overlaps the mounts and, without a cgroup, this
    // process's work up to the go byte. With the host's network there is no such child, and
    // the clone creates the IPC namespace.
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWCGROUP;
    if !init::uses_network_child(&policy.network) {
        flags |= libc::CLONE_NEWIPC;
    }
    if matches!(identity, Identity::User { .. }) {
        flags |= libc::CLONE_NEWUSER;
    }
    // The supervisor is single-threaded here: the palisade binary starts no threads before
    // this point, which `clone_fork` requires. The output threads start after it.
    let pid = match sys::clone_fork(flags) {
        Ok(0) => {
            drop(go_write);
            drop(report_read);
            drop(signal_fd);
            drop(proxy_channel);
            drop(factory_channel);
            drop(terminal_channel);
            drop(exposed);
            let output = std::mem::take(&mut streams.write_ends);
            // Init must hold no read end: with one open, the command would never see EPIPE
            // when palisade's reader goes away.
            drop(streams);
            init::main(InitContext {
                policy,
                plan,
                workload: &workload,
                identity,
                go: Some(go_read),
                report: report_write,
                idmap_userns,
                confinement: &confinement,
                output,
                proxy_channel: init_proxy_channel,
                socket_requests: init_factory_channel,
                forwarded: &listen_addresses,
                terminal: init_terminal,
                network_before_go: cgroup.is_none(),
            })
        }
        Ok(pid) => pid,
        Err(error) => return Err(userns::explain_clone_failure(error)),
    };
    // The session's host has its own copy of the socket now. Without this copy, the client reads
    // end-of-file as soon as the host is gone, not only once palisade has cleaned up.
    drop(workload);
    drop(go_read);
    drop(report_write);
    drop(idmap_userns);
    drop(init_proxy_channel);
    drop(init_factory_channel);
    drop(init_terminal);
    streams.write_ends = [None, None];
    let child = rustix::process::Pid::from_raw(pid).expect("clone returned a positive pid");
    let started_child = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty())
        .map_err(|e| Error::setup("open a pidfd for", format!("process {pid}"), e.into()))
        .and_then(|pidfd| Ok((pidfd, streams.start(policy.limits.max_output).map_err(|e| Error::setup("start", "the output threads", e))?)));
    let (pidfd, mut pumps) = match started_child {
        Ok(started) => started,
        Err(error) => {
            abandon(pid, plan, root_locks);
            return Err(error);
        }
    };

    if let Identity::User { uid, gid } = identity {
        if let Err(error) = userns::write_maps(pid, uid, gid) {
            abandon(pid, plan, root_locks);
            return Err(error);
        }
    }
    // Init enters the cgroup before it starts anything, so every process of the run is in it.
    if let Some(cgroup) = &cgroup {
        if let Err(reason) = cgroup.add(pid as u32) {
            abandon(pid, plan, root_locks);
            return Err(Error::Sandbox(reason));
        }
    }
    // Init drops its capability bounding set meanwhile. It later covers these, and creates
    // any that are missing.
    crate::mounts::create_placeholders_on_host(plan, matches!(identity, Identity::Root { .. }));
    if rustix::io::write(&go_write, b"1").is_err() {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    // The caller's memory is freed after it has exited (see the function). Without that child,
    // the caller's own exit frees it, which only takes longer.
    if options.exits_after_run {
        let _ = sys::defer_memory_teardown();
    }
    // The holder let its namespace go before the clone, so it has exited or is about to.
    // Reaping it here, while init builds the root, keeps the wait and the unmapping of its
    // stack out of the end of the run.
    drop(idmap_holder);
    // Init sends the proxy's socket before it builds the root. If it fails before that, it
    // closes its end, and its report gives the reason.
    let services = match (proxy_channel, rules) {
        (Some(channel), Some(rules)) => receive_listeners(&channel, rules, &forwarded),
        _ => Ok(None),
    };
    let network_thread = services.and_then(|proxy| {
        let exposed = factory_channel.map(|factory| (exposed, factory));
        if proxy.is_none() && exposed.is_none() {
            return Ok(None);
        }
        let thread = network::NetworkThread::start(network::Services { proxy, exposed, on_denial }).map_err(|e| Error::setup("start", "palisade's network thread", e))?;
        tracing::debug!(proxy = ?thread.address(), "palisade's network thread serves the run");
        Ok(Some(thread))
    });
    let network_thread = match network_thread {
        Ok(thread) => thread,
        Err(error) => {
            abandon(pid, plan, root_locks);
            return Err(error);
        }
    };
    // `go_write` stays open until the run ends: init treats its hang-up as this process's death.
    let revert = RevertList::capture(&policy.filesystem.revert_if_created);
    let new_repositories = NewRepositories::capture(&policy.filesystem.writable, &policy.filesystem.git_entries);

    let mut bytes = Vec::new();
    let proc = std::path::Path::new("/proc");
    // Unprivileged, init shares the command's uid in the run's user namespace and counts
    // against its process limit; as root it does not.
    let mut monitor = limits::Monitor::new(&policy.limits, proc, pid, matches!(identity, Identity::User { .. }));
    let fds = WaitFds { pidfd: &pidfd, signals: &signal_fd, report: &report_read };
    let mut terminal = terminal_channel.map(pty::Session::Waiting);
    let end = wait_for_exit(pid, &fds, &mut pumps, &mut bytes, policy.limits.timeout, &mut monitor, terminal.as_mut());
    // Ending the terminal session restores the caller's terminal modes before palisade prints
    // anything more.
    let terminal_error = terminal.and_then(|session| session.finish(&mut pumps));
    let mut init_usage = None;
    match end {
        // Init may still be tearing its namespaces down. It is reaped now if it is done, and
        // otherwise by `reap_finished` at the next run or when this process exits.
        End::Finished => reap_finished(pid),
        End::Exited | End::Limit(_) | End::Terminated | End::TerminalFailed => {
            init_usage = reap(pid);
            let _ = std::fs::File::from(report_read).read_to_end(&mut bytes);
        }
    }
    let messages = Message::decode_all(&bytes);
    drop(go_write);
    let network = network_thread.map(network::NetworkThread::finish).unwrap_or_default();
    remove_placeholders(plan, root_locks);
    revert.apply();
    // NOTE: the Linux report has no field for palisade's own failures after the run, so a
    // failed scrub shows only in the warnings `scrub` prints on stderr.
    let _scrub_failures = new_repositories.scrub();
    let (stdout_bytes, stderr_bytes, output_merged) = pumps.finish(OUTPUT_DRAIN_WAIT);
    let cgroup_usage = cgroup.map(|cgroup| {
        cgroup.kill();
        let usage = cgroup.usage();
        let path = cgroup.path().to_owned();
        if let Err(reason) = cgroup.remove(Duration::from_secs(1)) {
            eprintln!("palisade: warning: failed to remove the run's cgroup {}: {reason}", path.display());
        }
        usage
    });

    let wall_time = started.elapsed();
    let reported = messages.iter().find_map(|message| match message {
        Message::Usage { user_us, system_us, max_rss_kib } => Some(sys::ResourceUsage { user_us: *user_us, system_us: *system_us, max_rss_kib: *max_rss_kib }),
        _ => None,
    });
    let rusage = init_usage.as_ref().map(|(_, rusage)| *rusage).or(reported);
    let mut usage = merge_usage(rusage, cgroup_usage.as_ref(), monitor.peaks());
    (usage.stdout_bytes, usage.stderr_bytes, usage.output_merged) = (stdout_bytes, stderr_bytes, output_merged);
    if let Some(counted) = &cgroup_usage {
        if counted.pids_refused > 0 && !monitor.events.iter().any(|event| event.limit == Limit::MaxProcs) {
            let max = policy.limits.max_procs.unwrap_or_default();
            monitor.record(Limit::MaxProcs, max, false, format!(
                "the run reached its limit of {max} processes and threads; {} forks failed with EAGAIN",
                counted.pids_refused
            ));
        }
    }
    let finish = |exit: Exit, exec_error: Option<(i32, String)>, usage: limits::Usage, events: Vec<limits::LimitEvent>, layers: Layers| {
        Ok(Outcome { exit, wall_time, exec_error, layers, usage, limits_reached: events, network: network.clone() })
    };
    match end {
        End::Limit(Limit::Timeout) => {
            let timeout = policy.limits.timeout.unwrap_or_default();
            monitor.record(Limit::Timeout, timeout.as_millis() as u64, true, format!(
                "the run did not finish within its timeout of {}; every process was killed",
                limits::format_duration(timeout)
            ));
            return finish(Exit::TimedOut, None, usage, monitor.events, layers);
        }
        End::Limit(Limit::Output) => {
            let max = policy.limits.max_output.unwrap_or_default();
            monitor.record(Limit::Output, max, true, format!(
                "the run wrote more than its output limit of {}; the output was cut and every process was killed",
                limits::format_size(max)
            ));
            return finish(Exit::Killed(Limit::Output), None, usage, monitor.events, layers);
        }
        End::Limit(limit) => return finish(Exit::Killed(limit), None, usage, monitor.events, layers),
        _ => {}
    }
    // With a cgroup, the kernel enforces the memory limit: the OOM killer ends the whole run
    // (memory.oom.group), init included.
    let oom_killed = cgroup_usage.as_ref().is_some_and(|counted| counted.oom_kills > 0);
    if end == End::Exited && oom_killed {
        let max = policy.limits.memory.unwrap_or_default();
        monitor.record(Limit::Memory, max, true, format!(
            "the run's processes together reached its memory limit of {}; the kernel killed every process",
            limits::format_size(max)
        ));
        return finish(Exit::Killed(Limit::Memory), None, usage, monitor.events, layers);
    }
    if let Some(error) = terminal_error {
        return Err(Error::setup("relay", "the command's pseudo-terminal", error));
    }
    let mut exec_error = None;
    for message in &messages {
        match message {
            Message::Error(text) => {
                // Under Ubuntu's AppArmor restriction, creating the user namespace succeeds but
                // the first mount inside fails; the host setting that causes it is the news.
                if let (Identity::User { .. }, Some((cause, fix))) = (identity, userns::diagnose()) {
                    return Err(Error::UserNamespaces { cause: format!("{cause}; inside the sandbox: {text}"), fix });
                }
                return Err(Error::Sandbox(text.clone()));
            }
            Message::Exec { code, reason } => exec_error = Some((*code, reason.clone())),
            _ => {}
        }
    }
    let exit = messages
        .iter()
        .find_map(|message| match message {
            Message::Exited(code) => Some(Exit::Code(*code)),
            Message::Signaled(signal) => Some(Exit::Signal(*signal)),
            _ => None,
        })
        .unwrap_or(match init_usage {
            Some((WaitStatus::Signaled(signal), _)) => Exit::Signal(signal),
            Some((WaitStatus::Exited(code), _)) => Exit::Code(code),
            None => Exit::Signal(libc::SIGKILL),
        });
    // A command the kernel killed at a per-process limit.
    match exit {
        Exit::Signal(libc::SIGXCPU) => {
            let max = policy.limits.cpu_time.unwrap_or_default();
            monitor.record(Limit::CpuTime, max.as_millis() as u64, true, format!(
                "the command used more than its CPU time limit of {} and the kernel ended it with SIGXCPU",
                limits::format_duration(max)
            ));
        }
        Exit::Signal(libc::SIGXFSZ) => {
            let max = policy.limits.max_file_size.unwrap_or_default();
            monitor.record(Limit::MaxFileSize, max, true, format!(
                "the command wrote past the file size limit of {} and the kernel ended it with SIGXFSZ",
                limits::format_size(max)
            ));
        }
        _ => {}
    }
    if end == End::Terminated {
        eprintln!(
            "palisade: the command did not exit within {} of the signal palisade passed on; every process of the run was killed",
            limits::format_duration(TERMINATION_GRACE)
        );
    }
    finish(exit, exec_error, usage, monitor.events, layers)
}

/// Receives the proxy's and the forwarded ports' listening sockets from init. `Ok(None)` when
/// init failed before it sent them.
fn receive_listeners(channel: &OwnedFd, rules: Rules, forwarded: &[network::Forward]) -> Result<Option<(network::Listeners, Rules)>, Error> {
    let received = network::receive_listeners(channel, forwarded).map_err(|e| Error::setup("receive", "the proxy's listening sockets", e))?;
    Ok(received.map(|listeners| (listeners, rules)))
}

/// Combines what each source measured of a run: the usage of the processes init reaped,
/// the cgroup's figures, which are exact where the kernel has them, and the accounting's
/// peaks.
fn merge_usage(
    rusage: Option<sys::ResourceUsage>,
    cgroup: Option<&cgroup::Usage>,
    peaks: Option<(u64, u64, (Duration, Duration))>,
) -> limits::Usage {
    let mut usage = limits::Usage::default();
    if let Some(rusage) = rusage {
        usage.user_cpu = Some(Duration::from_micros(rusage.user_us));
        usage.system_cpu = Some(Duration::from_micros(rusage.system_us));
        usage.peak_memory = Some(rusage.max_rss_kib * 1024);
    }
    if let Some(counted) = cgroup {
        let micros = |us: Option<u64>| us.map(Duration::from_micros);
        usage.user_cpu = micros(counted.cpu_user_us).or(usage.user_cpu);
        usage.system_cpu = micros(counted.cpu_system_us).or(usage.system_cpu);
        usage.peak_memory = counted.memory_peak.or(usage.peak_memory);
        usage.peak_tasks = counted.pids_peak;
    }
    if let Some((memory, tasks, (user, system))) = peaks {
        // Processes killed with the run are reaped during teardown, and their time does not
        // always reach the usage of init, so the last reading can be the larger.
        usage.user_cpu = usage.user_cpu.max(Some(user));
        usage.system_cpu = usage.system_cpu.max(Some(system));
        if cgroup.is_none() {
            usage.peak_memory = usage.peak_memory.max(Some(memory));
        }
        usage.peak_tasks = usage.peak_tasks.max(Some(tasks));
    }
    usage
}

/// The way waiting for a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Init reported that no process of the run is left.
    Finished,
    /// Init exited.
    Exited,
    /// The run went over a limit, and init, with every process of the run, was killed.
    Limit(Limit),
    /// The command did not exit within [`TERMINATION_GRACE`] of a termination signal sent to
    /// palisade, and every process of the run was killed.
    Terminated,
    /// Relaying the command's pseudo-terminal failed, and every process of the run was killed.
    TerminalFailed,
}

/// The descriptors the supervisor waits on.
struct WaitFds<'a> {
    pidfd: &'a OwnedFd,
    signals: &'a OwnedFd,
    report: &'a OwnedFd,
}

/// Waits until the run ends, forwarding signals, collecting init's reports, relaying the
/// command's `terminal` if it has one, and enforcing the limits meanwhile.
fn wait_for_exit(
    pid: libc::pid_t,
    fds: &WaitFds<'_>,
    pumps: &mut output::Pumps,
    bytes: &mut Vec<u8>,
    timeout: Option<Duration>,
    monitor: &mut limits::Monitor<'_>,
    mut terminal: Option<&mut pty::Session>,
) -> End {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut kill_at: Option<Instant> = None;
    let mut report_open = true;
    let kill = |end: End| {
        // Killing PID 1 of the namespace makes the kernel kill every other process in it.
        let _ = sys::kill(pid, libc::SIGKILL);
        end
    };
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return kill(End::Limit(Limit::Timeout));
        }
        if kill_at.is_some_and(|at| now >= at) {
            return kill(End::Terminated);
        }
        if let Some(limit) = monitor.poll() {
            return kill(End::Limit(limit));
        }
        let wake = [deadline, kill_at, Some(monitor.next_reading())].into_iter().flatten().min().expect("the monitor always has a next reading");
        let left = wake.saturating_duration_since(Instant::now());
        let timespec = rustix::fs::Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
        // A closed pipe reports a hang-up whatever events are asked for, so once the report is
        // at its end, its slot watches the pidfd instead and the loop does not spin.
        let report_slot = if report_open { fds.report } else { fds.pidfd };
        let output_limit = pumps.limit_fd();
        let mut poll_fds = vec![
            PollFd::new(fds.pidfd, PollFlags::IN),
            PollFd::new(fds.signals, PollFlags::IN),
            PollFd::new(report_slot, PollFlags::IN),
            PollFd::from_borrowed_fd(output_limit, PollFlags::IN),
        ];
        // The terminal session's descriptors, then the output pipes that have no thread yet.
        let watched = terminal.as_deref().map(pty::Session::watched).unwrap_or_default();
        let watches: Vec<pty::Watch> = watched.iter().map(|(watch, _, _)| *watch).collect();
        poll_fds.extend(watched.into_iter().map(|(_, fd, events)| PollFd::from_borrowed_fd(fd, events)));
        let idle_start = poll_fds.len();
        poll_fds.extend(pumps.idle_fds().into_iter().map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)));
        match rustix::event::poll(&mut poll_fds, Some(&timespec)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return kill(End::Exited),
        }
        let revents: Vec<PollFlags> = poll_fds.iter().map(PollFd::revents).collect();
        drop(poll_fds);
        let idle = &revents[idle_start..];
        if !idle.is_empty() {
            let readable: Vec<bool> = idle.iter().map(|flags| flags.contains(PollFlags::IN)).collect();
            let hung_up: Vec<bool> = idle.iter().map(|flags| !flags.is_empty()).collect();
            if pumps.wake(&readable, &hung_up).is_err() {
                return kill(End::Exited);
            }
        }
        // After the pipes, whose results match the idle list before the master joins it, and
        // before the report, so the master is taken before the run's end is seen.
        if let Some(session) = terminal.as_deref_mut() {
            for (&watch, &flags) in watches.iter().zip(&revents[4..idle_start]) {
                if !flags.is_empty() && !session.handle(watch, flags, pumps) {
                    return kill(End::TerminalFailed);
                }
            }
        }
        if report_open && !revents[2].is_empty() {
            let mut buffer = [0u8; 4096];
            match rustix::io::read(fds.report, &mut buffer) {
                Ok(0) | Err(_) => report_open = false,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
            if Message::decode_all(bytes).contains(&Message::Finished) {
                return End::Finished;
            }
        }
        if !revents[0].is_empty() {
            return End::Exited;
        }
        if !revents[3].is_empty() {
            // The output threads write one byte when the output limit is reached.
            return kill(End::Limit(Limit::Output));
        }
        if !revents[1].is_empty() {
            // Init shares this process's group, so a terminal's signals (Ctrl-C, a resize)
            // reach it directly and it forwards them to the command, which runs in its own
            // session. Only signals sent to palisade itself are passed on from here.
            if let Ok((signal, from_terminal)) = sys::read_signal(fds.signals.as_fd()) {
                // With `--pty`, a resize of the caller's terminal is copied to the command's
                // terminal, whether the signal came from the terminal or from another process,
                // and init does not pass SIGWINCH on.
                if let (Some(session), libc::SIGWINCH) = (terminal.as_deref(), signal) {
                    session.copy_window_size();
                } else if !from_terminal {
                    let _ = sys::kill(pid, signal);
                    if matches!(signal, libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT) && kill_at.is_none() {
                        kill_at = Some(Instant::now() + TERMINATION_GRACE);
                    }
                }
            }
        }
    }
}

enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Init processes that reported the end of their run but were still tearing down their
/// namespaces when the supervisor returned.
static UNREAPED: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// Reaps a finished init if it has exited, and earlier ones that have exited since; one still
/// exiting is kept for the next call. Its status is not needed: init reported the outcome.
fn reap_finished(pid: libc::pid_t) {
    let mut unreaped = UNREAPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    unreaped.push(pid);
    unreaped.retain(|&pid| {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local integer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        rc == 0
    });
}

fn reap(pid: libc::pid_t) -> Option<(WaitStatus, sys::ResourceUsage)> {
    let (status, usage) = sys::wait4(pid).ok()?;
    if libc::WIFSIGNALED(status) {
        Some((WaitStatus::Signaled(libc::WTERMSIG(status)), usage))
    } else {
        Some((WaitStatus::Exited(libc::WEXITSTATUS(status)), usage))
    }
}

/// Kills init after a failure of palisade's own, reaps it, and removes the run's placeholders:
/// the supervisor created them before the go byte, and init may have created more.
fn abandon(pid: libc::pid_t, plan: &MountPlan, root_locks: &RootLocks) {
    let _ = sys::kill(pid, libc::SIGKILL);
    reap(pid);
    remove_placeholders(plan, root_locks);
}

/// Shared `flock` locks on the writable roots of a run, held from before it plans its mounts
/// until it ends.
///
/// Runs in one root share its placeholders: a run that finds one another run created adopts it
/// and mounts over it. So a run removes its placeholders only when it can then lock the root
/// exclusively, which means that no other run is live there. Otherwise the last run to end
/// removes them, since every run that uses a placeholder has it in its plan.
pub(crate) struct RootLocks {
    roots: Vec<(PathBuf, std::fs::File)>,
}

impl RootLocks {
    /// Locks each of `roots` shared, waiting while a run that is ending holds one exclusively.
    /// A root that cannot be opened or locked is left out, and its placeholders are removed as
    /// before, whatever other runs do.
    pub(crate) fn take(roots: &[PathBuf]) -> RootLocks {
        let mut locked = Vec::new();
        for root in roots {
            let Ok(dir) = std::fs::File::open(root) else { continue };
            match rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockShared) {
                Ok(()) => locked.push((root.clone(), dir)),
                Err(error) => tracing::debug!(%error, root = %root.display(), "failed to lock a writable root"),
            }
        }
        RootLocks { roots: locked }
    }

    /// Reports whether no other run is live in the root that contains `path`. Converting the
    /// lock may drop the shared one first (flock(2)), which no longer matters at the end of
    /// the run.
    fn is_alone(&self, path: &Path) -> bool {
        let root = self.roots.iter().filter(|(root, _)| path.starts_with(root)).max_by_key(|(root, _)| root.as_os_str().len());
        match root {
            Some((_, dir)) => rustix::fs::flock(dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok(),
            None => true,
        }
    }
}

/// Removes the run's placeholders from the host: at each path where the plan allowed one, a
/// FIFO with mode 000, when no other run is live in its root. Anything else there is left
/// alone: a path whose parent was missing got no placeholder, and the command may have created
/// the name itself. A failure is reported on stderr, and the next run in the same workspace
/// adopts and removes a leftover.
fn remove_placeholders(plan: &MountPlan, root_locks: &RootLocks) {
    // The placeholders of one directory usually follow each other in the plan (a workspace
    // has about ten), so its descriptor is kept for the next.
    let mut dir: Option<(&Path, OwnedFd)> = None;
    for path in plan.placeholders() {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
        if !root_locks.is_alone(path) {
            continue;
        }
        // The parent is opened without following symlinks: under a parent that was missing,
        // the command may have planted a symlink (`.git` pointing elsewhere), and what lies
        // behind it is not this run's.
        if dir.as_ref().is_none_or(|(open, _)| *open != parent) {
            dir = crate::mounts::open_host_dir(parent).ok().map(|fd| (parent, fd));
        }
        if let Some((_, fd)) = &dir {
            remove_placeholder(fd, path, name);
        }
    }
}

/// Removes the placeholder `name` in `dir`, if there is one. `path` names it in a warning.
fn remove_placeholder(dir: &OwnedFd, path: &Path, name: &std::ffi::OsStr) {
    let Ok(stat) = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else { return };
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo || stat.st_mode & 0o7777 != 0 {
        return;
    }
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(error) => eprintln!("palisade: warning: failed to remove placeholder {}: {}", path.display(), std::io::Error::from(error)),
    }
}

/// Names that must not be created but cannot be covered while missing, with whether each
/// existed before the run.
pub(crate) struct RevertList {
    entries: Vec<(PathBuf, bool)>,
}

impl RevertList {
    pub(crate) fn capture(paths: &[PathBuf]) -> RevertList {
        RevertList { entries: paths.iter().map(|path| (path.clone(), path.symlink_metadata().is_ok())).collect() }
    }

    /// Removes every listed name the run created. Only files, symlinks and empty directories are
    /// removed; anything else is reported and left for the user to inspect.
    pub(crate) fn apply(&self) {
        for (path, existed) in &self.entries {
            if *existed {
                continue;
            }
            let Ok(meta) = path.symlink_metadata() else { continue };
            let removed = if meta.is_dir() { std::fs::remove_dir(path) } else { std::fs::remove_file(path) };
            match removed {
                Ok(()) => eprintln!(
                    "palisade: removed {}, which the command created: git would read it from outside the sandbox",
                    path.display()
                ),
                Err(error) => eprintln!(
                    "palisade: warning: the command created {}, which git reads from outside the sandbox, and removing it failed: {error}; inspect it before running git there",
                    path.display()
                ),
            }
        }
    }
}

