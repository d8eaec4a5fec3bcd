//! The HTTP/1.1 side of the proxy: CONNECT tunnels here, absolute-URI forwarding in
//! [`forward`], and the responses both send when they refuse or fail.

mod forward;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue, PROXY_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use crate::credential::AuthFailure;
use crate::denial::Denial;
use crate::dial::{DialError, Protocol};
use crate::proxy::Shared;
use crate::sni::relay_checked;

/// The body of every response the proxy sends: its own short texts, or an upstream body.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Header of the responses to requests the proxy refused and recorded as a [`Denial`], so
/// scripts can tell palisade's refusals from an upstream server's. The 400 and 431 that hyper
/// sends itself, for heads it cannot parse, lack it.
const DENIED_HEADER: HeaderName = HeaderName::from_static("x-palisade-denied");

/// Maximum number of header fields in a request head. It is hyper's default (hyper 1.13), and
/// hyper responds with 431 to a head with more, as to one over
/// [`crate::Limits::max_request_head`] bytes. Setting it explicitly would move hyper's header
/// array from the stack to the heap.
const MAX_HEADERS: usize = 100;

/// The challenge of a 407 response. Basic is the scheme that clients send for a proxy URL with
/// user info (`http://user:password@host:port`).
const AUTHENTICATE_CHALLENGE: &str = "Basic realm=\"palisade\"";

/// The body of a 407 response. It names where the credential is, never the credential.
const AUTHENTICATION_REQUIRED_TEXT: &str = "palisade proxy: this proxy serves only the command palisade runs, which \
     must send the run's credential. palisade puts it in the proxy URL of the HTTP_PROXY variable it sets \
     (http://palisade:TOKEN@127.0.0.1:PORT), so use that URL as the proxy, user info included.\n";

/// A CONNECT tunnel waiting for hyper to hand over the client connection.
struct Tunnel {
    on_upgrade: OnUpgrade,
    upstream: TcpStream,
    /// The host and port of the CONNECT request, as the client wrote them.
    host: String,
    port: u16,
}

/// The cell in which the CONNECT handler leaves its tunnel for the connection task, which
/// relays it once hyper has sent the 200 response and released the connection.
type TunnelSlot = Arc<Mutex<Option<Tunnel>>>;

/// Serves HTTP/1.1 requests on one client connection, then relays the CONNECT tunnel that
/// ended it, if any.
pub(crate) async fn serve(shared: &Arc<Shared>, stream: TcpStream) {
    let tunnel = TunnelSlot::default();
    // True once a request on this connection has presented the credential, and from the start
    // when the proxy has none.
    let authenticated = Arc::new(AtomicBool::new(shared.credential.is_none()));
    let service = {
        let shared = Arc::clone(shared);
        let tunnel = Arc::clone(&tunnel);
        let authenticated = Arc::clone(&authenticated);
        service_fn(move |request| handle(Arc::clone(&shared), Arc::clone(&tunnel), Arc::clone(&authenticated), request))
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.head_timeout)
        .max_header_size(shared.limits.max_request_head)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        record_connection_error(shared, &error, authenticated.load(Ordering::Relaxed));
        return;
    }

    let taken = tunnel.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    let Some(Tunnel { on_upgrade, mut upstream, host, port }) = taken else { return };
    match on_upgrade.await {
        // The connection was served as a `TokioIo<TcpStream>`, so the downcast gives back that
        // socket, for the relay to splice, and the bytes hyper had read past the request.
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut client = parts.io.into_inner();
                relay_checked(shared, Protocol::Connect, &host, port, &mut client, parts.read_buf.to_vec(), &mut upstream).await;
            }
            Err(_) => debug!("the upgraded CONNECT connection is not a TCP socket, so the tunnel was closed"),
        },
        Err(error) => debug!(%error, "the client connection ended before the tunnel opened"),
    }
}

/// Serves HTTP/1.1 requests that a client sent to `name` and `port` directly, on a connection
/// to the address palisade gave that name inside the sandbox. Each request must be in origin
/// form with a `Host` header naming `name`, and is checked and forwarded on its own, so a later
/// request on the same connection cannot name another host.
pub(crate) async fn serve_fixed(shared: &Arc<Shared>, stream: TcpStream, name: &str, port: u16) {
    let service = {
        let shared = Arc::clone(shared);
        let name = name.to_owned();
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let name = name.clone();
            async move { Ok::<_, Infallible>(forward::forward_fixed(&shared, request, &name, port).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.head_timeout)
        .max_header_size(shared.limits.max_request_head)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        // These clients connected to an address inside the sandbox, so they are the command's.
        record_connection_error(shared, &error, true);
    }
}

/// Records the malformed requests hyper rejected itself (with 400 or 431), and logs other
/// connection errors at debug level.
///
/// A malformed request on a connection that has not presented the proxy's credential
/// (`authenticated` is false) may come from any local process. It is therefore counted as a
/// failed authentication, not recorded as a denial.
fn record_connection_error(shared: &Shared, error: &hyper::Error, authenticated: bool) {
    let reason = if error.is_parse_too_large() {
        format!(
            "the request head is larger than {} bytes or has more than {MAX_HEADERS} header fields",
            shared.limits.max_request_head
        )
    } else if error.is_parse() {
        format!("the request is not valid HTTP/1.1 ({error})")
    } else if error.is_timeout() {
        debug!("closed a connection that sent no complete request head within {:?}", shared.limits.head_timeout);
        return;
    } else {
        debug!(%error, "HTTP connection ended with an error");
        return;
    };
    if authenticated {
        shared.refuse("", 0, Protocol::Http, None, reason);
    } else {
        shared.reject_unauthenticated(Protocol::Http, &AuthFailure::MalformedRequest(reason));
    }
}

async fn handle(
    shared: Arc<Shared>,
    tunnel: TunnelSlot,
    authenticated: Arc<AtomicBool>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let protocol = if request.method() == Method::CONNECT { Protocol::Connect } else { Protocol::Http };
    // The credential is checked before anything else, so that a client without it learns
    // nothing about the rules and causes no lookup, connection or denial.
    if let Some(credential) = &shared.credential {
        if let Err(failure) = credential.check_proxy_authorization(request.headers()) {
            shared.reject_unauthenticated(protocol, &failure);
            return Ok(authentication_required());
        }
        authenticated.store(true, Ordering::Relaxed);
    }

    let response = if protocol == Protocol::Connect {
        connect(&shared, &tunnel, request).await
    } else {
        forward::forward(&shared, request).await
    };
    Ok(response)
}

/// Handles `CONNECT host:port`: connects to an allowed address, leaves the tunnel in `tunnel`
/// and returns 200, or returns the refusal or failure.
async fn connect(shared: &Shared, tunnel: &TunnelSlot, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let uri = request.uri();
    // CONNECT takes only the authority form, host:port, with no scheme and no path.
    let authority = match uri.authority() {
        Some(authority) if uri.scheme().is_none() && uri.path_and_query().is_none() => authority.as_str().to_owned(),
        _ => {
            let target = uri.to_string();
            let reason = format!("CONNECT needs a host and port such as example.com:443, not '{target}'");
            return rejection(&shared.refuse(&target, 0, Protocol::Connect, None, reason));
        }
    };
    let (host, port) = match split_authority(&authority, None) {
        Ok(parts) => parts,
        Err(reason) => {
            let reason = format!("invalid CONNECT target '{authority}': {reason}");
            return rejection(&shared.refuse(&authority, 0, Protocol::Connect, None, reason));
        }
    };

    match shared.dial(host, port, Protocol::Connect).await {
        Ok(upstream) => {
            let on_upgrade = hyper::upgrade::on(&mut request);
            let mut slot = tunnel.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *slot = Some(Tunnel { on_upgrade, upstream: upstream.stream, host: host.to_owned(), port });
            let mut response = Response::new(Empty::new().map_err(never).boxed());
            response.extensions_mut().insert(ReasonPhrase::from_static(b"Connection Established"));
            response
        }
        Err(error) => dial_failure(host, port, &error),
    }
}

/// Returns the response to a request that [`Shared::dial`] did not connect.
fn dial_failure(host: &str, port: u16, error: &DialError) -> Response<ProxyBody> {
    match error {
        DialError::InvalidHost(denial) => rejection(denial),
        DialError::Denied(denial) => denied(host, port, denial),
        DialError::Resolve { .. } | DialError::Connect { .. } => {
            text_response(StatusCode::BAD_GATEWAY, format!("palisade proxy: {error}\n"), false)
        }
    }
}

/// Returns 403 for a request the rules deny, saying what was blocked, why, and how to allow it.
fn denied(host: &str, port: u16, denial: &Denial) -> Response<ProxyBody> {
    let mut text = format!("palisade blocked {host}:{port}: {}\n", denial.reason);
    if let Some(rule) = &denial.rule {
        text.push_str(&format!(
            "Deny entries win over allow entries, so remove '{rule}' from [network] deny to allow it.\n"
        ));
    }
    text_response(StatusCode::FORBIDDEN, text, true)
}

/// Returns 407 for a request without the proxy's credential, and closes the connection after it.
/// A client that has the credential sends it with its first request, so it needs no second
/// chance on the same connection.
fn authentication_required() -> Response<ProxyBody> {
    let mut response =
        text_response(StatusCode::PROXY_AUTHENTICATION_REQUIRED, AUTHENTICATION_REQUIRED_TEXT.to_owned(), false);
    let headers = response.headers_mut();
    headers.insert(PROXY_AUTHENTICATE, HeaderValue::from_static(AUTHENTICATE_CHALLENGE));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Returns 400 for a malformed request the proxy refused.
fn rejection(denial: &Denial) -> Response<ProxyBody> {
    text_response(StatusCode::BAD_REQUEST, format!("palisade proxy: {}\n", denial.reason), true)
}

fn text_response(status: StatusCode, text: String, is_denial: bool) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(never).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if is_denial {
        headers.insert(DENIED_HEADER, HeaderValue::from_static("1"));
    }
    response
}

fn never(never: Infallible) -> hyper::Error {
    match never {}
}

/// Splits an authority (`host:port`, `[v6]:port`, or a host alone when `default_port` is
/// given) into the host as written, brackets kept, and the port.
///
/// User info (`user@`) is rejected. RFC 7230 section 2.7.1 recommends treating it as an error,
/// because `http://allowed.test@other.test/` is a known way to make one reader see a different
/// host than another.
fn split_authority(authority: &str, default_port: Option<u16>) -> Result<(&str, u16), String> {
    if authority.contains('@') {
        return Err("user info ('user@') is not allowed".into());
    }
    let (host, port) = if authority.starts_with('[') {
        let Some(end) = authority.find(']') else {
            return Err("'[' has no closing ']'".into());
        };
        let after = &authority[end + 1..];
        match after.strip_prefix(':') {
            Some(port) => (&authority[..=end], Some(port)),
            None if after.is_empty() => (&authority[..=end], None),
            None => return Err(format!("unexpected '{after}' after ']', where only a port such as :443 may follow")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("an IPv6 address must be in brackets, as in [::1]:443".into());
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = match (port, default_port) {
        (Some(text), _) if !text.is_empty() => parse_port(text)?,
        (_, Some(default)) => default,
        (_, None) => return Err("the port is missing".into()),
    };
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    let is_digits = text.bytes().all(|byte| byte.is_ascii_digit());
    match text.parse::<u16>() {
        Ok(port) if is_digits && port != 0 => Ok(port),
        _ => Err(format!("port '{text}' is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_splits_names_and_addresses() {
        let cases = [
            ("example.com:443", None, ("example.com", 443)),
            ("example.com", Some(80), ("example.com", 80)),
            ("example.com:", Some(80), ("example.com", 80)),
            ("127.1:8080", None, ("127.1", 8080)),
            ("[::1]:8080", None, ("[::1]", 8080)),
            ("[::1]", Some(80), ("[::1]", 80)),
            ("0x7f000001:1", None, ("0x7f000001", 1)),
        ];
        for (authority, default_port, expected) in cases {
            assert_eq!(split_authority(authority, default_port), Ok(expected), "{authority}");
        }
    }

    #[test]
    fn authority_rejects_malformed_input() {
        let cases = [
            ("example.com", None, "port is missing"),
            ("example.com:", None, "port is missing"),
            (":443", None, "host is missing"),
            ("example.com:0", None, "not a number from 1 to 65535"),
            ("example.com:65536", None, "not a number from 1 to 65535"),
            ("example.com:+443", None, "not a number from 1 to 65535"),
            ("user@example.com:443", None, "user info"),
            ("allowed.test@blocked.test", Some(80), "user info"),
            ("::1:443", None, "must be in brackets"),
            ("[::1:443", None, "no closing ']'"),
            ("[::1]x", Some(80), "unexpected 'x' after ']'"),
        ];
        for (authority, default_port, expected) in cases {
            let error = split_authority(authority, default_port).unwrap_err();
            assert!(error.contains(expected), "{authority}: {error}");
        }
    }
}
