//! Palisade refuses to run, rather than running weaker, when a layer is missing or a setting
//! cannot be enforced; and its own command-line surface behaves as documented.

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture};

// Codex ran commands without a sandbox, or panicked, when the kernel refused user namespaces
// (openai/codex#15057, #6828). This reproduces a host without user namespaces: a user namespace
// of the test's own whose `max_user_namespaces` is 0 and whose process has no capability.
both_identities!(missing_user_namespaces_fail_closed, |f: &Fixture| {
    let marker = f.ws.join("ran");
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all --inh-caps=-all -- {} run -- touch {}",
        palisade_binary().display(),
        marker.display()
    );
    let probe = f.host("/".as_ref(), "unshare", &["-Ur", "true"]);
    if probe.code != Some(0) {
        skip(&f.name, &format!("unshare -Ur is not permitted here: {}", probe.stderr.trim()));
        return;
    }
    let run = f.host(&f.ws, "unshare", &["-Ur", "sh", "-c", &script]);
    assert_eq!(run.code, Some(125), "expected exit 125\nstderr: {}", run.stderr);
    assert!(run.stderr.contains("max_user_namespaces"), "the message must name the cause: {}", run.stderr);
    assert!(run.stderr.contains("fix:"), "the message must name a fix: {}", run.stderr);
    assert!(!marker.exists(), "the command ran although the sandbox could not be built");
});

// The run's network namespace is created by a child of init while the root is built. A host
// whose `max_net_namespaces` is 0 refuses it. The command must not run, although every other
// namespace exists by then, and the message names the setting. The test's user namespace has
// that limit. Palisade runs in a nested one as an ordinary user (uid 1000), because as uid 0 in
// a user namespace it could not make its idmapped mounts.
both_identities!(missing_network_namespace_fails_closed, |f: &Fixture| {
    let probe = f.host("/".as_ref(), "unshare", &["-Ur", "unshare", "--map-user=1000", "--map-group=1000", "true"]);
    if probe.code != Some(0) {
        skip(&f.name, &format!("nested user namespaces are not permitted here: {}", probe.stderr.trim()));
        return;
    }
    let marker = f.ws.join("ran");
    let world = |net: &str| {
        let script = format!(
            "echo 0 > /proc/sys/user/max_net_namespaces && exec unshare --map-user=1000 --map-group=1000 {} run --net {net} -- touch {}",
            palisade_binary().display(),
            marker.display()
        );
        f.host(&f.ws, "unshare", &["-Ur", "sh", "-c", &script])
    };

    let run = world("none");
    assert_eq!(run.code, Some(125), "expected exit 125\nstderr: {}", run.stderr);
    assert!(run.stderr.contains("network namespace"), "the message must say what failed: {}", run.stderr);
    assert!(run.stderr.contains("user.max_net_namespaces"), "the message must name the setting: {}", run.stderr);
    assert!(!marker.exists(), "the command ran although its network namespace could not be created");

    // The same world runs a command that needs no network namespace.
    let run = world("full");
    assert_eq!(run.code, Some(0), "--net full needs no network namespace\nstderr: {}", run.stderr);
    assert!(marker.exists(), "the command with --net full did not run");
});

// The unconfined profile runs outside any sandbox, where palisade enforces no limit but the
// timeout. A request for another limit is refused.
both_identities!(unenforced_settings_are_refused, |f: &Fixture| {
    let marker = f.ws.join("ran");
    for flags in [
        vec!["-p", "unconfined", "--memory", "512M"],
        vec!["-p", "unconfined", "--cpu-time", "10s"],
        vec!["-p", "unconfined", "--max-procs", "10"],
        vec!["-p", "unconfined", "--max-output", "1M"],
    ] {
        let run = f.sandbox_sh(&flags, &format!("touch {}", marker.display()));
        assert_eq!(run.code, Some(125), "{flags:?} must be refused\nstderr: {}", run.stderr);
        assert!(!marker.exists(), "{flags:?}: the command ran without the limit");
    }
});

// A CPU bandwidth limit needs a cgroup; without one the run is refused, naming the cgroup.
both_identities!(cpu_bandwidth_without_a_cgroup_is_refused, |f: &Fixture| {
    let check = f.palisade(&["check", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&check.stdout).expect("check --json prints JSON");
    if value["layers"]["cgroup_v2"]["available"] == true {
        skip(&f.name, "this machine has a delegated cgroup v2, so --cpus is enforced");
        return;
    }
    let marker = f.ws.join("ran");
    let run = f.sandbox_sh(&["--cpus", "1"], &format!("touch {}", marker.display()));
    assert_eq!(run.code, Some(125), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("cgroup"), "{}", run.stderr);
    assert!(run.stderr.contains("fix:"), "{}", run.stderr);
    assert!(!marker.exists(), "the command ran without its CPU limit");
});

both_identities!(policy_errors_name_file_and_line, |f: &Fixture| {
    let policy = f.root.join("policy.toml");
    f.write(&policy, "[filesystem]\nwritable = [\"{workspace}\"]\nreadble = [\"/srv\"]\n");
    let run = f.palisade(&["run", "--policy", policy.to_str().unwrap(), "--", "true"]);
    assert_eq!(run.code, Some(125));
    assert!(run.stderr.contains("readble"), "{}", run.stderr);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
});

both_identities!(policy_command_prints_effective_policy, |f: &Fixture| {
    let run = f.palisade(&["policy", "--deny-read", "secrets"]);
    run.expect_code(0);
    let home = f.home.display().to_string();
    assert!(run.stdout.contains(&format!("{home}/.ssh")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("{}/secrets", f.ws.display())), "{}", run.stdout);
    assert!(run.stdout.contains("profile = \"workspace-write\""), "{}", run.stdout);
    // The printed policy is itself a valid policy file.
    let policy = f.root.join("printed.toml");
    f.write(&policy, &run.stdout);
    f.palisade(&["policy", "--policy", policy.to_str().unwrap()]).expect_code(0);
});

// A policy file that does not exist stops the run, and the command never runs unwrapped.
both_identities!(missing_policy_file_stops_the_run, |f: &Fixture| {
    let marker = f.ws.join("ran");
    let missing = f.root.join("no-such-policy.toml");
    let run = f.palisade(&["run", "--policy", missing.to_str().unwrap(), "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert!(run.stderr.contains("no-such-policy.toml"), "the message names the file: {}", run.stderr);
    assert!(!marker.exists(), "the command ran without its policy");
});

// Protected names apply in every writable root, whatever the working directory, and a
// glob pattern, which palisade cannot enforce at every depth, is refused instead of ignored.
both_identities!(protected_names_apply_in_every_writable_root, |f: &Fixture| {
    let second = f.root.join("ws2");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::create_dir_all(f.ws.join("sub")).unwrap();
    f.chown_all();
    f.git_init(&second);
    let hooks_before = f.snapshot(&second.join(".git/hooks"));
    let policy = f.root.join("protect.toml");
    f.write(&policy, "[filesystem]\nprotected = [\".env\"]\n");
    let script = format!(
        "echo X > {two}/.env; echo ws2=$?; echo X > {ws}/.env; echo ws=$?; echo X > {two}/.git/hooks/pre-commit; echo hooks=$?",
        two = second.display(),
        ws = f.ws.display()
    );
    let args = ["run", "--policy", policy.to_str().unwrap(), "-w", f.ws.to_str().unwrap(), "--allow-write", second.to_str().unwrap(), "--", "/bin/sh", "-c", &script];
    let run = f.palisade_in(&f.ws.join("sub"), &args, &[]);
    run.expect_code(0);
    for refused in ["ws2=0", "ws=0", "hooks=0"] {
        assert!(!run.stdout.contains(refused), "{refused}: the write succeeded\n{}", run.stdout);
    }
    assert!(!second.join(".env").exists());
    assert!(!f.ws.join(".env").exists());
    assert_eq!(f.snapshot(&second.join(".git/hooks")), hooks_before);

    f.write(&policy, "[filesystem]\nprotected = [\"**/.env\"]\n");
    let refused = f.palisade(&["run", "--policy", policy.to_str().unwrap(), "--", "true"]);
    assert_eq!(refused.code, Some(125));
    assert!(refused.stderr.contains("patterns are not supported"), "{}", refused.stderr);
});

// Root mode needs CAP_SYS_ADMIN. The host's root user without it (a bounding set narrowed by
// setpriv or a container runtime) used to fall back to a user namespace of its own. There the
// command was still the host's uid 0 and could read /etc/shadow. Palisade now rejects the run.
// The case exists only for the host's root user, so the unprivileged variant skips.
both_identities!(host_root_without_cap_sys_admin_is_refused, |f: &Fixture| {
    if f.who == crate::suite::harness::Who::User {
        skip(&f.name, "only the host's root user can start palisade without CAP_SYS_ADMIN in the first user namespace");
        return;
    }
    let marker = f.ws.join("ran");
    let command = [
        "--bounding-set=-sys_admin",
        "--inh-caps=-sys_admin",
        "--",
        palisade_binary().to_str().unwrap(),
        "run",
        "--",
        "/bin/sh",
        "-c",
    ];
    let script = format!("cat /etc/shadow > {}", marker.display());
    let mut args: Vec<&str> = command.to_vec();
    args.push(&script);
    let run = f.host(&f.ws, "setpriv", &args);
    assert_eq!(run.code, Some(125), "expected exit 125\nstderr: {}", run.stderr);
    assert!(run.stderr.contains("CAP_SYS_ADMIN"), "the message must name the missing capability: {}", run.stderr);
    assert!(run.stderr.contains("fix:"), "the message must name a fix: {}", run.stderr);
    assert!(!marker.exists(), "the command ran as the host's root user");
});

// Root mode needs more than CAP_SYS_ADMIN. Without one of the others, found by dropping each in
// turn, the run used to fail partway with a message that named no capability (for example
// "failed to create mount point ...: Permission denied"). Palisade now checks them first and
// names the missing ones. CAP_NET_ADMIN is needed only for the run's own network namespace.
both_identities!(root_without_a_needed_capability_names_it, |f: &Fixture| {
    if f.who == crate::suite::harness::Who::User {
        skip(&f.name, "only root mode needs these capabilities");
        return;
    }
    let binary = palisade_binary().to_str().unwrap();
    let marker = f.ws.join("ran");
    let touch = format!("touch {}", marker.display());
    let without = |capabilities: &str, net: &str| {
        let bounding = format!("--bounding-set={capabilities}");
        let inheritable = format!("--inh-caps={capabilities}");
        f.host(&f.ws, "setpriv", &[&bounding, &inheritable, "--", binary, "run", "--net", net, "--", "/bin/sh", "-c", &touch])
    };

    let run = without("-chown,-net_admin", "none");
    assert_eq!(run.code, Some(125), "expected exit 125\nstderr: {}", run.stderr);
    assert!(run.stderr.contains("CAP_CHOWN, CAP_NET_ADMIN"), "the message must name the missing capabilities: {}", run.stderr);
    assert!(run.stderr.contains("fix:"), "the message must name a fix: {}", run.stderr);
    assert!(!marker.exists(), "the command ran although setup could not succeed");

    // The host's network needs no namespace of the run's own, so no CAP_NET_ADMIN either.
    let run = without("-net_admin", "full");
    assert_eq!(run.code, Some(0), "a run with the host's network needs no CAP_NET_ADMIN\nstderr: {}", run.stderr);
    assert!(marker.exists(), "the command did not run");
});

// `palisade check` judges root mode as `palisade run` does. As root without CAP_SYS_ADMIN, or
// without another capability root mode needs, `check` used to report the default policy as
// fully enforced and exit 0 while every run stopped with exit 125. It now marks the namespaces
// missing, names the capability and reports that degraded mode cannot help either.
both_identities!(check_names_missing_root_capabilities, |f: &Fixture| {
    if f.who == crate::suite::harness::Who::User {
        skip(&f.name, "only root mode needs these capabilities");
        return;
    }
    let binary = palisade_binary().to_str().unwrap();
    for (dropped, named) in [("-sys_admin", "CAP_SYS_ADMIN"), ("-chown,-net_admin", "CAP_CHOWN, CAP_NET_ADMIN")] {
        let bounding = format!("--bounding-set={dropped}");
        let inheritable = format!("--inh-caps={dropped}");
        let run = f.host(&f.ws, "setpriv", &[&bounding, &inheritable, "--", binary, "check", "--json"]);
        assert_eq!(run.code, Some(1), "{dropped}: check must exit 1\n{}{}", run.stdout, run.stderr);
        let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("check --json prints JSON");
        assert_eq!(value["layers"]["namespaces"]["available"], false, "{dropped}: {value}");
        let detail = value["layers"]["namespaces"]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{dropped}: the detail must name {named}: {value}");
        assert!(value["layers"]["namespaces"]["fix"].is_string(), "{dropped}: {value}");
        assert_eq!(value["default_policy_enforced"], false, "{dropped}: {value}");
        assert_eq!(value["degraded_mode_possible"], false, "{dropped}: {value}");
    }
});
