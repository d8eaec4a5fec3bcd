//! Plain HTTP through the proxy: a request with an absolute URI (`GET http://host/path`) is
//! checked like a CONNECT to its host and port, then sent to the checked address in origin
//! form, and the response is streamed back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use palisade_policy::network::parse_target;
use tokio::net::TcpStream;
use tracing::debug;

use super::{ProxyBody, dial_failure, rejection, split_authority, text_response};
use crate::dial::Protocol;
use crate::proxy::Shared;

const HTTP_PORT: u16 = 80;

/// Headers that describe one connection rather than the message (RFC 9110, Connection), plus
/// the non-standard `Proxy-Connection` and `Keep-Alive` that clients still send. The proxy
/// removes them, and every header a `Connection` header names, before passing a message on.
/// `Transfer-Encoding` goes too, because hyper frames each side's body itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

const ORIGIN_FORM_REASON: &str = "palisade is an HTTP proxy, so a request must name its destination: an absolute URI \
     such as 'GET http://example.com/ HTTP/1.1', or 'CONNECT example.com:443' for HTTPS";
const HTTPS_REASON: &str = "https:// URIs are not forwarded, because the proxy does not speak TLS to servers; \
     send 'CONNECT host:443' and speak TLS inside the tunnel, as clients do when HTTPS_PROXY is set";

/// The hyper client connection that carries one forwarded request.
type UpstreamConnection = client::Connection<TokioIo<TcpStream>, Incoming>;

/// A request the proxy refuses before dialling, with the destination it names, if any.
struct Rejection {
    host: String,
    port: u16,
    reason: String,
}

/// The destination of an `http://` absolute URI.
struct Destination {
    /// The authority as written in the URI, which becomes the forwarded `Host` header.
    authority: String,
    /// The host part of `authority`, with brackets around an IPv6 address.
    host: String,
    port: u16,
}

/// Handles a request other than CONNECT: forwards an `http://` absolute URI, refuses the rest.
pub(super) async fn forward(shared: &Shared, request: Request<Incoming>) -> Response<ProxyBody> {
    let Destination { authority, host, port } = match destination(&request) {
        Ok(destination) => destination,
        Err(Rejection { host, port, reason }) => {
            return rejection(&shared.refuse(&host, port, Protocol::Http, None, reason));
        }
    };

    let upstream = match shared.dial(&host, port, Protocol::Http).await {
        Ok(upstream) => upstream,
        Err(error) => return dial_failure(&host, port, &error),
    };
    debug!(method = %request.method(), %authority, addr = %upstream.addr, "forwarding");
    match exchange(upstream.stream, to_origin_form(request, &authority)).await {
        Ok(response) => response,
        Err(message) => {
            text_response(StatusCode::BAD_GATEWAY, format!("palisade proxy: {authority}: {message}\n"), false)
        }
    }
}

/// Handles a request sent to `name` and `port` directly (see [`super::serve_fixed`]): refuses
/// CONNECT, absolute URIs and a `Host` header that names another destination, then forwards it
/// to `name` and `port` like a proxy request. Refusals are recorded with the protocol `"tcp"`.
pub(super) async fn forward_fixed(shared: &Shared, request: Request<Incoming>, name: &str, port: u16) -> Response<ProxyBody> {
    let refuse = |reason: String| rejection(&shared.refuse(name, port, Protocol::Tcp, None, reason));
    if request.method() == Method::CONNECT || request.uri().authority().is_some() {
        return refuse(format!(
            "a request sent to {name}:{port} directly must name a path such as 'GET / HTTP/1.1', not another destination"
        ));
    }
    let mut host_headers = request.headers().get_all(HOST).iter();
    let Some(value) = host_headers.next() else {
        return refuse(format!("a request sent to {name}:{port} directly needs a Host header naming {name}"));
    };
    if host_headers.next().is_some() {
        return refuse("the request has more than one Host header".into());
    }
    let Ok(text) = value.to_str() else {
        return refuse("the Host header is not ASCII text".into());
    };
    // The connection fixes the port, so a header without one names the same destination.
    let (header_host, header_port) = match split_authority(text, Some(port)) {
        Ok(parts) => parts,
        Err(reason) => return refuse(format!("the Host header '{text}' is invalid: {reason}")),
    };
    if header_port != port || !is_same_host(header_host, name) {
        return refuse(format!(
            "the Host header names {text}, but the connection is to {name}:{port}, and palisade forwards a request only when both name the same destination"
        ));
    }

    let authority = if port == HTTP_PORT { name.to_owned() } else { format!("{name}:{port}") };
    let upstream = match shared.dial(name, port, Protocol::Tcp).await {
        Ok(upstream) => upstream,
        Err(error) => return dial_failure(name, port, &error),
    };
    debug!(method = %request.method(), %authority, addr = %upstream.addr, "forwarding a request sent directly");
    match exchange(upstream.stream, to_origin_form(request, &authority)).await {
        Ok(response) => response,
        Err(message) => {
            text_response(StatusCode::BAD_GATEWAY, format!("palisade proxy: {authority}: {message}\n"), false)
        }
    }
}

/// Returns the destination of an `http://` absolute URI, after checking that a `Host` header,
/// if any, names the same one.
fn destination(request: &Request<Incoming>) -> Result<Destination, Rejection> {
    let uri = request.uri();
    let Some(scheme) = uri.scheme_str() else {
        let (host, port) = host_header(request.headers()).unwrap_or_default();
        return Err(Rejection { host, port, reason: ORIGIN_FORM_REASON.into() });
    };
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    if !scheme.eq_ignore_ascii_case("http") {
        let is_https = scheme.eq_ignore_ascii_case("https");
        let reason = if is_https {
            HTTPS_REASON.to_owned()
        } else {
            format!("the URI scheme '{scheme}' is not supported, only http:// (and CONNECT for other protocols)")
        };
        // The port recorded for the denial; 0 where the scheme's default port is unknown.
        let default_port = if is_https { 443 } else { 0 };
        let (host, port) = split_authority(authority, Some(default_port)).unwrap_or((authority, 0));
        return Err(Rejection { host: host.to_owned(), port, reason });
    }

    let (host, port) = split_authority(authority, Some(HTTP_PORT)).map_err(|reason| Rejection {
        host: authority.to_owned(),
        port: 0,
        reason: format!("invalid host in the URI '{uri}': {reason}"),
    })?;
    let reject = |reason: String| Rejection { host: host.to_owned(), port, reason };
    let mut host_headers = request.headers().get_all(HOST).iter();
    if let Some(value) = host_headers.next() {
        if host_headers.next().is_some() {
            return Err(reject("the request has more than one Host header".into()));
        }
        check_host_header(value, host, port).map_err(reject)?;
    }
    Ok(Destination { authority: authority.to_owned(), host: host.to_owned(), port })
}

/// Returns the host and port a `Host` header names, for the denial of an origin-form request.
fn host_header(headers: &HeaderMap) -> Option<(String, u16)> {
    let text = headers.get(HOST)?.to_str().ok()?;
    let (host, port) = split_authority(text, Some(HTTP_PORT)).ok()?;
    Some((host.to_owned(), port))
}

/// Accepts a `Host` header only if it names the destination of the URI. A server that reads
/// the header instead of the URI would otherwise serve a host the rules never checked.
fn check_host_header(value: &HeaderValue, host: &str, port: u16) -> Result<(), String> {
    let Ok(text) = value.to_str() else {
        return Err("the Host header is not ASCII text".into());
    };
    let (header_host, header_port) = split_authority(text, Some(HTTP_PORT))
        .map_err(|reason| format!("the Host header '{text}' is invalid: {reason}"))?;
    if header_port == port && is_same_host(header_host, host) {
        return Ok(());
    }
    Err(format!(
        "the Host header names {text}, but the request is for {host}:{port}, and palisade forwards a request only \
         when both name the same destination"
    ))
}

/// Compares two hosts as the rules read them, so `Example.COM.` and `example.com`, or `127.1`
/// and `127.0.0.1`, are the same. Hosts that are not valid are compared as written.
fn is_same_host(a: &str, b: &str) -> bool {
    match (parse_target(a), parse_target(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Rewrites a proxy request for the origin server: origin-form target, HTTP/1.1, no hop-by-hop
/// headers, and a `Host` header with the authority that was checked.
fn to_origin_form(request: Request<Incoming>, authority: &str) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    let mut uri_parts = hyper::http::uri::Parts::default();
    uri_parts.path_and_query = Some(match parts.uri.path_and_query() {
        Some(path_and_query) if !path_and_query.as_str().is_empty() => path_and_query.clone(),
        _ => hyper::http::uri::PathAndQuery::from_static("/"),
    });
    parts.uri = Uri::from_parts(uri_parts).expect("a path and query alone form a valid URI");
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    let host = HeaderValue::from_str(authority).expect("the authority of a parsed URI is a valid header value");
    parts.headers.insert(HOST, host);
    Request::from_parts(parts, body)
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named_by_connection.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Sends `request` on `stream` and returns the response, whose body streams from the upstream
/// server as the client reads it. Errors are messages for a 502 response.
async fn exchange(stream: TcpStream, request: Request<Incoming>) -> Result<Response<ProxyBody>, String> {
    let (mut sender, connection) =
        client::handshake(TokioIo::new(stream)).await.map_err(|error| format!("HTTP handshake failed: {error}"))?;
    // The connection future does the reading and writing, so it must be polled while the
    // request is sent and then while the response body is read. Polling it here, and then
    // from the body, keeps all of it inside the client's connection task.
    let mut connection: Option<Pin<Box<UpstreamConnection>>> = Some(Box::pin(connection));
    let sending = sender.send_request(request);
    tokio::pin!(sending);
    let response = tokio::select! {
        // A response that has arrived wins over the end of the connection that carried it.
        biased;
        response = &mut sending => response,
        ended = connection.as_mut().expect("the connection was just created") => {
            connection = None;
            match ended {
                // The server closed after its response, which is then already queued.
                Ok(()) => sending.await,
                Err(error) => return Err(format!("the upstream connection failed: {error}")),
            }
        }
    };
    let response = response.map_err(|error| format!("the request failed: {error}"))?;
    // Without a sender the connection closes once this response is read, instead of waiting
    // for another request that never comes.
    drop(sender);

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the upstream server switched protocols, which the proxy supports only through CONNECT".into());
    }
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let body = UpstreamBody { body, connection };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// An upstream response body that also drives the upstream connection it arrives on.
struct UpstreamBody {
    body: Incoming,
    /// `None` once the connection has finished.
    connection: Option<Pin<Box<UpstreamConnection>>>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(connection) = &mut this.connection {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                if let Err(error) = result {
                    // The body reports the same failure to hyper, which closes the client
                    // connection.
                    debug!(%error, "upstream connection failed");
                }
                this.connection = None;
            }
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Hop"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "X-Checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("x-end-to-end", "1"),
            ("content-length", "5"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-end-to-end"]);
    }

    #[test]
    fn host_header_must_match_the_uri() {
        let matching = [
            ("allowed.test", "allowed.test", 80),
            ("allowed.test:80", "allowed.test", 80),
            ("ALLOWED.test.", "allowed.test", 80),
            ("allowed.test:8080", "allowed.test", 8080),
            ("127.1:8080", "127.0.0.1", 8080),
            ("[::1]:8080", "[::1]", 8080),
        ];
        for (header, host, port) in matching {
            let value = HeaderValue::from_static(header);
            assert_eq!(check_host_header(&value, host, port), Ok(()), "{header}");
        }

        let different = [
            ("blocked.test", "allowed.test", 80),
            ("allowed.test:8080", "allowed.test", 80),
            ("allowed.test", "allowed.test", 8080),
            ("sub.allowed.test", "allowed.test", 80),
            ("127.0.0.2", "127.0.0.1", 80),
        ];
        for (header, host, port) in different {
            let error = check_host_header(&HeaderValue::from_static(header), host, port).unwrap_err();
            assert!(error.contains("the same destination"), "{header}: {error}");
        }
    }
}
