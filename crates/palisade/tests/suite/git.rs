//! Git metadata in writable roots: everything the user's own `git` later executes or trusts
//! (hooks, configuration, `info/`, and the files that tell git where those live) stays
//! unchanged, while ordinary work (status, add, commit, worktrees) keeps working.
//!
//! The outside check runs host-side `git` as the fixture's owner and looks for the markers
//! (`$OUT/*-ran`) that planted hooks and configured programs would create.

use std::fs;
use std::path::{Path, PathBuf};

use crate::both_identities;
use crate::suite::filesystem::{
    assert_allowed, assert_denied, describe, exists, make_dir, markers, run_script, sandbox, step_status, tree,
};
use crate::suite::harness::{Fixture, Run};

/// `git -c user.email=… -c user.name=…`, so commits work without a configured identity.
const GIT_ID: &str = "git -c user.email=t@example.invalid -c user.name=t";

/// Runs `git ARGS` on the host as the fixture's owner, in `dir`.
fn host_git(f: &Fixture, dir: &Path, args: &[&str]) -> Run {
    let mut full = vec!["-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "protocol.file.allow=always"];
    full.extend_from_slice(args);
    f.host(dir, "git", &full)
}

/// Runs the host-side git commands that fire hooks and configured programs in `dir`: status
/// (`core.fsmonitor`), checkout (`post-checkout`), commit (`pre-commit`, `commit-msg`,
/// `post-commit`) and an alias a planted configuration might define.
fn exercise_host_git(f: &Fixture, dir: &Path) {
    host_git(f, dir, &["status"]);
    host_git(f, dir, &["checkout", "-q", "-b", "after-sandbox"]);
    host_git(f, dir, &["commit", "-q", "--allow-empty", "-m", "after sandbox"]);
    host_git(f, dir, &["st"]);
}

/// Asserts that nothing planted inside the sandbox ran on the host.
#[track_caller]
fn assert_no_markers(f: &Fixture, run: &Run) {
    let found = markers(f);
    assert!(found.is_empty(), "planted programs ran on the host: {found:?}\n{}", describe(run));
}

/// Creates a repository at `main` (outside the workspace) with a linked worktree at `worktree`,
/// and returns the name of the main repository's branch.
fn linked_worktree(f: &Fixture, main: &Path, worktree: &Path) -> String {
    make_dir(f, main);
    f.git_init(main);
    let run = host_git(f, main, &["worktree", "add", "-q", worktree.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "git worktree add failed: {}", run.stderr);
    host_git(f, main, &["symbolic-ref", "--short", "HEAD"]).stdout.trim().to_owned()
}

// Public report: trailofbits/claude-code-config#48 and anthropics/claude-code#61909: a
// hook written into the workspace's `.git/hooks` ran on the user's next git command. Also
// openai/codex#7071: commits must still work.
both_identities!(hooks_dir_stays_read_only_when_present, |f: &Fixture| {
    let hooks = f.ws.join(".git/hooks");
    assert!(hooks.join("pre-commit.sample").is_file(), "git init did not install sample hooks");
    let before = tree(f, &hooks);
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try write 'plant .git/hooks/post-checkout hook'
try chmod-sample 'chmod +x .git/hooks/pre-commit.sample'
try rename-sample 'mv .git/hooks/pre-commit.sample .git/hooks/pre-commit'
try remove-sample 'rm .git/hooks/pre-commit.sample'
try mkdir 'mkdir .git/hooks/extra.d'
try rename-dir 'mv .git/hooks .git/hooks-old'
try remove-dir 'rm -rf .git/hooks'
try commit '{GIT_ID} commit -q --allow-empty -m inside'
"#
        ),
    );
    assert_denied(&run, &["write", "chmod-sample", "rename-sample", "remove-sample", "mkdir", "rename-dir", "remove-dir"]);
    assert_allowed(&run, &["commit"]);
    assert_eq!(tree(f, &hooks), before, "hooks changed\n{}", describe(&run));
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
});

// Public report: trailofbits/claude-code-config#48, with no `.git/hooks` at start.
both_identities!(hooks_dir_stays_read_only_when_missing, |f: &Fixture| {
    fs::remove_dir_all(f.ws.join(".git/hooks")).unwrap();
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try mkdir 'mkdir .git/hooks'
try write 'mkdir -p .git/hooks; plant .git/hooks/post-checkout hook'
try commit '{GIT_ID} commit -q --allow-empty -m inside'
"#
        ),
    );
    assert_denied(&run, &["write"]);
    assert_allowed(&run, &["commit"]);
    assert!(!exists(&f.ws.join(".git/hooks")), ".git/hooks exists after the run\n{}", describe(&run));
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
});

// Public report: trailofbits/claude-code-config#48. Protecting `.git/hooks` and
// `.git/config` in place is not enough if `.git` itself can be moved aside and rebuilt with
// hooks and configuration of the command's choosing.
both_identities!(git_dir_cannot_be_replaced, |f: &Fixture| {
    let before_hooks = tree(f, &f.ws.join(".git/hooks"));
    let before_config = fs::read(f.ws.join(".git/config")).unwrap();
    let run = sandbox(
        f,
        &[],
        r#"try rename 'mv .git .git-old'
try rebuild 'mkdir -p .git/hooks && cp -a .git-old/HEAD .git-old/objects .git-old/refs .git/ && plant .git/hooks/post-checkout replaced-hook'
try config 'printf "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"touch $OUT/replaced-fsmonitor-ran; false\"\n" > .git/config'
"#,
    );
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
    assert_denied(&run, &["rename"]);
    assert_eq!(tree(f, &f.ws.join(".git/hooks")), before_hooks, "hooks changed\n{}", describe(&run));
    assert_eq!(fs::read(f.ws.join(".git/config")).unwrap(), before_config, ".git/config changed\n{}", describe(&run));
});

// Public report: openai/codex#25664, applied to the main worktree: turning `.git` into
// a pointer file aims every later host-side git command at a git directory the command made.
both_identities!(git_dir_cannot_become_pointer_file, |f: &Fixture| {
    let run = sandbox(
        f,
        &[],
        r#"mkdir -p evil/hooks && plant evil/hooks/post-checkout pointer-hook
try copy 'cp -a .git/HEAD .git/objects .git/refs evil/'
try pointer 'mv .git real-git && printf "gitdir: %s/evil\n" "$PWD" > .git'
"#,
    );
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
    assert_denied(&run, &["pointer"]);
    assert!(f.ws.join(".git").is_dir(), ".git is no longer a directory\n{}", describe(&run));
});

// Public report: dirge-code/dirge#774 and TNG/oh-my-agentic-coder#31: `.git/config` keys
// (`core.fsmonitor`, `core.hooksPath`, `core.pager`, `core.sshCommand`, aliases, diff
// `textconv`) and `.git/info/attributes` filter drivers run programs on the host.
both_identities!(git_config_stays_read_only, |f: &Fixture| {
    let config = f.ws.join(".git/config");
    let info = f.ws.join(".git/info");
    let before_config = fs::read(&config).unwrap();
    let before_info = tree(f, &info);
    let run = sandbox(
        f,
        &[],
        r#"try fsmonitor 'git config core.fsmonitor "touch $OUT/fsmonitor-ran; false"'
try hooks-path 'git config core.hooksPath "$WS/agent-hooks"'
try alias 'git config alias.st "!touch $OUT/alias-ran"'
try pager 'git config core.pager "touch $OUT/pager-ran; cat"'
try ssh-command 'git config core.sshCommand "touch $OUT/ssh-ran"'
try textconv 'git config diff.agent.textconv "touch $OUT/textconv-ran; cat"'
try file-flag 'git config --file .git/config core.editor "touch $OUT/editor-ran"'
try append 'printf "[core]\n\tfsmonitor = touch $OUT/append-ran\n" >> .git/config'
try truncate 'cp /dev/null .git/config'
try rename 'mv .git/config .git/config.old'
try remove 'rm -f .git/config'
try attributes 'printf "* filter=agent diff=agent\n" >> .git/info/attributes'
try exclude 'echo "*" >> .git/info/exclude'
"#,
    );
    assert_denied(
        &run,
        &[
            "fsmonitor", "hooks-path", "alias", "pager", "ssh-command", "textconv", "file-flag", "append", "truncate",
            "rename", "remove", "attributes", "exclude",
        ],
    );
    assert_eq!(fs::read(&config).unwrap(), before_config, ".git/config changed\n{}", describe(&run));
    assert_eq!(tree(f, &info), before_info, ".git/info changed\n{}", describe(&run));
    exercise_host_git(f, &f.ws);
    host_git(f, &f.ws, &["log", "-p", "-1"]);
    assert_no_markers(f, &run);
});

// Public report: dirge-code/dirge#774, with `.git/info` missing at start, as in
// repositories cloned without templates.
both_identities!(git_info_cannot_be_created, |f: &Fixture| {
    fs::remove_dir_all(f.ws.join(".git/info")).unwrap();
    let run = sandbox(
        f,
        &[],
        r#"try attributes 'mkdir -p .git/info && printf "* filter=agent\n" > .git/info/attributes'
try config 'git config filter.agent.clean "touch $OUT/filter-ran; cat"'
"#,
    );
    assert_denied(&run, &["attributes", "config"]);
    assert!(!exists(&f.ws.join(".git/info")), ".git/info exists after the run\n{}", describe(&run));
});

// Public report: trailofbits/claude-code-config#48 and dirge-code/dirge#774. Git
// reads `$GIT_DIR/commondir` to find the directory that contains the configuration and hooks,
// so writing that one file would move both out from under their protection. Git fails on a
// placeholder at that name, so palisade cannot keep it from being created; it removes the file
// when the run ends, before any host-side git can read it, and reports it on stderr.
both_identities!(commondir_file_cannot_redirect_git, |f: &Fixture| {
    let run = sandbox(
        f,
        &[],
        r#"mkdir -p evil/hooks
cp -a .git/HEAD .git/objects .git/refs evil/
plant evil/hooks/post-checkout commondir-hook
printf "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"touch $OUT/commondir-fsmonitor-ran; false\"\n" > evil/config
try commondir 'echo ../evil > .git/commondir'
"#,
    );
    let common = host_git(f, &f.ws, &["rev-parse", "--git-common-dir"]);
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
    assert!(!f.ws.join(".git/commondir").exists(), ".git/commondir survived the run\n{}", describe(&run));
    assert_eq!(common.stdout.trim(), ".git", "git now uses another common directory\n{}", describe(&run));
    assert!(run.stderr.contains("commondir"), "palisade must say it removed the file\n{}", describe(&run));
});

// Public report: trailofbits/claude-code-config#48. A submodule's hooks and
// configuration live in `.git/modules/<name>/`, inside the protected repository's git directory.
both_identities!(submodule_git_dirs_stay_read_only, |f: &Fixture| {
    let library = f.out.join("library");
    make_dir(f, &library);
    f.git_init(&library);
    let added = host_git(f, &f.ws, &["submodule", "add", "-q", library.to_str().unwrap(), "sub"]);
    assert_eq!(added.code, Some(0), "git submodule add failed: {}", added.stderr);
    host_git(f, &f.ws, &["commit", "-q", "-m", "add submodule"]);
    let modules = f.ws.join(".git/modules/sub");
    let before_hooks = tree(f, &modules.join("hooks"));
    let before_config = fs::read(modules.join("config")).unwrap();
    let run = sandbox(
        f,
        &[],
        r#"try hook 'plant .git/modules/sub/hooks/post-checkout submodule-hook'
try config 'git -C sub config core.fsmonitor "touch $OUT/submodule-fsmonitor-ran; false"'
"#,
    );
    exercise_host_git(f, &f.ws.join("sub"));
    assert_no_markers(f, &run);
    assert_eq!(tree(f, &modules.join("hooks")), before_hooks, "submodule hooks changed\n{}", describe(&run));
    assert_eq!(fs::read(modules.join("config")).unwrap(), before_config, "submodule config changed\n{}", describe(&run));
    assert_denied(&run, &["hook", "config"]);
});

// Public report: trailofbits/claude-code-config#48. A repository nested inside the
// workspace (a vendored checkout, a second project) runs its hooks when the user works in it.
both_identities!(nested_repository_hooks_stay_read_only, |f: &Fixture| {
    let nested = f.ws.join("vendor/lib");
    make_dir(f, &nested);
    f.git_init(&nested);
    let before_hooks = tree(f, &nested.join(".git/hooks"));
    let before_config = fs::read(nested.join(".git/config")).unwrap();
    let run = sandbox(
        f,
        &[],
        r#"try hook 'plant vendor/lib/.git/hooks/post-checkout nested-hook'
try config 'git -C vendor/lib config core.fsmonitor "touch $OUT/nested-fsmonitor-ran; false"'
"#,
    );
    exercise_host_git(f, &nested);
    assert_no_markers(f, &run);
    assert_eq!(tree(f, &nested.join(".git/hooks")), before_hooks, "nested hooks changed\n{}", describe(&run));
    assert_eq!(fs::read(nested.join(".git/config")).unwrap(), before_config, "nested config changed\n{}", describe(&run));
    assert_denied(&run, &["hook", "config"]);
});

// Public report: openai/codex#25664: in a linked worktree `.git` is a pointer file;
// rewriting it redirected later host-side git commands to a git directory with planted hooks.
both_identities!(worktree_pointer_file_stays_read_only, |f: &Fixture| {
    let main = f.root.join("main");
    let worktree = f.root.join("wt");
    linked_worktree(f, &main, &worktree);
    let pointer = fs::read(worktree.join(".git")).unwrap();
    let run = run_script(
        f,
        &worktree,
        &[],
        r#"mkdir -p evil/hooks && plant evil/hooks/post-checkout pointer-hook
cp -r "$(git rev-parse --git-dir)/." evil/ 2>/dev/null
try pointer 'printf "gitdir: %s/evil\n" "$PWD" > .git'
try rename 'mv .git .git-old'
try remove 'rm -f .git'
"#,
    );
    assert_denied(&run, &["pointer", "rename", "remove"]);
    assert_eq!(fs::read(worktree.join(".git")).unwrap(), pointer, "the pointer file changed\n{}", describe(&run));
    exercise_host_git(f, &worktree);
    assert_no_markers(f, &run);
});

// Public report: openai/codex#25664. The worktree's own git directory, which palisade
// makes writable so commits work, contains `commondir`: the path of the directory whose
// configuration and hooks git uses for this worktree.
both_identities!(worktree_commondir_stays_read_only, |f: &Fixture| {
    let main = f.root.join("main");
    let worktree = f.root.join("wt");
    linked_worktree(f, &main, &worktree);
    let commondir = main.join(".git/worktrees/wt/commondir");
    let before = fs::read(&commondir).unwrap();
    let commondir_env = format!("COMMONDIR={}", commondir.display());
    let run = run_script(
        f,
        &worktree,
        &["--env", &commondir_env],
        r#"mkdir -p evil/hooks && plant evil/hooks/post-checkout commondir-hook
cp -a "$(git rev-parse --git-common-dir)/objects" "$(git rev-parse --git-common-dir)/refs" evil/ 2>/dev/null
echo "ref: refs/heads/wt" > evil/HEAD
try commondir 'echo "$PWD/evil" > "$COMMONDIR"'
"#,
    );
    exercise_host_git(f, &worktree);
    assert_no_markers(f, &run);
    assert_eq!(fs::read(&commondir).unwrap(), before, "commondir changed\n{}", describe(&run));
    assert_denied(&run, &["commondir"]);
});

// Public report: anthropics/claude-code#22320, #26262, #80278 and openai/codex#23661:
// protecting git metadata made linked worktrees unusable. Git work in a worktree must
// succeed while the main repository's configuration and hooks stay unchanged.
both_identities!(linked_worktree_supports_git_work, |f: &Fixture| {
    let main = f.root.join("main");
    let worktree = f.root.join("wt");
    linked_worktree(f, &main, &worktree);
    host_git(f, &main, &["config", "extensions.worktreeConfig", "true"]);
    // `git config --worktree --list` fails on the host too while config.worktree is missing,
    // so the host creates it first.
    host_git(f, &worktree, &["config", "--worktree", "color.ui", "auto"]);
    let before_config = fs::read(main.join(".git/config")).unwrap();
    let before_hooks = tree(f, &main.join(".git/hooks"));
    let main_env = format!("MAIN={}", main.display());
    let run = run_script(
        f,
        &worktree,
        &["--env", &main_env],
        &format!(
            r#"try status 'git status --short'
try log 'git log -1 --oneline'
try worktree-config 'git config --worktree --list'
try add 'echo x > file.txt && git add file.txt'
try commit '{GIT_ID} commit -q -m inside-worktree'
try main-config 'echo "[alias]" >> "$MAIN/.git/config"'
try main-hook 'plant "$MAIN/.git/hooks/pre-commit" main-hook'
"#
        ),
    );
    assert_allowed(&run, &["status", "log", "worktree-config", "add", "commit"]);
    assert_denied(&run, &["main-config", "main-hook"]);
    let log = host_git(f, &worktree, &["log", "--format=%s"]);
    assert_eq!(log.stdout, "inside-worktree\ninit\n", "the worktree's history on the host\n{}", describe(&run));
    assert_eq!(fs::read(main.join(".git/config")).unwrap(), before_config, "main config changed\n{}", describe(&run));
    assert_eq!(tree(f, &main.join(".git/hooks")), before_hooks, "main hooks changed\n{}", describe(&run));
});

// Public report: openai/codex#23661: a worktree must see its repository as the host
// does. After `git gc` or `git pack-refs` the branches live in the main repository's
// `packed-refs`; a commit that cannot see them starts a new, unrelated history.
both_identities!(linked_worktree_sees_packed_refs, |f: &Fixture| {
    let main = f.root.join("main");
    let worktree = f.root.join("wt");
    let branch = linked_worktree(f, &main, &worktree);
    host_git(f, &main, &["pack-refs", "--all"]);
    let run = run_script(
        f,
        &worktree,
        &[],
        &format!(
            r#"try log 'git log -1 --format=%s | grep -x init'
try main-branch 'git rev-parse --verify -q refs/heads/{branch}'
try commit '{GIT_ID} commit -q --allow-empty -m inside-worktree'
"#
        ),
    );
    assert_allowed(&run, &["log", "main-branch", "commit"]);
    let log = host_git(f, &worktree, &["log", "--format=%s"]);
    assert_eq!(log.stdout, "inside-worktree\ninit\n", "the worktree's history on the host\n{}", describe(&run));
});

// Public report: safedep/pmg#444 and navikt/cplt#212: `core.hooksPath` moves hooks into
// the writable tree, and a second writable repository's hooks were left open.
both_identities!(hooks_path_targets_stay_read_only, |f: &Fixture| {
    f.write(&f.ws.join(".husky/_/husky.sh"), "# husky\n");
    host_git(f, &f.ws, &["config", "core.hooksPath", ".husky/_"]);
    // A relative hooksPath in the user's global configuration applies to every repository.
    f.write(&f.home.join(".gitconfig"), "[core]\n\thooksPath = .githooks\n");
    let second = f.root.join("ws2");
    make_dir(f, &second);
    f.git_init(&second);
    let before = [
        tree(f, &f.ws.join(".husky")),
        tree(f, &second.join(".git/hooks")),
        vec![(second.join(".git/config"), 0, fs::read(second.join(".git/config")).unwrap())],
    ];
    let second_text = second.display().to_string();
    let w2 = format!("W2={second_text}");
    let run = sandbox(
        f,
        &["--allow-write", &second_text, "--env", &w2],
        &format!(
            r#"try set-hooks-path 'git config core.hooksPath /tmp/h'
try husky 'plant .husky/_/pre-commit husky-hook'
try w2-hook 'plant "$W2/.git/hooks/pre-commit" w2-hook'
try w2-fsmonitor 'git -C "$W2" config core.fsmonitor "touch $OUT/w2-fsmonitor-ran; false"'
try w2-global-hooks 'mkdir -p "$W2/.githooks" && plant "$W2/.githooks/pre-commit" global-hook'
try commit '{GIT_ID} commit -q --allow-empty -m inside'
try w2-commit '{GIT_ID} -C "$W2" commit -q --allow-empty -m inside'
"#
        ),
    );
    assert_denied(&run, &["set-hooks-path", "husky", "w2-hook", "w2-fsmonitor", "w2-global-hooks"]);
    assert_allowed(&run, &["commit", "w2-commit"]);
    let after = [
        tree(f, &f.ws.join(".husky")),
        tree(f, &second.join(".git/hooks")),
        vec![(second.join(".git/config"), 0, fs::read(second.join(".git/config")).unwrap())],
    ];
    assert_eq!(after, before, "hooks or configuration changed\n{}", describe(&run));
    assert!(!exists(&second.join(".githooks")), "the global hooks directory was created\n{}", describe(&run));
    exercise_host_git(f, &f.ws);
    exercise_host_git(f, &second);
    assert_no_markers(f, &run);
});

// Public report: anthropic-experimental/sandbox-runtime#545: `rm -rf .git` in a writable
// project wiped the history. Palisade's decision: hooks, config and info are read-only mounts
// and survive. Objects, refs and HEAD are ordinary workspace data and may be deleted, like any
// other file the command may edit.
both_identities!(deleting_git_dir_keeps_hooks_and_config, |f: &Fixture| {
    let before = [tree(f, &f.ws.join(".git/hooks")), tree(f, &f.ws.join(".git/config")), tree(f, &f.ws.join(".git/info"))];
    let run = sandbox(f, &[], "try remove 'rm -rf .git'\ntry log 'git log -1'\n");
    step_status(&run, "log");
    let after = [tree(f, &f.ws.join(".git/hooks")), tree(f, &f.ws.join(".git/config")), tree(f, &f.ws.join(".git/info"))];
    assert_eq!(after, before, "protected git metadata changed\n{}", describe(&run));
    assert!(f.ws.join(".git/hooks/pre-commit.sample").is_file(), "{}", describe(&run));
});

// Public report: carderne/pi-sandbox#44: the hooks deny made `git init` fail. A
// repository created inside the sandbox must work.
both_identities!(git_init_and_commit_work_in_new_repo, |f: &Fixture| {
    fs::remove_dir_all(f.ws.join(".git")).unwrap();
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try init 'git init -q'
try commit '{GIT_ID} commit -q --allow-empty -m inside'
try nested 'git init -q nested && {GIT_ID} -C nested commit -q --allow-empty -m nested'
"#
        ),
    );
    assert_allowed(&run, &["init", "commit", "nested"]);
    let log = host_git(f, &f.ws, &["log", "--format=%s"]);
    assert_eq!(log.stdout, "inside\n", "{}", describe(&run));
});

// Public report: carderne/pi-sandbox#44: in an existing repository, `git init` must not
// become a way to rewrite the hooks.
both_identities!(git_init_in_existing_repo_keeps_hooks, |f: &Fixture| {
    let hooks = f.ws.join(".git/hooks");
    let before = tree(f, &hooks);
    let templates = f.root.join("templates");
    f.write(&templates.join("hooks/post-checkout"), &format!("#!/bin/sh\ntouch {}/template-ran\n", f.out.display()));
    let templates_text = templates.display().to_string();
    let templates_env = format!("TEMPLATES={templates_text}");
    let run = sandbox(
        f,
        &["--allow-read", &templates_text, "--env", &templates_env],
        r#"try reinit 'git init -q'
try template 'git init -q --template="$TEMPLATES"'
try hook 'echo e > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit'
"#,
    );
    step_status(&run, "template");
    assert_denied(&run, &["hook"]);
    assert_eq!(tree(f, &hooks), before, "hooks changed\n{}", describe(&run));
});

// Public report: openai/codex#7071: `.git` was read-only, so `git commit` failed on
// `index.lock`. The data git writes (index, objects, refs, logs) is writable; the parts the
// host executes are not. `git add -A` must stage exactly the command's own changes.
both_identities!(commit_works_while_git_metadata_stays_protected, |f: &Fixture| {
    let protected = [f.ws.join(".git/hooks"), f.ws.join(".git/config"), f.ws.join(".git/info")];
    let before: Vec<_> = protected.iter().map(|path| tree(f, path)).collect();
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try add 'echo x > file.txt && git add file.txt'
try commit '{GIT_ID} commit -q -m inside'
try add-all 'echo y > other.txt && git add -A && git status --porcelain | grep -vx "A  other.txt" | wc -l | grep -qx 0'
try commit-all '{GIT_ID} commit -q -m inside-all'
try branch 'git branch topic && git checkout -q topic'
try tag 'git tag v1'
try hook 'echo x > .git/hooks/pre-commit'
try config 'git config user.name agent'
try attributes 'printf "* filter=agent\n" >> .git/info/attributes'
"#
        ),
    );
    assert_allowed(&run, &["add", "commit", "add-all", "commit-all", "branch", "tag"]);
    assert_denied(&run, &["hook", "config", "attributes"]);
    let log = host_git(f, &f.ws, &["log", "--format=%s", "topic"]);
    assert_eq!(log.stdout, "inside-all\ninside\ninit\n", "{}", describe(&run));
    let after: Vec<_> = protected.iter().map(|path| tree(f, path)).collect();
    assert_eq!(after, before, "protected git metadata changed\n{}", describe(&run));
});

// Public report: openai/codex#27354: the `repo` tool makes `.git` a symlink to a git
// directory elsewhere in the checkout. Git must work and the hooks stay protected where they
// really are.
both_identities!(symlinked_git_dir_keeps_hooks_read_only, |f: &Fixture| {
    let real = f.ws.join(".repo/projects/app.git");
    make_dir(f, real.parent().unwrap());
    fs::rename(f.ws.join(".git"), &real).unwrap();
    std::os::unix::fs::symlink(PathBuf::from(".repo/projects/app.git"), f.ws.join(".git")).unwrap();
    f.chown_all();
    let before = tree(f, &real.join("hooks"));
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try status 'git status --short'
try commit '{GIT_ID} commit -q --allow-empty -m inside'
try hook 'plant .git/hooks/post-checkout symlinked-hook'
try real-hook 'plant .repo/projects/app.git/hooks/post-checkout symlinked-hook'
try config 'git config core.fsmonitor "touch $OUT/symlinked-fsmonitor-ran; false"'
"#
        ),
    );
    assert_allowed(&run, &["status", "commit"]);
    assert_denied(&run, &["hook", "real-hook", "config"]);
    assert_eq!(tree(f, &real.join("hooks")), before, "hooks changed\n{}", describe(&run));
    exercise_host_git(f, &f.ws);
    assert_no_markers(f, &run);
});

// Public report: openai/codex#25664, seen from the main repository: when the workspace
// is the main worktree, `.git/worktrees/<name>` contains the `commondir`, `gitdir` and hooks that
// git run in the linked worktree follows. Rewriting them would redirect that worktree to a
// configuration the command wrote.
both_identities!(own_worktree_metadata_stays_read_only, |f: &Fixture| {
    let worktree = f.root.join("wt");
    let run = host_git(f, &f.ws, &["worktree", "add", "-q", worktree.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "git worktree add failed: {}", run.stderr);
    let metadata = f.ws.join(".git/worktrees/wt");
    let before_commondir = fs::read(metadata.join("commondir")).unwrap();
    let before_gitdir = fs::read(metadata.join("gitdir")).unwrap();
    let run = sandbox(
        f,
        &[],
        r#"mkdir -p evil/hooks && plant evil/hooks/post-checkout worktree-meta-hook
printf "[core]\n\tfsmonitor = \"touch $OUT/worktree-meta-fsmonitor-ran; false\"\n" > evil/config
try commondir 'echo "$WS/evil" > .git/worktrees/wt/commondir'
try gitdir 'echo /tmp/elsewhere > .git/worktrees/wt/gitdir'
try hooks 'mkdir -p .git/worktrees/wt/hooks && plant .git/worktrees/wt/hooks/post-checkout worktree-hook'
"#,
    );
    exercise_host_git(f, &worktree);
    assert_no_markers(f, &run);
    assert_denied(&run, &["commondir", "gitdir", "hooks"]);
    assert_eq!(fs::read(metadata.join("commondir")).unwrap(), before_commondir, "commondir changed\n{}", describe(&run));
    assert_eq!(fs::read(metadata.join("gitdir")).unwrap(), before_gitdir, "gitdir changed\n{}", describe(&run));
    assert!(!exists(&metadata.join("hooks")), "a hooks directory appeared\n{}", describe(&run));
});

// Public report: anthropics/claude-code#26262: worktree metadata outside the workspace
// was read-only, so git in a linked worktree failed. Git takes `packed-refs.lock` in the main
// repository's git directory when it updates or deletes a branch, so that directory must be
// writable while its configuration and hooks stay protected.
both_identities!(linked_worktree_branches_can_change, |f: &Fixture| {
    let main = f.root.join("main");
    let worktree = f.root.join("wt");
    linked_worktree(f, &main, &worktree);
    let main_env = format!("MAIN={}", main.display());
    let run = run_script(
        f,
        &worktree,
        &["--env", &main_env],
        &format!(
            r#"try commit '{GIT_ID} commit -q --allow-empty -m inside 2>err && ! grep -q packed-refs err'
try branch 'git branch scratch && git branch -D scratch'
try main-config 'echo "[alias]" >> "$MAIN/.git/config"'
try main-hooks 'plant "$MAIN/.git/hooks/post-checkout" main-hook'
"#
        ),
    );
    assert_allowed(&run, &["commit", "branch"]);
    assert_denied(&run, &["main-config", "main-hooks"]);
});

// The read-only profile must keep git usable: as root, the workspace appears owned by the
// sandbox user as it does under workspace-write, or git refuses the "dubiously owned"
// repository.
both_identities!(read_only_profile_runs_git_log, |f: &Fixture| {
    let run = sandbox(f, &["-p", "read-only"], "try log 'git log --oneline'\ntry write 'touch new-file'\n");
    assert_allowed(&run, &["log"]);
    assert_denied(&run, &["write"]);
});

// Public report: carderne/pi-sandbox#44. `git init` must work in a workspace without a
// repository, yet the new repository's hooks and configuration cannot be protected with mounts
// while `.git` does not exist. Palisade disables what the command planted there when the run
// ends, so the host's next git command runs none of it.
both_identities!(new_repository_is_neutralised_after_run, |f: &Fixture| {
    let fresh = f.root.join("fresh");
    make_dir(f, &fresh);
    let run = run_script(
        f,
        &fresh,
        &[],
        &format!(
            r#"try init 'git init -q && {GIT_ID} commit -q --allow-empty -m first'
try hook 'plant .git/hooks/pre-commit new-repo-hook'
try fsmonitor 'git config core.fsmonitor "touch $OUT/new-repo-fsmonitor-ran; false"'
try commondir 'echo /nowhere > .git/commondir'
"#
        ),
    );
    assert_allowed(&run, &["init"]);
    exercise_host_git(f, &fresh);
    assert_no_markers(f, &run);
    let log = host_git(f, &fresh, &["log", "--format=%s"]);
    assert!(log.stdout.contains("first"), "the commit made inside is gone\n{}", describe(&run));
    assert!(exists(&fresh.join(".git/hooks/pre-commit.disabled-by-palisade")), "the planted hook was not kept aside\n{}", describe(&run));
    assert!(!exists(&fresh.join(".git/commondir")), "commondir survived\n{}", describe(&run));
    assert!(run.stderr.contains("disabled a hook"), "palisade must report the disabled hook\n{}", describe(&run));
});

// The same for a repository created in a subdirectory of the workspace, and for a `.git`
// pointer file planted there to aim git at a directory the command prepared.
both_identities!(nested_new_repository_is_neutralised, |f: &Fixture| {
    let run = sandbox(
        f,
        &[],
        &format!(
            r#"try init 'mkdir -p sub/lib && cd sub/lib && git init -q && {GIT_ID} commit -q --allow-empty -m nested'
try hook 'plant sub/lib/.git/hooks/post-checkout nested-new-hook'
try fsmonitor 'git -C sub/lib config core.fsmonitor "touch $OUT/nested-new-fsmonitor-ran; false"'
try pointer 'mkdir -p other && printf "gitdir: %s/sub/lib/.git\n" "$PWD" > other/.git'
"#
        ),
    );
    assert_allowed(&run, &["init", "hook", "fsmonitor"]);
    exercise_host_git(f, &f.ws.join("sub/lib"));
    assert_no_markers(f, &run);
    assert!(!exists(&f.ws.join("other/.git")), "the planted .git pointer survived\n{}", describe(&run));
});
