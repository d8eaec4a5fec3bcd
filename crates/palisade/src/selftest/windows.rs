//! The Windows side of `palisade selftest`: runs each probe of the catalogue in the real sandbox
//! and judges it from the host.
//!
//! Selftest builds a scratch world under a fresh directory below `%TEMP%` (`scratch.rs`). Each
//! probe is one `palisade run` of the copy of this binary in its workspace, running the copy's
//! `selftest-probe` subcommand. `USERPROFILE` is set to the fake home, because the policy and
//! the plan find the home directory there on Windows. The probe makes its attempt and prints
//! one result line (`inside.rs`). Selftest then checks the host: the directories the
//! probe wrote to, the listener, the processes. A probe whose host check contradicts its own
//! report does not hold. The scratch directory is removed at the end.
//!
//! A confined run only checks the ACL entries that `palisade setup` writes, and no setup has
//! seen a scratch directory made afresh. So before each confined probe, selftest writes the
//! entries of that probe's policy on the roots inside the scratch directory, as setup would; the
//! caller owns them, so this needs no elevation. Everything else (the accounts, their
//! passwords, the firewall filters, palisade's temporary directory) must come from an earlier
//! `palisade setup`, and selftest stops with status 125 before the first probe when the account
//! is missing.

mod inside;
mod judge;
mod processes;
mod scratch;
mod sys;

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use palisade_policy::{Context, Policy, Profile};
use palisade_windows::{Machine, WinPath};

use crate::cli::PolicyArgs;
use crate::selftest::attempt::{short, Attempt, INSIDE_CONTENT};
use crate::selftest::host::{
    self, changes, count_accepted, reject_selftest_options, snapshot, with_absolute_paths, Finished, Notices, RUN_TIMEOUT, SECRET_VARIABLE,
};
use crate::selftest::judge::{connect, failed, no_result, write_inside, write_refused};
use crate::selftest::{Finding, PROBE_MAX_PROCS, PROBE_PROCESS_ATTEMPTS, PROBE_TIMEOUT_SECONDS, Probe, Verdict};

pub use inside::attempt;
use scratch::{Scratch, FAKE_KEY};

/// The URL the shell probe opens. `.invalid` is reserved (RFC 2606), so no resolver finds the
/// name and nothing is fetched, whichever program gets the URL.
const SELFTEST_URL: &str = "https://palisade-selftest.invalid/";

/// The name of the alternate data streams the stream probe writes.
const STREAM_NAME: &str = "palisade-selftest";

/// Runs every probe of the catalogue and returns the findings in catalogue order.
pub fn run_probes(args: &PolicyArgs) -> anyhow::Result<Vec<Finding>> {
    reject_selftest_options(args)?;
    let selftest = Selftest::new(args)?;
    let mut findings = Vec::new();
    for &probe in Probe::for_this_platform() {
        let verdict = selftest.check(probe)?;
        findings.push(Finding { probe, verdict });
    }
    selftest.notices.print();
    Ok(findings)
}

/// One selftest: the scratch world, the caller's policy options and what they resolve to.
struct Selftest {
    scratch: Scratch,
    /// The caller's options, with absolute paths and the scratch workspace.
    args: PolicyArgs,
    /// The resolved policy of `args`, for the profile and the process limit.
    policy: Policy,
    /// The context each probe's policy is resolved in: the scratch workspace and the fake home.
    context: Context,
    /// The caller's machine with the fake home as its profile, for the plan of each confined
    /// probe. It is `None` for the unconfined profile, which has no plan.
    machine: Option<Machine>,
    /// The scratch directory, the only place where selftest writes ACL entries.
    scope: WinPath,
    /// The value of [`SECRET_VARIABLE`].
    token: String,
    notices: Notices,
    /// Wine's version when selftest runs under Wine.
    wine: Option<String>,
}

impl Selftest {
    fn new(args: &PolicyArgs) -> anyhow::Result<Selftest> {
        let mut args = with_absolute_paths(args)?;
        let scratch = Scratch::create()?;
        args.workspace = Some(scratch.workspace.clone());
        // Resolved as each probe's `palisade run` resolves it: in the workspace, with the
        // fake home. An invalid policy fails here, before any probe runs.
        let mut context = Context::from_process().context("failed to read the current directory")?;
        context.cwd = scratch.workspace.clone();
        context.home = Some(scratch.home.clone());
        let policy = args.resolve_in(&context)?;
        let scope = win_path(&scratch.root)?;
        let machine = if policy.profile == Profile::Unconfined {
            None
        } else {
            let machine = Machine { profile_dir: win_path(&scratch.home)?, ..palisade_windows::sys::machine::current()? };
            require_setup(&policy, &machine)?;
            Some(machine)
        };
        let token = format!("selftest-{}-{}", std::process::id(), scratch.root.display());
        let wine = palisade_windows::sys::wine::is_wine();
        Ok(Selftest { scratch, args, policy, context, machine, scope, token, notices: Notices::default(), wine })
    }

    fn unconfined(&self) -> bool {
        self.policy.profile == Profile::Unconfined
    }

    /// Runs `probe` and judges it. Any process of the probe still running afterwards is
    /// terminated and makes the probe not hold, also when the probe failed.
    fn check(&self, probe: Probe) -> anyhow::Result<Verdict> {
        let verdict = self.run_and_judge(probe);
        let image = self.scratch.probe_image();
        let left: Vec<u32> = processes::running(&image).iter().map(|process| process.pid).collect();
        let survivors = processes::wait_until_gone(&image, &left);
        let kill_failures = processes::kill(&survivors);
        let verdict = verdict?;
        if survivors.is_empty() {
            return Ok(verdict);
        }
        let outlived = match survivors.len() {
            1 => "a process of the probe outlived the run".to_owned(),
            count => format!("{count} processes of the probe outlived the run"),
        };
        let ended = if kill_failures.is_empty() {
            format!("selftest terminated {}", if survivors.len() == 1 { "it" } else { "them" })
        } else {
            format!("selftest failed to terminate {}", kill_failures.join(", "))
        };
        Ok(match verdict {
            Verdict::NotHeld(detail) | Verdict::Held(detail) | Verdict::Skipped(detail) => Verdict::NotHeld(format!("{detail}; {outlived}, and {ended}")),
        })
    }

    fn run_and_judge(&self, probe: Probe) -> anyhow::Result<Verdict> {
        Ok(match probe {
            Probe::WriteOutsideWorkspace => self.write_outside()?,
            Probe::WriteInsideWorkspace => self.write_inside()?,
            Probe::ReadCredential => self.read_credential()?,
            Probe::GitHook => self.git_hook()?,
            Probe::SecretEnvironment => failed(&self.launch_plain(Probe::SecretEnvironment, &[OsStr::new(SECRET_VARIABLE)])?),
            Probe::ConnectHostLoopback => self.connect_host_loopback()?,
            Probe::ProcessLimit => self.process_limit()?,
            Probe::TimeoutDetached => self.timeout_detached()?,
            Probe::WriteStreamOfProtected => self.write_stream_of_protected()?,
            Probe::WriteCaseVariantOfProtected => self.write_case_variant_of_protected()?,
            Probe::WriteShortNameOfProtected => self.write_short_name_of_protected()?,
            Probe::WriteThroughJunction => self.write_through_junction()?,
            Probe::WriteWhereUsersMayModify => self.write_where_users_may_modify()?,
            Probe::ShellExecuteUrl => self.shell_execute_url()?,
            // Not in the Windows catalogue, so `selftest` never runs them here and
            // `selftest-probe` rejects their ids.
            Probe::UserNamespace | Probe::Ptrace | Probe::IoUring | Probe::Bpf | Probe::ReadShadow => {
                anyhow::bail!("probe {} runs on Linux only", probe.id())
            }
            Probe::CpuInfo | Probe::EnvFileHidden | Probe::FullNetwork | Probe::ListenWithoutEgress | Probe::NestedSandbox | Probe::ReadCaseVariantOfHidden => {
                anyhow::bail!("probe {} runs on macOS only", probe.id())
            }
        })
    }

    /// Starts `palisade run` of `probe` with the caller's options, adjusted by `adjust`, and
    /// waits for it. Calls `on_result` as soon as the probe prints its result, while the run
    /// may still go on.
    fn launch(
        &self,
        probe: Probe,
        probe_args: &[&OsStr],
        adjust: impl FnOnce(&mut PolicyArgs),
        on_result: impl FnMut(&Attempt),
    ) -> anyhow::Result<Finished> {
        let mut args = self.args.clone();
        args.timeout = Some(RUN_TIMEOUT.into());
        adjust(&mut args);
        self.write_acl_entries(&args)?;
        // The copy, not this binary: `palisade run` starts its runner stage from its own
        // executable as the sandbox account, which can read the workspace only.
        let mut command = Command::new(&self.scratch.probe_exe);
        command
            .arg("run")
            .args(args.to_flags())
            .arg("--")
            .arg(&self.scratch.probe_exe)
            .arg("selftest-probe")
            .arg(probe.id())
            .args(probe_args)
            .current_dir(&self.scratch.workspace)
            // The run still finds setup's password store, which lies in the profile that the
            // caller's token names (see `account::store_path`).
            .env("USERPROFILE", &self.scratch.home)
            .env(SECRET_VARIABLE, &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("failed to start palisade run for probe {}", probe.id()))?;
        host::finish_run(&mut child, probe, &self.notices, on_result)
    }

    /// Runs `probe` with the caller's options as they are.
    fn launch_plain(&self, probe: Probe, probe_args: &[&OsStr]) -> anyhow::Result<Finished> {
        self.launch(probe, probe_args, |_| {}, |_| {})
    }

    /// Writes the ACL entries that the plan of `args` needs on the roots inside the scratch
    /// directory, as `palisade setup` would, so that the probe's confined run finds them.
    fn write_acl_entries(&self, args: &PolicyArgs) -> anyhow::Result<()> {
        let Some(machine) = &self.machine else { return Ok(()) };
        let policy = args.resolve_in(&self.context)?;
        let (plan, _) = crate::windows::plan_on(&policy, machine)?;
        let summaries = palisade_windows::sys::setup::apply_acl_within(&plan, &self.scope)
            .with_context(|| format!("failed to write the ACL entries of the probe's policy in {}", self.scope))?;
        for (root, summary) in summaries {
            if let Some(note) = summary.note() {
                tracing::debug!("selftest's ACL entries on {root}: {note}");
            }
        }
        Ok(())
    }

    /// Returns whether the caller's policy shows `path` already, in which case a probe adds no
    /// `--allow-read` for it: the rule would narrow what the policy grants.
    fn visible(&self, path: &Path) -> bool {
        let filesystem = &self.policy.filesystem;
        let mut visible = filesystem.writable.iter().chain(&filesystem.read_only).chain(&filesystem.copy_on_write);
        visible.any(|root| path.starts_with(root))
    }

    fn write_outside(&self) -> anyhow::Result<Verdict> {
        let outside = &self.scratch.outside;
        let created = outside.join("created");
        let existing = outside.join("existing");
        let before = snapshot(outside)?;
        // Readable, so the writes meet the sandbox's refusal rather than a directory the
        // account cannot open. Not for the unconfined profile, which rejects such rules.
        let show = !self.unconfined() && !self.visible(outside);
        let run = self.launch(
            Probe::WriteOutsideWorkspace,
            &[created.as_os_str(), existing.as_os_str()],
            |args| {
                if show {
                    args.allow_read.push(outside.clone());
                }
            },
            |_| {},
        )?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(write_refused(result, &changes(&before, &snapshot(outside)?)))
    }

    fn write_inside(&self) -> anyhow::Result<Verdict> {
        if self.policy.profile == Profile::ReadOnly {
            return Ok(Verdict::Skipped("the read-only profile makes the workspace read-only by design".into()));
        }
        let target = self.scratch.workspace.join("selftest-write-inside");
        let run = self.launch_plain(Probe::WriteInsideWorkspace, &[target.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        let on_host = fs::read(&target).is_ok_and(|contents| contents == INSIDE_CONTENT.as_bytes());
        Ok(write_inside(result, on_host))
    }

    fn read_credential(&self) -> anyhow::Result<Verdict> {
        let key = self.scratch.fake_key();
        let home = &self.scratch.home;
        // The fake home is readable, as a toolchain directory of a real home is, so that only
        // the hidden path's deny entry can keep the key from the probe.
        let show = !self.unconfined() && !self.visible(home);
        let run = self.launch(
            Probe::ReadCredential,
            &[key.as_os_str()],
            |args| {
                if show {
                    args.allow_read.push(home.clone());
                }
            },
            |_| {},
        )?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        // The key must still be on the host, or its absence inside would show nothing.
        if fs::read(&key).ok().as_deref() != Some(FAKE_KEY.as_bytes()) {
            return Ok(Verdict::NotHeld(format!("{}; the planted key changed or vanished on the host", result.detail)));
        }
        Ok(failed(&run))
    }

    fn git_hook(&self) -> anyhow::Result<Verdict> {
        let hook = self.scratch.workspace.join(r".git\hooks\pre-commit");
        let run = self.launch_plain(Probe::GitHook, &[hook.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        let changes = if hook.symlink_metadata().is_ok() { vec![r"hooks\pre-commit exists".to_owned()] } else { Vec::new() };
        Ok(write_refused(result, &changes))
    }

    fn connect_host_loopback(&self) -> anyhow::Result<Verdict> {
        let listener = listen_outside_proxy_ports()?;
        let port = listener.local_addr().context("failed to read the listener's port")?.port().to_string();
        let run = self.launch_plain(Probe::ConnectHostLoopback, &[OsStr::new(&port)])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(connect(result, count_accepted(&listener)))
    }

    fn process_limit(&self) -> anyhow::Result<Verdict> {
        let limit = super::probe_process_limit(self.unconfined(), &self.args, self.policy.limits.max_procs);
        if let Some(limit) = limit.filter(|&limit| limit >= PROBE_PROCESS_ATTEMPTS) {
            return Ok(Verdict::Skipped(format!(
                "the policy allows {limit} processes, and this probe starts {PROBE_PROCESS_ATTEMPTS} at most"
            )));
        }
        let set_limit = !self.unconfined() && self.args.max_procs.is_none();
        let attempts = PROBE_PROCESS_ATTEMPTS.to_string();
        let run = self.launch(
            Probe::ProcessLimit,
            &[OsStr::new(&attempts)],
            |args| {
                if set_limit {
                    args.max_procs = Some(PROBE_MAX_PROCS.to_string());
                }
            },
            |_| {},
        )?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(judge::process_limit(result, limit))
    }

    fn timeout_detached(&self) -> anyhow::Result<Verdict> {
        let image = self.scratch.probe_image();
        // The detached process's id, and whether the process list showed it during the run.
        let mut watched: Option<(u32, bool)> = None;
        let run = self.launch(
            Probe::TimeoutDetached,
            &[],
            |args| args.timeout = Some(format!("{PROBE_TIMEOUT_SECONDS}s")),
            |result| {
                if let Some(pid) = result.pid {
                    let listed = processes::running(&image).iter().any(|process| process.pid == pid);
                    watched = Some((pid, listed));
                }
            },
        )?;

        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        if !result.succeeded {
            return Ok(Verdict::Skipped(format!("the probe could not start its detached process: {}", result.detail)));
        }
        let Some((pid, listed)) = watched else {
            return Ok(Verdict::Skipped(format!("the probe reported no process id: {}", result.detail)));
        };
        if !listed {
            return Ok(Verdict::Skipped(format!("the detached process {pid} did not appear in the process list, so its end cannot be checked")));
        }

        let survivors = processes::wait_until_gone(&image, &[pid]);
        let kill_failures = processes::kill(&survivors);
        let verdict = crate::selftest::judge::detached_timeout(run.code, pid, !survivors.is_empty(), &kill_failures);
        // The probe's detail shows whether CREATE_BREAKAWAY_FROM_JOB was refused.
        Ok(match verdict {
            Verdict::Held(detail) => Verdict::Held(format!("{}; {detail}", result.detail)),
            Verdict::NotHeld(detail) => Verdict::NotHeld(format!("{}; {detail}", result.detail)),
            skipped @ Verdict::Skipped(_) => skipped,
        })
    }

    /// Lists the files of `.git` and `.git\hooks` with their contents, which the probes of
    /// protected names compare before and after their run.
    fn git_snapshot(&self) -> anyhow::Result<Vec<(std::ffi::OsString, Option<Vec<u8>>)>> {
        let git = self.scratch.workspace.join(".git");
        let mut entries = snapshot(&git)?;
        let hooks = snapshot(&git.join("hooks"))?.into_iter().map(|(name, contents)| {
            let mut named = std::ffi::OsString::from(r"hooks\");
            named.push(name);
            (named, contents)
        });
        entries.extend(hooks);
        Ok(entries)
    }

    fn write_stream_of_protected(&self) -> anyhow::Result<Verdict> {
        if let Err(reason) = check_streams(&self.scratch.root) {
            return Ok(Verdict::Skipped(reason));
        }
        let git = self.scratch.workspace.join(".git");
        let streams = [git.join(format!("config:{STREAM_NAME}")), git.join(format!("hooks:{STREAM_NAME}"))];
        let before = self.git_snapshot()?;
        let run = self.launch_plain(Probe::WriteStreamOfProtected, &[streams[0].as_os_str(), streams[1].as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        let mut changes = changes(&before, &self.git_snapshot()?);
        for stream in &streams {
            if fs::metadata(stream).is_ok() {
                changes.push(format!("{} exists", short(stream)));
            }
        }
        Ok(write_refused(result, &changes))
    }

    fn write_case_variant_of_protected(&self) -> anyhow::Result<Verdict> {
        let variant = self.scratch.workspace.join(".GiT");
        // A hook name of its own, so that a hook another probe left does not make this one fail.
        let (hook, config) = (variant.join(r"HoOkS\pre-push"), variant.join("CoNfIg"));
        let before = self.git_snapshot()?;
        let run = self.launch_plain(Probe::WriteCaseVariantOfProtected, &[hook.as_os_str(), config.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(write_refused(result, &changes(&before, &self.git_snapshot()?)))
    }

    fn write_short_name_of_protected(&self) -> anyhow::Result<Verdict> {
        let git = self.scratch.workspace.join(".git");
        let short_name = match sys::short_name(&git) {
            Ok(name) if name.eq_ignore_ascii_case(".git") => {
                return Ok(Verdict::Skipped("this volume keeps no 8.3 short names: GetShortPathNameW returned .git itself".into()));
            }
            Ok(name) => name,
            Err(error) => return Ok(Verdict::Skipped(format!("GetShortPathNameW of .git failed: {error}"))),
        };
        let alias = self.scratch.workspace.join(&short_name);
        let (hook, config) = (alias.join(r"hooks\post-checkout"), alias.join("config"));
        let before = self.git_snapshot()?;
        let run = self.launch_plain(Probe::WriteShortNameOfProtected, &[hook.as_os_str(), config.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        // The result names the files only by their last two components, which hide the alias.
        let result = Attempt { detail: format!("through {short_name}: {}", result.detail), ..result.clone() };
        Ok(write_refused(&result, &changes(&before, &self.git_snapshot()?)))
    }

    fn write_through_junction(&self) -> anyhow::Result<Verdict> {
        let planted = match &self.scratch.planted_link {
            Ok(planted) => planted,
            Err(reason) => return Ok(Verdict::Skipped(format!("selftest could not plant a link in the workspace: {reason}"))),
        };
        let target = &self.scratch.link_target;
        let own = self.scratch.workspace.join("junction-own");
        let before = snapshot(target)?;
        let run = self.launch_plain(Probe::WriteThroughJunction, &[planted.as_os_str(), own.as_os_str(), target.as_os_str()])?;
        // Removes the probe's own link, not its target, so later probes see the workspace as it was.
        if own.symlink_metadata().is_ok() {
            let _ = fs::remove_dir(&own);
        }
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(write_refused(result, &changes(&before, &snapshot(target)?)))
    }

    fn write_where_users_may_modify(&self) -> anyhow::Result<Verdict> {
        let dir = match &self.scratch.users_may_modify {
            Ok(dir) => dir,
            Err(reason) => return Ok(Verdict::Skipped(reason.clone())),
        };
        let (created, existing) = (dir.join("created"), dir.join("existing"));
        let before = snapshot(dir)?;
        let run = self.launch_plain(Probe::WriteWhereUsersMayModify, &[created.as_os_str(), existing.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(write_refused(result, &changes(&before, &snapshot(dir)?)))
    }

    /// Runs the shell probe, which judges from inside whether the request left the run's job
    /// (see `inside::open_url`), because only the caller of ShellExecuteExW learns whether a new
    /// process took it. The probe cannot see where a process that took it passes it on.
    fn shell_execute_url(&self) -> anyhow::Result<Verdict> {
        if let Some(version) = &self.wine {
            return Ok(Verdict::Skipped(format!(
                "under Wine {version}, the shell passes URLs to the Linux desktop's browser, outside anything Windows confines"
            )));
        }
        if self.unconfined() {
            return Ok(Verdict::Skipped("the unconfined profile runs the command as you, so the shell would open the URL in your own browser".into()));
        }
        let run = self.launch_plain(Probe::ShellExecuteUrl, &[OsStr::new(SELFTEST_URL)])?;
        if let Some(pid) = run.result.as_ref().and_then(|result| result.pid) {
            // A process of the probe's call that runs outside the job: nothing else ends it.
            if let Err(error) = sys::terminate(pid) {
                tracing::warn!("failed to terminate process {pid}, which the shell probe started outside the run's job: {error}");
            }
        }
        Ok(failed(&run))
    }
}

/// Checks that `palisade setup` created the account of `policy`'s runs and stored its
/// password, which selftest cannot do itself.
fn require_setup(policy: &Policy, machine: &Machine) -> anyhow::Result<()> {
    let (plan, _) = crate::windows::plan_on(policy, machine)?;
    palisade_windows::sys::account::load(&plan.accounts, plan.account)
        .map_err(|error| anyhow::anyhow!("{error}; every probe runs in that sandbox, and only --profile unconfined runs without it"))?;
    Ok(())
}

fn win_path(path: &Path) -> anyhow::Result<WinPath> {
    let text = path.to_str().with_context(|| format!("{} is not valid Unicode", path.display()))?;
    WinPath::parse(text).with_context(|| format!("{text} is not a usable Windows path"))
}

/// Listens on 127.0.0.1 at a port the system picks, outside the range of palisade's proxy,
/// which the firewall lets the offline account reach.
fn listen_outside_proxy_ports() -> anyhow::Result<TcpListener> {
    let (first, last) = palisade_windows::plan::PROXY_PORTS;
    for _ in 0..10 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to listen on 127.0.0.1")?;
        let port = listener.local_addr().context("failed to read the listener's port")?.port();
        if !(first..=last).contains(&port) {
            listener.set_nonblocking(true).context("failed to make the listener non-blocking")?;
            return Ok(listener);
        }
    }
    anyhow::bail!("failed to listen on 127.0.0.1 outside palisade's proxy ports {first} to {last}: ten ports in a row fell inside them")
}

/// Returns why the volume of `dir` cannot hold alternate data streams, if it cannot: FAT
/// volumes have none, and Wine takes `name:stream` for a file name of its own.
fn check_streams(dir: &Path) -> Result<(), String> {
    let file = dir.join("stream-check");
    let stream_name = format!("stream-check:{STREAM_NAME}");
    let stream = dir.join(&stream_name);
    let outcome = (|| {
        fs::write(&file, b"").map_err(|error| format!("writing {} failed: {error}", file.display()))?;
        fs::write(&stream, b"x").map_err(|error| format!("this volume holds no alternate data streams: writing {stream_name} failed: {error}"))?;
        let listed = fs::read_dir(dir).map_err(|error| format!("listing {} failed: {error}", dir.display()))?;
        if listed.flatten().any(|entry| entry.file_name() == OsStr::new(&stream_name)) {
            return Err(format!("this volume holds no alternate data streams: writing {stream_name} created a file of that name"));
        }
        Ok(())
    })();
    let _ = fs::remove_file(&file);
    let _ = fs::remove_file(&stream);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_avoids_proxy_ports() {
        let listener = listen_outside_proxy_ports().unwrap();
        let port = listener.local_addr().unwrap().port();
        let (first, last) = palisade_windows::plan::PROXY_PORTS;
        assert!(!(first..=last).contains(&port), "{port}");
    }

    #[test]
    fn selftest_url_is_reserved_name() {
        let host = SELFTEST_URL.trim_start_matches("https://").trim_end_matches('/');
        assert!(host.ends_with(".invalid"), "{host}");
    }
}
