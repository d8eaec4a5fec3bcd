//! The proxy served on a thread of palisade's own process, on the host's loopback, for the
//! backends whose sandbox has no network namespace of its own (Windows, macOS).
//!
//! Every local process can connect to a socket on the host's loopback, so the proxy always
//! gets a per-run [`Credential`], and the command's clients get URLs that carry it. Other
//! local processes, and the commands of other runs, cannot borrow the proxy.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use palisade_policy::network::Rules;

use crate::{Credential, Denial, Proxy, ProxyUrls, SystemResolver};

/// The proxy of one run, served until [`ProxyThread::stop`] or until it is dropped.
pub struct ProxyThread {
    proxy: Arc<Proxy>,
    address: SocketAddr,
    urls: ProxyUrls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// The proxy's record of a run, for the run report.
#[derive(Debug, Clone, Default)]
pub struct ProxyRecord {
    /// The address it listened on.
    pub address: Option<SocketAddr>,
    pub denials: Vec<Denial>,
    /// Refusals beyond [`crate::MAX_RECORDED_DENIALS`], counted but not kept.
    pub denials_dropped: u64,
    /// Connections that did not present the run's credential.
    pub auth_failures: u64,
}

impl ProxyThread {
    /// Serves `rules` on `listener`, a loopback socket the caller bound, with a new
    /// credential.
    pub fn start(listener: TcpListener, rules: Rules) -> io::Result<ProxyThread> {
        let address = listener.local_addr()?;
        let credential = Credential::generate()?;
        let urls = credential.proxy_urls(address);
        let proxy = Arc::new(Proxy::new(rules, Arc::new(SystemResolver)).with_credential(credential));
        // tokio takes over a socket only in non-blocking mode.
        listener.set_nonblocking(true)?;
        // One thread, as on Linux: connections wait on sockets, and lookups run on tokio's
        // blocking pool.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
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
        Ok(ProxyThread { proxy, address, urls, stop: Some(stop), thread: Some(thread) })
    }

    /// Returns the address the proxy listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Returns the variables that point the command's clients at this proxy, credential
    /// included, in upper and lower case. The command's own loopback servers are reached
    /// directly (`NO_PROXY`).
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
    pub fn stop(mut self) -> ProxyRecord {
        self.shut_down();
        ProxyRecord {
            address: Some(self.address),
            denials: self.proxy.denials(),
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

/// Returns whether `name` names a proxy setting of the caller, which a run through this proxy
/// replaces: any name ending in `_PROXY` in any case (`HTTP_PROXY`, `no_proxy`,
/// `npm_config_https_proxy`).
pub fn is_proxy_variable(name: &str) -> bool {
    const SUFFIX: &[u8] = b"_proxy";
    let name = name.as_bytes();
    name.len() >= SUFFIX.len() && name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{Ipv4Addr, TcpStream};

    #[test]
    fn proxy_variables_match_any_case() {
        for name in ["HTTP_PROXY", "https_proxy", "npm_config_https_proxy", "NO_PROXY", "all_Proxy"] {
            assert!(is_proxy_variable(name), "{name}");
        }
        for name in ["PROXY", "HTTP_PROXY_PORT", "PATH", "_prox"] {
            assert!(!is_proxy_variable(name), "{name}");
        }
    }

    #[test]
    fn request_without_credential_is_rejected() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let rules = Rules::from_strings(&["example.com:443"], &[]).unwrap();
        let proxy = ProxyThread::start(listener, rules).unwrap();
        let environment = proxy.environment();
        let http = environment.iter().find(|(name, _)| name == "HTTP_PROXY").map(|(_, value)| value.clone()).unwrap();
        assert!(http.starts_with("http://palisade:"), "{http}");
        assert!(environment.iter().any(|(name, _)| name == "no_proxy"));

        let mut client = TcpStream::connect(proxy.address()).unwrap();
        client.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 407"), "{reply}");
        let record = proxy.stop();
        assert_eq!(record.auth_failures, 1);
        assert!(record.denials.is_empty());
    }
}
