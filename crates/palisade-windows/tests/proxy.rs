//! Tests of the allowlist proxy as the Windows backend runs it, under Wine on Linux and natively
//! on Windows: it listens on a port of the firewall's proxy range, answers only clients with
//! the run's credential, and the variables it gives the command carry that credential. Every
//! server is one the test starts on 127.0.0.1.

#![cfg(windows)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::network::Rules;
use palisade_windows::plan::PROXY_PORTS;
use palisade_windows::sys::proxy::{is_proxy_variable, ProxyThread};

/// Starts a server on 127.0.0.1 that counts its connections and greets each with `hello`.
fn greeting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"hello");
        }
    });
    (address, accepted)
}

/// Returns the `user:token` of the proxy URL in `environment`'s HTTP_PROXY, and the proxy's
/// address.
fn credential_and_address(environment: &[(String, String)]) -> (String, SocketAddr) {
    let url = &environment.iter().find(|(name, _)| name == "HTTP_PROXY").expect("HTTP_PROXY is set").1;
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (userinfo, address) = rest.split_once('@').expect("the URL carries a credential");
    (userinfo.to_owned(), address.parse().expect("a socket address"))
}

/// Sends a CONNECT for `target` through the proxy at `proxy`, with `authorization` as the
/// Proxy-Authorization header, and returns the status line and what followed.
fn connect(proxy: SocketAddr, target: SocketAddr, authorization: Option<&str>) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // The proxy answers, then the server greets through the tunnel, or the proxy closes.
    while !String::from_utf8_lossy(&answer).contains("hello") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Base64 of `text`, enough for a Basic credential in a test.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut encoded = String::new();
    for chunk in bytes.chunks(3) {
        let value = chunk.iter().enumerate().fold(0u32, |value, (index, &byte)| value | u32::from(byte) << (16 - 8 * index));
        for index in 0..4 {
            if index <= chunk.len() {
                encoded.push(ALPHABET[(value >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

#[test]
fn proxy_listens_in_the_firewall_range_and_requires_the_credential() {
    let (server, accepted) = greeting_server();
    let rules = Rules::from_strings(&[server.to_string()], &[]).unwrap();
    let proxy = ProxyThread::start(rules).unwrap();
    let environment = proxy.environment();
    let (userinfo, address) = credential_and_address(&environment);
    assert_eq!(address.ip(), Ipv4Addr::LOCALHOST);
    assert!((PROXY_PORTS.0..=PROXY_PORTS.1).contains(&address.port()), "{address} is outside the firewall's proxy range");

    let missing = connect(address, server, None);
    assert!(missing.starts_with("HTTP/1.1 407"), "{missing}");
    let wrong = connect(address, server, Some(&format!("Basic {}", base64("palisade:0000"))));
    assert!(wrong.starts_with("HTTP/1.1 407"), "{wrong}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a request without the credential reached the server");

    let allowed = connect(address, server, Some(&format!("Basic {}", base64(&userinfo))));
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(allowed.contains("hello"), "the tunnel did not reach the server: {allowed}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let record = proxy.stop();
    assert_eq!(record.proxy, Some(address.to_string()));
    assert_eq!(record.auth_failures, 2);
    assert!(record.denials.is_empty());
}

#[test]
fn refusals_of_the_allowlist_are_recorded() {
    let (server, accepted) = greeting_server();
    // Only another port of the loopback is allowed.
    let rules = Rules::from_strings(&[format!("127.0.0.1:{}", server.port().wrapping_add(1))], &[]).unwrap();
    let proxy = ProxyThread::start(rules).unwrap();
    let (userinfo, address) = credential_and_address(&proxy.environment());
    let refused = connect(address, server, Some(&format!("Basic {}", base64(&userinfo))));
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let record = proxy.stop();
    assert_eq!(record.denials.len(), 1, "{:?}", record.denials);
    assert_eq!(record.denials[0].port, server.port());
}

#[test]
fn concurrent_runs_get_their_own_port_and_credential() {
    let first = ProxyThread::start(Rules::from_strings(&["example.test"], &[]).unwrap()).unwrap();
    let second = ProxyThread::start(Rules::from_strings(&["example.test"], &[]).unwrap()).unwrap();
    let (first_userinfo, first_address) = credential_and_address(&first.environment());
    let (second_userinfo, second_address) = credential_and_address(&second.environment());
    assert_ne!(first_address, second_address);
    assert_ne!(first_userinfo, second_userinfo);
    // One run's credential does not open another run's proxy.
    let (server, accepted) = greeting_server();
    let borrowed = connect(second_address, server, Some(&format!("Basic {}", base64(&first_userinfo))));
    assert!(borrowed.starts_with("HTTP/1.1 407"), "{borrowed}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn the_command_gets_every_proxy_variable_in_both_cases() {
    let proxy = ProxyThread::start(Rules::from_strings(&["example.test"], &[]).unwrap()).unwrap();
    let environment = proxy.environment();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
        assert!(environment.iter().any(|(set, _)| set == name), "{name} is missing");
    }
    let all = &environment.iter().find(|(name, _)| name == "ALL_PROXY").unwrap().1;
    assert!(all.starts_with("socks5h://palisade:"), "{all}");
    assert!(is_proxy_variable("npm_config_https_proxy") && is_proxy_variable("No_Proxy") && !is_proxy_variable("PROXY_HOME"));
    assert!(!is_proxy_variable("ünï_prox"), "a name with multi-byte characters is read safely");
}
