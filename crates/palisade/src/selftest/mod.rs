//! `palisade selftest`: tries a fixed catalogue of escapes in the real sandbox on this machine
//! and reports which protections held.
//!
//! This file is the part every platform shares: the catalogue of probes, the verdicts, the text
//! and JSON output, and the exit status. `attempt.rs` (the probe's result line), `host.rs` (a
//! probe's run seen from the host) and `judge.rs` (the verdicts that need no platform) are
//! shared too, and so is `scratch.rs` (the temporary world) on Linux and macOS. A platform module
//! runs the probes and judges them (`linux.rs`, `windows.rs`, `macos.rs`), each with its own
//! catalogue. Each probe's id is stable, because scripts read the JSON output by
//! id.

mod attempt;
mod host;
mod judge;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as platform;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as platform;
#[cfg(unix)]
mod scratch;
// The verdicts of the macOS probes are pure, so their tests run on every platform.
#[cfg(all(test, not(target_os = "macos")))]
#[path = "macos/judge.rs"]
mod macos_judge;

use std::ffi::OsString;
use std::fmt::Write as _;

use clap::Args;

use crate::cli::PolicyArgs;
use crate::report;

/// Exit status when at least one probe that ran did not hold.
const EXIT_NOT_HELD: u8 = 1;

/// `--max-procs` of the process-limit probe, unless the caller passes one.
pub const PROBE_MAX_PROCS: u64 = 16;
/// How many processes the process-limit probe tries to start at most. It stops there even when
/// nothing stopped it, so a policy without a process limit cannot turn the probe into a fork
/// bomb. macOS has no process-limit probe.
#[cfg_attr(target_os = "macos", allow(dead_code))]
pub const PROBE_PROCESS_ATTEMPTS: u64 = 200;
/// `--timeout` of the timeout probe, in seconds.
pub const PROBE_TIMEOUT_SECONDS: u64 = 1;

#[derive(Debug, Args)]
#[cfg_attr(target_os = "linux", command(after_help = "Each probe runs as its own `palisade run` in a temporary workspace, with HOME set to a \
temporary fake home directory; both are removed afterwards. The options apply to every probe, on top of what \
the probe needs, so `palisade selftest --policy FILE` checks that policy. The workspace, the timeout and the \
report belong to selftest and cannot be given. Exits 0 when every probe that ran held, 1 when one did not, \
and 125 when palisade itself failed."))]
#[cfg_attr(windows, command(after_help = "Each probe runs as its own `palisade run` in a temporary workspace below %TEMP%, with \
USERPROFILE set to a temporary fake home directory; both are removed afterwards. A confined probe needs the \
accounts and filters of `palisade setup`; selftest writes setup's ACL entries on its temporary directory itself. \
The options apply to every probe, on top of what the probe needs, so `palisade selftest --policy FILE` checks \
that policy. The workspace, the timeout and the report belong to selftest and cannot be given. Exits 0 when \
every probe that ran held, 1 when one did not, and 125 when palisade itself failed or setup is missing."))]
#[cfg_attr(target_os = "macos", command(after_help = "Each probe runs as its own `palisade run` in a temporary workspace below $TMPDIR, with \
HOME set to a temporary fake home directory; both are removed afterwards. The options apply to every probe, on top \
of what the probe needs, so `palisade selftest --policy FILE` checks that policy; full-network sets --net full and \
listen-without-egress sets --allow-listen for their own runs. The workspace, the timeout and the report belong to \
selftest and cannot be given. Exits 0 when every probe that ran held, 1 when one did not, and 125 when palisade \
itself failed."))]
pub struct SelftestArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `palisade selftest-probe`, which `palisade selftest` runs inside the sandbox.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The probe's id, from the catalogue.
    pub id: String,
    /// The paths, port or count that the attempt needs.
    pub args: Vec<OsString>,
}

/// The operating systems with a catalogue of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    // A build constructs only its own platform's variant outside the tests.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Linux,
    #[cfg_attr(not(windows), allow(dead_code))]
    Windows,
    #[cfg_attr(not(target_os = "macos"), allow(dead_code))]
    MacOs,
}

impl Platform {
    /// The platform this binary was built for.
    #[cfg(target_os = "linux")]
    pub const CURRENT: Platform = Platform::Linux;
    #[cfg(windows)]
    pub const CURRENT: Platform = Platform::Windows;
    #[cfg(target_os = "macos")]
    pub const CURRENT: Platform = Platform::MacOs;
}

/// One escape attempt of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    WriteOutsideWorkspace,
    WriteInsideWorkspace,
    ReadCredential,
    GitHook,
    SecretEnvironment,
    ConnectHostLoopback,
    ProcessLimit,
    TimeoutDetached,
    UserNamespace,
    Ptrace,
    IoUring,
    Bpf,
    ReadShadow,
    WriteStreamOfProtected,
    WriteCaseVariantOfProtected,
    WriteShortNameOfProtected,
    WriteThroughJunction,
    WriteWhereUsersMayModify,
    ShellExecuteUrl,
    CpuInfo,
    EnvFileHidden,
    ReadCaseVariantOfHidden,
    FullNetwork,
    ListenWithoutEgress,
    NestedSandbox,
}

impl Probe {
    /// The Linux catalogue, in the order the probes run and are printed.
    pub const LINUX: [Probe; 13] = [
        Probe::WriteOutsideWorkspace,
        Probe::WriteInsideWorkspace,
        Probe::ReadCredential,
        Probe::GitHook,
        Probe::SecretEnvironment,
        Probe::ConnectHostLoopback,
        Probe::ProcessLimit,
        Probe::TimeoutDetached,
        Probe::UserNamespace,
        Probe::Ptrace,
        Probe::IoUring,
        Probe::Bpf,
        Probe::ReadShadow,
    ];

    /// The Windows catalogue, in the order the probes run and are printed: the probes Linux
    /// has too, then the ways around file protections that only Windows offers.
    pub const WINDOWS: [Probe; 14] = [
        Probe::WriteOutsideWorkspace,
        Probe::WriteInsideWorkspace,
        Probe::ReadCredential,
        Probe::GitHook,
        Probe::SecretEnvironment,
        Probe::ConnectHostLoopback,
        Probe::ProcessLimit,
        Probe::TimeoutDetached,
        Probe::WriteStreamOfProtected,
        Probe::WriteCaseVariantOfProtected,
        Probe::WriteShortNameOfProtected,
        Probe::WriteThroughJunction,
        Probe::WriteWhereUsersMayModify,
        Probe::ShellExecuteUrl,
    ];

    /// The macOS catalogue, in the order the probes run and are printed. First come the probes
    /// Linux has too, except the process limit, which macOS cannot hold for a run. Then come the
    /// checks of the Seatbelt profile that public reports about other macOS sandboxes call for.
    pub const MACOS: [Probe; 14] = [
        Probe::WriteOutsideWorkspace,
        Probe::WriteInsideWorkspace,
        Probe::ReadCredential,
        Probe::GitHook,
        Probe::SecretEnvironment,
        Probe::ConnectHostLoopback,
        Probe::TimeoutDetached,
        Probe::CpuInfo,
        Probe::EnvFileHidden,
        Probe::WriteCaseVariantOfProtected,
        Probe::ReadCaseVariantOfHidden,
        Probe::FullNetwork,
        Probe::ListenWithoutEgress,
        Probe::NestedSandbox,
    ];

    /// Returns the catalogue of `platform`.
    pub fn catalogue(platform: Platform) -> &'static [Probe] {
        match platform {
            Platform::Linux => &Probe::LINUX,
            Platform::Windows => &Probe::WINDOWS,
            Platform::MacOs => &Probe::MACOS,
        }
    }

    /// Returns the catalogue of the platform this binary was built for.
    pub fn for_this_platform() -> &'static [Probe] {
        Probe::catalogue(Platform::CURRENT)
    }

    pub fn id(self) -> &'static str {
        match self {
            Probe::WriteOutsideWorkspace => "write-outside-workspace",
            Probe::WriteInsideWorkspace => "write-inside-workspace",
            Probe::ReadCredential => "read-credential",
            Probe::GitHook => "git-hook",
            Probe::SecretEnvironment => "secret-environment",
            Probe::ConnectHostLoopback => "connect-host-loopback",
            Probe::ProcessLimit => "process-limit",
            Probe::TimeoutDetached => "timeout-detached",
            Probe::UserNamespace => "user-namespace",
            Probe::Ptrace => "ptrace",
            Probe::IoUring => "io-uring",
            Probe::Bpf => "bpf",
            Probe::ReadShadow => "read-shadow",
            Probe::WriteStreamOfProtected => "write-stream-of-protected",
            Probe::WriteCaseVariantOfProtected => "write-case-variant-of-protected",
            Probe::WriteShortNameOfProtected => "write-short-name-of-protected",
            Probe::WriteThroughJunction => "write-through-junction",
            Probe::WriteWhereUsersMayModify => "write-where-users-may-modify",
            Probe::ShellExecuteUrl => "shell-execute-url",
            Probe::CpuInfo => "cpu-info",
            Probe::EnvFileHidden => "env-file-hidden",
            Probe::ReadCaseVariantOfHidden => "read-case-variant-of-hidden",
            Probe::FullNetwork => "full-network",
            Probe::ListenWithoutEgress => "listen-without-egress",
            Probe::NestedSandbox => "nested-sandbox",
        }
    }

    /// Returns what the probe attempts on this platform and what must happen for the protection
    /// to hold.
    pub fn description(self) -> &'static str {
        self.description_on(Platform::CURRENT)
    }

    /// Returns what the probe attempts on `platform` and what must happen for the protection to
    /// hold.
    pub fn description_on(self, platform: Platform) -> &'static str {
        let wording = match platform {
            Platform::Windows => self.windows_wording(),
            Platform::MacOs => self.macos_wording(),
            Platform::Linux => None,
        };
        if let Some(text) = wording {
            return text;
        }
        match self {
            Probe::WriteOutsideWorkspace => {
                "Create a file in, and append to a file of, a directory outside the workspace that the sandbox shows \
                 read-only; both must fail and the directory must stay unchanged on the host."
            }
            Probe::WriteInsideWorkspace => {
                "Create a file in the workspace; it must succeed and the file must appear on the host, which shows that \
                 the sandbox does not simply refuse everything."
            }
            Probe::ReadCredential => {
                "Read ~/.ssh/id_ed25519 of a fake home directory where selftest planted a fake key; the file must be \
                 absent inside."
            }
            Probe::GitHook => {
                "Create .git/hooks/pre-commit in the workspace's repository; it must fail and no hook may appear on the \
                 host."
            }
            Probe::SecretEnvironment => {
                "Look for PALISADE_SELFTEST_TOKEN, which selftest sets in palisade's environment; the variable must not \
                 reach the command."
            }
            Probe::ConnectHostLoopback => {
                "Connect to a TCP listener that selftest opens on the host's 127.0.0.1; the connection must fail and the \
                 listener must accept none."
            }
            Probe::ProcessLimit => {
                "Start up to 200 processes under --max-procs 16; starting them must fail before the 200th, and no \
                 process may outlive the run."
            }
            Probe::TimeoutDetached => {
                "Start a process that leaves the command's session, then outlive --timeout 1s; the run must end at the \
                 timeout and the detached process must be gone from the host."
            }
            Probe::UserNamespace => "Create a user namespace; it must be refused.",
            Probe::Ptrace => "Attach with ptrace to a child process of the probe; it must be refused.",
            Probe::IoUring => {
                "Call io_uring_setup with a null parameter pointer; it must be refused before the kernel reads the \
                 arguments."
            }
            Probe::Bpf => "Call bpf with an unknown command; it must be refused before the kernel reads the arguments.",
            Probe::ReadShadow => {
                "When palisade runs as root, open /etc/shadow for reading; it must fail, because the command runs as an \
                 unprivileged user."
            }
            Probe::WriteStreamOfProtected => {
                "Write a new alternate data stream of the protected file .git\\config and of the protected directory \
                 .git\\hooks (name:palisade-selftest); both writes must fail and neither stream may appear on the host."
            }
            Probe::WriteCaseVariantOfProtected => {
                "Append to .GiT\\CoNfIg and create .GiT\\HoOkS\\pre-push, case variants of protected paths; both \
                 writes must fail and .git must stay unchanged on the host."
            }
            Probe::WriteShortNameOfProtected => {
                "Append to config and create hooks\\post-checkout through the 8.3 short name of .git (such as GIT~1); both \
                 writes must fail and .git must stay unchanged on the host. Skips where the volume keeps no short names."
            }
            Probe::WriteThroughJunction => {
                "Write through a junction that selftest planted in the workspace and through one the probe creates \
                 there, both leading to a directory outside the workspace; the writes must fail and the directory must \
                 stay unchanged on the host."
            }
            Probe::WriteWhereUsersMayModify => {
                "Create a file in, and append to a file of, a directory outside the workspace whose ACL lets \
                 Authenticated Users modify it; both must fail and the directory must stay unchanged on the host."
            }
            Probe::ShellExecuteUrl => {
                "Open https://palisade-selftest.invalid/ with ShellExecuteExW, as Start-Process does; the call must fail, \
                 or start its handler as a new process inside the run's job. A hand-off to a running process, which the \
                 probe cannot follow, does not hold."
            }
            Probe::CpuInfo => {
                "Read the sysctls hw.ncpu, hw.physicalcpu, hw.model and machdep.cpu.brand_string and call \
                 host_processor_info, which Node's os.cpus() and numpy need, and list processes with /bin/ps; all must \
                 work inside the sandbox, and host_processor_info must report at least one CPU."
            }
            Probe::EnvFileHidden => {
                "From the subdirectory sub of the workspace, with .env, other/.env and sub/.env denied by --deny-read, read \
                 ../.env and ../other/.env, copy ../.env to $TMPDIR and write sub/.env; all must fail, while writing \
                 other/ok.txt must succeed, and the .env files must stay unchanged on the host."
            }
            Probe::ReadCaseVariantOfHidden => {
                "Read .SSH/id_ed25519 and .ssh/ID_ED25519, case variants of the fake key of the read-credential probe, and \
                 hard-link .ssh/id_ed25519 into the workspace. Also hard-link the protected .git/config into the \
                 workspace and append through the link. All must fail, no link may appear on the host, and .git/config \
                 must not change. On a case-sensitive volume the variants name no file, and only the hard links are tested."
            }
            Probe::FullNetwork => {
                "With --net full, connect to a TCP listener on the host's 127.0.0.1, resolve localhost, and connect to a \
                 listener on this machine's own non-loopback address, which stands for the local network without leaving \
                 the machine; all must succeed. It skips when the machine has no such address."
            }
            Probe::ListenWithoutEgress => {
                "With --allow-listen on one port, listen on 127.0.0.1 at that port, which must succeed, and connect to a \
                 listener of the host on another loopback port, which must fail without the listener accepting."
            }
            Probe::NestedSandbox => {
                "Start palisade run inside /usr/bin/sandbox-exec with a profile that allows everything; palisade must refuse \
                 with status 125 and a message that it runs inside a Seatbelt sandbox."
            }
        }
    }

    /// Returns the macOS wording of a probe that another platform has too, where the attempt
    /// differs.
    fn macos_wording(self) -> Option<&'static str> {
        match self {
            Probe::ReadCredential => Some(
                "Read .ssh/id_ed25519 of a fake home directory where selftest planted a fake key and which it makes \
                 readable with --allow-read; the read must fail.",
            ),
            Probe::TimeoutDetached => Some(
                "Start a process that calls setsid and whose parent exits, so that launchd adopts it outside the command's \
                 process group, then outlive --timeout 1s; the run must end at the timeout and the detached process must \
                 be gone from the host.",
            ),
            Probe::WriteCaseVariantOfProtected => Some(
                "Create .GIT/hooks/pre-push and .git/HOOKS/post-checkout and append to .Git/CONFIG, case variants of \
                 protected paths that a case-insensitive volume opens as the protected files; all must fail and .git \
                 must stay unchanged on the host. On a case-sensitive volume the variants are other names, and the \
                 probe is skipped.",
            ),
            _ => None,
        }
    }

    /// Returns the Windows wording of a probe that Linux has too, where the attempt differs.
    fn windows_wording(self) -> Option<&'static str> {
        match self {
            Probe::ReadCredential => Some(
                "Read .ssh\\id_ed25519 of a fake home directory where selftest planted a fake key and which it makes \
                 readable with --allow-read; the read must fail.",
            ),
            Probe::TimeoutDetached => Some(
                "Start a process with DETACHED_PROCESS and CREATE_NEW_PROCESS_GROUP, after trying \
                 CREATE_BREAKAWAY_FROM_JOB, then outlive --timeout 1s; the run must end at the timeout and the detached \
                 process must be gone from the host.",
            ),
            _ => None,
        }
    }

    /// Returns the probe of this platform's catalogue with `id`.
    pub fn from_id(id: &str) -> Option<Probe> {
        Probe::for_this_platform().iter().copied().find(|probe| probe.id() == id)
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The attempt failed as it must, and the host confirms it. The text describes the failure.
    Held(String),
    /// The attempt succeeded, or the host contradicts what the probe reported. The text
    /// describes what happened.
    NotHeld(String),
    /// The probe did not run, for the reason in the text. A skip never counts as held.
    Skipped(String),
}

impl Verdict {
    /// Returns the verdict's name in the JSON output.
    fn name(&self) -> &'static str {
        match self {
            Verdict::Held(_) => "held",
            Verdict::NotHeld(_) => "not_held",
            Verdict::Skipped(_) => "skipped",
        }
    }

    /// Returns the verdict as the text table prints it, in capitals where it needs attention.
    fn label(&self) -> &'static str {
        match self {
            Verdict::Held(_) => "held",
            Verdict::NotHeld(_) => "NOT HELD",
            Verdict::Skipped(_) => "SKIP",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Verdict::Held(detail) | Verdict::NotHeld(detail) | Verdict::Skipped(detail) => detail,
        }
    }
}

/// A probe with its verdict.
#[derive(Debug, Clone)]
pub struct Finding {
    pub probe: Probe,
    pub verdict: Verdict,
}

/// Counts of each verdict.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    held: usize,
    not_held: usize,
    skipped: usize,
}

impl Summary {
    fn of(findings: &[Finding]) -> Summary {
        let mut summary = Summary::default();
        for finding in findings {
            match finding.verdict {
                Verdict::Held(_) => summary.held += 1,
                Verdict::NotHeld(_) => summary.not_held += 1,
                Verdict::Skipped(_) => summary.skipped += 1,
            }
        }
        summary
    }
}

/// Runs every probe and prints the findings. Returns 0 when every probe that ran held and
/// [`EXIT_NOT_HELD`] when one did not; an error means palisade itself failed.
pub fn run(args: SelftestArgs) -> anyhow::Result<u8> {
    let findings = platform::run_probes(&args.policy)?;
    if args.json {
        let text = serde_json::to_string_pretty(&render_json(&findings)).expect("a JSON value serialises");
        println!("{text}");
    } else {
        print!("{}", render_text(&findings));
    }
    Ok(exit_status(&findings))
}

/// Makes one probe's attempt and prints its result, for `palisade selftest-probe` inside the
/// sandbox.
pub fn probe(args: ProbeArgs) -> anyhow::Result<u8> {
    let Some(probe) = Probe::from_id(&args.id) else {
        anyhow::bail!("unknown probe {:?}; the catalogue has {}", args.id, ids().join(", "));
    };
    platform::attempt(probe, &args.args)
}

/// Returns the process limit of the process-limit probe: none for the unconfined profile,
/// the caller's `--max-procs` if given, and [`PROBE_MAX_PROCS`] otherwise. `policy_limit` is
/// the resolved policy's limit, which carries the caller's `--max-procs`.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn probe_process_limit(unconfined: bool, args: &PolicyArgs, policy_limit: Option<u64>) -> Option<u64> {
    if unconfined {
        None
    } else if args.max_procs.is_some() {
        policy_limit
    } else {
        Some(PROBE_MAX_PROCS)
    }
}

fn ids() -> Vec<&'static str> {
    Probe::for_this_platform().iter().map(|probe| probe.id()).collect()
}

fn exit_status(findings: &[Finding]) -> u8 {
    if Summary::of(findings).not_held > 0 { EXIT_NOT_HELD } else { 0 }
}

/// Renders the findings as a table, one line per probe, and a summary line.
fn render_text(findings: &[Finding]) -> String {
    let width = Probe::for_this_platform().iter().map(|probe| probe.id().len()).max().unwrap_or(0);
    let mut text = String::new();
    for finding in findings {
        let _ = writeln!(text, "{:<width$}  {:<8}  {}", finding.probe.id(), finding.verdict.label(), finding.verdict.detail());
    }
    let summary = Summary::of(findings);
    let _ = writeln!(
        text,
        "\n{} probes: {} held, {} not held, {} skipped.",
        findings.len(),
        summary.held,
        summary.not_held,
        summary.skipped
    );
    if summary.not_held > 0 {
        let _ = writeln!(text, "NOT HELD marks a protection that failed on this machine under this policy.");
    } else {
        let _ = writeln!(text, "Every probe that ran held.");
    }
    if summary.skipped > 0 {
        let _ = writeln!(text, "SKIP marks a probe that did not run here; it shows nothing either way.");
    }
    text
}

/// Renders the findings as one JSON object: `format`, `probes` (id, description, verdict,
/// detail, in catalogue order) and `summary`.
fn render_json(findings: &[Finding]) -> serde_json::Value {
    let probes: Vec<serde_json::Value> = findings
        .iter()
        .map(|finding| {
            serde_json::json!({
                "id": finding.probe.id(),
                "description": finding.probe.description(),
                "verdict": finding.verdict.name(),
                "detail": finding.verdict.detail(),
            })
        })
        .collect();
    let summary = Summary::of(findings);
    serde_json::json!({
        "format": report::FORMAT,
        "probes": probes,
        "summary": {
            "held": summary.held,
            "not_held": summary.not_held,
            "skipped": summary.skipped,
            "all_held": summary.not_held == 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLATFORMS: [Platform; 3] = [Platform::Linux, Platform::Windows, Platform::MacOs];

    fn findings(verdicts: &[Verdict]) -> Vec<Finding> {
        Probe::for_this_platform().iter().zip(verdicts).map(|(&probe, verdict)| Finding { probe, verdict: verdict.clone() }).collect()
    }

    #[test]
    fn ids_are_unique_and_round_trip() {
        for &probe in Probe::for_this_platform() {
            assert_eq!(Probe::from_id(probe.id()), Some(probe));
        }
        for platform in PLATFORMS {
            let mut ids: Vec<&str> = Probe::catalogue(platform).iter().map(|probe| probe.id()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), Probe::catalogue(platform).len(), "{platform:?}");
        }
        assert_eq!(Probe::from_id("no-such-probe"), None);
    }

    #[test]
    fn catalogues_share_the_portable_probes() {
        let linux_only = [Probe::UserNamespace, Probe::Ptrace, Probe::IoUring, Probe::Bpf, Probe::ReadShadow];
        for probe in linux_only {
            assert!(!Probe::WINDOWS.contains(&probe), "{probe:?} is a Linux kernel probe");
        }
        let windows_only = [
            Probe::WriteStreamOfProtected,
            Probe::WriteShortNameOfProtected,
            Probe::WriteThroughJunction,
            Probe::WriteWhereUsersMayModify,
            Probe::ShellExecuteUrl,
        ];
        for probe in windows_only {
            assert!(!Probe::LINUX.contains(&probe), "{probe:?} is a Windows probe");
            assert!(!Probe::MACOS.contains(&probe), "{probe:?} is a Windows probe");
        }
        for probe in linux_only.into_iter().chain([Probe::ProcessLimit]) {
            assert!(!Probe::MACOS.contains(&probe), "{probe:?} does not run on macOS");
        }
        assert!(!Probe::LINUX.contains(&Probe::WriteCaseVariantOfProtected), "Linux volumes are case-sensitive");
        let macos_only = [Probe::CpuInfo, Probe::EnvFileHidden, Probe::ReadCaseVariantOfHidden, Probe::FullNetwork, Probe::ListenWithoutEgress, Probe::NestedSandbox];
        for probe in macos_only {
            assert!(!Probe::LINUX.contains(&probe), "{probe:?} is a macOS probe");
            assert!(!Probe::WINDOWS.contains(&probe), "{probe:?} is a macOS probe");
        }
        // Every platform prints the probes it shares first, in the same order.
        assert_eq!(Probe::LINUX[..8], Probe::WINDOWS[..8]);
        assert_eq!(Probe::MACOS[..6], Probe::LINUX[..6]);
        assert_eq!(Probe::MACOS[6], Probe::TimeoutDetached);
    }

    #[test]
    fn probe_of_other_platform_is_unknown() {
        let other = match Platform::CURRENT {
            Platform::Linux => Probe::ShellExecuteUrl,
            Platform::Windows => Probe::Bpf,
            Platform::MacOs => Probe::ProcessLimit,
        };
        assert_eq!(Probe::from_id(other.id()), None);
    }

    #[test]
    fn descriptions_name_the_probe_constants() {
        for platform in PLATFORMS {
            let timeout = Probe::TimeoutDetached.description_on(platform);
            assert!(timeout.contains(&format!("--timeout {PROBE_TIMEOUT_SECONDS}s")), "{timeout}");
            if platform == Platform::MacOs {
                continue;
            }
            let processes = Probe::ProcessLimit.description_on(platform);
            assert!(processes.contains(&format!("up to {PROBE_PROCESS_ATTEMPTS} processes")), "{processes}");
            assert!(processes.contains(&format!("--max-procs {PROBE_MAX_PROCS}")), "{processes}");
        }
    }

    #[test]
    fn windows_wording_differs_where_attempt_does() {
        for probe in Probe::WINDOWS {
            let text = probe.description_on(Platform::Windows);
            assert!(text.ends_with('.'), "{probe:?}: {text}");
            assert!(!text.contains("  "), "{probe:?}: {text}");
        }
        assert!(Probe::ReadCredential.description_on(Platform::Windows).contains(r".ssh\id_ed25519"));
        assert!(Probe::ReadCredential.description_on(Platform::Linux).contains(".ssh/id_ed25519"));
        assert!(Probe::TimeoutDetached.description_on(Platform::Windows).contains("CREATE_BREAKAWAY_FROM_JOB"));
        assert_eq!(Probe::GitHook.description_on(Platform::Windows), Probe::GitHook.description_on(Platform::Linux));
    }

    #[test]
    fn macos_wording_differs_where_attempt_does() {
        for probe in Probe::MACOS {
            let text = probe.description_on(Platform::MacOs);
            assert!(text.ends_with('.'), "{probe:?}: {text}");
            assert!(!text.contains("  "), "{probe:?}: {text}");
        }
        assert!(Probe::ReadCredential.description_on(Platform::MacOs).contains("--allow-read"));
        assert!(Probe::TimeoutDetached.description_on(Platform::MacOs).contains("launchd"));
        assert!(Probe::WriteCaseVariantOfProtected.description_on(Platform::MacOs).contains(".GIT/hooks/pre-push"));
        assert!(Probe::WriteCaseVariantOfProtected.description_on(Platform::Windows).contains(r".GiT\HoOkS\pre-push"));
        assert_eq!(Probe::GitHook.description_on(Platform::MacOs), Probe::GitHook.description_on(Platform::Linux));
    }

    #[test]
    fn exit_status_ignores_skips() {
        let held = Verdict::Held("refused".into());
        let skipped = Verdict::Skipped("not root".into());
        assert_eq!(exit_status(&findings(&[held.clone(), skipped.clone()])), 0);
        assert_eq!(exit_status(&findings(&[skipped, Verdict::NotHeld("connected".into()), held])), EXIT_NOT_HELD);
    }

    #[test]
    fn text_marks_skips_and_failures() {
        let text = render_text(&findings(&[
            Verdict::Held("refused".into()),
            Verdict::NotHeld("created".into()),
            Verdict::Skipped("not root".into()),
        ]));
        let lines: Vec<&str> = text.lines().collect();
        // The ids are padded to the longest id of this platform's catalogue.
        let padding = |id: &str| " ".repeat(Probe::for_this_platform().iter().map(|probe| probe.id().len()).max().unwrap() - id.len());
        assert!(lines[0].starts_with(&format!("write-outside-workspace{}  held", padding("write-outside-workspace"))), "{text}");
        assert!(lines[1].starts_with(&format!("write-inside-workspace{}  NOT HELD  created", padding("write-inside-workspace"))), "{text}");
        assert!(lines[2].starts_with(&format!("read-credential{}  SKIP      not root", padding("read-credential"))), "{text}");
        assert!(text.contains("3 probes: 1 held, 1 not held, 1 skipped."), "{text}");
    }

    #[test]
    fn json_lists_each_probe_and_the_summary() {
        let value = render_json(&findings(&[Verdict::Held("refused".into()), Verdict::Skipped("not root".into())]));
        assert_eq!(value["probes"][0]["id"], "write-outside-workspace");
        assert_eq!(value["probes"][0]["verdict"], "held");
        assert_eq!(value["probes"][0]["detail"], "refused");
        assert_eq!(value["probes"][0]["description"], Probe::WriteOutsideWorkspace.description());
        assert_eq!(value["probes"][1]["verdict"], "skipped");
        assert_eq!(value["summary"]["held"], 1);
        assert_eq!(value["summary"]["skipped"], 1);
        assert_eq!(value["summary"]["all_held"], true);
    }
}
