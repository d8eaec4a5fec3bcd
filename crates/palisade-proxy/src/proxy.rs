//! The accept loop, the per-connection task and the limits they enforce.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_policy::network::Rules;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tracing::{Instrument, debug, debug_span, error, warn};

use crate::credential::Credential;
use crate::denial::{Denial, DenialLog, DenialSink};
use crate::resolve::Resolve;
use crate::tunnel::BufferBudget;
use crate::{http, socks};

/// The first byte of every SOCKS5 message from a client: the protocol version.
pub(crate) const SOCKS5_VERSION: u8 = 0x05;

/// Shortest and longest pause after `accept` fails for lack of resources (such as `EMFILE`),
/// doubling while the failures go on.
const ACCEPT_RETRY_MIN: Duration = Duration::from_millis(10);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// Bounds on what one client, or all of them together, can make the proxy hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of connections served at once. When it is reached the proxy stops
    /// accepting, so further clients wait in the listen backlog. Values below 1 count as 1.
    pub max_connections: usize,
    /// Maximum size of an HTTP request head (request line and headers) in bytes. A larger head
    /// gets 431 and the connection is closed.
    pub max_request_head: usize,
    /// Time a client has to send its first byte after connecting, and then again to complete
    /// each HTTP request head (counted from the end of the previous response) or its SOCKS5
    /// greeting and request. When it passes, the connection is closed without a response.
    pub head_timeout: Duration,
    /// Time for resolving one name.
    pub resolve_timeout: Duration,
    /// Time for connecting to the upstream server, over all the allowed addresses tried.
    pub connect_timeout: Duration,
    /// Maximum bytes that the copy buffers, or on Linux the pipes, of open tunnels may grow by,
    /// over all tunnels. Each direction of a tunnel starts with an 8 KiB buffer (a pipe of the
    /// system's default capacity) and doubles it, up to 4 MiB (a 1 MiB pipe), while a bulk
    /// transfer fills it. Once this budget is used up, buffers and pipes stop growing, which
    /// slows bulk transfers but changes nothing else.
    pub max_tunnel_buffers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            max_request_head: 64 * 1024,
            head_timeout: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            // NOTE: an estimate, not a measured need: 16 directions at the full 4 MiB.
            max_tunnel_buffers: 64 * 1024 * 1024,
        }
    }
}

/// Palisade's allowlist proxy. See the crate documentation for what it speaks and decides.
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

/// The state every connection task of a [`Proxy`] reads: the rules, the resolver, the limits,
/// the credential clients must present, the denials and failed authentications so far and the
/// budget of the tunnels' copy buffers.
pub(crate) struct Shared {
    pub(crate) rules: Rules,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) limits: Limits,
    /// `None` serves every client that reaches the listening socket.
    pub(crate) credential: Option<Credential>,
    pub(crate) denials: DenialLog,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) buffers: BufferBudget,
}

/// Shortest time between two warnings about failed accepts. Out of descriptors, accept fails
/// again for every client that connects meanwhile, and one line each would flood the
/// terminal of the person running palisade.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Warnings about failed accepts, at most one per [`ACCEPT_WARNING_INTERVAL`]. Each names how
/// many failures came since the one before.
#[derive(Default)]
struct AcceptWarnings {
    last: Option<Instant>,
    unreported: u64,
}

impl AcceptWarnings {
    fn failed(&mut self, error: &io::Error, retry_delay: Duration) {
        self.unreported += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < ACCEPT_WARNING_INTERVAL) {
            debug!(%error, "failed to accept a proxy connection");
            return;
        }
        let delay = retry_delay.as_millis();
        match self.unreported - 1 {
            0 => warn!(%error, "failed to accept a proxy connection, retrying in {delay} ms"),
            earlier => warn!(%error, "failed to accept a proxy connection, retrying in {delay} ms; {earlier} more failed since the last warning"),
        }
        self.last = Some(now);
        self.unreported = 0;
    }
}

impl Proxy {
    /// Creates a proxy that decides with `rules` and resolves names with `resolver`, under the
    /// default [`Limits`].
    pub fn new(rules: Rules, resolver: Arc<dyn Resolve>) -> Proxy {
        Proxy::with_limits(rules, resolver, Limits::default())
    }

    /// Creates a proxy like [`Proxy::new`], under `limits`.
    pub fn with_limits(rules: Rules, resolver: Arc<dyn Resolve>, limits: Limits) -> Proxy {
        Proxy::build(rules, resolver, limits, None)
    }

    /// Creates a proxy like [`Proxy::new`] that also passes each denial to `sink` as it
    /// happens, before the client gets its refusal.
    pub fn with_denial_sink(rules: Rules, resolver: Arc<dyn Resolve>, sink: DenialSink) -> Proxy {
        Proxy::build(rules, resolver, Limits::default(), Some(sink))
    }

    fn build(rules: Rules, resolver: Arc<dyn Resolve>, limits: Limits, sink: Option<DenialSink>) -> Proxy {
        let buffers = BufferBudget::new(limits.max_tunnel_buffers);
        let shared = Shared {
            rules,
            resolver,
            limits,
            credential: None,
            denials: DenialLog::with_sink(sink),
            auth_failures: AtomicU64::new(0),
            buffers,
        };
        Proxy { shared: Arc::new(shared) }
    }

    /// Makes the proxy serve only clients that present `credential`: HTTP requests in a
    /// `Proxy-Authorization: Basic` header, SOCKS5 clients with the username/password method.
    /// Other HTTP requests get 407 and SOCKS5 clients a failure, and their connection is
    /// closed before anything is resolved or dialled. Give the command the URLs of
    /// [`Credential::proxy_urls`].
    ///
    /// Use it where the listening socket is reachable by other local processes, such as the
    /// host's 127.0.0.1. [`Proxy::serve_resolved`] does not check it.
    ///
    /// # Panics
    ///
    /// Panics if a connection task of an earlier [`Proxy::serve`] on this proxy is still alive,
    /// which can happen only when its future was dropped instead of run to the end.
    pub fn with_credential(mut self, credential: Credential) -> Proxy {
        let shared = Arc::get_mut(&mut self.shared)
            .expect("with_credential called while connection tasks of an earlier serve still share the proxy's state");
        shared.credential = Some(credential);
        self
    }

    /// Serves connections accepted on `listener` until `shutdown` resolves.
    ///
    /// Returns once every connection task has ended: on shutdown the tasks still running are
    /// aborted, which closes their client and upstream sockets. Fails only when `listener`
    /// cannot accept at all (it is not listening). Other accept errors, such as running out
    /// of file descriptors, are retried after a pause of up to one second, and logged as a
    /// warning at most every five seconds.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut shutdown = pin!(shutdown);
        let permits = Arc::new(Semaphore::new(self.shared.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
        let mut connections = JoinSet::new();
        let mut next_id: u64 = 0;
        let mut retry_delay = ACCEPT_RETRY_MIN;
        let mut warnings = AcceptWarnings::default();

        let result = loop {
            while let Some(joined) = connections.try_join_next() {
                log_task_end(joined);
            }

            // Waiting for a permit before accepting is what pauses accept at the limit.
            let permit = tokio::select! {
                () = &mut shutdown => break Ok(()),
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = listener.accept() => accepted,
            };

            match accepted {
                Ok((stream, _)) => {
                    retry_delay = ACCEPT_RETRY_MIN;
                    next_id += 1;
                    let span = debug_span!("proxy connection", id = next_id);
                    connections.spawn(serve_connection(Arc::clone(&self.shared), stream, permit).instrument(span));
                }
                Err(error) if is_listener_unusable(&error) => break Err(error),
                Err(error) if is_client_gone(&error) => {}
                Err(error) => {
                    warnings.failed(&error, retry_delay);
                    tokio::time::sleep(retry_delay).await;
                    retry_delay = (retry_delay * 2).min(ACCEPT_RETRY_MAX);
                }
            }
        };

        connections.shutdown().await;
        result
    }

    /// Returns every refusal so far, oldest first, up to [`crate::MAX_RECORDED_DENIALS`].
    pub fn denials(&self) -> Vec<Denial> {
        self.shared.denials.snapshot()
    }

    /// Returns the number of refusals past [`crate::MAX_RECORDED_DENIALS`], which
    /// [`Proxy::denials`] does not list.
    pub fn denials_dropped(&self) -> u64 {
        self.shared.denials.dropped()
    }

    /// Returns the number of HTTP requests and SOCKS5 clients rejected so far for a missing or
    /// wrong credential (see [`Proxy::with_credential`]). They are not in [`Proxy::denials`],
    /// because they may come from any local process, not only from the command.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth_failures.load(Ordering::Relaxed)
    }
}

/// Returns `true` for accept errors that retrying cannot fix. `EINVAL` means the socket is
/// not listening.
fn is_listener_unusable(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidInput
}

/// Returns `true` for accept errors about one client that left before it was accepted.
fn is_client_gone(error: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

fn log_task_end(joined: Result<(), JoinError>) {
    match joined {
        Ok(()) => {}
        Err(join_error) if join_error.is_panic() => error!(%join_error, "a proxy connection task panicked"),
        Err(_) => {}
    }
}

/// Serves one client connection. `_permit` is one of the proxy's connection slots, released
/// when the connection ends.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, _permit: OwnedSemaphorePermit) {
    // Tunnels carry interactive protocols (TLS handshakes, git), where Nagle's delay adds a
    // round trip to every small write.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "failed to set TCP_NODELAY on a client connection");
    }

    let mut first = [0u8; 1];
    match tokio::time::timeout(shared.limits.head_timeout, stream.peek(&mut first)).await {
        Err(_) => {
            debug!("closed a connection that sent nothing within {:?}", shared.limits.head_timeout);
            return;
        }
        Ok(Err(error)) => {
            debug!(%error, "failed to read from a client connection");
            return;
        }
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => {}
    }

    if first[0] == SOCKS5_VERSION {
        socks::serve(&shared, stream).await;
    } else {
        http::serve(&shared, stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when `serve` returns a future that is not `Send`, which the Linux
    /// backend needs to run it on a runtime of its own thread.
    #[allow(dead_code)]
    fn serve_future_is_send(proxy: &Proxy, listener: TcpListener) {
        fn require_send<T: Send>(_: T) {}
        require_send(proxy.serve(listener, std::future::pending()));
    }

    #[test]
    fn accept_warnings_are_spaced() {
        let error = io::Error::other("too many open files");
        let mut warnings = AcceptWarnings::default();
        warnings.failed(&error, ACCEPT_RETRY_MIN);
        let first = warnings.last.expect("the first failure warns");
        assert_eq!(warnings.unreported, 0);
        for _ in 0..3 {
            warnings.failed(&error, ACCEPT_RETRY_MIN);
        }
        // Within the interval nothing more is warned, and the failures are counted for later.
        assert_eq!(warnings.last, Some(first));
        assert_eq!(warnings.unreported, 3);
        let long_ago = first.checked_sub(ACCEPT_WARNING_INTERVAL).expect("the clock has run for more than five seconds");
        warnings.last = Some(long_ago);
        warnings.failed(&error, ACCEPT_RETRY_MIN);
        assert_ne!(warnings.last, Some(long_ago));
        assert_eq!(warnings.unreported, 0);
    }
}
