//! Stand-ins for the parts of the backend written on another branch: the sandbox token, the
//! accounts, the ACLs, the firewall filters, setup and check. Each module here has the
//! signatures of the module of the same name in `sys`, and every function fails closed, so a
//! build with the stand-ins refuses every confined run with a message naming `palisade setup`.
//!
//! TODO: connect the real modules: in `sys/run.rs` and in the binary's `windows.rs`, import
//! `sys::{account, acl, check, setup, token, wfp}` in place of `sys::standin::...`, then
//! delete this file and its line in `sys/mod.rs`.

use super::Error;

/// The fix a refused run names when setup is missing.
pub const SETUP_FIX: &str = "run `palisade setup` once, as an administrator";

fn not_wired(what: impl Into<String>) -> Error {
    Error::NotSetUp { what: what.into(), fix: SETUP_FIX.into() }
}

pub mod token {
    use std::os::windows::io::OwnedHandle;

    use crate::plan::TokenPlan;
    use crate::sys::Error;

    /// Stand-in for `sys::token::sandbox_token`.
    pub fn sandbox_token(_plan: &TokenPlan) -> Result<OwnedHandle, Error> {
        Err(super::not_wired("the sandbox token (not in this build)"))
    }
}

pub mod account {
    use crate::plan::{AccountKind, Accounts};
    use crate::sys::Error;

    /// Stand-in for `sys::account::Credentials`.
    pub struct Credentials {
        pub name: String,
        pub password: String,
    }

    /// Stand-in for `sys::account::load`.
    pub fn load(accounts: &Accounts, kind: AccountKind) -> Result<Credentials, Error> {
        let name = match kind {
            AccountKind::Offline => &accounts.offline,
            AccountKind::Online => &accounts.online,
        };
        Err(super::not_wired(format!("the sandbox account {name}")))
    }
}

pub mod acl {
    use crate::path::WinPath;
    use crate::plan::{Accounts, FilePlan};
    use crate::sys::Error;

    /// Stand-in for `sys::acl::verify`.
    pub fn verify(_files: &FilePlan, _accounts: &Accounts) -> Result<(), Error> {
        Err(super::not_wired("the ACL entries of the sandbox accounts"))
    }

    /// Stand-in for `sys::acl::Placeholders`.
    pub struct Placeholders;

    impl Placeholders {
        pub fn create(_paths: &[WinPath], _accounts: &Accounts) -> Result<Placeholders, Error> {
            Err(super::not_wired("the placeholders of protected paths"))
        }
    }
}

pub mod wfp {
    use crate::plan::{Accounts, Filter};
    use crate::sys::Error;

    /// Stand-in for `sys::wfp::verify`.
    pub fn verify(_filters: &[Filter], _accounts: &Accounts) -> Result<(), Error> {
        Err(super::not_wired("the firewall filters of the offline account"))
    }
}

pub mod setup {
    use std::fmt;

    use crate::sys::Error;
    use crate::Plan;

    /// Stand-in for `sys::setup::SetupOptions`.
    #[derive(Debug, Default)]
    pub struct SetupOptions {}

    /// Stand-in for `sys::setup::SetupReport`.
    pub struct SetupReport;

    impl fmt::Display for SetupReport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("nothing was set up")
        }
    }

    /// Stand-in for `sys::setup::setup`.
    pub fn setup(_plan: &Plan, _options: &SetupOptions) -> Result<SetupReport, Error> {
        Err(Error::Unavailable {
            function: "palisade setup",
            library: "this build of palisade",
            consequence: "setup is not part of this build yet, so confined runs are refused",
        })
    }
}

pub mod check {
    use std::fmt;

    /// Stand-in for `sys::check::CheckReport`.
    pub struct CheckReport;

    impl CheckReport {
        pub fn to_json(&self) -> String {
            r#"{"fully_enforced": false, "detail": "the Windows checks are not part of this build"}"#.into()
        }

        pub fn fully_enforced(&self) -> bool {
            false
        }
    }

    impl fmt::Display for CheckReport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            writeln!(f, "The Windows checks are not part of this build of palisade.")
        }
    }

    /// Stand-in for `sys::check::check`.
    pub fn check() -> CheckReport {
        CheckReport
    }
}
