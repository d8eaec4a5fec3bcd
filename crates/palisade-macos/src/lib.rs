//! The macOS backend of palisade: a resolved policy compiled into a Seatbelt profile.
//!
//! [`Request::from_policy`] takes the policy's paths and the machine's own directories to the
//! spelling Seatbelt matches ([`canonical`]). [`escape`] is the only way a value enters a
//! profile's text. Both are pure and tested on every platform.

pub mod canonical;
pub mod escape;
pub mod marker;
pub mod request;

pub use canonical::{CanonicalError, FileSystem, HostFileSystem, MemoryFileSystem};
pub use request::{Gap, Machine, Network, Request, RequestError};
