//! A network lab for the allowlist tests: a network and mount namespace of the test's own, with
//! loggers listening on addresses of its loopback interface, in which `palisade` runs.
//!
//! [`Lab`] describes the lab, and `tests/netlab.py` builds it inside
//! `unshare --net --mount --fork`, as root. The helper adds the addresses to `lo` and
//! bind-mounts a hosts file and a resolv.conf naming `127.0.0.1`. It starts the loggers and
//! proves that each one receives a control message. Then it runs `palisade` (as root, or as the
//! test user through `setpriv`) and collects what every logger received during each run. The
//! namespace has no interface but `lo`, so nothing a test or a broken proxy sends can leave the
//! machine.
//!
//! Every lab has the same names and loggers (see [`Lab::new`]), so each test checks that
//! nothing reached the loggers it did not mean to reach, not only the ones it aimed at.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::suite::harness::{Fixture, palisade_binary, skip};

/// The helper that builds the lab inside the new namespaces.
const LAB_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netlab.py");

/// The python that runs the helper and the probes. The probes need a python that is visible
/// inside the sandbox, which one under a home directory is not.
pub const PYTHON: &str = "/usr/bin/python3";

/// Address of `allowed.test`, the upstream the tests allow.
pub const ALLOWED_ADDRESS: &str = "127.0.0.2";
/// Address of `blocked.test` and `internal.test`.
pub const BLOCKED_ADDRESS: &str = "127.0.0.3";
/// Port of the HTTP loggers on `allowed.test` and `blocked.test`.
pub const HTTP_PORT: u16 = 18080;
/// Port of the TLS loggers on `allowed.test` and `blocked.test`, when a test adds them.
pub const TLS_PORT: u16 = 8443;
/// Port of the logger on the lab's own `127.0.0.1` and `::1`: a service on the loopback of the
/// host that palisade runs on.
pub const HOST_LOOPBACK_PORT: u16 = 18081;
/// A cloud metadata address and a private one, each with an HTTP logger on port 80.
pub const METADATA_ADDRESS: &str = "169.254.169.254";
pub const PRIVATE_ADDRESS: &str = "10.99.0.1";
/// Port of the UDP logger on the lab's `127.0.0.1`.
pub const UDP_PORT: u16 = 19999;

/// Returns the allowlist flags that let a run reach `allowed.test:PORT`. The name entry alone is not
/// enough: the lab puts `allowed.test` on a loopback address, and a name entry never reaches
/// an internal address, so the upstream also needs an entry for its exact address.
pub fn allow_upstream(port: u16) -> Vec<String> {
    vec![
        "--allow-domain".to_owned(),
        format!("allowed.test:{port}"),
        "--allow-domain".to_owned(),
        format!("{ALLOWED_ADDRESS}:{port}"),
    ]
}

/// Programs the lab itself needs on the host.
const LAB_TOOLS: &[&str] = &["unshare", "ip", "mount", "timeout", "setpriv"];

/// Seconds one `palisade` run may take before the lab kills it.
const RUN_TIMEOUT_SECONDS: u64 = 30;

/// Returns whether `program` is an executable file in one of the usual directories.
fn has_program(program: &str) -> bool {
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).is_file())
}

/// Checks once whether this machine lets root create the lab's namespaces, which a container
/// without `CAP_SYS_ADMIN` does not.
fn namespaces_available() -> Result<(), &'static str> {
    static AVAILABLE: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let status = Command::new("unshare").args(["--net", "--mount", "--", "true"]).stderr(Stdio::null()).status();
        match status {
            Ok(status) if status.success() => Ok(()),
            _ => Err("`unshare --net --mount` failed, so the network lab cannot create its namespaces"),
        }
    })
}

/// The description of one lab and the `palisade` runs to make in it.
pub struct Lab<'a> {
    fixture: &'a Fixture,
    hosts: BTreeMap<String, String>,
    loggers: Vec<Value>,
    runs: Vec<Vec<String>>,
    /// The soft and hard limit on open descriptors palisade starts with, if not inherited.
    descriptor_limit: Option<u64>,
    /// Environment variables palisade gets besides the lab's own.
    env: BTreeMap<String, String>,
}

impl<'a> Lab<'a> {
    /// Describes the standard lab, or prints a SKIP line and returns `None` when this machine
    /// cannot build it: the lab needs root to create the namespaces, the programs it runs,
    /// and `tools`, the programs the test runs.
    ///
    /// Names: `allowed.test` is 127.0.0.2; `blocked.test` and `internal.test` are 127.0.0.3.
    /// Loggers, by name:
    ///
    /// - `allowed`, `blocked`: HTTP on `allowed.test` and `blocked.test`, port [`HTTP_PORT`];
    /// - `host-loopback`, `host-loopback-v6`: HTTP on 127.0.0.1 and ::1, port
    ///   [`HOST_LOOPBACK_PORT`];
    /// - `metadata`, `private`: HTTP on 169.254.169.254:80 and 10.99.0.1:80;
    /// - `dns`: UDP on 127.0.0.1:53, the lab's only name server;
    /// - `udp`: UDP on 127.0.0.1:[`UDP_PORT`].
    pub fn new(f: &'a Fixture, tools: &[&str]) -> Option<Lab<'a>> {
        if !is_root() {
            let reason = "the network lab needs root to create a network namespace; run the tests as root";
            skip(&f.name, reason);
            return None;
        }
        let missing: Vec<&str> = LAB_TOOLS.iter().chain(tools).copied().filter(|tool| !has_program(tool)).collect();
        if !missing.is_empty() {
            skip(&f.name, &format!("the network lab needs these programs, which are not installed: {}", missing.join(", ")));
            return None;
        }
        if let Err(reason) = namespaces_available() {
            skip(&f.name, reason);
            return None;
        }
        let mut lab = Lab { fixture: f, hosts: BTreeMap::new(), loggers: Vec::new(), runs: Vec::new(), descriptor_limit: None, env: BTreeMap::new() };
        lab.host("allowed.test", ALLOWED_ADDRESS);
        lab.host("blocked.test", BLOCKED_ADDRESS);
        lab.host("internal.test", BLOCKED_ADDRESS);
        lab.http("allowed", ALLOWED_ADDRESS, HTTP_PORT);
        lab.http("blocked", BLOCKED_ADDRESS, HTTP_PORT);
        lab.http("host-loopback", "127.0.0.1", HOST_LOOPBACK_PORT);
        lab.http("host-loopback-v6", "::1", HOST_LOOPBACK_PORT);
        lab.http("metadata", METADATA_ADDRESS, 80);
        lab.http("private", PRIVATE_ADDRESS, 80);
        lab.udp("dns", "127.0.0.1", 53);
        lab.udp("udp", "127.0.0.1", UDP_PORT);
        Some(lab)
    }

    /// Maps `name` to `address` in the lab's hosts file.
    pub fn host(&mut self, name: &str, address: &str) -> &mut Self {
        self.hosts.insert(name.to_owned(), address.to_owned());
        self
    }

    /// Adds an HTTP logger that responds `LAB-OK NAME` to every request.
    pub fn http(&mut self, name: &str, host: &str, port: u16) -> &mut Self {
        self.logger(json!({"name": name, "kind": "http", "host": host, "port": port}))
    }

    /// Adds an HTTP logger that serves the files under `root`.
    pub fn files(&mut self, name: &str, host: &str, port: u16, root: &Path) -> &mut Self {
        self.logger(json!({"name": name, "kind": "http", "host": host, "port": port, "root": root}))
    }

    /// Adds a TCP logger that records every connection and byte and never responds.
    pub fn tcp(&mut self, name: &str, host: &str, port: u16) -> &mut Self {
        self.logger(json!({"name": name, "kind": "tcp", "host": host, "port": port}))
    }

    /// Adds a UDP logger.
    pub fn udp(&mut self, name: &str, host: &str, port: u16) -> &mut Self {
        self.logger(json!({"name": name, "kind": "udp", "host": host, "port": port}))
    }

    /// Adds a TLS logger with the lab's certificate ([`Lab::certificate`]), which records the
    /// SNI of every handshake and responds `LAB-TLS-OK NAME`. Needs `openssl`.
    pub fn tls(&mut self, name: &str, host: &str, port: u16) -> &mut Self {
        self.logger(json!({"name": name, "kind": "tls", "host": host, "port": port}))
    }

    /// Adds a logger of the ICMP echo requests that arrive at any address of the lab.
    pub fn icmp(&mut self, name: &str) -> &mut Self {
        self.logger(json!({"name": name, "kind": "icmp"}))
    }

    /// Adds an HTTP logger on a UNIX socket at `path`, which every user may connect to.
    pub fn unix(&mut self, name: &str, path: &Path) -> &mut Self {
        self.logger(json!({"name": name, "kind": "unix", "path": path}))
    }

    /// Adds an HTTP logger on an abstract UNIX socket, which belongs to the lab's network
    /// namespace.
    pub fn unix_abstract(&mut self, name: &str, abstract_name: &str) -> &mut Self {
        self.logger(json!({"name": name, "kind": "unix", "abstract": abstract_name}))
    }

    fn logger(&mut self, spec: Value) -> &mut Self {
        self.loggers.push(spec);
        self
    }

    /// Returns the path of the lab's self-signed certificate, which is valid for every name of
    /// the lab. Clients inside the sandbox read it from the workspace as their CA.
    pub fn certificate(&self) -> PathBuf {
        self.fixture.ws.join("lab-ca.pem")
    }

    /// Adds a run of `palisade run FLAGS -- COMMAND`, from the workspace, with the fake home.
    /// The lab adds `--report`, so [`LabRun::report`] contains the run's report.
    pub fn run_command<S: AsRef<str>, T: AsRef<str>>(&mut self, flags: &[S], command: &[T]) -> &mut Self {
        let mut args = vec!["run".to_owned()];
        args.extend(flags.iter().map(|flag| flag.as_ref().to_owned()));
        args.push("--".to_owned());
        args.extend(command.iter().map(|arg| arg.as_ref().to_owned()));
        self.runs.push(args);
        self
    }

    /// Adds a run of `palisade run FLAGS -- /bin/sh -c SCRIPT`.
    pub fn run_sh<S: AsRef<str>>(&mut self, flags: &[S], script: &str) -> &mut Self {
        self.run_command(flags, &["/bin/sh", "-c", script])
    }

    fn report_path(&self, index: usize) -> PathBuf {
        self.fixture.out.join(format!("lab-report-{index}.json"))
    }

    /// The addresses the helper adds to `lo`: every one a logger or a name uses, except those
    /// `lo` carries from the start.
    fn addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self.hosts.values().cloned().collect();
        addresses.extend(self.loggers.iter().filter_map(|logger| logger["host"].as_str().map(str::to_owned)));
        addresses.retain(|address| address != "127.0.0.1" && address != "::1");
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Gives every run the environment variable `name` with `value`.
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Starts every run with `limit` as both the soft and the hard limit on open descriptors.
    pub fn descriptor_limit(&mut self, limit: u64) -> &mut Self {
        self.descriptor_limit = Some(limit);
        self
    }

    /// Builds the command line of one run, as the fixture's user, with `--report` after `run`.
    fn run_argv(&self, index: usize, args: &[String]) -> Vec<String> {
        let owner = self.fixture.as_owner(palisade_binary().to_str().unwrap());
        let mut argv = Vec::new();
        if let Some(limit) = self.descriptor_limit {
            argv.extend(["prlimit".to_owned(), format!("--nofile={limit}:{limit}"), "--".to_owned()]);
        }
        argv.push(owner.get_program().to_string_lossy().into_owned());
        argv.extend(owner.get_args().map(|arg| arg.to_string_lossy().into_owned()));
        argv.extend(["run".to_owned(), "--report".to_owned(), self.report_path(index).to_string_lossy().into_owned()]);
        argv.extend(args.iter().skip(1).cloned());
        argv
    }

    /// Builds the lab, makes every run in order and returns their results.
    pub fn start(&self) -> Vec<LabRun> {
        let f = self.fixture;
        let lab_dir = f.root.join("lab");
        let spec_path = f.root.join("lab-spec.json");
        let result_path = f.root.join("lab-result.json");
        let mut env = json!({
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": f.home,
            "LANG": "C.UTF-8",
        });
        for (name, value) in &self.env {
            env[name] = json!(value);
        }
        let mut runs = Vec::new();
        for (index, args) in self.runs.iter().enumerate() {
            runs.push(json!({"argv": self.run_argv(index, args), "cwd": f.ws, "env": env, "timeout": RUN_TIMEOUT_SECONDS}));
        }
        let spec = json!({
            "dir": lab_dir,
            "cert": self.certificate(),
            "addresses": self.addresses(),
            "hosts": self.hosts,
            "loggers": self.loggers,
            "runs": runs,
        });
        fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

        // The outer guard holds even if both palisade and the helper's own timeout fail.
        let limit = 20 + RUN_TIMEOUT_SECONDS * self.runs.len() as u64;
        let output = Command::new("timeout")
            .args(["--kill-after=5", &limit.to_string(), "unshare", "--net", "--mount", "--fork", "--", PYTHON, LAB_SCRIPT])
            .arg(&spec_path)
            .arg(&result_path)
            .stdin(Stdio::null())
            .output()
            .expect("start the network lab");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the network lab failed ({}):\n{stderr}", output.status);
        let text = fs::read_to_string(&result_path).unwrap_or_else(|error| panic!("the network lab wrote no result: {error}\n{stderr}"));
        let result: Value = serde_json::from_str(&text).expect("the lab's result is JSON");

        let mut runs = Vec::new();
        for (index, run) in result["runs"].as_array().unwrap().iter().enumerate() {
            let report = fs::read_to_string(self.report_path(index)).ok();
            let report = report.map(|text| serde_json::from_str(&text).expect("the report is JSON"));
            runs.push(LabRun::from_json(run, report, &self.runs[index]));
        }
        runs
    }

    /// Builds the lab with a single run and returns its result.
    pub fn start_one(&self) -> LabRun {
        assert_eq!(self.runs.len(), 1, "start_one needs exactly one run");
        self.start().pop().unwrap()
    }
}

/// Returns whether this process's effective uid, the second number of the `Uid:` line, is 0.
fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else { return false };
    let uid_line = status.lines().find(|line| line.starts_with("Uid:"));
    uid_line.and_then(|line| line.split_whitespace().nth(2)) == Some("0")
}

/// One `palisade` run in a lab: its output and exit status, its report, and what each logger
/// received while it ran.
#[derive(Debug)]
pub struct LabRun {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<Value>,
    pub logs: BTreeMap<String, Vec<Value>>,
}

impl LabRun {
    fn from_json(run: &Value, report: Option<Value>, args: &[String]) -> LabRun {
        let logs = run["logs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, records)| (name.clone(), records.as_array().unwrap().clone()))
            .collect();
        LabRun {
            args: args.to_vec(),
            code: run["code"].as_i64().map(|code| code as i32),
            timed_out: run["timed_out"].as_bool().unwrap(),
            seconds: run["seconds"].as_f64().unwrap(),
            stdout: run["stdout"].as_str().unwrap().to_owned(),
            stderr: run["stderr"].as_str().unwrap().to_owned(),
            report,
            logs,
        }
    }

    /// Panics with both output streams unless the exit status is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &LabRun {
        assert_eq!(self.code, Some(code), "unexpected exit status of palisade {:?}\n{}", self.args, self.describe());
        self
    }

    /// Formats the duration and output of the run, for assertion messages.
    pub fn describe(&self) -> String {
        let ending = if self.timed_out { "was killed by the lab's timeout" } else { "ended" };
        format!("palisade {ending} after {} s\nstdout:\n{}\nstderr:\n{}", self.seconds, self.stdout, self.stderr)
    }

    /// Lines of stdout that start with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|line| line.starts_with(prefix)).collect()
    }

    /// Returns the single stdout line that starts with `prefix`, and panics unless there is
    /// exactly one.
    #[track_caller]
    pub fn line(&self, prefix: &str) -> &str {
        let lines = self.lines_starting(prefix);
        assert_eq!(lines.len(), 1, "expected one line starting with {prefix:?}\n{}", self.describe());
        lines[0]
    }

    /// Returns what the logger `name` recorded: one object per connection, datagram or packet,
    /// with `peer`, `text` (every byte received) and, for TLS, `sni`.
    #[track_caller]
    pub fn records(&self, name: &str) -> &[Value] {
        self.logs.get(name).unwrap_or_else(|| panic!("the lab has no logger {name}"))
    }

    /// Returns every byte the logger `name` received, in order.
    pub fn received(&self, name: &str) -> String {
        self.records(name).iter().map(|record| record["text"].as_str().unwrap_or_default()).collect()
    }

    /// Panics unless every logger but those in `reached` recorded nothing.
    #[track_caller]
    pub fn assert_only_reached(&self, reached: &[&str]) {
        for (name, records) in &self.logs {
            if !reached.contains(&name.as_str()) {
                assert!(records.is_empty(), "logger {name} received something during the run: {records:?}\n{}", self.describe());
            }
        }
    }

    /// Panics unless no logger recorded anything.
    #[track_caller]
    pub fn assert_nothing_reached(&self) {
        self.assert_only_reached(&[]);
    }

    /// Returns the run report, and panics when palisade wrote none.
    #[track_caller]
    pub fn report(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| panic!("palisade wrote no report\n{}", self.describe()))
    }

    /// Returns the network denials of the report.
    #[track_caller]
    pub fn network_denials(&self) -> Vec<&Value> {
        let denials = self.report()["denials"].as_array().expect("the report lists denials");
        denials.iter().filter(|denial| denial["kind"] == "network").collect()
    }

    /// Returns the stderr lines in which palisade names a network refusal.
    pub fn network_notices(&self) -> Vec<&str> {
        self.stderr.lines().filter(|line| line.starts_with("palisade: network: ")).collect()
    }
}
