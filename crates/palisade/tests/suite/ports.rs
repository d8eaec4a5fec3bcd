//! Ports across the sandbox's edge: host services on loopback reached from inside (forwarded
//! allow entries), sandbox servers reached from the host (`--expose`), the ports the command
//! may listen on (`--allow-listen`), names that resolve inside (`--resolve-allowed`), and the
//! host's network (`--net full`).
//!
//! The tests that need names run in the network lab. The others use only the loopback of the
//! machine running the tests, with servers the test starts on ports the kernel picks.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::both_identities;
use crate::suite::harness::{palisade_binary, Fixture, Who};
use crate::suite::netlab::{Lab, ALLOWED_ADDRESS, HTTP_PORT, PYTHON};

/// A TCP server on the test machine's 127.0.0.1 that greets every client with `greeting` and
/// counts the connections it accepted.
struct HostService {
    port: u16,
    accepted: Arc<AtomicUsize>,
    _thread: JoinHandle<()>,
}

impl HostService {
    fn start(greeting: &'static str) -> HostService {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let thread = thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = client.write_all(greeting.as_bytes());
                let _ = client.shutdown(Shutdown::Write);
            }
        });
        HostService { port, accepted, _thread: thread }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Returns a port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// The lab address of `git.test` in the ssh test.
const GIT_ADDRESS: &str = "127.0.0.4";

/// A Python probe that connects to 127.0.0.1:PORT (or NAME:PORT) and prints `NAME received
/// TEXT` or `NAME failed ERROR`.
const CONNECT_PROBE: &str = r#"
import socket, sys
label, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=3) as s:
        print(label, "received", s.recv(100).decode().strip())
except OSError as error:
    print(label, "failed", type(error).__name__, error)
"#;

// A service on the host's loopback that an address entry with a port names is reached at its
// usual address from inside, by clients that ignore the proxy variables (a database driver, a
// dev server on localhost). Another port of the host's loopback stays out of reach. Public
// reports: openai/codex#11095 (localhost services unreachable even with the network on),
// anthropic-experimental/sandbox-runtime#165 (no fine-grained loopback rules).
both_identities!(host_service_reached_at_its_address, |f: &Fixture| {
    let allowed = HostService::start("HOST-SERVICE");
    let other = HostService::start("OTHER-SERVICE");
    let entry = format!("127.0.0.1:{}", allowed.port);
    let script = format!(
        "{PYTHON} -c '{CONNECT_PROBE}' allowed 127.0.0.1 {a}; {PYTHON} -c '{CONNECT_PROBE}' localhost localhost {a}; {PYTHON} -c '{CONNECT_PROBE}' other 127.0.0.1 {o}",
        a = allowed.port,
        o = other.port
    );
    let run = f.sandbox_sh(&["--allow-domain", &entry], &script);

    run.expect_code(0);
    assert_eq!(run.lines_starting("allowed "), ["allowed received HOST-SERVICE"], "{}", run.stderr);
    assert_eq!(run.lines_starting("localhost "), ["localhost received HOST-SERVICE"], "{}", run.stderr);
    let other_line = run.lines_starting("other ");
    assert_eq!(other_line.len(), 1, "{}", run.stdout);
    assert!(other_line[0].starts_with("other failed ConnectionRefusedError"), "{}", other_line[0]);
    assert_eq!(allowed.accepted(), 2, "each allowed client reaches the host's service once");
    assert_eq!(other.accepted(), 0, "a port not on the allowlist was reached");
});

// A server the command runs is reachable from the host at the exposed port while the run
// lasts, and the port is closed again once the run ends. Public report:
// anthropic-experimental/sandbox-runtime#165 (a dev server inside the sandbox was unreachable
// from the host).
both_identities!(exposed_port_reaches_sandbox_server, |f: &Fixture| {
    let port = free_port();
    let server = format!(
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\nfor _ in range(2):\n    c, _ = s.accept()\n    c.sendall(b'SANDBOX-SERVER')\n    c.close()\nprint('served')\n"
    );
    let owner = f.as_owner(palisade_binary().to_str().unwrap());
    let mut command = Command::new("timeout");
    command.args(["--kill-after=5", "60"]).arg(owner.get_program()).args(owner.get_args());
    command.args(["run", "--expose", &port.to_string(), "--allow-listen", &port.to_string(), "--", PYTHON, "-c", &server]);
    command.current_dir(&f.ws).env("HOME", &f.home).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();

    let mut greetings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while greetings.len() < 2 && Instant::now() < deadline {
        // Palisade accepts as soon as it listens, but the sandbox's server may not be up yet:
        // such a connection is closed without data, and the client tries again.
        if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let mut text = String::new();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read_to_string(&mut text);
            if !text.is_empty() {
                greetings.push(text);
                continue;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(greetings, ["SANDBOX-SERVER", "SANDBOX-SERVER"], "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.trim(), "served");
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(), "the exposed port is still open after the run");
});

// Once ports to listen on are given, the command can listen on those only, even with the
// host's network, while connections out still work. Public report: Zouuup/landrun#59
// (binding one port made the whole network unrestricted).
both_identities!(listen_ports_limit_binding, |f: &Fixture| {
    let service = HostService::start("HOST-SERVICE");
    let allowed = free_port();
    let probe = r#"
import socket, sys
for port in map(int, sys.argv[1:3]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print("bind", port, "ok")
    except OSError as error:
        print("bind", port, "failed", error.errno)
    s.close()
with socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=3) as c:
    print("egress", c.recv(100).decode())
"#;
    let blocked = if allowed == 65535 { 65534 } else { allowed + 1 };
    let run = f.palisade(&[
        "run", "--net", "full", "--allow-listen", &allowed.to_string(), "--", PYTHON, "-c", probe,
        &allowed.to_string(), &blocked.to_string(), &service.port.to_string(),
    ]);

    run.expect_code(0);
    assert_eq!(run.lines_starting("bind "), [format!("bind {allowed} ok"), format!("bind {blocked} failed 13")], "{}", run.stderr);
    assert_eq!(run.lines_starting("egress "), ["egress HOST-SERVICE"], "{}", run.stderr);
});

// With --net full the command uses the host's network, and the report records the mode.
both_identities!(full_network_is_recorded, |f: &Fixture| {
    let service = HostService::start("HOST-SERVICE");
    let report = f.out.join("full.json");
    let run = f.palisade(&[
        "run", "--net", "full", "--report", report.to_str().unwrap(), "--", PYTHON, "-c", CONNECT_PROBE, "host", "127.0.0.1",
        &service.port.to_string(),
    ]);

    run.expect_code(0);
    assert_eq!(run.lines_starting("host "), ["host received HOST-SERVICE"], "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(value["network"]["mode"], "full");
    assert!(value["network"]["proxy"].is_null(), "{value}");
});

// As root the command runs as an unprivileged uid that no host account has. The sandbox gives
// it one, so programs that look their user up (ssh, whoami) work.
both_identities!(sandbox_user_has_an_account, |f: &Fixture| {
    let run = f.sandbox_sh(&[], "whoami; id -gn");
    run.expect_code(0);
    let expected = match f.who {
        Who::Root => "palisade".to_owned(),
        Who::User => crate::suite::harness::TEST_USER.to_owned(),
    };
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some(expected.as_str()), "{}", run.stderr);
    assert_eq!(lines.len(), 2, "{}", run.stdout);
});

// With --resolve-allowed, an allowed name resolves inside the sandbox, and a client that
// ignores the proxy variables reaches it through palisade, while other names still do not
// resolve and their servers stay unreached. Public reports: NVIDIA/OpenShell#364 and
// openai/codex#22387 (resolver calls failed for allowed domains in clients that do not use a
// proxy).
both_identities!(allowed_names_resolve_on_request, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["getent"]) else { return };
    let upstream = format!("allowed.test:{HTTP_PORT}");
    // A block, not the single address: an entry for one loopback address and port would be
    // forwarded at that address inside, and the name's own address would not be tested.
    let address = format!("{ALLOWED_ADDRESS}/31:{HTTP_PORT}");
    let request = format!(
        "import socket\nwith socket.create_connection(('allowed.test', {HTTP_PORT}), timeout=3) as s:\n    s.sendall(b'GET /plain HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n')\n    print('plain', s.recv(200).decode().splitlines()[-1])\n"
    );
    // The same connection, with a Host header that names another site: the request that a
    // front end shared by many sites would route elsewhere.
    let fronted = format!(
        "import socket\nwith socket.create_connection(('allowed.test', {HTTP_PORT}), timeout=3) as s:\n    s.sendall(b'GET /fronted HTTP/1.0\\r\\nHost: blocked.test\\r\\n\\r\\n')\n    print('fronted', s.recv(200).decode().splitlines()[0])\n"
    );
    let script = format!(
        "getent hosts allowed.test | head -1; getent hosts nothere.test || echo 'nothere: no address'; \
         env -i {PYTHON} -c \"{request}\"; env -i {PYTHON} -c \"{fronted}\"; \
         {PYTHON} -c '{CONNECT_PROBE}' blocked blocked.test {HTTP_PORT}"
    );
    lab.run_sh(&["--resolve-allowed", "--allow-domain", &upstream, "--allow-domain", &address], &script);
    let run = lab.start_one();

    run.expect_code(0);
    assert_eq!(run.line("127.77.0.1"), "127.77.0.1      allowed.test", "allowed.test resolves to palisade's address");
    assert_eq!(run.lines_starting("nothere"), ["nothere: no address"]);
    assert_eq!(run.line("plain "), "plain LAB-OK allowed", "a client without proxy variables reaches the allowed server");
    assert!(run.line("blocked ").starts_with("blocked failed"), "{}", run.describe());
    assert!(run.line("fronted ").ends_with(" 400 Bad Request"), "{}", run.describe());
    assert!(run.received("allowed").contains("GET /plain"), "{:?}", run.records("allowed"));
    assert!(!run.received("allowed").contains("/fronted"), "a request naming another host reached the server: {:?}", run.records("allowed"));
    let tcp_denials: Vec<_> = run.network_denials().into_iter().filter(|denial| denial["protocol"] == "tcp").collect();
    assert_eq!(tcp_denials.len(), 1, "{:?}", run.network_denials());
    run.assert_only_reached(&["allowed"]);
    let forwarded = &run.report()["network"]["forwarded"];
    assert!(forwarded.as_array().unwrap().iter().any(|entry| entry == &format!("allowed.test:{HTTP_PORT} at 127.77.0.1:{HTTP_PORT}")), "{forwarded}");
});

// Git over SSH works with an allowlist: ssh resolves the allowed name inside the sandbox and
// reaches the server through palisade without any proxy setting. A name that is not allowed
// gets nowhere. Public reports: anthropic-experimental/sandbox-runtime#161 and
// anthropics/claude-code#82255 (ssh looked the name up in an empty network namespace, or was
// handed a proxy command it could not use).
both_identities!(ssh_reaches_allowed_name, |f: &Fixture| {
    let Some(mut lab) = Lab::new(f, &["ssh"]) else { return };
    lab.host("git.test", GIT_ADDRESS);
    lab.tcp("ssh-server", GIT_ADDRESS, 22);
    lab.tcp("evil-ssh", "127.0.0.3", 22);
    let ssh = "ssh -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null";
    let script = format!("{ssh} git@git.test true 2>&1 | tail -1; echo git-ssh-done; {ssh} evil.test true 2>&1 | tail -1; echo evil-done");
    // As above, a block keeps the address entry from being forwarded on its own.
    lab.run_sh(&["--resolve-allowed", "--allow-domain", "git.test:22", "--allow-domain", &format!("{GIT_ADDRESS}/31:22")], &script);
    let run = lab.start_one();

    run.expect_code(0);
    assert!(run.received("ssh-server").starts_with("SSH-2.0-"), "ssh did not reach the allowed server: {:?}\n{}", run.records("ssh-server"), run.describe());
    assert!(run.records("evil-ssh").is_empty(), "ssh reached a server that is not allowed: {:?}", run.records("evil-ssh"));
    run.assert_only_reached(&["ssh-server"]);
    assert!(run.stdout.contains("evil-done"), "{}", run.describe());
});
