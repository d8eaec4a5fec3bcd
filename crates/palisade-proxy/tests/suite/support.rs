//! Test fixtures: a stub resolver, a running proxy, upstream servers and a raw client.
//!
//! Everything listens on 127.0.0.1 or ::1 inside the test process, and the stub resolver maps
//! the test names to those addresses only, so nothing a test does leaves the machine.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_policy::network::Rules;
use palisade_proxy::{BoxFuture, Limits, Proxy, Resolve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const LOOPBACK_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
pub const LOOPBACK_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// Time any single network step of a test may take before the test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, future).await.expect("a test step timed out")
}

// ---------------------------------------------------------------------------------------------
// Resolver

/// Resolves from a fixed table and counts the lookups of each name. Names it does not know fail
/// with `NotFound`, as NXDOMAIN would.
#[derive(Default)]
pub struct StubResolver {
    table: HashMap<String, Vec<IpAddr>>,
    lookups: Mutex<HashMap<String, usize>>,
}

impl StubResolver {
    pub fn new(entries: &[(&str, &[IpAddr])]) -> Arc<StubResolver> {
        let table = entries.iter().map(|(name, addrs)| ((*name).to_owned(), addrs.to_vec())).collect();
        Arc::new(StubResolver { table, lookups: Mutex::default() })
    }

    /// Returns how often `name` was looked up.
    pub fn lookups(&self, name: &str) -> usize {
        self.lookups.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Resolve for StubResolver {
    fn resolve<'a>(&'a self, name: &'a str, _port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        *self.lookups.lock().unwrap().entry(name.to_owned()).or_default() += 1;
        let answer = match self.table.get(name) {
            Some(addrs) => Ok(addrs.clone()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("the stub resolver has no entry for {name}"))),
        };
        Box::pin(async move { answer })
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy

pub fn rules(allow: &[&str], deny: &[&str]) -> Rules {
    Rules::from_strings(allow, deny).expect("the test rules are valid")
}

/// A proxy serving on 127.0.0.1 in a task of the test's runtime.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningProxy {
    pub async fn start(rules: Rules, resolver: Arc<StubResolver>) -> RunningProxy {
        RunningProxy::start_with_limits(rules, resolver, Limits::default()).await
    }

    pub async fn start_with_limits(rules: Rules, resolver: Arc<StubResolver>, limits: Limits) -> RunningProxy {
        RunningProxy::serve(Proxy::with_limits(rules, resolver, limits)).await
    }

    /// Serves `proxy` on a port of 127.0.0.1 that the kernel picks.
    pub async fn serve(proxy: Proxy) -> RunningProxy {
        let listener = TcpListener::bind((LOOPBACK_V4, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(proxy);
        let (shutdown, shutdown_received) = oneshot::channel::<()>();
        let serving = Arc::clone(&proxy);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = shutdown_received.await;
            };
            serving.serve(listener, shutdown).await
        });
        RunningProxy { addr, proxy, shutdown: Some(shutdown), task: Some(task) }
    }

    /// Signals shutdown and returns what `serve` returned.
    pub async fn stop(mut self) -> io::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        within(self.task.take().unwrap()).await.expect("the proxy task panicked")
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream servers

/// A server that echoes every byte back, counting the connections it accepted.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    pub async fn start(ip: IpAddr) -> EchoServer {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        EchoServer::serve(listener)
    }

    fn serve(listener: TcpListener) -> EchoServer {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        EchoServer { addr, accepted }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One request as an upstream HTTP server received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The request line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Returns the values of header `name`, compared without case.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(field, _)| field.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
            .collect()
    }
}

/// A minimal HTTP/1.1 server that records each request, sends a fixed response and closes the
/// connection.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<ReceivedRequest>>>,
    pub accepted: Arc<AtomicUsize>,
}

impl HttpServer {
    pub async fn start(response: &'static str) -> HttpServer {
        let listener = TcpListener::bind((LOOPBACK_V4, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (log, counter) = (Arc::clone(&received), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    if let Ok(request) = read_request(&mut stream).await {
                        log.lock().unwrap().push(request);
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        HttpServer { addr, received, accepted }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads a request head and a body of `Content-Length` bytes.
async fn read_request(stream: &mut TcpStream) -> io::Result<ReceivedRequest> {
    let (head, mut rest) = read_head(stream).await?;
    let length: usize = header_value(&head, "content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
    while rest.len() < length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..read]);
    }
    Ok(ReceivedRequest { head, body: rest })
}

/// Reads up to the blank line that ends a head. Returns the head as text and the bytes read
/// after it.
async fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            return Ok((head, buffer[end + 4..].to_vec()));
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before the head ended"));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(field, _)| field.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
}

/// Binds a socket on `ip` without listening, so connections to it are refused while no other
/// process can take the port. Returns `None` if the port is taken.
pub fn refusing_socket(ip: IpAddr, port: u16) -> Option<TcpSocket> {
    let socket = if ip.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.ok()?;
    socket.bind(SocketAddr::new(ip, port)).ok()?;
    Some(socket)
}

/// Returns `true` if this machine has the IPv6 loopback address, which some containers lack.
pub async fn has_ipv6_loopback() -> bool {
    let available = TcpListener::bind((LOOPBACK_V6, 0)).await.is_ok();
    if !available {
        eprintln!("SKIP: ::1 is not available on this machine, so the IPv6 case is not run");
    }
    available
}

// ---------------------------------------------------------------------------------------------
// Client

/// A response as the client read it.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub reason: String,
    /// Header names lowercase, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(field, _)| field == name).map(|(_, value)| value.as_str())
    }
}

/// Connects to the proxy, sends `request` and reads one response; the connection is returned
/// for tunnels and further requests.
pub async fn exchange(proxy: SocketAddr, request: &[u8]) -> (TestResponse, TcpStream) {
    let mut stream = within(TcpStream::connect(proxy)).await.unwrap();
    within(stream.write_all(request)).await.unwrap();
    let response = within(read_response(&mut stream)).await.unwrap();
    (response, stream)
}

/// Sends `request` to the proxy and returns its response.
pub async fn send(proxy: SocketAddr, request: &str) -> TestResponse {
    exchange(proxy, request.as_bytes()).await.0
}

/// Sends `CONNECT authority` and returns the response and the connection.
pub async fn connect(proxy: SocketAddr, authority: &str) -> (TestResponse, TcpStream) {
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    exchange(proxy, request.as_bytes()).await
}

/// Reads a response head and its body: `Content-Length` bytes, nothing where the status has
/// no body, or everything up to the end of the connection.
pub async fn read_response(stream: &mut TcpStream) -> io::Result<TestResponse> {
    let (head, mut body) = read_head(stream).await?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts.next().and_then(|code| code.parse().ok()).unwrap_or(0);
    let reason = parts.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length = headers.iter().find(|(name, _)| name == "content-length").and_then(|(_, value)| value.parse().ok());
    match length {
        Some(length) => {
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..read]);
            }
        }
        // No body: 204 and 304 never have one, nor has the 200 that opens a CONNECT tunnel.
        None if status == 204 || status == 304 => {}
        None if status == 200 && head.contains("Connection Established") => {}
        None => {
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok(TestResponse { status, reason, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Writes `message` into a tunnel and checks that the echo server returns it.
pub async fn assert_echoes(stream: &mut TcpStream, message: &[u8]) {
    within(stream.write_all(message)).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    within(stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(echoed, message);
}

/// Waits until the peer closes `stream` and returns `true`, or returns `false` after `limit`.
pub async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}
