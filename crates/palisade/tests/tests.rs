//! Integration tests: every test runs the real `palisade` binary against real processes and
//! checks the outside world afterwards. See `suite/harness.rs` for how each test runs once as
//! root and once as an unprivileged user.

#[cfg(target_os = "linux")]
mod suite;
#[cfg(windows)]
mod windows;
