//! The macOS backend of palisade: a resolved policy compiled into a Seatbelt profile.
//!
//! [`Request::from_policy`] takes the policy's paths and the machine's own directories to the
//! spelling Seatbelt matches ([`canonical`]); [`generate`] writes the profile in a fixed order
//! of sections, deny by default ([`profile`]); [`plan_limits`] lists which limits macOS can hold
//! ([`limits`]). All of that is pure and tested on every platform, together with a reader of
//! SBPL text ([`reader`]) and a model of Seatbelt's decisions ([`model`]) that the tests use to
//! state what a profile must allow and deny.
//!
//! A run's protocol between the supervisor and its stage ([`stage`]), its outcome and output
//! count ([`outcome`]), the denials of the run ([`violations`]) and `palisade check`'s
//! verdicts ([`check`]) are pure too. The calls into macOS (`sandbox_init`, `sandbox_check`,
//! rlimits, the supervisor, the stage, killing a run's processes) are in `sys`, compiled only
//! for macOS. `docs/macos.md` explains the design and lists what
//! has been verified only by these tests and what needs a Mac.

pub mod canonical;
pub mod check;
// The run's temporary directory is removed with Unix permission bits; it exists on macOS only.
#[cfg(unix)]
pub mod cleanup;
pub mod escape;
pub mod limits;
pub mod marker;
pub mod model;
pub mod nesting;
pub mod outcome;
mod platform;
pub mod profile;
pub mod reader;
pub mod request;
pub mod sbpl;
// The stage's protocol uses Unix byte strings; the stage runs on macOS only.
#[cfg(unix)]
pub mod stage;
pub mod tree;
pub mod violations;

pub use canonical::{CanonicalError, FileSystem, HostFileSystem, MemoryFileSystem};
pub use limits::{plan_limits, LimitPlan, LimitsError};
pub use profile::{generate, GenerateError, SeatbeltProfile};
pub use request::{Gap, Machine, Network, Request, RequestError};

#[cfg(target_os = "macos")]
pub mod sys;
