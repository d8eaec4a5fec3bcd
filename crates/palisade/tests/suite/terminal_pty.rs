//! `palisade run --pty`: the command gets a pseudo-terminal of the sandbox's own as its stdin,
//! stdout, stderr and controlling terminal, and palisade relays it to its own descriptors.
//!
//! Most tests start palisade through the driver of `terminal.rs`, which runs it as the session
//! leader of a pseudo-terminal that stands for the caller's terminal, 33 rows by 111 columns.
//! They check what crossed that terminal, its modes, and the files left on the host.

use std::time::{Duration, Instant};

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture, Run};
use crate::suite::terminal::{
    driver_status, pids_matching, probe_result, run_on_pty, transcript, Action, MarkedProcesses, DRIVER_WINDOW, PYTHON,
};

/// Returns the command line that runs `command` under `palisade run --pty` with `flags`.
fn pty_run<'a>(flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec![palisade_binary().to_str().unwrap(), "run", "--pty"];
    argv.extend_from_slice(flags);
    argv.push("--");
    argv.extend_from_slice(command);
    argv
}

/// Returns the value of the driver's `DRIVER NAME=VALUE` line.
fn driver_value<'a>(run: &'a Run, name: &str) -> Option<&'a str> {
    probe_result(run, &format!("DRIVER {name}="))
}

/// Prints whether descriptors 0 to 2 are terminals (`ISATTY 1 1 1`), the name of the terminal
/// on descriptor 0 (`TTYNAME /dev/pts/N`), then writes a line through `/dev/tty`
/// (`DEV-TTY opened`) and reopens the terminal by its name (`REOPEN ok`). A failed step prints
/// `failed` and the errno instead.
const TERMINAL_PROBE: &str = r#"
import os

print("ISATTY", *[int(os.isatty(fd)) for fd in (0, 1, 2)], flush=True)
try:
    print("TTYNAME", os.ttyname(0), flush=True)
except OSError as error:
    print("TTYNAME failed", error.errno, flush=True)
try:
    tty = os.open("/dev/tty", os.O_RDWR)
    os.write(tty, b"WRITTEN-THROUGH-DEV-TTY\n")
    print("DEV-TTY opened", flush=True)
except OSError as error:
    print("DEV-TTY failed", error.errno, flush=True)
try:
    os.close(os.open(os.ttyname(0), os.O_RDWR))
    print("REOPEN ok", flush=True)
except OSError as error:
    print("REOPEN failed", error.errno, flush=True)
"#;

both_identities!(pty_gives_the_command_a_terminal, |f: &Fixture| {
    let script = r#""$0" -c "$1"; echo "TTY-COMMAND $(tty)""#;
    let command = ["/bin/sh", "-c", script, PYTHON, TERMINAL_PROBE];

    // Control: without --pty the command has no controlling terminal, so /dev/tty fails with
    // ENXIO, and the caller's terminal has no name inside the sandbox.
    let mut control_argv = vec![palisade_binary().to_str().unwrap(), "run", "--"];
    control_argv.extend_from_slice(&command);
    let control = run_on_pty(f, Action::None, &control_argv);
    assert_eq!(driver_status(&control), Some(0), "palisade failed without --pty\n{}", transcript(&control));
    assert_eq!(probe_result(&control, "DEV-TTY "), Some("failed 6"), "/dev/tty did not fail without --pty\n{}", transcript(&control));

    let run = run_on_pty(f, Action::None, &pty_run(&[], &command));
    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "ISATTY "), Some("1 1 1"), "descriptors 0 to 2 are not all terminals\n{}", transcript(&run));
    let name = probe_result(&run, "TTYNAME ").unwrap_or_default();
    assert!(name.starts_with("/dev/pts/"), "ttyname did not name a terminal in /dev/pts\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "TTY-COMMAND "), Some(name), "`tty` did not print the terminal's name\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "DEV-TTY "), Some("opened"), "/dev/tty could not be opened\n{}", transcript(&run));
    assert!(run.stdout.contains("WRITTEN-THROUGH-DEV-TTY"), "a line written to /dev/tty did not reach the caller's terminal\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "REOPEN "), Some("ok"), "the terminal could not be reopened by its name\n{}", transcript(&run));
});

both_identities!(pty_starts_with_the_callers_window_size, |f: &Fixture| {
    let run = run_on_pty(f, Action::None, &pty_run(&[], &["/bin/sh", "-c", "echo SIZE $(stty size)"]));

    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    let expected = format!("{} {}", DRIVER_WINDOW.0, DRIVER_WINDOW.1);
    assert_eq!(probe_result(&run, "SIZE "), Some(expected.as_str()), "the command's terminal did not start with the caller's size\n{}", transcript(&run));
});

/// Blocks SIGWINCH, prints READY and waits up to 5 s for SIGWINCH. Prints
/// `WINCH si_code=N size=ROWS COLS` with the terminal's size at that moment, or `WINCH none`,
/// then `WINCH-MORE none` unless another SIGWINCH follows within 0.5 s. `si_code` is 128
/// (`SI_KERNEL`) when the terminal sent the signal, and 0 (`SI_USER`) when a process did.
const WINCH_PROBE: &str = r#"
import fcntl, signal, struct, termios

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
print("READY", flush=True)
info = signal.sigtimedwait({signal.SIGWINCH}, 5)
if info is None:
    print("WINCH none", flush=True)
else:
    rows, columns = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]
    print("WINCH si_code=%d size=%d %d" % (info.si_code, rows, columns), flush=True)
more = signal.sigtimedwait({signal.SIGWINCH}, 0.5)
print("WINCH-MORE", "none" if more is None else "si_code=%d" % more.si_code, flush=True)
"#;

// The kernel sends SIGWINCH when palisade copies the new size to the command's terminal, and
// the size is set by then. Init must not pass on a copy of the caller's SIGWINCH as well: its
// copy could arrive before the new size is set.
both_identities!(pty_resize_reaches_the_command, |f: &Fixture| {
    let run = run_on_pty(f, Action::Resize { after: "READY" }, &pty_run(&[], &[PYTHON, "-c", WINCH_PROBE]));

    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert_eq!(
        probe_result(&run, "WINCH "),
        Some("si_code=128 size=40 100"),
        "the command did not get SIGWINCH from its terminal with the new size (si_code 0: a process sent it)\n{}",
        transcript(&run)
    );
    assert_eq!(probe_result(&run, "WINCH-MORE "), Some("none"), "the command got a second SIGWINCH\n{}", transcript(&run));

    // A shell's trap reads the new size too.
    let script = r#"
trap 'echo "WINCH-SEEN $(stty size)"; seen=1' WINCH
echo READY
i=0
while [ $i -lt 50 ] && [ -z "$seen" ]; do sleep 0.1; i=$((i+1)); done
"#;
    let run = run_on_pty(f, Action::Resize { after: "READY" }, &pty_run(&[], &["/bin/sh", "-c", script]));
    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "WINCH-SEEN "), Some("40 100"), "the shell's trap did not see the new size\n{}", transcript(&run));
});

both_identities!(pty_typed_input_reaches_the_command, |f: &Fixture| {
    let script = r#"echo READY; read line; echo "GOT:$line""#;
    // A terminal sends a carriage return for the Enter key.
    let typed = Action::Type { after: "READY", text: "hello pty\r" };

    // Control: without --pty the caller's terminal stays in canonical mode.
    let control_argv = [palisade_binary().to_str().unwrap(), "run", "--", "/bin/sh", "-c", script];
    let control = run_on_pty(f, typed, &control_argv);
    assert_eq!(driver_value(&control, "canonical-at-action"), Some("1"), "the driver did not see canonical mode without --pty\n{}", transcript(&control));

    let run = run_on_pty(f, typed, &pty_run(&[], &["/bin/sh", "-c", script]));
    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "GOT:"), Some("hello pty"), "the typed line did not reach the command\n{}", transcript(&run));
    assert_eq!(driver_value(&run, "canonical-at-action"), Some("0"), "the caller's terminal was not in raw mode during the run\n{}", transcript(&run));
});

/// Blocks SIGINT, prints READY, waits for SIGINT and prints `SIGINT si_code=N`: 128
/// (`SI_KERNEL`) when a terminal's line discipline sent it, 0 (`SI_USER`) when a process sent it
/// with `kill`, as init does when it passes a signal on.
const SIGINT_PROBE: &str = r#"
import signal

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("READY", flush=True)
info = signal.sigwaitinfo({signal.SIGINT})
# On a line of its own: the terminal's echo of Ctrl-C, `^C`, ends no line.
print()
print("SIGINT si_code=%d" % info.si_code, flush=True)
"#;

both_identities!(pty_ctrl_c_is_sigint_from_the_terminal, |f: &Fixture| {
    let ctrl_c = Action::Type { after: "READY", text: "\x03" };
    let run = run_on_pty(f, ctrl_c, &pty_run(&[], &[PYTHON, "-c", SIGINT_PROBE]));

    assert_eq!(driver_status(&run), Some(0), "palisade failed\n{}", transcript(&run));
    assert_eq!(
        probe_result(&run, "SIGINT si_code="),
        Some("128"),
        "the command's SIGINT did not come from its terminal (0 means a process passed it on)\n{}",
        transcript(&run)
    );
});

// Ctrl-C reaches every process of the sandbox terminal's foreground group, here a shell and the
// program it waits for, as `make` or a test runner does.
both_identities!(pty_ctrl_c_ends_the_run, |f: &Fixture| {
    // The marker is in the command lines of both the shell and its python child, so `pgrep -f`
    // finds every process of the run and nothing else.
    let marker = format!("{}-pty-ctrl-c", f.root.file_name().unwrap().to_string_lossy());
    let _cleanup = MarkedProcesses(marker.clone());
    // Python's own SIGINT handler only sets a flag. A SIGINT that landed between the print and
    // the start of the sleep's system call left python asleep for the full 31 s under load: in a
    // signal trace the handler ran, and no KeyboardInterrupt followed. With the default action
    // the kernel ends python at once.
    let script = r#"/usr/bin/python3 -c 'import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); print("READY", flush=True); time.sleep(31)' "$0"; echo after"#;
    let ctrl_c = Action::Type { after: "READY", text: "\x03" };
    let run = run_on_pty(f, ctrl_c, &pty_run(&[], &["/bin/sh", "-c", script, &marker]));
    let returned = Instant::now();

    assert_eq!(driver_status(&run), Some(130), "palisade did not exit with 128+SIGINT after Ctrl-C\n{}", transcript(&run));
    let seconds: f64 = driver_value(&run, "seconds-after-action")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("the driver did not report when palisade exited\n{}", transcript(&run)));
    assert!(seconds < 3.0, "palisade exited {seconds} s after Ctrl-C\n{}", transcript(&run));
    let mut survivors = pids_matching(&marker);
    while !survivors.is_empty() && returned.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        survivors = pids_matching(&marker);
    }
    assert!(survivors.is_empty(), "processes of the run outlived Ctrl-C by 5 s: {survivors:?}\n{}", transcript(&run));
});

/// Pushes `x`, a line end, then `touch MARKER` and a line end into its terminal on descriptor 0
/// with TIOCSTI, one byte at a time, and prints `TIOCSTI INJECTED` or `TIOCSTI BLOCKED ERRNO`.
/// It then prints `PENDING none`, or `PENDING` and the bytes waiting as input on that terminal.
const TIOCSTI_PTY_PROBE: &str = r#"
import fcntl, os, select, sys, termios

payload = b"x\ntouch " + sys.argv[1].encode() + b"\n"
try:
    for value in payload:
        fcntl.ioctl(0, termios.TIOCSTI, bytes([value]))
    print("TIOCSTI INJECTED", flush=True)
except OSError as error:
    print("TIOCSTI BLOCKED", error.errno, flush=True)
# Out of canonical mode, so that an unfinished line counts as input too.
modes = termios.tcgetattr(0)
modes[3] &= ~(termios.ICANON | termios.ECHO)
termios.tcsetattr(0, termios.TCSANOW, modes)
ready, _, _ = select.select([0], [], [], 0.5)
print("PENDING", repr(os.read(0, 200)) if ready else "none", flush=True)
"#;

// With --pty the command has a controlling terminal, which TIOCSTI needs, but it is the
// sandbox's own, and the seccomp filter rejects TIOCSTI on it too.
both_identities!(pty_tiocsti_is_rejected, |f: &Fixture| {
    let marker = f.out.join("injected");
    let marker_arg = marker.to_str().unwrap();

    // Control: on the host the same probe pushes input into its own terminal, so it would see
    // an injection that got through.
    let control = run_on_pty(f, Action::None, &[PYTHON, "-c", TIOCSTI_PTY_PROBE, marker_arg]);
    let kernel_allows_tiocsti = probe_result(&control, "TIOCSTI ") == Some("INJECTED");
    if kernel_allows_tiocsti {
        let pending = probe_result(&control, "PENDING ").unwrap_or_default();
        assert!(pending.contains("touch"), "the host-side control did not find its injected input\n{}", transcript(&control));
    } else {
        skip(&f.name, &format!("the kernel rejects TIOCSTI without the filter (dev.tty.legacy_tiocsti=0?), so an injection that got through could not be seen; the EPERM check still runs:\n{}", control.stdout));
    }

    // The shell on the caller's terminal reads commands from it after palisade, so a line pushed
    // into that terminal would run there before the typed `exit`.
    let outer_script = r#""$1" run --pty -- /usr/bin/python3 -c "$2" "$3"
echo "PALISADE-EXIT=$?"
exec /bin/sh"#;
    let binary = palisade_binary().to_str().unwrap();
    // `$((6*7))` prints as 42 only when the shell runs the line, not when the terminal echoes it.
    let typed = Action::Type { after: "PALISADE-EXIT=", text: "echo SHELL-$((6*7)); exit\n" };
    let run = run_on_pty(f, typed, &["/bin/sh", "-c", outer_script, "sh", binary, TIOCSTI_PTY_PROBE, marker_arg]);

    assert_eq!(driver_status(&run), Some(0), "the shell on the terminal failed\n{}", transcript(&run));
    assert!(run.stdout.contains("PALISADE-EXIT=0"), "palisade failed\n{}", transcript(&run));
    assert!(run.stdout.contains("SHELL-42"), "the shell did not read the terminal after palisade\n{}", transcript(&run));
    assert_eq!(probe_result(&run, "TIOCSTI "), Some("BLOCKED 1"), "TIOCSTI on the sandbox's terminal was not rejected with EPERM\n{}", transcript(&run));
    if kernel_allows_tiocsti {
        assert_eq!(probe_result(&run, "PENDING "), Some("none"), "input appeared on the sandbox's terminal\n{}", transcript(&run));
        assert!(!marker.exists(), "an injected command ran on the host and created {}\n{}", marker.display(), transcript(&run));
    }
});

both_identities!(pty_passes_the_exit_status_through, |f: &Fixture| {
    let run = run_on_pty(f, Action::None, &pty_run(&[], &["/bin/sh", "-c", "exit 7"]));
    assert_eq!(driver_status(&run), Some(7), "the command's exit code was not passed through\n{}", transcript(&run));

    let run = run_on_pty(f, Action::None, &pty_run(&[], &["/bin/sh", "-c", "kill -TERM $$"]));
    assert_eq!(driver_status(&run), Some(143), "a command killed by SIGTERM did not give 128+15\n{}", transcript(&run));
});

// Without a terminal anywhere, --pty still gives the command one, and the end of palisade's
// stdin reaches the command as the terminal's end of file.
both_identities!(pty_with_piped_stdin_gets_eof, |f: &Fixture| {
    let binary = palisade_binary().to_str().unwrap();
    // `timeout` bounds each run, because a missing end of file would leave `cat` waiting.
    let script = format!(
        r#"P={binary}
printf 'one\n' | timeout 30 "$P" run --pty -- /bin/sh -c 'read a; echo "GOT:$a"; [ -t 0 ] && echo STDIN-IS-TERMINAL; echo "SIZE $(stty size)"; cat; echo "LINE-CAT-RC $?"'
echo "LINE-PALISADE-RC $?"
printf 'abc' | timeout 30 "$P" run --pty -- /bin/sh -c 'cat; rc=$?; echo; echo "PARTIAL-CAT-RC $rc"'
echo "PARTIAL-PALISADE-RC $?"
timeout 30 "$P" run --pty -- /bin/sh -c 'cat; echo "NULL-CAT-RC $?"' </dev/null
echo "NULL-PALISADE-RC $?"
"#
    );
    let run = f.host_sh(&script);
    let output = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let value = |prefix: &str| probe_result(&run, prefix).map(str::to_owned);

    assert_eq!(value("LINE-PALISADE-RC "), Some("0".into()), "palisade failed with a pipe on stdin\n{output}");
    assert_eq!(value("GOT:"), Some("one".into()), "the piped line did not reach the command\n{output}");
    assert!(run.stdout.contains("STDIN-IS-TERMINAL"), "the command's stdin was not a terminal\n{output}");
    assert_eq!(value("SIZE "), Some("24 80".into()), "without a caller's terminal the size is not 24x80\n{output}");
    assert_eq!(value("LINE-CAT-RC "), Some("0".into()), "cat did not get end of file after the piped input\n{output}");
    assert_eq!(value("PARTIAL-PALISADE-RC "), Some("0".into()), "palisade failed with input that does not end a line\n{output}");
    assert_eq!(value("PARTIAL-CAT-RC "), Some("0".into()), "cat did not get end of file after an unfinished line\n{output}");
    assert_eq!(value("NULL-PALISADE-RC "), Some("0".into()), "palisade failed with /dev/null on stdin\n{output}");
    assert_eq!(value("NULL-CAT-RC "), Some("0".into()), "cat did not get end of file from /dev/null\n{output}");
});

both_identities!(pty_output_counts_toward_the_limit, |f: &Fixture| {
    let report_path = f.out.join("report.json");
    let report_arg = report_path.to_str().unwrap();
    let run = f.palisade(&["run", "--pty", "--max-output", "1K", "--report", report_arg, "--", "/bin/sh", "-c", "yes | head -c 100000"]);

    run.expect_code(137);
    assert_eq!(run.stdout.len(), 1024, "palisade passed on more or less than the limit\nstderr:\n{}", run.stderr);
    assert!(run.stderr.contains("output cut after 1 KiB"), "the marker line is missing\nstderr:\n{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["limit"], "max_output", "the report does not name the output limit: {report}");
    assert_eq!(report["usage"]["output_merged"], true, "the report does not show one stream: {report}");
});

// The caller's terminal is raw while palisade relays it, and has its modes back afterwards
// however the run ended. The runs stopped by a signal and by the timeout run in the
// background, so the shell can read the modes while palisade has the terminal in raw mode.
both_identities!(pty_restores_the_terminal_modes, |f: &Fixture| {
    let script = r#"P="$1"
echo "MODES-BEFORE $(stty -g)"
"$P" run --pty -- /bin/true
echo "AFTER-exit rc=$? $(stty -g)"
"$P" run --pty --timeout 2s -- /bin/sleep 30 </dev/tty &
pid=$!; sleep 1; echo "DURING-timeout $(stty -g)"; wait $pid
echo "AFTER-timeout rc=$? $(stty -g)"
"$P" run --pty --max-output 100 -- /bin/sh -c 'while :; do echo flood; done'
echo "AFTER-max-output rc=$? $(stty -g)"
"$P" run --pty -- /nonexistent-command
echo "AFTER-not-found rc=$? $(stty -g)"
"$P" run --pty -- /bin/sleep 30 </dev/tty &
pid=$!; sleep 1; echo "DURING-sigterm $(stty -g)"; kill -TERM $pid; wait $pid
echo "AFTER-sigterm rc=$? $(stty -g)"
"$P" run --pty -- /bin/sleep 30 </dev/tty &
pid=$!; sleep 1; echo "DURING-sigusr1 $(stty -g)"; kill -USR1 $pid; wait $pid
echo "AFTER-sigusr1 rc=$? $(stty -g)"
"#;
    let run = run_on_pty(f, Action::None, &["/bin/sh", "-c", script, "sh", palisade_binary().to_str().unwrap()]);

    assert_eq!(driver_status(&run), Some(0), "the shell on the terminal failed\n{}", transcript(&run));
    let before = probe_result(&run, "MODES-BEFORE ").unwrap_or_else(|| panic!("no modes before the runs\n{}", transcript(&run)));
    for case in ["timeout", "sigterm", "sigusr1"] {
        let during = probe_result(&run, &format!("DURING-{case} "));
        assert!(during.is_some_and(|during| during != before), "the terminal was not in raw mode during the {case} run\n{}", transcript(&run));
    }
    for (case, code) in [("exit", 0), ("timeout", 124), ("max-output", 137), ("not-found", 127), ("sigterm", 143), ("sigusr1", 138)] {
        let expected = format!("rc={code} {before}");
        assert_eq!(probe_result(&run, &format!("AFTER-{case} ")), Some(expected.as_str()), "wrong status or modes not restored after the {case} run\n{}", transcript(&run));
    }
});

both_identities!(pty_rejected_in_unconfined_profile, |f: &Fixture| {
    let marker = f.ws.join("ran");
    let touch = format!("touch {}", marker.display());
    let run = f.palisade(&["run", "--pty", "-p", "unconfined", "--", "/bin/sh", "-c", &touch]);

    run.expect_code(125);
    assert!(run.stderr.contains("--pty is not available"), "the error does not name --pty\n{}", run.stderr);
    assert!(run.stderr.contains("unconfined profile"), "the error does not give the reason\n{}", run.stderr);
    assert!(!marker.exists(), "the command ran although palisade rejected --pty");
});
