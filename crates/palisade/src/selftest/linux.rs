//! The Linux side of `palisade selftest`: runs each probe of the catalogue in the real sandbox
//! and judges it from the host.
//!
//! Selftest builds a scratch world under a fresh temporary directory: a workspace holding a git
//! repository and a copy of this binary, a fake home directory with a planted fake SSH key, and
//! a directory outside the workspace. Each probe is one `palisade run` of the copy's
//! `selftest-probe` subcommand, in that workspace, with `HOME` set to the fake home. The probe
//! makes its attempt and prints one result line (`inside.rs`). Selftest then checks the host:
//! the outside directory, the hook, the listener, the processes. A probe whose host check
//! contradicts its own report does not hold. The scratch directory is removed at the end.

mod inside;
mod judge;
mod processes;

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use palisade_policy::{Context, Policy, Profile};

use crate::cli::PolicyArgs;
use crate::selftest::attempt::{Attempt, INSIDE_CONTENT};
use crate::selftest::host::{
    self, changes, count_accepted, reject_selftest_options, snapshot, with_absolute_paths, Finished, Notices, RUN_TIMEOUT, SECRET_VARIABLE,
};
use crate::selftest::{Finding, PROBE_MAX_PROCS, PROBE_PROCESS_ATTEMPTS, PROBE_TIMEOUT_SECONDS, Probe, Verdict};

pub use inside::attempt;
use processes::{kill, probe_processes, wait_until_gone};
use crate::selftest::scratch::{Scratch, FAKE_KEY};

const SHADOW: &str = "/etc/shadow";

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
    /// The value of [`SECRET_VARIABLE`].
    token: String,
    notices: Notices,
}

impl Selftest {
    fn new(args: &PolicyArgs) -> anyhow::Result<Selftest> {
        let command_owner = match palisade_linux::Identity::current() {
            identity @ palisade_linux::Identity::Root { .. } => Some(identity.sandbox_ids()),
            palisade_linux::Identity::User { .. } => None,
        };
        let mut args = with_absolute_paths(args)?;
        let scratch = Scratch::create()?;
        args.workspace = Some(scratch.workspace.clone());
        // Resolved as each probe's `palisade run` resolves it: in the workspace, with the
        // fake home. An invalid policy fails here, before any probe runs.
        let mut context = Context::from_process().context("failed to read the current directory")?;
        context.cwd = scratch.workspace.clone();
        context.home = Some(scratch.home.clone());
        let policy = args.resolve_in(&context)?;
        if let Some(owner) = command_owner {
            // As root, the command owns the host's root-owned files in writable roots and
            // copy-on-write layers, which palisade mounts idmapped, and elsewhere the files of
            // the sandbox uid itself.
            let filesystem = &policy.filesystem;
            let idmapped = |path: &Path| filesystem.writable.iter().chain(&filesystem.copy_on_write).any(|root| path.starts_with(root));
            if !idmapped(&scratch.outside) {
                scratch.give_outside_to(owner)?;
            }
            if !idmapped(&scratch.home) {
                scratch.give_key_to(owner)?;
            }
        }
        let token = format!("selftest-{}-{}", std::process::id(), scratch.root.display());
        Ok(Selftest { scratch, args, policy, token, notices: Notices::default() })
    }

    fn unconfined(&self) -> bool {
        self.policy.profile == Profile::Unconfined
    }

    /// Runs `probe` and judges it. Any process of the probe still running afterwards is killed
    /// and makes the probe not hold, also when the probe failed.
    fn check(&self, probe: Probe) -> anyhow::Result<Verdict> {
        let verdict = self.run_and_judge(probe);
        let survivors = wait_until_gone(&probe_processes(&self.scratch.probe_exe));
        kill(&survivors);
        let verdict = verdict?;
        if survivors.is_empty() {
            return Ok(verdict);
        }
        let note = match survivors.len() {
            1 => "a process of the probe outlived the run, and selftest killed it".to_owned(),
            count => format!("{count} processes of the probe outlived the run, and selftest killed them"),
        };
        Ok(match verdict {
            Verdict::NotHeld(detail) | Verdict::Held(detail) | Verdict::Skipped(detail) => Verdict::NotHeld(format!("{detail}; {note}")),
        })
    }

    fn run_and_judge(&self, probe: Probe) -> anyhow::Result<Verdict> {
        Ok(match probe {
            Probe::WriteOutsideWorkspace => self.write_outside()?,
            Probe::WriteInsideWorkspace => self.write_inside()?,
            Probe::ReadCredential => self.read_credential()?,
            Probe::GitHook => self.git_hook()?,
            Probe::SecretEnvironment => self.secret_environment()?,
            Probe::ConnectHostLoopback => self.connect_host_loopback()?,
            Probe::ProcessLimit => self.process_limit()?,
            Probe::TimeoutDetached => self.timeout_detached()?,
            Probe::UserNamespace => judge::failed(&self.launch_plain(Probe::UserNamespace, &[])?),
            Probe::Ptrace => judge::failed(&self.launch_plain(Probe::Ptrace, &[])?),
            Probe::IoUring => judge::refused(&self.launch_plain(Probe::IoUring, &[])?, &inside::io_uring_setup()),
            Probe::Bpf => judge::refused(&self.launch_plain(Probe::Bpf, &[])?, &inside::bpf_unknown_command()),
            Probe::ReadShadow => self.read_shadow()?,
            // Not in the Linux catalogue, so `selftest` never runs them here and `selftest-probe`
            // rejects their ids.
            Probe::WriteStreamOfProtected
            | Probe::WriteShortNameOfProtected
            | Probe::WriteThroughJunction
            | Probe::WriteWhereUsersMayModify
            | Probe::ShellExecuteUrl => anyhow::bail!("probe {} runs on Windows only", probe.id()),
            Probe::WriteCaseVariantOfProtected => anyhow::bail!("probe {} runs on Windows and macOS only", probe.id()),
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
        // `/proc/self/exe` is this very binary even if its file was replaced since.
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0(std::env::current_exe().map(PathBuf::into_os_string).unwrap_or_else(|_| "palisade".into()))
            .arg("run")
            .args(args.to_flags())
            .arg("--")
            .arg(&self.scratch.probe_exe)
            .arg("selftest-probe")
            .arg(probe.id())
            .args(probe_args)
            .current_dir(&self.scratch.workspace)
            .env("HOME", &self.scratch.home)
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

    fn write_outside(&self) -> anyhow::Result<Verdict> {
        let outside = &self.scratch.outside;
        let created = outside.join("created");
        let existing = self.scratch.existing_outside();
        let before = snapshot(outside)?;
        // Shown read-only, so the writes meet the sandbox's refusal rather than a directory
        // that is not there. Not where the caller's policy shows it already, which the rule
        // would narrow, and not for the unconfined profile, which rejects such rules.
        let filesystem = &self.policy.filesystem;
        let mut visible = filesystem.writable.iter().chain(&filesystem.read_only).chain(&filesystem.copy_on_write);
        let show = !self.unconfined() && !visible.any(|root| outside.starts_with(root));
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
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        Ok(judge::write_refused(result, &changes(&before, &snapshot(outside)?)))
    }

    fn write_inside(&self) -> anyhow::Result<Verdict> {
        if self.policy.profile == Profile::ReadOnly {
            return Ok(Verdict::Skipped("the read-only profile makes the workspace read-only by design".into()));
        }
        let target = self.scratch.workspace.join("selftest-write-inside");
        let run = self.launch_plain(Probe::WriteInsideWorkspace, &[target.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        let on_host = fs::read(&target).is_ok_and(|contents| contents == INSIDE_CONTENT.as_bytes());
        Ok(judge::write_inside(result, on_host))
    }

    fn read_credential(&self) -> anyhow::Result<Verdict> {
        let key = self.scratch.fake_key();
        let run = self.launch_plain(Probe::ReadCredential, &[key.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        // The key must still be on the host, or its absence inside would show nothing.
        if fs::read(&key).ok().as_deref() != Some(FAKE_KEY.as_bytes()) {
            return Ok(Verdict::NotHeld(format!("{}; the planted key changed or vanished on the host", result.detail)));
        }
        Ok(judge::credential_hidden(result))
    }

    fn git_hook(&self) -> anyhow::Result<Verdict> {
        let hook = self.scratch.workspace.join(".git/hooks/pre-commit");
        let run = self.launch_plain(Probe::GitHook, &[hook.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        let changes = if hook.symlink_metadata().is_ok() { vec!["hooks/pre-commit exists".to_owned()] } else { Vec::new() };
        Ok(judge::write_refused(result, &changes))
    }

    fn secret_environment(&self) -> anyhow::Result<Verdict> {
        Ok(judge::failed(&self.launch_plain(Probe::SecretEnvironment, &[OsStr::new(SECRET_VARIABLE)])?))
    }

    fn connect_host_loopback(&self) -> anyhow::Result<Verdict> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to listen on 127.0.0.1")?;
        listener.set_nonblocking(true).context("failed to make the listener non-blocking")?;
        let port = listener.local_addr().context("failed to read the listener's port")?.port().to_string();
        let run = self.launch_plain(Probe::ConnectHostLoopback, &[OsStr::new(&port)])?;
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        Ok(judge::connect(result, count_accepted(&listener)))
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
        let Some(result) = &run.result else {
            // Palisade ends a run that stays at its process limit, which also stops the probe.
            if run.code == Some(i32::from(crate::EXIT_KILLED_AT_LIMIT)) && run.stderr.contains("processes") {
                return Ok(Verdict::Held(format!("palisade ended the run at its process limit: {}", run.stderr.lines().last().unwrap_or_default().trim())));
            }
            return Ok(judge::no_result(&run));
        };
        Ok(judge::process_limit(result, limit))
    }

    fn timeout_detached(&self) -> anyhow::Result<Verdict> {
        let probe_exe = &self.scratch.probe_exe;
        let mut detached = Vec::new();
        let run = self.launch(
            Probe::TimeoutDetached,
            &[],
            |args| args.timeout = Some(format!("{PROBE_TIMEOUT_SECONDS}s")),
            |result| {
                // Seen from the host while the run goes on. The child that called setsid leads
                // a session and is a child of the probe, which may lead a session too.
                if result.succeeded {
                    let processes = probe_processes(probe_exe);
                    let is_probe = |pid: i32| processes.iter().any(|process| process.pid == pid);
                    detached = processes.iter().copied().filter(|process| process.session_leader && is_probe(process.parent)).collect();
                }
            },
        )?;
        let Some(result) = &run.result else { return Ok(judge::no_result(&run)) };
        if !result.succeeded {
            return Ok(Verdict::Skipped(format!("the probe could not start its detached process: {}", result.detail)));
        }
        if detached.is_empty() {
            return Ok(Verdict::Skipped(
                "the detached process did not appear in the host's /proc, so its end cannot be checked".into(),
            ));
        }
        let survivors = wait_until_gone(&detached);
        kill(&survivors);
        Ok(judge::timeout(run.code, &detached, &survivors))
    }

    fn read_shadow(&self) -> anyhow::Result<Verdict> {
        let uid = rustix::process::geteuid().as_raw();
        if uid != 0 {
            return Ok(Verdict::Skipped(format!(
                "palisade runs as uid {uid}, which cannot read {SHADOW} with or without a sandbox; the probe shows something only as root"
            )));
        }
        if fs::symlink_metadata(SHADOW).is_err() {
            return Ok(Verdict::Skipped(format!("this machine has no {SHADOW}")));
        }
        Ok(judge::failed(&self.launch_plain(Probe::ReadShadow, &[OsStr::new(SHADOW)])?))
    }
}
