//! The TLS server name (SNI) a client sends into a tunnel must name the destination the proxy
//! checked. Public reports: github/gh-aw-firewall#8878 and agentcage/agentcage#214 (a proxy
//! checked the CONNECT target while the TLS server name inside picked another tenant of the
//! same front end).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::support::*;

/// Returns a minimal TLS 1.3 ClientHello record whose server name extension names `name`.
pub fn client_hello(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let mut server_name = Vec::new();
    server_name.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    server_name.push(0); // host_name
    server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
    server_name.extend_from_slice(name);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&(server_name.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&server_name);

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x2a; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

async fn allowed_echo() -> (EchoServer, RunningProxy) {
    let echo = EchoServer::start(LOOPBACK_V4).await;
    let port = echo.port();
    let resolver = StubResolver::new(&[("allowed.test", &[LOOPBACK_V4]), ("blocked.test", &[LOOPBACK_V4])]);
    let allow = [format!("allowed.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;
    (echo, proxy)
}

#[tokio::test]
async fn matching_server_name_passes() {
    let (echo, proxy) = allowed_echo().await;
    let (response, mut tunnel) = connect(proxy.addr, &format!("allowed.test:{}", echo.port())).await;
    assert_eq!(response.status, 200);

    // The name matches in any case and with a final dot.
    let hello = client_hello("Allowed.Test.");
    tunnel.write_all(&hello).await.unwrap();
    let mut echoed = vec![0u8; hello.len()];
    within(tunnel.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(echoed, hello);
    assert!(proxy.proxy.denials().is_empty());
}

#[tokio::test]
async fn other_server_name_closes_the_tunnel() {
    let (echo, proxy) = allowed_echo().await;
    let port = echo.port();
    let (response, mut tunnel) = connect(proxy.addr, &format!("allowed.test:{port}")).await;
    assert_eq!(response.status, 200);

    tunnel.write_all(&client_hello("blocked.test")).await.unwrap();
    let mut rest = Vec::new();
    within(tunnel.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "the upstream echoed the ClientHello, so it received it: {rest:?}");

    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].destination, "allowed.test");
    assert_eq!(denials[0].port, port);
    assert_eq!(denials[0].protocol, "connect");
    assert!(denials[0].reason.contains("TLS server name 'blocked.test'"), "{}", denials[0].reason);
}

/// A ClientHello that arrives in pieces is still read whole before anything is passed on.
#[tokio::test]
async fn server_name_split_across_writes() {
    let (echo, proxy) = allowed_echo().await;
    let (_, mut tunnel) = connect(proxy.addr, &format!("allowed.test:{}", echo.port())).await;

    let hello = client_hello("blocked.test");
    for piece in hello.chunks(7) {
        tunnel.write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut rest = Vec::new();
    within(tunnel.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(proxy.proxy.denials().len(), 1);
}

/// A server that speaks first (SSH, SMTP) gets its tunnel at once, without waiting for the
/// client.
#[tokio::test]
async fn server_speaking_first_is_not_held() {
    let listener = TcpListener::bind((LOOPBACK_V4, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"SSH-2.0-test\r\n").await;
                let mut line = [0u8; 5];
                if stream.read_exact(&mut line).await.is_ok() {
                    let _ = stream.write_all(&line).await;
                }
            });
        }
    });
    let resolver = StubResolver::new(&[("git.test", &[LOOPBACK_V4])]);
    let allow = [format!("git.test:{port}"), format!("127.0.0.1:{port}")];
    let proxy = RunningProxy::start(rules(&allow.each_ref().map(String::as_str), &[]), resolver).await;

    let (_, mut tunnel) = connect(proxy.addr, &format!("git.test:{port}")).await;
    let mut banner = [0u8; 14];
    within(tunnel.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"SSH-2.0-test\r\n");
    tunnel.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    within(tunnel.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"hello");
}

/// A ClientHello sent in the same write as the CONNECT head reaches the proxy before the tunnel
/// opens. It is checked like one sent later: a matching name passes, another closes the tunnel.
#[tokio::test]
async fn server_name_sent_with_the_connect_head() {
    let (echo, proxy) = allowed_echo().await;
    let port = echo.port();
    let head = format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");

    let hello = client_hello("allowed.test");
    let (response, mut tunnel) = exchange(proxy.addr, &[head.as_bytes(), &hello].concat()).await;
    assert_eq!(response.status, 200);
    let mut echoed = vec![0u8; hello.len()];
    within(tunnel.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(echoed, hello);
    assert!(proxy.proxy.denials().is_empty());

    let (response, mut tunnel) = exchange(proxy.addr, &[head.as_bytes(), &client_hello("blocked.test")].concat()).await;
    assert_eq!(response.status, 200);
    let mut rest = Vec::new();
    within(tunnel.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "the upstream echoed the ClientHello, so it received it: {rest:?}");
    let denials = proxy.proxy.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(denials[0].reason.contains("TLS server name 'blocked.test'"), "{}", denials[0].reason);
}
