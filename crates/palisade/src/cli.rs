//! Command-line definitions and the glue from flags to the policy and the backend.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use palisade_policy::{Context, Overrides, Policy, RawPolicy};

#[cfg(target_os = "linux")]
use crate::{exit_code_for, report};

/// The description of palisade in `palisade --help`.
const ABOUT: &str = "Run a command in a sandbox made for AI coding agents";
/// The description of `palisade run` in the help.
const RUN_ABOUT: &str = "Run a command in a sandbox.";

#[derive(Debug, Parser)]
#[command(name = "palisade", version, about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses this process's command line.
    pub fn parse_command_line() -> Result<Cli, clap::Error> {
        Cli::parse_args(std::env::args_os().collect())
    }

    /// Parses `args`, the program name first. A command line that starts with `run` is parsed
    /// by [`RunOnly`], which builds only the arguments of `run`: building those of every
    /// subcommand costs about 0.1 ms of each run (docs/benchmarks.md). The result, the help
    /// and the errors are the same either way (tested).
    fn parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        if args.get(1).is_some_and(|first| first == "run") {
            let RunOnly { command: RunCommand::Run(run) } = RunOnly::try_parse_from(args)?;
            return Ok(Cli { command: Command::Run(run) });
        }
        Cli::try_parse_from(args)
    }
}

/// [`Cli`] with `run` as its only subcommand.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about = ABOUT)]
struct RunOnly {
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    #[command(about = RUN_ABOUT)]
    Run(RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = RUN_ABOUT)]
    Run(RunArgs),
    /// Print the effective policy as TOML.
    Policy(PolicyArgs),
    /// Report which protection layers this machine offers the current user, and how to enable
    /// the missing ones. Exits 0 when the default policy can be fully enforced.
    Check(CheckArgs),
    /// Serve the Model Context Protocol on stdin and stdout, with tools that run commands in
    /// the sandbox. Tool calls may narrow the policy options but not widen them.
    #[cfg(target_os = "linux")]
    Mcp(McpArgs),
    /// Internal to `palisade mcp`: host a session on an inherited socket.
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    SessionHost(SessionHostArgs),
    /// Try a built-in set of escapes in the sandbox on this machine and print which protections
    /// held. Exits 0 when every probe that ran held and 1 when one did not.
    #[cfg(any(target_os = "linux", windows, target_os = "macos"))]
    Selftest(crate::selftest::SelftestArgs),
    /// Internal to `palisade selftest`: make one probe's attempt inside the sandbox.
    #[cfg(any(target_os = "linux", windows, target_os = "macos"))]
    #[command(hide = true)]
    SelftestProbe(crate::selftest::ProbeArgs),
    /// Prepare this machine, once, for confined runs of the calling user: create the two
    /// sandbox accounts, apply the ACL entries the policy needs and install the firewall
    /// filters. Run it as an administrator, with the policy options later runs use.
    #[cfg(windows)]
    Setup(SetupArgs),
    /// Internal to `palisade run`: the process that starts the command as the sandbox account.
    #[cfg(windows)]
    #[command(hide = true)]
    WindowsRunner,
    /// Internal to `palisade run`: the process that applies the Seatbelt profile and becomes
    /// the command.
    #[cfg(target_os = "macos")]
    #[command(hide = true)]
    MacosStage,
}

/// The arguments of `palisade setup`.
#[cfg(windows)]
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Check every step and print what setup would do, changing nothing. Needs no
    /// administrator.
    #[arg(long)]
    pub dry_run: bool,
}

/// The arguments of `palisade session-host`, which `palisade mcp` starts for each session.
#[cfg(target_os = "linux")]
#[derive(Debug, Args)]
pub struct SessionHostArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The inherited descriptor of the session's socket.
    #[arg(long, value_name = "FD")]
    pub socket_fd: i32,
    /// As for `palisade run`.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Every limit also takes \"unlimited\", which lifts its default.")]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Write each network request the proxy refuses to FILE as one JSON line, as it happens
    /// (FILE may be a named pipe or /dev/fd/N).
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Give the command a pseudo-terminal of its own as stdin, stdout, stderr and controlling
    /// terminal, for programs that need one (editors, REPLs, password prompts). Not with the
    /// unconfined profile or in degraded mode.
    #[cfg(target_os = "linux")]
    #[arg(long)]
    pub pty: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Base profile: read-only, workspace-write (default) or unconfined.
    #[arg(short = 'p', long, value_name = "NAME")]
    pub profile: Option<String>,
    /// TOML policy file; flags given too override it.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    /// The writable project directory (default: the current directory).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Another writable root (repeatable).
    #[arg(long, value_name = "PATH")]
    pub allow_write: Vec<PathBuf>,
    /// Make a path visible, read-only (repeatable).
    #[arg(long, value_name = "PATH")]
    pub allow_read: Vec<PathBuf>,
    /// Hide a path, even inside an allowed one (repeatable).
    #[arg(long, value_name = "PATH")]
    pub deny_read: Vec<PathBuf>,
    /// Network access: none (default), allowlist (only the --allow-domain destinations, through
    /// palisade's proxy) or full (the host's network).
    #[arg(long, value_name = "MODE")]
    pub net: Option<String>,
    /// Allowed destination, such as example.com, *.example.com, example.com:443, 10.0.0.5 or
    /// 10.0.0.0/24 (repeatable; implies --net allowlist).
    #[arg(long, value_name = "PATTERN")]
    pub allow_domain: Vec<String>,
    /// Make the exact names of --allow-domain resolve inside the sandbox, to loopback addresses
    /// where palisade connects plain TCP clients (ssh, database drivers) to them. Ports: the
    /// entry's, or 80 and 443.
    #[arg(long)]
    pub resolve_allowed: bool,
    /// A TCP port the command may listen on. Once one is given, it may listen on no other
    /// (repeatable; 0 allows ports the kernel picks; default: any).
    #[arg(long, value_name = "PORT")]
    pub allow_listen: Vec<String>,
    /// A TCP port of the sandbox's loopback that the host reaches at 127.0.0.1:PORT, for dev
    /// servers (repeatable; not with --net full).
    #[arg(long, value_name = "PORT")]
    pub expose: Vec<String>,
    /// Wall-clock limit, such as 30s or 5m; every process of the run is killed when it expires
    /// (default: none).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// CPU time of all processes together, such as 10m (default: none).
    #[arg(long, value_name = "DURATION")]
    pub cpu_time: Option<String>,
    /// Memory of all processes together, swap included, such as 512M or 2G (default: half the
    /// machine's memory).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Processes and threads at once (default: 4096).
    #[arg(long, value_name = "N")]
    pub max_procs: Option<String>,
    /// Size of any one file the command writes, such as 1G (default: 16G).
    #[arg(long, value_name = "SIZE")]
    pub max_file_size: Option<String>,
    /// Open files per process (default: 65536, or less if palisade has less).
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<String>,
    /// Size of the temporary filesystem that /tmp, /var/tmp, /dev/shm, the home directory and
    /// the cache layers share (default: 4G, or a quarter of the machine's memory if less).
    #[arg(long, value_name = "SIZE")]
    pub tmp_size: Option<String>,
    /// Bytes of stdout and stderr together; past it the output is cut and the run stopped
    /// (default: none).
    #[arg(long, value_name = "SIZE")]
    pub max_output: Option<String>,
    /// CPU bandwidth, such as 1.5 CPUs; needs a delegated cgroup v2 (default: none).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Pass a variable through (NAME) or set it (NAME=VALUE) (repeatable).
    #[arg(long, value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Write the run report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run with the layers available when some are missing.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Allow ptrace inside the sandbox, for debuggers and strace.
    #[arg(long)]
    pub allow_ptrace: bool,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Args)]
#[command(after_help = "Each tool call may narrow these options (a shorter --timeout, a directory inside the \
workspace) but never widen them. Each result carries its run's report, so --report is not accepted. Exits 0 \
when the client closes stdin or on SIGTERM, SIGINT or SIGHUP, and 125 when the policy is invalid.")]
pub struct McpArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PolicyArgs {
    pub(crate) fn resolve(&self) -> anyhow::Result<Policy> {
        let context = Context::from_process().context("failed to read the current directory")?;
        self.resolve_in(&context)
    }

    /// Resolves these options against `context` instead of the current process's directory,
    /// home and environment.
    pub(crate) fn resolve_in(&self, context: &Context) -> anyhow::Result<Policy> {
        let raw = match &self.policy_file {
            Some(path) => RawPolicy::from_file(path)?,
            None => RawPolicy::default(),
        };
        let overrides = Overrides {
            profile: self.profile.clone(),
            workspace: self.workspace.clone(),
            allow_write: self.allow_write.clone(),
            allow_read: self.allow_read.clone(),
            deny_read: self.deny_read.clone(),
            net: self.net.clone(),
            allow_domain: self.allow_domain.clone(),
            resolve_allowed: self.resolve_allowed,
            allow_listen: self.allow_listen.clone(),
            expose: self.expose.clone(),
            timeout: self.timeout.clone(),
            cpu_time: self.cpu_time.clone(),
            memory: self.memory.clone(),
            max_procs: self.max_procs.clone(),
            max_file_size: self.max_file_size.clone(),
            max_open_files: self.max_open_files.clone(),
            tmp_size: self.tmp_size.clone(),
            max_output: self.max_output.clone(),
            cpus: self.cpus.clone(),
            env: self.env.clone(),
            allow_degraded: self.allow_degraded,
            allow_ptrace: self.allow_ptrace,
        };
        // The policy crate reads the machine's memory from /proc, which Windows and macOS lack.
        #[cfg(windows)]
        let context = &Context { memory_total: palisade_windows::sys::machine::memory_total(), ..context.clone() };
        #[cfg(target_os = "macos")]
        let context = &Context { memory_total: palisade_macos::sys::machine::memory_total(), ..context.clone() };
        Ok(palisade_policy::resolve(&raw, &overrides, context)?)
    }

    /// Renders these options as the flags that set them, so that `palisade mcp` can pass its
    /// ceiling on to each `palisade run` it starts, and `palisade selftest` its options to each
    /// probe's run. The pattern lists every field, so a new option fails to compile here until
    /// it is passed on too.
    pub(crate) fn to_flags(&self) -> Vec<OsString> {
        let PolicyArgs {
            profile,
            policy_file,
            workspace,
            allow_write,
            allow_read,
            deny_read,
            net,
            allow_domain,
            resolve_allowed,
            allow_listen,
            expose,
            timeout,
            cpu_time,
            memory,
            max_procs,
            max_file_size,
            max_open_files,
            tmp_size,
            max_output,
            cpus,
            env,
            report,
            allow_degraded,
            allow_ptrace,
        } = self;
        let mut flags: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: &std::ffi::OsStr| {
            flags.push(flag.into());
            flags.push(value.to_owned());
        };
        let texts = [
            ("--profile", profile),
            ("--net", net),
            ("--timeout", timeout),
            ("--cpu-time", cpu_time),
            ("--memory", memory),
            ("--max-procs", max_procs),
            ("--max-file-size", max_file_size),
            ("--max-open-files", max_open_files),
            ("--tmp-size", tmp_size),
            ("--max-output", max_output),
            ("--cpus", cpus),
        ];
        for (flag, value) in texts {
            if let Some(value) = value {
                push(flag, value.as_ref());
            }
        }
        for (flag, value) in [("--policy", policy_file), ("--workspace", workspace), ("--report", report)] {
            if let Some(value) = value {
                push(flag, value.as_os_str());
            }
        }
        for (flag, values) in [("--allow-write", allow_write), ("--allow-read", allow_read), ("--deny-read", deny_read)] {
            for value in values {
                push(flag, value.as_os_str());
            }
        }
        for (flag, values) in [("--allow-domain", allow_domain), ("--allow-listen", allow_listen), ("--expose", expose), ("--env", env)] {
            for value in values {
                push(flag, value.as_ref());
            }
        }
        for (flag, set) in [("--resolve-allowed", resolve_allowed), ("--allow-degraded", allow_degraded), ("--allow-ptrace", allow_ptrace)] {
            if *set {
                flags.push(flag.into());
            }
        }
        flags
    }
}

#[cfg(target_os = "linux")]
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let launch = |policy: &Policy, notice: &mut dyn FnMut(&palisade_linux::Layers)| -> anyhow::Result<palisade_linux::Outcome> {
        let events = args.events.as_deref().map(report::event_sink).transpose()?;
        let options = palisade_linux::RunOptions { pty: args.pty, exits_after_run: true };
        Ok(palisade_linux::run(policy, &args.command, options, notice, events)?)
    };
    run_and_report(&args.policy, &args.command, launch)
}

#[cfg(target_os = "linux")]
/// The name a session's run report gives as its command.
const SESSION_COMMAND: &str = "(palisade mcp session)";

#[cfg(target_os = "linux")]
pub fn session_host(args: SessionHostArgs) -> anyhow::Result<u8> {
    let mut socket = Some(palisade_linux::session::adopt_socket(args.socket_fd).context("--socket-fd")?);
    let launch = |policy: &Policy, notice: &mut dyn FnMut(&palisade_linux::Layers)| -> anyhow::Result<palisade_linux::Outcome> {
        let events = args.events.as_deref().map(report::event_sink).transpose()?;
        let socket = socket.take().expect("a session starts once");
        Ok(palisade_linux::run_session(policy, socket, notice, events)?)
    };
    run_and_report(&args.policy, &[OsString::from(SESSION_COMMAND)], launch)
}

#[cfg(target_os = "linux")]
/// Resolves the policy, runs `launch`, reports what it did on stderr and in the report file,
/// and returns the exit status. A run refused before it started still gets a report.
fn run_and_report(
    args: &PolicyArgs,
    command: &[OsString],
    launch: impl FnOnce(&Policy, &mut dyn FnMut(&palisade_linux::Layers)) -> anyhow::Result<palisade_linux::Outcome>,
) -> anyhow::Result<u8> {
    let result = launch_and_report(args, command, launch);
    if let (Err(error), Some(path)) = (&result, &args.report) {
        // The report says why nothing ran; the error itself still goes to stderr.
        let policy = args.resolve().ok();
        let _ = report::write(path, &report::refused(command, policy.as_ref(), &format!("{error:#}")));
    }
    result
}

#[cfg(target_os = "linux")]
fn launch_and_report(
    args: &PolicyArgs,
    command: &[OsString],
    launch: impl FnOnce(&Policy, &mut dyn FnMut(&palisade_linux::Layers)) -> anyhow::Result<palisade_linux::Outcome>,
) -> anyhow::Result<u8> {
    let policy = args.resolve()?;
    let mut notice = |layers: &palisade_linux::Layers| {
        // Called once the policy is known to be enforceable, so a refused run prints no warning.
        if policy.profile == palisade_policy::Profile::Unconfined {
            eprintln!("palisade: profile unconfined: the command runs without a sandbox");
        }
        if layers.degraded() {
            eprintln!(
                "palisade: degraded mode: enforced {}; missing {}",
                layers.summary(),
                layers.missing.join("; ")
            );
        }
    };
    let outcome = launch(&policy, &mut notice)?;
    if let Some((_, reason)) = &outcome.exec_error {
        eprintln!("palisade: {reason}");
    }
    // The output limit has its marker in the output already.
    let ended = outcome.limits_reached.iter().filter(|event| event.ended_run && event.limit != palisade_linux::limits::Limit::Output);
    for event in ended {
        eprintln!("palisade: {}", event.message);
    }
    print_network_denials(outcome.network.denials.iter().map(|denial| denial.reason.as_str()), outcome.network.denials_dropped);
    if let Some(path) = &args.report {
        report::write(path, &report::finished(command, &policy, &outcome))?;
    }
    Ok(exit_code_for(outcome.exit))
}

/// Maximum number of distinct proxy refusals printed on stderr after a run. The report lists
/// them all.
pub(crate) const PRINTED_NETWORK_DENIALS: usize = 5;

/// Prints each distinct refusal of the proxy once on stderr, so a person or a model reading the
/// output learns what was blocked and how to allow it, even if the command hid the 403.
/// `reasons` are the messages of the refusals the outcome lists, in order, and `dropped` counts
/// those it did not keep. Every backend prints them this way.
pub(crate) fn print_network_denials<'a>(reasons: impl Iterator<Item = &'a str> + Clone, dropped: u64) {
    // Refusals with the same message read the same, such as one address in several spellings.
    let mut printed: Vec<&str> = Vec::new();
    for reason in reasons.clone() {
        if printed.len() < PRINTED_NETWORK_DENIALS && !printed.contains(&reason) {
            eprintln!("palisade: network: {}", printable(reason));
            printed.push(reason);
        }
    }
    let listed = reasons.filter(|reason| !printed.contains(reason)).count();
    let others = listed as u64 + dropped;
    if others == 0 {
        return;
    }
    let noun = if others == 1 { "refusal" } else { "refusals" };
    if dropped == 0 {
        eprintln!("palisade: network: {others} other {noun}; the run report (--report) lists them");
    } else {
        eprintln!(
            "palisade: network: {others} other {noun}; the run report (--report) lists {listed} of them and counts the rest in network.denials_not_listed"
        );
    }
}

/// Escapes control characters, which a refusal's message may carry from the command's request
/// (a host name in a SOCKS5 request is any bytes), so the command cannot write terminal escape
/// sequences or forged lines into palisade's own output.
pub(crate) fn printable(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}


pub fn print_policy(args: PolicyArgs) -> anyhow::Result<u8> {
    if args.report.is_some() {
        anyhow::bail!("--report applies to `palisade run` only; `palisade policy` runs nothing to report on");
    }
    let policy = args.resolve()?;
    print!("{}", policy.to_toml());
    Ok(0)
}

#[cfg(target_os = "linux")]
pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let layers = palisade_linux::probe::all();
    let full = layers.iter().all(|layer| layer.available || !layer.required);
    let namespaces = layers.iter().any(|layer| layer.name == "namespaces" && layer.available);
    let degraded_possible = palisade_linux::probe::degraded_possible(namespaces);
    if args.json {
        let entries: serde_json::Map<String, serde_json::Value> = layers
            .iter()
            .map(|layer| {
                let value = serde_json::json!({
                    "available": layer.available,
                    "required": layer.required,
                    "detail": layer.detail,
                    "fix": if layer.fix.is_empty() { serde_json::Value::Null } else { layer.fix.clone().into() },
                });
                (layer.name.to_owned(), value)
            })
            .collect();
        let report = serde_json::json!({
            "format": report::FORMAT,
            "layers": entries,
            "default_policy_enforced": full,
            "degraded_mode_possible": degraded_possible.is_ok(),
        });
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value serialises"));
    } else {
        for layer in &layers {
            let state = if layer.available { "yes" } else if layer.required { "NO" } else { "no" };
            println!("{:<11} {state:<4} {}", layer.name, layer.detail);
            if !layer.fix.is_empty() {
                println!("{:<16} fix: {}", "", layer.fix);
            }
        }
        println!("\nNO marks a missing layer the default policy requires.");
        if full {
            println!("The default policy is fully enforced on this machine.");
        } else {
            println!("The default policy cannot be fully enforced here: palisade run refuses without --allow-degraded.");
            match &degraded_possible {
                Ok(()) => println!("With --allow-degraded it runs with the layers marked yes."),
                Err(reason) => println!("--allow-degraded cannot help either: {reason}."),
            }
        }
    }
    Ok(if full { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    use super::printable;
    use super::{Cli, Command};
    use clap::Parser;

    /// The parse of a command line that starts with `run`, its help and its errors are those
    /// of the whole command-line definition.
    #[test]
    fn run_alone_parses_like_full_cli() {
        let lines: &[&[&str]] = &[
            &["palisade", "run", "--", "true"],
            &["palisade", "run", "-w", "/tmp", "--allow-read", "a", "--memory", "1G", "--", "sh", "-c", "exit 3"],
            &["palisade", "run", "--help"],
            &["palisade", "run", "-h"],
            &["palisade", "run"],
            &["palisade", "run", "true"],
            &["palisade", "run", "--version", "--", "true"],
            &["palisade", "run", "--no-such-flag", "--", "true"],
            &["palisade", "run", "--allow-raed", "x", "--", "true"],
            &["palisade", "run", "--timeout", "--", "true"],
        ];
        for line in lines {
            let args: Vec<std::ffi::OsString> = line.iter().map(|arg| arg.into()).collect();
            let whole = Cli::try_parse_from(args.clone());
            let alone = Cli::parse_args(args);
            match (whole, alone) {
                (Ok(whole), Ok(alone)) => assert_eq!(format!("{whole:?}"), format!("{alone:?}"), "{line:?}"),
                (Err(whole), Err(alone)) => {
                    assert_eq!(whole.kind(), alone.kind(), "{line:?}");
                    assert_eq!(whole.render().to_string(), alone.render().to_string(), "{line:?}");
                }
                (whole, alone) => panic!("{line:?}: the whole definition gave {whole:?}, run alone {alone:?}"),
            }
        }
    }

    #[test]
    fn policy_flags_round_trip() {
        let given = [
            "palisade", "run", "-p", "read-only", "--policy", "p.toml", "-w", "ws", "--allow-write", "a", "--allow-write", "b",
            "--allow-read", "r", "--deny-read", "d", "--net", "allowlist", "--allow-domain", "example.com", "--resolve-allowed",
            "--allow-listen", "8080", "--expose", "3000", "--timeout", "10m", "--cpu-time", "1m", "--memory", "1G", "--max-procs", "10",
            "--max-file-size", "1M", "--max-open-files", "100", "--tmp-size", "1G", "--max-output", "1M", "--cpus", "1.5", "--env", "A=1",
            "--env", "B", "--report", "r.json", "--allow-degraded", "--allow-ptrace", "--", "true",
        ];
        let Command::Run(parsed) = Cli::try_parse_from(given).unwrap().command else { panic!("expected run") };
        let mut again: Vec<std::ffi::OsString> = vec!["palisade".into(), "run".into()];
        again.extend(parsed.policy.to_flags());
        again.extend(["--".into(), "true".into()]);
        let Command::Run(reparsed) = Cli::try_parse_from(again).unwrap().command else { panic!("expected run") };
        assert_eq!(format!("{:?}", reparsed.policy), format!("{:?}", parsed.policy));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("\u{1b}]0;title\u{7}\r\npalisade: forged"), "\\u{1b}]0;title\\u{7}\\r\\npalisade: forged");
        assert_eq!(printable("café.test:443 is not on the allowlist"), "café.test:443 is not on the allowlist");
    }
}
