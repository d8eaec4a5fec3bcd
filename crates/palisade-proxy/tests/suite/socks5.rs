//! SOCKS5: domain names, IPv4 and IPv6 addresses, decided like CONNECT, with the reply codes
//! of RFC 1928.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

const SUCCEEDED: u8 = 0x00;
const GENERAL_FAILURE: u8 = 0x01;
const NOT_ALLOWED_BY_RULESET: u8 = 0x02;
const HOST_UNREACHABLE: u8 = 0x04;
const CONNECTION_REFUSED: u8 = 0x05;
const COMMAND_NOT_SUPPORTED: u8 = 0x07;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

const CONNECT: u8 = 0x01;
const BIND: u8 = 0x02;

/// The destination of a SOCKS5 request, as the client encodes it.
enum Address<'a> {
    Domain(&'a str),
    Ip(IpAddr),
}

/// Encodes a request for `command` to `address` and `port`.
fn request(command: u8, address: &Address<'_>, port: u16) -> Vec<u8> {
    let mut message = vec![0x05, command, 0x00];
    match address {
        Address::Domain(name) => {
            message.push(0x03);
            message.push(u8::try_from(name.len()).unwrap());
            message.extend_from_slice(name.as_bytes());
        }
        Address::Ip(IpAddr::V4(addr)) => {
            message.push(0x01);
            message.extend_from_slice(&addr.octets());
        }
        Address::Ip(IpAddr::V6(addr)) => {
            message.push(0x04);
            message.extend_from_slice(&addr.octets());
        }
    }
    message.extend_from_slice(&port.to_be_bytes());
    message
}

/// Negotiates "no authentication", sends `request` and returns the reply code, the bound
/// address and the connection.
async fn socks_request(proxy: SocketAddr, request: &[u8]) -> (u8, SocketAddr, TcpStream) {
    let mut stream = within(TcpStream::connect(proxy)).await.unwrap();
    within(stream.write_all(&[0x05, 0x01, 0x00])).await.unwrap();
    let mut method = [0u8; 2];
    within(stream.read_exact(&mut method)).await.unwrap();
    assert_eq!(method, [0x05, 0x00], "the proxy did not accept 'no authentication'");

    within(stream.write_all(request)).await.unwrap();
    let mut head = [0u8; 4];
    within(stream.read_exact(&mut head)).await.unwrap();
    assert_eq!([head[0], head[2]], [0x05, 0x00], "reply header {head:?}");
    let ip = match head[3] {
        0x01 => {
            let mut octets = [0u8; 4];
            within(stream.read_exact(&mut octets)).await.unwrap();
            IpAddr::from(octets)
        }
        0x04 => {
            let mut octets = [0u8; 16];
            within(stream.read_exact(&mut octets)).await.unwrap();
            IpAddr::from(octets)
        }
        other => panic!("unexpected address type {other} in the reply"),
    };
    let mut port = [0u8; 2];
    within(stream.read_exact(&mut port)).await.unwrap();
    (head[1], SocketAddr::new(ip, u16::from_be_bytes(port)), stream)
}

async fn socks_connect(proxy: SocketAddr, address: Address<'_>, port: u16) -> (u8, SocketAddr, TcpStream) {
    socks_request(proxy, &request(CONNECT, &address, port)).await
}

#[tokio::test]
async fn socks5_domain_allowed_carries_bytes() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver.clone()).await;

    let (reply, bound, mut tunnel) = socks_connect(proxy.addr, Address::Domain("allowed.test"), port).await;
    assert_eq!(reply, SUCCEEDED);
    // The proxy's end of the upstream connection is a host address, which the reply hides.
    assert!(bound.ip().is_unspecified(), "the reply gave away {bound}");
    assert_eq!(bound.port(), 0);
    assert_echoes(&mut tunnel, b"socks ping").await;
    assert_eq!(resolver.lookups("allowed.test"), 1);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn socks5_ipv4_allowed_by_ip_entry() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (reply, _, mut tunnel) = socks_connect(proxy.addr, Address::Ip(LOOPBACK_V4), port).await;
    assert_eq!(reply, SUCCEEDED);
    assert_echoes(&mut tunnel, b"ipv4").await;
}

#[tokio::test]
async fn socks5_ipv6_allowed_by_ip_entry() {
    if !has_ipv6_loopback().await {
        return;
    }
    let echo = EchoServer::start(LOOPBACK_V6).await;
    let port = echo.port();
    let allow = format!("[::1]:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (reply, bound, mut tunnel) = socks_connect(proxy.addr, Address::Ip(LOOPBACK_V6), port).await;
    assert_eq!(reply, SUCCEEDED);
    assert!(bound.ip().is_unspecified(), "the reply gave away {bound}");
    assert_echoes(&mut tunnel, b"ipv6").await;
}

#[tokio::test]
async fn socks5_refusals_reply_not_allowed_by_ruleset() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let proxy = RunningProxy::start(rules(&["allowed.test", "*.allowed.test"], &["deny.allowed.test"]), resolver).await;

    let cases = [
        (Address::Domain("blocked.test"), "blocked.test", None),
        (Address::Domain("allowed.test"), "allowed.test", None),
        (Address::Domain("deny.allowed.test"), "deny.allowed.test", Some("deny.allowed.test")),
        (Address::Domain("127.1"), "127.1", None),
        (Address::Ip(LOOPBACK_V4), "127.0.0.1", None),
        (Address::Ip(LOOPBACK_V6), "::1", None),
    ];
    for (address, _, _) in &cases {
        let (reply, bound, _) = socks_request(proxy.addr, &request(CONNECT, address, port)).await;
        assert_eq!(reply, NOT_ALLOWED_BY_RULESET);
        assert_eq!(bound, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    }
    assert_eq!(echo.accepted(), 0);

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), cases.len());
    for (denial, (_, destination, rule)) in denials.iter().zip(&cases) {
        assert_eq!(denial.destination, *destination);
        assert_eq!(denial.port, port, "{destination}");
        assert_eq!(denial.protocol, "socks5", "{destination}");
        assert_eq!(denial.rule.as_deref(), *rule, "{destination}");
    }
    assert!(denials[1].reason.contains("allowed.test resolved to 127.0.0.1, a loopback address"), "{:?}", denials[1]);
}

#[tokio::test]
async fn socks5_bind_gets_command_not_supported() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    let (reply, _, _) = socks_request(proxy.addr, &request(BIND, &Address::Domain("allowed.test"), 443)).await;
    assert_eq!(reply, COMMAND_NOT_SUPPORTED);
    let denial = &proxy.proxy.denials()[0];
    assert_eq!((denial.destination.as_str(), denial.port, denial.protocol), ("allowed.test", 443, "socks5"));
    assert!(denial.reason.contains("BIND (0x02) is not supported"), "{denial:?}");
}

#[tokio::test]
async fn socks5_unknown_address_type_is_refused() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    let (reply, _, _) = socks_request(proxy.addr, &[0x05, CONNECT, 0x00, 0x05]).await;
    assert_eq!(reply, ADDRESS_TYPE_NOT_SUPPORTED);
    assert!(proxy.proxy.denials()[0].reason.contains("address type 0x05"));
}

#[tokio::test]
async fn socks5_invalid_name_is_a_general_failure() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    let (reply, _, _) = socks_connect(proxy.addr, Address::Domain("bad name.test"), 443).await;
    assert_eq!(reply, GENERAL_FAILURE);
    let denial = &proxy.proxy.denials()[0];
    assert_eq!(denial.destination, "bad name.test");
    assert!(denial.reason.contains("not a valid host name or IP address"), "{denial:?}");
}

#[tokio::test]
async fn socks5_resolution_failure_is_host_unreachable() {
    let proxy = RunningProxy::start(rules(&["unknown.test"], &[]), StubResolver::new(&[])).await;

    let (reply, _, _) = socks_connect(proxy.addr, Address::Domain("unknown.test"), 443).await;
    assert_eq!(reply, HOST_UNREACHABLE);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn socks5_connect_failure_is_connection_refused() {
    let refusing = refusing_socket(LOOPBACK_V4, 0).expect("failed to bind a port on 127.0.0.1");
    let port = refusing.local_addr().unwrap().port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (reply, _, _) = socks_connect(proxy.addr, Address::Ip(LOOPBACK_V4), port).await;
    assert_eq!(reply, CONNECTION_REFUSED);
}

#[tokio::test]
async fn socks5_without_no_authentication_method_is_refused() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    let mut stream = within(TcpStream::connect(proxy.addr)).await.unwrap();
    // Offers username/password (0x02) only.
    within(stream.write_all(&[0x05, 0x01, 0x02])).await.unwrap();
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, [0x05, 0xff]);

    let denial = &proxy.proxy.denials()[0];
    assert_eq!(denial.protocol, "socks5");
    assert!(denial.reason.contains("only 'no authentication'"), "{denial:?}");
}

#[tokio::test]
async fn socks5_other_server_name_closes_the_tunnel() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;

    let (reply, _, mut tunnel) = socks_connect(proxy.addr, Address::Domain("allowed.test"), port).await;
    assert_eq!(reply, SUCCEEDED);
    tunnel.write_all(&super::server_name::client_hello("blocked.test")).await.unwrap();
    let mut rest = Vec::new();
    within(tunnel.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "the upstream received the ClientHello: {rest:?}");
    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].protocol, "socks5");
}
