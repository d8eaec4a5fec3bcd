//! The Windows commands: `run`, `check`, `setup` and the hidden `windows-runner`, the glue
//! between the flags and the Windows backend. `policy` and `selftest` are shared with Linux.

use std::ffi::OsString;

use anyhow::Context as _;
use palisade_policy::{Limits, Policy, Profile};
use palisade_windows::outcome::{Exit, Limit, Outcome};
use palisade_windows::plan::{Gap, Plan};
use palisade_windows::sys;
use palisade_windows::sys::{check, setup};
use palisade_windows::{Machine, Request};
use serde_json::{json, Value};

use crate::cli::{self, CheckArgs, PolicyArgs, RunArgs, SetupArgs};
use crate::{report, EXIT_KILLED_AT_LIMIT, EXIT_TIMED_OUT};

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let result = launch(&args.policy, &args.command);
    if let (Err(error), Some(path)) = (&result, &args.policy.report) {
        // The report records why nothing ran; the error itself still goes to stderr.
        let policy = args.policy.resolve().ok();
        let _ = report::write(path, &report::refused(&args.command, policy.as_ref(), &format!("{error:#}")));
    }
    result
}

fn launch(args: &PolicyArgs, command: &[OsString]) -> anyhow::Result<u8> {
    let policy = args.resolve()?;
    reject_unsupported(&policy)?;
    let (outcome, gaps) = if policy.profile == Profile::Unconfined {
        eprintln!("palisade: profile unconfined: the command runs without a sandbox");
        (sys::run::run_unconfined(&policy, command)?, Vec::new())
    } else {
        let (plan, request) = plan(&policy)?;
        let runner_exe = std::env::current_exe().context("failed to find palisade's own executable, which runs as the runner")?;
        let outcome = sys::run::run(&plan, &request, command, &policy.env, &sys::run::RunOptions { runner_exe })?;
        (outcome, plan.gaps)
    };
    print_outcome(&outcome);
    if let Some(path) = &args.report {
        report::write(path, &finished(command, &policy, &outcome, &gaps))?;
    }
    Ok(exit_status(&outcome))
}

/// Rejects the options the Windows backend cannot enforce, rather than run without them.
fn reject_unsupported(policy: &Policy) -> anyhow::Result<()> {
    if policy.ports.listen.is_some() {
        anyhow::bail!("--allow-listen is not supported on Windows: the firewall filters cannot limit the ports a command listens on");
    }
    if !policy.ports.expose.is_empty() {
        anyhow::bail!("--expose is not supported on Windows: the command shares the host's loopback, where its servers are reachable already");
    }
    Ok(())
}

/// Builds the request and the plan of a confined run.
fn plan(policy: &Policy) -> anyhow::Result<(Plan, Request)> {
    plan_on(policy, &sys::machine::current()?)
}

/// Builds the request and the plan of a confined run on `machine`, which `palisade selftest`
/// gives its fake home directory as the profile.
pub(crate) fn plan_on(policy: &Policy, machine: &Machine) -> anyhow::Result<(Plan, Request)> {
    let defaults = Limits::defaults(sys::machine::memory_total());
    let request = Request::from_policy(policy, defaults)?;
    let plan = palisade_windows::plan::plan(&request, machine)?;
    for gap in &plan.gaps {
        tracing::debug!("not enforced on Windows: {}: {}", gap.what, gap.consequence);
    }
    Ok((plan, request))
}

/// Prints on stderr why the command did not run or what ended it. The output limit has its
/// marker in the output already.
fn print_outcome(outcome: &Outcome) {
    if let Some(reason) = &outcome.exec_error {
        eprintln!("palisade: {reason}");
    }
    for event in outcome.limits_reached.iter().filter(|event| event.ended_run && event.limit != Limit::Output) {
        eprintln!("palisade: {}", event.message);
    }
    cli::print_network_denials(outcome.network.denials.iter().map(|denial| denial.reason.as_str()), outcome.network.denials_dropped);
    if let Exit::Code(code) = outcome.exit {
        if code.crash.is_some() {
            eprintln!("palisade: the command crashed with {code}; exit status {}", code.status);
        }
    }
}

fn exit_status(outcome: &Outcome) -> u8 {
    match outcome.exit {
        Exit::Code(code) => code.status,
        Exit::TimedOut => EXIT_TIMED_OUT,
        // A limit kill reads as SIGKILL, as on Linux; the report names the limit.
        Exit::Killed(_) => EXIT_KILLED_AT_LIMIT,
    }
}

/// The exit status of a process ended by signal N is this plus N (139 for SIGSEGV).
const SIGNAL_BASE: u8 = 128;
const SIGKILL: u8 = 9;

/// Builds the report of a run that took place, in the Linux report's format. `layers`
/// describes the Windows protections, and `windows_exit_code` carries the raw 32-bit exit
/// code that `exit` maps onto a status.
fn finished(argv: &[OsString], policy: &Policy, outcome: &Outcome, gaps: &[Gap]) -> Value {
    let exit = match outcome.exit {
        Exit::Code(code) if code.crash.is_some() => json!({ "signal": code.status - SIGNAL_BASE }),
        Exit::Code(code) => json!({ "code": code.status }),
        Exit::TimedOut => json!({ "timed_out": true }),
        Exit::Killed(_) => json!({ "signal": SIGKILL }),
    };
    let limit = outcome.limits_reached.iter().find(|event| event.ended_run).map(|event| event.limit.name());
    let denials: Vec<Value> = outcome
        .limits_reached
        .iter()
        .map(|event| report::limit_denial(event.limit.name(), &event.value, event.ended_run, &event.message))
        .chain(outcome.network.denials.iter().map(|denial| {
            report::network_denial_entry(&denial.destination, &denial.port, &denial.protocol, &denial.rule, &denial.reason)
        }))
        .collect();
    let enforced = &outcome.enforced;
    let usage = &outcome.usage;
    json!({
        "format": report::FORMAT,
        "palisade_version": env!("CARGO_PKG_VERSION"),
        "command": argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>(),
        "policy": report::policy_json(policy),
        "layers": {
            "job_object": enforced.job,
            "account": enforced.account,
            "restricted_token": enforced.restricted_token,
            "acl_verified": enforced.acl_verified,
            "firewall_verified": enforced.firewall_verified,
            "degraded": false,
            "missing": gaps.iter().map(|gap| format!("{}: {}", gap.what, gap.consequence)).collect::<Vec<_>>(),
        },
        "network": {
            "mode": policy.network.name(),
            "proxy": outcome.network.proxy,
            "forwarded": [],
            "denials_not_listed": outcome.network.denials_dropped,
            "auth_failures": outcome.network.auth_failures,
        },
        "exit": exit,
        "windows_exit_code": outcome.raw_exit_code,
        "exec_error": outcome.exec_error,
        "limit": limit,
        "usage": {
            "wall_time_ms": outcome.wall_time.as_secs_f64() * 1000.0,
            "user_cpu_ms": report::milliseconds(usage.user_cpu),
            "system_cpu_ms": report::milliseconds(usage.kernel_cpu),
            "peak_memory_bytes": usage.peak_memory,
            "peak_processes": usage.peak_processes,
            "total_processes": usage.total_processes,
            "stdout_bytes": usage.stdout_bytes,
            "stderr_bytes": usage.stderr_bytes,
            "output_merged": false,
        },
        "denials": denials,
        "error": Value::Null,
    })
}

pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let report = check::check();
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(if report.fully_enforced() { 0 } else { 1 })
}

pub fn setup(args: SetupArgs) -> anyhow::Result<u8> {
    if args.policy.report.is_some() {
        anyhow::bail!("--report applies to `palisade run` only; `palisade setup` runs nothing to report on");
    }
    let policy = args.policy.resolve()?;
    if policy.profile == Profile::Unconfined {
        anyhow::bail!("the unconfined profile needs no setup: it runs commands as you");
    }
    let (plan, _) = plan(&policy)?;
    let report = setup::setup(&plan, &setup::SetupOptions { dry_run: args.dry_run })?;
    println!("{report}");
    Ok(0)
}

/// Serves `palisade windows-runner` and returns the exit code to exit with.
pub fn runner() -> u32 {
    sys::run::runner_main()
}
