//! A run from start to end: the confined run through `palisade windows-runner`, the
//! unconfined run as the caller, and the runner's own side.
//!
//! A confined run, in order:
//! 1. Check that setup is in place: the account's credentials, the ACL entries and the
//!    firewall filters. Nothing is created before this, and a run without setup fails closed.
//! 2. Create the run's temporary directory and the placeholders of protected names.
//! 3. Create the job, then the output, request and status pipes.
//! 4. Start the runner as the sandbox account, suspended, and assign it to the job. Duplicate
//!    the command's stdin and the status pipe into it, resume it, and send the request.
//! 5. The runner derives the restricted Low token from its own and starts the command inside
//!    the same job, then exits with the command's exit code.
//! 6. Wait for the runner, the timeout or the output limit; terminate whatever is left in the
//!    job; read the runner's status and the job's accounting.

use std::ffi::OsString;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::network::Rules;
use palisade_policy::{EnvVar, Limits, NetworkMode, Policy};
use windows_sys::Win32::Foundation::{HANDLE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::Security::{DuplicateTokenEx, SecurityImpersonation, TokenPrimary, TOKEN_ALL_ACCESS, TOKEN_DUPLICATE, TOKEN_QUERY};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken, TerminateProcess, WaitForMultipleObjects, INFINITE};

use crate::cmdline::quote_args;
use crate::environment::Environment;
use crate::handoff::{RunnerRequest, RunnerStatus, TokenSpec, MAX_REQUEST_BYTES};
use crate::outcome::{format_duration, Enforced, Exit, ExitCode, Limit, LimitEvent, NetworkRecord, Outcome, Usage};
use crate::path::WinPath;
use crate::plan::{AccountKind, JobPlan, NetworkPlan, Plan, PlanError, Request, TokenPlan};

use super::error::Code;
use super::job::{Job, TERMINATED_EXIT_CODE};
use super::proxy::{is_proxy_variable, ProxyThread};
use super::output::{pipe, read_to_end, write_all, OutputPipes, Pumps};
use super::spawn::{create_process, duplicate, exec_status, open_null, prepare_command, std_handle, Event, Identity, Prepared, PrepareError, Process, ProcessSpec, StdStream, Stdio};
use super::{account, acl, token, wfp};

/// The fix a refused run names when setup is missing.
const SETUP_FIX: &str = "run `palisade setup` with the same policy options, from an elevated prompt";
use super::Error;

/// The hidden subcommand of the palisade binary that runs [`runner_main`].
pub const RUNNER_SUBCOMMAND: &str = "windows-runner";

/// The runner's exit code when it failed before starting the command. palisade reads the
/// reason from the status pipe, so the code only matters to someone who starts the runner by
/// hand.
const RUNNER_FAILED: u32 = 125;

/// How long palisade waits for the output pipes to reach their end once every process of the
/// run has been terminated.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Options of a confined run.
pub struct RunOptions {
    /// The palisade executable, started again as `palisade windows-runner`. The sandbox
    /// accounts must be able to read and execute it.
    pub runner_exe: PathBuf,
}

/// Runs `argv` confined by `plan`. `env` is the command's complete environment, from the
/// resolved policy.
pub fn run(plan: &Plan, request: &Request, argv: &[OsString], env: &[EnvVar], options: &RunOptions) -> Result<Outcome, Error> {
    let credentials = require_setup(plan)?;
    // The proxy starts before the command so that its address and credential can go into the
    // command's environment. The caller's own proxy settings are dropped, because a proxy the
    // offline account cannot reach would take precedence in some tools.
    let proxy = match (&plan.network, &request.network) {
        (NetworkPlan::Proxy, NetworkMode::Allowlist { allow, deny, .. }) => {
            let rules = Rules::from_strings(allow, deny).map_err(|error| Error::Io {
                what: "the allowlist".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string()),
            })?;
            Some(ProxyThread::start(rules)?)
        }
        _ => None,
    };
    let filtered: Vec<EnvVar>;
    let env = match &proxy {
        Some(_) => {
            filtered = env.iter().filter(|var| !var.name.to_str().is_some_and(is_proxy_variable)).cloned().collect();
            &filtered[..]
        }
        None => env,
    };

    let mut command = CommandSpec::new(argv, &request.cwd.to_string(), env)?;
    let temp = RunTemp::create(&plan.files.temp_root, &plan.accounts)?;
    command.set_env("TEMP", &temp.path)?;
    command.set_env("TMP", &temp.path)?;
    if let Some(proxy) = &proxy {
        for (name, value) in proxy.environment() {
            command.set_env(&name, &value)?;
        }
    }
    let missing_placeholders: Vec<WinPath> = plan.files.placeholders.iter().filter(|path| placeholder_needed(path)).cloned().collect();
    let _placeholders = acl::Placeholders::create(&missing_placeholders, &plan.accounts)?;

    // The runner is one more process of the job, so the limit counts it.
    let job_plan = JobPlan { active_processes: plan.job.active_processes.map(|count| count.saturating_add(1)), ..plan.job.clone() };
    let job = Job::create(&job_plan)?;
    // TODO: grant the sandbox account access to the window station and desktop, or give the
    // run a desktop of its own. CreateProcessWithLogonW's documentation says the caller must
    // add that permission, even for WinSta0\Default; the service also gives the new process
    // the caller's logon SID, which the interactive desktop grants, so a runner may start
    // without it. Which holds is unverified, and cannot be seen under Wine.
    let runner = RunnerLaunch {
        exe: &options.runner_exe,
        args: &[RUNNER_SUBCOMMAND],
        identity: Identity::Logon { user: &credentials.name, password: &credentials.password },
    };
    let mut outcome = run_through_runner(&job, runner, &command, &plan.token)?;
    outcome.enforced = Enforced {
        job: true,
        account: Some(credentials.name.clone()),
        restricted_token: true,
        acl_verified: true,
        firewall_verified: plan.account == AccountKind::Offline,
    };
    if let Some(proxy) = proxy {
        outcome.network = proxy.stop();
    }
    Ok(outcome)
}

/// Checks that `palisade setup` prepared this caller's sandbox, and returns the credentials of
/// the account that runs the command. Any failure here names `palisade setup`, because setup
/// is what creates, and repairs, everything checked.
fn require_setup(plan: &Plan) -> Result<account::Credentials, Error> {
    let name_setup = |error: Error| match error {
        Error::NotSetUp { .. } => error,
        other => Error::NotSetUp { what: format!("the sandbox of this user ({other})"), fix: SETUP_FIX.into() },
    };
    let credentials = account::load(&plan.accounts, plan.account).map_err(name_setup)?;
    acl::verify(&plan.files, &plan.accounts).map_err(name_setup)?;
    wfp::verify(&plan.filters, &plan.accounts).map_err(name_setup)?;
    Ok(credentials)
}

/// Returns whether a protected name needs a placeholder now: it does not exist, and its parent
/// does.
fn placeholder_needed(path: &WinPath) -> bool {
    let exists = |path: &WinPath| std::fs::symlink_metadata(path.to_verbatim()).is_ok();
    !exists(path) && path.parent().is_some_and(|parent| exists(&parent))
}

/// Runs `argv` as the caller, for `--profile unconfined`: no account, token, ACL or firewall.
/// The command still runs in a job object with kill on close, so that no process of the run
/// outlives it, and with the policy's timeout, output limit and the job's limits.
pub fn run_unconfined(policy: &Policy, argv: &[OsString]) -> Result<Outcome, Error> {
    let job_plan = unconfined_job(&policy.limits, super::machine::cpu_count())?;
    let cwd = WinPath::parse(&policy.cwd.to_string_lossy()).map(|path| path.to_string()).unwrap_or_else(|_| policy.cwd.to_string_lossy().into_owned());
    let command = CommandSpec::new(argv, &cwd, &policy.env)?;
    let job = Job::create(&job_plan)?;
    let started = Instant::now();
    let prepared = match prepare_command(&command.argv, &command.cwd, &command.environment) {
        Ok(prepared) => prepared,
        Err(PrepareError::NotFound(name)) => return Ok(exec_failed(crate::outcome::EXIT_NOT_FOUND, format!("{name}: not found"), started)),
        Err(PrepareError::CommandLine(error)) => return Err(command_line_error(error)),
        Err(PrepareError::System(error)) => return Err(error),
    };
    let outputs = OutputPipes::create()?;
    let stdin = command_stdin()?;
    let spec = ProcessSpec {
        application: &prepared.application,
        command_line: &prepared.command_line,
        environment_block: &command.environment.to_block(),
        cwd: &command.cwd,
        stdio: Stdio { stdin: stdin.as_handle(), stdout: outputs.stdout_write.as_handle(), stderr: outputs.stderr_write.as_handle() },
        suspended: true,
    };
    let process = match create_process(&spec, Identity::Caller) {
        Ok(process) => process,
        Err(error) => {
            return match exec_status(&error) {
                Some(status) => Ok(exec_failed(status, format!("{}: {error}", crate::cmdline::Lossy(&prepared.application)), started)),
                None => Err(error),
            };
        }
    };
    assign_or_kill(&job, &process)?;
    let limit_event = Arc::new(Event::new("the output limit event")?);
    let pumps = outputs.start(job.plan().max_output, Arc::clone(&limit_event))?;
    process.resume()?;
    let collected = collect(&job, &process, pumps, &limit_event, started)?;
    let mut outcome = collected.into_outcome();
    outcome.enforced.job = true;
    Ok(outcome)
}

/// Builds the job plan of an unconfined run: the policy's limits, without UI restrictions, which would
/// only get in the way of the caller's own programs. Limits Windows cannot enforce are refused,
/// as the plan refuses them for a confined run.
fn unconfined_job(limits: &Limits, cpu_count: u32) -> Result<JobPlan, Error> {
    let unsupported = [
        ("max_file_size", limits.max_file_size, "Windows has no limit on the size of one file"),
        ("max_open_files", limits.max_open_files, "Windows has no limit on the handles of one process"),
        ("tmp_size", limits.tmp_size, "the temporary directory is on a disk, not a sized tmpfs"),
    ];
    if let Some((limit, _, reason)) = unsupported.into_iter().find(|(_, value, _)| value.is_some()) {
        return Err(Error::Plan(PlanError::LimitUnsupported { limit, reason }));
    }
    let cpus = u64::from(cpu_count.max(1));
    Ok(JobPlan {
        kill_on_close: true,
        allow_breakaway: false,
        die_on_unhandled_exception: true,
        job_memory: limits.memory,
        active_processes: limits.max_procs.map(|count| count.min(u64::from(u32::MAX)) as u32),
        job_user_time: limits.cpu_time,
        cpu_rate: limits.cpus_milli.map(|milli| (milli * 10 / cpus).clamp(1, 10_000) as u32),
        ui_restrictions: false,
        timeout: limits.timeout,
        max_output: limits.max_output,
    })
}

/// The command of a run, in the form Windows takes.
struct CommandSpec {
    argv: Vec<Vec<u16>>,
    cwd: Vec<u16>,
    environment: Environment,
}

impl CommandSpec {
    fn new(argv: &[OsString], cwd: &str, env: &[EnvVar]) -> Result<CommandSpec, Error> {
        let environment = Environment::new(env.iter().map(|var| (wide(&var.name), wide(&var.value))))
            .map_err(|error| Error::Io { what: "the command's environment".into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error) })?;
        Ok(CommandSpec { argv: argv.iter().map(|arg| wide(arg)).collect(), cwd: cwd.encode_utf16().collect(), environment })
    }

    fn set_env(&mut self, name: &str, value: &str) -> Result<(), Error> {
        let name: Vec<u16> = name.encode_utf16().collect();
        let value: Vec<u16> = value.encode_utf16().collect();
        self.environment
            .set(&name, &value)
            .map_err(|error| Error::Io { what: "the command's environment".into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error) })
    }
}

fn wide(text: &std::ffi::OsStr) -> Vec<u16> {
    text.encode_wide().collect()
}

fn command_line_error(error: crate::cmdline::CommandLineError) -> Error {
    Error::Io { what: "the command line".into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error) }
}

/// Returns the standard input the command gets: palisade's own, or `NUL` when palisade has
/// none.
///
/// NOTE: a console is passed as it is. A confined command runs as the sandbox account, with no
/// console of palisade's attached, so reading from one may fail; unverified on Windows.
fn command_stdin() -> Result<OwnedHandle, Error> {
    match std_handle(StdStream::Input) {
        Some(stdin) => stdin.try_clone_to_owned().map_err(|source| Error::Io { what: "failed to duplicate palisade's stdin".into(), source }),
        None => open_null(),
    }
}

/// Builds the outcome of a command that could not be started: status 126 or 127.
fn exec_failed(status: u8, reason: String, started: Instant) -> Outcome {
    Outcome {
        exit: Exit::Code(ExitCode { status, raw: u32::from(status), crash: None }),
        raw_exit_code: None,
        exec_error: Some(reason),
        wall_time: started.elapsed(),
        usage: Usage::default(),
        limits_reached: Vec::new(),
        enforced: Enforced::default(),
        network: NetworkRecord::default(),
    }
}

/// Assigns a suspended process to the job, or terminates it: outside the job, nothing would
/// end it with the run.
fn assign_or_kill(job: &Job, process: &Process) -> Result<(), Error> {
    if let Err(error) = job.assign(process.handle.as_handle()) {
        // SAFETY: the handle is valid and has PROCESS_TERMINATE (full access from creation).
        unsafe { TerminateProcess(process.handle.as_raw_handle(), TERMINATED_EXIT_CODE) };
        return Err(error);
    }
    Ok(())
}

/// The way the first process of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exited,
    TimedOut,
    OutputLimit,
}

/// The facts palisade collects about a run once its processes are gone.
struct Collected {
    ending: Ending,
    ended_by: Option<Limit>,
    raw_exit_code: u32,
    job_plan: JobPlan,
    usage: Usage,
    limits_reached: Vec<LimitEvent>,
    wall_time: Duration,
}

/// Waits for `process` (the command, or the runner), the timeout or the output limit. Then
/// terminates what is left in the job, and collects the output counts and the accounting.
fn collect(job: &Job, process: &Process, pumps: Pumps, limit_event: &Event, started: Instant) -> Result<Collected, Error> {
    let ending = wait_for_end(job, process, limit_event, started)?;
    let raw_exit_code = process.exit_code()?;
    let wall_time = started.elapsed();
    // Whatever the command left running ends with the run, as on Linux.
    if let Err(error) = job.terminate(TERMINATED_EXIT_CODE) {
        tracing::warn!("{error}; the job's remaining processes end when palisade closes it");
    }
    let (stdout_bytes, stderr_bytes) = pumps.finish(OUTPUT_GRACE);
    let accounting = job.accounting().map_err(|error| tracing::warn!("the run's usage is not reported: {error}")).ok();
    let usage = Usage {
        user_cpu: accounting.as_ref().map(|a| a.user_time),
        kernel_cpu: accounting.as_ref().map(|a| a.kernel_time),
        peak_memory: accounting.as_ref().map(|a| a.peak_job_memory).filter(|&bytes| bytes > 0),
        peak_processes: Some(job.peak_processes()).filter(|&count| count > 0),
        total_processes: accounting.as_ref().map(|a| u64::from(a.total_processes)),
        stdout_bytes,
        stderr_bytes,
    };
    Ok(Collected { ending, ended_by: job.ended_by(), raw_exit_code, job_plan: job.plan().clone(), usage, limits_reached: job.limit_events(), wall_time })
}

fn wait_for_end(job: &Job, process: &Process, limit_event: &Event, started: Instant) -> Result<Ending, Error> {
    let deadline = job.plan().timeout.map(|timeout| started + timeout);
    let handles: [HANDLE; 2] = [process.handle.as_raw_handle(), limit_event.raw()];
    let wait_ms = deadline.map_or(INFINITE, |deadline| {
        let left = deadline.saturating_duration_since(Instant::now()).as_millis();
        u32::try_from(left).unwrap_or(INFINITE - 1).min(INFINITE - 1)
    });
    // SAFETY: both handles are valid and waitable for the duration of the call.
    let ending = match unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, wait_ms) } {
        WAIT_OBJECT_0 => return Ok(Ending::Exited),
        signalled if signalled == WAIT_OBJECT_0 + 1 => Ending::OutputLimit,
        WAIT_TIMEOUT => Ending::TimedOut,
        WAIT_FAILED => return Err(Error::last("WaitForMultipleObjects", format!("process {}", process.pid))),
        other => return Err(Error::Call { call: "WaitForMultipleObjects", object: format!("process {}", process.pid), code: Code(other) }),
    };
    job.terminate(TERMINATED_EXIT_CODE)?;
    process.wait(None)?;
    Ok(ending)
}

impl Collected {
    /// Builds the outcome, naming the limit that ended the run: palisade's own timeout and
    /// output limit, the memory limit at which the job watcher terminated the job, or the CPU
    /// time limit, at which Windows terminated it.
    fn into_outcome(self) -> Outcome {
        let mut limits_reached = self.limits_reached;
        let plan = &self.job_plan;
        let (exit, raw_exit_code) = match self.ending {
            Ending::TimedOut => {
                let timeout = plan.timeout.unwrap_or_default();
                limits_reached.push(LimitEvent {
                    limit: Limit::Timeout,
                    value: timeout.as_millis() as u64,
                    ended_run: true,
                    message: format!("the command did not finish within its timeout of {}; every process was killed", format_duration(timeout)),
                });
                (Exit::TimedOut, None)
            }
            Ending::OutputLimit => {
                let max = plan.max_output.unwrap_or_default();
                limits_reached.push(LimitEvent {
                    limit: Limit::Output,
                    value: max,
                    ended_run: true,
                    message: format!(
                        "the run wrote more than its output limit of {}; the output was cut and every process was killed",
                        crate::outcome::format_size(max)
                    ),
                });
                (Exit::Killed(Limit::Output), None)
            }
            Ending::Exited if self.ended_by == Some(Limit::Memory) => (Exit::Killed(Limit::Memory), None),
            Ending::Exited if cpu_time_expired(plan, &self.usage) => {
                let limit = plan.job_user_time.unwrap_or_default();
                limits_reached.push(LimitEvent {
                    limit: Limit::CpuTime,
                    value: limit.as_millis() as u64,
                    ended_run: true,
                    message: format!("the run's processes used their CPU time limit of {}; every process was killed", format_duration(limit)),
                });
                (Exit::Killed(Limit::CpuTime), None)
            }
            Ending::Exited => (Exit::Code(ExitCode::from_raw(self.raw_exit_code)), Some(self.raw_exit_code)),
        };
        Outcome {
            exit,
            raw_exit_code,
            exec_error: None,
            wall_time: self.wall_time,
            usage: self.usage,
            limits_reached,
            enforced: Enforced::default(),
            network: NetworkRecord::default(),
        }
    }
}

/// Returns whether Windows ended the run at its CPU time limit: the job's user time reached it.
/// Windows terminates every process of the job at that moment, and posts no message for it.
fn cpu_time_expired(plan: &JobPlan, usage: &Usage) -> bool {
    matches!((plan.job_user_time, usage.user_cpu), (Some(limit), Some(used)) if used >= limit)
}

/// The way the runner process is started: its executable, arguments and identity.
struct RunnerLaunch<'a> {
    /// The palisade executable.
    exe: &'a std::path::Path,
    /// The arguments after the program name: the hidden subcommand.
    args: &'a [&'a str],
    identity: Identity<'a>,
}

/// Starts the runner in `job`, hands it the command, and waits for the run to end.
fn run_through_runner(job: &Job, runner: RunnerLaunch<'_>, command: &CommandSpec, token: &TokenPlan) -> Result<Outcome, Error> {
    let started = Instant::now();
    let outputs = OutputPipes::create()?;
    let (request_read, request_write) = pipe("the runner's request pipe")?;
    let (status_read, status_write) = pipe("the runner's status pipe")?;
    let exe: Vec<u16> = wide(runner.exe.as_os_str());
    let mut runner_argv = vec![exe.clone()];
    runner_argv.extend(runner.args.iter().map(|arg| arg.encode_utf16().collect::<Vec<u16>>()));
    let command_line = quote_args(&runner_argv).map_err(command_line_error)?;
    let environment_block = command.environment.to_block();
    let spec = ProcessSpec {
        application: &exe,
        command_line: &command_line,
        environment_block: &environment_block,
        cwd: &command.cwd,
        stdio: Stdio { stdin: request_read.as_handle(), stdout: outputs.stdout_write.as_handle(), stderr: outputs.stderr_write.as_handle() },
        suspended: true,
    };
    let process = create_process(&spec, runner.identity)?;
    drop(request_read);
    assign_or_kill(job, &process)?;

    // From here on the runner is in the job: any error return drops the job and ends it.
    let stdin = command_stdin()?;
    let request = RunnerRequest {
        stdin_handle: duplicate(stdin.as_handle(), Some(process.handle.as_handle()), false, "the command's stdin")?,
        status_handle: duplicate(status_write.as_handle(), Some(process.handle.as_handle()), false, "the runner's status pipe")?,
        token: TokenSpec::from_plan(token),
        cwd: command.cwd.clone(),
        argv: command.argv.clone(),
        environment_block,
    };
    // Only the runner may hold the status pipe's write end, so its end is the runner's end.
    drop(status_write);
    let limit_event = Arc::new(Event::new("the output limit event")?);
    let pumps = outputs.start(job.plan().max_output, Arc::clone(&limit_event))?;
    process.resume()?;
    // A thread writes the request, so that a runner that never reads it cannot hold palisade
    // past the timeout: terminating the job breaks the pipe and ends the write.
    let request = request.encode();
    let sender = std::thread::Builder::new()
        .name("palisade-runner-request".into())
        .spawn(move || write_all(request_write.as_handle(), &request))
        .map_err(|source| Error::Io { what: "failed to start the thread that sends the runner its request".into(), source })?;

    let collected = collect(job, &process, pumps, &limit_event, started)?;
    // A failed write shows in the runner's status, or in its absence.
    let sent = sender.join().unwrap_or(false);
    let status_bytes = read_to_end(status_read.as_handle(), MAX_REQUEST_BYTES + 1);
    let statuses = RunnerStatus::decode_all(&status_bytes)
        .map_err(|error| runner_failed(format!("its status could not be read: {error}")))?;
    for status in &statuses {
        match status {
            RunnerStatus::Failed { reason } => return Err(runner_failed(reason.clone())),
            RunnerStatus::ExecFailed { status, reason } => return Ok(exec_failed(*status, reason.clone(), started)),
            RunnerStatus::Started { .. } => {}
        }
    }
    let started_command = statuses.iter().any(|status| matches!(status, RunnerStatus::Started { .. }));
    if !started_command && collected.ending == Ending::Exited {
        let request_note = if sent { "" } else { " (the request could not be sent to it)" };
        return Err(runner_failed(format!(
            "it ended with exit code 0x{:08X}{request_note} before it started the command",
            collected.raw_exit_code
        )));
    }
    Ok(collected.into_outcome())
}

fn runner_failed(reason: String) -> Error {
    Error::Io { what: "the sandbox runner failed".into(), source: std::io::Error::other(reason) }
}

/// Runs `argv` through a runner started as the caller, for the tests of the handoff, which Wine
/// can run: the runner is `runner_exe` with `runner_args`, and it derives the command's token
/// however it was built to (see [`duplicate_own_token`]). The command is not confined.
#[doc(hidden)]
pub fn run_through_runner_as_caller(
    runner_exe: &std::path::Path,
    runner_args: &[&str],
    argv: &[OsString],
    cwd: &str,
    env: &[EnvVar],
    job_plan: &JobPlan,
) -> Result<Outcome, Error> {
    let command = CommandSpec::new(argv, cwd, env)?;
    let job = Job::create(job_plan)?;
    let token = TokenSpec { integrity: crate::plan::Integrity::Low, deny_only: Vec::new(), keep_privilege: "SeChangeNotifyPrivilege".into() }.to_plan();
    let mut outcome = run_through_runner(&job, RunnerLaunch { exe: runner_exe, args: runner_args, identity: Identity::Caller }, &command, &token)?;
    outcome.enforced.job = true;
    Ok(outcome)
}

/// A token function for a test runner: a primary token that duplicates the runner's own,
/// ignoring `plan`. It confines nothing.
#[doc(hidden)]
pub fn duplicate_own_token(_plan: &TokenPlan) -> Result<OwnedHandle, Error> {
    let mut own: HANDLE = std::ptr::null_mut();
    // SAFETY: the current process pseudo-handle needs no closing; `own` is a valid out-pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_DUPLICATE | TOKEN_QUERY, &mut own) } == 0 {
        return Err(Error::last("OpenProcessToken", "the runner's token"));
    }
    // SAFETY: a new handle owned by nobody else.
    let own = unsafe { OwnedHandle::from_raw_handle(own) };
    let mut primary: HANDLE = std::ptr::null_mut();
    // SAFETY: `own` has TOKEN_DUPLICATE; no security attributes; `primary` is a valid
    // out-pointer.
    let ok = unsafe { DuplicateTokenEx(own.as_raw_handle(), TOKEN_ALL_ACCESS, std::ptr::null(), SecurityImpersonation, TokenPrimary, &mut primary) };
    if ok == 0 {
        return Err(Error::last("DuplicateTokenEx", "the runner's token"));
    }
    // SAFETY: a new handle owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(primary) })
}

/// The per-run temporary directory below setup's temporary root; removed when dropped.
struct RunTemp {
    path: String,
}

/// `FILE_GENERIC_READ | FILE_GENERIC_WRITE | FILE_GENERIC_EXECUTE | DELETE`: what icacls calls
/// Modify.
const MODIFY: u32 = 0x0013_01bf;

impl RunTemp {
    /// Creates the directory with a DACL of its own, protected from inheritance: SYSTEM, the
    /// caller and this caller's two sandbox accounts, with a Low label. The temporary root
    /// carries the inheritable grants of every caller's setup, so without the protection the
    /// sandbox accounts of another user on the machine could read this run's files.
    fn create(root: &WinPath, accounts: &crate::plan::Accounts) -> Result<RunTemp, Error> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let name = format!("run-{}-{nanos:08x}", std::process::id());
        let path = root.join(&name).map_err(|source| Error::Plan(PlanError::Path { what: "the run's temporary directory", path: name.clone(), source }))?;
        let caller = super::security::current_user_sid()?;
        let [offline, online] = super::security::account_sids(accounts)?;
        let sddl = format!(
            "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;{caller})(A;OICI;0x{MODIFY:x};;;{offline})(A;OICI;0x{MODIFY:x};;;{online})S:(ML;OICI;NW;;;LW)"
        );
        let descriptor = super::security::Descriptor::from_sddl(&sddl)?;
        let attributes = windows_sys::Win32::Security::SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<windows_sys::Win32::Security::SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor.as_ptr(),
            bInheritHandle: 0,
        };
        let wide_path = super::security::wide(&path.to_verbatim());
        // SAFETY: `wide_path` is NUL-terminated, and `attributes` points to `descriptor`; both
        // outlive the call.
        let created = unsafe { windows_sys::Win32::Storage::FileSystem::CreateDirectoryW(wide_path.as_ptr(), &attributes) };
        if created != 0 {
            return Ok(RunTemp { path: path.to_string() });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::NotFound {
            return Err(Error::NotSetUp { what: format!("palisade's temporary directory {root}"), fix: SETUP_FIX.into() });
        }
        Err(Error::Io { what: format!("failed to create the run's temporary directory {path}"), source: error })
    }
}

impl Drop for RunTemp {
    fn drop(&mut self) {
        let verbatim = WinPath::parse(&self.path).map(|path| path.to_verbatim()).unwrap_or_else(|_| self.path.clone());
        if let Err(error) = std::fs::remove_dir_all(&verbatim) {
            tracing::warn!("failed to remove the run's temporary directory {}: {error}", self.path);
        }
    }
}

/// Serves the runner's side: `palisade windows-runner`, started by a confined run as the
/// sandbox account. Returns the exit code to exit with: the command's own, or 126, 127 or
/// [`RUNNER_FAILED`].
pub fn runner_main() -> u32 {
    runner_main_with(token::sandbox_token)
}

/// Runs [`runner_main`] with the function that derives the command's token; tests under Wine pass
/// one that duplicates the runner's own token.
#[doc(hidden)]
pub fn runner_main_with(make_token: impl FnOnce(&TokenPlan) -> Result<OwnedHandle, Error>) -> u32 {
    let Some(stdin) = std_handle(StdStream::Input) else {
        eprintln!("palisade windows-runner: no request: the runner has no standard input");
        return RUNNER_FAILED;
    };
    let request = match RunnerRequest::decode(&read_to_end(stdin, MAX_REQUEST_BYTES + 1)) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("palisade windows-runner: {error}");
            return RUNNER_FAILED;
        }
    };
    // SAFETY: palisade duplicated both handles into this process for the runner alone, and
    // nothing else here refers to them.
    let (status, command_stdin) =
        unsafe { (OwnedHandle::from_raw_handle(request.status_handle as HANDLE), OwnedHandle::from_raw_handle(request.stdin_handle as HANDLE)) };
    let report = |message: RunnerStatus| {
        if !write_all(status.as_handle(), &message.encode()) {
            eprintln!("palisade windows-runner: failed to report to palisade: {}", std::io::Error::last_os_error());
        }
    };
    match start_command(&request, command_stdin.as_handle(), make_token) {
        Ok(process) => {
            report(RunnerStatus::Started { pid: process.pid });
            drop(status);
            match process.wait(None).and_then(|_| process.exit_code()) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("palisade windows-runner: {error}");
                    RUNNER_FAILED
                }
            }
        }
        Err(RunnerError::Exec { status, reason }) => {
            report(RunnerStatus::ExecFailed { status, reason });
            u32::from(status)
        }
        Err(RunnerError::Failed(reason)) => {
            report(RunnerStatus::Failed { reason });
            RUNNER_FAILED
        }
    }
}

enum RunnerError {
    Exec { status: u8, reason: String },
    Failed(String),
}

/// The longest reason the runner reports, so that it always fits in the status pipe's buffer.
const MAX_REASON: usize = 2048;

fn failed(error: impl std::fmt::Display) -> RunnerError {
    let mut reason = error.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    RunnerError::Failed(reason)
}

/// Derives the token and starts the command with it, inside the runner's job.
fn start_command(
    request: &RunnerRequest,
    stdin: BorrowedHandle<'_>,
    make_token: impl FnOnce(&TokenPlan) -> Result<OwnedHandle, Error>,
) -> Result<Process, RunnerError> {
    let environment = Environment::from_block(&request.environment_block).map_err(failed)?;
    let token = make_token(&request.token.to_plan()).map_err(failed)?;
    let Prepared { application, command_line } = match prepare_command(&request.argv, &request.cwd, &environment) {
        Ok(prepared) => prepared,
        Err(PrepareError::NotFound(name)) => return Err(RunnerError::Exec { status: crate::outcome::EXIT_NOT_FOUND, reason: format!("{name}: not found") }),
        Err(PrepareError::CommandLine(error)) => return Err(failed(error)),
        Err(PrepareError::System(error)) => return Err(failed(error)),
    };
    let null;
    let stdout = match std_handle(StdStream::Output) {
        Some(handle) => handle,
        None => {
            null = open_null().map_err(failed)?;
            null.as_handle()
        }
    };
    let stderr = std_handle(StdStream::Error).unwrap_or(stdout);
    let spec = ProcessSpec {
        application: &application,
        command_line: &command_line,
        environment_block: &request.environment_block,
        cwd: &request.cwd,
        stdio: Stdio { stdin, stdout, stderr },
        // The runner is in the job already, and so is every process it creates.
        suspended: false,
    };
    create_process(&spec, Identity::Token(token.as_handle())).map_err(|error| match exec_status(&error) {
        Some(status) => RunnerError::Exec { status, reason: format!("{}: {error}", crate::cmdline::Lossy(&application)) },
        None => failed(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfined_job_takes_the_policy_limits() {
        let limits = Limits { memory: Some(1 << 30), max_procs: Some(8), cpus_milli: Some(1000), timeout: Some(Duration::from_secs(3)), ..Limits::default() };
        let job = unconfined_job(&limits, 4).unwrap();
        assert!(job.kill_on_close);
        assert!(!job.allow_breakaway);
        assert!(!job.ui_restrictions);
        assert_eq!((job.job_memory, job.active_processes, job.cpu_rate), (Some(1 << 30), Some(8), Some(2500)));
        assert_eq!(job.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn unconfined_job_refuses_limits_windows_lacks() {
        let limits = Limits { max_file_size: Some(1 << 20), ..Limits::default() };
        assert!(matches!(unconfined_job(&limits, 1), Err(Error::Plan(PlanError::LimitUnsupported { limit: "max_file_size", .. }))));
    }

    #[test]
    fn runner_reasons_are_bounded() {
        let RunnerError::Failed(reason) = failed("é".repeat(MAX_REASON)) else { panic!("expected Failed") };
        assert!(reason.len() <= MAX_REASON);
    }
}
