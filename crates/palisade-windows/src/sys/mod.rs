//! The Windows calls that carry a [`Plan`](crate::Plan) out. Every `unsafe` block of the
//! backend is in this module, each with a SAFETY comment.
//!
//! Order of a confined run (see `docs/windows.md`): `run` checks that setup is in place
//! (`account`, `acl`, `wfp`), creates the job (`job`), creates the placeholders (`acl`),
//! starts `palisade windows-runner` as the sandbox account with `CreateProcessWithLogonW`
//! suspended, assigns it to the job and resumes it (`spawn`); the runner derives the
//! restricted Low token from its own (`token`) and starts the command with it, inside the
//! same job.

pub mod account;
pub mod acl;
pub mod check;
mod error;
mod file_object;
pub mod job;
pub mod machine;
pub mod output;
pub mod proxy;
pub mod run;
mod security;
pub mod setup;
pub mod spawn;
pub mod token;
pub mod wfp;
pub mod wine;

pub use error::Error;
