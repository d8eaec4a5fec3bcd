//! Test fixtures: a throwaway workspace, a fake home directory full of fake credentials, a
//! directory outside every writable root, and a way to run `palisade` as root or as an
//! unprivileged user that the harness creates.
//!
//! Every escape test is written once as a function taking a [`Fixture`] and expanded by
//! [`both_identities!`] into two tests, `<name>::as_root` and `<name>::as_user`. A variant
//! that cannot run on this machine prints a visible `SKIP` line with the reason and returns.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The unprivileged account the tests create and run the sandbox as.
pub const TEST_USER: &str = "palisade-test";

/// Who runs `palisade` in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Root,
    User,
}

/// Expands one test body into a root and an unprivileged variant.
#[macro_export]
macro_rules! both_identities {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn as_root() {
                if let Some(fixture) = $crate::suite::harness::Fixture::new($crate::suite::harness::Who::Root, stringify!($name)) {
                    ($body)(&fixture);
                }
            }
            #[test]
            fn as_user() {
                if let Some(fixture) = $crate::suite::harness::Fixture::new($crate::suite::harness::Who::User, stringify!($name)) {
                    ($body)(&fixture);
                }
            }
        }
    };
}

/// Prints a visible skip notice. Tests call it and return; they never pass silently.
///
/// It writes to the stderr descriptor directly: the test harness captures `eprintln!` output
/// of passing tests, which would hide the notice.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIP {test}: {reason}\n").as_bytes());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The uid and gid of [`TEST_USER`], creating the account on first use (root only).
pub fn test_user_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        let lookup = || {
            let out = Command::new("id").args(["-u", TEST_USER]).output().ok()?;
            let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            let out = Command::new("id").args(["-g", TEST_USER]).output().ok()?;
            let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some((uid, gid))
        };
        if let Some(ids) = lookup() {
            return Some(ids);
        }
        if !is_root() {
            return None;
        }
        let status = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh", TEST_USER])
            .status()
            .ok()?;
        if !status.success() {
            // Another test process may have created it meanwhile.
            return lookup();
        }
        lookup()
    })
}

/// A copy of the binary under test that every user can execute: the build directory may sit
/// under a home directory the test user cannot enter.
///
/// `cp` writes the copy in its own process. Written from this multithreaded process, the open
/// file could leak into a child another test thread forks at that moment, and executing the
/// copy would then fail with ETXTBSY.
pub fn palisade_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from("/var/tmp/palisade-test-bin");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // Copies left by earlier test runs whose process is gone.
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("palisade-").and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let bin = dir.join(format!("palisade-{}", std::process::id()));
        let status = Command::new("cp").arg(env!("CARGO_BIN_EXE_palisade")).arg(&bin).status().unwrap();
        assert!(status.success(), "failed to copy the palisade binary to {}", bin.display());
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
}

/// The result of one `palisade` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both output streams unless the exit status is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "unexpected exit status\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Lines of stdout that start with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|line| line.starts_with(prefix)).collect()
    }
}

/// One test's world: `root` contains everything and is removed at the end.
///
/// - `ws`: the workspace, a git repository with one commit, owned by whoever runs the sandbox;
/// - `home`: a fake home directory (passed as `HOME`) with fake credentials whose contents
///   contain `CANARY`;
/// - `out`: a directory outside every writable root, writable by the sandbox's user on the
///   host, where canary files live.
pub struct Fixture {
    pub who: Who,
    pub name: String,
    pub root: PathBuf,
    pub ws: PathBuf,
    pub home: PathBuf,
    pub out: PathBuf,
    /// Uid and gid that own the fixture's files (the test user's for [`Who::User`]).
    pub owner: (u32, u32),
}

/// Text every fake credential contains; tests grep for it.
pub const CANARY: &str = "PALISADE-CANARY-7f3a";

/// Fake credential files created in every fixture's home, relative to it.
pub const FAKE_CREDENTIALS: &[&str] = &[
    ".ssh/id_ed25519", ".aws/credentials", ".config/gh/hosts.yml", ".kube/config",
    ".docker/config.json", ".netrc", ".git-credentials", ".npmrc", ".pypirc",
    ".config/gcloud/credentials.db", ".azure/msal_token_cache.json", ".gnupg/private-keys-v1.d/key.key",
    ".cargo/credentials.toml",
];

impl Fixture {
    /// Creates the fixture, or prints a SKIP line and returns `None` when `who` cannot run here.
    pub fn new(who: Who, name: &str) -> Option<Fixture> {
        let owner = match who {
            Who::Root if !is_root() => {
                skip(name, "the root variant needs the tests to run as root");
                return None;
            }
            Who::Root => (0, 0),
            Who::User if is_root() => match test_user_ids() {
                Some(ids) => ids,
                None => {
                    skip(name, &format!("could not create the unprivileged user {TEST_USER}"));
                    return None;
                }
            },
            Who::User => {
                // Not root: the current user is the unprivileged user.
                let out = Command::new("id").arg("-u").output().unwrap();
                let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
                let out = Command::new("id").arg("-g").output().unwrap();
                (uid, String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
            }
        };
        let suffix = match who {
            Who::Root => "root",
            Who::User => "user",
        };
        let root = PathBuf::from(format!("/var/tmp/palisade-it-{}-{name}-{suffix}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let fixture = Fixture {
            who,
            name: format!("{name}::{suffix}"),
            ws: root.join("ws"),
            home: root.join("home"),
            out: root.join("out"),
            root,
            owner,
        };
        fs::create_dir_all(&fixture.ws).unwrap();
        fs::create_dir_all(&fixture.out).unwrap();
        fs::create_dir_all(&fixture.home).unwrap();
        for relative in FAKE_CREDENTIALS {
            fixture.write(&fixture.home.join(relative), &format!("{CANARY} {relative}\n"));
        }
        fixture.chown_all();
        fixture.git_init(&fixture.ws.clone());
        Some(fixture)
    }

    /// Writes a file, creating its parents, owned by the fixture's owner.
    pub fn write(&self, path: &Path, contents: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, contents).unwrap();
        self.chown_all();
    }

    /// Gives every file under the fixture root to the fixture's owner.
    pub fn chown_all(&self) {
        if is_root() && self.owner != (0, 0) {
            let status = Command::new("chown")
                .args(["-R", &format!("{}:{}", self.owner.0, self.owner.1)])
                .arg(&self.root)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Runs a command on the host as the fixture's owner, in `dir`, with the fake home.
    pub fn host(&self, dir: &Path, program: &str, args: &[&str]) -> Run {
        let mut command = self.as_owner(program);
        command.args(args).current_dir(dir).env("HOME", &self.home);
        Run::from_output(command.output().unwrap())
    }

    /// Runs a shell script on the host as the fixture's owner, in the workspace.
    pub fn host_sh(&self, script: &str) -> Run {
        self.host(&self.ws.clone(), "/bin/sh", &["-c", script])
    }

    /// Builds a command that runs `program` as the fixture's owner, as `palisade` itself runs.
    pub fn as_owner(&self, program: &str) -> Command {
        if self.who == Who::User && is_root() {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={}", self.owner.0))
                .arg(format!("--regid={}", self.owner.1))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Initialises a git repository with one empty commit, as the fixture's owner.
    pub fn git_init(&self, dir: &Path) {
        for args in [
            vec!["init", "-q"],
            vec!["-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"],
        ] {
            let run = self.host(dir, "git", &args);
            assert_eq!(run.code, Some(0), "git {args:?} failed: {}", run.stderr);
        }
    }

    /// Runs `palisade ARGS` as the fixture's user, from the workspace, with the fake home.
    pub fn palisade<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.palisade_in(&self.ws.clone(), args, &[])
    }

    /// Runs `palisade ARGS` from `dir` with extra environment variables.
    pub fn palisade_in<S: AsRef<OsStr>>(&self, dir: &Path, args: &[S], env: &[(&str, &str)]) -> Run {
        let mut command = self.as_owner(palisade_binary().to_str().unwrap());
        command.args(args).current_dir(dir).env("HOME", &self.home).stdin(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        // A bug in palisade must not hang the suite.
        let mut wrapped = Command::new("timeout");
        wrapped.arg("--kill-after=5").arg("120").arg(command.get_program()).args(command.get_args());
        wrapped.current_dir(dir).stdin(Stdio::null());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        Run::from_output(wrapped.output().unwrap())
    }

    /// Runs `palisade ARGS` from the workspace under an outer guard of the test's own, which
    /// holds even if palisade fails to: at most `max_tasks` processes and threads for the
    /// user the sandbox runs as (`prlimit --nproc`), and `seconds` of wall-clock time.
    pub fn palisade_guarded<S: AsRef<OsStr>>(&self, max_tasks: u64, seconds: u64, args: &[S]) -> Run {
        self.palisade_guarded_with_env(max_tasks, seconds, args, &[])
    }

    /// Runs `palisade ARGS` as [`Fixture::palisade_guarded`] does, with extra environment
    /// variables.
    pub fn palisade_guarded_with_env<S: AsRef<OsStr>>(&self, max_tasks: u64, seconds: u64, args: &[S], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new("timeout");
        command.arg("--kill-after=5").arg(seconds.to_string());
        command.arg("prlimit").arg(format!("--nproc={max_tasks}")).arg("--");
        let owner = self.as_owner(palisade_binary().to_str().unwrap());
        command.arg(owner.get_program()).args(owner.get_args()).args(args);
        command.current_dir(&self.ws).env("HOME", &self.home).stdin(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        Run::from_output(command.output().unwrap())
    }

    /// Runs `sh -c SCRIPT` in the default sandbox (workspace-write, network none) with `extra`
    /// flags before `--`.
    pub fn sandbox_sh(&self, extra: &[&str], script: &str) -> Run {
        let mut args: Vec<&str> = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
        self.palisade(&args)
    }

    /// A snapshot of every file under `dir`: path, size, mode, mtime and contents.
    pub fn snapshot(&self, dir: &Path) -> Vec<(PathBuf, u64, u32, i64, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            let Ok(meta) = fs::symlink_metadata(&current) else { continue };
            let contents = if meta.is_file() { fs::read(&current).unwrap_or_default() } else { Vec::new() };
            entries.push((current.clone(), meta.len(), meta.mode(), meta.mtime(), contents));
            if meta.is_dir() {
                for entry in fs::read_dir(&current).unwrap() {
                    stack.push(entry.unwrap().path());
                }
            }
        }
        entries.sort();
        entries
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("chmod").args(["-R", "u+rwx"]).arg(&self.root).status();
        let _ = fs::remove_dir_all(&self.root);
    }
}
