//! The network of a run in allowlist mode.
//!
//! The run's network namespace has a loopback interface and nothing else. Init creates the
//! proxy's listening socket there, on 127.0.0.1 and a port the kernel picks, and hands it to the
//! supervisor over a UNIX socket pair (`SCM_RIGHTS`). The supervisor serves it with palisade's
//! proxy on a thread of its own and connects out from the host's namespace, so the proxy is the
//! only way out: the sandbox has no route, no resolver and no other socket to the host.
//!
//! The command learns the proxy's address from the usual variables ([`proxy_environment`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use palisade_policy::network::Rules;
use palisade_proxy::{Denial, Proxy, SystemResolver};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType,
};

/// The variables that tell clients where the proxy is. Each is set in both cases, since curl
/// reads only the lowercase `http_proxy` and other tools only the uppercase names.
const PROXY_VARIABLES: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];

/// The address the proxy listens on inside the run's network namespace.
pub(crate) const PROXY_HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// What the network of a finished run was, for the report.
#[derive(Debug, Clone, Default)]
pub struct NetworkOutcome {
    /// The proxy's address inside the sandbox, in allowlist mode.
    pub proxy: Option<SocketAddr>,
    /// Every request the proxy refused, oldest first, up to
    /// [`palisade_proxy::MAX_RECORDED_DENIALS`].
    pub denials: Vec<Denial>,
    /// Refusals past that cap, counted only.
    pub denials_dropped: u64,
}

/// Creates the socket pair init hands the listening socket over: the supervisor's end first.
pub(crate) fn handoff_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (supervisor, init) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    Ok((supervisor, init))
}

/// Runs in init, inside the run's network namespace once loopback is up: creates the proxy's
/// listening socket and sends it to the supervisor. Returns its port. Init keeps no copy, so
/// the command cannot accept the connections meant for the proxy.
pub(crate) fn listen_and_send(channel: &OwnedFd) -> Result<u16, String> {
    let listener = TcpListener::bind((PROXY_HOST, 0)).map_err(|error| format!("failed to create the proxy's listening socket: {error}"))?;
    let port = listener.local_addr().map_err(|error| format!("failed to read the proxy's port: {error}"))?.port();
    let fds = [listener.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let port_bytes = port.to_be_bytes();
    rustix::net::sendmsg(channel, &[IoSlice::new(&port_bytes)], &mut control, SendFlags::NOSIGNAL)
        .map_err(|error| format!("failed to hand the proxy's listening socket to palisade: {error}"))?;
    Ok(port)
}

/// Runs in the supervisor: receives the listening socket init created. Blocks until init sends
/// it or closes its end; `Ok(None)` means init closed its end without sending one, because setup
/// failed before, and init's report says why.
pub(crate) fn receive_listener(channel: &OwnedFd) -> io::Result<Option<TcpListener>> {
    let mut port_bytes = [0u8; 2];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(channel, &mut [IoSliceMut::new(&mut port_bytes)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut listener = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                listener.get_or_insert(TcpListener::from(fd));
            }
        }
    }
    listener.map(Some).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "init sent no listening socket"))
}

/// Returns the variables that point clients at the proxy on `port`: HTTP and HTTPS through the
/// HTTP proxy, every other protocol through SOCKS5 with names resolved by the proxy
/// (`socks5h`), and the sandbox's own loopback reached directly, where its own servers listen.
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

/// Reports whether `name` is one of the variables [`proxy_environment`] sets, in any case, so
/// a value from the caller's environment does not stand beside palisade's.
pub(crate) fn is_proxy_variable(name: &[u8]) -> bool {
    PROXY_VARIABLES.iter().any(|variable| name.eq_ignore_ascii_case(variable.as_bytes()))
}

/// Palisade's proxy running on a thread of the supervisor, for the length of one run.
pub(crate) struct ProxyThread {
    proxy: Arc<Proxy>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    address: SocketAddr,
}

impl ProxyThread {
    /// Starts serving `listener` with `rules`.
    pub(crate) fn start(listener: TcpListener, rules: Rules) -> io::Result<ProxyThread> {
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        // One thread: the proxy waits on sockets, and the resolver's lookups run on tokio's
        // blocking pool, so one thread carries many connections.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let proxy = Arc::new(Proxy::new(rules, Arc::new(SystemResolver)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&proxy);
        let thread = std::thread::Builder::new().name("palisade-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serving
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
            })
        })?;
        Ok(ProxyThread { proxy, stop: Some(stop), thread: Some(thread), address })
    }

    /// Returns the address the proxy listens on inside the sandbox.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops the proxy, closing every connection it still carries, and returns what it refused.
    pub(crate) fn finish(mut self) -> NetworkOutcome {
        self.shut_down();
        NetworkOutcome { proxy: Some(self.address), denials: self.proxy.denials(), denials_dropped: self.proxy.denials_dropped() }
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the proxy stopped with an error"),
                Err(_) => tracing::error!("the proxy thread panicked"),
            }
        }
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!is_proxy_variable(b"FTP_PROXY_X"));
        assert!(!is_proxy_variable(b"PATH"));
    }

    #[test]
    fn listener_crosses_the_socket_pair() {
        let (supervisor, init) = handoff_pair().unwrap();
        let port = listen_and_send(&init).unwrap();
        let listener = receive_listener(&supervisor).unwrap().expect("a listener was sent");
        assert_eq!(listener.local_addr().unwrap(), SocketAddr::from((PROXY_HOST, port)));
        // The received socket is the listening one: a connection to the port reaches it.
        let _client = std::net::TcpStream::connect((PROXY_HOST, port)).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn closed_channel_means_no_listener() {
        let (supervisor, init) = handoff_pair().unwrap();
        drop(init);
        assert!(receive_listener(&supervisor).unwrap().is_none());
    }
}
