//! Tests of the Windows calls, run under Wine on Linux and natively on Windows: process
//! creation in a job, the job's kill-on-close and termination, the unconfined run's exit codes
//! and timeout, and the handoff to the runner. A test of enforcement that Wine lacks prints a
//! visible SKIP line under Wine and passes without claiming anything.
//!
//! The child processes are this test executable itself, running one of the ignored `helper_*`
//! tests below, which act only when `PALISADE_TEST_HELPER` is set.

#![cfg(windows)]

use std::ffi::OsString;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_policy::{EnvVar, Filesystem, Limits, NetworkMode, Policy, Ports, Profile};
use palisade_windows::cmdline::quote_args;
use palisade_windows::environment::Environment;
use palisade_windows::outcome::{Exit, Limit, Outcome};
use palisade_windows::plan::JobPlan;
use palisade_windows::sys::job::Job;
use palisade_windows::sys::output::write_all;
use palisade_windows::sys::run::{run_through_runner_as_caller, run_unconfined};
use palisade_windows::sys::spawn::{create_process, open_null, std_handle, Identity, Process, ProcessSpec, StdStream, Stdio};
use palisade_windows::sys::wine::is_wine;
use windows_sys::Win32::Foundation::{WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::JobObjects::IsProcessInJob;
use windows_sys::Win32::System::Threading::{OpenProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE};

/// Set in a helper's environment; a helper started any other way returns at once.
const HELPER_VARIABLE: &str = "PALISADE_TEST_HELPER";
const EXIT_CODE_VARIABLE: &str = "PALISADE_TEST_EXIT_CODE";
const PID_FILE_VARIABLE: &str = "PALISADE_TEST_PID_FILE";
const MIB_VARIABLE: &str = "PALISADE_TEST_MIB";
const COUNT_VARIABLE: &str = "PALISADE_TEST_COUNT";

fn is_helper() -> bool {
    std::env::var_os(HELPER_VARIABLE).is_some()
}

/// Ends a helper without the test harness's summary, which would land in the output under
/// test.
fn helper_done() -> ! {
    std::process::exit(0)
}

/// Exits with the code in `PALISADE_TEST_EXIT_CODE`, 32 bits unchanged.
#[test]
#[ignore = "helper"]
fn helper_exit() {
    if is_helper() {
        let code: u32 = std::env::var(EXIT_CODE_VARIABLE).unwrap().parse().unwrap();
        std::process::exit(code as i32);
    }
}

#[test]
#[ignore = "helper"]
fn helper_sleep() {
    if is_helper() {
        std::thread::sleep(Duration::from_secs(60));
        helper_done();
    }
}

/// Starts `helper_sleep` as a child, writes its process id to `PALISADE_TEST_PID_FILE`, and
/// sleeps: with its child, a process tree of two.
#[test]
#[ignore = "helper"]
fn helper_spawn_and_sleep() {
    if is_helper() {
        spawn_sleeper_and_write_pid();
        std::thread::sleep(Duration::from_secs(60));
        helper_done();
    }
}

/// As `helper_spawn_and_sleep`, but exits at once, leaving its child running.
#[test]
#[ignore = "helper"]
fn helper_spawn_and_exit() {
    if is_helper() {
        spawn_sleeper_and_write_pid();
        helper_done();
    }
}

// The child is left running on purpose: the job under test must end it.
#[allow(clippy::zombie_processes)]
fn spawn_sleeper_and_write_pid() {
    let child = std::process::Command::new(std::env::current_exe().unwrap()).args(helper_args("helper_sleep")).spawn().unwrap();
    let pid_file = PathBuf::from(std::env::var_os(PID_FILE_VARIABLE).unwrap());
    // Written beside and renamed, so the test never reads half a number.
    let partial = pid_file.with_extension("partial");
    std::fs::write(&partial, child.id().to_string()).unwrap();
    std::fs::rename(&partial, &pid_file).unwrap();
}

/// Commits and touches `PALISADE_TEST_MIB` MiB, one MiB at a time.
#[test]
#[ignore = "helper"]
fn helper_allocate() {
    if is_helper() {
        let mib: usize = std::env::var(MIB_VARIABLE).unwrap().parse().unwrap();
        let blocks: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
        assert_eq!(blocks.len(), mib);
        helper_done();
    }
}

/// Starts `PALISADE_TEST_COUNT` sleepers and exits with the number that started.
#[test]
#[ignore = "helper"]
fn helper_spawn_many() {
    if is_helper() {
        let count: usize = std::env::var(COUNT_VARIABLE).unwrap().parse().unwrap();
        let started = (0..count)
            .filter_map(|_| std::process::Command::new(std::env::current_exe().unwrap()).args(helper_args("helper_sleep")).spawn().ok())
            .count();
        std::process::exit(started as i32);
    }
}

/// Uses CPU for up to a minute.
#[test]
#[ignore = "helper"]
fn helper_busy() {
    if is_helper() {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_secs(60) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        helper_done();
    }
}

/// Prints the path of the password store.
#[test]
#[ignore = "helper"]
fn helper_print_store_path() {
    if is_helper() {
        // Written to the real stdout: the harness captures what `println!` prints.
        use std::io::Write as _;
        let line = match palisade_windows::sys::account::store_path() {
            Ok(path) => path.display().to_string(),
            Err(error) => format!("error: {error}"),
        };
        let _ = writeln!(std::io::stdout(), "{line}");
        helper_done();
    }
}

fn helper_args(name: &str) -> Vec<String> {
    vec!["--exact".into(), name.into(), "--ignored".into(), "--quiet".into(), "--test-threads=1".into()]
}

fn helper_argv(name: &str) -> Vec<OsString> {
    let mut argv = vec![std::env::current_exe().unwrap().into_os_string()];
    argv.extend(helper_args(name).into_iter().map(OsString::from));
    argv
}

/// Prints a line on the test process's real stderr, past the test harness's capture.
fn print_visible(line: &str) {
    if let Some(stderr) = std_handle(StdStream::Error) {
        write_all(stderr, format!("{line}\n").as_bytes());
    }
}

/// Prints the SKIP line of an enforcement test under Wine and returns true there.
fn skip_under_wine(test: &str, what: &str) -> bool {
    match is_wine() {
        Some(version) => {
            print_visible(&format!("SKIP {test}: Wine {version} does not enforce {what}, so it is not verified here"));
            true
        }
        None => false,
    }
}

fn wide(text: &std::ffi::OsStr) -> Vec<u16> {
    text.encode_wide().collect()
}

/// Creates a private directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn helper_env(extra: &[(&str, String)]) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = std::env::vars_os().map(|(name, value)| EnvVar { name, value }).collect();
    env.push(EnvVar { name: HELPER_VARIABLE.into(), value: "1".into() });
    for (name, value) in extra {
        env.push(EnvVar { name: (*name).into(), value: value.into() });
    }
    env
}

fn unconfined_policy(limits: Limits, extra_env: &[(&str, String)]) -> Policy {
    let cwd = std::env::current_dir().unwrap();
    Policy {
        profile: Profile::Unconfined,
        workspace: cwd.clone(),
        cwd: cwd.clone(),
        home: cwd,
        filesystem: Filesystem::default(),
        network: NetworkMode::Full,
        ports: Ports::default(),
        limits,
        env: helper_env(extra_env),
        dropped_env: Vec::new(),
        allow_degraded: false,
        allow_ptrace: false,
    }
}

fn job_plan(timeout: Option<Duration>) -> JobPlan {
    JobPlan {
        kill_on_close: true,
        allow_breakaway: false,
        die_on_unhandled_exception: true,
        job_memory: None,
        active_processes: None,
        job_user_time: None,
        cpu_rate: None,
        ui_restrictions: false,
        timeout,
        max_output: None,
    }
}

/// Starts a helper suspended, as the caller, with `NUL` as its standard handles.
fn spawn_helper(name: &str, extra_env: &[(&str, String)]) -> Process {
    let argv: Vec<Vec<u16>> = helper_argv(name).iter().map(|arg| wide(arg)).collect();
    let environment = Environment::new(helper_env(extra_env).iter().map(|var| (wide(&var.name), wide(&var.value)))).unwrap();
    let null = open_null().unwrap();
    let spec = ProcessSpec {
        application: &argv[0],
        command_line: &quote_args(&argv).unwrap(),
        environment_block: &environment.to_block(),
        cwd: &wide(std::env::current_dir().unwrap().as_os_str()),
        stdio: Stdio { stdin: null.as_handle(), stdout: null.as_handle(), stderr: null.as_handle() },
        suspended: true,
    };
    create_process(&spec, Identity::Caller).unwrap()
}

/// Waits for the helper's child process id in `pid_file` and opens the child for waiting.
fn open_grandchild(pid_file: &Path) -> OwnedHandle {
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            break text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the helper did not write {}", pid_file.display());
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: OpenProcess has no preconditions; a null result fails the assert.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    assert!(!handle.is_null(), "the grandchild {pid} could not be opened: {}", std::io::Error::last_os_error());
    // SAFETY: a new handle owned by nobody else.
    unsafe { OwnedHandle::from_raw_handle(handle) }
}

/// Returns whether the process behind `handle` ends within `timeout`.
fn ends_within(handle: &OwnedHandle, timeout: Duration) -> bool {
    // SAFETY: the handle is valid and was opened with SYNCHRONIZE.
    match unsafe { WaitForSingleObject(handle.as_raw_handle(), timeout.as_millis() as u32) } {
        WAIT_OBJECT_0 => true,
        WAIT_TIMEOUT => false,
        other => panic!("WaitForSingleObject returned {other}: {}", std::io::Error::last_os_error()),
    }
}

fn exit_code(outcome: &Outcome) -> u8 {
    match outcome.exit {
        Exit::Code(code) => code.status,
        other => panic!("expected an exit code, got {other:?}"),
    }
}

#[test]
fn suspended_child_runs_in_job() {
    let job = Job::create(&job_plan(None)).unwrap();
    let process = spawn_helper("helper_exit", &[(EXIT_CODE_VARIABLE, "3".into())]);
    job.assign(process.handle.as_handle()).unwrap();
    let mut in_job = 0;
    // SAFETY: both handles are valid; `in_job` is a valid out-pointer.
    assert_ne!(unsafe { IsProcessInJob(process.handle.as_raw_handle(), std::ptr::null_mut(), &mut in_job) }, 0);
    assert_ne!(in_job, 0, "the process is in the job");
    process.resume().unwrap();
    assert!(process.wait(Some(Duration::from_secs(30))).unwrap());
    assert_eq!(process.exit_code().unwrap(), 3);
    let accounting = job.accounting().unwrap();
    assert_eq!(accounting.total_processes, 1);
}

#[test]
fn job_close_kills_child_and_grandchild() {
    let dir = scratch("close");
    let pid_file = dir.join("pid");
    let job = Job::create(&job_plan(None)).unwrap();
    let process = spawn_helper("helper_spawn_and_sleep", &[(PID_FILE_VARIABLE, pid_file.display().to_string())]);
    job.assign(process.handle.as_handle()).unwrap();
    process.resume().unwrap();
    let grandchild = open_grandchild(&pid_file);
    assert!(!ends_within(&grandchild, Duration::from_millis(200)), "the grandchild runs before the job closes");
    assert_eq!(job.accounting().unwrap().total_processes, 2, "the grandchild is in the job");

    drop(job);
    assert!(process.wait(Some(Duration::from_secs(10))).unwrap(), "the child ends when the job closes");
    assert!(ends_within(&grandchild, Duration::from_secs(10)), "the grandchild ends when the job closes");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn job_terminate_sets_exit_code() {
    let job = Job::create(&job_plan(None)).unwrap();
    let process = spawn_helper("helper_sleep", &[]);
    job.assign(process.handle.as_handle()).unwrap();
    process.resume().unwrap();
    job.terminate(77).unwrap();
    assert!(process.wait(Some(Duration::from_secs(10))).unwrap());
    assert_eq!(process.exit_code().unwrap(), 77);
}

#[test]
fn unconfined_exit_codes_pass_through() {
    let cases: &[(u32, u8)] = &[(0, 0), (1, 1), (7, 7), (255, 255), (256, 255), (0xFFFF_FFFF, 255), (0xC000_0005, 139), (0xC000_0409, 134)];
    for &(raw, status) in cases {
        let policy = unconfined_policy(Limits::default(), &[(EXIT_CODE_VARIABLE, raw.to_string())]);
        let outcome = run_unconfined(&policy, &helper_argv("helper_exit")).unwrap();
        assert_eq!(exit_code(&outcome), status, "raw code 0x{raw:08X}");
        assert_eq!(outcome.raw_exit_code, Some(raw));
        assert!(outcome.enforced.job);
    }
}

#[test]
fn unconfined_timeout_kills_tree() {
    let dir = scratch("timeout");
    let pid_file = dir.join("pid");
    // The helper and the grandchild it starts must both be running, and the grandchild's pid
    // written, before the timeout. Under Wine on a busy machine, starting two processes of a
    // test executable took more than 2 s.
    let limits = Limits { timeout: Some(Duration::from_secs(8)), ..Limits::default() };
    let policy = unconfined_policy(limits, &[(PID_FILE_VARIABLE, pid_file.display().to_string())]);
    let started = Instant::now();
    let outcome = run_unconfined(&policy, &helper_argv("helper_spawn_and_sleep")).unwrap();
    assert_eq!(outcome.exit, Exit::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(40), "the timeout ended the run: {:?}", started.elapsed());
    let event = outcome.limits_reached.iter().find(|event| event.limit == Limit::Timeout).unwrap();
    assert!(event.ended_run);
    assert_eq!(event.value, 8000);
    let grandchild = open_grandchild(&pid_file);
    assert!(ends_within(&grandchild, Duration::from_secs(5)), "the grandchild is gone when the run returns");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unconfined_missing_program_is_127() {
    let policy = unconfined_policy(Limits::default(), &[]);
    let outcome = run_unconfined(&policy, &[OsString::from("palisade-no-such-program")]).unwrap();
    assert_eq!(exit_code(&outcome), 127);
    assert!(outcome.exec_error.as_deref().unwrap().contains("palisade-no-such-program: not found"), "{:?}", outcome.exec_error);
    assert_eq!(outcome.raw_exit_code, None);
}

/// The run ends when its first process exits, and the processes it left behind end with it.
#[test]
fn unconfined_run_leaves_no_process() {
    let dir = scratch("leftover");
    let pid_file = dir.join("pid");
    let policy = unconfined_policy(Limits::default(), &[(PID_FILE_VARIABLE, pid_file.display().to_string())]);
    let outcome = run_unconfined(&policy, &helper_argv("helper_spawn_and_exit")).unwrap();
    assert_eq!(exit_code(&outcome), 0);
    let grandchild = open_grandchild(&pid_file);
    assert!(ends_within(&grandchild, Duration::from_secs(5)), "the child the command left behind is gone when the run returns");
    let _ = std::fs::remove_dir_all(dir);
}

/// Returns the runner the tests start: the `runner_for_tests` example, built by `cargo test`.
fn test_runner() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let runner = deps.parent().unwrap().join("examples").join("runner_for_tests.exe");
    assert!(runner.is_file(), "{} is missing; `cargo test` builds it with the examples", runner.display());
    runner
}

fn cwd_text() -> String {
    std::env::current_dir().unwrap().display().to_string()
}

#[test]
fn runner_handoff_relays_exit_code() {
    for raw in [0u32, 5, 0xC000_0005] {
        let env = helper_env(&[(EXIT_CODE_VARIABLE, raw.to_string())]);
        let outcome = run_through_runner_as_caller(&test_runner(), &[], &helper_argv("helper_exit"), &cwd_text(), &env, &job_plan(None)).unwrap();
        assert_eq!(outcome.raw_exit_code, Some(raw), "the runner exits with the command's code");
        assert!(outcome.exec_error.is_none());
    }
}

#[test]
fn runner_handoff_reports_missing_program() {
    let env = helper_env(&[]);
    let argv = [OsString::from("palisade-no-such-program")];
    let outcome = run_through_runner_as_caller(&test_runner(), &[], &argv, &cwd_text(), &env, &job_plan(None)).unwrap();
    assert_eq!(exit_code(&outcome), 127);
    assert!(outcome.exec_error.as_deref().unwrap().contains("palisade-no-such-program: not found"), "{:?}", outcome.exec_error);
}

#[test]
fn runner_handoff_timeout_kills_command_tree() {
    let dir = scratch("runner-timeout");
    let pid_file = dir.join("pid");
    let env = helper_env(&[(PID_FILE_VARIABLE, pid_file.display().to_string())]);
    let outcome =
        run_through_runner_as_caller(&test_runner(), &[], &helper_argv("helper_spawn_and_sleep"), &cwd_text(), &env, &job_plan(Some(Duration::from_secs(2)))).unwrap();
    assert_eq!(outcome.exit, Exit::TimedOut);
    let grandchild = open_grandchild(&pid_file);
    assert!(ends_within(&grandchild, Duration::from_secs(5)), "the command's child is in the runner's job");
    assert!(outcome.usage.total_processes.unwrap() >= 3, "runner, command and its child: {:?}", outcome.usage);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn runner_rejects_request_it_cannot_read() {
    let output = std::process::Command::new(test_runner()).stdin(std::process::Stdio::piped()).output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("windows-runner is started by palisade run only"), "{stderr}");
}

#[test]
fn wine_is_detected_under_wine_only() {
    // Wine passes the Unix environment through, so WINEPREFIX is set under Wine and never on
    // Windows.
    assert_eq!(is_wine().is_some(), std::env::var_os("WINEPREFIX").is_some() || std::env::var_os("WINELOADER").is_some());
}

#[test]
fn job_memory_limit_ends_run() {
    if skip_under_wine("job_memory_limit_ends_run", "job memory limits") {
        return;
    }
    let limits = Limits { memory: Some(64 << 20), ..Limits::default() };
    let policy = unconfined_policy(limits, &[(MIB_VARIABLE, "512".into())]);
    let outcome = run_unconfined(&policy, &helper_argv("helper_allocate")).unwrap();
    assert_eq!(outcome.exit, Exit::Killed(Limit::Memory));
    assert!(outcome.limits_reached.iter().any(|event| event.limit == Limit::Memory && event.ended_run));
}

#[test]
fn job_process_limit_is_reported() {
    if skip_under_wine("job_process_limit_is_reported", "the job's active process limit") {
        return;
    }
    let limits = Limits { max_procs: Some(3), timeout: Some(Duration::from_secs(30)), ..Limits::default() };
    let policy = unconfined_policy(limits, &[(COUNT_VARIABLE, "5".into())]);
    let outcome = run_unconfined(&policy, &helper_argv("helper_spawn_many")).unwrap();
    assert_eq!(exit_code(&outcome), 2, "the helper and two sleepers fill the limit of 3");
    let event = outcome.limits_reached.iter().find(|event| event.limit == Limit::MaxProcs).unwrap();
    assert!(!event.ended_run);
}

#[test]
fn job_cpu_time_limit_ends_run() {
    if skip_under_wine("job_cpu_time_limit_ends_run", "the job's CPU time limit") {
        return;
    }
    let limits = Limits { cpu_time: Some(Duration::from_secs(1)), timeout: Some(Duration::from_secs(30)), ..Limits::default() };
    let policy = unconfined_policy(limits, &[]);
    let outcome = run_unconfined(&policy, &helper_argv("helper_busy")).unwrap();
    assert_eq!(outcome.exit, Exit::Killed(Limit::CpuTime));
}

/// `palisade selftest` points `USERPROFILE` at a fake home directory, and a run must still find
/// the password store that setup wrote in the caller's real profile. Wine 8.0 takes known
/// folders from its registry whatever `USERPROFILE` says, so under Wine this test passes with
/// either way of finding the store; only Windows shows the difference.
#[test]
fn store_path_ignores_userprofile() {
    let fake_home = scratch("store-path");
    let store_path = |userprofile: Option<&Path>| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.args(helper_args("helper_print_store_path")).env(HELPER_VARIABLE, "1");
        if let Some(home) = userprofile {
            command.env("USERPROFILE", home);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        // The harness prints "running 1 test" first; the helper's line is the last one.
        String::from_utf8(output.stdout).unwrap().lines().last().unwrap_or_default().trim().to_owned()
    };
    let real = store_path(None);
    assert!(real.ends_with(r"AppData\Local\palisade\accounts"), "{real}");
    let redirected = store_path(Some(&fake_home));
    assert_eq!(redirected, real, "the store moved with USERPROFILE");
    assert!(!redirected.starts_with(&*fake_home.to_string_lossy()), "{redirected}");
    std::fs::remove_dir_all(fake_home).unwrap();
}
