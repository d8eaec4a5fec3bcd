//! curl as a real client: plain HTTP, a CONNECT tunnel and SOCKS5 with a remote name, with
//! and without the proxy's credential.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use palisade_proxy::{Credential, Proxy};

use super::support::*;

const CURL: &str = "/usr/bin/curl";
const RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// Runs curl with `args` and an empty environment (so no proxy variable or `.curlrc`
/// applies), and returns its standard output.
async fn curl(args: Vec<String>) -> String {
    String::from_utf8_lossy(&curl_output(args).await.stdout).into_owned()
}

/// Runs curl like [`curl`] and returns its exit status and both outputs.
async fn curl_output(args: Vec<String>) -> Output {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(CURL)
            .arg("-q")
            .args(["--silent", "--show-error", "--max-time", "10", "--noproxy", ""])
            .args(&args)
            .env_clear()
            .output()
            .expect("failed to run curl")
    });
    within(output).await.unwrap()
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

#[tokio::test]
async fn curl_with_credential() {
    if !Path::new(CURL).exists() {
        eprintln!("SKIP: {CURL} is not installed, so the curl client test is not run");
        return;
    }
    let server = HttpServer::start(RESPONSE).await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let credential = Credential::generate().unwrap();
    let proxy = Proxy::new(rules(&allow.each_ref().map(String::as_str), &[]), resolver).with_credential(credential.clone());
    let proxy = RunningProxy::serve(proxy).await;
    let urls = credential.proxy_urls(proxy.addr);
    let wrong = Credential::generate().unwrap().proxy_urls(proxy.addr);
    let request = |proxy_args: &[&str], path: &str| {
        let mut args: Vec<String> = proxy_args.iter().map(|arg| (*arg).to_owned()).collect();
        args.extend(["--write-out".to_owned(), " %{http_code} %{http_connect}".to_owned()]);
        args.push(format!("http://allowed.test:{port}/{path}"));
        args
    };

    // With the run's URLs, each protocol reaches the server.
    assert_eq!(curl(request(&["--proxy", &urls.http], "plain")).await, "hello 200 000");
    assert_eq!(curl(request(&["--proxytunnel", "--proxy", &urls.http], "tunnel")).await, "hello 200 200");
    assert_eq!(curl(request(&["--proxy", &urls.socks5], "socks")).await, "hello 200 000");
    assert_eq!(proxy.proxy.auth_failures(), 0);

    // Without the credential, or with another run's, plain HTTP gets palisade's 407 with its
    // explanation.
    for proxy_url in [proxy_url(proxy.addr), wrong.http.clone()] {
        let output = curl(request(&["--proxy", &proxy_url], "plain-refused")).await;
        assert!(output.ends_with(" 407 000"), "{output}");
        assert!(output.contains("HTTP_PROXY"), "{output}");
        assert!(!output.contains(credential.token()), "{output}");
    }

    // A CONNECT tunnel and SOCKS5 fail in curl, before anything reaches the server. curl
    // reports the 407 of a CONNECT as `%{http_connect}`.
    let socks5_without_credential = format!("socks5h://{}", proxy.addr);
    let http_without_credential = proxy_url(proxy.addr);
    let tunnels: [(&str, &[&str], Option<&str>); 4] = [
        ("CONNECT without credential", &["--proxytunnel", "--proxy", &http_without_credential], Some(" 000 407")),
        ("CONNECT with a wrong token", &["--proxytunnel", "--proxy", &wrong.http], Some(" 000 407")),
        ("SOCKS5 without credential", &["--proxy", &socks5_without_credential], None),
        ("SOCKS5 with a wrong token", &["--proxy", &wrong.socks5], None),
    ];
    for (label, proxy_args, expected_stdout) in &tunnels {
        let output = curl_output(request(proxy_args, "tunnel-refused")).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{label}: curl succeeded: {stdout}");
        assert!(!stdout.contains("hello"), "{label}: {stdout}");
        if let Some(expected) = expected_stdout {
            assert_eq!(stdout, *expected, "{label}: {stderr}");
        }
    }

    let paths: Vec<String> = server.requests().iter().map(|request| request.request_line().to_owned()).collect();
    assert_eq!(paths, ["GET /plain HTTP/1.1", "GET /tunnel HTTP/1.1", "GET /socks HTTP/1.1"]);
    for request in server.requests() {
        assert!(request.header("proxy-authorization").is_empty(), "the credential reached the server: {}", request.head);
    }
    assert_eq!(server.accepted(), 3);
    assert!(proxy.proxy.denials().is_empty(), "{:?}", proxy.proxy.denials());
    // Two plain requests and four tunnels: curl does not retry with the same credential.
    assert_eq!(proxy.proxy.auth_failures(), 6);
}
