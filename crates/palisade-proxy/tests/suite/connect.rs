//! HTTP CONNECT: tunnels to allowed destinations, 403 for the rest.

use palisade_proxy::Denial;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

#[tokio::test]
async fn connect_allowed_name_carries_bytes_both_ways() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let rules = rules(&allow.each_ref().map(String::as_str), &[]);
    let proxy = RunningProxy::start(rules, resolver.clone()).await;

    let (response, mut tunnel) = connect(proxy.addr, &format!("allowed.test:{port}")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.reason, "Connection Established");
    assert_echoes(&mut tunnel, b"ping").await;
    assert_echoes(&mut tunnel, &[0u8, 0xff, 0x16, 0x03]).await;

    assert_eq!(resolver.lookups("allowed.test"), 1);
    assert_eq!(echo.accepted(), 1);
    assert!(proxy.proxy.denials().is_empty());
}

/// Bytes the client sends right behind the CONNECT head, before it has read the 200, belong to
/// the tunnel (a TLS ClientHello, typically).
#[tokio::test]
async fn connect_passes_bytes_sent_with_the_head() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nearly bytes");
    let (response, mut tunnel) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200);
    let mut echoed = [0u8; 11];
    within(tunnel.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"early bytes");
}

#[tokio::test]
async fn connect_unlisted_name_gets_403_and_a_denial() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let rules = rules(&allow.each_ref().map(String::as_str), &[]);
    let proxy = RunningProxy::start(rules, resolver.clone()).await;

    let (response, _) = connect(proxy.addr, &format!("blocked.test:{port}")).await;
    assert_eq!(response.status, 403);
    assert_eq!(response.header("x-palisade-denied"), Some("1"));
    assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
    let destination = format!("blocked.test:{port}");
    assert!(response.body.starts_with(&format!("palisade blocked {destination}: ")), "{}", response.body);
    assert!(response.body.contains("is not on the allowlist"), "{}", response.body);
    assert!(response.body.contains(&format!("--allow-domain {destination}")), "{}", response.body);
    assert!(response.body.contains("[network] allow"), "{}", response.body);

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1);
    let denial = &denials[0];
    assert_eq!(denial.destination, "blocked.test");
    assert_eq!(denial.port, port);
    assert_eq!(denial.protocol, "connect");
    assert_eq!(denial.rule, None);
    assert!(denial.reason.contains("not on the allowlist"), "{denial:?}");

    // The request was decided on the name, before any lookup or connection.
    assert_eq!(resolver.lookups("blocked.test"), 0);
    assert_eq!(echo.accepted(), 0);
}

/// Every spelling clients accept for 127.0.0.1 (and ::1), requested without an IP entry, is
/// refused, although name entries and a wildcard cover the test names.
#[tokio::test]
async fn connect_loopback_spellings_need_an_ip_entry() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("localhost", &[LOOPBACK_V4, LOOPBACK_V6])]);
    let proxy = RunningProxy::start(rules(&["allowed.test", "*.example.test", "localhost"], &[]), resolver).await;

    let hosts = [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0x7f.1",
        "127.0.0.1.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "localhost",
        "LOCALHOST.",
    ];
    for host in hosts {
        let (response, _) = connect(proxy.addr, &format!("{host}:{port}")).await;
        assert_eq!(response.status, 403, "{host}: {}", response.body);
        assert_eq!(response.header("x-palisade-denied"), Some("1"), "{host}");
    }
    assert_eq!(echo.accepted(), 0);

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), hosts.len());
    assert_eq!(denials[1].destination, "127.1");
    assert!(denials[1].reason.contains("127.0.0.1"), "{:?}", denials[1]);
    assert_eq!(denials[7].destination, "::1");
    assert!(denials[10].reason.contains("loopback"), "{:?}", denials[10]);
}

/// A name on the allowlist whose answer is a loopback address (DNS rebinding) does not reach
/// it without an IP entry for that address and port.
#[tokio::test]
async fn connect_rebinding_name_is_denied() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("rebind.test", &[LOOPBACK_V4])]);
    let proxy = RunningProxy::start(rules(&["rebind.test"], &[]), resolver.clone()).await;

    let (response, _) = connect(proxy.addr, &format!("rebind.test:{port}")).await;
    assert_eq!(response.status, 403);
    assert!(response.body.contains("rebind.test resolved to 127.0.0.1, a loopback address"), "{}", response.body);
    assert!(response.body.contains(&format!("127.0.0.1:{port}")), "{}", response.body);
    assert_eq!(resolver.lookups("rebind.test"), 1);
    assert_eq!(echo.accepted(), 0);

    let denial = &proxy.proxy.denials()[0];
    assert_eq!(denial.destination, "rebind.test");
    assert_eq!(denial.rule, None);
}

#[tokio::test]
async fn connect_deny_entry_wins_over_allow() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[
        ("allowed.example.test", &[LOOPBACK_V4]),
        ("blocked.example.test", &[LOOPBACK_V4]),
    ]);
    let allow = ["*.example.test".to_owned(), format!("127.0.0.1:{port}")];
    let rules = rules(&allow.each_ref().map(String::as_str), &["blocked.example.test"]);
    let proxy = RunningProxy::start(rules, resolver).await;

    let (allowed, _) = connect(proxy.addr, &format!("allowed.example.test:{port}")).await;
    assert_eq!(allowed.status, 200);

    let (response, _) = connect(proxy.addr, &format!("blocked.example.test:{port}")).await;
    assert_eq!(response.status, 403);
    assert!(response.body.contains("matches the deny entry 'blocked.example.test'"), "{}", response.body);
    assert!(response.body.contains("remove 'blocked.example.test' from [network] deny"), "{}", response.body);
    assert_eq!(
        proxy.proxy.denials(),
        [Denial {
            destination: "blocked.example.test".into(),
            port,
            protocol: "connect",
            rule: Some("blocked.example.test".into()),
            reason: format!("blocked.example.test:{port} matches the deny entry 'blocked.example.test'"),
        }]
    );
    assert_eq!(echo.accepted(), 1);
}

/// Of the addresses a name resolves to, the proxy skips those the rules deny and connects to
/// one they allow, without a second lookup.
#[tokio::test]
async fn connect_skips_denied_addresses() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("multi.test", &[LOOPBACK_V6, LOOPBACK_V4])]);
    let allow = [format!("multi.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver.clone()).await;

    let (response, mut tunnel) = connect(proxy.addr, &format!("multi.test:{port}")).await;
    assert_eq!(response.status, 200);
    assert_echoes(&mut tunnel, b"through 127.0.0.1").await;
    assert_eq!(resolver.lookups("multi.test"), 1);
    assert!(proxy.proxy.denials().is_empty());
}

/// When the first allowed address refuses, the proxy tries the next allowed one.
#[tokio::test]
async fn connect_falls_back_to_the_next_allowed_address() {
    if !has_ipv6_loopback().await {
        return;
    }
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let Some(_refusing) = refusing_socket(LOOPBACK_V6, port) else {
        eprintln!("SKIP: port {port} is taken on ::1, so the fallback case is not run");
        return;
    };
    let resolver = StubResolver::new(&[("fallback.test", &[LOOPBACK_V6, LOOPBACK_V4])]);
    let allow = [format!("fallback.test:{port}"), format!("[::1]:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;

    let (response, mut tunnel) = connect(proxy.addr, &format!("fallback.test:{port}")).await;
    assert_eq!(response.status, 200);
    assert_echoes(&mut tunnel, b"second address").await;
}

#[tokio::test]
async fn connect_to_an_allowed_ip_entry() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (response, mut tunnel) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(response.status, 200);
    assert_echoes(&mut tunnel, b"by address").await;

    // The entry names one port; another is not on the list.
    let refusing = refusing_socket(LOOPBACK_V4, 0).expect("failed to bind a port on 127.0.0.1");
    let other_port = refusing.local_addr().unwrap().port();
    let (response, _) = connect(proxy.addr, &format!("127.0.0.1:{other_port}")).await;
    assert_eq!(response.status, 403);
}

#[tokio::test]
async fn connect_resolution_failure_is_502() {
    let proxy = RunningProxy::start(rules(&["unknown.test"], &[]), StubResolver::new(&[])).await;

    let (response, _) = connect(proxy.addr, "unknown.test:443").await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("x-palisade-denied"), None);
    assert!(response.body.contains("failed to resolve unknown.test"), "{}", response.body);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn connect_refused_upstream_is_502() {
    let refusing = refusing_socket(LOOPBACK_V4, 0).expect("failed to bind a port on 127.0.0.1");
    let port = refusing.local_addr().unwrap().port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (response, _) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(response.status, 502);
    assert!(response.body.contains(&format!("failed to connect to 127.0.0.1:{port}")), "{}", response.body);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn connect_malformed_targets_get_400() {
    let proxy = RunningProxy::start(rules(&["allowed.test"], &[]), StubResolver::new(&[])).await;

    let cases = [
        ("allowed.test", "allowed.test", 0, "the port is missing"),
        ("allowed.test:0", "allowed.test:0", 0, "not a number from 1 to 65535"),
        ("user@allowed.test:443", "user@allowed.test:443", 0, "user info"),
        ("http://allowed.test:443/", "http://allowed.test:443/", 0, "CONNECT needs a host and port"),
        ("1.2.3.4.5:443", "1.2.3.4.5", 443, "not a valid host name or IP address"),
        ("under_score.test:443", "under_score.test", 443, "not a valid host name or IP address"),
    ];
    for (target, _, _, expected) in cases {
        let (response, _) = connect(proxy.addr, target).await;
        assert_eq!(response.status, 400, "{target}: {}", response.body);
        assert_eq!(response.header("x-palisade-denied"), Some("1"), "{target}");
        assert!(response.body.contains(expected), "{target}: {}", response.body);
    }

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), cases.len());
    for (denial, (target, destination, port, expected)) in denials.iter().zip(cases) {
        assert_eq!(denial.destination, destination, "{target}");
        assert_eq!(denial.port, port, "{target}");
        assert_eq!(denial.protocol, "connect", "{target}");
        assert!(denial.reason.contains(expected), "{target}: {denial:?}");
    }
}

/// A refused CONNECT leaves the connection usable, as HTTP/1.1 keep-alive allows.
#[tokio::test]
async fn connect_after_refusal_on_one_connection() {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let allow = format!("127.0.0.1:{port}");
    let proxy = RunningProxy::start(rules(&[&allow], &[]), StubResolver::new(&[])).await;

    let (refused, mut stream) = connect(proxy.addr, "blocked.test:443").await;
    assert_eq!(refused.status, 403);
    let request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let response = within(read_response(&mut stream)).await.unwrap();
    assert_eq!(response.status, 200);
    assert_echoes(&mut stream, b"after a refusal").await;
}
