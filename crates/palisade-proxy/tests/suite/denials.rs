//! The list of refusals that the run report shows.

use palisade_proxy::Denial;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

/// Each refusal, whatever the protocol, appears once, in order, with the destination as
/// requested, the port, the protocol, the deny entry and the reason.
#[tokio::test]
async fn denials_list_each_refusal() {
    let server = HttpServer::start("HTTP/1.1 204 No Content\r\n\r\n").await;
    let port = server.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("rebind.test", &[LOOPBACK_V4])]);
    let allow = ["allowed.test".to_owned(), "*.allowed.test".to_owned(), "rebind.test".to_owned(), format!("127.0.0.1:{port}")];
    let rules = rules(&allow.each_ref().map(String::as_str), &["secret.allowed.test"]);
    let proxy = RunningProxy::start(rules, resolver).await;

    // A port this test holds, so even a proxy that wrongly connected would reach nothing else.
    let refusing = refusing_socket(LOOPBACK_V4, 0).expect("failed to bind a port on 127.0.0.1");
    let closed_port = refusing.local_addr().unwrap().port();

    // Allowed, so not listed.
    let allowed = send(proxy.addr, &format!("GET http://allowed.test:{port}/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(allowed.status, 204);

    let (unlisted, _) = connect(proxy.addr, "blocked.test:443").await;
    assert_eq!(unlisted.status, 403);
    let (deny_entry, _) = connect(proxy.addr, "secret.allowed.test:443").await;
    assert_eq!(deny_entry.status, 403);
    // The IP entry covers 127.0.0.1 on the server's port only.
    let rebinding = send(proxy.addr, &format!("GET http://rebind.test:{closed_port}/ HTTP/1.1\r\n\r\n")).await;
    assert_eq!(rebinding.status, 403);
    let host_mismatch =
        send(proxy.addr, &format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n")).await;
    assert_eq!(host_mismatch.status, 400);

    let [high, low] = closed_port.to_be_bytes();
    let mut socks = within(TcpStream::connect(proxy.addr)).await.unwrap();
    within(socks.write_all(&[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, high, low])).await.unwrap();
    let mut reply = [0u8; 12];
    within(socks.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply[3], 0x02, "SOCKS5 reply {reply:?}");

    let denials = proxy.proxy.denials();
    let expected = [
        ("blocked.test", 443, "connect", None),
        ("secret.allowed.test", 443, "connect", Some("secret.allowed.test")),
        ("rebind.test", closed_port, "http", None),
        ("allowed.test", port, "http", None),
        ("127.0.0.1", closed_port, "socks5", None),
    ];
    assert_eq!(denials.len(), expected.len(), "{denials:#?}");
    for (denial, (destination, port, protocol, rule)) in denials.iter().zip(expected) {
        assert_eq!(denial.destination, destination);
        assert_eq!(denial.port, port, "{destination}");
        assert_eq!(denial.protocol, protocol, "{destination}");
        assert_eq!(denial.rule.as_deref(), rule, "{destination}");
    }

    let reasons: Vec<&str> = denials.iter().map(|denial: &Denial| denial.reason.as_str()).collect();
    assert_eq!(
        reasons[0],
        "blocked.test:443 is not on the allowlist (add blocked.test:443 to [network] allow, or pass --allow-domain blocked.test:443)"
    );
    assert_eq!(reasons[1], "secret.allowed.test:443 matches the deny entry 'secret.allowed.test'");
    assert!(reasons[2].starts_with("rebind.test resolved to 127.0.0.1, a loopback address"), "{}", reasons[2]);
    assert!(reasons[3].starts_with("the Host header names blocked.test"), "{}", reasons[3]);
    let expected_start = format!("127.0.0.1:{closed_port}, a loopback address, is not on the allowlist");
    assert!(reasons[4].starts_with(&expected_start), "{}", reasons[4]);
}
