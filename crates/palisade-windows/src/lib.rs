//! The Windows backend of palisade.
//!
//! A command runs as one of two local accounts that `palisade setup` prepares once for the
//! calling user, with a token derived from that account's own: Low integrity, administrator
//! groups deny-only, every privilege but bypass-traverse removed. It runs inside a job object
//! that holds the limits and kills the whole tree when palisade's handle closes. Files are
//! protected by ACL entries for the sandbox accounts, applied once by setup and only checked
//! by a run; the network by Windows Filtering Platform filters keyed on the offline account.
//!
//! [`path`], [`plan`], [`cmdline`], [`environment`], [`handoff`] and [`outcome`] are pure and
//! tested on every platform. The Windows calls that carry
//! the plan out are in `sys`, compiled only for Windows. `docs/windows.md` explains the design
//! and lists what has been verified only under Wine.

pub mod ace;
pub mod check_report;
pub mod cmdline;
pub mod environment;
pub mod firewall;
pub mod handoff;
pub mod outcome;
pub mod path;
pub mod plan;
pub mod setup_steps;
pub mod store;

pub use path::{ObjectPath, PathError, WinPath};
pub use plan::{Machine, Plan, PlanError, Request};

#[cfg(windows)]
pub mod sys;
