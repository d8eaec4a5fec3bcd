//! The filesystem view: writes that must not leave the writable roots, files the host later
//! runs or trusts, hidden credentials, and the ordinary file operations that builds need.
//!
//! A test runs a shell script inside the sandbox that attempts each operation as a separate
//! step (see [`PRELUDE`]), then checks the host: contents, modes, times and existence.
//! The fixture lives under `/var/tmp`, which the sandbox replaces with a private tmpfs, so a
//! host path outside the writable roots is absent inside unless a test makes it visible with
//! `--allow-read`. Tests that need a denial to come from a read-only mount do that.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::both_identities;
use crate::suite::harness::{CANARY, FAKE_CREDENTIALS, Fixture, Run, palisade_binary, skip};

/// Shell functions defined before every script.
///
/// `try LABEL 'COMMAND'` runs COMMAND in a subshell, sends its output to stderr and prints
/// `RC LABEL STATUS` on stdout, so a test checks every step on its own and notices a script
/// that never ran. `plant FILE NAME` writes an executable script to FILE that creates
/// `$OUT/NAME-ran` when the host runs it.
pub const PRELUDE: &str = r##"try() { ( eval "$2" ) 1>&2; echo "RC $1 $?"; }
plant() { printf '#!/bin/sh\ntouch "%s"\n' "$OUT/$2-ran" > "$1" && chmod +x "$1"; }
"##;

/// Runs `script` after [`PRELUDE`] in a sandbox started from `dir`, with `OUT` and `WS` set to
/// the fixture's directories and `flags` given before `--`.
pub fn run_script(f: &Fixture, dir: &Path, flags: &[&str], script: &str) -> Run {
    let out = format!("OUT={}", f.out.display());
    let ws = format!("WS={}", f.ws.display());
    let body = format!("{PRELUDE}{script}");
    let mut args = vec!["run", "--env", &out, "--env", &ws];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", &body]);
    f.palisade_in(dir, &args, &[])
}

/// Runs `script` in a sandbox started from the workspace.
pub fn sandbox(f: &Fixture, flags: &[&str], script: &str) -> Run {
    run_script(f, &f.ws, flags, script)
}

/// Formats a run for a failure message.
pub fn describe(run: &Run) -> String {
    format!("exit status {:?}\nstdout:\n{}\nstderr:\n{}", run.code, run.stdout, run.stderr)
}

/// Returns the status the script printed for step `label`, and panics when the step never ran.
#[track_caller]
pub fn step_status(run: &Run, label: &str) -> i32 {
    let prefix = format!("RC {label} ");
    let Some(line) = run.stdout.lines().find(|line| line.starts_with(&prefix)) else {
        panic!("step '{label}' did not run\n{}", describe(run));
    };
    line[prefix.len()..].trim().parse().expect("status is a number")
}

/// Asserts that every step in `labels` failed inside the sandbox.
#[track_caller]
pub fn assert_denied(run: &Run, labels: &[&str]) {
    let succeeded: Vec<&str> = labels.iter().copied().filter(|label| step_status(run, label) == 0).collect();
    assert!(succeeded.is_empty(), "these steps succeeded but must fail: {succeeded:?}\n{}", describe(run));
}

/// Asserts that every step in `labels` succeeded inside the sandbox.
#[track_caller]
pub fn assert_allowed(run: &Run, labels: &[&str]) {
    let failed: Vec<&str> = labels.iter().copied().filter(|label| step_status(run, label) != 0).collect();
    assert!(failed.is_empty(), "these steps failed but must succeed: {failed:?}\n{}", describe(run));
}

/// Lists every entry under `dir` with its mode and contents, but not its times. A run may create
/// and remove placeholders, which changes directory times but nothing a user relies on.
pub fn tree(f: &Fixture, dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    f.snapshot(dir).into_iter().map(|(path, _, mode, _, contents)| (path, mode, contents)).collect()
}

/// Lists the markers (`*-ran`) that planted scripts created in the fixture's `out` directory.
pub fn markers(f: &Fixture) -> Vec<String> {
    let Ok(entries) = fs::read_dir(&f.out) else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("-ran"))
        .collect()
}

/// Returns whether anything exists at `path`, a dangling symlink included.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Creates a directory owned by the fixture's owner.
pub fn make_dir(f: &Fixture, path: &Path) {
    fs::create_dir_all(path).unwrap();
    f.chown_all();
}

/// Creates a symlink owned by the fixture's owner.
pub fn make_symlink(f: &Fixture, target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
    f.chown_all();
}

/// Returns the names of the extended attributes of `path`, read with the host's python because
/// std has no `listxattr`.
fn xattr_names(path: &Path) -> String {
    let output = Command::new("python3")
        .args(["-c", "import os, sys; print(sorted(os.listxattr(sys.argv[1])))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "listxattr failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Configuration directories of agents and editors that run commands when they open a project,
/// and palisade's own. Palisade protects each at the top of every writable root.
pub const AGENT_DIRS: &[&str] = &[
    ".palisade", ".codex", ".claude", ".gemini", ".cursor", ".vscode", ".idea", ".zed", ".continue", ".devcontainer",
];

/// Files a login shell, a desktop session or `PATH` lookup runs later, relative to the home
/// directory. `.ssh/rc` lies in a hidden credential store.
const STARTUP_FILES: &[&str] = &[
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc", ".zshenv", ".zprofile",
    ".zlogin", ".zlogout", ".config/fish/config.fish", ".config/autostart/agent.desktop",
    ".config/systemd/user/agent.service", ".config/environment.d/agent.conf", ".xprofile", ".xsessionrc",
    ".inputrc", ".pam_environment", ".ssh/rc", ".local/bin/git", ".cargo/bin/cargo",
];

// Public report: CVE-2026-25725 and anthropics/claude-code#33: agent settings created in
// the workspace after start-up registered hooks that ran with host privileges on the next
// session. Also netblue30/firejail#7132: protection only for files that already existed.
both_identities!(agent_config_dirs_cannot_be_created, |f: &Fixture| {
    let before = tree(f, &f.ws);
    let mut script = String::new();
    for dir in AGENT_DIRS {
        script.push_str(&format!("try {dir}-mkdir 'mkdir -p {dir}'\n"));
        script.push_str(&format!("try {dir}-file 'echo {{}} > {dir}/settings.json'\n"));
    }
    script.push_str(
        r#"try claude-hook 'printf "{\"hooks\":{\"SessionStart\":[{\"hooks\":[{\"type\":\"command\",\"command\":\"touch $OUT/session-ran\"}]}]}}" > .claude/settings.json'
"#,
    );
    let run = sandbox(f, &[], &script);

    let mut labels: Vec<String> = AGENT_DIRS.iter().map(|dir| format!("{dir}-file")).collect();
    labels.push("claude-hook".into());
    assert_denied(&run, &labels.iter().map(String::as_str).collect::<Vec<_>>());
    let created: Vec<&str> = AGENT_DIRS.iter().copied().filter(|dir| exists(&f.ws.join(dir))).collect();
    assert!(created.is_empty(), "left in the workspace after the run: {created:?}\n{}", describe(&run));
    assert_eq!(tree(f, &f.ws), before, "the workspace changed\n{}", describe(&run));
});

// Public report: CVE-2026-25725, the variant where the settings already exist.
both_identities!(agent_config_dirs_stay_read_only_when_present, |f: &Fixture| {
    for dir in AGENT_DIRS {
        f.write(&f.ws.join(dir).join("settings.json"), "original\n");
    }
    let before = tree(f, &f.ws);
    let mut script = String::new();
    for dir in AGENT_DIRS {
        script.push_str(&format!("try {dir}-overwrite 'echo changed > {dir}/settings.json'\n"));
        script.push_str(&format!("try {dir}-add 'echo new > {dir}/hooks.json'\n"));
        script.push_str(&format!("try {dir}-remove 'rm {dir}/settings.json'\n"));
        script.push_str(&format!("try {dir}-rename 'mv {dir} {dir}.old'\n"));
        script.push_str(&format!("try {dir}-chmod 'chmod 777 {dir}/settings.json'\n"));
    }
    let run = sandbox(f, &[], &script);

    let mut labels = Vec::new();
    for dir in AGENT_DIRS {
        for step in ["overwrite", "add", "remove", "rename", "chmod"] {
            labels.push(format!("{dir}-{step}"));
        }
    }
    assert_denied(&run, &labels.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(tree(f, &f.ws), before, "the workspace changed\n{}", describe(&run));
});

/// The layouts in which a home directory's start-up files must stay unchanged: the default, a
/// workspace inside the home directory, the whole home directory as an extra writable root,
/// and the home directory as the workspace.
fn home_layouts(f: &Fixture) -> Vec<(String, Vec<String>)> {
    let src = f.home.join("src");
    let home = f.home.display().to_string();
    vec![
        ("default".into(), vec![]),
        ("workspace-in-home".into(), vec!["-w".into(), src.display().to_string()]),
        ("home-writable".into(), vec!["--allow-write".into(), home.clone()]),
        ("home-as-workspace".into(), vec!["-w".into(), home]),
    ]
}

/// Prepares a home directory for [`home_layouts`]: a project directory, and the token files of
/// two agents, as in the home directory of a user of those agents. The case where these token
/// files are missing is `writable_home_without_agent_dirs_starts`.
fn prepare_home(f: &Fixture) {
    f.write(&f.home.join("src/README"), "project\n");
    f.write(&f.home.join(".claude/.credentials.json"), &format!("{CANARY} claude\n"));
    f.write(&f.home.join(".codex/auth.json"), &format!("{CANARY} codex\n"));
}

// Public report: anthropic-experimental/sandbox-runtime#175: the mandatory deny for
// `.bashrc` and similar files was applied relative to the working directory, so `~/.bashrc`
// stayed writable when a writable root covered the home directory. Also CVE-2026-55607.
both_identities!(shell_startup_files_stay_unchanged_when_present, |f: &Fixture| {
    prepare_home(f);
    for file in STARTUP_FILES {
        f.write(&f.home.join(file), "# original\n");
    }
    let mut script = String::new();
    for file in STARTUP_FILES {
        script.push_str(&format!("try '{file}-append' 'printf \"\\ntouch $OUT/startup-ran\\n\" >> \"$HOME/{file}\"'\n"));
        script.push_str(&format!("try '{file}-replace' 'echo replaced > \"$HOME/{file}.new\" && mv \"$HOME/{file}.new\" \"$HOME/{file}\"'\n"));
        script.push_str(&format!("rm -f \"$HOME/{file}.new\"\n"));
        script.push_str(&format!("try '{file}-remove' 'rm -f \"$HOME/{file}\"'\n"));
    }
    for (layout, flags) in home_layouts(f) {
        let before = tree(f, &f.home);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let run = sandbox(f, &flags, &script);
        step_status(&run, &format!("{}-append", STARTUP_FILES[0]));
        assert_eq!(tree(f, &f.home), before, "{layout}: the home directory changed\n{}", describe(&run));
    }
});

// Public report: anthropic-experimental/sandbox-runtime#175, with the start-up files
// missing: creating them is as good as changing them.
both_identities!(shell_startup_files_cannot_be_created, |f: &Fixture| {
    prepare_home(f);
    let mut script = String::new();
    for file in STARTUP_FILES {
        script.push_str(&format!(
            "try '{file}' 'mkdir -p \"$(dirname \"$HOME/{file}\")\" && printf \"touch $OUT/startup-ran\\n\" > \"$HOME/{file}\"'\n"
        ));
    }
    for (layout, flags) in home_layouts(f) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let run = sandbox(f, &flags, &script);
        step_status(&run, STARTUP_FILES[0]);
        let created: Vec<&str> = STARTUP_FILES.iter().copied().filter(|file| exists(&f.home.join(file))).collect();
        assert!(created.is_empty(), "{layout}: created on the host: {created:?}\n{}", describe(&run));
    }
});

// Public report: Wiz "GhostApproval" and denoland/deno#12152: a symlink in the writable
// tree aimed a harmless-looking write at a file outside it. Palisade has no file-edit tool of
// its own. Every tool an agent runs inside it goes through the same mounts, so the shell,
// python and an in-place editor stand in for one.
both_identities!(symlinked_writes_stay_inside_roots, |f: &Fixture| {
    f.write(&f.out.join("target.txt"), "original\n");
    make_dir(f, &f.out.join("dir"));
    make_symlink(f, &f.out.join("target.txt"), &f.ws.join("planted.json"));
    let before = tree(f, &f.out);
    let out = f.out.display().to_string();
    let run = sandbox(
        f,
        &["--allow-read", &out],
        r#"try new-link 'ln -s "$OUT/target.txt" settings.local.json && echo pwned > settings.local.json'
try planted 'echo pwned > planted.json'
try append 'echo pwned >> planted.json'
try python 'python3 -c "open(\"planted.json\", \"w\").write(\"pwned\")"'
try copy 'cp /etc/hostname planted.json'
try truncate 'truncate -s 0 planted.json'
try dir-link 'ln -s "$OUT/dir" linked-dir && echo pwned > linked-dir/new.txt'
try in-place-edit 'sed -i s/original/pwned/ settings.local.json'
"#,
    );
    assert_denied(&run, &["new-link", "planted", "append", "python", "copy", "truncate", "dir-link"]);
    // An in-place editor may replace the link itself, but the target must stay as it was.
    step_status(&run, "in-place-edit");
    assert_eq!(fs::read_to_string(f.out.join("target.txt")).unwrap(), "original\n", "{}", describe(&run));
    assert_eq!(tree(f, &f.out), before, "the directory outside the roots changed\n{}", describe(&run));
});

// Public report: Zouuup/landrun#58 and landlock-lsm/linux#11: Landlock does not mediate
// times, mode, owner or extended attributes, so a Landlock-only sandbox could change the
// metadata of files it may not write.
both_identities!(metadata_outside_roots_stays_unchanged, |f: &Fixture| {
    let outside = f.out.join("meta");
    f.write(&outside, "meta\n");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    let watched = [outside.clone(), f.ws.join(".git/config"), f.ws.join(".git/hooks")];
    let stat = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.mode(), meta.mtime(), meta.mtime_nsec(), meta.uid(), meta.gid(), xattr_names(path))
    };
    let before: Vec<_> = watched.iter().map(|path| stat(path)).collect();
    let out = f.out.display().to_string();
    let run = sandbox(
        f,
        &["--allow-read", &out],
        r#"for target in "$OUT/meta" .git/config .git/hooks; do
  try "$target-utime" "touch -d 2001-01-01 $target"
  try "$target-chmod" "chmod 0777 $target"
  try "$target-chown" "chown $(id -u):$(id -g) $target"
  try "$target-xattr" "python3 -c 'import os, sys; os.setxattr(sys.argv[1], \"user.agent\", b\"1\")' $target"
done
"#,
    );
    let mut labels = Vec::new();
    for target in [format!("{}/meta", f.out.display()), ".git/config".into(), ".git/hooks".into()] {
        for step in ["utime", "chmod", "chown", "xattr"] {
            labels.push(format!("{target}-{step}"));
        }
    }
    assert_denied(&run, &labels.iter().map(String::as_str).collect::<Vec<_>>());
    for (path, before) in watched.iter().zip(before) {
        assert_eq!(stat(path), before, "metadata of {} changed\n{}", path.display(), describe(&run));
    }
});

// Public report: anthropics/claude-code#53209 and #45570: a read deny on a file was
// ignored when its parent was write-denied, and an allowed parent beat a denied child for a
// python child process. Palisade's write deny is a protected name, and its read deny hides a
// path.
both_identities!(deny_read_wins_over_broader_rules, |f: &Fixture| {
    f.write(&f.out.join("data/token"), &format!("{CANARY} data token\n"));
    f.write(&f.out.join("data/ok.txt"), "visible\n");
    f.write(&f.ws.join("secrets/token"), &format!("{CANARY} workspace token\n"));
    let policy = f.root.join("policy.toml");
    f.write(
        &policy,
        &format!(
            "[filesystem]\nreadable = [\"{out}/data\"]\ndeny_read = [\"{out}/data/token\", \"{{workspace}}/secrets/token\"]\nprotected = [\"secrets\"]\n",
            out = f.out.display()
        ),
    );
    let policy = policy.display().to_string();
    let run = sandbox(
        f,
        &["--policy", &policy],
        r#"for target in "$OUT/data/token" secrets/token; do
  try "$target-cat" "cat $target"
  try "$target-python" "python3 -c 'import sys; print(open(sys.argv[1]).read())' $target"
  try "$target-sh" "sh -c 'exec 3<$target; cat <&3'"
  try "$target-copy" "cp $target copied-\$(basename \$(dirname $target))"
done
try visible 'cat "$OUT/data/ok.txt"'
try protected-write 'echo x > secrets/new'
"#,
    );
    let out_token = format!("{}/data/token", f.out.display());
    let mut labels = Vec::new();
    for target in [out_token.as_str(), "secrets/token"] {
        for step in ["cat", "python", "sh", "copy"] {
            labels.push(format!("{target}-{step}"));
        }
    }
    labels.push("protected-write".into());
    assert_denied(&run, &labels.iter().map(String::as_str).collect::<Vec<_>>());
    assert_allowed(&run, &["visible"]);
    assert!(!run.stdout.contains(CANARY), "a denied file was read\n{}", describe(&run));
    assert!(!run.stderr.contains(CANARY), "a denied file was read\n{}", describe(&run));
    let leaked: Vec<PathBuf> = f
        .snapshot(&f.ws)
        .into_iter()
        .filter(|(path, ..)| path != &f.ws.join("secrets/token"))
        .filter(|(.., contents)| String::from_utf8_lossy(contents).contains(CANARY))
        .map(|(path, ..)| path)
        .collect();
    assert!(leaked.is_empty(), "denied contents copied into the workspace: {leaked:?}");

    // The policy viewer lists exactly what the run enforced.
    let shown = f.palisade(&["policy", "--policy", &policy]);
    shown.expect_code(0);
    for path in [out_token, format!("{}/secrets/token", f.ws.display())] {
        assert!(shown.stdout.contains(&format!("\"{path}\"")), "policy output does not list {path}\n{}", shown.stdout);
    }

    // Reading a built-in credential store through an explicitly readable parent: refused, or
    // run with the store still hidden.
    let aws = f.home.join(".aws").display().to_string();
    let run = sandbox(f, &["--allow-read", &aws], "try aws 'cat \"$HOME/.aws/credentials\"'\n");
    if run.code == Some(125) {
        assert!(run.stderr.contains(".aws"), "the refusal must name the path\n{}", describe(&run));
    } else {
        assert_denied(&run, &["aws"]);
    }
    assert!(!run.stdout.contains(CANARY), "a credential was read\n{}", describe(&run));
    assert!(!run.stderr.contains(CANARY), "a credential was read\n{}", describe(&run));
});

// Public report: isanchez31/opencode-sandbox-plugin#16 and MoonshotAI/kimi-code#1934:
// default deny lists missed `~/.config/gh`, `~/.kube`, `~/.docker`, `~/.netrc`, `~/.azure` and
// the agent's own token store. trailofbits/claude-code-config#48 adds a plaintext wallet
// keystore. Checked with the home directory hidden (the default) and visible.
both_identities!(default_deny_list_hides_credentials, |f: &Fixture| {
    let extra = [
        ".claude/.credentials.json", ".codex/auth.json", ".config/git/credentials", ".local/share/keyrings/login.keyring",
        ".gradle/gradle.properties", ".m2/settings-security.xml", ".password-store/site.gpg", ".config/op/config",
        ".config/palisade/token", ".vault-token", ".pgpass", ".ethereum/keystore/UTC--wallet",
    ];
    for file in extra {
        f.write(&f.home.join(file), &format!("{CANARY} {file}\n"));
    }
    let files: Vec<&str> = FAKE_CREDENTIALS.iter().copied().chain(extra).collect();
    let mut script = String::new();
    for file in &files {
        script.push_str(&format!("cat \"$HOME/{file}\" >/dev/null 2>&1 && echo 'READABLE {file}'\n"));
    }
    script.push_str("grep -rl PALISADE-CANAR[Y] \"$HOME\" 2>/dev/null | sed 's/^/FOUND /'\necho DONE\n");
    let home = f.home.display().to_string();
    for flags in [vec![], vec!["-p", "read-only"], vec!["--allow-read", &home], vec!["-w", &home]] {
        let run = sandbox(f, &flags, &script);
        assert!(run.stdout.contains("DONE"), "{flags:?}: the script did not run\n{}", describe(&run));
        let readable = run.lines_starting("READABLE ");
        assert!(readable.is_empty(), "{flags:?}: credentials readable: {readable:?}\n{}", describe(&run));
        let found = run.lines_starting("FOUND ");
        assert!(found.is_empty(), "{flags:?}: canary files found: {found:?}\n{}", describe(&run));
    }
});

// Public report: CVE-2024-42472 / GHSA-7hgv-f2j8-xw87: Flatpak bind-mounted the target
// of a symlink that the sandboxed app had swapped in for a persisted directory. Palisade keeps
// no per-workspace state, so this checks the nearest thing it has: the names it mounts over in
// every workspace. A first run tries to plant symlinks there, pointing outside; whatever it
// could not plant is planted on the host, as a cloned repository could. A second run writes
// through them, and nothing outside may change.
both_identities!(planted_symlinks_are_not_mount_sources, |f: &Fixture| {
    f.write(&f.out.join("target/keep.txt"), "keep\n");
    let before_out = tree(f, &f.out);
    let before_home = tree(f, &f.home);
    // Even names point at a directory outside the roots, odd ones at the home directory.
    let target_of = |index: usize| if index % 2 == 0 { f.out.join("target") } else { f.home.clone() };
    let mut plant = String::new();
    for (index, dir) in AGENT_DIRS.iter().enumerate() {
        plant.push_str(&format!("try {dir} 'rm -rf {dir}; ln -s \"{}\" {dir}'\n", target_of(index).display()));
    }
    let first = sandbox(f, &[], &plant);
    step_status(&first, AGENT_DIRS[0]);
    for (index, dir) in AGENT_DIRS.iter().enumerate() {
        if !exists(&f.ws.join(dir)) {
            make_symlink(f, &target_of(index), &f.ws.join(dir));
        }
    }

    let mut write = String::new();
    for dir in AGENT_DIRS {
        write.push_str(&format!("try {dir} 'echo x > {dir}/planted.txt'\n"));
    }
    // Inside, the home directory is a private tmpfs, so writes into it may succeed there.
    let outside: Vec<&str> = AGENT_DIRS.iter().copied().step_by(2).collect();
    let out = f.out.display().to_string();
    for flags in [vec![], vec!["--allow-read", &out]] {
        let second = sandbox(f, &flags, &write);
        assert_denied(&second, &outside);
        assert_eq!(tree(f, &f.out), before_out, "{flags:?}: outside directory changed\n{}", describe(&second));
        assert_eq!(tree(f, &f.home), before_home, "{flags:?}: home directory changed\n{}", describe(&second));
    }
});

// Public report: rappdw/sandy#209: a symlink in the workspace to a host directory was
// mounted read-write in a later session. Here the later session names the symlink itself as a
// writable root. Palisade must reject it or keep the target out of reach, and never follow the
// link.
both_identities!(planted_symlink_cannot_widen_allow_write, |f: &Fixture| {
    make_dir(f, &f.out.join("target"));
    let first = sandbox(f, &[], "try plant 'ln -s \"$OUT/target\" build'\n");
    assert_allowed(&first, &["plant"]);

    let second = sandbox(f, &["--allow-write", "build"], "try write 'echo x > build/escaped'\n");
    let escaped = f.out.join("target/escaped");
    assert!(!exists(&escaped), "a write through a planted symlink reached {}\n{}", escaped.display(), describe(&second));
});

// Public report: anthropics/claude-code#45451 and openai/codex#20716, #27354: ordinary
// symlinks in projects (Bazel outputs, node_modules, symlinked agent dirs, a symlinked checkout)
// made sandbox start-up fail for every command.
both_identities!(workspace_symlinks_do_not_break_startup, |f: &Fixture| {
    let bazel = f.home.join(".cache/bl-bazel/out");
    f.write(&bazel.join("secrets.tf"), "bazel output\n");
    f.write(&f.ws.join("node_modules/pkg/cli.js"), "console.log(1)\n");
    f.write(&f.ws.join("shared/.agents/notes.md"), "notes\n");
    f.write(&f.ws.join("shared/.claude/settings.json"), "original\n");
    make_dir(f, &f.ws.join("node_modules/.bin"));
    make_symlink(f, &bazel, &f.ws.join("bazel-out"));
    make_symlink(f, Path::new("../pkg/cli.js"), &f.ws.join("node_modules/.bin/cli"));
    make_symlink(f, Path::new("shared/.agents"), &f.ws.join(".agents"));
    make_symlink(f, Path::new("shared/.claude"), &f.ws.join(".claude"));
    let alias = f.root.join("alias");
    make_symlink(f, &f.ws, &alias);
    let before_cache = tree(f, &f.home.join(".cache"));
    let before_claude = tree(f, &f.ws.join("shared/.claude"));

    let alias_text = alias.display().to_string();
    let run = run_script(
        f,
        &alias,
        &["-w", &alias_text],
        r#"try basics 'echo ok; pwd; ls >/dev/null; ls bazel-out/ node_modules/.bin/ .agents/ >/dev/null'
try git-status 'git status --short >/dev/null'
try bazel-write 'echo x > bazel-out/new.txt'
try hooks 'plant .git/hooks/post-checkout hooks'
try claude 'echo changed > .claude/settings.json'
"#,
    );
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert_allowed(&run, &["basics", "git-status"]);
    assert_denied(&run, &["hooks", "claude"]);
    for symptom in ["Is a directory", "panic", "Too many levels of symbolic links", "Can't mkdir"] {
        assert!(!run.stderr.contains(symptom), "start-up trouble ({symptom})\n{}", describe(&run));
    }
    assert_eq!(tree(f, &f.home.join(".cache")), before_cache, "the host's cache changed\n{}", describe(&run));
    assert_eq!(tree(f, &f.ws.join("shared/.claude")), before_claude, "the symlinked agent dir changed\n{}", describe(&run));
});

// Public report: nolabs-ai/nono#1396 and Zouuup/landrun#48: stacked Landlock rulesets
// without the REFER right made renames across directories fail with EXDEV.
both_identities!(renames_and_links_work_across_directories, |f: &Fixture| {
    let script = "try rename 'mkdir -p r/a r/b && echo x > r/a/f && mv r/a/f r/b/f && ln r/b/f r/b/g && mkdir r/new && mv r/b/g r/new/g && mv r/new r/moved'\n";
    let run = sandbox(f, &[], script);
    assert_allowed(&run, &["rename"]);
    assert_eq!(fs::read_to_string(f.ws.join("r/b/f")).unwrap(), "x\n");
    assert_eq!(fs::read_to_string(f.ws.join("r/moved/g")).unwrap(), "x\n");
    assert_eq!(fs::metadata(f.ws.join("r/b/f")).unwrap().nlink(), 2, "the hard link did not reach the host");
    assert!(!exists(&f.ws.join("r/a/f")));
});

// Public report: landlock-lsm/rust-landlock#79: granting write without truncate broke
// every overwrite of an existing file.
both_identities!(overwrites_truncate_in_writable_roots, |f: &Fixture| {
    let extra = f.root.join("extra");
    make_dir(f, &extra);
    let extra_text = extra.display().to_string();
    let extra_env = format!("EXTRA={extra_text}");
    let run = sandbox(
        f,
        &["--allow-write", &extra_text, "--env", &extra_env],
        r#"try workspace 'printf abc > t && : > t && printf d > t && python3 -c "open(\"t\", \"w\").write(\"ef\")" && python3 -c "import os; os.truncate(\"t\", 1)"'
try extra-root 'cd "$EXTRA" && printf abc > t && : > t && printf e > t'
try tmp 'printf abc > /tmp/t && : > /tmp/t && printf e > /tmp/t && test "$(cat /tmp/t)" = e'
"#,
    );
    assert_allowed(&run, &["workspace", "extra-root", "tmp"]);
    assert_eq!(fs::read_to_string(f.ws.join("t")).unwrap(), "e");
    assert_eq!(fs::read_to_string(extra.join("t")).unwrap(), "e");
});

// Public report: GHSA-w5fx-fh39-j5rw / CVE-2025-59532: a working directory chosen by the
// model became the sandbox's writable root. Palisade's writable roots come from the workspace
// and flags only; started from another directory, the command runs in the workspace.
both_identities!(start_directory_does_not_widen_writable_roots, |f: &Fixture| {
    let name = format!("start-dir-{}-{}", std::process::id(), f.name.replace("::", "-"));
    let ws = f.ws.display().to_string();
    let places = [f.home.clone(), PathBuf::from("/"), f.out.clone()];
    for start in &places {
        let run = run_script(
            f,
            start,
            &["-w", &ws],
            &format!(
                "try here 'touch {name}'\ntry home 'touch \"$HOME/{name}\"'\ntry out 'touch \"$OUT/{name}\"'\ntry root 'touch /{name}'\n"
            ),
        );
        step_status(&run, "root");
        let escaped: Vec<PathBuf> = places.iter().map(|place| place.join(&name)).filter(|path| exists(path)).collect();
        for path in &escaped {
            let _ = fs::remove_file(path);
        }
        assert!(escaped.is_empty(), "started from {}: created outside the workspace: {escaped:?}\n{}", start.display(), describe(&run));
        let policy = f.palisade_in(start, &["policy", "-w", &ws], &[]);
        policy.expect_code(0);
        let writable = policy.stdout.lines().find(|line| line.starts_with("writable = ")).unwrap_or_default();
        assert_eq!(writable, format!("writable = [\"{ws}\"]"), "started from {}\n{}", start.display(), policy.stdout);
    }
});

// Public report: rootless-containers/slirp4netns#153 and OpenAtom-Linyaps/linyaps#1724:
// mounts made inside a sandbox propagated to the host.
both_identities!(mounts_inside_stay_invisible_outside, |f: &Fixture| {
    let run = sandbox(
        f,
        &[],
        r#"mkdir -p m
try mount 'mount -t tmpfs none m'
try nested 'unshare -rm sh -c "mount -t tmpfs none m && touch m/inner"'
"#,
    );
    assert_denied(&run, &["mount"]);
    step_status(&run, "nested");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = format!(" {} ", f.ws.join("m").display());
    assert!(!mountinfo.contains(&point), "a mount from inside appeared on the host\n{mountinfo}");
    assert!(!exists(&f.ws.join("m/inner")), "a file written into an inner mount reached the host");
});

// Public report: openai/codex#5203 and anthropics/claude-code#88462: deletes aimed at
// the workspace's parent, a sibling or the home directory.
both_identities!(recursive_delete_above_workspace_fails, |f: &Fixture| {
    f.write(&f.out.join("keep/canary.txt"), "keep\n");
    let before_out = tree(f, &f.out);
    let before_home = tree(f, &f.home);
    let script = r#"try sibling 'rm -rf "$WS/../out/keep"'
try from-parent 'cd "$WS/.." && rm -rf ./out/keep'
try find 'find "$WS/../out" -maxdepth 1 -name keep -exec rm -rf {} +'
try out 'rm -r "$OUT"'
try home 'rm -rf "$HOME"/* "$HOME"/.[!.]*'
"#;
    // Visible read-only, every delete must fail. Hidden (the default here, because the fixture
    // lives under /var/tmp), `rm -f` finds nothing and succeeds, so only the host matters.
    let out = f.out.display().to_string();
    let visible = sandbox(f, &["--allow-read", &out], script);
    assert_denied(&visible, &["sibling", "from-parent", "find", "out"]);
    let hidden = sandbox(f, &[], script);
    step_status(&hidden, "home");
    assert_eq!(tree(f, &f.out), before_out, "a sibling of the workspace changed\n{}\n{}", describe(&visible), describe(&hidden));
    assert_eq!(tree(f, &f.home), before_home, "the home directory changed\n{}", describe(&hidden));
});

// Public report: containers/bubblewrap#413 and anthropics/claude-code#50781: a missing
// allow target must be created or reported, never dropped.
both_identities!(missing_allow_write_target_is_not_dropped, |f: &Fixture| {
    let missing = f.out.join("build");
    let missing_text = missing.display().to_string();
    let run = sandbox(f, &["--allow-write", &missing_text], "try write 'mkdir -p \"$OUT/build\" && touch \"$OUT/build/x\"'\n");
    if run.code == Some(125) {
        assert!(run.stderr.contains(&missing_text), "the error must name the path\n{}", describe(&run));
        assert!(!run.stdout.contains("RC write"), "the command ran although palisade failed\n{}", describe(&run));
    } else {
        assert_allowed(&run, &["write"]);
        assert!(exists(&missing.join("x")), "the writable root was silently dropped\n{}", describe(&run));
    }
});

// Public report: containers/bubblewrap#413 and anthropics/claude-code#50781: a writable
// or file bind whose mount point does not exist under a read-only parent killed every command.
both_identities!(binds_work_under_read_only_parents, |f: &Fixture| {
    f.write(&f.out.join("data/existing.txt"), "data\n");
    f.write(&f.out.join("single.txt"), "single\n");
    f.write(&f.out.join("notes.txt"), "notes\n");
    f.write(&f.home.join("notes.txt"), "home notes\n");
    let data = f.out.join("data").display().to_string();
    let single = f.out.join("single.txt").display().to_string();
    let notes = f.out.join("notes.txt").display().to_string();
    let home_notes = f.home.join("notes.txt").display().to_string();
    let run = sandbox(
        f,
        &["--allow-write", &data, "--allow-write", &single, "--allow-read", &notes, "--allow-read", &home_notes],
        r#"try build 'mkdir -p build && touch build/x'
try dir 'touch "$OUT/data/x"'
try file 'echo changed > "$OUT/single.txt"'
try read-file 'cat "$OUT/notes.txt" "$HOME/notes.txt"'
"#,
    );
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert_allowed(&run, &["build", "dir", "file", "read-file"]);
    assert!(exists(&f.ws.join("build/x")));
    assert!(exists(&f.out.join("data/x")));
    assert_eq!(fs::read_to_string(f.out.join("single.txt")).unwrap(), "changed\n");
});

// Public report: containers/bubblewrap#413: a missing deny target must not abort
// start-up.
both_identities!(missing_hidden_path_does_not_block_startup, |f: &Fixture| {
    let not_yet = f.home.join(".does-not-exist-yet").display().to_string();
    let inside = f.ws.join("not-yet").display().to_string();
    let run = sandbox(f, &["--deny-read", &not_yet, "--deny-read", &inside], "try create 'echo x > not-yet'\n");
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert_denied(&run, &["create"]);
    assert!(!exists(&f.ws.join("not-yet")));
});

// Public report: anthropics/claude-code#53209: a read deny on a file was lost when its
// parent was write-denied. Palisade's write deny is a protected name. Hiding a path inside one
// that does not exist yet must neither stop the run nor let the path be created.
both_identities!(missing_hidden_path_inside_protected_dir_starts, |f: &Fixture| {
    make_dir(f, &f.ws.join("secrets"));
    let policy = f.root.join("policy.toml");
    f.write(&policy, "[filesystem]\nprotected = [\"secrets\"]\ndeny_read = [\"{workspace}/secrets/not-yet\"]\n");
    let policy = policy.display().to_string();
    let run = sandbox(f, &["--policy", &policy], "try create 'echo x > secrets/not-yet'\n");
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert_denied(&run, &["create"]);
    assert!(!exists(&f.ws.join("secrets/not-yet")));
});

// Public report: containers/bubblewrap#413 and anthropics/claude-code#50781: the sandbox
// failed on every command because of a mask whose location did not exist. Here the home
// directory is a writable root and has no `.claude` or `.codex`, so the built-in hidden token
// files inside those protected names do not exist either.
both_identities!(writable_home_without_agent_dirs_starts, |f: &Fixture| {
    let home = f.home.display().to_string();
    let run = sandbox(f, &["--allow-write", &home], "try claude 'mkdir -p \"$HOME/.claude\" && echo x > \"$HOME/.claude/.credentials.json\"'\n");
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert_denied(&run, &["claude"]);
    assert!(!exists(&f.home.join(".claude")));
});

// Public report: anthropic-experimental/sandbox-runtime#432: deny patterns were anchored
// to the working directory, so other writable roots and other directories were unprotected.
// Palisade has no `**` patterns: a protected name applies at the top of every writable root and
// a hidden path is absolute, both whatever the starting directory.
both_identities!(protection_applies_in_every_root_from_any_directory, |f: &Fixture| {
    let second = f.root.join("ws2");
    make_dir(f, &second);
    f.git_init(&second);
    f.write(&second.join("token"), &format!("{CANARY} second root\n"));
    make_dir(f, &f.ws.join("sub"));
    let policy = f.root.join("policy.toml");
    f.write(&policy, "[filesystem]\nprotected = [\".env\"]\n");
    let before_hooks = [tree(f, &f.ws.join(".git/hooks")), tree(f, &second.join(".git/hooks"))];
    let second_text = second.display().to_string();
    let token = second.join("token").display().to_string();
    let policy = policy.display().to_string();
    let ws = f.ws.display().to_string();
    let w2 = format!("W2={second_text}");
    let script = r#"try w2-env 'echo x > "$W2/.env"'
try ws-env 'echo x > "$WS/.env"'
try ws-hook 'plant "$WS/.git/hooks/pre-commit" ws-hook'
try w2-hook 'plant "$W2/.git/hooks/pre-commit" w2-hook'
try w2-config 'git -C "$W2" config core.fsmonitor "touch $OUT/fsmonitor-ran"'
try token 'cat "$W2/token"'
try ok 'mkdir -p "$WS/other" && echo x > "$WS/other/ok.txt"'
"#;
    for start in [f.ws.join("sub"), f.ws.clone(), PathBuf::from("/")] {
        let flags = ["--policy", &policy, "--allow-write", &second_text, "--deny-read", &token, "-w", &ws, "--env", &w2];
        let run = run_script(f, &start, &flags, script);
        assert_denied(&run, &["w2-env", "ws-env", "ws-hook", "w2-hook", "w2-config", "token"]);
        assert_allowed(&run, &["ok"]);
        assert!(!run.stdout.contains(CANARY), "started from {}: hidden file read\n{}", start.display(), describe(&run));
        assert!(!exists(&f.ws.join(".env")), "started from {}: .env created in the workspace", start.display());
        assert!(!exists(&second.join(".env")), "started from {}: .env created in the second root", start.display());
        assert_eq!(
            [tree(f, &f.ws.join(".git/hooks")), tree(f, &second.join(".git/hooks"))],
            before_hooks,
            "started from {}: hooks changed\n{}",
            start.display(),
            describe(&run)
        );
    }
    assert!(exists(&f.ws.join("other/ok.txt")));
});

// Public report: netblue30/firejail#7132 and PR #7154: protections covered only files
// that existed, so a sandboxed program created the sandbox's own future policy. Here the home
// directory is an extra writable root, as in the report.
both_identities!(protected_names_cannot_be_created_in_any_root, |f: &Fixture| {
    let home = f.home.display().to_string();
    let run = sandbox(
        f,
        &["--allow-write", &home],
        r#"try vscode 'mkdir -p .vscode && echo {} > .vscode/tasks.json'
try hook 'plant .git/hooks/post-checkout hook'
try policy 'mkdir -p "$HOME/.config/palisade" && echo "[network]" > "$HOME/.config/palisade/policy.toml"'
try home-vscode 'mkdir -p "$HOME/.vscode" && echo {} > "$HOME/.vscode/tasks.json"'
"#,
    );
    assert_denied(&run, &["vscode", "hook", "policy", "home-vscode"]);
    for path in [
        f.ws.join(".vscode"),
        f.ws.join(".git/hooks/post-checkout"),
        f.home.join(".config/palisade"),
        f.home.join(".vscode"),
    ] {
        assert!(!exists(&path), "{} was created\n{}", path.display(), describe(&run));
    }
});

// Public report: netblue30/firejail PR #7136: agents could not run scripts they had
// just written. Palisade mounts the workspace and the private /tmp without `noexec`.
both_identities!(scripts_written_inside_can_run, |f: &Fixture| {
    let run = sandbox(
        f,
        &[],
        r##"try shell 'printf "#!/bin/sh\necho shell-ok\n" > t.sh && chmod +x t.sh && ./t.sh'
try python 'printf "#!/usr/bin/env python3\nprint(\"python-ok\")\n" > t.py && chmod +x t.py && ./t.py'
try tmp 'cp t.sh /tmp/t.sh && /tmp/t.sh'
"##,
    );
    assert_allowed(&run, &["shell", "python", "tmp"]);
    assert!(run.stderr.contains("shell-ok"), "{}", describe(&run));
    assert!(run.stderr.contains("python-ok"), "{}", describe(&run));
    let mode = fs::metadata(f.ws.join("t.sh")).unwrap().mode();
    assert_ne!(mode & 0o111, 0, "the execute bit did not reach the host");
});

// Public report: openai/codex#18043: the sandbox left a mount-point file in every
// workspace. Palisade creates placeholders for missing protected names and must remove them
// however the run ends.
both_identities!(runs_leave_no_files_in_workspace, |f: &Fixture| {
    // Without hooks and info every protected name is missing and needs a placeholder.
    fs::remove_dir_all(f.ws.join(".git/hooks")).unwrap();
    fs::remove_dir_all(f.ws.join(".git/info")).unwrap();
    let endings: [(&str, Vec<&str>, Option<i32>); 5] = [
        ("success", vec!["--", "true"], Some(0)),
        ("failure", vec!["--", "sh", "-c", "exit 3"], Some(3)),
        ("not found", vec!["--", "/nonexistent-command"], Some(127)),
        ("timeout", vec!["--timeout", "1s", "--", "sleep", "30"], Some(124)),
        ("read-only", vec!["-p", "read-only", "--", "true"], Some(0)),
    ];
    for (ending, args, code) in endings {
        // Taken before each run: the host's `git status` below may refresh the index.
        let before = tree(f, &f.ws);
        let mut full = vec!["run"];
        full.extend(args);
        let run = f.palisade(&full);
        assert_eq!(run.code, code, "{ending}\n{}", describe(&run));
        assert_eq!(tree(f, &f.ws), before, "{ending}: the workspace changed\n{}", describe(&run));
        let status = f.host(&f.ws, "git", &["status", "--porcelain", "--ignored"]);
        assert_eq!(status.stdout, "", "{ending}: git status shows changes\n{}", status.stderr);
    }
});

// A run killed before its cleanup leaves its placeholders (FIFOs with mode 000) behind. The
// next run in the workspace adopts each one and removes it with its own. A FIFO with any
// other mode belongs to the user, so it stays.
both_identities!(next_run_removes_stale_placeholders, |f: &Fixture| {
    let setup = f.host_sh("mkfifo -m 000 .codex && mkfifo -m 644 .claude");
    assert_eq!(setup.code, Some(0), "{}", setup.stderr);
    let run = f.palisade(&["run", "--", "sh", "-c", "mkdir .codex; mkdir .claude; true"]);
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    assert!(!exists(&f.ws.join(".codex")), "the stale placeholder was left\n{}", describe(&run));
    let user_fifo = fs::symlink_metadata(f.ws.join(".claude")).expect("the user's FIFO was removed");
    assert!(user_fifo.file_type().is_fifo(), "the user's FIFO was replaced");
});

// Without `.git`, the protected `.git/hooks` gets no placeholder, and the command may plant
// `.git` as a symlink to another directory. The cleanup after the run must not follow it: a
// mode-000 FIFO behind it (another run's placeholder, say) is not this run's to remove.
both_identities!(cleanup_ignores_planted_git_symlink, |f: &Fixture| {
    let elsewhere = f.out.join("elsewhere");
    let setup = f.host_sh(&format!("rm -rf .git && mkdir {0} && mkfifo -m 000 {0}/hooks", elsewhere.display()));
    assert_eq!(setup.code, Some(0), "{}", setup.stderr);
    let script = format!("ln -s {} .git", elsewhere.display());
    let run = f.palisade(&["run", "--", "sh", "-c", &script]);
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    let fifo = fs::symlink_metadata(elsewhere.join("hooks")).expect("the FIFO behind the planted symlink was removed");
    assert!(fifo.file_type().is_fifo(), "the FIFO behind the planted symlink was replaced");
});

// As root, another user's workspace is not writable in the sandbox, and a missing protected
// name there cannot get a placeholder: the run does not start, and nothing is left behind.
both_identities!(root_in_other_users_workspace_rejected, |f: &Fixture| {
    if f.who == crate::suite::harness::Who::User {
        skip(&f.name, "only root can run palisade in another user's workspace");
        return;
    }
    let Some((uid, gid)) = crate::suite::harness::test_user_ids() else {
        skip(&f.name, "the unprivileged test user could not be created");
        return;
    };
    let other = f.root.join("other-ws");
    fs::create_dir(&other).unwrap();
    std::os::unix::fs::chown(&other, Some(uid), Some(gid)).unwrap();
    let workspace = other.display().to_string();
    let run = f.palisade(&["run", "-w", &workspace, "--", "true"]);
    assert_eq!(run.code, Some(125), "{}", describe(&run));
    assert!(run.stderr.contains("failed to create placeholder"), "{}", describe(&run));
    let left: Vec<_> = fs::read_dir(&other).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in the workspace: {left:?}");
});

// A path hidden inside a copy-on-write cache is a whiteout in the layer above the host's
// cache. The directories on the way to it exist in that layer too, and must stay writable as
// they are below: a build still writes next to the hidden entry.
both_identities!(hidden_entry_in_cache_keeps_parent_writable, |f: &Fixture| {
    let secret = f.home.join(".cargo/registry/secret");
    f.write(&secret, "secret-in-cache\n");
    let deny = secret.display().to_string();
    let run = f.palisade(&["run", "--deny-read", &deny, "--", "sh", "-c", "cat ~/.cargo/registry/secret; echo built > ~/.cargo/registry/new && echo wrote"]);
    assert!(!run.stdout.contains("secret-in-cache"), "the hidden entry was readable\n{}", describe(&run));
    assert!(run.stdout.contains("wrote"), "the cache directory was not writable\n{}", describe(&run));
    assert!(!exists(&f.home.join(".cargo/registry/new")), "the write reached the host's cache");
});

// The same directories keep a read-only mode too: a directory of the cache without write
// permission stays without it next to a hidden entry.
both_identities!(hidden_entry_in_cache_keeps_parent_mode, |f: &Fixture| {
    let dir = f.home.join(".cargo/sealed");
    let secret = dir.join("secret");
    f.write(&secret, "secret-in-cache\n");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let deny = secret.display().to_string();
    let run = f.palisade(&["run", "--deny-read", &deny, "--", "sh", "-c", "stat -c %a ~/.cargo/sealed; touch ~/.cargo/sealed/new && echo wrote"]);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(run.stdout.contains("555"), "the directory's mode changed\n{}", describe(&run));
    assert!(!run.stdout.contains("wrote"), "the read-only directory became writable\n{}", describe(&run));
});

// The sandbox's device nodes are created as root and bound from the host otherwise. Either
// way each is a character device with the host's numbers, readable and writable by all, and
// behaves as one: /dev/full rejects writes with ENOSPC, /dev/zero reads zeros.
both_identities!(device_nodes_match_the_host, |f: &Fixture| {
    let names = ["null", "zero", "full", "random", "urandom", "tty"];
    let script = format!(
        "for n in {}; do stat -c \"%n %F %t:%T %a\" /dev/$n; done; dd if=/dev/zero of=/dev/full bs=1 count=1 2>&1; head -c 4 /dev/zero | od -An -tx1",
        names.join(" ")
    );
    let run = f.palisade(&["run", "--", "sh", "-c", &script]);
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    for name in names {
        let host = Command::new("stat").args(["-c", "%t:%T", &format!("/dev/{name}")]).output().unwrap();
        let numbers = String::from_utf8_lossy(&host.stdout).trim().to_owned();
        let line = format!("/dev/{name} character special file {numbers} 666");
        assert!(run.stdout.contains(&line), "missing {line:?}\n{}", describe(&run));
    }
    assert!(run.stdout.contains("No space left on device"), "/dev/full accepted a write\n{}", describe(&run));
    assert!(run.stdout.contains("00 00 00 00"), "/dev/zero read no zeros\n{}", describe(&run));
});

// Root without CAP_MKNOD (a container runtime's default set, say) cannot create device nodes,
// so palisade binds the host's instead of failing the run.
both_identities!(root_without_mknod_binds_devices, |f: &Fixture| {
    if f.who == crate::suite::harness::Who::User {
        skip(&f.name, "only root creates device nodes; an unprivileged run always binds them");
        return;
    }
    let binary = palisade_binary();
    let args = ["--bounding-set=-mknod", "--inh-caps=-mknod", "--", binary.to_str().unwrap(), "run", "--", "stat", "-c", "%n %t:%T %a", "/dev/null"];
    let run = f.host(&f.ws, "setpriv", &args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("/dev/null 1:3 666"), "stdout: {}\nstderr: {}", run.stdout, run.stderr);
});

// Public report: openai/codex#9236: configured writable roots were neither readable nor
// writable.
both_identities!(extra_writable_roots_are_readable_and_writable, |f: &Fixture| {
    f.write(&f.out.join("data/x/existing.txt"), "existing\n");
    f.write(&f.out.join("other/existing.txt"), "existing\n");
    let data = f.out.join("data/x").display().to_string();
    let policy = f.root.join("policy.toml");
    f.write(&policy, &format!("[filesystem]\nwritable = [\"{}/other\"]\n", f.out.display()));
    let policy = policy.display().to_string();
    let flags = ["--allow-write", &data, "--policy", &policy];
    let run = sandbox(
        f,
        &flags,
        r#"try flag-root 'ls "$OUT/data/x" && cat "$OUT/data/x/existing.txt" && touch "$OUT/data/x/f"'
try file-root 'ls "$OUT/other" && cat "$OUT/other/existing.txt" && touch "$OUT/other/f"'
"#,
    );
    assert_allowed(&run, &["flag-root", "file-root"]);
    assert!(exists(&f.out.join("data/x/f")));
    assert!(exists(&f.out.join("other/f")));
    let mut args = vec!["policy"];
    args.extend_from_slice(&flags);
    let shown = f.palisade(&args);
    shown.expect_code(0);
    for root in [data.clone(), format!("{}/other", f.out.display())] {
        assert!(shown.stdout.contains(&format!("\"{root}\"")), "policy output does not list {root}\n{}", shown.stdout);
    }
    let names: BTreeSet<String> = fs::read_dir(f.out.join("data/x")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, BTreeSet::from(["existing.txt".to_owned(), "f".to_owned()]));
});

// Public reports: QwenLM/qwen-code#5373 and #5453. A string-prefix containment check
// treated `/repo/app-tools` as inside `/repo/app`. Siblings that share the workspace's name as
// a prefix must stay unwritable, whether they are absent from the sandbox or visible read-only,
// and a writable root given on the command line must not widen to them.
both_identities!(sibling_with_shared_prefix_stays_outside, |f: &Fixture| {
    let dash = PathBuf::from(format!("{}-evil", f.ws.display()));
    let dot = PathBuf::from(format!("{}.bak", f.ws.display()));
    make_dir(f, &dash);
    make_dir(f, &dot);
    let parent = f.ws.parent().unwrap().display().to_string();
    for flags in [vec![], vec!["--allow-read", parent.as_str()]] {
        let run = sandbox(
            f,
            &flags,
            r#"try dash 'touch "$WS-evil/x"'
try dot 'touch "$WS.bak/x"'
try remove 'rm -r "$WS-evil"'
try mkdir 'mkdir "$WS-evil/sub"'
"#,
        );
        assert_denied(&run, &["dash", "dot", "remove", "mkdir"]);
    }
    // The workspace given as a path that merely shares the prefix is a different directory.
    let run = run_script(f, &f.ws, &["-w", dash.to_str().unwrap()], r#"try inside 'touch "$WS/x"'
"#);
    assert_denied(&run, &["inside"]);
    for dir in [&dash, &dot] {
        assert!(dir.is_dir(), "{} was removed", dir.display());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "{} is not empty", dir.display());
    }
    assert!(!f.ws.join("x").exists(), "the workspace was written through its sibling");
});

// Public reports: anthropics/claude-code#53209 and #45570. A read-deny must hold for
// paths that do not exist yet too: creating the denied path, or a missing parent of it, inside
// a writable root would hand the command a file the user asked to keep out of reach. The same
// holds for a protected path given absolutely in a policy file.
both_identities!(missing_denied_paths_cannot_be_created, |f: &Fixture| {
    let policy = f.root.join("policy.toml");
    f.write(&policy, "[filesystem]\nprotected = [\"{workspace}/absdir/x\"]\n");
    let run = sandbox(
        f,
        &["--deny-read", "{workspace}/secrets/token", "--policy", policy.to_str().unwrap()],
        r#"try denied-parent 'mkdir secrets && echo x > secrets/token'
try denied-file 'mkdir -p secrets; echo x > secrets/token'
try protected-parent 'mkdir absdir && echo a > absdir/x'
"#,
    );
    assert_denied(&run, &["denied-parent", "denied-file", "protected-parent"]);
    for path in ["secrets", "absdir"] {
        assert!(!exists(&f.ws.join(path)), "{path} was created on the host\n{}", describe(&run));
    }
});

// The host's tree is detached from the sandbox by a child of init while the command stage
// confines itself, and the stage waits for it. If the command ever started before that, the
// host's root would still be stacked on the new root and listed as a second mount on `/`.
both_identities!(host_root_is_detached_before_the_command_runs, |f: &Fixture| {
    let run = f.palisade(&["run", "--", "/bin/cat", "/proc/self/mountinfo"]);
    assert_eq!(run.code, Some(0), "{}", describe(&run));
    // Field 5 of a mountinfo line is the mount point; the filesystem type follows " - ".
    let on_root: Vec<&str> = run.stdout.lines().filter(|line| line.split(' ').nth(4) == Some("/")).collect();
    assert_eq!(on_root.len(), 1, "expected palisade's root alone on /\n{}", run.stdout);
    let fs_type = on_root[0].split(" - ").nth(1).and_then(|rest| rest.split(' ').next());
    assert_eq!(fs_type, Some("tmpfs"), "the root is not palisade's tmpfs\n{}", run.stdout);
});
