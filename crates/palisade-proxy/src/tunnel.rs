//! Relaying an open tunnel: the bytes of a CONNECT or SOCKS5 connection, passed both ways
//! between the client and the upstream server. On Linux they move from socket to socket through
//! pipes, without a copy in the proxy (see [`zero_copy`]). Elsewhere, or when no pipe may be
//! used, they are copied through buffers that grow for bulk transfers.

#[cfg(target_os = "linux")]
mod zero_copy;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// Size of a tunnel's copy buffer in each direction when the tunnel opens. It is tokio's
/// default for `copy_bidirectional`, enough for interactive traffic such as TLS handshakes.
const BUFFER_MIN: usize = 8 * 1024;

/// Largest size a tunnel's copy buffer grows to. It is the default maximum of
/// `net.ipv4.tcp_wmem` on machines with enough memory, the largest send buffer that Linux
/// autotunes a socket to.
///
/// Each read and write moves at most one buffer, and every system call and wake-up on the
/// proxy's thread delays the transfer. With `bench/proxy.py` on a 2-CPU VM, a 1 GiB transfer
/// through the proxy reached about 43% of direct loopback throughput with 8 KiB, 60% with
/// 256 KiB, 70% with 1 MiB, 77% with 4 MiB and 79% with 16 MiB.
const BUFFER_MAX: usize = 4 * 1024 * 1024;

/// The bytes that tunnel buffers of one proxy may hold past [`BUFFER_MIN`], and the capacity
/// that its tunnel pipes may have past the default, over all tunnels, and the amount in use
/// now. A buffer or pipe stops growing when the next step would exceed it.
///
/// It also counts the tunnels that relay through pipes. Such a tunnel needs six descriptors
/// (two sockets, two pipes) instead of two, so at most [`pipe_tunnels_for`] of them run at once,
/// and the others copy. The proxy then still has descriptors for the connections it accepts
/// and dials, and the command's output relay for its copies of stdout and stderr.
pub(crate) struct BufferBudget {
    max: usize,
    used: AtomicUsize,
    max_pipe_tunnels: usize,
    pipe_tunnels: AtomicUsize,
}

impl BufferBudget {
    pub(crate) fn new(max: usize) -> BufferBudget {
        BufferBudget::with_pipe_tunnels(max, pipe_tunnels_for(descriptor_limit()))
    }

    pub(crate) fn with_pipe_tunnels(max: usize, max_pipe_tunnels: usize) -> BufferBudget {
        BufferBudget { max, used: AtomicUsize::new(0), max_pipe_tunnels, pipe_tunnels: AtomicUsize::new(0) }
    }

    /// Takes one of the places for a tunnel that relays through pipes, or returns `None` when
    /// all are taken. The place is given back when the returned value drops.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn take_pipe_tunnel(&self) -> Option<PipeTunnel<'_>> {
        let add = |count: usize| (count < self.max_pipe_tunnels).then_some(count + 1);
        self.pipe_tunnels.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add).ok().map(|_| PipeTunnel { budget: self })
    }

    /// Reserves `bytes`, or returns `false` if that would exceed the budget.
    fn try_reserve(&self, bytes: usize) -> bool {
        let add = |used: usize| used.checked_add(bytes).filter(|&total| total <= self.max);
        self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add).is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One tunnel's place among those that relay through pipes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct PipeTunnel<'a> {
    budget: &'a BufferBudget,
}

impl Drop for PipeTunnel<'_> {
    fn drop(&mut self) {
        self.budget.pipe_tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns how many tunnels may relay through pipes at once in a process whose soft limit on
/// open descriptors is `limit`: their pipes may take at most half of it, four per tunnel.
fn pipe_tunnels_for(limit: u64) -> usize {
    usize::try_from(limit / 8).unwrap_or(usize::MAX)
}

/// Returns this process's soft limit on open descriptors, `u64::MAX` when it has none. Other
/// systems relay without pipes, so 1024 is returned there.
fn descriptor_limit() -> u64 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
    }
    #[cfg(not(target_os = "linux"))]
    {
        1024
    }
}

/// The copy buffer of one direction of a tunnel. It starts at [`BUFFER_MIN`] and doubles, up
/// to [`BUFFER_MAX`] and within the budget, each time a read fills it. On a socket a full read
/// means that more data was waiting, so only a direction that carries a bulk transfer has a
/// large buffer, and the kernel already queues at least as much for that connection.
struct CopyBuffer<'a> {
    bytes: Vec<u8>,
    budget: &'a BufferBudget,
}

impl CopyBuffer<'_> {
    fn new(budget: &BufferBudget) -> CopyBuffer<'_> {
        CopyBuffer { bytes: vec![0; BUFFER_MIN], budget }
    }

    /// Grows the buffer if a read of `read` bytes filled it and the budget allows.
    fn grow_after(&mut self, read: usize) {
        let current = self.bytes.len();
        let next = next_size(current, read);
        if next > current && self.budget.try_reserve(next - current) {
            self.bytes.resize(next, 0);
        }
    }
}

impl Drop for CopyBuffer<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes.len() - BUFFER_MIN);
    }
}

/// Returns the size a buffer of `current` bytes should have after a read of `read` bytes.
fn next_size(current: usize, read: usize) -> usize {
    if read == current && current < BUFFER_MAX { (current * 2).min(BUFFER_MAX) } else { current }
}

/// The way a tunnel's bytes were passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// From socket to socket through pipes, without a copy in the proxy.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ZeroCopy,
    /// Through the proxy's buffers.
    Copied,
}

/// Relays bytes both ways between a client and its upstream server until both sides close,
/// and returns how they were passed.
pub(crate) async fn relay(budget: &BufferBudget, client: &mut TcpStream, upstream: &mut TcpStream) -> Relayed {
    #[cfg(target_os = "linux")]
    if let Some(_place) = zero_copy::sigpipe_ignored().then(|| budget.take_pipe_tunnel()).flatten() {
        match (zero_copy::Pipe::new(budget), zero_copy::Pipe::new(budget)) {
            (Ok(sending_pipe), Ok(receiving_pipe)) => {
                let sending = zero_copy::one_way(client, upstream, sending_pipe);
                let receiving = zero_copy::one_way(upstream, client, receiving_pipe);
                log_close(tokio::try_join!(sending, receiving), Relayed::ZeroCopy);
                return Relayed::ZeroCopy;
            }
            (Err(error), _) | (_, Err(error)) => debug!(%error, "no pipe for the tunnel, so its bytes are copied"),
        }
    }
    copy_both_ways(budget, client, upstream).await;
    Relayed::Copied
}

fn log_close(result: io::Result<(u64, u64)>, relayed: Relayed) {
    let way = match relayed {
        Relayed::ZeroCopy => "through pipes",
        Relayed::Copied => "by copying",
    };
    match result {
        Ok((sent, received)) => debug!(sent, received, "tunnel closed, relayed {way}"),
        Err(error) => debug!(%error, "tunnel closed with an error, relayed {way}"),
    }
}

/// Copies bytes both ways between a client and its upstream server until both sides close.
async fn copy_both_ways<C, U>(budget: &BufferBudget, client: &mut C, upstream: &mut U)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let sending = copy_one_way(budget, client_read, upstream_write);
    let receiving = copy_one_way(budget, upstream_read, client_write);
    log_close(tokio::try_join!(sending, receiving), Relayed::Copied);
}

/// Copies from `reader` to `writer` until `reader` ends, then shuts `writer` down so that its
/// peer reads the end of the stream too. Returns the number of bytes copied.
async fn copy_one_way<R, W>(budget: &BufferBudget, mut reader: R, mut writer: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = CopyBuffer::new(budget);
    let mut copied: u64 = 0;
    loop {
        let read = reader.read(&mut buffer.bytes).await?;
        if read == 0 {
            writer.shutdown().await?;
            return Ok(copied);
        }
        writer.write_all(&buffer.bytes[..read]).await?;
        writer.flush().await?;
        copied += read as u64;
        buffer.grow_after(read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_doubles_after_full_read() {
        assert_eq!(next_size(BUFFER_MIN, BUFFER_MIN), 2 * BUFFER_MIN);
        assert_eq!(next_size(64 * 1024, 64 * 1024), 128 * 1024);
    }

    #[test]
    fn buffer_keeps_size_after_partial_read() {
        assert_eq!(next_size(BUFFER_MIN, 100), BUFFER_MIN);
        assert_eq!(next_size(64 * 1024, 64 * 1024 - 1), 64 * 1024);
    }

    #[test]
    fn buffer_stops_growing_at_maximum() {
        assert_eq!(next_size(BUFFER_MAX, BUFFER_MAX), BUFFER_MAX);
        assert_eq!(next_size(BUFFER_MAX / 2 + 1, BUFFER_MAX / 2 + 1), BUFFER_MAX);
    }

    #[test]
    fn buffer_growth_stays_within_budget() {
        let budget = BufferBudget::new(BUFFER_MIN);
        let mut buffer = CopyBuffer::new(&budget);
        buffer.grow_after(BUFFER_MIN);
        assert_eq!(buffer.bytes.len(), 2 * BUFFER_MIN);
        // Doubling again needs 2 * BUFFER_MIN more, past the budget.
        buffer.grow_after(2 * BUFFER_MIN);
        assert_eq!(buffer.bytes.len(), 2 * BUFFER_MIN);
        assert_eq!(budget.used.load(Ordering::Relaxed), BUFFER_MIN);
    }

    #[test]
    fn buffer_returns_budget_when_dropped() {
        let budget = BufferBudget::new(usize::MAX);
        let mut buffer = CopyBuffer::new(&budget);
        for _ in 0..3 {
            buffer.grow_after(buffer.bytes.len());
        }
        assert_eq!(budget.used.load(Ordering::Relaxed), 7 * BUFFER_MIN);
        drop(buffer);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// The request the client of [`exchange`] sends.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    /// Returns a download larger than the largest buffer and pipe.
    fn large_download() -> Vec<u8> {
        (0..2 * BUFFER_MAX + 12345).map(|i| (i % 251) as u8).collect()
    }

    /// Runs a client that sends [`REQUEST`], closes its sending side and reads to the end, and
    /// a server that reads to the end and sends `download`, while `tunnel` relays between them.
    /// Returns what the server and the client received, and the tunnel's result.
    async fn exchange<C, U, T>(mut client: C, mut upstream: U, download: &[u8], tunnel: T) -> (Vec<u8>, Vec<u8>, T::Output)
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
        T: std::future::Future,
    {
        let server = async {
            let mut request = Vec::new();
            upstream.read_to_end(&mut request).await.unwrap();
            upstream.write_all(download).await.unwrap();
            upstream.shutdown().await.unwrap();
            request
        };
        let client_run = async {
            client.write_all(REQUEST).await.unwrap();
            client.shutdown().await.unwrap();
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        };
        tokio::join!(server, client_run, tunnel)
    }

    /// Drives a tunnel over in-memory streams. A download larger than the largest buffer
    /// passes unchanged one way while a request passes the other, and each side's end of
    /// stream reaches its peer.
    #[tokio::test]
    async fn copy_relays_both_directions() {
        let budget = BufferBudget::new(usize::MAX);
        let (client, mut client_side) = tokio::io::duplex(64 * 1024);
        let (upstream, mut upstream_side) = tokio::io::duplex(64 * 1024);
        let download = large_download();
        let tunnel = copy_both_ways(&budget, &mut client_side, &mut upstream_side);
        let (request, received, ()) = exchange(client, upstream, &download, tunnel).await;

        assert_eq!(request, REQUEST);
        assert_eq!(received.len(), download.len());
        assert!(received == download, "the download changed in the tunnel");
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// Makes a connected pair of loopback TCP sockets.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    /// Drives a tunnel between loopback sockets, as the proxy does. A download larger than the
    /// largest pipe and buffer passes unchanged one way while a request passes the other, and
    /// each side's end of stream reaches its peer. On Linux the zero-copy relay carries it.
    #[tokio::test]
    async fn relay_passes_both_directions_between_sockets() {
        let budget = BufferBudget::new(usize::MAX);
        let (client, mut client_side) = tcp_pair().await;
        let (upstream, mut upstream_side) = tcp_pair().await;
        let download = large_download();
        let tunnel = relay(&budget, &mut client_side, &mut upstream_side);
        let (request, received, relayed) = exchange(client, upstream, &download, tunnel).await;

        assert_eq!(request, REQUEST);
        assert_eq!(received.len(), download.len());
        assert!(received == download, "the download changed in the tunnel");
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
        #[cfg(target_os = "linux")]
        assert_eq!(relayed, Relayed::ZeroCopy);
        #[cfg(not(target_os = "linux"))]
        assert_eq!(relayed, Relayed::Copied);
    }

    /// Relays a download that an upstream server writes until it fails, to a client that reads
    /// 1 KiB and closes its socket. Returns how the tunnel relayed, or `None` if it did not end
    /// within 20 seconds of the client leaving.
    async fn client_leaves_mid_download(budget: &BufferBudget) -> Option<Relayed> {
        let (mut client, mut client_side) = tcp_pair().await;
        let (mut upstream, mut upstream_side) = tcp_pair().await;
        let server = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            // Fails once the tunnel is gone; the callers check only that the tunnel ends.
            while upstream.write_all(&chunk).await.is_ok() {}
        });
        let client_run = async move {
            let mut first = [0u8; 1024];
            client.read_exact(&mut first).await.unwrap();
            drop(client);
        };
        let tunnel = relay(budget, &mut client_side, &mut upstream_side);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(client_run, tunnel) }).await;
        drop(upstream_side);
        server.await.unwrap();
        ended.ok().map(|((), relayed)| relayed)
    }

    /// A client that goes away in the middle of a download ends the tunnel instead of leaving
    /// it waiting, and the process survives the failed write to the closed socket.
    #[tokio::test]
    async fn relay_ends_when_the_client_goes_away() {
        let budget = BufferBudget::new(usize::MAX);
        let relayed = client_leaves_mid_download(&budget).await;
        assert!(relayed.is_some(), "the tunnel did not end after its client closed");
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// Once every place for a tunnel through pipes is taken, a tunnel copies instead, and its
    /// bytes still pass.
    #[tokio::test]
    async fn relay_copies_when_no_pipe_place_is_left() {
        let budget = BufferBudget::with_pipe_tunnels(usize::MAX, 0);
        let (client, mut client_side) = tcp_pair().await;
        let (upstream, mut upstream_side) = tcp_pair().await;
        let tunnel = relay(&budget, &mut client_side, &mut upstream_side);
        let (request, received, relayed) = exchange(client, upstream, b"reply", tunnel).await;
        assert_eq!(request, REQUEST);
        assert_eq!(received, b"reply");
        assert_eq!(relayed, Relayed::Copied);
        assert_eq!(budget.pipe_tunnels.load(Ordering::Relaxed), 0);
    }

    /// A tunnel gives its place among those through pipes back when it closes.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pipe_place_returns_after_the_tunnel() {
        let budget = BufferBudget::with_pipe_tunnels(usize::MAX, 1);
        for _ in 0..2 {
            let (client, mut client_side) = tcp_pair().await;
            let (upstream, mut upstream_side) = tcp_pair().await;
            drop((client, upstream));
            assert_eq!(relay(&budget, &mut client_side, &mut upstream_side).await, Relayed::ZeroCopy);
        }
        assert_eq!(budget.pipe_tunnels.load(Ordering::Relaxed), 0);
    }

    /// An upstream server that resets the connection in the middle of a download ends the
    /// tunnel, and the client sees its connection end too.
    #[tokio::test]
    async fn relay_ends_when_the_upstream_resets() {
        let budget = BufferBudget::new(usize::MAX);
        let (mut client, mut client_side) = tcp_pair().await;
        let (upstream, mut upstream_side) = tcp_pair().await;
        let server = async move {
            let mut upstream = upstream;
            upstream.write_all(&vec![7u8; 256 * 1024]).await.unwrap();
            // A zero linger time makes the close send a reset instead of the end of the stream.
            upstream.set_zero_linger().unwrap();
            drop(upstream);
        };
        let client_run = async {
            let mut received = Vec::new();
            let _ = client.read_to_end(&mut received).await;
        };
        let tunnel = relay(&budget, &mut client_side, &mut upstream_side);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async { tokio::join!(server, tunnel) }).await;
        assert!(ended.is_ok(), "the tunnel did not end after the upstream reset");
        drop(client_side);
        tokio::time::timeout(std::time::Duration::from_secs(20), client_run).await.expect("the client's connection did not end");
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// The variable that makes [`sigpipe_default_child`] run: it changes a process-wide signal
    /// disposition, so it runs alone, in a process of its own.
    #[cfg(target_os = "linux")]
    const SIGPIPE_CHILD: &str = "PALISADE_TEST_SIGPIPE_CHILD";

    /// A program that embeds the proxy without ignoring SIGPIPE gets copied tunnels, and a
    /// client that goes away mid-transfer does not kill it. The check runs in a second process
    /// of this test binary, which would die of the signal if the relay used pipes.
    #[cfg(target_os = "linux")]
    #[test]
    fn relay_copies_without_sigpipe_ignored() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tunnel::tests::sigpipe_default_child", "--ignored", "--nocapture"])
            .env(SIGPIPE_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "the child failed ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "run by relay_copies_without_sigpipe_ignored in a process of its own"]
    fn sigpipe_default_child() {
        assert!(std::env::var_os(SIGPIPE_CHILD).is_some(), "run only by relay_copies_without_sigpipe_ignored");
        // SAFETY: SIG_DFL is a valid disposition, and this process runs this one test alone.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let relayed = runtime.block_on(client_leaves_mid_download(&BufferBudget::new(usize::MAX)));
        assert_eq!(relayed, Some(Relayed::Copied));
    }
}
