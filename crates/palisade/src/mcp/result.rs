//! Tool results (`CallToolResult`): the text a model reads in `content`, and the same facts as
//! JSON in `structuredContent`.

use serde_json::{json, Value};

use crate::mcp::ceiling::{format_duration, Refusal};
use crate::mcp::child::{Captured, Finished};

/// Builds a result with one text block.
pub fn tool_result(text: String, structured: Value, is_error: bool) -> Value {
    json!({
        "content": [{ "type": "text", "text": text }],
        "structuredContent": structured,
        "isError": is_error,
    })
}

pub fn refusal(refusal: &Refusal) -> Value {
    tool_result(refusal.message.clone(), refusal.structured.clone(), true)
}

/// Builds the result of a call with an invalid argument, from the protocol error that describes
/// it: `structuredContent` is `{error: "invalid_argument", tool, argument, message}`.
pub fn invalid_argument(error: &crate::mcp::jsonrpc::RpcError) -> Value {
    let message = error.message.strip_prefix("Invalid params: ").unwrap_or(&error.message).to_owned();
    let data = error.data.clone().unwrap_or(Value::Null);
    let structured = json!({
        "error": "invalid_argument",
        "tool": data.get("tool").cloned().unwrap_or(Value::Null),
        "argument": data.get("argument").cloned().unwrap_or(Value::Null),
        "message": message,
    });
    tool_result(message, structured, true)
}

/// Builds the result of a tool call that failed inside the server, such as a child that could
/// not be started.
pub fn failure(message: String) -> Value {
    tool_result(message.clone(), json!({ "error": "failed", "message": message }), true)
}

/// Builds the result of a `palisade run` child from its output and the report it wrote.
pub fn run(finished: &Finished, report: Option<Value>) -> Value {
    let Some(report) = report else {
        let status = finished.status.code().map_or_else(|| format!("{}", finished.status), |code| format!("exit status {code}"));
        let stderr = finished.stderr.text();
        return failure(format!("palisade ended with {status} without writing its run report; its stderr: {}", stderr.trim()));
    };
    if let Some(error) = report["error"].as_str() {
        let message = format!("palisade refused the run: {error}");
        return tool_result(message.clone(), json!({ "error": "refused", "message": message, "report": report }), true);
    }
    let denials: Vec<Value> = report["denials"].as_array().map(|entries| entries.iter().map(denial).collect()).unwrap_or_default();
    let structured = json!({
        "exit_code": report["exit"]["code"],
        "signal": report["exit"]["signal"],
        "timed_out": report["exit"]["timed_out"] == true,
        "stdout": finished.stdout.text(),
        "stderr": finished.stderr.text(),
        "stdout_bytes": finished.stdout.total,
        "stderr_bytes": finished.stderr.total,
        "stdout_cut": finished.stdout.is_cut(),
        "stderr_cut": finished.stderr.is_cut(),
        "denials": denials,
        "report": report,
    });
    tool_result(run_text(finished, &structured), structured, false)
}

/// Formats the text block of a run: the status line, each stream, and the denials.
fn run_text(finished: &Finished, structured: &Value) -> String {
    let report = &structured["report"];
    let mut text = status_line(report);
    text.push('\n');
    append_streams(&mut text, &finished.stdout, &finished.stderr);
    append_denials(&mut text, structured);
    let unlisted = report["network"]["denials_not_listed"].as_u64().unwrap_or(0);
    if unlisted > 0 {
        text.push_str(&format!("({unlisted} more network refusals are counted in report.network.denials_not_listed)\n"));
    }
    text
}

fn append_streams(text: &mut String, stdout: &Captured, stderr: &Captured) {
    for (name, captured) in [("stdout", stdout), ("stderr", stderr)] {
        text.push_str(&format!("--- {name} ---\n"));
        let content = captured.text();
        if content.is_empty() && !captured.is_cut() {
            text.push_str("(empty)\n");
            continue;
        }
        text.push_str(&content);
        if !content.ends_with('\n') {
            text.push('\n');
        }
        if captured.is_cut() {
            let more = captured.total - captured.kept.len() as u64;
            text.push_str(&format!("[palisade: {more} more bytes of {name} cut]\n"));
        }
    }
}

fn append_denials(text: &mut String, structured: &Value) {
    let denials = structured["denials"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !denials.is_empty() {
        text.push_str("--- denials ---\n");
        for denial in denials {
            text.push_str(&format!("{}: {}\n", denial["kind"].as_str().unwrap_or("?"), denial["message"].as_str().unwrap_or_default()));
        }
    }
}

/// Formats the text block of a `session_exec` result: the status line, then each stream.
pub fn session_text(status: &str, ended: &crate::mcp::sessions::Ended, structured: &Value) -> String {
    let mut text = status.to_owned();
    text.push('\n');
    append_streams(&mut text, &ended.stdout, &ended.stderr);
    append_denials(&mut text, structured);
    if ended.output_held {
        text.push_str("(a background process still holds the output open; what it writes later is not shown)\n");
    }
    text
}

/// Builds the result of a session command whose session ended under it, or before it.
pub fn session_ended(session: &str, reason: &str, report: Option<Value>) -> Value {
    let denials: Vec<Value> = report.as_ref().and_then(|report| report["denials"].as_array()).map(|entries| entries.iter().map(denial).collect()).unwrap_or_default();
    let mut message = format!("session {session} has ended: {reason}");
    for denial in &denials {
        message.push_str(&format!("\n{}: {}", denial["kind"].as_str().unwrap_or("?"), denial["message"].as_str().unwrap_or_default()));
    }
    message.push_str("\nOpen a new session with session_open.");
    tool_result(message.clone(), json!({ "error": "session_ended", "session": session, "message": message, "denials": denials, "report": report }), true)
}

/// Builds the result of `session_close`.
pub fn session_closed(session: &str, report: Option<Value>) -> Value {
    let denials: Vec<Value> = report.as_ref().and_then(|report| report["denials"].as_array()).map(|entries| entries.iter().map(denial).collect()).unwrap_or_default();
    let mut text = format!("Closed session {session}.");
    if !denials.is_empty() {
        text.push_str(" While it was open:");
        for denial in &denials {
            text.push_str(&format!("\n{}: {}", denial["kind"].as_str().unwrap_or("?"), denial["message"].as_str().unwrap_or_default()));
        }
    }
    tool_result(text, json!({ "session": session, "denials": denials, "report": report }), false)
}

/// Formats one line on how the run ended, with the message of the limit that ended it.
fn status_line(report: &Value) -> String {
    let ending_limit = report["denials"]
        .as_array()
        .and_then(|denials| denials.iter().find(|denial| denial["kind"] == "limit" && denial["ended_run"] == true))
        .and_then(|denial| denial["message"].as_str());
    let exit = &report["exit"];
    let line = if exit["timed_out"] == true {
        "timed out".to_owned()
    } else if let Some(signal) = exit["signal"].as_i64() {
        format!("killed by signal {signal}")
    } else if let Some(code) = exit["code"].as_i64() {
        match report["exec_error"].as_str() {
            Some(reason) => format!("exit code {code}: {reason}"),
            None => format!("exit code {code}"),
        }
    } else {
        "ended without an exit status".to_owned()
    };
    match ending_limit {
        Some(message) => format!("{line}: {message}"),
        None => line,
    }
}

/// Maps one entry of the report's `denials` to `{kind, object, rule, message}`.
pub fn denial(entry: &Value) -> Value {
    match entry["kind"].as_str() {
        Some("limit") => {
            let limit = entry["limit"].as_str().unwrap_or_default();
            json!({
                "kind": "limit",
                "object": limit,
                "rule": limit_flag(limit, entry["value"].as_u64()),
                "message": entry["message"],
            })
        }
        Some("network") => {
            let destination = entry["destination"].as_str().unwrap_or_default();
            let object = match entry["port"].as_u64() {
                Some(port) if destination.contains(':') => format!("[{destination}]:{port}"),
                Some(port) => format!("{destination}:{port}"),
                None => destination.to_owned(),
            };
            json!({ "kind": "network", "object": object, "rule": entry["rule"], "message": entry["message"] })
        }
        _ => json!({ "kind": entry["kind"], "object": Value::Null, "rule": Value::Null, "message": entry["message"] }),
    }
}

/// Returns the flag that set a limit, with its value as palisade reads it, such as
/// `--memory 512M`.
fn limit_flag(limit: &str, value: Option<u64>) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    let (flag, text) = match limit {
        "timeout" => ("--timeout", format_duration(std::time::Duration::from_millis(value))),
        "cpu_time" => ("--cpu-time", format_duration(std::time::Duration::from_millis(value))),
        "memory" => ("--memory", format_size(value)),
        "max_file_size" => ("--max-file-size", format_size(value)),
        "max_output" => ("--max-output", format_size(value)),
        "max_procs" => ("--max-procs", value.to_string()),
        _ => return Value::Null,
    };
    json!(format!("{flag} {text}"))
}

/// Formats a size with the largest binary suffix that keeps it exact: `512M`, `1536K`.
fn format_size(bytes: u64) -> String {
    for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes > 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_maps_report_entries() {
        let memory = json!({"kind": "limit", "limit": "memory", "value": 536870912u64, "ended_run": true, "message": "m"});
        assert_eq!(denial(&memory), json!({"kind": "limit", "object": "memory", "rule": "--memory 512M", "message": "m"}));
        let network = json!({"kind": "network", "destination": "::1", "port": 443, "protocol": "connect", "rule": "::1", "message": "n"});
        assert_eq!(denial(&network), json!({"kind": "network", "object": "[::1]:443", "rule": "::1", "message": "n"}));
        let timeout = json!({"kind": "limit", "limit": "timeout", "value": 90000, "ended_run": true, "message": "t"});
        assert_eq!(denial(&timeout)["rule"], "--timeout 1m30s");
    }

    #[test]
    fn format_size_stays_exact() {
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(palisade_policy::parse_size("1536K"), Ok(1536 << 10));
    }
}
