//! The macOS commands: `run`, `check` and the hidden `macos-stage`, the glue between the flags
//! and the macOS backend. `policy` and `selftest` are shared with the other platforms.

use std::ffi::OsString;

use anyhow::Context as _;
use palisade_macos::check::{default_policy_runs, layers, Layer};
use palisade_macos::limits::Enforcement;
use palisade_macos::outcome::{Exit, Limit, Outcome};
use palisade_macos::sys;
use palisade_macos::sys::run::RunOptions;
use palisade_policy::{Policy, Profile};
use serde_json::{json, Value};

use crate::cli::{self, CheckArgs, PolicyArgs, RunArgs};
use crate::report;

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let result = launch(&args.policy, &args.command);
    if let (Err(error), Some(path)) = (&result, &args.policy.report) {
        // The report records why nothing ran; the error itself still goes to stderr. The
        // backend returns an error only when the command did not start: once it may have,
        // palisade's failures come back in the outcome's `supervisor_errors`.
        let policy = args.policy.resolve().ok();
        let _ = report::write(path, &report::refused(&args.command, policy.as_ref(), &format!("{error:#}")));
    }
    result
}

fn launch(args: &PolicyArgs, command: &[OsString]) -> anyhow::Result<u8> {
    let policy = args.resolve()?;
    let stage_exe = std::env::current_exe().context("failed to find palisade's own executable, which runs as the sandbox stage")?;
    // The log is read for the report only: it costs a process and up to a second per run.
    let options = RunOptions { stage_exe, read_log: args.report.is_some() };
    let outcome = sys::run::run(&policy, command, &options)?;
    if policy.profile == Profile::Unconfined {
        eprintln!("palisade: profile unconfined: the command runs without a sandbox");
    }
    print_outcome(&outcome);
    if let Some(path) = &args.report {
        // The command ran, so a failure here must not reach `run`, which would then write a
        // report saying that nothing ran.
        if let Err(error) = report::write(path, &finished(command, &policy, &outcome)) {
            eprintln!("palisade: {error:#}");
            return Ok(crate::EXIT_PALISADE_FAILED);
        }
    }
    // The report keeps the command's own exit. After a failure of palisade, which
    // print_outcome listed, the exit status is 125.
    Ok(outcome.status())
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
    for error in &outcome.supervisor_errors {
        eprintln!("palisade: {error}");
    }
    if !outcome.supervisor_errors.is_empty() {
        eprintln!("palisade: exit status 125 because palisade failed after the command started; the run ended with {}, which the report keeps", outcome.exit.describe());
    }
    cli::print_network_denials(outcome.network.denials.iter().map(|denial| denial.reason.as_str()), outcome.network.denials_dropped);
}

/// Builds the report of a run that took place, in the Linux report's format. `layers`
/// describes the macOS protections; `denials` adds the sandbox denials read from the log.
fn finished(argv: &[OsString], policy: &Policy, outcome: &Outcome) -> Value {
    let exit = match outcome.exit {
        Exit::Code(code) => json!({ "code": code }),
        Exit::Signal(signal) => json!({ "signal": signal }),
        Exit::TimedOut => json!({ "timed_out": true }),
        Exit::Killed(_) => json!({ "signal": sigkill() }),
    };
    let limit = outcome.limits_reached.iter().find(|event| event.ended_run).map(|event| event.limit.name());
    let denials: Vec<Value> = outcome
        .limits_reached
        .iter()
        .map(|event| report::limit_denial(event.limit.name(), &event.value, event.ended_run, &event.message))
        .chain(outcome.network.denials.iter().map(|denial| {
            report::network_denial_entry(&denial.destination, &denial.port, &denial.protocol, &denial.rule, &denial.reason)
        }))
        .chain(outcome.violations.iter().map(|denial| {
            json!({
                "kind": "sandbox",
                "process": denial.process,
                "pid": denial.pid,
                "operation": denial.operation,
                "target": denial.target,
            })
        }))
        .collect();
    let layers = &outcome.layers;
    let limits: serde_json::Map<String, Value> = layers
        .limits
        .iter()
        .map(|status| {
            let value = match &status.enforcement {
                Enforcement::Held { by } => json!({ "held": true, "per_process": false, "by": by }),
                Enforcement::PerProcess { by } => json!({ "held": true, "per_process": true, "by": by }),
                Enforcement::NotEnforced { reason } => json!({ "held": false, "reason": reason }),
            };
            (status.limit.to_owned(), value)
        })
        .collect();
    let usage = &outcome.usage;
    json!({
        "format": report::FORMAT,
        "palisade_version": env!("CARGO_PKG_VERSION"),
        "command": argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>(),
        "policy": report::policy_json(policy),
        "layers": {
            "seatbelt": layers.seatbelt,
            "rlimits": layers.rlimits,
            "limits": limits,
            "degraded": !layers.missing.is_empty() && policy.allow_degraded,
            "missing": layers.missing,
        },
        "network": {
            "mode": policy.network.name(),
            "proxy": outcome.network.proxy,
            "forwarded": [],
            "denials_not_listed": outcome.network.denials_dropped,
            "auth_failures": outcome.network.auth_failures,
        },
        "exit": exit,
        "exec_error": outcome.exec_error,
        "limit": limit,
        "usage": {
            "wall_time_ms": outcome.wall_time.as_secs_f64() * 1000.0,
            "user_cpu_ms": report::milliseconds(usage.user_cpu),
            "system_cpu_ms": report::milliseconds(usage.system_cpu),
            "peak_memory_bytes": usage.peak_memory,
            "peak_processes": Value::Null,
            "stdout_bytes": usage.stdout_bytes,
            "stderr_bytes": usage.stderr_bytes,
            "output_merged": false,
        },
        "denials": denials,
        // Whether the sandbox denials above come from a log palisade read; even then they are
        // the ones observed, never the complete list.
        "sandbox_denials_read": outcome.violations_read,
        "survivors": outcome.survivors,
        "supervisor_errors": outcome.supervisor_errors,
        "error": Value::Null,
    })
}

/// Returns the number of SIGKILL, which a limit kill reads as.
fn sigkill() -> i32 {
    i32::from(crate::EXIT_KILLED_AT_LIMIT) - 128
}

pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let layers = layers(&sys::check::facts(trial_run));
    let runs = default_policy_runs(&layers);
    if args.json {
        let entries: serde_json::Map<String, Value> = layers.iter().map(|layer| (layer.name.to_owned(), layer_json(layer))).collect();
        let report = json!({
            "format": report::FORMAT,
            "layers": entries,
            "default_policy_enforced": runs,
            // macOS has no degraded mode beyond the limits it lists as not enforced.
            "degraded_mode_possible": false,
        });
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value serialises"));
    } else {
        for layer in &layers {
            let state = if layer.available { "yes" } else if layer.required { "NO" } else { "no" };
            println!("{:<11} {state:<4} {}", layer.name, layer.detail);
            if !layer.fix.is_empty() {
                println!("{:<16} fix: {}", "", layer.fix);
            }
        }
        println!("\nNO marks a missing layer that palisade run cannot do without.");
        if runs {
            println!("The default policy runs on this machine; each run's report lists the limits marked no as not enforced.");
        } else {
            println!("palisade run refuses to run here, and --allow-degraded cannot help.");
        }
    }
    Ok(if runs { 0 } else { 1 })
}

/// Runs `/usr/bin/true` under the default policy for a scratch workspace, as `palisade run`
/// would in that directory, and removes the workspace afterwards.
fn trial_run() -> Result<(), String> {
    let stage_exe = std::env::current_exe().map_err(|error| format!("failed to find palisade's own executable: {error}"))?;
    let workspace = std::env::temp_dir().join(format!("palisade-check-{}", std::process::id()));
    std::fs::create_dir(&workspace).map_err(|error| format!("failed to create the scratch workspace {}: {error}", workspace.display()))?;
    let result = trial_run_in(&workspace, &stage_exe);
    if let Err(error) = std::fs::remove_dir_all(&workspace) {
        eprintln!("palisade: failed to remove the scratch workspace {}: {error}", workspace.display());
    }
    result
}

fn trial_run_in(workspace: &std::path::Path, stage_exe: &std::path::Path) -> Result<(), String> {
    let mut context = palisade_policy::Context::from_process().map_err(|error| format!("failed to read palisade's environment: {error}"))?;
    context.cwd = workspace.to_path_buf();
    let policy = PolicyArgs::default().resolve_in(&context).map_err(|error| format!("failed to resolve the default policy: {error:#}"))?;
    sys::run::check_run(&policy, stage_exe)
}

fn layer_json(layer: &Layer) -> Value {
    json!({
        "available": layer.available,
        "required": layer.required,
        "detail": layer.detail,
        "fix": if layer.fix.is_empty() { Value::Null } else { layer.fix.clone().into() },
    })
}

/// Serves `palisade macos-stage` and returns the exit code to exit with when the command did
/// not start.
pub fn stage() -> i32 {
    sys::stage::stage_main()
}
