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
use std::net::{Ipv4Addr, TcpListener};

use palisade_policy::network::Rules;
use palisade_proxy::thread::ProxyRecord;
use palisade_proxy::Denial;

use crate::outcome::{NetworkDenial, NetworkRecord};
use crate::plan::PROXY_PORTS;

use super::Error;

pub use palisade_proxy::thread::is_proxy_variable;

/// The proxy of one run, served until [`ProxyThread::stop`].
pub struct ProxyThread(palisade_proxy::thread::ProxyThread);

impl ProxyThread {
    /// Listens on the first free port of [`PROXY_PORTS`] and serves `rules` there with a new
    /// credential.
    pub fn start(rules: Rules) -> Result<ProxyThread, Error> {
        let listener = bind_in_range(PROXY_PORTS)?;
        let proxy = palisade_proxy::thread::ProxyThread::start(listener, rules)
            .map_err(|source| Error::Io { what: "failed to start palisade's proxy".into(), source })?;
        Ok(ProxyThread(proxy))
    }

    /// Returns the variables that point the command's clients at this proxy, credential
    /// included. The command's own loopback servers are reached directly.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.0.environment()
    }

    /// Stops serving and returns what the proxy recorded.
    pub fn stop(self) -> NetworkRecord {
        let ProxyRecord { address, denials, denials_dropped, auth_failures } = self.0.stop();
        NetworkRecord {
            proxy: address.map(|address| address.to_string()),
            denials: denials.into_iter().map(network_denial).collect(),
            denials_dropped,
            auth_failures,
        }
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

fn network_denial(denial: Denial) -> NetworkDenial {
    NetworkDenial { destination: denial.destination, port: denial.port, protocol: denial.protocol, rule: denial.rule, reason: denial.reason }
}
