//! `palisade mcp`: a scripted client drives the real server over its stdin and stdout, and
//! the host is checked afterwards for processes a cancelled or abandoned run left behind.
//!
//! Every server runs under `timeout`, and every wait for a response is bounded, so a hang
//! fails one test instead of stalling the suite.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture};
use crate::suite::process::{pids_matching, unique_marker, wait_until_gone, MarkedProcesses};

/// The maximum time a test waits for one response. Runs here take well under a second.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// The wall-clock limit of every server, enforced by `timeout` around it.
const SERVER_LIMIT_SECONDS: &str = "60";
/// How long a run's processes may take to disappear after a cancellation or disconnection.
const GONE_WAIT: Duration = Duration::from_secs(5);

/// A client of one `palisade mcp` process.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    messages: Receiver<Value>,
    /// Responses read while waiting for another one, by id.
    unclaimed: HashMap<String, Value>,
    next_id: u64,
    stderr: Arc<Mutex<String>>,
}

impl Client {
    /// Starts `palisade mcp CEILING` as the fixture's user, in the workspace, with the fake home.
    fn start(f: &Fixture, ceiling: &[&str]) -> Client {
        let server = f.as_owner(palisade_binary().to_str().unwrap());
        let mut command = Command::new("timeout");
        command.args(["--kill-after=5", SERVER_LIMIT_SECONDS]).arg(server.get_program()).args(server.get_args());
        command.arg("mcp").args(ceiling);
        command.current_dir(&f.ws).env("HOME", &f.home).env_remove("PALISADE_LOG");
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("failed to start palisade mcp");

        let (sender, messages) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // A line that is no JSON is passed on as a string, so the test shows it.
                let message = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if sender.send(message).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let collected = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = pipe.read(&mut buffer) {
                if read == 0 {
                    return;
                }
                collected.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        });
        let stdin = child.stdin.take();
        Client { child, stdin, messages, unclaimed: HashMap::new(), next_id: 1, stderr }
    }

    /// Starts a server and completes the handshake.
    fn initialized(f: &Fixture, ceiling: &[&str]) -> Client {
        let mut client = Client::start(f, ceiling);
        let response = client.request("initialize", json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "palisade-tests", "version": "1" },
        }));
        assert!(response.get("result").is_some(), "initialize failed: {response}");
        client.notify("notifications/initialized", json!({}));
        client
    }

    fn server_stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is closed");
        stdin.write_all(bytes).expect("failed to write to the server");
        stdin.flush().unwrap();
    }

    fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.write(&line);
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request without waiting; returns its id.
    fn send_request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        id
    }

    /// Sends a request and returns the whole response.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.response(&id)
    }

    /// Calls a tool and returns its result; a JSON-RPC error fails the test.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let response = self.request("tools/call", json!({ "name": tool, "arguments": arguments }));
        match response.get("result") {
            Some(result) => result.clone(),
            None => panic!("tools/call {tool} failed: {response}\nserver stderr:\n{}", self.server_stderr()),
        }
    }

    /// Calls `run` and returns the result's `structuredContent`, failing on a tool error.
    fn run(&mut self, arguments: Value) -> Value {
        let result = self.call("run", arguments.clone());
        assert_eq!(result["isError"], false, "run {arguments} gave a tool error: {result:#}");
        result["structuredContent"].clone()
    }

    /// Waits for the response with `id`, keeping the others it reads for later.
    fn response(&mut self, id: &Value) -> Value {
        let key = id.to_string();
        let deadline = Instant::now() + RESPONSE_WAIT;
        loop {
            if let Some(response) = self.unclaimed.remove(&key) {
                return response;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => {
                    self.unclaimed.insert(message["id"].to_string(), message);
                }
                Err(_) => panic!("no response to request {key} within {RESPONSE_WAIT:?}\nserver stderr:\n{}", self.server_stderr()),
            }
        }
    }

    /// Returns whether a response with `id` arrived so far.
    fn has_response(&mut self, id: &Value) -> bool {
        while let Ok(message) = self.messages.try_recv() {
            self.unclaimed.insert(message["id"].to_string(), message);
        }
        self.unclaimed.contains_key(&id.to_string())
    }

    /// Asserts that the server still responds to a ping.
    #[track_caller]
    fn assert_serving(&mut self) {
        let response = self.request("ping", json!({}));
        assert_eq!(response["result"], json!({}), "the server stopped serving: {response}\nserver stderr:\n{}", self.server_stderr());
    }

    /// Returns the pid of the server itself, which `timeout` runs as its only child.
    fn server_pid(&self) -> u32 {
        let output = Command::new("pgrep").args(["-P", &self.child.id().to_string()]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("found no server under timeout: {text:?}"))
    }

    /// Closes stdin and waits for the server to exit.
    fn disconnect(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit\nserver stderr:\n{}", self.server_stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits until some host process carries `marker` in its command line.
fn wait_until_started(marker: &str) {
    let deadline = Instant::now() + RESPONSE_WAIT;
    while pids_matching(marker).is_empty() {
        assert!(Instant::now() < deadline, "no process of the run {marker} started");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Builds a shell command that runs `sleep 60` under the name `marker`, so `pgrep -f` finds every
/// process of the run: palisade's own, the shell and the sleep.
fn marked_sleep(marker: &str) -> String {
    format!("cp /bin/sleep ./{marker} && exec ./{marker} 60")
}

both_identities!(handshake_lists_tools, |f: &Fixture| {
    let mut early = Client::start(f, &[]);
    let refused = early.request("tools/list", json!({}));
    assert_eq!(refused["error"]["code"], -32600, "tools/list before initialize: {refused}");
    let newest = early.request("initialize", json!({ "protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }));
    assert_eq!(newest["result"]["protocolVersion"], "2025-11-25", "an unknown version gets the newest: {newest}");

    let mut client = Client::start(f, &["--timeout", "10m"]);
    let initialized = client.request("initialize", json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }));
    let result = &initialized["result"];
    assert_eq!(result["protocolVersion"], "2025-06-18", "{initialized}");
    assert_eq!(result["serverInfo"]["name"], "palisade", "{initialized}");
    assert!(result["capabilities"]["tools"].is_object(), "{initialized}");
    let instructions = result["instructions"].as_str().unwrap();
    assert!(instructions.contains(&f.ws.display().to_string()), "the instructions do not name the workspace: {instructions}");
    assert!(instructions.contains("10m"), "the instructions do not give the timeout: {instructions}");
    client.notify("notifications/initialized", json!({}));
    client.assert_serving();

    let listed = client.request("tools/list", json!({}));
    let tools = listed["result"]["tools"].as_array().unwrap_or_else(|| panic!("{listed}"));
    let names: Vec<&str> = tools.iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["run", "session_open", "session_exec", "session_close", "check"]);
    for tool in tools {
        assert!(tool["description"].as_str().is_some_and(|text| text.len() > 80), "{tool:#}");
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool:#}");
        assert_eq!(tool["inputSchema"]["additionalProperties"], false, "{tool:#}");
    }
    let run = &tools[0];
    assert_eq!(run["inputSchema"]["required"], json!(["command"]), "{run:#}");
    let properties: Vec<&String> = run["inputSchema"]["properties"].as_object().unwrap().keys().collect();
    assert_eq!(properties, ["command", "cwd", "env", "stdin", "timeout"]);
    let description = run["description"].as_str().unwrap();
    assert!(description.contains("not listed"), "the description does not say hidden reads are not listed: {description}");

    let checked = client.call("check", json!({}));
    assert_eq!(checked["isError"], false, "{checked:#}");
    assert!(checked["structuredContent"]["layers"]["namespaces"].is_object(), "{checked:#}");
    assert!(checked["content"][0]["text"].as_str().unwrap().contains("default policy"), "{checked:#}");
});

both_identities!(run_returns_output_and_status, |f: &Fixture| {
    let mut client = Client::initialized(f, &[]);

    let line = client.call("run", json!({ "command": "echo hello; echo oops >&2" }));
    assert_eq!(line["isError"], false, "{line:#}");
    let structured = &line["structuredContent"];
    assert_eq!(structured["exit_code"], 0, "{structured:#}");
    assert_eq!(structured["signal"], Value::Null, "{structured:#}");
    assert_eq!(structured["timed_out"], false, "{structured:#}");
    assert_eq!(structured["stdout"], "hello\n", "{structured:#}");
    assert_eq!(structured["stderr"], "oops\n", "{structured:#}");
    assert_eq!(structured["stdout_bytes"], 6, "{structured:#}");
    assert_eq!(structured["stdout_cut"], false, "{structured:#}");
    assert_eq!(structured["denials"], json!([]), "{structured:#}");
    assert_eq!(structured["report"]["format"], 1, "{structured:#}");
    assert_eq!(structured["report"]["exit"], json!({ "code": 0 }), "{structured:#}");
    let text = line["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("exit code 0\n--- stdout ---\nhello\n--- stderr ---\noops\n"), "{text}");

    // An array is the argv itself, so no shell expands it.
    let argv = client.run(json!({ "command": ["printf", "%s|", "a b", "$HOME"] }));
    assert_eq!(argv["stdout"], "a b|$HOME|", "{argv:#}");

    let piped = client.run(json!({ "command": "cat; echo end", "stdin": "line 1\nline 2\n" }));
    assert_eq!(piped["stdout"], "line 1\nline 2\nend\n", "{piped:#}");

    let env = client.run(json!({ "command": "echo \"$GREETING\"", "env": { "GREETING": "hi there" } }));
    assert_eq!(env["stdout"], "hi there\n", "{env:#}");

    std::fs::create_dir_all(f.ws.join("sub/dir")).unwrap();
    f.chown_all();
    let nested = client.run(json!({ "command": "pwd", "cwd": "sub/dir" }));
    assert_eq!(nested["stdout"], format!("{}/sub/dir\n", f.ws.display()), "{nested:#}");
    let absolute = client.run(json!({ "command": "pwd", "cwd": f.ws.join("sub").display().to_string() }));
    assert_eq!(absolute["stdout"], format!("{}/sub\n", f.ws.display()), "{absolute:#}");

    // A failing command is a normal result, not a tool error.
    let failed = client.call("run", json!({ "command": "echo failing >&2; exit 3" }));
    assert_eq!(failed["isError"], false, "{failed:#}");
    assert_eq!(failed["structuredContent"]["exit_code"], 3, "{failed:#}");
    assert!(failed["content"][0]["text"].as_str().unwrap().starts_with("exit code 3\n"), "{failed:#}");

    let missing = client.run(json!({ "command": ["no-such-program-here"] }));
    assert_eq!(missing["exit_code"], 127, "{missing:#}");
    assert!(missing["report"]["exec_error"].is_string(), "{missing:#}");

    let long = client.call("run", json!({ "command": "head -c 100000 /dev/zero | tr '\\0' a" }));
    let structured = &long["structuredContent"];
    assert_eq!(structured["stdout_bytes"], 100_000, "{structured:#}");
    assert_eq!(structured["stdout_cut"], true, "{structured:#}");
    assert_eq!(structured["stdout"].as_str().unwrap().len(), 65_536);
    assert!(long["content"][0]["text"].as_str().unwrap().contains("\n[palisade: 34464 more bytes of stdout cut]\n"), "no cut marker");

    let slow = client.call("run", json!({ "command": "sleep 5", "timeout": 1 }));
    assert_eq!(slow["isError"], false, "{slow:#}");
    let structured = &slow["structuredContent"];
    assert_eq!(structured["timed_out"], true, "{structured:#}");
    assert_eq!(structured["exit_code"], Value::Null, "{structured:#}");
    let denials = structured["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{structured:#}");
    assert_eq!(denials[0]["kind"], "limit");
    assert_eq!(denials[0]["object"], "timeout");
    assert_eq!(denials[0]["rule"], "--timeout 1s");
    assert!(slow["content"][0]["text"].as_str().unwrap().starts_with("timed out: "), "{slow:#}");
});

both_identities!(ceiling_refuses_wider_requests, |f: &Fixture| {
    let mut client = Client::initialized(f, &["--timeout", "10m"]);
    let workspace = f.ws.display().to_string();

    let longer = client.call("run", json!({ "command": "true", "timeout": "20m" }));
    assert_eq!(longer["isError"], true, "{longer:#}");
    let message = "asked for a timeout of 20m, but this server allows at most 10m; ask the user to restart palisade mcp with a longer --timeout";
    assert_eq!(
        longer["structuredContent"],
        json!({ "error": "ceiling", "setting": "timeout", "requested": "20m", "allowed": "10m", "message": message })
    );
    assert_eq!(longer["content"][0]["text"], message);
    let in_seconds = client.call("run", json!({ "command": "true", "timeout": 1200 }));
    assert_eq!(in_seconds["structuredContent"]["requested"], "20m", "{in_seconds:#}");
    let unlimited = client.call("run", json!({ "command": "true", "timeout": "unlimited" }));
    assert_eq!(unlimited["structuredContent"]["error"], "ceiling", "{unlimited:#}");
    assert_eq!(unlimited["structuredContent"]["requested"], "unlimited", "{unlimited:#}");

    // A shorter timeout narrows the run; none keeps the ceiling's.
    let shorter = client.run(json!({ "command": "true", "timeout": "5m" }));
    assert_eq!(shorter["report"]["policy"]["limits"]["timeout"], "300s", "{shorter:#}");
    let default = client.run(json!({ "command": "true" }));
    assert_eq!(default["report"]["policy"]["limits"]["timeout"], "600s", "{default:#}");

    std::os::unix::fs::symlink(&f.out, f.ws.join("way-out")).unwrap();
    for outside in ["../out", "/", f.out.to_str().unwrap(), "way-out"] {
        let refused = client.call("run", json!({ "command": "touch escaped", "cwd": outside }));
        assert_eq!(refused["isError"], true, "{outside}: {refused:#}");
        let structured = &refused["structuredContent"];
        assert_eq!(structured["error"], "ceiling", "{outside}: {structured:#}");
        assert_eq!(structured["setting"], "cwd", "{structured:#}");
        assert_eq!(structured["requested"], outside, "{structured:#}");
        assert_eq!(structured["allowed"], workspace.as_str(), "{structured:#}");
        assert!(structured["message"].as_str().unwrap().contains("outside the workspace"), "{structured:#}");
    }
    assert!(!f.out.join("escaped").exists(), "a refused run ran");

    let missing = client.call("run", json!({ "command": "true", "cwd": "no/such/dir" }));
    assert_eq!(missing["isError"], true, "{missing:#}");
    assert_eq!(missing["structuredContent"]["error"], "invalid_argument", "{missing:#}");
    assert_eq!(missing["structuredContent"]["argument"], "cwd", "{missing:#}");
});

// The policy file is read once: a run that rewrites it must not widen the runs after it.
both_identities!(policy_file_read_once, |f: &Fixture| {
    let file = f.ws.join("ceiling.toml");
    f.write(&file, "[limits]\ntimeout = \"10m\"\n");
    let mut client = Client::initialized(f, &["--policy", "ceiling.toml"]);

    let rewritten = client.run(json!({ "command": "printf '[limits]\\ntimeout = \"2h\"\\n' > ceiling.toml && cat ceiling.toml" }));
    assert_eq!(rewritten["stdout"], "[limits]\ntimeout = \"2h\"\n", "the run could not rewrite the file: {rewritten:#}");

    let longer = client.call("run", json!({ "command": "true", "timeout": "1h" }));
    assert_eq!(longer["structuredContent"]["error"], "ceiling", "{longer:#}");
    assert_eq!(longer["structuredContent"]["allowed"], "10m", "{longer:#}");
    let default = client.run(json!({ "command": "true" }));
    assert_eq!(default["report"]["policy"]["limits"]["timeout"], "600s", "{default:#}");
});

both_identities!(network_refusal_listed_in_denials, |f: &Fixture| {
    if !Path::new("/usr/bin/curl").exists() {
        return skip(&f.name, "needs /usr/bin/curl");
    }
    // blocked.invalid is not on the allowlist, so the proxy refuses it before any lookup.
    let mut client = Client::initialized(f, &["--allow-domain", "127.0.0.1:9"]);
    let result = client.call("run", json!({ "command": "curl -s -o /dev/null -w 'code %{http_code}\\n' http://blocked.invalid/" }));
    assert_eq!(result["isError"], false, "{result:#}");
    let structured = &result["structuredContent"];
    assert_eq!(structured["stdout"], "code 403\n", "{structured:#}");
    let denials = structured["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{structured:#}");
    let denial = &denials[0];
    assert_eq!(denial["kind"], "network", "{denial:#}");
    assert_eq!(denial["object"], "blocked.invalid:80", "{denial:#}");
    assert_eq!(denial["rule"], Value::Null, "{denial:#}");
    assert!(denial["message"].as_str().unwrap().contains("not on the allowlist"), "{denial:#}");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("--- denials ---\nnetwork: blocked.invalid:80 is not on the allowlist"), "{text}");

    // In a session, each command's result lists the refusals made while it ran, and no others;
    // the session's report at close lists them all.
    let session = client.open_session(json!({}));
    let curl = "curl -s -o /dev/null -w 'code %{http_code}\\n'";
    let first = client.exec(&session, json!(format!("{curl} http://first.invalid/; {curl} https://second.invalid/")), json!({}));
    assert_eq!(first["stdout"], "code 403\ncode 000\n", "{first:#}");
    let objects: Vec<&str> = first["denials"].as_array().unwrap().iter().map(|denial| denial["object"].as_str().unwrap()).collect();
    assert_eq!(objects, ["first.invalid:80", "second.invalid:443"], "{first:#}");
    let quiet = client.exec(&session, json!("echo no network"), json!({}));
    assert_eq!(quiet["denials"], json!([]), "{quiet:#}");
    // A burst of refusals reaches the result whole: 1000 listed and the rest counted.
    let burst = "for i in $(seq 1005); do echo \"url = http://n$i.invalid/\"; echo 'output = /dev/null'; done > /tmp/urls; curl -s -K /tmp/urls; echo done";
    let many = client.exec(&session, json!(burst), json!({}));
    assert_eq!(many["stdout"], "done\n", "{many:#}");
    assert_eq!(many["denials"].as_array().unwrap().len(), 1000, "{}", many["denials_not_listed"]);
    assert_eq!(many["denials_not_listed"], 5, "{}", many["denials"].as_array().unwrap().len());
    let closed = client.call("session_close", json!({ "session": session }));
    let listed: Vec<&str> = closed["structuredContent"]["denials"].as_array().unwrap().iter().map(|denial| denial["object"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 1007, "{:?}", &listed[..3]);
    assert_eq!(listed[..2], ["first.invalid:80", "second.invalid:443"]);
});

both_identities!(protocol_errors_keep_serving, |f: &Fixture| {
    let mut client = Client::initialized(f, &[]);

    client.write(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \n");
    let malformed = client.response(&Value::Null);
    assert_eq!(malformed["error"]["code"], -32700, "{malformed}");
    client.assert_serving();

    let unknown_method = client.request("tools/delete", json!({}));
    assert_eq!(unknown_method["error"]["code"], -32601, "{unknown_method}");
    client.assert_serving();

    let unknown_tool = client.request("tools/call", json!({ "name": "rm", "arguments": {} }));
    assert_eq!(unknown_tool["error"]["code"], -32602, "{unknown_tool}");
    assert_eq!(unknown_tool["error"]["data"]["tool"], "rm", "{unknown_tool}");
    client.assert_serving();

    for (arguments, argument) in [
        (json!({ "command": 5 }), "command"),
        (json!({ "command": "true", "timeout": [1] }), "timeout"),
        (json!({ "command": "true", "env": { "A": 1 } }), "env"),
        (json!({ "command": "true", "network": "full" }), "network"),
    ] {
        // A tool execution error that the model receives (MCP 2025-11-25), not a protocol error.
        let wrong = client.request("tools/call", json!({ "name": "run", "arguments": arguments }));
        assert_eq!(wrong["result"]["isError"], true, "{wrong}");
        let structured = &wrong["result"]["structuredContent"];
        assert_eq!(structured["error"], "invalid_argument", "{wrong}");
        assert_eq!(structured["argument"], argument, "{wrong}");
        assert!(structured["message"].as_str().unwrap().contains(argument), "{wrong}");
        client.assert_serving();
    }

    // 100 MB on one line, written in pieces: the server reads and drops it as it arrives.
    client.write(b"{\"jsonrpc\":\"2.0\",\"id\":\"huge\",\"method\":\"tools/call\",\"params\":{\"name\":\"run\",\"arguments\":{\"command\":\"cat\",\"stdin\":\"");
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        client.write(&piece);
    }
    client.write(b"\"}}}\n");
    let huge = client.response(&json!("huge"));
    assert_eq!(huge["error"]["code"], -32600, "{huge}");
    assert!(huge["error"]["message"].as_str().unwrap().contains("longer than the maximum"), "{huge}");
    client.assert_serving();
    let after = client.run(json!({ "command": "echo still here" }));
    assert_eq!(after["stdout"], "still here\n", "{after:#}");
});

both_identities!(cancel_ends_run, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-cancel");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &[]);
    let id = client.send_request("tools/call", json!({ "name": "run", "arguments": { "command": marked_sleep(&marker) } }));
    wait_until_started(&marker);

    client.notify("notifications/cancelled", json!({ "requestId": id, "reason": "test" }));
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "a process of the cancelled run is still running");
    client.assert_serving();
    assert!(!client.has_response(&id), "the cancelled request got a response");
    let after = client.run(json!({ "command": "echo next" }));
    assert_eq!(after["stdout"], "next\n", "{after:#}");
});

both_identities!(disconnect_ends_runs, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-disconnect");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &[]);
    for _ in 0..3 {
        client.send_request("tools/call", json!({ "name": "run", "arguments": { "command": marked_sleep(&marker) } }));
    }
    wait_until_started(&marker);

    let status = client.disconnect();
    assert_eq!(status.code(), Some(0), "server stderr:\n{}", client.server_stderr());
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "a run outlived the disconnected server");
});

both_identities!(sigterm_ends_runs, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-sigterm");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &[]);
    client.send_request("tools/call", json!({ "name": "run", "arguments": { "command": marked_sleep(&marker) } }));
    wait_until_started(&marker);

    let status = Command::new("kill").args(["-TERM", &client.server_pid().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = client.wait_exit();
    assert_eq!(exit.code(), Some(0), "server stderr:\n{}", client.server_stderr());
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "a run outlived the server");
});

// A server killed outright cannot end its runs itself; the parent-death signal does.
both_identities!(sigkill_ends_runs, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-sigkill");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &[]);
    client.send_request("tools/call", json!({ "name": "run", "arguments": { "command": marked_sleep(&marker) } }));
    wait_until_started(&marker);

    let pid = client.server_pid();
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    client.wait_exit();
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "a run outlived the killed server");

    // The killed server left its directory of run reports; the next server removes it.
    let prefix = format!("palisade-mcp-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    assert_eq!(left.len(), 1, "expected the killed server's directory: {left:?}");
    let _next = Client::initialized(f, &[]);
    assert!(!left[0].exists(), "the next server did not remove {}", left[0].display());
});

// NOTE: this fails while concurrent runs in one workspace share placeholders: a run that ends
// removes the placeholders another run adopted and is still mounting over, and that run is
// refused with "failed to mount on", "failed to open placeholder" or "failed to create
// placeholder" and ENOENT. Plain `palisade run` in parallel fails the same way.
both_identities!(concurrent_runs_keep_output_apart, |f: &Fixture| {
    const RUNS: usize = 50;
    let mut client = Client::initialized(f, &[]);
    let ids: Vec<Value> = (0..RUNS)
        .map(|index| {
            let arguments = json!({ "command": ["/bin/sh", "-c", "echo start-$0; sleep 0.2; echo end-$0 >&2", index.to_string()] });
            client.send_request("tools/call", json!({ "name": "run", "arguments": arguments }))
        })
        .collect();
    let mut refused = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let response = client.response(id);
        let result = &response["result"];
        if result["isError"] == true {
            refused.push(format!("run {index}: {}", result["content"][0]["text"]));
            continue;
        }
        let structured = &result["structuredContent"];
        assert_eq!(structured["stdout"], format!("start-{index}\n"), "{structured:#}");
        assert_eq!(structured["stderr"], format!("end-{index}\n"), "{structured:#}");
        assert_eq!(structured["exit_code"], 0, "{structured:#}");
    }
    assert_eq!(refused, Vec::<String>::new(), "runs refused while others ran in the same workspace");
});

both_identities!(invalid_ceiling_exits_before_serving, |f: &Fixture| {
    let invalid = f.palisade(&["mcp", "--timeout", "soon"]);
    invalid.expect_code(125);
    assert!(invalid.stderr.starts_with("palisade: error: "), "{}", invalid.stderr);
    assert_eq!(invalid.stdout, "", "the server answered before it failed");

    let report = f.palisade(&["mcp", "--report", "r.json"]);
    report.expect_code(125);
    assert!(report.stderr.contains("--report applies to `palisade run` only"), "{}", report.stderr);
});

// The standard-library Python client that docs/agents.md offers as a starting point works
// against the server as built.
both_identities!(example_client_runs, |f: &Fixture| {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mcp_client.py");
    let example = f.root.join("mcp_client.py");
    std::fs::copy(&source, &example).unwrap();
    f.chown_all();
    let workspace = f.ws.to_str().unwrap();
    let script = format!(
        "timeout 60 /usr/bin/python3 {} {} -- -w {workspace} --timeout 5m --allow-domain 127.0.0.1:9",
        example.display(),
        palisade_binary().display()
    );
    let run = f.host_sh(&script);
    assert_eq!(run.code, Some(0), "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("tools: run, session_open, session_exec, session_close, check"), "{}", run.stdout);
    assert!(run.stdout.contains("hello from the sandbox"), "{}", run.stdout);
    assert!(run.stdout.contains("exit code: 0 stdout: 12"), "{}", run.stdout);
    assert!(run.stdout.contains("denied network example.invalid:443"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("'echo step $STEP in $(pwd)': exit code 0, cwd {workspace}/demo, stdout 'step 1 in {workspace}/demo'")), "{}", run.stdout);
});

impl Client {
    /// Opens a session and returns its name.
    fn open_session(&mut self, arguments: Value) -> String {
        let opened = self.call("session_open", arguments);
        assert_eq!(opened["isError"], false, "session_open gave a tool error: {opened:#}\nserver stderr:\n{}", self.server_stderr());
        opened["structuredContent"]["session"].as_str().unwrap_or_else(|| panic!("no session name: {opened:#}")).to_owned()
    }

    /// Runs `command` in `session` with the extra `arguments`, and returns `structuredContent`,
    /// failing on a tool error.
    fn exec(&mut self, session: &str, command: Value, mut arguments: Value) -> Value {
        arguments["session"] = json!(session);
        arguments["command"] = command;
        let result = self.call("session_exec", arguments.clone());
        assert_eq!(result["isError"], false, "session_exec {arguments} gave a tool error: {result:#}\nserver stderr:\n{}", self.server_stderr());
        result["structuredContent"].clone()
    }
}

/// Asserts that one session command exited 0 with `stdout`.
#[track_caller]
fn assert_output(result: &Value, stdout: &str) {
    assert_eq!(result["exit_code"], 0, "{result:#}");
    assert_eq!(result["stdout"], stdout, "{result:#}");
}

// Ten commands in one session, each depending on what the ones before it left: the working
// directory, exported variables, files in /tmp and a background process.
both_identities!(session_carries_state_over_ten_commands, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-session-state");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &[]);
    let session = client.open_session(json!({ "env": { "FROM_OPEN": "set at open" } }));
    let ws = f.ws.display().to_string();

    let first = client.exec(&session, json!("mkdir -p sub/deeper && cd sub && export GREETING=hello && echo $FROM_OPEN"), json!({}));
    assert_output(&first, "set at open\n");
    assert_eq!(first["cwd"], format!("{ws}/sub"), "{first:#}");
    let second = client.exec(&session, json!("pwd; echo $GREETING"), json!({}));
    assert_output(&second, &format!("{ws}/sub\nhello\n"));
    let third = client.exec(&session, json!(format!("echo kept > /tmp/{marker}; cd deeper")), json!({}));
    assert_output(&third, "");
    assert_eq!(third["cwd"], format!("{ws}/sub/deeper"), "{third:#}");
    // An array runs directly, in the session's directory and environment, and changes neither.
    let fourth = client.exec(&session, json!(["sh", "-c", "pwd; cat /tmp/$0; echo $GREETING; cd /", marker]), json!({}));
    assert_output(&fourth, &format!("{ws}/sub/deeper\nkept\nhello\n"));
    assert_eq!(fourth["cwd"], format!("{ws}/sub/deeper"), "{fourth:#}");
    // A background process keeps running after the command that started it.
    let fifth = client.exec(
        &session,
        json!(format!("cp /bin/sleep /tmp/{marker}-sleep && (/tmp/{marker}-sleep 60 >/dev/null 2>&1 & echo $! > /tmp/{marker}.pid)")),
        json!({}),
    );
    assert_output(&fifth, "");
    assert_eq!(pids_matching(&format!("{marker}-sleep")).len(), 1, "the background process is not running");
    let sixth = client.exec(&session, json!(format!("kill -0 $(cat /tmp/{marker}.pid) && echo alive")), json!({}));
    assert_output(&sixth, "alive\n");
    // A variable given for one command is gone after it, and an earlier value comes back.
    let seventh = client.exec(&session, json!("echo $GREETING $ONCE"), json!({ "env": { "GREETING": "hi", "ONCE": "1" } }));
    assert_output(&seventh, "hi 1\n");
    let eighth = client.exec(&session, json!("echo \"$GREETING [$ONCE]\"; cat"), json!({ "stdin": "from stdin\n" }));
    assert_output(&eighth, "hello []\nfrom stdin\n");
    let ninth = client.exec(&session, json!("unset GREETING; cd .. && false"), json!({}));
    assert_eq!(ninth["exit_code"], 1, "{ninth:#}");
    assert_eq!(ninth["cwd"], format!("{ws}/sub"), "{ninth:#}");
    // A directory given for one command is for that command only, `cd` in it included.
    let elsewhere = client.exec(&session, json!("pwd; cd sub/deeper; pwd"), json!({ "cwd": "." }));
    assert_output(&elsewhere, &format!("{ws}\n{ws}/sub/deeper\n"));
    assert_eq!(elsewhere["cwd"], format!("{ws}/sub"), "{elsewhere:#}");
    // `exit` skips the state capture: the directory and the environment stay as they were.
    let tenth = client.exec(&session, json!("echo \"[$GREETING]\"; pwd; cd /; exit 7"), json!({}));
    assert_eq!(tenth["exit_code"], 7, "{tenth:#}");
    assert_eq!(tenth["stdout"], format!("[]\n{ws}/sub\n"), "{tenth:#}");
    assert_eq!(tenth["cwd"], format!("{ws}/sub"), "{tenth:#}");

    // The session's /tmp is its own, and the sandbox's limits hold inside it.
    assert!(!Path::new(&format!("/tmp/{marker}")).exists(), "the session's /tmp file reached the host's /tmp");
    let refused = client.exec(&session, json!(format!("touch {}/escaped", f.out.display())), json!({}));
    assert_ne!(refused["exit_code"], 0, "{refused:#}");
    assert!(!f.out.join("escaped").exists(), "a session command wrote outside the workspace");

    let closed = client.call("session_close", json!({ "session": session }));
    assert_eq!(closed["isError"], false, "{closed:#}");
    assert_eq!(closed["structuredContent"]["report"]["command"], json!(["(palisade mcp session)"]), "{closed:#}");
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "a process of the closed session is still running");
    let after = client.call("session_exec", json!({ "session": session, "command": "true" }));
    assert_eq!(after["isError"], true, "{after:#}");
    assert_eq!(after["structuredContent"]["argument"], "session", "{after:#}");
});

// A timeout or a cancellation ends the command and what it runs in the foreground; the session
// goes on.
both_identities!(session_timeout_and_cancel_end_the_command, |f: &Fixture| {
    let marker = unique_marker(f, "mcp-session-cancel");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut client = Client::initialized(f, &["--timeout", "1m", "--max-output", "1M"]);
    let session = client.open_session(json!({}));
    client.exec(&session, json!(format!("cp /bin/sleep /tmp/{marker}")), json!({}));

    let timed_out = client.exec(&session, json!(format!("/tmp/{marker} 60; echo not reached")), json!({ "timeout": 1 }));
    assert_eq!(timed_out["timed_out"], true, "{timed_out:#}");
    assert_eq!(timed_out["stdout"], "", "{timed_out:#}");
    assert_eq!(timed_out["denials"][0]["object"], "timeout", "{timed_out:#}");
    assert_eq!(timed_out["denials"][0]["rule"], "--timeout 1s", "{timed_out:#}");
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "the timed-out command is still running");

    let flood = client.exec(&session, json!("yes"), json!({}));
    assert_eq!(flood["signal"], 9, "{flood:#}");
    assert_eq!(flood["denials"][0]["object"], "max_output", "{flood:#}");
    assert!(flood["stdout_bytes"].as_u64().unwrap() <= 2 << 20, "{flood:#}");

    let longer = client.call("session_exec", json!({ "session": session, "command": "true", "timeout": "2m" }));
    assert_eq!(longer["structuredContent"]["error"], "ceiling", "{longer:#}");
    let outside = client.call("session_exec", json!({ "session": session, "command": "true", "cwd": "/" }));
    assert_eq!(outside["structuredContent"]["error"], "ceiling", "{outside:#}");

    let id = client.send_request("tools/call", json!({ "name": "session_exec", "arguments": { "session": session, "command": format!("/tmp/{marker} 60") } }));
    wait_until_started(&marker);
    client.notify("notifications/cancelled", json!({ "requestId": id, "reason": "test" }));
    assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "the cancelled command is still running");
    client.assert_serving();
    assert!(!client.has_response(&id), "the cancelled request got a response");
    let next = client.exec(&session, json!("echo next"), json!({}));
    assert_output(&next, "next\n");
});

// Closing the client's end, or killing the server, ends every process of every session.
both_identities!(session_processes_end_with_the_server, |f: &Fixture| {
    for ending in ["disconnect", "sigkill"] {
        let marker = unique_marker(f, &format!("mcp-session-{ending}"));
        let _cleanup = MarkedProcesses(marker.clone());
        let mut client = Client::initialized(f, &[]);
        for _ in 0..2 {
            let session = client.open_session(json!({}));
            let started = client.exec(&session, json!(format!("cp /bin/sleep /tmp/{marker} && (/tmp/{marker} 60 >/dev/null 2>&1 &)")), json!({}));
            assert_eq!(started["exit_code"], 0, "{started:#}");
        }
        assert_eq!(pids_matching(&marker).len(), 2, "{ending}: the background processes are not running");
        if ending == "disconnect" {
            let status = client.disconnect();
            assert_eq!(status.code(), Some(0), "server stderr:\n{}", client.server_stderr());
        } else {
            let status = Command::new("kill").args(["-KILL", &client.server_pid().to_string()]).status().unwrap();
            assert!(status.success());
            client.wait_exit();
        }
        assert_eq!(wait_until_gone(&marker, GONE_WAIT), Vec::<u32>::new(), "{ending}: a session process outlived the server");
    }
});

both_identities!(session_errors_keep_serving, |f: &Fixture| {
    let mut client = Client::initialized(f, &[]);
    let unknown = client.call("session_exec", json!({ "session": "s99", "command": "true" }));
    assert_eq!(unknown["isError"], true, "{unknown:#}");
    assert_eq!(unknown["structuredContent"]["argument"], "session", "{unknown:#}");
    for (arguments, argument) in [
        (json!({ "command": "true" }), "session"),
        (json!({ "session": 1, "command": "true" }), "session"),
        (json!({ "session": "s1" }), "command"),
        (json!({ "session": "s1", "command": "true", "shell": true }), "shell"),
    ] {
        let refused = client.call("session_exec", arguments.clone());
        assert_eq!(refused["isError"], true, "{arguments}: {refused:#}");
        assert_eq!(refused["structuredContent"]["error"], "invalid_argument", "{arguments}: {refused:#}");
        assert_eq!(refused["structuredContent"]["argument"], argument, "{arguments}: {refused:#}");
    }
    let opened: Vec<String> = (0..16).map(|_| client.open_session(json!({}))).collect();
    let over = client.call("session_open", json!({}));
    assert_eq!(over["isError"], true, "{over:#}");
    assert_eq!(over["structuredContent"]["error"], "too_many_sessions", "{over:#}");
    for session in &opened {
        let closed = client.call("session_close", json!({ "session": session }));
        assert_eq!(closed["isError"], false, "{closed:#}");
    }
    let session = client.open_session(json!({}));
    // A command too large for one message is refused, naming the argument.
    let huge = client.call("session_exec", json!({ "session": session, "command": format!("echo {}", "x".repeat(200 << 10)) }));
    assert_eq!(huge["isError"], true, "{huge:#}");
    assert_eq!(huge["structuredContent"]["argument"], "command", "{huge:#}");
    let missing = client.exec(&session, json!(["no-such-program"]), json!({}));
    assert_eq!(missing["exit_code"], 127, "{missing:#}");
    assert!(missing["exec_error"].as_str().unwrap().contains("not found"), "{missing:#}");
    client.assert_serving();
    let fine = client.exec(&session, json!("echo fine"), json!({}));
    assert_output(&fine, "fine\n");

    // The host (the parent of each command, under init) is a copy of palisade and keeps the
    // server's whole environment in memory. Its /proc files stay closed to the commands it runs.
    let probe = "host=$PPID; tr '\\0' ' ' < /proc/$host/cmdline; echo; for file in /proc/1/environ /proc/$host/environ /proc/$host/mem /proc/$host/maps; do head -c 1 $file >/dev/null 2>&1 && echo readable: $file; done; true";
    let host = client.exec(&session, json!(probe), json!({}));
    let stdout = host["stdout"].as_str().unwrap();
    assert!(stdout.contains("session-host"), "the command's parent is not the session's host: {host:#}");
    assert!(!stdout.contains("readable"), "a command read the host's private /proc files: {host:#}");

    // The unconfined profile has no sandbox to keep a session in: refused at once, with the reason.
    let mut unconfined = Client::initialized(f, &["-p", "unconfined"]);
    let started = Instant::now();
    let refused = unconfined.call("session_open", json!({}));
    assert_eq!(refused["isError"], true, "{refused:#}");
    assert!(refused["structuredContent"]["message"].as_str().unwrap().contains("unconfined"), "{refused:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "the refusal took {:?}", started.elapsed());
    unconfined.assert_serving();
});

// `pty` runs a session command on a pseudo-terminal of the sandbox's own: programs see a
// terminal of the requested size, can open /dev/tty, read typed input, and still cannot push
// input into the terminal with TIOCSTI.
both_identities!(session_pty_gives_a_terminal, |f: &Fixture| {
    let mut client = Client::initialized(f, &[]);
    let session = client.open_session(json!({}));

    let terminal = client.exec(&session, json!("tty; test -t 0 && test -t 1 && test -t 2 && echo all-terminals; stty size; echo via-tty > /dev/tty"), json!({ "pty": true }));
    assert_eq!(terminal["exit_code"], 0, "{terminal:#}");
    let stdout = terminal["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("/dev/pts/"), "{terminal:#}");
    assert!(stdout.contains("all-terminals\r\n24 80\r\nvia-tty\r\n"), "{terminal:#}");
    assert_eq!(terminal["stderr"], "", "{terminal:#}");
    let sized = client.exec(&session, json!("stty size"), json!({ "pty": { "rows": 40, "cols": 100 } }));
    assert_eq!(sized["stdout"], "40 100\r\n", "{sized:#}");
    // Without `pty`, the same session has no terminal.
    let piped = client.exec(&session, json!("test -t 0 || echo no-terminal"), json!({}));
    assert_output(&piped, "no-terminal\n");

    let typed = client.exec(&session, json!("read -r line; echo \"got:$line\""), json!({ "pty": true, "stdin": "typed text\n" }));
    assert_eq!(typed["exit_code"], 0, "{typed:#}");
    assert!(typed["stdout"].as_str().unwrap().contains("got:typed text"), "{typed:#}");

    if Path::new("/usr/bin/python3").exists() {
        let inject = "import errno, fcntl, termios\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    print('injected')\nexcept OSError as error:\n    print('refused', errno.errorcode[error.errno])";
        let refused = client.exec(&session, json!(["/usr/bin/python3", "-c", inject]), json!({ "pty": true }));
        assert_eq!(refused["stdout"], "refused EPERM\r\n", "{refused:#}");
    } else {
        skip(&f.name, "the TIOCSTI probe needs /usr/bin/python3");
    }

    let invalid = client.call("session_exec", json!({ "session": session, "command": "true", "pty": { "rows": 0, "cols": 80 } }));
    assert_eq!(invalid["isError"], true, "{invalid:#}");
    assert_eq!(invalid["structuredContent"]["argument"], "pty", "{invalid:#}");
    let timed_out = client.exec(&session, json!("sleep 30"), json!({ "pty": true, "timeout": 1 }));
    assert_eq!(timed_out["timed_out"], true, "{timed_out:#}");
    let after = client.exec(&session, json!("echo after"), json!({}));
    assert_output(&after, "after\n");
});
