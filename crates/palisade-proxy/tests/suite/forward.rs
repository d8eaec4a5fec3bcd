//! Plain HTTP with absolute URIs: forwarded in origin form to allowed destinations only.

use tokio::io::AsyncWriteExt;

use super::support::*;

const OK_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=9\r\nConnection: close\r\n\
                           X-Upstream: yes\r\n\r\nok";

/// Starts an HTTP server and a proxy that allows `allowed.test` and `127.0.0.1` on its port.
async fn allowed_server() -> (HttpServer, RunningProxy) {
    let server = HttpServer::start(OK_RESPONSE).await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;
    (server, proxy)
}

#[tokio::test]
async fn forward_strips_hop_by_hop_headers() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let request = format!(
        "POST http://allowed.test:{port}/path/file?q=1&r=2 HTTP/1.1\r\n\
         Host: allowed.test:{port}\r\n\
         Connection: keep-alive, X-Hop\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         X-Hop: per-connection\r\n\
         X-End-To-End: kept\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 5\r\n\r\nhello"
    );
    let response = send(proxy.addr, &request).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "ok");
    assert_eq!(response.header("x-upstream"), Some("yes"));
    assert_eq!(response.header("keep-alive"), None, "a hop-by-hop response header was passed on");

    let received = server.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.request_line(), "POST /path/file?q=1&r=2 HTTP/1.1");
    assert_eq!(upstream.header("host"), [format!("allowed.test:{port}")]);
    assert_eq!(upstream.header("x-end-to-end"), ["kept"]);
    assert_eq!(upstream.header("content-type"), ["text/plain"]);
    for hop_by_hop in ["connection", "proxy-connection", "proxy-authorization", "keep-alive", "te", "x-hop", "upgrade"] {
        assert!(upstream.header(hop_by_hop).is_empty(), "{hop_by_hop} reached the server: {}", upstream.head);
    }
    assert_eq!(upstream.body, b"hello");
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn forward_adds_host_and_root_path() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let response = send(proxy.addr, &format!("GET http://127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let upstream = &server.requests()[0];
    assert_eq!(upstream.request_line(), "GET / HTTP/1.1");
    assert_eq!(upstream.header("host"), [format!("127.0.0.1:{port}")]);
}

#[tokio::test]
async fn forward_serves_several_requests_on_one_connection() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let request = format!("GET http://allowed.test:{port}/one HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");
    let (first, mut stream) = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(first.status, 200);
    let request = format!("GET http://127.0.0.1:{port}/two HTTP/1.1\r\n\r\n");
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let second = within(read_response(&mut stream)).await.unwrap();
    assert_eq!(second.status, 200);

    let lines: Vec<String> = server.requests().iter().map(|request| request.request_line().to_owned()).collect();
    assert_eq!(lines, ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]);
}

/// The server may read the Host header instead of the URI, so a Host header naming another
/// destination than the checked URI is refused (domain fronting over plain HTTP).
#[tokio::test]
async fn forward_host_header_naming_another_host_is_400() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    for host in ["blocked.test".to_owned(), format!("blocked.test:{port}"), format!("allowed.test:{}", port ^ 1)] {
        let request = format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let response = send(proxy.addr, &request).await;
        assert_eq!(response.status, 400, "{host}: {}", response.body);
        assert_eq!(response.header("x-palisade-denied"), Some("1"));
        assert!(response.body.contains(&format!("the Host header names {host}")), "{}", response.body);
    }
    let request =
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nHost: blocked.test\r\n\r\n");
    let response = send(proxy.addr, &request).await;
    assert_eq!(response.status, 400);
    assert!(response.body.contains("more than one Host header"), "{}", response.body);

    assert_eq!(server.accepted(), 0);
    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 4);
    assert!(denials.iter().all(|denial| denial.destination == "allowed.test" && denial.protocol == "http"));
}

#[tokio::test]
async fn forward_origin_form_request_is_400() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let response = send(proxy.addr, &format!("GET /path HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n")).await;
    assert_eq!(response.status, 400);
    assert!(response.body.contains("palisade is an HTTP proxy"), "{}", response.body);
    assert!(response.body.contains("absolute URI"), "{}", response.body);
    assert_eq!(server.accepted(), 0);

    let denial = &proxy.proxy.denials()[0];
    assert_eq!(denial.destination, "allowed.test");
    assert_eq!(denial.port, port);
    assert_eq!(denial.protocol, "http");
}

#[tokio::test]
async fn forward_https_and_other_schemes_are_400() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let https = send(proxy.addr, &format!("GET https://allowed.test:{port}/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(https.status, 400);
    assert!(https.body.contains("CONNECT host:443"), "{}", https.body);
    let ftp = send(proxy.addr, &format!("GET ftp://allowed.test:{port}/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(ftp.status, 400);
    assert!(ftp.body.contains("scheme 'ftp' is not supported"), "{}", ftp.body);
    assert_eq!(server.accepted(), 0);

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 2);
    assert_eq!((denials[0].destination.as_str(), denials[0].port), ("allowed.test", port));
}

/// `http://allowed.test@blocked.test/` names blocked.test as the host; user info is refused
/// so no reader can take the part before '@' for the host.
#[tokio::test]
async fn forward_user_info_is_400() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    let response = send(proxy.addr, &format!("GET http://allowed.test:{port}@blocked.test/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(response.status, 400);
    assert!(response.body.contains("user info"), "{}", response.body);
    assert_eq!(server.accepted(), 0);
}

#[tokio::test]
async fn forward_unlisted_destinations_get_403() {
    let server = HttpServer::start(OK_RESPONSE).await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("localhost", &[LOOPBACK_V4])]);
    let proxy = RunningProxy::start(rules(&["allowed.test", "*.example.test", "localhost"], &["blocked.test"]), resolver).await;

    let hosts = ["blocked.test", "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]", "localhost"];
    for host in hosts {
        let response = send(proxy.addr, &format!("GET http://{host}:{port}/ HTTP/1.1\r\n\r\n")).await;
        assert_eq!(response.status, 403, "{host}: {}", response.body);
        assert!(response.body.starts_with(&format!("palisade blocked {host}:{port}: ")), "{}", response.body);
    }
    // allowed.test resolves to a loopback address, which needs an IP entry.
    let response = send(proxy.addr, &format!("GET http://allowed.test:{port}/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(response.body.contains("a loopback address"), "{}", response.body);

    assert_eq!(server.accepted(), 0);
    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), hosts.len() + 1);
    assert!(denials.iter().all(|denial| denial.protocol == "http" && denial.port == port));
    assert_eq!(denials[0].rule.as_deref(), Some("blocked.test"));
}

#[tokio::test]
async fn forward_default_port_is_80() {
    // Nothing resolves, so even a proxy that wrongly allowed port 80 would connect nowhere.
    let proxy = RunningProxy::start(rules(&["allowed.test:8080"], &[]), StubResolver::new(&[])).await;

    let response = send(proxy.addr, "GET http://allowed.test/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(response.body.contains("allowed.test:80 is not on the allowlist"), "{}", response.body);
    assert_eq!(proxy.proxy.denials()[0].port, 80);
}

/// An IP entry matches the address however the client spells it, because the proxy reads the
/// spelling as the address it stands for.
#[tokio::test]
async fn forward_ip_entry_covers_every_spelling() {
    let (server, proxy) = allowed_server().await;
    let port = server.port();

    for host in ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1."] {
        let response = send(proxy.addr, &format!("GET http://{host}:{port}/ HTTP/1.1\r\n\r\n")).await;
        assert_eq!(response.status, 200, "{host}: {}", response.body);
    }
    assert_eq!(server.accepted(), 6);
}
