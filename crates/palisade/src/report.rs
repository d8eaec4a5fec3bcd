//! The run report (`--report FILE`): one JSON object a harness can keep as proof of what
//! protected a command and how it ended. The fields are described in docs/report.md.

use std::ffi::OsString;
use std::path::Path;

#[cfg(target_os = "linux")]
use palisade_linux::{Exit, Layers, Outcome};
use palisade_policy::Policy;
use serde::Serialize;
use serde_json::{json, Value};

/// The version of the report's layout. It changes when a field changes meaning or goes away.
pub const FORMAT: u32 = 1;

#[cfg(target_os = "linux")]
pub fn layers_json(layers: &Layers) -> Value {
    json!({
        "namespaces": layers.namespaces,
        "landlock": layers.landlock_abi.map(|abi| json!({
            "abi": abi,
            "scoped": layers.landlock_scoped,
            "tcp": layers.landlock_tcp,
        })),
        "seccomp": layers.seccomp,
        "rlimits": layers.rlimits,
        "cgroup": layers.cgroup,
        "degraded": layers.degraded(),
        "missing": layers.missing,
    })
}

pub(crate) fn policy_json(policy: &Policy) -> Value {
    // The policy's TOML rendering is the one documented form, and the report carries the same
    // content as JSON.
    toml::from_str::<toml::Value>(&policy.to_toml())
        .ok()
        .and_then(|value| serde_json::to_value(value).ok())
        .unwrap_or(Value::Null)
}

#[cfg(target_os = "linux")]
fn exit_json(exit: Exit) -> Value {
    match exit {
        Exit::Code(code) => json!({ "code": code }),
        Exit::Signal(signal) => json!({ "signal": signal }),
        Exit::TimedOut => json!({ "timed_out": true }),
        Exit::Killed(_) => json!({ "signal": 9 }),
    }
}

pub(crate) fn milliseconds(duration: Option<std::time::Duration>) -> Value {
    duration.map_or(Value::Null, |duration| json!(duration.as_secs_f64() * 1000.0))
}

/// Describes one refusal of the proxy, as the report's `denials` and the event stream give it.
#[cfg(target_os = "linux")]
pub fn network_denial(denial: &palisade_linux::NetworkDenial) -> Value {
    network_denial_entry(&denial.destination, &denial.port, &denial.protocol, &denial.rule, &denial.reason)
}

/// Builds the `denials` entry of one refusal of the proxy, from the fields every backend's
/// record of it has.
pub(crate) fn network_denial_entry(
    destination: &impl Serialize,
    port: &impl Serialize,
    protocol: &impl Serialize,
    rule: &impl Serialize,
    message: &str,
) -> Value {
    json!({
        "kind": "network",
        "destination": destination,
        "port": port,
        "protocol": protocol,
        "rule": rule,
        "message": message,
    })
}

/// Builds the `denials` entry of a limit the run reached.
pub(crate) fn limit_denial(limit: &str, value: &impl Serialize, ended_run: bool, message: &str) -> Value {
    json!({
        "kind": "limit",
        "limit": limit,
        "value": value,
        "ended_run": ended_run,
        "message": message,
    })
}

/// Builds the report of a run that took place.
#[cfg(target_os = "linux")]
pub fn finished(argv: &[OsString], policy: &Policy, outcome: &Outcome) -> Value {
    let limit = outcome.limits_reached.iter().find(|event| event.ended_run).map(|event| event.limit.name());
    let usage = &outcome.usage;
    let mut denials: Vec<Value> = outcome
        .limits_reached
        .iter()
        .map(|event| limit_denial(event.limit.name(), &event.value, event.ended_run, &event.message))
        .collect();
    denials.extend(outcome.network.denials.iter().map(network_denial));
    json!({
        "format": FORMAT,
        "palisade_version": env!("CARGO_PKG_VERSION"),
        "command": argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>(),
        "policy": policy_json(policy),
        "layers": layers_json(&outcome.layers),
        "network": {
            "mode": policy.network.name(),
            "proxy": outcome.network.proxy.map(|address| address.to_string()),
            "forwarded": outcome.network.forwarded,
            "denials_not_listed": outcome.network.denials_dropped,
        },
        "exit": exit_json(outcome.exit),
        "exec_error": outcome.exec_error.as_ref().map(|(_, reason)| reason),
        "limit": limit,
        "usage": {
            "wall_time_ms": outcome.wall_time.as_secs_f64() * 1000.0,
            "user_cpu_ms": milliseconds(usage.user_cpu),
            "system_cpu_ms": milliseconds(usage.system_cpu),
            "peak_memory_bytes": usage.peak_memory,
            "peak_processes": usage.peak_tasks,
            "stdout_bytes": usage.stdout_bytes,
            "stderr_bytes": usage.stderr_bytes,
            "output_merged": usage.output_merged,
        },
        // NOTE: limits and the proxy's refusals only. Refused calls and file accesses reach only
        // the command, as error codes.
        "denials": denials,
        "error": Value::Null,
    })
}

/// Builds the report of a run that palisade refused or could not set up, when nothing ran.
pub fn refused(argv: &[OsString], policy: Option<&Policy>, error: &str) -> Value {
    json!({
        "format": FORMAT,
        "palisade_version": env!("CARGO_PKG_VERSION"),
        "command": argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>(),
        "policy": policy.map(policy_json),
        "layers": Value::Null,
        "network": Value::Null,
        "exit": Value::Null,
        "exec_error": Value::Null,
        "limit": Value::Null,
        "usage": Value::Null,
        "denials": [],
        "error": error,
    })
}

/// Writes `report` to `path`, replacing it whole: a reader never sees half a report.
pub fn write(path: &Path, report: &Value) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut text = serde_json::to_string_pretty(report).expect("a JSON value serialises");
    text.push('\n');
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text).with_context(|| format!("failed to write the report to {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("failed to write the report to {}", path.display()))
}

/// Opens `path` for the event stream of `--events` and returns the sink that writes each
/// refusal of the proxy to it as one JSON line: the report's denial entry with the time
/// added as `time_unix_ms`.
///
/// The proxy's thread writes each line before it replies to the client, so the event reaches a
/// reader no later than the refusal reaches the command. The stream is made non-blocking once
/// open: when it is a pipe the reader lets fill up, lines are dropped rather than the proxy
/// held up, and the report still lists every refusal. Opening a named pipe waits for a reader,
/// as any writer of a named pipe does.
#[cfg(target_os = "linux")]
pub fn event_sink(path: &std::path::Path) -> anyhow::Result<palisade_linux::DenialSink> {
    use anyhow::Context as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("failed to open the event stream {}", path.display()))?;
    let flags = rustix::fs::fcntl_getfl(&file).with_context(|| format!("failed to read the flags of the event stream {}", path.display()))?;
    rustix::fs::fcntl_setfl(&file, flags | rustix::fs::OFlags::NONBLOCK)
        .with_context(|| format!("failed to make the event stream {} non-blocking", path.display()))?;
    let file = std::sync::Mutex::new(file);
    let dropped = std::sync::atomic::AtomicBool::new(false);
    Ok(std::sync::Arc::new(move |denial: &palisade_linux::NetworkDenial| {
        let mut event = network_denial(denial);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        event["time_unix_ms"] = json!(now.as_millis() as u64);
        let mut line = event.to_string().into_bytes();
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A pipe takes a line of up to PIPE_BUF (4 KiB) whole or not at all. A longer one, which
        // only a destination of several kilobytes makes, may be cut when the pipe is nearly full.
        if let Err(error) = std::io::Write::write_all(&mut *file, &line) {
            if !dropped.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!("failed to write to the event stream, so events are dropped from it; the run report lists every refusal: {error}");
            }
        }
    }))
}
