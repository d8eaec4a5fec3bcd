//! Name resolution for the proxy, behind a trait so tests can resolve from a fixed table.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// A boxed future that can move between threads, as returned by [`Resolve::resolve`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves host names to addresses for the proxy.
///
/// The proxy calls [`Resolve::resolve`] once per request for a name, checks every address it
/// returns and connects only to one of those, so an implementation is never called twice for
/// one request. Names arrive lowercase and without a trailing dot, as
/// [`palisade_policy::network::parse_target`] normalises them. IP addresses are never passed.
pub trait Resolve: Send + Sync + 'static {
    /// Returns the addresses of `name`, in the order the proxy should try them. `port` is the
    /// requested port, for resolvers that look up per service. An empty list counts as a
    /// failed lookup.
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// Resolves names with the host's resolver (`getaddrinfo` through [`tokio::net::lookup_host`]).
///
/// NOTE: `getaddrinfo` applies `/etc/hosts` and the search domains of `/etc/resolv.conf`, so a
/// name without dots may resolve as `name.<search domain>`. The addresses are still checked.
/// A trailing dot would stop the search, but glibc 2.36 then no longer finds the name in
/// `/etc/hosts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for socket_addr in tokio::net::lookup_host((name, port)).await? {
                // getaddrinfo returns one entry per socket type; keep each address once, in order.
                if !addrs.contains(&socket_addr.ip()) {
                    addrs.push(socket_addr.ip());
                }
            }
            Ok(addrs)
        })
    }
}
