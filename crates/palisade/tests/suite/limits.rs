//! Resource limits, whole-tree kill, output and the run report, each tried from inside the
//! sandbox. Every bomb here also runs under an outer guard of the test's own (a process limit
//! with `prlimit`, a wall-clock `timeout`, a small temporary filesystem), so a palisade bug
//! cannot take the test machine down.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture};
use crate::suite::process::{unique_marker, wait_until_gone, MarkedProcesses};

const PYTHON: &str = "/usr/bin/python3";

/// The outer process guard: well above every limit the tests give palisade, well below what
/// would hurt the machine.
const OUTER_TASKS: u64 = 2048;

fn report(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|error| panic!("no report at {}: {error}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

/// Returns the report's limit denials with the given name.
fn denials<'a>(report: &'a serde_json::Value, limit: &str) -> Vec<&'a serde_json::Value> {
    report["denials"].as_array().expect("denials is an array").iter().filter(|entry| entry["limit"] == limit).collect()
}

// A fork bomb that stops by itself once forks fail: the processes it already has may not
// exceed the limit, and fork must fail with EAGAIN. Public reports: NVIDIA/NemoClaw#809
// (no process limit in an agent sandbox), openclaw/openclaw#44098.
both_identities!(fork_bomb_stops_at_the_process_limit, |f: &Fixture| {
    let marker = unique_marker(f, "forks");
    let _cleanup = MarkedProcesses(marker.clone());
    let path = f.out.join("report.json");
    let script = format!(
        r#"
import os, sys, time
n = 0
try:
    while n < 100000:
        if os.fork() == 0:
            sys.argv[0] = "{marker}"
            time.sleep(20); os._exit(0)
        n += 1
    print("NOT-LIMITED", n)
except OSError as e:
    print("FORK-STOPPED", n, e.strerror)
"#
    );
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--max-procs", "256", "--report", path.to_str().unwrap(), "--", PYTHON, "-c", &script]);
    let line = run.lines_starting("FORK-STOPPED");
    assert_eq!(line.len(), 1, "forks were not stopped:\n{}\n{}", run.stdout, run.stderr);
    let count: u64 = line[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(count < 256, "{count} forks succeeded under a limit of 256");
    assert!(line[0].contains("Resource temporarily unavailable"), "{}", line[0]);
    let survivors = wait_until_gone(&marker, Duration::from_secs(2));
    assert!(survivors.is_empty(), "children of the bomb outlived the run: {survivors:?}");
});

// A fork chain that never stops by itself: palisade must end it and name the limit that did.
// Public report: openai/codex#38909 (this command froze the host through a sandbox without
// process or memory limits).
both_identities!(endless_fork_chain_is_ended_and_named, |f: &Fixture| {
    let path = f.out.join("report.json");
    let started = Instant::now();
    let run = f.palisade_guarded(
        OUTER_TASKS,
        90,
        &["run", "--max-procs", "256", "--memory", "1G", "--timeout", "60s", "--report", path.to_str().unwrap(), "--", "bash", "-c", "f(){ f | f & }; f; sleep 50"],
    );
    let elapsed = started.elapsed();
    let value = report(&path);
    let summary = format!("limit {} denials {} usage {}", value["limit"], value["denials"], value["usage"]);
    assert_eq!(run.code, Some(137), "the chain was not ended at a limit\n{summary}");
    assert_eq!(value["limit"], "max_procs", "{summary}");
    assert!(elapsed < Duration::from_secs(30), "ending the chain took {elapsed:?}");
    assert!(value["usage"]["peak_processes"].as_u64().is_some_and(|peak| peak <= 258), "{summary}");
    assert!(run.stderr.contains("limit of 256 processes"), "{}", run.stderr.lines().last().unwrap_or_default());
});

// Memory that one process keeps allocating, and memory spread over processes each below the
// limit. Public reports: TracecatHQ/tracecat#3142 (a per-process limit bounded neither the
// tree nor tmpfs), daytonaio/daytona#4489 (no reason given for the kill).
both_identities!(memory_bomb_is_killed_and_named, |f: &Fixture| {
    let path = f.out.join("single.json");
    let single = "b = []\nwhile True:\n    b.append(bytearray(64 << 20))\n";
    let started = Instant::now();
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--memory", "512M", "--report", path.to_str().unwrap(), "--", PYTHON, "-c", single]);
    assert!(started.elapsed() < Duration::from_secs(20), "the memory bomb ran for {:?}", started.elapsed());
    let value = report(&path);
    assert_eq!(run.code, Some(137), "stderr: {}\nreport: {value}", run.stderr);
    assert_eq!(value["limit"], "memory", "{value}");
    assert_eq!(value["exit"]["signal"], 9, "{value}");
    assert!(run.stderr.contains("memory"), "the message must name memory: {}", run.stderr);

    let path = f.out.join("spread.json");
    let spread = "for i in 1 2 3 4; do python3 -c 'import time; b = bytearray(200 << 20); time.sleep(8)' & done; wait; echo rc=$?";
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--memory", "512M", "--report", path.to_str().unwrap(), "--", "sh", "-c", spread]);
    let value = report(&path);
    assert_eq!(run.code, Some(137), "four processes of 200 MiB ran under a 512 MiB limit\nstdout: {}\nreport: {value}", run.stdout);
    assert_eq!(value["limit"], "memory", "{value}");
    let killed = denials(&value, "memory");
    assert!(killed.iter().any(|entry| entry["ended_run"] == true), "{value}");
});

// Pages a forked worker shares with its parent count once: a parent holding 300 MiB and four
// forked children stay under a 1 GiB limit, as they would in a cgroup.
both_identities!(memory_shared_after_fork_counts_once, |f: &Fixture| {
    let path = f.out.join("report.json");
    let script = r#"
import os, time
b = bytearray(300 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
children = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        time.sleep(2); os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("workers done")
"#;
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--memory", "1G", "--report", path.to_str().unwrap(), "--", PYTHON, "-c", script]);
    let value = report(&path);
    assert_eq!(run.code, Some(0), "stderr: {}
denials: {}", run.stderr, value["denials"]);
    assert!(run.stdout.contains("workers done"), "{}", run.stdout);
    let peak = value["usage"]["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak < 600 << 20, "shared pages were counted per process: peak {peak} bytes");
});

// Runtimes reserve far more address space than they use: V8 and the JVM reserve gigabytes. A
// memory limit must count memory in use, so both start under the default limits and under
// 512 MiB.
both_identities!(runtimes_start_under_memory_limits, |f: &Fixture| {
    let mut tried = 0;
    for (program, args) in [("node", vec!["-e", "console.log('node ok')"]), ("java", vec!["-version"])] {
        if Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            skip(&f.name, &format!("{program} is not installed"));
            continue;
        }
        tried += 1;
        for limit in [None, Some("512M")] {
            let mut command = vec!["run"];
            if let Some(limit) = limit {
                command.extend(["--memory", limit]);
            }
            command.push("--");
            command.push(program);
            command.extend(args.iter().copied());
            let run = f.palisade(&command);
            assert_eq!(run.code, Some(0), "{program} failed with memory limit {limit:?}\nstdout: {}\nstderr: {}", run.stdout, run.stderr);
        }
    }
    if tried == 0 {
        skip(&f.name, "neither node nor java is installed");
    }
});

// Filling the private /tmp stops with ENOSPC at its size, not with a kill. So does creating
// empty files, and one file larger than the file size limit is refused. Public reports:
// mensfeld/code-on-incus#135 (agents hung when /tmp filled), ConchSandbox/Conch#140 (an
// unsized tmpfs led to an OOM kill instead of ENOSPC).
both_identities!(disk_fillers_stop_at_their_limits, |f: &Fixture| {
    let script = r#"
dd if=/dev/zero of=/tmp/filler bs=1M count=1024 status=none 2>dd.err; echo "tmp dd rc=$?"
grep -q "No space left on device" dd.err && echo "tmp ENOSPC"
rm -f /tmp/filler dd.err
for dir in /var/tmp /dev/shm "$HOME"; do
  dd if=/dev/zero of="$dir/filler" bs=1M count=1024 status=none 2>/dev/null; echo "$(basename "$dir") rc=$?"; rm -f "$dir/filler"
done
python3 - <<'PY'
n = 0
try:
    while n < 2_000_000:
        open(f"/tmp/i{n}", "w").close(); n += 1
    print("INODES-UNLIMITED")
except OSError as e:
    print("INODES-STOPPED", n, e.strerror)
PY
"#;
    let run = f.palisade_guarded(OUTER_TASKS, 120, &["run", "--tmp-size", "64M", "--", "sh", "-c", script]);
    run.expect_code(0);
    assert!(run.stdout.contains("tmp dd rc=1"), "dd into /tmp was not stopped by ENOSPC:\n{}", run.stdout);
    assert!(run.stdout.contains("tmp ENOSPC"), "{}", run.stdout);
    for dir in ["tmp", "shm", "home"] {
        assert!(run.stdout.lines().any(|line| line == format!("{dir} rc=1")), "{dir} is not bounded:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("INODES-STOPPED"), "the inode table of /tmp is not bounded:\n{}", run.stdout);

    // One file past the file size limit, as the command itself, so the report can name it.
    let path = f.out.join("file.json");
    let big = f.ws.join("big");
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--max-file-size", "1M", "--report", path.to_str().unwrap(), "--", "fallocate", "-l", "50G", big.to_str().unwrap()]);
    assert_ne!(run.code, Some(0), "a 50G file was allocated under a 1M file size limit");
    let size = fs::metadata(&big).map(|meta| meta.len()).unwrap_or(0);
    assert!(size <= 1 << 20, "the workspace file grew to {size} bytes");
    let value = report(&path);
    assert_eq!(value["limit"], "max_file_size", "{value}");
});

// Output floods: one giant line, endless lines, many lines. Each is cut at the limit with a
// marker, ends at once, and leaves palisade's own memory small. Public reports:
// aden-hive/hive#2108 (no cap on captured output), MoonshotAI/kimi-code#1285 (huge output
// crashed the agent and starved its timeout).
both_identities!(output_flood_is_cut_at_the_limit, |f: &Fixture| {
    for (name, script) in [
        ("giant-line", "head -c 2000000000 /dev/zero | tr '\\0' A"),
        ("endless", "yes BL41"),
        ("many-lines", "seq 1 100000000"),
    ] {
        let path = f.out.join(format!("{name}.json"));
        let started = Instant::now();
        let run = f.palisade_guarded(
            OUTER_TASKS,
            60,
            &["run", "--max-output", "1M", "--timeout", "10s", "--report", path.to_str().unwrap(), "--", "sh", "-c", script],
        );
        let elapsed = started.elapsed();
        let value = report(&path);
        assert!(elapsed < Duration::from_secs(12), "{name}: the run took {elapsed:?}");
        assert!(run.stdout.len() <= 1 << 20, "{name}: {} bytes passed the 1 MiB limit", run.stdout.len());
        assert!(run.stdout.len() >= 1 << 19, "{name}: only {} bytes passed before the cut", run.stdout.len());
        assert!(run.stderr.contains("[palisade: output cut after 1 MiB"), "{name}: no marker on stderr: {}", run.stderr);
        assert_eq!(run.code, Some(137), "{name}: {}", run.stderr);
        assert_eq!(value["limit"], "max_output", "{name}: {value}");
    }
});

// Without a limit, output passes through byte for byte: binary data, no final newline, and
// the order of stdout and stderr when the caller sends both to one file.
both_identities!(output_passes_through_unchanged, |f: &Fixture| {
    let script = "printf 'a\\000b\\377'; printf 'err' >&2";
    let run = f.palisade(&["run", "--", "sh", "-c", script]);
    run.expect_code(0);
    assert_eq!(run.stdout.as_bytes(), "a\0b\u{fffd}".as_bytes(), "stdout changed");
    assert_eq!(run.stderr, "err", "stderr changed");

    let combined = f.out.join("combined.txt");
    let interleaved = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let shell = format!(
        "{} run -- sh -c '{interleaved}' > {} 2>&1",
        palisade_binary().display(),
        combined.display()
    );
    f.host_sh(&shell).expect_code(0);
    let text = fs::read_to_string(&combined).unwrap();
    let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(text, expected, "stdout and stderr were reordered");

    let path = f.out.join("report.json");
    f.palisade(&["run", "--report", path.to_str().unwrap(), "--", "sh", "-c", "printf 12345; printf 678 >&2"]).expect_code(0);
    let value = report(&path);
    assert_eq!(value["usage"]["stdout_bytes"], 5, "{value}");
    assert_eq!(value["usage"]["stderr_bytes"], 3, "{value}");
});

// CPU time counts every process of the run together: two busy processes of 1.5 s each go
// over a limit of 2 s that each of them alone stays under.
both_identities!(cpu_time_counts_the_whole_tree, |f: &Fixture| {
    let path = f.out.join("report.json");
    let busy = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass\n";
    let script = format!("{PYTHON} -c '{busy}' & {PYTHON} -c '{busy}' & wait; sleep 5; echo survived");
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--cpu-time", "2s", "--report", path.to_str().unwrap(), "--", "sh", "-c", &script]);
    let value = report(&path);
    assert_eq!(run.code, Some(137), "stdout: {}\nreport: {value}", run.stdout);
    assert_eq!(value["limit"], "cpu_time", "{value}");
    assert!(!run.stdout.contains("survived"), "{}", run.stdout);
});

/// Starts `palisade run -- sh -c SCRIPT` as the fixture's user without waiting for it.
fn spawn_palisade(f: &Fixture, script: &str) -> std::process::Child {
    let mut command = f.as_owner(palisade_binary().to_str().unwrap());
    command.args(["run", "--", "sh", "-c", script]).current_dir(&f.ws).env("HOME", &f.home);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    command.spawn().unwrap()
}

/// Returns a script that leaves detached processes behind: one in a new session, one
/// double-forked, one ignoring SIGTERM and SIGHUP. Each would create a file after 6 s.
fn detaching_script(f: &Fixture, marker: &str) -> String {
    r#"
setsid sh -c 'sleep 6; touch "@WS@/late-setsid"; : @MARKER@' </dev/null >/dev/null 2>&1 &
(sh -c 'sleep 6; touch "@WS@/late-double"; : @MARKER@' &)
sh -c 'trap "" HUP TERM INT; sleep 6; touch "@WS@/late-stubborn"; : @MARKER@' &
trap '' TERM
sleep 60
"#
    .replace("@WS@", f.ws.to_str().unwrap())
    .replace("@MARKER@", marker)
}

fn assert_nothing_left(f: &Fixture, marker: &str) {
    let survivors = wait_until_gone(marker, Duration::from_secs(2));
    assert!(survivors.is_empty(), "processes of the run are still alive: {survivors:?}");
    sleep(Duration::from_secs(7));
    for name in ["late-setsid", "late-double", "late-stubborn"] {
        assert!(!f.ws.join(name).exists(), "a detached process of the run created {name}");
    }
}

/// Waits until the three children of `detaching_script` run. Their command lines start with
/// `sh -c` and the script's text. Palisade's own processes, whose command lines contain the
/// whole script too, start otherwise.
fn wait_for_start(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let children = format!("^sh -c (sleep|trap) .*{marker}");
    while crate::suite::process::pids_matching(&children).len() < 3 && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
}

// SIGTERM to palisade is passed on; a command that ignores it is killed, with every process
// of the run, after the grace period.
both_identities!(sigterm_to_palisade_ends_the_tree, |f: &Fixture| {
    let marker = unique_marker(f, "sigterm");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut child = spawn_palisade(f, &detaching_script(f, &marker));
    wait_for_start(&marker);
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "palisade took {:?} to end after SIGTERM", started.elapsed());
    assert!(!status.success());
    assert_nothing_left(f, &marker);
});

// Palisade's own death (SIGKILL, which it cannot handle) ends every process of the run.
both_identities!(palisade_death_ends_the_tree, |f: &Fixture| {
    let marker = unique_marker(f, "death");
    let _cleanup = MarkedProcesses(marker.clone());
    let mut child = spawn_palisade(f, &detaching_script(f, &marker));
    wait_for_start(&marker);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_left(f, &marker);
});

// Reports of real runs, including a refusal, validate against the schema published in docs/.
both_identities!(reports_match_the_published_schema, |f: &Fixture| {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/report.schema.json");
    let probe = Command::new(PYTHON).args(["-c", "import jsonschema"]).output();
    if !probe.is_ok_and(|out| out.status.success()) {
        skip(&f.name, "Debian's python3-jsonschema is not installed (.ci/run installs it)");
        return;
    }
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("plain", vec!["--", "sh", "-c", "echo hi; exit 3"]),
        ("timeout", vec!["--timeout", "1s", "--", "sleep", "5"]),
        ("memory", vec!["--memory", "64M", "--", PYTHON, "-c", "import time; b = bytearray(256 << 20); time.sleep(5)"]),
        ("output", vec!["--max-output", "1K", "--", "yes"]),
        ("missing", vec!["--", "no-such-command-here"]),
        ("refused", vec!["-p", "unconfined", "--memory", "1G", "--", "true"]),
        // The destination is not on the allowlist, so the proxy refuses it without a lookup.
        ("network", vec!["--allow-domain", "127.0.0.1:9", "--", "curl", "-s", "http://blocked.invalid/"]),
    ];
    let mut paths = Vec::new();
    for (name, args) in runs {
        let path = f.out.join(format!("{name}.json"));
        let mut command = vec!["run", "--report", path.to_str().unwrap()];
        command.extend(args);
        f.palisade_guarded(OUTER_TASKS, 60, &command);
        assert!(path.exists(), "{name}: no report written");
        paths.push(path);
    }
    let validator = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
for path in sys.argv[2:]:
    jsonschema.validate(json.load(open(path)), schema, cls=jsonschema.Draft202012Validator)
    print("valid", path)
"#;
    let output = Command::new(PYTHON).arg("-c").arg(validator).arg(&schema).args(&paths).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "a report does not match {}:\n{stdout}\n{}", schema.display(), String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.matches("valid ").count(), paths.len(), "{stdout}");
    let memory = report(&f.out.join("memory.json"));
    assert_eq!(memory["limit"], "memory", "{memory}");
    let network = report(&f.out.join("network.json"));
    assert_eq!(network["network"]["mode"], "allowlist", "{network}");
    assert_eq!(network["denials"][0]["kind"], "network", "{network}");
    assert_eq!(network["denials"][0]["destination"], "blocked.invalid", "{network}");
});

// With a delegated cgroup v2, the kernel enforces the memory limit for the whole run: the OOM
// killer ends every process (memory.oom.group), the report names the limit, and the run's cgroup is
// removed afterwards. Public report: can1357/oh-my-pi#12769 (a soft memory.high alone only
// throttled a runaway process and never ended it).
both_identities!(cgroup_holds_the_memory_limit, |f: &Fixture| {
    let check = f.palisade(&["check", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&check.stdout).expect("check --json prints JSON");
    let cgroup = &value["layers"]["cgroup_v2"];
    if cgroup["available"] != true {
        skip(&f.name, &format!("no delegated cgroup v2 here: {}", cgroup["detail"].as_str().unwrap_or("unknown")));
        return;
    }
    let path = f.out.join("report.json");
    let spread = "for i in 1 2 3 4; do python3 -c 'import time; b = bytearray(200 << 20); time.sleep(8)' & done; wait";
    let run = f.palisade_guarded(OUTER_TASKS, 60, &["run", "--memory", "512M", "--report", path.to_str().unwrap(), "--", "sh", "-c", spread]);
    let value = report(&path);
    assert_eq!(run.code, Some(137), "stderr: {}", run.stderr);
    assert_eq!(value["limit"], "memory", "{}", value["denials"]);
    let cgroup_path = value["layers"]["cgroup"].as_str().expect("the run had a cgroup");
    assert!(!Path::new(cgroup_path).exists(), "the run's cgroup {cgroup_path} was not removed");
});

// A reader that goes away early ends the command as it would without palisade: the command
// gets SIGPIPE at its next write, instead of blocking on a pipe that no process reads.
both_identities!(early_reader_exit_ends_the_writer, |f: &Fixture| {
    let shell = format!(
        "timeout 30 {} run -- yes | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
        palisade_binary().display()
    );
    let run = f.host(&f.ws.clone(), "bash", &["-c", &shell]);
    assert!(run.stdout.starts_with("y\n"), "{}", run.stdout);
    assert!(run.stdout.contains("status=141"), "yes did not end with SIGPIPE:\n{}\n{}", run.stdout, run.stderr);
});
