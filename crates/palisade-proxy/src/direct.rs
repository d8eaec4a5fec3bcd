//! Plain TCP connections to allowlisted names, for clients that ignore the proxy variables.

use tokio::net::TcpStream;

use crate::dial::{DialError, Protocol};
use crate::proxy::Proxy;

impl Proxy {
    /// Connects to `host` and `port` on behalf of a client that opened a plain TCP connection.
    /// The decision is the same as for a proxy request. The rules are checked for the host, a
    /// name is resolved once, every address is checked, and only a checked address is dialled.
    /// A refusal is recorded like the proxy's, with the protocol `"tcp"`.
    ///
    /// The Linux backend calls it for names on the allowlist that it made resolvable inside the
    /// sandbox, so `ssh` or a database driver reaches them without a proxy.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        match self.shared.dial(host, port, Protocol::Tcp).await {
            Ok(upstream) => Ok(upstream.stream),
            Err(DialError::InvalidHost(denial) | DialError::Denied(denial)) => Err(denial.reason),
            Err(error) => Err(error.to_string()),
        }
    }
}
