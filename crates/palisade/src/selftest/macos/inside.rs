//! The attempts that `palisade selftest-probe` makes inside the sandbox on macOS. Each prints
//! one result line (`../attempt.rs`) for the host side (`macos.rs`) to read.
//!
//! The timeout probe starts a copy of this binary in the role [`MIDDLE_ROLE`], which calls
//! setsid, starts a third copy in the role [`CHILD_ROLE`], prints that child's id and exits.
//! launchd then adopts the child, which is in neither the command's process group nor its
//! chain of parents: only the run's marker in its sandbox ties it to the run.

use std::ffi::{c_void, CString, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::selftest::attempt::{create_and_append, look_up_variable, read_file, short, Attempt, INSIDE_CONTENT};
use crate::selftest::Probe;

/// The argument that makes `selftest-probe timeout-detached` the process that calls setsid.
pub const MIDDLE_ROLE: &str = "middle";
/// The argument that makes `selftest-probe timeout-detached` the detached child, which waits.
pub const CHILD_ROLE: &str = "child";

/// How long the loopback probes wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the detached child lives when nothing ends it: long past its run's timeout, yet
/// bounded, so a child that escaped does not stay forever should selftest fail to kill it.
const DETACHED_CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// How long the timeout probe waits after its result, which outlives the run's timeout.
const OUTLIVE: Duration = Duration::from_secs(60);

/// Makes `probe`'s attempt with the arguments the host side passed and prints the result line.
pub fn attempt(probe: Probe, args: &[OsString]) -> anyhow::Result<u8> {
    let path = |index: usize| -> anyhow::Result<PathBuf> {
        let arg = args.get(index).with_context(|| format!("probe {} needs argument {}", probe.id(), index + 1))?;
        Ok(PathBuf::from(arg))
    };
    let text = |index: usize| -> anyhow::Result<String> {
        let arg = path(index)?;
        arg.to_str().map(str::to_owned).with_context(|| format!("argument {} of probe {} is not UTF-8", index + 1, probe.id()))
    };
    let port = |index: usize| -> anyhow::Result<u16> { text(index)?.parse().with_context(|| format!("argument {} of probe {} is not a port", index + 1, probe.id())) };
    let role = args.first().and_then(|arg| arg.to_str());
    let result = match probe {
        Probe::WriteOutsideWorkspace => create_and_append(&path(0)?, &path(1)?),
        Probe::WriteInsideWorkspace => create_with(&path(0)?, INSIDE_CONTENT.as_bytes()),
        Probe::ReadCredential => read_file(&path(0)?),
        Probe::GitHook => create_with(&path(0)?, b"#!/bin/sh\nexit 0\n"),
        Probe::SecretEnvironment => look_up_variable(&text(0)?),
        Probe::ConnectHostLoopback => connect(port(0)?),
        Probe::TimeoutDetached if role == Some(CHILD_ROLE) => {
            std::thread::sleep(DETACHED_CHILD_LIFETIME);
            return Ok(0);
        }
        Probe::TimeoutDetached if role == Some(MIDDLE_ROLE) => return start_detached_child(),
        Probe::TimeoutDetached => {
            let result = detach();
            result.print();
            // The run must end at its timeout while this probe still runs.
            std::thread::sleep(OUTLIVE);
            return Ok(0);
        }
        Probe::CpuInfo => cpu_info(),
        Probe::EnvFileHidden => env_files(&path(0)?, &path(1)?, &path(2)?, &path(3)?),
        Probe::WriteCaseVariantOfProtected => write_case_variants(&path(0)?, &path(1)?, &path(2)?),
        Probe::ReadCaseVariantOfHidden => any_of(&[hidden_variants(&path(0)?, &path(1)?, &path(2)?, &path(3)?), link_protected(&path(4)?, &path(5)?)]),
        Probe::FullNetwork => full_network(port(0)?, args.get(1).and_then(|arg| arg.to_str()).map(str::to_owned)),
        Probe::ListenWithoutEgress => listen_without_egress(port(0)?, port(1)?),
        // Not in the macOS catalogue, so `selftest` never runs them here and `selftest-probe`
        // rejects their ids. The nesting probe runs no attempt inside.
        Probe::ProcessLimit | Probe::NestedSandbox => anyhow::bail!("probe {} makes no attempt inside the sandbox on macOS", probe.id()),
        Probe::UserNamespace | Probe::Ptrace | Probe::IoUring | Probe::Bpf | Probe::ReadShadow => {
            anyhow::bail!("probe {} runs on Linux only", probe.id())
        }
        Probe::WriteStreamOfProtected
        | Probe::WriteShortNameOfProtected
        | Probe::WriteThroughJunction
        | Probe::WriteWhereUsersMayModify
        | Probe::ShellExecuteUrl => anyhow::bail!("probe {} runs on Windows only", probe.id()),
    };
    result.print();
    Ok(0)
}

/// Creates the file `path`, which must not exist, with `contents`.
fn create_with(path: &Path, contents: &[u8]) -> Attempt {
    let created = OpenOptions::new().write(true).create_new(true).open(path).and_then(|mut file| file.write_all(contents));
    Attempt::of(created, &format!("creating {}", short(path)))
}

fn connect(port: u16) -> Attempt {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    Attempt::of(TcpStream::connect_timeout(&address, CONNECT_TIMEOUT), &format!("connecting to {address}"))
}

/// Joins several attempts into one that succeeded when all of them did, for the probes of
/// what the sandbox must allow.
fn all_of(attempts: &[Attempt]) -> Attempt {
    let detail = attempts.iter().map(|attempt| attempt.detail.as_str()).collect::<Vec<_>>().join("; ");
    let errno = attempts.iter().find_map(|attempt| attempt.errno);
    Attempt { succeeded: attempts.iter().all(|attempt| attempt.succeeded), errno, detail, count: None, pid: None }
}

/// Starts the middle process in a session of its own and returns the detached child's id it
/// reports.
fn detach() -> Attempt {
    let started = (|| -> io::Result<u32> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["selftest-probe", Probe::TimeoutDetached.id(), MIDDLE_ROLE]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
        // allowed; setsid is one, and the hook allocates nothing.
        unsafe {
            command.pre_exec(|| if libc::setsid() < 0 { Err(io::Error::last_os_error()) } else { Ok(()) });
        }
        let mut middle = command.spawn()?;
        let mut line = String::new();
        BufReader::new(middle.stdout.take().expect("stdout is piped")).read_line(&mut line)?;
        middle.wait()?;
        line.trim().parse().map_err(|_| io::Error::other(format!("the middle process reported {line:?} instead of a process id")))
    })();
    match started {
        Ok(pid) => Attempt { pid: Some(pid), ..Attempt::success(format!("started process {pid} in a session of its own, whose parent exited")) },
        Err(error) => Attempt::failure(&error, "starting a detached process"),
    }
}

/// Starts the detached child, prints its id and returns, so that the middle process exits and
/// launchd adopts the child.
fn start_detached_child() -> anyhow::Result<u8> {
    let child = Command::new(std::env::current_exe()?)
        .args(["selftest-probe", Probe::TimeoutDetached.id(), CHILD_ROLE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start the detached child")?;
    println!("{}", child.id());
    Ok(0)
}

/// Joins several attempts at what the sandbox must deny into one that succeeded when any of
/// them did.
fn any_of(attempts: &[Attempt]) -> Attempt {
    let detail = attempts.iter().map(|attempt| attempt.detail.as_str()).collect::<Vec<_>>().join("; ");
    let errno = attempts.iter().find_map(|attempt| attempt.errno);
    Attempt { succeeded: attempts.iter().any(|attempt| attempt.succeeded), errno, detail, count: None, pid: None }
}

/// Creates the hooks `hook` and `other_hook` and appends to `config`, each a case variant of a
/// protected path of `.git`.
fn write_case_variants(hook: &Path, other_hook: &Path, config: &Path) -> Attempt {
    let appended = OpenOptions::new().append(true).open(config).and_then(|mut file| file.write_all(b"escaped\n"));
    any_of(&[
        create_with(hook, b"#!/bin/sh\nexit 0\n"),
        create_with(other_hook, b"#!/bin/sh\nexit 0\n"),
        Attempt::of(appended, &format!("appending to {}", short(config))),
    ])
}

/// Reads `variant` and `other_variant`, case variants of the hidden file `hidden`, and
/// hard-links `hidden` to `link`, a new name in the workspace. A link would be a second name
/// for the hidden file that no deny names, so it is read back when it was made.
fn hidden_variants(variant: &Path, other_variant: &Path, hidden: &Path, link: &Path) -> Attempt {
    let linked = match fs::hard_link(hidden, link) {
        Ok(()) => match read_file(link) {
            Attempt { succeeded: true, detail, .. } => Attempt::success(format!("hard-linking {} to {} succeeded, and {detail}", short(hidden), short(link))),
            read => Attempt::success(format!("hard-linking {} to {} succeeded, but {}", short(hidden), short(link), read.detail)),
        },
        Err(error) => Attempt::failure(&error, &format!("hard-linking {} to {}", short(hidden), short(link))),
    };
    any_of(&[read_file(variant), read_file(other_variant), linked])
}

/// Hard-links the protected file `protected` (`.git/config`) to `link`, a new name in the
/// workspace, and appends through the link. A link would be a second name for the protected
/// file that no deny names, so making it counts as success even when the append fails.
fn link_protected(protected: &Path, link: &Path) -> Attempt {
    if let Err(error) = fs::hard_link(protected, link) {
        return Attempt::failure(&error, &format!("hard-linking {} to {}", short(protected), short(link)));
    }
    let appended = OpenOptions::new().append(true).open(link).and_then(|mut file| file.write_all(b"escaped\n"));
    match appended {
        Ok(()) => Attempt::success(format!("hard-linking {} to {} succeeded, and appending through the link succeeded", short(protected), short(link))),
        Err(error) => Attempt::success(format!("hard-linking {} to {} succeeded, but appending through the link failed: {error}", short(protected), short(link))),
    }
}

/// Reads the CPU's description as Node's `os.cpus()` and numpy do, and lists processes with
/// `/bin/ps`.
fn cpu_info() -> Attempt {
    let mut attempts: Vec<Attempt> = ["hw.ncpu", "hw.physicalcpu"]
        .into_iter()
        .map(|name| match sysctl_int(name) {
            Ok(value) if value > 0 => Attempt::success(format!("{name} is {value}")),
            Ok(value) => Attempt::failed_without_code(format!("{name} is {value}")),
            Err(error) => Attempt::failure(&error, &format!("reading {name}")),
        })
        .collect();
    for name in ["hw.model", "machdep.cpu.brand_string"] {
        attempts.push(match sysctl_text(name) {
            Ok(value) if !value.is_empty() => Attempt::success(format!("{name} is {value:?}")),
            Ok(_) => Attempt::failed_without_code(format!("{name} is empty")),
            Err(error) => Attempt::failure(&error, &format!("reading {name}")),
        });
    }
    attempts.push(match processor_count() {
        Ok(count) if count > 0 => Attempt::success(format!("host_processor_info reported {count} CPUs")),
        Ok(_) => Attempt::failed_without_code("host_processor_info reported no CPU".into()),
        Err(error) => Attempt::failed_without_code(error),
    });
    attempts.push(match Command::new("/bin/ps").args(["-ax", "-o", "pid="]).stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(output) if output.status.success() => {
            let count = String::from_utf8_lossy(&output.stdout).lines().count();
            if count > 0 { Attempt::success(format!("/bin/ps listed {count} processes")) } else { Attempt::failed_without_code("/bin/ps listed no process".into()) }
        }
        Ok(output) => Attempt::failed_without_code(format!("/bin/ps failed with {}", output.status)),
        Err(error) => Attempt::failure(&error, "running /bin/ps"),
    });
    all_of(&attempts)
}

/// Calls `host_processor_info` for the CPUs' load, as libuv's `uv_cpu_info` does for Node's
/// `os.cpus()`, and returns the number of CPUs it reported, or the Mach error as text.
// libc marks its Mach functions deprecated in favour of the mach2 crate; these three calls are
// all the probe needs.
#[allow(deprecated)]
fn processor_count() -> Result<u32, String> {
    let mut count: libc::natural_t = 0;
    let mut info: libc::processor_info_array_t = std::ptr::null_mut();
    let mut info_count: libc::mach_msg_type_number_t = 0;
    // SAFETY: the three pointers are valid places for the call to store the CPU count, the
    // address of the array it allocates in this task and the array's length in integers.
    let status = unsafe { libc::host_processor_info(libc::mach_host_self(), libc::PROCESSOR_CPU_LOAD_INFO, &mut count, &mut info, &mut info_count) };
    if status != libc::KERN_SUCCESS {
        return Err(format!("host_processor_info failed with kern_return_t {status}"));
    }
    let size = info_count as usize * std::mem::size_of::<libc::integer_t>();
    // SAFETY: `info` is the array the call allocated in this task, `info_count` integers long.
    // It is released once, here, and never read.
    unsafe { libc::vm_deallocate(libc::mach_task_self(), info as libc::vm_address_t, size) };
    Ok(count)
}

fn sysctl_int(name: &str) -> io::Result<i32> {
    let name = CString::new(name)?;
    let mut value: i32 = 0;
    let mut size = std::mem::size_of::<i32>();
    // SAFETY: `value` has room for the `size` bytes the call may write, and `size` is updated
    // with what it wrote; no new value is set.
    let status = unsafe { libc::sysctlbyname(name.as_ptr(), (&raw mut value).cast::<c_void>(), &mut size, std::ptr::null_mut(), 0) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn sysctl_text(name: &str) -> io::Result<String> {
    let name = CString::new(name)?;
    let mut buffer = vec![0u8; 256];
    let mut size = buffer.len();
    // SAFETY: the buffer has room for `size` bytes, and the call writes no more and updates
    // `size`; no new value is set.
    let status = unsafe { libc::sysctlbyname(name.as_ptr(), buffer.as_mut_ptr().cast::<c_void>(), &mut size, std::ptr::null_mut(), 0) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    buffer.truncate(size);
    Ok(String::from_utf8_lossy(&buffer).trim_end_matches('\0').to_owned())
}

/// Runs from the workspace's `sub`: reads `root_env` and `other_env`, copies `root_env` into
/// `$TMPDIR`, creates `sub_env`, and writes `allowed`. The attempt succeeded when any access to
/// a denied file did; `count` is 1 when the allowed write worked.
fn env_files(root_env: &Path, other_env: &Path, sub_env: &Path, allowed: &Path) -> Attempt {
    let copy_target = std::env::temp_dir().join("palisade-selftest-env-copy");
    let copied = fs::copy(root_env, &copy_target);
    let denied = [
        read_file(root_env),
        read_file(other_env),
        Attempt::of(copied, &format!("copying {} to $TMPDIR", root_env.display())),
        create_with(sub_env, b"escaped\n"),
    ];
    let written = create_with(allowed, b"allowed\n");
    let succeeded = denied.iter().any(|attempt| attempt.succeeded);
    let mut details: Vec<&str> = denied.iter().map(|attempt| attempt.detail.as_str()).collect();
    details.push(&written.detail);
    Attempt {
        succeeded,
        errno: denied.iter().find_map(|attempt| attempt.errno),
        detail: details.join("; "),
        count: Some(u64::from(written.succeeded)),
        pid: None,
    }
}

/// Connects to the host's loopback listener at `port`, resolves localhost and, when given,
/// connects to `own_address`, this machine's own non-loopback address and a listener's port.
fn full_network(port: u16, own_address: Option<String>) -> Attempt {
    let mut attempts = vec![connect(port)];
    attempts.push(match ("localhost", 80).to_socket_addrs() {
        Ok(addresses) => Attempt::success(format!("resolving localhost gave {} addresses", addresses.count())),
        Err(error) => Attempt::failure(&error, "resolving localhost"),
    });
    if let Some(own_address) = own_address {
        attempts.push(match own_address.parse::<SocketAddr>() {
            Ok(address) => Attempt::of(TcpStream::connect_timeout(&address, CONNECT_TIMEOUT), &format!("connecting to {address}")),
            Err(_) => Attempt::failed_without_code(format!("{own_address:?} is not an address")),
        });
    }
    all_of(&attempts)
}

/// Listens on `listen_port` of 127.0.0.1 and connects to `target_port`. The attempt succeeded
/// when the connection did; `count` is 1 when listening worked.
fn listen_without_egress(listen_port: u16, target_port: u16) -> Attempt {
    let listening = TcpListener::bind((Ipv4Addr::LOCALHOST, listen_port));
    let listened = Attempt::of(listening.as_ref().map(|_| ()).map_err(|error| io::Error::new(error.kind(), error.to_string())), &format!("listening on 127.0.0.1:{listen_port}"));
    let connected = connect(target_port);
    Attempt {
        succeeded: connected.succeeded,
        errno: connected.errno,
        detail: format!("{}; {}", listened.detail, connected.detail),
        count: Some(u64::from(listened.succeeded)),
        pid: None,
    }
}
