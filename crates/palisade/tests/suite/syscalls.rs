//! The seccomp and Landlock layers seen from inside: each refused system call fails only
//! because of the filter, ordinary programs still work, and every process of a run carries both
//! layers.

use std::fs;
use std::process::{Command, Stdio};

use crate::both_identities;
use crate::suite::harness::{skip, Fixture, Run};

/// The host's python for control runs; the caller's PATH may name one the test user cannot run.
const PYTHON: &str = "/usr/bin/python3";

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ENOTTY: i32 = 25;
const ENOSYS: i32 = 38;

/// Calls each system call the filter refuses, with arguments that make the kernel fail
/// differently (EFAULT, EINVAL, EBADF, ENOENT) or succeed harmlessly when no filter is in the
/// way, and prints `name errno` (0 for success). x86_64 numbers.
const PROBE: &str = r#"
import ctypes, os, signal, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    ctypes.set_errno(0)
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r == 0 and name.startswith("clone"):
        os._exit(0)
    if r > 0 and name.startswith("clone"):
        os.waitpid(r, 0)
    print(name, ctypes.get_errno() if r < 0 else 0, flush=True)
nowhere = b"/nonexistent-palisade-probe"
call("io_uring_setup", 425, 1, 0)
call("io_uring_enter", 426, -1, 0, 0, 0, 0, 0)
call("io_uring_register", 427, -1, 0, 0, 0)
call("bpf", 321, 9999, 0, 0)
call("perf_event_open", 298, 0, 0, -1, -1, 0)
call("userfaultfd", 323, 0xFFFF)
call("kexec_load", 246, 0, 0, 0, 0xFFFF0000)
call("kexec_file_load", 320, -1, -1, 0, 0, 0xFFFF)
call("finit_module", 313, -1, b"", 0)
call("delete_module", 176, b"palisade_no_such_module", os.O_NONBLOCK)
call("add_key", 248, 0, 0, 0, 0, 0)
call("request_key", 249, 0, 0, 0, 0)
call("keyctl", 250, 9999, 0, 0, 0, 0)
call("mount", 165, 0, nowhere, 0, 0, 0)
call("umount2", 166, nowhere, 0xFFFF)
call("chroot", 161, nowhere)
call("open_tree", 428, -1, 0, 0xFFFFFFFF)
call("move_mount", 429, -1, 0, -1, 0, 0xFFFFFFFF)
call("fspick", 433, -1, 0, 0xFFFFFFFF)
call("mount_setattr", 442, -1, 0, 0xFFFFFFFF, 0, 0)
call("setns", 308, -1, 0)
call("open_by_handle_at", 304, -1, 0, 0)
call("syslog", 103, 10, 0, 0)
call("ptrace", 101, 0xFFFF, 0, 0, 0)
call("process_vm_readv", 310, os.getpid(), 0, 0, 0, 0, 0)
call("pidfd_getfd", 438, -1, 0, 0)
call("unshare_newuser", 272, 0x10000000)
call("clone_newuser", 56, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
args = ctypes.create_string_buffer(struct.pack("<8Q", 0x10000000, 0, 0, 0, signal.SIGCHLD, 0, 0, 0))
call("clone3_newuser", 435, args, 64)
call("x32_getpid", 0x40000000 | 39)
call("beyond_ceiling", 470)
devnull = os.open("/dev/null", os.O_RDONLY)
byte = ctypes.c_char(b"x")
call("ioctl_tiocsti", 16, devnull, 0x5412, ctypes.byref(byte))
call("ioctl_tiocsti_high_bits", 16, devnull, 0x7A5A000000005412, ctypes.byref(byte))
call("ioctl_tioclinux", 16, devnull, 0x541C, ctypes.byref(byte))
for name, family, kind, proto in [("packet", 17, 3, 0), ("netlink_audit", 16, 3, 9), ("vsock", 40, 1, 0), ("alg", 38, 5, 0), ("bluetooth", 31, 1, 0)]:
    try:
        socket.socket(family, kind, proto).close(); print("socket_" + name, 0)
    except OSError as e:
        print("socket_" + name, e.errno)
"#;

/// What each probe must answer inside the sandbox.
const EXPECTED: &[(&str, i32)] = &[
    ("io_uring_setup", EPERM),
    ("io_uring_enter", EPERM),
    ("io_uring_register", EPERM),
    ("bpf", EPERM),
    ("perf_event_open", EPERM),
    ("userfaultfd", EPERM),
    ("kexec_load", EPERM),
    ("kexec_file_load", EPERM),
    ("finit_module", EPERM),
    ("delete_module", EPERM),
    ("add_key", EPERM),
    ("request_key", EPERM),
    ("keyctl", EPERM),
    ("mount", EPERM),
    ("umount2", EPERM),
    ("chroot", EPERM),
    ("open_tree", EPERM),
    ("move_mount", EPERM),
    ("fspick", EPERM),
    ("mount_setattr", EPERM),
    ("setns", EPERM),
    ("open_by_handle_at", EPERM),
    ("syslog", EPERM),
    ("ptrace", EPERM),
    ("process_vm_readv", EPERM),
    ("pidfd_getfd", EPERM),
    ("unshare_newuser", EPERM),
    ("clone_newuser", EPERM),
    ("clone3_newuser", ENOSYS),
    ("x32_getpid", EPERM),
    ("beyond_ceiling", ENOSYS),
    ("ioctl_tiocsti", EPERM),
    ("ioctl_tiocsti_high_bits", EPERM),
    ("ioctl_tioclinux", EPERM),
    ("socket_packet", EPERM),
    ("socket_netlink_audit", EPERM),
    ("socket_vsock", EPERM),
    ("socket_alg", EPERM),
    ("socket_bluetooth", EPERM),
];

fn parse_probe(run: &Run) -> Vec<(String, i32)> {
    run.stdout
        .lines()
        .filter_map(|line| {
            let (name, errno) = line.split_once(' ')?;
            Some((name.to_owned(), errno.trim().parse().ok()?))
        })
        .collect()
}

fn errno_of(results: &[(String, i32)], name: &str) -> Option<i32> {
    results.iter().find(|(probe, _)| probe == name).map(|(_, errno)| *errno)
}

// Every refused call fails inside, and the same
// probe on the host, as the same user, shows that for most of them only the filter explains it.
both_identities!(refused_syscalls_fail_only_because_of_the_filter, |f: &Fixture| {
    let probe = f.ws.join("probe.py");
    f.write(&probe, PROBE);
    let inside = f.palisade(&["run", "--", "python3", probe.to_str().unwrap()]);
    inside.expect_code(0);
    // The control run's calls are harmless on the host: bad arguments, missing paths, and at
    // most a new user namespace for the probe process itself.
    let control = f.host(&f.ws, PYTHON, &[probe.to_str().unwrap()]);
    assert_eq!(control.code, Some(0), "the probe failed on the host: {}", control.stderr);
    let inside = parse_probe(&inside);
    let control = parse_probe(&control);

    let mut only_the_filter = 0;
    for (name, expected) in EXPECTED {
        let got = errno_of(&inside, name).unwrap_or_else(|| panic!("probe {name} printed nothing inside: {inside:?}"));
        assert_eq!(got, *expected, "{name}: expected errno {expected} inside the sandbox, got {got}; all: {inside:?}");
        if errno_of(&control, name).is_some_and(|host| host != *expected) {
            only_the_filter += 1;
        }
    }
    // Without the filter most probes fail with another errno or succeed; a probe list where the
    // host answers the same everywhere would prove nothing.
    assert!(
        only_the_filter * 3 >= EXPECTED.len() * 2,
        "only {only_the_filter} of {} probes behave differently on the host; control: {control:?}",
        EXPECTED.len()
    );
});

// After clone3 answers ENOSYS, threads (which glibc then creates with clone) still work, and so
// do subprocesses from Python and Node and asyncio's cross-thread wake-ups over a socketpair.
both_identities!(ordinary_runtimes_still_work, |f: &Fixture| {
    let script = r#"
import asyncio, socket, subprocess, threading
t = threading.Thread(target=lambda: print("THREAD-OK")); t.start(); t.join()
a, b = socket.socketpair(); a.send(b"x"); print("SOCKETPAIR", b.recv(1))
async def main():
    loop = asyncio.get_running_loop(); fut = loop.create_future()
    threading.Timer(0.1, lambda: loop.call_soon_threadsafe(fut.set_result, "WOKE")).start()
    print(await asyncio.wait_for(fut, 3))
asyncio.run(main())
subprocess.run(["true"], check=True); print("SUBPROCESS-OK")
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.close(); print("AF_UNIX-OK")
"#;
    let probe = f.ws.join("runtimes.py");
    f.write(&probe, script);
    let run = f.palisade(&["run", "--", "python3", probe.to_str().unwrap()]);
    run.expect_code(0);
    for expected in ["THREAD-OK", "SOCKETPAIR b'x'", "WOKE", "SUBPROCESS-OK", "AF_UNIX-OK"] {
        assert!(run.stdout.contains(expected), "missing {expected}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    }
    if Command::new("node").arg("--version").stdout(Stdio::null()).status().is_ok_and(|status| status.success()) {
        let node = r#"const c = require("child_process");
const r = c.spawnSync("true"); if (r.error || r.status !== 0) { console.log("SPAWN-FAILED", r.error); process.exit(1); }
console.log(c.execFileSync("git", ["--version"]).toString().trim());"#;
        let run = f.palisade(&["run", "--", "node", "-e", node]);
        run.expect_code(0);
        assert!(run.stdout.contains("git version"), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    } else {
        skip(&f.name, "node is not installed; the Node spawnSync part did not run");
    }
});

// The command and every process it starts, in the foreground or detached
// in the background, carry no_new_privs, the seccomp filter and the sandbox's namespaces.
both_identities!(every_process_carries_the_layers, |f: &Fixture| {
    let host_mnt = fs::read_link("/proc/self/ns/mnt").unwrap();
    let host_net = fs::read_link("/proc/self/ns/net").unwrap();
    let script = r#"
line='echo "$0 $(grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status | tr -s "\t " " " | tr "\n" " ") $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/net)"'
sh -c "$line" foreground
sh -c "$line" background &
wait
setsid sh -c "$line" detached
"#;
    let run = f.sandbox_sh(&[], script);
    run.expect_code(0);
    for entry in ["foreground", "background", "detached"] {
        let line = run.stdout.lines().find(|line| line.starts_with(entry)).unwrap_or_else(|| panic!("no {entry} line:\n{}\n{}", run.stdout, run.stderr));
        assert!(line.contains("NoNewPrivs: 1"), "{line}");
        assert!(line.contains("Seccomp: 2"), "{line}");
        assert!(!line.contains(host_mnt.to_str().unwrap()), "{entry} shares the host's mount namespace: {line}");
        assert!(!line.contains(host_net.to_str().unwrap()), "{entry} shares the host's network namespace: {line}");
    }
});

// Landlock is in force inside, seen from the one thing it refuses that the mounts
// allow: an ioctl on a device that is not a terminal (EACCES from Landlock, ENOTTY without it).
both_identities!(landlock_is_in_force_inside, |f: &Fixture| {
    let script = "import fcntl, termios\ntry:\n    fcntl.ioctl(open('/dev/null'), termios.TCGETS, bytes(60)); print('IOCTL-ALLOWED')\nexcept OSError as e:\n    print('IOCTL', e.errno)\n";
    let run = f.palisade(&["run", "--", "python3", "-c", script]);
    run.expect_code(0);
    assert!(run.stdout.contains(&format!("IOCTL {}", EACCES)), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let host = f.host(&f.ws, PYTHON, &["-c", script]);
    assert!(host.stdout.contains(&format!("IOCTL {}", ENOTTY)), "the host control differs: {}", host.stdout);
});

// ptrace is refused by default and allowed for the run's own processes with
// --allow-ptrace, so strace and gdb work when the user asks for them.
both_identities!(ptrace_needs_the_opt_in, |f: &Fixture| {
    if !std::path::Path::new("/usr/bin/strace").exists() {
        skip(&f.name, "strace is not installed");
        return;
    }
    let denied = f.palisade(&["run", "--", "strace", "-f", "-o", "/dev/null", "true"]);
    assert_ne!(denied.code, Some(0), "strace worked without --allow-ptrace\n{}", denied.stderr);
    assert!(denied.stderr.contains("Operation not permitted"), "{}", denied.stderr);
    let allowed = f.palisade(&["run", "--allow-ptrace", "--", "strace", "-f", "-o", "/dev/null", "true"]);
    allowed.expect_code(0);
    // The policy file field means the same.
    let policy = f.root.join("ptrace.toml");
    f.write(&policy, "allow_ptrace = true\n");
    f.palisade(&["run", "--policy", policy.to_str().unwrap(), "--", "strace", "-f", "-o", "/dev/null", "true"]).expect_code(0);
});

/// Serves one connection on a UNIX socket at the given path, answering `pong`.
const ECHO_SERVER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666); s.listen(1)
print("LISTENING", flush=True)
c, _ = s.accept(); c.recv(16); c.sendall(b"pong"); c.close()
"#;

const ECHO_CLIENT: &str = r#"
import socket, sys
c = socket.socket(socket.AF_UNIX)
try:
    c.connect(sys.argv[1]); c.sendall(b"ping"); print("REPLY", c.recv(16).decode())
except OSError as e:
    print("CONNECT-FAILED", e.errno, e.strerror)
"#;

// UNIX sockets are not refused by the filter. A host socket the policy makes visible is
// reachable; one it does not is absent. As the unprivileged user the same holds for ssh-agent.
// (As root the command runs as an unprivileged uid, and ssh-agent only answers its owner.)
both_identities!(allowed_unix_socket_is_reachable, |f: &Fixture| {
    use std::io::{BufRead, BufReader};
    let socket = f.out.join("echo.sock");
    let mut server = f.as_owner(PYTHON);
    server.args(["-c", ECHO_SERVER]).arg(&socket).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = server.spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "LISTENING");
    let path = socket.to_str().unwrap();
    let hidden = f.palisade(&["run", "--", "python3", "-c", ECHO_CLIENT, path]);
    let allowed = f.palisade(&["run", "--allow-read", path, "--", "python3", "-c", ECHO_CLIENT, path]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(allowed.stdout.contains("REPLY pong"), "{}{}", allowed.stdout, allowed.stderr);
    assert!(hidden.stdout.contains("CONNECT-FAILED 2"), "a socket the policy does not name must be absent: {}{}", hidden.stdout, hidden.stderr);

    if f.who != crate::suite::harness::Who::User || !std::path::Path::new("/usr/bin/ssh-agent").exists() {
        return;
    }
    let socket = f.out.join("agent.sock");
    let mut agent = f.as_owner("/usr/bin/ssh-agent");
    agent.args(["-D", "-a"]).arg(&socket).stdout(Stdio::null()).stderr(Stdio::null());
    let mut agent = agent.spawn().unwrap();
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let variable = format!("SSH_AUTH_SOCK={}", socket.display());
    let allowed = f.palisade(&["run", "--allow-read", socket.to_str().unwrap(), "--env", &variable, "--", "ssh-add", "-l"]);
    let hidden = f.palisade(&["run", "--env", &variable, "--", "ssh-add", "-l"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(allowed.code, Some(1), "ssh-add -l: {}{}", allowed.stdout, allowed.stderr);
    assert!(allowed.stdout.contains("no identities"), "{}{}", allowed.stdout, allowed.stderr);
    assert_ne!(hidden.code, Some(0));
    assert!(hidden.stderr.contains("Error connecting to agent"), "{}", hidden.stderr);
});

// Truncating a read-only file is refused (by the read-only mount, and by Landlock's
// truncate right behind it).
both_identities!(read_only_files_cannot_be_truncated, |f: &Fixture| {
    let target = f.out.join("bl12.bin");
    let contents: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&target, &contents).unwrap();
    f.chown_all();
    let path = target.to_str().unwrap();
    let script = format!(
        "truncate -s 0 {path}; echo truncate=$?; python3 -c 'import os,sys; os.truncate(sys.argv[1], 1)' {path}; echo py=$?"
    );
    let run = f.sandbox_sh(&["--allow-read", path], &script);
    assert!(!run.stdout.contains("truncate=0"), "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("py=0"), "{}{}", run.stdout, run.stderr);
    assert_eq!(fs::read(&target).unwrap(), contents, "the file changed");
});

// Nothing palisade owns inside the sandbox can be changed from inside, and a second run
// after the attempts is confined as before.
both_identities!(sandbox_control_state_cannot_be_tampered_with, |f: &Fixture| {
    let script = r#"
for target in /proc/1/environ /proc/1/mem /proc/1/oom_score_adj /proc/1/attr/current /proc/1/setgroups; do
  if echo x 2>/dev/null > "$target"; then echo "WROTE $target"; fi
done
if cat /proc/1/environ >/dev/null 2>&1; then echo "READ /proc/1/environ"; fi
if kill -STOP 1 2>/dev/null; then echo "SIGNALLED init"; fi
if rm -f .claude 2>/dev/null && [ ! -e .claude ]; then :; fi
if ls -la /proc/1/fd/ 2>/dev/null | grep -q .; then echo "LISTED init fds"; fi
echo done
"#;
    let run = f.sandbox_sh(&[], script);
    assert!(run.stdout.contains("done"), "{}{}", run.stdout, run.stderr);
    for forbidden in ["WROTE", "READ /proc/1", "SIGNALLED", "LISTED"] {
        assert!(!run.stdout.contains(forbidden), "{}", run.stdout);
    }
    let probe = f.ws.join("probe.py");
    f.write(&probe, PROBE);
    let again = f.palisade(&["run", "--", "python3", probe.to_str().unwrap()]);
    again.expect_code(0);
    let results = parse_probe(&again);
    assert_eq!(errno_of(&results, "io_uring_setup"), Some(EPERM), "{results:?}");
    assert_eq!(errno_of(&results, "unshare_newuser"), Some(EPERM), "{results:?}");
});

// A Python test suite runs under the layered default with Debian's pytest.
both_identities!(pytest_runs_in_the_sandbox, |f: &Fixture| {
    let available = Command::new(PYTHON).args(["-c", "import pytest"]).status().is_ok_and(|status| status.success());
    if !available {
        skip(&f.name, "Debian's python3-pytest is not installed");
        return;
    }
    f.write(&f.ws.join("test_sample.py"), "import threading\n\ndef test_threads():\n    t = threading.Thread(target=lambda: None)\n    t.start()\n    t.join()\n\ndef test_tmp(tmp_path):\n    (tmp_path / 'x').write_text('y')\n    assert (tmp_path / 'x').read_text() == 'y'\n");
    let run = f.palisade(&["run", "--", PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"]);
    run.expect_code(0);
    assert!(run.stdout.contains("2 passed"), "{}{}", run.stdout, run.stderr);
});
