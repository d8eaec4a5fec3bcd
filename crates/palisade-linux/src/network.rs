//! The network of a run in allowlist mode.
//!
//! The run's network namespace has a loopback interface and nothing else. Init creates the
//! proxy's listening socket there, on 127.0.0.1 and a port the kernel picks, and hands it to the
//! supervisor over a UNIX socket pair (`SCM_RIGHTS`). The supervisor serves it with palisade's
//! proxy on a thread of its own and connects out from the host's namespace. The proxy is
//! therefore the only way out, because the sandbox has no route, no resolver and no other
//! socket to the host.
//!
//! The command learns the proxy's address from the usual variables ([`proxy_environment`]).
//!
//! Allow entries that name one loopback address and a port, such as `127.0.0.1:5432`, are
//! forwarded as well. Init also listens on that address and port inside the namespace, and the
//! supervisor connects each client to the same address and port outside. A client that
//! ignores the proxy variables (a database driver, say) reaches the host's service where it
//! expects it.
//!
//! Exposed ports go the other way: the supervisor listens on the host's 127.0.0.1 and, for each
//! client, asks init for a fresh TCP socket over a second socket pair ([`serve_socket_request`]).
//! A socket stays in the network namespace it was created in, so the supervisor connects it to
//! the same port on the sandbox's loopback, where the command's server listens.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_policy::network::Rules;
use palisade_proxy::{Denial, Proxy, SystemResolver};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::handoff;

/// The variables that tell clients where the proxy is. Each is set in both cases, since curl
/// reads only the lowercase `http_proxy` and other tools only the uppercase names.
const PROXY_VARIABLES: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];

/// The address the proxy listens on inside the run's network namespace.
pub(crate) const PROXY_HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Maximum number of connections a forwarded port carries at once; further clients wait in
/// the listen backlog.
const MAX_FORWARDED_CONNECTIONS: usize = 512;

/// Time for connecting a forwarded connection to the host's service.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of each copy buffer of a forwarded connection, one per direction.
const FORWARD_BUFFER: usize = 64 * 1024;

/// The first address given to a name on the allowlist inside the sandbox. Every 127.x.y.z
/// address is on the loopback interface, and this block is unlikely to be one a test suite picks.
const FIRST_NAME_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

/// The destination of the clients of one forwarded port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForwardTo {
    /// The same loopback address and port in palisade's namespace.
    Address(SocketAddr),
    /// A name on the allowlist and a port, decided, resolved and checked like a proxy request.
    Name(String, u16),
}

/// One port init listens on inside the sandbox, besides the proxy's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forward {
    pub(crate) listen: SocketAddr,
    pub(crate) to: ForwardTo,
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            ForwardTo::Address(address) => write!(f, "{address}"),
            ForwardTo::Name(name, port) => write!(f, "{name}:{port} at {}", self.listen),
        }
    }
}

/// The ports palisade serves inside the sandbox in allowlist mode, besides the proxy, and the
/// names it makes resolvable there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ForwardPlan {
    pub(crate) forwards: Vec<Forward>,
    /// `/etc/hosts` lines for the names, with `resolve_allowed`.
    pub(crate) hosts: Vec<(Ipv4Addr, String)>,
}

impl ForwardPlan {
    /// Lists the loopback entries of `rules` with a port and, when `resolve_allowed`, gives each
    /// exact name an address of its own with a listener on each of its ports.
    pub(crate) fn new(rules: &Rules, resolve_allowed: bool) -> ForwardPlan {
        let mut plan = ForwardPlan::default();
        for address in rules.forwarded_ports() {
            plan.forwards.push(Forward { listen: address, to: ForwardTo::Address(address) });
        }
        if resolve_allowed {
            let first = u32::from(FIRST_NAME_ADDRESS);
            for (index, (name, ports)) in rules.resolvable_names().into_iter().enumerate() {
                let address = Ipv4Addr::from(first + index as u32);
                for port in ports {
                    plan.forwards.push(Forward { listen: SocketAddr::from((address, port)), to: ForwardTo::Name(name.clone(), port) });
                }
                plan.hosts.push((address, name));
            }
        }
        plan
    }

}

/// Returns the sandbox's `/etc/hosts`: a line for each name palisade made resolvable, then the
/// host's `original`. The resolver takes the first line that names a host, so palisade's
/// address wins over one the host's file gives the same name.
pub(crate) fn hosts_file(original: &[u8], names: &[(Ipv4Addr, String)]) -> Vec<u8> {
    let mut contents = b"# Names on palisade's allowlist: palisade accepts connections for them at these addresses.\n".to_vec();
    for (address, name) in names {
        contents.extend_from_slice(format!("{address} {name}\n").as_bytes());
    }
    contents.extend_from_slice(b"# The host's /etc/hosts:\n");
    contents.extend_from_slice(original);
    contents
}

/// The listening sockets init creates inside the run's network namespace.
pub(crate) struct Listeners {
    /// The proxy's.
    pub(crate) proxy: TcpListener,
    /// One per forwarded port, in the order of the [`ForwardPlan`].
    pub(crate) forwarded: Vec<(TcpListener, Forward)>,
}

/// The network side of a finished run, for the report.
#[derive(Debug, Clone, Default)]
pub struct NetworkOutcome {
    /// The proxy's address inside the sandbox, in allowlist mode.
    pub proxy: Option<SocketAddr>,
    /// The ports palisade served inside the sandbox besides the proxy's, such as
    /// `127.0.0.1:5432` or `git.test:22 at 127.77.0.1:22`.
    pub forwarded: Vec<String>,
    /// Every request the proxy refused, oldest first, up to
    /// [`palisade_proxy::MAX_RECORDED_DENIALS`].
    pub denials: Vec<Denial>,
    /// Refusals past that cap, counted only.
    pub denials_dropped: u64,
}

/// Runs in init, inside the run's network namespace once loopback is up: creates the proxy's
/// listening socket and one for each address in `forwarded`, and sends them to the supervisor.
/// Returns the proxy's port. Init keeps no copy, so the command cannot accept the connections
/// meant for palisade.
pub(crate) fn listen_and_send(channel: &OwnedFd, forwarded: &[SocketAddr]) -> Result<u16, String> {
    let proxy = TcpListener::bind((PROXY_HOST, 0)).map_err(|error| format!("failed to create the proxy's listening socket: {error}"))?;
    let port = proxy.local_addr().map_err(|error| format!("failed to read the proxy's port: {error}"))?.port();
    let mut listeners = vec![proxy];
    for address in forwarded {
        let listener = TcpListener::bind(address)
            .map_err(|error| format!("failed to listen on {address} inside the sandbox, to forward it to the host: {error}"))?;
        listeners.push(listener);
    }

    for listener in &listeners {
        local_congestion_control(listener);
    }
    let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
    handoff::send(channel, &port.to_be_bytes(), &fds)
        .map_err(|error| format!("failed to hand the proxy's listening sockets to palisade: {error}"))?;
    Ok(port)
}

/// The smallest maximum, in bytes, that TCP may autotune a send or receive buffer of the run's
/// network namespace to, when palisade's proxy serves it. A new namespace starts with the
/// host's settings, often 4 MiB for sending and 6 MiB for receiving; a larger one is kept.
const LOOPBACK_BUFFER_MAX: u64 = 16 * 1024 * 1024;

/// Runs in init, in the run's network namespace, before the proxy's listeners exist: raises the
/// largest TCP buffers of the namespace to at least [`LOOPBACK_BUFFER_MAX`].
///
/// Every TCP connection of the namespace runs on its loopback, most of them between the command
/// and palisade's proxy, which copies each byte between two connections. Larger buffers let
/// each read and write of the proxy move more at once, with fewer wake-ups. In four alternating
/// runs of `bench/proxy.py` on a 2-CPU VM, a 1 GiB transfer through the proxy reached a median
/// of 0.76 of direct loopback with them and 0.72 without. A socket's buffers still count
/// against the run's memory where a cgroup limits it, and only grow while data waits in them.
/// Writing the settings needs the namespace's `CAP_NET_ADMIN`, which init has as root and in
/// the run's user namespace; if it fails anyway, the defaults stay and only speed is lost.
pub(crate) fn raise_loopback_buffers() {
    for file in ["/proc/sys/net/ipv4/tcp_wmem", "/proc/sys/net/ipv4/tcp_rmem"] {
        let raised = std::fs::read_to_string(file).ok().and_then(|text| with_larger_maximum(&text, LOOPBACK_BUFFER_MAX));
        let Some(raised) = raised else { continue };
        if let Err(error) = std::fs::write(file, raised) {
            tracing::debug!(%error, file, "the run's TCP buffers keep their default maximum");
        }
    }
}

/// Returns the `min default max` triple of `text` with its maximum raised to `max`, or `None`
/// when the text is not such a triple or its maximum is already at least `max`.
fn with_larger_maximum(text: &str, max: u64) -> Option<String> {
    let values: Vec<u64> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    let [min, default, current] = values[..] else { return None };
    (current < max).then(|| format!("{min} {default} {max}"))
}

/// Gives the connections `listener` accepts the Reno congestion control, which they inherit.
///
/// These connections run between the command and palisade on the sandbox's own loopback, where
/// congestion control has nothing to do. The host's default may be BBR, whose pacing timers
/// cost a loopback transfer much of its throughput. On a 2-CPU VM whose default is BBR, a 1 GiB
/// transfer through the proxy reached 0.62-0.65 of direct loopback with BBR on this hop, and
/// 0.64-0.77 with Reno (`bench/proxy.py`). The proxy's connections to the outside keep the
/// host's default. Reno is built into every kernel; if setting it fails anyway, the default
/// stays and only speed is lost.
fn local_congestion_control(listener: &TcpListener) {
    if let Err(error) = rustix::net::sockopt::set_tcp_congestion(listener, "reno") {
        tracing::debug!(%error, "the proxy's loopback connections keep the default congestion control");
    }
}

/// Runs in the supervisor: receives the listening sockets init created for the proxy and for
/// `forwarded`. Blocks until init sends them or closes its end. `Ok(None)` means that init
/// closed its end without sending, because setup failed first, and init's report has the reason.
pub(crate) fn receive_listeners(channel: &OwnedFd, forwarded: &[Forward]) -> io::Result<Option<Listeners>> {
    let mut port_bytes = [0u8; 2];
    let received = handoff::receive(channel, &mut port_bytes, forwarded.len() + 1)?;
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut listeners: Vec<TcpListener> = received.fds.into_iter().map(TcpListener::from).collect();
    if listeners.len() != forwarded.len() + 1 {
        let message = format!("init sent {} listening sockets, expected {}", listeners.len(), forwarded.len() + 1);
        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
    }
    let proxy = listeners.remove(0);
    Ok(Some(Listeners { proxy, forwarded: listeners.into_iter().zip(forwarded.iter().cloned()).collect() }))
}

/// Runs in init, for an exposed port: reads one request from the supervisor and replies with a
/// new, unconnected TCP socket of the run's network namespace. Returns `false` once the
/// supervisor has closed its end, so init stops watching it.
pub(crate) fn serve_socket_request(channel: &OwnedFd) -> bool {
    let mut request = [0u8; 1];
    match rustix::io::read(channel, &mut request) {
        Ok(0) => return false,
        Ok(_) => {}
        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return true,
        Err(_) => return false,
    }
    let socket = match rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None) {
        Ok(socket) => socket,
        // The supervisor reads a reply without a socket as a failure and closes its client.
        Err(_) => return handoff::send(channel, b"0", &[]).is_ok(),
    };
    handoff::send(channel, b"1", &[socket.as_fd()]).is_ok()
}

/// Runs in the supervisor: requests a TCP socket of the run's network namespace from init.
fn request_socket(channel: &OwnedFd) -> io::Result<std::net::TcpStream> {
    rustix::io::write(channel, b"s")?;
    let mut reply = [0u8; 1];
    let received = handoff::receive(channel, &mut reply, 1)?;
    if received.bytes == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the sandbox's init has exited"));
    }
    match received.fds.into_iter().next() {
        Some(fd) => Ok(std::net::TcpStream::from(fd)),
        None => Err(io::Error::other("the sandbox's init failed to create a socket")),
    }
}

/// Creates the host's listening sockets for the exposed `ports`, on 127.0.0.1, before the run
/// starts, so a port already in use on the host fails the run at once.
pub(crate) fn listen_for_exposed(ports: &[u16]) -> Result<Vec<(TcpListener, u16)>, String> {
    ports
        .iter()
        .map(|&port| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .map(|listener| (listener, port))
                .map_err(|error| format!("failed to listen on 127.0.0.1:{port} on the host, to expose the sandbox's port {port}: {error}"))
        })
        .collect()
}

/// Returns the variables that point clients at the proxy on `port`. HTTP and HTTPS go through
/// the HTTP proxy, every other protocol through SOCKS5 with names resolved by the proxy
/// (`socks5h`). The sandbox's own loopback, where its own servers listen, is reached directly.
pub(crate) fn proxy_environment(port: u16) -> Vec<(String, String)> {
    let http = format!("http://{PROXY_HOST}:{port}");
    let socks = format!("socks5h://{PROXY_HOST}:{port}");
    let direct = "localhost,127.0.0.1,::1".to_owned();
    let mut variables = Vec::new();
    for name in PROXY_VARIABLES {
        let value = match *name {
            "HTTP_PROXY" | "HTTPS_PROXY" => http.clone(),
            "ALL_PROXY" => socks.clone(),
            _ => direct.clone(),
        };
        variables.push((name.to_string(), value.clone()));
        variables.push((name.to_ascii_lowercase(), value));
    }
    variables
}

/// Reports whether `name` names a proxy setting, in any case: one of the variables
/// [`proxy_environment`] sets, or any other name ending in `_PROXY` (`FTP_PROXY`,
/// `npm_config_https_proxy`). In allowlist mode the caller's values are dropped, because a
/// proxy outside the sandbox is unreachable and would take precedence over palisade's in some
/// tools.
pub(crate) fn is_proxy_variable(name: &[u8]) -> bool {
    const SUFFIX: &[u8] = b"_proxy";
    let is_listed = PROXY_VARIABLES.iter().any(|variable| name.eq_ignore_ascii_case(variable.as_bytes()));
    is_listed || (name.len() >= SUFFIX.len() && name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// The services of the supervisor's network thread for one run.
pub(crate) struct Services {
    /// The proxy's listening socket with its rules, and the forwarded ports (allowlist mode).
    pub(crate) proxy: Option<(Listeners, Rules)>,
    /// The host's listening sockets of the exposed ports, with the port each reaches in the
    /// sandbox, and the supervisor's end of the socket pair on which init sends new sockets on request.
    pub(crate) exposed: Option<(Vec<(TcpListener, u16)>, OwnedFd)>,
    /// Called with each refusal of the proxy as it happens.
    pub(crate) on_denial: Option<palisade_proxy::DenialSink>,
}

/// Palisade's proxy, forwarded ports and exposed ports, served on a thread of the supervisor
/// for the length of one run.
pub(crate) struct NetworkThread {
    proxy: Option<Arc<Proxy>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    address: Option<SocketAddr>,
    forwarded: Vec<String>,
}

/// Raises this process's soft limit on open descriptors to its hard limit. A tunnel needs two
/// to six descriptors, and the proxy serves up to 512 connections at once, more than the
/// common soft limit of 1024 allows. The sandbox keeps the limits it was given: its processes
/// exist by now, and the command's limit was set before.
fn raise_descriptor_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(error) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::debug!(%error, "the soft limit on open descriptors stays at {:?}", limit.current);
        }
    }
}

impl NetworkThread {
    /// Starts serving `services`.
    pub(crate) fn start(services: Services) -> io::Result<NetworkThread> {
        raise_descriptor_limit();
        // One thread: the proxy and the forwarders wait on sockets, and the resolver's lookups
        // run on tokio's blocking pool, so one thread carries many connections.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDED_CONNECTIONS));
        let mut address = None;
        let mut forwarded_addresses = Vec::new();
        let mut proxy = None;
        let mut listeners: Vec<(TcpListener, Target)> = Vec::new();
        let mut proxy_listener = None;
        if let Some((Listeners { proxy: listener, forwarded }, rules)) = services.proxy {
            address = Some(listener.local_addr()?);
            forwarded_addresses = forwarded.iter().map(|(_, forward)| forward.to_string()).collect();
            let shared = Arc::new(match services.on_denial {
                Some(sink) => Proxy::with_denial_sink(rules, Arc::new(SystemResolver), sink),
                None => Proxy::new(rules, Arc::new(SystemResolver)),
            });
            proxy_listener = Some(listener);
            for (listener, forward) in forwarded {
                let target = match forward.to {
                    ForwardTo::Address(address) => Target::Host(address),
                    ForwardTo::Name(name, port) => Target::Name(name, port, Arc::clone(&shared)),
                };
                listeners.push((listener, target));
            }
            proxy = Some(shared);
        }
        if let Some((exposed, factory)) = services.exposed {
            let factory = Arc::new(std::sync::Mutex::new(factory));
            listeners.extend(exposed.into_iter().map(|(listener, port)| (listener, Target::Sandbox(port, Arc::clone(&factory)))));
        }
        for listener in proxy_listener.iter().chain(listeners.iter().map(|(listener, _)| listener)) {
            listener.set_nonblocking(true)?;
        }

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = proxy.clone();
        let thread = std::thread::Builder::new().name("palisade-network".into()).spawn(move || {
            runtime.block_on(async move {
                let mut forwarders = tokio::task::JoinSet::new();
                for (listener, target) in listeners {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    forwarders.spawn(serve_forwarded(listener, target, Arc::clone(&permits)));
                }
                let stopped = async {
                    let _ = stopped.await;
                };
                let served = match (serving, proxy_listener) {
                    (Some(proxy), Some(listener)) => proxy.serve(tokio::net::TcpListener::from_std(listener)?, stopped).await,
                    _ => {
                        stopped.await;
                        Ok(())
                    }
                };
                // Aborting the accept loops drops their connection tasks, which closes every
                // forwarded connection too.
                forwarders.shutdown().await;
                served
            })
        })?;
        Ok(NetworkThread { proxy, stop: Some(stop), thread: Some(thread), address, forwarded: forwarded_addresses })
    }

    /// Returns the address the proxy listens on inside the sandbox, in allowlist mode.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Stops serving, closing every connection still open, and returns what the proxy refused.
    pub(crate) fn finish(mut self) -> NetworkOutcome {
        self.shut_down();
        NetworkOutcome {
            proxy: self.address,
            forwarded: std::mem::take(&mut self.forwarded),
            denials: self.proxy.as_ref().map(|proxy| proxy.denials()).unwrap_or_default(),
            denials_dropped: self.proxy.as_ref().map_or(0, |proxy| proxy.denials_dropped()),
        }
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "palisade's network thread stopped with an error"),
                Err(_) => tracing::error!("palisade's network thread panicked"),
            }
        }
    }
}

impl Drop for NetworkThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The destination of a forwarder's clients.
#[derive(Clone)]
enum Target {
    /// An address in palisade's own namespace: a forwarded loopback port.
    Host(SocketAddr),
    /// A port of the sandbox's loopback, through a socket init creates: an exposed port.
    Sandbox(u16, Arc<std::sync::Mutex<OwnedFd>>),
    /// A name on the allowlist and a port, connected by the proxy's rules.
    Name(String, u16, Arc<Proxy>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Host(address) => write!(f, "{address}"),
            Target::Sandbox(port, _) => write!(f, "the sandbox's 127.0.0.1:{port}"),
            Target::Name(name, port, _) => write!(f, "{name}:{port}"),
        }
    }
}

impl Target {
    async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        match self {
            Target::Host(address) => tokio::net::TcpStream::connect(address).await,
            // Served by the proxy itself, see `serve_forwarded`.
            Target::Name(..) => Err(io::Error::other("a name is not connected here")),
            Target::Sandbox(port, factory) => {
                let factory = Arc::clone(factory);
                // The exchange with init is two blocking calls on a socket pair, and init replies
                // at once. The lock keeps concurrent requests from taking each other's replies.
                let socket = tokio::task::spawn_blocking(move || {
                    let channel = factory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    request_socket(&channel)
                })
                .await
                .map_err(io::Error::other)??;
                socket.set_nonblocking(true)?;
                let socket = tokio::net::TcpSocket::from_std_stream(socket);
                socket.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, *port))).await
            }
        }
    }
}

/// Accepts connections on a forwarded or exposed port and connects each to `target`. Runs
/// until aborted; the tasks of its connections end with it.
async fn serve_forwarded(listener: tokio::net::TcpListener, target: Target, permits: Arc<tokio::sync::Semaphore>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Mostly EMFILE: pausing lets other connections end and free descriptors.
                tracing::warn!(%error, %target, "failed to accept a forwarded connection, retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = target.clone();
        connections.spawn(async move {
            let _permit = permit;
            // A name gets the proxy's checks of what the client sends: the TLS server name
            // and every HTTP request's Host header.
            if let Target::Name(name, port, proxy) = &target {
                proxy.serve_resolved(client, name, *port).await;
                return;
            }
            let mut client = client;
            let mut upstream = match tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, target.connect()).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %target, "failed to connect a forwarded connection");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%target, "connecting a forwarded connection timed out");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let copied = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, FORWARD_BUFFER, FORWARD_BUFFER).await;
            if let Err(error) = copied {
                tracing::debug!(%error, %target, "a forwarded connection closed with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_maximum_is_raised_and_the_rest_kept() {
        assert_eq!(with_larger_maximum("4096\t16384\t4194304\n", 16 << 20).as_deref(), Some("4096 16384 16777216"));
        assert_eq!(with_larger_maximum("4096 131072 6291456", 16 << 20).as_deref(), Some("4096 131072 16777216"));
    }

    #[test]
    fn larger_or_unreadable_settings_are_left_alone() {
        assert_eq!(with_larger_maximum("4096 16384 33554432", 16 << 20), None);
        assert_eq!(with_larger_maximum("4096 16384", 16 << 20), None);
        assert_eq!(with_larger_maximum("a b c", 16 << 20), None);
    }

    #[test]
    fn environment_names_the_proxy_in_both_cases() {
        let variables = proxy_environment(41234);
        let value = |name: &str| variables.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
            assert_eq!(value(name), Some("http://127.0.0.1:41234"), "{name}");
        }
        assert_eq!(value("ALL_PROXY"), Some("socks5h://127.0.0.1:41234"));
        assert_eq!(value("all_proxy"), Some("socks5h://127.0.0.1:41234"));
        assert_eq!(value("no_proxy"), Some("localhost,127.0.0.1,::1"));
        assert_eq!(variables.len(), 8);
    }

    #[test]
    fn proxy_variables_match_in_any_case() {
        assert!(is_proxy_variable(b"https_proxy"));
        assert!(is_proxy_variable(b"Https_Proxy"));
        assert!(is_proxy_variable(b"NO_PROXY"));
        assert!(is_proxy_variable(b"FTP_PROXY"));
        assert!(is_proxy_variable(b"npm_config_https_proxy"));
        assert!(!is_proxy_variable(b"FTP_PROXY_X"));
        assert!(!is_proxy_variable(b"_PROXYX"));
        assert!(!is_proxy_variable(b"PATH"));
    }

    #[test]
    fn listener_crosses_the_socket_pair() {
        let (supervisor, init) = handoff::pair().unwrap();
        // A port the kernel just handed out and took back is very likely still free.
        let free = TcpListener::bind((PROXY_HOST, 0)).unwrap().local_addr().unwrap();
        let port = listen_and_send(&init, &[free]).unwrap();
        let forward = Forward { listen: free, to: ForwardTo::Address(free) };
        let listeners = receive_listeners(&supervisor, std::slice::from_ref(&forward)).unwrap().expect("listeners were sent");
        assert_eq!(listeners.proxy.local_addr().unwrap(), SocketAddr::from((PROXY_HOST, port)));
        assert_eq!(listeners.forwarded.len(), 1);
        assert_eq!(listeners.forwarded[0].0.local_addr().unwrap(), free);
        assert_eq!(listeners.forwarded[0].1, forward);
        // The received socket is the listening one: a connection to the port reaches it.
        let _client = std::net::TcpStream::connect((PROXY_HOST, port)).unwrap();
        listeners.proxy.accept().unwrap();
    }

    #[test]
    fn names_get_addresses_and_listeners() {
        let rules = Rules::from_strings(&["git.test:22", "127.0.0.1:5432", "api.test", "*.cdn.test"], &[]).unwrap();
        let plan = ForwardPlan::new(&rules, true);
        let forwards: Vec<String> = plan.forwards.iter().map(ToString::to_string).collect();
        assert_eq!(forwards, [
            "127.0.0.1:5432",
            "git.test:22 at 127.77.0.1:22",
            "api.test:80 at 127.77.0.2:80",
            "api.test:443 at 127.77.0.2:443",
        ]);
        assert_eq!(plan.hosts, [(Ipv4Addr::new(127, 77, 0, 1), "git.test".to_owned()), (Ipv4Addr::new(127, 77, 0, 2), "api.test".to_owned())]);
        assert_eq!(ForwardPlan::new(&rules, false).forwards.len(), 1, "names are resolvable only when asked for");

        let hosts = String::from_utf8(hosts_file(b"127.0.0.1 localhost\n", &plan.hosts)).unwrap();
        let lines: Vec<&str> = hosts.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(lines, ["127.77.0.1 git.test", "127.77.0.2 api.test", "127.0.0.1 localhost"]);
    }

    #[test]
    fn closed_channel_means_no_listener() {
        let (supervisor, init) = handoff::pair().unwrap();
        drop(init);
        assert!(receive_listeners(&supervisor, &[]).unwrap().is_none());
    }
}
