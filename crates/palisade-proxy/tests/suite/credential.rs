//! The per-run credential: with one, HTTP requests need `Proxy-Authorization: Basic` and SOCKS5
//! clients the username/password method, and a client without it reaches nothing.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use palisade_proxy::{Credential, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

const OK_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// Time a test waits for the proxy to close a connection it rejected.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Starts a proxy with a fresh credential that allows `allowed.test` and `127.0.0.1` on `port`.
/// `allowed.test` resolves to 127.0.0.1 and `blocked.test` is on the stub resolver too, so a
/// test can count the lookups of both.
async fn proxy_with_credential(port: u16) -> (RunningProxy, Credential, std::sync::Arc<StubResolver>) {
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let credential = Credential::generate().unwrap();
    let proxy = Proxy::new(rules(&allow.each_ref().map(String::as_str), &[]), resolver.clone())
        .with_credential(credential.clone());
    (RunningProxy::serve(proxy).await, credential, resolver)
}

/// Returns a `Proxy-Authorization` header line for `user` and `password`, with its CRLF.
fn basic_header(user: &str, password: &str) -> String {
    format!("Proxy-Authorization: Basic {}\r\n", BASE64.encode(format!("{user}:{password}")))
}

/// Returns the header lines that clients without the right credential send, each with a label
/// for assertion messages: none, a wrong token, a wrong user, other schemes, bad base64, and the
/// right header next to a wrong one.
fn wrong_headers(credential: &Credential) -> Vec<(&'static str, String)> {
    let token = credential.token();
    vec![
        ("no header", String::new()),
        ("wrong token", basic_header("palisade", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")),
        ("token prefix", basic_header("palisade", &token[..token.len() - 1])),
        ("wrong user", basic_header("other", token)),
        ("bearer scheme", format!("Proxy-Authorization: Bearer {token}\r\n")),
        ("digest scheme", format!("Proxy-Authorization: Digest username=\"palisade\", response=\"{token}\"\r\n")),
        ("not base64", "Proxy-Authorization: Basic %%%\r\n".to_owned()),
        ("right and wrong", format!("{}{}", basic_header("palisade", token), basic_header("palisade", "wrong"))),
    ]
}

/// Checks that `response` is palisade's 407, which names where the credential is and not the
/// credential itself.
fn assert_authentication_required(response: &TestResponse, credential: &Credential, label: &str) {
    assert_eq!(response.status, 407, "{label}: {}", response.body);
    assert_eq!(response.header("proxy-authenticate"), Some("Basic realm=\"palisade\""), "{label}");
    assert_eq!(response.header("connection"), Some("close"), "{label}");
    assert_eq!(response.header("x-palisade-denied"), None, "{label}: a failed authentication is not a denial");
    assert!(response.body.contains("HTTP_PROXY"), "{label}: {}", response.body);
    assert!(response.body.contains("credential"), "{label}: {}", response.body);
    assert!(!response.body.contains(credential.token()), "{label}: the 407 gives away the token");
}

// ---------------------------------------------------------------------------------------------
// HTTP CONNECT

#[tokio::test]
async fn connect_with_credential_opens_tunnel() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;

    let authorization = basic_header("palisade", credential.token());
    let request = format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n{authorization}\r\n");
    let (response, mut tunnel) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_echoes(&mut tunnel, b"with credential").await;

    assert_eq!(echo.accepted(), 1);
    assert_eq!(proxy.proxy.auth_failures(), 0);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn connect_without_credential_gets_407() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, resolver) = proxy_with_credential(port).await;

    let cases = wrong_headers(&credential);
    for (label, headers) in &cases {
        let request = format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n{headers}\r\n");
        let (response, mut stream) = exchange(proxy.addr, request.as_bytes()).await;
        assert_authentication_required(&response, &credential, label);
        assert!(closes_within(&mut stream, CLOSE_WAIT).await, "{label}: the connection stayed open after the 407");
    }

    // Nothing was resolved or dialled, and no denial was recorded.
    assert_eq!(resolver.lookups("allowed.test"), 0);
    assert_eq!(echo.accepted(), 0);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    assert_eq!(proxy.proxy.auth_failures(), u64::try_from(cases.len()).unwrap());
}

/// A client without the credential learns nothing about the rules: a blocked destination gets
/// the same 407 as an allowed one, and only a client with the credential gets the 403.
#[tokio::test]
async fn credential_is_checked_before_rules() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, resolver) = proxy_with_credential(port).await;

    let (response, _) = connect(proxy.addr, &format!("blocked.test:{port}")).await;
    assert_authentication_required(&response, &credential, "blocked without credential");
    assert!(proxy.proxy.denials().is_empty());

    let authorization = basic_header("palisade", credential.token());
    let request = format!("CONNECT blocked.test:{port} HTTP/1.1\r\nHost: blocked.test:{port}\r\n{authorization}\r\n");
    let (response, _) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(response.status, 403, "{}", response.body);
    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].destination, "blocked.test");

    assert_eq!(resolver.lookups("blocked.test"), 0);
    assert_eq!(echo.accepted(), 0);
    assert_eq!(proxy.proxy.auth_failures(), 1);
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP

/// The credential is for the proxy: the upstream server never receives it, and every request on a
/// kept-alive connection must carry it.
#[tokio::test]
async fn forward_with_credential_hides_it_from_server() {
    let server = HttpServer::start(OK_RESPONSE).await;
    let port = server.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;

    let authorization = basic_header("palisade", credential.token());
    let request = format!("GET http://allowed.test:{port}/first HTTP/1.1\r\nHost: allowed.test:{port}\r\n{authorization}\r\n");
    let (response, mut stream) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "ok");

    // A second request on the same connection without the header is rejected, and the
    // connection closed.
    let request = format!("GET http://allowed.test:{port}/second HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let response = within(read_response(&mut stream)).await.unwrap();
    assert_authentication_required(&response, &credential, "second request");

    let received = server.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].request_line(), "GET /first HTTP/1.1");
    assert!(received[0].header("proxy-authorization").is_empty(), "the credential reached the server: {}", received[0].head);
    assert!(!received[0].head.contains(credential.token()), "the token reached the server: {}", received[0].head);
    assert_eq!(proxy.proxy.auth_failures(), 1);
}

#[tokio::test]
async fn forward_without_credential_gets_407() {
    let server = HttpServer::start(OK_RESPONSE).await;
    let port = server.port();
    let (proxy, credential, resolver) = proxy_with_credential(port).await;

    let cases = wrong_headers(&credential);
    for (label, headers) in &cases {
        let request = format!("POST http://allowed.test:{port}/ HTTP/1.1\r\nContent-Length: 4\r\n{headers}\r\nbody");
        let (response, mut stream) = exchange(proxy.addr, request.as_bytes()).await;
        assert_authentication_required(&response, &credential, label);
        assert!(closes_within(&mut stream, CLOSE_WAIT).await, "{label}: the connection stayed open after the 407");
    }

    assert_eq!(resolver.lookups("allowed.test"), 0);
    assert_eq!(server.accepted(), 0);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    assert_eq!(proxy.proxy.auth_failures(), u64::try_from(cases.len()).unwrap());
}

/// A malformed request is a denial only on a connection that has shown the credential. Before
/// that, any local process may have sent it.
#[tokio::test]
async fn malformed_request_counts_as_denial_after_credential() {
    let server = HttpServer::start(OK_RESPONSE).await;
    let port = server.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;

    let (response, _) = exchange(proxy.addr, b"NOT HTTP\r\n\r\n").await;
    assert_eq!(response.status, 400);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    assert_eq!(proxy.proxy.auth_failures(), 1);

    let authorization = basic_header("palisade", credential.token());
    let request = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n{authorization}\r\n");
    let (response, mut stream) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    within(stream.write_all(b"NOT HTTP\r\n\r\n")).await.unwrap();
    let response = within(read_response(&mut stream)).await.unwrap();
    assert_eq!(response.status, 400);

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].protocol, "http");
    assert!(denials[0].reason.contains("not valid HTTP/1.1"), "{denials:?}");
    assert_eq!(proxy.proxy.auth_failures(), 1);
}

/// Without a credential the proxy serves every client, whatever `Proxy-Authorization` header it
/// sends.
#[tokio::test]
async fn proxy_without_credential_serves_any_client() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    for headers in ["", "Proxy-Authorization: Basic cGFsaXNhZGU6d3Jvbmc=\r\n", "Proxy-Authorization: Bearer x\r\n"] {
        let request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{headers}\r\n");
        let (response, mut tunnel) = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(response.status, 200, "{headers:?}: {}", response.body);
        assert_echoes(&mut tunnel, b"open").await;
    }
    assert_eq!(echo.accepted(), 3);
    assert_eq!(proxy.proxy.auth_failures(), 0);
}

// ---------------------------------------------------------------------------------------------
// SOCKS5

/// Encodes a CONNECT request for 127.0.0.1 and `port`.
fn socks_connect_ipv4(port: u16) -> Vec<u8> {
    let [high, low] = port.to_be_bytes();
    vec![0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, high, low]
}

/// Encodes a username/password request (RFC 1929).
fn password_request(user: &[u8], password: &[u8]) -> Vec<u8> {
    let mut message = vec![0x01, u8::try_from(user.len()).unwrap()];
    message.extend_from_slice(user);
    message.push(u8::try_from(password.len()).unwrap());
    message.extend_from_slice(password);
    message
}

/// Reads until the proxy closes `stream` and returns the bytes read. The proxy closes with
/// bytes of the client still unread, so the close may arrive as a reset.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match within(stream.read(&mut buffer)).await {
            Ok(0) => return received,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("failed to read from the proxy: {error}"),
        }
    }
}

/// Sends `greeting`, checks that the proxy selects username/password, sends `request` and
/// returns the status of the proxy's reply with the connection.
async fn socks_password(proxy: std::net::SocketAddr, greeting: &[u8], request: &[u8]) -> (u8, TcpStream) {
    let mut stream = within(TcpStream::connect(proxy)).await.unwrap();
    within(stream.write_all(greeting)).await.unwrap();
    let mut method = [0u8; 2];
    within(stream.read_exact(&mut method)).await.unwrap();
    assert_eq!(method, [0x05, 0x02], "the proxy did not select username/password");

    within(stream.write_all(request)).await.unwrap();
    let mut status = [0u8; 2];
    within(stream.read_exact(&mut status)).await.unwrap();
    assert_eq!(status[0], 0x01, "status reply {status:?}");
    (status[1], stream)
}

#[tokio::test]
async fn socks5_with_credential_carries_bytes() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;

    // A client that also offers "no authentication" must still get username/password.
    let request = password_request(b"palisade", credential.token().as_bytes());
    let (status, mut stream) = socks_password(proxy.addr, &[0x05, 0x02, 0x00, 0x02], &request).await;
    assert_eq!(status, 0x00);

    within(stream.write_all(&socks_connect_ipv4(port))).await.unwrap();
    let mut reply = [0u8; 10];
    within(stream.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply[1], 0x00, "SOCKS5 reply {reply:?}");
    assert_echoes(&mut stream, b"socks with credential").await;

    assert_eq!(echo.accepted(), 1);
    assert_eq!(proxy.proxy.auth_failures(), 0);
}

#[tokio::test]
async fn socks5_no_authentication_only_gets_ff() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, _, _) = proxy_with_credential(port).await;

    let mut stream = within(TcpStream::connect(proxy.addr)).await.unwrap();
    // A client that follows the method negotiation with its request at once still gets nothing.
    let mut greeting = vec![0x05, 0x01, 0x00];
    greeting.extend_from_slice(&socks_connect_ipv4(port));
    within(stream.write_all(&greeting)).await.unwrap();
    assert_eq!(read_until_closed(&mut stream).await, [0x05, 0xff]);

    assert_eq!(echo.accepted(), 0);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    assert_eq!(proxy.proxy.auth_failures(), 1);
}

#[tokio::test]
async fn socks5_wrong_password_fails_and_closes() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;
    let token = credential.token().as_bytes();

    let cases: [(&str, &[u8], &[u8]); 5] = [
        ("wrong token", b"palisade", b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        ("token prefix", b"palisade", &token[..token.len() - 1]),
        ("wrong user", b"other", token),
        ("empty password", b"palisade", b""),
        ("empty user", b"", token),
    ];
    for (label, user, password) in cases {
        // The CONNECT request follows at once, as an impatient client would send it.
        let mut request = password_request(user, password);
        request.extend_from_slice(&socks_connect_ipv4(port));
        let (status, mut stream) = socks_password(proxy.addr, &[0x05, 0x01, 0x02], &request).await;
        assert_ne!(status, 0x00, "{label}: the proxy accepted the credential");
        let rest = read_until_closed(&mut stream).await;
        assert!(rest.is_empty(), "{label}: the proxy answered the request after the failure: {rest:?}");
    }

    assert_eq!(echo.accepted(), 0);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    assert_eq!(proxy.proxy.auth_failures(), u64::try_from(cases.len()).unwrap());
}

#[tokio::test]
async fn socks5_other_subnegotiation_version_fails() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let (proxy, credential, _) = proxy_with_credential(port).await;

    let mut request = password_request(b"palisade", credential.token().as_bytes());
    request[0] = 0x05;
    let (status, mut stream) = socks_password(proxy.addr, &[0x05, 0x01, 0x02], &request).await;
    assert_ne!(status, 0x00);
    assert!(read_until_closed(&mut stream).await.is_empty());

    assert_eq!(echo.accepted(), 0);
    assert_eq!(proxy.proxy.auth_failures(), 1);
}
