//! palisade's proxy for `--net allowlist` on Windows: served on a thread of palisade, on
//! 127.0.0.1, on a port of [`PROXY_PORTS`], and answering only clients that present the
//! run's credential.
//!
//! On Linux the proxy listens inside the sandbox's own network namespace, where nothing else
//! reaches it. Here it listens on the host's loopback, which the offline account may reach
//! only on [`PROXY_PORTS`] (setup's firewall filters), and which every local process of the
//! caller may reach too. The credential keeps those processes, and the commands of other runs,
//! from borrowing this run's proxy.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use palisade_policy::network::Rules;
use palisade_proxy::{Credential, Denial, Proxy, SystemResolver};

use crate::outcome::{NetworkDenial, NetworkRecord};
use crate::plan::PROXY_PORTS;

use super::Error;

/// The proxy of one run, served until [`ProxyThread::stop`].
pub struct ProxyThread {
    proxy: Arc<Proxy>,
    address: SocketAddr,
    urls: palisade_proxy::ProxyUrls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ProxyThread {
    /// Listens on the first free port of [`PROXY_PORTS`] and serves `rules` there with a new
    /// credential.
    pub fn start(rules: Rules) -> Result<ProxyThread, Error> {
        let listener = bind_in_range(PROXY_PORTS)?;
        let address = listener.local_addr().map_err(|source| Error::Io { what: "the proxy's address".into(), source })?;
        let credential = Credential::generate().map_err(|source| Error::Io { what: "a credential for the proxy".into(), source })?;
        let urls = credential.proxy_urls(address);
        let proxy = Arc::new(Proxy::new(rules, Arc::new(SystemResolver)).with_credential(credential));
        listener.set_nonblocking(true).map_err(|source| Error::Io { what: "the proxy's socket".into(), source })?;
        // One thread, as on Linux: connections wait on sockets, and lookups run on tokio's
        // blocking pool.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| Error::Io { what: "the proxy's runtime".into(), source })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&proxy);
        let thread = std::thread::Builder::new()
            .name("palisade-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serving
                        .serve(listener, async {
                            let _ = stopped.await;
                        })
                        .await
                })
            })
            .map_err(|source| Error::Io { what: "the proxy's thread".into(), source })?;
        Ok(ProxyThread { proxy, address, urls, stop: Some(stop), thread: Some(thread) })
    }

    /// Returns the variables that point the command's clients at this proxy, credential
    /// included. The command's own loopback servers are reached directly.
    pub fn environment(&self) -> Vec<(String, String)> {
        let direct = "localhost,127.0.0.1,::1".to_owned();
        let mut variables = Vec::new();
        for (name, value) in [
            ("HTTP_PROXY", self.urls.http.clone()),
            ("HTTPS_PROXY", self.urls.http.clone()),
            ("ALL_PROXY", self.urls.socks5.clone()),
            ("NO_PROXY", direct),
        ] {
            variables.push((name.to_ascii_lowercase(), value.clone()));
            variables.push((name.to_owned(), value));
        }
        variables
    }

    /// Stops serving and returns what the proxy recorded.
    pub fn stop(mut self) -> NetworkRecord {
        self.shut_down();
        NetworkRecord {
            proxy: Some(self.address.to_string()),
            denials: self.proxy.denials().into_iter().map(network_denial).collect(),
            denials_dropped: self.proxy.denials_dropped(),
            auth_failures: self.proxy.auth_failures(),
        }
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!("palisade's proxy ended with an error: {error}"),
                Err(_) => tracing::warn!("palisade's proxy thread panicked"),
            }
        }
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Binds 127.0.0.1 on the first port of `range` (inclusive) that is free.
fn bind_in_range((first, last): (u16, u16)) -> Result<TcpListener, Error> {
    let mut last_error = None;
    for port in first..=last {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(Error::Io {
        what: format!(
            "no free port for palisade's proxy on 127.0.0.1:{first}-{last}, the only ports the firewall lets the sandbox reach \
             (each running allowlist run holds one)"
        ),
        source: last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "empty port range")),
    })
}

/// Whether `name` names a proxy setting of the caller, which an allowlist run replaces: any
/// name ending in `_PROXY` in any case (`HTTP_PROXY`, `no_proxy`, `npm_config_https_proxy`).
pub fn is_proxy_variable(name: &str) -> bool {
    const SUFFIX: &[u8] = b"_proxy";
    let name = name.as_bytes();
    name.len() >= SUFFIX.len() && name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
}

fn network_denial(denial: Denial) -> NetworkDenial {
    NetworkDenial { destination: denial.destination, port: denial.port, protocol: denial.protocol, rule: denial.rule, reason: denial.reason }
}
