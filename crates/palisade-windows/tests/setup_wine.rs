//! The setup side of the Windows backend run for real: the token, check, a dry run of setup,
//! the ACL calls on a directory tree of the test's own, and the errors a run gets before setup.
//!
//! These tests run on Windows and under Wine. Wine accepts most of the calls but enforces few
//! of them (no integrity levels, no restricted tokens, no file ACLs, a stub filter engine), so
//! a test that needs enforcement prints a `SKIP` line under Wine and checks instead that the
//! backend refuses to go on, which is what it must do there.

#![cfg(windows)]

use std::path::PathBuf;

use palisade_windows::plan::{self, Accounts, AccountKind, Integrity, Machine, Request, TokenPlan};
use palisade_windows::sys::{self, Error};
use palisade_windows::WinPath;

/// Wine's version, from the export its ntdll has and Windows' lacks.
fn wine() -> Option<String> {
    sys::check::check().wine
}

fn win_path(path: &std::path::Path) -> WinPath {
    WinPath::parse(path.to_str().expect("temporary paths are UTF-8")).expect("temporary paths are absolute")
}

/// Creates a fresh directory of this test's own below the temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-setup-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Accounts that certainly do not exist on this machine.
fn absent_accounts() -> Accounts {
    Accounts { offline: "pal-absent-0000".into(), online: "pal-absent-0000-net".into() }
}

/// Two built-in groups that exist on Windows and Wine alike and that the test's user is not a
/// member of, standing in for the sandbox accounts: the ACL calls get real SIDs to write and
/// read, and their deny entries never lock the test out of its own directories.
fn stand_in_accounts() -> Accounts {
    Accounts { offline: "Guests".into(), online: "Backup Operators".into() }
}

fn plan_for(workspace: &std::path::Path) -> plan::Plan {
    let workspace = win_path(workspace);
    let machine = Machine {
        user_name: "palisade-test".into(),
        profile_dir: WinPath::parse(r"C:\Users\palisade-test").unwrap(),
        path_dirs: Vec::new(),
        system_root: WinPath::parse(r"C:\Windows").unwrap(),
        cpu_count: 2,
        state_dir: workspace.join("state").unwrap(),
        program_dirs: Vec::new(),
    };
    let request = Request {
        profile: palisade_policy::Profile::WorkspaceWrite,
        workspace: workspace.clone(),
        cwd: workspace.clone(),
        read_only: Vec::new(),
        copy_on_write: Vec::new(),
        writable: vec![workspace.join("ws").unwrap()],
        hidden: vec![workspace.join(r"ws\secret").unwrap()],
        protected: vec![workspace.join(r"ws\.git\hooks").unwrap()],
        network: palisade_policy::NetworkMode::None,
        limits: Default::default(),
        default_limits: Default::default(),
    };
    plan::plan(&request, &machine).unwrap()
}

#[test]
fn check_reports_every_layer() {
    let report = sys::check::check();
    let names: Vec<&str> = report.layers.iter().map(|layer| layer.name).collect();
    assert_eq!(names, ["job_objects", "restricted_token", "accounts", "password_store", "wfp", "appcontainer"]);
    let job = &report.layers[0];
    assert!(job.available, "job objects: {}", job.detail);
    assert!(report.to_json().contains("\"platform\": \"windows\""));
    println!("{report}");
    if let Some(version) = &report.wine {
        assert!(!report.fully_enforced(), "Wine must never count as enforced");
        assert!(report.to_string().starts_with(&format!("Running under Wine {version}")));
        print_visible(&format!("SKIP check_reports_every_layer: under Wine {version}, the layers are reported but none is enforced"));
    }
}

#[test]
fn sandbox_token_is_low_or_refused() {
    let plan = TokenPlan { integrity: Integrity::Low, deny_only: &["S-1-5-32-544"], keep_privilege: "SeChangeNotifyPrivilege" };
    match (sys::token::sandbox_token(&plan), wine()) {
        (Ok(_), None) => {}
        (Ok(_), Some(version)) => panic!("Wine {version} applied the whole token plan; update the notes on Wine"),
        (Err(error), Some(version)) => {
            assert!(matches!(error, Error::NotEnforced { .. }), "{error}");
            print_visible(&format!("SKIP sandbox_token_is_low_or_refused: Wine {version} does not apply the token plan; sandbox_token refused as it must: {error}"));
        }
        (Err(error), None) => panic!("sandbox_token failed on Windows: {error}"),
    }
}

#[test]
fn run_before_setup_is_told_to_run_setup() {
    let accounts = absent_accounts();
    let dir = scratch("before-setup");
    let plan = plan_for(&dir);

    let error = sys::account::load(&accounts, AccountKind::Offline).unwrap_err();
    assert!(matches!(&error, Error::NotSetUp { fix, .. } if fix.contains("palisade setup")), "{error}");
    let error = sys::acl::verify(&plan.files, &accounts).unwrap_err();
    assert!(matches!(&error, Error::NotSetUp { fix, .. } if fix.contains("palisade setup")), "{error}");
    let error = sys::acl::Placeholders::create(&plan.files.placeholders, &accounts).unwrap_err();
    assert!(matches!(&error, Error::NotSetUp { .. }), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn firewall_errors_instead_of_aborting() {
    let dir = scratch("firewall");
    let plan = plan_for(&dir);
    match sys::wfp::verify(&plan.filters, &absent_accounts()) {
        // Windows: the engine opens and the account is missing.
        Err(Error::NotSetUp { what, .. }) => assert!(what.contains("pal-absent-0000"), "{what}"),
        Err(error) if wine().is_some() => print_visible(&format!("SKIP firewall_errors_instead_of_aborting: Wine's filter engine is a stub, so the filters are not verified: {error}")),
        other => panic!("expected an error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dry_run_lists_every_step_and_changes_nothing() {
    let dir = scratch("dry-run");
    std::fs::create_dir_all(dir.join(r"ws\.git")).unwrap();
    let plan = plan_for(&dir);
    let report = sys::setup::setup(&plan, &sys::setup::SetupOptions { dry_run: true }).unwrap();
    let text = report.to_string();
    println!("{text}");
    assert!(report.dry_run);
    assert_eq!(report.steps.len(), palisade_windows::setup_steps::steps(&plan).len());
    assert!(text.contains("create local account pal-palisad"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(!dir.join("state").exists(), "a dry run created palisade's state directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn placeholders_are_created_and_removed() {
    let dir = scratch("placeholders");
    std::fs::create_dir_all(dir.join(r"ws\.git")).unwrap();
    let hooks = win_path(&dir.join(r"ws\.git\hooks"));
    let vscode = win_path(&dir.join(r"ws\.vscode"));
    let orphan = win_path(&dir.join(r"ws\missing-parent\x"));
    std::fs::create_dir_all(dir.join(r"ws\.vscode")).unwrap();
    {
        let placeholders = sys::acl::Placeholders::create(&[hooks.clone(), vscode.clone(), orphan], &stand_in_accounts()).unwrap();
        assert_eq!(placeholders.paths(), [hooks], "only the missing name with an existing parent");
        assert!(dir.join(r"ws\.git\hooks").is_dir());
    }
    assert!(!dir.join(r"ws\.git\hooks").exists(), "the placeholder is removed when dropped");
    assert!(dir.join(r"ws\.vscode").is_dir(), "an existing directory is never removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn apply_then_verify_on_a_tree() {
    let dir = scratch("apply");
    std::fs::create_dir_all(dir.join(r"ws\src")).unwrap();
    std::fs::create_dir_all(dir.join(r"ws\secret")).unwrap();
    std::fs::create_dir_all(dir.join(r"state\tmp")).unwrap();
    std::fs::write(dir.join(r"ws\src\main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.join(r"ws\secret\key"), "k\n").unwrap();
    let plan = plan_for(&dir);
    let accounts = stand_in_accounts();

    let summaries = sys::acl::apply(&plan.files, &accounts).unwrap();
    let workspace = summaries.iter().find(|(root, _)| root.file_name() == Some("ws")).expect("the workspace is a root");
    assert!(workspace.1.objects >= 4, "walked {} objects", workspace.1.objects);
    match (sys::acl::verify(&plan.files, &accounts), wine()) {
        (Ok(()), _) => {}
        (Err(error), Some(version)) => print_visible(&format!("SKIP apply_then_verify_on_a_tree: Wine {version} does not read back the ACLs it was given, so they are not verified: {error}")),
        (Err(error), None) => panic!("verify after apply: {error}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Prints a line on the test process's real stderr, past the test harness's capture, so a SKIP
/// shows in the output of `cargo test`.
fn print_visible(line: &str) {
    use std::io::Write as _;
    use std::os::windows::io::{AsRawHandle as _, FromRawHandle as _};
    // The harness captures what the standard library's stderr macros write, not the handle.
    let handle = std::io::stderr().as_raw_handle();
    // SAFETY: the handle is the process's stderr, valid for the process's life; ManuallyDrop
    // keeps the File from closing it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_handle(handle) });
    let _ = file.write_all(format!("{line}\n").as_bytes());
}

#[test]
fn apply_acl_within_writes_only_scope() {
    let dir = scratch("apply-within");
    std::fs::create_dir_all(dir.join(r"ws\src")).unwrap();
    std::fs::create_dir_all(dir.join(r"ws\secret")).unwrap();
    std::fs::create_dir_all(dir.join(r"state\tmp")).unwrap();
    std::fs::write(dir.join(r"ws\src\main.rs"), "fn main() {}\n").unwrap();
    let mut plan = plan_for(&dir);
    plan.accounts = stand_in_accounts();

    let scope = win_path(&dir.join("ws"));
    let summaries = sys::setup::apply_acl_within(&plan, &scope).unwrap();
    let roots: Vec<String> = summaries.iter().map(|(root, _)| root.to_string()).collect();
    assert!(summaries.iter().all(|(root, _)| root.starts_with(&scope)), "{roots:?}");
    assert!(roots.iter().any(|root| root.ends_with(r"\ws")), "the workspace is written: {roots:?}");
    assert!(roots.iter().any(|root| root.ends_with(r"\ws\secret")), "the hidden path is written: {roots:?}");
    assert!(!roots.iter().any(|root| root.ends_with(r"\state\tmp")), "palisade's temporary root lies outside the scope: {roots:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn apply_acl_within_needs_the_accounts() {
    let dir = scratch("apply-within-absent");
    std::fs::create_dir_all(dir.join("ws")).unwrap();
    let mut plan = plan_for(&dir);
    plan.accounts = absent_accounts();
    let error = sys::setup::apply_acl_within(&plan, &win_path(&dir)).unwrap_err();
    assert!(matches!(&error, Error::NotSetUp { fix, .. } if fix.contains("palisade setup")), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
