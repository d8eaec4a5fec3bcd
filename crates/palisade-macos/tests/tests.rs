//! The integration tests of the macOS backend, run on every platform: golden profiles, the
//! invariants every generated profile keeps, and the public reports each profile must handle.

mod suite;
