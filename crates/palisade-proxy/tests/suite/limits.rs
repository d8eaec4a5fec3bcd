//! Limits on request heads, idle clients, concurrent connections and shutdown.

use std::time::Duration;

use palisade_proxy::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::support::*;

/// A head of exactly the limit that has not ended yet is larger than the limit. Sending no
/// more than that keeps the proxy from closing with unread bytes, which would reset the
/// connection before the client reads the 431.
#[tokio::test]
async fn oversized_request_head_gets_431() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;
    let max = Limits::default().max_request_head;

    let mut head = b"GET http://allowed.test/ HTTP/1.1\r\nX-Padding: ".to_vec();
    head.resize(max, b'a');
    let (response, mut stream) = exchange(proxy.addr, &head).await;
    assert_eq!(response.status, 431);
    assert!(closes_within(&mut stream, Duration::from_secs(5)).await, "the connection stayed open after 431");

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1);
    assert_eq!((denials[0].destination.as_str(), denials[0].port, denials[0].protocol), ("", 0, "http"));
    assert_eq!(denials[0].reason, format!("the request head is larger than {max} bytes or has more than 100 header fields"));
}

#[tokio::test]
async fn request_head_below_the_limit_is_forwarded() {
    let server = HttpServer::start("HTTP/1.1 204 No Content\r\n\r\n").await;
    let port = server.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let padding = "a".repeat(60 * 1024);
    let request = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nX-Padding: {padding}\r\n\r\n");
    let response = send(proxy.addr, &request).await;
    assert_eq!(response.status, 204);
    assert_eq!(server.requests()[0].header("x-padding"), [padding.as_str()]);
}

#[tokio::test]
async fn malformed_request_gets_400_and_a_denial() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    // A TLS ClientHello sent to the proxy as if it were the server.
    let (response, _) = exchange(proxy.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").await;
    assert_eq!(response.status, 400);
    let denial = &proxy.proxy.denials()[0];
    assert_eq!((denial.destination.as_str(), denial.protocol), ("", "http"));
    assert!(denial.reason.starts_with("the request is not valid HTTP/1.1"), "{denial:?}");
}

fn short_head_timeout() -> Limits {
    Limits { head_timeout: Duration::from_millis(300), ..Limits::default() }
}

#[tokio::test]
async fn silent_client_is_closed_after_head_timeout() {
    let proxy = RunningProxy::start_with_limits(rules(&["allowed.test"], &[]), StubResolver::new(&[]), short_head_timeout()).await;

    let mut silent = within(TcpStream::connect(proxy.addr)).await.unwrap();
    assert!(closes_within(&mut silent, Duration::from_secs(5)).await);
    assert!(proxy.proxy.denials().is_empty(), "an idle client is not a refusal");
}

#[tokio::test]
async fn partial_head_is_closed_after_head_timeout() {
    let proxy = RunningProxy::start_with_limits(rules(&["allowed.test"], &[]), StubResolver::new(&[]), short_head_timeout()).await;

    let mut http = within(TcpStream::connect(proxy.addr)).await.unwrap();
    within(http.write_all(b"GET http://allowed.test/ HTTP/1.1\r\nX-Slow: ")).await.unwrap();
    assert!(closes_within(&mut http, Duration::from_secs(5)).await);

    let mut socks = within(TcpStream::connect(proxy.addr)).await.unwrap();
    within(socks.write_all(&[0x05, 0x01])).await.unwrap();
    assert!(closes_within(&mut socks, Duration::from_secs(5)).await);
}

/// At the connection limit the proxy stops accepting; a waiting client is served once another
/// connection ends.
#[tokio::test]
async fn connection_limit_pauses_accept() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let limits = Limits { max_connections: 1, ..Limits::default() };
    let proxy = RunningProxy::start_with_limits(rules(&[&allow], &[]), StubResolver::new(&[]), limits).await;

    let (first, first_tunnel) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(first.status, 200);

    let mut waiting = within(TcpStream::connect(proxy.addr)).await.unwrap();
    let request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    within(waiting.write_all(request.as_bytes())).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), read_response(&mut waiting)).await;
    assert!(early.is_err(), "a connection past the limit was served: {early:?}");

    drop(first_tunnel);
    let response = within(read_response(&mut waiting)).await.unwrap();
    assert_eq!(response.status, 200);
    assert_echoes(&mut waiting, b"second client").await;
}

#[tokio::test]
async fn shutdown_ends_open_tunnels() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (response, mut tunnel) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(response.status, 200);
    assert_echoes(&mut tunnel, b"before shutdown").await;
    let mut idle = within(TcpStream::connect(proxy.addr)).await.unwrap();

    proxy.stop().await.expect("serve returned an error");
    assert!(closes_within(&mut tunnel, Duration::from_secs(5)).await, "the tunnel stayed open");
    assert!(closes_within(&mut idle, Duration::from_secs(5)).await, "the idle connection stayed open");
}
