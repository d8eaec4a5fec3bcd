//! The decision and the connection for one request, common to every protocol: read the host,
//! check it, resolve it, check each address and connect to one that passed.

use std::io;
use std::net::{IpAddr, SocketAddr};

use palisade_policy::network::{Decision, Target, parse_target};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::denial::Denial;
use crate::proxy::Shared;

/// The protocol a client requested a destination with, as [`Denial::protocol`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Connect,
    Http,
    Socks5,
    /// A plain TCP connection to a name on the allowlist, which the sandbox reached at a
    /// loopback address palisade gave that name ([`crate::Proxy::serve_resolved`]).
    Tcp,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Connect => "connect",
            Protocol::Http => "http",
            Protocol::Socks5 => "socks5",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The reason the proxy did not connect a request. The two refusals are already recorded as a
/// [`Denial`] when they are returned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The requested host is neither a valid name nor an IP address.
    #[error("{}", .0.reason)]
    InvalidHost(Denial),

    /// The rules deny the request or every address its name resolved to.
    #[error("{}", .0.reason)]
    Denied(Denial),

    #[error("failed to resolve {name}: {source}")]
    Resolve { name: String, source: io::Error },

    #[error("failed to connect to {destination}: {source}")]
    Connect { destination: String, source: io::Error },
}

/// A connection to an upstream server, to an address the rules allowed.
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
}

impl Shared {
    /// Checks a request for `host` and `port` (the host as the client wrote it, IPv6 addresses
    /// with or without brackets) and connects to an address the rules allow.
    pub(crate) async fn dial(&self, host: &str, port: u16, protocol: Protocol) -> Result<Upstream, DialError> {
        let target = match parse_target(host) {
            Ok(target) => target,
            Err(reason) => {
                let reason = format!("'{host}' is not a valid host name or IP address: {reason}");
                return Err(DialError::InvalidHost(self.refuse(host, port, protocol, None, reason)));
            }
        };
        if let Decision::Deny { rule, reason } = self.rules.check_request(&target, port) {
            return Err(DialError::Denied(self.refuse(host, port, protocol, rule, reason)));
        }

        let addrs = self.addresses(&target, port).await?;
        match self.allowed_addresses(&target, port, &addrs) {
            Ok(allowed) => self.connect(&target, port, &allowed).await,
            Err((rule, reason)) => Err(DialError::Denied(self.refuse(host, port, protocol, rule, reason))),
        }
    }

    /// Records a refusal and returns it.
    pub(crate) fn refuse(
        &self,
        host: &str,
        port: u16,
        protocol: Protocol,
        rule: Option<String>,
        reason: String,
    ) -> Denial {
        let denial = Denial { destination: unbracket(host).to_owned(), port, protocol: protocol.as_str(), rule, reason };
        self.denials.record(denial.clone());
        denial
    }

    /// Returns the addresses to check: the target itself, or what its name resolves to. The
    /// list is never empty.
    async fn addresses(&self, target: &Target, port: u16) -> Result<Vec<IpAddr>, DialError> {
        let name = match target {
            Target::Ip(addr) => return Ok(vec![*addr]),
            Target::Name(name) => name,
        };
        let resolve_error = |source| DialError::Resolve { name: name.clone(), source };
        let lookup = self.resolver.resolve(name, port);
        let addrs = match tokio::time::timeout(self.limits.resolve_timeout, lookup).await {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(source)) => return Err(resolve_error(source)),
            Err(_) => {
                let message = format!("timed out after {} s", self.limits.resolve_timeout.as_secs_f32());
                return Err(resolve_error(io::Error::new(io::ErrorKind::TimedOut, message)));
            }
        };
        if addrs.is_empty() {
            return Err(resolve_error(io::Error::new(io::ErrorKind::NotFound, "the resolver returned no addresses")));
        }
        debug!(%name, ?addrs, "resolved");
        Ok(addrs)
    }

    /// Returns the addresses the rules allow for this request, in the order given. When they
    /// allow none, returns the deny entry and reason of the first address instead.
    fn allowed_addresses(
        &self,
        target: &Target,
        port: u16,
        addrs: &[IpAddr],
    ) -> Result<Vec<IpAddr>, (Option<String>, String)> {
        let mut allowed = Vec::new();
        let mut first_denial = None;
        for &addr in addrs {
            match self.rules.check_address(addr, port, target) {
                Decision::Allow { rule } => {
                    debug!(%target, port, %addr, %rule, "address allowed");
                    allowed.push(addr);
                }
                Decision::Deny { rule, reason } => {
                    debug!(%target, port, %addr, rule = rule.as_deref().unwrap_or("-"), "address denied: {reason}");
                    first_denial.get_or_insert((rule, reason));
                }
            }
        }
        match first_denial {
            Some(denial) if allowed.is_empty() => Err(denial),
            _ => Ok(allowed),
        }
    }

    /// Connects to the first of `addrs` that accepts, within one connect timeout for all.
    async fn connect(&self, target: &Target, port: u16, addrs: &[IpAddr]) -> Result<Upstream, DialError> {
        let deadline = Instant::now() + self.limits.connect_timeout;
        let mut last_error = None;
        for &ip in addrs {
            let addr = SocketAddr::new(ip, port);
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    debug!(%target, %addr, "connected");
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%error, %addr, "failed to set TCP_NODELAY on an upstream connection");
                    }
                    return Ok(Upstream { stream, addr });
                }
                Ok(Err(error)) => {
                    debug!(%target, %addr, %error, "connect failed");
                    // For a name, the message names the address that failed. An address target
                    // is named already, so it is not repeated.
                    let message = match target {
                        Target::Name(_) => format!("{addr}: {error}"),
                        Target::Ip(_) => error.to_string(),
                    };
                    last_error = Some(io::Error::new(error.kind(), message));
                }
                Err(_) => {
                    let message = format!("timed out after {} s", self.limits.connect_timeout.as_secs_f32());
                    last_error = Some(io::Error::new(io::ErrorKind::TimedOut, message));
                    break;
                }
            }
        }
        let source = last_error.expect("connect is called with at least one address");
        Err(DialError::Connect { destination: authority(target, port), source })
    }
}

/// Removes the brackets around an IPv6 address, if any.
pub(crate) fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host)
}

/// Formats `host:port`, with brackets around an IPv6 address.
fn authority(target: &Target, port: u16) -> String {
    match target {
        Target::Name(name) => format!("{name}:{port}"),
        Target::Ip(addr) => SocketAddr::new(*addr, port).to_string(),
    }
}
