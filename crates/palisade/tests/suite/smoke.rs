//! The basics: a command runs, its exit status comes back, and the workspace is writable.

use crate::both_identities;
use crate::suite::harness::Fixture;

both_identities!(exit_status_passes_through, |f: &Fixture| {
    f.sandbox_sh(&[], "exit 7").expect_code(7);
    f.sandbox_sh(&[], "true").expect_code(0);
});

both_identities!(workspace_write_reaches_host, |f: &Fixture| {
    f.sandbox_sh(&[], "echo hello > created.txt").expect_code(0);
    assert_eq!(std::fs::read_to_string(f.ws.join("created.txt")).unwrap(), "hello\n");
});
