//! `palisade mcp`: a Model Context Protocol server on stdin and stdout whose tools run
//! commands in the sandbox, under the policy given on the command line as a ceiling.
//!
//! The protocol is written by hand, for the subset the server needs: `initialize` with version
//! negotiation, `ping`, `tools/list`, `tools/call` and the notifications `initialized` and
//! `cancelled`. The official Rust SDK, rmcp 3.11.0, was read for this and does not fit. Its
//! stdio transport drops a line that is no JSON without any response, and discards a line over
//! its length limit with only a log entry, where this server must respond to both with a JSON-RPC
//! error. Changing that means writing its transport anyway. It also needs Rust 1.88, over this
//! workspace's 1.85. With only its `server` feature it adds 36 crates this workspace does not
//! use yet, counted with `cargo tree`, among them schemars, futures, sha2 and uuid.
//!
//! Layout: `framing` reads and writes lines, `jsonrpc` classifies messages, `server` runs the
//! session, `tools` reads the arguments of each tool and runs it, `ceiling` keeps every call
//! within the policy the server started with, `child` starts the palisade processes that do
//! the work, and `result` turns their output and run report into tool results.

mod ceiling;
mod child;
mod framing;
mod jsonrpc;
mod result;
mod scratch;
mod server;
mod sessions;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::McpArgs;
use ceiling::Ceiling;
use child::Spawner;
use scratch::Scratch;
use server::Session;
use tools::Tools;

/// Messages read ahead of the one being handled; the reader thread waits when this many queue.
const QUEUED_MESSAGES: usize = 16;

/// How long the server waits, before it exits, for its last responses to reach stdout. A
/// client that stopped reading cannot hold the exit longer.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Serves MCP until the client closes stdin or a SIGTERM, SIGINT or SIGHUP arrives. An invalid
/// policy is an error before anything is served.
pub fn serve(args: McpArgs) -> anyhow::Result<u8> {
    let scratch = Scratch::create().context("failed to create a temporary directory for run reports")?;
    let ceiling = Ceiling::resolve(&args.policy, &scratch)?;
    tracing::info!(
        "mcp: serving; workspace {}, network {}, timeout {:?}",
        ceiling.workspace().display(),
        ceiling.policy.network.name(),
        ceiling.timeout()
    );
    let tools = Arc::new(Tools { ceiling, spawner: Spawner::new(), scratch, sessions: Default::default() });

    // A current-thread runtime keeps every child's fork on the main thread, which its
    // parent-death signal depends on (see `child::Spawner::spawn`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let (outbox, written) = framing::spawn_writer(std::io::stdout());
    let (frame_sender, frames) = tokio::sync::mpsc::channel(QUEUED_MESSAGES);
    framing::spawn_reader(std::io::stdin(), frame_sender);

    let stop = runtime.block_on(Session::new(tools, outbox).serve(frames)).context("failed to install the signal handlers")?;
    tracing::info!("mcp: stopped, {stop}");
    let _ = written.recv_timeout(FLUSH_WAIT);
    Ok(0)
}
