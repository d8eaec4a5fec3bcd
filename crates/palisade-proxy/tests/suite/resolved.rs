//! Connections a client opened to an allowlisted name directly (`Proxy::serve_resolved`), as
//! the Linux backend hands them over with `--resolve-allowed`: they get the proxy's checks of
//! the TLS server name and of every HTTP request's `Host` header.

use std::sync::Arc;

use palisade_proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server_name::client_hello;
use super::support::*;

/// Listens where the sandbox would reach `allowed.test`, and serves each connection with
/// `serve_resolved` for `allowed.test` and `port`.
async fn resolved_listener(proxy: Arc<Proxy>, port: u16) -> std::net::SocketAddr {
    let listener = TcpListener::bind((LOOPBACK_V4, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { proxy.serve_resolved(client, "allowed.test", port).await });
        }
    });
    addr
}

fn allowed_rules(port: u16) -> palisade_policy::network::Rules {
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    rules(&allow.each_ref().map(String::as_str), &[])
}

async fn request(addr: std::net::SocketAddr, text: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    response
}

#[tokio::test]
async fn resolved_http_with_its_host_is_forwarded() {
    let server = HttpServer::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let proxy = Arc::new(Proxy::new(allowed_rules(port), resolver));
    let addr = resolved_listener(Arc::clone(&proxy), port).await;

    let response = request(addr, &format!("GET /file HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].request_line(), "GET /file HTTP/1.1");
    assert!(proxy.denials().is_empty(), "{:?}", proxy.denials());
}

#[tokio::test]
async fn resolved_http_naming_another_host_is_refused() {
    let server = HttpServer::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let proxy = Arc::new(Proxy::new(allowed_rules(port), resolver));
    let addr = resolved_listener(Arc::clone(&proxy), port).await;

    for head in [
        "GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n".to_owned(),
        format!("GET http://blocked.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"),
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
    ] {
        let response = request(addr, &head).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{head:?} got {response}");
    }
    // Palisade connects to the allowed server before the client's first bytes show the
    // protocol, so the server accepts connections, but receives no request.
    assert!(server.requests().is_empty(), "a refused request reached the upstream server: {:?}", server.requests());
    let denials = proxy.denials();
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert!(denials.iter().all(|denial| denial.protocol == "tcp" && denial.destination == "allowed.test"), "{denials:?}");
}

/// A later request on a kept-alive connection is checked too, not only the first.
#[tokio::test]
async fn resolved_http_checks_every_request() {
    let server = HttpServer::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let proxy = Arc::new(Proxy::new(allowed_rules(port), resolver));
    let addr = resolved_listener(Arc::clone(&proxy), port).await;

    let both = format!(
        "GET /first HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\nGET /second HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n"
    );
    let response = request(addr, &both).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("HTTP/1.1 400"), "the second request was not refused: {response}");
    let lines: Vec<String> = server.requests().iter().map(|request| request.request_line().to_owned()).collect();
    assert_eq!(lines, ["GET /first HTTP/1.1"]);
    assert_eq!(proxy.denials().len(), 1);
}

#[tokio::test]
async fn resolved_tls_with_another_server_name_is_closed() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let proxy = Arc::new(Proxy::new(allowed_rules(port), resolver));
    let addr = resolved_listener(Arc::clone(&proxy), port).await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&client_hello("blocked.test")).await.unwrap();
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "the upstream received the ClientHello: {rest:?}");
    let denials = proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].protocol, "tcp");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hello = client_hello("allowed.test");
    stream.write_all(&hello).await.unwrap();
    let mut echoed = vec![0u8; hello.len()];
    within(stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(echoed, hello);
}

#[tokio::test]
async fn resolved_name_not_allowed_is_recorded() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    // The name resolves to an address no entry allows.
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let proxy = Arc::new(Proxy::new(rules(&[&format!("allowed.test:{port}")], &[]), resolver));
    let addr = resolved_listener(Arc::clone(&proxy), port).await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(echo.accepted(), 0);
    let denials = proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].protocol, "tcp");
}
