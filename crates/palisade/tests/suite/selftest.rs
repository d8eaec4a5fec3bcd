//! `palisade selftest`: every probe holds under the default policy, the JSON output lists the
//! whole catalogue, a weakened policy makes the probes it weakens report "not held", and
//! selftest leaves neither files nor processes behind.
//!
//! Each run goes through the harness's outer guard, because the process-limit probe starts up
//! to 200 processes when nothing stops it. Each run's TMPDIR is a directory of the fixture, so
//! the test can check that selftest removed its scratch directory.

use std::fs;
use std::path::PathBuf;

use crate::both_identities;
use crate::suite::harness::{Fixture, Run, Who};
use crate::suite::process::pids_matching;

/// The outer process guard, as in `limits.rs`: far above the 200 processes the probe starts.
const OUTER_TASKS: u64 = 2048;
/// The outer wall-clock guard, in seconds. A selftest takes a few seconds.
const OUTER_SECONDS: u64 = 120;

/// The catalogue's ids in their order, which scripts reading the JSON output depend on.
const CATALOGUE: &[&str] = &[
    "write-outside-workspace",
    "write-inside-workspace",
    "read-credential",
    "git-hook",
    "secret-environment",
    "connect-host-loopback",
    "process-limit",
    "timeout-detached",
    "user-namespace",
    "ptrace",
    "io-uring",
    "bpf",
    "read-shadow",
];

/// Returns the probes the default policy cannot show for `who`: reading /etc/shadow shows
/// something only as root.
fn skipped_for(who: Who) -> &'static [&'static str] {
    match who {
        Who::Root if running_as_root() => &[],
        _ => &["read-shadow"],
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Runs `palisade selftest FLAGS` under the outer guard with a TMPDIR of the fixture's own, and
/// checks that the scratch directory and every process of the probes are gone afterwards.
fn selftest(f: &Fixture, flags: &[&str]) -> Run {
    let tmp = f.root.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    f.chown_all();
    let mut args = vec!["selftest"];
    args.extend_from_slice(flags);
    let run = f.palisade_guarded_with_env(OUTER_TASKS, OUTER_SECONDS, &args, &[("TMPDIR", tmp.to_str().unwrap())]);
    let left: Vec<PathBuf> = fs::read_dir(&tmp).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert!(left.is_empty(), "selftest left {left:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let processes = pids_matching(tmp.to_str().unwrap());
    assert!(processes.is_empty(), "processes of the probes outlived selftest: {processes:?}");
    run
}

/// Parses `--json` output into (id, verdict, detail) in output order.
fn verdicts(run: &Run) -> Vec<(String, String, String)> {
    let value: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|error| panic!("selftest --json printed no JSON ({error}):\n{}\nstderr:\n{}", run.stdout, run.stderr));
    value["probes"]
        .as_array()
        .expect("probes is an array")
        .iter()
        .map(|probe| {
            let text = |field: &str| probe[field].as_str().unwrap_or_else(|| panic!("{field} missing in {probe}")).to_owned();
            (text("id"), text("verdict"), text("detail"))
        })
        .collect()
}

fn verdict_of<'a>(verdicts: &'a [(String, String, String)], id: &str) -> &'a (String, String, String) {
    verdicts.iter().find(|(probe, _, _)| probe == id).unwrap_or_else(|| panic!("no probe {id} in {verdicts:?}"))
}

// Under the default policy every probe holds, or skips only where it cannot show anything, and
// each probe's line in the table shows its verdict.
both_identities!(selftest_default_policy_holds, |f: &Fixture| {
    let run = selftest(f, &[]);
    run.expect_code(0);
    let skipped = skipped_for(f.who);
    for id in CATALOGUE {
        let lines = run.lines_starting(&format!("{id} "));
        assert_eq!(lines.len(), 1, "expected one line for {id}:\n{}", run.stdout);
        let label = lines[0][id.len()..].split_whitespace().next().unwrap();
        let expected = if skipped.contains(id) { "SKIP" } else { "held" };
        assert_eq!(label, expected, "{}\nstderr:\n{}", lines[0], run.stderr);
    }
    let summary = format!("{} probes: {} held, 0 not held, {} skipped.", CATALOGUE.len(), CATALOGUE.len() - skipped.len(), skipped.len());
    assert!(run.stdout.contains(&summary), "{}", run.stdout);
});

// The JSON output lists every catalogue id in order, with a description, a verdict and a
// detail, and a summary that adds up.
both_identities!(selftest_json_lists_every_probe, |f: &Fixture| {
    let run = selftest(f, &["--json"]);
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["format"], 1, "{value}");
    let ids: Vec<&str> = value["probes"].as_array().unwrap().iter().map(|probe| probe["id"].as_str().unwrap()).collect();
    assert_eq!(ids, CATALOGUE);
    for probe in value["probes"].as_array().unwrap() {
        assert!(probe["description"].as_str().is_some_and(|text| !text.is_empty()), "{probe}");
        assert!(probe["detail"].as_str().is_some_and(|text| !text.is_empty()), "{probe}");
        let verdict = probe["verdict"].as_str().unwrap();
        let expected = if skipped_for(f.who).contains(&probe["id"].as_str().unwrap()) { "skipped" } else { "held" };
        assert_eq!(verdict, expected, "{probe}");
    }
    let skipped = skipped_for(f.who).len();
    assert_eq!(value["summary"]["held"], CATALOGUE.len() - skipped, "{value}");
    assert_eq!(value["summary"]["not_held"], 0, "{value}");
    assert_eq!(value["summary"]["skipped"], skipped, "{value}");
    assert_eq!(value["summary"]["all_held"], true, "{value}");
});

// With the host's network, the probe's connection reaches selftest's listener on the host's
// 127.0.0.1: the network probe does not hold, selftest exits 1, and the other probes hold.
both_identities!(selftest_full_network_not_held, |f: &Fixture| {
    let run = selftest(f, &["--net", "full", "--json"]);
    run.expect_code(1);
    let verdicts = verdicts(&run);
    let (_, verdict, detail) = verdict_of(&verdicts, "connect-host-loopback");
    assert_eq!(verdict, "not_held", "{detail}");
    assert!(detail.contains("the listener accepted the connection"), "{detail}");
    for (id, verdict, detail) in &verdicts {
        if id != "connect-host-loopback" && verdict != "skipped" {
            assert_eq!(verdict, "held", "{id}: {detail}");
        }
    }
});

// The unconfined profile is reported, not refused: the probes of the filesystem, the network
// and the process tree do not hold, the environment filter still does, and selftest kills the
// detached process that outlived the timeout.
both_identities!(selftest_unconfined_not_held, |f: &Fixture| {
    let run = selftest(f, &["-p", "unconfined", "--json"]);
    run.expect_code(1);
    assert_eq!(run.stderr.matches("palisade: profile unconfined").count(), 1, "{}", run.stderr);
    let verdicts = verdicts(&run);
    let mut not_held = vec!["write-outside-workspace", "read-credential", "git-hook", "connect-host-loopback", "process-limit", "timeout-detached"];
    if !skipped_for(f.who).contains(&"read-shadow") {
        not_held.push("read-shadow");
    }
    for id in not_held {
        let (_, verdict, detail) = verdict_of(&verdicts, id);
        assert_eq!(verdict, "not_held", "{id}: {detail}");
    }
    let (_, verdict, detail) = verdict_of(&verdicts, "timeout-detached");
    assert!(detail.contains("outlived the 1s timeout, and selftest killed it"), "{verdict}: {detail}");
    let (_, verdict, detail) = verdict_of(&verdicts, "write-inside-workspace");
    assert_eq!(verdict, "held", "{detail}");
    let (_, verdict, detail) = verdict_of(&verdicts, "secret-environment");
    assert_eq!(verdict, "held", "{detail}");
});

// Each policy flag weakens its own probe and no other: a writable root around selftest's
// outside directory, --allow-ptrace, passing the token variable, and no process limit.
both_identities!(selftest_flags_weaken_their_probes, |f: &Fixture| {
    let tmp = f.root.join("tmp");
    let run = selftest(
        f,
        &["--allow-write", tmp.to_str().unwrap(), "--allow-ptrace", "--env", "PALISADE_SELFTEST_TOKEN", "--max-procs", "unlimited", "--json"],
    );
    run.expect_code(1);
    let verdicts = verdicts(&run);
    let weakened = ["write-outside-workspace", "ptrace", "secret-environment", "process-limit"];
    for (id, verdict, detail) in &verdicts {
        let expected = if weakened.contains(&id.as_str()) {
            "not_held"
        } else if skipped_for(f.who).contains(&id.as_str()) {
            "skipped"
        } else {
            "held"
        };
        assert_eq!(verdict, expected, "{id}: {detail}");
    }
    let (_, _, detail) = verdict_of(&verdicts, "write-outside-workspace");
    assert!(detail.contains("created appeared"), "{detail}");
    assert!(detail.contains("existing changed"), "{detail}");
    let (_, _, detail) = verdict_of(&verdicts, "process-limit");
    assert!(detail.starts_with("started all 200 processes; the policy sets no process limit"), "{detail}");
    // The home directory now lies in a writable root, where palisade masks the key instead of
    // leaving it out.
    let (_, _, detail) = verdict_of(&verdicts, "read-credential");
    assert!(detail.contains("an unreadable stand-in covers the key"), "{detail}");
});

// The options that selftest sets itself are rejected with status 125, as an invalid policy is,
// before any probe runs, and the scratch directory is removed on that path too.
both_identities!(selftest_rejects_its_own_options, |f: &Fixture| {
    for (flags, message) in [
        (&["--workspace", "/tmp"][..], "--workspace is not accepted by selftest"),
        (&["--timeout", "5s"][..], "--timeout is not accepted by selftest"),
        (&["--report", "/tmp/report.json"][..], "--report is not accepted by selftest"),
        (&["--net", "everywhere"][..], "everywhere"),
    ] {
        let run = selftest(f, flags);
        run.expect_code(125);
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{flags:?} printed results: {}", run.stdout);
    }
});
