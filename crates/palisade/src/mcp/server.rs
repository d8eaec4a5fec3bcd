//! One MCP session: the lifecycle (`initialize`, then operation), the dispatch of each message,
//! the tool calls in flight with their cancellation, and the shutdown that ends every run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinError, JoinSet};

use crate::mcp::framing::{Frame, Outbox, MAX_MESSAGE_BYTES};
use crate::mcp::jsonrpc::{self, Message, RpcError, INVALID_REQUEST, METHOD_NOT_FOUND};
use crate::mcp::result;
use crate::mcp::tools::{self, Tools};

/// Protocol versions this server speaks, newest first. A client that requests another version
/// gets the newest, and then decides whether to go on.
const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Tool calls that run at once; more wait for a slot, so that a flood of calls cannot start
/// an unbounded number of sandboxes.
const MAX_RUNNING_CALLS: usize = 64;

/// How long shutdown waits for the cancelled calls to end: longer than a call's own wait from
/// SIGTERM to SIGKILL, so that each run gets to clean up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// The reason the session ended.
#[derive(Debug)]
pub enum Stop {
    /// stdin reached its end: the client is gone.
    Disconnected,
    Signal(&'static str),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Stop::Disconnected => formatter.write_str("the client closed stdin"),
            Stop::Signal(name) => write!(formatter, "received {name}"),
        }
    }
}

/// A tool call in flight, under its request id.
struct InFlight {
    /// Tells this call apart from a later call that reuses the request id.
    serial: u64,
    cancel: oneshot::Sender<()>,
}

pub struct Session {
    tools: Arc<Tools>,
    outbox: Outbox,
    initialized: bool,
    /// Keyed by the request id's JSON text, so that `1` and `"1"` stay apart.
    in_flight: HashMap<String, InFlight>,
    calls: JoinSet<(String, u64)>,
    next_serial: u64,
    slots: Arc<Semaphore>,
}

impl Session {
    pub fn new(tools: Arc<Tools>, outbox: Outbox) -> Session {
        Session {
            tools,
            outbox,
            initialized: false,
            in_flight: HashMap::new(),
            calls: JoinSet::new(),
            next_serial: 0,
            slots: Arc::new(Semaphore::new(MAX_RUNNING_CALLS)),
        }
    }

    /// Serves messages from `frames` until the client disconnects or a signal arrives, then
    /// ends every call in flight.
    pub async fn serve(mut self, mut frames: mpsc::Receiver<Frame>) -> std::io::Result<Stop> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let stop = loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => self.receive(frame),
                    None => break Stop::Disconnected,
                },
                Some(joined) = self.calls.join_next() => self.finished(joined),
                _ = terminate.recv() => break Stop::Signal("SIGTERM"),
                _ = interrupt.recv() => break Stop::Signal("SIGINT"),
                _ = hangup.recv() => break Stop::Signal("SIGHUP"),
            }
        };
        tracing::info!("mcp: stopping, {stop}; ending {} calls in flight", self.in_flight.len());
        for (_, call) in self.in_flight.drain() {
            let _ = call.cancel.send(());
        }
        // A second signal skips the wait: dropping a call's task kills its child with SIGKILL.
        let drained = async {
            while let Some(joined) = self.calls.join_next().await {
                if let Err(error) = joined {
                    tracing::warn!("mcp: a tool call failed while stopping: {error}");
                }
            }
        };
        let hurried = tokio::select! {
            () = drained => false,
            () = tokio::time::sleep(SHUTDOWN_WAIT) => true,
            _ = terminate.recv() => true,
            _ = interrupt.recv() => true,
        };
        if hurried {
            tracing::warn!("mcp: killing {} calls that are still running", self.calls.len());
            self.calls.abort_all();
            while self.calls.join_next().await.is_some() {}
        }
        // Closing a session's socket ends every process in it.
        self.tools.sessions.close_all().await;
        Ok(stop)
    }

    fn receive(&mut self, frame: Frame) {
        let line = match frame {
            Frame::Line(line) => line,
            Frame::Oversized { prefix, length } => {
                let id = jsonrpc::id_from_prefix(&prefix);
                tracing::warn!("mcp: discarded a message of {length} bytes (id {id}), over the maximum of {MAX_MESSAGE_BYTES}");
                let message = format!(
                    "Invalid Request: the message of {length} bytes is longer than the maximum of {MAX_MESSAGE_BYTES} bytes and was discarded; pass large input through a file in the workspace"
                );
                self.send_error(&id, &RpcError::new(INVALID_REQUEST, message));
                return;
            }
        };
        match jsonrpc::parse(&line) {
            Ok(Message::Request { id, method, params }) => self.request(id, &method, params),
            Ok(Message::Notification { method, params }) => self.notification(&method, params),
            Ok(Message::Response) => tracing::debug!("mcp: ignoring a response; this server sends no requests"),
            Err(rejected) => {
                tracing::debug!("mcp: rejected a message: {}", rejected.error.message);
                self.send_error(&rejected.id, &rejected.error);
            }
        }
    }

    fn request(&mut self, id: Value, method: &str, params: Option<Value>) {
        tracing::debug!("mcp: request {id}: {method}");
        let reply = match method {
            "initialize" => self.initialize(params),
            "ping" => Ok(json!({})),
            _ if !self.initialized => Err(RpcError::new(INVALID_REQUEST, "Invalid Request: the session is not initialized; send initialize first")),
            "tools/list" => Ok(self.tools.list()),
            "tools/call" => return self.start_call(id, params),
            _ => Err(RpcError::new(METHOD_NOT_FOUND, format!("Method not found: {method}")).with_data(json!({ "method": method }))),
        };
        match reply {
            Ok(result) => self.outbox.send(&jsonrpc::result(&id, result)),
            Err(error) => self.send_error(&id, &error),
        }
    }

    fn initialize(&mut self, params: Option<Value>) -> Result<Value, RpcError> {
        if self.initialized {
            return Err(RpcError::new(INVALID_REQUEST, "Invalid Request: the session is already initialized"));
        }
        let params = jsonrpc::params_object(params)?;
        let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
            return Err(RpcError::invalid_params("Invalid params: \"protocolVersion\" must be a string"));
        };
        let version = PROTOCOL_VERSIONS.iter().find(|version| **version == requested).unwrap_or(&PROTOCOL_VERSIONS[0]);
        let client = &params["clientInfo"];
        tracing::info!(
            "mcp: initialized by {} {}, requested protocol version {requested}, using {version}",
            client["name"].as_str().unwrap_or("an unnamed client"),
            client["version"].as_str().unwrap_or_default()
        );
        self.initialized = true;
        let instructions = format!(
            "{} Call the tool run to run a command in a fresh sandbox; session_open, session_exec and session_close keep one sandbox for many commands, with the working directory, exported variables, files in /tmp and background processes carried over; check shows which protection layers this machine enforces.",
            self.tools.sandbox_summary()
        );
        Ok(json!({
            "protocolVersion": version,
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "palisade", "version": env!("CARGO_PKG_VERSION") },
            "instructions": instructions,
        }))
    }

    fn start_call(&mut self, id: Value, params: Option<Value>) {
        let key = id.to_string();
        if self.in_flight.contains_key(&key) {
            let message = format!("Invalid Request: the id {key} belongs to a call still in progress; use a new id for each request");
            return self.send_error(&id, &RpcError::new(INVALID_REQUEST, message));
        }
        let call = match jsonrpc::params_object(params).and_then(tools::parse_call) {
            Ok(call) => call,
            // An invalid argument of a known tool is a tool execution error (MCP 2025-11-25,
            // SEP-1303), so the model receives it and can correct its call. An unknown tool or
            // malformed params stay protocol errors.
            Err(error) if error.data.as_ref().is_some_and(|data| data.get("argument").is_some()) => {
                return self.outbox.send(&jsonrpc::result(&id, result::invalid_argument(&error)));
            }
            Err(error) => return self.send_error(&id, &error),
        };
        let (cancel, mut cancelled) = oneshot::channel::<()>();
        let serial = self.next_serial;
        self.next_serial += 1;
        self.in_flight.insert(key.clone(), InFlight { serial, cancel });
        let (tools, outbox, slots) = (Arc::clone(&self.tools), self.outbox.clone(), Arc::clone(&self.slots));
        self.calls.spawn(async move {
            // A dropped sender cancels too: no one is left to read the result.
            let slot = tokio::select! {
                slot = slots.acquire_owned() => slot,
                _ = &mut cancelled => return (key, serial),
            };
            let result = tools.call(call, async move {
                let _ = cancelled.await;
            });
            if let Some(result) = result.await {
                outbox.send(&jsonrpc::result(&id, result));
            }
            drop(slot);
            (key, serial)
        });
    }

    /// Forgets a call that ended, unless its id was reused meanwhile.
    fn finished(&mut self, joined: Result<(String, u64), JoinError>) {
        match joined {
            Ok((key, serial)) => {
                if self.in_flight.get(&key).is_some_and(|call| call.serial == serial) {
                    self.in_flight.remove(&key);
                }
            }
            Err(error) => tracing::error!("mcp: a tool call failed: {error}"),
        }
    }

    fn notification(&mut self, method: &str, params: Option<Value>) {
        match method {
            "notifications/cancelled" => self.cancel(params),
            "notifications/initialized" => tracing::debug!("mcp: the client finished initializing"),
            _ => tracing::debug!("mcp: ignoring the notification {method}"),
        }
    }

    /// Cancels a call in flight. Following the MCP specification, the cancellation of an
    /// unknown or finished request is ignored, and a cancelled request gets no response.
    fn cancel(&mut self, params: Option<Value>) {
        let Some(params) = params else {
            return tracing::debug!("mcp: ignoring a cancellation without params");
        };
        let key = params["requestId"].to_string();
        match self.in_flight.remove(&key) {
            Some(call) => {
                tracing::info!("mcp: cancelling request {key}: {}", params["reason"].as_str().unwrap_or("no reason given"));
                let _ = call.cancel.send(());
            }
            None => tracing::debug!("mcp: ignoring the cancellation of request {key}, which is not in progress"),
        }
    }

    fn send_error(&self, id: &Value, error: &RpcError) {
        self.outbox.send(&jsonrpc::error(id, error));
    }
}
