//! The macOS side of `palisade selftest`: runs each probe of the catalogue in the real sandbox
//! and judges it from the host.
//!
//! Selftest builds the scratch world that Linux uses too (`../scratch.rs`) below `$TMPDIR`.
//! Each probe is one `palisade run` of the copy of this binary in its workspace, running the
//! copy's `selftest-probe` subcommand, with `HOME` set to the fake home. The probe makes its
//! attempt and prints one result line (`inside.rs`). Selftest then checks the host: the
//! directories the probe wrote to, the listeners, the processes. A probe whose host check
//! contradicts its own report does not hold. The scratch directory is removed at the end.
//!
//! The probes after the shared ones check what public reports about other macOS sandboxes
//! found broken. Those reports describe the CPU's description and `ps` out of reach, `.env`
//! denies that depend on the working directory, and full network mode without loopback, names
//! or the local network. They also describe a listening port that opened all egress, and a
//! late failure inside another sandbox. Two probes write and read case variants of protected
//! and hidden names (`.GIT/hooks`), which a case-insensitive volume opens as the same files,
//! and one of them hard-links a hidden file and the protected `.git/config` into the
//! workspace.

mod inside;
mod judge;
mod processes;

use std::ffi::OsStr;
use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use palisade_policy::{Context, NetworkMode, Policy, Profile};

use crate::cli::PolicyArgs;
use crate::selftest::attempt::{Attempt, INSIDE_CONTENT};
use crate::selftest::host::{
    self, changes, count_accepted, reject_selftest_options, snapshot, with_absolute_paths, Finished, Notices, RUN_TIMEOUT, SECRET_VARIABLE,
};
use crate::selftest::judge::{connect, detached_timeout, failed, no_result, write_inside, write_refused};
use crate::selftest::scratch::{Scratch, FAKE_KEY};
use crate::selftest::{Finding, Probe, Verdict, PROBE_TIMEOUT_SECONDS};

pub use inside::attempt;

/// The tool that starts palisade inside another Seatbelt sandbox for the nesting probe.
const SANDBOX_EXEC: &str = "/usr/bin/sandbox-exec";
/// A profile that allows everything, so that only the nesting itself can stop palisade.
const ALLOW_ALL_PROFILE: &str = "(version 1)(allow default)";

/// The contents of the planted `.env` files.
const ENV_CONTENT: &str = "PALISADE_SELFTEST=planted\n";

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
    /// The resolved policy of `args`, for the profile and the network.
    policy: Policy,
    /// The value of [`SECRET_VARIABLE`].
    token: String,
    notices: Notices,
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
        let exe = &self.scratch.probe_exe;
        let survivors = processes::wait_until_gone(exe, &processes::probe_processes(exe));
        let kill_failures = processes::kill(&survivors);
        let verdict = verdict?;
        if survivors.is_empty() {
            return Ok(verdict);
        }
        let outlived = match survivors.len() {
            1 => "a process of the probe outlived the run".to_owned(),
            count => format!("{count} processes of the probe outlived the run"),
        };
        let ended = if kill_failures.is_empty() { "selftest killed what was left".to_owned() } else { format!("selftest failed to kill {}", kill_failures.join(", ")) };
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
            Probe::TimeoutDetached => self.timeout_detached()?,
            Probe::CpuInfo => judge::allowed(&self.launch_plain(Probe::CpuInfo, &[])?),
            Probe::EnvFileHidden => self.env_file_hidden()?,
            Probe::WriteCaseVariantOfProtected => self.write_case_variant_of_protected()?,
            Probe::ReadCaseVariantOfHidden => self.read_case_variant_of_hidden()?,
            Probe::FullNetwork => self.full_network()?,
            Probe::ListenWithoutEgress => self.listen_without_egress()?,
            Probe::NestedSandbox => self.nested_sandbox()?,
            // Not in the macOS catalogue, so `selftest` never runs them here and
            // `selftest-probe` rejects their ids.
            Probe::ProcessLimit => anyhow::bail!("probe {} does not run on macOS, which cannot limit a run's processes", probe.id()),
            Probe::UserNamespace | Probe::Ptrace | Probe::IoUring | Probe::Bpf | Probe::ReadShadow => {
                anyhow::bail!("probe {} runs on Linux only", probe.id())
            }
            Probe::WriteStreamOfProtected
            | Probe::WriteShortNameOfProtected
            | Probe::WriteThroughJunction
            | Probe::WriteWhereUsersMayModify
            | Probe::ShellExecuteUrl => anyhow::bail!("probe {} runs on Windows only", probe.id()),
        })
    }

    /// Returns the `palisade run` command of `probe` with the caller's options, adjusted by
    /// `adjust`, started in `cwd`.
    fn run_command(&self, probe: Probe, probe_args: &[&OsStr], cwd: &Path, adjust: impl FnOnce(&mut PolicyArgs)) -> Command {
        let mut args = self.args.clone();
        args.timeout = Some(RUN_TIMEOUT.into());
        adjust(&mut args);
        // The copy runs `palisade run` too, so that the stage it starts is in the workspace,
        // which every profile makes readable and executable.
        let mut command = Command::new(&self.scratch.probe_exe);
        command
            .arg("run")
            .args(args.to_flags())
            .arg("--")
            .arg(&self.scratch.probe_exe)
            .arg("selftest-probe")
            .arg(probe.id())
            .args(probe_args)
            .current_dir(cwd)
            .env("HOME", &self.scratch.home)
            .env(SECRET_VARIABLE, &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `palisade run` of `probe` in `cwd` and waits for it. Calls `on_result` as soon as
    /// the probe prints its result, while the run may still go on.
    fn launch_in(
        &self,
        probe: Probe,
        probe_args: &[&OsStr],
        cwd: &Path,
        adjust: impl FnOnce(&mut PolicyArgs),
        on_result: impl FnMut(&Attempt),
    ) -> anyhow::Result<Finished> {
        let mut child = self.run_command(probe, probe_args, cwd, adjust).spawn().with_context(|| format!("failed to start palisade run for probe {}", probe.id()))?;
        host::finish_run(&mut child, probe, &self.notices, on_result)
    }

    fn launch(&self, probe: Probe, probe_args: &[&OsStr], adjust: impl FnOnce(&mut PolicyArgs)) -> anyhow::Result<Finished> {
        self.launch_in(probe, probe_args, &self.scratch.workspace, adjust, |_| {})
    }

    /// Runs `probe` with the caller's options as they are.
    fn launch_plain(&self, probe: Probe, probe_args: &[&OsStr]) -> anyhow::Result<Finished> {
        self.launch(probe, probe_args, |_| {})
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
        let existing = self.scratch.existing_outside();
        let before = snapshot(outside)?;
        // Readable, so the writes meet the profile's refusal of writes rather than of reads.
        // Not for the unconfined profile, which rejects such rules.
        let show = !self.unconfined() && !self.visible(outside);
        let run = self.launch(Probe::WriteOutsideWorkspace, &[created.as_os_str(), existing.as_os_str()], |args| {
            if show {
                args.allow_read.push(outside.clone());
            }
        })?;
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
        // the deny of ~/.ssh, after the allows, can keep the key from the probe.
        let show = !self.unconfined() && !self.visible(home);
        let run = self.launch(Probe::ReadCredential, &[key.as_os_str()], |args| {
            if show {
                args.allow_read.push(home.clone());
            }
        })?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        // The key must still be on the host, or its absence inside would show nothing.
        if fs::read(&key).ok().as_deref() != Some(FAKE_KEY.as_bytes()) {
            return Ok(Verdict::NotHeld(format!("{}; the planted key changed or vanished on the host", result.detail)));
        }
        Ok(failed(&run))
    }

    fn git_hook(&self) -> anyhow::Result<Verdict> {
        let hook = self.scratch.workspace.join(".git/hooks/pre-commit");
        let run = self.launch_plain(Probe::GitHook, &[hook.as_os_str()])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        let changes = if hook.symlink_metadata().is_ok() { vec!["hooks/pre-commit exists".to_owned()] } else { Vec::new() };
        Ok(write_refused(result, &changes))
    }

    fn connect_host_loopback(&self) -> anyhow::Result<Verdict> {
        if matches!(self.policy.network, NetworkMode::Full) {
            return Ok(Verdict::Skipped("the policy's network is full, which reaches the host's loopback by design".into()));
        }
        let listener = listen(Ipv4Addr::LOCALHOST)?;
        let port = listener.local_addr().context("failed to read the listener's port")?.port().to_string();
        let run = self.launch_plain(Probe::ConnectHostLoopback, &[OsStr::new(&port)])?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(connect(result, count_accepted(&listener)))
    }

    fn timeout_detached(&self) -> anyhow::Result<Verdict> {
        let exe = self.scratch.probe_exe.clone();
        // The detached process's id, and whether the host saw it running during the run.
        let mut watched: Option<(u32, bool)> = None;
        let run = self.launch_in(
            Probe::TimeoutDetached,
            &[],
            &self.scratch.workspace,
            |args| args.timeout = Some(format!("{PROBE_TIMEOUT_SECONDS}s")),
            |result| {
                if let Some(pid) = result.pid {
                    let listed = processes::probe_processes(&exe).contains(&(pid as i32));
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
            return Ok(Verdict::Skipped(format!("the detached process {pid} did not appear in the process table, so its end cannot be checked")));
        }
        let survivors = processes::wait_until_gone(&self.scratch.probe_exe, &[pid as i32]);
        let kill_failures = processes::kill(&survivors);
        Ok(match detached_timeout(run.code, pid, !survivors.is_empty(), &kill_failures) {
            Verdict::Held(detail) => Verdict::Held(format!("{}; {detail}", result.detail)),
            Verdict::NotHeld(detail) => Verdict::NotHeld(format!("{}; {detail}", result.detail)),
            skipped @ Verdict::Skipped(_) => skipped,
        })
    }

    /// Plants `.env` files in the workspace, in `other` and in `sub`, denies all three, and
    /// runs the probe from `sub` with paths relative to it.
    fn env_file_hidden(&self) -> anyhow::Result<Verdict> {
        if self.unconfined() {
            return Ok(Verdict::Skipped("the unconfined profile applies no --deny-read".into()));
        }
        if self.policy.profile == Profile::ReadOnly {
            return Ok(Verdict::Skipped("the read-only profile makes the workspace read-only, so the allowed write cannot work".into()));
        }
        let workspace = &self.scratch.workspace;
        let (other, sub) = (workspace.join("other"), workspace.join("sub"));
        for dir in [&other, &sub] {
            fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let envs = [workspace.join(".env"), other.join(".env"), sub.join(".env")];
        for env in &envs[..2] {
            fs::write(env, ENV_CONTENT).with_context(|| format!("failed to write {}", env.display()))?;
        }
        let allowed = other.join("ok.txt");
        let before: Vec<Option<Vec<u8>>> = envs.iter().map(|env| fs::read(env).ok()).collect();
        let relative = ["../.env", "../other/.env", ".env", "../other/ok.txt"].map(OsStr::new);
        let run = self.launch_in(Probe::EnvFileHidden, &relative, &sub, |args| args.deny_read.extend(envs.iter().cloned()), |_| {})?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        let changes: Vec<String> = envs
            .iter()
            .zip(&before)
            .filter(|(env, old)| fs::read(env).ok() != **old)
            .map(|(env, _)| format!("{} changed", crate::selftest::attempt::short(env)))
            .collect();
        let allowed_on_host = fs::read(&allowed).is_ok();
        let _ = fs::remove_file(&allowed);
        Ok(judge::env_hidden(result, &changes, allowed_on_host))
    }

    /// Lists `.git` and `.git/hooks` of the workspace with their contents.
    fn git_snapshot(&self) -> anyhow::Result<Vec<(OsString, Option<Vec<u8>>)>> {
        let git = self.scratch.workspace.join(".git");
        let mut entries = snapshot(&git)?;
        for (name, contents) in snapshot(&git.join("hooks"))? {
            let mut named = OsString::from("hooks/");
            named.push(name);
            entries.push((named, contents));
        }
        Ok(entries)
    }

    fn write_case_variant_of_protected(&self) -> anyhow::Result<Verdict> {
        let workspace = &self.scratch.workspace;
        if !names_ignore_case(&workspace.join(".git")) {
            return Ok(Verdict::Skipped("the workspace's volume is case-sensitive, so .GIT is another directory and not .git".into()));
        }
        // Hook names of their own, so that a hook another probe left does not make this one fail.
        let paths: [PathBuf; 3] = [workspace.join(".GIT/hooks/pre-push"), workspace.join(".git/HOOKS/post-checkout"), workspace.join(".Git/CONFIG")];
        let before = self.git_snapshot()?;
        let run = self.launch_plain(Probe::WriteCaseVariantOfProtected, &paths.each_ref().map(|path| path.as_os_str()))?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(write_refused(result, &changes(&before, &self.git_snapshot()?)))
    }

    /// Reads case variants of the fake key, which `~/.ssh` hides, and hard-links the key into
    /// the workspace. It also hard-links the protected `.git/config` into the workspace and
    /// writes through that link. The fake home is readable, as for the read-credential probe.
    fn read_case_variant_of_hidden(&self) -> anyhow::Result<Verdict> {
        let (home, key) = (&self.scratch.home, self.scratch.fake_key());
        let variants = [home.join(".SSH/id_ed25519"), home.join(".ssh/ID_ED25519")];
        let link = self.scratch.workspace.join("selftest-hidden-link");
        let config = self.scratch.workspace.join(".git/config");
        let config_link = self.scratch.workspace.join("selftest-protected-link");
        let config_before = fs::read(&config).with_context(|| format!("failed to read {}", config.display()))?;

        let show = !self.unconfined() && !self.visible(home);
        let probe_args = [variants[0].as_os_str(), variants[1].as_os_str(), key.as_os_str(), link.as_os_str(), config.as_os_str(), config_link.as_os_str()];
        let run = self.launch(Probe::ReadCaseVariantOfHidden, &probe_args, |args| {
            if show {
                args.allow_read.push(home.clone());
            }
        })?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };

        let mut changes = Vec::new();
        if fs::read(&key).ok().as_deref() != Some(FAKE_KEY.as_bytes()) {
            changes.push("the planted key changed or vanished".to_owned());
        }
        if link.symlink_metadata().is_ok() {
            changes.push("selftest-hidden-link appeared in the workspace".to_owned());
            let _ = fs::remove_file(&link);
        }
        if config_link.symlink_metadata().is_ok() {
            changes.push("selftest-protected-link appeared in the workspace".to_owned());
            let _ = fs::remove_file(&config_link);
        }
        if fs::read(&config).ok().as_deref() != Some(config_before.as_slice()) {
            changes.push(".git/config changed".to_owned());
            // Later probes read the workspace's repository, so give it back its contents.
            fs::write(&config, &config_before).with_context(|| format!("failed to restore {}", config.display()))?;
        }
        let verdict = judge::hidden_variants(result, &changes, names_ignore_case(&key));
        Ok(match verdict {
            Verdict::Held(detail) if self.policy.profile == Profile::ReadOnly => {
                Verdict::Held(format!("{detail}; the read-only profile refuses every link in the workspace, so the hard links show less"))
            }
            other => other,
        })
    }

    fn full_network(&self) -> anyhow::Result<Verdict> {
        if !self.args.allow_domain.is_empty() {
            return Ok(Verdict::Skipped("the options name --allow-domain, which cannot go with --net full".into()));
        }
        let loopback = listen(Ipv4Addr::LOCALHOST)?;
        let port = loopback.local_addr().context("failed to read the listener's port")?.port().to_string();
        // This machine's own address stands for the local network, so that nothing leaves it.
        let own = own_ipv4_address().map(listen).transpose()?;
        let own_address = own.as_ref().map(|listener| listener.local_addr().map(|address| address.to_string())).transpose().context("failed to read the listener's address")?;
        let mut probe_args = vec![OsStr::new(&port)];
        if let Some(address) = &own_address {
            probe_args.push(OsStr::new(address));
        }
        let run = self.launch(Probe::FullNetwork, &probe_args, |args| args.net = Some("full".into()))?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(judge::full_network(result, count_accepted(&loopback), own.as_ref().map(count_accepted)))
    }

    fn listen_without_egress(&self) -> anyhow::Result<Verdict> {
        if matches!(self.policy.network, NetworkMode::Full) {
            return Ok(Verdict::Skipped("the policy's network is full, which allows every connection by design".into()));
        }
        // A port the system found free a moment ago, for the probe to listen on.
        let listen_port = listen(Ipv4Addr::LOCALHOST)?.local_addr().context("failed to read a free port")?.port();
        let target = listen(Ipv4Addr::LOCALHOST)?;
        let target_port = target.local_addr().context("failed to read the listener's port")?.port();
        let (listen_text, target_text) = (listen_port.to_string(), target_port.to_string());
        let run = self.launch(Probe::ListenWithoutEgress, &[OsStr::new(&listen_text), OsStr::new(&target_text)], |args| {
            args.allow_listen.push(listen_text.clone())
        })?;
        let Some(result) = &run.result else { return Ok(no_result(&run)) };
        Ok(judge::listen_without_egress(result, count_accepted(&target)))
    }

    /// Starts the probe's `palisade run` inside `sandbox-exec`, where palisade must refuse.
    fn nested_sandbox(&self) -> anyhow::Result<Verdict> {
        if self.unconfined() {
            return Ok(Verdict::Skipped("the unconfined profile applies no sandbox, so nesting does not stop it".into()));
        }
        if !Path::new(SANDBOX_EXEC).exists() {
            return Ok(Verdict::Skipped(format!("{SANDBOX_EXEC} is missing, so selftest cannot start palisade inside another sandbox")));
        }
        let inner = self.run_command(Probe::SecretEnvironment, &[OsStr::new(SECRET_VARIABLE)], &self.scratch.workspace, |_| {});
        let mut command = Command::new(SANDBOX_EXEC);
        command.args(["-p", ALLOW_ALL_PROFILE]).arg(inner.get_program()).args(inner.get_args());
        command.current_dir(&self.scratch.workspace).env("HOME", &self.scratch.home).stdin(Stdio::null());
        let output = command.output().with_context(|| format!("failed to start {SANDBOX_EXEC}"))?;
        Ok(judge::nested(output.status.code(), &String::from_utf8_lossy(&output.stderr)))
    }
}

/// Returns whether the volume of `path`, which exists, opens the same file when the last
/// component's ASCII letters are in upper case, as a case-insensitive volume does.
fn names_ignore_case(path: &Path) -> bool {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|name| name.to_str())) else { return false };
    let variant = parent.join(name.to_ascii_uppercase());
    match (fs::symlink_metadata(path), fs::symlink_metadata(&variant)) {
        (Ok(original), Ok(other)) => variant != path && original.dev() == other.dev() && original.ino() == other.ino(),
        _ => false,
    }
}

/// Listens on `address` at a port the system picks, without blocking in `accept`.
fn listen(address: Ipv4Addr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind((address, 0)).with_context(|| format!("failed to listen on {address}"))?;
    listener.set_nonblocking(true).context("failed to make the listener non-blocking")?;
    Ok(listener)
}

/// Returns an IPv4 address of an interface of this machine that is up and not loopback.
fn own_ipv4_address() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for getifaddrs to store the list it allocates, which is
    // freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let interface = unsafe { &*entry };
        let up = interface.ifa_flags & libc::IFF_UP as u32 != 0;
        let loopback = interface.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family field is readable.
        let is_ipv4 = !interface.ifa_addr.is_null() && i32::from(unsafe { (*interface.ifa_addr).sa_family }) == libc::AF_INET;
        if up && !loopback && is_ipv4 {
            // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in.
            let address = unsafe { &*interface.ifa_addr.cast::<libc::sockaddr_in>() };
            found = Some(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)));
            break;
        }
        entry = interface.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once, here. `interface`, the
    // only reference into it, is not used after the loop.
    unsafe { libc::freeifaddrs(list) };
    found
}
