//! The macOS backend of palisade: a resolved policy compiled into a Seatbelt profile.
//!
//! [`canonical`] takes paths to the spelling Seatbelt matches, and [`escape`] is the only way a
//! value enters a profile's text. Both are pure and tested on every platform.

pub mod canonical;
pub mod escape;

pub use canonical::{CanonicalError, FileSystem, HostFileSystem, MemoryFileSystem};
