//! The host side of selftest that every platform shares: the options selftest rejects, how it
//! waits for a probe's `palisade run` and reads its result, and what it compares on the host
//! afterwards.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cli::PolicyArgs;
use crate::selftest::attempt::Attempt;
use crate::selftest::{Probe, PROBE_TIMEOUT_SECONDS};

/// `--timeout` of each probe's run except the timeout probe's, so that a probe that hangs ends
/// there instead of hanging selftest.
pub const RUN_TIMEOUT: &str = "30s";
/// How long selftest waits for a probe's `palisade run` to exit before it kills it: the
/// longest timeout plus time for palisade to end the run and exit.
pub const RUN_LIMIT: Duration = Duration::from_secs(40);
/// How long selftest waits, once a run has exited, for the rest of its output and for its
/// processes to disappear.
pub const SETTLE: Duration = Duration::from_secs(2);
pub const POLL: Duration = Duration::from_millis(20);

/// The credential-like variable that selftest sets for palisade and the probe looks for.
pub const SECRET_VARIABLE: &str = "PALISADE_SELFTEST_TOKEN";

/// Lines of palisade's stderr that concern every probe alike. Selftest prints each once.
pub const NOTICE_PREFIXES: &[&str] = &["palisade: degraded mode", "palisade: profile unconfined"];

/// Rejects the options that selftest sets itself for every probe.
pub fn reject_selftest_options(args: &PolicyArgs) -> anyhow::Result<()> {
    if args.workspace.is_some() {
        anyhow::bail!("--workspace is not accepted by selftest: every probe runs in a temporary workspace of its own");
    }
    if args.timeout.is_some() {
        anyhow::bail!(
            "--timeout is not accepted by selftest: every probe runs with a timeout of its own, and the timeout probe checks one of {PROBE_TIMEOUT_SECONDS}s"
        );
    }
    if args.report.is_some() {
        anyhow::bail!("--report is not accepted by selftest: it runs one sandbox per probe; use --json for a machine-readable result");
    }
    Ok(())
}

/// Returns `args` with each relative path made absolute against the current directory,
/// because the probes run in another directory. Paths starting with `~` or `{workspace}` keep
/// their meaning: the fake home and the temporary workspace.
pub fn with_absolute_paths(args: &PolicyArgs) -> anyhow::Result<PolicyArgs> {
    let mut args = args.clone();
    let paths = args.policy_file.iter_mut().chain(&mut args.allow_write).chain(&mut args.allow_read).chain(&mut args.deny_read);
    for path in paths {
        let text = path.to_string_lossy();
        if path.is_relative() && !text.starts_with('~') && !text.starts_with("{workspace}") {
            *path = std::path::absolute(&*path).with_context(|| format!("failed to make {} absolute", path.display()))?;
        }
    }
    Ok(args)
}

/// The outcome of one probe's `palisade run`.
pub struct Finished {
    pub code: Option<i32>,
    /// The probe's result line, if it printed one.
    pub result: Option<Attempt>,
    pub stderr: String,
}

/// Waits for the `palisade run` of `probe` in `child`, started with piped stdout and stderr,
/// and collects its result line, status and stderr. Calls `on_result` as soon as the probe
/// prints its result, while the run may still go on. Notes palisade's notices in `notices`.
/// Fails when palisade itself failed or the probe could not be executed.
pub fn finish_run(child: &mut Child, probe: Probe, notices: &Notices, mut on_result: impl FnMut(&Attempt)) -> anyhow::Result<Finished> {
    let lines = read_lines(child);
    let stderr = read_all(child);

    let deadline = Instant::now() + RUN_LIMIT;
    let mut result = None;
    let mut take = |line: String| {
        if let Some(attempt) = Attempt::from_line(&line) {
            on_result(&attempt);
            result = Some(attempt);
        }
    };
    let status = loop {
        match lines.recv_timeout(POLL) {
            Ok(line) => take(line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        if let Some(status) = child.try_wait().context("failed to wait for palisade run")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("palisade run of probe {} did not exit within {}s, so selftest killed it", probe.id(), RUN_LIMIT.as_secs());
        }
    };
    // A process that outlived the run may hold the pipes open, so wait only so long.
    let settled = Instant::now() + SETTLE;
    while let Ok(line) = lines.recv_timeout(settled.saturating_duration_since(Instant::now())) {
        take(line);
    }
    let stderr = stderr.recv_timeout(settled.saturating_duration_since(Instant::now())).unwrap_or_default();
    notices.note(&stderr);

    let code = status.code();
    // Status 125 means that palisade failed, and 126 or 127 that the probe could not be
    // executed inside.
    if matches!(code, Some(125..=127)) {
        anyhow::bail!("palisade run of probe {} failed with status {}: {}", probe.id(), code.unwrap_or_default(), stderr.trim());
    }
    Ok(Finished { code, result, stderr })
}

/// The distinct [`NOTICE_PREFIXES`] lines palisade printed during a selftest.
#[derive(Debug, Default)]
pub struct Notices(RefCell<Vec<String>>);

impl Notices {
    fn note(&self, stderr: &str) {
        let mut notices = self.0.borrow_mut();
        for line in stderr.lines().filter(|line| NOTICE_PREFIXES.iter().any(|prefix| line.starts_with(prefix))) {
            if !notices.iter().any(|notice| notice == line) {
                notices.push(line.to_owned());
            }
        }
    }

    /// Prints each notice once on stderr.
    pub fn print(&self) {
        for notice in self.0.borrow().iter() {
            eprintln!("{notice}");
        }
    }
}

/// Sends each line of the child's stdout, as it arrives, to the returned channel.
fn read_lines(child: &mut Child) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|size| size > 0) {
                if sender.send(String::from_utf8_lossy(&line).trim_end().to_owned()).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    receiver
}

/// Sends the child's whole stderr, once it ends, to the returned channel.
fn read_all(child: &mut Child) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            let _ = sender.send(String::from_utf8_lossy(&text).into_owned());
        });
    }
    receiver
}

/// Returns the files of a directory, one level deep, with their contents.
pub fn snapshot(dir: &Path) -> anyhow::Result<Vec<(OsString, Option<Vec<u8>>)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        entries.push((entry.file_name(), fs::read(entry.path()).ok()));
    }
    entries.sort();
    Ok(entries)
}

/// Describes how the directory of snapshot `after` differs from `before`.
pub fn changes(before: &[(OsString, Option<Vec<u8>>)], after: &[(OsString, Option<Vec<u8>>)]) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, contents) in after {
        match before.iter().find(|(old, _)| old == name) {
            None => changes.push(format!("{} appeared", name.to_string_lossy())),
            Some((_, old)) if old != contents => changes.push(format!("{} changed", name.to_string_lossy())),
            Some(_) => {}
        }
    }
    for (name, _) in before {
        if !after.iter().any(|(new, _)| new == name) {
            changes.push(format!("{} disappeared", name.to_string_lossy()));
        }
    }
    changes
}

pub fn count_accepted(listener: &TcpListener) -> usize {
    std::iter::from_fn(|| listener.accept().ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use clap::Parser as _;

    fn policy_args(flags: &[&str]) -> PolicyArgs {
        let mut argv = vec!["palisade", "selftest"];
        argv.extend_from_slice(flags);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Selftest(args) => args.policy,
            other => panic!("expected selftest, got {other:?}"),
        }
    }

    #[test]
    fn options_selftest_sets_are_rejected() {
        for flags in [["--workspace", "ws"], ["--timeout", "5s"], ["--report", "r.json"]] {
            let error = reject_selftest_options(&policy_args(&flags)).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{} is not accepted by selftest", flags[0])), "{error}");
        }
        reject_selftest_options(&policy_args(&["--net", "full", "--max-procs", "8"])).unwrap();
    }

    #[test]
    fn relative_paths_become_absolute() {
        // An absolute path of this platform, which stays as it is.
        let absolute = if cfg!(windows) { r"C:\srv\out" } else { "/srv/out" };
        let args = with_absolute_paths(&policy_args(&[
            "--policy", "p.toml", "--allow-read", "data", "--allow-write", absolute, "--deny-read", "~/.config/x",
            "--allow-read", "{workspace}/docs",
        ]))
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(args.policy_file, Some(cwd.join("p.toml")));
        assert_eq!(args.allow_read, [cwd.join("data"), PathBuf::from("{workspace}/docs")]);
        assert_eq!(args.allow_write, [PathBuf::from(absolute)]);
        assert_eq!(args.deny_read, [PathBuf::from("~/.config/x")]);
    }

    #[test]
    fn changes_name_each_difference() {
        let entry = |name: &str, contents: &str| (OsString::from(name), Some(contents.as_bytes().to_vec()));
        let before = [entry("existing", "a"), entry("gone", "b")];
        let after = [entry("created", "c"), entry("existing", "a2")];
        assert_eq!(changes(&before, &after), ["created appeared", "existing changed", "gone disappeared"]);
        assert!(changes(&before, &before).is_empty());
    }
}
