//! Palisade's allowlist proxy: the only way out of a sandbox whose network is `allowlist`.
//!
//! The sandbox's network namespace has loopback only. A listening socket created inside it is
//! handed to the palisade process, which runs [`Proxy::serve`] on it and connects out from the
//! host's namespace. This crate is the proxy itself. It decides with the rules of
//! [`palisade_policy::network`] and does not create or hand over the socket.
//!
//! # Protocols
//!
//! The first byte of a connection selects the protocol. `0x05` starts SOCKS5, and anything
//! else is read as HTTP/1.1:
//!
//! - **HTTP CONNECT** `host:port` opens a tunnel. HTTPS, git over HTTPS and every other TLS
//!   client go this way.
//! - **Plain HTTP** with an absolute URI (`GET http://host:port/path HTTP/1.1`) is forwarded
//!   in origin form, without hop-by-hop headers. A `Host` header naming another destination
//!   than the URI is rejected with 400, and so are origin-form requests and `https://` URIs.
//! - **SOCKS5** (RFC 1928) with the "no authentication" method and the CONNECT command, for
//!   domain names, IPv4 and IPv6 addresses. With a credential, the username/password method
//!   (RFC 1929) takes its place.
//!
//! # Credential
//!
//! On Linux the proxy listens inside the sandbox's network namespace, where only the command
//! can connect. A backend whose proxy listens on the host's 127.0.0.1, where every local
//! process can connect, gives it a per-run [`Credential`] with [`Proxy::with_credential`], and
//! gives the command the URLs of [`Credential::proxy_urls`]:
//! `http://palisade:TOKEN@127.0.0.1:PORT` and `socks5h://palisade:TOKEN@127.0.0.1:PORT`.
//! The proxy then checks the credential before anything else:
//!
//! - an HTTP request (CONNECT or absolute URI) needs `Proxy-Authorization: Basic` with the
//!   user name and token, or gets 407 with `Proxy-Authenticate: Basic realm="palisade"`, and
//!   the connection is closed;
//! - a SOCKS5 client must select username/password. One that offers only "no authentication"
//!   gets "no acceptable methods" (0xFF), and a wrong user name or token gets a failure
//!   status. Either way the connection is closed.
//!
//! Nothing is resolved or dialled for such a client, and the proxy forwards no
//! `Proxy-Authorization` header upstream. Failed authentications are counted in
//! [`Proxy::auth_failures`] and logged at debug level, but are not [`Denial`]s.
//!
//! # Decisions
//!
//! For every request the proxy:
//!
//! 1. reads the host the client asked for with [`palisade_policy::network::parse_target`], so
//!    every spelling of an IP address (`127.1`, `0x7f000001`, ...) is judged as that address;
//! 2. decides on that host and port with [`Rules::check_request`], deny entries first;
//! 3. resolves a name once with its [`Resolve`] implementation, never an IP address;
//! 4. checks every resolved address with [`Rules::check_address`], so a name on the allowlist
//!    reaches a loopback, private, link-local or metadata address only through an IP entry;
//! 5. connects to the first allowed address that accepts, trying them in the resolver's order;
//! 6. in a tunnel to a name, closes the tunnel before anything reaches the upstream server when
//!    the TLS server name (SNI) of the client's first bytes names another host.
//!
//! The address connected to is always one that step 4 allowed, and no second lookup happens,
//! so a DNS answer that changes between check and connect (rebinding) gains nothing. Every
//! refusal, by the rules or of a malformed request, is logged at info level and kept for
//! [`Proxy::denials`], which the run report lists. A request without the proxy's credential,
//! when it has one, is not such a refusal (see [Credential](#credential)).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use palisade_policy::network::Rules;
//! use palisade_proxy::{Proxy, SystemResolver};
//!
//! async fn run_proxy(
//!     listener: std::net::TcpListener,
//!     finished: tokio::sync::oneshot::Receiver<()>,
//! ) -> Result<(), Box<dyn std::error::Error>> {
//!     let rules = Rules::from_strings(&["crates.io:443", "*.crates.io:443"], &[])?;
//!     let proxy = Proxy::new(rules, Arc::new(SystemResolver));
//!     // tokio takes over a socket only in non-blocking mode.
//!     listener.set_nonblocking(true)?;
//!     let listener = tokio::net::TcpListener::from_std(listener)?;
//!     proxy.serve(listener, async { let _ = finished.await; }).await?;
//!     for denial in proxy.denials() {
//!         println!("denied {}:{}: {}", denial.destination, denial.port, denial.reason);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Limitations
//!
//! - **No TLS interception.** A CONNECT tunnel is opaque: the proxy does not read the TLS
//!   Server Name Indication (SNI) or the HTTP `Host` header inside it. It dials the checked
//!   authority of the CONNECT request and nothing else, so an SNI naming a blocked host reaches
//!   only the allowed server, which then refuses or serves its own content. A CONNECT naming
//!   an IP address that is not on the list is refused whatever SNI the client would send.
//! - **An allowed host is an open channel.** The rules match hosts and ports, not methods or
//!   paths, so a command that may reach a host can also upload to it (a POST, or data in a
//!   query string). Allow only hosts you would let the command send data to.
//! - **HTTP/1.1 only.** Clients speak HTTP/1.1 to a forward proxy; HTTP/2 runs end to end
//!   inside a CONNECT tunnel. Plain-HTTP requests cannot upgrade (WebSocket over `ws://`);
//!   `wss://` through CONNECT works.

mod credential;
mod denial;
mod dial;
mod direct;
mod http;
mod proxy;
mod resolve;
mod sni;
mod socks;
pub mod thread;
mod tunnel;

pub use credential::{Credential, ProxyUrls};
pub use denial::{Denial, DenialSink, MAX_RECORDED_DENIALS};
pub use proxy::{Limits, Proxy};
pub use resolve::{BoxFuture, Resolve, SystemResolver};

#[cfg(doc)]
use palisade_policy::network::Rules;
