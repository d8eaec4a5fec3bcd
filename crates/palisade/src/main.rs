//! The `palisade` command: parses the command line, runs, prints any error once, and maps the
//! outcome to the documented exit status.
//!
//! On Linux the process starts in [`start`], not behind the standard library's runtime start.
#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

mod cli;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "linux")]
mod mcp;
mod report;
#[cfg(any(target_os = "linux", windows, target_os = "macos"))]
mod selftest;
#[cfg(all(target_os = "linux", not(test)))]
mod start;
#[cfg(windows)]
mod windows;

#[cfg(any(not(target_os = "linux"), test))]
use std::process::ExitCode;

use cli::{Cli, Command};

/// Exit status when palisade itself failed: bad policy, setup failure, missing layer.
const EXIT_PALISADE_FAILED: u8 = 125;
/// Exit status when the wall-clock timeout ended the run.
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when palisade killed the run at a limit: that of a SIGKILL (128 + 9). The
/// report names the limit.
const EXIT_KILLED_AT_LIMIT: u8 = 137;

#[cfg(any(not(target_os = "linux"), test))]
fn main() -> ExitCode {
    ExitCode::from(palisade_main())
}

/// Runs palisade and returns its exit status.
fn palisade_main() -> u8 {
    // Sanitise first: nothing inherited may leak into the sandbox. On Windows, a new process
    // inherits only the handles palisade passes in its handle list. On macOS, the stage closes
    // every inherited descriptor before it becomes the command.
    #[cfg(target_os = "linux")]
    if let Err(error) = palisade_linux::close_inherited_descriptors() {
        eprintln!("palisade: error: {error}");
        return EXIT_PALISADE_FAILED;
    }
    // Usage errors exit with 125 like every other failure of palisade itself, so a harness can
    // tell them from the command's own statuses. Help and version still exit 0.
    let cli = match Cli::parse_command_line() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_PALISADE_FAILED } else { 0 };
            let _ = error.print();
            return code;
        }
    };
    // The runner exits with the command's 32-bit exit code, which ExitCode cannot carry, and
    // logs nothing: its stderr is the command's.
    #[cfg(windows)]
    if let Command::WindowsRunner = cli.command {
        std::process::exit(windows::runner() as i32);
    }
    // The stage becomes the command and shares its stderr, so it logs nothing. It closes the
    // descriptors it inherited itself, after reading its request from one of them.
    #[cfg(target_os = "macos")]
    if let Command::MacosStage = cli.command {
        std::process::exit(macos::stage());
    }
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("palisade: error: {}", error_message(&error));
            EXIT_PALISADE_FAILED
        }
    }
}

/// Joins the error's chain with ": ", as anyhow's `{:#}` does, but leaves out a cause whose
/// text the message already ends with: some errors print their source in their own message.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.is_empty() && message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn init_logging() {
    // Colours only for a terminal: a harness that captures stderr gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).without_time();
    // Without PALISADE_LOG (or with a value that does not parse), warnings only. That case gets
    // a plain level filter, because building an EnvFilter took about 15 us of every run.
    match std::env::var_os("PALISADE_LOG").and_then(|_| tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG").ok()) {
        Some(filter) => builder.with_env_filter(filter).init(),
        None => builder.with_max_level(tracing::Level::WARN).init(),
    }
}

#[cfg(target_os = "linux")]
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => cli::run(args),
        Command::Policy(args) => cli::print_policy(args),
        Command::Check(args) => cli::check(args),
        Command::Mcp(args) => mcp::serve(args),
        Command::SessionHost(args) => cli::session_host(args),
        Command::Selftest(args) => selftest::run(args),
        Command::SelftestProbe(args) => selftest::probe(args),
    }
}

#[cfg(windows)]
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => windows::run(args),
        Command::Policy(args) => cli::print_policy(args),
        Command::Check(args) => windows::check(args),
        Command::Setup(args) => windows::setup(args),
        Command::Selftest(args) => selftest::run(args),
        Command::SelftestProbe(args) => selftest::probe(args),
        Command::WindowsRunner => unreachable!("the runner is started before logging"),
    }
}

#[cfg(target_os = "macos")]
fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => macos::run(args),
        Command::Policy(args) => cli::print_policy(args),
        Command::Check(args) => macos::check(args),
        Command::Selftest(args) => selftest::run(args),
        Command::SelftestProbe(args) => selftest::probe(args),
        Command::MacosStage => unreachable!("the stage is started before logging"),
    }
}

#[cfg(target_os = "linux")]
pub(crate) fn exit_code_for(exit: palisade_linux::Exit) -> u8 {
    match exit {
        palisade_linux::Exit::Code(code) => code.clamp(0, 255) as u8,
        palisade_linux::Exit::Signal(signal) => (128 + signal).clamp(0, 255) as u8,
        palisade_linux::Exit::TimedOut => EXIT_TIMED_OUT,
        // A limit kill is a SIGKILL; the report names the limit.
        palisade_linux::Exit::Killed(_) => EXIT_KILLED_AT_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[derive(Debug)]
    struct Repeating(std::io::Error);

    impl std::fmt::Display for Repeating {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failed to open the file: {}", self.0)
        }
    }

    impl std::error::Error for Repeating {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_message_prints_each_cause_once() {
        let error = anyhow::Error::new(Repeating(std::io::Error::other("access denied"))).context("setup failed");
        assert_eq!(error_message(&error), "setup failed: failed to open the file: access denied");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), "outer: inner");
    }
}
