//! curl as a real client: plain HTTP, a CONNECT tunnel and SOCKS5 with a remote name.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::support::*;

const CURL: &str = "/usr/bin/curl";
const RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// Runs curl with `args` and an empty environment (so no proxy variable or `.curlrc`
/// applies), and returns its standard output.
async fn curl(args: Vec<String>) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(CURL)
            .arg("-q")
            .args(["--silent", "--show-error", "--max-time", "10", "--noproxy", ""])
            .args(&args)
            .env_clear()
            .output()
            .expect("failed to run curl")
    });
    let output = within(output).await.unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn proxy_url(proxy: SocketAddr) -> String {
    format!("http://{proxy}")
}

#[tokio::test]
async fn curl_through_the_proxy() {
    if !Path::new(CURL).exists() {
        eprintln!("SKIP: {CURL} is not installed, so the curl client test is not run");
        return;
    }
    let server = HttpServer::start(RESPONSE).await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;
    let status_and_body = |url: &str| vec!["--write-out".to_owned(), " %{http_code}".to_owned(), url.to_owned()];

    // Plain HTTP with an absolute URI.
    let mut args = vec!["--proxy".to_owned(), proxy_url(proxy.addr)];
    args.extend(status_and_body(&format!("http://allowed.test:{port}/plain")));
    assert_eq!(curl(args).await, "hello 200");

    // The same through a CONNECT tunnel.
    let mut args = vec!["--proxytunnel".to_owned(), "--proxy".to_owned(), proxy_url(proxy.addr)];
    args.extend(status_and_body(&format!("http://allowed.test:{port}/tunnel")));
    assert_eq!(curl(args).await, "hello 200");

    // SOCKS5 with the name resolved by the proxy.
    let mut args = vec!["--proxy".to_owned(), format!("socks5h://{}", proxy.addr)];
    args.extend(status_and_body(&format!("http://allowed.test:{port}/socks")));
    assert_eq!(curl(args).await, "hello 200");

    // A name not on the list: curl shows palisade's 403 and its reason.
    let mut args = vec!["--proxy".to_owned(), proxy_url(proxy.addr)];
    args.extend(status_and_body(&format!("http://blocked.test:{port}/")));
    let refused = curl(args).await;
    assert!(refused.ends_with(" 403"), "{refused}");
    assert!(refused.contains("is not on the allowlist"), "{refused}");

    let paths: Vec<String> = server.requests().iter().map(|request| request.request_line().to_owned()).collect();
    assert_eq!(paths, ["GET /plain HTTP/1.1", "GET /tunnel HTTP/1.1", "GET /socks HTTP/1.1"]);
    assert_eq!(proxy.proxy.denials().len(), 1);
}
