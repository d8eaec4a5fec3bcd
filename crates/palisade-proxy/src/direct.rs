//! Connections that a client opened to an allowlisted name directly, without the proxy
//! variables, at an address the Linux backend gave that name inside the sandbox.

use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use crate::dial::Protocol;
use crate::http;
use crate::proxy::Proxy;
use crate::sni::relay_checked;
use crate::tunnel::relay;

/// Maximum length of the HTTP method palisade looks for to recognise an HTTP request.
const MAX_METHOD: usize = 20;
/// Pause before the client's first bytes are read again, when they do not yet show the protocol.
const REREAD_DELAY: Duration = Duration::from_millis(5);

impl Proxy {
    /// Serves one connection that a client opened to `name` and `port` directly. The decision
    /// is the proxy's: the rules are checked for the name, it is resolved once, every address
    /// is checked, and only a checked address is dialled. Refusals are recorded with the
    /// protocol `"tcp"`.
    ///
    /// What follows depends on the client's first bytes, so that a name reached this way gets
    /// the same checks as through the proxy:
    /// - an HTTP request is served one request at a time, each in origin form with a `Host`
    ///   header naming `name`, and each forwarded on its own;
    /// - a TLS ClientHello must carry `name` as its server name, or the connection is closed;
    /// - anything else, or a server that speaks first (SSH, SMTP), is relayed as it is.
    ///
    /// The credential of [`Proxy::with_credential`] is not asked for, because such a client does
    /// not know that it talks to a proxy. Serve only connections from inside the sandbox here.
    pub async fn serve_resolved(&self, client: TcpStream, name: &str, port: u16) {
        let mut client = client;
        let mut upstream = match self.shared.dial(name, port, Protocol::Tcp).await {
            Ok(upstream) => upstream.stream,
            Err(error) => {
                debug!(%error, "refused or failed a direct connection to {name}:{port}");
                return;
            }
        };
        // A server that speaks first is not HTTP or TLS, so the client's bytes need no check.
        tokio::select! {
            biased;
            ready = client.readable() => if ready.is_err() { return },
            _ = upstream.readable() => {
                relay(&self.shared.buffers, &mut client, &mut upstream).await;
                return;
            }
        }
        if starts_http_request(&client).await {
            // Each request is dialled on its own, so the connection made above goes unused.
            drop(upstream);
            http::serve_fixed(&self.shared, client, name, port).await;
            return;
        }
        relay_checked(&self.shared, Protocol::Tcp, name, port, &mut client, Vec::new(), &mut upstream).await;
    }
}

/// Peeks at the client's first bytes and reports whether they start an HTTP/1 request: a method
/// of capital letters followed by a space. Waits while the bytes so far could still be either.
async fn starts_http_request(client: &TcpStream) -> bool {
    let mut head = [0u8; MAX_METHOD + 1];
    loop {
        let received = match client.peek(&mut head).await {
            Ok(0) | Err(_) => return false,
            Ok(received) => received,
        };
        let bytes = &head[..received];
        match bytes.iter().position(|&byte| !byte.is_ascii_uppercase()) {
            Some(0) => return false,
            Some(end) => return bytes[end] == b' ',
            None if received > MAX_METHOD => return false,
            None => tokio::time::sleep(REREAD_DELAY).await,
        }
    }
}
