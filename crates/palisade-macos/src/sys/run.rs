//! A confined run from start to end, on palisade's side.
//!
//! In order:
//! 1. Plan the limits; a limit the user set that macOS cannot hold fails the run here. This
//!    needs no system, so it comes first.
//! 2. Refuse inside another Seatbelt sandbox, before anything starts. The unconfined profile
//!    skips this step, because it applies no profile.
//! 3. For `--net allowlist`, start palisade's proxy on a loopback port of its own, with the
//!    run's credential.
//! 4. Build the request and generate the profile; create the run's own `TMPDIR`.
//! 5. With `--report`, start reading sandbox denials from the unified log.
//! 6. Start the thread that takes palisade's signals, then the stage (`palisade macos-stage`)
//!    with the request and status pipes, and send it the request. The stage confines itself
//!    and becomes the command.
//! 7. Wait for the command's exit, the timeout, the output limit or the grace after a
//!    terminating signal, without reaping the command, so its process id stays taken. The
//!    timeout counts from the stage's start. Then kill every process of the run, reap the
//!    command, read the stage's status, and collect the output counts, the proxy's record and
//!    the denials. From the stage's start on, a failure of palisade ends the run this way too
//!    and is reported with the outcome, never as a run that did not take place.
//! 8. Neutralise the repositories the run created and remove the run's `TMPDIR`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use palisade_policy::network::Rules;
use palisade_policy::scrub::NewRepositories;
use palisade_policy::{Limits, NetworkMode, Policy, Profile};
use palisade_proxy::thread::{ProxyRecord, ProxyThread};

use crate::canonical::HostFileSystem;
use crate::cleanup::remove_run_dir;
use crate::limits::{plan_limits, Enforcement, LimitPlan, LimitsError, Resource};
use crate::marker::{RunId, RunMarker};
use crate::nesting::NestedSandbox;
use crate::outcome::{format_duration, Deadlines, Exit, Expired, Layers, Limit, LimitEvent, NetworkDenial, NetworkRecord, Outcome, Usage};
use crate::profile::{generate, GenerateError};
use crate::request::{Request, RequestError};
use crate::stage::{command_environment, read_stage_end, StageEnd, StageRequest, MAX_REASON, REQUEST_FD, STAGE_SUBCOMMAND, STATUS_FD};
use crate::violations::select_run_denials;

use super::log::LogReader;

/// How long palisade waits for the output pipes to reach their end once every process of the
/// run has been killed.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long palisade waits for the log's last denials after the run.
const LOG_GRACE: Duration = Duration::from_millis(300);

/// Options of a confined run.
pub struct RunOptions {
    /// palisade's own executable, started again as `palisade macos-stage`.
    pub stage_exe: PathBuf,
    /// Read sandbox denials from the unified log for the report.
    pub read_log: bool,
}

/// The reason a run did not take place. Nothing of the command ran when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Nested(#[from] NestedSandbox),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("the sandbox stage failed before the command started: {0}")]
    Stage(String),
    #[error("failed to {operation}: {source}")]
    Io { operation: String, source: io::Error },
}

fn io_error(operation: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let operation = operation.into();
    move |source| RunError::Io { operation, source }
}

/// Runs `argv` confined by `policy`, or, for the unconfined profile, as the caller with the
/// rlimits, the timeout and the output limit only.
pub fn run(policy: &Policy, argv: &[OsString], options: &RunOptions) -> Result<Outcome, RunError> {
    // First, before any thread of the run exists.
    super::signals::block().map_err(io_error("block the signals palisade passes on to the command"))?;
    let limits = plan_limits(&policy.limits, &Limits::defaults(super::machine::memory_total()), policy.allow_degraded)?;
    if policy.profile == Profile::Unconfined {
        return run_unconfined(policy, argv, options, &limits);
    }
    super::check_not_nested_here()?;

    let proxy = match &policy.network {
        NetworkMode::Allowlist { allow, deny, .. } => Some(start_proxy(allow, deny)?),
        _ => None,
    };
    let machine = super::machine::current(policy, proxy.as_ref().map(|proxy| proxy.address().port()))
        .map_err(io_error("read the per-user directories of this Mac"))?;
    let request = Request::from_policy(policy, &machine, &HostFileSystem::new())?;
    let profile = generate(&request)?;
    let temp = RunTemp::create(&request.temp_dir)?;
    let proxy_env = proxy.as_ref().map(ProxyThread::environment);
    let stage_request = StageRequest {
        profile: Some(profile.text),
        rlimits: limits.rlimits.clone(),
        cwd: request.cwd.clone(),
        argv: argv.to_vec(),
        env: command_environment(&policy.env, &request.temp_dir, proxy_env.as_deref()),
    };

    let log = if options.read_log {
        LogReader::start(request.marker.clone())
            .inspect_err(|error| tracing::warn!("failed to read sandbox denials from the system log, so the report lists none: {error}"))
            .ok()
    } else {
        None
    };
    let started = Instant::now();
    let result = supervise(&options.stage_exe, &stage_request, &limits, &request.marker, started);
    let network = proxy.map(|proxy| network_record(proxy.stop())).unwrap_or_default();
    let log = log.map(|log| log.stop(LOG_GRACE));
    // An error means the command never started; dropping `temp` removes the directory.
    let mut outcome = result?;

    // When the last kill round found no process of the run, nothing can plant a repository
    // after this search. When one may still run, the scrub runs all the same, and the outcome
    // records that it may have come too early.
    let scrub_failures = NewRepositories::capture(&policy.filesystem.writable, &policy.filesystem.git_entries).scrub();
    outcome.supervisor_errors.extend(scrub_failures.into_iter().map(|failure| format!("failed to neutralise a repository the command created: {failure}")));
    if !outcome.all_killed {
        outcome.supervisor_errors.push(
            "processes of the run may still be running, so they can create a repository with hooks after palisade neutralised the new ones".into(),
        );
    }
    if let Err(error) = temp.remove(outcome.all_killed) {
        outcome.supervisor_errors.push(error);
    }
    outcome.network = network;
    outcome.layers.missing.extend(request.gaps.iter().map(|gap| format!("{}: {}", gap.what, gap.consequence)));
    if let Some(log) = log {
        if let Some(warning) = &log.warning {
            tracing::warn!("{warning}");
        }
        outcome.violations = select_run_denials(&log.observed, &outcome.run_pids).0;
        outcome.violations_read = log.complete;
    }
    Ok(outcome)
}

/// The entry of `layers.missing` about the kill of an unconfined run's processes.
const UNCONFINED_TREE_KILL: &str = "process tree: without a profile no process carries the run's marker, so a process that leaves the command's process group and whose parent exits is neither found nor killed when the run ends";

/// Runs `argv` unsandboxed through the stage, which still starts a session and lowers the
/// rlimits, so that the timeout and the output limit hold, and the end of the run kills the
/// command's descendants and process group.
fn run_unconfined(policy: &Policy, argv: &[OsString], options: &RunOptions, limits: &LimitPlan) -> Result<Outcome, RunError> {
    let env = policy
        .env
        .iter()
        .map(|var| {
            let mut entry = var.name.clone();
            entry.push("=");
            entry.push(&var.value);
            entry
        })
        .collect();
    let stage_request = StageRequest { profile: None, rlimits: limits.rlimits.clone(), cwd: policy.cwd.clone(), argv: argv.to_vec(), env };
    // No process carries this marker, so the kill rounds find the command's descendants and
    // process group only.
    let run_id = super::machine::random_run_id();
    let marker = RunMarker::for_run(&RunId::parse(&run_id).map_err(|reason| RunError::Io { operation: "make a run id".into(), source: io::Error::other(reason) })?);
    let mut outcome = supervise(&options.stage_exe, &stage_request, limits, &marker, Instant::now())?;
    // The stage applied no profile.
    outcome.layers.seatbelt = false;
    outcome.layers.missing.push(UNCONFINED_TREE_KILL.into());
    Ok(outcome)
}

/// Runs `/usr/bin/true` under `policy` as `palisade run` does, through the stage and with the
/// profile generated for it, for `palisade check`: a profile this macOS cannot compile fails
/// the check. Returns why the run failed, if it did.
pub fn check_run(policy: &Policy, stage_exe: &Path) -> Result<(), String> {
    let mut policy = policy.clone();
    policy.limits.timeout = Some(CHECK_TIMEOUT);
    let options = RunOptions { stage_exe: stage_exe.to_path_buf(), read_log: false };
    let outcome = run(&policy, &["/usr/bin/true".into()], &options).map_err(|error| error.to_string())?;
    if let Some(reason) = outcome.exec_error {
        return Err(reason);
    }
    if !outcome.supervisor_errors.is_empty() {
        return Err(outcome.supervisor_errors.join("; "));
    }
    match outcome.exit {
        Exit::Code(0) if outcome.layers.seatbelt => Ok(()),
        Exit::Code(0) => Err("the stage did not confirm that the profile was in place".into()),
        exit => Err(format!("/usr/bin/true ended with {} under the profile", exit.describe())),
    }
}

/// How long `palisade check` waits for `/usr/bin/true` under the default profile.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts palisade's proxy on a loopback port the system picks, which the profile then allows.
fn start_proxy(allow: &[String], deny: &[String]) -> Result<ProxyThread, RunError> {
    let rules = Rules::from_strings(allow, deny)
        .map_err(|error| RunError::Io { operation: "read the network allowlist".into(), source: io::Error::new(io::ErrorKind::InvalidInput, error.to_string()) })?;
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).map_err(io_error("listen on 127.0.0.1 for palisade's proxy"))?;
    ProxyThread::start(listener, rules).map_err(io_error("start palisade's proxy"))
}

fn network_record(record: ProxyRecord) -> NetworkRecord {
    NetworkRecord {
        proxy: record.address.map(|address| address.to_string()),
        denials: record
            .denials
            .into_iter()
            .map(|denial| NetworkDenial { destination: denial.destination, port: denial.port, protocol: denial.protocol.to_owned(), rule: denial.rule, reason: denial.reason })
            .collect(),
        denials_dropped: record.denials_dropped,
        auth_failures: record.auth_failures,
    }
}

/// A message from one of the run's threads to the supervisor.
enum Event {
    /// The command exited; it is not reaped yet.
    Exited,
    /// The output passed `max_output`.
    OutputLimit,
    /// palisade received this signal.
    Signal(libc::c_int),
}

/// Starts the stage, waits for the run to end, and kills and reaps what is left of it.
///
/// Returns an error only when the command did not start. Once the stage runs, the command may
/// have started, so every later failure of palisade ends the run, kills and reaps it, and is
/// listed in the outcome's `supervisor_errors` instead.
fn supervise(stage_exe: &Path, stage_request: &StageRequest, limits: &LimitPlan, marker: &RunMarker, started: Instant) -> Result<Outcome, RunError> {
    let (events, received) = mpsc::channel::<Event>();
    // Before the stage starts: a failure here leaves nothing running, and a Ctrl-C that comes
    // while the stage has not yet executed the command still reaches it.
    let (signal_sender, signals) = mpsc::channel();
    super::signals::forward_to(signal_sender).map_err(io_error("start the thread that takes palisade's signals"))?;
    forward_signals(signals, events.clone());

    let mut stage = start_stage(stage_exe, stage_request)?;
    let pid = stage.child.id() as i32;
    let mut failures = Vec::new();
    let (output_sender, output_reached) = mpsc::channel();
    let stdout = stage.child.stdout.take().expect("stdout is piped");
    let stderr = stage.child.stderr.take().expect("stderr is piped");
    let pumps = super::output::start(stdout, stderr, limits.max_output, output_sender)
        .inspect_err(|error| failures.push(format!("failed to start the threads that copy the command's output: {error}")))
        .ok();
    forward(output_reached, events.clone(), || Event::OutputLimit);
    if let Err(error) = wait_without_reaping(pid, events) {
        failures.push(error.to_string());
    }
    // A thread reads the status pipe meanwhile, so a stage never waits to write its failure.
    // Should the thread not start, the read below, after the kill, cannot block either.
    let status_reader = stage
        .status
        .try_clone()
        .and_then(|pipe| std::thread::Builder::new().name("palisade-stage-status".into()).spawn(move || read_status(&pipe)))
        .inspect_err(|error| tracing::debug!("failed to start the thread that reads the stage's status, so it is read after the run: {error}"))
        .ok();

    // The timeout counts from the stage's start, so a stage that hangs before it executes the
    // command ends as a command would. When a thread above failed, the run ends at once.
    let (ending, limit_event) = if failures.is_empty() { wait_for_end(pid, &received, limits, started) } else { (None, None) };
    let (reaped, usage) = kill_and_reap(pid, marker);
    let (stdout_bytes, stderr_bytes) = pumps.map_or((None, None), |pumps| pumps.finish(OUTPUT_GRACE));
    let usage = Usage { stdout_bytes: stdout_bytes.unwrap_or(0), stderr_bytes: stderr_bytes.unwrap_or(0), ..usage };

    // The stage is reaped now, or `execve` closed its status pipe, which nothing else holds,
    // so the read ends.
    let read = match status_reader {
        Some(reader) => reader.join().unwrap_or_else(|_| Err(io::Error::other("the thread that read it panicked"))),
        None => read_status(&stage.status),
    };
    let (status, stage_end) = match read {
        Ok(status) => {
            let end = read_stage_end(&status);
            (status, Some(end))
        }
        Err(error) => {
            failures.push(format!("failed to read the sandbox stage's status, so whether the command ran is unknown: {error}"));
            (Vec::new(), None)
        }
    };
    let mut outcome = match stage_end {
        Some(StageEnd::Failed { reason }) => {
            return Err(RunError::Stage(stage_failure(reason, status.is_empty(), ending, &reaped, &failures, limits)));
        }
        Some(StageEnd::ExecFailed { status, reason }) => {
            let mut outcome = outcome(Exit::Code(i32::from(status)), started, usage, limits);
            // The stage reports an exec failure only once the profile is in place.
            outcome.layers.seatbelt = true;
            outcome.exec_error = Some(reason);
            outcome
        }
        Some(StageEnd::Started) => {
            let mut outcome = outcome(ending.unwrap_or(reaped.exit), started, usage, limits);
            outcome.layers.seatbelt = true;
            outcome.limits_reached.extend(limit_event);
            outcome
        }
        // Whether the stage was confined is unknown, so the report claims no profile.
        None => outcome(ending.unwrap_or(reaped.exit), started, usage, limits),
    };
    outcome.all_killed = reaped.all_killed;
    outcome.survivors = reaped.survivors;
    outcome.run_pids = reaped.run_pids;
    outcome.supervisor_errors = failures;
    outcome.supervisor_errors.extend(reaped.errors);
    Ok(outcome)
}

/// Reads everything the stage writes to its status pipe, up to a few bytes past
/// [`MAX_REASON`].
fn read_status(pipe: &File) -> io::Result<Vec<u8>> {
    let mut status = Vec::new();
    pipe.take(MAX_REASON as u64 + 16).read_to_end(&mut status)?;
    Ok(status)
}

/// Describes a stage that ended before it started the command: palisade's own `failures`,
/// which ended the stage, the timeout, or the stage's `reason`, with how the stage ended when
/// it reported nothing (`silent`).
fn stage_failure(reason: String, silent: bool, ending: Option<Exit>, reaped: &Reaped, failures: &[String], limits: &LimitPlan) -> String {
    if !failures.is_empty() {
        return failures.join("; ");
    }
    match ending {
        Some(Exit::TimedOut) => {
            format!("the timeout of {} ended the stage before it started the command", format_duration(limits.timeout.unwrap_or_default()))
        }
        _ if silent => format!("{reason} ({})", reaped.exit.describe()),
        _ => reason,
    }
}

/// Waits until the command exits, the timeout expires, the output passes its limit, or the
/// grace after a terminating signal is over, passing signals on meanwhile. Returns how the run
/// ended when palisade ended it, and the limit it reached.
fn wait_for_end(pid: i32, received: &mpsc::Receiver<Event>, limits: &LimitPlan, started: Instant) -> (Option<Exit>, Option<LimitEvent>) {
    let mut deadlines = Deadlines::new(started, limits.timeout);
    loop {
        let event = match deadlines.next() {
            Some(at) => received.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => received.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Exited) => return (None, None),
            Ok(Event::OutputLimit) => return (Some(Exit::Killed(Limit::Output)), Some(LimitEvent::output(limits.max_output.unwrap_or(0)))),
            Ok(Event::Signal(signal)) => {
                // The command leads its own process group since the stage's setsid. Before
                // that, no group has its id, and the signal goes to the stage alone.
                // SAFETY: kill takes a process or group id and a signal number and touches no
                // memory. `pid` is not reaped yet, so neither id can name another process.
                if unsafe { libc::kill(-pid, signal) } != 0 {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, signal) };
                }
                if super::signals::ends_run(signal) {
                    deadlines.start_grace(Instant::now(), super::signals::TERMINATION_GRACE);
                }
            }
            Err(RecvTimeoutError::Timeout) => match deadlines.expired(Instant::now()) {
                Some(Expired::Timeout) => return (Some(Exit::TimedOut), Some(LimitEvent::timeout(limits.timeout.unwrap_or_default()))),
                // The grace after a terminating signal is over; the kill that follows ends the run.
                Some(Expired::Grace) => return (None, None),
                // Woken a moment early: wait again.
                None => {}
            },
            // Every sender is gone only when the waiter failed; the kill that follows ends the run.
            Err(RecvTimeoutError::Disconnected) => return (None, None),
        }
    }
}

/// Passes each signal from `signals` on to `events` as [`Event::Signal`].
fn forward_signals(signals: mpsc::Receiver<libc::c_int>, events: Sender<Event>) {
    std::thread::spawn(move || {
        for signal in signals {
            if events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    });
}

/// Builds the outcome of a run that ended with `exit`, with the layers the plan holds.
fn outcome(exit: Exit, started: Instant, usage: Usage, limits: &LimitPlan) -> Outcome {
    let rlimits = limits.rlimits.iter().map(|rlimit| format!("{}={}", rlimit_name(rlimit.resource), rlimit.value)).collect();
    let missing = limits
        .statuses
        .iter()
        .filter_map(|status| match &status.enforcement {
            Enforcement::NotEnforced { reason } => Some(format!("{}: not enforced: {reason}", status.limit)),
            _ => None,
        })
        .collect();
    Outcome {
        exit,
        exec_error: None,
        wall_time: started.elapsed(),
        usage,
        limits_reached: Vec::new(),
        layers: Layers { seatbelt: false, rlimits, limits: limits.statuses.clone(), missing },
        network: NetworkRecord::default(),
        violations: Vec::new(),
        violations_read: false,
        survivors: Vec::new(),
        supervisor_errors: Vec::new(),
        all_killed: false,
        run_pids: Vec::new(),
    }
}

/// Returns the report's name of an rlimit, as the Linux report spells it.
fn rlimit_name(resource: Resource) -> &'static str {
    match resource {
        Resource::Core => "core",
        Resource::Cpu => "cpu",
        Resource::FileSize => "fsize",
        Resource::OpenFiles => "nofile",
    }
}

/// Sends `event()` to `events` once `from` gets its first message.
fn forward(from: mpsc::Receiver<()>, events: Sender<Event>, event: impl FnOnce() -> Event + Send + 'static) {
    std::thread::spawn(move || {
        if from.recv().is_ok() {
            let _ = events.send(event());
        }
    });
}

/// The stage, started, with palisade's end of its status pipe.
struct StartedStage {
    child: Child,
    status: File,
}

/// Starts `palisade macos-stage` with the request on [`REQUEST_FD`] and the status pipe on
/// [`STATUS_FD`], and sends it the request from a thread.
fn start_stage(stage_exe: &Path, request: &StageRequest) -> Result<StartedStage, RunError> {
    let (request_read, request_write) = pipe("the stage's request pipe")?;
    let (status_read, status_write) = pipe("the stage's status pipe")?;
    let (request_fd, status_fd) = (request_read.as_raw_fd(), status_write.as_raw_fd());

    let mut command = Command::new(stage_exe);
    // The stage needs no environment of its own: it hands the command the one in the request.
    command.arg(STAGE_SUBCOMMAND).env_clear().stdin(Stdio::inherit()).stdout(Stdio::piped()).stderr(Stdio::piped());
    super::signals::unblock_in_child(&mut command);
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed; dup2 is one, and the hook allocates nothing. Both source descriptors are above
    // STATUS_FD (see `pipe`), so neither dup2 overwrites the other's source, and both stay open
    // in palisade until spawn returns.
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(request_fd, REQUEST_FD), (status_fd, STATUS_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let child = command.spawn().map_err(io_error(format!("start the sandbox stage {}", stage_exe.display())))?;
    drop((request_read, status_write));

    // A thread sends the request, so that a stage that never reads it cannot hold palisade:
    // killing the stage breaks the pipe and ends the write.
    let bytes = request.encode();
    let mut request_write = File::from(request_write);
    std::thread::spawn(move || {
        if let Err(error) = request_write.write_all(&bytes) {
            tracing::debug!("failed to send the sandbox stage its request: {error}");
        }
    });
    Ok(StartedStage { child, status: File::from(status_read) })
}

/// The lowest descriptor number `pipe` returns, so that the stage's fixed descriptors never
/// collide with palisade's own ends.
const FIRST_PIPE_FD: i32 = 10;

/// Creates a pipe whose two ends are close-on-exec and above [`FIRST_PIPE_FD`]. Returns (read,
/// write).
///
/// NOTE: macOS has no pipe2, so the original ends exist without close-on-exec for a moment. A
/// process that another thread of palisade started in that moment would inherit them. palisade
/// starts none then, but nothing in the system closes the window.
fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd), RunError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io_error(format!("create {what}"))(io::Error::last_os_error()));
    }
    // SAFETY: pipe returned two new descriptors that nothing else owns.
    let originals = unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] };
    let mut moved = Vec::with_capacity(2);
    for original in &originals {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor onto the lowest free number at
        // or above FIRST_PIPE_FD; it reads no memory.
        let fd = unsafe { libc::fcntl(original.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_PIPE_FD) };
        if fd < 0 {
            return Err(io_error(format!("create {what}"))(io::Error::last_os_error()));
        }
        // SAFETY: fcntl returned a new descriptor that nothing else owns.
        moved.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let write = moved.pop().expect("two descriptors");
    let read = moved.pop().expect("two descriptors");
    Ok((read, write))
}

/// Starts a thread that waits for process `pid` to exit without reaping it, so its id cannot be
/// reused before the run's processes are killed, and then sends [`Event::Exited`].
fn wait_without_reaping(pid: i32, events: Sender<Event>) -> Result<(), RunError> {
    std::thread::Builder::new()
        .name("palisade-wait".into())
        .spawn(move || loop {
            // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid siginfo_t for the call to fill; WNOWAIT leaves the
            // process to be reaped later.
            let status = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if status == 0 {
                let _ = events.send(Event::Exited);
                return;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The supervisor reaped the command after a timeout or the output limit.
                Some(libc::ECHILD) => return,
                _ => {
                    tracing::warn!("failed to wait for the command: {error}");
                    return;
                }
            }
        })
        .map_err(io_error("start the thread that waits for the command"))?;
    Ok(())
}

/// The exit of the command and what was left of the run.
struct Reaped {
    exit: Exit,
    survivors: Vec<i32>,
    /// The command and every process the kill rounds found.
    run_pids: Vec<i32>,
    /// Failures of palisade while it killed and reaped the run.
    errors: Vec<String>,
    /// Whether the last kill round read the process table and found no process of the run.
    all_killed: bool,
}

/// Kills every process of the run, then reaps the command (`pid`). Returns how it ended and its
/// resource usage.
fn kill_and_reap(pid: i32, marker: &RunMarker) -> (Reaped, Usage) {
    let report = super::kill_run(pid, marker);
    let mut errors = Vec::new();
    if let Some(error) = &report.listing_error {
        errors.push(format!(
            "failed to list the processes of the run, so only the command, its process group and the processes found before the failure were sent SIGKILL, and processes that left the group may still run: {error}"
        ));
    }
    if !report.survivors.is_empty() {
        errors.push(format!("processes {:?} of the run survived every kill round", report.survivors));
    }
    let all_killed = report.all_killed();
    let (survivors, mut run_pids) = (report.survivors, report.killed);
    run_pids.push(pid);

    let mut status = 0;
    // SAFETY: rusage is plain data, for which all zeroes is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `rusage` are valid for the call to fill; `pid` is palisade's own
        // child, which only this call reaps.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if reaped == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if reaped < 0 && error.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        errors.push(format!("failed to reap the command, so its exit status is unknown and reported as SIGKILL: {error}"));
        return (Reaped { exit: Exit::Signal(libc::SIGKILL), survivors, run_pids, errors, all_killed }, Usage::default());
    }
    let exit = if libc::WIFSIGNALED(status) { Exit::Signal(libc::WTERMSIG(status)) } else { Exit::Code(libc::WEXITSTATUS(status)) };
    let time = |value: libc::timeval| Duration::from_secs(value.tv_sec as u64) + Duration::from_micros(value.tv_usec as u64);
    let usage = Usage {
        user_cpu: Some(time(rusage.ru_utime)),
        system_cpu: Some(time(rusage.ru_stime)),
        // macOS gives ru_maxrss in bytes, where Linux gives kilobytes.
        peak_memory: Some(rusage.ru_maxrss as u64),
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    (Reaped { exit, survivors, run_pids, errors, all_killed }, usage)
}


/// The run's own temporary directory, which `TMPDIR` names inside. [`RunTemp::remove`]
/// removes it once the run has ended; dropping it without that, after a run that never
/// started, removes it too.
struct RunTemp {
    path: PathBuf,
    removed: bool,
}

impl RunTemp {
    fn create(path: &Path) -> Result<RunTemp, RunError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io_error(format!("create the run's temporary directory {}", path.display())))?;
        Ok(RunTemp { path: path.to_path_buf(), removed: false })
    }

    /// Removes the directory, giving what the command made unremovable its permissions back
    /// when `all_killed` shows that no process of the run can still change the tree (see
    /// [`remove_run_dir`]).
    fn remove(mut self, all_killed: bool) -> Result<(), String> {
        self.removed = true;
        remove_run_dir(&self.path, all_killed).map_err(|error| format!("failed to remove the run's temporary directory {}: {error}", self.path.display()))
    }
}

impl Drop for RunTemp {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Only a run that never started drops its directory here, so nothing of the command
        // can change the tree.
        if let Err(error) = remove_run_dir(&self.path, true) {
            tracing::warn!("failed to remove the run's temporary directory {}: {error}", self.path.display());
        }
    }
}
