//! Property-based tests of request parsing: the policy's host and rule parsers on arbitrary
//! text, and a running proxy on arbitrary HTTP request heads, SOCKS5 messages and raw bytes.
//!
//! Failing cases are saved to `proptest-regressions/fuzz.txt` in this crate and replayed first
//! on every run, so commit that file along with the fix. `PROPTEST_CASES` overrides the number
//! of cases per property.
//!
//! The proxy properties never let generated text encode an address outside the loopback range.
//! Free text has its ASCII hex digits replaced (see [`without_hex_digits`]), so it cannot spell
//! an IPv4 or IPv6 address other than `::`. Every number in a destination comes from a list of
//! loopback spellings, a port, or a placeholder for a test listener's port. A proxy bug can then
//! reach only this machine, and the decoy listener counts any connection on the port that the
//! rules leave out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use palisade_policy::network::{Rule, RuleHost, Rules, Target, parse_rule, parse_target};
use palisade_proxy::Limits;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::support::*;

/// Cases per property for the pure parsers, which take microseconds each.
const PARSER_CASES: u32 = 512;
/// Cases per property against a running proxy. Each takes a few milliseconds, or up to
/// [`HEAD_TIMEOUT`] when the client keeps an incomplete request open.
const PROXY_CASES: u32 = 128;

/// The proxy's head timeout in these tests, short so that incomplete requests end quickly.
const HEAD_TIMEOUT: Duration = Duration::from_millis(200);
/// Time past [`HEAD_TIMEOUT`] that the proxy may take to respond or close, for scheduling delays
/// on a loaded machine. Resolving and connecting are local here and take microseconds.
const RESPONSE_MARGIN: Duration = Duration::from_secs(3);

/// Name of the proxy runtime's worker threads, by which the panic hook distinguishes proxy
/// panics from the test's own.
const PROXY_THREAD_NAME: &str = "fuzz-proxy-worker";

/// Builds the configuration of one property, with `PROPTEST_CASES` in place of `cases` where
/// it is set.
///
/// proptest's default persistence (`SourceParallel`) looks for the `lib.rs` or `main.rs` above
/// the test file, which `tests/` lacks, and so would write beside this file. `Direct` paths are
/// relative to the working directory, which `cargo test` sets to the crate's root.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"))),
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsers

/// Pieces that host and rule parsers treat specially, for building hard inputs.
const HOST_PIECES: &[&str] = &[
    "127",
    "0",
    "00",
    "1",
    "255",
    "256",
    "0x7f",
    "0x",
    "0X",
    "0xffffffff",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "0777",
    "08",
    "ffff",
    "::",
    ":",
    ".",
    "..",
    "[",
    "]",
    "%",
    "%25",
    "%2e",
    "/",
    "/0",
    "/32",
    "/128",
    "*",
    "*.",
    "@",
    ":80",
    ":0",
    ":65536",
    "-",
    "xn--",
    "a",
    "example",
    "com",
    "localhost",
    "é",
    "\u{ff11}",
    "\u{3002}",
    "\u{212a}",
    "\u{0}",
    " ",
    "\t",
    "\r\n",
];

/// Numbers that IPv4 parsers branch on: byte edges, radix prefixes and overflows.
const NUMBER_PIECES: &[&str] = &[
    "0",
    "00",
    "1",
    "127",
    "0177",
    "0x7f",
    "0X7F",
    "255",
    "256",
    "0377",
    "0400",
    "0xff",
    "0x100",
    "0x",
    "08",
    "09",
    "65535",
    "65536",
    "16777215",
    "16777216",
    "4294967295",
    "4294967296",
    "0xffffffff",
    "0x100000000",
    "037777777777",
    "040000000000",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "",
];

/// Generates arbitrary text, weighted towards the characters and pieces the parsers branch on, and
/// towards IPv4 and IPv6 spellings.
fn host_text() -> impl Strategy<Value = String> {
    let dotted = (prop::collection::vec(select(NUMBER_PIECES), 1..6), any::<bool>()).prop_map(|(numbers, dot)| {
        let text = numbers.join(".");
        if dot { text + "." } else { text }
    });
    let ipv6 = (any::<u128>(), any::<u32>(), 0..4u8).prop_map(|(bits, v4, form)| match form {
        0 => Ipv6Addr::from(bits).to_string(),
        1 => format!("[{}]", Ipv6Addr::from(bits)),
        2 => format!("[{}]", Ipv4Addr::from(v4).to_ipv6_mapped()),
        _ => format!("[::ffff:{}]", Ipv4Addr::from(v4)),
    });
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-FxX.:\\[\\]%/*@+ _-]{0,24}",
        prop::collection::vec(select(HOST_PIECES), 0..8).prop_map(|pieces| pieces.concat()),
        dotted,
        ipv6,
    ]
}

/// Generates entry texts: arbitrary text, common entries, and random IPv4 CIDR blocks without host bits.
fn rule_text() -> impl Strategy<Value = String> {
    let common = select(
        &[
            "127.0.0.1",
            "127.0.0.0/8",
            "127.0.0.1:80",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "::ffff:0:0/96",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "::/1",
            "10.0.0.0/8",
            "localhost",
            "*.example.com",
            "example.com:443",
        ][..],
    );
    let cidr = (any::<u32>(), 1u8..=32).prop_map(|(bits, prefix_len)| {
        let network = bits & u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        format!("{}/{prefix_len}", Ipv4Addr::from(network))
    });
    prop_oneof![host_text(), common.prop_map(str::to_owned), cidr]
}

/// One way of writing an IPv4 address part.
#[derive(Debug, Clone, Copy)]
enum Radix {
    Decimal,
    Octal,
    Hex,
    HexUpper,
}

/// Writes `value` in `radix`, with `zeros` extra leading zeros where the radix allows them.
fn spell_number(value: u64, radix: Radix, zeros: usize) -> String {
    let padding = "0".repeat(zeros);
    match radix {
        Radix::Decimal => value.to_string(),
        Radix::Octal => format!("0{padding}{value:o}"),
        Radix::Hex => format!("0x{padding}{value:x}"),
        Radix::HexUpper => format!("0X{padding}{value:X}"),
    }
}

/// Spells `addr` in `parts` numbers (1 to 4), as `inet_aton` reads them: every part but the
/// last is one byte, and the last fills the remaining bytes.
fn spell_ipv4(addr: Ipv4Addr, parts: usize, radixes: &[(Radix, usize)], trailing_dot: bool) -> String {
    let value = u64::from(u32::from(addr));
    let leading = parts - 1;
    let last_bits = 8 * (4 - leading);
    let mut numbers: Vec<u64> = (0..leading).map(|index| (value >> (24 - 8 * index)) & 0xff).collect();
    numbers.push(value & ((1u64 << last_bits) - 1));
    let spelled: Vec<String> =
        numbers.iter().zip(radixes).map(|(&number, &(radix, zeros))| spell_number(number, radix, zeros)).collect();
    let mut text = spelled.join(".");
    if trailing_dot {
        text.push('.');
    }
    text
}

fn radix() -> impl Strategy<Value = (Radix, usize)> {
    let radix = select(&[Radix::Decimal, Radix::Octal, Radix::Hex, Radix::HexUpper][..]);
    (radix, 0usize..3)
}

/// Returns `true` if `rule` is an IP or CIDR entry that covers `addr`, or its IPv4-mapped twin,
/// on `port`.
fn ip_entry_covers(rule: &Rule, addr: IpAddr, port: u16) -> bool {
    let RuleHost::Network(network) = rule.host() else { return false };
    let twin = match addr {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
    };
    let covered = network.contains(addr) || twin.is_some_and(|twin| network.contains(twin));
    covered && rule.port().is_none_or(|own| own == port)
}

proptest! {
    #![proptest_config(config(PARSER_CASES))]

    /// Both parsers return for any text, and an entry and a target read from the same text
    /// (without a port or prefix) name the same host.
    #[test]
    fn rule_and_target_parsers_agree(text in host_text()) {
        let target = parse_target(&text);
        let rule = parse_rule(&text);

        // A name entry is normalised exactly as a requested name, or the entry would never match.
        if let Ok(Target::Name(name)) = &target {
            let rule = rule.as_ref().map_err(|reason| TestCaseError::fail(format!("entry rejected: {reason}")))?;
            prop_assert_eq!(rule.host(), &RuleHost::Name(name.clone()));
            prop_assert_eq!(rule.port(), None);
        }
        // Text with a port or prefix is no host, so only entries without them must agree.
        let is_host_only = |rule: &Rule| rule.port().is_none() && !text.contains('/');
        match rule.as_ref().map(|rule| (rule.host(), is_host_only(rule))) {
            Ok((RuleHost::Name(name), true)) => prop_assert_eq!(&target, &Ok(Target::Name(name.clone()))),
            Ok((RuleHost::Network(network), true)) => prop_assert_eq!(&target, &Ok(Target::Ip(network.addr()))),
            _ => {}
        }
    }

    /// A target that parses as an IP address is allowed exactly when an IP or CIDR entry
    /// covers it, whatever name and wildcard entries the allowlist holds.
    #[test]
    fn ip_target_needs_an_ip_entry(
        text in host_text(),
        entries in prop::collection::vec(rule_text(), 0..8),
        covering_prefix_len in prop::option::weighted(0.3, 1u8..=32),
        port in 1u16..,
    ) {
        let Ok(target @ Target::Ip(addr)) = parse_target(&text) else { return Ok(()) };
        let mut allow: Vec<Rule> = entries.iter().filter_map(|entry| parse_rule(entry).ok()).collect();
        // The text itself as an entry: a name entry must never let the address through, and an
        // IP entry covers it.
        allow.extend(parse_rule(&text));
        if let (Some(prefix_len), IpAddr::V4(v4)) = (covering_prefix_len, addr) {
            let network = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            allow.extend(parse_rule(&format!("{}/{prefix_len}", Ipv4Addr::from(network))));
        }
        let rules = Rules { allow, deny: Vec::new() };

        let decision = rules.check_request(&target, port);
        let covered = rules.allow.iter().any(|rule| ip_entry_covers(rule, addr, port));
        prop_assert_eq!(decision.is_allowed(), covered, "{} ({}): {:?}", text, addr, decision);
    }

    /// Every spelling of an IPv4 address that `inet_aton` accepts parses to that address:
    /// decimal, octal and hexadecimal parts, one to four of them, with a trailing dot or not.
    #[test]
    fn ipv4_spellings_parse_to_one_address(
        addr in any::<u32>().prop_map(Ipv4Addr::from),
        parts in 1usize..=4,
        radixes in prop::collection::vec(radix(), 4),
        trailing_dot in any::<bool>(),
        port in 1u16..,
    ) {
        let text = spell_ipv4(addr, parts, &radixes, trailing_dot);
        let target = parse_target(&text);
        prop_assert_eq!(&target, &Ok(Target::Ip(IpAddr::V4(addr))), "{}", text);
        let target = Target::Ip(IpAddr::V4(addr));

        // Entries take only the canonical form, and every spelling is decided like it.
        let canonical = addr.to_string();
        prop_assert_eq!(parse_rule(&text).is_ok(), text == canonical, "{}", text);
        let by_address = Rules::from_strings(&[canonical.as_str()], &[]).unwrap();
        prop_assert!(by_address.check_request(&target, port).is_allowed());
        let denied = Rules::from_strings(&["0.0.0.0/1", "128.0.0.0/1"], &[canonical.as_str()]).unwrap();
        prop_assert!(!denied.check_request(&target, port).is_allowed());
        let by_name = Rules::from_strings(&["localhost", "*.example.com"], &[]).unwrap();
        prop_assert!(!by_name.check_request(&target, port).is_allowed());
    }
}

// ---------------------------------------------------------------------------------------------
// A running proxy

/// Panics on the proxy runtime's threads since the first [`Fixture`] started.
static PROXY_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on threads named [`PROXY_THREAD_NAME`], then runs the previous hook. The
/// proxy catches a panicking connection task and goes on serving, so its clients alone would
/// not notice one.
fn count_proxy_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name() == Some(PROXY_THREAD_NAME) {
                PROXY_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A proxy with an allowed echo server and a decoy server that no request may reach, on a
/// runtime of their own, shared by the cases of one property.
///
/// The allowlist admits `127.0.0.1:<echo port>` and `allowed.test:<echo port>` by IP and name
/// entries, and `rebind.test` on every port by a name entry. Every test name resolves to
/// 127.0.0.1, which also hosts the decoy, so `rebind.test:<decoy port>` is what the address
/// check must stop.
struct Fixture {
    proxy: RunningProxy,
    echo: EchoServer,
    decoy: EchoServer,
    runtime: Runtime,
}

impl Fixture {
    fn start() -> Fixture {
        count_proxy_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(PROXY_THREAD_NAME)
            .enable_all()
            .build()
            .unwrap();
        let (proxy, echo, decoy) = runtime.block_on(async {
            let echo = EchoServer::start(LOOPBACK_V4).await;
            let decoy = EchoServer::start(LOOPBACK_V4).await;
            let port = echo.port();
            let allow = [format!("127.0.0.1:{port}"), format!("allowed.test:{port}"), "rebind.test".to_owned()];
            let rules = Rules::from_strings(&allow, &["blocked.test".to_owned()]).unwrap();
            let loopback: &[IpAddr] = &[LOOPBACK_V4];
            let resolver = StubResolver::new(&[
                ("allowed.test", loopback),
                ("rebind.test", loopback),
                ("blocked.test", loopback),
                ("decoy.test", loopback),
                ("localhost", &[LOOPBACK_V4, LOOPBACK_V6]),
            ]);
            let limits = Limits { head_timeout: HEAD_TIMEOUT, ..Limits::default() };
            (RunningProxy::start_with_limits(rules, resolver, limits).await, echo, decoy)
        });
        Fixture { proxy, echo, decoy, runtime }
    }

    /// Replaces the `{echo}` and `{decoy}` placeholders of a generated request with the ports.
    fn fill_ports(&self, text: &str) -> String {
        text.replace("{echo}", &self.echo.port().to_string()).replace("{decoy}", &self.decoy.port().to_string())
    }

    /// Sends `bytes` on a new connection, shutting down the sending side if `half_close`, and
    /// checks that the proxy responds or closes in time. Then checks that it still opens an
    /// allowed CONNECT tunnel, and that it did not connect to the decoy or panic meanwhile.
    fn check_case(&self, bytes: &[u8], half_close: bool) -> Result<(), TestCaseError> {
        // Counted per case, so that shrinking finds the case that reached the decoy or
        // panicked rather than any case after it.
        let decoy_before = self.decoy.accepted();
        let panics_before = PROXY_PANICS.load(Ordering::SeqCst);

        let answered = self.runtime.block_on(async {
            let mut stream = within(TcpStream::connect(self.proxy.addr)).await.unwrap();
            // The proxy may close or reset before it has read everything, which is no failure.
            let _ = stream.write_all(bytes).await;
            if half_close {
                let _ = stream.shutdown().await;
            }
            responds_or_closes(&mut stream, HEAD_TIMEOUT + RESPONSE_MARGIN).await
        });
        prop_assert!(answered, "the proxy neither responded nor closed within {:?}", HEAD_TIMEOUT + RESPONSE_MARGIN);

        // The decoy counts a connection when its accept loop runs, which may be after the
        // client has its response. This round trip gives that loop time to run.
        self.runtime.block_on(async {
            let port = self.echo.port();
            let (response, mut tunnel) = connect(self.proxy.addr, &format!("127.0.0.1:{port}")).await;
            assert_eq!(response.status, 200, "an allowed CONNECT failed after the case: {response:?}");
            assert_echoes(&mut tunnel, b"still serving").await;
        });
        prop_assert_eq!(self.decoy.accepted(), decoy_before, "the proxy connected to the decoy listener");
        prop_assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), panics_before, "a proxy task panicked");
        Ok(())
    }

    /// Runs `property` against this proxy, then stops the proxy and checks that `serve`
    /// returned without an error and that no connection reached the decoy.
    fn run<S: Strategy>(
        self,
        name: &str,
        strategy: S,
        property: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(config(PROXY_CASES));
        let result = runner.run(&strategy, |case| property(&self, case));
        if let Err(error) = result {
            panic!("{name}: {error}");
        }
        let Fixture { proxy, decoy, runtime, .. } = self;
        runtime.block_on(proxy.stop()).expect("serve returned an error");
        assert_eq!(decoy.accepted(), 0, "{name}: the proxy connected to the decoy listener");
    }
}

/// Waits for the first byte of a response or for the end of the connection, and returns `false`
/// if neither comes within `limit`. A reset counts as the end.
async fn responds_or_closes(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, stream.read(&mut buffer)).await.is_ok()
}

/// Replaces ASCII hex digits with `g`, so the text cannot spell an IP address (see the module
/// documentation).
fn without_hex_digits(text: String) -> String {
    text.chars().map(|c| if c.is_ascii_hexdigit() { 'g' } else { c }).collect()
}

fn free_text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(without_hex_digits)
}

/// Hosts a client may request. Every address here, and every address a name here resolves to,
/// is on this machine.
const HOSTS: &[&str] = &[
    "allowed.test",
    "ALLOWED.test.",
    "allowed.test..",
    "rebind.test",
    "decoy.test",
    "blocked.test",
    "unknown.test",
    "localhost",
    "127.0.0.1",
    "127.1",
    "127.0.0.1.",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "127.0.0.256",
    "0.0.0.0",
    "0",
    "[::1]",
    "::1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::1%25lo]",
    "[::1",
    "::1]",
    "allowed.test@decoy.test",
    "decoy.test#@allowed.test",
    "allowed.test%2f",
    "allowed.test\\@decoy.test",
    "*",
    "",
];

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(HOSTS).prop_map(str::to_owned),
        1 => "[g-wyzG-WYZ.:@%\\[\\]_*-]{0,20}",
        1 => free_text(),
    ]
}

/// Generates ports as text: the placeholders of the echo and decoy listeners, any number, or malformed.
fn port_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("{echo}".to_owned()),
        3 => Just("{decoy}".to_owned()),
        1 => any::<u16>().prop_map(|port| port.to_string()),
        1 => select(&["0", "65536", "+80", "-1", "0x50", "", " 80", "99999999999999999999999"][..]).prop_map(str::to_owned),
    ]
}

fn authority() -> impl Strategy<Value = String> {
    (host(), prop::option::weighted(0.9, port_text())).prop_map(|(host, port)| match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

fn request_target() -> impl Strategy<Value = String> {
    let scheme = select(&["http://", "HTTP://", "https://", "ftp://", "ws://", "//", "http:/", "http:///"][..]);
    let path = prop_oneof![Just(String::new()), Just("/".to_owned()), "/[ -~&&[^0-9a-fA-F]]{0,16}"];
    prop_oneof![
        3 => authority(),
        4 => (scheme, authority(), path).prop_map(|(scheme, authority, path)| format!("{scheme}{authority}{path}")),
        1 => select(&["/", "*", "/path?query", ""][..]).prop_map(str::to_owned),
        1 => free_text(),
    ]
}

fn method() -> impl Strategy<Value = String> {
    let common = ["CONNECT", "GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE", "connect", "get", "PRI"];
    prop_oneof![
        12 => select(common.to_vec()).prop_map(str::to_owned),
        1 => "[g-zG-Z!#$%&'*+.^_`|~-]{1,10}",
        1 => free_text(),
    ]
}

fn version() -> impl Strategy<Value = String> {
    let unusual = ["HTTP/1.0", "HTTP/2", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1 x", "http/1.1", "HTTP/1.10", ""];
    prop_oneof![
        12 => Just("HTTP/1.1".to_owned()),
        1 => select(unusual.to_vec()).prop_map(str::to_owned),
        1 => free_text(),
    ]
}

fn header() -> impl Strategy<Value = String> {
    let valid = [
        "Content-Length: 5",
        "Content-Length: 0",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "Connection: keep-alive, Upgrade, Host",
        "Upgrade: websocket",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Expect: 100-continue",
        "TE: trailers",
    ];
    let malformed = [
        "Content-Length: -1",
        "Content-Length: 5, 6",
        "Content-Length: 99999999999999999999",
        "Transfer-Encoding: gzip, chunked",
        " folded: continuation",
        "NoColon",
        ": empty name",
    ];
    prop_oneof![
        4 => authority().prop_map(|authority| format!("Host: {authority}")),
        4 => select(valid.to_vec()).prop_map(str::to_owned),
        1 => select(malformed.to_vec()).prop_map(str::to_owned),
        1 => ("[g-zG-Z!#$%&'*+.^_`|~-]{1,12}", "[ -~&&[^0-9a-fA-F]]{0,24}").prop_map(|(name, value)| format!("{name}: {value}")),
        1 => free_text(),
    ]
}

/// Generates request heads with every part random, which are mostly malformed.
fn noisy_head() -> impl Strategy<Value = String> {
    let end = prop_oneof![8 => Just("\r\n\r\n"), 1 => Just("\n\n"), 1 => Just("\r\n"), 1 => Just("")];
    (method(), request_target(), version(), prop::collection::vec(header(), 0..4), end).prop_map(
        |(method, target, version, headers, end)| {
            let mut lines = vec![format!("{method} {target} {version}")];
            lines.extend(headers);
            lines.join("\r\n") + end
        },
    )
}

/// Generates well-formed CONNECT and absolute-URI requests for a listed destination, with a
/// matching `Host` header or none. These reach the proxy's decisions rather than hyper's parse
/// errors.
fn plausible_head() -> impl Strategy<Value = String> {
    let kind = select(&["CONNECT", "GET", "POST"][..]);
    let port = prop_oneof![Just("{echo}"), Just("{decoy}")];
    (kind, select(HOSTS), port, any::<bool>()).prop_map(|(kind, host, port, with_host)| {
        let authority = format!("{host}:{port}");
        let target = if kind == "CONNECT" { authority.clone() } else { format!("http://{authority}/") };
        let host_header = if with_host { format!("Host: {authority}\r\n") } else { String::new() };
        format!("{kind} {target} HTTP/1.1\r\n{host_header}\r\n")
    })
}

/// Generates an HTTP request head followed by some body bytes, and whether the client shuts
/// down its sending side after them.
fn http_request() -> impl Strategy<Value = (String, Vec<u8>, bool)> {
    let body = prop::collection::vec(any::<u8>(), 0..16)
        .prop_map(|bytes| bytes.into_iter().map(|byte| if byte.is_ascii_hexdigit() { b'g' } else { byte }).collect());
    (prop_oneof![noisy_head(), plausible_head()], body, prop::bool::weighted(0.8))
}

#[test]
fn http_requests_stay_on_allowlist() {
    Fixture::start().run("HTTP requests", http_request(), |fixture, (head, body, half_close)| {
        let mut bytes = fixture.fill_ports(&head).into_bytes();
        bytes.extend_from_slice(&body);
        fixture.check_case(&bytes, half_close)
    });
}

/// Sends arbitrary bytes, which may start like either protocol or like neither.
#[test]
fn raw_bytes_stay_on_allowlist() {
    let raw = (prop::collection::vec(any::<u8>(), 0..256), prop::bool::weighted(0.8));
    Fixture::start().run("raw bytes", raw, |fixture, (bytes, half_close)| {
        let bytes: Vec<u8> = bytes.into_iter().map(|byte| if byte.is_ascii_hexdigit() { b'g' } else { byte }).collect();
        fixture.check_case(&bytes, half_close)
    });
}

/// The port of a SOCKS5 request.
#[derive(Debug, Clone)]
enum SocksPort {
    Echo,
    Decoy,
    Other(u16),
}

/// The destination of a SOCKS5 request, as sent.
#[derive(Debug, Clone)]
enum SocksAddress {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// A domain name, with a length byte that may disagree with the name's length.
    Domain {
        length: Option<u8>,
        name: Vec<u8>,
    },
    /// An unknown address type followed by some bytes.
    Unknown {
        address_type: u8,
        bytes: Vec<u8>,
    },
}

/// A SOCKS5 greeting and request with every field generated, possibly cut short.
#[derive(Debug, Clone)]
struct SocksMessage {
    methods: Vec<u8>,
    /// The method count as sent, when it disagrees with `methods`.
    method_count: Option<u8>,
    version: u8,
    command: u8,
    reserved: u8,
    address: SocksAddress,
    port: SocksPort,
    trailing: Vec<u8>,
    cut: Option<Index>,
    half_close: bool,
}

impl SocksMessage {
    fn encode(&self, fixture: &Fixture) -> Vec<u8> {
        let method_count = self.method_count.unwrap_or(u8::try_from(self.methods.len()).unwrap());
        let mut bytes = vec![0x05, method_count];
        bytes.extend_from_slice(&self.methods);
        bytes.extend_from_slice(&[self.version, self.command, self.reserved]);
        match &self.address {
            SocksAddress::Ipv4(addr) => {
                bytes.push(0x01);
                bytes.extend_from_slice(&addr.octets());
            }
            SocksAddress::Ipv6(addr) => {
                bytes.push(0x04);
                bytes.extend_from_slice(&addr.octets());
            }
            SocksAddress::Domain { length, name } => {
                bytes.push(0x03);
                bytes.push(length.unwrap_or(u8::try_from(name.len()).unwrap()));
                bytes.extend_from_slice(name);
            }
            SocksAddress::Unknown { address_type, bytes: rest } => {
                bytes.push(*address_type);
                bytes.extend_from_slice(rest);
            }
        }
        let port = match self.port {
            SocksPort::Echo => fixture.echo.port(),
            SocksPort::Decoy => fixture.decoy.port(),
            SocksPort::Other(port) => port,
        };
        bytes.extend_from_slice(&port.to_be_bytes());
        bytes.extend_from_slice(&self.trailing);
        if let Some(cut) = &self.cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    }
}

fn socks_address() -> impl Strategy<Value = SocksAddress> {
    let ipv4 = prop_oneof![
        Just(Ipv4Addr::LOCALHOST),
        Just(Ipv4Addr::UNSPECIFIED),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(127, b, c, d)),
    ];
    let ipv6 = prop_oneof![
        Just(Ipv6Addr::LOCALHOST),
        Just(Ipv6Addr::UNSPECIFIED),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(127, b, c, d).to_ipv6_mapped()),
    ];
    let name = prop_oneof![
        4 => select(HOSTS).prop_map(|host| host.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|bytes| bytes.into_iter().map(|byte| if byte.is_ascii_hexdigit() { b'g' } else { byte }).collect()),
    ];
    let length = prop::option::weighted(0.1, any::<u8>());
    prop_oneof![
        2 => ipv4.prop_map(SocksAddress::Ipv4),
        2 => ipv6.prop_map(SocksAddress::Ipv6),
        4 => (length, name).prop_map(|(length, name)| SocksAddress::Domain { length, name }),
        1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(address_type, bytes)| SocksAddress::Unknown { address_type, bytes }),
    ]
}

fn socks_message() -> impl Strategy<Value = SocksMessage> {
    let methods = prop_oneof![3 => Just(vec![0x00]), 1 => prop::collection::vec(any::<u8>(), 0..6)];
    let port = prop_oneof![3 => Just(SocksPort::Echo), 3 => Just(SocksPort::Decoy), 1 => any::<u16>().prop_map(SocksPort::Other)];
    let usually = |value: u8| prop_oneof![8 => Just(value), 1 => any::<u8>()];
    (
        (methods, prop::option::weighted(0.1, any::<u8>()), usually(0x05), usually(0x01), usually(0x00)),
        (socks_address(), port, prop::collection::vec(any::<u8>(), 0..8), prop::option::weighted(0.2, any::<Index>())),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |((methods, method_count, version, command, reserved), (address, port, trailing, cut), half_close)| {
                SocksMessage {
                    methods,
                    method_count,
                    version,
                    command,
                    reserved,
                    address,
                    port,
                    trailing,
                    cut,
                    half_close,
                }
            },
        )
}

#[test]
fn socks5_requests_stay_on_allowlist() {
    Fixture::start().run("SOCKS5 requests", socks_message(), |fixture, message| {
        fixture.check_case(&message.encode(fixture), message.half_close)
    });
}
