//! The sandbox on a real terminal: keystroke injection into the caller's terminal, terminal
//! programs that need a pseudo-terminal, and the terminal's signals (window resize, Ctrl-C).
//!
//! Each test starts `palisade` through a Python driver that runs it as the session leader of a
//! new pseudo-terminal, which is how an agent's shell or a user's terminal runs it. The command
//! inside runs in its own session with no controlling terminal, and init forwards the
//! terminal's signals to it.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture, Run};

/// The python that runs the driver on the host and the probes inside the sandbox, where it is
/// visible under the default policy.
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// The window size of the driver's terminal when ARGV starts: rows, then columns.
pub(crate) const DRIVER_WINDOW: (u16, u16) = (33, 111);

/// Runs ARGV as the session leader of a new pseudo-terminal, reads the master side and prints
/// what ARGV wrote, then the exit status of ARGV.
///
/// Usage: `driver.py ACTION TRIGGER TEXT -- ARGV...`. The terminal has 33 rows and 111 columns
/// when ARGV starts. Once TRIGGER appears in the output, the driver performs ACTION once:
/// `type` writes TEXT to the master as typed input, `resize` sets the window size to 40 rows
/// and 100 columns, and `none` does nothing. It prints `DRIVER status=N` (negative N: killed
/// by signal -N). After an action it also prints `DRIVER seconds-after-action=S`, the time from
/// the action to the exit of ARGV. It then prints `DRIVER canonical-at-action=B`, 1 when the
/// terminal was in canonical (line-by-line) mode just before the action and 0 when it was not.
/// After 20 s it kills ARGV's process group and prints `DRIVER timed out`.
const PTY_DRIVER: &str = r#"
import fcntl, os, select, signal, struct, sys, termios, time

action, trigger, text = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
argv = sys.argv[5:]
deadline = time.monotonic() + 20

master, slave = os.openpty()
# Set before ARGV starts, so its first query already returns it.
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
pid = os.fork()
if pid == 0:
    try:
        # A session leader with the slave as its controlling terminal and as its stdin, stdout
        # and stderr, as pty.fork makes it.
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        # A shell starts its foreground jobs with SIGINT and SIGQUIT at their defaults, even
        # when it was itself started with them ignored, as a background job of a
        # non-interactive shell is.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
# Only ARGV holds the slave, so reading the master fails with EIO once ARGV and its children
# have closed it.
os.close(slave)

output = b""
canonical_at_action = None
acted_at = None
status = None
exited_at = None
slave_open = True
while True:
    now = time.monotonic()
    if now > deadline:
        print("DRIVER timed out")
        os.killpg(pid, signal.SIGKILL)
        break
    if acted_at is None and trigger in output:
        # On a pseudo-terminal the master reads the slave's modes.
        canonical_at_action = int(bool(termios.tcgetattr(master)[3] & termios.ICANON))
        if action == "type":
            os.write(master, text)
        elif action == "resize":
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        acted_at = time.monotonic()
    if status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            exited_at = time.monotonic()
    # Output can still be in flight when ARGV exits: read on for up to 0.5 s, until every
    # descriptor of the slave is closed.
    if status is not None and (not slave_open or now - exited_at > 0.5):
        break
    if not slave_open:
        time.sleep(0.05)
        continue
    ready, _, _ = select.select([master], [], [], 0.05)
    if ready:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            # EIO: no process has the slave open any more.
            chunk = b""
        if chunk:
            output += chunk
        else:
            slave_open = False

sys.stdout.write(output.decode(errors="replace").replace("\r", ""))
print()
if status is None:
    os.waitpid(pid, 0)
else:
    print(f"DRIVER status={status}")
if acted_at is not None and exited_at is not None:
    print(f"DRIVER seconds-after-action={exited_at - acted_at:.2f}")
if canonical_at_action is not None:
    print(f"DRIVER canonical-at-action={canonical_at_action}")
"#;

/// What the driver does once its trigger text appears.
#[derive(Clone, Copy)]
pub(crate) enum Action<'a> {
    None,
    /// Writes the text to the terminal as if typed.
    Type { after: &'a str, text: &'a str },
    /// Sets a window size of 40 rows and 100 columns.
    Resize { after: &'a str },
}

/// Runs `argv` on a new pseudo-terminal as the fixture's owner, from the workspace, and returns
/// the driver's report on stdout.
pub(crate) fn run_on_pty(f: &Fixture, action: Action, argv: &[&str]) -> Run {
    let driver = f.root.join("pty_driver.py");
    f.write(&driver, PTY_DRIVER);
    let (name, trigger, text) = match action {
        Action::None => ("none", "", ""),
        Action::Type { after, text } => ("type", after, text),
        Action::Resize { after } => ("resize", after, ""),
    };
    // The driver stops itself after 20 s, and `timeout` also bounds a driver that hangs.
    let mut args = vec!["--kill-after=5", "30", PYTHON, driver.to_str().unwrap(), name, trigger, text, "--"];
    args.extend_from_slice(argv);
    f.host(&f.ws.clone(), "/usr/bin/timeout", &args)
}

/// Returns the exit status the driver reported, or `None` if it timed out.
pub(crate) fn driver_status(run: &Run) -> Option<i32> {
    let line = run.lines_starting("DRIVER status=").pop()?;
    line.trim_start_matches("DRIVER status=").parse().ok()
}

/// Returns the driver's and the command's output for an assertion message.
pub(crate) fn transcript(run: &Run) -> String {
    format!("driver stdout:\n{}\ndriver stderr:\n{}", run.stdout, run.stderr)
}

/// Returns the rest of the first output line that starts with `prefix`, such as `BLOCKED 1` for
/// the prefix `stdin TIOCSTI `.
pub(crate) fn probe_result<'a>(run: &'a Run, prefix: &str) -> Option<&'a str> {
    let line = run.lines_starting(prefix).into_iter().next()?;
    Some(line[prefix.len()..].trim())
}

/// Pushes `touch MARKER` followed by a newline into terminals with TIOCSTI, one byte at a
/// time, and prints one line per terminal and request: `TARGET REQUEST INJECTED` or
/// `TARGET REQUEST BLOCKED ERRNO`.
///
/// The targets follow the marker. `stdin` is descriptor 0. `own-pty` is a pseudo-terminal that
/// the probe opens and makes the controlling terminal of a forked child in a new session. The
/// kernel itself allows TIOCSTI there, so only a seccomp filter can reject it.
///
/// The request `TIOCSTI` goes through `fcntl.ioctl`. `TIOCSTI+high-bits` sets bits above the low
/// 32 and goes through `syscall(2)`, so the full 64-bit value reaches the kernel, which
/// truncates the request to 32 bits.
const TIOCSTI_PROBE: &str = r#"
import ctypes, fcntl, os, platform, sys, termios

line = ("touch " + sys.argv[1] + "\n").encode()
targets = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
SYS_IOCTL = {"x86_64": 16, "aarch64": 29}[platform.machine()]

def ioctl_plain(fd, byte):
    fcntl.ioctl(fd, termios.TIOCSTI, byte)

def ioctl_high_bits(fd, byte):
    char = ctypes.c_char(byte)
    request = ctypes.c_ulong(0xDEAD000000000000 | termios.TIOCSTI)
    if libc.syscall(ctypes.c_long(SYS_IOCTL), ctypes.c_long(fd), request, ctypes.byref(char)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))

def inject(target, fd):
    for name, call in [("TIOCSTI", ioctl_plain), ("TIOCSTI+high-bits", ioctl_high_bits)]:
        try:
            for value in line:
                call(fd, bytes([value]))
            print(target, name, "INJECTED", flush=True)
        except OSError as error:
            print(target, name, "BLOCKED", error.errno, flush=True)

if "stdin" in targets:
    inject("stdin", 0)

if "own-pty" in targets:
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            inject("own-pty", slave)
        except OSError as error:
            print("own-pty setup failed", error.errno, flush=True)
        os._exit(0)
    os.waitpid(child, 0)

print("PROBE-DONE", flush=True)
"#;

// CVE-2017-5226 (bubblewrap): a sandboxed program pushed keystrokes into the caller's terminal
// with TIOCSTI, and the caller's shell ran them after the sandbox exited.
// CVE-2019-10063 (Flatpak): a seccomp filter that compared all 64 bits of the request missed
// TIOCSTI with high bits set, which the kernel ignores.
both_identities!(tiocsti_cannot_inject_into_the_terminal, |f: &Fixture| {
    let marker = f.out.join("injected");
    let marker_arg = marker.to_str().unwrap();

    // Control: on the host, TIOCSTI on the probe's own controlling terminal succeeds, so a
    // refusal of the same call inside the sandbox comes from the seccomp filter.
    let control = f.host(&f.ws.clone(), PYTHON, &["-c", TIOCSTI_PROBE, marker_arg, "own-pty"]);
    assert!(control.stdout.contains("PROBE-DONE"), "the host-side control probe did not finish:\n{}\n{}", control.stdout, control.stderr);
    let kernel_allows_tiocsti = control.lines_starting("own-pty").iter().all(|line| line.ends_with("INJECTED"));
    if !kernel_allows_tiocsti {
        skip(&f.name, &format!("the kernel refuses TIOCSTI without the filter (dev.tty.legacy_tiocsti=0?), so the errno cannot show which layer refused it:\n{}", control.stdout));
    }

    // The shell on the terminal runs the sandbox and then reads commands from the terminal as an
    // interactive shell, so a line injected during the run would execute there before the typed
    // `exit`.
    let outer_script = r#""$1" run -- /usr/bin/python3 -c "$2" "$3" stdin own-pty
echo "PALISADE-EXIT=$?"
exec /bin/sh"#;
    let binary = palisade_binary().to_str().unwrap();
    // `$((6*7))` prints as 42 only when the shell runs the line, not when the terminal echoes it.
    let typed = Action::Type { after: "PALISADE-EXIT=", text: "echo SHELL-$((6*7)); exit\n" };
    let run = run_on_pty(f, typed, &["/bin/sh", "-c", outer_script, "sh", binary, TIOCSTI_PROBE, marker_arg]);

    assert_eq!(driver_status(&run), Some(0), "the shell on the terminal failed\n{}", transcript(&run));
    assert!(run.stdout.contains("PALISADE-EXIT=0"), "palisade failed\n{}", transcript(&run));
    assert!(run.stdout.contains("PROBE-DONE"), "the probe did not finish\n{}", transcript(&run));
    assert!(run.stdout.contains("SHELL-42"), "the shell did not read the terminal after palisade\n{}", transcript(&run));
    for request in ["TIOCSTI", "TIOCSTI+high-bits"] {
        let result = probe_result(&run, &format!("stdin {request} "));
        let acceptable = ["BLOCKED 1", "BLOCKED 5", "BLOCKED 25"];
        assert!(result.is_some_and(|result| acceptable.contains(&result)), "{request} on stdin was not refused with EPERM, EIO or ENOTTY\n{}", transcript(&run));
        let result = probe_result(&run, &format!("own-pty {request} "));
        if kernel_allows_tiocsti {
            assert_eq!(result, Some("BLOCKED 1"), "{request} on the sandbox's own terminal was not refused with EPERM\n{}", transcript(&run));
        } else {
            assert!(result.is_some_and(|result| result.starts_with("BLOCKED ")), "{request} on the sandbox's own terminal was not refused\n{}", transcript(&run));
        }
    }
    assert!(!marker.exists(), "an injected command ran on the host and created {}\n{}", marker.display(), transcript(&run));
});

/// Calls TIOCLINUX with subcode 3 (paste the console selection) on descriptor 0 and prints
/// `REQUEST PASTED` or `REQUEST REFUSED ERRNO`, for the plain request and for one with bits set
/// above the low 32.
const TIOCLINUX_PROBE: &str = r#"
import ctypes, fcntl, os, platform

TIOCLINUX = 0x541C
TIOCL_PASTESEL = 3
libc = ctypes.CDLL(None, use_errno=True)
SYS_IOCTL = {"x86_64": 16, "aarch64": 29}[platform.machine()]

def ioctl_plain():
    fcntl.ioctl(0, TIOCLINUX, bytes([TIOCL_PASTESEL]))

def ioctl_high_bits():
    subcode = ctypes.c_char(bytes([TIOCL_PASTESEL]))
    request = ctypes.c_ulong(0xDEAD000000000000 | TIOCLINUX)
    if libc.syscall(ctypes.c_long(SYS_IOCTL), ctypes.c_long(0), request, ctypes.byref(subcode)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))

for name, call in [("TIOCLINUX", ioctl_plain), ("TIOCLINUX+high-bits", ioctl_high_bits)]:
    try:
        call()
        print(name, "PASTED", flush=True)
    except OSError as error:
        print(name, "REFUSED", error.errno, flush=True)
"#;

// CVE-2023-1523 (snapd): TIOCLINUX pastes the console selection into the terminal's input,
// which the caller's shell then runs, as with TIOCSTI.
both_identities!(tioclinux_is_refused, |f: &Fixture| {
    // Control: on a pseudo-terminal the kernel itself rejects TIOCLINUX, which only virtual
    // consoles implement, with an errno other than EPERM.
    let control = run_on_pty(f, Action::None, &[PYTHON, "-c", TIOCLINUX_PROBE]);
    for request in ["TIOCLINUX", "TIOCLINUX+high-bits"] {
        let result = probe_result(&control, &format!("{request} "));
        assert!(result.is_some_and(|result| result.starts_with("REFUSED") && result != "REFUSED 1"), "the host-side control for {request} did not fail with an errno other than EPERM\n{}", transcript(&control));
    }

    let run = run_on_pty(f, Action::None, &[palisade_binary().to_str().unwrap(), "run", "--", PYTHON, "-c", TIOCLINUX_PROBE]);
    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert!(!run.stdout.contains("PASTED"), "TIOCLINUX succeeded inside the sandbox\n{}", transcript(&run));
    for request in ["TIOCLINUX", "TIOCLINUX+high-bits"] {
        let result = probe_result(&run, &format!("{request} "));
        assert_eq!(result, Some("REFUSED 1"), "{request} was not refused with EPERM\n{}", transcript(&run));
    }
});

both_identities!(terminal_programs_work, |f: &Fixture| {
    let has_script = Path::new("/usr/bin/script").exists();
    if !has_script {
        skip(&f.name, "/usr/bin/script is missing, so `script` inside the sandbox is not tested");
    }
    let script = r#"
stty raw -echo && stty sane
echo "stty rc=$?"
/usr/bin/python3 -c 'import os, pty; master, slave = pty.openpty(); print("PTY-OK", os.ttyname(slave))'
if [ -x /usr/bin/script ]; then
    /usr/bin/script -qec 'echo inner-script-ok' /dev/null
    echo "script rc=$?"
fi
"#;
    let run = run_on_pty(f, Action::None, &[palisade_binary().to_str().unwrap(), "run", "--", "/bin/sh", "-c", script]);

    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert!(run.stdout.contains("stty rc=0"), "stty could not set the terminal modes\n{}", transcript(&run));
    let pty_lines = run.lines_starting("PTY-OK /dev/pts/");
    assert_eq!(pty_lines.len(), 1, "python could not open a pseudo-terminal\n{}", transcript(&run));
    if has_script {
        assert!(run.stdout.contains("inner-script-ok"), "the command under `script` printed nothing\n{}", transcript(&run));
        assert!(run.stdout.contains("script rc=0"), "`script` failed\n{}", transcript(&run));
    }
});

// The kernel sends SIGWINCH to the terminal's foreground process group, which contains palisade
// and init but not the command in its own session, so init must forward it.
both_identities!(window_resize_reaches_the_command, |f: &Fixture| {
    // The loop ends once the handler ran, or after 5 s.
    let script = r#"
trap 'echo "WINCH-SEEN $(stty size)"; seen=1' WINCH
echo READY
i=0
while [ $i -lt 50 ] && [ -z "$seen" ]; do sleep 0.1; i=$((i+1)); done
"#;
    let run = run_on_pty(f, Action::Resize { after: "READY" }, &[palisade_binary().to_str().unwrap(), "run", "--", "/bin/sh", "-c", script]);

    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert!(run.stdout.contains("READY"), "the command did not start\n{}", transcript(&run));
    assert!(run.stdout.contains("WINCH-SEEN"), "SIGWINCH did not reach the command\n{}", transcript(&run));
    assert!(run.stdout.contains("WINCH-SEEN 40 100"), "the command did not see the new window size\n{}", transcript(&run));
});

/// Returns the host pids whose command line contains `marker`.
pub(crate) fn pids_matching(marker: &str) -> Vec<u32> {
    let output = Command::new("pgrep").args(["-f", marker]).output().expect("run pgrep");
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.trim().parse().ok()).collect()
}

/// Kills, when dropped, every host process whose command line contains the marker, so a
/// failing test leaves no process behind.
pub(crate) struct MarkedProcesses(pub(crate) String);

impl Drop for MarkedProcesses {
    fn drop(&mut self) {
        for pid in pids_matching(&self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

// A terminal sends Ctrl-C's SIGINT to every process of its foreground process group, so a shell
// and the program it waits for both stop. The command here is a shell that waits for a child,
// as `make` or a test runner does.
both_identities!(ctrl_c_ends_the_run, |f: &Fixture| {
    // The marker is in the command lines of both the shell and its python child, so `pgrep -f`
    // finds every process of the run and nothing else.
    let marker = format!("{}-ctrl-c", f.root.file_name().unwrap().to_string_lossy());
    let _cleanup = MarkedProcesses(marker.clone());
    // The child prints READY, so Ctrl-C arrives while it runs. The `echo` after it keeps the
    // shell from replacing itself with its last command.
    // Python's own SIGINT handler only sets a flag. A SIGINT that landed between the print and
    // the start of the sleep's system call left python asleep for the full 31 s under load: in a
    // signal trace the handler ran, and no KeyboardInterrupt followed. With the default action
    // the kernel ends python at once.
    let script = r#"/usr/bin/python3 -c 'import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); print("READY", flush=True); time.sleep(31)' "$0"; echo after"#;
    let ctrl_c = Action::Type { after: "READY", text: "\x03" };
    let run = run_on_pty(f, ctrl_c, &[palisade_binary().to_str().unwrap(), "run", "--", "/bin/sh", "-c", script, &marker]);
    let returned = Instant::now();

    assert_eq!(driver_status(&run), Some(130), "palisade did not exit with 128+SIGINT after Ctrl-C\n{}", transcript(&run));
    let seconds: f64 = run
        .lines_starting("DRIVER seconds-after-action=")
        .first()
        .and_then(|line| line.trim_start_matches("DRIVER seconds-after-action=").parse().ok())
        .unwrap_or_else(|| panic!("the driver did not report when palisade exited\n{}", transcript(&run)));
    assert!(seconds < 3.0, "palisade exited {seconds} s after Ctrl-C\n{}", transcript(&run));

    let mut survivors = pids_matching(&marker);
    while !survivors.is_empty() && returned.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(50));
        survivors = pids_matching(&marker);
    }
    assert!(survivors.is_empty(), "processes of the run outlived Ctrl-C by 5 s: {survivors:?}\n{}", transcript(&run));
});
