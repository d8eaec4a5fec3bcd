//! False-denial guards: everyday development work that must succeed in the workspace under the
//! default policy. Each guard also checks that the host's copy of the fake home directory,
//! caches included, is unchanged afterwards, because the caches sit under a copy-on-write
//! layer inside the sandbox.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::both_identities;
use crate::suite::harness::{skip, Fixture};

type Snapshot = Vec<(PathBuf, u64, u32, i64, Vec<u8>)>;

/// Panics with the paths that differ between two snapshots of `dir`.
#[track_caller]
fn assert_unchanged(dir: &Path, before: &Snapshot, after: &Snapshot) {
    if before == after {
        return;
    }
    let mut changed: Vec<&Path> = Vec::new();
    for entry in before.iter().filter(|entry| !after.contains(entry)) {
        changed.push(&entry.0);
    }
    for entry in after.iter().filter(|entry| !before.contains(entry)) {
        changed.push(&entry.0);
    }
    changed.sort();
    changed.dedup();
    panic!("{} changed on the host: {changed:#?}", dir.display());
}

/// Returns true when the fixture's owner can execute `program` on the host.
fn owner_can_execute(f: &Fixture, program: &Path) -> bool {
    f.host(&f.ws.clone(), "/bin/sh", &["-c", r#"test -x "$0""#, program.to_str().unwrap()]).code == Some(0)
}

/// Creates a directory owned by the fixture's owner.
fn create_owned_dir(f: &Fixture, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    f.chown_all();
}

both_identities!(git_commit_in_new_repository, |f: &Fixture| {
    let before = f.snapshot(&f.home);
    let script = r#"
set -e
mkdir fresh && cd fresh
git init -q
echo hello > a.txt
git add a.txt
git -c user.email=t@example.invalid -c user.name=t commit -q -m first
git log --format=%s
"#;
    let run = f.sandbox_sh(&[], script);
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), "first");

    let fresh = f.ws.join("fresh");
    let log = f.host(&fresh, "git", &["log", "--format=%s"]);
    assert_eq!(log.stdout.trim(), "first", "the commit is not in the repository on the host: {}", log.stderr);
    let content = f.host(&fresh, "git", &["show", "HEAD:a.txt"]);
    assert_eq!(content.stdout, "hello\n");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

both_identities!(git_commit_in_workspace_repository, |f: &Fixture| {
    let before = f.snapshot(&f.home);
    let script = r#"
set -e
echo second > b.txt
git add b.txt
git -c user.email=t@example.invalid -c user.name=t commit -q -m second
"#;
    f.sandbox_sh(&[], script).expect_code(0);

    let log = f.host(&f.ws.clone(), "git", &["log", "--format=%s"]);
    assert_eq!(log.stdout.lines().collect::<Vec<_>>(), vec!["second", "init"], "{}", log.stderr);
    let files = f.host(&f.ws.clone(), "git", &["show", "--format=", "--name-only", "HEAD"]);
    assert_eq!(files.stdout, "b.txt\n");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

// `git add -A` indexes every untracked file it finds, so anything palisade shows in the
// workspace that the command did not create makes the add fail or end up in the commit.
both_identities!(git_add_all_commits_only_workspace_files, |f: &Fixture| {
    let before = f.snapshot(&f.home);
    let script = r#"
set -e
echo second > b.txt
git add -A
git -c user.email=t@example.invalid -c user.name=t commit -q -m second
git status --porcelain
"#;
    let run = f.sandbox_sh(&[], script);
    run.expect_code(0);
    assert_eq!(run.stdout, "", "the working tree is not clean after committing everything");

    let files = f.host(&f.ws.clone(), "git", &["show", "--format=", "--name-only", "HEAD"]);
    assert_eq!(files.stdout, "b.txt\n", "the commit holds files the command did not create");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

both_identities!(make_builds_c_program, |f: &Fixture| {
    if !Path::new("/usr/bin/cc").exists() {
        skip(&f.name, "no C compiler at /usr/bin/cc");
        return;
    }
    f.write(&f.ws.join("hello.c"), "#include <stdio.h>\nint main(void) { puts(\"made\"); return 0; }\n");
    f.write(&f.ws.join("Makefile"), "out.txt: hello\n\t./hello > out.txt\n\nhello: hello.c\n\tcc -o hello hello.c\n");
    let before = f.snapshot(&f.home);

    let run = f.palisade(&["run", "--", "make", "out.txt"]);
    run.expect_code(0);

    assert_eq!(fs::read_to_string(f.ws.join("out.txt")).unwrap(), "made\n");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

// Public report: netblue30/firejail#7136 (agents got "permission denied" running a script they
// had just written in the project directory).
both_identities!(script_written_inside_runs, |f: &Fixture| {
    let before = f.snapshot(&f.home);
    let script = r#"
set -e
mkdir -p tools
printf '#!/bin/sh\necho script-ok\n' > tools/t.sh
chmod +x tools/t.sh
./tools/t.sh
"#;
    let run = f.sandbox_sh(&[], script);
    run.expect_code(0);
    assert_eq!(run.stdout, "script-ok\n");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

both_identities!(python_venv_runs_script, |f: &Fixture| {
    // pip's cache exists on the host, so it is mounted copy-on-write inside.
    create_owned_dir(f, &f.home.join(".cache/pip"));
    f.write(&f.ws.join("check.py"), "import sys\nprint('in-venv' if sys.prefix != sys.base_prefix else 'no-venv')\n");
    let before = f.snapshot(&f.home);

    let script = "/usr/bin/python3 -m venv .venv && .venv/bin/python check.py";
    let run = f.sandbox_sh(&[], script);
    run.expect_code(0);

    assert_eq!(run.stdout.trim(), "in-venv");
    assert!(f.ws.join(".venv/bin/python").exists(), "the virtual environment is not in the workspace");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
});

both_identities!(npm_install_local_tarball, |f: &Fixture| {
    let node = Path::new("/usr/bin/node");
    let npm = Path::new("/usr/bin/npm");
    if !owner_can_execute(f, node) || !owner_can_execute(f, npm) {
        skip(&f.name, "node or npm is missing or not executable by the sandbox's user");
        return;
    }

    // A one-file package, packed on the host with a cache and home of its own.
    let package = f.root.join("npm-dep");
    f.write(&package.join("package.json"), r#"{"name": "palisade-guard-dep", "version": "1.0.0", "main": "index.js"}"#);
    f.write(&package.join("index.js"), "module.exports = 'dep-ok';\n");
    let pack_home = f.root.join("pack-home");
    create_owned_dir(f, &pack_home);
    let pack = f.host(&package, "/bin/sh", &["-c", r#"HOME="$0" npm pack --silent --cache "$0/cache""#, pack_home.to_str().unwrap()]);
    assert_eq!(pack.code, Some(0), "npm pack failed on the host: {}", pack.stderr);
    let tarball = "palisade-guard-dep-1.0.0.tgz";
    fs::copy(package.join(tarball), f.ws.join(tarball)).unwrap();
    f.write(&f.ws.join("package.json"), r#"{"name": "guard-app", "version": "1.0.0", "private": true}"#);

    // An existing ~/.npm becomes the copy-on-write cache that the install goes through.
    create_owned_dir(f, &f.home.join(".npm"));
    let before = f.snapshot(&f.home);

    let script = r#"
set -e
npm install --offline --no-audit --no-fund --no-update-notifier "./$0" >/dev/null
node -e 'console.log(require("palisade-guard-dep"))'
ls "$HOME/.npm/_cacache"
"#;
    let run = f.palisade(&["run", "--", "/bin/sh", "-c", script, tarball]);
    run.expect_code(0);

    assert_eq!(run.stdout.lines().next(), Some("dep-ok"), "the installed package does not load:\n{}", run.stdout);
    assert!(run.stdout.lines().any(|line| line == "content-v2"), "the install did not go through npm's cache:\n{}", run.stdout);
    assert!(f.ws.join("node_modules/palisade-guard-dep/index.js").exists(), "node_modules is not in the workspace");
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
    assert!(!f.home.join(".npm/_cacache").exists(), "npm's cache on the host was written");
});

/// Finds the active Rust toolchain: its root directory and the `RUSTUP_HOME` that contains it, if any.
fn rust_toolchain() -> Option<(PathBuf, Option<PathBuf>)> {
    let output = Command::new("rustc").args(["--print", "sysroot"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let rustup_home = sysroot
        .parent()
        .filter(|toolchains| toolchains.file_name().is_some_and(|name| name == "toolchains"))
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    Some((sysroot, rustup_home))
}

/// Writes a local registry under `registry` holding one crate, `palisade-guard-dep` 0.1.0, as a
/// packed `.crate` file that cargo unpacks into `$CARGO_HOME/registry` on first use.
fn write_local_registry(f: &Fixture, cargo: &Path, registry: &Path) {
    let source = f.root.join("cargo-dep");
    f.write(
        &source.join("Cargo.toml"),
        "[package]\nname = \"palisade-guard-dep\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"guard\"\nlicense = \"MIT\"\n",
    );
    f.write(&source.join("src/lib.rs"), "pub fn greeting() -> &'static str {\n    \"dep-ok\"\n}\n");
    let packed = Command::new(cargo)
        .args(["package", "--offline", "--no-verify", "--allow-dirty", "--quiet", "--target-dir", "target"])
        .current_dir(&source)
        .env("CARGO_HOME", f.root.join("pack-cargo-home"))
        .output()
        .unwrap();
    assert!(packed.status.success(), "cargo package failed on the host: {}", String::from_utf8_lossy(&packed.stderr));

    let crate_file = registry.join("palisade-guard-dep-0.1.0.crate");
    fs::create_dir_all(registry).unwrap();
    fs::copy(source.join("target/package/palisade-guard-dep-0.1.0.crate"), &crate_file).unwrap();
    let sum = Command::new("sha256sum").arg(&crate_file).output().unwrap();
    let checksum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_owned();
    // Index files of names with four or more characters live under their first two pairs.
    let entry = format!(
        "{{\"name\":\"palisade-guard-dep\",\"vers\":\"0.1.0\",\"deps\":[],\"cksum\":\"{checksum}\",\"features\":{{}},\"yanked\":false}}\n"
    );
    f.write(&registry.join("index/pa/li/palisade-guard-dep"), &entry);
}

both_identities!(cargo_build_with_local_registry, |f: &Fixture| {
    let Some((toolchain, rustup_home)) = rust_toolchain() else {
        skip(&f.name, "no Rust toolchain found with `rustc --print sysroot`");
        return;
    };
    let cargo = toolchain.join("bin/cargo");
    let rustc = toolchain.join("bin/rustc");
    if !owner_can_execute(f, &cargo) || !owner_can_execute(f, &rustc) {
        skip(&f.name, &format!("the toolchain at {} is not readable by the sandbox's user", toolchain.display()));
        return;
    }

    let registry = f.root.join("registry");
    write_local_registry(f, &cargo, &registry);
    let app = f.ws.join("app");
    f.write(
        &app.join("Cargo.toml"),
        "[package]\nname = \"guard-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\npalisade-guard-dep = \"0.1\"\n",
    );
    f.write(&app.join("src/main.rs"), "fn main() {\n    println!(\"{}\", palisade_guard_dep::greeting());\n}\n");
    f.write(
        &app.join(".cargo/config.toml"),
        &format!(
            "[source.crates-io]\nreplace-with = \"guard-local\"\n\n[source.guard-local]\nlocal-registry = \"{}\"\n",
            registry.display()
        ),
    );
    let cargo_home = f.home.join(".cargo");
    let before = f.snapshot(&f.home);

    let cargo_home_var = format!("CARGO_HOME={}", cargo_home.display());
    let rustc_var = format!("RUSTC={}", rustc.display());
    let registry_arg = registry.to_string_lossy().into_owned();
    let mut args = vec!["run", "--allow-read", &registry_arg, "--env", &cargo_home_var, "--env", &rustc_var];
    let toolchain_arg;
    let rustup_var;
    match &rustup_home {
        Some(home) => {
            toolchain_arg = home.to_string_lossy().into_owned();
            rustup_var = format!("RUSTUP_HOME={}", home.display());
            args.extend(["--allow-read", &toolchain_arg, "--env", &rustup_var]);
        }
        None => {
            toolchain_arg = toolchain.to_string_lossy().into_owned();
            args.extend(["--allow-read", &toolchain_arg]);
        }
    }
    let script = r#"
set -e
cd app
"$0" build --offline --quiet --target-dir target
./target/debug/guard-app
ls "$CARGO_HOME/registry/src"/*/
"#;
    args.extend(["--", "/bin/sh", "-c", script, cargo.to_str().unwrap()]);
    let run = f.palisade(&args);
    run.expect_code(0);

    assert_eq!(run.stdout.lines().next(), Some("dep-ok"), "the built program did not run:\n{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.lines().any(|line| line == "palisade-guard-dep-0.1.0"),
        "cargo did not unpack the crate into its registry cache:\n{}",
        run.stdout
    );
    assert_unchanged(&f.home, &before, &f.snapshot(&f.home));
    assert!(!cargo_home.join("registry").exists(), "cargo's registry cache on the host was written");
});

// Agents run several commands at once in one project. Runs in one workspace share the
// placeholders of missing protected names (a run adopts one another run created), so none may
// remove a placeholder while another still mounts over it, and the last one to end removes
// them all.
both_identities!(parallel_runs_in_one_workspace, |f: &Fixture| {
    const RUNS: usize = 24;
    let results: Vec<(Option<i32>, String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RUNS)
            .map(|index| scope.spawn(move || {
                let run = f.sandbox_sh(&[], &format!("echo run-{index}"));
                (run.code, run.stdout, run.stderr)
            }))
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    for (index, (code, stdout, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "run {index} failed: {stderr}");
        assert_eq!(stdout.trim(), format!("run-{index}"), "{stderr}");
    }

    let mut leftovers = Vec::new();
    let mut pending = vec![f.ws.clone()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_fifo() {
                leftovers.push(entry.path());
            } else if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "placeholders left in the workspace: {leftovers:?}");
});
