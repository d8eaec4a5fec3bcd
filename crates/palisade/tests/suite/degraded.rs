//! Missing layers: palisade refuses by default, and with `--allow-degraded` runs with what the
//! machine has, says so, and still enforces the policy through the layers left.
//!
//! A host without user namespaces is reproduced inside the test: a user namespace of the test's
//! own (and a network namespace, so loopback tests stay private) whose `max_user_namespaces` is
//! 0, entered by a process without capabilities. A kernel without Landlock or seccomp is
//! reproduced with an outer seccomp filter that makes those calls answer ENOSYS.

use std::fs;
use std::path::Path;

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture, Run, CANARY};

/// Quotes `text` for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Installs a seccomp filter on itself that makes the listed system calls fail with ENOSYS,
/// then executes the rest of its arguments: a kernel without those features, as palisade sees
/// it. Usage: python3 -c WITHOUT "444,445,446" program args...
const WITHOUT: &str = r#"
import ctypes, os, struct, sys
numbers = [int(n) for n in sys.argv[1].split(",") if n]
ENOSYS = 38
insns = [struct.pack("HBBI", 0x20, 0, 0, 0)]
for i, nr in enumerate(numbers):
    insns.append(struct.pack("HBBI", 0x15, 0, 1, nr))
    insns.append(struct.pack("HBBI", 0x06, 0, 0, 0x00050000 | ENOSYS))
insns.append(struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000))
code = b"".join(insns)
buf = ctypes.create_string_buffer(code)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0            # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, os.strerror(ctypes.get_errno())  # PR_SET_SECCOMP
os.execv(sys.argv[2], sys.argv[2:])
"#;

const LANDLOCK_CALLS: &str = "444,445,446";
const SECCOMP_CALL: &str = "317";

/// Reports whether this machine lets the test create a user and a network namespace of its
/// own (`unshare -Urn`), the world the tests without user namespaces are built in. Prints a
/// SKIP line for the fixture when it does not.
fn can_unshare_user(f: &Fixture) -> bool {
    let probe = f.host(Path::new("/"), "unshare", &["-Urn", "true"]);
    if probe.code != Some(0) {
        skip(&f.name, &format!("unshare -Urn is not permitted here: {}", probe.stderr.trim()));
        return false;
    }
    true
}

/// Runs `palisade ARGS` where user namespaces cannot be created: `prelude` runs first in the
/// same private user and network namespace (to start servers), with a capability-free
/// process. Returns `None` (after a visible SKIP) where the test cannot build that world.
fn without_user_namespaces(f: &Fixture, prelude: &str, args: &[&str]) -> Option<Run> {
    if !can_unshare_user(f) {
        return None;
    }
    let command: Vec<String> = args.iter().map(|arg| quote(arg)).collect();
    let script = format!(
        "ip link set lo up 2>/dev/null; {prelude}\necho 0 > /proc/sys/user/max_user_namespaces && setpriv --bounding-set=-all --inh-caps=-all -- {} {}; rc=$?; pkill -P $$ 2>/dev/null; exit $rc",
        palisade_binary().display(),
        command.join(" ")
    );
    Some(f.host(&f.ws, "unshare", &["-Urn", "sh", "-c", &script]))
}

fn report(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|error| panic!("no report at {}: {error}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

// Without user namespaces the run still happens when the user allows
// it, with a one-line notice naming what is missing and why, and a report that says so.
both_identities!(degraded_mode_runs_and_says_so, |f: &Fixture| {
    let report_path = f.out.join("report.json");
    let Some(run) = without_user_namespaces(
        f,
        "",
        &["run", "--allow-degraded", "--report", report_path.to_str().unwrap(), "--", "sh", "-c", "pwd && echo x > written && grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"],
    ) else {
        return;
    };
    run.expect_code(0);
    assert_eq!(fs::read_to_string(f.ws.join("written")).unwrap(), "x\n");
    assert!(run.stdout.contains(f.ws.to_str().unwrap()), "{}", run.stdout);
    assert!(run.stdout.contains("Seccomp:\t2"), "{}", run.stdout);
    let notice: Vec<&str> = run.stderr.lines().filter(|line| line.contains("degraded mode")).collect();
    assert_eq!(notice.len(), 1, "one notice line expected:\n{}", run.stderr);
    assert!(notice[0].contains("Landlock ABI"), "{}", notice[0]);
    assert!(notice[0].contains("max_user_namespaces"), "the notice names the cause: {}", notice[0]);

    let report = report(&report_path);
    let layers = &report["layers"];
    assert_eq!(layers["namespaces"], false, "{report}");
    assert_eq!(layers["seccomp"], true, "{report}");
    assert_eq!(layers["degraded"], true, "{report}");
    assert!(layers["landlock"]["abi"].as_i64().is_some_and(|abi| abi >= 3), "{report}");
    assert!(layers["missing"][0].as_str().is_some_and(|text| text.contains("max_user_namespaces")), "{report}");
    assert_eq!(report["exit"]["code"], 0, "{report}");
});

// The command's pseudo-terminal is created in the sandbox's private /dev/pts, which degraded
// mode does not have, so --pty is rejected there rather than ignored.
both_identities!(degraded_mode_rejects_pty, |f: &Fixture| {
    let marker = f.ws.join("ran");
    let touch = format!("touch {}", marker.display());
    let Some(run) = without_user_namespaces(f, "", &["run", "--allow-degraded", "--pty", "--", "sh", "-c", &touch]) else {
        return;
    };
    run.expect_code(125);
    assert!(run.stderr.contains("--pty is not available"), "the error does not name --pty\n{}", run.stderr);
    assert!(run.stderr.contains("degraded mode"), "the error does not give the reason\n{}", run.stderr);
    assert!(run.stderr.contains("max_user_namespaces"), "the error does not name the cause\n{}", run.stderr);
    assert!(!marker.exists(), "the command ran although palisade rejected --pty");
});

// The read-only profile stays read-only in degraded mode, /tmp included.
both_identities!(degraded_mode_honours_read_only, |f: &Fixture| {
    let script = "touch /tmp/probe_ro; echo tmp=$?; touch probe_ro; echo ws=$?; touch \"$TMPDIR/x\"; echo tmpdir=$?";
    let Some(run) = without_user_namespaces(f, "", &["run", "--allow-degraded", "--profile", "read-only", "--", "sh", "-c", script]) else {
        return;
    };
    run.expect_code(0);
    for line in ["tmp=0", "ws=0", "tmpdir=0"] {
        assert!(!run.stdout.contains(line), "{line} means a write succeeded\n{}{}", run.stdout, run.stderr);
    }
    assert!(!f.ws.join("probe_ro").exists());
    assert!(!Path::new("/tmp/probe_ro").exists() || f.who == crate::suite::harness::Who::Root);
});

// Landlock carries the filesystem policy: nothing outside the writable roots changes, hidden
// credentials cannot be read, read-only files cannot be truncated, the host's /tmp is
// out of reach.
both_identities!(degraded_mode_keeps_the_filesystem_policy, |f: &Fixture| {
    let outside = f.out.join("outside.txt");
    fs::write(&outside, "original").unwrap();
    f.chown_all();
    let script = format!(
        "echo changed > {o}; truncate -s 0 {o}; rm -f {o}; cat ~/.ssh/id_ed25519 ~/.aws/credentials ~/.cargo/credentials.toml; ls ~; touch /tmp/palisade-degraded-probe; echo done",
        o = quote(outside.to_str().unwrap())
    );
    let Some(run) = without_user_namespaces(f, "", &["run", "--allow-degraded", "--allow-read", outside.to_str().unwrap(), "--", "sh", "-c", &script]) else {
        return;
    };
    assert!(run.stdout.contains("done"), "{}{}", run.stdout, run.stderr);
    assert_eq!(fs::read_to_string(&outside).unwrap(), "original");
    assert!(!run.stdout.contains(CANARY), "a credential was read:\n{}", run.stdout);
    assert!(!Path::new("/tmp/palisade-degraded-probe").exists());
});

// With the network off, no socket can be made at all, so neither loopback services of the host
// nor its UNIX sockets can be reached. Landlock also scopes abstract sockets.
both_identities!(degraded_mode_refuses_the_network, |f: &Fixture| {
    let server = r#"python3 -c '
import socket, time
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("127.0.0.1", 47801)); t.listen(4)
a = socket.socket(socket.AF_UNIX); a.bind("\0palisade-degraded-test"); a.listen(4)
time.sleep(20)' >/dev/null 2>&1 & sleep 0.5"#;
    let client = r#"
import socket
for name, make, address in [
    ("tcp", lambda: socket.socket(), ("127.0.0.1", 47801)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", 47801)),
    ("abstract", lambda: socket.socket(socket.AF_UNIX), "\0palisade-degraded-test"),
]:
    try:
        s = make(); s.connect(address); print(name, "CONNECTED")
    except OSError as e:
        print(name, "REFUSED", e.errno)
a, b = socket.socketpair(); a.send(b"x"); print("socketpair", b.recv(1))
"#;
    let Some(run) = without_user_namespaces(f, server, &["run", "--allow-degraded", "--", "python3", "-c", client]) else {
        return;
    };
    run.expect_code(0);
    for name in ["tcp", "udp", "abstract"] {
        assert!(run.stdout.contains(&format!("{name} REFUSED")), "{name}:\n{}{}", run.stdout, run.stderr);
    }
    assert!(run.stdout.contains("socketpair b'x'"), "{}{}", run.stdout, run.stderr);
});

// Protected paths cannot be kept read-only without mounts; they are put back after the run,
// with the command's version kept aside.
both_identities!(degraded_mode_restores_protected_paths, |f: &Fixture| {
    let config_before = fs::read_to_string(f.ws.join(".git/config")).unwrap();
    let script = "printf '#!/bin/sh\\necho planted\\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; printf '[core]\\n\\tfsmonitor = planted\\n' >> .git/config; mkdir -p .vscode; echo '{}' > .vscode/tasks.json; echo ran";
    let Some(run) = without_user_namespaces(f, "", &["run", "--allow-degraded", "--", "sh", "-c", script]) else {
        return;
    };
    assert!(run.stdout.contains("ran"), "{}{}", run.stdout, run.stderr);
    assert!(!f.ws.join(".git/hooks/pre-commit").exists(), "the planted hook survived\n{}", run.stderr);
    assert_eq!(fs::read_to_string(f.ws.join(".git/config")).unwrap(), config_before);
    assert!(!f.ws.join(".vscode").exists(), "the created .vscode survived");
    assert!(f.ws.join(".git/hooks.rejected-by-palisade/pre-commit").exists(), "the command's version is kept aside");
    assert!(run.stderr.contains("restored the protected path"), "{}", run.stderr);
});

// A hidden path inside a writable root cannot be enforced by Landlock alone, so degraded
// mode refuses and names it; with namespaces the same policy hides it and keeps the rest
// writable.
both_identities!(deny_inside_allow_is_enforced_or_refused, |f: &Fixture| {
    let keyrings = f.home.join(".local/share/keyrings");
    fs::create_dir_all(&keyrings).unwrap();
    fs::write(keyrings.join("login.keyring"), CANARY).unwrap();
    fs::create_dir_all(f.home.join(".local/share/app")).unwrap();
    f.chown_all();
    let local = f.home.join(".local");
    let args = ["--allow-write", local.to_str().unwrap(), "--deny-read", keyrings.to_str().unwrap()];
    let script = format!("cat {}/login.keyring; touch {}/share/app/x && echo touched", keyrings.display(), local.display());

    let mut full: Vec<&str> = vec!["run"];
    full.extend(args);
    full.extend(["--", "sh", "-c", &script]);
    let run = f.palisade(&full);
    assert!(!run.stdout.contains(CANARY), "the keyring was read: {}", run.stdout);
    assert!(run.stdout.contains("touched"), "{}{}", run.stdout, run.stderr);

    let mut degraded: Vec<&str> = vec!["run", "--allow-degraded"];
    degraded.extend(args);
    degraded.extend(["--", "sh", "-c", &script]);
    let Some(run) = without_user_namespaces(f, "", &degraded) else { return };
    assert_eq!(run.code, Some(125), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(keyrings.to_str().unwrap()), "the refusal names the path: {}", run.stderr);
    assert!(!run.stdout.contains(CANARY));
});

// Degraded mode shows the host's /dev/pts, with the caller's other pseudo-terminals in it.
// The command must not open one: it could read what is typed there. A pseudo-terminal of the
// same user, open on the host during the run, stays closed to it.
both_identities!(degraded_mode_keeps_other_terminals_out, |f: &Fixture| {
    let prelude = r#"/usr/bin/python3 -c 'import os, time
master, slave = os.openpty()
open("pty.tmp", "w").write(os.ttyname(slave))
os.rename("pty.tmp", "pty")
time.sleep(30)' &
until [ -s pty ]; do sleep 0.05; done
[ -r "$(cat pty)" ] && [ -w "$(cat pty)" ] && echo "OPENABLE OUTSIDE""#;
    let script = "import errno\ntry:\n    open(open('pty').read(), 'rb+', buffering=0)\n    print('INSIDE opened')\nexcept OSError as error:\n    print('INSIDE', errno.errorcode[error.errno])";
    let Some(run) = without_user_namespaces(f, prelude, &["run", "--allow-degraded", "--", "/usr/bin/python3", "-c", script]) else { return };
    assert_eq!(run.lines_starting("OPENABLE "), vec!["OPENABLE OUTSIDE"], "the control pseudo-terminal is missing:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.lines_starting("INSIDE "), vec!["INSIDE EACCES"], "{}\n{}", run.stdout, run.stderr);
});

// Without a PID namespace, Landlock's scoping keeps host processes out of reach, and the
// timeout still ends every process of the run, detached ones included.
both_identities!(degraded_mode_confines_processes, |f: &Fixture| {
    let marker = format!("{}-detached", f.root.file_name().unwrap().to_string_lossy());
    let prelude = "sleep 30 >/dev/null 2>&1 & echo $! > victim.pid";
    let script = format!(
        "v=$(cat victim.pid); kill -0 $v && echo SIGNALLED; cat /proc/$v/environ >/dev/null 2>&1 && echo READ-ENVIRON; setsid python3 -c 'import time; time.sleep(300)' {marker} & sleep 300"
    );
    let Some(run) = without_user_namespaces(f, prelude, &["run", "--allow-degraded", "--timeout", "2s", "--", "sh", "-c", &script]) else {
        return;
    };
    assert_eq!(run.code, Some(124), "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("SIGNALLED"), "{}", run.stdout);
    assert!(!run.stdout.contains("READ-ENVIRON"), "{}", run.stdout);
    // The pattern puts one character in brackets, so it does not match itself in the command
    // line of a process that contains it.
    let (head, tail) = marker.split_at(marker.len() - 1);
    let pattern = format!("python3 -c import time; time.sleep\\(300\\) {head}[{tail}]");
    let left = std::process::Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
    assert!(left.stdout.is_empty(), "a detached process outlived the run: {}", String::from_utf8_lossy(&left.stdout));
});

// A kernel without Landlock (or seccomp) makes palisade refuse with the reason
// and the fix; with --allow-degraded it runs with the layers left and says which.
both_identities!(missing_landlock_or_seccomp_is_refused_unless_allowed, |f: &Fixture| {
    let marker = f.ws.join("ran");
    let bin = palisade_binary().to_str().unwrap().to_owned();
    let touch = format!("touch {}", marker.display());
    for (calls, layer) in [(LANDLOCK_CALLS, "Landlock"), (SECCOMP_CALL, "seccomp")] {
        let refused = f.host(&f.ws, "/usr/bin/python3", &["-c", WITHOUT, calls, &bin, "run", "--", "sh", "-c", &touch]);
        assert_eq!(refused.code, Some(125), "{layer}: {}", refused.stderr);
        assert!(refused.stderr.contains(&format!("{layer} is not available")), "{}", refused.stderr);
        assert!(refused.stderr.contains("fix:"), "{}", refused.stderr);
        assert!(!marker.exists(), "the command ran without {layer}");

        let report_path = f.out.join("report.json");
        let allowed = f.host(
            &f.ws,
            "/usr/bin/python3",
            &["-c", WITHOUT, calls, &bin, "run", "--allow-degraded", "--report", report_path.to_str().unwrap(), "--", "sh", "-c", &touch],
        );
        assert_eq!(allowed.code, Some(0), "{layer}: {}", allowed.stderr);
        assert!(marker.exists());
        assert!(allowed.stderr.contains("degraded mode"), "{}", allowed.stderr);
        assert!(allowed.stderr.contains(layer), "{}", allowed.stderr);
        let report = report(&report_path);
        assert_eq!(report["layers"]["namespaces"], true, "{report}");
        match layer {
            "Landlock" => assert!(report["layers"]["landlock"].is_null(), "{report}"),
            _ => assert_eq!(report["layers"]["seccomp"], false, "{report}"),
        }
        fs::remove_file(&marker).unwrap();
    }
});

// With neither namespaces nor Landlock there is no filesystem layer at all: palisade refuses
// even when degraded mode is allowed.
both_identities!(no_filesystem_layer_is_refused_even_when_degraded, |f: &Fixture| {
    let marker = f.ws.join("ran");
    if !can_unshare_user(f) {
        return;
    }
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all --inh-caps=-all -- /usr/bin/python3 -c {} {LANDLOCK_CALLS} {} run --allow-degraded -- touch {}",
        quote(WITHOUT),
        palisade_binary().display(),
        marker.display()
    );
    let run = f.host(&f.ws, "unshare", &["-Urn", "sh", "-c", &script]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(run.stderr.contains("Landlock"), "{}", run.stderr);
    assert!(!marker.exists());
});

/// Installs a seccomp filter on itself that hands system call NR to this script through a
/// user notification, then starts the rest of its arguments as a child and serves the
/// notifications until the child exits. A call whose argument INDEX is VALUE returns RESULT
/// (`val:N` for the value N, `errno:N` for a failure with errno N), and every other call goes
/// to the kernel. Usage: python3 -c ANSWER NR INDEX VALUE RESULT program args...
const ANSWER: &str = r#"
import ctypes, os, select, struct, sys
nr, index, value = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
kind, number = sys.argv[4].split(":")
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
insns = [struct.pack("HBBI", 0x20, 0, 0, 0),
         struct.pack("HBBI", 0x15, 0, 1, nr),
         struct.pack("HBBI", 0x06, 0, 0, 0x7fc00000),
         struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000)]
buf = ctypes.create_string_buffer(b"".join(insns))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
assert libc.prctl(38, 1, 0, 0, 0) == 0            # PR_SET_NO_NEW_PRIVS
listener = libc.syscall(317, 1, 8, ctypes.byref(prog))  # seccomp(SET_MODE_FILTER, NEW_LISTENER)
assert listener >= 0, os.strerror(ctypes.get_errno())
pid = os.fork()
if pid == 0:
    os.close(listener)
    os.execv(sys.argv[5], sys.argv[5:])
RECV, SEND = 0xC0502100, 0xC0182101
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if not select.select([listener], [], [], 0.05)[0]:
        continue
    notification = ctypes.create_string_buffer(80)
    if libc.ioctl(listener, RECV, notification) != 0:
        continue
    request = struct.unpack_from("Q", notification.raw, 0)[0]
    args = struct.unpack_from("6Q", notification.raw, 32)
    if args[index] != value:
        answer = struct.pack("QqiI", request, 0, 0, 1)       # SECCOMP_USER_NOTIF_FLAG_CONTINUE
    elif kind == "val":
        answer = struct.pack("QqiI", request, int(number), 0, 0)
    else:
        answer = struct.pack("QqiI", request, 0, -int(number), 0)
    libc.ioctl(listener, SEND, ctypes.create_string_buffer(answer, 24))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// The arguments of [`ANSWER`] that make Landlock's version query (`landlock_create_ruleset`
/// with the flag LANDLOCK_CREATE_RULESET_VERSION in argument 2) return `abi`.
fn landlock_version(abi: u32) -> [String; 4] {
    ["444".to_owned(), "2".to_owned(), "1".to_owned(), format!("val:{abi}")]
}

/// Runs `palisade run EXTRA -- sh -c SCRIPT` in the fixture's workspace, with `abi` as the
/// result of Landlock's version query (see [`ANSWER`]). With `namespaces` false, it runs
/// where user namespaces cannot be created, as in [`without_user_namespaces`].
fn run_with_landlock_abi(f: &Fixture, abi: u32, namespaces: bool, extra: &[&str], script: &str) -> Run {
    let binary = palisade_binary().display().to_string();
    let answer = landlock_version(abi);
    let mut args: Vec<&str> = vec!["-c", ANSWER];
    args.extend(answer.iter().map(String::as_str));
    args.extend_from_slice(&[&binary, "run"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    if namespaces {
        return f.host(&f.ws, "/usr/bin/python3", &args);
    }
    let command: Vec<String> = args.iter().map(|arg| quote(arg)).collect();
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all --inh-caps=-all -- /usr/bin/python3 {}",
        command.join(" ")
    );
    f.host(&f.ws, "unshare", &["-Urn", "sh", "-c", &script])
}

/// A probe that prints the errno of a terminal ioctl on /dev/null: ENOTTY (25) where Landlock
/// leaves ioctls alone, EACCES (13) where it mediates them.
const IOCTL_PROBE: &str = "python3 -c 'import fcntl, termios
try:
    fcntl.ioctl(open(\"/dev/null\"), termios.TIOCGWINSZ, bytes(8))
except OSError as error:
    print(\"IOCTL errno\", error.errno)'";

// Degraded mode rests on Landlock alone for the filesystem, and before ABI 3 Landlock cannot
// stop a read-only file from being truncated, so a kernel that offers ABI 2 is rejected even
// with --allow-degraded.
both_identities!(landlock_abi_2_rejected_when_degraded, |f: &Fixture| {
    if !can_unshare_user(f) {
        return;
    }
    let marker = f.ws.join("ran");
    let run = run_with_landlock_abi(f, 2, false, &["--allow-degraded"], &format!("touch {}", marker.display()));
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(run.stderr.contains("needs Landlock ABI 3 or later"), "{}", run.stderr);
    assert!(run.stderr.contains("this kernel offers ABI 2"), "{}", run.stderr);
    assert!(!marker.exists(), "the command ran on Landlock ABI 2");
});

// Landlock ABI 3 (Linux 6.2 to 6.6) has no device ioctl rights. A run on it works and is
// confined, with namespaces and in degraded mode. The command writes in its workspace but not
// outside it, and an ioctl on /dev/null reaches the device. Both runs failed while the
// terminal rules asked for the ioctl right.
both_identities!(landlock_abi_3_confines_the_command, |f: &Fixture| {
    if !can_unshare_user(f) {
        return;
    }
    for (namespaces, extra) in [(true, &[][..]), (false, &["--allow-degraded"][..])] {
        let inside = f.ws.join(format!("ran-{namespaces}"));
        let outside = f.out.join(format!("escaped-{namespaces}"));
        let script = format!("touch {}; touch {} 2>/dev/null; {IOCTL_PROBE}", inside.display(), outside.display());
        let run = run_with_landlock_abi(f, 3, namespaces, extra, &script);
        assert_eq!(run.code, Some(0), "namespaces {namespaces}: {}", run.stderr);
        assert!(inside.exists(), "namespaces {namespaces}: the command did not write in its workspace");
        assert!(!outside.exists(), "namespaces {namespaces}: the command wrote outside its workspace");
        assert_eq!(run.lines_starting("IOCTL "), vec!["IOCTL errno 25"], "namespaces {namespaces}: {}", run.stdout);
        if !namespaces {
            assert!(run.stderr.contains("enforced Landlock ABI 3,"), "{}", run.stderr);
        }
    }
});

// A failure of the confinement in degraded mode's child, after every check passed, ends the
// run with palisade's status 125 and the reason. From the child std passes only an errno on,
// which read as a failure to execute the command (126, "Invalid argument").
both_identities!(degraded_setup_failure_names_its_reason, |f: &Fixture| {
    if !can_unshare_user(f) {
        return;
    }
    let marker = f.ws.join("ran");
    // seccomp(SECCOMP_SET_MODE_FILTER) fails with EINVAL: a filter the kernel rejects when the
    // child installs it, after palisade's checks of the machine (SECCOMP_GET_ACTION_AVAIL) passed.
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all --inh-caps=-all -- /usr/bin/python3 -c {} 317 0 1 errno:22 {} run --allow-degraded -- touch {}",
        quote(ANSWER),
        palisade_binary().display(),
        marker.display()
    );
    let run = f.host(&f.ws, "unshare", &["-Urn", "sh", "-c", &script]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(run.stderr.contains("degraded mode failed to confine the command"), "{}", run.stderr);
    assert!(run.stderr.contains("failed to install the seccomp filter"), "{}", run.stderr);
    assert!(!marker.exists(), "the command ran without its seccomp filter");
});

// `palisade check` names every layer, exits 0 when the default policy holds, and otherwise
// exits non-zero with the reason and whether degraded mode could run.
both_identities!(check_reports_each_layer, |f: &Fixture| {
    let run = f.palisade(&["check", "--json"]);
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("check --json prints JSON");
    for layer in ["namespaces", "landlock", "seccomp", "cgroup_v2", "rlimits"] {
        assert!(value["layers"][layer]["available"].is_boolean(), "{layer} missing: {value}");
    }
    assert_eq!(value["default_policy_enforced"], true, "{value}");
    let text = f.palisade(&["check"]);
    text.expect_code(0);
    assert!(text.stdout.contains("landlock"), "{}", text.stdout);

    let Some(run) = without_user_namespaces(f, "", &["check", "--json"]) else { return };
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("check --json prints JSON");
    assert_eq!(value["layers"]["namespaces"]["available"], false, "{value}");
    assert!(value["layers"]["namespaces"]["detail"].as_str().unwrap().contains("max_user_namespaces"), "{value}");
    assert!(value["layers"]["namespaces"]["fix"].is_string(), "{value}");
    assert_eq!(value["default_policy_enforced"], false);
    assert_eq!(value["degraded_mode_possible"], true);
});

// With the namespaces available, `--allow-degraded` lets a run go without Landlock or without
// seccomp, and `check` reports it. It used to print that degraded mode could not help, because
// it only considered a machine without namespaces.
both_identities!(check_degraded_without_one_layer, |f: &Fixture| {
    let bin = palisade_binary().to_str().unwrap().to_owned();
    for (calls, layer) in [(LANDLOCK_CALLS, "landlock"), (SECCOMP_CALL, "seccomp")] {
        let run = f.host(&f.ws, "/usr/bin/python3", &["-c", WITHOUT, calls, &bin, "check", "--json"]);
        assert_eq!(run.code, Some(1), "{layer}: check must exit 1\n{}{}", run.stdout, run.stderr);
        let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("check --json prints JSON");
        assert_eq!(value["layers"][layer]["available"], false, "{layer}: {value}");
        assert_eq!(value["layers"]["namespaces"]["available"], true, "{layer}: {value}");
        assert_eq!(value["degraded_mode_possible"], true, "{layer}: {value}");

        let text = f.host(&f.ws, "/usr/bin/python3", &["-c", WITHOUT, calls, &bin, "check"]);
        assert!(text.stdout.contains("With --allow-degraded it runs"), "{layer}: {}", text.stdout);
    }
});

// The run report records the layers of a normal run and the reason of a refused one.
both_identities!(report_records_layers_and_refusals, |f: &Fixture| {
    let path = f.out.join("run.json");
    f.palisade(&["run", "--report", path.to_str().unwrap(), "--", "sh", "-c", "exit 3"]).expect_code(3);
    let value = report(&path);
    assert_eq!(value["format"], 1);
    assert_eq!(value["exit"]["code"], 3);
    assert_eq!(value["layers"]["namespaces"], true);
    assert_eq!(value["layers"]["seccomp"], true);
    assert!(value["layers"]["landlock"]["abi"].as_i64().is_some_and(|abi| abi >= 1), "{value}");
    assert_eq!(value["layers"]["degraded"], false);
    assert_eq!(value["command"][0], "sh");

    let marker = f.ws.join("ran");
    let refused = f.palisade(&["run", "--report", path.to_str().unwrap(), "-p", "unconfined", "--memory", "1G", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(refused.code, Some(125));
    assert!(!marker.exists());
    let value = report(&path);
    assert!(value["error"].as_str().is_some_and(|text| text.contains("memory limit")), "{value}");
    assert!(value["exit"].is_null());
});

// Degraded mode still enforces the memory, output and timeout limits through palisade's own
// accounting, and reports them as it does with namespaces.
both_identities!(degraded_mode_holds_the_limits, |f: &Fixture| {
    let memory_report = f.out.join("memory.json");
    let bomb = "b = []\nwhile True:\n    b.append(bytearray(64 << 20))\n";
    let Some(run) = without_user_namespaces(
        f,
        "ulimit -u 2048",
        &["run", "--allow-degraded", "--memory", "256M", "--report", memory_report.to_str().unwrap(), "--", "/usr/bin/python3", "-c", bomb],
    ) else {
        return;
    };
    assert_eq!(run.code, Some(137), "stderr: {}", run.stderr);
    let value = report(&memory_report);
    assert_eq!(value["layers"]["namespaces"], false, "{}", value["layers"]);
    assert_eq!(value["limit"], "memory", "{}", value["denials"]);

    let output_report = f.out.join("output.json");
    let Some(run) = without_user_namespaces(
        f,
        "",
        &["run", "--allow-degraded", "--max-output", "64K", "--timeout", "10s", "--report", output_report.to_str().unwrap(), "--", "yes"],
    ) else {
        return;
    };
    assert_eq!(run.code, Some(137), "stderr: {}", run.stderr);
    assert!(run.stdout.len() <= 64 << 10, "{} bytes passed a 64 KiB limit", run.stdout.len());
    assert_eq!(report(&output_report)["limit"], "max_output");
});

// A caller that is uid 0 with capabilities inside a user namespace that may create no further
// user namespaces (a rootless container, say) runs palisade as root. Root mode needs a user
// namespace for the idmapped mounts of the workspace, so palisade rejects the run with the
// cause and the fix, or runs degraded when that is allowed, instead of failing with ENOSPC.
both_identities!(root_without_user_namespaces_is_explained, |f: &Fixture| {
    if !can_unshare_user(f) {
        return;
    }
    let marker = f.ws.join("ran");
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 90; {bin} run -- touch {marker}; echo \"refused $?\"; {bin} run --allow-degraded -- sh -c 'echo degraded-ran'; echo \"degraded $?\"",
        bin = palisade_binary().display(),
        marker = marker.display()
    );
    let run = f.host(&f.ws, "unshare", &["-Urn", "sh", "-c", &script]);
    assert_eq!(run.code, Some(0), "stdout: {}\nstderr: {}", run.stdout, run.stderr);

    assert_eq!(run.lines_starting("refused "), ["refused 125"], "{}", run.stderr);
    assert!(!marker.exists(), "the command ran without its namespaces");
    assert!(run.stderr.contains("needs a user namespace for the idmapped mounts"), "{}", run.stderr);
    assert!(run.stderr.contains("max_user_namespaces"), "the message names the cause: {}", run.stderr);
    assert!(run.stderr.contains("fix:"), "{}", run.stderr);
    assert_eq!(run.lines_starting("degraded-ran"), ["degraded-ran"], "{}", run.stderr);
    assert_eq!(run.lines_starting("degraded "), ["degraded 0"], "{}", run.stderr);
});
