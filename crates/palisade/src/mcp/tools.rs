//! The two tools, `run` and `check`: their descriptions and input schemas, the strict reading
//! of their arguments, and their execution in child processes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::{NetworkMode, Profile};
use serde_json::{json, Map, Value};

use crate::mcp::ceiling::{format_duration, Ceiling, Refusal, TimeoutRequest};
use crate::mcp::child::{Spawner, OUTPUT_KEPT_BYTES, SESSION_EVENTS_FD, SESSION_SOCKET_FD};
use crate::mcp::sessions::{self, ExecError, Session, Sessions, MAX_SESSIONS};
use crate::mcp::jsonrpc::RpcError;
use crate::mcp::result;
use crate::mcp::scratch::Scratch;

const RUN_ARGUMENTS: &[&str] = &["command", "cwd", "timeout", "stdin", "env"];
const TOOL_NAMES: &[&str] = &["run", "session_open", "session_exec", "session_close", "check"];
const SESSION_OPEN_ARGUMENTS: &[&str] = &["cwd", "env"];
const SESSION_EXEC_ARGUMENTS: &[&str] = &["session", "command", "cwd", "timeout", "stdin", "env", "pty"];
const SESSION_CLOSE_ARGUMENTS: &[&str] = &["session"];

/// The state that tool calls share: the ceiling, the process spawner and the scratch directory.
pub struct Tools {
    pub ceiling: Ceiling,
    pub spawner: Spawner,
    pub scratch: Scratch,
    pub sessions: Sessions,
}

/// A tool call with its arguments read and checked for type.
#[derive(Debug)]
pub enum Call {
    Run(RunRequest),
    SessionOpen { cwd: Option<String>, env: Vec<(String, String)> },
    SessionExec { session: String, request: RunRequest, terminal: Option<(u16, u16)> },
    SessionClose { session: String },
    Check,
}

#[derive(Debug)]
pub struct RunRequest {
    argv: Vec<OsString>,
    /// The shell command line, when the command was given as one.
    line: Option<String>,
    cwd: Option<String>,
    timeout: Option<TimeoutRequest>,
    stdin: Option<String>,
    env: Vec<(String, String)>,
}

impl Tools {
    /// Returns the result of `tools/list`.
    pub fn list(&self) -> Value {
        json!({ "tools": [self.run_tool(), self.session_open_tool(), self.session_exec_tool(), session_close_tool(), check_tool()] })
    }

    /// Describes the sandbox the ceiling sets in a few sentences for the model. They are the
    /// `instructions` of `initialize` and the start of the `run` tool's description.
    pub fn sandbox_summary(&self) -> String {
        let policy = &self.ceiling.policy;
        let workspace = policy.workspace.display();
        let filesystem = match policy.profile {
            Profile::WorkspaceWrite => {
                let others: Vec<String> = policy.filesystem.writable.iter().filter(|path| **path != policy.workspace).map(|path| path.display().to_string()).collect();
                let also = if others.is_empty() { String::new() } else { format!(" (also writable: {})", others.join(", ")) };
                format!("Commands run in palisade's sandbox. The workspace {workspace} is writable{also}; the rest of the system is read-only, and the home directory holds no credentials.")
            }
            Profile::ReadOnly => format!("Commands run in palisade's sandbox with every file read-only, the workspace {workspace} included; the home directory holds no credentials."),
            Profile::Unconfined => format!("Commands run WITHOUT a sandbox (profile unconfined), starting in the workspace {workspace}."),
        };
        let network = match &policy.network {
            NetworkMode::None => "There is no network access.".to_owned(),
            NetworkMode::Allowlist { allow, .. } => format!("Network access goes through palisade's proxy and reaches only {}; other destinations are refused.", allow.join(", ")),
            NetworkMode::Full => "The network is the host's.".to_owned(),
        };
        let timeout = match self.ceiling.timeout() {
            Some(timeout) => format!("Each run is killed after at most {}.", format_duration(timeout)),
            None => "Runs have no timeout unless a call sets one.".to_owned(),
        };
        format!("{filesystem} {network} {timeout}")
    }

    fn run_tool(&self) -> Value {
        let policy = &self.ceiling.policy;
        let description = format!(
            "Run a command and return its exit status, its output and what the sandbox denied. {summary} \
A non-zero exit status is a normal result. isError is true only when palisade refused or failed to start the run, or when the call \
asked for more than this server allows (structuredContent.error is then \"ceiling\", and its message says what to ask the user). \
stdout and stderr are each cut after {kept} bytes; stdout_bytes and stderr_bytes count all of it. stderr also carries palisade's own \
lines, which start with \"palisade:\". denials lists the limits the run reached and the network requests palisade's proxy refused. \
Reads of hidden paths and refused system calls reach the command only as error codes (such as ENOENT, EACCES or EPERM), so they are not listed.",
            summary = self.sandbox_summary(),
            kept = OUTPUT_KEPT_BYTES,
        );
        let timeout = match self.ceiling.timeout() {
            Some(max) => format!("Timeout for this run: seconds as a number, or a duration such as \"30s\" or \"5m\". At most {}, which is also the default.", format_duration(max)),
            None => "Timeout for this run: seconds as a number, or a duration such as \"30s\" or \"5m\". Default: none.".to_owned(),
        };
        json!({
            "name": "run",
            "title": "Run a command in the sandbox",
            "description": description,
            "inputSchema": {
                "type": "object",
                "properties": {
                    "command": {
                        "description": "A shell command line, run with /bin/sh -c, or an array of the program and its arguments.",
                        "anyOf": [
                            { "type": "string" },
                            { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                        ],
                    },
                    "cwd": {
                        "type": "string",
                        "description": format!(
                            "Working directory: relative to the workspace {}, or absolute inside it. Default: {}.",
                            policy.workspace.display(),
                            policy.cwd.display()
                        ),
                    },
                    "timeout": {
                        "description": timeout,
                        "anyOf": [
                            { "type": "number", "exclusiveMinimum": 0 },
                            { "type": "string" },
                        ],
                    },
                    "stdin": { "type": "string", "description": "Text for the command's standard input. Default: empty." },
                    "env": {
                        "type": "object",
                        "description": "Environment variables to set for the command, as NAME: VALUE.",
                        "additionalProperties": { "type": "string" },
                    },
                },
                "required": ["command"],
                "additionalProperties": false,
            },
            "annotations": {
                "readOnlyHint": false,
                "openWorldHint": policy.network != NetworkMode::None,
            },
        })
    }

    /// Runs a call until it ends or `cancelled` completes. Returns the tool result, or `None`
    /// when cancelled, because under the MCP specification a cancelled request gets no response.
    pub async fn call(&self, call: Call, cancelled: impl Future<Output = ()>) -> Option<Value> {
        match call {
            Call::Run(request) => self.run(request, cancelled).await,
            Call::SessionOpen { cwd, env } => self.session_open(cwd, env, cancelled).await,
            Call::SessionExec { session, request, terminal } => self.session_exec(&session, request, terminal, cancelled).await,
            Call::SessionClose { session } => Some(self.session_close(&session).await),
            Call::Check => self.check(cancelled).await,
        }
    }

    async fn run(&self, request: RunRequest, cancelled: impl Future<Output = ()>) -> Option<Value> {
        let (cwd, timeout) = match self.narrow(&request) {
            Ok(narrowed) => narrowed,
            Err(refusal) => return Some(result::refusal(&refusal)),
        };
        let report_path = self.scratch.report_path();
        let mut args: Vec<OsString> = vec!["run".into()];
        args.extend(self.ceiling.run_flags(timeout));
        for (name, value) in &request.env {
            args.push("--env".into());
            args.push(format!("{name}={value}").into());
        }
        args.push("--report".into());
        args.push(report_path.clone().into());
        args.push("--".into());
        args.extend(request.argv.iter().cloned());

        let stdin = request.stdin.map(String::into_bytes);
        let outcome = self.spawner.run(&args, &cwd, stdin, cancelled).await;
        let report = std::fs::read(&report_path).ok().and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        let _ = std::fs::remove_file(&report_path);
        match outcome {
            Ok(Some(finished)) => Some(result::run(&finished, report)),
            Ok(None) => None,
            Err(error) => Some(result::failure(format!("failed to start palisade run: {error}"))),
        }
    }

    fn narrow(&self, request: &RunRequest) -> Result<(PathBuf, Option<Duration>), Refusal> {
        let cwd = match &request.cwd {
            Some(cwd) => self.ceiling.narrow_cwd(cwd)?,
            None => self.ceiling.policy.cwd.clone(),
        };
        let timeout = self.ceiling.narrow_timeout(request.timeout.as_ref())?;
        Ok((cwd, timeout))
    }

    async fn check(&self, cancelled: impl Future<Output = ()>) -> Option<Value> {
        let args: Vec<OsString> = vec!["check".into(), "--json".into()];
        let finished = match self.spawner.run(&args, self.ceiling.workspace(), None, cancelled).await {
            Ok(Some(finished)) => finished,
            Ok(None) => return None,
            Err(error) => return Some(result::failure(format!("failed to start palisade check: {error}"))),
        };
        let layers: Value = match serde_json::from_slice(&finished.stdout.kept) {
            Ok(layers) => layers,
            Err(error) => {
                return Some(result::failure(format!(
                    "palisade check ended with {} and its output is no JSON ({error}); its stderr: {}",
                    finished.status,
                    finished.stderr.text().trim()
                )));
            }
        };
        Some(result::tool_result(check_summary(&layers), layers, false))
    }
}

impl Tools {
    fn session_open_tool(&self) -> Value {
        let policy = &self.ceiling.policy;
        json!({
            "name": "session_open",
            "title": "Open a persistent sandbox session",
            "description": format!(
                "Open a session: one sandbox in which later session_exec calls run commands one after another, sharing files in /tmp, background \
processes, the working directory and exported environment variables. A command in a session starts in about a millisecond, where run starts \
a new sandbox each time. Returns the session's name for session_exec and session_close. At most {max} sessions are open at once; close \
the ones you are done with. Memory and process limits hold for the whole session.",
                max = MAX_SESSIONS
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "cwd": {
                        "type": "string",
                        "description": format!("Starting working directory: relative to the workspace {}, or absolute inside it. Default: {}.", policy.workspace.display(), policy.cwd.display()),
                    },
                    "env": {
                        "type": "object",
                        "description": "Environment variables to set for every command of the session, as NAME: VALUE.",
                        "additionalProperties": { "type": "string" },
                    },
                },
                "additionalProperties": false,
            },
            "annotations": { "readOnlyHint": false, "openWorldHint": policy.network != NetworkMode::None },
        })
    }

    fn session_exec_tool(&self) -> Value {
        let mut tool = self.run_tool();
        tool["name"] = json!("session_exec");
        tool["title"] = json!("Run a command in an open session");
        tool["description"] = json!(format!(
            "Run a command in a session from session_open, after the session's previous command ends. A shell command line runs in the \
session's shell state: `cd` and `export` carry over to later commands (a line that calls `exit` keeps the state as it was). An array \
command runs directly and changes nothing for later commands. Background processes keep running until the session closes. The timeout \
kills the command's process group; output is cut after {kept} bytes per stream, as for run. The result's cwd is the session's working \
directory after the command.",
            kept = OUTPUT_KEPT_BYTES,
        ));
        let schema = &mut tool["inputSchema"];
        schema["properties"]["session"] = json!({ "type": "string", "description": "The session's name, as session_open returned it." });
        schema["properties"]["cwd"]["description"] = json!(format!(
            "Working directory for this command: relative to the workspace {}, or absolute inside it. Default: the session's current directory.",
            self.ceiling.workspace().display()
        ));
        schema["properties"]["env"]["description"] = json!("Environment variables for this command only, as NAME: VALUE.");
        schema["properties"]["pty"] = json!({
            "description": "Run the command on a pseudo-terminal of its own instead of pipes, for programs that need one (prompts, REPLs, \
colored output). true gives 24 rows and 80 columns. stdin is typed into the terminal, followed by end-of-file (Ctrl-D), and the terminal echoes \
it; stdout carries everything the terminal showed, and stderr is empty.",
            "anyOf": [
                { "type": "boolean" },
                {
                    "type": "object",
                    "properties": { "rows": { "type": "integer", "minimum": 1, "maximum": 1000 }, "cols": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                    "required": ["rows", "cols"],
                    "additionalProperties": false,
                },
            ],
        });
        schema["required"] = json!(["session", "command"]);
        tool
    }

    async fn session_open(&self, cwd: Option<String>, env: Vec<(String, String)>, cancelled: impl Future<Output = ()>) -> Option<Value> {
        let cwd = match cwd.map(|cwd| self.ceiling.narrow_cwd(&cwd)).transpose() {
            Ok(cwd) => cwd.unwrap_or_else(|| self.ceiling.policy.cwd.clone()),
            Err(refusal) => return Some(result::refusal(&refusal)),
        };
        let Some(name) = self.sessions.reserve() else {
            let open = self.sessions.names().join(", ");
            let message = format!("{MAX_SESSIONS} sessions are open already ({open}); close one with session_close first");
            return Some(result::tool_result(message.clone(), json!({ "error": "too_many_sessions", "open": self.sessions.names(), "message": message }), true));
        };
        let descriptors = match sessions::Descriptors::create() {
            Ok(descriptors) => descriptors,
            Err(error) => return Some(result::failure(format!("failed to create the session's socket and event pipe: {error}"))),
        };

        let report_path = self.scratch.report_path();
        let mut args: Vec<OsString> = vec!["session-host".into()];
        args.extend(self.ceiling.run_flags(None));
        // The ceiling's timeout holds for each command of the session, not for the session.
        args.extend(["--timeout".into(), "unlimited".into()]);
        for (name, value) in &env {
            args.extend(["--env".into(), format!("{name}={value}").into()]);
        }
        args.extend(["--report".into(), report_path.clone().into_os_string()]);
        args.extend(["--socket-fd".into(), SESSION_SOCKET_FD.to_string().into()]);
        args.extend(["--events".into(), format!("/dev/fd/{SESSION_EVENTS_FD}").into()]);
        let child = match self.spawner.spawn_session(&args, &cwd, &descriptors.host_socket, &descriptors.events_write) {
            Ok(child) => child,
            Err(error) => return Some(result::failure(format!("failed to start palisade for a session: {error}"))),
        };
        let sessions::Descriptors { socket, host_socket, events_read, events_write } = descriptors;
        // Only the child may hold these: with a copy here, the server would not see the
        // socket close when a child that failed to start exits.
        drop((host_socket, events_write));

        let started = tokio::select! {
            started = Session::start(name.clone(), child, socket, events_read, report_path.clone()) => started,
            () = cancelled => return None,
        };
        let session = match started {
            Ok(session) => Arc::new(session),
            Err(reason) => {
                let report = sessions::take_report(&report_path);
                let message = format!("failed to open a session: {reason}");
                return Some(result::tool_result(message.clone(), json!({ "error": "refused", "message": message, "report": report }), true));
            }
        };

        let cwd = session.cwd().await;
        if let Err(session) = self.sessions.insert(Arc::clone(&session)) {
            session.end("too many sessions").await;
            let message = format!("{MAX_SESSIONS} sessions are open already; close one with session_close first");
            return Some(result::tool_result(message.clone(), json!({ "error": "too_many_sessions", "open": self.sessions.names(), "message": message }), true));
        }
        let text = format!("Opened session {name} in {}. Run commands with session_exec and session: \"{name}\"; end it with session_close.", cwd.display());
        Some(result::tool_result(text, json!({ "session": name, "cwd": cwd }), false))
    }

    async fn session_exec(&self, name: &str, request: RunRequest, terminal: Option<(u16, u16)>, cancelled: impl Future<Output = ()>) -> Option<Value> {
        let Some(session) = self.sessions.get(name) else {
            return Some(unknown_session("session_exec", name, &self.sessions.names()));
        };
        let cwd = match request.cwd.as_deref().map(|cwd| self.ceiling.narrow_cwd(cwd)).transpose() {
            Ok(cwd) => cwd,
            Err(refusal) => return Some(result::refusal(&refusal)),
        };
        let timeout = match self.ceiling.narrow_timeout(request.timeout.as_ref()) {
            Ok(timeout) => timeout,
            Err(refusal) => return Some(result::refusal(&refusal)),
        };
        let command = match request.line {
            Some(line) => sessions::Command::Line(line),
            None => sessions::Command::Argv(request.argv),
        };
        let exec = sessions::Exec {
            command,
            cwd,
            timeout,
            stdin: request.stdin.map(String::into_bytes),
            env: request.env,
            max_output: self.ceiling.policy.limits.max_output,
            terminal,
        };
        match session.exec(exec, cancelled).await {
            Ok(Some(ended)) => {
                let structured = sessions::structured(name, &ended, timeout);
                Some(result::tool_result(result::session_text(&sessions::status_text(&ended), &ended, &structured), structured, false))
            }
            Ok(None) => None,
            Err(ExecError::SessionEnded(reason)) => {
                self.sessions.remove(name);
                let report = sessions::take_report(&session.report_path);
                Some(result::session_ended(name, &reason, report))
            }
            Err(ExecError::TooLarge(bytes)) => {
                let message = format!(
                    "the command and the session's environment take {bytes} bytes, over the maximum of {} for one command; write long scripts to a file in the workspace and run that",
                    palisade_linux::session::MAX_MESSAGE_BYTES
                );
                Some(result::tool_result(message.clone(), json!({ "error": "invalid_argument", "tool": "session_exec", "argument": "command", "message": message }), true))
            }
            Err(ExecError::Io(error)) => {
                self.sessions.remove(name);
                let reason = session.end(&format!("lost the connection to the session: {error}")).await;
                let report = sessions::take_report(&session.report_path);
                Some(result::session_ended(name, &reason, report))
            }
        }
    }

    async fn session_close(&self, name: &str) -> Value {
        let Some(session) = self.sessions.remove(name) else {
            return unknown_session("session_close", name, &self.sessions.names());
        };
        session.close().await;
        let report = sessions::take_report(&session.report_path);
        result::session_closed(name, report)
    }
}

fn session_close_tool() -> Value {
    json!({
        "name": "session_close",
        "title": "Close a session",
        "description": "Close a session from session_open: every process still running in it is killed, and its sandbox removed. \
structuredContent.report is the session's run report, with every limit it reached and every network request palisade's proxy refused.",
        "inputSchema": {
            "type": "object",
            "properties": { "session": { "type": "string", "description": "The session's name, as session_open returned it." } },
            "required": ["session"],
            "additionalProperties": false,
        },
        "annotations": { "readOnlyHint": false, "destructiveHint": true, "openWorldHint": false },
    })
}

fn unknown_session(tool: &str, name: &str, open: &[String]) -> Value {
    let listed = if open.is_empty() { "none is open".to_owned() } else { format!("open: {}", open.join(", ")) };
    let message = format!("no open session is named \"{name}\" ({listed}); open one with session_open");
    result::tool_result(message.clone(), json!({ "error": "invalid_argument", "tool": tool, "argument": "session", "message": message }), true)
}

fn check_tool() -> Value {
    json!({
        "name": "check",
        "title": "Check the sandbox's protection layers",
        "description": "Report which of palisade's protection layers (namespaces, Landlock, seccomp, cgroup v2, rlimits) this machine enforces, \
and for each missing one, why and how to enable it. Takes no arguments. structuredContent is the output of `palisade check --json`.",
        "inputSchema": { "type": "object", "properties": {}, "additionalProperties": false },
        "annotations": { "readOnlyHint": true, "openWorldHint": false },
    })
}

/// Formats the text block of `check`: the verdict, then each missing layer with its fix.
fn check_summary(layers: &Value) -> String {
    let mut text = if layers["default_policy_enforced"] == true {
        "The default policy is fully enforced on this machine.".to_owned()
    } else {
        "The default policy cannot be fully enforced on this machine: palisade run refuses without --allow-degraded.".to_owned()
    };
    let entries = layers["layers"].as_object().into_iter().flatten();
    for (name, layer) in entries.filter(|(_, layer)| layer["available"] == false) {
        let required = if layer["required"] == true { "required" } else { "optional" };
        text.push_str(&format!("\n{name} ({required}) is missing: {}", layer["detail"].as_str().unwrap_or_default()));
        if let Some(fix) = layer["fix"].as_str() {
            text.push_str(&format!("\n  fix: {fix}"));
        }
    }
    text
}

/// Reads the `params` of `tools/call`. Unknown tools, unknown argument names and arguments of
/// the wrong type are rejected, so nothing the caller meant is silently dropped. An error whose
/// `data` names an argument is sent as a tool result with `isError` (see `Session::start_call`),
/// any other as a JSON-RPC error.
pub fn parse_call(mut params: Map<String, Value>) -> Result<Call, RpcError> {
    let name = match params.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(RpcError::invalid_params(format!("Invalid params: \"name\" must be the name of a tool: {}", TOOL_NAMES.join(", ")))),
    };
    let mut arguments = match params.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(arguments)) => arguments,
        Some(_) => return Err(RpcError::invalid_params("Invalid params: \"arguments\" must be an object").with_data(json!({ "tool": name }))),
    };
    match name.as_str() {
        "run" => parse_run(arguments).map(Call::Run),
        "session_open" => {
            check_names("session_open", &arguments, SESSION_OPEN_ARGUMENTS)?;
            let cwd = parse_cwd("session_open", &mut arguments)?;
            let env = parse_env_argument("session_open", &mut arguments)?;
            Ok(Call::SessionOpen { cwd, env })
        }
        "session_exec" => {
            check_names("session_exec", &arguments, SESSION_EXEC_ARGUMENTS)?;
            let session = parse_session("session_exec", &mut arguments)?;
            let terminal = parse_pty(&mut arguments)?;
            let request = parse_command_request("session_exec", arguments)?;
            Ok(Call::SessionExec { session, request, terminal })
        }
        "session_close" => {
            check_names("session_close", &arguments, SESSION_CLOSE_ARGUMENTS)?;
            Ok(Call::SessionClose { session: parse_session("session_close", &mut arguments)? })
        }
        "check" => match arguments.keys().next() {
            Some(argument) => Err(argument_error("check", argument, format!("unknown argument \"{argument}\" for tool check, which takes no arguments"))),
            None => Ok(Call::Check),
        },
        _ => Err(RpcError::invalid_params(format!("Unknown tool: {name}; this server offers {}", TOOL_NAMES.join(", "))).with_data(json!({ "tool": name }))),
    }
}

fn argument_error(tool: &str, argument: &str, message: String) -> RpcError {
    RpcError::invalid_params(format!("Invalid params: {message}")).with_data(json!({ "tool": tool, "argument": argument }))
}

fn parse_run(arguments: Map<String, Value>) -> Result<RunRequest, RpcError> {
    check_names("run", &arguments, RUN_ARGUMENTS)?;
    parse_command_request("run", arguments)
}

/// Rejects an argument `tool` does not take, naming the ones it does.
fn check_names(tool: &str, arguments: &Map<String, Value>, known: &[&str]) -> Result<(), RpcError> {
    let Some(unknown) = arguments.keys().find(|name| !known.contains(&name.as_str())) else { return Ok(()) };
    let (last, others) = known.split_last().expect("every tool takes an argument");
    let takes = if others.is_empty() { (*last).to_owned() } else { format!("{} and {last}", others.join(", ")) };
    Err(argument_error(tool, unknown, format!("unknown argument \"{unknown}\" for tool {tool}; it takes {takes}")))
}

/// Reads the arguments `run` and `session_exec` share: command, cwd, timeout, stdin and env.
fn parse_command_request(tool: &str, mut arguments: Map<String, Value>) -> Result<RunRequest, RpcError> {
    let invalid = |argument: &str, message: String| argument_error(tool, argument, message);
    let (argv, line) = match arguments.remove("command") {
        Some(Value::String(line)) => (vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()], Some(line)),
        Some(Value::Array(items)) if !items.is_empty() => {
            let strings: Option<Vec<String>> = items.into_iter().map(|item| item.as_str().map(str::to_owned)).collect();
            (strings.ok_or_else(|| invalid("command", "argument \"command\" must be a string or an array of strings".into()))?, None)
        }
        Some(Value::Array(_)) => return Err(invalid("command", "argument \"command\" must not be an empty array".into())),
        Some(_) => return Err(invalid("command", "argument \"command\" must be a string or an array of strings".into())),
        None => return Err(invalid("command", "missing argument \"command\"".into())),
    };
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command", "argument \"command\" must not contain NUL characters".into()));
    }
    let cwd = parse_cwd(tool, &mut arguments)?;
    let timeout = arguments.remove("timeout").map(|value| parse_timeout(&value).map_err(|message| invalid("timeout", message))).transpose()?;
    let stdin = match arguments.remove("stdin") {
        None => None,
        Some(Value::String(stdin)) => Some(stdin),
        Some(_) => return Err(invalid("stdin", "argument \"stdin\" must be a string".into())),
    };
    let env = parse_env_argument(tool, &mut arguments)?;
    Ok(RunRequest { argv: argv.into_iter().map(OsString::from).collect(), line, cwd, timeout, stdin, env })
}

fn parse_cwd(tool: &str, arguments: &mut Map<String, Value>) -> Result<Option<String>, RpcError> {
    match arguments.remove("cwd") {
        None => Ok(None),
        Some(Value::String(cwd)) if !cwd.contains('\0') => Ok(Some(cwd)),
        Some(_) => Err(argument_error(tool, "cwd", "argument \"cwd\" must be a path without NUL characters".into())),
    }
}

fn parse_env_argument(tool: &str, arguments: &mut Map<String, Value>) -> Result<Vec<(String, String)>, RpcError> {
    match arguments.remove("env") {
        None => Ok(Vec::new()),
        Some(Value::Object(env)) => parse_env(env).map_err(|message| argument_error(tool, "env", message)),
        Some(_) => Err(argument_error(tool, "env", "argument \"env\" must be an object of NAME: VALUE strings".into())),
    }
}

/// The window size a `pty: true` terminal gets.
const DEFAULT_TERMINAL: (u16, u16) = (24, 80);

/// Reads `pty`: `true` for a 24 by 80 terminal, or `{"rows": R, "cols": C}`.
fn parse_pty(arguments: &mut Map<String, Value>) -> Result<Option<(u16, u16)>, RpcError> {
    let invalid = || argument_error("session_exec", "pty", "argument \"pty\" must be true, false or {\"rows\": ROWS, \"cols\": COLUMNS} with each from 1 to 1000".into());
    let dimension = |size: &Map<String, Value>, name: &str| size.get(name).and_then(Value::as_u64).filter(|value| (1..=1000).contains(value)).map(|value| value as u16);
    match arguments.remove("pty") {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(DEFAULT_TERMINAL)),
        Some(Value::Object(size)) if size.keys().all(|key| key == "rows" || key == "cols") => {
            match (dimension(&size, "rows"), dimension(&size, "cols")) {
                (Some(rows), Some(columns)) => Ok(Some((rows, columns))),
                _ => Err(invalid()),
            }
        }
        Some(_) => Err(invalid()),
    }
}

fn parse_session(tool: &str, arguments: &mut Map<String, Value>) -> Result<String, RpcError> {
    match arguments.remove("session") {
        Some(Value::String(session)) => Ok(session),
        Some(_) => Err(argument_error(tool, "session", "argument \"session\" must be the name session_open returned, such as \"s1\"".into())),
        None => Err(argument_error(tool, "session", "missing argument \"session\"; open one with session_open".into())),
    }
}

/// Reads a timeout: seconds as a positive number, a duration palisade accepts, or
/// `"unlimited"`. Fractions of seconds are rounded up to whole milliseconds.
fn parse_timeout(value: &Value) -> Result<TimeoutRequest, String> {
    match value {
        Value::Number(number) => {
            let seconds = number.as_f64().unwrap_or(f64::NAN);
            let milliseconds = (seconds * 1000.0).ceil();
            // An upper bound of about 31,000 years keeps the conversion exact.
            if !(1.0..1e15).contains(&milliseconds) {
                return Err(format!("argument \"timeout\" must be a number of seconds from 0.001 to 10^12, not {number}"));
            }
            Ok(TimeoutRequest::Duration(Duration::from_millis(milliseconds as u64)))
        }
        Value::String(text) if text == "unlimited" => Ok(TimeoutRequest::Unlimited),
        Value::String(text) => palisade_policy::parse_duration(text).map(TimeoutRequest::Duration).map_err(|reason| format!("argument \"timeout\" is invalid: {reason}")),
        _ => Err("argument \"timeout\" must be a number of seconds or a duration such as \"30s\"".into()),
    }
}

/// Reads `env`, checking names as palisade's own `--env` does, so a bad name is an invalid
/// argument here instead of a refused run.
fn parse_env(env: Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let mut variables = Vec::new();
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || name.chars().any(char::is_whitespace) {
            return Err(format!("invalid variable name \"{name}\" in argument \"env\": a name must be non-empty, without '=', NUL or whitespace"));
        }
        match value {
            Value::String(value) if !value.contains('\0') => variables.push((name, value)),
            _ => return Err(format!("the value of \"{name}\" in argument \"env\" must be a string without NUL characters")),
        }
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_arguments(arguments: Value) -> Result<RunRequest, RpcError> {
        let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
        parse_run(arguments)
    }

    #[test]
    fn parse_run_reads_both_command_forms() {
        let line = run_arguments(json!({"command": "echo hi"})).unwrap();
        assert_eq!(line.argv, ["/bin/sh", "-c", "echo hi"]);
        let argv = run_arguments(json!({"command": ["printf", "%s", "a b"], "env": {"A": "1"}, "stdin": "x"})).unwrap();
        assert_eq!(argv.argv, ["printf", "%s", "a b"]);
        assert_eq!(argv.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(argv.stdin.as_deref(), Some("x"));
    }

    #[test]
    fn parse_run_names_the_bad_argument() {
        for (arguments, argument) in [
            (json!({"command": "true", "timeot": 5}), "timeot"),
            (json!({}), "command"),
            (json!({"command": 5}), "command"),
            (json!({"command": []}), "command"),
            (json!({"command": ["a", 1]}), "command"),
            (json!({"command": "true", "timeout": true}), "timeout"),
            (json!({"command": "true", "timeout": -1}), "timeout"),
            (json!({"command": "true", "timeout": "5 minutes"}), "timeout"),
            (json!({"command": "true", "cwd": 3}), "cwd"),
            (json!({"command": "true", "stdin": ["x"]}), "stdin"),
            (json!({"command": "true", "env": {"A B": "1"}}), "env"),
            (json!({"command": "true", "env": {"A": 1}}), "env"),
        ] {
            let error = run_arguments(arguments.clone()).expect_err(&arguments.to_string());
            assert_eq!(error.code, crate::mcp::jsonrpc::INVALID_PARAMS, "{arguments}");
            assert_eq!(error.data.as_ref().unwrap()["argument"], argument, "{arguments}: {}", error.message);
            assert!(error.message.contains(argument), "{arguments}: {}", error.message);
        }
    }

    #[test]
    fn parse_timeout_accepts_numbers_and_durations() {
        assert_eq!(parse_timeout(&json!(30)), Ok(TimeoutRequest::Duration(Duration::from_secs(30))));
        assert_eq!(parse_timeout(&json!(1.5)), Ok(TimeoutRequest::Duration(Duration::from_millis(1500))));
        assert_eq!(parse_timeout(&json!("5m")), Ok(TimeoutRequest::Duration(Duration::from_secs(300))));
        assert_eq!(parse_timeout(&json!("unlimited")), Ok(TimeoutRequest::Unlimited));
        assert!(parse_timeout(&json!(0)).is_err());
        assert!(parse_timeout(&json!(1e300)).is_err());
    }

    #[test]
    fn parse_call_rejects_unknown_tool_and_check_arguments() {
        let unknown = parse_call(json!({"name": "rm"}).as_object().unwrap().clone()).unwrap_err();
        assert_eq!(unknown.data.unwrap()["tool"], "rm");
        let check = parse_call(json!({"name": "check", "arguments": {"verbose": true}}).as_object().unwrap().clone()).unwrap_err();
        assert_eq!(check.data.unwrap()["argument"], "verbose");
        assert!(matches!(parse_call(json!({"name": "check"}).as_object().unwrap().clone()), Ok(Call::Check)));
    }
}
